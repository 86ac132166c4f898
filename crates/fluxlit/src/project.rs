//! New projects: what `fluxlit new NAME [--profile …]` writes (FluxLit for Python reference
//! §1.9, adapted to this gateway: a Streamlit script and a FastAPI app started by
//! `api_command`, instead of one `FluxLit(...)` object).
//!
//! Every profile runs with `fluxlit run` at once, once its `requirements.txt` is installed in
//! `./.venv` (the default interpreter when present): `fluxlit.toml`, a Streamlit page
//! (`app.py`) that calls the API through `FLUXLIT_INTERNAL_API_BASE`, a FastAPI app (`api.py`)
//! with the route the page calls, `requirements.txt` with the exact versions `cargo xtask ci`
//! tests (`examples/hello/requirements.txt`), `.gitignore` and `README.md`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The versions every new project pins: the example's, tested end to end in CI.
const REQUIREMENTS: &str = include_str!("../../../examples/hello/requirements.txt");

/// The Kubernetes manifests the `deploy` profile writes under `kubernetes/`: those of
/// `examples/kubernetes/`, which `cargo xtask k8s` validates in CI.
const KUBERNETES: [(&str, &str); 7] = [
    (
        "kubernetes/README.md",
        include_str!("../../../examples/kubernetes/README.md"),
    ),
    (
        "kubernetes/kustomization.yaml",
        include_str!("../../../examples/kubernetes/kustomization.yaml"),
    ),
    (
        "kubernetes/deployment.yaml",
        include_str!("../../../examples/kubernetes/deployment.yaml"),
    ),
    (
        "kubernetes/service.yaml",
        include_str!("../../../examples/kubernetes/service.yaml"),
    ),
    (
        "kubernetes/pdb.yaml",
        include_str!("../../../examples/kubernetes/pdb.yaml"),
    ),
    (
        "kubernetes/ingress.yaml",
        include_str!("../../../examples/kubernetes/ingress.yaml"),
    ),
    (
        "kubernetes/hpa.yaml",
        include_str!("../../../examples/kubernetes/hpa.yaml"),
    ),
];

/// What a new project contains beyond the common files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// A page and an API route (`GET /users`).
    #[default]
    Minimal,
    /// Minimal plus the authentication settings, commented out, in `fluxlit.toml` (`GET
    /// /public`, and a `GET /me` that shows the identity headers the gateway forwards).
    AuthReady,
    /// Minimal plus what deployment needs: a wide page (`GET /items`), the production settings
    /// in `fluxlit.toml` (JSON access log, metrics, host 0.0.0.0 via the environment), the
    /// `Dockerfile` and `.dockerignore` `fluxlit build` writes, and the Kubernetes manifests
    /// under `kubernetes/` (those of `examples/kubernetes/`).
    Deploy,
}

impl Profile {
    /// Every profile, in the order `--help` lists them.
    pub const ALL: [Profile; 3] = [Profile::Minimal, Profile::AuthReady, Profile::Deploy];

    /// The name on the command line: `minimal`, `auth-ready`, `deploy`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Minimal => "minimal",
            Profile::AuthReady => "auth-ready",
            Profile::Deploy => "deploy",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Profile::Minimal => "FluxLit Demo",
            Profile::AuthReady => "FluxLit Auth Demo",
            Profile::Deploy => "FluxLit Deploy Demo",
        }
    }

    /// The API route the page calls and the key of the list it returns.
    fn route(self) -> &'static str {
        match self {
            Profile::Minimal => "users",
            Profile::AuthReady => "public",
            Profile::Deploy => "items",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown profile {s:?}: expected minimal, auth-ready or deploy"))
    }
}

/// Why a project was not created.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The destination exists (reference: `Destination already exists: {path}`, exit 1).
    #[error("Destination already exists: {}", .0.display())]
    Exists(PathBuf),
    /// A directory or file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The files of a new project with `profile`, as (relative path, contents).
pub fn files(profile: Profile) -> Vec<(&'static str, String)> {
    let mut files = vec![
        ("fluxlit.toml", fluxlit_toml(profile)),
        ("app.py", app_py(profile)),
        ("api.py", api_py(profile)),
        ("requirements.txt", REQUIREMENTS.to_owned()),
        (".gitignore", GITIGNORE.to_owned()),
        ("README.md", readme(profile)),
    ];
    if profile == Profile::Deploy {
        // What `fluxlit build` writes for this project (target app.py, port 8000, /api).
        if let Ok(spec) = crate::scaffold::ImageSpec::new("app.py", 8000, "/api") {
            files.push(("Dockerfile", crate::scaffold::dockerfile(&spec)));
            files.push((".dockerignore", crate::scaffold::dockerignore()));
        }
        files.extend(KUBERNETES.iter().map(|(p, t)| (*p, (*t).to_owned())));
    }
    files
}

