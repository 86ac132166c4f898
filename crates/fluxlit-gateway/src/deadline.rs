//! Deadlines on client connections: a write that stays blocked (the peer stopped reading) for
//! the write timeout ends the connection, and reading the first bytes of a connection (enough
//! to tell HTTP/1 from HTTP/2) has the header read timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a new connection, until they tell HTTP/2's preface from anything
/// else, by `deadline`. `None` when the client sent nothing useful in time or closed: the
/// connection is then closed without an answer (a client that connects and sends nothing
/// never keeps its connection slot).
pub(crate) async fn first_bytes(stream: &mut TcpStream, deadline: Instant) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if tells_protocol(&buf) {
            return Some(buf);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Whether `buf` (a connection's first bytes) is enough to tell HTTP/2's preface from anything
/// else: a byte that differs from the preface, or the whole preface.
fn tells_protocol(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    n > 0 && (buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len())
}

/// What a client connection served by hyper is doing, for its idle timeout: how many requests
/// are in progress and when the last one ended (or the connection began).
pub(crate) struct Activity {
    state: std::sync::Mutex<(usize, Instant)>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new((0, Instant::now())),
        }
    }
}

/// A request in progress; ends when dropped.
pub(crate) struct Busy(std::sync::Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.0 = s.0.saturating_sub(1);
            if s.0 == 0 {
                s.1 = Instant::now();
            }
        }
    }
}

impl Activity {
    /// A request begins.
    pub(crate) fn begin(self: &std::sync::Arc<Self>) -> Busy {
        if let Ok(mut s) = self.state.lock() {
            s.0 += 1;
        }
        Busy(self.clone())
    }

    /// When the connection is idle for `idle`: `None` while a request is in progress.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let s = self.state.lock().ok()?;
        (s.0 == 0).then(|| s.1 + idle)
    }
}

/// A response body that keeps its connection [`Busy`] until it is done or dropped.
pub(crate) struct WhileBusy<B> {
    inner: B,
    busy: Option<Busy>,
}

impl<B> WhileBusy<B> {
    pub(crate) fn new(inner: B, busy: Busy) -> Self {
        Self {
            inner,
            busy: Some(busy),
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for WhileBusy<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.busy = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An I/O object whose writes (and flushes) fail with `TimedOut` once they have been blocked
/// for `timeout` without progress: a client that stops reading cannot hold a connection, a
/// task and its buffers forever (the write timeout, `gateway_write_timeout_s`).
pub(crate) struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write is blocked.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub(crate) fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            sleep: None,
        }
    }

    /// On `Pending`, arms (or polls) the deadline; `Err(TimedOut)` once it has passed.
    fn check<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.sleep = None;
            return r;
        }
        if self.timeout.is_zero() {
            return r;
        }
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read for gateway_write_timeout_s",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future as _;

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_h2_preface_is_told_from_http1_early() {
        let decided = tells_protocol;
        assert!(decided(b"G"));
        assert!(decided(b"PRI * HTTP/1.1"));
        assert!(!decided(b"PRI * HTTP/2"));
        assert!(decided(H2_PREFACE));
        assert!(!decided(b""));
    }
}
