//! The cost of authentication (issue 13, "Done when"): the same requests through FluxLit
//! (release) with `auth_mode = off` (the default rows' configuration), `auth_mode = oidc` with a
//! valid session cookie on every request (the `cookie` store, and the `redis` store when Debian's
//! `redis-server` is installed), and `auth_mode = jwt` with a valid bearer token on the API GET.
//! Per row: req/s, p99 and the gateway's CPU µs per request, and the difference to `off` on the
//! same request: the per-request cost of the check, in µs of gateway CPU.
//!
//! One gateway process per mode and request, all in front of one upstream and measured in one
//! interleaved run (the starting row rotated every round). Each process's engine counters
//! (`Gateway::served`, logged when it stops: `requests_fast_path`, `requests_hyper`) show which
//! engine served its requests: with `off`, the UI GETs are the fast path's; the one process per
//! request keeps the UI's count apart from the API's (the API is always hyper's).
//!
//! Credentials come from a real OpenID provider, as in the tests: npm `oidc-provider`
//! (`crates/fluxlit-testkit/idp`, installed by `cargo xtask setup`) on loopback, started by the
//! bench in its own process group. The session cookie is the one a login through the gateway's
//! `/api/auth/login`, the provider's forms and `/api/auth/callback` sets
//! (`fluxlit_testkit::idp::Agent`, one login per gateway); the bearer token is an RS256 ID token
//! from the provider's token endpoint (code flow with PKCE), verified by the gateway with the
//! keys of the provider's discovery document. A provider is needed anyway (the gateway in `oidc`
//! mode reads its discovery document at start), and a real login exercises exactly the cookie
//! the product seals, so nothing is minted by hand.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fluxlit_testkit::idp::{Agent, RFC7636_PKCE, idp_dir, urlencode};
use http::Method;

use super::load::{self, Sample};
use super::peers::{self, Row};
use super::procs::{self, Proc, command};
use super::report::{Cell, Summary, fmt_rate, fmt_us};
use crate::{Failed, Result};

/// Connections per run, as the default rows' 1 KiB scenarios at 16 connections.
const CONNS: usize = 16;

/// The body of both requests (`/1k` and `/api/1k`), in bytes.
const BODY_BYTES: u64 = 1024;

/// The bench's client at the provider and its secret (loopback only, never a real secret).
const CLIENT_ID: &str = "fluxlit";
const CLIENT_SECRET: &str = "bench-only-client-secret";

/// Seals the session cookies (at least 32 bytes, `auth_cookie_secrets`).
const COOKIE_SECRET: &str = "bench-only-cookie-secret-0123456789abcdef";

/// The user the bench logs in as (the provider's development login takes any).
const USER: &str = "bench";

/// The log filter of the section's gateways: the default rows' `warn`, plus the gateway's
/// `info` line when it stops, which carries its engine counters. Nothing else of the gateway
/// logs at `info` for a request that passes (no access log here).
pub(crate) const LOG_LEVEL: &str = "warn,fluxlit_gateway=info";

/// How requests are authenticated in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// `auth_mode = off`: the default rows' configuration.
    Off,
    /// `auth_mode = oidc`, `auth_session_store = cookie`: the sealed session cookie.
    OidcCookie,
    /// `auth_mode = oidc`, `auth_session_store = redis`: a ticket cookie and the record in Redis.
    OidcRedis,
    /// `auth_mode = jwt`: an RS256 bearer token, keys from the issuer's discovery document.
    Jwt,
}

impl Mode {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::OidcCookie => "oidc, cookie store",
            Mode::OidcRedis => "oidc, redis store",
            Mode::Jwt => "jwt (RS256)",
        }
    }

    /// What every request of the row carries.
    pub(crate) fn credential(self) -> &'static str {
        match self {
            Mode::Off => "none",
            Mode::OidcCookie => "session cookie",
            Mode::OidcRedis => "session ticket cookie",
            Mode::Jwt => "Authorization: Bearer",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::OidcCookie => "oidc-cookie",
            Mode::OidcRedis => "oidc-redis",
            Mode::Jwt => "jwt",
        }
    }
}

/// Which request a row sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Req {
    /// `GET /1k`: the UI path (Streamlit's upstream).
    Ui,
    /// `GET /api/1k`: the API hop (prefix stripped).
    Api,
}

