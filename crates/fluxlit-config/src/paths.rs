//! Normalisation of path settings and upstream URLs.

/// Why a path setting was rejected.
pub type PathRejection = &'static str;

fn check_segments(path: &str) -> Result<(), PathRejection> {
    for seg in path.split('/').skip(1) {
        if seg.is_empty() {
            return Err("empty segment (`//`)");
        }
        if seg == "." || seg == ".." {
            return Err("`.` and `..` segments are not allowed");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err("only letters, digits and -._~ are allowed in a segment");
        }
    }
    Ok(())
}

/// Normalises a public mount (`root_path`): whitespace trimmed, `""` and `/` mean "no mount",
/// a leading `/` is added and trailing slashes are removed (`myapp/` → `/myapp`).
///
/// # Errors
/// Empty segments, dot segments, or characters outside RFC 3986's unreserved set.
pub fn normalize_root_path(raw: &str) -> Result<String, PathRejection> {
    let t = raw.trim().trim_end_matches('/');
    if t.is_empty() {
        return Ok(String::new());
    }
    let p = if t.starts_with('/') {
        t.to_owned()
    } else {
        format!("/{t}")
    };
    check_segments(&p)?;
    Ok(p)
}

/// Normalises the API mount as FluxLit does: whitespace trimmed, empty becomes `/api`, a leading
/// `/` is added and trailing slashes are removed (`v1/` → `/v1`).
///
/// # Errors
/// `/` (the API would hide the UI), empty or dot segments, or characters outside RFC 3986's
/// unreserved set.
pub fn normalize_api_mount(raw: &str) -> Result<String, PathRejection> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok("/api".into());
    }
    let t = t.trim_end_matches('/');
    if t.is_empty() {
        return Err("`/` would send every request to the API and hide the UI");
    }
    let p = if t.starts_with('/') {
        t.to_owned()
    } else {
        format!("/{t}")
    };
    check_segments(&p)?;
    Ok(p)
}

/// An `http://host[:port][/base]` upstream, split into parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 when the URL has none).
    pub port: u16,
    /// Normalised base path (`""` or `/seg…`), prepended to every forwarded path.
    pub base_path: String,
}

impl UpstreamUrl {
    /// `host:port` as used in a URI authority (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses an upstream URL.
///
/// # Errors
/// A scheme other than `http`, user info, a query or fragment, a missing host, a bad port, or an
/// invalid base path.
pub fn parse_upstream_url(raw: &str) -> Result<UpstreamUrl, PathRejection> {
    let rest = raw
        .trim()
        .strip_prefix("http://")
        .ok_or("the scheme must be http:// (TLS to upstreams is not supported)")?;
    if rest.contains(['?', '#']) {
        return Err("no query or fragment");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("no user info");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or("unclosed `[` in IPv6 host")?;
        let host = &v6[..end];
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("junk after the IPv6 host"),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host");
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| "the port must be 1-65535")?,
        None => 80,
    };
    if port == 0 {
        return Err("the port must be 1-65535");
    }
    let base_path = normalize_root_path(path)?;
    Ok(UpstreamUrl {
        host: host.to_owned(),
        port,
        base_path,
    })
}

/// An IP network: an address and a prefix length (`/32` or `/128` for a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network address (host bits are ignored when matching).
    pub addr: std::net::IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address matches IPv4 networks).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `10.0.0.0/8`, `192.168.1.10`, `fd00::/8` or `::1`.
///
/// # Errors
/// Not an IP address, or a prefix longer than the address.
pub fn parse_ip_net(text: &str) -> Result<IpNet, PathRejection> {
    let t = text.trim();
    let (addr, prefix) = match t.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (t, None),
    };
    let addr: std::net::IpAddr = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "not an IP address")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or("the prefix length is out of range")?,
        None => max,
    };
    Ok(IpNet { addr, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_networks() {
        let net = parse_ip_net("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(
            parse_ip_net("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let one = parse_ip_net("127.0.0.1").unwrap();
        assert!(
            one.contains("127.0.0.1".parse().unwrap())
                && !one.contains("127.0.0.2".parse().unwrap())
        );
        let v6 = parse_ip_net("fd00::/8").unwrap();
        assert!(
            v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap())
        );
        assert!(
            parse_ip_net("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "::1/129", "1.2.3.4/x", ""] {
            assert!(parse_ip_net(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn root_paths() {
        assert_eq!(normalize_root_path(""), Ok(String::new()));
        assert_eq!(normalize_root_path("/"), Ok(String::new()));
        assert_eq!(normalize_root_path(" myapp/ "), Ok("/myapp".into()));
        assert_eq!(
            normalize_root_path("/apps/my-app"),
            Ok("/apps/my-app".into())
        );
        assert!(normalize_root_path("/a//b").is_err());
        assert!(normalize_root_path("/a/../b").is_err());
        assert!(normalize_root_path("/a b").is_err());
        assert!(normalize_root_path("/a%2Fb").is_err());
    }

    #[test]
    fn api_mounts() {
        assert_eq!(normalize_api_mount(""), Ok("/api".into()));
        assert_eq!(normalize_api_mount("v1/"), Ok("/v1".into()));
        assert_eq!(normalize_api_mount("/api"), Ok("/api".into()));
        assert!(normalize_api_mount("/").is_err());
        assert!(normalize_api_mount("//").is_err());
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream_url("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("127.0.0.1", 9000, "")
        );
        let u = parse_upstream_url("http://[::1]:81/v1/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("::1", 81, "/v1")
        );
        assert_eq!(u.authority(), "[::1]:81");
        assert_eq!(parse_upstream_url("http://api.internal").unwrap().port, 80);
        for bad in [
            "https://x:1",
            "ftp://x",
            "http://:80",
            "http://x:0",
            "http://x:99999",
            "http://u@x:1",
            "http://x:1/?q",
            "x:1",
        ] {
            assert!(parse_upstream_url(bad).is_err(), "{bad}");
        }
    }
}
