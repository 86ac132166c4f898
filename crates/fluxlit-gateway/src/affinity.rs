//! Upstream connection affinity: an HTTP/1.1 client connection keeps, for each upstream it
//! talks to, one HTTP/1.1 connection of its own, and drives that connection inside its own task.
//!
//! Why: hyper-util's pooled client checks a connection out of a mutex-protected map for every
//! request and hands the request to the connection's own task and the response back over
//! channels — a task hop, and often a thread wake-up, per request each way. A reverse proxy in
//! front of one upstream does not need that: consecutive requests of one client connection can
//! reuse one upstream connection, and polling that connection from the client connection's task
//! (see [`Affinity::poll_drivers`]) moves bytes without waking anybody else. `cargo xtask bench`
//! measures the difference (`docs/performance.md`).
//!
//! Rules:
//! - Only HTTP/1.x client requests that are not upgrades use it; HTTP/2 clients (concurrent
//!   streams) and WebSocket upgrades go through the pooled client.
//! - A kept connection is reused only while idle for less than the pool idle timeout
//!   ([`IDLE_TIMEOUT`], below uvicorn's 5 s keep-alive), and only when hyper says it is ready.
//! - When the client connection ends, its idle upstream connections are parked in a shared,
//!   bounded list ([`Parking`]) for the next client connection to adopt (with their driver
//!   futures, so the adopting task drives them); connections still busy are finished by a task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::client::conn::http1::SendRequest;

use crate::Body;

/// Idle upstream connections are not reused after this long: below the keep-alive timeout of
/// common upstream servers (uvicorn's default is 5 s), so the gateway never sends a request on
/// a connection the upstream is closing.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection's driver: hyper's `Connection` future, which reads and writes its socket.
pub(crate) type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A kept upstream connection: where it goes, its sender, when it was last handed a request.
pub(crate) struct Kept {
    pub(crate) authority: Authority,
    pub(crate) send: SendRequest<Body>,
    pub(crate) used: Instant,
    /// Links the sender to its driver in [`Affinity`].
    id: u64,
}

impl Kept {
    fn usable(&self) -> bool {
        self.used.elapsed() < IDLE_TIMEOUT && !self.send.is_closed() && self.send.is_ready()
    }
}

/// One client connection's upstream connections and their drivers.
#[derive(Default)]
pub(crate) struct Affinity {
    state: Mutex<State>,
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Senders not currently carrying a request (at most one per upstream in practice).
    idle: Vec<Kept>,
    /// Drivers of every connection this client connection owns, busy or idle.
    drivers: Vec<(u64, Driver)>,
    next_id: u64,
}

impl Affinity {
    /// Takes the kept connection to `authority` when it can carry a request now; a kept
    /// connection that cannot (closed, stale, still busy) is dropped, and hyper closes it once
    /// its driver has nothing left to do.
    pub(crate) fn take(&self, authority: &Authority) -> Option<Kept> {
        let mut st = self.state.lock().ok()?;
        let i = st.idle.iter().position(|k| k.authority == *authority)?;
        let k = st.idle.swap_remove(i);
        drop(st);
        k.usable().then_some(k)
    }

    /// Gives a connection (back) to this client connection; `driver` is its driver when it is
    /// new here (freshly connected or adopted from the parking list).
    pub(crate) fn put(&self, mut kept: Kept, driver: Option<Driver>) {
        if let Ok(mut st) = self.state.lock() {
            if let Some(d) = driver {
                st.next_id += 1;
                kept.id = st.next_id;
                st.drivers.push((kept.id, d));
            }
            st.idle.push(kept);
        }
    }

    /// Registers a driver whose sender is in use right now (returned later with
    /// [`Affinity::put`] and `None`).
    pub(crate) fn adopt(
        &self,
        authority: Authority,
        send: SendRequest<Body>,
        driver: Driver,
    ) -> Kept {
        let mut kept = Kept {
            authority,
            send,
            used: Instant::now(),
            id: 0,
        };
        if let Ok(mut st) = self.state.lock() {
            st.next_id += 1;
            kept.id = st.next_id;
            st.drivers.push((kept.id, driver));
        }
        kept
    }

