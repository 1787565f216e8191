//! The car park as a replicated aggregate: its registration and its live counts, one
//! version for both, stored as two parts so a report rewrites only the live counts.
//!
//! Formats: 0 is the bare JSON of `domain::CarPark` / `domain::Live` that citypark
//! wrote before records carried a format; 1 is the same JSON behind a `1:` prefix.
//! A later format that changes the JSON's shape migrates 0 and 1 in `decode`.

use std::sync::Arc;

use super::table::{Aggregate, DecodeError, Stored, encode};
use crate::{
    domain::{CarParkState, RegionId},
    engine::{Engine, Replica},
};

/// The part index of the registration.
pub const REGISTRATION: usize = 0;
/// The part index of the live counts.
pub const LIVE: usize = 1;

impl Aggregate for CarParkState {
    const KIND: &'static str = "car_park";
    const FORMAT: u32 = 1;
    const VERSIONS: &'static str = "versions";
    const PARTS: &'static [&'static str] = &["parks", "live"];

    fn region(&self) -> &RegionId {
        &self.car_park.region
    }

    fn encode_part(&self, part: usize) -> String {
        match part {
            REGISTRATION => encode(Self::FORMAT, &*self.car_park),
            _ => encode(Self::FORMAT, &self.live),
        }
    }

    fn decode(parts: &[Option<Stored<'_>>], base: Option<&Self>) -> Result<Self, DecodeError> {
        let car_park = match (parts.get(REGISTRATION).copied().flatten(), base) {
            (Some(stored), _) => Arc::new(stored.json(Self::FORMAT)?),
            (None, Some(base)) => base.car_park.clone(),
            (None, None) => return Err(DecodeError::MissingBase),
        };
        let live = match (parts.get(LIVE).copied().flatten(), base) {
            (Some(stored), _) => stored.json(Self::FORMAT)?,
            (None, Some(base)) => base.live.clone(),
            (None, None) => return Err(DecodeError::MissingBase),
        };
        Ok(Self { car_park, live })
    }

    fn replica(engine: &Engine) -> &dyn Replica<Self> {
        engine
    }
}
