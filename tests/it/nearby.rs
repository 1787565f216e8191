//! FindNearby through the client: ranking, radius, limit and every filter.

use crate::support::*;
use citypark::pb::{self, CarParkKind, CarParkStatus, SpaceCategory::*};

/// Registers car parks at the given metres north of `here()` and reports `free`
/// standard spaces on each.
async fn city(server: &TestServer, car_parks: &[(&str, f64, i32)]) {
    for &(id, north_m, free) in car_parks {
        register(server, garage_north(id, north_m)).await;
        report_ok(server, snapshot(id, 1, free, server.now())).await;
    }
}

fn with(f: impl FnOnce(&mut pb::FindNearbyRequest)) -> pb::FindNearbyRequest {
    let mut request = near_here();
    f(&mut request);
    request
}

#[tokio::test]
async fn results_are_ranked_by_distance_then_id() {
    let server = TestServer::start().await;
    city(
        &server,
        &[
            ("far", 1500.0, 10),
            ("b-twin", 700.0, 10),
            ("near", 200.0, 10),
            ("a-twin", 700.0, 10),
            ("c-twin", 700.0, 10),
        ],
    )
    .await;
    let results = find(&server, near_here()).await;
    assert_eq!(
        ids_of(&results),
        ["near", "a-twin", "b-twin", "c-twin", "far"]
    );
    let distances: Vec<_> = results.iter().map(|r| r.distance_m).collect();
    for (got, want) in distances.iter().zip([200.0, 700.0, 700.0, 700.0, 1500.0]) {
        assert!((got - want).abs() < 1.0, "{distances:?}");
    }
    assert_eq!(distances[1], distances[3], "twins are exactly tied");

    // A tie at the limit is broken by id too.
    let two = find(&server, with(|r| r.limit = 2)).await;
    assert_eq!(ids_of(&two), ["near", "a-twin"]);
}

#[tokio::test]
async fn the_radius_bounds_the_search() {
    let server = TestServer::start().await;
    city(
        &server,
        &[
            ("m400", 400.0, 5),
            ("m1900", 1900.0, 5),
            ("m2100", 2100.0, 5),
        ],
    )
    .await;
    assert_eq!(
        ids_of(&find(&server, near_here()).await),
        ["m400", "m1900"],
        "2 km by default"
    );
    assert_eq!(
        ids_of(&find(&server, with(|r| r.radius_m = 500.0)).await),
        ["m400"]
    );
    assert!(find(&server, with(|r| r.radius_m = 300.0)).await.is_empty());
    assert_eq!(
        ids_of(&find(&server, with(|r| r.radius_m = 50_000.0)).await),
        ["m400", "m1900", "m2100"]
    );
}

#[tokio::test]
async fn the_limit_caps_the_results_to_the_nearest() {
    let server = TestServer::start().await;
    let spots: Vec<_> = (0..15)
        .map(|i| (format!("g{i:02}"), 100.0 * f64::from(i + 1)))
        .collect();
    let spots: Vec<_> = spots.iter().map(|(id, m)| (id.as_str(), *m, 3)).collect();
    city(&server, &spots).await;
    let default = find(&server, near_here()).await;
    assert_eq!(default.len(), 10, "10 by default");
    assert_eq!(ids_of(&default)[9], "g09");
    assert_eq!(
        ids_of(&find(&server, with(|r| r.limit = 3)).await),
        ["g00", "g01", "g02"]
    );
    assert_eq!(find(&server, with(|r| r.limit = 100)).await.len(), 15);
}

#[tokio::test]
async fn category_and_min_available_filter_on_the_queried_category() {
    let server = TestServer::start().await;
    register(&server, garage_north("ev", 100.0)).await;
    let no_ev = pb::CarPark {
        capacity: capacity(&[(Standard, 100)]),
        ..garage_north("plain", 200.0)
    };
    register(&server, no_ev).await;
    let now = server.now();
    report_ok(
        &server,
        snapshot_of("ev", 1, &[(Standard, 42), (EvCharging, 3)], now),
    )
    .await;
    report_ok(&server, snapshot("plain", 1, 60, now)).await;

    let standard = find(&server, near_here()).await;
    assert_eq!(ids_of(&standard), ["ev", "plain"]);
    assert_eq!(
        standard.iter().map(|r| r.available).collect::<Vec<_>>(),
        [42, 60]
    );

    let ev = find(&server, with(|r| r.category = EvCharging.into())).await;
    assert_eq!(ids_of(&ev), ["ev"]);
    assert_eq!(ev[0].available, 3);
    let ev_four = with(|r| {
        r.category = EvCharging.into();
        r.min_available = 4;
    });
    assert!(find(&server, ev_four).await.is_empty());

    assert_eq!(
        ids_of(&find(&server, with(|r| r.min_available = 50)).await),
        ["plain"]
    );
    assert_eq!(
        ids_of(&find(&server, with(|r| r.min_available = 42)).await),
        ["ev", "plain"]
    );

    // No space at all: left out even without a min_available (0 means 1).
    report_ok(&server, snapshot("plain", 2, 0, now)).await;
    assert_eq!(ids_of(&find(&server, near_here()).await), ["ev"]);
}

