//! The store conformance suite: one set of behaviours, through the real gRPC API, that
//! every backend must show alike — the embedded store in memory, the durable embedded
//! store (in a temporary data directory), a standalone redis-server and a 3-master
//! Redis Cluster (each started by the test on free loopback ports, killed on drop, with
//! a random key prefix).
//!
//! Each behaviour is one `async fn(Kind)`; `conformance!` makes it a test per backend
//! (`store_conformance::{embedded,durable,redis,cluster}::<name>`). A Redis kind is skipped, with
//! one line on stderr, when redis-server is not installed (see `redis_support`).

use std::sync::Arc;

use crate::{
    redis_support::{RedisCluster, RedisServer, key_prefix},
    support::*,
};
use citypark::{
    app::Backend,
    domain::CarParkState,
    pb::{
        self, CarParkStatus, RejectCode, ReportResult, SpaceCategory::*,
        watch_availability_response::Event,
    },
    service::ManualClock,
    store::{AnyWrite, Change, Committed, Parts, Store, Versioned, Write},
};
use tonic::Code;

/// The backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Durable,
    Redis,
    Cluster,
}

/// The Redis processes a test's server stands on, held only to be killed when dropped.
enum Processes {
    None,
    /// The durable store's data directory, removed when dropped.
    Directory(tempfile::TempDir),
    Standalone {
        _server: RedisServer,
    },
    Cluster {
        _cluster: RedisCluster,
    },
}

/// Whatever keeps a test's backend alive, and where its state lives, so that a second
/// server can be started on the same state.
pub struct Keep {
    kind: Kind,
    /// The Redis url and key prefix of the test's city (None for embedded).
    store: Option<(String, String)>,
    // Declared last and held by the caller after the server, so Redis outlives it.
    _processes: Processes,
}

impl Keep {
    /// A new server on the same state as the first: the same Redis url and key prefix,
    /// the same data directory, or for the in-memory kind a new embedded store (which
    /// starts empty: nothing of it outlives its process).
    pub async fn another_server(&self, clock: Arc<ManualClock>) -> TestServer {
        match (&self.store, &self._processes) {
            (Some((url, prefix)), _) => {
                TestServer::start_redis_with(url, prefix, clock, |_| {}).await
            }
            (None, Processes::Directory(dir)) => {
                TestServer::start_durable_with(dir.path(), clock, |_| {}).await
            }
            (None, _) => TestServer::start_with_clock(Backend::embedded(4096), clock, |_| {}).await,
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(self.kind, Kind::Redis | Kind::Cluster)
    }

    /// Whether the state outlives the server (all but the in-memory store).
    pub fn keeps_state(&self) -> bool {
        self.kind != Kind::Embedded
    }
}

/// A fresh server on `kind`, plus whatever keeps its Redis alive; None when the kind is
/// skipped (redis-server missing and `CITYPARK_REQUIRE_REDIS` not set). Drop the server
/// before the `Keep` (a `(server, keep)` tuple does).
pub async fn server(kind: Kind) -> Option<(TestServer, Keep)> {
    let (processes, url) = match kind {
        Kind::Embedded => {
            let keep = Keep {
                kind,
                store: None,
                _processes: Processes::None,
            };
            return Some((TestServer::start().await, keep));
        }
        Kind::Durable => {
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(ManualClock::new(start_time()));
            let server = TestServer::start_durable_with(dir.path(), clock, |_| {}).await;
            let keep = Keep {
                kind,
                store: None,
                _processes: Processes::Directory(dir),
            };
            return Some((server, keep));
        }
        // The harness blocks while the processes start (it polls them with sleeps).
        Kind::Redis => {
            let redis = tokio::task::spawn_blocking(RedisServer::start)
                .await
                .unwrap()?;
            let url = redis.url();
            (Processes::Standalone { _server: redis }, url)
        }
        Kind::Cluster => {
            let cluster = tokio::task::spawn_blocking(RedisCluster::start)
                .await
                .unwrap()?;
            let url = cluster.url();
            (Processes::Cluster { _cluster: cluster }, url)
        }
    };
    let prefix = key_prefix();
    let server = TestServer::start_redis(&url, &prefix).await;
    let keep = Keep {
        kind,
        store: Some((url, prefix)),
        _processes: processes,
    };
    Some((server, keep))
}

/// One test per backend for each behaviour named.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await
                }
            )*
        }
        mod durable {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Durable).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Redis).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Cluster).await
                }
            )*
        }
    };
}

conformance!(
    upsert_get_list_delete,
    replace_keeps_live_counts_and_clamps_to_a_smaller_capacity,
    region_change_fails_the_precondition_and_changes_nothing,
    report_is_applied_with_the_new_counts_in_its_ack,
    concurrent_reports_on_one_car_park_lose_none,
    old_numbers_are_applied_but_stale_by_when_they_were_observed,
    duplicate_by_sequence_changes_nothing,
    invalid_report_is_rejected_and_changes_nothing,
    deltas_are_clamped_and_counted_as_drift,
    bay_reports_toggle_one_space_each,
    reports_on_one_car_park_in_one_message_apply_in_order,
    mixed_batch_gets_the_right_ack_for_each_report,
    another_operator_can_neither_report_on_nor_replace_nor_delete,
    queries_read_the_writes_at_once,
    a_watch_sees_the_changes_in_order,
    queries_make_no_store_round_trips,
    restart_serves_what_it_served_before,
    a_group_is_written_whole_or_not_at_all,
);

/// An upsert request with an operator's key.
fn upsert(car_park: pb::CarPark, key: &str) -> tonic::Request<pb::UpsertCarParkRequest> {
    authed(
        pb::UpsertCarParkRequest {
            car_park: Some(car_park),
        },
        key,
    )
}

/// A delete request with an operator's key.
fn delete(id: &str, key: &str) -> tonic::Request<pb::DeleteCarParkRequest> {
    authed(pb::DeleteCarParkRequest { id: id.into() }, key)
}

/// A garage in Jinan rather than Qingdao.
fn jinan(id: &str) -> pb::CarPark {
    pb::CarPark {
        region: "jinan".into(),
        ..garage(id, 36.651, 117.120)
    }
}

