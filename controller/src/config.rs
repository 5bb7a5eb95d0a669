//! Runtime configuration: every setting an operator can change, with its environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// `fastvm serve` options; each has an environment variable so containers need no command line.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port the HTTP server listens on.
    #[arg(long, env = "FASTVM_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub settings: Settings,
}

/// Settings shared by every subcommand that opens the data directory.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Data directory: database, VM disks, ISOs, backups.
    #[arg(long, env = "FASTVM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Where per-VM sockets live (default: <data-dir>/run). Unix socket paths must stay under 108 bytes,
    /// so point this somewhere short when the data directory path is long.
    #[arg(long, env = "FASTVM_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Secret that signs JWTs. When unset, a random one is generated once and kept in the data directory.
    #[arg(long, env = "JWT_SECRET_KEY", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// bcrypt cost for password hashes (4-31). Lower it only for tests.
    #[arg(long, env = "FASTVM_BCRYPT_COST", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Failed logins allowed per client address and per username: `N` (per minute), `N/SECONDS`, or `off`.
    #[arg(long, env = "FASTVM_LOGIN_RATE_LIMIT", default_value = "5/60", value_parser = parse_rate_limit)]
    pub login_rate_limit: RateLimit,
    /// Comma-separated origins allowed by CORS; `*` allows any origin.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Production mode: adds HSTS and a Content-Security-Policy.
    #[arg(long, env = "FASTVM_PRODUCTION", value_parser = parse_flag, default_value = "0")]
    pub production: bool,
    /// The first admin's password, used once: when the controller starts with no users at all
    /// (an installer sets it; without it the first admin is `admin`/`admin`, to be changed).
    #[arg(long, env = "FASTVM_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// VM acceleration: `auto` (KVM when /dev/kvm is usable, else TCG), `kvm` or `tcg`.
    #[arg(long, env = "FASTVM_ACCEL", default_value = "auto")]
    pub accel: String,
    /// More directories ISO images may come from, colon-separated (besides images/ and cloudinit/).
    #[arg(long, env = "FASTVM_ISO_DIRS")]
    pub iso_dirs: Option<String>,
    /// The vmrunner binary (default: next to fastvm, else on the PATH).
    #[arg(long, env = "FASTVM_VMRUNNER")]
    pub vmrunner: Option<PathBuf>,
    /// How VMs run: `process` (vmrunner as a child process), `docker` (one container per VM), or
    /// `auto` (docker when an engine answers and the vmrunner image exists, else process).
    #[arg(long, env = "FASTVM_RUNTIME", default_value = "process")]
    pub runtime: String,
    /// Image the docker runtime starts VMs from.
    #[arg(long, env = "FASTVM_VMRUNNER_IMAGE", default_value = "fastvm/vmrunner:latest")]
    pub vmrunner_image: String,
    /// Host address that NAT port forwards listen on.
    #[arg(long, env = "FASTVM_PORT_FORWARD_BIND", default_value = "0.0.0.0")]
    pub port_forward_bind: String,
    /// Host ports regular users may forward to their VMs, `FIRST-LAST` (admins may use any).
    #[arg(long, env = "FASTVM_PORT_FORWARD_RANGE", default_value = "1024-65535", value_parser = parse_port_range)]
    pub port_forward_range: std::ops::RangeInclusive<u16>,
    /// Host address the per-VM SPICE ports for remote-viewer listen on.
    #[arg(long, env = "FASTVM_SPICE_BIND", default_value = "127.0.0.1")]
    pub spice_bind: String,
    /// First TCP port for remote-viewer SPICE connections (one port per running VM).
    #[arg(long, env = "FASTVM_SPICE_PORT_BASE", default_value_t = 5800)]
    pub spice_port_base: u16,
    /// Seconds a console ticket stays valid for opening a console's channels.
    #[arg(long, env = "FASTVM_CONSOLE_TICKET_TTL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub console_ticket_ttl: u64,
    /// Seconds between two metric collections.
    #[arg(long, env = "FASTVM_METRICS_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub metrics_interval: u64,
    /// Shortest time between two scheduled backups of a VM, in seconds.
    #[arg(long, env = "FASTVM_BACKUP_MIN_INTERVAL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub backup_min_interval: u64,
    /// Hours between verifications of every backup chunk (0: never; on demand only).
    #[arg(long, env = "FASTVM_BACKUP_VERIFY_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(0..=8760))]
    pub backup_verify_hours: u64,
    /// Largest ISO image an upload may bring, in GB.
    #[arg(long, env = "FASTVM_MAX_ISO_GB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_iso_gb: u64,
    /// Addresses (comma-separated IPs or CIDRs) that may read `/metrics` without a token. Empty (the
    /// default): an admin's token is always needed (a NAT guest reaches the host's loopback).
    #[arg(long, env = "FASTVM_METRICS_ALLOW", default_value = "")]
    pub metrics_allow: String,
    /// Reverse proxies (comma-separated IPs or CIDRs) whose `X-Forwarded-For` names the client, for
    /// the login limiter and the audit log. Empty: the header is ignored.
    #[arg(long, env = "FASTVM_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    Off,
    Failures { max: u32, window: Duration },
}

