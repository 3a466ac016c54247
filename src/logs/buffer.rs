//! [`LogBuffer`]: the bounded output of one container run.
//!
//! Bytes live in a `ringbuf` ring that starts small and doubles as output arrives, up to the
//! configured bound, so a quiet container costs nothing until it writes, not the whole bound.
//! Beside the bytes, a queue of [`Record`]s says, for each piece procnode read, which stream it
//! came from, when it was read and whether it ends a line. A read of many lines is one record
//! (its complete lines) plus at most one for its unfinished last line, so capture costs a few
//! comparisons per read, not per line; `tail` finds line starts by scanning the bytes. Every
//! line's capture time is the time of the read that brought its first byte. When the bound is
//! reached the oldest records (and their bytes) go first; record overhead counts against the
//! bound too, so a flood of one-byte writes stays bounded.

use std::collections::VecDeque;

use ringbuf::storage::Heap;
use ringbuf::traits::{Consumer, Observer, Producer};
use ringbuf::LocalRb;

/// Smallest ring allocated once a container writes anything.
const INITIAL_RING_BYTES: usize = 512;
/// Longest piece held in one record; more becomes several records (no byte is lost).
const MAX_RECORD_BYTES: usize = 64 * 1024;
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
    /// The piece ends with a newline.
    complete: bool,
}

/// Where a reader stopped, so that a follower gets only what came after, with line prefixes
/// (timestamps) placed as if it had read everything in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// Absolute offset of the next byte to read (bytes ever stored in this buffer).
    pub cursor: u64,
    at_line_start: bool,
    last_stream: Option<Stream>,
}

pub struct LogBuffer {
    ring: Option<LocalRb<Heap<u8>>>,
    records: VecDeque<Record>,
    /// Absolute offset of the first stored byte (bytes evicted so far).
    start: u64,
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
            start: 0,
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

    /// Bytes this buffer counts against its bound (data plus record overhead).
    pub fn used(&self) -> usize {
        self.stored_bytes() + self.records.len() * RECORD_OVERHEAD
    }

    /// Appends output read from `stream` at `time_ns`. Never blocks and never fails: when the
    /// bound is reached the oldest output is dropped.
    pub fn append(&mut self, stream: Stream, data: &[u8], time_ns: i64) {
        self.written += data.len() as u64;
        let mut rest = data;
        // First finish the line an earlier read of this stream left open.
        if let Some(room) = self.continuable(stream) {
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (now, later) = rest.split_at(end.min(room));
            self.push_piece(stream, now, time_ns, true);
            rest = later;
        }
        // Then the complete lines as one piece, and the unfinished last line as another.
        let split = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
        let (lines, partial) = rest.split_at(split);
        for piece in lines
            .chunks(MAX_RECORD_BYTES)
            .chain(partial.chunks(MAX_RECORD_BYTES))
        {
            self.push_piece(stream, piece, time_ns, false);
        }
    }

    /// Room left in the last record when it is an unfinished line of the same stream.
    fn continuable(&self, stream: Stream) -> Option<usize> {
        let last = self.records.back()?;
        (last.stream == stream && !last.complete && (last.len as usize) < MAX_RECORD_BYTES)
            .then(|| MAX_RECORD_BYTES - last.len as usize)
    }

