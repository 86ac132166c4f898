//! Raw-socket HTTP/1.1 test parts, for what a well-behaved client library would never send:
//! a [`RecordingUpstream`] that records every request it reads off the wire (as a plain server
//! parses them: `Content-Length` or chunked framing, nothing else) and answers with scripted
//! bytes, and a [`RawClient`] that writes bytes as given and reads responses strictly.
//!
//! Both parse with `httparse` and bound every wait ([`IO_TIMEOUT`]); both live on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a read waits for bytes before the test part gives up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest head either part reads, bytes.
const MAX_HEAD: usize = 256 * 1024;

/// One request as the upstream read it off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Which accepted connection it came on (0 for the first).
    pub conn: usize,
    /// Method, as sent.
    pub method: String,
    /// Request target, as sent.
    pub target: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
}

impl Recorded {
    /// Every value of the field `name` (ASCII case-insensitive), as text.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The first value of the field `name`, if any.
    pub fn get(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }

    /// Whether a field named `name` is present.
    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}

/// What the upstream writes back for one request.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Writes, in order (each one `write_all`, flushed before the next).
    pub writes: Vec<Vec<u8>>,
    /// Close the connection after writing.
    pub close: bool,
}

impl Reply {
    /// `200 OK` with `Content-Length` and `body`.
    pub fn ok(body: &[u8]) -> Self {
        let mut w = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        w.extend_from_slice(body);
        Self {
            writes: vec![w],
            close: false,
        }
    }

    /// These exact bytes, then keep the connection open.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            writes: vec![bytes.into()],
            close: false,
        }
    }
}

type Responder = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A raw HTTP/1.1 upstream that records every request it reads; stops when dropped.
///
/// By default it answers each request with `200` and the body `{method} {target}`, so a
/// response tells which request it answers.
pub struct RecordingUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    replied: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RecordingUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default answer: `200`, body `{method} {target}`.
pub fn echo_line(r: &Recorded) -> Reply {
    Reply::ok(format!("{} {}", r.method, r.target).as_bytes())
}

impl RecordingUpstream {
    /// Starts on `127.0.0.1:0`, answering with [`echo_line`].
    pub async fn start() -> Self {
        Self::with(echo_line).await
    }