impl Req {
    fn path(self) -> &'static str {
        match self {
            Req::Ui => "/1k",
            Req::Api => "/api/1k",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Req::Ui => "UI GET 1 KiB",
            Req::Api => "API GET 1 KiB",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Req::Ui => "ui",
            Req::Api => "api",
        }
    }
}

/// Requests one gateway process served, per engine (its `stopped accepting` log line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Served {
    /// By the HTTP/1.1 fast path.
    pub(crate) fast_path: u64,
    /// By hyper's engine (also the readiness probes and the bench's checks).
    pub(crate) hyper: u64,
}

impl Served {
    /// The fast path's share, in percent (`None` when nothing was served).
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn fast_path_pct(self) -> Option<f64> {
        let total = self.fast_path + self.hyper;
        (total > 0).then(|| 100.0 * self.fast_path as f64 / total as f64)
    }
}

/// One row: a mode and a request, its samples over the rounds and its engine counters.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct AuthRow {
    pub(crate) mode: Mode,
    pub(crate) req: Req,
    pub(crate) cell: Cell,
    pub(crate) summary: Option<Summary>,
    pub(crate) served: Option<Served>,
}

/// The section's result.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct AuthResult {
    pub(crate) rows: Vec<AuthRow>,
    pub(crate) rounds: usize,
    pub(crate) duration_s: f64,
    /// Why the redis store was not measured, when it was not.
    pub(crate) redis_skipped: Option<String>,
    /// Why the section failed, when it did.
    pub(crate) error: Option<String>,
}

impl AuthResult {
    /// The row of `mode` and `req`.
    pub(crate) fn row(&self, mode: Mode, req: Req) -> Option<&AuthRow> {
        self.rows.iter().find(|r| r.mode == mode && r.req == req)
    }

    /// Gateway CPU µs per request of `mode` minus `off`'s on the same request.
    pub(crate) fn cost_us(&self, mode: Mode, req: Req) -> Option<f64> {
        let cpu = |m| {
            self.row(m, req)
                .and_then(|r| r.summary)
                .map(|s| s.server_cpu_us_per_op)
        };
        Some(cpu(mode)? - cpu(Mode::Off)?)
    }

    /// Rows that must have numbers and have none (the redis rows only when measured).
    pub(crate) fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(format!("authentication cost ({e})"));
            return out;
        }
        for (mode, req) in cells(self.redis_skipped.is_none()) {
            let ok = self
                .row(mode, req)
                .and_then(|r| r.summary)
                .is_some_and(|s| s.errors == 0);
            if !ok {
                out.push(format!(
                    "authentication cost / {} / {}",
                    mode.label(),
                    req.label()
                ));
            }
        }
        out
    }
}

/// The rows, in their order: `off` on both requests, `oidc` (cookie, then redis) on both, `jwt`
/// on the API GET (the UI is public in that mode).
pub(crate) fn cells(redis: bool) -> Vec<(Mode, Req)> {
    let mut v = vec![
        (Mode::Off, Req::Ui),
        (Mode::Off, Req::Api),
        (Mode::OidcCookie, Req::Ui),
        (Mode::OidcCookie, Req::Api),
    ];
    if redis {
        v.extend([(Mode::OidcRedis, Req::Ui), (Mode::OidcRedis, Req::Api)]);
    }
    v.push((Mode::Jwt, Req::Api));
    v
}

