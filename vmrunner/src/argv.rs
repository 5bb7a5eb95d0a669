//! The pure function from a VM spec (plus where things live on this host) to QEMU's argv.
//!
//! Built from small pieces, one per concern, so each can be golden-tested alone. Devices, block nodes
//! and netdevs use QEMU's JSON option syntax: values need no escaping there, whatever the path.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::paths::{RunDir, VmDir};
use crate::spec::{BootDevice, CpuModel, DisplayType, Firmware, NetworkType, NicModel, Protocol, VmSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// Firmware images on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvmfPaths {
    pub code: PathBuf,
    pub vars_template: PathBuf,
    pub secboot_code: PathBuf,
    pub secboot_vars_template: PathBuf,
}

impl Default for OvmfPaths {
    fn default() -> Self {
        let dir = Path::new("/usr/share/OVMF");
        OvmfPaths {
            code: dir.join("OVMF_CODE_4M.fd"),
            vars_template: dir.join("OVMF_VARS_4M.fd"),
            secboot_code: dir.join("OVMF_CODE_4M.secboot.fd"),
            secboot_vars_template: dir.join("OVMF_VARS_4M.ms.fd"),
        }
    }
}

/// How one NIC reaches the host, decided when the VM is prepared (taps exist only then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum NicBackend {
    /// QEMU's user-mode network (NAT, and isolated with `restrict`).
    User,
    /// A tap device already attached to a bridge.
    Tap { ifname: String },
    /// An open macvtap character device inherited by QEMU.
    Fd { fd: i32 },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// A standalone volume attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDisk {
    pub id: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    /// Which PCIe root port (q35) it sits on, 1-based; hot-plugs take the free ones.
    pub slot: u32,
}

/// PCIe root ports a q35 VM gets, so volumes can be attached and hot-plugged (q35's root bus takes no
/// hot-plugged devices).
pub const ROOT_PORTS: u32 = 8;

/// QEMU ids of a volume: (block node, device).
pub fn volume_ids(volume_id: &str) -> (String, String) {
    (format!("vol-{volume_id}"), format!("voldev-{volume_id}"))
}

/// The device a volume is plugged in as (cold or hot: the same, so either can be unplugged).
pub fn volume_device(q35: bool, volume: &VolumeDisk) -> Value {
    let (node, dev) = volume_ids(&volume.id);
    let mut d = json!({"driver": "virtio-blk-pci", "drive": node, "id": dev});
    if q35 {
        d["bus"] = json!(format!("rp{}", volume.slot));
    }
    d
}

/// The block node of a volume, for `-blockdev` or QMP `blockdev-add`. A volume never stacks on
/// another image: whatever backing file a qcow2 header may name is not opened.
pub fn volume_blockdev(volume: &VolumeDisk) -> Value {
    let (node, _) = volume_ids(&volume.id);
    let mut node = json!({"driver": volume.format.as_str(), "node-name": node,
           "file": {"driver": "file", "filename": volume.path}});
    if volume.format == DiskFormat::Qcow2 {
        node["backing"] = Value::Null;
    }
    node
}

/// Everything about where and how a VM runs on this host, besides the spec itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub vm_id: String,
    pub uuid: String,
    /// Persistent files: disk, OVMF vars, TPM state.
    pub vm_dir: PathBuf,
    /// Sockets and logs of this run.
    pub run_dir: PathBuf,
    pub accel: Accel,
    pub ovmf: OvmfPaths,
    /// One per entry of `spec.networks`.
    pub nics: Vec<NicBackend>,
    /// Host address NAT port forwards listen on.
    pub port_forward_bind: String,
    /// Canonical ISO paths (validated by the controller).
    pub iso: Option<PathBuf>,
    pub secondary_iso: Option<PathBuf>,
    /// Attached standalone volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeDisk>,
    /// Where standalone volumes live (a container mounts it whole, so volumes can be hot-plugged).
    #[serde(default)]
    pub volumes_dir: Option<PathBuf>,
    /// Start from this internal snapshot's saved RAM state (restoring a live snapshot).
    #[serde(default)]
    pub loadvm: Option<String>,
    /// The read-only images the disk is stacked on (a clone's shared bases, outside `vm_dir`, checked
    /// by the controller to be its own), which a container must see to open the disk. Empty: the disk
    /// opens no backing file at all.
    #[serde(default)]
    pub backing_files: Vec<PathBuf>,
}

impl Launch {
    pub fn vm(&self) -> VmDir {
        VmDir::new(&self.vm_dir)
    }
    pub fn run(&self) -> RunDir {
        RunDir::new(&self.run_dir)
    }
}

