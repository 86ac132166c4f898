//! FluxLit-for-Python apps run unchanged (`target = "app:app"`): the scaffolds of FluxLit for
//! Python's own `fluxlit new NAME --profile minimal|auth-ready|deploy` (PyPI `fluxlit` 0.13.2,
//! pinned in tests/python_apps/requirements.txt, installed into `.venv-fluxlit-python` by
//! `cargo xtask setup`) and a two-page app, run by this `fluxlit` binary (by its absolute path:
//! the venv's `bin/` holds FluxLit for Python's own `fluxlit` script) with a real uvicorn, a real
//! Streamlit and headless Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fluxlit_testkit::cdp::{Browser, Page};
use fluxlit_testkit::{TempDir, repo_root};
use serde_json::{Value, json};
use support::{Fluxlit, get};

/// The interpreter of `.venv-fluxlit-python` (FluxLit for Python 0.13.2 and what it runs on).
///
/// # Panics
/// When the venv is missing, with the command that creates it: these tests must not pass
/// without their real parts.
fn python() -> PathBuf {
    let p = repo_root().join(".venv-fluxlit-python/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` first (it creates the venv with FluxLit for Python 0.13.2 from crates/fluxlit-cli/tests/python_apps/requirements.txt)",
        p.display()
    );
    p
}

