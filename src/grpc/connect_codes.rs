//! Connect's names of the gRPC codes 1 to 16, as its errors' `code` spells them: one
//! table for the server's answers (`grpc/connect.rs`) and the OpenAPI description that
//! build.rs writes (`build/openapi.rs`, which includes this file).

/// The name of code `n` is `CODES[n - 1]`; gRPC's own names but for CANCELLED, which
/// Connect spells "canceled".
pub const CODES: [&str; 16] = [
    "canceled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];