/// Creates `dest` (with parents) and writes [`files`] into it. Refuses when `dest` exists,
/// even empty (as the reference does). On a write error, what was written stays.
pub fn create(dest: &Path, profile: Profile) -> Result<(), NewError> {
    if dest.exists() {
        return Err(NewError::Exists(dest.to_path_buf()));
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Write { path, source }
    };
    std::fs::create_dir_all(dest).map_err(write_err(dest))?;
    for (name, text) in files(profile) {
        let path = dest.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        }
        std::fs::write(&path, text).map_err(write_err(&path))?;
    }
    Ok(())
}

const GITIGNORE: &str = ".venv/\n__pycache__/\n*.py[cod]\n.fluxlit.pid\n.env\n";

fn fluxlit_toml(profile: Profile) -> String {
    let mut s = String::from(
        "# FluxLit configuration (docs: fluxlit config prints every setting and where it came from).\n\
         # Precedence: flags, then FLUXLIT_* environment variables, then ./.env, then this file.\n\
         target = \"app.py\"\n\
         gateway_port = 8000\n\
         \n\
         # The API: started by FluxLit on a free loopback port ({port}), mounted under /api.\n\
         # {api_prefix} is its public prefix (/api, or /ROOT/api with a root path), so FastAPI's\n\
         # /api/docs and /api/openapi.json work under any prefix.\n\
         api_command = \"python -m uvicorn api:app --host 127.0.0.1 --port {port} --root-path {api_prefix}\"\n",
    );
    match profile {
        Profile::Minimal => {}
        Profile::AuthReady => s.push_str(
            "\n\
             # Authentication at the gateway (docs/auth.md).\n\
             #\n\
             # Behind oauth2-proxy, Pomerium or a cloud load balancer that authenticates users:\n\
             # only the proxy may reach the app, and its identity headers reach the API and\n\
             # st.user (see api.py's /me).\n\
             # auth_mode = \"forward\"\n\
             # auth_forward_trusted_cidrs = [\"127.0.0.1\"]   # the proxy's address as FluxLit sees it\n\
             # auth_forward_user_header = \"X-Forwarded-User\"\n\
             #\n\
             # Or bearer tokens (JWT) on every /api request but the health endpoints; the UI\n\
             # stays public. Without jwt_jwks_url the keys come from the issuer's discovery\n\
             # document; an HS256 secret goes in FLUXLIT_JWT_HS256_SECRET, never in this file.\n\
             # auth_mode = \"jwt\"\n\
             # jwt_issuer = \"https://login.example.com/realms/main\"\n\
             # jwt_audience = [\"fluxlit-api\"]\n\
             # jwt_jwks_url = \"https://login.example.com/realms/main/protocol/openid-connect/certs\"\n\
             #\n\
             # Or the browser login at the gateway (OpenID Connect; docs/auth.md). The client\n\
             # secret goes in FLUXLIT_OIDC_CLIENT_SECRET and the cookie secret (32+ random\n\
             # bytes) in FLUXLIT_AUTH_COOKIE_SECRETS, never in this file.\n\
             # auth_mode = \"oidc\"\n\
             # public_base_url = \"https://app.example.com\"\n\
             # oidc_issuer = \"https://login.example.com/realms/main\"\n\
             # oidc_client_id = \"fluxlit\"\n",
        ),
        Profile::Deploy => s.push_str(
            "\n\
             # Production: JSON access log and Prometheus metrics. In a container set\n\
             # FLUXLIT_GATEWAY_HOST=0.0.0.0 and FLUXLIT_FORWARDED_ALLOW_IPS to your proxies'\n\
             # addresses (fluxlit doctor checks both).\n\
             log_format = \"json\"\n\
             enable_gateway_prometheus_metrics = true\n",
        ),
    }
    s
}

fn app_py(profile: Profile) -> String {
    let title = profile.title();
    let route = profile.route();
    let config = match profile {
        Profile::Deploy => "st.set_page_config(layout=\"wide\")\n",
        _ => "",
    };
    let footer = match profile {
        Profile::Minimal => {
            "st.caption(\"Edit app.py and api.py; FluxLit serves both on one port.\")\n"
        }
        Profile::AuthReady => {
            "st.caption(\"Set auth_mode in fluxlit.toml (see the comments there); /api/me shows the identity the gateway forwards.\")\nst.write(\"Signed in as:\", st.user.get(\"email\") or \"nobody (auth_mode is off)\")\n"
        }
        Profile::Deploy => {
            "st.caption(\"Before deploying, run `fluxlit doctor` and `fluxlit config --strict`.\")\n"
        }
    };
    // With auth_mode = forward the page's own calls to the API go through the gateway from
    // 127.0.0.1 and need the user's identity headers, which Streamlit saw on the WebSocket
    // handshake (docs/auth.md, "Calls from Streamlit to the API").
    let identity = match profile {
        Profile::AuthReady => {
            "{k: v for k, v in st.context.headers.items() if k.lower() in IDENTITY_HEADERS}"
        }
        _ => "{}",
    };
    let identity_names = match profile {
        Profile::AuthReady => {
            "\n# The user's identity, as the gateway set it on the WebSocket handshake\n# (auth_mode = forward), passed on to the API.\nIDENTITY_HEADERS = {\"x-forwarded-user\", \"x-forwarded-email\", \"x-forwarded-name\", \"x-forwarded-preferred-username\", \"x-forwarded-groups\"}\n"
        }
        _ => "",
    };
    format!(
        r#""""{title}: a Streamlit page that calls its API through the FluxLit gateway."""

from __future__ import annotations

import json
import os
import urllib.request

import streamlit as st
{identity_names}
{config}st.title("{title}")

# FluxLit gives Streamlit the API's loopback URL (e.g. http://127.0.0.1:8000/api).
api_base = os.environ.get("FLUXLIT_INTERNAL_API_BASE", "").rstrip("/")
if not api_base:
    st.error("FLUXLIT_INTERNAL_API_BASE is not set: start this app with `fluxlit run`.")
else:
    try:
        request = urllib.request.Request(f"{{api_base}}/{route}", headers={identity})
        with urllib.request.urlopen(request, timeout=5) as response:
            data = json.load(response)
    except Exception as exc:  # noqa: BLE001 - shown on the page
        st.error(f"Could not call {{api_base}}/{route}: {{exc}}")
    else:
        st.subheader(data["title"])
        st.table(data["{route}"])
{footer}"#
    )
}

