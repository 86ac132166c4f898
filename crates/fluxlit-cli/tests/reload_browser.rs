//! A rolling restart seen from real browsers (issue 17; `fluxlit reload`, docs/scaling.md):
//! headless Chromium, three people each in a browser context of their own, two Streamlit
//! workers. The script's code changes on disk and `fluxlit reload` starts a new generation: no
//! readiness poll or page load fails, the open tabs keep working on the old code until
//! `streamlit_drain_timeout_s`, a new person gets the new code, and at the deadline every old
//! tab shows the new code by itself, with no click (the gateway starts a lost session's page
//! on its new worker, `pool.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fluxlit_testkit::cdp::{Browser, Page};
use fluxlit_testkit::{TempDir, eventually};
use support::{Fluxlit, Watch, run_subcommand};

/// How long old sessions are kept after the reload.
const DRAIN_S: u64 = 10;

/// Clicks the app's "Again" button (a rerun in the same session).
const CLICK_AGAIN: &str = "(() => { const b = Array.from(document.querySelectorAll('button'))
    .find(b => b.innerText.trim() === 'Again');
  if (b) { b.click(); return true; } return false; })()";

/// The app prints text from a module of its own (a running Streamlit keeps the module it
/// imported: its file watcher is off, as is usual in production), its process id and the
/// session's run count.
fn app(dir: &std::path::Path, generation: &str) {
    std::fs::write(
        dir.join("app.py"),
        "import os\nimport streamlit as st\nimport content\n\
         st.session_state.runs = st.session_state.get('runs', 0) + 1\n\
         st.write(f'{content.TEXT} pid={os.getpid()} runs={st.session_state.runs} page-done')\n\
         st.button('Again')\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("content.py"),
        format!("TEXT = 'code-of-generation-{generation}'\n"),
    )
    .unwrap();
}

/// What a tab shows: (generation, pid, runs), once the page rendered.
fn shown(text: &str) -> Option<(String, u32, u32)> {
    if !text.contains("page-done") {
        return None;
    }
    let field = |key: &str| -> Option<String> {
        let rest = &text[text.find(key)? + key.len()..];
        Some(rest.chars().take_while(|c| !c.is_whitespace()).collect())
    };
    Some((
        field("code-of-generation-")?,
        field("pid=")?.parse().ok()?,
        field("runs=")?.parse().ok()?,
    ))
}

/// Polls the tab every 100 ms until what it shows satisfies `ok`; panics with its text after
/// `within`.
async fn wait_shown(
    browser: &mut Browser,
    page: &Page,
    within: Duration,
    what: &str,
    ok: impl Fn(&(String, u32, u32)) -> bool,
) -> (String, u32, u32) {
    support::wait_page(browser, page, within, what, |text| {
        shown(text).filter(|s| ok(s))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tabs_survive_a_reload_and_show_the_new_code_after_the_drain_deadline() {
    let dir = TempDir::new("reload-browser");
    app(dir.path(), "one");
    std::fs::write(
        dir.path().join("fluxlit.toml"),
        format!(
            "target = \"app.py\"\nstreamlit_workers = 2\nstreamlit_drain_timeout_s = {DRAIN_S}\nstreamlit_run_cli_args = [\"--server.fileWatcherType\", \"none\"]\n"
        ),
    )
    .unwrap();
    let gw = Fluxlit::start_with_env(dir, &[], &[]).await;
    gw.wait_ready("/api/readyz").await;

    let mut browser = Browser::launch().await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let context = browser.new_context().await;
        let page = browser.open_in(&context, &gw.url("/")).await;
        let first = wait_shown(
            &mut browser,
            &page,
            Duration::from_secs(30),
            "the page renders the old code",
            |s| s.0 == "one",
        )
        .await;
        tabs.push((page, first));
    }

    let watch = Watch::start(&gw);
    app(gw.dir.path(), "two");
    let pidfile = gw.pidfile.display().to_string();
    let (code, out, err) = run_subcommand(gw.dir.path(), "reload", &["--pidfile", &pidfile], &[]);
    assert_eq!(code, 0, "{out}{err}");
    eventually(
        Duration::from_secs(90),
        "the new generation to serve",
        || {
            let log = gw.log();
            async move { (log.matches("new Streamlit worker serving").count() == 2).then_some(()) }
        },
    )
    .await;

    // Before the deadline the old tabs keep working in their sessions, on the old code.
    for (page, before) in &tabs {
        assert_eq!(
            browser.eval(page, CLICK_AGAIN).await,
            serde_json::Value::Bool(true)
        );
        let now = wait_shown(
            &mut browser,
            page,
            Duration::from_secs(15),
            "an old tab reruns in its session",
            |s| s.2 > before.2,
        )
        .await;
        assert_eq!((now.0.as_str(), now.1), ("one", before.1), "{now:?}");
    }
    // A new person gets the new code.
    let context = browser.new_context().await;
    let page = browser.open_in(&context, &gw.url("/")).await;
    let fresh = wait_shown(
        &mut browser,
        &page,
        Duration::from_secs(30),
        "a new browser renders the new code",
        |s| s.0 == "two",
    )
    .await;

    // At the deadline the old workers stop; every old tab reconnects and shows the new code
    // from a new worker without a click.
    for (page, before) in &tabs {
        let after = wait_shown(
            &mut browser,
            page,
            Duration::from_secs(DRAIN_S + 30),
            "an old tab to show the new code by itself after the drain deadline",
            |s| s.0 == "two",
        )
        .await;
        assert_ne!(after.1, before.1, "a new worker");
    }
    let (polls, failed) = watch.finish().await;
    assert!(polls > 10, "{polls} polls");
    assert!(failed.is_empty(), "failed during the reload: {failed:?}");
    assert_ne!(fresh.1, 0);
}
