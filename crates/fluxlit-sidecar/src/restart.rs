//! When to restart a sidecar that exited on its own: exponential backoff with jitter, and
//! crash-loop detection over a sliding window.
//!
//! The policy is pure: the caller passes the time of the restart and the jitter, so the
//! schedule is deterministic under test. [`Backoff::record_now`] uses the clock for both.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Restart schedule for one sidecar.
///
/// The `n`-th restart within [`Backoff::window`] waits `initial × 2^(n-1)`, at most
/// [`Backoff::max`], then scaled by a jitter factor in `[1 - jitter, 1 + jitter)`. When
/// [`Backoff::crash_loop_restarts`] or more restarts fall within the window, the restart is
/// reported as a crash loop (it still happens; the caller says so in readiness and the log).
///
/// Defaults (the product's policy): 0.5 s doubling to 30 s, ±20 % jitter, crash loop at 5
/// restarts within 60 s.
///
/// ```
/// use std::time::{Duration, Instant};
/// use fluxlit_sidecar::Backoff;
///
/// let mut backoff = Backoff::default();
/// let t0 = Instant::now();
/// // Jitter 0.5 is the midpoint: no scaling.
/// assert_eq!(backoff.record(t0, 0.5).delay, Duration::from_millis(500));
/// assert_eq!(backoff.record(t0, 0.5).delay, Duration::from_secs(1));
/// assert!(!backoff.record(t0, 0.5).crash_loop);
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Delay before the first restart within the window, before jitter. Default: 0.5 s.
    pub initial: Duration,
    /// Upper bound of the delay before jitter. Default: 30 s.
    pub max: Duration,
    /// Relative jitter: the delay is scaled by a factor in `[1 - jitter, 1 + jitter)`; clamped
    /// to `0.0..=1.0`. Default: 0.2 (±20 %).
    pub jitter: f64,
    /// Restarts older than this are forgotten (they no longer raise the delay or count towards a
    /// crash loop). Default: 60 s.
    pub window: Duration,
    /// This many restarts within [`Backoff::window`] (the current one included) is a crash loop.
    /// Default: 5.
    pub crash_loop_restarts: usize,
    times: VecDeque<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.2,
            window: Duration::from_secs(60),
            crash_loop_restarts: 5,
            times: VecDeque::new(),
        }
    }
}

/// What [`Backoff::record`] decided for one restart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Restart {
    /// How long to wait before starting the sidecar again.
    pub delay: Duration,
    /// Restarts within the window, this one included (at least 1).
    pub recent: usize,
    /// Whether `recent` reached [`Backoff::crash_loop_restarts`].
    pub crash_loop: bool,
}

impl Backoff {
    /// Records a restart at `now` and returns its delay and whether the sidecar is
    /// crash-looping. `noise` (in `[0, 1)`; other values are clamped) picks the jitter factor:
    /// 0 is the shortest delay, 0.5 no scaling. `now` should not go backwards between calls (an
    /// earlier `now` keeps the restarts recorded after it).
    pub fn record(&mut self, now: Instant, noise: f64) -> Restart {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        let recent = self.times.len();
        let doublings = u32::try_from(recent - 1).unwrap_or(u32::MAX).min(16);
        let base = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let noise = if noise.is_finite() {
            noise.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let delay = base.mul_f64(1.0 - jitter + 2.0 * jitter * noise);
        Restart {
            delay,
            recent,
            crash_loop: recent >= self.crash_loop_restarts,
        }
    }

    /// [`Backoff::record`] at [`Instant::now`], with jitter from the clock's sub-second noise
    /// mixed with the process id (no random number generator needed for this).
    pub fn record_now(&mut self) -> Restart {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let noise = f64::from((nanos ^ std::process::id()) % 1000) / 1000.0;
        self.record(Instant::now(), noise)
    }

    /// Restarts currently within the window (as of the last [`Backoff::record`]).
    pub fn recent(&self) -> usize {
        self.times.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn delay_doubles_from_half_a_second_up_to_thirty() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let delays: Vec<Duration> = (0..9).map(|_| b.record(t0, 0.5).delay).collect();
        assert_eq!(
            delays,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0].map(secs)
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let t0 = Instant::now();
        let low = Backoff::default().record(t0, 0.0).delay;
        let high = Backoff::default().record(t0, 0.999_999).delay;
        assert_eq!(low, secs(0.4));
        assert!(high < secs(0.6) && high > secs(0.599), "{high:?}");
        // Out-of-range noise is clamped, never beyond ±20 %.
        assert_eq!(Backoff::default().record(t0, -3.0).delay, secs(0.4));
        assert_eq!(Backoff::default().record(t0, 7.0).delay, secs(0.6));
        assert_eq!(Backoff::default().record(t0, f64::NAN).delay, secs(0.5));
        // At the cap the jitter still applies: 30 s ± 20 %.
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.record(t0, 0.5);
        }
        assert_eq!(b.record(t0, 0.0).delay, secs(24.0));
    }

    #[test]
    fn five_restarts_within_a_minute_are_a_crash_loop() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let loops: Vec<bool> = (0..6)
            .map(|i| b.record(t0 + secs(f64::from(i) * 10.0), 0.5).crash_loop)
            .collect();
        assert_eq!(loops, [false, false, false, false, true, true]);
        assert_eq!(b.recent(), 6);
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for i in 0..4 {
            b.record(t0 + secs(f64::from(i)), 0.5);
        }
        // 61 s after the first: the first has left the window (it is strictly older than 60 s).
        let r = b.record(t0 + secs(61.0), 0.5);
        assert_eq!((r.recent, r.crash_loop), (4, false));
        assert_eq!(r.delay, secs(4.0));
        // Long quiet: back to the initial delay.
        let r = b.record(t0 + secs(1000.0), 0.5);
        assert_eq!((r.recent, r.delay), (1, secs(0.5)));
    }

    #[test]
    fn a_restart_exactly_at_the_window_edge_still_counts() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.record(t0, 0.5);
        assert_eq!(b.record(t0 + secs(60.0), 0.5).recent, 2);
    }

    #[test]
    fn record_now_stays_in_bounds() {
        let mut b = Backoff::default();
        let r = b.record_now();
        assert!(
            r.delay >= secs(0.4) && r.delay <= secs(0.6),
            "{:?}",
            r.delay
        );
        assert_eq!(r.recent, 1);
    }
}
