//! Backup storage benchmark, in one run on one 1 GiB disk of incompressible data (a qcow2 image,
//! as `tests/bench/backup.py` makes it): today's archive (`.tar.zst`, one thread hashing and one
//! compressing) against the chunk store (4 MiB chunks hashed and compressed on every core).
//! Measures a full backup, one with nothing changed, ten with 1% changed each (and the store's
//! size after them), and restore. Run it with `cargo run --release -p controller --example
//! chunk_bench` (needs qemu-img and qemu-io); it works in a temporary directory under /var/tmp.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use controller::backups::archive::{self, Manifest};
use controller::backups::chunked::{ChunkedDisk, restore_raw, store_image};
use controller::backups::chunks::{CHUNK_SIZE, ChunkStore};
use controller::backups::mapped::Mapped;
use vmrunner::argv::DiskFormat;

type Error = Box<dyn std::error::Error>;
const MIB: u64 = 1 << 20;

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() { du(&p) } else { e.metadata().map(|m| m.len()).unwrap_or(0) };
    }
    total
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mib: u64 = std::env::var("CHUNK_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = tempfile::Builder::new().prefix("chunkbench-").tempdir_in("/var/tmp")?;
    let disk = dir.path().join("disk0.qcow2");
    let noise = dir.path().join("noise.bin");
    std::fs::write(
        &noise,
        Command::new("head").args(["-c", &format!("{mib}M"), "/dev/urandom"]).output()?.stdout,
    )?;
    run("qemu-img", &["create", "-q", "-f", "qcow2", &disk.display().to_string(), &format!("{}M", mib * 2)])?;
    let write = format!("write -s {} 0 {mib}M", noise.display());
    run("qemu-io", &["-c", &write, &disk.display().to_string()])?;
    std::fs::remove_file(&noise)?;
    let qemu_img = Path::new("qemu-img");
    let rate = |secs: f64| mib as f64 / secs;

    // Today's archive.
    let spec =
        serde_json::from_value(serde_json::json!({"name": "b", "memory": 256, "cpus": 1, "disk_size": 2}))?;
    let manifest = Manifest {
        format: archive::FORMAT.into(),
        vm_id: "b".into(),
        vm_name: "b".into(),
        spec,
        created_at: 0,
        members: Vec::new(),
        volumes: Vec::new(),
    };
    let out = dir.path().join("archive.tar.zst");
    let t = Instant::now();
    archive::write(&out, &[("disk0.qcow2".into(), disk.clone())], manifest, &|_, _| {})?;
    let archive_secs = t.elapsed().as_secs_f64();
    let archive_size = std::fs::metadata(&out)?.len();
    let extract = dir.path().join("extract");
    std::fs::create_dir_all(&extract)?;
    let t = Instant::now();
    archive::extract_verified(&out, &extract, &|_, _| {})?;
    let archive_restore = t.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&extract)?;
    std::fs::remove_file(&out)?;

    // The chunk store.
    let chunks_dir = dir.path().join("chunks");
    let chunk_store = std::sync::Arc::new(ChunkStore::open(&chunks_dir)?);
    let store = chunk_store.writer();
    let t = Instant::now();
    let (full, _) = store_image(&store, &Mapped::open(qemu_img, &disk, "qcow2").await?, None, &|_| {})?;
    let full_secs = t.elapsed().as_secs_f64();
    let one_full = du(&chunks_dir);
    // Nothing changed: the image a backup with the dirty bitmap writes holds nothing.
    let empty = dir.path().join("changes.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &empty.display().to_string(), &format!("{}M", mib * 2)],
    )?;
    let t = Instant::now();
    let (same, stats) =
        store_image(&store, &Mapped::open(qemu_img, &empty, "qcow2").await?, Some(&full), &|_| {})?;
    let unchanged_secs = t.elapsed().as_secs_f64();
    assert_eq!(same, full);
    assert_eq!(stats.bytes_read, 0);
    // Ten backups, 1% of the data changed before each (whole chunks: what the bitmap marks).
    let mut last = full.clone();
    let changed_chunks = (mib * MIB / 100).div_ceil(CHUNK_SIZE as u64).max(1);
    let mut incremental_secs = Vec::new();
    for round in 0..10u64 {
        let changes = dir.path().join(format!("changes-{round}.qcow2"));
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", &changes.display().to_string(), &format!("{}M", mib * 2)],
        )?;
        let piece = dir.path().join("piece.bin");
        for k in 0..changed_chunks {
            let chunk = (round * 7 + k * 13) % (mib * MIB / CHUNK_SIZE as u64);
            std::fs::write(&piece, Command::new("head").args(["-c", "4M", "/dev/urandom"]).output()?.stdout)?;
            let at = chunk * CHUNK_SIZE as u64;
            let write = format!("write -s {} {at} 4M", piece.display());
            run("qemu-io", &["-c", &write, &changes.display().to_string()])?;
        }
        let t = Instant::now();
        let (next, _) =
            store_image(&store, &Mapped::open(qemu_img, &changes, "qcow2").await?, Some(&last), &|_| {})?;
        incremental_secs.push(t.elapsed().as_secs_f64());
        last = next;
        std::fs::remove_file(&changes)?;
    }
    let ten = du(&chunks_dir);
    let restored = dir.path().join("restored.raw");
    let d = ChunkedDisk {
        member: "disk0.qcow2".into(),
        format: DiskFormat::Qcow2,
        size: mib * 2 * MIB,
        chunks: full,
        bitmap: None,
    };
    let t = Instant::now();
    restore_raw(&chunk_store, &d, &restored, &|_| {})?;
    let chunk_restore = t.elapsed().as_secs_f64();

    incremental_secs.sort_by(f64::total_cmp);
    println!(
        "Backup storage benchmark: {mib} MiB of incompressible data in a {} MiB qcow2, {} cores",
        mib * 2,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("| | today's archive (.tar.zst) | chunk store |");
    println!("|---|---|---|");
    println!("| full backup | {:.0} MiB/s | {:.0} MiB/s |", rate(archive_secs), rate(full_secs));
    println!("| nothing changed | {:.1} s (a full again) | {:.3} s |", archive_secs, unchanged_secs);
    println!(
        "| 1% changed ({} chunks), median | {:.1} s (a full again) | {:.3} s |",
        changed_chunks, archive_secs, incremental_secs[5]
    );
    println!(
        "| store after 11 backups | {:.2}x one full | {:.2}x one full |",
        11.0,
        ten as f64 / one_full as f64
    );
    println!("| one full on disk | {} MiB | {} MiB |", archive_size / MIB, one_full / MIB);
    println!(
        "| restore (data out) | {:.0} MiB/s | {:.0} MiB/s |",
        rate(archive_restore),
        rate(chunk_restore)
    );
    Ok(())
}
