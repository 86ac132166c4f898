//! `fluxlit revoke` (issue 13, "session revocation on compromise"): with the `redis` session
//! store, the command ends one user's sessions, one session or all of them in the store the
//! gateways share, and the revocation is broadcast (gateways close the sessions' WebSockets on
//! it: crates/fluxlit-gateway/tests/oidc_auth.rs); with the `cookie` and `memory` stores it
//! says why it cannot and what to do instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fluxlit_auth::session::{RedisStore, Revoked, Session, SessionIdentity, Store, new_sid, now};
use fluxlit_testkit::TempDir;
use fluxlit_testkit::redis::RedisServer;
use support::run_subcommand;

fn session(sub: &str) -> Session {
    Session {
        sid: new_sid(),
        identity: SessionIdentity {
            iss: "https://login.example.com".into(),
            sub: sub.into(),
            ..SessionIdentity::default()
        },
        created_at: now(),
        expires_at: now() + 600,
        tokens: None,
    }
}

fn env<'a>(store: &'a str, redis_url: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("FLUXLIT_AUTH_MODE", "oidc"),
        ("FLUXLIT_PUBLIC_BASE_URL", "https://app.example.com"),
        ("FLUXLIT_OIDC_ISSUER", "https://login.example.com"),
        ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
        (
            "FLUXLIT_AUTH_COOKIE_SECRETS",
            "revoke-test-cookie-secret-0123456789abcdef",
        ),
        ("FLUXLIT_AUTH_SESSION_STORE", store),
        ("FLUXLIT_AUTH_SESSION_REDIS_URL", redis_url),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_ends_a_users_sessions_and_then_all_through_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let store = Store::Redis(Arc::new(RedisStore::connect(&url, "fluxlit:").unwrap()));
    let mut revocations = store.revocations();
    let a1 = store.create(&session("alice")).await.unwrap();
    let a2 = store.create(&session("alice")).await.unwrap();
    let b = store.create(&session("bob")).await.unwrap();
    let dir = TempDir::new("revoke");

    let run = |args: &'static [&'static str]| {
        let (dir, url) = (dir.path().to_owned(), url.clone());
        tokio::task::spawn_blocking(move || {
            run_subcommand(&dir, "revoke", args, &env("redis", &url))
        })
    };
    let (code, out, err) = run(&["--user", "alice"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Revoked 2 sessions of user \"alice\""),
        "{out}"
    );
    assert!(store.load(&a1).await.unwrap().is_none());
    assert!(store.load(&a2).await.unwrap().is_none());
    assert!(store.load(&b).await.unwrap().is_some());
    let seen = tokio::time::timeout(Duration::from_secs(5), revocations.recv())
        .await
        .expect("the revocation is broadcast")
        .unwrap();
    assert_eq!(seen, Revoked::Sub("alice".into()));

    let (code, out, err) = run(&["--all"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Revoked 1 session in the store"), "{out}");
    assert!(store.load(&b).await.unwrap().is_none());

    let (code, _, err) = run(&[]).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("exactly one of --user SUB, --session SID or --all"),
        "{err}"
    );
    let (code, _, err) = run(&["--user", "x", "--all"]).await.unwrap();
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_reaches_redis_over_tls_and_refuses_an_unknown_certificate() {
    let redis = RedisServer::start_tls();
    let store = Store::Redis(Arc::new(
        RedisStore::connect(&redis.url(), "fluxlit:").unwrap(),
    ));
    let a = store.create(&session("alice")).await.unwrap();
    let dir = TempDir::new("revoke-tls");
    let (tls_url, ca) = (redis.tls_url(), redis.ca_file().display().to_string());
    let run = |trust: bool| {
        let (dir, url, ca) = (dir.path().to_owned(), tls_url.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            let mut env = env("redis", &url);
            if trust {
                env.push(("SSL_CERT_FILE", &ca));
            }
            run_subcommand(&dir, "revoke", &["--user", "alice"], &env)
        })
    };
    // The server's CA is not in the system's trust store: refused, nothing revoked.
    let (code, out, err) = run(false).await.unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("set SSL_CERT_FILE"), "{err}");
    assert!(store.load(&a).await.unwrap().is_some());
    // Trusted through SSL_CERT_FILE: revoked over TLS.
    let (code, out, err) = run(true).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Revoked 1 session of user \"alice\""), "{out}");
    assert!(store.load(&a).await.unwrap().is_none());
}

#[test]
fn stores_without_server_state_say_what_to_do() {
    let dir = TempDir::new("revoke-cookie");
    let (code, _, err) = run_subcommand(dir.path(), "revoke", &["--all"], &env("cookie", ""));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("auth_session_store is cookie"), "{err}");
    assert!(err.contains("auth_cookie_secrets"), "{err}");
    let (code, _, err) = run_subcommand(dir.path(), "revoke", &["--all"], &env("memory", ""));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("restart it"), "{err}");
    let (code, _, err) = run_subcommand(dir.path(), "revoke", &["--all"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("auth_mode is off, not oidc"), "{err}");
}
