//! Statistics over rounds, the targets of issue 6, the machine description, and the markdown
//! and JSON the bench writes under `target/bench/`.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::load::{Sample, Scenario};
use super::peers::Kind;
use super::procs::{Snapshot, kib_to_mib};
use super::shutdown::{SESSIONS, ShutdownResult, TARGET_IDLE_S, TARGET_SESSIONS_S};
use super::tunnels::TunnelResult;

/// The samples of one scenario against one row, over the rounds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Cell {
    pub(crate) samples: Vec<Sample>,
    /// Runs that failed outright (tool error), with the reason.
    pub(crate) failures: Vec<String>,
}

/// Medians (and the rate's range) over a cell's rounds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) rate: f64,
    pub(crate) rate_min: f64,
    pub(crate) rate_max: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) errors: u64,
    pub(crate) rounds: usize,
    /// The most CPU other processes used during one of the rounds, in percent of the machine.
    pub(crate) max_foreign_cpu_pct: f64,
    /// Median CPU time of the proxy (direct: the upstream) per operation, in microseconds.
    pub(crate) server_cpu_us_per_op: f64,
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}

impl Cell {
    /// `None` when no run produced a number.
    pub(crate) fn summary(&self) -> Option<Summary> {
        let ok: Vec<&Sample> = self.samples.iter().filter(|s| s.count > 0).collect();
        if ok.is_empty() {
            return None;
        }
        let rates: Vec<f64> = ok.iter().map(|s| s.rate).collect();
        Some(Summary {
            rate: median(&rates),
            rate_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            rate_max: rates.iter().copied().fold(0.0, f64::max),
            p50_us: median(&ok.iter().map(|s| s.p50_us).collect::<Vec<_>>()),
            p99_us: median(&ok.iter().map(|s| s.p99_us).collect::<Vec<_>>()),
            errors: self.samples.iter().map(|s| s.errors).sum(),
            rounds: ok.len(),
            max_foreign_cpu_pct: ok.iter().map(|s| s.foreign_cpu_pct).fold(0.0, f64::max),
            server_cpu_us_per_op: median(
                &ok.iter()
                    .map(|s| s.server_cpu_us_per_op)
                    .collect::<Vec<_>>(),
            ),
        })
    }
}

/// Memory of one proxy around the load scenarios.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Memory {
    pub(crate) idle: Snapshot,
    /// Peak RSS sampled every 100 ms during every load run against this proxy, in KiB.
    pub(crate) peak_load_rss_kib: u64,
    pub(crate) after_load: Snapshot,
}

/// How a row came out: running, or skipped with the reason.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RowInfo {
    pub(crate) kind: Kind,
    pub(crate) label: &'static str,
    pub(crate) version: String,
    pub(crate) skipped: Option<String>,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) rows: Vec<RowInfo>,
    pub(crate) cells: HashMap<(Scenario, Kind), Cell>,
    pub(crate) memory: HashMap<Kind, Memory>,
    pub(crate) tunnels: HashMap<Kind, TunnelResult>,
    pub(crate) tunnel_note: Option<String>,
    /// `fluxlit run`'s stop on SIGTERM, idle and with Streamlit sessions open.
    pub(crate) shutdown: Option<ShutdownResult>,
    /// Reruns of a CPU-bound Streamlit script with one and two workers.
    pub(crate) workers: Option<super::workers::WorkersResult>,
    /// The cost of authentication (`bench/auth.rs`).
    pub(crate) auth: Option<super::auth::AuthResult>,
}

impl Results {
    pub(crate) fn summary(&self, s: Scenario, k: Kind) -> Option<Summary> {
        self.cells.get(&(s, k)).and_then(Cell::summary)
    }

