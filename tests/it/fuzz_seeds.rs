//! The fuzz targets' seed corpus, `fuzz/seeds/<target>/`: the requests and stored
//! records these tests use. Every committed seed is replayed here through the same
//! harness and checks the fuzz targets run (`citypark::grpc::fuzzing`,
//! `citypark::store::fuzzing`), so `cargo test` keeps them passing on the stable
//! toolchain; the ignored tests below write them again.

use std::path::PathBuf;

use citypark::{
    domain::{
        Arrear, CarParkId, CarParkState, LedgerEntry, OpenSession, ParkingSession, PaymentStatus,
        Plate, PlateLink, Reservation, ReservationClaims, SessionId, SessionState, SharedBooking,
        SharedOffer, SlotCounts, Wallet,
    },
    grpc::fuzzing::{Fixture, Harness},
    pb::{self, SpaceCategory::*},
    store::{Aggregate, Versioned, fuzzing as stored},
};
use prost::Message;

use crate::support::*;

/// Each request target and the service it sends to.
const REQUEST_TARGETS: [(&str, &str); 6] = [
    ("registry", "Registry"),
    ("ingest", "Ingest"),
    ("availability", "Availability"),
    ("reservations", "Reservations"),
    ("shared_parking", "SharedParking"),
    ("sessions", "Sessions"),
];
/// The target that makes several calls on one city.
const CALLS_TARGET: &str = "calls";
const STORED_TARGET: &str = "stored_records";

/// A seed: its file's name and its bytes.
type Seed = (String, Vec<u8>);
/// A call of a `calls` seed: the method's path and the message.
type Call = (String, Vec<u8>);

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

