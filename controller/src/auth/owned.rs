//! What becomes of everything a user owns (VMs, volumes, backups, cloud-init seeds) when the user is
//! deleted: nothing may stay behind under the name, for a later account of that name to inherit.

use rusqlite::params;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Owned {
    /// Refuse (409) while the user owns anything: nothing is lost by mistake.
    Refuse,
    /// Delete it all: VMs (stopped first), volumes, backups, seeds.
    Delete,
    /// Give it all to the admin who deletes the user.
    HandOver,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteUserQuery {
    /// What becomes of what the user owns: `refuse` (default), `delete` or `hand_over`.
    pub owned: Option<Owned>,
}

/// Counts of what `user` owns: (VMs, volumes, backups, seeds).
pub fn counts(c: &rusqlite::Connection, user: &str) -> rusqlite::Result<[i64; 4]> {
    let mut out = [0; 4];
    for (i, table) in ["vms", "volumes", "backups", "cloudinit_seeds"].iter().enumerate() {
        out[i] =
            c.query_row(&format!("SELECT COUNT(*) FROM {table} WHERE owner = ?1"), [user], |r| r.get(0))?;
    }
    Ok(out)
}

/// The refusal of a delete while `user` owns things, naming them.
pub fn refusal(user: &str, [vms, volumes, backups, seeds]: [i64; 4]) -> Option<ApiError> {
    (vms + volumes + backups + seeds > 0).then(|| {
        ApiError::Conflict(format!(
            "User {user} owns {vms} VM(s), {volumes} volume(s), {backups} backup(s) and {seeds} cloud-init \
             seed(s): give the VMs to another user first, or delete with ?owned=delete or ?owned=hand_over"
        ))
    })
}

/// Hands everything `user` owns to `to`, in the same transaction that deletes the user.
pub fn hand_over(tx: &rusqlite::Transaction<'_>, user: &str, to: &str) -> rusqlite::Result<()> {
    for table in ["vms", "volumes", "backups", "backup_schedules", "cloudinit_seeds"] {
        tx.execute(&format!("UPDATE {table} SET owner = ?2 WHERE owner = ?1"), params![user, to])?;
    }
    Ok(())
}