    /// Starts on `127.0.0.1:0`, answering each request with `respond(request)`.
    pub async fn with(respond: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recording upstream");
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let replied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let respond: Arc<Responder> = Arc::new(respond);
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (l, a, w, o) = (log.clone(), accepted.clone(), replied.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Every write goes out at once (no Nagle delay behind an unacknowledged one).
                let _ = stream.set_nodelay(true);
                let conn = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                o.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (l, w, o, respond) = (l.clone(), w.clone(), o.clone(), respond.clone());
                tokio::spawn(async move {
                    serve(stream, conn, l, w, respond).await;
                    o.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            log,
            accepted,
            replied,
            open,
            task,
        }
    }

    /// Every request read so far, in the order they were read.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// How many of its connections are open now (the gateway has not closed them).
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (bounded) until every write of at least `n` replies is done (bytes an upstream
    /// sends after its response are then on their way to the gateway).
    pub async fn wait_replied(&self, n: usize) {
        crate::eventually(IO_TIMEOUT, &format!("{n} repl(ies) written"), || {
            let done = self.replied.load(std::sync::atomic::Ordering::SeqCst) >= n;
            async move { done.then_some(()) }
        })
        .await;
    }

    /// Waits (bounded) until at least `n` requests were read; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        crate::eventually(
            IO_TIMEOUT,
            &format!("{n} request(s) at the upstream"),
            || {
                let r = self.requests();
                async move { (r.len() >= n).then_some(r) }
            },
        )
        .await
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    log: Arc<Mutex<Vec<Recorded>>>,
    replied: Arc<std::sync::atomic::AtomicUsize>,
    respond: Arc<Responder>,
) {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let Some(req) = read_request(&mut stream, &mut buf, conn).await else {
            return;
        };
        let reply = respond(&req);
        if let Ok(mut l) = log.lock() {
            l.push(req);
        }
        for w in &reply.writes {
            if stream.write_all(w).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
        replied.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if reply.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads more bytes into `buf`; `false` at end of stream, on an error or after [`IO_TIMEOUT`].
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// The length of the complete head at the start of `buf`, if there is one.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Recorded> {
    let head_len = loop {
        if let Some(n) = head_end(buf) {
            break n;
        }
        // Between requests it waits as long as the gateway keeps the connection (a real
        // upstream's keep-alive is the gateway's to manage); inside one, [`IO_TIMEOUT`].
        let more = if buf.is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    true
                }
                _ => false,
            }
        } else {
            buf.len() <= MAX_HEAD && fill(stream, buf).await
        };
        if !more {
            return None;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(&buf[..head_len]) else {
        return None;
    };
    let method = req.method.unwrap_or("").to_owned();
    let target = req.path.unwrap_or("").to_owned();
    let fields: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    buf.drain(..head_len);
    let chunked = fields.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(v)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let length: usize = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .unwrap_or(0);
    let body = if chunked {
        read_chunked(stream, buf).await?
    } else {
        while buf.len() < length {
            if !fill(stream, buf).await {
                return None;
            }
        }
        buf.drain(..length).collect()
    };
    Some(Recorded {
        conn,
        method,
        target,
        headers: fields,
        body,
    })
}

/// Decodes a chunked body (RFC 9112 §7.1) from `buf` and `stream`; trailers are skipped.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if !fill(stream, buf).await {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailer lines up to the empty line.
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !fill(stream, buf).await {
                        return None;
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// A response as a strict client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of the field `name` (lower-case).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of the field `name` (lower-case), if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client that writes bytes as given and reads responses strictly (RFC 9112 §6.3 framing).
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads one response; `head_request` when it answers a HEAD (no body whatever its fields
    /// say). `None` when the connection ended (or stalled for [`IO_TIMEOUT`]) before a complete
    /// response; a body without framing is read until the connection closes.
    pub async fn response(&mut self, head_request: bool) -> Option<RawResponse> {
        loop {
            let head_len = loop {
                if let Some(n) = head_end(&self.buf) {
                    break n;
                }
                if self.buf.len() > MAX_HEAD || !fill(&mut self.stream, &mut self.buf).await {
                    return None;
                }
            };
            let mut headers = [httparse::EMPTY_HEADER; 256];
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(_)) = resp.parse(&self.buf[..head_len]) else {
                return None;
            };
            let status = resp.code.unwrap_or(0);
            let fields: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            self.buf.drain(..head_len);
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            let body = if head_request || status == 101 || status == 204 || status == 304 {
                Vec::new()
            } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                read_chunked(&mut self.stream, &mut self.buf).await?
            } else if let Some(n) = get("content-length") {
                let n: usize = n.trim().parse().ok()?;
                while self.buf.len() < n {
                    if !fill(&mut self.stream, &mut self.buf).await {
                        return None;
                    }
                }
                self.buf.drain(..n).collect()
            } else {
                while fill(&mut self.stream, &mut self.buf).await {}
                std::mem::take(&mut self.buf)
            };
            return Some(RawResponse {
                status,
                headers: fields,
                body,
            });
        }
    }

    /// Whether the peer closed the connection (end of stream or reset) within [`IO_TIMEOUT`],
    /// with no bytes left unread.
    pub async fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1024];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&b[..n]);
                false
            }
            Err(_) => false,
        }
    }

    /// The underlying stream, for tests that need to half-close or read raw.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// One request as a [`ScriptedUpstream`] read it off the wire: the exact bytes, head and body
/// (a chunked body as sent, chunk lines and trailers included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReceived {
    /// Which accepted connection it came on (0 for the first).
    pub conn: usize,
    /// The bytes read for this request so far.
    pub bytes: Vec<u8>,
    /// Whether the request was read to its end (by its `Content-Length` or chunked framing);
    /// `false` when the connection ended or stalled for [`IO_TIMEOUT`] inside it, or its head
    /// did not parse.
    pub complete: bool,
}

