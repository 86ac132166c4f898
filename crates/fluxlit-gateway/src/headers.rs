//! Hop-by-hop header handling (RFC 9110 §7.6.1) and the forwarded headers the gateway sets.

use std::net::{IpAddr, SocketAddr};

use fluxlit_headers::Class;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields that are never forwarded, besides those named in `Connection`
/// (RFC 9110 §7.6.1 lists Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
/// Upgrade; Trailer and the Proxy-Authenticate/-Authorization pair are hop-by-hop by RFC 2616's
/// list and common proxy practice; `Expect` is answered by the gateway on the client hop). The
/// header catalogue's [`Class::HopByHop`] view, built at compile time
/// (`fluxlit_headers::CATALOGUE` gives the reason for each).
pub const HOP_BY_HOP: [HeaderName; 10] = fluxlit_headers::header_names(Class::HopByHop);

/// The forwarded headers the gateway owns: inbound copies are dropped and replaced
/// (`X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `-Prefix`, `Forwarded`, `X-Real-IP`). The
/// header catalogue's [`Class::Forwarded`] view, the same names as
/// [`crate::forwarded::REPLACED_ON_HOP`].
pub const FORWARDED_HEADERS: [HeaderName; 7] = fluxlit_headers::header_names(Class::Forwarded);

/// Fields that a `Connection` option never makes hop-by-hop: `Content-Length` (the message's
/// framing, RFC 9112 §6.2: the gateway writes the length it relays, so a client or upstream that
/// names it in `Connection` cannot make the next hop read a body as a second message) and `Host`
/// (RFC 9112 §3.2). `Transfer-Encoding` is hop-by-hop on its own ([`HOP_BY_HOP`]); the gateway
/// frames what it relays itself. The header catalogue's [`Class::Framing`] view.
pub const NEVER_CONNECTION_OPTIONS: [HeaderName; 2] = fluxlit_headers::header_names(Class::Framing);

/// The options of one `Connection` field value (RFC 9110 §7.6.1, `#connection-option`): list
/// elements split at `,`, optional whitespace (SP, HTAB) trimmed, empty elements skipped. Raw
/// bytes, compared ASCII case-insensitively by the callers; an option that is not a valid token
/// names no field. Every engine reads `Connection` through this one function.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a `Connection` value carries `option` (ASCII case-insensitive), e.g. `close`,
/// `upgrade`; never for a value that names no option ([`connection_value_usable`]), the rule
/// [`ConnectionOptions::add`] applies too.
pub fn has_connection_option(value: &[u8], option: &str) -> bool {
    connection_value_usable(value)
        && connection_options(value).any(|t| t.eq_ignore_ascii_case(option.as_bytes()))
}

/// Whether a `Connection` field value names options at all: only visible ASCII, SP and HTAB.
/// A value with obs-text or controls names none (hyper's server reads such a field as no
/// `close`), on every engine and for every option, `upgrade` included.
pub fn connection_value_usable(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
}

