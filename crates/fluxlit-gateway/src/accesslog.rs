//! The access log's line written straight into a [`LogWriter`], without `tracing`'s
//! formatter: the same bytes `tracing_subscriber`'s JSON formatter (`.json().flatten_event(true)
//! .with_current_span(false)`) or its default text formatter (ANSI off) writes for the
//! `fluxlit::access` event, for a fraction of the work. Measured with callgrind on GET 1 KiB
//! through the fast path (docs/performance.md): the `tracing` JSON line cost about 27,000
//! instructions per request, more than the rest of the request's user-space work together
//! (fmt adaptors checking UTF-8 on every fragment, the timestamp through `fmt::Write`).
//!
//! The log filter still decides: a line is written only when `tracing` would let an
//! `INFO` event of target `fluxlit::access` with the event's field names through
//! (`tracing::event_enabled!`, so that `log_level` directives naming fields decide alike).

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use crate::LogWriter;
use crate::observe::{Record, RedactedQuery};

/// The access log's line format (FluxLit's `log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessLogFormat {
    /// One JSON object per line, the fields flattened, as `tracing_subscriber`'s JSON
    /// formatter with `flatten_event(true)` and no span writes them.
    Json,
    /// `tracing_subscriber`'s default text format without ANSI colours: timestamp, level,
    /// target, message, then `key=value` fields.
    Text,
}

/// Where the gateway writes its access-log lines itself (see the module doc): a
/// [`LogWriter`] (bounded, never blocks the runtime; drops counted) and the line format.
/// Set it with [`crate::GatewayBuilder::access_log_sink`] to the writer the process's
/// `tracing` subscriber writes to, in that subscriber's format; without it, the access log
/// goes through `tracing` like every other line.
#[derive(Debug, Clone)]
pub struct AccessLogSink {
    writer: LogWriter,
    format: AccessLogFormat,
}

/// A line longer than this (bytes) does not keep its buffer for the next request.
const KEEP_LINE_BUFFER: usize = 16 * 1024;

thread_local! {
    /// The line being formatted, reused by the thread's next request.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl AccessLogSink {
    /// Lines in `format`, into `writer`.
    pub fn new(writer: LogWriter, format: AccessLogFormat) -> Self {
        Self { writer, format }
    }

    /// Writes `r`'s line when the log filter lets `fluxlit::access` at `INFO` through.
    pub(crate) fn write(&self, r: &Record<'_>) {
        // Asked as the event itself would be (an event, its target, level and field names),
        // so that `log_level` directives naming fields (`[{field}]`) decide alike.
        if !tracing::event_enabled!(
            target: "fluxlit::access",
            tracing::Level::INFO,
            message,
            request_id,
            fluxlit_dispatch,
            http_method_or_type,
            path,
            query,
            status,
            bytes_in,
            bytes_out,
            duration_ms,
            client_ip,
            upstream,
            worker
        ) {
            return;
        }
        let now = SystemTime::now();
        let emit = |line: &mut Vec<u8>| {
            line.clear();
            match self.format {
                AccessLogFormat::Json => json_line(line, r, now),
                AccessLogFormat::Text => text_line(line, r, now),
            }
            self.writer.push_access(line);
        };
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                emit(&mut line);
                if line.capacity() > KEEP_LINE_BUFFER {
                    *line = Vec::new();
                }
            }
            // Only if formatting re-entered this (it does not): a buffer of its own.
            Err(_) => emit(&mut Vec::new()),
        });
    }
}

/// What `http_method_or_type` and the message say: the method, or `websocket`/`WEBSOCKET`.
fn method_or_type<'a>(r: &'a Record<'_>, websocket: &'static str) -> &'a str {
    if r.websocket {
        websocket
    } else {
        r.method.as_str()
    }
}

