//! Reservations (预约停车): the policy a car park offers, a reservation's lifecycle, and
//! the ledger of a car park's reservations, whose rules keep every slot within quota.
//!
//! Time is cut into slots of the policy's length (aligned to the Unix epoch, so to
//! whole minutes of UTC); a window [start, end) counts in every slot it touches. In no
//! slot do RESERVED + CHECKED_IN reservations of a category exceed the category's
//! quota. A RESERVED reservation holds a space from its start until the driver arrives
//! or the no-show grace runs out; what is available to everyone else is free − held.

use std::{fmt, sync::Arc, time::Duration};

use super::{
    CATEGORY_COUNT, CarPark, CarParkId, DriverId, Error, RegionId, SpaceCategory, Stay, Timestamp,
};

/// Reservations one car park's ledger holds at most (open ones and recently finished
/// ones); beyond it a create is RESOURCE_EXHAUSTED.
pub const MAX_LEDGER_RESERVATIONS: usize = 5_000;
/// How long a finished reservation (completed, cancelled, no-show) stays readable after
/// its window ended.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a car park offers for reservation. A category without quota is not reservable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReservationPolicy {
    /// How many spaces of each category may be reserved at once.
    pub quota: [u32; CATEGORY_COUNT],
    pub slot_minutes: u32,
    pub max_window_minutes: u32,
    pub max_days_ahead: u32,
    pub no_show_grace_minutes: u32,
    /// A driver may cancel until this many minutes before the start.
    pub cancel_until_minutes: u32,
}

impl ReservationPolicy {
    pub const DEFAULT_SLOT_MINUTES: u32 = 15;
    pub const DEFAULT_MAX_WINDOW_MINUTES: u32 = 240;
    pub const DEFAULT_MAX_DAYS_AHEAD: u32 = 7;
    pub const DEFAULT_NO_SHOW_GRACE_MINUTES: u32 = 15;

    /// A policy from the request's numbers, where 0 means the default (a cancel limit
    /// of 0 means until the start). Errors name the field under `reservation_policy`.
    pub fn new(
        quota: [u32; CATEGORY_COUNT],
        slot_minutes: u32,
        max_window_minutes: u32,
        max_days_ahead: u32,
        no_show_grace_minutes: u32,
        cancel_until_minutes: u32,
    ) -> Result<Self, Error> {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        let policy = Self {
            quota,
            slot_minutes: or(slot_minutes, Self::DEFAULT_SLOT_MINUTES),
            max_window_minutes: or(max_window_minutes, Self::DEFAULT_MAX_WINDOW_MINUTES),
            max_days_ahead: or(max_days_ahead, Self::DEFAULT_MAX_DAYS_AHEAD),
            no_show_grace_minutes: or(no_show_grace_minutes, Self::DEFAULT_NO_SHOW_GRACE_MINUTES),
            cancel_until_minutes,
        };
        let field = |f: &str| format!("reservation_policy.{f}");
        if !(5..=240).contains(&policy.slot_minutes) || 1440 % policy.slot_minutes != 0 {
            return Err(Error::invalid(
                field("slot_minutes"),
                "must divide a day and be 5 to 240",
            ));
        }
        if policy.max_window_minutes < policy.slot_minutes || policy.max_window_minutes > 7 * 1440 {
            return Err(Error::invalid(
                field("max_window_minutes"),
                "must be at least one slot and at most 7 days",
            ));
        }
        if policy.max_days_ahead > 365 {
            return Err(Error::invalid(
                field("max_days_ahead"),
                "must be at most 365",
            ));
        }
        if policy.no_show_grace_minutes > 240 {
            return Err(Error::invalid(
                field("no_show_grace_minutes"),
                "must be at most 240",
            ));
        }
        if policy.cancel_until_minutes > 7 * 1440 {
            return Err(Error::invalid(
                field("cancel_until_minutes"),
                "must be at most 7 days",
            ));
        }
        Ok(policy)
    }

    /// The quota of `category`; 0 when it is not reservable.
    pub fn quota(&self, category: SpaceCategory) -> u32 {
        self.quota[category.index()]
    }

    fn slot_ms(&self) -> i64 {
        i64::from(self.slot_minutes) * 60_000
    }

    /// The slots [first, last] a window touches, as slot numbers since the epoch.
    fn slots(&self, start: Timestamp, end: Timestamp) -> (i64, i64) {
        let ms = self.slot_ms();
        let first = start.as_millisecond().div_euclid(ms);
        let last = (end.as_millisecond() - 1).div_euclid(ms);
        (first, last)
    }

    fn slot_start(&self, slot: i64) -> Timestamp {
        Timestamp::from_millisecond(slot * self.slot_ms()).expect("slot within range")
    }
}

/// Serde reads and writes these types as their text, checked by `parse` on the way in.
macro_rules! string_form {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = Error;
            fn try_from(value: String) -> Result<Self, Error> {
                Self::parse(&value)
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0.to_string()
            }
        }
    };
}

/// A vehicle plate, normalised: upper case, without spaces, dots, hyphens or the
/// middle dot of Chinese plates (`鲁B·12345` → `鲁B12345`). It is personal data: its
/// `Debug` shows only its length, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Plate(Arc<str>);

