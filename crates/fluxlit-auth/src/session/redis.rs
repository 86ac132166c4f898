//! The `redis` session store (`../shared/design/AUTH.md` A.3, A.6): sessions shared by every
//! gateway replica that points at one Redis.
//!
//! Keys, under a configured prefix (e.g. `fluxlit:`):
//! - `{prefix}s:{sid}`: the session record, `v1.` then the JSON of [`Session`] sealed with
//!   AES-256-GCM ([`crate::seal::CookieKeys`]) under a key derived (HKDF-SHA256) from the
//!   ticket's secret, with the sid as associated data. The secret is only in the user's cookie,
//!   so a Redis dump holds no usable token and no identity, and a wrong secret opens nothing.
//!   The key expires with the session (`SET … PX`, the time to `expires_at`); an
//!   already-expired session is never written. With an idle timeout
//!   ([`RedisStore::with_idle_timeout`]) the key's expiry is also the idle clock: at most the
//!   timeout from the last use ([`RedisStore::load_in_use`] moves it with `PEXPIRE` once a tenth
//!   of the timeout has passed, reading `PTTL` in the same round trip as the record), never past
//!   `expires_at`; a token refresh ([`RedisStore::update`]) keeps the remaining time.
//! - `{prefix}u:{sha256(sub) hex}`: the set of a user's sids, for [`Revoked::Sub`]
//!   (back-channel logout). The `sub` is hashed so the key name is no identity either.
//! - `{prefix}c:{sha256(code) hex}`: a one-time code of `oidc_compat_exchange` (reference
//!   §8.2): `v1.` then the first-party token sealed under a key derived from the code (so the
//!   key name and a dump reveal neither code nor token), `SET … PX` its time to live, redeemed
//!   with `GETDEL` (Redis 6.2 or later), which makes it single-use across replicas.
//! - `{prefix}l:{sid}`: the refresh lock (`SET NX PX` with a random token, renewed while held,
//!   deleted on release only by its holder).
//! - channel `{prefix}revoked`: every revocation is `PUBLISH`ed as `sid:<sid>`, `sub:<sub>` or
//!   `all`; one subscriber task per store feeds [`RedisStore::revocations`], so every gateway
//!   sees every revocation, its own included.
//!
//! Redis unavailable: every call fails with [`StoreError`] within [`OP_TIMEOUT`] (fail closed),
//! and works again once Redis answers (the connection manager reconnects; the subscriber
//! re-subscribes with a bounded backoff). A standalone Redis: the scripts touch keys they
//! compute, which Redis Cluster does not allow.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd, RedisError, RedisResult, Script, Value};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

use super::{
    Revoked, Session, StoreError, millis, now, now_ms, random_token, split_ticket, touch_interval,
};
use crate::seal::CookieKeys;

/// The bound on every store call, connecting included: past it the call fails with
/// [`StoreError`] (the gateway answers 503) instead of hanging.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The default lease of a refresh lock: it is renewed every third of it while held, so a
/// gateway that dies holding it blocks the others for at most this long.
pub const LOCK_LEASE: Duration = Duration::from_secs(10);

/// Keys deleted per `SCAN` round by [`Revoked::All`].
const SCAN_BATCH: usize = 500;

/// The subscriber's wait before re-subscribing grows from this…
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
/// …to at most this.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// How often the subscriber pings Redis, to notice a connection that died silently.
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// The record's version tag (the sealed JSON follows it).
const RECORD_V1: &str = "v1.";

/// `SET` the record with its expiry, add the sid to the user's set and keep the set at least
/// as long as the record. KEYS: record, user set. ARGV: value, ttl (ms), sid, `XX` (update:
/// only an existing record, whose remaining time is kept when shorter: the idle clock) or `-`
/// (create).
const WRITE_LUA: &str = r"
local ok
local ttl = tonumber(ARGV[2])
if ARGV[4] == 'XX' then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 and left < ttl then ttl = left end
  ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl, 'XX')
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
end
if not ok then return 0 end
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
";

/// Move an existing record's expiry (the idle clock) to `ttl` ms from now when that is at least
/// `step` ms later than it is, and keep the user's set at least as long. KEYS: record, user set.
/// ARGV: ttl (ms), step (ms). Returns 1 when moved.
const TOUCH_LUA: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < 0 then return 0 end
local ttl = tonumber(ARGV[1])
if ttl - left < tonumber(ARGV[2]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ttl)
if redis.call('PTTL', KEYS[2]) < ttl then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
";

