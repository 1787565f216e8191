//! Shared parking (共享停车): a resident's or an office's spaces offered on a weekly
//! schedule in the host's time zone, and drivers' bookings of them.
//!
//! An offer's bookings are counted in the reservations' slot ledger (`SlotCounts`,
//! ledger `@<offer id>`, 15-minute slots): a booking's window is whole quarter hours,
//! so "in no slot more bookings than spaces" is exactly "at no instant", and touching
//! windows share no slot. A window is bookable only where the schedule covers all of
//! it in the offer's time zone (periods are local wall-clock times, so a 22:00–07:00
//! period is 8 or 10 hours long on the nights clocks change) and it touches no
//! blackout day.

use std::{fmt, sync::Arc, time::Duration};

use jiff::civil::{Date, DateTime};

use super::{
    DriverId, Error, LatLng, OfferId, Plate, RegionId, SlotCounts, SpaceCategory, TimeZoneName,
    Timestamp,
};

/// The slot length of every offer's ledger: bookings are whole quarter hours.
pub const SHARED_SLOT_MINUTES: u32 = 15;
/// How far ahead a booking may start.
pub const BOOKING_DAYS_AHEAD: u64 = 30;
/// After its start, how long a booking waits for its car before it is a no-show; and
/// before its start, from when it may be checked in.
pub const SHARED_GRACE: Duration = Duration::from_secs(15 * 60);
/// Most spaces one offer pools.
pub const MAX_SPACES: u32 = 10_000;
/// Most weekly periods and blackouts of one offer.
pub const MAX_PERIODS: usize = 64;
pub const MAX_BLACKOUTS: usize = 64;
/// Longest text of an address or description, in characters.
pub const MAX_TEXT: usize = 500;

const QUARTER_MS: i64 = 15 * 60_000;

/// A weekly period: on ISO weekday `weekday` (1 = Monday) from `start_minute` after
/// local midnight to `end_minute`; an end at or before the start is on the next day
/// (22:00–07:00 is `1320..420`), and 1440 is the next midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WeeklyPeriod {
    pub weekday: u8,
    pub start_minute: u16,
    pub end_minute: u16,
}

impl WeeklyPeriod {
    /// The period's absolute interval when it starts on `date` in `zone` (a wall-clock
    /// time the clocks skip is read as the moment after the gap).
    fn on(&self, date: Date, zone: &jiff::tz::TimeZone) -> Option<(Timestamp, Timestamp)> {
        let at = |date: Date, minute: u16| -> Option<Timestamp> {
            let (date, minute) = if minute >= 1440 {
                (date.tomorrow().ok()?, minute - 1440)
            } else {
                (date, minute)
            };
            let dt: DateTime = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
            Some(dt.to_zoned(zone.clone()).ok()?.timestamp())
        };
        let start = at(date, self.start_minute)?;
        let end = if self.end_minute > self.start_minute {
            at(date, self.end_minute)?
        } else {
            at(date.tomorrow().ok()?, self.end_minute)?
        };
        (start < end).then_some((start, end))
    }
}

/// Local dates `from` to `to`, both included, on which nothing can be booked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Blackout {
    pub from: Date,
    pub to: Date,
}

/// Whether an offer takes bookings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfferState {
    Active,
    Withdrawn,
}

/// Spaces a host offers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedOffer {
    pub id: OfferId,
    /// The driver identity (token subject) who offers it.
    pub host: DriverId,
    pub region: RegionId,
    pub location: LatLng,
    pub address: String,
    pub description: String,
    pub category: SpaceCategory,
    pub spaces: u32,
    pub time_zone: TimeZoneName,
    pub schedule: Vec<WeeklyPeriod>,
    pub blackouts: Vec<Blackout>,
    pub hourly_rate_minor: i64,
    /// Most one booking costs; 0 for no cap.
    pub cap_per_booking_minor: i64,
    pub currency: Arc<str>,
    pub max_booking_minutes: u32,
    pub state: OfferState,
}

/// What a host does to its offer.
#[derive(Debug, Clone)]
pub enum OfferChange {
    /// New terms (schedule, price, spaces, …) in place of the old.
    Terms(Box<SharedOffer>),
    /// No new bookings from now on; the offer stays, readable, with its bookings.
    Withdraw,
}

impl SharedOffer {
    /// The offer after `change`: it keeps its id, host and region (an offer's region
    /// is where its records live and cannot change), and new terms keep its state (an
    /// update never reopens a withdrawn offer). The result is validated.
    pub fn changed(&self, change: &OfferChange) -> Result<SharedOffer, Error> {
        let mut offer = match change {
            OfferChange::Terms(terms) => {
                if terms.region != self.region {
                    return Err(Error::FailedPrecondition(format!(
                        "offer {} is in region {}; an offer's region cannot change",
                        self.id, self.region
                    )));
                }
                SharedOffer {
                    state: self.state,
                    ..(**terms).clone()
                }
            }
            OfferChange::Withdraw => SharedOffer {
                state: OfferState::Withdrawn,
                ..self.clone()
            },
        };
        offer.id = self.id.clone();
        offer.host = self.host.clone();
        offer.validate()?;
        Ok(offer)
    }

