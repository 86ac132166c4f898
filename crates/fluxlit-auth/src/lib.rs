//! FluxLit's authentication building blocks.
//!
//! For now this crate owns the rules about *which headers carry credentials or identity*, and
//! which client headers the UI (Streamlit) receives; the gateway applies them on every hop. JWT
//! validation and the OIDC backend-for-frontend will live here too.
//!
//! Invariants:
//! - [`CREDENTIAL_HEADERS`] values are marked sensitive before anything can log them
//!   ([`mark_sensitive`]); `http`'s `Debug` then prints `Sensitive` instead of the value and
//!   HTTP/2 never adds them to the HPACK dynamic table (RFC 7541 §7.1.3).
//!
//! ```
//! use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
//! fluxlit_auth::mark_sensitive(&mut headers);
//! assert!(headers[AUTHORIZATION].is_sensitive());
//! assert!(!format!("{headers:?}").contains("abc"));
//! ```

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION, SET_COOKIE};

/// Headers whose values are credentials: never logged, never forwarded by an allow-list option.
pub const CREDENTIAL_HEADERS: [HeaderName; 4] =
    [AUTHORIZATION, COOKIE, SET_COOKIE, PROXY_AUTHORIZATION];

/// Whether `name` carries a credential (see [`CREDENTIAL_HEADERS`]).
pub fn is_credential_header(name: &HeaderName) -> bool {
    CREDENTIAL_HEADERS.contains(name)
}

/// Marks every value of every [`CREDENTIAL_HEADERS`] entry as sensitive, in place.
pub fn mark_sensitive(headers: &mut HeaderMap) {
    for name in &CREDENTIAL_HEADERS {
        if let http::header::Entry::Occupied(mut e) = headers.entry(name) {
            for v in e.iter_mut() {
                v.set_sensitive(true);
            }
        }
    }
}

/// Identity headers set by authenticating proxies (oauth2-proxy, Pomerium, cloud load
/// balancers) and read by apps such as Streamlit's `server.trustedUserHeaders`. A client must
/// never be able to send them: the gateway strips them from every request, on every hop
/// (HTTP and the WebSocket upgrade), before anything else sees the request.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-remote-user",
    "x-remote-email",
    "x-remote-groups",
    "remote-user",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "x-ms-client-principal",
    "x-ms-client-principal-id",
    "x-ms-client-principal-name",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-amzn-oidc-data",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-accesstoken",
];

/// Client headers the UI upstream (Streamlit) receives by default: what browsers send and
/// Streamlit uses (cookies for XSRF and `st.login`, `Origin` for the WebSocket check, the
/// upload's `X-Xsrftoken`, caching and range headers, WebSocket handshake fields) plus
/// tracing ids. Everything else is dropped on the UI hop unless named in
/// `gateway_forward_client_headers_to_streamlit`.
pub const UI_BASELINE_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "origin",
    "referer",
    "user-agent",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "pragma",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "content-disposition",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-fetch-user",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "sec-purpose",
    "purpose",
    "priority",
    "upgrade-insecure-requests",
    "dnt",
    "x-xsrftoken",
    "x-requested-with",
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
];