/// The `requests_fast_path` and `requests_hyper` of the gateway's `stopped accepting` line in
/// `log` (text format `key=N`, or JSON `"key":N`).
pub(crate) fn parse_served(log: &str) -> Option<Served> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped accepting"))?;
    let field = |key: &str| -> Option<u64> {
        [format!("{key}="), format!("\"{key}\":")]
            .iter()
            .find_map(|prefix| {
                let rest = &line[line.find(prefix.as_str())? + prefix.len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
    };
    Some(Served {
        fast_path: field("requests_fast_path")?,
        hyper: field("requests_hyper")?,
    })
}

/// A running gateway of the section.
struct Gw {
    mode: Mode,
    req: Req,
    row: Row,
    log: std::path::PathBuf,
    /// `(name, value)` sent with every request.
    headers: Vec<(String, String)>,
    cell: Cell,
}

/// Measures every row of [`cells`], `rounds` × `duration` each (after a `warmup` per row when
/// not zero). Never fails: a failure is the result's `error`.
pub(crate) fn run(
    bin: &Path,
    work: &Path,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
) -> AuthResult {
    let mut r = AuthResult {
        rounds,
        duration_s: duration.as_secs_f64(),
        ..AuthResult::default()
    };
    if let Err(Failed(e)) = measure(bin, &work.join("auth"), rounds, duration, warmup, &mut r) {
        eprintln!("xtask bench: authentication cost: failed: {e}");
        r.error = Some(e);
    }
    r
}

fn measure(
    bin: &Path,
    dir: &Path,
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    r: &mut AuthResult,
) -> Result {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))?;
    if !idp_dir().join("node_modules/oidc-provider").is_dir() {
        return Err(Failed(format!(
            "{} has no node_modules/oidc-provider: run `cargo xtask setup` (npm ci there)",
            idp_dir().display()
        )));
    }
    let (upstream, up_port) = peers::start_upstream(bin, dir, 1)?;
    let redis = if crate::have("redis-server") {
        Some(start_redis(dir)?)
    } else {
        r.redis_skipped =
            Some("redis-server is not installed (`cargo xtask setup` installs it)".to_owned());
        None
    };
    let plan = cells(redis.is_some());
    let ports = plan
        .iter()
        .map(|_| peers::free_port())
        .collect::<Result<Vec<u16>>>()?;
    let base = |port: u16| format!("http://127.0.0.1:{port}");
    // One client for every gateway: each one's callback (the jwt row's is only the redirect of
    // the bench's own code flow).
    let client = serde_json::json!({
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": ports.iter().map(|p| format!("{}/api/auth/callback", base(*p))).collect::<Vec<_>>(),
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    });
    // Tokens outlive any run: no refresh and no expiry in the window.
    let ttl = serde_json::json!({"AccessToken": 3600, "IdToken": 3600});
    let (provider, issuer) = start_provider(dir, &client, &ttl)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed(format!("cannot start a tokio runtime: {e}")))?;
    let mut gws: Vec<Gw> = Vec::new();
    for ((mode, req), port) in plan.iter().copied().zip(ports.iter().copied()) {
        let name = format!("fluxlit-auth-{}-{}", mode.id(), req.id());
        let mut env: Vec<(String, String)> = vec![("FLUXLIT_LOG_LEVEL".into(), LOG_LEVEL.into())];
        match mode {
            Mode::Off => {}
            Mode::OidcCookie | Mode::OidcRedis => {
                env.extend([
                    ("FLUXLIT_AUTH_MODE".into(), "oidc".into()),
                    ("FLUXLIT_OIDC_ISSUER".into(), issuer.clone()),
                    ("FLUXLIT_OIDC_CLIENT_ID".into(), CLIENT_ID.into()),
                    ("FLUXLIT_OIDC_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
                    ("FLUXLIT_PUBLIC_BASE_URL".into(), base(port)),
                    ("FLUXLIT_AUTH_COOKIE_SECRETS".into(), COOKIE_SECRET.into()),
                ]);
                if let (Mode::OidcRedis, Some((_, redis_port))) = (mode, &redis) {
                    env.extend([
                        ("FLUXLIT_AUTH_SESSION_STORE".into(), "redis".into()),
                        (
                            "FLUXLIT_AUTH_SESSION_REDIS_URL".into(),
                            format!("redis://127.0.0.1:{redis_port}/"),
                        ),
                    ]);
                }
            }
            Mode::Jwt => env.extend([
                ("FLUXLIT_AUTH_MODE".into(), "jwt".into()),
                ("FLUXLIT_JWT_ISSUER".into(), issuer.clone()),
                ("FLUXLIT_JWT_AUDIENCE".into(), CLIENT_ID.into()),
            ]),
        }
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut row = peers::start_fluxlit_on(bin, dir, up_port, &name, &env_ref, port)?;
        let headers = match mode {
            Mode::Off => Vec::new(),
            Mode::OidcCookie | Mode::OidcRedis => {
                let cookie = blocking(&rt, "the login", session_cookie(&base(port), &issuer))?;
                vec![("Cookie".to_owned(), cookie)]
            }
            Mode::Jwt => {
                let redirect = format!("{}/api/auth/callback", base(port));
                let token = blocking(&rt, "the token request", id_token(&issuer, &redirect))?;
                vec![("Authorization".to_owned(), format!("Bearer {token}"))]
            }
        };
        check_credentials(mode, req, port, &headers)?;
        row.check_alive()?;
        gws.push(Gw {
            mode,
            req,
            log: dir.join(&name).join("fluxlit.log"),
            row,
            headers,
            cell: Cell::default(),
        });
    }

    let mut ours: Vec<i32> = gws.iter().filter_map(|g| g.row.pgid()).collect();
    ours.extend([upstream.pgid(), provider.pgid()]);
    ours.extend(redis.as_ref().map(|(p, _)| p.pgid()));
    let foreign = procs::ForeignCpu::new(ours);
    if !warmup.is_zero() {
        for g in &gws {
            let path = g.req.path();
            let _ = load::http(
                g.row.port, path, CONNS, BODY_BYTES, false, warmup, dir, &g.headers,
            );
        }
    }
    let n = gws.len();
    for round in 0..rounds {
        for i in 0..n {
            let g = &mut gws[(i + round) % n];
            let Some(pg) = g.row.pgid() else { continue };
            let t0 = (Instant::now(), foreign.ticks(), procs::group_cpu_us(pg));
            let outcome = load::http(
                g.row.port,
                g.req.path(),
                CONNS,
                BODY_BYTES,
                false,
                duration,
                dir,
                &g.headers,
            );
            let foreign_pct = procs::ForeignCpu::percent(t0.1, foreign.ticks(), t0.0.elapsed());
            match outcome {
                Ok(mut sample) => {
                    sample.foreign_cpu_pct = foreign_pct;
                    if sample.count > 0 {
                        #[allow(clippy::cast_precision_loss)]
                        let per_op = procs::group_cpu_us(pg).saturating_sub(t0.2) as f64
                            / sample.count as f64;
                        sample.server_cpu_us_per_op = per_op;
                    }
                    print_sample(g, round, rounds, &sample);
                    g.cell.samples.push(sample);
                }
                Err(Failed(e)) => {
                    eprintln!(
                        "xtask bench: auth {} {}: failed: {e}",
                        g.mode.label(),
                        g.req.label()
                    );
                    g.cell.failures.push(e);
                }
            }
            g.row.check_alive()?;
        }
    }
    for mut g in gws {
        // SIGTERM: the gateway logs its engine counters as it stops accepting.
        if let Some(p) = g.row.proc.as_mut() {
            p.stop();
        }
        let served = std::fs::read_to_string(&g.log)
            .ok()
            .as_deref()
            .and_then(parse_served);
        r.rows.push(AuthRow {
            mode: g.mode,
            req: g.req,
            summary: g.cell.summary(),
            cell: g.cell,
            served,
        });
    }
    drop(provider);
    drop(redis);
    drop(upstream);
    Ok(())
}