/// The JSON line: `{"timestamp":…,"level":"INFO","message":…,<fields>,"target":…}` and a
/// newline, the fields in the order the event declares them (`Record::report`).
pub(crate) fn json_line(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"");
    // "{method} {path} {status}", escaped.
    json_escape(out, method_or_type(r, "WEBSOCKET"));
    out.push(b' ');
    json_escape(out, r.path);
    out.push(b' ');
    int(out, u64::from(r.status));
    out.extend_from_slice(b"\",\"request_id\":");
    json_str(out, r.request_id.to_str().unwrap_or(""));
    out.extend_from_slice(b",\"fluxlit_dispatch\":");
    json_str(out, r.dispatch);
    out.extend_from_slice(b",\"http_method_or_type\":");
    json_str(out, method_or_type(r, "websocket"));
    out.extend_from_slice(b",\"path\":");
    json_str(out, r.path);
    out.extend_from_slice(b",\"query\":\"");
    if r.query.is_some_and(|q| !q.is_empty()) {
        let mut esc = JsonEscaped(out);
        let _ = std::fmt::Write::write_fmt(&mut esc, format_args!("{}", RedactedQuery(r.query)));
    }
    out.extend_from_slice(b"\",\"status\":");
    int(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes_in\":");
    int(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    int(out, r.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    // `serde_json`'s own number format (what the `tracing` formatter writes): shortest
    // round-trip digits, `null` for a non-finite value.
    let _ = serde_json::to_writer(&mut *out, &duration_ms(r));
    out.extend_from_slice(b",\"client_ip\":\"");
    let _ = write!(out, "{}", r.client_ip);
    out.extend_from_slice(b"\",\"upstream\":");
    json_str(out, r.upstream.unwrap_or("-"));
    if let Some(w) = r.worker {
        out.extend_from_slice(b",\"worker\":");
        int(out, w as u64);
    }
    out.extend_from_slice(b",\"target\":\"fluxlit::access\"}\n");
}

/// The text line: `<timestamp>  INFO fluxlit::access: <message> key=value…` and a newline.
/// As `tracing_subscriber`'s default visitor writes them: strings quoted and escaped by
/// `Debug`, displayed values as they are, numbers by `Debug`, the message with terminal
/// control characters escaped.
pub(crate) fn text_line(out: &mut Vec<u8>, r: &Record<'_>, now: SystemTime) {
    timestamp(out, now);
    out.extend_from_slice(b"  INFO fluxlit::access: ");
    {
        let mut esc = TerminalEscaped(out);
        let _ = std::fmt::Write::write_fmt(
            &mut esc,
            format_args!("{} {} {}", method_or_type(r, "WEBSOCKET"), r.path, r.status),
        );
    }
    let _ = write!(
        out,
        " request_id={:?} fluxlit_dispatch={:?} http_method_or_type={:?} path={} query={} status={} bytes_in={} bytes_out={} duration_ms={:?} client_ip={} upstream={:?}",
        r.request_id.to_str().unwrap_or(""),
        r.dispatch,
        method_or_type(r, "websocket"),
        r.path,
        RedactedQuery(r.query),
        r.status,
        r.bytes_in,
        r.bytes_out,
        duration_ms(r),
        r.client_ip,
        r.upstream.unwrap_or("-"),
    );
    if let Some(w) = r.worker {
        let _ = write!(out, " worker={w}");
    }
    out.push(b'\n');
}

fn duration_ms(r: &Record<'_>) -> f64 {
    r.elapsed.as_secs_f64() * 1000.0
}

/// RFC 3339, UTC, microseconds: `2026-11-29T12:26:48.048604Z` (`tracing_subscriber`'s
/// `SystemTime` timer's format). The date and time up to the second are formatted (by
/// `humantime`) once per second and thread, then reused.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        /// (seconds since the epoch, `YYYY-MM-DDTHH:MM:SS.` for them).
        static SECOND: std::cell::Cell<(u64, [u8; 20])> =
            const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    // `humantime` formats 1970 to 9999 (and errs outside, which `write!` would turn into a
    // panic): a clock outside is written as the nearest end of that range.
    const LAST: Duration = Duration::from_micros(253_402_300_799_999_999);
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST);
    let now = SystemTime::UNIX_EPOCH + since;
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let mut full = Vec::with_capacity(27);
        let _ = write!(full, "{}", humantime::format_rfc3339_micros(now));
        match full.get(..20) {
            Some(p) if full.len() == 27 => {
                prefix.copy_from_slice(p);
                SECOND.set((secs, prefix));
            }
            // Not the usual shape (it always is in range): as formatted, not cached.
            _ => {
                out.extend_from_slice(&full);
                return;
            }
        }
    }
    out.extend_from_slice(&prefix);
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `s` as a JSON string, quotes included.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_escape(out, s);
    out.push(b'"');
}

