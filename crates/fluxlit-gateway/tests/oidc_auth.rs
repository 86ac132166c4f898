//! `auth_mode = oidc` (issue 13; AUTH.md A.4, A.7 scenarios 1–6, 9): the gateway as the
//! backend-for-frontend in front of a real OpenID provider (npm `oidc-provider`,
//! `fluxlit_testkit::idp`) and a recording upstream serving as the UI and the API, on both
//! engines. With OIDC on, the HTTP/1.1 fast path forwards nothing: every UI request is
//! authenticated on hyper's path (`decide::HyperOnly`), which the engine counters prove.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fluxlit_auth::bff::{AccessRules, Bff, BffConfig};
use fluxlit_auth::oidc::OidcConfig;
use fluxlit_auth::session::{MemoryStore, Store};
use fluxlit_gateway::{ApiTarget, Gateway, OidcAuth};
use fluxlit_testkit::idp::{Agent, Provider};
use fluxlit_testkit::raw::{RawClient, RecordingUpstream};
use http::Method;
use support::{ENGINES, Running, engine, launch_on, up_at};

const SECRET: &[u8] = b"test-only-cookie-secret-0123456789abcdef";

async fn upstream() -> RecordingUpstream {
    support::upgrading_upstream().await
}

/// A provider, a recording upstream and a gateway with OIDC on.
struct Setup {
    idp: Provider,
    rec: RecordingUpstream,
    gw: Running,
    base: String,
}

impl Setup {
    async fn start(fast: bool, store: Option<Store>) -> Self {
        Self::start_with(fast, store, serde_json::Value::Null, None).await
    }

    async fn start_with(
        fast: bool,
        store: Option<Store>,
        ttl: serde_json::Value,
        api: Option<fluxlit_gateway::ApiService>,
    ) -> Self {
        Self::start_tweaked(fast, store, ttl, api, |_| {}).await
    }

    /// [`Setup::start_with`], with `tweak` applied to the backend-for-frontend's
    /// configuration.
    async fn start_tweaked(
        fast: bool,
        store: Option<Store>,
        ttl: serde_json::Value,
        api: Option<fluxlit_gateway::ApiService>,
        tweak: impl FnOnce(&mut BffConfig),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let idp = Provider::start(
            serde_json::json!([fluxlit_testkit::idp::gateway_client(&base)]),
            ttl,
        )
        .await;
        let mut cfg = bff_config(&idp.issuer, &base, store);
        tweak(&mut cfg);
        let bff = Bff::new(cfg).unwrap();
        let rec = upstream().await;
        let builder = Gateway::builder()
            .ui(up_at(rec.addr, "ui"))
            .api(match api {
                Some(svc) => ApiTarget::Service(svc),
                None => ApiTarget::Upstream(up_at(rec.addr, "api")),
            })
            .oidc(OidcAuth::new(Arc::new(bff)))
            .drain_timeout(Duration::from_millis(200))
            .http1_fast_path(fast);
        let gw = launch_on(builder, listener);
        Self { idp, rec, gw, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Logs `user` in through the gateway's routes and the provider's forms.
    async fn login(&self, agent: &mut Agent, user: &str) {
        let a = agent
            .request(
                Method::GET,
                &self.url("/api/auth/login?return_to=%2Fpage"),
                None,
            )
            .await;
        assert_eq!(a.status, 302, "{}", a.text());
        let to_provider = a.location().unwrap().to_owned();
        assert!(to_provider.starts_with(&self.idp.issuer), "{to_provider}");
        assert!(
            to_provider.contains("code_challenge_method=S256"),
            "{to_provider}"
        );
        assert!(to_provider.contains("nonce="), "{to_provider}");
        let callback = agent
            .login_at_provider(&self.idp.issuer, &to_provider, user)
            .await;
        assert!(
            callback.starts_with(&self.url("/api/auth/callback?")),
            "{callback}"
        );
        let done = agent.request(Method::GET, &callback, None).await;
        assert_eq!(done.status, 303, "{}", done.text());
        assert_eq!(done.location(), Some("/page"));
        assert!(
            agent.cookie(&self.base, "fluxlit_session").is_some(),
            "the session cookie: {:?}",
            done.headers
        );
    }
}

/// The claims of an `X-Fluxlit-Identity` assertion, verified with the JWKS the gateway serves
/// (`/__fluxlit/jwks.json`), for the audience `fluxlit-api` and the public origin as issuer.
async fn verify_assertion(s: &Setup, token: &str) -> serde_json::Value {
    let r = raw(
        s.gw.addr,
        "GET /__fluxlit/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&r.body).unwrap();
    let kid = jsonwebtoken::decode_header(token)
        .unwrap_or_else(|e| panic!("{token}: {e}"))
        .kid
        .unwrap();
    let jwk = set
        .find(&kid)
        .expect("the assertion's kid in the gateway's JWKS");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["fluxlit-api"]);
    v.set_issuer(&[s.base.as_str()]);
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .unwrap()
    .claims
}

/// The backend-for-frontend of a gateway whose public origin is `base`, at `issuer`.
fn bff_for(issuer: &str, base: &str, store: Option<Store>) -> Bff {
    Bff::new(bff_config(issuer, base, store)).unwrap()
}

/// The configuration [`bff_for`] uses.
fn bff_config(issuer: &str, base: &str, store: Option<Store>) -> BffConfig {
    BffConfig {
        oidc: OidcConfig {
            issuer: issuer.to_owned(),
            client_id: "fluxlit".into(),
            client_secret: Some("test-secret".into()),
            redirect_uri: format!("{base}/api/auth/callback"),
            scopes: vec!["email".into(), "profile".into(), "groups".into()],
        },
        route_prefix: "/api/auth".into(),
        root_path: String::new(),
        public_origin: base.to_owned(),
        post_logout_redirect_uri: format!("{base}/"),
        cookie_secrets: vec![SECRET.to_vec()],
        store,
        lifetime: Duration::from_secs(3600),
        max_chunks: 3,
        secure: false,
        access: AccessRules {
            groups_claim: "groups".into(),
            ..AccessRules::default()
        },
        pass_access_token: true,
        backchannel_logout: true,
        allowed_redirect_origins: vec![],
        compat_exchange: None,
    }
}

/// Opens a WebSocket through the gateway at `gw` with `Origin: origin` and `cookie`
/// (`name=value`); returns the client and the status of the answer.
async fn open_ws(gw: SocketAddr, origin: &str, cookie: &str) -> (RawClient, u16) {
    let mut ws = RawClient::connect(gw).await;
    ws.send(format!("GET /_stcore/stream HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n").as_bytes()).await;
    let status = ws
        .response(false)
        .await
        .expect("the upgrade's answer")
        .status;
    (ws, status)
}

/// Waits (at most `within`) until the gateway closes `ws`.
async fn closed_within(ws: &mut RawClient, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            if ws.closed().await {
                return;
            }
        }
    })
    .await
    .is_ok()
}

