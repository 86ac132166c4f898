//! `auth_mode = oidc` end to end (issue 13; AUTH.md A.7 scenarios 1 and 9): the real binary with
//! real Streamlit and the example's FastAPI, a real OpenID provider (npm `oidc-provider`) and
//! headless Chromium logging in through the provider's forms. Streamlit shows the user in
//! `st.user` (started with `--server.trustedUserHeaders`), the page's own requests reach the API
//! with the identity, and after logout (RP-initiated, confirmed at the provider) opening the app
//! shows the provider's login form again instead of a silent re-login.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fluxlit_testkit::cdp::{Browser, Page};
use fluxlit_testkit::idp::Provider;
use fluxlit_testkit::process;
use serde_json::Value;
use support::Fluxlit;

const APP: &str = "import streamlit as st\n\nst.markdown(\"USER=\" + str(st.user.get(\"email\")) + \";SUB=\" + str(st.user.get(\"sub\")))\n";

const WHOAMI: &str = "\n\n@app.get(\"/whoami\")\ndef whoami(request: Request) -> dict[str, Any]:\n    return {\"email\": request.headers.get(\"x-forwarded-email\"), \"cookie\": request.headers.get(\"cookie\"), \"assertion\": bool(request.headers.get(\"x-fluxlit-identity\"))}\n";

/// Evaluates `expression` in `page` until it returns something other than `null`/`false`
/// (60 s at most).
async fn wait_for(browser: &mut Browser, page: &Page, what: &str, expression: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = browser.eval(page, expression).await;
        if !v.is_null() && v != Value::Bool(false) {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let text = browser.text(page).await;
            let url = browser.eval(page, "location.href").await;
            panic!("timed out waiting for {what} at {url}: {text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fills in the provider's development login form as `user` and confirms its consent page.
async fn log_in_at_provider(browser: &mut Browser, page: &Page, user: &str) {
    wait_for(
        browser,
        page,
        "the provider's login form",
        "!!document.querySelector('input[name=login]')",
    )
    .await;
    browser
        .eval(
            page,
            &format!(
                "document.querySelector('input[name=login]').value = '{user}';
                 document.querySelector('input[name=password]').value = 'any';
                 document.querySelector('form').submit(); true"
            ),
        )
        .await;
    // The consent page (or, when already granted, straight back to the app).
    wait_for(
        browser,
        page,
        "the consent page or the app",
        "(() => { if (document.querySelector('input[name=login]')) return false;
                  const b = document.querySelector('form button[type=submit]');
                  if (b && location.pathname.startsWith('/interaction/')) { b.form.submit(); return 'consent'; }
                  return !location.pathname.startsWith('/interaction/') && !location.pathname.startsWith('/auth') ? 'app' : false; })()",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_sees_itself_in_st_user_and_logs_out_for_real() {
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let idp = Provider::start(
        serde_json::json!([fluxlit_testkit::idp::gateway_client(&base)]),
        Value::Null,
    )
    .await;
    let dir = support::example_copy();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    // An API route that shows what the API receives of the user.
    let api = dir.path().join("api.py");
    let mut code = std::fs::read_to_string(&api).unwrap();
    code.push_str(WHOAMI);
    std::fs::write(&api, code).unwrap();
    let env = [
        ("FLUXLIT_AUTH_MODE", "oidc"),
        ("FLUXLIT_PUBLIC_BASE_URL", base.as_str()),
        ("FLUXLIT_OIDC_ISSUER", idp.issuer.as_str()),
        ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
        ("FLUXLIT_OIDC_CLIENT_SECRET", "test-secret"),
        ("FLUXLIT_OIDC_SCOPES", "openid,email,profile,groups"),
        (
            "FLUXLIT_AUTH_COOKIE_SECRETS",
            "e2e-test-cookie-secret-0123456789abcdef-0123",
        ),
        ("FLUXLIT_AUTH_SESSION_STORE", "memory"),
    ];
    let gw = Fluxlit::start_on_port(dir, "run", port, &[], &env).await;
    gw.wait_ready("/api/readyz").await;
    let cmdline = process::cmdline(gw.child_matching("streamlit"));
    assert!(
        cmdline.contains("--server.trustedUserHeaders={")
            && cmdline.contains("\"x-forwarded-email\":\"email\""),
        "{cmdline}"
    );

    let mut browser = Browser::launch().await;
    let page = browser.open(&gw.url("/")).await;
    log_in_at_provider(&mut browser, &page, "alice").await;
    wait_for(
        &mut browser,
        &page,
        "Streamlit showing the user",
        "document.body && document.body.innerText.includes('USER=alice@example.test;SUB=alice')",
    )
    .await;
    // The page's own requests carry the session: the API sees the identity.
    let me = browser
        .eval(
            &page,
            "fetch('/api/auth/userinfo').then(r => r.json()).then(j => j.email)",
        )
        .await;
    assert_eq!(me, "alice@example.test");
    let api = browser
        .eval(
            &page,
            "fetch('/api/whoami').then(r => r.json()).then(j => JSON.stringify(j))",
        )
        .await;
    let api: Value = serde_json::from_str(api.as_str().unwrap_or("null")).unwrap();
    assert_eq!(api["email"], "alice@example.test", "{api}");
    assert_eq!(api["assertion"], true, "{api}");
    assert!(
        !api["cookie"]
            .as_str()
            .unwrap_or("")
            .contains("fluxlit_session"),
        "the API got the gateway's cookie: {api}"
    );

    // Logout: a form POST, then the provider's confirmation, then the app again: the provider
    // asks for a login (its session ended too), no silent re-login.
    browser
        .eval(
            &page,
            "(() => { const f = document.createElement('form'); f.method = 'post';
                      f.action = '/api/auth/logout'; document.body.appendChild(f); f.submit(); return true; })()",
        )
        .await;
    wait_for(
        &mut browser,
        &page,
        "the provider's logout confirmation",
        "(() => { const b = document.querySelector('button[name=logout]'); if (!b) return false; b.click(); return true; })()",
    )
    .await;
    wait_for(
        &mut browser,
        &page,
        "the provider's login form after logout",
        "!!document.querySelector('input[name=login]')",
    )
    .await;
    // The app sent the browser to the provider, which asks for a login.
    let at = browser.eval(&page, "location.href").await;
    assert!(
        at.as_str().is_some_and(|u| u.starts_with(&idp.issuer)),
        "{at}"
    );
    idp.stop().await;
}
