//! A small HTTP(S) GET for the identity provider's documents (the OpenID discovery document,
//! the JWKS): one connection per fetch (fetches are rare), HTTP/1.1, TLS through rustls with
//! the system's root certificates, redirects never followed (a redirect could point the
//! gateway anywhere: SSRF), a whole-fetch timeout and a size cap.

#[cfg(feature = "tls")]
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Longest a fetch of the discovery document or the JWKS may take, connect to last body byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest discovery document or JWKS accepted, in bytes (1 MiB).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Why a fetch failed (the message names the URL's part that failed, never a token).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an absolute http(s) URL with a host.
    #[error("{url} is not an absolute http:// or https:// URL with a host")]
    Url {
        /// The URL.
        url: String,
    },
    /// Connecting, the TLS handshake or the exchange failed.
    #[error("fetching {url} failed: {reason}")]
    Io {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// No answer within [`FETCH_TIMEOUT`].
    #[error("fetching {url} took longer than {} s", FETCH_TIMEOUT.as_secs())]
    Timeout {
        /// The URL.
        url: String,
    },
    /// An answer other than 200 (redirects included: they are not followed).
    #[error("{url} answered {status} (expected 200; redirects are not followed)")]
    Status {
        /// The URL.
        url: String,
        /// The status received.
        status: StatusCode,
    },
    /// The body was larger than [`MAX_DOCUMENT`] or not JSON.
    #[error("{url} did not answer with a JSON document of at most {MAX_DOCUMENT} bytes: {reason}")]
    Body {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// The TLS client configuration every FluxLit client uses (the identity provider's documents
/// here, `fluxlit doctor --live`): rustls with *ring*, TLS 1.2 and 1.3, the system's trust
/// store (`rustls-native-certs`: `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured), loaded once.
///
/// # Errors
/// When the system has no usable root certificate (the message says to set `SSL_CERT_FILE`).
#[cfg(feature = "tls")]
pub fn tls_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the store cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!(
                    "no usable root certificates on this system ({} errors loading them); set SSL_CERT_FILE to a CA bundle",
                    found.errors.len()
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// GETs `url` and parses the body as JSON, within [`FETCH_TIMEOUT`].
///
/// # Errors
/// [`FetchError`] for a bad URL, a failed connection or handshake, a timeout, a status other
/// than 200, or a body that is too large or not JSON.
pub(crate) async fn get_json(url: &Uri) -> Result<serde_json::Value, FetchError> {
    match tokio::time::timeout(FETCH_TIMEOUT, get(url)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout {
            url: url.to_string(),
        }),
    }
}

async fn get(url: &Uri) -> Result<serde_json::Value, FetchError> {
    let text = url.to_string();
    let req = Request::get(url.clone())
        .header(header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| FetchError::Io {
            url: text.clone(),
            reason: e.to_string(),
        })?;
    let resp = send_once(req).await?;
    if resp.status() != StatusCode::OK {
        return Err(FetchError::Status {
            url: text,
            status: resp.status(),
        });
    }
    serde_json::from_slice(resp.body()).map_err(|e| FetchError::Body {
        url: text,
        reason: e.to_string(),
    })
}

/// Sends `req` (an absolute http(s) URI; `Host` and `User-Agent` are set here) on a fresh
/// connection and reads the whole answer, within [`FETCH_TIMEOUT`], the body capped at
/// [`MAX_DOCUMENT`]. Any status is returned as is: a redirect is an answer, never followed.
/// The OIDC relying party's HTTP client (discovery, JWKS, token endpoint).
///
/// # Errors
/// [`FetchError`] for a bad URL, a failed connection or handshake, a timeout or a body over
/// the cap.
pub async fn send(req: Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, FetchError> {
    let url = req.uri().to_string();
    match tokio::time::timeout(FETCH_TIMEOUT, send_once(req)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout { url }),
    }
}

async fn send_once(req: Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, FetchError> {
    let url = req.uri().clone();
    let text = url.to_string();
    let bad_url = || FetchError::Url { url: text.clone() };
    let io = |reason: String| FetchError::Io {
        url: text.clone(),
        reason,
    };
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad_url()),
    };
    let authority = url.authority().ok_or_else(bad_url)?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad_url());
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| io(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut parts, body) = req.into_parts();
    parts.uri = url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| bad_url())?;
    parts.headers.insert(
        header::HOST,
        http::HeaderValue::from_str(authority.as_str()).map_err(|_| bad_url())?,
    );
    parts.headers.insert(
        header::USER_AGENT,
        http::HeaderValue::from_static(concat!("fluxlit/", env!("CARGO_PKG_VERSION"))),
    );
    let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
    let resp = if https {
        #[cfg(feature = "tls")]
        {
            let config = tls_client_config().map_err(io)?;
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| io(format!("server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| io(format!("TLS: {e}")))?;
            exchange(TokioIo::new(stream), req).await
        }
        #[cfg(not(feature = "tls"))]
        {
            drop(tcp);
            return Err(io(
                "this FluxLit was built without TLS (the `tls` feature): https:// cannot be fetched"
                    .into(),
            ));
        }
    } else {
        exchange(TokioIo::new(tcp), req).await
    }
    .map_err(|e| io(e.to_string()))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| FetchError::Body {
            url: text.clone(),
            reason: e.to_string(),
        })?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body.to_vec()))
}

/// One HTTP/1.1 exchange on `io`.
async fn exchange<T>(
    io: TokioIo<T>,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        // Ends when the response body has been read (or dropped).
        let _ = conn.await;
    });
    sender.send_request(req).await
}
