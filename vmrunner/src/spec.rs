//! `VmSpec` and the enums it is made of.

use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OsType {
    #[default]
    Linux,
    Windows,
    Other,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CpuModel {
    #[default]
    #[serde(rename = "host")]
    Host,
    #[serde(rename = "qemu64")]
    Qemu64,
    #[serde(rename = "max")]
    Max,
    #[serde(rename = "Skylake-Client")]
    SkylakeClient,
    #[serde(rename = "EPYC")]
    Epyc,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DisplayType {
    #[default]
    Qxl,
    Std,
    Virtio,
    Cirrus,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Disk,
    Cdrom,
    Network,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    #[default]
    Uefi,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    #[default]
    Nat,
    Bridge,
    Macvtap,
    Isolated,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    #[default]
    Virtio,
    E1000,
    Rtl8139,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: NetworkType,
    #[serde(default)]
    pub model: NicModel,
    #[serde(default)]
    pub bridge_name: Option<String>,
    #[serde(default)]
    pub parent_interface: Option<String>,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub port_forwards: Vec<PortForward>,
}

/// A VM as the operator asked for it. Sizes use the original API's units: `memory` in MiB,
/// `disk_size` in GB.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    pub memory: u64,
    pub cpus: u32,
    pub disk_size: u64,
    #[serde(default)]
    pub iso_path: Option<String>,
    #[serde(default)]
    pub secondary_iso_path: Option<String>,
    #[serde(default)]
    pub os_type: OsType,
    #[serde(default)]
    pub cpu_model: CpuModel,
    #[serde(default)]
    pub display_type: DisplayType,
    #[serde(default = "default_boot_order")]
    pub boot_order: Vec<BootDevice>,
    #[serde(default = "default_networks")]
    pub networks: Vec<NetworkSpec>,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default)]
    pub secure_boot: Option<bool>,
    #[serde(default)]
    pub tpm: Option<bool>,
}

fn default_boot_order() -> Vec<BootDevice> {
    vec![BootDevice::Disk, BootDevice::Cdrom]
}

fn default_networks() -> Vec<NetworkSpec> {
    vec![NetworkSpec::default()]
}

impl VmSpec {
    /// Windows 11 needs Secure Boot and a TPM, so a Windows VM gets both unless the operator said otherwise.
    pub fn secure_boot_enabled(&self) -> bool {
        self.secure_boot.unwrap_or(self.os_type == OsType::Windows)
    }

    pub fn tpm_enabled(&self) -> bool {
        self.tpm.unwrap_or(self.os_type == OsType::Windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_minimal_request_parses_with_defaults() -> Result<(), serde_json::Error> {
        let spec: VmSpec = serde_json::from_str(
            r#"{"name":"Ubuntu Server","memory":2048,"cpus":2,"disk_size":20,"iso_path":"/x.iso"}"#,
        )?;
        assert_eq!(spec.firmware, Firmware::Uefi);
        assert_eq!(spec.networks.len(), 1);
        assert_eq!(spec.networks[0].kind, NetworkType::Nat);
        assert_eq!(spec.boot_order, vec![BootDevice::Disk, BootDevice::Cdrom]);
        assert!(!spec.secure_boot_enabled());
        Ok(())
    }

    #[test]
    fn windows_defaults_to_secure_boot_and_tpm() -> Result<(), serde_json::Error> {
        let spec: VmSpec = serde_json::from_str(
            r#"{"name":"w","memory":8192,"cpus":4,"disk_size":60,"os_type":"windows","networks":[{"type":"bridge","bridge_name":"br0"}]}"#,
        )?;
        assert!(spec.secure_boot_enabled() && spec.tpm_enabled());
        assert_eq!(spec.networks[0].kind, NetworkType::Bridge);
        Ok(())
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<VmSpec, _> =
            serde_json::from_str(r#"{"name":"a","memory":256,"cpus":1,"disk_size":1,"bogus":1}"#);
        assert!(r.is_err());
    }
}
