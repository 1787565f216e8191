//! `citypark import` as an operator runs it: the real binary, real open-data files
//! (`tests/data/`), a real server; what it prints and what the Registry then holds.

use crate::support::{
    OPERATOR_A, OPERATOR_B, TestServer, all_car_parks, car_park_of, run_status, try_register,
};
use citypark::pb;

/// Runs `citypark import <args>` against `server` with `key` (off the runtime, which
/// serves the test server): its exit code, stdout and stderr.
async fn import(server: &TestServer, key: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all: Vec<String> = vec!["import".into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend([
        "--server".into(),
        format!("http://{}", server.addr),
        "--api-key".into(),
        key.into(),
    ]);
    run_status(all).await
}

/// The last line of stdout: the totals.
fn totals(stdout: &str) -> &str {
    stdout.lines().last().unwrap_or("")
}

/// The table's row for `id` (or, for a skipped record, its name), if printed.
fn row<'a>(stdout: &'a str, first_cells: &[&str]) -> Option<&'a str> {
    stdout.lines().find(|line| {
        let cells: Vec<&str> = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        cells.len() >= first_cells.len() && cells[..first_cells.len()] == *first_cells
    })
}

const DRESDEN: [&str; 6] = [
    "parkapi-geojson",
    "tests/data/parkapi/Dresden.geojson",
    "--region",
    "dresden",
    "--time-zone",
    "Europe/Berlin",
];

#[tokio::test]
async fn dresden_imports_once_then_is_unchanged_and_keeps_what_the_operator_set() {
    let server = TestServer::start().await;

    // A dry run reads the server and writes nothing.
    let dry = [&DRESDEN[..], &["--dry-run"]].concat();
    let (code, stdout, stderr) = import(&server, OPERATOR_A.1, &dry).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "dry run, nothing written: imported 34, updated 0, unchanged 0, skipped 26, failed 0"
    );
    assert!(all_car_parks(&server).await.is_empty(), "a dry run wrote");

    let (code, stdout, stderr) = import(&server, OPERATOR_A.1, &DRESDEN).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 34, updated 0, unchanged 0, skipped 26, failed 0"
    );
    assert!(
        row(
            &stdout,
            &[
                "imported",
                "dresden-haus-am-zwinger",
                "Haus am Zwinger",
                "underground_garage, standard 171"
            ]
        )
        .is_some(),
        "{stdout}"
    );
    for (name, why) in [
        (
            "Terrassenufer Bus",
            "no capacity: the source gives no total",
        ),
        (
            "Centrum Galerie",
            "duplicate of dresden-centrum-galerie (the same id)",
        ),
        (
            "GALERIA Karstadt Kaufhof",
            "duplicate of dresden-karstadt (the same aux 296)",
        ),
    ] {
        assert!(
            row(&stdout, &["skipped", "-", name, why]).is_some(),
            "{name}: {stdout}"
        );
    }
    let registered = all_car_parks(&server).await;
    assert_eq!(registered.len(), 34);
    assert!(
        registered
            .iter()
            .all(|c| c.region == "dresden" && c.operator_id == OPERATOR_A.0)
    );
    let zwinger = car_park_of(&server, "dresden-haus-am-zwinger")
        .await
        .unwrap();
    assert_eq!(zwinger.name, "Haus am Zwinger");
    assert_eq!(zwinger.address, "Kleine Brüdergasse 3");
    assert_eq!(zwinger.kind, pb::CarParkKind::UndergroundGarage as i32);
    assert_eq!(zwinger.time_zone, "Europe/Berlin");
    assert_eq!(
        zwinger.location,
        Some(pb::LatLng {
            latitude: 51.05149,
            longitude: 13.73584
        })
    );
    assert_eq!(
        zwinger.capacity,
        [pb::CategoryCapacity {
            category: pb::SpaceCategory::Standard.into(),
            spaces: 171
        }]
    );
    assert_eq!(zwinger.report_interval_seconds, 60, "the server's default");

    // Again: nothing to do, and the table lists only the skipped records.
    let (code, stdout, stderr) = import(&server, OPERATOR_A.1, &DRESDEN).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 0, unchanged 34, skipped 26, failed 0"
    );
    assert!(!stdout.contains("imported  "), "{stdout}");

    // The operator prices one and renames another by hand: the import keeps the
    // tariff (not its field) and puts the source's name back.
    let priced = pb::CarPark {
        tariff: Some(pb::Tariff {
            currency: "EUR".into(),
            hourly_rate_minor: 250,
            ..Default::default()
        }),
        operator_id: String::new(),
        ..zwinger.clone()
    };
    try_register(&server, priced).await.unwrap();
    let mut renamed = car_park_of(&server, "dresden-prohlis").await.unwrap();
    renamed.name = "Prohlis P+R".into();
    try_register(&server, renamed).await.unwrap();
    let (code, stdout, stderr) = import(&server, OPERATOR_A.1, &DRESDEN).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 1, unchanged 33, skipped 26, failed 0"
    );
    assert!(
        row(
            &stdout,
            &["updated", "dresden-prohlis", "Prohlis", "changed: name"]
        )
        .is_some(),
        "{stdout}"
    );
    assert_eq!(
        car_park_of(&server, "dresden-prohlis").await.unwrap().name,
        "Prohlis"
    );
    let tariff = car_park_of(&server, "dresden-haus-am-zwinger")
        .await
        .unwrap()
        .tariff
        .unwrap();
    assert_eq!(
        (tariff.currency.as_str(), tariff.hourly_rate_minor),
        ("EUR", 250)
    );
}

