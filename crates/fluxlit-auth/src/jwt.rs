//! Bearer JWTs on the API (`auth_mode = jwt`; the reference's §8.1, RFC 7519 and RFC 6750).
//!
//! [`JwtVerifier::verify`] takes a request's `Authorization` field and either accepts the token
//! or answers with a [`Denial`] whose status, `detail` and `WWW-Authenticate` are FluxLit for
//! Python's, byte for byte:
//!
//! | case | status | detail | `WWW-Authenticate` |
//! |---|---|---|---|
//! | no `Authorization`, or it does not start with `bearer ` (any case) | 401 | `Missing bearer token` | `Bearer` |
//! | nothing after `bearer ` | 401 | `Empty bearer token` | `Bearer` |
//! | expired (`exp` + leeway in the past) | 401 | `Token expired` | `Bearer error="invalid_token"` |
//! | any other invalid token | 401 | `Invalid token` | `Bearer error="invalid_token"` |
//!
//! One case is new: when the keys cannot be had at all (the JWKS was never fetched), 503
//! `Authentication keys unavailable`, so an outage of the provider is not blamed on the client.
//!
//! Invariants:
//! - The algorithm is pinned per key, never taken from the token alone: with a shared secret,
//!   HS256 only; with a JWKS, each key's own algorithm (its `alg`, else RS256 for RSA keys,
//!   ES256/ES384 by curve, EdDSA for Ed25519), and symmetric (`oct`) or encryption keys are
//!   ignored. `none` is never accepted (the `jsonwebtoken` crate has no such algorithm).
//! - `exp`, `iss` and `aud` are required; `iss` must equal the issuer, `aud` must name one of
//!   the audiences; `exp` and `nbf` are checked with the configured leeway (default 0, as in
//!   FluxLit for Python).
//! - The JWKS is fetched on first use and again when a token names an unknown `kid`:
//!   single-flight (concurrent requests wait for one fetch) and at most once per
//!   [`JWKS_REFETCH_INTERVAL`], so tokens with made-up `kid`s cannot make the gateway hammer
//!   the provider.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::Uri;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub use crate::fetch::{FETCH_TIMEOUT, FetchError, MAX_DOCUMENT};

/// Shortest time between two JWKS fetches caused by unknown `kid`s (AUTH.md A.2: at most once
/// per 30 s).
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Where the token signing keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// A shared secret: HS256 tokens only (`jwt_hs256_secret`).
    Hs256(Vec<u8>),
    /// A JWKS document at this URL (`jwt_jwks_url`).
    Jwks(Uri),
    /// The issuer's OpenID discovery document (`{issuer}/.well-known/openid-configuration`,
    /// OpenID Connect Discovery 1.0 §4), whose `jwks_uri` names the JWKS; its `issuer` must
    /// equal the configured one (§4.3).
    Discovery,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hs256(_) => f.write_str("Hs256([REDACTED])"),
            Self::Jwks(u) => f.debug_tuple("Jwks").field(u).finish(),
            Self::Discovery => f.write_str("Discovery"),
        }
    }
}

/// What a valid token must be.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The exact `iss` (`jwt_issuer`).
    pub issuer: String,
    /// Accepted `aud` values; the token's `aud` must name one (`jwt_audience`).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds (`jwt_leeway_seconds`).
    pub leeway_seconds: u64,
    /// Where the keys come from.
    pub keys: KeySource,
}

/// Why a request was not let through. [`Denial::status`], [`Denial::detail`] and
/// [`Denial::www_authenticate`] give the response; [`Denial::reason`] says why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No `Authorization`, or not a bearer one.
    Missing,
    /// `Bearer ` with nothing after it.
    Empty,
    /// The token's `exp` (plus leeway) is past.
    Expired,
    /// Any other problem; the reason names the rule (never the token).
    Invalid(String),
    /// The signing keys could not be fetched at all.
    KeysUnavailable(String),
}

