//! Upstreams (where the gateway proxies to), readiness inputs, and the in-process API service.

use std::sync::Arc;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::{Body, BoxError};

/// Where an upstream currently listens: `host:port` and a base path prepended to every
/// forwarded path (`""` for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `127.0.0.1:PORT` for sidecars (never `localhost`, which may resolve to `::1`).
    pub authority: Authority,
    /// `""` or `/seg…` without a trailing slash.
    pub base_path: String,
}

impl Endpoint {
    /// `127.0.0.1:port` with no base path: where a sidecar listens.
    pub fn loopback(port: u16) -> Self {
        let authority = Authority::try_from(format!("127.0.0.1:{port}"))
            .expect("an IPv4 address and a u16 port always form a valid authority");
        Self {
            authority,
            base_path: String::new(),
        }
    }
}

/// An HTTP upstream with a human name (used in error bodies and logs) and an address that may
/// change or be absent (a sidecar that is starting or restarting).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub(crate) name: Arc<str>,
    pub(crate) endpoint: watch::Receiver<Option<Endpoint>>,
}

impl Upstream {
    /// An upstream at a fixed address.
    pub fn fixed(name: &str, endpoint: Endpoint) -> Self {
        let (_tx, rx) = watch::channel(Some(endpoint));
        Self {
            name: name.into(),
            endpoint: rx,
        }
    }

    /// An upstream whose address is published by someone else (for example the sidecar
    /// supervisor); `None` means "not available now" and gives 503.
    pub fn dynamic(name: &str, endpoint: watch::Receiver<Option<Endpoint>>) -> Self {
        Self {
            name: name.into(),
            endpoint,
        }
    }

    /// The upstream's name, as used in error bodies.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A component's readiness, as shown by `{api}/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComponentState {
    /// Not ready yet (starting up); the text says what is awaited.
    Starting(String),
    /// Ready to serve.
    Ready,
    /// Not ready (failed probe, exited); the text says why.
    NotReady(String),
}

impl ComponentState {
    /// Whether this counts as ready.
    pub fn is_ready(&self) -> bool {
        matches!(self, ComponentState::Ready)
    }
}

/// A named readiness input for `{api}/readyz`.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    pub(crate) name: Arc<str>,
    pub(crate) state: watch::Receiver<ComponentState>,
    /// For a check of several members ([`ReadinessCheck::quorum`]): the members and how many
    /// must be ready. `state` is then unused.
    pub(crate) quorum: Option<(Vec<Member>, usize)>,
}

/// A member of a quorum check: its name and state.
type Member = (Arc<str>, watch::Receiver<ComponentState>);

impl ReadinessCheck {
    /// A check named `name` (`streamlit`, `api`, …) fed by `state`.
    pub fn new(name: &str, state: watch::Receiver<ComponentState>) -> Self {
        Self {
            name: name.into(),
            state,
            quorum: None,
        }
    }

    /// A check named `name` that is ready while at least `min_ready` of `members` are (for
    /// example Streamlit workers, `streamlit_workers_min_ready`). `{api}/readyz` lists every
    /// member under its own name besides the check; only the check counts for readiness.
    pub fn quorum(
        name: &str,
        members: Vec<(String, watch::Receiver<ComponentState>)>,
        min_ready: usize,
    ) -> Self {
        Self {
            name: name.into(),
            state: watch::channel(ComponentState::Ready).1,
            quorum: Some((
                members.into_iter().map(|(n, s)| (n.into(), s)).collect(),
                min_ready.max(1),
            )),
        }
    }

    /// The check's state, then each member's (name, state) for a quorum check.
    pub(crate) fn states(&self) -> (ComponentState, Vec<(String, ComponentState)>) {
        let Some((members, min)) = &self.quorum else {
            return (self.state.borrow().clone(), Vec::new());
        };
        let each: Vec<(String, ComponentState)> = members
            .iter()
            .map(|(n, s)| (n.to_string(), s.borrow().clone()))
            .collect();
        let ready = each.iter().filter(|(_, s)| s.is_ready()).count();
        let state = if ready >= *min {
            ComponentState::Ready
        } else {
            ComponentState::NotReady(format!(
                "{ready} of {} ready, at least {min} needed",
                each.len()
            ))
        };
        (state, each)
    }
}

/// An in-process API: any tower `Service` taking `Request<Body>`, for example an axum `Router`.
/// The gateway strips the API mount from the path and sets `X-Forwarded-Prefix` before calling
/// it. Service errors become 500 responses.
#[derive(Clone)]
pub struct ApiService {
    inner: BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>,
}

impl std::fmt::Debug for ApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiService")
    }
}

impl ApiService {
    /// Wraps `service`.
    pub fn new<S, B>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let svc = service
            .map_response(|r: Response<B>| r.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::<BoxError>::into);
        Self {
            inner: BoxCloneSyncService::new(svc),
        }
    }

    pub(crate) async fn call(&self, req: Request<Body>) -> Response<Body> {
        // Boxed with an explicit `Send` bound: proving `Send` for the `Oneshot` future inside
        // the connection future otherwise trips a higher-ranked lifetime limitation of rustc.
        let fut: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>,
        > = Box::pin(self.inner.clone().oneshot(req));
        match fut.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "in-process API service failed");
                crate::response::plain(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "FluxLit: the in-process API service failed while handling this request\n",
                )
            }
        }
    }
}

/// What the API mount is served by.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum ApiTarget {
    /// No API: everything under the mount except the gateway's own routes answers 404 JSON.
    #[default]
    None,
    /// An HTTP upstream (for example uvicorn), proxied with the mount stripped.
    Upstream(Upstream),
    /// An in-process tower service.
    Service(ApiService),
}