/// A car park with every optional field set, so that a backend which stores
/// registrations (Redis, as JSON) is seen to give back exactly what it was given.
fn every_field(id: &str) -> pb::CarPark {
    let period = |day: pb::Weekday, open_minute, close_minute| pb::OpeningPeriod {
        day: day.into(),
        open_minute,
        close_minute,
    };
    pb::CarPark {
        kind: pb::CarParkKind::SurfaceLot.into(),
        // In category order, the order the server gives them back in.
        capacity: capacity(&[(Standard, 40), (EvCharging, 6), (Accessible, 2)]),
        opening_hours: vec![
            period(pb::Weekday::Monday, 420, 1320),
            period(pb::Weekday::Sunday, 0, 1440),
        ],
        tariff: Some(pb::Tariff {
            currency: "CNY".into(),
            hourly_rate_minor: 800,
            daily_cap_minor: 0,
            free_minutes: 0,
            version: 1,
        }),
        covered: true,
        max_height_cm: 210,
        report_interval_seconds: 30,
        ..garage(id, 36.070_123_456_7, 120.380_987_654_3)
    }
}

/// (free standard, last sequence, drift) of a car park, through GetAvailability.
async fn counts(server: &TestServer, id: &str) -> (i32, u64, u64) {
    let live = availability_of(server, id).await;
    (free_standard(&live), live.last_sequence, live.drift_count)
}

/// Free standard spaces in an ack that carries the car park's state.
fn acked_free(ack: &pb::ReportAck) -> i32 {
    free_standard(ack.availability.as_ref().expect("the ack shows the state"))
}