/// A raw HTTP/1.1 upstream that records the exact bytes of every request it reads and answers
/// each one with the current scripted [`Reply`] (settable between requests with
/// [`ScriptedUpstream::set_reply`]); stops when dropped.
///
/// A request ends where its framing says (`Transfer-Encoding` whose final coding is `chunked`,
/// else `Content-Length`, else no body); an entry is logged as soon as its head is read and
/// grows with its body, so a request whose body never completes is still seen.
pub struct ScriptedUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    log: Arc<Mutex<Vec<RawReceived>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedUpstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedUpstream {
    /// Starts on `127.0.0.1:0`, answering every request with `reply` until told otherwise.
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted upstream");
        let addr = listener.local_addr().expect("local addr");
        let reply = Arc::new(Mutex::new(reply));
        let log = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, l, a) = (reply.clone(), log.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve_scripted(stream, conn, l.clone(), r.clone()));
            }
        });
        Self {
            addr,
            reply,
            log,
            accepted,
            task,
        }
    }

    /// Answers the requests read from now on with `reply`.
    pub fn set_reply(&self, reply: Reply) {
        if let Ok(mut r) = self.reply.lock() {
            *r = reply;
        }
    }

    /// Every request read so far (complete or not), in the order their heads were read.
    pub fn received(&self) -> Vec<RawReceived> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every request read so far, and forgets them.
    pub fn take(&self) -> Vec<RawReceived> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A chunked body that breaks RFC 9112 §7.1 (see [`chunked_body_len`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedChunked;

/// Where a chunked body at the start of `buf` ends (RFC 9112 §7.1): `Ok(Some(len))` when it is
/// complete in `buf`, `Ok(None)` when more bytes are needed.
///
/// # Errors
/// [`MalformedChunked`] for a chunk-size line that is not 1 to 15 hex digits (extensions after
/// `;` are skipped) or chunk data not followed by CRLF. Trailer fields are skipped unread.
pub fn chunked_body_len(buf: &[u8]) -> Result<Option<usize>, MalformedChunked> {
    let line = |from: usize| -> Option<usize> {
        buf.get(from..)?
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
    };
    let mut at = 0;
    // Bounded: every chunk advances `at` by at least three bytes.
    loop {
        let Some(end) = line(at) else {
            return Ok(None);
        };
        let size_text = buf[at..end]
            .split(|b| *b == b';')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(MalformedChunked);
        }
        let size = usize::from_str_radix(
            std::str::from_utf8(size_text).map_err(|_| MalformedChunked)?,
            16,
        )
        .map_err(|_| MalformedChunked)?;
        at = end + 2;
        if size == 0 {
            // Trailer lines up to the empty line.
            loop {
                let Some(end) = line(at) else {
                    return Ok(None);
                };
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(MalformedChunked);
        }
        at += size + 2;
    }
}

/// How the body of the request whose head is `head` is framed: `Some(None)` chunked,
/// `Some(Some(n))` `n` bytes, `None` when the head does not parse.
fn scripted_framing(head: &[u8]) -> Option<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
        return None;
    };
    let chunked = req
        .headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .is_some_and(|h| {
            h.value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        });
    if chunked {
        return Some(None);
    }
    let length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    Some(Some(length))
}

async fn serve_scripted(
    mut stream: TcpStream,
    conn: usize,
    log: Arc<Mutex<Vec<RawReceived>>>,
    reply: Arc<Mutex<Reply>>,
) {
    let mut buf = Vec::with_capacity(8192);
    // Bounded: each pass reads one request (or ends the connection).
    loop {
        let head_len = loop {
            if let Some(n) = head_end(&buf) {
                break n;
            }
            // Between requests it waits as long as the gateway keeps the connection.
            let more = if buf.is_empty() {
                let mut chunk = [0u8; 16 * 1024];
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => {
                        buf.extend_from_slice(&chunk[..n]);
                        true
                    }
                    _ => false,
                }
            } else {
                buf.len() <= MAX_HEAD && fill(&mut stream, &mut buf).await
            };
            if !more {
                if !buf.is_empty()
                    && let Ok(mut l) = log.lock()
                {
                    l.push(RawReceived {
                        conn,
                        bytes: std::mem::take(&mut buf),
                        complete: false,
                    });
                }
                return;
            }
        };
        let index = match log.lock() {
            Ok(mut l) => {
                l.push(RawReceived {
                    conn,
                    bytes: buf[..head_len].to_vec(),
                    complete: false,
                });
                l.len() - 1
            }
            Err(_) => return,
        };
        let record = |bytes: &[u8], complete: bool| {
            if let Ok(mut l) = log.lock()
                && let Some(e) = l.get_mut(index)
            {
                e.bytes.extend_from_slice(bytes);
                e.complete = complete;
            }
        };
        let Some(framing) = scripted_framing(&buf[..head_len]) else {
            return;
        };
        buf.drain(..head_len);
        let body_len = loop {
            let wanted = match framing {
                Some(n) => (buf.len() >= n).then_some(n),
                None => match chunked_body_len(&buf) {
                    Ok(n) => n,
                    Err(MalformedChunked) => {
                        record(&buf, false);
                        return;
                    }
                },
            };
            if let Some(n) = wanted {
                break n;
            }
            if !fill(&mut stream, &mut buf).await {
                record(&buf, false);
                return;
            }
        };
        record(&buf[..body_len], true);
        buf.drain(..body_len);
        let reply = match reply.lock() {
            Ok(r) => r.clone(),
            Err(_) => return,
        };
        for w in &reply.writes {
            if stream.write_all(w).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
        if reply.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}
