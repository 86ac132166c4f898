//! FastAPI's docs under the API mount (issue 12, item 3): the example app (real uvicorn and
//! FastAPI, real Streamlit) run by the real `fluxlit` binary, looked at in headless Chromium.
//! Swagger UI at `{prefix}/api/docs` must list the example's operations, ReDoc at
//! `{prefix}/api/redoc` must render them, and `{prefix}/api/openapi.json` must be the API's
//! document with `servers` naming the public API prefix. Before `api_command` learnt
//! `{api_prefix}`, Swagger UI fetched `/openapi.json` and got Streamlit's HTML page.
//!
//! Under a root path the app sits behind real nginx, with the configurations shipped in
//! `docker/proxy-deployment/nginx/` in both shapes: the prefix stripped (`strip-prefix.conf`)
//! and the full path passed on (`full-path.conf`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fluxlit_testkit::cdp::{Browser, Page};
use fluxlit_testkit::{TempDir, eventually, repo_root};
use serde_json::{Value, json};
use support::{Fluxlit, example_copy, get};

/// How long a page gets to render (Swagger UI and ReDoc are large scripts).
const RENDER_TIMEOUT: Duration = Duration::from_secs(30);

/// The operations `examples/hello/api.py` defines.
const OPERATIONS: [&str; 2] = ["/hello", "/request-info"];

/// nginx in the foreground on a loopback port, with one of the shipped site configurations;
/// stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx with `docker/proxy-deployment/nginx/{site}` in front of FluxLit at
    /// `upstream`, adapted as `cargo xtask smoke` adapts it (listen address, upstream server),
    /// and waits until it accepts connections.
    async fn start(site: &str, upstream: SocketAddr) -> Self {
        let bin = nginx_path();
        let dir = TempDir::new("nginx");
        let shipped = repo_root().join("docker/proxy-deployment/nginx").join(site);
        let port = support::free_port();
        let mut text = std::fs::read_to_string(&shipped).expect("read the shipped nginx site");
        for (from, to) in [
            ("server fluxlit:8000;", format!("server {upstream};")),
            ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ] {
            assert!(
                text.contains(from),
                "{} no longer contains {from:?}",
                shipped.display()
            );
            text = text.replace(from, &to);
        }
        std::fs::write(dir.path().join("site.conf"), text).unwrap();
        std::fs::write(dir.path().join("nginx.conf"), nginx_main(dir.path())).unwrap();
        let child = Command::new(&bin)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(format!("{}/", dir.path().display()))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Self { child, port, dir };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        eventually(
            Duration::from_secs(20),
            "nginx to accept connections",
            || {
                let exited = nginx.child.try_wait().ok().flatten();
                let log = nginx.dir.path().join("error.log");
                async move {
                    if let Some(status) = exited {
                        panic!(
                            "nginx exited with {status}: {}",
                            std::fs::read_to_string(log).unwrap_or_default()
                        );
                    }
                    tokio::net::TcpStream::connect(addr).await.ok().map(drop)
                }
            },
        )
        .await;
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Nginx {
    /// Stops nginx as its init script does (SIGTERM: the master stops its workers, then exits)
    /// and waits for the master, bounded; SIGKILL would leave the workers running, still
    /// listening. Then no process of this nginx may remain.
    async fn stop(mut self) {
        let master = self.child.id();
        let workers = fluxlit_testkit::process::children_of(master);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(master as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal nginx");
        let child = &mut self.child;
        eventually(
            Duration::from_secs(10),
            "nginx to exit after SIGTERM",
            || {
                let exited = child.try_wait().expect("try_wait nginx").is_some();
                async move { exited.then_some(()) }
            },
        )
        .await;
        eventually(Duration::from_secs(10), "nginx's workers to exit", || {
            let left: Vec<u32> = workers
                .iter()
                .copied()
                .filter(|w| fluxlit_testkit::process::pid_alive(*w))
                .collect();
            async move { left.is_empty().then_some(()) }
        })
        .await;
    }
}

impl Drop for Nginx {
    /// On a failed test: SIGTERM (as [`Nginx::stop`]) so the workers go too, SIGKILL only if
    /// the master is still there after 5 s.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$FLUXLIT_NGINX`, else `/usr/sbin/nginx` (Debian's `nginx`, installed by `cargo xtask setup`).
fn nginx_path() -> PathBuf {
    let bin = std::env::var_os("FLUXLIT_NGINX")
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
    assert!(
        bin.exists(),
        "{} is missing: install Debian's nginx package (`cargo xtask setup` does)",
        bin.display()
    );
    bin
}

/// nginx's main configuration for a foreground run in `dir` (as `cargo xtask smoke` writes it):
/// every path inside `dir`, the site configuration included.
fn nginx_main(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \x20   access_log {d}/access.log;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/site.conf;\n\
         }}\n"
    )
}

