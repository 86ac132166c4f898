//! A small HTTP/1.1 client (hyper-util), URL helpers, latency statistics and bounded polling.

use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::report::round3;

/// The request body type of [`Http`]: any body that cannot fail.
pub type Body = BoxBody<Bytes, Infallible>;

/// An empty request body.
pub fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// From sending the request to the response headers.
    pub headers_after: Duration,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Answer {
    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client for `http://` URLs with a timeout per request (headers and body).
#[derive(Debug, Clone)]
pub struct Http {
    client: Client<HttpConnector, Body>,
    timeout: Duration,
}

impl Http {
    /// A client that keeps up to `max_idle` idle connections per host (keep-alive), with
    /// `timeout` for each request (until the end of the body).
    pub fn pooled(max_idle: usize, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(Duration::from_secs(2))
            .build(connector);
        Self { client, timeout }
    }

    /// A client that opens a new connection for every request (nothing is reused, so a
    /// connection the server closed cannot get in the way of the next check).
    pub fn fresh(timeout: Duration) -> Self {
        Self::pooled(0, timeout)
    }

    /// `GET url`.
    ///
    /// # Errors
    /// A transport failure or the timeout, as text.
    pub async fn get(&self, url: &str) -> Result<Answer, String> {
        let req = Request::get(url)
            .body(empty())
            .map_err(|e| format!("bad URL {url}: {e}"))?;
        self.send(req).await
    }

    /// Sends `req` and returns the response as soon as its headers arrived (within the
    /// timeout), with the time that took; the body is left to the caller.
    ///
    /// # Errors
    /// A transport failure or the timeout, as text.
    pub async fn open(
        &self,
        req: Request<Body>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Duration), String> {
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(r)) => Ok((r, start.elapsed())),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!(
                "no response headers within {:.1} s",
                self.timeout.as_secs_f64()
            )),
        }
    }

    /// Sends `req` and reads the whole response within the timeout.
    ///
    /// # Errors
    /// A transport failure or the timeout, as text.
    pub async fn send(&self, req: Request<Body>) -> Result<Answer, String> {
        let start = Instant::now();
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let headers_after = start.elapsed();
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {}", error_chain(&e)))?
                .to_bytes();
            Ok::<_, String>(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
                headers_after,
                elapsed: start.elapsed(),
            })
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no complete response within {:.1} s",
                self.timeout.as_secs_f64()
            )),
        }
    }
}

/// An error and its sources, joined by `: `.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Checks that `base` is an `http://` URL with a host (no query), and returns it without a
/// trailing slash.
///
/// # Errors
/// A message naming what is wrong.
pub fn base_url(base: &str) -> Result<String, String> {
    let uri: http::Uri = base
        .parse()
        .map_err(|e| format!("--base-url {base:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "--base-url {base:?}: only http:// is supported (point it at the gateway's port or a plain-HTTP edge)"
        ));
    }
    if uri.host().is_none() {
        return Err(format!("--base-url {base:?} has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("--base-url {base:?} must not have a query"));
    }
    Ok(base.trim_end_matches('/').to_owned())
}

/// `base` (no trailing slash) joined with `path` (a leading slash is added when missing).
pub fn join(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

/// The nearest-rank percentile `p` (0–100) of ascending `sorted` values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil();
    // Truncation is intended: rank is a small positive integer.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let idx = (rank.max(1.0) as usize - 1).min(sorted.len() - 1);
    sorted.get(idx).copied()
}

/// Latency statistics of `samples` in milliseconds: `{n, min, p50, p95, p99, max, mean}`
/// (values in ms, `null` when there are none).
pub fn latency_stats(samples: &[f64]) -> Value {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let r = |x: Option<f64>| x.map(round3);
    let mean = if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    };
    json!({
        "n": v.len(),
        "min": r(v.first().copied()),
        "p50": r(percentile(&v, 50.0)),
        "p95": r(percentile(&v, 95.0)),
        "p99": r(percentile(&v, 99.0)),
        "max": r(v.last().copied()),
        "mean": r(mean),
    })
}

/// `p50 X ms p95 Y ms p99 Z ms` from [`latency_stats`] output.
pub fn latency_text(stats: &Value) -> String {
    let f = |k: &str| {
        stats[k]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.1}"))
    };
    format!(
        "p50 {} ms p95 {} ms p99 {} ms",
        f("p50"),
        f("p95"),
        f("p99")
    )
}

/// Calls `check` every `interval` until it returns `Some`, at most until `timeout` has passed;
/// `None` when it never did.
pub async fn poll<T, F, Fut>(timeout: Duration, interval: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, check()).await {
            Ok(Some(v)) => return Some(v),
            Ok(None) => {}
            Err(_) => return None,
        }
        if tokio::time::Instant::now() + interval > deadline {
            return None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// GETs `url` every 100 ms until it answers `want`, at most for `timeout`; returns how long
/// that took.
///
/// # Errors
/// The last answer (status and first body line) or transport error.
pub async fn wait_status(
    http: &Http,
    url: &str,
    want: u16,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer");
    loop {
        match tokio::time::timeout_at(deadline, http.get(url)).await {
            Ok(Ok(a)) if a.status == want => return Ok(start.elapsed()),
            Ok(Ok(a)) => {
                last = format!("{} {}", a.status, crate::soak::first_line(&a.text()));
            }
            Ok(Err(e)) => last = e,
            Err(_) => {}
        }
        if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
            return Err(format!(
                "{last} (waited {:.1} s for {want})",
                start.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds from the command line as a duration (negative and non-finite values become 0,
/// anything above a day is capped at a day).
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(86_400.0))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        let s = latency_stats(&[3.0, 1.0, 2.0]);
        assert_eq!(s["p50"], 2.0);
        assert_eq!(s["max"], 3.0);
        assert_eq!(latency_text(&s), "p50 2.0 ms p95 3.0 ms p99 3.0 ms");
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("http://127.0.0.1:8000/").as_deref(),
            Ok("http://127.0.0.1:8000")
        );
        assert_eq!(
            base_url("http://127.0.0.1:8000/app").as_deref(),
            Ok("http://127.0.0.1:8000/app")
        );
        assert!(base_url("https://example.com").is_err());
        assert!(base_url("127.0.0.1:8000").is_err());
        assert_eq!(join("http://h/app/", "api/x"), "http://h/app/api/x");
        assert_eq!(join("http://h", "/api/x"), "http://h/api/x");
    }

    #[tokio::test]
    async fn poll_is_bounded() {
        let start = Instant::now();
        let r: Option<()> = poll(
            Duration::from_millis(200),
            Duration::from_millis(20),
            || async { None },
        )
        .await;
        assert!(r.is_none());
        assert!(start.elapsed() < Duration::from_secs(2));
        let mut n = 0;
        let r = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await;
        assert_eq!(r, Some(3));
    }
}
