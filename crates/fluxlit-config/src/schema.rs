//! The settings catalogue: every key, its type, default, environment name, flag and meaning.
//!
//! One table drives parsing, error messages, provenance and (later) the generated
//! `docs/configuration.md`, so adding a setting means adding one row here and one field to
//! [`crate::Settings`].

/// The type of a setting's value, and therefore which textual forms are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Text,
    /// Free text that may be absent (empty text in the environment means "unset").
    OptText,
    /// `1/0/true/false/yes/no/on/off`, any case; TOML booleans in files.
    Bool,
    /// A TCP port, `0..=65535` (`0` asks the OS for a free port).
    Port,
    /// A duration in seconds: a number (`2.5`) or a humantime string (`30s`, `5m`, `250ms`).
    Seconds,
    /// A list of strings: a JSON array (`["a","b"]`), comma-separated text, or a TOML array.
    List,
}

impl Kind {
    /// What a value of this kind looks like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            Kind::Text | Kind::OptText => "a string",
            Kind::Bool => "a boolean: one of 1/0, true/false, yes/no, on/off (any case)",
            Kind::Port => "a TCP port number from 0 to 65535",
            Kind::Seconds => {
                "a non-negative duration: seconds as a number (2.5) or a humantime string (30s, 5m, 250ms)"
            }
            Kind::List => {
                "a list of strings: a JSON array ([\"a\",\"b\"]), comma-separated text, or a TOML array"
            }
        }
    }
}

/// One setting in the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The canonical key, as written in `fluxlit.toml` and as the serde field name.
    pub name: &'static str,
    /// Other names accepted for the same key in files and the environment (for example
    /// FluxLit for Python's `uvicorn_graceful_shutdown_timeout_s`).
    pub aliases: &'static [&'static str],
    /// The value's type.
    pub kind: Kind,
    /// The command-line flag of `fluxlit run`, if there is one.
    pub flag: Option<&'static str>,
    /// Whether the value is a secret (redacted wherever it is printed).
    pub secret: bool,
    /// The default, as it would be written in a file (for docs and `fluxlit config`).
    pub default: &'static str,
    /// One sentence: what the setting does, with units.
    pub doc: &'static str,
}

impl KeySpec {
    /// The environment variable name, `FLUXLIT_<KEY>` in upper case.
    pub fn env_name(&self) -> String {
        env_name(self.name)
    }
}

/// `FLUXLIT_<KEY>` in upper case for a key or alias.
pub fn env_name(key: &str) -> String {
    format!("FLUXLIT_{}", key.to_ascii_uppercase())
}

