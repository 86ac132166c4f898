//! The byte relay of a WebSocket tunnel: both directions at once, like
//! `tokio::io::copy_bidirectional`, but holding no buffer while the tunnel is idle.
//!
//! Each read lands in a chunk on the stack of the poll ([`CHUNK`] bytes) and is written to
//! the other side at once. Only what the other side does not take at once (its writes are
//! blocked) is copied to the heap, and that copy is freed as soon as it has been written: an
//! idle tunnel, or one whose peers keep up, owns no buffer at all, where
//! `copy_bidirectional` keeps one per direction for the tunnel's life (2 × 4 KiB per idle
//! tunnel, measured in docs/performance.md). The system calls are the same: one read and one
//! write per chunk.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at a time per direction, and the most one direction holds on the heap while
/// the other side's writes are blocked (the same 4 KiB per direction as the copy buffers
/// before: a blocked tunnel costs no more than it did).
pub(crate) const CHUNK: usize = 4 * 1024;

/// One direction: what was read and not yet written, and how far it got.
#[derive(Debug, Default)]
struct Leg {
    /// Bytes read but not yet written (only while the writer is blocked; empty and
    /// unallocated otherwise).
    held: Vec<u8>,
    /// How many bytes of `held` were written already.
    pos: usize,
    /// Bytes written so far.
    written: u64,
    /// The reader reached its end.
    read_done: bool,
    /// Bytes were written since the last flush.
    need_flush: bool,
    /// The writer's write side has been shut down after the reader's end: this direction is
    /// over.
    done: bool,
}

impl Leg {
    /// Moves bytes from `r` to `w` until both block (`Pending`), or the end of `r` has been
    /// passed on as a shutdown of `w` (`Ready(Ok(bytes written))`), or either fails.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.written));
            }
            // What the writer did not take before goes first.
            if self.pos < self.held.len() {
                let n = ready!(w.as_mut().poll_write(cx, &self.held[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.written += n as u64;
                self.need_flush = true;
                if self.pos == self.held.len() {
                    // Caught up: let the copy go (an idle tunnel holds nothing).
                    self.held = Vec::new();
                    self.pos = 0;
                }
                continue;
            }
            if self.read_done {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match r.as_mut().poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let read = buf.filled();
            if read.is_empty() {
                self.read_done = true;
                continue;
            }
            // Straight on from the stack; only a remainder the writer does not take is kept.
            let n = match w.as_mut().poll_write(cx, read) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n.min(read.len()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => 0,
            };
            if n > 0 {
                self.written += n as u64;
                self.need_flush = true;
            }
            if n < read.len() {
                self.held = read[n..].to_vec();
                self.pos = 0;
            }
        }
    }
}

/// Relays bytes between `a` and `b` both ways until each side's end has been passed on to
/// the other as a shutdown of its write side (the result: bytes from `a` to `b`, bytes from
/// `b` to `a`) or either side fails (the error; what was read and not yet written is lost, as
/// with `copy_bidirectional`).
pub(crate) struct Relay<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Leg,
    b_to_a: Leg,
}

impl<'a, A, B> Relay<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pub(crate) fn new(a: &'a mut A, b: &'a mut B) -> Self {
        Self {
            a,
            b,
            a_to_b: Leg::default(),
            b_to_a: Leg::default(),
        }
    }

    /// Heap bytes the relay holds now (0 unless a writer is blocked).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.a_to_b.held.capacity() + self.b_to_a.held.capacity()
    }
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let a_to_b = this
            .a_to_b
            .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))?;
        let b_to_a = this
            .b_to_a
            .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// Bytes go both ways whole and in order, each end is passed on as a shutdown, and the
    /// counts are the bytes carried.
    #[tokio::test]
    async fn carries_both_ways_and_passes_each_end_on() {
        let (mut client, mut a) = duplex(1 << 16);
        let (mut b, mut server) = duplex(1 << 16);
        let relay = tokio::spawn(async move { Relay::new(&mut a, &mut b).await });
        let up: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
        let (c, s) = tokio::join!(
            async {
                client.write_all(&up).await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            },
            async {
                let mut got = vec![0; up.len()];
                server.read_exact(&mut got).await.unwrap();
                server.write_all(&down).await.unwrap();
                server.shutdown().await.unwrap();
                // The client's end reached the server as its end of the stream.
                assert_eq!(server.read(&mut [0; 1]).await.unwrap(), 0);
                got
            }
        );
        assert_eq!(s, up);
        assert_eq!(c, down);
        let counts = relay.await.unwrap().unwrap();
        assert_eq!(counts, (up.len() as u64, down.len() as u64));
    }

    /// While a writer is blocked the relay holds what it could not write (at most a chunk);
    /// once it is written the relay holds nothing again, so an idle tunnel costs no buffer.
    #[tokio::test]
    async fn holds_no_buffer_once_the_writer_caught_up() {
        let (mut client, mut a) = duplex(1 << 16);
        // The server side takes 16 bytes at a time: writes to it are partial, then blocked.
        let (mut b, mut server) = duplex(16);
        let mut relay = Relay::new(&mut a, &mut b);
        let msg = [7u8; 1000];
        client.write_all(&msg).await.unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut relay).poll(&mut cx).is_pending());
        assert!(
            relay.held() >= 1000 - 16,
            "the remainder is held: {}",
            relay.held()
        );
        let mut got = Vec::new();
        while got.len() < msg.len() {
            let mut part = [0u8; 16];
            let n = server.read(&mut part).await.unwrap();
            got.extend_from_slice(&part[..n]);
            let _ = Pin::new(&mut relay).poll(&mut cx);
        }
        assert_eq!(got, msg);
        assert!(Pin::new(&mut relay).poll(&mut cx).is_pending());
        assert_eq!(relay.held(), 0, "nothing held once written");
    }

    /// A failing side ends the relay with its error.
    #[tokio::test]
    async fn a_write_that_takes_nothing_is_an_error() {
        struct Zero;
        impl AsyncRead for Zero {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Pending
            }
        }
        impl AsyncWrite for Zero {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let (mut client, mut a) = duplex(64);
        client.write_all(b"hello").await.unwrap();
        let mut zero = Zero;
        let e = Relay::new(&mut a, &mut zero).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