#[tokio::test]
async fn kinds_filter_by_kind_and_empty_means_all() {
    let server = TestServer::start().await;
    let now = server.now();
    for (id, north_m, kind) in [
        ("garage", 100.0, CarParkKind::Garage),
        ("lot", 200.0, CarParkKind::SurfaceLot),
        ("street", 300.0, CarParkKind::OnStreet),
    ] {
        let car_park = pb::CarPark {
            kind: kind.into(),
            ..garage_north(id, north_m)
        };
        register(&server, car_park).await;
        report_ok(&server, snapshot(id, 1, 5, now)).await;
    }
    assert_eq!(
        ids_of(&find(&server, near_here()).await),
        ["garage", "lot", "street"]
    );
    let kinds = |kinds: &[CarParkKind]| {
        let kinds: Vec<i32> = kinds.iter().map(|&k| k.into()).collect();
        with(|r| r.kinds = kinds)
    };
    assert_eq!(
        ids_of(&find(&server, kinds(&[CarParkKind::SurfaceLot])).await),
        ["lot"]
    );
    assert_eq!(
        ids_of(
            &find(
                &server,
                kinds(&[CarParkKind::OnStreet, CarParkKind::Garage])
            )
            .await
        ),
        ["garage", "street"]
    );
    assert!(
        find(&server, kinds(&[CarParkKind::SharedPrivate]))
            .await
            .is_empty()
    );
}

/// One period on Monday, in minutes after local midnight.
fn monday(open_minute: i32, close_minute: i32) -> Vec<pb::OpeningPeriod> {
    vec![pb::OpeningPeriod {
        day: pb::Weekday::Monday.into(),
        open_minute,
        close_minute,
    }]
}

#[tokio::test]
async fn open_now_reads_opening_hours_in_the_car_parks_time_zone() {
    // The clock starts on Monday at 10:00 in Shanghai, which is 02:00 UTC.
    let server = TestServer::start().await;
    let hours = [
        ("day", monday(8 * 60, 20 * 60), false),
        ("evening", monday(20 * 60, 24 * 60), false),
        // Open at this hour of UTC, not of Shanghai.
        ("utc-trap", monday(2 * 60, 3 * 60), false),
        ("declared", vec![], true),
    ];
    for (i, (id, opening_hours, closed)) in hours.into_iter().enumerate() {
        let car_park = pb::CarPark {
            opening_hours,
            closed,
            ..garage_north(id, 100.0 * (i as f64 + 1.0))
        };
        register(&server, car_park).await;
        report_ok(&server, snapshot(id, 1, 5, server.now())).await;
    }
    let all = find(&server, near_here()).await;
    let statuses: Vec<_> = all
        .iter()
        .map(|r| (r.car_park_id.as_str(), r.status()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("day", CarParkStatus::Open),
            ("evening", CarParkStatus::Closed),
            ("utc-trap", CarParkStatus::Closed),
            ("declared", CarParkStatus::Closed),
        ],
        "closed car parks are shown, with their status, unless open_now"
    );
    assert_eq!(
        ids_of(&find(&server, with(|r| r.open_now = true)).await),
        ["day"]
    );

    // 21:00 in Shanghai: the evening car park opens, the day one closes.
    server.advance(11 * 3600);
    report_ok(&server, snapshot("evening", 2, 5, server.now())).await;
    assert_eq!(
        ids_of(&find(&server, with(|r| r.open_now = true)).await),
        ["evening"]
    );
}

