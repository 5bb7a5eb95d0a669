//! End to end on real QEMU: bridge and macvtap NICs on links the test creates (a bridge with no
//! uplink, and a veth pair whose far end sits in a network namespace of the test's own), so the
//! guest's frames go nowhere else. Also a hard restart (QMP reset).

mod common;

use std::process::Command;
use std::time::Duration;

use common::guest::{guest_iso, type_on_serial, wait_serial};
use common::{TestResult, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The links and namespace of one test, removed however the test ends.
struct Links {
    bridge: String,
    veth: String,
    peer: String,
    netns: String,
}

impl Links {
    fn create() -> Result<Links, String> {
        let tag = &uuid_tag();
        let l = Links {
            bridge: format!("fvtbr{tag}"),
            veth: format!("fvtva{tag}"),
            peer: format!("fvtvb{tag}"),
            netns: format!("fvtns{tag}"),
        };
        ip(&["link", "add", &l.bridge, "type", "bridge"])?;
        ip(&["link", "set", &l.bridge, "up"])?;
        ip(&["netns", "add", &l.netns])?;
        ip(&["link", "add", &l.veth, "type", "veth", "peer", "name", &l.peer])?;
        ip(&["link", "set", &l.peer, "netns", &l.netns])?;
        ip(&["-n", &l.netns, "link", "set", &l.peer, "up"])?;
        ip(&["link", "set", &l.veth, "up"])?;
        Ok(l)
    }

    fn peer_rx_packets(&self) -> u64 {
        ip(&["-n", &self.netns, "-s", "-j", "link", "show", &self.peer])
            .ok()
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
            .and_then(|v| v[0]["stats64"]["rx"]["packets"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["link", "del", &self.bridge]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

fn uuid_tag() -> String {
    format!("{:04x}", std::process::id() % 0xffff)
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bridge_and_macvtap_nics_reach_their_links_and_hard_restart_reboots() -> TestResult {
    let Some(iso) = guest_iso() else { return Ok(()) };
    if !nix::unistd::Uid::effective().is_root() {
        assert!(std::env::var("CI").is_err(), "CI runs as root: host networking must be tested");
        eprintln!("SKIPPED: bridge/macvtap tests need root");
        return Ok(());
    }
    let links = Links::create()?;
    let s = TestServer::start().await;
    let admin = s.admin_token().await;
    let (status, body) = s
        .post(
            "/api/vms",
            &admin,
            json!({"name": "host nets", "memory": 256, "cpus": 1, "disk_size": 1, "firmware": "bios",
            "iso_path": iso, "boot_order": ["cdrom"],
            "networks": [
                {"type": "bridge", "bridge_name": links.bridge, "model": "e1000"},
                {"type": "macvtap", "parent_interface": links.veth}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["vm"]["id"].as_str().ok_or("id")?.to_string();
    let bridge_mac = body["vm"]["networks"][0]["mac_address"].as_str().ok_or("mac")?.to_string();
    let macvtap_mac = body["vm"]["networks"][1]["mac_address"].as_str().ok_or("mac")?.to_string();
    let run_dir = s.data_dir.path().join("run").join(&id);
    let rx_before = links.peer_rx_packets();

    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tap = format!("fvt{}0", &id[..10]);
    let mvtap = format!("fvm{}1", &id[..10]);
    let master = std::fs::read_link(format!("/sys/class/net/{tap}/master"))?;
    assert!(master.ends_with(&links.bridge), "tap {tap} is on {master:?}");
    assert!(link_exists(&mvtap));

    let serial = tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "FASTVM-GUEST-READY", 1, BOOT)
    })
    .await?;
    // Interface names depend on driver load order, so find each NIC by its MAC.
    let ifname_of = |mac: &str| {
        serial
            .lines()
            .filter_map(|l| l.strip_prefix("FASTVM-NIC "))
            .find_map(|l| l.strip_suffix(mac).map(|name| name.trim().to_string()))
    };
    assert!(ifname_of(&bridge_mac).is_some(), "bridge NIC {bridge_mac} not in the guest: {serial}");
    let macvtap_if = ifname_of(&macvtap_mac)
        .ok_or_else(|| format!("macvtap NIC {macvtap_mac} not in the guest: {serial}"))?;

    // DHCP requests from the guest's macvtap NIC arrive at the far end of the veth.
    type_on_serial(&run_dir, &format!("udhcpc -i {macvtap_if} -n -q -t 3 -T 1"))?;
    let mut rx_after = rx_before;
    for _ in 0..40 {
        rx_after = links.peer_rx_packets();
        if rx_after > rx_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rx_after > rx_before, "no frame from the guest reached the macvtap's parent link");
    let tap_rx = || -> Result<u64, Box<dyn std::error::Error>> {
        Ok(std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/rx_packets"))?.trim().parse()?)
    };
    let mut entered = tap_rx()?;
    for _ in 0..40 {
        if entered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        entered = tap_rx()?;
    }
    assert!(entered > 0, "no frame from the guest entered the bridge through its tap");

    // Hard restart: QMP reset, the same QEMU boots the guest again.
    let (status, body) =
        s.call(Method::POST, &format!("/api/vms/{id}/restart?hard=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::task::spawn_blocking({
        let run_dir = run_dir.clone();
        move || wait_serial(&run_dir, "FASTVM-GUEST-BOOTED", 2, BOOT)
    })
    .await?;

    let (status, _) =
        s.call(Method::POST, &format!("/api/vms/{id}/stop?force=true"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!link_exists(&tap) && !link_exists(&mvtap), "the VM's links are removed when it stops");
    assert!(link_exists(&links.bridge), "the operator's bridge is left alone");

    // A bridge that does not exist: start fails with QEMU's/ip's reason, and the VM stays stopped.
    let (_, body) = s
        .call(
            Method::PUT,
            &format!("/api/vms/{id}"),
            Some(&admin),
            Some(json!({"networks": [{"type": "bridge", "bridge_name": "fvtnosuchbr"}]})),
        )
        .await;
    assert_eq!(body["success"], true, "{body}");
    let (status, body) = s.call(Method::POST, &format!("/api/vms/{id}/start"), Some(&admin), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| d.contains("fvtnosuchbr")), "{body}");
    let (_, vm) = s.get(&format!("/api/vms/{id}"), &admin).await;
    assert_eq!(vm["status"], "stopped");
    assert!(vm["last_error"].as_str().is_some_and(|e| e.contains("fvtnosuchbr")));
    assert!(!link_exists(&tap), "a failed start leaves no tap behind");
    Ok(())
}