/// Evaluates `expression` in `page` until it returns something other than `null`/`false`.
async fn wait_for(browser: &mut Browser, page: &Page, what: &str, expression: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let v = browser.eval(page, expression).await;
        if !(v.is_null() || v == json!(false)) {
            return v;
        }
        if start.elapsed() > RENDER_TIMEOUT {
            let text = browser.text(page).await;
            panic!("timed out after {RENDER_TIMEOUT:?} waiting for {what}; the page shows: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks Swagger UI, ReDoc and the OpenAPI document at `base` + `api_prefix` (`base` is the
/// origin the browser uses, `api_prefix` the API's public prefix, e.g. `/myapp/api`).
async fn check_docs(browser: &mut Browser, base: &str, api_prefix: &str) {
    // Swagger UI lists every operation, with the public prefix as its server.
    let page = browser.open(&format!("{base}{api_prefix}/docs")).await;
    let paths = wait_for(
        browser,
        &page,
        "Swagger UI to list the operations",
        &format!(
            "(() => {{ const p = Array.from(document.querySelectorAll('.opblock .opblock-summary-path'))
                 .map(e => e.getAttribute('data-path') || e.textContent.trim());
               return {ops}.every(o => p.includes(o)) ? p : null; }})()",
            ops = json!(OPERATIONS)
        ),
    )
    .await;
    assert_eq!(paths, json!(OPERATIONS), "Swagger UI lists {paths}");
    let servers = wait_for(
        browser,
        &page,
        "Swagger UI's server list",
        "(() => { const o = Array.from(document.querySelectorAll('.servers select option')).map(e => e.value); return o.length ? o : null; })()",
    )
    .await;
    assert_eq!(servers, json!([api_prefix]));
    // What "Try it out" does: the operation's URL is the selected server plus its path.
    let hello = browser
        .eval(
            &page,
            "fetch(document.querySelector('.servers select').value + '/hello')
                .then(r => r.json()).then(d => d.message)",
        )
        .await;
    assert_eq!(hello, json!("Hello from the FluxLit example API"));

    // ReDoc renders the API's title and its operations.
    let page = browser.open(&format!("{base}{api_prefix}/redoc")).await;
    wait_for(
        browser,
        &page,
        "ReDoc to render the operations",
        "(() => { const t = document.body ? document.body.innerText : '';
            return t.includes('FluxLit hello API') && t.includes('Request Info')
                && document.querySelectorAll('[data-section-id^=\"operation/\"]').length >= 2; })()",
    )
    .await;

    // The OpenAPI document: JSON, the example's paths, and the public prefix as its server.
    let (status, headers, body) = get(&format!("{base}{api_prefix}/openapi.json"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        "application/json",
        "{body}"
    );
    let doc: Value = serde_json::from_str(&body).expect("openapi.json is JSON");
    assert_eq!(doc["servers"], json!([{"url": api_prefix}]), "{doc}");
    for op in OPERATIONS {
        assert!(doc["paths"].get(op).is_some(), "{op} missing: {doc}");
    }
}

/// `FLUXLIT_API_ROOT_PATH` in the environment of the API process (uvicorn).
fn api_env_root_path(gw: &Fluxlit) -> Option<String> {
    let pid = gw.child_matching("uvicorn");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read the API's environ");
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("FLUXLIT_API_ROOT_PATH="))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_docs_work_under_the_api_mount() {
    let gw = Fluxlit::start(&[]).await;
    gw.wait_ready("/api/readyz").await;
    let mut browser = Browser::launch().await;
    check_docs(&mut browser, &gw.url(""), "/api").await;
    assert_eq!(api_env_root_path(&gw).as_deref(), Some("/api"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_docs_work_under_a_root_path_behind_nginx_in_both_shapes() {
    let gw = Fluxlit::start_with_env(
        example_copy(),
        &["--root-path", "/myapp"],
        &[("FLUXLIT_TRUST_PROXY", "1")],
    )
    .await;
    gw.wait_ready("/myapp/api/readyz").await;
    let mut browser = Browser::launch().await;
    for site in ["strip-prefix.conf", "full-path.conf"] {
        let nginx = Nginx::start(site, gw.addr).await;
        eprintln!("checking the docs behind nginx with {site}");
        check_docs(&mut browser, &nginx.url(""), "/myapp/api").await;
        nginx.stop().await;
    }
    assert_eq!(api_env_root_path(&gw).as_deref(), Some("/myapp/api"));
}
