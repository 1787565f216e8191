//! The gRPC adapter: the only module that knows protobuf and tonic.
//!
//! `handlers` converts and delegates to `service`; `status` is the one mapping from
//! errors to gRPC statuses (`From<Error> for Status`, so handlers use `?`) and report
//! rejections; `layer` counts requests for the metrics.

mod admission;
mod convert;
pub mod fuzzing;
mod handlers;
mod layer;
mod reservations;
mod shared;
mod status;

pub use admission::{AdmissionLayer, RateLimits, Verified};
pub use handlers::Api;
pub use layer::MetricsLayer;
