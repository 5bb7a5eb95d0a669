//! Checks a parsed `VmSpec` against the rules and the host's limits. Parsing (serde) only checks
//! shapes; everything about values is here, and every error names the field it is about.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::spec::{NetworkType, VmSpec};

pub const NAME_MAX: usize = 50;
pub const MIN_MEMORY_MIB: u64 = 128;
/// A VM's definition does not depend on the host it is made on (configs move between hosts): these
/// are QEMU's bounds for x86_64 guests, and the host's own size is checked when the VM starts.
pub const MAX_MEMORY_MIB: u64 = 4 << 20;
pub const MAX_CPUS: u32 = 255;
pub const MAX_DISK_GB: u64 = 1024;
pub const MAX_NETWORKS: usize = 8;
pub const IFNAME_MAX: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// JSON path of the offending field, e.g. `networks[1].bridge_name`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

/// What this controller allows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Directories ISO images may come from (compared after resolving symlinks).
    pub iso_roots: Vec<PathBuf>,
}

pub fn validate(spec: &VmSpec, limits: &Limits) -> Result<(), SpecError> {
    validate_name(&spec.name)?;
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&spec.memory) {
        return Err(err("memory", format!("must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB")));
    }
    if !(1..=MAX_CPUS).contains(&spec.cpus) {
        return Err(err("cpus", format!("must be 1 to {MAX_CPUS}")));
    }
    if spec.disk_size < 1 || spec.disk_size > MAX_DISK_GB {
        return Err(err("disk_size", format!("must be 1 to {MAX_DISK_GB} GB")));
    }
    for (field, path) in [("iso_path", &spec.iso_path), ("secondary_iso_path", &spec.secondary_iso_path)] {
        if let Some(path) = path.as_deref().filter(|p| !p.is_empty()) {
            resolve_iso(path, &limits.iso_roots).map_err(|m| err(field, m))?;
        }
    }
    for (i, device) in spec.boot_order.iter().enumerate() {
        if spec.boot_order[..i].contains(device) {
            return Err(err("boot_order", format!("{device:?} is listed twice").to_lowercase()));
        }
    }
    if spec.secure_boot_enabled() && spec.firmware != crate::spec::Firmware::Uefi {
        return Err(err("secure_boot", "needs firmware \"uefi\""));
    }
    validate_networks(spec)
}

/// 1-50 characters of letters, digits, space, `_`, `.` and `-`, not blank.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-'));
    if name.trim().is_empty() || name.chars().count() > NAME_MAX || !ok_chars {
        return Err(err(
            "name",
            format!("must be 1 to {NAME_MAX} characters of letters, digits, space, `_`, `.` or `-`"),
        ));
    }
    Ok(())
}

/// A host network interface name: 1-15 of letters, digits, `_`, `.` and `-` (what the kernel allows,
/// minus anything a shell or QEMU option parser could read as syntax).
pub fn valid_ifname(name: &str) -> bool {
    (1..=IFNAME_MAX).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name != "."
        && name != ".."
}

