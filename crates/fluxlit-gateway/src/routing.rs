//! Deciding where a request goes, from its path alone.
//!
//! The gateway accepts both shapes a front proxy may use under a root path `/myapp`:
//! one that strips the prefix (`/api/ping`, `/`) and one that forwards the full path
//! (`/myapp/api/ping`, `/myapp/`). A path with a dot segment (`.` or `..`, RFC 3986 §3.3, or
//! their percent-encoded forms `%2e`, `%2e%2e`, `.%2e`, `%2e.`) is refused: an edge that does not
//! normalise would route `/myapp/%2e%2e/api/x` as a UI path while a resolving gateway would route
//! it to the API, so no route is decided for it at all. `%2F` is never decoded, so `/api%2Fx` is
//! not under `/api`. Everything under `/__fluxlit` (after the root path) is the gateway's own
//! ([`Route::Gateway`]), whatever the configuration.

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// `/__fluxlit` and everything under it (after the root path): the gateway's own endpoints
    /// (metrics, the debug snapshot, the client view), answered by the gateway (404 when not enabled), never
    /// forwarded to an upstream.
    Gateway {
        /// The path after the root path, starting with [`OWN_PREFIX`].
        path: String,
    },
    /// Everything else; `path` is what Streamlit sees (root path re-added, since Streamlit runs
    /// with `server.baseUrlPath` set to it).
    Ui {
        /// Path for the UI upstream.
        path: String,
    },
}

/// The gateway's own path space, after the root path (reference §5: `/__fluxlit/metrics`,
/// `/__fluxlit/debug`).
pub const OWN_PREFIX: &str = "/__fluxlit";

/// A request path the gateway cannot route (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadPath {
    /// Not an absolute path (`*`, empty, or an absolute-form target's path missing).
    #[error("request target must be an absolute path starting with `/`")]
    NotAbsolute,
    /// A `.` or `..` segment, plain or percent-encoded (RFC 3986 §3.3, §5.2.4).
    #[error("request path must not contain dot segments (`.`, `..`, or `%2e` forms)")]
    DotSegment,
}

/// Splits `raw_path` (no query) for a gateway with public mount `root` (`""` or `/seg…`) and API
/// mount `api` (`/seg…`).
///
/// # Errors
/// [`BadPath::NotAbsolute`] when the path does not start with `/` (for example `*` or an empty
/// path); [`BadPath::DotSegment`] when a segment is a dot segment.
pub fn route(raw_path: &str, root: &str, api: &str) -> Result<Route, BadPath> {
    if !raw_path.starts_with('/') {
        return Err(BadPath::NotAbsolute);
    }
    if has_dot_segment(raw_path) {
        return Err(BadPath::DotSegment);
    }
    let path = raw_path;
    let (dispatch, had_prefix) = match strip_mount(path, root) {
        Some(rest) => (rest, true),
        None => (path, false),
    };
    if strip_mount(dispatch, OWN_PREFIX).is_some() {
        return Ok(Route::Gateway {
            path: dispatch.to_owned(),
        });
    }
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

/// The path after the root path, for the gateway's own endpoints outside the API mount
/// (metrics, debug): `/myapp/__fluxlit/debug` and `/__fluxlit/debug` both give
/// `/__fluxlit/debug` under root `/myapp`.
pub fn dispatch_path<'a>(raw_path: &'a str, root: &str) -> &'a str {
    strip_mount(raw_path, root).unwrap_or(raw_path)
}

/// Whether a segment of `path` is a dot segment, plain or percent-encoded.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| dot_kind(s).is_some())
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
    fn own(p: &str) -> Route {
        Route::Gateway { path: p.into() }
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
            // the gateway's own path space, under the root path too
            ("/__fluxlit/debug", "", "/api", own("/__fluxlit/debug")),
            ("/__fluxlit", "", "/api", own("/__fluxlit")),
            ("/__fluxlitx", "", "/api", ui("/__fluxlitx")),
            ("/myapp/__fluxlit/x", "/myapp", "/api", own("/__fluxlit/x")),
            (
                "/__fluxlit/metrics",
                "/myapp",
                "/api",
                own("/__fluxlit/metrics"),
            ),
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
        assert_eq!(route("*", "", "/api"), Err(BadPath::NotAbsolute));
        assert_eq!(route("", "", "/api"), Err(BadPath::NotAbsolute));
    }

    #[test]
    fn refuses_dot_segments_plain_and_encoded() {
        for p in [
            "/x/../api/ping",
            "/api/../x",
            "/api/%2e%2e/x",
            "/api/./healthz",
            "/../../api/healthz",
            "/myapp/%2e%2e/api/x",
            "/myapp/%2E%2E/api/x",
            "/a/.%2e/b",
            "/a/%2e./b",
            "/a/%2e",
            "/.",
            "/a/..",
        ] {
            for root in ["", "/myapp"] {
                assert_eq!(route(p, root, "/api"), Err(BadPath::DotSegment), "{p}");
            }
        }
        for p in ["/a/.b/..c", "/a/...", "/.well-known/x", "/a%2e/b"] {
            assert!(route(p, "", "/api").is_ok(), "{p}");
        }
    }

    proptest! {
        #[test]
        fn api_routes_always_lie_under_the_mount(
            segs in proptest::collection::vec("[a-z.%2eE/]{0,6}", 0..6),
            root in prop_oneof![Just(""), Just("/myapp"), Just("/apps/my-app")],
        ) {
            let path = format!("/{}", segs.join("/"));
            let Ok(r) = route(&path, root, "/api") else {
                prop_assert!(has_dot_segment(&path));
                return Ok(());
            };
            let clean = path.clone();
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
                Route::Gateway { path: p } => {
                    prop_assert!(p.starts_with(OWN_PREFIX));
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
