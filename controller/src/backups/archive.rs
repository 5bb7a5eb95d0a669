//! The backup archive: a zstd-compressed tar of the VM's files between `index.json` first (every
//! member's name and size, known before anything is written) and `manifest.json` last (the VM's
//! configuration and the size and SHA-256 of every other member). Reading verifies all of it before
//! anything is used, and writes no member the index does not announce, nor a byte more than it says.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use anyhow::{Context, bail, ensure};
use ring::digest::{Context as Digest, SHA256};
use serde::{Deserialize, Serialize};
use vmrunner::VmSpec;
use vmrunner::argv::DiskFormat;
use vmrunner::paths::VmDir;

use super::write_behind::WriteBehind;

pub const MANIFEST: &str = "manifest.json";
pub const INDEX: &str = "index.json";
/// The largest index or manifest read (a VM's configuration and a few dozen members).
const MAX_METADATA: u64 = 1 << 20;
/// Large sequential reads and writes: disk images are gigabytes.
const IO_BUFFER: usize = 1 << 20;
/// Blocks in flight between the thread that hashes and the one that archives or writes.
const PIPELINE_DEPTH: usize = 8;
pub const FORMAT: &str = "fastvm-backup/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A volume that was attached to the VM; its data is the member `member`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchivedVolume {
    pub id: String,
    pub name: String,
    pub size_gb: u64,
    pub format: DiskFormat,
    pub slot: Option<u32>,
    pub member: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub vm_id: String,
    pub vm_name: String,
    pub spec: VmSpec,
    pub created_at: i64,
    pub members: Vec<Member>,
    /// Archives written before volumes were backed up have none.
    #[serde(default)]
    pub volumes: Vec<ArchivedVolume>,
}

/// What `index.json` announces: the members that follow, in order, with their sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub members: Vec<IndexEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    pub size: u64,
}

