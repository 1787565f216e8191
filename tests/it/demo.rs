//! The demo: its operators register and report through the real API, and stopping it
//! ends every task it started.

use std::{sync::Arc, time::Duration};

use citypark::{demo::Demo, pb, service::SystemClock};
use tokio::{net::TcpListener, runtime::Runtime, time::Instant};

use crate::support::*;

/// Registering the city through a debug build takes seconds; an upper bound, never a
/// synchronisation.
const REGISTERING: Duration = Duration::from_secs(60);

/// A runtime for the demo alone: its count of alive tasks is then exactly the demo's
/// (its operators, and the connection tasks of their gRPC channel), untouched by the
/// server's and the test clients' tasks.
fn demo_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo")
        .enable_all()
        .build()
        .expect("a runtime for the demo")
}

/// The tasks still alive on `runtime` once they are all gone or `PATIENCE` is up.
/// `stop` joins every task the demo spawned itself; tonic's connection tasks end just
/// after, once they see the channel dropped.
async fn remaining_tasks(runtime: &Runtime) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive = runtime.metrics().num_alive_tasks();
        if alive == 0 || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether any car park on the first page of ListCarParks has an applied report.
async fn any_reported(server: &TestServer) -> bool {
    let ids: Vec<String> = server
        .registry()
        .await
        .list_car_parks(pb::ListCarParksRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .car_parks
        .into_iter()
        .map(|c| c.id)
        .collect();
    !ids.is_empty()
        && lookup(server, &ids)
            .await
            .availabilities
            .iter()
            .any(|a| a.last_sequence > 0)
}

#[tokio::test]
async fn demo_reports_then_stops_every_task() {
    let demo = Demo::new(2026, Duration::from_secs(1));
    let server = TestServer::start_with(|settings| {
        demo.add_keys(&mut settings.api_keys);
        // The operators stamp reports with the real time, which a hand clock would
        // find out of line.
        settings.clock = Arc::new(SystemClock);
    })
    .await;
    let runtime = demo_runtime();
    let demo = {
        let _inside = runtime.enter();
        demo.start(format!("http://{}", server.addr))
    };

    let deadline = Instant::now() + REGISTERING;
    while !any_reported(&server).await {
        assert!(
            Instant::now() < deadline,
            "no demo car park reported within {REGISTERING:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Seven operators streaming or registering, and the task that joins them.
    let running = runtime.metrics().num_alive_tasks();
    assert!(running >= 8, "{running} demo tasks alive");

    tokio::time::timeout(PATIENCE, demo.stop())
        .await
        .expect("the demo stops within PATIENCE");
    // `stop` returned, so the operators and their joiner have ended; at most the
    // channel's buffer worker and connection, and the request-body tasks of the last
    // calls (hyper pipes each HTTP/2 request body in a task of its own, and the
    // operators also make unary calls for reservations), may still be on their way
    // out. A `stop` that only cancelled would leave a dozen and more here.
    let just_stopped = runtime.metrics().num_alive_tasks();
    assert!(
        just_stopped <= 4,
        "{just_stopped} demo tasks alive after stop"
    );
    assert_eq!(remaining_tasks(&runtime).await, 0, "demo tasks left behind");
    runtime.shutdown_background();
    server.stop().await.unwrap();
}

#[tokio::test]
async fn demo_stops_while_still_connecting() {
    // A port nobody listens on: the operators would retry connecting for 10 s.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let runtime = demo_runtime();
    let demo = {
        let _inside = runtime.enter();
        Demo::new(1, Duration::from_secs(1)).start(format!("http://{addr}"))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        runtime.metrics().num_alive_tasks() >= 1,
        "the demo is retrying"
    );

    tokio::time::timeout(Duration::from_secs(2), demo.stop())
        .await
        .expect("the demo stops long before it would give up connecting");
    assert_eq!(remaining_tasks(&runtime).await, 0, "demo tasks left behind");
    runtime.shutdown_background();
}
