//! The rows about what FluxLit runs: `python_version`, `streamlit_version`, `target` /
//! `import_target`, `api`, `gateway_bind`.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use fluxlit_config::{LoadOptions, Loaded};

use crate::Report;

/// The oldest Streamlit FluxLit supports: FluxLit for Python's floor (reference §9.1), and
/// new enough for what the gateway relies on (`/_stcore/health`, the `/_stcore/stream`
/// WebSocket, `server.baseUrlPath`).
pub(crate) const MIN_STREAMLIT: (u64, u64) = (1, 33);

/// The first Streamlit with `server.trustedUserHeaders` (identity headers in `st.user`), which
/// `auth_mode = forward` and `oidc` wire up (docs/auth.md).
pub(crate) const MIN_STREAMLIT_TRUSTED_USER_HEADERS: (u64, u64) = (1, 49);

/// How long `python --version` and `python -m streamlit version` may take.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a TCP connect to an upstream may take before it counts as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

pub(crate) async fn check(r: &mut Report, opts: &LoadOptions, loaded: &Loaded) {
    let s = &loaded.settings;
    let python_app = fluxlit::pyapp::PythonTarget::parse(&s.target, &opts.cwd);
    let serves_py_api =
        matches!(python_app, Ok(Some(_))) && s.api_command.is_none() && s.api_upstream.is_none();
    // FluxLit runs Python for Streamlit (no ui_upstream) and for a FluxLit-for-Python app's API.
    let needs_python = s.ui_upstream.is_none() || serves_py_api;
    let python = &s.streamlit_python;
    let path_env = opts.env.get("PATH");

    if needs_python {
        match fluxlit_sidecar::capture(OsStr::new(python), &["--version"], PYTHON_TIMEOUT).await {
            Ok(c) if c.exit.code == Some(0) => r.pass(
                "python_version",
                format!(
                    "{} ({}; from {})",
                    python,
                    (c.stdout.trim().to_owned() + c.stderr.trim()),
                    loaded.origin("streamlit_python")
                ),
            ),
            Ok(c) => r.fail(
                "python_version",
                format!(
                    "`{python} --version` failed ({}): {}; point streamlit_python (FLUXLIT_STREAMLIT_PYTHON, --streamlit-python; from {}) at a working interpreter",
                    c.exit,
                    c.stderr.trim(),
                    loaded.origin("streamlit_python")
                ),
            ),
            Err(e) => r.fail(
                "python_version",
                format!(
                    "cannot run {python} (from {}): {e}; create the venv or set FLUXLIT_STREAMLIT_PYTHON",
                    loaded.origin("streamlit_python")
                ),
            ),
        }
    } else {
        r.pass(
            "python_version",
            "not used: ui_upstream is set, so FluxLit starts no Streamlit, and the API is not a FluxLit-for-Python app's",
        );
    }

    if s.ui_upstream.is_some() {
        r.pass(
            "streamlit_version",
            "not checked: ui_upstream is set, so FluxLit starts no Streamlit (the streamlit_upstream row checks the upstream)",
        );
    } else {
        let identity_headers = s.auth_mode == fluxlit_config::AuthMode::Forward
            || (s.auth_mode == fluxlit_config::AuthMode::Oidc
                && s.auth_streamlit_trusted_user_headers);
        streamlit_version(r, python, identity_headers).await;
    }

    let script = opts.cwd.join(&s.target);
    match &python_app {
        Ok(Some(t)) if needs_python => {
            let path = format!(
                "{}{}",
                Path::new(python)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| format!("{}:", p.display()))
                    .unwrap_or_default(),
                path_env.unwrap_or("/usr/local/bin:/usr/bin:/bin")
            );
            match fluxlit::pyapp::probe(Path::new(python), &opts.cwd, &path, t) {
                Ok(package) => r.pass(
                    "import_target",
                    format!(
                        "FluxLit-for-Python app {} (fluxlit {} for {}; its API is served with uvicorn, its pages by {})",
                        t.as_str(),
                        package.version,
                        python,
                        package.entry.display()
                    ),
                ),
                Err(problem) => r.fail(
                    "import_target",
                    format!(
                        "{:?} (target from {}) {problem}",
                        t.as_str(),
                        loaded.origin("target")
                    ),
                ),
            }
        }
        Ok(Some(t)) => r.pass(
            "import_target",
            format!(
                "{}: not imported, ui_upstream serves the UI and the API is {}",
                t.as_str(),
                if s.api_command.is_some() {
                    "api_command"
                } else {
                    "api_upstream"
                }
            ),
        ),
        Err(problem) => r.fail(
            "import_target",
            format!(
                "{:?} (target from {}) {problem}",
                s.target,
                loaded.origin("target")
            ),
        ),
        Ok(None) if s.ui_upstream.is_some() => r.pass(
            "target",
            format!("{}: not used, ui_upstream serves the UI", script.display()),
        ),
        Ok(None) if script.is_file() => r.pass("target", script.display().to_string()),
        Ok(None) => r.fail(
            "target",
            format!(
                "{} does not exist (target from {}); pass the script as `fluxlit run app.py`",
                script.display(),
                loaded.origin("target")
            ),
        ),
    }

    match (&s.api_command, &s.api_upstream) {
        (Some(cmd), _) => {
            let origin = loaded.origin("api_command");
            match fluxlit::find_api_program(s, cmd, Path::new(python), path_env, &opts.cwd) {
                Ok(p) if p.shell => r.warn(
                    "api",
                    format!(
                        "FluxLit starts and supervises `{cmd}` (from {origin}) under `sh -c` ({}) because it uses shell syntax; if the gateway is killed with SIGKILL, what the shell started may outlive it: use a plain command, or start it with `exec`",
                        p.path.display()
                    ),
                ),
                Ok(p) => r.pass(
                    "api",
                    format!(
                        "FluxLit starts and supervises `{cmd}` (from {origin}); `{}` is {}",
                        p.program,
                        p.path.display()
                    ),
                ),
                Err(problem) => r.fail(
                    "api",
                    format!("api_command `{cmd}` (from {origin}) cannot start: {problem}"),
                ),
            }
        }
        (None, Some(url)) => {
            let origin = loaded.origin("api_upstream");
            match reachable(url).await {
                Ok(()) => r.pass(
                    "api",
                    format!("proxied to {url} (from {origin}), which accepts connections"),
                ),
                Err(e) => r.warn(
                    "api",
                    format!(
                        "proxied to {url} (from {origin}), which is not reachable now ({e}); {}/readyz answers 503 and API requests 502 until it is: start it, or fix api_upstream",
                        s.api_mount_path
                    ),
                ),
            }
        }
        (None, None) if serves_py_api => r.pass(
            "api",
            format!(
                "FluxLit serves the FluxLit-for-Python app's FastAPI object (app.api) with uvicorn under {}",
                s.api_mount_path
            ),
        ),
        (None, None) => r.warn(
            "api",
            format!(
                "no API configured: {}/… answers 404 except healthz and readyz; set api_command or api_upstream",
                s.api_mount_path
            ),
        ),
    }

    gateway_bind(r, loaded);
}

