//! Shared pieces of FluxLit's benchmark binaries (used by `cargo xtask bench`):
//!
//! - `fluxlit-bench-upstream`: a minimal hyper HTTP/1.1 server with fixed bodies
//!   (`GET /1k` → 1,024 bytes, `GET /100k` → 102,400 bytes), a body-draining `POST`, and a
//!   WebSocket echo on `/ws`: the one upstream behind every row of the benchmark.
//! - `fluxlit-bench-ws`: a tokio-tungstenite WebSocket load tool (round-trip latency, echo
//!   throughput on N connections, connect + handshake rate, holding N idle tunnels).
//!
//! Both only talk to loopback addresses ([`require_loopback`]) and every loop they run is
//! bounded in count and in time.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (holding thousands of idle
/// WebSockets needs more than the usual 1,024) and returns the new soft limit, in file
/// descriptors.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_nofile_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Resolves `host:port` and checks that every address is a loopback address: the benchmark
/// never sends traffic anywhere else.
///
/// # Errors
/// A message when the address does not resolve or is not loopback.
pub fn require_loopback(host_port: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host_port}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host_port} resolves to no address"))?;
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "{host_port} resolves to {bad}, which is not a loopback address; the benchmark only talks to 127.0.0.0/8 and ::1"
        ));
    }
    Ok(first)
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The WebSocket configuration of both benchmark binaries: small read and write buffers
/// (4 KiB instead of tungstenite's 128 KiB, which it allocates up front) so that 10,000 idle
/// connections cost the load tool and the upstream little memory. Messages of any size up to
/// 16 MiB still pass.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(16 * 1024 * 1024))
}

/// Latency samples, in nanoseconds, with order statistics.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    /// An empty set with room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            samples: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        self.samples
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// Moves every sample of `other` into `self`.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
        self.sorted = false;
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q` quantile (0.0 ..= 1.0, nearest rank), in microseconds; `None` without samples.
    pub fn quantile_us(&mut self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let n = self.samples.len();
        // Nearest rank: ceil(q * n), 1-based.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n);
        #[allow(clippy::cast_precision_loss)]
        Some(self.samples[rank - 1] as f64 / 1_000.0)
    }

    /// The mean, in microseconds; `None` without samples.
    pub fn mean_us(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let sum: u128 = self.samples.iter().map(|&s| u128::from(s)).sum();
        #[allow(clippy::cast_precision_loss)]
        Some(sum as f64 / self.samples.len() as f64 / 1_000.0)
    }

    /// `{"p50_us", "p90_us", "p99_us", "max_us", "mean_us"}` (microseconds; `null` without
    /// samples).
    pub fn summary_json(&mut self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": self.quantile_us(0.50),
            "p90_us": self.quantile_us(0.90),
            "p99_us": self.quantile_us(0.99),
            "max_us": self.quantile_us(1.0),
            "mean_us": self.mean_us(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut l = Latencies::with_capacity(100);
        for us in 1..=100u64 {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.quantile_us(0.5), Some(50.0));
        assert_eq!(l.quantile_us(0.99), Some(99.0));
        assert_eq!(l.quantile_us(1.0), Some(100.0));
        assert_eq!(l.quantile_us(0.0), Some(1.0));
        assert_eq!(l.mean_us(), Some(50.5));
        assert!(Latencies::default().quantile_us(0.5).is_none());
    }

    #[test]
    fn only_loopback_is_accepted() {
        assert!(require_loopback("127.0.0.1:80").is_ok());
        assert!(require_loopback("[::1]:80").is_ok());
        assert!(require_loopback("10.0.0.1:80").is_err());
        assert!(require_loopback("192.168.1.1:80").is_err());
    }
}
