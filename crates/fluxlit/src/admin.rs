//! The optional admin listener (`metrics_addr`): serves only the metrics, so they need not be
//! reachable on the public port.

use std::convert::Infallible;

use fluxlit_gateway::MetricsRender;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub(crate) async fn serve(listener: tokio::net::TcpListener, path: String, render: MetricsRender) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (path, render) = (path.clone(), render.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (path, render) = (path.clone(), render.clone());
                    async move {
                        let mut r = if req.uri().path() == path && req.method() == http::Method::GET
                        {
                            let mut r = Response::new(Full::new(bytes_of(render())));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(
                                    "text/plain; version=0.0.4; charset=utf-8",
                                ),
                            );
                            r
                        } else {
                            Response::new(Full::new(bytes_of("Not Found\n".to_owned())))
                        };
                        if req.uri().path() != path {
                            *r.status_mut() = StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn bytes_of(s: String) -> hyper::body::Bytes {
    hyper::body::Bytes::from(s)
}