    /// Checks what a host may set; errors name the field under `offer`.
    pub fn validate(&self) -> Result<(), Error> {
        let field = |f: &str| format!("offer.{f}");
        if !(1..=MAX_SPACES).contains(&self.spaces) {
            return Err(Error::invalid(
                field("spaces"),
                format!("must be 1 to {MAX_SPACES}"),
            ));
        }
        if self.schedule.is_empty() || self.schedule.len() > MAX_PERIODS {
            return Err(Error::invalid(
                field("schedule"),
                format!("must list 1 to {MAX_PERIODS} weekly periods"),
            ));
        }
        for (i, p) in self.schedule.iter().enumerate() {
            let bad = !(1..=7).contains(&p.weekday)
                || p.start_minute >= 1440
                || p.end_minute > 1440
                || p.end_minute == p.start_minute;
            if bad {
                return Err(Error::invalid(
                    field(&format!("schedule[{i}]")),
                    "weekday is 1 (Monday) to 7, start_minute 0 to 1439, end_minute 1 to \
                     1440 and not the start (an end before the start is the next day)",
                ));
            }
        }
        if self.blackouts.len() > MAX_BLACKOUTS {
            return Err(Error::invalid(
                field("blackouts"),
                format!("at most {MAX_BLACKOUTS}"),
            ));
        }
        if let Some(i) = self.blackouts.iter().position(|b| b.to < b.from) {
            return Err(Error::invalid(
                field(&format!("blackouts[{i}]")),
                "ends before it starts",
            ));
        }
        if self.hourly_rate_minor < 0 || self.hourly_rate_minor > 1_000_000_000 {
            return Err(Error::invalid(
                field("hourly_rate_minor"),
                "must be 0 to 1000000000",
            ));
        }
        if self.cap_per_booking_minor < 0 || self.cap_per_booking_minor > 1_000_000_000 {
            return Err(Error::invalid(
                field("cap_per_booking_minor"),
                "must be 0 (no cap) to 1000000000",
            ));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::invalid(
                field("currency"),
                "must be an ISO 4217 code such as CNY",
            ));
        }
        if !(15..=7 * 1440).contains(&self.max_booking_minutes) {
            return Err(Error::invalid(
                field("max_booking_minutes"),
                "must be 15 to 10080 (7 days)",
            ));
        }
        super::check_text(&field("address"), &self.address, MAX_TEXT, true)?;
        super::check_text(&field("description"), &self.description, MAX_TEXT, false)?;
        Ok(())
    }

    /// Its ledger in the slot counts.
    pub fn ledger(&self) -> String {
        ledger_of(&self.id)
    }

    /// Whether the schedule covers all of [start, end): the periods that could touch
    /// it, as absolute intervals, merged where they meet.
    pub fn covers(&self, start: Timestamp, end: Timestamp) -> bool {
        let zone = self.time_zone.zone();
        let local = |t: Timestamp| t.to_zoned(zone.clone()).date();
        let (Ok(first), last) = (local(start).yesterday(), local(end)) else {
            return false;
        };
        let mut intervals = Vec::new();
        let mut date = first;
        while date <= last {
            let weekday = date.weekday().to_monday_one_offset() as u8;
            intervals.extend(
                self.schedule
                    .iter()
                    .filter(|p| p.weekday == weekday)
                    .filter_map(|p| p.on(date, zone)),
            );
            let Ok(next) = date.tomorrow() else { break };
            date = next;
        }
        intervals.sort();
        let mut reach = start;
        for (s, e) in intervals {
            if s > reach {
                break;
            }
            reach = reach.max(e);
            if reach >= end {
                return true;
            }
        }
        false
    }

    /// The first blackout [start, end) touches.
    pub fn blackout_of(&self, start: Timestamp, end: Timestamp) -> Option<&Blackout> {
        let zone = self.time_zone.zone();
        let (from, to) = (
            start.to_zoned(zone.clone()).date(),
            // The local day of the window's last instant.
            (end - Duration::from_millis(1))
                .to_zoned(zone.clone())
                .date(),
        );
        self.blackouts.iter().find(|b| b.from <= to && from <= b.to)
    }

    /// The price of a booking of [start, end): the hourly rate per started quarter
    /// hour, capped.
    pub fn price(&self, start: Timestamp, end: Timestamp) -> i64 {
        let ms = end.as_millisecond() - start.as_millisecond();
        let quarters = (ms + QUARTER_MS - 1) / QUARTER_MS;
        let price = (self.hourly_rate_minor * quarters + 3) / 4;
        if self.cap_per_booking_minor > 0 {
            price.min(self.cap_per_booking_minor)
        } else {
            price
        }
    }

    /// Whether [start, end) may be booked at `now`, apart from spaces: why not,
    /// naming the field.
    pub fn check_window(
        &self,
        start: Timestamp,
        end: Timestamp,
        now: Timestamp,
    ) -> Result<(), Error> {
        if self.state != OfferState::Active {
            return Err(Error::FailedPrecondition(format!(
                "offer {} is withdrawn",
                self.id
            )));
        }
        if end <= start {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        for (name, t) in [("start_time", start), ("end_time", end)] {
            if t.as_millisecond().rem_euclid(QUARTER_MS) != 0 {
                return Err(Error::invalid(
                    name,
                    "must be on a quarter hour (bookings are whole quarter hours)",
                ));
            }
        }
        if start < now - Duration::from_secs(15 * 60) {
            return Err(Error::invalid("start_time", "is in the past"));
        }
        if start > now + Duration::from_secs(BOOKING_DAYS_AHEAD * 86_400) {
            return Err(Error::invalid(
                "start_time",
                format!("bookings start at most {BOOKING_DAYS_AHEAD} days ahead"),
            ));
        }
        let minutes = (end.as_second() - start.as_second()) / 60;
        if minutes > i64::from(self.max_booking_minutes) {
            return Err(Error::invalid(
                "end_time",
                format!(
                    "the window is {minutes} minutes; offer {} allows at most {}",
                    self.id, self.max_booking_minutes
                ),
            ));
        }
        if let Some(b) = self.blackout_of(start, end) {
            return Err(Error::FailedPrecondition(format!(
                "offer {} is not available from {} to {}",
                self.id, b.from, b.to
            )));
        }
        if !self.covers(start, end) {
            return Err(Error::FailedPrecondition(format!(
                "offer {}'s schedule does not cover the whole window",
                self.id
            )));
        }
        Ok(())
    }

    /// The bookings of `bookings` (BOOKED ones; a car checked in already stays) that
    /// this offer's terms would strand: outside the schedule, on a blackout, or beyond
    /// the spaces (the ones made last), or all of them if it is withdrawn.
    pub fn stranded<'a>(&self, bookings: &'a [SharedBooking]) -> Vec<&'a SharedBooking> {
        let mut open: Vec<&SharedBooking> = bookings
            .iter()
            .filter(|b| b.state == BookingState::Booked)
            .collect();
        open.sort_by_key(|b| (b.created_at, b.id.clone()));
        let mut stranded = Vec::new();
        let mut kept: Vec<&SharedBooking> = bookings
            .iter()
            .filter(|b| b.state == BookingState::CheckedIn)
            .collect();
        for b in open {
            let fits = self.state == OfferState::Active
                && self.blackout_of(b.start, b.end).is_none()
                && self.covers(b.start, b.end)
                && max_overlap(&kept, b) < self.spaces;
            if fits {
                kept.push(b);
            } else {
                stranded.push(b);
            }
        }
        stranded
    }
}

