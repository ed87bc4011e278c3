//! Transparent decompression of archives and layers: plain, gzip or zstd, told by magic bytes.

use std::io::{BufRead, Read};

use crate::media_type::Compression;

/// A reader yielding decompressed bytes, and what the input was compressed with.
pub struct Decompressed {
    /// The decompressed stream.
    pub reader: Box<dyn Read + Send>,
    /// The compression found.
    pub compression: Compression,
}

/// Wraps `input` in the decoder its first bytes call for.
pub fn decompress<R: BufRead + Send + 'static>(mut input: R) -> std::io::Result<Decompressed> {
    let head = input.fill_buf()?;
    let compression = Compression::sniff(head);
    let reader: Box<dyn Read + Send> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input)?),
        Compression::None => Box::new(input),
    };
    Ok(Decompressed {
        reader,
        compression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_all_three() {
        let data = b"hello tar world".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (input, want) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
        ] {
            let mut d = decompress(std::io::Cursor::new(input)).unwrap();
            assert_eq!(d.compression, want);
            let mut out = Vec::new();
            d.reader.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}
