//! Chunked backups (format `fastvm-backup/2`): a manifest naming, for each disk and file of the VM,
//! its chunks in the chunk store, in order. Each backup is complete on its own; an incremental one
//! reads only the chunks that changed and names the earlier backup's chunks for the rest.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, ensure};
use serde::{Deserialize, Serialize};
use vmrunner::VmSpec;
use vmrunner::argv::DiskFormat;

use super::archive::ArchivedVolume;
use super::chunks::{CHUNK_SIZE, ChunkId, ChunkStore, Next, Totals, Writer};
use super::mapped::Mapped;

pub const FORMAT: &str = "fastvm-backup/2";
/// The largest manifest read: a 4 TiB disk is a million chunk names.
const MAX_MANIFEST: u64 = 256 << 20;

/// A disk image (disk0 or a volume) as chunks of what the guest sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkedDisk {
    /// Its name in a `.tar.zst` archive (`disk0.qcow2`, `volumes/<id>.<format>`).
    pub member: String,
    pub format: DiskFormat,
    /// Bytes the guest sees.
    pub size: u64,
    pub chunks: Vec<ChunkId>,
    /// The persistent dirty bitmap that marks this backup's point on the disk: the next backup of
    /// a disk still holding it reads only what it marks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
}

/// A small file of the VM (UEFI variables, TPM state) as chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkedFile {
    pub name: String,
    pub size: u64,
    pub chunks: Vec<ChunkId>,
}

/// What taking the backup cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Bytes read from the disks (allocated data only; an incremental reads the changed chunks).
    pub bytes_read: u64,
    /// Bytes of new chunks written to the store (compressed).
    pub bytes_written: u64,
    /// Chunks already in the store, or unchanged since the backup this one builds on.
    pub chunks_reused: u64,
    /// Whether only what changed since an earlier backup was read.
    pub incremental: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkedManifest {
    pub format: String,
    pub vm_id: String,
    pub vm_name: String,
    pub spec: VmSpec,
    pub created_at: i64,
    #[serde(default)]
    pub volumes: Vec<ArchivedVolume>,
    pub disks: Vec<ChunkedDisk>,
    #[serde(default)]
    pub files: Vec<ChunkedFile>,
    #[serde(default)]
    pub stats: Stats,
}

impl ChunkedManifest {
    /// Every chunk it names, each once.
    pub fn chunk_names(&self) -> std::collections::BTreeSet<&ChunkId> {
        let disks = self.disks.iter().flat_map(|d| &d.chunks);
        disks.chain(self.files.iter().flat_map(|f| &f.chunks)).collect()
    }

    /// Writes it to `path`, complete and flushed before it appears there.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = crate::storage::temporary_name(path);
        let written = (|| -> anyhow::Result<()> {
            let mut f = File::create(&tmp)?;
            serde_json::to_writer(&mut f, self)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<ChunkedManifest> {
        let mut text = Vec::new();
        File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(MAX_MANIFEST)
            .read_to_end(&mut text)?;
        let manifest: ChunkedManifest =
            serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))?;
        ensure!(manifest.format == FORMAT, "{}: not a {FORMAT} manifest", path.display());
        for d in &manifest.disks {
            ensure!(
                d.chunks.len() as u64 == d.size.div_ceil(CHUNK_SIZE as u64),
                "{}: chunks do not cover its size",
                d.member
            );
        }
        Ok(manifest)
    }
}

/// The bytes of chunk `index` of something `size` bytes long.
fn chunk_len(size: u64, index: u64) -> usize {
    (size - index * CHUNK_SIZE as u64).min(CHUNK_SIZE as u64) as usize
}