/// Every setting FluxLit understands, in documentation order.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        name: "target",
        aliases: &[],
        kind: Kind::Text,
        flag: Some("TARGET (positional)"),
        secret: false,
        default: "app.py",
        doc: "The Streamlit script to run, relative to the working directory.",
    },
    KeySpec {
        name: "gateway_host",
        aliases: &[],
        kind: Kind::Text,
        flag: Some("--host"),
        secret: false,
        default: "127.0.0.1",
        doc: "Address the public gateway listens on (use 0.0.0.0 in containers).",
    },
    KeySpec {
        name: "gateway_port",
        aliases: &[],
        kind: Kind::Port,
        flag: Some("--port"),
        secret: false,
        default: "8000",
        doc: "TCP port of the public gateway; 0 picks a free port.",
    },
    KeySpec {
        name: "root_path",
        aliases: &[],
        kind: Kind::Text,
        flag: Some("--root-path"),
        secret: false,
        default: "",
        doc: "Public path prefix the app is served under (for example /myapp); passed to Streamlit as server.baseUrlPath.",
    },
    KeySpec {
        name: "streamlit_public_path",
        aliases: &[],
        kind: Kind::Text,
        flag: None,
        secret: false,
        default: "",
        doc: "Public path prefix used only when root_path is empty (FluxLit compatibility).",
    },
    KeySpec {
        name: "api_mount_path",
        aliases: &[],
        kind: Kind::Text,
        flag: Some("--api-mount-path"),
        secret: false,
        default: "/api",
        doc: "Path under the root path where the API is mounted; normalised to a leading slash and no trailing slash.",
    },
    KeySpec {
        name: "api_upstream",
        aliases: &[],
        kind: Kind::OptText,
        flag: Some("--api-upstream"),
        secret: false,
        default: "",
        doc: "URL of an API server that runs elsewhere (http://host:port[/base]); requests under the API mount are proxied to it.",
    },
    KeySpec {
        name: "api_command",
        aliases: &[],
        kind: Kind::OptText,
        flag: Some("--api-command"),
        secret: false,
        default: "",
        doc: "Shell command that starts the API; {port} is replaced by a free loopback port (also given as PORT). FluxLit supervises it.",
    },
    KeySpec {
        name: "ui_upstream",
        aliases: &[],
        kind: Kind::OptText,
        flag: Some("--ui-upstream"),
        secret: false,
        default: "",
        doc: "URL of a UI server that runs elsewhere (http://host:port[/base]); FluxLit then starts no Streamlit and proxies every non-API path there.",
    },
    KeySpec {
        name: "streamlit_python",
        aliases: &[],
        kind: Kind::OptText,
        flag: Some("--streamlit-python"),
        secret: false,
        default: "$VIRTUAL_ENV/bin/python, else ./.venv/bin/python, else python3",
        doc: "Python interpreter used as `python -m streamlit run`.",
    },
    KeySpec {
        name: "streamlit_run_cli_args",
        aliases: &[],
        kind: Kind::List,
        flag: Some("-- STREAMLIT_ARGS..."),
        secret: false,
        default: "[]",
        doc: "Extra arguments for `streamlit run`, after FluxLit's own; they may not set server.port, server.address or server.baseUrlPath.",
    },
    KeySpec {
        name: "pidfile",
        aliases: &[],
        kind: Kind::OptText,
        flag: Some("--pidfile"),
        secret: false,
        default: ".fluxlit.pid",
        doc: "Where the gateway writes its process id once the sidecars are ready; removed on shutdown.",
    },
    KeySpec {
        name: "no_pidfile",
        aliases: &[],
        kind: Kind::Bool,
        flag: Some("--no-pidfile"),
        secret: false,
        default: "false",
        doc: "Do not write a pidfile.",
    },
    KeySpec {
        name: "log_level",
        aliases: &[],
        kind: Kind::Text,
        flag: Some("--log-level"),
        secret: false,
        default: "info",
        doc: "Log filter: error, warn, info, debug, trace, or a tracing directive list.",
    },
    KeySpec {
        name: "gateway_upstream_connect_timeout_s",
        aliases: &[],
        kind: Kind::Seconds,
        flag: None,
        secret: false,
        default: "30",
        doc: "Seconds to wait for a TCP connection to an upstream; then 502.",
    },
    KeySpec {
        name: "gateway_upstream_read_timeout_s",
        aliases: &[],
        kind: Kind::Seconds,
        flag: None,
        secret: false,
        default: "120",
        doc: "Seconds to wait for an upstream's response headers; then 504. Streaming bodies and WebSockets are never cut by it.",
    },
    KeySpec {
        name: "graceful_shutdown_timeout_s",
        aliases: &["uvicorn_graceful_shutdown_timeout_s"],
        kind: Kind::Seconds,
        flag: None,
        secret: false,
        default: "30",
        doc: "Seconds in-flight requests get to finish after SIGTERM/SIGINT before connections are closed.",
    },
    KeySpec {
        name: "sidecar_start_timeout_s",
        aliases: &[],
        kind: Kind::Seconds,
        flag: None,
        secret: false,
        default: "60",
        doc: "Seconds a sidecar (Streamlit, API command) has to become ready before start-up fails.",
    },
    KeySpec {
        name: "sidecar_stop_timeout_s",
        aliases: &[],
        kind: Kind::Seconds,
        flag: None,
        secret: false,
        default: "5",
        doc: "Seconds a sidecar gets after each stop signal (SIGINT, then SIGTERM) before the next; then SIGKILL.",
    },
];

/// Names under `FLUXLIT_` that are not settings but are known to FluxLit (set for or by the
/// children, or read by other tools); they never produce an "unknown variable" warning.
pub const KNOWN_NON_SETTING_ENV: &[&str] = &[
    "FLUXLIT_CONFIG",
    "FLUXLIT_APP",
    "FLUXLIT_API_PREFIX",
    "FLUXLIT_INTERNAL_API_BASE",
    "FLUXLIT_STREAMLIT_UPSTREAM",
    "FLUXLIT_STREAMLIT_UPSTREAM_FILE",
    "FLUXLIT_TESTS",
];