/// Most of `kept` overlapping at any instant of `b`'s window.
fn max_overlap(kept: &[&SharedBooking], b: &SharedBooking) -> u32 {
    // The count only rises at a window's start: check at `b`'s start and at each start
    // inside it.
    let points = std::iter::once(b.start).chain(
        kept.iter()
            .map(|k| k.start)
            .filter(|s| b.start < *s && *s < b.end),
    );
    points
        .map(|t| kept.iter().filter(|k| k.start <= t && t < k.end).count() as u32)
        .max()
        .unwrap_or(0)
}

/// The slot ledger of offer `id`.
pub fn ledger_of(id: &OfferId) -> String {
    format!("@{id}")
}

super::reservation::owned_id!(
    /// A booking's id: `<offer id>~<hash of driver and idempotency key>`.
    BookingId,
    OfferId,
    offer,
    "booking",
    "offer"
);

/// Where a booking is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingState {
    Booked,
    CheckedIn,
    Completed,
    Cancelled,
    NoShow,
}

impl BookingState {
    pub const ALL: [BookingState; 5] = [
        Self::Booked,
        Self::CheckedIn,
        Self::Completed,
        Self::Cancelled,
        Self::NoShow,
    ];

    /// The name clients see (the proto enum's, without its prefix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Booked => "BOOKED",
            Self::CheckedIn => "CHECKED_IN",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
            Self::NoShow => "NO_SHOW",
        }
    }

    /// Whether it counts against the offer's spaces.
    pub fn occupies(self) -> bool {
        matches!(self, Self::Booked | Self::CheckedIn)
    }
}

/// Who cancelled a booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    Driver,
    Host,
}

/// One driver's booking of one offer's space.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedBooking {
    pub id: BookingId,
    pub offer: OfferId,
    pub region: RegionId,
    pub host: DriverId,
    pub driver: DriverId,
    pub category: SpaceCategory,
    pub start: Timestamp,
    pub end: Timestamp,
    pub plate: Plate,
    pub state: BookingState,
    pub price_minor: i64,
    pub currency: Arc<str>,
    pub created_at: Timestamp,
    /// Not checked in by then, it is a no-show and its window is free again.
    pub no_show_at: Timestamp,
    pub idempotency_key: Arc<str>,
    pub changed_at: Option<Timestamp>,
    pub cancelled_by: Option<CancelledBy>,
    pub reason: Arc<str>,
}

/// Who acts on a booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Driver,
    Host,
}

impl SharedBooking {
    /// How `who` relates to it, if at all (anyone else is told it does not exist).
    pub fn party(&self, who: &DriverId) -> Option<Party> {
        if &self.driver == who {
            Some(Party::Driver)
        } else if &self.host == who {
            Some(Party::Host)
        } else {
            None
        }
    }

    fn wrong_state(&self, action: &str, wanted: BookingState) -> Error {
        Error::FailedPrecondition(format!(
            "booking {} is {}; only a {} booking can be {action}",
            self.id,
            self.state.name(),
            wanted.name()
        ))
    }

    /// Its driver (before the start) or its host (any time) cancels it while BOOKED.
    pub fn cancel(&mut self, by: Party, reason: &str, now: Timestamp) -> Result<(), Error> {
        if self.state != BookingState::Booked {
            return Err(self.wrong_state("cancelled", BookingState::Booked));
        }
        if by == Party::Driver && now >= self.start {
            return Err(Error::FailedPrecondition(format!(
                "booking {} could be cancelled until its start, {}",
                self.id, self.start
            )));
        }
        self.state = BookingState::Cancelled;
        self.changed_at = Some(now);
        self.cancelled_by = Some(match by {
            Party::Driver => CancelledBy::Driver,
            Party::Host => CancelledBy::Host,
        });
        self.reason = Arc::from(reason);
        Ok(())
    }

    /// The car arrived (its driver's app or the host says so): from the grace before
    /// the start until the no-show time.
    pub fn check_in(&mut self, now: Timestamp) -> Result<(), Error> {
        if self.state != BookingState::Booked {
            return Err(self.wrong_state("checked in", BookingState::Booked));
        }
        if now < self.start - SHARED_GRACE || now >= self.no_show_at {
            return Err(Error::FailedPrecondition(format!(
                "booking {} can be checked in from {} until {}",
                self.id,
                self.start - SHARED_GRACE,
                self.no_show_at
            )));
        }
        self.state = BookingState::CheckedIn;
        self.changed_at = Some(now);
        Ok(())
    }

