//! Reservation use cases: create, read, list, cancel, check in and out, the calendar,
//! arrivals by plate, and the no-show sweep.
//!
//! Every change is one compare-and-set of the car park's ledger through `transact`, the
//! rule deciding on what the ledger holds. Within an instance the changes of one ledger
//! take turns (a lock per car park), so a thousand concurrent creates here never
//! conflict with each other; creates on other instances can, and then the ledger is
//! read from the authority and the rule decides again. A driver never sees contention:
//! only a full slot, a limit or a bad request refuses a create.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use super::{
    Service,
    write::{Decision, Target},
};
use crate::{
    domain::{
        Actor, CalendarSlot, CarPark, CarParkId, Created, DriverId, Error, Ledger, OperatorId,
        Reservation, ReservationId, ReservationRequest, ReservationState, Result, SpaceCategory,
        Timestamp, calendar_slots, check_key_elsewhere,
    },
    metrics,
    store::{Change, Parts, Versioned},
};

/// How often a ledger write is decided again after another instance changed the ledger
/// first. Each instance writes a ledger one change at a time, so a retry loses only to
/// other instances' writes; this many losses in a row do not happen in practice.
const LEDGER_ATTEMPTS: usize = 64;

/// Who calls: a driver (bearer token) or an operator (API key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Driver(DriverId),
    Operator(OperatorId),
}

/// Per car park, the turn to write its ledger on this instance.
#[derive(Default)]
pub(super) struct LedgerTurns(parking_lot::Mutex<HashMap<CarParkId, Arc<AsyncMutex<()>>>>);

impl LedgerTurns {
    fn of(&self, car_park: &CarParkId) -> Arc<AsyncMutex<()>> {
        let mut turns = self.0.lock();
        // Drop the turns nobody waits for, so the map stays as small as the contention.
        if turns.len() > 1_024 {
            turns.retain(|_, m| Arc::strong_count(m) > 1);
        }
        turns.entry(car_park.clone()).or_default().clone()
    }
}

/// A new reservation id's suffix: 16 base-36 characters from a per-process random
/// hasher over a counter and the time, so ids are unique and not guessable in order.
fn new_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut out = String::with_capacity(16);
    for salt in [0u64, 1] {
        let mut h = keys.build_hasher();
        h.write_u64(n);
        h.write_u64(nanos);
        h.write_u64(salt);
        let mut v = h.finish();
        for _ in 0..8 {
            out.push(char::from_digit((v % 36) as u32, 36).expect("< 36"));
            v /= 36;
        }
    }
    out
}

