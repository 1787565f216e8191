//! citypark's HTTP port (`--http-addr`): what is not gRPC. The live city map
//! (`/map/`, `map.rs`) and the payment gateway's callbacks
//! (`POST /payments/v1/callback`); errors are JSON with the status the error's kind
//! decides.

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};

use crate::{
    domain::{Error, ErrorKind},
    gateway::{MAX_BODY_BYTES, SIGNATURE_HEADER},
    map::Map,
    service::Service,
};

/// The routes of the HTTP port.
pub fn router(service: Service, map: Map) -> Router {
    Router::new()
        .route("/payments/v1/callback", post(callback))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
        .merge(map.routes())
}

/// The gateway's answer about a pending charge, signed like its requests.
async fn callback(State(service): State<Service>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    match service.payment_callback(&body, signature).await {
        Ok(()) => Json(serde_json::json!({ "ok": true })).into_response(),
        Err(error) => error_response(&error),
    }
}

/// An error as JSON, with the HTTP status its kind decides; internal details are
/// logged, never sent.
fn error_response(error: &Error) -> Response {
    let status = match error.kind() {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
        ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match error {
        Error::Internal(detail) => {
            tracing::error!(%detail, "internal error on the HTTP port");
            "internal error".to_owned()
        }
        other => other.to_string(),
    };
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