fn api_py(profile: Profile) -> String {
    let title = profile.title();
    let route = profile.route();
    let extra = match profile {
        Profile::AuthReady => {
            r#"

IDENTITY_HEADERS = ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups")


@app.get("/me")
def me(request: Request) -> dict[str, str | None]:
    """The identity the gateway forwards (empty unless auth_mode is set)."""
    return {name: request.headers.get(name) for name in IDENTITY_HEADERS}
"#
        }
        _ => "",
    };
    let import = match profile {
        Profile::AuthReady => "from fastapi import Depends, FastAPI, Request",
        _ => "from fastapi import Depends, FastAPI",
    };
    format!(
        r#""""{title} API: FastAPI, started by FluxLit from api_command and mounted under /api."""

from __future__ import annotations

from typing import Any

{import}

app = FastAPI(title="{title} API")

ROWS: list[dict[str, Any]] = [
    {{"id": 1, "name": "Ada"}},
    {{"id": 2, "name": "Grace"}},
    {{"id": 3, "name": "Linus"}},
]


def rows() -> list[dict[str, Any]]:
    """A dependency: where a database session or a client would come from."""
    return ROWS


@app.get("/{route}")
def list_{route}(items: list[dict[str, Any]] = Depends(rows)) -> dict[str, Any]:
    """What the page shows (public as /api/{route})."""
    return {{"title": "{title}", "{route}": items}}
{extra}"#
    )
}

fn readme(profile: Profile) -> String {
    format!(
        "# {title}\n\n\
         Created by `fluxlit new --profile {profile}`.\n\n\
         ```sh\n\
         python3 -m venv .venv\n\
         .venv/bin/pip install -r requirements.txt\n\
         fluxlit run          # http://127.0.0.1:8000/ (the page), /api/{route}, /api/docs\n\
         ```\n\n\
         `fluxlit run` uses `./.venv/bin/python` for Streamlit and the API. `fluxlit doctor` checks\n\
         the setup; `fluxlit config` shows every setting and where it came from.\n",
        title = profile.title(),
        route = profile.route(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn profiles_parse_by_name_only() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>(), Ok(p));
        }
        let e = "full".parse::<Profile>().unwrap_err();
        assert!(e.contains("\"full\"") && e.contains("auth-ready"), "{e}");
    }

    #[test]
    fn every_profile_has_the_runnable_files_and_its_route() {
        for p in Profile::ALL {
            let files = files(p);
            let get = |n: &str| &files.iter().find(|(name, _)| *name == n).unwrap().1;
            assert!(get("fluxlit.toml").contains("target = \"app.py\""));
            assert!(get("fluxlit.toml").contains("{api_prefix}"));
            assert!(get("app.py").contains(&format!("/{}", p.route())));
            assert!(get("api.py").contains(&format!("@app.get(\"/{}\")", p.route())));
            assert!(get("requirements.txt").contains("streamlit=="));
            assert!(get("requirements.txt").contains("fastapi=="));
        }
        let deploy = files(Profile::Deploy);
        assert!(
            deploy
                .iter()
                .any(|(n, t)| *n == "kubernetes/deployment.yaml" && t.contains("kind: Deployment"))
        );
        assert!(
            !files(Profile::Minimal)
                .iter()
                .any(|(n, _)| n.starts_with("kubernetes/"))
        );
        let auth = files(Profile::AuthReady);
        assert!(auth[0].1.contains("# auth_mode = \"forward\""));
        assert!(!auth[0].1.contains("\nauth_mode"), "commented out");
    }

    #[test]
    fn create_refuses_an_existing_destination() {
        let dir = std::env::temp_dir().join(format!("fluxlit-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dest = dir.join("a/b/demo");
        create(&dest, Profile::Minimal).unwrap();
        assert!(dest.join("api.py").is_file());
        let e = create(&dest, Profile::Minimal).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("Destination already exists: {}", dest.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
