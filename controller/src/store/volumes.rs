//! Store queries for volumes.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;
use vmrunner::argv::{DiskFormat, VolumeDisk};

use super::rfc3339;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size_gb: u64,
    pub format: DiskFormat,
    pub path: String,
    /// The VM it is attached to, if any.
    pub attached_to: Option<String>,
    pub owner: String,
    pub created_at: String,
    #[serde(skip)]
    pub slot: Option<u32>,
}

const COLUMNS: &str = "id, name, size_gb, format, path, attached_to, owner, created_at, slot";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Volume> {
    let format: String = r.get(3)?;
    Ok(Volume {
        id: r.get(0)?,
        name: r.get(1)?,
        size_gb: r.get::<_, i64>(2)?.max(0) as u64,
        format: if format == "raw" { DiskFormat::Raw } else { DiskFormat::Qcow2 },
        path: r.get(4)?,
        attached_to: r.get(5)?,
        owner: r.get(6)?,
        created_at: rfc3339(r.get(7)?),
        slot: r.get(8)?,
    })
}

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Volume>> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM volumes WHERE id = ?1"), [id], from_row).optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<Volume>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM volumes ORDER BY created_at, id"))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

pub fn attached_to(conn: &Connection, vm_id: &str) -> rusqlite::Result<Vec<Volume>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {COLUMNS} FROM volumes WHERE attached_to = ?1 ORDER BY slot"))?;
    let rows = stmt.query_map([vm_id], from_row)?;
    rows.collect()
}

/// The disks QEMU gets for `vm_id`'s attached volumes.
pub fn disks_of(conn: &Connection, vm_id: &str) -> rusqlite::Result<Vec<VolumeDisk>> {
    Ok(attached_to(conn, vm_id)?
        .into_iter()
        .map(|v| VolumeDisk { id: v.id, path: v.path.into(), format: v.format, slot: v.slot.unwrap_or(1) })
        .collect())
}

pub fn count_owned_by(conn: &Connection, owner: &str) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM volumes WHERE owner = ?1", [owner], |r| r.get(0))
}

#[allow(clippy::too_many_arguments)]
pub fn insert(
    conn: &Connection,
    id: &str,
    name: &str,
    owner: &str,
    size_gb: u64,
    format: DiskFormat,
    path: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO volumes (id, name, owner, size_gb, format, path, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, name, owner, size_gb as i64, format.as_str(), path, now],
    )?;
    Ok(())
}

pub fn set_attachment(
    conn: &Connection,
    id: &str,
    vm_id: Option<&str>,
    slot: Option<u32>,
) -> rusqlite::Result<()> {
    conn.execute("UPDATE volumes SET attached_to = ?2, slot = ?3 WHERE id = ?1", params![id, vm_id, slot])?;
    Ok(())
}

/// Attaches the volume to `vm_id` at `slot` only if it is attached nowhere: false when another
/// request got there first (or it is gone). Two attaches can then never both succeed.
pub fn claim(conn: &Connection, id: &str, vm_id: &str, slot: u32) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE volumes SET attached_to = ?2, slot = ?3 WHERE id = ?1 AND attached_to IS NULL",
        params![id, vm_id, slot],
    )?;
    Ok(n == 1)
}

/// Deletes the volume's row only if it is attached nowhere: false otherwise (or when it is gone).
pub fn delete_unattached(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM volumes WHERE id = ?1 AND attached_to IS NULL", [id])? == 1)
}
