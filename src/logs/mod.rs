//! Container output: bounded per-run buffers ([`LogBuffer`]) and the pair of them a container
//! keeps ([`ContainerLogs`]: the current run and the previous one, as `kubectl logs --previous`
//! expects).

mod buffer;

pub use buffer::{format_rfc3339_nanos, LogBuffer, LogQuery, Stream, StreamFilter};

/// The output of one container: the current run and the one before it.
pub struct ContainerLogs {
    pub current: LogBuffer,
    pub previous: Option<LogBuffer>,
    max_bytes: usize,
}

impl ContainerLogs {
    pub fn new(max_bytes: usize) -> ContainerLogs {
        ContainerLogs {
            current: LogBuffer::new(max_bytes),
            previous: None,
            max_bytes,
        }
    }

    /// Starts a new run: the current output becomes the previous one.
    pub fn rotate(&mut self) {
        let fresh = LogBuffer::new(self.max_bytes);
        self.previous = Some(std::mem::replace(&mut self.current, fresh));
    }
}

/// Nanoseconds since the Unix epoch, the capture time stamped on each piece of output.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
