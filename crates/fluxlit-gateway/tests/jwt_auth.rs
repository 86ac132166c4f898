//! `auth_mode = jwt` (issue 13; reference §8.1): every API request but the health endpoints
//! needs a bearer JWT, checked on both engines in front of a recording upstream that serves as
//! the UI and as the API, raw bytes on the wire. The answers are the reference's table byte for
//! byte; keys come from a shared secret (HS256), a loopback JWKS server or the issuer's
//! discovery document, with the committed test keys of `tests/fixtures/jwt`. The API never
//! takes the HTTP/1.1 fast path: an API request on a connection the fast path serves is handed
//! to hyper and checked there (`the_fast_path_never_bypasses_the_check`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxlit_auth::jwt::{JwtConfig, JwtVerifier, KeySource};
use fluxlit_gateway::{ApiTarget, Gateway, GatewayBuilder};
use fluxlit_testkit::raw::{RawClient, RawResponse, Recorded, RecordingUpstream, Reply};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{ENGINES, engine, start_on, up_at};

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

async fn upstream() -> RecordingUpstream {
    support::upgrading_upstream().await
}

/// A gateway configured the way `fluxlit run` configures it: from loaded settings (`env`),
/// with `rec` as the UI and the API upstream.
fn from_settings(env: &[(&str, &str)], rec: &RecordingUpstream) -> GatewayBuilder {
    let dir = fluxlit_testkit::TempDir::new("gateway-jwt");
    let loaded = fluxlit_config::load(&fluxlit_config::LoadOptions::new(
        dir.path(),
        fluxlit_config::Environment::from_pairs(env.iter().copied()),
        fluxlit_config::CliOverrides::default(),
    ))
    .expect("valid settings");
    Gateway::builder()
        .settings(&loaded.settings)
        .ui(up_at(rec.addr, "ui"))
        .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
}

const ISSUER: &str = "https://issuer.example";
const SECRET: &str = "test-only-secret-0123456789abcdef-0123456789";

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn jwk(name: &str) -> Value {
    serde_json::from_slice(&fixture(&format!("{name}.jwk.json"))).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid claims for `ISSUER` and audience `api`, expiring in an hour.
fn claims() -> Value {
    json!({"sub": "alice", "iss": ISSUER, "aud": "api", "exp": now() + 3600})
}

/// A token for `claims`, signed by the fixture key `key` (or the HS256 `SECRET`) with
/// `kid`.
fn token(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let k = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(key.as_bytes()).unwrap(),
        Algorithm::RS256 | Algorithm::RS512 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&fixture(&format!("{key}.pem"))).unwrap()
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture(&format!("{key}.pem"))).unwrap(),
        other => panic!("no fixture for {other:?}"),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &k).unwrap()
}

