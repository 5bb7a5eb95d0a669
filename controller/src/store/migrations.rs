//! The database schema, as an ordered list of migrations. `PRAGMA user_version` records how many
//! have been applied; each runs in its own transaction, so a failed upgrade leaves the old schema.

use anyhow::Context;
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: users, login sessions (one row per issued token, so logout and password changes can revoke
    // them and revocations survive restarts), audit log.
    r#"
    CREATE TABLE users (
        username             TEXT PRIMARY KEY NOT NULL,
        password_hash        TEXT NOT NULL,
        is_admin             INTEGER NOT NULL DEFAULT 0,
        must_change_password INTEGER NOT NULL DEFAULT 0,
        created_at           INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        jti        TEXT PRIMARY KEY NOT NULL,
        username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        issued_at  INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX sessions_by_user ON sessions(username);
    CREATE TABLE audit_log (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp   INTEGER NOT NULL,
        username    TEXT,
        action      TEXT NOT NULL,
        target      TEXT,
        result      TEXT NOT NULL,
        status_code INTEGER NOT NULL,
        client_ip   TEXT,
        details     TEXT
    );
    CREATE INDEX audit_by_time ON audit_log(timestamp);
    CREATE INDEX audit_by_user ON audit_log(username);
    CREATE INDEX audit_by_action ON audit_log(action);
    "#,
    // 2: virtual machines. The spec is stored whole as JSON (the shape clients send); the NIC MACs and
    // NAT host ports are repeated in their own tables so that UNIQUE constraints keep them unique
    // across VMs even under concurrent requests.
    r#"
    CREATE TABLE vms (
        id          TEXT PRIMARY KEY NOT NULL,
        name        TEXT NOT NULL,
        owner       TEXT NOT NULL REFERENCES users(username) ON DELETE RESTRICT ON UPDATE CASCADE,
        uuid        TEXT NOT NULL UNIQUE,
        spec        TEXT NOT NULL,
        runtime     TEXT NOT NULL DEFAULT 'process',
        status      TEXT NOT NULL DEFAULT 'stopped',
        accel       TEXT,
        started_at  INTEGER,
        last_error  TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX vms_by_owner ON vms(owner);
    CREATE TABLE vm_macs (
        mac   TEXT PRIMARY KEY NOT NULL,
        vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE
    );
    CREATE TABLE vm_port_forwards (
        host_port INTEGER NOT NULL,
        protocol  TEXT NOT NULL,
        vm_id     TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        PRIMARY KEY (host_port, protocol)
    );
    "#,
    // 3: standalone volumes. `slot` is the PCIe root port (q35) an attached volume sits on.
    r#"
    CREATE TABLE volumes (
        id          TEXT PRIMARY KEY NOT NULL,
        name        TEXT NOT NULL,
        owner       TEXT NOT NULL REFERENCES users(username) ON DELETE RESTRICT,
        size_gb     INTEGER NOT NULL,
        format      TEXT NOT NULL,
        path        TEXT NOT NULL,
        attached_to TEXT REFERENCES vms(id) ON DELETE SET NULL,
        slot        INTEGER,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX volumes_by_vm ON volumes(attached_to);
    "#,
    // 4: snapshots. `tag` is the name inside the qcow2 images; `vm_state` says whether RAM was saved.
    r#"
    CREATE TABLE snapshots (
        id          TEXT PRIMARY KEY NOT NULL,
        vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        tag         TEXT NOT NULL,
        vm_state    INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        UNIQUE (vm_id, name)
    );
    "#,
    // 5: backups. Not tied to the VM by a foreign key: a backup outlives its VM.
    r#"
    CREATE TABLE backups (
        id         TEXT PRIMARY KEY NOT NULL,
        vm_id      TEXT NOT NULL,
        vm_name    TEXT NOT NULL,
        owner      TEXT NOT NULL,
        path       TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        scheduled  INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE backup_schedules (
        vm_id         TEXT PRIMARY KEY NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        owner         TEXT NOT NULL,
        cron          TEXT,
        interval_secs INTEGER,
        keep          INTEGER NOT NULL,
        next_run      INTEGER NOT NULL,
        last_run      INTEGER,
        last_error    TEXT
    );
    "#,
    // 6: metric history, one point per series ("host", "vm:<id>") per minute, kept for a day.
    r#"
    CREATE TABLE metrics_history (
        series TEXT NOT NULL,
        ts     INTEGER NOT NULL,
        data   TEXT NOT NULL,
        PRIMARY KEY (series, ts)
    ) WITHOUT ROWID;
    CREATE INDEX metrics_history_by_ts ON metrics_history(ts);
    "#,
    // 7: who made each cloud-init seed (a file in cloudinit/): seeds carry password hashes and keys,
    // so only their owner (and admins) may see or attach them. Seeds made before have no row: admins'.
    r#"
    CREATE TABLE cloudinit_seeds (
        name       TEXT PRIMARY KEY NOT NULL,
        owner      TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // 8: per-user limits set by admins (NULL: no limit).
    r#"
    CREATE TABLE user_quotas (
        username       TEXT PRIMARY KEY NOT NULL REFERENCES users(username) ON DELETE CASCADE,
        max_vms        INTEGER,
        max_vcpus      INTEGER,
        max_memory_mib INTEGER,
        max_disk_gb    INTEGER,
        max_backups    INTEGER
    );
    "#,
    // 9: chunked, incremental backups (`path` is then the manifest): what each cost, why one read
    // everything, and what the last verification found. NULL costs: an archive from before.
    r#"
    ALTER TABLE backups ADD COLUMN bytes_read INTEGER;
    ALTER TABLE backups ADD COLUMN bytes_written INTEGER;
    ALTER TABLE backups ADD COLUMN chunks_reused INTEGER;
    ALTER TABLE backups ADD COLUMN incremental INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE backups ADD COLUMN damaged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE backups ADD COLUMN verified_at INTEGER;
    ALTER TABLE backups ADD COLUMN full_reason TEXT;
    "#,
];

pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "database schema version {current} is newer than this build knows ({}); upgrade Fast VM",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql).with_context(|| format!("applying migration {version}"))?;
        tx.pragma_update(None, "user_version", version as i64)?;
        tx.commit()?;
        tracing::info!(version, "database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() -> anyhow::Result<()> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        migrate(&mut conn)?;
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        assert_eq!(v as usize, SCHEMA_VERSION);
        Ok(())
    }

    #[test]
    fn newer_schema_is_refused() -> anyhow::Result<()> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "user_version", 999)?;
        assert!(migrate(&mut conn).is_err());
        Ok(())
    }
}
