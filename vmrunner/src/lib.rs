//! The one description of a virtual machine that the controller and `vmrunner` share.
//!
//! Field names and JSON shapes follow the original Fast VM API so that clients written against it
//! keep working; the lifecycle issue adds validation and the QEMU argv builder on top of these types.

pub mod spec;

pub use spec::{
    BootDevice, CpuModel, DisplayType, Firmware, NetworkSpec, NetworkType, NicModel, OsType, PortForward,
    Protocol, VmSpec,
};
