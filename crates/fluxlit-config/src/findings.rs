//! The warnings catalogue of `fluxlit config` (and `strict_startup`), computed from the
//! effective settings. Codes are FluxLit's (reference §9.2) so CI scripts keep working; a few
//! conditions are corrected and a few codes are new (marked below). Every code is documented,
//! with its fix, under its anchor in docs/doctor.md ([`doc_link`]).

use serde::Serialize;

use crate::{Environment, Loaded, Origin};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Works, but probably not as intended. `--strict` and `strict_startup` refuse it.
    Warn,
    /// Will not work; `fluxlit config` exits 1.
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// Stable code.
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// Where the docs explain it and give the fix: [`doc_link`] of the code.
    pub doc: String,
}

/// The file that documents every finding code and every `fluxlit doctor` row.
pub const DOC_FILE: &str = "docs/doctor.md";

/// Where `code` is documented: `docs/doctor.md#warning-<code>` (each code's section has that
/// anchor; a unit test checks it for every code the loader and [`findings`] emit).
pub fn doc_link(code: &str) -> String {
    format!("{DOC_FILE}#warning-{code}")
}

/// The header-catalogue classes (`fluxlit_headers::CATALOGUE`) whose names
/// `gateway_forward_client_headers_to_streamlit` may never name: credentials, hop-by-hop and
/// framing fields, the gateway's own forwarded fields and request id, and identity headers
/// (exact names and whole families) that only a verified login may set.
pub const BLOCKED_FORWARD_CLASSES: fluxlit_headers::Classes = {
    use fluxlit_headers::Class::*;
    fluxlit_headers::Classes::of(&[
        Credential,
        HopByHop,
        Framing,
        Forwarded,
        RequestId,
        Identity,
        IdentityFamily,
    ])
};

/// Whether `gateway_forward_client_headers_to_streamlit` may never name `name`: it is a
/// catalogue name (or in a catalogue family) of one of [`BLOCKED_FORWARD_CLASSES`], compared
/// in any letter case, and for identity and forwarded names also with `_` read as `-`
/// (`fluxlit_headers::Class::spelling`).
///
/// ```
/// use fluxlit_config::findings::is_blocked_forward_name;
///
/// for name in [
///     "authorization", "Cookie", "proxy-authorization", "host", "content-length",
///     "Transfer-Encoding", "expect", "trailer", "x-forwarded-for", "x_forwarded_prefix",
///     "x-real-ip", "forwarded", "x-request-id", "x-forwarded-user", "X_Remote_User",
///     "remote-email", "x-ms-client-principal-name",
///     // Identity families, by prefix.
///     "x-auth-request-groups", "cf-access-jwt-assertion", "x-pomerium-claim-email",
///     "x-authentik-username", "tailscale-user-login", "x-webauth-user",
/// ] {
///     assert!(is_blocked_forward_name(name), "{name}");
/// }
/// for name in ["x-tenant", "accept-language", "origin", "x-forwarded", "cf-access"] {
///     assert!(!is_blocked_forward_name(name), "{name}");
/// }
/// ```
pub fn is_blocked_forward_name(name: &str) -> bool {
    fluxlit_headers::classes_of(name.trim().as_bytes()).intersects(BLOCKED_FORWARD_CLASSES)
}

/// `(scheme, host, path)` of an absolute http(s) URL, if it is one.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    Some((scheme, host, path.trim_end_matches('/')))
}

