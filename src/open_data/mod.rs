//! Open data on the HTTP port (`/open-data/v1/…`): the city in the formats route
//! planners and city portals read — GeoJSON, ParkAPI v3's parking sites, DATEX II
//! Parking Publication Light, FIWARE `OffStreetParking` as NGSI-LD — and its changes
//! as Server-Sent Events. Everything is read from the engine, never from the store:
//! an export costs no Redis round trip. Realtime numbers are published only while
//! they are live (`site.rs`).

mod changes;
mod datex2;
mod geojson;
mod ngsi;
mod parkapi;
mod site;

use std::{
    hash::{Hash as _, Hasher as _},
    sync::Arc,
};

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

pub use changes::Changes;
pub use datex2::Publisher;
pub use parkapi::numeric_id;

use crate::{
    clock::Clock,
    domain::{RegionId, Timestamp},
    engine::Engine,
};
use site::Site;

/// How long clients and caches may reuse a snapshot: the numbers move with every
/// report, and a consumer polling faster than this learns little more.
const MAX_AGE_SECS: u64 = 10;

/// Car parks read from the engine per lock: a snapshot of a million car parks never
/// holds the engine's lock for long.
const CHUNK: usize = 1_000;

/// What the open-data routes read.
#[derive(Clone)]
pub struct OpenData {
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    publisher: Arc<Publisher>,
    changes: Changes,
}

impl OpenData {
    pub fn new(
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        publisher: Publisher,
        changes: Changes,
    ) -> Self {
        Self {
            engine,
            clock,
            publisher: Arc::new(publisher),
            changes,
        }
    }

    /// The open-data routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/open-data/v1/car-parks.geojson", get(car_parks_geojson))
            .route("/open-data/v1/parking-sites", get(parking_sites))
            .route(
                "/open-data/v1/datex2/parking-publication-light",
                get(datex2_light),
            )
            .route("/open-data/v1/ngsi-ld/OffStreetParking", get(ngsi_ld))
            .route("/open-data/v1/changes", get(changes::stream))
            .with_state(self)
    }

    /// The `region` parameter, checked: 404 for a region without car parks.
    fn region(&self, region: Option<&str>) -> Result<Option<RegionId>, Problem> {
        let Some(region) = region else {
            return Ok(None);
        };
        let region =
            RegionId::parse(region).map_err(|e| Problem::bad_request(format!("region: {e}")))?;
        // The engine's own count, not the map's one-second one: a region registered a
        // moment ago is there.
        if !self.engine.has_region(&region) {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no car park is in region {region}"),
            ));
        }
        Ok(Some(region))
    }

    /// Calls `each` with every car park of `region` (or all) in id order, `CHUNK` at a
    /// time from the engine.
    fn for_each_site(
        &self,
        region: Option<&RegionId>,
        now: Timestamp,
        mut each: impl FnMut(&Site),
    ) {
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.engine.list_live(region, after.as_deref(), CHUNK, now);
            for (car_park, availability) in &page {
                each(&Site::new(car_park.clone(), availability));
            }
            match (more, page.last()) {
                (true, Some((last, _))) => after = Some(last.id.as_str().to_owned()),
                _ => return,
            }
        }
    }

    /// A whole snapshot: `head`, every site written by `write` comma-separated,
    /// `tail`.
    fn snapshot(
        &self,
        region: Option<&RegionId>,
        head: &[u8],
        tail: &[u8],
        mut write: impl FnMut(&mut Vec<u8>, &Site),
    ) -> Vec<u8> {
        let mut out = head.to_vec();
        let mut first = true;
        self.for_each_site(region, self.clock.now(), |site| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            write(&mut out, site);
        });
        out.extend_from_slice(tail);
        out
    }
}

/// A client error (or a server one) as JSON, as the HTTP port's other routes answer.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    message: String,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// Runs a snapshot's rendering off the runtime's workers: a big city takes a while.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work)
        .await
        .expect("rendering a snapshot does not panic")
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// A snapshot's response: its ETag (a hash of the body), 304 when the client has it,
/// and how long it may be reused.
fn cacheable(request: &HeaderMap, content_type: &'static str, body: Vec<u8>) -> Response {
    let etag = etag_of(&body, false);
    respond(request, content_type, body, etag)
}