#[tokio::test]
async fn another_operators_car_parks_fail_with_the_servers_reason() {
    let server = TestServer::start().await;
    let bonn = [
        "parkapi-geojson",
        "tests/data/parkapi/Bonn.geojson",
        "--region",
        "bonn",
        "--time-zone",
        "Europe/Berlin",
        "--default-kind",
        "garage",
    ];
    let (code, stdout, stderr) = import(&server, OPERATOR_A.1, &bonn).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 6, updated 0, unchanged 0, skipped 5, failed 0"
    );
    assert!(
        stdout.contains("6 car park(s) name no kind in the source: garage (--default-kind)"),
        "{stdout}"
    );

    // Operator B's import of the same file: every car park is A's, equal or not.
    let dry = [&bonn[..], &["--dry-run"]].concat();
    let (code, stdout, stderr) = import(&server, OPERATOR_B.1, &dry).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "dry run, nothing written: imported 0, updated 0, unchanged 0, skipped 5, failed 6"
    );
    assert!(
        row(
            &stdout,
            &[
                "failed",
                "bonn-marktgarage",
                "Marktgarage",
                "would be refused: belongs to operator op-a"
            ]
        )
        .is_some(),
        "{stdout}"
    );
    let (code, stdout, stderr) = import(&server, OPERATOR_B.1, &bonn).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 0, unchanged 0, skipped 5, failed 6"
    );
    let failed = row(&stdout, &["failed", "bonn-marktgarage"]).expect(&stdout);
    assert!(
        failed.contains("PermissionDenied: car park bonn-marktgarage belongs to another operator"),
        "{failed}"
    );
    assert_eq!(stderr.trim(), "citypark: 6 of 6 car parks failed");
    assert!(
        all_car_parks(&server)
            .await
            .iter()
            .all(|c| c.operator_id == OPERATOR_A.0)
    );

    // A key the server does not know stops the import before anything is read back.
    let (code, stdout, stderr) = import(&server, "no-such-key", &bonn).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("does not know this operator credential"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
}