impl Plate {
    /// Normalises and checks a plate: 2 to 12 letters or digits (letters may be CJK).
    pub fn parse(value: &str) -> Result<Self, Error> {
        let normal: String = value
            .chars()
            .filter(|c| !matches!(c, ' ' | '.' | '-' | '·' | '•' | '\u{30FB}'))
            .flat_map(char::to_uppercase)
            .collect();
        let n = normal.chars().count();
        if !(2..=12).contains(&n) || !normal.chars().all(char::is_alphanumeric) {
            return Err(Error::invalid(
                "",
                "plate must be 2 to 12 letters or digits (spaces, dots and hyphens are ignored)",
            ));
        }
        Ok(Self(Arc::from(normal)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plate(<{} chars>)", self.0.chars().count())
    }
}

string_form!(Plate);

/// A reservation's id: `<car park id>~<suffix>`, so it names its car park's ledger.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReservationId(Arc<str>);

impl ReservationId {
    /// The id of a new reservation at `car_park`; `suffix` is random, 1-32 of `0-9a-z`.
    pub fn new(car_park: &CarParkId, suffix: &str) -> Self {
        Self(Arc::from(format!("{car_park}~{suffix}")))
    }

    pub fn parse(value: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("", "not a reservation id (<car park id>~<suffix>)");
        let (car_park, suffix) = value.rsplit_once('~').ok_or_else(bad)?;
        CarParkId::parse(car_park).map_err(|_| bad())?;
        let suffix_ok = (1..=32).contains(&suffix.len())
            && suffix
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
        if !suffix_ok {
            return Err(bad());
        }
        Ok(Self(Arc::from(value)))
    }

    /// The car park whose ledger holds it.
    pub fn car_park(&self) -> CarParkId {
        let (car_park, _) = self.0.rsplit_once('~').expect("checked at parse");
        CarParkId::parse(car_park).expect("checked at parse")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

string_form!(ReservationId);

/// Where a reservation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Reserved,
    CheckedIn,
    Completed,
    Cancelled,
    NoShow,
}

impl ReservationState {
    pub const ALL: [ReservationState; 5] = [
        Self::Reserved,
        Self::CheckedIn,
        Self::Completed,
        Self::Cancelled,
        Self::NoShow,
    ];

    /// The name clients see (the proto enum's, without its prefix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::CheckedIn => "CHECKED_IN",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
            Self::NoShow => "NO_SHOW",
        }
    }

    /// Lower-case name: metric labels and the CLI.
    pub fn label(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::CheckedIn => "checked_in",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::NoShow => "no_show",
        }
    }

    /// Whether it counts against its slots' quota.
    pub fn occupies_slots(self) -> bool {
        matches!(self, Self::Reserved | Self::CheckedIn)
    }
}

/// What a driver asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    pub category: SpaceCategory,
    pub start: Timestamp,
    pub end: Timestamp,
    pub plate: Plate,
    /// 1-64 characters chosen by the client; the same driver and key give the same
    /// reservation.
    pub idempotency_key: String,
}

/// One reservation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub id: ReservationId,
    pub car_park: CarParkId,
    pub category: SpaceCategory,
    pub start: Timestamp,
    pub end: Timestamp,
    pub plate: Plate,
    pub state: ReservationState,
    pub price_minor: i64,
    pub currency: Arc<str>,
    pub created_at: Timestamp,
    /// The driver may cancel before this.
    pub cancel_until: Timestamp,
    /// Not checked in by then, it is a no-show and its space goes back to the pool.
    pub no_show_at: Timestamp,
    pub driver: DriverId,
    pub idempotency_key: Arc<str>,
    /// When it left RESERVED or CHECKED_IN (checked in, completed, cancelled, no-show).
    #[serde(default)]
    pub changed_at: Option<Timestamp>,
    #[serde(default)]
    pub cancel_reason: Arc<str>,
}

impl Reservation {
    /// Whether it holds a space at `now`: RESERVED, its start reached, its no-show time
    /// not yet.
    pub fn holds_at(&self, now: Timestamp) -> bool {
        self.state == ReservationState::Reserved && self.start <= now && now < self.no_show_at
    }

    /// The earliest a car may arrive for it (the grace before the start).
    fn arrival_from(&self, grace: Duration) -> Timestamp {
        self.start - grace
    }

    fn wrong_state(&self, action: &str, wanted: ReservationState) -> Error {
        Error::FailedPrecondition(format!(
            "reservation {} is {}; only a {} reservation can be {action}",
            self.id,
            self.state.name(),
            wanted.name()
        ))
    }
}

/// Who acts on a reservation: its driver, or the operator of its car park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    Driver(&'a DriverId),
    Operator,
}

/// What a create came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new reservation; the ledger changed.
    New(Reservation),
    /// The same driver and idempotency key made it before: nothing changed.
    Existing(Reservation),
}

/// A slot of the calendar and what can still be reserved in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalendarSlot {
    pub start: Timestamp,
    pub end: Timestamp,
    pub remaining: u32,
}

/// A car park's reservations: the aggregate every reservation change of that car park
/// is one compare-and-set of, so no two writers can both take the last space of a slot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    pub car_park: CarParkId,
    pub region: RegionId,
    /// Oldest first. Shared, so that copying a ledger (every decision starts from a
    /// copy) costs a reference count per reservation; a change copies the one it changes.
    pub reservations: Vec<Arc<Reservation>>,
}

