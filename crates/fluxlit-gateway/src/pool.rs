//! Several UI workers behind one gateway (`streamlit_workers`, docs/scaling.md): the one rule
//! that picks the worker for a UI request, written once and called by both engines (hyper's
//! path in `lib.rs`, the HTTP/1.1 fast path in `h1.rs`).
//!
//! Streamlit keeps a session's state, its uploads and its media in the memory of the process
//! that holds the session's WebSocket; a request of the session that reaches another process
//! fails (400 "Invalid session_id" on uploads, streamlit/streamlit#4173). The rule, in order
//! ([`UiPool::place`]):
//! 1. An upload, `{root}/_stcore/upload_file/{session_id}/…`, goes to the worker known to hold
//!    `session_id`.
//! 2. A WebSocket to `{root}/_stcore/stream` that names an existing session (the third
//!    `Sec-WebSocket-Protocol` entry, which Streamlit's browser client sends on reconnect) goes
//!    to the worker known to hold it.
//! 3. A request with the gateway's affinity cookie ([`COOKIE`], value: a worker id, from 1)
//!    goes to that worker while the worker runs (even if a health probe failed: it still holds
//!    its sessions). A draining worker ([`UiWorkers::drain`], a rolling restart) keeps only the
//!    requests of the sessions it holds this way (`{root}/_stcore/…` other than a new stream,
//!    `{root}/static/…`, `media/…`, `component/…`); a page load or a new stream WebSocket with
//!    its cookie is placed anew (rule 4) and gets a new cookie.
//! 4. Anything else is placed on the ready, not draining worker with the fewest open WebSocket
//!    sessions (ties taken in turn), and the response sets the cookie (`HttpOnly;
//!    SameSite=Lax; Path={root}/`).
//!
//! Workers can be added and drained while the gateway runs ([`UiWorkers`]); their ids are
//! never reused, so an old cookie never names another process. The workers are a snapshot
//! behind a read-write lock, read once per placed request and replaced when one is added.
//!
//! The gateway learns which worker holds a session from the session's first server messages
//! on the WebSocket ([`SessionTap`]: Streamlit's `ForwardMsg.new_session.initialize.session_id`),
//! keeps at most [`MAX_SESSIONS`] entries, and forgets a session [`ENDED_TTL`] after its last
//! WebSocket closed (Streamlit keeps a disconnected session for 120 s by default,
//! `server.disconnectedSessionTTL`). Its own cookie is taken out of the `Cookie` field it
//! forwards; every other byte of that field goes on as the client sent it (Streamlit's XSRF
//! cookie must arrive verbatim).
//!
//! With the gateway's metrics on, each worker has its series, labelled `worker` (its id):
//! [`crate::metric_names::WORKER_SESSIONS`] (open WebSocket sessions) and
//! [`crate::metric_names::WORKER_PLACEMENTS`] (clients placed anew by rule 4).
//!
//! A session whose worker is gone cannot be kept: Streamlit holds its state in that process
//! alone (the worker died and was restarted on a new port, or it was drained and stopped by a
//! rolling restart). Its tab reconnects naming it, is placed anew (rule 3 or 4) and gets a new
//! session there; but Streamlit's browser client asks for a script run after a reconnect only
//! when it had no session before or a run was in progress (`handleConnectionStateChanged` in
//! Streamlit's `App.tsx`), so an idle tab would keep showing its old page, dead, until the
//! person clicks something. The gateway therefore starts the tab's page on the new worker
//! itself: it remembers the page of the client's last `BackMsg.rerun_script` (query string,
//! page script hash, page name and context info; never widget values, so no button is
//! pressed again) and, for a reconnect of a session it knows to be lost, sends the new worker
//! that `rerun_script` as the tunnel's first client message ([`SessionTap::replay_frame`]), as
//! a page load would. Reconnects to the worker that still holds the session are passed on
//! untouched, and so are reconnects naming a session the gateway does not know.
//!
//! With one worker the rule is off (one relaxed atomic load per UI request): no cookie, no
//! lookup. Its WebSockets are still tapped (counted, their session learned), so that a rolling
//! restart that adds a second worker knows which sessions the first one holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::uri::Authority;
use tokio::sync::watch;

use crate::upstream::{ComponentState, Endpoint, Upstream};

/// The affinity cookie's name. Its value is a worker id, `1` to the number of workers.
pub const COOKIE: &str = "fluxlit_worker";

/// Most sessions whose worker the gateway remembers; beyond it, new sessions are placed by the
/// cookie alone until ended sessions are forgotten.
pub(crate) const MAX_SESSIONS: usize = 65_536;

/// How long a session is remembered after its last WebSocket closed: longer than Streamlit's
/// default `server.disconnectedSessionTTL` (120 s), so a reconnect within it finds its worker.
pub(crate) const ENDED_TTL: Duration = Duration::from_secs(180);

/// Server bytes of a WebSocket looked at for the session id: the first messages only.
const TAP_MAX_BYTES: usize = 256 * 1024;
/// Server messages looked at for the session id.
const TAP_MAX_MESSAGES: usize = 16;

/// Largest client message read for its page (`BackMsg.rerun_script`); larger ones (a rerun
/// carrying big widget values) are passed on unread and leave the last page known as it was.
const CLIENT_MESSAGE_MAX_BYTES: usize = 64 * 1024;

/// Most bytes of a session's remembered page ([`page_of`]); fields that would pass it are left
/// out.
const PAGE_MAX_BYTES: usize = 1024;

/// One UI worker: where it listens and whether it is ready for new sessions.
#[derive(Debug, Clone)]
pub struct UiWorker {
    /// Its address (absent while it is not running).
    pub upstream: Upstream,
    /// Its readiness: only ready workers get new sessions.
    pub state: watch::Receiver<ComponentState>,
}

#[derive(Debug)]
struct Worker {
    /// Its id, from 1: the affinity cookie's value and the `worker` label. Never reused.
    id: usize,
    upstream: Upstream,
    state: watch::Receiver<ComponentState>,
    /// Open WebSocket sessions (tunnels) on this worker.
    open: AtomicUsize,
    /// Draining ([`UiWorkers::drain`]): no new sessions, its own sessions still reach it.
    draining: AtomicBool,
    /// Its metric handles, registered on first use when the gateway records metrics.
    metrics: OnceLock<WorkerMetrics>,
}

/// One worker's series ([`crate::metric_names::WORKER_SESSIONS`],
/// [`crate::metric_names::WORKER_PLACEMENTS`]), labelled `worker` = its id.
#[derive(Debug)]
struct WorkerMetrics {
    sessions: metrics::Gauge,
    placements: metrics::Counter,
}

