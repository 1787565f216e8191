//! `GET /open-data/v1/datex2/parking-publication-light`: DATEX II v3 "Parking
//! Publication Light" in its JSON encoding: one `parkingSite` per car park, enums
//! wrapped as `{"value": …}`, and the publication header the model requires (`lang`,
//! `publicationTime`, `publicationCreator`).

use serde::Serialize;

use super::site::{Site, rfc3339};
use crate::domain::{CarParkKind, Timestamp};

/// Who publishes: the header's `publicationCreator`.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// ISO 3166-1 alpha-2.
    pub country: String,
    pub national_identifier: String,
}

#[derive(Serialize)]
struct Wrapped {
    value: &'static str,
}

#[derive(Serialize)]
struct Coordinate {
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocationAndDimension {
    coordinates_for_display: Coordinate,
    #[serde(skip_serializing_if = "Option::is_none")]
    road_name: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ParkingSite<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    #[serde(rename = "type")]
    kind: Wrapped,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_update: Option<String>,
    number_of_spaces: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_spaces: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_open_now: Option<bool>,
    temporary_closed: bool,
    location_and_dimension: LocationAndDimension,
}

/// The document up to the first site.
pub fn head(publisher: &Publisher, now: Timestamp) -> Vec<u8> {
    let header = serde_json::json!({
        "lang": "en",
        "publicationTime": rfc3339(now),
        "publicationCreator": {
            "country": publisher.country,
            "nationalIdentifier": publisher.national_identifier,
        },
        "name": "citypark parking sites",
    });
    let mut out = br#"{"_modelBaseVersion":"3","parkingPublicationLight":"#.to_vec();
    let header = serde_json::to_vec(&header).expect("a header serialises");
    // The header object, reopened to append the sites.
    out.extend_from_slice(&header[..header.len() - 1]);
    out.extend_from_slice(br#","parkingSite":["#);
    out
}

pub const TAIL: &[u8] = b"]}}";

pub fn write_site(out: &mut Vec<u8>, site: &Site) {
    let car_park = &site.car_park;
    let realtime = site.realtime;
    let site = ParkingSite {
        id: site.id(),
        kind: Wrapped {
            value: match site.kind() {
                // DATEX II Light has no value of its own for a garage below ground.
                CarParkKind::Garage | CarParkKind::UndergroundGarage => "carPark",
                CarParkKind::SurfaceLot => "offStreetParkingGround",
                CarParkKind::OnStreet => "onStreet",
                CarParkKind::SharedPrivate => "other",
            },
        },
        name: &car_park.name,
        last_update: realtime.map(|r| rfc3339(r.observed_at)),
        number_of_spaces: site.capacity,
        available_spaces: realtime.map(|r| r.available),
        is_open_now: realtime.map(|r| r.open),
        temporary_closed: car_park.closed,
        location_and_dimension: LocationAndDimension {
            coordinates_for_display: Coordinate {
                latitude: site.lat(),
                longitude: site.lon(),
            },
            road_name: (!car_park.address.is_empty()).then(|| car_park.address.clone()),
        },
    };
    serde_json::to_writer(out, &site).expect("a parking site serialises");
}