/// Stores a disk image's chunks. With `base` (the chunks of the same disk in an earlier backup,
/// and `image` holding only what changed since), a chunk the image does not hold is the base's;
/// without, a chunk the image does not hold reads as zeros and is not read at all.
/// `on_chunk` gets the bytes done so far.
pub fn store_image(
    store: &Writer,
    image: &Mapped,
    base: Option<&[ChunkId]>,
    on_chunk: &dyn Fn(u64),
) -> anyhow::Result<(Vec<ChunkId>, Stats)> {
    let size = image.size();
    let count = size.div_ceil(CHUNK_SIZE as u64);
    if let Some(base) = base {
        ensure!(base.len() as u64 == count, "the earlier backup's disk has another size");
    }
    let mut zeros: std::collections::HashMap<usize, ChunkId> = std::collections::HashMap::new();
    let mut index = 0u64;
    let mut bytes_read = 0u64;
    let totals: Totals = super::chunks::store_all(store, || {
        if index == count {
            return Ok(None);
        }
        let (i, len) = (index, chunk_len(size, index));
        index += 1;
        on_chunk(i * CHUNK_SIZE as u64);
        let start = i * CHUNK_SIZE as u64;
        if !image.holds(start, len as u64) {
            if let Some(base) = base {
                return Ok(Some(Next::Unchanged(base[i as usize].clone())));
            }
            // Never written: zeros, stored once per length.
            if let Some(id) = zeros.get(&len) {
                return Ok(Some(Next::Unchanged(id.clone())));
            }
            let (id, _) = store.put(&vec![0u8; len])?;
            zeros.insert(len, id.clone());
            return Ok(Some(Next::Unchanged(id)));
        }
        let mut buf = vec![0u8; len];
        image.read(start, &mut buf)?;
        bytes_read += len as u64;
        Ok(Some(Next::Data(buf)))
    })?;
    on_chunk(size);
    let stats = Stats {
        bytes_read,
        bytes_written: totals.bytes_written,
        chunks_reused: totals.chunks_reused,
        incremental: base.is_some(),
    };
    Ok((totals.chunks, stats))
}

/// Stores a small file's chunks.
pub fn store_file(store: &Writer, name: &str, path: &Path) -> anyhow::Result<ChunkedFile> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let mut buf = Vec::with_capacity(CHUNK_SIZE);
        (&mut f).take(CHUNK_SIZE as u64).read_to_end(&mut buf)?;
        if buf.is_empty() && !chunks.is_empty() {
            break;
        }
        size += buf.len() as u64;
        let last = buf.len() < CHUNK_SIZE;
        chunks.push(store.put(&buf)?.0);
        if last {
            break;
        }
    }
    store.flush()?;
    Ok(ChunkedFile { name: name.into(), size, chunks })
}

