//! OIDC sessions (`auth_mode = oidc`): what a session holds, and the server-side stores.
//!
//! Three stores (`auth_session_store`, docs/auth.md):
//! - `cookie` (default): no server state. The whole [`Session`] without tokens is sealed into
//!   the session cookie (`crate::seal`); logout clears the cookie, and a copy of it stays valid
//!   until its `expires_at` (say so to operators: server-side revocation needs `memory` or
//!   `redis`).
//! - `memory` ([`MemoryStore`]): one process. The cookie carries an opaque *ticket*
//!   `sid.secret`; the store keeps the session under `sid` and checks `secret` in constant time.
//! - `redis` ([`RedisStore`]): the same ticket; the record is encrypted with a key derived
//!   from `secret`, so a Redis dump holds no usable tokens (oauth2-proxy's design), and
//!   revocations are broadcast to every replica.
//!
//! Every store has the same calls ([`Store`]): [`Store::create`], [`Store::load`],
//! [`Store::load_in_use`], [`Store::update`], [`Store::delete`], [`Store::revoke`],
//! [`Store::revocations`] and [`Store::refresh_lock`]. Times are seconds since the Unix epoch.
//!
//! Idle timeout (`auth_session_idle_timeout_s`, server-side stores only): a store made with
//! `with_idle_timeout(d)` ends a session that no request used for `d` (whichever comes first of
//! that and its absolute end). The idle clock is the store's, not the record's: the memory store
//! keeps a deadline next to the session, the redis store the key's expiry. Only
//! [`Store::load_in_use`] (a request that carries the session) moves it, and only once
//! [`touch_interval`] (a tenth of the timeout) has passed since the last move, so a busy
//! session costs one write per tenth of the timeout, not one per request; [`Store::load`] (the
//! background refresh, the logout) and [`Store::update`] (a token refresh) never do.

mod redis;

pub use self::redis::{LOCK_LEASE, OP_TIMEOUT, RedisLock, RedisStore};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Who the session belongs to: the verified ID token's claims that reach the apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SessionIdentity {
    /// `iss`.
    pub iss: String,
    /// `sub`.
    pub sub: String,
    /// `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `email_verified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `preferred_username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// The groups claim (`auth_groups_claim`), as strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `auth_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

/// The provider's tokens, kept by server-side stores only (never in a cookie, never sent to
/// Streamlit). `Debug` prints no token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTokens {
    /// The access token.
    pub access_token: String,
    /// The refresh token, when the provider issued one.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The raw ID token (the `id_token_hint` of an RP-initiated logout).
    pub id_token: String,
    /// When the access token expires (`expires_in` at the token response), if said.
    #[serde(default)]
    pub access_expires_at: Option<i64>,
    /// When the access token was issued (the token response's time here).
    #[serde(default)]
    pub access_issued_at: Option<i64>,
}

impl SessionTokens {
    /// Whether the access token should be refreshed at `now`: a refresh token exists and
    /// the access token ends within 60 s, or within half its lifetime for shorter-lived
    /// tokens (AUTH.md A.6: on the real expiry, ahead of it).
    pub fn refresh_due(&self, now: i64) -> bool {
        let (Some(_), Some(exp)) = (&self.refresh_token, self.access_expires_at) else {
            return false;
        };
        let lifetime = self.access_issued_at.map_or(120, |iat| exp - iat).max(0);
        let margin = (lifetime / 2).min(60);
        now >= exp - margin
    }
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionTokens([REDACTED])")
    }
}

/// One logged-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session id: 128 random bits, base64url. New at every login (no fixation).
    pub sid: String,
    /// Who.
    pub identity: SessionIdentity,
    /// When the login finished.
    pub created_at: i64,
    /// The absolute end (`created_at + auth_session_lifetime_s`).
    pub expires_at: i64,
    /// The provider's tokens (`None` in the cookie store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<SessionTokens>,
}

impl Session {
    /// Whether the session is past its absolute end at `now`.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }
}

