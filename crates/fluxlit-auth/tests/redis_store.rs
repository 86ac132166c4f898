//! The `redis` session store against a real `redis-server` (one per test, from
//! `fluxlit_testkit::redis`): records, encryption at rest, expiry, two replicas sharing one
//! Redis, revocations, refresh locks and a Redis outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxlit_auth::session::{
    OP_TIMEOUT, RedisStore, Revoked, Session, SessionIdentity, SessionTokens, Store, new_sid, now,
    random_token, split_ticket,
};
use fluxlit_testkit::eventually;
use fluxlit_testkit::redis::RedisServer;

const PREFIX: &str = "fluxlit-test:";

fn session(sub: &str, lifetime_s: i64) -> Session {
    Session {
        sid: new_sid(),
        identity: SessionIdentity {
            iss: "https://idp.example".into(),
            sub: sub.into(),
            email: Some(format!("{sub}@mail.example")),
            email_verified: Some(true),
            name: Some(format!("{sub} Lovelace")),
            groups: vec!["analysts".into()],
            ..SessionIdentity::default()
        },
        created_at: now(),
        expires_at: now() + lifetime_s,
        tokens: Some(SessionTokens {
            access_token: format!("access-{}", random_token(16)),
            refresh_token: Some(format!("refresh-{}", random_token(16))),
            id_token: format!("idtoken-{}", random_token(16)),
            access_expires_at: Some(now() + 300),
            access_issued_at: Some(now()),
        }),
    }
}

