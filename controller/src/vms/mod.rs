//! VMs: their records, their lifecycle (`manager`, the one door `held`, the table `lifecycle`),
//! clones and guest-side actions.
//!
//! Ownership: a regular user sees and acts on their own VMs only (others answer 404, as if absent);
//! admins see all and may hand a VM to another user.

pub mod clone;
pub mod guest;
pub mod held;
pub mod lifecycle;
pub mod listing;
pub mod manager;
pub mod model;
mod phases;
pub mod store;
