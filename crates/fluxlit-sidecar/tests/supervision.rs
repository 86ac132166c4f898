//! Supervision with real processes: readiness, start-up failures, stop escalation, groups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fluxlit_sidecar::{
    HealthProbe, Sidecar, SidecarSpec, SidecarState, StartError, free_loopback_port,
};
use fluxlit_testkit::{eventually, process};

fn sh(name: &str, script: &str) -> SidecarSpec {
    let mut spec = SidecarSpec::new(name, "sh");
    spec.args = vec!["-c".into(), script.into()];
    spec
}

fn dead_port_probe() -> HealthProbe {
    let port = free_loopback_port().unwrap();
    let mut p = HealthProbe::status_200(SocketAddr::from(([127, 0, 0, 1], port)), "/health");
    p.interval = Duration::from_millis(50);
    p
}

#[tokio::test]
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
    let mut sidecar = Sidecar::spawn(spec).unwrap();
    assert!(matches!(
        *sidecar.state().borrow(),
        SidecarState::Starting { .. }
    ));
    sidecar.wait_ready(Duration::from_secs(30)).await.unwrap();
    assert_eq!(*sidecar.state().borrow(), SidecarState::Ready);
    let pid = sidecar.pid();
    let exit = sidecar.stop().await;
    assert!(exit.requested);
    assert!(!process::pid_alive(pid));
}

#[tokio::test]
async fn exit_during_start_up_reports_the_last_lines() {
    let mut spec = sh(
        "broken",
        "echo starting; echo 'boom: bad config' >&2; exit 3",
    );
    spec.health = Some(dead_port_probe());
    let mut sidecar = Sidecar::spawn(spec).unwrap();
    let err = sidecar
        .wait_ready(Duration::from_secs(30))
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

#[tokio::test]
async fn start_up_timeout_names_the_last_probe() {
    let mut spec = sh("slow", "exec sleep 30");
    spec.health = Some(dead_port_probe());
    spec.stop_grace = Duration::from_millis(200);
    let mut sidecar = Sidecar::spawn(spec).unwrap();
    let err = sidecar
        .wait_ready(Duration::from_millis(500))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StartError::Timeout { .. }), "{text}");
    assert!(text.contains("connect failed"), "{text}");
    sidecar.stop().await;
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_reaps_the_whole_group() {
    // Ignores SIGINT and SIGTERM (and so does its grandchild, which inherits the ignored
    // dispositions), so only SIGKILL to the group ends them.
    let spec_script = "trap '' INT TERM; sleep 300 & echo grandchild=$!; wait";
    let mut spec = sh("stubborn", spec_script);
    spec.stop_grace = Duration::from_millis(200);
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
    let exit = sidecar.stop().await;
    assert_eq!(exit.signal, Some(9), "{exit}");
    assert!(exit.requested);
    eventually(
        Duration::from_secs(5),
        "the group to be empty",
        || async move { process::group_members(pgid).is_empty().then_some(()) },
    )
    .await;
    assert!(!process::pid_alive(grandchild));
}

#[tokio::test]
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

#[tokio::test]
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
