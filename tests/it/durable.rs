//! The durable embedded store's own promises, beside the conformance suite: one server
//! per data directory; a damaged live-state file or commit log stops the start with a
//! clear message and is left as it was; what only the log holds is folded in at start
//! and into a backup; an online backup restores a whole city; a stopped binary's city
//! moves to Redis whole.

use std::{path::Path, sync::Arc, time::Duration};

use crate::{
    redis_support::{RedisServer, key_prefix},
    support::*,
};
use citypark::{
    app::Backend,
    domain::CarParkState,
    pb,
    service::{ManualClock, SystemClock},
    store::{Versioned, durable, redis::RedisOptions},
};
use tonic::Code;

/// A server on the durable store in `dir`, on the tests' start time.
async fn serve_on(dir: &Path) -> TestServer {
    let clock = Arc::new(ManualClock::new(start_time()));
    TestServer::start_durable_with(dir, clock, |_| {}).await
}

/// The message `Backend::durable` refuses `dir` with.
fn refusal(dir: &Path) -> String {
    let clock = Arc::new(ManualClock::new(start_time()));
    match Backend::durable(dir, 64, clock) {
        Ok(_) => panic!("{} was accepted", dir.display()),
        Err(error) => error.to_string(),
    }
}

/// Unpacks the backup `archive` into the new directory `into`, as an operator restores
/// one: `into`.
fn untar(archive: &Path, into: &Path) -> std::path::PathBuf {
    std::fs::create_dir(into).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(untar.success(), "tar reads the archive");
    into.to_path_buf()
}

