//! No task outlives `app::run` (issue item 5): once a stopped server's `run` has
//! returned, every task it started — the tasks serving watch and publish streams, the
//! sweeper, the health follower, the metrics server, the store's writer, followers and
//! heartbeat — has ended, on every backend; and a publisher whose stream was open is
//! told UNAVAILABLE, with an ack only for what was applied.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use crate::{
    redis_support::{RedisServer, key_prefix},
    support::*,
};
use citypark::pb;

/// Tasks alive in this test's runtime (each `#[tokio::test]` has a runtime of its own,
/// so other tests' servers do not count; blocking tasks never do).
fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the runtime holds `baseline` tasks again, for at most [`PATIENCE`]: a
/// dropped client channel's tasks, and a closed connection's, end a moment after the
/// drop. Fails with the count otherwise.
async fn back_to(baseline: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = alive();
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} tasks still alive {PATIENCE:?} after the server stopped and every client \
             was dropped; {baseline} before the server started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line per client of `server` (CLIENT LIST).
async fn clients(server: &RedisServer) -> String {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// `Some` once whether some client of `server` reads a change stream (its last command
/// was XREAD, as a stream follower's always is) is `reading`.
async fn following(server: &RedisServer, reading: bool) -> Option<()> {
    (clients(server).await.contains(" cmd=xread ") == reading).then_some(())
}

/// `Some` once a client of `server` other than a stream follower is blocked: a write
/// held by `CLIENT PAUSE`.
async fn held(server: &RedisServer) -> Option<()> {
    clients(server)
        .await
        .lines()
        .any(|c| c.contains(" flags=b ") && !c.contains(" cmd=xread "))
        .then_some(())
}

/// Sends `CLIENT <args>` to `server`.
async fn client_command(server: &RedisServer, args: &[&str]) {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg(args)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn no_task_outlives_a_stopped_server_on_the_embedded_store() {
    no_task_outlives_a_stopped_server(None).await;
}

#[tokio::test]
async fn no_task_outlives_a_stopped_server_on_redis() {
    let Some(redis) = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
    else {
        return;
    };
    no_task_outlives_a_stopped_server(Some(&redis)).await;
}

async fn no_task_outlives_a_stopped_server(redis: Option<&RedisServer>) {
    // Before anything of the test exists: the test body itself is no task.
    let baseline = alive();
    let prefix = key_prefix();
    let server = match redis {
        Some(redis) => TestServer::start_redis(&redis.url(), &prefix).await,
        None => TestServer::start().await,
    };
    // Kept past the stop, so that the store's tasks must end because `run` stopped
    // them, not because their store went away.
    let (backend, clock) = (server.backend.clone(), server.clock.clone());
    let now = server.now();
    register(&server, garage("g1", 36.067, 120.383)).await;
    let mut watch = watch_ids(&server, &["g1"]).await.unwrap();
    read_snapshot(&mut watch).await;
    let mut publisher = Publisher::open(&server, OPERATOR_A.1).await.unwrap();
    let acks = publisher.exchange(vec![snapshot("g1", 1, 5, now)]).await;
    assert_eq!(acks[0].result(), pb::ReportResult::Applied, "{acks:?}");
    assert_eq!(next_update(&mut watch).await.last_sequence, 1);
    assert!(
        alive() > baseline,
        "a running server runs tasks, or the count below proves nothing"
    );
    if let Some(redis) = redis {
        eventually_within(PATIENCE, "the server follows region qingdao", || {
            following(redis, true)
        })
        .await;
    }

    // A batch is in flight as shutdown begins. On Redis it is held there (writes
    // paused) until shutdown has begun, so it must be finished and acknowledged before
    // the stream ends. (Held for milliseconds: the store gives up on a Redis reply
    // after 2 s.) The embedded store applies it at once, so whether it is read
    // before the stream ends is a race: it is either applied and acknowledged, or never
    // read.
    let batch = vec![snapshot("g1", 2, 6, now)];
    match redis {
        Some(redis) => {
            client_command(redis, &["PAUSE", "30000", "WRITE"]).await;
            publisher.send(batch).await;
            eventually_within(PATIENCE, "the batch is held in Redis", || held(redis)).await;
            let stopping = tokio::spawn(server.stop());
            assert!(
                next(&mut watch).await.unwrap().is_none(),
                "the watch stream ends: shutdown has begun"
            );
            client_command(redis, &["UNPAUSE"]).await;
            stopping.await.unwrap().expect("a clean stop");
        }
        None => {
            publisher.send(batch).await;
            server.stop().await.expect("a clean stop");
            assert!(
                next(&mut watch).await.unwrap().is_none(),
                "the watch stream ends"
            );
        }
    }
    let acked = match publisher.answer().await {
        Ok(Some(acks)) => {
            assert_eq!(acks.len(), 1, "{acks:?}");
            assert_eq!(acks[0].result(), pb::ReportResult::Applied, "{acks:?}");
            let status = expect_code(publisher.answer().await, Code::Unavailable);
            assert!(status.message().contains("shutting down"), "{status:?}");
            true
        }
        Ok(None) => panic!("the publish stream ended without telling the publisher to resend"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains("shutting down"), "{status:?}");
            false
        }
    };
    assert!(
        acked || redis.is_none(),
        "a batch in flight when shutdown began is finished and acknowledged"
    );
    // The store still exists, but its followers have stopped: no connection of it is
    // left reading a change stream.
    if let Some(redis) = redis {
        eventually_within(PATIENCE, "the stopped server's followers are gone", || {
            following(redis, false)
        })
        .await;
    }
    // The client side goes too: its channels' tasks are not the server's.
    let engine = backend.engine.clone();
    drop((watch, publisher, backend));

    back_to(baseline).await;

    // Acknowledged exactly when applied: in this instance's engine, and for Redis in
    // what a new instance loads.
    let sequence = if acked { 2 } else { 1 };
    let state = engine.availability("g1", now).expect("g1 is registered");
    assert_eq!(state.last_sequence, sequence, "acked: {acked}");
    if let Some(redis) = redis {
        let again = TestServer::start_redis_with(&redis.url(), &prefix, clock, |_| {}).await;
        assert_eq!(
            availability_of(&again, "g1").await.last_sequence,
            sequence,
            "acked: {acked}"
        );
    }
}
