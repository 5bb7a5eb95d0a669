//! The container-first runtime: one Docker container per VM (`fastvm-<vm_id>`, image
//! `fastvm/vmrunner`), created through the Docker API. The container runs `vmrunner` exactly as the
//! process runtime does; its VM and run directories are bind-mounted at the same host paths, so the
//! controller still reaches QMP, SPICE, VNC and the serial port through unix sockets, never over a
//! container address.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail};
use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, DeviceMapping, HostConfig, Mount, MountType, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
};
use futures_util::StreamExt;
use vmrunner::argv::Accel;
use vmrunner::run_config::RunConfig;
use vmrunner::{NetworkType, Protocol};

use super::{Actual, RunDirs, Runtime, Usage, wait_ready, write_run_config};

pub const LABEL_MANAGED: &str = "fastvm.managed";
pub const LABEL_VM_ID: &str = "fastvm.vm_id";
/// Room for QEMU itself, swtpm and vmrunner on top of the guest's RAM.
const MEMORY_OVERHEAD_MIB: u64 = 256;

pub struct DockerRuntime {
    pub docker: Docker,
    pub image: String,
    pub dirs: RunDirs,
    /// Host address published NAT ports listen on.
    pub port_forward_bind: String,
}

pub fn container_name(vm_id: &str) -> String {
    format!("fastvm-{vm_id}")
}

/// Connects to the engine (`DOCKER_HOST` or the local socket) and agrees on an API version.
pub async fn connect() -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_defaults()?;
    let docker = tokio::time::timeout(std::time::Duration::from_secs(3), docker.negotiate_version())
        .await
        .context("the Docker engine did not answer within 3 s")??;
    docker.ping().await?;
    Ok(docker)
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// How the container is networked, from the VM's NICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Networking {
    /// Taps and macvtaps live in the host's namespace: host networking plus NET_ADMIN.
    Host { macvtap: bool },
    /// User-mode NAT inside the container; forwarded ports are published by Docker.
    Bridge,
    /// Nothing leaves: no network at all.
    None,
}

fn networking(config: &RunConfig) -> Networking {
    let kinds: Vec<NetworkType> = config.spec.networks.iter().map(|n| n.kind).collect();
    if kinds.iter().any(|k| matches!(k, NetworkType::Bridge | NetworkType::Macvtap)) {
        Networking::Host { macvtap: kinds.contains(&NetworkType::Macvtap) }
    } else if kinds.contains(&NetworkType::Nat) {
        Networking::Bridge
    } else {
        Networking::None
    }
}

/// The run configuration as the container sees it: programs from the image's PATH, and (in
/// bridge networking) port forwards listening on the container's own addresses.
pub fn container_run_config(config: &RunConfig) -> RunConfig {
    let mut c = config.clone();
    c.qemu = "qemu-system-x86_64".into();
    c.qemu_img = "qemu-img".into();
    c.swtpm = "swtpm".into();
    if networking(config) == Networking::Bridge {
        c.launch.port_forward_bind = "0.0.0.0".into();
    }
    c
}

