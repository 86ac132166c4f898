//! `auth_mode = jwt` end to end (issue 13): the real binary with the example's FastAPI API and
//! real Streamlit behind it, configured the way FluxLit for Python deployments are
//! (`FLUXLIT_JWT_*`, an HS256 secret). Every API request needs a valid bearer token (reference
//! §8.1 answers); the health endpoints and the UI stay public.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use support::{Fluxlit, request};

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn token(secret: &str, exp_offset_s: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = i64::try_from(now).unwrap() + exp_offset_s;
    let claims = serde_json::json!({
        "iss": "https://issuer.example",
        "aud": "fluxlit-api",
        "sub": "ada",
        "exp": exp,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_api_needs_a_valid_bearer_token() {
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", "https://issuer.example"),
        ("FLUXLIT_JWT_AUDIENCE", "fluxlit-api"),
        ("FLUXLIT_JWT_HS256_SECRET", SECRET),
    ];
    let gw = Fluxlit::start_with_env(support::example_copy(), &[], &env).await;
    // Public: readiness (the wait below), liveness and the UI.
    gw.wait_ready("/api/readyz").await;
    let (s, _, body) = request("GET", &gw.url("/api/healthz"), &[], vec![])
        .await
        .unwrap();
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = request("GET", &gw.url("/"), &[], vec![]).await.unwrap();
    assert_eq!(s, 200, "the UI stays public in jwt mode: {body}");

    let bearer = |t: &str| format!("Bearer {t}");
    let good = token(SECRET, 300);
    // (Authorization, status, detail, WWW-Authenticate)
    type Case<'a> = (Option<String>, u16, &'a str, Option<&'a str>);
    let cases: [Case; 4] = [
        (None, 401, "Missing bearer token", Some("Bearer")),
        (
            Some(bearer(&token(SECRET, -600))),
            401,
            "Token expired",
            Some("Bearer error=\"invalid_token\""),
        ),
        (
            Some(bearer(&token("another-secret-of-at-least-32-bytes!!", 300))),
            401,
            "Invalid token",
            Some("Bearer error=\"invalid_token\""),
        ),
        (Some(bearer(&good)), 200, "", None),
    ];
    for (auth, status, detail, challenge) in cases {
        let h: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", v.as_str())).collect();
        let (s, head, body) = request("GET", &gw.url("/api/hello"), &h, vec![])
            .await
            .unwrap();
        assert_eq!(s, status, "{auth:?}: {body}");
        if status == 401 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["detail"], detail, "{body}");
            assert_eq!(
                head.get("www-authenticate").and_then(|v| v.to_str().ok()),
                challenge
            );
        }
    }
}
