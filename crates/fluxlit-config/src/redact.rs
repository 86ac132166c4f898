//! Redaction for everything that prints settings (`fluxlit config`, `fluxlit doctor --verbose`,
//! the debug endpoint): secrets never leave the process in clear text.
//!
//! What is replaced with [`REDACTED`]:
//! - the `*_secret` keys and each of `auth_cookie_secrets` (they are [`Secret`](crate::Secret)s,
//!   redacted when serialized);
//! - in `cors_middleware_kwargs`, the value of any key whose lowercase form contains `secret`,
//!   `token`, `password` or `authorization` (as FluxLit for Python did);
//! - the password of any `scheme://user:password@host` URL inside any string value (for
//!   example `api_upstream = "http://svc:hunter2@10.0.0.5:9000"` or a URL in `api_command`).
//!
//! ```
//! use fluxlit_config::redact::redact_url_passwords;
//! assert_eq!(
//!     redact_url_passwords("uvicorn --proxy http://u:hunter2@proxy:3128 api:app"),
//!     "uvicorn --proxy http://u:[REDACTED]@proxy:3128 api:app"
//! );
//! assert_eq!(redact_url_passwords("https://example.com/x?a=b"), "https://example.com/x?a=b");
//! ```

use serde_json::Value;

use crate::{REDACTED, Settings};

/// Words that make a `cors_middleware_kwargs` key secret (compared in lowercase).
const SECRET_KEY_WORDS: &[&str] = &["secret", "token", "password", "authorization"];

/// `settings` as a JSON object, every secret replaced with [`REDACTED`] (see the module doc).
pub fn settings_json(settings: &Settings) -> Value {
    let mut v = serde_json::to_value(settings).unwrap_or(Value::Null);
    if let Some(kwargs) = v
        .get_mut("cors_middleware_kwargs")
        .and_then(Value::as_object_mut)
    {
        for (k, val) in kwargs.iter_mut() {
            let lower = k.to_ascii_lowercase();
            if SECRET_KEY_WORDS.iter().any(|w| lower.contains(w)) {
                *val = Value::String(REDACTED.to_owned());
            }
        }
    }
    redact_strings(&mut v);
    v
}

/// Applies [`redact_url_passwords`] to every string in `v`, recursively.
pub fn redact_strings(v: &mut Value) {
    match v {
        Value::String(s) => {
            let r = redact_url_passwords(s);
            if r != *s {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_strings),
        Value::Object(o) => o.values_mut().for_each(redact_strings),
        _ => {}
    }
}

/// `text` with the password of every `scheme://user:password@host` URL in it replaced with
/// [`REDACTED`] (RFC 3986 §3.2.1: the userinfo ends at the last `@` before the authority's end,
/// `/`, `?`, `#` or whitespace; the password is what follows its first `:`).
pub fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => match authority[..at].find(':') {
                Some(colon) => {
                    out.push_str(&authority[..=colon]);
                    out.push_str(REDACTED);
                    out.push_str(&authority[at..]);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{CliOverrides, Environment, LoadOptions, load};

    #[test]
    fn secrets_kwargs_and_url_passwords_are_redacted() {
        let env = Environment::from_pairs([
            ("FLUXLIT_JWT_HS256_SECRET", "s3cr3t-value"),
            (
                "FLUXLIT_OIDC_ISSUER",
                "https://svc:pa55word@idp.example/realm",
            ),
            (
                "FLUXLIT_CORS_MIDDLEWARE_KWARGS",
                r#"{"X-Api-Token": "tok-value", "max_age": 600}"#,
            ),
        ]);
        let loaded = load(&LoadOptions::new(
            &std::env::temp_dir(),
            env,
            CliOverrides::default(),
        ))
        .unwrap();
        let v = settings_json(&loaded.settings);
        let text = v.to_string();
        for secret in ["s3cr3t-value", "pa55word", "tok-value"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["jwt_hs256_secret"], REDACTED);
        assert_eq!(v["cors_middleware_kwargs"]["X-Api-Token"], REDACTED);
        assert_eq!(v["cors_middleware_kwargs"]["max_age"], 600);
        assert!(
            v["oidc_issuer"] == "https://svc:[REDACTED]@idp.example/realm",
            "{v}"
        );
    }

    #[test]
    fn urls_without_passwords_are_kept() {
        for s in [
            "http://127.0.0.1:9000",
            "https://user@example.com/a:b@c",
            "no url here: a@b",
            "",
        ] {
            assert_eq!(redact_url_passwords(s), s);
        }
        assert_eq!(
            redact_url_passwords("a http://x:y@h b https://p:q:r@h2/z"),
            "a http://x:[REDACTED]@h b https://p:[REDACTED]@h2/z"
        );
    }
}
