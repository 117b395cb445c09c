//! Knowing that a dump tool finished its output: the last bytes of what it
//! wrote, where `mariadb-dump` ends a complete dump with a comment.

use std::io::Read;

/// The comment mariadb-dump ends a complete dump with.
pub(crate) const COMPLETED: &[u8] = b"-- Dump completed";

/// Passes a reader through, keeping its last bytes.
pub(crate) struct TailReader<R> {
    inner: R,
    /// The last bytes read (at most 256).
    pub(crate) last: Vec<u8>,
}

/// Bytes [`TailReader`] keeps.
const TAIL: usize = 256;

impl<R: Read> TailReader<R> {
    /// Passes `inner` through.
    pub(crate) fn new(inner: R) -> Self {
        TailReader { inner, last: Vec::with_capacity(2 * TAIL) }
    }
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let got = self.inner.read(buf)?;
        let new = &buf[..got];
        if new.len() >= TAIL {
            self.last.clear();
            self.last.extend_from_slice(&new[new.len() - TAIL..]);
        } else {
            self.last.extend_from_slice(new);
            let excess = self.last.len().saturating_sub(TAIL);
            self.last.drain(..excess);
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut tail = TailReader::new(&data[..]);
        let mut sink = Vec::new();
        let mut buf = [0u8; 100];
        loop {
            let n = tail.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&buf[..n]);
        }
        assert_eq!(tail.last, data[data.len() - TAIL..]);
    }
}
