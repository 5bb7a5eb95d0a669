//! Assembles the HTTP application: API routes (documented with utoipa), Swagger UI, the dashboard,
//! and the layers every response goes through.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::rate_limit::LoginLimiter;
use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::consoles::Consoles;
use crate::metrics::Metrics;
use crate::runtime::docker::{self, DockerRuntime};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::{RunDirs, Runtime};
use crate::state::AppState;
use crate::store::Store;
use crate::vms::manager::VmManager;
use crate::{auth, backups, host, http, metrics, system, vms, web};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fast VM",
        description = "Run QEMU/KVM virtual machines from a browser or an API. Every endpoint but \
            `POST /api/auth/login` and `GET /api/health` needs `Authorization: Bearer <token>`; \
            errors are `{\"detail\": \"...\"}`."
    ),
    modifiers(&BearerAuth),
    // Named only by query parameters, which do not register their schemas.
    components(schemas(crate::auth::owned::Owned)),
    tags(
        (name = "auth", description = "Sign in, sign out, your own account"),
        (name = "users", description = "User management (admin only)"),
        (name = "audit", description = "Audit log (admin only)"),
        (name = "system", description = "Health and host information"),
        (name = "vms", description = "Virtual machines"),
        (name = "volumes", description = "Standalone volumes, attached to VMs"),
        (name = "cloudinit", description = "Cloud-init seed ISOs"),
        (name = "isos", description = "The ISO library"),
        (name = "snapshots", description = "VM snapshots, with or without RAM"),
        (name = "backups", description = "Incremental, deduplicated backups: take, verify, download, restore"),
        (name = "consoles", description = "SPICE and VNC consoles: browser WebSocket proxy, remote-viewer"),
        (name = "metrics", description = "Host and VM metrics: current, history, live push"),
        (name = "jobs", description = "Long-running work (backups, restores) and its progress"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

fn api() -> (Router<AppState>, OpenApiDoc) {
    let (router, mut doc) =
        OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(crate::api::routes()).split_for_parts();
    crate::api::describe_responses(&mut doc);
    crate::api::open_flattened_requests(&mut doc);
    (router, doc)
}

/// The OpenAPI document the code describes (what `fastvm openapi` prints).
pub fn openapi_json() -> anyhow::Result<String> {
    Ok(api().1.to_pretty_json()?)
}

/// How often the database is reconciled with what really runs.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Prepares the data directory and everything the handlers share, re-adopts running VMs, and starts
/// the reconcile loop.
pub async fn prepare(mut settings: Settings) -> anyhow::Result<AppState> {
    // Disks, backups, seeds and logs are the users' data: whatever the operator's umask, everything
    // this process and its children (qemu-img, vmrunner, QEMU) create is private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    for dir in std::iter::once(settings.data_dir.clone()).chain(settings.layout_dirs()) {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Also a data directory made by an older version, or by hand.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    // VMs are started from other working directories (and, later, containers): use absolute paths.
    settings.data_dir = settings.data_dir.canonicalize()?;
    settings.run_dir = Some(settings.run_dir().canonicalize()?);
    // Nothing runs yet, so whatever is mid-way is left over from a controller that was cut short.
    let data_dirs: Vec<PathBuf> =
        settings.layout_dirs().into_iter().filter(|d| Some(d) != settings.run_dir.as_ref()).collect();
    for path in crate::storage::sweep_leftovers(&data_dirs, &settings.data_dir.join("vms")) {
        tracing::info!(path = %path.display(), "removed a leftover of an interrupted operation");
    }
    let store = Store::open(&settings.db_path())?;
    let tokens = TokenKeys::load(settings.jwt_secret.as_deref(), &settings.data_dir)?;
    auth::ensure_default_admin(&store, settings.bcrypt_cost, settings.admin_password.as_deref()).await?;
    let default_password = Arc::new(auth::DefaultPassword::default());
    default_password.refresh(&store, settings.bcrypt_cost).await;
    let vms = Arc::new(vm_manager(&settings, store.clone()).await?);
    if let Err(e) = vms.reconcile().await {
        tracing::error!(error = ?e, "initial reconcile failed");
    }
    vms.watch_runtimes();
    let reconciler = vms.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                _ = reconciler.wake.notified() => {}
            }
            if let Err(e) = reconciler.reconcile().await {
                tracing::error!(error = ?e, "reconcile failed");
            }
        }
    });
    let consoles = Arc::new(Consoles::new(
        Duration::from_secs(settings.console_ticket_ttl),
        &settings.spice_bind,
        settings.spice_port_base,
    ));
    let metrics = Arc::new(Metrics::new(Duration::from_secs(settings.metrics_interval)));
    let jobs_dir = settings.data_dir.join("jobs");
    let chunks = Arc::new(backups::chunks::ChunkStore::open(&backups::chunks_dir(
        &settings.data_dir.join("backups"),
    ))?);
    let state = AppState {
        chunks,
        consoles,
        metrics,
        login_limiter: Arc::new(LoginLimiter::new(settings.login_rate_limit)),
        settings: Arc::new(settings),
        store,
        tokens: Arc::new(tokens),
        vms,
        jobs: Arc::new(crate::jobs::Jobs::with_journal(jobs_dir)?),
        default_password,
    };
    for job in state.jobs.interrupted() {
        if let ("snapshot", Some(vm_id)) = (job.kind.as_str(), job.vm_id) {
            let vms = state.vms.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::snapshots::sweep_interrupted(&vms, &vm_id).await {
                    tracing::warn!(vm_id, error = %e, "could not look for an interrupted snapshot's leftover");
                }
            });
        }
    }
    if state.settings.backup_verify_hours > 0 {
        let (verifier, every) =
            (state.backups(), Duration::from_secs(state.settings.backup_verify_hours * 3600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match backups::verify_job(&verifier, "admin", None).await {
                    Ok(v) if v.ok => {
                        tracing::info!(chunks = v.chunks_checked, "scheduled backup verification: all sound")
                    }
                    Ok(v) => {
                        tracing::error!(message = v.message, "scheduled backup verification found damage")
                    }
                    Err(e) => tracing::error!(error = %e, "scheduled backup verification failed"),
                }
            }
        });
    }
    // Only a backup cut short leaves anything for the backups to clean up.
    if state.jobs.interrupted().iter().any(|j| j.kind == "backup") {
        backups::kill_stray_helpers(&state.vms.vms_dir);
        let recovering = state.backups();
        tokio::spawn(async move {
            if let Err(e) = backups::recover(&recovering).await {
                tracing::warn!(error = %e, "could not clean up after an interrupted backup");
            }
        });
    }
    metrics::start_collector(state.metrics.clone(), state.vms.clone(), state.settings.data_dir.clone());
    let scheduler = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(backups::schedule::TICK).await;
            if let Err(e) = backups::schedule::run_due(&scheduler.backups()).await {
                tracing::error!(error = ?e, "backup scheduler failed");
            }
        }
    });
    let (flag, store, cost) =
        (state.default_password.clone(), state.store.clone(), state.settings.bcrypt_cost);
    tokio::spawn(async move {
        loop {
            if flag.refresh(&store, cost).await {
                tracing::warn!(
                    "the admin account still has the password admin: change it (POST /api/auth/change-password \
                     or `fastvm admin reset-password admin`)"
                );
            }
            tokio::time::sleep(DEFAULT_PASSWORD_WARN_EVERY).await;
        }
    });
    Ok(state)
}

