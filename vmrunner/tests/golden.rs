//! Golden argv tests: one file per feature under `tests/golden/`, each listing the argv piece by
//! piece. `UPDATE_GOLDEN=1 cargo test -p vmrunner --test golden` rewrites them after a deliberate change.

use std::path::{Path, PathBuf};

use vmrunner::VmSpec;
use vmrunner::argv::{Accel, Launch, NicBackend, OvmfPaths, PIECES, qemu_args};

fn launch(accel: Accel, nics: Vec<NicBackend>) -> Launch {
    Launch {
        vm_id: "0123456789ab".into(),
        uuid: "5a1f0c7e-8d2b-4c3e-9f10-123456789abc".into(),
        vm_dir: "/var/lib/fastvm/vms/0123456789ab".into(),
        run_dir: "/var/lib/fastvm/run/0123456789ab".into(),
        accel,
        ovmf: OvmfPaths::default(),
        nics,
        port_forward_bind: "127.0.0.1".into(),
        iso: None,
        secondary_iso: None,
        volumes: Vec::new(),
        volumes_dir: None,
        loadvm: None,
        backing_files: Vec::new(),
    }
}

fn spec(json: &str) -> VmSpec {
    let base = serde_json::json!({"name": "golden vm", "memory": 512, "cpus": 2, "disk_size": 4,
        "networks": [{"mac_address": "52:54:00:00:00:01"}]});
    let mut merged = base;
    let extra: serde_json::Value = serde_json::from_str(json).expect("case JSON");
    if let (Some(m), Some(e)) = (merged.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    serde_json::from_value(merged).expect("case spec")
}

fn render(spec: &VmSpec, launch: &Launch) -> String {
    let mut out = String::new();
    for (name, piece) in PIECES {
        let args = piece(spec, launch);
        if args.is_empty() {
            continue;
        }
        out.push_str(&format!("## {name}\n"));
        for a in args {
            out.push_str(&a);
            out.push('\n');
        }
    }
    out
}

fn check(case: &str, spec: VmSpec, launch: Launch) {
    // Rendering piece by piece must be the same argv as the real builder.
    let flat: Vec<String> =
        render(&spec, &launch).lines().filter(|l| !l.starts_with("## ")).map(String::from).collect();
    assert_eq!(flat, qemu_args(&spec, &launch), "{case}: pieces and qemu_args disagree");

    let path: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{case}.txt"));
    let actual = render(&spec, &launch);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "{case}: argv changed (UPDATE_GOLDEN=1 to accept)");
}

#[test]
fn uefi_default_kvm() {
    check("uefi_default_kvm", spec("{}"), launch(Accel::Kvm, vec![NicBackend::User]));
}

