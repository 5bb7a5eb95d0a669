//! Backup schedules: a cron expression or an interval, and how
//! many scheduled backups to keep. A background task takes the due backups and prunes the oldest
//! scheduled ones beyond `keep` once a new one has succeeded.

use std::str::FromStr;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Backup, Ctx, backup_vm, remove};
use crate::error::ApiResult;
use crate::quotas::store as quotas;
use crate::store::{now_unix, rfc3339};

/// How often due schedules are looked for.
pub const TICK: Duration = Duration::from_secs(2);
pub(crate) const MAX_KEEP: u32 = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// A cron expression (minute hour day month weekday, UTC), e.g. `0 3 * * *`.
    pub cron: Option<String>,
    /// Or: every this many seconds (at least `FASTVM_BACKUP_MIN_INTERVAL`, 300 by default).
    pub interval: Option<u64>,
    /// Scheduled backups kept (1-100); older ones are deleted after a new one succeeds.
    pub keep: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Schedule {
    pub vm_id: String,
    pub cron: Option<String>,
    pub interval: Option<u64>,
    pub keep: u32,
    pub next_run: String,
    pub last_run: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleResponse {
    pub success: bool,
    pub message: String,
    pub schedule: Schedule,
}

/// The next time after `after` (unix seconds) a schedule fires.
pub(crate) fn next_run(cron: Option<&str>, interval: Option<u64>, after: i64) -> Result<i64, String> {
    match (cron, interval) {
        (Some(expr), None) => {
            let cron = croner::Cron::from_str(expr).map_err(|e| format!("cron: {e}"))?;
            let from = chrono::DateTime::from_timestamp(after, 0).ok_or("cron: bad time")?;
            let next = cron.find_next_occurrence(&from, false).map_err(|e| format!("cron: {e}"))?;
            Ok(next.timestamp())
        }
        (None, Some(secs)) if (1..=366 * 86_400).contains(&secs) => Ok(after + secs as i64),
        (None, Some(_)) => Err("interval: must be 1 second to 366 days".into()),
        _ => Err("cron, interval: give exactly one of them".into()),
    }
}

/// Refuses a schedule that would back the VM up more often than every `min` seconds (a cron
/// expression is judged by its next few runs).
pub(crate) fn check_spacing(
    cron: Option<&str>,
    interval: Option<u64>,
    min: u64,
    now: i64,
) -> Result<(), String> {
    let mut runs = vec![now];
    for _ in 0..12 {
        let last = runs[runs.len() - 1];
        runs.push(next_run(cron, interval, last)?);
    }
    let field = if cron.is_some() { "cron" } else { "interval" };
    match runs[1..].windows(2).map(|w| w[1] - w[0]).min() {
        Some(gap) if gap < min as i64 => {
            Err(format!("{field}: backups must be at least {min} seconds apart (this one: {gap} s)"))
        }
        _ => Ok(()),
    }
}

pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Schedule> {
    Ok(Schedule {
        vm_id: r.get(0)?,
        cron: r.get(1)?,
        interval: r.get::<_, Option<i64>>(2)?.map(|i| i.max(0) as u64),
        keep: r.get(3)?,
        next_run: rfc3339(r.get(4)?),
        last_run: r.get::<_, Option<i64>>(5)?.map(rfc3339),
        last_error: r.get(6)?,
    })
}

pub(crate) const SELECT: &str =
    "SELECT vm_id, cron, interval_secs, keep, next_run, last_run, last_error FROM backup_schedules";

pub(crate) async fn load(ctx: &Ctx, vm_id: &str) -> ApiResult<Option<Schedule>> {
    let v = vm_id.to_string();
    Ok(ctx
        .vms
        .store
        .call(move |c| Ok(c.query_row(&format!("{SELECT} WHERE vm_id = ?1"), [v], from_row).optional()?))
        .await?)
}

/// (vm_id, owner, cron, interval in seconds, keep) of a schedule whose time has come.
type DueSchedule = (String, String, Option<String>, Option<i64>, u32);

/// Takes every due backup and applies retention. Called by the scheduler task every `TICK`.
pub async fn run_due(ctx: &Ctx) -> anyhow::Result<()> {
    let now = now_unix();
    let due: Vec<DueSchedule> = ctx
        .vms
        .store
        .call(move |c| {
            // The VM's owner as it is now: a schedule's backups belong to whoever owns the VM.
            let mut stmt = c.prepare(
                "SELECT s.vm_id, v.owner, s.cron, s.interval_secs, s.keep FROM backup_schedules s
                 JOIN vms v ON v.id = s.vm_id WHERE s.next_run <= ?1",
            )?;
            let rows =
                stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for (vm_id, owner, cron, interval, keep) in due {
        let need = quotas::Usage::backups(room_needed(ctx, &vm_id, keep).await);
        let result = match ctx.vms.check_quota(&owner, need).await {
            Ok(()) => backup_vm(ctx, &vm_id, &owner, true).await,
            Err(e) => Err(e),
        };
        let error = match &result {
            Ok(_) => {
                prune(ctx, &vm_id, keep).await;
                None
            }
            Err(e) => {
                tracing::warn!(vm_id, error = %e, "scheduled backup failed");
                Some(e.to_string())
            }
        };
        let finished = now_unix();
        let next = next_run(cron.as_deref(), interval.map(|i| i.max(1) as u64), finished)
            .unwrap_or(finished + 86_400);
        ctx.vms
            .store
            .call(move |c| {
                c.execute(
                    "UPDATE backup_schedules SET last_run = ?2, next_run = ?3, last_error = ?4 WHERE vm_id = ?1",
                    params![vm_id, finished, next, error],
                )?;
                Ok(())
            })
            .await?;
    }
    Ok(())
}

/// Backups a scheduled run adds to its owner's count: none when retention will delete one as soon
/// as it succeeds.
async fn room_needed(ctx: &Ctx, vm_id: &str, keep: u32) -> i64 {
    let v = vm_id.to_string();
    let kept: i64 = ctx
        .vms
        .store
        .call(move |c| {
            Ok(c.query_row("SELECT COUNT(*) FROM backups WHERE vm_id = ?1 AND scheduled = 1", [v], |r| {
                r.get(0)
            })?)
        })
        .await
        .unwrap_or(0);
    i64::from(kept < i64::from(keep))
}

/// Deletes the VM's oldest scheduled backups beyond `keep`.
async fn prune(ctx: &Ctx, vm_id: &str, keep: u32) {
    let v = vm_id.to_string();
    let old: Vec<String> = ctx.vms
        .store
        .call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id FROM backups WHERE vm_id = ?1 AND scheduled = 1 ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ?2",
            )?;
            let rows = stmt.query_map(params![v, keep], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .unwrap_or_default();
    for id in old {
        if let Ok(Some(backup)) = super::get(ctx, &id).await {
            let backup: Backup = backup;
            if let Err(e) = remove(ctx, &backup).await {
                tracing::warn!(backup = id, error = %e, "pruning a backup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_closer_than_the_minimum_are_refused() {
        let now = 1_700_000_000;
        assert!(check_spacing(None, Some(300), 300, now).is_ok());
        assert!(check_spacing(None, Some(1), 300, now).is_err_and(|e| e.starts_with("interval")));
        assert!(check_spacing(Some("0 3 * * *"), None, 300, now).is_ok());
        assert!(check_spacing(Some("* * * * *"), None, 300, now).is_err_and(|e| e.starts_with("cron")));
        assert!(check_spacing(Some("*/5 * * * *"), None, 300, now).is_ok());
        // Uneven: two runs a minute apart each hour.
        assert!(check_spacing(Some("0,1 * * * *"), None, 300, now).is_err());
    }
}