/// `s`'s characters inside a JSON string, escaped as `serde_json` escapes them (RFC 8259 §7):
/// `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control characters below U+0020 as
/// `\u00XX` (lower-case hex); everything else as it is.
fn json_escape(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most values (paths, ids, names) need no escape: one scan, one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A `fmt::Write` that JSON-escapes what it is given into the line.
struct JsonEscaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        json_escape(self.0, s);
        Ok(())
    }
}

/// A `fmt::Write` that escapes the characters a terminal acts on, as `tracing_subscriber`
/// escapes a text line's message: ESC, BEL, BS, FF and DEL as `\xNN`, C1 controls
/// (U+0080–U+009F) as `\u{NN}`.
struct TerminalEscaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for TerminalEscaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for ch in s.chars() {
            match ch {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    let _ = write!(self.0, "\\x{:02x}", ch as u32);
                }
                '\u{80}'..='\u{9f}' => {
                    let _ = write!(self.0, "\\u{{{:x}}}", ch as u32);
                }
                _ => {
                    let mut utf8 = [0; 4];
                    self.0
                        .extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::LogRef;
    use http::{HeaderValue, Method};
    use std::sync::{Arc, Mutex};

    /// An output the tests read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("not poisoned").clone()).expect("UTF-8")
        }
    }

    /// The lines `report` writes for `records` under the CLI's subscriber in `format` with
    /// `log_level` = `filter`, through `tracing` (`sink` false) or through an
    /// [`AccessLogSink`].
    fn lines(records: &[Record<'_>], format: AccessLogFormat, filter: &str, sink: bool) -> String {
        let out = Captured::default();
        let log = LogWriter::new(out.clone(), LogWriter::DEFAULT_CAPACITY).expect("log thread");
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(log.clone());
        let dispatch = match format {
            AccessLogFormat::Json => tracing::Dispatch::new(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .finish(),
            ),
            AccessLogFormat::Text => tracing::Dispatch::new(builder.with_ansi(false).finish()),
        };
        let direct = AccessLogSink::new(log.clone(), format);
        tracing::dispatcher::with_default(&dispatch, || {
            for r in records {
                r.report(
                    Some(if sink {
                        LogRef::Sink(&direct)
                    } else {
                        LogRef::Tracing
                    }),
                    None,
                );
            }
        });
        assert!(log.flush(Duration::from_secs(10)), "the lines are written");
        out.text()
    }

    /// The line's timestamp (its first RFC 3339 value) replaced by `T`, checked for its shape.
    fn without_timestamps(text: &str) -> String {
        text.lines()
            .map(|l| {
                let at = l.find("20").expect("a timestamp");
                let ts = &l[at..at + 27];
                assert!(
                    humantime::parse_rfc3339(ts).is_ok()
                        && ts.ends_with('Z')
                        && ts.as_bytes()[19] == b'.',
                    "{ts:?} in {l}"
                );
                format!("{}T{}\n", &l[..at], &l[at + 27..])
            })
            .collect()
    }

    #[test]
    fn the_sink_writes_the_lines_tracing_writes() {
        let rid = HeaderValue::from_static("obs-\\1");
        let rid_bad = HeaderValue::from_bytes(b"caf\xc3\xa9").expect("a header value");
        let (get, post) = (Method::GET, Method::POST);
        let base = Record {
            elapsed: Duration::from_micros(1_234_567),
            request_id: &rid,
            dispatch: "streamlit",
            method: &get,
            websocket: false,
            path: "/page",
            query: Some("token=abc&x=1&code=&q=\"quoted\""),
            client_ip: "127.0.0.1".parse().expect("an address"),
            upstream: Some("ui"),
            worker: None,
            status: 200,
            bytes_in: 0,
            bytes_out: 26,
        };
        let records = [
            Record { ..base },
            Record {
                elapsed: Duration::from_nanos(1),
                method: &post,
                path: "/api/items/%22a%5C",
                query: None,
                dispatch: "api",
                upstream: Some("api"),
                status: 413,
                bytes_in: u64::MAX,
                client_ip: "::1".parse().expect("an address"),
                ..base
            },
            Record {
                websocket: true,
                status: 101,
                worker: Some(3),
                elapsed: Duration::from_secs(86_400),
                request_id: &rid_bad,
                upstream: None,
                path: "/_stcore/stream",
                query: Some(""),
                ..base
            },
            // Not a path either engine lets through, but the line must not care: quotes, a
            // backslash, terminal controls (escaped in the text line's message only).
            Record {
                path: "/a\"b\\c\u{1b}[31m\u{7}\u{9b}é",
                query: Some("k=\u{1b}\t"),
                ..base
            },
        ];
        for format in [AccessLogFormat::Json, AccessLogFormat::Text] {
            let traced = lines(&records, format, "info", false);
            let direct = lines(&records, format, "info", true);
            assert_eq!(traced.lines().count(), 4, "{traced}");
            assert_eq!(
                without_timestamps(&direct),
                without_timestamps(&traced),
                "{format:?}"
            );
            if format == AccessLogFormat::Json {
                for l in direct.lines() {
                    serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON");
                }
            }
        }
    }

    #[test]
    fn the_log_filter_still_decides() {
        let rid = HeaderValue::from_static("r");
        let r = Record {
            elapsed: Duration::ZERO,
            request_id: &rid,
            dispatch: "streamlit",
            method: &Method::GET,
            websocket: false,
            path: "/",
            query: None,
            client_ip: "127.0.0.1".parse().expect("an address"),
            upstream: None,
            worker: None,
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
        };
        // (log_level, whether the access line is written): target and level directives, and
        // directives naming fields the event has or has not (EnvFilter applies a field
        // directive only to events with that field).
        let cases = [
            ("info", true),
            ("warn", false),
            ("info,fluxlit::access=warn", false),
            ("warn,fluxlit::access=info", true),
            ("warn,fluxlit=info", true),
            ("warn,other=info", false),
            ("warn,[{error}]=debug", false),
            ("warn,[{status}]=info", true),
            ("info,fluxlit[{sidecar}]=warn", true),
            ("info,fluxlit[{upstream}]=warn", false),
        ];
        for format in [AccessLogFormat::Json, AccessLogFormat::Text] {
            for (filter, written) in cases {
                let traced = lines(&[r], format, filter, false).lines().count();
                let direct = lines(&[r], format, filter, true).lines().count();
                assert_eq!(traced, usize::from(written), "tracing, {filter:?}");
                assert_eq!(
                    direct, traced,
                    "the sink decides as tracing does, {filter:?}"
                );
            }
        }
    }

    #[test]
    fn json_escaping_is_serde_json_s() {
        let mut all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        all.push_str("é€😀\u{85}\u{2028}");
        for s in [all.as_str(), "", "plain", "a\"b\\c\u{1}", "\u{1f}\u{7f}"] {
            let mut ours = Vec::new();
            json_str(&mut ours, s);
            let theirs = serde_json::to_vec(s).expect("a string serializes");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{s:?}"
            );
        }
    }

    #[test]
    fn timestamps_are_humantime_s_rfc_3339_micros() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // The same second twice (cached), the next one, a leap day, the epoch.
        for t in [
            base + Duration::from_micros(7),
            base + Duration::from_micros(999_999),
            base + Duration::from_micros(1_000_000),
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_709_164_800)
                + Duration::from_nanos(1_500),
            SystemTime::UNIX_EPOCH,
        ] {
            let mut ours = Vec::new();
            timestamp(&mut ours, t);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
        let mut before = Vec::new();
        timestamp(&mut before, SystemTime::UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(
            before, b"1970-01-01T00:00:00.000000Z",
            "before 1970: the epoch"
        );
        let mut after = Vec::new();
        timestamp(
            &mut after,
            SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000),
        );
        assert_eq!(
            after, b"9999-12-31T23:59:59.999999Z",
            "after 9999: its last instant"
        );
    }

    #[test]
    fn terminal_escaping_covers_the_control_characters() {
        let mut out = Vec::new();
        let _ = std::fmt::Write::write_str(
            &mut TerminalEscaped(&mut out),
            "a\x1b[31mb\x07\x08\x0c\x7f\u{9b}é\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "a\\x1b[31mb\\x07\\x08\\x0c\\x7f\\u{9b}é\n"
        );
    }
}
