//! A call stream's output: encoded results waiting to be written, each with what its call
//! holds (its slot) until the result has been written in full. Written bytes are dropped from
//! the front as they go, so a stream that is never fully drained (calls keep finishing while
//! earlier results are still being written) holds only what is unwritten, not everything it
//! ever sent.

use std::collections::VecDeque;

/// Written bytes left at the front before they are dropped (when they are at least half of
/// the buffer, so each byte is copied at most once on average).
const COMPACT_AFTER_BYTES: usize = 1 << 20;

pub(super) struct Output<S> {
    buf: Vec<u8>,
    /// `buf[written..]` is still to be written.
    written: usize,
    /// Where each result not yet written in full ends in `buf`, and what it holds.
    ends: VecDeque<(usize, S)>,
}

impl<S> Output<S> {
    pub fn new() -> Self {
        Output {
            buf: Vec::new(),
            written: 0,
            ends: VecDeque::new(),
        }
    }

    /// The buffer the next result is encoded onto (from its current length).
    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Ends the result encoded since the last `push_end`, holding `slot` until it is written.
    pub fn push_end(&mut self, slot: S) {
        self.ends.push_back((self.buf.len(), slot));
    }

    /// The bytes still to be written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    /// Whether a result is not yet written in full.
    pub fn has_unwritten_results(&self) -> bool {
        !self.ends.is_empty()
    }

    /// Records `n` more bytes written; releases the slots of the results now written in full
    /// and returns whether there were any.
    pub fn advance(&mut self, n: usize) -> bool {
        self.written += n;
        let mut released = false;
        while self
            .ends
            .front()
            .is_some_and(|(end, _)| *end <= self.written)
        {
            self.ends.pop_front();
            released = true;
        }
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        } else if self.written >= COMPACT_AFTER_BYTES && self.written * 2 >= self.buf.len() {
            self.buf.drain(..self.written);
            for (end, _) in &mut self.ends {
                *end -= self.written;
            }
            self.written = 0;
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream whose output never drains (a result always finishes before the previous ones
    /// are written) holds about what is unwritten: before, it kept every byte it had sent.
    #[test]
    fn written_bytes_are_dropped_while_results_keep_coming() {
        const RESULT: usize = 100 << 10;
        let mut out: Output<usize> = Output::new();
        let mut completed = Vec::new();
        for i in 0..1_000 {
            out.buf_mut().extend(std::iter::repeat_n(i as u8, RESULT));
            out.push_end(i);
            // Everything but the last byte goes out.
            let n = out.pending().len() - 1;
            if out.advance(n) {
                completed.push(i);
            }
            assert!(out.buf.len() <= 2 * (COMPACT_AFTER_BYTES + RESULT));
            assert!(out.buf.capacity() <= 4 * (COMPACT_AFTER_BYTES + RESULT));
        }
        // Each result but the last was completed by the next one's write.
        assert_eq!(completed.len(), 999);
        assert_eq!(out.pending(), &[231u8][..]);
        assert!(out.has_unwritten_results());
        assert!(out.advance(1));
        assert!(!out.has_unwritten_results() && out.pending().is_empty());
    }
}
