//! Deciding where a request goes, from its path alone.
//!
//! The gateway accepts both shapes a front proxy may use under a root path `/myapp`:
//! one that strips the prefix (`/api/ping`, `/`) and one that forwards the full path
//! (`/myapp/api/ping`, `/myapp/`). Dot segments are removed first (RFC 3986 §5.2.4, including
//! their percent-encoded forms) so that the route decided here is the route the upstream sees;
//! `%2F` is never decoded, so `/api%2Fx` is not under `/api`.

use std::borrow::Cow;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `{api}/healthz`: the gateway's liveness answer.
    Healthz,
    /// `{api}/readyz`: the gateway's readiness answer.
    Readyz,
    /// Under the API mount; `path` is what the API sees (mount stripped, at least `/`).
    Api {
        /// Path after the API mount.
        path: String,
    },
    /// Everything else; `path` is what Streamlit sees (root path re-added, since Streamlit runs
    /// with `server.baseUrlPath` set to it).
    Ui {
        /// Path for the UI upstream.
        path: String,
    },
}

/// A request path the gateway cannot route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request target must be an absolute path starting with `/`")]
pub struct BadPath;

/// Splits `raw_path` (no query) for a gateway with public mount `root` (`""` or `/seg…`) and API
/// mount `api` (`/seg…`).
///
/// # Errors
/// [`BadPath`] when the path does not start with `/` (for example `*` or an empty path).
pub fn route(raw_path: &str, root: &str, api: &str) -> Result<Route, BadPath> {
    if !raw_path.starts_with('/') {
        return Err(BadPath);
    }
    let path = remove_dot_segments(raw_path);
    let path: &str = &path;
    let (dispatch, had_prefix) = match strip_mount(path, root) {
        Some(rest) => (rest, true),
        None => (path, false),
    };
    if let Some(rest) = strip_mount(dispatch, api) {
        return Ok(match rest {
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            _ => Route::Api {
                path: rest.to_owned(),
            },
        });
    }
    let ui = if had_prefix || root.is_empty() {
        path.to_owned()
    } else {
        let mut s = String::with_capacity(root.len() + dispatch.len());
        s.push_str(root);
        s.push_str(dispatch);
        s
    };
    Ok(Route::Ui { path: ui })
}

/// The path after the root path (dot segments removed), for the gateway's own endpoints
/// outside the API mount (metrics, debug): `/myapp/__fluxlit/debug` and `/__fluxlit/debug`
/// both give `/__fluxlit/debug` under root `/myapp`.
pub fn dispatch_path<'a>(raw_path: &'a str, root: &str) -> Cow<'a, str> {
    match remove_dot_segments(raw_path) {
        Cow::Borrowed(clean) => Cow::Borrowed(strip_mount(clean, root).unwrap_or(clean)),
        Cow::Owned(clean) => Cow::Owned(strip_mount(&clean, root).unwrap_or(&clean).to_owned()),
    }
}

/// `Some(rest)` when `path` is `mount` or lies under it (`rest` is `/` for the mount itself);
/// an empty mount matches everything with `rest = path`.
fn strip_mount<'a>(path: &'a str, mount: &str) -> Option<&'a str> {
    if mount.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(mount)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