/// How often the log says that `admin` still has its first password.
const DEFAULT_PASSWORD_WARN_EVERY: Duration = Duration::from_secs(60);

/// The docker runtime, when `FASTVM_RUNTIME` asks for it (or `auto` finds an engine and the image).
async fn docker_runtime(settings: &Settings, run_dirs: &RunDirs) -> anyhow::Result<Option<DockerRuntime>> {
    let make = |docker| DockerRuntime {
        docker,
        image: settings.vmrunner_image.clone(),
        dirs: run_dirs.clone(),
        port_forward_bind: settings.port_forward_bind.clone(),
    };
    match settings.runtime.trim().to_ascii_lowercase().as_str() {
        "process" => Ok(None),
        "docker" => {
            let docker = docker::connect().await.context("FASTVM_RUNTIME=docker needs a Docker engine")?;
            if docker.inspect_image(&settings.vmrunner_image).await.is_err() {
                tracing::warn!(
                    image = settings.vmrunner_image,
                    "vmrunner image not found: VMs will not start until it is built"
                );
            }
            Ok(Some(make(docker)))
        }
        "auto" => match docker::connect().await {
            Ok(docker) if docker.inspect_image(&settings.vmrunner_image).await.is_ok() => {
                Ok(Some(make(docker)))
            }
            _ => Ok(None),
        },
        other => anyhow::bail!("FASTVM_RUNTIME must be process, docker or auto, not {other:?}"),
    }
}

