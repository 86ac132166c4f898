//! The scenarios and the load generators: `wrk` (Debian) for HTTP and `fluxlit-bench-ws` for
//! WebSockets. Every run is bounded in time (the tool's duration, plus a hard kill) and in
//! count (a per-thread request cap in the wrk script, `--max-*` for the WebSocket tool).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::procs::{command, output_bounded};
use crate::{Failed, Result};

/// Load-generator threads: wrk `-t` and the WebSocket tool's tokio workers. One thread leaves
/// the second core to the server side (proxy + upstream), see docs/performance.md.
pub(crate) const LOADGEN_THREADS: usize = 1;

/// WebSocket message size, in bytes.
pub(crate) const WS_MESSAGE_BYTES: usize = 64;

/// Concurrent connection set-ups in the connect + handshake scenario.
pub(crate) const WS_CONNECT_CONCURRENCY: usize = 4;

/// Requests per second no row can reach on this machine; times the duration it is the per-run
/// count bound.
const MAX_RATE_PER_S: f64 = 400_000.0;

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub(crate) enum Scenario {
    Get1k16,
    Get1k64,
    Get100k16,
    Get100k64,
    Post64k16,
    /// GET 1 KiB under `/api`, 16 connections: the API hop, prefix stripped.
    ApiGet1k16,
    WsRtt,
    WsEcho16,
    WsConnect,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 9] = [
        Scenario::Get1k16,
        Scenario::Get1k64,
        Scenario::Get100k16,
        Scenario::Get100k64,
        Scenario::Post64k16,
        Scenario::ApiGet1k16,
        Scenario::WsRtt,
        Scenario::WsEcho16,
        Scenario::WsConnect,
    ];

    pub(crate) fn id(self) -> &'static str {
        match self {
            Scenario::Get1k16 => "get-1k-16c",
            Scenario::Get1k64 => "get-1k-64c",
            Scenario::Get100k16 => "get-100k-16c",
            Scenario::Get100k64 => "get-100k-64c",
            Scenario::Post64k16 => "post-64k-16c",
            Scenario::ApiGet1k16 => "api-get-1k-16c",
            Scenario::WsRtt => "ws-rtt-1c",
            Scenario::WsEcho16 => "ws-echo-16c",
            Scenario::WsConnect => "ws-connect",
        }
    }

    pub(crate) fn title(self) -> String {
        match self {
            Scenario::Get1k16 => "GET 1 KiB, 16 connections".into(),
            Scenario::Get1k64 => "GET 1 KiB, 64 connections".into(),
            Scenario::Get100k16 => "GET 100 KiB, 16 connections".into(),
            Scenario::Get100k64 => "GET 100 KiB, 64 connections".into(),
            Scenario::Post64k16 => "POST 64 KiB, 16 connections".into(),
            Scenario::ApiGet1k16 => {
                "API GET 1 KiB under /api (prefix stripped), 16 connections".into()
            }
            Scenario::WsRtt => {
                format!("WebSocket echo round trip, 1 connection, {WS_MESSAGE_BYTES} B messages")
            }
            Scenario::WsEcho16 => {
                format!("WebSocket echo throughput, 16 connections, {WS_MESSAGE_BYTES} B messages")
            }
            Scenario::WsConnect => format!(
                "WebSocket connect + handshake (+ close), {WS_CONNECT_CONCURRENCY} at a time"
            ),
        }
    }

    /// What the rate counts.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Scenario::WsRtt | Scenario::WsEcho16 => "round trips/s",
            Scenario::WsConnect => "handshakes/s",
            _ => "req/s",
        }
    }

    fn http(self) -> Option<(&'static str, usize, u64)> {
        // (path, connections, minimum bytes per response: the body)
        match self {
            Scenario::Get1k16 => Some(("/1k", 16, 1024)),
            Scenario::Get1k64 => Some(("/1k", 64, 1024)),
            Scenario::Get100k16 => Some(("/100k", 16, 100 * 1024)),
            Scenario::Get100k64 => Some(("/100k", 64, 100 * 1024)),
            Scenario::Post64k16 => Some(("/upload", 16, 0)),
            Scenario::ApiGet1k16 => Some(("/api/1k", 16, 1024)),
            _ => None,
        }
    }

    /// An HTTP scenario (wrk), not a WebSocket one.
    pub(crate) fn is_http(self) -> bool {
        self.http().is_some()
    }
}

