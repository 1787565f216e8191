//! Parking sessions (无感支付): a plate's stay at a car park from the entry its barrier
//! read to the exit, priced by the tariff in force at entry, and how it is paid.

use std::{fmt, sync::Arc};

use super::{CarPark, CarParkId, DriverId, Error, OperatorId, Plate, RegionId, Tariff, Timestamp};

super::reservation::owned_id!(
    /// A session's id: `<car park id>~<the entry report's sequence, base 36>`, so the
    /// same entry opens the same session on every instance, and a resent report
    /// (refused as a duplicate) opens none.
    SessionId,
    CarParkId,
    car_park,
    "session",
    "car park"
);

impl SessionId {
    /// The session an entry report with `sequence` opens at `car_park`; an exit with no
    /// session to close gets one the same way, from its own sequence.
    pub fn of_report(car_park: &CarParkId, sequence: u64) -> Self {
        let mut digits = Vec::new();
        let mut n = sequence;
        loop {
            digits.push(char::from_digit((n % 36) as u32, 36).expect("below 36"));
            n /= 36;
            if n == 0 {
                break;
            }
        }
        let suffix: String = digits.iter().rev().collect();
        Self::new(car_park, &suffix)
    }
}

/// The colour of a Chinese number plate, which tells the vehicle's class (blue: small
/// car; yellow: large vehicle; green: new energy; white: police and state; black:
/// foreign and consular).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PlateColor {
    #[default]
    Unspecified,
    Blue,
    Yellow,
    Green,
    White,
    Black,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Entered, not yet left.
    Open,
    /// Left; the fee was charged to the driver's payment method.
    ClosedPaid,
    /// Left with a fee not (yet) paid: an unlinked plate pays at the barrier, a
    /// linked plate's charge is pending or failed (then it is arrears).
    ClosedUnpaid,
    /// Left with nothing to pay (free minutes, a prepaid window).
    ClosedFree,
    /// Never a stay to charge: replaced by a second entry, or an exit without entry.
    Voided,
}

impl SessionState {
    /// Every state, in the API's order.
    pub const ALL: [SessionState; 5] = [
        Self::Open,
        Self::ClosedPaid,
        Self::ClosedUnpaid,
        Self::ClosedFree,
        Self::Voided,
    ];

    pub fn is_closed(self) -> bool {
        !matches!(self, Self::Open)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::ClosedPaid => "closed_paid",
            Self::ClosedUnpaid => "closed_unpaid",
            Self::ClosedFree => "closed_free",
            Self::Voided => "voided",
        }
    }
}

/// How a session's fee is paid.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// Nothing to pay, or not decided yet.
    #[default]
    None,
    /// The driver's built-in wallet.
    Wallet,
    /// The external payment gateway.
    Gateway,
    /// At the car park (an unlinked plate): the operator collects it.
    Barrier,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 4] = [Self::None, Self::Wallet, Self::Gateway, Self::Barrier];

    /// Its stored name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Wallet => "wallet",
            Self::Gateway => "gateway",
            Self::Barrier => "barrier",
        }
    }
}

/// Where a payment stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    #[default]
    NotNeeded,
    /// To be charged (again, after a failed attempt).
    Pending,
    Succeeded,
    /// Refused for good (the wallet below its overdraft, the gateway declined): arrears.
    Failed,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 4] = [
        Self::NotNeeded,
        Self::Pending,
        Self::Succeeded,
        Self::Failed,
    ];

    /// Its stored name (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotNeeded => "not_needed",
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// A session's payment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub method: PaymentMethod,
    pub status: PaymentStatus,
    /// Attempts made to charge it.
    pub attempts: u32,
    /// The ledger entry's or the gateway's receipt, once paid.
    pub receipt_id: String,
    /// Why the last attempt failed, in words for the driver.
    pub failure: String,
    /// A gateway charge is not attempted again before this: an instance that starts an
    /// attempt sets it first (a lease), so two instances do not call at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
}

/// What a session noticed that a person may want to look at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionFlags {
    /// The exit was stamped before the entry (two devices' clocks disagree): the stay
    /// counts as no length.
    pub clock_skew: bool,
    /// The plate had arrears when it entered: the car park may ask for back-pay.
    pub arrears_at_entry: bool,
    /// An exit with no entry on record: a stay of unknown length, not charged.
    pub exit_without_entry: bool,
}

