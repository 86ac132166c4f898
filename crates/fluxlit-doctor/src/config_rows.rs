//! The configuration, proxy and URL rows. Where a `fluxlit config` finding states a row's
//! condition, the row is made from the finding ([`ROW_OF_CODE`]), so `fluxlit config` and
//! `fluxlit doctor` never disagree; the other findings become `config_warning` rows.

use fluxlit_config::findings::Finding;
use fluxlit_config::{Environment, LoadOptions, Loaded};

use crate::Report;
use crate::runtime_rows::reachable;

/// The `fluxlit config` finding codes a doctor row reports, and that row.
pub const ROW_OF_CODE: &[(&str, &str)] = &[
    ("internal_api_base_invalid", "FLUXLIT_INTERNAL_API_BASE"),
    ("internal_api_base_path", "FLUXLIT_INTERNAL_API_BASE"),
    ("internal_api_base_mismatch", "FLUXLIT_INTERNAL_API_BASE"),
    ("public_base_url_precedence", "public_base_url_precedence"),
    ("oauth_public_base_url", "oauth_public_base_url"),
    ("subpath_without_trust_proxy", "proxy_headers"),
    ("forwarded_allow_ips_loopback_only", "forwarded_allow_ips"),
    ("forwarded_allow_ips_broad", "forwarded_allow_ips"),
    (
        "gateway_max_body_unlimited_trust_proxy",
        "gateway_max_proxy_body",
    ),
    ("public_base_url_invalid", "public_base_url"),
    ("public_base_url_path_mismatch", "public_base_url"),
    ("public_base_url_missing_api_prefix", "public_base_url"),
    (
        "gateway_forward_blocked_names",
        "gateway_forward_rejected_names",
    ),
    ("cors_without_security_headers", "security_headers"),
];

/// The row that reports finding `code`, if one does.
pub fn row_of(code: &str) -> Option<&'static str> {
    ROW_OF_CODE
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, row)| *row)
}

/// The read timeout below which `gateway_upstream_timeouts` warns, in seconds (reference §9.1).
pub const MIN_READ_TIMEOUT_S: f64 = 5.0;

fn show(v: &str) -> &str {
    if v.is_empty() { "(empty)" } else { v }
}

