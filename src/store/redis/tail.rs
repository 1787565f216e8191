//! Following a region: load its snapshot, then apply its change stream to the engine.
//!
//! The snapshot is taken after reading the stream's position (`position.lua`), and
//! the stream is replayed from that position; a change already in the snapshot is
//! skipped by its version, so there is no gap and no double apply. Stream entries
//! are numbered without holes by the region's counter: a hole means the stream was
//! trimmed past this instance (or Redis lost data), and the region is reloaded.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use redis::{AsyncCommands, streams::StreamReadReply};
use tokio::sync::watch;

use super::{Shared, conn::Dedicated, decode, is_connection_error, unavailable};
use crate::domain::{CarPark, CarParkId, Error, Live, RegionId, Result};

/// How long one blocking read waits for new changes.
const BLOCK: Duration = Duration::from_secs(1);
/// Most changes applied per read.
const READ_COUNT: usize = 500;

/// Where this instance stands in a region's stream.
#[derive(Debug, Clone)]
struct Position {
    /// The number of the last change applied.
    n: u64,
    /// The stream id of the last entry read.
    id: String,
}

/// One followed region.
pub struct RegionTail {
    region: RegionId,
    applied: watch::Sender<u64>,
}

impl RegionTail {
    /// Loads the region's snapshot into the engine and starts following its stream.
    pub(super) async fn start(shared: Arc<Shared>, region: RegionId) -> Result<Arc<Self>> {
        let position = load(&shared, &region).await?;
        let (applied, _) = watch::channel(position.n);
        let tail = Arc::new(Self { region, applied });
        tracing::info!(region = %tail.region, change = position.n, "region loaded from redis");
        tokio::spawn(follow(Arc::downgrade(&shared), tail.clone(), position));
        Ok(tail)
    }

    /// Waits until change `n` has been applied here; false if `wait` passed first.
    pub async fn wait_applied(&self, n: u64, wait: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        matches!(
            tokio::time::timeout(wait, applied.wait_for(|&a| a >= n)).await,
            Ok(Ok(_))
        )
    }
}

/// Reads the region's position, then its whole state, and makes the engine's region
/// exactly that state.
async fn load(shared: &Shared, region: &RegionId) -> Result<Position> {
    let keys = shared.keys(region);
    let mut conn = shared.conn.clone();
    shared.round_trip("snapshot");
    let (n, id): (u64, String) = shared
        .position
        .key(&keys.counter)
        .key(&keys.changes)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| unavailable(&e))?;
    shared.round_trip("snapshot");
    let (parks, lives, versions): (
        HashMap<String, String>,
        HashMap<String, String>,
        HashMap<String, u64>,
    ) = redis::pipe()
        .hgetall(&keys.parks)
        .hgetall(&keys.live)
        .hgetall(&keys.versions)
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut car_parks = Vec::with_capacity(parks.len());
    for (id, park) in &parks {
        let live = lives
            .get(id)
            .ok_or_else(|| Error::Internal(format!("car park {id} has no live state in Redis")))?;
        let car_park: CarPark = decode(park)?;
        let live: Live = decode(live)?;
        car_parks.push((car_park, live, versions.get(id).copied().unwrap_or(1)));
    }
    let tombstones = versions
        .iter()
        .filter(|(id, _)| !parks.contains_key(*id))
        .filter_map(|(id, v)| CarParkId::parse(id).ok().map(|id| (id, *v)))
        .collect();
    shared
        .engine
        .replace_region(region, car_parks, tombstones, shared.now());
    Ok(Position { n, id })
}