fn dot_kind(seg: &str) -> Option<u8> {
    match seg.len() {
        1 if seg == "." => Some(1),
        2 if seg == ".." => Some(2),
        3 if seg.eq_ignore_ascii_case("%2e") => Some(1),
        4 if seg.eq_ignore_ascii_case(".%2e") || seg.eq_ignore_ascii_case("%2e.") => Some(2),
        6 if seg.eq_ignore_ascii_case("%2e%2e") => Some(2),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 `remove_dot_segments` on an absolute path, also treating `%2e` as `.`.
/// `..` above the root stays at the root. Borrowed when there is nothing to remove.
pub fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(|s| dot_kind(s).is_some()) {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate() {
        match dot_kind(seg) {
            Some(1) => trailing = i == last,
            Some(_) => {
                out.pop();
                trailing = i == last;
            }
            None => {
                out.push(seg);
                trailing = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing || s.is_empty() {
        s.push('/');
    }
    Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ui(p: &str) -> Route {
        Route::Ui { path: p.into() }
    }
    fn api(p: &str) -> Route {
        Route::Api { path: p.into() }
    }

    #[test]
    fn table() {
        let cases: &[(&str, &str, &str, Route)] = &[
            // no root path
            ("/", "", "/api", ui("/")),
            ("/api", "", "/api", api("/")),
            ("/api/", "", "/api", api("/")),
            ("/api/ping", "", "/api", api("/ping")),
            ("/apiary", "", "/api", ui("/apiary")),
            ("/api/healthz", "", "/api", Route::Healthz),
            ("/api/readyz", "", "/api", Route::Readyz),
            ("/api/healthz/", "", "/api", api("/healthz/")),
            ("/api%2Fhealthz", "", "/api", ui("/api%2Fhealthz")),
            ("/api/a%2Fb", "", "/api", api("/a%2Fb")),
            ("//api/ping", "", "/api", ui("//api/ping")),
            ("/api//ping", "", "/api", api("//ping")),
            ("/_stcore/stream", "", "/api", ui("/_stcore/stream")),
            // dot segments are resolved before routing
            ("/x/../api/ping", "", "/api", api("/ping")),
            ("/api/../x", "", "/api", ui("/x")),
            ("/api/%2e%2e/x", "", "/api", ui("/x")),
            ("/api/./healthz", "", "/api", Route::Healthz),
            ("/../../api/healthz", "", "/api", Route::Healthz),
            // root path, both proxy shapes
            ("/myapp", "/myapp", "/api", ui("/myapp")),
            ("/myapp/", "/myapp", "/api", ui("/myapp/")),
            ("/", "/myapp", "/api", ui("/myapp/")),
            ("/myapp/api/ping", "/myapp", "/api", api("/ping")),
            ("/api/ping", "/myapp", "/api", api("/ping")),
            ("/myapp/api/healthz", "/myapp", "/api", Route::Healthz),
            ("/api/readyz", "/myapp", "/api", Route::Readyz),
            ("/foo", "/myapp", "/api", ui("/myapp/foo")),
            ("/myappfoo", "/myapp", "/api", ui("/myapp/myappfoo")),
            (
                "/myapp/_stcore/stream",
                "/myapp",
                "/api",
                ui("/myapp/_stcore/stream"),
            ),
            (
                "/_stcore/stream",
                "/myapp",
                "/api",
                ui("/myapp/_stcore/stream"),
            ),
            ("/myapp/apiary", "/myapp", "/api", ui("/myapp/apiary")),
            // multi-segment root path and custom API mount
            ("/apps/my-app/api/x", "/apps/my-app", "/api", api("/x")),
            ("/apps/my-app/", "/apps/my-app", "/api", ui("/apps/my-app/")),
            (
                "/apps/other",
                "/apps/my-app",
                "/api",
                ui("/apps/my-app/apps/other"),
            ),
            ("/apps/my-app/v1/x", "/apps/my-app", "/v1", api("/x")),
            ("/v1", "", "/v1/inner", ui("/v1")),
            ("/v1/inner/x", "", "/v1/inner", api("/x")),
        ];
        for (path, root, mount, want) in cases {
            assert_eq!(
                &route(path, root, mount).unwrap(),
                want,
                "{path} root={root:?} api={mount}"
            );
        }
    }

    #[test]
    fn rejects_non_absolute_targets() {
        assert_eq!(route("*", "", "/api"), Err(BadPath));
        assert_eq!(route("", "", "/api"), Err(BadPath));
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/a/./b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/.."), "/");
        assert_eq!(remove_dot_segments("/a/%2E%2e/b"), "/b");
        assert_eq!(remove_dot_segments("/a/.b/..c"), "/a/.b/..c");
        assert!(matches!(
            remove_dot_segments("/plain/path"),
            Cow::Borrowed(_)
        ));
    }

    proptest! {
        #[test]
        fn api_routes_always_lie_under_the_mount(
            segs in proptest::collection::vec("[a-z.%2eE/]{0,6}", 0..6),
            root in prop_oneof![Just(""), Just("/myapp"), Just("/apps/my-app")],
        ) {
            let path = format!("/{}", segs.join("/"));
            let r = route(&path, root, "/api").unwrap();
            let clean = remove_dot_segments(&path).into_owned();
            match r {
                Route::Api { path: p } => {
                    prop_assert!(p.starts_with('/'));
                    let a = format!("/api{p}");
                    let b = format!("{root}/api{p}");
                    let a_trim = a.trim_end_matches('/');
                    let b_trim = b.trim_end_matches('/');
                    let c = clean.trim_end_matches('/');
                    prop_assert!(c == a_trim || c == b_trim, "{path} -> {p}");
                }
                Route::Healthz | Route::Readyz => {
                    prop_assert!(clean.ends_with("/api/healthz") || clean.ends_with("/api/readyz"));
                }
                Route::Ui { path: p } => {
                    prop_assert!(p.starts_with(root));
                    prop_assert!(!p.split('/').any(|s| dot_kind(s).is_some()), "{p}");
                }
            }
        }

        #[test]
        fn never_panics(path in "\\PC*", root in prop_oneof![Just(""), Just("/r")]) {
            let _ = route(&path, root, "/api");
        }
    }
}