/// `python -m streamlit version`: FAIL when it does not run, WARN below [`MIN_STREAMLIT`], and
/// below [`MIN_STREAMLIT_TRUSTED_USER_HEADERS`] when the gateway passes the user's identity to
/// Streamlit (`identity_headers`).
async fn streamlit_version(r: &mut Report, python: &str, identity_headers: bool) {
    let c = match fluxlit_sidecar::capture(
        OsStr::new(python),
        &["-m", "streamlit", "version"],
        PYTHON_TIMEOUT,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            return r.fail(
                "streamlit_version",
                format!("`{python} -m streamlit version`: {e}"),
            );
        }
    };
    if c.exit.code != Some(0) {
        return r.fail(
            "streamlit_version",
            format!(
                "`{python} -m streamlit version` failed ({}): {}; install it with `{python} -m pip install streamlit`",
                c.exit,
                c.stderr.trim()
            ),
        );
    }
    let out = c.stdout.trim();
    match parse_streamlit_version(out) {
        Some(v)
            if identity_headers
                && (v.0, v.1) >= MIN_STREAMLIT
                && (v.0, v.1) < MIN_STREAMLIT_TRUSTED_USER_HEADERS =>
        {
            r.warn(
                "streamlit_version",
                format!(
                    "{}.{}.{} ({python}) has no server.trustedUserHeaders, so st.user stays empty although the gateway passes the user's identity (auth_mode forward or oidc); Streamlit {}.{} or later shows it: `{python} -m pip install -U streamlit`",
                    v.0,
                    v.1,
                    v.2,
                    MIN_STREAMLIT_TRUSTED_USER_HEADERS.0,
                    MIN_STREAMLIT_TRUSTED_USER_HEADERS.1
                ),
            );
        }
        Some(v) if (v.0, v.1) >= MIN_STREAMLIT => r.pass(
            "streamlit_version",
            format!(
                "{}.{}.{} ({python}); FluxLit uses its /_stcore/health probe, the /_stcore/stream WebSocket and server.baseUrlPath",
                v.0, v.1, v.2
            ),
        ),
        Some(v) => r.warn(
            "streamlit_version",
            format!(
                "{}.{}.{} ({python}) is older than {}.{}, the oldest FluxLit supports; upgrade it with `{python} -m pip install -U streamlit`",
                v.0, v.1, v.2, MIN_STREAMLIT.0, MIN_STREAMLIT.1
            ),
        ),
        None => r.warn(
            "streamlit_version",
            format!(
                "cannot read a version from `{python} -m streamlit version` ({out:?}); FluxLit needs Streamlit {}.{} or later",
                MIN_STREAMLIT.0, MIN_STREAMLIT.1
            ),
        ),
    }
}