/// Writes a disk's data as a raw image at `target`, reading, checking and writing its chunks on
/// every core (sparse: chunks of zeros are skipped unread). `on_chunk` gets the bytes done so far.
pub fn restore_raw(
    store: &ChunkStore,
    disk: &ChunkedDisk,
    target: &Path,
    on_chunk: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let f = File::create(target).with_context(|| format!("creating {}", target.display()))?;
    f.set_len(disk.size)?;
    let count = disk.chunks.len() as u64;
    let zero_full = ChunkId::of(&vec![0u8; CHUNK_SIZE]);
    let last_len = if count == 0 { 0 } else { chunk_len(disk.size, count - 1) };
    let zero_last = ChunkId::of(&vec![0u8; last_len]);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (next, done) = (AtomicUsize::new(0), AtomicU64::new(0));
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let restore_one = |i: usize| -> anyhow::Result<()> {
        let (id, len) = (&disk.chunks[i], chunk_len(disk.size, i as u64));
        let zero = if len == CHUNK_SIZE { &zero_full } else { &zero_last };
        if id != zero {
            let data = store.get(id)?;
            ensure!(data.len() == len, "chunk {} of {} has {} bytes, not {len}", i, disk.member, data.len());
            f.write_all_at(&data, i as u64 * CHUNK_SIZE as u64)?;
        }
        on_chunk(done.fetch_add(len as u64, Ordering::Relaxed) + len as u64);
        Ok(())
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= disk.chunks.len() {
                        return;
                    }
                    if let Err(e) = restore_one(i) {
                        failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                        next.store(disk.chunks.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    f.sync_all()?;
    Ok(())
}

/// Writes a small file back.
pub fn restore_file(store: &ChunkStore, file: &ChunkedFile, target: &Path) -> anyhow::Result<()> {
    let mut f = File::create(target).with_context(|| format!("creating {}", target.display()))?;
    let mut size = 0u64;
    for id in &file.chunks {
        let data = store.get(id)?;
        size += data.len() as u64;
        f.write_all(&data)?;
    }
    ensure!(size == file.size, "{} has {size} bytes, not {}", file.name, file.size);
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &str, args: &[&str], path: &Path) {
        let out = std::process::Command::new(program).args(args).arg(path).output().expect(program);
        assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn qemu_io(image: &Path, commands: &[&str]) {
        let args: Vec<&str> = commands.iter().flat_map(|c| ["-c", c]).collect();
        run("qemu-io", &args, image);
    }

    fn raw_of(image: &Path, out: &Path) {
        let status = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(out)
            .status()
            .expect("qemu-img");
        assert!(status.success());
    }

    fn create(image: &Path, size: &str) {
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(image)
            .arg(size)
            .output()
            .expect("qemu-img");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn restored(store: &Writer, disk: &ChunkedDisk, at: &Path) -> anyhow::Result<Vec<u8>> {
        restore_raw(store.store(), disk, at, &|_| {})?;
        Ok(std::fs::read(at)?)
    }

    #[tokio::test]
    async fn a_disk_comes_back_exactly_and_an_incremental_reads_only_what_changed() -> anyhow::Result<()> {
        const MIB: u64 = 1 << 20;
        let dir = tempfile::tempdir()?;
        let chunk_store = std::sync::Arc::new(ChunkStore::open(&dir.path().join("chunks"))?);
        let store = chunk_store.writer();
        let qemu_img = Path::new("qemu-img");
        // 41 MiB: ten chunks and a short one.
        let disk = dir.path().join("disk.qcow2");
        create(&disk, "41M");
        qemu_io(&disk, &["write -P 0x11 0 5M", "write -P 0x12 6M 1M", "write -P 0x13 40M 1M"]);
        let (chunks, stats) =
            store_image(&store, &Mapped::open(qemu_img, &disk, "qcow2").await?, None, &|_| {})?;
        assert_eq!(chunks.len(), 11);
        assert_eq!(stats.bytes_read, 9 * MIB, "only the chunks the image holds are read: {stats:?}");
        assert!(!stats.incremental);
        let full = ChunkedDisk {
            member: "disk0.qcow2".into(),
            format: DiskFormat::Qcow2,
            size: 41 * MIB,
            chunks,
            bitmap: None,
        };
        let expected = dir.path().join("expected.raw");
        raw_of(&disk, &expected);
        assert!(restored(&store, &full, &dir.path().join("full.raw"))? == std::fs::read(&expected)?);

        // What a backup with a dirty bitmap leaves: an image holding only the changed chunk.
        qemu_io(&disk, &["write -P 0x55 21M 1M"]);
        let changes = dir.path().join("changes.qcow2");
        create(&changes, "41M");
        raw_of(&disk, &expected);
        let changed = std::fs::read(&expected)?;
        let mut chunk5 = vec![0u8; 4 << 20];
        chunk5.copy_from_slice(&changed[20 << 20..24 << 20]);
        std::fs::write(dir.path().join("chunk5"), &chunk5)?;
        let write = format!("write -s {} 20M 4M", dir.path().join("chunk5").display());
        qemu_io(&changes, &[&write]);
        let mapped = Mapped::open(qemu_img, &changes, "qcow2").await?;
        let (chunks, stats) = store_image(&store, &mapped, Some(&full.chunks), &|_| {})?;
        assert_eq!(stats.bytes_read, 4 * MIB, "{stats:?}");
        assert_eq!(stats.chunks_reused, 10);
        assert!(stats.incremental);
        let differ: Vec<usize> = (0..11).filter(|&i| chunks[i] != full.chunks[i]).collect();
        assert_eq!(differ, vec![5]);
        let incremental = ChunkedDisk { chunks, ..full.clone() };
        assert!(restored(&store, &incremental, &dir.path().join("incr.raw"))? == changed);
        assert!(
            restored(&store, &full, &dir.path().join("full.raw"))? != changed,
            "the first is still itself"
        );

        // The manifest, with a file, round trip.
        let vars = dir.path().join("efivars.fd");
        std::fs::write(&vars, vec![7u8; 5 * MIB as usize])?;
        let file = store_file(&store, "efivars.fd", &vars)?;
        assert_eq!((file.size, file.chunks.len()), (5 * MIB, 2));
        restore_file(&chunk_store, &file, &dir.path().join("vars.back"))?;
        assert!(std::fs::read(dir.path().join("vars.back"))? == std::fs::read(&vars)?);
        let spec: VmSpec = serde_json::from_value(
            serde_json::json!({"name": "v", "memory": 256, "cpus": 1, "disk_size": 1}),
        )?;
        let manifest = ChunkedManifest {
            format: FORMAT.into(),
            vm_id: "v1".into(),
            vm_name: "v".into(),
            spec,
            created_at: 1,
            volumes: Vec::new(),
            disks: vec![incremental],
            files: vec![file],
            stats,
        };
        let path = dir.path().join("m.json");
        manifest.save(&path)?;
        let back = ChunkedManifest::load(&path)?;
        assert_eq!(back.chunk_names(), manifest.chunk_names());
        assert_eq!(back.chunk_names().len(), 7, "the disk's 5 (one of zeros for 7 chunks) and the file's 2");
        Ok(())
    }
}
