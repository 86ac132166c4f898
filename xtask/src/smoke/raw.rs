//! Raw HTTP/1.1 over one connection to an edge (TCP, or TLS through `openssl s_client`): bytes
//! written exactly as given, which no client library would send (`Connection: keep-alive,
//! Content-Length`), and responses read strictly one after the other, so that a response
//! answering the wrong request, or one too many, shows. Every read is bounded.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{Conn, Endpoint};

/// Longest a single read or write may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body read.
const MAX_BODY: usize = 1024 * 1024;

/// One response as read off the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawResponse {
    /// The status code.
    pub(crate) status: u16,
    /// The header fields in order, names lowercased.
    pub(crate) headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON, or `Value::Null`.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `status` plus the start of the body, for reports.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} {}",
            self.status,
            super::client::snippet(&String::from_utf8_lossy(&self.body), 120)
        )
    }

    /// Whether the server said it closes the connection after this response.
    pub(crate) fn closes(&self) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// The outcome of parsing the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole response, and how many bytes of the buffer it took.
    Done(RawResponse, usize),
}

/// Finds `needle` in `hay` from `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Parses one response at the start of `buf`; `eof` says the peer has closed, which ends a
/// body that has neither `Content-Length` nor chunked framing.
fn parse(buf: &[u8], eof: bool) -> Result<Parsed, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n", 0) else {
        return if buf.len() > MAX_HEAD {
            Err(format!("a response head longer than {MAX_HEAD} bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body_start = head_end + 4;
    let response = |body: Vec<u8>| RawResponse {
        status,
        headers: headers.clone(),
        body,
    };
    // Interim responses (100 Continue) have no body; the caller reads the next one.
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Parsed::Done(response(Vec::new()), body_start));
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        let mut at = body_start;
        loop {
            let Some(line_end) = find(buf, b"\r\n", at) else {
                return Ok(Parsed::Incomplete);
            };
            let size_text = String::from_utf8_lossy(&buf[at..line_end]);
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            at = line_end + 2;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let Some(end) = find(buf, b"\r\n", at) else {
                        return Ok(Parsed::Incomplete);
                    };
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        return Ok(Parsed::Done(response(body), at));
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                return Err(format!("a response body above {MAX_BODY} bytes"));
            }
            if buf.len() < at + size + 2 {
                return Ok(Parsed::Incomplete);
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    if let Some(length) = value("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad Content-Length {length:?}"))?;
        if length > MAX_BODY {
            return Err(format!("a response body of {length} bytes"));
        }
        return if buf.len() >= body_start + length {
            Ok(Parsed::Done(
                response(buf[body_start..body_start + length].to_vec()),
                body_start + length,
            ))
        } else {
            Ok(Parsed::Incomplete)
        };
    }
    // Delimited by the end of the connection.
    if eof {
        Ok(Parsed::Done(
            response(buf[body_start..].to_vec()),
            buf.len(),
        ))
    } else if buf.len() - body_start > MAX_BODY {
        Err(format!("a response body above {MAX_BODY} bytes"))
    } else {
        Ok(Parsed::Incomplete)
    }
}

/// One connection to an edge, written to and read from as bytes.
pub(crate) struct RawConn {
    conn: Conn,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    /// Connects to `endpoint` (TLS when it is a TLS edge).
    pub(crate) async fn open(endpoint: &Endpoint) -> Result<Self, String> {
        Ok(Self {
            conn: endpoint.connect().await?,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Writes `bytes` as they are.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.conn.write_all(bytes).await?;
            self.conn.flush().await
        })
        .await
        .map_err(|_| format!("writing {} bytes took over {IO_TIMEOUT:?}", bytes.len()))?
        .map_err(|e| format!("writing: {e}"))
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, self.conn.read(&mut chunk))
            .await
            .map_err(|_| format!("no bytes within {IO_TIMEOUT:?}"))?
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next final response (interim 1xx ones are skipped), or `None` when the connection
    /// ended before any byte of one.
    pub(crate) async fn response(&mut self) -> Result<Option<RawResponse>, String> {
        loop {
            match parse(&self.buf, self.eof)? {
                Parsed::Done(resp, used) => {
                    self.buf.drain(..used);
                    if (100..200).contains(&resp.status) {
                        continue;
                    }
                    return Ok(Some(resp));
                }
                Parsed::Incomplete if self.eof => {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err(format!(
                            "the connection ended inside a response: {:?}",
                            super::client::snippet(&String::from_utf8_lossy(&self.buf), 120)
                        ))
                    };
                }
                Parsed::Incomplete => {
                    self.fill().await?;
                }
            }
        }
    }

    /// Whatever else arrives within `wait` or until the connection ends (bytes already
    /// buffered included): after the last expected response there must be nothing.
    pub(crate) async fn rest(&mut self, wait: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.eof && tokio::time::Instant::now() < deadline {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.conn.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8], eof: bool) -> (RawResponse, usize) {
        match parse(buf, eof).expect("parses") {
            Parsed::Done(r, n) => (r, n),
            Parsed::Incomplete => panic!("incomplete: {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn reads_content_length_responses_one_after_the_other() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (first, used) = done(two, false);
        assert_eq!((first.status, first.body.as_slice()), (200, &b"ab"[..]));
        assert!(!first.closes());
        let (second, rest) = done(&two[used..], false);
        assert_eq!(second.status, 404);
        assert!(second.closes());
        assert_eq!(used + rest, two.len());
    }

    #[test]
    fn reads_chunked_and_close_delimited_bodies() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nX";
        let (r, used) = done(chunked, false);
        assert_eq!(r.body, b"abcde");
        assert_eq!(&chunked[used..], b"X");
        let closed = b"HTTP/1.0 400 Bad Request\r\n\r\n<html>bad</html>";
        assert_eq!(parse(closed, false), Ok(Parsed::Incomplete));
        assert_eq!(done(closed, true).0.body, b"<html>bad</html>");
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", false),
            Ok(Parsed::Incomplete)
        );
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
    }
}
