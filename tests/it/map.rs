//! The live city map: its HTTP routes (the embedded page and bundle, `config.json`),
//! and the page itself in a real Chromium driven by playwright-core
//! (`web/test/map.e2e.mjs`) against the demo city: every car park shows as a dot, a
//! reported change recolours its dot within 2 s, a click opens the car park's
//! details with a chart of its last day and a forecast of its next three hours (no
//! history or forecast yet, or either unavailable, without harm to the rest), a
//! search finds the nearest free spaces, and a screenshot is saved under `target/`;
//! and the chart of a day a history holds.
//! Without Chromium the browser tests say why and skip, unless
//! `CITYPARK_REQUIRE_TOOLS=1` (CI), which makes them fail instead.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use citypark::{
    app::Backend,
    demo::Demo,
    domain::SpaceCategory,
    history::{History as _, Location, Migrate, Sample, SqlHistory, bucket_of},
    pb,
    service::SystemClock,
};

use crate::support::*;

const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_TOOLS";

/// How long a report may take to show on the map: the issue's promise.
const RECOLOUR: Duration = Duration::from_secs(2);

#[tokio::test]
async fn the_page_and_its_bundle_are_served_from_the_binary() {
    let server = TestServer::start().await;
    let (status, headers, _) = http_get(server.http_addr, "/", &[]).await;
    assert_eq!((status, header(&headers, "location")), (303, Some("/map/")));

    let (status, headers, body) = http_get(server.http_addr, "/map/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        header(&headers, "content-security-policy")
            .is_some_and(|p| p.contains("script-src 'self'"))
    );
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains(r#"<script type="module" src="app.js">"#),
        "{page}"
    );

    // Compressed for browsers, plain for the rest, the same ETag either way; a
    // revalidation with it is answered 304 with no body.
    let (status, gz_headers, gz) = http_get(
        server.http_addr,
        "/map/app.js",
        &[("Accept-Encoding", "gzip, br")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&gz_headers, "content-encoding"), Some("gzip"));
    let (status, plain_headers, plain) = http_get(server.http_addr, "/map/app.js", &[]).await;
    assert_eq!(
        (status, header(&plain_headers, "content-encoding")),
        (200, None)
    );
    assert!(
        gz.len() * 2 < plain.len(),
        "{} vs {}",
        gz.len(),
        plain.len()
    );
    assert!(std::str::from_utf8(&plain).is_ok_and(|js| js.contains("application/grpc-web")));
    let etag = header(&plain_headers, "etag").unwrap();
    assert_eq!(header(&gz_headers, "etag"), Some(etag));
    let (status, _, body) =
        http_get(server.http_addr, "/map/app.js", &[("If-None-Match", etag)]).await;
    assert_eq!((status, body.len()), (304, 0));

    let (status, _, licenses) = http_get(server.http_addr, "/map/licenses.txt", &[]).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8(licenses)
            .unwrap()
            .contains("== leaflet 1.9.4 (BSD-2-Clause)")
    );
    let (status, _, _) = http_get(server.http_addr, "/map/nothing.js", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_binary_serves_the_map_it_embeds_and_logs_its_url() {
    let binary = Binary::serve(&[]);
    // Blocking is harmless here: nothing else runs on this test's runtime.
    let line = binary
        .lines_until("listening", Duration::from_secs(20))
        .pop()
        .unwrap();
    let http = logged_addr(&line, "http");
    assert!(line.contains(&format!("map=http://{http}/map/")), "{line}");
    let (status, _, page) = http_get(http, "/map/", &[]).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8(page).unwrap().contains("<title>citypark"));
}

