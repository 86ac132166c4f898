//! Responses the gateway writes itself.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::Body;

/// A body from bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A `text/plain` response that is never cached.
pub(crate) fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An `application/json` response that is never cached.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A `text/plain` error response whose body ends with the request id (also in `X-Request-ID`).
pub(crate) fn plain_rid(
    status: StatusCode,
    text: impl Into<String>,
    rid: &HeaderValue,
) -> Response<Body> {
    let mut text: String = text.into();
    if let Ok(id) = rid.to_str() {
        if text.ends_with('\n') {
            text.pop();
        }
        text.push_str(&format!(" (request id {id})\n"));
    }
    let mut r = plain(status, text);
    r.headers_mut()
        .insert(crate::observe::REQUEST_ID, rid.clone());
    r
}

/// The answer to a request the API's bearer check refused (`auth_mode = jwt`): the status,
/// `{"detail":"…"}` body and `WWW-Authenticate` of FluxLit for Python's `JWTBearer` (reference
/// §8.1; RFC 6750 §3), never cached.
pub(crate) fn denied(denial: &fluxlit_auth::jwt::Denial) -> Response<Body> {
    let mut r = Response::new(full(denial.body()));
    *r.status_mut() = denial.status();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(www) = denial.www_authenticate() {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(www),
        );
    }
    r
}
