//! Limits: connection counts (global and per peer), upstream concurrency, rate limits (GCRA).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gateway's limits. `0` / `None` mean "no limit" everywhere.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest UI request body, bytes (413 above).
    pub max_ui_body: u64,
    /// Largest API request body, bytes (413 above).
    pub max_api_body: u64,
    /// Most upstream HTTP requests in flight (fast 503 above).
    pub max_upstream_concurrency: usize,
    /// Most open client connections, tunnels included (503 and close above).
    pub max_connections: usize,
    /// Most open connections per TCP peer address, tunnels included; trusted proxies are
    /// exempt (their connections carry many clients).
    pub max_connections_per_ip: usize,
    /// Time a client has to send its request head, and the longest a client connection may
    /// stay idle between requests (HTTP/1.1 keep-alive, HTTP/2 without open streams).
    pub header_read_timeout: Duration,
    /// Longest a write to a client may stay blocked (the client stopped reading) before the
    /// connection or tunnel is closed; zero: no limit.
    pub write_timeout: Duration,
    /// Most concurrent streams on one HTTP/2 client connection (each may use its own upstream
    /// connection: this bounds one client's upstream fan-out); at least 1.
    pub http2_max_streams: u32,
    /// Largest request head, bytes (431 above; at least 8192).
    pub max_header_bytes: usize,
    /// Time an upstream has to answer a WebSocket upgrade.
    pub ws_open_timeout: Duration,
    /// Close a tunnel idle (no bytes either way) this long.
    pub ws_idle_timeout: Option<Duration>,
    /// Close a tunnel after this long in any case.
    pub ws_max_lifetime: Option<Duration>,
    /// Most WebSocket tunnels open at once per client IP (the address trusted forwarded
    /// headers resolve, so clients behind one trusted proxy are counted apart); 0: no limit.
    pub ws_max_per_client_ip: usize,
    /// Origins allowed to open WebSockets (empty: no check).
    pub ws_allowed_origins: Vec<String>,
    /// API rate limit: (requests per second per client IP, burst).
    pub rate_api: Option<(u32, u32)>,
    /// UI rate limit: (requests per second per client IP, burst).
    pub rate_ui: Option<(u32, u32)>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ui_body: 0,
            max_api_body: 0,
            max_upstream_concurrency: 0,
            max_connections: 10_000,
            max_connections_per_ip: 1024,
            header_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            http2_max_streams: 64,
            max_header_bytes: 64 * 1024,
            ws_open_timeout: Duration::from_secs(30),
            ws_idle_timeout: None,
            ws_max_lifetime: None,
            ws_max_per_client_ip: 256,
            ws_allowed_origins: Vec::new(),
            rate_api: None,
            rate_ui: None,
        }
    }
}

impl Limits {
    /// From loaded settings.
    pub fn from_settings(s: &fluxlit_config::Settings) -> Self {
        let rate = |per_s: u64, burst: u64| {
            (per_s > 0).then(|| {
                let per_s = u32::try_from(per_s).unwrap_or(u32::MAX);
                let burst = if burst == 0 {
                    per_s
                } else {
                    u32::try_from(burst).unwrap_or(u32::MAX)
                };
                (per_s, burst)
            })
        };
        Self {
            max_ui_body: s.gateway_max_proxy_request_body_bytes,
            max_api_body: s.gateway_max_api_request_body_bytes,
            max_upstream_concurrency: usize::try_from(s.gateway_max_concurrent_upstream_http)
                .unwrap_or(usize::MAX),
            max_connections: usize::try_from(s.gateway_max_connections).unwrap_or(usize::MAX),
            max_connections_per_ip: usize::try_from(s.gateway_max_connections_per_ip)
                .unwrap_or(usize::MAX),
            header_read_timeout: s.gateway_header_read_timeout_s,
            write_timeout: s.gateway_write_timeout_s,
            http2_max_streams: u32::try_from(s.gateway_http2_max_concurrent_streams)
                .unwrap_or(u32::MAX)
                .max(1),
            max_header_bytes: usize::try_from(s.gateway_max_request_header_bytes)
                .unwrap_or(usize::MAX)
                .max(8192),
            ws_open_timeout: s.gateway_ws_open_timeout_s,
            ws_idle_timeout: s.gateway_ws_idle_timeout_s,
            ws_max_lifetime: s.gateway_ws_max_lifetime_s,
            ws_max_per_client_ip: usize::try_from(s.gateway_max_websockets_per_client_ip)
                .unwrap_or(usize::MAX),
            ws_allowed_origins: s
                .gateway_ws_allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            rate_api: rate(
                s.gateway_rate_limit_api_per_s,
                s.gateway_rate_limit_api_burst,
            ),
            rate_ui: rate(s.gateway_rate_limit_ui_per_s, s.gateway_rate_limit_ui_burst),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    PerIp,
}

/// Counts open connections; a [`ConnPermit`] is held for a connection's life (and by the tunnel
/// an upgrade turns it into).
#[derive(Debug)]
pub(crate) struct ConnLimiter {
    total: Option<Arc<Semaphore>>,
    per_ip_max: usize,
    per_ip: PerIp,
}

/// How many of something each IP holds (entries removed at zero, so the map holds only IPs
/// that hold something).
#[derive(Debug, Default, Clone)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One of the things an IP holds in a [`PerIp`] count; released when dropped (`None`: not
/// counted).
#[derive(Debug)]
pub(crate) struct IpSlot(Option<(IpAddr, PerIp)>);

impl PerIp {
    /// Counts one more for `ip` unless it holds `max` already.
    fn take(&self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((ip, self.clone()))))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((ip, PerIp(map))) = &self.0
            && let Ok(mut m) = map.lock()
            && let Some(n) = m.get_mut(ip)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(ip);
            }
        }
    }
}

