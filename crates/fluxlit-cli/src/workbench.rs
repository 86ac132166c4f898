//! Workbench/Connect mode: `fluxlit workbench [TARGET]` and `fluxlit run --workbench`, with the
//! meaning they have in FluxLit for Python (reference §1.4, §6.9): the app runs behind a
//! platform's own reverse proxy (Posit Workbench, Posit Connect, JupyterHub's proxy and the
//! like), so proxy headers are trusted (`trust_proxy` on, its origin `--workbench`), and a
//! banner on stderr says so and gives the loopback URLs once the port is bound.
//!
//! One deliberate difference: FluxLit for Python trusted the forwarded headers of *every* peer
//! in this mode (Uvicorn's `forwarded_allow_ips="*"`). FluxLit keeps its own default, loopback
//! only, which is what such platforms need (their proxy runs on the same host) without letting
//! any other client spoof its address, scheme or host; `forwarded_allow_ips` widens it, and the
//! banner and the `forwarded_allow_ips_loopback_only` warning say so.

use std::net::SocketAddr;

use fluxlit_config::Settings;

/// The banner's lines (each ends with a newline), for settings `s` and the bound address.
/// Unspecified bind hosts (`0.0.0.0`, `::`) are shown as `127.0.0.1`.
pub(crate) fn banner(s: &Settings, bound: SocketAddr) -> String {
    let base = fluxlit_gateway::loopback_base(bound);
    let mount = s.public_mount();
    let api = format!("{base}{mount}{}", s.api_mount_path);
    let mut lines = vec![
        "Workbench/Connect mode: proxy headers are trusted (trust_proxy is ON; trust only your platform's reverse proxy).".to_owned(),
        format!("App: {}", s.target),
    ];
    if s.forwarded_allow_ips.is_empty() {
        lines.push("X-Forwarded-* headers will be honored for scheme/host/client IP from loopback peers only (127.0.0.0/8, ::1).".into());
    } else {
        lines.push(format!(
            "X-Forwarded-* headers will be honored for scheme/host/client IP from: {}.",
            s.forwarded_allow_ips.join(", ")
        ));
    }
    lines.push(format!("Open in browser (loopback): {base}{mount}/"));
    lines.push(format!("API liveness: {api}/healthz"));
    if s.api_command.is_some() || s.api_upstream.is_some() {
        lines.push(format!(
            "API docs (when the API serves them, as FastAPI does): {api}/docs"
        ));
    }
    if mount.is_empty() {
        lines.push("Hint: set FLUXLIT_ROOT_PATH when users reach this app under a subpath that the proxy passes on unchanged.".into());
    }
    if !s.public_base_url.is_empty() {
        lines.push(format!(
            "OAuth / canonical public URL: {} (public_base_url).",
            s.public_base_url
        ));
    }
    if s.forwarded_allow_ips.is_empty() {
        lines.push("If the proxy reaches this app from another host, list its addresses in FLUXLIT_FORWARDED_ALLOW_IPS.".into());
    } else if s
        .forwarded_allow_ips
        .iter()
        .any(|e| matches!(e.as_str(), "*" | "0.0.0.0/0" | "::/0"))
    {
        lines.push(
            "Tighten FLUXLIT_FORWARDED_ALLOW_IPS in production when the proxy IP range is known."
                .into(),
        );
    }
    lines
        .into_iter()
        .map(|l| format!("[fluxlit] {l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use fluxlit_config::{CliOverrides, Environment, LoadOptions};

    fn settings(env: &[(&str, &str)]) -> Settings {
        let dir = std::env::temp_dir();
        fluxlit_config::load(&LoadOptions::new(
            &dir,
            Environment::from_pairs(env.iter().copied()),
            CliOverrides::default(),
        ))
        .expect("valid settings")
        .settings
    }

    #[test]
    fn banner_gives_loopback_urls_and_the_trust_it_uses() {
        let s = settings(&[("FLUXLIT_TARGET", "ui.py")]);
        let text = banner(&s, "0.0.0.0:8123".parse().unwrap());
        assert_eq!(
            text,
            "[fluxlit] Workbench/Connect mode: proxy headers are trusted (trust_proxy is ON; trust only your platform's reverse proxy).\n\
             [fluxlit] App: ui.py\n\
             [fluxlit] X-Forwarded-* headers will be honored for scheme/host/client IP from loopback peers only (127.0.0.0/8, ::1).\n\
             [fluxlit] Open in browser (loopback): http://127.0.0.1:8123/\n\
             [fluxlit] API liveness: http://127.0.0.1:8123/api/healthz\n\
             [fluxlit] Hint: set FLUXLIT_ROOT_PATH when users reach this app under a subpath that the proxy passes on unchanged.\n\
             [fluxlit] If the proxy reaches this app from another host, list its addresses in FLUXLIT_FORWARDED_ALLOW_IPS.\n"
        );
    }

    #[test]
    fn banner_with_a_mount_an_api_a_public_url_and_a_broad_allow_list() {
        let s = settings(&[
            ("FLUXLIT_ROOT_PATH", "/myapp"),
            ("FLUXLIT_API_UPSTREAM", "http://127.0.0.1:9000"),
            ("FLUXLIT_PUBLIC_BASE_URL", "https://example.com/myapp"),
            ("FLUXLIT_FORWARDED_ALLOW_IPS", "*"),
        ]);
        let text = banner(&s, "[::]:9000".parse().unwrap());
        for line in [
            "from: *.",
            "Open in browser (loopback): http://127.0.0.1:9000/myapp/\n",
            "API liveness: http://127.0.0.1:9000/myapp/api/healthz\n",
            "API docs (when the API serves them, as FastAPI does): http://127.0.0.1:9000/myapp/api/docs\n",
            "OAuth / canonical public URL: https://example.com/myapp",
            "Tighten FLUXLIT_FORWARDED_ALLOW_IPS",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        assert!(!text.contains("Hint:"), "{text}");
    }
}