async fn upsert_get_list_delete(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    let mut registry = server.registry().await;
    let first = registry
        .upsert_car_park(upsert(garage("g1", 36.067, 120.383), OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let stored = first.car_park.unwrap();
    assert_eq!(stored.operator_id, OPERATOR_A.0, "the caller's operator");
    assert_eq!(
        (stored.id.as_str(), stored.region.as_str()),
        ("g1", "qingdao")
    );
    assert_eq!(car_park_of(&server, "g1").await.unwrap(), stored);

    let renamed = pb::CarPark {
        name: "Renamed".into(),
        ..garage("g1", 36.067, 120.383)
    };
    let second = registry
        .upsert_car_park(upsert(renamed, OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    let replaced = second.car_park.unwrap();
    assert_eq!(replaced.name, "Renamed");
    assert_eq!(replaced.operator_id, OPERATOR_A.0);
    assert_eq!(car_park_of(&server, "g1").await.unwrap(), replaced);

    // 24 more, registered out of id order and in two regions: the listing is in id order.
    let mut expected: Vec<String> = (0..25).map(|i| format!("g{i:02}")).collect();
    expected[1] = "g1".into();
    for id in expected.iter().rev().filter(|id| *id != "g1") {
        let car_park = if id.ends_with('7') {
            jinan(id)
        } else {
            garage(id, 36.067, 120.383)
        };
        register(&server, car_park).await;
    }
    expected.sort();
    let (ids, pages) = list_in_pages(&server, 10).await;
    assert_eq!(ids, expected);
    assert_eq!(pages, [10, 10, 5]);
    let jinan_only: Vec<String> = registry
        .list_car_parks(pb::ListCarParksRequest {
            region: "jinan".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .car_parks
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(jinan_only, ["g07", "g17"]);

    report_ok(&server, snapshot("g1", 9, 42, server.now())).await;
    let deleted = registry
        .delete_car_park(delete("g1", OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, "g1");
    expect_code(car_park_of(&server, "g1").await, Code::NotFound);
    expect_code(
        registry.delete_car_park(delete("g1", OPERATOR_A.1)).await,
        Code::NotFound,
    );
    expect_code(
        report(&server, snapshot("g1", 10, 1, server.now())).await,
        Code::NotFound,
    );
    let (ids, _) = list_in_pages(&server, 10).await;
    assert_eq!(ids.len(), 24);
    assert!(!ids.contains(&"g1".to_owned()));
    let found = lookup(&server, &["g1", "g00"]).await;
    assert_eq!(found.not_found_ids, ["g1"]);

    // Registered again, it is new and starts afresh: no counts survive a delete.
    let again = registry
        .upsert_car_park(upsert(garage("g1", 36.067, 120.383), OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created);
    let fresh = availability_of(&server, "g1").await;
    assert_eq!(fresh.status(), CarParkStatus::NoData);
    assert_eq!((free_standard(&fresh), fresh.last_sequence), (100, 0));
    report_ok(&server, snapshot("g1", 1, 5, server.now())).await;
    assert_eq!(counts(&server, "g1").await, (5, 1, 0));

    // Every field comes back as given, with the operator and the time of the change
    // filled in: the server's, whatever the caller sent.
    let full = register(
        &server,
        pb::CarPark {
            modified_at: Some(pb_time(after(server.now(), -86_400))),
            ..every_field("full")
        },
    )
    .await;
    let expected = pb::CarPark {
        operator_id: OPERATOR_A.0.into(),
        modified_at: Some(pb_time(server.now())),
        ..every_field("full")
    };
    assert_eq!(full, expected);
    assert_eq!(car_park_of(&server, "full").await.unwrap(), expected);
}

async fn replace_keeps_live_counts_and_clamps_to_a_smaller_capacity(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(
        &server,
        snapshot_of("g1", 7, &[(Standard, 42), (EvCharging, 3)], server.now()),
    )
    .await;

    let renamed = pb::CarPark {
        name: "Renamed".into(),
        ..garage("g1", 36.067, 120.383)
    };
    register(&server, renamed).await;
    let kept = availability_of(&server, "g1").await;
    assert_eq!((free_standard(&kept), kept.last_sequence), (42, 7));
    assert_eq!(kept.status(), CarParkStatus::Open);
    assert_eq!(car_park_of(&server, "g1").await.unwrap().name, "Renamed");

    let smaller = pb::CarPark {
        capacity: capacity(&[(Standard, 30)]),
        ..garage("g1", 36.067, 120.383)
    };
    register(&server, smaller).await;
    let clamped = availability_of(&server, "g1").await;
    let numbers: Vec<_> = clamped
        .categories
        .iter()
        .map(|c| (c.category(), c.capacity, c.free, c.available))
        .collect();
    assert_eq!(numbers, [(Standard, 30, 30, 30)], "EV spaces are gone");
    assert_eq!(clamped.last_sequence, 7);

    // The clamped counts are what the next report applies to.
    let ack = report_ok(&server, delta("g1", 8, 5, 0, server.now())).await;
    assert_eq!(acked_free(&ack), 25);
    // And the sequence survived the replace: an old report is still a duplicate.
    let old = report(&server, snapshot("g1", 7, 1, server.now()))
        .await
        .unwrap();
    assert_eq!(old.result(), ReportResult::Duplicate);
    assert_eq!(counts(&server, "g1").await, (25, 8, 0));
}

async fn region_change_fails_the_precondition_and_changes_nothing(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    let original = register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 3, 33, server.now())).await;
    let before = availability_of(&server, "g1").await;
    let moved = pb::CarPark {
        name: "Moved".into(),
        ..jinan("g1")
    };
    let mut registry = server.registry().await;
    let status = expect_code(
        registry.upsert_car_park(upsert(moved, OPERATOR_A.1)).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("qingdao"), "{status:?}");
    assert_eq!(car_park_of(&server, "g1").await.unwrap(), original);
    assert_eq!(availability_of(&server, "g1").await, before);
    let in_jinan = registry
        .list_car_parks(pb::ListCarParksRequest {
            region: "jinan".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(in_jinan.car_parks.is_empty(), "{in_jinan:?}");
    // Still writable where it is.
    report_ok(&server, snapshot("g1", 4, 44, server.now())).await;
}

async fn report_is_applied_with_the_new_counts_in_its_ack(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    let at = after(server.now(), -30);
    let ack = report(&server, snapshot("g1", 1, 42, at)).await.unwrap();
    assert_eq!(
        (ack.car_park_id.as_str(), ack.sequence, ack.result()),
        ("g1", 1, ReportResult::Applied)
    );
    assert_eq!(
        (ack.reject_code(), ack.clamped),
        (RejectCode::Unspecified, 0)
    );
    let live = ack.availability.unwrap();
    assert_eq!(live.status(), CarParkStatus::Open);
    assert_eq!(free_standard(&live), 42);
    assert_eq!(live.observed_at, Some(pb_time(at)));
    assert_eq!(live.data_age_seconds, Some(30));
    assert_eq!(live.last_sequence, 1);
    assert_eq!(availability_of(&server, "g1").await, live);

    // A snapshot leaves the categories it does not list alone.
    let ack = report_ok(
        &server,
        snapshot_of("g1", 2, &[(EvCharging, 4)], server.now()),
    )
    .await;
    let free: Vec<_> = ack
        .availability
        .unwrap()
        .categories
        .iter()
        .map(|c| (c.category(), c.free))
        .collect();
    assert_eq!(free, [(Standard, 42), (EvCharging, 4)]);
}

/// Many writers on one car park at once — concurrent calls, and on Redis two
/// instances — each decide on what they read and commit with compare-and-set: every
/// report is APPLIED or DUPLICATE (never an error while the store is up), and every
/// APPLIED delta is counted exactly once.
async fn concurrent_reports_on_one_car_park_lose_none(kind: Kind) {
    let Some((server, keep)) = server(kind).await else {
        return;
    };
    let mut big = garage("hot", 36.067, 120.383);
    big.capacity = capacity(&[(Standard, 1_000)]);
    register(&server, big).await;
    let other = match keep.is_redis() {
        true => Some(keep.another_server(server.clock.clone()).await),
        false => None,
    };
    let targets: Vec<&TestServer> = std::iter::once(&server).chain(other.as_ref()).collect();
    let mut clients = Vec::new();
    for target in &targets {
        clients.push(target.ingest().await);
    }
    let now = server.now();
    let calls = (1..=120u64).map(|sequence| {
        let mut client = clients[sequence as usize % clients.len()].clone();
        async move {
            let request = pb::ReportRequest {
                report: Some(delta("hot", sequence, 1, 0, now)),
            };
            client.report(authed(request, OPERATOR_A.1)).await
        }
    });
    let acks = futures_join_all(calls).await;
    let mut applied = 0;
    for ack in acks {
        let ack = ack
            .expect("no error while the store is up")
            .into_inner()
            .ack
            .unwrap();
        match ack.result() {
            ReportResult::Applied => applied += 1,
            ReportResult::Duplicate => {}
            other => panic!("{other:?}: {ack:?}"),
        }
    }
    assert!(applied > 0);
    for target in &targets {
        eventually("every instance shows every applied report", || async {
            let free = free_standard(&availability_of(target, "hot").await);
            (free == 1_000 - applied).then_some(())
        })
        .await;
    }
}

/// Runs futures concurrently on this task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

async fn old_numbers_are_applied_but_stale_by_when_they_were_observed(kind: Kind) {
    let Some((server, keep)) = server(kind).await else {
        return;
    };
    // A 60 s report interval: numbers observed more than 180 s ago are STALE, however
    // recently the report arrived.
    register(&server, garage_north("late", 100.0)).await;
    register(&server, garage_north("live", 200.0)).await;
    report_ok(&server, snapshot("live", 1, 20, server.now())).await;
    let an_hour_ago = after(server.now(), -3600);
    let ack = report_ok(&server, snapshot("late", 1, 10, an_hour_ago)).await;
    let acked = ack.availability.unwrap();
    assert_eq!(
        (
            acked.status(),
            acked.data_age_seconds,
            free_standard(&acked)
        ),
        (CarParkStatus::Stale, Some(3600), 10),
        "applied, the newest numbers there are, but an hour old"
    );
    let late = availability_of(&server, "late").await;
    assert_eq!(late, acked);
    assert_eq!(late.observed_at, Some(pb_time(an_hour_ago)));

    assert_eq!(ids_of(&find(&server, near_here()).await), ["live"]);
    let with_stale = pb::FindNearbyRequest {
        include_stale: true,
        ..near_here()
    };
    let found = find(&server, with_stale).await;
    assert_eq!(ids_of(&found), ["late", "live"]);
    assert_eq!(
        (
            found[0].status(),
            found[0].data_age_seconds,
            found[0].available
        ),
        (CarParkStatus::Stale, Some(3600), 10)
    );

    // Just inside the window is OPEN, until the numbers are one second older.
    let ack = report_ok(&server, snapshot("late", 2, 11, after(server.now(), -180))).await;
    assert_eq!(ack.availability.unwrap().status(), CarParkStatus::Open);
    server.advance(1);
    assert_eq!(
        availability_of(&server, "late").await.status(),
        CarParkStatus::Stale
    );

    // Numbers observed now make it OPEN.
    let ack = report_ok(&server, snapshot("late", 3, 12, server.now())).await;
    assert_eq!(ack.availability.unwrap().status(), CarParkStatus::Open);
    let late = availability_of(&server, "late").await;
    assert_eq!(
        (late.status(), late.data_age_seconds, free_standard(&late)),
        (CarParkStatus::Open, Some(0), 12)
    );
    assert_eq!(ids_of(&find(&server, near_here()).await), ["late", "live"]);

    // What is stored is when the numbers were observed: another server on the same
    // state (Redis, the data directory) tells the same status and age.
    report_ok(&server, snapshot("live", 2, 21, an_hour_ago)).await;
    let stored = lookup(&server, &["late", "live"]).await;
    assert_eq!(stored.availabilities[1].status(), CarParkStatus::Stale);
    if keep.keeps_state() {
        let clock = server.clock.clone();
        server.stop().await.unwrap();
        let again = keep.another_server(clock).await;
        assert_eq!(lookup(&again, &["late", "live"]).await, stored);
    }
}

async fn duplicate_by_sequence_changes_nothing(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 5, 42, now)).await;
    let before = availability_of(&server, "g1").await;
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    read_snapshot(&mut watch).await;

    for sequence in [5, 4, 1] {
        let ack = report(&server, snapshot("g1", sequence, 10, now))
            .await
            .unwrap();
        assert_eq!(ack.result(), ReportResult::Duplicate);
        assert_eq!(ack.sequence, sequence);
        let shown = ack.availability.unwrap();
        assert_eq!(
            (free_standard(&shown), shown.last_sequence),
            (42, 5),
            "the ack shows the current counts"
        );
    }
    // A resend after a capacity change is a duplicate, not a rejection: the sequence
    // is checked before the counts.
    let smaller = pb::CarPark {
        capacity: capacity(&[(Standard, 50)]),
        ..garage("g1", 36.067, 120.383)
    };
    register(&server, smaller).await;
    let ack = report(&server, snapshot("g1", 5, 99, now)).await.unwrap();
    assert_eq!(ack.result(), ReportResult::Duplicate);
    let replaced = next_update(&mut watch).await;
    assert_eq!(replaced.last_sequence, 5, "the replace is a change");
    let after_replace = availability_of(&server, "g1").await;
    assert_eq!(
        (free_standard(&after_replace), after_replace.last_sequence),
        (42, 5)
    );
    assert_eq!(after_replace.observed_at, before.observed_at);

    // Duplicates told watchers nothing: the next thing they see is the next report.
    report_ok(&server, snapshot("g1", 6, 7, now)).await;
    let update = next_update(&mut watch).await;
    assert_eq!((update.last_sequence, free_standard(&update)), (6, 7));

    // Nor does a duplicate make stale numbers look live (three intervals of 60 s).
    server.advance(181);
    let stale = availability_of(&server, "g1").await;
    assert_eq!(stale.status(), CarParkStatus::Stale);
    let resent = report(&server, snapshot("g1", 6, 7, server.now()))
        .await
        .unwrap();
    assert_eq!(resent.result(), ReportResult::Duplicate);
    assert_eq!(resent.availability.unwrap().status(), CarParkStatus::Stale);
    assert_eq!(availability_of(&server, "g1").await, stale);
}

async fn invalid_report_is_rejected_and_changes_nothing(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 40, now)).await;
    let before = availability_of(&server, "g1").await;

    let over_capacity = report(&server, snapshot("g1", 2, 101, now)).await;
    expect_invalid(over_capacity, "report.snapshot.free[0].count");
    let negative = report(&server, snapshot("g1", 2, -1, now)).await;
    expect_invalid(negative, "report.snapshot.free[0].count");
    let from_the_future = report(&server, snapshot("g1", 2, 1, after(now, 301))).await;
    expect_invalid(from_the_future, "report.observed_at");
    let no_such_category = report(
        &server,
        snapshot_of("g1", 2, &[(Accessible, 1)], server.now()),
    )
    .await;
    expect_code(no_such_category, Code::InvalidArgument);
    let too_many_exits = report(&server, delta("g1", 2, 0, -3, now)).await;
    expect_code(too_many_exits, Code::InvalidArgument);
    assert_eq!(availability_of(&server, "g1").await, before);

    // A rejected report did not use up its sequence.
    let ack = report_ok(&server, snapshot("g1", 2, 39, now)).await;
    assert_eq!(acked_free(&ack), 39);
}

async fn deltas_are_clamped_and_counted_as_drift(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 5, now)).await;

    let ack = report_ok(&server, delta("g1", 2, 3, 0, now)).await;
    assert_eq!((ack.clamped, acked_free(&ack)), (0, 2));

    let ack = report_ok(&server, delta("g1", 3, 10, 1, now)).await;
    assert_eq!(ack.clamped, 1, "2 - 10 + 1 is below zero");
    let live = ack.availability.unwrap();
    assert_eq!((free_standard(&live), live.drift_count), (0, 1));

    let ack = report_ok(&server, delta("g1", 4, 0, 500, now)).await;
    assert_eq!(ack.clamped, 1, "500 exits overflow the capacity of 100");
    let live = ack.availability.unwrap();
    assert_eq!((free_standard(&live), live.drift_count), (100, 2));

    let ack = report_ok(&server, delta("g1", 5, 4, 2, now)).await;
    assert_eq!(ack.clamped, 0);
    assert_eq!(counts(&server, "g1").await, (98, 5, 2));
    // A snapshot sets the counts again; drift is history and stays.
    report_ok(&server, snapshot("g1", 6, 50, now)).await;
    assert_eq!(counts(&server, "g1").await, (50, 6, 2));
}

async fn bay_reports_toggle_one_space_each(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    let zone = pb::CarPark {
        kind: pb::CarParkKind::OnStreet.into(),
        capacity: capacity(&[(Standard, 5)]),
        ..garage("street", 36.067, 120.383)
    };
    register(&server, zone).await;
    let now = server.now();
    let free_after = async |sequence, bay_id, occupied| {
        let ack = report_ok(&server, bay("street", sequence, bay_id, occupied, now)).await;
        assert_eq!(ack.clamped, 0);
        acked_free(&ack)
    };
    assert_eq!(free_after(1, "b1", true).await, 4);
    assert_eq!(free_after(2, "b1", true).await, 4, "still the same car");
    assert_eq!(free_after(3, "b2", true).await, 3);
    assert_eq!(free_after(4, "b1", false).await, 4);
    assert_eq!(free_after(5, "b1", false).await, 4, "already free");
    assert_eq!(free_after(6, "b3", false).await, 4, "a new bay starts free");
    // Bay states are kept between reports, not only counts: b2 is still taken.
    assert_eq!(
        free_after(7, "b2", true).await,
        4,
        "b2 was occupied already"
    );
    assert_eq!(free_after(8, "b2", false).await, 5);
    assert_eq!(counts(&server, "street").await, (5, 8, 0));
}

async fn reports_on_one_car_park_in_one_message_apply_in_order(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    register(&server, garage("g2", 36.068, 120.384)).await;
    let now = server.now();
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let acks = publisher
        .exchange(vec![
            snapshot("g1", 1, 40, now),
            delta("g1", 2, 1, 0, now),
            snapshot("g2", 1, 30, now),
            delta("g1", 3, 0, 5, now),
            snapshot("g1", 3, 99, now),
            snapshot("g1", 4, 101, now),
            delta("g1", 4, 50, 0, now),
            delta("g2", 2, 0, 80, now),
            snapshot("g1", 2, 1, now),
        ])
        .await;
    let results: Vec<_> = acks
        .iter()
        .map(|a| {
            (
                a.car_park_id.as_str(),
                a.sequence,
                a.result(),
                a.availability.as_ref().map(free_standard),
                a.clamped,
            )
        })
        .collect();
    use ReportResult::{Applied, Duplicate, Rejected};
    assert_eq!(
        results,
        [
            ("g1", 1, Applied, Some(40), 0),
            ("g1", 2, Applied, Some(39), 0),
            ("g2", 1, Applied, Some(30), 0),
            ("g1", 3, Applied, Some(44), 0),
            ("g1", 3, Duplicate, Some(44), 0),
            ("g1", 4, Rejected, None, 0),
            ("g1", 4, Applied, Some(0), 1),
            ("g2", 2, Applied, Some(100), 1),
            ("g1", 2, Duplicate, Some(0), 0),
        ]
    );
    assert_eq!(counts(&server, "g1").await, (0, 4, 1));
    assert_eq!(counts(&server, "g2").await, (100, 2, 1));

    // The next message goes on from there.
    let acks = publisher
        .exchange(vec![delta("g1", 5, 0, 7, now), delta("g1", 6, 2, 0, now)])
        .await;
    let free: Vec<_> = acks.iter().map(acked_free).collect();
    assert_eq!(free, [7, 5]);
    assert_eq!(counts(&server, "g1").await, (5, 6, 1));
}

async fn mixed_batch_gets_the_right_ack_for_each_report(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.067, 120.383)).await;
    register(&server, jinan("j1")).await;
    register_as(&server, garage("b1", 36.068, 120.384), OPERATOR_B.1).await;
    let now = server.now();
    let no_time = pb::OccupancyReport {
        observed_at: None,
        ..snapshot("g1", 5, 1, now)
    };
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let acks = publisher
        .exchange(vec![
            snapshot("g1", 1, 40, now),
            snapshot("g1", 2, 101, now),
            snapshot("nope", 1, 1, now),
            snapshot("j1", 1, 11, now),
            no_time,
            snapshot("b1", 1, 1, now),
            snapshot("g1", 1, 3, now),
            snapshot("g1", 7, 20, now),
            snapshot("j1", 2, 12, now),
        ])
        .await;
    use RejectCode as R;
    use ReportResult::{Applied, Duplicate, Rejected};
    assert_eq!(
        ack_summary(&acks),
        [
            ("g1", 1, Applied, R::Unspecified, ""),
            (
                "g1",
                2,
                Rejected,
                R::InvalidArgument,
                "snapshot.free[0].count"
            ),
            ("nope", 1, Rejected, R::NotFound, ""),
            ("j1", 1, Applied, R::Unspecified, ""),
            ("g1", 5, Rejected, R::InvalidArgument, "observed_at"),
            ("b1", 1, Rejected, R::PermissionDenied, ""),
            ("g1", 1, Duplicate, R::Unspecified, ""),
            ("g1", 7, Applied, R::Unspecified, ""),
            ("j1", 2, Applied, R::Unspecified, ""),
        ]
    );
    for rejected in acks.iter().filter(|a| a.result() == Rejected) {
        assert!(!rejected.reason.is_empty(), "{rejected:?}");
        assert_eq!(rejected.availability, None, "{rejected:?}");
    }
    assert_eq!(counts(&server, "g1").await, (20, 7, 0));
    assert_eq!(counts(&server, "j1").await, (12, 2, 0));
    let theirs = availability_of(&server, "b1").await;
    assert_eq!(
        (theirs.status(), theirs.last_sequence),
        (CarParkStatus::NoData, 0)
    );
    expect_code(car_park_of(&server, "nope").await, Code::NotFound);
}

