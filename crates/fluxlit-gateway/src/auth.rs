//! Authentication at the gateway: `auth_mode = forward` (docs/auth.md).
//!
//! A front proxy (oauth2-proxy, Pomerium, a cloud load balancer) authenticates the user and
//! sets identity headers; the gateway believes them only from its TCP peer when that peer is in
//! `auth_forward_trusted_cidrs` (reference §8.4, `TrustedProxyUser`):
//! 1. a peer outside the list gets 403 `{"detail":"Untrusted client for forward-auth"}`;
//! 2. with `auth_forward_require_https`, a request the proxy did not receive over https (its
//!    `X-Forwarded-Proto`) gets 403 `{"detail":"HTTPS required for forward-auth"}`;
//! 3. a missing or blank `auth_forward_user_header` gets 401
//!    `{"detail":"Missing trusted user header"}`;
//! 4. otherwise the `auth_forward_headers` the proxy set (the user header always among them)
//!    are passed to the API and to Streamlit (HTTP and the WebSocket upgrade), and every other
//!    identity header is stripped, as in every mode.
//!
//! Public, whoever asks: the gateway's health endpoints (`{api}/healthz`, `{api}/readyz`) and
//! Streamlit's `/_stcore/health` under the root path, so probes need no identity.
//!
//! The configured names are added to the identity headers the gateway strips from every
//! request (`HeaderPolicy`), so they never pass from a peer the gateway does not trust, whatever
//! the mode. Only the hyper engine authenticates: with forward auth on, UI requests have the
//! `authenticate` reason of `decide::HyperOnly`, so the HTTP/1.1 fast path hands them over
//! (`decide::fast_forward`).

use std::net::IpAddr;

use fluxlit_config::IpNet;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The forward-auth settings.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    trusted: Vec<IpNet>,
    user_header: HeaderName,
    /// The headers passed on from a trusted proxy, the user header first.
    headers: Vec<HeaderName>,
    require_https: bool,
}

/// What forward auth says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Refused: the status and the `detail` of its JSON body.
    Deny(StatusCode, &'static str),
    /// Let through with these identity fields (names and the proxy's values).
    Identity(Vec<(HeaderName, HeaderValue)>),
}

impl ForwardAuth {
    /// Forward auth trusting `trusted` (the front proxy as the TCP peer), requiring a
    /// non-blank `user_header`, passing on `headers` (and the user header), and with
    /// `require_https` the proxy's `X-Forwarded-Proto: https`.
    pub fn new(
        trusted: Vec<IpNet>,
        user_header: HeaderName,
        headers: Vec<HeaderName>,
        require_https: bool,
    ) -> Self {
        let mut all = vec![user_header.clone()];
        for h in headers {
            if !all.contains(&h) {
                all.push(h);
            }
        }
        Self {
            trusted,
            user_header,
            headers: all,
            require_https,
        }
    }

    /// The identity header names forward auth passes on (to strip from everybody else).
    pub fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter()
    }

    /// Whether `peer` (the TCP peer) is the front proxy.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(peer))
    }

    /// The identity fields of `headers` (before the gateway strips identity headers), when the
    /// peer is trusted; empty otherwise.
    pub(crate) fn capture(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Vec<(HeaderName, HeaderValue)> {
        if !self.trusts(peer) {
            return Vec::new();
        }
        self.headers
            .iter()
            .filter_map(|n| headers.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }

    /// The verdict for a request from `peer`, received by the proxy over https or not (as the
    /// trusted forwarded fields say), with the `captured` identity fields.
    pub(crate) fn verdict(
        &self,
        peer: IpAddr,
        https: bool,
        captured: Vec<(HeaderName, HeaderValue)>,
    ) -> Verdict {
        if !self.trusts(peer) {
            return Verdict::Deny(StatusCode::FORBIDDEN, "Untrusted client for forward-auth");
        }
        if self.require_https && !https {
            return Verdict::Deny(StatusCode::FORBIDDEN, "HTTPS required for forward-auth");
        }
        let user = captured
            .iter()
            .find(|(n, _)| *n == self.user_header)
            .map(|(_, v)| v.as_bytes());
        if user.is_none_or(|u| u.iter().all(u8::is_ascii_whitespace)) {
            return Verdict::Deny(StatusCode::UNAUTHORIZED, "Missing trusted user header");
        }
        Verdict::Identity(captured)
    }
}

/// Whether `path` (the path the UI upstream gets, root path kept) is Streamlit's health check.
/// `auth_mode = oidc`: the backend-for-frontend ([`fluxlit_auth::bff`]) and which requests it
/// guards. The gateway answers the routes under `{root}{api}/auth/`, authenticates every other
/// request (health endpoints and [`OidcAuth::public_paths`] excepted) by its session cookie,
/// sets the identity fields on the API and Streamlit hops, removes its own cookies from what
/// it forwards, and closes a session's WebSocket tunnels when the session ends. Like forward
/// auth, it runs on the hyper engine only (`decide::HyperOnly::authenticate`).
#[derive(Clone)]
pub struct OidcAuth {
    pub(crate) bff: std::sync::Arc<fluxlit_auth::bff::Bff>,
    pub(crate) required: bool,
    public: Option<PublicPaths>,
}

/// A predicate on `(method, path under the root path)`: true for paths anybody may request.
pub type PublicPaths = std::sync::Arc<dyn Fn(&http::Method, &str) -> bool + Send + Sync>;

impl std::fmt::Debug for OidcAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuth")
            .field("bff", &self.bff)
            .field("required", &self.required)
            .field("public_paths", &self.public.is_some())
            .finish()
    }
}

