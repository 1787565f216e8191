//! Stored records carry a format version: Redis state and change-stream entries that an
//! older citypark wrote (bare JSON, "format 0", and entries without a kind) are served
//! and applied; records and entries that a newer one wrote (a kind or a format this
//! version does not know) are skipped with a metric, and the instance goes on.
//!
//! The fixture `tests/data/redis-format-0.json` is Redis state as the previous version
//! wrote it; see `tests/data/README.md` for where it comes from.

use std::{collections::BTreeMap, sync::Arc};

use citypark::{
    domain::{OperatorId, Timestamp},
    pb::{self, SpaceCategory::*},
    service::ManualClock,
};
use redis::{AsyncCommands, aio::MultiplexedConnection};
use tonic::Code;

use crate::{
    redis_support::{RedisServer, key_prefix},
    support::*,
};

/// Redis state as the previous version wrote it, for one region.
#[derive(Debug, serde::Deserialize)]
struct Fixture {
    region: String,
    /// Hash values, by car park id: registrations, live state, versions.
    parks: BTreeMap<String, String>,
    live: BTreeMap<String, String>,
    versions: BTreeMap<String, u64>,
    /// The region's change counter.
    counter: u64,
    /// Change-stream entries in the old shape, as an older instance appends them.
    stream: Vec<BTreeMap<String, String>>,
}

/// The fields of an old-shape entry, in the order older versions wrote them.
const OLD_FIELDS: [&str; 6] = ["n", "op", "id", "v", "park", "live"];

fn fixture() -> Fixture {
    let fixture: Fixture =
        serde_json::from_str(include_str!("../data/redis-format-0.json")).unwrap();
    for entry in &fixture.stream {
        let fields: Vec<&str> = entry.keys().map(String::as_str).collect();
        let mut expected = OLD_FIELDS.to_vec();
        expected.sort();
        assert_eq!(fields, expected, "an old-shape entry: {entry:?}");
    }
    fixture
}

/// The fixture's operators, with keys of the test's choosing.
const WEST_COAST: (&str, &str) = ("west-coast-parking", "key-west-coast");
const QD_GROUP: (&str, &str) = ("qd-parking-group", "key-qd-group");

/// When the tests of the fixture run: some 20 s after the reports it holds, so their
/// numbers are live (OPEN), and 19:21 in Qingdao, inside both car parks' hours.
fn fixture_time() -> Timestamp {
    "2026-12-01T11:21:00Z".parse().unwrap()
}

async fn start_redis() -> Option<RedisServer> {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
}

/// A connection of the test's own, to write Redis as another citypark version would.
async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A key of region qingdao under `prefix` (the schema of src/store/redis/keys.rs).
fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{{qingdao}}:{name}")
}

/// Writes the fixture's hashes, counter, region and id claims under `prefix`, as the
/// previous version left them.
async fn write_fixture(conn: &mut MultiplexedConnection, prefix: &str, fixture: &Fixture) {
    assert_eq!(fixture.region, "qingdao");
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (id, park) in &fixture.parks {
        pipe.hset(key(prefix, "parks"), id, park).ignore();
        pipe.set(format!("{prefix}:id:{id}"), &fixture.region)
            .ignore();
    }
    for (id, live) in &fixture.live {
        pipe.hset(key(prefix, "live"), id, live).ignore();
    }
    for (id, version) in &fixture.versions {
        pipe.hset(key(prefix, "versions"), id, version).ignore();
    }
    pipe.set(key(prefix, "n"), fixture.counter).ignore();
    pipe.sadd(format!("{prefix}:regions"), &fixture.region)
        .ignore();
    let () = pipe.query_async(conn).await.unwrap();
}

/// Appends a change to region qingdao's stream as a citypark instance does
/// (`write.lua`): numbered by an INCR of the region's counter in the same atomic step,
/// so followers see no hole. Returns its number.
async fn append(conn: &mut MultiplexedConnection, prefix: &str, fields: &[(&str, &str)]) -> u64 {
    let script = redis::Script::new(
        "local n = redis.call('INCR', KEYS[1])
         redis.call('XADD', KEYS[2], '*', 'n', n, unpack(ARGV))
         return n",
    );
    let mut invocation = script.key(key(prefix, "n"));
    invocation.key(key(prefix, "changes"));
    for (name, value) in fields {
        invocation.arg(*name).arg(*value);
    }
    invocation.invoke_async(conn).await.unwrap()
}

