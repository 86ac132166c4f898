//! The forwarding decision, written once for both engines.
//!
//! A request's way is decided from its head: where it goes ([`Decision`]: refused, answered by
//! the gateway, forwarded to the API or to the UI), which of its fields go on
//! ([`forwards_request_field`]), how the upstream's target is composed ([`target_parts`]),
//! whether it may be sent again on a new connection ([`retryable`]), which response fields
//! reach the client ([`forwards_response_field`]). The two engines are interpreters of this
//! decision: hyper's path (`lib.rs`, `proxy.rs`) applies it to a `HeaderMap`, the HTTP/1.1 fast
//! path (`h1.rs`) to the raw head while copying it. The fast path serves the requests whose
//! decision is "forward to the UI" or "forward to the API's HTTP upstream" while no
//! [`HyperOnly`] reason holds ([`fast_forward`]); everything else is handed to hyper, so a
//! guard added here holds on both. What a forward needs besides forwarding is shared too, and both engines do
//! it: the rate limit and the upstream concurrency cap (`Inner::rate_gate`,
//! `Proxy::upstream_slot`), the debug ring, the access log and the request metrics
//! (`observe::Record::report`).
//!
//! The framing rules (`Content-Length`, `Transfer-Encoding`, response head size) are in
//! `framing.rs`, `Connection` parsing and `Host` in `headers.rs`, the client view and forwarded
//! fields in `forwarded.rs`; both engines call those same functions.

use http::header::{HeaderMap, HeaderName};

use crate::headers::ConnectionOptions;
use crate::routing::{self, BadPath, Route};

/// What the gateway does with a request, from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Refused with 400: the path cannot be routed.
    Refuse(BadPath),
    /// `{api}/healthz`.
    Healthz,
    /// `{api}/readyz`.
    Readyz,
    /// The configured metrics path (anywhere outside the API mount).
    Metrics,
    /// The debug snapshot (`/__fluxlit/debug`), when enabled.
    Debug,
    /// The client view (`/__fluxlit/client`, [`crate::CLIENT_PATH`]): always on.
    Client,
    /// The identity assertion's keys (`/__fluxlit/jwks.json`, [`crate::JWKS_PATH`]), with
    /// `auth_mode = oidc`.
    Jwks,
    /// Under `/__fluxlit` but not an enabled endpoint: 404, never forwarded.
    NotFound,
    /// To the API, at `path` (mount stripped). Served by the fast path only when the API is an
    /// HTTP upstream and no [`HyperOnly`] reason holds ([`fast_forward`]): the bearer check of
    /// `auth_mode = jwt`, the login session, forward auth, CORS and the security headers run in
    /// `Gateway::api` on hyper's engine, before anything is forwarded.
    Api {
        /// Path after the API mount.
        path: String,
    },
    /// To the UI upstream, at `path` (root path kept).
    Ui {
        /// Path for the UI upstream.
        path: String,
    },
}

/// The gateway's own endpoints that are enabled, as the decision needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnEndpoints<'a> {
    /// The metrics path (after the root path), when the endpoint is on.
    pub(crate) metrics: Option<&'a str>,
    /// Whether the debug snapshot is on.
    pub(crate) debug: bool,
    /// Whether the identity assertion's JWKS is served (`auth_mode = oidc`).
    pub(crate) jwks: bool,
}

/// Decides where a request for `raw_path` (no query) goes: [`routing::route`], then the
/// gateway's own endpoints (`own`). A metrics path outside `/__fluxlit` shadows the UI path of
/// the same name.
pub(crate) fn decide(raw_path: &str, root: &str, api: &str, own: OwnEndpoints<'_>) -> Decision {
    let route = match routing::route(raw_path, root, api) {
        Ok(r) => r,
        Err(e) => return Decision::Refuse(e),
    };
    let own_path = match &route {
        Route::Gateway { path } => Some(path.as_str()),
        Route::Ui { .. } if own.metrics.is_some() => Some(routing::dispatch_path(raw_path, root)),
        _ => None,
    };
    if let Some(p) = own_path {
        if own.metrics == Some(p) {
            return Decision::Metrics;
        }
        if matches!(route, Route::Gateway { .. }) {
            return if own.debug && p == crate::DEBUG_PATH {
                Decision::Debug
            } else if p == crate::CLIENT_PATH {
                Decision::Client
            } else if own.jwks && p == crate::JWKS_PATH {
                Decision::Jwks
            } else {
                Decision::NotFound
            };
        }
    }
    match route {
        Route::Healthz => Decision::Healthz,
        Route::Readyz => Decision::Readyz,
        Route::Api { path } => Decision::Api { path },
        Route::Ui { path } => Decision::Ui { path },
        Route::Gateway { .. } => Decision::NotFound,
    }
}

