//! A real OpenID provider for authentication tests: npm `oidc-provider` 9 (panva's certified
//! implementation, pinned in `idp/package-lock.json`, installed by `cargo xtask setup`), started
//! per test on 127.0.0.1 with an OS-chosen port by `idp/provider.mjs`, and [`Agent`], a user
//! agent without JavaScript that logs a user in through the provider's development login and
//! consent forms (any user name and password are accepted) with a cookie jar, as a browser
//! would.
//!
//! The provider requires PKCE (S256), issues refresh tokens to clients allowed the
//! `refresh_token` grant, has RP-initiated logout (`end_session_endpoint`), back-channel logout
//! and revocation, and signs ID tokens with its development RS256 key. Every successful grant at
//! its token endpoint is counted ([`Provider::grants`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{TempDir, repo_root};

/// The directory with `provider.mjs` and its `node_modules` (`npm ci` there installs them).
pub fn idp_dir() -> PathBuf {
    repo_root().join("crates/fluxlit-testkit/idp")
}

/// A running provider; killed on drop.
pub struct Provider {
    /// `http://127.0.0.1:PORT` (no trailing slash), also the discovery document's `issuer`.
    pub issuer: String,
    child: Child,
    /// stdout and stderr, by line.
    stderr: Arc<Mutex<String>>,
    _dir: TempDir,
}

/// The client FluxLit's tests register for a gateway at `base` (`http://127.0.0.1:PORT`, no
/// root path): `fluxlit` / `test-secret`, the callback, post-logout and back-channel logout URIs
/// under `/api/auth`, the code and refresh-token grants.
pub fn gateway_client(base: &str) -> Value {
    serde_json::json!({
        "client_id": "fluxlit",
        "client_secret": "test-secret",
        "redirect_uris": [format!("{base}/api/auth/callback")],
        "post_logout_redirect_uris": [format!("{base}/")],
        "backchannel_logout_uri": format!("{base}/api/auth/backchannel-logout"),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    })
}

