//! [`LogFile`]: an optional on-disk copy of a container run's output, in the CRI log format the
//! kubelet writes (`RFC3339NANO STREAM P|F CONTENT`, one entry per line, `P` for a piece of a line
//! that continues in the next entry), rotated by size and count like the kubelet's
//! `containerLogMaxSize` / `containerLogMaxFiles`.
//!
//! Files live in `DIR/RESTART.log`, rotated to `RESTART.log.1` (newest) … `RESTART.log.N`.
//! A write error disables the file for the rest of the run (with one warning): the in-memory
//! buffer stays authoritative and a full disk never stalls a container.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::buffer::{format_rfc3339_nanos, Stream};

/// Rotation settings, and the node's allowance of log files kept open.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub max_size: u64,
    pub max_files: usize,
    pub open: Arc<OpenFiles>,
}

/// How many log files may stay open between writes, node-wide: each is a descriptor procnode
/// holds, and a node of ten thousand pods cannot hold one per container beside their
/// supervisors' connections. Past it, a file is opened for each write and closed after it.
#[derive(Debug)]
pub struct OpenFiles {
    max: usize,
    open: AtomicUsize,
}

impl OpenFiles {
    pub fn new(max: usize) -> OpenFiles {
        OpenFiles {
            max,
            open: AtomicUsize::new(0),
        }
    }

    /// Files open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn take(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct LogFile {
    dir: PathBuf,
    run: u64,
    config: FileConfig,
    /// The current file, opened; `None` before the first write, or when it is not kept open.
    file: Option<File>,
    /// The current file exists (it has been opened once).
    started: bool,
    /// Output bytes the current file holds, and each rotated one (`RUN.log.1` first) where
    /// known, for counting what rotation drops.
    current_payload: u64,
    rotated_payload: VecDeque<Option<u64>>,
    size: u64,
    failed: bool,
    scratch: Vec<u8>,
}

impl Drop for LogFile {
    fn drop(&mut self) {
        self.close();
    }
}

impl LogFile {
    pub fn new(dir: PathBuf, run: u64, config: FileConfig) -> LogFile {
        LogFile {
            dir,
            run,
            config,
            file: None,
            started: false,
            current_payload: 0,
            rotated_payload: VecDeque::new(),
            size: 0,
            failed: false,
            scratch: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.run))
    }

    /// Appends `data` read from `stream` at `time_ns`, one CRI entry per line.
    pub fn write(&mut self, stream: Stream, data: &[u8], time_ns: i64) {
        if self.failed || data.is_empty() {
            return;
        }
        let tag = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        // Every entry of one write has the same time and stream: "TIME STREAM F " is made once,
        // and the lines are found with memchr (a flood of short lines spent a third of
        // procnode's time here when each was split off byte by byte and prefixed piecewise).
        let mut prefix = format_rfc3339_nanos(time_ns).into_bytes();
        prefix.push(b' ');
        prefix.extend_from_slice(tag.as_bytes());
        prefix.extend_from_slice(b" F ");
        self.scratch.clear();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', data) {
            self.scratch.extend_from_slice(&prefix);
            self.scratch.extend_from_slice(&data[start..=end]);
            start = end + 1;
        }
        if start < data.len() {
            // An unfinished line: a partial entry.
            self.scratch.extend_from_slice(&prefix[..prefix.len() - 2]);
            self.scratch.extend_from_slice(b"P ");
            self.scratch.extend_from_slice(&data[start..]);
            self.scratch.push(b'\n');
        }
        if let Err(e) = self.write_scratch(data.len() as u64) {
            tracing::warn!(file = %self.path().display(), error = %e, "container log file disabled for this run");
            self.failed = true;
            self.close();
        }
    }

    /// Writes the entries made of `payload` output bytes.
    fn write_scratch(&mut self, payload: u64) -> std::io::Result<()> {
        if !self.started || self.size >= self.config.max_size {
            self.rotate()?;
        }
        match self.file.as_mut() {
            Some(file) => file.write_all(&self.scratch)?,
            None => Self::append_to(&self.path())?.write_all(&self.scratch)?,
        }
        self.size += self.scratch.len() as u64;
        self.current_payload += payload;
        Ok(())
    }

    fn append_to(path: &std::path::Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn close(&mut self) {
        if self.file.take().is_some() {
            self.config.open.give_back();
        }
    }

    /// Moves `N.log` to `N.log.1` (and older ones up by one, dropping the oldest) and opens a
    /// fresh `N.log`, kept open if the node's allowance has room. The first call only opens
    /// the file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let current = self.path();
        self.close();
        if self.started {
            let keep = self.config.max_files.saturating_sub(1);
            // What each file holds is known for the files this run wrote since procnode
            // started; an older one is read (once, at most).
            let known = |k: usize, path: &Path, held: &VecDeque<Option<u64>>| {
                held.get(k)
                    .copied()
                    .flatten()
                    .unwrap_or_else(|| payload_bytes(path))
            };
            if keep == 0 {
                add_rotated_away(&self.dir, self.run, self.current_payload);
                std::fs::remove_file(&current)?;
            } else {
                let rotated = |i: usize| self.dir.join(format!("{}.log.{i}", self.run));
                if rotated(keep).exists() {
                    let dropped = known(keep - 1, &rotated(keep), &self.rotated_payload);
                    add_rotated_away(&self.dir, self.run, dropped);
                }
                let _ = std::fs::remove_file(rotated(keep));
                for i in (1..keep).rev() {
                    let _ = std::fs::rename(rotated(i), rotated(i + 1));
                }
                std::fs::rename(&current, rotated(1))?;
                self.rotated_payload.push_front(Some(self.current_payload));
                self.rotated_payload.truncate(keep);
            }
            self.current_payload = 0;
        } else {
            std::fs::create_dir_all(&self.dir)?;
            // A file this run already has (procnode restarted): what it holds, read once.
            self.current_payload = payload_bytes(&current);
            self.rotated_payload = (1..self.config.max_files).map(|_| None).collect();
        }
        let file = Self::append_to(&current)?;
        self.started = true;
        self.size = file.metadata()?.len();
        if self.config.open.take() {
            self.file = Some(file);
        }
        Ok(())
    }
}

