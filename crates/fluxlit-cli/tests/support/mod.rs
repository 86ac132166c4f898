//! Running the real `fluxlit` binary against the real example app (Streamlit + uvicorn).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxlit_testkit::{TempDir, eventually, process, repo_root, venv_python};

pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A `fluxlit run` process.
pub struct Fluxlit {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// How many of the stdout/stderr reader threads have not reached the end of their pipe.
    readers: Arc<std::sync::atomic::AtomicUsize>,
    pub dir: TempDir,
    pub pidfile: PathBuf,
}

/// Copies `examples/hello` into a fresh directory, so that parallel tests do not share files.
pub fn example_copy() -> TempDir {
    let dir = TempDir::new("e2e");
    let src = repo_root().join("examples/hello");
    for f in ["app.py", "api.py", "fluxlit.toml"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy example");
    }
    dir
}

/// Runs `fluxlit SUBCOMMAND ARGS` in `dir` to the end ([`command`]'s environment without its
/// stop timeouts, `env` on top); (exit code, -1 when killed by a signal; stdout; stderr).
pub fn run_subcommand(
    dir: &Path,
    subcommand: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut all = vec![subcommand];
    all.extend_from_slice(args);
    let out = command(dir, &all)
        .env_remove("FLUXLIT_SIDECAR_STOP_TIMEOUT_S")
        .env_remove("FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S")
        .envs(env.iter().copied())
        .output()
        .expect("run fluxlit");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluxlit"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("FLUXLIT_STREAMLIT_PYTHON", venv_python())
        .env("FLUXLIT_SIDECAR_STOP_TIMEOUT_S", "3")
        .env("FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S", "5")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Fluxlit {
    /// Starts `fluxlit run --port 0 ARGS` in a copy of the example and waits until it listens.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_in(example_copy(), args).await
    }

    pub async fn start_in(dir: TempDir, args: &[&str]) -> Self {
        Self::start_with_env(dir, args, &[]).await
    }

    /// Like [`Fluxlit::start_with_env`] for JSON logs: the listening address is read from
    /// the JSON line.
    pub async fn start_json(dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with_env(dir, args, env).await
    }

    pub async fn start_with_env(dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_subcommand(dir, "run", args, env).await
    }

    /// `fluxlit SUBCOMMAND --port 0 --pidfile … ARGS` (`run` or `dev`).
    pub async fn start_subcommand(
        dir: TempDir,
        subcommand: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_on_port(dir, subcommand, 0, args, env).await
    }

    /// `fluxlit SUBCOMMAND --port PORT --pidfile … ARGS`: a port chosen before the start, for
    /// settings that name it (`FLUXLIT_PUBLIC_BASE_URL`, a provider's redirect URI).
    pub async fn start_on_port(
        dir: TempDir,
        subcommand: &str,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let pidfile = dir.path().join("run/fluxlit.pid");
        let pid_arg = pidfile.display().to_string();
        let port_arg = port.to_string();
        let mut all = vec![subcommand, "--port", &port_arg, "--pidfile", &pid_arg];
        all.extend_from_slice(args);
        let mut cmd = command(dir.path(), &all);
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("start fluxlit");
        let log = Arc::new(Mutex::new(String::new()));
        let readers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let open = readers.clone();
            open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[fluxlit] {line}");
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
                open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let log2 = log.clone();
        let addr = eventually(
            Duration::from_secs(30),
            "the gateway's 'listening' log line",
            || {
                let log = log2.clone();
                async move {
                    let text = log.lock().ok()?.clone();
                    let line = text.lines().find(|l| l.contains("gateway listening"))?;
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                        return v["address"].as_str()?.parse().ok();
                    }
                    let addr = line.split("address=").nth(1)?.split_whitespace().next()?;
                    addr.parse().ok()
                }
            },
        )
        .await;
        Self {
            child,
            addr,
            log,
            readers,
            dir,
            pidfile,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until `{api}/readyz` (at `path`) answers 200.
    pub async fn wait_ready(&self, path: &str) {
        let url = self.url(path);
        eventually(READY_TIMEOUT, "readyz 200", || {
            let url = url.clone();
            async move { (get(&url).await.ok()?.0 == 200).then_some(()) }
        })
        .await;
    }

    /// Waits (30 s at most) for a line of the gateway's output containing every one of
    /// `needles`, and returns it. Use it for any line the gateway writes while running: the
    /// access and event log is written in batches (`LogWriter::LINGER`, 10 ms), so a line can
    /// reach the pipe after the effect a test observed over HTTP.
    pub async fn log_line(&self, what: &str, needles: &[&str]) -> String {
        let log = self.log.clone();
        let needles: Vec<String> = needles.iter().map(|s| (*s).to_owned()).collect();
        eventually(Duration::from_secs(30), what, || {
            let log = log.clone();
            let needles = needles.clone();
            async move {
                let text = log.lock().ok()?.clone();
                text.lines()
                    .find(|l| needles.iter().all(|n| l.contains(n.as_str())))
                    .map(str::to_owned)
            }
        })
        .await
    }

    /// Everything the process printed so far. (Not empty on a poisoned lock: tests assert
    /// that secrets are absent from it, which an empty text would pass.)
    pub fn log(&self) -> String {
        self.log.lock().expect("the log is readable").clone()
    }

    /// Live children of the gateway: (pid, command line).
    pub fn children(&self) -> Vec<(u32, String)> {
        process::children_of(self.child.id())
            .into_iter()
            .map(|p| (p, process::cmdline(p)))
            .collect()
    }

    pub fn child_matching(&self, needle: &str) -> u32 {
        self.children()
            .into_iter()
            .find(|(_, c)| c.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "no child of the gateway runs {needle}: {:?}",
                    self.children()
                )
            })
            .0
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal fluxlit");
    }

    /// Waits for the process to exit, then (5 s at most, not an error: a child that outlived
    /// the gateway may hold the pipes) for its output to be read to the end, so that `log()`
    /// holds its last lines.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        let status = eventually(timeout, "fluxlit to exit", || {
            let r = child.try_wait().expect("try_wait");
            async move { r }
        })
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.readers.load(std::sync::atomic::Ordering::SeqCst) > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        status
    }
}