#[tokio::test]
async fn config_tells_the_page_where_grpc_is_and_which_regions_there_are() {
    let server = TestServer::start_with(|settings| {
        settings.map.tiles_url = Some("https://tiles.example/{z}/{x}/{y}.png".into());
        settings.map.tiles_attribution = "© example".into();
    })
    .await;
    register(&server, garage("a", 36.0, 120.3)).await;
    register(&server, garage("b", 36.2, 120.1)).await;
    register_as(
        &server,
        pb::CarPark {
            region: "yantai".into(),
            ..garage("c", 37.5, 121.4)
        },
        OPERATOR_A.1,
    )
    .await;

    let (status, headers, body) = http_get(server.http_addr, "/map/config.json", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(config["grpc_port"], server.addr.port());
    assert_eq!(config["grpc_web_url"], serde_json::Value::Null);
    assert_eq!(config["tiles_url"], "https://tiles.example/{z}/{x}/{y}.png");
    assert_eq!(config["tiles_attribution"], "© example");
    assert_eq!(
        config["regions"],
        serde_json::json!([
            {"id": "qingdao", "car_parks": 2, "south_west": [36.0, 120.1], "north_east": [36.2, 120.3]},
            {"id": "yantai", "car_parks": 1, "south_west": [37.5, 121.4], "north_east": [37.5, 121.4]},
        ])
    );
}

// ---------------------------------------------------------------------------------
// In Chromium

/// Chromium's path, or None after printing why the browser test skips; panics instead
/// when `CITYPARK_REQUIRE_TOOLS=1`, so CI cannot pass by skipping.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("CITYPARK_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        });
    if found.is_none() {
        if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
            panic!("Chromium not found and {REQUIRE_VAR}=1; install Debian's chromium");
        }
        eprintln!(
            "skipping: Chromium not found (/usr/bin/chromium, or CITYPARK_CHROMIUM); install \
             Debian's chromium (apt-get install chromium) or set {REQUIRE_VAR}=1 to fail instead"
        );
    }
    found
}

/// The browser driver (`web/test/map.e2e.mjs`, in the copy build.rs made, beside the
/// playwright-core it installed), talked to a line at a time.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Page errors and failed requests the driver reported.
    errors: Vec<String>,
}

impl Browser {
    fn open(url: &str, chromium: &Path) -> Self {
        let work = Path::new(env!("CITYPARK_WEB_WORK"));
        let mut child = Command::new("node")
            .arg(work.join("test/map.e2e.mjs"))
            .args([url, chromium.to_str().unwrap()])
            .current_dir(work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs the browser driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            stdin,
            lines,
            errors: Vec::new(),
        }
    }

