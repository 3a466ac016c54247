//! [`LogFile`]: an optional on-disk copy of a container run's output, in the CRI log format the
//! kubelet writes (`RFC3339NANO STREAM P|F CONTENT`, one entry per line, `P` for a piece of a line
//! that continues in the next entry), rotated by size and count like the kubelet's
//! `containerLogMaxSize` / `containerLogMaxFiles`.
//!
//! Files live in `DIR/RESTART.log`, rotated to `RESTART.log.1` (newest) … `RESTART.log.N`.
//! A write error disables the file for the rest of the run (with one warning): the in-memory
//! buffer stays authoritative and a full disk never stalls a container.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use super::buffer::{format_rfc3339_nanos, Stream};

/// Rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct FileConfig {
    pub max_size: u64,
    pub max_files: usize,
}

pub struct LogFile {
    dir: PathBuf,
    run: u64,
    config: FileConfig,
    file: Option<File>,
    size: u64,
    failed: bool,
    scratch: Vec<u8>,
}

impl LogFile {
    pub fn new(dir: PathBuf, run: u64, config: FileConfig) -> LogFile {
        LogFile {
            dir,
            run,
            config,
            file: None,
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
        let stamp = format_rfc3339_nanos(time_ns);
        self.scratch.clear();
        for piece in data.split_inclusive(|b| *b == b'\n') {
            let (content, full) = match piece.strip_suffix(b"\n") {
                Some(line) => (line, true),
                None => (piece, false),
            };
            self.scratch.extend_from_slice(stamp.as_bytes());
            self.scratch.push(b' ');
            self.scratch.extend_from_slice(tag.as_bytes());
            self.scratch
                .extend_from_slice(if full { b" F " } else { b" P " });
            self.scratch.extend_from_slice(content);
            self.scratch.push(b'\n');
        }
        if let Err(e) = self.write_scratch() {
            tracing::warn!(file = %self.path().display(), error = %e, "container log file disabled for this run");
            self.failed = true;
            self.file = None;
        }
    }

    fn write_scratch(&mut self) -> std::io::Result<()> {
        if self.file.is_none() || self.size >= self.config.max_size {
            self.rotate()?;
        }
        let file = self.file.as_mut().expect("opened");
        file.write_all(&self.scratch)?;
        self.size += self.scratch.len() as u64;
        Ok(())
    }

    /// Moves `N.log` to `N.log.1` (and older ones up by one, dropping the oldest) and opens a
    /// fresh `N.log`. The first call only opens the file.
    fn rotate(&mut self) -> std::io::Result<()> {
        let current = self.path();
        if self.file.take().is_some() {
            let keep = self.config.max_files.saturating_sub(1);
            if keep == 0 {
                std::fs::remove_file(&current)?;
            } else {
                let rotated = |i: usize| self.dir.join(format!("{}.log.{i}", self.run));
                let _ = std::fs::remove_file(rotated(keep));
                for i in (1..keep).rev() {
                    let _ = std::fs::rename(rotated(i), rotated(i + 1));
                }
                std::fs::rename(&current, rotated(1))?;
            }
        } else {
            std::fs::create_dir_all(&self.dir)?;
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&current)?,
        );
        self.size = std::fs::metadata(&current)?.len();
        Ok(())
    }
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
            },
        );
        f.write(Stream::Stdout, b"one\ntw", 1_000_000_000);
        f.write(Stream::Stdout, b"o\n", 2_000_000_000);
        f.write(Stream::Stderr, b"err\n", 3_000_000_000);
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:01.000000000Z stdout F one\n\
             1970-01-01T00:00:01.000000000Z stdout P tw\n\
             1970-01-01T00:00:02.000000000Z stdout F o\n\
             1970-01-01T00:00:03.000000000Z stderr F err\n"
        );
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
        assert_eq!(names, ["3.log", "3.log.1", "3.log.2"]);
        let newest = std::fs::read_to_string(d.join("3.log")).unwrap();
        assert!(newest.ends_with("stdout F line 39\n"), "{newest}");
        for name in &names {
            assert!(std::fs::metadata(d.join(name)).unwrap().len() < 100 + 60);
        }
    }
}