impl Worker {
    fn running(&self) -> bool {
        self.upstream.endpoint.borrow().is_some()
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ready for new sessions: running, its probe passes, not draining.
    fn ready(&self) -> bool {
        !self.draining() && self.running() && self.state.borrow().is_ready()
    }

    /// Its metric handles, when metrics are recorded.
    fn metrics(&self, record: bool) -> Option<&WorkerMetrics> {
        if !record {
            return None;
        }
        Some(self.metrics.get_or_init(|| {
            let id = self.id.to_string();
            WorkerMetrics {
                sessions: metrics::gauge!(crate::metric_names::WORKER_SESSIONS, "worker" => id.clone()),
                placements: metrics::counter!(crate::metric_names::WORKER_PLACEMENTS, "worker" => id),
            }
        }))
    }
}

#[derive(Debug)]
struct Known {
    /// The worker's id.
    worker: usize,
    /// Where the worker listened when the session was learned: a worker restarted since (on
    /// another port) no longer holds the session.
    at: Authority,
    /// The page of the client's last `rerun_script` ([`page_of`]), to start again on another
    /// worker when this one is lost.
    page: Option<Arc<[u8]>>,
    /// When its last WebSocket closed; `None` while one is open.
    ended: Option<Instant>,
    /// WebSockets of this session open now.
    open: usize,
}

/// Every worker the pool ever had, worker id `n` at index `n - 1` (append-only: ids are never
/// reused, so an old affinity cookie never names another process).
type Workers = Arc<[Arc<Worker>]>;

/// The UI workers and the sessions they hold (see the module documentation).
#[derive(Debug)]
pub(crate) struct UiPool {
    /// The workers, replaced as a whole when one is added (rare: a rolling restart).
    workers: RwLock<Workers>,
    /// The rule runs (several workers, or ever had): while false, one worker serves every UI
    /// request as [`crate::GatewayBuilder::ui`] would and the engines do not call [`Self::place`].
    routing: AtomicBool,
    /// `{root}/_stcore/`: the prefix of Streamlit's own paths.
    stcore: String,
    /// `{root}/`: the cookie's `Path`, and the prefix of the paths a draining worker keeps.
    cookie_path: String,
    /// Where the next tie of least-loaded workers starts.
    turn: AtomicUsize,
    sessions: Mutex<HashMap<Box<str>, Known>>,
    /// Session closes so far (ended sessions are swept every 256).
    closes: AtomicUsize,
    /// Record the per-worker metrics (the gateway's `record_metrics`).
    record_metrics: bool,
}

/// Where a UI request goes: the worker (id, from 1), its address, and the `Set-Cookie` value
/// when the request was placed anew.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) worker: usize,
    pub(crate) upstream: Upstream,
    pub(crate) endpoint: Endpoint,
    pub(crate) set_cookie: Option<HeaderValue>,
    /// A reconnect of a session whose worker is lost: the page to start on the new worker
    /// (`ClientState` bytes; empty when no page was seen), for [`UiPool::tap`].
    pub(crate) replay: Option<Arc<[u8]>>,
}

/// What of a request the rule reads: its upstream path (root kept), its `Cookie` field values,
/// and for a WebSocket upgrade its `Sec-WebSocket-Protocol` values.
#[derive(Debug, Default)]
pub(crate) struct Ask<'a> {
    pub(crate) cookies: Vec<&'a [u8]>,
    pub(crate) protocols: Vec<&'a [u8]>,
    pub(crate) websocket: bool,
}

/// Paths under the root whose requests belong to sessions a worker already holds: with a
/// draining worker's cookie they still reach it. Anything else there (a page load) is a new
/// session's start and goes to a worker that takes new sessions.
const HELD_PREFIXES: [&str; 4] = ["_stcore/", "static/", "media/", "component/"];

impl UiPool {
    /// A pool of `workers` (ids 1 to `workers.len()`) under `root`; with `record_metrics`, the
    /// per-worker series are recorded. With one worker the rule is off until a second is added
    /// ([`UiWorkers::add`]).
    pub(crate) fn new(workers: Vec<UiWorker>, root: &str, record_metrics: bool) -> Self {
        let routing = workers.len() > 1;
        Self {
            workers: RwLock::new(
                workers
                    .into_iter()
                    .enumerate()
                    .map(|(i, w)| Arc::new(Worker::new(i + 1, w)))
                    .collect(),
            ),
            routing: AtomicBool::new(routing),
            stcore: format!("{root}/_stcore/"),
            cookie_path: format!("{root}/"),
            turn: AtomicUsize::new(0),
            sessions: Mutex::new(HashMap::new()),
            closes: AtomicUsize::new(0),
            record_metrics,
        }
    }

