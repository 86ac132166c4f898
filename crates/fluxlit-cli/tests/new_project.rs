//! `fluxlit new NAME --profile P` (issue 14): each profile's project runs with `fluxlit run` at
//! once and its page renders in headless Chromium with data from its own API. The project's
//! `requirements.txt` is the pinned set of the test venv (`.venv`, from
//! `examples/hello/requirements.txt`), which the test checks, so running it with that venv's
//! interpreter is running it as a user would after `pip install -r requirements.txt`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fluxlit_testkit::cdp::Browser;
use fluxlit_testkit::{TempDir, repo_root};
use support::{Fluxlit, get};

#[tokio::test]
async fn every_profile_runs_at_once_and_its_page_shows_its_api_data() {
    let mut browser = Browser::launch().await;
    for (profile, route, title) in [
        ("minimal", "users", "FluxLit Demo"),
        ("auth-ready", "public", "FluxLit Auth Demo"),
        ("deploy", "items", "FluxLit Deploy Demo"),
    ] {
        let dir = TempDir::new("new-project");
        // `fluxlit new` refuses an existing destination: let it create the directory.
        std::fs::remove_dir(dir.path()).unwrap();
        let dest = dir.path().display().to_string();
        let parent = dir.path().parent().unwrap().to_path_buf();
        let out = support::command(&parent, &["new", &dest, "--profile", profile])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .starts_with(&format!("Created {dest}/ ({profile})")),
            "{out:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("requirements.txt")).unwrap(),
            std::fs::read_to_string(repo_root().join("examples/hello/requirements.txt")).unwrap(),
            "the pins the test venv has"
        );

        let gw = Fluxlit::start_in(dir, &[]).await;
        gw.wait_ready("/api/readyz").await;
        let (status, _, body) = get(&gw.url(&format!("/api/{route}"))).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("Grace"), "{body}");
        let page = browser.open(&gw.url("/")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let text = browser.text(&page).await;
            if text.contains(title) && text.contains("Grace") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{profile}: the page never showed the API's data; it shows: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Once more: the destination exists now.
        let out = support::command(&parent, &["new", &dest]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!("Destination already exists: {dest}")
        );
    }
}