    fn push_piece(&mut self, stream: Stream, piece: &[u8], time_ns: i64, extend: bool) {
        if piece.is_empty() {
            return;
        }
        // A piece that alone exceeds the bound keeps only its newest bytes.
        let budget = self.max_bytes - RECORD_OVERHEAD;
        let piece = if piece.len() > budget {
            self.dropped += (piece.len() - budget) as u64;
            &piece[piece.len() - budget..]
        } else {
            piece
        };
        let overhead = if extend { 0 } else { RECORD_OVERHEAD };
        while self.used() + piece.len() + overhead > self.max_bytes && self.evict_oldest() {}
        // Eviction may have removed the record we meant to extend.
        let extend = extend && self.continuable(stream).is_some();
        self.reserve(piece.len());
        let ring = self.ring.as_mut().expect("reserved");
        let pushed = ring.push_slice(piece);
        debug_assert_eq!(pushed, piece.len());
        let complete = piece.last() == Some(&b'\n');
        if extend {
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

    /// What dropping the oldest record would give back (its bytes and overhead).
    pub fn oldest_cost(&self) -> Option<usize> {
        self.records
            .front()
            .map(|r| r.len as usize + RECORD_OVERHEAD)
    }

    /// Drops the oldest record. Returns false when there was none.
    pub fn evict_oldest(&mut self) -> bool {
        let Some(rec) = self.records.pop_front() else {
            return false;
        };
        self.start += rec.len as u64;
        if let Some(ring) = self.ring.as_mut() {
            ring.skip(rec.len as usize);
        }
        self.dropped += rec.len as u64;
        true
    }

    /// Reads what `query` asks for, in arrival order.
    pub fn read(&self, query: &LogQuery) -> Vec<u8> {
        self.read_from(query, None).0
    }

    /// Absolute offset just past the last stored byte.
    pub fn end(&self) -> u64 {
        self.start + self.stored_bytes() as u64
    }

    /// Reads what `query` asks for. With `from`, reads only what was stored after that state
    /// (`tail` and `since` then do not apply: they chose the starting point); if the bytes at
    /// `from` have been evicted meanwhile, reading resumes at the oldest byte still stored.
    /// Returns the output and the state to continue from.
    pub fn read_from(&self, query: &LogQuery, from: Option<ReadState>) -> (Vec<u8>, ReadState) {
        let mut state = from.unwrap_or(ReadState {
            cursor: self.start,
            at_line_start: true,
            last_stream: None,
        });
        let Some(ring) = &self.ring else {
            return (Vec::new(), state);
        };
        let bytes = Bytes(ring.as_slices());
        let keep = |r: &Record| {
            query.stream.admits(r.stream)
                && (from.is_some() || query.since_ns.is_none_or(|since| r.time_ns >= since))
        };
        let from_off = state.cursor.saturating_sub(self.start) as usize;
        // Kept records with their byte offsets (relative to the ring), oldest first, and the
        // first byte of each to send.
        let mut kept: Vec<(usize, Record)> = Vec::new();
        let mut off = 0usize;
        for r in &self.records {
            if off + r.len as usize > from_off && keep(r) {
                kept.push((off, *r));
            }
            off += r.len as usize;
        }
        let first_skip = kept.first().map_or(0, |(o, _)| from_off.saturating_sub(*o));

        // `tail`: the N-th last line starts after the N-th newline found walking back from the
        // end, not counting a newline that is the very last byte (it ends the last line).
        let (mut first, mut skip) = (0usize, first_skip);
        if let (Some(tail), None) = (query.tail, from) {
            first = kept.len();
            let mut found = 0usize;
            if tail > 0 {
                (first, skip) = (0, 0);
                'walk: for (i, (off, r)) in kept.iter().enumerate().rev() {
                    let len = r.len as usize;
                    let mut to = if i + 1 == kept.len() && r.complete {
                        len - 1
                    } else {
                        len
                    };
                    while let Some(nl) = bytes.rfind_newline(*off, to) {
                        found += 1;
                        if found == tail {
                            (first, skip) = (i, nl + 1);
                            break 'walk;
                        }
                        to = nl;
                    }
                }
            }
        }

        let mut out = Vec::new();
        for (i, (off, r)) in kept.iter().enumerate().skip(first) {
            let from = if i == first { skip } else { 0 };
            let len = r.len as usize;
            if from >= len {
                continue;
            }
            if state.last_stream != Some(r.stream) {
                state.at_line_start = true;
            }
            if query.timestamps {
                let stamp = format_rfc3339_nanos(r.time_ns);
                let mut pos = from;
                while pos < len {
                    let end = bytes
                        .find_newline(*off + pos, *off + len)
                        .map_or(len, |nl| nl - *off + 1);
                    if state.at_line_start {
                        out.extend_from_slice(stamp.as_bytes());
                        out.push(b' ');
                    }
                    bytes.copy(*off + pos, end - pos, &mut out);
                    state.at_line_start = bytes.at(*off + end - 1) == b'\n';
                    pos = end;
                }
            } else {
                bytes.copy(*off + from, len - from, &mut out);
                state.at_line_start = r.complete;
            }
            state.last_stream = Some(r.stream);
            if let Some(limit) = query.limit_bytes {
                if out.len() >= limit {
                    out.truncate(limit);
                    break;
                }
            }
        }
        state.cursor = self.end();
        (out, state)
    }
}

/// The ring's contents as one logical byte sequence over its two slices.
struct Bytes<'a>((&'a [u8], &'a [u8]));

impl Bytes<'_> {
    fn at(&self, i: usize) -> u8 {
        let (a, b) = self.0;
        if i < a.len() {
            a[i]
        } else {
            b[i - a.len()]
        }
    }