async fn another_operator_can_neither_report_on_nor_replace_nor_delete(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    let original = register(&server, garage("g1", 36.067, 120.383)).await;
    report_ok(&server, snapshot("g1", 1, 40, server.now())).await;
    let before = availability_of(&server, "g1").await;

    let theirs = report_as(&server, snapshot("g1", 2, 1, server.now()), OPERATOR_B.1).await;
    expect_code(theirs, Code::PermissionDenied);
    let mut publisher = Publisher::open(&server, OPERATOR_B.1).await.unwrap();
    let acks = publisher
        .exchange(vec![snapshot("g1", 3, 1, server.now())])
        .await;
    assert_eq!(acks[0].reject_code(), RejectCode::PermissionDenied);

    let mut registry = server.registry().await;
    expect_code(
        registry.delete_car_park(delete("g1", OPERATOR_B.1)).await,
        Code::PermissionDenied,
    );
    let taken = pb::CarPark {
        name: "Taken".into(),
        ..garage("g1", 36.067, 120.383)
    };
    expect_code(
        registry.upsert_car_park(upsert(taken, OPERATOR_B.1)).await,
        Code::PermissionDenied,
    );
    // Not even under another region: whose it is comes before where it is, so B
    // learns nothing about A's car park.
    let elsewhere = registry
        .upsert_car_park(upsert(jinan("g1"), OPERATOR_B.1))
        .await;
    let status = expect_code(elsewhere, Code::PermissionDenied);
    assert!(!status.message().contains("qingdao"), "{status:?}");

    assert_eq!(car_park_of(&server, "g1").await.unwrap(), original);
    assert_eq!(availability_of(&server, "g1").await, before);
    // A still owns and can write it.
    report_ok(&server, snapshot("g1", 2, 39, server.now())).await;
    registry
        .delete_car_park(delete("g1", OPERATOR_A.1))
        .await
        .unwrap();
}