/// Delete the record; when it was there, drop the sid from the user's set and publish the
/// revocation. KEYS: record, user set. ARGV: sid, channel, message.
const DELETE_LUA: &str = r"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// Delete every record of a user's set and the set, publish; returns how many records went.
/// KEYS: user set. ARGV: record key prefix, channel, message.
const REVOKE_SUB_LUA: &str = r"
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. sid)
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
";

/// Extend the lock's lease when it is still ours. KEYS: lock. ARGV: token, lease (ms).
const EXTEND_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Delete the lock when it is still ours. KEYS: lock. ARGV: token.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The `redis` store: see the module documentation for keys, encryption, expiry, lock and
/// broadcast. Dropping it stops its subscriber task.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    lease: Duration,
    revoked: broadcast::Sender<Revoked>,
    listening: Arc<AtomicBool>,
    subscriber: tokio::task::JoinHandle<()>,
    idle: Option<Duration>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: not printed.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("listening", &self.listening())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn redis_error(what: &str, e: &RedisError) -> StoreError {
    let text = e.to_string();
    let hint = if text.contains("certificate") {
        " (rediss://: the server's certificate must chain to a CA in the system's trust store; for a private CA set SSL_CERT_FILE to its PEM file)"
    } else {
        ""
    };
    StoreError(format!("redis {what}: {text}{hint}"))
}

