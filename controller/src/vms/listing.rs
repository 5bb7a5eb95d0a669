//! The VM list as bytes, serialised once per change rather than once per request: with a thousand
//! VMs the answer is ~700 KB, and rebuilding it (database rows, JSON specs, views) for every poll of
//! every dashboard is most of what the controller would do under load.

use std::sync::{Arc, Mutex};

/// What a list was built from: the database's change counters and the generations of the
/// in-memory state views add (phases, guest addresses). Any change gives a different key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub db: (u64, i64),
    pub phases: u64,
    pub guests: u64,
}

/// One VM's serialised view and who may see it.
pub struct Entry {
    pub owner: String,
    pub json: Vec<u8>,
}

#[derive(Default)]
pub struct Listing {
    last: Mutex<Option<(Key, Arc<Vec<Entry>>)>>,
}

impl Listing {
    /// The entries built for `key`, if the last build was for it.
    pub fn get(&self, key: Key) -> Option<Arc<Vec<Entry>>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().filter(|(k, _)| *k == key).map(|(_, entries)| entries.clone())
    }

    /// Keeps `entries`, built from state at least as new as `key`.
    pub fn put(&self, key: Key, entries: Vec<Entry>) -> Arc<Vec<Entry>> {
        let entries = Arc::new(entries);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, entries.clone()));
        entries
    }

    /// A JSON array of the entries `visible` lets through, in order.
    pub fn join(entries: &[Entry], visible: impl Fn(&str) -> bool) -> Vec<u8> {
        let shown: Vec<&Entry> = entries.iter().filter(|e| visible(&e.owner)).collect();
        let mut out = Vec::with_capacity(shown.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
        out.push(b'[');
        for (i, e) in shown.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.json);
        }
        out.push(b']');
        out
    }
}

/// SQLite's change counters: this connection's writes, and other connections' commits (the CLI).
pub fn db_generation(conn: &rusqlite::Connection) -> rusqlite::Result<(u64, i64)> {
    let data_version: i64 = conn.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    Ok((conn.total_changes(), data_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(owner: &str, json: &str) -> Entry {
        Entry { owner: owner.into(), json: json.as_bytes().to_vec() }
    }

    #[test]
    fn a_list_is_kept_for_its_key_only() {
        let listing = Listing::default();
        let key = Key { db: (1, 1), phases: 0, guests: 0 };
        assert!(listing.get(key).is_none());
        listing.put(key, vec![entry("a", "{}")]);
        assert_eq!(listing.get(key).map(|e| e.len()), Some(1));
        for other in [
            Key { db: (2, 1), ..key },
            Key { db: (1, 2), ..key },
            Key { phases: 1, ..key },
            Key { guests: 1, ..key },
        ] {
            assert!(listing.get(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn join_makes_a_json_array_of_what_is_visible() -> serde_json::Result<()> {
        let entries = [entry("a", r#"{"n":1}"#), entry("b", r#"{"n":2}"#), entry("a", r#"{"n":3}"#)];
        let all: serde_json::Value = serde_json::from_slice(&Listing::join(&entries, |_| true))?;
        assert_eq!(all, serde_json::json!([{"n":1},{"n":2},{"n":3}]));
        let mine: serde_json::Value = serde_json::from_slice(&Listing::join(&entries, |o| o == "a"))?;
        assert_eq!(mine, serde_json::json!([{"n":1},{"n":3}]));
        assert_eq!(Listing::join(&entries, |_| false), b"[]");
        Ok(())
    }

    #[test]
    fn the_database_generation_moves_with_every_write() -> rusqlite::Result<()> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.execute("CREATE TABLE t (x)", [])?;
        let before = db_generation(&conn)?;
        conn.execute("INSERT INTO t VALUES (1)", [])?;
        assert_ne!(db_generation(&conn)?, before);
        Ok(())
    }
}
