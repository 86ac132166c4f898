//! Forwarded-header trust: what the gateway believes about the client (IP, scheme, host, port,
//! public prefix), and the forwarded headers it sends on every upstream hop.
//!
//! From a trusted peer (`trust_proxy` on and the TCP peer in `forwarded_allow_ips`, loopback
//! only when the list is empty) the gateway reads ONE header family per request: the
//! `X-Forwarded-*` family when any of `X-Forwarded-For`, `-Proto` or `-Host` is present, else
//! RFC 7239 `Forwarded`; the other family is ignored entirely (common edges set the former and
//! pass the latter through from the client, so a client's `Forwarded: host=evil.example` never
//! fills a gap). Of each field it believes the value the NEAREST hop wrote: the last list
//! element across all its lines (an edge that appends puts its value last; one that overwrites
//! leaves one value), never the first, which the client may have written. It takes:
//! - the client IP from `X-Forwarded-For` (or `Forwarded: for=`), walking right to left past
//!   trusted addresses (the first untrusted address is the client);
//! - the scheme from the last `X-Forwarded-Proto` (or the last element's `proto=`), `http` or
//!   `https` only;
//! - the host from the last `X-Forwarded-Host` (or the last element's `host=`), a valid
//!   authority only; else the request's `Host`;
//! - the port from the last `X-Forwarded-Port` only when [`TrustPolicy::forwarded_port`] is on
//!   (`trust_forwarded_port`), else the forwarded host's port, else the scheme's default;
//! - the public prefix from the last `X-Forwarded-Prefix` only when
//!   [`TrustPolicy::forwarded_prefix`] is on (`trust_forwarded_prefix`), a valid path prefix
//!   only; else the gateway's own root path. Few edges set or clear these two by default, so a
//!   client's value would pass through them: they are opt-in.
//!
//! From anyone else all of these are ignored, and on every hop the gateway overwrites them:
//! `X-Forwarded-For` is the trusted inbound chain plus the peer (or just the peer),
//! `-Proto/-Host/-Port` are the effective values, `-Prefix` is set when there is a prefix,
//! and `Forwarded` / `X-Real-IP` are removed.

use std::net::{IpAddr, SocketAddr};

use fluxlit_config::IpNet;
use fluxlit_headers::Class;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// The forwarded fields the gateway sets, by their header-catalogue names.
pub(crate) const XFF: HeaderName = HeaderName::from_static(fluxlit_headers::X_FORWARDED_FOR);
pub(crate) const XFP: HeaderName = HeaderName::from_static(fluxlit_headers::X_FORWARDED_PROTO);
pub(crate) const XFH: HeaderName = HeaderName::from_static(fluxlit_headers::X_FORWARDED_HOST);
pub(crate) const XFPORT: HeaderName = HeaderName::from_static(fluxlit_headers::X_FORWARDED_PORT);
pub(crate) const XFPREFIX: HeaderName =
    HeaderName::from_static(fluxlit_headers::X_FORWARDED_PREFIX);

/// Which peers' forwarded headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    enabled: bool,
    nets: Vec<IpNet>,
    prefix: bool,
    port: bool,
}

impl TrustPolicy {
    /// Trust nobody (the default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Trust peers in `nets`; an empty list means loopback only (`127.0.0.0/8`, `::1`).
    pub fn trusting(nets: Vec<IpNet>) -> Self {
        let nets = if nets.is_empty() {
            vec![
                IpNet {
                    addr: IpAddr::from([127, 0, 0, 0]),
                    prefix: 8,
                },
                IpNet {
                    addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                    prefix: 128,
                },
            ]
        } else {
            nets
        };
        Self {
            enabled: true,
            nets,
            prefix: false,
            port: false,
        }
    }

    /// Also believe a trusted peer's `X-Forwarded-Prefix` (`trust_forwarded_prefix`). Default:
    /// off (the gateway's root path is the public prefix).
    pub fn forwarded_prefix(mut self, on: bool) -> Self {
        self.prefix = on;
        self
    }

    /// Also believe a trusted peer's `X-Forwarded-Port` (`trust_forwarded_port`). Default: off
    /// (the port comes from the forwarded host, else the scheme's default).
    pub fn forwarded_port(mut self, on: bool) -> Self {
        self.port = on;
        self
    }