async fn queries_read_the_writes_at_once(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    let nearby = |include_no_data| pb::FindNearbyRequest {
        include_no_data,
        ..near_here()
    };
    // Every read straight after the ack, with no wait: the same server must show it.
    register(&server, garage_north("g1", 100.0)).await;
    assert_eq!(ids_of(&find(&server, nearby(true)).await), ["g1"]);
    assert!(find(&server, nearby(false)).await.is_empty(), "NO_DATA");
    for sequence in 1..=20u64 {
        let free = (sequence * 7 % 100) as i32;
        report_ok(&server, snapshot("g1", sequence, free, server.now())).await;
        let found = find(&server, nearby(false)).await;
        if free == 0 {
            assert!(found.is_empty(), "no space at {sequence}: {found:?}");
        } else {
            assert_eq!(ids_of(&found), ["g1"]);
            assert_eq!(found[0].available, free, "after report {sequence}");
        }
        assert_eq!(counts(&server, "g1").await, (free, sequence, 0));
    }

    // A new car park, a move, a delete: each seen by the very next query.
    register(&server, garage_north("g2", 50.0)).await;
    report_ok(&server, snapshot("g2", 1, 9, server.now())).await;
    assert_eq!(ids_of(&find(&server, nearby(false)).await), ["g2", "g1"]);
    register(&server, garage_north("g2", 150.0)).await;
    let found = find(&server, nearby(false)).await;
    assert_eq!(ids_of(&found), ["g1", "g2"], "g2 moved further away");
    assert!((found[1].distance_m - 150.0).abs() < 1.0, "{found:?}");
    assert_eq!(found[1].available, 9, "the move kept its counts");
    server
        .registry()
        .await
        .delete_car_park(delete("g1", OPERATOR_A.1))
        .await
        .unwrap();
    assert_eq!(ids_of(&find(&server, nearby(true)).await), ["g2"]);
    let found = lookup(&server, &["g1", "g2"]).await;
    assert_eq!(found.not_found_ids, ["g1"]);
    assert_eq!(free_standard(&found.availabilities[0]), 9);
}