impl Denial {
    /// The response status: 401, or 503 for [`Denial::KeysUnavailable`].
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::KeysUnavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }

    /// The `detail` of the JSON body (`{"detail":"…"}`).
    pub fn detail(&self) -> &'static str {
        match self {
            Self::Missing => "Missing bearer token",
            Self::Empty => "Empty bearer token",
            Self::Expired => "Token expired",
            Self::Invalid(_) => "Invalid token",
            Self::KeysUnavailable(_) => "Authentication keys unavailable",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3): `Bearer` when no token was given,
    /// `Bearer error="invalid_token"` for a bad one, none on a 503.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::Missing | Self::Empty => Some("Bearer"),
            Self::Expired | Self::Invalid(_) => Some("Bearer error=\"invalid_token\""),
            Self::KeysUnavailable(_) => None,
        }
    }

    /// The JSON body, as FastAPI writes it: `{"detail":"…"}` with no spaces.
    pub fn body(&self) -> String {
        format!("{{\"detail\":\"{}\"}}", self.detail())
    }

    /// Why, for the log: which rule failed (no token content).
    pub fn reason(&self) -> &str {
        match self {
            Self::Missing => "no bearer Authorization field",
            Self::Empty => "empty bearer token",
            Self::Expired => "token expired",
            Self::Invalid(r) | Self::KeysUnavailable(r) => r,
        }
    }
}

/// The claims of an accepted token.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// A verification key and the one algorithm it verifies.
#[derive(Clone)]
struct PinnedKey {
    key: DecodingKey,
    alg: Algorithm,
}

/// The keys of the last JWKS fetched.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, PinnedKey>,
    /// Keys without a `kid`: used for tokens without one when there is exactly one key.
    anonymous: Vec<PinnedKey>,
    /// Whether a fetch has ever succeeded.
    loaded: bool,
}

impl KeySet {
    fn find(&self, kid: Option<&str>) -> Option<PinnedKey> {
        match kid {
            Some(k) => self.by_kid.get(k).cloned(),
            None => match (self.by_kid.len(), self.anonymous.as_slice()) {
                (0, [only]) => Some(only.clone()),
                (1, []) => self.by_kid.values().next().cloned(),
                _ => None,
            },
        }
    }
}

/// What the refresh lock guards: when the last fetch was tried, and the JWKS URL once found.
#[derive(Default)]
struct Refresh {
    last_attempt: Option<Instant>,
    jwks_url: Option<Uri>,
}

/// The remote keys: cached, refetched single-flight and rate-limited.
struct Remote {
    source: KeySource,
    issuer: String,
    keys: RwLock<KeySet>,
    /// Held while fetching: concurrent requests for an unknown `kid` wait for one fetch.
    refresh: tokio::sync::Mutex<Refresh>,
    /// Bumped on every fetch attempt, so a waiter can tell one happened while it waited.
    generation: AtomicU64,
    fetches: AtomicU64,
    interval: Duration,
}

enum Keys {
    Secret(PinnedKey),
    Remote(Box<Remote>),
}

/// Verifies bearer tokens (see the module documentation). Cheap to share (`Arc`).
pub struct JwtVerifier {
    validation: HashMap<Algorithm, Validation>,
    keys: Keys,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").finish_non_exhaustive()
    }
}

/// Building a verifier failed.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// The shared secret is empty.
    #[error("jwt_hs256_secret is empty")]
    EmptySecret,
    /// No issuer, or no audience.
    #[error("{0} is required for JWT checks")]
    Missing(&'static str),
    /// The issuer is not a URL discovery can be built from.
    #[error(
        "jwt_issuer {0:?} is not an absolute http(s) URL, so its discovery document cannot be fetched; set jwt_jwks_url"
    )]
    Issuer(String),
    /// The JWKS URL is not an absolute http(s) URL with a host.
    #[error("jwt_jwks_url {value:?} is not an absolute http:// or https:// URL with a host")]
    JwksUrl {
        /// The value given.
        value: String,
        /// Why it does not parse, when it does not.
        #[source]
        source: Option<http::uri::InvalidUri>,
    },
}