/// Computes the findings for `loaded`. `env` is the same snapshot the settings came from;
/// `gateway_port` is the port the gateway will use (to compare `FLUXLIT_INTERNAL_API_BASE`).
pub fn findings(loaded: &Loaded, env: &Environment) -> Vec<Finding> {
    let s = &loaded.settings;
    let mut out: Vec<Finding> = loaded
        .warnings
        .iter()
        .map(|w| Finding {
            level: Level::Warn,
            code: w.code,
            message: w.message.clone(),
            doc: doc_link(w.code),
        })
        .collect();
    let mut push = |level, code, message: String| {
        out.push(Finding {
            level,
            code,
            message,
            doc: doc_link(code),
        })
    };
    let mount = s.public_mount();

    if let Some(base) = env
        .get("FLUXLIT_INTERNAL_API_BASE")
        .filter(|b| !b.is_empty())
    {
        let derived = format!("http://127.0.0.1:{}{}", s.gateway_port, s.api_mount_path);
        match split_url(base) {
            None => push(
                Level::Error,
                "internal_api_base_invalid",
                format!(
                    "FLUXLIT_INTERNAL_API_BASE={base:?} is not an absolute http(s) URL; FluxLit sets it for its children itself, so unset it"
                ),
            ),
            Some((_, _, path)) if path != s.api_mount_path => push(
                Level::Warn,
                "internal_api_base_path",
                format!(
                    "FLUXLIT_INTERNAL_API_BASE path {path:?} differs from api_mount_path {:?}",
                    s.api_mount_path
                ),
            ),
            Some(_) => {}
        }
        if base.trim_end_matches('/') != derived {
            push(
                Level::Warn,
                "internal_api_base_mismatch",
                format!(
                    "FLUXLIT_INTERNAL_API_BASE={base:?} differs from the URL FluxLit derives and gives its children ({derived}); the derived one is used"
                ),
            );
        }
    }

    if s.trust_proxy {
        // New: FluxLit for Python trusted every peer here (Uvicorn's "*"); FluxLit trusts loopback
        // only, which is safe but surprises a proxy on another host.
        if s.forwarded_allow_ips.is_empty() {
            push(
                Level::Warn,
                "forwarded_allow_ips_loopback_only",
                format!(
                    "trust_proxy is on (from {}) and forwarded_allow_ips is empty, so forwarded headers (X-Forwarded-*, Forwarded) are trusted from loopback peers only (127.0.0.0/8, ::1), not from every peer as in FluxLit for Python; if your reverse proxy runs on another host, set forwarded_allow_ips (FLUXLIT_FORWARDED_ALLOW_IPS, --forwarded-allow-ips) to its addresses, e.g. 10.0.0.5 or 10.0.0.0/8; if it runs on this host, set forwarded_allow_ips = 127.0.0.1 to say so",
                    loaded.origin("trust_proxy")
                ),
            );
        }
        let broad: Vec<&String> = s
            .forwarded_allow_ips
            .iter()
            .filter(|e| matches!(e.as_str(), "*" | "0.0.0.0/0" | "::/0"))
            .collect();
        if !broad.is_empty() {
            push(
                Level::Warn,
                "forwarded_allow_ips_broad",
                format!(
                    "trust_proxy is on and forwarded_allow_ips contains {broad:?}: any client can spoof its IP, scheme and host; list your proxies' addresses instead"
                ),
            );
        }
        if s.gateway_max_proxy_request_body_bytes == 0 {
            push(Level::Warn, "gateway_max_body_unlimited_trust_proxy", "trust_proxy is on but gateway_max_proxy_request_body_bytes is 0 (unlimited); set a cap (for example 200MiB, Streamlit's own upload limit)".into());
        }
        // New: a cap above Streamlit's default server.maxUploadSize (200 MB) never triggers first.
        if s.gateway_max_proxy_request_body_bytes > 200 * 1024 * 1024 {
            push(
                Level::Warn,
                "gateway_max_body_above_streamlit_limit",
                format!(
                    "gateway_max_proxy_request_body_bytes is {} bytes, above Streamlit's default upload limit of 200 MB, so Streamlit refuses large uploads before the gateway does",
                    s.gateway_max_proxy_request_body_bytes
                ),
            );
        }
    }

    if !s.public_base_url.is_empty() {
        match split_url(&s.public_base_url) {
            None => push(
                Level::Error,
                "public_base_url_invalid",
                format!(
                    "public_base_url {:?} (from {}) is not an absolute http(s) URL such as https://example.com/myapp",
                    s.public_base_url,
                    loaded.origin("public_base_url")
                ),
            ),
            Some((_, _, path)) => {
                if !path.is_empty() && !mount.is_empty() && path != mount {
                    push(
                        Level::Warn,
                        "public_base_url_path_mismatch",
                        format!(
                            "public_base_url path {path:?} differs from the root path {mount:?}"
                        ),
                    );
                }
                // Corrected: a URL whose path is the root path (the usual subpath setup) is right.
                let api_prefix = format!("{mount}{}", s.api_mount_path);
                if !path.is_empty() && path != mount && !path.ends_with(&api_prefix) {
                    push(
                        Level::Warn,
                        "public_base_url_missing_api_prefix",
                        format!(
                            "public_base_url path {path:?} is neither the root path {mount:?} nor ends with the API prefix {api_prefix:?}"
                        ),
                    );
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (
        env.get("PUBLIC_BASE_URL"),
        env.get("FLUXLIT_PUBLIC_BASE_URL"),
    ) && !a.is_empty()
        && !b.is_empty()
        && a != b
    {
        let level = if s.strict_public_base_url {
            Level::Error
        } else {
            Level::Warn
        };
        push(
            level,
            "public_base_url_precedence",
            format!(
                "PUBLIC_BASE_URL={a:?} and FLUXLIT_PUBLIC_BASE_URL={b:?} differ; FLUXLIT_PUBLIC_BASE_URL is used"
            ),
        );
    }
    if !mount.is_empty() && s.public_base_url.is_empty() {
        push(
            Level::Warn,
            "oauth_public_base_url",
            format!(
                "root path {mount:?} is set but public_base_url is empty; OAuth redirects and absolute links need the public origin"
            ),
        );
    }
    if !mount.is_empty() && !s.trust_proxy {
        push(
            Level::Warn,
            "subpath_without_trust_proxy",
            format!(
                "root path {mount:?} is set but trust_proxy is off: the scheme and host your proxy forwards are ignored"
            ),
        );
    }
    if s.cors_allow_credentials && s.cors_allow_origins.iter().any(|o| o == "*") {
        push(
            Level::Warn,
            "cors_wildcard_with_credentials",
            "cors_allow_origins contains \"*\" and cors_allow_credentials is on: the API answers every origin with its credentials (the origin is mirrored), so any site a user visits can call the API as that user; list the allowed origins instead".into(),
        );
    }
    if !s.cors_allow_origins.is_empty() && !s.enable_security_headers {
        push(
            Level::Warn,
            "cors_without_security_headers",
            "CORS is on for the API but enable_security_headers is off".into(),
        );
    }
    if s.enable_security_headers
        && s.streamlit_page_config
            .get("csp")
            .is_some_and(|v| !v.is_null() && v != &serde_json::Value::Bool(false))
    {
        push(Level::Warn, "csp_with_security_headers", "streamlit_page_config sets csp while enable_security_headers is on; FluxLit sets no CSP, configure it at the edge".into());
    }
    let blocked: Vec<&String> = s
        .gateway_forward_client_headers_to_streamlit
        .iter()
        .filter(|n| is_blocked_forward_name(n))
        .collect();
    if !blocked.is_empty() {
        push(
            Level::Warn,
            "gateway_forward_blocked_names",
            format!(
                "gateway_forward_client_headers_to_streamlit names {blocked:?}, which are never forwarded because of it (credentials, hop-by-hop, forwarded or identity headers)"
            ),
        );
    }
    // New: WebSocket frame settings have no effect on a byte-for-byte splice.
    let ignored: Vec<&str> = [
        (
            "gateway_ws_ping_interval_s",
            s.gateway_ws_ping_interval_s.is_some(),
        ),
        (
            "gateway_ws_ping_timeout_s",
            s.gateway_ws_ping_timeout_s.is_some(),
        ),
        (
            "gateway_ws_close_timeout_s",
            s.gateway_ws_close_timeout_s.is_some(),
        ),
        (
            "gateway_ws_max_message_bytes",
            s.gateway_ws_max_message_bytes.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if !ignored.is_empty() {
        push(
            Level::Warn,
            "gateway_ws_setting_ignored",
            format!(
                "{ignored:?} have no effect: the gateway splices WebSocket bytes without terminating frames, so pings, close frames and message sizes are Streamlit's"
            ),
        );
    }
    // New: the JWT and OIDC keys are accepted (FluxLit for Python deployments set them), but
    // the jwt_* keys are read only with auth_mode = jwt (or oidc with jwt_issuer), the login's oidc_* and auth_* keys
    // only with auth_mode = oidc, and oidc_bff_secret only with auth_mode = oidc and
    // oidc_compat_exchange (the `exchange` flow); a deployment that sets them otherwise may
    // believe its API or UI is protected.
    let oidc = s.auth_mode == crate::AuthMode::Oidc;
    // In oidc mode the gateway also checks bearer tokens (API requests without a session)
    // when jwt_issuer is set.
    let jwt = s.auth_mode == crate::AuthMode::Jwt || (oidc && !s.jwt_issuer.is_empty());
    let current = serde_json::to_value(s).unwrap_or_default();
    let defaults = crate::defaults();
    // Set to something else than its default (an empty template value is no finding).
    let set = |k: &str| current.get(k) != defaults.get(k);
    let auth_keys: Vec<String> = [
        ("jwt_issuer", !jwt),
        ("jwt_audience", !jwt),
        ("jwt_hs256_secret", !jwt),
        ("jwt_jwks_url", !jwt),
        ("jwt_leeway_seconds", !jwt),
        ("oidc_bff_secret", !(oidc && s.oidc_compat_exchange)),
    ]
    .into_iter()
    .chain(OIDC_LOGIN_KEYS.iter().map(|k| (*k, !oidc)))
    .filter(|(k, unused)| *unused && set(k))
    .map(|(k, _)| format!("{k} (from {})", loaded.origin(k)))
    .collect();
    if !auth_keys.is_empty() {
        let one = auth_keys.len() == 1;
        push(
            Level::Warn,
            "auth_keys_unused",
            format!(
                "{} {}, but {} no effect with auth_mode = {} (from {}): the jwt_* keys are read only with auth_mode = \"jwt\" (bearer tokens on the API) or with auth_mode = \"oidc\" and jwt_issuer set (bearer tokens for API requests without a session), the oidc_* and auth_* login keys only with auth_mode = \"oidc\" (the OpenID Connect login) and oidc_bff_secret only with auth_mode = \"oidc\" and oidc_compat_exchange = true (FluxLit for Python's exchange flow), so nothing is protected by {}; unset {}, or set auth_mode to the mode {} belong{} to (docs/auth.md)",
                auth_keys.join(", "),
                if one { "is set" } else { "are set" },
                if one { "it has" } else { "they have" },
                s.auth_mode.as_str(),
                loaded.origin("auth_mode"),
                if one { "it" } else { "them" },
                if one { "it" } else { "them" },
                if one { "it" } else { "they" },
                if one { "s" } else { "" },
            ),
        );
    }
    if oidc {
        oidc_findings(loaded, &mut push);
    }
    if s.enable_gateway_access_log && !access_log_enabled_by(&s.log_level) {
        push(
            Level::Warn,
            "access_log_hidden_by_log_level",
            format!(
                "enable_gateway_access_log is on (from {}), but log_level = {:?} (from {}) hides its lines: the access log (target fluxlit::access) is logged at info; set log_level = \"info\", or keep the rest quiet with \"{},fluxlit::access=info\"",
                loaded.origin("enable_gateway_access_log"),
                s.log_level,
                loaded.origin("log_level"),
                s.log_level.trim()
            ),
        );
    }
    if matches!(
        loaded.origin("gateway_httpx_max_keepalive_connections"),
        Origin::File { .. } | Origin::Env { .. } | Origin::Cli { .. }
    ) {
        push(Level::Warn, "gateway_httpx_max_keepalive_ignored", "gateway_httpx_max_keepalive_connections has no effect; the pool's idle connections are bounded by gateway_httpx_max_connections".into());
    }
    out
}

/// The keys the OpenID Connect login reads (with `auth_mode = oidc` only).
pub const OIDC_LOGIN_KEYS: &[&str] = &[
    "oidc_issuer",
    "oidc_client_id",
    "oidc_client_secret",
    "oidc_scopes",
    "oidc_compat_exchange",
    "auth_required",
    "auth_public_paths",
    "auth_session_store",
    "auth_session_redis_url",
    "auth_session_key_prefix",
    "auth_cookie_secrets",
    "auth_session_lifetime_s",
    "auth_session_idle_timeout_s",
    "auth_session_max_chunks",
    "auth_allowed_emails",
    "auth_allowed_email_domains",
    "auth_allowed_groups",
    "auth_groups_claim",
    "auth_pass_access_token",
    "auth_streamlit_trusted_user_headers",
    "auth_logout_backchannel",
    "auth_post_logout_redirect_url",
    "auth_allowed_redirect_origins",
];

/// The findings about the OpenID Connect login (`auth_mode = oidc`).
fn oidc_findings(loaded: &Loaded, push: &mut impl FnMut(Level, &'static str, String)) {
    let s = &loaded.settings;
    if s.public_base_url.starts_with("http://")
        && let Some(host) = crate::url_host(&s.public_base_url)
        && !crate::is_loopback_host(&host)
    {
        push(
            Level::Warn,
            "public_base_url_insecure",
            format!(
                "auth_mode is oidc and public_base_url {:?} (from {}) is plain http on a host other than loopback: session cookies and the provider's authorization codes would cross the network unencrypted, and browsers drop Secure cookies on http; serve the app over https (TLS at your proxy) and set public_base_url = \"https://{host}…\"",
                crate::redact::redact_url_passwords(&s.public_base_url),
                loaded.origin("public_base_url")
            ),
        );
    }
    if s.auth_session_store == crate::SessionStore::Memory {
        push(
            Level::Warn,
            "auth_session_memory_single_replica",
            format!(
                "auth_session_store is memory (from {}): sessions live in this process only, so every user must log in again after a restart, and with more than one replica a user logged in on one is unknown to the others; use auth_session_store = \"cookie\" (the default, stateless) or \"redis\" for several replicas",
                loaded.origin("auth_session_store")
            ),
        );
    }
    let secrets: Vec<String> = streamlit_secret_files(loaded)
        .into_iter()
        .filter(|p| has_auth_table(p))
        .map(|p| p.display().to_string())
        .collect();
    if !secrets.is_empty() {
        push(
            Level::Warn,
            "streamlit_secrets_auth",
            format!(
                "auth_mode is oidc and {} {} an [auth] table, which turns on Streamlit's own login (st.login) beside the gateway's: users may meet two logins and st.user mixes both; remove the [auth] table (the gateway passes the user to st.user through trusted user headers) or use auth_mode = \"off\" and st.login alone",
                secrets.join(" and "),
                if secrets.len() == 1 { "has" } else { "have" }
            ),
        );
    }
}

/// The `secrets.toml` files Streamlit reads for this project besides the user's global one:
/// `.streamlit/secrets.toml` in the project directory (Streamlit's working directory) and
/// beside the target script (Streamlit 1.3x and later), without duplicates.
fn streamlit_secret_files(loaded: &Loaded) -> Vec<std::path::PathBuf> {
    let dir = &loaded.project_dir;
    let mut out = vec![dir.join(".streamlit/secrets.toml")];
    let target = &loaded.settings.target;
    // A script, not a FluxLit-for-Python `module:attr` target.
    if target.ends_with(".py")
        && let Some(parent) = dir.join(target).parent()
    {
        let beside = parent.join(".streamlit/secrets.toml");
        if !out.contains(&beside) && parent != dir.as_path() {
            out.push(beside);
        }
    }
    out
}

/// Whether the TOML file at `path` exists, parses and has a top-level `[auth]` table.
fn has_auth_table(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.get("auth").is_some_and(toml::Value::is_table))
}

/// A level name of `log_level` (uvicorn's and tracing's) as a number: off 0, error 1 (also
/// `critical`), warn 2 (`warning`), info 3, debug 4, trace 5; `None` when it is not one.
fn level_rank(name: &str) -> Option<u8> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "off" => 0,
        "critical" | "error" => 1,
        "warn" | "warning" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return None,
    })
}

/// Whether a `log_level` (a level, or a tracing `EnvFilter` directive list such as
/// `warn,fluxlit::access=info`) lets the access log's `info` lines (target `fluxlit::access`)
/// through: the directive with the longest target that is a prefix of `fluxlit::access` wins,
/// then the bare level; with neither, nothing is logged. Directives with span or field filters
/// (`[`, `{`) are not judged: the answer is then yes, so no false warning is given.
pub(crate) fn access_log_enabled_by(log_level: &str) -> bool {
    const TARGET: &str = "fluxlit::access";
    let mut default = None;
    let mut best: Option<(usize, u8)> = None;
    for d in log_level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        if d.contains(['[', '{']) {
            return true;
        }
        match d.split_once('=') {
            Some((target, level)) => {
                let Some(rank) = level_rank(level) else {
                    return true;
                };
                let target = target.trim();
                if TARGET.starts_with(target) && best.is_none_or(|(len, _)| target.len() > len) {
                    best = Some((target.len(), rank));
                }
            }
            None => match level_rank(d) {
                Some(rank) => default = Some(rank),
                // A bare target enables it at every level.
                None if TARGET.starts_with(d) => best = Some((d.len(), 5)),
                None => {}
            },
        }
    }
    best.map(|(_, r)| r).or(default).unwrap_or(0) >= 3
}

#[cfg(test)]
mod doc_tests {
    #![allow(clippy::unwrap_used)]

    /// Every string literal that follows one of `markers` (after whitespace) in `source`, up
    /// to its tests.
    pub(crate) fn literals_after(source: &str, markers: &[&str]) -> Vec<String> {
        let source = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut out = Vec::new();
        for marker in markers {
            for (i, _) in source.match_indices(marker) {
                let rest = source[i + marker.len()..].trim_start();
                if let Some(lit) = rest.strip_prefix('"')
                    && let Some(end) = lit.find('"')
                {
                    out.push(lit[..end].to_owned());
                }
            }
        }
        out
    }

    /// Every code the loader (`code: "..."`) and `findings` (`push(level, "...", ...)`) emit
    /// has its section in docs/doctor.md, and every documented code is emitted: a new code
    /// without docs fails here.
    #[test]
    fn every_code_has_its_anchor_in_the_docs() {
        let docs = include_str!("../../../docs/doctor.md");
        let mut codes = literals_after(include_str!("lib.rs"), &["code: "]);
        codes.extend(literals_after(
            include_str!("findings.rs"),
            &["Level::Warn,", "Level::Error,", "level,"],
        ));
        codes.sort();
        codes.dedup();
        assert!(codes.len() >= 20, "{codes:?}");
        for code in &codes {
            let anchor = format!("<a id=\"warning-{code}\"></a>");
            assert!(docs.contains(&anchor), "docs/doctor.md has no {anchor}");
            assert!(super::doc_link(code).ends_with(&format!("#warning-{code}")));
        }
        let documented = literals_after(docs, &["<a id="])
            .into_iter()
            .filter_map(|id| id.strip_prefix("warning-").map(str::to_owned))
            .collect::<Vec<_>>();
        for code in &documented {
            assert!(
                codes.contains(code),
                "docs/doctor.md documents {code}, which nothing emits"
            );
        }
    }
}