/// The seeds of `target`, by file name.
fn seeds(target: &str) -> Vec<Seed> {
    let mut seeds: Vec<_> = std::fs::read_dir(seeds_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/seeds/{target}: {e}"))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn committed_fuzz_seeds_keep_the_api_s_promise() {
    let harness = Harness::new();
    for (target, service) in REQUEST_TARGETS {
        let seeds = seeds(target);
        // One seed at least for every method of the service.
        for method in harness.methods(service) {
            let name = method.path.rsplit('/').next().unwrap();
            assert!(
                seeds
                    .iter()
                    .any(|(file, _)| file.split('-').next() == Some(name)),
                "no seed in fuzz/seeds/{target} for {}",
                method.path
            );
        }
        for (file, input) in seeds {
            if let Err(broken) = harness.fuzz(service, &input) {
                panic!("fuzz/seeds/{target}/{file}: {broken}");
            }
        }
    }
    let calls = seeds(CALLS_TARGET);
    assert!(!calls.is_empty(), "no seed in fuzz/seeds/{CALLS_TARGET}");
    for (file, input) in calls {
        if let Err(broken) = harness.fuzz_calls(&input) {
            panic!("fuzz/seeds/{CALLS_TARGET}/{file}: {broken}");
        }
    }
    let seeds = seeds(STORED_TARGET);
    for kind in stored::KINDS {
        assert!(
            seeds.iter().any(|(file, _)| file.starts_with(kind)),
            "no seed in fuzz/seeds/{STORED_TARGET} for {kind}"
        );
    }
    for (file, input) in seeds {
        if let Err(broken) = stored::stored_record(&input) {
            panic!("fuzz/seeds/{STORED_TARGET}/{file}: {broken}");
        }
    }
}

/// Replaces the seeds of `target` with `seeds` (file name, bytes).
fn write_seeds(target: &str, seeds: &[Seed]) {
    let dir = seeds_dir(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A seed file name: the method's name, then what the request is.
fn seed(harness: &Harness, method: &str, what: &str, request: impl Message) -> Seed {
    let path = format!("/citypark.v1.{method}");
    let input = harness
        .input(&path, &request.encode_to_vec())
        .unwrap_or_else(|| panic!("{path} is no method"));
    let name = method.rsplit('/').next().unwrap();
    (format!("{name}-{what}"), input)
}

#[test]
#[ignore = "writes fuzz/seeds/; run by hand when the requests below change"]
fn write_request_seeds() {
    let harness = Harness::new();
    let f = harness.fixture().clone();
    write_seeds("registry", &registry_seeds(&harness, &f));
    write_seeds("ingest", &ingest_seeds(&harness, &f));
    write_seeds("availability", &availability_seeds(&harness, &f));
    write_seeds("reservations", &reservation_seeds(&harness, &f));
    write_seeds("shared_parking", &shared_seeds(&harness, &f));
    write_seeds("sessions", &session_seeds(&harness, &f));
    write_seeds(CALLS_TARGET, &calls_seeds(&harness, &f));
}

/// Calls that meet what earlier calls of the same input made.
fn calls_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let (now, g1) = (f.now, f.car_park.as_str());
    let call = |method: &str, message: Vec<u8>| (format!("/citypark.v1.{method}"), message);
    let stay = Some(pb::StayWindow {
        start: Some(pb_time(after(now, 3600))),
        end: Some(pb_time(after(now, 3 * 3600))),
    });
    let scenarios: Vec<(&str, Vec<Call>)> = vec![
        (
            "priced-stay",
            vec![
                call(
                    "Registry/UpsertCarPark",
                    upsert(garage("g2", 36.0665, 120.3835)).encode_to_vec(),
                ),
                call(
                    "Ingest/Report",
                    report_request(snapshot("g2", 1, 7, now)).encode_to_vec(),
                ),
                call(
                    "Availability/FindNearby",
                    pb::FindNearbyRequest {
                        view: pb::NearbyView::Full.into(),
                        stay,
                        max_price_minor: Some(10_000),
                        include_shared: true,
                        ..near_here()
                    }
                    .encode_to_vec(),
                ),
            ],
        ),
        (
            "reserve-new-garage",
            vec![
                call(
                    "Registry/UpsertCarPark",
                    upsert(reservable_garage("g3", 20)).encode_to_vec(),
                ),
                call(
                    "Reservations/GetReservationCalendar",
                    pb::GetReservationCalendarRequest {
                        car_park_id: "g3".into(),
                        category: Standard.into(),
                        start_time: Some(pb_time(now)),
                        end_time: Some(pb_time(after(now, 4 * 3600))),
                    }
                    .encode_to_vec(),
                ),
                call(
                    "Reservations/CreateReservation",
                    reservation_request("g3", after(now, 3600), after(now, 7200), "A1234", "k5")
                        .encode_to_vec(),
                ),
                call(
                    "Reservations/ListReservations",
                    pb::ListReservationsRequest::default().encode_to_vec(),
                ),
            ],
        ),
        (
            "offer-search-book",
            vec![
                call(
                    "SharedParking/OfferSpace",
                    pb::OfferSpaceRequest {
                        offer: Some(pb::SharedOffer {
                            id: "o2".into(),
                            region: f.region.clone(),
                            location: Some(here()),
                            address: "Compound 5".into(),
                            spaces: 1,
                            time_zone: "Asia/Shanghai".into(),
                            schedule: vec![pb::WeeklyPeriod {
                                weekday: 1,
                                start_minute: 0,
                                end_minute: 1440,
                            }],
                            hourly_rate_minor: 900,
                            ..Default::default()
                        }),
                    }
                    .encode_to_vec(),
                ),
                call(
                    "SharedParking/SearchOffers",
                    pb::SearchOffersRequest {
                        location: Some(here()),
                        start_time: Some(pb_time(after(now, 3600))),
                        end_time: Some(pb_time(after(now, 7200))),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
                call(
                    "SharedParking/BookOffer",
                    pb::BookOfferRequest {
                        offer_id: "o2".into(),
                        start_time: Some(pb_time(after(now, 3600))),
                        end_time: Some(pb_time(after(now, 7200))),
                        plate: "A1234".into(),
                        idempotency_key: "k6".into(),
                    }
                    .encode_to_vec(),
                ),
                call(
                    "SharedParking/ListMyBookings",
                    pb::ListMyBookingsRequest::default().encode_to_vec(),
                ),
            ],
        ),
        (
            "arrival-by-plate",
            vec![
                call(
                    "Ingest/Publish",
                    pb::PublishRequest {
                        reports: vec![
                            plate_delta(g1, 2, true, "鲁B12345", after(now, 4 * 3600)),
                            plate_delta(g1, 3, false, "鲁B12345", after(now, 5 * 3600)),
                        ],
                    }
                    .encode_to_vec(),
                ),
                call(
                    "Reservations/GetReservation",
                    pb::GetReservationRequest {
                        id: f.reservation.clone(),
                    }
                    .encode_to_vec(),
                ),
                call(
                    "Availability/GetAvailability",
                    pb::GetAvailabilityRequest {
                        car_park_ids: vec![g1.into()],
                    }
                    .encode_to_vec(),
                ),
            ],
        ),
        (
            "delete-then-use",
            vec![
                call(
                    "Registry/DeleteCarPark",
                    pb::DeleteCarParkRequest { id: f.zone.clone() }.encode_to_vec(),
                ),
                call(
                    "Ingest/Report",
                    report_request(bay(&f.zone, 2, "b-1", true, now)).encode_to_vec(),
                ),
                call(
                    "Availability/WatchAvailability",
                    pb::WatchAvailabilityRequest {
                        selector: Some(pb::watch_availability_request::Selector::Ids(
                            pb::CarParkIds {
                                ids: vec![f.zone.clone()],
                            },
                        )),
                    }
                    .encode_to_vec(),
                ),
            ],
        ),
        (
            "change-offer-under-booking",
            vec![
                call(
                    "SharedParking/UpdateOffer",
                    pb::UpdateOfferRequest {
                        offer: Some(pb::SharedOffer {
                            id: f.offer.clone(),
                            region: f.region.clone(),
                            location: Some(here()),
                            address: "Compound 3".into(),
                            spaces: 1,
                            time_zone: "Asia/Shanghai".into(),
                            schedule: vec![pb::WeeklyPeriod {
                                weekday: 2,
                                start_minute: 600,
                                end_minute: 660,
                            }],
                            hourly_rate_minor: 400,
                            ..Default::default()
                        }),
                        cancel_bookings: true,
                        reason: "moving".into(),
                    }
                    .encode_to_vec(),
                ),
                call(
                    "SharedParking/GetBooking",
                    pb::GetBookingRequest {
                        id: f.booking.clone(),
                    }
                    .encode_to_vec(),
                ),
            ],
        ),
    ];
    scenarios
        .into_iter()
        .map(|(name, calls)| {
            let calls: Vec<(&str, Vec<u8>)> = calls
                .iter()
                .map(|(path, message)| (path.as_str(), message.clone()))
                .collect();
            (
                name.to_owned(),
                h.calls_input(&calls).expect("methods of the proto"),
            )
        })
        .collect()
}

fn upsert(car_park: pb::CarPark) -> pb::UpsertCarParkRequest {
    pb::UpsertCarParkRequest {
        car_park: Some(car_park),
    }
}

fn registry_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let m = "Registry/UpsertCarPark";
    let open_weekdays = pb::CarPark {
        opening_hours: (1..=5)
            .map(|day| pb::OpeningPeriod {
                day,
                open_minute: 7 * 60,
                close_minute: 22 * 60,
            })
            .collect(),
        covered: true,
        max_height_cm: 210,
        ..garage("g2", 36.07, 120.39)
    };
    vec![
        seed(h, m, "garage", upsert(garage("g2", 36.067, 120.383))),
        seed(h, m, "replace", upsert(garage(&f.car_park, 36.0, 120.0))),
        seed(h, m, "reservable", upsert(reservable_garage("g3", 20))),
        seed(h, m, "opening-hours", upsert(open_weekdays)),
        seed(
            h,
            m,
            "capacity-twice",
            upsert(pb::CarPark {
                capacity: capacity(&[(Standard, 1), (Standard, 2)]),
                ..garage("g2", 36.0, 120.0)
            }),
        ),
        seed(
            h,
            m,
            "bidi-name",
            upsert(pb::CarPark {
                name: "\u{202e}evil".into(),
                ..garage("g2", 36.0, 120.0)
            }),
        ),
        seed(h, m, "latitude-nan", upsert(garage("g2", f64::NAN, 120.0))),
        seed(h, m, "empty", pb::UpsertCarParkRequest::default()),
        seed(
            h,
            "Registry/GetCarPark",
            "fixture",
            pb::GetCarParkRequest {
                id: f.car_park.clone(),
            },
        ),
        seed(
            h,
            "Registry/GetCarPark",
            "bad-id",
            pb::GetCarParkRequest { id: "g 1".into() },
        ),
        seed(
            h,
            "Registry/ListCarParks",
            "region-page",
            pb::ListCarParksRequest {
                region: f.region.clone(),
                operator_id: "op-a".into(),
                page_size: 1,
                page_token: String::new(),
            },
        ),
        seed(
            h,
            "Registry/ListCarParks",
            "bad-token",
            pb::ListCarParksRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
        ),
        seed(
            h,
            "Registry/DeleteCarPark",
            "fixture",
            pb::DeleteCarParkRequest { id: f.zone.clone() },
        ),
    ]
}

fn report_request(report: pb::OccupancyReport) -> pb::ReportRequest {
    pb::ReportRequest {
        report: Some(report),
    }
}

fn ingest_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let m = "Ingest/Report";
    let (g1, now) = (f.car_park.as_str(), f.now);
    let negative = pb::OccupancyReport {
        body: Some(pb::occupancy_report::Body::Snapshot(pb::SnapshotReport {
            free: vec![pb::CategoryCount {
                category: Standard.into(),
                count: -1,
            }],
        })),
        ..snapshot(g1, 2, 0, now)
    };
    let restart = pb::OccupancyReport {
        restart_sequence: true,
        ..snapshot(g1, 1, 30, now)
    };
    vec![
        seed(h, m, "snapshot", report_request(snapshot(g1, 2, 40, now))),
        seed(
            h,
            m,
            "plate-entry",
            report_request(plate_delta(g1, 2, true, "鲁B12345", now)),
        ),
        seed(h, m, "delta", report_request(delta(g1, 2, 3, 1, now))),
        seed(
            h,
            m,
            "bay",
            report_request(bay(&f.zone, 1, "b-17", true, now)),
        ),
        seed(h, m, "restart", report_request(restart)),
        seed(h, m, "negative", report_request(negative.clone())),
        seed(
            h,
            "Ingest/Publish",
            "batch",
            pb::PublishRequest {
                reports: vec![
                    snapshot(g1, 2, 41, now),
                    delta(g1, 3, 1, 0, now),
                    negative,
                    snapshot("nope", 1, 1, now),
                    bay(&f.zone, 1, "b-1", false, now),
                ],
            },
        ),
    ]
}

fn availability_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let m = "Availability/FindNearby";
    let stay = |start: i64, end: i64| {
        Some(pb::StayWindow {
            start: Some(pb_time(after(f.now, start))),
            end: Some(pb_time(after(f.now, end))),
        })
    };
    vec![
        seed(h, m, "near-here", near_here()),
        seed(
            h,
            m,
            "full-shared-stay",
            pb::FindNearbyRequest {
                view: pb::NearbyView::Full.into(),
                include_shared: true,
                stay: stay(3600, 7200),
                max_price_minor: Some(2_000),
                open_now: true,
                kinds: vec![
                    pb::CarParkKind::Garage.into(),
                    pb::CarParkKind::SharedPrivate.into(),
                ],
                ..near_here()
            },
        ),
        seed(
            h,
            m,
            "widest",
            pb::FindNearbyRequest {
                radius_m: 50_000.0,
                limit: 100,
                category: EvCharging.into(),
                min_available: 2,
                include_stale: true,
                include_no_data: true,
                stay: stay(0, 30 * 86_400),
                ..near_here()
            },
        ),
        seed(
            h,
            m,
            "arriving",
            pb::FindNearbyRequest {
                arrival_time: Some(pb_time(after(f.now, 20 * 60))),
                min_arrival_probability: 0.9,
                ..near_here()
            },
        ),
        seed(
            h,
            "Availability/Forecast",
            "three-hours",
            pb::ForecastRequest {
                car_park_id: f.car_park.clone(),
                category: pb::SpaceCategory::Standard.into(),
                times: (0..13)
                    .map(|q| pb_time(after(f.now, q * 15 * 60)))
                    .collect(),
            },
        ),
        seed(
            h,
            "Availability/Forecast",
            "past-and-far",
            pb::ForecastRequest {
                car_park_id: f.car_park.clone(),
                category: EvCharging.into(),
                times: vec![
                    pb_time(after(f.now, -3_600)),
                    pb_time(after(f.now, 8 * 86_400)),
                ],
            },
        ),
        seed(
            h,
            m,
            "radius-nan",
            pb::FindNearbyRequest {
                radius_m: f64::NAN,
                ..near_here()
            },
        ),
        seed(
            h,
            "Availability/GetAvailability",
            "ids",
            pb::GetAvailabilityRequest {
                car_park_ids: vec![f.car_park.clone(), "nope".into(), "a b".into()],
            },
        ),
        seed(
            h,
            "Availability/WatchAvailability",
            "ids",
            pb::WatchAvailabilityRequest {
                selector: Some(pb::watch_availability_request::Selector::Ids(
                    pb::CarParkIds {
                        ids: vec![f.car_park.clone(), f.zone.clone()],
                    },
                )),
            },
        ),
        seed(
            h,
            "Availability/WatchAvailability",
            "area",
            pb::WatchAvailabilityRequest {
                selector: Some(pb::watch_availability_request::Selector::Area(
                    pb::BoundingBox {
                        south_west: Some(pb::LatLng {
                            latitude: 36.0,
                            longitude: 120.3,
                        }),
                        north_east: Some(pb::LatLng {
                            latitude: 36.1,
                            longitude: 120.4,
                        }),
                    },
                )),
            },
        ),
        seed(
            h,
            "Availability/Ping",
            "payload",
            pb::PingRequest {
                payload: b"ping".to_vec(),
            },
        ),
        seed(
            h,
            "Availability/GetOccupancyHistory",
            "day",
            pb::GetOccupancyHistoryRequest {
                car_park_id: f.car_park.clone(),
                category: pb::SpaceCategory::Standard.into(),
                from: Some(prost_types::Timestamp {
                    seconds: 1_796_000_000,
                    nanos: 0,
                }),
                to: Some(prost_types::Timestamp {
                    seconds: 1_796_086_400,
                    nanos: 0,
                }),
                step: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        ),
    ]
}

fn reservation_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let (g1, now) = (f.car_park.as_str(), f.now);
    let id = f.reservation.clone();
    vec![
        seed(
            h,
            "Reservations/CreateReservation",
            "hour",
            reservation_request(g1, after(now, 3600), after(now, 7200), "鲁B 12345", "k9"),
        ),
        seed(
            h,
            "Reservations/CreateReservation",
            "same-key",
            reservation_request(
                g1,
                after(now, 4 * 3600),
                after(now, 5 * 3600),
                "鲁B12345",
                "k1",
            ),
        ),
        seed(
            h,
            "Reservations/CreateReservation",
            "backwards",
            reservation_request(g1, after(now, 7200), after(now, 3600), "A1234", "k8"),
        ),
        seed(
            h,
            "Reservations/GetReservation",
            "fixture",
            pb::GetReservationRequest { id: id.clone() },
        ),
        seed(
            h,
            "Reservations/ListReservations",
            "reserved",
            pb::ListReservationsRequest {
                state: pb::ReservationState::Reserved.into(),
                page_size: 10,
                page_token: String::new(),
            },
        ),
        seed(
            h,
            "Reservations/CancelReservation",
            "fixture",
            pb::CancelReservationRequest {
                id: id.clone(),
                reason: "plans changed".into(),
            },
        ),
        seed(
            h,
            "Reservations/CheckIn",
            "fixture",
            pb::CheckInRequest { id: id.clone() },
        ),
        seed(
            h,
            "Reservations/CheckOut",
            "fixture",
            pb::CheckOutRequest { id },
        ),
        seed(
            h,
            "Reservations/GetReservationCalendar",
            "day",
            pb::GetReservationCalendarRequest {
                car_park_id: g1.into(),
                category: Standard.into(),
                start_time: Some(pb_time(now)),
                end_time: Some(pb_time(after(now, 86_400))),
            },
        ),
    ]
}

fn session_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let (g1, now) = (f.car_park.as_str(), f.now);
    vec![
        seed(
            h,
            "Sessions/LinkPlate",
            "wallet",
            pb::LinkPlateRequest {
                plate: "鲁B·12345".into(),
                plate_color: pb::PlateColor::Blue.into(),
                payment_method: pb::PaymentMethod::Wallet.into(),
            },
        ),
        seed(
            h,
            "Sessions/LinkPlate",
            "barrier",
            pb::LinkPlateRequest {
                plate: "鲁B12345".into(),
                plate_color: pb::PlateColor::Green.into(),
                payment_method: pb::PaymentMethod::Barrier.into(),
            },
        ),
        seed(
            h,
            "Sessions/UnlinkPlate",
            "unknown",
            pb::UnlinkPlateRequest {
                plate: "京A00001".into(),
            },
        ),
        seed(
            h,
            "Sessions/ListMyPlates",
            "all",
            pb::ListMyPlatesRequest {},
        ),
        seed(
            h,
            "Sessions/ListMySessions",
            "page",
            pb::ListMySessionsRequest {
                page_size: 10,
                page_token: String::new(),
            },
        ),
        seed(
            h,
            "Sessions/GetSession",
            "unknown",
            pb::GetSessionRequest {
                id: format!("{g1}~2"),
            },
        ),
        seed(h, "Sessions/GetWallet", "mine", pb::GetWalletRequest {}),
        seed(
            h,
            "Sessions/TopUp",
            "hundred",
            pb::TopUpRequest {
                amount_minor: 10_000,
                idempotency_key: "pay-1".into(),
            },
        ),
        seed(
            h,
            "Sessions/TopUp",
            "negative",
            pb::TopUpRequest {
                amount_minor: -1,
                idempotency_key: "pay-2".into(),
            },
        ),
        seed(
            h,
            "Sessions/ListSessions",
            "day",
            pb::ListSessionsRequest {
                car_park_id: g1.into(),
                state: pb::SessionState::ClosedPaid.into(),
                from: Some(pb_time(now)),
                to: Some(pb_time(after(now, 86_400))),
                page_size: 50,
                page_token: String::new(),
            },
        ),
        seed(
            h,
            "Sessions/GetSettlement",
            "day",
            pb::GetSettlementRequest {
                operator: "op-a".into(),
                day: "2026-11-30".into(),
            },
        ),
    ]
}