/// `52:54:00:12:34:56`-style unicast MAC address.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn validate_networks(spec: &VmSpec) -> Result<(), SpecError> {
    if spec.networks.len() > MAX_NETWORKS {
        return Err(err("networks", format!("at most {MAX_NETWORKS} network interfaces")));
    }
    let mut forwards = Vec::new();
    for (i, net) in spec.networks.iter().enumerate() {
        let field = |name: &str| format!("networks[{i}].{name}");
        if let Some(id) = &net.id {
            let ok = (1..=32).contains(&id.len())
                && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            if !ok {
                return Err(err(field("id"), "must be 1 to 32 of letters, digits, `_` or `-`"));
            }
            if spec.networks[..i].iter().any(|n| n.id.as_deref() == Some(id)) {
                return Err(err(field("id"), "is used by another interface of this VM"));
            }
        }
        if let Some(mac) = &net.mac_address {
            if !valid_mac(mac) {
                return Err(err(field("mac_address"), "must be a unicast MAC like 52:54:00:12:34:56"));
            }
        }
        for (name, value) in [("bridge_name", &net.bridge_name), ("parent_interface", &net.parent_interface)]
        {
            if let Some(v) = value {
                if !valid_ifname(v) {
                    return Err(err(
                        field(name),
                        format!("must be 1 to {IFNAME_MAX} of letters, digits, `_`, `.` or `-`"),
                    ));
                }
            }
        }
        match net.kind {
            NetworkType::Bridge if net.bridge_name.is_none() => {
                return Err(err(field("bridge_name"), "is required for a bridge network"));
            }
            NetworkType::Macvtap if net.parent_interface.is_none() => {
                return Err(err(field("parent_interface"), "is required for a macvtap network"));
            }
            _ => {}
        }
        if !net.port_forwards.is_empty() && net.kind != NetworkType::Nat {
            return Err(err(field("port_forwards"), "only NAT networks forward ports"));
        }
        for (j, pf) in net.port_forwards.iter().enumerate() {
            if pf.host_port == 0 || pf.guest_port == 0 {
                return Err(err(format!("networks[{i}].port_forwards[{j}]"), "ports must be 1 to 65535"));
            }
            let key = (pf.host_port, pf.protocol);
            if forwards.contains(&key) {
                return Err(err(
                    format!("networks[{i}].port_forwards[{j}].host_port"),
                    format!("{} is forwarded twice", pf.host_port),
                ));
            }
            forwards.push(key);
        }
    }
    Ok(())
}

/// The canonical path of an ISO image, if it is a regular file inside one of `roots`.
pub fn resolve_iso(path: &str, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return Err("must be an absolute path".into());
    }
    // One answer for every path that is not an ISO of the library, so that the check tells nothing
    // about which files of the host exist.
    let resolved = requested.canonicalize().map_err(|_| iso_not_found(path))?;
    let inside = roots.iter().filter_map(|r| r.canonicalize().ok()).any(|root| resolved.starts_with(&root));
    if !inside || !resolved.is_file() {
        return Err(iso_not_found(path));
    }
    Ok(resolved)
}