    fn running(&self) -> impl Iterator<Item = Kind> + '_ {
        self.rows
            .iter()
            .filter(|r| r.skipped.is_none())
            .map(|r| r.kind)
    }

    /// The best median rate for `s` among `of`'s peers ([`Kind::peer_of`]: nginx and HAProxy,
    /// or with access logs for the logging rows).
    fn best_peer_rate(&self, s: Scenario, of: Kind) -> Option<f64> {
        self.running()
            .filter(|k| of.peer_of(*k))
            .filter_map(|k| self.summary(s, k))
            .map(|x| x.rate)
            .reduce(f64::max)
    }

    /// The best (lowest) median latency for `s` among `of`'s peers, p99 or p50.
    fn best_peer_latency(&self, s: Scenario, of: Kind, p99: bool) -> Option<f64> {
        self.running()
            .filter(|k| of.peer_of(*k))
            .filter_map(|k| self.summary(s, k))
            .map(|x| if p99 { x.p99_us } else { x.p50_us })
            .reduce(f64::min)
    }

    pub(crate) fn ratio_direct(&self, s: Scenario, k: Kind) -> Option<f64> {
        let d = self.summary(s, Kind::Direct)?.rate;
        Some(self.summary(s, k)?.rate / d)
    }

    pub(crate) fn p50_ratio_direct(&self, s: Scenario, k: Kind) -> Option<f64> {
        let d = self.summary(s, Kind::Direct)?.p50_us;
        Some(self.summary(s, k)?.p50_us / d)
    }

    pub(crate) fn ratio_best_peer(&self, s: Scenario, k: Kind) -> Option<f64> {
        Some(self.summary(s, k)?.rate / self.best_peer_rate(s, k)?)
    }

    pub(crate) fn p99_ratio_best_peer(&self, s: Scenario, k: Kind) -> Option<f64> {
        Some(self.summary(s, k)?.p99_us / self.best_peer_latency(s, k, true)?)
    }

    /// `k`'s median rate for `s` over nginx's (default configuration).
    pub(crate) fn ratio_nginx(&self, s: Scenario, k: Kind) -> Option<f64> {
        Some(self.summary(s, k)?.rate / self.summary(s, Kind::Nginx)?.rate)
    }

    /// FluxLit production's CPU µs/op for `s` over FluxLit's with the defaults.
    pub(crate) fn production_cpu_ratio(&self, s: Scenario) -> Option<f64> {
        let prod = self
            .summary(s, Kind::FluxlitProduction)?
            .server_cpu_us_per_op;
        let defaults = self.summary(s, Kind::Fluxlit)?.server_cpu_us_per_op;
        (defaults > 0.0).then(|| prod / defaults)
    }
}

/// One target of issue 6, evaluated for any proxy.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) threshold: &'static str,
    /// The measured value (display form) and whether it meets the target.
    pub(crate) eval: fn(&Results, Kind) -> Option<(String, bool)>,
}

fn ratio_at_least(v: Option<f64>, min: f64) -> Option<(String, bool)> {
    v.map(|x| (format!("{x:.2}"), x >= min))
}

/// The HTTP scenarios issue 15's production targets cover.
const PRODUCTION_SCENARIOS: [Scenario; 5] = [
    Scenario::Get1k16,
    Scenario::Get1k64,
    Scenario::Get100k16,
    Scenario::Get100k64,
    Scenario::Post64k16,
];

/// The WebSocket scenarios of issue 15's "≥ 1.00 × the best peer".
const WS_SCENARIOS: [Scenario; 3] = [Scenario::WsRtt, Scenario::WsEcho16, Scenario::WsConnect];