fn print_sample(g: &Gw, round: usize, rounds: usize, s: &Sample) {
    let note = if s.errors > 0 {
        format!(
            "  ({} errors: {})",
            s.errors,
            s.first_error.clone().unwrap_or_default()
        )
    } else {
        String::new()
    };
    eprintln!(
        "xtask bench: auth [{}/{rounds}] {:<18} {:<13} {:>8.0} req/s p99 {:>6.0} µs, {:.1} CPU µs/op{note}",
        round + 1,
        g.mode.label(),
        g.req.label(),
        s.rate,
        s.p99_us,
        s.server_cpu_us_per_op
    );
}

/// Runs `fut` (which panics on a failed exchange, as the testkit's agent does) to completion;
/// a panic becomes an error naming `what`.
fn blocking<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<T, String>>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(fut))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failed(format!("{what}: {e}"))),
        Err(p) => Err(Failed(format!(
            "{what} failed: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        ))),
    }
}

/// Logs [`USER`] in at the gateway on `base` through the provider at `issuer`; returns the
/// `Cookie` value with every session cookie (chunks included) the gateway set.
async fn session_cookie(base: &str, issuer: &str) -> std::result::Result<String, String> {
    let mut agent = Agent::new();
    let start = agent
        .request(Method::GET, &format!("{base}/api/auth/login"), None)
        .await;
    let to_provider = start
        .location()
        .filter(|_| start.status == 302)
        .ok_or_else(|| {
            format!(
                "{base}/api/auth/login answered {} without a redirect: {}",
                start.status,
                start.text()
            )
        })?
        .to_owned();
    let callback = agent.login_at_provider(issuer, &to_provider, USER).await;
    let done = agent.request(Method::GET, &callback, None).await;
    if done.status != 303 {
        return Err(format!(
            "the callback answered {} (want 303): {}",
            done.status,
            done.text()
        ));
    }
    let cookies: Vec<String> = std::iter::once("fluxlit_session".to_owned())
        .chain((0..10).map(|i| format!("fluxlit_session.{i}")))
        .filter_map(|name| agent.cookie(base, &name).map(|v| format!("{name}={v}")))
        .collect();
    if cookies.is_empty() {
        return Err(format!(
            "the callback set no session cookie: {:?}",
            done.headers
        ));
    }
    Ok(cookies.join("; "))
}

/// An ID token for [`USER`] from the provider at `issuer` (code flow with PKCE through its
/// forms, then its token endpoint): RS256, `aud` = [`CLIENT_ID`].
async fn id_token(issuer: &str, redirect: &str) -> std::result::Result<String, String> {
    let mut agent = Agent::new();
    let (verifier, challenge) = RFC7636_PKCE;
    let auth = format!(
        "{issuer}/auth?client_id={CLIENT_ID}&redirect_uri={}&response_type=code&scope=openid&state=bench&nonce=bench&code_challenge={challenge}&code_challenge_method=S256",
        urlencode(redirect)
    );
    let back = agent.login_at_provider(issuer, &auth, USER).await;
    let code = back
        .split_once('?')
        .map(|(_, q)| q)
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("code=")))
        .ok_or_else(|| format!("the provider sent no code: {back}"))?;
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}",
        urlencode(redirect)
    );
    let t = agent
        .request(Method::POST, &format!("{issuer}/token"), Some(&form))
        .await;
    let v: serde_json::Value = serde_json::from_slice(&t.body)
        .map_err(|e| format!("token endpoint ({}): {e}: {}", t.status, t.text()))?;
    v["id_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("token endpoint ({}): no id_token: {v}", t.status))
}