fn bind(path: &Path, read_only: bool) -> Mount {
    let p = path.display().to_string();
    Mount {
        target: Some(p.clone()),
        source: Some(p),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn device(path: &str) -> DeviceMapping {
    DeviceMapping {
        path_on_host: Some(path.into()),
        path_in_container: Some(path.into()),
        cgroup_permissions: Some("rwm".into()),
    }
}

/// The character-device major number the kernel gave macvtap, from /proc/devices.
fn macvtap_major() -> Option<u32> {
    let devices = std::fs::read_to_string("/proc/devices").ok()?;
    devices.lines().find_map(|l| {
        let (num, name) = l.trim().split_once(' ')?;
        (name.trim() == "macvtap").then(|| num.parse().ok()).flatten()
    })
}

/// The container for one run: a pure function of the run configuration, so it can be checked
/// without an engine.
pub fn container_body(
    config: &RunConfig,
    image: &str,
    publish_on: &str,
    config_path: &Path,
) -> ContainerCreateBody {
    let launch = &config.launch;
    let net = networking(config);
    let mut mounts = vec![bind(&launch.vm_dir, false), bind(&launch.run_dir, false)];
    for iso in [&launch.iso, &launch.secondary_iso].into_iter().flatten() {
        mounts.push(bind(iso, true));
    }
    if let Some(dir) = &launch.volumes_dir {
        mounts.push(bind(dir, false));
    }
    for base in &launch.backing_files {
        mounts.push(bind(base, true));
    }
    let mut devices = Vec::new();
    if launch.accel == Accel::Kvm {
        devices.push(device("/dev/kvm"));
    }
    let mut cap_add = Vec::new();
    let mut cgroup_rules = Vec::new();
    if let Networking::Host { macvtap } = net {
        devices.push(device("/dev/net/tun"));
        if Path::new("/dev/vhost-net").exists() {
            devices.push(device("/dev/vhost-net"));
        }
        cap_add.push("NET_ADMIN".to_string());
        if macvtap {
            // vmrunner creates and opens the macvtap's character device inside the container; the
            // device cgroup must allow that major number (dynamic, so read from the host), and only it.
            let major = macvtap_major().map(|m| m.to_string()).unwrap_or_else(|| "*".into());
            cgroup_rules.push(format!("c {major}:* rwm"));
        }
    }
    let mut exposed = Vec::new();
    let mut port_bindings = HashMap::new();
    if net == Networking::Bridge {
        for pf in config.spec.networks.iter().flat_map(|n| &n.port_forwards) {
            let proto = match pf.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let key = format!("{}/{proto}", pf.host_port);
            exposed.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some(publish_on.to_string()),
                    host_port: Some(pf.host_port.to_string()),
                }]),
            );
        }
    }
    let memory_mib = config.spec.memory + config.spec.memory / 10 + MEMORY_OVERHEAD_MIB;
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_VM_ID.to_string(), launch.vm_id.clone()),
    ]);
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["run".into(), config_path.display().to_string()]),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            mounts: Some(mounts),
            devices: Some(devices),
            cap_add: (!cap_add.is_empty()).then_some(cap_add),
            device_cgroup_rules: (!cgroup_rules.is_empty()).then_some(cgroup_rules),
            network_mode: Some(
                match net {
                    Networking::Host { .. } => "host",
                    Networking::Bridge => "bridge",
                    Networking::None => "none",
                }
                .into(),
            ),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            memory: Some((memory_mib * 1024 * 1024) as i64),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl DockerRuntime {
    /// The container's state: (running, pid, exit code), or None when there is no such container.
    async fn state(&self, vm_id: &str) -> anyhow::Result<Option<(bool, Option<i64>, Option<i64>, bool)>> {
        match self.docker.inspect_container(&container_name(vm_id), None).await {
            Ok(c) => {
                let managed = c
                    .config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.as_ref())
                    .is_some_and(|l| l.get(LABEL_MANAGED).map(String::as_str) == Some("true"));
                let st = c.state.unwrap_or_default();
                Ok(Some((st.running.unwrap_or(false), st.pid, st.exit_code, managed)))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn logs_tail(&self, vm_id: &str, lines: usize) -> String {
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut stream = self.docker.logs(&container_name(vm_id), Some(opts));
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out.trim().to_string()
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn run_dirs(&self) -> &RunDirs {
        &self.dirs
    }

    async fn start(&self, config: &RunConfig) -> anyhow::Result<Actual> {
        let vm_id = config.launch.vm_id.clone();
        let name = container_name(&vm_id);
        match self.state(&vm_id).await? {
            Some((true, ..)) => bail!("container {name} is already running"),
            Some((false, _, _, true)) => {
                // The last run's container, kept for its exit code and logs until now.
                self.docker.remove_container(&name, None).await?;
            }
            Some((false, _, _, false)) => bail!("a container called {name} exists and is not Fast VM's"),
            None => {}
        }
        let inner = container_run_config(config);
        let config_path = write_run_config(&inner)?;
        let body = container_body(&inner, &self.image, &self.port_forward_bind, &config_path);
        self.docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), body)
            .await
            .with_context(|| format!("creating container {name} from {}", self.image))?;
        self.docker
            .start_container(&name, None)
            .await
            .with_context(|| format!("starting container {name}"))?;
        let ready = wait_ready(&config.launch.run_dir, || async {
            match self.state(&vm_id).await? {
                Some((true, ..)) => Ok(None),
                Some((false, _, code, _)) => {
                    let why = self.dirs.exit_record(&vm_id).and_then(|r| r.error).unwrap_or_default();
                    Ok(Some(format!(
                        "container exited ({}) {why} {}",
                        code.unwrap_or(-1),
                        self.logs_tail(&vm_id, 5).await
                    )))
                }
                None => Ok(Some(format!("container {name} disappeared"))),
            }
        })
        .await;
        if let Err(e) = ready {
            // Kept (stopped) for its logs; never left running after a failed start.
            let _ = self.kill(&vm_id).await;
            return Err(e);
        }
        let pid = self.state(&vm_id).await?.and_then(|s| s.1).map(|p| p as u32);
        Ok(Actual { vm_id, running: true, pid })
    }

    async fn inspect(&self, vm_id: &str) -> anyhow::Result<Actual> {
        let state = self.state(vm_id).await?;
        let running = state.is_some_and(|s| s.0);
        Ok(Actual { vm_id: vm_id.to_string(), running, pid: state.and_then(|s| s.1).map(|p| p as u32) })
    }

    /// From the container's stats: everything in it (vmrunner, swtpm, QEMU) is the VM's cost.
    async fn usage(&self, vm_id: &str) -> Option<Usage> {
        let opts = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
        let stats = self.docker.stats(&container_name(vm_id), Some(opts)).next().await?.ok()?;
        let cpu_ns = stats.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage?;
        let memory = stats.memory_stats.as_ref()?;
        // Page cache the container could give back is not what the VM costs (cgroup v2, then v1).
        let cache = memory
            .stats
            .as_ref()
            .and_then(|s| s.get("inactive_file").or_else(|| s.get("total_inactive_file")).copied())
            .unwrap_or(0);
        Some(Usage { cpu_seconds: cpu_ns as f64 / 1e9, memory_bytes: memory.usage?.saturating_sub(cache) })
    }

    async fn list(&self) -> anyhow::Result<Vec<Actual>> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_MANAGED}=true")])]);
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let containers = self.docker.list_containers(Some(opts)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let vm_id = c.labels.as_ref()?.get(LABEL_VM_ID)?.clone();
                let running = c.state.map(|s| s.to_string() == "running").unwrap_or(false);
                Some(Actual { vm_id, running, pid: None })
            })
            .collect())
    }

    async fn kill(&self, vm_id: &str) -> anyhow::Result<()> {
        let opts = KillContainerOptionsBuilder::new().signal("KILL").build();
        match self.docker.kill_container(&container_name(vm_id), Some(opts)).await {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn remove(&self, vm_id: &str) -> anyhow::Result<()> {
        // Only ever our own containers.
        if !matches!(self.state(vm_id).await?, Some((_, _, _, true))) {
            return Ok(());
        }
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(&container_name(vm_id), Some(opts)).await {
            Err(e) if !is_not_found(&e) => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn watch(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        let docker = self.docker.clone();
        tokio::spawn(async move {
            let filters = HashMap::from([
                ("type", vec!["container".to_string()]),
                ("label", vec![format!("{LABEL_MANAGED}=true")]),
                ("event", vec!["die".to_string(), "destroy".to_string(), "start".to_string()]),
            ]);
            loop {
                let opts = EventsOptionsBuilder::new().filters(&filters).build();
                let mut events = docker.events(Some(opts));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(_) => wake.notify_one(),
                        Err(e) => {
                            tracing::debug!(error = %e, "Docker event stream ended");
                            break;
                        }
                    }
                }
                // The engine restarted or the stream broke: polling covers the gap; subscribe again.
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
    }

    async fn exit_detail(&self, vm_id: &str) -> Option<String> {
        let (_, _, code, _) = self.state(vm_id).await.ok()??;
        let logs = self.logs_tail(vm_id, 5).await;
        Some(format!("container {} exited with code {}. {logs}", container_name(vm_id), code.unwrap_or(-1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmrunner::argv::{Launch, OvmfPaths};

    fn config(networks: serde_json::Value, accel: Accel) -> RunConfig {
        let spec = serde_json::from_value(serde_json::json!({
            "name": "c", "memory": 1024, "cpus": 1, "disk_size": 1, "networks": networks
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        RunConfig {
            spec,
            launch: Launch {
                vm_id: "0123456789ab".into(),
                uuid: "u".into(),
                vm_dir: "/data/vms/0123456789ab".into(),
                run_dir: "/data/run/0123456789ab".into(),
                accel,
                ovmf: OvmfPaths::default(),
                nics: vec![],
                port_forward_bind: "127.0.0.1".into(),
                iso: Some("/data/images/a.iso".into()),
                secondary_iso: None,
                volumes: vec![],
                volumes_dir: None,
                loadvm: None,
                backing_files: vec!["/data/base/b1.qcow2".into()],
            },
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            qemu_img: "/usr/bin/qemu-img".into(),
            swtpm: "/usr/bin/swtpm".into(),
        }
    }

    fn body(c: &RunConfig) -> ContainerCreateBody {
        let inner = container_run_config(c);
        container_body(
            &inner,
            "fastvm/vmrunner",
            "127.0.0.1",
            Path::new("/data/run/0123456789ab/vmrunner.json"),
        )
    }

    #[test]
    fn nat_vm_publishes_forwards_on_the_configured_address() {
        let c = config(
            serde_json::json!([{"port_forwards": [{"host_port": 2222, "guest_port": 22}]}]),
            Accel::Kvm,
        );
        let b = body(&c);
        let hc = b.host_config.unwrap_or_default();
        assert_eq!(hc.network_mode.as_deref(), Some("bridge"));
        let bindings = hc.port_bindings.unwrap_or_default();
        let pb = bindings.get("2222/tcp").cloned().flatten().unwrap_or_default();
        assert_eq!(pb[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(pb[0].host_port.as_deref(), Some("2222"));
        assert_eq!(b.exposed_ports, Some(vec!["2222/tcp".to_string()]));
        let devices: Vec<String> =
            hc.devices.unwrap_or_default().into_iter().filter_map(|d| d.path_on_host).collect();
        assert_eq!(devices, ["/dev/kvm"]);
        assert!(hc.cap_add.is_none(), "NAT needs no capabilities");
        assert_eq!(hc.memory, Some((1024 + 102 + 256) * 1024 * 1024));
        let labels = b.labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
        assert_eq!(labels.get(LABEL_VM_ID).map(String::as_str), Some("0123456789ab"));
        let mounts = hc.mounts.unwrap_or_default();
        let iso = mounts.iter().find(|m| m.target.as_deref() == Some("/data/images/a.iso"));
        assert_eq!(iso.and_then(|m| m.read_only), Some(true));
        let base = mounts.iter().find(|m| m.target.as_deref() == Some("/data/base/b1.qcow2"));
        assert_eq!(base.and_then(|m| m.read_only), Some(true), "a clone's base, read-only");
        assert!(
            mounts
                .iter()
                .any(|m| m.source.as_deref() == Some("/data/run/0123456789ab") && m.target == m.source)
        );
        assert_eq!(b.cmd, Some(vec!["run".to_string(), "/data/run/0123456789ab/vmrunner.json".to_string()]));
        // Inside the container QEMU listens on the container's addresses; Docker publishes them.
        assert_eq!(container_run_config(&c).launch.port_forward_bind, "0.0.0.0");
    }

    #[test]
    fn bridge_and_macvtap_vms_get_host_networking_and_only_net_admin() {
        let c = config(serde_json::json!([{"type": "macvtap", "parent_interface": "eth0"}]), Accel::Tcg);
        let hc = body(&c).host_config.unwrap_or_default();
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert_eq!(hc.cap_add, Some(vec!["NET_ADMIN".to_string()]));
        let devices: Vec<String> =
            hc.devices.unwrap_or_default().into_iter().filter_map(|d| d.path_on_host).collect();
        assert!(devices.contains(&"/dev/net/tun".to_string()) && !devices.contains(&"/dev/kvm".to_string()));
        assert!(hc.privileged.is_none());
        let c = config(serde_json::json!([{"type": "bridge", "bridge_name": "br0"}]), Accel::Tcg);
        assert!(body(&c).host_config.unwrap_or_default().device_cgroup_rules.is_none());
    }

    #[test]
    fn isolated_vm_gets_no_network() {
        let c = config(serde_json::json!([{"type": "isolated"}]), Accel::Tcg);
        let hc = body(&c).host_config.unwrap_or_default();
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert!(hc.port_bindings.is_none());
    }
}