/// `f` of each of `scenarios` that has a value, with the scenario's id.
fn scored<'a>(
    r: &'a Results,
    scenarios: &'a [Scenario],
    f: impl Fn(&Results, Scenario) -> Option<f64> + 'a,
) -> impl Iterator<Item = (f64, &'static str)> + 'a {
    scenarios
        .iter()
        .filter_map(move |sc| f(r, *sc).map(|v| (v, sc.id())))
}

/// The highest of `f` over `scenarios`, with the scenario's id.
fn highest(
    r: &Results,
    scenarios: &[Scenario],
    f: impl Fn(&Results, Scenario) -> Option<f64>,
) -> Option<(f64, &'static str)> {
    scored(r, scenarios, f).max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The lowest of `f` over `scenarios`, with the scenario's id.
fn lowest(
    r: &Results,
    scenarios: &[Scenario],
    f: impl Fn(&Results, Scenario) -> Option<f64>,
) -> Option<(f64, &'static str)> {
    scored(r, scenarios, f).min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The worst (lowest) of `f` over the production scenarios, with the scenario's id.
fn worst(
    r: &Results,
    f: impl Fn(&Results, Scenario) -> Option<f64>,
) -> Option<(f64, &'static str)> {
    lowest(r, &PRODUCTION_SCENARIOS, f)
}

/// The targets (issue 6, then issue 15's), in the issues' order. Where issue 15 tightened one of
/// issue 6 (RSS under load 25 → 16 MiB, idle tunnels 150 → 120 MiB), its bound is the one checked.
pub(crate) fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "GET 1 KiB 16c req/s ÷ direct",
            threshold: "≥ 0.65",
            eval: |r, k| ratio_at_least(r.ratio_direct(Scenario::Get1k16, k), 0.65),
        },
        Target {
            name: "GET 1 KiB 16c p99 ÷ best peer's p99",
            threshold: "≤ 1.00",
            eval: |r, k| {
                r.p99_ratio_best_peer(Scenario::Get1k16, k)
                    .map(|x| (format!("{x:.2}"), x <= 1.0))
            },
        },
        Target {
            name: "GET 100 KiB 16c req/s ÷ direct",
            threshold: "≥ 0.50",
            eval: |r, k| ratio_at_least(r.ratio_direct(Scenario::Get100k16, k), 0.5),
        },
        Target {
            name: "POST 64 KiB 16c req/s ÷ direct",
            threshold: "≥ 0.50",
            eval: |r, k| ratio_at_least(r.ratio_direct(Scenario::Post64k16, k), 0.5),
        },
        Target {
            name: "WS echo RTT p50 ÷ direct",
            threshold: "≤ 1.15",
            eval: |r, k| {
                r.p50_ratio_direct(Scenario::WsRtt, k)
                    .map(|x| (format!("{x:.2}"), x <= 1.15))
            },
        },
        Target {
            name: "WS echo 16c round trips/s ÷ direct",
            threshold: "≥ 0.70",
            eval: |r, k| ratio_at_least(r.ratio_direct(Scenario::WsEcho16, k), 0.7),
        },
        Target {
            name: "RSS idle",
            threshold: "≤ 8 MiB",
            eval: |r, k| {
                r.memory.get(&k).map(|m| {
                    let mib = m.idle.rss_mib();
                    (format!("{mib:.1} MiB"), mib <= 8.0)
                })
            },
        },
        Target {
            name: "RSS under load (peak)",
            threshold: "≤ 16 MiB",
            eval: |r, k| {
                r.memory.get(&k).map(|m| {
                    let mib = kib_to_mib(m.peak_load_rss_kib);
                    (format!("{mib:.1} MiB"), mib <= 16.0)
                })
            },
        },
        Target {
            name: "RSS with the idle WS tunnels open",
            threshold: "≤ 120 MiB at 10,000",
            eval: |r, k| {
                let t = r.tunnels.get(&k)?;
                if t.opened == 0 {
                    return Some(("no tunnel opened".into(), false));
                }
                let mib = t.during.rss_mib();
                if t.opened >= 10_000 {
                    return Some((format!("{mib:.1} MiB"), mib <= 120.0));
                }
                // Fewer than 10,000 (fd limit or quick mode): extrapolate linearly per tunnel.
                #[allow(clippy::cast_precision_loss)]
                let per = (t.during.rss_mib() - t.before.rss_mib()).max(0.0) / t.opened as f64;
                let at_10k = t.before.rss_mib() + per * 10_000.0;
                Some((
                    format!("{mib:.1} MiB at {}; ≈ {at_10k:.0} MiB at 10,000", t.opened),
                    at_10k <= 120.0,
                ))
            },
        },
        Target {
            name: "fds and sockets released after the tunnels close",
            threshold: "back to before",
            eval: |r, k| {
                let t = r.tunnels.get(&k)?;
                Some((
                    format!("fds {} → {} → {}", t.before.fds, t.during.fds, t.after.fds),
                    t.released && t.opened > 0 && t.error.is_none(),
                ))
            },
        },
        Target {
            name: "every HTTP row, defaults: req/s ÷ best peer (worst row)",
            threshold: "≥ 1.10",
            eval: |r, k| {
                if k != Kind::Fluxlit {
                    return None;
                }
                let (v, sc) = worst(r, |r, sc| r.ratio_best_peer(sc, k))?;
                Some((format!("{v:.2} ({sc})"), v >= 1.10))
            },
        },
        Target {
            name: "every HTTP row, defaults: p99 ÷ best peer's p99 (worst row)",
            threshold: "≤ 1.00",
            eval: |r, k| {
                if k != Kind::Fluxlit {
                    return None;
                }
                let (v, sc) = highest(r, &PRODUCTION_SCENARIOS, |r, sc| {
                    r.p99_ratio_best_peer(sc, k)
                })?;
                Some((format!("{v:.2} ({sc})"), v <= 1.0))
            },
        },
        Target {
            name: "WebSocket rows (RTT, 16-connection echo, handshakes): ÷ best peer (worst row)",
            threshold: "≥ 1.00",
            eval: |r, k| {
                if k != Kind::Fluxlit {
                    return None;
                }
                let (v, sc) = lowest(r, &WS_SCENARIOS, |r, sc| r.ratio_best_peer(sc, k))?;
                Some((format!("{v:.2} ({sc})"), v >= 1.0))
            },
        },
        Target {
            name: "every HTTP row, production: req/s ÷ best peer with access log (worst row)",
            threshold: "≥ 1.10",
            eval: |r, k| {
                if k != Kind::FluxlitProduction {
                    return None;
                }
                let (v, sc) = worst(r, |r, sc| r.ratio_best_peer(sc, k))?;
                Some((format!("{v:.2} ({sc})"), v >= 1.10))
            },
        },
        Target {
            name: "every HTTP row: production CPU µs/op ÷ defaults' (worst row)",
            threshold: "≤ 1.15",
            eval: |r, k| {
                if k != Kind::FluxlitProduction {
                    return None;
                }
                let (v, sc) =
                    highest(r, &PRODUCTION_SCENARIOS, |r, sc| r.production_cpu_ratio(sc))?;
                Some((format!("{v:.2} ({sc})"), v <= 1.15))
            },
        },
        Target {
            name: "API GET 1 KiB 16c req/s ÷ nginx (same prefix strip)",
            threshold: "≥ 1.10",
            eval: |r, k| {
                if k != Kind::Fluxlit {
                    return None;
                }
                ratio_at_least(r.ratio_nginx(Scenario::ApiGet1k16, k), 1.10)
            },
        },
    ]
}

