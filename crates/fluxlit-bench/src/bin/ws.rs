//! `fluxlit-bench-ws`: the WebSocket load tool of `cargo xtask bench` (tokio-tungstenite).
//!
//! Modes (each prints one JSON object per line on stdout; latencies in microseconds, rates per
//! second):
//!
//! - `rtt`: one connection, one message in flight: round-trip latency of an echo.
//! - `echo --conns N`: N connections, each with one message in flight: round trips/s.
//! - `connect --concurrency C`: TCP connect + WebSocket handshake (then a close), repeated:
//!   handshakes/s and the connect + handshake latency.
//! - `hold --conns N`: opens N connections and keeps them idle; prints `{"event":"open",…}`,
//!   waits for a line on stdin (or `--max-hold-s`), echoes one message on each connection to
//!   prove the tunnel still works, closes them all and prints `{"event":"closed",…}`.
//!
//! Every loop is bounded in count (`--max-*`) and in time (`--duration-s`, `--max-hold-s`,
//! timeouts on every wait), and only loopback addresses are accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use fluxlit_bench::Latencies;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "fluxlit-bench-ws",
    about = "WebSocket load tool for cargo xtask bench (loopback only, bounded)"
)]
struct Opts {
    /// The WebSocket URL, `ws://127.0.0.1:PORT/ws` (loopback only).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8000/ws")]
    url: String,
    /// Tokio worker threads (1 = a current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Message size in bytes (binary messages).
    #[arg(long, global = true, default_value_t = 64)]
    size: usize,
    /// Timeout of every single wait (connect, handshake, one echo), in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    timeout_s: f64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Round-trip latency on one connection.
    Rtt {
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration_s: f64,
        /// At most this many round trips.
        #[arg(long, default_value_t = 2_000_000)]
        max_round_trips: u64,
    },
    /// Echo throughput on N connections, one message in flight on each.
    Echo {
        /// Number of connections.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration_s: f64,
        /// At most this many round trips in total.
        #[arg(long, default_value_t = 20_000_000)]
        max_round_trips: u64,
    },
    /// Connect + handshake rate.
    Connect {
        /// Connections being set up at the same time.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration_s: f64,
        /// At most this many handshakes in total.
        #[arg(long, default_value_t = 20_000)]
        max_handshakes: u64,
    },
    /// Open N connections and hold them idle until told to close (a line on stdin).
    Hold {
        /// Number of connections to open.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Connections being opened at the same time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Give up opening after this long, in seconds.
        #[arg(long, default_value_t = 120.0)]
        open_timeout_s: f64,
        /// Close everything after this long even without a line on stdin, in seconds.
        #[arg(long, default_value_t = 300.0)]
        max_hold_s: f64,
    },
}

type Ws = WebSocketStream<TcpStream>;

/// Where to connect: the checked loopback address plus the URL for the handshake.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    url: String,
    timeout: Duration,
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    match run(opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxlit-bench-ws: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(opts: Opts) -> Result<(), String> {
    let host_port = opts
        .url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("{} is not a ws:// URL", opts.url))?;
    let addr = fluxlit_bench::require_loopback(host_port)?;
    if let Err(e) = fluxlit_bench::raise_nofile_limit() {
        eprintln!("fluxlit-bench-ws: cannot raise RLIMIT_NOFILE: {e}");
    }
    let timeout = secs(opts.timeout_s)?;
    let target = Target {
        addr,
        url: opts.url.clone(),
        timeout,
    };
    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let payload = Bytes::from(vec![b'w'; opts.size]);
    let out = runtime.block_on(async move {
        match opts.mode {
            Mode::Rtt {
                duration_s,
                max_round_trips,
            } => {
                echo(
                    &target,
                    payload,
                    1,
                    secs(duration_s)?,
                    max_round_trips,
                    "rtt",
                )
                .await
            }
            Mode::Echo {
                conns,
                duration_s,
                max_round_trips,
            } => {
                echo(
                    &target,
                    payload,
                    conns.max(1),
                    secs(duration_s)?,
                    max_round_trips,
                    "echo",
                )
                .await
            }
            Mode::Connect {
                concurrency,
                duration_s,
                max_handshakes,
            } => {
                connect_rate(
                    &target,
                    concurrency.max(1),
                    secs(duration_s)?,
                    max_handshakes,
                )
                .await
            }
            Mode::Hold {
                conns,
                concurrency,
                open_timeout_s,
                max_hold_s,
            } => {
                hold(
                    &target,
                    payload,
                    conns,
                    concurrency.max(1),
                    secs(open_timeout_s)?,
                    secs(max_hold_s)?,
                )
                .await
            }
        }
    })?;
    println!("{out}");
    Ok(())
}

