//! A car park's reservation ledger as replicated aggregates: each reservation a record
//! of its own (its id names its car park, so its region), and per car park and UTC day
//! one record of slot counts. A change that takes or frees slots writes the reservation
//! and its days in one group (`Store::commit_group`), so no two writers can both take a
//! slot's last space, and every write is as small as one reservation.
//!
//! Formats: 1 is the JSON of `domain::Reservation`, and of `domain::SlotCounts`, behind
//! a `1:` prefix.

use super::table::{Aggregate, DecodeError, Stored, encode};
use crate::{
    domain::{RegionId, Reservation, SlotCounts},
    engine::{Engine, Replica},
};

/// A kind of one part, written whole by every change.
fn decode_whole<A: Aggregate + serde::de::DeserializeOwned>(
    parts: &[Option<Stored<'_>>],
    base: Option<&A>,
) -> Result<A, DecodeError> {
    match (parts.first().copied().flatten(), base) {
        (Some(stored), _) => stored.json(A::FORMAT),
        (None, Some(base)) => Ok(base.clone()),
        (None, None) => Err(DecodeError::MissingBase),
    }
}

impl Aggregate for Reservation {
    const KIND: &'static str = "reservation";
    const FORMAT: u32 = 1;
    const VERSIONS: &'static str = "reservation_versions";
    const PARTS: &'static [&'static str] = &["reservations"];

    fn region(&self) -> &RegionId {
        &self.region
    }

    fn encode_part(&self, _part: usize) -> String {
        encode(Self::FORMAT, self)
    }

    fn decode(parts: &[Option<Stored<'_>>], base: Option<&Self>) -> Result<Self, DecodeError> {
        decode_whole(parts, base)
    }

    fn replica(engine: &Engine) -> &dyn Replica<Self> {
        engine
    }
}

impl Aggregate for SlotCounts {
    const KIND: &'static str = "slot_counts";
    const FORMAT: u32 = 1;
    const VERSIONS: &'static str = "slot_count_versions";
    const PARTS: &'static [&'static str] = &["slot_counts"];

    fn region(&self) -> &RegionId {
        &self.region
    }

    fn encode_part(&self, _part: usize) -> String {
        encode(Self::FORMAT, self)
    }

    fn decode(parts: &[Option<Stored<'_>>], base: Option<&Self>) -> Result<Self, DecodeError> {
        decode_whole(parts, base)
    }

    fn replica(engine: &Engine) -> &dyn Replica<Self> {
        engine
    }
}
