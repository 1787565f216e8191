//! The Redis backend: Redis is the authority, the engine each instance's replica.
//!
//! Every write is one atomic step in Redis (`write.lua`: compare the record's version,
//! store, count, append to the region's change stream), for any aggregate kind, and is
//! acknowledged only after Redis confirmed it. Every instance follows each region's
//! stream on a connection of its own and applies the changes to its engine, so queries
//! and watches are served locally and see writes made on any instance. See
//! ARCHITECTURE.md for the key schema and the consistency guarantees.

mod conn;
mod ids;
mod keys;
pub(crate) mod kinds;
mod snapshot;
mod tail;
mod writer;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, Script};
use tokio::sync::{Mutex, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Aggregate, AnyWrite, Claim, Committed, Store, Versioned, Write, table};
use crate::{
    clock::Clock,
    domain::{CarParkId, Error, RegionId, Result, Timestamp, account_regions},
    engine::Engine,
    metrics,
};
use conn::{Conn, Target};
pub use conn::{parse_target, redact};
use keys::RegionKeys;

/// How to reach and use Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://…`, `rediss://…`, `redis+cluster://h1:p1,h2:p2`.
    pub url: String,
    /// Prefix of every key (`cp` → `cp:{qingdao}:parks`).
    pub prefix: String,
    /// How long start-up keeps trying to reach Redis before it gives up.
    pub connect_timeout: Duration,
    /// Approximate length each region's change stream is capped at.
    pub stream_max_len: u64,
    /// How often an idle instance checks that Redis answers (health follows it).
    pub heartbeat: Duration,
    /// How often the set of regions is read for one whose announcement this instance
    /// missed (new regions are announced on a stream every instance follows).
    pub regions_poll: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "cp".into(),
            connect_timeout: Duration::from_secs(30),
            stream_max_len: 100_000,
            heartbeat: Duration::from_secs(1),
            regions_poll: Duration::from_secs(1),
        }
    }
}

/// The message of every call refused because Redis could not be reached. Redis's own
/// text goes to the log, not to clients.
const UNAVAILABLE: &str = "the store (Redis) is unavailable; the write was not made, retry later";
/// The message of a write sent to Redis whose answer never came (a timeout, a dropped
/// connection, a failover in progress): Redis may still have made it.
const UNCONFIRMED: &str = "the store (Redis) is unavailable and did not confirm the write; \
     it may have been made: retry it (a report resent with its sequence is acknowledged \
     DUPLICATE if it was made)";

fn unavailable(error: &redis::RedisError) -> Error {
    tracing::warn!(%error, "redis call failed");
    Error::Unavailable(UNAVAILABLE.into())
}

/// The error of a write that failed with `error`: not made if Redis was never reached,
/// else of unknown outcome, and the client is told so.
fn unconfirmed(error: &redis::RedisError) -> Error {
    if error.is_connection_refusal() {
        return unavailable(error);
    }
    tracing::warn!(%error, "redis write unconfirmed");
    Error::Unavailable(UNCONFIRMED.into())
}