fn secs(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("invalid duration {s} s: {e}"))
}

/// TCP connect (`TCP_NODELAY`) and WebSocket handshake, each within the target's timeout.
async fn open(t: &Target) -> Result<Ws, String> {
    let stream = tokio::time::timeout(t.timeout, TcpStream::connect(t.addr))
        .await
        .map_err(|_| format!("connect to {} timed out", t.addr))?
        .map_err(|e| format!("connect to {}: {e}", t.addr))?;
    let _ = stream.set_nodelay(true);
    let (ws, resp) = tokio::time::timeout(
        t.timeout,
        tokio_tungstenite::client_async_with_config(
            t.url.as_str(),
            stream,
            Some(fluxlit_bench::ws_config()),
        ),
    )
    .await
    .map_err(|_| format!("WebSocket handshake with {} timed out", t.url))?
    .map_err(|e| format!("WebSocket handshake with {}: {e}", t.url))?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("handshake answered {}", resp.status()));
    }
    Ok(ws)
}

/// Sends `payload` and waits for its echo (skipping pings/pongs), within `timeout`.
async fn round_trip(ws: &mut Ws, payload: &Bytes, timeout: Duration) -> Result<(), String> {
    let fut = async {
        ws.send(Message::Binary(payload.clone()))
            .await
            .map_err(|e| format!("send: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) if b.len() == payload.len() => return Ok(()),
                Some(Ok(Message::Binary(b))) => {
                    return Err(format!(
                        "echo of {} bytes came back as {} bytes",
                        payload.len(),
                        b.len()
                    ));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => return Err(format!("unexpected message {other:?}")),
                Some(Err(e)) => return Err(format!("receive: {e}")),
                None => return Err("connection closed".into()),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no echo within {} s", timeout.as_secs_f64()))?
}

/// Sends a close frame and waits (bounded) for the peer's close and the end of the stream.
async fn close(mut ws: Ws, timeout: Duration) -> bool {
    let fut = async {
        if ws.close(None).await.is_err() {
            return false;
        }
        while let Some(m) = ws.next().await {
            if m.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    n / elapsed.as_secs_f64().max(1e-9)
}

async fn echo(
    t: &Target,
    payload: Bytes,
    conns: usize,
    duration: Duration,
    max_round_trips: u64,
    mode: &str,
) -> Result<serde_json::Value, String> {
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(open(t).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(conns);
    for mut ws in sockets {
        let payload = payload.clone();
        let done = Arc::clone(&done);
        let timeout = t.timeout;
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::with_capacity(64 * 1024);
            let mut error = None;
            let mut last = Instant::now();
            while last < deadline && done.load(Ordering::Relaxed) < max_round_trips {
                let t0 = Instant::now();
                if let Err(e) = round_trip(&mut ws, &payload, timeout).await {
                    error = Some(e);
                    break;
                }
                last = Instant::now();
                lat.record(last - t0);
                done.fetch_add(1, Ordering::Relaxed);
            }
            let closed = error.is_none() && close(ws, timeout).await;
            (lat, error, closed, last)
        }));
    }
    let mut all = Latencies::with_capacity(1024 * 1024);
    let mut errors = Vec::new();
    let mut unclean = 0u64;
    let mut end = start;
    for task in tasks {
        let (lat, error, closed, last) = task.await.map_err(|e| format!("echo task: {e}"))?;
        all.merge(lat);
        if let Some(e) = error {
            errors.push(e);
        } else if !closed {
            unclean += 1;
        }
        end = end.max(last);
    }
    // The measured window ends with the last completed round trip (closing is not counted).
    let elapsed = end - start;
    let n = all.len() as u64;
    let mut v = serde_json::json!({
        "mode": mode,
        "conns": conns,
        "message_bytes": payload.len(),
        "round_trips": n,
        "elapsed_s": elapsed.as_secs_f64(),
        "rate_per_s": rate(n, elapsed),
        "errors": errors.len(),
        "first_error": errors.first(),
        "unclean_closes": unclean,
    });
    merge(&mut v, all.summary_json());
    Ok(v)
}

async fn connect_rate(
    t: &Target,
    concurrency: usize,
    duration: Duration,
    max_handshakes: u64,
) -> Result<serde_json::Value, String> {
    let started = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let t = t.clone();
        let started = Arc::clone(&started);
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::with_capacity(16 * 1024);
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline
                && started.fetch_add(1, Ordering::Relaxed) < max_handshakes
            {
                let t0 = Instant::now();
                match open(&t).await {
                    Ok(ws) => {
                        lat.record(t0.elapsed());
                        close(ws, t.timeout).await;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        // A refused or failing target must not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut all = Latencies::with_capacity(64 * 1024);
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (lat, e, fe) = task.await.map_err(|e| format!("connect task: {e}"))?;
        all.merge(lat);
        errors += e;
        if first_error.is_none() {
            first_error = fe;
        }
    }
    let elapsed = start.elapsed();
    let n = all.len() as u64;
    let mut v = serde_json::json!({
        "mode": "connect",
        "concurrency": concurrency,
        "handshakes": n,
        "elapsed_s": elapsed.as_secs_f64(),
        "rate_per_s": rate(n, elapsed),
        "errors": errors,
        "first_error": first_error,
    });
    merge(&mut v, all.summary_json());
    Ok(v)
}

async fn hold(
    t: &Target,
    payload: Bytes,
    conns: usize,
    concurrency: usize,
    open_timeout: Duration,
    max_hold: Duration,
) -> Result<serde_json::Value, String> {
    let start = Instant::now();
    let deadline = start + open_timeout;
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let t = t.clone();
        let permits = Arc::clone(&permits);
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::timeout_at(deadline.into(), open(&t))
                .await
                .ok()
                .and_then(Result::ok)
        }));
    }
    let mut held = Vec::with_capacity(conns);
    for task in tasks {
        if let Ok(Some(ws)) = task.await {
            held.push(ws);
        }
    }
    let opened = held.len();
    let open_s = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "event": "open",
            "requested": conns,
            "opened": opened,
            "failed": conns - opened,
            "open_s": open_s,
        })
    );

    // Hold until a line (or EOF) on stdin, at most `max_hold`.
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let told = tokio::time::timeout(max_hold, stdin.read_line(&mut line))
        .await
        .is_ok();

    // Prove every tunnel still carries data, then close them all.
    let verify_start = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency));
    let timeout = t.timeout;
    let mut tasks = Vec::with_capacity(opened);
    for mut ws in held {
        let permits = Arc::clone(&permits);
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.ok();
            let echoed = round_trip(&mut ws, &payload, timeout).await.is_ok();
            let closed = close(ws, timeout).await;
            (echoed, closed)
        }));
    }
    let (mut echoed, mut closed) = (0usize, 0usize);
    for task in tasks {
        if let Ok((e, c)) = task.await {
            echoed += usize::from(e);
            closed += usize::from(c);
        }
    }
    Ok(serde_json::json!({
        "event": "closed",
        "requested": conns,
        "opened": opened,
        "open_s": open_s,
        "told_to_close": told,
        "echoed": echoed,
        "closed_cleanly": closed,
        "close_s": verify_start.elapsed().as_secs_f64(),
    }))
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}