/// Whether a `Connection` option may remove the field `name` (not one of
/// [`NEVER_CONNECTION_OPTIONS`]).
fn removable(name: &[u8]) -> bool {
    !NEVER_CONNECTION_OPTIONS
        .iter()
        .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Whether `name` (raw, any letter case) is on the fixed [`HOP_BY_HOP`] list.
pub fn is_fixed_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Options held inline by [`ConnectionOptions`]; more spill into a hash set, so a head with
/// thousands of options costs one hash lookup per field, not options × fields comparisons.
const INLINE_OPTIONS: usize = 8;

/// The `Connection` options of one message, parsed once (every `Connection` field, through
/// [`connection_options`]) and looked up per field in bounded time: up to eight options are
/// compared in place, more are kept lower-cased in a hash set. Also records the `close` and
/// `upgrade` options.
#[derive(Debug, Default)]
pub struct ConnectionOptions<'a> {
    inline: [&'a [u8]; INLINE_OPTIONS],
    n: usize,
    spill: Option<std::collections::HashSet<Box<[u8]>>>,
    /// The `close` option is present (RFC 9112 §9.6).
    pub close: bool,
    /// The `upgrade` option is present (RFC 9110 §7.8).
    pub upgrade: bool,
}

impl<'a> ConnectionOptions<'a> {
    /// Adds the options of one `Connection` field value. A value with bytes other than visible
    /// ASCII, SP and HTAB (obs-text, controls) names no option at all: hyper's server reads such
    /// a field as no `close`, so both engines ignore it whole (its options may be forwarded, as
    /// by an HTTP/1.0 hop; framing fields are never removed by options anyway).
    pub fn add(&mut self, value: &'a [u8]) {
        if !connection_value_usable(value) {
            return;
        }
        for t in connection_options(value) {
            self.close |= t.eq_ignore_ascii_case(b"close");
            self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            if let Some(set) = &mut self.spill {
                set.insert(t.to_ascii_lowercase().into_boxed_slice());
            } else if self.n < INLINE_OPTIONS {
                self.inline[self.n] = t;
                self.n += 1;
            } else {
                let mut set: std::collections::HashSet<Box<[u8]>> = self.inline[..self.n]
                    .iter()
                    .map(|o| o.to_ascii_lowercase().into_boxed_slice())
                    .collect();
                set.insert(t.to_ascii_lowercase().into_boxed_slice());
                self.spill = Some(set);
            }
        }
    }

    /// Whether an option names the field `name` (raw, any letter case) and that field may be
    /// removed for it (never `Content-Length` or `Host`, [`NEVER_CONNECTION_OPTIONS`]).
    pub fn names(&self, name: &[u8]) -> bool {
        let named = match &self.spill {
            Some(set) => set.contains(name.to_ascii_lowercase().as_slice()),
            None => self.inline[..self.n]
                .iter()
                .any(|o| o.eq_ignore_ascii_case(name)),
        };
        named && removable(name)
    }

    /// Whether `name` is hop-by-hop for this message: on the fixed [`HOP_BY_HOP`] list or named
    /// by an option (RFC 9110 §7.6.1), as [`strip_hop_by_hop`] decides.
    pub fn hop_by_hop(&self, name: &[u8]) -> bool {
        is_fixed_hop_by_hop(name) || self.names(name)
    }
}

/// Removes hop-by-hop headers in place: the fixed [`HOP_BY_HOP`] list and every field named in
/// any `Connection` header value (RFC 9110 §7.6.1), except the fields no option removes
/// ([`NEVER_CONNECTION_OPTIONS`]: `Content-Length`, `Host`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fields named by Connection must go too; collect them before removing Connection itself.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| connection_options(v.as_bytes()))
        .filter(|t| removable(t))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `Upgrade` value the gateway sends for a WebSocket upgrade.
pub const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");

/// Whether a request asks for a WebSocket upgrade (RFC 6455 §4.1, RFC 9110 §7.8): `Connection`
/// has the `upgrade` option (`connection_upgrade`), an `Upgrade` field lists the `websocket`
/// protocol, and `Sec-WebSocket-Key` is present. Only such a request is forwarded as an upgrade;
/// any other `Upgrade` (`h2c`, …) is hop-by-hop and the request goes on as a plain request, so
/// no other protocol is ever tunnelled.
pub fn is_websocket_upgrade(
    connection_upgrade: bool,
    upgrade: Option<&[u8]>,
    key: Option<&[u8]>,
) -> bool {
    connection_upgrade
        && key.is_some_and(|k| !k.is_empty())
        && upgrade
            .is_some_and(|u| connection_options(u).any(|p| p.eq_ignore_ascii_case(b"websocket")))
}

/// The `Sec-WebSocket-Accept` an upstream must answer for `key` (RFC 6455 §4.2.2: base64 of
/// the SHA-1 of the key and the protocol's GUID).
pub fn websocket_accept(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

/// For a WebSocket upgrade request ([`is_websocket_upgrade`]), the `Sec-WebSocket-Accept` the
/// upstream's 101 must carry; `None` for any other request.
pub fn upgrade_request(headers: &HeaderMap) -> Option<String> {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_connection_option(v.as_bytes(), "upgrade"));
    let upgrade = headers.get(header::UPGRADE).map(HeaderValue::as_bytes);
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)?;
    is_websocket_upgrade(connection_upgrade, upgrade, Some(key)).then(|| websocket_accept(key))
}

/// Whether an upstream's 101 completes the WebSocket handshake the gateway forwarded: its
/// `Sec-WebSocket-Accept` equals `expected` and its `Upgrade` names `websocket` (RFC 6455
/// §4.1, client steps 2–4). A 101 that does not is answered with 502 and never tunnelled.
pub fn websocket_switched(expected: &str, accept: Option<&[u8]>, upgrade: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| a.trim_ascii() == expected.as_bytes())
        && upgrade
            .is_some_and(|u| connection_options(u).any(|p| p.eq_ignore_ascii_case(b"websocket")))
}

/// Whether `value` is a valid `Host` (RFC 9112 §3.2, RFC 9110 §7.2): a non-empty `uri-host`
/// with an optional port, as a URI authority without userinfo, at most 255 bytes.
pub fn valid_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && !value.contains(&b'@')
        && http::uri::Authority::try_from(value).is_ok()
}

