//! One suite for every history backend: SQLite (a file in a temporary directory) and
//! PostgreSQL (a database of the test's own). Each test runs on both.

use std::time::Duration;

use citypark::{
    domain::{
        Capacity, CarPark, CarParkId, CarParkKind, DriverId, LatLng, OpeningHours, OperatorId,
        ParkingSession, PaymentMethod, Plate, PlateColor, PlateRead, RegionId, SessionId,
        SessionState, SpaceCategory, Tariff, TimeZoneName, Timestamp, Wallet,
    },
    history::{
        ClosedSession, Cursor, History, Kept, KeptEntry, Location, Migrate, Query, Sample,
        SqlHistory, bucket_of,
    },
};

use super::postgres_support::PgDatabase;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a backend's storage alive for the test.
#[allow(dead_code)]
enum Keep {
    Dir(tempfile::TempDir),
    Db(PgDatabase),
}

async fn location(backend: Backend) -> Option<(Location, Keep)> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data").join("history.sqlite3");
            Some((Location::Sqlite(path), Keep::Dir(dir)))
        }
        Backend::Postgres => {
            let db = PgDatabase::create().await?;
            Some((Location::Postgres(db.url()), Keep::Db(db)))
        }
    }
}

async fn open(backend: Backend) -> Option<(SqlHistory, Keep)> {
    let (location, keep) = location(backend).await?;
    let history = SqlHistory::open(&location, Migrate::Auto).await.unwrap();
    Some((history, keep))
}

/// Runs `$test` on every backend, one `#[tokio::test]` each.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $test() { super::$test(super::Backend::Postgres).await })*
        }
    };
}

on_every_backend!(
    sessions_are_kept_once_and_listed_newest_first,
    pages_have_no_gap_and_no_duplicate,
    settlement_sums_are_one_aggregate_of_the_sessions,
    a_day_is_read_in_one_snapshot_while_sessions_move_in,
    closed_days_are_kept_once_per_operator_and_day,
    ledger_entries_and_refunds_are_kept,
    samples_merge_into_their_buckets,
    plates_are_pseudonymised_with_a_keyed_hash,
    retention_removes_what_is_past_it,
    migrations_are_applied_or_checked,
);

fn t(minutes: i64) -> Timestamp {
    let start: Timestamp = "2026-11-30T08:00:00Z".parse().unwrap();
    Timestamp::from_second(start.as_second() + minutes * 60).unwrap()
}

fn car_park(id: &str, operator: &str) -> CarPark {
    CarPark {
        id: CarParkId::parse(id).unwrap(),
        region: RegionId::parse("qingdao").unwrap(),
        operator: OperatorId::parse(operator).unwrap(),
        name: "Garage".into(),
        address: String::new(),
        location: LatLng::new(36.0, 120.0).unwrap(),
        kind: CarParkKind::Garage,
        capacity: Capacity::new([(SpaceCategory::Standard, 10)]).unwrap(),
        time_zone: TimeZoneName::parse("Asia/Shanghai").unwrap(),
        opening_hours: OpeningHours::always(),
        closed: false,
        tariff: Tariff::new("CNY", 600, 5000, 0).unwrap(),
        covered: true,
        max_height_cm: None,
        modified_at: jiff::Timestamp::UNIX_EPOCH,
        report_interval: Duration::from_secs(60),
        reservation_policy: None,
    }
}

/// A session of `plate` at `park` from `entry` for `minutes`, paid by `payer` (or at
/// the barrier), closed.
fn session(
    park: &CarPark,
    seq: u64,
    plate: &str,
    entry: Timestamp,
    minutes: i64,
    payer: Option<&str>,
) -> ClosedSession {
    let read = PlateRead {
        plate: Plate::parse(plate).unwrap(),
        color: PlateColor::Blue,
        lane: "in".into(),
        at: entry,
    };
    let mut s = ParkingSession::enter(SessionId::of_report(&park.id, seq), park, read, None, false);
    let exit = Timestamp::from_second(entry.as_second() + minutes * 60).unwrap();
    s.exit(
        exit,
        payer.map(|d| (DriverId::parse(d).unwrap(), PaymentMethod::Wallet)),
    )
    .unwrap();
    if payer.is_some() && s.is_due() {
        s.paid(&Wallet::charge_id(&s.id)).unwrap();
    }
    let exit_day = exit.to_zoned(park.time_zone.zone().clone()).date();
    ClosedSession {
        session: s,
        exit_day: Some(exit_day),
    }
}

