//! Host side of bridge and macvtap NICs: a tap attached to an existing bridge, or a macvtap on a
//! parent interface whose character device QEMU inherits as an open file descriptor.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use vmrunner::NetworkType;
use vmrunner::argv::NicBackend;
use vmrunner::run_config::RunConfig;

use crate::error::{Error, Result, io};

/// Links created for this run, removed when it ends; open macvtap files live as long as this does.
#[derive(Default)]
pub struct HostNics {
    pub backends: Vec<NicBackend>,
    links: Vec<String>,
    _files: Vec<File>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(io("running ip"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Tool {
            tool: format!("ip {}", args.join(" ")),
            said: String::from_utf8_lossy(&out.stderr).trim().into(),
        })
    }
}

fn link_name(prefix: &str, vm_id: &str, index: usize) -> String {
    let id: String = vm_id.chars().take(10).collect();
    format!("{prefix}{id}{index}")
}

impl HostNics {
    pub fn prepare(cfg: &RunConfig) -> Result<HostNics> {
        let mut nics = HostNics::default();
        for (i, net) in cfg.spec.networks.iter().enumerate() {
            let backend = match net.kind {
                NetworkType::Nat | NetworkType::Isolated => NicBackend::User,
                NetworkType::Bridge => nics.tap(cfg, i, net.bridge_name.as_deref().unwrap_or_default())?,
                NetworkType::Macvtap => nics.macvtap(
                    cfg,
                    i,
                    net.parent_interface.as_deref().unwrap_or_default(),
                    net.mac_address.as_deref(),
                )?,
            };
            nics.backends.push(backend);
        }
        Ok(nics)
    }

    fn tap(&mut self, cfg: &RunConfig, i: usize, bridge: &str) -> Result<NicBackend> {
        let name = link_name("fvt", &cfg.launch.vm_id, i);
        let _ = ip(&["link", "del", &name]); // left over from a run that was killed
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        self.links.push(name.clone());
        ip(&["link", "set", &name, "master", bridge])?;
        ip(&["link", "set", &name, "up"])?;
        Ok(NicBackend::Tap { ifname: name })
    }

    fn macvtap(&mut self, cfg: &RunConfig, i: usize, parent: &str, mac: Option<&str>) -> Result<NicBackend> {
        let name = link_name("fvm", &cfg.launch.vm_id, i);
        let _ = ip(&["link", "del", &name]);
        ip(&["link", "add", "link", parent, "name", &name, "type", "macvtap", "mode", "bridge"])?;
        self.links.push(name.clone());
        if let Some(mac) = mac {
            ip(&["link", "set", &name, "address", mac])?;
        }
        ip(&["link", "set", &name, "up"])?;
        let sys = format!("/sys/class/net/{name}");
        let read = |p: String| {
            std::fs::read_to_string(&p).map(|s| s.trim().to_string()).map_err(io(format!("reading {p}")))
        };
        let ifindex = read(format!("{sys}/ifindex"))?;
        let dev_node = format!("/dev/tap{ifindex}");
        if !std::path::Path::new(&dev_node).exists() {
            // Without udev (containers) the character device is not created for us.
            let numbers = read(format!("{sys}/macvtap/tap{ifindex}/dev"))?;
            let (major, minor) = numbers
                .split_once(':')
                .ok_or_else(|| Error::Start(format!("bad device number {numbers}")))?;
            let out = Command::new("mknod")
                .args([&dev_node, "c", major, minor])
                .output()
                .map_err(io("running mknod"))?;
            if !out.status.success() {
                return Err(Error::Tool {
                    tool: format!("mknod {dev_node}"),
                    said: String::from_utf8_lossy(&out.stderr).trim().into(),
                });
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev_node)
            .map_err(io(format!("opening {dev_node}")))?;
        // QEMU must inherit this descriptor, so it may not be close-on-exec.
        fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| io(format!("fcntl {dev_node}"))(e.into()))?;
        let fd = file.as_raw_fd();
        self._files.push(file);
        Ok(NicBackend::Fd { fd })
    }

    /// Closes our copies of the macvtap descriptors once QEMU has inherited them.
    pub fn close_files(&mut self) {
        self._files.clear();
    }

    pub fn teardown(&mut self) {
        for link in self.links.drain(..) {
            let _ = ip(&["link", "del", &link]);
        }
        self._files.clear();
    }
}

impl Drop for HostNics {
    fn drop(&mut self) {
        self.teardown();
    }
}
