//! FluxLit's authentication building blocks.
//!
//! For now this crate owns the rules about *which headers carry credentials or identity*, and
//! which client headers the UI (Streamlit) receives; the gateway applies them on every hop. It
//! also checks bearer JWTs for the API ([`jwt`], `auth_mode = jwt`). The OIDC
//! backend-for-frontend will live here too; its first parts are here: sealed, chunked cookies
//! with rotating secrets ([`seal`]) and the validation of return paths ([`redirect`]), which
//! the login and logout routes use. The names themselves, with
//! the reason for each, are the header catalogue's (`fluxlit_headers::CATALOGUE`): this crate's
//! lists are compile-time views of it.
//!
//! Invariants:
//! - [`CREDENTIAL_HEADERS`] values are marked sensitive before anything can log them
//!   ([`mark_sensitive`]); `http`'s `Debug` then prints `Sensitive` instead of the value and
//!   HTTP/2 never adds them to the HPACK dynamic table (RFC 7541 §7.1.3).
//! - Identity headers are recognised by their *normalized name*: ASCII lower case, with `_`
//!   read as `-` ([`name_eq_normalized`]). Field names are case-insensitive (RFC 9110 §5.1),
//!   and the CGI mapping of request fields to `HTTP_*` variables (RFC 3875 §4.1.18), which
//!   WSGI environs and CGI-style frameworks use, upper-cases the name and turns `-` into `_`:
//!   `X-Remote-User` and `X_Remote_User` both arrive as `HTTP_X_REMOTE_USER`. A name is an
//!   identity header when its normalized form is one of [`IDENTITY_HEADERS`], starts with one
//!   of [`IDENTITY_HEADER_PREFIXES`], or is one of the extra names given to
//!   [`HeaderPolicy::new`]. [`HeaderPolicy::strip_identity`] (on a `HeaderMap`) and
//!   [`HeaderPolicy::is_identity`] (on a raw name) apply exactly the same rule, and the UI
//!   hop's allow-list never contains an identity header.
//!
//! ```
//! use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
//! fluxlit_auth::mark_sensitive(&mut headers);
//! assert!(headers[AUTHORIZATION].is_sensitive());
//! assert!(!format!("{headers:?}").contains("abc"));
//!
//! let policy = fluxlit_auth::HeaderPolicy::default();
//! for spoofed in ["X-Remote-User", "x_remote_user", "X-Authentik-Username", "Cf_Access_Jwt_Assertion"] {
//!     assert!(policy.is_identity(spoofed.as_bytes()), "{spoofed}");
//! }
//! assert!(!policy.is_identity(b"X-Request-ID"));
//! ```

pub mod assertion;
pub mod bff;
pub mod fetch;
pub mod jwt;
pub mod oidc;
pub mod redirect;
pub mod seal;
pub mod session;

use fluxlit_headers::Class;
use http::HeaderMap;
use http::header::HeaderName;

pub use fluxlit_headers::{name_eq_normalized, name_starts_with_normalized, normalize_header_name};

/// Headers whose values are credentials: never logged, never forwarded by an allow-list option.
/// The [`Class::Credential`] view of the header catalogue (`fluxlit_headers::CATALOGUE`):
/// `Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`.
pub const CREDENTIAL_HEADERS: [HeaderName; 4] = fluxlit_headers::header_names(Class::Credential);

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

/// [`IDENTITY_HEADERS`] as an array (the catalogue's count, checked at compile time).
const IDENTITY_NAMES: [&str; 24] = fluxlit_headers::names(Class::Identity);

/// Identity headers set by authenticating proxies and platforms, and read by apps such as
/// Streamlit's `server.trustedUserHeaders`, in normalized form (lower case, `-`). A client
/// must never be able to send them: the gateway strips them from every request, on every hop
/// (HTTP and the WebSocket upgrade), before anything else sees the request.
///
/// The [`Class::Identity`] view of the header catalogue (`fluxlit_headers::CATALOGUE`, which
/// names the product setting each one: oauth2-proxy, Authelia, Azure Easy Auth, Google IAP,
/// AWS ALB, Tailscale, Kubernetes, …). These are the exact names; whole families are matched
/// by [`IDENTITY_HEADER_PREFIXES`] (an exact name here is never also covered by a prefix).
/// Matching is by normalized name ([`name_eq_normalized`]): case-insensitive (RFC 9110 §5.1)
/// and with `_` equal to `-`, because the CGI `HTTP_*` mapping (RFC 3875 §4.1.18), which WSGI
/// environs and CGI-style frameworks use, gives `X-Remote-User` and `X_Remote_User` the same
/// variable.
pub const IDENTITY_HEADERS: &[&str] = &IDENTITY_NAMES;

