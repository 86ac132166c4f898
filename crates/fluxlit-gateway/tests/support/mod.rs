//! What the gateway's socket-level test suites share: a gateway served on a loopback port for
//! the length of a test, and upstreams at fixed addresses.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fluxlit_gateway::{Endpoint, GatewayBuilder, Upstream};
use tokio::sync::oneshot;

/// A gateway serving on `addr` until dropped (then it drains for 200 ms and cuts tunnels).
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
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
