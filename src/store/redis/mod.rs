//! The Redis backend: Redis is the authority, the engine each instance's replica.
//!
//! Every write is one atomic step in Redis (`write.lua`: compare the car park's
//! version, store, count, append to the region's change stream) and is acknowledged
//! only after Redis confirmed it. Every instance tails each region's stream on a
//! connection of its own and applies the changes to its engine, so queries and
//! watches are served locally and see writes made on any instance. See
//! ARCHITECTURE.md for the key schema and the consistency guarantees.

mod conn;
mod keys;
mod tail;
mod writer;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{AsyncCommands, Script};
use tokio::sync::{Mutex, mpsc, watch};

use super::{Store, StoreFuture};
use crate::{
    domain::{CarPark, CarParkId, Error, Live, OperatorId, RegionId, Report, Result, Timestamp},
    engine::{Applied, Engine},
    metrics,
    service::Clock,
};
use conn::{Conn, Target};
pub use conn::{parse_target, redact};
use keys::RegionKeys;
use tail::RegionTail;

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
    /// Longest a write waits for this instance's replica to show it (read-your-writes).
    pub apply_wait: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "cp".into(),
            connect_timeout: Duration::from_secs(30),
            stream_max_len: 100_000,
            apply_wait: Duration::from_secs(5),
        }
    }
}

/// The message of every write refused because Redis is unreachable. Redis's own text
/// goes to the log, not to clients.
const UNAVAILABLE: &str = "the store (Redis) is unavailable; the write was not made, retry later";

fn unavailable(error: &redis::RedisError) -> Error {
    tracing::warn!(%error, "redis write failed");
    Error::Unavailable(UNAVAILABLE.into())
}

/// State shared by the store, its tails and its writer.
struct Shared {
    target: Target,
    conn: Conn,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    options: RedisOptions,
    write: Script,
    position: Script,
    claim: Script,
    regions: Mutex<HashMap<RegionId, Arc<RegionTail>>>,
    healthy: watch::Sender<bool>,
    round_trips: AtomicU64,
}

impl Shared {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn keys(&self, region: &RegionId) -> RegionKeys {
        RegionKeys::new(&self.options.prefix, region)
    }

    /// Counts one round trip to Redis, by what it was for. The store's own counter
    /// counts only those made for RPCs (registry and ingest), not replication.
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

    /// The tail of `region`, started (snapshot loaded, stream followed) if new here.
    async fn region(self: &Arc<Self>, region: &RegionId) -> Result<Arc<RegionTail>> {
        let mut regions = self.regions.lock().await;
        if let Some(tail) = regions.get(region) {
            return Ok(tail.clone());
        }
        let tail = RegionTail::start(self.clone(), region.clone()).await?;
        regions.insert(region.clone(), tail.clone());
        Ok(tail)
    }

    /// Runs one `write.lua`, in its own round trip.
    async fn write_one(
        &self,
        keys: &RegionKeys,
        write: &Write<'_>,
        what: &'static str,
    ) -> Result<WriteResult> {
        let mut pipe = redis::pipe();
        pipe.load_script(&self.write).ignore();
        pipe.invoke_script(&self.write_invocation(keys, write));
        let mut conn = self.conn.clone();
        self.round_trip(what);
        let (reply,): (Vec<i64>,) = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        self.set_healthy(true);
        WriteResult::parse(&reply)
    }

