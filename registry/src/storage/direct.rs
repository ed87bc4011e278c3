//! Writing an upload's data. Small uploads go through the page cache; once an upload has
//! brought more than [`DIRECT_AFTER`] bytes in one request, whole aligned blocks are written
//! with `O_DIRECT` from an aligned buffer, around the page cache: on the disks this runs on,
//! buffered writeback runs at a fraction of the device's speed, and a multi-GiB push would wait
//! for it at the commit's fsync. Unaligned heads and tails stay buffered; a filesystem without
//! `O_DIRECT` (tmpfs) keeps everything buffered, and so does a mirror's fetch, whose clients
//! read the blob next (from the cache). The commit's fsync makes either durable.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::StorageError;

/// Alignment of `O_DIRECT` offsets, lengths and memory.
const ALIGN: usize = 4096;
/// Size of the aligned buffer: one direct write each time it fills.
const BUF: usize = 4 << 20;
/// Bytes an upload request brings before it switches to direct writes.
const DIRECT_AFTER: u64 = 4 << 20;
/// Write-behind granularity of buffered writes: dirty pages are handed to the disk every this
/// many bytes, so the fsync at commit has little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// A heap buffer aligned for `O_DIRECT`.
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is owned memory, used by one thread at a time through `&mut`.
unsafe impl Send for Aligned {}

impl Aligned {
    fn layout() -> Layout {
        // BUF and ALIGN are non-zero and ALIGN is a power of two.
        Layout::from_size_align(BUF, ALIGN).unwrap_or_else(|_| Layout::new::<u8>())
    }

    fn new() -> Option<Aligned> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(Aligned::layout()) };
        Some(Aligned {
            ptr: std::ptr::NonNull::new(ptr)?,
            len: 0,
        })
    }

    fn filled(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written by `push`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Copies as much of `data` as fits; how much that was.
    fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(BUF - self.len);
        // SAFETY: `len + n <= BUF` bytes are allocated, and `data` does not overlap them.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(self.len), n);
        }
        self.len += n;
        n
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Aligned::layout()) };
    }
}

/// Appends one request's bytes to an upload's file.
pub(super) struct UploadWriter {
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT`, once this request went past `DIRECT_AFTER`;
    /// `None` before, or when the filesystem has no `O_DIRECT`.
    direct: Option<File>,
    /// No direct writes: not wanted, or refused by the filesystem.
    direct_failed: bool,
    buf: Option<Aligned>,
    /// Bytes in the file (the buffer's bytes come after them).
    len: u64,
    received: u64,
    flushed: u64,
}

impl UploadWriter {
    /// The writer of the upload at `path`; `direct`: large requests may go around the page
    /// cache.
    pub(super) fn open(path: &Path, direct: bool) -> Result<UploadWriter, std::io::Error> {
        let file = OpenOptions::new().write(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(UploadWriter {
            path: path.to_owned(),
            file,
            direct: None,
            direct_failed: !direct,
            buf: None,
            len,
            received: 0,
            flushed: len,
        })
    }

    fn io(&self, e: std::io::Error) -> StorageError {
        StorageError::io("writing", &self.path)(e)
    }

    /// Writes `data` after what is there.
    pub(super) fn write(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        self.received += data.len() as u64;
        if self.buf.is_none() && !self.direct_failed && self.received > DIRECT_AFTER {
            self.start_direct();
        }
        if self.buf.is_none() {
            return self.write_buffered(data);
        }
        // Up to the next aligned offset, buffered; then whole buffers, direct.
        let misaligned = (self.len % ALIGN as u64) as usize;
        if self.buf.as_ref().is_some_and(|b| b.len == 0) && misaligned != 0 {
            let n = data.len().min(ALIGN - misaligned);
            self.write_buffered(&data[..n])?;
            data = &data[n..];
        }
        while !data.is_empty() {
            let Some(buf) = self.buf.as_mut() else {
                return self.write_buffered(data);
            };
            let n = buf.push(data);
            data = &data[n..];
            if buf.len == BUF {
                self.flush_direct()?;
            }
        }
        Ok(())
    }

    fn start_direct(&mut self) {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path);
        match (direct, Aligned::new()) {
            (Ok(f), Some(buf)) => {
                self.direct = Some(f);
                self.buf = Some(buf);
            }
            _ => self.direct_failed = true,
        }
    }

    /// Writes the buffer's whole blocks directly (all of it when it is full) and keeps the
    /// rest; a filesystem that refuses gets them buffered, and no more direct writes.
    fn flush_direct(&mut self) -> Result<(), StorageError> {
        let (Some(buf), Some(direct)) = (self.buf.as_mut(), self.direct.as_ref()) else {
            return Ok(());
        };
        let whole = buf.len / ALIGN * ALIGN;
        if whole == 0 {
            return Ok(());
        }
        match direct.write_all_at(&buf.filled()[..whole], self.len) {
            Ok(()) => {
                self.len += whole as u64;
                self.flushed = self.len;
                let rest = buf.len - whole;
                if rest > 0 {
                    // SAFETY: both ranges lie in the allocation; `copy` allows overlap.
                    unsafe {
                        std::ptr::copy(buf.ptr.as_ptr().add(whole), buf.ptr.as_ptr(), rest);
                    }
                }
                buf.len = rest;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let pending = buf.filled().to_vec();
                self.buf = None;
                self.direct = None;
                self.direct_failed = true;
                self.write_buffered(&pending)
            }
            Err(e) => Err(self.io(e)),
        }
    }

    fn write_buffered(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all_at(data, self.len)
            .map_err(|e| self.io(e))?;
        self.len += data.len() as u64;
        if self.len - self.flushed >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.flushed, self.len - self.flushed);
            self.flushed = self.len;
        }
        Ok(())
    }

    /// Writes what the buffer still holds; the file's length.
    pub(super) fn finish(mut self) -> Result<u64, StorageError> {
        self.flush_direct()?;
        if let Some(buf) = self.buf.take()
            && buf.len > 0
        {
            self.write_buffered(buf.filled())?;
        }
        Ok(self.len)
    }
}

/// Asks the kernel to start writing `len` bytes at `from` to disk.
pub(super) fn start_writeback(file: &File, from: u64, len: u64) {
    // SAFETY: the fd is valid for the call; sync_file_range only schedules IO and touches no
    // memory of ours. Failure only leaves more for the final fsync.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes and alignment of the pieces, the file ends up holding them in order.
    #[test]
    fn pieces_land_in_order_around_alignment() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("upload");
        std::fs::write(&path, b"abc").unwrap();
        let mut expect = b"abc".to_vec();
        let mut w = UploadWriter::open(&path, true).unwrap();
        let mut n = 0u8;
        for size in [1, 4095, 7, 3 << 20, 5 << 20, 100, BUF, 12345] {
            let piece: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_add(n)).collect();
            n = n.wrapping_add(1);
            w.write(&piece).unwrap();
            expect.extend_from_slice(&piece);
        }
        assert_eq!(w.finish().unwrap(), expect.len() as u64);
        assert!(std::fs::read(&path).unwrap() == expect);
        // A second request appends after an unaligned end.
        let mut w = UploadWriter::open(&path, true).unwrap();
        let more = vec![7u8; 9 << 20];
        w.write(&more).unwrap();
        w.finish().unwrap();
        expect.extend_from_slice(&more);
        assert!(std::fs::read(&path).unwrap() == expect);
    }
}