impl Provider {
    /// Starts the provider with `clients` (oidc-provider client metadata: `client_id`,
    /// `client_secret`, `redirect_uris`, `post_logout_redirect_uris`, `grant_types`, …) and
    /// token lifetimes `ttl` (seconds by kind, e.g. `{"AccessToken": 30}`; `null` for the
    /// defaults: 300 s tokens, 60 s codes).
    ///
    /// # Panics
    /// When Node.js or the npm packages are missing (`cargo xtask setup` installs them), or the
    /// provider does not listen within 30 s.
    pub async fn start(clients: Value, ttl: Value) -> Self {
        let dir = TempDir::new("idp");
        let config = dir.path().join("config.json");
        let body = serde_json::json!({"clients": clients, "ttl": ttl});
        std::fs::write(&config, body.to_string()).expect("write the provider's configuration");
        let script = idp_dir().join("provider.mjs");
        assert!(
            idp_dir().join("node_modules/oidc-provider").is_dir(),
            "{} has no node_modules/oidc-provider: run `cargo xtask setup` (npm ci there)",
            idp_dir().display()
        );
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (Debian's nodejs, or the machine's Node.js 20+)");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let out = child.stdout.take().expect("the provider's stdout");
        let mut out = BufReader::new(out).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), out.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "the provider did not start within 30 s ({other:?}): {}",
                stderr.lock().map(|s| s.clone()).unwrap_or_default()
            ),
        };
        // The provider also writes notices to stdout: keep reading it (into the log), or its
        // next write fails with EPIPE and takes it down.
        let log = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let v: Value = serde_json::from_str(&line).expect("the provider's start-up line");
        let issuer = v["issuer"].as_str().expect("issuer").to_owned();
        Self {
            issuer,
            child,
            stderr,
            _dir: dir,
        }
    }

    /// How many grants of `grant_type` (`authorization_code`, `refresh_token`) the token
    /// endpoint has issued so far.
    pub fn grants(&self, grant_type: &str) -> usize {
        let want = format!("grant {grant_type}");
        self.stderr
            .lock()
            .map(|s| s.lines().filter(|l| *l == want).count())
            .unwrap_or(0)
    }

    /// What the provider wrote to stderr (warnings, grants, server errors).
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the provider (SIGKILL) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A response as [`Agent`] saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The `Location` header, if any.
    pub fn location(&self) -> Option<&str> {
        self.headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A cookie the agent keeps: name, value, path, origin (`http://host:port`).
#[derive(Debug, Clone)]
struct Cookie {
    origin: String,
    name: String,
    value: String,
    path: String,
}

/// A user agent without JavaScript: plain HTTP/1.1 over loopback, a cookie jar scoped by origin
/// and path (enough for the provider and the gateway; no `Domain`, no expiry clock), and the
/// provider's development forms.
#[derive(Debug, Default)]
pub struct Agent {
    jar: Vec<Cookie>,
    /// Extra headers sent with every request (e.g. `Sec-Fetch-Mode: navigate`).
    pub headers: Vec<(String, String)>,
}

fn origin_of(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

/// `application/x-www-form-urlencoded` / query encoding of one value.
pub fn urlencode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Agent {
    /// An agent with an empty jar.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of the cookie `name` the agent holds for `origin`, if any.
    pub fn cookie(&self, origin: &str, name: &str) -> Option<String> {
        self.jar
            .iter()
            .find(|c| c.origin == origin && c.name == name)
            .map(|c| c.value.clone())
    }

    /// One request to the absolute `url` (no redirect followed). `form`: an urlencoded body.
    ///
    /// # Panics
    /// When the URL is not absolute http or the exchange fails within 10 s.
    pub async fn request(&mut self, method: Method, url: &str, form: Option<&str>) -> Answer {
        let uri: Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
        let origin = origin_of(&uri);
        let path = uri.path().to_owned();
        let authority = uri.authority().expect("an absolute URL").clone();
        let tcp = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect to {authority}: {e}"));
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP handshake");
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |pq| pq.as_str()))
            .header(http::header::HOST, authority.as_str());
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|c| c.origin == origin && path.starts_with(&c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        if !cookies.is_empty() {
            req = req.header(http::header::COOKIE, cookies.join("; "));
        }
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let body = match form {
            Some(f) => {
                req = req.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
                Bytes::from(f.to_owned())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).expect("request");
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let resp = send
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e:?}"));
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within 10 s"));
        driver.abort();
        for v in answer.headers.get_all(http::header::SET_COOKIE) {
            if let Ok(v) = v.to_str() {
                self.store(&origin, v);
            }
        }
        answer
    }

    fn store(&mut self, origin: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.trim().split_once('=')) else {
            return;
        };
        let mut path = "/".to_owned();
        let mut gone = false;
        for attr in parts {
            let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
            if k.eq_ignore_ascii_case("path") {
                path = v.to_owned();
            } else if (k.eq_ignore_ascii_case("max-age") && v.trim().starts_with(['0', '-']))
                || (k.eq_ignore_ascii_case("expires") && v.contains("1970"))
            {
                gone = true;
            }
        }
        self.jar
            .retain(|c| !(c.origin == origin && c.name == name && c.path == path));
        if !gone {
            self.jar.push(Cookie {
                origin: origin.to_owned(),
                name: name.to_owned(),
                value: value.to_owned(),
                path,
            });
        }
    }

    /// Follows redirects from `url` while they stay on `issuer`, filling in the provider's
    /// development login form with `user` and its consent form on the way, and returns the
    /// first redirect that leaves the provider (the client's `redirect_uri` with `code`,
    /// `state` and `iss`, or with `error`) as an absolute URL.
    ///
    /// # Panics
    /// When a page is neither a redirect nor one of the two forms, or after 20 steps.
    pub async fn login_at_provider(&mut self, issuer: &str, url: &str, user: &str) -> String {
        let mut next = (Method::GET, url.to_owned(), None::<String>);
        for _ in 0..20 {
            let (method, at, form) = next;
            let a = self.request(method, &at, form.as_deref()).await;
            if let Some(loc) = a.location() {
                let abs = if loc.starts_with('/') {
                    format!("{issuer}{loc}")
                } else {
                    loc.to_owned()
                };
                if !abs.starts_with(&format!("{issuer}/")) {
                    return abs;
                }
                next = (Method::GET, abs, None);
                continue;
            }
            let html = a.text();
            let action = form_action(&html)
                .unwrap_or_else(|| panic!("{at}: {} without a form: {html}", a.status));
            let action = if action.starts_with('/') {
                format!("{issuer}{action}")
            } else {
                action
            };
            // The hidden inputs (`prompt=login` or `prompt=consent`), plus the login form's
            // user and password.
            let mut fields: Vec<String> = hidden_inputs(&html)
                .into_iter()
                .map(|(k, v)| format!("{}={}", urlencode(&k), urlencode(&v)))
                .collect();
            if html.contains("name=\"login\"") {
                fields.push(format!("login={}&password=any", urlencode(user)));
            }
            let form = fields.join("&");
            next = (Method::POST, action, Some(form));
        }
        panic!("{url}: still at the provider after 20 steps");
    }
}

