//! The chunk store: pieces of disk images and files, named by the SHA-256 of their data and kept
//! zstd-compressed, each once however many backups hold it. A backup is a manifest listing its
//! chunks in order, so deleting one backup never touches another's data; garbage collection removes
//! the chunks no manifest names.
//!
//! A chunk appears under its name only complete and flushed (written aside, synced, renamed), so a
//! crash leaves at worst a temporary file, which `sweep_temporary` removes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, bail, ensure};
use ring::digest::{SHA256, digest};

/// The size of every chunk but a disk's last: big enough that a manifest stays small, small
/// enough that a change re-stores little (the dirty bitmaps track at this granularity).
pub const CHUNK_SIZE: usize = 4 << 20;
/// Fast, and on incompressible data it gives up quickly: hashing and compressing on every core
/// are what bound a backup's speed.
const ZSTD_LEVEL: i32 = 1;

/// A chunk's name: the SHA-256 of its uncompressed data, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(String);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(hex::encode(digest(&SHA256, data)))
    }

    /// A name read from a manifest: 64 lowercase hex digits, nothing a path could be made of.
    pub fn parse(text: &str) -> anyhow::Result<ChunkId> {
        ensure!(
            text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "not a chunk name: {text:?}"
        );
        Ok(ChunkId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ChunkId, D::Error> {
        let text = String::deserialize(d)?;
        ChunkId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What storing a piece of data did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written, taking this many bytes on disk.
    New(u64),
    /// Already there.
    Reused,
}

pub struct ChunkStore {
    dir: PathBuf,
    /// The chunks each backup under way relies on (its base's, and those it stored before its
    /// manifest names them). Garbage collection holds this lock for its whole run, so a chunk is
    /// either pinned before it starts or looked for again after it ended.
    pins: Mutex<Pins>,
}

#[derive(Default)]
struct Pins {
    next: u64,
    held: HashMap<u64, HashSet<ChunkId>>,
}

/// What a garbage collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Collected {
    /// Chunks removed: no backup named them.
    pub removed: u64,
    pub bytes_freed: u64,
    /// Chunks kept.
    pub kept: u64,
}

/// A backup's way of storing chunks: what it stores or relies on stays pinned, out of garbage
/// collection's reach, until its last clone is dropped (by then its manifest names them, or the
/// backup failed).
#[derive(Clone)]
pub struct Writer(Arc<Pinned>);

struct Pinned {
    store: Arc<ChunkStore>,
    key: u64,
    /// Chunks written under a temporary name, to be flushed and renamed into place together (one
    /// flush per chunk as it is written would halve a backup's speed).
    pending: Mutex<Vec<(PathBuf, PathBuf)>>,
}

impl Writer {
    pub fn store(&self) -> &ChunkStore {
        &self.0.store
    }

    /// Stores `data` under its hash, unless a chunk of that name is there already.
    /// The chunk is in place once `flush` returned.
    pub fn put(&self, data: &[u8]) -> anyhow::Result<(ChunkId, Stored)> {
        let id = ChunkId::of(data);
        self.pin([id.clone()]);
        let stored = match self.0.store.write_aside(&id, data)? {
            Some((tmp, path, len)) => {
                self.0.pending.lock().unwrap_or_else(|e| e.into_inner()).push((tmp, path));
                Stored::New(len)
            }
            None => Stored::Reused,
        };
        Ok((id, stored))
    }

    /// Flushes the chunks written since the last flush and moves them into place, on every core
    /// (a manifest may name them from then on).
    pub fn flush(&self) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut *self.0.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((tmp, path)) = pending.get(i) else { return };
                        let placed = File::open(tmp)
                            .and_then(|f| f.sync_all())
                            .and_then(|()| std::fs::rename(tmp, path));
                        if let Err(e) = placed {
                            let _ = std::fs::remove_file(tmp);
                            let e = anyhow::Error::from(e).context(format!("writing {}", path.display()));
                            failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        // The renames themselves, durable.
        let dirs: HashSet<&Path> = pending.iter().filter_map(|(_, p)| p.parent()).collect();
        for dir in dirs {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("flushing {}", dir.display()))?;
        }
        Ok(())
    }

    pub fn pin(&self, ids: impl IntoIterator<Item = ChunkId>) {
        self.0.store.pins().held.entry(self.0.key).or_default().extend(ids);
    }

    /// Runs `load` (reading an earlier backup's manifest) with no garbage collection under way,
    /// and pins the chunks `names` finds in what it loaded.
    pub fn pin_loaded<T>(
        &self,
        load: impl FnOnce() -> anyhow::Result<T>,
        names: impl FnOnce(&T) -> Vec<ChunkId>,
    ) -> anyhow::Result<T> {
        let mut pins = self.0.store.pins();
        let loaded = load()?;
        pins.held.entry(self.0.key).or_default().extend(names(&loaded));
        Ok(loaded)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Written but never flushed: the backup failed.
        for (tmp, _) in self.pending.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_file(tmp);
        }
        self.store.pins().held.remove(&self.key);
    }
}

