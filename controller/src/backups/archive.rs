//! The backup archive: a zstd-compressed tar of the VM's files with `manifest.json` last, holding
//! the VM's configuration and the size and SHA-256 of every other member. Reading verifies all of it
//! before anything is used.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vmrunner::VmSpec;

pub const MANIFEST: &str = "manifest.json";
/// Large sequential reads and writes: disk images are gigabytes.
const IO_BUFFER: usize = 1 << 20;
pub const FORMAT: &str = "fastvm-backup/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub vm_id: String,
    pub vm_name: String,
    pub spec: VmSpec,
    pub created_at: i64,
    pub members: Vec<Member>,
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes the archive to `out` from `(member name, file)` pairs; returns the manifest written.
pub fn write(out: &Path, files: &[(String, PathBuf)], mut manifest: Manifest) -> anyhow::Result<Manifest> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    // Level 1 on every core: disk images are large and often barely compressible, so speed wins.
    let mut encoder = zstd::Encoder::new(std::io::BufWriter::with_capacity(IO_BUFFER, file), 1)?;
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    if workers > 1 {
        encoder.multithread(workers)?;
    }
    let mut builder = tar::Builder::new(encoder);
    for (name, path) in files {
        let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let size = f.metadata()?.len();
        let mut reader = Hashing {
            inner: std::io::BufReader::with_capacity(IO_BUFFER, f),
            hasher: Sha256::new(),
            count: 0,
        };
        builder.append_data(&mut header(size), name, &mut reader)?;
        ensure!(reader.count == size, "{} changed size while it was archived", path.display());
        manifest.members.push(Member {
            name: name.clone(),
            size,
            sha256: hex::encode(reader.hasher.finalize()),
        });
    }
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    builder.append_data(&mut header(bytes.len() as u64), MANIFEST, bytes.as_slice())?;
    let encoder = builder.into_inner()?;
    let file = encoder.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(manifest)
}

/// A member name that stays inside the extraction directory.
fn safe_name(name: &Path) -> bool {
    !name.as_os_str().is_empty() && name.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Extracts the archive into `dir` (which must be empty) and checks every member against the
/// manifest. Any mismatch, missing or extra member, or damage is an error, and `dir` then holds
/// nothing worth keeping.
pub fn extract_verified(archive: &Path, dir: &Path) -> anyhow::Result<Manifest> {
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let decoder = zstd::Decoder::new(std::io::BufReader::with_capacity(IO_BUFFER, file))
        .context("not a zstd stream")?;
    let mut tar = tar::Archive::new(decoder);
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
            let mut text = Vec::new();
            entry.read_to_end(&mut text).context("reading the manifest")?;
            manifest = Some(serde_json::from_slice(&text).context("the manifest is not valid")?);
            continue;
        }
        let target = dir.join(&name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::io::BufWriter::with_capacity(IO_BUFFER, File::create(&target)?);
        let mut reader = Hashing { inner: &mut entry, hasher: Sha256::new(), count: 0 };
        std::io::copy(&mut reader, &mut out).with_context(|| format!("damaged member {name_str}"))?;
        out.flush()?;
        seen.insert(name_str, (reader.count, hex::encode(reader.hasher.finalize())));
    }
    let Some(manifest) = manifest else { bail!("the archive has no manifest (truncated?)") };
    ensure!(manifest.format == FORMAT, "unknown backup format {:?}", manifest.format);
    for m in &manifest.members {
        match seen.remove(&m.name) {
            Some((size, sha)) if size == m.size && sha == m.sha256 => {}
            Some(_) => bail!("member {} does not match its checksum", m.name),
            None => bail!("member {} is missing", m.name),
        }
    }
    ensure!(seen.is_empty(), "the archive holds members the manifest does not list");
    Ok(manifest)
}