impl Ledger {
    /// An empty ledger for `car_park`.
    pub fn new(car_park: &CarPark) -> Self {
        Self {
            car_park: car_park.id.clone(),
            region: car_park.region.clone(),
            reservations: Vec::new(),
        }
    }

    pub fn get(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.iter().find(|r| &r.id == id).map(|r| &**r)
    }

    /// Spaces of `category` held at `now` for reservations not arrived yet.
    pub fn held(&self, category: SpaceCategory, now: Timestamp) -> u32 {
        self.reservations
            .iter()
            .filter(|r| r.category == category && r.holds_at(now))
            .count() as u32
    }

    /// Held spaces per category at `now`.
    pub fn held_all(&self, now: Timestamp) -> [u32; CATEGORY_COUNT] {
        let mut held = [0; CATEGORY_COUNT];
        for r in self.reservations.iter().filter(|r| r.holds_at(now)) {
            held[r.category.index()] += 1;
        }
        held
    }

    /// RESERVED reservations of `driver` here.
    pub fn active_of(&self, driver: &DriverId) -> usize {
        self.reservations
            .iter()
            .filter(|r| r.state == ReservationState::Reserved && &r.driver == driver)
            .count()
    }

    /// Reservations of `category` counted in each slot of `first..=last`, in one pass.
    fn used_in(
        &self,
        policy: &ReservationPolicy,
        category: SpaceCategory,
        first: i64,
        last: i64,
    ) -> Vec<u32> {
        let mut used = vec![0u32; (last - first + 1) as usize];
        let (from, to) = (policy.slot_start(first), policy.slot_start(last + 1));
        for r in &self.reservations {
            // Most reservations are of other windows: two comparisons leave them out.
            if r.category != category || r.end <= from || r.start >= to || !r.state.occupies_slots()
            {
                continue;
            }
            let (a, b) = policy.slots(r.start, r.end);
            for s in a.max(first)..=b.min(last) {
                used[(s - first) as usize] += 1;
            }
        }
        used
    }