impl ChunkStore {
    /// The store in `dir` (created if missing).
    pub fn open(dir: &Path) -> anyhow::Result<ChunkStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ChunkStore { dir: dir.to_path_buf(), pins: Mutex::default() })
    }

    /// Removes the chunks a backup cut short by a crash wrote aside and never flushed into place.
    pub fn sweep_temporary(&self) -> anyhow::Result<()> {
        for sub in std::fs::read_dir(&self.dir)?.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            for e in std::fs::read_dir(sub.path())?.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn pins(&self) -> MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn writer(self: &Arc<Self>) -> Writer {
        let mut pins = self.pins();
        pins.next += 1;
        Writer(Arc::new(Pinned { store: self.clone(), key: pins.next, pending: Mutex::default() }))
    }

    /// The bytes `ids` take in the store, each counted once.
    pub fn stored_size(&self, ids: &[ChunkId]) -> u64 {
        let unique: HashSet<&ChunkId> = ids.iter().collect();
        unique.into_iter().filter_map(|id| std::fs::metadata(self.path(id)).ok()).map(|m| m.len()).sum()
    }

    /// Garbage collection: removes every chunk neither `named` (the chunks the saved manifests
    /// name, read once no backup can pin more) nor pinned by a backup under way returns.
    pub fn collect(
        &self,
        named: impl FnOnce() -> anyhow::Result<HashSet<ChunkId>>,
    ) -> anyhow::Result<Collected> {
        let pins = self.pins();
        let mut keep = named()?;
        keep.extend(pins.held.values().flatten().cloned());
        let mut done = Collected::default();
        for id in self.all()? {
            if keep.contains(&id) {
                done.kept += 1;
            } else {
                done.bytes_freed += self.remove(&id);
                done.removed += 1;
            }
        }
        Ok(done)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.dir.join(&id.0[..2]).join(&id.0)
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// Writes `data` compressed beside where chunk `id` goes, unless that chunk is there already:
    /// the temporary file, the chunk's path and the bytes written (see `Writer::put`, `flush`).
    fn write_aside(&self, id: &ChunkId, data: &[u8]) -> anyhow::Result<Option<(PathBuf, PathBuf, u64)>> {
        let path = self.path(id);
        if path.is_file() {
            return Ok(None);
        }
        let compressed = zstd::bulk::compress(data, ZSTD_LEVEL).context("compressing a chunk")?;
        let dir = path.parent().context("chunk path")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Two writers of one chunk (two backups at once) each write their own temporary file.
        let tmp = dir.join(format!(".{}.{}.tmp", id.0, uuid::Uuid::new_v4().simple()));
        if let Err(e) = File::create(&tmp).and_then(|mut f| f.write_all(&compressed)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::from(e).context(format!("writing chunk {}", id.0)));
        }
        Ok(Some((tmp, path, compressed.len() as u64)))
    }

    /// A chunk's data, checked against its name.
    pub fn get(&self, id: &ChunkId) -> anyhow::Result<Vec<u8>> {
        let path = self.path(id);
        let mut compressed = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut compressed))
            .with_context(|| format!("chunk {} is missing", id.0))?;
        let data = zstd::stream::decode_all(&compressed[..])
            .with_context(|| format!("chunk {} is damaged", id.0))?;
        if ChunkId::of(&data) != *id {
            bail!("chunk {} is damaged: its data does not match its name", id.0);
        }
        Ok(data)
    }

    /// Every chunk in the store.
    pub fn all(&self) -> anyhow::Result<Vec<ChunkId>> {
        let mut ids = Vec::new();
        for sub in std::fs::read_dir(&self.dir)?.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            for e in std::fs::read_dir(sub.path())?.filter_map(Result::ok) {
                if let Ok(id) = ChunkId::parse(&e.file_name().to_string_lossy()) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes a chunk; how many bytes that gave back.
    pub fn remove(&self, id: &ChunkId) -> u64 {
        let path = self.path(id);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => size,
            Err(_) => 0,
        }
    }
}