/// Makes one change in the old shape as an older instance did, in one atomic step:
/// stores the parts it carries (or deletes the car park), sets the version, numbers the
/// change with the region's counter and appends the entry with the old fields (no
/// `k`; `park` and `live`, empty where not set). Returns the change's number.
async fn old_write(
    conn: &mut MultiplexedConnection,
    prefix: &str,
    entry: &BTreeMap<String, String>,
) -> u64 {
    let script = redis::Script::new(
        "local op, id, v, park, live = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
         if op == 'del' then
           redis.call('HDEL', KEYS[4], id)
           redis.call('HDEL', KEYS[5], id)
         else
           if park ~= '' then redis.call('HSET', KEYS[4], id, park) end
           if live ~= '' then redis.call('HSET', KEYS[5], id, live) end
         end
         redis.call('HSET', KEYS[1], id, v)
         local n = redis.call('INCR', KEYS[2])
         redis.call('XADD', KEYS[3], '*', 'n', n, 'op', op, 'id', id, 'v', v,
           'park', park, 'live', live)
         return n",
    );
    let mut invocation = script.key(key(prefix, "versions"));
    for name in ["n", "changes", "parks", "live"] {
        invocation.key(key(prefix, name));
    }
    for name in &OLD_FIELDS[1..] {
        invocation.arg(&entry[*name]);
    }
    invocation.invoke_async(conn).await.unwrap()
}

/// A server on Redis at `url` under `prefix` that knows the fixture's operators, its
/// clock at [`fixture_time`].
async fn fixture_server(url: &str, prefix: &str) -> TestServer {
    let clock = Arc::new(ManualClock::new(fixture_time()));
    TestServer::start_redis_with(url, prefix, clock, |settings| {
        for (id, key) in [WEST_COAST, QD_GROUP] {
            settings
                .api_keys
                .insert_plain(OperatorId::parse(id).unwrap(), key);
        }
    })
    .await
}

/// A server started on a fresh Redis that holds the fixture's state.
struct Loaded {
    server: TestServer,
    /// The test's own connection to that Redis.
    conn: MultiplexedConnection,
    fixture: Fixture,
    prefix: String,
    redis: RedisServer,
}

impl Loaded {
    /// `None` when redis-server is missing (see `redis_support`).
    async fn start() -> Option<Self> {
        let redis = start_redis().await?;
        let (fixture, prefix) = (fixture(), key_prefix());
        let mut conn = connect(&redis.url()).await;
        write_fixture(&mut conn, &prefix, &fixture).await;
        let server = fixture_server(&redis.url(), &prefix).await;
        Some(Self {
            server,
            conn,
            fixture,
            prefix,
            redis,
        })
    }
}

/// The value of a hash field, which must be there.
async fn hget(conn: &mut MultiplexedConnection, hash: &str, field: &str) -> String {
    let value: Option<String> = conn.hget(hash, field).await.unwrap();
    value.unwrap_or_else(|| panic!("{hash} has no {field}"))
}

/// (category, capacity, free, available) of each category of an availability.
fn numbers(a: &pb::CarParkAvailability) -> Vec<(pb::SpaceCategory, i32, i32, i32)> {
    a.categories
        .iter()
        .map(|c| (c.category(), c.capacity, c.free, c.available))
        .collect()
}

/// The week of a car park open every day from `open` to `close` (minutes).
fn every_day(open: i32, close: i32) -> Vec<pb::OpeningPeriod> {
    (1..=7)
        .map(|day| pb::OpeningPeriod {
            day,
            open_minute: open,
            close_minute: close,
        })
        .collect()
}

