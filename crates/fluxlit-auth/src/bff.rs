//! The OpenID Connect backend-for-frontend (`auth_mode = oidc`; AUTH.md A.1, A.3–A.6;
//! docs/auth.md): the routes under `{root_path}{api_mount}/auth/`, the session cookie, and what
//! the gateway asks of a request (who is it, what to answer when nobody is logged in).
//!
//! Routes ([`Bff::handle_route`]):
//! - `GET …/login?return_to=PATH`: (a path under the root path, or an absolute URL on the
//!   public origin or an `auth_allowed_redirect_origins` origin; [`crate::redirect`]) a new login (state, nonce, PKCE S256 verifier) kept in a
//!   sealed login cookie named after the state (any replica can finish it, no server state),
//!   then 302 to the provider. At most [`MAX_LOGINS`] login cookies live at once.
//! - `GET …/callback`: the checks of AUTH.md A.4 rule 4 in order (provider `error`; `state`
//!   matched in constant time to a live login cookie; RFC 9207 `iss`; the login cookie is
//!   deleted before the code is redeemed; the code exchange with the verifier; the ID token
//!   checked by [`crate::oidc`]; the access rules), then a new session id and 303 to the
//!   validated return path.
//! - `POST …/logout` (GET only with `Sec-Fetch-Site: same-origin`; a cross-site GET gets a
//!   confirmation page, a cross-site POST 403): ends the session, expires every cookie chunk,
//!   and continues to the provider's `end_session_endpoint` (RP-initiated logout 1.0 §2) or the
//!   post-logout URI.
//! - `GET …/userinfo`: the session's identity as JSON (never a token), or 401.
//! - `POST …/exchange` (only with [`BffConfig::compat_exchange`]): FluxLit for Python's
//!   one-time-code flow (reference §8.2, §8.3) for apps written against it. The callback then
//!   also mints a first-party HS256 token ([`COMPAT_ISSUER`], [`COMPAT_AUDIENCE`],
//!   [`COMPAT_TOKEN_TTL_S`]) and sends the browser to the return path with
//!   `?auth_code=<one-time code>`; this route redeems the code once for the token, which the
//!   API then accepts as a bearer token ([`Bff::compat_bearer`]).
//!
//! The browser never sees a provider token: the `cookie` store keeps the identity only, the
//! `memory`/`redis` stores keep the tokens server-side behind an opaque ticket
//! ([`crate::session`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use crate::oidc::{OidcConfig, OidcError, RelyingParty};
use crate::seal::CookieKeys;
use crate::session::{self, Session, SessionIdentity, SessionTokens, Store, StoreError};

/// Login cookies alive at once (parallel tabs); older ones are expired on the next login.
pub const MAX_LOGINS: usize = 5;

/// How long a login may take at the provider: the login cookie's `Max-Age`, seconds.
pub const LOGIN_TTL_S: i64 = 600;

/// After a failed discovery, the next attempt waits this long (requests get 503 meanwhile).
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// The most bytes of a request body an auth route reads (a back-channel logout form).
pub const MAX_ROUTE_BODY: usize = 64 * 1024;

/// The identity headers the gateway sets from a session (and strips from every client), with
/// the `st.user` key each maps to in Streamlit's `server.trustedUserHeaders`.
pub const IDENTITY_HEADERS: [(&str, &str); 5] = [
    ("x-forwarded-user", "sub"),
    ("x-forwarded-email", "email"),
    ("x-forwarded-name", "name"),
    ("x-forwarded-preferred-username", "preferred_username"),
    ("x-forwarded-groups", "groups"),
];

/// `iss` of the first-party tokens of `oidc_compat_exchange` (reference §8.2,
/// `OIDCBFFConfig.token_issuer`).
pub const COMPAT_ISSUER: &str = "fluxlit-bff";

/// `aud` of the first-party tokens (reference §8.2, `token_audience`).
pub const COMPAT_AUDIENCE: &str = "fluxlit-app";

/// Lifetime of a first-party token, seconds (reference §8.2, `access_token_ttl_seconds`).
pub const COMPAT_TOKEN_TTL_S: i64 = 3600;

/// Lifetime of a one-time code (reference §8.2, `otc_ttl_seconds`).
pub const AUTH_CODE_TTL: Duration = Duration::from_secs(120);

/// The shortest code `POST …/exchange` looks up; shorter ones are 422 (reference §8.2: the
/// body model's `min_length=8`).
pub const MIN_AUTH_CODE_LEN: usize = 8;

/// `oidc_compat_exchange`: FluxLit for Python's exchange flow (see the module documentation).
#[derive(Clone)]
pub struct CompatExchange {
    /// `oidc_bff_secret`: the HS256 key of the first-party tokens (at least 32 bytes, RFC 7518
    /// §3.2).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for CompatExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompatExchange([REDACTED])")
    }
}

/// At most this many groups reach the `X-Forwarded-Groups` header and the session.
pub const MAX_GROUPS: usize = 100;

/// Who may log in (empty lists: anybody the provider authenticates). With e-mail rules, the
/// provider must say `email_verified: true`.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    /// Exact addresses (case-insensitive).
    pub emails: Vec<String>,
    /// Domains (`example.com` allows `x@example.com`).
    pub email_domains: Vec<String>,
    /// Groups, any one of which admits (the `groups_claim` of the ID token).
    pub groups: Vec<String>,
    /// The ID token claim with the groups (`groups` by default).
    pub groups_claim: String,
}

/// Everything the backend-for-frontend needs, computed once from the settings.
#[derive(Debug, Clone)]
pub struct BffConfig {
    /// The relying party (issuer, client, the one callback URL built from the public base
    /// URL).
    pub oidc: OidcConfig,
    /// Where the routes live: `{root_path}{api_mount}/auth`.
    pub route_prefix: String,
    /// The root path (`""` or `/prefix`): return paths must stay under it.
    pub root_path: String,
    /// `scheme://host[:port]` of the public base URL (the `Origin` a logout POST must carry).
    pub public_origin: String,
    /// Where the browser lands after logout (registered at the provider).
    pub post_logout_redirect_uri: String,
    /// Cookie secrets, each at least [`crate::seal::MIN_SECRET_BYTES`]: the first seals.
    pub cookie_secrets: Vec<Vec<u8>>,
    /// `None`: the `cookie` store; otherwise the server-side store.
    pub store: Option<Store>,
    /// A session's absolute lifetime.
    pub lifetime: Duration,
    /// The most cookie chunks a session may take ([`crate::seal::CHUNK_BYTES`] each).
    pub max_chunks: usize,
    /// Whether cookies are `Secure` (the public base URL is https).
    pub secure: bool,
    /// Who may log in.
    pub access: AccessRules,
    /// `auth_pass_access_token`: the API hop (never Streamlit) gets the provider's access
    /// token as `Authorization: Bearer …` when the client sent no `Authorization`
    /// (server-side stores only: the cookie store keeps no token).
    pub pass_access_token: bool,
    /// `auth_logout_backchannel`: accept the provider's logout tokens at
    /// `…/auth/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0; server-side stores
    /// only).
    pub backchannel_logout: bool,
    /// `auth_allowed_redirect_origins`: origins (`scheme://host[:port]`) besides the public
    /// origin that an absolute `return_to` may name ([`crate::redirect::ReturnRules`]).
    pub allowed_redirect_origins: Vec<String>,
    /// `oidc_compat_exchange` with `oidc_bff_secret`: the one-time-code flow of FluxLit for
    /// Python (`None`: off). Needs a server-side store (the codes are single-use).
    pub compat_exchange: Option<CompatExchange>,
}

