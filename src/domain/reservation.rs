//! Reservations (预约停车): the policy a car park offers, a reservation's lifecycle, and
//! the slot counts whose rules keep every slot within quota.
//!
//! Time is cut into slots of the policy's length (aligned to the Unix epoch, so to
//! whole minutes of UTC); a window [start, end) counts in every slot it touches. In no
//! slot do RESERVED + CHECKED_IN reservations of a category exceed the category's
//! quota. A RESERVED reservation holds a space from its start until the driver arrives
//! or the no-show grace runs out; what is available to everyone else is free − held.
//!
//! A car park's ledger is two kinds of record: each reservation, and per UTC day the
//! count of reservations in each slot ([`SlotCounts`]). A change that takes or frees
//! slots changes the reservation and the days it touches together, so every change is
//! as small as one reservation, however many a car park holds.

use std::{fmt, ops::RangeInclusive, sync::Arc, time::Duration};

use super::{
    CATEGORY_COUNT, CarPark, CarParkId, DriverId, Error, RegionId, SpaceCategory, Stay, Timestamp,
};

/// How long after its window a CHECKED_IN reservation whose car's exit went unseen is
/// taken as finished.
pub const CHECKED_IN_RETENTION: Duration = Duration::from_secs(86_400);

const DAY_MS: i64 = 86_400_000;

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

    /// All but its last two characters masked, for anyone but its driver.
    pub fn masked(&self) -> String {
        let n = self.0.chars().count();
        self.0
            .chars()
            .enumerate()
            .map(|(i, c)| if i + 2 < n { '*' } else { c })
            .collect()
    }
}

impl fmt::Debug for Plate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plate(<{} chars>)", self.0.chars().count())
    }
}

string_form!(Plate);

