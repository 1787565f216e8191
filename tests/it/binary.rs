//! The real `citypark` binary, started as an operator would start it, and its client
//! commands run as a driver would run them.

use std::time::Duration;

use crate::support::Binary;

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
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_citypark"))
            .args(&args)
            .env_remove("CITYPARK_TOKEN")
            .output()
            .expect("the binary runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "citypark {args:?}: {stderr}");
        stdout
    })
    .await
    .unwrap()
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