/// Follows the stream until the store is dropped: reconnects after errors, reloads
/// after a hole.
async fn follow(shared: Weak<Shared>, tail: Arc<RegionTail>, mut position: Position) {
    let mut backoff = Duration::from_millis(100);
    let mut reload = false;
    let mut reconnected;
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        let target = store.target.clone();
        let keys = store.keys(&tail.region);
        drop(store);
        let mut conn = match Dedicated::connect(&target, BLOCK).await {
            Ok(conn) => {
                reconnected = true;
                conn
            }
            Err(error) => {
                let Some(store) = shared.upgrade() else {
                    return;
                };
                store.set_healthy(false);
                tracing::warn!(%error, region = %tail.region, retry_in = ?backoff, "redis change stream unreachable");
                drop(store);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let Some(store) = shared.upgrade() else {
                return;
            };
            // Right after (re)connecting, Redis may have come back with less than
            // this instance applied; afterwards a hole in the numbers shows it.
            let check = std::mem::take(&mut reconnected);
            if reload || (check && regressed(&store, &tail.region, &position).await) {
                match load(&store, &tail.region).await {
                    Ok(p) => {
                        tracing::warn!(region = %tail.region, from = position.n, to = p.n, "region reloaded from redis snapshot");
                        position = p;
                        reload = false;
                        tail.applied.send_replace(position.n);
                    }
                    Err(_) => break,
                }
            }
            store.round_trip("tail");
            drop(store);
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&keys.changes)
                .arg(&position.id)
                .query_async(&mut conn)
                .await;
            let Some(store) = shared.upgrade() else {
                return;
            };
            let reply = match read {
                Ok(reply) => reply,
                Err(error) => {
                    store.set_healthy(false);
                    tracing::warn!(%error, region = %tail.region, "reading the redis change stream failed");
                    if is_connection_error(&error) {
                        break;
                    }
                    drop(store);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            store.set_healthy(true);
            let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
            for entry in entries {
                let n: u64 = entry.get("n").unwrap_or(0);
                if n != position.n + 1 {
                    tracing::warn!(region = %tail.region, expected = position.n + 1, found = n, "hole in the change stream");
                    reload = true;
                    break;
                }
                if let Err(error) = apply(&store, &entry) {
                    tracing::error!(%error, region = %tail.region, change = n, "undecodable change skipped");
                }
                position = Position { n, id: entry.id };
            }
            tail.applied.send_replace(position.n);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether Redis now holds fewer changes than this instance applied (it lost data,
/// e.g. restarted without persistence): then the snapshot is the truth again.
async fn regressed(store: &Shared, region: &RegionId, position: &Position) -> bool {
    let keys = store.keys(region);
    let mut conn = store.conn.clone();
    let counter: redis::RedisResult<Option<u64>> = conn.get(&keys.counter).await;
    matches!(counter, Ok(n) if n.unwrap_or(0) < position.n)
}

/// Applies one stream entry to the engine; older versions are ignored there.
fn apply(store: &Shared, entry: &redis::streams::StreamId) -> Result<()> {
    let field = |name: &str| {
        entry
            .get::<String>(name)
            .ok_or_else(|| Error::Internal(format!("change without {name}")))
    };
    let id = field("id")?;
    let version: u64 = entry
        .get("v")
        .ok_or_else(|| Error::Internal("change without v".into()))?;
    // Most entries an instance reads are its own writes, already written through to
    // its engine: skip them before decoding any JSON.
    if store.engine.version(&id) >= version {
        return Ok(());
    }
    let now = store.now();
    match field("op")?.as_str() {
        "put" => {
            store.engine.put_versioned(
                decode(&field("park")?)?,
                decode(&field("live")?)?,
                version,
                now,
            );
        }
        "live" => {
            store
                .engine
                .live_versioned(&id, decode(&field("live")?)?, version, now);
        }
        "del" => {
            let id = CarParkId::parse(&id).map_err(|e| Error::Internal(e.to_string()))?;
            store.engine.delete_versioned(&id, version);
        }
        other => return Err(Error::Internal(format!("unknown change op {other:?}"))),
    }
    Ok(())
}

/// Starts following regions that other instances created, checking every second,
/// until the store is dropped.
pub(super) async fn discover_regions(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = shared.upgrade() else {
            return;
        };
        let mut conn = store.conn.clone();
        let regions: redis::RedisResult<Vec<String>> = conn
            .smembers(super::keys::regions(&store.options.prefix))
            .await;
        let Ok(regions) = regions else { continue };
        for region in regions {
            let Ok(region) = RegionId::parse(&region) else {
                continue;
            };
            if let Err(error) = store.region(&region).await {
                tracing::warn!(%error, region = %region, "could not start following a region");
            }
        }
    }
}
