//! Readiness bridging: a sidecar's state becomes a gateway readiness input, an external
//! upstream is probed every second, and a started sidecar is published to the gateway (its
//! address, readiness, debug entry and metrics).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluxlit_gateway::{ComponentState, Endpoint};
use fluxlit_sidecar::{ExitInfo, HealthProbe, Sidecar, SidecarState};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// What the debug snapshot shows of the sidecars: name → {pid, port, state}.
pub(crate) type SidecarInfo = Arc<Mutex<BTreeMap<&'static str, serde_json::Value>>>;

/// Connects a sidecar to the gateway: its address, its readiness, its debug entry, its metrics.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) name: &'static str,
    pub(crate) endpoint: watch::Sender<Option<Endpoint>>,
    pub(crate) state: watch::Sender<ComponentState>,
    pub(crate) info: SidecarInfo,
    /// The task mirroring the current sidecar's state into `state` (replaced, and the previous
    /// one ended, when another sidecar is published: a restart, or a rolling restart's new
    /// worker while the old one still runs).
    pub(crate) follow: Option<AbortOnDropHandle<()>>,
}

impl Link {
    /// The sidecar is ready on `port`: route to it, follow its state, count it up.
    pub(crate) fn publish(&mut self, sidecar: &Sidecar, port: u16) {
        self.endpoint.send_replace(Some(Endpoint::loopback(port)));
        self.follow = Some(AbortOnDropHandle::new(tokio::spawn(forward_state(
            sidecar.state(),
            self.state.clone(),
        ))));
        metrics::gauge!(fluxlit_gateway::metric_names::SIDECAR_UP, "sidecar" => self.name).set(1.0);
        if let Ok(mut m) = self.info.lock() {
            m.insert(
                self.name,
                serde_json::json!({"pid": sidecar.pid(), "port": port, "state": "running"}),
            );
        }
    }

    /// The sidecar is being restarted on purpose (`fluxlit dev --reload`): no route, readiness
    /// 503 with `detail`.
    pub(crate) fn reloading(&self, detail: &str) {
        self.endpoint.send_replace(None);
        self.state
            .send_replace(ComponentState::NotReady(detail.to_owned()));
        if let Ok(mut m) = self.info.lock() {
            m.insert(self.name, serde_json::json!({"state": detail}));
        }
    }

    /// The sidecar exited on its own: no route, readiness 503, logged and counted down.
    pub(crate) fn exited(&self, exit: &ExitInfo) {
        self.endpoint.send_replace(None);
        self.state
            .send_replace(ComponentState::NotReady(format!("exited ({exit})")));
        metrics::gauge!(fluxlit_gateway::metric_names::SIDECAR_UP, "sidecar" => self.name).set(0.0);
        tracing::error!(sidecar = self.name, exit = %exit, "sidecar exited");
        if let Ok(mut m) = self.info.lock() {
            m.insert(
                self.name,
                serde_json::json!({"state": format!("exited ({exit})")}),
            );
        }
    }
}

/// Mirrors a sidecar's state into a readiness input until the sidecar's task ends.
pub(crate) async fn forward_state(
    mut from: watch::Receiver<SidecarState>,
    to: watch::Sender<ComponentState>,
) {
    loop {
        let next = component_state(&from.borrow_and_update());
        to.send_replace(next);
        if from.changed().await.is_err() {
            return;
        }
    }
}

/// A sidecar state as the gateway's readiness shows it.
pub(crate) fn component_state(state: &SidecarState) -> ComponentState {
    match state {
        SidecarState::Starting { last_probe } => ComponentState::Starting(
            last_probe
                .clone()
                .unwrap_or_else(|| "waiting for the first probe".into()),
        ),
        SidecarState::Ready => ComponentState::Ready,
        SidecarState::Unhealthy(why) => ComponentState::NotReady(why.clone()),
        SidecarState::Exited(exit) => ComponentState::NotReady(format!("exited ({exit})")),
    }
}

/// An upstream FluxLit does not start (`ui_upstream`, `api_upstream`), probed for readiness.
#[derive(Debug, Clone)]
pub(crate) struct External {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The path probed (any HTTP response counts as ready).
    pub(crate) path: String,
    pub(crate) state: watch::Sender<ComponentState>,
}

/// Probes an external upstream every second, forever (the caller aborts the task).
pub(crate) async fn probe_external(ext: External) {
    let External {
        host,
        port,
        path,
        state,
    } = ext;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let addr = match tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                state.send_replace(ComponentState::NotReady(format!(
                    "cannot resolve {host}:{port}"
                )));
                continue;
            }
        };
        let next = match HealthProbe::any_response(addr, &path).check().await {
            Ok(()) => ComponentState::Ready,
            Err(e) => ComponentState::NotReady(e.to_string()),
        };
        state.send_replace(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_states_map_to_readiness() {
        assert_eq!(
            component_state(&SidecarState::Starting { last_probe: None }),
            ComponentState::Starting("waiting for the first probe".into())
        );
        assert_eq!(component_state(&SidecarState::Ready), ComponentState::Ready);
        assert_eq!(
            component_state(&SidecarState::Unhealthy("timed out".into())),
            ComponentState::NotReady("timed out".into())
        );
    }
}
