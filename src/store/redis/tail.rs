//! Following a region: load its snapshot, then apply its change stream to the engine,
//! for every aggregate kind (`kinds.rs`).
//!
//! The snapshot is taken after reading the stream's position (`position.lua`), and
//! the stream is replayed from that position; a change already in the snapshot is
//! skipped by its version, so there is no gap and no double apply. Stream entries
//! are numbered without holes by the region's counter: a hole means the stream was
//! trimmed past this instance (or Redis lost data), and the region is reloaded. The
//! stream is trimmed by age too, so a quiet follower also asks, when a read finds
//! nothing, whether changes it never saw were trimmed (`missed`).

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use redis::{AsyncCommands, streams::StreamReadReply};

use super::{
    Shared,
    conn::Dedicated,
    is_connection_error,
    kinds::{self, Entry},
    unavailable,
};
use crate::{
    domain::{RegionId, Result},
    engine::Loading,
    metrics,
    store::table::DecodeError,
};

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

/// Loads a region new to this instance into the engine and starts following its
/// stream.
pub(super) async fn start(shared: &Arc<Shared>, region: RegionId) -> Result<()> {
    let position = load(shared, &region, Loading::New).await?;
    tracing::info!(region = %region, change = position.n, "region loaded from redis");
    shared.spawn(follow(Arc::downgrade(shared), region, position));
    Ok(())
}

/// Reads the region's position, then every kind's records, and makes the engine's
/// region exactly that state. Changes made meanwhile are replayed from the position
/// (and skipped where the snapshot already has their version).
async fn load(shared: &Shared, region: &RegionId, loading: Loading) -> Result<Position> {
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
    for kind in kinds::KINDS {
        kind.load(shared, region, loading).await?;
    }
    Ok(Position { n, id })
}

