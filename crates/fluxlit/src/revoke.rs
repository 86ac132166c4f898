//! Ending login sessions from the command line (`fluxlit revoke`; issue 13 "session revocation
//! on compromise"): every session of one user, one session, or every session, through the
//! session store the gateways share, so every replica forgets them at once and closes their
//! WebSockets (the store broadcasts the revocation; docs/auth.md).
//!
//! Only the `redis` store can be reached from outside the gateway. The `memory` store lives
//! inside the running process (a restart ends every session), and the `cookie` store keeps no
//! server state at all (rotating the cookie secrets ends every session): both are errors that
//! say so.

use fluxlit_auth::session::{RedisStore, Revoked, Store};
use fluxlit_config::{AuthMode, SessionStore, Settings};

/// What to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every session of the user with this `sub`.
    User(String),
    /// One session, by its id (`sid`, as in the access log and `X-Fluxlit-Identity`).
    Session(String),
    /// Every session.
    All,
}

/// Why nothing could be revoked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// `auth_mode` is not `oidc`: there are no login sessions.
    #[error("auth_mode is {0}, not oidc: there are no login sessions to revoke")]
    NotOidc(&'static str),
    /// The `cookie` store has no server state to change.
    #[error(
        "auth_session_store is cookie: sessions are sealed cookies with no server state, so one cannot be revoked; to end every session, put a new secret first in auth_cookie_secrets (FLUXLIT_AUTH_COOKIE_SECRETS), drop the old ones and restart the gateways; use auth_session_store = \"redis\" to revoke users or sessions (docs/auth.md)"
    )]
    CookieStore,
    /// The `memory` store is inside the running process.
    #[error(
        "auth_session_store is memory: sessions live inside the running fluxlit process; restart it to end every session (fluxlit shutdown, then fluxlit run), or use auth_session_store = \"redis\" to revoke users or sessions (docs/auth.md)"
    )]
    MemoryStore,
    /// Redis could not be reached or refused.
    #[error("{0}")]
    Store(#[from] fluxlit_auth::session::StoreError),
}

/// Ends the sessions `target` names in the store of `settings`; returns how many ended.
///
/// # Errors
/// [`RevokeError`] when the mode or store cannot revoke, or Redis cannot be reached.
pub async fn revoke(settings: &Settings, target: &Target) -> Result<usize, RevokeError> {
    if settings.auth_mode != AuthMode::Oidc {
        return Err(RevokeError::NotOidc(settings.auth_mode.as_str()));
    }
    let redis = match settings.auth_session_store {
        SessionStore::Cookie => return Err(RevokeError::CookieStore),
        SessionStore::Memory => return Err(RevokeError::MemoryStore),
        SessionStore::Redis => RedisStore::connect(
            &settings.auth_session_redis_url,
            &settings.auth_session_key_prefix,
        )?,
    };
    let store = Store::Redis(std::sync::Arc::new(redis));
    let what = match target {
        Target::User(sub) => Revoked::Sub(sub.clone()),
        Target::Session(sid) => Revoked::Sid(sid.clone()),
        Target::All => Revoked::All,
    };
    Ok(store.revoke(&what).await?)
}
