//! A log output that never blocks the thread that logs: lines go into a bounded buffer that a
//! dedicated thread writes out; when the output does not keep up (a slow terminal, a pipe
//! nobody reads, a full disk) and the buffer is full, a line is dropped and counted
//! ([`crate::metric_names::ACCESS_LOG_DROPPED`] for access-log lines,
//! [`crate::metric_names::LOG_DROPPED`] for the others), so the runtime's threads never wait
//! on the log and memory stays bounded (twice the capacity: the buffer being filled and the
//! one being written).
//!
//! Lines are written in batches: once a line arrives, the writing thread lets more gather for
//! up to [`LogWriter::LINGER`] (10 ms, less when the buffer is half full, a flush waits or the
//! last handle is gone) and writes them with one call. Under load that is a few system calls
//! every 10 ms instead of a wake-up of the writing thread and a write per line; a line reaches
//! the output about 10 ms after it was logged (plus the time of a write still in progress when
//! it was; nginx's `access_log … buffer= flush=` makes the same trade).
//!
//! ```
//! let log = fluxlit_gateway::LogWriter::new(std::io::sink(), fluxlit_gateway::LogWriter::DEFAULT_CAPACITY)
//!     .expect("a thread for the log");
//! let subscriber = tracing_subscriber::fmt().with_writer(log.clone()).finish();
//! tracing::subscriber::with_default(subscriber, || tracing::info!("hello"));
//! assert!(log.flush(std::time::Duration::from_secs(5)));
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::observe::names;

/// The target of access-log lines (their drops are counted apart).
const ACCESS_TARGET: &str = "fluxlit::access";

/// A bounded, non-blocking log output (a `tracing_subscriber` writer). Cheap to clone; clones
/// share the buffer and the writing thread, which ends once every clone is dropped and what
/// was buffered is written.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("capacity", &self.shared.capacity)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// Log lines dropped so far (see [`LogWriter::dropped`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedLines {
    /// Access-log lines (`fluxlit::access`).
    pub access: u64,
    /// Every other line.
    pub other: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the buffer stops being empty, or when the last handle is dropped.
    ready: Condvar,
    /// Signalled when the writing thread has written a batch.
    written: Condvar,
    /// Bytes the buffer may hold.
    capacity: usize,
    dropped_access: AtomicU64,
    dropped_other: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Whole lines waiting for the writing thread.
    pending: Vec<u8>,
    /// Lines in `pending`: (access, other), to count them if the output fails.
    lines: (u64, u64),
    /// The writing thread holds a batch it has not finished writing.
    writing: bool,
    /// Every handle is gone: write what is left and end.
    closed: bool,
    /// The writing thread waits for a first line (a push wakes it).
    idle: bool,
    /// The writing thread lets lines gather before writing them (a push wakes it only when it
    /// fills half the buffer).
    lingering: bool,
    /// Callers of [`LogWriter::flush`] waiting for the buffer to be written.
    flushers: usize,
}