/// A header name that `gateway_forward_client_headers_to_streamlit` may list: lower-case
/// letters, digits and `-`, at most 64 characters, starting with a letter or digit.
pub fn valid_forward_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The header rules of one gateway: identity headers to strip everywhere, and the UI hop's
/// allow-list.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    identity: Vec<HeaderName>,
    ui_allowed: std::collections::HashSet<HeaderName>,
    /// The same names as text, for lookups by raw name without building a `HeaderName`.
    ui_allowed_names: std::collections::HashSet<Box<str>>,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl HeaderPolicy {
    /// Rules with extra identity headers to strip (for example the names configured in
    /// Streamlit's `server.trustedUserHeaders`) and extra client headers for the UI. Extra UI
    /// names that are credentials, identity headers or invalid are ignored (`fluxlit config`
    /// warns about them).
    pub fn new(extra_identity: &[String], extra_ui: &[String]) -> Self {
        let identity: Vec<HeaderName> = IDENTITY_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .chain(extra_identity.iter().filter_map(|n| {
                HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok()
            }))
            .collect();
        let mut ui_allowed: std::collections::HashSet<HeaderName> = UI_BASELINE_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        for name in extra_ui {
            let lower = name.trim().to_ascii_lowercase();
            if !valid_forward_name(&lower) {
                continue;
            }
            let Ok(h) = HeaderName::from_bytes(lower.as_bytes()) else {
                continue;
            };
            if is_credential_header(&h) || identity.contains(&h) {
                continue;
            }
            ui_allowed.insert(h);
        }
        let ui_allowed_names = ui_allowed.iter().map(|n| n.as_str().into()).collect();
        Self {
            identity,
            ui_allowed,
            ui_allowed_names,
        }
    }

    /// Removes identity headers (every hop, first thing).
    pub fn strip_identity(&self, headers: &mut HeaderMap) {
        for name in &self.identity {
            headers.remove(name);
        }
    }

    /// Whether a header named `name` (any letter case) is an identity header that
    /// [`HeaderPolicy::strip_identity`] removes. For callers that see raw header names (the
    /// gateway's HTTP/1.1 forwarding path) rather than a `HeaderMap`.
    pub fn is_identity(&self, name: &[u8]) -> bool {
        self.identity
            .iter()
            .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// Whether [`HeaderPolicy::retain_for_ui`] keeps a header named `name` (any letter case).
    pub fn ui_allows(&self, name: &[u8]) -> bool {
        let mut lower = [0u8; 64];
        match lower.get_mut(..name.len()) {
            // Allowed names are at most 64 bytes (`valid_forward_name`, the baseline list).
            None => false,
            Some(dst) => {
                for (d, c) in dst.iter_mut().zip(name) {
                    *d = c.to_ascii_lowercase();
                }
                std::str::from_utf8(dst).is_ok_and(|n| self.ui_allowed_names.contains(n))
            }
        }
    }

    /// Keeps only the UI hop's allowed client headers.
    pub fn retain_for_ui(&self, headers: &mut HeaderMap) {
        let drop: Vec<HeaderName> = headers
            .keys()
            .filter(|k| !self.ui_allowed.contains(*k))
            .cloned()
            .collect();
        for name in drop {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn identity_headers_are_stripped_and_credentials_never_allowed_for_the_ui() {
        let p = HeaderPolicy::new(
            &["X-Streamlit-User".into()],
            &[
                "x-tenant".into(),
                "authorization".into(),
                "x-remote-user".into(),
                "Bad Name".into(),
            ],
        );
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-user", "admin"),
            ("x-streamlit-user", "admin"),
            ("x-tenant", "t1"),
            ("authorization", "Bearer x"),
            ("cookie", "a=1"),
            ("x-other", "o"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        p.strip_identity(&mut h);
        assert!(h.get("x-forwarded-user").is_none() && h.get("x-streamlit-user").is_none());
        p.retain_for_ui(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["cookie", "x-tenant"]);
    }

    #[test]
    fn raw_name_predicates_agree_with_the_header_map_rules() {
        let p = HeaderPolicy::new(&["X-Streamlit-User".into()], &["x-tenant".into()]);
        let names = [
            "X-Forwarded-User",
            "x-streamlit-user",
            "X-Tenant",
            "Cookie",
            "Authorization",
            "x-other",
            "Sec-CH-UA",
            "x-request-id",
            "Host",
        ];
        for name in names {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
            let mut stripped = h.clone();
            p.strip_identity(&mut stripped);
            assert_eq!(
                p.is_identity(name.as_bytes()),
                stripped.is_empty(),
                "{name}"
            );
            let mut kept = h.clone();
            p.retain_for_ui(&mut kept);
            assert_eq!(p.ui_allows(name.as_bytes()), !kept.is_empty(), "{name}");
        }
        assert!(!p.ui_allows(&[b'a'; 65]));
    }

    #[test]
    fn forward_names() {
        assert!(valid_forward_name("x-tenant-id"));
        assert!(!valid_forward_name("X-Tenant"));
        assert!(!valid_forward_name("-x"));
        assert!(!valid_forward_name(""));
        assert!(!valid_forward_name(&"a".repeat(65)));
    }

    #[test]
    fn marks_all_repeated_values() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        h.insert("x-other", HeaderValue::from_static("plain"));
        mark_sensitive(&mut h);
        assert!(h.get_all(SET_COOKIE).iter().all(HeaderValue::is_sensitive));
        assert!(!h["x-other"].is_sensitive());
        assert!(is_credential_header(&COOKIE));
        assert!(!is_credential_header(&HeaderName::from_static("x-other")));
    }
}