/// Follows the stream until the store closes: reconnects after errors, reloads
/// after a hole.
async fn follow(shared: Weak<Shared>, region: RegionId, mut position: Position) {
    let mut backoff = Duration::from_millis(100);
    let mut reload = false;
    let mut reconnected;
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        let target = store.target.clone();
        let keys = store.keys(&region);
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
                tracing::warn!(%error, region = %region, retry_in = ?backoff, "redis change stream unreachable");
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
            if reload || (check && regressed(&store, &region, &position).await) {
                match load(&store, &region, Loading::Replace).await {
                    Ok(p) => {
                        tracing::warn!(region = %region, from = position.n, to = p.n, "region reloaded from redis snapshot");
                        position = p;
                        reload = false;
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
                    tracing::warn!(%error, region = %region, "reading the redis change stream failed");
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
            let entries: Vec<redis::streams::StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            if entries.is_empty() && missed(&store, &region, &position).await {
                tracing::warn!(region = %region, after = position.n, "changes trimmed before they were read");
                reload = true;
                continue;
            }
            for entry in entries {
                let n: u64 = entry.get("n").unwrap_or(0);
                if n != position.n + 1 {
                    tracing::warn!(region = %region, expected = position.n + 1, found = n, "hole in the change stream");
                    reload = true;
                    break;
                }
                apply(&store, &entry);
                position = Position { n, id: entry.id };
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Whether changes after `position` were made and trimmed away before this instance
/// read them (it fell further behind than the stream's reach), when a read found
/// nothing new. The counter is read first: a change it counts is in the stream
/// already (both are written by one script), so the next entry is there unless
/// trimmed. An error answers no: the next read tries again.
async fn missed(store: &Shared, region: &RegionId, position: &Position) -> bool {
    let keys = store.keys(region);
    let mut conn = store.conn.clone();
    let counter: redis::RedisResult<Option<u64>> = conn.get(&keys.counter).await;
    if !matches!(counter, Ok(Some(n)) if n > position.n) {
        return false;
    }
    let next: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XRANGE")
        .arg(&keys.changes)
        .arg(format!("({}", position.id))
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await;
    match next {
        Ok(reply) => reply
            .ids
            .first()
            .is_none_or(|e| e.get::<u64>("n") != Some(position.n + 1)),
        Err(_) => false,
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

/// Reads a stream entry. Entries without a kind were written before kinds existed:
/// car park changes with ops `put`, `live` (live counts only) and `del`, and the
/// registration in field `park`.
fn entry(raw: &redis::streams::StreamId) -> Result<Entry, DecodeError> {
    let text = |value: &redis::Value| redis::from_redis_value_ref::<String>(value).ok();
    let mut fields: HashMap<String, String> = raw
        .map
        .iter()
        .filter_map(|(k, v)| text(v).map(|t| (k.clone(), t)))
        .collect();
    let mut take = |name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| DecodeError::Corrupt(format!("change without {name}")))
    };
    let id = take("id")?;
    let version = take("v")?
        .parse()
        .map_err(|_| DecodeError::Corrupt("bad version".into()))?;
    let op = take("op")?;
    let (kind, op) = match take("k") {
        Ok(kind) => (kind, op),
        Err(_) => {
            if let Some(park) = fields.remove("park") {
                fields.insert("parks".into(), park);
            }
            let op = if op == "live" { "put".into() } else { op };
            ("car_park".into(), op)
        }
    };
    fields.remove("n");
    fields.retain(|_, v| !v.is_empty());
    Ok(Entry {
        kind,
        op,
        id,
        version,
        parts: fields,
    })
}

/// Applies one stream entry to the engine; older versions are ignored there. An entry
/// this version cannot read (a kind or format from a newer version) is skipped with a
/// warning and a metric: the instance goes on with every other change.
fn apply(store: &Shared, raw: &redis::streams::StreamId) {
    let (kind, result) = match entry(raw) {
        Err(error) => ("unknown", Err(error)),
        Ok(entry) => match kinds::kind(&entry.kind) {
            Some(kind) => (kind.name(), kind.apply(store, &entry).map(drop)),
            None => ("unknown", Err(DecodeError::UnknownKind(entry.kind))),
        },
    };
    if let Err(error) = result {
        metrics::record_replication_skipped(kind, error.label());
        tracing::warn!(%error, kind, change = %raw.id, "change skipped");
    }
}

/// Starts following regions that other instances created, until the store is
/// dropped: at once from the announcements stream (`keys::announcements`), and from
/// the regions set every `RedisOptions::regions_poll`, for an announcement missed (a
/// reader reconnecting, an announcement that failed after its region joined the set).
/// The stream's end is read before the set, and a
/// region joins the set before it is announced, so nothing falls between the two.
pub(super) async fn discover_regions(shared: Weak<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        let (target, stream, every) = (
            store.target.clone(),
            super::keys::announcements(&store.options.prefix),
            store.options.regions_poll,
        );
        drop(store);
        // A read blocks for at most a second, or the poll's interval if shorter.
        let block = every.min(BLOCK);
        let mut conn = match Dedicated::connect(&target, block).await {
            Ok(conn) => conn,
            Err(_) => {
                // The change streams' readers say so; the set is read meanwhile.
                poll_regions(&shared).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let end: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await;
        let Ok(end) = end else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        };
        backoff = Duration::from_millis(100);
        let mut from = end.ids.first().map_or("0-0".to_owned(), |e| e.id.clone());
        let mut polled = Instant::now();
        if !poll_regions(&shared).await {
            return;
        }
        loop {
            if polled.elapsed() >= every {
                polled = Instant::now();
                if !poll_regions(&shared).await {
                    return;
                }
            }
            let read: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(block.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from)
                .query_async(&mut conn)
                .await;
            let Ok(reply) = read else {
                // Reconnect after a pause: a failing read must not spin.
                tokio::time::sleep(backoff).await;
                break;
            };
            let Some(store) = shared.upgrade() else {
                return;
            };
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                let region: Option<String> = entry.get("region");
                from = entry.id;
                if let Some(Ok(region)) = region.as_deref().map(RegionId::parse)
                    && let Err(error) = store.region(&region).await
                {
                    tracing::warn!(%error, region = %region, "could not start following a region");
                }
            }
        }
    }
}

/// Follows every region in the regions set not followed yet; false once the store is
/// dropped.
async fn poll_regions(shared: &Weak<Shared>) -> bool {
    let Some(store) = shared.upgrade() else {
        return false;
    };
    let mut conn = store.conn.clone();
    let regions: redis::RedisResult<Vec<String>> = conn
        .smembers(super::keys::regions(&store.options.prefix))
        .await;
    for region in regions.unwrap_or_default() {
        let Ok(region) = RegionId::parse(&region) else {
            continue;
        };
        if let Err(error) = store.region(&region).await {
            tracing::warn!(%error, region = %region, "could not start following a region");
        }
    }
    true
}