/// One piece of work for the hashing threads: the `index`th chunk and its data.
struct Piece {
    index: usize,
    data: Vec<u8>,
}

/// What storing a sequence of chunks did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub chunks: Vec<ChunkId>,
    pub bytes_written: u64,
    pub chunks_reused: u64,
}

/// The next chunk of a disk or file, as its reader has it.
pub enum Next {
    /// Its data, read.
    Data(Vec<u8>),
    /// Unchanged since an earlier backup, which stored it under this name: nothing to read.
    Unchanged(ChunkId),
}

/// Stores the chunks `read` yields (in order, until `None`) on every core: reading stays on the
/// calling thread, hashing, compressing and writing spread over the others; they are all flushed
/// into place before it returns. The chunk names come back in the order the data came.
pub fn store_all(
    store: &Writer,
    mut read: impl FnMut() -> anyhow::Result<Option<Next>>,
) -> anyhow::Result<Totals> {
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (to_workers, pieces) = sync_channel::<Piece>(workers * 2);
    let pieces: Arc<Mutex<Receiver<Piece>>> = Arc::new(Mutex::new(pieces));
    let (to_collector, results) = std::sync::mpsc::channel::<anyhow::Result<(usize, ChunkId, Stored)>>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (pieces, results) = (pieces.clone(), to_collector.clone());
            scope.spawn(move || {
                loop {
                    let next = pieces.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(Piece { index, data }) = next else { return };
                    let done = store.put(&data).map(|(id, stored)| (index, id, stored));
                    let failed = done.is_err();
                    if results.send(done).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(to_collector);
        let mut sent = 0;
        let mut read_error = None;
        let mut unchanged = Vec::new();
        loop {
            match read() {
                Ok(Some(Next::Data(data))) => {
                    if to_workers.send(Piece { index: sent, data }).is_err() {
                        break; // a worker failed: its error is in the results
                    }
                    sent += 1;
                }
                Ok(Some(Next::Unchanged(id))) => {
                    unchanged.push((sent, id));
                    sent += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(to_workers);
        let mut slots: Vec<Option<ChunkId>> = vec![None; sent];
        let mut totals = Totals::default();
        for (index, id) in unchanged {
            slots[index] = Some(id);
            totals.chunks_reused += 1;
        }
        for result in results {
            let (index, id, stored) = result?;
            match stored {
                Stored::New(bytes) => totals.bytes_written += bytes,
                Stored::Reused => totals.chunks_reused += 1,
            }
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(id);
            }
        }
        if let Some(e) = read_error {
            return Err(e);
        }
        totals.chunks = slots.into_iter().collect::<Option<Vec<_>>>().context("a chunk was not stored")?;
        store.flush()?;
        Ok(totals)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(data: &[u8]) -> impl FnMut() -> anyhow::Result<Option<Next>> + '_ {
        let mut at = 0;
        move || {
            if at >= data.len() {
                return Ok(None);
            }
            let end = (at + CHUNK_SIZE).min(data.len());
            let piece = data[at..end].to_vec();
            at = end;
            Ok(Some(Next::Data(piece)))
        }
    }

    fn noise(len: usize, seed: u8) -> Vec<u8> {
        let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn data_comes_back_in_order_and_each_chunk_is_stored_once() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let chunks = Arc::new(ChunkStore::open(dir.path())?);
        let store = chunks.writer();
        let mut data = noise(3 * CHUNK_SIZE, 1);
        data.extend(vec![0u8; 2 * CHUNK_SIZE + 1000]);
        let first = store_all(&store, pieces(&data))?;
        assert_eq!(first.chunks.len(), 6);
        // The two zero chunks are one: the second is reused, unless both were written at once.
        assert!(first.chunks_reused <= 1, "{first:?}");
        let mut back = Vec::new();
        for id in &first.chunks {
            back.extend(chunks.get(id)?);
        }
        assert!(back == data, "the data comes back as it went in");
        let again = store_all(&store, pieces(&data))?;
        assert_eq!(again.chunks, first.chunks);
        assert_eq!((again.bytes_written, again.chunks_reused), (0, 6), "nothing is written twice");
        assert_eq!(chunks.all()?.len(), 5, "the two zero chunks are one");
        // An incremental: the first and last chunks unchanged (not read), the others read.
        let mut i = 0;
        let known = first.chunks.clone();
        let incremental = store_all(&store, || {
            i += 1;
            Ok(match i {
                1 | 6 => Some(Next::Unchanged(known[i - 1].clone())),
                2..=5 => {
                    Some(Next::Data(data[(i - 1) * CHUNK_SIZE..(i * CHUNK_SIZE).min(data.len())].to_vec()))
                }
                _ => None,
            })
        })?;
        assert_eq!(incremental.chunks, first.chunks);
        assert_eq!(incremental.chunks_reused, 6);
        Ok(())
    }

    #[test]
    fn garbage_collection_keeps_what_manifests_name_and_backups_under_way_hold() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let chunks = Arc::new(ChunkStore::open(dir.path())?);
        let (named, pinned, loose) = {
            let w = chunks.writer();
            let ids = (w.put(&noise(100, 1))?.0, w.put(&noise(100, 2))?.0, w.put(&noise(100, 3))?.0);
            w.flush()?;
            ids
        };
        let under_way = chunks.writer();
        under_way.pin([pinned.clone()]);
        let fresh = under_way.put(&noise(100, 4))?.0;
        under_way.flush()?;
        // Written but not flushed: a backup that fails leaves nothing.
        let never = {
            let failing = chunks.writer();
            failing.put(&noise(100, 5))?.0
        };
        assert!(!chunks.contains(&never));
        assert!(
            std::fs::read_dir(dir.path().join(&never.as_str()[..2]))?
                .all(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().ends_with(".tmp")))
        );
        let done = chunks.collect(|| Ok([named.clone()].into()))?;
        assert_eq!((done.removed, done.kept), (1, 3), "{done:?}");
        assert!(done.bytes_freed > 0);
        assert!(!chunks.contains(&loose));
        for id in [&named, &pinned, &fresh] {
            assert!(chunks.contains(id));
        }
        // Once the backup is over, what it held and no manifest names goes too.
        drop(under_way);
        assert_eq!(chunks.collect(|| Ok([named.clone()].into()))?.removed, 2);
        // A backup that loads a base while a collection would run gets it whole, pinned.
        let w = chunks.writer();
        let base = w.pin_loaded(|| Ok(vec![named.clone()]), |ids| ids.clone())?;
        assert_eq!(chunks.collect(|| Ok(HashSet::new()))?.removed, 0, "{base:?} is pinned");
        Ok(())
    }

    #[test]
    fn a_damaged_or_missing_chunk_is_an_error_naming_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(ChunkStore::open(dir.path())?);
        let w = store.writer();
        let (id, stored) = w.put(&noise(1000, 2))?;
        w.flush()?;
        assert!(matches!(stored, Stored::New(_)));
        let path = store.path(&id);
        let other = zstd::bulk::compress(&noise(1000, 3), 1)?;
        std::fs::write(&path, other)?;
        let e = store.get(&id).expect_err("damaged");
        assert!(format!("{e:#}").contains("damaged"), "{e:#}");
        std::fs::write(&path, b"not zstd")?;
        assert!(format!("{:#}", store.get(&id).expect_err("damaged")).contains(id.as_str()));
        assert!(store.remove(&id) > 0);
        assert!(format!("{:#}", store.get(&id).expect_err("missing")).contains("missing"));
        Ok(())
    }

    #[test]
    fn names_from_a_manifest_cannot_be_paths_and_leftovers_are_swept() -> anyhow::Result<()> {
        for bad in ["../../etc/passwd", "", &"A".repeat(64), &"0".repeat(63)] {
            assert!(ChunkId::parse(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("ab"))?;
        std::fs::write(dir.path().join("ab").join(".abcd.1.tmp"), b"half")?;
        let store = Arc::new(ChunkStore::open(dir.path())?);
        store.sweep_temporary()?;
        assert!(std::fs::read_dir(dir.path().join("ab"))?.next().is_none());
        assert!(store.all()?.is_empty());
        Ok(())
    }

    #[test]
    fn a_read_error_stops_the_run_and_is_returned() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(ChunkStore::open(dir.path())?);
        let mut n = 0;
        let e = store_all(&store.writer(), || {
            n += 1;
            if n > 3 { anyhow::bail!("disk went away") } else { Ok(Some(Next::Data(noise(1000, n as u8)))) }
        })
        .expect_err("read error");
        assert!(e.to_string().contains("disk went away"));
        Ok(())
    }
}
