//! `fluxlit doctor --verbose`: the effective configuration, secrets redacted, with where each
//! value came from. The JSON keys follow FluxLit for Python's (reference §1.6.2) where it has
//! them; `sources` is new.
//!
//! ```text
//! {"resolved_target": "/srv/app/app.py",
//!  "project_file": "/srv/app/fluxlit.toml" | null,
//!  "settings_redacted": {...every setting, secrets "[REDACTED]"...},
//!  "sources": {"<key>": "default" | "environment variable FLUXLIT_…" | "<file>:<line>" | …},
//!  "effective": {api_mount_path, public_mount_path, gateway_bind, internal_api_base_derived,
//!                internal_api_base_env, public_base_url, trust_proxy, forwarded_allow_ips},
//!  "gateway_proxy": {upstream_connect_timeout_s, upstream_read_timeout_s, ws_open_timeout_s,
//!                    max_proxy_request_body_bytes, max_concurrent_upstream_http,
//!                    forward_client_headers_http},
//!  "streamlit_sidecar": {fluxlit_managed_runtime, ui_upstream}}
//! ```
//! When the configuration does not load: `{"resolved_target": null, "config_failed": true}`.

use fluxlit_config::redact::{redact_url_passwords, settings_json};
use fluxlit_config::schema::KEYS;
use fluxlit_config::{LoadOptions, Loaded};
use serde_json::{Value, json};

/// The three tips FluxLit for Python prints after the verbose block, in FluxLit's words.
pub const HINTS: &[&str] = &[
    "FluxLit sets FLUXLIT_INTERNAL_API_BASE for Streamlit and the API itself; do not set it in the gateway's environment",
    "behind a reverse proxy on a subpath, set FLUXLIT_ROOT_PATH to the subpath and FLUXLIT_TRUST_PROXY=1 with FLUXLIT_FORWARDED_ALLOW_IPS listing the proxy's addresses",
    "set FLUXLIT_PUBLIC_BASE_URL to the URL users open (https://host/subpath) for OAuth redirects and absolute links",
];

/// The snapshot for `loaded` (see the module doc).
pub fn snapshot(opts: &LoadOptions, loaded: &Loaded) -> Value {
    let s = &loaded.settings;
    let resolved_target = match fluxlit::pyapp::PythonTarget::parse(&s.target, &opts.cwd) {
        Ok(Some(t)) => t.as_str().to_owned(),
        _ => opts.cwd.join(&s.target).display().to_string(),
    };
    let sources: serde_json::Map<String, Value> = KEYS
        .iter()
        .map(|k| {
            (
                k.name.to_owned(),
                Value::String(loaded.origin(k.name).to_string()),
            )
        })
        .collect();
    let bind = if s.gateway_host.contains(':') {
        format!("[{}]:{}", s.gateway_host, s.gateway_port)
    } else {
        format!("{}:{}", s.gateway_host, s.gateway_port)
    };
    json!({
        "resolved_target": resolved_target,
        "project_file": loaded.project_file.as_ref().map(|p| p.display().to_string()),
        "settings_redacted": settings_json(s),
        "sources": sources,
        "effective": {
            "api_mount_path": s.api_mount_path,
            "public_mount_path": s.public_mount(),
            "gateway_bind": bind,
            "internal_api_base_derived": format!("http://127.0.0.1:{}{}", s.gateway_port, s.api_mount_path),
            "internal_api_base_env": opts.env.get("FLUXLIT_INTERNAL_API_BASE").map(redact_url_passwords),
            "public_base_url": (!s.public_base_url.is_empty()).then(|| redact_url_passwords(&s.public_base_url)),
            "trust_proxy": s.trust_proxy,
            "forwarded_allow_ips": s.forwarded_allow_ips,
        },
        "gateway_proxy": {
            "upstream_connect_timeout_s": s.gateway_upstream_connect_timeout_s.as_secs_f64(),
            "upstream_read_timeout_s": s.gateway_upstream_read_timeout_s.as_secs_f64(),
            "ws_open_timeout_s": s.gateway_ws_open_timeout_s.as_secs_f64(),
            "max_proxy_request_body_bytes": s.gateway_max_proxy_request_body_bytes,
            "max_concurrent_upstream_http": s.gateway_max_concurrent_upstream_http,
            "forward_client_headers_http": s.gateway_forward_client_headers_to_streamlit,
        },
        "streamlit_sidecar": {
            "fluxlit_managed_runtime": s.ui_upstream.is_none(),
            "ui_upstream": s.ui_upstream.as_deref().map(redact_url_passwords),
        },
    })
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::String(s) if s.is_empty() => "(empty)".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human form: a header, `key: value` lines per section, each setting as
/// `key = value    # source`, then the hints.
pub fn to_text(v: &Value) -> String {
    let mut s = String::from("--- Verbose (effective configuration; secrets redacted) ---\n");
    if v.get("config_failed").is_some() {
        s.push_str("the configuration did not load (see the config row)\n\n");
        return s;
    }
    for key in ["resolved_target", "project_file"] {
        s.push_str(&format!("{key}: {}\n", scalar(&v[key])));
    }
    for section in ["effective", "gateway_proxy", "streamlit_sidecar"] {
        s.push_str(&format!("{section}:\n"));
        if let Some(obj) = v[section].as_object() {
            for (k, val) in obj {
                s.push_str(&format!("  {k}: {}\n", scalar(val)));
            }
        }
    }
    s.push_str("settings (value, then where it came from):\n");
    // In the schema's order, as `fluxlit config` prints them.
    let width = KEYS.iter().map(|k| k.name.len()).max().unwrap_or(0);
    for k in KEYS {
        if let Some(val) = v["settings_redacted"].get(k.name) {
            s.push_str(&format!(
                "  {:width$} = {val}    # {}\n",
                k.name,
                scalar(&v["sources"][k.name])
            ));
        }
    }
    s.push_str("Hints:\n");
    for h in HINTS {
        s.push_str(&format!("  - {h}\n"));
    }
    s.push('\n');
    s
}