/// A store (one gateway replica) on `redis`, once its revocation subscriber listens.
async fn replica(redis: &RedisServer) -> (Store, Arc<RedisStore>) {
    let store = Arc::new(RedisStore::connect(&redis.url(), PREFIX).unwrap());
    let s = Arc::clone(&store);
    eventually(Duration::from_secs(5), "the subscriber listens", || {
        let s = Arc::clone(&s);
        async move { s.listening().then_some(()) }
    })
    .await;
    (Store::Redis(Arc::clone(&store)), store)
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn next_revocation(rx: &mut tokio::sync::broadcast::Receiver<Revoked>) -> Revoked {
    tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("a revocation within 1 s")
        .expect("the revocation channel is open")
}

#[tokio::test]
async fn create_load_update_delete() {
    let redis = RedisServer::start();
    let (store, _) = replica(&redis).await;
    let mut rx = store.revocations();
    let s = session("ada", 600);
    let ticket = store.create(&s).await.unwrap();
    let (sid, _) = split_ticket(&ticket).unwrap();
    assert_eq!(sid, s.sid);
    assert_eq!(store.load(&ticket).await.unwrap(), Some(s.clone()));

    let mut refreshed = s.clone();
    refreshed.tokens.as_mut().unwrap().access_token = "access-after-refresh".into();
    store.update(&ticket, &refreshed).await.unwrap();
    assert_eq!(store.load(&ticket).await.unwrap(), Some(refreshed.clone()));

    store.delete(&ticket).await.unwrap();
    assert_eq!(store.load(&ticket).await.unwrap(), None);
    assert_eq!(next_revocation(&mut rx).await, Revoked::Sid(s.sid.clone()));
    // An update does not bring a deleted session back.
    store.update(&ticket, &refreshed).await.unwrap();
    assert_eq!(store.load(&ticket).await.unwrap(), None);
    assert_eq!(store.load("not-a-ticket").await.unwrap(), None);
}

#[tokio::test]
async fn a_forged_secret_opens_nothing_and_deletes_nothing() {
    let redis = RedisServer::start();
    let (store, _) = replica(&redis).await;
    let s = session("ada", 600);
    let ticket = store.create(&s).await.unwrap();
    let (sid, _) = split_ticket(&ticket).unwrap();
    for forged in [
        format!("{sid}.{}", random_token(32)),
        format!("{sid}.short"),
    ] {
        assert_eq!(store.load(&forged).await.unwrap(), None, "{forged}");
        store.delete(&forged).await.unwrap();
        let mut changed = s.clone();
        changed.identity.sub = "mallory".into();
        store.update(&forged, &changed).await.unwrap();
        assert_eq!(
            store.load(&ticket).await.unwrap(),
            Some(s.clone()),
            "{forged}"
        );
    }
}

#[tokio::test]
async fn the_dump_holds_no_identity_or_token_and_expires_with_the_session() {
    let redis = RedisServer::start();
    let (store, _) = replica(&redis).await;
    let s = session("ada-sub-1234", 600);
    let ticket = store.create(&s).await.unwrap();
    let mut raw = raw(&redis).await;

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "the record and the user's set: {keys:?}");
    let record_key = format!("{PREFIX}s:{}", s.sid);
    assert!(keys.contains(&record_key), "{keys:?}");
    let tokens = s.tokens.as_ref().unwrap();
    let secrets = [
        s.identity.sub.as_str(),
        s.identity.email.as_deref().unwrap(),
        "Lovelace",
        "analysts",
        tokens.access_token.as_str(),
        tokens.refresh_token.as_deref().unwrap(),
        tokens.id_token.as_str(),
    ];
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut raw)
                    .await
                    .unwrap(),
            ],
            "set" => redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut raw)
                .await
                .unwrap(),
            other => panic!("{key} is a {other}"),
        };
        let dump = format!("{key} {}", values.join(" "));
        for secret in secrets {
            assert!(!dump.contains(secret), "{secret:?} in {dump}");
        }
    }
    let value: String = redis::cmd("GET")
        .arg(&record_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(value.starts_with("v1."), "{value}");

    // Expiry from expires_at, on the server.
    let ttl: i64 = redis::cmd("TTL")
        .arg(&record_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((598..=600).contains(&ttl), "TTL {ttl}, expected about 600");
    let mut shorter = s.clone();
    shorter.expires_at = now() + 120;
    store.update(&ticket, &shorter).await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&record_key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        (118..=120).contains(&ttl),
        "TTL {ttl} after the update, expected about 120"
    );

    // An expired session is never written.
    let expired = session("bob", -1);
    let t = store.create(&expired).await.unwrap();
    assert_eq!(store.load(&t).await.unwrap(), None);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{PREFIX}s:{}", expired.sid))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn two_replicas_share_sessions_and_revocations() {
    let redis = RedisServer::start();
    let (a, _) = replica(&redis).await;
    let (b, _) = replica(&redis).await;
    let mut on_a = a.revocations();
    let mut on_b = b.revocations();

    let s = session("ada", 600);
    let ticket = a.create(&s).await.unwrap();
    assert_eq!(b.load(&ticket).await.unwrap(), Some(s.clone()));
    b.delete(&ticket).await.unwrap();
    assert_eq!(
        next_revocation(&mut on_a).await,
        Revoked::Sid(s.sid.clone())
    );
    assert_eq!(
        next_revocation(&mut on_b).await,
        Revoked::Sid(s.sid.clone())
    );
    assert_eq!(a.load(&ticket).await.unwrap(), None);

    let ada1 = a.create(&session("ada", 600)).await.unwrap();
    let ada2 = b.create(&session("ada", 600)).await.unwrap();
    let bob = a.create(&session("bob", 600)).await.unwrap();
    assert_eq!(b.revoke(&Revoked::Sub("ada".into())).await.unwrap(), 2);
    assert_eq!(next_revocation(&mut on_a).await, Revoked::Sub("ada".into()));
    assert_eq!(next_revocation(&mut on_b).await, Revoked::Sub("ada".into()));
    assert_eq!(a.load(&ada1).await.unwrap(), None);
    assert_eq!(a.load(&ada2).await.unwrap(), None);
    assert!(a.load(&bob).await.unwrap().is_some());

    let bob_sid = split_ticket(&bob).unwrap().0.to_owned();
    assert_eq!(a.revoke(&Revoked::Sid(bob_sid.clone())).await.unwrap(), 1);
    assert_eq!(
        next_revocation(&mut on_a).await,
        Revoked::Sid(bob_sid.clone())
    );
    assert_eq!(next_revocation(&mut on_b).await, Revoked::Sid(bob_sid));

    let tickets = [
        a.create(&session("carol", 600)).await.unwrap(),
        b.create(&session("dan", 600)).await.unwrap(),
    ];
    assert_eq!(a.revoke(&Revoked::All).await.unwrap(), 2);
    assert_eq!(next_revocation(&mut on_b).await, Revoked::All);
    for t in &tickets {
        assert_eq!(b.load(t).await.unwrap(), None);
    }
    let mut raw = raw(&redis).await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn one_refresh_at_a_time_across_replicas() {
    let redis = RedisServer::start();
    let (a, _) = replica(&redis).await;
    let (b, _) = replica(&redis).await;
    let held = a.refresh_lock("s1", Duration::from_secs(1)).await.unwrap();
    assert!(held.is_some());
    let start = Instant::now();
    let waited = b
        .refresh_lock("s1", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(waited.is_none(), "held by A");
    assert!(start.elapsed() >= Duration::from_millis(300), "B waited");
    assert!(
        b.refresh_lock("s2", Duration::ZERO)
            .await
            .unwrap()
            .is_some(),
        "another session's lock is free"
    );

    let waiter = tokio::spawn(async move { b.refresh_lock("s1", Duration::from_secs(5)).await });
    // B is waiting while A holds the lock.
    tokio::time::timeout(Duration::from_millis(200), async {
        while !waiter.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect_err("B must wait while A holds the lock");
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("B gets the lock soon after A drops it")
        .unwrap()
        .unwrap();
    assert!(got.is_some());
}

#[tokio::test]
async fn the_lease_is_renewed_while_the_lock_is_held() {
    let redis = RedisServer::start();
    let lease = Duration::from_millis(500);
    let a = Store::Redis(Arc::new(
        RedisStore::connect(&redis.url(), PREFIX)
            .unwrap()
            .with_lock_lease(lease),
    ));
    let (b, _) = replica(&redis).await;
    let held = a.refresh_lock("s1", Duration::ZERO).await.unwrap().unwrap();
    // Four leases later the lock is still A's.
    let waited = b.refresh_lock("s1", lease * 4).await.unwrap();
    assert!(waited.is_none(), "the lease was renewed");
    let fluxlit_auth::session::RefreshLock::Redis(lock) = &held else {
        panic!("a redis lock");
    };
    assert!(lock.held());
    let mut raw = raw(&redis).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{PREFIX}l:s1"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 500, "PTTL {pttl}: leased, not forever");

    // Another holder took over (as after a lease lost in an outage): A's renewal notices, and
    // A's release does not delete the other holder's lock.
    let () = redis::cmd("SET")
        .arg(format!("{PREFIX}l:s1"))
        .arg("someone-else")
        .query_async(&mut raw)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "A sees the lock lost", || async {
        (!lock.held()).then_some(())
    })
    .await;
    drop(held);
    let b_sees = b
        .refresh_lock("s1", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        b_sees.is_none(),
        "A's release must not delete another holder's lock"
    );
    let token: String = redis::cmd("GET")
        .arg(format!("{PREFIX}l:s1"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(token, "someone-else");
}

#[tokio::test]
async fn redis_down_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let (a, a_store) = replica(&redis).await;
    let (b, _) = replica(&redis).await;
    let ticket = a.create(&session("ada", 600)).await.unwrap();

    redis.stop();
    let bound = OP_TIMEOUT + Duration::from_millis(500);
    let start = Instant::now();
    let e = a.load(&ticket).await.unwrap_err();
    assert!(start.elapsed() < bound, "{:?}", start.elapsed());
    assert!(e.to_string().contains("redis"), "{e}");
    let start = Instant::now();
    assert!(a.create(&session("bob", 600)).await.is_err());
    assert!(a.delete(&ticket).await.is_err());
    assert!(a.revoke(&Revoked::Sub("ada".into())).await.is_err());
    assert!(a.revoke(&Revoked::All).await.is_err());
    assert!(a.refresh_lock("s1", Duration::from_secs(5)).await.is_err());
    assert!(b.update(&ticket, &session("ada", 600)).await.is_err());
    assert!(
        start.elapsed() < bound * 6,
        "six calls took {:?}",
        start.elapsed()
    );
    let s = Arc::clone(&a_store);
    eventually(
        Duration::from_secs(10),
        "A notices the subscription is lost",
        || {
            let s = Arc::clone(&s);
            async move { (!s.listening()).then_some(()) }
        },
    )
    .await;
    // A gateway starting while Redis is down starts, and its calls fail fast.
    let c_store = Arc::new(RedisStore::connect(&redis.url(), PREFIX).unwrap());
    let c = Store::Redis(Arc::clone(&c_store));
    let start = Instant::now();
    assert!(c.load(&ticket).await.is_err());
    assert!(start.elapsed() < bound, "{:?}", start.elapsed());

    // Back (empty: nothing was persisted); calls work again and revocations flow again.
    redis.restart();
    let ticket = eventually(Duration::from_secs(10), "create works again", || {
        let a = a.clone();
        async move { a.create(&session("ada", 600)).await.ok() }
    })
    .await;
    assert!(b.load(&ticket).await.unwrap().is_some());
    assert!(c.load(&ticket).await.unwrap().is_some());
    for (name, s) in [("A", &a_store), ("C", &c_store)] {
        let s = Arc::clone(s);
        eventually(
            Duration::from_secs(10),
            &format!("{name} subscribes"),
            || {
                let s = Arc::clone(&s);
                async move { s.listening().then_some(()) }
            },
        )
        .await;
    }
    let (mut on_a, mut on_c) = (a.revocations(), c.revocations());
    b.delete(&ticket).await.unwrap();
    let sid = Revoked::Sid(split_ticket(&ticket).unwrap().0.to_owned());
    assert_eq!(next_revocation(&mut on_a).await, sid);
    assert_eq!(next_revocation(&mut on_c).await, sid);
}

/// `auth_session_idle_timeout_s` with the `redis` store: the key's expiry is the idle clock.
/// A new session's key lives the idle timeout (never past the session's end); a request moves
/// it back once a tenth of the timeout has passed (not at every request); a token refresh and
/// plain loads do not; a session nobody uses is gone after the timeout, on every replica.
#[tokio::test]
async fn the_idle_timeout_is_the_key_expiry() {
    let redis = RedisServer::start();
    let idle = Duration::from_millis(1500);
    let store = Arc::new(
        RedisStore::connect(&redis.url(), PREFIX)
            .unwrap()
            .with_idle_timeout(idle),
    );
    let other = Arc::new(
        RedisStore::connect(&redis.url(), PREFIX)
            .unwrap()
            .with_idle_timeout(idle),
    );
    let (a, b) = (Store::Redis(Arc::clone(&store)), Store::Redis(other));
    assert_eq!(a.idle_timeout(), Some(idle));
    let mut raw = raw(&redis).await;
    let conn = raw.clone();
    let pttl = |sid: String| {
        let mut raw = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(format!("{PREFIX}s:{sid}"))
                .query_async::<i64>(&mut raw)
                .await
                .unwrap()
        }
    };

    let s = session("ada", 600);
    let ticket = a.create(&s).await.unwrap();
    let first = pttl(s.sid.clone()).await;
    assert!(
        (1..=1500).contains(&first),
        "PTTL {first}, expected at most the idle timeout"
    );
    // Used on the other replica a while later: moved back to the whole timeout.
    tokio::time::sleep(idle / 5).await;
    let before = pttl(s.sid.clone()).await;
    assert!(b.load_in_use(&ticket).await.unwrap().is_some());
    let after = pttl(s.sid.clone()).await;
    assert!(after > before, "{before} -> {after}");
    // The user's set lives at least as long as the record.
    let set_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{PREFIX}u:{}", {
            use sha2::Digest;
            sha2::Sha256::digest(b"ada")
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        }))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(set_ttl >= after - 50, "user set {set_ttl} < record {after}");
    // A refresh (update) is no use: the remaining time is kept, not reset.
    tokio::time::sleep(idle / 5).await;
    let before = pttl(s.sid.clone()).await;
    a.update(&ticket, &s).await.unwrap();
    let after = pttl(s.sid.clone()).await;
    assert!(
        after <= before,
        "the update moved the idle clock: {before} -> {after}"
    );
    // Nobody uses it (plain loads are no use): gone once the timeout passed.
    let quiet = Instant::now();
    eventually(
        idle + Duration::from_secs(3),
        "the idle session ends",
        || {
            let a = a.clone();
            let ticket = ticket.clone();
            async move { a.load(&ticket).await.unwrap().is_none().then_some(()) }
        },
    )
    .await;
    assert!(
        quiet.elapsed() >= idle / 2,
        "ended too early: {:?}",
        quiet.elapsed()
    );
    assert!(b.load_in_use(&ticket).await.unwrap().is_none());

    // Not a write per request: within a tenth of the timeout (6 s of 60 s) uses leave the
    // expiry alone, so it only runs down.
    let slow = Store::Redis(Arc::new(
        RedisStore::connect(&redis.url(), PREFIX)
            .unwrap()
            .with_idle_timeout(Duration::from_secs(60)),
    ));
    let busy = session("carol", 600);
    let t = slow.create(&busy).await.unwrap();
    let mut last = pttl(busy.sid.clone()).await;
    for _ in 0..5 {
        assert!(slow.load_in_use(&t).await.unwrap().is_some());
        let now = pttl(busy.sid.clone()).await;
        assert!(
            now <= last,
            "moved within a tenth of the timeout: {last} -> {now}"
        );
        last = now;
    }

    // Never past the absolute end: a session with 1 s left lives 1 s, not the idle timeout.
    let long_idle = Store::Redis(Arc::new(
        RedisStore::connect(&redis.url(), PREFIX)
            .unwrap()
            .with_idle_timeout(Duration::from_secs(60)),
    ));
    let short = session("bob", 1);
    let t = long_idle.create(&short).await.unwrap();
    let left = pttl(short.sid.clone()).await;
    assert!((1..=1000).contains(&left), "PTTL {left}");
    // …and a use does not move it past the end either.
    let _ = long_idle.load_in_use(&t).await.unwrap();
    assert!(pttl(short.sid.clone()).await <= 1000);
}

