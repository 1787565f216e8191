//! `GET /open-data/v1/car-parks.geojson`: a GeoJSON FeatureCollection (RFC 7946), one
//! Point feature per car park with its static data and, when live, its numbers.

use serde::Serialize;

use super::site::{Site, rfc3339};
use crate::domain::SpaceCategory;

#[derive(Serialize)]
struct Feature<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    geometry: Point,
    properties: Properties<'a>,
}

#[derive(Serialize)]
struct Point {
    #[serde(rename = "type")]
    kind: &'static str,
    /// Longitude first, as GeoJSON has it.
    coordinates: [f64; 2],
}

#[derive(Serialize)]
struct Properties<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    address: &'a str,
    region: &'a str,
    operator_id: &'a str,
    kind: &'static str,
    capacity: u32,
    /// Spaces per category, the categories it has only.
    capacity_by_category: ByCategory,
    /// open, closed, stale or no_data.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    observed_at: Option<String>,
}

#[derive(Serialize)]
struct ByCategory {
    #[serde(skip_serializing_if = "is_zero")]
    standard: u32,
    #[serde(skip_serializing_if = "is_zero")]
    ev_charging: u32,
    #[serde(skip_serializing_if = "is_zero")]
    accessible: u32,
    #[serde(skip_serializing_if = "is_zero")]
    motorcycle: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Writes one feature; `sites` are written between [`HEAD`] and [`TAIL`], comma-separated.
pub fn write_feature(out: &mut Vec<u8>, site: &Site) {
    let car_park = &site.car_park;
    let feature = Feature {
        kind: "Feature",
        id: site.id(),
        geometry: Point {
            kind: "Point",
            coordinates: [site.lon(), site.lat()],
        },
        properties: Properties {
            id: site.id(),
            name: &car_park.name,
            address: &car_park.address,
            region: car_park.region.as_str(),
            operator_id: car_park.operator.as_str(),
            kind: site.kind().name(),
            capacity: site.capacity,
            capacity_by_category: ByCategory {
                standard: site.capacity_of(SpaceCategory::Standard),
                ev_charging: site.capacity_of(SpaceCategory::EvCharging),
                accessible: site.capacity_of(SpaceCategory::Accessible),
                motorcycle: site.capacity_of(SpaceCategory::Motorcycle),
            },
            status: site.status.name(),
            available: site.realtime.map(|r| r.available),
            observed_at: site.realtime.map(|r| rfc3339(r.observed_at)),
        },
    };
    serde_json::to_writer(out, &feature).expect("a feature serialises");
}

pub const HEAD: &[u8] = br#"{"type":"FeatureCollection","features":["#;
pub const TAIL: &[u8] = b"]}";
