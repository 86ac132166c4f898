//! A real HTTP/1.1 + WebSocket upstream with scripted behaviours, bound on 127.0.0.1.
//!
//! Routes:
//! - `/echo…` (any method): 200, JSON `{method, uri, headers: [[name, value]…], body_len,
//!   body_fnv}` describing the request as received.
//! - `/status/{code}`: that status, body `status {code}` (none for 1xx/204/304).
//! - `/big?bytes=N`: N bytes of a repeating pattern, with `content-length`.
//! - `/chunked?bytes=N`: the same without `content-length` (chunked).
//! - `/stream`: a chunked body that sends `first\n`, then waits until [`TestUpstream::release`]
//!   is called before sending `second\n` — a buffering proxy never delivers the first part.
//! - `/headers`: repeated `x-multi` and `set-cookie` headers.
//! - `/hang`: never answers.
//! - `/ws` (WebSocket): echoes text and binary; the text `close:CODE:REASON` makes it close
//!   with that code and reason. Selects subprotocol `streamlit` when offered.
//! - `/ws-refuse` (WebSocket): refuses the handshake with 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

type Body = BoxBody<Bytes, Infallible>;

/// A running test upstream; stops when dropped.
#[derive(Debug)]
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    release: Arc<Notify>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    /// Starts the upstream on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test upstream");
        let addr = listener.local_addr().expect("local addr");
        let release = Arc::new(Notify::new());
        let rel = release.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let rel = rel.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let rel = rel.clone();
                        async move { Ok::<_, Infallible>(route(req, rel).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            release,
            accepted,
            task,
        }
    }

    /// How many TCP connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets the `/stream` route send its second part.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect()
}

fn query_usize(req: &Request<Incoming>, key: &str) -> usize {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn route(req: Request<Incoming>, release: Arc<Notify>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/echo") {
        return echo(req).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = if status.is_informational() || code == 204 || code == 304 {
            full(Bytes::new())
        } else {
            full(format!("status {code}"))
        };
        let mut r = Response::new(body);
        *r.status_mut() = status;
        return r;
    }
    match path.as_str() {
        "/big" => {
            let n = query_usize(&req, "bytes");
            let mut r = Response::new(full(pattern(n)));
            r.headers_mut().insert("content-length", n.into());
            r
        }
        "/chunked" => {
            let data = Bytes::from(pattern(query_usize(&req, "bytes")));
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = data
                .chunks(8192)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
        }
        "/stream" => {
            let s = futures_util::stream::unfold(0u8, move |state| {
                let release = release.clone();
                async move {
                    match state {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first\n"))),
                            1,
                        )),
                        1 => {
                            release.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"second\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(s)))
        }
        "/headers" => {
            let mut r = Response::new(full("headers"));
            let h = r.headers_mut();
            h.append("x-multi", "a".parse().expect("value"));
            h.append("x-multi", "b".parse().expect("value"));
            h.append("set-cookie", "a=1; Path=/".parse().expect("value"));
            h.append(
                "set-cookie",
                "b=2; HttpOnly; SameSite=Strict".parse().expect("value"),
            );
            r
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/ws" | "/ws-refuse" => websocket(req, path == "/ws-refuse"),
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut len = 0usize;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            len += data.len();
            hash = fnv(hash, &data);
        }
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let v = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_len": len,
        "body_fnv": format!("{hash:016x}"),
    });
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    r
}

fn websocket(mut req: Request<Incoming>, refuse: bool) -> Response<Body> {
    let key = req.headers().get("sec-websocket-key").cloned();
    let (Some(key), false) = (key, refuse) else {
        let mut r = Response::new(full("websocket refused"));
        *r.status_mut() = StatusCode::FORBIDDEN;
        return r;
    };
    let offered_streamlit = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "streamlit");
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => {
                    if let Some(rest) = t.as_str().strip_prefix("close:") {
                        let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                        let code: u16 = code.parse().unwrap_or(1000);
                        let _ = ws
                            .close(Some(CloseFrame {
                                code: CloseCode::from(code),
                                reason: reason.to_owned().into(),
                            }))
                            .await;
                        // Drain until the client answers the close.
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                    if ws.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                Message::Binary(b) if ws.send(Message::Binary(b.clone())).await.is_err() => return,
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().expect("value"));
    h.insert("connection", "Upgrade".parse().expect("value"));
    if let Ok(v) = derive_accept_key(key.as_bytes()).parse() {
        h.insert("sec-websocket-accept", v);
    }
    if offered_streamlit {
        h.insert(
            "sec-websocket-protocol",
            "streamlit".parse().expect("value"),
        );
    }
    r
}
