//! Keeping API redirects and cookies right under the public prefix.
//!
//! The API sees paths with the mount stripped, so it writes `Location: /items/1` and
//! `Set-Cookie: …; Path=/`. Publicly those live under `{root}{api}`. Like nginx's
//! `proxy_redirect default` and `proxy_cookie_path`, the gateway prefixes absolute paths that
//! are not already under the public prefix; absolute URLs are rewritten only when they point at
//! the request's own host or at the upstream itself.

use http::header::{HeaderMap, HeaderValue, LOCATION, SET_COOKIE};

fn prefixed(path: &str, prefix: &str) -> Option<String> {
    if !path.starts_with('/') || path.starts_with("//") {
        return None;
    }
    let under = path == prefix
        || path.starts_with(&format!("{prefix}/"))
        || path.starts_with(&format!("{prefix}?"));
    (!under).then(|| {
        if path == "/" {
            format!("{prefix}/")
        } else {
            format!("{prefix}{path}")
        }
    })
}

fn rewrite_location(
    value: &str,
    prefix: &str,
    public_host: Option<&str>,
    upstream: &str,
    public_origin: Option<&str>,
) -> Option<String> {
    if value.starts_with('/') {
        return prefixed(value, prefix);
    }
    let (scheme, rest) = value.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let own = public_host.is_some_and(|h| h.eq_ignore_ascii_case(authority));
    let upstream_self = !upstream.is_empty() && authority.eq_ignore_ascii_case(upstream);
    if !own && !upstream_self {
        return None;
    }
    let path = prefixed(path, prefix).unwrap_or_else(|| path.to_owned());
    match (upstream_self, public_origin) {
        (true, Some(origin)) => Some(format!("{origin}{path}")),
        (true, None) => Some(path),
        _ => Some(format!("{scheme}://{authority}{path}")),
    }
}

fn rewrite_cookie(value: &str, prefix: &str) -> Option<String> {
    let mut changed = false;
    let parts: Vec<String> = value
        .split(';')
        .map(|attr| {
            let t = attr.trim_start();
            if t.len() >= 5
                && t[..5].eq_ignore_ascii_case("path=")
                && let Some(p) = prefixed(t[5..].trim(), prefix)
            {
                changed = true;
                let lead = &attr[..attr.len() - t.len()];
                return format!("{lead}Path={p}");
            }
            attr.to_owned()
        })
        .collect();
    changed.then(|| parts.join(";"))
}

/// Where an API response is rewritten to: the public side of the API hop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Public<'a> {
    /// The public API prefix (`/myapp/api`, `Inner::api_public_prefix`); empty: nothing is
    /// rewritten.
    pub(crate) prefix: &'a str,
    /// The host (authority) the client used, as the client view resolves it.
    pub(crate) host: Option<&'a str>,
    /// The upstream's authority (empty for an in-process API).
    pub(crate) upstream: &'a str,
    /// `scheme://host` as the client sees it.
    pub(crate) origin: Option<&'a str>,
}

/// A field value as text, as `HeaderValue::to_str` reads it (visible ASCII and tab), else
/// `None` (such a value is left alone).
fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// A rewritten value, when it is a valid field value (RFC 9110 §5.5, as
/// `HeaderValue::from_str` checks it); `None` leaves the original.
fn valid(new: String) -> Option<String> {
    new.bytes()
        .all(|b| b == b'\t' || (b >= 32 && b != 127))
        .then_some(new)
}

/// The rewritten value of an API response's (first) `Location` field, or `None` to leave it
/// as sent: an absolute path not under the public prefix is put under it; an absolute URL to
/// the client's own host or to the upstream is too (and one to the upstream is made public).
/// Both engines call it: [`api_response`] on a `HeaderMap`, the fast path on the raw head.
pub(crate) fn location(value: &[u8], to: &Public<'_>) -> Option<String> {
    if to.prefix.is_empty() {
        return None;
    }
    let v = text(value)?;
    valid(rewrite_location(
        v,
        to.prefix,
        to.host,
        to.upstream,
        to.origin,
    )?)
}