fn ids(list: &[ClosedSession]) -> Vec<String> {
    list.iter().map(|s| s.session.id.to_string()).collect()
}

async fn sessions_are_kept_once_and_listed_newest_first(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let (a, b) = (car_park("ga", "op1"), car_park("gb", "op2"));
    let kept = vec![
        session(&a, 1, "鲁B11111", t(0), 90, Some("ann")),
        session(&a, 2, "鲁B22222", t(10), 30, None),
        session(&b, 3, "鲁B33333", t(20), 60, Some("ann")),
    ];
    assert_eq!(history.put(&kept).await.unwrap(), 3);
    assert_eq!(history.put(&kept).await.unwrap(), 0, "written once, by id");

    let got: ClosedSession = history.get("ga~1").await.unwrap().expect("kept");
    assert_eq!(got, kept[0], "read back whole");
    assert_eq!(history.get::<ClosedSession>("ga~9").await.unwrap(), None);

    let ann: Vec<ClosedSession> = history
        .list(&Query::first(10).with(&["driver"], "ann"))
        .await
        .unwrap();
    assert_eq!(ids(&ann), ["gb~3", "ga~1"], "newest first");
    let at_a: Vec<ClosedSession> = history
        .list(&Query::first(10).with(&["car_park"], "ga"))
        .await
        .unwrap();
    assert_eq!(ids(&at_a), ["ga~2", "ga~1"]);
    let op2: Vec<ClosedSession> = history
        .list(&Query::first(10).with(&["operator"], "op2"))
        .await
        .unwrap();
    assert_eq!(ids(&op2), ["gb~3"]);
    let window = Query {
        from: Some(t(5)),
        to: Some(t(20)),
        ..Query::first(10)
    };
    let between: Vec<ClosedSession> = history.list(&window).await.unwrap();
    assert_eq!(ids(&between), ["ga~2"], "from inclusive, to exclusive");
    let got: Option<ClosedSession> = history.get("ga~1").await.unwrap();
    assert_eq!(
        got.map(|s| s.session.id.to_string()).as_deref(),
        Some("ga~1")
    );
    let none: Option<ClosedSession> = history.get("nope~1").await.unwrap();
    assert!(none.is_none());
}