/// `oidc_compat_exchange` one-time codes in Redis: issued on one replica, redeemed once on
/// another (a replay finds nothing on either), gone after their time, and neither code nor
/// token appears in the dump.
#[tokio::test]
async fn one_time_codes_are_shared_single_use_and_opaque() {
    let redis = RedisServer::start();
    let (a, _) = replica(&redis).await;
    let (b, _) = replica(&redis).await;
    let code = random_token(32);
    let token = format!("eyJ-token-{}", random_token(16));
    a.put_code(&code, &token, Duration::from_secs(120))
        .await
        .unwrap();
    let mut raw = raw(&redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let value: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((119_000..=120_000).contains(&pttl), "PTTL {pttl}");
    for dump in [&keys[0], &value] {
        assert!(!dump.contains(&code) && !dump.contains(&token), "{dump}");
    }
    assert_eq!(
        b.take_code(&code).await.unwrap().as_deref(),
        Some(token.as_str())
    );
    assert_eq!(
        b.take_code(&code).await.unwrap(),
        None,
        "replayed on the same replica"
    );
    assert_eq!(
        a.take_code(&code).await.unwrap(),
        None,
        "replayed on the other replica"
    );
    assert_eq!(a.take_code("short").await.unwrap(), None);
    // Past its time: gone.
    let code = random_token(32);
    a.put_code(&code, "t", Duration::from_millis(100))
        .await
        .unwrap();
    let key = format!("{PREFIX}c:{}", {
        use sha2::Digest;
        sha2::Sha256::digest(code.as_bytes())
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    });
    eventually(Duration::from_secs(3), "the code expires", || {
        let (mut raw, key) = (raw.clone(), key.clone());
        async move {
            let exists: i64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .unwrap();
            (exists == 0).then_some(())
        }
    })
    .await;
    assert_eq!(a.take_code(&code).await.unwrap(), None);
}