#[test]
fn bios_tcg_host_cpu_becomes_max() {
    check("bios_tcg", spec(r#"{"firmware": "bios"}"#), launch(Accel::Tcg, vec![NicBackend::User]));
}

#[test]
fn secure_boot_with_tpm_for_windows() {
    check(
        "windows_secure_boot_tpm",
        spec(r#"{"os_type": "windows", "cpu_model": "Skylake-Client", "memory": 4096}"#),
        launch(Accel::Kvm, vec![NicBackend::User]),
    );
}

#[test]
fn tpm_on_bios_uses_tis() {
    check(
        "bios_tpm",
        spec(r#"{"firmware": "bios", "tpm": true}"#),
        launch(Accel::Kvm, vec![NicBackend::User]),
    );
}

#[test]
fn cpu_models() {
    for model in ["qemu64", "max", "EPYC"] {
        check(
            &format!("cpu_{}", model.to_lowercase()),
            spec(&format!(r#"{{"cpu_model": "{model}"}}"#)),
            launch(Accel::Kvm, vec![NicBackend::User]),
        );
    }
}

#[test]
fn display_types() {
    for display in ["std", "virtio", "cirrus"] {
        check(
            &format!("display_{display}"),
            spec(&format!(r#"{{"display_type": "{display}"}}"#)),
            launch(Accel::Kvm, vec![NicBackend::User]),
        );
    }
}

#[test]
fn dual_iso_and_boot_order_on_q35_and_pc() {
    for firmware in ["uefi", "bios"] {
        let s = spec(&format!(r#"{{"firmware": "{firmware}", "boot_order": ["cdrom", "disk", "network"]}}"#));
        let mut l = launch(Accel::Kvm, vec![NicBackend::User]);
        l.iso = Some("/var/lib/fastvm/images/install.iso".into());
        l.secondary_iso = Some("/var/lib/fastvm/cloudinit/seed.iso".into());
        check(&format!("dual_iso_{firmware}"), s, l);
    }
}

#[test]
fn every_network_type_and_model() {
    let s = spec(
        r#"{"networks": [
            {"type": "nat", "model": "virtio", "mac_address": "52:54:00:00:00:01",
             "port_forwards": [{"host_port": 2222, "guest_port": 22}, {"host_port": 5353, "guest_port": 53, "protocol": "udp"}]},
            {"type": "bridge", "model": "e1000", "bridge_name": "br0", "mac_address": "52:54:00:00:00:02"},
            {"type": "macvtap", "model": "rtl8139", "parent_interface": "eth0", "mac_address": "52:54:00:00:00:03"},
            {"type": "isolated", "mac_address": "52:54:00:00:00:04"},
            {"type": "nat", "mac_address": "52:54:00:00:00:05"}
        ]}"#,
    );
    let nics = vec![
        NicBackend::User,
        NicBackend::Tap { ifname: "fvtap0123456789ab1".chars().take(15).collect() },
        NicBackend::Fd { fd: 3 },
        NicBackend::User,
        NicBackend::User,
    ];
    check("networks", s, launch(Accel::Kvm, nics));
}

#[test]
fn attached_volumes_on_q35_and_pc() {
    use vmrunner::argv::{DiskFormat, VolumeDisk};
    for firmware in ["uefi", "bios"] {
        let mut l = launch(Accel::Kvm, vec![NicBackend::User]);
        l.volumes = vec![
            VolumeDisk {
                id: "aaaa11112222".into(),
                path: "/var/lib/fastvm/volumes/aaaa11112222.qcow2".into(),
                format: DiskFormat::Qcow2,
                slot: 1,
            },
            VolumeDisk {
                id: "bbbb33334444".into(),
                path: "/var/lib/fastvm/volumes/bbbb33334444.raw".into(),
                format: DiskFormat::Raw,
                slot: 2,
            },
        ];
        check(&format!("volumes_{firmware}"), spec(&format!(r#"{{"firmware": "{firmware}"}}"#)), l);
    }
}

#[test]
fn commas_in_paths_are_escaped_in_key_value_options() {
    let mut l = launch(Accel::Tcg, vec![NicBackend::User]);
    l.run_dir = "/srv/odd,dir/run/0123456789ab".into();
    l.vm_dir = "/srv/odd,dir/vms/0123456789ab".into();
    check("comma_paths", spec(r#"{"tpm": true}"#), l);
}

#[test]
fn invariants_hold_for_every_case() {
    let l = launch(Accel::Kvm, vec![NicBackend::User]);
    let a = qemu_args(&spec("{}"), &l);
    assert_eq!(&a[..3], ["-S", "-nodefaults", "-no-user-config"]);
    for sock in ["qmp.sock", "spice.sock", "vnc.sock", "serial.sock", "qga.sock"] {
        assert!(a.iter().any(|x| x.contains(&format!("/run/0123456789ab/{sock}"))), "{sock}");
    }
    assert!(a.iter().any(|x| x.contains("logfile=/var/lib/fastvm/run/0123456789ab/serial.log")));
    assert!(a.iter().any(|x| x.contains("org.qemu.guest_agent.0")));
}

#[test]
fn only_a_clone_overlay_opens_a_backing_file() {
    // Every other disk gets `"backing": null`, so a header naming a host file is never followed.
    let mut l = launch(Accel::Kvm, vec![NicBackend::User]);
    l.backing_files = vec!["/var/lib/fastvm/base/0a1b2c.qcow2".into()];
    check("clone_overlay", spec(r#"{"firmware": "bios"}"#), l);
}
