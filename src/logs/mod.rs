//! Container output: bounded per-run buffers ([`LogBuffer`]), the pair a container keeps
//! ([`ContainerLogs`]: the current run and the previous one, as `kubectl logs --previous`
//! expects), a node-wide byte budget ([`LogBudget`]) and optional on-disk copies ([`LogFile`]).
//!
//! Bounds: each run keeps at most `per_container` bytes; all buffers together at most the
//! budget. When the budget is exceeded, the container that is writing gives up its previous
//! run first, then its own oldest output, but always keeps its newest [`FLOOR_BYTES`], so a
//! new container is never starved by old ones.

mod buffer;
mod file;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use buffer::{format_rfc3339_nanos, LogBuffer, LogQuery, ReadState, Stream, StreamFilter};
pub use file::{read_run, FileConfig, LogFile, OpenFiles};

/// Output a container always keeps, whatever the node-wide budget says.
pub const FLOOR_BYTES: usize = 64 * 1024;

/// Bytes held by every log buffer of the node, against a limit.
#[derive(Debug)]
pub struct LogBudget {
    limit: usize,
    used: AtomicUsize,
    /// Bytes captured and dropped, over procnode's life (for metrics).
    captured: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl LogBudget {
    pub fn new(limit: usize) -> LogBudget {
        LogBudget {
            limit,
            used: AtomicUsize::new(0),
            captured: Default::default(),
            dropped: Default::default(),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes captured and bytes dropped since procnode started.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.captured.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

/// How logs are kept, shared by every container.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub per_container: usize,
    pub budget: Arc<LogBudget>,
    pub files: Option<FileConfig>,
}

/// The output of one container: the current run and the one before it.
pub struct ContainerLogs {
    pub current: LogBuffer,
    pub previous: Option<LogBuffer>,
    config: LogConfig,
    /// Bytes this container has counted against the budget.
    accounted: usize,
    /// Which run `current` holds (its restart count).
    run: u64,
    /// The current run has ended and all its output has been read.
    finished: bool,
    file_dir: Option<PathBuf>,
    file: Option<LogFile>,
    /// See [`ContainerLogs::restored_output`].
    restored_output: u64,
}

impl ContainerLogs {
    /// `file_dir`: where this container's log files go, when log files are enabled.
    pub fn new(config: &LogConfig, file_dir: Option<PathBuf>) -> ContainerLogs {
        ContainerLogs {
            current: LogBuffer::new(config.per_container),
            previous: None,
            config: config.clone(),
            accounted: 0,
            run: 0,
            finished: false,
            file: None,
            file_dir: file_dir.filter(|_| config.files.is_some()),
            restored_output: 0,
        }
    }

    pub fn run(&self) -> u64 {
        self.run
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Appends output of the current run.
    pub fn append(&mut self, stream: Stream, data: &[u8], time_ns: i64) {
        let dropped_before = self.current.dropped_bytes();
        self.current.append(stream, data, time_ns);
        let budget = &self.config.budget;
        budget
            .captured
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        budget.dropped.fetch_add(
            self.current.dropped_bytes() - dropped_before,
            Ordering::Relaxed,
        );
        if let (Some(dir), Some(files)) = (&self.file_dir, &self.config.files) {
            self.file
                .get_or_insert_with(|| LogFile::new(dir.clone(), self.run, files.clone()))
                .write(stream, data, time_ns);
        }
        self.account();
        if self.config.budget.over() {
            self.shed();
        }
    }

    /// Starts a new run: the current output becomes the previous one.
    pub fn rotate(&mut self) {
        let fresh = LogBuffer::new(self.config.per_container);
        self.previous = Some(std::mem::replace(&mut self.current, fresh));
        self.run += 1;
        self.finished = false;
        self.file = None;
        self.account();
    }

    /// After a procnode restart: continue at run `run` (the container's restart count) and, when
    /// log files are kept, load this run's and the previous run's output back from them.
    pub fn restore(&mut self, run: u64) {
        self.run = run;
        let Some(dir) = self.file_dir.clone() else {
            return;
        };
        if run > 0 {
            let mut previous = LogBuffer::new(self.config.per_container);
            for (stream, data, time) in read_run(&dir, run - 1) {
                previous.append(stream, &data, time);
            }
            self.previous = Some(previous);
        }
        self.restored_output = file::rotated_away(&dir, run);
        for (stream, data, time) in read_run(&dir, run) {
            self.restored_output += data.len() as u64;
            self.current.append(stream, &data, time);
        }
        self.account();
    }

    /// How much of run `run`'s output the log files held at [`ContainerLogs::restore`]
    /// (rotated-away files included): where a supervisor is to resume relaying, so that
    /// nothing is stored twice. 0 without log files, or for a run other than the one restored.
    pub fn restored_output(&self, run: u64) -> u64 {
        if run == self.run {
            self.restored_output
        } else {
            0
        }
    }

    /// Marks the current run over: followers stop once they have read everything.
    pub fn finish(&mut self) {
        self.finished = true;
        // Its file is complete: its descriptor goes back.
        self.file = None;
    }

    fn held(&self) -> usize {
        self.current.used() + self.previous.as_ref().map_or(0, LogBuffer::used)
    }

    fn account(&mut self) {
        let now = self.held();
        let budget = &self.config.budget.used;
        if now >= self.accounted {
            budget.fetch_add(now - self.accounted, Ordering::Relaxed);
        } else {
            budget.fetch_sub(self.accounted - now, Ordering::Relaxed);
        }
        self.accounted = now;
    }

    /// Gives bytes back until the node is within budget or only the floor is left.
    fn shed(&mut self) {
        let dropped_before = self.current.dropped_bytes();
        if let Some(previous) = self.previous.take() {
            let held = previous.used() as u64;
            self.config
                .budget
                .dropped
                .fetch_add(held, Ordering::Relaxed);
            self.account();
        }
        while self.config.budget.over() {
            match self.current.oldest_cost() {
                Some(cost) if self.current.used() - cost >= FLOOR_BYTES => {
                    self.current.evict_oldest();
                    self.account();
                }
                _ => break,
            }
        }
        self.config.budget.dropped.fetch_add(
            self.current.dropped_bytes() - dropped_before,
            Ordering::Relaxed,
        );
    }
}

impl Drop for ContainerLogs {
    fn drop(&mut self) {
        self.config
            .budget
            .used
            .fetch_sub(self.accounted, Ordering::Relaxed);
    }
}

/// One container's logs and the signal that they changed (new output, run ended), for
/// followers. The signal lives outside the mutex so followers can wait without holding it.
pub struct LogSlot {
    pub logs: Mutex<ContainerLogs>,
    pub changed: tokio::sync::Notify,
}

impl LogSlot {
    pub fn new(logs: ContainerLogs) -> LogSlot {
        LogSlot {
            logs: Mutex::new(logs),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Runs `f` on the logs, then wakes every follower.
    pub fn update<R>(&self, f: impl FnOnce(&mut ContainerLogs) -> R) -> R {
        let r = f(&mut self.logs.lock().expect("logs lock"));
        self.changed.notify_waiters();
        r
    }
}

/// Follows the current run of a container: first what `query` selects, then new output as it
/// arrives, until the run ends (and everything it wrote has been sent) or `limit_bytes` is
/// reached. The stream holds no task of its own: dropping it (a client going away) ends it.
pub fn follow(slot: Arc<LogSlot>, query: LogQuery) -> impl futures_util::Stream<Item = Vec<u8>> {
    struct Follow {
        slot: Arc<LogSlot>,
        query: LogQuery,
        run: Option<u64>,
        state: Option<ReadState>,
        remaining: Option<usize>,
    }
    let remaining = query.limit_bytes;
    let query = LogQuery {
        limit_bytes: None,
        ..query
    };
    let start = Follow {
        slot,
        query,
        run: None,
        state: None,
        remaining,
    };
    futures_util::stream::unfold(Some(start), |follow| async move {
        let mut f = follow?;
        loop {
            let slot = f.slot.clone();
            let notified = slot.changed.notified();
            tokio::pin!(notified);
            // Registered before reading, so output appended after the read wakes us.
            notified.as_mut().enable();
            let (mut chunk, mut done) = {
                let logs = slot.logs.lock().expect("logs lock");
                let run = *f.run.get_or_insert(logs.run());
                // The followed run may have become the previous one (a restart): finish it.
                let (buffer, finished) = if logs.run() == run {
                    (Some(&logs.current), logs.finished())
                } else if logs.run() == run + 1 {
                    (logs.previous.as_ref(), true)
                } else {
                    (None, true)
                };
                match buffer {
                    Some(b) => {
                        let (out, state) = b.read_from(&f.query, f.state);
                        f.state = Some(state);
                        (out, finished)
                    }
                    None => (Vec::new(), true),
                }
            };
            if let Some(left) = f.remaining.as_mut() {
                chunk.truncate(*left);
                *left -= chunk.len();
                done |= *left == 0;
            }
            if !chunk.is_empty() {
                return Some((chunk, (!done).then_some(f)));
            }
            if done {
                return None;
            }
            notified.await;
        }
    })
}

/// Nanoseconds since the Unix epoch, the capture time stamped on each piece of output.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per: usize, total: usize) -> LogConfig {
        LogConfig {
            per_container: per,
            budget: Arc::new(LogBudget::new(total)),
            files: None,
        }
    }

    #[test]
    fn the_node_budget_bounds_all_containers_together_with_a_floor_each() {
        let cfg = config(1 << 20, 256 * 1024);
        let line = [b'x'; 1023];
        let mut a = ContainerLogs::new(&cfg, None);
        let mut b = ContainerLogs::new(&cfg, None);
        for i in 0..1000 {
            a.append(Stream::Stdout, &line, i);
            a.append(Stream::Stdout, b"\n", i);
        }
        assert!(
            cfg.budget.used() <= 256 * 1024 + 2048,
            "{}",
            cfg.budget.used()
        );
        for i in 0..1000 {
            b.append(Stream::Stdout, &line, i);
            b.append(Stream::Stdout, b"\n", i);
        }
        // b sheds its own oldest output, never below the floor; a keeps what it had.
        assert!(b.current.used() >= FLOOR_BYTES);
        assert!(a.current.used() > FLOOR_BYTES);
        drop(a);
        drop(b);
        assert_eq!(cfg.budget.used(), 0, "dropped logs give their bytes back");
    }

    #[test]
    fn rotation_keeps_the_previous_run_and_counts_it() {
        let cfg = config(1 << 20, 1 << 30);
        let mut l = ContainerLogs::new(&cfg, None);
        l.append(Stream::Stdout, b"first run\n", 1);
        l.finish();
        l.rotate();
        assert_eq!(l.run(), 1);
        assert!(!l.finished());
        l.append(Stream::Stdout, b"second\n", 2);
        let prev = l.previous.as_ref().unwrap().read(&LogQuery::default());
        assert_eq!(prev, b"first run\n");
        assert_eq!(l.current.read(&LogQuery::default()), b"second\n");
        assert_eq!(cfg.budget.used(), l.held());
    }

    #[tokio::test]
    async fn follow_streams_new_output_and_ends_with_the_run() {
        use futures_util::StreamExt;
        let cfg = config(1 << 20, 1 << 30);
        let slot = Arc::new(LogSlot::new(ContainerLogs::new(&cfg, None)));
        slot.update(|l| l.append(Stream::Stdout, b"old-1\nold-2\n", 1));
        let mut stream = Box::pin(follow(
            slot.clone(),
            LogQuery {
                tail: Some(1),
                ..Default::default()
            },
        ));
        assert_eq!(stream.next().await.unwrap(), b"old-2\n");
        let writer = slot.clone();
        let feed = tokio::spawn(async move {
            for i in 0..3 {
                tokio::task::yield_now().await;
                writer.update(|l| l.append(Stream::Stderr, format!("new-{i}\n").as_bytes(), 2));
            }
            writer.update(|l| l.finish());
        });
        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            rest.extend(chunk);
        }
        feed.await.unwrap();
        assert_eq!(rest, b"new-0\nnew-1\nnew-2\n");
        drop(stream);
        assert_eq!(
            Arc::strong_count(&slot),
            1,
            "the ended stream holds nothing"
        );
    }

    #[tokio::test]
    async fn follow_honours_limit_bytes_across_chunks_and_finishes_a_rotated_run() {
        use futures_util::StreamExt;
        let cfg = config(1 << 20, 1 << 30);
        let slot = Arc::new(LogSlot::new(ContainerLogs::new(&cfg, None)));
        slot.update(|l| l.append(Stream::Stdout, b"abc", 1));
        let limited: Vec<u8> = {
            let s = follow(
                slot.clone(),
                LogQuery {
                    limit_bytes: Some(5),
                    ..Default::default()
                },
            );
            let s = Box::pin(s);
            let w = slot.clone();
            let feed = async move { w.update(|l| l.append(Stream::Stdout, b"defgh", 2)) };
            let (chunks, ()) = tokio::join!(s.collect::<Vec<_>>(), feed);
            chunks.concat()
        };
        assert_eq!(limited, b"abcde");
        // A follower of run 0 still gets run 0's last output after a restart, then ends.
        let mut s = Box::pin(follow(slot.clone(), LogQuery::default()));
        assert_eq!(s.next().await.unwrap(), b"abcdefgh");
        slot.update(|l| {
            l.append(Stream::Stdout, b"\nend of run 0\n", 3);
            l.finish();
            l.rotate();
            l.append(Stream::Stdout, b"run 1\n", 4);
        });
        assert_eq!(s.next().await.unwrap(), b"\nend of run 0\n");
        assert!(s.next().await.is_none());
    }

    #[test]
    fn log_files_follow_runs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            files: Some(FileConfig {
                max_size: 1 << 20,
                max_files: 2,
                open: Arc::new(OpenFiles::new(4)),
            }),
            ..config(1 << 20, 1 << 30)
        };
        let mut l = ContainerLogs::new(&cfg, Some(dir.path().to_path_buf()));
        l.append(Stream::Stdout, b"run0\n", 1);
        l.rotate();
        l.append(Stream::Stderr, b"run1\n", 2);
        let zero = std::fs::read_to_string(dir.path().join("0.log")).unwrap();
        let one = std::fs::read_to_string(dir.path().join("1.log")).unwrap();
        assert!(zero.ends_with(" stdout F run0\n"), "{zero}");
        assert!(one.ends_with(" stderr F run1\n"), "{one}");
    }
}
