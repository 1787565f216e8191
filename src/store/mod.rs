//! The one persistence and coordination seam: every write goes through a [`Store`].
//!
//! A store holds no business rule. It reads records with their versions, commits new
//! versions atomically (compare-and-set: a write computed from a version that is no
//! longer current is refused, and the service decides again), and makes every commit
//! reach every instance's engine. What a record is, per kind, is `table::Aggregate`.
//!
//! Backends: [`durable::DurableStore`] (the engine, every commit first synced to a
//! SQLite file; the single binary's default), [`embedded::EmbeddedStore`] (the engine
//! alone, nothing kept: `--store memory`, tests) and [`redis::RedisStore`]. All pass
//! the same conformance suite (`tests/it/store_conformance.rs`).

pub mod carpark;
pub mod durable;
pub mod embedded;
pub mod fuzzing;
pub mod redis;
pub mod reservation;
pub mod session;
pub mod shared;
pub mod table;

use std::future::Future;

use tokio::sync::watch;

use crate::domain::{CarParkId, RegionId, Result, Timestamp};
pub use table::{Aggregate, AnyWrite, Change, Committed, Encoded, Parts, Versioned, Write};

/// Whether a car park id could be claimed for a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed; a new version of the car park must exceed `floor` (the version it was
    /// last deleted at in any region, or 0).
    Claimed { floor: u64 },
    /// Another region holds the id.
    Taken(RegionId),
}

/// Writes of the city, each one atomic in the backend and acknowledged only once it is
/// durable there. Reads are the engine's business; a store reads only to settle a
/// conflict or to find what this instance's engine does not hold yet.
pub trait Store: Send + Sync + 'static {
    /// A short name for logs ("embedded", "redis").
    fn name(&self) -> &'static str;

    /// Records as the authority holds them now, by (region, id).
    fn fetch<A: Aggregate>(
        &self,
        keys: Vec<(RegionId, String)>,
    ) -> impl Future<Output = Result<Vec<Versioned<A>>>> + Send;

    /// Commits each write if its record is still at the version it was computed from,
    /// and makes it visible in this instance's engine before returning. An error says
    /// that write was not made (the backend is unreachable). `what` says what the writes
    /// are for, as metrics name it ("registry", "ingest").
    /// `now` is when the writes were decided, for the status watchers are shown.
    fn commit<A: Aggregate>(
        &self,
        writes: Vec<Write<A>>,
        what: &'static str,
        now: Timestamp,
    ) -> impl Future<Output = Vec<Result<Committed>>> + Send;

    /// Commits `writes` (of any kinds, all of one region) together: all of them, if
    /// every record is still at the version its write was computed from, else none.
    /// Answers one `Committed` per write, all `Written` or all `Conflict`; an error says
    /// nothing was made, or (Redis unreachable mid-call) that it may have been. Visible
    /// in this instance's engine before returning, like `commit`.
    fn commit_group(
        &self,
        writes: Vec<AnyWrite>,
        what: &'static str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Committed>>> + Send;

    /// Claims a car park id for `region`: ids are unique in a deployment, while each
    /// region's records live apart.
    fn claim_id(
        &self,
        id: &CarParkId,
        region: &RegionId,
    ) -> impl Future<Output = Result<Claim>> + Send;

    /// Frees the id of a car park deleted at `version`, for any region to claim.
    fn release_id(&self, id: &CarParkId, version: u64) -> impl Future<Output = ()> + Send;

    /// The region each id is registered in, per the authority; `None` for ids that
    /// are not. For ids this instance's engine does not hold (yet).
    fn locate(
        &self,
        ids: Vec<CarParkId>,
    ) -> impl Future<Output = Result<Vec<Option<RegionId>>>> + Send;

    /// Drops the backend's tombstones of removed records made more than `grace` ago
    /// (each engine forgets its own: `Engine::compact_tombstones`); how many, by kind.
    /// Nothing to do for the embedded store, whose engine is the backend.
    fn compact_tombstones(
        &self,
        _grace: std::time::Duration,
    ) -> impl Future<Output = Result<Vec<(&'static str, u64)>>> + Send {
        std::future::ready(Ok(Vec::new()))
    }

    /// Whether writes can reach the backend, as it changes; `None` if always.
    fn health(&self) -> Option<watch::Receiver<bool>> {
        None
    }

    /// Whether a commit costs a round trip, so that concurrent calls gain from being
    /// decided and committed together.
    fn batches_writes(&self) -> bool {
        false
    }

    /// Round trips made to the backend for RPCs so far, replication not counted (0 for
    /// the embedded store). Queries never add to it.
    fn round_trips(&self) -> u64 {
        0
    }

    /// Stops the store's background tasks (stream followers, heartbeat) and waits for
    /// them. Writes are made in their callers' tasks, which shut down first.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The backend a server runs on, chosen at start.
pub enum AnyStore {
    Embedded(embedded::EmbeddedStore),
    Durable(durable::DurableStore),
    Redis(redis::RedisStore),
}

/// Calls the same method on whichever backend it is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call,
            AnyStore::Durable($s) => $call,
            AnyStore::Redis($s) => $call,
        }
    };
}

impl Store for AnyStore {
    fn name(&self) -> &'static str {
        each!(self, s => s.name())
    }

    async fn fetch<A: Aggregate>(
        &self,
        keys: Vec<(RegionId, String)>,
    ) -> Result<Vec<Versioned<A>>> {
        each!(self, s => s.fetch(keys).await)
    }

    async fn commit<A: Aggregate>(
        &self,
        writes: Vec<Write<A>>,
        what: &'static str,
        now: Timestamp,
    ) -> Vec<Result<Committed>> {
        each!(self, s => s.commit(writes, what, now).await)
    }

    async fn commit_group(
        &self,
        writes: Vec<AnyWrite>,
        what: &'static str,
        now: Timestamp,
    ) -> Result<Vec<Committed>> {
        each!(self, s => s.commit_group(writes, what, now).await)
    }

    async fn claim_id(&self, id: &CarParkId, region: &RegionId) -> Result<Claim> {
        each!(self, s => s.claim_id(id, region).await)
    }

    async fn release_id(&self, id: &CarParkId, version: u64) {
        each!(self, s => s.release_id(id, version).await)
    }

    async fn locate(&self, ids: Vec<CarParkId>) -> Result<Vec<Option<RegionId>>> {
        each!(self, s => s.locate(ids).await)
    }

    async fn compact_tombstones(
        &self,
        grace: std::time::Duration,
    ) -> Result<Vec<(&'static str, u64)>> {
        each!(self, s => s.compact_tombstones(grace).await)
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        each!(self, s => s.health())
    }

    fn batches_writes(&self) -> bool {
        each!(self, s => s.batches_writes())
    }

    fn round_trips(&self) -> u64 {
        each!(self, s => s.round_trips())
    }

    async fn close(&self) {
        each!(self, s => s.close().await)
    }
}