/// Why a request the fast path could otherwise carry must be served by the hyper engine: a
/// rule only hyper's path carries out, from the gateway's configuration. Every rule the fast
/// path does not apply itself is a reason here, so that it holds on both engines (see
/// [`fast_forward`]). `authenticate` keeps UI and API requests on hyper's path; the others
/// only API requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HyperOnly {
    /// Authenticate the request (`auth_mode = forward` or `oidc`, `auth.rs`,
    /// `fluxlit_auth::bff`): only hyper's path checks the peer, the front proxy's identity
    /// fields and the login session, and sets the identity fields.
    pub(crate) authenticate: bool,
    /// The bearer-token check of API requests (`auth_mode = jwt`, `Gateway::api`).
    pub(crate) bearer: bool,
    /// The API is not an HTTP upstream (`ApiTarget::None`: hyper's path answers 404;
    /// `ApiTarget::Service`: called in process).
    pub(crate) api_not_upstream: bool,
    /// CORS on API responses (`cors_allow_origins`: preflights answered, fields added).
    pub(crate) cors: bool,
    /// Security headers on API responses (`enable_security_headers`).
    pub(crate) security_headers: bool,
}

impl HyperOnly {
    /// No reason for a UI forward: the fast path may serve it.
    fn serves_ui(self) -> bool {
        !self.authenticate
    }

    /// No reason for an API forward: the fast path may serve it.
    fn serves_api(self) -> bool {
        self == Self::default()
    }
}

/// A forward the HTTP/1.1 fast path serves, with the upstream's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FastForward {
    /// To the UI upstream, at `path` (root path kept), with the UI hop's allow-list.
    Ui {
        /// Path for the UI upstream.
        path: String,
    },
    /// To the API's HTTP upstream (`ApiTarget::Upstream`), at `path` (mount stripped), with
    /// `X-Forwarded-Prefix` the public API prefix (`Inner::api_public_prefix`) and the
    /// response's `Location` and `Set-Cookie` rewritten under it (`rewrite.rs`).
    Api {
        /// Path after the API mount.
        path: String,
    },
}

impl FastForward {
    /// The `dispatch` of the request (access log, metrics, rate limit), as hyper's path names
    /// the same route.
    pub(crate) fn dispatch(&self) -> &'static str {
        match self {
            Self::Ui { .. } => crate::observe::DISPATCH_UI,
            Self::Api { .. } => crate::observe::DISPATCH_API,
        }
    }
}

/// The one decision "this request needs the hyper engine", as the HTTP/1.1 fast path asks it:
/// `Some` forward when the fast path may serve the request, `None` when it must hand it to
/// hyper: every decision but [`Decision::Ui`] and [`Decision::Api`] (answered or refused by
/// hyper's path), a UI forward while [`HyperOnly::authenticate`] holds, and an API forward
/// while any [`HyperOnly`] reason holds or when it is a WebSocket upgrade (`websocket`; the
/// API's tunnels are hyper's path's).
pub(crate) fn fast_forward(
    decision: Decision,
    hyper_only: HyperOnly,
    websocket: bool,
) -> Option<FastForward> {
    match decision {
        Decision::Ui { path } if hyper_only.serves_ui() => Some(FastForward::Ui { path }),
        Decision::Api { path } if hyper_only.serves_api() && !websocket => {
            Some(FastForward::Api { path })
        }
        _ => None,
    }
}

/// Whether a request field named `name` goes on to the upstream as the client sent it. Never:
/// identity headers (`HeaderPolicy::is_identity`), hop-by-hop fields (the fixed list and those
/// the message's `Connection` names, RFC 9110 §7.6.1), the forwarded fields and request id the
/// gateway sets itself in any spelling (`forwarded::is_replaced_on_hop`), and on the UI hop any
/// field outside its allow-list (`HeaderPolicy::ui_allows`). `Host` and `Content-Length` are
/// not decided here: the gateway writes them (`headers::check_host`, `framing.rs`).
#[inline]
pub(crate) fn forwards_request_field(
    policy: &fluxlit_auth::HeaderPolicy,
    connection: &ConnectionOptions<'_>,
    ui: bool,
    name: &[u8],
) -> bool {
    !policy.is_identity(name)
        && !connection.hop_by_hop(name)
        && (!ui || policy.ui_allows(name))
        && !crate::forwarded::is_replaced_on_hop(name)
}

