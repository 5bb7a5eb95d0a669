//! A VM spec as a client sends it (any bytes): parsing and validation never panic, and a spec that
//! validates turns into a QEMU argv in which nothing the client wrote escapes its argument: every
//! JSON argument parses, no argument holds a NUL or a newline, and the name adds no option to `-name`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmrunner::VmSpec;
use vmrunner::argv::{Accel, Launch, NicBackend, OvmfPaths, qemu_args};
use vmrunner::validate::{Limits, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<VmSpec>(data) else { return };
    if validate(&spec, &Limits { iso_roots: Vec::new() }).is_err() {
        return;
    }
    let launch = Launch {
        vm_id: "0123456789ab".into(),
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        vm_dir: "/var/lib/fastvm/vms/0123456789ab".into(),
        run_dir: "/var/lib/fastvm/run/0123456789ab".into(),
        accel: Accel::Tcg,
        ovmf: OvmfPaths::default(),
        nics: spec.networks.iter().map(|_| NicBackend::User).collect(),
        port_forward_bind: "127.0.0.1".into(),
        iso: None,
        secondary_iso: None,
        volumes: Vec::new(),
        volumes_dir: None,
        loadvm: None,
        backing_files: Vec::new(),
    };
    let argv = qemu_args(&spec, &launch);
    for arg in &argv {
        assert!(!arg.contains('\0') && !arg.contains('\n'), "{arg:?}");
        if arg.starts_with('{') {
            assert!(serde_json::from_str::<serde_json::Value>(arg).is_ok(), "{arg}");
        }
    }
    let name = argv.iter().position(|a| a == "-name").and_then(|i| argv.get(i + 1));
    if let Some(name) = name {
        assert_eq!(name.matches(',').count(), 1, "{name}");
    }
});
