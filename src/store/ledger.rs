//! A car park's reservation ledger as a replicated aggregate: one record per car park
//! (its id is the car park's), so every reservation change of a car park is one
//! compare-and-set of it, and no two writers can both take a slot's last space.
//!
//! Formats: 1 is the JSON of `domain::Ledger` behind a `1:` prefix.

use super::table::{Aggregate, DecodeError, Stored, encode};
use crate::{
    domain::{Ledger, RegionId},
    engine::{Engine, Replica},
};

impl Aggregate for Ledger {
    const KIND: &'static str = "ledger";
    const FORMAT: u32 = 1;
    const VERSIONS: &'static str = "ledger_versions";
    const PARTS: &'static [&'static str] = &["ledgers"];

    fn region(&self) -> &RegionId {
        &self.region
    }

    fn encode_part(&self, _part: usize) -> String {
        encode(Self::FORMAT, self)
    }

    fn decode(parts: &[Option<Stored<'_>>], base: Option<&Self>) -> Result<Self, DecodeError> {
        match (parts.first().copied().flatten(), base) {
            (Some(stored), _) => stored.json(Self::FORMAT),
            (None, Some(base)) => Ok(base.clone()),
            (None, None) => Err(DecodeError::MissingBase),
        }
    }

    fn replica(engine: &Engine) -> &dyn Replica<Self> {
        engine
    }
}