/// `(major, minor, patch)` from `Streamlit, version 1.67.0` (a missing patch is 0; a suffix
/// such as `rc1` is ignored).
pub(crate) fn parse_streamlit_version(out: &str) -> Option<(u64, u64, u64)> {
    let v = out.rsplit("version").next()?.trim();
    let mut parts = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
    });
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether `url` (an upstream URL) accepts a TCP connection within [`CONNECT_TIMEOUT`].
pub(crate) async fn reachable(url: &str) -> Result<(), String> {
    let u = fluxlit_config::parse_upstream_url(url).map_err(|e| format!("not a valid URL: {e}"))?;
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((u.host.as_str(), u.port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{} {e}", u.authority())),
        Err(_) => Err(format!(
            "{} did not answer within {} ms",
            u.authority(),
            CONNECT_TIMEOUT.as_millis()
        )),
    }
}

/// FAIL when the public address cannot be bound now (another process holds it).
fn gateway_bind(r: &mut Report, loaded: &Loaded) {
    let s = &loaded.settings;
    let shown = if s.gateway_host.contains(':') {
        format!("[{}]:{}", s.gateway_host, s.gateway_port)
    } else {
        format!("{}:{}", s.gateway_host, s.gateway_port)
    };
    if s.gateway_port == 0 {
        return r.pass(
            "gateway_bind",
            format!("{shown}: port 0, FluxLit picks a free port at start-up"),
        );
    }
    let addrs: Vec<SocketAddr> = match (s.gateway_host.as_str(), s.gateway_port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return r.fail(
                "gateway_bind",
                format!(
                    "gateway_host {:?} (from {}) does not resolve: {e}; use an IP address such as 127.0.0.1 or 0.0.0.0",
                    s.gateway_host,
                    loaded.origin("gateway_host")
                ),
            );
        }
    };
    // std's listener sets SO_REUSEADDR on Unix, as the gateway does, so a port whose old
    // connections are in TIME_WAIT counts as free.
    let taken: Vec<String> = addrs
        .iter()
        .filter_map(|a| TcpListener::bind(a).err().map(|e| format!("{a}: {e}")))
        .collect();
    if taken.is_empty() {
        r.pass("gateway_bind", format!("{shown} is available"));
    } else {
        r.fail(
            "gateway_bind",
            format!(
                "{shown} cannot be bound now ({}); another process holds it (is FluxLit already running? `ss -ltnp 'sport = :{}'` names it): stop it, or pick another port with --port / FLUXLIT_GATEWAY_PORT (gateway_port from {})",
                taken.join("; "),
                s.gateway_port,
                loaded.origin("gateway_port")
            ),
        );
    }
}

