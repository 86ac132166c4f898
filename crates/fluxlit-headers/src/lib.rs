//! FluxLit's header catalogue: every field name the gateway treats specially, in one table
//! ([`CATALOGUE`]), with its classes ([`Class`]) and a one-line reason (the RFC section, or the
//! product that sets it). Every other list of such names in the workspace is a view of this
//! table: the gateway's hop-by-hop and forwarded lists, `fluxlit-auth`'s credential, identity
//! and UI allow-list, and the names `fluxlit config` refuses in
//! `gateway_forward_client_headers_to_streamlit`.
//!
//! Views are built at compile time by [`names`] and [`header_names`], which take the class
//! and the expected count and fail the build when the catalogue holds a different number of
//! names of that class, so a name added here shows up in every view or the build says where
//! to look. Runtime questions ("is this raw name a credential?") go through [`is`] and
//! [`classes_of`], which apply each class's [`Spelling`].
//!
//! Matching rules (per class, [`Class::spelling`]):
//! - [`Spelling::Exact`]: ASCII case-insensitive equality (field names are case-insensitive,
//!   RFC 9110 §5.1).
//! - [`Spelling::Normalized`]: also `_` read as `-` ([`name_eq_normalized`]), because the CGI
//!   mapping of request fields to `HTTP_*` variables (RFC 3875 §4.1.18), which WSGI environs
//!   and CGI-style frameworks use, turns both into `_`: `X-Remote-User` and `X_Remote_User`
//!   reach such an app as the same variable. Used for identity names and families and for the
//!   fields the gateway owns on every hop (forwarded fields, request id).
//!
//! ```
//! use fluxlit_headers::{Class, classes_of, is};
//!
//! assert!(is(b"X_Remote_User", Class::Identity));
//! assert!(is(b"Cf-Access-Jwt-Assertion", Class::IdentityFamily));
//! assert!(is(b"x_forwarded_for", Class::Forwarded));
//! assert!(!is(b"transfer_encoding", Class::HopByHop));
//! let cookie = classes_of(b"Cookie");
//! assert!(cookie.contains(Class::Credential) && cookie.contains(Class::UiBaseline));
//! ```

use http::HeaderName;

/// One role a field name plays for the gateway. A name may have several (`Cookie` is a
/// credential that the UI hop still receives; `Proxy-Authorization` is a credential and
/// hop-by-hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Never forwarded to the next hop (RFC 9110 §7.6.1), besides the fields `Connection`
    /// names.
    HopByHop,
    /// Frames or addresses the message (`Content-Length`, `Host`): the gateway writes these
    /// itself for what it relays, and no `Connection` option removes them (RFC 9112 §6.2,
    /// §3.2).
    Framing,
    /// Carries a credential: values are marked sensitive (never logged, never HPACK-indexed,
    /// RFC 7541 §7.1.3) and no allow-list option forwards them.
    Credential,
    /// An exact identity header set by an authenticating proxy or platform: a client may
    /// never send it; stripped on every hop.
    Identity,
    /// A family of identity headers: the entry's name is a prefix ending in `-`, and every
    /// name starting with it is an identity header.
    IdentityFamily,
    /// A forwarded field the gateway owns: inbound copies are dropped on every hop and the
    /// gateway sets its own (or none).
    Forwarded,
    /// The request's correlation id: the gateway's own replaces any inbound one unless a
    /// trusted peer sent a well-formed one.
    RequestId,
    /// On the UI hop's allow-list: client fields Streamlit receives by default.
    UiBaseline,
}

impl Class {
    /// Every class, in the order the documentation lists them.
    pub const ALL: [Class; 8] = [
        Class::HopByHop,
        Class::Framing,
        Class::Credential,
        Class::Identity,
        Class::IdentityFamily,
        Class::Forwarded,
        Class::RequestId,
        Class::UiBaseline,
    ];

