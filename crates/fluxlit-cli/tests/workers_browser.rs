//! Several Streamlit workers behind one gateway (issue 17; `streamlit_workers`,
//! docs/scaling.md), seen from a real browser: headless Chromium, one browser context (its own
//! cookie jar) per person, the real binary and real Streamlit. The people are spread over the
//! workers; each one's upload, media and custom component (`st.file_uploader`, `st.image`, a
//! component declared from a directory) reach the worker that holds their session; when a
//! worker is killed with SIGKILL its tab reconnects to a live worker and shows its page from
//! there within 10 s, with no click, while the other tabs keep their sessions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fluxlit_testkit::TempDir;
use fluxlit_testkit::cdp::{Browser, Page};
use serde_json::Value;
use support::Fluxlit;

const WORKERS: usize = 3;

/// Bytes of the file each person uploads; the app prints the size it received.
const UPLOAD_BYTES: usize = 54_321;

/// The app prints its process id (which worker runs the session), a token drawn once per
/// session and the script runs of the session; then an uploader, a media image, a download
/// button and a button that reruns the script.
const APP: &str = r#"import os
import uuid

import streamlit as st
import streamlit.components.v1 as components
from PIL import Image

# A custom component served by the worker from this directory (`/component/...`).
probe = components.declare_component(
    "probe", path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe")
)

st.session_state.setdefault("token", uuid.uuid4().hex[:12])
st.session_state.runs = st.session_state.get("runs", 0) + 1
st.write(
    f"worker-pid={os.getpid()} session-token={st.session_state.token} "
    f"runs={st.session_state.runs}"
)
f = st.file_uploader("Pick a file")
if f is not None:
    st.write(f"uploaded-bytes={len(f.getvalue())}")
st.image(Image.new("RGB", (40, 30), (200, 30, 30)), caption="a media image")
st.download_button("Download", data=b"hello", file_name="hello.txt")
probe()
st.button("Again")
st.write("page-done")
"#;

/// True when every image Streamlit serves from its media store has loaded (and there is one)
/// and the custom component's frame (served by the worker under `/component/`) shows its page.
const MEDIA_LOADED: &str = "(() => { const imgs = Array.from(document.images)
    .filter(i => i.src.includes('/media/'));
  const media = imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
  const f = Array.from(document.querySelectorAll('iframe'))
    .find(f => f.src.includes('/component/'));
  let component = false;
  try { component = !!f && f.contentDocument.body.innerText.includes('component-ok'); }
  catch (e) { component = false; }
  return media && component; })()";

/// Clicks the app's "Again" button (a rerun in the same session).
const CLICK_AGAIN: &str = "(() => { const b = Array.from(document.querySelectorAll('button'))
    .find(b => b.innerText.trim() === 'Again');
  if (b) { b.click(); return true; } return false; })()";

fn app_dir() -> TempDir {
    let dir = TempDir::new("workers-browser");
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    std::fs::create_dir(dir.path().join("probe")).unwrap();
    std::fs::write(
        dir.path().join("probe/index.html"),
        "<!doctype html><html><body><p>component-ok</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        format!("target = \"app.py\"\nstreamlit_workers = {WORKERS}\ndebug = true\n"),
    )
    .unwrap();
    dir
}

/// The value after `key` in the page's text, up to the next whitespace.
fn field(text: &str, key: &str) -> Option<String> {
    let rest = &text[text.find(key)? + key.len()..];
    let v: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    (!v.is_empty()).then_some(v)
}

/// What a tab shows of its session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    pid: u32,
    token: String,
    runs: u32,
    uploaded: Option<usize>,
}

fn shown(text: &str) -> Option<Shown> {
    if !text.contains("page-done") {
        return None;
    }
    Some(Shown {
        pid: field(text, "worker-pid=")?.parse().ok()?,
        token: field(text, "session-token=")?,
        runs: field(text, "runs=")?.parse().ok()?,
        uploaded: field(text, "uploaded-bytes=").and_then(|v| v.parse().ok()),
    })
}

/// Polls the tab every 100 ms until `ok` holds for what it shows; panics with the page's text
/// after `within`.
async fn wait_shown(
    browser: &mut Browser,
    page: &Page,
    within: Duration,
    what: &str,
    ok: impl Fn(&Shown) -> bool,
) -> Shown {
    support::wait_page(browser, page, within, what, |text| {
        shown(text).filter(|s| ok(s))
    })
    .await
}

