//! HTTP readiness probes: one fresh loopback connection per probe, bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

/// What counts as a healthy answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly 200 (Streamlit's `/_stcore/health`).
    Status200,
    /// Any HTTP response: the server is up and speaking HTTP (an API whose `/` may be 404).
    AnyResponse,
    /// A TCP connection is accepted; nothing is sent, so the probe leaves no access-log line.
    /// (uvicorn binds only after its application start-up completed.)
    Connect,
}

/// An HTTP GET probe.
#[derive(Debug, Clone)]
pub struct HealthProbe {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Path (and query) to GET.
    pub path: String,
    /// What counts as healthy.
    pub expect: Expect,
    /// Time between probes until the first success. Default: 1 s.
    pub interval: Duration,
    /// Time between probes once the sidecar has been ready. Default: 1 s. A longer one keeps
    /// probes out of an upstream's access log at the cost of slower failure detection.
    pub ready_interval: Duration,
    /// Time one probe may take, connect included. Default: 1 s.
    pub timeout: Duration,
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// TCP connect failed.
    #[error("GET {path} on {addr}: connect failed: {reason}")]
    Connect {
        /// Probe address.
        addr: SocketAddr,
        /// Probe path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("GET {path} on {addr}: {reason}")]
    Http {
        /// Probe address.
        addr: SocketAddr,
        /// Probe path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The answer was not the expected status.
    #[error("GET {path} on {addr} answered {status}")]
    Status {
        /// Probe address.
        addr: SocketAddr,
        /// Probe path.
        path: String,
        /// The status received.
        status: StatusCode,
    },
    /// No answer within the timeout.
    #[error("GET {path} on {addr}: no answer within {} s", .timeout.as_secs_f64())]
    Timeout {
        /// Probe address.
        addr: SocketAddr,
        /// Probe path.
        path: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl HealthProbe {
    /// A probe that wants 200 from `path`, every 1 s with a 1 s timeout.
    pub fn status_200(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            path: path.to_owned(),
            expect: Expect::Status200,
            interval: Duration::from_secs(1),
            ready_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    /// A probe that accepts any HTTP response from `path`, every 1 s with a 1 s timeout.
    pub fn any_response(addr: SocketAddr, path: &str) -> Self {
        Self {
            expect: Expect::AnyResponse,
            ..Self::status_200(addr, path)
        }
    }

    /// Runs the probe once.
    ///
    /// # Errors
    /// [`ProbeError`] saying what failed.
    pub async fn check(&self) -> Result<(), ProbeError> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout {
                addr: self.addr,
                path: self.path.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// A probe that only opens (and closes) a TCP connection, every 1 s with a 1 s timeout.
    pub fn connect(addr: SocketAddr) -> Self {
        Self {
            expect: Expect::Connect,
            ..Self::status_200(addr, "/")
        }
    }

    async fn exchange(&self) -> Result<(), ProbeError> {
        let http_err = |reason: String| ProbeError::Http {
            addr: self.addr,
            path: self.path.clone(),
            reason,
        };
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| ProbeError::Connect {
                addr: self.addr,
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        if self.expect == Expect::Connect {
            return Ok(());
        }
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| http_err(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(self.path.as_str())
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::USER_AGENT, "fluxlit-probe")
            .body(Empty::new())
            .map_err(|e| http_err(e.to_string()))?;
        let result = sender.send_request(req).await;
        conn.abort();
        let resp = result.map_err(|e| http_err(e.to_string()))?;
        match self.expect {
            Expect::AnyResponse | Expect::Connect => Ok(()),
            Expect::Status200 if resp.status() == StatusCode::OK => Ok(()),
            Expect::Status200 => Err(ProbeError::Status {
                addr: self.addr,
                path: self.path.clone(),
                status: resp.status(),
            }),
        }
    }
}