fn shared_seeds(h: &Harness, f: &Fixture) -> Vec<Seed> {
    let now = f.now;
    let offer = pb::SharedOffer {
        id: "o2".into(),
        region: f.region.clone(),
        location: Some(here()),
        address: "Compound 3, Xianggang Rd".into(),
        description: "under the plane tree".into(),
        spaces: 2,
        time_zone: "Asia/Shanghai".into(),
        schedule: vec![pb::WeeklyPeriod {
            weekday: 1,
            start_minute: 1320,
            end_minute: 420,
        }],
        blackouts: vec![pb::Blackout {
            from_date: "2026-12-24".into(),
            to_date: "2026-12-26".into(),
        }],
        hourly_rate_minor: 400,
        cap_per_booking_minor: 2_000,
        currency: "CNY".into(),
        max_booking_minutes: 600,
        ..Default::default()
    };
    let window = |from: i64, to: i64| {
        (
            Some(pb_time(after(now, from))),
            Some(pb_time(after(now, to))),
        )
    };
    let (start_time, end_time) = window(3600, 7200);
    let booking = f.booking.clone();
    vec![
        seed(
            h,
            "SharedParking/OfferSpace",
            "overnight",
            pb::OfferSpaceRequest {
                offer: Some(offer.clone()),
            },
        ),
        seed(
            h,
            "SharedParking/OfferSpace",
            "server-id",
            pb::OfferSpaceRequest {
                offer: Some(pb::SharedOffer {
                    id: String::new(),
                    ..offer.clone()
                }),
            },
        ),
        seed(
            h,
            "SharedParking/UpdateOffer",
            "fixture",
            pb::UpdateOfferRequest {
                offer: Some(pb::SharedOffer {
                    id: f.offer.clone(),
                    spaces: 1,
                    ..offer
                }),
                cancel_bookings: true,
                reason: "one space only".into(),
            },
        ),
        seed(
            h,
            "SharedParking/WithdrawOffer",
            "fixture",
            pb::WithdrawOfferRequest {
                id: f.offer.clone(),
                cancel_bookings: false,
                reason: String::new(),
            },
        ),
        seed(
            h,
            "SharedParking/ListMyOffers",
            "page",
            pb::ListMyOffersRequest {
                page_size: 5,
                page_token: String::new(),
            },
        ),
        seed(
            h,
            "SharedParking/SearchOffers",
            "hour",
            pb::SearchOffersRequest {
                location: Some(here()),
                radius_m: 1_000.0,
                start_time,
                end_time,
                category: Standard.into(),
                limit: 5,
            },
        ),
        seed(
            h,
            "SharedParking/BookOffer",
            "hour",
            pb::BookOfferRequest {
                offer_id: f.offer.clone(),
                start_time,
                end_time,
                plate: "鲁B 54321".into(),
                idempotency_key: "k7".into(),
            },
        ),
        seed(
            h,
            "SharedParking/GetBooking",
            "fixture",
            pb::GetBookingRequest {
                id: booking.clone(),
            },
        ),
        seed(
            h,
            "SharedParking/CancelBooking",
            "fixture",
            pb::CancelBookingRequest {
                id: booking.clone(),
                reason: "plans changed".into(),
            },
        ),
        seed(
            h,
            "SharedParking/ListMyBookings",
            "booked",
            pb::ListMyBookingsRequest {
                state: pb::BookingState::Booked.into(),
                page_size: 10,
                page_token: String::new(),
            },
        ),
        seed(
            h,
            "SharedParking/CheckIn",
            "fixture",
            pb::CheckInBookingRequest {
                id: booking.clone(),
            },
        ),
        seed(
            h,
            "SharedParking/CheckOut",
            "fixture",
            pb::CheckOutBookingRequest { id: booking },
        ),
    ]
}