#[tokio::test]
async fn state_and_changes_an_older_version_wrote_are_served_and_applied() {
    // Bound in this order so that the server goes before its Redis.
    let Some(Loaded {
        redis,
        prefix,
        fixture,
        mut conn,
        server,
    }) = Loaded::start().await
    else {
        return;
    };

    // Both car parks, with every field the previous version stored; the tombstone in
    // `versions` alone is no car park.
    assert_eq!(all_ids(&server).await, ["qd-000001", "qd-002350"]);
    let lot = car_park_of(&server, "qd-000001").await.unwrap();
    assert_eq!(
        lot,
        pb::CarPark {
            id: "qd-000001".into(),
            region: "qingdao".into(),
            operator_id: "west-coast-parking".into(),
            name: "Huangdao Lot 1".into(),
            address: "51 Lijiang West Road, Huangdao District, Qingdao".into(),
            location: Some(pb::LatLng {
                latitude: 35.973586,
                longitude: 120.220551,
            }),
            kind: pb::CarParkKind::SurfaceLot.into(),
            capacity: capacity(&[(Standard, 63), (EvCharging, 10), (Accessible, 2)]),
            time_zone: "Asia/Shanghai".into(),
            opening_hours: every_day(360, 1380),
            closed: false,
            tariff: Some(pb::Tariff {
                currency: "CNY".into(),
                hourly_rate_minor: 550,
                daily_cap_minor: 4500,
                free_minutes: 30,
                version: 1,
            }),
            covered: false,
            max_height_cm: 0,
            report_interval_seconds: 30,
            reservation_policy: None,
            // Stored before citypark kept when a registration changed.
            modified_at: None,
        }
    );
    let street = car_park_of(&server, "qd-002350").await.unwrap();
    assert_eq!(
        (
            street.name.as_str(),
            street.operator_id.as_str(),
            street.kind(),
            street.capacity.clone(),
            street.opening_hours.clone(),
        ),
        (
            "Huangdao Street Parking 2350",
            "qd-parking-group",
            pb::CarParkKind::OnStreet,
            capacity(&[(Standard, 9)]),
            every_day(420, 1260),
        )
    );
    let live = lookup(&server, &["qd-000001", "qd-002350", "qd-009999"]).await;
    assert_eq!(live.not_found_ids, ["qd-009999"]);
    let (lot_live, street_live) = (&live.availabilities[0], &live.availabilities[1]);
    assert_eq!(
        numbers(lot_live),
        [
            (Standard, 63, 50, 50),
            (EvCharging, 10, 9, 9),
            (Accessible, 2, 1, 1)
        ]
    );
    let observed: Timestamp = "2026-12-01T11:20:37.239042252Z".parse().unwrap();
    assert_eq!(
        (
            lot_live.last_sequence,
            lot_live.observed_at,
            lot_live.data_age_seconds,
            lot_live.drift_count,
            lot_live.status(),
        ),
        (
            4,
            Some(pb_time(observed)),
            Some(22),
            0,
            pb::CarParkStatus::Open
        )
    );
    assert_eq!(numbers(street_live), [(Standard, 9, 6, 6)]);
    assert_eq!(
        (street_live.last_sequence, street_live.status()),
        (4, pb::CarParkStatus::Open)
    );
    expect_code(car_park_of(&server, "qd-009999").await, Code::NotFound);

    // An older instance, still running beside this one, makes its changes and appends
    // them in the old shape: live counts of qd-000001, then a delete of qd-002350.
    for entry in &fixture.stream {
        let n = old_write(&mut conn, &prefix, entry).await;
        assert_eq!(n.to_string(), entry["n"], "the fixture's numbering goes on");
    }
    eventually("the old-shape changes are applied", || async {
        let gone = car_park_of(&server, "qd-002350").await.err()?;
        assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
        let lot = availability_of(&server, "qd-000001").await;
        (lot.last_sequence == 5).then_some(())
    })
    .await;
    let lot_live = availability_of(&server, "qd-000001").await;
    assert_eq!(
        numbers(&lot_live),
        [
            (Standard, 63, 7, 7),
            (EvCharging, 10, 9, 9),
            (Accessible, 2, 1, 1)
        ]
    );
    assert_eq!(all_ids(&server).await, ["qd-000001"]);

    // What this version writes carries its format; the part a write leaves alone stays
    // as the older version wrote it.
    let ack = report_as(
        &server,
        snapshot("qd-000001", 6, 20, server.now()),
        WEST_COAST.1,
    )
    .await
    .unwrap();
    assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
    let stored = hget(&mut conn, &key(&prefix, "live"), "qd-000001").await;
    let json = stored
        .strip_prefix("1:")
        .unwrap_or_else(|| panic!("format 1: {stored:?}"));
    let live: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        (&live["last_sequence"], &live["free"][0]),
        (&serde_json::json!(6), &serde_json::json!(20)),
        "{stored}"
    );
    assert_eq!(
        hget(&mut conn, &key(&prefix, "parks"), "qd-000001").await,
        fixture.parks["qd-000001"],
        "a report leaves the registration alone"
    );
    assert_eq!(
        hget(&mut conn, &key(&prefix, "versions"), "qd-000001").await,
        "7"
    );
    // Still serving, its own write included.
    let lot_live = availability_of(&server, "qd-000001").await;
    assert_eq!((lot_live.last_sequence, free_standard(&lot_live)), (6, 20));

    // A registration written now is format 1 too.
    let renamed = pb::CarPark {
        name: "Huangdao Lot 1 (west)".into(),
        ..lot.clone()
    };
    let stored = try_register_as(&server, renamed, WEST_COAST.1)
        .await
        .unwrap();
    assert_eq!(stored.name, "Huangdao Lot 1 (west)");
    let park = hget(&mut conn, &key(&prefix, "parks"), "qd-000001").await;
    assert!(park.starts_with("1:{"), "{park}");

    // A new instance loads the state, part format 0, part format 1, as the first shows it.
    let fresh = fixture_server(&redis.url(), &prefix).await;
    assert_eq!(all_ids(&fresh).await, ["qd-000001"]);
    assert_eq!(
        car_park_of(&fresh, "qd-000001").await.unwrap(),
        car_park_of(&server, "qd-000001").await.unwrap()
    );
    assert_eq!(
        availability_of(&fresh, "qd-000001").await,
        availability_of(&server, "qd-000001").await
    );
}