/// The machine and software the run used.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) mem_total: String,
    pub(crate) rustc: String,
    pub(crate) wrk: String,
    pub(crate) git_commit: String,
    pub(crate) nofile_limit: u64,
    /// CPU used by other processes (not the bench's) just before the run, in percent of the
    /// machine (all cores).
    pub(crate) background_cpu_before_pct: f64,
    /// The same, measured after everything was stopped.
    pub(crate) background_cpu_after_pct: f64,
}

/// The run's parameters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Method {
    pub(crate) mode: &'static str,
    pub(crate) command: String,
    pub(crate) rounds: usize,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) loadgen_threads: usize,
    pub(crate) upstream_threads: usize,
    pub(crate) ws_message_bytes: usize,
    pub(crate) tunnels_requested: usize,
    pub(crate) started_utc: String,
    pub(crate) wall_s: f64,
}

pub(crate) fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

pub(crate) fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        let n = format!("{x:.0}");
        // Thousands separators.
        let mut out = String::new();
        for (i, c) in n.chars().enumerate() {
            if i > 0 && (n.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{x:.1}")
    }
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.filter(|v| v.is_finite())
        .map_or_else(|| "–".into(), |v| format!("{v:.2}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib_to_mib(kib))
}

/// The markdown report.
pub(crate) fn markdown(r: &Results, m: &Machine, method: &Method) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## `{}` ({} run, started {} UTC, {:.0} s)\n",
        method.command, method.mode, method.started_utc, method.wall_s
    );
    let _ = writeln!(
        s,
        "Machine: {} × {}, {} RAM, Linux {}; RLIMIT_NOFILE {}; CPU used by other processes just before / after the run: {:.0} % / {:.0} % of the machine.  ",
        m.nproc,
        m.cpu_model,
        m.mem_total,
        m.kernel,
        m.nofile_limit,
        m.background_cpu_before_pct,
        m.background_cpu_after_pct
    );
    let _ = writeln!(
        s,
        "Software: {}; {}; commit {}.  ",
        m.rustc, m.wrk, m.git_commit
    );
    for row in &r.rows {
        match &row.skipped {
            None => {
                let _ = writeln!(s, "- {}: {}", row.label, row.version);
            }
            Some(why) => {
                let _ = writeln!(s, "- {}: **skipped**: {why}", row.label);
            }
        }
    }
    let _ = writeln!(
        s,
        "\nMethod: {} round(s) of {:.1} s per cell (after a {:.1} s warm-up per cell), rows interleaved within each round (start rotated every round); in full runs a run during which other processes used more than 10 % of the machine is repeated up to twice (after waiting up to 20 s for quiet) and the least disturbed attempt kept; median over rounds (rate range min–max); wrk -t{} for HTTP, fluxlit-bench-ws ({} thread, {} B binary messages) for WebSockets; upstream fluxlit-bench-upstream with {} tokio worker(s); everything on 127.0.0.1, nothing pinned. CPU µs/op: CPU time (user + system, /proc/PID/stat) of the proxy — for direct, of the upstream — per completed request, round trip or handshake.\n",
        method.rounds,
        method.duration_s,
        method.warmup_s,
        method.loadgen_threads,
        method.loadgen_threads,
        method.ws_message_bytes,
        method.upstream_threads
    );

    // Targets.
    let proxies: Vec<&RowInfo> = r.rows.iter().filter(|x| x.kind != Kind::Direct).collect();
    let _ = write!(s, "### Targets\n\n| target | wanted |");
    for p in &proxies {
        let _ = write!(s, " {} |", p.label);
    }
    let _ = write!(s, "\n| --- | --- |");
    for _ in &proxies {
        let _ = write!(s, " --- |");
    }
    s.push('\n');
    for t in targets() {
        let _ = write!(s, "| {} | {} |", t.name, t.threshold);
        for p in &proxies {
            let cell = if p.skipped.is_some() {
                "skipped".to_owned()
            } else {
                match (t.eval)(r, p.kind) {
                    Some((v, true)) => format!("{v} ✅"),
                    Some((v, false)) => format!("{v} ❌"),
                    None => "–".into(),
                }
            };
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }

    // Throughput and latency.
    let _ = writeln!(
        s,
        "\n### Throughput and latency\n\n| scenario | row | rate, median (min–max) | p50 | p99 | ÷ direct | ÷ best peer | p50 ÷ direct | p99 ÷ best peer | CPU µs/op | errors |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut noisy = 0;
    for sc in Scenario::ALL {
        for row in &r.rows {
            if row.skipped.is_some() || !row.kind.runs(sc) {
                continue;
            }
            let k = row.kind;
            let cell = r.cells.get(&(sc, k));
            let title = format!("{} ({})", sc.title(), sc.unit());
            match cell.and_then(Cell::summary) {
                Some(x) => {
                    let errors = if x.errors == 0 {
                        "0".to_owned()
                    } else {
                        let first = cell
                            .and_then(|c| c.samples.iter().find_map(|s| s.first_error.clone()))
                            .unwrap_or_default();
                        format!("**{}** ({first})", x.errors)
                    };
                    let _ = writeln!(
                        s,
                        "| {title} | {} | {}{} ({}–{}) | {} | {} | {} | {} | {} | {} | {:.1} | {errors} |",
                        row.label,
                        fmt_rate(x.rate),
                        if x.max_foreign_cpu_pct > super::FOREIGN_CPU_WARN_PCT {
                            noisy += 1;
                            format!(" † {:.0} %", x.max_foreign_cpu_pct)
                        } else {
                            String::new()
                        },
                        fmt_rate(x.rate_min),
                        fmt_rate(x.rate_max),
                        fmt_us(x.p50_us),
                        fmt_us(x.p99_us),
                        fmt_ratio(r.ratio_direct(sc, k)),
                        if k == Kind::Direct {
                            "–".into()
                        } else {
                            fmt_ratio(r.ratio_best_peer(sc, k))
                        },
                        fmt_ratio(r.p50_ratio_direct(sc, k)),
                        if k == Kind::Direct {
                            "–".into()
                        } else {
                            fmt_ratio(r.p99_ratio_best_peer(sc, k))
                        },
                        x.server_cpu_us_per_op,
                    );
                }
                None => {
                    let why = cell
                        .and_then(|c| c.failures.first().cloned())
                        .unwrap_or_else(|| "no result".into());
                    let _ = writeln!(
                        s,
                        "| {title} | {} | failed: {why} | | | | | | | | |",
                        row.label
                    );
                }
            }
        }
    }

    if noisy > 0 {
        let _ = writeln!(
            s,
            "\n† {noisy} cell(s): other processes used more than {:.0} % of the machine during a round (the most, in percent of all cores, is shown); those numbers are noisy.",
            super::FOREIGN_CPU_WARN_PCT
        );
    }

    // Memory.
    let _ = writeln!(
        s,
        "\n### Proxy memory (whole process group; VmRSS from /proc)\n\n| row | RSS idle (MiB) | RSS peak under load (MiB) | RSS after load (MiB) | fds idle → after load | threads idle → after load |\n| --- | --- | --- | --- | --- | --- |"
    );
    for row in &proxies {
        if let Some(mm) = r.memory.get(&row.kind) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} → {} | {} → {} |",
                row.label,
                mib(mm.idle.rss_kib),
                mib(mm.peak_load_rss_kib),
                mib(mm.after_load.rss_kib),
                mm.idle.fds,
                mm.after_load.fds,
                mm.idle.threads,
                mm.after_load.threads
            );
        }
    }

    // Tunnels.
    let _ = writeln!(
        s,
        "\n### Idle WebSocket tunnels (before → while held → after close)\n"
    );
    if let Some(note) = &r.tunnel_note {
        let _ = writeln!(s, "{note}\n");
    }
    let _ = writeln!(
        s,
        "| row | tunnels open | open time | RSS MiB | fds | sockets | threads | echoed after idle | released |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in &proxies {
        if let Some(t) = r.tunnels.get(&row.kind) {
            let released = if t.released {
                format!("yes, {:.1} s after close", t.release_s)
            } else {
                format!("**no** (after {:.0} s)", t.release_s)
            };
            let err = t
                .error
                .as_ref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} / {} | {:.1} s | {} → {} → {} | {} → {} → {} | {} → {} → {} | {} → {} → {} | {} | {released}{err} |",
                row.label,
                t.opened,
                t.requested,
                t.open_s,
                mib(t.before.rss_kib),
                mib(t.during.rss_kib),
                mib(t.after.rss_kib),
                t.before.fds,
                t.during.fds,
                t.after.fds,
                t.before.sockets,
                t.during.sockets,
                t.after.sockets,
                t.before.threads,
                t.during.threads,
                t.after.threads,
                t.echoed,
            );
        }
    }
    let _ = writeln!(
        s,
        "\nTask count: tokio does not expose it from outside the process; each tunnel is one task owning two sockets in the gateway (`proxy::tunnel`: a task of its own on both engines), so the socket count above is the task count × 2, and its return to the \"before\" value shows the tasks ended."
    );
    if let Some(sd) = &r.shutdown {
        shutdown_markdown(&mut s, sd);
    }
    if let Some(w) = &r.workers {
        super::workers::markdown(&mut s, w);
    }
    if let Some(a) = &r.auth {
        super::auth::markdown(&mut s, a);
    }
    s
}

