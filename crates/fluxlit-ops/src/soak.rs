//! `soak-http`, `soak-readyz`, `soak-metrics`: many GETs against a base URL, bounded in count
//! and time, with the status-code mix and latency percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::json;

use crate::net::{self, Http};
use crate::report::Report;

/// Which answers a soak accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Only 2xx (`soak-http`, `soak-readyz --require-2xx`).
    Only2xx,
    /// Any status; only transport errors fail (`soak-http --allow-non-2xx`).
    AnyStatus,
    /// 200 and 503, the two answers of a readiness endpoint (`soak-readyz`).
    Readiness,
}

impl Accept {
    fn accepts(self, status: u16) -> bool {
        match self {
            Self::Only2xx => (200..300).contains(&status),
            Self::AnyStatus => true,
            Self::Readiness => status == 200 || status == 503,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Only2xx => "2xx",
            Self::AnyStatus => "any status",
            Self::Readiness => "200 or 503",
        }
    }
}

/// Options of a soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// `http://host:port[/prefix]`.
    pub base_url: String,
    /// Path requested under the base URL, e.g. `/api/healthz`.
    pub path: String,
    /// Number of GETs.
    pub count: usize,
    /// GETs in flight at once (each worker keeps its keep-alive connection).
    pub concurrency: usize,
    /// Time bound of the whole soak, in seconds; GETs not started by then count as missing.
    pub max_seconds: f64,
    /// Timeout of one GET (headers and body), in seconds.
    pub timeout_seconds: f64,
    /// Which statuses pass.
    pub accept: Accept,
}

/// Runs `count` GETs of `{base_url}{path}` with `concurrency` workers; the report is named
/// `name` and holds the status mix (`statuses`: code or `error` → count) and the latency
/// percentiles in ms (`latency_ms`).
pub async fn soak(name: &str, opts: &SoakOptions) -> Report {
    let mut report = Report::new(name);
    let start = Instant::now();
    let base = match net::base_url(&opts.base_url) {
        Ok(b) => b,
        Err(e) => {
            report.fail("base URL", e);
            report.elapsed = start.elapsed();
            return report;
        }
    };
    let url = net::join(&base, &opts.path);
    let concurrency = opts.concurrency.clamp(1, 256);
    let http = Http::pooled(concurrency, net::secs(opts.timeout_seconds));
    let deadline = tokio::time::Instant::now() + net::secs(opts.max_seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (http, url, next) = (http.clone(), url.clone(), next.clone());
        let count = opts.count;
        workers.push(tokio::spawn(async move {
            let mut out: Vec<(Result<u16, String>, f64)> = Vec::new();
            loop {
                if next.fetch_add(1, Ordering::Relaxed) >= count
                    || tokio::time::Instant::now() >= deadline
                {
                    return out;
                }
                let t = Instant::now();
                // The whole soak's deadline bounds a single slow GET as well.
                let r = match tokio::time::timeout_at(deadline, http.get(&url)).await {
                    Ok(r) => r.map(|a| a.status),
                    Err(_) => Err("the soak's time bound ran out during the GET".to_owned()),
                };
                out.push((r, t.elapsed().as_secs_f64() * 1000.0));
            }
        }));
    }
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(opts.count.min(1_000_000));
    let mut rejected = 0u64;
    let mut errors: Vec<String> = Vec::new();
    for w in workers {
        let Ok(results) = w.await else {
            report.fail("worker", "a soak worker panicked");
            continue;
        };
        for (r, ms) in results {
            latencies.push(ms);
            match r {
                Ok(s) => {
                    *statuses.entry(s.to_string()).or_default() += 1;
                    if !opts.accept.accepts(s) {
                        rejected += 1;
                    }
                }
                Err(e) => {
                    *statuses.entry("error".to_owned()).or_default() += 1;
                    if errors.len() < 3 {
                        errors.push(e);
                    }
                }
            }
        }
    }
    let done = latencies.len();
    let stats = net::latency_stats(&latencies);
    let elapsed = start.elapsed();
    let mix = statuses
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(" ");
    report.check(
        format!("{} GETs within {:.0} s", opts.count, opts.max_seconds),
        done == opts.count,
        format!("{done} done"),
    );
    let n_errors = statuses.get("error").copied().unwrap_or(0);
    report.check(
        "no transport errors",
        n_errors == 0,
        if errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{n_errors} errors, e.g. {}", errors.join(" / "))
        },
    );
    report.check(
        format!("every answer {}", opts.accept.describe()),
        rejected == 0,
        format!("{rejected} other answers; mix {mix}"),
    );
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    report.summary = format!(
        "{done}/{} GET {} [{mix}] {} ({rate:.0}/s, concurrency {concurrency})",
        opts.count,
        opts.path,
        net::latency_text(&stats)
    );
    report.set("url", url);
    report.set("count", opts.count);
    report.set("completed", done);
    report.set("concurrency", concurrency);
    report.set("statuses", json!(statuses));
    report.set("latency_ms", stats);
    report.set("requests_per_s", crate::report::round3(rate));
    report.elapsed = elapsed;
    report
}

/// `soak-metrics`: `count` GETs of the metrics path; each must be 200 and contain
/// `fluxlit_gateway_requests_total`.
pub async fn metrics(base_url: &str, path: &str, count: usize, timeout_seconds: f64) -> Report {
    const SERIES: &str = "fluxlit_gateway_requests_total";
    let mut report = Report::new("soak-metrics");
    let start = Instant::now();
    let base = match net::base_url(base_url) {
        Ok(b) => b,
        Err(e) => {
            report.fail("base URL", e);
            return report;
        }
    };
    let url = net::join(&base, path);
    let http = Http::pooled(1, net::secs(timeout_seconds));
    let mut latencies = Vec::new();
    let mut bad = Vec::new();
    let mut series = 0usize;
    let mut bytes = 0usize;
    for _ in 0..count.max(1) {
        match http.get(&url).await {
            Ok(a) => {
                latencies.push(a.elapsed.as_secs_f64() * 1000.0);
                let text = a.text();
                bytes = a.body.len();
                series = text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .count();
                if a.status != 200 {
                    bad.push(format!("status {}: {}", a.status, first_line(&text)));
                } else if !text.contains(SERIES) {
                    bad.push(format!("200 without {SERIES} ({} bytes)", a.body.len()));
                }
            }
            Err(e) => bad.push(e),
        }
    }
    let stats = net::latency_stats(&latencies);
    report.check(
        format!("200 with {SERIES}"),
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} of {}", count.max(1), count.max(1))
        } else {
            format!("{} bad, e.g. {}", bad.len(), bad[0])
        },
    );
    report.summary = format!(
        "{} GET {path}: {series} samples, {bytes} bytes, {}",
        count.max(1),
        net::latency_text(&stats)
    );
    report.set("url", url);
    report.set("samples", series);
    report.set("body_bytes", bytes);
    report.set("latency_ms", stats);
    report.elapsed = start.elapsed();
    report
}

/// The first line of `text`, at most 200 characters (for failure details).
pub(crate) fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}