/// One admitted connection.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    _total: Option<OwnedSemaphorePermit>,
    _ip: IpSlot,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        metrics::gauge!(crate::observe::names::CONNECTIONS).decrement(1.0);
    }
}

impl ConnLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            total: (limits.max_connections > 0)
                .then(|| Arc::new(Semaphore::new(limits.max_connections))),
            per_ip_max: limits.max_connections_per_ip,
            per_ip: PerIp::default(),
        }
    }

    /// Admits a connection from `ip`; `exempt` peers (trusted proxies, whose connections carry
    /// many clients) are not held to the per-address limit.
    pub(crate) fn admit(&self, ip: IpAddr, exempt: bool) -> Result<ConnPermit, Refused> {
        let total = match &self.total {
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| Refused::Total)?),
            None => None,
        };
        let ip = if self.per_ip_max > 0 && !exempt {
            self.per_ip
                .take(ip, self.per_ip_max)
                .ok_or(Refused::PerIp)?
        } else {
            IpSlot(None)
        };
        metrics::gauge!(crate::observe::names::CONNECTIONS).increment(1.0);
        Ok(ConnPermit {
            _total: total,
            _ip: ip,
        })
    }
}

/// Open WebSocket tunnels per client IP ([`Limits::ws_max_per_client_ip`]).
#[derive(Debug, Default)]
pub(crate) struct TunnelsPerClient {
    max: usize,
    open: PerIp,
}

/// One open (or opening) tunnel of a client IP; released when dropped.
pub(crate) type TunnelSlot = IpSlot;

impl TunnelsPerClient {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: PerIp::default(),
        }
    }

    /// A slot for one more tunnel of `ip`; `None` when it holds the most already.
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<TunnelSlot> {
        if self.max == 0 {
            return Some(IpSlot(None));
        }
        self.open.take(ip, self.max)
    }
}

/// Per-client-IP GCRA limiters for the API and the UI.
#[derive(Debug)]
pub(crate) struct RateLimits {
    api: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ui: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn limiter(rate: Option<(u32, u32)>) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
    let (per_s, burst) = rate?;
    let quota = Quota::per_second(NonZeroU32::new(per_s)?).allow_burst(NonZeroU32::new(burst)?);
    Some(RateLimiter::keyed(quota))
}

impl RateLimits {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            api: limiter(limits.rate_api),
            ui: limiter(limits.rate_ui),
        }
    }

    /// `Err(wait)` when `ip` is over its budget for the API (`api`) or the UI.
    pub(crate) fn check(&self, api: bool, ip: IpAddr) -> Result<(), Duration> {
        let Some(l) = (if api { &self.api } else { &self.ui }) else {
            return Ok(());
        };
        l.check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets keys whose state is back to full (bounds memory); call periodically.
    pub(crate) fn retain_recent(&self) {
        for l in [&self.api, &self.ui].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_count_and_release() {
        let limits = Limits {
            max_connections: 2,
            max_connections_per_ip: 1,
            ..Limits::default()
        };
        let c = ConnLimiter::new(&limits);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = c.admit(a, false).unwrap();
        assert_eq!(c.admit(a, false).unwrap_err(), Refused::PerIp);
        let p2 = c.admit(b, false).unwrap();
        assert_eq!(
            c.admit("10.0.0.3".parse().unwrap(), false).unwrap_err(),
            Refused::Total
        );
        drop(p1);
        let _p3 = c.admit(a, false).unwrap();
        drop(p2);
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_address_limit_only() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 1,
            ..Limits::default()
        };
        let c = ConnLimiter::new(&limits);
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| c.admit(proxy, true).unwrap()).collect();
        assert_eq!(c.admit(proxy, true).unwrap_err(), Refused::Total);
        drop(held);
        assert!(
            Limits::default().max_connections_per_ip > 0,
            "a per-address limit by default"
        );
    }

    #[test]
    fn gcra_refuses_past_the_burst_with_a_wait() {
        let r = RateLimits::new(&Limits {
            rate_api: Some((1, 2)),
            ..Limits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(r.check(true, ip).is_ok());
        assert!(r.check(true, ip).is_ok());
        let wait = r.check(true, ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(r.check(false, ip).is_ok(), "the UI has no limit here");
        assert!(
            r.check(true, "10.0.0.2".parse().unwrap()).is_ok(),
            "budgets are per client"
        );
    }
}
