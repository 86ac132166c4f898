//! Sealed cookies for the OIDC backend-for-frontend (`../shared/design/AUTH.md` A.3, A.4 rule
//! 8): a value encrypted and authenticated with AES-256-GCM (the `cookie` crate's private jar)
//! under a key derived by HKDF-SHA256 from a configured secret, with the cookie's name as
//! associated data, so a value sealed for one cookie does not open as another. Secrets are a
//! list for rotation: the first seals, every one opens. Values too long for one cookie are
//! split into chunks `name`, `name.1`, `name.2`, … of at most [`CHUNK_BYTES`] each, and a value
//! that needs more than the allowed number of chunks is an error, never a silently dropped
//! cookie (browsers drop cookies over 4096 bytes, RFC 6265 §6.1).

use cookie::{Cookie, CookieJar, Key};

/// The shortest secret accepted, in bytes (the HKDF input; 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// The largest sealed value per cookie, in bytes: under the 4096 bytes browsers store per
/// cookie (RFC 6265 §6.1), leaving room for the name and the attributes.
pub const CHUNK_BYTES: usize = 3900;

/// Why the keys could not be made, or a value not sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No secret was given.
    #[error("no cookie secret is configured (at least one of {MIN_SECRET_BYTES} bytes or more)")]
    NoSecret,
    /// A secret is shorter than [`MIN_SECRET_BYTES`] (its position in the list, from 0).
    #[error(
        "cookie secret #{index} has {len} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret {
        /// Position in the list.
        index: usize,
        /// Its length, bytes.
        len: usize,
    },
    /// The sealed value needs more chunks than allowed.
    #[error(
        "the sealed {name} cookie would be {bytes} bytes, more than {max_chunks} cookies of {CHUNK_BYTES} bytes: the session holds too much (e.g. too many groups)"
    )]
    TooLarge {
        /// The cookie's name.
        name: String,
        /// The sealed size, bytes.
        bytes: usize,
        /// The allowed number of chunks.
        max_chunks: usize,
    },
}

/// The keys: the first seals, all open (key rotation).
#[derive(Clone)]
pub struct CookieKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieKeys({} keys, redacted)", self.keys.len())
    }
}

