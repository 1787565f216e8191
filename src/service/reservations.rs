//! Reservation use cases: create, read, list, cancel, check in and out, the calendar,
//! arrivals by plate, the no-show sweep and the dropping of old records.
//!
//! Every change is one group commit (`transact_group`): the reservation, and when the
//! change takes or frees slots, the slot counts of the days its window touches, all or
//! none, each at the version the rule decided on. Within an instance the changes at
//! one car park take turns (a lock per car park), so a thousand concurrent creates here
//! never conflict with each other; creates on other instances can, and then the
//! records are read from the authority and the rule decides again. A driver never sees
//! contention: only a full slot, a limit or a bad request refuses a create.
//!
//! A driver's limit on reservations held at once spans car parks, whose records live
//! in their own regions: a create first claims its reservation in the driver's
//! `ReservationClaims` record (one compare-and-set, in the driver's account shard),
//! where every create for the driver meets, and gives the claim back if it then makes
//! nothing.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use super::{Service, handoff::page_query};
use crate::{
    audit::{self, Who},
    domain::{
        Actor, Booking, CalendarSlot, CarPark, CarParkId, Created, DriverId, Error, OperatorId,
        PlateRead, RegionId, Reservation, ReservationClaims, ReservationId, ReservationRequest,
        ReservationState, Result, SlotCounts, SpaceCategory, Timestamp, calendar, calendar_slots,
        check_key_elsewhere, check_window, reserve,
    },
    history::KeptReservation,
    metrics,
    store::{Aggregate, AnyWrite, Change, Parts, Store, Versioned, Write},
};

/// How often a reservation change is decided again after another instance changed one
/// of its records first. Each instance changes a car park's reservations one at a
/// time, so a retry loses only to other instances' writes; this many losses in a row
/// do not happen in practice.
const ATTEMPTS: usize = 64;

/// Who calls: a driver (bearer token) or an operator (API key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Driver(DriverId),
    Operator(OperatorId),
}

/// Per car park, the turn to change its reservations on this instance.
#[derive(Default)]
pub(super) struct LedgerTurns(parking_lot::Mutex<HashMap<CarParkId, Arc<AsyncMutex<()>>>>);

impl LedgerTurns {
    pub(super) fn of(&self, car_park: &CarParkId) -> Arc<AsyncMutex<()>> {
        let mut turns = self.0.lock();
        // Drop the turns nobody waits for, so the map stays as small as the contention.
        if turns.len() > 1_024 {
            turns.retain(|_, m| Arc::strong_count(m) > 1);
        }
        turns.entry(car_park.clone()).or_default().clone()
    }
}

/// A write of `record` (all of it) decided on `expected`.
pub(super) fn put<A: Aggregate>(id: String, record: A, expected: u64) -> AnyWrite {
    Write {
        region: record.region().clone(),
        id,
        expected,
        floor: 0,
        change: Change::put(record, Parts::ALL),
    }
    .into()
}

/// The ids of the slot-count days of `car_park` that [start, end) touches.
fn day_ids(car_park: &CarParkId, start: Timestamp, end: Timestamp) -> Vec<String> {
    SlotCounts::days(start, end)
        .map(|day| SlotCounts::id_of(car_park.as_str(), day))
        .collect()
}

/// What a change of one reservation is decided on: the reservation, and the slot
/// counts of its days while it occupies slots.
type Current = (Versioned<Reservation>, Vec<Versioned<SlotCounts>>);

impl Service {
    /// Reserves a space for `driver`.
    pub async fn create_reservation(
        &self,
        driver: &DriverId,
        car_park: &CarParkId,
        request: ReservationRequest,
    ) -> Result<Reservation> {
        let result = self.create(driver, car_park, request).await;
        match &result {
            Ok((_, true)) => metrics::record_reservation("created", None),
            Ok((_, false)) => {}
            Err(e) => metrics::record_reservation("refused", Some(e)),
        }
        result.map(|(r, _)| r)
    }