/// One measurement: a scenario against a row for one duration.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Sample {
    /// Completed requests / round trips / handshakes per second.
    pub(crate) rate: f64,
    /// Median latency, in microseconds.
    pub(crate) p50_us: f64,
    /// 99th percentile latency, in microseconds.
    pub(crate) p99_us: f64,
    /// Completed operations.
    pub(crate) count: u64,
    /// Failed operations (non-2xx, connect/read/write errors, timeouts, short responses).
    pub(crate) errors: u64,
    /// The first error the tool reported, if it says.
    pub(crate) first_error: Option<String>,
    /// Measured window, in seconds.
    pub(crate) elapsed_s: f64,
    /// CPU used meanwhile by processes other than the bench's, in percent of the machine.
    pub(crate) foreign_cpu_pct: f64,
    /// CPU time the proxy (for `direct`: the upstream) used per completed operation, in
    /// microseconds (from `/proc/PID/stat`, 10 ms ticks).
    pub(crate) server_cpu_us_per_op: f64,
}

/// `value` as a Lua string literal (double-quoted): `\` and `"` escaped, every byte outside
/// printable ASCII as a `\ddd` decimal escape (Lua 5.1 §2.1, which wrk's LuaJIT reads), so a
/// header value cannot end the literal or the line.
pub(crate) fn lua_quote(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for b in value.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The wrk script: POST of 64 KiB when `post`, `headers` (name, value) on every request, a
/// per-thread cap of `max_requests` and a `BENCHJSON` summary line.
fn lua_script(post: bool, max_requests: u64, headers: &[(String, String)]) -> String {
    let mut setup = if post {
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"p\", 65536)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n".to_owned()
    } else {
        String::new()
    };
    for (name, value) in headers {
        setup.push_str(&format!(
            "wrk.headers[{}] = {}\n",
            lua_quote(name),
            lua_quote(value)
        ));
    }
    format!(
        r#"-- Generated by `cargo xtask bench`: a per-thread request cap and a JSON summary line.
{setup}local max_requests = {max_requests}
local sent = 0
local req
function init(args)
  req = wrk.format()
end
function request()
  sent = sent + 1
  if sent > max_requests then
    wrk.thread:stop()
  end
  return req
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn count(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f as u64)))
        .unwrap_or(0)
}

/// Runs one scenario against `port` for `duration`; `direct`: `port` is the upstream itself,
/// so the API scenario asks for its path without the `/api` prefix a proxy strips.
pub(crate) fn run(
    scenario: Scenario,
    port: u16,
    direct: bool,
    duration: Duration,
    bin: &Path,
    work: &Path,
) -> Result<Sample> {
    match scenario.http() {
        Some((path, conns, min_bytes)) => http(
            port,
            if direct {
                path.strip_prefix("/api").unwrap_or(path)
            } else {
                path
            },
            conns,
            min_bytes,
            scenario == Scenario::Post64k16,
            duration,
            work,
            &[],
        ),
        None => ws(scenario, port, duration, bin),
    }
}