    /// Whether the engines place UI requests with [`Self::place`] (one relaxed load: the whole
    /// cost of the pool for a single worker's requests).
    pub(crate) fn routing(&self) -> bool {
        self.routing.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> Workers {
        match self.workers.read() {
            Ok(w) => w.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Picks the worker for a UI request to `path` (the rule in the module documentation);
    /// `None` when no worker runs (the engines answer 503).
    pub(crate) fn place(&self, path: &str, ask: &Ask<'_>) -> Option<Placed> {
        let workers = self.snapshot();
        let mut replay = None;
        if let Some(session) = self.session_of(path, ask) {
            match self.holder(&workers, session) {
                Holder::Held(w) => return placed(w, None, None),
                // Only a reconnect starts its page again; an upload of a lost session fails
                // as it would on the lost worker.
                Holder::Lost(page) if ask.websocket => {
                    let id = String::from_utf8_lossy(session);
                    tracing::info!(session = %id, "the worker of a reconnecting Streamlit session is gone; its page starts again on the worker it is placed on");
                    replay = Some(page.unwrap_or_else(|| Arc::from(&[][..])));
                }
                Holder::Lost(_) | Holder::Unknown => {}
            }
        }
        let cookie = ask.cookies.iter().find_map(|c| affinity_cookie(c));
        if let Some(w) = cookie
            .and_then(|id| id.checked_sub(1))
            .and_then(|i| workers.get(i))
            .filter(|w| w.running() && (!w.draining() || self.held(path, ask)))
        {
            return placed(w, None, replay);
        }
        let w = self.least_loaded(&workers)?;
        if let Some(m) = w.metrics(self.record_metrics) {
            m.placements.increment(1);
        }
        let cookie = HeaderValue::from_str(&format!(
            "{COOKIE}={}; Path={}; HttpOnly; SameSite=Lax",
            w.id, self.cookie_path
        ))
        .ok();
        placed(w, cookie, replay)
    }

    /// Whether a request with a draining worker's cookie belongs to the sessions that worker
    /// holds ([`HELD_PREFIXES`]); a stream WebSocket that got here named no session it holds,
    /// so it starts a new session and is placed anew.
    fn held(&self, path: &str, ask: &Ask<'_>) -> bool {
        let Some(rest) = path.strip_prefix(&self.cookie_path) else {
            return false;
        };
        if ask.websocket && path.strip_prefix(&self.stcore) == Some("stream") {
            return false;
        }
        HELD_PREFIXES.iter().any(|p| rest.starts_with(p))
    }

    /// The session a request names: the upload path's, or a stream reconnect's third
    /// `Sec-WebSocket-Protocol` entry.
    fn session_of<'a>(&self, path: &'a str, ask: &'a Ask<'_>) -> Option<&'a [u8]> {
        let rest = path.strip_prefix(&self.stcore)?;
        if let Some(upload) = rest.strip_prefix("upload_file/") {
            let id = upload.split('/').next().unwrap_or("");
            return valid_session_id(id.as_bytes()).then_some(id.as_bytes());
        }
        if ask.websocket && rest == "stream" {
            return ask
                .protocols
                .iter()
                .flat_map(|v| v.split(|b| *b == b','))
                .map(<[u8]>::trim_ascii)
                .nth(2)
                .filter(|id| valid_session_id(id));
        }
        None
    }

    /// Whether the worker that held `session` still does: it runs (draining or not) where it
    /// ran when the session was learned.
    fn holder<'w>(&self, workers: &'w Workers, session: &[u8]) -> Holder<'w> {
        let Ok(id) = std::str::from_utf8(session) else {
            return Holder::Unknown;
        };
        let (worker, at, page) = {
            let Ok(sessions) = self.sessions.lock() else {
                return Holder::Unknown;
            };
            let Some(k) = sessions.get(id) else {
                return Holder::Unknown;
            };
            (k.worker, k.at.clone(), k.page.clone())
        };
        let Some(w) = worker.checked_sub(1).and_then(|i| workers.get(i)) else {
            return Holder::Lost(page);
        };
        let now = w
            .upstream
            .endpoint
            .borrow()
            .as_ref()
            .map(|e| e.authority.clone());
        if now.as_ref() == Some(&at) {
            Holder::Held(w)
        } else {
            Holder::Lost(page)
        }
    }

    /// The ready worker with the fewest open sessions; ties are taken in turn, starting after
    /// the last worker a tie went to.
    fn least_loaded<'w>(&self, workers: &'w Workers) -> Option<&'w Arc<Worker>> {
        let n = workers.len();
        if n == 0 {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(&Arc<Worker>, usize)> = None;
        for w in (0..n).map(|k| &workers[(start + k) % n]) {
            if !w.ready() {
                continue;
            }
            let load = w.open.load(Ordering::Relaxed);
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((w, load));
            }
        }
        best.map(|(w, _)| w)
    }

    /// A tap for a WebSocket that was just switched on worker `id`: counts the session open
    /// until dropped, learns the session id from the server's first messages and the page
    /// from the client's `rerun_script` messages. `replay` is [`Placed::replay`]: the page the
    /// tunnel starts on the worker first.
    pub(crate) fn tap(self: &Arc<Self>, id: usize, replay: Option<Arc<[u8]>>) -> SessionTap {
        let worker = id
            .checked_sub(1)
            .and_then(|i| self.snapshot().get(i).cloned());
        if let Some(w) = &worker {
            w.open.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = w.metrics(self.record_metrics) {
                m.sessions.increment(1.0);
            }
        }
        SessionTap {
            pool: self.clone(),
            worker,
            session: None,
            frames: Frames::default(),
            client: ClientFrames::default(),
            page: replay.clone().filter(|p| !p.is_empty()),
            replay,
        }
    }

    fn learned(&self, id: &str, worker: &Worker, page: Option<Arc<[u8]>>) {
        let Some(at) = worker
            .upstream
            .endpoint
            .borrow()
            .as_ref()
            .map(|e| e.authority.clone())
        else {
            return;
        };
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        if let Some(k) = sessions.get_mut(id) {
            k.worker = worker.id;
            k.at = at;
            k.open += 1;
            k.ended = None;
            if page.is_some() {
                k.page = page;
            }
            return;
        }
        if sessions.len() >= MAX_SESSIONS {
            let now = Instant::now();
            sessions.retain(|_, k| k.ended.is_none_or(|at| now - at < ENDED_TTL));
            if sessions.len() >= MAX_SESSIONS {
                sessions.retain(|_, k| k.ended.is_none());
            }
            if sessions.len() >= MAX_SESSIONS {
                tracing::warn!(
                    max = MAX_SESSIONS,
                    "too many Streamlit sessions to remember their workers; this one is routed by the affinity cookie alone"
                );
                return;
            }
        }
        sessions.insert(
            id.into(),
            Known {
                worker: worker.id,
                at,
                page,
                ended: None,
                open: 1,
            },
        );
    }

    /// The client of session `id` asked for `page` (its last `rerun_script`).
    fn page_seen(&self, id: &str, page: &Arc<[u8]>) {
        if let Ok(mut sessions) = self.sessions.lock()
            && let Some(k) = sessions.get_mut(id)
        {
            k.page = Some(page.clone());
        }
    }

    fn closed(&self, id: &str) {
        let Ok(mut sessions) = self.sessions.lock() else {
            return;
        };
        if let Some(k) = sessions.get_mut(id) {
            k.open = k.open.saturating_sub(1);
            if k.open == 0 {
                k.ended = Some(Instant::now());
            }
        }
        // Forget sessions ended long ago (a sweep every 256 closes).
        if self.closes.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
            let now = Instant::now();
            sessions.retain(|_, k| k.ended.is_none_or(|at| now - at < ENDED_TTL));
        }
    }

    /// Open WebSocket sessions per worker, worker 1 first (every worker ever added).
    pub(crate) fn open_sessions(&self) -> Vec<usize> {
        self.snapshot()
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }
}

impl Worker {
    fn new(id: usize, w: UiWorker) -> Self {
        Self {
            id,
            upstream: w.upstream,
            state: w.state,
            open: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            metrics: OnceLock::new(),
        }
    }
}

fn placed(
    w: &Worker,
    set_cookie: Option<HeaderValue>,
    replay: Option<Arc<[u8]>>,
) -> Option<Placed> {
    let endpoint = w.upstream.endpoint.borrow().clone()?;
    Some(Placed {
        worker: w.id,
        upstream: w.upstream.clone(),
        endpoint,
        set_cookie,
        replay,
    })
}

/// Whether a session's worker still holds it ([`UiPool::holder`]).
enum Holder<'w> {
    /// This worker does.
    Held(&'w Arc<Worker>),
    /// The worker is gone (stopped, or restarted on another port); the session's last page.
    Lost(Option<Arc<[u8]>>),
    /// The gateway does not know the session.
    Unknown,
}

/// Changes the UI workers of a running gateway ([`crate::Gateway::ui_workers`]): a rolling
/// restart adds a new generation of workers and drains the old one (docs/scaling.md).
///
/// A worker is never removed: its process stops and the [`Upstream`] it was added with says
/// so (no address), which ends its routing; its entry (a few hundred bytes) stays so that its
/// id is never given to another process.
#[derive(Debug, Clone)]
pub struct UiWorkers {
    pool: Arc<UiPool>,
}

impl UiWorkers {
    pub(crate) fn new(pool: Arc<UiPool>) -> Self {
        Self { pool }
    }

