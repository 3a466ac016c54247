//! [`LogBuffer`]: the bounded output of one container run.
//!
//! Bytes live in a `ringbuf` ring that starts small and doubles as output arrives, up to the
//! configured bound, so a quiet container costs a few hundred bytes, not the whole bound. Beside
//! the bytes, a queue of [`Record`]s remembers for each piece of a line which stream it came from,
//! when procnode read it and whether it ended the line; that is what makes `tail`, `since` and
//! `timestamps` exact. When the bound is reached the oldest records (and their bytes) go first.
//! Record overhead is counted against the bound too, so a flood of one-byte lines stays bounded.

use std::collections::VecDeque;

use ringbuf::storage::Heap;
use ringbuf::traits::{Consumer, Observer, Producer};
use ringbuf::LocalRb;

/// Smallest ring allocated once a container writes anything.
const INITIAL_RING_BYTES: usize = 512;
/// Longest piece held in one record; a longer line is kept whole, as several partial records.
const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Bytes a record costs beside its data (counted against the bound).
const RECORD_OVERHEAD: usize = std::mem::size_of::<Record>();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Which streams a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFilter {
    #[default]
    All,
    Only(Stream),
}

impl StreamFilter {
    fn admits(self, s: Stream) -> bool {
        match self {
            StreamFilter::All => true,
            StreamFilter::Only(only) => only == s,
        }
    }
}

/// What to read: the `kubectl logs` options that apply to a buffer.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Last N lines; `None` means all.
    pub tail: Option<usize>,
    /// Only lines read at or after this time (nanoseconds since the Unix epoch).
    pub since_ns: Option<i64>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<usize>,
    /// Prefix each line with its RFC 3339 capture time.
    pub timestamps: bool,
    pub stream: StreamFilter,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    time_ns: i64,
    len: u32,
    stream: Stream,
    /// This piece ends with a newline.
    complete: bool,
}

pub struct LogBuffer {
    ring: Option<LocalRb<Heap<u8>>>,
    records: VecDeque<Record>,
    max_bytes: usize,
    /// Bytes dropped to stay within the bound, over this buffer's life.
    dropped: u64,
    /// Bytes appended over this buffer's life.
    written: u64,
}

impl LogBuffer {
    pub fn new(max_bytes: usize) -> LogBuffer {
        LogBuffer {
            ring: None,
            records: VecDeque::new(),
            max_bytes: max_bytes.max(RECORD_OVERHEAD + 1),
            dropped: 0,
            written: 0,
        }
    }

    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    pub fn written_bytes(&self) -> u64 {
        self.written
    }

