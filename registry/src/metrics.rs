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
    /// Mirror counters by (metric, upstream name, status or 0); upstream names come from the
    /// configuration and statuses from HTTP's range, so the set is bounded.
    mirror: Mutex<BTreeMap<(MirrorMetric, String, u16), u64>>,
    /// The last `ratelimit-remaining` an upstream announced.
    mirror_ratelimit: Mutex<BTreeMap<String, u64>>,
}

/// What a mirror counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MirrorMetric {
    /// A manifest or blob served from what was kept.
    Hit,
    /// One fetched from the upstream for a client.
    Miss,
    /// Kept content served because the upstream could not answer.
    Stale,
    /// Requests to the upstream, by status (0: no answer).
    UpstreamRequest,
    /// Bytes received from the upstream.
    UpstreamBytes,
    /// Bytes of kept content sent to clients.
    CachedBytesServed,
    /// 429 answers of the upstream.
    Throttled,
}

impl MirrorMetric {
    fn name(self) -> (&'static str, &'static str) {
        match self {
            MirrorMetric::Hit => (
                "wharf_mirror_hits_total",
                "Manifests and blobs a mirror served from what it keeps.",
            ),
            MirrorMetric::Miss => (
                "wharf_mirror_misses_total",
                "Manifests and blobs a mirror fetched from its upstream for a client.",
            ),
            MirrorMetric::Stale => (
                "wharf_mirror_stale_served_total",
                "Kept manifests served because the upstream could not answer.",
            ),
            MirrorMetric::UpstreamRequest => (
                "wharf_mirror_upstream_requests_total",
                "Requests to upstreams, by answer status (0: no answer).",
            ),
            MirrorMetric::UpstreamBytes => (
                "wharf_mirror_upstream_bytes_total",
                "Blob bytes received from upstreams.",
            ),
            MirrorMetric::CachedBytesServed => (
                "wharf_mirror_cached_bytes_served_total",
                "Blob bytes a mirror served from what it keeps.",
            ),
            MirrorMetric::Throttled => (
                "wharf_mirror_throttled_total",
                "429 answers from upstreams.",
            ),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct RequestStats {
    count: u64,
    seconds: f64,
}

impl Metrics {
    /// Adds `n` to a mirror counter of `upstream` (`status` only for upstream requests).
    pub fn mirror(&self, what: MirrorMetric, upstream: &str, status: u16, n: u64) {
        if let Ok(mut m) = self.mirror.lock() {
            *m.entry((what, upstream.to_owned(), status)).or_default() += n;
        }
    }

    /// Records an upstream's `ratelimit-remaining`.
    pub fn mirror_ratelimit(&self, upstream: &str, remaining: u64) {
        if let Ok(mut m) = self.mirror_ratelimit.lock() {
            m.insert(upstream.to_owned(), remaining);
        }
    }

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
        self.render_mirror(&mut out);
        out
    }

    fn render_mirror(&self, out: &mut String) {
        let snapshot: Vec<_> = self
            .mirror
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut last = None;
        for ((what, upstream, status), v) in snapshot {
            let (name, help) = what.name();
            if last != Some(what) {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                last = Some(what);
            }
            if what == MirrorMetric::UpstreamRequest {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{upstream}\",status=\"{status}\"}} {v}"
                );
            } else {
                let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {v}");
            }
        }
        let limits: Vec<_> = self
            .mirror_ratelimit
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        if !limits.is_empty() {
            let name = "wharf_mirror_ratelimit_remaining";
            let _ = writeln!(
                out,
                "# HELP {name} Pulls the upstream says are left (its ratelimit-remaining).\n# TYPE {name} gauge"
            );
            for (upstream, v) in limits {
                let _ = writeln!(out, "{name}{{upstream=\"{upstream}\"}} {v}");
            }
        }
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