/// The ETag of `bytes`: strong, or weak (`W/`) when it covers what a body means but
/// not every byte of it.
fn etag_of(bytes: &[u8], weak: bool) -> HeaderValue {
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let weak = if weak { "W/" } else { "" };
    HeaderValue::from_str(&format!("{weak}\"{:016x}\"", hasher.finish()))
        .expect("hex is a valid header value")
}

fn respond(
    request: &HeaderMap,
    content_type: &'static str,
    body: Vec<u8>,
    etag: HeaderValue,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={MAX_AGE_SECS}"))
            .expect("a valid header value"),
    );
    headers.insert(header::ETAG, etag.clone());
    if crate::http::has_etag(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (headers, body).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionQuery {
    region: Option<String>,
}

async fn car_parks_geojson(
    State(data): State<OpenData>,
    query: Result<Query<RegionQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let region = data.region(query?.region.as_deref())?;
    let body = off_runtime(move || {
        data.snapshot(
            region.as_ref(),
            geojson::HEAD,
            geojson::TAIL,
            geojson::write_feature,
        )
    })
    .await;
    Ok(cacheable(&headers, "application/geo+json", body))
}

async fn datex2_light(
    State(data): State<OpenData>,
    query: Result<Query<RegionQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let region = data.region(query?.region.as_deref())?;
    let mut body = datex2::head(&data.publisher, data.clock.now());
    let sites =
        off_runtime(move || data.snapshot(region.as_ref(), b"", datex2::TAIL, datex2::write_site))
            .await;
    // `publicationTime` is the time of the request: the ETag is the sites' alone (weak:
    // the same sites are the same publication), so a poller gets 304 while none of
    // them changed, where a hash of the whole body changed every second.
    let etag = etag_of(&sites, true);
    body.extend_from_slice(&sites);
    Ok(respond(&headers, "application/json", body, etag))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NgsiQuery {
    region: Option<String>,
    options: Option<String>,
}

async fn ngsi_ld(
    State(data): State<OpenData>,
    query: Result<Query<NgsiQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let region = data.region(query.region.as_deref())?;
    let key_values = match query.options.as_deref() {
        None | Some("normalized") => false,
        Some("keyValues" | "concise") => true,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "options: {other:?} is not keyValues or normalized"
            )));
        }
    };
    let body = off_runtime(move || {
        data.snapshot(region.as_ref(), b"[", b"]", |out, site| {
            let entity = if key_values {
                ngsi::key_values(site)
            } else {
                ngsi::normalized(site)
            };
            serde_json::to_writer(out, &entity).expect("an entity serialises");
        })
    })
    .await;
    Ok(cacheable(&headers, "application/ld+json", body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    region: Option<String>,
    start: Option<String>,
    limit: Option<String>,
}

async fn parking_sites(
    State(data): State<OpenData>,
    query: Result<Query<PageQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Query(query) = query?;
    let region = data.region(query.region.as_deref())?;
    let limit = match query.limit.as_deref() {
        None => parkapi::MAX_LIMIT,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=parkapi::MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(format!("limit: must be 1 to {}", parkapi::MAX_LIMIT))
            })?,
    };
    let start = match query.start.as_deref() {
        None => None,
        Some(id) => Some(
            crate::domain::CarParkId::parse(id)
                .map_err(|_| Problem::bad_request("start: is not a next_id this API gave"))?,
        ),
    };
    let now = data.clock.now();
    // The total from the same read as the page: the regions' one-second count showed
    // 139 beside 157 items while car parks were being registered.
    let (page, more, total_count) = data.engine.list_live_counted(
        region.as_ref(),
        start.as_ref().map(|s| s.as_str()),
        limit,
        now,
    );
    let sites: Vec<Site> = page
        .iter()
        .map(|(car_park, availability)| Site::new(car_park.clone(), availability))
        .collect();
    let next_id = more.then(|| sites.last().map(Site::id)).flatten();
    let next_path = next_id.map(|id| {
        let mut path = format!("/open-data/v1/parking-sites?start={id}&limit={limit}");
        if let Some(region) = &region {
            path.push_str(&format!("&region={region}"));
        }
        path
    });
    let body = serde_json::to_vec(&parkapi::Page {
        items: sites.iter().map(parkapi::item).collect(),
        total_count,
        next_id,
        next_path,
    })
    .expect("a page serialises");
    Ok(cacheable(&headers, "application/json", body))
}
