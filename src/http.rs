//! citypark's HTTP port (`--http-addr`): what is not gRPC. The live city map
//! (`/map/`, `map.rs`), open data (`/open-data/v1/…`, `open_data/`), the payment
//! gateway's callbacks (`POST /payments/v1/callback`) and operators' accountants' day
//! of sessions as CSV (`GET /operators/v1/sessions.csv?day=…`, operator key); errors
//! are JSON with the status the error's kind decides.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use crate::{
    auth::ApiKeys,
    domain::{Error, ErrorKind, ParkingSession, Viewer},
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
    // If-None-Match compares weakly (RFC 9110 §13.1.2): `W/` on either side is ignored.
    let ours = etag.as_bytes();
    let ours = ours.strip_prefix(b"W/").unwrap_or(ours);
    request
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == "*" || tag.as_bytes() == ours)
}

/// The routes of the HTTP port. Open data and the API's OpenAPI description may be
/// read from any page the CORS origins allow (all when none are set), like the
/// gRPC-Web API.
pub fn router(
    service: Service,
    keys: Arc<ApiKeys>,
    map: Map,
    open_data: OpenData,
    openapi: crate::openapi::OpenApi,
    cors: tower_http::cors::CorsLayer,
) -> Router {
    Router::new()
        .route("/payments/v1/callback", post(callback))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service.clone())
        .merge(
            Router::new()
                .route("/operators/v1/sessions.csv", get(sessions_csv))
                .with_state((service, keys)),
        )
        .merge(map.routes())
        .merge(openapi.routes().layer(cors.clone()))
        .merge(open_data.routes().layer(cors))
        .layer(axum::middleware::from_fn(read_body_in_time))
        .layer(axum::middleware::from_fn(count))
}

/// How long a request's body may take to arrive once its headers have (which have
/// their own timeout): the port's one body, a gateway's callback of at most 64 KiB,
/// comes at once, and a caller trickling one must not hold a connection (an open file)
/// for longer.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request's body whole, within [`BODY_READ_TIMEOUT`] and at most
/// `MAX_BODY_BYTES` (no route takes more), before any route sees it: 408 for a body
/// too slow, 413 for one too large, both as JSON.
async fn read_body_in_time(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    let read = http_body_util::Limited::new(body, MAX_BODY_BYTES).collect();
    let (status, message) = match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(body)) => {
            let body = axum::body::Body::from(body.to_bytes());
            return next
                .run(axum::extract::Request::from_parts(parts, body))
                .await;
        }
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request's body did not arrive within {} s of its headers",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request's body is over {MAX_BODY_BYTES} bytes"),
        ),
        // The client broke off its body; whatever is said may not reach it.
        Ok(Err(_)) => (
            StatusCode::BAD_REQUEST,
            "the request's body was cut off".to_owned(),
        ),
    };
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    // The rest of the body is not read: the connection cannot carry another request.
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
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

/// `?day=YYYY-MM-DD`: a local day.
#[derive(serde::Deserialize)]
struct DayParam {
    day: Option<String>,
}

/// The caller's (an operator's, by its API key) sessions that left on `day`, as CSV,
/// one per line by exit time, the columns named on the first.
async fn sessions_csv(
    State((service, keys)): State<(Service, Arc<ApiKeys>)>,
    headers: HeaderMap,
    Query(param): Query<DayParam>,
) -> Response {
    let answer = async {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let operator = keys.authenticate(authorization)?;
        let day = param
            .day
            .as_deref()
            .ok_or_else(|| Error::invalid("day", "must be set: ?day=YYYY-MM-DD"))?;
        let day: jiff::civil::Date = day
            .parse()
            .map_err(|_| Error::invalid("day", "must be a date: YYYY-MM-DD"))?;
        let sessions = service.sessions_of_day(&operator, day).await?;
        crate::audit::export(
            crate::audit::Who::Operator(&operator),
            "sessions_csv",
            &day.to_string(),
        );
        let csv = sessions_to_csv(&sessions, &operator);
        Ok::<_, Error>((operator, day, csv))
    };
    match answer.await {
        Ok((operator, day, csv)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"sessions-{operator}-{day}.csv\""),
                ),
                // Plates: personal data, for its operator only.
                (header::CACHE_CONTROL, "private, no-store".to_owned()),
            ],
            csv,
        )
            .into_response(),
        Err(error) => error_response(&error),
    }
}

/// The columns of the sessions CSV.
const CSV_HEADER: &str = "session_id,car_park_id,plate,plate_color,entry_time,exit_time,state,\
fee_minor,currency,payment_method,payment_status,attempts,receipt_id,tariff_version,\
prepaid_id,void_reason";

/// Sessions as CSV (RFC 4180: CRLF line ends, fields quoted when they must be), the
/// plates as `operator` may see them (whole at its own car parks).
fn sessions_to_csv(sessions: &[ParkingSession], operator: &crate::domain::OperatorId) -> String {
    fn field(out: &mut String, value: &str) {
        if value.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&value.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(value);
        }
    }
    let time = |t: Option<crate::domain::Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
    let mut out = String::with_capacity(64 + sessions.len() * 160);
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for s in sessions {
        let fields = [
            s.id.to_string(),
            s.id.car_park().to_string(),
            s.plate_for(&Viewer::Operator(operator)),
            s.plate_color.to_string(),
            time(s.entry_time),
            time(s.exit_time),
            s.state.as_str().to_owned(),
            s.fee_minor.to_string(),
            s.tariff.currency.clone(),
            s.payment.method.as_str().to_owned(),
            s.payment.status.as_str().to_owned(),
            s.payment.attempts.to_string(),
            s.payment.receipt_id.clone(),
            s.tariff_version.to_string(),
            s.prepaid.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
            s.void_reason.clone(),
        ];
        for (i, value) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, value);
        }
        out.push_str("\r\n");
    }
    out
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
