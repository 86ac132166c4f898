//! Where a login or logout may send the browser back to (`return_to`; AUTH.md A.4 rule 5): a
//! path on this site, under the root path, that no browser can read as another origin. Open
//! redirects were three of oauth2-proxy's advisories (GHSA-qqxw-m5fj-f7gv / CVE-2020-5233,
//! GHSA-j7px-6hwj-hpjg, GHSA-5m6c-jp6f-2vcv / CVE-2020-4037), all through forms such as
//! `//evil`, `/\evil` and their percent-encoded and whitespace-padded variants, which browsers
//! (WHATWG URL: `\` is `/` in special schemes, tabs and newlines are removed) resolve to another
//! host.

use percent_encoding::percent_decode_str;

/// `raw` as a safe return path under `root_path` (`""` or `/prefix`, no trailing slash), or
/// `None`. Accepted: a path-absolute reference (RFC 3986 §4.2) that starts with exactly one
/// `/`, is under the root path (the root path itself, with or without its trailing slash, or a
/// path below it), and has an optional query and fragment. Refused, in the raw form and after
/// percent-decoding (once, and the result must not decode further to something refused):
/// anything with a scheme or authority (`//`, `/\`, `\`), control characters, whitespace, `\`
/// anywhere, and dot segments (`.`/`..`, RFC 3986 §5.2.4), which could climb out of the root
/// path. Returned unchanged (as received), so what the browser is sent is what was checked.
pub fn safe_return_to(raw: &str, root_path: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > 2048 {
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
    }
}
