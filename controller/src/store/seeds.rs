//! Cloud-init seed ownership: which user made each seed file in `cloudinit/`.

use rusqlite::{Connection, OptionalExtension, params};

pub fn insert(c: &Connection, name: &str, owner: &str, now: i64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO cloudinit_seeds (name, owner, created_at) VALUES (?1, ?2, ?3)",
        params![name, owner, now],
    )?;
    Ok(())
}

/// The seed's owner; None for a seed nobody recorded (made before owners were, or by hand).
pub fn owner(c: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    c.query_row("SELECT owner FROM cloudinit_seeds WHERE name = ?1", [name], |r| r.get(0)).optional()
}

/// Names of the seeds `owner` made.
pub fn owned_by(c: &Connection, owner: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare("SELECT name FROM cloudinit_seeds WHERE owner = ?1")?;
    let rows = stmt.query_map([owner], |r| r.get(0))?;
    rows.collect()
}

pub fn delete(c: &Connection, name: &str) -> rusqlite::Result<()> {
    c.execute("DELETE FROM cloudinit_seeds WHERE name = ?1", [name])?;
    Ok(())
}