impl OidcAuth {
    /// Login required everywhere but the health endpoints.
    pub fn new(bff: std::sync::Arc<fluxlit_auth::bff::Bff>) -> Self {
        Self {
            bff,
            required: true,
            public: None,
        }
    }

    /// `auth_required`: with `false`, requests without a session go on anonymously (identity
    /// fields only when logged in).
    pub fn required(mut self, on: bool) -> Self {
        self.required = on;
        self
    }

    /// `auth_public_paths`: more paths anybody may request (the predicate sees the method
    /// and the path under the root path).
    pub fn public_paths(mut self, public: PublicPaths) -> Self {
        self.public = Some(public);
        self
    }

    pub(crate) fn is_public(&self, method: &http::Method, path_under_root: &str) -> bool {
        self.public
            .as_ref()
            .is_some_and(|p| p(method, path_under_root))
    }
}

pub(crate) fn is_public_ui_path(path: &str, root: &str) -> bool {
    path.strip_prefix(root) == Some("/_stcore/health")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fa(https: bool) -> ForwardAuth {
        ForwardAuth::new(
            vec![fluxlit_config::parse_ip_net("10.0.0.0/24").unwrap()],
            HeaderName::from_static("x-forwarded-user"),
            vec![
                HeaderName::from_static("x-forwarded-email"),
                HeaderName::from_static("x-forwarded-user"),
            ],
            https,
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_reference_table() {
        let proxy: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.1.7".parse().unwrap();
        let h = headers(&[
            ("x-forwarded-user", "ada"),
            ("x-forwarded-email", "ada@example.com"),
            ("x-remote-user", "mallory"),
        ]);
        let a = fa(false);
        assert_eq!(
            a.verdict(other, true, a.capture(other, &h)),
            Verdict::Deny(StatusCode::FORBIDDEN, "Untrusted client for forward-auth")
        );
        assert!(a.capture(other, &h).is_empty());
        assert_eq!(
            a.verdict(proxy, false, a.capture(proxy, &h)),
            Verdict::Identity(vec![
                (
                    HeaderName::from_static("x-forwarded-user"),
                    HeaderValue::from_static("ada")
                ),
                (
                    HeaderName::from_static("x-forwarded-email"),
                    HeaderValue::from_static("ada@example.com")
                ),
            ]),
            "only the configured headers, the user first; X-Remote-User is not one"
        );
        let blank = headers(&[("x-forwarded-user", "  "), ("x-forwarded-email", "a@b")]);
        assert_eq!(
            a.verdict(proxy, false, a.capture(proxy, &blank)),
            Verdict::Deny(StatusCode::UNAUTHORIZED, "Missing trusted user header")
        );
        let s = fa(true);
        assert_eq!(
            s.verdict(proxy, false, s.capture(proxy, &h)),
            Verdict::Deny(StatusCode::FORBIDDEN, "HTTPS required for forward-auth")
        );
        assert!(matches!(
            s.verdict(proxy, true, s.capture(proxy, &h)),
            Verdict::Identity(_)
        ));
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        assert!(
            a.trusts(mapped),
            "IPv4-mapped IPv6 peers match IPv4 networks"
        );
    }

    #[test]
    fn public_ui_paths() {
        assert!(is_public_ui_path("/_stcore/health", ""));
        assert!(is_public_ui_path("/myapp/_stcore/health", "/myapp"));
        assert!(!is_public_ui_path("/_stcore/stream", ""));
        assert!(!is_public_ui_path("/_stcore/health/x", ""));
        assert!(!is_public_ui_path("/other/_stcore/health", "/myapp"));
    }
}
