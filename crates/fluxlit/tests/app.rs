//! `fluxlit::App` end to end without Streamlit: an external UI upstream (the testkit's), an
//! in-process API service or a supervised API command, the pidfile, and the ways `run` ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use fluxlit::{ApiService, App, AppError, Exit};
use fluxlit_config::Environment;
use fluxlit_testkit::upstream::TestUpstream;
use fluxlit_testkit::{TempDir, eventually};

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = tx.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn hello_service() -> ApiService {
    ApiService::new(tower::service_fn(
        |req: http::Request<fluxlit_gateway::Body>| async move {
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(format!("in-process {}", req.uri().path())),
            )))
        },
    ))
}

fn env_with(pairs: &[(&str, &str)]) -> Environment {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut all: Vec<(String, String)> = vec![("PATH".into(), path)];
    all.extend(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Environment::from_pairs(all)
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test]
async fn external_ui_and_in_process_api_share_the_port_until_shutdown() {
    let ui = TestUpstream::start().await;
    let dir = TempDir::new("app");
    let pidfile = dir.path().join("run/app.pid");
    let app = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[(
            "FLUXLIT_UI_UPSTREAM",
            &format!("http://{}", ui.addr),
        )]))
        .api_service(hello_service())
        .pidfile(Some(pidfile.clone()))
        .build()
        .unwrap();
    let (l, addr) = listener().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(app.run(l, async {
        let _ = stopped.await;
    }));
    eventually(Duration::from_secs(20), "readyz 200", || async move {
        (get(addr, "/api/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let pf = pidfile.clone();
    eventually(Duration::from_secs(10), "the pidfile", || {
        let pf = pf.clone();
        async move { std::fs::read_to_string(&pf).ok() }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        std::process::id().to_string()
    );
    let (s, body) = get(addr, "/api/hello").await.unwrap();
    assert_eq!((s, body.as_str()), (200, "in-process /hello"));
    let (s, body) = get(addr, "/echo/x").await.unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("/echo/x"), "{body}");

    stop.send(()).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("stops in time")
        .unwrap()
        .unwrap();
    assert_eq!(exit, Exit::Shutdown);
    assert_eq!(exit.code(), 0);
    assert!(!pidfile.exists(), "pidfile removed");
    assert!(
        get(addr, "/api/readyz").await.is_none(),
        "no longer serving"
    );
}

#[tokio::test]
async fn a_sidecar_that_exits_stops_the_app_with_status_1() {
    let ui = TestUpstream::start().await;
    let dir = TempDir::new("app");
    // Listens on PORT (so the TCP probe finds it ready), then exits after its second
    // connection: the first probe and the first probe once ready.
    let api = "python3 -c \"import os, socket; s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(); [s.accept()[0].close() for _ in range(2)]\"";
    let app = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[
            ("FLUXLIT_UI_UPSTREAM", &format!("http://{}", ui.addr)),
            ("FLUXLIT_API_COMMAND", api),
            ("FLUXLIT_NO_PIDFILE", "true"),
        ]))
        .build()
        .unwrap();
    let (l, _addr) = listener().await;
    let exit = tokio::time::timeout(Duration::from_secs(30), app.run(l, std::future::pending()))
        .await
        .expect("the app stops by itself")
        .unwrap();
    match &exit {
        Exit::SidecarExited { sidecar, exit } => {
            assert_eq!(*sidecar, "api");
            assert_eq!(exit.code, Some(0), "{exit}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(exit.code(), 1);
    assert!(
        exit.to_string().starts_with("the api sidecar exited ("),
        "{exit}"
    );
}

#[tokio::test]
async fn shutdown_during_start_up_stops_the_half_started_sidecar() {
    let ui = TestUpstream::start().await;
    let dir = TempDir::new("app");
    let marker = dir.path().join("started");
    // Never listens: start-up waits until the shutdown.
    let api = format!("sh -c 'echo $$ > {}; exec sleep 60'", marker.display());
    let app = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[
            ("FLUXLIT_UI_UPSTREAM", &format!("http://{}", ui.addr)),
            ("FLUXLIT_API_COMMAND", &api),
            ("FLUXLIT_NO_PIDFILE", "true"),
        ]))
        .build()
        .unwrap();
    let (l, _addr) = listener().await;
    let m = marker.clone();
    let shutdown = async move {
        eventually(Duration::from_secs(10), "the API process", || {
            let m = m.clone();
            async move { std::fs::read_to_string(&m).ok() }
        })
        .await;
    };
    let exit = tokio::time::timeout(Duration::from_secs(20), app.run(l, shutdown))
        .await
        .expect("stops in time")
        .unwrap();
    assert_eq!(exit, Exit::Shutdown);
    let pid: u32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the API process gone",
        || async move { (!fluxlit_testkit::process::pid_alive(pid)).then_some(()) },
    )
    .await;
}

#[test]
fn a_missing_script_is_reported_before_anything_starts() {
    let dir = TempDir::new("app");
    let err = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[]))
        .target("missing.py")
        .build()
        .unwrap_err();
    assert!(matches!(err, AppError::MissingTarget { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("missing.py does not exist") && msg.contains("the embedding program"),
        "{msg}"
    );
}

#[test]
fn an_api_service_and_an_api_command_are_refused_together() {
    let dir = TempDir::new("app");
    std::fs::write(dir.path().join("app.py"), "").unwrap();
    let err = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[("FLUXLIT_API_COMMAND", "uvicorn api:app")]))
        .api_service(hello_service())
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("api_command is set too (from environment variable FLUXLIT_API_COMMAND)"),
        "{err}"
    );
}

#[test]
fn overrides_are_validated_and_applied() {
    let dir = TempDir::new("app");
    std::fs::write(dir.path().join("app.py"), "").unwrap();
    let err = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[]))
        .root_path("/a/../b")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            AppError::Setting {
                key: "root_path",
                ..
            }
        ),
        "{err:?}"
    );
    let app = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[]))
        .root_path("/myapp/")
        .api_mount("/v1")
        .build()
        .unwrap();
    assert_eq!(app.settings().public_mount(), "/myapp");
    assert_eq!(app.settings().api_mount_path, "/v1");
    assert_eq!(app.gateway().root_path(), "/myapp");
    assert_eq!(app.gateway().api_mount(), "/v1");
}

/// `streamlit_workers = auto` is resolved at build time: a `streamlit_workers_min_ready` above
/// the machine's cores is refused, naming the key, the value and its source.
#[test]
fn auto_workers_refuse_a_min_ready_above_the_cores() {
    let dir = TempDir::new("app");
    std::fs::write(dir.path().join("app.py"), "").unwrap();
    let err = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[
            ("FLUXLIT_STREAMLIT_WORKERS", "auto"),
            ("FLUXLIT_STREAMLIT_WORKERS_MIN_READY", "100000"),
        ]))
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("invalid streamlit_workers_min_ready \"100000\" (from environment variable FLUXLIT_STREAMLIT_WORKERS_MIN_READY)")
            && msg.contains("streamlit_workers = auto"),
        "{msg}"
    );
    // Within the cores it builds, with one readiness entry per worker.
    let app = App::builder()
        .cwd(dir.path())
        .environment(env_with(&[("FLUXLIT_STREAMLIT_WORKERS", "auto")]))
        .build()
        .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (_, states) = app.gateway().readiness();
    let workers = states
        .iter()
        .filter(|(n, _)| n.starts_with("streamlit-"))
        .count();
    assert_eq!(workers, if cores > 1 { cores } else { 0 }, "{states:?}");
}