    /// Drops kept connections idle for [`IDLE_TIMEOUT`] or longer (they would not be reused):
    /// an idle client connection holds no upstream socket for longer than that. Their drivers
    /// then finish and hyper closes the sockets.
    pub(crate) fn release_stale(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.idle.retain(|k| k.used.elapsed() < IDLE_TIMEOUT);
        }
    }

    /// Polls every driver once (in the calling task, which is the client connection's task);
    /// drops the finished ones.
    pub(crate) fn poll_drivers(&self, cx: &mut Context<'_>) {
        if let Ok(mut st) = self.state.lock() {
            st.drivers
                .retain_mut(|(_, d)| d.as_mut().poll(cx).is_pending());
        }
    }

    /// Splits what this client connection owns when it ends: idle connections (sender and
    /// driver) and the drivers of connections that are not idle (still finishing).
    fn into_parts(self) -> (Vec<(Kept, Driver)>, Vec<Driver>) {
        let st = match self.state.into_inner() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut drivers = st.drivers;
        let mut idle = Vec::new();
        for k in st.idle {
            if let Some(i) = drivers.iter().position(|(id, _)| *id == k.id) {
                let (_, d) = drivers.swap_remove(i);
                if k.usable() {
                    idle.push((k, d));
                } else {
                    drivers.push((0, d));
                }
            }
        }
        (idle, drivers.into_iter().map(|(_, d)| d).collect())
    }
}

/// What a [`Lot`] needs to know of a parked connection.
pub(crate) trait Parkable {
    /// The upstream it is connected to.
    fn authority(&self) -> &Authority;
    /// When it last finished an exchange.
    fn used(&self) -> Instant;
}

/// Idle upstream connections of client connections that have ended, waiting for the next
/// client connection to adopt them. Bounded: beyond `max` the oldest is closed; connections
/// idle for [`IDLE_TIMEOUT`] or longer are closed, never handed out.
pub(crate) struct Lot<T> {
    parked: Mutex<Vec<T>>,
    max: usize,
}

impl<T: Parkable> Lot<T> {
    /// `max` parked connections at most (all upstreams together).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            parked: Mutex::new(Vec::new()),
            max: max.max(1),
        }
    }

    /// Parks `items`, closing expired ones and, when full, the oldest.
    pub(crate) fn park(&self, items: impl IntoIterator<Item = T>) {
        let mut dropped = Vec::new();
        if let Ok(mut p) = self.parked.lock() {
            dropped = take_expired(&mut p);
            for item in items {
                if p.len() >= self.max {
                    dropped.push(p.remove(0));
                }
                p.push(item);
            }
        }
        drop(dropped); // closes them, outside the lock
    }

    /// Takes the most recently parked connection to `authority` that `kind` accepts.
    pub(crate) fn take(&self, authority: &Authority, kind: impl Fn(&T) -> bool) -> Option<T> {
        let mut p = self.parked.lock().ok()?;
        let i = p
            .iter()
            .rposition(|c| c.authority() == authority && kind(c))?;
        // `remove`, not `swap_remove`: the rest stay oldest first for `park`'s eviction.
        Some(p.remove(i))
    }

    /// How many connections are parked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.parked.lock().map_or(0, |p| p.len())
    }

    /// Closes parked connections idle for [`IDLE_TIMEOUT`] or longer; returns how many.
    pub(crate) fn expire(&self) -> usize {
        // Dropped (closed) after the lock is released.
        let expired = match self.parked.lock() {
            Ok(mut p) => take_expired(&mut p),
            Err(_) => Vec::new(),
        };
        expired.len()
    }
}

/// Removes and returns the parked connections idle for [`IDLE_TIMEOUT`] or longer, keeping the
/// order of the rest (oldest first, which [`Lot::park`] relies on when it is full).
fn take_expired<T: Parkable>(parked: &mut Vec<T>) -> Vec<T> {
    let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(parked)
        .into_iter()
        .partition(|c| c.used().elapsed() >= IDLE_TIMEOUT);
    *parked = kept;
    expired
}

/// A parked idle upstream connection of either engine.
pub(crate) enum ParkedConn {
    /// hyper's client connection: its sender and driver (`proxy.rs`).
    Hyper(Kept, Driver),
    /// The fast path's raw connection (`h1.rs`).
    H1(crate::h1::UpConn),
}

impl Parkable for ParkedConn {
    fn authority(&self) -> &Authority {
        match self {
            Self::Hyper(k, _) => &k.authority,
            Self::H1(c) => c.authority(),
        }
    }

    fn used(&self) -> Instant {
        match self {
            Self::Hyper(k, _) => k.used,
            Self::H1(c) => c.used(),
        }
    }
}

/// The one parking lot: idle upstream connections of ended client connections, of both
/// engines, under one bound (all upstreams and both kinds together), for the next client
/// connections to adopt.
pub(crate) struct Parking {
    lot: Lot<ParkedConn>,
}

impl Parking {
    /// `max` parked connections at most (all upstreams and both engines together).
    pub(crate) fn new(max: usize) -> Self {
        Self { lot: Lot::new(max) }
    }