async fn a_watch_sees_the_changes_in_order(kind: Kind) {
    let Some((server, _keep)) = server(kind).await else {
        return;
    };
    register(&server, garage("g1", 36.05, 120.35)).await;
    register(&server, garage("g2", 36.05, 120.35)).await;
    let mut by_ids = watch_ids(&server, &["g1", "g2"]).await.unwrap();
    let mut by_area = watch_area(&server, (36.0, 120.3), (36.1, 120.4))
        .await
        .unwrap();
    assert_eq!(read_snapshot(&mut by_ids).await.len(), 2);
    assert_eq!(read_snapshot(&mut by_area).await.len(), 2);

    // One acknowledged write at a time: a watcher sees each, in the order of the acks.
    let now = server.now();
    let mut expected = Vec::new();
    for sequence in 1..=10u64 {
        let id = if sequence % 3 == 0 { "g2" } else { "g1" };
        report_ok(&server, snapshot(id, sequence, sequence as i32, now)).await;
        expected.push((id.to_owned(), sequence));
    }
    for watch in [&mut by_ids, &mut by_area] {
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            let update = next_update(watch).await;
            assert_eq!(free_standard(&update), update.last_sequence as i32);
            seen.push((update.car_park_id, update.last_sequence));
        }
        assert_eq!(seen, expected);
    }

    // A registration inside the area, then a delete: in order too.
    register(&server, garage("g3", 36.06, 120.36)).await;
    server
        .registry()
        .await
        .delete_car_park(delete("g2", OPERATOR_A.1))
        .await
        .unwrap();
    let newcomer = next_update(&mut by_area).await;
    assert_eq!(
        (newcomer.car_park_id.as_str(), newcomer.status()),
        ("g3", CarParkStatus::NoData)
    );
    for watch in [&mut by_ids, &mut by_area] {
        match next_event(watch).await {
            Event::Removed(removed) => assert_eq!(removed.car_park_id, "g2"),
            other => panic!("expected g2 removed, got {other:?}"),
        }
    }

    // Several reports per car park in one Publish message: each car park's updates go
    // forward only and end at its final state. (Whether every intermediate state is
    // sent is not asserted: the Redis writer commits one car park's reports of one
    // message as one change.)
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    publisher
        .exchange(vec![
            snapshot("g1", 11, 11, now),
            snapshot("g3", 1, 1, now),
            snapshot("g1", 12, 12, now),
            snapshot("g3", 2, 2, now),
            snapshot("g1", 13, 13, now),
        ])
        .await;
    let mut last = std::collections::BTreeMap::from([("g1".to_owned(), 10), ("g3".into(), 0)]);
    while last["g1"] < 13 || last["g3"] < 2 {
        let update = next_update(&mut by_area).await;
        let previous = last.get_mut(&update.car_park_id).expect("g1 or g3");
        assert!(
            update.last_sequence > *previous,
            "{} went from {previous} to {}",
            update.car_park_id,
            update.last_sequence
        );
        assert_eq!(free_standard(&update), update.last_sequence as i32);
        *previous = update.last_sequence;
    }
    let g1 = next_update(&mut by_ids).await;
    assert!(g1.last_sequence > 10, "{g1:?}");
}

