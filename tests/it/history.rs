//! History through the API: finished sessions, ledger entries and reservations leave
//! live state once past the hot window, land in history exactly once, and every read
//! (ListMySessions, ListSessions, GetSession, GetWallet, GetSettlement, GetReservation,
//! ListReservations) sees live and history as one list, without a gap or a duplicate,
//! even while records move; on the embedded store with SQLite, and with two instances
//! on one Redis (and on a Cluster) sharing a PostgreSQL history; a session in arrears
//! moves too and what it owes stays live; history's retention forgets plates, then
//! records.

use std::{collections::HashSet, sync::Arc, time::Duration};

use citypark::{
    app::Backend,
    history::{History, Location, Migrate, SqlHistory},
    pb,
    service::{Clock, HistorySettings, ManualClock},
};

use crate::{
    postgres_support::PgDatabase,
    redis_support::{RedisCluster, RedisServer, key_prefix},
    sessions::{
        gate, link, list_sessions, open_garage, payment, session, settlement, top_up, wallet,
    },
    support::*,
};

/// The hot window the tests use: a minute, as the issue's tests do.
const HOT: Duration = Duration::from_secs(60);

fn settings(batch: usize) -> HistorySettings {
    HistorySettings {
        hot_window: HOT,
        every: Duration::from_millis(20),
        batch,
        // Tombstones (and, on Redis, the change streams' entries) go after a moment,
        // not the hour of a city: longer than an instance takes to read a change.
        tombstone_grace: Duration::from_secs(2),
        ..HistorySettings::default()
    }
}

async fn sqlite() -> (Arc<SqlHistory>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let location = Location::Sqlite(dir.path().join("history.sqlite3"));
    let history = SqlHistory::open(&location, Migrate::Auto).await.unwrap();
    (Arc::new(history), dir)
}

async fn postgres(db: &PgDatabase) -> Arc<SqlHistory> {
    let location = Location::Postgres(db.url());
    Arc::new(SqlHistory::open(&location, Migrate::Auto).await.unwrap())
}

/// Every page of `driver`'s sessions, page size `size`: the ids in order.
async fn my_session_ids(server: &TestServer, driver: &str, size: i32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let reply = server
            .sessions()
            .await
            .list_my_sessions(authed(
                pb::ListMySessionsRequest {
                    page_size: size,
                    page_token: token.clone(),
                },
                &driver_token(driver),
            ))
            .await
            .unwrap()
            .into_inner();
        ids.extend(reply.sessions.into_iter().map(|s| s.id));
        if reply.next_page_token.is_empty() {
            return ids;
        }
        token = reply.next_page_token;
    }
}

/// `n` plated stays of `driver`'s car at `car_park` (sequences from `first`), each an
/// hour, one after the other, through `servers` in turn: the session ids.
async fn stays(
    servers: &[&TestServer],
    clock: &ManualClock,
    car_park: &str,
    plate: &str,
    first: u64,
    n: u64,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let server = servers[i as usize % servers.len()];
        let seq = first + 2 * i;
        let ack = report_ok(server, gate(car_park, seq, true, plate, clock.now())).await;
        clock.advance(Duration::from_secs(3600));
        report_ok(server, gate(car_park, seq + 1, false, plate, clock.now())).await;
        ids.push(ack.session_id);
    }
    ids
}

