//! Registry details beyond the store conformance suite (tests/it/store_conformance.rs):
//! moves in the index, get, list filters and page sizes, delete, NO_DATA capacity.

use crate::support::*;
use citypark::pb::{self, SpaceCategory::*};
use tonic::Code;

#[tokio::test]
async fn upsert_creates_then_replaces_and_fills_in_the_operator() {
    let server = TestServer::start().await;
    let mut registry = server.registry().await;
    let upsert = |car_park: pb::CarPark| {
        authed(
            pb::UpsertCarParkRequest {
                car_park: Some(car_park),
            },
            OPERATOR_A.1,
        )
    };
    let first = registry
        .upsert_car_park(upsert(garage("g1", 36.067, 120.383)))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let stored = first.car_park.unwrap();
    assert_eq!(stored.operator_id, OPERATOR_A.0, "the caller's operator");
    assert_eq!(stored.id, "g1");
    assert_eq!(stored.report_interval_seconds, 60);

    let renamed = pb::CarPark {
        name: "Renamed".into(),
        ..garage("g1", 36.067, 120.383)
    };
    let second = registry
        .upsert_car_park(upsert(renamed))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    assert_eq!(second.car_park.as_ref().unwrap().name, "Renamed");
    assert_eq!(
        car_park_of(&server, "g1").await.unwrap(),
        second.car_park.unwrap()
    );
    assert_eq!(all_ids(&server).await, ["g1"]);
}

