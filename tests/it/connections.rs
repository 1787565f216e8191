//! Connections on the gRPC port: closed when they carry no call, refused cleanly over
//! the cap, and a server out of open files that keeps answering with bounded CPU.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::*;

/// Whether the server closes `stream` within `bound` (end of stream or reset),
/// reading and discarding what it sends before.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, read_to_end).await.is_ok()
}

/// The value of a counter in a /metrics text, summed over the series whose labels
/// contain `labels`.
fn counter(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn connections_without_a_call_are_closed_and_calls_keep_theirs() {
    let server = TestServer::start_with(|s| {
        s.connections.first_call_timeout = Duration::from_secs(1);
        s.connections.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let before = server.metrics_text().await;
    register(&server, garage("g1", 36.05, 120.35)).await;

    // A watch opened now outlives both timeouts: a call in flight holds its
    // connection.
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    read_snapshot(&mut watch).await;
    // A channel that made one call, then nothing.
    let idle = server.channel().await;
    ping_on(idle.clone()).await.unwrap();

    let start = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut preface_only = TcpStream::connect(server.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    let mut half_header = TcpStream::connect(server.addr).await.unwrap();
    half_header
        .write_all(b"POST /citypark.v1.Availability/Ping HTTP/1.1\r\nhost: x\r\ncontent-ty")
        .await
        .unwrap();
    for (what, stream) in [
        ("a silent connection", &mut silent),
        ("a bare HTTP/2 preface", &mut preface_only),
        ("half an HTTP/1.1 header", &mut half_header),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(4)).await,
            "{what} is still open"
        );
    }
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed before the first-call timeout: {:?}",
        start.elapsed()
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    report_ok(&server, snapshot("g1", 1, 7, server.now())).await;
    let update = next_update(&mut watch).await;
    assert_eq!(
        free_standard(&update),
        7,
        "the watch outlived the idle timeout"
    );
    // The idle channel's connection was closed; the channel connects again.
    ping_on(idle).await.unwrap();

    let after = server.metrics_text().await;
    let closed = |text: &str, reason: &str| {
        counter(
            text,
            "citypark_connections_closed_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert!(closed(&after, "no_first_call") - closed(&before, "no_first_call") >= 3.0);
    assert!(closed(&after, "idle") - closed(&before, "idle") >= 1.0);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once_with_the_reason() {
    let server = TestServer::start_with(|s| s.connections.max_connections = 2).await;
    let before = server.metrics_text().await;
    let (a, b) = (server.channel().await, server.channel().await);
    ping_on(a.clone()).await.unwrap();
    ping_on(b.clone()).await.unwrap();

    // A gRPC client is told to go away (HTTP/2 GOAWAY, ENHANCE_YOUR_CALM) at once,
    // not left waiting.
    let start = Instant::now();
    let third = async {
        ping_on(
            server
                .endpoint()
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?,
        )
        .await
    };
    let refused = tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("the refusal comes at once");
    assert!(refused.is_err(), "a third connection was served");
    assert!(start.elapsed() < Duration::from_secs(2));

    // A gRPC-Web (HTTP/1.1) client gets a 503 naming the flag.
    let mut web = TcpStream::connect(server.addr).await.unwrap();
    web.write_all(b"POST /citypark.v1.Availability/Ping HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: 5\r\n\r\n\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(3), web.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections"), "{answer}");

    // The connections in place keep working, and a place freed is taken again.
    ping_on(a).await.unwrap();
    drop(b);
    eventually("a freed place to be taken", || async {
        ping_on(server.channel().await).await.is_ok().then_some(())
    })
    .await;
    let after = server.metrics_text().await;
    let refused = |text: &str| counter(text, "citypark_connections_refused_total", "");
    assert!(refused(&after) - refused(&before) >= 2.0);
}

/// CPU seconds the process `pid` has used (user and system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 14th
    // field of the line, stime the 15th.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn eleven_hundred_idle_connections_against_1024_open_files_leave_the_server_answering() {
    // This test holds 1,400 sockets itself.
    let own = citypark::net::raise_open_files_limit().unwrap_or(0);
    assert!(
        own >= 2_000,
        "this test needs 2,000 open files and may have {own}: raise the hard limit (ulimit -Hn)"
    );
    let server = Binary::serve_with_open_files(
        &["--first-call-timeout-secs", "5", "--log-format", "json"],
        1024,
    );
    let listening = server.lines_until("listening", Duration::from_secs(20));
    let listening: serde_json::Value = serde_json::from_str(listening.last().unwrap()).unwrap();
    let grpc: std::net::SocketAddr = listening["grpc"].as_str().unwrap().parse().unwrap();
    let metrics: std::net::SocketAddr = listening["metrics"].as_str().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // 1,100 idle connections to the gRPC port and 300 to the metrics port: more
        // than the server's 1,024 files.
        let mut held = Vec::new();
        for i in 0..1_400 {
            let to = if i < 1_100 { grpc } else { metrics };
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to)).await
            {
                held.push(s);
            }
        }
        // With every file taken, the server waits: it neither spins on failed accepts
        // nor on anything else (measured over 2 s, before the first-call timeout of
        // 5 s closes the idle connections).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu_before = cpu_seconds(server.pid());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let spent = cpu_seconds(server.pid()) - cpu_before;
        assert!(
            spent < 0.5,
            "the server spent {spent:.2} s of CPU in 2 s holding idle connections"
        );

        // While they are open, a new client is answered or refused, at the latest
        // once the first-call timeout has freed files (until then a connection may
        // wait in the kernel's backlog: the process has no file to accept it with).
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        let answered = tokio::time::timeout(Duration::from_secs(8), async {
            match endpoint.connect().await {
                Ok(channel) => ping_on(channel).await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        assert!(answered.is_ok(), "a new client was left hanging");

        // Within the first-call timeout (5 s) and a margin, the idle connections are
        // closed and new clients are answered, while this test still holds every
        // socket it opened.
        let served = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Ok(channel) = endpoint.connect().await
                    && ping_on(channel).await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(served.is_ok(), "the server did not answer again");

        let text = eventually("the metrics port to answer", || async {
            match tokio::time::timeout(Duration::from_secs(2), async {
                metrics_text_at(metrics).await
            })
            .await
            {
                Ok(text) if text.contains("citypark_connections_refused_total") => Some(text),
                _ => None,
            }
        })
        .await;
        assert!(counter(&text, "citypark_connections_refused_total", "") > 0.0);
        assert!(
            counter(&text, "citypark_accept_errors_total", "") > 0.0,
            "the server never ran out of files: the test proves nothing about it"
        );
        assert!(
            counter(
                &text,
                "citypark_connections_closed_total",
                "reason=\"no_first_call\""
            ) > 0.0
        );
        drop(held);
    });
    // Running out of files was logged, but not once per failed accept.
    let warnings = server
        .lines_so_far()
        .iter()
        .filter(|l| l.contains("out of open files"))
        .count();
    assert!((1..50).contains(&warnings), "{warnings} warnings");
}

#[test]
fn slow_callbacks_on_the_http_port_leave_the_grpc_port_answering() {
    // This test holds 1,100 sockets itself.
    let own = citypark::net::raise_open_files_limit().unwrap_or(0);
    assert!(
        own >= 2_000,
        "this test needs 2,000 open files and may have {own}: raise the hard limit (ulimit -Hn)"
    );
    let server = Binary::serve_with_open_files(&["--log-format", "json"], 1024);
    let listening = server.lines_until("listening", Duration::from_secs(20));
    let listening: serde_json::Value = serde_json::from_str(listening.last().unwrap()).unwrap();
    let address =
        |port: &str| -> std::net::SocketAddr { listening[port].as_str().unwrap().parse().unwrap() };
    let (grpc, http, metrics) = (address("grpc"), address("http"), address("metrics"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // 1,100 payment callbacks that send their headers and 1 byte of a 4,096-byte
        // body, then nothing: more than the server's 1,024 files.
        const SLOW: &[u8] = b"POST /payments/v1/callback HTTP/1.1\r\nhost: citypark\r\n\
            content-type: application/json\r\ncontent-length: 4096\r\n\r\n{";
        let started = Instant::now();
        let callers = (0..1_100).map(|_| async move {
            let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(http))
                .await
                .ok()?
                .ok()?;
            stream.write_all(SLOW).await.ok()?;
            Some(stream)
        });
        let mut held: Vec<TcpStream> = futures_util::future::join_all(callers)
            .await
            .into_iter()
            .flatten()
            .collect();
        // Until the server has taken in (or refused) all it will: its open files stop
        // changing.
        let files = || {
            std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
                .unwrap()
                .count()
        };
        let mut last = files();
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = files();
            if now == last {
                break;
            }
            last = now;
        }

        // While they wait, a new gRPC client is answered at once, before the body-read
        // timeout (10 s) frees anything.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2));
        let answered = tokio::time::timeout(Duration::from_secs(3), async {
            ping_on(endpoint.connect().await.ok()?).await.ok()
        })
        .await;
        assert!(
            matches!(answered, Ok(Some(()))),
            "a new gRPC client got no answer while slow callers held the HTTP port"
        );

        // The HTTP port held at most half of the connection budget and refused the
        // rest with a 503 (or, past the refusals in progress, closed them).
        let text = metrics_text_at(metrics).await;
        let refused = counter(&text, "citypark_connections_refused_total", "port=\"http\"");
        assert!(refused >= 100.0, "{refused} refused on the HTTP port");
        let open = counter(&text, "citypark_connections{", "port=\"http\"");
        assert!(
            (1.0..=512.0).contains(&open),
            "{open} connections open on the HTTP port"
        );

        // Each slow caller that was let in is answered 408 once its body is 10 s late,
        // and its connection closed.
        let mut timed_out = 0;
        for stream in held.iter_mut().take(20) {
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer));
            if let Ok(Ok(_)) = read.await
                && answer.starts_with(b"HTTP/1.1 408")
            {
                timed_out += 1;
                let answer = String::from_utf8_lossy(&answer);
                assert!(answer.contains("did not arrive within 10 s"), "{answer}");
            }
        }
        assert!(timed_out > 0, "no slow caller was answered 408");
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "answered 408 before the body-read timeout"
        );
        drop(held);
    });
}
