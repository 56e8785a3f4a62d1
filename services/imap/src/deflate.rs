//! COMPRESS=DEFLATE (RFC 4978), free of sockets: the two raw DEFLATE streams (RFC 1951, no
//! zlib header or trailer) of one connection.
//!
//! - Output: every batch of responses is compressed and ended with a *sync flush* (an empty
//!   stored block, RFC 4978 §4), so the client can decode everything sent so far and never
//!   waits for bytes the server holds back.
//! - Input: compressed bytes are kept here and inflated on demand, at most one read-sized
//!   chunk at a time, only when the framing layer asks for more. A decompression bomb (a few
//!   KiB expanding to gigabytes) therefore reaches the fragmentizer's line and literal limits
//!   chunk by chunk, exactly like uncompressed input, and never sits in memory expanded.
//!
//! The codec is flate2 over miniz_oxide (pure Rust). Its compressor state is about 300 KiB
//! per compressed connection, the decompressor about 40 KiB.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The input side could not be inflated: the client sent something that is not a raw
/// DEFLATE stream, or ended its stream (a final block) while the connection goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("invalid DEFLATE data")]
    Corrupt,
    #[error("the client ended its DEFLATE stream")]
    Ended,
}

/// The compression state of one connection after `COMPRESS DEFLATE`.
pub struct Deflate {
    out: Compress,
    inp: Decompress,
    /// Compressed input read from the socket and not inflated yet. Bounded: the driver reads
    /// more only when [`Deflate::inflate`] produced nothing from what is here.
    pending: Vec<u8>,
    ended: bool,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Default for Deflate {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflate {
    pub fn new() -> Self {
        Self {
            // Level 6 is zlib's default and Dovecot's; raw DEFLATE: no zlib header.
            out: Compress::new(Compression::new(6), false),
            inp: Decompress::new(false),
            pending: Vec::new(),
            ended: false,
        }
    }

    /// Compresses one batch of output and sync-flushes it.
    pub fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = self.out.total_in();
            // Compressing into a Vec with spare room cannot fail (errors are for
            // misuse of the stream, which this type never does).
            let _ = self
                .out
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync);
            consumed += (self.out.total_in() - before) as usize;
            // The flush is complete once all input is taken and the output was not filled.
            if consumed >= data.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    /// Takes compressed bytes read from the socket.
    pub fn feed(&mut self, compressed: &[u8]) {
        self.pending.extend_from_slice(compressed);
    }

    /// Whether compressed input is waiting to be inflated.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes of compressed input held (for limits and tests).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Inflates pending input into `buf` (at most its length) and returns how many bytes
    /// were produced; 0 means more compressed input is needed.
    pub fn inflate(&mut self, buf: &mut [u8]) -> Result<usize, InflateError> {
        if self.ended {
            return Err(InflateError::Ended);
        }
        // Called with no pending input too: the inflater may hold decoded bytes that did not
        // fit into the previous call's buffer.
        let (in0, out0) = (self.inp.total_in(), self.inp.total_out());
        let status = self
            .inp
            .decompress(&self.pending, buf, FlushDecompress::None)
            .map_err(|_| InflateError::Corrupt)?;
        let used = (self.inp.total_in() - in0) as usize;
        let produced = (self.inp.total_out() - out0) as usize;
        self.pending.drain(..used);
        if status == Status::StreamEnd {
            // RFC 4978 has no way to end compression; a final block means the client is
            // done. What it produced is still delivered; the next call reports the end.
            self.ended = true;
        }
        Ok(produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(9), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        c.compress_vec(data, &mut out, FlushCompress::Sync)
            .expect("compress");
        out
    }

    fn raw_inflate(d: &mut Decompress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(data, &mut out, FlushDecompress::Sync)
            .expect("inflate");
        out
    }

    #[test]
    fn output_is_raw_deflate_and_decodable_after_each_flush() {
        let mut z = Deflate::new();
        let mut client = Decompress::new(false);
        let a = z.compress(b"* OK hello\r\n");
        // Raw DEFLATE: no zlib header (0x78 ..) and a sync flush's empty stored block.
        assert_ne!(a[0], 0x78);
        assert!(a.ends_with(&[0, 0, 0xff, 0xff]), "{a:?}");
        assert_eq!(raw_inflate(&mut client, &a), b"* OK hello\r\n");
        // The second batch continues the same stream (shared window).
        let big = "x".repeat(100_000);
        let b = z.compress(big.as_bytes());
        assert!(b.len() < 2000);
        assert!(raw_inflate(&mut client, &b) == big.as_bytes());
        assert!(z.compress(b"").ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn input_is_inflated_a_chunk_at_a_time() {
        let mut z = Deflate::new();
        // 64 MiB of zeros compresses to about 64 KiB: a small bomb.
        let bomb = raw_deflate(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 100_000);
        z.feed(&bomb);
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        let mut steps = 0usize;
        loop {
            let n = z.inflate(&mut buf).expect("valid");
            if n == 0 {
                break;
            }
            assert!(n <= buf.len());
            // The pending (compressed) input never grows while inflating.
            assert!(z.pending.len() <= bomb.len());
            total += n;
            steps += 1;
        }
        assert_eq!(total, 64 << 20);
        assert!(steps >= (64 << 20) / buf.len());
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut z = Deflate::new();
        let data = raw_deflate(b"a1 NOOP\r\n");
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        for byte in &data {
            z.feed(&[*byte]);
            let n = z.inflate(&mut buf).expect("valid");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"a1 NOOP\r\n");
        assert!(!z.has_pending());
    }

    #[test]
    fn garbage_and_a_zlib_header_are_refused() {
        let mut z = Deflate::new();
        z.feed(&[0xff; 32]);
        assert_eq!(z.inflate(&mut [0u8; 64]), Err(InflateError::Corrupt));
        // zlib framing (RFC 1950) is not raw DEFLATE: 0x78 0x9c starts a block type 3.
        let mut z = Deflate::new();
        let mut c = Compress::new(Compression::default(), true);
        let mut out = Vec::with_capacity(256);
        c.compress_vec(b"a NOOP\r\n", &mut out, FlushCompress::Sync)
            .expect("zlib");
        z.feed(&out);
        assert_eq!(z.inflate(&mut [0u8; 64]), Err(InflateError::Corrupt));
    }

    #[test]
    fn a_final_block_ends_the_input() {
        let mut z = Deflate::new();
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(256);
        c.compress_vec(b"a NOOP\r\n", &mut out, FlushCompress::Finish)
            .expect("finish");
        z.feed(&out);
        let mut buf = [0u8; 64];
        assert_eq!(z.inflate(&mut buf), Ok(8));
        assert_eq!(z.inflate(&mut buf), Err(InflateError::Ended));
    }
}