    /// The car left: its window is free again.
    pub fn check_out(&mut self, now: Timestamp) -> Result<(), Error> {
        if self.state != BookingState::CheckedIn {
            return Err(self.wrong_state("checked out", BookingState::CheckedIn));
        }
        self.state = BookingState::Completed;
        self.changed_at = Some(now);
        Ok(())
    }

    /// BOOKED past its no-show time becomes NO_SHOW; false if it is not overdue.
    pub fn expire(&mut self, now: Timestamp) -> bool {
        if self.state != BookingState::Booked || now < self.no_show_at {
            return false;
        }
        self.state = BookingState::NoShow;
        self.changed_at = Some(now);
        true
    }

    /// Whether the change from `before` freed its window.
    pub fn freed(&self, before: BookingState) -> bool {
        before.occupies() && !self.state.occupies()
    }

    /// When it finished, like a reservation (`Reservation::finished_at`).
    pub fn finished_at(&self) -> Option<Timestamp> {
        match self.state {
            BookingState::Booked => None,
            BookingState::CheckedIn => Some(self.end + super::CHECKED_IN_RETENTION),
            _ => Some(self.changed_at.map_or(self.end, |c| c.max(self.end))),
        }
    }

    /// The plate as `who` may see it: whole for its driver, all but the last two
    /// characters masked for anyone else (the host).
    pub fn plate_for(&self, who: &DriverId) -> String {
        if &self.driver == who {
            self.plate.as_str().to_owned()
        } else {
            self.plate.masked()
        }
    }
}

/// What a booking is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingRequest {
    pub start: Timestamp,
    pub end: Timestamp,
    pub plate: Plate,
    pub idempotency_key: String,
}

/// What a booking came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Booked {
    New(SharedBooking),
    Existing(SharedBooking),
}

/// The UTC days of the offer's ledger a window touches, as new slot counts where
/// `held` has none (`held` in day order, one per day of `SlotCounts::days`).
pub fn booking_days(
    offer: &SharedOffer,
    start: Timestamp,
    end: Timestamp,
    held: Vec<Option<SlotCounts>>,
) -> Vec<SlotCounts> {
    SlotCounts::days(start, end)
        .zip(held)
        .map(|(day, d)| {
            d.unwrap_or_else(|| {
                SlotCounts::empty(&offer.ledger(), &offer.region, SHARED_SLOT_MINUTES, day)
            })
        })
        .collect()
}