/// [`IDENTITY_HEADER_PREFIXES`] as an array (the catalogue's count, checked at compile time).
const IDENTITY_FAMILIES: [&str; 9] = fluxlit_headers::names(Class::IdentityFamily);

/// Prefixes of identity header families, in normalized form (lower case, `-`, ending in
/// `-`): a header whose normalized name starts with one of them is an identity header, like
/// the exact [`IDENTITY_HEADERS`]. The [`Class::IdentityFamily`] view of the header catalogue
/// (`x-auth-request-` for oauth2-proxy, `x-pomerium-`, `x-authentik-`, `cf-access-` for
/// Cloudflare Access, `tailscale-user-`, `x-webauth-`, `x-vouch-`, `x-ms-token-`,
/// `x-remote-extra-`; the catalogue gives each family's source).
pub const IDENTITY_HEADER_PREFIXES: &[&str] = &IDENTITY_FAMILIES;

/// Whether the raw header name `name` is a built-in identity header: its normalized form is
/// one of [`IDENTITY_HEADERS`] or starts with one of [`IDENTITY_HEADER_PREFIXES`]. Allocation
/// free. [`HeaderPolicy::is_identity`] adds the configured extra names.
pub fn is_builtin_identity(name: &[u8]) -> bool {
    IDENTITY_HEADERS.iter().any(|n| name_eq_normalized(name, n))
        || IDENTITY_HEADER_PREFIXES
            .iter()
            .any(|p| name_starts_with_normalized(name, p))
}

/// [`UI_BASELINE_HEADERS`] as an array (the catalogue's count, checked at compile time).
const UI_BASELINE: [&str; 44] = fluxlit_headers::names(Class::UiBaseline);

