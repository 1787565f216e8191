//! Use cases: registry, ingest, queries and watches, over one engine and one store.
//!
//! The service decides who may do what and where reads and writes go: writes go to
//! the store (the authority), reads to the engine (never a round trip).

pub mod clock;
mod watch;

use std::{sync::Arc, time::Duration};

pub use clock::{Clock, ManualClock, SystemClock};
pub use watch::{WatchEvent, WatchSelector};

use crate::{
    domain::{
        Availability, CarPark, CarParkId, Error, NearbyQuery, OperatorId, RegionId, Report, Result,
        Timestamp,
    },
    engine::{Applied, Engine, Nearby},
    metrics,
    store::Store,
};

/// Limits that protect the service from one client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most ids in one GetAvailability or watch.
    pub max_ids: usize,
    /// Most reports in one Publish message.
    pub max_batch: usize,
    /// Most car parks a watched area may hold.
    pub max_watch_car_parks: usize,
    /// Events buffered for one watcher before it is considered behind.
    pub watch_buffer: usize,
    /// Most car parks on one ListCarParks page.
    pub max_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ids: 1_000,
            max_batch: 1_000,
            max_watch_car_parks: 10_000,
            watch_buffer: 256,
            max_page_size: 1_000,
        }
    }
}

/// The use cases of citypark.
#[derive(Clone)]
pub struct Service {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

impl Service {
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Self {
        Self {
            engine,
            store,
            clock,
            limits,
        }
    }

    /// The service's idea of now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registers or replaces a car park of `caller`'s.
    pub async fn upsert_car_park(
        &self,
        caller: &OperatorId,
        car_park: CarPark,
    ) -> Result<(Arc<CarPark>, bool)> {
        self.store
            .upsert_car_park(car_park, caller.clone(), self.now())
            .await
    }

    /// One car park and its live state.
    pub fn get_car_park(&self, id: &CarParkId) -> Result<(Arc<CarPark>, Availability)> {
        self.engine
            .get(id.as_str(), self.now())
            .ok_or_else(|| Error::car_park_not_found(id))
    }

    /// A page of car parks; the page token is the last id of the previous page.
    pub fn list_car_parks(
        &self,
        region: Option<&RegionId>,
        operator: Option<&OperatorId>,
        page_token: Option<&CarParkId>,
        page_size: usize,
    ) -> Result<(Vec<Arc<CarPark>>, Option<CarParkId>)> {
        if page_size == 0 || page_size > self.limits.max_page_size {
            return Err(Error::invalid(
                "page_size",
                format!("must be 1 to {}", self.limits.max_page_size),
            ));
        }
        let (page, more) = self.engine.list(
            region,
            operator,
            page_token.map(CarParkId::as_str),
            page_size,
        );
        let next = if more {
            page.last().map(|cp| cp.id.clone())
        } else {
            None
        };
        Ok((page, next))
    }

    /// Removes a car park of `caller`'s.
    pub async fn delete_car_park(&self, caller: &OperatorId, id: CarParkId) -> Result<()> {
        self.store.delete_car_park(id, caller.clone()).await
    }

    /// Applies reports for `caller`, in order, each with its own result.
    pub async fn report(
        &self,
        caller: &OperatorId,
        reports: Vec<Report>,
    ) -> Result<Vec<Result<Applied>>> {
        if reports.len() > self.limits.max_batch {
            return Err(Error::ResourceExhausted(format!(
                "more than {} reports in one message",
                self.limits.max_batch
            )));
        }
        let count = reports.len() as u64;
        let results = self
            .store
            .apply_reports(reports, caller.clone(), self.now())
            .await;
        match &results {
            Ok(results) => results.iter().for_each(metrics::record_report),
            Err(error) => metrics::record_batch_failure(error, count),
        }
        results
    }

    /// The nearest car parks the query admits.
    pub fn find_nearby(&self, query: &NearbyQuery) -> Vec<Nearby> {
        self.engine.nearby(query, self.now())
    }

    /// Live states by id, in request order, and the ids that are not registered.
    pub fn get_availability(
        &self,
        ids: &[CarParkId],
    ) -> Result<(Vec<Availability>, Vec<CarParkId>)> {
        if ids.is_empty() || ids.len() > self.limits.max_ids {
            return Err(Error::invalid(
                "car_park_ids",
                format!("must list 1 to {} ids", self.limits.max_ids),
            ));
        }
        let now = self.now();
        let (mut found, mut missing) = (Vec::with_capacity(ids.len()), Vec::new());
        for id in ids {
            match self.engine.availability(id.as_str(), now) {
                Some(a) => found.push(a),
                None => missing.push(id.clone()),
            }
        }
        Ok((found, missing))
    }

    /// Tells watchers of status changes that come with time alone, every `every`,
    /// and keeps the status gauges current; runs until `shutdown`.
    pub async fn sweep_statuses(
        &self,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            metrics::record_statuses(&self.engine.sweep_status(self.now()));
        }
    }
}