/// A prepaid window a session fulfils: a reservation's or a shared booking's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prepaid {
    /// The reservation's or booking's id.
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// A plate read by a barrier's camera: the plate, its colour, the lane and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlateRead {
    pub plate: Plate,
    pub color: PlateColor,
    /// The lane, as the operator names it (may be empty).
    pub lane: String,
    pub at: Timestamp,
}

/// One plate's stay at one car park.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParkingSession {
    pub id: SessionId,
    pub region: RegionId,
    pub operator: OperatorId,
    /// `None` once pseudonymised (`--session-retention-days` after it closed).
    pub plate: Option<Plate>,
    pub plate_color: PlateColor,
    /// The entry lane, as the operator names it (may be empty).
    pub lane: String,
    /// `None` for an exit without entry.
    pub entry_time: Option<Timestamp>,
    pub exit_time: Option<Timestamp>,
    pub state: SessionState,
    pub fee_minor: i64,
    /// The tariff in force at entry, which prices the session whatever the operator
    /// changes later, and its version.
    pub tariff: Tariff,
    pub tariff_version: u32,
    pub prepaid: Option<Prepaid>,
    /// The driver the plate was linked to when the session closed, who pays.
    pub driver: Option<DriverId>,
    pub payment: Payment,
    pub flags: SessionFlags,
    /// Why it was voided.
    pub void_reason: String,
}

impl ParkingSession {
    /// The session an entry of `plate` opens at `car_park` at `at`.
    pub fn enter(
        id: SessionId,
        car_park: &CarPark,
        read: PlateRead,
        prepaid: Option<Prepaid>,
        arrears: bool,
    ) -> Self {
        Self {
            id,
            region: car_park.region.clone(),
            operator: car_park.operator.clone(),
            plate: Some(read.plate),
            plate_color: read.color,
            lane: read.lane,
            entry_time: Some(read.at),
            exit_time: None,
            state: SessionState::Open,
            fee_minor: 0,
            tariff: car_park.tariff.clone(),
            tariff_version: car_park.tariff.version,
            prepaid,
            driver: None,
            payment: Payment::default(),
            flags: SessionFlags {
                arrears_at_entry: arrears,
                ..SessionFlags::default()
            },
            void_reason: String::new(),
        }
    }

    /// The record of an exit of `plate` that closes no session: flagged, not charged.
    pub fn exit_without_entry(id: SessionId, car_park: &CarPark, read: PlateRead) -> Self {
        let at = read.at;
        let mut session = Self::enter(id, car_park, read, None, false);
        session.entry_time = None;
        session.exit_time = Some(at);
        session.state = SessionState::Voided;
        session.flags.exit_without_entry = true;
        session.void_reason = "an exit with no entry on record: a stay of unknown length".into();
        session
    }

    /// Voids an open session: its plate entered again before it left (a missed exit
    /// read), so its length is unknown and it is not charged.
    pub fn void(&mut self, at: Timestamp, reason: &str) -> Result<(), Error> {
        self.check_open()?;
        self.state = SessionState::Voided;
        self.exit_time = Some(at);
        self.void_reason = reason.to_owned();
        Ok(())
    }

    /// Closes the session at its exit at `at`. Its fee is the tariff's at entry, with
    /// a prepaid window credited. `payer` is the plate's linked driver and the method
    /// they pay with, if any; an unlinked plate pays at the barrier.
    pub fn exit(
        &mut self,
        at: Timestamp,
        payer: Option<(DriverId, PaymentMethod)>,
    ) -> Result<(), Error> {
        self.check_open()?;
        let entry = self.entry_time.expect("an open session has an entry");
        self.flags.clock_skew = at < entry;
        let window = self.prepaid.as_ref().map(|p| (p.start, p.end));
        self.fee_minor = self.tariff.fee(entry, at, window);
        self.exit_time = Some(at);
        if self.fee_minor == 0 {
            self.state = SessionState::ClosedFree;
            return Ok(());
        }
        self.state = SessionState::ClosedUnpaid;
        self.payment = match payer {
            Some((driver, method)) => {
                self.driver = Some(driver);
                Payment {
                    method,
                    status: PaymentStatus::Pending,
                    ..Payment::default()
                }
            }
            None => Payment {
                method: PaymentMethod::Barrier,
                status: PaymentStatus::NotNeeded,
                ..Payment::default()
            },
        };
        Ok(())
    }

