//! What the gateway's socket-level test suites share: a gateway served on a loopback port for
//! the length of a test, and upstreams at fixed addresses.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fluxlit_gateway::{Endpoint, Gateway, GatewayBuilder, Served, Upstream};
use tokio::sync::oneshot;

/// A gateway serving on `addr` until dropped (then it drains for 200 ms and cuts tunnels).
pub struct Running {
    pub addr: SocketAddr,
    /// The gateway served (a clone sharing its counters).
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    /// Requests served so far by each engine.
    pub fn served(&self) -> Served {
        self.gateway.served()
    }

    /// Asserts that every request so far was served by the expected engine: `h1` requests by
    /// the fast path when `fast`, all of them by hyper otherwise (`h1` counts forwarded plain
    /// requests; refusals and the API are hyper's on either).
    pub fn assert_engine(&self, fast: bool, forwarded: u64, what: &str) {
        let s = self.served();
        if fast {
            assert_eq!(
                s.h1, forwarded,
                "{what}: requests the fast path forwarded ({s:?})"
            );
        } else {
            assert_eq!(s.h1, 0, "{what}: the fast path is off ({s:?})");
            assert!(s.hyper >= forwarded, "{what}: hyper served them ({s:?})");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Builds `builder` and serves it on `127.0.0.1:0`.
pub async fn start(builder: GatewayBuilder) -> Running {
    let gateway = builder
        .drain_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let running = gateway.clone();
    tokio::spawn(async move {
        gateway
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        gateway.drain_tunnels(Duration::ZERO).await;
    });
    Running {
        addr,
        gateway: running,
        stop: Some(tx),
    }
}

/// An upstream named `name` at `addr` with no base path.
pub fn up_at(addr: SocketAddr, name: &str) -> Upstream {
    Upstream::fixed(
        name,
        Endpoint {
            authority: addr.to_string().parse().unwrap(),
            base_path: String::new(),
        },
    )
}
