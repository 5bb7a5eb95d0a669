//! Per-user limits and what counts against them, read and checked inside the caller's database
//! call so that the check and the write it guards are one step (the store has one connection).

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's limits; `None` is no limit. Admins have none whatever is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_vms: Option<i64>,
    pub max_vcpus: Option<i64>,
    pub max_memory_mib: Option<i64>,
    /// VM disks and volumes, by their sizes.
    pub max_disk_gb: Option<i64>,
    pub max_backups: Option<i64>,
}

/// What a user has (or what an operation adds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Usage {
    pub vms: i64,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gb: i64,
    pub backups: i64,
}

pub fn limits(c: &Connection, user: &str) -> rusqlite::Result<Limits> {
    Ok(c.query_row(
        "SELECT max_vms, max_vcpus, max_memory_mib, max_disk_gb, max_backups FROM user_quotas WHERE username = ?1",
        [user],
        |r| {
            Ok(Limits {
                max_vms: r.get(0)?,
                max_vcpus: r.get(1)?,
                max_memory_mib: r.get(2)?,
                max_disk_gb: r.get(3)?,
                max_backups: r.get(4)?,
            })
        },
    )
    .optional()?
    .unwrap_or_default())
}

pub fn set_limits(c: &Connection, user: &str, l: &Limits) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO user_quotas (username, max_vms, max_vcpus, max_memory_mib, max_disk_gb, max_backups)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(username) DO UPDATE SET max_vms = ?2, max_vcpus = ?3, max_memory_mib = ?4,
             max_disk_gb = ?5, max_backups = ?6",
        params![user, l.max_vms, l.max_vcpus, l.max_memory_mib, l.max_disk_gb, l.max_backups],
    )?;
    Ok(())
}

/// What `user` has, leaving out the VM `except` (the one an edit replaces).
pub fn usage(c: &Connection, user: &str, except: Option<&str>) -> rusqlite::Result<Usage> {
    let (vms, vcpus, memory_mib, vm_disk): (i64, i64, i64, i64) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(json_extract(spec, '$.cpus')), 0),
                COALESCE(SUM(json_extract(spec, '$.memory')), 0), COALESCE(SUM(json_extract(spec, '$.disk_size')), 0)
         FROM vms WHERE owner = ?1 AND id IS NOT ?2",
        params![user, except],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let volumes: i64 =
        c.query_row("SELECT COALESCE(SUM(size_gb), 0) FROM volumes WHERE owner = ?1", [user], |r| r.get(0))?;
    let backups: i64 = c.query_row("SELECT COUNT(*) FROM backups WHERE owner = ?1", [user], |r| r.get(0))?;
    Ok(Usage { vms, vcpus, memory_mib, disk_gb: vm_disk + volumes, backups })
}

/// Why adding `need` to what `user` has (less the VM `except`) goes over their limits, if it does.
/// Admins are never limited.
pub fn exceeded(
    c: &Connection,
    user: &str,
    need: Usage,
    except: Option<&str>,
) -> rusqlite::Result<Option<String>> {
    let admin: Option<bool> =
        c.query_row("SELECT is_admin FROM users WHERE username = ?1", [user], |r| r.get(0)).optional()?;
    if admin != Some(false) {
        return Ok(None);
    }
    let limits = limits(c, user)?;
    let has = usage(c, user, except)?;
    let checks = [
        ("VMs", has.vms, need.vms, limits.max_vms),
        ("vCPUs", has.vcpus, need.vcpus, limits.max_vcpus),
        ("memory (MiB)", has.memory_mib, need.memory_mib, limits.max_memory_mib),
        ("disk (GB)", has.disk_gb, need.disk_gb, limits.max_disk_gb),
        ("backups", has.backups, need.backups, limits.max_backups),
    ];
    Ok(checks.into_iter().find_map(|(what, has, need, max)| match max {
        Some(max) if need > 0 && has + need > max => Some(format!(
            "quota: {user} would have {} {what}, more than the {max} allowed (has {has})",
            has + need
        )),
        _ => None,
    }))
}

/// What one VM of `spec` counts.
pub fn of_vm(spec: &vmrunner::VmSpec) -> Usage {
    Usage {
        vms: 1,
        vcpus: spec.cpus as i64,
        memory_mib: spec.memory as i64,
        disk_gb: spec.disk_size as i64,
        backups: 0,
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            vms: self.vms + o.vms,
            vcpus: self.vcpus + o.vcpus,
            memory_mib: self.memory_mib + o.memory_mib,
            disk_gb: self.disk_gb + o.disk_gb,
            backups: self.backups + o.backups,
        }
    }
}

impl Usage {
    /// What changing `old` into `new` adds (shrinking adds nothing).
    pub fn growth(new: Usage, old: Usage) -> Usage {
        Usage {
            vms: (new.vms - old.vms).max(0),
            vcpus: (new.vcpus - old.vcpus).max(0),
            memory_mib: (new.memory_mib - old.memory_mib).max(0),
            disk_gb: (new.disk_gb - old.disk_gb).max(0),
            backups: (new.backups - old.backups).max(0),
        }
    }

    pub fn backups(n: i64) -> Usage {
        Usage { backups: n, ..Usage::default() }
    }

    pub fn disk(gb: i64) -> Usage {
        Usage { disk_gb: gb, ..Usage::default() }
    }
}

/// A quota check's refusal as the answer: 403, naming the limit.
pub fn refuse(reason: Option<String>) -> crate::error::ApiResult<()> {
    match reason {
        Some(r) => Err(crate::error::ApiError::Forbidden(r)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> anyhow::Result<Connection> {
        let dir = tempfile::tempdir()?;
        let store = crate::store::Store::open(&dir.path().join("q.db"))?;
        drop(store);
        let c = Connection::open(dir.path().join("q.db"))?;
        std::mem::forget(dir);
        Ok(c)
    }

    #[test]
    fn limits_count_what_a_user_has_and_spare_admins() -> anyhow::Result<()> {
        let c = db()?;
        c.execute("INSERT INTO users VALUES ('bob', 'x', 0, 0, 0), ('root', 'x', 1, 0, 0)", [])?;
        c.execute(
            "INSERT INTO vms (id, name, owner, uuid, spec, created_at, updated_at)
             VALUES ('v1', 'a', 'bob', 'u1', '{\"cpus\": 2, \"memory\": 1024, \"disk_size\": 10}', 0, 0)",
            [],
        )?;
        let limits =
            Limits { max_vms: Some(2), max_vcpus: Some(3), max_disk_gb: Some(15), ..Limits::default() };
        set_limits(&c, "bob", &limits)?;
        set_limits(&c, "root", &limits)?;
        let one = Usage { vms: 1, vcpus: 1, memory_mib: 256, disk_gb: 5, backups: 0 };
        assert_eq!(exceeded(&c, "bob", one, None)?, None);
        let two_cpus = Usage { vcpus: 2, ..one };
        assert!(exceeded(&c, "bob", two_cpus, None)?.is_some_and(|m| m.contains("vCPUs")));
        assert!(exceeded(&c, "bob", Usage::disk(6), None)?.is_some_and(|m| m.contains("disk")));
        // An edit of v1 is judged without v1 itself.
        assert_eq!(exceeded(&c, "bob", Usage { vcpus: 3, ..one }, Some("v1"))?, None);
        assert_eq!(exceeded(&c, "root", Usage { vms: 50, ..one }, None)?, None, "admins are not limited");
        // Shrinking is never refused, even above a limit.
        assert_eq!(Usage::growth(one, Usage { vcpus: 4, ..one }), Usage::default());
        Ok(())
    }
}
