//! Prometheus metrics (`GET /metrics`, text format 0.0.4), kept in atomics so that recording
//! costs a few nanoseconds and never locks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// The routes whose request latency is recorded (anything else is `other`).
pub const ROUTES: [&str; 16] = [
    "/createPod",
    "/updatePod",
    "/deletePod",
    "/getPod",
    "/getPodStatus",
    "/getContainerLogs",
    "/getPods",
    "/capacity",
    "/nodeConditions",
    "/nodeAddresses",
    "/nodeDaemonEndpoints",
    "/operatingSystem",
    "/",
    "/healthz",
    "/metrics",
    "other",
];

/// Exit reasons counted separately.
pub const EXIT_REASONS: [&str; 4] = ["Completed", "Error", "StartError", "ContainerStatusUnknown"];

/// The HTTP connections of every server procnode runs (web API and kubelet API).
#[derive(Default)]
pub struct HttpConnections {
    pub open: AtomicU64,
    /// Answered 503 at once: the connection cap was reached.
    pub refused: AtomicU64,
    /// Closed because the request head did not arrive in time.
    pub header_timeouts: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    pub http: HttpConnections,
    pub container_starts: AtomicU64,
    pub container_restarts: AtomicU64,
    exits: [AtomicU64; EXIT_REASONS.len()],
    pub spawn_latency: Histogram,
    /// Each step of a pod's start, by [`StartStep`].
    start_steps: [Histogram; START_STEPS.len()],
    requests: [Histogram; ROUTES.len()],
}

/// The steps of a pod's start, timed apart (`procnode_start_step_seconds{step}`), so that
/// what a start waits for can be read off one run instead of compared across noisy ones.
#[derive(Debug, Clone, Copy)]
pub enum StartStep {
    /// The pod record written and fsync'd, before createPod is answered.
    Record,
    /// The pod's cgroup and volumes, before its first container.
    Prepare,
    /// A container's process recipe: environment, user, working directory, mounts, cgroup.
    Recipe,
    /// Its supervisor launched until the container runs.
    Supervisor,
}

const START_STEPS: [&str; 4] = ["record", "prepare", "recipe", "supervisor"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn container_exited(&self, reason: &str) {
        if let Some(i) = EXIT_REASONS.iter().position(|r| *r == reason) {
            self.exits[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn start_step(&self, step: StartStep, d: Duration) {
        self.start_steps[step as usize].observe(d);
    }

    pub fn request(&self, path: &str, d: Duration) {
        let i = ROUTES
            .iter()
            .position(|r| *r == path)
            .unwrap_or(ROUTES.len() - 1);
        self.requests[i].observe(d);
    }

    /// The text exposition, with the pod and log figures the caller samples at scrape time.
    pub fn render(
        &self,
        pods_by_phase: &[(&str, usize)],
        log_captured: u64,
        log_dropped: u64,
        log_held: u64,
    ) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP procnode_pods Pods known to procnode, by phase.\n# TYPE procnode_pods gauge"
        );
        for (phase, n) in pods_by_phase {
            let _ = writeln!(out, "procnode_pods{{phase=\"{phase}\"}} {n}");
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "procnode_container_starts_total",
            "Container processes started.",
            self.container_starts.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "procnode_container_restarts_total",
            "Container restarts (by restart policy).",
            self.container_restarts.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP procnode_container_exits_total Container runs ended, by reason.\n# TYPE procnode_container_exits_total counter");
        for (i, reason) in EXIT_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "procnode_container_exits_total{{reason=\"{reason}\"}} {}",
                self.exits[i].load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "procnode_log_bytes_captured_total",
            "Bytes of container output captured.",
            log_captured,
        );
        counter(
            &mut out,
            "procnode_log_bytes_dropped_total",
            "Bytes of container output dropped to stay within the bounds.",
            log_dropped,
        );
        let _ = writeln!(out, "# HELP procnode_http_connections_open HTTP connections open now.\n# TYPE procnode_http_connections_open gauge\nprocnode_http_connections_open {}", self.http.open.load(Ordering::Relaxed));
        counter(
            &mut out,
            "procnode_http_connections_refused_total",
            "HTTP connections answered 503 because --max-connections were open.",
            self.http.refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "procnode_http_header_timeouts_total",
            "HTTP connections closed because no complete request head came within --header-read-timeout.",
            self.http.header_timeouts.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP procnode_log_bytes_held Bytes of container output held in memory.\n# TYPE procnode_log_bytes_held gauge\nprocnode_log_bytes_held {log_held}");
        let _ = writeln!(out, "# HELP procnode_spawn_seconds Time from the decision to start a container to its process running.\n# TYPE procnode_spawn_seconds histogram");
        self.spawn_latency
            .render(&mut out, "procnode_spawn_seconds", "");
        let _ = writeln!(out, "# HELP procnode_start_step_seconds Time of each step of a pod's start.\n# TYPE procnode_start_step_seconds histogram");
        for (i, step) in START_STEPS.iter().enumerate() {
            self.start_steps[i].render(
                &mut out,
                "procnode_start_step_seconds",
                &format!("step=\"{step}\""),
            );
        }
        let _ = writeln!(out, "# HELP procnode_http_request_seconds Time procnode spent on a request, by route.\n# TYPE procnode_http_request_seconds histogram");
        for (i, route) in ROUTES.iter().enumerate() {
            if self.requests[i].count.load(Ordering::Relaxed) > 0 {
                self.requests[i].render(
                    &mut out,
                    "procnode_http_request_seconds",
                    &format!("route=\"{route}\""),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_render_as_prometheus_text() {
        let m = Metrics::default();
        m.spawn_latency.observe(Duration::from_micros(300));
        m.spawn_latency.observe(Duration::from_millis(3));
        m.request("/getPod", Duration::from_micros(50));
        m.request("/nope", Duration::from_micros(50));
        m.container_exited("Error");
        m.start_step(StartStep::Supervisor, Duration::from_millis(2));
        let text = m.render(&[("Running", 2)], 10, 1, 5);
        assert!(
            text.contains("procnode_start_step_seconds_count{step=\"supervisor\"} 1"),
            "{text}"
        );
        assert!(text.contains("procnode_start_step_seconds_count{step=\"record\"} 0"));
        assert!(
            text.contains("procnode_spawn_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(text.contains("procnode_spawn_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("procnode_spawn_seconds_count 2"));
        assert!(text.contains("procnode_http_request_seconds_count{route=\"/getPod\"} 1"));
        assert!(text.contains("procnode_http_request_seconds_count{route=\"other\"} 1"));
        assert!(text.contains("procnode_container_exits_total{reason=\"Error\"} 1"));
        assert!(text.contains("procnode_pods{phase=\"Running\"} 2"));
    }
}
