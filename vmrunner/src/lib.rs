//! The one description of a virtual machine that the controller and `vmrunner` share, its
//! validation, and the pure function that turns it into a QEMU argv.
//!
//! Field names and JSON shapes follow the original Fast VM API so that clients written against it
//! keep working.

pub mod argv;
pub mod paths;
pub mod qga;
pub mod qmp;
pub mod run_config;
pub mod spec;
pub mod validate;

pub use spec::{
    BootDevice, CpuModel, DisplayType, Firmware, NetworkSpec, NetworkType, NicModel, OsType, PortForward,
    Protocol, VmSpec,
};