/// `wrk` with `conns` connections on `path` for `duration` (`POST` of 64 KiB when `post`),
/// `headers` (name, value) on every request (the authentication section's `Cookie` or
/// `Authorization`); responses shorter than `min_bytes` count as errors.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_arguments
)]
pub(crate) fn http(
    port: u16,
    path: &str,
    conns: usize,
    min_bytes: u64,
    post: bool,
    duration: Duration,
    work: &Path,
    headers: &[(String, String)],
) -> Result<Sample> {
    let max_requests = (MAX_RATE_PER_S * duration.as_secs_f64()).ceil() as u64;
    let script = work.join(if post { "wrk-post.lua" } else { "wrk-get.lua" });
    std::fs::write(&script, lua_script(post, max_requests, headers))
        .map_err(|e| Failed(format!("cannot write {}: {e}", script.display())))?;
    // wrk takes whole seconds (`-d1s`; it has no millisecond unit).
    let mut cmd = command("wrk");
    cmd.arg(format!("-t{LOADGEN_THREADS}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}{path}"));
    let out = output_bounded("wrk", cmd, duration + Duration::from_secs(20))?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("BENCHJSON "))
        .ok_or_else(|| Failed(format!("wrk printed no summary: {}", out.trim())))?;
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Failed(format!("cannot parse wrk's summary {line:?}: {e}")))?;
    let requests = count(&v, "requests");
    let elapsed_s = num(&v, "duration_us") / 1e6;
    let mut errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| count(&v, k))
        .sum::<u64>();
    let mut first_error = (errors > 0).then(|| {
        format!(
            "wrk errors: connect {}, read {}, write {}, non-2xx {}, timeout {}",
            count(&v, "connect"),
            count(&v, "read"),
            count(&v, "write"),
            count(&v, "status"),
            count(&v, "timeout")
        )
    });
    let bytes = count(&v, "bytes");
    if requests > 0 && bytes / requests < min_bytes {
        errors += requests;
        first_error.get_or_insert(format!(
            "responses average {} bytes, less than the {min_bytes}-byte body",
            bytes / requests
        ));
    }
    if requests >= max_requests * LOADGEN_THREADS as u64 {
        first_error.get_or_insert("the per-run request cap was reached".into());
    }
    Ok(Sample {
        rate: requests as f64 / elapsed_s.max(1e-9),
        p50_us: num(&v, "p50_us"),
        p99_us: num(&v, "p99_us"),
        count: requests,
        errors,
        first_error,
        elapsed_s,
        foreign_cpu_pct: 0.0,
        server_cpu_us_per_op: 0.0,
    })
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ws(scenario: Scenario, port: u16, duration: Duration, bin: &Path) -> Result<Sample> {
    let secs = format!("{:.3}", duration.as_secs_f64());
    let max = ((MAX_RATE_PER_S * duration.as_secs_f64()).ceil() as u64).to_string();
    let mut cmd: Command = command(bin.join("fluxlit-bench-ws"));
    cmd.args(["--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--threads", &LOADGEN_THREADS.to_string()])
        .args(["--size", &WS_MESSAGE_BYTES.to_string()])
        .args(["--timeout-s", "5"]);
    match scenario {
        Scenario::WsRtt => {
            cmd.args(["rtt", "--duration-s", &secs, "--max-round-trips", &max]);
        }
        Scenario::WsEcho16 => {
            cmd.args(["echo", "--conns", "16", "--duration-s", &secs])
                .args(["--max-round-trips", &max]);
        }
        _ => {
            // Connection set-ups are bounded harder: each leaves a TIME_WAIT socket behind.
            let cap = ((20_000.0 * duration.as_secs_f64()).ceil() as u64).min(30_000);
            cmd.args(["connect", "--duration-s", &secs])
                .args(["--concurrency", &WS_CONNECT_CONCURRENCY.to_string()])
                .args(["--max-handshakes", &cap.to_string()]);
        }
    }
    let out = output_bounded("fluxlit-bench-ws", cmd, duration + Duration::from_secs(60))?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| {
            Failed(format!(
                "fluxlit-bench-ws printed no result: {}",
                out.trim()
            ))
        })?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Failed(format!("cannot parse {line:?}: {e}")))?;
    let done = count(&v, "round_trips").max(count(&v, "handshakes"));
    Ok(Sample {
        rate: num(&v, "rate_per_s"),
        p50_us: num(&v, "p50_us"),
        p99_us: num(&v, "p99_us"),
        count: done,
        errors: count(&v, "errors"),
        first_error: v
            .get("first_error")
            .and_then(|e| e.as_str())
            .map(str::to_owned),
        elapsed_s: num(&v, "elapsed_s"),
        foreign_cpu_pct: 0.0,
        server_cpu_us_per_op: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_strings_are_quoted() {
        assert_eq!(lua_quote("Cookie"), "\"Cookie\"");
        assert_eq!(
            lua_quote("fluxlit_session=a.b-c_d~e"),
            "\"fluxlit_session=a.b-c_d~e\""
        );
        assert_eq!(lua_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lua_quote("x\ny\r\u{e9}"), r#""x\010y\013\195\169""#);
    }

    #[test]
    fn scripts_set_the_headers() {
        let plain = lua_script(false, 10, &[]);
        assert!(!plain.contains("wrk.headers"), "{plain}");
        assert!(plain.contains("local max_requests = 10\n"), "{plain}");
        let auth = lua_script(
            false,
            10,
            &[("Authorization".to_owned(), "Bearer a.b.c".to_owned())],
        );
        assert!(
            auth.contains("wrk.headers[\"Authorization\"] = \"Bearer a.b.c\"\nlocal max_requests"),
            "{auth}"
        );
        let post = lua_script(true, 10, &[("Cookie".to_owned(), "s=1".to_owned())]);
        assert!(
            post.contains("application/octet-stream\"\nwrk.headers[\"Cookie\"] = \"s=1\"\n"),
            "{post}"
        );
    }
}