    /// Adds a worker and returns its id (one more than the last id ever given). From the second
    /// worker on, the gateway places UI requests by the rule in `pool.rs` (a pool built with
    /// one worker served without it until now).
    pub fn add(&self, worker: UiWorker) -> usize {
        let mut guard = match self.pool.workers.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let id = guard.len() + 1;
        let mut all: Vec<Arc<Worker>> = guard.iter().cloned().collect();
        all.push(Arc::new(Worker::new(id, worker)));
        *guard = all.into();
        drop(guard);
        if id > 1 {
            self.pool.routing.store(true, Ordering::Relaxed);
        }
        id
    }

    /// Marks worker `id` as draining: it gets no new sessions (no placement, and a page load
    /// with its cookie is placed on another worker with a new cookie), while requests of the
    /// sessions it holds (WebSocket reconnects naming them, their uploads, and with its cookie
    /// `{root}/_stcore/…`, `static/…`, `media/…`, `component/…`) still reach it as long as it
    /// runs. Unknown ids are ignored.
    pub fn drain(&self, id: usize) {
        if let Some(w) = self.worker(id) {
            w.draining.store(true, Ordering::Relaxed);
        }
    }

    /// Open WebSocket sessions on worker `id` now (`None` for an unknown id).
    pub fn open_sessions(&self, id: usize) -> Option<usize> {
        self.worker(id).map(|w| w.open.load(Ordering::Relaxed))
    }

    /// Ids of the workers that take new sessions now (running, not draining; ready or not).
    pub fn serving(&self) -> Vec<usize> {
        self.pool
            .snapshot()
            .iter()
            .filter(|w| w.running() && !w.draining())
            .map(|w| w.id)
            .collect()
    }

    fn worker(&self, id: usize) -> Option<Arc<Worker>> {
        self.pool.snapshot().get(id.checked_sub(1)?).cloned()
    }
}

/// The rule's input from a request's fields (hyper's path): every `Cookie` field, and the
/// `Sec-WebSocket-Protocol` fields of a WebSocket upgrade (`websocket`).
pub(crate) fn ask_of(headers: &http::HeaderMap, websocket: bool) -> Ask<'_> {
    Ask {
        cookies: headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect(),
        protocols: if websocket {
            headers
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect()
        } else {
            Vec::new()
        },
        websocket,
    }
}

/// Takes the gateway's cookie out of every `Cookie` field of `headers` (hyper's path; see
/// [`without_affinity_cookie`]): fields without it stay as they are, a field left empty goes.
pub(crate) fn strip_cookie_fields(headers: &mut http::HeaderMap) {
    let values: Vec<HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    if !values
        .iter()
        .any(|v| without_affinity_cookie(v.as_bytes()).is_some())
    {
        return;
    }
    headers.remove(http::header::COOKIE);
    for v in values {
        match without_affinity_cookie(v.as_bytes()) {
            None => {
                headers.append(http::header::COOKIE, v);
            }
            Some(rest) if rest.is_empty() => {}
            Some(rest) => {
                if let Ok(v) = HeaderValue::from_bytes(&rest) {
                    headers.append(http::header::COOKIE, v);
                }
            }
        }
    }
}

/// The worker id in a `Cookie` field value's [`COOKIE`] pair, when it is a number.
fn affinity_cookie(value: &[u8]) -> Option<usize> {
    value.split(|b| *b == b';').find_map(|pair| {
        let (name, v) = split_pair(pair)?;
        (name == COOKIE.as_bytes())
            .then(|| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
            .flatten()
    })
}

fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|b| *b == b'=')?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

/// A `Cookie` field value without the gateway's [`COOKIE`] pairs: `None` when it has none (the
/// value goes on as it is), else the other pairs with their bytes as sent (an empty result
/// means the field is dropped).
pub(crate) fn without_affinity_cookie(value: &[u8]) -> Option<Vec<u8>> {
    let ours = |pair: &[u8]| split_pair(pair).is_some_and(|(n, _)| n == COOKIE.as_bytes());
    if !value.split(|b| *b == b';').any(ours) {
        return None;
    }
    let mut out = Vec::with_capacity(value.len());
    for pair in value.split(|b| *b == b';').filter(|p| !ours(p)) {
        if !out.is_empty() {
            out.push(b';');
        }
        out.extend_from_slice(pair);
    }
    let start = out
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(out.len());
    out.drain(..start);
    Some(out)
}

/// Streamlit session ids are UUIDs; accept 1–64 characters of `[A-Za-z0-9_-]`.
fn valid_session_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Counts a WebSocket session open on its worker for the tunnel's life and learns its session
/// id from the server's first messages (see [`UiPool::tap`]).
#[derive(Debug)]
pub(crate) struct SessionTap {
    pool: Arc<UiPool>,
    worker: Option<Arc<Worker>>,
    session: Option<Box<str>>,
    frames: Frames,
    /// The client's messages, read for their page.
    client: ClientFrames,
    /// The page of the client's last `rerun_script` on this tunnel (or the one replayed).
    page: Option<Arc<[u8]>>,
    /// The page to start before the client's first byte ([`SessionTap::replay_frame`]).
    replay: Option<Arc<[u8]>>,
}

impl SessionTap {
    /// Bytes the upstream sent to the client, in order.
    pub(crate) fn observe(&mut self, bytes: &[u8]) {
        if self.frames.done {
            return;
        }
        if let Some(id) = self.frames.feed(bytes) {
            if let Some(w) = &self.worker {
                self.pool.learned(&id, w, self.page.clone());
            }
            let worker = self.worker.as_ref().map_or(0, |w| w.id);
            tracing::debug!(session = %id, worker, "Streamlit session placed");
            self.session = Some(id.into());
        }
    }
    /// Bytes the client sent to the upstream, in order (as written to the upstream).
    pub(crate) fn client_sent(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // The client spoke first: a replay now would land behind its bytes.
        self.replay = None;
        if let Some(page) = self.client.feed(bytes) {
            let page: Arc<[u8]> = page.into();
            if let Some(id) = &self.session {
                self.pool.page_seen(id, &page);
            }
            self.page = Some(page);
        }
    }

    /// For a reconnect of a lost session ([`Placed::replay`]), before any client byte: the
    /// client-to-server WebSocket frame (RFC 6455 §5.2, masked with a fresh random key as
    /// §5.3 requires of a client) carrying `BackMsg { rerun_script: page }` (field 11 of
    /// Streamlit's `BackMsg.proto`), which starts the tab's page on the new worker. `None`
    /// otherwise, and the second time.
    pub(crate) fn replay_frame(&mut self) -> Option<Vec<u8>> {
        let page = self.replay.take()?;
        let mut msg = Vec::with_capacity(page.len() + 8);
        put_field(&mut msg, 11, &page);
        let uuid = uuid::Uuid::new_v4();
        let mut key = [0u8; 4];
        key.copy_from_slice(&uuid.as_bytes()[..4]);
        Some(masked_frame(0x2, &msg, key))
    }
}