impl Service {
    /// Writes `car_park`'s ledger with `decide` (given the ledger, or an empty one), in
    /// this instance's turn for it.
    async fn write_ledger<T>(
        &self,
        car_park: &CarPark,
        what: &'static str,
        decide: impl Fn(&mut Ledger, Timestamp) -> Result<(bool, T)>,
    ) -> Result<T> {
        let turn = self.ledger_turns.of(&car_park.id);
        let _turn = turn.lock().await;
        let target = Target {
            id: car_park.id.to_string(),
            current: Versioned::in_replica(&self.engine, car_park.id.as_str()),
        };
        let now = self.now();
        let decided = self
            .transact_with(
                LEDGER_ATTEMPTS,
                what,
                vec![target],
                0,
                |_, current: &Versioned<Ledger>| {
                    let mut ledger = current
                        .record
                        .clone()
                        .unwrap_or_else(|| Ledger::new(car_park));
                    let pruned = ledger.prune(now) > 0;
                    let (changed, output) = decide(&mut ledger, now)?;
                    Ok(Decision {
                        change: (changed || pruned).then(|| Change::put(ledger, Parts::ALL)),
                        output,
                    })
                },
            )
            .await;
        let (output, _) = decided.into_iter().next().expect("one target")?;
        Ok(output)
    }

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
        // The driver's reservations at other car parks, read once from the replica: the
        // key must not name one of them, and they count towards the driver's limit.
        // Within this car park its ledger settles both atomically.
        let elsewhere: Vec<Reservation> = self
            .engine
            .reservations_of(driver)
            .into_iter()
            .filter(|r| r.car_park != car_park.id)
            .collect();
        check_key_elsewhere(&elsewhere, &request.idempotency_key)?;
        let active_elsewhere = elsewhere
            .iter()
            .filter(|r| r.state == ReservationState::Reserved)
            .count();
        let suffix = new_suffix();
        let max_active = self.limits.max_active_reservations_per_driver;
        self.write_ledger(&car_park, "reservation", |ledger, now| {
            let free_now = self
                .engine
                .free(car_park.id.as_str(), request.category)
                .unwrap_or(0);
            match ledger.reserve(
                &car_park,
                &request,
                driver,
                free_now,
                active_elsewhere,
                max_active,
                &suffix,
                now,
            )? {
                Created::New(r) => Ok((true, (r, true))),
                Created::Existing(r) => Ok((false, (r, false))),
            }
        })
        .await
    }

    /// One reservation, as `caller` may see it.
    pub fn get_reservation(&self, caller: &Caller, id: &ReservationId) -> Result<Reservation> {
        let (ledger, _) = self
            .engine
            .ledger(id.car_park().as_str())
            .ok_or_else(|| not_found(id))?;
        let actor = self
            .actor(caller, &ledger.car_park)
            .ok_or_else(|| not_found(id))?;
        ledger.visible(id, actor).cloned()
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

    /// The caller's reservations, newest first, a page at a time. The page token is
    /// where the previous page stopped (`<created ms>_<id>`).
    pub fn list_reservations(
        &self,
        caller: &Caller,
        state: Option<ReservationState>,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<Reservation>, Option<String>)> {
        let mut all = match caller {
            Caller::Driver(d) => self.engine.reservations_of(d),
            Caller::Operator(o) => {
                let (mine, _) = self.engine.list(None, Some(o), None, usize::MAX);
                let ids: Vec<CarParkId> = mine.iter().map(|c| c.id.clone()).collect();
                self.engine.reservations_at(&ids)
            }
        };
        all.retain(|r| state.is_none_or(|s| r.state == s));
        let key = |r: &Reservation| (std::cmp::Reverse(r.created_at), r.id.clone());
        all.sort_by_key(key);
        let after = match page_token {
            None => None,
            Some(token) => Some(parse_token(token)?),
        };
        let mut page: Vec<Reservation> = all
            .into_iter()
            .filter(|r| {
                after.as_ref().is_none_or(|(at, id)| {
                    (std::cmp::Reverse(r.created_at), &r.id) > (std::cmp::Reverse(*at), id)
                })
            })
            .take(page_size + 1)
            .collect();
        let next = (page.len() > page_size).then(|| {
            page.truncate(page_size);
            let last = page.last().expect("a full page");
            format!("{}_{}", last.created_at.as_millisecond(), last.id)
        });
        Ok((page, next))
    }

    fn ledger_of(&self, id: &ReservationId) -> Result<Arc<CarPark>> {
        self.engine
            .get(id.car_park().as_str(), self.now())
            .map(|(cp, _)| cp)
            .ok_or_else(|| not_found(id))
    }

    /// A driver cancels their reservation.
    pub async fn cancel_reservation(
        &self,
        driver: &DriverId,
        id: &ReservationId,
        reason: &str,
    ) -> Result<Reservation> {
        let car_park = self.ledger_of(id)?;
        let r = self
            .write_ledger(&car_park, "reservation", |ledger, now| {
                Ok((true, ledger.cancel(id, driver, reason, now)?))
            })
            .await?;
        metrics::record_reservation("cancelled", None);
        Ok(r)
    }

    /// The car arrived (its driver or the car park's operator says so).
    pub async fn check_in(&self, caller: &Caller, id: &ReservationId) -> Result<Reservation> {
        self.at_the_gate(caller, id, "checked_in", |ledger, actor, grace, now| {
            ledger.check_in(id, actor, grace, now)
        })
        .await
    }

    /// The car left.
    pub async fn check_out(&self, caller: &Caller, id: &ReservationId) -> Result<Reservation> {
        self.at_the_gate(caller, id, "completed", |ledger, actor, _, now| {
            ledger.check_out(id, actor, now)
        })
        .await
    }

    /// A check-in or check-out by `caller`, counted as `result`.
    async fn at_the_gate(
        &self,
        caller: &Caller,
        id: &ReservationId,
        result: &'static str,
        change: impl Fn(&mut Ledger, Actor<'_>, Duration, Timestamp) -> Result<Reservation>,
    ) -> Result<Reservation> {
        let car_park = self.ledger_of(id)?;
        let actor = self
            .actor(caller, &car_park.id)
            .ok_or_else(|| not_found(id))?;
        let grace = grace_of(&car_park);
        let r = self
            .write_ledger(&car_park, "reservation", |ledger, now| {
                Ok((true, change(ledger, actor, grace, now)?))
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
        let ledger = self
            .engine
            .ledger(car_park.id.as_str())
            .map(|(l, _)| l)
            .unwrap_or_else(|| Arc::new(Ledger::new(&car_park)));
        Ok(ledger.calendar(policy, category, start, end))
    }

    /// Plates seen at a car park's gate (entry or exit delta reports): each checks in
    /// or completes the reservation it matches. Best effort after the reports were
    /// applied: a plate that matches nothing changes nothing.
    pub(super) async fn plates_seen(&self, seen: Vec<super::ingest::Sighting>) {
        for (car_park, plate, entry, at) in seen {
            let Some((ledger, _)) = self.engine.ledger(car_park.as_str()) else {
                continue;
            };
            let Ok(cp) = self.get_car_park(&car_park).map(|(cp, _)| cp) else {
                continue;
            };
            let grace = grace_of(&cp);
            // Only if the replica shows a match is the ledger written (most plates at a
            // gate have no reservation).
            if (*ledger)
                .clone()
                .plate_seen(&plate, entry, grace, at)
                .is_none()
            {
                continue;
            }
            let result = self
                .write_ledger(&cp, "reservation", |ledger, _| {
                    let changed = ledger.plate_seen(&plate, entry, grace, at);
                    Ok((changed.is_some(), changed))
                })
                .await;
            match result {
                Ok(Some(r)) => metrics::record_reservation(
                    if r.state == ReservationState::CheckedIn {
                        "checked_in"
                    } else {
                        "completed"
                    },
                    None,
                ),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%car_park, %error, "a plate seen at the gate could not update its reservation")
                }
            }
        }
    }

    /// Every `every`, until `stop`: brings held counts up to date with the clock (a
    /// window starts holding a space), then moves overdue reservations to NO_SHOW. With
    /// several instances each may try; the compare-and-set lets exactly one expire each.
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
            for id in self.engine.ledgers_overdue(now) {
                let Ok(car_park) = self.get_car_park(&id).map(|(cp, _)| cp) else {
                    continue;
                };
                let expired = self
                    .write_ledger(&car_park, "reservation", |ledger, now| {
                        let expired = ledger.expire(now).len();
                        Ok((expired > 0, expired))
                    })
                    .await;
                match expired {
                    Ok(n) => (0..n).for_each(|_| metrics::record_reservation("no_show", None)),
                    Err(error) => {
                        tracing::warn!(car_park = %id, %error, "overdue reservations not expired yet")
                    }
                }
            }
            metrics::record_reservation_states(&self.engine.reservations_by_state());
        }
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

fn grace_of(car_park: &CarPark) -> Duration {
    let minutes = car_park
        .reservation_policy
        .as_ref()
        .map_or(0, |p| p.no_show_grace_minutes);
    Duration::from_secs(u64::from(minutes) * 60)
}

fn parse_token(token: &str) -> Result<(Timestamp, ReservationId)> {
    let bad = || Error::invalid("page_token", "not a token this server gave");
    let (ms, id) = token.split_once('_').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    let at = Timestamp::from_millisecond(ms).map_err(|_| bad())?;
    let id = ReservationId::parse(id).map_err(|_| bad())?;
    Ok((at, id))
}