    async fn create(
        &self,
        driver: &DriverId,
        car_park: &CarParkId,
        request: ReservationRequest,
    ) -> Result<(Reservation, bool)> {
        let car_park = self.get_car_park(car_park)?.0;
        let id = ReservationId::for_key(&car_park.id, driver, &request.idempotency_key);
        // The driver's reservations, from the replica: the key must not name one at
        // another car park (here, it names this reservation's id), and the RESERVED
        // ones count towards the driver's limit.
        let mine = self.engine.reservations_of(driver);
        let elsewhere: Vec<Reservation> = mine
            .iter()
            .filter(|r| r.car_park != car_park.id)
            .cloned()
            .collect();
        check_key_elsewhere(&elsewhere, &request.idempotency_key)?;
        let now = self.now();
        // Only a window the car park takes has days to read.
        let (days, policy) = match check_window(&car_park, &request, now) {
            Ok(policy) => (
                day_ids(&car_park.id, request.start, request.end),
                Some(policy),
            ),
            Err(_) => (Vec::new(), None),
        };
        // The driver's limit is taken in its claims before the reservation is written
        // (a retry of one this replica holds, among the driver's, needs none; a bad
        // window is refused by the rule below, with its reason).
        let claimed = policy.is_some() && !mine.iter().any(|r| r.id == id);
        if claimed {
            self.claim_reservation(driver, &id, now).await?;
        }
        let created = self
            .write_reservation(driver, &car_park, &id, &request, days, policy, now)
            .await;
        if claimed && created.is_err() {
            self.release_claim(driver, &id).await;
        }
        created
    }

    /// Takes a place for reservation `id` under `driver`'s limit, in its claims
    /// record; FAILED_PRECONDITION when the driver holds its most already.
    async fn claim_reservation(
        &self,
        driver: &DriverId,
        id: &ReservationId,
        now: Timestamp,
    ) -> Result<()> {
        let max = self.limits.max_active_reservations_per_driver;
        self.change_claims(driver, |claims| {
            // The driver's reservations as this replica holds them now, read once.
            let held: Vec<(ReservationId, ReservationState)> = self
                .engine
                .reservations_of(driver)
                .into_iter()
                .map(|r| (r.id, r.state))
                .collect();
            claims.claim(id, &held, max, now)
        })
        .await
    }

    /// Gives back the claim of a create that made nothing. A claim not given back (the
    /// store unreachable) stops counting after `CLAIM_GRACE`.
    async fn release_claim(&self, driver: &DriverId, id: &ReservationId) {
        let released = self
            .change_claims(driver, |claims| Ok(claims.release(id)))
            .await;
        if let Err(error) = released {
            tracing::warn!(reservation = %id, %error, "a claim was not given back; it lapses by itself");
        }
    }

    /// Changes `driver`'s claims record (a new one if it has none) by `change`, which
    /// says whether it changed anything; written by compare-and-set, decided again on
    /// a conflict.
    async fn change_claims(
        &self,
        driver: &DriverId,
        change: impl Fn(&mut ReservationClaims) -> Result<bool>,
    ) -> Result<()> {
        let fresh = ReservationClaims::new(driver);
        let (region, key) = (&fresh.region, &[driver.to_string()]);
        self.transact_group(
            ATTEMPTS,
            "reservation",
            |source| async move {
                Ok(self
                    .read_records::<ReservationClaims>(region, key, source)
                    .await?
                    .pop()
                    .expect("one id, one record"))
            },
            |current: Versioned<ReservationClaims>| {
                let mut claims = current.record.clone().unwrap_or_else(|| fresh.clone());
                if !change(&mut claims)? {
                    return Ok((Vec::new(), ()));
                }
                Ok((vec![put(driver.to_string(), claims, current.version)], ()))
            },
        )
        .await
    }