/// An id `<owner id>~<suffix>` of a record that belongs to one owner (a reservation
/// to its car park, a shared booking to its offer): the owner's records live in its
/// region, and `for_key` makes the id of a driver's idempotency key.
macro_rules! owned_id {
    ($(#[$doc:meta])* $name:ident, $owner:ty, $owner_fn:ident, $what:literal, $owner_what:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id `suffix` (1-32 of `0-9a-z`) names under `owner`.
            pub fn new(owner: &$owner, suffix: &str) -> Self {
                Self(Arc::from(format!("{owner}~{suffix}")))
            }

            /// The id of `driver`'s record with idempotency key `key` under `owner`:
            /// `key_suffix`, the same on every instance and version, so that creating
            /// it is "write if absent" and a retry anywhere finds the first.
            pub fn for_key(owner: &$owner, driver: &DriverId, key: &str) -> Self {
                Self::new(owner, &$crate::domain::key_suffix(driver, key))
            }

            pub fn parse(value: &str) -> Result<Self, Error> {
                let bad = || {
                    Error::invalid("", concat!("not a ", $what, " id (<", $owner_what, " id>~<suffix>)"))
                };
                let (owner, suffix) = value.rsplit_once('~').ok_or_else(bad)?;
                <$owner>::parse(owner).map_err(|_| bad())?;
                let suffix_ok = (1..=32).contains(&suffix.len())
                    && suffix
                        .chars()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
                if !suffix_ok {
                    return Err(bad());
                }
                Ok(Self(Arc::from(value)))
            }

            /// Whose it is.
            pub fn $owner_fn(&self) -> $owner {
                let (owner, _) = self.0.rsplit_once('~').expect("checked at parse");
                <$owner>::parse(owner).expect("checked at parse")
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self, Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }
    };
}
pub(crate) use owned_id;

owned_id!(
    /// A reservation's id: `<car park id>~<suffix>`, so it names its car park (and so
    /// the region its record lives in).
    ReservationId,
    CarParkId,
    car_park,
    "reservation",
    "car park"
);

/// The id suffix of `driver`'s record made with idempotency key `key`: XXH3-128 of
/// the driver, NUL and the key, as 25 base-36 digits. Stable across instances and
/// versions, so that a create is "write if absent" and a retry anywhere finds the
/// first.
pub(crate) fn key_suffix(driver: &DriverId, key: &str) -> String {
    let mut input = Vec::with_capacity(driver.as_str().len() + key.len() + 1);
    input.extend_from_slice(driver.as_str().as_bytes());
    // Ids and keys never hold NUL: "ab" + "c" and "a" + "bc" stay apart.
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    base36(xxhash_rust::xxh3::xxh3_128(&input))
}

/// A 128-bit hash as 25 base-36 digits.
fn base36(mut hash: u128) -> String {
    let mut digits = [b'0'; 25];
    for digit in digits.iter_mut().rev() {
        *digit = char::from_digit((hash % 36) as u32, 36).expect("< 36") as u8;
        hash /= 36;
    }
    String::from_utf8(digits.to_vec()).expect("ascii")
}

/// A plate's stable hash, as 25 base-36 digits: a key that names no plate.
pub(crate) fn plate_hash(plate: &Plate) -> String {
    base36(xxhash_rust::xxh3::xxh3_128(plate.as_str().as_bytes()))
}

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
    /// The car park's region: its records live there.
    pub region: RegionId,
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

    /// Whether `actor` may see and act on it: its driver, or its car park's operator.
    /// Anyone else is told it does not exist, so ids reveal nothing.
    pub fn visible_to(&self, actor: Actor<'_>) -> bool {
        actor == Actor::Operator || actor == Actor::Driver(&self.driver)
    }

    /// Whether the change that led from `before` to this state freed its slots.
    pub fn freed_slots(&self, before: ReservationState) -> bool {
        before.occupies_slots() && !self.state.occupies_slots()
    }

    /// The driver cancels it while RESERVED, before its cancel limit.
    pub fn cancel(&mut self, reason: &str, now: Timestamp) -> Result<(), Error> {
        if self.state != ReservationState::Reserved {
            return Err(self.wrong_state("cancelled", ReservationState::Reserved));
        }
        if now >= self.cancel_until {
            return Err(Error::FailedPrecondition(format!(
                "reservation {} could be cancelled until {}",
                self.id, self.cancel_until
            )));
        }
        self.state = ReservationState::Cancelled;
        self.changed_at = Some(now);
        self.cancel_reason = Arc::from(reason);
        Ok(())
    }

    /// The car arrived: RESERVED → CHECKED_IN, from the grace before the start until
    /// the no-show time. The held space becomes the operator's counted car.
    pub fn check_in(&mut self, grace: Duration, now: Timestamp) -> Result<(), Error> {
        if self.state != ReservationState::Reserved {
            return Err(self.wrong_state("checked in", ReservationState::Reserved));
        }
        if now < self.arrival_from(grace) {
            return Err(Error::FailedPrecondition(format!(
                "reservation {} can be checked in from {}",
                self.id,
                self.arrival_from(grace)
            )));
        }
        if now >= self.no_show_at {
            return Err(Error::FailedPrecondition(format!(
                "reservation {} was due by {}: a no-show",
                self.id, self.no_show_at
            )));
        }
        self.state = ReservationState::CheckedIn;
        self.changed_at = Some(now);
        Ok(())
    }

    /// The car left: CHECKED_IN → COMPLETED; its slots are free again.
    pub fn check_out(&mut self, now: Timestamp) -> Result<(), Error> {
        if self.state != ReservationState::CheckedIn {
            return Err(self.wrong_state("checked out", ReservationState::CheckedIn));
        }
        self.state = ReservationState::Completed;
        self.changed_at = Some(now);
        Ok(())
    }

    /// Whether its plate seen at the gate at `at` moves it on: an entry checks in a
    /// RESERVED one whose arrival window covers `at`; an exit completes a CHECKED_IN
    /// one.
    pub fn matches_gate(&self, plate: &Plate, entry: bool, grace: Duration, at: Timestamp) -> bool {
        &self.plate == plate
            && if entry {
                self.state == ReservationState::Reserved
                    && self.arrival_from(grace) <= at
                    && at < self.no_show_at
            } else {
                self.state == ReservationState::CheckedIn
            }
    }

    /// Its plate seen at the gate at `at` (see `matches_gate`): checked in or completed.
    pub fn pass_gate(&mut self, entry: bool, grace: Duration, at: Timestamp) -> Result<(), Error> {
        if entry {
            self.check_in(grace, at)
        } else {
            self.check_out(at)
        }
    }

    /// RESERVED past its no-show time: it becomes NO_SHOW, releasing its slots. False
    /// (and unchanged) if it is not overdue.
    pub fn expire(&mut self, now: Timestamp) -> bool {
        if self.state != ReservationState::Reserved || now < self.no_show_at {
            return false;
        }
        self.state = ReservationState::NoShow;
        self.changed_at = Some(now);
        true
    }

    /// When it finished, so that it may move to history once the hot window has
    /// passed: a completed, cancelled or no-show one at the end of its window (or its
    /// last change, if later), a CHECKED_IN one a day after its window (its car's exit
    /// went unseen); never while RESERVED (the sweeper makes it a no-show first).
    pub fn finished_at(&self) -> Option<Timestamp> {
        match self.state {
            ReservationState::Reserved => None,
            ReservationState::CheckedIn => Some(self.end + CHECKED_IN_RETENTION),
            _ => Some(self.changed_at.map_or(self.end, |c| c.max(self.end))),
        }
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
    /// A new reservation; the slot counts it takes are changed.
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

/// One ledger's windows counted per slot for one UTC day, per category: the record
/// every change that takes or frees slots of that day writes, so two writers cannot
/// both take a slot's last space. A ledger is a car park's reservations, or a shared
/// offer's bookings. A day keeps the slot length it was first counted in: an
/// operator's new slot length applies to days not booked yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotCounts {
    /// Whose slots: a car park's id, or `@` and a shared offer's id (`@` is in no id,
    /// so the two never meet).
    pub ledger: Arc<str>,
    pub region: RegionId,
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    pub slot_minutes: u32,
    /// Per category, per slot of the day, RESERVED + CHECKED_IN reservations touching
    /// it; empty for a category nothing is counted in.
    pub counts: [Vec<u16>; CATEGORY_COUNT],
}

impl SlotCounts {
    /// A day of `car_park`'s reservations with nothing counted, in `policy`'s slot
    /// length.
    pub fn new(car_park: &CarPark, policy: &ReservationPolicy, day: i64) -> Self {
        Self::empty(
            car_park.id.as_str(),
            &car_park.region,
            policy.slot_minutes,
            day,
        )
    }

    /// A day of ledger `ledger` with nothing counted.
    pub fn empty(ledger: &str, region: &RegionId, slot_minutes: u32, day: i64) -> Self {
        Self {
            ledger: Arc::from(ledger),
            region: region.clone(),
            day,
            slot_minutes,
            counts: Default::default(),
        }
    }

    /// The record id of ledger `ledger`'s day `day`.
    pub fn id_of(ledger: &str, day: i64) -> String {
        format!("{ledger}~{day}")
    }

    pub fn id(&self) -> String {
        Self::id_of(&self.ledger, self.day)
    }

    /// The UTC days [start, end) touches.
    pub fn days(start: Timestamp, end: Timestamp) -> RangeInclusive<i64> {
        let first = start.as_millisecond().div_euclid(DAY_MS);
        let last = (end.as_millisecond() - 1).div_euclid(DAY_MS);
        first..=last.max(first)
    }

    /// The day `at` falls in.
    pub fn day_of(at: Timestamp) -> i64 {
        at.as_millisecond().div_euclid(DAY_MS)
    }

    fn slot_ms(&self) -> i64 {
        i64::from(self.slot_minutes) * 60_000
    }

    fn day_start_ms(&self) -> i64 {
        self.day * DAY_MS
    }

    /// The slots of this day [start, end) touches, as indexes into the day.
    fn slots(&self, start: Timestamp, end: Timestamp) -> std::ops::Range<usize> {
        let (from, ms) = (self.day_start_ms(), self.slot_ms());
        let per_day = DAY_MS / ms;
        let first = (start.as_millisecond() - from).div_euclid(ms).max(0);
        let last = (end.as_millisecond() - 1 - from)
            .div_euclid(ms)
            .min(per_day - 1);
        if last < first {
            return 0..0;
        }
        first as usize..last as usize + 1
    }

    fn slot_start(&self, slot: usize) -> Timestamp {
        Timestamp::from_millisecond(self.day_start_ms() + slot as i64 * self.slot_ms())
            .expect("a slot within range")
    }

    fn used(&self, category: SpaceCategory, slot: usize) -> u32 {
        self.counts[category.index()]
            .get(slot)
            .map_or(0, |n| u32::from(*n))
    }

    /// The first slot of this day in [start, end) with `quota` or more counted.
    pub fn first_full(
        &self,
        category: SpaceCategory,
        start: Timestamp,
        end: Timestamp,
        quota: u32,
    ) -> Option<Timestamp> {
        self.slots(start, end)
            .find(|&s| self.used(category, s) >= quota)
            .map(|s| self.slot_start(s))
    }

    /// Counts a window of `category` in the slots of this day it touches (`by` +1 to
    /// take, -1 to free).
    fn count(&mut self, category: SpaceCategory, start: Timestamp, end: Timestamp, by: i32) {
        let per_day = (DAY_MS / self.slot_ms()) as usize;
        let slots = self.slots(start, end);
        let counts = &mut self.counts[category.index()];
        if counts.is_empty() {
            counts.resize(per_day, 0);
        }
        for s in slots {
            counts[s] = (i32::from(counts[s]) + by).clamp(0, i32::from(u16::MAX)) as u16;
        }
        if counts.iter().all(|n| *n == 0) {
            counts.clear();
        }
    }

    /// Takes the slots of this day that a window of `category` touches.
    pub fn take(&mut self, category: SpaceCategory, start: Timestamp, end: Timestamp) {
        self.count(category, start, end, 1);
    }

    /// Frees them.
    pub fn release(&mut self, category: SpaceCategory, start: Timestamp, end: Timestamp) {
        self.count(category, start, end, -1);
    }

    /// What can still be reserved in each slot of this day [start, end) touches.
    pub fn calendar(
        &self,
        category: SpaceCategory,
        quota: u32,
        start: Timestamp,
        end: Timestamp,
    ) -> impl Iterator<Item = CalendarSlot> + '_ {
        self.slots(start, end).map(move |s| CalendarSlot {
            start: self.slot_start(s),
            end: self.slot_start(s + 1),
            remaining: quota.saturating_sub(self.used(category, s)),
        })
    }

    /// Whether the day is over long enough that nothing will ever count in it again.
    pub fn is_past(&self, now: Timestamp) -> bool {
        Self::day_of(now) > self.day + 1
    }
}

