//! The gRPC adapter: the only module that knows protobuf and tonic.
//!
//! `handlers` converts and delegates to `service`; `status` is the one mapping from
//! errors to gRPC statuses (`From<Error> for Status`, so handlers use `?`) and report
//! rejections; `layer` counts requests for the metrics; `connect` serves every unary
//! method as HTTP/JSON by the Connect protocol, through the same stack.

mod admission;
mod browser;
mod connect;
mod connect_codes;
mod convert;
pub mod feeds;
pub mod fuzzing;
mod handlers;
mod layer;
mod methods;
mod protojson;
mod reservations;
mod sessions;
mod shared;
mod status;

pub use admission::{AdmissionLayer, RateLimits, Verified};
pub use browser::BrowserLayer;
pub use connect::ConnectLayer;
pub use handlers::Api;
pub use layer::MetricsLayer;

use tonic::service::Routes;

use crate::pb;

/// Every citypark service on `api`, each taking messages up to `max_message_bytes`:
/// what the server serves (besides health and reflection) and what the fuzz targets
/// call.
pub fn routes(api: Api, max_message_bytes: usize) -> Routes {
    let max = max_message_bytes;
    Routes::new(
        pb::registry_server::RegistryServer::new(api.clone()).max_decoding_message_size(max),
    )
    .add_service(pb::ingest_server::IngestServer::new(api.clone()).max_decoding_message_size(max))
    .add_service(
        pb::availability_server::AvailabilityServer::new(api.clone())
            .max_decoding_message_size(max),
    )
    .add_service(
        pb::reservations_server::ReservationsServer::new(api.clone())
            .max_decoding_message_size(max),
    )
    .add_service(
        pb::shared_parking_server::SharedParkingServer::new(api.clone())
            .max_decoding_message_size(max),
    )
    .add_service(pb::sessions_server::SessionsServer::new(api).max_decoding_message_size(max))
}