/// The shutdown section: median and max per case against the targets.
pub(crate) fn shutdown_markdown(s: &mut String, sd: &ShutdownResult) {
    let _ = writeln!(
        s,
        "\n### Shutdown: SIGTERM → gateway exited and both sidecars' process groups gone\n\n`fluxlit run` (release) with real Streamlit and the example API (examples/hello, `.venv`), no request in flight; exit status 0 and pidfile removed in every counted run. Sessions: {SESSIONS} Streamlit WebSockets through the gateway, each answering the close handshake as a browser does.\n\n| case | runs | median | max | target | met |\n| --- | --- | --- | --- | --- | --- |"
    );
    for (case, v, target) in [
        ("idle", &sd.idle_s, TARGET_IDLE_S),
        ("open sessions", &sd.sessions_s, TARGET_SESSIONS_S),
    ] {
        if v.is_empty() {
            let _ = writeln!(
                s,
                "| {case} | 0 / {} | – | – | ≤ {target:.0} s | – |",
                sd.runs_requested
            );
            continue;
        }
        let max = v.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| {case} | {} / {} | {:.2} s | {max:.2} s | ≤ {target:.0} s | {} |",
            v.len(),
            sd.runs_requested,
            median(v),
            if max <= target { "yes" } else { "**no**" }
        );
    }
    if !sd.session_ends.is_empty() {
        let ends: Vec<String> = sd
            .session_ends
            .iter()
            .map(|(how, n)| format!("{how} × {n}"))
            .collect();
        let _ = writeln!(
            s,
            "\nHow the sessions ended, as the client saw them: {}.",
            ends.join(", ")
        );
    }
    if let Some(e) = &sd.error {
        let _ = writeln!(s, "\n**The shutdown measurement failed:** {e}");
    }
}