impl Drop for Fluxlit {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tiny HTTP/1.1 GET returning (status, headers, body).
pub async fn get(url: &str) -> Result<(u16, http::HeaderMap, String), String> {
    request("GET", url, &[], Vec::new()).await
}

pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, http::HeaderMap, String), String> {
    use http_body_util::{BodyExt, Full};
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no authority")?.to_string();
    let stream = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::net::TcpStream::connect(&authority),
    )
    .await
    .map_err(|_| "connect timeout".to_owned())?
    .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", &authority);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .map_err(|_| "body timeout".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

/// A loopback port free at the time of the call (for settings that must name the port before
/// the process binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Polls readiness and the page every 100 ms until stopped, recording answers other than 200
/// (a rolling restart must not fail one).
pub struct Watch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    polls: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub fn start(gw: &Fluxlit) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (readyz, page) = (gw.url("/api/readyz"), gw.url("/"));
        let task = tokio::spawn({
            let (stop, failed, polls) = (stop.clone(), failed.clone(), polls.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    for url in [&readyz, &page] {
                        match get(url).await {
                            Ok((200, _, _)) => {}
                            Ok((s, _, body)) => {
                                failed.lock().unwrap().push(format!("{url}: {s} {body}"))
                            }
                            Err(e) => failed.lock().unwrap().push(format!("{url}: {e}")),
                        }
                    }
                    polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Self {
            stop,
            failed,
            polls,
            task,
        }
    }

    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.failed.lock().unwrap().clone();
        (
            self.polls.load(std::sync::atomic::Ordering::Relaxed),
            failed,
        )
    }
}

/// A WebSocket client connection (Streamlit's stream through the gateway).
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a Streamlit session as a browser does: the WebSocket handshake of `req` (the stream's
/// URL with the protocols and cookies the caller chose), a run asked for, and the session's id
/// from its first server messages; each step within 30 s (panics otherwise).
pub async fn streamlit_session(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (Ws, String) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the WebSocket handshake within 30 s")
    .expect("the WebSocket handshake through the gateway");
    ws.send(Message::Binary(bytes::Bytes::from_static(
        &fluxlit_testkit::streamlit::RERUN_SCRIPT,
    )))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the session's first message within 30 s")
            .expect("socket open")
            .unwrap();
        if let Message::Binary(b) = msg
            && let Some(id) = fluxlit_testkit::streamlit::session_id(&b)
        {
            return (ws, id);
        }
    }
}

/// Polls the text of a page in headless Chromium every 100 ms until `parse` finds what it
/// waits for; panics with `what` and the page's text after `within`.
pub async fn wait_page<T>(
    browser: &mut fluxlit_testkit::cdp::Browser,
    page: &fluxlit_testkit::cdp::Page,
    within: Duration,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = browser.text(page).await;
        if let Some(found) = parse(&text) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}; the page shows: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