/// The `action` of the first `<form … action="…">` in `html`.
fn form_action(html: &str) -> Option<String> {
    let form = html.split("<form").nth(1)?;
    let tag = &form[..form.find('>')?];
    let after = tag.split("action=\"").nth(1)?;
    Some(after.split('"').next()?.to_owned())
}

/// The `(name, value)` of every `<input type="hidden" …>` in `html`.
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let after = tag.split(&format!("{name}=\"")).nth(1)?;
        Some(after.split('"').next()?.to_owned())
    };
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            if attr(tag, "type").as_deref() != Some("hidden") {
                return None;
            }
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect()
}

/// A PKCE pair from RFC 7636 Appendix B: (verifier, S256 challenge).
pub const RFC7636_PKCE: (&str, &str) = (
    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn query_param(url: &str, name: &str) -> Option<String> {
        let q = url.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }

    /// The harness against the real provider: discovery, the code flow with PKCE through the
    /// login and consent forms, the token endpoint (ID and refresh token, one grant counted),
    /// and PKCE required (an authorization request without a challenge is refused).
    #[tokio::test]
    async fn provider_runs_the_code_flow_with_pkce() {
        let redirect = "http://127.0.0.1:9/api/auth/callback";
        let p = Provider::start(
            serde_json::json!([{
                "client_id": "fluxlit",
                "client_secret": "test-secret",
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }]),
            Value::Null,
        )
        .await;
        let mut agent = Agent::new();
        let d = agent
            .request(
                Method::GET,
                &format!("{}/.well-known/openid-configuration", p.issuer),
                None,
            )
            .await;
        let d: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(d["issuer"], p.issuer.as_str());
        assert_eq!(
            d["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );

        let (verifier, challenge) = RFC7636_PKCE;
        let auth = format!(
            "{}/auth?client_id=fluxlit&redirect_uri={}&response_type=code&scope=openid%20email%20profile&state=st1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256",
            p.issuer,
            urlencode(redirect)
        );
        let back = agent.login_at_provider(&p.issuer, &auth, "alice").await;
        assert!(back.starts_with(redirect), "{back}");
        assert_eq!(query_param(&back, "state").as_deref(), Some("st1"));
        let code = query_param(&back, "code").unwrap_or_else(|| panic!("no code: {back}"));

        let form = format!(
            "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}&client_id=fluxlit&client_secret=test-secret",
            urlencode(redirect)
        );
        let t = agent
            .request(Method::POST, &format!("{}/token", p.issuer), Some(&form))
            .await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.text());
        let t: Value = serde_json::from_slice(&t.body).unwrap();
        assert!(
            t["id_token"]
                .as_str()
                .is_some_and(|s| s.split('.').count() == 3),
            "{t}"
        );
        assert!(t["refresh_token"].is_string(), "{t}");
        assert_eq!(p.grants("authorization_code"), 1, "{}", p.log());

        let no_pkce = format!(
            "{}/auth?client_id=fluxlit&redirect_uri={}&response_type=code&scope=openid&state=st2&nonce=n2",
            p.issuer,
            urlencode(redirect)
        );
        let back = agent.login_at_provider(&p.issuer, &no_pkce, "alice").await;
        assert_eq!(
            query_param(&back, "error").as_deref(),
            Some("invalid_request"),
            "{back}"
        );
    }
}