/// A small city: car parks with live counts, a deleted one, a reservation.
async fn city(server: &TestServer) -> pb::Reservation {
    register(server, garage_north("d1", 100.0)).await;
    register(server, garage_north("d2", 200.0)).await;
    register(server, reservable_garage("d3", 5)).await;
    register(server, garage_north("gone", 300.0)).await;
    let now = server.now();
    report_ok(server, snapshot("d1", 1, 17, now)).await;
    report_ok(server, delta("d1", 2, 2, 0, now)).await;
    report_ok(server, snapshot("d3", 1, 40, now)).await;
    server
        .registry()
        .await
        .delete_car_park(authed(
            pb::DeleteCarParkRequest { id: "gone".into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap();
    let request = reservation_request(
        "d3",
        after(now, 3600),
        after(now, 7200),
        "鲁B·24680",
        "durable-1",
    );
    reserve(server, "dana", request).await.unwrap()
}

/// What a client can see of the small city, to compare two servers by.
async fn seen(
    server: &TestServer,
    reservation: &str,
) -> (
    Vec<pb::CarPark>,
    pb::GetAvailabilityResponse,
    pb::Reservation,
) {
    let ids = ["d1", "d2", "d3"];
    let got = server
        .reservations()
        .await
        .get_reservation(authed(
            pb::GetReservationRequest {
                id: reservation.to_owned(),
            },
            &driver_token("dana"),
        ))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    (all_car_parks(server).await, lookup(server, &ids).await, got)
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on(dir.path()).await;
    let message = refusal(dir.path());
    assert!(
        message.contains("in use by another citypark process"),
        "{message}"
    );
    // Once the first has stopped, the directory is free.
    server.stop().await.unwrap();
    let again = serve_on(dir.path()).await;
    again.stop().await.unwrap();
}

/// Each way a file can be damaged is refused with a message that says what and what to
/// do, and the file is left byte for byte as it was (never emptied, never "repaired").
#[tokio::test]
async fn a_damaged_live_state_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on(dir.path()).await;
    for i in 0..200 {
        register(&server, garage_north(&format!("p{i}"), f64::from(i) * 10.0)).await;
    }
    server.stop().await.unwrap();
    let file = dir.path().join(durable::FILE);
    let whole = std::fs::read(&file).unwrap();
    assert!(
        !dir.path().join("live.sqlite3-wal").exists(),
        "a clean stop checkpoints the WAL into the file"
    );
    assert!(whole.len() > 8 * 4096, "{} bytes", whole.len());
    let undecodable = {
        // A record no version of citypark wrote.
        let copy = tempfile::tempdir().unwrap();
        std::fs::write(copy.path().join(durable::FILE), &whole).unwrap();
        let conn = rusqlite::Connection::open(copy.path().join(durable::FILE)).unwrap();
        conn.execute(
            "UPDATE records SET p0 = '1:{\"not\":\"a car park\"}' WHERE id = 'p7'",
            [],
        )
        .unwrap();
        drop(conn);
        std::fs::read(copy.path().join(durable::FILE)).unwrap()
    };
    let foreign = {
        let copy = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(copy.path().join("other.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);
        std::fs::read(copy.path().join("other.db")).unwrap()
    };
    let mut overwritten = whole.clone();
    let middle = overwritten.len() / 2;
    overwritten[middle..middle + 4096].fill(0x5a);
    // SQLite finds a cut or overwritten file either as it reads the schema
    // ("malformed") or in the integrity check.
    let damage = &["malformed", "integrity check failed"][..];
    let cases: [(&str, Vec<u8>, &[&str]); 5] = [
        ("empty", Vec::new(), &["empty (0 bytes)"]),
        ("truncated", whole[..whole.len() / 2].to_vec(), damage),
        ("overwritten", overwritten, damage),
        ("foreign", foreign, &["not a citypark live-state file"]),
        (
            "undecodable",
            undecodable,
            &["car_park record \"p7\" cannot be read"],
        ),
    ];
    for (case, bytes, says) in cases {
        let damaged = tempfile::tempdir().unwrap();
        let path = damaged.path().join(durable::FILE);
        std::fs::write(&path, &bytes).unwrap();
        let message = refusal(damaged.path());
        assert!(
            says.iter().any(|s| message.contains(s)),
            "{case}: {message}"
        );
        assert!(
            message.contains("backup") && message.contains(&path.display().to_string()),
            "{case}: says which file and what to do: {message}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{case}: left as it was"
        );
    }
    // The undamaged file serves its 200 car parks.
    let server = serve_on(dir.path()).await;
    assert_eq!(all_ids(&server).await.len(), 200);
}

/// A backup taken while reports keep arriving restores a city that holds everything
/// acknowledged before it began.
#[tokio::test]
async fn an_online_backup_restores_the_city_it_was_taken_of() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on(dir.path()).await;
    let reservation = city(&server).await;
    let before = seen(&server, &reservation.id).await;
    // Reports go on during the backup.
    let busy = {
        let mut ingest = server.ingest().await;
        let now = server.now();
        tokio::spawn(async move {
            for sequence in 1..=200u64 {
                let report = snapshot("d2", sequence, (sequence % 90) as i32, now);
                let request = authed(
                    pb::ReportRequest {
                        report: Some(report),
                    },
                    OPERATOR_A.1,
                );
                ingest.report(request).await.unwrap();
            }
        })
    };
    // The plates' hash key belongs to the city as much as its records.
    std::fs::write(dir.path().join("plate-key"), "k".repeat(32)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("city.tar");
    let (from, to) = (dir.path().to_path_buf(), archive.clone());
    let done = tokio::task::spawn_blocking(move || durable::backup(&from, &to))
        .await
        .unwrap()
        .unwrap();
    busy.await.unwrap();
    let names: Vec<&str> = done.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["live.sqlite3", "plate-key"]);
    let message = match durable::backup(dir.path(), &archive) {
        Ok(_) => panic!("a second backup to the same file"),
        Err(error) => error.to_string(),
    };
    assert!(message.contains("never overwrites"), "{message}");
    server.stop().await.unwrap();

    let restored = untar(&archive, &out.path().join("restored"));
    assert_eq!(
        std::fs::read(restored.join("plate-key")).unwrap(),
        "k".repeat(32).as_bytes()
    );
    let server = serve_on(&restored).await;
    let (car_parks, live, held) = seen(&server, &reservation.id).await;
    assert_eq!(car_parks, before.0);
    assert_eq!(held, before.2);
    // d2's reports raced the backup: whichever it caught, its state is one the
    // server acknowledged (a report's free count is its sequence's).
    for (was, is) in before.1.availabilities.iter().zip(&live.availabilities) {
        if is.car_park_id == "d2" {
            let sequence = is.last_sequence;
            assert!(sequence <= 200, "{is:?}");
            if sequence > 0 {
                assert_eq!(free_standard(is), (sequence % 90) as i32, "{is:?}");
            }
        } else {
            assert_eq!(is, was);
        }
    }
}

/// `export_to_redis`: a stopped binary's city, served from Redis, is the same city;
/// refused while its server runs, and into a Redis that holds a city.
#[tokio::test]
async fn a_stopped_binary_s_city_moves_to_redis_whole() {
    let Some(redis) = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on(dir.path()).await;
    let reservation = city(&server).await;
    let before = seen(&server, &reservation.id).await;
    let prefix = key_prefix();
    let options = || {
        let mut options = RedisOptions::new(redis.url());
        options.prefix = prefix.clone();
        options.connect_timeout = Duration::from_secs(5);
        options
    };
    let clock = Arc::new(SystemClock);
    let running = durable::export_to_redis(dir.path(), options(), clock.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(running.contains("in use"), "{running}");
    let version = |server: &TestServer| {
        Versioned::<CarParkState>::in_replica(&server.backend.engine, "gone").version
    };
    let gone_version = version(&server);
    assert!(gone_version > 0, "a tombstone");
    server.stop().await.unwrap();

    // Through the command an operator runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_citypark"))
        .arg("export-to-redis")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--store", &redis.url(), "--redis-prefix", &prefix])
        .env_clear()
        .output()
        .unwrap();
    let written = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{written} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |kind: &str| {
        written
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{kind}\t")))
            .map(str::to_owned)
    };
    assert_eq!(count("car_park").as_deref(), Some("3"), "{written}");
    assert_eq!(count("reservation").as_deref(), Some("1"), "{written}");
    let again = durable::export_to_redis(dir.path(), options(), clock)
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("holds a city"), "{again}");

    let served = TestServer::start_redis(&redis.url(), &prefix).await;
    assert_eq!(seen(&served, &reservation.id).await, before);
    // A deleted id goes on above the versions it had.
    let recreated = register(&served, garage_north("gone", 300.0)).await;
    assert_eq!(recreated.id, "gone");
    assert!(version(&served) > gone_version);
    // And it is a working city: a report and a reservation.
    report_ok(&served, snapshot("d1", 3, 12, served.now())).await;
    let now = served.now();
    let request = reservation_request(
        "d3",
        after(now, 3600),
        after(now, 7200),
        "鲁B·13579",
        "moved-1",
    );
    reserve(&served, "dana", request).await.unwrap();
    expect_code(car_park_of(&served, "nope").await, Code::NotFound);
}

/// The real binary: `serve` on a damaged live state exits with the message and a
/// failure status; `backup` copies a running server's directory.
#[tokio::test]
async fn the_binary_refuses_a_damaged_directory_and_backs_up_a_running_one() {
    let citypark = env!("CARGO_BIN_EXE_citypark");
    let damaged = tempfile::tempdir().unwrap();
    std::fs::write(
        damaged.path().join(durable::FILE),
        "not a database at all, cut",
    )
    .unwrap();
    let out = std::process::Command::new(citypark)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(damaged.path())
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("live.sqlite3 cannot be used") && stderr.contains("backup"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server = Binary::serve(&["--data-dir", data_dir.to_str().unwrap()]);
    server.lines_until("citypark serving", Duration::from_secs(30));
    let archive = dir.path().join("backup.tar");
    let out = std::process::Command::new(citypark)
        .args(["backup", "--data-dir"])
        .arg(&data_dir)
        .arg("--to")
        .arg(&archive)
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("backed up to"), "{stdout}");
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["live.sqlite3", "history.sqlite3", "plate-key"],
        "the running server's whole directory"
    );
}

/// The single binary's live state is bounded like Redis's: finished sessions move to
/// history, and once past the grace their tombstones leave the file too; a restart
/// then serves the same sessions and wallet from history and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_records_leave_the_file_and_a_restart_reads_them_from_history() {
    use crate::sessions::{gate, link, open_garage, top_up, wallet};
    use citypark::{
        history::{Location, Migrate, SqlHistory},
        service::HistorySettings,
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(start_time()));
    let settings = || HistorySettings {
        hot_window: Duration::from_secs(60),
        every: Duration::from_millis(20),
        tombstone_grace: Duration::from_secs(2),
        ..HistorySettings::default()
    };
    let start = |clock: Arc<ManualClock>| {
        let dir = dir.path().to_path_buf();
        async move {
            let location = Location::Sqlite(dir.join("history.sqlite3"));
            let history = Arc::new(SqlHistory::open(&location, Migrate::Auto).await.unwrap());
            let (backend, _) = Backend::durable(&dir, 4096, clock.clone()).unwrap();
            let backend = backend.with_history(history);
            TestServer::start_with_clock(backend, clock, |s| s.history = settings()).await
        }
    };
    // Rows of `kind` in the file: records, or records and tombstones.
    let count = |kind: &str, tombstones: bool| -> i64 {
        let conn = rusqlite::Connection::open(dir.path().join(durable::FILE)).unwrap();
        let sql = match tombstones {
            true => "SELECT count(*) FROM records WHERE kind = ?1",
            false => "SELECT count(*) FROM records WHERE kind = ?1 AND p0 IS NOT NULL",
        };
        conn.query_row(sql, [kind], |r| r.get(0)).unwrap()
    };
    let rows = |kind: &str| count(kind, false);
    let server = start(clock.clone()).await;
    open_garage(&server, "g1").await;
    link(&server, "ann", "鲁B11111").await;
    top_up(&server, "ann", 10_000, "k1").await.unwrap();
    for (i, sequence) in (2..12u64).step_by(2).enumerate() {
        report_ok(
            &server,
            gate("g1", sequence, true, "鲁B11111", server.now()),
        )
        .await;
        // The log has it at the ack; the file once the folder got to it.
        eventually("an open session is folded into the file", || async {
            (rows("open_session") == 1).then_some(())
        })
        .await;
        clock.advance(Duration::from_secs(3600 + i as u64));
        report_ok(
            &server,
            gate("g1", sequence + 1, false, "鲁B11111", server.now()),
        )
        .await;
    }
    let paid = eventually("five stays are charged", || async {
        let w = wallet(&server, "ann").await;
        (w.balance_minor < 10_000 && w.entries.len() == 6).then_some(w)
    })
    .await;

    // Past the hot window and the grace: sessions and entries are history, and their
    // rows are gone from the file, tombstones included.
    clock.advance(Duration::from_secs(61));
    eventually("the sessions moved", || async {
        (rows("parking_session") == 0 && rows("ledger_entry") == 0).then_some(())
    })
    .await;
    clock.advance(Duration::from_secs(3));
    // The hand-off's next rounds compact what is past the grace (every 20 ms here).
    eventually("no tombstone is left", || async {
        let tombstones = count("parking_session", true) + count("ledger_entry", true);
        (tombstones == 0).then_some(())
    })
    .await;
    server.stop().await.unwrap();

    let server = start(clock.clone()).await;
    let again = wallet(&server, "ann").await;
    assert_eq!(again.balance_minor, paid.balance_minor);
    assert_eq!(again.entries.len(), paid.entries.len(), "{again:?}");
    let next = report_ok(&server, gate("g1", 12, true, "鲁B11111", server.now())).await;
    assert!(!next.session_id.is_empty(), "{next:?}");
}

#[tokio::test]
async fn gate_reports_among_a_streams_queued_messages_keep_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on(dir.path()).await;
    crate::sessions::open_garage(&server, "g1").await;
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let at = server.now();
    // Sent without waiting for acks: plain deltas are queued ahead, and each plate's
    // entry must wait for the messages before it. Out of order, a later sequence would
    // land first and the earlier ones be refused as stale.
    let plates = ["鲁B10001", "鲁B10002", "鲁B10003", "鲁B10004"];
    let mut gates = plates.iter();
    let reports = (2..=21)
        .map(|sequence| match sequence % 5 {
            0 => crate::sessions::gate("g1", sequence, true, gates.next().unwrap(), at),
            _ => delta("g1", sequence, 1, 1, at),
        })
        .collect();
    publisher.send_ahead_and_apply(reports).await;
    let state = states(&server, &["g1".to_owned()]).await.remove(0);
    assert_eq!(state.expect("g1").last_sequence, 21);
    let sessions = crate::sessions::list_sessions(
        &server,
        OPERATOR_A.1,
        pb::ListSessionsRequest {
            car_park_id: "g1".into(),
            ..Default::default()
        },
    )
    .await;
    let mut opened: Vec<String> = sessions.iter().map(|s| s.plate.clone()).collect();
    opened.sort();
    assert_eq!(opened, plates);
}