    /// Writes reservation `id` at `car_park` with its days (`days`, under `policy`),
    /// or finds it written already.
    #[allow(clippy::too_many_arguments)]
    async fn write_reservation(
        &self,
        driver: &DriverId,
        car_park: &CarPark,
        id: &ReservationId,
        request: &ReservationRequest,
        days: Vec<String>,
        policy: Option<&crate::domain::ReservationPolicy>,
        now: Timestamp,
    ) -> Result<(Reservation, bool)> {
        let (region, id_key, days) = (&car_park.region, &[id.to_string()], &days);
        let turn = self.ledger_turns.of(&car_park.id);
        let _turn = turn.lock().await;
        self.transact_group(
            ATTEMPTS,
            "reservation",
            |source| async move {
                let existing = self
                    .read_records::<Reservation>(region, id_key, source)
                    .await?
                    .pop()
                    .expect("one id, one record");
                let counted = self
                    .read_records::<SlotCounts>(region, days, source)
                    .await?;
                Ok((existing, counted))
            },
            |(existing, counted): Current| {
                // Days are read only under a policy, so each has one to be new under.
                let mut days: Vec<SlotCounts> = SlotCounts::days(request.start, request.end)
                    .zip(&counted)
                    .filter_map(|(day, v)| {
                        (v.record.clone()).or_else(|| Some(SlotCounts::new(car_park, policy?, day)))
                    })
                    .collect();
                let booking = Booking {
                    existing: existing.record.as_ref(),
                    days: &mut days,
                    free_now: self
                        .engine
                        .free(car_park.id.as_str(), request.category)
                        .unwrap_or(0),
                    held_now: self.engine.held(&car_park.id, request.category, now),
                };
                match reserve(car_park, request, driver, id.clone(), booking, now)? {
                    Created::Existing(r) => Ok((Vec::new(), (r, false))),
                    Created::New(r) => {
                        let mut writes = vec![put(r.id.to_string(), r.clone(), existing.version)];
                        for (day, v) in days.into_iter().zip(&counted) {
                            writes.push(put(day.id(), day, v.version));
                        }
                        Ok((writes, (r, true)))
                    }
                }
            },
        )
        .await
    }

    /// One reservation, as `caller` may see it, live or in history.
    pub async fn get_reservation(
        &self,
        caller: &Caller,
        id: &ReservationId,
    ) -> Result<Reservation> {
        if let Some((r, _)) = self.engine.reservation(id) {
            return match self.actor(caller, &r.car_park) {
                Some(actor) if r.visible_to(actor) => Ok((*r).clone()),
                _ => Err(not_found(id)),
            };
        }
        let kept: KeptReservation = self.kept(id.as_str()).await?.ok_or_else(|| not_found(id))?;
        if kept_visible(&kept, caller) {
            Ok(kept.reservation)
        } else {
            Err(not_found(id))
        }
    }