    /// Starts an attempt to charge it: counted, and no other attempt starts before
    /// `lease_until` (an instance calling a gateway holds the session that long, so
    /// two instances never call at once).
    pub fn start_attempt(&mut self, now: Timestamp, lease_until: Timestamp) -> Result<(), Error> {
        self.check_charge()?;
        if self.payment.next_attempt_at.is_some_and(|t| t > now) {
            return Err(Error::FailedPrecondition(format!(
                "session {} has an attempt in progress",
                self.id
            )));
        }
        self.payment.attempts += 1;
        self.payment.next_attempt_at = Some(lease_until);
        Ok(())
    }

    /// Records a successful charge: the session is paid.
    pub fn paid(&mut self, receipt_id: &str) -> Result<(), Error> {
        self.check_charge()?;
        self.payment.status = PaymentStatus::Succeeded;
        self.payment.receipt_id = receipt_id.to_owned();
        self.payment.failure.clear();
        self.payment.next_attempt_at = None;
        self.state = SessionState::ClosedPaid;
        Ok(())
    }

    /// Records an attempt that failed in a way worth retrying (a timeout, the gateway
    /// unavailable): the next starts no sooner than `retry_at`.
    pub fn retry_later(&mut self, why: &str, retry_at: Timestamp) -> Result<(), Error> {
        self.check_charge()?;
        self.payment.failure = why.to_owned();
        self.payment.next_attempt_at = Some(retry_at);
        Ok(())
    }

    /// Records a refusal for good (the wallet below its overdraft, the gateway
    /// declined): the fee is arrears.
    pub fn charge_failed(&mut self, why: &str) -> Result<(), Error> {
        self.check_charge()?;
        self.payment.failure = why.to_owned();
        self.payment.status = PaymentStatus::Failed;
        self.payment.next_attempt_at = None;
        Ok(())
    }

    /// Whether a charge may be attempted at `now`: due, and no attempt holds it.
    pub fn may_attempt(&self, now: Timestamp) -> bool {
        self.is_due() && self.payment.next_attempt_at.is_none_or(|t| t <= now)
    }

    /// A fee owed by the plate's driver: charged and refused for good.
    pub fn is_arrears(&self) -> bool {
        self.state == SessionState::ClosedUnpaid && self.payment.status == PaymentStatus::Failed
    }

    /// A charge to make (again).
    pub fn is_due(&self) -> bool {
        self.state == SessionState::ClosedUnpaid && self.payment.status == PaymentStatus::Pending
    }

    /// Forgets the plate of a session closed before `cutoff` (retention of personal
    /// data); says whether it did.
    pub fn pseudonymise(&mut self, cutoff: Timestamp) -> bool {
        let closed_before =
            self.state.is_closed() && self.exit_time.is_some_and(|t| t < cutoff) && !self.is_due();
        if closed_before && self.plate.is_some() {
            self.plate = None;
            return true;
        }
        false
    }

    /// The plate as a viewer may see it: whole for the driver who pays and the car
    /// park's operator, masked for anyone else.
    pub fn plate_for(&self, viewer: &Viewer<'_>) -> String {
        let Some(plate) = &self.plate else {
            return String::new();
        };
        let whole = match viewer {
            Viewer::Operator(o) => *o == &self.operator,
            Viewer::Driver(d) => self.driver.as_ref() == Some(*d),
        };
        if whole {
            plate.as_str().to_owned()
        } else {
            plate.masked()
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.state == SessionState::Open {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "session {} is {}, not open",
                self.id,
                self.state.as_str()
            )))
        }
    }

    fn check_charge(&self) -> Result<(), Error> {
        if self.is_due() {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "session {} has no charge pending",
                self.id
            )))
        }
    }
}

/// How many account shards (pseudo-regions) hold plate links, wallets and ledger
/// entries: records that belong to a driver or a plate, not to a place.
pub const ACCOUNT_SHARDS: u64 = 4;

/// The account shard `key` (a driver id, a plate) lives in: `_accounts-<n>`. A region
/// starting with `_` is never a car park's, so these never meet one.
pub fn accounts_region(key: &str) -> RegionId {
    let shard = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % ACCOUNT_SHARDS;
    RegionId::parse(&format!("_accounts-{shard}")).expect("a valid region")
}