/// Client headers the UI upstream (Streamlit) receives by default: what browsers send and
/// Streamlit uses (cookies for XSRF and `st.login`, `Origin` for the WebSocket check, the
/// upload's `X-Xsrftoken`, caching and range headers, WebSocket handshake fields) plus
/// tracing ids. Everything else is dropped on the UI hop unless named in
/// `gateway_forward_client_headers_to_streamlit`. The [`Class::UiBaseline`] view of the header
/// catalogue, which holds no identity, hop-by-hop or forwarded name and no credential but
/// `Cookie`.
pub const UI_BASELINE_HEADERS: &[&str] = &UI_BASELINE;

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
    /// Extra identity names (Streamlit's `server.trustedUserHeaders`), normalized and not
    /// already covered by [`is_builtin_identity`].
    extra_identity: Vec<Box<str>>,
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
    /// Streamlit's `server.trustedUserHeaders`) and extra client headers for the UI.
    ///
    /// Extra identity names are normalized ([`normalize_header_name`]: trimmed, lower case,
    /// `_` as `-`) and then match like the built-in ones, in any letter case and with `_` or
    /// `-`; names that are not valid header names are ignored. Extra UI names that are
    /// credentials, identity headers (by the same normalized rule, built-in or extra) or
    /// invalid ([`valid_forward_name`]) are ignored (`fluxlit config` warns about them).
    pub fn new(extra_identity: &[String], extra_ui: &[String]) -> Self {
        let mut extras: Vec<Box<str>> = Vec::new();
        for name in extra_identity {
            let normalized = normalize_header_name(name);
            if HeaderName::from_bytes(normalized.as_bytes()).is_err()
                || is_builtin_identity(normalized.as_bytes())
                || extras.iter().any(|e| **e == *normalized)
            {
                continue;
            }
            extras.push(normalized.into());
        }
        let mut policy = Self {
            extra_identity: extras,
            ui_allowed: std::collections::HashSet::new(),
            ui_allowed_names: std::collections::HashSet::new(),
        };
        let mut ui_allowed: std::collections::HashSet<HeaderName> = UI_BASELINE_HEADERS
            .iter()
            .filter(|n| !policy.is_identity(n.as_bytes()))
            .map(|n| HeaderName::from_static(n))
            .collect();
        for name in extra_ui {
            let lower = name.trim().to_ascii_lowercase();
            if !valid_forward_name(&lower) || policy.is_identity(lower.as_bytes()) {
                continue;
            }
            let Ok(h) = HeaderName::from_bytes(lower.as_bytes()) else {
                continue;
            };
            if is_credential_header(&h) {
                continue;
            }
            ui_allowed.insert(h);
        }
        policy.ui_allowed_names = ui_allowed.iter().map(|n| n.as_str().into()).collect();
        policy.ui_allowed = ui_allowed;
        policy
    }

    /// The same rules with `names` added to the extra identity headers (normalized as in
    /// [`HeaderPolicy::new`]); the UI allow-list loses any of them it had. Used for the
    /// headers a trusted front proxy sets (`auth_mode = forward`), so nobody else can send them.
    pub fn with_identity<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        for name in names {
            let normalized = normalize_header_name(name);
            if HeaderName::from_bytes(normalized.as_bytes()).is_err()
                || is_builtin_identity(normalized.as_bytes())
                || self.extra_identity.iter().any(|e| **e == *normalized)
            {
                continue;
            }
            self.extra_identity.push(normalized.into());
        }
        let extra = self.extra_identity.clone();
        let is_extra = |n: &str| extra.iter().any(|e| **e == *normalize_header_name(n));
        self.ui_allowed.retain(|n| !is_extra(n.as_str()));
        self.ui_allowed_names.retain(|n| !is_extra(n));
        self
    }

    /// Removes every field whose name is an identity header ([`HeaderPolicy::is_identity`]):
    /// the built-in names and prefixes and the extra names, in any letter case and with `_`
    /// or `-` (`http`'s `HeaderName` keeps `_`, so `x_remote_user` is its own key). Every hop,
    /// first thing. Allocates only when there is something to remove.
    pub fn strip_identity(&self, headers: &mut HeaderMap) {
        let drop: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.is_identity(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in drop {
            headers.remove(name);
        }
    }

    /// Whether a header named `name` (raw, as received) is an identity header that
    /// [`HeaderPolicy::strip_identity`] removes: its normalized name (case-insensitive, `_`
    /// equal to `-`) is one of [`IDENTITY_HEADERS`] or the extra names, or starts with one of
    /// [`IDENTITY_HEADER_PREFIXES`]. For callers that see raw header names (the gateway's
    /// HTTP/1.1 forwarding path) rather than a `HeaderMap`. Allocation-free.
    pub fn is_identity(&self, name: &[u8]) -> bool {
        is_builtin_identity(name)
            || self
                .extra_identity
                .iter()
                .any(|n| name_eq_normalized(name, n))
    }

    /// Whether [`HeaderPolicy::retain_for_ui`] keeps a header named `name` (any letter case).
    /// The allow-list holds exact lower-case names with `-` and never an identity header; an
    /// underscore spelling of an allowed name is not allowed (it is dropped on the UI hop).
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
    use http::header::{COOKIE, SET_COOKIE};

    /// Whether `strip_identity` removes a lone header named `name` (and `is_identity` agrees).
    fn stripped(p: &HeaderPolicy, name: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
        h.insert("x-unrelated", HeaderValue::from_static("v"));
        p.strip_identity(&mut h);
        assert!(h.contains_key("x-unrelated"), "{name}");
        let gone = h.len() == 1;
        assert_eq!(p.is_identity(name.as_bytes()), gone, "{name}");
        gone
    }

    /// Whether `retain_for_ui` keeps a lone header named `name` (and `ui_allows` agrees).
    fn kept_for_ui(p: &HeaderPolicy, name: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("v"),
        );
        p.retain_for_ui(&mut h);
        let kept = !h.is_empty();
        assert_eq!(p.ui_allows(name.as_bytes()), kept, "{name}");
        kept
    }

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
        // (name, is an identity header, kept on the UI hop)
        let names = [
            ("X-Forwarded-User", true, false),
            ("x-streamlit-user", true, false),
            ("X-Tenant", false, true),
            ("Cookie", false, true),
            ("Authorization", false, false),
            ("x-other", false, false),
            ("Sec-CH-UA", false, true),
            ("x-request-id", false, true),
            ("Host", false, true),
            // Underscore spellings: distinct `HeaderName`s, the same normalized name. Never
            // allowed on the UI hop (the allow-list holds `-` spellings only).
            ("X_Forwarded_User", true, false),
            ("x_streamlit_user", true, false),
            ("X_STREAMLIT-USER", true, false),
            ("x_tenant", false, false),
            ("x_request_id", false, false),
            ("Sec_CH_UA", false, false),
            // Prefix families and the names added to the exact list.
            ("X-Authentik-Username", true, false),
            ("x_authentik_groups", true, false),
            ("Cf-Access-Jwt-Assertion", true, false),
            ("CF_ACCESS_AUTHENTICATED_USER_EMAIL", true, false),
            ("X-Pomerium-Claim-Email", true, false),
            ("Tailscale-User-Login", true, false),
            ("X-Auth-Request-Email", true, false),
            ("X-Webauth-User", true, false),
            ("Remote-Name", true, false),
            ("remote_email", true, false),
            // Near misses: not identity headers.
            ("X-Authentik", false, false),
            ("x-forwarded-users", false, false),
            ("remote", false, false),
            ("x-pomerium", false, false),
        ];
        for (name, identity, ui) in names {
            assert_eq!(stripped(&p, name), identity, "{name}");
            assert_eq!(kept_for_ui(&p, name), ui, "{name}");
        }
        assert!(!p.ui_allows(&[b'a'; 65]));
    }

    #[test]
    fn underscore_and_mixed_case_spellings_are_identity() {
        let p = HeaderPolicy::default();
        for name in [
            "X_Remote_User",
            "x_remote_user",
            "x_forwarded_user",
            "X_FORWARDED_EMAIL",
            "X-fOrWaRdEd-GrOuPs",
            "x-forwarded_preferred-username",
            "X_Forwarded_Access_Token",
            "REMOTE_USER",
            "X_MS_CLIENT_PRINCIPAL_NAME",
            "x_goog_authenticated_user_email",
            "X_Amzn_Oidc_Data",
        ] {
            assert!(stripped(&p, name), "{name}");
        }
        let mut h = HeaderMap::new();
        for k in [
            "x_remote_user",
            "x-remote-user",
            "X_Forwarded_User",
            "x-keep",
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static("admin"),
            );
        }
        p.strip_identity(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, vec!["x-keep"]);
    }

    #[test]
    fn every_prefix_family_is_identity() {
        let p = HeaderPolicy::default();
        for name in [
            "X-Authentik-Username",
            "X-Authentik-Meta-App",
            "Cf-Access-Jwt-Assertion",
            "Cf-Access-Authenticated-User-Email",
            "X-Pomerium-Jwt-Assertion",
            "X-Pomerium-Claim-Groups",
            "Tailscale-User-Login",
            "Tailscale-User-Profile-Pic",
            "X-Auth-Request-User",
            "X-Auth-Request-Preferred-Username",
            "X-Webauth-User",
            "X-WEBAUTH-ROLE",
            "X-Vouch-User",
            "X-Vouch-Idp-Claims-Email",
            "X-Ms-Token-Aad-Id-Token",
            "X-Remote-Extra-Scopes",
        ] {
            assert!(stripped(&p, name), "{name}");
            assert!(stripped(&p, &name.replace('-', "_")), "{name}");
        }
        for prefix in IDENTITY_HEADER_PREFIXES {
            assert!(stripped(&p, &format!("{prefix}anything")), "{prefix}");
            assert!(stripped(&p, &prefix.to_ascii_uppercase()), "{prefix}");
            // The family name without its trailing `-` is not one.
            assert!(!stripped(&p, &prefix[..prefix.len() - 1]), "{prefix}");
        }
    }

    #[test]
    fn added_exact_names_are_identity() {
        let p = HeaderPolicy::default();
        for name in [
            "Remote-Name",
            "Remote-Email",
            "Remote-Groups",
            "X-Remote-Group",
            "X-Webauth-User",
            "X-Goog-Iap-Jwt-Assertion",
            "X-Ms-Client-Principal-Idp",
            "Tailscale-App-Capabilities",
        ] {
            assert!(stripped(&p, name), "{name}");
        }
        for name in ["X-Request-ID", "X-Forwarded-For", "X-Auth-Token", "Remote"] {
            assert!(!stripped(&p, name), "{name}");
        }
    }

    #[test]
    fn extra_identity_names_are_normalized() {
        let p = HeaderPolicy::new(
            &[
                " X_Streamlit_User ".into(),
                "X-Email".into(),
                "x-email".into(),
                "Bad Name".into(),
                String::new(),
            ],
            &[],
        );
        for name in [
            "x-streamlit-user",
            "X_STREAMLIT_USER",
            "x_streamlit-user",
            "x-email",
            "X_Email",
        ] {
            assert!(stripped(&p, name), "{name}");
        }
        for name in ["x-streamlit", "x-emails", "x-other", "bad"] {
            assert!(!stripped(&p, name), "{name}");
        }
        assert_eq!(p.extra_identity.len(), 2, "{:?}", p.extra_identity);
    }

    #[test]
    fn ui_allow_list_never_allows_identity_names() {
        let p = HeaderPolicy::new(
            &["x-email".into(), "X_Request_Id".into()],
            &[
                "x-authentik-username".into(),
                "cf-access-jwt-assertion".into(),
                "x-webauth-user".into(),
                "remote-name".into(),
                "tailscale-user-login".into(),
                "x-auth-request-user".into(),
                "x-email".into(),
                "x-tenant".into(),
            ],
        );
        for name in [
            "x-authentik-username",
            "cf-access-jwt-assertion",
            "x-webauth-user",
            "remote-name",
            "tailscale-user-login",
            "x-auth-request-user",
            "x-email",
            // A baseline name configured as an identity header is not allowed either.
            "x-request-id",
        ] {
            assert!(!kept_for_ui(&p, name), "{name}");
            assert!(p.is_identity(name.as_bytes()), "{name}");
        }
        assert!(kept_for_ui(&p, "x-tenant"));
        assert!(!kept_for_ui(&p, "x_tenant"));
        for name in UI_BASELINE_HEADERS {
            assert!(!is_builtin_identity(name.as_bytes()), "{name}");
        }
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

    mod prop {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::select;

        const EXTRA: &str = "x-streamlit-user";

        fn policy() -> HeaderPolicy {
            HeaderPolicy::new(&["X_Streamlit_User".into()], &["x-tenant".into()])
        }

        /// A normalized identity name: an exact one, a prefix plus a tail, or the extra one.
        fn identity_name() -> impl Strategy<Value = String> {
            prop_oneof![
                select(IDENTITY_HEADERS).prop_map(str::to_owned),
                (select(IDENTITY_HEADER_PREFIXES), "[a-z0-9-]{0,12}")
                    .prop_map(|(p, tail)| format!("{p}{tail}")),
                Just(EXTRA.to_owned()),
            ]
        }

        /// `name` with each letter's case and each `-`/`_` chosen at random.
        fn respelled(name: String) -> impl Strategy<Value = String> {
            let len = name.len();
            proptest::collection::vec((any::<bool>(), any::<bool>()), len).prop_map(move |flips| {
                name.bytes()
                    .zip(flips)
                    .map(|(b, (upper, swap))| {
                        let b = if swap && b == b'-' { b'_' } else { b };
                        char::from(if upper { b.to_ascii_uppercase() } else { b })
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn any_spelling_of_an_identity_name_is_stripped(
                name in identity_name().prop_flat_map(respelled)
            ) {
                let p = policy();
                prop_assert!(p.is_identity(name.as_bytes()), "{}", name);
                prop_assert!(stripped(&p, &name), "{}", name);
                prop_assert!(!kept_for_ui(&p, &name), "{}", name);
            }

            #[test]
            fn is_identity_agrees_with_strip_identity(name in "[A-Za-z0-9_-]{1,40}") {
                let p = policy();
                // `stripped` and `kept_for_ui` assert the raw and `HeaderMap` rules agree.
                let identity = stripped(&p, &name);
                let ui = kept_for_ui(&p, &name);
                prop_assert!(!(identity && ui), "{}", name);
            }
        }
    }
}
