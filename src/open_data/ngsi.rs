//! `GET /open-data/v1/ngsi-ld/OffStreetParking`: FIWARE's `OffStreetParking` smart
//! data model as NGSI-LD entities, normalised (`{"type": "Property", "value": …}`) by
//! default or key-values with `?options=keyValues` (the form the model's JSON Schema
//! describes), each with its `@context`.

use serde_json::{Map, Value, json};

use super::site::{Site, rfc3339};
use crate::domain::CarParkKind;

/// The contexts every entity names: the smart data models' and NGSI-LD's core.
pub const CONTEXT: [&str; 2] = [
    "https://smartdatamodels.org/context.jsonld",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
];

/// An entity's id: the URN NGSI-LD brokers expect.
pub fn entity_id(id: &str) -> String {
    format!("urn:ngsi-ld:OffStreetParking:{id}")
}

/// An almost full car park: at most this share of its spaces available.
const ALMOST_FULL: f64 = 0.1;

/// The entity in key-values form.
pub fn key_values(site: &Site) -> Map<String, Value> {
    let car_park = &site.car_park;
    let mut entity = Map::new();
    entity.insert("id".into(), entity_id(site.id()).into());
    entity.insert("type".into(), "OffStreetParking".into());
    entity.insert("name".into(), car_park.name.clone().into());
    if !car_park.address.is_empty() {
        entity.insert(
            "address".into(),
            json!({ "streetAddress": car_park.address }),
        );
    }
    entity.insert(
        "location".into(),
        json!({ "type": "Point", "coordinates": [site.lon(), site.lat()] }),
    );
    let layout = match site.kind() {
        CarParkKind::Garage => "parkingGarage",
        CarParkKind::UndergroundGarage => "underground",
        CarParkKind::SurfaceLot | CarParkKind::OnStreet => "parkingLot",
        CarParkKind::SharedPrivate => "private",
    };
    entity.insert("category".into(), json!(["public", layout]));
    entity.insert("allowedVehicleType".into(), json!(["car"]));
    entity.insert("dataProvider".into(), "citypark".into());
    // The model counts at least one spot; a car park has at least one space.
    entity.insert("totalSpotNumber".into(), site.capacity.into());
    if let Some(realtime) = site.realtime {
        entity.insert("availableSpotNumber".into(), realtime.available.into());
        let fill = if realtime.available == 0 {
            "full"
        } else if f64::from(realtime.available) <= f64::from(site.capacity) * ALMOST_FULL {
            "almostFull"
        } else {
            "spacesAvailable"
        };
        let opening = if realtime.open { "open" } else { "closed" };
        entity.insert("status".into(), json!([opening, fill]));
        entity.insert(
            "observationDateTime".into(),
            rfc3339(realtime.observed_at).into(),
        );
    }
    entity.insert("@context".into(), json!(CONTEXT));
    entity
}

/// The entity normalised: every attribute but `id`, `type` and `@context` as a
/// Property (`location` a GeoProperty), the live numbers with their `observedAt`.
pub fn normalized(site: &Site) -> Map<String, Value> {
    let observed = site.realtime.map(|r| rfc3339(r.observed_at));
    let mut entity = Map::new();
    for (name, value) in key_values(site) {
        let wrapped = match name.as_str() {
            "id" | "type" | "@context" => value,
            "observationDateTime" => continue,
            "location" => json!({ "type": "GeoProperty", "value": value }),
            "availableSpotNumber" | "status" => match &observed {
                Some(at) => json!({ "type": "Property", "value": value, "observedAt": at }),
                None => json!({ "type": "Property", "value": value }),
            },
            _ => json!({ "type": "Property", "value": value }),
        };
        entity.insert(name, wrapped);
    }
    entity
}
