//! WebSocket tunnels by login session (`auth_mode = oidc`; AUTH.md A.4 rule 7): a tunnel opened
//! with a session is registered under the session id, and ends when the session ends here
//! (logout on this gateway) or anywhere (a revocation the session store broadcasts: another
//! replica's logout, a revocation by an operator). Streamlit reads the identity only when its
//! WebSocket connects, so a tunnel left open would keep a logged-out user's app alive.
//!
//! The map holds one entry per session with open tunnels: an entry goes when its last tunnel
//! ends (pruned on the next registration) or when the session is ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use fluxlit_auth::session::Revoked;
use tokio_util::sync::CancellationToken;

/// How often the sessions with open tunnels are looked at for a due refresh.
pub(crate) const REFRESH_SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// Held by a tunnel for its life: cancelled when its session ends.
#[derive(Debug, Clone)]
pub(crate) struct SessionGuard {
    /// Cancelled when the session ends.
    pub(crate) ended: CancellationToken,
    /// Counts the tunnels of the entry (the map holds one more reference).
    _user: Arc<()>,
}

struct Entry {
    sub: String,
    /// The session's ticket (server-side stores): the background refresh reads it.
    ticket: Option<String>,
    ended: CancellationToken,
    users: Arc<()>,
}

/// The registry (one per gateway).
#[derive(Default)]
pub(crate) struct SessionTunnels {
    map: Mutex<HashMap<String, Entry>>,
    listening: OnceLock<()>,
    refreshing: OnceLock<()>,
}

impl std::fmt::Debug for SessionTunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionTunnels({} sessions)", self.lock().len())
    }
}

impl SessionTunnels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The guard a tunnel of session `sid` (user `sub`, `ticket` with a server-side store)
    /// holds.
    pub(crate) fn guard(&self, sid: &str, sub: &str, ticket: Option<&str>) -> SessionGuard {
        let mut map = self.lock();
        // Sessions whose tunnels all ended go (only the map's reference is left).
        map.retain(|_, e| Arc::strong_count(&e.users) > 1);
        let e = map.entry(sid.to_owned()).or_insert_with(|| Entry {
            sub: sub.to_owned(),
            ticket: ticket.map(str::to_owned),
            ended: CancellationToken::new(),
            users: Arc::new(()),
        });
        SessionGuard {
            ended: e.ended.clone(),
            _user: e.users.clone(),
        }
    }

    /// Ends the tunnels of what was revoked; returns how many sessions had tunnels here.
    pub(crate) fn end(&self, what: &Revoked) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|sid, e| {
            let hit = match what {
                Revoked::Sid(x) => sid == x,
                Revoked::Sub(x) => &e.sub == x,
                Revoked::All => true,
            };
            if hit {
                e.ended.cancel();
            }
            !hit
        });
        before - map.len()
    }

    /// The tickets of the sessions with open tunnels.
    pub(crate) fn tickets(&self) -> Vec<String> {
        self.lock()
            .values()
            .filter(|e| Arc::strong_count(&e.users) > 1)
            .filter_map(|e| e.ticket.clone())
            .collect()
    }

    /// Starts (once) the background refresh (AUTH.md A.6): every [`REFRESH_SWEEP`], `refresh`
    /// is called with each ticket of a session with open tunnels, so a Streamlit tab left open
    /// keeps its tokens fresh (and ends, tunnels closed, when the provider refuses the refresh),
    /// though it sends no HTTP request.
    pub(crate) fn refresh_in_background<F, Fut>(self: &Arc<Self>, refresh: F)
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        if self.refreshing.set(()).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(tickets) = me.upgrade().map(|me| me.tickets()) else {
                    return;
                };
                for t in tickets {
                    refresh(t).await;
                }
            }
        });
    }

    /// Starts (once) the task that ends tunnels on the store's broadcast revocations.
    pub(crate) fn listen(
        self: &Arc<Self>,
        mut revocations: impl FnMut() -> tokio::sync::broadcast::Receiver<Revoked> + Send + 'static,
    ) {
        if self.listening.set(()).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut rx = revocations();
            loop {
                match rx.recv().await {
                    Ok(what) => {
                        let Some(me) = me.upgrade() else { return };
                        let n = me.end(&what);
                        tracing::info!(revoked = ?what, sessions_with_tunnels = n, "session revoked: its WebSocket tunnels are closed");
                    }
                    // Missed revocations: end every tunnel rather than keep a revoked one.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let Some(me) = me.upgrade() else { return };
                        tracing::warn!(
                            missed = n,
                            "missed session revocations; closing every session's WebSocket tunnels"
                        );
                        me.end(&Revoked::All);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        if me.upgrade().is_none() {
                            return;
                        }
                        rx = revocations();
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_a_session_cancels_its_tunnels_only() {
        let reg = SessionTunnels::default();
        let a1 = reg.guard("s1", "alice", None);
        let a2 = reg.guard("s1", "alice", None);
        let b = reg.guard("s2", "bob", None);
        assert_eq!(reg.end(&Revoked::Sid("s1".into())), 1);
        assert!(a1.ended.is_cancelled() && a2.ended.is_cancelled());
        assert!(!b.ended.is_cancelled());
        assert_eq!(reg.end(&Revoked::Sub("bob".into())), 1);
        assert!(b.ended.is_cancelled());
    }

    #[test]
    fn entries_go_with_their_last_tunnel() {
        let reg = SessionTunnels::default();
        let g = reg.guard("s1", "alice", None);
        drop(g);
        let _h = reg.guard("s2", "bob", None);
        assert_eq!(reg.lock().len(), 1, "s1 had no tunnel left");
    }
}