/// Why the backend-for-frontend cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BffError {
    /// The cookie secrets are unusable.
    #[error("auth_cookie_secrets: {0}")]
    Secrets(#[from] crate::seal::SealError),
    /// Back-channel logout cannot check the provider's logout tokens.
    #[error("auth_logout_backchannel: {0}")]
    Backchannel(#[from] crate::jwt::JwtConfigError),
    /// The public origin or an `auth_allowed_redirect_origins` entry is not an origin.
    #[error("public_base_url or auth_allowed_redirect_origins: {0}")]
    RedirectOrigin(#[from] crate::redirect::OriginError),
    /// The exchange flow cannot be set up.
    #[error("oidc_compat_exchange: {0}")]
    CompatExchange(String),
}

/// How a request that carries no session is answered (AUTH.md A.4 rule 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// A top-level page load (`Sec-Fetch-Mode: navigate`, or `Accept: text/html` on GET/HEAD
    /// without fetch metadata): 302 to the login.
    Navigation,
    /// An API request: 401 JSON with `WWW-Authenticate: Bearer`.
    Api,
    /// Anything else (fetch/XHR, WebSocket upgrades, assets): 401 JSON, never a redirect.
    Other,
}

impl RequestClass {
    /// The class of a UI request with `method` and `headers` (API requests are
    /// [`RequestClass::Api`] whatever they say).
    pub fn of_ui(method: &Method, headers: &HeaderMap, websocket: bool) -> Self {
        if websocket || (method != Method::GET && method != Method::HEAD) {
            return Self::Other;
        }
        match headers.get("sec-fetch-mode").map(HeaderValue::as_bytes) {
            Some(b"navigate") => Self::Navigation,
            Some(_) => Self::Other,
            None => {
                let html = headers
                    .get_all(http::header::ACCEPT)
                    .iter()
                    .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")));
                if html { Self::Navigation } else { Self::Other }
            }
        }
    }
}

/// A logged-in request: the session and, for server-side stores, its ticket.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The session.
    pub session: Session,
    /// The ticket (`memory`/`redis` stores), `None` for the cookie store.
    pub ticket: Option<String>,
}

/// What a route answered, and which session it ended (the gateway closes its tunnels).
#[derive(Debug)]
pub struct RouteAnswer {
    /// The response.
    pub response: Response<Bytes>,
    /// The sessions the route ended (logout, back-channel logout).
    pub ended: Option<session::Revoked>,
}

/// The login in flight, sealed into its cookie.
#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    created_at: i64,
}

/// The backend-for-frontend.
pub struct Bff {
    cfg: BffConfig,
    keys: CookieKeys,
    asserter: crate::assertion::Asserter,
    session_cookie: String,
    session_path: String,
    login_prefix: String,
    rp: tokio::sync::Mutex<Option<Arc<RelyingParty>>>,
    last_failure: Mutex<Option<Instant>>,
    /// Checks logout tokens (`auth_logout_backchannel` with a server-side store).
    backchannel: Option<crate::jwt::JwtVerifier>,
    /// Where a login may return to.
    returns: crate::redirect::ReturnRules,
    /// `oidc_compat_exchange`: the key that signs first-party tokens and the verifier the API
    /// checks them with.
    compat: Option<(jsonwebtoken::EncodingKey, crate::jwt::JwtVerifier)>,
}

impl std::fmt::Debug for Bff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bff")
            .field("route_prefix", &self.cfg.route_prefix)
            .field("session_cookie", &self.session_cookie)
            .finish_non_exhaustive()
    }
}

impl Bff {
    /// The backend-for-frontend for `cfg`. The provider is discovered at the first request
    /// that needs it (and again [`DISCOVERY_RETRY`] after a failure), so a provider that is
    /// down at start-up delays logins, not the gateway.
    ///
    /// # Errors
    /// [`BffError::Secrets`] when the cookie secrets are missing or short.
    pub fn new(cfg: BffConfig) -> Result<Self, BffError> {
        let keys = CookieKeys::new(&cfg.cookie_secrets)?;
        let returns = crate::redirect::ReturnRules::new(
            &cfg.root_path,
            &cfg.public_origin,
            &cfg.allowed_redirect_origins,
        )?;
        let asserter = crate::assertion::Asserter::new(&cfg.public_origin, &cfg.cookie_secrets)
            .ok_or(BffError::Secrets(crate::seal::SealError::NoSecret))?;
        // RFC 6265bis §4.1.3: `__Host-` needs Secure, Path=/ and no Domain; `__Secure-` needs
        // Secure. Plain-http (loopback development) cookies cannot carry either prefix.
        let (session_cookie, login_prefix) = match (cfg.secure, cfg.root_path.is_empty()) {
            (true, true) => ("__Host-fluxlit_session", "__Secure-fluxlit_login_"),
            (true, false) => ("__Secure-fluxlit_session", "__Secure-fluxlit_login_"),
            (false, _) => ("fluxlit_session", "fluxlit_login_"),
        };
        let backchannel = if cfg.backchannel_logout && cfg.store.is_some() {
            Some(crate::jwt::JwtVerifier::new(crate::jwt::JwtConfig {
                issuer: cfg.oidc.issuer.clone(),
                audiences: vec![cfg.oidc.client_id.clone()],
                leeway_seconds: 30,
                keys: crate::jwt::KeySource::Discovery,
            })?)
        } else {
            None
        };
        let compat = match &cfg.compat_exchange {
            None => None,
            Some(_) if cfg.store.is_none() => {
                return Err(BffError::CompatExchange(
                    "needs auth_session_store = memory or redis: one-time codes must be single-use, which a stateless cookie cannot be".into(),
                ));
            }
            Some(c) if c.secret.len() < crate::seal::MIN_SECRET_BYTES => {
                return Err(BffError::CompatExchange(format!(
                    "oidc_bff_secret must have at least {} bytes for HS256 (RFC 7518 §3.2), not {}",
                    crate::seal::MIN_SECRET_BYTES,
                    c.secret.len()
                )));
            }
            Some(c) => Some((
                jsonwebtoken::EncodingKey::from_secret(&c.secret)
                    .map_err(|e| BffError::CompatExchange(format!("oidc_bff_secret: {e}")))?,
                crate::jwt::JwtVerifier::new(crate::jwt::JwtConfig {
                    issuer: COMPAT_ISSUER.into(),
                    audiences: vec![COMPAT_AUDIENCE.into()],
                    leeway_seconds: 0,
                    keys: crate::jwt::KeySource::Hs256(c.secret.clone()),
                })
                .map_err(|e| BffError::CompatExchange(e.to_string()))?,
            )),
        };
        let session_path = if cfg.root_path.is_empty() {
            "/".to_owned()
        } else {
            format!("{}/", cfg.root_path)
        };
        Ok(Self {
            keys,
            asserter,
            session_cookie: session_cookie.to_owned(),
            session_path,
            login_prefix: login_prefix.to_owned(),
            cfg,
            rp: tokio::sync::Mutex::new(None),
            last_failure: Mutex::new(None),
            backchannel,
            returns,
            compat,
        })
    }

    /// `oidc_compat_exchange`: the verifier of the first-party tokens the exchange hands out
    /// (HS256 with `oidc_bff_secret`, `iss` [`COMPAT_ISSUER`], `aud` [`COMPAT_AUDIENCE`], `exp`
    /// required, no leeway), for API requests without a session; `None` when off.
    pub fn compat_bearer(&self) -> Option<&crate::jwt::JwtVerifier> {
        self.compat.as_ref().map(|(_, v)| v)
    }

    /// The routes' prefix, `{root_path}{api_mount}/auth`.
    pub fn route_prefix(&self) -> &str {
        &self.cfg.route_prefix
    }

    /// The session cookie's name (`__Host-fluxlit_session`, `__Secure-fluxlit_session` or
    /// `fluxlit_session`; chunks add `.1`, `.2`, …).
    pub fn session_cookie_name(&self) -> &str {
        &self.session_cookie
    }

    /// The public origin, `scheme://host[:port]` (WebSocket upgrades must come from it).
    pub fn public_origin(&self) -> &str {
        &self.cfg.public_origin
    }

