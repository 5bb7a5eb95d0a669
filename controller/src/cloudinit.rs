//! Cloud-init: a NoCloud seed ISO (volume id `cidata`) built with xorriso, for use as a
//! VM's secondary ISO. user-data and network-config are written as JSON, which is valid YAML, so no
//! value can break out of its field.

use std::net::IpAddr;
use std::sync::LazyLock;

use anyhow::Context;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// Installed on every guest: clipboard/resize in the console and the guest agent.
const DEFAULT_PACKAGES: [&str; 2] = ["qemu-guest-agent", "spice-vdagent"];

static HOSTNAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$").unwrap_or_else(|_| unreachable!())
});
static USERNAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z_][a-z0-9_-]{0,31}$").unwrap_or_else(|_| unreachable!()));
static PACKAGE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9+.-]{0,99}$").unwrap_or_else(|_| unreachable!()));

/// A list given either as a JSON array or as one comma-separated string.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ListOrString {
    List(Vec<String>),
    One(String),
}

impl ListOrString {
    fn items(self) -> Vec<String> {
        match self {
            ListOrString::List(v) => v,
            ListOrString::One(s) => {
                s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
            }
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitRequest {
    pub hostname: String,
    pub username: Option<String>,
    /// Stored in the seed only as a SHA-512 crypt hash.
    pub password: Option<String>,
    pub ssh_authorized_keys: Option<ListOrString>,
    /// Installed besides qemu-guest-agent and spice-vdagent.
    pub packages: Option<ListOrString>,
    pub runcmd: Option<ListOrString>,
    /// `10.0.0.5/24` (a bare address means /24); DHCP when absent.
    pub static_ip: Option<String>,
    pub gateway: Option<String>,
    pub dns: Option<ListOrString>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CloudInitResponse {
    pub success: bool,
    pub message: String,
    /// Use it as a VM's `secondary_iso_path`.
    pub iso_path: String,
}

fn bad(field: &str, msg: &str) -> ApiError {
    ApiError::BadRequest(format!("{field}: {msg}"))
}

fn one_line(field: &str, items: &[String]) -> ApiResult<()> {
    if items.iter().any(|i| i.contains(['\n', '\r', '\0']) || i.len() > 4096) {
        return Err(bad(field, "entries must be single lines of at most 4096 characters"));
    }
    Ok(())
}

/// The three seed files: (user-data, meta-data, network-config).
pub fn seed_files(req: CloudInitRequest, instance_id: &str) -> ApiResult<(String, String, String)> {
    if !HOSTNAME_RE.is_match(&req.hostname) {
        return Err(bad("hostname", "must be 1-63 letters, digits or `-`, not starting or ending with `-`"));
    }
    let mut user = json!({"name": req.username.clone().unwrap_or_else(|| "fastvm".into()),
        "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "groups": ["sudo"]});
    if let Some(name) = &req.username {
        if !USERNAME_RE.is_match(name) {
            return Err(bad("username", "must be a lower-case Linux user name (up to 32 characters)"));
        }
    }
    let mut config = json!({"hostname": req.hostname, "manage_etc_hosts": true});
    if let Some(password) = &req.password {
        if password.is_empty() || password.len() > 128 {
            return Err(bad("password", "must be 1 to 128 characters"));
        }
        let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("sha-crypt params: {e:?}")))?;
        let hash = sha_crypt::sha512_simple(password, &params)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("sha-crypt: {e:?}")))?;
        user["passwd"] = json!(hash);
        user["lock_passwd"] = json!(false);
        config["ssh_pwauth"] = json!(true);
    }
    if let Some(keys) = req.ssh_authorized_keys {
        let keys = keys.items();
        one_line("ssh_authorized_keys", &keys)?;
        user["ssh_authorized_keys"] = json!(keys);
    }
    config["users"] = json!(["default", user]);
    let mut packages: Vec<String> = DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect();
    for p in req.packages.map(ListOrString::items).unwrap_or_default() {
        if !PACKAGE_RE.is_match(&p) {
            return Err(bad("packages", &format!("{p:?} is not a package name")));
        }
        if !packages.contains(&p) {
            packages.push(p);
        }
    }
    config["packages"] = json!(packages);
    if let Some(cmds) = req.runcmd {
        let cmds = cmds.items();
        one_line("runcmd", &cmds)?;
        config["runcmd"] = json!(cmds);
    }
    let user_data =
        format!("#cloud-config\n{}\n", serde_json::to_string_pretty(&config).map_err(anyhow::Error::from)?);
    let meta_data = format!("instance-id: {instance_id}\nlocal-hostname: {}\n", req.hostname);

    // Matches the first Ethernet NIC whatever the guest names it (eth0, ens3, enp1s0...).
    let mut nic = json!({"match": {"name": "e*"}});
    match &req.static_ip {
        None => nic["dhcp4"] = json!(true),
        Some(ip) => {
            let (addr, prefix) = ip.split_once('/').unwrap_or((ip.as_str(), "24"));
            let addr: IpAddr =
                addr.parse().map_err(|_| bad("static_ip", "must be an IP address, optionally /prefix"))?;
            let prefix: u8 =
                prefix.parse().ok().filter(|p| *p <= 128).ok_or_else(|| bad("static_ip", "bad prefix"))?;
            nic["addresses"] = json!([format!("{addr}/{prefix}")]);
            if let Some(gw) = &req.gateway {
                let gw: IpAddr = gw.parse().map_err(|_| bad("gateway", "must be an IP address"))?;
                nic["routes"] = json!([{"to": "default", "via": gw.to_string()}]);
            }
        }
    }
    if let Some(dns) = req.dns {
        let servers = dns
            .items()
            .iter()
            .map(|d| {
                d.parse::<IpAddr>().map(|a| a.to_string()).map_err(|_| bad("dns", "must be IP addresses"))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        nic["nameservers"] = json!({"addresses": servers});
    }
    let network: Value = json!({"version": 2, "ethernets": {"primary": nic}});
    let network_config = serde_json::to_string_pretty(&network).map_err(anyhow::Error::from)?;
    Ok((user_data, meta_data, network_config))
}

/// Builds a seed ISO from `req` in `dir` (the data dir's `cloudinit/`), recorded as `owner`'s: other
/// regular users neither see it nor can attach it. Its path.
pub async fn create_seed_iso(
    dir: &std::path::Path,
    store: &crate::store::Store,
    owner: &str,
    req: CloudInitRequest,
) -> ApiResult<std::path::PathBuf> {
    let hostname = req.hostname.clone();
    let instance_id = format!("fastvm-{}", crate::store::new_id());
    let (user_data, meta_data, network_config) = seed_files(req, &instance_id)?;
    let work = tempfile::tempdir().context("creating a work directory")?;
    for (name, content) in
        [("user-data", &user_data), ("meta-data", &meta_data), ("network-config", &network_config)]
    {
        std::fs::write(work.path().join(name), content).with_context(|| format!("writing {name}"))?;
    }
    let iso = dir.join(format!("{hostname}-{}.iso", &instance_id[7..]));
    let work_dir = work.path().to_path_buf();
    crate::storage::produce(&iso, "building the seed ISO", |tmp| {
        let mut cmd = tokio::process::Command::new("xorriso");
        cmd.args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(tmp)
            .args(["user-data", "meta-data", "network-config"])
            .current_dir(&work_dir);
        cmd
    })
    .await?;
    let (name, owner) =
        (iso.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), owner.to_string());
    if let Err(e) = store
        .call(move |c| Ok(crate::store::seeds::insert(c, &name, &owner, crate::store::now_unix())?))
        .await
    {
        let _ = std::fs::remove_file(&iso);
        return Err(e.into());
    }
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> CloudInitRequest {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn password_is_hashed_and_packages_include_the_agents() -> Result<(), ApiError> {
        let (user, meta, net) = seed_files(
            req(json!({"hostname": "web-1", "username": "ops", "password": "s3cret-pass",
                       "packages": "nginx, curl", "ssh_authorized_keys": ["ssh-ed25519 AAAA test"]})),
            "fastvm-abc",
        )?;
        assert!(user.starts_with("#cloud-config\n"));
        assert!(!user.contains("s3cret-pass"), "clear-text password in user-data");
        let body: Value = serde_json::from_str(&user["#cloud-config\n".len()..]).unwrap_or_default();
        let passwd = body["users"][1]["passwd"].as_str().unwrap_or_default();
        assert!(passwd.starts_with("$6$"), "{passwd}");
        assert!(sha_crypt::sha512_check("s3cret-pass", passwd).is_ok());
        assert_eq!(body["packages"], json!(["qemu-guest-agent", "spice-vdagent", "nginx", "curl"]));
        assert!(meta.contains("local-hostname: web-1"));
        let net: Value = serde_json::from_str(&net).unwrap_or_default();
        assert_eq!(net["ethernets"]["primary"]["dhcp4"], true);
        Ok(())
    }

    #[test]
    fn static_network() -> Result<(), ApiError> {
        let (_, _, net) = seed_files(
            req(
                json!({"hostname": "db", "static_ip": "192.0.2.10", "gateway": "192.0.2.1", "dns": ["192.0.2.53"]}),
            ),
            "i",
        )?;
        let net: Value = serde_json::from_str(&net).unwrap_or_default();
        assert_eq!(net["ethernets"]["primary"]["addresses"], json!(["192.0.2.10/24"]));
        assert_eq!(net["ethernets"]["primary"]["routes"][0]["via"], "192.0.2.1");
        Ok(())
    }

    #[test]
    fn injection_attempts_are_refused() {
        for bad in [
            json!({"hostname": "a\nruncmd: [reboot]"}),
            json!({"hostname": "ok", "username": "root; rm"}),
            json!({"hostname": "ok", "packages": ["vim; reboot"]}),
            json!({"hostname": "ok", "runcmd": ["echo a\n- reboot"]}),
            json!({"hostname": "ok", "static_ip": "10.0.0.1; x"}),
        ] {
            assert!(seed_files(req(bad.clone()), "i").is_err(), "{bad}");
        }
    }
}
