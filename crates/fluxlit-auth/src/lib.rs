//! FluxLit's authentication building blocks.
//!
//! For now this crate owns the rules about *which headers carry credentials or identity*; the
//! gateway applies them on every hop. JWT validation and the OIDC backend-for-frontend will live
//! here too.
//!
//! Invariants:
//! - [`CREDENTIAL_HEADERS`] values are marked sensitive before anything can log them
//!   ([`mark_sensitive`]); `http`'s `Debug` then prints `Sensitive` instead of the value and
//!   HTTP/2 never adds them to the HPACK dynamic table (RFC 7541 §7.1.3).
//!
//! ```
//! use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
//! fluxlit_auth::mark_sensitive(&mut headers);
//! assert!(headers[AUTHORIZATION].is_sensitive());
//! assert!(!format!("{headers:?}").contains("abc"));
//! ```

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION, SET_COOKIE};

/// Headers whose values are credentials: never logged, never forwarded by an allow-list option.
pub const CREDENTIAL_HEADERS: [HeaderName; 4] =
    [AUTHORIZATION, COOKIE, SET_COOKIE, PROXY_AUTHORIZATION];

/// Whether `name` carries a credential (see [`CREDENTIAL_HEADERS`]).
pub fn is_credential_header(name: &HeaderName) -> bool {
    CREDENTIAL_HEADERS.contains(name)
}

/// Marks every value of every [`CREDENTIAL_HEADERS`] entry as sensitive, in place.
pub fn mark_sensitive(headers: &mut HeaderMap) {
    for name in &CREDENTIAL_HEADERS {
        if let http::header::Entry::Occupied(mut e) = headers.entry(name) {
            for v in e.iter_mut() {
                v.set_sensitive(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn marks_all_repeated_values() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        h.insert("x-other", HeaderValue::from_static("plain"));
        mark_sensitive(&mut h);
        assert!(h.get_all(SET_COOKIE).iter().all(HeaderValue::is_sensitive));
        assert!(!h["x-other"].is_sensitive());
        assert!(is_credential_header(&COOKIE));
        assert!(!is_credential_header(&HeaderName::from_static("x-other")));
    }
}