/// Every account shard.
pub fn account_regions() -> Vec<RegionId> {
    (0..ACCOUNT_SHARDS)
        .map(|n| RegionId::parse(&format!("_accounts-{n}")).expect("a valid region"))
        .collect()
}

/// Which session a plate at a car park is in now: the key an entry and an exit read
/// by id (`<car park>~<hash of the plate>`), so instances agree on it without any
/// index. Removed by the exit (or replaced by the next entry).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenSession {
    pub region: RegionId,
    pub id: String,
    pub session: SessionId,
}

impl OpenSession {
    /// The key of `plate` at `car_park`. The plate is hashed: the key names no plate.
    pub fn id_of(car_park: &CarParkId, plate: &Plate) -> String {
        format!("{car_park}~{}", super::reservation::plate_hash(plate))
    }
}

/// What a driver owes for one session whose charge was refused for good, kept live in
/// place of the session once the session itself moved to history: the arrears a gate
/// and the wallet show, in a few dozen bytes instead of the whole session. Written in
/// the session's region, in the same atomic step that deletes the session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Arrear {
    pub region: RegionId,
    pub session: SessionId,
    pub driver: DriverId,
    pub fee_minor: i64,
    pub currency: String,
    pub exit_time: Option<Timestamp>,
}

impl Arrear {
    /// What `session` leaves owed, if it is in arrears (charged to a driver and refused
    /// for good).
    pub fn of(session: &ParkingSession) -> Option<Arrear> {
        let driver = session.driver.clone().filter(|_| session.is_arrears())?;
        Some(Arrear {
            region: session.region.clone(),
            session: session.id.clone(),
            driver,
            fee_minor: session.fee_minor,
            currency: session.tariff.currency.clone(),
            exit_time: session.exit_time,
        })
    }
}

/// What a plate read at a gate did, for the report's ack: the session it opened or
/// closed, and the arrears of the plate's driver at an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateNote {
    pub session: Option<SessionId>,
    /// What the plate's linked driver owes, per the sessions in arrears (0: nothing).
    pub arrears_minor: i64,
    pub arrears_currency: String,
}

/// Most plates one driver may link.
pub const MAX_PLATES_PER_DRIVER: usize = 5;

/// A plate linked to a driver: its sessions are charged to the driver's method.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlateLink {
    /// The plate's account shard (`accounts_region`).
    pub region: RegionId,
    pub plate: Plate,
    pub color: PlateColor,
    pub driver: DriverId,
    /// WALLET or GATEWAY.
    pub method: PaymentMethod,
    pub linked_at: Timestamp,
}

impl PlateLink {
    /// `driver` links `plate`, given the link the plate has now (`current`) and how many
    /// plates the driver has linked. Linking one's own plate again changes its colour
    /// and method; a plate linked to another driver must be unlinked by them first.
    pub fn link(
        current: Option<&PlateLink>,
        driver_plates: usize,
        plate: Plate,
        color: PlateColor,
        driver: &DriverId,
        method: PaymentMethod,
        at: Timestamp,
    ) -> Result<Self, Error> {
        if !matches!(method, PaymentMethod::Wallet | PaymentMethod::Gateway) {
            return Err(Error::invalid(
                "payment_method",
                "a linked plate pays by WALLET or GATEWAY",
            ));
        }
        match current {
            Some(link) if &link.driver != driver => {
                return Err(Error::FailedPrecondition(
                    "this plate is linked to another driver, who must unlink it first".into(),
                ));
            }
            Some(link) => {
                return Ok(Self {
                    color,
                    method,
                    ..link.clone()
                });
            }
            None if driver_plates >= MAX_PLATES_PER_DRIVER => {
                return Err(Error::FailedPrecondition(format!(
                    "a driver may link at most {MAX_PLATES_PER_DRIVER} plates"
                )));
            }
            None => {}
        }
        Ok(Self {
            region: accounts_region(plate.as_str()),
            plate,
            color,
            driver: driver.clone(),
            method,
            linked_at: at,
        })
    }