/// A whole login of `user` with `agent` at the gateway whose public origin is `base`; returns
/// the session cookie as `fluxlit_session=VALUE`.
async fn log_in(agent: &mut Agent, base: &str, issuer: &str, user: &str) -> String {
    let start = agent
        .request(Method::GET, &format!("{base}/api/auth/login"), None)
        .await;
    let callback = agent
        .login_at_provider(issuer, start.location().expect("to the provider"), user)
        .await;
    let done = agent.request(Method::GET, &callback, None).await;
    assert_eq!(done.status, 303, "{}", done.text());
    format!(
        "fluxlit_session={}",
        agent
            .cookie(base, "fluxlit_session")
            .expect("the session cookie")
    )
}

/// Sends raw `head` (ending in an empty line) and returns the response.
async fn raw(gw: SocketAddr, head: &str) -> fluxlit_testkit::raw::RawResponse {
    let mut c = RawClient::connect(gw).await;
    c.send(head.as_bytes()).await;
    c.response(head.starts_with("HEAD "))
        .await
        .expect("a response")
}

#[tokio::test]
async fn a_login_puts_the_identity_on_both_hops_and_the_gateway_cookie_on_neither() {
    for fast in ENGINES {
        let s = Setup::start(fast, None).await;
        let mut agent = Agent::new();
        s.login(&mut agent, "alice").await;
        let session = agent.cookie(&s.base, "fluxlit_session").unwrap();

        // A page load with a spoofed identity header and Streamlit's XSRF cookie in a second
        // Cookie field: identity from the session only, Streamlit's cookie byte for byte.
        agent.headers = vec![
            ("X-Forwarded-Email".into(), "mallory@evil.test".into()),
            ("X-Forwarded-User".into(), "mallory".into()),
            ("X-Fluxlit-Identity".into(), "forged.assertion.value".into()),
            (
                "Cookie".into(),
                "_streamlit_xsrf=2|ab|cd|1700000000; theme=dark".into(),
            ),
        ];
        let page = agent.request(Method::GET, &s.url("/page?x=1"), None).await;
        assert_eq!(page.status, 200, "{}: {}", engine(fast), page.text());
        let api = agent.request(Method::GET, &s.url("/api/items"), None).await;
        assert_eq!(api.status, 200, "{}: {}", engine(fast), api.text());
        let seen = s.rec.requests();
        let ui = seen
            .iter()
            .find(|r| r.target == "/page?x=1")
            .expect("the UI hop");
        let to_api = seen
            .iter()
            .find(|r| r.target.ends_with("/items"))
            .expect("the API hop");
        for (hop, r) in [("UI", ui), ("API", to_api)] {
            let ctx = format!("{} {hop}", engine(fast));
            assert_eq!(r.all("x-forwarded-user"), vec!["alice".to_owned()], "{ctx}");
            assert_eq!(
                r.all("x-forwarded-email"),
                vec!["alice@example.test".to_owned()],
                "{ctx}"
            );
            assert_eq!(
                r.all("x-forwarded-groups"),
                vec!["staff".to_owned()],
                "{ctx}"
            );
            let assertions = r.all("x-fluxlit-identity");
            assert_eq!(assertions.len(), 1, "{ctx}: {assertions:?}");
            let claims = verify_assertion(&s, &assertions[0]).await;
            assert_eq!(claims["sub"], "alice", "{ctx}");
            assert_eq!(claims["email"], "alice@example.test", "{ctx}");
            let cookies = r.all("cookie").join("; ");
            assert!(!cookies.contains("fluxlit_session"), "{ctx}: {cookies}");
            assert!(!cookies.contains(&session), "{ctx}: {cookies}");
        }
        assert!(
            ui.all("cookie")
                .contains(&"_streamlit_xsrf=2|ab|cd|1700000000; theme=dark".to_owned()),
            "{}: {:?}",
            engine(fast),
            ui.all("cookie")
        );

        agent.headers.clear();
        let me = agent
            .request(Method::GET, &s.url("/api/auth/userinfo"), None)
            .await;
        assert_eq!(me.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&me.body).unwrap();
        assert_eq!(v["sub"], "alice");
        assert_eq!(v["email"], "alice@example.test");
        assert!(!me.text().contains("token"), "{}", me.text());
        s.gw.assert_served(0, s.gw.served().hyper, engine(fast));
        s.idp.stop().await;
    }
}