/// The sessions `server`'s live state holds, of every state.
fn live_sessions(server: &TestServer) -> usize {
    server.backend.engine.session_counts().by_state.iter().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_records_move_to_history_and_every_read_sees_one_list() {
    let (history, _dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    // One session per batch, so lists are read while some are live and some moved.
    let server = TestServer::start_on(backend, |s| s.history = settings(1)).await;
    let clock = server.clock.clone();
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B11111").await;
    top_up(&server, "ann", 100_000, "k1").await.unwrap();
    let ids = stays(&[&server], &clock, "g1", "鲁B11111", 2, 30).await;
    for id in &ids {
        eventually("every stay is paid", || async {
            let s = session(&server, OPERATOR_A.1, id).await.ok()?;
            (s.state == i32::from(pb::SessionState::ClosedPaid)).then_some(())
        })
        .await;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(my_session_ids(&server, "ann", 7).await, newest_first);
    let settled_before = settlement(&server, "2026-11-30").await;
    let wallet_before = wallet(&server, "ann").await;

    // Past the hot window every session, charge and top-up moves; lists are read
    // through it, page by page, and never miss or repeat one.
    clock.advance(HOT + Duration::from_secs(1));
    let mut rounds = 0;
    while live_sessions(&server) > 0 {
        assert_eq!(
            my_session_ids(&server, "ann", 3).await,
            newest_first,
            "a list read while sessions move"
        );
        rounds += 1;
        assert!(rounds < 2_000, "the hand-off never finished");
    }
    assert_eq!(my_session_ids(&server, "ann", 7).await, newest_first);
    assert_eq!(my_session_ids(&server, "ann", 500).await, newest_first);

    // Reads of what is only in history now.
    let moved = session(&server, &driver_token("ann"), &ids[0])
        .await
        .unwrap();
    assert_eq!(moved.state, i32::from(pb::SessionState::ClosedPaid));
    assert_eq!(
        moved.plate, "鲁B11111",
        "within the retention, the plate is kept"
    );
    assert_eq!(
        session(&server, &driver_token("bo"), &ids[0])
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound,
        "history is no more visible to others than live state"
    );
    let listed = list_sessions(&server, OPERATOR_A.1, pb::ListSessionsRequest::default()).await;
    assert_eq!(listed.len(), 30);
    let fees: i64 = listed.iter().map(|s| s.fee_minor).sum();
    let settled = settlement(&server, "2026-11-30").await;
    assert_eq!(
        settled, settled_before,
        "the day settles the same from history"
    );
    // Midnight in Shanghai: where the local day 2026-11-30 ends.
    let local_midnight = "2026-11-30T16:00:00Z"
        .parse::<citypark::domain::Timestamp>()
        .unwrap()
        .as_second();
    let day_fees: i64 = listed
        .iter()
        .filter(|s| s.exit_time.as_ref().unwrap().seconds < local_midnight)
        .map(|s| s.fee_minor)
        .sum();
    assert_eq!(
        settled.revenue_minor, day_fees,
        "the settlement is the sum of its sessions"
    );
    assert!(fees >= day_fees);
    // The accountant's day of sessions, as CSV, from history.
    let day_count = listed
        .iter()
        .filter(|s| s.exit_time.as_ref().unwrap().seconds < local_midnight)
        .count();
    let bearer = format!("Bearer {}", OPERATOR_A.1);
    let csv = "/operators/v1/sessions.csv?day=2026-11-30";
    let (status, headers, body) =
        http_get(server.http_addr, csv, &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/csv; charset=utf-8")
    );
    let text = String::from_utf8(body).unwrap();
    let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(rows[0].starts_with("session_id,car_park_id,plate,"));
    assert_eq!(rows.len(), 1 + day_count, "one row per session of the day");
    assert!(
        rows[1..].iter().all(|r| r.contains(",鲁B11111,")),
        "whole plates, its own"
    );
    let csv_fees: i64 = rows[1..]
        .iter()
        .map(|r| r.split(',').nth(7).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        csv_fees, settled.revenue_minor,
        "the CSV adds up to the settlement"
    );
    let other = format!("Bearer {}", OPERATOR_B.1);
    let (status, _, body) = http_get(server.http_addr, csv, &[("authorization", &other)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(body).unwrap().lines().count(),
        1,
        "none of another's"
    );
    let (status, _, _) = http_get(server.http_addr, csv, &[]).await;
    assert_eq!(status, 401);
    let bad_day = "/operators/v1/sessions.csv?day=30-11-2026";
    let (status, _, body) =
        http_get(server.http_addr, bad_day, &[("authorization", &bearer)]).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("day"));

    let wallet_after = wallet(&server, "ann").await;
    assert_eq!(
        wallet_after.entries, wallet_before.entries,
        "entries from history"
    );
    assert_eq!(wallet_after.balance_minor, wallet_before.balance_minor);

    // Live state holds none of it, not even a tombstone; history holds each once.
    let engine = &server.backend.engine;
    assert_eq!(live_sessions(&server), 0);
    // A moved session's version is gone too (0: never seen), once past the grace.
    eventually("every tombstone is compacted", || async {
        let versions: Vec<u64> = ids
            .iter()
            .map(|id| {
                citypark::engine::Replica::<citypark::domain::ParkingSession>::version(
                    &**engine, id,
                )
            })
            .collect();
        (engine.tombstones_pending() == 0 && versions.iter().all(|v| *v == 0)).then_some(())
    })
    .await;
    assert!(engine.entries_before(clock.now(), usize::MAX).is_empty());
    let kept: Vec<citypark::history::ClosedSession> = history
        .list(&citypark::history::Query::first(1_000))
        .await
        .unwrap();
    assert_eq!(kept.len(), 30);
    let text = server.metrics_text().await;
    assert!(
        series(
            &text,
            r#"citypark_history_handed_off_total{kind="session"}"#
        ) >= 30.0
    );
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The hand-off keeps to its pace (`--hand-off-rate`): at 4 records a second (bursts of
/// one), no more than a burst and 4 a second of the elapsed time have left live state,
/// however slow the machine (a slow one moves fewer); and paced, every session still
/// moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_off_keeps_to_its_pace_and_still_moves_everything() {
    let (history, _dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |s| {
        s.history = HistorySettings {
            rate: std::num::NonZeroU32::new(4),
            // Longer than the stays take, so nothing moves before the clock jumps.
            hot_window: DAY,
            ..settings(100)
        }
    })
    .await;
    let clock = server.clock.clone();
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B22222").await;
    top_up(&server, "ann", 100_000, "k1").await.unwrap();
    let ids = stays(&[&server], &clock, "g1", "鲁B22222", 2, 12).await;
    for id in &ids {
        eventually("every stay is paid", || async {
            let s = session(&server, OPERATOR_A.1, id).await.ok()?;
            (s.state == i32::from(pb::SessionState::ClosedPaid)).then_some(())
        })
        .await;
    }
    assert_eq!(live_sessions(&server), ids.len());
    let started = std::time::Instant::now();
    clock.advance(DAY + Duration::from_secs(1));
    loop {
        // The count first: at the time read after it, at least as many had moved.
        let moved = ids.len() - live_sessions(&server);
        let elapsed = started.elapsed().as_secs_f64();
        assert!(
            moved as f64 <= 1.0 + 4.0 * elapsed,
            "{moved} sessions moved in {elapsed:.2} s at 4 a second"
        );
        if moved == ids.len() {
            break;
        }
        assert!(elapsed < 60.0, "the paced hand-off never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(my_session_ids(&server, "ann", 5).await.len(), ids.len());
}

/// Retention in history: past `--session-retention-days` a session in history keeps no
/// plate (GetSession shows none), and past the money records' retention it is gone
/// (GetSession NOT_FOUND, ListMySessions empty), while a later one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_forgets_plates_and_then_records_past_their_retention() {
    let (history, _dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |s| {
        s.payments.session_retention = 2 * DAY;
        s.history = HistorySettings {
            retention: citypark::service::Retention {
                money: 5 * DAY,
                ..Default::default()
            },
            retention_every: Duration::from_millis(20),
            ..settings(100)
        }
    })
    .await;
    let clock = server.clock.clone();
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B33333").await;
    top_up(&server, "ann", 100_000, "k1").await.unwrap();
    let old = stays(&[&server], &clock, "g1", "鲁B33333", 2, 1)
        .await
        .remove(0);
    let paid = |id: String| {
        let server = &server;
        async move {
            eventually("the stay is paid", || async {
                let s = session(server, OPERATOR_A.1, &id).await.ok()?;
                (s.state == i32::from(pb::SessionState::ClosedPaid)).then_some(())
            })
            .await
        }
    };
    paid(old.clone()).await;
    // Moved to history with its plate (live state never held it past retention) ...
    clock.advance(HOT + Duration::from_secs(1));
    eventually("the old one moved to history", || async {
        (live_sessions(&server) == 0).then_some(())
    })
    .await;
    assert_eq!(
        session(&server, OPERATOR_A.1, &old).await.unwrap().plate,
        "鲁B33333"
    );
    // ... three days on, history forgets it.
    clock.advance(3 * DAY);
    eventually("the old one's plate is forgotten", || async {
        let s = session(&server, OPERATOR_A.1, &old).await.ok()?;
        s.plate.is_empty().then_some(())
    })
    .await;
    let recent = stays(&[&server], &clock, "g1", "鲁B33333", 4, 1)
        .await
        .remove(0);
    paid(recent.clone()).await;
    clock.advance(HOT + Duration::from_secs(1));
    eventually("the recent one moved to history", || async {
        (live_sessions(&server) == 0).then_some(())
    })
    .await;
    // Three more days: the old one is past the money retention (5 days), the recent not.
    clock.advance(3 * DAY);
    eventually("the old one expired", || async {
        let gone = session(&server, OPERATOR_A.1, &old).await.err()?;
        (gone.code() == tonic::Code::NotFound).then_some(())
    })
    .await;
    assert_eq!(my_session_ids(&server, "ann", 10).await, vec![recent]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_reservation_moves_to_history_and_is_read_from_there() {
    let (history, _dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |s| s.history = settings(100)).await;
    let clock = server.clock.clone();
    register(&server, reservable_garage("r1", 5)).await;
    report_ok(&server, snapshot("r1", 1, 50, clock.now())).await;
    let start = after(clock.now(), 3600);
    let mut ids = Vec::new();
    for i in 0..3 {
        let request = reservation_request(
            "r1",
            start,
            after(start, 3600),
            "鲁B22222",
            &format!("k{i}"),
        );
        let r = reserve(&server, "cy", request).await.unwrap();
        ids.push(r.id);
    }
    let cancel = pb::CancelReservationRequest {
        id: ids[0].clone(),
        reason: "plans changed".into(),
    };
    server
        .reservations()
        .await
        .cancel_reservation(authed(cancel, &driver_token("cy")))
        .await
        .unwrap();
    // The cancelled one finishes at its window's end; past it and the hot window it
    // moves, the others (no-shows by then) after it.
    clock.advance(Duration::from_secs(2 * 3600) + HOT + Duration::from_secs(1));
    eventually("the reservations moved", || async {
        server
            .backend
            .engine
            .reservation(&citypark::domain::ReservationId::parse(&ids[0]).unwrap())
            .is_none()
            .then_some(())
    })
    .await;
    let got = server
        .reservations()
        .await
        .get_reservation(authed(
            pb::GetReservationRequest { id: ids[0].clone() },
            &driver_token("cy"),
        ))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(got.state, i32::from(pb::ReservationState::Cancelled));
    let listed = server
        .reservations()
        .await
        .list_reservations(authed(
            pb::ListReservationsRequest::default(),
            &driver_token("cy"),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<String> = listed.reservations.into_iter().map(|r| r.id).collect();
    seen.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(seen, all, "each once, from history");
    // The operator of the car park reads them too; another operator does not.
    let as_operator = |key: &'static str| {
        let server = &server;
        let id = ids[0].clone();
        async move {
            server
                .reservations()
                .await
                .get_reservation(authed(pb::GetReservationRequest { id }, key))
                .await
        }
    };
    as_operator(OPERATOR_A.1).await.unwrap();
    expect_code(as_operator(OPERATOR_B.1).await, tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_arrears_moves_to_history_and_what_it_owes_stays_live() {
    let (history, _dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |s| s.history = settings(100)).await;
    let clock = server.clock.clone();
    open_garage(&server, "g1").await;
    // No top-up: the hour's 500 is refused for good.
    link(&server, "ann", "鲁B11111").await;
    let id = stays(&[&server], &clock, "g1", "鲁B11111", 2, 1)
        .await
        .remove(0);
    eventually("the charge is refused", || async {
        let s = session(&server, OPERATOR_A.1, &id).await.ok()?;
        (payment(&s).status == i32::from(pb::PaymentStatus::Failed)).then_some(())
    })
    .await;
    let day_before = settlement(&server, "2026-11-30").await;
    assert_eq!(
        (day_before.sessions_unpaid, day_before.arrears_minor),
        (1, 500)
    );

    clock.advance(HOT + Duration::from_secs(1));
    let session_id = citypark::domain::SessionId::parse(&id).unwrap();
    eventually("the session in arrears left live state", || async {
        server
            .backend
            .engine
            .session(&session_id)
            .is_none()
            .then_some(())
    })
    .await;
    // What it owes stays live, compact: the wallet, the next entry's ack and the
    // gauges still count it, once.
    assert_eq!(wallet(&server, "ann").await.arrears_minor, 500);
    let counts = server.backend.engine.session_counts();
    assert_eq!((counts.arrears, counts.arrears_minor["CNY"]), (1, 500));
    let ack = report_ok(&server, gate("g1", 10, true, "鲁B11111", clock.now())).await;
    assert_eq!((ack.arrears, ack.arrears_minor), (true, 500));
    // The session itself is read from history, and the day settles the same.
    let moved = session(&server, OPERATOR_A.1, &id).await.unwrap();
    assert_eq!(payment(&moved).status, i32::from(pb::PaymentStatus::Failed));
    let kept = history
        .get::<citypark::history::ClosedSession>(&id)
        .await
        .unwrap();
    assert!(kept.is_some(), "{id} is in history");
    let day_after = settlement(&server, "2026-11-30").await;
    assert_eq!(
        (day_after.sessions_unpaid, day_after.arrears_minor),
        (1, 500)
    );
}

/// An operator's local day that can no longer change (it ended everywhere more than
/// the hot window ago, and nothing of it is live) is kept as one row of history's
/// `settlements`, equal to the day's sessions, and GetSettlement reads that row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_day_is_kept_as_one_settlement_and_read_from_it() {
    let (history, dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |s| {
        s.history = HistorySettings {
            retention_every: Duration::from_millis(20),
            ..settings(100)
        }
    })
    .await;
    let clock = server.clock.clone();
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B11111").await;
    top_up(&server, "ann", 100_000, "k1").await.unwrap();
    for id in stays(&[&server], &clock, "g1", "鲁B11111", 2, 3).await {
        eventually("the stay is paid", || async {
            let s = session(&server, OPERATOR_A.1, &id).await.ok()?;
            (s.state == i32::from(pb::SessionState::ClosedPaid)).then_some(())
        })
        .await;
    }
    let before = settlement(&server, "2026-11-30").await;
    assert_eq!((before.sessions_paid, before.revenue_minor), (3, 1500));
    let (op, day) = (
        citypark::domain::OperatorId::parse(OPERATOR_A.0).unwrap(),
        "2026-11-30".parse::<jiff::civil::Date>().unwrap(),
    );
    // Moved to history, but the day has not ended everywhere yet: not kept.
    clock.advance(HOT + Duration::from_secs(1));
    eventually("the stays moved", || async {
        (live_sessions(&server) == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(history.settled(&op, day).await.unwrap(), None);
    // Two days on it is.
    clock.advance(2 * DAY);
    let kept = eventually("the day is kept", || async {
        history.settled(&op, day).await.unwrap()
    })
    .await;
    assert_eq!(
        (
            kept.sessions_paid,
            kept.revenue_minor,
            kept.currency.as_str()
        ),
        (3, 1500, "CNY")
    );
    assert_eq!(settlement(&server, "2026-11-30").await, before);
    // GetSettlement answers from the kept row, not from the sessions.
    let url = format!("sqlite://{}", dir.path().join("history.sqlite3").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE settlements SET revenue_minor = revenue_minor + 1")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        settlement(&server, "2026-11-30").await.revenue_minor,
        before.revenue_minor + 1
    );
}

/// Waits until Redis answers 0 to `command key` (`HLEN`, `XLEN`).
async fn emptied(conn: &redis::aio::MultiplexedConnection, command: &str, key: &str) {
    eventually(&format!("{key} is empty ({command})"), || {
        let mut conn = conn.clone();
        async move {
            let n: usize = redis::cmd(command)
                .arg(key)
                .query_async(&mut conn)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;
}

/// Two instances on one Redis share a PostgreSQL history; both hand off at once.
/// `raw` reads Redis underneath (standalone only).
async fn two_instances_hand_off_once(url: &str, raw: Option<redis::Client>) {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let history = postgres(&db).await;
    let (prefix, clock) = (key_prefix(), Arc::new(ManualClock::new(start_time())));
    let start = |history: Arc<SqlHistory>| {
        let (clock, prefix) = (clock.clone(), prefix.clone());
        async move {
            let mut options = citypark::store::redis::RedisOptions::new(url);
            options.prefix = prefix;
            options.connect_timeout = Duration::from_secs(5);
            let backend = Backend::redis(options, 4096, clock.clone())
                .await
                .unwrap()
                .with_history(history);
            TestServer::start_with_clock(backend, clock, |s| s.history = settings(5)).await
        }
    };
    let a = start(history.clone()).await;
    // The second instance has a pool of its own on the same database.
    let b = start(postgres(&db).await).await;
    for id in ["h1", "h2"] {
        open_garage(&a, id).await;
        eventually("the car park reached b", || async {
            car_park_of(&b, id).await.ok()
        })
        .await;
    }
    for (driver, plate) in [("ann", "鲁B11111"), ("bo", "鲁B22222")] {
        link(&a, driver, plate).await;
        top_up(&b, driver, 100_000, "k").await.unwrap();
    }
    let mut ids = stays(&[&a, &b], &clock, "h1", "鲁B11111", 2, 12).await;
    ids.extend(stays(&[&b, &a], &clock, "h2", "鲁B22222", 2, 12).await);
    // And one stay in arrears (no top-up): it moves too, leaving what it owes.
    link(&a, "cy", "鲁B33333").await;
    let owed = stays(&[&b], &clock, "h1", "鲁B33333", 100, 1)
        .await
        .remove(0);
    for server in [&a, &b] {
        eventually(
            "the stay in arrears is refused on every instance",
            || async {
                let s = session(server, OPERATOR_A.1, &owed).await.ok()?;
                (payment(&s).status == i32::from(pb::PaymentStatus::Failed)).then_some(())
            },
        )
        .await;
    }
    for server in [&a, &b] {
        for id in &ids {
            eventually("every stay is paid on every instance", || async {
                let s = session(server, OPERATOR_A.1, id).await.ok()?;
                (s.state == i32::from(pb::SessionState::ClosedPaid)).then_some(())
            })
            .await;
        }
    }
    let ann_before = my_session_ids(&a, "ann", 5).await;
    assert_eq!(ann_before.len(), 12);

    clock.advance(HOT + Duration::from_secs(1));
    while live_sessions(&a) + live_sessions(&b) > 0 {
        for server in [&a, &b] {
            assert_eq!(my_session_ids(server, "ann", 4).await, ann_before);
        }
    }
    for server in [&a, &b] {
        assert_eq!(my_session_ids(server, "ann", 4).await, ann_before);
        let all = list_sessions(server, OPERATOR_A.1, pb::ListSessionsRequest::default()).await;
        let unique: HashSet<&String> = all.iter().map(|s| &s.id).collect();
        assert_eq!((all.len(), unique.len()), (25, 25), "no gap, no duplicate");
        assert_eq!(wallet(server, "cy").await.arrears_minor, 500);
    }
    // An instance started now loads what is owed from the store.
    let c = start(postgres(&db).await).await;
    assert_eq!(wallet(&c, "cy").await.arrears_minor, 500);
    assert_eq!(c.backend.engine.session_counts().arrears, 1);
    drop(c);
    // Each session is in history exactly once, and nowhere else: not even as a
    // version tombstone, in either engine or in Redis.
    assert_eq!(db.query_i64("SELECT count(*) FROM sessions").await, 25);
    assert_eq!(
        db.query_i64("SELECT count(DISTINCT id) FROM sessions")
            .await,
        25
    );
    for server in [&a, &b] {
        eventually("every tombstone is compacted", || async {
            (server.backend.engine.tombstones_pending() == 0).then_some(())
        })
        .await;
    }
    if let Some(raw) = raw {
        let conn = raw.get_multiplexed_async_connection().await.unwrap();
        let mut keys: Vec<String> = [
            "sessions",
            "session_versions",
            "open_sessions",
            "open_session_versions",
        ]
        .iter()
        .map(|hash| format!("{prefix}:{{qingdao}}:{hash}"))
        .collect();
        // Ledger entries live in the drivers' account shards.
        for region in citypark::domain::account_regions() {
            for hash in ["ledger_entries", "ledger_entry_versions"] {
                keys.push(format!("{prefix}:{{{region}}}:{hash}"));
            }
        }
        let owed_key = format!("{prefix}:{{qingdao}}:arrears");
        let mut conn2 = conn.clone();
        let arrears: usize = redis::cmd("HLEN")
            .arg(&owed_key)
            .query_async(&mut conn2)
            .await
            .unwrap();
        assert_eq!(
            arrears, 1,
            "what the session in arrears owes, in its region"
        );
        for key in keys {
            emptied(&conn, "HLEN", &key).await;
        }
        // The change streams keep nothing past the tombstone grace.
        let mut regions = vec!["qingdao".to_owned()];
        regions.extend(
            citypark::domain::account_regions()
                .iter()
                .map(|r| r.to_string()),
        );
        for region in regions {
            emptied(&conn, "XLEN", &format!("{prefix}:{{{region}}}:changes")).await;
        }
    }
    // An instance started on the trimmed streams loads every region, and a change made
    // now reaches it and the instances that followed the streams as they were trimmed.
    let d = start(postgres(&db).await).await;
    assert_eq!(wallet(&d, "cy").await.arrears_minor, 500);
    car_park_of(&d, "h1").await.unwrap();
    open_garage(&a, "h3").await;
    for server in [&b, &d] {
        eventually("the new car park reached every instance", || async {
            car_park_of(server, "h3").await.ok()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_redis_hand_off_each_session_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let raw = redis::Client::open(redis.url()).unwrap();
    two_instances_hand_off_once(&redis.url(), Some(raw)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_hand_off_each_session_once() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    two_instances_hand_off_once(&cluster.url(), None).await;
}

async fn occupancy(
    server: &TestServer,
    request: pb::GetOccupancyHistoryRequest,
) -> Result<Vec<pb::OccupancyBucket>, tonic::Status> {
    server
        .availability()
        .await
        .get_occupancy_history(request)
        .await
        .map(|r| r.into_inner().buckets)
}

/// Moves `clock` on to `at`.
fn advance_to(clock: &ManualClock, at: citypark::domain::Timestamp) {
    let by = at.as_second() - clock.now().as_second();
    clock.advance(Duration::from_secs(by.max(0) as u64));
}

fn minutes(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n * 60,
        nanos: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupancy_is_sampled_per_five_minutes_and_read_back_in_steps() {
    let (history, _dir) = sqlite().await;
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |s| s.history = settings(100)).await;
    let clock = server.clock.clone();
    // start_time() is 02:00Z, on a bucket's start.
    let t0 = clock.now();
    register(&server, garage("o1", 36.06, 120.38)).await;
    // Bucket 0: 40, then 10, then 25; bucket 1 (5 min later): 30; bucket 3: 5.
    for (minute, seq, free) in [(0, 1, 40), (1, 2, 10), (2, 3, 25), (5, 4, 30), (15, 5, 5)] {
        advance_to(&clock, after(t0, minute * 60));
        report_ok(&server, snapshot("o1", seq, free, clock.now())).await;
    }
    // The last bucket ends; the sampler writes what ended.
    advance_to(&clock, after(t0, 20 * 60));
    let request = |step: Option<prost_types::Duration>| pb::GetOccupancyHistoryRequest {
        car_park_id: "o1".into(),
        category: pb::SpaceCategory::Standard.into(),
        from: Some(pb_time(t0)),
        to: Some(pb_time(after(t0, 20 * 60))),
        step,
    };
    let fine = eventually("four buckets are in history", || async {
        let b = occupancy(&server, request(None)).await.ok()?;
        (b.len() == 4).then_some(b)
    })
    .await;
    let seen: Vec<(u32, u32, u32, bool)> = fine
        .iter()
        .map(|b| (b.min_free, b.max_free, b.last_free, b.observed))
        .collect();
    assert_eq!(
        seen,
        [
            (10, 40, 25, true),
            (30, 30, 30, true),
            (30, 30, 30, false),
            (5, 5, 5, true)
        ]
    );
    assert_eq!(fine[0].start, Some(pb_time(t0)));
    assert_eq!(fine[0].capacity, 100);
    assert_eq!(fine[0].status, i32::from(pb::CarParkStatus::Open));
    let coarse = occupancy(&server, request(Some(minutes(15))))
        .await
        .unwrap();
    let seen: Vec<(u32, u32, u32)> = coarse
        .iter()
        .map(|b| (b.min_free, b.max_free, b.last_free))
        .collect();
    assert_eq!(seen, [(10, 40, 30), (5, 5, 5)]);

    // What is refused, and why.
    expect_invalid(occupancy(&server, request(Some(minutes(7)))).await, "step");
    let mut long = request(None);
    long.from = Some(pb_time(after(t0, -30 * 86_400)));
    expect_invalid(occupancy(&server, long).await, "to");
    let mut backwards = request(None);
    backwards.to = backwards.from;
    expect_invalid(occupancy(&server, backwards).await, "from");
    let mut unknown = request(None);
    unknown.car_park_id = "nope".into();
    expect_code(occupancy(&server, unknown).await, tonic::Code::NotFound);
    let text = server.metrics_text().await;
    assert!(series(&text, r#"citypark_history_samples_total{result="written"}"#) >= 4.0);
}

/// Cuts the database off (no new connections, every open one ended), or lets it back.
async fn cut_off(db: &PgDatabase, cut: bool) {
    let admin = db.admin_connection().await;
    db.allow_connections(admin, !cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_down_ingest_goes_on_samples_wait_and_history_catches_up() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let history = postgres(&db).await;
    let backend = Backend::embedded(4096).with_history(history);
    let server = TestServer::start_on(backend, |s| {
        s.history = HistorySettings {
            sample_queue: 3,
            ..settings(100)
        }
    })
    .await;
    let clock = server.clock.clone();
    let t0 = clock.now();
    for i in 0..5 {
        register(
            &server,
            garage(&format!("d{i}"), 36.06, 120.38 + f64::from(i) / 100.0),
        )
        .await;
    }
    cut_off(&db, true).await;
    // Ingest is unchanged: every report is applied while history is away.
    for (step, minute) in [0i64, 5, 10].into_iter().enumerate() {
        advance_to(&clock, after(t0, minute * 60));
        for i in 0..5 {
            let ack = report_ok(
                &server,
                snapshot(&format!("d{i}"), step as u64 + 1, 10 + i, clock.now()),
            )
            .await;
            assert_eq!(ack.result, i32::from(pb::ReportResult::Applied));
        }
    }
    advance_to(&clock, after(t0, 15 * 60));
    // Ended buckets wait in the queue (3 at most), the rest are dropped and counted.
    // (The metrics are the test process's, shared by every server in it: only this
    // test's queue is small enough to drop.)
    eventually("samples are dropped past the queue's bound", || async {
        let text = server.metrics_text().await;
        let dropped = series(&text, r#"citypark_history_samples_total{result="dropped"}"#);
        (dropped >= 1.0).then_some(())
    })
    .await;
    cut_off(&db, false).await;
    let written = eventually("history catches up by itself", || async {
        let n = db.query_i64("SELECT count(*) FROM occupancy_samples").await;
        (n >= 3).then_some(n)
    })
    .await;
    assert!(written >= 3, "the queued samples were written: {written}");
}
