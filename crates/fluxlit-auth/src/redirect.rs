//! Where a login or logout may send the browser back to (`return_to`; AUTH.md A.4 rule 5): a
//! path on this site, under the root path, that no browser can read as another origin, or an
//! absolute URL whose origin is listed (`auth_allowed_redirect_origins`). Open redirects were
//! three of oauth2-proxy's advisories (GHSA-qqxw-m5fj-f7gv / CVE-2020-5233,
//! GHSA-j7px-6hwj-hpjg, GHSA-5m6c-jp6f-2vcv / CVE-2020-4037), all through forms such as
//! `//evil`, `/\evil` and their percent-encoded and whitespace-padded variants, which browsers
//! (WHATWG URL: `\` is `/` in special schemes, tabs and newlines are removed) resolve to another
//! host.

use percent_encoding::percent_decode_str;

/// The longest `return_to` accepted, bytes.
pub const MAX_RETURN_TO: usize = 2048;

/// `raw` as a safe return path under `root_path` (`""` or `/prefix`, no trailing slash), or
/// `None`. Accepted: a path-absolute reference (RFC 3986 §4.2) that starts with exactly one
/// `/`, is under the root path (the root path itself, with or without its trailing slash, or a
/// path below it), and has an optional query and fragment. Refused, in the raw form and after
/// percent-decoding (once, and the result must not decode further to something refused):
/// anything with a scheme or authority (`//`, `/\`, `\`), control characters, whitespace, `\`
/// anywhere, and dot segments (`.`/`..`, RFC 3986 §5.2.4), which could climb out of the root
/// path. Returned unchanged (as received), so what the browser is sent is what was checked.
pub fn safe_return_to(raw: &str, root_path: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_RETURN_TO {
        return None;
    }
    let once = percent_decode_str(raw).decode_utf8().ok()?;
    let twice = percent_decode_str(&once).decode_utf8().ok()?;
    for form in [raw, once.as_ref(), twice.as_ref()] {
        if !shape_ok(form, root_path) {
            return None;
        }
    }
    Some(raw.to_owned())
}

/// The places a login may return to: paths under the root path of this site, and absolute
/// URLs on this site's origin (under the root path too) or on one of the listed origins
/// (`auth_allowed_redirect_origins`).
#[derive(Debug, Clone)]
pub struct ReturnRules {
    root_path: String,
    public: url::Origin,
    allowed: Vec<url::Origin>,
}

/// Why [`ReturnRules::new`] refused an origin.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{value:?} is not an origin: expected scheme://host[:port] with http or https, no user, path, query or fragment"
)]
pub struct OriginError {
    /// The value refused.
    pub value: String,
}

/// `value` as a WHATWG origin (scheme, host, port; the default port of the scheme is the
/// same as none): an `http`/`https` URL without user, password, query or fragment, and no
/// path but `/`.
fn parse_origin(value: &str) -> Result<url::Origin, OriginError> {
    let bad = || OriginError {
        value: value.to_owned(),
    };
    if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err(bad());
    }
    let u = url::Url::parse(value).map_err(|_| bad())?;
    let plain = matches!(u.scheme(), "http" | "https")
        && u.host().is_some()
        && u.username().is_empty()
        && u.password().is_none()
        && u.query().is_none()
        && u.fragment().is_none()
        && u.path() == "/";
    if plain { Ok(u.origin()) } else { Err(bad()) }
}