    /// Whether `driver` may unlink it: only its own driver; anyone else is told it is
    /// not found, so plates reveal nothing.
    pub fn check_unlink(&self, driver: &DriverId) -> Result<(), Error> {
        if &self.driver == driver {
            Ok(())
        } else {
            Err(Error::NotFound {
                kind: "linked plate",
                id: self.plate.masked(),
            })
        }
    }
}

/// One operator's local day of sessions (清分): what a city reconciles with it. Every
/// fee of a session paid or unpaid on the day is in exactly one of revenue, arrears,
/// barrier and pending, so those four add up to the day's fees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    pub currency: String,
    pub sessions_paid: u32,
    pub sessions_unpaid: u32,
    pub sessions_free: u32,
    pub sessions_voided: u32,
    /// Fees charged to wallets and gateways.
    pub revenue_minor: i64,
    /// Fees refunded from the operator's revenue.
    pub refunds_minor: i64,
    /// Fees refused for good: owed by drivers.
    pub arrears_minor: i64,
    /// Fees of unlinked plates, for the operator to collect at the car park.
    pub barrier_minor: i64,
    /// Fees whose charge (wallet or gateway) has not completed yet: they move to
    /// revenue, or to arrears if refused for good.
    pub pending_minor: i64,
}

impl Settlement {
    /// The settlement of `day` from the sessions that closed on it, each with the time
    /// zone of its car park (a day is local), and the refunds posted on it. A session
    /// counts on the local day of its exit; one still open counts on none. Sessions in
    /// two currencies cannot be settled as one.
    pub fn of_day<'a>(
        day: jiff::civil::Date,
        sessions: impl IntoIterator<Item = (&'a ParkingSession, &'a jiff::tz::TimeZone)>,
        refunds: impl IntoIterator<Item = (&'a super::LedgerEntry, &'a jiff::tz::TimeZone)>,
    ) -> Result<Self, Error> {
        let on_day =
            |at: Timestamp, zone: &jiff::tz::TimeZone| at.to_zoned(zone.clone()).date() == day;
        let mut settlement = Self::default();
        for (session, zone) in sessions {
            let Some(exit) = session.exit_time else {
                continue;
            };
            if !on_day(exit, zone) {
                continue;
            }
            settlement.count(
                session.state,
                session.payment.method,
                session.payment.status,
                &session.tariff.currency,
                1,
                session.fee_minor,
            )?;
        }
        for (entry, zone) in refunds {
            if entry.kind == super::EntryKind::Refund && on_day(entry.at, zone) {
                settlement.add_refunds(&entry.currency, entry.amount_minor)?;
            }
        }
        Ok(settlement)
    }

    /// Counts `n` sessions in `state`, paid by `method` with `status`, whose fees add
    /// up to `fee_minor`: the one rule of which sum a fee belongs to.
    fn count(
        &mut self,
        state: SessionState,
        method: PaymentMethod,
        status: PaymentStatus,
        currency: &str,
        n: u32,
        fee_minor: i64,
    ) -> Result<(), Error> {
        match state {
            SessionState::Open => {}
            SessionState::ClosedPaid => {
                self.currency(currency)?;
                self.sessions_paid += n;
                self.revenue_minor += fee_minor;
            }
            SessionState::ClosedUnpaid => {
                self.currency(currency)?;
                self.sessions_unpaid += n;
                // Every unpaid fee lands in one sum: refused for good, to collect at
                // the barrier, or else still being charged.
                if status == PaymentStatus::Failed {
                    self.arrears_minor += fee_minor;
                } else if method == PaymentMethod::Barrier {
                    self.barrier_minor += fee_minor;
                } else {
                    self.pending_minor += fee_minor;
                }
            }
            SessionState::ClosedFree => self.sessions_free += n,
            SessionState::Voided => self.sessions_voided += n,
        }
        Ok(())
    }

    /// Adds sums of sessions as history's aggregate gives them, by the names the
    /// states and payments are stored under.
    pub fn add(
        &mut self,
        currency: &str,
        state: &str,
        method: &str,
        status: &str,
        sessions: i64,
        fee_minor: i64,
    ) -> Result<(), Error> {
        let corrupt = |what: &str| Error::Internal(format!("history holds an unknown {what}"));
        let state = SessionState::ALL
            .into_iter()
            .find(|s| s.as_str() == state)
            .ok_or_else(|| corrupt("session state"))?;
        let method = PaymentMethod::ALL
            .into_iter()
            .find(|m| m.as_str() == method)
            .ok_or_else(|| corrupt("payment method"))?;
        let status = PaymentStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == status)
            .ok_or_else(|| corrupt("payment status"))?;
        let n = u32::try_from(sessions).map_err(|_| corrupt("session count"))?;
        self.count(state, method, status, currency, n, fee_minor)
    }

    /// Adds refunds posted on the day.
    pub fn add_refunds(&mut self, currency: &str, amount_minor: i64) -> Result<(), Error> {
        self.currency(currency)?;
        self.refunds_minor += amount_minor;
        Ok(())
    }

    /// Takes `currency` as the settlement's, or refuses a second one.
    fn currency(&mut self, currency: &str) -> Result<(), Error> {
        if self.currency.is_empty() {
            self.currency = currency.to_owned();
        }
        if self.currency == currency {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(format!(
                "the day has fees in {} and in {currency}: settle each currency apart",
                self.currency
            )))
        }
    }
}

