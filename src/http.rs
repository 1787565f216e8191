//! citypark's HTTP port (`--http-addr`): what is not gRPC. The live city map
//! (`/map/`, `map.rs`), open data (`/open-data/v1/…`, `open_data/`) and the payment
//! gateway's callbacks (`POST /payments/v1/callback`); errors are JSON with the status
//! the error's kind decides.

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
    open_data::OpenData,
    service::Service,
};

/// The regions with their counts and extents, counted at most once a second for all
/// the HTTP port's routes (the map's `config.json`, open data's region checks and
/// totals): counting walks the whole city.
pub struct Regions {
    engine: std::sync::Arc<crate::engine::Engine>,
    counted: parking_lot::Mutex<Option<(std::time::Instant, Counted)>>,
}

/// The regions as counted at one instant.
pub type Counted = std::sync::Arc<Vec<crate::engine::RegionExtent>>;

impl Regions {
    const TTL: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(engine: std::sync::Arc<crate::engine::Engine>) -> Self {
        Self {
            engine,
            counted: parking_lot::Mutex::new(None),
        }
    }

    /// The regions, counted within the last second.
    pub fn get(&self) -> Counted {
        let mut counted = self.counted.lock();
        if let Some((at, regions)) = counted.as_ref()
            && at.elapsed() < Self::TTL
        {
            return regions.clone();
        }
        let regions = Counted::new(self.engine.regions());
        *counted = Some((std::time::Instant::now(), regions.clone()));
        regions
    }
}

/// Whether the request's `If-None-Match` names `etag` (or `*`): the client has it.
pub fn has_etag(request: &HeaderMap, etag: &axum::http::HeaderValue) -> bool {
    request
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.as_bytes() == etag.as_bytes())
}

/// The routes of the HTTP port. Open data may be read from any page the CORS
/// origins allow (all when none are set), like the gRPC-Web API.
pub fn router(
    service: Service,
    map: Map,
    open_data: OpenData,
    cors: tower_http::cors::CorsLayer,
) -> Router {
    Router::new()
        .route("/payments/v1/callback", post(callback))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
        .merge(map.routes())
        .merge(open_data.routes().layer(cors))
        .layer(axum::middleware::from_fn(count))
}

/// Counts each request by its route's pattern (bounded: never the path itself) and
/// status, and its body's bytes when the body's length is known.
async fn count(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let response = next.run(request).await;
    let bytes = http_body::Body::size_hint(response.body()).exact();
    crate::metrics::record_http(&route, response.status().as_u16(), bytes);
    response
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