    /// Bytes of memory this buffer currently holds for data and records.
    pub fn allocated_bytes(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.capacity().get())
            + self.records.capacity() * RECORD_OVERHEAD
    }

    fn stored_bytes(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.occupied_len())
    }

    fn used(&self) -> usize {
        self.stored_bytes() + self.records.len() * RECORD_OVERHEAD
    }

    /// Appends output read from `stream` at `time_ns`. Never blocks and never fails: when the
    /// bound is reached the oldest output is dropped.
    pub fn append(&mut self, stream: Stream, data: &[u8], time_ns: i64) {
        self.written += data.len() as u64;
        for piece in data.split_inclusive(|b| *b == b'\n') {
            let mut rest = piece;
            while !rest.is_empty() {
                let room = self.continuable(stream).unwrap_or(MAX_RECORD_BYTES);
                let take = rest.len().min(room);
                let (now, later) = rest.split_at(take);
                self.push_piece(stream, now, time_ns);
                rest = later;
            }
        }
    }

    /// Room left in the last record when it is an unfinished piece of the same stream.
    fn continuable(&self, stream: Stream) -> Option<usize> {
        let last = self.records.back()?;
        (last.stream == stream && !last.complete && (last.len as usize) < MAX_RECORD_BYTES)
            .then(|| MAX_RECORD_BYTES - last.len as usize)
    }

    fn push_piece(&mut self, stream: Stream, piece: &[u8], time_ns: i64) {
        let extends = self.continuable(stream).is_some();
        let extra_overhead = if extends { 0 } else { RECORD_OVERHEAD };
        // A piece that alone exceeds the bound keeps only its newest bytes.
        let budget = self.max_bytes - RECORD_OVERHEAD;
        let piece = if piece.len() > budget {
            self.dropped += (piece.len() - budget) as u64;
            &piece[piece.len() - budget..]
        } else {
            piece
        };
        while self.used() + piece.len() + extra_overhead > self.max_bytes && self.evict_oldest() {}
        // Eviction may have removed the record we meant to extend.
        let extends = extends && self.continuable(stream).is_some();
        self.reserve(piece.len());
        let ring = self.ring.as_mut().expect("reserved");
        let pushed = ring.push_slice(piece);
        debug_assert_eq!(pushed, piece.len());
        let complete = piece.last() == Some(&b'\n');
        if extends {
            let last = self.records.back_mut().expect("continuable");
            last.len += piece.len() as u32;
            last.complete = complete;
        } else {
            self.records.push_back(Record {
                time_ns,
                len: piece.len() as u32,
                stream,
                complete,
            });
        }
    }

    /// Makes the ring big enough for `extra` more bytes, doubling its capacity (never past the bound).
    fn reserve(&mut self, extra: usize) {
        let (cap, len) = match &self.ring {
            Some(r) => (r.capacity().get(), r.occupied_len()),
            None => (0, 0),
        };
        if cap - len >= extra {
            return;
        }
        let mut new_cap = cap.max(INITIAL_RING_BYTES);
        while new_cap < len + extra {
            new_cap *= 2;
        }
        let new_cap = new_cap.min(self.max_bytes).max(len + extra);
        let mut grown = LocalRb::<Heap<u8>>::new(new_cap);
        if let Some(old) = &self.ring {
            let (a, b) = old.as_slices();
            grown.push_slice(a);
            grown.push_slice(b);
        }
        self.ring = Some(grown);
    }

    fn evict_oldest(&mut self) -> bool {
        let Some(rec) = self.records.pop_front() else {
            return false;
        };
        if let Some(ring) = self.ring.as_mut() {
            ring.skip(rec.len as usize);
        }
        self.dropped += rec.len as u64;
        true
    }

    /// Reads what `query` asks for, in arrival order.
    pub fn read(&self, query: &LogQuery) -> Vec<u8> {
        let Some(ring) = &self.ring else {
            return Vec::new();
        };
        let (a, b) = ring.as_slices();
        let byte_at = |start: usize, len: usize, out: &mut Vec<u8>| {
            if start < a.len() {
                let end = (start + len).min(a.len());
                out.extend_from_slice(&a[start..end]);
                if start + len > a.len() {
                    out.extend_from_slice(&b[..start + len - a.len()]);
                }
            } else {
                out.extend_from_slice(&b[start - a.len()..start - a.len() + len]);
            }
        };

        // Record offsets, and which records the stream/since filters keep.
        let mut offsets = Vec::with_capacity(self.records.len());
        let mut off = 0usize;
        for r in &self.records {
            offsets.push(off);
            off += r.len as usize;
        }
        let keep = |r: &Record| {
            query.stream.admits(r.stream) && query.since_ns.is_none_or(|since| r.time_ns >= since)
        };

        // `tail` counts lines among the kept records, from the end; a trailing unfinished
        // piece counts as a line.
        let mut first = 0usize;
        if let Some(tail) = query.tail {
            let mut lines = 0usize;
            first = self.records.len();
            for (i, r) in self.records.iter().enumerate().rev() {
                if !keep(r) {
                    continue;
                }
                if r.complete || i + 1 == self.records.len() {
                    if lines == tail {
                        break;
                    }
                    lines += 1;
                }
                first = i;
            }
            if tail == 0 {
                first = self.records.len();
            }
        }

        let mut out = Vec::new();
        let mut at_line_start = true;
        let mut previous_stream = None;
        for (i, r) in self.records.iter().enumerate().skip(first) {
            if !keep(r) {
                continue;
            }
            if query.timestamps && (at_line_start || previous_stream != Some(r.stream)) {
                out.extend_from_slice(format_rfc3339_nanos(r.time_ns).as_bytes());
                out.push(b' ');
            }
            byte_at(offsets[i], r.len as usize, &mut out);
            at_line_start = r.complete;
            previous_stream = Some(r.stream);
            if let Some(limit) = query.limit_bytes {
                if out.len() >= limit {
                    out.truncate(limit);
                    break;
                }
            }
        }
        out
    }
}