/// Before measuring: the row's request with its credential answers 200, and (every mode but
/// `off`) without it does not, so a row never measures a check that is not made.
fn check_credentials(mode: Mode, req: Req, port: u16, headers: &[(String, String)]) -> Result {
    let with = peers::http_status_with(port, req.path(), headers);
    if with != Some(200) {
        return Err(Failed(format!(
            "{} {}: GET {} with its credential answered {with:?}, want 200",
            mode.label(),
            req.label(),
            req.path()
        )));
    }
    if mode != Mode::Off {
        let without = peers::http_status_with(port, req.path(), &[]);
        if without == Some(200) || without.is_none() {
            return Err(Failed(format!(
                "{} {}: GET {} without a credential answered {without:?}, want a refusal",
                mode.label(),
                req.label(),
                req.path()
            )));
        }
    }
    Ok(())
}

/// Starts `node provider.mjs` (the testkit's provider script) with `client` and token lifetimes
/// `ttl` in its own process group; returns it and its issuer, read from its first stdout line
/// (within 30 s). The rest of its stdout is drained by a thread; its stderr goes to
/// `dir/idp.log`.
fn start_provider(
    dir: &Path,
    client: &serde_json::Value,
    ttl: &serde_json::Value,
) -> Result<(Proc, String)> {
    let config = dir.join("idp-config.json");
    std::fs::write(
        &config,
        serde_json::json!({"clients": [client], "ttl": ttl}).to_string(),
    )
    .map_err(|e| Failed(format!("cannot write {}: {e}", config.display())))?;
    let log = dir.join("idp.log");
    let err = std::fs::File::create(&log)
        .map_err(|e| Failed(format!("cannot create {}: {e}", log.display())))?;
    let mut cmd = command("node");
    cmd.arg(idp_dir().join("provider.mjs"))
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err);
    let mut p = Proc::spawn("oidc-provider", cmd, None)?;
    let out = p
        .child
        .stdout
        .take()
        .ok_or_else(|| Failed("oidc-provider: no stdout".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let _ = tx.send(lines.next());
        // Keep reading: a provider whose stdout is closed dies on its next write (EPIPE).
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) => line,
        other => {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(Failed(format!(
                "oidc-provider did not start within 30 s ({other:?}): {}",
                text.trim()
            )));
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| Failed(format!("oidc-provider's start-up line {line:?}: {e}")))?;
    let issuer = v["issuer"]
        .as_str()
        .ok_or_else(|| {
            Failed(format!(
                "oidc-provider's start-up line {line:?} has no issuer"
            ))
        })?
        .to_owned();
    Ok((p, issuer))
}