    /// Sends one command; its answer after "ok ", or the test fails with it.
    fn ask(&mut self, command: &str, bound: Duration) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        loop {
            let line = self
                .lines
                .recv_timeout(bound)
                .unwrap_or_else(|_| panic!("no answer to {command:?} within {bound:?}"));
            if let Some(error) = line.strip_prefix("error ") {
                self.errors.push(error.to_owned());
                continue;
            }
            match line.strip_prefix("ok") {
                Some(rest) => return rest.trim().to_owned(),
                None => panic!("{command:?}: {line}; page errors: {:?}", self.errors),
            }
        }
    }

    /// Closes the page, failing the test if it reported an error or a failed request.
    fn close(self) {
        assert!(self.errors.is_empty(), "page errors: {:?}", self.errors);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reports `free` standard spaces at `id` as operator A, then asks the browser to see
/// `state` on its dot within what is left of `RECOLOUR`; the time it took and the fill.
async fn report_and_expect(
    server: &TestServer,
    browser: &mut Browser,
    id: &str,
    sequence: u64,
    free: i32,
    state: &str,
) -> String {
    let started = Instant::now();
    let now = jiff::Timestamp::now();
    report_ok(server, snapshot(id, sequence, free, now)).await;
    let left = RECOLOUR.saturating_sub(started.elapsed());
    let command = format!("expect {id} {state} {}", left.as_millis());
    let answer = tokio::task::block_in_place(|| browser.ask(&command, RECOLOUR * 10));
    eprintln!(
        "{id}: {free} free shown as {state} {} ms after the report",
        started.elapsed().as_millis()
    );
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_shows_the_demo_city_live_in_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let demo = Demo::new(2026, Duration::from_secs(20));
    let server = TestServer::start_with(|settings| {
        demo.add_keys(&mut settings.api_keys);
        // The demo's operators stamp reports with the real time.
        settings.clock = Arc::new(SystemClock);
    })
    .await;
    let demo = demo.start(format!("http://{}", server.addr));

    // One car park of the test's own beside the demo's (just north of the demo city,
    // so no other dot covers it), which no demo operator changes behind the test's
    // back: 100 standard spaces, 60 free.
    let (lat, lng) = (36.36, 120.12);
    register(&server, garage("map-probe", lat, lng)).await;
    let now = jiff::Timestamp::now();
    report_ok(&server, snapshot("map-probe", 1, 60, now)).await;
    // Beside it, one never reported and one whose numbers are old (observed more than
    // three report intervals ago): neither may look full.
    // Its name is the operator's text, shown as text wherever it appears.
    const MARKUP: &str = "<img src=x> & <b>Co</b>";
    register(
        &server,
        pb::CarPark {
            name: MARKUP.into(),
            ..garage("map-no-data", lat, lng + 0.01)
        },
    )
    .await;
    register(&server, garage("map-stale", lat, lng + 0.02)).await;
    report_ok(&server, snapshot("map-stale", 1, 0, after(now, -600))).await;
    let city = citypark::demo::generate_city(2026).len();
    let registered = Instant::now() + Duration::from_secs(120);
    while server.backend.engine.len() < city + 3 {
        assert!(
            Instant::now() < registered,
            "the demo city did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let url = format!("http://{}/map/", server.http_addr);
    let mut browser = tokio::task::block_in_place(|| Browser::open(&url, &chromium));
    let shown = tokio::task::block_in_place(|| {
        browser.ask(&format!("ready {}", city + 3), Duration::from_secs(120))
    });
    assert_eq!(shown, (city + 3).to_string(), "every car park is a dot");
    let (free, no_data, stale) = tokio::task::block_in_place(|| {
        (
            browser.ask("expect map-probe free 5000", RECOLOUR * 5),
            browser.ask("expect map-no-data no-data 5000", RECOLOUR * 5),
            browser.ask("expect map-stale stale 5000", RECOLOUR * 5),
        )
    });

    // Full, then a few left, each within 2 s, each in its own colour.
    let full = report_and_expect(&server, &mut browser, "map-probe", 2, 0, "full").await;
    let few = report_and_expect(&server, &mut browser, "map-probe", 3, 4, "few").await;
    let fill = |answer: &str| answer.split(' ').nth(1).unwrap().to_owned();
    let fills = [&free, &full, &few, &no_data, &stale].map(|a| fill(a));
    let distinct: std::collections::HashSet<_> = fills.iter().collect();
    assert_eq!(distinct.len(), fills.len(), "one colour each: {fills:?}");

    // The search shows what FindNearby says (the stale one is left out, as FindNearby
    // leaves stale car parks out); the side panel what GetCarPark says.
    let found =
        tokio::task::block_in_place(|| browser.ask(&format!("nearby {lat} {lng}"), RECOLOUR * 5));
    assert_eq!(found, "map-probe", "the nearest with a free space");
    let (heading, tooltip) = tokio::task::block_in_place(|| {
        (
            browser.ask("click map-no-data", RECOLOUR * 5),
            browser.ask("hover map-no-data", RECOLOUR * 5),
        )
    });
    assert_eq!(heading, MARKUP);
    assert_eq!(tooltip, format!("{MARKUP} — No data"));
    // Never reported: nothing to forecast from (FAILED_PRECONDITION), which is no
    // error either.
    let forecast = tokio::task::block_in_place(|| browser.ask("forecast", RECOLOUR * 5));
    assert_eq!(forecast, "empty No forecast yet");
    let heading = tokio::task::block_in_place(|| browser.ask("click map-probe", RECOLOUR * 5));
    assert_eq!(heading, "Garage map-probe");
    // Beside it, its last day: this server keeps no history, so there is none to
    // chart yet, which is no error.
    let history = tokio::task::block_in_place(|| browser.ask("history", RECOLOUR * 5));
    assert!(
        history.starts_with("empty ") || history.starts_with("chart "),
        "{history}"
    );
    // And its next three hours: a dot every 15 minutes in one band, on the scale of
    // its 100 standard spaces, saying what Forecast says. Its numbers are seconds old
    // and it has no profile yet, so the forecast is the same whenever it is asked.
    let forecast = tokio::task::block_in_place(|| browser.ask("forecast", RECOLOUR * 5));
    let (in_1_h, in_3_h) = next_hours(&server, "map-probe").await;
    let words: Vec<&str> = forecast.splitn(5, ' ').collect();
    assert_eq!(words[..4], ["chart", "13", "1", "100"], "{forecast}");
    assert!(
        words[4].starts_with(&format!("In 1 h: {in_1_h} space"))
            && words[4].contains(&format!(". In 3 h: {in_3_h} space")),
        "{forecast}; Forecast answered {in_1_h} in 1 h, {in_3_h} in 3 h"
    );

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/map-demo.png");
    tokio::task::block_in_place(|| {
        browser.ask(&format!("screenshot {}", shot.display()), RECOLOUR * 5)
    });
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "{shot:?}"
    );
    eprintln!("screenshot: {}", shot.display());

    // History and forecasts down: each chart says so, and the rest of the panel is as
    // ever.
    let (heading, history, forecast) = tokio::task::block_in_place(|| {
        browser.ask("break-history", RECOLOUR * 5);
        browser.ask("break-forecast", RECOLOUR * 5);
        (
            browser.ask("click map-no-data", RECOLOUR * 5),
            browser.ask("history", RECOLOUR * 5),
            browser.ask("forecast", RECOLOUR * 5),
        )
    });
    assert_eq!(heading, MARKUP);
    assert_eq!(history, "error History unavailable");
    assert_eq!(forecast, "error Forecast unavailable");
    browser.close();
    demo.stop().await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_too_big_for_one_watch_is_followed_where_the_map_looks() {
    let Some(chromium) = chromium() else {
        return;
    };
    let server = TestServer::start_with(|settings| {
        settings.limits.max_watch_car_parks = 40;
        settings.clock = Arc::new(SystemClock);
    })
    .await;
    // 10 × 10 car parks a kilometre or so apart, all with space.
    let now = jiff::Timestamp::now();
    for row in 0..10 {
        for column in 0..10 {
            let id = format!("g-{row}-{column}");
            let (lat, lng) = (
                36.0 + f64::from(row) * 0.01,
                120.3 + f64::from(column) * 0.01,
            );
            register(&server, garage(&id, lat, lng)).await;
            report_ok(&server, snapshot(&id, 1, 50, now)).await;
        }
    }

    let url = format!("http://{}/map/", server.http_addr);
    let mut browser = tokio::task::block_in_place(|| Browser::open(&url, &chromium));
    let status = tokio::task::block_in_place(|| browser.ask("status Zoom 30000", RECOLOUR * 20));
    assert!(status.contains("more than 40 car parks"), "{status}");
    let status = tokio::task::block_in_place(|| {
        browser.ask("zoom g-5-5 8", RECOLOUR * 10);
        browser.ask("status visible 10000", RECOLOUR * 10)
    });
    assert!(status.starts_with("Live:"), "{status}");
    tokio::task::block_in_place(|| browser.ask("expect g-5-5 free 5000", RECOLOUR * 5));
    report_and_expect(&server, &mut browser, "g-5-5", 2, 0, "full").await;
    // A corner out of view is not followed, and says so.
    tokio::task::block_in_place(|| browser.ask("expect g-0-0 loading 5000", RECOLOUR * 5));
    browser.close();
    server.stop().await.unwrap();
}

/// `id`'s standard spaces over the last day in half hours, as the panel asks.
async fn last_day(server: &TestServer, id: &str) -> Vec<pb::OccupancyBucket> {
    let request = pb::GetOccupancyHistoryRequest {
        car_park_id: id.into(),
        category: pb::SpaceCategory::Standard.into(),
        from: Some(pb_time(after(jiff::Timestamp::now(), -86_400))),
        to: None,
        step: Some(prost_types::Duration {
            seconds: 1800,
            nanos: 0,
        }),
    };
    let mut availability = server.availability().await;
    let reply = availability.get_occupancy_history(request).await.unwrap();
    reply.into_inner().buckets
}

/// `id`'s standard spaces forecast in 1 and in 3 hours, from a minute ahead as the
/// panel asks.
async fn next_hours(server: &TestServer, id: &str) -> (i32, i32) {
    let start = after(jiff::Timestamp::now(), 60);
    let request = pb::ForecastRequest {
        car_park_id: id.into(),
        category: pb::SpaceCategory::Standard.into(),
        times: [3600, 3 * 3600]
            .map(|secs| pb_time(after(start, secs)))
            .to_vec(),
    };
    let mut availability = server.availability().await;
    let reply = availability.forecast(request).await.unwrap().into_inner();
    (reply.forecasts[0].available, reply.forecasts[1].available)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_side_panel_charts_the_last_day_a_history_holds() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let location = Location::Sqlite(dir.path().join("history.sqlite3"));
    let history = Arc::new(SqlHistory::open(&location, Migrate::Auto).await.unwrap());
    let backend = Backend::embedded(4096).with_history(history.clone());
    let server = TestServer::start_on(backend, |settings| {
        settings.clock = Arc::new(SystemClock);
    })
    .await;
    register(&server, garage("charted", 36.06, 120.38)).await;
    register(&server, garage("charted-too", 36.08, 120.40)).await;

    // 23 hours of 5-minute samples of its 100 standard spaces up to now, but none
    // from 9 to 6 hours ago (nothing changed then): those half hours carry the one
    // before forward.
    let now = jiff::Timestamp::now();
    let samples: Vec<Sample> = (0..23 * 12_i64)
        .filter(|k| !(72..108).contains(k))
        .map(|k| {
            let wave = (k as f64 * std::f64::consts::TAU / 288.0).sin();
            let free = (50.0 + 40.0 * wave).round() as u32;
            Sample {
                car_park: "charted".into(),
                region: "qingdao".into(),
                category: SpaceCategory::Standard,
                bucket: bucket_of(after(now, -k * 300)),
                min_free: free - (k % 5) as u32,
                max_free: free + 3,
                last_free: free,
                capacity: 100,
                status: "open".into(),
            }
        })
        .collect();
    history.put_samples(&samples).await.unwrap();
    let fewest = samples.iter().map(|s| s.min_free).min().unwrap();
    let most = samples.iter().map(|s| s.max_free).max().unwrap();
    // Its live numbers are the newest sample's.
    report_ok(
        &server,
        snapshot("charted", 1, samples[0].last_free as i32, now),
    )
    .await;

    let url = format!("http://{}/map/", server.http_addr);
    let mut browser = tokio::task::block_in_place(|| Browser::open(&url, &chromium));
    tokio::task::block_in_place(|| browser.ask("ready 2", Duration::from_secs(60)));
    // What the page draws is what GetOccupancyHistory answers (asked before and after
    // it, in case a half hour ends in between).
    let before = last_day(&server, "charted").await;
    let (heading, chart) = tokio::task::block_in_place(|| {
        (
            browser.ask("click charted", RECOLOUR * 5),
            browser.ask("history", RECOLOUR * 5),
        )
    });
    let later = last_day(&server, "charted").await;
    assert_eq!(heading, "Garage charted");
    let words: Vec<&str> = chart.splitn(5, ' ').collect();
    assert_eq!(words[0], "chart", "{chart}");
    let drawn: (usize, usize) = (words[1].parse().unwrap(), words[2].parse().unwrap());
    let answered = |buckets: &[pb::OccupancyBucket]| {
        (
            buckets.len(),
            buckets.iter().filter(|b| !b.observed).count(),
        )
    };
    assert!(
        drawn == answered(&before) || drawn == answered(&later),
        "drew {drawn:?} steps (all, carried forward); GetOccupancyHistory answered {:?}, \
         then {:?}",
        answered(&before),
        answered(&later)
    );
    // Three hours without a sample: at least five half hours carried forward, drawn
    // as one dashed run.
    assert!(drawn.1 >= 5, "{chart}");
    assert_eq!(words[3], "1", "one dashed run: {chart}");
    assert_eq!(
        words[4],
        format!("Free spaces over the last 24 hours, between {fewest} and {most} of 100")
    );

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/map-history.png");
    tokio::task::block_in_place(|| {
        browser.ask(&format!("screenshot {}", shot.display()), RECOLOUR * 5)
    });
    eprintln!("screenshot: {}", shot.display());
    browser.close();
    server.stop().await.unwrap();
}