/// An unsigned token (`alg: none`, RFC 7519 §6), which must never be accepted.
fn unsigned(claims: &Value) -> String {
    // base64url without padding (RFC 4648 §5).
    let b64 = |v: &Value| {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

/// Sends `GET path` with the `authorization` field (raw bytes) and returns the response.
async fn get(gw: std::net::SocketAddr, path: &str, authorization: Option<&[u8]>) -> RawResponse {
    let mut c = RawClient::connect(gw).await;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n").into_bytes();
    if let Some(a) = authorization {
        head.extend_from_slice(b"Authorization: ");
        head.extend_from_slice(a);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    c.send(&head).await;
    c.response(false).await.expect("a response")
}

/// Asserts a denial: status, the exact body, `WWW-Authenticate` and the JSON type.
fn assert_denied(r: &RawResponse, status: u16, detail: &str, www: Option<&str>, ctx: &str) {
    assert_eq!(r.status, status, "{ctx}: {}", r.text());
    assert_eq!(r.text(), format!("{{\"detail\":\"{detail}\"}}"), "{ctx}");
    assert_eq!(r.get("www-authenticate"), www, "{ctx}");
    assert_eq!(r.get("content-type"), Some("application/json"), "{ctx}");
    assert_eq!(
        r.get("content-length"),
        Some(r.text().len().to_string().as_str()),
        "{ctx}"
    );
}

const INVALID: Option<&str> = Some("Bearer error=\"invalid_token\"");

/// The §8.1 table row by row, with a shared secret configured through settings (as
/// `fluxlit run` does), on both engines: the denied requests never reach the API, the
/// health endpoints and the UI need no token, a valid token passes with its
/// `Authorization` unchanged.
#[tokio::test]
async fn the_reference_table_row_by_row() {
    for fast in ENGINES {
        let rec = upstream().await;
        let env = [
            ("FLUXLIT_AUTH_MODE", "jwt"),
            ("FLUXLIT_JWT_ISSUER", ISSUER),
            ("FLUXLIT_JWT_AUDIENCE", "other,api"),
            ("FLUXLIT_JWT_HS256_SECRET", SECRET),
        ];
        let gw = start_on(from_settings(&env, &rec), fast).await;
        let ok = token(Algorithm::HS256, SECRET, None, &claims());
        let mut c = claims();
        c["exp"] = json!(now() - 10);
        let expired = token(Algorithm::HS256, SECRET, None, &c);
        let mut c = claims();
        c["aud"] = json!("someone-else");
        let wrong_aud = token(Algorithm::HS256, SECRET, None, &c);
        let mut c = claims();
        c["iss"] = json!("https://evil.example");
        let wrong_iss = token(Algorithm::HS256, SECRET, None, &c);
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        let no_exp = token(Algorithm::HS256, SECRET, None, &c);
        let mut c = claims();
        c["nbf"] = json!(now() + 600);
        let not_yet = token(Algorithm::HS256, SECRET, None, &c);
        let wrong_key = token(
            Algorithm::HS256,
            "another-secret-0123456789abcdef-xyz",
            None,
            &claims(),
        );
        let rsa = token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &claims());
        let none = unsigned(&claims());
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        // (what, Authorization field, status, detail, WWW-Authenticate)
        type Row<'a> = (&'a str, Option<Vec<u8>>, u16, &'a str, Option<&'a str>);
        let rows: Vec<Row<'_>> = vec![
            (
                "no Authorization",
                None,
                401,
                "Missing bearer token",
                Some("Bearer"),
            ),
            (
                "Basic",
                Some(b"Basic YWxpY2U6cHc=".to_vec()),
                401,
                "Missing bearer token",
                Some("Bearer"),
            ),
            (
                "no space",
                Some(b"Bearer".to_vec()),
                401,
                "Missing bearer token",
                Some("Bearer"),
            ),
            (
                "only white space",
                Some(b"Bearer \xa0".to_vec()),
                401,
                "Empty bearer token",
                Some("Bearer"),
            ),
            (
                "expired",
                Some(bearer(&expired)),
                401,
                "Token expired",
                INVALID,
            ),
            (
                "garbage",
                Some(b"Bearer not-a-jwt".to_vec()),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "alg none",
                Some(bearer(&none)),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "HS256 with another key",
                Some(bearer(&wrong_key)),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "RS256 with a secret configured",
                Some(bearer(&rsa)),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "wrong aud",
                Some(bearer(&wrong_aud)),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "wrong iss",
                Some(bearer(&wrong_iss)),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "no exp",
                Some(bearer(&no_exp)),
                401,
                "Invalid token",
                INVALID,
            ),
            (
                "nbf in the future",
                Some(bearer(&not_yet)),
                401,
                "Invalid token",
                INVALID,
            ),
        ];
        for (what, field, status, detail, www) in &rows {
            let r = get(gw.addr, "/api/x", field.as_deref()).await;
            assert_denied(
                &r,
                *status,
                detail,
                *www,
                &format!("{} {what}", engine(fast)),
            );
            assert!(r.get("x-request-id").is_some(), "{what}");
        }
        assert!(
            rec.requests().is_empty(),
            "{}: a denied request reached the API",
            engine(fast)
        );

        // Accepted: any case of the scheme; the field reaches the API unchanged.
        for field in [format!("Bearer {ok}"), format!("bEARER   {ok}")] {
            let r = get(gw.addr, "/api/x", Some(field.as_bytes())).await;
            assert_eq!(r.status, 200, "{}: {}", engine(fast), r.text());
            let seen = rec.requests().pop().unwrap();
            assert_eq!(seen.target, "/x");
            assert_eq!(seen.all("authorization"), std::slice::from_ref(&field));
        }
        // Public without a token: health endpoints and the UI.
        for path in ["/api/healthz", "/api/readyz", "/ui"] {
            let r = get(gw.addr, path, None).await;
            assert_eq!(r.status, 200, "{} {path}: {}", engine(fast), r.text());
        }
        // A WebSocket upgrade to the API is a request like any other: 401, no tunnel.
        let mut c = RawClient::connect(gw.addr).await;
        c.send(format!("GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).await;
        let r = c.response(false).await.expect("a response");
        assert_denied(
            &r,
            401,
            "Missing bearer token",
            Some("Bearer"),
            &format!("{} upgrade", engine(fast)),
        );
        let targets: Vec<String> = rec.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/x", "/x", "/ui"], "{}", engine(fast));
        // Every API request was hyper's; the UI one the fast path's when on.
        gw.assert_split(fast, 1, rows.len() as u64 + 2 + 2 + 1, "jwt table");
    }
}

/// With CORS on, preflights are answered before the bearer check (browsers send them
/// without credentials) and denials carry the CORS headers, so the page can read the 401.
#[tokio::test]
async fn cors_preflights_pass_and_denials_carry_cors_headers() {
    for fast in ENGINES {
        let rec = upstream().await;
        let env = [
            ("FLUXLIT_AUTH_MODE", "jwt"),
            ("FLUXLIT_JWT_ISSUER", ISSUER),
            ("FLUXLIT_JWT_AUDIENCE", "api"),
            ("FLUXLIT_JWT_HS256_SECRET", SECRET),
            ("FLUXLIT_CORS_ALLOW_ORIGINS", "https://a.example"),
        ];
        let gw = start_on(from_settings(&env, &rec), fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"OPTIONS /api/x HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n").await;
        let r = c.response(false).await.expect("preflight answer");
        assert_eq!(r.status, 200, "{}: {}", engine(fast), r.text());
        assert_eq!(
            r.get("access-control-allow-origin"),
            Some("https://a.example")
        );
        c.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n")
            .await;
        let r = c.response(false).await.expect("denial");
        assert_denied(
            &r,
            401,
            "Missing bearer token",
            Some("Bearer"),
            engine(fast),
        );
        assert_eq!(
            r.get("access-control-allow-origin"),
            Some("https://a.example")
        );
        assert!(rec.requests().is_empty(), "{}", engine(fast));
    }
}

/// The fast path never lets an API request past the check: on one kept-alive connection, a
/// UI request it serves, then (pipelined in the same write) API requests without and with
/// a bad token, then the UI again.
#[tokio::test]
async fn the_fast_path_never_bypasses_the_check() {
    for fast in ENGINES {
        let rec = upstream().await;
        let env = [
            ("FLUXLIT_AUTH_MODE", "jwt"),
            ("FLUXLIT_JWT_ISSUER", ISSUER),
            ("FLUXLIT_JWT_AUDIENCE", "api"),
            ("FLUXLIT_JWT_HS256_SECRET", SECRET),
        ];
        let gw = start_on(from_settings(&env, &rec), fast).await;
        let mut c = RawClient::connect(gw.addr).await;
        c.send(b"GET /ui HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(c.response(false).await.expect("UI").status, 200);
        c.send(b"GET /api/a HTTP/1.1\r\nHost: x\r\n\r\nGET /api/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x.y.z\r\n\r\nGET /ui2 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = c.response(false).await.expect("first API answer");
        assert_denied(
            &r,
            401,
            "Missing bearer token",
            Some("Bearer"),
            engine(fast),
        );
        let r = c.response(false).await.expect("second API answer");
        assert_denied(&r, 401, "Invalid token", INVALID, engine(fast));
        assert_eq!(c.response(false).await.expect("UI again").status, 200);
        let targets: Vec<String> = rec.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/ui", "/ui2"], "{}", engine(fast));
        // With the fast path on, it served the first UI request and handed the connection to
        // hyper at the first API request; hyper checked both and served the rest.
        gw.assert_split(fast, 1, 3, "UI, two API requests, UI on one connection");
    }
}

/// Keys from `jwt_jwks_url` (settings, as `fluxlit run` builds the gateway): a token signed by
/// a JWKS key passes, one signed by another key under the same `kid` does not; both engines.
#[tokio::test]
async fn jwks_url_from_settings() {
    for fast in ENGINES {
        let rec = upstream().await;
        let jwks = Arc::new(Mutex::new(json!({"keys": [jwk("rsa-a")]})));
        let server = jwks_server(jwks).await;
        let url = format!("http://{}/jwks", server.addr);
        let env = [
            ("FLUXLIT_AUTH_MODE", "jwt"),
            ("FLUXLIT_JWT_ISSUER", ISSUER),
            ("FLUXLIT_JWT_AUDIENCE", "[\"api\"]"),
            ("FLUXLIT_JWT_JWKS_URL", url.as_str()),
        ];
        let gw = start_on(from_settings(&env, &rec), fast).await;
        let ctx = engine(fast);
        let good = token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &claims());
        let r = get(gw.addr, "/api/x", Some(format!("Bearer {good}").as_bytes())).await;
        assert_eq!(r.status, 200, "{ctx}: {}", r.text());
        let other = token(Algorithm::RS256, "rsa-b", Some("rsa-a"), &claims());
        let r = get(
            gw.addr,
            "/api/x",
            Some(format!("Bearer {other}").as_bytes()),
        )
        .await;
        assert_denied(&r, 401, "Invalid token", INVALID, &format!("{ctx} rsa-b"));
        let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/jwks"], "{ctx}: fetched once");
        assert_eq!(
            rec.requests().len(),
            1,
            "{ctx}: only the valid token reached the API"
        );
    }
}

/// A loopback JWKS server: serves `jwks` (replaceable) at `/jwks` and a discovery document
/// for `http://{its address}` at `/.well-known/openid-configuration`.
async fn jwks_server(jwks: Arc<Mutex<Value>>) -> RecordingUpstream {
    let addr_cell: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::new(Mutex::new(None));
    let cell = addr_cell.clone();
    let server = RecordingUpstream::with(move |r: &Recorded| {
        let body = match r.target.as_str() {
            "/jwks" => jwks.lock().unwrap().to_string(),
            "/.well-known/openid-configuration" => {
                let base = format!("http://{}", cell.lock().unwrap().unwrap());
                json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string()
            }
            _ => return Reply::raw("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
        };
        Reply::ok(body.as_bytes())
    })
    .await;
    *addr_cell.lock().unwrap() = Some(server.addr);
    server
}

fn jwks_gateway(
    rec: &RecordingUpstream,
    issuer: &str,
    keys: KeySource,
    interval: Duration,
) -> (fluxlit_gateway::GatewayBuilder, Arc<JwtVerifier>) {
    let verifier = Arc::new(
        JwtVerifier::with_refetch_interval(
            JwtConfig {
                issuer: issuer.into(),
                audiences: vec!["api".into()],
                leeway_seconds: 0,
                keys,
            },
            interval,
        )
        .unwrap(),
    );
    let b = Gateway::builder()
        .ui(up_at(rec.addr, "ui"))
        .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
        .jwt(verifier.clone());
    (b, verifier)
}

/// JWKS keys are pinned to their algorithm and found by `kid`; an unknown `kid` refetches
/// the JWKS once for any number of concurrent requests (key rotation), and not again
/// within the refetch interval.
#[tokio::test]
async fn jwks_keys_are_pinned_and_rotated() {
    for fast in ENGINES {
        let rec = upstream().await;
        let jwks = Arc::new(Mutex::new(json!({"keys": [jwk("rsa-a"), jwk("ec-p256")]})));
        let server = jwks_server(jwks.clone()).await;
        let url: http::Uri = format!("http://{}/jwks", server.addr).parse().unwrap();
        let (b, verifier) = jwks_gateway(&rec, ISSUER, KeySource::Jwks(url), Duration::ZERO);
        let gw = start_on(b, fast).await;
        let ctx = engine(fast);
        let bearer = |t: String| format!("Bearer {t}").into_bytes();
        let c = claims();
        for (what, t) in [
            (
                "RS256 rsa-a",
                token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &c),
            ),
            (
                "ES256 ec-p256",
                token(Algorithm::ES256, "ec-p256", Some("ec-p256"), &c),
            ),
        ] {
            let r = get(gw.addr, "/api/x", Some(&bearer(t))).await;
            assert_eq!(r.status, 200, "{ctx} {what}: {}", r.text());
        }
        assert_eq!(
            verifier.jwks_fetches(),
            1,
            "{ctx}: fetched once, on first use"
        );
        // The algorithm is the key's, whatever the token says: an RS256 signature under the
        // EC key's kid, and HS256 "signed" with the RSA key's public modulus as the secret.
        let n = jwk("rsa-a")["n"].as_str().unwrap().to_owned();
        for (what, t) in [
            (
                "RS256 under the EC kid",
                token(Algorithm::RS256, "rsa-a", Some("ec-p256"), &c),
            ),
            // Signed by the right key, but with an algorithm its JWK does not name (RS256).
            (
                "RS512 with the RS256 key",
                token(Algorithm::RS512, "rsa-a", Some("rsa-a"), &c),
            ),
            (
                "PS256 with the RS256 key",
                token(Algorithm::PS256, "rsa-a", Some("rsa-a"), &c),
            ),
            (
                "HS256 with the public key",
                token(Algorithm::HS256, &n, Some("rsa-a"), &c),
            ),
            ("alg none", unsigned(&c)),
        ] {
            let r = get(gw.addr, "/api/x", Some(&bearer(t))).await;
            assert_denied(&r, 401, "Invalid token", INVALID, &format!("{ctx} {what}"));
        }
        // Rotation: the provider now signs with rsa-b. Twenty concurrent requests with the
        // new kid cause one fetch.
        *jwks.lock().unwrap() = json!({"keys": [jwk("rsa-b")]});
        let before = verifier.jwks_fetches();
        let t = token(Algorithm::RS256, "rsa-b", Some("rsa-b"), &c);
        let field = bearer(t);
        let all =
            futures_util::future::join_all((0..20).map(|_| get(gw.addr, "/api/x", Some(&field))))
                .await;
        for r in &all {
            assert_eq!(r.status, 200, "{ctx} rotated key: {}", r.text());
        }
        assert_eq!(
            verifier.jwks_fetches() - before,
            1,
            "{ctx}: twenty concurrent requests with a new kid fetch once"
        );
        // The old key is gone from the JWKS: its tokens no longer pass.
        let old = token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &c);
        let r = get(gw.addr, "/api/x", Some(&bearer(old))).await;
        assert_denied(
            &r,
            401,
            "Invalid token",
            INVALID,
            &format!("{ctx} retired key"),
        );
        drop(server);
    }
}

/// With the default refetch interval (30 s), a token with an unknown `kid` right after a
/// fetch does not fetch again; the JWKS found by discovery (the issuer's
/// `/.well-known/openid-configuration`) serves the known keys.
#[tokio::test]
async fn unknown_kids_do_not_hammer_the_provider() {
    for fast in ENGINES {
        let rec = upstream().await;
        let jwks = Arc::new(Mutex::new(json!({"keys": [jwk("rsa-a")]})));
        let server = jwks_server(jwks).await;
        let issuer = format!("http://{}", server.addr);
        let (b, verifier) = jwks_gateway(
            &rec,
            &issuer,
            KeySource::Discovery,
            fluxlit_auth::jwt::JWKS_REFETCH_INTERVAL,
        );
        let gw = start_on(b, fast).await;
        let ctx = engine(fast);
        let mut c = claims();
        c["iss"] = json!(issuer);
        let t = token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &c);
        let r = get(gw.addr, "/api/x", Some(format!("Bearer {t}").as_bytes())).await;
        assert_eq!(r.status, 200, "{ctx}: {}", r.text());
        // Discovery, then the JWKS.
        let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(
            targets,
            ["/.well-known/openid-configuration", "/jwks"],
            "{ctx}"
        );
        for kid in ["made-up-1", "made-up-2", "made-up-3"] {
            let t = token(Algorithm::RS256, "rsa-a", Some(kid), &c);
            let r = get(gw.addr, "/api/x", Some(format!("Bearer {t}").as_bytes())).await;
            assert_denied(&r, 401, "Invalid token", INVALID, &format!("{ctx} {kid}"));
        }
        assert_eq!(
            verifier.jwks_fetches(),
            2,
            "{ctx}: no refetch within the interval"
        );
        assert_eq!(server.requests().len(), 2, "{ctx}");
    }
}

/// When the keys cannot be fetched at all, the API answers 503 (not the client's fault)
/// and nothing reaches it.
#[tokio::test]
async fn unreachable_keys_are_a_503() {
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = gone.local_addr().unwrap();
    drop(gone);
    // A server that speaks plain HTTP/1.1 where https is asked for: the TLS handshake
    // fails at its first answer.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = plain.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    for fast in ENGINES {
        for url in [
            format!("http://{dead}/jwks"),
            format!("https://{plain_addr}/jwks"),
        ] {
            let rec = upstream().await;
            let keys = KeySource::Jwks(url.parse().unwrap());
            let (b, _) = jwks_gateway(&rec, ISSUER, keys, Duration::ZERO);
            let gw = start_on(b, fast).await;
            let t = token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &claims());
            let r = get(gw.addr, "/api/x", Some(format!("Bearer {t}").as_bytes())).await;
            let ctx = format!("{} {url}", engine(fast));
            assert_denied(&r, 503, "Authentication keys unavailable", None, &ctx);
            assert!(rec.requests().is_empty(), "{ctx}");
        }
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the https fetch was tried, once per engine"
    );
    server.abort();
}

