//! A tower layer that counts every gRPC request by method and status code, and that
//! answers the request errors tonic's codec raises for a client's bad bytes with the
//! codes that say so (a malformed message is the client's INVALID_ARGUMENT, not the
//! server's INTERNAL, which pages on-call; an over-size one is RESOURCE_EXHAUSTED),
//! without the library's text.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};

use super::status::{code_label, decode_error_field};
use crate::{
    metrics,
    net::{CallGuard, Peer},
};

/// Every method the server offers; any other path is labelled "other", which keeps
/// the label set bounded whatever clients send.
const METHODS: &[&str] = &[
    "/citypark.v1.Registry/UpsertCarPark",
    "/citypark.v1.Registry/GetCarPark",
    "/citypark.v1.Registry/ListCarParks",
    "/citypark.v1.Registry/DeleteCarPark",
    "/citypark.v1.Ingest/Report",
    "/citypark.v1.Ingest/Publish",
    "/citypark.v1.Availability/FindNearby",
    "/citypark.v1.Availability/GetAvailability",
    "/citypark.v1.Availability/WatchAvailability",
    "/citypark.v1.Availability/Ping",
    "/citypark.v1.Availability/GetOccupancyHistory",
    "/citypark.v1.Reservations/CreateReservation",
    "/citypark.v1.Reservations/GetReservation",
    "/citypark.v1.Reservations/ListReservations",
    "/citypark.v1.Reservations/CancelReservation",
    "/citypark.v1.Reservations/CheckIn",
    "/citypark.v1.Reservations/CheckOut",
    "/citypark.v1.Reservations/GetReservationCalendar",
    "/citypark.v1.SharedParking/OfferSpace",
    "/citypark.v1.SharedParking/UpdateOffer",
    "/citypark.v1.SharedParking/WithdrawOffer",
    "/citypark.v1.SharedParking/ListMyOffers",
    "/citypark.v1.SharedParking/SearchOffers",
    "/citypark.v1.SharedParking/BookOffer",
    "/citypark.v1.SharedParking/GetBooking",
    "/citypark.v1.SharedParking/CancelBooking",
    "/citypark.v1.SharedParking/ListMyBookings",
    "/citypark.v1.SharedParking/CheckIn",
    "/citypark.v1.SharedParking/CheckOut",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

fn method_label(path: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == path)
        .map_or("other", |m| &m[1..])
}

/// Wraps a service with request metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let start = Instant::now();
        // The connection has a call in flight until the answer's body ends, which
        // keeps the idle timeout off it.
        let call = request.extensions().get::<Peer>().map(Peer::call);
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = match future.await {
                Ok(response) => response,
                Err(error) => {
                    metrics::record_request(
                        method,
                        code_label(Code::Unknown),
                        start.elapsed().as_secs_f64(),
                    );
                    return Err(error);
                }
            };
            honest_status(response.headers_mut());
            // An error before any message comes as a trailers-only answer, its status in
            // the headers; otherwise the status comes in the trailers, at the end of
            // the call (a stream's, however long it ran), and is counted then.
            let settled = grpc_status(response.headers());
            let mut counter = Counter {
                method,
                start,
                done: false,
                _call: call,
            };
            if let Some(code) = settled {
                counter.record(code);
            }
            Ok(response.map(|inner| CountedBody { inner, counter }))
        })
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
    method: &'static str,
    start: Instant,
    done: bool,
    _call: Option<CallGuard>,
}

impl Counter {
    fn record(&mut self, code: Code) {
        if !std::mem::replace(&mut self.done, true) {
            metrics::record_request(
                self.method,
                code_label(code),
                self.start.elapsed().as_secs_f64(),
            );
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