/// Whether a response field named `name` reaches the client as the upstream sent it: not
/// hop-by-hop (fixed or named by the response's `Connection`) and not `X-Request-ID` (the
/// gateway's id replaces it). `Content-Length` and `Transfer-Encoding` are the relay's framing
/// (`framing.rs`), decided by each engine's relay.
#[inline]
pub(crate) fn forwards_response_field(connection: &ConnectionOptions<'_>, name: &[u8]) -> bool {
    !connection.hop_by_hop(name)
        && !name.eq_ignore_ascii_case(crate::observe::REQUEST_ID.as_str().as_bytes())
}

/// Removes from `headers` every field [`forwards_request_field`] does not forward (the
/// `HeaderMap` interpreter of the rule; `Host` and `Content-Length` stay). Allocates only when
/// something goes.
pub(crate) fn retain_request_fields(
    headers: &mut HeaderMap,
    policy: &fluxlit_auth::HeaderPolicy,
    ui: bool,
) {
    let drop = dropped(headers, |connection, name| {
        forwards_request_field(policy, connection, ui, name)
    });
    for name in drop {
        headers.remove(name);
    }
}

/// Removes from `headers` every field [`forwards_response_field`] does not forward (except the
/// framing fields, which the relay decides).
pub(crate) fn retain_response_fields(headers: &mut HeaderMap) {
    let drop = dropped(headers, forwards_response_field);
    for name in drop {
        headers.remove(name);
    }
}

/// The names in `headers` that `keep` refuses, `Host` and `Content-Length` aside.
fn dropped(
    headers: &HeaderMap,
    keep: impl Fn(&ConnectionOptions<'_>, &[u8]) -> bool,
) -> Vec<HeaderName> {
    let mut connection = ConnectionOptions::default();
    for v in headers.get_all(http::header::CONNECTION) {
        connection.add(v.as_bytes());
    }
    headers
        .keys()
        .filter(|k| {
            let written = *k == http::header::HOST || *k == http::header::CONTENT_LENGTH;
            !written && !keep(&connection, k.as_str().as_bytes())
        })
        .cloned()
        .collect()
}

/// The upstream request target, in order: the upstream's base path, the path the decision
/// chose, and `?query` when the client sent one (byte for byte; `%2F` never decoded).
pub(crate) fn target_parts<'a>(
    base: &'a str,
    path: &'a str,
    query: Option<&'a str>,
) -> [&'a str; 4] {
    match query {
        Some(q) => [base, path, "?", q],
        None => [base, path, "", ""],
    }
}

