//! Prometheus metrics, rendered in the text exposition format at `/metrics`: requests by route,
//! method and status, request latency, bytes in and out, upload sessions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// The label of a request method: the methods HTTP defines, else `other`.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|k| *k == method).unwrap_or("other")
}

/// The registry's counters. Cheap to update from any request.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), RequestStats>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    uploads_started: AtomicU64,
    uploads_completed: AtomicU64,
    uploads_open: AtomicI64,
}

#[derive(Debug, Default, Clone, Copy)]
struct RequestStats {
    count: u64,
    seconds: f64,
}

impl Metrics {
    /// Counts a finished request. Label values come from fixed sets: a method HTTP does not
    /// define is counted as `other`, so clients cannot grow the series without bound.
    pub fn request(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            let s = m.entry((route, method_label(method), status)).or_default();
            s.count += 1;
            s.seconds += took.as_secs_f64();
        }
    }

    /// Counts body bytes received.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts body bytes sent.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// An upload session opened.
    pub fn upload_started(&self) {
        self.uploads_started.fetch_add(1, Ordering::Relaxed);
        self.uploads_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An upload session ended: completed (true) or cancelled/expired (false).
    pub fn upload_ended(&self, completed: bool) {
        if completed {
            self.uploads_completed.fetch_add(1, Ordering::Relaxed);
        }
        self.uploads_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets the open-session gauge (from the database, at start).
    pub fn set_uploads_open(&self, n: u64) {
        self.uploads_open
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP wharf_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE wharf_http_requests_total counter\n");
        let snapshot: Vec<_> = self
            .requests
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        for ((route, method, status), s) in &snapshot {
            let _ = writeln!(
                out,
                "wharf_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP wharf_http_request_duration_seconds Time spent answering requests.\n");
        out.push_str("# TYPE wharf_http_request_duration_seconds summary\n");
        for ((route, method, status), s) in &snapshot {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            let _ = writeln!(
                out,
                "wharf_http_request_duration_seconds_sum{{{labels}}} {}",
                s.seconds
            );
            let _ = writeln!(
                out,
                "wharf_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let counters = [
            (
                "wharf_http_received_bytes_total",
                "Request body bytes received.",
                &self.bytes_in,
            ),
            (
                "wharf_http_sent_bytes_total",
                "Response body bytes sent.",
                &self.bytes_out,
            ),
            (
                "wharf_uploads_started_total",
                "Blob upload sessions started.",
                &self.uploads_started,
            ),
            (
                "wharf_uploads_completed_total",
                "Blob upload sessions completed.",
                &self.uploads_completed,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wharf_uploads_open Blob upload sessions open now.\n# TYPE wharf_uploads_open gauge\nwharf_uploads_open {}",
            self.uploads_open.load(Ordering::Relaxed).max(0)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_http_share_one_label() {
        let m = Metrics::default();
        let long = "X".repeat(300 << 10);
        for i in 0..500 {
            m.request("other", &format!("{long}{i}"), 405, Duration::ZERO);
        }
        m.request("manifest", "GET", 200, Duration::ZERO);
        let text = m.render();
        assert!(
            text.contains(
                "wharf_http_requests_total{route=\"other\",method=\"other\",status=\"405\"} 500"
            ),
            "{}",
            &text[..text.len().min(2000)]
        );
        assert!(text.contains("method=\"GET\""));
        assert!(text.len() < 4096, "{} bytes of metrics", text.len());
    }
}