    /// The class's label in the documentation table (`hop-by-hop`, `identity family`, …).
    pub const fn label(self) -> &'static str {
        match self {
            Class::HopByHop => "hop-by-hop",
            Class::Framing => "framing",
            Class::Credential => "credential",
            Class::Identity => "identity",
            Class::IdentityFamily => "identity family",
            Class::Forwarded => "forwarded",
            Class::RequestId => "request id",
            Class::UiBaseline => "UI baseline",
        }
    }

    /// How a raw field name is compared with the class's catalogue names: normalized for
    /// identity names and families and for the fields the gateway owns on every hop, exact
    /// (ASCII case-insensitive) for the rest.
    pub const fn spelling(self) -> Spelling {
        match self {
            Class::Identity | Class::IdentityFamily | Class::Forwarded | Class::RequestId => {
                Spelling::Normalized
            }
            Class::HopByHop | Class::Framing | Class::Credential | Class::UiBaseline => {
                Spelling::Exact
            }
        }
    }

    /// The class's bit in [`Classes`].
    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// How a raw field name (as received) is compared with a catalogue name (lower case, `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// ASCII case-insensitive (RFC 9110 §5.1); `_` is its own character.
    Exact,
    /// ASCII case-insensitive and `_` read as `-` ([`name_eq_normalized`]; RFC 3875 §4.1.18).
    Normalized,
}

/// A set of [`Class`]es (a bit set; `const`-friendly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Classes(u16);

impl Classes {
    /// No class.
    pub const EMPTY: Classes = Classes(0);

    /// The set of the given classes.
    pub const fn of(classes: &[Class]) -> Classes {
        let mut bits = 0;
        let mut i = 0;
        while i < classes.len() {
            bits |= classes[i].bit();
            i += 1;
        }
        Classes(bits)
    }

    /// This set with `class` added.
    pub const fn with(self, class: Class) -> Classes {
        Classes(self.0 | class.bit())
    }

    /// Whether `class` is in the set.
    pub const fn contains(self, class: Class) -> bool {
        self.0 & class.bit() != 0
    }

