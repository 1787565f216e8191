//! Browsers' calls (gRPC-Web, and anything with an `Origin`) take CORS and the
//! gRPC-Web translation; native gRPC calls skip both, which they would only pass
//! through at a cost (a boxed body each way, CORS's `vary` headers on every answer):
//! about a fifth of a `Ping`'s time on the server before (BENCHMARKS.md, "What the
//! layers cost a call").

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Version, header};
use tower::{Layer, Service};
use tower_http::cors::{Cors, CorsLayer};

/// Sends browsers' calls through `cors` and gRPC-Web, and the rest straight on.
#[derive(Clone)]
pub struct BrowserLayer {
    cors: CorsLayer,
}

impl BrowserLayer {
    pub fn new(cors: CorsLayer) -> Self {
        Self { cors }
    }
}

impl<S> Layer<S> for BrowserLayer {
    type Service = Browser<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Browser {
            inner,
            cors: Arc::new(self.cors.clone()),
        }
    }
}

/// See [`BrowserLayer`]. The server clones its services for every call, so the
/// browsers' path (CORS's settings are several vectors) is put together only for a
/// browser's call.
#[derive(Clone)]
pub struct Browser<S> {
    inner: S,
    cors: Arc<CorsLayer>,
}

/// A call a browser makes, or one only the gRPC-Web layer may answer: anything with an
/// `Origin`, a gRPC-Web content type, or not over HTTP/2 (native gRPC always is; the
/// gRPC-Web layer refuses the others as it did before this fork).
fn from_browser<B>(request: &http::Request<B>) -> bool {
    request.version() != Version::HTTP_2
        || request.headers().contains_key(header::ORIGIN)
        || request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"))
}

type Body = tonic::body::Body;

impl<S> Service<http::Request<Body>> for Browser<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tonic::codegen::StdError> + Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<
        S::Future,
        <Cors<tonic_web::GrpcWebService<S>> as Service<http::Request<Body>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if from_browser(&request) {
            // The ready service goes down the browsers' path (CORS and gRPC-Web only
            // ever pass readiness through), and a clone stays for the next call.
            let ready = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, ready);
            let mut browser = self.cors.layer(tonic_web::GrpcWebLayer::new().layer(inner));
            Either::Browser {
                future: browser.call(request),
            }
        } else {
            Either::Native {
                future: self.inner.call(request),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of either path.
    #[project = EitherProjection]
    pub enum Either<N, W> {
        Native { #[pin] future: N },
        Browser { #[pin] future: W },
    }
}

impl<N, W, T, E> Future for Either<N, W>
where
    N: Future<Output = Result<T, E>>,
    W: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProjection::Native { future } => future.poll(cx),
            EitherProjection::Browser { future } => future.poll(cx),
        }
    }
}
