//! Metric history: the last ten minutes of every series at full resolution in memory, and 24 hours
//! at one point per minute in SQLite, so graphs survive a controller restart.

use std::collections::{HashMap, VecDeque};

use rusqlite::{Connection, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What the in-memory buffers hold (the original's window).
pub const RECENT_SECONDS: i64 = 600;
/// What the database keeps.
pub const KEPT_SECONDS: i64 = 24 * 3600;
/// Resolution of the stored history.
pub const STORED_EVERY: i64 = 60;

/// Points of one series, oldest first, never older than `RECENT_SECONDS` before the newest.
#[derive(Debug)]
pub struct Ring<T> {
    points: VecDeque<(i64, T)>,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring { points: VecDeque::new() }
    }
}

impl<T: Clone> Ring<T> {
    pub fn push(&mut self, ts: i64, point: T) {
        self.points.push_back((ts, point));
        while self.points.front().is_some_and(|(t, _)| *t <= ts - RECENT_SECONDS) {
            self.points.pop_front();
        }
    }

    pub fn since(&self, ts: i64) -> Vec<T> {
        self.points.iter().filter(|(t, _)| *t >= ts).map(|(_, p)| p.clone()).collect()
    }

    pub fn span_seconds(&self) -> i64 {
        match (self.points.front(), self.points.back()) {
            (Some((a, _)), Some((b, _))) => b - a,
            _ => 0,
        }
    }
}

/// The series key of the host and of a VM.
pub const HOST: &str = "host";

pub fn vm_series(vm_id: &str) -> String {
    format!("vm:{vm_id}")
}

/// Stores one point per series; drops what is older than a day.
pub fn store<T: Serialize>(conn: &Connection, ts: i64, points: &[(String, T)]) -> anyhow::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO metrics_history (series, ts, data) VALUES (?1, ?2, ?3)",
        )?;
        for (series, point) in points {
            insert.execute(params![series, ts, serde_json::to_string(point)?])?;
        }
    }
    tx.execute("DELETE FROM metrics_history WHERE ts < ?1", [ts - KEPT_SECONDS])?;
    tx.commit()?;
    Ok(())
}

/// Stored points of the series whose key starts with `prefix`, since `ts`, by series, oldest first.
pub fn load<T: DeserializeOwned>(
    conn: &Connection,
    prefix: &str,
    ts: i64,
) -> anyhow::Result<HashMap<String, Vec<T>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT series, data FROM metrics_history WHERE series >= ?1 AND series < ?2 AND ts >= ?3 ORDER BY ts",
    )?;
    // Every key with the prefix sorts between the prefix and the prefix followed by U+FFFF.
    let upper = format!("{prefix}\u{ffff}");
    let rows =
        stmt.query_map(params![prefix, upper, ts], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out: HashMap<String, Vec<T>> = HashMap::new();
    for row in rows {
        let (series, data) = row?;
        if let Ok(point) = serde_json::from_str(&data) {
            out.entry(series).or_default().push(point);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_never_holds_more_than_ten_minutes() {
        let mut ring = Ring::default();
        for ts in 0..3000 {
            ring.push(ts, ts);
            assert!(ring.span_seconds() < RECENT_SECONDS, "span {} at {ts}", ring.span_seconds());
        }
        assert_eq!(ring.since(0).len() as i64, RECENT_SECONDS);
        assert_eq!(ring.since(2990), (2990..3000).collect::<Vec<_>>());
    }
}