/// Reports bytes done of the total.
pub type OnProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Fills `buf` as far as the reader allows; 0 only at the end.
fn read_block(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A block buffer: a used one handed back when there is one (fresh megabytes cost page faults).
fn block_buffer(spare: &Receiver<Vec<u8>>) -> Vec<u8> {
    let mut buf = spare.try_recv().unwrap_or_default();
    buf.resize(IO_BUFFER, 0);
    buf
}

/// Reads a file in blocks, hashing each, and hands them on: SHA-256 (the slowest step) runs on its
/// own core while the archiver and zstd's workers use the others.
fn read_and_hash(
    mut file: File,
    out: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
) -> std::io::Result<(u64, String)> {
    let mut digest = Digest::new(&SHA256);
    let mut count = 0u64;
    loop {
        let mut buf = block_buffer(&spare);
        let n = read_block(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        digest.update(&buf);
        count += n as u64;
        if out.send(buf).is_err() {
            break; // The archiver gave up; its error is the one reported.
        }
    }
    Ok((count, hex::encode(digest.finish())))
}

/// The blocks of one member as a `Read` for the tar builder, counting what passes.
struct Blocks<'a> {
    rx: Receiver<Vec<u8>>,
    spare: Sender<Vec<u8>>,
    block: Vec<u8>,
    pos: usize,
    on_block: &'a mut dyn FnMut(usize),
}

impl Read for Blocks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.block.len() {
            match self.rx.recv() {
                Ok(b) => {
                    (self.on_block)(b.len());
                    let used = std::mem::replace(&mut self.block, b);
                    let _ = self.spare.send(used);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn append_member<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    path: &Path,
    on_block: &mut dyn FnMut(usize),
) -> anyhow::Result<Member> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let size = file.metadata()?.len();
    let (tx, rx) = sync_channel(PIPELINE_DEPTH);
    let (spare_tx, spare_rx) = channel();
    let (appended, hashed) = std::thread::scope(|s| {
        let hasher = s.spawn(move || read_and_hash(file, tx, spare_rx));
        let mut blocks = Blocks { rx, spare: spare_tx, block: Vec::new(), pos: 0, on_block };
        let appended = builder.append_data(&mut header(size), name, &mut blocks);
        drop(blocks); // Unblocks the hasher if archiving stopped early.
        (appended, hasher.join())
    });
    appended?;
    let (count, sha256) = hashed.map_err(|_| anyhow::anyhow!("the hashing thread panicked"))??;
    ensure!(count == size, "{} changed size while it was archived", path.display());
    Ok(Member { name: name.into(), size, sha256 })
}

/// Writes the archive to `out` from `(member name, file)` pairs; returns the manifest written.
pub fn write(
    out: &Path,
    files: &[(String, PathBuf)],
    mut manifest: Manifest,
    progress: OnProgress<'_>,
) -> anyhow::Result<Manifest> {
    let file = WriteBehind::new(File::create(out).with_context(|| format!("creating {}", out.display()))?)?;
    // Level 1 on every core: disk images are large and often barely compressible, so speed wins.
    let mut encoder = zstd::Encoder::new(std::io::BufWriter::with_capacity(IO_BUFFER, file), 1)?;
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    if workers > 1 {
        encoder.multithread(workers)?;
    }
    let mut index = Index { format: FORMAT.into(), members: Vec::new() };
    for (name, path) in files {
        let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        index.members.push(IndexEntry { name: name.clone(), size });
    }
    let total: u64 = index.members.iter().map(|m| m.size).sum();
    let mut done = 0u64;
    // Large writes into zstd: the tar builder copies in small pieces.
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(IO_BUFFER, encoder));
    let bytes = serde_json::to_vec(&index)?;
    builder.append_data(&mut header(bytes.len() as u64), INDEX, bytes.as_slice())?;
    for (name, path) in files {
        let mut on_block = |n: usize| {
            done += n as u64;
            progress(done, total);
        };
        let member = append_member(&mut builder, name, path, &mut on_block)?;
        manifest.members.push(member);
    }
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    builder.append_data(&mut header(bytes.len() as u64), MANIFEST, bytes.as_slice())?;
    let encoder = builder.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    let file = encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.finish()?;
    Ok(manifest)
}

/// Hashes and writes the blocks of one extracted member (on its own thread).
fn hash_and_write(
    target: &Path,
    blocks: Receiver<Vec<u8>>,
    spare: Sender<Vec<u8>>,
) -> std::io::Result<(u64, String)> {
    // On disk before it replaces anything: a restore renames these files over the VM's own.
    let mut out = WriteBehind::new(File::create(target)?)?;
    let mut digest = Digest::new(&SHA256);
    let mut count = 0u64;
    for block in blocks {
        digest.update(&block);
        out.write_all(&block)?;
        count += block.len() as u64;
        let _ = spare.send(block);
    }
    out.finish()?;
    Ok((count, hex::encode(digest.finish())))
}

/// Copies one tar entry to `target` in blocks, hashing on another thread; returns (size, sha256).
/// Stops at the first byte past `limit`.
fn extract_member(entry: &mut impl Read, target: &Path, limit: u64) -> anyhow::Result<(u64, String)> {
    let mut entry = entry.take(limit + 1);
    let entry = &mut entry;
    let (tx, rx) = sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
    let (spare_tx, spare_rx) = channel();
    let (read, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || hash_and_write(target, rx, spare_tx));
        let read = (|| -> std::io::Result<()> {
            loop {
                let mut buf = block_buffer(&spare_rx);
                let n = read_block(entry, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if tx.send(buf).is_err() {
                    return Ok(()); // The writer failed; its error is the one reported.
                }
            }
        })();
        drop(tx);
        (read, writer.join())
    });
    read?;
    let (size, sha) = written.map_err(|_| anyhow::anyhow!("the writing thread panicked"))??;
    ensure!(size <= limit, "it is larger than the index announces");
    Ok((size, sha))
}

/// Counts the compressed bytes read, for progress.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    total: u64,
    progress: OnProgress<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        (self.progress)(self.read, self.total);
        Ok(n)
    }
}