#[tokio::test]
async fn parkapi_v3_and_ngsi_files_import_and_agree_with_each_other() {
    let server = TestServer::start().await;
    let v3 = |file: &'static str| {
        [
            "parkapi-v3",
            file,
            "--region",
            "stuttgart",
            "--time-zone",
            "Europe/Berlin",
        ]
    };
    let (code, stdout, stderr) = import(
        &server,
        OPERATOR_A.1,
        &v3("tests/data/parkapi-v3/admin-parking-site-list.json"),
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 1, updated 0, unchanged 0, skipped 1, failed 0"
    );
    assert!(
        row(
            &stdout,
            &[
                "skipped",
                "-",
                "Bülow Carre",
                "no id: the site has neither original_uid nor uid"
            ]
        )
        .is_some(),
        "{stdout}"
    );
    let site = car_park_of(&server, "12717250").await.unwrap();
    assert_eq!(
        (site.name.as_str(), site.kind),
        ("Parkhaus Hofdiener", pb::CarParkKind::OnStreet as i32)
    );

    // The same site with its 11 spaces for disabled drivers: capacity changes.
    let (code, stdout, stderr) = import(
        &server,
        OPERATOR_A.1,
        &v3("tests/data/parkapi-v3/admin-parking-site-item-with-relations.json"),
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 1, unchanged 0, skipped 0, failed 0"
    );
    assert!(
        row(
            &stdout,
            &[
                "updated",
                "12717250",
                "Parkhaus Hofdiener",
                "changed: capacity"
            ]
        )
        .is_some(),
        "{stdout}"
    );
    let site = car_park_of(&server, "12717250").await.unwrap();
    let spaces: Vec<(i32, i32)> = site
        .capacity
        .iter()
        .map(|c| (c.category, c.spaces))
        .collect();
    assert_eq!(
        spaces,
        [
            (pb::SpaceCategory::Standard as i32, 147),
            (pb::SpaceCategory::Accessible as i32, 11)
        ]
    );
    // The deprecated fields say the same.
    let (_, stdout, _) = import(
        &server,
        OPERATOR_A.1,
        &v3("tests/data/parkapi-v3/admin-parking-site-item-with-legacy-fields.json"),
    )
    .await;
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 0, unchanged 1, skipped 0, failed 0"
    );

    let ngsi = |file: &'static str| {
        [
            "ngsi",
            file,
            "--region",
            "porto",
            "--time-zone",
            "Europe/Lisbon",
        ]
    };
    let (code, stdout, stderr) = import(
        &server,
        OPERATOR_A.1,
        &ngsi("tests/data/fiware/example.json"),
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 1, updated 0, unchanged 0, skipped 0, failed 0"
    );
    let trindade = car_park_of(&server, "porto-ParkingLot-23889")
        .await
        .unwrap();
    assert_eq!(trindade.name, "Parque de estacionamento Trindade");
    assert_eq!(trindade.address, "Rua de Fernandes Tomás, Porto, Portugal");
    assert_eq!(trindade.kind, pb::CarParkKind::UndergroundGarage as i32);
    assert_eq!(trindade.capacity[0].spaces, 414);
    // NGSI-LD and normalized NGSI-v2 of the same entity: the same car park.
    for file in [
        "tests/data/fiware/example.jsonld",
        "tests/data/fiware/example-normalized.json",
    ] {
        let (code, stdout, stderr) = import(&server, OPERATOR_A.1, &ngsi(file)).await;
        assert_eq!(code, Some(0), "{file}: {stdout}{stderr}");
        assert_eq!(
            totals(&stdout),
            "totals: imported 0, updated 0, unchanged 1, skipped 0, failed 0",
            "{file}"
        );
    }
    assert_eq!(all_car_parks(&server).await.len(), 2);

    // An id held in another region is the server's to refuse.
    let moved = [
        "ngsi",
        "tests/data/fiware/example.jsonld",
        "--region",
        "lisbon",
        "--time-zone",
        "Europe/Lisbon",
    ];
    let (code, stdout, _) = import(&server, OPERATOR_A.1, &moved).await;
    assert_eq!(code, Some(1), "{stdout}");
    let failed = row(&stdout, &["failed", "porto-ParkingLot-23889"]).expect(&stdout);
    assert!(
        failed.contains("FailedPrecondition: car park porto-ParkingLot-23889 is in region porto"),
        "{failed}"
    );
}

