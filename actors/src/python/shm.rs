//! Shared-memory segments: the files under `/dev/shm` that pixels cross by.
//!
//! Each worker has two: the *input* segment, which the engine grows and writes (one
//! `pwrite` per image, no encoding) and the worker maps read-only; and the *output*
//! segment, which the worker grows and writes and the engine reads back (one `pread`
//! per image, into the new message's buffer). Both are reused frame after frame and
//! never shrink, so a mapping never points past the end of its file. Once the worker
//! has opened both (its `setup` reply), the engine unlinks them: both sides keep their
//! descriptors, and nothing is left under `/dev/shm` even when the engine is killed.
//! A segment still linked is removed when it is dropped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every buffer starts on a 64-byte boundary (aligned numpy views); the Python side agrees.
pub(super) const ALIGN: u64 = 64;

/// `n` rounded up to [`ALIGN`].
pub(super) fn aligned(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// One segment file, removed on drop.
#[derive(Debug)]
pub(super) struct Segment {
    file: File,
    path: PathBuf,
    size: u64,
    /// Whether the file still has its name under `/dev/shm`.
    linked: bool,
}

impl Segment {
    /// A new empty segment for replica `replica` of `stage`; `which` is `in` or `out`.
    pub(super) fn create(stage: &str, replica: usize, which: &str) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let safe: String = stage
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("dataflow-{}-{safe}-{replica}-{n}-{which}", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(Segment {
            file,
            path,
            size: 0,
            linked: true,
        })
    }

    /// The file's path (handed to the worker).
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file's name; the open descriptors keep the memory until both sides close.
    pub(super) fn unlink(&mut self) {
        if self.linked {
            let _ = std::fs::remove_file(&self.path);
            self.linked = false;
        }
    }

    /// Current size in bytes.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Grows the file to hold at least `need` bytes (doubling, from 64 KiB).
    pub(super) fn reserve(&mut self, need: u64) -> io::Result<()> {
        if need > self.size {
            let new = need.max(self.size * 2).max(1 << 16);
            self.file.set_len(new)?;
            self.size = new;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` (inside the reserved size).
    pub(super) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Reads `len` bytes at `offset`, checked against the file's current length (the
    /// worker grows the output segment itself).
    pub(super) fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let have = self.file.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > have) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes at offset {offset} lie past the segment's end ({have} bytes)"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.unlink();
    }
}
