//! Open data over HTTP (`/open-data/v1/…`): every export validated against the
//! published JSON Schema of its standard (`tests/data/schemas/`, offline), realtime
//! numbers published only while they are live, ParkAPI-style cursor paging, ETags and
//! JSON errors, and the change stream as Server-Sent Events, resumable with
//! `Last-Event-ID`.

use std::path::Path;

use citypark::{clock::Clock as _, pb};
use http_body_util::BodyExt as _;
use serde_json::Value;

use crate::support::*;

fn schema_file(path: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/schemas")
        .join(path);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A validator for `path`, with `extra` schemas it `$ref`s registered under their
/// `$id`, and `format` checked; nothing is fetched.
fn validator(path: &str, extra: &[&str]) -> jsonschema::Validator {
    let mut registry = jsonschema::Registry::new();
    for path in extra {
        let schema = schema_file(path);
        let id = schema["$id"].as_str().unwrap().to_owned();
        registry = registry.add(id, schema).unwrap();
    }
    let registry = registry.prepare().unwrap();
    jsonschema::options()
        .with_registry(&registry)
        .offline()
        .should_validate_formats(true)
        .build(&schema_file(path))
        .unwrap()
}

fn assert_valid(validator: &jsonschema::Validator, document: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

async fn get_json(server: &TestServer, path: &str) -> Value {
    let (status, _, body) = http_get(server.http_addr, path, &[]).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// A city of four in qingdao (live and open, closed by its operator, stale and
/// underground, never reported) and one in yantai.
async fn small_city(server: &TestServer) {
    let now = server.clock.now();
    register(server, garage("live", 36.06, 120.38)).await;
    report_ok(server, snapshot("live", 1, 42, now)).await;
    register(
        server,
        pb::CarPark {
            closed: true,
            kind: pb::CarParkKind::SurfaceLot.into(),
            ..garage("shut", 36.07, 120.39)
        },
    )
    .await;
    report_ok(server, snapshot("shut", 1, 10, now)).await;
    register(
        server,
        pb::CarPark {
            kind: pb::CarParkKind::UndergroundGarage.into(),
            ..garage("old", 36.08, 120.40)
        },
    )
    .await;
    report_ok(server, snapshot("old", 1, 5, after(now, -600))).await;
    register(
        server,
        pb::CarPark {
            kind: pb::CarParkKind::OnStreet.into(),
            ..garage("quiet", 36.09, 120.41)
        },
    )
    .await;
    register(
        server,
        pb::CarPark {
            region: "yantai".into(),
            ..garage("far", 37.5, 121.4)
        },
    )
    .await;
}

#[tokio::test]
async fn geojson_is_a_valid_feature_collection_with_numbers_only_when_live() {
    let server = TestServer::start().await;
    small_city(&server).await;
    let all = get_json(&server, "/open-data/v1/car-parks.geojson").await;
    assert_valid(
        &validator("geojson/FeatureCollection.json", &[]),
        &all,
        "GeoJSON",
    );
    assert_eq!(all["features"].as_array().unwrap().len(), 5);

    let qingdao = get_json(&server, "/open-data/v1/car-parks.geojson?region=qingdao").await;
    let features = qingdao["features"].as_array().unwrap();
    let ids: Vec<&str> = features.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["live", "old", "quiet", "shut"], "in id order");
    let live = &features[0];
    assert_eq!(
        live["geometry"]["coordinates"],
        serde_json::json!([120.38, 36.06])
    );
    let p = &live["properties"];
    assert_eq!(
        (&p["name"], &p["status"], &p["capacity"], &p["available"]),
        (
            &Value::from("Garage live"),
            &Value::from("open"),
            &Value::from(110),
            &Value::from(52)
        ),
        "42 standard and 10 EV free of 110: {p}"
    );
    assert_eq!(
        p["capacity_by_category"],
        serde_json::json!({"standard": 100, "ev_charging": 10})
    );
    assert_eq!(p["observed_at"], "2026-11-30T02:00:00Z");
    for (feature, status) in [(&features[1], "stale"), (&features[2], "no_data")] {
        let p = &feature["properties"];
        assert_eq!(p["status"], status);
        assert!(
            p.get("available").is_none() && p.get("observed_at").is_none(),
            "{p}"
        );
    }
    assert_eq!(features[3]["properties"]["status"], "closed");
    assert_eq!(
        features[3]["properties"]["available"], 20,
        "closed, but its numbers are live"
    );
}

#[tokio::test]
async fn parking_sites_are_parkapi_v3_shaped_and_drop_realtime_when_stale() {
    let server = TestServer::start().await;
    small_city(&server).await;
    let list = validator(
        "parkapi-v3/parking-site-list.schema.json",
        &["parkapi-v3/parking-site.schema.json"],
    );
    let page = get_json(&server, "/open-data/v1/parking-sites?region=qingdao").await;
    assert_valid(&list, &page, "ParkAPI v3 parking sites");
    assert_eq!(page["total_count"], 4);
    assert!(page.get("next_id").is_none(), "one page: {page}");
    let items = page["items"].as_array().unwrap();
    let live = &items[0];
    assert_eq!(live["original_uid"], "live");
    assert_eq!(live["id"], citypark::open_data::numeric_id("live"));
    assert_eq!(
        (
            &live["type"],
            &live["has_realtime_data"],
            &live["realtime_free_capacity"]
        ),
        (
            &Value::from("CAR_PARK"),
            &Value::from(true),
            &Value::from(52)
        )
    );
    assert_eq!(live["realtime_opening_status"], "OPEN");
    assert_eq!(live["realtime_data_updated_at"], "2026-11-30T02:00:00Z");
    assert_eq!(live["capacity_charging"], 10);
    for stale in [&items[1], &items[2]] {
        assert_eq!(stale["has_realtime_data"], false, "{stale}");
        let realtime: Vec<&String> = stale
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("realtime_"))
            .collect();
        assert!(realtime.is_empty(), "{stale}");
    }
    assert_eq!(items[3]["realtime_opening_status"], "CLOSED");
    assert_eq!(items[3]["type"], "OFF_STREET_PARKING_GROUND");
    // A garage below ground is ParkAPI's UNDERGROUND, not CAR_PARK (issue 22, item 7).
    assert_eq!(items[1]["original_uid"], "old");
    assert_eq!(items[1]["type"], "UNDERGROUND");
    assert_eq!(items[0]["type"], "CAR_PARK");
}

/// `total_count` is counted in the same read as the items: it came from the regions'
/// count, cached for a second, and showed 139 beside 157 items while car parks were
/// registered (issue 22, item 3).
#[tokio::test]
async fn parking_sites_count_what_they_list_while_car_parks_come_and_go() {
    let server = TestServer::start().await;
    let page = |path: &'static str| get_json(&server, path);
    for i in 0..6 {
        register(&server, garage_north(&format!("c{i}"), f64::from(i) * 50.0)).await;
        // A car park elsewhere too: the region's count is its own.
        register(
            &server,
            pb::CarPark {
                region: "yantai".into(),
                ..garage(&format!("y{i}"), 37.5, 121.4 + f64::from(i) / 100.0)
            },
        )
        .await;
        for (path, expected) in [
            ("/open-data/v1/parking-sites", 2 * (i + 1)),
            ("/open-data/v1/parking-sites?region=qingdao", i + 1),
            ("/open-data/v1/parking-sites?region=yantai", i + 1),
        ] {
            let listed = page(path).await;
            assert_eq!(listed["items"].as_array().unwrap().len(), expected as usize);
            assert_eq!(listed["total_count"], expected, "{path} after {i}");
        }
    }
    server
        .registry()
        .await
        .delete_car_park(authed(
            pb::DeleteCarParkRequest { id: "c0".into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap();
    let listed = page("/open-data/v1/parking-sites?region=qingdao").await;
    assert_eq!(listed["total_count"], 5);
    // A region registered a moment ago is known at once (not 404 for a second).
    register(
        &server,
        pb::CarPark {
            region: "weihai".into(),
            ..garage("w0", 37.5, 122.1)
        },
    )
    .await;
    let listed = page("/open-data/v1/parking-sites?region=weihai").await;
    assert_eq!(listed["total_count"], 1);
}

/// ParkAPI v3 requires `static_data_updated_at`: when the registration last changed.
/// A replace that changes nothing and a report leave it (and the ETag) as they were.
#[tokio::test]
async fn parking_sites_say_when_each_registration_last_changed() {
    let server = TestServer::start().await;
    let first = server.clock.now();
    let stored = register(&server, garage("g1", 36.06, 120.38)).await;
    assert_eq!(stored.modified_at, Some(pb_time(first)));
    let path = "/open-data/v1/parking-sites?region=qingdao";
    let updated_at = |page: &Value| page["items"][0]["static_data_updated_at"].clone();
    let iso =
        |t: citypark::domain::Timestamp| Value::from(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let (status, headers, body) = http_get(server.http_addr, path, &[]).await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(updated_at(&page), iso(first));
    let etag = header(&headers, "etag").unwrap().to_owned();

    server.advance(60);
    let again = register(&server, garage("g1", 36.06, 120.38)).await;
    assert_eq!(
        again.modified_at, stored.modified_at,
        "the same registration"
    );
    let (status, _, _) = http_get(server.http_addr, path, &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 304, "nothing a consumer sees changed");

    server.advance(60);
    let renamed = register(
        &server,
        pb::CarPark {
            name: "Garage g1, renamed".into(),
            ..garage("g1", 36.06, 120.38)
        },
    )
    .await;
    let changed = server.clock.now();
    assert_eq!(renamed.modified_at, Some(pb_time(changed)));
    server.advance(60);
    report_ok(&server, snapshot("g1", 1, 42, server.clock.now())).await;
    let page = get_json(&server, path).await;
    assert_eq!(page["items"][0]["name"], "Garage g1, renamed");
    assert_eq!(
        updated_at(&page),
        iso(changed),
        "a report is not a registration"
    );
    let got = server
        .registry()
        .await
        .get_car_park(pb::GetCarParkRequest { id: "g1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.car_park.unwrap().modified_at, Some(pb_time(changed)));
}

#[tokio::test]
async fn parking_sites_page_with_a_cursor_until_every_site_came_once() {
    let server = TestServer::start().await;
    for i in 0..25 {
        register(
            &server,
            garage_north(&format!("p{i:02}"), f64::from(i) * 50.0),
        )
        .await;
    }
    let list = validator(
        "parkapi-v3/parking-site-list.schema.json",
        &["parkapi-v3/parking-site.schema.json"],
    );
    let mut path = "/open-data/v1/parking-sites?limit=10".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = get_json(&server, &path).await;
        assert_valid(&list, &page, &path);
        assert_eq!(page["total_count"], 25);
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["original_uid"].as_str().unwrap().to_owned()),
        );
        match page["next_path"].as_str() {
            Some(next) => {
                assert_eq!(page["next_id"], Value::from(seen.last().unwrap().as_str()));
                path = next.to_owned();
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!((pages, seen), (3, expected));
}

#[tokio::test]
async fn ngsi_ld_entities_are_fiware_offstreetparking_with_their_context() {
    let server = TestServer::start().await;
    small_city(&server).await;
    let model = validator(
        "fiware/OffStreetParking.schema.json",
        &["fiware/common-schema.json"],
    );
    let (status, headers, body) = http_get(
        server.http_addr,
        "/open-data/v1/ngsi-ld/OffStreetParking?region=qingdao&options=keyValues",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/ld+json")
    );
    let entities: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(entities.len(), 4);
    for entity in &entities {
        assert_valid(&model, entity, &entity["id"].to_string());
        assert_eq!(
            entity["@context"][0],
            "https://smartdatamodels.org/context.jsonld"
        );
    }
    let live = &entities[0];
    assert_eq!(live["id"], "urn:ngsi-ld:OffStreetParking:live");
    assert_eq!(
        (&live["availableSpotNumber"], &live["totalSpotNumber"]),
        (&Value::from(52), &Value::from(110))
    );
    assert_eq!(
        live["status"],
        serde_json::json!(["open", "spacesAvailable"])
    );
    assert!(entities[1].get("availableSpotNumber").is_none(), "stale");

    // Normalised, the default: the same attributes as Properties, the live numbers
    // with when they were observed.
    let normalized: Vec<Value> = serde_json::from_slice(
        &http_get(
            server.http_addr,
            "/open-data/v1/ngsi-ld/OffStreetParking?region=qingdao",
            &[],
        )
        .await
        .2,
    )
    .unwrap();
    let n = &normalized[0];
    assert_eq!(n["type"], "OffStreetParking");
    assert_eq!(
        n["availableSpotNumber"],
        serde_json::json!({"type": "Property", "value": 52, "observedAt": "2026-11-30T02:00:00Z"})
    );
    assert_eq!(n["location"]["type"], "GeoProperty");
    assert_eq!(
        n["name"],
        serde_json::json!({"type": "Property", "value": "Garage live"})
    );
    let category = |e: &Value| e["category"]["value"].clone();
    assert_eq!(category(n), serde_json::json!(["public", "parkingGarage"]));
    let old = normalized
        .iter()
        .find(|e| e["id"].as_str().unwrap().ends_with(":old"))
        .unwrap();
    assert_eq!(category(old), serde_json::json!(["public", "underground"]));
}

#[tokio::test]
async fn datex2_light_has_its_header_and_wrapped_enums() {
    let server = TestServer::start().await;
    small_city(&server).await;
    let document = get_json(
        &server,
        "/open-data/v1/datex2/parking-publication-light?region=qingdao",
    )
    .await;
    assert_valid(
        &validator("datex2/parking-publication-light.schema.json", &[]),
        &document,
        "DATEX II Light",
    );
    let publication = &document["parkingPublicationLight"];
    assert_eq!(
        publication["publicationCreator"],
        serde_json::json!({"country": "CN", "nationalIdentifier": "citypark"})
    );
    let sites = publication["parkingSite"].as_array().unwrap();
    assert_eq!(sites.len(), 4);
    assert_eq!(sites[0]["type"], serde_json::json!({"value": "carPark"}));
    assert_eq!(
        (
            &sites[0]["numberOfSpaces"],
            &sites[0]["availableSpaces"],
            &sites[0]["isOpenNow"]
        ),
        (&Value::from(110), &Value::from(52), &Value::from(true))
    );
    assert!(
        sites[1].get("availableSpaces").is_none(),
        "stale: {}",
        sites[1]
    );
    assert_eq!(sites[2]["type"], serde_json::json!({"value": "onStreet"}));
    assert_eq!(
        (&sites[3]["isOpenNow"], &sites[3]["temporaryClosed"]),
        (&Value::from(false), &Value::from(true))
    );
}

/// DATEX II Light's `publicationTime` is the time of the request, yet a poller gets
/// 304 while no site changed: its ETag is the sites'.
#[tokio::test]
async fn datex2_light_revalidates_while_its_sites_are_unchanged() {
    let server = TestServer::start().await;
    small_city(&server).await;
    let path = "/open-data/v1/datex2/parking-publication-light?region=qingdao";
    let (status, headers, first) = http_get(server.http_addr, path, &[]).await;
    assert_eq!(status, 200);
    let etag = header(&headers, "etag").unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "weak: {etag}");
    server.clock.advance(std::time::Duration::from_secs(5));
    let (status, _, body) = http_get(server.http_addr, path, &[("If-None-Match", &etag)]).await;
    assert_eq!(
        (status, body.len()),
        (304, 0),
        "five seconds on, nothing changed"
    );
    let (status, headers, later) = http_get(server.http_addr, path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
    let time = |body: &[u8]| {
        let document: Value = serde_json::from_slice(body).unwrap();
        document["parkingPublicationLight"]["publicationTime"].clone()
    };
    assert_ne!(
        time(&first),
        time(&later),
        "the publication time is the request's"
    );
    report_ok(&server, snapshot("live", 2, 7, server.clock.now())).await;
    let (status, headers, _) = http_get(server.http_addr, path, &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 200, "a report changes a site");
    assert_ne!(header(&headers, "etag"), Some(etag.as_str()));
}

#[tokio::test]
async fn snapshots_revalidate_by_etag_and_bad_parameters_are_json_errors() {
    let server = TestServer::start_with(|settings| {
        settings.cors_origins = vec!["https://portal.example".parse().unwrap()];
    })
    .await;
    small_city(&server).await;
    let path = "/open-data/v1/car-parks.geojson?region=qingdao";
    let (status, headers, _) = http_get(
        server.http_addr,
        path,
        &[("Origin", "https://portal.example")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "cache-control"),
        Some("public, max-age=10")
    );
    assert_eq!(
        header(&headers, "access-control-allow-origin"),
        Some("https://portal.example")
    );
    let etag = header(&headers, "etag").unwrap().to_owned();
    let (status, _, body) = http_get(server.http_addr, path, &[("If-None-Match", &etag)]).await;
    assert_eq!((status, body.len()), (304, 0));
    report_ok(&server, snapshot("live", 2, 7, server.clock.now())).await;
    let (status, headers, _) = http_get(server.http_addr, path, &[("If-None-Match", &etag)]).await;
    assert_eq!(status, 200, "a report changes the snapshot");
    assert_ne!(header(&headers, "etag"), Some(etag.as_str()));

    for (path, status, words) in [
        ("/open-data/v1/parking-sites?limit=0", 400, "limit"),
        ("/open-data/v1/parking-sites?limit=1001", 400, "limit"),
        ("/open-data/v1/parking-sites?start=%20", 400, "start"),
        (
            "/open-data/v1/car-parks.geojson?region=Nowhere!",
            400,
            "region",
        ),
        (
            "/open-data/v1/car-parks.geojson?region=nowhere",
            404,
            "nowhere",
        ),
        ("/open-data/v1/car-parks.geojson?colour=red", 400, "colour"),
        (
            "/open-data/v1/ngsi-ld/OffStreetParking?options=sideways",
            400,
            "options",
        ),
    ] {
        let (got, headers, body) = http_get(server.http_addr, path, &[]).await;
        assert_eq!(got, status, "{path}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("application/json"),
            "{path}"
        );
        let error: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(words),
            "{path}: {error}"
        );
    }

    // Counted by route pattern and status, with the bytes sent.
    let (_, _, metrics) = http_get(server.metrics_addr, "/metrics", &[]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    for series in [
        r#"citypark_http_requests_total{route="/open-data/v1/car-parks.geojson",status="304"}"#,
        r#"citypark_http_requests_total{route="/open-data/v1/parking-sites",status="400"}"#,
        r#"citypark_http_response_bytes_total{route="/open-data/v1/car-parks.geojson"}"#,
    ] {
        assert!(metrics.contains(series), "{series} not in /metrics");
    }
}

// ---------------------------------------------------------------------------------
// Server-Sent Events

/// An open change stream: its events as (id, event, data) as they come.
struct EventStream {
    body: hyper::body::Incoming,
    buffer: String,
    _connection: tokio::task::JoinHandle<()>,
}

impl EventStream {
    async fn open(server: &TestServer, path: &str, last_event_id: Option<&str>) -> Self {
        let from = std::net::Ipv4Addr::LOCALHOST.into();
        match Self::open_from(server, path, last_event_id, from).await {
            Ok(stream) => stream,
            Err((status, problem)) => panic!("{path}: {status} {problem}"),
        }
    }

    /// As `open`, on a connection from the loopback address `from` (any of 127/8): the
    /// stream, or the refusal's status and JSON body.
    async fn open_from(
        server: &TestServer,
        path: &str,
        last_event_id: Option<&str>,
        from: std::net::IpAddr,
    ) -> Result<Self, (http::StatusCode, Value)> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        let stream = socket.connect(server.http_addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = http::Request::get(path).header("host", "citypark");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = sender
            .send_request(
                request
                    .body(http_body_util::Empty::<axum::body::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        if response.status() != 200 {
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            return Err((status, serde_json::from_slice(&body).unwrap()));
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(Self {
            body: response.into_body(),
            buffer: String::new(),
            _connection: connection,
        })
    }

    /// The next event (comments and `retry:` skipped), within `PATIENCE`.
    async fn next(&mut self) -> (Option<String>, String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(event), Some(data)) = (event, data) {
                    return (id, event, data);
                }
                continue;
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("an event within PATIENCE")
                .expect("the stream is open")
                .unwrap();
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }

    /// The next availability event of `id`.
    async fn next_of(&mut self, id: &str) -> (Option<String>, Value) {
        loop {
            let (event_id, event, data) = self.next().await;
            if event == "availability" && data["car_park_id"] == id {
                return (event_id, data);
            }
        }
    }
}

#[tokio::test]
async fn changes_stream_as_events_and_resume_from_the_last_event_id() {
    let server = TestServer::start().await;
    small_city(&server).await;
    let mut all = EventStream::open(&server, "/open-data/v1/changes", None).await;
    let mut yantai = EventStream::open(&server, "/open-data/v1/changes?region=yantai", None).await;

    report_ok(&server, snapshot("live", 2, 30, server.clock.now())).await;
    let (first, data) = all.next_of("live").await;
    assert_eq!(
        (
            &data["region"],
            &data["status"],
            &data["available"],
            &data["capacity"]
        ),
        (
            &Value::from("qingdao"),
            &Value::from("open"),
            &Value::from(40),
            &Value::from(110)
        )
    );
    let first = first.expect("events carry ids");
    report_ok(&server, snapshot("live", 3, 20, server.clock.now())).await;
    report_ok(&server, snapshot("live", 4, 10, server.clock.now())).await;
    assert_eq!(all.next_of("live").await.1["available"], 30);
    assert_eq!(all.next_of("live").await.1["available"], 20);

    // A consumer that saw only the first reconnects with its id and gets the two it
    // missed, in order.
    let mut resumed = EventStream::open(&server, "/open-data/v1/changes", Some(&first)).await;
    assert_eq!(resumed.next_of("live").await.1["available"], 30);
    assert_eq!(resumed.next_of("live").await.1["available"], 20);

    // An id from another instance (or too old) cannot be resumed: start over.
    let mut lost = EventStream::open(&server, "/open-data/v1/changes", Some("1-1")).await;
    assert_eq!(lost.next().await.1, "resync");

    // The region's consumer saw none of qingdao's changes; yantai's reaches it.
    report_ok(&server, snapshot("far", 1, 3, server.clock.now())).await;
    let (_, event, data) = yantai.next().await;
    assert_eq!(
        (event.as_str(), &data["car_park_id"]),
        ("availability", &Value::from("far"))
    );
    assert_eq!(data["available"], 13);

    // A removal goes to every stream (the car park's region is gone with it).
    server
        .registry()
        .await
        .delete_car_park(authed(
            pb::DeleteCarParkRequest { id: "shut".into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap();
    let (_, event, data) = yantai.next().await;
    assert_eq!(
        (event.as_str(), &data["car_park_id"]),
        ("removed", &Value::from("shut"))
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_change_stream() {
    let server = TestServer::start_with(|s| {
        s.limits.max_watchers = 5;
        s.limits.max_watchers_per_client = 2;
    })
    .await;
    let path = "/open-data/v1/changes";
    let address = |last: u8| std::net::IpAddr::from([127, 0, 0, last]);
    let open = |from| EventStream::open_from(&server, path, None, address(from));

    // One address holds its two, and a third is refused with why: 429, not the
    // server's 503, for it is this client that holds too many.
    let first = open(1).await.unwrap();
    let _second = open(1).await.unwrap();
    let (status, problem) = open(1)
        .await
        .err()
        .expect("a third stream from one address");
    assert_eq!(status, 429, "{problem}");
    let detail = problem.to_string();
    assert!(detail.contains("--max-watchers-per-client"), "{detail}");

    // Other addresses still get theirs, up to the server's cap of five in all.
    let _others = [
        open(2).await.unwrap(),
        open(2).await.unwrap(),
        open(3).await.unwrap(),
    ];
    let (status, problem) = open(4).await.err().expect("a sixth stream");
    assert_eq!(status, 503, "{problem}");
    assert!(problem.to_string().contains("--max-watchers"), "{problem}");

    // A closed stream gives its place back to its address.
    drop(first);
    eventually("the closed stream's place to come back", || async {
        open(1).await.ok()
    })
    .await;

    // The streams have their own count: gRPC watches from the same address are
    // counted apart and are not refused for the streams.
    let mut watch = watch_area(&server, (-89.0, -179.0), (89.0, 179.0))
        .await
        .expect("a gRPC watch beside the address's change streams");
    next_event(&mut watch).await;
}

/// The checks above can fail: each schema refuses a document its standard refuses.
#[test]
fn the_schemas_refuse_what_their_standards_refuse() {
    use serde_json::json;
    let refused = |validator: &jsonschema::Validator, document: Value| {
        assert!(!validator.is_valid(&document), "{document}");
    };
    refused(
        &validator("geojson/FeatureCollection.json", &[]),
        json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1.0]}}
        ]}),
    );
    let site = json!({"id": 1, "source_id": 1, "original_uid": "a", "name": "A",
        "purpose": "CAR", "type": "CAR_PARK", "has_realtime_data": false, "lat": 1.0,
        "lon": 2.0, "capacity": 10, "static_data_updated_at": "2026-12-01T10:00:00Z"});
    let list = validator(
        "parkapi-v3/parking-site-list.schema.json",
        &["parkapi-v3/parking-site.schema.json"],
    );
    assert!(list.is_valid(&json!({"items": [site.clone()], "total_count": 1})));
    let mut bad = site.clone();
    bad["type"] = "GARAGE".into();
    refused(&list, json!({"items": [bad], "total_count": 1}));
    // Upstream's required fields, each of them.
    for field in ["type", "capacity", "static_data_updated_at"] {
        let mut bad = site.clone();
        bad.as_object_mut().unwrap().remove(field);
        refused(&list, json!({"items": [bad], "total_count": 1}));
    }
    let model = validator(
        "fiware/OffStreetParking.schema.json",
        &["fiware/common-schema.json"],
    );
    let entity = json!({"id": "urn:ngsi-ld:OffStreetParking:a", "type": "OffStreetParking",
        "location": {"type": "Point", "coordinates": [2.0, 1.0]}});
    assert!(model.is_valid(&entity));
    let mut bad = entity.clone();
    bad["totalSpotNumber"] = 0.into();
    refused(&model, bad);
    let mut bad = entity;
    bad["location"] = json!({"type": "Point", "coordinates": "here"});
    refused(&model, bad);
    refused(
        &validator("datex2/parking-publication-light.schema.json", &[]),
        json!({"_modelBaseVersion": "3", "parkingPublicationLight": {
            "lang": "en", "publicationTime": "2026-12-01T00:00:00Z",
            "publicationCreator": {"country": "CN", "nationalIdentifier": "x"},
            "parkingSite": [{"_id": "a", "type": "carPark",
                "locationAndDimension": {"coordinatesForDisplay": {"latitude": 1.0, "longitude": 2.0}}}]}}),
    );
}