/// The rewritten value of one API response `Set-Cookie` field, or `None` to leave it as sent:
/// a `Path` attribute not under the public prefix is put under it. Both engines call it.
pub(crate) fn set_cookie(value: &[u8], to: &Public<'_>) -> Option<String> {
    if to.prefix.is_empty() {
        return None;
    }
    valid(rewrite_cookie(text(value)?, to.prefix)?)
}

/// Rewrites `Location` (the first; when it changes it replaces every `Location`) and each
/// `Set-Cookie` of an API response ([`location`], [`set_cookie`]), the `HeaderMap` interpreter
/// of the rule.
pub(crate) fn api_response(headers: &mut HeaderMap, to: &Public<'_>) {
    if let Some(new) = headers
        .get(LOCATION)
        .and_then(|v| location(v.as_bytes(), to))
        && let Ok(v) = HeaderValue::from_str(&new)
    {
        headers.insert(LOCATION, v);
    }
    if headers.contains_key(SET_COOKIE) {
        let cookies: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| {
                set_cookie(v.as_bytes(), to)
                    .and_then(|s| HeaderValue::from_str(&s).ok())
                    .map(|mut nv| {
                        nv.set_sensitive(true);
                        nv
                    })
                    .unwrap_or_else(|| v.clone())
            })
            .collect();
        headers.remove(SET_COOKIE);
        for c in cookies {
            headers.append(SET_COOKIE, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let up = "127.0.0.1:9000";
        let host = Some("app.example");
        let origin = Some("https://app.example");
        let r = |v: &str| rewrite_location(v, "/myapp/api", host, up, origin);
        assert_eq!(r("/items/1").as_deref(), Some("/myapp/api/items/1"));
        assert_eq!(r("/").as_deref(), Some("/myapp/api/"));
        assert_eq!(r("/myapp/api/items"), None, "already public");
        assert_eq!(
            r("//evil.example/x"),
            None,
            "scheme-relative URLs are left alone"
        );
        assert_eq!(
            r("https://app.example/items?x=1").as_deref(),
            Some("https://app.example/myapp/api/items?x=1")
        );
        assert_eq!(
            r("http://127.0.0.1:9000/items").as_deref(),
            Some("https://app.example/myapp/api/items")
        );
        assert_eq!(r("https://other.example/items"), None);
        assert_eq!(r("relative/path"), None);
    }

    #[test]
    fn cookies() {
        assert_eq!(
            rewrite_cookie("sid=1; Path=/; HttpOnly", "/myapp/api").as_deref(),
            Some("sid=1; Path=/myapp/api/; HttpOnly")
        );
        assert_eq!(
            rewrite_cookie("sid=1; path=/x", "/p").as_deref(),
            Some("sid=1; Path=/p/x")
        );
        assert_eq!(rewrite_cookie("sid=1; Path=/p/x", "/p"), None);
        assert_eq!(rewrite_cookie("sid=1; HttpOnly", "/p"), None);
    }

    #[test]
    fn headers_are_rewritten_in_place_and_repeated_cookies_kept() {
        let mut h = HeaderMap::new();
        h.insert(LOCATION, HeaderValue::from_static("/next"));
        h.append(SET_COOKIE, HeaderValue::from_static("a=1; Path=/"));
        h.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        api_response(
            &mut h,
            &Public {
                prefix: "/api",
                host: None,
                upstream: "127.0.0.1:1",
                origin: None,
            },
        );
        assert_eq!(h[LOCATION], "/api/next");
        let c: Vec<_> = h
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(c, vec!["a=1; Path=/api/", "b=2"]);
    }

    #[test]
    fn values_that_are_not_visible_text_and_an_empty_prefix_are_left_alone() {
        let to = Public {
            prefix: "/api",
            host: None,
            upstream: "",
            origin: None,
        };
        assert_eq!(location(b"/x\xff", &to), None);
        assert_eq!(set_cookie(b"a=1; Path=/\x01", &to), None);
        assert_eq!(location(b"/x", &to).as_deref(), Some("/api/x"));
        let none = Public { prefix: "", ..to };
        assert_eq!(location(b"/x", &none), None);
        assert_eq!(set_cookie(b"a=1; Path=/", &none), None);
    }
}