/// Why a request's `Host` is refused (400), RFC 9112 §3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadHost {
    /// More than one `Host` field.
    #[error("more than one Host field")]
    Duplicate,
    /// An HTTP/1.1 request without `Host`.
    #[error("an HTTP/1.1 request must have a Host field")]
    Missing,
    /// A `Host` that is not a valid authority.
    #[error("the Host field is not a valid host[:port]")]
    Invalid,
    /// An absolute-form target (or HTTP/2 `:authority`) that names another authority than
    /// `Host`, or has userinfo.
    #[error("the request target's authority differs from the Host field")]
    Mismatch,
}

/// Checks the `Host` rules of RFC 9112 §3.2 for a request of `version` with `headers` and
/// target authority `authority` (absolute-form, or HTTP/2's `:authority`): exactly one valid
/// `Host` on HTTP/1.1 (at most one elsewhere), and equal to the target's authority when both are
/// present (ASCII case-insensitive).
///
/// # Errors
/// [`BadHost`] naming the broken rule.
pub fn check_host(
    version: http::Version,
    headers: &HeaderMap,
    authority: Option<&http::uri::Authority>,
) -> Result<(), BadHost> {
    let mut all = headers.get_all(header::HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Err(BadHost::Duplicate);
    }
    if let Some(a) = authority
        && a.as_str().contains('@')
    {
        return Err(BadHost::Mismatch);
    }
    match (host, authority) {
        (None, None) if version == http::Version::HTTP_11 => Err(BadHost::Missing),
        (None, _) => Ok(()),
        (Some(h), _) if !valid_host(h.as_bytes()) => Err(BadHost::Invalid),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            Err(BadHost::Mismatch)
        }
        (Some(_), _) => Ok(()),
    }
}

/// What the gateway knows about the client hop, used to set forwarded headers upstream.
#[derive(Debug, Clone)]
pub struct ClientHop {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The gateway's local address on this connection.
    pub local: SocketAddr,
}

impl ClientHop {
    fn peer_ip(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }
}

/// Replaces inbound forwarded headers ([`FORWARDED_HEADERS`], so `Forwarded` and `X-Real-IP`
/// go too) with the gateway's own: `X-Forwarded-For` (the peer), `-Proto` (`http`), `-Host`
/// (the request's host), `-Port` (from the host, else the local port) and `-Prefix` when
/// `prefix` is given. Trusting inbound values from a proxy is not done here.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    hop: &ClientHop,
    prefix: Option<&str>,
) {
    for name in &FORWARDED_HEADERS {
        headers.remove(name);
    }
    use crate::forwarded::{XFF, XFH, XFP, XFPORT, XFPREFIX};
    let ip = hop.peer_ip().to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(XFF, v);
    }
    headers.insert(XFP, HeaderValue::from_static("http"));
    let port = host
        .and_then(|h| h.to_str().ok())
        .and_then(port_of_host)
        .unwrap_or(hop.local.port());
    if let Some(h) = host {
        headers.insert(XFH, h.clone());
    }
    headers.insert(XFPORT, HeaderValue::from(port));
    if let Some(p) = prefix.filter(|p| !p.is_empty())
        && let Ok(v) = HeaderValue::from_str(p)
    {
        headers.insert(XFPREFIX, v);
    }
}

