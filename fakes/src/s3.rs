//! An in-process S3 server (s3s-fs) standing in for Cloudflare R2. It checks SigV4 signatures and rejects
//! expired or tampered presigned URLs, like R2, and enforces R2's multipart part sizes, which s3s-fs does not
//! ([`R2_MIN_PART_SIZE`], equal non-final parts).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Mutex, PoisonError},
};

use hyper_util::{rt::TokioExecutor, server::conn::auto::Builder as ConnBuilder};
use s3s::{
    S3Error, S3ErrorCode, S3Request, S3Result,
    access::{S3Access, S3AccessContext},
    auth::SimpleAuth,
    dto::{CompleteMultipartUploadInput, UploadPartInput},
    s3_error,
    service::S3ServiceBuilder,
};
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
        builder.set_access(R2Multipart::default());
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

/// R2's smallest part but the last (Cloudflare R2 docs, "Multipart upload": "at least 5MiB but no larger than
/// 5GiB").
pub const R2_MIN_PART_SIZE: i64 = 5 * 1024 * 1024;

/// R2's multipart limits (<https://developers.cloudflare.com/r2/objects/multipart-objects/>): "All parts except
/// the last one must be the same size. The last part has no minimum size, but must be the same or smaller than
/// the other parts." R2 refuses a CompleteMultipartUpload that breaks this with `InvalidPart` and the message
/// below (as R2 users report it); parts under 5 MiB get S3's `EntityTooSmall`. Part sizes are recorded as the
/// parts arrive (their `Content-Length`, which UploadPart requires).
#[derive(Default)]
struct R2Multipart {
    /// (upload id, part number) → bytes.
    part_sizes: Mutex<HashMap<(String, i32), i64>>,
}

/// R2's message for parts of unequal sizes.
pub const R2_UNEQUAL_PARTS: &str = "All non-trailing parts must have the same length.";

#[async_trait::async_trait]
impl S3Access for R2Multipart {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        // s3s' default: signed requests only.
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3_error!(AccessDenied, "Signature is required")),
        }
    }

    async fn upload_part(&self, req: &mut S3Request<UploadPartInput>) -> S3Result<()> {
        let Some(length) = req.input.content_length else {
            return Err(s3_error!(MissingContentLength));
        };
        self.part_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((req.input.upload_id.clone(), req.input.part_number), length);
        Ok(())
    }

    async fn complete_multipart_upload(
        &self,
        req: &mut S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<()> {
        let listed = req
            .input
            .multipart_upload
            .as_ref()
            .and_then(|upload| upload.parts.as_ref())
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|part| part.part_number)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let sizes: Vec<i64> = {
            let recorded = self
                .part_sizes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A part never uploaded is s3s-fs' to refuse (InvalidPart).
            listed
                .iter()
                .filter_map(|number| {
                    recorded
                        .get(&(req.input.upload_id.clone(), *number))
                        .copied()
                })
                .collect()
        };
        check_part_sizes(&sizes)
    }
}

/// R2's rule over the sizes of a completed upload's parts, in order.
fn check_part_sizes(sizes: &[i64]) -> S3Result<()> {
    let Some((last, leading)) = sizes.split_last() else {
        return Ok(());
    };
    let Some(&first) = leading.first() else {
        return Ok(());
    };
    if first < R2_MIN_PART_SIZE {
        return Err(s3_error!(
            EntityTooSmall,
            "Your proposed upload is smaller than the minimum allowed object size."
        ));
    }
    if leading.iter().any(|&size| size != first) || *last > first {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidPart,
            R2_UNEQUAL_PARTS,
        ));
    }
    Ok(())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