async fn pages_have_no_gap_and_no_duplicate(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let park = car_park("gp", "op");
    // 25 sessions, several sharing an entry time (ties go by id), over two months so
    // that PostgreSQL spreads them over partitions.
    let mut kept = Vec::new();
    for i in 0..25u64 {
        let entry = t((i as i64 / 3) * 60 * 24 * 4);
        kept.push(session(&park, 100 + i, "鲁B12345", entry, 30, Some("bo")));
    }
    history.put(&kept).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page: Vec<ClosedSession> = history
            .list(&Query {
                after: after.clone(),
                ..Query::first(4).with(&["driver"], "bo")
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some(Cursor {
            at: ClosedSession::listed_at(&last.session),
            id: last.session.id.to_string(),
        });
        seen.extend(ids(&page));
    }
    let mut expected = kept.clone();
    expected.sort_by_key(|s| {
        (
            std::cmp::Reverse(ClosedSession::listed_at(&s.session)),
            s.session.id.to_string(),
        )
    });
    assert_eq!(seen, ids(&expected), "every session once, in list order");
}

async fn settlement_sums_are_one_aggregate_of_the_sessions(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let park = car_park("gs", "op");
    let mut kept = vec![
        session(&park, 1, "鲁B10001", t(0), 90, Some("ann")),
        session(&park, 2, "鲁B10002", t(5), 120, Some("bo")),
        session(&park, 3, "鲁B10003", t(10), 60, None),
        // Another local day (Asia/Shanghai): 08:00Z is 16:00 there, + 10 h is past
        // midnight.
        session(&park, 4, "鲁B10004", t(0), 600, None),
    ];
    let mut refused = session(&park, 5, "鲁B10005", t(20), 60, Some("cy"));
    refused.session.state = SessionState::ClosedUnpaid;
    refused.session.payment.status = citypark::domain::PaymentStatus::Failed;
    kept.push(refused);
    history.put(&kept).await.unwrap();
    let op = OperatorId::parse("op").unwrap();
    let day = kept[0].exit_day.unwrap();
    let whole = (t(0), t(24 * 60));
    let sums = history
        .day(&op, day, whole, &[], &[])
        .await
        .unwrap()
        .sessions;
    let count: i64 = sums.iter().map(|s| s.sessions).sum();
    let fees: i64 = sums.iter().map(|s| s.fee_minor).sum();
    let on_day: Vec<&ClosedSession> = kept.iter().filter(|s| s.exit_day == Some(day)).collect();
    assert_eq!(count, on_day.len() as i64);
    assert_eq!(
        fees,
        on_day.iter().map(|s| s.session.fee_minor).sum::<i64>(),
        "the sums are the sessions' own"
    );
    let paid = sums
        .iter()
        .find(|s| s.state == "closed_paid")
        .expect("paid sessions");
    assert_eq!(paid.sessions, 2);
    assert!(
        sums.iter()
            .any(|s| s.payment_status == "failed" && s.sessions == 1)
    );
    let other = OperatorId::parse("other").unwrap();
    let none = history.day(&other, day, whole, &[], &[]).await.unwrap();
    assert!(none.sessions.is_empty());
}

/// While sessions of a day move into history one by one, every read of the day counts
/// each once: the sums hold exactly the sessions already there and the ones it says
/// it holds of those asked about.
async fn a_day_is_read_in_one_snapshot_while_sessions_move_in(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let history = std::sync::Arc::new(history);
    let park = car_park("gm", "op");
    let moving: Vec<ClosedSession> = (0..200)
        .map(|i| session(&park, i, "鲁B10001", t(i as i64), 1, Some("ann")))
        .collect();
    history.put(&moving[..1]).await.unwrap();
    let (op, day) = (
        OperatorId::parse("op").unwrap(),
        moving[0].exit_day.unwrap(),
    );
    let asked: Vec<String> = moving[1..]
        .iter()
        .map(|s| s.session.id.to_string())
        .collect();
    let writer = {
        let history = history.clone();
        tokio::spawn(async move {
            for one in moving[1..].chunks(1) {
                history.put(one).await.unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let kept = history
            .day(&op, day, (t(0), t(24 * 60)), &asked, &[])
            .await
            .unwrap();
        let summed: i64 = kept.sessions.iter().map(|s| s.sessions).sum();
        assert_eq!(
            summed,
            1 + kept.sessions_held.len() as i64,
            "read {reads}: the sums and the held list are of one moment"
        );
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 1, "the day was read while sessions moved in");
}

async fn ledger_entries_and_refunds_are_kept(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let ann = DriverId::parse("ann").unwrap();
    let op = OperatorId::parse("op").unwrap();
    let wallet = Wallet::new(ann.clone(), "CNY");
    let (wallet, top_up) = wallet.top_up("k1", 10_000, t(0)).unwrap();
    let session = SessionId::of_report(&CarParkId::parse("g1").unwrap(), 7);
    let (wallet, charge) = wallet
        .charge(&session, &op, 1_500, "CNY", 0, t(60))
        .unwrap();
    let (_, refund) = wallet.refund(&session, &op, 500, t(120)).unwrap();
    let entries = vec![
        KeptEntry(top_up.clone()),
        KeptEntry(charge.clone()),
        KeptEntry(refund.clone()),
    ];
    assert_eq!(history.put(&entries).await.unwrap(), 3);
    assert_eq!(history.put(&entries[..1]).await.unwrap(), 0);
    let listed: Vec<KeptEntry> = history
        .list(&Query::first(10).with(&["driver"], "ann"))
        .await
        .unwrap();
    let listed: Vec<_> = listed.into_iter().map(|e| e.0).collect();
    assert_eq!(listed, [refund, charge, top_up], "newest first, whole");
    let ids: Vec<String> = entries.iter().map(|e| e.0.id.clone()).collect();
    let day = t(0).to_zoned(jiff::tz::TimeZone::UTC).date();
    let kept = history
        .day(&op, day, (t(0), t(24 * 60)), &[], &ids[1..])
        .await
        .unwrap();
    assert_eq!(kept.refunds, [("CNY".to_owned(), 500)]);
    let mut held = kept.entries_held.clone();
    held.sort();
    let mut asked = ids[1..].to_vec();
    asked.sort();
    assert_eq!(held, asked, "the live entries it holds too");
    let earlier = history
        .day(&op, day, (t(0), t(100)), &[], &[])
        .await
        .unwrap();
    assert!(earlier.refunds.is_empty());
}

async fn samples_merge_into_their_buckets(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let bucket = bucket_of(t(0));
    let sample = |min, max, last, bucket| Sample {
        car_park: "g1".into(),
        region: "qingdao".into(),
        category: SpaceCategory::Standard,
        bucket,
        min_free: min,
        max_free: max,
        last_free: last,
        capacity: 10,
        status: "open".into(),
    };
    let next = Timestamp::from_millisecond(bucket.as_millisecond() + 300_000).unwrap();
    history
        .put_samples(&[sample(4, 6, 5, bucket), sample(3, 3, 3, next)])
        .await
        .unwrap();
    // The same bucket again (another flush, or another instance): merged, not replaced.
    history
        .put_samples(&[sample(2, 5, 2, bucket), sample(5, 9, 9, bucket)])
        .await
        .unwrap();
    let got = history
        .samples("g1", SpaceCategory::Standard, bucket, t(60))
        .await
        .unwrap();
    assert_eq!(got, [sample(2, 9, 9, bucket), sample(3, 3, 3, next)]);
    let none = history
        .samples("g1", SpaceCategory::EvCharging, bucket, t(60))
        .await
        .unwrap();
    assert!(none.is_empty());
    let later = history
        .samples("g1", SpaceCategory::Standard, next, t(60))
        .await
        .unwrap();
    assert_eq!(later.len(), 1, "from is inclusive");
}

async fn plates_are_pseudonymised_with_a_keyed_hash(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let park = car_park("gk", "op");
    let kept = vec![
        session(&park, 1, "鲁B11111", t(0), 30, Some("ann")),
        session(&park, 2, "鲁B22222", t(100), 30, Some("ann")),
    ];
    history.put(&kept).await.unwrap();
    // Only the first left before the cutoff.
    let n = history.pseudonymise(t(60), b"secret", 100).await.unwrap();
    assert_eq!(n, 1);
    let first: ClosedSession = history.get("gk~1").await.unwrap().unwrap();
    assert_eq!(first.session.plate, None, "the plate is forgotten");
    assert_eq!(first.session.fee_minor, kept[0].session.fee_minor);
    let second: ClosedSession = history.get("gk~2").await.unwrap().unwrap();
    assert!(second.session.plate.is_some(), "within retention");
    assert_eq!(
        history.pseudonymise(t(60), b"secret", 100).await.unwrap(),
        0
    );
    assert_eq!(
        history.pseudonymise(t(1000), b"secret", 100).await.unwrap(),
        1
    );
}

async fn retention_removes_what_is_past_it(backend: Backend) {
    let Some((history, keep)) = open(backend).await else {
        return;
    };
    let park = car_park("gr", "op");
    let old = t(-60 * 24 * 70); // two months before
    let kept = vec![
        session(&park, 1, "鲁B11111", old, 30, None),
        session(&park, 2, "鲁B22222", t(0), 30, None),
    ];
    history.put(&kept).await.unwrap();
    history
        .put_samples(&[Sample {
            car_park: "gr".into(),
            region: "qingdao".into(),
            category: SpaceCategory::Standard,
            bucket: bucket_of(old),
            min_free: 1,
            max_free: 1,
            last_free: 1,
            capacity: 10,
            status: "open".into(),
        }])
        .await
        .unwrap();
    for kept in Kept::ALL {
        history.expire(kept, t(-60 * 24)).await.unwrap();
    }
    let left: Vec<ClosedSession> = history.list(&Query::first(10)).await.unwrap();
    assert_eq!(ids(&left), ["gr~2"]);
    let samples = history
        .samples("gr", SpaceCategory::Standard, bucket_of(old), t(0))
        .await
        .unwrap();
    assert!(samples.is_empty());
    if let Keep::Db(db) = &keep {
        // PostgreSQL dropped the old months whole: one partition of each table is left.
        let partitions = |table: &str| {
            format!(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent \
                 WHERE p.relname = '{table}'"
            )
        };
        assert_eq!(db.query_i64(&partitions("sessions")).await, 1);
        assert_eq!(db.query_i64(&partitions("occupancy_samples")).await, 0);
    }
}

async fn closed_days_are_kept_once_per_operator_and_day(backend: Backend) {
    let Some((history, _keep)) = open(backend).await else {
        return;
    };
    let (a, b) = (car_park("ga", "op"), car_park("gb", "other"));
    let kept = vec![
        session(&a, 1, "鲁B10001", t(0), 60, Some("ann")),
        // The next local day (Asia/Shanghai: 08:00Z is 16:00 there).
        session(&a, 2, "鲁B10002", t(0), 600, None),
        session(&b, 1, "鲁B10003", t(0), 60, None),
    ];
    history.put(&kept).await.unwrap();
    let (op, other) = (
        OperatorId::parse("op").unwrap(),
        OperatorId::parse("other").unwrap(),
    );
    let (day, next) = (kept[0].exit_day.unwrap(), kept[1].exit_day.unwrap());
    assert_ne!(day, next);
    let both = [op.clone(), other.clone()];
    let unsettled = history.unsettled_days(&both, day, next).await.unwrap();
    assert_eq!(
        unsettled,
        [(op.clone(), day), (other.clone(), day), (op.clone(), next)],
        "oldest first, each operator's day once"
    );
    // Only days in the range asked.
    assert_eq!(
        history.unsettled_days(&both, next, next).await.unwrap(),
        [(op.clone(), next)]
    );
    // Only the operators asked about.
    assert_eq!(
        history
            .unsettled_days(std::slice::from_ref(&other), day, next)
            .await
            .unwrap(),
        [(other.clone(), day)]
    );

    assert_eq!(history.settled(&op, day).await.unwrap(), None);
    let settlement = citypark::domain::Settlement {
        currency: "CNY".into(),
        sessions_paid: 1,
        revenue_minor: 600,
        refunds_minor: 100,
        // Every money column comes back as it went in.
        arrears_minor: 3,
        barrier_minor: 5,
        pending_minor: 7,
        ..Default::default()
    };
    let start = day.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp();
    history
        .put_settlement(&op, day, start, &settlement, t(3000))
        .await
        .unwrap();
    // A day kept is kept as first closed.
    let changed = citypark::domain::Settlement {
        revenue_minor: 1,
        ..settlement.clone()
    };
    history
        .put_settlement(&op, day, start, &changed, t(3001))
        .await
        .unwrap();
    assert_eq!(history.settled(&op, day).await.unwrap(), Some(settlement));
    assert_eq!(history.settled(&other, day).await.unwrap(), None);
    assert_eq!(
        history.unsettled_days(&both, day, next).await.unwrap(),
        [(other, day), (op.clone(), next)]
    );
    // A session written to the day later (a barrier that was offline) reopens it,
    // and a settlement that does not count every session of the day is not kept.
    history
        .put(&[session(&a, 3, "鲁B10005", t(10), 60, None)])
        .await
        .unwrap();
    assert_eq!(history.settled(&op, day).await.unwrap(), None);
    history
        .put_settlement(&op, day, start, &changed, t(3002))
        .await
        .unwrap();
    assert_eq!(history.settled(&op, day).await.unwrap(), None);
    let both = citypark::domain::Settlement {
        sessions_unpaid: 1,
        ..changed
    };
    history
        .put_settlement(&op, day, start, &both, t(3003))
        .await
        .unwrap();
    assert_eq!(history.settled(&op, day).await.unwrap(), Some(both));
    // Kept as long as money records: past their retention it goes.
    history
        .expire(
            Kept::Settlements,
            Timestamp::from_second(start.as_second() + 1).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(history.settled(&op, day).await.unwrap(), None);
}

async fn migrations_are_applied_or_checked(backend: Backend) {
    let Some((location, _keep)) = location(backend).await else {
        return;
    };
    if let Location::Sqlite(path) = &location {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    }
    let error = match SqlHistory::open(&location, Migrate::Check).await {
        Ok(_) => panic!("an empty database passed the check"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("citypark history migrate"), "{error}");
    let history = SqlHistory::open(&location, Migrate::Auto).await.unwrap();
    assert!(history.migrations().await.unwrap().iter().all(|m| m.2));
    history.close().await;
    let again = SqlHistory::open(&location, Migrate::Check).await.unwrap();
    assert_eq!(
        again.name(),
        match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    );
}