impl KeySource {
    /// [`KeySource::Jwks`] for `url` (`jwt_jwks_url`).
    ///
    /// # Errors
    /// [`JwtConfigError::JwksUrl`] unless `url` is an absolute `http://` or `https://` URL with
    /// a host.
    pub fn jwks_url(url: &str) -> Result<Self, JwtConfigError> {
        let bad = |source| JwtConfigError::JwksUrl {
            value: url.to_owned(),
            source,
        };
        let uri: Uri = url.parse().map_err(|e| bad(Some(e)))?;
        let http = matches!(uri.scheme_str(), Some("http" | "https"));
        if !http || uri.host().is_none_or(str::is_empty) {
            return Err(bad(None));
        }
        Ok(Self::Jwks(uri))
    }
}

/// The algorithms a JWKS key may verify (each key verifies exactly one of them, [`pin`]).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl JwtVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`JwtConfigError`] when the issuer or the audiences are missing, the secret is empty, or
    /// discovery is asked for an issuer that is not an http(s) URL.
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        Self::with_refetch_interval(config, JWKS_REFETCH_INTERVAL)
    }

    /// Like [`JwtVerifier::new`], with another shortest time between `kid`-driven refetches
    /// (default [`JWKS_REFETCH_INTERVAL`]).
    ///
    /// # Errors
    /// As [`JwtVerifier::new`].
    pub fn with_refetch_interval(
        config: JwtConfig,
        interval: Duration,
    ) -> Result<Self, JwtConfigError> {
        if config.issuer.is_empty() {
            return Err(JwtConfigError::Missing("jwt_issuer"));
        }
        if config.audiences.is_empty() {
            return Err(JwtConfigError::Missing("jwt_audience"));
        }
        let algs: Vec<Algorithm> = match &config.keys {
            KeySource::Hs256(_) => vec![Algorithm::HS256],
            _ => ASYMMETRIC.to_vec(),
        };
        let validation = algs
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.leeway = config.leeway_seconds;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[config.issuer.as_str()]);
                v.set_audience(&config.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        let keys = match config.keys {
            KeySource::Hs256(secret) => {
                if secret.is_empty() {
                    return Err(JwtConfigError::EmptySecret);
                }
                let key =
                    DecodingKey::from_secret(&secret).map_err(|_| JwtConfigError::EmptySecret)?;
                Keys::Secret(PinnedKey {
                    key,
                    alg: Algorithm::HS256,
                })
            }
            source => {
                let mut refresh = Refresh::default();
                match &source {
                    KeySource::Jwks(u) => refresh.jwks_url = Some(u.clone()),
                    _ => {
                        discovery_url(&config.issuer)
                            .ok_or_else(|| JwtConfigError::Issuer(config.issuer.clone()))?;
                    }
                }
                Keys::Remote(Box::new(Remote {
                    source,
                    issuer: config.issuer,
                    keys: RwLock::new(KeySet::default()),
                    refresh: tokio::sync::Mutex::new(refresh),
                    generation: AtomicU64::new(0),
                    fetches: AtomicU64::new(0),
                    interval,
                }))
            }
        };
        Ok(Self { validation, keys })
    }

    /// Fetches the signing keys now (discovery first when configured so) and keeps them, for
    /// diagnostics (`fluxlit doctor`) and warm-up. Returns what was found: the number of usable
    /// signing keys and where they came from (`HS256 shared secret` for a secret).
    ///
    /// # Errors
    /// Why the keys could not be fetched: the discovery document or JWKS unreachable, not
    /// JSON, naming another issuer, with a non-https `jwks_uri`, or with no usable key (the
    /// message names the URL, never a token).
    pub async fn fetch_keys_now(&self) -> Result<(usize, String), String> {
        let remote = match &self.keys {
            Keys::Secret(_) => return Ok((1, "HS256 shared secret".into())),
            Keys::Remote(r) => r,
        };
        let mut refresh = remote.refresh.lock().await;
        refresh.last_attempt = Some(Instant::now());
        remote.generation.fetch_add(1, Ordering::AcqRel);
        let set = remote.fetch(&mut refresh).await?;
        let n = set.by_kid.len() + set.anonymous.len();
        let from = refresh
            .jwks_url
            .as_ref()
            .map_or_else(|| "the JWKS".to_owned(), ToString::to_string);
        if n == 0 {
            return Err(format!(
                "{from} has no signing key FluxLit can use (RSA, P-256/P-384 or Ed25519 keys with a matching alg; encryption keys are skipped)"
            ));
        }
        if let Ok(mut k) = remote.keys.write() {
            *k = set;
        }
        Ok((n, from))
    }

    /// How many times the JWKS (or discovery document) has been fetched.
    pub fn jwks_fetches(&self) -> u64 {
        match &self.keys {
            Keys::Secret(_) => 0,
            Keys::Remote(r) => r.fetches.load(Ordering::Relaxed),
        }
    }

    /// Checks a request's `Authorization` field value (the first one, raw bytes).
    ///
    /// # Errors
    /// The [`Denial`] to answer with.
    pub async fn verify(&self, authorization: Option<&[u8]>) -> Result<Claims, Denial> {
        let value = authorization.ok_or(Denial::Missing)?;
        let token = match value.get(..7) {
            Some(p) if p.eq_ignore_ascii_case(b"bearer ") => python_strip(&value[7..]),
            _ => return Err(Denial::Missing),
        };
        if token.is_empty() {
            return Err(Denial::Empty);
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| Denial::Invalid("the token is not ASCII".into()))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Denial::Invalid(format!("unreadable token header: {e}")))?;
        let pinned = match &self.keys {
            Keys::Secret(k) => k.clone(),
            Keys::Remote(r) => r.key_for(header.kid.as_deref()).await?,
        };
        if header.alg != pinned.alg {
            return Err(Denial::Invalid(format!(
                "algorithm {:?} is not the key's ({:?})",
                header.alg, pinned.alg
            )));
        }
        let validation = self
            .validation
            .get(&pinned.alg)
            .ok_or_else(|| Denial::Invalid(format!("algorithm {:?} not allowed", pinned.alg)))?;
        match jsonwebtoken::decode::<Claims>(token, &pinned.key, validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(Denial::Expired),
                kind => Err(Denial::Invalid(format!("{kind:?}"))),
            },
        }
    }
}