async fn queries_make_no_store_round_trips(kind: Kind) {
    let Some((server, keep)) = server(kind).await else {
        return;
    };
    let store = server.backend.store.clone();
    for (i, north) in [100.0, 200.0, 300.0].into_iter().enumerate() {
        let id = format!("g{i}");
        register(&server, garage_north(&id, north)).await;
        report_ok(&server, snapshot(&id, 1, 10 + i as i32, server.now())).await;
    }
    let after_writes = store.round_trips();
    if keep.is_redis() {
        assert!(after_writes > 0, "writes go to Redis");
    } else {
        assert_eq!(after_writes, 0, "the embedded store makes no round trips");
    }

    let mut availability = server.availability().await;
    let mut registry = server.registry().await;
    let mut watches = Vec::new();
    for _ in 0..20 {
        let found = availability
            .find_nearby(near_here())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.results.len(), 3);
        let live = availability
            .get_availability(pb::GetAvailabilityRequest {
                car_park_ids: vec!["g0".into(), "g2".into(), "nope".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(live.availabilities.len(), 2);
        registry
            .get_car_park(pb::GetCarParkRequest { id: "g1".into() })
            .await
            .unwrap();
        let page = registry
            .list_car_parks(pb::ListCarParksRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.car_parks.len(), 3);
        let mut watch = watch_ids(&server, &["g0", "g1"]).await.unwrap();
        assert_eq!(read_snapshot(&mut watch).await.len(), 2);
        watches.push(watch);
    }
    let mut area = watch_area(&server, (36.0, 120.3), (36.1, 120.4))
        .await
        .unwrap();
    assert_eq!(read_snapshot(&mut area).await.len(), 3);
    assert_eq!(store.round_trips(), after_writes, "queries stay local");

    // The counter does count writes: one more report moves it on Redis.
    report_ok(&server, snapshot("g0", 2, 1, server.now())).await;
    if keep.is_redis() {
        assert!(store.round_trips() > after_writes);
    }
    drop(watches);
}

/// Stops the server and starts a new one on the same backend state. Redis and the
/// durable store keep the city (the new server loads it and goes on from it); the
/// in-memory store does not outlive its server, so there the new server must start
/// empty (and the test checks that, rather than being skipped).
async fn restart_serves_what_it_served_before(kind: Kind) {
    let Some((server, keep)) = server(kind).await else {
        return;
    };
    let now = server.now();
    let zone = pb::CarPark {
        kind: pb::CarParkKind::OnStreet.into(),
        capacity: capacity(&[(Standard, 5)]),
        ..garage("street", 36.067, 120.383)
    };
    register(&server, zone).await;
    register(&server, garage_north("g1", 100.0)).await;
    register(&server, garage_north("g2", 200.0)).await;
    register(&server, jinan("j1")).await;
    register_as(&server, garage_north("b1", 300.0), OPERATOR_B.1).await;
    register(&server, every_field("full")).await;
    // Moved from Qingdao to Jinan the only way there is: deleted, registered again.
    register(&server, garage_north("m1", 400.0)).await;
    report_ok(&server, snapshot("m1", 1, 1, now)).await;
    let mut registry = server.registry().await;
    registry
        .delete_car_park(delete("m1", OPERATOR_A.1))
        .await
        .unwrap();
    register(&server, jinan("m1")).await;
    report_ok(&server, snapshot("m1", 1, 21, now)).await;
    report_ok(&server, snapshot("g1", 4, 40, now)).await;
    report_ok(&server, delta("g1", 5, 0, 500, now)).await;
    report_ok(&server, snapshot("j1", 1, 11, now)).await;
    report_ok(&server, bay("street", 1, "b1", true, now)).await;
    report_ok(&server, bay("street", 2, "b2", true, now)).await;
    registry
        .delete_car_park(delete("g2", OPERATOR_A.1))
        .await
        .unwrap();

    let ids = all_ids(&server).await;
    assert_eq!(ids, ["b1", "full", "g1", "j1", "m1", "street"]);
    let mut registrations = Vec::new();
    for id in &ids {
        registrations.push(car_park_of(&server, id).await.unwrap());
    }
    let live = lookup(&server, &ids).await;
    let nearby = find(&server, near_here()).await;
    let clock = server.clock.clone();
    server.stop().await.unwrap();

    let server = keep.another_server(clock).await;
    if !keep.keeps_state() {
        assert_eq!(all_ids(&server).await, Vec::<String>::new());
        expect_code(car_park_of(&server, "g1").await, Code::NotFound);
        // And it is a working server, not a broken one.
        register(&server, garage("g1", 36.067, 120.383)).await;
        report_ok(&server, snapshot("g1", 1, 1, now)).await;
        return;
    }
    assert_eq!(all_ids(&server).await, ids);
    for registration in &registrations {
        assert_eq!(
            &car_park_of(&server, &registration.id).await.unwrap(),
            registration
        );
    }
    let live_again = lookup(&server, &ids).await;
    assert_eq!(live_again, live);
    assert_eq!(find(&server, near_here()).await, nearby);
    expect_code(car_park_of(&server, "g2").await, Code::NotFound);

    // It goes on from where the first left off: sequences, drift, bays.
    let resent = report(&server, snapshot("g1", 5, 1, now)).await.unwrap();
    assert_eq!(resent.result(), ReportResult::Duplicate);
    let ack = report_ok(&server, delta("g1", 6, 1, 0, now)).await;
    assert_eq!(
        (acked_free(&ack), ack.availability.unwrap().drift_count),
        (99, 1)
    );
    let ack = report_ok(&server, bay("street", 3, "b2", true, now)).await;
    assert_eq!(acked_free(&ack), 3, "b2 was occupied already");
    let ack = report_ok(&server, bay("street", 4, "b1", false, now)).await;
    assert_eq!(acked_free(&ack), 4);
    let ack = report_ok(&server, delta("m1", 2, 1, 0, now)).await;
    assert_eq!(acked_free(&ack), 20, "m1 is served from Jinan");
    // A deleted id can be registered again, afresh.
    let mut registry = server.registry().await;
    let again = registry
        .upsert_car_park(upsert(garage_north("g2", 200.0), OPERATOR_A.1))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created);
    assert_eq!(counts(&server, "g2").await, (100, 0, 0));
}

/// Car park ids are unique in the deployment, not per region: on every backend an id
/// registered in one region cannot be registered in another, until it is deleted.
#[tokio::test]
async fn ids_are_unique_across_regions_on_every_backend() {
    for kind in [Kind::Embedded, Kind::Durable, Kind::Redis, Kind::Cluster] {
        let Some((server, _keep)) = server(kind).await else {
            continue;
        };
        let original = register(&server, garage("x1", 36.067, 120.383)).await;
        let mut registry = server.registry().await;
        let status = expect_code(
            registry
                .upsert_car_park(upsert(jinan("x1"), OPERATOR_A.1))
                .await,
            Code::FailedPrecondition,
        );
        assert!(status.message().contains("qingdao"), "{kind:?}: {status:?}");
        assert_eq!(
            car_park_of(&server, "x1").await.unwrap(),
            original,
            "{kind:?}"
        );
        assert_eq!(all_ids(&server).await, ["x1"], "{kind:?}");

        // The other way round too.
        register(&server, jinan("y1")).await;
        expect_code(
            registry
                .upsert_car_park(upsert(garage("y1", 36.067, 120.383), OPERATOR_A.1))
                .await,
            Code::FailedPrecondition,
        );
        assert_eq!(
            car_park_of(&server, "y1").await.unwrap().region,
            "jinan",
            "{kind:?}"
        );

        // Deleted, the id is free for any region, and the new one serves at once.
        registry
            .delete_car_park(delete("x1", OPERATOR_A.1))
            .await
            .unwrap();
        let moved = registry
            .upsert_car_park(upsert(jinan("x1"), OPERATOR_A.1))
            .await
            .unwrap()
            .into_inner();
        assert!(moved.created, "{kind:?}");
        let got = car_park_of(&server, "x1")
            .await
            .unwrap_or_else(|status| panic!("{kind:?}: x1 is served at once: {status:?}"));
        assert_eq!(got.region, "jinan", "{kind:?}");
        report_ok(&server, snapshot("x1", 1, 7, server.now())).await;
        assert_eq!(counts(&server, "x1").await, (7, 1, 0), "{kind:?}");
    }
}

/// `Store::commit_group`, the atomic step of every change that spans records (a
/// reservation and its slot counts): one stale version in a group and nothing of it is
/// written; all current and all are, visible at once here and, on Redis and the
/// durable store, to a new instance too.
async fn a_group_is_written_whole_or_not_at_all(kind: Kind) {
    let Some((server, keep)) = server(kind).await else {
        return;
    };
    register(&server, garage_north("grp-a", 100.0)).await;
    register(&server, garage_north("grp-b", 200.0)).await;
    let engine = &server.backend.engine;
    let read = |id: &str| Versioned::<CarParkState>::in_replica(engine, id);
    let renamed = |id: &str, name: &str| {
        let mut state = read(id).record.expect("registered");
        Arc::make_mut(&mut state.car_park).name = name.to_owned();
        state
    };
    let write = |id: &str, expected: u64, state: CarParkState| -> AnyWrite {
        Write {
            region: state.car_park.region.clone(),
            id: id.to_owned(),
            expected,
            floor: 0,
            change: Change::put(state, Parts::ALL),
        }
        .into()
    };
    let (a, b) = (read("grp-a").version, read("grp-b").version);
    let store = &server.backend.store;

    // grp-b's write was computed from a version it is no longer at.
    let stale = vec![
        write("grp-a", a, renamed("grp-a", "A, renamed")),
        write("grp-b", b - 1, renamed("grp-b", "B, renamed")),
    ];
    let committed = store
        .commit_group(stale, "test", server.now())
        .await
        .unwrap();
    assert_eq!(committed, [Committed::Conflict, Committed::Conflict]);
    assert_eq!(read("grp-a").version, a, "nothing of the group was written");
    assert_eq!(
        car_park_of(&server, "grp-a").await.unwrap().name,
        "Garage grp-a"
    );

    let current = vec![
        write("grp-a", a, renamed("grp-a", "A, renamed")),
        write("grp-b", b, renamed("grp-b", "B, renamed")),
    ];
    let committed = store
        .commit_group(current, "test", server.now())
        .await
        .unwrap();
    assert!(
        matches!(committed[..], [Committed::Written { version: va }, Committed::Written { version: vb }] if va > a && vb > b),
        "{committed:?}"
    );
    assert_eq!(
        car_park_of(&server, "grp-a").await.unwrap().name,
        "A, renamed"
    );
    assert_eq!(
        car_park_of(&server, "grp-b").await.unwrap().name,
        "B, renamed"
    );
    if keep.keeps_state() {
        let clock = server.clock.clone();
        // One server per data directory: the durable store's next one starts after.
        let first = match keep.is_redis() {
            true => Some(server),
            false => {
                server.stop().await.unwrap();
                None
            }
        };
        let other = keep.another_server(clock).await;
        drop(first);
        assert_eq!(
            car_park_of(&other, "grp-a").await.unwrap().name,
            "A, renamed"
        );
        assert_eq!(
            car_park_of(&other, "grp-b").await.unwrap().name,
            "B, renamed"
        );
    }
}