    /// Takes what `aff` owns: parks its idle connections, and spawns a task that finishes the
    /// drivers of the others (so an in-flight upstream exchange is not cut by the client
    /// connection's end).
    pub(crate) fn park(&self, aff: Affinity) {
        let (idle, busy) = aff.into_parts();
        for driver in busy {
            tokio::spawn(driver);
        }
        if !idle.is_empty() {
            self.lot
                .park(idle.into_iter().map(|(k, d)| ParkedConn::Hyper(k, d)));
        }
    }

    /// Parks an idle connection of the fast path.
    pub(crate) fn park_h1(&self, conn: crate::h1::UpConn) {
        self.lot.park([ParkedConn::H1(conn.for_parking())]);
    }

    /// Closes parked connections idle for [`IDLE_TIMEOUT`] or longer; returns how many.
    pub(crate) fn expire(&self) -> usize {
        self.lot.expire()
    }

    /// Adopts a parked hyper connection to `authority` into `aff`, after polling its driver
    /// once so that a connection the upstream closed meanwhile is noticed and skipped.
    pub(crate) async fn adopt(&self, aff: &Affinity, authority: &Authority) -> Option<Kept> {
        loop {
            let Some(ParkedConn::Hyper(kept, mut driver)) = self
                .lot
                .take(authority, |c| matches!(c, ParkedConn::Hyper(..)))
            else {
                return None;
            };
            let finished =
                std::future::poll_fn(|cx| Poll::Ready(driver.as_mut().poll(cx).is_ready())).await;
            if finished || !kept.usable() {
                continue;
            }
            let Kept {
                authority, send, ..
            } = kept;
            return Some(aff.adopt(authority, send, driver));
        }
    }

    /// Adopts a parked fast-path connection to `authority` that can carry a request now
    /// (`UpConn::usable`; `fresh` as there).
    pub(crate) fn adopt_h1(&self, authority: &Authority, fresh: bool) -> Option<crate::h1::UpConn> {
        loop {
            let Some(ParkedConn::H1(c)) =
                self.lot.take(authority, |c| matches!(c, ParkedConn::H1(_)))
            else {
                return None;
            };
            if c.usable(fresh) {
                return Some(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        authority: Authority,
        used: Instant,
        tag: u32,
    }

    impl Parkable for Fake {
        fn authority(&self) -> &Authority {
            &self.authority
        }

        fn used(&self) -> Instant {
            self.used
        }
    }

    fn fake(authority: &str, tag: u32, age: Duration) -> Fake {
        Fake {
            authority: authority.parse().unwrap(),
            used: Instant::now().checked_sub(age).unwrap(),
            tag,
        }
    }

    const A: &str = "127.0.0.1:1";
    const B: &str = "127.0.0.1:2";

    #[test]
    fn the_lot_is_bounded_and_closes_the_oldest_first() {
        let lot = Lot::new(2);
        lot.park([fake(A, 1, Duration::ZERO), fake(A, 2, Duration::ZERO)]);
        lot.park([fake(B, 3, Duration::ZERO)]);
        assert_eq!(lot.len(), 2);
        let a: Authority = A.parse().unwrap();
        assert_eq!(lot.take(&a, |_| true).map(|f| f.tag), Some(2));
        assert!(
            lot.take(&a, |_| true).is_none(),
            "1 was evicted as the oldest"
        );
    }

    #[test]
    fn the_most_recent_connection_of_the_kind_asked_for_is_taken() {
        let lot = Lot::new(8);
        lot.park([
            fake(A, 1, Duration::ZERO),
            fake(B, 2, Duration::ZERO),
            fake(A, 3, Duration::ZERO),
            fake(A, 4, Duration::ZERO),
        ]);
        let a: Authority = A.parse().unwrap();
        assert_eq!(lot.take(&a, |f| f.tag % 2 == 1).map(|f| f.tag), Some(3));
        assert_eq!(lot.take(&a, |_| true).map(|f| f.tag), Some(4));
        assert_eq!(lot.take(&a, |_| true).map(|f| f.tag), Some(1));
        assert!(lot.take(&a, |_| true).is_none());
        assert_eq!(lot.len(), 1);
    }

    #[test]
    fn expired_connections_are_closed_not_handed_out() {
        let lot = Lot::new(8);
        lot.park([fake(A, 1, IDLE_TIMEOUT + Duration::from_millis(1))]);
        lot.park([fake(A, 2, Duration::ZERO)]);
        assert_eq!(lot.len(), 1, "parking drops the expired");
        lot.park([fake(A, 3, IDLE_TIMEOUT)]);
        assert_eq!(lot.expire(), 1);
        let a: Authority = A.parse().unwrap();
        assert_eq!(lot.take(&a, |_| true).map(|f| f.tag), Some(2));
    }
}