/// The policy a create at `car_park` is decided under, if `request`'s window is one
/// `car_park` takes at `now`; else why not, naming the field.
pub fn check_window<'a>(
    car_park: &'a CarPark,
    request: &ReservationRequest,
    now: Timestamp,
) -> Result<&'a ReservationPolicy, Error> {
    let Some(policy) = &car_park.reservation_policy else {
        return Err(Error::FailedPrecondition(format!(
            "car park {} takes no reservations",
            car_park.id
        )));
    };
    if policy.quota(request.category) == 0 {
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
    Ok(policy)
}

/// What a create is decided on besides the request: read by the service from its
/// replica or, after a conflict, from the authority.
#[derive(Debug)]
pub struct Booking<'a> {
    /// What the driver's id for this key already names, if anything.
    pub existing: Option<&'a Reservation>,
    /// The slot counts of every day the window touches (`SlotCounts::days`), in order;
    /// a day not counted yet as `SlotCounts::new`. Changed in place by a new
    /// reservation.
    pub days: &'a mut [SlotCounts],
    /// The category's free count as last reported, and what reservations hold of it
    /// now (for a window that covers now).
    pub free_now: u32,
    pub held_now: u32,
}

/// How long a claim counts while its reservation is not seen: the create that made it
/// writes the reservation at once, so a claim this old whose reservation never
/// appeared is one whose create failed or whose instance stopped.
pub const CLAIM_GRACE: Duration = Duration::from_secs(60);

