//! What a kept record is, per kind: its table, the columns its reads filter on, and
//! its body (the record itself, `<format>:<json>` as in the live store).

use serde::{Deserialize, Serialize};

use super::Value;
use crate::{
    domain::{
        Account, LedgerEntry, OperatorId, ParkingSession, RegionId, Reservation, SharedBooking,
        Timestamp,
    },
    store::table::{DecodeError, Stored, encode},
};

/// One kind of finished record in history.
pub trait Record: Sized + Send + Sync + Unpin + 'static {
    /// Its table.
    const TABLE: &'static str;
    /// The format bodies are written in; `from_body` reads it and every older one.
    const FORMAT: u32;
    /// Columns beside `id`, `at` and `body`, in `columns`' order.
    const COLUMNS: &'static [&'static str];
    /// The table's key: `id`, or `id, listed_at` where PostgreSQL partitions the table
    /// by the time (a record's time never changes, so it is unique by id all the same).
    const KEY: &'static str = "id";

    /// Unique within the kind: writing a record again replaces it (the hand-off of a
    /// record that changed after it was first written writes its last state).
    fn id(&self) -> String;
    /// The region whose live store held it.
    fn region(&self) -> RegionId;
    /// When it is listed at: lists are newest first by it, then by id. On PostgreSQL
    /// the month of it is the partition.
    fn at(&self) -> Timestamp;
    fn columns(&self) -> Vec<Value>;
    fn body(&self) -> String;
    fn from_body(body: &str) -> Result<Self, DecodeError>;

    /// The operator and local day whose kept settlement counts this record, if any:
    /// writing it reopens that day (a barrier offline for days reports its exits late).
    fn settles(&self) -> Option<(String, String)> {
        None
    }
}

fn ms(at: Option<Timestamp>) -> Value {
    Value::Int(at.map(|t| t.as_millisecond()))
}

/// A session that left, with the local day it left on (its car park's time zone), so
/// a settlement is one aggregate by day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedSession {
    pub session: ParkingSession,
    pub exit_day: Option<jiff::civil::Date>,
}

impl ClosedSession {
    /// When a session is listed at: its entry, or its exit when it has no entry.
    pub fn listed_at(s: &ParkingSession) -> Timestamp {
        s.entry_time
            .or(s.exit_time)
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

impl Record for ClosedSession {
    fn settles(&self) -> Option<(String, String)> {
        let day = self.exit_day?;
        Some((self.session.operator.to_string(), day.to_string()))
    }

    const TABLE: &'static str = "sessions";
    const FORMAT: u32 = 1;
    const KEY: &'static str = "id, listed_at";
    const COLUMNS: &'static [&'static str] = &[
        "car_park",
        "operator",
        "driver",
        "state",
        "exit_at",
        "exit_day",
        "fee_minor",
        "currency",
        "payment_method",
        "payment_status",
        "attempts",
        "receipt_id",
        "plate_kept",
        "plate_masked",
    ];

    fn id(&self) -> String {
        self.session.id.to_string()
    }

    fn region(&self) -> RegionId {
        self.session.region.clone()
    }

    fn at(&self) -> Timestamp {
        Self::listed_at(&self.session)
    }

    fn columns(&self) -> Vec<Value> {
        let s = &self.session;
        vec![
            Value::text(s.id.car_park().as_str()),
            Value::text(s.operator.as_str()),
            Value::Text(s.driver.as_ref().map(|d| d.to_string())),
            Value::text(s.state.as_str()),
            ms(s.exit_time),
            Value::Text(self.exit_day.map(|d| d.to_string())),
            Value::Int(Some(s.fee_minor)),
            Value::text(s.tariff.currency.as_str()),
            Value::text(s.payment.method.as_str()),
            Value::text(s.payment.status.as_str()),
            Value::Int(Some(i64::from(s.payment.attempts))),
            Value::text(s.payment.receipt_id.as_str()),
            Value::Int(Some(i64::from(s.plate.is_some()))),
            Value::Text(s.plate.as_ref().map(|p| p.masked())),
        ]
    }

    fn body(&self) -> String {
        encode(Self::FORMAT, self)
    }

    fn from_body(body: &str) -> Result<Self, DecodeError> {
        Stored::parse(body)?.json(Self::FORMAT)
    }
}

/// A finished reservation, with its car park's operator (who may list it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptReservation {
    pub reservation: Reservation,
    pub operator: Option<OperatorId>,
}

impl Record for KeptReservation {
    const TABLE: &'static str = "reservations";
    const FORMAT: u32 = 1;
    const COLUMNS: &'static [&'static str] = &["car_park", "operator", "driver", "state"];

    fn id(&self) -> String {
        self.reservation.id.to_string()
    }

    fn region(&self) -> RegionId {
        self.reservation.region.clone()
    }

    fn at(&self) -> Timestamp {
        self.reservation.created_at
    }

    fn columns(&self) -> Vec<Value> {
        let r = &self.reservation;
        vec![
            Value::text(r.car_park.as_str()),
            Value::Text(self.operator.as_ref().map(|o| o.to_string())),
            Value::text(r.driver.as_str()),
            Value::text(r.state.name()),
        ]
    }

    fn body(&self) -> String {
        encode(Self::FORMAT, self)
    }

    fn from_body(body: &str) -> Result<Self, DecodeError> {
        Stored::parse(body)?.json(Self::FORMAT)
    }
}

impl Record for SharedBooking {
    const TABLE: &'static str = "bookings";
    const FORMAT: u32 = 1;
    const COLUMNS: &'static [&'static str] = &["offer", "host", "driver", "state"];

    fn id(&self) -> String {
        self.id.to_string()
    }

    fn region(&self) -> RegionId {
        self.region.clone()
    }

    fn at(&self) -> Timestamp {
        self.created_at
    }

    fn columns(&self) -> Vec<Value> {
        vec![
            Value::text(self.offer.as_str()),
            Value::text(self.host.as_str()),
            Value::text(self.driver.as_str()),
            Value::text(self.state.name()),
        ]
    }

    fn body(&self) -> String {
        encode(Self::FORMAT, self)
    }

    fn from_body(body: &str) -> Result<Self, DecodeError> {
        Stored::parse(body)?.json(Self::FORMAT)
    }
}

/// A ledger entry past the hot window (its wallet's balance stays live).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeptEntry(pub LedgerEntry);

impl Record for KeptEntry {
    const TABLE: &'static str = "ledger_entries";
    const FORMAT: u32 = 1;
    const COLUMNS: &'static [&'static str] =
        &["driver", "kind", "operator", "currency", "amount_minor"];

    fn id(&self) -> String {
        self.0.id.clone()
    }

    fn region(&self) -> RegionId {
        self.0.region.clone()
    }

    fn at(&self) -> Timestamp {
        self.0.at
    }

    fn columns(&self) -> Vec<Value> {
        let e = &self.0;
        // The operator whose revenue the entry moves, if any (refunds and charges), for
        // the operator's settlement.
        let operator = [&e.from, &e.to].into_iter().find_map(|a| match a {
            Account::Revenue(o) => Some(o.to_string()),
            _ => None,
        });
        vec![
            Value::text(e.driver.as_str()),
            Value::text(e.kind.as_str()),
            Value::Text(operator),
            Value::text(e.currency.as_str()),
            Value::Int(Some(e.amount_minor)),
        ]
    }

    fn body(&self) -> String {
        encode(Self::FORMAT, &self.0)
    }

    fn from_body(body: &str) -> Result<Self, DecodeError> {
        Stored::parse(body)?.json(Self::FORMAT).map(KeptEntry)
    }
}