    /// Makes a reservation for `driver`, or says why not. `free_now` is the category's
    /// free count as last reported (for a window that covers now); `active_elsewhere` is
    /// the driver's RESERVED reservations at other car parks; `suffix` makes the new id.
    #[allow(clippy::too_many_arguments)]
    pub fn reserve(
        &mut self,
        car_park: &CarPark,
        request: &ReservationRequest,
        driver: &DriverId,
        free_now: u32,
        active_elsewhere: usize,
        max_active: usize,
        suffix: &str,
        now: Timestamp,
    ) -> Result<Created, Error> {
        if let Some(existing) = self
            .reservations
            .iter()
            .find(|r| *r.idempotency_key == *request.idempotency_key && &r.driver == driver)
        {
            let same = existing.category == request.category
                && existing.start == request.start
                && existing.end == request.end
                && existing.plate == request.plate;
            return if same {
                Ok(Created::Existing((**existing).clone()))
            } else {
                Err(Error::invalid(
                    "idempotency_key",
                    "was used for a different reservation",
                ))
            };
        }
        let Some(policy) = &car_park.reservation_policy else {
            return Err(Error::FailedPrecondition(format!(
                "car park {} takes no reservations",
                car_park.id
            )));
        };
        let quota = policy.quota(request.category);
        if quota == 0 {
            return Err(Error::invalid(
                "category",
                format!(
                    "car park {} takes no reservations for {}",
                    car_park.id,
                    request.category.name()
                ),
            ));
        }
        if request.end <= request.start {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        let stay = Stay::new(request.start, request.end)
            .map_err(|e| Error::invalid("end_time", e.to_string()))?;
        if request.end <= now {
            return Err(Error::invalid("end_time", "is in the past"));
        }
        // A window may start a little before now (a driver at the gate), never earlier
        // than one slot ago.
        if request.start.as_millisecond() < now.as_millisecond() - policy.slot_ms() {
            return Err(Error::invalid("start_time", "is in the past"));
        }
        let minutes = stay.minutes();
        if minutes > i64::from(policy.max_window_minutes) {
            return Err(Error::invalid(
                "end_time",
                format!(
                    "the window is {minutes} minutes; car park {} allows at most {}",
                    car_park.id, policy.max_window_minutes
                ),
            ));
        }
        let ahead = Duration::from_secs(u64::from(policy.max_days_ahead) * 86_400);
        if request.start > now + ahead {
            return Err(Error::invalid(
                "start_time",
                format!(
                    "car park {} takes reservations at most {} days ahead",
                    car_park.id, policy.max_days_ahead
                ),
            ));
        }
        if self.active_of(driver) + active_elsewhere >= max_active {
            return Err(Error::FailedPrecondition(format!(
                "a driver may hold at most {max_active} reservations at once"
            )));
        }
        let grace = Duration::from_secs(u64::from(policy.no_show_grace_minutes) * 60);
        let no_show_at = (request.start + grace).min(request.end);
        if request.start <= now && now < no_show_at {
            let available = free_now.saturating_sub(self.held(request.category, now));
            if available == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "fully booked: no {} space is available now",
                    request.category.name()
                )));
            }
        }
        let (first, last) = policy.slots(request.start, request.end);
        let used = self.used_in(policy, request.category, first, last);
        if let Some(full) = (first..=last).find(|&s| used[(s - first) as usize] >= quota) {
            return Err(Error::FailedPrecondition(format!(
                "fully booked: the slot from {} is full",
                policy.slot_start(full)
            )));
        }
        if self.reservations.len() >= MAX_LEDGER_RESERVATIONS {
            self.prune(now);
            if self.reservations.len() >= MAX_LEDGER_RESERVATIONS {
                return Err(Error::ResourceExhausted(format!(
                    "car park {} holds {MAX_LEDGER_RESERVATIONS} reservations already",
                    car_park.id
                )));
            }
        }
        let cancel_notice = Duration::from_secs(u64::from(policy.cancel_until_minutes) * 60);
        let reservation = Reservation {
            id: ReservationId::new(&car_park.id, suffix),
            car_park: car_park.id.clone(),
            category: request.category,
            start: request.start,
            end: request.end,
            plate: request.plate.clone(),
            state: ReservationState::Reserved,
            price_minor: car_park.tariff.price(&stay),
            currency: Arc::from(car_park.tariff.currency.as_str()),
            created_at: now,
            cancel_until: request.start - cancel_notice,
            no_show_at,
            driver: driver.clone(),
            idempotency_key: Arc::from(request.idempotency_key.as_str()),
            changed_at: None,
            cancel_reason: Arc::from(""),
        };
        self.reservations.push(Arc::new(reservation.clone()));
        Ok(Created::New(reservation))
    }

    /// The reservation `id` as `actor` may see it: a driver sees only their own (another
    /// driver's is NOT_FOUND, so ids reveal nothing).
    pub fn visible(&self, id: &ReservationId, actor: Actor<'_>) -> Result<&Reservation, Error> {
        match self.get(id) {
            Some(r) if actor == Actor::Operator || actor == Actor::Driver(&r.driver) => Ok(r),
            _ => Err(Error::NotFound {
                kind: "reservation",
                id: id.to_string(),
            }),
        }
    }

    fn visible_mut(
        &mut self,
        id: &ReservationId,
        actor: Actor<'_>,
    ) -> Result<&mut Reservation, Error> {
        self.visible(id, actor)?;
        let r = self
            .reservations
            .iter_mut()
            .find(|r| &r.id == id)
            .expect("just found");
        Ok(Arc::make_mut(r))
    }

    /// A driver cancels their RESERVED reservation, before its cancel limit.
    pub fn cancel(
        &mut self,
        id: &ReservationId,
        driver: &DriverId,
        reason: &str,
        now: Timestamp,
    ) -> Result<Reservation, Error> {
        let r = self.visible_mut(id, Actor::Driver(driver))?;
        if r.state != ReservationState::Reserved {
            return Err(r.wrong_state("cancelled", ReservationState::Reserved));
        }
        if now >= r.cancel_until {
            return Err(Error::FailedPrecondition(format!(
                "reservation {} could be cancelled until {}",
                r.id, r.cancel_until
            )));
        }
        r.state = ReservationState::Cancelled;
        r.changed_at = Some(now);
        r.cancel_reason = Arc::from(reason);
        Ok(r.clone())
    }

    /// The car arrived: RESERVED → CHECKED_IN, from the grace before the start until
    /// the no-show time. The held space becomes the operator's counted car.
    pub fn check_in(
        &mut self,
        id: &ReservationId,
        actor: Actor<'_>,
        grace: Duration,
        now: Timestamp,
    ) -> Result<Reservation, Error> {
        let r = self.visible_mut(id, actor)?;
        if r.state != ReservationState::Reserved {
            return Err(r.wrong_state("checked in", ReservationState::Reserved));
        }
        if now < r.arrival_from(grace) {
            return Err(Error::FailedPrecondition(format!(
                "reservation {} can be checked in from {}",
                r.id,
                r.arrival_from(grace)
            )));
        }
        if now >= r.no_show_at {
            return Err(Error::FailedPrecondition(format!(
                "reservation {} was due by {}: a no-show",
                r.id, r.no_show_at
            )));
        }
        r.state = ReservationState::CheckedIn;
        r.changed_at = Some(now);
        Ok(r.clone())
    }

    /// The car left: CHECKED_IN → COMPLETED; its slots are free again.
    pub fn check_out(
        &mut self,
        id: &ReservationId,
        actor: Actor<'_>,
        now: Timestamp,
    ) -> Result<Reservation, Error> {
        let r = self.visible_mut(id, actor)?;
        if r.state != ReservationState::CheckedIn {
            return Err(r.wrong_state("checked out", ReservationState::CheckedIn));
        }
        r.state = ReservationState::Completed;
        r.changed_at = Some(now);
        Ok(r.clone())
    }

    /// A plate seen at the gate at `at`: an entry checks in the RESERVED reservation
    /// for it whose arrival window covers `at`; an exit completes its CHECKED_IN one.
    /// Returns the reservation changed, if any.
    pub fn plate_seen(
        &mut self,
        plate: &Plate,
        entry: bool,
        grace: Duration,
        at: Timestamp,
    ) -> Option<Reservation> {
        let r = if entry {
            self.reservations.iter_mut().find(|r| {
                &r.plate == plate
                    && r.state == ReservationState::Reserved
                    && r.arrival_from(grace) <= at
                    && at < r.no_show_at
            })?
        } else {
            self.reservations
                .iter_mut()
                .find(|r| &r.plate == plate && r.state == ReservationState::CheckedIn)?
        };
        let r = Arc::make_mut(r);
        r.state = if entry {
            ReservationState::CheckedIn
        } else {
            ReservationState::Completed
        };
        r.changed_at = Some(at);
        Some(r.clone())
    }

    /// RESERVED reservations whose no-show time has come become NO_SHOW, releasing their
    /// slots; returns them.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Reservation> {
        let mut expired = Vec::new();
        for r in &mut self.reservations {
            if r.state == ReservationState::Reserved && r.no_show_at <= now {
                let r = Arc::make_mut(r);
                r.state = ReservationState::NoShow;
                r.changed_at = Some(now);
                expired.push(r.clone());
            }
        }
        expired
    }

    /// Drops finished reservations whose window ended more than the retention ago, and
    /// CHECKED_IN ones a day past it (their car's exit went unseen).
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.reservations.len();
        let day = Duration::from_secs(86_400);
        self.reservations.retain(|r| match r.state {
            ReservationState::Reserved => true,
            ReservationState::CheckedIn => now < r.end + day,
            _ => now < r.end + FINISHED_RETENTION,
        });
        before - self.reservations.len()
    }

    /// The next instant after `now` at which what is held changes or a no-show falls
    /// due: a RESERVED reservation's start or no-show time.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.reservations
            .iter()
            .filter(|r| r.state == ReservationState::Reserved)
            .flat_map(|r| [r.start, r.no_show_at])
            .filter(|t| *t > now)
            .min()
    }

    /// Whether a RESERVED reservation is overdue at `now` (the sweeper's work).
    pub fn has_overdue(&self, now: Timestamp) -> bool {
        self.reservations
            .iter()
            .any(|r| r.state == ReservationState::Reserved && r.no_show_at <= now)
    }

    /// What can still be reserved in each slot `[start, end)` touches, for `category`.
    pub fn calendar(
        &self,
        policy: &ReservationPolicy,
        category: SpaceCategory,
        start: Timestamp,
        end: Timestamp,
    ) -> Vec<CalendarSlot> {
        let quota = policy.quota(category);
        let (first, last) = policy.slots(start, end);
        let used = self.used_in(policy, category, first, last);
        (first..=last)
            .map(|s| CalendarSlot {
                start: policy.slot_start(s),
                end: policy.slot_start(s + 1),
                remaining: quota.saturating_sub(used[(s - first) as usize]),
            })
            .collect()
    }
}