/// Who looks at a session.
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    Operator(&'a OperatorId),
    Driver(&'a DriverId),
}

impl fmt::Display for PlateColor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::Blue => "blue",
            Self::Yellow => "yellow",
            Self::Green => "green",
            Self::White => "white",
            Self::Black => "black",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> Timestamp {
        let start: Timestamp = "2026-12-01T08:00:00Z".parse().unwrap();
        Timestamp::from_second(start.as_second() + minutes * 60).unwrap()
    }

    fn car_park() -> CarPark {
        let mut c = crate::domain::reservation::tests::car_park(5);
        c.tariff = Tariff::new("CNY", 500, 3000, 15).unwrap();
        c.tariff.version = 3;
        c
    }

    fn read(color: PlateColor, lane: &str, at: Timestamp) -> PlateRead {
        PlateRead {
            plate: Plate::parse("鲁B 12345").unwrap(),
            color,
            lane: lane.to_owned(),
            at,
        }
    }

    #[test]
    fn a_session_is_priced_by_the_tariff_at_entry_and_paid_once() {
        let mut park = car_park();
        let id = SessionId::of_report(&park.id, 1_000);
        assert_eq!(id.as_str(), "g1~rs");
        let mut s = ParkingSession::enter(
            id,
            &park,
            read(PlateColor::Blue, "in-1", at(0)),
            None,
            false,
        );
        // The operator doubles the rate after the entry: the session keeps its own.
        park.tariff.hourly_rate = 1000;
        assert_eq!(s.tariff_version, 3);
        let ann = DriverId::parse("ann").unwrap();
        s.exit(at(90), Some((ann.clone(), PaymentMethod::Wallet)))
            .unwrap();
        assert_eq!((s.state, s.fee_minor), (SessionState::ClosedUnpaid, 1000));
        assert!(s.is_due());
        s.start_attempt(at(90), at(91)).unwrap();
        assert!(
            s.start_attempt(at(90), at(91)).is_err(),
            "one attempt at a time"
        );
        s.retry_later("the gateway timed out", at(92)).unwrap();
        assert!(s.is_due(), "a timeout is retried");
        assert!(!s.may_attempt(at(91)) && s.may_attempt(at(92)));
        s.start_attempt(at(92), at(93)).unwrap();
        s.paid("charge:g1~rs").unwrap();
        assert_eq!(s.state, SessionState::ClosedPaid);
        assert_eq!(s.payment.attempts, 2);
        assert!(s.paid("again").is_err(), "paid once");
        assert!(s.exit(at(100), None).is_err(), "closed once");
    }

    #[test]
    fn payment_names_are_serde_s() {
        for m in PaymentMethod::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
        }
        for s in PaymentStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn the_edge_cases_are_explicit() {
        let park = car_park();
        // Within the free minutes.
        let mut s = ParkingSession::enter(
            SessionId::of_report(&park.id, 1),
            &park,
            read(PlateColor::Green, "", at(0)),
            None,
            false,
        );
        s.exit(at(10), None).unwrap();
        assert_eq!(s.state, SessionState::ClosedFree);
        // An unlinked plate pays at the barrier.
        let mut s = ParkingSession::enter(
            SessionId::of_report(&park.id, 2),
            &park,
            read(PlateColor::Blue, "", at(0)),
            None,
            true,
        );
        assert!(s.flags.arrears_at_entry);
        s.exit(at(61), None).unwrap();
        assert_eq!(
            (s.state, s.payment.method, s.fee_minor),
            (SessionState::ClosedUnpaid, PaymentMethod::Barrier, 1000)
        );
        assert!(!s.is_due());
        // The exit device's clock is behind the entry's.
        let mut s = ParkingSession::enter(
            SessionId::of_report(&park.id, 3),
            &park,
            read(PlateColor::Blue, "", at(30)),
            None,
            false,
        );
        s.exit(at(20), None).unwrap();
        assert!(s.flags.clock_skew);
        assert_eq!(s.state, SessionState::ClosedFree);
        // A reservation's window is prepaid; the overstay is charged.
        let prepaid = Prepaid {
            id: "g1~abc".into(),
            start: at(0),
            end: at(120),
        };
        let mut s = ParkingSession::enter(
            SessionId::of_report(&park.id, 4),
            &park,
            read(PlateColor::Blue, "", at(0)),
            Some(prepaid),
            false,
        );
        s.exit(at(150), None).unwrap();
        assert_eq!(s.fee_minor, 500);
        // A second entry voids the first; an exit without entry is flagged, not charged.
        let mut s = ParkingSession::enter(
            SessionId::of_report(&park.id, 5),
            &park,
            read(PlateColor::Blue, "", at(0)),
            None,
            false,
        );
        s.void(at(60), "the plate entered again").unwrap();
        assert_eq!(s.state, SessionState::Voided);
        let s = ParkingSession::exit_without_entry(
            SessionId::of_report(&park.id, 6),
            &park,
            read(PlateColor::Blue, "", at(60)),
        );
        assert!(s.flags.exit_without_entry && s.fee_minor == 0 && s.state == SessionState::Voided);
    }

    #[test]
    fn a_plate_is_linked_to_one_driver_at_a_time() {
        let (ann, bob) = (
            DriverId::parse("ann").unwrap(),
            DriverId::parse("bob").unwrap(),
        );
        let plate = || Plate::parse("鲁B12345").unwrap();
        let link = PlateLink::link(
            None,
            0,
            plate(),
            PlateColor::Blue,
            &ann,
            PaymentMethod::Wallet,
            at(0),
        )
        .unwrap();
        // Again by ann: the colour and method change, the link's time stays.
        let again = PlateLink::link(
            Some(&link),
            1,
            plate(),
            PlateColor::Green,
            &ann,
            PaymentMethod::Gateway,
            at(5),
        )
        .unwrap();
        assert_eq!(
            (again.color, again.method, again.linked_at),
            (PlateColor::Green, PaymentMethod::Gateway, at(0))
        );
        let taken = PlateLink::link(
            Some(&link),
            0,
            plate(),
            PlateColor::Blue,
            &bob,
            PaymentMethod::Wallet,
            at(5),
        )
        .unwrap_err();
        assert!(matches!(taken, Error::FailedPrecondition(_)), "{taken}");
        assert!(
            PlateLink::link(
                None,
                MAX_PLATES_PER_DRIVER,
                plate(),
                PlateColor::Blue,
                &bob,
                PaymentMethod::Wallet,
                at(5)
            )
            .is_err()
        );
        assert!(
            PlateLink::link(
                None,
                0,
                plate(),
                PlateColor::Blue,
                &bob,
                PaymentMethod::Barrier,
                at(5)
            )
            .is_err()
        );
        assert!(link.check_unlink(&ann).is_ok());
        assert!(matches!(
            link.check_unlink(&bob),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn a_day_is_settled_by_the_local_day_of_each_exit() {
        let park = car_park();
        let zone = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let ann = DriverId::parse("ann").unwrap();
        let session = |n: u64, exit: i64, payer: Option<(DriverId, PaymentMethod)>| {
            let mut s = ParkingSession::enter(
                SessionId::of_report(&park.id, n),
                &park,
                read(PlateColor::Blue, "", at(0)),
                None,
                false,
            );
            s.exit(at(exit), payer).unwrap();
            s
        };
        // 08:00Z is 16:00 in Shanghai: an exit 8 hours later (00:00 next day there)
        // belongs to the next local day.
        let mut paid = session(1, 90, Some((ann.clone(), PaymentMethod::Wallet)));
        paid.paid("r1").unwrap();
        let mut refused = session(2, 61, Some((ann.clone(), PaymentMethod::Wallet)));
        refused.charge_failed("balance too low").unwrap();
        let barrier = session(3, 120, None);
        let free = session(4, 10, None);
        let tomorrow = session(5, 8 * 60, None);
        let open = ParkingSession::enter(
            SessionId::of_report(&park.id, 6),
            &park,
            read(PlateColor::Blue, "", at(0)),
            None,
            false,
        );
        let all = [&paid, &refused, &barrier, &free, &tomorrow, &open];
        let day: jiff::civil::Date = "2026-12-01".parse().unwrap();
        let settled = Settlement::of_day(day, all.iter().map(|s| (*s, &zone)), []).unwrap();
        assert_eq!(
            settled,
            Settlement {
                currency: "CNY".into(),
                sessions_paid: 1,
                sessions_unpaid: 2,
                sessions_free: 1,
                sessions_voided: 0,
                revenue_minor: 1000,
                refunds_minor: 0,
                arrears_minor: 1000,
                barrier_minor: 1000,
                pending_minor: 0,
            }
        );
        let next: jiff::civil::Date = "2026-12-02".parse().unwrap();
        let settled = Settlement::of_day(next, all.iter().map(|s| (*s, &zone)), []).unwrap();
        assert_eq!((settled.sessions_unpaid, settled.barrier_minor), (1, 3000));
    }

    #[test]
    fn every_fee_of_the_day_lands_in_exactly_one_sum() {
        // Every state, method and status, as history's aggregate gives them: the sums
        // add up to the fees of the sessions paid and unpaid, whatever their payment.
        let mut settled = Settlement::default();
        let mut fees = 0;
        for state in SessionState::ALL {
            for method in PaymentMethod::ALL {
                for status in PaymentStatus::ALL {
                    settled
                        .add(
                            "CNY",
                            state.as_str(),
                            method.as_str(),
                            status.as_str(),
                            2,
                            100,
                        )
                        .unwrap();
                    if matches!(state, SessionState::ClosedPaid | SessionState::ClosedUnpaid) {
                        fees += 100;
                    }
                }
            }
        }
        let s = &settled;
        assert_eq!(
            s.revenue_minor + s.arrears_minor + s.barrier_minor + s.pending_minor,
            fees
        );

        // A gateway charge not yet answered is pending, neither revenue nor barrier.
        let park = car_park();
        let ann = DriverId::parse("ann").unwrap();
        let mut waiting = ParkingSession::enter(
            SessionId::of_report(&park.id, 1),
            &park,
            read(PlateColor::Blue, "", at(0)),
            None,
            false,
        );
        waiting
            .exit(at(90), Some((ann, PaymentMethod::Gateway)))
            .unwrap();
        assert!(waiting.is_due());
        let zone = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let day = "2026-12-01".parse().unwrap();
        let settled = Settlement::of_day(day, [(&waiting, &zone)], []).unwrap();
        assert_eq!(
            (
                settled.sessions_unpaid,
                settled.pending_minor,
                settled.barrier_minor
            ),
            (1, 1000, 0)
        );
    }

    #[test]
    fn plates_are_masked_for_others_and_forgotten_after_retention() {
        let park = car_park();
        let ann = DriverId::parse("ann").unwrap();
        let bob = DriverId::parse("bob").unwrap();
        let mut s = ParkingSession::enter(
            SessionId::of_report(&park.id, 1),
            &park,
            read(PlateColor::Blue, "", at(0)),
            None,
            false,
        );
        s.exit(at(90), Some((ann.clone(), PaymentMethod::Wallet)))
            .unwrap();
        assert_eq!(s.plate_for(&Viewer::Driver(&ann)), "鲁B12345");
        assert_eq!(s.plate_for(&Viewer::Operator(&park.operator)), "鲁B12345");
        assert_eq!(s.plate_for(&Viewer::Driver(&bob)), "*****45");
        assert!(
            !s.pseudonymise(at(1000)),
            "a charge still due keeps its plate"
        );
        s.paid("r").unwrap();
        assert!(!s.pseudonymise(at(90)), "not before the cutoff");
        assert!(s.pseudonymise(at(1000)));
        assert_eq!(s.plate_for(&Viewer::Driver(&ann)), "");
    }
}