/// A real city in and out: Dresden imported from ParkAPI's GeoJSON, then exported as
/// GeoJSON and as ParkAPI v3 parking sites; every lot the import took comes out with
/// the source's name, position and capacity, and nothing else comes out.
#[tokio::test]
async fn dresden_round_trips_through_the_geojson_and_parkapi_exports() {
    let server = TestServer::start().await;
    round_trip(&server, &server).await;
}

/// The same on Redis: imported through one instance, exported by another, which has
/// the city from the store's change stream.
#[tokio::test]
async fn dresden_imported_through_one_instance_is_exported_by_another_on_redis() {
    let Some(redis) = crate::redis_support::RedisServer::start() else {
        return;
    };
    let prefix = crate::redis_support::key_prefix();
    let importer = TestServer::start_redis(&redis.url(), &prefix).await;
    let exporter = TestServer::start_redis(&redis.url(), &prefix).await;
    round_trip(&importer, &exporter).await;
}

/// Imports Dresden through `importer`, waits until `exporter` holds its 34 lots, and
/// compares both exports of `exporter` with the source.
async fn round_trip(importer: &TestServer, exporter: &TestServer) {
    use serde_json::Value;
    let (code, stdout, stderr) = import(importer, OPERATOR_A.1, &DRESDEN).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while exporter.backend.engine.len() < 34 {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter did not follow"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let server = exporter;

    // The source's lots with a capacity and a position, by name.
    let source: Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/parkapi/Dresden.geojson"),
        )
        .unwrap(),
    )
    .unwrap();
    let lots: std::collections::BTreeMap<String, (f64, f64, u64)> = source["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["properties"]["type"] != "city")
        .filter_map(|f| {
            let p = &f["properties"];
            let [lon, lat] = [
                &f["geometry"]["coordinates"][0],
                &f["geometry"]["coordinates"][1],
            ];
            Some((
                p["name"].as_str()?.to_owned(),
                (lat.as_f64()?, lon.as_f64()?, p["total"].as_u64()?),
            ))
        })
        .collect();

    let get = |path: String| {
        let addr = server.http_addr;
        async move {
            let (status, _, body) = crate::support::http_get(addr, &path, &[]).await;
            assert_eq!(status, 200, "{path}");
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    let geojson = get("/open-data/v1/car-parks.geojson?region=dresden".into()).await;
    let mut from_geojson = Vec::new();
    for feature in geojson["features"].as_array().unwrap() {
        let p = &feature["properties"];
        let c = &feature["geometry"]["coordinates"];
        from_geojson.push((
            p["name"].as_str().unwrap().to_owned(),
            (
                c[1].as_f64().unwrap(),
                c[0].as_f64().unwrap(),
                p["capacity"].as_u64().unwrap(),
            ),
        ));
    }
    let mut from_parkapi = Vec::new();
    let mut path = "/open-data/v1/parking-sites?region=dresden&limit=10".to_owned();
    loop {
        let page = get(path.clone()).await;
        for site in page["items"].as_array().unwrap() {
            from_parkapi.push((
                site["name"].as_str().unwrap().to_owned(),
                (
                    site["lat"].as_f64().unwrap(),
                    site["lon"].as_f64().unwrap(),
                    site["capacity"].as_u64().unwrap(),
                ),
            ));
        }
        match page["next_path"].as_str() {
            Some(next) => path = next.to_owned(),
            None => break,
        }
    }
    for (format, exported) in [("GeoJSON", &from_geojson), ("ParkAPI v3", &from_parkapi)] {
        // The 34 the import took (60 lots: 22 without a total, 4 duplicates).
        assert_eq!(exported.len(), 34, "{format}");
        for (name, got) in exported.iter() {
            let want = lots
                .get(name)
                .unwrap_or_else(|| panic!("{format}: {name:?} is in no source lot"));
            assert_eq!(got, want, "{format}: {name}");
        }
    }
}

/// Every registered car park's id, sorted.
async fn registered_ids(server: &TestServer) -> Vec<String> {
    let mut ids: Vec<String> = all_car_parks(server)
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

/// `--prune` deletes this operator's car parks in the region, with the prefix, that
/// the file no longer has, after a dry run lists them; a record the file still names
/// but the import skips keeps its car park; another operator's, another prefix's and
/// an import without `--prune` delete nothing.
#[tokio::test]
async fn prune_deletes_what_the_file_no_longer_has_and_a_dry_run_lists_it() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let site = |uid: &str, lat: f64| {
        serde_json::json!({"original_uid": uid, "name": format!("Lot {uid}"),
            "type": "CAR_PARK", "lat": lat, "lon": 13.74, "capacity": 10})
    };
    let write = |name: &str, items: Vec<serde_json::Value>| {
        let path = dir.path().join(name);
        let body = serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap();
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    };
    let then = write(
        "then.json",
        vec![
            site("a", 51.0),
            site("b", 51.01),
            site("c", 51.02),
            site("d", 51.03),
        ],
    );
    // b is gone; d is still there but has lost its position (skipped).
    let now = write(
        "now.json",
        vec![
            site("a", 51.0),
            site("c", 51.02),
            serde_json::json!({"original_uid": "d", "name": "Lot d", "type": "CAR_PARK",
                "capacity": 10}),
        ],
    );
    let args = |file: &str, extra: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = [
            "parkapi-v3",
            file,
            "--region",
            "dresden",
            "--time-zone",
            "Europe/Berlin",
            "--id-prefix",
            "t.",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        all.extend(extra.iter().map(|a| (*a).to_owned()));
        all
    };
    let run = |key: &'static str, args: Vec<String>| {
        let server = &server;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            import(server, key, &args).await
        }
    };
    let (code, stdout, stderr) = run(OPERATOR_A.1, args(&then, &[])).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    // Not the file's: operator B's in the region, and A's under another prefix.
    let mut theirs = crate::support::garage_north("t.z", 100.0);
    theirs.region = "dresden".into();
    crate::support::register_as(&server, theirs, OPERATOR_B.1).await;
    let mut other_prefix = crate::support::garage_north("x.1", 200.0);
    other_prefix.region = "dresden".into();
    try_register(&server, other_prefix).await.unwrap();
    let everything = ["t.a", "t.b", "t.c", "t.d", "t.z", "x.1"];

    let (code, stdout, stderr) = run(OPERATOR_A.1, args(&now, &[])).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 0, unchanged 2, skipped 1, failed 0",
        "without --prune nothing is deleted"
    );
    assert_eq!(registered_ids(&server).await, everything);

    let (code, stdout, stderr) = run(OPERATOR_A.1, args(&now, &["--prune", "--dry-run"])).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "dry run, nothing written: imported 0, updated 0, unchanged 2, skipped 1, failed 0, deleted 1"
    );
    assert!(
        row(
            &stdout,
            &["deleted", "t.b", "Lot b", "not in the file (--prune)"]
        )
        .is_some(),
        "{stdout}"
    );
    assert_eq!(
        registered_ids(&server).await,
        everything,
        "a dry run deletes nothing"
    );

    let (code, stdout, stderr) = run(OPERATOR_A.1, args(&now, &["--prune"])).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        totals(&stdout),
        "totals: imported 0, updated 0, unchanged 2, skipped 1, failed 0, deleted 1"
    );
    assert_eq!(
        registered_ids(&server).await,
        ["t.a", "t.c", "t.d", "t.z", "x.1"]
    );
}