#[tokio::test]
async fn sequences_and_bay_states_an_older_version_wrote_carry_on() {
    let Some(Loaded {
        redis: _redis,
        server,
        ..
    }) = Loaded::start().await
    else {
        return;
    };
    let now = server.now();

    // The last sequence stored in format 0 still decides what is a duplicate.
    let resent = report_as(&server, snapshot("qd-000001", 4, 1, now), WEST_COAST.1)
        .await
        .unwrap();
    assert_eq!(resent.result(), pb::ReportResult::Duplicate, "{resent:?}");
    assert_eq!(free_standard(resent.availability.as_ref().unwrap()), 50);

    // Bay b007 is stored as occupied: reporting it occupied again changes nothing, and
    // freeing it frees one space.
    let free_after = async |sequence, bay_id, occupied| {
        let report = bay("qd-002350", sequence, bay_id, occupied, now);
        let ack = report_as(&server, report, QD_GROUP.1).await.unwrap();
        assert_eq!(ack.result(), pb::ReportResult::Applied, "{ack:?}");
        assert_eq!(ack.clamped, 0, "{ack:?}");
        free_standard(ack.availability.as_ref().unwrap())
    };
    assert_eq!(free_after(5, "b007", true).await, 6, "b007 was occupied");
    assert_eq!(free_after(6, "b007", false).await, 7);
    assert_eq!(free_after(7, "b008", true).await, 6);
    let street = availability_of(&server, "qd-002350").await;
    assert_eq!((street.last_sequence, free_standard(&street)), (7, 6));
}

