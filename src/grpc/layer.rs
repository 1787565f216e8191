//! A tower layer that counts every gRPC request by method and status code.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::Code;
use tower::{Layer, Service};

use super::status::code_label;
use crate::metrics;

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
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let start = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            // Errors of unary calls come as trailers-only responses, so the status is in
            // the headers; a success carries it in trailers, which come later: no header
            // means OK (for streams: OK so far).
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32),
                Err(_) => Code::Unknown,
            };
            metrics::record_request(method, code_label(code), start.elapsed().as_secs_f64());
            response
        })
    }
}