/// A final client frame of `opcode` carrying `payload`, masked with `key` (RFC 6455 §5.2,
/// §5.3).
fn masked_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

impl Drop for SessionTap {
    fn drop(&mut self) {
        if let Some(w) = &self.worker {
            w.open.fetch_sub(1, Ordering::Relaxed);
            if let Some(m) = w.metrics(self.pool.record_metrics) {
                m.sessions.decrement(1.0);
            }
        }
        if let Some(id) = &self.session {
            self.pool.closed(id);
        }
    }
}

/// WebSocket frames from the server (RFC 6455 §5.2), read until the session id is found or the
/// bounds are reached.
#[derive(Debug, Default)]
struct Frames {
    buf: Vec<u8>,
    messages: usize,
    seen: usize,
    done: bool,
}

impl Frames {
    fn feed(&mut self, bytes: &[u8]) -> Option<String> {
        self.seen += bytes.len();
        self.buf.extend_from_slice(bytes);
        loop {
            match frame(&self.buf) {
                Frame::Partial if self.seen <= TAP_MAX_BYTES => return None,
                Frame::Partial | Frame::Invalid => {
                    self.stop();
                    return None;
                }
                Frame::Complete { len, payload } => {
                    self.messages += 1;
                    let found = payload.and_then(|p| session_id(&self.buf[p]));
                    self.buf.drain(..len);
                    if found.is_some() || self.messages >= TAP_MAX_MESSAGES {
                        self.stop();
                        return found;
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.done = true;
        self.buf = Vec::new();
    }
}

/// WebSocket frames from the client (RFC 6455 §5.2; masked, §5.3), read for the whole
/// tunnel: each unfragmented, uncompressed binary message of at most
/// [`CLIENT_MESSAGE_MAX_BYTES`] is unmasked and read for a `rerun_script`; anything else is
/// skipped by its length, unbuffered.
#[derive(Debug, Default)]
struct ClientFrames {
    /// The frame head read so far (at most 14 bytes).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The current frame's masking key (zero when unmasked).
    key: [u8; 4],
    /// The current frame's unmasked payload, when it is read (`Some`) rather than skipped.
    msg: Option<Vec<u8>>,
    /// A frame head that cannot be read: the rest of the stream is passed on unread (the
    /// upstream closes the connection, RFC 6455 §7.1.7).
    broken: bool,
}

impl ClientFrames {
    /// Reads `bytes`; the page of the last `rerun_script` completed in them, if any.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<Vec<u8>> {
        let mut found = None;
        while !bytes.is_empty() && !self.broken {
            if self.left == 0 && self.msg.is_none() {
                // A head: 2 bytes, the extended length, the masking key.
                let need = self.head_len().unwrap_or(2);
                let take = (need - self.head.len()).min(bytes.len());
                self.head.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.head.len() < need || self.head_len() != Some(need) {
                    continue;
                }
                self.start_payload();
                if self.left == 0 {
                    found = self.finish().or(found);
                }
                continue;
            }
            let take = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
            if let Some(msg) = &mut self.msg {
                let at = msg.len();
                msg.extend(
                    bytes[..take]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ self.key[(at + i) % 4]),
                );
            }
            self.left -= take as u64;
            bytes = &bytes[take..];
            if self.left == 0 {
                found = self.finish().or(found);
            }
        }
        found
    }

    /// The whole head's length, once its first two bytes are in.
    fn head_len(&self) -> Option<usize> {
        let b1 = *self.head.get(1)?;
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 })
    }

    fn start_payload(&mut self) {
        let h = std::mem::take(&mut self.head);
        let (b0, b1) = (h[0], h[1]);
        let (len, at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(x), 10)
            }
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            self.broken = true;
            return;
        }
        let masked = b1 & 0x80 != 0;
        self.key = [0; 4];
        if masked {
            self.key.copy_from_slice(&h[at..at + 4]);
        }
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        let read = fin && !rsv1 && masked && opcode == 2 && len <= CLIENT_MESSAGE_MAX_BYTES as u64;
        self.left = len;
        self.msg = read.then(|| Vec::with_capacity(len as usize));
    }

    /// The current frame is complete: its page, when it was a `rerun_script`.
    fn finish(&mut self) -> Option<Vec<u8>> {
        let msg = self.msg.take()?;
        proto_field(&msg, 11).and_then(page_of)
    }
}

/// The page part of a `ClientState` (Streamlit's `ClientState.proto`): `query_string` (1),
/// `page_script_hash` (3), `page_name` (4) and `context_info` (8), re-encoded; widget states,
/// fragment id and cached message hashes are left out. At most [`PAGE_MAX_BYTES`]: the fields
/// are taken in the order hash, name, query string, context info, each only if it still fits;
/// `None` when none fits.
fn page_of(state: &[u8]) -> Option<Vec<u8>> {
    let mut page = Vec::new();
    for number in [3, 4, 1, 8] {
        if let Some(v) = proto_field(state, number) {
            let mut next = page.clone();
            put_field(&mut next, number, v);
            if next.len() <= PAGE_MAX_BYTES {
                page = next;
            }
        }
    }
    (!page.is_empty() || state.is_empty()).then_some(page)
}

/// Appends length-delimited field `number` with `value` (protobuf wire type 2).
fn put_field(out: &mut Vec<u8>, number: u64, value: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

enum Frame {
    Partial,
    Invalid,
    /// A whole frame of `len` bytes; `payload` is the range of an unfragmented, uncompressed,
    /// unmasked binary message's payload.
    Complete {
        len: usize,
        payload: Option<std::ops::Range<usize>>,
    },
}

fn frame(b: &[u8]) -> Frame {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
        return Frame::Partial;
    };
    let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => match b.get(2..4) {
            Some(x) => (u64::from(u16::from_be_bytes([x[0], x[1]])), 4),
            None => return Frame::Partial,
        },
        127 => match b.get(2..10).and_then(|x| <[u8; 8]>::try_from(x).ok()) {
            Some(x) => (u64::from_be_bytes(x), 10),
            None => return Frame::Partial,
        },
        n => (u64::from(n), 2),
    };
    if masked {
        at += 4;
    }
    let Ok(len) = usize::try_from(len) else {
        return Frame::Invalid;
    };
    if len > TAP_MAX_BYTES {
        return Frame::Invalid;
    }
    if b.len() < at + len {
        return Frame::Partial;
    }
    let plain = fin && !rsv1 && !masked && opcode == 2;
    Frame::Complete {
        len: at + len,
        payload: plain.then_some(at..at + len),
    }
}