/// How long after the last move of a session's idle deadline the next request moves it again:
/// a tenth of the idle timeout, at least 1 ms. A session may thus end up to this much earlier
/// than `idle` after its last request.
pub fn touch_interval(idle: Duration) -> Duration {
    (idle / 10).max(Duration::from_millis(1))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `d` in whole milliseconds, as the stores count.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `n` random bytes (the operating system's generator through `openidconnect`), base64url
/// without padding.
pub fn random_token(n: u32) -> String {
    openidconnect::CsrfToken::new_random_len(n)
        .secret()
        .to_owned()
}

/// A new session id (128 random bits).
pub fn new_sid() -> String {
    random_token(16)
}

/// A ticket's two parts, `sid.secret`, when it has that shape.
pub fn split_ticket(ticket: &str) -> Option<(&str, &str)> {
    let (sid, secret) = ticket.split_once('.')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(sid) && ok(secret)).then_some((sid, secret))
}

/// Equality of two byte strings in time that depends on their lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A store could not be reached or answered nonsense: protected requests get 503 (fail
/// closed), public paths keep working.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session store is unavailable: {0}")]
pub struct StoreError(pub String);

/// What was revoked, as broadcast to every gateway (to close the sessions' WebSocket tunnels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// One session.
    Sid(String),
    /// Every session of one user (`sub`).
    Sub(String),
    /// Every session.
    All,
}

/// Held while one gateway refreshes a session's tokens; dropped (or released) when done.
#[derive(Debug)]
pub enum RefreshLock {
    /// The in-process lock of the memory store.
    Memory(tokio::sync::OwnedMutexGuard<()>),
    /// The lock in Redis, shared by every gateway (leased, renewed while held).
    Redis(RedisLock),
}

/// The session store in use for `memory` and `redis` (the `cookie` store keeps nothing).
#[derive(Debug, Clone)]
pub enum Store {
    /// One process.
    Memory(Arc<MemoryStore>),
    /// Redis, shared by every replica.
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Keeps `session`; returns the ticket (`sid.secret`) for the cookie.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn create(&self, session: &Session) -> Result<String, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.create(session)),
            Store::Redis(r) => r.create(session).await,
        }
    }

    /// The session behind `ticket`: `None` when unknown, expired, revoked or the secret does
    /// not match.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn load(&self, ticket: &str) -> Result<Option<Session>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.load(ticket)),
            Store::Redis(r) => r.load(ticket).await,
        }
    }

    /// [`Store::load`] for a request that uses the session: with an idle timeout, the session's
    /// idle deadline moves to now + the timeout (never past its absolute end) when at least
    /// [`touch_interval`] passed since it last moved.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn load_in_use(&self, ticket: &str) -> Result<Option<Session>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.load_in_use(ticket)),
            Store::Redis(r) => r.load_in_use(ticket).await,
        }
    }

    /// Keeps `token` under the one-time `code` for `ttl` (`oidc_compat_exchange`: FluxLit for
    /// Python's exchange flow, reference §8.2). Any gateway sharing the store can redeem it,
    /// once, with [`Store::take_code`].
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn put_code(&self, code: &str, token: &str, ttl: Duration) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.put_code(code, token, ttl);
                Ok(())
            }
            Store::Redis(r) => r.put_code(code, token, ttl).await,
        }
    }

    /// The token kept under `code`, removed in the same step (single use): `None` when
    /// unknown, already redeemed or past its time.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn take_code(&self, code: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.take_code(code)),
            Store::Redis(r) => r.take_code(code).await,
        }
    }

    /// The idle timeout (`auth_session_idle_timeout_s`), if on.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match self {
            Store::Memory(m) => m.idle,
            Store::Redis(r) => r.idle_timeout(),
        }
    }

    /// Replaces the session behind `ticket` (after a refresh).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn update(&self, ticket: &str, session: &Session) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.update(ticket, session);
                Ok(())
            }
            Store::Redis(r) => r.update(ticket, session).await,
        }
    }

    /// Ends the session behind `ticket` (logout) and broadcasts [`Revoked::Sid`].
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn delete(&self, ticket: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.delete(ticket);
                Ok(())
            }
            Store::Redis(r) => r.delete(ticket).await,
        }
    }

    /// Ends every session `what` names and broadcasts it; returns how many ended.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn revoke(&self, what: &Revoked) -> Result<usize, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.revoke(what)),
            Store::Redis(r) => r.revoke(what).await,
        }
    }

    /// Revocations from now on (from every gateway sharing the store).
    pub fn revocations(&self) -> broadcast::Receiver<Revoked> {
        match self {
            Store::Memory(m) => m.revoked.subscribe(),
            Store::Redis(r) => r.revocations(),
        }
    }

    /// The right to refresh session `sid`, waiting up to `wait` for another holder;
    /// `None` when it is still held after `wait` (re-read the session then).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be reached.
    pub async fn refresh_lock(
        &self,
        sid: &str,
        wait: Duration,
    ) -> Result<Option<RefreshLock>, StoreError> {
        match self {
            Store::Memory(m) => {
                let lock = m.lock_for(sid);
                Ok(tokio::time::timeout(wait, lock.lock_owned())
                    .await
                    .ok()
                    .map(RefreshLock::Memory))
            }
            Store::Redis(r) => Ok(r.refresh_lock(sid, wait).await?.map(RefreshLock::Redis)),
        }
    }
}