    /// Whether the two sets share a class.
    pub const fn intersects(self, other: Classes) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The classes in the set, in [`Class::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Class> {
        Class::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

/// One catalogue entry: a field name (or, for [`Class::IdentityFamily`], a prefix ending in
/// `-`), lower case with `-`, its classes and why it is treated specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The name in normalized form: ASCII lower case, letters, digits and `-` only.
    pub name: &'static str,
    /// What the gateway does with it (never empty).
    pub classes: Classes,
    /// One line: the RFC section that makes it special, or the product that sets it.
    pub reason: &'static str,
}

impl Entry {
    /// Whether the raw field name `raw` (as received) is this entry's name in `class`'s
    /// spelling (a family's entry matches every name it prefixes). False when the entry is not
    /// of `class`. Allocation-free.
    pub fn matches(&self, raw: &[u8], class: Class) -> bool {
        if !self.classes.contains(class) {
            return false;
        }
        match (class, class.spelling()) {
            (Class::IdentityFamily, _) => name_starts_with_normalized(raw, self.name),
            (_, Spelling::Normalized) => name_eq_normalized(raw, self.name),
            (_, Spelling::Exact) => raw.eq_ignore_ascii_case(self.name.as_bytes()),
        }
    }
}

/// `X-Forwarded-For`: the client chain the gateway sets on every upstream hop.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// `X-Forwarded-Proto`: the scheme the gateway sets on every upstream hop.
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
/// `X-Forwarded-Host`: the host the gateway sets on every upstream hop.
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
/// `X-Forwarded-Port`: the port the gateway sets on every upstream hop.
pub const X_FORWARDED_PORT: &str = "x-forwarded-port";
/// `X-Forwarded-Prefix`: the mount prefix the gateway sets on every upstream hop.
pub const X_FORWARDED_PREFIX: &str = "x-forwarded-prefix";
/// `Forwarded` (RFC 7239): read from trusted proxies, never sent on.
pub const FORWARDED: &str = "forwarded";
/// `X-Real-IP`: dropped on every hop, never sent on.
pub const X_REAL_IP: &str = "x-real-ip";
/// `X-Request-ID`: the request's correlation id ([`Class::RequestId`]).
pub const REQUEST_ID: &str = "x-request-id";

use Class::{
    Credential, Forwarded, Framing, HopByHop, Identity, IdentityFamily, RequestId, UiBaseline,
};

/// A catalogue entry (for the table below).
const fn entry(name: &'static str, classes: &[Class], reason: &'static str) -> Entry {
    Entry {
        name,
        classes: Classes::of(classes),
        reason,
    }
}

/// Every field name the gateway treats specially, with its classes and reason. Names are
/// unique, lower case and normalized (`-`, never `_`); the unit tests check that and which
/// classes may share a name. `docs/security.md` ("Header catalogue") renders this table
/// ([`markdown_table`]).
#[rustfmt::skip]
pub const CATALOGUE: &[Entry] = &[
    // Hop-by-hop (RFC 9110 §7.6.1 and its named examples).
    entry("connection", &[HopByHop], "RFC 9110 §7.6.1: this hop's options; every field it names is hop-by-hop too"),
    entry("proxy-connection", &[HopByHop], "RFC 9110 §7.6.1 (RFC 9112 Appendix C.2.2): pre-standard `Connection` of old clients"),
    entry("keep-alive", &[HopByHop], "RFC 9110 §7.6.1 (RFC 2068 §19.7.1): this connection's persistence parameters"),
    entry("te", &[HopByHop], "RFC 9110 §10.1.4, §7.6.1: transfer codings this hop accepts"),
    entry("trailer", &[HopByHop], "RFC 2616 §13.5.1's hop-by-hop list; the gateway frames what it relays itself"),
    entry("transfer-encoding", &[HopByHop], "RFC 9112 §6.1: this hop's framing; the gateway frames what it relays itself"),
    entry("upgrade", &[HopByHop], "RFC 9110 §7.8: this connection's protocol switch; only a WebSocket upgrade is re-sent"),
    entry("proxy-authenticate", &[HopByHop], "RFC 9110 §11.7.1: a proxy's challenge to the client, for this hop only"),
    entry("proxy-authorization", &[HopByHop, Credential], "RFC 9110 §11.7.2: credentials for the next proxy, consumed by it"),
    entry("expect", &[HopByHop], "RFC 9110 §10.1.1: `100-continue` is answered by the gateway on the client hop"),
    // Framing and target: written by the gateway; never a `Connection` option.
    entry("content-length", &[Framing, UiBaseline], "RFC 9112 §6.2: the gateway writes the length it relays; uploads to Streamlit need it"),
    entry("host", &[Framing, UiBaseline], "RFC 9112 §3.2: checked and written by the gateway; Streamlit reads it"),
    // Credentials.
    entry("authorization", &[Credential], "RFC 9110 §11.6.2: the user agent's credentials"),
    entry("cookie", &[Credential, UiBaseline], "RFC 6265 §5.4: session credentials; Streamlit's XSRF check and `st.login` read them"),
    entry("set-cookie", &[Credential], "RFC 6265 §4.1: credentials an upstream sets"),
    // Identity headers, exact names.
    entry("x-forwarded-user", &[Identity], "oauth2-proxy `--pass-user-headers` (also OpenShift oauth-proxy): user"),
    entry("x-forwarded-email", &[Identity], "oauth2-proxy `--pass-user-headers`: email"),
    entry("x-forwarded-groups", &[Identity], "oauth2-proxy `--pass-user-headers`: groups"),
    entry("x-forwarded-preferred-username", &[Identity], "oauth2-proxy `--pass-user-headers`: preferred username"),
    entry("x-forwarded-access-token", &[Identity], "oauth2-proxy `--pass-access-token`: the user's access token"),
    entry("x-remote-user", &[Identity], "Apache/nginx auth front ends, Kubernetes request-header authentication: user"),
    entry("x-remote-email", &[Identity], "Apache/nginx auth front ends: email"),
    entry("x-remote-groups", &[Identity], "Apache/nginx auth front ends: groups"),
    entry("x-remote-group", &[Identity], "Kubernetes request-header authentication: group"),
    entry("remote-user", &[Identity], "Authelia (and Caddy/Traefik forward-auth setups copying it): user"),
    entry("remote-email", &[Identity], "Authelia forward-auth: email"),
    entry("remote-groups", &[Identity], "Authelia forward-auth: groups"),
    entry("remote-name", &[Identity], "Authelia forward-auth: display name"),
    entry("x-ms-client-principal", &[Identity], "Azure App Service / Container Apps authentication (Easy Auth): claims"),
    entry("x-ms-client-principal-id", &[Identity], "Azure App Service authentication (Easy Auth): user id"),
    entry("x-ms-client-principal-name", &[Identity], "Azure App Service authentication (Easy Auth): user name"),
    entry("x-ms-client-principal-idp", &[Identity], "Azure App Service authentication (Easy Auth): identity provider"),
    entry("x-goog-authenticated-user-email", &[Identity], "Google Cloud Identity-Aware Proxy: email"),
    entry("x-goog-authenticated-user-id", &[Identity], "Google Cloud Identity-Aware Proxy: user id"),
    entry("x-goog-iap-jwt-assertion", &[Identity], "Google Cloud Identity-Aware Proxy: signed identity JWT"),
    entry("x-amzn-oidc-data", &[Identity], "AWS Application Load Balancer OIDC authentication: user claims JWT"),
    entry("x-amzn-oidc-identity", &[Identity], "AWS Application Load Balancer OIDC authentication: subject"),
    entry("x-amzn-oidc-accesstoken", &[Identity], "AWS Application Load Balancer OIDC authentication: access token"),
    entry("tailscale-app-capabilities", &[Identity], "Tailscale serve: application capability grants"),
    // Identity header families (prefixes ending in `-`).
    entry("x-auth-request-", &[IdentityFamily], "oauth2-proxy `--set-xauthrequest` (`X-Auth-Request-User`, `-Email`, `-Groups`, `-Access-Token`)"),
    entry("x-pomerium-", &[IdentityFamily], "Pomerium (`X-Pomerium-Jwt-Assertion`, `X-Pomerium-Claim-*`)"),
    entry("x-authentik-", &[IdentityFamily], "Authentik proxy outpost (`X-Authentik-Username`, `-Email`, `-Groups`, `-Jwt`, `-Meta-*`)"),
    entry("cf-access-", &[IdentityFamily], "Cloudflare Access (`Cf-Access-Jwt-Assertion`, `Cf-Access-Authenticated-User-Email`)"),
    entry("tailscale-user-", &[IdentityFamily], "Tailscale serve (`Tailscale-User-Login`, `-Name`, `-Profile-Pic`)"),
    entry("x-webauth-", &[IdentityFamily], "Grafana auth proxy convention (`X-Webauth-User`, `-Email`, `-Role`), Tailscale proxy-to-grafana"),
    entry("x-vouch-", &[IdentityFamily], "Vouch Proxy (`X-Vouch-User`, `X-Vouch-Idp-Claims-*`)"),
    entry("x-ms-token-", &[IdentityFamily], "Azure App Service authentication provider tokens (`X-Ms-Token-Aad-Id-Token`)"),
    entry("x-remote-extra-", &[IdentityFamily], "Kubernetes request-header authentication: user extras"),
    // Forwarded fields the gateway owns on every hop.
    entry(X_FORWARDED_FOR, &[Forwarded], "De-facto client chain; the gateway sets its own (trusted chain plus the peer)"),
    entry(X_FORWARDED_PROTO, &[Forwarded], "De-facto original scheme; the gateway sets its own"),
    entry(X_FORWARDED_HOST, &[Forwarded], "De-facto original host; the gateway sets its own"),
    entry(X_FORWARDED_PORT, &[Forwarded], "De-facto original port; the gateway sets its own"),
    entry(X_FORWARDED_PREFIX, &[Forwarded], "De-facto mount prefix (Spring, Traefik); the gateway sets its own"),
    entry(FORWARDED, &[Forwarded], "RFC 7239: read only from trusted proxies; the gateway never sends it on"),
    entry(X_REAL_IP, &[Forwarded], "nginx `real_ip` convention: client address; the gateway never sends it on"),
    // The request id.
    entry(REQUEST_ID, &[RequestId, UiBaseline], "Correlation id (Heroku, nginx `$request_id`): a client's well-formed one kept (any client's, or only a trusted proxy's with `request_id_trust = trusted_proxies`), else the gateway's own"),
    // The UI hop's allow-list (what browsers send and Streamlit uses).
    entry("origin", &[UiBaseline], "RFC 6454 §7: Streamlit's WebSocket origin and XSRF checks"),
    entry("referer", &[UiBaseline], "RFC 9110 §10.1.3: sent by browsers"),
    entry("user-agent", &[UiBaseline], "RFC 9110 §10.1.5: sent by browsers; `st.context.headers`"),
    entry("accept", &[UiBaseline], "RFC 9110 §12.5.1: content negotiation"),
    entry("accept-charset", &[UiBaseline], "RFC 9110 §12.5.2: content negotiation"),
    entry("accept-encoding", &[UiBaseline], "RFC 9110 §12.5.3: compressed static files"),
    entry("accept-language", &[UiBaseline], "RFC 9110 §12.5.4: `st.context.locale`"),
    entry("cache-control", &[UiBaseline], "RFC 9111 §5.2: revalidation of static files"),
    entry("pragma", &[UiBaseline], "RFC 9111 §5.4: HTTP/1.0 no-cache"),
    entry("if-match", &[UiBaseline], "RFC 9110 §13.1.1: conditional request"),
    entry("if-none-match", &[UiBaseline], "RFC 9110 §13.1.2: ETag revalidation of static files"),
    entry("if-modified-since", &[UiBaseline], "RFC 9110 §13.1.3: revalidation of static files"),
    entry("if-unmodified-since", &[UiBaseline], "RFC 9110 §13.1.4: conditional request"),
    entry("if-range", &[UiBaseline], "RFC 9110 §13.1.5: conditional range request"),
    entry("range", &[UiBaseline], "RFC 9110 §14.2: media seeking"),
    entry("content-type", &[UiBaseline], "RFC 9110 §8.3: uploads and forms"),
    entry("content-encoding", &[UiBaseline], "RFC 9110 §8.4: coded request bodies"),
    entry("content-language", &[UiBaseline], "RFC 9110 §8.5: request body language"),
    entry("content-disposition", &[UiBaseline], "RFC 6266: upload part names"),
    entry("sec-websocket-key", &[UiBaseline], "RFC 6455 §11.3.1: WebSocket handshake"),
    entry("sec-websocket-version", &[UiBaseline], "RFC 6455 §11.3.5: WebSocket handshake"),
    entry("sec-websocket-protocol", &[UiBaseline], "RFC 6455 §11.3.4: Streamlit's subprotocol (carries its XSRF token)"),
    entry("sec-websocket-extensions", &[UiBaseline], "RFC 6455 §11.3.2: permessage-deflate (RFC 7692)"),
    entry("sec-fetch-site", &[UiBaseline], "W3C Fetch Metadata: request site"),
    entry("sec-fetch-mode", &[UiBaseline], "W3C Fetch Metadata: request mode"),
    entry("sec-fetch-dest", &[UiBaseline], "W3C Fetch Metadata: request destination"),
    entry("sec-fetch-user", &[UiBaseline], "W3C Fetch Metadata: user activation"),
    entry("sec-ch-ua", &[UiBaseline], "WICG User-Agent Client Hints: brand"),
    entry("sec-ch-ua-mobile", &[UiBaseline], "WICG User-Agent Client Hints: mobile"),
    entry("sec-ch-ua-platform", &[UiBaseline], "WICG User-Agent Client Hints: platform"),
    entry("sec-purpose", &[UiBaseline], "Speculation Rules: prefetch/prerender marker"),
    entry("purpose", &[UiBaseline], "Legacy prefetch purpose (Chrome, Safari)"),
    entry("priority", &[UiBaseline], "RFC 9218 §5: extensible priorities"),
    entry("upgrade-insecure-requests", &[UiBaseline], "W3C Upgrade Insecure Requests: the browser prefers HTTPS"),
    entry("dnt", &[UiBaseline], "W3C Tracking Preference Expression: Do Not Track"),
    entry("x-xsrftoken", &[UiBaseline], "Tornado's XSRF header: Streamlit's file upload"),
    entry("x-requested-with", &[UiBaseline], "De-facto XHR marker sent by JavaScript clients"),
    entry("traceparent", &[UiBaseline], "W3C Trace Context §3.2: tracing"),
    entry("tracestate", &[UiBaseline], "W3C Trace Context §3.3: tracing"),
    entry("baggage", &[UiBaseline], "W3C Baggage: tracing context"),
];

/// How many catalogue names have `class` (usable in `const` contexts).
pub const fn count(class: Class) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < CATALOGUE.len() {
        if CATALOGUE[i].classes.contains(class) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The catalogue names of `class`, in catalogue order, as an array of exactly `N` names.
/// Meant for `const` items: evaluation fails (a build error there) when the catalogue holds
/// another number of names of that class, so a view never silently misses a name.
///
/// ```
/// use fluxlit_headers::{Class, names};
///
/// const FRAMING: [&str; 2] = names(Class::Framing);
/// assert_eq!(FRAMING, ["content-length", "host"]);
/// ```
pub const fn names<const N: usize>(class: Class) -> [&'static str; N] {
    assert!(
        count(class) == N,
        "the catalogue holds another number of names of this class"
    );
    let mut out = [""; N];
    let mut n = 0;
    let mut i = 0;
    while i < CATALOGUE.len() {
        if CATALOGUE[i].classes.contains(class) {
            out[n] = CATALOGUE[i].name;
            n += 1;
        }
        i += 1;
    }
    out
}

/// [`names`] as `HeaderName`s (standard names are `http`'s constants, so they compare and
/// hash like `http::header::*`). Fails the same way when the count is not `N`.
///
/// ```
/// use fluxlit_headers::{Class, header_names};
///
/// const CREDENTIALS: [http::HeaderName; 4] = header_names(Class::Credential);
/// assert!(CREDENTIALS.contains(&http::header::AUTHORIZATION));
/// ```
pub const fn header_names<const N: usize>(class: Class) -> [HeaderName; N] {
    let names = names::<N>(class);
    let mut out = [const { HeaderName::from_static("x") }; N];
    let mut i = 0;
    while i < N {
        // A `const fn` may not drop a `HeaderName`; the placeholder holds no allocation.
        let placeholder = core::mem::replace(&mut out[i], HeaderName::from_static(names[i]));
        core::mem::forget(placeholder);
        i += 1;
    }
    out
}

/// The catalogue entry named `name` (exactly: lower case, `-`), if any.
pub fn entry_named(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// Whether the raw field name `raw` (as received) is of `class`, in the class's spelling
/// ([`Class::spelling`]; for [`Class::IdentityFamily`], starts with a family's prefix).
/// Allocation-free; walks the whole catalogue, so hot paths use a `const` view instead.
pub fn is(raw: &[u8], class: Class) -> bool {
    CATALOGUE.iter().any(|e| e.matches(raw, class))
}

/// Every class the raw field name `raw` has, each in its own spelling: `x_request_id` is
/// [`Class::RequestId`] (normalized) but not [`Class::UiBaseline`] (exact). Allocation-free.
pub fn classes_of(raw: &[u8]) -> Classes {
    let mut classes = Classes::EMPTY;
    for e in CATALOGUE {
        for class in e.classes.iter() {
            if e.matches(raw, class) {
                classes = classes.with(class);
            }
        }
    }
    classes
}

/// One byte of a header name in normalized form: ASCII lower case, `_` read as `-`.
const fn normalize_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether the raw header name `raw` (as received: any letter case, `-` or `_`) equals
/// `canonical` once normalized: ASCII letters compare case-insensitively (RFC 9110 §5.1) and
/// `_` equals `-`, since the CGI `HTTP_*` mapping (RFC 3875 §4.1.18) used by WSGI servers and
/// CGI-style frameworks turns both into `_`, so `X_Remote_User` reaches such an app as
/// `X-Remote-User`.
///
/// `canonical` must already be normalized (lower case, `-` never `_`, as every
/// [`CATALOGUE`] name is); an upper-case letter or `_` in it never matches. Compares byte by
/// byte without allocating, for per-header use on the hot path.
///
/// ```
/// use fluxlit_headers::name_eq_normalized;
///
/// assert!(name_eq_normalized(b"X_Forwarded_For", "x-forwarded-for"));
/// assert!(name_eq_normalized(b"x-forwarded-for", "x-forwarded-for"));
/// assert!(!name_eq_normalized(b"x-forwarded-fo", "x-forwarded-for"));
/// ```
pub fn name_eq_normalized(raw: &[u8], canonical: &str) -> bool {
    let canonical = canonical.as_bytes();
    raw.len() == canonical.len()
        && raw
            .iter()
            .zip(canonical)
            .all(|(r, c)| normalize_byte(*r) == *c)
}

/// Whether the raw header name `raw` starts with `prefix` once normalized (see
/// [`name_eq_normalized`]; `prefix` must be normalized). Allocation-free.
///
/// ```
/// assert!(fluxlit_headers::name_starts_with_normalized(b"X_Authentik_Username", "x-authentik-"));
/// assert!(!fluxlit_headers::name_starts_with_normalized(b"X-Authentik", "x-authentik-"));
/// ```
pub fn name_starts_with_normalized(raw: &[u8], prefix: &str) -> bool {
    raw.get(..prefix.len())
        .is_some_and(|head| name_eq_normalized(head, prefix))
}

/// The normalized form of a configured header name: surrounding whitespace trimmed, ASCII
/// lower case, `_` replaced by `-` (the form [`name_eq_normalized`] compares against). For
/// configuration, not the per-request path: it allocates.
///
/// ```
/// assert_eq!(fluxlit_headers::normalize_header_name(" X_Streamlit-User "), "x-streamlit-user");
/// ```
pub fn normalize_header_name(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// The catalogue as a Markdown table (`| name | class | reason |`, families written
/// `prefix-*`), as `docs/security.md` shows it under "Header catalogue".
pub fn markdown_table() -> String {
    let mut out = String::from("| name | class | reason |\n| --- | --- | --- |\n");
    for e in CATALOGUE {
        let star = if e.classes.contains(Class::IdentityFamily) {
            "*"
        } else {
            ""
        };
        let classes: Vec<&str> = e.classes.iter().map(Class::label).collect();
        out.push_str(&format!(
            "| `{}{star}` | {} | {} |\n",
            e.name,
            classes.join(", "),
            e.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests;
