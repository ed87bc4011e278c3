//! A gzip writer that does not try to compress what cannot be compressed.
//!
//! Input goes in 1 MiB chunks. A chunk whose bytes are spread so evenly that deflate cannot
//! shrink it (order-0 entropy above 7.9 bits per byte: random data, or data compressed already)
//! is written as stored blocks, at the speed of a copy; other chunks go through zlib-rs at the
//! default level. Where the two meet, the compressor is sync-flushed and a fresh one starts
//! after the stored blocks, so the result is one ordinary deflate stream (as pigz joins its
//! pieces). The output depends only on the input, so layers stay reproducible; input with no
//! such chunk gives exactly the bytes flate2's `GzEncoder` would (header included).

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

const CHUNK: usize = 1 << 20;
/// Bits per byte above which a chunk is stored, not compressed.
const STORE_ABOVE: f64 = 7.9;

/// Gzip-compresses into `W`.
pub struct GzipWriter<W: Write> {
    inner: W,
    z: Option<Compress>,
    crc: Crc,
    pending: Vec<u8>,
    out: Vec<u8>,
    started: bool,
}

/// Order-0 entropy of `data`, bits per byte, estimated from every fourth byte (four
/// tables, so the counting loop does not wait on itself).
fn entropy(data: &[u8]) -> f64 {
    let mut t = [[0u32; 256]; 4];
    let mut words = data.chunks_exact(16);
    for w in &mut words {
        t[0][usize::from(w[0])] += 1;
        t[1][usize::from(w[4])] += 1;
        t[2][usize::from(w[8])] += 1;
        t[3][usize::from(w[12])] += 1;
    }
    for (i, &b) in words.remainder().iter().enumerate() {
        t[i % 4][usize::from(b)] += 1;
    }
    let counts: Vec<u64> = (0..256)
        .map(|i| t.iter().map(|c| u64::from(c[i])).sum())
        .collect();
    let n = counts.iter().sum::<u64>().max(1) as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

impl<W: Write> GzipWriter<W> {
    /// A writer with gzip's header (mtime 0, unknown OS) still to come.
    pub fn new(inner: W) -> GzipWriter<W> {
        GzipWriter {
            inner,
            z: None,
            crc: Crc::new(),
            pending: Vec::with_capacity(CHUNK),
            out: Vec::with_capacity(CHUNK + (CHUNK >> 4)),
            started: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.started {
            self.started = true;
            // ID1 ID2 CM FLG MTIME(4) XFL OS, as flate2's GzBuilder writes it.
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        }
        Ok(())
    }

    /// Runs the compressor over `input` with `flush`, writing what it makes.
    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) -> io::Result<()> {
        let Some(z) = self.z.as_mut() else {
            return Ok(());
        };
        loop {
            self.out.clear();
            let before = z.total_in();
            let status = z
                .compress_vec(input, &mut self.out, flush)
                .map_err(io::Error::other)?;
            let used = usize::try_from(z.total_in() - before).unwrap_or(input.len());
            input = &input[used..];
            self.inner.write_all(&self.out)?;
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                // Done once all input is in and the output buffer was not filled up.
                _ => input.is_empty() && self.out.len() < self.out.capacity(),
            };
            if done {
                return Ok(());
            }
        }
    }

    fn chunk(&mut self) -> io::Result<()> {
        self.header()?;
        let data = std::mem::take(&mut self.pending);
        self.crc.update(&data);
        if entropy(&data) > STORE_ABOVE {
            // End the compressed run on a byte boundary, then store the chunk.
            if self.z.is_some() {
                self.deflate(&[], FlushCompress::Sync)?;
                self.z = None;
            }
            for block in data.chunks(0xffff) {
                let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
                let mut head = [0u8; 5];
                head[1..3].copy_from_slice(&len.to_le_bytes());
                head[3..5].copy_from_slice(&(!len).to_le_bytes());
                self.inner.write_all(&head)?;
                self.inner.write_all(block)?;
            }
        } else {
            if self.z.is_none() {
                self.z = Some(Compress::new(Compression::default(), false));
            }
            self.deflate(&data, FlushCompress::None)?;
        }
        self.pending = data;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is left and gzip's trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.pending.is_empty() || !self.started {
            self.chunk()?;
        }
        if self.z.is_some() {
            self.deflate(&[], FlushCompress::Finish)?;
        } else {
            // A final, empty stored block.
            self.inner.write_all(&[1, 0, 0, 0xff, 0xff])?;
        }
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.pending.len();
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == CHUNK {
            self.chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Read;

    use super::*;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn random_is_stored_text_is_compressed_and_both_round_trip() {
        let mut random = vec![0u8; 3 * CHUNK + 12345];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in &mut random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let text: Vec<u8> = b"all work and no play makes jack a dull boy\n"
            .iter()
            .copied()
            .cycle()
            .take(2 * CHUNK + 77)
            .collect();
        // Text, then random, then text: compressor, stored blocks, a fresh compressor.
        let mut mixed = text.clone();
        mixed.extend_from_slice(&random);
        mixed.extend_from_slice(&text);
        let mut w = GzipWriter::new(Vec::new());
        w.write_all(&mixed).unwrap();
        let gz = w.finish().unwrap();
        assert_eq!(gunzip(&gz), mixed);
        assert!(
            gz.len() < random.len() + random.len() / 100 + 50_000,
            "{}",
            gz.len()
        );
        // Compressible input alone: the same bytes as flate2's GzEncoder.
        let mut w = GzipWriter::new(Vec::new());
        w.write_all(&text).unwrap();
        let ours = w.finish().unwrap();
        let mut theirs = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::default());
        theirs.write_all(&text).unwrap();
        assert_eq!(ours, theirs.finish().unwrap());
        // Empty input is a valid, empty gzip.
        let empty = GzipWriter::new(Vec::new()).finish().unwrap();
        assert_eq!(gunzip(&empty), b"");
        let mut w = GzipWriter::new(Vec::new());
        w.write_all(&random[..1000]).unwrap();
        assert_eq!(gunzip(&w.finish().unwrap()), &random[..1000]);
    }
}
