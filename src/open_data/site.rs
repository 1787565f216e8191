//! One car park as every open-data format sees it: its static data and, only when its
//! numbers are live, its realtime numbers. Each format renders from this, so that
//! "stale numbers are not published" is decided once.

use std::sync::Arc;

use crate::domain::{Availability, CarPark, CarParkKind, CarParkStatus, SpaceCategory, Timestamp};

/// A car park's published view.
#[derive(Debug, Clone)]
pub struct Site {
    pub car_park: Arc<CarPark>,
    pub status: CarParkStatus,
    /// Spaces of every category.
    pub capacity: u32,
    /// `None` when the numbers are not live (STALE, NO_DATA): formats then omit every
    /// realtime field, as ParkAPI v3 does, rather than publish old numbers as current.
    pub realtime: Option<Realtime>,
}

/// The live numbers.
#[derive(Debug, Clone, Copy)]
pub struct Realtime {
    /// Available spaces of every category: free minus those held for reservations.
    pub available: u32,
    pub observed_at: Timestamp,
    /// Open now (CLOSED: outside its hours or closed by its operator).
    pub open: bool,
}

impl Site {
    pub fn new(car_park: Arc<CarPark>, availability: &Availability) -> Self {
        let live = matches!(
            availability.status,
            CarParkStatus::Open | CarParkStatus::Closed
        );
        let realtime = match (live, availability.observed_at) {
            (true, Some(observed_at)) => Some(Realtime {
                available: availability.categories.iter().map(|c| c.available).sum(),
                observed_at,
                open: availability.status == CarParkStatus::Open,
            }),
            _ => None,
        };
        Self {
            capacity: car_park.capacity.total(),
            status: availability.status,
            car_park,
            realtime,
        }
    }

    pub fn id(&self) -> &str {
        self.car_park.id.as_str()
    }

    pub fn lat(&self) -> f64 {
        self.car_park.location.lat()
    }

    pub fn lon(&self) -> f64 {
        self.car_park.location.lon()
    }

    pub fn kind(&self) -> CarParkKind {
        self.car_park.kind
    }

    /// Spaces of one category.
    pub fn capacity_of(&self, category: SpaceCategory) -> u32 {
        self.car_park.capacity.of(category)
    }
}

/// A timestamp as the formats write it: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
