//! The one persistence and coordination seam: every write goes through a [`Store`].
//!
//! Backends: [`embedded::EmbeddedStore`] (the engine itself; the default). Every
//! backend passes the same conformance suite (`tests/it/store_conformance.rs`).

pub mod embedded;
pub mod redis;

use std::{future::Future, pin::Pin, sync::Arc};

use crate::{
    domain::{CarPark, CarParkId, OperatorId, Report, Result, Timestamp},
    engine::Applied,
};

/// A boxed future, so that `Arc<dyn Store>` works with async methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Writes of the city, each one atomic in the backend and acknowledged only once it is
/// durable there. Reads are the engine's business, never the store's.
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics ("embedded", "redis").
    fn name(&self) -> &'static str;

    /// Registers or replaces a car park for `caller`; true if it is new.
    fn upsert_car_park(
        &self,
        car_park: CarPark,
        caller: OperatorId,
        now: Timestamp,
    ) -> StoreFuture<'_, (Arc<CarPark>, bool)>;

    /// Removes a car park of `caller`'s.
    fn delete_car_park(&self, id: CarParkId, caller: OperatorId) -> StoreFuture<'_, ()>;

    /// Applies reports in order for `caller`. The outer error fails the whole batch
    /// (nothing applied, e.g. the backend is unreachable); inner errors reject one report.
    fn apply_reports(
        &self,
        reports: Vec<Report>,
        caller: OperatorId,
        now: Timestamp,
    ) -> StoreFuture<'_, Vec<Result<Applied>>>;

    /// Whether writes can reach the backend, as it changes; `None` if always.
    fn health(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Round trips made to the backend for RPCs so far, replication not counted (0 for
    /// the embedded store). Queries never add to it.
    fn round_trips(&self) -> u64 {
        0
    }
}