/// `bytes` without leading and trailing whitespace as FluxLit for Python saw it: the field
/// decoded as Latin-1 (Starlette) and `str.strip()`, which also strips the C0 separators
/// `\x1c`–`\x1f`, NEL (`\x85`) and NO-BREAK SPACE (`\xa0`). So `Bearer \xa0` is an empty
/// token there and here.
fn python_strip(bytes: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b'\t'..=b'\r' | 0x1c..=0x1f | b' ' | 0x85 | 0xa0);
    let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !space(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// `{issuer}/.well-known/openid-configuration`, when the issuer is an http(s) URL.
fn discovery_url(issuer: &str) -> Option<Uri> {
    let base = issuer.trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return None;
    }
    format!("{base}/.well-known/openid-configuration")
        .parse()
        .ok()
}

/// Whether a URL named by the discovery document at `discovery` may be fetched: https, or
/// plain http when the issuer itself is plain http on a loopback host (a local test provider);
/// a remote document must not send the gateway to plain http (AUTH.md A.4 rule 10).
fn discovered_url_allowed(discovery: &Uri, url: &Uri) -> bool {
    match url.scheme_str() {
        Some("https") => url.host().is_some_and(|h| !h.is_empty()),
        Some("http") => {
            let loopback = |u: &Uri| {
                u.host().is_some_and(|h| {
                    h.eq_ignore_ascii_case("localhost")
                        || h.trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                })
            };
            discovery.scheme_str() == Some("http") && loopback(discovery) && loopback(url)
        }
        _ => false,
    }
}

impl Remote {
    fn lookup(&self, kid: Option<&str>) -> Option<PinnedKey> {
        self.keys.read().ok().and_then(|k| k.find(kid))
    }

    fn loaded(&self) -> bool {
        self.keys.read().is_ok_and(|k| k.loaded)
    }