/// Output bytes of run `run` that rotation has dropped (`DIR/RUN.log.base`): with what the
/// remaining files hold, how much of the run's output was ever stored.
pub fn rotated_away(dir: &std::path::Path, run: u64) -> u64 {
    std::fs::read_to_string(dir.join(format!("{run}.log.base")))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Adds `bytes` to what rotation has dropped of run `run` (written to a temporary file and
/// renamed, so a crash leaves the old count or the new one).
fn add_rotated_away(dir: &std::path::Path, run: u64, bytes: u64) {
    let total = rotated_away(dir, run) + bytes;
    let tmp = dir.join(format!(".{run}.log.base.tmp"));
    if std::fs::write(&tmp, total.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(format!("{run}.log.base")));
    }
}

/// Output bytes held by one log file.
fn payload_bytes(path: &std::path::Path) -> u64 {
    std::fs::read(path)
        .map(|data| entries(&data).map(|(_, b, _)| b.len() as u64).sum())
        .unwrap_or(0)
}

/// The entries of one file's contents: stream, bytes (with the newline when the entry ended a
/// line), capture time. Lines that do not parse are skipped.
fn entries(data: &[u8]) -> impl Iterator<Item = (Stream, Vec<u8>, i64)> + '_ {
    data.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|line| {
            let mut fields = line.splitn(4, |b| *b == b' ');
            let (ts, stream, tag) = (fields.next()?, fields.next()?, fields.next()?);
            let content = fields.next().unwrap_or_default();
            let time = std::str::from_utf8(ts)
                .ok()?
                .parse::<jiff::Timestamp>()
                .ok()?;
            let stream = match stream {
                b"stdout" => Stream::Stdout,
                b"stderr" => Stream::Stderr,
                _ => return None,
            };
            let mut bytes = content.to_vec();
            if tag == b"F" {
                bytes.push(b'\n');
            }
            Some((stream, bytes, time.as_nanosecond() as i64))
        })
}