/// Settings that cannot make a verifier (here: no audience, which loading refuses, so a caller
/// that builds `Settings` itself) are a build error naming the cause, never a gateway that lets
/// API requests through unchecked.
#[test]
fn unusable_jwt_settings_are_a_build_error() {
    let dir = fluxlit_testkit::TempDir::new("gateway-jwt-build");
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", ISSUER),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
        ("FLUXLIT_JWT_HS256_SECRET", SECRET),
    ];
    let mut settings = fluxlit_config::load(&fluxlit_config::LoadOptions::new(
        dir.path(),
        fluxlit_config::Environment::from_pairs(env.iter().copied()),
        fluxlit_config::CliOverrides::default(),
    ))
    .expect("valid settings")
    .settings;
    assert!(Gateway::builder().settings(&settings).build().is_ok());
    settings.jwt_audience.clear();
    let err = Gateway::builder().settings(&settings).build().unwrap_err();
    assert!(
        matches!(err, fluxlit_gateway::BuildError::Jwt(_)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "cannot check bearer tokens (auth_mode = jwt): jwt_audience is required for JWT checks"
    );
}

/// Discovery trusts a document only when its `issuer` is exactly `jwt_issuer` (OpenID Connect
/// Discovery 1.0 §4.3): here the configured issuer has a trailing `/` the document's lacks, so
/// the JWKS is never fetched and the API answers 503 while nothing reaches it.
#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    for fast in ENGINES {
        let rec = upstream().await;
        let jwks = Arc::new(Mutex::new(json!({"keys": [jwk("rsa-a")]})));
        let server = jwks_server(jwks).await;
        let issuer = format!("http://{}/", server.addr);
        let (b, verifier) = jwks_gateway(&rec, &issuer, KeySource::Discovery, Duration::ZERO);
        let gw = start_on(b, fast).await;
        let ctx = engine(fast);
        let mut c = claims();
        c["iss"] = json!(issuer);
        let t = token(Algorithm::RS256, "rsa-a", Some("rsa-a"), &c);
        let r = get(gw.addr, "/api/x", Some(format!("Bearer {t}").as_bytes())).await;
        assert_denied(&r, 503, "Authentication keys unavailable", None, ctx);
        let targets: Vec<String> = server.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(
            targets,
            ["/.well-known/openid-configuration"],
            "{ctx}: the JWKS of a mismatched issuer is never fetched"
        );
        assert_eq!(verifier.jwks_fetches(), 1, "{ctx}");
        assert!(rec.requests().is_empty(), "{ctx}");
    }
}

