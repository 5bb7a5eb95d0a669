//! Store queries for VMs.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use vmrunner::{Protocol, VmSpec};

use super::model::{VmRecord, VmStatus};

const COLUMNS: &str =
    "id, owner, uuid, spec, runtime, status, accel, started_at, last_error, created_at, updated_at";

fn spec_json(spec: &VmSpec) -> rusqlite::Result<String> {
    serde_json::to_string(spec).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VmRecord> {
    let spec_json: String = row.get(3)?;
    let spec: VmSpec = serde_json::from_str(&spec_json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(VmRecord {
        id: row.get(0)?,
        owner: row.get(1)?,
        uuid: row.get(2)?,
        spec,
        runtime: row.get(4)?,
        status: VmStatus::parse(&row.get::<_, String>(5)?),
        accel: row.get(6)?,
        started_at: row.get(7)?,
        last_error: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
    })
}

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<VmRecord>> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM vms WHERE id = ?1"), [id], from_row).optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<VmRecord>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM vms ORDER BY created_at, id"))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

pub fn count_owned_by(conn: &Connection, owner: &str) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM vms WHERE owner = ?1", [owner], |r| r.get(0))
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Every MAC a VM has.
pub fn macs_in_use(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT mac FROM vm_macs")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// The first MAC or forwarded host port of `spec` that another VM already uses, as a message.
pub fn conflict(conn: &Connection, vm_id: &str, spec: &VmSpec) -> rusqlite::Result<Option<String>> {
    for (i, net) in spec.networks.iter().enumerate() {
        if let Some(mac) = &net.mac_address {
            let other: Option<String> = conn
                .query_row(
                    "SELECT vm_id FROM vm_macs WHERE mac = ?1 AND vm_id != ?2",
                    params![mac, vm_id],
                    |r| r.get(0),
                )
                .optional()?;
            if other.is_some() {
                return Ok(Some(format!("networks[{i}].mac_address: {mac} is used by another VM")));
            }
        }
        for (j, pf) in net.port_forwards.iter().enumerate() {
            let other: Option<String> = conn
                .query_row(
                    "SELECT vm_id FROM vm_port_forwards WHERE host_port = ?1 AND protocol = ?2 AND vm_id != ?3",
                    params![pf.host_port, protocol_name(pf.protocol), vm_id],
                    |r| r.get(0),
                )
                .optional()?;
            if other.is_some() {
                return Ok(Some(format!(
                    "networks[{i}].port_forwards[{j}].host_port: {}/{} is already forwarded by another VM",
                    pf.host_port,
                    protocol_name(pf.protocol)
                )));
            }
        }
    }
    Ok(None)
}

fn write_claims(tx: &Transaction<'_>, vm_id: &str, spec: &VmSpec) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM vm_macs WHERE vm_id = ?1", [vm_id])?;
    tx.execute("DELETE FROM vm_port_forwards WHERE vm_id = ?1", [vm_id])?;
    for net in &spec.networks {
        if let Some(mac) = &net.mac_address {
            tx.execute("INSERT INTO vm_macs (mac, vm_id) VALUES (?1, ?2)", params![mac, vm_id])?;
        }
        for pf in &net.port_forwards {
            tx.execute(
                "INSERT INTO vm_port_forwards (host_port, protocol, vm_id) VALUES (?1, ?2, ?3)",
                params![pf.host_port, protocol_name(pf.protocol), vm_id],
            )?;
        }
    }
    Ok(())
}

pub fn insert(conn: &mut Connection, r: &VmRecord) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        &format!(
            "INSERT INTO vms ({COLUMNS}, name) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            r.id,
            r.owner,
            r.uuid,
            spec_json(&r.spec)?,
            r.runtime,
            r.status.as_str(),
            r.accel,
            r.started_at,
            r.last_error,
            r.created_at,
            r.updated_at,
            r.spec.name
        ],
    )?;
    write_claims(&tx, &r.id, &r.spec)?;
    tx.commit()
}

pub fn update_spec(
    conn: &mut Connection,
    id: &str,
    spec: &VmSpec,
    owner: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE vms SET spec = ?2, name = ?3, owner = ?4, updated_at = ?5 WHERE id = ?1",
        params![id, spec_json(spec)?, spec.name, owner, now],
    )?;
    write_claims(&tx, id, spec)?;
    // A VM handed to another user takes its schedule and the backups it made along.
    tx.execute("UPDATE backup_schedules SET owner = ?2 WHERE vm_id = ?1", params![id, owner])?;
    tx.execute("UPDATE backups SET owner = ?2 WHERE vm_id = ?1 AND scheduled = 1", params![id, owner])?;
    tx.commit()
}

pub fn set_running(conn: &Connection, id: &str, accel: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE vms SET status = 'running', accel = ?2, started_at = ?3, last_error = NULL, updated_at = ?3 WHERE id = ?1",
        params![id, accel, now],
    )?;
    Ok(())
}

/// Marks a VM stopped; `error` replaces `last_error` only when given.
pub fn set_stopped(conn: &Connection, id: &str, error: Option<&str>, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE vms SET status = 'stopped', started_at = NULL, last_error = COALESCE(?2, last_error), updated_at = ?3
         WHERE id = ?1",
        params![id, error, now],
    )?;
    Ok(())
}

pub fn adopt_running(conn: &Connection, id: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE vms SET status = 'running', started_at = COALESCE(started_at, ?2), updated_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM vms WHERE id = ?1", [id])?;
    Ok(())
}
