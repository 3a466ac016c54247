//! CrashLoopBackOff: the delay before a container is started again.
//!
//! As the kubelet does it: the first restart waits `initial` (10 s by default), each further
//! crash doubles the delay up to `max` (300 s), and a run that lasted at least twice `max`
//! (10 minutes by default) resets it.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay before the next start, given how long the run that just ended lasted.
    pub fn next_delay(&mut self, last_run: Duration) -> Duration {
        if last_run >= self.max * 2 {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_long_run() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay(short).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(Duration::from_secs(600)).as_secs(), 10);
        assert_eq!(b.next_delay(short).as_secs(), 20);
    }
}