/// `ForwardMsg.new_session (4) .initialize (1) .session_id (6)` from a serialised `ForwardMsg`
/// (Streamlit's `proto/streamlit/proto/ForwardMsg.proto`, `NewSession.proto`).
fn session_id(msg: &[u8]) -> Option<String> {
    let new_session = proto_field(msg, 4)?;
    let initialize = proto_field(new_session, 1)?;
    let id = proto_field(initialize, 6)?;
    valid_session_id(id).then(|| String::from_utf8_lossy(id).into_owned())
}

/// The first length-delimited field `number` of a protobuf message (wire format:
/// protobuf.dev/programming-guides/encoding).
fn proto_field(mut b: &[u8], number: u64) -> Option<&[u8]> {
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => {
                varint(&mut b)?;
            }
            1 => b = b.get(8..)?,
            2 => {
                let len = usize::try_from(varint(&mut b)?).ok()?;
                let value = b.get(..len)?;
                if key >> 3 == number {
                    return Some(value);
                }
                b = &b[len..];
            }
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    None
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// An upstream connection whose bytes read pass through a [`SessionTap`].
pub(crate) struct Tapped<T> {
    pub(crate) io: T,
    pub(crate) tap: SessionTap,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tapped<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if !self.tap.frames.done && buf.filled().len() > before {
            let new = buf.filled()[before..].to_vec();
            self.tap.observe(&new);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tapped<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            let n = *n;
            self.tap.client_sent(buf.get(..n).unwrap_or(buf));
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool(n: usize) -> (Arc<UiPool>, Vec<watch::Sender<ComponentState>>) {
        let mut states = Vec::new();
        let workers = (0..n)
            .map(|i| {
                let (tx, rx) = watch::channel(ComponentState::Ready);
                states.push(tx);
                UiWorker {
                    upstream: Upstream::fixed("streamlit", Endpoint::loopback(9000 + i as u16)),
                    state: rx,
                }
            })
            .collect();
        (Arc::new(UiPool::new(workers, "/app", false)), states)
    }

    fn ask<'a>(cookies: &[&'a str], protocols: &[&'a str], websocket: bool) -> Ask<'a> {
        Ask {
            cookies: cookies.iter().map(|c| c.as_bytes()).collect(),
            protocols: protocols.iter().map(|c| c.as_bytes()).collect(),
            websocket,
        }
    }

    #[test]
    fn new_clients_are_spread_and_get_the_cookie() {
        let (p, _s) = pool(3);
        let mut counts = [0; 3];
        for _ in 0..30 {
            let placed = p.place("/app/", &ask(&[], &[], false)).unwrap();
            let c = placed.set_cookie.unwrap();
            assert_eq!(
                c.to_str().unwrap(),
                format!(
                    "fluxlit_worker={}; Path=/app/; HttpOnly; SameSite=Lax",
                    placed.worker
                )
            );
            counts[placed.worker - 1] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn the_least_loaded_ready_worker_gets_new_sessions() {
        let (p, s) = pool(3);
        let _a = p.tap(1, None);
        let _b = p.tap(1, None);
        let _c = p.tap(3, None);
        for _ in 0..5 {
            assert_eq!(p.place("/app/", &ask(&[], &[], false)).unwrap().worker, 2);
        }
        s[1].send_replace(ComponentState::NotReady("probe failed".into()));
        assert_eq!(p.place("/app/", &ask(&[], &[], false)).unwrap().worker, 3);
        for tx in &s {
            tx.send_replace(ComponentState::NotReady("down".into()));
        }
        assert!(p.place("/app/", &ask(&[], &[], false)).is_none());
        // A worker that runs but failed a probe keeps its cookie's requests (it holds them).
        let placed = p
            .place("/app/", &ask(&["a=1; fluxlit_worker=2"], &[], false))
            .unwrap();
        assert_eq!((placed.worker, placed.set_cookie), (2, None));
    }

    #[test]
    fn a_cookie_for_no_such_worker_is_placed_anew() {
        let (p, _s) = pool(2);
        for bad in ["fluxlit_worker=0", "fluxlit_worker=3", "fluxlit_worker=x"] {
            assert!(
                p.place("/app/", &ask(&[bad], &[], false))
                    .unwrap()
                    .set_cookie
                    .is_some(),
                "{bad}"
            );
        }
        let (w, dead) = {
            let (tx, rx) = watch::channel(None);
            (
                UiWorker {
                    upstream: Upstream::dynamic("streamlit", rx),
                    state: watch::channel(ComponentState::Ready).1,
                },
                tx,
            )
        };
        let p = UiPool::new(
            vec![
                w,
                UiWorker {
                    upstream: Upstream::fixed("streamlit", Endpoint::loopback(9001)),
                    state: watch::channel(ComponentState::Ready).1,
                },
            ],
            "",
            false,
        );
        let placed = p
            .place("/", &ask(&["fluxlit_worker=1"], &[], false))
            .unwrap();
        assert_eq!(placed.worker, 2, "worker 1 is not running");
        assert_eq!(
            placed.set_cookie.unwrap().to_str().unwrap(),
            "fluxlit_worker=2; Path=/; HttpOnly; SameSite=Lax"
        );
        drop(dead);
    }

    fn new_session_message(id: &str) -> Vec<u8> {
        // ForwardMsg { hash: "h" (1), new_session (4) { name (3), initialize (1) { session_id (6) } } }
        let mut init = vec![0x32, id.len() as u8];
        init.extend_from_slice(id.as_bytes());
        let mut ns = vec![0x1a, 1, b'x', 0x0a, init.len() as u8];
        ns.extend_from_slice(&init);
        let mut msg = vec![0x0a, 1, b'h', 0x22, ns.len() as u8];
        msg.extend_from_slice(&ns);
        msg
    }

    fn binary_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x82];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn sessions_are_learned_from_the_first_server_messages_and_route_uploads_and_reconnects() {
        let (p, _s) = pool(3);
        let id = "0b2f6c1e-6f2a-4d1e-9a57-3c1c2b1a0f00";
        let mut tap = p.tap(3, None);
        let mut bytes = binary_frame(&[0x0a, 1, b'h', 0x48, 1]); // another message first
        bytes.extend(binary_frame(&new_session_message(id)));
        // Split anywhere: frames arrive in pieces.
        let (a, b) = bytes.split_at(5);
        tap.observe(a);
        tap.observe(b);
        assert_eq!(p.open_sessions(), [0, 0, 1]);
        let upload = format!("/app/_stcore/upload_file/{id}/file-1");
        // Another worker's cookie: the session decides.
        let placed = p
            .place(&upload, &ask(&["fluxlit_worker=1"], &[], false))
            .unwrap();
        assert_eq!((placed.worker, placed.set_cookie), (3, None));
        let proto = format!("streamlit, xsrf-token, {id}");
        let placed = p
            .place("/app/_stcore/stream", &ask(&[], &[&proto], true))
            .unwrap();
        assert_eq!(placed.worker, 3);
        // Not a WebSocket, or not the stream: the protocol list means nothing.
        let placed = p
            .place(
                "/app/_stcore/stream",
                &ask(&["fluxlit_worker=1"], &[&proto], false),
            )
            .unwrap();
        assert_eq!(placed.worker, 1);
        // Ended: still known within the TTL (a reconnect finds it), and no longer counted.
        drop(tap);
        assert_eq!(p.open_sessions(), [0, 0, 0]);
        assert_eq!(p.place(&upload, &ask(&[], &[], false)).unwrap().worker, 3);
        // An unknown session falls back to the cookie.
        let other = "/app/_stcore/upload_file/ffffffff-0000/file-1";
        assert_eq!(
            p.place(other, &ask(&["fluxlit_worker=2"], &[], false))
                .unwrap()
                .worker,
            2
        );
    }

    #[test]
    fn a_draining_worker_keeps_its_sessions_and_gets_no_new_ones() {
        let (p, _s) = pool(2);
        let handle = UiWorkers::new(p.clone());
        let id = "0b2f6c1e-6f2a-4d1e-9a57-3c1c2b1a0f01";
        let mut tap = p.tap(1, None);
        tap.observe(&binary_frame(&new_session_message(id)));
        let (tx, rx) = watch::channel(Some(Endpoint::loopback(9100)));
        let new = handle.add(UiWorker {
            upstream: Upstream::dynamic("streamlit", rx),
            state: watch::channel(ComponentState::Ready).1,
        });
        assert_eq!(new, 3, "ids continue after the last one");
        handle.drain(1);
        handle.drain(2);
        assert_eq!(handle.serving(), [3]);
        assert_eq!(handle.open_sessions(1), Some(1));
        // New clients, and page loads or new streams with an old cookie: the new worker.
        for a in [ask(&[], &[], false), ask(&["fluxlit_worker=1"], &[], false)] {
            let placed = p.place("/app/", &a).unwrap();
            assert_eq!(placed.worker, 3);
            assert!(placed.set_cookie.is_some());
        }
        let placed = p
            .place(
                "/app/_stcore/stream",
                &ask(&["fluxlit_worker=1"], &["streamlit, x"], true),
            )
            .unwrap();
        assert_eq!(placed.worker, 3);
        // The old worker's sessions: reconnects, uploads, and with its cookie its media and
        // Streamlit's own requests.
        let proto = format!("streamlit, xsrf, {id}");
        let placed = p
            .place("/app/_stcore/stream", &ask(&[], &[&proto], true))
            .unwrap();
        assert_eq!((placed.worker, placed.set_cookie), (1, None));
        let upload = format!("/app/_stcore/upload_file/{id}/f");
        assert_eq!(p.place(&upload, &ask(&[], &[], false)).unwrap().worker, 1);
        for path in [
            "/app/media/abc.png",
            "/app/_stcore/host-config",
            "/app/static/js/x.js",
            "/app/component/c/index.html",
        ] {
            let placed = p
                .place(path, &ask(&["fluxlit_worker=1"], &[], false))
                .unwrap();
            assert_eq!((placed.worker, placed.set_cookie), (1, None), "{path}");
        }
        // Stopped: its sessions' reconnects go to the new generation.
        drop(tap);
        assert_eq!(handle.open_sessions(1), Some(0));
        let (stopped_tx, stopped_rx) = watch::channel(None);
        let p1 = UiPool::new(
            vec![UiWorker {
                upstream: Upstream::dynamic("streamlit", stopped_rx),
                state: watch::channel(ComponentState::Ready).1,
            }],
            "/app",
            false,
        );
        assert!(!p1.routing(), "one worker: the rule is off");
        let h1 = UiWorkers::new(Arc::new(p1));
        assert_eq!(
            h1.add(UiWorker {
                upstream: Upstream::fixed("streamlit", Endpoint::loopback(9200)),
                state: watch::channel(ComponentState::Ready).1,
            }),
            2
        );
        assert!(h1.pool.routing(), "a second worker turns the rule on");
        h1.drain(1);
        drop(stopped_tx);
        let placed = h1
            .pool
            .place(
                "/app/_stcore/stream",
                &ask(&["fluxlit_worker=1"], &[&proto], true),
            )
            .unwrap();
        assert_eq!(placed.worker, 2);
        drop(tx);
    }

    /// A client frame: masked with `key` (RFC 6455 §5.3).
    fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        masked_frame(opcode, payload, key)
    }

    fn field(number: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_field(&mut out, number, value);
        out
    }

    /// `BackMsg { rerun_script: ClientState { query_string, widget_states, page_script_hash,
    /// page_name, context_info } }`.
    fn rerun(page_hash: &str, widgets: &[u8]) -> Vec<u8> {
        let mut state = field(1, b"q=1");
        state.extend(field(2, widgets));
        state.extend(field(3, page_hash.as_bytes()));
        state.extend(field(4, b"report"));
        state.extend(field(8, &field(1, b"Europe/Paris")));
        field(11, &state)
    }

    fn page(page_hash: &str) -> Vec<u8> {
        let mut p = field(3, page_hash.as_bytes());
        p.extend(field(4, b"report"));
        p.extend(field(1, b"q=1"));
        p.extend(field(8, &field(1, b"Europe/Paris")));
        p
    }

    #[test]
    fn the_client_s_last_rerun_gives_the_page_without_widget_values() {
        let mut c = ClientFrames::default();
        let mut bytes = client_frame(0x9, b"ping", [1, 2, 3, 4]);
        bytes.extend(client_frame(
            0x2,
            &rerun("h1", b"button-pressed"),
            [9, 8, 7, 6],
        ));
        // A heartbeat (not a rerun), then a second rerun on another page.
        bytes.extend(client_frame(0x2, &field(17, b""), [0, 0, 0, 0]));
        bytes.extend(client_frame(0x2, &rerun("h2", b""), [0xaa, 0x55, 0, 0xff]));
        // Byte by byte or at once: the same page, the last one.
        let mut last = None;
        for b in &bytes {
            if let Some(p) = c.feed(std::slice::from_ref(b)) {
                last = Some(p);
            }
        }
        assert_eq!(last, Some(page("h2")));
        assert_eq!(ClientFrames::default().feed(&bytes), Some(page("h2")));
    }

    #[test]
    fn client_frames_that_are_not_read_are_skipped_by_length() {
        let mut c = ClientFrames::default();
        // Too large to read (64 KiB + 1 of widget values), compressed, fragmented, text: all
        // skipped, unbuffered; the frame after them is read.
        let big = rerun("big", &vec![7u8; CLIENT_MESSAGE_MAX_BYTES + 1]);
        let mut compressed = client_frame(0x2, &rerun("z", b""), [1, 1, 1, 1]);
        compressed[0] |= 0x40;
        let mut fragment = client_frame(0x2, &rerun("f", b""), [1, 1, 1, 1]);
        fragment[0] &= 0x7f;
        let text = client_frame(0x1, &rerun("t", b""), [1, 1, 1, 1]);
        for f in [
            client_frame(0x2, &big, [3, 3, 3, 3]),
            compressed,
            fragment,
            text,
        ] {
            assert_eq!(c.feed(&f), None);
            assert!(c.msg.is_none() && c.head.is_empty() && c.left == 0);
        }
        assert_eq!(
            c.feed(&client_frame(0x2, &rerun("ok", b""), [5; 4])),
            Some(page("ok"))
        );
        // A head announcing more than 2^63 bytes: the rest is passed on unread.
        let mut bad = vec![0x82, 0x80 | 127];
        bad.extend_from_slice(&u64::MAX.to_be_bytes());
        bad.extend_from_slice(&[0; 4]);
        assert_eq!(c.feed(&bad), None);
        assert!(c.broken);
        assert_eq!(c.feed(&client_frame(0x2, &rerun("x", b""), [5; 4])), None);
    }

    #[test]
    fn a_page_is_bounded() {
        // A field that would pass the bound is left out; those that fit are kept.
        let mut state = field(1, &vec![b'q'; PAGE_MAX_BYTES]);
        state.extend(field(3, b"h"));
        state.extend(field(8, &[b'c'; 200]));
        let mut want = field(3, b"h");
        want.extend(field(8, &[b'c'; 200]));
        assert_eq!(page_of(&state), Some(want));
        // Nothing fits: nothing is remembered.
        assert_eq!(page_of(&field(3, &vec![b'h'; PAGE_MAX_BYTES])), None);
    }

    #[test]
    fn a_reconnect_of_a_session_whose_worker_is_gone_starts_its_page_on_the_new_worker() {
        let mut senders = Vec::new();
        let workers = (0..2)
            .map(|i| {
                let (tx, rx) = watch::channel(Some(Endpoint::loopback(9100 + i)));
                senders.push(tx);
                UiWorker {
                    upstream: Upstream::dynamic("streamlit", rx),
                    state: watch::channel(ComponentState::Ready).1,
                }
            })
            .collect();
        let p = Arc::new(UiPool::new(workers, "/app", false));
        let id = "0b2f6c1e-6f2a-4d1e-9a57-3c1c2b1a0f00";
        // The client asks for its page before the server names the session.
        let mut tap = p.tap(1, None);
        tap.client_sent(&client_frame(0x2, &rerun("h1", b"w"), [4, 3, 2, 1]));
        tap.observe(&binary_frame(&new_session_message(id)));
        // It navigates: the page known is the last one.
        tap.client_sent(&client_frame(0x2, &rerun("h2", b"w"), [4, 3, 2, 1]));
        drop(tap);
        let proto = format!("streamlit, xsrf-token, {id}");
        let reconnect = ask(&["fluxlit_worker=1"], &[&proto], true);

        // Held: the reconnect is passed on untouched.
        let placed = p.place("/app/_stcore/stream", &reconnect).unwrap();
        assert_eq!((placed.worker, placed.replay), (1, None));
        let mut tap = p.tap(1, None);
        assert_eq!(tap.replay_frame(), None);
        drop(tap);

        // Worker 1 restarted on another port: it no longer holds the session. The reconnect
        // goes where its cookie says (worker 1 again) and starts its page there.
        senders[0].send_replace(Some(Endpoint::loopback(9200)));
        let placed = p.place("/app/_stcore/stream", &reconnect).unwrap();
        assert_eq!(placed.worker, 1);
        assert_eq!(placed.replay.as_deref(), Some(&page("h2")[..]));
        // The frame: masked binary, `BackMsg { rerun_script: page }`; once.
        let mut tap = p.tap(placed.worker, placed.replay);
        let frame = tap.replay_frame().unwrap();
        assert_eq!(tap.replay_frame(), None);
        let mut read = ClientFrames::default();
        assert_eq!(read.feed(&frame), Some(page("h2")));
        assert_eq!(frame[0], 0x82);
        assert_ne!(frame[1] & 0x80, 0, "masked");
        // The new session is learned with the page it was started on.
        tap.observe(&binary_frame(&new_session_message("new-session-1")));
        drop(tap);

        // Stopped: placed anew on the live worker; an upload of the lost session is not
        // replayed (only a reconnect starts a page).
        senders[0].send_replace(None);
        let lost = p.place("/app/_stcore/stream", &reconnect).unwrap();
        assert_eq!(lost.worker, 2);
        assert_eq!(lost.replay.as_deref(), Some(&page("h2")[..]));
        let upload = format!("/app/_stcore/upload_file/{id}/f");
        assert_eq!(
            p.place(&upload, &ask(&[], &[], false)).unwrap().replay,
            None
        );
        // A session the gateway does not know is passed on untouched.
        let unknown = ask(&[], &["streamlit, x, ffffffff-0000"], true);
        assert_eq!(
            p.place("/app/_stcore/stream", &unknown).unwrap().replay,
            None
        );
        // The client spoke first: nothing is replayed behind its bytes.
        let mut tap = p.tap(2, lost.replay);
        tap.client_sent(&client_frame(0x2, &field(17, b""), [0; 4]));
        assert_eq!(tap.replay_frame(), None);
    }

    #[test]
    fn frames_that_cannot_carry_the_id_stop_the_tap() {
        let mut f = Frames::default();
        // Compressed (RSV1) message: skipped, not parsed.
        let mut c = binary_frame(&new_session_message("abc"));
        c[0] |= 0x40;
        assert_eq!(f.feed(&c), None);
        assert!(!f.done);
        assert_eq!(
            f.feed(&binary_frame(&new_session_message("abc"))),
            Some("abc".into())
        );
        let mut f = Frames::default();
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(f.feed(&huge), None);
        assert!(f.done);
        let mut f = Frames::default();
        for _ in 0..TAP_MAX_MESSAGES {
            assert_eq!(f.feed(&binary_frame(b"\x08\x01")), None);
        }
        assert!(f.done);
        assert!(session_id(&[0x22, 0x05, 0x0a]).is_none(), "truncated");
    }

    #[test]
    fn the_gateway_cookie_is_cut_out_and_every_other_byte_kept() {
        let cut =
            |v: &str| without_affinity_cookie(v.as_bytes()).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(cut("_streamlit_xsrf=2|a%3Db|x; other=1"), None);
        assert_eq!(
            cut("_streamlit_xsrf=2|a%3Db|x; fluxlit_worker=2; other=\"q\""),
            Some("_streamlit_xsrf=2|a%3Db|x; other=\"q\"".into())
        );
        assert_eq!(cut("fluxlit_worker=1;  a=b"), Some("a=b".into()));
        assert_eq!(cut("a=b;fluxlit_worker=1"), Some("a=b".into()));
        assert_eq!(cut("fluxlit_worker=1"), Some(String::new()));
        assert_eq!(cut("fluxlit_workerx=1; a=b"), None);
        assert_eq!(affinity_cookie(b"a=1; fluxlit_worker = 3 "), Some(3));
        assert_eq!(affinity_cookie(b"fluxlit_workers=3"), None);
    }
}
