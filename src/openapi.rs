//! `GET /openapi.json` on the HTTP port: the OpenAPI 3.1 description of the HTTP/JSON
//! API that the gRPC port serves by the Connect protocol, generated from `proto/` at
//! build time (`build/openapi.rs`), with `servers` naming the gRPC port as the caller
//! reaches this host (or `--map-grpc-web-url`, where a proxy serves it).

use std::sync::{Arc, LazyLock};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// The description as generated, made compact once: an object whose first key each
/// answer puts before it is `servers` (a request's only part of its own).
static DESCRIPTION: LazyLock<String> = LazyLock::new(|| {
    let description: serde_json::Value =
        serde_json::from_str(include_str!(concat!(env!("OUT_DIR"), "/openapi.json")))
            .expect("build.rs writes valid JSON");
    description.to_string()
});

/// The description with `servers` naming `url`.
fn with_server(url: &str) -> String {
    let servers = serde_json::json!([{ "url": url }]);
    // `{"servers":[…],` and the rest of the generated object after its `{`.
    format!("{{\"servers\":{servers},{}", &DESCRIPTION[1..])
}

/// Where the API is, for the description's `servers`.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// The URL of the gRPC port when it is not this host's (`--map-grpc-web-url`).
    pub base_url: Option<String>,
    pub grpc_port: u16,
    /// The gRPC port speaks TLS.
    pub tls: bool,
}

impl OpenApi {
    pub fn routes(self) -> Router {
        Router::new()
            .route("/openapi.json", get(description))
            .with_state(Arc::new(self))
    }

    /// The gRPC port's URL as a caller who reached this port by `host` reaches it.
    fn server_url(&self, host: Option<&str>) -> String {
        if let Some(url) = &self.base_url {
            return url.trim_end_matches('/').to_owned();
        }
        let scheme = if self.tls { "https" } else { "http" };
        let host = host.unwrap_or("127.0.0.1");
        // The host without its port (an IPv6 literal keeps its brackets).
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !port.contains(']') => name,
            _ => host,
        };
        format!("{scheme}://{name}:{}", self.grpc_port)
    }
}

async fn description(State(api): State<Arc<OpenApi>>, headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        with_server(&api.server_url(host)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_the_grpc_port_of_the_host_the_caller_reached() {
        let api = OpenApi {
            base_url: None,
            grpc_port: 50051,
            tls: false,
        };
        assert_eq!(
            api.server_url(Some("parking.example:8080")),
            "http://parking.example:50051"
        );
        assert_eq!(api.server_url(Some("[::1]:8080")), "http://[::1]:50051");
        assert_eq!(api.server_url(Some("[::1]")), "http://[::1]:50051");
        let behind = OpenApi {
            base_url: Some("https://api.parking.example/".into()),
            ..api
        };
        assert_eq!(behind.server_url(None), "https://api.parking.example");
    }

    #[test]
    fn every_unary_method_has_its_path_and_streams_none() {
        let description: serde_json::Value =
            serde_json::from_str(&with_server("http://parking.example:50051")).unwrap();
        assert_eq!(
            description["servers"][0]["url"],
            "http://parking.example:50051"
        );
        assert_eq!(description["openapi"], "3.1.0");
        let paths = description["paths"].as_object().unwrap();
        assert!(paths.contains_key("/citypark.v1.Ingest/Report"));
        assert!(paths.contains_key("/citypark.v1.Availability/FindNearby"));
        assert!(!paths.contains_key("/citypark.v1.Availability/WatchAvailability"));
        assert!(!paths.contains_key("/citypark.v1.Ingest/Publish"));
        let schema = &description["components"]["schemas"]["citypark.v1.FindNearbyRequest"];
        assert_eq!(schema["properties"]["radiusM"]["type"], "number");
        assert!(
            schema["properties"]["radiusM"]["description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "field comments become descriptions"
        );
    }
}