/// Whether the connection manager replaces the connection after `e` (worth one more try).
fn reconnects_after(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[:password@]host[:port][/db]`, `unix:///path`,
    /// or with the `tls` feature `rediss://…`: TLS with rustls, the server's certificate
    /// checked against the system's trust store (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured,
    /// `rustls-native-certs`), never unverified), its keys starting with `key_prefix` (e.g.
    /// `fluxlit:`). Does not wait for Redis: when it
    /// is down, calls fail with [`StoreError`] until it answers. Must be called inside a Tokio
    /// runtime (it starts the revocation subscriber there).
    ///
    /// # Errors
    /// [`StoreError`] when `url` is not a Redis URL, is `rediss://` in a build without the
    /// `tls` feature, or no Tokio runtime is running.
    pub fn connect(url: &str, key_prefix: &str) -> Result<RedisStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError("the redis session store must be started inside a Tokio runtime".into())
        })?;
        if cfg!(not(feature = "tls"))
            && url
                .get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
        {
            return Err(StoreError(
                "a rediss:// (TLS) URL needs FluxLit built with its `tls` feature (the default; this build has it off); use a build with it, or redis:// on a private network".into(),
            ));
        }
        // The error never repeats the URL: it may hold a password.
        let client = Client::open(url).map_err(|e| {
            StoreError(format!(
                "the redis URL is not valid ({e}); expected redis://[:password@]host[:port][/db] or unix:///path"
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT / 2))
            .set_response_timeout(Some(OP_TIMEOUT / 2))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| redis_error("connection manager", &e))?;
        let revoked = broadcast::channel(256).0;
        let listening = Arc::new(AtomicBool::new(false));
        let channel = format!("{key_prefix}revoked");
        let subscriber = runtime.spawn(subscribe(
            client,
            channel,
            revoked.clone(),
            Arc::clone(&listening),
        ));
        Ok(RedisStore {
            conn,
            prefix: key_prefix.to_owned(),
            lease: LOCK_LEASE,
            revoked,
            listening,
            subscriber,
            idle: None,
        })
    }

    /// The same store ending sessions no request used for `idle`
    /// (`auth_session_idle_timeout_s`; default: no idle timeout): the record's key expires
    /// then (see the module documentation).
    #[must_use]
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = (!idle.is_zero()).then_some(idle);
        self
    }

    /// The idle timeout, if on.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle
    }

    /// The same store with refresh locks leased for `lease` (default [`LOCK_LEASE`]; at least
    /// 30 ms).
    #[must_use]
    pub fn with_lock_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// Whether the revocation subscriber is subscribed right now (false while Redis is
    /// unreachable: revocations published then are not seen by this gateway).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn user_key(&self, sub: &str) -> String {
        let digest = Sha256::digest(sub.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.key("u", &hex)
    }

    fn channel(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// Runs `call` on the connection, once more when the connection was lost (the manager
    /// reconnects), all within [`OP_TIMEOUT`].
    async fn bounded<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match call(self.conn.clone()).await {
                Err(e) if reconnects_after(&e) => call(self.conn.clone()).await,
                other => other,
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, attempts).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(redis_error(what, &e)),
            Err(_) => Err(StoreError(format!(
                "redis {what}: no answer within {OP_TIMEOUT:?}"
            ))),
        }
    }

    async fn query<T: ::redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        self.bounded(what, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// The record behind `ticket`, opened, with the ticket's sid.
    async fn open(&self, ticket: &str) -> Result<Option<(String, Session)>, StoreError> {
        Ok(self
            .open_with_ttl(ticket)
            .await?
            .map(|(sid, s, _)| (sid, s)))
    }

    /// [`RedisStore::open`], with the key's remaining time in ms (`PTTL`, read in the same
    /// round trip).
    async fn open_with_ttl(
        &self,
        ticket: &str,
    ) -> Result<Option<(String, Session, i64)>, StoreError> {
        let Some((sid, secret)) = split_ticket(ticket) else {
            return Ok(None);
        };
        // A secret too short for a key was never issued by this store.
        let Ok(keys) = CookieKeys::new(&[secret]) else {
            return Ok(None);
        };
        let key = self.key("s", sid);
        let mut pipe = ::redis::pipe();
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (raw, left): (Option<String>, i64) = self
            .bounded("GET session", |mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        let session = raw
            .as_deref()
            .and_then(|r| r.strip_prefix(RECORD_V1))
            .and_then(|sealed| keys.open(sid, sealed))
            .and_then(|json| serde_json::from_str::<Session>(&json).ok());
        Ok(session.map(|s| (sid.to_owned(), s, left)))
    }

    /// The key's time to live for `session` from now, ms: to its absolute end, and with an
    /// idle timeout at most that.
    fn ttl_ms(&self, session: &Session) -> i64 {
        let absolute = session
            .expires_at
            .saturating_mul(1000)
            .saturating_sub(now_ms());
        match self.idle {
            Some(idle) => absolute.min(millis(idle)),
            None => absolute,
        }
    }

    /// Writes `session` under `sid`, sealed with `secret`; `only_existing` for an update.
    /// An expired session is not written (and an update of one deletes the record).
    async fn write(
        &self,
        sid: &str,
        secret: &str,
        session: &Session,
        only_existing: bool,
    ) -> Result<(), StoreError> {
        let ttl = self.ttl_ms(session);
        if ttl <= 0 {
            if only_existing {
                self.query::<i64>("DEL", ::redis::cmd("DEL").arg(self.key("s", sid)))
                    .await?;
            }
            return Ok(());
        }
        let keys = CookieKeys::new(&[secret])
            .map_err(|e| StoreError(format!("session secret for redis: {e}")))?;
        let json = serde_json::to_string(session)
            .map_err(|e| StoreError(format!("session {sid} as JSON: {e}")))?;
        let record = format!("{RECORD_V1}{}", keys.seal(sid, &json));
        let script = Script::new(WRITE_LUA);
        let (record_key, user_key) = (self.key("s", sid), self.user_key(&session.identity.sub));
        let mode = if only_existing { "XX" } else { "-" };
        self.bounded("SET session", |mut c| {
            let mut call = script.prepare_invoke();
            call.key(&record_key)
                .key(&user_key)
                .arg(&record)
                .arg(ttl)
                .arg(sid)
                .arg(mode);
            async move { call.invoke_async::<i64>(&mut c).await }
        })
        .await?;
        Ok(())
    }

    /// Keeps `session` under its sid with a new random secret (256 bits); returns the ticket
    /// `sid.secret`. A session already past `expires_at` is not written (its ticket loads
    /// nothing).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer, or the sid is not a ticket part
    /// (1 to 64 of `A-Z a-z 0-9 - _`).
    pub async fn create(&self, session: &Session) -> Result<String, StoreError> {
        let secret = random_token(32);
        let ticket = format!("{}.{secret}", session.sid);
        if split_ticket(&ticket).is_none() {
            return Err(StoreError(format!(
                "session id {:?} cannot be part of a ticket: expected 1 to 64 of A-Z a-z 0-9 - _",
                session.sid
            )));
        }
        self.write(&session.sid, &secret, session, false).await?;
        Ok(ticket)
    }

    /// The session behind `ticket`: `None` when unknown, expired, or the secret does not open
    /// it.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn load(&self, ticket: &str) -> Result<Option<Session>, StoreError> {
        Ok(self
            .open(ticket)
            .await?
            .map(|(_, s)| s)
            .filter(|s| !s.expired(now())))
    }

    /// [`RedisStore::load`] for a request that uses the session: with an idle timeout, the
    /// key's expiry moves to the timeout from now (never past the session's end) when that is
    /// at least a tenth of the timeout later than it is. One round trip (`GET` and `PTTL`),
    /// and a second one only when the expiry moves.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn load_in_use(&self, ticket: &str) -> Result<Option<Session>, StoreError> {
        let Some((sid, session, left)) = self.open_with_ttl(ticket).await? else {
            return Ok(None);
        };
        if session.expired(now()) {
            return Ok(None);
        }
        if let Some(idle) = self.idle {
            let want = self.ttl_ms(&session);
            let step = millis(touch_interval(idle));
            if left >= 0 && want - left >= step {
                let script = Script::new(TOUCH_LUA);
                let (record_key, user_key) =
                    (self.key("s", &sid), self.user_key(&session.identity.sub));
                self.bounded("PEXPIRE session", |mut c| {
                    let mut call = script.prepare_invoke();
                    call.key(&record_key).key(&user_key).arg(want).arg(step);
                    async move { call.invoke_async::<i64>(&mut c).await }
                })
                .await?;
            }
        }
        Ok(Some(session))
    }

    /// Keeps `token` under the one-time `code` for `ttl` (see the module documentation).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer, or `code` is too short to derive a key from
    /// (fewer than 32 bytes).
    pub async fn put_code(&self, code: &str, token: &str, ttl: Duration) -> Result<(), StoreError> {
        let keys = CookieKeys::new(&[code])
            .map_err(|e| StoreError(format!("one-time code for redis: {e}")))?;
        let value = format!("{RECORD_V1}{}", keys.seal("auth_code", token));
        let ttl_ms = millis(ttl).max(1);
        self.query::<()>(
            "SET code",
            ::redis::cmd("SET")
                .arg(self.code_key(code))
                .arg(value)
                .arg("PX")
                .arg(ttl_ms),
        )
        .await
    }

    /// The token kept under `code`, deleted in the same command (`GETDEL`): `None` when
    /// unknown, redeemed or expired (and for codes too short to have been issued).
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn take_code(&self, code: &str) -> Result<Option<String>, StoreError> {
        let Ok(keys) = CookieKeys::new(&[code]) else {
            return Ok(None);
        };
        let raw: Option<String> = self
            .query(
                "GETDEL code",
                ::redis::cmd("GETDEL").arg(self.code_key(code)),
            )
            .await?;
        Ok(raw
            .as_deref()
            .and_then(|r| r.strip_prefix(RECORD_V1))
            .and_then(|sealed| keys.open("auth_code", sealed)))
    }

    fn code_key(&self, code: &str) -> String {
        let digest = Sha256::digest(code.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.key("c", &hex)
    }

    /// Replaces the session behind `ticket` when the ticket opens it (a wrong secret changes
    /// nothing, a deleted session stays deleted); the expiry follows `session.expires_at`, but a
    /// shorter remaining time (the idle clock) is kept: a refresh is no use of the session.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn update(&self, ticket: &str, session: &Session) -> Result<(), StoreError> {
        let Some((sid, _)) = self.open(ticket).await? else {
            return Ok(());
        };
        let Some((_, secret)) = split_ticket(ticket) else {
            return Ok(());
        };
        self.write(&sid, secret, session, true).await
    }

    /// Deletes the session behind `ticket` when the ticket opens it, and publishes
    /// [`Revoked::Sid`].
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn delete(&self, ticket: &str) -> Result<(), StoreError> {
        let Some((sid, session)) = self.open(ticket).await? else {
            return Ok(());
        };
        let script = Script::new(DELETE_LUA);
        let (record_key, user_key) = (self.key("s", &sid), self.user_key(&session.identity.sub));
        let (channel, message) = (self.channel(), encode(&Revoked::Sid(sid.clone())));
        self.bounded("DEL session", |mut c| {
            let mut call = script.prepare_invoke();
            call.key(&record_key)
                .key(&user_key)
                .arg(&sid)
                .arg(&channel)
                .arg(&message);
            async move { call.invoke_async::<i64>(&mut c).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes every session `what` names (all: `SCAN` rounds of [`SCAN_BATCH`] keys) and
    /// publishes `what`; returns how many records were deleted.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer (a revocation of all may then be partial).
    pub async fn revoke(&self, what: &Revoked) -> Result<usize, StoreError> {
        let (channel, message) = (self.channel(), encode(what));
        let n: i64 = match what {
            Revoked::Sid(sid) => {
                let mut pipe = ::redis::pipe();
                pipe.atomic()
                    .cmd("DEL")
                    .arg(self.key("s", sid))
                    .cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&message)
                    .ignore();
                let (n,): (i64,) = self
                    .bounded("DEL session", |mut c| {
                        let pipe = &pipe;
                        async move { pipe.query_async(&mut c).await }
                    })
                    .await?;
                n
            }
            Revoked::Sub(sub) => {
                let script = Script::new(REVOKE_SUB_LUA);
                let (user_key, record_prefix) = (self.user_key(sub), self.key("s", ""));
                self.bounded("revoke user", |mut c| {
                    let mut call = script.prepare_invoke();
                    call.key(&user_key)
                        .arg(&record_prefix)
                        .arg(&channel)
                        .arg(&message);
                    async move { call.invoke_async::<i64>(&mut c).await }
                })
                .await?
            }
            Revoked::All => {
                let n = self.delete_matching("s").await?;
                self.delete_matching("u").await?;
                self.query::<i64>(
                    "PUBLISH",
                    ::redis::cmd("PUBLISH").arg(&channel).arg(&message),
                )
                .await?;
                n
            }
        };
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Deletes every `{prefix}{kind}:*` key in `SCAN` rounds; returns how many went.
    async fn delete_matching(&self, kind: &str) -> Result<i64, StoreError> {
        let pattern = format!("{}{kind}:*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .query(
                    "SCAN",
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH),
                )
                .await?;
            if !keys.is_empty() {
                n += self
                    .query::<i64>("DEL", ::redis::cmd("DEL").arg(&keys))
                    .await?;
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }

    /// Revocations published by every gateway on this Redis (this one's included) from now
    /// on, while [`RedisStore::listening`].
    pub fn revocations(&self) -> broadcast::Receiver<Revoked> {
        self.revoked.subscribe()
    }

    /// The refresh lock of session `sid` across every gateway: `SET NX PX` with a random
    /// token, polled with a backoff from 10 ms to 250 ms for up to `wait`; `None` when still
    /// held then. The lease is renewed every third of it while the [`RedisLock`] lives, and
    /// released (by its holder only) on drop.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn refresh_lock(
        &self,
        sid: &str,
        wait: Duration,
    ) -> Result<Option<RedisLock>, StoreError> {
        let key = self.key("l", sid);
        let token = random_token(16);
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let got: Option<String> = self
                .query(
                    "SET lock",
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(lease_ms),
                )
                .await?;
            if got.is_some() {
                return Ok(Some(RedisLock::start(
                    self.conn.clone(),
                    key,
                    token,
                    self.lease,
                )));
            }
            let left = wait.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

/// A held refresh lock of the `redis` store. A task renews its lease while it lives; dropping
/// it releases the lock (compare-and-delete, in the background).
pub struct RedisLock {
    conn: ConnectionManager,
    key: String,
    token: String,
    held: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("key", &self.key)
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

impl RedisLock {
    fn start(conn: ConnectionManager, key: String, token: String, lease: Duration) -> Self {
        let held = Arc::new(AtomicBool::new(true));
        let renewal = tokio::spawn(renew(
            conn.clone(),
            key.clone(),
            token.clone(),
            lease,
            Arc::clone(&held),
        ));
        Self {
            conn,
            key,
            token,
            held,
            renewal,
        }
    }

    /// Whether the lock is still ours: false once a renewal found another holder, or could not
    /// reach Redis for a whole lease.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        self.renewal.abort();
        // Outside a runtime the lease simply runs out.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (mut conn, key, token) = (
                self.conn.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            runtime.spawn(async move {
                let release = Script::new(RELEASE_LUA);
                let mut call = release.prepare_invoke();
                call.key(&key).arg(&token);
                let done =
                    tokio::time::timeout(OP_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await;
                if !matches!(done, Ok(Ok(_))) {
                    tracing::warn!(key, "refresh lock not released (its lease will run out)");
                }
            });
        }
    }
}

/// Extends the lease every third of it while the lock is ours.
async fn renew(
    mut conn: ConnectionManager,
    key: String,
    token: String,
    lease: Duration,
    held: Arc<AtomicBool>,
) {
    let extend = Script::new(EXTEND_LUA);
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut call = extend.prepare_invoke();
        call.key(&key).arg(&token).arg(lease_ms);
        match tokio::time::timeout(OP_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(1)) => last_ok = Instant::now(),
            Ok(Ok(_)) => {
                tracing::warn!(key, "refresh lock lost: another gateway holds it now");
                held.store(false, Ordering::Release);
                return;
            }
            _ if last_ok.elapsed() >= lease => {
                tracing::warn!(
                    key,
                    "refresh lock lost: redis unreachable for a whole lease"
                );
                held.store(false, Ordering::Release);
                return;
            }
            _ => {}
        }
    }
}

/// A revocation as published: `sid:<sid>`, `sub:<sub>` or `all`.
fn encode(what: &Revoked) -> String {
    match what {
        Revoked::Sid(sid) => format!("sid:{sid}"),
        Revoked::Sub(sub) => format!("sub:{sub}"),
        Revoked::All => "all".to_owned(),
    }
}

fn decode(message: &[u8]) -> Option<Revoked> {
    let text = std::str::from_utf8(message).ok()?;
    if text == "all" {
        return Some(Revoked::All);
    }
    let (kind, id) = text.split_once(':')?;
    match kind {
        "sid" => Some(Revoked::Sid(id.to_owned())),
        "sub" => Some(Revoked::Sub(id.to_owned())),
        _ => None,
    }
}

/// `s` with the glob characters of `SCAN … MATCH` escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subscriber task: `SUBSCRIBE channel`, feed `tx`, ping every [`SUBSCRIBER_PING`];
/// when the connection ends, re-subscribe after a backoff from [`RESUBSCRIBE_MIN`] to
/// [`RESUBSCRIBE_MAX`]. Ends when the store drops it.
async fn subscribe(
    client: Client,
    channel: String,
    tx: broadcast::Sender<Revoked>,
    listening: Arc<AtomicBool>,
) {
    let mut pause = RESUBSCRIBE_MIN;
    loop {
        let opened = tokio::time::timeout(OP_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        match opened {
            Ok(Ok(pubsub)) => {
                pause = RESUBSCRIBE_MIN;
                listening.store(true, Ordering::Release);
                tracing::debug!(channel, "redis revocations: subscribed");
                let (mut sink, mut stream) = pubsub.split();
                let mut ping = tokio::time::interval(SUBSCRIBER_PING);
                ping.tick().await;
                loop {
                    tokio::select! {
                        message = stream.next() => match message {
                            Some(m) => match decode(m.get_payload_bytes()) {
                                Some(r) => { let _ = tx.send(r); }
                                None => tracing::warn!(
                                    channel,
                                    message = %String::from_utf8_lossy(m.get_payload_bytes()),
                                    "redis revocations: ignored a message that is not sid:<sid>, sub:<sub> or all"
                                ),
                            },
                            None => break,
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(OP_TIMEOUT, sink.ping::<Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                listening.store(false, Ordering::Release);
                tracing::warn!(
                    channel,
                    "redis revocations: subscription lost; re-subscribing"
                );
            }
            Ok(Err(e)) => {
                tracing::debug!(channel, error = %e, "redis revocations: cannot subscribe");
            }
            Err(_) => {
                tracing::debug!(channel, "redis revocations: no answer to SUBSCRIBE");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RESUBSCRIBE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_messages_round_trip() {
        for r in [
            Revoked::Sid("abc".into()),
            Revoked::Sub("user:with:colons".into()),
            Revoked::All,
        ] {
            assert_eq!(decode(encode(&r).as_bytes()), Some(r));
        }
        assert_eq!(decode(b"nope"), None);
        assert_eq!(decode(b"x:y"), None);
        assert_eq!(decode(&[0xff]), None);
    }

    #[test]
    fn scan_patterns_escape_the_prefix() {
        assert_eq!(glob_escape("app*1?[x]\\:"), "app\\*1\\?\\[x\\]\\\\:");
        assert_eq!(glob_escape("fluxlit:"), "fluxlit:");
    }
}
