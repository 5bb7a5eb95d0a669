//! Writing large files so that they are on disk when we say so, without a long stall at the end.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes written between two flushes started in the background.
const WINDOW: u64 = 64 << 20;

/// A file writer that has its data written out while more is still coming: every `WINDOW` bytes a
/// helper thread flushes what is there so far, so the closing flush waits for the last window only
/// rather than for a whole file of dirty pages (which the kernel would otherwise keep for up to
/// 30 s, and which is most of a backup's size).
pub struct WriteBehind {
    file: File,
    pending: u64,
    kick: Option<SyncSender<()>>,
    flusher: Option<JoinHandle<io::Result<()>>>,
}

impl WriteBehind {
    pub fn new(file: File) -> io::Result<Self> {
        let shared = file.try_clone()?;
        let (kick, kicked) = sync_channel::<()>(1);
        let flusher = std::thread::Builder::new().name("write-behind".into()).spawn(move || {
            for () in kicked {
                shared.sync_data()?;
            }
            Ok(())
        })?;
        Ok(WriteBehind { file, pending: 0, kick: Some(kick), flusher: Some(flusher) })
    }

    /// Waits until everything written is on disk. An error of a background flush is reported here:
    /// the helper shares this file description, so the final flush would not see it again.
    pub fn finish(mut self) -> io::Result<()> {
        self.kick.take();
        if let Some(flusher) = self.flusher.take() {
            flusher.join().map_err(|_| io::Error::other("the flushing thread panicked"))??;
        }
        self.file.sync_all()
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pending += n as u64;
        if self.pending >= WINDOW {
            self.pending = 0;
            if let Some(kick) = &self.kick {
                // Still busy with the last window: its next flush takes this one along.
                let _ = kick.try_send(());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_written_is_in_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("out");
        let mut out = WriteBehind::new(File::create(&path)?)?;
        let block = vec![7u8; 1 << 20];
        for _ in 0..(WINDOW >> 20) * 2 + 3 {
            out.write_all(&block)?;
        }
        out.finish()?;
        let data = std::fs::read(&path)?;
        assert_eq!(data.len() as u64, (WINDOW * 2) + (3 << 20));
        assert!(data.iter().all(|&b| b == 7));
        Ok(())
    }
}