#[tokio::test]
async fn replace_with_a_new_location_moves_the_car_park_in_the_index() {
    let server = TestServer::start().await;
    register(&server, garage_north("g1", 100.0)).await;
    report_ok(&server, snapshot("g1", 1, 10, server.now())).await;
    assert_eq!(ids_of(&find(&server, near_here()).await), ["g1"]);

    register(&server, garage_north("g1", 10_000.0)).await;
    assert!(find(&server, near_here()).await.is_empty());
    let (lat, lon) = offset(10_000.0, 0.0);
    let there = find(
        &server,
        pb::FindNearbyRequest {
            location: Some(pb::LatLng {
                latitude: lat,
                longitude: lon,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids_of(&there), ["g1"]);
    assert!(there[0].distance_m < 0.01, "{}", there[0].distance_m);
}

#[tokio::test]
async fn get_car_park_returns_the_registration_and_live_state() {
    let server = TestServer::start().await;
    let stored = register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 3, 17, server.now())).await;
    let mut registry = server.registry().await;
    let got = registry
        .get_car_park(pb::GetCarParkRequest { id: "g1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.car_park.unwrap(), stored);
    let live = got.availability.unwrap();
    assert_eq!(
        (live.car_park_id.as_str(), live.region.as_str()),
        ("g1", "qingdao")
    );
    assert_eq!(free_standard(&live), 17);
    assert_eq!(live.last_sequence, 3);

    expect_code(
        registry
            .get_car_park(pb::GetCarParkRequest { id: "nope".into() })
            .await,
        Code::NotFound,
    );
    expect_invalid(
        registry
            .get_car_park(pb::GetCarParkRequest { id: "a b".into() })
            .await,
        "id",
    );
}

#[tokio::test]
async fn list_pages_through_every_car_park_in_id_order() {
    let server = TestServer::start().await;
    let mut expected: Vec<String> = (0..25).map(|i| format!("g{i:02}")).collect();
    // Registered out of order: the listing order is the id order, not insertion order.
    for id in expected.iter().rev() {
        register(&server, garage(id, 36.067, 120.383)).await;
    }
    expected.sort();
    let (seen, pages) = list_in_pages(&server, 10).await;
    assert_eq!(pages, [10, 10, 5]);
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn list_filters_by_region_and_operator() {
    let server = TestServer::start().await;
    register(&server, garage("a-qd", 36.067, 120.383)).await;
    let jinan = pb::CarPark {
        region: "jinan".into(),
        ..garage("a-jn", 36.651, 117.120)
    };
    register(&server, jinan).await;
    register_as(&server, garage("b-qd", 36.068, 120.384), OPERATOR_B.1).await;

    let mut registry = server.registry().await;
    let mut list = async |region: &str, operator: &str| {
        registry
            .list_car_parks(pb::ListCarParksRequest {
                region: region.into(),
                operator_id: operator.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .car_parks
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(list("", "").await, ["a-jn", "a-qd", "b-qd"]);
    assert_eq!(list("qingdao", "").await, ["a-qd", "b-qd"]);
    assert_eq!(list("", OPERATOR_A.0).await, ["a-jn", "a-qd"]);
    assert_eq!(list("qingdao", OPERATOR_B.0).await, ["b-qd"]);
    assert_eq!(list("jinan", OPERATOR_B.0).await, Vec::<String>::new());
    assert_eq!(list("shanghai", "").await, Vec::<String>::new());
}

#[tokio::test]
async fn list_page_size_defaults_to_100_and_is_capped_at_1000() {
    let server = TestServer::start().await;
    for i in 0..101 {
        register(&server, garage(&format!("g{i:03}"), 36.067, 120.383)).await;
    }
    let mut registry = server.registry().await;
    let mut list = async |page_size: i32, page_token: &str| {
        registry
            .list_car_parks(pb::ListCarParksRequest {
                page_size,
                page_token: page_token.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    };
    let default = list(0, "").await.unwrap();
    assert_eq!(default.car_parks.len(), 100);
    // Opaque: not the last id, though it continues after it.
    assert!(!default.next_page_token.contains("g099"));
    let rest = list(0, &default.next_page_token).await.unwrap();
    assert_eq!(rest.car_parks.len(), 1);
    assert_eq!(rest.next_page_token, "");

    let all = list(1000, "").await.unwrap();
    assert_eq!(
        (all.car_parks.len(), all.next_page_token.as_str()),
        (101, "")
    );
    expect_invalid(list(1001, "").await, "page_size");
    expect_invalid(list(-1, "").await, "page_size");
    expect_invalid(list(10, "not a token!").await, "page_token");
    // An id where a token goes, and a token with one digit changed, are refused.
    expect_invalid(list(10, "g050").await, "page_token");
    let mut edited = default.next_page_token.clone().into_bytes();
    edited[0] = if edited[0] == b'6' { b'7' } else { b'6' };
    expect_invalid(
        list(10, &String::from_utf8(edited).unwrap()).await,
        "page_token",
    );
}

#[tokio::test]
async fn delete_removes_the_car_park_and_its_live_state() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    register(&server, garage("g2", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 9, 42, server.now())).await;

    let mut registry = server.registry().await;
    let deleted = registry
        .delete_car_park(authed(
            pb::DeleteCarParkRequest { id: "g1".into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, "g1");
    expect_code(car_park_of(&server, "g1").await, Code::NotFound);
    assert_eq!(all_ids(&server).await, ["g2"]);
    let found = lookup(&server, &["g1", "g2"]).await;
    assert_eq!(found.not_found_ids, ["g1"]);
    assert_eq!(found.availabilities.len(), 1);
    let nearby = find(
        &server,
        pb::FindNearbyRequest {
            include_no_data: true,
            ..near_here()
        },
    )
    .await;
    assert_eq!(ids_of(&nearby), ["g2"]);

    expect_code(
        registry
            .delete_car_park(authed(
                pb::DeleteCarParkRequest { id: "g1".into() },
                OPERATOR_A.1,
            ))
            .await,
        Code::NotFound,
    );
    expect_code(
        report(&server, snapshot("g1", 10, 1, server.now())).await,
        Code::NotFound,
    );

    // Registered again, it starts afresh: no counts survive a delete.
    let mut registry = server.registry().await;
    let again = registry
        .upsert_car_park(authed(
            pb::UpsertCarParkRequest {
                car_park: Some(garage("g1", 36.067, 120.383)),
            },
            OPERATOR_A.1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created);
    let fresh = availability_of(&server, "g1").await;
    assert_eq!(fresh.status(), pb::CarParkStatus::NoData);
    assert_eq!((fresh.last_sequence, free_standard(&fresh)), (0, 100));
}

#[tokio::test]
async fn a_never_reported_car_park_shows_its_new_capacity_as_free() {
    let server = TestServer::start().await;
    register(&server, garage("g1", 36.067, 120.383)).await;
    let bigger = pb::CarPark {
        capacity: capacity(&[(Standard, 150), (Accessible, 4)]),
        ..garage("g1", 36.067, 120.383)
    };
    register(&server, bigger).await;
    let live = availability_of(&server, "g1").await;
    assert_eq!(live.status(), pb::CarParkStatus::NoData);
    let numbers: Vec<_> = live
        .categories
        .iter()
        .map(|c| (c.category(), c.capacity, c.free))
        .collect();
    // NO_DATA means free = capacity: nothing is known (types.proto, CarParkAvailability).
    assert_eq!(numbers, [(Standard, 150, 150), (Accessible, 4, 4)]);
}