    fn copy(&self, start: usize, len: usize, out: &mut Vec<u8>) {
        let (a, b) = self.0;
        let end = start + len;
        if start < a.len() {
            out.extend_from_slice(&a[start..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[start.max(a.len()) - a.len()..end - a.len()]);
        }
    }

    /// Offset, relative to `base`, of the last newline in `base..base + to`.
    fn rfind_newline(&self, base: usize, to: usize) -> Option<usize> {
        let (a, b) = self.0;
        let (start, end) = (base, base + to);
        if end > a.len() {
            let lo = start.max(a.len()) - a.len();
            if let Some(i) = memchr::memrchr(b'\n', &b[lo..end - a.len()]) {
                return Some(lo + a.len() + i - base);
            }
        }
        if start < a.len() {
            let hi = end.min(a.len());
            return memchr::memrchr(b'\n', &a[start..hi]);
        }
        None
    }

    /// Absolute offset of the first newline in `start..end`.
    fn find_newline(&self, start: usize, end: usize) -> Option<usize> {
        let (a, b) = self.0;
        if start < a.len() {
            if let Some(i) = memchr::memchr(b'\n', &a[start..end.min(a.len())]) {
                return Some(start + i);
            }
        }
        if end > a.len() {
            let lo = start.max(a.len()) - a.len();
            return memchr::memchr(b'\n', &b[lo..end - a.len()]).map(|i| lo + a.len() + i);
        }
        None
    }
}

/// RFC 3339 with nanoseconds, the form `kubectl logs --timestamps` prints.
pub fn format_rfc3339_nanos(time_ns: i64) -> String {
    let ts =
        jiff::Timestamp::from_nanosecond(time_ns as i128).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S.%9fZ", ts).unwrap_or_default()
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

    /// Tail, stream and since against a naive model, over many random write patterns.
    #[test]
    fn reads_match_a_naive_model() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let mut b = LogBuffer::new(1 << 20);
            let mut model: Vec<(Stream, u8, i64)> = Vec::new();
            let writes = rand(12) + 1;
            // A line's time is that of its first byte; the byte-level model below agrees with
            // that only when writes end lines, so `since` is exercised on such runs.
            let whole_lines = rand(2) == 0;
            for t in 0..writes as i64 {
                let stream = if rand(3) == 0 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                let len = rand(40) as usize;
                let mut data: Vec<u8> = (0..len)
                    .map(|_| {
                        if rand(4) == 0 {
                            b'\n'
                        } else {
                            b'a' + rand(3) as u8
                        }
                    })
                    .collect();
                if whole_lines {
                    data.push(b'\n');
                }
                b.append(stream, &data, t);
                model.extend(data.iter().map(|&c| (stream, c, t)));
            }
            for filter in [StreamFilter::All, StreamFilter::Only(Stream::Stdout)] {
                let since = if whole_lines { rand(writes) as i64 } else { 0 };
                let kept: Vec<u8> = model
                    .iter()
                    .filter(|(s, _, t)| filter.admits(*s) && *t >= since)
                    .map(|(_, c, _)| *c)
                    .collect();
                for tail in 0..8 {
                    let mut lines: Vec<&[u8]> = kept.split_inclusive(|c| *c == b'\n').collect();
                    let start = lines.len().saturating_sub(tail);
                    let want: Vec<u8> = lines.drain(start..).flatten().copied().collect();
                    let got = b.read(&LogQuery {
                        tail: Some(tail),
                        since_ns: Some(since),
                        stream: filter,
                        ..Default::default()
                    });
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want),
                        "tail={tail} since={since} filter={filter:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn timestamps_mark_every_line_of_a_multi_line_read_with_its_first_bytes_time() {
        let mut b = LogBuffer::new(1 << 20);
        b.append(Stream::Stdout, b"a\nb\nc", 1_000_000_000);
        b.append(Stream::Stdout, b"d\ne\n", 2_000_000_000);
        let got = b.read(&LogQuery {
            timestamps: true,
            ..Default::default()
        });
        let t1 = "1970-01-01T00:00:01.000000000Z";
        let t2 = "1970-01-01T00:00:02.000000000Z";
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!("{t1} a\n{t1} b\n{t1} cd\n{t2} e\n")
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