pub fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(RateLimit::Off);
    }
    let (max, secs) = match s.split_once('/') {
        Some((max, secs)) => (max, secs),
        None => (s, "60"),
    };
    let max: u32 = max.trim().parse().map_err(|_| format!("bad failure count in {s:?}"))?;
    let secs: u64 = secs.trim().parse().map_err(|_| format!("bad window in {s:?}"))?;
    if max == 0 || secs == 0 {
        return Err("count and window must be positive (use `off` to disable)".into());
    }
    Ok(RateLimit::Failures { max, window: Duration::from_secs(secs) })
}

pub fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (first, last) = s.trim().split_once('-').ok_or_else(|| format!("expected FIRST-LAST, got {s:?}"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("bad port {p:?} in {s:?}"));
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || first > last {
        return Err(format!("{s:?}: ports must be 1-65535, first not above last"));
    }
    Ok(first..=last)
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        other => Err(format!("expected 0/1/true/false, got {other:?}")),
    }
}

impl Settings {
    /// Defaults for a given data directory (what tests and embedders start from).
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Settings {
            data_dir: data_dir.into(),
            run_dir: None,
            jwt_secret: None,
            bcrypt_cost: 12,
            login_rate_limit: RateLimit::Failures { max: 5, window: Duration::from_secs(60) },
            cors_origins: "*".into(),
            production: false,
            admin_password: None,
            accel: "auto".into(),
            iso_dirs: None,
            vmrunner: None,
            port_forward_bind: "0.0.0.0".into(),
            port_forward_range: 1024..=65535,
            runtime: "process".into(),
            vmrunner_image: "fastvm/vmrunner:latest".into(),
            spice_bind: "127.0.0.1".into(),
            spice_port_base: 5800,
            console_ticket_ttl: 60,
            metrics_interval: 10,
            max_iso_gb: 64,
            backup_min_interval: 300,
            backup_verify_hours: 24,
            metrics_allow: String::new(),
            trusted_proxies: String::new(),
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(|| self.data_dir.join("run"))
    }

    /// Where ISO images may come from.
    pub fn iso_roots(&self) -> Vec<PathBuf> {
        let mut roots = vec![self.data_dir.join("images"), self.data_dir.join("cloudinit")];
        if let Some(extra) = &self.iso_dirs {
            roots.extend(extra.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
        }
        roots
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("fastvm.db")
    }

    /// The data directory layout of ARCHITECTURE.md, created on start.
    pub fn layout_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = ["vms", "volumes", "images", "backups", "base", "cloudinit", "jobs"]
            .iter()
            .map(|d| self.data_dir.join(d))
            .collect();
        dirs.push(self.run_dir());
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_forms() {
        assert_eq!(parse_rate_limit("off"), Ok(RateLimit::Off));
        assert_eq!(
            parse_rate_limit("5"),
            Ok(RateLimit::Failures { max: 5, window: Duration::from_secs(60) })
        );
        assert_eq!(
            parse_rate_limit("3/10"),
            Ok(RateLimit::Failures { max: 3, window: Duration::from_secs(10) })
        );
        assert!(parse_rate_limit("0/10").is_err());
        assert!(parse_rate_limit("x").is_err());
    }

    #[test]
    fn port_range_forms() {
        assert_eq!(parse_port_range("1024-65535"), Ok(1024..=65535));
        assert_eq!(parse_port_range(" 80 - 80 "), Ok(80..=80));
        for bad in ["", "80", "0-10", "10-9", "1-70000", "a-b"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }
}
