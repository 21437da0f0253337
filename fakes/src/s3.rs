//! An in-process S3 server (s3s-fs) standing in for Cloudflare R2. It checks SigV4 signatures and rejects
//! expired or tampered presigned URLs, like R2.

use std::{net::SocketAddr, path::Path};

use hyper_util::{rt::TokioExecutor, server::conn::auto::Builder as ConnBuilder};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running S3 server on 127.0.0.1.
#[derive(Debug)]
pub struct S3Server {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    stop: CancellationToken,
}

impl S3Server {
    /// Serves the directory `root` (created if missing) on `addr` (port 0 for any free port).
    pub async fn start(
        root: &Path,
        addr: SocketAddr,
        access_key: &str,
        secret_key: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|error| anyhow::anyhow!("s3s-fs at {}: {error:?}", root.display()))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let service = service.clone();
                let cors = hyper::service::service_fn(move |request| {
                    let service = service.clone();
                    async move { with_cors(&service, request).await }
                });
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), cors)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            stop,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The bucket CORS rule production sets on R2 (`deploy/README.md`): browsers may GET and PUT objects through
/// presigned URLs from the site's pages. Preflights are answered here; other responses get the allow header.
async fn with_cors(
    service: &s3s::service::S3Service,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<s3s::Body>, s3s::HttpError> {
    use hyper::header::{self, HeaderValue};
    let origin = request.headers().get(header::ORIGIN).cloned();
    if request.method() == hyper::Method::OPTIONS {
        let mut response = hyper::Response::new(s3s::Body::empty());
        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin.unwrap_or(HeaderValue::from_static("*")),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, PUT"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("3600"),
        );
        return Ok(response);
    }
    let mut response = service.call(request.map(s3s::Body::from)).await?;
    if let Some(origin) = origin {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    Ok(response)
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
