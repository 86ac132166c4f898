//! Hop-by-hop header handling (RFC 9110 §7.6.1) and the forwarded headers the gateway sets.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields that are never forwarded, besides those named in `Connection`
/// (RFC 9110 §7.6.1 lists Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
/// Upgrade; Trailer and the Proxy-Authenticate/-Authorization pair are hop-by-hop by RFC 7230's
/// list and common proxy practice; `Expect` is answered by the gateway on the client hop).
pub const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::EXPECT,
];

/// The forwarded headers the gateway owns: inbound copies are dropped and replaced.
pub const FORWARDED_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    header::FORWARDED,
];

/// Removes hop-by-hop headers in place: the fixed [`HOP_BY_HOP`] list and every field named in
/// any `Connection` header value (RFC 9110 §7.6.1).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fields named by Connection must go too; collect them before removing Connection itself.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `Upgrade` value when the request asks for a protocol upgrade (HTTP/1.1: `Connection`
/// contains the `upgrade` token and an `Upgrade` field is present, RFC 9110 §7.8).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
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

/// Replaces inbound forwarded headers with the gateway's own: `X-Forwarded-For` (the peer),
/// `-Proto` (`http`), `-Host` (the request's host), `-Port` (from the host, else the local port)
/// and `-Prefix` when `prefix` is given. Trusting inbound values from a proxy is not done here.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    hop: &ClientHop,
    prefix: Option<&str>,
) {
    for name in &FORWARDED_HEADERS {
        headers.remove(name);
    }
    let ip = hop.peer_ip().to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(&FORWARDED_HEADERS[0], v);
    }
    headers.insert(&FORWARDED_HEADERS[1], HeaderValue::from_static("http"));
    let port = host
        .and_then(|h| h.to_str().ok())
        .and_then(port_of_host)
        .unwrap_or(hop.local.port());
    if let Some(h) = host {
        headers.insert(&FORWARDED_HEADERS[2], h.clone());
    }
    headers.insert(&FORWARDED_HEADERS[3], HeaderValue::from(port));
    if let Some(p) = prefix.filter(|p| !p.is_empty())
        && let Ok(v) = HeaderValue::from_str(p)
    {
        headers.insert(&FORWARDED_HEADERS[4], v);
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
    fn detects_upgrades() {
        assert!(
            upgrade_request(&map(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ]))
            .is_some()
        );
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_request(&map(&[("connection", "upgrade")])).is_none());
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