    /// The key for `kid`, fetching the JWKS when it is unknown (single-flight, rate-limited).
    async fn key_for(&self, kid: Option<&str>) -> Result<PinnedKey, Denial> {
        if let Some(k) = self.lookup(kid) {
            return Ok(k);
        }
        let seen = self.generation.load(Ordering::Acquire);
        let mut refresh = self.refresh.lock().await;
        let unknown = || match kid {
            Some(k) => Denial::Invalid(format!("no key with kid {k:?} in the JWKS")),
            None => Denial::Invalid("no kid, and the JWKS has not exactly one key".into()),
        };
        // Someone fetched while this request waited: use what they found.
        if let Some(k) = self.lookup(kid) {
            return Ok(k);
        }
        if self.generation.load(Ordering::Acquire) != seen {
            return self
                .lookup(kid)
                .ok_or_else(|| self.unavailable_or(unknown()));
        }
        if refresh
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.interval)
        {
            return Err(self.unavailable_or(unknown()));
        }
        refresh.last_attempt = Some(Instant::now());
        self.generation.fetch_add(1, Ordering::AcqRel);
        match self.fetch(&mut refresh).await {
            Ok(set) => {
                tracing::info!(
                    keys = set.by_kid.len() + set.anonymous.len(),
                    "fetched the JWT signing keys (JWKS)"
                );
                if let Ok(mut k) = self.keys.write() {
                    *k = set;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetching the JWT signing keys (JWKS) failed");
                if !self.loaded() {
                    return Err(Denial::KeysUnavailable(e.to_string()));
                }
            }
        }
        self.lookup(kid)
            .ok_or_else(|| self.unavailable_or(unknown()))
    }

    fn unavailable_or(&self, denial: Denial) -> Denial {
        if self.loaded() {
            denial
        } else {
            Denial::KeysUnavailable("the JWKS has not been fetched successfully yet".into())
        }
    }

    /// Fetches the JWKS (finding its URL by discovery first when needed).
    async fn fetch(&self, refresh: &mut Refresh) -> Result<KeySet, String> {
        let url = match (&refresh.jwks_url, &self.source) {
            (Some(u), _) => u.clone(),
            (None, _) => {
                let discovery = discovery_url(&self.issuer)
                    .ok_or_else(|| format!("jwt_issuer {:?} is not a URL", self.issuer))?;
                self.fetches.fetch_add(1, Ordering::Relaxed);
                let doc = crate::fetch::get_json(&discovery)
                    .await
                    .map_err(|e| e.to_string())?;
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
                    return Err(format!(
                        "{discovery} names issuer {:?}, not jwt_issuer {:?} (OpenID Connect Discovery §4.3)",
                        doc.get("issuer"),
                        self.issuer
                    ));
                }
                let uri: Uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("{discovery} has no usable jwks_uri"))?;
                if !discovered_url_allowed(&discovery, &uri) {
                    return Err(format!(
                        "{discovery} names jwks_uri {uri}, which is not https (plain http is accepted only from a loopback issuer)"
                    ));
                }
                refresh.jwks_url = Some(uri.clone());
                uri
            }
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let doc = crate::fetch::get_json(&url)
            .await
            .map_err(|e| e.to_string())?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| format!("{url} is not a JWKS (no \"keys\" array)"))?;
        let mut set = KeySet {
            loaded: true,
            ..KeySet::default()
        };
        for value in keys {
            // A key this gateway cannot use is skipped; the others still work.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
                continue;
            };
            let Some(pinned) = pin(&jwk) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, pinned);
                }
                None => set.anonymous.push(pinned),
            }
        }
        Ok(set)
    }
}

/// The key and its one algorithm, for a signing key of the JWKS; `None` for symmetric and
/// encryption keys and for algorithms that do not fit the key type.
fn pin(jwk: &Jwk) -> Option<PinnedKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(a)) => match a {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            _ => return None,
        },
        (AlgorithmParameters::EllipticCurve(p), a) => match (&p.curve, a) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
            _ => return None,
        },
        (AlgorithmParameters::OctetKeyPair(p), a) => match (&p.curve, a) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
            _ => return None,
        },
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PinnedKey { key, alg })
}