/// Whether a request can be sent again, unchanged, on a new upstream connection when a kept
/// connection closed under it before any of the response arrived: an idempotent method (RFC
/// 9110 §9.2.2; CONNECT and POST/PATCH never), no body, and not an upgrade.
pub(crate) fn retryable(method: &str, empty_body: bool, upgrade: bool) -> bool {
    empty_body
        && !upgrade
        && matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const OWN: OwnEndpoints<'static> = OwnEndpoints {
        metrics: Some("/metrics"),
        debug: true,
        jwks: true,
    };

    #[test]
    fn only_forwards_without_a_hyper_reason_are_the_fast_paths() {
        let d = |p: &str| decide(p, "/app", "/api", OWN);
        let none = HyperOnly::default();
        let ui = |p: &str| Some(FastForward::Ui { path: p.to_owned() });
        let api = |p: &str| Some(FastForward::Api { path: p.to_owned() });
        assert_eq!(fast_forward(d("/x"), none, false), ui("/app/x"));
        assert_eq!(
            fast_forward(d("/x"), none, true),
            ui("/app/x"),
            "UI WebSocket"
        );
        assert_eq!(fast_forward(d("/app/api/x"), none, false), api("/x"));
        assert_eq!(
            fast_forward(d("/app/api/x"), none, true),
            None,
            "API WebSocket"
        );
        let auth = HyperOnly {
            authenticate: true,
            ..none
        };
        assert_eq!(fast_forward(d("/x"), auth, false), None, "forward auth");
        assert_eq!(fast_forward(d("/app/api/x"), auth, false), None, "auth");
        for api_only in [
            HyperOnly {
                bearer: true,
                ..none
            },
            HyperOnly {
                api_not_upstream: true,
                ..none
            },
            HyperOnly { cors: true, ..none },
            HyperOnly {
                security_headers: true,
                ..none
            },
        ] {
            assert_eq!(
                fast_forward(d("/app/api/x"), api_only, false),
                None,
                "{api_only:?}"
            );
            assert_eq!(
                fast_forward(d("/x"), api_only, false),
                ui("/app/x"),
                "{api_only:?}"
            );
        }
        assert_eq!(
            fast_forward(d("/app/api/x"), none, false).map(|f| f.dispatch()),
            Some("api")
        );
        assert_eq!(
            fast_forward(d("/x"), none, false).map(|f| f.dispatch()),
            Some("streamlit")
        );
        for p in [
            "/app/api/healthz",
            "/__fluxlit/debug",
            "/app/__fluxlit/nope",
            "/app/__fluxlit/jwks.json",
        ] {
            assert_eq!(fast_forward(d(p), none, false), None, "{p}");
        }
    }

    #[test]
    fn decisions() {
        let d = |p: &str| decide(p, "/app", "/api", OWN);
        assert_eq!(d("/app/api/healthz"), Decision::Healthz);
        assert_eq!(d("/api/readyz"), Decision::Readyz);
        assert_eq!(d("/app/metrics"), Decision::Metrics);
        assert_eq!(d("/__fluxlit/debug"), Decision::Debug);
        assert_eq!(d("/app/__fluxlit/client"), Decision::Client);
        assert_eq!(d("/app/__fluxlit/jwks.json"), Decision::Jwks);
        assert_eq!(d("/app/__fluxlit/client/x"), Decision::NotFound);
        assert_eq!(d("/app/__fluxlit/nope"), Decision::NotFound);
        assert_eq!(d("/app/x/../api"), Decision::Refuse(BadPath::DotSegment));
        assert_eq!(d("/api/x"), Decision::Api { path: "/x".into() });
        assert_eq!(
            d("/x"),
            Decision::Ui {
                path: "/app/x".into()
            }
        );
        let off = OwnEndpoints {
            metrics: None,
            debug: false,
            jwks: false,
        };
        assert_eq!(
            decide("/__fluxlit/jwks.json", "", "/api", off),
            Decision::NotFound
        );
        assert_eq!(
            decide("/__fluxlit/debug", "", "/api", off),
            Decision::NotFound
        );
        assert_eq!(
            decide("/metrics", "", "/api", off),
            Decision::Ui {
                path: "/metrics".into()
            }
        );
    }

    fn sorted(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn the_header_map_interpreter_agrees_with_the_raw_rule() {
        let policy = fluxlit_auth::HeaderPolicy::default();
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("host", "x"),
            ("content-length", "3"),
            ("connection", "keep-alive, x-named, content-length, host"),
            ("x-named", "1"),
            ("keep-alive", "5"),
            ("x-remote-user", "admin"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-request-id", "abc"),
            ("accept", "*/*"),
            ("x-custom", "1"),
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let mut api = h.clone();
        retain_request_fields(&mut api, &policy, false);
        let kept = sorted(&api);
        assert_eq!(kept, ["accept", "content-length", "host", "x-custom"]);
        let mut ui = h.clone();
        retain_request_fields(&mut ui, &policy, true);
        let kept = sorted(&ui);
        assert_eq!(kept, ["accept", "content-length", "host"]);
        let mut resp = h;
        retain_response_fields(&mut resp);
        let kept = sorted(&resp);
        assert_eq!(
            kept,
            [
                "accept",
                "content-length",
                "host",
                "x-custom",
                "x-remote-user",
                "x_forwarded_for",
            ]
        );
    }

    #[test]
    fn retry_policy() {
        assert!(retryable("GET", true, false));
        assert!(retryable("DELETE", true, false));
        assert!(!retryable("GET", false, false));
        assert!(!retryable("GET", true, true));
        assert!(!retryable("POST", true, false));
        assert!(!retryable("PATCH", true, false));
        assert!(!retryable("CONNECT", true, false));
    }

    #[test]
    fn targets() {
        assert_eq!(target_parts("/b", "/p", Some("q=1")).concat(), "/b/p?q=1");
        assert_eq!(target_parts("", "/p", None).concat(), "/p");
        assert_eq!(target_parts("", "/p", Some("")).concat(), "/p?");
    }
}
