//! Health follows Redis with or without data: a heartbeat takes the write services
//! out of rotation within seconds of Redis becoming unreachable, and back once it
//! returns, even on an instance that holds no car park and so follows no stream.
//!
//! Run against the real binary, so that `citypark_store_up` (a process-wide gauge)
//! is this instance's alone and not one of the other test servers of this process.

use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    redis_support::{RedisServer, key_prefix},
    support::*,
};

/// What the heartbeat promises (issue item 6): health reflects Redis within 5 s.
const PROMISED: Duration = Duration::from_secs(5);

const REGISTRY: &str = "citypark.v1.Registry";
const INGEST: &str = "citypark.v1.Ingest";
const RESERVATIONS: &str = "citypark.v1.Reservations";
const AVAILABILITY: &str = "citypark.v1.Availability";

/// The health of the write services, and the store gauge, of the instance at
/// `grpc`/`metrics`: `Some` once every write service and the gauge say `up`.
async fn writes_are(up: bool, grpc: &Channel, metrics: std::net::SocketAddr) -> Option<()> {
    let want = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in [REGISTRY, INGEST, RESERVATIONS] {
        if health_at(grpc.clone(), service).await != want {
            return None;
        }
    }
    let gauge = series(&metrics_text_at(metrics).await, "citypark_store_up");
    (gauge == if up { 1.0 } else { 0.0 }).then_some(())
}

#[tokio::test]
async fn health_follows_redis_within_5_s_on_an_empty_store() {
    let Some(mut redis) = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
    else {
        return;
    };
    // A Redis deployment's history is PostgreSQL, shared by its instances.
    let Some(history) = crate::postgres_support::PgDatabase::create().await else {
        return;
    };
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "a plate key of this test only").unwrap();
    let prefix = key_prefix();
    let instance = Binary::serve(&[
        "--store",
        &redis.url(),
        "--redis-prefix",
        &prefix,
        "--history",
        &history.url(),
        "--history-plate-key-file",
        key.path().to_str().unwrap(),
    ]);
    let listening = instance.lines_until("listening", SETTLE);
    let line = listening.last().unwrap();
    let (grpc_addr, metrics) = (logged_addr(line, "grpc"), logged_addr(line, "metrics"));
    // Health is served once the store is open and the servers run.
    instance.lines_until("citypark serving", SETTLE);
    let grpc = Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Nothing registered: no region, so no stream follower that could notice Redis go.
    let mut registry = citypark::pb::registry_client::RegistryClient::new(grpc.clone());
    let listed = registry
        .list_car_parks(citypark::pb::ListCarParksRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.car_parks.is_empty(), "{listed:?}");
    for service in [REGISTRY, INGEST, AVAILABILITY] {
        assert_eq!(
            health_at(grpc.clone(), service).await,
            ServingStatus::Serving,
            "{service}"
        );
    }
    assert_eq!(
        series(&metrics_text_at(metrics).await, "citypark_store_up"),
        1.0
    );

    redis.stop();
    let killed = Instant::now();
    eventually_within(
        PROMISED,
        "Registry, Ingest and Reservations NOT_SERVING, citypark_store_up 0, after Redis was killed",
        || writes_are(false, &grpc, metrics),
    )
    .await;
    let noticed = killed.elapsed();
    // Queries answer from the engine: the query service stays in rotation.
    assert_eq!(
        health_at(grpc.clone(), AVAILABILITY).await,
        ServingStatus::Serving
    );

    let redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let back = Instant::now();
    eventually_within(
        PROMISED,
        "Registry, Ingest and Reservations SERVING, citypark_store_up 1, after Redis came back",
        || writes_are(true, &grpc, metrics),
    )
    .await;
    let recovered = back.elapsed();
    assert_eq!(
        health_at(grpc.clone(), AVAILABILITY).await,
        ServingStatus::Serving
    );
    eprintln!("health followed Redis: down after {noticed:?}, up after {recovered:?}");
    drop(instance);
    drop(redis);
}