/// `pc` (i440fx) for BIOS guests, `q35` for UEFI (Secure Boot needs q35 + SMM).
pub fn is_q35(spec: &VmSpec) -> bool {
    spec.firmware == Firmware::Uefi
}

/// A path inside a `key=value,...` option: commas are doubled.
fn opt_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn json_arg(flag: &str, value: Value) -> Vec<String> {
    vec![flag.to_string(), value.to_string()]
}

fn bootindex(spec: &VmSpec, device: BootDevice) -> Option<usize> {
    spec.boot_order.iter().position(|d| *d == device).map(|i| i + 1)
}

fn with_bootindex(mut device: Value, index: Option<usize>) -> Value {
    if let (Some(i), Some(map)) = (index, device.as_object_mut()) {
        map.insert("bootindex".into(), json!(i));
    }
    device
}

pub fn base(spec: &VmSpec, l: &Launch) -> Vec<String> {
    let mut a = args(&["-S", "-nodefaults", "-no-user-config", "-msg", "timestamp=on"]);
    a.extend(["-name".into(), format!("guest={},process=fastvm-{}", spec.name, l.vm_id)]);
    a.extend(["-uuid".into(), l.uuid.clone()]);
    a.extend(["-pidfile".into(), l.run().qemu_pid().display().to_string()]);
    a.extend(args(&["-display", "none"]));
    a
}

pub fn machine(spec: &VmSpec, _l: &Launch) -> Vec<String> {
    let m = if !is_q35(spec) {
        "pc".to_string()
    } else if spec.secure_boot_enabled() {
        "q35,smm=on,pflash0=fw-code,pflash1=fw-vars".to_string()
    } else {
        "q35,pflash0=fw-code,pflash1=fw-vars".to_string()
    };
    vec!["-machine".into(), m]
}

pub fn accel(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    let a = match l.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    args(&["-accel", a])
}

pub fn cpu(spec: &VmSpec, l: &Launch) -> Vec<String> {
    let model = match (spec.cpu_model, l.accel) {
        // `host` passes the host CPU through, which only KVM can do; TCG's closest is `max`.
        (CpuModel::Host, Accel::Kvm) => "host",
        (CpuModel::Host, Accel::Tcg) | (CpuModel::Max, _) => "max",
        (CpuModel::Qemu64, _) => "qemu64",
        (CpuModel::SkylakeClient, _) => "Skylake-Client",
        (CpuModel::Epyc, _) => "EPYC",
    };
    vec!["-cpu".into(), model.into(), "-smp".into(), spec.cpus.to_string()]
}

pub fn memory(spec: &VmSpec, _l: &Launch) -> Vec<String> {
    vec!["-m".into(), spec.memory.to_string()]
}

pub fn firmware(spec: &VmSpec, l: &Launch) -> Vec<String> {
    if spec.firmware != Firmware::Uefi {
        return Vec::new();
    }
    let code = if spec.secure_boot_enabled() { &l.ovmf.secboot_code } else { &l.ovmf.code };
    let mut a = json_arg(
        "-blockdev",
        json!({"driver": "file", "filename": code, "node-name": "fw-code", "read-only": true}),
    );
    a.extend(json_arg(
        "-blockdev",
        json!({"driver": "file", "filename": l.vm().ovmf_vars(), "node-name": "fw-vars"}),
    ));
    if spec.secure_boot_enabled() {
        // Restricts writes to the vars flash to SMM, which is what makes Secure Boot hold.
        a.extend(args(&["-global", "driver=cfi.pflash01,property=secure,value=on"]));
    }
    a
}

pub fn disks(spec: &VmSpec, l: &Launch) -> Vec<String> {
    let mut a = json_arg(
        "-blockdev",
        json!({"driver": "file", "filename": l.vm().disk(), "node-name": "disk0-file"}),
    );
    // Only a clone's overlay stacks on an image (its shared bases, which the controller checked):
    // any other disk opens no backing file, whatever its header says.
    let mut disk0 = json!({"driver": "qcow2", "file": "disk0-file", "node-name": "disk0"});
    if l.backing_files.is_empty() {
        disk0["backing"] = Value::Null;
    }
    a.extend(json_arg("-blockdev", disk0));
    a.extend(json_arg(
        "-device",
        with_bootindex(
            json!({"driver": "virtio-blk-pci", "drive": "disk0", "id": "vd0"}),
            bootindex(spec, BootDevice::Disk),
        ),
    ));
    a
}

pub fn root_ports(spec: &VmSpec, _l: &Launch) -> Vec<String> {
    if !is_q35(spec) {
        return Vec::new();
    }
    (1..=ROOT_PORTS)
        .flat_map(|n| {
            json_arg(
                "-device",
                json!({"driver": "pcie-root-port", "id": format!("rp{n}"), "bus": "pcie.0", "chassis": n}),
            )
        })
        .collect()
}

