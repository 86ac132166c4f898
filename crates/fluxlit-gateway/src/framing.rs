//! Message framing (RFC 9112 §6): how long a request body is, decided once for both engines.
//!
//! Every engine reads `Content-Length` through [`content_length`] and a request's framing
//! fields through [`RequestFraming`]; a request whose framing is ambiguous is refused, never
//! guessed at, so one request can never be read as two by the gateway and its upstream.

use http::StatusCode;
use http::header::{HeaderMap, HeaderValue, TRANSFER_ENCODING};

/// Largest upstream response head, bytes, on both engines (beyond it: 502), measured the same
/// way by both ([`response_fields_size`]).
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How many bytes either engine reads while waiting for a response head to complete (hyper's
/// client buffer limit; the fast path's read limit): room for [`MAX_RESPONSE_HEAD`] of fields
/// plus the status line and whitespace the measure leaves out.
pub(crate) const RESPONSE_HEAD_BUFFER: usize = 2 * MAX_RESPONSE_HEAD;

/// The size of a request head as both engines measure it (compared with
/// `gateway_max_request_header_bytes`, 431 above): the request line (`METHOD target
/// HTTP/1.1` and CRLF) plus name, value and 4 bytes per field plus the final CRLF. Each engine's
/// read buffer is twice that limit, so the exact measure decides, not where a read ended.
pub(crate) fn request_head_size<'a>(
    method: &str,
    target: &str,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> usize {
    method.len() + 1 + target.len() + 11 + response_fields_size(fields) + 2
}

/// The size of a response head's fields as both engines measure it: name, value and 4 bytes
/// (`: ` and CRLF) per field. Compared with [`MAX_RESPONSE_HEAD`].
pub(crate) fn response_fields_size<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> usize {
    fields.into_iter().map(|(n, v)| n.len() + v.len() + 4).sum()
}

/// The `Transfer-Encoding` of a response with a body whose codings are more than `chunked`
/// (`gzip, chunked`): those codings are part of the body as relayed, so the field goes on with
/// it (the fast path relays it verbatim; hyper's server keeps it and frames the body chunked).
/// `None` when the field is absent or only `chunked` (then it is hop-by-hop framing the gateway
/// redoes).
pub(crate) fn response_codings(headers: &HeaderMap) -> Option<Vec<HeaderValue>> {
    let values: Vec<HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().cloned().collect();
    let coded = values.iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"chunked"))
    });
    coded.then_some(values)
}

/// A `Content-Length` value (RFC 9110 §8.6): ASCII digits only, at most 19 (fits `u64`).
/// `None` for anything else: a sign, hex, spaces, and also a list (`5, 5`), which RFC 9110
/// §8.6 lets a recipient refuse (hyper's server does, so the fast path must too). Repeated
/// fields with one value are one length ([`RequestFraming`]).
pub(crate) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// How a request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (neither `Content-Length` nor `Transfer-Encoding`).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, the only transfer coding the gateway accepts on requests.
    Chunked,
}

/// Why a request's framing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    /// A `Content-Length` that is not a decimal length, or several that differ (RFC 9110 §8.6,
    /// RFC 9112 §6.3 item 5).
    #[error("invalid or conflicting Content-Length")]
    BadLength,
    /// Both `Transfer-Encoding` and `Content-Length` (RFC 9112 §6.3 item 3: a sign of request
    /// smuggling; refused rather than forwarded).
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndEncoding,
    /// `Transfer-Encoding` whose final coding is not `chunked` (RFC 9112 §6.3 item 4).
    #[error("Transfer-Encoding whose final coding is not chunked")]
    NotChunked,
    /// A transfer coding other than `chunked` before it (`gzip, chunked`): the gateway does not
    /// implement it (RFC 9112 §6.1: 501).
    #[error("unsupported transfer coding (only chunked is accepted)")]
    UnsupportedCoding,
}

impl FramingError {
    /// The status both engines answer with: 400, or 501 for a coding the gateway does not
    /// implement. The connection is closed after it.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The framing fields of one request, fed field by field (in any order) by an engine, then
/// decided by [`RequestFraming::finish`].
#[derive(Debug, Default)]
pub(crate) struct RequestFraming {
    length: Option<u64>,
    bad_length: bool,
    /// Transfer codings seen so far, and whether the last one was `chunked`.
    codings: usize,
    last_chunked: bool,
    chunked_before_last: bool,
}

impl RequestFraming {
    /// Adds one `Content-Length` field value.
    pub(crate) fn length(&mut self, value: &[u8]) {
        match (self.length, content_length(value)) {
            (_, None) => self.bad_length = true,
            (None, Some(n)) => self.length = Some(n),
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => self.bad_length = true,
        }
    }

