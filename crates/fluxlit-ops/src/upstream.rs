//! A local hyper upstream on `127.0.0.1` for `chaos-slow-upstream`.
//!
//! - `GET /stream`: 200 with its headers at once, then `chunks` lines `chunk N`, one every
//!   `interval` (chunked transfer; the first line at once).
//! - anything else: waits `delay`, then 200 `finally`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::net::Body;

/// Timing of the slow upstream.
#[derive(Debug, Clone, Copy)]
pub struct SlowTiming {
    /// How long every path but `/stream` waits before answering.
    pub delay: Duration,
    /// Lines `/stream` sends.
    pub chunks: usize,
    /// Pause between two lines of `/stream`.
    pub interval: Duration,
}

impl SlowTiming {
    /// The whole body `/stream` sends.
    pub fn stream_body(&self) -> String {
        (0..self.chunks).map(|i| format!("chunk {i}\n")).collect()
    }
}

/// A running slow upstream; stops (with every connection) when dropped.
#[derive(Debug)]
pub struct SlowUpstream {
    /// Where it listens (`127.0.0.1:port`).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stream(t: SlowTiming) -> Body {
    let s = futures_util::stream::unfold(0usize, move |i| async move {
        if i >= t.chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(t.interval).await;
        }
        let frame: Result<Frame<Bytes>, Infallible> =
            Ok(Frame::data(Bytes::from(format!("chunk {i}\n"))));
        Some((frame, i + 1))
    });
    StreamBody::new(s).boxed()
}

async fn route(req: Request<Incoming>, t: SlowTiming) -> Response<Body> {
    if req.uri().path() == "/stream" {
        let mut r = Response::new(stream(t));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        return r;
    }
    tokio::time::sleep(t.delay).await;
    Response::new(Full::new(Bytes::from_static(b"finally\n")).boxed())
}

impl SlowUpstream {
    /// Starts it on `127.0.0.1:0`.
    ///
    /// # Errors
    /// When it cannot bind.
    pub async fn start(t: SlowTiming) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind the slow upstream: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("slow upstream address: {e}"))?;
        let task = tokio::spawn(async move {
            // Dropped with this task, which aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| async move {
                        Ok::<_, Infallible>(route(req, t).await)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}