/// A driver's idempotency key names one reservation: refuses a key already used by one
/// of `elsewhere`, the driver's reservations at other car parks.
pub fn check_key_elsewhere(elsewhere: &[Reservation], key: &str) -> Result<(), Error> {
    if elsewhere.iter().any(|r| &*r.idempotency_key == key) {
        return Err(Error::invalid(
            "idempotency_key",
            "was used for a reservation at another car park",
        ));
    }
    Ok(())
}

/// Slots a calendar answers at most (a week of 15-minute slots).
pub const MAX_CALENDAR_SLOTS: usize = 7 * 96;

/// Checks a calendar request's window against `policy`: the slots it would list.
pub fn calendar_slots(
    policy: &ReservationPolicy,
    start: Timestamp,
    end: Timestamp,
) -> Result<usize, Error> {
    if end <= start {
        return Err(Error::invalid("end_time", "must be after start_time"));
    }
    let (first, last) = policy.slots(start, end);
    let n = (last - first + 1) as usize;
    if n > MAX_CALENDAR_SLOTS {
        return Err(Error::invalid(
            "end_time",
            format!("a calendar lists at most {MAX_CALENDAR_SLOTS} slots; this window has {n}"),
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Capacity, CarParkKind, LatLng, OpeningHours, OperatorId, Tariff, TimeZoneName,
    };
    use SpaceCategory::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-12-01T{s}:00Z").parse().unwrap()
    }

    fn car_park(quota: u32) -> CarPark {
        let mut q = [0; CATEGORY_COUNT];
        q[Standard.index()] = quota;
        CarPark {
            id: CarParkId::parse("g1").unwrap(),
            region: RegionId::parse("qingdao").unwrap(),
            operator: OperatorId::parse("op").unwrap(),
            name: "Garage".into(),
            address: String::new(),
            location: LatLng::new(36.0, 120.0).unwrap(),
            kind: CarParkKind::Garage,
            capacity: Capacity::new([(Standard, 10), (EvCharging, 2)]).unwrap(),
            time_zone: TimeZoneName::parse("Asia/Shanghai").unwrap(),
            opening_hours: OpeningHours::always(),
            closed: false,
            tariff: Tariff::new("CNY", 500, 0, 0).unwrap(),
            covered: true,
            max_height_cm: None,
            report_interval: Duration::from_secs(60),
            reservation_policy: Some(Box::new(
                ReservationPolicy::new(q, 15, 240, 7, 15, 30).unwrap(),
            )),
        }
    }

    fn request(start: &str, end: &str, key: &str) -> ReservationRequest {
        ReservationRequest {
            category: Standard,
            start: t(start),
            end: t(end),
            plate: Plate::parse("鲁B·12345").unwrap(),
            idempotency_key: key.into(),
        }
    }

    fn driver(name: &str) -> DriverId {
        DriverId::parse(name).unwrap()
    }

    /// `who` asks `ledger` of `cp` for a standard space over [start, end) with `key`
    /// at `now` (10 spaces free, no other reservations, the default limit of 3).
    fn book(
        (cp, ledger): (&CarPark, &mut Ledger),
        (start, end): (&str, &str),
        key: &str,
        who: &str,
        now: &str,
    ) -> Result<Created, Error> {
        let n = ledger.reservations.len();
        let req = request(start, end, key);
        ledger.reserve(cp, &req, &driver(who), 10, 0, 3, &format!("r{n}"), t(now))
    }

    #[test]
    fn no_slot_is_booked_beyond_its_quota_and_touching_windows_do_not_overlap() {
        let cp = car_park(2);
        let mut ledger = Ledger::new(&cp);
        book((&cp, &mut ledger), ("10:00", "11:00"), "a", "a", "08:00").unwrap();
        book((&cp, &mut ledger), ("10:30", "11:30"), "b", "b", "08:00").unwrap();
        // 10:45-11:00 is full (both), so a window touching it is refused, naming it.
        let err = book((&cp, &mut ledger), ("10:50", "12:00"), "c", "c", "08:00").unwrap_err();
        assert!(err.to_string().contains("fully booked"), "{err}");
        assert!(err.to_string().contains("2026-12-01T10:45:00Z"), "{err}");
        // 11:00 onwards only b: one more fits; a window ending at 10:00 touches nothing.
        book((&cp, &mut ledger), ("11:00", "12:00"), "d", "d", "08:00").unwrap();
        book((&cp, &mut ledger), ("09:00", "10:00"), "e", "e", "08:00").unwrap();
        let cal = ledger.calendar(
            cp.reservation_policy.as_ref().unwrap(),
            Standard,
            t("09:45"),
            t("11:15"),
        );
        let remaining: Vec<u32> = cal.iter().map(|s| s.remaining).collect();
        assert_eq!(remaining, [1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn a_cancelled_or_no_show_reservation_frees_its_slots() {
        let cp = car_park(1);
        let mut ledger = Ledger::new(&cp);
        let Created::New(r) =
            book((&cp, &mut ledger), ("10:00", "11:00"), "a", "a", "08:00").unwrap()
        else {
            panic!()
        };
        assert!(book((&cp, &mut ledger), ("10:00", "11:00"), "b", "b", "08:00").is_err());
        ledger
            .cancel(&r.id, &driver("a"), "plans changed", t("08:30"))
            .unwrap();
        let Created::New(b) =
            book((&cp, &mut ledger), ("10:00", "11:00"), "b", "b", "08:40").unwrap()
        else {
            panic!()
        };
        assert_eq!(ledger.held(Standard, t("10:05")), 1);
        let expired = ledger.expire(t("10:15"));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, b.id);
        assert_eq!(ledger.held(Standard, t("10:15")), 0);
        assert!(book((&cp, &mut ledger), ("10:20", "11:00"), "c", "c", "10:16").is_ok());
    }

    #[test]
    fn lifecycle_transitions_are_the_only_ones_allowed() {
        let cp = car_park(5);
        let mut ledger = Ledger::new(&cp);
        let grace = Duration::from_secs(900);
        let Created::New(r) =
            book((&cp, &mut ledger), ("10:00", "11:00"), "a", "a", "08:00").unwrap()
        else {
            panic!()
        };
        let a = driver("a");
        let err = ledger
            .check_out(&r.id, Actor::Driver(&a), t("09:00"))
            .unwrap_err();
        assert!(err.to_string().contains("RESERVED"), "{err}");
        assert!(
            ledger
                .check_in(&r.id, Actor::Driver(&a), grace, t("09:30"))
                .is_err()
        );
        ledger
            .check_in(&r.id, Actor::Operator, grace, t("09:50"))
            .unwrap();
        assert_eq!(
            ledger.held(Standard, t("10:00")),
            0,
            "a check-in releases the hold"
        );
        let err = ledger.cancel(&r.id, &a, "", t("09:55")).unwrap_err();
        assert!(err.to_string().contains("CHECKED_IN"), "{err}");
        let done = ledger
            .check_out(&r.id, Actor::Driver(&a), t("10:40"))
            .unwrap();
        assert_eq!(done.state, ReservationState::Completed);
        // Another driver cannot see it at all.
        let err = ledger
            .visible(&r.id, Actor::Driver(&driver("b")))
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }));
    }

    #[test]
    fn retries_with_the_same_key_return_the_same_reservation() {
        let cp = car_park(5);
        let mut ledger = Ledger::new(&cp);
        let first = book((&cp, &mut ledger), ("10:00", "11:00"), "k", "a", "08:00").unwrap();
        let again = book((&cp, &mut ledger), ("10:00", "11:00"), "k", "a", "08:01").unwrap();
        let (Created::New(a), Created::Existing(b)) = (first, again) else {
            panic!()
        };
        assert_eq!(a, b);
        let err = book((&cp, &mut ledger), ("10:00", "12:00"), "k", "a", "08:01").unwrap_err();
        assert!(err.to_string().starts_with("idempotency_key"), "{err}");
        // Another driver's same key is another reservation.
        assert!(matches!(
            book((&cp, &mut ledger), ("10:00", "11:00"), "k", "b", "08:01").unwrap(),
            Created::New(_)
        ));
    }

    #[test]
    fn bad_windows_are_refused_naming_the_field() {
        let cp = car_park(5);
        let mut ledger = Ledger::new(&cp);
        let cases = [
            (request("10:00", "09:00", "a"), "end_time"),
            (request("07:00", "07:30", "b"), "end_time"),
            (request("10:00", "15:00", "c"), "end_time"),
        ];
        let mut refuse = |req: ReservationRequest| {
            let who = driver("a");
            ledger
                .reserve(&cp, &req, &who, 10, 0, 3, "x", t("08:00"))
                .unwrap_err()
        };
        for (req, field) in cases {
            let err = refuse(req);
            assert!(err.to_string().starts_with(field), "{err}");
        }
        let mut far = request("10:00", "11:00", "d");
        far.start = t("10:00") + Duration::from_secs(8 * 86_400);
        far.end = far.start + Duration::from_secs(3600);
        let err = refuse(far);
        assert!(err.to_string().starts_with("start_time"), "{err}");
        let mut ev = request("10:00", "11:00", "e");
        ev.category = EvCharging;
        let err = refuse(ev);
        assert!(err.to_string().starts_with("category"), "{err}");
    }

    #[test]
    fn a_window_starting_now_needs_a_space_available_now() {
        let cp = car_park(5);
        let mut ledger = Ledger::new(&cp);
        let err = ledger
            .reserve(
                &cp,
                &request("10:00", "11:00", "a"),
                &driver("a"),
                0,
                0,
                3,
                "x",
                t("10:05"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("available now"), "{err}");
        ledger
            .reserve(
                &cp,
                &request("10:00", "11:00", "a"),
                &driver("a"),
                1,
                0,
                3,
                "x",
                t("10:05"),
            )
            .unwrap();
        // The one free space is now held by it.
        let err = ledger
            .reserve(
                &cp,
                &request("10:00", "11:00", "b"),
                &driver("b"),
                1,
                0,
                3,
                "y",
                t("10:05"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("available now"), "{err}");
    }

    #[test]
    fn a_driver_holds_at_most_the_limit() {
        let cp = car_park(9);
        let mut ledger = Ledger::new(&cp);
        for k in ["1", "2"] {
            book((&cp, &mut ledger), ("10:00", "11:00"), k, "a", "08:00").unwrap();
        }
        let err = ledger
            .reserve(
                &cp,
                &request("12:00", "13:00", "3"),
                &driver("a"),
                10,
                1,
                3,
                "z",
                t("08:00"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("at most 3"), "{err}");
    }

    #[test]
    fn plates_are_normalised_and_kept_out_of_debug_output() {
        let p = Plate::parse("鲁b 12345").unwrap();
        assert_eq!(p, Plate::parse("鲁B·123-45").unwrap());
        assert_eq!(p.as_str(), "鲁B12345");
        assert!(!format!("{p:?}").contains("12345"));
        assert!(Plate::parse("A").is_err());
        assert!(Plate::parse("AB\u{202e}12").is_err());
    }

    #[test]
    fn reservation_ids_name_their_car_park() {
        let id = ReservationId::parse("qd-1.a~0af9").unwrap();
        assert_eq!(id.car_park().as_str(), "qd-1.a");
        assert!(ReservationId::parse("qd-1").is_err());
        assert!(ReservationId::parse("~abc").is_err());
        assert!(ReservationId::parse("a~ABC").is_err());
    }

    #[test]
    fn plates_seen_at_the_gate_check_in_and_complete() {
        let cp = car_park(5);
        let mut ledger = Ledger::new(&cp);
        book((&cp, &mut ledger), ("10:00", "11:00"), "a", "a", "08:00").unwrap();
        let grace = Duration::from_secs(900);
        let plate = Plate::parse("鲁B12345").unwrap();
        assert!(
            ledger.plate_seen(&plate, true, grace, t("09:00")).is_none(),
            "too early"
        );
        let r = ledger.plate_seen(&plate, true, grace, t("09:50")).unwrap();
        assert_eq!(r.state, ReservationState::CheckedIn);
        let r = ledger.plate_seen(&plate, false, grace, t("10:30")).unwrap();
        assert_eq!(r.state, ReservationState::Completed);
        assert!(
            ledger
                .plate_seen(&plate, false, grace, t("10:31"))
                .is_none()
        );
    }

    mod model {
        //! The ledger against a model written another way: a count per slot, kept
        //! by hand, and the lifecycle as a table of allowed moves.

        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        const QUOTA: u32 = 3;
        const SLOT_S: i64 = 15 * 60;

        #[derive(Debug, Clone)]
        enum Op {
            Create { driver: u8, from: i64, slots: i64 },
            Cancel(usize),
            CheckIn(usize),
            CheckOut(usize),
            Wait(i64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..6, 1i64..20, 1i64..6).prop_map(|(driver, from, slots)| Op::Create { driver, from, slots }),
                1 => (0usize..40).prop_map(Op::Cancel),
                2 => (0usize..40).prop_map(Op::CheckIn),
                1 => (0usize..40).prop_map(Op::CheckOut),
                2 => (1i64..40).prop_map(|m| Op::Wait(m * 60)),
            ]
        }

        struct Model {
            /// Per reservation: start s, end s, state.
            made: Vec<(i64, i64, ReservationState, DriverId)>,
            /// Slot number → reservations counted in it.
            used: HashMap<i64, u32>,
        }

        impl Model {
            fn count(&mut self, start: i64, end: i64, by: i64) {
                for slot in start / SLOT_S..=(end - 1) / SLOT_S {
                    let n = self.used.entry(slot).or_default();
                    *n = (*n as i64 + by) as u32;
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn the_ledger_agrees_with_a_per_slot_model(ops in proptest::collection::vec(op(), 1..60)) {
                let cp = car_park(QUOTA);
                let grace = Duration::from_secs(15 * 60);
                let epoch: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
                let at = |s: i64| epoch + Duration::from_secs(s as u64);
                let mut ledger = Ledger::new(&cp);
                let mut model = Model { made: Vec::new(), used: HashMap::new() };
                let mut now = 0i64;
                let mut ids: Vec<ReservationId> = Vec::new();
                for op in ops {
                    match op {
                        Op::Create { driver, from, slots } => {
                            // Starts on a slot boundary ahead of now, so only the quota decides.
                            let start = (now / SLOT_S + from) * SLOT_S;
                            let end = start + slots * SLOT_S;
                            let who = DriverId::parse(&format!("d{driver}")).unwrap();
                            let request = ReservationRequest {
                                category: Standard,
                                start: at(start),
                                end: at(end),
                                plate: Plate::parse(&format!("P{}", ids.len())).unwrap(),
                                idempotency_key: format!("k{}", ids.len()),
                            };
                            let fits = (start / SLOT_S..=(end - 1) / SLOT_S)
                                .all(|s| model.used.get(&s).copied().unwrap_or(0) < QUOTA);
                            let got = ledger.reserve(&cp, &request, &who, 100, 0, 1_000, &format!("s{}", ids.len()), at(now));
                            prop_assert_eq!(got.is_ok(), fits, "create {}..{} at {}: {:?}", start, end, now, got);
                            if let Ok(Created::New(r)) = got {
                                ids.push(r.id);
                                model.made.push((start, end, ReservationState::Reserved, who));
                                model.count(start, end, 1);
                            }
                        }
                        Op::Cancel(k) if k < ids.len() => {
                            let (start, end, state, who) = model.made[k].clone();
                            // The test policy takes cancellations until 30 minutes before the start.
                            let allowed = state == ReservationState::Reserved && now < start - 30 * 60;
                            let got = ledger.cancel(&ids[k], &who, "", at(now));
                            prop_assert_eq!(got.is_ok(), allowed);
                            if allowed {
                                model.made[k].2 = ReservationState::Cancelled;
                                model.count(start, end, -1);
                            }
                        }
                        Op::CheckIn(k) if k < ids.len() => {
                            let (start, end, state, _) = model.made[k].clone();
                            let no_show_at = (start + 15 * 60).min(end);
                            let allowed = state == ReservationState::Reserved
                                && start - 15 * 60 <= now
                                && now < no_show_at;
                            let got = ledger.check_in(&ids[k], Actor::Operator, grace, at(now));
                            prop_assert_eq!(got.is_ok(), allowed);
                            if allowed {
                                model.made[k].2 = ReservationState::CheckedIn;
                            }
                        }
                        Op::CheckOut(k) if k < ids.len() => {
                            let (start, end, state, _) = model.made[k].clone();
                            let allowed = state == ReservationState::CheckedIn;
                            let got = ledger.check_out(&ids[k], Actor::Operator, at(now));
                            prop_assert_eq!(got.is_ok(), allowed);
                            if allowed {
                                model.made[k].2 = ReservationState::Completed;
                                model.count(start, end, -1);
                            }
                        }
                        Op::Wait(seconds) => {
                            now += seconds;
                            let expired = ledger.expire(at(now)).len();
                            let mut due = 0;
                            for k in 0..model.made.len() {
                                let (start, end, state, _) = model.made[k].clone();
                                if state == ReservationState::Reserved && (start + 15 * 60).min(end) <= now {
                                    model.made[k].2 = ReservationState::NoShow;
                                    model.count(start, end, -1);
                                    due += 1;
                                }
                            }
                            prop_assert_eq!(expired, due);
                        }
                        _ => {}
                    }
                    // After every step: every slot's remaining space, and every state.
                    let policy = cp.reservation_policy.as_ref().unwrap();
                    let (from, to) = (at(now - now % SLOT_S), at(now - now % SLOT_S + 30 * SLOT_S));
                    for slot in ledger.calendar(policy, Standard, from, to) {
                        let n = (slot.start.as_second() - epoch.as_second()) / SLOT_S;
                        prop_assert_eq!(slot.remaining, QUOTA - model.used.get(&n).copied().unwrap_or(0));
                    }
                    for (k, id) in ids.iter().enumerate() {
                        prop_assert_eq!(ledger.get(id).unwrap().state, model.made[k].2);
                    }
                }
            }
        }
    }
}