    /// How `caller` acts on reservations at `car_park`; `None` for an operator of
    /// another car park (who then sees nothing there).
    fn actor<'a>(&self, caller: &'a Caller, car_park: &CarParkId) -> Option<Actor<'a>> {
        match caller {
            Caller::Driver(d) => Some(Actor::Driver(d)),
            Caller::Operator(o) => {
                let (cp, _) = self.engine.get(car_park.as_str(), self.now())?;
                (&cp.operator == o).then_some(Actor::Operator)
            }
        }
    }

    /// The caller's reservations, live and in history, newest first, a page at a
    /// time. The page token is where the previous page stopped (`<created ms>_<id>`).
    pub async fn list_reservations(
        &self,
        caller: &Caller,
        state: Option<ReservationState>,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<Reservation>, Option<String>)> {
        let after = page_token
            .map(|t| parse_token(t).map(|(at, id)| (at, id.to_string())))
            .transpose()?;
        let mut live = match caller {
            Caller::Driver(d) => self.engine.reservations_of(d),
            Caller::Operator(o) => {
                let (mine, _) = self.engine.list(None, Some(o), None, usize::MAX);
                let ids: Vec<CarParkId> = mine.iter().map(|c| c.id.clone()).collect();
                self.engine.reservations_at(&ids)
            }
        };
        live.retain(|r| state.is_none_or(|s| r.state == s));
        let mut query = match caller {
            Caller::Driver(d) => page_query(page_size, after).with(&["driver"], d.as_str()),
            Caller::Operator(o) => page_query(page_size, after).with(&["operator"], o.as_str()),
        };
        if let Some(state) = state {
            query = query.with(&["state"], state.name());
        }
        let key = |r: &Reservation| (r.created_at, r.id.to_string());
        self.merged_page(live, key, query, |k: KeptReservation| k.reservation)
            .await
    }

    /// Changes reservation `id` as `actor` may (`None`: the service itself, for arrivals
    /// by plate and no-shows): `change` moves it on and says whether it did. A change
    /// that frees its slots frees them in the same group.
    async fn change_reservation(
        &self,
        id: &ReservationId,
        actor: Option<Actor<'_>>,
        change: impl Fn(&mut Reservation, &CarPark, Timestamp) -> Result<bool>,
    ) -> Result<(Reservation, bool)> {
        let car_park = self
            .engine
            .get(id.car_park().as_str(), self.now())
            .map(|(cp, _)| cp)
            .ok_or_else(|| not_found(id))?;
        let (region, id_key) = (&car_park.region, &[id.to_string()]);
        let turn = self.ledger_turns.of(&car_park.id);
        let _turn = turn.lock().await;
        let now = self.now();
        self.transact_group(
            ATTEMPTS,
            "reservation",
            |source| async move {
                let current = self
                    .read_records::<Reservation>(region, id_key, source)
                    .await?
                    .pop()
                    .expect("one id, one record");
                let days = match &current.record {
                    Some(r) if r.state.occupies_slots() => {
                        let ids = day_ids(&r.car_park, r.start, r.end);
                        self.read_records::<SlotCounts>(region, &ids, source)
                            .await?
                    }
                    _ => Vec::new(),
                };
                Ok((current, days))
            },
            |(current, days): Current| {
                let mut r = match current.record {
                    Some(r) if actor.is_none_or(|a| r.visible_to(a)) => r,
                    _ => return Err(not_found(id)),
                };
                let before = r.state;
                if !change(&mut r, &car_park, now)? {
                    return Ok((Vec::new(), (r, false)));
                }
                let mut writes = vec![put(r.id.to_string(), r.clone(), current.version)];
                if r.freed_slots(before) {
                    // A day dropped already (long past) has nothing left to free.
                    for v in days {
                        if let Some(mut day) = v.record {
                            day.release(r.category, r.start, r.end);
                            writes.push(put(day.id(), day, v.version));
                        }
                    }
                }
                Ok((writes, (r, true)))
            },
        )
        .await
    }

    /// A driver cancels their reservation.
    pub async fn cancel_reservation(
        &self,
        driver: &DriverId,
        id: &ReservationId,
        reason: &str,
    ) -> Result<Reservation> {
        let (r, _) = self
            .change_reservation(id, Some(Actor::Driver(driver)), |r, _, now| {
                r.cancel(reason, now).map(|()| true)
            })
            .await?;
        metrics::record_reservation("cancelled", None);
        Ok(r)
    }

    /// The car arrived (its driver or the car park's operator says so).
    pub async fn check_in(&self, caller: &Caller, id: &ReservationId) -> Result<Reservation> {
        self.at_the_gate(caller, id, "checked_in", |r, car_park, now| {
            r.check_in(grace_of(car_park), now)
        })
        .await
    }

    /// The car left.
    pub async fn check_out(&self, caller: &Caller, id: &ReservationId) -> Result<Reservation> {
        self.at_the_gate(caller, id, "completed", |r, _, now| r.check_out(now))
            .await
    }

    /// A check-in or check-out by `caller`, counted as `result`.
    async fn at_the_gate(
        &self,
        caller: &Caller,
        id: &ReservationId,
        result: &'static str,
        change: impl Fn(&mut Reservation, &CarPark, Timestamp) -> Result<()>,
    ) -> Result<Reservation> {
        let actor = self
            .actor(caller, &id.car_park())
            .ok_or_else(|| not_found(id))?;
        let (r, _) = self
            .change_reservation(id, Some(actor), |r, car_park, now| {
                change(r, car_park, now).map(|()| true)
            })
            .await?;
        metrics::record_reservation(result, None);
        Ok(r)
    }

    /// What can still be reserved per slot of a window.
    pub fn reservation_calendar(
        &self,
        car_park: &CarParkId,
        category: SpaceCategory,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Vec<CalendarSlot>> {
        let car_park = self.get_car_park(car_park)?.0;
        let Some(policy) = &car_park.reservation_policy else {
            return Err(Error::FailedPrecondition(format!(
                "car park {} takes no reservations",
                car_park.id
            )));
        };
        calendar_slots(policy, start, end)?;
        let days: Vec<SlotCounts> = SlotCounts::days(start, end)
            .map(|day| {
                let id = SlotCounts::id_of(car_park.id.as_str(), day);
                Versioned::<SlotCounts>::in_replica(&self.engine, &id)
                    .record
                    .unwrap_or_else(|| SlotCounts::new(&car_park, policy, day))
            })
            .collect();
        Ok(calendar(policy, category, &days, start, end))
    }

    /// Plates seen at a car park's gate (entry or exit delta reports): each checks in
    /// or completes the reservation it matches. Best effort after the reports were
    /// applied: a plate that matches nothing changes nothing.
    pub(super) async fn plates_seen(&self, seen: Vec<super::ingest::Sighting>) {
        for super::ingest::Sighting {
            car_park,
            entry,
            read: PlateRead { plate, at, .. },
            ..
        } in seen
        {
            let Ok(cp) = self.get_car_park(&car_park).map(|(cp, _)| cp) else {
                continue;
            };
            let grace = grace_of(&cp);
            // The earliest window the plate matches (most plates at a gate match none).
            let Some(id) = self
                .engine
                .reservations_for_plate(&car_park, &plate)
                .into_iter()
                .filter(|r| r.matches_gate(&plate, entry, grace, at))
                .min_by_key(|r| r.start)
                .map(|r| r.id)
            else {
                continue;
            };
            let result = self
                .change_reservation(&id, None, |r, _, _| {
                    if !r.matches_gate(&plate, entry, grace, at) {
                        return Ok(false);
                    }
                    r.pass_gate(entry, grace, at).map(|()| true)
                })
                .await;
            let action = if entry {
                "arrival_by_plate"
            } else {
                "departure_by_plate"
            };
            audit::write(Who::Service, action, id.as_str(), &result);
            match result {
                Ok((r, true)) => metrics::record_reservation(
                    if r.state == ReservationState::CheckedIn {
                        "checked_in"
                    } else {
                        "completed"
                    },
                    None,
                ),
                Ok((_, false)) => {}
                Err(error) => {
                    tracing::warn!(%car_park, %error, "a plate seen at the gate could not update its reservation")
                }
            }
        }
    }

    /// Every `every`, until `stop`: brings held counts up to date with the clock (a
    /// window starts holding a space), moves overdue reservations to NO_SHOW, and drops
    /// records past their retention. With several instances each may try; the
    /// compare-and-set lets exactly one make each change.
    pub async fn sweep_reservations(&self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.now();
            self.engine.sweep_held(now);
            for id in self.engine.reservations_overdue(now) {
                let expired = self
                    .change_reservation(&id, None, |r, _, now| Ok(r.expire(now)))
                    .await;
                if matches!(expired, Ok((_, true)) | Err(_)) {
                    audit::write(Who::Service, "no_show", id.as_str(), &expired);
                }
                match expired {
                    Ok((_, true)) => metrics::record_reservation("no_show", None),
                    Ok((_, false)) => {}
                    Err(error) => {
                        tracing::warn!(reservation = %id, %error, "an overdue reservation was not expired yet")
                    }
                }
            }
            self.drop_old_records(now).await;
            self.sweep_bookings(now).await;
            metrics::record_reservation_states(&self.engine.reservations_by_state());
        }
    }

    /// Deletes reservations past their retention, slot counts of days over and drivers'
    /// claims records whose claims all lapsed, each if still at the version read (else
    /// another instance changed or dropped it first).
    async fn drop_old_records(&self, now: Timestamp) {
        // With a history, the hand-off moves finished reservations there; without one
        // they are dropped a week after they finished.
        let cutoff = match self.history {
            Some(_) => Timestamp::MIN,
            None => now - NO_HISTORY_RETENTION,
        };
        let reservations: Vec<Write<Reservation>> = self
            .engine
            .reservations_finished_by(cutoff, usize::MAX)
            .into_iter()
            .map(|(r, v)| delete(&r.region, r.id.to_string(), v))
            .collect();
        let days: Vec<Write<SlotCounts>> = self
            .engine
            .slot_counts_past(now)
            .into_iter()
            .map(|(d, v)| delete(&d.region, d.id(), v))
            .collect();
        let claims: Vec<Write<ReservationClaims>> = self
            .engine
            .reservation_claims()
            .into_iter()
            .filter(|(c, _)| c.spent(now))
            .map(|(c, v)| delete(&c.region, c.driver.to_string(), v))
            .collect();
        let mut failed = None;
        if !claims.is_empty() {
            let done = self.store.commit(claims, "reservation", now).await;
            failed = failed.or(done.into_iter().find_map(Result::err));
        }
        if !reservations.is_empty() {
            let done = self.store.commit(reservations, "reservation", now).await;
            failed = failed.or(done.into_iter().find_map(Result::err));
        }
        if !days.is_empty() {
            let done = self.store.commit(days, "reservation", now).await;
            failed = failed.or(done.into_iter().find_map(Result::err));
        }
        if let Some(error) = failed {
            tracing::warn!(%error, "old reservation records were not dropped yet");
        }
    }
}

