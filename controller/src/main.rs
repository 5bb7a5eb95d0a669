//! `fastvm`: the Fast VM controller's command line.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use controller::app;
use controller::audit::{self, NewEntry};
use controller::auth::{passwords, users};
use controller::config::{ServeArgs, Settings};
use controller::store::{Store, now_unix};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fastvm",
    version,
    about = "Fast VM: run QEMU/KVM virtual machines from a browser or an API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the controller: API, dashboard and VM management.
    Serve(ServeArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Operator helpers that work on the data directory directly.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Set a user's password (for an operator who is locked out). Signs out all of the user's sessions.
    ResetPassword {
        /// The user whose password to set.
        user: String,
        /// Read the new password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        settings: Settings,
    },
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FASTVM_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Openapi => app::openapi_json().map(|doc| println!("{doc}")),
        Command::Admin { command: AdminCommand::ResetPassword { user, password_stdin, settings } } => {
            reset_password(&user, password_stdin, &settings)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastvm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let state = app::prepare(args.settings).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(address = %listener.local_addr()?, "Fast VM listening");
        app::serve(listener, state, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}

fn read_new_password(password_stdin: bool) -> anyhow::Result<String> {
    if password_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("New password: ")?;
    let second = rpassword::prompt_password("Repeat it: ")?;
    anyhow::ensure!(first == second, "the passwords do not match");
    Ok(first)
}

/// Sets `user`'s password; on a data directory with no users yet (a fresh install), creates `user`
/// as the first admin with it instead, so an installer never leaves an `admin`/`admin` behind.
fn reset_password(user: &str, password_stdin: bool, settings: &Settings) -> anyhow::Result<()> {
    let db = settings.db_path();
    let fresh = !db.exists();
    anyhow::ensure!(
        !fresh || settings.data_dir.is_dir(),
        "no database at {} and no such data directory (is --data-dir right?)",
        db.display()
    );
    let store = Store::open(&db)?;
    let (username, nobody) = (user.to_string(), fresh || store.call_blocking(|c| Ok(users::count(c)? == 0))?);
    let exists = store.call_blocking(|c| Ok(users::get(c, &username)?.is_some()))?;
    anyhow::ensure!(exists || nobody, "no user called {user:?}");
    let password = read_new_password(password_stdin)?;
    passwords::validate_new("password", &password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = bcrypt::hash(password, settings.bcrypt_cost)?;
    if !exists {
        store.call_blocking(|c| Ok(users::insert(c, user, &hash, true, false, now_unix())?))?;
        println!("Created {user}, the first admin, with that password.");
        return Ok(());
    }
    store.call_blocking(|c| {
        users::set_password(c, user, &hash, false, None, now_unix())?;
        audit::insert(
            c,
            &NewEntry {
                username: None,
                action: "admin.reset_password".into(),
                target: Some(user.to_string()),
                result: "success",
                status_code: 0,
                client_ip: None,
                details: Some("fastvm admin reset-password (command line)".into()),
            },
        )
    })?;
    println!("Password of {user} changed; all of its sessions were signed out.");
    Ok(())
}