/// One session of the memory store.
#[derive(Debug)]
struct MemoryEntry {
    secret: String,
    session: Session,
    /// With an idle timeout: the end by inactivity, milliseconds since the Unix epoch.
    idle_until: Option<i64>,
}

impl MemoryEntry {
    fn ended(&self, now_ms: i64) -> bool {
        self.session.expired(now_ms / 1000) || self.idle_until.is_some_and(|t| now_ms >= t)
    }
}

/// The `memory` store: sessions of this process, lost on restart.
#[derive(Debug)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<String, MemoryEntry>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    revoked: broadcast::Sender<Revoked>,
    idle: Option<Duration>,
    /// One-time codes (`oidc_compat_exchange`): the token and its end, ms since the epoch.
    codes: Mutex<HashMap<String, (String, i64)>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            locks: Mutex::default(),
            revoked: broadcast::channel(256).0,
            idle: None,
            codes: Mutex::default(),
        }
    }
}

impl MemoryStore {
    /// The same store ending sessions no request used for `idle`
    /// (`auth_session_idle_timeout_s`; default: no idle timeout).
    #[must_use]
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = (!idle.is_zero()).then_some(idle);
        self
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, MemoryEntry>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn create(&self, session: &Session) -> String {
        let secret = random_token(32);
        let now = now_ms();
        let mut map = self.map();
        // Ended sessions go when new ones come: the map never outgrows the live sessions.
        map.retain(|_, e| !e.ended(now));
        map.insert(
            session.sid.clone(),
            MemoryEntry {
                secret: secret.clone(),
                session: session.clone(),
                idle_until: self.idle.map(|d| now.saturating_add(millis(d))),
            },
        );
        format!("{}.{secret}", session.sid)
    }

    fn load(&self, ticket: &str) -> Option<Session> {
        let (sid, secret) = split_ticket(ticket)?;
        let map = self.map();
        let e = map.get(sid)?;
        (constant_time_eq(e.secret.as_bytes(), secret.as_bytes()) && !e.ended(now_ms()))
            .then(|| e.session.clone())
    }

    fn load_in_use(&self, ticket: &str) -> Option<Session> {
        let (sid, secret) = split_ticket(ticket)?;
        let now = now_ms();
        let mut map = self.map();
        let e = map.get_mut(sid)?;
        if !constant_time_eq(e.secret.as_bytes(), secret.as_bytes()) || e.ended(now) {
            return None;
        }
        if let (Some(idle), Some(until)) = (self.idle, e.idle_until) {
            let want = now.saturating_add(millis(idle));
            if want - until >= millis(touch_interval(idle)) {
                e.idle_until = Some(want);
            }
        }
        Some(e.session.clone())
    }

    fn update(&self, ticket: &str, session: &Session) {
        if let Some((sid, secret)) = split_ticket(ticket)
            && let Some(e) = self.map().get_mut(sid)
            && constant_time_eq(e.secret.as_bytes(), secret.as_bytes())
        {
            e.session = session.clone();
        }
    }