    /// Whether forwarded headers are trusted at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.enabled && self.nets.iter().any(|n| n.contains(ip))
    }
}

/// What the gateway believes about the client of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientView {
    /// The TCP peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client IP (the peer unless a trusted proxy said otherwise).
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// The public host (authority), if known.
    pub host: Option<HeaderValue>,
    /// The public port.
    pub port: u16,
    /// The public prefix a trusted proxy stripped, if it said so.
    pub prefix: Option<String>,
    /// The trusted inbound `X-Forwarded-For` value, to append the peer to.
    pub chain: Option<String>,
}

/// A host value that is a valid URI authority (the `Host` rule, [`crate::headers::valid_host`]).
fn valid_host(v: &str) -> bool {
    crate::headers::valid_host(v.as_bytes())
}

/// The last list element of `name` across all its lines: the value the nearest hop wrote.
fn last_value<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty())
}

/// Parses one `X-Forwarded-For` / `Forwarded for=` node: `1.2.3.4`, `1.2.3.4:5`, `::1`,
/// `[::1]`, `[::1]:5` (quotes allowed). `unknown` and obfuscated identifiers are `None`.
pub fn parse_node(node: &str) -> Option<IpAddr> {
    let n = node.trim().trim_matches('"');
    if let Ok(ip) = n.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = n.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    n.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The `(for, proto, host)` pairs of an RFC 7239 `Forwarded` header, in order.
pub fn parse_forwarded(value: &str) -> Vec<(Option<String>, Option<String>, Option<String>)> {
    let mut out = Vec::new();
    for element in split_outside_quotes(value, ',') {
        let (mut f, mut p, mut h) = (None, None, None);
        for pair in split_outside_quotes(&element, ';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .map_or_else(|| v.to_owned(), |x| x.replace("\\\"", "\""));
            match k.trim().to_ascii_lowercase().as_str() {
                "for" => f = Some(v),
                "proto" => p = Some(v),
                "host" => h = Some(v),
                _ => {}
            }
        }
        out.push((f, p, h));
    }
    out
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Walks `nodes` (leftmost = original client) right to left from a trusted `peer`; returns the
/// first untrusted address, or the leftmost valid one when all are trusted.
fn walk(policy: &TrustPolicy, peer: IpAddr, nodes: &[&str]) -> IpAddr {
    let mut client = peer;
    for node in nodes.iter().rev() {
        if !policy.trusts(client) {
            break;
        }
        match parse_node(node) {
            Some(ip) => client = ip.to_canonical(),
            None => break,
        }
    }
    client
}

impl ClientView {
    /// Resolves the view of a request from `peer` with `headers`; `local_port` is the gateway's
    /// own port (used when the request names none).
    pub fn resolve(
        policy: &TrustPolicy,
        peer: SocketAddr,
        local_port: u16,
        headers: &HeaderMap,
    ) -> Self {
        let peer_ip = peer.ip().to_canonical();
        let host_header = headers.get(header::HOST).cloned();
        let untrusted = || {
            let port = host_header
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .and_then(crate::headers::port_of_host)
                .unwrap_or(local_port);
            ClientView {
                peer: peer_ip,
                peer_trusted: false,
                client_ip: peer_ip,
                proto: "http",
                host: host_header.clone(),
                port,
                prefix: None,
                chain: None,
            }
        };
        if !policy.trusts(peer_ip) {
            return untrusted();
        }
        // One family per request: X-Forwarded-* when any of its core fields is present.
        let x_family = [&XFF, &XFP, &XFH].iter().any(|n| headers.contains_key(*n));
        let xff: Vec<&str> = headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let forwarded: Vec<_> = if x_family {
            Vec::new()
        } else {
            headers
                .get_all(header::FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_forwarded)
                .collect()
        };
        let (client_ip, chain) = if !xff.is_empty() {
            (walk(policy, peer_ip, &xff), Some(xff.join(", ")))
        } else if !forwarded.is_empty() {
            let fors: Vec<&str> = forwarded
                .iter()
                .filter_map(|(f, _, _)| f.as_deref())
                .collect();
            let chain = fors
                .iter()
                .filter_map(|f| parse_node(f))
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            (
                walk(policy, peer_ip, &fors),
                (!chain.is_empty()).then_some(chain),
            )
        } else {
            (peer_ip, None)
        };
        // The nearest hop's values: the last X-Forwarded-* element, or the last Forwarded
        // element's parameters.
        let nearest = forwarded.last();
        let proto = if x_family {
            last_value(headers, &XFP).map(str::to_owned)
        } else {
            nearest.and_then(|(_, p, _)| p.clone())
        }
        .and_then(|p| match p.to_ascii_lowercase().as_str() {
            "https" | "wss" => Some("https"),
            "http" | "ws" => Some("http"),
            _ => None,
        })
        .unwrap_or("http");
        let host = if x_family {
            last_value(headers, &XFH).map(str::to_owned)
        } else {
            nearest.and_then(|(_, _, h)| h.clone())
        }
        .filter(|h| valid_host(h))
        .and_then(|h| HeaderValue::from_str(&h).ok())
        .or(host_header);
        let port = last_value(headers, &XFPORT)
            .filter(|_| policy.port)
            .and_then(|p| p.parse::<u16>().ok())
            .or_else(|| {
                host.as_ref()
                    .and_then(|h| h.to_str().ok())
                    .and_then(crate::headers::port_of_host)
            })
            .unwrap_or(if proto == "https" { 443 } else { 80 });
        let prefix = last_value(headers, &XFPREFIX)
            .filter(|_| policy.prefix)
            .and_then(|p| fluxlit_config::normalize_root_path(p).ok())
            .filter(|p| !p.is_empty());
        ClientView {
            peer: peer_ip,
            peer_trusted: true,
            client_ip,
            proto,
            host,
            port,
            prefix,
            chain,
        }
    }

    /// Sets the forwarded headers for an upstream hop, replacing inbound ones; `prefix` is the
    /// value for `X-Forwarded-Prefix` (none when `None` or empty).
    pub fn apply(&self, headers: &mut HeaderMap, prefix: Option<&str>) {
        for name in &REPLACED_ON_HOP {
            headers.remove(name);
        }
        // Other spellings (`X_Forwarded_For`, `x_request_id`), which CGI/WSGI servers read as
        // the real ones. The canonical `X-Request-ID` is the gateway's, set by the caller.
        let spelled: Vec<HeaderName> = headers
            .keys()
            .filter(|k| {
                *k != crate::observe::REQUEST_ID && is_replaced_on_hop(k.as_str().as_bytes())
            })
            .cloned()
            .collect();
        for name in spelled {
            headers.remove(name);
        }
        for (name, value) in self.forwarded_fields(prefix) {
            headers.insert(name, value);
        }
    }

    /// The forwarded headers [`ClientView::apply`] sets, in order: `X-Forwarded-For`, `-Proto`,
    /// `-Host` (when known), `-Port`, `-Prefix` (when `prefix` is non-empty).
    pub fn forwarded_fields(
        &self,
        prefix: Option<&str>,
    ) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let xff = match &self.chain {
            Some(chain) => format!("{chain}, {}", self.peer),
            None => self.peer.to_string(),
        };
        [
            HeaderValue::from_str(&xff).ok().map(|v| (XFF, v)),
            Some((XFP, HeaderValue::from_static(self.proto))),
            self.host.clone().map(|h| (XFH, h)),
            Some((XFPORT, HeaderValue::from(self.port))),
            prefix
                .filter(|p| !p.is_empty())
                .and_then(|p| HeaderValue::from_str(p).ok())
                .map(|v| (XFPREFIX, v)),
        ]
        .into_iter()
        .flatten()
    }
}

/// Whether a raw field name is one the gateway owns on every hop ([`REPLACED_ON_HOP`] or
/// `X-Request-ID`, the header catalogue's [`Class::Forwarded`] and [`Class::RequestId`]) in
/// any spelling: letter case, and `_` for `-` (CGI/WSGI servers read `X_Forwarded_For` as
/// `X-Forwarded-For`, RFC 3875 §4.1.18). Such fields from a client are never forwarded; only
/// the canonical spellings are ever read from a trusted proxy.
pub fn is_replaced_on_hop(name: &[u8]) -> bool {
    REPLACED_ON_HOP
        .iter()
        .any(|n| fluxlit_headers::name_eq_normalized(name, n.as_str()))
        || fluxlit_headers::name_eq_normalized(name, fluxlit_headers::REQUEST_ID)
}

/// Inbound headers every upstream hop drops: the gateway sets its own forwarded headers
/// ([`ClientView::forwarded_fields`]) and sends neither `Forwarded` nor `X-Real-IP`. The header
/// catalogue's [`Class::Forwarded`] view (`X-Forwarded-For`, `-Proto`, `-Host`, `-Port`,
/// `-Prefix`, `Forwarded`, `X-Real-IP`), built at compile time.
pub const REPLACED_ON_HOP: [HeaderName; 7] = fluxlit_headers::header_names(Class::Forwarded);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replaced_on_hop_is_the_catalogue_forwarded_and_request_id_names_in_any_spelling() {
        for e in fluxlit_headers::CATALOGUE {
            let owned =
                e.classes.contains(Class::Forwarded) || e.classes.contains(Class::RequestId);
            for raw in [
                e.name.to_owned(),
                e.name.to_ascii_uppercase(),
                e.name.replace('-', "_"),
            ] {
                assert_eq!(is_replaced_on_hop(raw.as_bytes()), owned, "{raw}");
            }
        }
        assert_eq!(
            REPLACED_ON_HOP.map(|n| n.as_str().to_owned()),
            fluxlit_headers::names::<7>(Class::Forwarded).map(str::to_owned)
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn nets(list: &[&str]) -> TrustPolicy {
        TrustPolicy::trusting(
            list.iter()
                .map(|n| fluxlit_config::parse_ip_net(n).unwrap())
                .collect(),
        )
    }

    const PEER: &str = "10.0.0.5:40000";

    #[test]
    fn untrusted_peers_are_ignored() {
        let h = headers(&[
            ("host", "app.example:8443"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let v = ClientView::resolve(&TrustPolicy::none(), PEER.parse().unwrap(), 8000, &h);
        assert_eq!(v.client_ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!((v.proto, v.port, v.chain.clone()), ("http", 8443, None));
        assert_eq!(v.host.unwrap(), "app.example:8443");
        // Trust on, but the peer is not in the list.
        let v = ClientView::resolve(&nets(&["192.168.0.0/16"]), PEER.parse().unwrap(), 8000, &h);
        assert!(!v.peer_trusted);
        assert_eq!(v.proto, "http");
    }

    #[test]
    fn xff_is_walked_right_to_left_past_trusted_proxies() {
        let policy = nets(&["10.0.0.0/8"]).forwarded_prefix(true);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.1.1"),
            ("x-forwarded-proto", "HTTPS"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-prefix", "/myapp/"),
        ]);
        let v = ClientView::resolve(&policy, PEER.parse().unwrap(), 8000, &h);
        assert_eq!(
            v.client_ip,
            "203.0.113.7".parse::<IpAddr>().unwrap(),
            "6.6.6.6 was written by the untrusted client"
        );
        assert_eq!((v.proto, v.port), ("https", 443));
        assert_eq!(v.host.clone().unwrap(), "app.example");
        assert_eq!(v.prefix.as_deref(), Some("/myapp"));
        let mut out = HeaderMap::new();
        v.apply(&mut out, Some("/myapp/api"));
        assert_eq!(
            out["x-forwarded-for"],
            "6.6.6.6, 203.0.113.7, 10.1.1.1, 10.0.0.5"
        );
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-port"], "443");
        assert_eq!(out["x-forwarded-prefix"], "/myapp/api");
    }

    #[test]
    fn all_trusted_chain_gives_the_leftmost_and_garbage_stops_the_walk() {
        let policy = nets(&["10.0.0.0/8"]);
        let v = ClientView::resolve(
            &policy,
            PEER.parse().unwrap(),
            8000,
            &headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]),
        );
        assert_eq!(v.client_ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        let v = ClientView::resolve(
            &policy,
            PEER.parse().unwrap(),
            8000,
            &headers(&[("x-forwarded-for", "1.1.1.1, garbage, 10.1.1.1")]),
        );
        assert_eq!(v.client_ip, "10.1.1.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rfc7239_forwarded_with_quotes_and_ipv6() {
        let policy = TrustPolicy::trusting(vec![]);
        let h = headers(&[(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=http;host=client.example, for=127.0.0.1;proto=https;host=\"app.example:9443\"",
        )]);
        let v = ClientView::resolve(&policy, "127.0.0.1:5000".parse().unwrap(), 8000, &h);
        assert_eq!(v.client_ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        // The nearest (last) element's proto and host, not the client-written first one.
        assert_eq!((v.proto, v.port), ("https", 9443));
        assert_eq!(v.host.unwrap(), "app.example:9443");
        // X-Forwarded-For wins over Forwarded.
        let h = headers(&[("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "5.6.7.8")]);
        let v = ClientView::resolve(&policy, "[::1]:5000".parse().unwrap(), 8000, &h);
        assert_eq!(v.client_ip, "5.6.7.8".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_nearest_hop_wins_and_one_family_is_read() {
        let policy = TrustPolicy::trusting(vec![]);
        let peer = "127.0.0.1:5000".parse().unwrap();
        // An edge that appends: the client's values come first.
        let h = headers(&[
            ("host", "h:1"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-host", "app.example"),
        ]);
        let v = ClientView::resolve(&policy, peer, 8000, &h);
        assert_eq!((v.proto, v.port), ("http", 80));
        assert_eq!(v.host.unwrap(), "app.example");
        // X-Forwarded-* present: Forwarded fills no gap (no X-Forwarded-Host here).
        let h = headers(&[
            ("host", "h:1"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "proto=https;host=evil.example"),
        ]);
        let v = ClientView::resolve(&policy, peer, 8000, &h);
        assert_eq!(v.proto, "http");
        assert_eq!(v.host.unwrap(), "h:1");
    }

    #[test]
    fn prefix_and_port_are_believed_only_when_opted_in() {
        let peer = "127.0.0.1:5000".parse().unwrap();
        let h = headers(&[
            ("host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/attacker"),
            ("x-forwarded-port", "1"),
        ]);
        let v = ClientView::resolve(&TrustPolicy::trusting(vec![]), peer, 8000, &h);
        assert_eq!((v.port, v.prefix.clone()), (443, None));
        let opted = TrustPolicy::trusting(vec![])
            .forwarded_prefix(true)
            .forwarded_port(true);
        let v = ClientView::resolve(&opted, peer, 8000, &h);
        assert_eq!((v.port, v.prefix.as_deref()), (1, Some("/attacker")));
    }

    #[test]
    fn invalid_forwarded_values_are_ignored() {
        let policy = TrustPolicy::trusting(vec![])
            .forwarded_prefix(true)
            .forwarded_port(true);
        let h = headers(&[
            ("host", "h:1"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "bad host/x"),
            ("x-forwarded-prefix", "/a/../b"),
            ("x-forwarded-port", "99999"),
        ]);
        let v = ClientView::resolve(&policy, "127.0.0.1:5000".parse().unwrap(), 8000, &h);
        assert_eq!((v.proto, v.port, v.prefix.clone()), ("http", 1, None));
        assert_eq!(v.host.unwrap(), "h:1");
    }

    #[test]
    fn nodes() {
        assert_eq!(parse_node("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_node("1.2.3.4:80"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_node("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_node("\"[::1]\""), Some("::1".parse().unwrap()));
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_untrusted_input_never_changes_the_client(xff in "\\PC{0,60}", fwd in "\\PC{0,60}", proto in "\\PC{0,10}") {
            let mut h = HeaderMap::new();
            for (k, v) in [("x-forwarded-for", &xff), ("forwarded", &fwd), ("x-forwarded-proto", &proto)] {
                if let Ok(v) = HeaderValue::from_str(v) { h.insert(k, v); }
            }
            let v = ClientView::resolve(&TrustPolicy::none(), PEER.parse().unwrap(), 8000, &h);
            prop_assert_eq!(v.client_ip, "10.0.0.5".parse::<IpAddr>().unwrap());
            let _ = ClientView::resolve(&TrustPolicy::trusting(vec![]), "127.0.0.1:1".parse().unwrap(), 8000, &h);
        }
    }
}