/// A shared verifier.
pub type SharedVerifier = Arc<JwtVerifier>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn denials_are_the_reference_table() {
        for (d, status, body, www) in [
            (
                Denial::Missing,
                401,
                r#"{"detail":"Missing bearer token"}"#,
                Some("Bearer"),
            ),
            (
                Denial::Empty,
                401,
                r#"{"detail":"Empty bearer token"}"#,
                Some("Bearer"),
            ),
            (
                Denial::Expired,
                401,
                r#"{"detail":"Token expired"}"#,
                Some(r#"Bearer error="invalid_token""#),
            ),
            (
                Denial::Invalid("x".into()),
                401,
                r#"{"detail":"Invalid token"}"#,
                Some(r#"Bearer error="invalid_token""#),
            ),
            (
                Denial::KeysUnavailable("x".into()),
                503,
                r#"{"detail":"Authentication keys unavailable"}"#,
                None,
            ),
        ] {
            assert_eq!(d.status().as_u16(), status);
            assert_eq!(d.body(), body);
            assert_eq!(d.www_authenticate(), www);
        }
    }

    fn hs() -> JwtVerifier {
        JwtVerifier::new(JwtConfig {
            issuer: "https://issuer.example".into(),
            audiences: vec!["api".into()],
            leeway_seconds: 0,
            keys: KeySource::Hs256(b"0123456789abcdef0123456789abcdef".to_vec()),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn authorization_field_forms() {
        let v = hs();
        for (field, want) in [
            (None, Denial::Missing),
            (Some(&b"Basic abc"[..]), Denial::Missing),
            (Some(b"Bearer"), Denial::Missing),
            (Some(b"Bearerx abc"), Denial::Missing),
            (Some(b"Bearer "), Denial::Empty),
            (Some(b"bEaReR    "), Denial::Empty),
            (Some(b"Bearer \xa0\x85\x1f"), Denial::Empty),
        ] {
            assert_eq!(v.verify(field).await, Err(want), "{field:?}");
        }
        for field in [&b"Bearer abc"[..], b"BEARER a.b.c", b"bearer \xff"] {
            assert!(
                matches!(v.verify(Some(field)).await, Err(Denial::Invalid(_))),
                "{field:?}"
            );
        }
    }

    #[test]
    fn configuration_is_checked() {
        let base = JwtConfig {
            issuer: "https://issuer.example".into(),
            audiences: vec!["api".into()],
            leeway_seconds: 0,
            keys: KeySource::Discovery,
        };
        assert!(JwtVerifier::new(base.clone()).is_ok());
        let mut c = base.clone();
        c.issuer = "issuer-without-scheme".into();
        assert!(matches!(
            JwtVerifier::new(c),
            Err(JwtConfigError::Issuer(_))
        ));
        let mut c = base.clone();
        c.audiences.clear();
        assert!(matches!(
            JwtVerifier::new(c),
            Err(JwtConfigError::Missing("jwt_audience"))
        ));
        let mut c = base;
        c.keys = KeySource::Hs256(Vec::new());
        assert!(matches!(
            JwtVerifier::new(c),
            Err(JwtConfigError::EmptySecret)
        ));
        assert_eq!(
            discovery_url("https://idp.example/realms/x/").map(|u| u.to_string()),
            Some("https://idp.example/realms/x/.well-known/openid-configuration".into())
        );
        assert!(KeySource::jwks_url("https://idp.example/certs").is_ok());
        for bad in ["ftp://idp.example/certs", "/certs", "https://", "not a url"] {
            assert!(
                matches!(
                    KeySource::jwks_url(bad),
                    Err(JwtConfigError::JwksUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn discovered_jwks_uri_must_be_https_unless_the_issuer_is_local() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let remote = u("https://idp.example/.well-known/openid-configuration");
        let local = u("http://127.0.0.1:4011/.well-known/openid-configuration");
        assert!(discovered_url_allowed(
            &remote,
            &u("https://keys.example/jwks")
        ));
        assert!(!discovered_url_allowed(
            &remote,
            &u("http://keys.example/jwks")
        ));
        assert!(!discovered_url_allowed(
            &remote,
            &u("http://127.0.0.1/jwks")
        ));
        assert!(discovered_url_allowed(
            &local,
            &u("http://127.0.0.1:4011/jwks")
        ));
        assert!(discovered_url_allowed(&local, &u("http://[::1]:4011/jwks")));
        assert!(!discovered_url_allowed(&local, &u("http://10.0.0.1/jwks")));
        assert!(!discovered_url_allowed(&local, &u("ftp://127.0.0.1/jwks")));
    }
}