/// The JSON report.
pub(crate) fn json(r: &Results, m: &Machine, method: &Method) -> serde_json::Value {
    let mut scenarios = Vec::new();
    for sc in Scenario::ALL {
        let mut rows = Vec::new();
        for row in &r.rows {
            let k = row.kind;
            let Some(cell) = r.cells.get(&(sc, k)) else {
                continue;
            };
            rows.push(serde_json::json!({
                "row": k,
                "summary": cell.summary(),
                "ratio_to_direct": r.ratio_direct(sc, k),
                "ratio_to_best_peer": r.ratio_best_peer(sc, k),
                "p50_ratio_to_direct": r.p50_ratio_direct(sc, k),
                "p99_ratio_to_best_peer": r.p99_ratio_best_peer(sc, k),
                "samples": cell.samples,
                "failures": cell.failures,
            }));
        }
        scenarios.push(serde_json::json!({
            "id": sc.id(),
            "title": sc.title(),
            "unit": sc.unit(),
            "rows": rows,
        }));
    }
    let mut evaluated = Vec::new();
    for t in targets() {
        let mut per = serde_json::Map::new();
        for row in r.rows.iter().filter(|x| x.kind != Kind::Direct) {
            if let Some((v, ok)) = (t.eval)(r, row.kind) {
                per.insert(
                    row.label.to_owned(),
                    serde_json::json!({"value": v, "met": ok}),
                );
            }
        }
        evaluated.push(serde_json::json!({"target": t.name, "wanted": t.threshold, "rows": per}));
    }
    let memory: serde_json::Map<String, serde_json::Value> = r
        .memory
        .iter()
        .map(|(k, v)| (k.label().to_owned(), serde_json::json!(v)))
        .collect();
    let tunnels: serde_json::Map<String, serde_json::Value> = r
        .tunnels
        .iter()
        .map(|(k, v)| (k.label().to_owned(), serde_json::json!(v)))
        .collect();
    serde_json::json!({
        "method": method,
        "machine": m,
        "rows": r.rows,
        "targets": evaluated,
        "scenarios": scenarios,
        "memory": memory,
        "tunnels": {"note": r.tunnel_note, "rows": tunnels},
        "shutdown": r.shutdown.as_ref().map(|sd| serde_json::json!({
            "runs": sd,
            "idle_median_s": (!sd.idle_s.is_empty()).then(|| median(&sd.idle_s)),
            "sessions_median_s": (!sd.sessions_s.is_empty()).then(|| median(&sd.sessions_s)),
            "target_idle_s": TARGET_IDLE_S,
            "target_sessions_s": TARGET_SESSIONS_S,
            "sessions": SESSIONS,
        })),
        "workers": r.workers.as_ref().map(|w| serde_json::json!({
            "result": w,
            "speedup": w.speedup(),
            "target_speedup": super::workers::TARGET_SPEEDUP,
        })),
        "auth": r.auth,
    })
}