    /// The server-side store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.cfg.store.as_ref()
    }

    /// The route under the auth prefix that `api_path` (a path under the API mount, as the
    /// router decided it) names: `Some("/login")` for `/auth/login`; `None` outside `/auth/`.
    pub fn route_of(api_path: &str) -> Option<&str> {
        api_path
            .strip_prefix("/auth")
            .filter(|rest| rest.starts_with('/'))
    }

    /// The discovered provider, discovering it now if needed.
    async fn relying_party(&self) -> Result<Arc<RelyingParty>, OidcError> {
        let mut rp = self.rp.lock().await;
        if let Some(rp) = rp.as_ref() {
            return Ok(rp.clone());
        }
        let recent_failure = self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < DISCOVERY_RETRY);
        if recent_failure {
            return Err(OidcError::Discovery {
                issuer: self.cfg.oidc.issuer.clone(),
                reason: "the last attempt failed moments ago; retrying shortly".into(),
            });
        }
        match RelyingParty::discover(self.cfg.oidc.clone()).await {
            Ok(found) => {
                let found = Arc::new(found);
                *rp = Some(found.clone());
                Ok(found)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.oidc.issuer, error = %e, "OpenID discovery failed; logins get 503 until it succeeds");
                *self
                    .last_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// The session the request's cookie names, if valid: `Ok(None)` when there is none (or
    /// it is expired, tampered with, sealed with an unknown key or revoked).
    ///
    /// # Errors
    /// [`StoreError`] when the server-side store cannot be reached (answer 503).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Authenticated>, StoreError> {
        let pairs = cookie_pairs(headers);
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(opened) = self
            .keys
            .open_chunked(&self.session_cookie, self.cfg.max_chunks, get)
        else {
            return Ok(None);
        };
        match &self.cfg.store {
            None => {
                let Ok(session) = serde_json::from_str::<Session>(&opened) else {
                    return Ok(None);
                };
                Ok((!session.expired(session::now())).then_some(Authenticated {
                    session,
                    ticket: None,
                }))
            }
            Some(store) => {
                let Some(mut session) = store.load_in_use(&opened).await? else {
                    return Ok(None);
                };
                if session
                    .tokens
                    .as_ref()
                    .is_some_and(|t| t.refresh_due(session::now()))
                {
                    match self.refresh(store, &opened).await? {
                        Some(s) => session = s,
                        None => return Ok(None),
                    }
                }
                Ok(Some(Authenticated {
                    session,
                    ticket: Some(opened),
                }))
            }
        }
    }

    /// [`Bff::refresh`] when the session behind `ticket` is due for one (the background
    /// refresh of sessions with open WebSockets). A session the store no longer has (its
    /// absolute end or `auth_session_idle_timeout_s` passed) is revoked, which closes its
    /// WebSockets on every gateway sharing the store, as a logout does.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn refresh_if_due(&self, store: &Store, ticket: &str) -> Result<(), StoreError> {
        let Some(current) = store.load(ticket).await? else {
            if let Some((sid, _)) = session::split_ticket(ticket) {
                tracing::info!(
                    sid,
                    "session ended (idle timeout or lifetime): closing its WebSockets"
                );
                store.revoke(&session::Revoked::Sid(sid.to_owned())).await?;
            }
            return Ok(());
        };
        let due = current
            .tokens
            .as_ref()
            .is_some_and(|t| t.refresh_due(session::now()));
        if due {
            self.refresh(store, ticket).await?;
        }
        Ok(())
    }

    /// Refreshes the tokens of the session behind `ticket` when due, once across every
    /// gateway sharing the store (its refresh lock; AUTH.md A.6): the session as it is
    /// afterwards, or `None` when it ended (the provider refused the refresh token: the
    /// session is revoked everywhere, which closes its WebSockets). A provider that cannot
    /// be reached leaves the session as it is (it is tried again at the next request).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn refresh(
        &self,
        store: &Store,
        ticket: &str,
    ) -> Result<Option<Session>, StoreError> {
        let Some((sid, _)) = session::split_ticket(ticket) else {
            return Ok(None);
        };
        // Wait for the lock in short rounds, re-reading between them: once the holder has
        // refreshed, the session is no longer due and the waiters go on without queueing for
        // the lock one by one.
        let deadline = Instant::now() + Duration::from_secs(10);
        let lock = loop {
            if let Some(l) = store.refresh_lock(sid, Duration::from_millis(100)).await? {
                break Some(l);
            }
            match store.load(ticket).await? {
                None => return Ok(None),
                Some(s)
                    if !s
                        .tokens
                        .as_ref()
                        .is_some_and(|t| t.refresh_due(session::now())) =>
                {
                    return Ok(Some(s));
                }
                Some(_) if Instant::now() >= deadline => break None,
                Some(_) => {}
            }
        };
        // Re-read: another request or replica may have refreshed while this one waited.
        let Some(mut current) = store.load(ticket).await? else {
            return Ok(None);
        };
        let now = session::now();
        let Some(tokens) = current.tokens.clone().filter(|t| t.refresh_due(now)) else {
            return Ok(Some(current));
        };
        if lock.is_none() {
            tracing::warn!(
                sid,
                "token refresh still held elsewhere after 10 s; using the current tokens"
            );
            return Ok(Some(current));
        }
        let Some(refresh_token) = tokens.refresh_token.as_deref() else {
            return Ok(Some(current));
        };
        let rp = match self.relying_party().await {
            Ok(rp) => rp,
            Err(_) => return Ok(Some(current)),
        };
        match rp
            .refresh(refresh_token, &current.identity.sub, &tokens.id_token)
            .await
        {
            Ok(t) => {
                current.tokens = Some(SessionTokens {
                    access_token: t.access_token,
                    refresh_token: t.refresh_token,
                    id_token: t.id_token,
                    access_expires_at: t
                        .expires_in
                        .map(|d| now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(0))),
                    access_issued_at: Some(now),
                });
                store.update(ticket, &current).await?;
                tracing::debug!(sub = %current.identity.sub, "tokens refreshed");
                Ok(Some(current))
            }
            Err(crate::oidc::RefreshError::Refused(reason)) => {
                tracing::info!(sub = %current.identity.sub, reason = %reason, "session ended: the provider refused its refresh token");
                store
                    .revoke(&session::Revoked::Sid(current.sid.clone()))
                    .await?;
                Ok(None)
            }
            Err(crate::oidc::RefreshError::Failed(reason)) => {
                tracing::warn!(sub = %current.identity.sub, reason = %reason, "token refresh failed; keeping the session and retrying at the next request");
                Ok(Some(current))
            }
        }
    }

    /// Removes the gateway's own cookies (the session's chunks and login cookies) from the
    /// `Cookie` fields, keeping every other pair byte for byte (Streamlit's XSRF cookie must
    /// arrive as the browser sent it; AUTH.md A.4 rule 2). A field left empty is removed.
    pub fn strip_own_cookies(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(COOKIE) {
            return;
        }
        let own = |name: &str| {
            name == self.session_cookie
                || name
                    .strip_prefix(self.session_cookie.as_str())
                    .is_some_and(|rest| {
                        rest.strip_prefix('.')
                            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    })
                || name.starts_with(self.login_prefix.as_str())
        };
        let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
        let mut changed = false;
        let mut kept = Vec::with_capacity(values.len());
        for v in values {
            let bytes = v.as_bytes();
            let parts: Vec<&[u8]> = bytes.split(|&b| b == b';').collect();
            let keep: Vec<&[u8]> = parts
                .iter()
                .copied()
                .filter(|p| {
                    let name = p.split(|&b| b == b'=').next().unwrap_or_default();
                    let name = std::str::from_utf8(name).unwrap_or("").trim();
                    !own(name)
                })
                .collect();
            if keep.len() == parts.len() {
                kept.push(v);
                continue;
            }
            changed = true;
            let joined = keep.join(&b';');
            let trimmed = trim_ascii_start(&joined);
            if !trimmed.iter().all(u8::is_ascii_whitespace)
                && let Ok(v) = HeaderValue::from_bytes(trimmed)
            {
                kept.push(v);
            }
        }
        if changed {
            headers.remove(COOKIE);
            for v in kept {
                headers.append(COOKIE, v);
            }
        }
    }

    /// The `Authorization` field for the API hop of `session` (`auth_pass_access_token`), if
    /// on and the session has an access token; marked sensitive.
    pub fn api_authorization(&self, session: &Session) -> Option<HeaderValue> {
        if !self.cfg.pass_access_token {
            return None;
        }
        let token = &session.tokens.as_ref()?.access_token;
        let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The JWKS of the identity assertion ([`crate::assertion`]).
    pub fn jwks(&self) -> serde_json::Value {
        self.asserter.jwks()
    }

    /// The identity fields set on the API and Streamlit hops for `session`: the names of
    /// [`IDENTITY_HEADERS`] (values that cannot be a field value are left out) and the signed
    /// assertion `X-Fluxlit-Identity`, valid until the session ends (so that it covers a
    /// Streamlit session's WebSocket, which Streamlit's calls to the API may forward).
    pub fn identity_headers(&self, session: &Session) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Self::plain_identity_headers(session);
        if let Some(token) = self
            .asserter
            .sign(session, session::now(), i64::MAX / 2)
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            out.push((HeaderName::from_static(crate::assertion::HEADER), token));
        }
        out
    }

    fn plain_identity_headers(session: &Session) -> Vec<(HeaderName, HeaderValue)> {
        let id = &session.identity;
        let groups = id.groups.join(",");
        let values = [
            Some(id.sub.as_str()),
            id.email.as_deref(),
            id.name.as_deref(),
            id.preferred_username.as_deref(),
            (!groups.is_empty()).then_some(groups.as_str()),
        ];
        IDENTITY_HEADERS
            .iter()
            .zip(values)
            .filter_map(|((name, _), value)| {
                let v = HeaderValue::from_str(value?).ok()?;
                Some((HeaderName::from_static(name), v))
            })
            .collect()
    }

    /// The answer to a request of `class` without a session: 302 to the login with
    /// `return_to` = `target` (navigations), else 401 JSON.
    pub fn unauthenticated(&self, class: RequestClass, target: &Uri) -> Response<Bytes> {
        match class {
            RequestClass::Navigation => {
                let return_to = target
                    .path_and_query()
                    .map_or("/", http::uri::PathAndQuery::as_str);
                let location = format!(
                    "{}/login?return_to={}",
                    self.cfg.route_prefix,
                    percent_encoding::utf8_percent_encode(return_to, QUERY_VALUE)
                );
                redirect(StatusCode::FOUND, &location, Vec::new())
            }
            RequestClass::Api | RequestClass::Other => {
                let mut r = json_response(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"detail": "Not authenticated"}),
                );
                if class == RequestClass::Api {
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer"),
                    );
                }
                r
            }
        }
    }

    /// Whether route `sub` reads a request body (the gateway reads at most
    /// [`MAX_ROUTE_BODY`] bytes of it first).
    pub fn route_reads_body(&self, sub: &str, method: &Method) -> bool {
        method == Method::POST
            && match sub {
                "/backchannel-logout" => self.backchannel.is_some(),
                "/exchange" => self.compat.is_some(),
                _ => false,
            }
    }

    /// Answers one of the routes: `sub` is the path under [`Bff::route_prefix`] (`/login`,
    /// `/callback`, `/logout`, `/userinfo`, `/backchannel-logout`), `uri` the request target
    /// (for its query), `body` the request body when [`Bff::route_reads_body`].
    pub async fn handle_route(
        &self,
        sub: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> RouteAnswer {
        let answer = |response| RouteAnswer {
            response,
            ended: None,
        };
        let get = method == Method::GET || method == Method::HEAD;
        match sub {
            "/login" if get => answer(self.login(uri, headers).await),
            "/callback" if get => answer(self.callback(uri, headers).await),
            "/userinfo" if get => answer(self.userinfo(headers).await),
            "/logout" if get || method == Method::POST => self.logout(method, headers).await,
            "/backchannel-logout" if self.route_reads_body(sub, method) => {
                self.backchannel_logout(body).await
            }
            "/exchange" if self.route_reads_body(sub, method) => answer(self.exchange(body).await),
            "/exchange" if self.compat.is_some() => {
                answer(text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"))
            }
            "/login" | "/callback" | "/userinfo" | "/logout" => {
                answer(text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"))
            }
            _ => answer(text(StatusCode::NOT_FOUND, "Not Found\n")),
        }
    }

    async fn login(&self, uri: &Uri, headers: &HeaderMap) -> Response<Bytes> {
        let default_return = format!("{}/", self.cfg.root_path);
        let return_to = match query_param(uri, "return_to") {
            None => default_return,
            Some(raw) => match self.returns.check(&raw) {
                Ok(ok) => ok,
                Err(reason) => {
                    tracing::info!(return_to = %raw.escape_debug(), reason, "login refused an unsafe return_to");
                    return html(
                        StatusCode::BAD_REQUEST,
                        "Login refused",
                        "The page to return to after login is neither a page of this site nor on an origin it allows (auth_allowed_redirect_origins).",
                    );
                }
            },
        };
        let rp = match self.relying_party().await {
            Ok(rp) => rp,
            Err(e) => return provider_unavailable(&e),
        };
        let start = rp.start_login();
        let state = LoginState {
            state: start.state.clone(),
            nonce: start.nonce,
            verifier: start.verifier,
            return_to,
            created_at: session::now(),
        };
        let name = self.login_cookie_name(&start.state);
        let Ok(json) = serde_json::to_string(&state) else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "FluxLit: login state\n");
        };
        let mut cookies = vec![self.cookie(
            &name,
            &self.keys.seal(&name, &json),
            &self.cfg.route_prefix,
            Some(LOGIN_TTL_S),
        )];
        // At most MAX_LOGINS live logins: the oldest others are expired now.
        let mut others: Vec<(i64, String)> = cookie_pairs(headers)
            .into_iter()
            .filter(|(n, _)| n.starts_with(self.login_prefix.as_str()))
            .map(|(n, v)| {
                let created = self
                    .keys
                    .open(&n, &v)
                    .and_then(|j| serde_json::from_str::<LoginState>(&j).ok())
                    .map_or(i64::MIN, |s| s.created_at);
                (created, n)
            })
            .collect();
        others.sort_by_key(|o| std::cmp::Reverse(o.0));
        for (_, n) in others.into_iter().skip(MAX_LOGINS - 1) {
            cookies.push(self.expired_cookie(&n, &self.cfg.route_prefix));
        }
        redirect(StatusCode::FOUND, &start.url, cookies)
    }

    fn login_cookie_name(&self, state: &str) -> String {
        let tag: String = state
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        format!("{}{tag}", self.login_prefix)
    }

    async fn callback(&self, uri: &Uri, headers: &HeaderMap) -> Response<Bytes> {
        if let Some(error) = query_param(uri, "error") {
            let description = query_param(uri, "error_description").unwrap_or_default();
            tracing::info!(error = %error.escape_debug(), description = %description.escape_debug(), "the provider refused the login");
            return html(
                StatusCode::UNAUTHORIZED,
                "Login failed",
                &format!(
                    "The identity provider refused the login: {}. {} <a href=\"{}/login\">Try again</a>.",
                    escape_html(&error),
                    escape_html(&description),
                    self.cfg.route_prefix
                ),
            );
        }
        let Some(state) = query_param(uri, "state") else {
            return self.bad_callback("the callback has no state");
        };
        let name = self.login_cookie_name(&state);
        let pairs = cookie_pairs(headers);
        let Some(login) = pairs
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| self.keys.open(&name, v))
            .and_then(|j| serde_json::from_str::<LoginState>(&j).ok())
        else {
            return self.bad_callback("no login is in flight for this state (expired, replayed, or started in another browser)");
        };
        // The login cookie goes with this answer whatever happens (one-shot).
        let expire_login = self.expired_cookie(&name, &self.cfg.route_prefix);
        if !session::constant_time_eq(login.state.as_bytes(), state.as_bytes())
            || session::now() - login.created_at > LOGIN_TTL_S
        {
            return with_cookies(
                self.bad_callback("the state does not match the login in flight"),
                vec![expire_login],
            );
        }
        // RFC 9207 §2.4: an `iss` in the response must be the issuer (mix-up attacks).
        if let Some(iss) = query_param(uri, "iss")
            && iss != self.cfg.oidc.issuer
        {
            tracing::warn!(iss = %iss.escape_debug(), expected = %self.cfg.oidc.issuer, "callback refused: iss is another issuer");
            return with_cookies(
                self.bad_callback("the response names another issuer"),
                vec![expire_login],
            );
        }
        let Some(code) = query_param(uri, "code") else {
            return with_cookies(
                self.bad_callback("the callback has no code"),
                vec![expire_login],
            );
        };
        let rp = match self.relying_party().await {
            Ok(rp) => rp,
            Err(e) => return with_cookies(provider_unavailable(&e), vec![expire_login]),
        };
        let (identity, tokens) = match rp.finish_login(&code, &login.nonce, &login.verifier).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "login refused at the callback");
                return with_cookies(
                    html(
                        StatusCode::UNAUTHORIZED,
                        "Login failed",
                        &format!(
                            "The login could not be completed. <a href=\"{}/login\">Try again</a>.",
                            self.cfg.route_prefix
                        ),
                    ),
                    vec![expire_login],
                );
            }
        };
        let groups = groups_of(&tokens.id_token, &self.cfg.access.groups_claim);
        let session_identity = SessionIdentity {
            iss: identity.iss,
            sub: identity.sub,
            email: identity.email,
            email_verified: identity.email_verified,
            name: identity.name,
            preferred_username: identity.preferred_username,
            groups,
            auth_time: identity.auth_time,
        };
        if let Err(reason) = admit(&self.cfg.access, &session_identity) {
            tracing::info!(sub = %session_identity.sub, email = ?session_identity.email, reason = %reason, "login denied by the access rules");
            return with_cookies(
                html(
                    StatusCode::FORBIDDEN,
                    "Access denied",
                    "You signed in, but this application does not admit your account. Ask its operator for access.",
                ),
                vec![expire_login],
            );
        }
        let now = session::now();
        let lifetime = i64::try_from(self.cfg.lifetime.as_secs()).unwrap_or(i64::MAX);
        let session = Session {
            sid: session::new_sid(),
            identity: session_identity,
            created_at: now,
            expires_at: now.saturating_add(lifetime),
            tokens: self.cfg.store.as_ref().map(|_| SessionTokens {
                access_token: tokens.access_token,
                refresh_token: tokens.refresh_token,
                id_token: tokens.id_token,
                access_expires_at: tokens
                    .expires_in
                    .map(|d| now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(0))),
                access_issued_at: Some(now),
            }),
        };
        let mut cookies = vec![expire_login];
        match self.session_cookies(&session).await {
            Ok(c) => cookies.extend(c),
            Err(r) => return with_cookies(r, cookies),
        }
        tracing::info!(sub = %session.identity.sub, "login completed");
        let mut target = login.return_to;
        if let (Some((key, _)), Some(store)) = (&self.compat, &self.cfg.store) {
            match self
                .issue_auth_code(key, store, &session.identity.sub)
                .await
            {
                Ok(code) => target = with_query_param(&target, "auth_code", &code),
                Err(r) => return with_cookies(r, cookies),
            }
        }
        redirect(StatusCode::SEE_OTHER, &target, cookies)
    }

    /// `oidc_compat_exchange`: a first-party token for `sub` (reference §8.2:
    /// `issue_hs256_access_token` with `sub, iss, aud, iat, exp`), kept in the store under a
    /// new one-time code for [`AUTH_CODE_TTL`]; the code, or the error page.
    async fn issue_auth_code(
        &self,
        key: &jsonwebtoken::EncodingKey,
        store: &Store,
        sub: &str,
    ) -> Result<String, Response<Bytes>> {
        let now = session::now();
        let claims = serde_json::json!({
            "sub": sub,
            "iss": COMPAT_ISSUER,
            "aud": COMPAT_AUDIENCE,
            "iat": now,
            "exp": now.saturating_add(COMPAT_TOKEN_TTL_S),
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            key,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "oidc_compat_exchange: cannot sign the first-party token");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "FluxLit: first-party token\n",
            )
        })?;
        // 256 random bits, base64url (as `token_urlsafe(32)` in FluxLit for Python).
        let code = session::random_token(32);
        store
            .put_code(&code, &token, AUTH_CODE_TTL)
            .await
            .map_err(|e| store_unavailable(&e))?;
        Ok(code)
    }

    /// `POST …/exchange` with `{"code": "..."}` (reference §8.2): the code's token, once.
    /// 200 `{"access_token": …, "token_type": "bearer"}`; 401 `Invalid or expired auth code`
    /// for an unknown, used or expired code; 422 in FastAPI's validation shape for a body that
    /// is not such an object or a code shorter than [`MIN_AUTH_CODE_LEN`] characters; 503 when
    /// the store cannot be reached.
    async fn exchange(&self, body: &[u8]) -> Response<Bytes> {
        let Some(store) = &self.cfg.store else {
            return text(StatusCode::NOT_FOUND, "Not Found\n");
        };
        let code = match exchange_code(body) {
            Ok(code) => code,
            Err(detail) => {
                tracing::info!(
                    "auth code exchange refused: the body is not {{\"code\": \"<at least 8 characters>\"}}"
                );
                return fastapi_json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "detail": [detail] }),
                );
            }
        };
        match store.take_code(&code).await {
            Ok(Some(token)) => fastapi_json(
                StatusCode::OK,
                &serde_json::json!({"access_token": token, "token_type": "bearer"}),
            ),
            Ok(None) => {
                tracing::info!("auth code exchange refused: unknown, used or expired code");
                fastapi_json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"detail": "Invalid or expired auth code"}),
                )
            }
            Err(e) => store_unavailable(&e),
        }
    }

    /// The `Set-Cookie` values of a new session (sealed identity chunks, or the ticket), or the
    /// error page.
    async fn session_cookies(
        &self,
        session: &Session,
    ) -> Result<Vec<HeaderValue>, Response<Bytes>> {
        let value = match &self.cfg.store {
            None => serde_json::to_string(session).unwrap_or_default(),
            Some(store) => match store.create(session).await {
                Ok(ticket) => ticket,
                Err(e) => return Err(store_unavailable(&e)),
            },
        };
        let chunks = match self
            .keys
            .seal_chunked(&self.session_cookie, &value, self.cfg.max_chunks)
        {
            Ok(c) => c,
            Err(e) => {
                let id = &session.identity;
                tracing::error!(error = %e, groups = id.groups.len(), name_bytes = id.name.as_deref().map_or(0, str::len), email_bytes = id.email.as_deref().map_or(0, str::len), "the session does not fit in its cookies (auth_session_max_chunks); use auth_session_store = redis or fewer groups");
                return Err(html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Login failed",
                    "Your account's details are too large for the session cookie. The operator can raise auth_session_max_chunks or use a server-side session store (auth_session_store = redis).",
                ));
            }
        };
        let max_age = i64::try_from(self.cfg.lifetime.as_secs()).unwrap_or(i64::MAX);
        let mut out: Vec<HeaderValue> = chunks
            .iter()
            .map(|(n, v)| self.cookie(n, v, &self.session_path, Some(max_age)))
            .collect();
        // Chunks a larger earlier session left behind go.
        for i in chunks.len()..self.cfg.max_chunks {
            out.push(self.expired_cookie(
                &crate::seal::chunk_name(&self.session_cookie, i),
                &self.session_path,
            ));
        }
        Ok(out)
    }

    fn bad_callback(&self, why: &str) -> Response<Bytes> {
        tracing::info!(reason = why, "callback refused");
        html(
            StatusCode::BAD_REQUEST,
            "Login failed",
            &format!(
                "This login link is no longer valid ({why}). <a href=\"{}/login\">Start again</a>.",
                self.cfg.route_prefix
            ),
        )
    }

    async fn userinfo(&self, headers: &HeaderMap) -> Response<Bytes> {
        match self.authenticate(headers).await {
            Ok(Some(a)) => {
                let id = &a.session.identity;
                json_response(
                    StatusCode::OK,
                    &serde_json::json!({
                        "iss": id.iss,
                        "sub": id.sub,
                        "email": id.email,
                        "email_verified": id.email_verified,
                        "name": id.name,
                        "preferred_username": id.preferred_username,
                        "groups": id.groups,
                        "expires_at": a.session.expires_at,
                        "access_expires_at": a.session.tokens.as_ref().and_then(|t| t.access_expires_at),
                    }),
                )
            }
            Ok(None) => self.unauthenticated(RequestClass::Api, &Uri::from_static("/")),
            Err(e) => store_unavailable(&e),
        }
    }

    async fn logout(&self, method: &Method, headers: &HeaderMap) -> RouteAnswer {
        let plain = |response| RouteAnswer {
            response,
            ended: None,
        };
        let site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
        if method == Method::POST {
            // A cross-site form post must not end the session (AUTH.md A.4 rule 9).
            let origin = headers.get(http::header::ORIGIN).map(HeaderValue::as_bytes);
            let same = match origin {
                Some(o) => o == self.cfg.public_origin.as_bytes(),
                None => site.is_none_or(|s| s == b"same-origin"),
            };
            if !same {
                tracing::info!("logout refused: a cross-site POST");
                return plain(html(
                    StatusCode::FORBIDDEN,
                    "Logout refused",
                    "A logout must come from this site.",
                ));
            }
        } else if site != Some(b"same-origin") {
            return plain(html(
                StatusCode::OK,
                "Sign out",
                &format!(
                    "<form method=\"post\" action=\"{}/logout\"><button type=\"submit\">Sign out</button></form>",
                    self.cfg.route_prefix
                ),
            ));
        }
        let current = match self.authenticate(headers).await {
            Ok(a) => a,
            Err(e) => return plain(store_unavailable(&e)),
        };
        let mut cookies: Vec<HeaderValue> = (0..self.cfg.max_chunks)
            .map(|i| {
                self.expired_cookie(
                    &crate::seal::chunk_name(&self.session_cookie, i),
                    &self.session_path,
                )
            })
            .collect();
        let mut id_token = None;
        let mut ended = None;
        if let Some(a) = current {
            if let (Some(store), Some(ticket)) = (&self.cfg.store, &a.ticket)
                && let Err(e) = store.delete(ticket).await
            {
                return plain(with_cookies(store_unavailable(&e), cookies));
            }
            tracing::info!(sub = %a.session.identity.sub, "logout");
            id_token = a.session.tokens.map(|t| t.id_token);
            ended = Some(session::Revoked::Sid(a.session.sid));
        }
        let target = match self.relying_party().await {
            Ok(rp) => rp.end_session_endpoint().and_then(|endpoint| {
                end_session_url(
                    endpoint,
                    &self.cfg.oidc.client_id,
                    &self.cfg.post_logout_redirect_uri,
                    id_token.as_deref(),
                )
            }),
            Err(_) => None,
        }
        .unwrap_or_else(|| self.cfg.post_logout_redirect_uri.clone());
        let mut response = redirect(StatusCode::SEE_OTHER, &target, Vec::new());
        response = with_cookies(response, std::mem::take(&mut cookies));
        RouteAnswer { response, ended }
    }

    /// OpenID Connect Back-Channel Logout 1.0 §2.8: the `logout_token` form field, a JWT
    /// signed by the provider (its JWKS from discovery, algorithms pinned per key), `iss` the
    /// issuer, `aud` the client id, not expired, with the back-channel logout event, no
    /// `nonce`, and a `sub`: every session of that user ends (on every replica sharing the
    /// store, WebSockets included). 200 when done, 400 for a token that fails a check, 503
    /// when the store cannot be reached.
    async fn backchannel_logout(&self, body: &[u8]) -> RouteAnswer {
        let bad = |why: &str| {
            tracing::info!(reason = why, "back-channel logout refused");
            RouteAnswer {
                response: json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "invalid_request", "error_description": why}),
                ),
                ended: None,
            }
        };
        let (Some(verifier), Some(store)) = (&self.backchannel, &self.cfg.store) else {
            return bad("back-channel logout is off");
        };
        let token = std::str::from_utf8(body).ok().and_then(|form| {
            form.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == "logout_token").then(|| {
                    percent_encoding::percent_decode_str(&v.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                })
            })
        });
        let Some(token) = token else {
            return bad("no logout_token");
        };
        let claims = match verifier
            .verify(Some(format!("Bearer {token}").as_bytes()))
            .await
        {
            Ok(c) => c,
            Err(d) => return bad(&format!("logout token refused: {}", d.reason())),
        };
        let event = claims
            .get("events")
            .and_then(|e| e.get("http://schemas.openid.net/event/backchannel-logout"))
            .is_some_and(serde_json::Value::is_object);
        if !event {
            return bad("the logout token has no back-channel logout event");
        }
        if claims.contains_key("nonce") {
            return bad("a logout token must not carry a nonce");
        }
        let Some(sub) = claims.get("sub").and_then(|v| v.as_str()) else {
            return bad("the logout token names no sub (FluxLit ends sessions by user)");
        };
        let what = session::Revoked::Sub(sub.to_owned());
        match store.revoke(&what).await {
            Ok(n) => {
                tracing::info!(sub, sessions = n, "back-channel logout from the provider");
                RouteAnswer {
                    response: no_store(Response::new(Bytes::new())),
                    ended: Some(what),
                }
            }
            Err(e) => RouteAnswer {
                response: store_unavailable(&e),
                ended: None,
            },
        }
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: Option<i64>) -> HeaderValue {
        let mut c = Cookie::build((name.to_owned(), value.to_owned()))
            .path(path.to_owned())
            .http_only(true)
            .secure(self.cfg.secure)
            .same_site(SameSite::Lax);
        if let Some(s) = max_age {
            c = c.max_age(cookie::time::Duration::seconds(s));
        }
        // Names and sealed values are ASCII without controls.
        HeaderValue::from_str(&c.build().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("fluxlit_invalid=; Max-Age=0"))
    }

    fn expired_cookie(&self, name: &str, path: &str) -> HeaderValue {
        self.cookie(name, "", path, Some(0))
    }
}