/// A member name that stays inside the extraction directory.
fn safe_name(name: &Path) -> bool {
    !name.as_os_str().is_empty() && name.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The names a member may have: the VM's disk, UEFI variables and TPM state, and its volumes. Nothing
/// else is ever written, so an archive cannot drop a file of its choosing into a VM's directory.
pub(super) fn allowed_member(name: &str) -> bool {
    let one_file = |rest: &str| {
        !rest.is_empty()
            && rest.len() <= 100
            && !rest.starts_with('.')
            && rest.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    name == VmDir::DISK
        || VmDir::FIRMWARE_FILES.contains(&name)
        || name.strip_prefix("tpm/").is_some_and(one_file)
        || name.strip_prefix("volumes/").is_some_and(one_file)
}

fn open_tar<'a>(
    archive: &Path,
    progress: OnProgress<'a>,
) -> anyhow::Result<tar::Archive<impl Read + use<'a>>> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let total = file.metadata()?.len();
    let counting = Counting { inner: file, read: 0, total, progress };
    let decoder = zstd::Decoder::new(std::io::BufReader::with_capacity(IO_BUFFER, counting))
        .context("not a zstd stream")?;
    Ok(tar::Archive::new(decoder))
}

fn read_metadata<T: serde::de::DeserializeOwned>(entry: &mut impl Read, what: &str) -> anyhow::Result<T> {
    let mut text = Vec::new();
    entry.take(MAX_METADATA + 1).read_to_end(&mut text).with_context(|| format!("reading the {what}"))?;
    ensure!(text.len() as u64 <= MAX_METADATA, "the {what} is too large");
    serde_json::from_slice(&text).with_context(|| format!("the {what} is not valid"))
}

/// What an archive without an index (written before there was one) will hold, from its manifest:
/// the archive is read through once, writing nothing, to find it.
fn index_from_manifest(archive: &Path) -> anyhow::Result<Index> {
    let mut tar = open_tar(archive, &|_, _| {})?;
    for entry in tar.entries().context("not a tar archive")? {
        let mut entry = entry.context("damaged archive")?;
        if entry.path().context("bad member name")?.as_os_str() == MANIFEST {
            let manifest: Manifest = read_metadata(&mut entry, "manifest")?;
            let members =
                manifest.members.into_iter().map(|m| IndexEntry { name: m.name, size: m.size }).collect();
            return Ok(Index { format: manifest.format, members });
        }
    }
    bail!("the archive has no manifest (truncated?)")
}

/// An archive that does not fit in what is free: not damaged, the disk is too full.
#[derive(Debug, thiserror::Error)]
#[error("the restore needs {} MiB and {} MiB are free", needed.div_ceil(1 << 20), room >> 20)]
pub struct NoRoom {
    pub needed: u64,
    pub room: u64,
}

/// Checks what an index announces before anything is written: allowed names, each once, and a
/// total that fits in `room`.
fn check_index(index: &Index, room: u64) -> anyhow::Result<()> {
    ensure!(index.format == FORMAT, "unknown backup format {:?}", index.format);
    let mut names = std::collections::BTreeSet::new();
    for m in &index.members {
        ensure!(allowed_member(&m.name), "member {:?} is not a file a backup holds", m.name);
        ensure!(names.insert(m.name.as_str()), "member {} appears twice", m.name);
    }
    let total = index.members.iter().try_fold(0u64, |sum, m| sum.checked_add(m.size));
    match total {
        Some(t) if t <= room => Ok(()),
        Some(t) => Err(NoRoom { needed: t, room }.into()),
        None => bail!("its members' sizes do not add up"),
    }
}

