#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use fluxlit_config::{CliOverrides, Environment};

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("fluxlit-doctor-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn run(dir: &std::path::Path, env: &[(&str, &str)], options: Options) -> Report {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("FLUXLIT_STREAMLIT_PYTHON", "/nonexistent/python"),
        ("FLUXLIT_GATEWAY_PORT", "0"),
    ];
    pairs.extend_from_slice(env);
    diagnose_with(
        &LoadOptions::new(dir, Environment::from_pairs(pairs), CliOverrides::default()),
        &options,
    )
    .await
}

fn row<'a>(r: &'a Report, name: &str) -> &'a Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} row in {}", r.to_text()))
}

#[tokio::test]
async fn reports_missing_target_and_python() {
    let dir = temp_dir("missing");
    let r = run(&dir, &[], Options::default()).await;
    assert_eq!(row(&r, "config").status, Status::Pass);
    assert_eq!(row(&r, "target").status, Status::Fail);
    assert_eq!(row(&r, "python_version").status, Status::Fail);
    assert_eq!(row(&r, "streamlit_version").status, Status::Fail);
    assert_eq!(row(&r, "api").status, Status::Warn);
    assert_eq!(row(&r, "gateway_bind").status, Status::Pass);
    assert!(r.failed());
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["status"], "fail");
    assert_eq!(v["target"], "app.py");
    assert_eq!(v["warnings_only"], false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn checks_a_fluxlit_for_python_target() {
    let dir = temp_dir("py");
    let (target, api) = {
        let r = run(&dir, &[("FLUXLIT_TARGET", "app:app")], Options::default()).await;
        (row(&r, "import_target").clone(), row(&r, "api").clone())
    };
    assert_eq!(target.status, Status::Fail);
    assert!(
        target
            .detail
            .contains("cannot run the Python interpreter /nonexistent/python"),
        "{}",
        target.detail
    );
    assert_eq!(api.status, Status::Pass, "{}", api.detail);
    assert!(api.detail.contains("app.api"), "{}", api.detail);
    let r = run(
        &dir,
        &[
            ("FLUXLIT_TARGET", "app:"),
            ("FLUXLIT_STREAMLIT_PYTHON", "python3"),
        ],
        Options::default(),
    )
    .await;
    let target = row(&r, "import_target");
    assert_eq!(target.status, Status::Fail);
    assert!(
        target.detail.contains("must look like 'module:attr'"),
        "{}",
        target.detail
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn config_errors_are_a_failed_row() {
    let env = Environment::from_pairs([("FLUXLIT_GATEWAY_PORT", "eighty")]);
    let r = diagnose(&LoadOptions::new(
        &std::env::temp_dir(),
        env,
        CliOverrides::default(),
    ))
    .await;
    assert_eq!(r.checks.len(), 1);
    assert_eq!(r.checks[0].name, "config");
    assert!(r.checks[0].detail.contains("FLUXLIT_GATEWAY_PORT"));
}

#[tokio::test]
async fn gateway_bind_fails_while_another_process_holds_the_port() {
    let dir = temp_dir("bind");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let env = [
        ("FLUXLIT_GATEWAY_HOST", "127.0.0.1"),
        ("FLUXLIT_GATEWAY_PORT", port.as_str()),
    ];
    let r = run(&dir, &env, Options::default()).await;
    let bind = row(&r, "gateway_bind");
    assert_eq!(bind.status, Status::Fail, "{}", bind.detail);
    assert!(
        bind.detail
            .contains(&format!("127.0.0.1:{port} cannot be bound now")),
        "{}",
        bind.detail
    );
    assert!(
        bind.detail.contains("FLUXLIT_GATEWAY_PORT"),
        "{}",
        bind.detail
    );
    drop(held);
    let r = run(&dir, &env, Options::default()).await;
    assert_eq!(row(&r, "gateway_bind").status, Status::Pass);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A configuration that trips every row `--strict` upgrades.
const TRIPS_EVERY_STRICT_ROW: &[(&str, &str)] = &[
    ("FLUXLIT_ROOT_PATH", "/app"),
    ("FLUXLIT_CORS_ALLOW_ORIGINS", "https://a.example"),
    ("FLUXLIT_ENABLE_SECURITY_HEADERS", "false"),
    ("FLUXLIT_GATEWAY_UPSTREAM_READ_TIMEOUT_S", "2"),
    (
        "FLUXLIT_GATEWAY_FORWARD_CLIENT_HEADERS_TO_STREAMLIT",
        "authorization,x-tenant",
    ),
    ("PUBLIC_BASE_URL", "https://a.example/app"),
    ("FLUXLIT_PUBLIC_BASE_URL", "https://b.example/other"),
];

#[tokio::test]
async fn strict_upgrades_the_reference_rows_only() {
    let dir = temp_dir("strict");
    // Two configurations: the subpath without trust_proxy (oauth_public_base_url needs an
    // empty public_base_url), and trust_proxy with an unlimited body and broad allow list.
    let subpath = [
        ("FLUXLIT_ROOT_PATH", "/app"),
        ("FLUXLIT_PUBLIC_BASE_URL", ""),
    ];
    let trusting = [
        ("FLUXLIT_TRUST_PROXY", "true"),
        ("FLUXLIT_FORWARDED_ALLOW_IPS", "*"),
        ("FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "0"),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for env in [TRIPS_EVERY_STRICT_ROW, &subpath[..], &trusting[..]] {
        let lax = run(&dir, env, Options::default()).await;
        let strict = run(
            &dir,
            env,
            Options {
                strict: true,
                ..Options::default()
            },
        )
        .await;
        assert_eq!(lax.checks.len(), strict.checks.len());
        for (a, b) in lax.checks.iter().zip(&strict.checks) {
            assert_eq!(a.name, b.name);
            if STRICT_ROWS.contains(&a.name) && a.status == Status::Warn {
                assert_eq!(b.status, Status::Fail, "{}: {}", b.name, b.detail);
                assert!(b.detail.ends_with("(FAIL because of --strict)"));
                seen.insert(a.name);
            } else {
                assert_eq!(a.status, b.status, "{}: {}", b.name, b.detail);
            }
        }
    }
    let all: std::collections::BTreeSet<&str> = STRICT_ROWS.iter().copied().collect();
    assert_eq!(seen, all, "every strict row was exercised");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn findings_become_their_rows_and_no_finding_is_reported_twice() {
    let dir = temp_dir("findings");
    let env = [
        ("FLUXLIT_TRUST_PROXY", "1"),
        ("FLUXLIT_INTERNAL_API_BASE", "http://127.0.0.1:1/wrong"),
        ("FLUXLIT_GATEWAY_WS_PING_INTERVAL_S", "20"),
    ];
    let r = run(&dir, &env, Options::default()).await;
    let allow = row(&r, "forwarded_allow_ips");
    assert_eq!(allow.status, Status::Warn);
    assert!(
        allow.detail.contains("loopback peers only"),
        "{}",
        allow.detail
    );
    let internal = row(&r, "FLUXLIT_INTERNAL_API_BASE");
    assert_eq!(internal.status, Status::Warn);
    assert!(
        internal.detail.contains("\"/wrong\""),
        "{}",
        internal.detail
    );
    // A finding no row reports is a config_warning row, with its code.
    let warnings: Vec<&Check> = r
        .checks
        .iter()
        .filter(|c| c.name == "config_warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{}", r.to_text());
    assert!(
        warnings[0]
            .detail
            .starts_with("gateway_ws_setting_ignored: ")
    );
    // Defaults elsewhere: the informational rows pass.
    for name in [
        "config.api_mount_path",
        "config.root_path",
        "config.trust_proxy",
        "config.public_base_url",
        "readiness_route",
        "l7_websocket",
        "gateway_upstream_timeouts",
        "gateway_forward_client_headers",
    ] {
        assert_eq!(row(&r, name).status, Status::Pass, "{name}");
    }
    assert_eq!(
        row(&r, "config.trust_proxy").detail,
        "true (from environment variable FLUXLIT_TRUST_PROXY)"
    );
    // An invalid internal base is FAIL.
    let r = run(
        &dir,
        &[("FLUXLIT_INTERNAL_API_BASE", "not a url")],
        Options::default(),
    )
    .await;
    assert_eq!(row(&r, "FLUXLIT_INTERNAL_API_BASE").status, Status::Fail);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn upstreams_are_probed() {
    let dir = temp_dir("upstreams");
    std::fs::write(dir.join("app.py"), "").unwrap();
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", up.local_addr().unwrap());
    let env = [
        ("FLUXLIT_UI_UPSTREAM", url.as_str()),
        ("FLUXLIT_API_UPSTREAM", url.as_str()),
    ];
    let r = run(&dir, &env, Options::default()).await;
    assert_eq!(row(&r, "streamlit_upstream").status, Status::Pass);
    assert_eq!(row(&r, "api").status, Status::Pass);
    // No Python is needed: ui_upstream serves the UI.
    assert_eq!(row(&r, "python_version").status, Status::Pass);
    assert_eq!(row(&r, "streamlit_version").status, Status::Pass);
    assert!(!r.failed(), "{}", r.to_text());
    drop(up);
    let r = run(&dir, &env, Options::default()).await;
    let ui = row(&r, "streamlit_upstream");
    assert_eq!(ui.status, Status::Warn);
    assert!(ui.detail.contains("is unreachable"), "{}", ui.detail);
    assert_eq!(row(&r, "api").status, Status::Warn);
    // FluxLit for Python's variables are named as ignored.
    let r = run(
        &dir,
        &[
            ("FLUXLIT_STREAMLIT_UPSTREAM", "http://127.0.0.1:1"),
            ("FLUXLIT_STREAMLIT_UPSTREAM_FILE", "/tmp/state"),
        ],
        Options::default(),
    )
    .await;
    assert!(row(&r, "streamlit_upstream").detail.contains("is ignored"));
    assert_eq!(row(&r, "streamlit_upstream_state").status, Status::Warn);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_api_commands_program_must_exist() {
    let dir = temp_dir("apicmd");
    let r = run(
        &dir,
        &[
            ("FLUXLIT_API_COMMAND", "no-such-server --port {port}"),
            ("PATH", "/nonexistent"),
        ],
        Options::default(),
    )
    .await;
    let api = row(&r, "api");
    assert_eq!(api.status, Status::Fail);
    assert!(
        api.detail
            .contains("`no-such-server` is not on the sidecars' PATH"),
        "{}",
        api.detail
    );
    let r = run(
        &dir,
        &[("FLUXLIT_API_COMMAND", "sh -c 'exec sleep 1'")],
        Options::default(),
    )
    .await;
    assert_eq!(
        row(&r, "api").status,
        Status::Pass,
        "{}",
        row(&r, "api").detail
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn streamlit_versions_are_read() {
    use crate::runtime_rows::parse_streamlit_version;
    assert_eq!(
        parse_streamlit_version("Streamlit, version 1.67.0"),
        Some((1, 67, 0))
    );
    assert_eq!(
        parse_streamlit_version("Streamlit, version 1.33"),
        Some((1, 33, 0))
    );
    assert_eq!(
        parse_streamlit_version("Streamlit, version 1.40.0rc1"),
        Some((1, 40, 0))
    );
    assert_eq!(parse_streamlit_version("garbage"), None);
}

#[test]
fn warnings_only_reports_fail_rows_as_warn() {
    let mut r = Report::new(&Options {
        warnings_only: true,
        ..Options::default()
    });
    r.fail("gateway_bind", "taken");
    assert!(r.any_failed());
    assert!(!r.failed());
    assert_eq!(r.status(), "warn");
}

/// Every string literal passed as a row name (`.pass(`, `.warn(`, `.fail(`, `.warn_strict(`,
/// `.findings_row(`, `.push(`) in the crate's sources.
fn row_names_in_sources() -> Vec<String> {
    let mut names = Vec::new();
    for source in [
        include_str!("lib.rs"),
        include_str!("runtime_rows.rs"),
        include_str!("config_rows.rs"),
    ] {
        for marker in [
            ".pass(",
            ".warn(",
            ".fail(",
            ".warn_strict(",
            ".findings_row(",
            ".push(",
        ] {
            for (i, _) in source.match_indices(marker) {
                let rest = source[i + marker.len()..].trim_start();
                if let Some(lit) = rest.strip_prefix('"')
                    && let Some(end) = lit.find('"')
                {
                    names.push(lit[..end].to_owned());
                }
            }
        }
    }
    names.extend(crate::live::ROWS.iter().map(|r| (*r).to_owned()));
    names.sort();
    names.dedup();
    names
}

/// A new row without its section in docs/doctor.md fails here, and so does a documented row
/// that no longer exists.
#[test]
fn every_row_has_its_anchor_in_the_docs() {
    let docs = include_str!("../../../docs/doctor.md");
    let names = row_names_in_sources();
    assert!(names.len() >= 25, "{names:?}");
    for name in names
        .iter()
        .map(String::as_str)
        .chain(STRICT_ROWS.iter().copied())
        .chain(config_rows::ROW_OF_CODE.iter().map(|(_, row)| *row))
    {
        let link = doc_link(name);
        let anchor = link.split_once('#').unwrap().1;
        assert!(
            docs.contains(&format!("<a id=\"{anchor}\"></a>")),
            "docs/doctor.md has no anchor {anchor} for the row {name}"
        );
    }
    for (code, _) in config_rows::ROW_OF_CODE {
        assert!(
            docs.contains(&format!("<a id=\"warning-{code}\"></a>")),
            "{code} is not a documented finding code"
        );
    }
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    for (i, _) in docs.match_indices("<a id=\"doctor-") {
        let rest = &docs[i + "<a id=\"doctor-".len()..];
        let id = &rest[..rest.find('"').unwrap()];
        assert!(
            lower.iter().any(|n| n == id),
            "docs/doctor.md documents a row {id} that no code emits"
        );
    }
}

#[tokio::test]
async fn rows_link_their_docs() {
    let dir = temp_dir("links");
    let r = run(
        &dir,
        &[("FLUXLIT_GATEWAY_WS_PING_INTERVAL_S", "20")],
        Options::default(),
    )
    .await;
    assert_eq!(
        row(&r, "gateway_bind").doc,
        "docs/doctor.md#doctor-gateway_bind"
    );
    assert_eq!(
        row(&r, "FLUXLIT_INTERNAL_API_BASE").doc,
        "docs/doctor.md#doctor-fluxlit_internal_api_base"
    );
    assert_eq!(
        row(&r, "config_warning").doc,
        "docs/doctor.md#warning-gateway_ws_setting_ignored"
    );
    let text = r.to_text();
    assert!(
        text.contains("FAIL  target: ")
            && text.contains("\n      docs: docs/doctor.md#doctor-target\n"),
        "{text}"
    );
    assert!(
        !text.contains("#doctor-config.api_mount_path"),
        "PASS rows print no docs line"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JWKS server on loopback for one or more fetches: answers `body` to every request.
async fn jwks_server(body: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    (url, task)
}

/// The `jwt_keys` row for an issuer and audience plus `extra` (none: no such row).
async fn jwt_keys_of(dir: &std::path::Path, extra: &[(&str, &str)]) -> Option<Check> {
    let mut env = vec![
        ("FLUXLIT_JWT_ISSUER", "https://issuer.example"),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
    ];
    env.extend_from_slice(extra);
    let r = run(dir, &env, Options::default()).await;
    r.checks.into_iter().find(|c| c.name == "jwt_keys")
}

/// `jwt_keys` (auth_mode = jwt only): the secret needs no fetch; a JWKS URL is fetched and must
/// hold a usable key; an unreachable one FAILs saying what the API would answer.
#[tokio::test]
async fn jwt_keys_row() {
    let dir = temp_dir("jwt-keys");
    let jwt = ("FLUXLIT_AUTH_MODE", "jwt");
    assert!(jwt_keys_of(&dir, &[]).await.is_none(), "only in jwt mode");

    let secret = (
        "FLUXLIT_JWT_HS256_SECRET",
        "a-shared-secret-of-at-least-32-bytes",
    );
    let row_ = jwt_keys_of(&dir, &[jwt, secret]).await.unwrap();
    assert_eq!(row_.status, Status::Pass, "{}", row_.detail);
    assert!(
        row_.detail.contains("HS256 shared secret"),
        "{}",
        row_.detail
    );

    let jwks = concat!(
        r#"{"keys":["#,
        include_str!("../../fluxlit-gateway/tests/fixtures/jwt/rsa-a.jwk.json"),
        r#",{"kty":"oct","k":"c2VjcmV0","kid":"sym"}]}"#
    );
    for (body, status, want) in [
        (jwks, Status::Pass, "1 signing key(s) from http://"),
        (r#"{"keys":[]}"#, Status::Fail, "no signing key"),
    ] {
        let (url, server) = jwks_server(body).await;
        let row_ = jwt_keys_of(&dir, &[jwt, ("FLUXLIT_JWT_JWKS_URL", url.as_str())])
            .await
            .unwrap();
        assert_eq!(row_.status, status, "{}", row_.detail);
        assert!(
            row_.detail.contains(want) && row_.detail.contains(&url),
            "{}",
            row_.detail
        );
        server.abort();
    }

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks", l.local_addr().unwrap())
    };
    let row_ = jwt_keys_of(&dir, &[jwt, ("FLUXLIT_JWT_JWKS_URL", closed.as_str())])
        .await
        .unwrap();
    assert_eq!(row_.status, Status::Fail, "{}", row_.detail);
    assert!(
        row_.detail.contains("503") && row_.detail.contains(&closed),
        "{}",
        row_.detail
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const COOKIE_SECRET: &str = "a-cookie-secret-of-at-least-32-bytes";

/// The `oidc_discovery` row for auth_mode = oidc with `issuer` plus `extra` (none: no such row).
async fn oidc_discovery_of(
    dir: &std::path::Path,
    issuer: &str,
    extra: &[(&str, &str)],
) -> Option<Check> {
    let mut env = vec![
        ("FLUXLIT_AUTH_MODE", "oidc"),
        ("FLUXLIT_PUBLIC_BASE_URL", "http://127.0.0.1:9"),
        ("FLUXLIT_OIDC_ISSUER", issuer),
        ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
        ("FLUXLIT_OIDC_CLIENT_SECRET", "test-secret"),
        ("FLUXLIT_AUTH_COOKIE_SECRETS", COOKIE_SECRET),
    ];
    env.extend_from_slice(extra);
    let r = run(dir, &env, Options::default()).await;
    let row_ = r.checks.into_iter().find(|c| c.name == "oidc_discovery");
    if let Some(c) = &row_ {
        assert_eq!(c.doc, "docs/doctor.md#doctor-oidc_discovery");
        assert!(!c.detail.contains("test-secret") && !c.detail.contains(COOKIE_SECRET));
    }
    row_
}

/// `oidc_discovery` (auth_mode = oidc only) against the real test provider: PASS names the
/// issuer, the exact redirect and post-logout URIs to register (root path included) and the
/// provider's logout endpoint, with the clock compared to the provider's `Date`; an
/// unreachable issuer FAILs saying why and what to check.
#[tokio::test]
async fn oidc_discovery_row() {
    let dir = temp_dir("oidc-discovery");
    let provider = fluxlit_testkit::idp::Provider::start(
        serde_json::json!([{
            "client_id": "fluxlit",
            "client_secret": "test-secret",
            "redirect_uris": ["http://127.0.0.1:9/myapp/api/auth/callback"],
            "post_logout_redirect_uris": ["http://127.0.0.1:9/myapp/"],
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
        }]),
        serde_json::Value::Null,
    )
    .await;
    assert!(
        oidc_discovery_of(&dir, &provider.issuer, &[("FLUXLIT_AUTH_MODE", "off")])
            .await
            .is_none(),
        "only in oidc mode"
    );
    let row_ = oidc_discovery_of(&dir, &provider.issuer, &[("FLUXLIT_ROOT_PATH", "/myapp")])
        .await
        .unwrap();
    assert_eq!(row_.status, Status::Pass, "{}", row_.detail);
    for part in [
        format!(
            "issuer {:?} (from environment variable FLUXLIT_OIDC_ISSUER) discovered",
            provider.issuer
        ),
        "redirect URI http://127.0.0.1:9/myapp/api/auth/callback and".to_owned(),
        "post-logout redirect URI http://127.0.0.1:9/myapp/;".to_owned(),
        format!("end_session_endpoint {}/session/end", provider.issuer),
        "the provider's clock is within ".to_owned(),
    ] {
        assert!(
            row_.detail.contains(&part),
            "{part:?} missing from {}",
            row_.detail
        );
    }
    // The issuer must be the provider's name for itself exactly.
    let other = format!("{}/", provider.issuer);
    let row_ = oidc_discovery_of(&dir, &other, &[]).await.unwrap();
    assert_eq!(row_.status, Status::Fail, "{}", row_.detail);
    assert!(
        row_.detail.contains("character for character"),
        "{}",
        row_.detail
    );
    provider.stop().await;

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let row_ = oidc_discovery_of(&dir, &closed, &[]).await.unwrap();
    assert_eq!(row_.status, Status::Fail, "{}", row_.detail);
    for part in [
        format!("OpenID discovery for {closed} failed"),
        "no login can start until discovery works".to_owned(),
        "that this host reaches the provider".to_owned(),
    ] {
        assert!(
            row_.detail.contains(&part),
            "{part:?} missing from {}",
            row_.detail
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The provider's `Date` against our clock: ahead, behind, unparsable.
#[test]
fn clock_skew_is_read_from_the_date_header() {
    use std::time::{Duration, UNIX_EPOCH};
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
    let skew = |d| runtime_rows::clock_skew_s(d, now);
    assert_eq!(skew("Sun, 06 Nov 1994 08:49:37 GMT"), Some(0));
    assert_eq!(skew("Sun, 06 Nov 1994 08:50:17 GMT"), Some(40));
    assert_eq!(skew(" Sun, 06 Nov 1994 08:48:57 GMT "), Some(-40));
    assert_eq!(skew("yesterday"), None);
}

/// A minimal OpenID provider on loopback whose HTTP `Date` is `offset_s` seconds off our clock:
/// its discovery document and JWKS (a real RSA key), nothing else.
async fn skewed_provider(offset_s: i64) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let discovery = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    })
    .to_string();
    let jwks = concat!(
        r#"{"keys":["#,
        include_str!("../../fluxlit-gateway/tests/fixtures/jwt/rsa-a.jwk.json"),
        "]}"
    );
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let body = if head.starts_with("GET /jwks ") {
                jwks.to_owned()
            } else {
                discovery.clone()
            };
            let now = std::time::SystemTime::now();
            let date = if offset_s >= 0 {
                now + std::time::Duration::from_secs(offset_s.unsigned_abs())
            } else {
                now - std::time::Duration::from_secs(offset_s.unsigned_abs())
            };
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        httpdate::fmt_http_date(date),
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    (issuer, task)
}

/// A provider whose clock is more than 30 s off makes `oidc_discovery` WARN (ahead or behind);
/// within 30 s it passes.
#[tokio::test]
async fn oidc_discovery_warns_about_clock_skew() {
    let dir = temp_dir("oidc-skew");
    for (offset, status, want) in [
        (120, Status::Warn, "the provider's clock is 1"),
        (-120, Status::Warn, "s behind this machine's"),
        (0, Status::Pass, "the provider's clock is within "),
    ] {
        let (issuer, server) = skewed_provider(offset).await;
        let row_ = oidc_discovery_of(&dir, &issuer, &[]).await.unwrap();
        assert_eq!(row_.status, status, "{offset}: {}", row_.detail);
        assert!(
            row_.detail.contains(want),
            "{offset}: {want:?} missing from {}",
            row_.detail
        );
        assert!(
            row_.detail
                .contains("redirect URI http://127.0.0.1:9/api/auth/callback"),
            "{}",
            row_.detail
        );
        server.abort();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With forward or oidc auth, a Streamlit without `server.trustedUserHeaders` (before 1.49)
/// is a WARN naming the version that shows the user in `st.user`; without auth it passes.
#[tokio::test]
async fn streamlit_without_trusted_user_headers_warns_when_identity_is_passed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("trusted-headers");
    std::fs::write(dir.join("app.py"), "").unwrap();
    let python = dir.join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\nif [ \"$2\" = streamlit ]; then echo 'Streamlit, version 1.45.1'; else echo 'Python 3.12.3'; fi\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let python = python.display().to_string();
    let plain = [("FLUXLIT_STREAMLIT_PYTHON", python.as_str())];
    let r = run(&dir, &plain, Options::default()).await;
    assert_eq!(
        row(&r, "streamlit_version").status,
        Status::Pass,
        "{}",
        r.to_text()
    );
    let forward = [
        ("FLUXLIT_STREAMLIT_PYTHON", python.as_str()),
        ("FLUXLIT_AUTH_MODE", "forward"),
        ("FLUXLIT_AUTH_FORWARD_TRUSTED_CIDRS", "127.0.0.1"),
    ];
    let r = run(&dir, &forward, Options::default()).await;
    let v = row(&r, "streamlit_version");
    assert_eq!(v.status, Status::Warn, "{}", r.to_text());
    assert!(
        v.detail.contains("1.45.1") && v.detail.contains("1.49"),
        "{}",
        v.detail
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