/// The provider's `end_session_endpoint` with `client_id`, `post_logout_redirect_uri` and,
/// when known, `id_token_hint` (OpenID Connect RP-Initiated Logout 1.0 §2).
fn end_session_url(
    endpoint: &str,
    client_id: &str,
    post_logout: &str,
    id_token: Option<&str>,
) -> Option<String> {
    let mut url = openidconnect::url::Url::parse(endpoint).ok()?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("client_id", client_id);
        q.append_pair("post_logout_redirect_uri", post_logout);
        if let Some(t) = id_token {
            q.append_pair("id_token_hint", t);
        }
    }
    Some(url.to_string())
}

/// The groups claim of a verified ID token, as strings (a string or an array of strings),
/// at most [`MAX_GROUPS`].
fn groups_of(id_token: &str, claim: &str) -> Vec<String> {
    // The token's signature and claims were verified by `oidc::finish_login`; this reads one
    // more claim of the same token.
    let Ok(claims) = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(id_token)
    else {
        return Vec::new();
    };
    match claims.get(claim) {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .take(MAX_GROUPS)
            .collect(),
        _ => Vec::new(),
    }
}

/// The `code` of an exchange body, or the pydantic v2 error FastAPI would answer 422 with
/// (`{"type", "loc", "msg", "input"[, "ctx"]}`) for the body model `{code: str,
/// min_length=8}`.
fn exchange_code(body: &[u8]) -> Result<String, serde_json::Value> {
    let parsed: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(serde_json::json!({
                "type": "json_invalid",
                "loc": ["body", e.column().saturating_sub(1)],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": e.to_string()},
            }));
        }
    };
    let Some(object) = parsed.as_object() else {
        return Err(serde_json::json!({
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": parsed,
        }));
    };
    match object.get("code") {
        None => Err(serde_json::json!({
            "type": "missing",
            "loc": ["body", "code"],
            "msg": "Field required",
            "input": parsed,
        })),
        Some(serde_json::Value::String(code)) if code.chars().count() >= MIN_AUTH_CODE_LEN => {
            Ok(code.clone())
        }
        Some(serde_json::Value::String(code)) => Err(serde_json::json!({
            "type": "string_too_short",
            "loc": ["body", "code"],
            "msg": format!("String should have at least {MIN_AUTH_CODE_LEN} characters"),
            "input": code,
            "ctx": {"min_length": MIN_AUTH_CODE_LEN},
        })),
        Some(other) => Err(serde_json::json!({
            "type": "string_type",
            "loc": ["body", "code"],
            "msg": "Input should be a valid string",
            "input": other,
        })),
    }
}