    fn write_invocation<'a>(
        &'a self,
        keys: &RegionKeys,
        write: &Write<'_>,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = self.write.prepare_invoke();
        invocation
            .key(&keys.parks)
            .key(&keys.live)
            .key(&keys.versions)
            .key(&keys.counter)
            .key(&keys.changes)
            .arg(write.op)
            .arg(write.id.as_str())
            .arg(write.expected)
            .arg(write.park)
            .arg(write.live)
            .arg(self.options.stream_max_len)
            .arg(write.floor);
        invocation
    }

    /// A car park's state as Redis holds it: (registration and live, version).
    async fn fetch(
        &self,
        keys: &RegionKeys,
        id: &CarParkId,
        what: &'static str,
    ) -> Result<(Option<(CarPark, Live)>, u64)> {
        let mut conn = self.conn.clone();
        self.round_trip(what);
        let (park, live, version): (Option<String>, Option<String>, Option<u64>) = redis::pipe()
            .hget(&keys.parks, id.as_str())
            .hget(&keys.live, id.as_str())
            .hget(&keys.versions, id.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let state = match (park, live) {
            (Some(park), Some(live)) => Some((decode(&park)?, decode(&live)?)),
            _ => None,
        };
        Ok((state, version.unwrap_or(0)))
    }

    /// The owner of each id (the region its car park is in) as Redis holds it; `None`
    /// for an id no region holds. The lookups go out together (ids are in different
    /// Cluster slots, so not in one pipeline).
    async fn owners(
        &self,
        ids: &[&CarParkId],
        what: &'static str,
    ) -> Result<Vec<Option<RegionId>>> {
        let mut lookups = tokio::task::JoinSet::new();
        for (k, id) in ids.iter().enumerate() {
            let (mut conn, key) = (self.conn.clone(), keys::id_owner(&self.options.prefix, id));
            self.round_trip(what);
            lookups.spawn(async move { (k, conn.get::<_, Option<String>>(key).await) });
        }
        let mut owners = vec![None; ids.len()];
        while let Some(done) = lookups.join_next().await {
            let (k, owner) = done.map_err(|e| Error::Internal(format!("owner lookup: {e}")))?;
            // Anything but a region ("deleted:<version>") means no car park.
            owners[k] = owner
                .map_err(|e| unavailable(&e))?
                .and_then(|r| RegionId::parse(&r).ok());
        }
        Ok(owners)
    }

    /// The state of a car park this replica does not hold, from Redis, for the region
    /// `owner` says it is in; the region is followed here from then on. A car park
    /// registered through another instance may not have reached this replica yet (its
    /// region may not even be followed here yet): Redis, not the replica, says whether
    /// a car park exists.
    async fn fetch_unknown(
        self: &Arc<Self>,
        id: &CarParkId,
        owner: Option<RegionId>,
        what: &'static str,
    ) -> Result<(Option<(CarPark, Live)>, u64)> {
        let Some(region) = owner else {
            return Ok((None, self.engine.versioned(id.as_str()).1));
        };
        self.region(&region).await?;
        self.fetch(&self.keys(&region), id, what).await
    }

    /// Waits until this instance's replica has applied change `n` of `region`, so a
    /// client that wrote through this instance reads its write here. A write is durable
    /// once Redis confirmed it; if the replica lags past the wait, the write stands and
    /// the lag is logged.
    async fn await_applied(self: &Arc<Self>, region: &RegionId, n: u64) {
        let Ok(tail) = self.region(region).await else {
            return;
        };
        if !tail.wait_applied(n, self.options.apply_wait).await {
            tracing::warn!(region = %region, change = n, "replica did not catch up within the apply wait");
        }
    }
}

/// The arguments of one `write.lua`.
struct Write<'a> {
    /// "put", "live" or "del".
    op: &'static str,
    id: &'a CarParkId,
    /// The version the write was computed from.
    expected: u64,
    /// Registration JSON ("put" only).
    park: &'a str,
    /// Live state JSON ("put" and "live").
    live: &'a str,
    /// The version the id was deleted at, in any region ("put" only; else 0).
    floor: u64,
}

/// What `write.lua` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteResult {
    Written { n: u64, version: u64 },
    Conflict { version: u64 },
    Missing,
}

impl WriteResult {
    fn parse(reply: &[i64]) -> Result<Self> {
        match reply {
            [1, n, v] => Ok(WriteResult::Written {
                n: *n as u64,
                version: *v as u64,
            }),
            [0, v] => Ok(WriteResult::Conflict { version: *v as u64 }),
            [-1, _] => Ok(WriteResult::Missing),
            other => Err(Error::Internal(format!(
                "unexpected reply from write.lua: {other:?}"
            ))),
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("domain values serialize")
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("undecodable state in Redis: {e}")))
}

/// The Redis store. Cloning shares it.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
    writer: mpsc::Sender<writer::Job>,
}

