//! The real `citypark` binary, started as an operator would start it, and its client
//! commands run as a driver would run them.

use std::time::Duration;

use crate::support::{Binary, run_status};

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let child = Binary::serve(&[]);
    let lines = child.lines_until("listening", Duration::from_secs(20));
    drop(child);
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
    let listening = lines.last().unwrap();
    assert!(
        listening.contains(" INFO ") && listening.contains("grpc=127.0.0.1:"),
        "{listening:?}"
    );
}

/// Runs the `citypark` binary with `args` (off the runtime, which serves the test
/// server); its stdout, or a panic with its stderr.
async fn run(args: Vec<String>) -> String {
    let shown = format!("{args:?}");
    let (code, stdout, stderr) = run_status(args).await;
    assert_eq!(code, Some(0), "citypark {shown}: {stderr}");
    stdout
}

/// `citypark health` with `extra` flags, against `server`.
async fn health(server: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec![
        "health".to_owned(),
        "--server".to_owned(),
        server.to_owned(),
    ];
    args.extend(extra.iter().map(|e| (*e).to_owned()));
    run_status(args).await
}

#[tokio::test]
async fn health_exits_zero_only_for_serving_with_one_line() {
    let server = crate::support::TestServer::start().await;
    let url = format!("http://{}", server.addr);
    for service in [&[][..], &["--service", "citypark.v1.Ingest"]] {
        let (code, stdout, stderr) = health(&url, service).await;
        assert_eq!(code, Some(0), "{service:?}: {stdout}{stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.trim_end().ends_with(": SERVING"), "{stdout}");
        assert!(stderr.is_empty(), "{stderr}");
    }

    let (code, stdout, stderr) = health(&url, &["--service", "citypark.v1.Nothing"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("citypark.v1.Nothing") && stderr.contains("unknown service"),
        "{stderr}"
    );

    // A port nobody listens on: what a container sees before the server has bound.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, stdout, stderr) = health(&closed_url, &["--timeout-ms", "5000"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect") && stderr.contains(&closed_url),
        "{stderr}"
    );
}

#[tokio::test]
async fn health_exits_one_for_not_serving_and_for_silence() {
    // A health server whose one service is NOT_SERVING, as citypark's write services
    // are while the store is down.
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            "citypark.v1.Ingest",
            tonic_health::ServingStatus::NotServing,
        )
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let (code, stdout, stderr) = health(&url, &["--service", "citypark.v1.Ingest"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.trim_end().ends_with(": NOT_SERVING"), "{stderr}");
    let _ = stop.send(());
    served.await.unwrap().unwrap();

    // A port that accepts and never answers: the check gives up at its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = health(&silent_url, &["--timeout-ms", "300"]).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("no answer within 300 ms"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}

#[tokio::test]
async fn a_driver_reserves_lists_and_cancels_from_the_command_line() {
    let server = crate::support::TestServer::start().await;
    crate::support::register(&server, crate::support::reservable_garage("g1", 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, crate::support::DRIVER_SECRET).unwrap();
    let s = |v: &str| v.to_owned();
    let token = run(vec![
        s("token"),
        s("--driver"),
        s("alice"),
        s("--secret-file"),
        secret.display().to_string(),
    ])
    .await;
    let token = token.trim().to_owned();
    let at = |command: &str| {
        vec![
            s(command),
            s("--server"),
            format!("http://{}", server.addr),
            s("--token"),
            token.clone(),
        ]
    };
    // An hour after the test server's clock (not this machine's: its date moves on).
    let start = crate::support::after(server.now(), 3600).to_string();
    let mut reserve = at("reserve");
    reserve.extend(
        [
            "--car-park",
            "g1",
            "--start",
            &start,
            "--minutes",
            "30",
            "--plate",
            "鲁B 12345",
            "--key",
            "k1",
        ]
        .map(s),
    );
    let made = run(reserve).await;
    assert!(
        made.contains(" reserved ") && made.contains("g1~"),
        "{made}"
    );
    let id = made
        .split_whitespace()
        .find(|w| w.starts_with("g1~"))
        .unwrap()
        .to_owned();
    let listed = run(at("reservations")).await;
    assert!(listed.contains(&id), "{listed}");
    let mut cancel = at("cancel");
    cancel.extend([id.clone(), s("--reason"), s("plans changed")]);
    let cancelled = run(cancel).await;
    assert!(
        cancelled.contains(&id) && cancelled.contains("cancelled"),
        "{cancelled}"
    );
    let table = run(vec![
        s("get"),
        s("--server"),
        format!("http://{}", server.addr),
        s("g1"),
    ])
    .await;
    assert!(table.lines().next().unwrap().contains("held"), "{table}");
}

#[tokio::test]
async fn a_host_offers_and_a_driver_finds_and_books_from_the_command_line() {
    let server = crate::support::TestServer::start().await;
    crate::support::register(&server, crate::support::garage_north("g0", 10.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, crate::support::DRIVER_SECRET).unwrap();
    let s = |v: &str| v.to_owned();
    let token = |driver: &str| {
        run(vec![
            s("token"),
            s("--driver"),
            s(driver),
            s("--secret-file"),
            secret.display().to_string(),
        ])
    };
    let (host, driver) = (token("hana").await, token("dana").await);
    let at = |command: &str, token: &str| {
        vec![
            s(command),
            s("--server"),
            format!("http://{}", server.addr),
            s("--token"),
            token.trim().to_owned(),
        ]
    };
    let here = crate::support::here();
    let (lat, lon) = (here.latitude.to_string(), here.longitude.to_string());
    let mut offer = at("offer", &host);
    offer.extend(
        [
            "--id",
            "home-7",
            "--lat",
            &lat,
            "--lon",
            &lon,
            "--address",
            "7 Xianggang Rd",
            "--period",
            "1-7/00:00-24:00",
            "--hourly-rate",
            "600",
        ]
        .map(s),
    );
    let made = run(offer).await;
    assert!(made.contains("offer home-7 by hana"), "{made}");
    let start = crate::support::after(server.now(), 3600).to_string();
    let mut search = at("search-shared", &driver);
    search.extend(["--lat", &lat, "--lon", &lon, "--start", &start].map(s));
    let found = run(search).await;
    assert!(
        found.contains("home-7") && found.contains("6.00"),
        "{found}"
    );
    let mut book = at("book", &driver);
    book.extend(
        [
            "--offer",
            "home-7",
            "--start",
            &start,
            "--plate",
            "鲁B 12345",
            "--key",
            "k1",
        ]
        .map(s),
    );
    let booked = run(book).await;
    assert!(
        booked.contains("home-7~") && booked.contains(" booked "),
        "{booked}"
    );
}

#[tokio::test]
async fn a_driver_links_a_plate_drives_in_and_out_and_pays_from_the_command_line() {
    use crate::support::{OPERATOR_A, eventually, garage, register, report_ok, snapshot};
    let server = crate::support::TestServer::start().await;
    register(&server, garage("g1", 36.06, 120.38)).await;
    report_ok(&server, snapshot("g1", 1, 100, server.now())).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, crate::support::DRIVER_SECRET).unwrap();
    let s = |v: &str| v.to_owned();
    let token = run(vec![
        s("token"),
        s("--driver"),
        s("ann"),
        s("--secret-file"),
        secret.display().to_string(),
    ])
    .await;
    let server_flag = [s("--server"), format!("http://{}", server.addr)];
    // `citypark <command...> --server … <credential flag> <credential> <extra...>`.
    let call = |command: &[&str], credential: [&str; 2], extra: &[&str]| {
        let mut args: Vec<String> = command.iter().map(|c| s(c)).collect();
        args.extend(server_flag.iter().cloned());
        args.extend(credential.map(s));
        args.extend(extra.iter().map(|e| s(e)));
        run(args)
    };
    let driver = ["--token", token.trim()];
    let operator = ["--api-key", OPERATOR_A.1];

    let linked = call(
        &["plates", "link"],
        driver,
        &["--plate", "鲁B 12345", "--plate-color", "blue"],
    )
    .await;
    assert!(
        linked.contains("鲁B12345") && linked.contains("blue") && linked.contains("wallet"),
        "{linked}"
    );
    let listed = call(&["plates", "list"], driver, &[]).await;
    assert!(listed.contains("鲁B12345"), "{listed}");
    let topped = call(
        &["wallet", "top-up"],
        driver,
        &["--amount-minor", "2000", "--key", "pay-1"],
    )
    .await;
    assert!(topped.contains("balance ¥20.00"), "{topped}");
    // The same key again credits nothing more.
    let again = call(
        &["wallet", "top-up"],
        driver,
        &["--amount-minor", "2000", "--key", "pay-1"],
    )
    .await;
    assert!(again.contains("balance ¥20.00"), "{again}");

    // The gates read the plate: observed at the server's (hand-driven) time.
    let gate = |sequence: u64, direction: &'static str| {
        let at = server.now().to_string();
        let sequence = sequence.to_string();
        let lane = if direction == "enter" {
            "in-1"
        } else {
            "out-1"
        };
        let flag = format!("--{direction}");
        async move {
            call(
                &["report"],
                operator,
                &[
                    "--car-park",
                    "g1",
                    "--sequence",
                    &sequence,
                    &flag,
                    "standard=1",
                    "--plate",
                    "鲁B12345",
                    "--plate-color",
                    "blue",
                    "--lane",
                    lane,
                    "--observed-at",
                    &at,
                ],
            )
            .await
        }
    };
    let entered = gate(2, "enter").await;
    assert!(entered.contains("parking session g1~2"), "{entered}");
    let open = call(&["sessions", "--id", "g1~2"], driver, &[]).await;
    assert!(
        open.contains(" open ") && open.contains("lane in-1"),
        "{open}"
    );
    // 2 h 10 min: three started hours at ¥5.00.
    server.advance(2 * 3600 + 600);
    let left = gate(3, "exit").await;
    assert!(left.contains("parking session g1~2"), "{left}");

    // The charge is made by the server's payment sweep, just after the exit.
    let mine = eventually("the session is paid", || async {
        let out = call(&["sessions"], driver, &[]).await;
        out.contains("closed_paid").then_some(out)
    })
    .await;
    let row = mine.lines().find(|l| l.starts_with("g1~2")).unwrap();
    for part in ["鲁B12345", "closed_paid", "¥15.00", "wallet succeeded"] {
        assert!(row.contains(part), "{part} in {row:?}");
    }
    let wallet = call(&["wallet"], driver, &[]).await;
    assert!(wallet.contains("balance ¥5.00"), "{wallet}");
    assert!(
        wallet
            .lines()
            .any(|l| l.contains("charge") && l.contains("-¥15.00") && l.contains("charge:g1~2")),
        "{wallet}"
    );
    let one = call(&["sessions", "--id", "g1~2"], driver, &[]).await;
    assert!(one.contains("receipt charge:g1~2"), "{one}");

    // The operator sees it among its car park's paid sessions, and the day's revenue.
    let theirs = call(
        &["sessions"],
        operator,
        &["--car-park", "g1", "--state", "closed_paid"],
    )
    .await;
    assert!(
        theirs.contains("g1~2") && theirs.contains("鲁B12345"),
        "{theirs}"
    );
    let none = call(&["sessions"], operator, &["--state", "closed_unpaid"]).await;
    assert!(none.contains("no parking sessions"), "{none}");
    // 2026-11-30 12:10 in Shanghai: the local day of the exit.
    let day = call(&["settlement"], operator, &["--day", "2026-11-30"]).await;
    assert!(day.contains("1 paid, 0 unpaid"), "{day}");
    let revenue = day.lines().find(|l| l.starts_with("revenue")).unwrap();
    assert!(revenue.contains("¥15.00"), "{day}");
}

#[tokio::test]
async fn every_write_leaves_one_audit_event_without_keys_or_plates() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, crate::support::DRIVER_SECRET).unwrap();
    let key = "audit-test-operator-key";
    let keys = format!("op-a:{}", hex::encode(sha2::Sha256::digest(key)));
    let server = Binary::serve(&[
        "--log-format",
        "json",
        "--log",
        "info,citypark::audit=debug",
        "--api-keys",
        &keys,
        "--driver-jwt-secret-file",
        &secret.display().to_string(),
    ]);
    let listening = server.lines_until("listening", Duration::from_secs(20));
    let listening: serde_json::Value = serde_json::from_str(listening.last().unwrap()).unwrap();
    let addr = listening["grpc"].as_str().unwrap().to_owned();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut registry = citypark::pb::registry_client::RegistryClient::new(channel.clone());
    let garage = crate::support::reservable_garage("aud-1", 5);
    registry
        .upsert_car_park(crate::support::authed(
            citypark::pb::UpsertCarParkRequest {
                car_park: Some(garage),
            },
            key,
        ))
        .await
        .unwrap();
    let mut reservations =
        citypark::pb::reservations_client::ReservationsClient::new(channel.clone());
    // A window an hour from now on this machine's clock, which the binary runs on.
    let now = citypark::domain::Timestamp::now();
    let request = crate::support::reservation_request(
        "aud-1",
        crate::support::after(now, 3600),
        crate::support::after(now, 7200),
        "鲁B·98765",
        "k1",
    );
    reservations
        .create_reservation(crate::support::authed(
            request,
            &crate::support::driver_token("dora"),
        ))
        .await
        .unwrap();
    // A write refused is audited too.
    let _ = registry
        .delete_car_park(crate::support::authed(
            citypark::pb::DeleteCarParkRequest { id: "nope".into() },
            key,
        ))
        .await;
    let lines = server.lines_until("\"action\":\"delete_car_park\"", Duration::from_secs(10));
    let audit: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("citypark::audit"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |action: &str| {
        audit
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("no {action} event in {audit:#?}"))
    };
    let upsert = find("upsert_car_park");
    assert_eq!(
        (
            upsert["who"].as_str(),
            upsert["on"].as_str(),
            upsert["result"].as_str()
        ),
        (Some("operator:op-a"), Some("aud-1"), Some("ok"))
    );
    let created = find("create_reservation");
    assert_eq!(created["who"], "driver:dora");
    assert!(
        created["on"].as_str().unwrap().starts_with("aud-1~"),
        "{created}"
    );
    let refused = find("delete_car_park");
    assert_eq!(refused["result"], "not_found", "{refused}");
    for line in &lines {
        assert!(!line.contains(key), "a key in the log: {line}");
        assert!(!line.contains("98765"), "a plate in the log: {line}");
    }
}