/// The reservations a driver's creates are taking, one record per driver in the
/// driver's account shard (`accounts_region`): the one record every create for the
/// driver writes, at whichever car park and on whichever instance, so that its limit
/// is checked and taken in one compare-and-set and two creates at once cannot both
/// pass it. A reservation's own records live in its car park's region, which one
/// atomic write cannot span; so a create claims here first, then writes the
/// reservation. A claim counts until the replica holds its reservation (whose state
/// then decides) or, if it never appears, for [`CLAIM_GRACE`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReservationClaims {
    pub driver: DriverId,
    pub region: RegionId,
    pub claims: Vec<Claim>,
}

/// One create's claim: the reservation it makes, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    pub reservation: ReservationId,
    pub at: Timestamp,
}

impl ReservationClaims {
    /// A driver's record with no claim.
    pub fn new(driver: &DriverId) -> Self {
        Self {
            driver: driver.clone(),
            region: super::accounts_region(driver.as_str()),
            claims: Vec::new(),
        }
    }

    /// Claims `id` for the driver, whose reservations the replica holds as `held`
    /// (read at once, so a claim is either among them or not yet seen) and who may hold
    /// `max` RESERVED: refused when those and the claims still in flight reach `max`.
    /// Claims whose reservation is seen (counted by its state now) or too old to count
    /// are dropped. Whether the record changed.
    pub fn claim(
        &mut self,
        id: &ReservationId,
        held: &[(ReservationId, ReservationState)],
        max: usize,
        now: Timestamp,
    ) -> Result<bool, Error> {
        let before = self.claims.len();
        let seen = |r: &ReservationId| held.iter().any(|(h, _)| h == r);
        self.claims
            .retain(|c| !seen(&c.reservation) && now < c.at + CLAIM_GRACE);
        if self.claims.iter().any(|c| c.reservation == *id) {
            // A retry of a create in flight: it was counted when it claimed.
            return Ok(self.claims.len() != before);
        }
        let reserved = held
            .iter()
            .filter(|(_, state)| *state == ReservationState::Reserved)
            .count();
        if reserved + self.claims.len() >= max {
            return Err(Error::FailedPrecondition(format!(
                "a driver may hold at most {max} reservations at once"
            )));
        }
        self.claims.push(Claim {
            reservation: id.clone(),
            at: now,
        });
        Ok(true)
    }

    /// Gives back the claim of a create that made nothing; whether there was one.
    pub fn release(&mut self, id: &ReservationId) -> bool {
        let before = self.claims.len();
        self.claims.retain(|c| c.reservation != *id);
        self.claims.len() != before
    }

    /// Whether every claim is past [`CLAIM_GRACE`], so none counts any more: the record
    /// can go (a record lives about a minute after its driver's last create, and a
    /// driver's creates within it share one).
    pub fn spent(&self, now: Timestamp) -> bool {
        self.claims.iter().all(|c| now >= c.at + CLAIM_GRACE)
    }
}