#[tokio::test]
async fn without_a_session_navigations_are_redirected_and_everything_else_gets_401() {
    for fast in ENGINES {
        let s = Setup::start(fast, None).await;
        let gw = s.gw.addr;
        let ctx = engine(fast);
        let spoof = "X-Forwarded-User: mallory\r\nX-Forwarded-Email: m@evil.test\r\n";

        let nav = raw(
            gw,
            &format!(
                "GET /page?a=b HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\n{spoof}\r\n"
            ),
        )
        .await;
        assert_eq!(nav.status, 302, "{ctx}: {}", nav.text());
        assert_eq!(
            nav.get("location"),
            Some("/api/auth/login?return_to=/page%3Fa%3Db")
        );
        let html = raw(
            gw,
            "GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html,*/*\r\n\r\n",
        )
        .await;
        assert_eq!(
            html.status, 302,
            "{ctx}: an HTML GET without fetch metadata"
        );

        let fetch = raw(gw, &format!("GET /_stcore/host-config HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: cors\r\nAccept: text/html\r\n{spoof}\r\n")).await;
        assert_eq!(fetch.status, 401, "{ctx}: a fetch is never redirected");
        assert_eq!(fetch.text(), r#"{"detail":"Not authenticated"}"#);
        assert_eq!(fetch.get("www-authenticate"), None);

        let api = raw(
            gw,
            &format!(
                "GET /api/items HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\n{spoof}\r\n"
            ),
        )
        .await;
        assert_eq!(api.status, 401, "{ctx}: the API is never redirected");
        assert_eq!(api.get("www-authenticate"), Some("Bearer"));

        let ws = raw(gw, "GET /_stcore/stream HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-Fetch-Mode: navigate\r\n\r\n").await;
        assert_eq!(
            ws.status, 401,
            "{ctx}: a WebSocket upgrade is never redirected"
        );

        let post = raw(
            gw,
            "POST /page HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(
            post.status, 401,
            "{ctx}: only GET/HEAD navigations redirect"
        );

        // Health endpoints stay public; Streamlit's own health check is forwarded.
        let h = raw(gw, "GET /api/healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(h.status, 200, "{ctx}");
        let st = raw(
            gw,
            &format!("GET /_stcore/health HTTP/1.1\r\nHost: x\r\n{spoof}\r\n"),
        )
        .await;
        assert_eq!(st.status, 200, "{ctx}: {}", st.text());

        // Nothing but the health check reached the upstream, and it without the spoofed
        // identity.
        let seen = s.rec.requests();
        assert_eq!(seen.len(), 1, "{ctx}: {seen:?}");
        assert_eq!(seen[0].target, "/_stcore/health");
        assert!(seen[0].all("x-forwarded-user").is_empty(), "{ctx}");
        assert!(seen[0].all("x-forwarded-email").is_empty(), "{ctx}");
        assert_eq!(
            s.gw.served().h1,
            0,
            "{ctx}: the fast path forwarded nothing"
        );
        s.idp.stop().await;
    }
}

#[tokio::test]
async fn the_callback_refuses_what_it_did_not_start() {
    let s = Setup::start(true, None).await;
    let mut agent = Agent::new();

    // No login in flight: state unknown.
    let a = agent
        .request(
            Method::GET,
            &s.url("/api/auth/callback?code=abc&state=unknown123456"),
            None,
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(agent.cookie(&s.base, "fluxlit_session").is_none());
    let a = agent
        .request(Method::GET, &s.url("/api/auth/callback?code=abc"), None)
        .await;
    assert_eq!(a.status, 400, "no state");

    // The provider's error is shown escaped.
    let a = agent
        .request(
            Method::GET,
            &s.url("/api/auth/callback?error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
            None,
        )
        .await;
    assert_eq!(a.status, 401);
    assert!(!a.text().contains("<script>"), "{}", a.text());
    assert!(a.text().contains("&lt;script&gt;"), "{}", a.text());

    // A real login, its callback replayed: the login cookie went with the first use.
    let start = agent
        .request(Method::GET, &s.url("/api/auth/login"), None)
        .await;
    let callback = agent
        .login_at_provider(&s.idp.issuer, start.location().unwrap(), "alice")
        .await;
    let first = agent.request(Method::GET, &callback, None).await;
    assert_eq!(first.status, 303, "{}", first.text());
    assert_eq!(
        first.location(),
        Some("/"),
        "the default return is the UI root"
    );
    let replay = agent.request(Method::GET, &callback, None).await;
    assert_eq!(replay.status, 400, "replayed: {}", replay.text());

    // A callback whose iss names another issuer (RFC 9207).
    let mut other = Agent::new();
    let start = other
        .request(Method::GET, &s.url("/api/auth/login"), None)
        .await;
    let callback = other
        .login_at_provider(&s.idp.issuer, start.location().unwrap(), "bob")
        .await;
    let forged = if callback.contains("iss=") {
        let (head, _) = callback.split_once("iss=").unwrap();
        format!("{head}iss=https%3A%2F%2Fevil.test")
    } else {
        format!("{callback}&iss=https%3A%2F%2Fevil.test")
    };
    let a = other.request(Method::GET, &forged, None).await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert!(other.cookie(&s.base, "fluxlit_session").is_none());

    // A state from another browser's login: that browser has no login cookie for it.
    let mut third = Agent::new();
    let start = third
        .request(Method::GET, &s.url("/api/auth/login"), None)
        .await;
    let callback = third
        .login_at_provider(&s.idp.issuer, start.location().unwrap(), "carol")
        .await;
    let mut thief = Agent::new();
    let a = thief.request(Method::GET, &callback, None).await;
    assert_eq!(a.status, 400, "login CSRF: {}", a.text());

    // Unsafe return paths never start a login.
    for bad in [
        "//evil.test/",
        "/%2F%2Fevil.test",
        "https://evil.test/",
        "/\\evil.test",
    ] {
        let a = agent
            .request(
                Method::GET,
                &s.url(&format!(
                    "/api/auth/login?return_to={}",
                    fluxlit_testkit::idp::urlencode(bad)
                )),
                None,
            )
            .await;
        assert_eq!(a.status, 400, "{bad}: {}", a.text());
    }
    s.idp.stop().await;
}

/// `auth_allowed_redirect_origins`: after the login, an absolute `return_to` on a listed origin
/// is followed; one on any other origin never starts a login.
#[tokio::test]
async fn a_login_returns_to_a_listed_origin_and_to_no_other() {
    for fast in ENGINES {
        let ctx = engine(fast);
        let s = Setup::start_tweaked(fast, None, serde_json::Value::Null, None, |c| {
            c.allowed_redirect_origins = vec!["http://portal.localhost:8601".into()];
        })
        .await;
        for (target, want) in [
            (
                "http://portal.localhost:8601/after?x=1",
                "http://portal.localhost:8601/after?x=1",
            ),
            (
                "HTTP://Portal.LOCALHOST:8601/",
                "http://portal.localhost:8601/",
            ),
            (&format!("{}/own", s.base), &format!("{}/own", s.base)),
        ] {
            let mut agent = Agent::new();
            let start = agent
                .request(
                    Method::GET,
                    &s.url(&format!(
                        "/api/auth/login?return_to={}",
                        fluxlit_testkit::idp::urlencode(target)
                    )),
                    None,
                )
                .await;
            assert_eq!(start.status, 302, "{ctx} {target}: {}", start.text());
            let callback = agent
                .login_at_provider(&s.idp.issuer, start.location().unwrap(), "alice")
                .await;
            let done = agent.request(Method::GET, &callback, None).await;
            assert_eq!(done.status, 303, "{ctx} {target}: {}", done.text());
            assert_eq!(done.location(), Some(want), "{ctx} {target}");
        }
        let mut agent = Agent::new();
        for bad in [
            "http://portal.localhost:8602/",
            "https://portal.localhost:8601/",
            "http://portal.localhost:8601@evil.test/",
            "http://portal.localhost:8601.evil.test/",
            "http://evil.test/",
            "//portal.localhost:8601/",
        ] {
            let a = agent
                .request(
                    Method::GET,
                    &s.url(&format!(
                        "/api/auth/login?return_to={}",
                        fluxlit_testkit::idp::urlencode(bad)
                    )),
                    None,
                )
                .await;
            assert_eq!(a.status, 400, "{ctx} {bad}: {}", a.text());
            assert!(a.location().is_none(), "{ctx} {bad}");
        }
        s.idp.stop().await;
    }
}

#[tokio::test]
async fn logout_ends_the_session_and_its_websockets_and_continues_at_the_provider() {
    for fast in ENGINES {
        for store in [None, Some(Store::Memory(Arc::new(MemoryStore::default())))] {
            let server_side = store.is_some();
            let ctx = format!(
                "{} store={}",
                engine(fast),
                if server_side { "memory" } else { "cookie" }
            );
            let s = Setup::start(fast, store).await;
            let mut agent = Agent::new();
            s.login(&mut agent, "alice").await;
            let cookie = format!(
                "fluxlit_session={}",
                agent.cookie(&s.base, "fluxlit_session").unwrap()
            );

            // A WebSocket through the gateway with the session.
            let (mut ws, ws_status) = open_ws(s.gw.addr, &s.base, &cookie).await;
            assert_eq!(ws_status, 101, "{ctx}");

            // auth_pass_access_token: the API hop gets the provider's access token (server-side
            // stores keep one), Streamlit never does; a client's own Authorization is kept.
            let api = agent
                .request(Method::GET, &s.url("/api/bearer-check"), None)
                .await;
            assert_eq!(api.status, 200, "{ctx}");
            agent.headers = vec![("Authorization".into(), "Bearer mine".into())];
            agent
                .request(Method::GET, &s.url("/api/own-bearer"), None)
                .await;
            agent.headers.clear();
            let seen = s.rec.requests();
            let hop = seen
                .iter()
                .find(|r| r.target.ends_with("/bearer-check"))
                .unwrap();
            let auth = hop.all("authorization");
            if server_side {
                assert_eq!(auth.len(), 1, "{ctx}: {auth:?}");
                assert!(
                    auth[0].starts_with("Bearer ") && auth[0].len() > 20,
                    "{ctx}: {auth:?}"
                );
            } else {
                assert!(auth.is_empty(), "{ctx}: the cookie store keeps no token");
            }
            let own = seen
                .iter()
                .find(|r| r.target.ends_with("/own-bearer"))
                .unwrap();
            assert_eq!(
                own.all("authorization"),
                vec!["Bearer mine".to_owned()],
                "{ctx}"
            );
            for r in seen
                .iter()
                .filter(|r| !r.target.starts_with("/bearer") && !r.target.contains("bearer"))
            {
                assert!(
                    r.all("authorization").is_empty(),
                    "{ctx}: {} got a token",
                    r.target
                );
            }

            // A cross-site WebSocket is refused even with the cookie.
            let cross = raw(s.gw.addr, &format!("GET /_stcore/stream HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n")).await;
            assert_eq!(cross.status, 403, "{ctx}");

            // Cross-site logouts do nothing: a GET gets a confirmation page, a POST 403.
            let page = agent
                .request(Method::GET, &s.url("/api/auth/logout"), None)
                .await;
            assert_eq!(page.status, 200, "{ctx}");
            assert!(page.text().contains("method=\"post\""), "{ctx}");
            agent.headers = vec![("Origin".into(), "http://evil.test".into())];
            let refused = agent
                .request(Method::POST, &s.url("/api/auth/logout"), Some(""))
                .await;
            assert_eq!(refused.status, 403, "{ctx}");
            agent.headers.clear();
            let still = agent
                .request(Method::GET, &s.url("/api/auth/userinfo"), None)
                .await;
            assert_eq!(still.status, 200, "{ctx}: still logged in");

            agent.headers = vec![("Origin".into(), s.base.clone())];
            let out = agent
                .request(Method::POST, &s.url("/api/auth/logout"), Some(""))
                .await;
            agent.headers.clear();
            assert_eq!(out.status, 303, "{ctx}: {}", out.text());
            let to = out.location().unwrap();
            assert!(
                to.starts_with(&s.idp.issuer),
                "{ctx}: RP-initiated logout: {to}"
            );
            assert!(to.contains("client_id=fluxlit"), "{to}");
            assert!(to.contains("post_logout_redirect_uri="), "{to}");
            assert_eq!(to.contains("id_token_hint="), server_side, "{ctx}: {to}");
            assert!(
                agent.cookie(&s.base, "fluxlit_session").is_none(),
                "{ctx}: cookie expired"
            );

            // The tunnel opened with the session is closed.
            let closed = closed_within(&mut ws, Duration::from_secs(2)).await;
            assert!(closed, "{ctx}: the session's WebSocket was not closed");

            let after = agent
                .request(Method::GET, &s.url("/api/auth/userinfo"), None)
                .await;
            assert_eq!(after.status, 401, "{ctx}");
            // A copy of the old cookie: revoked with a server-side store; the cookie store has
            // no server state, so the copy lives until its end (docs/auth.md).
            let replay = raw(
                s.gw.addr,
                &format!("GET /api/auth/userinfo HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"),
            )
            .await;
            assert_eq!(replay.status, if server_side { 401 } else { 200 }, "{ctx}");
            s.idp.stop().await;
        }
    }
}

#[tokio::test]
async fn a_tampered_or_foreign_session_cookie_is_no_session() {
    let s = Setup::start(false, None).await;
    let mut agent = Agent::new();
    s.login(&mut agent, "alice").await;
    let value = agent.cookie(&s.base, "fluxlit_session").unwrap();
    let mut bytes = value.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let r = raw(
        s.gw.addr,
        &format!(
            "GET /api/items HTTP/1.1\r\nHost: x\r\nCookie: fluxlit_session={tampered}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(r.status, 401);
    // Sealed with another secret (another deployment).
    let other = fluxlit_auth::seal::CookieKeys::new(&[
        b"another-secret-0123456789abcdef-0123456789".to_vec(),
    ])
    .unwrap();
    let forged = other.seal("fluxlit_session", r#"{"sid":"x","identity":{"iss":"i","sub":"admin"},"created_at":0,"expires_at":99999999999}"#);
    let r = raw(
        s.gw.addr,
        &format!("GET /api/items HTTP/1.1\r\nHost: x\r\nCookie: fluxlit_session={forged}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(
        s.rec
            .requests()
            .iter()
            .all(|r| !r.target.ends_with("/items"))
    );
    s.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_at_expiry_refresh_once() {
    let s = Setup::start_with(
        false,
        Some(Store::Memory(Arc::new(MemoryStore::default()))),
        serde_json::json!({"AccessToken": 4}),
        None,
    )
    .await;
    let mut agent = Agent::new();
    s.login(&mut agent, "alice").await;
    let cookie = format!(
        "fluxlit_session={}",
        agent.cookie(&s.base, "fluxlit_session").unwrap()
    );
    let info = |a: &fluxlit_testkit::idp::Answer| -> serde_json::Value {
        serde_json::from_slice(&a.body).unwrap()
    };
    let first = info(
        &agent
            .request(Method::GET, &s.url("/api/auth/userinfo"), None)
            .await,
    );
    let exp = first["access_expires_at"]
        .as_i64()
        .expect("the access token's end");
    assert_eq!(s.idp.grants("refresh_token"), 0);
    // The refresh is due from half the 4 s lifetime: wait for that instant (a known time, not
    // a guess), then send 20 API requests at once.
    let due = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(exp - 2).unwrap());
    if let Ok(wait) = due.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
    }
    // Twenty connections open first, then twenty requests written at once.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(RawClient::connect(s.gw.addr).await);
    }
    let head = format!("GET /api/items HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
    futures_util::future::join_all(clients.iter_mut().map(|c| c.send(head.as_bytes()))).await;
    let answers =
        futures_util::future::join_all(clients.iter_mut().map(|c| c.response(false))).await;
    for a in answers {
        assert_eq!(a.expect("an answer").status, 200);
    }
    assert_eq!(
        s.idp.grants("refresh_token"),
        1,
        "exactly one refresh: {}",
        s.idp.log()
    );
    let after = info(
        &agent
            .request(Method::GET, &s.url("/api/auth/userinfo"), None)
            .await,
    );
    assert!(
        after["access_expires_at"].as_i64().unwrap() > exp,
        "{after}"
    );
    s.idp.stop().await;
}

#[tokio::test]
async fn an_in_process_api_gets_the_identity_as_a_request_extension() {
    let svc = tower::service_fn(|req: http::Request<fluxlit_gateway::Body>| async move {
        let who = req
            .extensions()
            .get::<fluxlit_auth::session::SessionIdentity>()
            .map_or_else(|| "nobody".to_owned(), |i| i.sub.clone());
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(who),
        )))
    });
    let s = Setup::start_with(
        true,
        None,
        serde_json::Value::Null,
        Some(fluxlit_gateway::ApiService::new(svc)),
    )
    .await;
    let mut agent = Agent::new();
    s.login(&mut agent, "alice").await;
    let a = agent.request(Method::GET, &s.url("/api/me"), None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "alice");
    s.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_an_open_websocket_is_refreshed_without_requests() {
    let s = Setup::start_with(
        false,
        Some(Store::Memory(Arc::new(MemoryStore::default()))),
        serde_json::json!({"AccessToken": 4}),
        None,
    )
    .await;
    let mut agent = Agent::new();
    s.login(&mut agent, "alice").await;
    let cookie = format!(
        "fluxlit_session={}",
        agent.cookie(&s.base, "fluxlit_session").unwrap()
    );
    let (mut ws, ws_status) = open_ws(s.gw.addr, &s.base, &cookie).await;
    assert_eq!(ws_status, 101);
    // No request is sent from here on: only the background refresh can redeem the token.
    fluxlit_testkit::eventually(
        Duration::from_secs(15),
        "a refresh grant at the provider",
        || async { (s.idp.grants("refresh_token") >= 1).then_some(()) },
    )
    .await;
    assert!(!ws.closed().await, "the tunnel stays open");
    s.idp.stop().await;
}

/// The value of the first `name="…" value="…"` input, or the `action` of the first form.
fn form_field(html: &str, attr: &str) -> String {
    let start = html
        .find(attr)
        .unwrap_or_else(|| panic!("{attr} in {html}"))
        + attr.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_at_the_provider_ends_the_session_through_the_back_channel() {
    let s = Setup::start(false, Some(Store::Memory(Arc::new(MemoryStore::default())))).await;
    let mut agent = Agent::new();
    s.login(&mut agent, "alice").await;
    let cookie = format!(
        "fluxlit_session={}",
        agent.cookie(&s.base, "fluxlit_session").unwrap()
    );
    let (mut ws, ws_status) = open_ws(s.gw.addr, &s.base, &cookie).await;
    assert_eq!(ws_status, 101);

    // The user signs out at the provider itself (its end-session page and confirmation).
    let page = agent
        .request(Method::GET, &format!("{}/session/end", s.idp.issuer), None)
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    let action = form_field(&html, "action=\"");
    let xsrf = form_field(&html, "name=\"xsrf\" value=\"");
    let action = if action.starts_with('/') {
        format!("{}{action}", s.idp.issuer)
    } else {
        action
    };
    let done = agent
        .request(
            Method::POST,
            &action,
            Some(&format!("xsrf={xsrf}&logout=yes")),
        )
        .await;
    assert!(
        done.status.is_redirection() || done.status.is_success(),
        "{}: {}",
        done.status,
        done.text()
    );

    let closed = closed_within(&mut ws, Duration::from_secs(5)).await;
    assert!(closed, "the WebSocket was not closed: {}", s.idp.log());
    let after = raw(
        s.gw.addr,
        &format!("GET /api/auth/userinfo HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"),
    )
    .await;
    assert_eq!(after.status, 401);

    // A forged logout token (not the provider's signature) ends nothing.
    let mut other = Agent::new();
    s.login(&mut other, "bob").await;
    let forged = raw(s.gw.addr, "POST /api/auth/backchannel-logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 33\r\n\r\nlogout_token=eyJhbGciOiJub25lIn0.e").await;
    assert_eq!(forged.status, 400, "{}", forged.text());
    let bob = other
        .request(Method::GET, &s.url("/api/auth/userinfo"), None)
        .await;
    assert_eq!(bob.status, 200);
    s.idp.stop().await;
}

/// Two gateways (replicas) behind one public origin, sharing one Redis, one provider and one
/// upstream.
struct Replicas {
    idp: Provider,
    redis: fluxlit_testkit::redis::RedisServer,
    a: Running,
    b: Running,
    base: String,
    _rec: RecordingUpstream,
}

impl Replicas {
    async fn start(ttl: serde_json::Value) -> Self {
        let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // The public origin is replica A's address (a load balancer would front both).
        let base = format!("http://{}", la.local_addr().unwrap());
        let idp = Provider::start(
            serde_json::json!([fluxlit_testkit::idp::gateway_client(&base)]),
            ttl,
        )
        .await;
        let redis = fluxlit_testkit::redis::RedisServer::start();
        let rec = upstream().await;
        let replica = |listener, rec: &RecordingUpstream| {
            let store = fluxlit_auth::session::RedisStore::connect(&redis.url(), "fluxlit:")
                .expect("the Redis URL");
            let bff = bff_for(&idp.issuer, &base, Some(Store::Redis(Arc::new(store))));
            launch_on(
                Gateway::builder()
                    .ui(up_at(rec.addr, "ui"))
                    .api(ApiTarget::Upstream(up_at(rec.addr, "api")))
                    .oidc(OidcAuth::new(Arc::new(bff)))
                    .drain_timeout(Duration::from_millis(200)),
                listener,
            )
        };
        let a = replica(la, &rec);
        let b = replica(lb, &rec);
        Self {
            idp,
            redis,
            a,
            b,
            base,
            _rec: rec,
        }
    }
}

/// `GET path` on `gw` with the session `cookie` (`name=value`): the status.
async fn status_with(gw: SocketAddr, path: &str, cookie: &str) -> u16 {
    raw(
        gw,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_logins_sessions_logouts_and_fail_closed_without_redis() {
    let mut r = Replicas::start(serde_json::Value::Null).await;
    let b_base = format!("http://{}", r.b.addr);

    // A login started on A and finished on B: the login state travels in the browser's cookie.
    let mut agent = Agent::new();
    let start = agent
        .request(Method::GET, &format!("{}/api/auth/login", r.base), None)
        .await;
    let login_cookie = start
        .headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("fluxlit_login_"))
        .expect("a login cookie");
    let callback = agent
        .login_at_provider(&r.idp.issuer, start.location().unwrap(), "alice")
        .await;
    let on_b = callback.replacen(&r.base, &b_base, 1);
    let done = raw(
        r.b.addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nCookie: {login_cookie}\r\n\r\n",
            &on_b[b_base.len()..]
        ),
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.text());
    let session = done
        .all("set-cookie")
        .into_iter()
        .map(|c| c.split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("fluxlit_session=") && c.len() > "fluxlit_session=".len())
        .expect("a session cookie");
    // The session works on both replicas.
    assert_eq!(status_with(r.a.addr, "/api/items", &session).await, 200);
    assert_eq!(status_with(r.b.addr, "/api/items", &session).await, 200);

    // A WebSocket on A; logout on B closes it within 1 s (Redis pub/sub).
    let (mut ws, ws_status) = open_ws(r.a.addr, &r.base, &session).await;
    assert_eq!(ws_status, 101);
    let out = raw(
        r.b.addr,
        &format!("POST /api/auth/logout HTTP/1.1\r\nHost: x\r\nOrigin: {}\r\nCookie: {session}\r\nContent-Length: 0\r\n\r\n", r.base),
    )
    .await;
    assert_eq!(out.status, 303, "{}", out.text());
    let closed = closed_within(&mut ws, Duration::from_secs(1)).await;
    assert!(
        closed,
        "A's WebSocket was not closed within 1 s of B's logout"
    );
    assert_eq!(status_with(r.a.addr, "/api/items", &session).await, 401);

    // Redis down: protected requests 503 (fail closed), public paths still answer.
    let mut agent = Agent::new();
    let bob = log_in(&mut agent, &r.base, &r.idp.issuer, "bob").await;
    r.redis.stop();
    let down = raw(
        r.a.addr,
        &format!("GET /api/items HTTP/1.1\r\nHost: x\r\nCookie: {bob}\r\n\r\n"),
    )
    .await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.text().contains("session store"), "{}", down.text());
    assert_eq!(status_with(r.a.addr, "/api/healthz", &bob).await, 200);
    r.redis.restart();
    // Back: the store answers again (the test Redis keeps nothing across a restart, so bob's
    // session is gone: 401, not 503), and a new login works.
    let addr = r.a.addr;
    let bob2 = bob.clone();
    let status = fluxlit_testkit::eventually(
        Duration::from_secs(10),
        "the store reachable again",
        move || {
            let bob = bob2.clone();
            async move {
                let s = status_with(addr, "/api/items", &bob).await;
                (s != 503).then_some(s)
            }
        },
    )
    .await;
    assert_eq!(status, 401);
    let mut agent = Agent::new();
    let again = log_in(&mut agent, &r.base, &r.idp.issuer, "bob").await;
    assert_eq!(status_with(r.b.addr, "/api/items", &again).await, 200);
    r.idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_at_expiry_on_two_replicas_refresh_once() {
    let r = Replicas::start(serde_json::json!({"AccessToken": 4})).await;
    let mut agent = Agent::new();
    let session = log_in(&mut agent, &r.base, &r.idp.issuer, "alice").await;
    let info = agent
        .request(Method::GET, &format!("{}/api/auth/userinfo", r.base), None)
        .await;
    let v: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
    let exp = v["access_expires_at"].as_i64().unwrap();
    let due = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(exp - 2).unwrap());
    if let Ok(wait) = due.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
    }
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(RawClient::connect(if i % 2 == 0 { r.a.addr } else { r.b.addr }).await);
    }
    let head = format!("GET /api/items HTTP/1.1\r\nHost: x\r\nCookie: {session}\r\n\r\n");
    futures_util::future::join_all(clients.iter_mut().map(|c| c.send(head.as_bytes()))).await;
    let answers =
        futures_util::future::join_all(clients.iter_mut().map(|c| c.response(false))).await;
    for a in answers {
        assert_eq!(a.expect("an answer").status, 200);
    }
    assert_eq!(
        r.idp.grants("refresh_token"),
        1,
        "exactly one refresh across both replicas: {}",
        r.idp.log()
    );
    r.idp.stop().await;
}

/// The gateway `fluxlit run` builds from `auth_mode = oidc` settings protects everything but
/// the health endpoints, on both engines (a regression here would serve the app to anybody).
#[tokio::test]
async fn oidc_settings_make_a_protected_gateway() {
    for fast in ENGINES {
        let rec = upstream().await;
        let dir = fluxlit_testkit::TempDir::new("gateway-oidc-settings");
        let env = [
            ("FLUXLIT_AUTH_MODE", "oidc"),
            ("FLUXLIT_PUBLIC_BASE_URL", "https://app.example.com"),
            ("FLUXLIT_OIDC_ISSUER", "https://login.example.com"),
            ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
            (
                "FLUXLIT_AUTH_COOKIE_SECRETS",
                "settings-test-cookie-secret-0123456789abcdef",
            ),
            ("FLUXLIT_AUTH_PUBLIC_PATHS", "GET=/open/.*"),
        ];
        let loaded = fluxlit_config::load(&fluxlit_config::LoadOptions::new(
            dir.path(),
            fluxlit_config::Environment::from_pairs(env.iter().copied()),
            fluxlit_config::CliOverrides::default(),
        ))
        .expect("valid settings");
        let gw = support::start_on(
            Gateway::builder()
                .settings(&loaded.settings)
                .ui(up_at(rec.addr, "ui"))
                .api(ApiTarget::Upstream(up_at(rec.addr, "api"))),
            fast,
        )
        .await;
        let ctx = engine(fast);
        let page = raw(
            gw.addr,
            "GET / HTTP/1.1\r\nHost: app.example.com\r\nSec-Fetch-Mode: navigate\r\n\r\n",
        )
        .await;
        assert_eq!(page.status, 302, "{ctx}");
        assert_eq!(
            page.get("location"),
            Some("/api/auth/login?return_to=/"),
            "{ctx}"
        );
        let api = raw(
            gw.addr,
            "GET /api/x HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(api.status, 401, "{ctx}");
        let open = raw(
            gw.addr,
            "GET /open/page HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(open.status, 200, "{ctx}: auth_public_paths");
        let post = raw(
            gw.addr,
            "POST /open/page HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(post.status, 401, "{ctx}: the rule is for GET only");
        let health = raw(
            gw.addr,
            "GET /api/healthz HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(health.status, 200, "{ctx}");
        let jwks = raw(
            gw.addr,
            "GET /__fluxlit/jwks.json HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
        )
        .await;
        assert_eq!(jwks.status, 200, "{ctx}");
        let seen: Vec<String> = rec.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(seen, vec!["/open/page".to_owned()], "{ctx}");
        assert_eq!(gw.served().h1, 0, "{ctx}");
    }
}

#[tokio::test]
async fn two_hundred_groups_fail_visibly_in_cookies_and_fit_a_server_store() {
    for fast in ENGINES {
        // The cookie store (3 chunks of 3.9 KB): the login ends on a visible error page, no
        // session cookie, no redirect loop.
        let s = Setup::start(fast, None).await;
        let mut agent = Agent::new();
        let start = agent
            .request(
                Method::GET,
                &s.url("/api/auth/login?return_to=%2Fpage"),
                None,
            )
            .await;
        let callback = agent
            .login_at_provider(&s.idp.issuer, start.location().unwrap(), "many-groups-1")
            .await;
        let done = agent.request(Method::GET, &callback, None).await;
        assert_eq!(done.status, 500, "{}: {}", engine(fast), done.text());
        assert!(
            done.text().contains("too large for the session cookie")
                && done.text().contains("auth_session_store = redis"),
            "{}",
            done.text()
        );
        assert_eq!(done.location(), None);
        assert_eq!(agent.cookie(&s.base, "fluxlit_session"), None);
        let page = agent.request(Method::GET, &s.url("/page"), None).await;
        assert_eq!(page.status, 401, "{}: still logged out", engine(fast));
        s.idp.stop().await;

        // A server-side store: the same user logs in; the cookie is a small ticket and the
        // groups reach the app (the first MAX_GROUPS of them).
        let s = Setup::start(fast, Some(Store::Memory(Arc::new(MemoryStore::default())))).await;
        let mut agent = Agent::new();
        s.login(&mut agent, "many-groups-2").await;
        let ticket = agent.cookie(&s.base, "fluxlit_session").unwrap();
        assert!(
            ticket.len() < 300,
            "{}: {} bytes",
            engine(fast),
            ticket.len()
        );
        let page = agent.request(Method::GET, &s.url("/page"), None).await;
        assert_eq!(page.status, 200, "{}: {}", engine(fast), page.text());
        let seen = s.rec.requests();
        let ui = seen.iter().find(|r| r.target == "/page").unwrap();
        let groups = ui.all("x-forwarded-groups");
        assert_eq!(groups.len(), 1);
        // (The names hold commas themselves, as directory DNs do: count them by their start.)
        assert_eq!(
            groups[0].matches("CN=Analytics Platform Team ").count(),
            fluxlit_auth::bff::MAX_GROUPS,
            "{}",
            engine(fast)
        );
        assert!(groups[0].starts_with("CN=Analytics Platform Team 0,"));
        s.idp.stop().await;
    }
}

/// `auth_session_idle_timeout_s` on both engines, with the memory store and a real Redis: a
/// session in use stays; one nobody uses for the timeout ends: its WebSocket is closed (by the
/// background sweep, as on logout), the API gets 401 and a page load is sent to the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_nobody_uses_ends_after_the_idle_timeout() {
    let idle = Duration::from_secs(2);
    let redis = fluxlit_testkit::redis::RedisServer::start();
    for fast in ENGINES {
        for use_redis in [false, true] {
            let ctx = format!(
                "{} store={}",
                engine(fast),
                if use_redis { "redis" } else { "memory" }
            );
            let store = if use_redis {
                Store::Redis(Arc::new(
                    fluxlit_auth::session::RedisStore::connect(
                        &redis.url(),
                        &format!("idle-{fast}:"),
                    )
                    .unwrap()
                    .with_idle_timeout(idle),
                ))
            } else {
                Store::Memory(Arc::new(MemoryStore::default().with_idle_timeout(idle)))
            };
            let s = Setup::start(fast, Some(store)).await;
            let mut agent = Agent::new();
            s.login(&mut agent, "alice").await;
            let cookie = format!(
                "fluxlit_session={}",
                agent.cookie(&s.base, "fluxlit_session").unwrap()
            );
            // In use for twice the timeout: still logged in.
            let start = std::time::Instant::now();
            while start.elapsed() < idle * 2 {
                assert_eq!(
                    status_with(s.gw.addr, "/api/x", &cookie).await,
                    200,
                    "{ctx}"
                );
                tokio::time::sleep(idle / 4).await;
            }
            // A WebSocket, then nothing: the tunnel is closed once the timeout passed (the
            // sweep looks every 2 s).
            let (mut ws, status) = open_ws(s.gw.addr, &s.base, &cookie).await;
            assert_eq!(status, 101, "{ctx}");
            let quiet = std::time::Instant::now();
            assert!(
                closed_within(&mut ws, idle + Duration::from_secs(5)).await,
                "{ctx}: the idle session's WebSocket stays open"
            );
            assert!(
                quiet.elapsed() >= idle - idle / 5,
                "{ctx}: closed after {:?}, before the idle timeout",
                quiet.elapsed()
            );
            assert_eq!(
                status_with(s.gw.addr, "/api/x", &cookie).await,
                401,
                "{ctx}"
            );
            let page = raw(
                s.gw.addr,
                &format!(
                    "GET /page HTTP/1.1\r\nHost: x\r\nSec-Fetch-Mode: navigate\r\nCookie: {cookie}\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(page.status, 302, "{ctx}");
            s.idp.stop().await;
        }
    }
}

/// `POST /api/auth/exchange` with a JSON body: the response.
async fn exchange(gw: SocketAddr, body: &str) -> fluxlit_testkit::raw::RawResponse {
    raw(
        gw,
        &format!(
            "POST /api/auth/exchange HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// `oidc_compat_exchange` (reference §8.2, §8.3) on both engines, with the memory store and a
/// real Redis: after a login at the real provider the browser returns with `?auth_code=`, the
/// exchange trades it once for an HS256 token that the API accepts as a bearer token without a
/// session; a replay is 401 and a short code 422, with FastAPI's bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compat_exchange_trades_a_login_for_a_first_party_token_once() {
    const BFF_SECRET: &[u8] = b"compat-bff-secret-0123456789abcdef-0123";
    let redis = fluxlit_testkit::redis::RedisServer::start();
    for fast in ENGINES {
        for use_redis in [false, true] {
            let ctx = format!(
                "{} store={}",
                engine(fast),
                if use_redis { "redis" } else { "memory" }
            );
            let store = if use_redis {
                Store::Redis(Arc::new(
                    fluxlit_auth::session::RedisStore::connect(
                        &redis.url(),
                        &format!("compat-{fast}:"),
                    )
                    .unwrap(),
                ))
            } else {
                Store::Memory(Arc::new(MemoryStore::default()))
            };
            let s = Setup::start_tweaked(fast, Some(store), serde_json::Value::Null, None, |c| {
                c.compat_exchange = Some(fluxlit_auth::bff::CompatExchange {
                    secret: BFF_SECRET.to_vec(),
                });
            })
            .await;
            let mut agent = Agent::new();
            let start = agent
                .request(
                    Method::GET,
                    &s.url("/api/auth/login?return_to=%2Fpage%3Ftab%3D2"),
                    None,
                )
                .await;
            let callback = agent
                .login_at_provider(&s.idp.issuer, start.location().unwrap(), "alice")
                .await;
            let done = agent.request(Method::GET, &callback, None).await;
            assert_eq!(done.status, 303, "{ctx}: {}", done.text());
            let location = done.location().unwrap().to_owned();
            let code = location
                .strip_prefix("/page?tab=2&auth_code=")
                .unwrap_or_else(|| panic!("{ctx}: {location}"))
                .to_owned();
            assert!(code.len() >= 32, "{ctx}: {code}");
            // The session cookie comes too (the BFF's own login is unchanged).
            assert!(agent.cookie(&s.base, "fluxlit_session").is_some(), "{ctx}");

            // A short code: FastAPI's 422.
            let short = exchange(s.gw.addr, r#"{"code":"1234567"}"#).await;
            assert_eq!(short.status, 422, "{ctx}: {}", short.text());
            let v: serde_json::Value = serde_json::from_slice(&short.body).unwrap();
            assert_eq!(v["detail"][0]["type"], "string_too_short", "{ctx}");
            assert_eq!(
                v["detail"][0]["loc"],
                serde_json::json!(["body", "code"]),
                "{ctx}"
            );

            // The code, once: the first-party token.
            let first = exchange(s.gw.addr, &format!(r#"{{"code": "{code}"}}"#)).await;
            assert_eq!(first.status, 200, "{ctx}: {}", first.text());
            assert_eq!(first.get("content-type"), Some("application/json"), "{ctx}");
            let v: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
            assert_eq!(v["token_type"], "bearer", "{ctx}");
            let token = v["access_token"].as_str().unwrap().to_owned();
            assert_eq!(
                first.text(),
                format!(r#"{{"access_token":"{token}","token_type":"bearer"}}"#),
                "{ctx}"
            );
            let mut check = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            check.set_audience(&["fluxlit-app"]);
            check.set_issuer(&["fluxlit-bff"]);
            let claims = jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(BFF_SECRET).unwrap(),
                &check,
            )
            .unwrap()
            .claims;
            assert_eq!(claims["sub"], "alice", "{ctx}");
            assert_eq!(
                claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
                3600,
                "{ctx}"
            );

            // A replay: 401, byte for byte as FastAPI.
            let again = exchange(s.gw.addr, &format!(r#"{{"code": "{code}"}}"#)).await;
            assert_eq!(again.status, 401, "{ctx}");
            assert_eq!(
                again.text(),
                r#"{"detail":"Invalid or expired auth code"}"#,
                "{ctx}"
            );

            // The token is a bearer token for the API, without a session cookie.
            let before = s.rec.requests().len();
            let api = raw(
                s.gw.addr,
                &format!("GET /api/with-token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
            )
            .await;
            assert_eq!(api.status, 200, "{ctx}: {}", api.text());
            let seen = s.rec.requests();
            let hop = seen[before..]
                .iter()
                .find(|r| r.target.ends_with("/with-token"))
                .unwrap_or_else(|| panic!("{ctx}: the API got the request"));
            assert_eq!(
                hop.all("authorization"),
                [format!("Bearer {token}")],
                "{ctx}"
            );
            // Other tokens are not: forged with another key, or none at all.
            let forged = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(b"another-secret-0123456789abcdef-0123")
                    .unwrap(),
            )
            .unwrap();
            let denied = raw(
                s.gw.addr,
                &format!("GET /api/with-token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {forged}\r\n\r\n"),
            )
            .await;
            assert_eq!(denied.status, 401, "{ctx}");
            assert_eq!(denied.text(), r#"{"detail":"Invalid token"}"#, "{ctx}");
            let none = raw(s.gw.addr, "GET /api/with-token HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(none.status, 401, "{ctx}");
            assert_eq!(none.text(), r#"{"detail":"Not authenticated"}"#, "{ctx}");
            s.idp.stop().await;
        }
    }
}

/// The settings wire the exchange flow and the idle timeout: with `oidc_compat_exchange`,
/// `oidc_bff_secret` and the memory store (and `auth_session_idle_timeout_s`), the exchange
/// route answers and the API takes a first-party token signed with the secret.
#[tokio::test]
async fn oidc_settings_wire_the_exchange_flow() {
    const SECRET: &str = "settings-test-bff-secret-0123456789abcdef";
    for fast in ENGINES {
        let rec = upstream().await;
        let dir = fluxlit_testkit::TempDir::new("gateway-oidc-compat-settings");
        let env = [
            ("FLUXLIT_AUTH_MODE", "oidc"),
            ("FLUXLIT_PUBLIC_BASE_URL", "https://app.example.com"),
            ("FLUXLIT_OIDC_ISSUER", "https://login.example.com"),
            ("FLUXLIT_OIDC_CLIENT_ID", "fluxlit"),
            (
                "FLUXLIT_AUTH_COOKIE_SECRETS",
                "settings-test-cookie-secret-0123456789abcdef",
            ),
            ("FLUXLIT_AUTH_SESSION_STORE", "memory"),
            ("FLUXLIT_AUTH_SESSION_IDLE_TIMEOUT_S", "600"),
            ("FLUXLIT_OIDC_COMPAT_EXCHANGE", "true"),
            ("FLUXLIT_OIDC_BFF_SECRET", SECRET),
        ];
        let loaded = fluxlit_config::load(&fluxlit_config::LoadOptions::new(
            dir.path(),
            fluxlit_config::Environment::from_pairs(env.iter().copied()),
            fluxlit_config::CliOverrides::default(),
        ))
        .expect("valid settings");
        let gw = support::start_on(
            Gateway::builder()
                .settings(&loaded.settings)
                .ui(up_at(rec.addr, "ui"))
                .api(ApiTarget::Upstream(up_at(rec.addr, "api"))),
            fast,
        )
        .await;
        let ctx = engine(fast);
        assert_eq!(
            exchange(gw.addr, r#"{"code":"abc"}"#).await.status,
            422,
            "{ctx}"
        );
        let unknown = exchange(gw.addr, r#"{"code":"an-unknown-code-0123456789"}"#).await;
        assert_eq!(unknown.status, 401, "{ctx}");
        let now = fluxlit_auth::session::now();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "ada", "iss": "fluxlit-bff", "aud": "fluxlit-app", "iat": now, "exp": now + 60}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        let api = raw(
            gw.addr,
            &format!("GET /api/x HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer {token}\r\n\r\n"),
        )
        .await;
        assert_eq!(api.status, 200, "{ctx}: {}", api.text());
        let other_aud = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "ada", "iss": "fluxlit-bff", "aud": "other", "iat": now, "exp": now + 60}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap();
        let api = raw(
            gw.addr,
            &format!("GET /api/x HTTP/1.1\r\nHost: app.example.com\r\nAuthorization: Bearer {other_aud}\r\n\r\n"),
        )
        .await;
        assert_eq!(api.status, 401, "{ctx}");
    }
}
