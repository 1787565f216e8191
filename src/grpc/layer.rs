//! A tower layer that counts every gRPC request by method and status code, and that
//! answers the request errors tonic's codec raises for a client's bad bytes with the
//! codes that say so (a malformed message is the client's INVALID_ARGUMENT, not the
//! server's INTERNAL, which pages on-call; an over-size one is RESOURCE_EXHAUSTED),
//! without the library's text.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};

use super::{
    methods::METHODS,
    status::{code_label, decode_error_field},
};
use crate::net::{CallGuard, Peer};

/// The status codes gRPC has, 0 to 16.
const CODES: usize = 17;

/// Wraps a service with request metrics. Made once per server, after the metrics
/// recorder is installed: it keeps the counter and histogram of each method and status
/// code it has seen, so a call pays neither a lookup by labels nor their hashing.
#[derive(Clone)]
pub struct MetricsLayer {
    handles: Arc<Handles>,
}

impl Default for MetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsLayer {
    pub fn new() -> Self {
        let cells = (METHODS.methods.len() + 1) * CODES;
        Self {
            handles: Arc::new(Handles {
                cells: (0..cells).map(|_| OnceLock::new()).collect(),
            }),
        }
    }
}

/// A method's counter and histogram per status code, made on first use; the last row
/// is for every path no method has ("other", which keeps the label set bounded
/// whatever clients send).
struct Handles {
    cells: Box<[OnceLock<(metrics::Counter, metrics::Histogram)>]>,
}

impl Handles {
    fn record(&self, method: Option<usize>, code: Code, seconds: f64) {
        let row = method.unwrap_or(METHODS.methods.len());
        let (counter, histogram) = self.cells[row * CODES + code as usize].get_or_init(|| {
            let label = method.map_or("other", |i| METHODS.methods[i].label);
            crate::metrics::request_handles(label, code_label(code))
        });
        counter.increment(1);
        histogram.record(seconds);
    }
}

impl MetricsLayer {
    /// Counts a call answered before it reached the stack (the Connect layer's
    /// refusals), as the stack counts any other.
    pub(super) fn record(&self, method: Option<usize>, code: Code, seconds: f64) {
        self.handles.record(method, code, seconds);
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            handles: self.handles.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S, B, RB> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = METHODS.find(request.uri().path());
        let start = Instant::now();
        // The connection has a call in flight until the answer's body ends, which
        // keeps the idle timeout off it.
        let call = request.extensions().get::<Peer>().map(Peer::call);
        Counted {
            future: self.inner.call(request),
            counter: Some(Counter {
                handles: self.handles.clone(),
                method,
                start,
                done: false,
                _call: call,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer's headers, on their way to be counted.
    pub struct Counted<F> {
        #[pin]
        future: F,
        counter: Option<Counter>,
    }
}

impl<F, RB, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<CountedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        let mut counter = this.counter.take().expect("polled after completion");
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                counter.record(Code::Unknown);
                return Poll::Ready(Err(error));
            }
        };
        honest_status(response.headers_mut());
        // An error before any message comes as a trailers-only answer, its status in
        // the headers; otherwise the status comes in the trailers, at the end of the
        // call (a stream's, however long it ran), and is counted then.
        if let Some(code) = grpc_status(response.headers()) {
            counter.record(code);
        }
        Poll::Ready(Ok(response.map(|inner| CountedBody { inner, counter })))
    }
}

/// The status in a `grpc-status` header or trailer.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// Counts a call once, when its status is known.
struct Counter {
    handles: Arc<Handles>,
    method: Option<usize>,
    start: Instant,
    done: bool,
    _call: Option<CallGuard>,
}

impl Counter {
    fn record(&mut self, code: Code) {
        if !std::mem::replace(&mut self.done, true) {
            self.handles
                .record(self.method, code, self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Counter {
    /// A body dropped before its trailers: the client went away (or the connection
    /// did), which gRPC calls CANCELLED.
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call by the status in its trailers.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        counter: Counter,
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut polled = this.inner.poll_frame(cx);
        match &mut polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    // A stream's request errors come here, after its headers.
                    honest_status(trailers);
                    if let Some(code) = grpc_status(trailers) {
                        this.counter.record(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.counter.record(Code::Unknown),
            // The end without trailers: nothing said it failed.
            Poll::Ready(None) => this.counter.record(Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What tonic's codec says of a request it could not read, and what the client is
/// told instead: the status code and a message of our own.
const CODEC_ERRORS: &[(i32, &str, i32, &str)] = &[
    (
        13,
        "failed to decode Protobuf message",
        3,
        "the request is not a valid protobuf message of this method",
    ),
    (
        13,
        "Missing request message",
        3,
        "the request carries no message",
    ),
    (
        13,
        "Unexpected EOF decoding stream",
        3,
        "the request's message was cut off",
    ),
    (
        13,
        "protocol error: received message with invalid compression flag",
        3,
        "the request's message frame is malformed (invalid compression flag)",
    ),
    // tonic-web's errors reading a browser's request: bad base64, an unexpected frame.
    (
        13,
        "tonic-web:",
        3,
        "the gRPC-Web request body is malformed",
    ),
    (
        15,
        "tonic-web:",
        3,
        "the gRPC-Web request body is malformed",
    ),
    (
        11,
        "Error, decoded message length too large",
        8,
        "the request message is larger than this server accepts (see --max-message-bytes)",
    ),
];

/// Rewrites the status of an answer's headers (a trailers-only answer: a unary call's
/// error before any handler ran) or trailers (a stream's) when it is one of
/// `CODEC_ERRORS`.
fn honest_status(headers: &mut http::HeaderMap) {
    // Nearly every answer: no status in its headers, or OK in its trailers.
    match headers.get("grpc-status") {
        None => return,
        Some(v) if v.as_bytes() == b"0" => return,
        Some(_) => {}
    }
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let message = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    if let Some((_, _, to, text)) = CODEC_ERRORS
        .iter()
        .find(|(from, prefix, _, _)| *from == code && message.starts_with(prefix))
    {
        headers.insert("grpc-status", http::HeaderValue::from(*to));
        // A message that breaks in a field names it, as an invalid field does.
        let named = decode_error_field(&message).and_then(|field| {
            http::HeaderValue::try_from(format!("{field}: cannot be read ({text})")).ok()
        });
        headers.insert(
            "grpc-message",
            named.unwrap_or_else(|| http::HeaderValue::from_static(text)),
        );
    }
}

/// The text of a `grpc-message` (percent-encoded, per the gRPC spec).
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&a), Some(&b)) if hex(a).is_some() && hex(b).is_some() => {
                out.push((hex(a).unwrap() * 16 + hex(b).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_errors_become_the_client_s_and_other_answers_are_left_alone() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from(13));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "failed%20to%20decode%20Protobuf%20message: invalid wire type",
            ),
        );
        honest_status(&mut h);
        assert_eq!(h["grpc-status"], "3");
        assert!(!h["grpc-message"].to_str().unwrap().contains("wire type"));
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from(13));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static("internal error; see the server log"),
        );
        honest_status(&mut h);
        assert_eq!(h["grpc-status"], "13");
    }
}