/// Looks a key (or alias) up by its file name, case-insensitively.
pub fn find_key(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| {
        k.name.eq_ignore_ascii_case(name) || k.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// The closest known key to a misspelt one, if any is close enough to suggest.
pub fn suggest(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    KEYS.iter()
        .flat_map(|k| std::iter::once(k.name).chain(k.aliases.iter().copied()))
        .map(|candidate| (strsim::jaro_winkler(&lower, candidate), candidate))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_lowercase() {
        let mut seen = std::collections::BTreeSet::new();
        for k in KEYS {
            assert_eq!(k.name, k.name.to_ascii_lowercase());
            assert!(seen.insert(k.name), "duplicate key {}", k.name);
            for a in k.aliases {
                assert!(seen.insert(a), "duplicate alias {a}");
            }
        }
    }

    #[test]
    fn suggests_near_misses_only() {
        assert_eq!(suggest("gateway_prot"), Some("gateway_port"));
        assert_eq!(suggest("root_pth"), Some("root_path"));
        assert_eq!(suggest("completely_different"), None);
    }

    #[test]
    fn alias_resolves_to_its_key() {
        let spec = find_key("UVICORN_GRACEFUL_SHUTDOWN_TIMEOUT_S").expect("alias is known");
        assert_eq!(spec.name, "graceful_shutdown_timeout_s");
    }
}

/// Renders `docs/configuration.md` from [`KEYS`]; `cargo xtask docs` writes it and a test
/// fails when the committed file is stale.
pub fn render_markdown() -> String {
    let mut s = String::from(
        "# Configuration\n\n\
         <!-- Generated from crates/fluxlit-config/src/schema.rs by `cargo xtask docs`; do not edit. -->\n\n\
         Every setting can be given in every source. Precedence, highest first:\n\n\
         1. command-line flags of `fluxlit run`;\n\
         2. environment variables `FLUXLIT_<KEY>` (names are case-insensitive; unknown `FLUXLIT_*` names are warnings, other variables are ignored);\n\
         3. the project file: `--config PATH` / `FLUXLIT_CONFIG`, else `./fluxlit.toml` (top-level keys), else `[tool.fluxlit]` in `./pyproject.toml` (unknown keys are errors);\n\
         4. defaults.\n\n\
         Types: booleans accept `1/0/true/false/yes/no/on/off` (any case); durations accept seconds (`2.5`) or humantime strings (`30s`, `5m`, `250ms`); lists accept a JSON array, comma-separated text, or a TOML array.\n\n\
         | key | environment | flag | type | default | meaning |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for k in KEYS {
        let env = std::iter::once(k.env_name())
            .chain(k.aliases.iter().map(|a| env_name(a)))
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let ty = match k.kind {
            Kind::Text => "string",
            Kind::OptText => "string (optional)",
            Kind::Bool => "boolean",
            Kind::Port => "port",
            Kind::Seconds => "seconds",
            Kind::List => "list of strings",
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} |\n",
            k.name,
            env,
            k.flag.map_or_else(|| "—".to_owned(), |f| format!("`{f}`")),
            ty,
            if k.default.is_empty() {
                "*(empty)*".to_owned()
            } else {
                format!("`{}`", k.default)
            },
            k.doc.replace('|', "\\|")
        ));
    }
    s.push_str(
        "\n## Not applicable\n\n\
         FluxLit for Python settings that only make sense for its Python runtime are not carried over: \
         `title` (FastAPI title), `streamlit_host` and `streamlit_port` (unused there too), `enable_request_logging` \
         (FastAPI middleware), `url_session_query_param`, `strict_page_signatures`, `experimental_yield_pages`, \
         `async_page_depends` (page dependency injection), and the variables `FLUXLIT_APP`, `FLUXLIT_TESTS`, \
         `FLUXLIT_FORCE_URL_SESSION_IN_TESTS`, `FLUXLIT_DISABLE_URL_SESSION`, `FLUXLIT_TEST_PAGE_OVERRIDES`. \
         More of FluxLit's settings (proxy trust, limits, metrics, auth) arrive with their features.\n",
    );
    s
}

#[cfg(test)]
mod docs_tests {
    #[test]
    fn configuration_docs_are_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == super::render_markdown(),
            "{} is stale: run `cargo xtask docs` and commit the result",
            path.display()
        );
    }
}