pub fn volumes(spec: &VmSpec, l: &Launch) -> Vec<String> {
    l.volumes
        .iter()
        .flat_map(|v| {
            let mut a = json_arg("-blockdev", volume_blockdev(v));
            a.extend(json_arg("-device", volume_device(is_q35(spec), v)));
            a
        })
        .collect()
}

pub fn cdroms(spec: &VmSpec, l: &Launch) -> Vec<String> {
    let mut a = Vec::new();
    for (i, iso) in [&l.iso, &l.secondary_iso].into_iter().enumerate() {
        let Some(iso) = iso else { continue };
        let file = format!("cd{i}-file");
        let node = format!("cd{i}");
        a.extend(json_arg(
            "-blockdev",
            json!({"driver": "file", "filename": iso, "node-name": file, "read-only": true}),
        ));
        a.extend(json_arg(
            "-blockdev",
            json!({"driver": "raw", "file": file, "node-name": node, "read-only": true}),
        ));
        // q35's AHCI has one device per bus; pc's IDE has two units on the secondary bus.
        let placement = if is_q35(spec) {
            json!({"bus": format!("ide.{i}")})
        } else {
            json!({"bus": "ide.1", "unit": i})
        };
        let mut device = json!({"driver": "ide-cd", "drive": node, "id": format!("cdrom{i}")});
        if let (Some(d), Some(p)) = (device.as_object_mut(), placement.as_object()) {
            d.extend(p.clone());
        }
        // Only the primary ISO boots; the secondary one carries drivers or a cloud-init seed.
        let index = if i == 0 { bootindex(spec, BootDevice::Cdrom) } else { None };
        a.extend(json_arg("-device", with_bootindex(device, index)));
    }
    a
}

pub fn nics(spec: &VmSpec, l: &Launch) -> Vec<String> {
    let mut a = Vec::new();
    let mut user_nets = 0;
    for (i, net) in spec.networks.iter().enumerate() {
        let id = format!("net{i}");
        let netdev = match l.nics.get(i).unwrap_or(&NicBackend::User) {
            NicBackend::User => {
                // Each user-mode network needs its own subnet when a VM has several.
                let subnet = format!("10.0.{}.0/24", 2 + user_nets);
                user_nets += 1;
                let mut nd = json!({"type": "user", "id": id, "net": subnet});
                if net.kind == NetworkType::Isolated {
                    nd["restrict"] = json!(true);
                }
                let forwards: Vec<Value> = net
                    .port_forwards
                    .iter()
                    .map(|pf| {
                        let proto = match pf.protocol {
                            Protocol::Tcp => "tcp",
                            Protocol::Udp => "udp",
                        };
                        json!({"str": format!("{proto}:{}:{}-:{}", l.port_forward_bind, pf.host_port, pf.guest_port)})
                    })
                    .collect();
                if !forwards.is_empty() {
                    nd["hostfwd"] = Value::Array(forwards);
                }
                nd
            }
            NicBackend::Tap { ifname } => {
                json!({"type": "tap", "id": id, "ifname": ifname, "script": "no", "downscript": "no"})
            }
            NicBackend::Fd { fd } => json!({"type": "tap", "id": id, "fd": fd.to_string()}),
        };
        a.extend(json_arg("-netdev", netdev));
        let driver = match net.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        };
        let mut device = json!({"driver": driver, "netdev": id, "id": format!("nic{i}")});
        if let Some(mac) = &net.mac_address {
            device["mac"] = json!(mac);
        }
        let index = if i == 0 { bootindex(spec, BootDevice::Network) } else { None };
        a.extend(json_arg("-device", with_bootindex(device, index)));
    }
    a
}

pub fn display(spec: &VmSpec, _l: &Launch) -> Vec<String> {
    let device = match spec.display_type {
        DisplayType::Qxl => json!({"driver": "qxl-vga", "id": "video0", "vram_size_mb": 64}),
        DisplayType::Std => json!({"driver": "VGA", "id": "video0"}),
        DisplayType::Virtio => json!({"driver": "virtio-vga", "id": "video0"}),
        DisplayType::Cirrus => json!({"driver": "cirrus-vga", "id": "video0"}),
    };
    json_arg("-device", device)
}

pub fn spice(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    // Ticketing on: nobody gets in until the controller sets a password (QMP `set_password`) for a
    // console request, and it expires soon after.
    vec!["-spice".into(), format!("unix=on,addr={}", opt_path(&l.run().spice()))]
}

pub fn vnc(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    vec!["-vnc".into(), format!("unix:{}", opt_path(&l.run().vnc()))]
}