#[tokio::test]
async fn a_stay_is_priced_and_max_price_filters_by_it() {
    let server = TestServer::start().await;
    let tariff = |hourly, cap, free_minutes| {
        Some(pb::Tariff {
            currency: "CNY".into(),
            hourly_rate_minor: hourly,
            daily_cap_minor: cap,
            free_minutes,
            version: 1,
        })
    };
    let now = server.now();
    for (id, north_m, t) in [
        ("cheap", 100.0, tariff(500, 3000, 15)),
        ("dear", 200.0, tariff(1000, 0, 0)),
    ] {
        let car_park = pb::CarPark {
            tariff: t,
            ..garage_north(id, north_m)
        };
        register(&server, car_park).await;
        report_ok(&server, snapshot(id, 1, 5, now)).await;
    }
    let stay = |minutes: i64| {
        Some(pb::StayWindow {
            start: Some(pb_time(now)),
            end: Some(pb_time(after(now, minutes * 60))),
        })
    };
    let prices = |results: &[pb::NearbyCarPark]| -> Vec<Option<i64>> {
        results.iter().map(|r| r.price_minor).collect()
    };

    let unpriced = find(&server, near_here()).await;
    assert_eq!(prices(&unpriced), [None, None]);
    let two_hours = find(&server, with(|r| r.stay = stay(120))).await;
    assert_eq!(ids_of(&two_hours), ["cheap", "dear"]);
    assert_eq!(prices(&two_hours), [Some(1000), Some(2000)]);
    let short = find(&server, with(|r| r.stay = stay(10))).await;
    assert_eq!(prices(&short), [Some(0), Some(1000)], "free minutes");
    let day = find(&server, with(|r| r.stay = stay(10 * 60))).await;
    assert_eq!(prices(&day), [Some(3000), Some(10_000)], "daily cap");

    let capped = |max| {
        with(|r| {
            r.stay = stay(120);
            r.max_price_minor = Some(max);
        })
    };
    assert_eq!(
        ids_of(&find(&server, capped(2000)).await),
        ["cheap", "dear"]
    );
    assert_eq!(ids_of(&find(&server, capped(1999)).await), ["cheap"]);
    assert_eq!(ids_of(&find(&server, capped(1000)).await), ["cheap"]);
    assert!(find(&server, capped(999)).await.is_empty());
}

#[tokio::test]
async fn car_parks_without_data_are_shown_only_when_asked() {
    let server = TestServer::start().await;
    city(&server, &[("live", 300.0, 7)]).await;
    register(&server, garage_north("silent", 100.0)).await;
    assert_eq!(ids_of(&find(&server, near_here()).await), ["live"]);

    let all = find(&server, with(|r| r.include_no_data = true)).await;
    assert_eq!(ids_of(&all), ["silent", "live"]);
    let silent = &all[0];
    assert_eq!(silent.status(), CarParkStatus::NoData);
    assert_eq!(silent.data_age_seconds, None);
    assert_eq!(
        all[0].available, 100,
        "min_available is checked against capacity"
    );

    let big = with(|r| {
        r.include_no_data = true;
        r.min_available = 101;
    });
    assert!(find(&server, big).await.is_empty());
}

#[tokio::test]
async fn the_basic_view_carries_the_list_fields_and_full_adds_the_rest() {
    let server = TestServer::start().await;
    let stored = register(&server, garage_north("g1", 100.0)).await;
    report_ok(
        &server,
        snapshot_of("g1", 4, &[(Standard, 42), (EvCharging, 2)], server.now()),
    )
    .await;
    let results = find(&server, near_here()).await;
    assert_eq!(results.len(), 1);
    let basic = &results[0];
    assert_eq!(
        (
            basic.car_park_id.as_str(),
            basic.name.as_str(),
            basic.address.as_str()
        ),
        ("g1", stored.name.as_str(), stored.address.as_str())
    );
    assert_eq!((basic.kind, basic.location), (stored.kind, stored.location));
    assert_eq!(
        (basic.status(), basic.available, basic.capacity),
        (CarParkStatus::Open, 42, 100)
    );
    assert_eq!(basic.data_age_seconds, Some(0));
    assert_eq!(
        (basic.car_park.as_ref(), basic.availability.as_ref()),
        (None, None)
    );

    let full = find(&server, with(|r| r.view = pb::NearbyView::Full.into())).await;
    assert_eq!(full[0].car_park.as_ref(), Some(&stored));
    assert_eq!(
        full[0].availability.as_ref(),
        Some(&availability_of(&server, "g1").await)
    );
    assert_eq!(full[0].car_park_id, "g1");

    let bad = server
        .availability()
        .await
        .find_nearby(with(|r| r.view = 7))
        .await;
    expect_invalid(bad, "view");
}