/// How long a finished reservation or booking stays live after it finished when the
/// service has no history to move it to.
pub(super) const NO_HISTORY_RETENTION: jiff::SignedDuration =
    jiff::SignedDuration::from_hours(7 * 24);

/// Whether `caller` may see a reservation kept in history: its driver, or the
/// operator its car park had.
fn kept_visible(kept: &KeptReservation, caller: &Caller) -> bool {
    match caller {
        Caller::Driver(d) => &kept.reservation.driver == d,
        Caller::Operator(o) => kept.operator.as_ref() == Some(o),
    }
}

/// What a caller learns of a reservation that is not theirs to see: nothing more than
/// of one that does not exist.
fn not_found(id: &ReservationId) -> Error {
    Error::NotFound {
        kind: "reservation",
        id: id.to_string(),
    }
}

/// A delete of record `id`, decided on `expected`.
pub(super) fn delete<A>(region: &RegionId, id: String, expected: u64) -> Write<A> {
    Write {
        region: region.clone(),
        id,
        expected,
        floor: 0,
        change: Change::Delete,
    }
}

/// The no-show grace of `car_park`'s policy.
fn grace_of(car_park: &CarPark) -> Duration {
    let minutes = car_park
        .reservation_policy
        .as_ref()
        .map_or(0, |p| p.no_show_grace_minutes);
    Duration::from_secs(u64::from(minutes) * 60)
}

fn parse_token(token: &str) -> Result<(Timestamp, ReservationId)> {
    parse_page_token(token, ReservationId::parse)
}

/// A page token of a listing newest first, `<ms of the last item>_<its id>`.
pub(super) fn parse_page_token<T>(
    token: &str,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<(Timestamp, T)> {
    let bad = || Error::invalid("page_token", "not a token this server gave");
    let (ms, id) = token.split_once('_').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    let at = Timestamp::from_millisecond(ms).map_err(|_| bad())?;
    let id = parse(id).map_err(|_| bad())?;
    Ok((at, id))
}
