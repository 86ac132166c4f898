//! Supervision with real processes: readiness, start-up failures, stop escalation, groups.
//!
//! On a multi-thread runtime: the supervising task, the probe and the test run on different
//! workers, as they do in the gateway. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fluxlit_sidecar::{
    HealthProbe, Sidecar, SidecarSpec, SidecarState, StartError, free_loopback_port,
};
use fluxlit_testkit::{eventually, process};

fn sh(name: &str, script: &str) -> SidecarSpec {
    let mut spec = SidecarSpec::new(name, "sh");
    spec.args = vec!["-c".into(), script.into()];
    spec
}

/// Runs `fut`, failing the test if it takes longer than `limit`.
async fn bounded<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// Timers may be late (a loaded machine), never early; this much early is still accepted
/// (clock granularity), and `LATE` is the most a bounded wait may overrun.
const EARLY: Duration = Duration::from_millis(20);
const LATE: Duration = Duration::from_secs(5);

fn dead_port_probe() -> HealthProbe {
    let port = free_loopback_port().unwrap();
    let mut p = HealthProbe::status_200(SocketAddr::from(([127, 0, 0, 1], port)), "/health");
    p.interval = Duration::from_millis(50);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_ready_when_the_probe_passes_and_stops_on_sigint() {
    let port = free_loopback_port().unwrap();
    let mut spec = SidecarSpec::new("web", "python3");
    spec.args = [
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let mut probe = HealthProbe::status_200(SocketAddr::from(([127, 0, 0, 1], port)), "/");
    probe.interval = Duration::from_millis(50);
    spec.health = Some(probe);
    // A long grace: a stop that ends well before it was SIGINT's doing, not an escalation.
    let grace = Duration::from_secs(20);
    spec.stop_grace = grace;
    let mut sidecar = Sidecar::spawn(spec).unwrap();
    assert!(matches!(
        *sidecar.state().borrow(),
        SidecarState::Starting { .. }
    ));
    bounded(
        Duration::from_secs(40),
        "wait_ready",
        sidecar.wait_ready(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(*sidecar.state().borrow(), SidecarState::Ready);
    let pid = sidecar.pid();
    let started = Instant::now();
    let exit = bounded(grace * 2 + LATE, "stop", sidecar.stop()).await;
    let took = started.elapsed();
    assert!(exit.requested);
    // http.server handles SIGINT (KeyboardInterrupt) and exits by itself, with code 0.
    assert_eq!((exit.code, exit.signal), (Some(0), None), "{exit}");
    assert!(took < grace, "SIGINT alone stops it, took {took:?}");
    assert!(!process::pid_alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_during_start_up_reports_the_last_lines() {
    let mut spec = sh(
        "broken",
        "echo starting; echo 'boom: bad config' >&2; exit 3",
    );
    spec.health = Some(dead_port_probe());
    let mut sidecar = Sidecar::spawn(spec).unwrap();
    let err = bounded(
        Duration::from_secs(40),
        "wait_ready",
        sidecar.wait_ready(Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    match &err {
        StartError::Exited {
            name,
            exit,
            last_lines,
        } => {
            assert_eq!(name, "broken");
            assert_eq!(exit.code, Some(3));
            assert!(!exit.requested);
            assert!(
                last_lines.contains(&"boom: bad config".to_owned()),
                "{last_lines:?}"
            );
            assert!(
                last_lines.contains(&"starting".to_owned()),
                "{last_lines:?}"
            );
        }
        other => panic!("expected Exited, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("exit code 3") && text.contains("boom: bad config"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_timeout_names_the_last_probe() {
    let mut spec = sh("slow", "exec sleep 30");
    spec.health = Some(dead_port_probe());
    spec.stop_grace = Duration::from_millis(200);
    let mut sidecar = Sidecar::spawn(spec).unwrap();
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = bounded(timeout + LATE, "wait_ready", sidecar.wait_ready(timeout))
        .await
        .unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert!(matches!(err, StartError::Timeout { .. }), "{text}");
    assert!(text.contains("connect failed"), "{text}");
    // The timeout is the configured one: not cut short, not much longer.
    assert!(
        took + EARLY >= timeout && took < timeout + LATE,
        "gave up after {took:?}, configured {timeout:?}"
    );
    bounded(Duration::from_secs(10), "stop", sidecar.stop()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_sigkill_and_reaps_the_whole_group() {
    // Ignores SIGINT and SIGTERM (and so does its grandchild, which inherits the ignored
    // dispositions), so only SIGKILL to the group ends them.
    let spec_script = "trap '' INT TERM; sleep 300 & echo grandchild=$!; wait";
    let mut spec = sh("stubborn", spec_script);
    let grace = Duration::from_millis(200);
    spec.stop_grace = grace;
    let sidecar = Sidecar::spawn(spec).unwrap();
    let grandchild: u32 = eventually(Duration::from_secs(10), "the grandchild's pid", || {
        let lines = sidecar.last_lines();
        async move {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("grandchild=")?.parse().ok())
        }
    })
    .await;
    let pgid = sidecar.pid();
    assert!(process::group_members(pgid).contains(&grandchild));
    let started = Instant::now();
    let exit = bounded(grace * 2 + LATE, "stop", sidecar.stop()).await;
    let took = started.elapsed();
    assert_eq!(exit.signal, Some(9), "{exit}");
    assert!(exit.requested);
    // SIGINT, the grace, SIGTERM, the grace, and only then SIGKILL.
    assert!(
        took + EARLY >= grace * 2 && took < grace * 2 + LATE,
        "SIGKILL after {took:?}, expected two graces of {grace:?} first"
    );
    eventually(
        Duration::from_secs(5),
        "the group to be empty",
        || async move { process::group_members(pgid).is_empty().then_some(()) },
    )
    .await;
    assert!(!process::pid_alive(grandchild));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_exit_is_published() {
    let sidecar = Sidecar::spawn(sh("crashy", "exec sleep 30")).unwrap();
    assert_eq!(
        *sidecar.state().borrow(),
        SidecarState::Ready,
        "no probe: ready once started"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sidecar.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), sidecar.exited())
        .await
        .unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(!exit.requested);
    assert!(exit.to_string().contains("SIGKILL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_the_group() {
    let sidecar = Sidecar::spawn(sh("dropped", "sleep 300 & wait")).unwrap();
    let pgid = sidecar.pid();
    eventually(
        Duration::from_secs(5),
        "two processes in the group",
        || async move { (process::group_members(pgid).len() == 2).then_some(()) },
    )
    .await;
    drop(sidecar);
    eventually(
        Duration::from_secs(5),
        "the group to be empty",
        || async move { process::group_members(pgid).is_empty().then_some(()) },
    )
    .await;
}

/// A gateway started with SIGINT/SIGTERM ignored (a background job of a non-interactive shell
/// ignores SIGINT) must not pass "ignore" on to its sidecars: `exec` keeps it, and Streamlit
/// would then ignore the SIGINT of every stop and wait the whole stop grace for SIGTERM.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_do_not_inherit_ignored_stop_signals() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    let stop_signals = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT];
    // SAFETY: only dispositions change (no handler runs); restored right after the spawn.
    #[allow(unsafe_code)]
    let set = |h: SigHandler| {
        for sig in stop_signals {
            unsafe { signal(sig, h) }.unwrap();
        }
    };
    set(SigHandler::SigIgn);
    let spawned = Sidecar::spawn(sh("sigign", "exec grep '^SigIgn:' /proc/self/status"));
    set(SigHandler::SigDfl);
    let sidecar = spawned.unwrap();
    let exit = bounded(Duration::from_secs(10), "exit", sidecar.exited()).await;
    assert_eq!(exit.code, Some(0), "{exit}");
    let line = sidecar
        .last_lines()
        .into_iter()
        .find(|l| l.contains("SigIgn:"))
        .expect("the child printed its SigIgn line");
    let mask = u64::from_str_radix(line.rsplit(['\t', ' ']).next().unwrap().trim(), 16).unwrap();
    for sig in stop_signals {
        let bit = 1u64 << (sig as i32 - 1);
        assert_eq!(mask & bit, 0, "{sig} is ignored in the sidecar: {line}");
    }
}