/// How many times a write is recomputed after another instance changed the car park first.
const MAX_ATTEMPTS: usize = 5;

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
            position: Script::new(include_str!("position.lua")),
            claim: Script::new(include_str!("claim.lua")),
            regions: Mutex::new(HashMap::new()),
            healthy,
            round_trips: AtomicU64::new(0),
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
        tokio::spawn(tail::discover_regions(Arc::downgrade(&shared)));
        let writer = writer::spawn(shared.clone());
        Ok(Self { shared, writer })
    }

    async fn upsert(&self, car_park: CarPark, caller: OperatorId) -> Result<(Arc<CarPark>, bool)> {
        let shared = &self.shared;
        let region = car_park.region.clone();
        let keys = shared.keys(&region);
        // The rules first, against this replica, so that a refusal is the embedded
        // store's: whose a car park is comes before where it is, so another operator
        // learns nothing about it. Redis decides below (the claim, the versioned write).
        let (known, mut version) = shared.engine.versioned(car_park.id.as_str());
        let mut existing = known.map(|(c, l)| ((*c).clone(), l));
        car_park
            .clone()
            .replacing(existing.as_ref().map(|(c, l)| (c, l)), &caller)?;
        let floor = self.claim_id(&car_park.id, &region).await?;
        if !shared.regions.lock().await.contains_key(&region) {
            let mut conn = shared.conn.clone();
            shared.round_trip("registry");
            let _: i64 = conn
                .sadd(keys::regions(&shared.options.prefix), region.as_str())
                .await
                .map_err(|e| unavailable(&e))?;
            shared.region(&region).await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let created = existing.is_none();
            let (new, live) = car_park
                .clone()
                .replacing(existing.as_ref().map(|(c, l)| (c, l)), &caller)?;
            let (park, live) = (encode(&new), encode(&live));
            let write = Write {
                op: "put",
                id: &new.id,
                expected: version,
                park: &park,
                live: &live,
                floor,
            };
            match shared.write_one(&keys, &write, "registry").await? {
                WriteResult::Written { n, .. } => {
                    shared.await_applied(&region, n).await;
                    return Ok((Arc::new(new), created));
                }
                WriteResult::Conflict { .. } | WriteResult::Missing => {
                    (existing, version) = shared.fetch(&keys, &car_park.id, "registry").await?;
                }
            }
        }
        Err(Error::Unavailable(format!(
            "car park {} changed concurrently too often; retry",
            car_park.id
        )))
    }

    /// Makes sure `id` is not registered in another region (ids are unique in the
    /// deployment, while each region's keys live in their own slot) and claims it for
    /// `region`; returns the version it was last deleted at (0 if never), which its
    /// next version must exceed (`claim.lua`).
    async fn claim_id(&self, id: &CarParkId, region: &RegionId) -> Result<u64> {
        let shared = &self.shared;
        let mut conn = shared.conn.clone();
        shared.round_trip("registry");
        let (claimed, answer): (i64, String) = shared
            .claim
            .key(keys::id_owner(&shared.options.prefix, id))
            .arg(region.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        if claimed == 1 {
            return answer
                .parse()
                .map_err(|_| Error::Internal(format!("bad floor {answer:?} from claim.lua")));
        }
        Err(Error::FailedPrecondition(format!(
            "car park {id} is in region {answer}; delete it to move it to {region}"
        )))
    }

    async fn delete(&self, id: CarParkId, caller: OperatorId) -> Result<()> {
        let shared = &self.shared;
        let (mut existing, mut version) = {
            let (state, version) = shared.engine.versioned(id.as_str());
            (state.map(|(c, l)| ((*c).clone(), l)), version)
        };
        if existing.is_none() {
            let owner = shared.owners(&[&id], "registry").await?.pop().flatten();
            (existing, version) = shared.fetch_unknown(&id, owner, "registry").await?;
        }
        for _ in 0..MAX_ATTEMPTS {
            let Some((car_park, _)) = &existing else {
                return Err(Error::car_park_not_found(&id));
            };
            car_park.check_owner(&caller)?;
            let region = car_park.region.clone();
            let keys = shared.keys(&region);
            let write = Write {
                op: "del",
                id: &id,
                expected: version,
                park: "",
                live: "",
                floor: 0,
            };
            match shared.write_one(&keys, &write, "registry").await? {
                WriteResult::Written { n, version } => {
                    // The delete stands once written; freeing the id for other regions
                    // is best effort (a leftover claim only stops a move elsewhere). The
                    // freed claim keeps the version reached, for `claim.lua`.
                    let mut conn = shared.conn.clone();
                    shared.round_trip("registry");
                    let freed: redis::RedisResult<()> = conn
                        .set(
                            keys::id_owner(&shared.options.prefix, &id),
                            format!("deleted:{version}"),
                        )
                        .await;
                    if let Err(error) = freed {
                        tracing::warn!(%error, car_park = %id, "could not free a deleted car park's id");
                    }
                    shared.await_applied(&region, n).await;
                    return Ok(());
                }
                WriteResult::Conflict { .. } | WriteResult::Missing => {
                    (existing, version) = shared.fetch(&keys, &id, "registry").await?;
                }
            }
        }
        Err(Error::Unavailable(format!(
            "car park {id} changed concurrently too often; retry"
        )))
    }
}

impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn upsert_car_park(
        &self,
        car_park: CarPark,
        caller: OperatorId,
        _now: Timestamp,
    ) -> StoreFuture<'_, (Arc<CarPark>, bool)> {
        Box::pin(self.upsert(car_park, caller))
    }

    fn delete_car_park(&self, id: CarParkId, caller: OperatorId) -> StoreFuture<'_, ()> {
        Box::pin(self.delete(id, caller))
    }

    fn apply_reports(
        &self,
        reports: Vec<Report>,
        caller: OperatorId,
        now: Timestamp,
    ) -> StoreFuture<'_, Vec<Result<Applied>>> {
        Box::pin(writer::submit(&self.writer, reports, caller, now))
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        Some(self.shared.healthy.subscribe())
    }

    fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }
}

/// Whether a Redis error means the connection is gone (rather than a bad command).
fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}
