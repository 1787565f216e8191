//! Availability use cases: nearest-available, live states by id, and the status sweep.

use std::time::Duration;

use super::Service;
use crate::{
    domain::{Arrival, Availability, CarParkId, Error, NearbyQuery, Result},
    engine::Nearby,
    metrics,
};

impl Service {
    /// The nearest car parks the query admits.
    pub fn find_nearby(&self, query: &NearbyQuery) -> Result<Vec<Nearby>> {
        let now = self.now();
        match query.arrival {
            Some(arrival) => {
                let mut query = query.clone();
                query.arrival = Some(Arrival {
                    at: Arrival::time(arrival.at, now, "arrival_time")?,
                    ..arrival
                });
                Ok(self.engine.nearby(&query, now))
            }
            None => Ok(self.engine.nearby(query, now)),
        }
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
        let mut gauges = metrics::CarParkGauges::default();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            gauges.record(&self.engine.sweep_status(self.now()));
        }
    }
}