/// `jwt_keys` (`auth_mode = jwt` only): the bearer check's signing keys can be had now: with
/// `jwt_hs256_secret` there is nothing to fetch; otherwise the JWKS (`jwt_jwks_url`, or the
/// `jwks_uri` of the issuer's discovery document, which must name `jwt_issuer`) is fetched as
/// the gateway fetches it (no redirects, 10 s, 1 MiB) and must hold a usable signing key.
/// Until the gateway can fetch them, every API request gets 503.
pub(crate) async fn jwt_keys(r: &mut Report, loaded: &Loaded) {
    let s = &loaded.settings;
    if s.auth_mode != fluxlit_config::AuthMode::Jwt {
        return;
    }
    let source = if !s.jwt_hs256_secret.is_empty() {
        format!(
            "jwt_hs256_secret (from {})",
            loaded.origin("jwt_hs256_secret")
        )
    } else if !s.jwt_jwks_url.is_empty() {
        format!(
            "jwt_jwks_url {:?} (from {})",
            s.jwt_jwks_url,
            loaded.origin("jwt_jwks_url")
        )
    } else {
        format!(
            "the discovery document of jwt_issuer {:?} (from {})",
            s.jwt_issuer,
            loaded.origin("jwt_issuer")
        )
    };
    let verifier = match fluxlit_gateway::jwt_from_settings(s) {
        Ok(v) => v,
        Err(e) => {
            return r.fail(
                "jwt_keys",
                format!("cannot check bearer tokens from {source}: {e}; fix the jwt_* settings (docs/auth.md)"),
            );
        }
    };
    match verifier.fetch_keys_now().await {
        Ok((n, from)) => r.pass(
            "jwt_keys",
            format!(
                "{n} signing key(s) from {from}; tokens must have iss {:?} and aud in {:?}",
                s.jwt_issuer, s.jwt_audience
            ),
        ),
        Err(e) => r.fail(
            "jwt_keys",
            format!(
                "{e}: with keys from {source}, every API request would get 503 until they can be fetched; check the URL and that this host reaches the provider (redirects are not followed)"
            ),
        ),
    }
}

/// The clock skew above which `oidc_discovery` warns, in seconds (AUTH.md A.2: ID tokens are
/// checked against `iat`/`exp` with this much leeway at most).
pub(crate) const MAX_CLOCK_SKEW_S: u64 = 30;

/// How far the provider's clock is ahead of ours (negative: behind), in whole seconds, from the
/// HTTP `Date` header of its answer (an IMF-fixdate, RFC 9110 §5.6.7 and §6.6.1) and our clock
/// when the answer arrived. `None` when the header does not parse.
pub(crate) fn clock_skew_s(date: &str, now: std::time::SystemTime) -> Option<i64> {
    let theirs = httpdate::parse_http_date(date.trim()).ok()?;
    Some(match theirs.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    })
}

