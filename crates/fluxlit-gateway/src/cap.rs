//! Request body caps that leave the client connection in a clean state.
//!
//! Refusing a body (413) without reading it makes the kernel reset the connection when the
//! gateway closes it with unread bytes; a front proxy that is still writing the body (nginx
//! writes all of it before reading the answer) then reports 502 instead of the 413. So the
//! refused body is read and discarded in the background, up to [`DRAIN_MAX_BYTES`] and
//! [`DRAIN_MAX_TIME`], and the 413 says `Connection: close`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::BoxError;

/// The most bytes of a refused body the gateway reads and discards (beyond it, it closes).
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// The longest the gateway keeps reading a refused body.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// The error a capped body yields when the cap is crossed.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The cap, bytes.
    pub limit: u64,
}

/// Reads and discards `body` in the background, within the drain bounds.
pub(crate) fn drain<B>(body: B)
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
{
    drain_up_to(body, DRAIN_MAX_BYTES);
}

/// Reads and discards `body` in the background, up to `max` bytes and [`DRAIN_MAX_TIME`].
fn drain_up_to<B>(body: B, max: u64)
where
    B: HttpBody + Send + 'static,
    B::Data: Send,
{
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut read = 0u64;
        let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    read += bytes::Buf::remaining(d) as u64;
                }
                if read > max {
                    break;
                }
            }
        })
        .await;
    });
}

/// A body that fails with [`BodyTooLarge`] once more than `limit` bytes went through, and
/// then hands the rest of the client's body to [`drain`].
pub(crate) struct Capped<B> {
    inner: Option<Pin<Box<B>>>,
    seen: u64,
    limit: u64,
}

impl<B> Capped<B> {
    pub(crate) fn new(inner: B, limit: u64) -> Self {
        Self {
            inner: Some(Box::pin(inner)),
            seen: 0,
            limit,
        }
    }
}

impl<B> HttpBody for Capped<B>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        if let Some(rest) = this.inner.take() {
                            drain(rest);
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A client's request body that, dropped before its end (an upstream failed, timed out or
/// answered without reading all of it), is read and discarded in the background within the
/// drain bounds ([`drain`]): the answer then ends the exchange cleanly instead of being followed
/// by a reset that a client still writing its body would report instead of the answer.
///
/// What was read before counts against the bound (a body already drained by [`drain`] is not
/// drained twice), and a body the client sends only after `100 Continue` is never asked for
/// when nothing read it yet.
pub(crate) struct Lingering {
    inner: Option<Inbound>,
    /// Bytes read so far.
    read: u64,
    /// The request says `Expect: 100-continue`.
    expect: bool,
}

/// A request body as the gateway receives it: hyper's own (from [`crate::Gateway::serve`]) or
/// any body an embedding program hands to [`crate::Gateway::handle`], boxed.
pub(crate) enum Inbound {
    /// From the gateway's own server connections (not boxed).
    Incoming(hyper::body::Incoming),
    /// From an embedding program (tower/axum, tests with `oneshot`).
    Boxed(crate::Body),
}

impl HttpBody for Inbound {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        match self.get_mut() {
            Self::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Incoming(b) => b.is_end_stream(),
            Self::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Incoming(b) => b.size_hint(),
            Self::Boxed(b) => b.size_hint(),
        }
    }
}

impl Lingering {
    pub(crate) fn new(inner: Inbound, expect: bool) -> Self {
        Self {
            inner: Some(inner),
            read: 0,
            expect,
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let unasked = self.expect && self.read == 0;
        if let Some(body) = self.inner.take()
            && !body.is_end_stream()
            && !unasked
            && self.read < DRAIN_MAX_BYTES
            && tokio::runtime::Handle::try_current().is_ok()
        {
            drain_up_to(body, DRAIN_MAX_BYTES - self.read);
        }
    }
}

impl HttpBody for Lingering {
    type Data = Bytes;
    type Error = crate::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
        let r = match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.read += d.len() as u64;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}
