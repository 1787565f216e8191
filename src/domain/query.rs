//! The nearest-available query and the filter every candidate passes through.

use super::{
    CarPark, CarParkKind, CarParkStatus, Error, LatLng, Live, Radius, SpaceCategory, Stay,
    Timestamp,
};

/// A validated nearest-available query.
#[derive(Debug, Clone, PartialEq)]
pub struct NearbyQuery {
    pub center: LatLng,
    pub radius: Radius,
    pub limit: usize,
    pub category: SpaceCategory,
    pub min_available: u32,
    /// Empty means every kind.
    pub kinds: Vec<CarParkKind>,
    pub open_now: bool,
    pub stay: Option<Stay>,
    pub max_price: Option<i64>,
    pub include_stale: bool,
    pub include_no_data: bool,
    /// When the driver arrives: each result carries its forecast then.
    pub arrival: Option<Arrival>,
}

/// A driver's arrival: when, and how likely a space must be then for a car park to
/// be shown (0 shows every one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    pub at: Timestamp,
    pub min_probability: f32,
}

impl Arrival {
    /// How far ahead a forecast may be asked for: past a week, it is the weekly
    /// profile alone, which the caller can read as well as citypark.
    pub const MAX_AHEAD: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);
    /// How far in the past a time may be and count as now (clients' clocks drift).
    pub const PAST_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

    /// A time to forecast, checked against `now`: a little in the past counts as now.
    pub fn time(at: Timestamp, now: Timestamp, field: &str) -> Result<Timestamp, Error> {
        if at < now - Self::PAST_SKEW {
            return Err(Error::invalid(field, "must not be in the past"));
        }
        if at > now + Self::MAX_AHEAD {
            return Err(Error::invalid(field, "must be at most 7 days ahead"));
        }
        Ok(at.max(now))
    }
}

/// Why a candidate made it into the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub status: CarParkStatus,
    /// Available spaces of the queried category.
    pub available: u32,
    /// Price of the stay, when one was given.
    pub price: Option<i64>,
}

impl NearbyQuery {
    /// Largest radius, in metres.
    pub const MAX_RADIUS_M: f64 = 50_000.0;
    /// Radius when none is given.
    pub const DEFAULT_RADIUS_M: f64 = 2_000.0;
    /// Most results.
    pub const MAX_LIMIT: usize = 100;
    /// Results when no limit is given.
    pub const DEFAULT_LIMIT: usize = 10;

    /// Checks the limits that need more than one field (a price cap needs a stay).
    pub fn validated(self) -> Result<Self, Error> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(Error::invalid(
                "limit",
                format!("must be 1 to {}", Self::MAX_LIMIT),
            ));
        }
        if self.max_price.is_some() && self.stay.is_none() {
            return Err(Error::invalid("max_price_minor", "needs a stay to price"));
        }
        if self.max_price.is_some_and(|p| p < 0) {
            return Err(Error::invalid("max_price_minor", "must not be negative"));
        }
        Ok(self)
    }

    /// Whether a car park answers this query at `now`, and with what numbers.
    pub fn admits(&self, car_park: &CarPark, live: &Live, now: Timestamp) -> Option<Admitted> {
        if car_park.capacity.of(self.category) == 0 {
            return None;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&car_park.kind) {
            return None;
        }
        let status = live.status(car_park, now);
        if status == CarParkStatus::Closed && self.open_now {
            return None;
        }
        // A closed car park is shown with the same care for its numbers as an open one:
        // never-reported or stale numbers only when asked for.
        let shown = match live.data_status(car_park, now) {
            CarParkStatus::Stale => self.include_stale,
            CarParkStatus::NoData => self.include_no_data,
            CarParkStatus::Open | CarParkStatus::Closed => true,
        };
        if !shown {
            return None;
        }
        let available = live.available(self.category);
        if available < self.min_available {
            return None;
        }
        let price = self.stay.map(|stay| car_park.tariff.price(&stay));
        if let (Some(price), Some(max)) = (price, self.max_price)
            && price > max
        {
            return None;
        }
        Some(Admitted {
            status,
            available,
            price,
        })
    }
}
