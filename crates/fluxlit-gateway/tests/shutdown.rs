//! Shutdown with WebSocket tunnels open, on both engines (issue 12, item 1): the drain waits for
//! in-flight HTTP only, readiness turns 503 at once, and once `drain_tunnels` starts a tunnel
//! whose upstream has gone (Streamlit exited after sending its close frame) ends without
//! waiting for the client to close its end. The drain timeout and the tunnel grace are 30 s
//! here, beyond every bounded wait of the suite, so waiting for them fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fluxlit_gateway::{ComponentState, Gateway};
use fluxlit_testkit::upstream::TestUpstream;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

mod support;

use support::{ENGINES, engine, launch, up_at, within};

const LONG: Duration = Duration::from_secs(30);

/// The close frame Streamlit sends as it stops: 1012 ("service restart"), server to client
/// (unmasked).
const CLOSE_1012: [u8; 4] = [0x88, 0x02, 0x03, 0xf4];

#[tokio::test]
async fn open_tunnels_do_not_hold_the_drain_and_readiness_turns_503() {
    for fast in ENGINES {
        let up = TestUpstream::start().await;
        let gw = launch(
            Gateway::builder()
                .http1_fast_path(fast)
                .ui(up_at(up.addr, "ui"))
                .drain_timeout(LONG),
        )
        .await;
        let (mut ws, _) = within(
            "the handshake",
            tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)),
        )
        .await
        .unwrap();
        ws.send(Message::Text("ping".into())).await.unwrap();
        let echo = within("the echo", ws.next()).await;
        assert!(matches!(echo, Some(Ok(Message::Text(_)))), "{echo:?}");
        assert!(gw.gateway.readiness().0, "ready before ({})", engine(fast));

        // `stop` is bounded by the suite's wait (10 s), below the 30 s drain timeout.
        let gateway = gw.stop().await;
        let (ready, states) = gateway.readiness();
        assert!(!ready, "{} {states:?}", engine(fast));
        assert!(
            states.contains(&(
                "gateway".to_owned(),
                ComponentState::NotReady("shutting down".into())
            )),
            "{} {states:?}",
            engine(fast)
        );
        // The session still runs: the drain left it to the caller.
        assert_eq!(gateway.active_tunnels(), 1, "{}", engine(fast));
        ws.send(Message::Text("still there".into())).await.unwrap();
        let echo = within("the echo after the drain", ws.next()).await;
        assert!(matches!(echo, Some(Ok(Message::Text(_)))), "{echo:?}");
        assert_eq!(gateway.drain_tunnels(Duration::ZERO).await, 1);
    }
}

/// An upstream that accepts one WebSocket, sends a 1012 close frame and closes its socket,
/// as Streamlit does when it stops.
async fn closing_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the upgrade request ended early");
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        let key = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .expect("a Sec-WebSocket-Key");
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        s.write_all(reply.as_bytes()).await.unwrap();
        s.write_all(&CLOSE_1012).await.unwrap();
        // Gone, like an exited process: both directions closed.
    });
    addr
}

#[tokio::test]
async fn a_tunnel_whose_upstream_is_gone_ends_at_once_when_tunnels_drain() {
    for fast in ENGINES {
        let up = closing_upstream().await;
        let gw = launch(
            Gateway::builder()
                .http1_fast_path(fast)
                .ui(up_at(up, "ui"))
                .drain_timeout(LONG),
        )
        .await;
        // A client that reads the 101 and the close frame, then neither answers nor closes
        // (a browser tab frozen in the background, a client stuck elsewhere).
        let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        client
            .write_all(
                format!(
                    "GET /ws HTTP/1.1\r\nhost: {}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
                    gw.addr
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(&CLOSE_1012) {
            let n = within("the 101 and the close frame", client.read(&mut buf))
                .await
                .unwrap();
            assert!(n > 0, "{}: ended early: {got:?}", engine(fast));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 101"), "{}", engine(fast));
        let gateway = gw.stop().await;
        // Everything the upstream sent has reached the client; nothing is left to carry.
        let cut = within("the tunnels to drain", gateway.drain_tunnels(LONG)).await;
        assert_eq!(cut, 0, "{}: ended by itself, not cut", engine(fast));
        assert_eq!(gateway.active_tunnels(), 0);
        drop(client);
    }
}