/// RFC 3339 with nanoseconds, the form `kubectl logs --timestamps` prints.
pub fn format_rfc3339_nanos(time_ns: i64) -> String {
    let ts = k8s_openapi::jiff::Timestamp::from_nanosecond(time_ns as i128)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S.%9fZ", ts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &LogBuffer) -> String {
        String::from_utf8(buf.read(&LogQuery::default())).unwrap()
    }

    fn tail(buf: &LogBuffer, n: usize) -> String {
        String::from_utf8(buf.read(&LogQuery {
            tail: Some(n),
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn keeps_interleaved_streams_in_arrival_order() {
        let mut b = LogBuffer::new(1 << 20);
        b.append(Stream::Stdout, b"one\n", 1);
        b.append(Stream::Stderr, b"two\n", 2);
        b.append(Stream::Stdout, b"three\n", 3);
        assert_eq!(all(&b), "one\ntwo\nthree\n");
        assert_eq!(tail(&b, 2), "two\nthree\n");
        assert_eq!(tail(&b, 0), "");
        assert_eq!(tail(&b, 10), "one\ntwo\nthree\n");
    }

    #[test]
    fn partial_last_line_counts_as_a_line_and_is_returned_as_is() {
        let mut b = LogBuffer::new(1 << 20);
        b.append(Stream::Stdout, b"a\nb\npart", 1);
        assert_eq!(tail(&b, 1), "part");
        assert_eq!(tail(&b, 2), "b\npart");
        b.append(Stream::Stdout, b"ial\n", 2);
        assert_eq!(tail(&b, 1), "partial\n");
    }

    #[test]
    fn quiet_buffers_allocate_nothing_and_grow_on_demand() {
        let mut b = LogBuffer::new(1 << 20);
        assert_eq!(b.allocated_bytes(), 0);
        b.append(Stream::Stdout, b"hello\n", 1);
        assert!(b.allocated_bytes() < 2048, "{}", b.allocated_bytes());
    }

    #[test]
    fn evicts_oldest_lines_and_stays_within_bound() {
        let bound = 4096;
        let mut b = LogBuffer::new(bound);
        for i in 0..10_000 {
            b.append(Stream::Stdout, format!("line {i}\n").as_bytes(), i);
            assert!(b.used() <= bound);
        }
        assert_eq!(tail(&b, 1), "line 9999\n");
        assert!(b.dropped_bytes() > 0);
        let text = all(&b);
        assert!(text.ends_with("line 9998\nline 9999\n"));
        assert!(
            text.starts_with("line "),
            "eviction is whole records: {:?}",
            &text[..20]
        );
    }

    #[test]
    fn long_lines_are_split_into_records_without_losing_bytes() {
        let mut b = LogBuffer::new(1 << 20);
        let long: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        b.append(Stream::Stdout, &long, 1);
        b.append(Stream::Stdout, b"\nnext\n", 2);
        let mut expect = long.clone();
        expect.extend_from_slice(b"\nnext\n");
        assert_eq!(b.read(&LogQuery::default()), expect);
        let mut last_two = long.clone();
        last_two.extend_from_slice(b"\nnext\n");
        assert_eq!(
            b.read(&LogQuery {
                tail: Some(2),
                ..Default::default()
            }),
            last_two,
            "the long line counts as one line"
        );
    }

    #[test]
    fn binary_output_passes_through() {
        let mut b = LogBuffer::new(1 << 20);
        let data: Vec<u8> = (0..=255u8).collect();
        b.append(Stream::Stdout, &data, 1);
        assert_eq!(b.read(&LogQuery::default()), data);
    }

    #[test]
    fn filters_by_stream_time_and_limit_and_adds_timestamps() {
        let mut b = LogBuffer::new(1 << 20);
        b.append(Stream::Stdout, b"out1\n", 1_000_000_000);
        b.append(Stream::Stderr, b"err1\n", 2_000_000_000);
        b.append(Stream::Stdout, b"out2\n", 3_000_000_000);
        let q = |f: fn(&mut LogQuery)| {
            let mut q = LogQuery::default();
            f(&mut q);
            String::from_utf8(b.read(&q)).unwrap()
        };
        assert_eq!(
            q(|q| q.stream = StreamFilter::Only(Stream::Stdout)),
            "out1\nout2\n"
        );
        assert_eq!(
            q(|q| q.stream = StreamFilter::Only(Stream::Stderr)),
            "err1\n"
        );
        assert_eq!(q(|q| q.since_ns = Some(2_000_000_000)), "err1\nout2\n");
        assert_eq!(q(|q| q.limit_bytes = Some(7)), "out1\ner");
        assert_eq!(
            q(|q| {
                q.timestamps = true;
                q.tail = Some(1)
            }),
            "1970-01-01T00:00:03.000000000Z out2\n"
        );
    }
}