/// Extracts the archive into `dir` (which must be empty) and checks every member against the
/// manifest. Any mismatch, missing or extra member, or damage is an error, and `dir` then holds
/// nothing worth keeping. A member is written only when the index announced it with its size (so
/// the whole restore was known to fit before it began), and never a byte past that size.
pub fn extract_verified(archive: &Path, dir: &Path, progress: OnProgress<'_>) -> anyhow::Result<Manifest> {
    let mut tar = open_tar(archive, progress)?;
    let mut index: Option<Index> = None;
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    for entry in tar.entries().context("not a tar archive")? {
        let mut entry = entry.context("damaged archive")?;
        let name = entry.path().context("bad member name")?.into_owned();
        ensure!(safe_name(&name), "member {} would land outside the restore directory", name.display());
        ensure!(
            entry.header().entry_type() == tar::EntryType::Regular,
            "member {} is not a file",
            name.display()
        );
        let name_str = name.to_string_lossy().into_owned();
        if name_str == MANIFEST {
            ensure!(manifest.is_none(), "the archive has two manifests");
            manifest = Some(read_metadata(&mut entry, "manifest")?);
            continue;
        }
        if index.is_none() {
            let found = if name_str == INDEX && seen.is_empty() {
                read_metadata(&mut entry, "index")?
            } else {
                index_from_manifest(archive)?
            };
            check_index(&found, crate::storage::room_for(dir)?)?;
            index = Some(found);
            if name_str == INDEX {
                continue;
            }
        }
        let announced = index.as_ref().and_then(|i| i.members.iter().find(|m| m.name == name_str));
        let Some(announced) = announced else { bail!("member {name_str} is not in the archive's index") };
        ensure!(!seen.contains_key(&name_str), "member {name_str} appears twice");
        ensure!(
            entry.header().size().ok() == Some(announced.size),
            "member {name_str} is not the size the archive's index announces"
        );
        let target = dir.join(&name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let sum = extract_member(&mut entry, &target, announced.size)
            .with_context(|| format!("damaged member {name_str}"))?;
        seen.insert(name_str, sum);
    }
    let Some(manifest) = manifest else { bail!("the archive has no manifest (truncated?)") };
    ensure!(manifest.format == FORMAT, "unknown backup format {:?}", manifest.format);
    if let Some(index) = &index {
        let listed: Vec<IndexEntry> =
            manifest.members.iter().map(|m| IndexEntry { name: m.name.clone(), size: m.size }).collect();
        ensure!(listed == index.members, "the archive's index and manifest disagree");
    }
    for m in &manifest.members {
        match seen.remove(&m.name) {
            Some((size, sha)) if size == m.size && sha == m.sha256 => {}
            Some(_) => bail!("member {} does not match its checksum", m.name),
            None => bail!("member {} is missing", m.name),
        }
    }
    ensure!(seen.is_empty(), "the archive holds members the manifest does not list");
    // Volume entries name files that restore moves into the volume store: each must be one of the
    // verified members, under volumes/, never a path of the host.
    for v in &manifest.volumes {
        ensure!(
            v.member.starts_with("volumes/")
                && safe_name(Path::new(&v.member))
                && manifest.members.iter().any(|m| m.name == v.member),
            "volume {:?} points at {:?}, which is not a volume in the archive",
            v.name,
            v.member
        );
        // Ids become file names and QEMU node names.
        ensure!(
            !v.id.is_empty() && v.id.len() <= 32 && v.id.chars().all(|c| c.is_ascii_alphanumeric()),
            "volume {:?} has an invalid id",
            v.name
        );
        ensure!(
            vmrunner::validate::validate_name(&v.name).is_ok()
                && (1..=vmrunner::validate::MAX_DISK_GB).contains(&v.size_gb),
            "volume {:?} has an invalid name or size",
            v.name
        );
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(volume_member: &str) -> anyhow::Result<Manifest> {
        Ok(Manifest {
            format: FORMAT.into(),
            vm_id: "vm".into(),
            vm_name: "vm".into(),
            spec: serde_json::from_str(r#"{"name":"vm","memory":256,"cpus":1,"disk_size":1}"#)?,
            created_at: 0,
            members: Vec::new(),
            volumes: vec![ArchivedVolume {
                id: "v1".into(),
                name: "data".into(),
                size_gb: 1,
                format: DiskFormat::Raw,
                slot: Some(1),
                member: volume_member.into(),
            }],
        })
    }

    #[test]
    fn volumes_must_name_verified_members() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::write(&data, vec![7u8; 3 << 20])?;
        let files = vec![("volumes/v1.raw".to_string(), data)];
        for (member, ok) in [
            ("volumes/v1.raw", true),
            ("../../fastvm.db", false),
            ("/etc/passwd", false),
            ("volumes/other.raw", false),
        ] {
            let archive = dir.path().join("a.tar.zst");
            write(&archive, &files, manifest(member)?, &|_, _| {})?;
            let out = tempfile::tempdir()?;
            let result = extract_verified(&archive, out.path(), &|_, _| {});
            assert_eq!(result.is_ok(), ok, "{member}: {result:?}");
        }
        Ok(())
    }

    /// A hand-made archive: `(name, claimed size, data)` members, zero-padded or cut to the claimed
    /// size as a tar header of that size demands, then `manifest` (as is, like a legacy archive).
    fn crafted(path: &Path, members: &[(&str, u64, u8)], manifest: &Manifest) -> anyhow::Result<()> {
        let encoder = zstd::Encoder::new(File::create(path)?, 1)?;
        let mut builder = tar::Builder::new(encoder);
        for (name, size, byte) in members {
            let data = std::io::repeat(*byte).take(*size);
            builder.append_data(&mut header(*size), name, data)?;
        }
        let bytes = serde_json::to_vec(manifest)?;
        builder.append_data(&mut header(bytes.len() as u64), MANIFEST, bytes.as_slice())?;
        builder.into_inner()?.finish()?;
        Ok(())
    }

    fn bytes_under(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .filter_map(Result::ok)
            .map(|e| {
                let p = e.path();
                if p.is_dir() { bytes_under(&p) } else { std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) }
            })
            .sum()
    }

    #[test]
    fn a_decompression_bomb_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut m = manifest("volumes/v1.raw")?;
        m.volumes.clear();
        m.members = vec![Member { name: "disk0.qcow2".into(), size: 4096, sha256: "0".repeat(64) }];
        // A legacy archive (no index): its manifest announces 4 KiB, the member is 512 MiB of zeros
        // that compress to almost nothing.
        let archive = dir.path().join("bomb.tar.zst");
        crafted(&archive, &[("disk0.qcow2", 512 << 20, 0)], &m)?;
        assert!(std::fs::metadata(&archive)?.len() < 1 << 20, "the bomb is small");
        let out = tempfile::tempdir()?;
        let err = extract_verified(&archive, out.path(), &|_, _| {})
            .err()
            .ok_or_else(|| anyhow::anyhow!("refused"))?;
        assert!(format!("{err:#}").contains("not the size"), "{err:#}");
        assert_eq!(bytes_under(out.path()), 0, "nothing was written");

        // An archive with an index that announces more than the disk holds is refused up front.
        let big = Index {
            format: FORMAT.into(),
            members: vec![IndexEntry { name: "disk0.qcow2".into(), size: 1 << 50 }],
        };
        assert!(check_index(&big, crate::storage::room_for(out.path())?).is_err());
        // And one whose index lies about a member is stopped at that member's header.
        let data = dir.path().join("disk");
        std::fs::write(&data, vec![1u8; 8192])?;
        let honest = dir.path().join("honest.tar.zst");
        let mut clean = manifest("volumes/v1.raw")?;
        clean.volumes.clear();
        write(&honest, &[("disk0.qcow2".into(), data)], clean, &|_, _| {})?;
        assert!(extract_verified(&honest, tempfile::tempdir()?.path(), &|_, _| {}).is_ok());
        Ok(())
    }

    #[test]
    fn only_the_files_a_backup_holds_are_written() -> anyhow::Result<()> {
        for (name, ok) in [
            ("disk0.qcow2", true),
            ("OVMF_VARS.fd", true),
            ("tpm/tpm2-00.permall", true),
            ("volumes/abc123.qcow2", true),
            ("vmrunner.json", false),
            ("tpm/.hidden", false),
            ("tpm/a/b", false),
            ("volumes/", false),
            ("disk1.qcow2", false),
        ] {
            assert_eq!(allowed_member(name), ok, "{name}");
        }
        let dir = tempfile::tempdir()?;
        let mut m = manifest("volumes/v1.raw")?;
        m.volumes.clear();
        m.members = vec![Member { name: "qemu.pid".into(), size: 3, sha256: "0".repeat(64) }];
        let archive = dir.path().join("odd.tar.zst");
        crafted(&archive, &[("qemu.pid", 3, b'1')], &m)?;
        let out = tempfile::tempdir()?;
        let err = extract_verified(&archive, out.path(), &|_, _| {})
            .err()
            .ok_or_else(|| anyhow::anyhow!("refused"))?;
        assert!(format!("{err:#}").contains("not a file a backup holds"), "{err:#}");
        assert_eq!(bytes_under(out.path()), 0);
        Ok(())
    }
}