/// The port of a `Host` value (`example.com:8080`, `[::1]:8000`), if it has one.
pub fn port_of_host(host: &str) -> Option<u16> {
    let after = match host.rfind(']') {
        Some(i) => &host[i + 1..],
        None => host,
    };
    after.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_fixed_and_connection_named_fields() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-t"),
            ("expect", "100-continue"),
            ("cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("set-cookie", "c=3"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["authorization", "cookie", "set-cookie"]);
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn framing_and_host_are_never_connection_options() {
        let mut h = map(&[
            ("connection", "keep-alive, Content-Length, HOST, x-hop"),
            ("content-length", "84"),
            ("host", "app.example"),
            ("x-hop", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["content-length"], "84");
        assert_eq!(h["host"], "app.example");
        assert!(h.get("x-hop").is_none());
        let mut o = ConnectionOptions::default();
        o.add(b"keep-alive, Content-Length, HOST, x-hop");
        assert!(!o.hop_by_hop(b"content-length") && !o.hop_by_hop(b"Host"));
        assert!(o.hop_by_hop(b"X-Hop") && o.hop_by_hop(b"keep-alive") && o.hop_by_hop(b"TE"));
        assert!(!o.hop_by_hop(b"x-ho") && !o.hop_by_hop(b"x-custom"));
    }

    #[test]
    fn connection_options_spill_into_a_set_with_the_same_answers() {
        // One value with many options, and options spread over several fields.
        let many: Vec<String> = (0..40).map(|i| format!("X-Opt-{i}")).collect();
        let joined = format!(" ,, close,{}\t,Upgrade ", many.join(" , "));
        let mut o = ConnectionOptions::default();
        o.add(joined.as_bytes());
        o.add(b"content-length");
        assert!(o.close && o.upgrade);
        for i in 0..40 {
            assert!(o.names(format!("x-opt-{i}").as_bytes()), "{i}");
        }
        assert!(!o.names(b"x-opt-40") && !o.names(b"content-length") && !o.names(b""));
        let mut small = ConnectionOptions::default();
        small.add(b"a");
        small.add(b"b, c");
        assert!(small.names(b"A") && small.names(b"c") && !small.names(b"d"));
        assert!(!small.close && !small.upgrade);
    }

    #[test]
    fn only_websocket_upgrades_with_a_key_are_upgrades() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", key),
        ]));
        // RFC 6455 §1.3's example.
        assert_eq!(accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        for bad in [
            map(&[("upgrade", "websocket"), ("sec-websocket-key", key)]),
            map(&[("connection", "upgrade"), ("sec-websocket-key", key)]),
            map(&[("connection", "upgrade"), ("upgrade", "websocket")]),
            map(&[
                ("connection", "upgrade"),
                ("upgrade", "h2c"),
                ("sec-websocket-key", key),
            ]),
        ] {
            assert!(upgrade_request(&bad).is_none(), "{bad:?}");
        }
        // A Connection value with obs-text names no option, `upgrade` included, as on the fast
        // path (`ConnectionOptions::add`; the differential suite found the disagreement).
        let mut obs = map(&[("upgrade", "websocket"), ("sec-websocket-key", key)]);
        obs.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_bytes(b"upgrade, x-custom\xc2\xa0").unwrap(),
        );
        assert!(upgrade_request(&obs).is_none());
        let mut fast = ConnectionOptions::default();
        fast.add(b"upgrade, x-custom\xc2\xa0");
        assert!(!fast.upgrade);
        let want = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert!(websocket_switched(
            want,
            Some(want.as_bytes()),
            Some(b"websocket")
        ));
        assert!(!websocket_switched(want, Some(b"nope"), Some(b"websocket")));
        assert!(!websocket_switched(want, None, Some(b"websocket")));
        assert!(!websocket_switched(
            want,
            Some(want.as_bytes()),
            Some(b"h2c")
        ));
    }

    #[test]
    fn forwarded_headers_are_overwritten() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-prefix", "/evil"),
        ]);
        let hop = ClientHop {
            peer: "[::ffff:127.0.0.2]:5000".parse().unwrap(),
            local: "127.0.0.1:8000".parse().unwrap(),
        };
        let host = HeaderValue::from_static("example.com:8443");
        set_forwarded(&mut h, Some(&host), &hop, None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com:8443");
        assert_eq!(h["x-forwarded-port"], "8443");
        assert!(h.get("x-forwarded-prefix").is_none());
        assert!(h.get("forwarded").is_none());
        set_forwarded(&mut h, None, &hop, Some("/myapp/api"));
        assert_eq!(h["x-forwarded-port"], "8000");
        assert_eq!(h["x-forwarded-prefix"], "/myapp/api");
    }

    #[test]
    fn host_ports() {
        assert_eq!(port_of_host("a:1"), Some(1));
        assert_eq!(port_of_host("a"), None);
        assert_eq!(port_of_host("[::1]:8000"), Some(8000));
        assert_eq!(port_of_host("[::1]"), None);
        assert_eq!(port_of_host("a:notaport"), None);
    }

    proptest! {
        #[test]
        fn no_hop_by_hop_survives(names in proptest::collection::vec("[a-z][a-z-]{0,10}", 0..8)) {
            let mut h = HeaderMap::new();
            let conn = names.join(", ");
            if let Ok(v) = HeaderValue::from_str(&conn) { h.insert(header::CONNECTION, v); }
            for n in &names {
                h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
            }
            for n in HOP_BY_HOP.iter().filter(|n| **n != header::CONNECTION) {
                h.insert(n, HeaderValue::from_static("v"));
            }
            strip_hop_by_hop(&mut h);
            for n in &names { prop_assert!(h.get(n.as_str()).is_none()); }
            for n in &HOP_BY_HOP { prop_assert!(h.get(n).is_none()); }
        }
    }
}