/// Makes the reservation `id` for `driver`, or says why not.
pub fn reserve(
    car_park: &CarPark,
    request: &ReservationRequest,
    driver: &DriverId,
    id: ReservationId,
    booking: Booking<'_>,
    now: Timestamp,
) -> Result<Created, Error> {
    if let Some(existing) = booking.existing {
        let same = existing.driver == *driver
            && *existing.idempotency_key == *request.idempotency_key
            && existing.category == request.category
            && existing.start == request.start
            && existing.end == request.end
            && existing.plate == request.plate;
        return if same {
            Ok(Created::Existing(existing.clone()))
        } else {
            Err(Error::invalid(
                "idempotency_key",
                "was used for a different reservation",
            ))
        };
    }
    // The driver's limit was taken before, in its claims (`ReservationClaims`).
    let policy = check_window(car_park, request, now)?;
    let grace = Duration::from_secs(u64::from(policy.no_show_grace_minutes) * 60);
    let no_show_at = (request.start + grace).min(request.end);
    if request.start <= now
        && now < no_show_at
        && booking.free_now.saturating_sub(booking.held_now) == 0
    {
        return Err(Error::FailedPrecondition(format!(
            "fully booked: no {} space is available now",
            request.category.name()
        )));
    }
    let wanted: Vec<i64> = SlotCounts::days(request.start, request.end).collect();
    let given: Vec<i64> = booking.days.iter().map(|d| d.day).collect();
    if wanted != given
        || booking
            .days
            .iter()
            .any(|d| *d.ledger != *car_park.id.as_str())
    {
        return Err(Error::Internal(format!(
            "a create was decided on days {given:?}, not {wanted:?}"
        )));
    }
    let quota = policy.quota(request.category);
    if let Some(full) = booking
        .days
        .iter()
        .find_map(|d| d.first_full(request.category, request.start, request.end, quota))
    {
        return Err(Error::FailedPrecondition(format!(
            "fully booked: the slot from {full} is full"
        )));
    }
    let stay = Stay::new(request.start, request.end).expect("checked with the window");
    let cancel_notice = Duration::from_secs(u64::from(policy.cancel_until_minutes) * 60);
    let reservation = Reservation {
        id,
        car_park: car_park.id.clone(),
        region: car_park.region.clone(),
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
    for day in booking.days.iter_mut() {
        day.take(reservation.category, reservation.start, reservation.end);
    }
    Ok(Created::New(reservation))
}

/// What can still be reserved per slot of [start, end) for `category`, from the slot
/// counts of the days it touches (`days` in order, a day not counted yet as new).
pub fn calendar(
    policy: &ReservationPolicy,
    category: SpaceCategory,
    days: &[SlotCounts],
    start: Timestamp,
    end: Timestamp,
) -> Vec<CalendarSlot> {
    let quota = policy.quota(category);
    days.iter()
        .flat_map(|d| d.calendar(category, quota, start, end))
        .collect()
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
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{
        Capacity, CarParkKind, LatLng, OpeningHours, OperatorId, Tariff, TimeZoneName,
    };
    use SpaceCategory::*;

    fn t(s: &str) -> Timestamp {
        format!("2026-12-01T{s}:00Z").parse().unwrap()
    }

    pub(crate) fn car_park(quota: u32) -> CarPark {
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
            modified_at: Timestamp::UNIX_EPOCH,
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

    /// A car park's records as the service keeps them, in memory: the reservations by
    /// id and the slot counts by day.
    struct Records {
        cp: CarPark,
        reservations: BTreeMap<ReservationId, Reservation>,
        days: BTreeMap<i64, SlotCounts>,
        free_now: u32,
    }

    impl Records {
        fn new(quota: u32) -> Self {
            Self {
                cp: car_park(quota),
                reservations: BTreeMap::new(),
                days: BTreeMap::new(),
                free_now: 10,
            }
        }

        fn policy(&self) -> &ReservationPolicy {
            self.cp.reservation_policy.as_deref().unwrap()
        }

        fn held(&self, now: Timestamp) -> u32 {
            self.reservations
                .values()
                .filter(|r| r.holds_at(now))
                .count() as u32
        }

        /// What the service does for a create: read, decide, write back.
        fn reserve(
            &mut self,
            request: &ReservationRequest,
            who: &str,
            now: Timestamp,
        ) -> Result<Created, Error> {
            let who = driver(who);
            let id = ReservationId::for_key(&self.cp.id, &who, &request.idempotency_key);
            let mut days: Vec<SlotCounts> = match check_window(&self.cp, request, now) {
                Ok(policy) => SlotCounts::days(request.start, request.end)
                    .map(|d| {
                        self.days
                            .get(&d)
                            .cloned()
                            .unwrap_or_else(|| SlotCounts::new(&self.cp, policy, d))
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            // The limit, as the service takes it: a claim before the reservation.
            if !self.reservations.contains_key(&id) && check_window(&self.cp, request, now).is_ok()
            {
                let held: Vec<(ReservationId, ReservationState)> = self
                    .reservations
                    .values()
                    .filter(|r| r.driver == who)
                    .map(|r| (r.id.clone(), r.state))
                    .collect();
                ReservationClaims::new(&who).claim(&id, &held, 3, now)?;
            }
            let booking = Booking {
                existing: self.reservations.get(&id),
                days: &mut days,
                free_now: self.free_now,
                held_now: self.held(now),
            };
            let created = reserve(&self.cp, request, &who, id, booking, now)?;
            if let Created::New(r) = &created {
                self.reservations.insert(r.id.clone(), r.clone());
                for d in days {
                    self.days.insert(d.day, d);
                }
            }
            Ok(created)
        }

        /// What the service does for any other change: the reservation moved on, and
        /// its days freed when it left the states that occupy slots.
        fn change(
            &mut self,
            id: &ReservationId,
            change: impl FnOnce(&mut Reservation) -> Result<(), Error>,
        ) -> Result<Reservation, Error> {
            let mut r = self.reservations.get(id).cloned().expect("known id");
            let before = r.state;
            change(&mut r)?;
            if r.freed_slots(before) {
                for d in SlotCounts::days(r.start, r.end) {
                    self.days
                        .get_mut(&d)
                        .unwrap()
                        .release(r.category, r.start, r.end);
                }
            }
            self.reservations.insert(r.id.clone(), r.clone());
            Ok(r)
        }

        fn expire(&mut self, now: Timestamp) -> usize {
            let due: Vec<ReservationId> = self
                .reservations
                .values()
                .filter(|r| (*r).clone().expire(now))
                .map(|r| r.id.clone())
                .collect();
            for id in &due {
                self.change(id, |r| {
                    assert!(r.expire(now));
                    Ok(())
                })
                .unwrap();
            }
            due.len()
        }

        fn calendar(&self, start: Timestamp, end: Timestamp) -> Vec<CalendarSlot> {
            let days: Vec<SlotCounts> = SlotCounts::days(start, end)
                .map(|d| {
                    self.days
                        .get(&d)
                        .cloned()
                        .unwrap_or_else(|| SlotCounts::new(&self.cp, self.policy(), d))
                })
                .collect();
            calendar(self.policy(), Standard, &days, start, end)
        }
    }

    fn new(created: Result<Created, Error>) -> Reservation {
        match created {
            Ok(Created::New(r)) => r,
            other => panic!("not a new reservation: {other:?}"),
        }
    }

    #[test]
    fn no_slot_is_booked_beyond_its_quota_and_touching_windows_do_not_overlap() {
        let mut book = Records::new(2);
        let at = t("08:00");
        book.reserve(&request("10:00", "11:00", "a"), "a", at)
            .unwrap();
        book.reserve(&request("10:30", "11:30", "b"), "b", at)
            .unwrap();
        // 10:45-11:00 is full (both), so a window touching it is refused, naming it.
        let err = book
            .reserve(&request("10:50", "12:00", "c"), "c", at)
            .unwrap_err();
        assert!(err.to_string().contains("fully booked"), "{err}");
        assert!(err.to_string().contains("2026-12-01T10:45:00Z"), "{err}");
        // 11:00 onwards only b: one more fits; a window ending at 10:00 touches nothing.
        book.reserve(&request("11:00", "12:00", "d"), "d", at)
            .unwrap();
        book.reserve(&request("09:00", "10:00", "e"), "e", at)
            .unwrap();
        let remaining: Vec<u32> = book
            .calendar(t("09:45"), t("11:15"))
            .iter()
            .map(|s| s.remaining)
            .collect();
        assert_eq!(remaining, [1, 1, 1, 0, 0, 0]);
    }

    #[test]
    fn a_window_across_midnight_counts_in_both_days() {
        let mut book = Records::new(1);
        let evening: Timestamp = "2026-12-01T23:30:00Z".parse().unwrap();
        let mut overnight = request("10:00", "11:00", "n");
        overnight.start = evening;
        overnight.end = evening + Duration::from_secs(3_600);
        let r = new(book.reserve(&overnight, "a", t("08:00")));
        assert_eq!(book.days.len(), 2, "the window touches two days");
        let slots = book.calendar(overnight.start, overnight.end);
        assert_eq!(slots.len(), 4);
        assert!(slots.iter().all(|s| s.remaining == 0));
        book.change(&r.id, |r| r.cancel("", t("09:00"))).unwrap();
        let slots = book.calendar(overnight.start, overnight.end);
        assert!(slots.iter().all(|s| s.remaining == 1), "{slots:?}");
    }

    #[test]
    fn a_day_keeps_the_slot_length_it_was_counted_in() {
        let mut book = Records::new(1);
        book.reserve(&request("10:00", "10:15", "a"), "a", t("08:00"))
            .unwrap();
        // The operator moves to 30-minute slots: the booked day keeps its 15.
        book.cp.reservation_policy.as_mut().unwrap().slot_minutes = 30;
        book.reserve(&request("10:15", "10:30", "b"), "b", t("08:00"))
            .unwrap();
        let slots = book.calendar(t("10:00"), t("10:30"));
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].end, t("10:15"));
    }

    #[test]
    fn a_cancelled_or_no_show_reservation_frees_its_slots() {
        let mut book = Records::new(1);
        let r = new(book.reserve(&request("10:00", "11:00", "a"), "a", t("08:00")));
        assert!(
            book.reserve(&request("10:00", "11:00", "b"), "b", t("08:00"))
                .is_err()
        );
        book.change(&r.id, |r| r.cancel("plans changed", t("08:30")))
            .unwrap();
        let b = new(book.reserve(&request("10:00", "11:00", "b"), "b", t("08:40")));
        assert_eq!(book.held(t("10:05")), 1);
        assert_eq!(book.expire(t("10:15")), 1);
        assert_eq!(book.reservations[&b.id].state, ReservationState::NoShow);
        assert_eq!(book.held(t("10:15")), 0);
        book.free_now = 1;
        assert!(
            book.reserve(&request("10:20", "11:00", "c"), "c", t("10:16"))
                .is_ok()
        );
    }

    #[test]
    fn lifecycle_transitions_are_the_only_ones_allowed() {
        let mut book = Records::new(5);
        let grace = Duration::from_secs(900);
        let r = new(book.reserve(&request("10:00", "11:00", "a"), "a", t("08:00")));
        let err = book.change(&r.id, |r| r.check_out(t("09:00"))).unwrap_err();
        assert!(err.to_string().contains("RESERVED"), "{err}");
        assert!(
            book.change(&r.id, |r| r.check_in(grace, t("09:30")))
                .is_err()
        );
        book.change(&r.id, |r| r.check_in(grace, t("09:50")))
            .unwrap();
        assert_eq!(book.held(t("10:00")), 0, "a check-in releases the hold");
        let remaining = book.calendar(t("10:00"), t("10:15"))[0].remaining;
        assert_eq!(remaining, 4, "a checked-in car keeps its slots");
        let err = book
            .change(&r.id, |r| r.cancel("", t("09:55")))
            .unwrap_err();
        assert!(err.to_string().contains("CHECKED_IN"), "{err}");
        let done = book.change(&r.id, |r| r.check_out(t("10:40"))).unwrap();
        assert_eq!(done.state, ReservationState::Completed);
        assert_eq!(book.calendar(t("10:00"), t("10:15"))[0].remaining, 5);
        // Another driver cannot see it at all.
        assert!(!done.visible_to(Actor::Driver(&driver("b"))));
        assert!(done.visible_to(Actor::Driver(&driver("a"))));
        assert!(done.visible_to(Actor::Operator));
    }

    #[test]
    fn retries_with_the_same_key_return_the_same_reservation() {
        let mut book = Records::new(5);
        let first = book.reserve(&request("10:00", "11:00", "k"), "a", t("08:00"));
        let again = book.reserve(&request("10:00", "11:00", "k"), "a", t("08:01"));
        let (Ok(Created::New(a)), Ok(Created::Existing(b))) = (first, again) else {
            panic!()
        };
        assert_eq!(a, b);
        assert_eq!(book.calendar(t("10:00"), t("10:15"))[0].remaining, 4);
        let err = book
            .reserve(&request("10:00", "12:00", "k"), "a", t("08:01"))
            .unwrap_err();
        assert!(err.to_string().starts_with("idempotency_key"), "{err}");
        // Another driver's same key is another reservation.
        let other = new(book.reserve(&request("10:00", "11:00", "k"), "b", t("08:01")));
        assert_ne!(other.id, a.id);
    }

    #[test]
    fn bad_windows_are_refused_naming_the_field() {
        let mut book = Records::new(5);
        let cases = [
            (request("10:00", "09:00", "a"), "end_time"),
            (request("07:00", "07:30", "b"), "end_time"),
            (request("10:00", "15:00", "c"), "end_time"),
        ];
        for (req, field) in cases {
            let err = book.reserve(&req, "a", t("08:00")).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
        let mut far = request("10:00", "11:00", "d");
        far.start = t("10:00") + Duration::from_secs(8 * 86_400);
        far.end = far.start + Duration::from_secs(3600);
        let err = book.reserve(&far, "a", t("08:00")).unwrap_err();
        assert!(err.to_string().starts_with("start_time"), "{err}");
        let mut ev = request("10:00", "11:00", "e");
        ev.category = EvCharging;
        let err = book.reserve(&ev, "a", t("08:00")).unwrap_err();
        assert!(err.to_string().starts_with("category"), "{err}");
        assert!(book.days.is_empty(), "nothing was counted");
    }

    #[test]
    fn a_window_starting_now_needs_a_space_available_now() {
        let mut book = Records::new(5);
        book.free_now = 0;
        let err = book
            .reserve(&request("10:00", "11:00", "a"), "a", t("10:05"))
            .unwrap_err();
        assert!(err.to_string().contains("available now"), "{err}");
        book.free_now = 1;
        book.reserve(&request("10:00", "11:00", "a"), "a", t("10:05"))
            .unwrap();
        // The one free space is now held by it.
        let err = book
            .reserve(&request("10:00", "11:00", "b"), "b", t("10:05"))
            .unwrap_err();
        assert!(err.to_string().contains("available now"), "{err}");
    }

    #[test]
    fn a_driver_holds_at_most_the_limit() {
        let mut book = Records::new(9);
        for k in ["1", "2", "3"] {
            book.reserve(&request("10:00", "11:00", k), "a", t("08:00"))
                .unwrap();
        }
        let err = book
            .reserve(&request("12:00", "13:00", "4"), "a", t("08:00"))
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
    fn a_driver_s_claims_take_its_limit_whichever_car_parks_they_are_at() {
        let ann = driver("ann");
        let id =
            |cp: &str, key: &str| ReservationId::for_key(&CarParkId::parse(cp).unwrap(), &ann, key);
        let t0: Timestamp = "2026-12-01T08:00:00Z".parse().unwrap();
        let mut claims = ReservationClaims::new(&ann);
        assert_eq!(claims.region, crate::domain::accounts_region("ann"));
        // Two creates in flight (nothing seen yet) and one RESERVED: the fourth is over.
        let reserved = vec![(id("g0", "a"), ReservationState::Reserved)];
        assert!(claims.claim(&id("g1", "b"), &reserved, 3, t0).unwrap());
        assert!(claims.claim(&id("g2", "c"), &reserved, 3, t0).unwrap());
        let over = claims.claim(&id("g3", "d"), &reserved, 3, t0);
        assert!(matches!(over, Err(Error::FailedPrecondition(m)) if m.contains("at most 3")));
        // A retry of a claim in flight is the same claim.
        assert!(!claims.claim(&id("g1", "b"), &reserved, 3, t0).unwrap());
        // Seen, a claim counts by its reservation's state: one cancelled frees a place.
        let held = vec![
            (id("g0", "a"), ReservationState::Reserved),
            (id("g1", "b"), ReservationState::Cancelled),
        ];
        assert!(claims.claim(&id("g3", "d"), &held, 3, t0).unwrap());
        assert_eq!(claims.claims.len(), 2, "the seen claim is dropped");
        // A create that made nothing gives its claim back.
        assert!(claims.release(&id("g3", "d")));
        assert!(!claims.release(&id("g3", "d")));
        // A claim whose reservation never appears lapses after the grace.
        let later = t0 + CLAIM_GRACE;
        assert!(!claims.spent(t0));
        assert!(claims.spent(later));
        assert!(claims.claim(&id("g4", "e"), &reserved, 3, later).unwrap());
        assert_eq!(claims.claims.len(), 1);
    }

    #[test]
    fn reservation_ids_name_their_car_park_and_follow_from_driver_and_key() {
        let id = ReservationId::parse("qd-1.a~0af9").unwrap();
        assert_eq!(id.car_park().as_str(), "qd-1.a");
        assert!(ReservationId::parse("qd-1").is_err());
        assert!(ReservationId::parse("~abc").is_err());
        assert!(ReservationId::parse("a~ABC").is_err());
        let cp = CarParkId::parse("g1").unwrap();
        let a = ReservationId::for_key(&cp, &driver("ab"), "c");
        assert_eq!(a, ReservationId::for_key(&cp, &driver("ab"), "c"));
        assert_ne!(a, ReservationId::for_key(&cp, &driver("a"), "bc"));
        assert_eq!(ReservationId::parse(a.as_str()).unwrap(), a);
        // Stable across versions and builds, since stored ids and retries depend on
        // it: the value Python's `xxhash.xxh3_128_intdigest(b"ab\x00c")` gives, in
        // base 36.
        assert_eq!(a.as_str(), "g1~56r7fw58mtpuyicn2buxvs9b5");
    }

    #[test]
    fn plates_seen_at_the_gate_check_in_and_complete() {
        let mut book = Records::new(5);
        let r = new(book.reserve(&request("10:00", "11:00", "a"), "a", t("08:00")));
        let grace = Duration::from_secs(900);
        let plate = Plate::parse("鲁B12345").unwrap();
        assert!(
            !r.matches_gate(&plate, true, grace, t("09:00")),
            "too early"
        );
        assert!(r.matches_gate(&plate, true, grace, t("09:50")));
        assert!(
            !r.matches_gate(&plate, false, grace, t("09:50")),
            "not in yet"
        );
        let other = Plate::parse("鲁B99999").unwrap();
        assert!(!r.matches_gate(&other, true, grace, t("09:50")));
        let r = book
            .change(&r.id, |r| r.pass_gate(true, grace, t("09:50")))
            .unwrap();
        assert_eq!(r.state, ReservationState::CheckedIn);
        assert!(r.matches_gate(&plate, false, grace, t("10:30")));
        let r = book
            .change(&r.id, |r| r.pass_gate(false, grace, t("10:30")))
            .unwrap();
        assert_eq!(r.state, ReservationState::Completed);
        assert!(!r.matches_gate(&plate, false, grace, t("10:31")));
    }

    #[test]
    fn finished_reservations_and_past_days_are_dropped_after_their_retention() {
        let mut book = Records::new(5);
        let r = new(book.reserve(&request("10:00", "11:00", "a"), "a", t("08:00")));
        assert_eq!(r.finished_at(), None, "never while RESERVED");
        let r = book.change(&r.id, |r| r.cancel("", t("08:10"))).unwrap();
        assert_eq!(
            r.finished_at(),
            Some(t("11:00")),
            "at the end of its window"
        );
        let day = &book.days[&SlotCounts::day_of(t("10:00"))];
        assert!(!day.is_past(t("23:59")));
        assert!(day.is_past(t("10:00") + Duration::from_secs(2 * 86_400)));
    }

    mod model {
        //! The records against a model written another way: a count per slot, kept
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
            made: Vec<(i64, i64, ReservationState)>,
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
            fn the_records_agree_with_a_per_slot_model(ops in proptest::collection::vec(op(), 1..60)) {
                let mut book = Records::new(QUOTA);
                let grace = Duration::from_secs(15 * 60);
                // Late in the day, so windows cross midnight into the next day's counts.
                let epoch: Timestamp = "2026-12-01T22:00:00Z".parse().unwrap();
                let at = |s: i64| epoch + Duration::from_secs(s as u64);
                let mut model = Model { made: Vec::new(), used: HashMap::new() };
                let mut now = 0i64;
                let mut ids: Vec<ReservationId> = Vec::new();
                for op in ops {
                    match op {
                        Op::Create { driver, from, slots } => {
                            // Starts on a slot boundary ahead of now, so only the quota
                            // decides (each key's own driver: the limit never does).
                            let start = (now / SLOT_S + from) * SLOT_S;
                            let end = start + slots * SLOT_S;
                            let request = ReservationRequest {
                                category: Standard,
                                start: at(start),
                                end: at(end),
                                plate: Plate::parse(&format!("P{}", ids.len())).unwrap(),
                                idempotency_key: format!("k{}", ids.len()),
                            };
                            let fits = (start / SLOT_S..=(end - 1) / SLOT_S)
                                .all(|s| model.used.get(&s).copied().unwrap_or(0) < QUOTA);
                            let who = format!("d{driver}-{}", ids.len());
                            let got = book.reserve(&request, &who, at(now));
                            prop_assert_eq!(got.is_ok(), fits, "create {}..{} at {}: {:?}", start, end, now, got);
                            if let Ok(Created::New(r)) = got {
                                ids.push(r.id);
                                model.made.push((start, end, ReservationState::Reserved));
                                model.count(start, end, 1);
                            }
                        }
                        Op::Cancel(k) if k < ids.len() => {
                            let (start, end, state) = model.made[k];
                            // The test policy takes cancellations until 30 minutes before the start.
                            let allowed = state == ReservationState::Reserved && now < start - 30 * 60;
                            let got = book.change(&ids[k], |r| r.cancel("", at(now)));
                            prop_assert_eq!(got.is_ok(), allowed);
                            if allowed {
                                model.made[k].2 = ReservationState::Cancelled;
                                model.count(start, end, -1);
                            }
                        }
                        Op::CheckIn(k) if k < ids.len() => {
                            let (start, end, state) = model.made[k];
                            let no_show_at = (start + 15 * 60).min(end);
                            let allowed = state == ReservationState::Reserved
                                && start - 15 * 60 <= now
                                && now < no_show_at;
                            let got = book.change(&ids[k], |r| r.check_in(grace, at(now)));
                            prop_assert_eq!(got.is_ok(), allowed);
                            if allowed {
                                model.made[k].2 = ReservationState::CheckedIn;
                            }
                        }
                        Op::CheckOut(k) if k < ids.len() => {
                            let (start, end, state) = model.made[k];
                            let allowed = state == ReservationState::CheckedIn;
                            let got = book.change(&ids[k], |r| r.check_out(at(now)));
                            prop_assert_eq!(got.is_ok(), allowed);
                            if allowed {
                                model.made[k].2 = ReservationState::Completed;
                                model.count(start, end, -1);
                            }
                        }
                        Op::Wait(seconds) => {
                            now += seconds;
                            let expired = book.expire(at(now));
                            let mut due = 0;
                            for k in 0..model.made.len() {
                                let (start, end, state) = model.made[k];
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
                    let base = now - now % SLOT_S;
                    for slot in book.calendar(at(base), at(base + 30 * SLOT_S)) {
                        let n = (slot.start.as_second() - epoch.as_second()) / SLOT_S;
                        prop_assert_eq!(slot.remaining, QUOTA - model.used.get(&n).copied().unwrap_or(0));
                    }
                    for (k, id) in ids.iter().enumerate() {
                        prop_assert_eq!(book.reservations[id].state, model.made[k].2);
                    }
                }
            }
        }
    }
}