/// Reads back the entries of run `run` from `dir` (rotated files first, oldest first): each
/// entry's stream, bytes (with its newline when it ended a line) and capture time. Lines that do
/// not parse are skipped.
pub fn read_run(dir: &std::path::Path, run: u64) -> Vec<(Stream, Vec<u8>, i64)> {
    let mut files: Vec<(usize, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let base = format!("{run}.log");
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == base {
                files.push((0, e.path()));
            } else if let Some(n) = name
                .strip_prefix(&format!("{base}."))
                .and_then(|n| n.parse().ok())
            {
                files.push((n, e.path()));
            }
        }
    }
    // Higher numbers are older.
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut out = Vec::new();
    for (_, path) in files {
        if let Ok(data) = std::fs::read(&path) {
            out.extend(entries(&data));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_cri_entries_with_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = LogFile::new(
            dir.path().join("c"),
            0,
            FileConfig {
                max_size: 1 << 20,
                max_files: 2,
                open: Arc::new(OpenFiles::new(8)),
            },
        );
        f.write(Stream::Stdout, b"one\ntw", 1_000_000_000);
        f.write(Stream::Stdout, b"o\n", 2_000_000_000);
        f.write(Stream::Stderr, b"err\n", 3_000_000_000);
        f.write(Stream::Stdout, b"\n\nlast", 4_000_000_000);
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:01.000000000Z stdout F one\n\
             1970-01-01T00:00:01.000000000Z stdout P tw\n\
             1970-01-01T00:00:02.000000000Z stdout F o\n\
             1970-01-01T00:00:03.000000000Z stderr F err\n\
             1970-01-01T00:00:04.000000000Z stdout F \n\
             1970-01-01T00:00:04.000000000Z stdout F \n\
             1970-01-01T00:00:04.000000000Z stdout P last\n"
        );
    }

    #[test]
    fn reads_back_what_it_wrote_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("c");
        let mut f = LogFile::new(
            d.clone(),
            2,
            FileConfig {
                max_size: 80,
                max_files: 10,
                open: Arc::new(OpenFiles::new(8)),
            },
        );
        let mut want = Vec::new();
        for i in 0..10 {
            let text = format!("line {i}\n");
            let stream = if i % 3 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            f.write(stream, text.as_bytes(), i * 1000);
            want.push((stream, text.into_bytes(), i * 1000));
        }
        f.write(Stream::Stdout, b"partial", 99_000);
        want.push((Stream::Stdout, b"partial".to_vec(), 99_000));
        assert_eq!(read_run(&d, 2), want);
        assert!(read_run(&d, 1).is_empty());
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("c");
        let mut f = LogFile::new(
            d.clone(),
            3,
            FileConfig {
                max_size: 100,
                max_files: 3,
                open: Arc::new(OpenFiles::new(8)),
            },
        );
        for i in 0..40 {
            f.write(Stream::Stdout, format!("line {i}\n").as_bytes(), i);
        }
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["3.log", "3.log.1", "3.log.2", "3.log.base"]);
        // What rotation dropped is counted: with what is left, all that was written.
        let written: u64 = (0..40).map(|i| format!("line {i}\n").len() as u64).sum();
        let left: u64 = read_run(&d, 3).iter().map(|e| e.1.len() as u64).sum();
        assert_eq!(rotated_away(&d, 3) + left, written);
        let newest = std::fs::read_to_string(d.join("3.log")).unwrap();
        assert!(newest.ends_with("stdout F line 39\n"), "{newest}");
        for name in &names[..3] {
            assert!(std::fs::metadata(d.join(name)).unwrap().len() < 100 + 60);
        }
    }

    /// Past the node's allowance a file is opened for each write: the same entries, the same
    /// rotation, and no descriptor held between writes.
    #[test]
    fn files_past_the_open_allowance_are_written_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let open = Arc::new(OpenFiles::new(1));
        let config = FileConfig {
            max_size: 80,
            max_files: 10,
            open: open.clone(),
        };
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let mut kept = LogFile::new(a.clone(), 0, config.clone());
        let mut reopened = LogFile::new(b.clone(), 0, config);
        let mut want = Vec::new();
        for i in 0..10 {
            let text = format!("line {i}\n");
            kept.write(Stream::Stdout, text.as_bytes(), i);
            reopened.write(Stream::Stdout, text.as_bytes(), i);
            want.push((Stream::Stdout, text.into_bytes(), i));
        }
        assert_eq!(open.open(), 1, "only the first is kept open");
        assert!(kept.file.is_some() && reopened.file.is_none());
        assert_eq!(read_run(&a, 0), want);
        assert_eq!(read_run(&b, 0), want, "rotated the same way, nothing lost");
        drop(kept);
        assert_eq!(open.open(), 0, "given back when the run's file goes");
    }
}
