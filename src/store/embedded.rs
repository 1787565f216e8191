//! The embedded backend: the in-process engine is the authority; nothing is persisted.

use std::sync::Arc;

use super::{Store, StoreFuture};
use crate::{
    domain::{CarPark, CarParkId, OperatorId, Report, Timestamp},
    engine::Engine,
};

/// Writes straight into the engine; a restart starts from an empty city.
pub struct EmbeddedStore {
    engine: Arc<Engine>,
}

impl EmbeddedStore {
    /// A store whose authority is `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl Store for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn upsert_car_park(
        &self,
        car_park: CarPark,
        caller: OperatorId,
        now: Timestamp,
    ) -> StoreFuture<'_, (Arc<CarPark>, bool)> {
        Box::pin(async move { self.engine.upsert(car_park, &caller, now) })
    }

    fn delete_car_park(&self, id: CarParkId, caller: OperatorId) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.engine.delete(&id, &caller) })
    }

    fn apply_reports(
        &self,
        reports: Vec<Report>,
        caller: OperatorId,
        now: Timestamp,
    ) -> StoreFuture<'_, Vec<crate::domain::Result<crate::engine::Applied>>> {
        Box::pin(async move {
            Ok(reports
                .iter()
                .map(|r| self.engine.apply(r, &caller, now))
                .collect())
        })
    }
}