/// Books `offer` for `driver` under id `id`, or says why not. `existing` is what the
/// id names already; `days` the offer's slot counts of the days the window touches
/// (`booking_days`), changed in place by a new booking.
pub fn book(
    offer: &SharedOffer,
    request: &BookingRequest,
    driver: &DriverId,
    id: BookingId,
    existing: Option<&SharedBooking>,
    days: &mut [SlotCounts],
    now: Timestamp,
) -> Result<Booked, Error> {
    if let Some(b) = existing {
        let same = &b.driver == driver
            && *b.idempotency_key == *request.idempotency_key
            && b.start == request.start
            && b.end == request.end
            && b.plate == request.plate;
        return if same {
            Ok(Booked::Existing(b.clone()))
        } else {
            Err(Error::invalid(
                "idempotency_key",
                "was used for a different booking",
            ))
        };
    }
    offer.check_window(request.start, request.end, now)?;
    if &offer.host == driver {
        return Err(Error::FailedPrecondition(
            "a host cannot book its own offer".into(),
        ));
    }
    let wanted: Vec<i64> = SlotCounts::days(request.start, request.end).collect();
    let given: Vec<i64> = days.iter().map(|d| d.day).collect();
    if wanted != given || days.iter().any(|d| *d.ledger != *offer.ledger()) {
        return Err(Error::Internal(format!(
            "a booking was decided on days {given:?}, not {wanted:?}"
        )));
    }
    if let Some(full) = days
        .iter()
        .find_map(|d| d.first_full(offer.category, request.start, request.end, offer.spaces))
    {
        return Err(Error::FailedPrecondition(format!(
            "fully booked: offer {} has no space free from {full}",
            offer.id
        )));
    }
    let booking = SharedBooking {
        id,
        offer: offer.id.clone(),
        region: offer.region.clone(),
        host: offer.host.clone(),
        driver: driver.clone(),
        category: offer.category,
        start: request.start,
        end: request.end,
        plate: request.plate.clone(),
        state: BookingState::Booked,
        price_minor: offer.price(request.start, request.end),
        currency: offer.currency.clone(),
        created_at: now,
        no_show_at: (request.start + SHARED_GRACE).min(request.end),
        idempotency_key: Arc::from(request.idempotency_key.as_str()),
        changed_at: None,
        cancelled_by: None,
        reason: Arc::from(""),
    };
    for d in days.iter_mut() {
        d.take(booking.category, booking.start, booking.end);
    }
    Ok(Booked::New(booking))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn offer(zone: &str, schedule: Vec<WeeklyPeriod>, spaces: u32) -> SharedOffer {
        SharedOffer {
            id: OfferId::parse("home-1").unwrap(),
            host: DriverId::parse("host").unwrap(),
            region: RegionId::parse("qingdao").unwrap(),
            location: LatLng::new(36.06, 120.38).unwrap(),
            address: "1 Xianggang Rd".into(),
            description: String::new(),
            category: SpaceCategory::Standard,
            spaces,
            time_zone: TimeZoneName::parse(zone).unwrap(),
            schedule,
            blackouts: Vec::new(),
            hourly_rate_minor: 400,
            cap_per_booking_minor: 2_000,
            currency: Arc::from("CNY"),
            max_booking_minutes: 24 * 60,
            state: OfferState::Active,
        }
    }

    #[test]
    fn a_host_changes_terms_or_withdraws_but_not_who_where_or_whether() {
        let stored = offer("Asia/Shanghai", nights(), 2);
        // New terms under another id and host still change this offer, for its host.
        let mut terms = offer("Asia/Shanghai", nights(), 3);
        terms.id = OfferId::parse("other").unwrap();
        terms.host = DriverId::parse("someone-else").unwrap();
        let changed = stored
            .changed(&OfferChange::Terms(Box::new(terms.clone())))
            .unwrap();
        assert_eq!(
            (changed.spaces, &changed.id, &changed.host),
            (3, &stored.id, &stored.host)
        );
        // Withdrawn, and new terms leave it withdrawn.
        let withdrawn = stored.changed(&OfferChange::Withdraw).unwrap();
        assert_eq!(withdrawn.state, OfferState::Withdrawn);
        let updated = withdrawn
            .changed(&OfferChange::Terms(Box::new(terms.clone())))
            .unwrap();
        assert_eq!(updated.state, OfferState::Withdrawn);
        // The region is where its records live; terms that break a rule are refused.
        terms.region = RegionId::parse("yantai").unwrap();
        assert!(matches!(
            stored.changed(&OfferChange::Terms(Box::new(terms.clone()))),
            Err(Error::FailedPrecondition(_))
        ));
        terms.region = stored.region.clone();
        terms.spaces = 0;
        assert!(matches!(
            stored.changed(&OfferChange::Terms(Box::new(terms))),
            Err(Error::InvalidArgument { .. })
        ));
    }

    /// Every night of the week, 22:00 to 07:00.
    fn nights() -> Vec<WeeklyPeriod> {
        (1..=7)
            .map(|weekday| WeeklyPeriod {
                weekday,
                start_minute: 22 * 60,
                end_minute: 7 * 60,
            })
            .collect()
    }

    #[test]
    fn a_night_period_crosses_midnight_in_the_offer_s_zone() {
        let o = offer("Asia/Shanghai", nights(), 1);
        // 22:00-07:00 Shanghai is 14:00-23:00 UTC.
        assert!(o.covers(ts("2026-12-01T14:00:00Z"), ts("2026-12-01T23:00:00Z")));
        assert!(!o.covers(ts("2026-12-01T13:45:00Z"), ts("2026-12-01T15:00:00Z")));
        assert!(!o.covers(ts("2026-12-01T22:00:00Z"), ts("2026-12-01T23:15:00Z")));
        // Two nights joined only by the day between them are not one window.
        assert!(!o.covers(ts("2026-12-01T14:00:00Z"), ts("2026-12-02T15:00:00Z")));
        // Consecutive days' periods that meet are one.
        let always: Vec<WeeklyPeriod> = (1..=7)
            .map(|weekday| WeeklyPeriod {
                weekday,
                start_minute: 0,
                end_minute: 1440,
            })
            .collect();
        let o = offer("Asia/Shanghai", always, 1);
        assert!(o.covers(ts("2026-12-01T10:00:00Z"), ts("2026-12-04T10:00:00Z")));
    }

    #[test]
    fn wall_clock_periods_follow_daylight_saving_changes() {
        // Berlin leaves summer time on 2026-10-25 at 03:00 (back to 02:00): the night of
        // the 24th, 22:00 CEST to 07:00 CET, is 10 hours long.
        let o = offer("Europe/Berlin", nights(), 1);
        assert!(o.covers(ts("2026-10-24T20:00:00Z"), ts("2026-10-25T06:00:00Z")));
        assert!(!o.covers(ts("2026-10-24T20:00:00Z"), ts("2026-10-25T06:15:00Z")));
        // Summer time starts on 2026-03-29 at 02:00 (to 03:00): 22:00 CET to 07:00 CEST
        // is 8 hours.
        assert!(o.covers(ts("2026-03-28T21:00:00Z"), ts("2026-03-29T05:00:00Z")));
        assert!(!o.covers(ts("2026-03-28T21:00:00Z"), ts("2026-03-29T05:15:00Z")));
        // New York leaves summer time on 2026-11-01 (02:00 back to 01:00).
        let o = offer("America/New_York", nights(), 1);
        assert!(o.covers(ts("2026-11-01T02:00:00Z"), ts("2026-11-01T12:00:00Z")));
        assert!(!o.covers(ts("2026-11-01T02:00:00Z"), ts("2026-11-01T12:15:00Z")));
        // And starts it on 2026-03-08 (02:00 to 03:00).
        assert!(o.covers(ts("2026-03-08T03:00:00Z"), ts("2026-03-08T11:00:00Z")));
        assert!(!o.covers(ts("2026-03-08T03:00:00Z"), ts("2026-03-08T11:15:00Z")));
        // Shanghai has no daylight saving: 9 hours every night.
        let o = offer("Asia/Shanghai", nights(), 1);
        assert!(o.covers(ts("2026-10-24T14:00:00Z"), ts("2026-10-24T23:00:00Z")));
    }

    #[test]
    fn blackouts_and_bad_windows_are_refused_naming_why() {
        let mut o = offer("Asia/Shanghai", nights(), 1);
        o.blackouts.push(Blackout {
            from: "2026-12-03".parse().unwrap(),
            to: "2026-12-03".parse().unwrap(),
        });
        let now = ts("2026-12-01T08:00:00Z");
        // The night of the 2nd runs into the 3rd (local): it touches the blackout.
        let err = o
            .check_window(ts("2026-12-02T14:00:00Z"), ts("2026-12-02T23:00:00Z"), now)
            .unwrap_err();
        assert!(err.to_string().contains("not available"), "{err}");
        o.check_window(ts("2026-12-01T14:00:00Z"), ts("2026-12-01T15:00:00Z"), now)
            .unwrap();
        let err = o
            .check_window(ts("2026-12-01T14:00:00Z"), ts("2026-12-01T14:20:00Z"), now)
            .unwrap_err();
        assert!(err.to_string().starts_with("end_time"), "{err}");
        let err = o
            .check_window(ts("2026-12-01T09:00:00Z"), ts("2026-12-01T10:00:00Z"), now)
            .unwrap_err();
        assert!(err.to_string().contains("schedule"), "{err}");
        o.state = OfferState::Withdrawn;
        let err = o
            .check_window(ts("2026-12-01T14:00:00Z"), ts("2026-12-01T15:00:00Z"), now)
            .unwrap_err();
        assert!(err.to_string().contains("withdrawn"), "{err}");
    }

    #[test]
    fn price_is_per_started_quarter_hour_and_capped() {
        let o = offer("Asia/Shanghai", nights(), 1);
        let at = ts("2026-12-01T14:00:00Z");
        assert_eq!(o.price(at, at + Duration::from_secs(3600)), 400);
        assert_eq!(o.price(at, at + Duration::from_secs(15 * 60)), 100);
        assert_eq!(o.price(at, at + Duration::from_secs(16 * 60)), 200);
        assert_eq!(
            o.price(at, at + Duration::from_secs(9 * 3600)),
            2_000,
            "capped"
        );
    }

    fn request(start: &str, end: &str, key: &str) -> BookingRequest {
        BookingRequest {
            start: ts(start),
            end: ts(end),
            plate: Plate::parse("鲁B12345").unwrap(),
            idempotency_key: key.into(),
        }
    }

    /// An offer's bookings and slot counts, kept as the service keeps them.
    struct Records {
        offer: SharedOffer,
        bookings: BTreeMap<BookingId, SharedBooking>,
        days: BTreeMap<i64, SlotCounts>,
    }

    impl Records {
        fn book(
            &mut self,
            req: &BookingRequest,
            who: &str,
            now: Timestamp,
        ) -> Result<Booked, Error> {
            let who = DriverId::parse(who).unwrap();
            let id = BookingId::for_key(&self.offer.id, &who, &req.idempotency_key);
            let held = SlotCounts::days(req.start.min(req.end), req.end.max(req.start))
                .map(|d| self.days.get(&d).cloned())
                .collect();
            let mut days = booking_days(&self.offer, req.start, req.end, held);
            let got = book(
                &self.offer,
                req,
                &who,
                id.clone(),
                self.bookings.get(&id),
                &mut days,
                now,
            )?;
            if let Booked::New(b) = &got {
                self.bookings.insert(b.id.clone(), b.clone());
                for d in days {
                    self.days.insert(d.day, d);
                }
            }
            Ok(got)
        }

        fn change(
            &mut self,
            id: &BookingId,
            f: impl FnOnce(&mut SharedBooking) -> Result<(), Error>,
        ) -> Result<(), Error> {
            let mut b = self.bookings[id].clone();
            let before = b.state;
            f(&mut b)?;
            if b.freed(before) {
                for d in SlotCounts::days(b.start, b.end) {
                    self.days
                        .get_mut(&d)
                        .unwrap()
                        .release(b.category, b.start, b.end);
                }
            }
            self.bookings.insert(b.id.clone(), b);
            Ok(())
        }
    }

    #[test]
    fn a_pool_takes_as_many_overlapping_bookings_as_it_has_spaces_and_touching_ends_fit() {
        let mut r = Records {
            offer: offer("Asia/Shanghai", nights(), 2),
            bookings: BTreeMap::new(),
            days: BTreeMap::new(),
        };
        let now = ts("2026-12-01T08:00:00Z");
        r.book(
            &request("2026-12-01T14:00:00Z", "2026-12-01T16:00:00Z", "a"),
            "a",
            now,
        )
        .unwrap();
        r.book(
            &request("2026-12-01T15:00:00Z", "2026-12-01T17:00:00Z", "b"),
            "b",
            now,
        )
        .unwrap();
        let err = r
            .book(
                &request("2026-12-01T15:45:00Z", "2026-12-01T16:15:00Z", "c"),
                "c",
                now,
            )
            .unwrap_err();
        assert!(err.to_string().contains("fully booked"), "{err}");
        // Touching the first's end is fine.
        r.book(
            &request("2026-12-01T16:00:00Z", "2026-12-01T18:00:00Z", "d"),
            "d",
            now,
        )
        .unwrap();
        // A retry is the same booking; the host cannot book its own.
        let again = r.book(
            &request("2026-12-01T14:00:00Z", "2026-12-01T16:00:00Z", "a"),
            "a",
            now,
        );
        assert!(matches!(again, Ok(Booked::Existing(_))));
        let own = r.book(
            &request("2026-12-01T20:00:00Z", "2026-12-01T21:00:00Z", "h"),
            "host",
            now,
        );
        assert!(own.is_err());
        // A driver's cancel frees the window.
        let id = BookingId::for_key(&r.offer.id, &DriverId::parse("b").unwrap(), "b");
        r.change(&id, |b| b.cancel(Party::Driver, "", now)).unwrap();
        r.book(
            &request("2026-12-01T15:45:00Z", "2026-12-01T16:15:00Z", "c"),
            "c",
            now,
        )
        .unwrap();
    }

    #[test]
    fn an_owner_s_change_strands_the_bookings_it_no_longer_allows() {
        let mut r = Records {
            offer: offer("Asia/Shanghai", nights(), 2),
            bookings: BTreeMap::new(),
            days: BTreeMap::new(),
        };
        let now = ts("2026-12-01T08:00:00Z");
        for (k, start, end) in [
            ("a", "2026-12-01T14:00:00Z", "2026-12-01T16:00:00Z"),
            ("b", "2026-12-01T15:00:00Z", "2026-12-01T17:00:00Z"),
            ("c", "2026-12-02T20:00:00Z", "2026-12-02T22:00:00Z"),
        ] {
            r.book(&request(start, end, k), k, now).unwrap();
        }
        let all: Vec<SharedBooking> = r.bookings.values().cloned().collect();
        let driver_of = |b: &&SharedBooking| b.driver.as_str().to_owned();
        // One space: the later of the two overlapping ones is stranded.
        let mut fewer = r.offer.clone();
        fewer.spaces = 1;
        let stranded: Vec<String> = fewer.stranded(&all).iter().map(driver_of).collect();
        assert_eq!(stranded, ["b"]);
        // A blackout on the 3rd (local) strands c, whose night runs into it.
        let mut blackout = r.offer.clone();
        blackout.blackouts.push(Blackout {
            from: "2026-12-03".parse().unwrap(),
            to: "2026-12-03".parse().unwrap(),
        });
        let stranded: Vec<String> = blackout.stranded(&all).iter().map(driver_of).collect();
        assert_eq!(stranded, ["c"]);
        // Withdrawn, every BOOKED one is; a checked-in car is not.
        let id = BookingId::for_key(&r.offer.id, &DriverId::parse("a").unwrap(), "a");
        r.change(&id, |b| b.check_in(ts("2026-12-01T14:05:00Z")))
            .unwrap();
        let all: Vec<SharedBooking> = r.bookings.values().cloned().collect();
        let mut gone = r.offer.clone();
        gone.state = OfferState::Withdrawn;
        let mut stranded: Vec<String> = gone.stranded(&all).iter().map(driver_of).collect();
        stranded.sort();
        assert_eq!(stranded, ["b", "c"]);
    }

    #[test]
    fn hosts_see_plates_masked_and_the_lifecycle_holds() {
        let mut r = Records {
            offer: offer("Asia/Shanghai", nights(), 1),
            bookings: BTreeMap::new(),
            days: BTreeMap::new(),
        };
        let now = ts("2026-12-01T08:00:00Z");
        let Booked::New(b) = r
            .book(
                &request("2026-12-01T14:00:00Z", "2026-12-01T16:00:00Z", "a"),
                "a",
                now,
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(b.plate_for(&DriverId::parse("a").unwrap()), "鲁B12345");
        assert_eq!(b.plate_for(&DriverId::parse("host").unwrap()), "*****45");
        assert_eq!(b.party(&DriverId::parse("x").unwrap()), None);
        assert_eq!(b.price_minor, 800);
        let mut late = b.clone();
        assert!(
            late.cancel(Party::Driver, "", ts("2026-12-01T14:00:00Z"))
                .is_err()
        );
        late.cancel(Party::Host, "water pipe", ts("2026-12-01T14:00:00Z"))
            .unwrap();
        assert_eq!(late.cancelled_by, Some(CancelledBy::Host));
        let mut due = b.clone();
        assert!(!due.expire(ts("2026-12-01T14:14:00Z")));
        assert!(due.expire(ts("2026-12-01T14:15:00Z")));
        assert_eq!(due.state, BookingState::NoShow);
        let mut arrived = b;
        assert!(
            arrived.check_in(ts("2026-12-01T13:40:00Z")).is_err(),
            "too early"
        );
        arrived.check_in(ts("2026-12-01T13:50:00Z")).unwrap();
        arrived.check_out(ts("2026-12-01T15:00:00Z")).unwrap();
        assert_eq!(arrived.state, BookingState::Completed);
    }

    mod model {
        //! Offers, bookings, cancels and owner changes against a model written another
        //! way: the schedule and blackouts tested quarter hour by quarter hour on local
        //! wall-clock time, and a count of bookings per quarter hour.

        use proptest::prelude::*;

        use super::*;

        const QUARTERS: i64 = 2 * 96;

        #[derive(Debug, Clone)]
        enum Op {
            Book { from: i64, len: i64 },
            Cancel(usize),
            Spaces(u32),
            Blackout(u32),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..QUARTERS - 1, 1i64..24).prop_map(|(from, len)| Op::Book { from, len }),
                2 => (0usize..30).prop_map(Op::Cancel),
                1 => (1u32..4).prop_map(Op::Spaces),
                1 => (0u32..3).prop_map(Op::Blackout),
            ]
        }

        /// Periods whose ends avoid 01:00-04:00 local, where clocks change: a night
        /// (from 18:00-23:45 to 05:00-09:45 the next day) or a day (06:00-17:45 for up
        /// to 12 hours), on some weekdays.
        fn period() -> impl Strategy<Value = WeeklyPeriod> {
            prop_oneof![
                (1u8..=7, 72u16..96, 20u16..40).prop_map(|(weekday, s, e)| WeeklyPeriod {
                    weekday,
                    start_minute: s * 15,
                    end_minute: e * 15,
                }),
                (1u8..=7, 24u16..72, 1u16..48).prop_map(|(weekday, s, len)| WeeklyPeriod {
                    weekday,
                    start_minute: s * 15,
                    end_minute: (s + len).min(96) * 15,
                }),
            ]
        }

        /// Whether the local wall-clock time of `t` is inside `p` (the model's way).
        fn inside(p: &WeeklyPeriod, t: Timestamp, zone: &jiff::tz::TimeZone) -> bool {
            let local = t.to_zoned(zone.clone());
            let weekday = local.weekday().to_monday_one_offset() as u8;
            let minute = local.hour() as u16 * 60 + local.minute() as u16;
            let next = p.weekday % 7 + 1;
            if p.end_minute > p.start_minute {
                weekday == p.weekday && p.start_minute <= minute && minute < p.end_minute
            } else {
                (weekday == p.weekday && minute >= p.start_minute)
                    || (weekday == next && minute < p.end_minute)
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(120))]
            #[test]
            fn bookings_agree_with_a_quarter_hour_model(
                zone in 0usize..3,
                schedule in proptest::collection::vec(period(), 1..6),
                spaces in 1u32..4,
                ops in proptest::collection::vec(op(), 1..40),
            ) {
                // Each zone's window opens the evening before a change of clocks (none
                // in Shanghai).
                let (name, epoch) = [
                    ("Europe/Berlin", "2026-10-24T12:00:00Z"),
                    ("America/New_York", "2026-10-31T12:00:00Z"),
                    ("Asia/Shanghai", "2026-10-24T12:00:00Z"),
                ][zone];
                let epoch = ts(epoch);
                let q = |n: i64| epoch + Duration::from_secs(n as u64 * 900);
                let mut o = offer(name, schedule, spaces);
                o.max_booking_minutes = 7 * 1440;
                let tz = o.time_zone.zone().clone();
                let mut r = Records { offer: o, bookings: BTreeMap::new(), days: BTreeMap::new() };
                let now = epoch - Duration::from_secs(3600);
                // The model: per booking its quarters and whether it still holds them.
                let mut made: Vec<(i64, i64, bool)> = Vec::new();
                let mut ids: Vec<BookingId> = Vec::new();
                let used = |made: &[(i64, i64, bool)], n: i64| {
                    made.iter().filter(|(s, e, live)| *live && *s <= n && n < *e).count() as u32
                };
                for op in ops {
                    match op {
                        Op::Book { from, len } => {
                            let (s, e) = (from, (from + len).min(QUARTERS));
                            let blacked = |n: i64| {
                                let date = q(n).to_zoned(tz.clone()).date();
                                r.offer.blackouts.iter().any(|b| b.from <= date && date <= b.to)
                            };
                            let fits = (s..e).all(|n| {
                                r.offer.schedule.iter().any(|p| inside(p, q(n), &tz))
                                    && !blacked(n)
                                    && used(&made, n) < r.offer.spaces
                            });
                            let who = format!("d{}", ids.len());
                            // Made one second apart: an owner's change strands the
                            // ones made last.
                            let at = now + Duration::from_secs(ids.len() as u64);
                            let got = r.book(&request_at(q(s), q(e), &format!("k{}", ids.len())), &who, at);
                            prop_assert_eq!(got.is_ok(), fits, "{}..{}: {:?}", s, e, got);
                            if let Ok(Booked::New(b)) = got {
                                ids.push(b.id);
                                made.push((s, e, true));
                            }
                        }
                        Op::Cancel(k) if k < ids.len() => {
                            let got = r.change(&ids[k], |b| b.cancel(Party::Driver, "", now));
                            prop_assert_eq!(got.is_ok(), made[k].2);
                            made[k].2 = false;
                        }
                        Op::Cancel(_) => {}
                        Op::Spaces(n) | Op::Blackout(n) => {
                            let mut changed = r.offer.clone();
                            if let Op::Spaces(n) = op {
                                changed.spaces = n;
                            } else {
                                let date = (q(0).to_zoned(tz.clone()).date())
                                    .checked_add(jiff::Span::new().days(i64::from(n)))
                                    .unwrap();
                                changed.blackouts.push(Blackout { from: date, to: date });
                            }
                            // The model strands, in creation order, what the new terms
                            // no longer allow.
                            let mut kept: Vec<(i64, i64, bool)> = Vec::new();
                            let mut strand_model = Vec::new();
                            for (k, (s, e, live)) in made.iter().enumerate() {
                                if !live {
                                    continue;
                                }
                                let ok = (*s..*e).all(|n| {
                                    let date = q(n).to_zoned(tz.clone()).date();
                                    !changed.blackouts.iter().any(|b| b.from <= date && date <= b.to)
                                        && used(&kept, n) < changed.spaces
                                });
                                if ok {
                                    kept.push((*s, *e, true));
                                } else {
                                    strand_model.push(ids[k].clone());
                                }
                            }
                            let open: Vec<SharedBooking> = r.bookings.values().cloned().collect();
                            let mut stranded: Vec<BookingId> =
                                changed.stranded(&open).iter().map(|b| b.id.clone()).collect();
                            stranded.sort();
                            strand_model.sort();
                            prop_assert_eq!(&stranded, &strand_model);
                            for id in &stranded {
                                r.change(id, |b| b.cancel(Party::Host, "owner", now)).unwrap();
                                let k = ids.iter().position(|i| i == id).unwrap();
                                made[k].2 = false;
                            }
                            r.offer = changed;
                        }
                    }
                    // After every step: each quarter's remaining spaces.
                    for n in 0..QUARTERS {
                        let day = SlotCounts::day_of(q(n));
                        let remaining = match r.days.get(&day) {
                            Some(d) => d.calendar(SpaceCategory::Standard, r.offer.spaces, q(n), q(n + 1)).next().unwrap().remaining,
                            None => r.offer.spaces,
                        };
                        prop_assert_eq!(remaining, r.offer.spaces.saturating_sub(used(&made, n)), "quarter {}", n);
                    }
                }
            }
        }

        fn request_at(start: Timestamp, end: Timestamp, key: &str) -> BookingRequest {
            BookingRequest {
                start,
                end,
                plate: Plate::parse("鲁B12345").unwrap(),
                idempotency_key: key.into(),
            }
        }
    }
}
