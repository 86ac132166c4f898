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

/// Rewrites `Location` and `Set-Cookie` paths of an API response. `prefix` is the public API
/// prefix (`/myapp/api`), `public_host` the host the client used, `upstream` the upstream's
/// authority, `public_origin` `scheme://host` as the client sees it.
pub(crate) fn api_response(
    headers: &mut HeaderMap,
    prefix: &str,
    public_host: Option<&str>,
    upstream: &str,
    public_origin: Option<&str>,
) {
    if prefix.is_empty() {
        return;
    }
    if let Some(loc) = headers.get(LOCATION).and_then(|v| v.to_str().ok())
        && let Some(new) = rewrite_location(loc, prefix, public_host, upstream, public_origin)
        && let Ok(v) = HeaderValue::from_str(&new)
    {
        headers.insert(LOCATION, v);
    }
    if headers.contains_key(SET_COOKIE) {
        let cookies: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| rewrite_cookie(s, prefix))
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
        api_response(&mut h, "/api", None, "127.0.0.1:1", None);
        assert_eq!(h[LOCATION], "/api/next");
        let c: Vec<_> = h
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(c, vec!["a=1; Path=/api/", "b=2"]);
    }
}
