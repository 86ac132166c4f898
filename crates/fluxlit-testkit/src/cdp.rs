//! A minimal Chrome DevTools Protocol driver for Debian's headless `chromium`: open a page,
//! evaluate JavaScript, set a file input. Enough to load a Streamlit app through the gateway
//! as a person would and read what it rendered.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{TempDir, eventually};

/// A headless Chromium, killed on drop.
pub struct Browser {
    child: Child,
    _profile: TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

/// A page attached with a flat CDP session.
#[derive(Debug, Clone)]
pub struct Page {
    session: String,
}

/// The Chromium binary: `$FLUXLIT_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("FLUXLIT_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and connects to its DevTools socket.
    ///
    /// # Panics
    /// When Chromium is missing (install Debian's `chromium`; `cargo xtask setup` does) or does
    /// not open its DevTools port within 30 s.
    pub async fn launch() -> Self {
        let bin = chromium_path();
        assert!(
            bin.exists(),
            "{} is missing: install Debian's chromium package (`cargo xtask setup` does)",
            bin.display()
        );
        let profile = TempDir::new("chromium");
        let child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: the renderers and zygotes go with it (see `Drop`).
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let (port, path) = eventually(
            Duration::from_secs(30),
            "chromium's DevToolsActivePort file",
            || {
                let f = port_file.clone();
                async move {
                    let text = std::fs::read_to_string(&f).ok()?;
                    let mut lines = text.lines();
                    let port: u16 = lines.next()?.trim().parse().ok()?;
                    let path = lines.next()?.trim().to_owned();
                    Some((port, path))
                }
            },
        )
        .await;
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("connect to chromium devtools");
        Self {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    /// Sends a CDP command and returns its `result`.
    ///
    /// # Panics
    /// On a protocol error or if the browser goes away.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send CDP command");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = self.ws.next().await {
                let m = m.expect("read CDP message");
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(t.as_str()).expect("CDP JSON");
                    if v["id"] == json!(id) {
                        return v;
                    }
                }
            }
            panic!("chromium closed the DevTools connection");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to CDP {method} within 30 s"));
        assert!(
            answer.get("error").is_none(),
            "CDP {method} failed: {}",
            answer["error"]
        );
        answer["result"].clone()
    }

    /// Opens `url` in a new tab and attaches to it.
    pub async fn open(&mut self, url: &str) -> Page {
        self.open_target(json!({ "url": url })).await
    }

    /// Creates a browser context (`Target.createBrowserContext`): its own cookie jar, cache
    /// and storage, as a separate browser profile has. Returns its id for [`Browser::open_in`].
    pub async fn new_context(&mut self) -> String {
        let r = self
            .call(None, "Target.createBrowserContext", json!({}))
            .await;
        r["browserContextId"]
            .as_str()
            .expect("browserContextId")
            .to_owned()
    }

    /// Opens `url` in a new tab of the browser context `context` (see [`Browser::new_context`])
    /// and attaches to it.
    pub async fn open_in(&mut self, context: &str, url: &str) -> Page {
        self.open_target(json!({ "url": url, "browserContextId": context }))
            .await
    }

    /// The cookies the page holds for `url` (`Network.getCookies`), as name → value pairs.
    pub async fn cookies(&mut self, page: &Page, url: &str) -> Vec<(String, String)> {
        let r = self
            .call(
                Some(&page.session),
                "Network.getCookies",
                json!({ "urls": [url] }),
            )
            .await;
        r["cookies"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| {
                        Some((
                            c["name"].as_str()?.to_owned(),
                            c["value"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Target.createTarget` with `params`, then a flat attach to the new tab.
    async fn open_target(&mut self, params: Value) -> Page {
        let target = self.call(None, "Target.createTarget", params).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        Page {
            session: attached["sessionId"]
                .as_str()
                .expect("sessionId")
                .to_owned(),
        }
    }

    /// Opens `url` in a new tab that sends `headers` (name → value) with every request it
    /// makes, WebSocket handshakes included (`Network.setExtraHTTPHeaders`), as a front proxy
    /// adds them.
    pub async fn open_with_headers(&mut self, url: &str, headers: Value) -> Page {
        let page = self.open("about:blank").await;
        self.call(Some(&page.session), "Network.enable", json!({}))
            .await;
        self.call(
            Some(&page.session),
            "Network.setExtraHTTPHeaders",
            json!({ "headers": headers }),
        )
        .await;
        self.call(Some(&page.session), "Page.navigate", json!({ "url": url }))
            .await;
        page
    }

    /// Evaluates `expression` in the page and returns its value (promises awaited).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        let r = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// `document.body.innerText` of the page (empty while there is no body).
    pub async fn text(&mut self, page: &Page) -> String {
        self.eval(page, "document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sets the files of the first element matching `selector` (an `<input type=file>`).
    pub async fn set_file_input(&mut self, page: &Page, selector: &str, file: &Path) {
        let r = self
            .call(
                Some(&page.session),
                "Runtime.evaluate",
                json!({"expression": format!("document.querySelector({})", json!(selector))}),
            )
            .await;
        let object_id = r["result"]["objectId"]
            .as_str()
            .unwrap_or_else(|| panic!("no element matches {selector}"))
            .to_owned();
        self.call(
            Some(&page.session),
            "DOM.setFileInputFiles",
            json!({"files": [file.display().to_string()], "objectId": object_id}),
        )
        .await;
    }
}

impl Drop for Browser {
    /// Kills Chromium's whole process group (the browser, its zygotes and renderers), so that
    /// nothing writes to the profile while the `TempDir` removes it after this.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