/// HTTP/2 (prior knowledge; hyper's engine) reaches the API through the same check: without a
/// token the §8.1 answer, with a valid one the API; one connection, several streams.
#[tokio::test]
async fn http2_api_requests_are_checked_too() {
    use http_body_util::BodyExt;

    let rec = upstream().await;
    let env = [
        ("FLUXLIT_AUTH_MODE", "jwt"),
        ("FLUXLIT_JWT_ISSUER", ISSUER),
        ("FLUXLIT_JWT_AUDIENCE", "api"),
        ("FLUXLIT_JWT_HS256_SECRET", SECRET),
    ];
    let gw = start_on(from_settings(&env, &rec), true).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let ok = token(Algorithm::HS256, SECRET, None, &claims());
    for (authorization, status, body) in [
        (None, 401, Some(r#"{"detail":"Missing bearer token"}"#)),
        (
            Some("Bearer x.y.z".to_owned()),
            401,
            Some(r#"{"detail":"Invalid token"}"#),
        ),
        (Some(format!("Bearer {ok}")), 200, None),
    ] {
        let mut req = http::Request::get(format!("http://{}/api/x", gw.addr));
        if let Some(a) = &authorization {
            req = req.header(http::header::AUTHORIZATION, a.as_str());
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = support::within("an HTTP/2 answer", sender.send_request(req))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{authorization:?}");
        let www = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if let Some(body) = body {
            assert_eq!(std::str::from_utf8(&bytes).unwrap(), body);
            assert!(www.is_some_and(|w| w.starts_with("Bearer")), "{body}");
        }
    }
    let targets: Vec<String> = rec.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/x"], "only the valid token reached the API");
    gw.assert_served(0, 3, "HTTP/2 is hyper's");
    drop(sender);
    conn.abort();
}