/// The commit log's segments in `dir` (`live.log.<n>`), oldest first.
fn log_segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("live.log."))
        })
        .collect();
    found.sort();
    found
}

/// Which of `ids` a server on `dir` knows.
async fn registered(dir: &Path, ids: &[String]) -> Vec<String> {
    let server = serve_on(dir).await;
    let known = states(&server, ids)
        .await
        .into_iter()
        .zip(ids)
        .filter_map(|(state, id)| state.map(|_| id.clone()))
        .collect();
    server.stop().await.unwrap();
    known
}

/// A file that lacks commits its log holds (a server killed before its folder caught
/// up) starts with all of them folded in, and so does a backup of it; an unfinished
/// last commit is left out; damage elsewhere in the log refuses the start and changes
/// neither file.
#[tokio::test]
async fn commits_only_the_log_holds_are_folded_in_at_start_and_a_damaged_log_is_refused() {
    let (first, ahead) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = serve_on(first.path()).await;
    register(&server, garage_north("d1", 100.0)).await;
    server.stop().await.unwrap();
    assert!(
        log_segments(first.path()).is_empty(),
        "a clean stop folds the log away"
    );
    // `ahead` gets the file as of now, and later the log of ten more commits.
    std::fs::copy(
        first.path().join(durable::FILE),
        ahead.path().join(durable::FILE),
    )
    .unwrap();
    let server = serve_on(first.path()).await;
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        register(&server, garage_north(id, 200.0 + 10.0 * i as f64)).await;
    }
    let segments = log_segments(first.path());
    assert_eq!(segments.len(), 1, "{segments:?}");
    let log = std::fs::read(&segments[0]).unwrap();
    let name = segments[0].file_name().unwrap().to_owned();
    server.stop().await.unwrap();
    let file = std::fs::read(ahead.path().join(durable::FILE)).unwrap();
    let with_log = |bytes: &[u8]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(durable::FILE), &file).unwrap();
        std::fs::write(dir.path().join(&name), bytes).unwrap();
        dir
    };
    let mut all = vec!["d1".to_owned()];
    all.extend(ids.iter().cloned());

    let whole = with_log(&log);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("city.tar");
    durable::backup(whole.path(), &archive).unwrap();
    assert_eq!(
        registered(whole.path(), &all).await,
        all,
        "the log folded in"
    );
    assert!(log_segments(whole.path()).len() <= 1);
    assert_eq!(registered(whole.path(), &all).await, all, "and kept");
    let restored = untar(&archive, &out.path().join("restored"));
    assert_eq!(
        registered(&restored, &all).await,
        all,
        "the backup holds what only the log held"
    );

    let cut = with_log(&log[..log.len() - 3]);
    assert_eq!(
        registered(cut.path(), &all).await,
        all[..all.len() - 1],
        "an unfinished last commit is left out, the rest kept"
    );

    let mut flipped = log.clone();
    let middle = log.len() / 2;
    flipped[middle] ^= 0x01;
    let mut foreign = log.clone();
    foreign[..4].copy_from_slice(b"XXXX");
    for (case, bytes, says) in [
        ("flipped", flipped, "is damaged"),
        ("foreign", foreign, "not a citypark commit log"),
    ] {
        let damaged = with_log(&bytes);
        let message = refusal(damaged.path());
        assert!(
            message.contains(says) && message.contains(&name.to_string_lossy().to_string()),
            "{case}: {message}"
        );
        assert_eq!(
            std::fs::read(damaged.path().join(&name)).unwrap(),
            bytes,
            "{case}: the log is left as it was"
        );
        assert_eq!(
            std::fs::read(damaged.path().join(durable::FILE)).unwrap(),
            file,
            "{case}: the file is left as it was"
        );
    }
}

/// A file written before the commit log (schema 1, no `folded` row) starts as it was
/// and is brought to this schema.
#[tokio::test]
async fn a_file_from_before_the_commit_log_starts_and_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on(dir.path()).await;
    register(&server, garage_north("d1", 100.0)).await;
    server.stop().await.unwrap();
    let file = dir.path().join(durable::FILE);
    let version = |conn: &rusqlite::Connection| -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    };
    {
        let conn = rusqlite::Connection::open(&file).unwrap();
        assert_eq!(version(&conn), 2);
        conn.execute_batch("DROP TABLE folded; PRAGMA user_version = 1;")
            .unwrap();
    }
    assert_eq!(
        registered(dir.path(), &["d1".to_owned()]).await,
        ["d1"],
        "the schema-1 city is served"
    );
    let conn = rusqlite::Connection::open(&file).unwrap();
    assert_eq!(version(&conn), 2);
    let folded: i64 = conn
        .query_row("SELECT seq FROM folded", [], |r| r.get(0))
        .unwrap();
    assert_eq!(folded, 0, "no commit since: the log it gained is empty");
}