/// `target` (a return path or URL) with `name=value` added to its query, before any fragment.
fn with_query_param(target: &str, name: &str, value: &str) -> String {
    let (head, fragment) = match target.split_once('#') {
        Some((h, f)) => (h, Some(f)),
        None => (target, None),
    };
    let sep = if head.contains('?') {
        if head.ends_with('?') || head.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    let mut out = format!(
        "{head}{sep}{name}={}",
        percent_encoding::utf8_percent_encode(value, QUERY_VALUE)
    );
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Whether the access rules admit `id`; the reason when not (logged, never shown).
fn admit(rules: &AccessRules, id: &SessionIdentity) -> Result<(), String> {
    let email_rules = !rules.emails.is_empty() || !rules.email_domains.is_empty();
    if email_rules {
        let Some(email) = id.email.as_deref() else {
            return Err("the ID token has no email, and e-mail rules are set".into());
        };
        if id.email_verified != Some(true) {
            return Err(format!("email {email:?} is not verified (email_verified)"));
        }
        let lower = email.to_ascii_lowercase();
        let listed = rules.emails.iter().any(|e| e.eq_ignore_ascii_case(&lower));
        let domain = lower.rsplit_once('@').map(|(_, d)| d);
        let in_domain = domain.is_some_and(|d| {
            rules
                .email_domains
                .iter()
                .any(|x| x.trim_start_matches('@').eq_ignore_ascii_case(d))
        });
        if !listed && !in_domain {
            return Err(format!(
                "email {email:?} is neither in auth_allowed_emails nor in auth_allowed_email_domains"
            ));
        }
    }
    if !rules.groups.is_empty() && !id.groups.iter().any(|g| rules.groups.contains(g)) {
        return Err(format!(
            "none of the groups {:?} (claim {:?}) is in auth_allowed_groups",
            id.groups, rules.groups_claim
        ));
    }
    Ok(())
}

/// Characters escaped in a query value.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The first value of `name` in the query, percent-decoded (`+` as space).
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    let q = uri.query()?;
    q.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Every `name=value` pair of the `Cookie` fields (RFC 6265 §5.4), in order.
fn cookie_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(|p| {
            let (n, v) = p.split_once('=')?;
            Some((n.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// `s` as HTML text (`&`, `<`, `>`, `"`, `'` escaped).
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn no_store(mut r: Response<Bytes>) -> Response<Bytes> {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(status: StatusCode, location: &str, cookies: Vec<HeaderValue>) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    with_cookies(no_store(r), cookies)
}

fn with_cookies(mut r: Response<Bytes>, cookies: Vec<HeaderValue>) -> Response<Bytes> {
    for c in cookies {
        r.headers_mut().append(SET_COOKIE, c);
    }
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from_static(body.as_bytes()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    no_store(r)
}

/// A JSON answer as FastAPI writes it (`application/json`, compact; reference §8.2), so apps
/// written against FluxLit for Python see the same bytes.
fn fastapi_json(status: StatusCode, v: &serde_json::Value) -> Response<Bytes> {
    json_response(status, v)
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    no_store(r)
}

/// A small page; `body` is trusted markup (the callers escape what comes from a request).
fn html(status: StatusCode, title: &str, body: &str) -> Response<Bytes> {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1><p>{body}</p></body></html>\n"
    );
    let mut r = Response::new(Bytes::from(page));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(r)
}

fn provider_unavailable(e: &OidcError) -> Response<Bytes> {
    tracing::warn!(error = %e, "login unavailable: the identity provider cannot be reached");
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"detail": "The identity provider is unavailable; retry shortly"}),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// 503 for a session store that cannot be reached (fail closed; AUTH.md A.3).
pub fn store_unavailable(e: &StoreError) -> Response<Bytes> {
    tracing::warn!(error = %e, "session store unavailable");
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"detail": "The session store is unavailable; retry shortly"}),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bff(secure: bool, root: &str, store: Option<Store>) -> Bff {
        Bff::new(BffConfig {
            oidc: OidcConfig {
                issuer: "https://idp.example".into(),
                client_id: "fluxlit".into(),
                client_secret: None,
                redirect_uri: format!("https://app.example{root}/api/auth/callback"),
                scopes: vec![],
            },
            route_prefix: format!("{root}/api/auth"),
            root_path: root.into(),
            public_origin: "https://app.example".into(),
            post_logout_redirect_uri: format!("https://app.example{root}/"),
            cookie_secrets: vec![b"unit-test-secret-0123456789abcdef-012345".to_vec()],
            store,
            lifetime: Duration::from_secs(60),
            max_chunks: 2,
            secure,
            access: AccessRules::default(),
            pass_access_token: false,
            backchannel_logout: false,
            allowed_redirect_origins: vec![],
            compat_exchange: None,
        })
        .unwrap()
    }

    fn session(groups: usize) -> Session {
        Session {
            sid: session::new_sid(),
            identity: SessionIdentity {
                iss: "https://idp.example".into(),
                sub: "alice".into(),
                email: Some("alice@example.test".into()),
                groups: (0..groups)
                    .map(|i| format!("group-number-{i:04}"))
                    .collect(),
                ..SessionIdentity::default()
            },
            created_at: session::now(),
            expires_at: session::now() + 60,
            tokens: None,
        }
    }

    #[tokio::test]
    async fn cookie_names_and_flags_follow_the_public_url() {
        let cases = [
            (true, "", "__Host-fluxlit_session=", "Path=/;"),
            (true, "/app", "__Secure-fluxlit_session=", "Path=/app/;"),
            (false, "", "fluxlit_session=", "Path=/;"),
        ];
        for (secure, root, name, path) in cases {
            let b = bff(secure, root, None);
            let cookies = b.session_cookies(&session(0)).await.unwrap();
            let first = cookies[0].to_str().unwrap();
            assert!(first.starts_with(name), "{first}");
            assert!(first.contains("HttpOnly"), "{first}");
            assert!(first.contains("SameSite=Lax"), "{first}");
            assert!(first.contains(path), "{first}");
            assert_eq!(first.contains("Secure"), secure, "{first}");
            assert!(!first.contains("Domain"), "{first}");
            // The cookie opens to the session again.
            let mut h = HeaderMap::new();
            let pair = first.split(';').next().unwrap();
            h.insert(COOKIE, HeaderValue::from_str(pair).unwrap());
            let a = b.authenticate(&h).await.unwrap().unwrap();
            assert_eq!(a.session.identity.sub, "alice");
        }
    }

    #[tokio::test]
    async fn a_session_too_large_for_its_cookies_is_a_visible_error() {
        let b = bff(true, "", None);
        // Two chunks of 3900 bytes cannot hold 400 groups of 17 bytes.
        let err = b.session_cookies(&session(400)).await.unwrap_err();
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(String::from_utf8_lossy(err.body()).contains("auth_session_max_chunks"));
        // A server-side store keeps the cookie a ticket, whatever the claims.
        let b = bff(true, "", Some(Store::Memory(Arc::default())));
        let ok = b.session_cookies(&session(400)).await.unwrap();
        assert!(ok[0].len() < 300, "{}", ok[0].len());
    }

    #[test]
    fn own_cookies_leave_the_cookie_field_and_nothing_else_does() {
        let b = bff(true, "", None);
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static(
                "__Host-fluxlit_session=abc; _streamlit_xsrf=2|a|b|1; __Host-fluxlit_session.1=def",
            ),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("__Secure-fluxlit_login_abc=x"),
        );
        h.append(COOKIE, HeaderValue::from_static("theme=dark;  x=y"));
        b.strip_own_cookies(&mut h);
        let left: Vec<&str> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, vec!["_streamlit_xsrf=2|a|b|1", "theme=dark;  x=y"]);
        // Look-alike names are not the gateway's.
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("__Host-fluxlit_session.x=1; __Host-fluxlit_sessionx=2"),
        );
        b.strip_own_cookies(&mut h);
        assert_eq!(
            h[COOKIE].to_str().unwrap(),
            "__Host-fluxlit_session.x=1; __Host-fluxlit_sessionx=2"
        );
    }

    #[test]
    fn request_classes() {
        let mut h = HeaderMap::new();
        assert_eq!(
            RequestClass::of_ui(&Method::GET, &h, false),
            RequestClass::Other
        );
        h.insert(http::header::ACCEPT, HeaderValue::from_static("text/html"));
        assert_eq!(
            RequestClass::of_ui(&Method::GET, &h, false),
            RequestClass::Navigation
        );
        assert_eq!(
            RequestClass::of_ui(&Method::POST, &h, false),
            RequestClass::Other
        );
        assert_eq!(
            RequestClass::of_ui(&Method::GET, &h, true),
            RequestClass::Other
        );
        h.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        assert_eq!(
            RequestClass::of_ui(&Method::GET, &h, false),
            RequestClass::Other
        );
        h.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert_eq!(
            RequestClass::of_ui(&Method::HEAD, &h, false),
            RequestClass::Navigation
        );
    }

    #[test]
    fn access_rules() {
        let id = |email: &str, verified: bool, groups: &[&str]| SessionIdentity {
            sub: "s".into(),
            email: Some(email.into()),
            email_verified: Some(verified),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..SessionIdentity::default()
        };
        let open = AccessRules::default();
        assert!(admit(&open, &id("a@x.test", false, &[])).is_ok());
        let domains = AccessRules {
            email_domains: vec!["Example.com".into()],
            ..AccessRules::default()
        };
        assert!(admit(&domains, &id("a@example.com", true, &[])).is_ok());
        assert!(
            admit(&domains, &id("a@example.com", false, &[])).is_err(),
            "unverified"
        );
        assert!(admit(&domains, &id("a@evil.com", true, &[])).is_err());
        assert!(admit(&domains, &id("a@sub.example.com", true, &[])).is_err());
        let groups = AccessRules {
            groups: vec!["staff".into()],
            groups_claim: "groups".into(),
            ..AccessRules::default()
        };
        assert!(admit(&groups, &id("a@x", false, &["staff", "x"])).is_ok());
        let err = admit(&groups, &id("a@x", false, &["guests"])).unwrap_err();
        assert!(
            err.contains("guests") && err.contains("auth_allowed_groups"),
            "{err}"
        );
    }

    #[test]
    fn exchange_bodies_are_judged_as_fastapi_does() {
        assert_eq!(
            exchange_code(br#"{"code":"12345678"}"#).unwrap(),
            "12345678"
        );
        let short = exchange_code(br#"{"code":"1234567"}"#).unwrap_err();
        assert_eq!(
            short.to_string(),
            r#"{"ctx":{"min_length":8},"input":"1234567","loc":["body","code"],"msg":"String should have at least 8 characters","type":"string_too_short"}"#
        );
        assert_eq!(exchange_code(b"{}").unwrap_err()["type"], "missing");
        assert_eq!(
            exchange_code(br#"{"code":12345678}"#).unwrap_err()["type"],
            "string_type"
        );
        assert_eq!(
            exchange_code(b"[1]").unwrap_err()["type"],
            "model_attributes_type"
        );
        assert_eq!(exchange_code(b"{").unwrap_err()["type"], "json_invalid");
        assert_eq!(
            with_query_param("/page", "auth_code", "a-b_c"),
            "/page?auth_code=a-b_c"
        );
        assert_eq!(
            with_query_param("/p?x=1#top", "auth_code", "c"),
            "/p?x=1&auth_code=c#top"
        );
        assert_eq!(
            with_query_param("https://good.example/?", "auth_code", "c"),
            "https://good.example/?auth_code=c"
        );
    }

    #[tokio::test]
    async fn the_exchange_needs_a_store_and_a_long_secret() {
        let cfg = |store: Option<Store>, secret: &[u8]| {
            let mut c = bff(true, "", store).cfg.clone();
            c.compat_exchange = Some(CompatExchange {
                secret: secret.to_vec(),
            });
            Bff::new(c)
        };
        let long = b"compat-secret-0123456789abcdef-0123456789";
        let err = cfg(None, long).unwrap_err().to_string();
        assert!(
            err.contains("oidc_compat_exchange") && err.contains("memory or redis"),
            "{err}"
        );
        let err = cfg(Some(Store::Memory(Arc::default())), b"short")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("oidc_bff_secret") && err.contains("32"),
            "{err}"
        );
        let b = cfg(Some(Store::Memory(Arc::default())), long).unwrap();
        let store = b.store().unwrap().clone();
        let key = &b.compat.as_ref().unwrap().0;
        let code = b.issue_auth_code(key, &store, "alice").await.unwrap();
        assert!(code.len() >= MIN_AUTH_CODE_LEN);
        let r = b
            .exchange(format!(r#"{{"code":"{code}"}}"#).as_bytes())
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["token_type"], "bearer");
        let token = body["access_token"].as_str().unwrap();
        let claims = b
            .compat_bearer()
            .unwrap()
            .verify(Some(format!("Bearer {token}").as_bytes()))
            .await
            .unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], COMPAT_ISSUER);
        assert_eq!(claims["aud"], COMPAT_AUDIENCE);
        let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert_eq!(ttl, COMPAT_TOKEN_TTL_S);
        let again = b
            .exchange(format!(r#"{{"code":"{code}"}}"#).as_bytes())
            .await;
        assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            again.body().as_ref(),
            br#"{"detail":"Invalid or expired auth code"}"#
        );
    }

    #[test]
    fn routes_and_query_values() {
        assert_eq!(Bff::route_of("/auth/login"), Some("/login"));
        assert_eq!(Bff::route_of("/auth"), None);
        assert_eq!(Bff::route_of("/authx/login"), None);
        let u: Uri = "/cb?a=1&state=x%2By&b".parse().unwrap();
        assert_eq!(query_param(&u, "state").as_deref(), Some("x+y"));
        assert_eq!(query_param(&u, "b").as_deref(), Some(""));
        assert_eq!(query_param(&u, "c"), None);
        assert_eq!(
            escape_html("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
