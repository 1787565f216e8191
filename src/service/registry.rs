//! Registry use cases: register, replace, read, list and delete car parks.

use std::sync::Arc;

use super::{
    Service,
    write::{Decision, Target},
};
use crate::{
    domain::{Availability, CarPark, CarParkId, CarParkState, Error, OperatorId, RegionId, Result},
    store::{Change, Claim, Parts, Store, Versioned},
};

impl Service {
    /// Registers or replaces a car park of `caller`'s; true if it is new.
    pub async fn upsert_car_park(
        &self,
        caller: &OperatorId,
        car_park: CarPark,
    ) -> Result<(Arc<CarPark>, bool)> {
        let id = car_park.id.clone();
        let region = car_park.region.clone();
        let now = self.now();
        let mut current = Versioned::in_replica(&self.engine, id.as_str());
        // The rules first on what this instance holds, so that a refusal costs no
        // round trip; the store's claim and compare-and-set then settle races.
        CarParkState::upserted(current.record.as_ref(), car_park.clone(), caller, now)?;
        let floor = match self.store.claim_id(&id, &region).await? {
            Claim::Claimed { floor } => floor,
            Claim::Taken(held) => {
                // Whose a car park is comes before where it is, so another operator
                // learns nothing about it: the rules decide on what the other region holds.
                current = self
                    .store
                    .fetch(vec![(held.clone(), id.to_string())])
                    .await?
                    .pop()
                    .unwrap_or_else(Versioned::none);
                CarParkState::upserted(current.record.as_ref(), car_park, caller, now)?;
                return Err(CarPark::region_taken(&id, &held, &region));
            }
        };
        let target = Target {
            id: id.to_string(),
            current,
        };
        let decided = self
            .transact(
                "registry",
                vec![target],
                floor,
                |_, current: &Versioned<CarParkState>| {
                    let record = CarParkState::upserted(
                        current.record.as_ref(),
                        car_park.clone(),
                        caller,
                        now,
                    )?;
                    let stored = record.car_park.clone();
                    Ok(Decision {
                        change: Some(Change::put(record, Parts::ALL)),
                        output: (stored, current.record.is_none()),
                    })
                },
            )
            .await;
        let (output, _) = single(decided)?;
        Ok(output)
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
        let target = self
            .car_park_targets(std::slice::from_ref(&id))
            .await?
            .pop()
            .expect("one target per id");
        let decided = self
            .transact(
                "registry",
                vec![target],
                0,
                |_, current: &Versioned<CarParkState>| {
                    let record = current
                        .record
                        .as_ref()
                        .ok_or_else(|| Error::car_park_not_found(&id))?;
                    record.check_delete(caller)?;
                    Ok(Decision {
                        change: Some(Change::Delete),
                        output: (),
                    })
                },
            )
            .await;
        let ((), version) = single(decided)?;
        // The delete stands once committed; freeing the id for other regions is the
        // store's best effort.
        self.store.release_id(&id, version).await;
        Ok(())
    }

    /// What is known of each car park to write: this instance's engine first; the
    /// authority for ids the engine does not hold (registered through another instance
    /// a moment ago, perhaps in a region not followed here yet).
    pub(super) async fn car_park_targets(
        &self,
        ids: &[CarParkId],
    ) -> Result<Vec<Target<CarParkState>>> {
        let mut targets: Vec<Target<CarParkState>> = ids
            .iter()
            .map(|id| Target {
                id: id.to_string(),
                current: Versioned::in_replica(&self.engine, id.as_str()),
            })
            .collect();
        let unknown: Vec<usize> = (0..targets.len())
            .filter(|&i| targets[i].current.record.is_none())
            .collect();
        if unknown.is_empty() {
            return Ok(targets);
        }
        let regions = self
            .store
            .locate(unknown.iter().map(|&i| ids[i].clone()).collect())
            .await?;
        let found: Vec<(usize, RegionId)> = unknown
            .into_iter()
            .zip(regions)
            .filter_map(|(i, region)| region.map(|r| (i, r)))
            .collect();
        if found.is_empty() {
            return Ok(targets);
        }
        let keys = found
            .iter()
            .map(|(i, region)| (region.clone(), targets[*i].id.clone()))
            .collect();
        let fetched = self.store.fetch::<CarParkState>(keys).await?;
        for ((i, _), current) in found.into_iter().zip(fetched) {
            targets[i].current = current;
        }
        Ok(targets)
    }
}

/// The one result of a one-target transaction.
fn single<T>(mut results: Vec<Result<T>>) -> Result<T> {
    results.pop().expect("one result per target")
}