impl ReturnRules {
    /// Rules for a site whose public origin is `public_origin` (`scheme://host[:port]`) and
    /// whose root path is `root_path` (`""` or `/prefix`), allowing absolute return URLs on
    /// `allowed_origins` too.
    ///
    /// # Errors
    /// [`OriginError`] naming the first value that is not an http(s) origin.
    pub fn new(
        root_path: &str,
        public_origin: &str,
        allowed_origins: &[String],
    ) -> Result<Self, OriginError> {
        Ok(Self {
            root_path: root_path.to_owned(),
            public: parse_origin(public_origin)?,
            allowed: allowed_origins
                .iter()
                .map(|o| parse_origin(o))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Where the browser may go for `raw`, or why not (for the log). A relative value is
    /// checked by [`safe_return_to`] and returned unchanged. An absolute one must be an
    /// `http`/`https` URL (scheme case does not matter) with no control character, whitespace
    /// or `\` anywhere, no user or password, whose origin (WHATWG URL: scheme, host and port
    /// after parsing, the scheme's default port equal to none) equals a listed origin exactly
    /// (no prefix or suffix matching), or this site's origin with a path under the root path;
    /// it is returned as the parser serialises it, so what the browser is sent is what was
    /// checked.
    ///
    /// # Errors
    /// A short reason naming the rule that refused `raw`.
    pub fn check(&self, raw: &str) -> Result<String, &'static str> {
        if raw.is_empty() || raw.len() > MAX_RETURN_TO {
            return Err("empty or longer than 2048 bytes");
        }
        let scheme_end = raw.find(':');
        let before_path = raw.find(['/', '?', '#']);
        let absolute = scheme_end.is_some_and(|c| before_path.is_none_or(|p| c < p))
            && ["http:", "https:"].iter().any(|scheme| {
                raw.get(..scheme.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
            });
        if !absolute {
            return safe_return_to(raw, &self.root_path).ok_or(
                "not a path of this site under the root path (or a scheme other than http/https)",
            );
        }
        if raw
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
        {
            return Err("an absolute URL with a control character, whitespace or a backslash");
        }
        let u = url::Url::parse(raw).map_err(|_| "not a valid absolute URL")?;
        if !raw
            .get(u.scheme().len()..)
            .is_some_and(|rest| rest.starts_with("://"))
        {
            return Err("an absolute URL without `//` after its scheme");
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("an absolute URL with a user or password");
        }
        let origin = u.origin();
        if origin == self.public {
            let rest = &u[url::Position::BeforePath..];
            return safe_return_to(rest, &self.root_path)
                .map(|_| u.to_string())
                .ok_or("this site's origin, but not under the root path");
        }
        if self.allowed.contains(&origin) {
            return Ok(u.to_string());
        }
        Err("an absolute URL whose origin is not in auth_allowed_redirect_origins")
    }
}

fn shape_ok(s: &str, root_path: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'/') || matches!(bytes.get(1), Some(b'/' | b'\\')) {
        return false;
    }
    if s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return false;
    }
    let path = s.split(['?', '#']).next().unwrap_or("");
    if path.split('/').any(|seg| {
        seg == "."
            || seg == ".."
            || seg.eq_ignore_ascii_case("%2e")
            || seg.eq_ignore_ascii_case("%2e%2e")
            || seg.eq_ignore_ascii_case(".%2e")
            || seg.eq_ignore_ascii_case("%2e.")
    }) {
        return false;
    }
    root_path.is_empty()
        || path == root_path
        || path
            .strip_prefix(root_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepted_and_refused() {
        for ok in ["/", "/page?x=1#top", "/a/b/", "/_stcore/x"] {
            assert_eq!(safe_return_to(ok, "").as_deref(), Some(ok), "{ok}");
        }
        for ok in ["/myapp", "/myapp/", "/myapp/page?tab=2"] {
            assert_eq!(safe_return_to(ok, "/myapp").as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "page",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2F%2Fevil.example",
            "/%2f/evil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/ /evil.example",
            "/%0d%0aSet-Cookie:x",
            "https://evil.example/",
            "javascript:alert(1)",
            "/%252F%252Fevil.example",
            "/a/../../evil",
            "/a/%2e%2e/b",
            "/./x",
        ] {
            assert_eq!(safe_return_to(bad, ""), None, "{bad}");
        }
        for bad in [
            "/",
            "/other",
            "/myappx",
            "/myapp/../other",
            "/myapp%2F..%2Fother",
        ] {
            assert_eq!(safe_return_to(bad, "/myapp"), None, "{bad}");
        }
    }

    fn rules(root: &str) -> ReturnRules {
        ReturnRules::new(
            root,
            "https://app.example",
            &[
                "https://good.example".to_owned(),
                "http://127.0.0.1:8501".to_owned(),
                "https://port.example:8443".to_owned(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn absolute_urls_only_to_listed_origins() {
        let r = rules("");
        for (raw, want) in [
            ("https://good.example/", "https://good.example/"),
            ("https://good.example", "https://good.example/"),
            (
                "https://good.example/a?b=1#c",
                "https://good.example/a?b=1#c",
            ),
            ("HTTPS://GOOD.example/x", "https://good.example/x"),
            ("https://good.example:443/x", "https://good.example/x"),
            ("http://127.0.0.1:8501/p", "http://127.0.0.1:8501/p"),
            ("https://port.example:8443/", "https://port.example:8443/"),
            // Percent-encoded slashes in the path stay on the listed origin.
            (
                "https://good.example/%2F%2Fevil",
                "https://good.example/%2F%2Fevil",
            ),
            // This site's own origin, under the root path.
            ("https://app.example/page", "https://app.example/page"),
            ("https://app.example:443/", "https://app.example/"),
            // Relative paths are unchanged.
            ("/page?x=1", "/page?x=1"),
        ] {
            assert_eq!(r.check(raw).as_deref(), Ok(want), "{raw}");
        }
        for bad in [
            "//evil.example",
            "//good.example/",
            "/\\evil.example",
            "\\\\good.example",
            "https://good.example@evil.example/",
            "https://user:pw@good.example/",
            "https://good.example.evil.example/",
            "https://evil.example/good.example",
            "https://evilgood.example/",
            "https://good.example.",
            "http://good.example/",
            "https://good.example:8443/",
            "https://port.example/",
            "http://127.0.0.1:8502/",
            "http://localhost:8501/",
            "https://good.example\\@evil.example/",
            "https:\\\\good.example/",
            "https:good.example/",
            "https:/good.example/",
            "https://good.example/\tx",
            "https://go\tod.example/",
            "https://good.example/\nx",
            " https://good.example/",
            "https://good.example/ x",
            "https%3A%2F%2Fgood.example/",
            "/%2F%2Fevil.example",
            "/%5Cevil.example",
            "javascript:alert(1)",
            "JavaScript://good.example/%0aalert(1)",
            "data:text/html,x",
            "ftp://good.example/",
            "https://%67ood.example.evil/",
            "https://app.example.evil/",
            "http://app.example/",
            "https://app.example//evil.example",
        ] {
            assert!(r.check(bad).is_err(), "{bad:?} -> {:?}", r.check(bad));
        }
        // This site's origin stays under the root path.
        let under = rules("/myapp");
        assert_eq!(
            under.check("https://app.example/myapp/x").as_deref(),
            Ok("https://app.example/myapp/x")
        );
        assert!(under.check("https://app.example/other").is_err());
        assert!(under.check("https://app.example/myapp/../other").is_err());
        // A listed origin need not be under the root path.
        assert!(under.check("https://good.example/other").is_ok());
        // Nothing listed: only this site.
        let none = ReturnRules::new("", "https://app.example", &[]).unwrap();
        assert!(none.check("https://good.example/").is_err());
        assert!(none.check("https://app.example/x").is_ok());
    }

    #[test]
    fn listed_origins_must_be_origins() {
        for bad in [
            "good.example",
            "https://good.example/path",
            "https://u@good.example",
            "ftp://good.example",
            "https://good.example?x",
            "https://good.example#x",
            " https://good.example",
        ] {
            let e = ReturnRules::new("", "https://app.example", &[bad.to_owned()]).unwrap_err();
            assert_eq!(e.value, bad);
        }
        assert!(
            ReturnRules::new(
                "",
                "https://app.example",
                &["https://good.example/".to_owned()]
            )
            .is_ok()
        );
    }

    /// What the browser would make of an accepted value: WHATWG URL parsing removes tabs and
    /// newlines and reads `\` as `/`; the result must still be a path on this origin.
    fn browser_view(s: &str) -> String {
        s.chars()
            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
            .map(|c| if c == '\\' { '/' } else { c })
            .collect()
    }

    proptest! {
        #[test]
        fn accepted_values_stay_on_this_origin_and_under_the_root(
            pre in prop_oneof![Just(""), Just("/myapp")],
            mid in prop_oneof![
                Just("/"), Just("//"), Just("/\\"), Just("\\"), Just("/%2F"), Just("/%2f%2F"),
                Just("/%5C"), Just("/\t/"), Just("/%09/"), Just("/ /"), Just("%2F"), Just("/%252F"),
                Just("/../"), Just("/%2e%2e/"), Just("/.%2e/"), Just("x"), Just("https:"), Just(""),
            ],
            tail in "[/\\\\%a-zA-Z0-9.:@ \t\r\n?#=&-]{0,16}",
            root in prop_oneof![Just(""), Just("/myapp")],
        ) {
            let s = format!("{pre}{mid}{tail}");
            // With absolute URLs allowed to listed origins, relative values are judged as
            // before.
            let r = ReturnRules::new(root, "https://app.example", &["https://good.example".to_owned()]).unwrap();
            match (r.check(&s), safe_return_to(&s, root)) {
                (checked, Some(path)) => prop_assert_eq!(checked, Ok(path), "{:?}", s),
                (Ok(url), None) => {
                    let u = url::Url::parse(&url).unwrap();
                    let o = u.origin().ascii_serialization();
                    prop_assert!(o == "https://good.example" || o == "https://app.example", "{s:?} -> {url:?}");
                }
                (Err(_), None) => {}
            }
            if let Some(ok) = safe_return_to(&s, root) {
                for form in [ok.clone(), percent_decode_str(&ok).decode_utf8_lossy().into_owned()] {
                    let seen = browser_view(&form);
                    prop_assert!(seen.starts_with('/') && !seen.starts_with("//"), "{s:?} -> {seen:?}");
                    prop_assert!(!seen.contains(':') || seen.find(':') > seen.find('/'), "{s:?}");
                    let path = seen.split(['?', '#']).next().unwrap_or("");
                    prop_assert!(!path.split('/').any(|x| x == ".."), "{s:?}");
                    prop_assert!(root.is_empty() || path == root || path.starts_with(&format!("{root}/")), "{s:?}");
                }
            }
        }

        #[test]
        fn accepted_absolute_urls_go_to_a_listed_origin(
            scheme in prop_oneof![Just("https://"), Just("HTTPS://"), Just("http://"), Just("https:"), Just("https:/"), Just("https:\\\\"), Just("//"), Just("")],
            user in prop_oneof![Just(""), Just("good.example@"), Just("u:p@"), Just("good.example%40")],
            host in prop_oneof![Just("good.example"), Just("GOOD.example"), Just("good.example.evil"), Just("evilgood.example"), Just("good.example\t"), Just("good%2eexample"), Just("app.example"), Just("evil.example")],
            port in prop_oneof![Just(""), Just(":443"), Just(":8443"), Just(":80"), Just(":")],
            tail in "[/\\\\%a-zA-Z0-9.:@ \t\r\n?#=&-]{0,16}",
        ) {
            let s = format!("{scheme}{user}{host}{port}{tail}");
            let r = ReturnRules::new("/myapp", "https://app.example", &["https://good.example".to_owned()]).unwrap();
            if let Ok(ok) = r.check(&s) {
                if ok.starts_with('/') {
                    prop_assert!(!ok.starts_with("//") && !ok.contains('\\'), "{s:?} -> {ok:?}");
                } else {
                    // What a browser makes of the value sent is the origin checked.
                    let u = url::Url::parse(&ok).unwrap();
                    prop_assert_eq!(u.as_str(), ok.as_str());
                    prop_assert!(u.username().is_empty() && u.password().is_none(), "{s:?}");
                    let o = u.origin().ascii_serialization();
                    prop_assert!(o == "https://good.example" || (o == "https://app.example" && (u.path() == "/myapp" || u.path().starts_with("/myapp/"))), "{s:?} -> {ok:?}");
                }
            }
        }
    }
}
