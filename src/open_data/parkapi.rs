//! `GET /open-data/v1/parking-sites`: ParkAPI v3's public `parking-sites` list
//! (`{"items": [...], "total_count": n, "next_id", "next_path"}`, cursor paging by
//! `start` and `limit`), its realtime fields dropped when the numbers are not live,
//! as ParkAPI v3 drops them when they are stale.
//!
//! Where citypark has no such data it leaves ParkAPI's fields out (`created_at`,
//! `modified_at`, the rows of ParkAPI's own database: citypark does not keep when a
//! car park was registered). `static_data_updated_at` is the registration's last
//! change (`CarPark::modified_at`; the Unix epoch for a car park stored before
//! citypark kept it and unchanged since: the field is required). ParkAPI's
//! `id` is its database's integer; here it is a stable integer drawn from the car
//! park's id (53 bits of its SHA-256, so a JavaScript number holds it), and
//! `original_uid` is the id itself. `source_id` is 1: a deployment is one source.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::site::{Site, rfc3339};
use crate::domain::{CarParkKind, SpaceCategory};

/// Most items of one page (ParkAPI's own cap).
pub const MAX_LIMIT: usize = 1_000;

#[derive(Serialize)]
pub struct Item<'a> {
    id: u64,
    source_id: u32,
    original_uid: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    purpose: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    lat: f64,
    lon: f64,
    capacity: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_disabled: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_charging: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_height: Option<u32>,
    is_covered: bool,
    has_fee: bool,
    has_realtime_data: bool,
    static_data_updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_free_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_opening_status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_data_updated_at: Option<String>,
}

/// The integer ParkAPI consumers key sites by: stable across instances and restarts.
pub fn numeric_id(id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) >> 11
}

fn positive(n: u32) -> Option<u32> {
    (n > 0).then_some(n)
}

pub fn item(site: &Site) -> Item<'_> {
    let car_park = &site.car_park;
    let realtime = site.realtime;
    Item {
        id: numeric_id(site.id()),
        source_id: 1,
        original_uid: site.id(),
        name: &car_park.name,
        address: (!car_park.address.is_empty()).then_some(car_park.address.as_str()),
        purpose: "CAR",
        kind: match site.kind() {
            CarParkKind::Garage => "CAR_PARK",
            CarParkKind::UndergroundGarage => "UNDERGROUND",
            CarParkKind::SurfaceLot => "OFF_STREET_PARKING_GROUND",
            CarParkKind::OnStreet => "ON_STREET",
            CarParkKind::SharedPrivate => "OTHER",
        },
        lat: site.lat(),
        lon: site.lon(),
        capacity: site.capacity,
        capacity_disabled: positive(site.capacity_of(SpaceCategory::Accessible)),
        capacity_charging: positive(site.capacity_of(SpaceCategory::EvCharging)),
        max_height: car_park.max_height_cm,
        is_covered: car_park.covered,
        has_fee: car_park.tariff.hourly_rate > 0 || car_park.tariff.daily_cap > 0,
        has_realtime_data: realtime.is_some(),
        static_data_updated_at: rfc3339(car_park.modified_at),
        realtime_free_capacity: realtime.map(|r| r.available),
        realtime_capacity: realtime.map(|_| site.capacity),
        realtime_opening_status: realtime.map(|r| if r.open { "OPEN" } else { "CLOSED" }),
        realtime_data_updated_at: realtime.map(|r| rfc3339(r.observed_at)),
    }
}

#[derive(Serialize)]
pub struct Page<'a> {
    pub items: Vec<Item<'a>>,
    pub total_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_are_stable_and_fit_a_javascript_number() {
        assert_eq!(numeric_id("qd-000001"), numeric_id("qd-000001"));
        assert_ne!(numeric_id("qd-000001"), numeric_id("qd-000002"));
        assert!(numeric_id("qd-000001") < 1 << 53);
    }
}