impl CookieKeys {
    /// Derives one AES-256-GCM key per secret (HKDF-SHA256).
    ///
    /// # Errors
    /// [`SealError::NoSecret`] for an empty list, [`SealError::ShortSecret`] for a secret under
    /// [`MIN_SECRET_BYTES`].
    pub fn new<S: AsRef<[u8]>>(secrets: &[S]) -> Result<Self, SealError> {
        if secrets.is_empty() {
            return Err(SealError::NoSecret);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let s = s.as_ref();
                if s.len() < MIN_SECRET_BYTES {
                    Err(SealError::ShortSecret {
                        index,
                        len: s.len(),
                    })
                } else {
                    Ok(Key::derive_from(s))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// `value` sealed for the cookie `name` with the first key: the cookie value to send
    /// (base64 of nonce, ciphertext and tag).
    pub fn seal(&self, name: &str, value: &str) -> String {
        let mut jar = CookieJar::new();
        // `new` always has at least one key.
        let Some(key) = self.keys.first() else {
            return String::new();
        };
        jar.private_mut(key)
            .add(Cookie::new(name.to_owned(), value.to_owned()));
        jar.get(name)
            .map(|c| c.value().to_owned())
            .unwrap_or_default()
    }

    /// The value sealed for `name`, if `sealed` opens with any key (tampered, truncated,
    /// sealed for another name or with an unknown key: `None`).
    pub fn open(&self, name: &str, sealed: &str) -> Option<String> {
        self.keys.iter().find_map(|key| {
            let mut jar = CookieJar::new();
            jar.add_original(Cookie::new(name.to_owned(), sealed.to_owned()));
            jar.private(key).get(name).map(|c| c.value().to_owned())
        })
    }

    /// `value` sealed for `name` and split into at most `max_chunks` cookies: `(name, value)`
    /// pairs `name`, `name.1`, … in order.
    ///
    /// # Errors
    /// [`SealError::TooLarge`] when more chunks would be needed.
    pub fn seal_chunked(
        &self,
        name: &str,
        value: &str,
        max_chunks: usize,
    ) -> Result<Vec<(String, String)>, SealError> {
        let sealed = self.seal(name, value);
        let chunks: Vec<&str> = sealed
            .as_bytes()
            .chunks(CHUNK_BYTES)
            // base64 is ASCII: every split is on a character boundary.
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        if chunks.len() > max_chunks {
            return Err(SealError::TooLarge {
                name: name.to_owned(),
                bytes: sealed.len(),
                max_chunks,
            });
        }
        Ok(chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| (chunk_name(name, i), c.to_owned()))
            .collect())
    }

    /// Joins the chunks of `name` that `get` finds (`name`, `name.1`, … up to `max_chunks`,
    /// stopping at the first missing one) and opens them.
    pub fn open_chunked<'a>(
        &self,
        name: &str,
        max_chunks: usize,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Option<String> {
        let mut sealed = String::new();
        for i in 0..max_chunks {
            match get(&chunk_name(name, i)) {
                Some(part) => sealed.push_str(part),
                None => break,
            }
        }
        if sealed.is_empty() {
            return None;
        }
        self.open(name, &sealed)
    }
}

/// The name of chunk `i` of `name`: `name`, `name.1`, `name.2`, …
pub fn chunk_name(name: &str, i: usize) -> String {
    if i == 0 {
        name.to_owned()
    } else {
        format!("{name}.{i}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;

    use super::*;

    const A: &str = "first-secret-with-at-least-32-bytes!!";
    const B: &str = "second-secret-with-at-least-32-bytes!";

    #[test]
    fn seals_opens_and_rotates() {
        let keys = CookieKeys::new(&[A]).unwrap();
        let sealed = keys.seal("fluxlit_session", r#"{"v":1,"sub":"ada"}"#);
        assert!(!sealed.contains("ada"), "encrypted: {sealed}");
        assert_eq!(
            keys.open("fluxlit_session", &sealed).as_deref(),
            Some(r#"{"v":1,"sub":"ada"}"#)
        );
        // Another name is other associated data.
        assert_eq!(keys.open("fluxlit_login", &sealed), None);
        // One flipped character anywhere fails the tag.
        let mut bytes = sealed.clone().into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            keys.open("fluxlit_session", &String::from_utf8(bytes).unwrap()),
            None
        );
        assert_eq!(
            keys.open("fluxlit_session", &sealed[..sealed.len() - 4]),
            None
        );
        assert_eq!(keys.open("fluxlit_session", ""), None);
        // Rotation: the new first key seals, the old one still opens its cookies.
        let rotated = CookieKeys::new(&[B, A]).unwrap();
        assert!(rotated.open("fluxlit_session", &sealed).is_some());
        let new = rotated.seal("fluxlit_session", "x");
        assert_eq!(keys.open("fluxlit_session", &new), None, "old key only");
        assert_eq!(
            CookieKeys::new(&[B])
                .unwrap()
                .open("fluxlit_session", &sealed),
            None
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(
            CookieKeys::new::<&str>(&[]).unwrap_err(),
            SealError::NoSecret
        );
        assert_eq!(
            CookieKeys::new(&[A, "short"]).unwrap_err(),
            SealError::ShortSecret { index: 1, len: 5 }
        );
        assert!(!format!("{:?}", CookieKeys::new(&[A]).unwrap()).contains("first"));
    }

    #[test]
    fn chunks_and_the_too_large_error() {
        let keys = CookieKeys::new(&[A]).unwrap();
        let big = "g".repeat(7000);
        let parts = keys.seal_chunked("s", &big, 3).unwrap();
        assert_eq!(
            parts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["s", "s.1", "s.2"]
        );
        assert!(parts.iter().all(|(_, v)| v.len() <= CHUNK_BYTES));
        let jar: HashMap<String, String> = parts.into_iter().collect();
        assert_eq!(
            keys.open_chunked("s", 3, |n| jar.get(n).map(String::as_str))
                .as_deref(),
            Some(big.as_str())
        );
        // A missing chunk does not open.
        let mut missing = jar.clone();
        missing.remove("s.1");
        assert_eq!(
            keys.open_chunked("s", 3, |n| missing.get(n).map(String::as_str)),
            None
        );
        let e = keys.seal_chunked("s", &"g".repeat(20_000), 3).unwrap_err();
        assert!(
            matches!(e, SealError::TooLarge { max_chunks: 3, bytes, .. } if bytes > 3 * CHUNK_BYTES),
            "{e}"
        );
        assert!(e.to_string().contains("too much"), "{e}");
        // One small value is one cookie under its own name.
        assert_eq!(keys.seal_chunked("s", "x", 3).unwrap().len(), 1);
    }
}
