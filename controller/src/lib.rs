//! Fast VM controller: the HTTP API, the dashboard, and the VMs behind them (lifecycle, storage,
//! consoles, backups, metrics).

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod cloudinit;
pub mod config;
pub mod consoles;
pub mod error;
pub mod guest_agent;
pub mod host;
pub mod http;
pub mod isos;
pub mod jobs;
pub mod metrics;
pub mod qmp;
pub mod quotas;
pub mod runtime;
pub mod server;
pub mod snapshots;
pub mod state;
pub mod storage;
pub mod store;
pub mod system;
pub mod user_removal;
pub mod vms;
pub mod volumes;
pub mod web;