/// The metric series of one skip reason.
fn skipped(kind: &str, reason: &str) -> String {
    format!(r#"citypark_replication_skipped_total{{kind="{kind}",reason="{reason}"}}"#)
}

/// What a newer version would store: `value` (a part as this version stored it) in
/// format 99, its JSON changed by `change`. The JSON keeps today's shape, so a version
/// that ignored the format would read it, and be seen to.
fn in_format_99(value: &str, change: impl FnOnce(&mut serde_json::Value)) -> String {
    let json = value
        .strip_prefix("1:")
        .unwrap_or_else(|| panic!("format 1: {value:?}"));
    let mut json: serde_json::Value = serde_json::from_str(json).unwrap();
    change(&mut json);
    format!("99:{json}")
}

#[tokio::test]
async fn records_and_changes_a_newer_version_wrote_are_skipped_not_fatal() {
    let Some(redis) = start_redis().await else {
        return;
    };
    let (url, prefix) = (redis.url(), key_prefix());
    let mut conn = connect(&url).await;
    let a = TestServer::start_redis(&url, &prefix).await;
    register(&a, garage_north("g1", 100.0)).await;
    register(&a, garage_north("g2", 200.0)).await;
    report_ok(&a, snapshot("g1", 1, 40, a.now())).await;
    report_ok(&a, snapshot("g2", 1, 30, a.now())).await;
    let ids = ["g1".to_owned(), "g2".to_owned()];
    let before = states(&a, &ids).await;
    // Counters are process-wide: compare with what they were.
    let counted = async |server: &TestServer| {
        let text = server.metrics_text().await;
        [
            series(&text, &skipped("unknown", "unknown_kind")),
            series(&text, &skipped("car_park", "newer_format")),
            series(&text, &skipped("car_park", "undecodable")),
        ]
    };
    let base = counted(&a).await;

    // A newer instance appends a change of a kind this version does not know, then a
    // car park change in a format it does not know, at g1's next version. Only the
    // stream entries are written, so this tests the follower alone (the hashes are the
    // load's business, below), and g1's version in Redis stays where it was.
    append(
        &mut conn,
        &prefix,
        &[
            ("k", "some_future_kind"),
            ("op", "put"),
            ("id", "x"),
            ("v", "1"),
        ],
    )
    .await;
    let version = hget(&mut conn, &key(&prefix, "versions"), "g1").await;
    let next_version = (version.parse::<u64>().unwrap() + 1).to_string();
    let live = hget(&mut conn, &key(&prefix, "live"), "g1").await;
    let newer = in_format_99(&live, |json| {
        json["free"][0] = 0.into();
        json["last_sequence"] = 99.into();
    });
    append(
        &mut conn,
        &prefix,
        &[
            ("k", "car_park"),
            ("op", "put"),
            ("id", "g1"),
            ("v", &next_version),
            ("live", &newer),
        ],
    )
    .await;

    // A keeps taking writes, and keeps following: B, started after those entries, writes
    // after them, and A applies that.
    report_ok(&a, snapshot("g2", 2, 25, a.now())).await;
    let b = TestServer::start_redis(&url, &prefix).await;
    report_ok(&b, snapshot("g2", 3, 20, b.now())).await;
    eventually(
        "A applies B's report, after the skipped entries",
        || async {
            let g2 = availability_of(&a, "g2").await;
            (g2.last_sequence == 3 && free_standard(&g2) == 20).then_some(())
        },
    )
    .await;
    // g1 keeps its numbers; the unknown kind's record is nowhere.
    let after = states(&a, &ids).await;
    assert_eq!(after[0], before[0], "g1 untouched by the newer entry");
    assert_eq!(all_ids(&a).await, ids);
    // Each entry skipped once, by A (B started past them), for its reason.
    let now = counted(&a).await;
    assert_eq!(
        [now[0] - base[0], now[1] - base[1], now[2] - base[2]],
        [1.0, 1.0, 0.0],
        "skips: unknown kind, newer format, undecodable"
    );

    // A record a newer version wrote in the hashes: a third car park, both parts in
    // format 99. A new instance loads the others and skips it.
    let park = hget(&mut conn, &key(&prefix, "parks"), "g2").await;
    let live = hget(&mut conn, &key(&prefix, "live"), "g2").await;
    let rename = |json: &mut serde_json::Value| json["id"] = "g3".into();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hset(key(&prefix, "parks"), "g3", in_format_99(&park, rename))
        .ignore()
        .hset(key(&prefix, "live"), "g3", in_format_99(&live, |_| {}))
        .ignore()
        .hset(key(&prefix, "versions"), "g3", 1)
        .ignore()
        .set(format!("{prefix}:id:g3"), "qingdao")
        .ignore();
    let () = pipe.query_async(&mut conn).await.unwrap();
    let c = TestServer::start_redis(&url, &prefix).await;
    assert_eq!(all_ids(&c).await, ids);
    expect_code(car_park_of(&c, "g3").await, Code::NotFound);
    assert_eq!(states(&c, &ids).await, states(&a, &ids).await);
    let now = counted(&c).await;
    assert_eq!(
        [now[0] - base[0], now[1] - base[1], now[2] - base[2]],
        [1.0, 2.0, 0.0],
        "the load skipped g3 for its format"
    );

    // And C writes g1 at the version the skipped entry claimed: A never took that
    // version for g1, so it applies C's change.
    report_ok(&c, snapshot("g1", 2, 39, c.now())).await;
    eventually("A applies C's report on g1", || async {
        let g1 = availability_of(&a, "g1").await;
        (g1.last_sequence == 2 && free_standard(&g1) == 39).then_some(())
    })
    .await;
}