/// The refusal of an ISO path that is not in the library, or not the asker's to use.
pub fn iso_not_found(path: &str) -> String {
    format!("{path} is not an ISO image of the allowed ISO directories")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{BootDevice, Firmware, NetworkSpec, PortForward, Protocol};

    fn spec() -> VmSpec {
        serde_json::from_str(r#"{"name":"vm one","memory":256,"cpus":1,"disk_size":1}"#)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn limits(roots: Vec<PathBuf>) -> Limits {
        Limits { iso_roots: roots }
    }

    fn field_of(spec: &VmSpec, roots: Vec<PathBuf>) -> String {
        match validate(spec, &limits(roots)) {
            Ok(()) => "ok".into(),
            Err(e) => e.field,
        }
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(field_of(&spec(), vec![]), "ok");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "   ", "a;rm -rf /", "$(reboot)", "x`id`", "a/b", "a,b", "tab\there", &"n".repeat(51)]
        {
            let mut s = spec();
            s.name = bad.into();
            assert_eq!(field_of(&s, vec![]), "name", "{bad:?}");
        }
        let mut s = spec();
        s.name = "Ubuntu Server 24.04_x-1".into();
        assert_eq!(field_of(&s, vec![]), "ok");
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        type Change = fn(&mut VmSpec);
        let cases: [(&str, Change); 6] = [
            ("memory", |s| s.memory = 127),
            ("memory", |s| s.memory = MAX_MEMORY_MIB + 1),
            ("cpus", |s| s.cpus = 0),
            ("cpus", |s| s.cpus = 256),
            ("disk_size", |s| s.disk_size = 0),
            ("disk_size", |s| s.disk_size = 1025),
        ];
        for (field, change) in cases {
            let mut s = spec();
            change(&mut s);
            assert_eq!(field_of(&s, vec![]), field);
        }
    }

    #[test]
    fn duplicate_boot_entries_and_secure_boot_on_bios_are_refused() {
        let mut s = spec();
        s.boot_order = vec![BootDevice::Disk, BootDevice::Cdrom, BootDevice::Disk];
        assert_eq!(field_of(&s, vec![]), "boot_order");
        let mut s = spec();
        s.firmware = Firmware::Bios;
        s.secure_boot = Some(true);
        assert_eq!(field_of(&s, vec![]), "secure_boot");
    }

    #[test]
    fn network_fields_are_checked() {
        let cases: Vec<(&str, NetworkSpec)> = vec![
            ("networks[0].bridge_name", NetworkSpec { kind: NetworkType::Bridge, ..Default::default() }),
            (
                "networks[0].bridge_name",
                NetworkSpec {
                    kind: NetworkType::Bridge,
                    bridge_name: Some("br0;reboot".into()),
                    ..Default::default()
                },
            ),
            (
                "networks[0].parent_interface",
                NetworkSpec {
                    kind: NetworkType::Macvtap,
                    parent_interface: Some("a-very-long-interface".into()),
                    ..Default::default()
                },
            ),
            (
                "networks[0].mac_address",
                NetworkSpec { mac_address: Some("01:00:5e:00:00:01".into()), ..Default::default() },
            ),
            (
                "networks[0].mac_address",
                NetworkSpec { mac_address: Some("52:54:00:zz:00:01".into()), ..Default::default() },
            ),
            (
                "networks[0].port_forwards",
                NetworkSpec {
                    kind: NetworkType::Isolated,
                    port_forwards: vec![PortForward {
                        host_port: 8080,
                        guest_port: 80,
                        protocol: Protocol::Tcp,
                    }],
                    ..Default::default()
                },
            ),
            (
                "networks[0].port_forwards[0]",
                NetworkSpec {
                    port_forwards: vec![PortForward {
                        host_port: 0,
                        guest_port: 80,
                        protocol: Protocol::Tcp,
                    }],
                    ..Default::default()
                },
            ),
            ("networks[0].id", NetworkSpec { id: Some("a b".into()), ..Default::default() }),
        ];
        for (field, net) in cases {
            let mut s = spec();
            s.networks = vec![net];
            assert_eq!(field_of(&s, vec![]), field);
        }
        let mut s = spec();
        let fwd = PortForward { host_port: 2222, guest_port: 22, protocol: Protocol::Tcp };
        s.networks = vec![
            NetworkSpec { port_forwards: vec![fwd.clone()], ..Default::default() },
            NetworkSpec { port_forwards: vec![fwd], ..Default::default() },
        ];
        assert_eq!(field_of(&s, vec![]), "networks[1].port_forwards[0].host_port");
    }

    #[test]
    fn iso_paths_must_stay_inside_the_roots() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("images");
        std::fs::create_dir(&root)?;
        std::fs::write(root.join("ok.iso"), b"iso")?;
        std::fs::write(dir.path().join("secret.iso"), b"no")?;
        std::os::unix::fs::symlink(dir.path().join("secret.iso"), root.join("link.iso"))?;
        std::fs::create_dir(root.join("sub.iso"))?;
        let roots = vec![root.clone()];
        let with = |p: String| {
            let mut s = spec();
            s.iso_path = Some(p);
            field_of(&s, roots.clone())
        };
        assert_eq!(with(root.join("ok.iso").display().to_string()), "ok");
        for bad in [
            format!("{}/../secret.iso", root.display()),
            root.join("link.iso").display().to_string(),
            root.join("missing.iso").display().to_string(),
            root.join("sub.iso").display().to_string(),
            "images/ok.iso".into(),
            "/etc/passwd".into(),
        ] {
            assert_eq!(with(bad.clone()), "iso_path", "{bad}");
        }
        let mut s = spec();
        s.secondary_iso_path = Some("/etc/shadow".into());
        assert_eq!(field_of(&s, roots), "secondary_iso_path");
        Ok(())
    }
}