/// Starts Debian's `redis-server` on a free loopback port, without persistence, in its own
/// process group; waits (10 s at most) for `PING`.
fn start_redis(dir: &Path) -> Result<(Proc, u16)> {
    let port = peers::free_port()?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)
        .map_err(|e| Failed(format!("cannot create {}: {e}", data.display())))?;
    let mut cmd = command("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&data);
    let mut p = Proc::spawn("redis-server", cmd, Some(&dir.join("redis.log")))?;
    let start = Instant::now();
    while !ping(port) {
        p.check_alive()?;
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Failed(format!(
                "redis-server did not answer PING on 127.0.0.1:{port} within 10 s; see {}",
                dir.join("redis.log").display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, port))
}

/// Whether a Redis on 127.0.0.1:`port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A share in percent with two decimals, rounded down: "100 %" only when it is all.
fn fmt_share(pct: f64) -> String {
    if pct >= 100.0 {
        "100 %".to_owned()
    } else {
        format!("{:.2} %", (pct * 100.0).floor() / 100.0)
    }
}

/// `n` with thousands separators.
fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The section of the report.
pub(crate) fn markdown(s: &mut String, r: &AuthResult) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\n## Authentication cost\n\nThe same requests through FluxLit (release), one gateway process per row, {CONNS} connections, {} round(s) × {:.0} s, rows interleaved; every request carries the row's credential. \"Cost per request\" is the row's gateway CPU per request minus `off`'s on the same request; \"fast path\" is the share of the process's requests its HTTP/1.1 fast path served (the rest: hyper's engine, which also answered the readiness probe, the bench's checks and, with oidc, the login).\n\n| auth_mode | request | credential | req/s | p99 | CPU µs/op | cost per request (µs of gateway CPU) | fast path |\n|---|---|---|---:|---:|---:|---:|---:|",
        r.rounds, r.duration_s
    );
    for row in &r.rows {
        let (rate, p99, cpu) = row.summary.map_or_else(
            || ("–".to_owned(), "–".to_owned(), "–".to_owned()),
            |x| {
                (
                    fmt_rate(x.rate),
                    fmt_us(x.p99_us),
                    format!("{:.1}", x.server_cpu_us_per_op),
                )
            },
        );
        let cost = if row.mode == Mode::Off {
            "(baseline)".to_owned()
        } else {
            r.cost_us(row.mode, row.req)
                .map_or_else(|| "–".to_owned(), |c| format!("{c:+.1}"))
        };
        let fast = row
            .served
            .and_then(|sv| Some((sv, sv.fast_path_pct()?)))
            .map_or_else(
                || "–".to_owned(),
                |(sv, pct)| {
                    format!(
                        "{} ({} of {})",
                        fmt_share(pct),
                        fmt_count(sv.fast_path),
                        fmt_count(sv.fast_path + sv.hyper)
                    )
                },
            );
        let errors = row.summary.map_or(0, |x| x.errors);
        let errors = if errors > 0 {
            format!(" ({errors} errors)")
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {}{errors} | {} | {rate} | {p99} | {cpu} | {cost} | {fast} |",
            row.mode.label(),
            row.req.label(),
            row.mode.credential(),
        );
    }
    let foreign = r
        .rows
        .iter()
        .filter_map(|row| row.summary)
        .map(|x| x.max_foreign_cpu_pct)
        .fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "\nOther processes used up to {foreign:.0} % of the machine during a run (10 ms CPU ticks; compare the CPU columns, which other load disturbs less than rates and p99)."
    );
    if let Some(why) = &r.redis_skipped {
        let _ = writeln!(s, "\nThe redis store was not measured: {why}.");
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "\n**The authentication measurement failed:** {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_counts_from_the_stop_line() {
        let text = "2026-11-29T07:00:00Z  WARN fluxlit: something\n\
            2026-11-29T07:00:01Z  INFO fluxlit_gateway: stopped accepting; waiting for in-flight requests to finish drain_timeout_s=10.0 websocket_tunnels=0 requests_fast_path=40123 requests_hyper=3\n";
        assert_eq!(
            parse_served(text),
            Some(Served {
                fast_path: 40_123,
                hyper: 3
            })
        );
        let json = r#"{"level":"INFO","message":"stopped accepting; waiting","requests_fast_path":0,"requests_hyper":51234}"#;
        assert_eq!(
            parse_served(json),
            Some(Served {
                fast_path: 0,
                hyper: 51_234
            })
        );
        assert_eq!(
            parse_served("INFO stopped accepting; drain_timeout_s=10"),
            None
        );
        assert_eq!(parse_served(""), None);
        let pct = Served {
            fast_path: 999,
            hyper: 1,
        }
        .fast_path_pct();
        assert!(pct.is_some_and(|p| (p - 99.9).abs() < 1e-9), "{pct:?}");
        assert_eq!(Served::default().fast_path_pct(), None);
    }

    fn summary(cpu: f64) -> Option<Summary> {
        Some(Summary {
            rate: 20_000.0,
            p99_us: 1500.0,
            server_cpu_us_per_op: cpu,
            rounds: 1,
            ..Summary::default()
        })
    }

    fn row(mode: Mode, req: Req, cpu: f64, served: Option<Served>) -> AuthRow {
        AuthRow {
            mode,
            req,
            cell: Cell::default(),
            summary: summary(cpu),
            served,
        }
    }

    #[test]
    fn costs_are_against_off_on_the_same_request() {
        let r = AuthResult {
            rows: vec![
                row(
                    Mode::Off,
                    Req::Ui,
                    20.0,
                    Some(Served {
                        fast_path: 39_999,
                        hyper: 1,
                    }),
                ),
                row(Mode::Off, Req::Api, 30.0, None),
                row(Mode::OidcCookie, Req::Ui, 27.5, None),
                row(Mode::Jwt, Req::Api, 41.0, None),
            ],
            rounds: 2,
            duration_s: 2.0,
            redis_skipped: Some("redis-server is not installed".into()),
            error: None,
        };
        assert_eq!(r.cost_us(Mode::OidcCookie, Req::Ui), Some(7.5));
        assert_eq!(r.cost_us(Mode::Jwt, Req::Api), Some(11.0));
        assert_eq!(r.cost_us(Mode::OidcCookie, Req::Api), None);
        assert_eq!(
            r.missing(),
            vec!["authentication cost / oidc, cookie store / API GET 1 KiB".to_owned()]
        );
        let mut md = String::new();
        markdown(&mut md, &r);
        assert!(md.contains("\n## Authentication cost\n"), "{md}");
        assert!(
            md.contains("| off | UI GET 1 KiB | none | 20,000 | 1.50 ms | 20.0 | (baseline) | 99.99 % (39,999 of 40,000) |"),
            "{md}"
        );
        assert!(
            md.contains("| oidc, cookie store | UI GET 1 KiB | session cookie | 20,000 | 1.50 ms | 27.5 | +7.5 | – |"),
            "{md}"
        );
        assert!(
            md.contains("| jwt (RS256) | API GET 1 KiB | Authorization: Bearer |"),
            "{md}"
        );
        assert!(
            md.contains("\nOther processes used up to 0 % of the machine"),
            "{md}"
        );
        assert!(
            md.contains("redis store was not measured: redis-server is not installed."),
            "{md}"
        );
    }

    #[test]
    fn shares_and_counts() {
        assert_eq!(fmt_share(100.0), "100 %");
        assert_eq!(fmt_share(99.9999), "99.99 %");
        assert_eq!(fmt_share(0.0), "0.00 %");
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(69_954), "69,954");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
    }

    #[test]
    fn rows_follow_redis() {
        assert_eq!(cells(false).len(), 5);
        let with = cells(true);
        assert_eq!(with.len(), 7);
        assert!(with.contains(&(Mode::OidcRedis, Req::Api)));
        assert_eq!(with.last(), Some(&(Mode::Jwt, Req::Api)));
    }
}