/// virtio-serial ports: the QEMU guest agent, and the SPICE agent (clipboard, resize).
pub fn channels(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    let mut a = json_arg("-device", json!({"driver": "virtio-serial-pci", "id": "vser0"}));
    a.extend([
        "-chardev".into(),
        format!("socket,id=qga0,path={},server=on,wait=off", opt_path(&l.run().qga())),
    ]);
    a.extend(json_arg(
        "-device",
        json!({"driver": "virtserialport", "bus": "vser0.0", "chardev": "qga0", "name": "org.qemu.guest_agent.0"}),
    ));
    a.extend(args(&["-chardev", "spicevmc,id=vdagent,name=vdagent"]));
    a.extend(json_arg(
        "-device",
        json!({"driver": "virtserialport", "bus": "vser0.0", "chardev": "vdagent", "name": "com.redhat.spice.0"}),
    ));
    a
}

/// USB controller, a tablet (absolute pointer for VNC) and two SPICE USB redirection channels.
pub fn usb(_spec: &VmSpec, _l: &Launch) -> Vec<String> {
    let mut a = json_arg("-device", json!({"driver": "qemu-xhci", "id": "xhci"}));
    a.extend(json_arg("-device", json!({"driver": "usb-tablet", "id": "tablet0", "bus": "xhci.0"})));
    for n in 1..=2 {
        a.extend(["-chardev".into(), format!("spicevmc,id=usbredirchardev{n},name=usbredir")]);
        a.extend(json_arg(
            "-device",
            json!({"driver": "usb-redir", "chardev": format!("usbredirchardev{n}"), "id": format!("usbredirdev{n}"), "bus": "xhci.0"}),
        ));
    }
    a
}

pub fn serial(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!(
            "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=on",
            opt_path(&l.run().serial()),
            opt_path(&l.run().serial_log())
        ),
        "-serial".into(),
        "chardev:ser0".into(),
    ]
}

/// Two QMP monitors: `qmp.sock` for vmrunner's start-up and anyone's one-off commands,
/// `monitor.sock` for the controller's connection that lasts the whole run.
pub fn qmp(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=qmp0,path={},server=on,wait=off", opt_path(&l.run().qmp())),
        "-mon".into(),
        "chardev=qmp0,mode=control".into(),
        "-chardev".into(),
        format!("socket,id=qmp1,path={},server=on,wait=off", opt_path(&l.run().monitor())),
        "-mon".into(),
        "chardev=qmp1,mode=control".into(),
    ]
}

pub fn tpm(spec: &VmSpec, l: &Launch) -> Vec<String> {
    if !spec.tpm_enabled() {
        return Vec::new();
    }
    // CRB is the TPM 2.0 interface UEFI guests (Windows 11) expect; SeaBIOS drives TIS.
    let device = if is_q35(spec) { "tpm-crb" } else { "tpm-tis" };
    vec![
        "-chardev".into(),
        format!("socket,id=chrtpm,path={}", opt_path(&l.run().swtpm())),
        "-tpmdev".into(),
        "emulator,id=tpm0,chardev=chrtpm".into(),
        "-device".into(),
        json!({"driver": device, "tpmdev": "tpm0"}).to_string(),
    ]
}

pub fn loadvm(_spec: &VmSpec, l: &Launch) -> Vec<String> {
    l.loadvm.iter().flat_map(|tag| ["-loadvm".to_string(), tag.clone()]).collect()
}

pub fn balloon(_spec: &VmSpec, _l: &Launch) -> Vec<String> {
    json_arg("-device", json!({"driver": "virtio-balloon-pci", "id": "balloon0"}))
}

type Piece = fn(&VmSpec, &Launch) -> Vec<String>;

/// The pieces in argv order, by name (the golden tests print each under its name).
pub const PIECES: &[(&str, Piece)] = &[
    ("base", base),
    ("machine", machine),
    ("accel", accel),
    ("cpu", cpu),
    ("memory", memory),
    ("firmware", firmware),
    ("root_ports", root_ports),
    ("disks", disks),
    ("volumes", volumes),
    ("cdroms", cdroms),
    ("nics", nics),
    ("display", display),
    ("spice", spice),
    ("vnc", vnc),
    ("channels", channels),
    ("usb", usb),
    ("serial", serial),
    ("qmp", qmp),
    ("tpm", tpm),
    ("balloon", balloon),
    ("loadvm", loadvm),
];

/// The full argument list (without the program name).
pub fn qemu_args(spec: &VmSpec, launch: &Launch) -> Vec<String> {
    PIECES.iter().flat_map(|(_, piece)| piece(spec, launch)).collect()
}