    fn delete(&self, ticket: &str) {
        if let Some((sid, secret)) = split_ticket(ticket) {
            let removed = {
                let mut map = self.map();
                match map.get(sid) {
                    Some(e) if constant_time_eq(e.secret.as_bytes(), secret.as_bytes()) => {
                        map.remove(sid).is_some()
                    }
                    _ => false,
                }
            };
            if removed {
                let _ = self.revoked.send(Revoked::Sid(sid.to_owned()));
            }
        }
    }

    fn revoke(&self, what: &Revoked) -> usize {
        let n = {
            let mut map = self.map();
            let before = map.len();
            map.retain(|sid, e| match what {
                Revoked::Sid(x) => sid != x,
                Revoked::Sub(x) => &e.session.identity.sub != x,
                Revoked::All => false,
            });
            before - map.len()
        };
        let _ = self.revoked.send(what.clone());
        n
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, i64)>> {
        let now = now_ms();
        let mut codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Codes past their time go at every call: the map holds the live codes only.
        codes.retain(|_, (_, until)| *until > now);
        codes
    }

    fn put_code(&self, code: &str, token: &str, ttl: Duration) {
        let until = now_ms().saturating_add(millis(ttl));
        self.codes()
            .insert(code.to_owned(), (token.to_owned(), until));
    }

    fn take_code(&self, code: &str) -> Option<String> {
        self.codes().remove(code).map(|(token, _)| token)
    }

    fn lock_for(&self, sid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Locks nobody holds or waits for go, so the map stays as small as the refreshes.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(sid.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sid: &str, sub: &str, expires_at: i64) -> Session {
        Session {
            sid: sid.to_owned(),
            identity: SessionIdentity {
                iss: "https://idp.example".into(),
                sub: sub.into(),
                ..SessionIdentity::default()
            },
            created_at: now(),
            expires_at,
            tokens: None,
        }
    }

    #[tokio::test]
    async fn memory_store_checks_the_secret_and_the_end() {
        let store = Store::Memory(Arc::default());
        let s = session(&new_sid(), "alice", now() + 60);
        let ticket = store.create(&s).await.unwrap();
        assert_eq!(store.load(&ticket).await.unwrap(), Some(s.clone()));
        let (sid, _) = split_ticket(&ticket).unwrap();
        let forged = format!("{sid}.{}", random_token(32));
        assert_eq!(store.load(&forged).await.unwrap(), None);
        assert_eq!(store.load("garbage").await.unwrap(), None);
        // A forged ticket cannot delete the session.
        store.delete(&forged).await.unwrap();
        assert!(store.load(&ticket).await.unwrap().is_some());

        let old = session(&new_sid(), "bob", now() - 1);
        let t = store.create(&old).await.unwrap();
        assert_eq!(store.load(&t).await.unwrap(), None, "expired");
    }

    /// `auth_session_idle_timeout_s` with the memory store: use keeps a session (the deadline
    /// moves at most every tenth of the timeout), no use for the timeout ends it, and plain
    /// loads (the background refresh) are no use.
    #[tokio::test]
    async fn memory_store_ends_sessions_nobody_uses() {
        let idle = Duration::from_millis(1500);
        let store = Store::Memory(Arc::new(MemoryStore::default().with_idle_timeout(idle)));
        assert_eq!(store.idle_timeout(), Some(idle));
        let used = store
            .create(&session(&new_sid(), "alice", now() + 60))
            .await
            .unwrap();
        let unused = store
            .create(&session(&new_sid(), "bob", now() + 60))
            .await
            .unwrap();
        let start = std::time::Instant::now();
        // Used every 250 ms for twice the timeout: still there.
        while start.elapsed() < idle * 2 {
            assert!(
                store.load_in_use(&used).await.unwrap().is_some(),
                "{:?}",
                start.elapsed()
            );
            tokio::time::sleep(idle / 6).await;
        }
        // Only loaded, never used: ended after the timeout.
        assert!(store.load(&unused).await.unwrap().is_none());
        assert!(store.load_in_use(&unused).await.unwrap().is_none());
        // The deadline moved at most a tenth of the timeout ago, so the used session ends
        // within the timeout from its last use.
        let last_use = std::time::Instant::now();
        assert!(store.load_in_use(&used).await.unwrap().is_some());
        let deadline = last_use + idle + Duration::from_secs(2);
        while store.load(&used).await.unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            last_use.elapsed() >= idle - touch_interval(idle),
            "{:?}",
            last_use.elapsed()
        );
        // The absolute end still counts with an idle timeout.
        let old = store
            .create(&session(&new_sid(), "carol", now() - 1))
            .await
            .unwrap();
        assert!(store.load_in_use(&old).await.unwrap().is_none());
        // Without an idle timeout nothing of this applies.
        let plain = Store::Memory(Arc::default());
        assert_eq!(plain.idle_timeout(), None);
    }