/// State shared by the store, its tails and its heartbeat.
struct Shared {
    target: Target,
    conn: Conn,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    options: RedisOptions,
    write: Script,
    snapshot: Script,
    position: Script,
    claim: Script,
    compact: Script,
    /// The regions followed here.
    regions: Mutex<HashSet<RegionId>>,
    healthy: watch::Sender<bool>,
    round_trips: AtomicU64,
    /// Every background task of the store, so `close` can wait for them.
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Shared {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn keys(&self, region: &RegionId) -> RegionKeys {
        RegionKeys::new(&self.options.prefix, region)
    }

    /// Counts one round trip to Redis, by what it was for. The store's own counter
    /// counts only those made for RPCs (writes), not replication.
    fn round_trip(&self, op: &'static str) {
        if matches!(op, "registry" | "ingest") {
            self.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        metrics::record_redis_round_trip(op);
    }

    fn set_healthy(&self, up: bool) {
        self.healthy
            .send_if_modified(|h| std::mem::replace(h, up) != up);
    }

    /// Runs `task` until the store closes; `close` waits for it.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Follows `region` (snapshot loaded, stream followed) if it is new here.
    async fn region(self: &Arc<Self>, region: &RegionId) -> Result<()> {
        let mut regions = self.regions.lock().await;
        if !regions.contains(region) {
            tail::start(self, region.clone()).await?;
            regions.insert(region.clone());
        }
        Ok(())
    }

    /// Records of kind `A` in `region` as Redis holds them, read consistently
    /// (`snapshot.lua`); in id order of `ids`.
    async fn read<A: Aggregate>(
        &self,
        region: &RegionId,
        ids: &[String],
        what: &'static str,
    ) -> Result<Vec<Versioned<A>>> {
        let keys = self.keys(region);
        let mut invocation = self.snapshot.key(keys.versions::<A>());
        for part in keys.parts::<A>() {
            invocation.key(part);
        }
        for id in ids {
            invocation.arg(id);
        }
        let mut conn = self.conn.clone();
        self.round_trip(what);
        let columns: snapshot::Columns = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        snapshot::decode_rows::<A>(&columns, ids.len())
    }
}

/// The Redis store. Cloning shares it.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

impl RedisStore {
    /// Connects (retrying with backoff up to `connect_timeout`), loads every region's
    /// snapshot into `engine` and starts following the change streams.
    pub async fn open(
        options: RedisOptions,
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let target = parse_target(&options.url).map_err(|e| Error::invalid("--store", e))?;
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        let mut backoff = Duration::from_millis(100);
        let conn = loop {
            let attempt = async {
                let mut conn = Conn::connect(&target).await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok::<_, redis::RedisError>(conn)
            };
            match attempt.await {
                Ok(conn) => break conn,
                Err(error) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::warn!(%error, url = %redact(&options.url), retry_in = ?backoff, "redis not reachable yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    return Err(Error::Unavailable(format!(
                        "cannot reach Redis at {} within {:?}: {error}",
                        redact(&options.url),
                        options.connect_timeout
                    )));
                }
            }
        };
        let (healthy, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            target,
            conn,
            engine,
            clock,
            options,
            write: Script::new(include_str!("write.lua")),
            snapshot: Script::new(include_str!("snapshot.lua")),
            position: Script::new(include_str!("position.lua")),
            claim: Script::new(include_str!("claim.lua")),
            compact: Script::new(include_str!("compact.lua")),
            regions: Mutex::new(HashSet::new()),
            healthy,
            round_trips: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        });
        let mut conn = shared.conn.clone();
        shared.round_trip("start");
        let regions: Vec<String> = conn
            .smembers(keys::regions(&shared.options.prefix))
            .await
            .map_err(|e| unavailable(&e))?;
        for region in regions {
            let region = RegionId::parse(&region)
                .map_err(|_| Error::Internal(format!("bad region {region:?} in Redis")))?;
            shared.region(&region).await?;
        }
        // Plate links, wallets and ledger entries live in the account shards, which
        // every instance follows from the start.
        for region in account_regions() {
            shared.region(&region).await?;
        }
        shared.spawn(tail::discover_regions(Arc::downgrade(&shared)));
        shared.spawn(heartbeat(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn compact_tombstones(&self, grace: Duration) -> Result<Vec<(&'static str, u64)>> {
        /// Tombstones one call of the script looks at, and calls per region at most.
        const PER_CALL: usize = 10_000;
        const CALLS: usize = 10;
        let shared = &self.shared;
        let regions: Vec<RegionId> = shared.regions.lock().await.iter().cloned().collect();
        let compacted: Vec<&'static dyn kinds::Kind> = kinds::KINDS
            .iter()
            .copied()
            .filter(|k| k.compacted())
            .collect();
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for region in regions {
            let keys = shared.keys(&region);
            let hashes: Vec<String> = compacted.iter().map(|k| keys.hash(k.versions())).collect();
            for _ in 0..CALLS {
                let mut invocation = shared.compact.key(&keys.tombstones);
                invocation.key(&keys.changes);
                for hash in &hashes {
                    invocation.key(hash);
                }
                invocation.arg(grace.as_millis() as u64).arg(PER_CALL);
                let mut conn = shared.conn.clone();
                shared.round_trip("compact");
                let (dropped, more): (Vec<String>, u8) = invocation
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| unavailable(&e))?;
                for hash in dropped {
                    if let Some(i) = hashes.iter().position(|h| *h == hash) {
                        *counts.entry(compacted[i].name()).or_default() += 1;
                    }
                }
                if more == 0 {
                    break;
                }
            }
        }
        Ok(counts.into_iter().collect())
    }

    async fn fetch<A: Aggregate>(
        &self,
        keys: Vec<(RegionId, String)>,
    ) -> Result<Vec<Versioned<A>>> {
        let mut by_region: HashMap<&RegionId, Vec<usize>> = HashMap::new();
        for (i, (region, _)) in keys.iter().enumerate() {
            by_region.entry(region).or_default().push(i);
        }
        let mut out: Vec<Versioned<A>> = keys.iter().map(|_| Versioned::none()).collect();
        for (region, positions) in by_region {
            let ids: Vec<String> = positions.iter().map(|&i| keys[i].1.clone()).collect();
            let read = self.shared.read::<A>(region, &ids, "registry").await?;
            for (i, versioned) in positions.into_iter().zip(read) {
                out[i] = versioned;
            }
        }
        Ok(out)
    }

    async fn commit<A: Aggregate>(
        &self,
        writes: Vec<Write<A>>,
        what: &'static str,
        now: Timestamp,
    ) -> Vec<Result<Committed>> {
        let groups = table::each_alone(writes);
        table::alone_answers(writer::write(&self.shared, groups, what, now).await)
    }

    async fn commit_group(
        &self,
        writes: Vec<AnyWrite>,
        what: &'static str,
        now: Timestamp,
    ) -> Result<Vec<Committed>> {
        writer::write(&self.shared, vec![writes], what, now)
            .await
            .pop()
            .expect("one group, one answer")
    }

    async fn claim_id(&self, id: &CarParkId, region: &RegionId) -> Result<Claim> {
        ids::claim(&self.shared, id, region).await
    }

    async fn release_id(&self, id: &CarParkId, version: u64) {
        ids::release(&self.shared, id, version).await
    }

    async fn locate(&self, ids: Vec<CarParkId>) -> Result<Vec<Option<RegionId>>> {
        ids::locate(&self.shared, &ids).await
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        Some(self.shared.healthy.subscribe())
    }

    fn batches_writes(&self) -> bool {
        true
    }

    fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

/// Checks every `heartbeat` that Redis answers, so health follows Redis even on an
/// instance that writes nothing and follows no region yet.
async fn heartbeat(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        let every = store.options.heartbeat;
        let mut conn = store.conn.clone();
        let ping = tokio::time::timeout(
            every.max(Duration::from_secs(1)) * 2,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let up = matches!(ping, Ok(Ok(_)));
        if !up && *store.healthy.borrow() {
            tracing::warn!("redis does not answer the heartbeat");
        }
        store.set_healthy(up);
        metrics::record_redis_round_trip("heartbeat");
        drop(store);
        tokio::time::sleep(every).await;
    }
}

/// Whether a Redis error means the connection is gone (rather than a bad command).
fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}
