//! The signed identity assertion (`X-Fluxlit-Identity`; AUTH.md A.5; Pomerium's
//! `X-Pomerium-Jwt-Assertion` is the model): a short-lived JWT the gateway sets on the API and
//! Streamlit hops next to the plain identity headers, so an app can *verify* who the user is
//! instead of trusting headers, including on Streamlit's direct loopback calls to the API
//! (`FLUXLIT_INTERNAL_API_BASE`), which do not pass the gateway.
//!
//! - Algorithm EdDSA (Ed25519, RFC 8037); `typ: JWT`; `kid` = the first 16 hex digits of the
//!   SHA-256 of the public key.
//! - Keys: derived with HKDF-SHA256 from each cookie secret (info
//!   `fluxlit identity assertion v1`), the first signing, all listed in the JWKS. Every replica
//!   that shares the cookie secrets therefore signs with the same key and serves the same JWKS,
//!   and rotating the secrets rotates the keys.
//! - Claims: `iss` = the public origin, `aud` = [`AUDIENCE`], `sub`, `sid`, `iat`, `exp`, and
//!   `email`, `email_verified`, `name`, `preferred_username`, `groups` when known. `exp` is at
//!   most the session's end.
//! - The JWKS is served by the gateway at `{root_path}/__fluxlit/jwks.json`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::Digest as _;

use crate::session::Session;

/// The `aud` of every assertion.
pub const AUDIENCE: &str = "fluxlit-api";

/// The header the assertion travels in.
pub const HEADER: &str = "x-fluxlit-identity";

struct Key {
    kid: String,
    public: [u8; 32],
    /// Expanded once: signing on every request must not derive the key again.
    signing: SigningKey,
}

/// Signs assertions and publishes their keys.
pub struct Asserter {
    issuer: String,
    keys: Vec<Key>,
}

impl std::fmt::Debug for Asserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asserter")
            .field("issuer", &self.issuer)
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Asserter {
    /// Keys derived from `secrets` (the cookie secrets, first signs), assertions issued by
    /// `issuer` (the public origin). `None` without secrets.
    pub fn new<S: AsRef<[u8]>>(issuer: &str, secrets: &[S]) -> Option<Self> {
        let keys: Vec<Key> = secrets
            .iter()
            .map(|s| {
                let mut seed = [0u8; 32];
                // 32 bytes is far below HKDF-SHA256's 8160-byte limit: `expand` cannot fail.
                let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, s.as_ref())
                    .expand(b"fluxlit identity assertion v1", &mut seed);
                let signing = SigningKey::from_bytes(&seed);
                let public = signing.verifying_key().to_bytes();
                let digest = sha2::Sha256::digest(public);
                let kid = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                Key {
                    kid,
                    public,
                    signing,
                }
            })
            .collect();
        (!keys.is_empty()).then(|| Self {
            issuer: issuer.to_owned(),
            keys,
        })
    }

    /// The JWKS (RFC 7517 §5) with every key, the signing key first.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": self.keys.iter().map(|k| serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(k.public),
                "kid": k.kid,
                "alg": "EdDSA",
                "use": "sig",
            })).collect::<Vec<_>>()
        })
    }

    /// The assertion for `session` at `now` (seconds since the Unix epoch), valid for at most
    /// `ttl_s` seconds and never past the session's end; `None` if signing failed.
    pub fn sign(&self, session: &Session, now: i64, ttl_s: i64) -> Option<String> {
        let key = self.keys.first()?;
        let id = &session.identity;
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": id.sub,
            "sid": session.sid,
            "iat": now,
            "exp": session.expires_at.min(now.saturating_add(ttl_s)),
        });
        let extra = [
            ("email", id.email.as_ref().map(|v| serde_json::json!(v))),
            (
                "email_verified",
                id.email_verified.map(|v| serde_json::json!(v)),
            ),
            ("name", id.name.as_ref().map(|v| serde_json::json!(v))),
            (
                "preferred_username",
                id.preferred_username.as_ref().map(|v| serde_json::json!(v)),
            ),
            (
                "groups",
                (!id.groups.is_empty()).then(|| serde_json::json!(id.groups)),
            ),
        ];
        for (k, v) in extra {
            if let Some(v) = v {
                claims[k] = v;
            }
        }
        // A JWS in compact serialization (RFC 7515 §7.1) with EdDSA (RFC 8037 §3.1), signed
        // with the key prepared at start.
        let header = serde_json::json!({"typ": "JWT", "alg": "EdDSA", "kid": key.kid});
        let mut jws = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).ok()?);
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?));
        let signature = key.signing.sign(jws.as_bytes());
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Some(jws)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};

    use super::*;
    use crate::session::SessionIdentity;

    const S1: &[u8] = b"first-secret-0123456789abcdef-0123456789";
    const S2: &[u8] = b"second-secret-0123456789abcdef-012345678";

    fn session(expires_at: i64) -> Session {
        Session {
            sid: "sid1".into(),
            identity: SessionIdentity {
                iss: "https://idp.example".into(),
                sub: "alice".into(),
                email: Some("alice@example.test".into()),
                email_verified: Some(true),
                groups: vec!["staff".into()],
                ..SessionIdentity::default()
            },
            created_at: 0,
            expires_at,
            tokens: None,
        }
    }

    fn verify(jwks: &serde_json::Value, token: &str) -> serde_json::Value {
        let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let jwk = set.find(&kid).expect("the kid is in the JWKS");
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&[AUDIENCE]);
        v.set_issuer(&["https://app.example"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
            .unwrap()
            .claims
    }

    #[test]
    fn assertions_verify_with_the_published_keys_across_replicas_and_rotation() {
        let now = crate::session::now();
        let a = Asserter::new("https://app.example", &[S1]).unwrap();
        let token = a.sign(&session(now + 3600), now, 300).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.typ.as_deref()),
            (Algorithm::EdDSA, Some("JWT"))
        );
        let claims = verify(&a.jwks(), &token);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["sid"], "sid1");
        assert_eq!(claims["groups"], serde_json::json!(["staff"]));
        assert_eq!(claims["exp"], now + 300);
        // Another replica with the same secrets publishes the same key.
        let b = Asserter::new("https://app.example", &[S1]).unwrap();
        assert_eq!(a.jwks(), b.jwks());
        // After rotation (new secret first), old assertions still verify with the new JWKS.
        let rotated = Asserter::new("https://app.example", &[S2, S1]).unwrap();
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
        verify(&rotated.jwks(), &token);
        // Another deployment's keys do not verify it.
        let other = Asserter::new("https://app.example", &[S2]).unwrap();
        let set: JwkSet = serde_json::from_value(other.jwks()).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert!(set.find(&kid).is_none());
    }

    #[test]
    fn an_assertion_never_outlives_its_session() {
        let now = crate::session::now();
        let a = Asserter::new("https://app.example", &[S1]).unwrap();
        let token = a.sign(&session(now + 10), now, 300).unwrap();
        assert_eq!(verify(&a.jwks(), &token)["exp"], now + 10);
    }
}