/// The stored parts of the record `id` of kind `A` in `server`'s engine.
fn stored_parts<A: Aggregate>(server: &TestServer, id: &str) -> Vec<String> {
    stored_parts_if::<A>(server, id).unwrap_or_else(|| panic!("no {} {id}", A::KIND))
}

/// The stored parts of the record `id` of kind `A`, if `server`'s engine holds it.
fn stored_parts_if<A: Aggregate>(server: &TestServer, id: &str) -> Option<Vec<String>> {
    let record = Versioned::<A>::in_replica(&server.backend.engine, id).record?;
    Some((0..A::PARTS.len()).map(|i| record.encode_part(i)).collect())
}

#[tokio::test]
#[ignore = "writes fuzz/seeds/; run by hand when the records below change"]
async fn write_stored_record_seeds() {
    let server = TestServer::start().await;
    let now = server.now();
    register(&server, reservable_garage("g1", 10)).await;
    report_ok(&server, snapshot("g1", 1, 42, now)).await;
    let reservation = reserve(
        &server,
        "d2",
        reservation_request("g1", after(now, 3600), after(now, 7200), "鲁B12345", "k1"),
    )
    .await
    .unwrap();
    let offer = pb::SharedOffer {
        id: "o1".into(),
        region: "qingdao".into(),
        location: Some(here()),
        address: "Compound 3".into(),
        spaces: 2,
        time_zone: "Asia/Shanghai".into(),
        schedule: vec![pb::WeeklyPeriod {
            weekday: 1,
            start_minute: 0,
            end_minute: 1440,
        }],
        hourly_rate_minor: 400,
        ..Default::default()
    };
    server
        .shared()
        .await
        .offer_space(authed(
            pb::OfferSpaceRequest { offer: Some(offer) },
            &driver_token("d1"),
        ))
        .await
        .unwrap();
    let booking = server
        .shared()
        .await
        .book_offer(authed(
            pb::BookOfferRequest {
                offer_id: "o1".into(),
                start_time: Some(pb_time(after(now, 3600))),
                end_time: Some(pb_time(after(now, 7200))),
                plate: "鲁B12345".into(),
                idempotency_key: "k2".into(),
            },
            &driver_token("d2"),
        ))
        .await
        .unwrap()
        .into_inner()
        .booking
        .unwrap();
    // A linked plate with a topped-up wallet drives in and out: a session paid (and
    // its key while it was open), a wallet, its ledger entries.
    let mut sessions = server.sessions().await;
    sessions
        .link_plate(authed(
            pb::LinkPlateRequest {
                plate: "鲁B77777".into(),
                plate_color: pb::PlateColor::Green.into(),
                payment_method: pb::PaymentMethod::Wallet.into(),
            },
            &driver_token("d3"),
        ))
        .await
        .unwrap();
    sessions
        .top_up(authed(
            pb::TopUpRequest {
                amount_minor: 5_000,
                idempotency_key: "t1".into(),
            },
            &driver_token("d3"),
        ))
        .await
        .unwrap();
    let entry = plate_delta("g1", 2, true, "鲁B77777", now);
    let opened = report_ok(&server, entry).await.session_id;
    let open_key = OpenSession::id_of(
        &CarParkId::parse("g1").unwrap(),
        &Plate::parse("鲁B77777").unwrap(),
    );
    let open_session = stored_parts::<OpenSession>(&server, &open_key);
    server.advance(5400);
    report_ok(
        &server,
        plate_delta("g1", 3, false, "鲁B77777", server.now()),
    )
    .await;
    let paid = eventually("the session is paid", || async {
        let parts = stored_parts_if::<ParkingSession>(&server, &opened)?;
        parts[0].contains("closed_paid").then_some(parts)
    })
    .await;
    let day = SlotCounts::id_of(
        "g1",
        *SlotCounts::days(after(now, 3600), after(now, 7200)).start(),
    );

    let mut seeds = Vec::new();
    let mut add = |kind: &str, what: &str, over_base: bool, parts: &[&str]| {
        let input = stored::input(kind, over_base, parts).unwrap();
        seeds.push((format!("{kind}-{what}"), input));
    };
    let car_park = stored_parts::<CarParkState>(&server, "g1");
    add("car_park", "format1", false, &[&car_park[0], &car_park[1]]);
    add("car_park", "live-only", true, &["", &car_park[1]]);
    add("car_park", "registration-only", true, &[&car_park[0], ""]);
    // Records as the previous version wrote them (bare JSON, format 0).
    let legacy: serde_json::Value =
        serde_json::from_str(include_str!("../data/redis-format-0.json")).unwrap();
    for (id, park) in legacy["parks"].as_object().unwrap() {
        let live = legacy["live"][id].as_str().unwrap();
        add(
            "car_park",
            &format!("format0-{id}"),
            false,
            &[park.as_str().unwrap(), live],
        );
    }
    let slots = stored_parts::<SlotCounts>(&server, &day);
    add("slot_counts", "format1", false, &[&slots[0]]);
    let reservation = stored_parts::<Reservation>(&server, &reservation.id);
    add("reservation", "format1", false, &[&reservation[0]]);
    // The driver's claim, taken by its create a moment ago.
    let claims = stored_parts::<ReservationClaims>(&server, "d2");
    add("reservation_claims", "format1", false, &[&claims[0]]);
    let offer = stored_parts::<SharedOffer>(&server, "o1");
    add("shared_offer", "format1", false, &[&offer[0]]);
    let booking = stored_parts::<SharedBooking>(&server, &booking.id);
    add("shared_booking", "format1", false, &[&booking[0]]);
    add(
        "shared_booking",
        "newer-format",
        false,
        &[&booking[0].replacen("1:", "9:", 1)],
    );
    add("parking_session", "paid", false, &[&paid[0]]);
    add("open_session", "format1", false, &[&open_session[0]]);
    let link = stored_parts::<PlateLink>(&server, "鲁B77777");
    add("plate_link", "format1", false, &[&link[0]]);
    let wallet = stored_parts::<Wallet>(&server, "d3");
    add("wallet", "format1", false, &[&wallet[0]]);
    let charge = stored_parts::<LedgerEntry>(&server, &format!("charge:{opened}"));
    add("ledger_entry", "charge", false, &[&charge[0]]);
    // What the session would leave owed in history's stead had its charge been
    // refused for good.
    let (session, _) = server
        .backend
        .engine
        .session(&SessionId::parse(&opened).unwrap())
        .unwrap();
    let mut refused = (*session).clone();
    refused.state = SessionState::ClosedUnpaid;
    refused.payment.status = PaymentStatus::Failed;
    let owed = Arrear::of(&refused).unwrap();
    add("arrear", "format1", false, &[&owed.encode_part(0)]);
    write_seeds(STORED_TARGET, &seeds);
}