pub(crate) async fn check(r: &mut Report, opts: &LoadOptions, loaded: &Loaded, found: &[Finding]) {
    let s = &loaded.settings;
    let env: &Environment = &opts.env;
    let of = |codes: &[&str]| -> Vec<&Finding> {
        found.iter().filter(|f| codes.contains(&f.code)).collect()
    };
    let mount = s.public_mount();
    let api_prefix = format!("{mount}{}", s.api_mount_path);
    let derived = format!("http://127.0.0.1:{}{}", s.gateway_port, s.api_mount_path);

    // FLUXLIT_INTERNAL_API_BASE
    let internal = of(&[
        "internal_api_base_invalid",
        "internal_api_base_path",
        "internal_api_base_mismatch",
    ]);
    match env
        .get("FLUXLIT_INTERNAL_API_BASE")
        .filter(|v| !v.is_empty())
    {
        None => r.pass(
            "FLUXLIT_INTERNAL_API_BASE",
            format!("unset (normal: FluxLit sets it for Streamlit and the API, here {derived})"),
        ),
        Some(_) if !internal.is_empty() => {
            r.findings_row("FLUXLIT_INTERNAL_API_BASE", &internal, false)
        }
        Some(v) => r.pass(
            "FLUXLIT_INTERNAL_API_BASE",
            format!("{v} matches the URL FluxLit derives"),
        ),
    }

    r.pass(
        "config.api_mount_path",
        format!(
            "{} (from {})",
            s.api_mount_path,
            loaded.origin("api_mount_path")
        ),
    );
    r.pass(
        "config.root_path",
        if s.root_path.is_empty() && !s.streamlit_public_path.is_empty() {
            format!(
                "(empty); the public mount is streamlit_public_path {} (from {})",
                s.streamlit_public_path,
                loaded.origin("streamlit_public_path")
            )
        } else {
            format!(
                "{} (from {})",
                show(&s.root_path),
                loaded.origin("root_path")
            )
        },
    );
    r.pass(
        "config.trust_proxy",
        format!("{} (from {})", s.trust_proxy, loaded.origin("trust_proxy")),
    );
    r.pass(
        "config.public_base_url",
        format!(
            "{} (from {})",
            show(&s.public_base_url),
            loaded.origin("public_base_url")
        ),
    );

    let set = |name: &str| env.get(name).is_some_and(|v| !v.is_empty());
    if set("PUBLIC_BASE_URL") || set("FLUXLIT_PUBLIC_BASE_URL") {
        let precedence = of(&["public_base_url_precedence"]);
        if precedence.is_empty() {
            r.pass(
                "public_base_url_precedence",
                format!("using {}", loaded.origin("public_base_url")),
            );
        } else {
            r.findings_row("public_base_url_precedence", &precedence, true);
        }
    }

    let oauth = of(&["oauth_public_base_url"]);
    if !oauth.is_empty() {
        r.findings_row("oauth_public_base_url", &oauth, true);
    }

    if !mount.is_empty() {
        let subpath = of(&["subpath_without_trust_proxy"]);
        if subpath.is_empty() {
            r.pass(
                "proxy_headers",
                format!(
                    "trust_proxy is on (from {}) for the root path {mount}",
                    loaded.origin("trust_proxy")
                ),
            );
        } else {
            r.findings_row("proxy_headers", &subpath, true);
        }
    }

    if s.trust_proxy {
        let allow = of(&[
            "forwarded_allow_ips_loopback_only",
            "forwarded_allow_ips_broad",
        ]);
        if allow.is_empty() {
            r.pass(
                "forwarded_allow_ips",
                format!(
                    "forwarded headers are trusted from {} (from {})",
                    s.forwarded_allow_ips.join(", "),
                    loaded.origin("forwarded_allow_ips")
                ),
            );
        } else {
            r.findings_row("forwarded_allow_ips", &allow, true);
        }
    }

    let body = of(&["gateway_max_body_unlimited_trust_proxy"]);
    if !body.is_empty() {
        r.findings_row("gateway_max_proxy_body", &body, true);
    }

    if !s.public_base_url.is_empty() {
        let invalid = of(&["public_base_url_invalid"]);
        let mismatch = of(&["public_base_url_path_mismatch"]);
        let prefix = of(&["public_base_url_missing_api_prefix"]);
        if !invalid.is_empty() {
            r.findings_row("public_base_url", &invalid, false);
        } else if !mismatch.is_empty() {
            let all: Vec<&Finding> = mismatch.into_iter().chain(prefix).collect();
            r.findings_row("public_base_url", &all, true);
        } else if !prefix.is_empty() {
            r.findings_row("public_base_url", &prefix, false);
        } else {
            r.pass(
                "public_base_url",
                format!(
                    "{} is an absolute URL consistent with the root path {}",
                    s.public_base_url,
                    show(mount)
                ),
            );
        }
    }

    r.pass(
        "readiness_route",
        format!(
            "readiness probe: GET {api_prefix}/readyz (200 once Streamlit and the API are ready, 503 before, while one is down and while stopping); liveness probe: GET {api_prefix}/healthz"
        ),
    );
    r.pass(
        "l7_websocket",
        format!(
            "a reverse proxy in front of FluxLit must pass WebSocket upgrades (HTTP/1.1 with the Upgrade and Connection headers) for {mount}/_stcore/stream and keep them open for hours; without that the UI stays blank or shows \"Connecting\""
        ),
    );

    let read = s.gateway_upstream_read_timeout_s.as_secs_f64();
    let timeouts = format!(
        "HTTP read timeout={read}s; connect={}s; ws_open={}s",
        s.gateway_upstream_connect_timeout_s.as_secs_f64(),
        s.gateway_ws_open_timeout_s.as_secs_f64()
    );
    if read < MIN_READ_TIMEOUT_S {
        r.warn_strict(
            "gateway_upstream_timeouts",
            format!(
                "{timeouts}: a read timeout below {MIN_READ_TIMEOUT_S}s turns slow API answers and uploads into 504; raise gateway_upstream_read_timeout_s (from {})",
                loaded.origin("gateway_upstream_read_timeout_s")
            ),
        );
    } else {
        r.pass("gateway_upstream_timeouts", timeouts);
    }

    let forwarded = &s.gateway_forward_client_headers_to_streamlit;
    if forwarded.is_empty() {
        r.pass(
            "gateway_forward_client_headers",
            "empty allowlist: Streamlit gets no client headers beyond the ones it needs",
        );
    } else {
        r.warn(
            "gateway_forward_client_headers",
            format!(
                "{} header name(s) forwarded from clients to Streamlit ({}; from {}): any client can set them, so an app must not trust them",
                forwarded.len(),
                forwarded.join(", "),
                loaded.origin("gateway_forward_client_headers_to_streamlit")
            ),
        );
    }
    let rejected = of(&["gateway_forward_blocked_names"]);
    if !rejected.is_empty() {
        r.findings_row("gateway_forward_rejected_names", &rejected, true);
    }

    if let Some(file) = env
        .get("FLUXLIT_STREAMLIT_UPSTREAM_FILE")
        .filter(|v| !v.is_empty())
    {
        r.warn(
            "streamlit_upstream_state",
            format!(
                "FLUXLIT_STREAMLIT_UPSTREAM_FILE={file:?} is FluxLit for Python's runtime state file; FluxLit starts and tracks Streamlit itself and ignores it: unset it, or set ui_upstream to a Streamlit you run yourself"
            ),
        );
    }
    let legacy = env
        .get("FLUXLIT_STREAMLIT_UPSTREAM")
        .filter(|v| !v.is_empty());
    match (&s.ui_upstream, legacy) {
        (Some(url), _) => {
            let origin = loaded.origin("ui_upstream");
            match reachable(url).await {
                Ok(()) => r.pass(
                    "streamlit_upstream",
                    format!("ui_upstream {url} (from {origin}) accepts connections"),
                ),
                Err(e) => r.warn(
                    "streamlit_upstream",
                    format!(
                        "ui_upstream {url} (from {origin}) is unreachable ({e}); UI requests get 503 and readyz 503 until it answers: start it, or fix ui_upstream"
                    ),
                ),
            }
        }
        (None, Some(url)) => r.warn(
            "streamlit_upstream",
            format!(
                "FLUXLIT_STREAMLIT_UPSTREAM={url:?} is FluxLit for Python's variable and is ignored; FluxLit starts Streamlit itself: unset it, or set ui_upstream (FLUXLIT_UI_UPSTREAM, --ui-upstream) to use a Streamlit you run"
            ),
        ),
        (None, None) => {}
    }

    let security = of(&["cors_without_security_headers"]);
    if !security.is_empty() {
        r.findings_row("security_headers", &security, true);
    }
}