    /// Adds one `Transfer-Encoding` field value (a list of codings; several fields are one
    /// list, RFC 9110 §5.3).
    pub(crate) fn encoding(&mut self, value: &[u8]) {
        for c in value.split(|b| *b == b',') {
            let c = c.trim_ascii();
            if c.is_empty() {
                continue;
            }
            if self.last_chunked {
                self.chunked_before_last = true;
            }
            self.codings += 1;
            self.last_chunked = c.eq_ignore_ascii_case(b"chunked");
        }
    }

    /// Whether a `Transfer-Encoding` field was seen (even an empty one).
    fn has_encoding(&self) -> bool {
        self.codings > 0
    }

    /// The body's framing, or why the request must be refused. `te_field` says whether a
    /// `Transfer-Encoding` field was present at all (an empty one is refused too).
    pub(crate) fn finish(self, te_field: bool) -> Result<BodyFraming, FramingError> {
        if self.bad_length {
            return Err(FramingError::BadLength);
        }
        if te_field || self.has_encoding() {
            if self.length.is_some() {
                return Err(FramingError::LengthAndEncoding);
            }
            if !self.last_chunked || self.chunked_before_last {
                return Err(FramingError::NotChunked);
            }
            if self.codings > 1 {
                return Err(FramingError::UnsupportedCoding);
            }
            return Ok(BodyFraming::Chunked);
        }
        Ok(self.length.map_or(BodyFraming::None, BodyFraming::Length))
    }
}

/// The framing of a request's fields as an engine holds them (`name`, `value` pairs).
pub(crate) fn request_framing<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyFraming, FramingError> {
    let mut f = RequestFraming::default();
    let mut te = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"content-length") {
            f.length(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            f.encoding(value);
        }
    }
    f.finish(te)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(fields: &[(&str, &str)]) -> Result<BodyFraming, FramingError> {
        request_framing(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn content_length_is_decimal_digits_or_a_list_of_one_value() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0012"), Some(12));
        assert_eq!(content_length(b"18446744073709551615"), None);
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            "", "+5", "-1", "0x10", "5 5", "5,6", "5, 5", "5,", ",", "1e3", " ", " 5",
        ] {
            assert_eq!(content_length(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn request_framing_refuses_ambiguity() {
        use BodyFraming as B;
        use FramingError as E;
        assert_eq!(framing(&[]), Ok(B::None));
        assert_eq!(framing(&[("Content-Length", "3")]), Ok(B::Length(3)));
        assert_eq!(
            framing(&[("content-length", "3"), ("Content-Length", "3")]),
            Ok(B::Length(3))
        );
        assert_eq!(
            framing(&[("content-length", "3"), ("content-length", "4")]),
            Err(E::BadLength)
        );
        assert_eq!(framing(&[("content-length", "+3")]), Err(E::BadLength));
        assert_eq!(framing(&[("transfer-encoding", "chunked")]), Ok(B::Chunked));
        assert_eq!(framing(&[("Transfer-Encoding", "CHUNKED")]), Ok(B::Chunked));
        assert_eq!(
            framing(&[("transfer-encoding", "chunked"), ("content-length", "3")]),
            Err(E::LengthAndEncoding)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "chunked, gzip")]),
            Err(E::NotChunked)
        );
        assert_eq!(
            framing(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Err(E::NotChunked)
        );
        assert_eq!(framing(&[("transfer-encoding", "")]), Err(E::NotChunked));
        assert_eq!(
            framing(&[("transfer-encoding", "identity")]),
            Err(E::NotChunked)
        );
        assert_eq!(
            framing(&[("transfer-encoding", "gzip, chunked")]),
            Err(E::UnsupportedCoding)
        );
        assert_eq!(
            framing(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Err(E::UnsupportedCoding)
        );
    }

    proptest::proptest! {
        #[test]
        fn content_length_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = content_length(&bytes);
        }
    }
}