/// Polls until the page's media images have loaded, for at most `within`.
async fn wait_media(browser: &mut Browser, page: &Page, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while browser.eval(page, MEDIA_LOADED).await != Value::Bool(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the media image and the component did not load within {within:?}: {}",
            browser.text(page).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn debug(gw: &Fluxlit) -> Value {
    let (status, _, body) = support::get(&gw.url("/__fluxlit/debug")).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A person: a browser context of their own and one tab in it.
struct Person {
    page: Page,
    worker: String,
    shown: Shown,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_spread_upload_load_media_and_keep_their_sessions_when_a_worker_dies() {
    let gw = Fluxlit::start_in(app_dir(), &[]).await;
    let url = gw.url("/api/readyz");
    fluxlit_testkit::eventually(Duration::from_secs(60), "all workers ready", || {
        let url = url.clone();
        async move {
            let (_, _, body) = support::get(&url).await.ok()?;
            let ready: Value = serde_json::from_str(&body).ok()?;
            (1..=WORKERS)
                .all(|i| ready["components"][format!("streamlit-{i}")] == "ready")
                .then_some(())
        }
    })
    .await;
    let d = debug(&gw).await;
    let worker_pid = |d: &Value, worker: &str| -> u32 {
        let pid = d["sidecars"][format!("streamlit-{worker}")]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pid for streamlit-{worker}: {d}"));
        u32::try_from(pid).unwrap()
    };
    let file_dir = TempDir::new("workers-browser-upload");
    let file = file_dir.path().join("upload.bin");
    std::fs::write(&file, vec![b'x'; UPLOAD_BYTES]).unwrap();

    let mut browser = Browser::launch().await;
    let mut people = Vec::new();
    for _ in 0..WORKERS {
        // One after the other, each rendered before the next arrives: least-loaded placement
        // gives each a worker of its own.
        let context = browser.new_context().await;
        let page = browser.open_in(&context, &gw.url("/")).await;
        let first = wait_shown(
            &mut browser,
            &page,
            Duration::from_secs(30),
            "the page renders",
            |_| true,
        )
        .await;
        let cookies = browser.cookies(&page, &gw.url("/")).await;
        let worker = cookies
            .iter()
            .find(|(n, _)| n == "fluxlit_worker")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no affinity cookie: {cookies:?}"));
        assert_eq!(
            first.pid,
            worker_pid(&d, &worker),
            "the session runs on the worker the cookie names"
        );
        wait_media(&mut browser, &page, Duration::from_secs(15)).await;

        // The upload through the browser reaches the session's worker (anywhere else Streamlit
        // answers 400 "Invalid session_id" and the app never sees the file).
        browser
            .set_file_input(&page, "input[type=file]", &file)
            .await;
        let after = wait_shown(
            &mut browser,
            &page,
            Duration::from_secs(20),
            "the app shows the uploaded file's size",
            |s| s.uploaded == Some(UPLOAD_BYTES),
        )
        .await;
        assert_eq!(
            (after.pid, &after.token),
            (first.pid, &first.token),
            "the same session"
        );
        people.push(Person {
            page,
            worker,
            shown: after,
        });
    }
    let workers: BTreeSet<&str> = people.iter().map(|p| p.worker.as_str()).collect();
    assert_eq!(workers.len(), WORKERS, "one worker each: {workers:?}");
    for p in &people {
        // After the rerun the upload caused, the media (a new URL) loads from the worker too.
        wait_media(&mut browser, &p.page, Duration::from_secs(15)).await;
        let text = browser.text(&p.page).await;
        assert!(!text.contains("Invalid session_id"), "{text}");
    }

    // SIGKILL the worker of the first person's session.
    let victim = people[0].shown.pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // The tab of the killed worker reconnects at once (its cookie names a dead worker, so the
    // gateway places it on another): a new WebSocket opens within 10 s.
    let url = gw.url("/__fluxlit/debug");
    let gw_ref = &gw;
    fluxlit_testkit::eventually(
        Duration::from_secs(10),
        "the killed worker's tab to reconnect to a live worker",
        || {
            let url = url.clone();
            async move {
                // The worker's exit was seen (its session's tunnel closed with it) and a
                // fourth tunnel opened: the reconnect.
                let log = gw_ref.log();
                let exited = log.contains("sidecar exited")
                    && log.matches("websocket tunnel closed").count() >= 1;
                if !exited || log.matches("websocket tunnel open").count() < WORKERS + 1 {
                    return None;
                }
                let (_, _, body) = support::get(&url).await.ok()?;
                let d: Value = serde_json::from_str(&body).ok()?;
                let open: u64 = d["gateway"]["ui_worker_sessions"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_u64)
                    .sum();
                (open == WORKERS as u64).then_some(())
            }
        },
    )
    .await;
    // And its page renders again from a live worker without a click: Streamlit's client does
    // not ask for a run after reconnecting from idle, so the gateway starts the tab's last
    // page there (`pool.rs`). A new session: its state is lost with the worker.
    let victim_now = wait_shown(
        &mut browser,
        &people[0].page,
        Duration::from_secs(10),
        "the killed worker's tab to show its page from a live worker",
        |s| s.pid != victim,
    )
    .await;
    assert_ne!(victim_now.token, people[0].shown.token);
    wait_media(&mut browser, &people[0].page, Duration::from_secs(10)).await;

    // The others keep their sessions: a rerun answers in the same session, on the same
    // worker, with the upload still there.
    for p in &people[1..] {
        assert_eq!(browser.eval(&p.page, CLICK_AGAIN).await, Value::Bool(true));
        let before = p.shown.clone();
        let now = wait_shown(
            &mut browser,
            &p.page,
            Duration::from_secs(15),
            "an undisturbed session reruns",
            |s| s.runs > before.runs,
        )
        .await;
        assert_eq!(
            (now.pid, &now.token, now.uploaded),
            (before.pid, &before.token, Some(UPLOAD_BYTES)),
            "worker {} kept its session",
            p.worker
        );
        wait_media(&mut browser, &p.page, Duration::from_secs(10)).await;
    }
}
