//! `fluxlit-bench-upstream`: the one upstream behind every row of `cargo xtask bench`.
//!
//! A minimal hyper HTTP/1.1 server (keep-alive, `TCP_NODELAY`) on a loopback port:
//!
//! - `GET /1k` → 200 with 1,024 bytes, `GET /100k` → 200 with 102,400 bytes (fixed bodies,
//!   `Content-Length`, no allocation per request);
//! - `POST` on any path → the body is read to the end and dropped, then 200 with
//!   `received N` (N in bytes);
//! - `GET /ws` with `Upgrade: websocket` → 101, then every text or binary message is echoed
//!   back unchanged (pings are answered, a close is answered and ends the connection);
//! - `GET /`, `/readyz` → 200 `ok`; anything else → 404.
//!
//! It prints `listening on ADDR` on stdout once it accepts connections, and runs until it is
//! killed (the harness kills its process group).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "fluxlit-bench-upstream",
    about = "HTTP + WebSocket-echo upstream for cargo xtask bench (loopback only)"
)]
struct Opts {
    /// Loopback address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Tokio worker threads (1 = a current-thread runtime).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Bodies shared by every response (cloning `Bytes` is a reference-count increment).
#[derive(Clone)]
struct Bodies {
    one_k: Bytes,
    hundred_k: Bytes,
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    if !opts.listen.ip().to_canonical().is_loopback() {
        eprintln!(
            "fluxlit-bench-upstream: {} is not a loopback address; the benchmark only listens on loopback",
            opts.listen
        );
        return std::process::ExitCode::from(2);
    }
    if let Err(e) = fluxlit_bench::raise_nofile_limit() {
        eprintln!("fluxlit-bench-upstream: cannot raise RLIMIT_NOFILE: {e}");
    }
    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fluxlit-bench-upstream: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(opts.listen)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxlit-bench-upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let bodies = Bodies {
        one_k: Bytes::from(vec![b'x'; 1024]),
        hundred_k: Bytes::from(vec![b'y'; 100 * 1024]),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("fluxlit-bench-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        let service = hyper::service::service_fn(move |req| {
            let bodies = bodies.clone();
            async move { Ok::<_, Infallible>(handle(req, &bodies).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn full(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

async fn handle(req: Request<Incoming>, bodies: &Bodies) -> Response<Body> {
    if req.method() == Method::POST {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        n += d.len() as u64;
                    }
                }
                Err(_) => {
                    return full(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad body\n"));
                }
            }
        }
        return full(StatusCode::OK, Bytes::from(format!("received {n}\n")));
    }
    match req.uri().path() {
        "/1k" => full(StatusCode::OK, bodies.one_k.clone()),
        "/100k" => full(StatusCode::OK, bodies.hundred_k.clone()),
        "/" | "/readyz" => full(StatusCode::OK, Bytes::from_static(b"ok\n")),
        "/ws" => websocket(req),
        _ => full(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    }
}

/// Answers a WebSocket handshake with 101 and echoes on the upgraded connection.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let wants_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"expected a WebSocket handshake\n"),
        );
    };
    if !wants_upgrade {
        return full(
            StatusCode::BAD_REQUEST,
            Bytes::from_static(b"expected Upgrade: websocket\n"),
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(fluxlit_bench::ws_config()),
        )
        .await;
        echo(ws).await;
    });
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(m @ (Message::Binary(_) | Message::Text(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            // tungstenite queues the pong / close reply itself; it is written on the next
            // read or flush.
            Ok(Message::Close(_)) => {
                let _ = ws.flush().await;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