/// `oidc_discovery` (auth_mode = oidc only): the provider's discovery document and JWKS are
/// fetched as the gateway fetches them ([`fluxlit_auth::oidc::RelyingParty::discover`], with
/// the redirect URI the gateway registers); PASS names what to register at the provider, WARN
/// when the provider's `Date` is more than [`MAX_CLOCK_SKEW_S`] away from ours, FAIL when
/// discovery fails.
pub(crate) async fn oidc_discovery(r: &mut Report, loaded: &Loaded) {
    let s = &loaded.settings;
    if s.auth_mode != fluxlit_config::AuthMode::Oidc {
        return;
    }
    let issuer = format!(
        "{:?} (from {})",
        s.oidc_issuer,
        loaded.origin("oidc_issuer")
    );
    // Loading refused oidc without an absolute public_base_url, so both are there.
    let (Some(redirect_uri), Some(post_logout)) =
        (s.oidc_redirect_uri(), s.post_logout_redirect_uri())
    else {
        return r.fail(
            "oidc_discovery",
            format!(
                "public_base_url {:?} (from {}) is not an absolute http(s) URL, so there is no redirect URI; set it to the URL users reach the app at",
                s.public_base_url,
                loaded.origin("public_base_url")
            ),
        );
    };
    let config = fluxlit_auth::oidc::OidcConfig {
        issuer: s.oidc_issuer.clone(),
        client_id: s.oidc_client_id.clone(),
        client_secret: (!s.oidc_client_secret.is_empty())
            .then(|| s.oidc_client_secret.expose().to_owned()),
        redirect_uri: redirect_uri.clone(),
        scopes: s
            .oidc_scopes
            .iter()
            .filter(|sc| *sc != "openid")
            .cloned()
            .collect(),
    };
    let rp = match fluxlit_auth::oidc::RelyingParty::discover(config).await {
        Ok(rp) => rp,
        Err(e) => {
            return r.fail(
                "oidc_discovery",
                format!(
                    "{e}; no login can start until discovery works. Check that oidc_issuer {issuer} is the `issuer` of {}/.well-known/openid-configuration character for character (a trailing slash counts), that this host reaches the provider, and that it does not redirect (redirects are not followed)",
                    s.oidc_issuer.trim_end_matches('/')
                ),
            );
        }
    };
    let logout = match rp.end_session_endpoint() {
        Some(e) => format!("logout continues at the provider's end_session_endpoint {e}"),
        None => {
            "the provider offers no end_session_endpoint, so logout ends the FluxLit session only"
                .to_owned()
        }
    };
    let detail = format!(
        "issuer {issuer} discovered; register at the provider for client {:?}: redirect URI {redirect_uri} and post-logout redirect URI {post_logout}; {logout}",
        s.oidc_client_id
    );
    match provider_clock_skew(&s.oidc_issuer).await {
        Ok(skew) if skew.unsigned_abs() > MAX_CLOCK_SKEW_S => r.warn(
            "oidc_discovery",
            format!(
                "{detail}; but the provider's clock is {} s {} this machine's (its Date header), more than {MAX_CLOCK_SKEW_S} s: ID tokens may be refused as not yet valid or expired; synchronise the clocks (NTP)",
                skew.unsigned_abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            ),
        ),
        Ok(skew) => r.pass(
            "oidc_discovery",
            format!("{detail}; the provider's clock is within {} s of this machine's", skew.unsigned_abs().max(1)),
        ),
        Err(why) => r.pass("oidc_discovery", format!("{detail}; clock skew not checked: {why}")),
    }
}

/// The provider's clock minus ours in seconds ([`clock_skew_s`]), from the `Date` header of
/// its discovery document's answer; `Err` says why it could not be had.
async fn provider_clock_skew(issuer: &str) -> Result<i64, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let req = http::Request::get(url.as_str())
        .body(Vec::new())
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    let resp = fluxlit_auth::fetch::send(req)
        .await
        .map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now();
    let date = resp
        .headers()
        .get(http::header::DATE)
        .ok_or_else(|| "the provider's answer has no Date header".to_owned())?;
    date.to_str()
        .ok()
        .and_then(|d| clock_skew_s(d, now))
        .ok_or_else(|| format!("the provider's Date header {date:?} is not an HTTP date"))
}