/// A fresh app made by FluxLit for Python's `fluxlit new` (run as `python -m fluxlit`, the
/// pinned package, never a `fluxlit` found on `PATH`).
fn scaffold(profile: &str) -> TempDir {
    let dir = TempDir::new(&format!("pyapp-{profile}"));
    // `fluxlit new` refuses an existing destination; it creates it with its parents.
    std::fs::remove_dir(dir.path()).unwrap();
    let out = Command::new(python())
        .args(["-m", "fluxlit", "new"])
        .arg(dir.path())
        .args(["--profile", profile])
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("run `python -m fluxlit new`");
    assert!(
        out.status.success(),
        "`fluxlit new --profile {profile}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = std::fs::read_to_string(dir.path().join("fluxlit.toml")).unwrap();
    assert!(toml.contains(r#"target = "app:app""#), "{toml}");
    dir
}

/// Starts this `fluxlit` in `dir` with the FluxLit-for-Python venv and waits for readiness at
/// `{mount}/api/readyz`.
async fn start(dir: TempDir, args: &[&str], mount: &str) -> Fluxlit {
    let python = python().display().to_string();
    let mut env = vec![("FLUXLIT_STREAMLIT_PYTHON", python.as_str())];
    if !mount.is_empty() {
        env.push(("FLUXLIT_ROOT_PATH", mount));
    }
    let gw = Fluxlit::start_with_env(dir, args, &env).await;
    gw.wait_ready(&format!("{mount}/api/readyz")).await;
    gw
}

/// Waits until the page's text contains every one of `wanted`.
async fn page_shows(browser: &mut Browser, page: &Page, wanted: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let text = browser.text(page).await;
        if wanted.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {wanted:?}; it shows: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(gw: &Fluxlit, path: &str) -> Value {
    let (status, _, body) = get(&gw.url(path)).await.unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// The three scaffolds, started together: `minimal` as generated (target from its
/// fluxlit.toml), `auth-ready` with the file form `./app.py:app`, `deploy` under the root path
/// `/team/deploy`. Each home page shows its title and the data it fetched from its own API
/// through `ApiClient`, and the API answers through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fluxlit_new_scaffolds_run_unchanged() {
    let (minimal, auth, deploy) = tokio::join!(
        start(scaffold("minimal"), &[], ""),
        start(scaffold("auth-ready"), &["./app.py:app"], ""),
        start(scaffold("deploy"), &[], "/team/deploy"),
    );

    assert_eq!(
        get_json(&minimal, "/api/users").await,
        json!([{"name": "Ada"}])
    );
    assert_eq!(
        get_json(&auth, "/api/public").await,
        json!({"message": "public"})
    );
    assert_eq!(
        get_json(&deploy, "/team/deploy/api/items").await,
        json!([{"name": "Ada"}, {"name": "Grace"}])
    );
    // The API knows its public prefix: FastAPI's docs point at the right OpenAPI document.
    let openapi = get_json(&deploy, "/team/deploy/api/openapi.json").await;
    assert_eq!(openapi["info"]["title"], "FluxLit Deploy Demo");
    assert!(openapi["paths"].get("/items").is_some(), "{openapi}");
    let (status, _, docs) = get(&deploy.url("/team/deploy/api/docs")).await.unwrap();
    assert_eq!(status, 200);
    assert!(docs.contains("/team/deploy/api/openapi.json"), "{docs}");

    let mut browser = Browser::launch().await;
    let pages = [
        (&minimal, "/".to_owned(), vec!["Dashboard", "Ada"]),
        (
            &auth,
            "/".to_owned(),
            vec!["Auth-ready Dashboard", "public", "make_jwt_bearer"],
        ),
        (
            &deploy,
            "/team/deploy/".to_owned(),
            vec!["Deployment Dashboard", "Ada", "Grace", "fluxlit doctor"],
        ),
    ];
    for (gw, path, wanted) in pages {
        let page = browser.open(&gw.url(&path)).await;
        page_shows(&mut browser, &page, &wanted).await;
    }
    // The page title comes from FluxLit for Python's entry script (`st.set_page_config`).
    let page = browser.open(&deploy.url("/team/deploy/")).await;
    page_shows(&mut browser, &page, &["Deployment Dashboard"]).await;
    assert_eq!(
        browser.eval(&page, "document.title").await,
        "FluxLit Deploy Demo"
    );
}

/// A two-page app: `st.navigation` lists both pages, the URL path of the second page and the
/// `?page=` deep link open it, and it shows data from the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_navigation_and_deep_links_behave_as_under_fluxlit_for_python() {
    let dir = TempDir::new("pyapp-pages");
    write_two_page_app(dir.path());
    let gw = start(dir, &[], "").await;
    assert_eq!(
        get_json(&gw, "/api/reports").await,
        json!({"reports": ["weekly", "monthly"]})
    );

    let mut browser = Browser::launch().await;
    let home = browser.open(&gw.url("/")).await;
    // The sidebar navigation lists both pages by title.
    page_shows(&mut browser, &home, &["Home page", "Overview", "Reports"]).await;
    let by_path = browser.open(&gw.url("/reports")).await;
    page_shows(
        &mut browser,
        &by_path,
        &["Reports page", "weekly", "monthly"],
    )
    .await;
    let deep_link = browser.open(&gw.url("/?page=Reports")).await;
    page_shows(&mut browser, &deep_link, &["Reports page", "weekly"]).await;
}

fn write_two_page_app(dir: &Path) {
    std::fs::write(dir.join("fluxlit.toml"), "target = \"app:app\"\n").unwrap();
    std::fs::write(
        dir.join("app.py"),
        r#"from fluxlit import FluxLit

app = FluxLit(title="Two pages")


@app.api.get("/reports")
def reports():
    return {"reports": ["weekly", "monthly"]}


@app.page("/", title="Overview")
def home(st, client):
    st.title("Home page")


@app.page("/reports", title="Reports")
def reports_page(st, client):
    st.title("Reports page")
    st.write(", ".join(client.get("/reports").json()["reports"]))
"#,
    )
    .unwrap();
}

/// Without the Python package, `fluxlit run app:app` names what is missing and the command
/// that installs it, before starting anything.
#[test]
fn a_missing_package_is_named_with_the_pip_command() {
    let dir = TempDir::new("pyapp-missing");
    std::fs::write(dir.path().join("fluxlit.toml"), "target = \"app:app\"\n").unwrap();
    std::fs::write(
        dir.path().join("app.py"),
        "from fluxlit import FluxLit\napp = FluxLit()\n",
    )
    .unwrap();
    // The project's main venv has Streamlit but not FluxLit for Python.
    let out = support::command(dir.path(), &["run", "--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let python = fluxlit_testkit::venv_python().display().to_string();
    for wanted in [
        "target \"app:app\"",
        "the Python package fluxlit is not installed",
        &format!("`{python} -m pip install 'fluxlit>=0.13,<0.14'`"),
    ] {
        assert!(stderr.contains(wanted), "no {wanted:?} in: {stderr}");
    }
    assert!(!stderr.contains("gateway listening"), "{stderr}");
}