async fn vm_manager(settings: &Settings, store: Store) -> anyhow::Result<VmManager> {
    let program = |name: &str| host::locate_program(None, name).unwrap_or_else(|| name.into());
    let kvm = host::kvm_probe(&program(system::QEMU_BINARY)).await;
    let (accel, accel_note) = host::choose_accel(&settings.accel, &kvm)?;
    let vmrunner =
        host::locate_program(settings.vmrunner.as_deref(), "vmrunner").unwrap_or_else(|| "vmrunner".into());
    let run_dirs = RunDirs { root: settings.run_dir() };
    // The process runtime is always there, so VMs it started stay manageable whatever the setting.
    let process: Arc<dyn Runtime> = Arc::new(ProcessRuntime { vmrunner, dirs: run_dirs.clone() });
    let mut runtimes = vec![process.clone()];
    let active = match docker_runtime(settings, &run_dirs).await? {
        Some(d) => {
            let d: Arc<dyn Runtime> = Arc::new(d);
            runtimes.push(d.clone());
            d
        }
        None => process,
    };
    tracing::info!(accel = vms::manager::accel_name(accel), runtime = active.name(), "VM runtime ready");
    let mut manager = VmManager::new(
        store,
        runtimes,
        active,
        run_dirs,
        settings.data_dir.join("vms"),
        settings.data_dir.join("volumes"),
        accel,
        settings.iso_roots(),
        settings.port_forward_bind.clone(),
        settings.port_forward_range.clone(),
        program(system::QEMU_BINARY),
        program("qemu-img"),
        program("swtpm"),
    );
    manager.accel_note = accel_note;
    Ok(manager)
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = api();
    let production = state.settings.production;
    let cors = http::cors(&state.settings.cors_origins);
    let trusted: std::sync::Arc<str> = state.settings.trusted_proxies.clone().into();
    Router::new()
        .merge(
            api.layer(from_fn_with_state(state.clone(), crate::api::audit::middleware))
                .layer(from_fn_with_state(state.clone(), crate::api::prometheus::track)),
        )
        .route("/metrics", axum::routing::get(crate::api::prometheus::scrape))
        .merge(SwaggerUi::new("/docs").url("/api/openapi.json", doc))
        .fallback(web::serve)
        .layer(from_fn(http::json_errors))
        .layer(CatchPanicLayer::custom(http::panic_response))
        .layer(cors)
        .layer(from_fn(move |req, next| http::security_headers(production, req, next)))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            // Never the raw URI: query strings carry tokens and tickets.
            tracing::debug_span!("request", method = %req.method(), uri = %http::redacted_uri(req.uri()))
        }))
        .layer(from_fn(move |req, next| http::client_address(trusted.clone(), req, next)))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::server::serve(listener, router(state), shutdown).await
}
