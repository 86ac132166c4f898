//! The gateway's `stopped accepting` line, captured through a thread-local tracing subscriber.
//!
//! Alone in its test binary: tracing computes each call site's interest once for every
//! subscriber alive, and a test on another thread of the same binary reaching the same call
//! sites (every gateway logs `gateway listening`) while this test installs its subscriber can
//! leave them disabled for it (it lost its lines about one run in fifteen inside
//! `shutdown.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fluxlit_gateway::Gateway;

mod support;

use support::{ENGINES, engine, launch, up_at};

/// The `stopped accepting` line carries the engine counters (`Gateway::served`), which is how
/// `cargo xtask bench` reads a gateway process's fast-path share: two UI GETs and one API GET on
/// one connection are (2, 1) with the fast path on and (0, 3) with it off.
#[tokio::test]
async fn the_stop_line_counts_requests_per_engine() {
    use fluxlit_gateway::ApiTarget;
    use fluxlit_testkit::raw::{RawClient, RecordingUpstream};
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{Layer, fmt};

    for fast in ENGINES {
        let sink = support::Sink::default();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_ansi(false)
                .with_writer({
                    let sink = sink.clone();
                    move || sink.clone()
                })
                .with_filter(Targets::new().with_target("fluxlit_gateway", tracing::Level::INFO)),
        );
        let _log = tracing::subscriber::set_default(subscriber);
        let rec = RecordingUpstream::start().await;
        let gw = launch(
            Gateway::builder()
                .http1_fast_path(fast)
                .ui(up_at(rec.addr, "ui"))
                .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
                .drain_timeout(Duration::from_millis(200)),
        )
        .await;
        let mut c = RawClient::connect(gw.addr).await;
        // Two forwards (the fast path's when on) and a health probe (always hyper's).
        for path in ["/a", "/b", "/api/healthz"] {
            c.send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                .await;
            let r = c.response(false).await.expect("a response");
            assert_eq!(r.status, 200, "{} {path}", engine(fast));
        }
        drop(c);
        gw.stop().await;
        let text = sink.text();
        let line = text
            .lines()
            .find(|l| l.contains("stopped accepting"))
            .unwrap_or_else(|| panic!("{}: no stop line in {text:?}", engine(fast)));
        let want = if fast {
            "requests_fast_path=2 requests_hyper=1"
        } else {
            "requests_fast_path=0 requests_hyper=3"
        };
        assert!(line.contains(want), "{}: {line}", engine(fast));
    }
}