/// `citypark history status` shows the schema pending, `migrate` applies it, and a
/// server started with `--history-migrate check` then takes the database; before the
/// migration it refuses to start, naming the command to run.
#[tokio::test]
async fn history_migrate_then_serve_with_check() {
    let Some(db) = crate::postgres_support::PgDatabase::create().await else {
        return;
    };
    let history = |command: &str| {
        vec![
            "history".to_owned(),
            command.to_owned(),
            "--history".to_owned(),
            db.url(),
        ]
    };
    let pending = run(history("status")).await;
    assert!(pending.contains("0 of 3 migrations applied"), "{pending}");
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "a plate key of this test only").unwrap();
    let check = |db: &str| {
        vec![
            "serve".to_owned(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--metrics-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--http-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--history".to_owned(),
            db.to_owned(),
            "--history-plate-key-file".to_owned(),
            key.path().to_str().unwrap().to_owned(),
            "--history-migrate".to_owned(),
            "check".to_owned(),
        ]
    };
    let (code, _, stderr) = run_status(check(&db.url())).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("citypark history migrate"), "{stderr}");
    let applied = run(history("migrate")).await;
    assert!(applied.contains("3 of 3 migrations applied"), "{applied}");
    let status = run(history("status")).await;
    assert!(status.contains("1\tapplied\thistory"), "{status}");
    assert!(status.contains("2\tapplied\tsettlements"), "{status}");
    let args = check(&db.url());
    let args: Vec<&str> = args[7..].iter().map(String::as_str).collect();
    let server = Binary::serve(&args);
    server.lines_until("citypark serving", std::time::Duration::from_secs(30));
}