/// Held by every handle; the last one dropped lets the writing thread end.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers one line, or drops and counts it when it does not fit.
    fn push(&self, line: &[u8], access: bool) {
        let mut st = self.lock();
        if st.pending.len() + line.len() > self.capacity {
            drop(st);
            self.count_dropped(access, 1);
            return;
        }
        let half = self.capacity / 2;
        let below_half = st.pending.len() < half;
        st.pending.extend_from_slice(line);
        if access {
            st.lines.0 += 1;
        } else {
            st.lines.1 += 1;
        }
        // One wake-up per batch at most: when the thread waits for a first line, or when a
        // line fills half the buffer while it lingers.
        let wake = st.idle || (st.lingering && below_half && st.pending.len() >= half);
        st.idle = false;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    fn count_dropped(&self, access: bool, n: u64) {
        if n == 0 {
            return;
        }
        if access {
            self.dropped_access.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(names::ACCESS_LOG_DROPPED).increment(n);
        } else {
            self.dropped_other.fetch_add(n, Ordering::Relaxed);
            metrics::counter!(names::LOG_DROPPED).increment(n);
        }
    }

    /// The writing thread: waits for a line, lets more gather for up to [`LogWriter::LINGER`],
    /// takes the whole buffer at once and writes it with as few system calls as `out` allows,
    /// until every handle is gone and nothing is left.
    fn run(&self, mut out: impl Write, linger: Duration) {
        let mut batch = Vec::new();
        loop {
            let lines = {
                let mut st = self.lock();
                st.writing = false;
                if st.flushers > 0 {
                    self.written.notify_all();
                }
                while st.pending.is_empty() && !st.closed {
                    st.idle = true;
                    st = self.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                st.idle = false;
                if st.pending.is_empty() {
                    return;
                }
                let until = Instant::now() + linger;
                while !st.closed && st.flushers == 0 && st.pending.len() < self.capacity / 2 {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st.lingering = true;
                    st = self
                        .ready
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                st.lingering = false;
                std::mem::swap(&mut st.pending, &mut batch);
                st.writing = true;
                std::mem::take(&mut st.lines)
            };
            if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                self.count_dropped(true, lines.0);
                self.count_dropped(false, lines.1);
            }
            batch.clear();
        }
    }
}

impl LogWriter {
    /// The default capacity of the buffer, bytes (1 MiB: about 3,000 JSON access-log lines).
    pub const DEFAULT_CAPACITY: usize = 1024 * 1024;

    /// How long the writing thread lets lines gather after the first one before writing them
    /// (10 ms): the most a line waits in the buffer while the output keeps up.
    pub const LINGER: Duration = Duration::from_millis(10);

    /// Starts a thread (`fluxlit-log`) writing to `out` what the handles buffer, up to
    /// `capacity` bytes at a time (a line longer than that is dropped). Errors when the thread
    /// cannot be started.
    pub fn new(out: impl Write + Send + 'static, capacity: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            written: Condvar::new(),
            capacity,
            dropped_access: AtomicU64::new(0),
            dropped_other: AtomicU64::new(0),
        });
        let thread = shared.clone();
        std::thread::Builder::new()
            .name("fluxlit-log".into())
            .spawn(move || thread.run(out, Self::LINGER))?;
        Ok(Self {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Buffers one whole access-log line (`fluxlit::access`), or drops and counts it.
    pub(crate) fn push_access(&self, line: &[u8]) {
        self.shared.push(line, true);
    }

    /// Lines dropped so far because the buffer was full or the output failed.
    pub fn dropped(&self) -> DroppedLines {
        DroppedLines {
            access: self.shared.dropped_access.load(Ordering::Relaxed),
            other: self.shared.dropped_other.load(Ordering::Relaxed),
        }
    }

    /// Waits at most `timeout` until every line buffered so far has been written out (for
    /// the end of a run: the last lines are not lost). Returns whether they were.
    pub fn flush(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let mut st = self.shared.lock();
        st.flushers += 1;
        // Cut the writing thread's linger short.
        self.shared.ready.notify_one();
        let mut done = true;
        while !st.pending.is_empty() || st.writing {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                done = false;
                break;
            }
            st = self
                .shared
                .written
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.flushers -= 1;
        done
    }
}

/// One line's writer (tracing's formatter writes each event with one `write_all`).
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
    access: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Write for LineWriter<'_> {
    /// Buffers `buf` (or drops it when the buffer is full): never blocks, never fails.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(buf, self.access);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            access: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            access: meta.target() == ACCESS_TARGET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe nobody reads: the writing thread blocks once the pipe is full, the buffer
    /// fills, and further lines are dropped and counted at once.
    #[test]
    fn a_stuck_output_drops_lines_without_blocking() {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        let log = LogWriter::new(writer, 4096).expect("the log thread");
        let line = [b'x'; 99];
        let mut access = LineWriter {
            shared: &log.shared,
            access: true,
        };
        // Until the pipe is full: the writing thread then cannot drain the buffer (a pipe
        // holds 1 MiB at most by default, `/proc/sys/fs/pipe-max-size`).
        let mut stuck = false;
        for _ in 0..200 {
            for _ in 0..100 {
                access.write_all(&line).expect("never fails");
            }
            if !log.flush(Duration::from_millis(100)) {
                stuck = true;
                break;
            }
        }
        assert!(stuck, "the pipe filled up");
        let before = log.dropped();
        let started = Instant::now();
        for _ in 0..1000 {
            access.write_all(&line).expect("never fails");
        }
        let mut other = LineWriter {
            shared: &log.shared,
            access: false,
        };
        other.write_all(&line).expect("never fails");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "writing never waits for the output"
        );
        let d = log.dropped();
        assert!(
            d.access - before.access >= 1000 - 4096 / 99,
            "all but what the buffer held dropped: {before:?} then {d:?}"
        );
        assert_eq!(d.other, 1, "the other line dropped too: {d:?}");
        drop(reader);
    }

    /// Lines logged in a burst are written together, not one write per line: the writing
    /// thread lingers after the first line (before batching, each line woke the thread and
    /// was written alone, which cost the access log a futex wake and a write per request).
    #[test]
    fn a_burst_of_lines_is_written_in_a_few_batches() {
        #[derive(Clone, Default)]
        struct Calls(Arc<Mutex<(usize, usize)>>);
        impl Write for Calls {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let mut c = self.0.lock().expect("calls");
                c.0 += 1;
                c.1 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Calls::default();
        let log = LogWriter::new(out.clone(), 1 << 20).expect("the log thread");
        let line = [b'x'; 299];
        let started = Instant::now();
        for _ in 0..2000 {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&log);
            w.write_all(&line).expect("never fails");
            // Give the writing thread every chance to run between lines.
            std::thread::yield_now();
        }
        let took = started.elapsed();
        assert!(log.flush(Duration::from_secs(10)), "drained");
        let (writes, bytes) = *out.0.lock().expect("calls");
        assert_eq!(bytes, 2000 * 299, "every line written");
        // One batch per linger at most (two for margin), however long a loaded machine took
        // to log the lines; one write per line before batching.
        let linger_ms = LogWriter::LINGER.as_millis().max(1);
        let allowed = 4 + 2 * (took.as_millis() / linger_ms);
        assert!(
            (writes as u128) <= allowed,
            "2,000 lines in {writes} writes over {took:?} (at most {allowed})"
        );
    }

    /// An output that keeps up gets every line, in order, whole.
    #[test]
    fn lines_reach_the_output_in_order() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("sink").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let log = LogWriter::new(sink.clone(), 1 << 20).expect("the log thread");
        for i in 0..1000 {
            let mut w = tracing_subscriber::fmt::MakeWriter::make_writer(&log);
            writeln!(w, "line {i}").expect("never fails");
        }
        assert!(log.flush(Duration::from_secs(10)), "drained");
        let text = String::from_utf8(sink.0.lock().expect("sink").clone()).expect("text");
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(log.dropped(), DroppedLines::default());
    }
}
