//! ID tokens a real provider never issues (AUTH.md A.7 scenario 3): the relying party must
//! refuse an unsigned token (`alg: none`), one signed with HS256 using the client secret as
//! the key, one for another audience, an expired one, and one whose `kid` is not in the
//! provider's keys, and accept the same claims correctly signed. A real OpenID provider cannot
//! be made to send these, so this test serves discovery, the JWKS and a token endpoint itself
//! (loopback), with the committed RSA test keys of crates/fluxlit-gateway/tests/fixtures/jwt.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fluxlit_auth::oidc::{OidcConfig, RelyingParty};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const CLIENT: &str = "fluxlit";
const SECRET: &str = "client-secret-that-must-never-sign-0123456789";

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fluxlit-gateway/tests/fixtures/jwt")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A provider that answers discovery, its JWKS (`rsa-a`) and a token endpoint returning
/// whatever ID token the test put in `next`.
struct FakeProvider {
    issuer: String,
    next: Arc<Mutex<String>>,
}

impl FakeProvider {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let next = Arc::new(Mutex::new(String::new()));
        let jwk: Value = serde_json::from_slice(&fixture("rsa-a.jwk.json")).unwrap();
        let (iss, tok) = (issuer.clone(), next.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (iss, tok, jwk) = (iss.clone(), tok.clone(), jwk.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let (iss, tok, jwk) = (iss.clone(), tok.clone(), jwk.clone());
                        async move {
                            let body = match req.uri().path() {
                                "/.well-known/openid-configuration" => json!({
                                    "issuer": iss,
                                    "authorization_endpoint": format!("{iss}/auth"),
                                    "token_endpoint": format!("{iss}/token"),
                                    "jwks_uri": format!("{iss}/jwks"),
                                    "response_types_supported": ["code"],
                                    "subject_types_supported": ["public"],
                                    "id_token_signing_alg_values_supported": ["RS256"],
                                }),
                                "/jwks" => json!({"keys": [jwk]}),
                                "/token" => json!({
                                    "access_token": "at",
                                    "token_type": "Bearer",
                                    "expires_in": 300,
                                    "id_token": tok.lock().unwrap().clone(),
                                }),
                                _ => json!({}),
                            };
                            let mut r =
                                http::Response::new(Full::new(Bytes::from(body.to_string())));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { issuer, next }
    }
}

fn now() -> i64 {
    fluxlit_auth::session::now()
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn forged_id_tokens_are_refused_and_a_good_one_accepted() {
    let op = FakeProvider::start().await;
    let rp = RelyingParty::discover(OidcConfig {
        issuer: op.issuer.clone(),
        client_id: CLIENT.into(),
        client_secret: Some(SECRET.into()),
        redirect_uri: "http://127.0.0.1:9/api/auth/callback".into(),
        scopes: vec![],
    })
    .await
    .expect("discovery of the fake provider");
    let login = rp.start_login();
    let claims = |aud: &str, exp: i64| json!({"iss": op.issuer, "sub": "alice", "aud": aud, "iat": now(), "exp": exp, "nonce": login.nonce});
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa-a.pem")).unwrap();
    let rsa_b = EncodingKey::from_rsa_pem(&fixture("rsa-b.pem")).unwrap();
    let signed = |key: &EncodingKey, kid: &str, c: &Value| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, c, key).unwrap()
    };
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-a".into());
        jsonwebtoken::encode(
            &h,
            &claims(CLIENT, now() + 300),
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let cases = [
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(CLIENT, now() + 300))
            ),
        ),
        ("HS256 with the client secret", hs256),
        (
            "another audience",
            signed(&rsa, "rsa-a", &claims("someone-else", now() + 300)),
        ),
        (
            "expired",
            signed(&rsa, "rsa-a", &claims(CLIENT, now() - 3600)),
        ),
        (
            "unknown kid (another key)",
            signed(&rsa_b, "rsa-b", &claims(CLIENT, now() + 300)),
        ),
        (
            "a known kid, signed by another key",
            signed(&rsa_b, "rsa-a", &claims(CLIENT, now() + 300)),
        ),
    ];
    for (what, token) in cases {
        *op.next.lock().unwrap() = token;
        let r = rp.finish_login("code", &login.nonce, &login.verifier).await;
        assert!(r.is_err(), "{what}: accepted");
    }
    *op.next.lock().unwrap() = signed(&rsa, "rsa-a", &claims(CLIENT, now() + 300));
    let (identity, _) = rp
        .finish_login("code", &login.nonce, &login.verifier)
        .await
        .expect("a correctly signed ID token");
    assert_eq!(identity.sub, "alice");
}
