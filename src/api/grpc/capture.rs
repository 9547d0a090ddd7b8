//! Captures what a SigV4 signature covers on the gRPC door: the method path, the headers
//! (with `host` taken from `:authority`), and the SHA-256 of the request message bytes as
//! they arrived. Only requests that carry an `Authorization` header are buffered; the rest
//! pass straight through.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use crate::identity::sigv4::sha256_hex;

/// What the signature of a request covers, put in the request's extensions.
#[derive(Debug, Clone)]
pub struct SignedRequestInfo {
    /// The gRPC method path, e.g. `/p11kms.v1.KeyManagementService/Encrypt`.
    pub path: String,
    /// Every header, names lowercased, plus `host` from `:authority`.
    pub headers: Vec<(String, String)>,
    /// Hex SHA-256 of the request message (the gRPC frame's payload, without its 5-byte
    /// prefix); `None` if the body could not be read within the size limit.
    pub payload_sha256_hex: Option<String>,
}

/// Wraps a generated gRPC service so SigV4-signed requests carry [`SignedRequestInfo`].
#[derive(Debug, Clone)]
pub struct CaptureSigned<S> {
    inner: S,
    max_body: usize,
}

impl<S> CaptureSigned<S> {
    /// Wraps `inner`; bodies longer than `max_body` bytes are not hashed (and fail to verify).
    pub fn new(inner: S, max_body: usize) -> Self {
        CaptureSigned { inner, max_body }
    }
}

impl<S: NamedService> NamedService for CaptureSigned<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for CaptureSigned<S>
where
    S: Service<http::Request<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = BoxFuture<S::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The readied service handles this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_body = self.max_body;
        Box::pin(async move {
            if !req.headers().contains_key(http::header::AUTHORIZATION) {
                return inner.call(req).await;
            }
            let (mut parts, body) = req.into_parts();
            let headers = crate::api::http::headers_as_signed(&parts);
            let (bytes, hash) = match Limited::new(body, max_body).collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    // One uncompressed message: flag byte 0, 4-byte length, then the message.
                    let hash = (bytes.len() >= 5 && bytes[0] == 0).then(|| sha256_hex(&bytes[5..]));
                    (bytes, hash)
                }
                Err(_) => (Bytes::new(), None),
            };
            parts.extensions.insert(SignedRequestInfo {
                path: parts.uri.path().to_string(),
                headers,
                payload_sha256_hex: hash,
            });
            let req = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            inner.call(req).await
        })
    }
}
