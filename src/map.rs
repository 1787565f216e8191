//! The live city map on the HTTP port (`/map/`): the page and its script, built from
//! `web/` by build.rs and embedded here, and `config.json`, which tells the page where
//! the gRPC-Web API answers and which regions there are. The data itself flows over
//! gRPC-Web (ListCarParks, WatchAvailability, FindNearby, GetCarPark), so the map
//! reads what every other client reads.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use sha2::{Digest, Sha256};

use crate::http::{Regions, has_etag};

/// Where the page is; `/` redirects here.
pub const PATH: &str = "/map/";

/// How the map is set up (`--map-*` flags).
#[derive(Debug, Clone, Default)]
pub struct MapSettings {
    /// The URL browsers reach the gRPC port at, when it is not the map's own host on
    /// the gRPC port (behind a proxy, say).
    pub grpc_web_url: Option<String>,
    /// An XYZ tile URL template (`https://…/{z}/{x}/{y}.png`); no tiles when unset, so
    /// the map works offline.
    pub tiles_url: Option<String>,
    /// The attribution the tile provider asks for, shown on the map.
    pub tiles_attribution: String,
}

/// What the map's routes read.
#[derive(Clone)]
pub struct Map {
    regions: Arc<Regions>,
    settings: Arc<MapSettings>,
    grpc_port: u16,
    max_watch_car_parks: usize,
}

impl Map {
    pub fn new(
        regions: Arc<Regions>,
        settings: MapSettings,
        grpc_port: u16,
        max_watch_car_parks: usize,
    ) -> Self {
        Self {
            regions,
            settings: Arc::new(settings),
            grpc_port,
            max_watch_car_parks,
        }
    }

    /// The map's routes.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to(PATH) }))
            .route("/map", get(|| async { Redirect::to(PATH) }))
            .route(PATH, get(|h: HeaderMap| async move { asset(&INDEX, &h) }))
            .route(
                "/map/app.js",
                get(|h: HeaderMap| async move { asset(&APP_JS, &h) }),
            )
            .route(
                "/map/app.css",
                get(|h: HeaderMap| async move { asset(&APP_CSS, &h) }),
            )
            .route(
                "/map/licenses.txt",
                get(|h: HeaderMap| async move { asset(&LICENSES, &h) }),
            )
            .route("/map/config.json", get(config))
            .with_state(self)
    }

    fn config_json(&self) -> axum::body::Bytes {
        let regions: Vec<_> = self
            .regions
            .get()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.region.as_str(),
                    "car_parks": r.car_parks,
                    "south_west": [r.south_west.0, r.south_west.1],
                    "north_east": [r.north_east.0, r.north_east.1],
                })
            })
            .collect();
        let body = serde_json::json!({
            "grpc_web_url": self.settings.grpc_web_url,
            "grpc_port": self.grpc_port,
            "tiles_url": self.settings.tiles_url,
            "tiles_attribution": self.settings.tiles_attribution,
            "max_watch_car_parks": self.max_watch_car_parks,
            "regions": regions,
        });
        axum::body::Bytes::from(body.to_string())
    }
}

async fn config(State(map): State<Map>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        map.config_json(),
    )
        .into_response()
}

/// One embedded file: its type, its bytes plain and gzipped, and an ETag.
struct Asset {
    content_type: &'static str,
    plain: &'static [u8],
    gzip: Option<&'static [u8]>,
    etag: std::sync::LazyLock<HeaderValue>,
}

macro_rules! asset {
    ($file:literal, $type:literal) => {
        asset!(@ $file, $type, None)
    };
    ($file:literal, $type:literal, gzip) => {
        asset!(@ $file, $type, Some(include_bytes!(concat!(env!("CITYPARK_MAP_DIST"), "/", $file, ".gz"))))
    };
    (@ $file:literal, $type:literal, $gzip:expr) => {
        Asset {
            content_type: $type,
            plain: include_bytes!(concat!(env!("CITYPARK_MAP_DIST"), "/", $file)),
            gzip: $gzip,
            etag: std::sync::LazyLock::new(|| {
                etag(include_bytes!(concat!(env!("CITYPARK_MAP_DIST"), "/", $file)))
            }),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static APP_JS: Asset = asset!("app.js", "text/javascript; charset=utf-8", gzip);
static APP_CSS: Asset = asset!("app.css", "text/css; charset=utf-8", gzip);
static LICENSES: Asset = asset!("licenses.txt", "text/plain; charset=utf-8");

fn etag(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12])))
        .expect("hex is a valid header value")
}

/// The page's scripts and styles may come from this server only; the data comes from
/// the gRPC-Web port (another origin) and tiles from their provider, if any.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: http: https:; \
     connect-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'";

fn asset(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = &*asset.etag;
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag.clone());
    // Revalidated on every load (the names carry no hash), which an ETag makes cheap.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
    }
    if asset.gzip.is_some() {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if has_etag(request, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    match asset.gzip {
        Some(gzip) if accepts_gzip(request) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            (headers, gzip).into_response()
        }
        _ => (headers, asset.plain).into_response(),
    }
}

/// Whether the client takes gzip: listed in Accept-Encoding without `q=0`.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, accept.parse().unwrap());
        h
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_take_it() {
        assert!(accepts_gzip(&headers("gzip, deflate, br")));
        assert!(accepts_gzip(&headers("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&headers("*")));
        assert!(!accepts_gzip(&headers("gzip;q=0, br")));
        assert!(!accepts_gzip(&headers("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_embedded_page_loads_its_script_and_styles() {
        let page = std::str::from_utf8(INDEX.plain).unwrap();
        assert!(page.contains(r#"src="app.js""#), "{page}");
        assert!(page.contains(r#"href="app.css""#), "{page}");
        assert!(!APP_JS.plain.is_empty() && APP_JS.gzip.is_some_and(|g| !g.is_empty()));
        let licenses = std::str::from_utf8(LICENSES.plain).unwrap();
        for package in ["leaflet", "@bufbuild/protobuf", "@connectrpc/connect-web"] {
            assert!(licenses.contains(&format!("== {package} ")), "{package}");
        }
    }
}