    #[tokio::test]
    async fn one_time_codes_are_single_use_and_expire() {
        let store = Store::Memory(Arc::default());
        store
            .put_code("code-1", "token-1", Duration::from_secs(120))
            .await
            .unwrap();
        store
            .put_code("code-2", "token-2", Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(
            store.take_code("code-1").await.unwrap().as_deref(),
            Some("token-1")
        );
        assert_eq!(store.take_code("code-1").await.unwrap(), None, "replayed");
        assert_eq!(store.take_code("nope").await.unwrap(), None);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.take_code("code-2").await.unwrap(), None, "expired");
    }

    #[tokio::test]
    async fn revocation_ends_sessions_and_is_broadcast() {
        let store = Store::Memory(Arc::default());
        let mut rx = store.revocations();
        let a1 = store
            .create(&session(&new_sid(), "alice", now() + 60))
            .await
            .unwrap();
        let a2 = store
            .create(&session(&new_sid(), "alice", now() + 60))
            .await
            .unwrap();
        let b = store
            .create(&session(&new_sid(), "bob", now() + 60))
            .await
            .unwrap();
        let n = store.revoke(&Revoked::Sub("alice".into())).await.unwrap();
        assert_eq!(n, 2);
        assert_eq!(rx.recv().await.unwrap(), Revoked::Sub("alice".into()));
        assert!(store.load(&a1).await.unwrap().is_none());
        assert!(store.load(&a2).await.unwrap().is_none());
        assert!(store.load(&b).await.unwrap().is_some());
        store.delete(&b).await.unwrap();
        let (sid, _) = split_ticket(&b).unwrap();
        assert_eq!(rx.recv().await.unwrap(), Revoked::Sid(sid.to_owned()));
    }

    #[tokio::test]
    async fn one_refresh_at_a_time_per_session() {
        let store = Store::Memory(Arc::default());
        let held = store
            .refresh_lock("s1", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(held.is_some());
        let waited = store
            .refresh_lock("s1", Duration::from_millis(50))
            .await
            .unwrap();
        assert!(waited.is_none(), "still held");
        assert!(
            store
                .refresh_lock("s2", Duration::from_millis(50))
                .await
                .unwrap()
                .is_some()
        );
        drop(held);
        assert!(
            store
                .refresh_lock("s1", Duration::from_millis(50))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn refresh_is_due_ahead_of_the_real_expiry() {
        let t = |refresh: bool, iat: Option<i64>, exp: Option<i64>| SessionTokens {
            access_token: "a".into(),
            refresh_token: refresh.then(|| "r".to_owned()),
            id_token: "i".into(),
            access_expires_at: exp,
            access_issued_at: iat,
        };
        // An hour-long token: refreshed from 60 s before its end.
        let hour = t(true, Some(0), Some(3600));
        assert!(!hour.refresh_due(3539));
        assert!(hour.refresh_due(3540));
        // A 30 s token: from half its life.
        let short = t(true, Some(0), Some(30));
        assert!(!short.refresh_due(14));
        assert!(short.refresh_due(15));
        // Nothing to refresh with, or no expiry said: never.
        assert!(!t(false, Some(0), Some(30)).refresh_due(100));
        assert!(!t(true, Some(0), None).refresh_due(100));
    }

    #[test]
    fn tickets_have_one_shape() {
        assert!(split_ticket("abc.def").is_some());
        for bad in ["abc", ".def", "abc.", "a.b.c", "a b.c", "a.b\n"] {
            assert!(split_ticket(bad).is_none(), "{bad:?}");
        }
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
