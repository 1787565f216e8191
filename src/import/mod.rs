//! Open parking data in: ParkAPI city GeoJSON, ParkAPI v3 parking sites and FIWARE
//! NGSI `OffStreetParking` entities, mapped to car parks for the Registry by pure
//! functions.
//!
//! Parsing decides only what the file says: each record becomes a `pb::CarPark` with
//! the fields an import owns (id, region, name, address, location, kind, capacity, time
//! zone, and the report interval and maximum height when given), or is listed as
//! skipped with the reason. A capacity or a position the source lacks is never guessed.
//! Records are checked with the domain's own rules (`CarPark::validated`, `Capacity`,
//! `LatLng`, `CarParkId`), so a dry run lists what the server would refuse; ownership
//! and whether an id is free stay the server's to decide. `citypark import` (the
//! binary) sends what this maps, and [`changes`] and [`merged`] tell it what an update
//! changes and keep what the operator set by other means (tariff, opening hours,
//! reservation policy).

mod ngsi;
mod parkapi_geojson;
mod parkapi_v3;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::domain::{
    Capacity, CarPark, CarParkId, CarParkKind, Error, LatLng, OpeningHours, OperatorId, RegionId,
    SpaceCategory, Tariff, TimeZoneName, Timestamp,
};
use crate::pb;

/// A file format the import reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ParkAPI (v1/v2) city GeoJSON: `park_api/cities/<City>.geojson` of
    /// offenesdresden/ParkAPI.
    ParkApiGeojson,
    /// ParkAPI v3 parking sites: the public API's `GET /v3/parking-sites` answer
    /// (`{"items": [...]}`), the push API's input, an array or one site.
    ParkApiV3,
    /// FIWARE `OffStreetParking` entities, NGSI-v2 or NGSI-LD, key-values or
    /// normalized (detected per entity): one entity, an array, or NGSI-LD GeoJSON.
    Ngsi,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 3] = [Self::ParkApiGeojson, Self::ParkApiV3, Self::Ngsi];

    /// The one name, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ParkApiGeojson => "parkapi-geojson",
            Self::ParkApiV3 => "parkapi-v3",
            Self::Ngsi => "ngsi",
        }
    }

    /// The format of a [`Self::name`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What an import adds to every record: none of the sources says it.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The region every record goes to.
    pub region: RegionId,
    /// The region's time zone; none of the formats carries one.
    pub time_zone: TimeZoneName,
    /// The kind of a record whose source gives none (or one that names no kind
    /// citypark knows, such as ParkAPI v3's `OTHER`).
    pub default_kind: CarParkKind,
    /// Put in front of every id, to keep sources apart whose ids could collide (ids are
    /// unique in a whole deployment); empty by default.
    pub id_prefix: String,
    /// How often the operator will report; `None` leaves the server's default on new
    /// car parks and the existing interval on others.
    pub report_interval_seconds: Option<u32>,
}

impl ImportOptions {
    /// Options with the default kind `surface_lot`, no id prefix and no report interval.
    pub fn new(region: RegionId, time_zone: TimeZoneName) -> Self {
        Self {
            region,
            time_zone,
            default_kind: CarParkKind::SurfaceLot,
            id_prefix: String::new(),
            report_interval_seconds: None,
        }
    }
}

/// A file read: the car parks it maps to, in file order, and the records skipped.
#[derive(Debug, Default)]
pub struct Parsed {
    pub car_parks: Vec<pb::CarPark>,
    pub skipped: Vec<Skipped>,
    /// How many of `car_parks` got the default kind because the source gave none.
    pub kind_defaulted: usize,
}

/// A record of the file that is not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The record as the file names it: its id, or its name, or its position
    /// (`feature #3`) when it has neither.
    pub source_ref: String,
    pub reason: String,
    /// The id the record would have had, where the file names it (a source id, or,
    /// in formats whose ids are made of names, a name): a car park of that id is still
    /// in the file (`import --prune` keeps it).
    pub id: Option<String>,
}

/// Why a whole file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not {format}: {why}")]
    Shape { format: &'static str, why: String },
}

/// Reads `bytes` as `format`: every record mapped to a car park of
/// `options.region`, or skipped with its reason.
pub fn parse(format: Format, bytes: &[u8], options: &ImportOptions) -> Result<Parsed, ImportError> {
    let root: Value = serde_json::from_slice(bytes)?;
    let lots = match format {
        Format::ParkApiGeojson => parkapi_geojson::lots(&root)?,
        Format::ParkApiV3 => parkapi_v3::lots(&root)?,
        Format::Ngsi => ngsi::lots(&root)?,
    };
    let mut parsed = collect(lots, options);
    // ParkAPI city files have no ids: their ids are made of names.
    let named = format == Format::ParkApiGeojson;
    for s in &mut parsed.skipped {
        if !is_position(&s.source_ref) {
            let from = match named {
                true => LotId::Name,
                false => LotId::Source(s.source_ref.clone()),
            };
            s.id = id_of(&from, &s.source_ref, options).ok();
        }
    }
    Ok(parsed)
}

/// Where a record's id comes from.
#[derive(Debug, Clone, PartialEq)]
enum LotId {
    /// The source's own id, as written (sanitised into the id charset).
    Source(String),
    /// The source has none: a slug of the name, after the region.
    Name,
}

/// One record as a parser read it, before the common rules (ids, duplicates,
/// validation) make a car park of it.
#[derive(Debug, Clone, PartialEq)]
struct Lot {
    source_ref: String,
    id: LotId,
    name: String,
    address: String,
    lat: f64,
    lon: f64,
    /// `None`: the source names no kind citypark knows.
    kind: Option<CarParkKind>,
    capacity: Vec<(SpaceCategory, i64)>,
    max_height_cm: Option<i64>,
    /// Another key that marks two records as one lot (ParkAPI's `aux`), as
    /// "aux 296"; a later record with the same key is a duplicate.
    same_as: Option<String>,
}

/// A record skipped for `reason`.
fn skipped(source_ref: impl Into<String>, reason: impl Into<String>) -> Skipped {
    Skipped {
        source_ref: source_ref.into(),
        reason: reason.into(),
        id: None,
    }
}

/// What the parsers call a record in a [`position`].
const POSITIONS: [&str; 3] = ["feature", "item", "entity"];

/// How a record the file names neither by id nor by name is referred to: `feature #3`.
fn position(what: &str, index: usize) -> String {
    format!("{what} #{}", index + 1)
}

/// Whether `source_ref` is a [`position`], not a name the file gives.
fn is_position(source_ref: &str) -> bool {
    source_ref
        .split_once(" #")
        .is_some_and(|(what, n)| POSITIONS.contains(&what) && n.parse::<usize>().is_ok())
}

/// The common rules over the parsers' records, in file order: ids, the domain's
/// checks, then duplicates (the first record of an id is kept; later ones are listed,
/// never merged).
fn collect(lots: Vec<Result<Lot, Skipped>>, options: &ImportOptions) -> Parsed {
    let mut parsed = Parsed::default();
    let mut ids: HashSet<String> = HashSet::new();
    let mut keys: HashMap<String, String> = HashMap::new();
    for lot in lots {
        let lot = match lot {
            Ok(lot) => lot,
            Err(s) => {
                parsed.skipped.push(s);
                continue;
            }
        };
        let car_park = match car_park(&lot, options) {
            Ok(c) => c,
            Err(reason) => {
                parsed.skipped.push(skipped(lot.source_ref, reason));
                continue;
            }
        };
        if ids.contains(&car_park.id) {
            let reason = format!("duplicate of {} (the same id)", car_park.id);
            parsed.skipped.push(skipped(lot.source_ref, reason));
            continue;
        }
        if let Some(key) = &lot.same_as {
            if let Some(first) = keys.get(key) {
                let reason = format!("duplicate of {first} (the same {key})");
                parsed.skipped.push(skipped(lot.source_ref, reason));
                continue;
            }
            keys.insert(key.clone(), car_park.id.clone());
        }
        ids.insert(car_park.id.clone());
        if lot.kind.is_none() {
            parsed.kind_defaulted += 1;
        }
        parsed.car_parks.push(car_park);
    }
    parsed
}

/// The car park a record maps to, checked by the domain's rules, or why it cannot be
/// one.
fn car_park(lot: &Lot, options: &ImportOptions) -> Result<pb::CarPark, String> {
    let id = make_id(lot, options)?;
    let kind = lot.kind.unwrap_or(options.default_kind);
    let max_height_cm = match lot.max_height_cm {
        None => None,
        Some(h) if h > 0 && h <= i64::from(i32::MAX) => Some(h as u32),
        Some(h) => return Err(format!("maximum height {h} cm is not a height")),
    };
    // The domain's checks, on the record the server would build: what they refuse, the
    // server would refuse too. The operator is a placeholder; ownership is the server's.
    let checked = CarPark {
        id: CarParkId::parse(&id).map_err(|e| why("id", e))?,
        region: options.region.clone(),
        operator: OperatorId::parse("import").expect("a valid operator id"),
        name: lot.name.trim().to_owned(),
        address: lot.address.trim().to_owned(),
        location: LatLng::new(lot.lat, lot.lon).map_err(|e| why("", e))?,
        kind,
        capacity: Capacity::new(lot.capacity.iter().copied()).map_err(|e| why("capacity", e))?,
        time_zone: options.time_zone.clone(),
        opening_hours: OpeningHours::always(),
        closed: false,
        tariff: Tariff::default(),
        covered: false,
        max_height_cm,
        // The server stamps its own when it writes.
        modified_at: Timestamp::UNIX_EPOCH,
        report_interval: Duration::from_secs(u64::from(
            options
                .report_interval_seconds
                .unwrap_or(CarPark::DEFAULT_REPORT_INTERVAL.as_secs() as u32),
        )),
        reservation_policy: None,
    }
    .validated()
    .map_err(|e| why("", e))?;
    Ok(pb::CarPark {
        id: checked.id.to_string(),
        region: checked.region.to_string(),
        name: checked.name,
        address: checked.address,
        location: Some(pb::LatLng {
            latitude: checked.location.lat(),
            longitude: checked.location.lon(),
        }),
        kind: pb::CarParkKind::from(kind).into(),
        capacity: pb_capacity(&checked.capacity),
        time_zone: checked.time_zone.as_str().to_owned(),
        max_height_cm: checked.max_height_cm.map_or(0, |h| h as i32),
        report_interval_seconds: options.report_interval_seconds.map_or(0, |s| s as i32),
        ..Default::default()
    })
}

/// A domain error as a reason: `field: reason`, the field prefixed by `context`.
fn why(context: &str, error: Error) -> String {
    match error {
        Error::InvalidArgument { field, reason } => match (context, field.as_str()) {
            ("", "") => reason,
            (c, "") | ("", c) => format!("{c}: {reason}"),
            (c, f) if f.starts_with('[') => format!("{c}{f}: {reason}"),
            (c, f) => format!("{c}.{f}: {reason}"),
        },
        other => other.to_string(),
    }
}

/// Capacity in the API's shape: the categories with spaces, in category order (as the
/// server answers it, so two records compare equal).
fn pb_capacity(capacity: &Capacity) -> Vec<pb::CategoryCapacity> {
    SpaceCategory::ALL
        .into_iter()
        .filter(|c| capacity.of(*c) > 0)
        .map(|c| pb::CategoryCapacity {
            category: pb::SpaceCategory::from(c).into(),
            spaces: capacity.of(c) as i32,
        })
        .collect()
}

/// The id of a record: the prefix, then the source's id sanitised into the id
/// charset, or the region and a slug of the name when the source has none.
fn make_id(lot: &Lot, options: &ImportOptions) -> Result<String, String> {
    id_of(&lot.id, &lot.name, options)
}

/// The id of a record whose id comes `from` its source or its `name`.
fn id_of(from: &LotId, name: &str, options: &ImportOptions) -> Result<String, String> {
    let prefix = &options.id_prefix;
    match from {
        LotId::Source(raw) => {
            let id = format!("{prefix}{}", sanitise(raw));
            if raw.trim().is_empty() {
                return Err("its id is empty".to_owned());
            }
            // A source id is never cut: two long ids that differ only at the end
            // would become one.
            if id.len() > CarParkId::MAX_LEN {
                return Err(format!(
                    "id {id:?} is longer than {} characters",
                    CarParkId::MAX_LEN
                ));
            }
            Ok(id)
        }
        LotId::Name => {
            let head = format!("{prefix}{}-", options.region);
            let mut slug = slug(name);
            if slug.is_empty() {
                // A name of no Latin letters or digits: a stable hash of it instead.
                slug = format!(
                    "{:016x}",
                    xxhash_rust::xxh3::xxh3_64(name.trim().as_bytes())
                );
            }
            let room = CarParkId::MAX_LEN.saturating_sub(head.len());
            // The slug is ASCII, so any cut is a character boundary.
            let slug = slug[..slug.len().min(room)].trim_end_matches('-');
            if slug.is_empty() {
                return Err(format!(
                    "no room for a name after {head:?} in a {}-character id",
                    CarParkId::MAX_LEN
                ));
            }
            Ok(format!("{head}{slug}"))
        }
    }
}

/// A source id in the id charset (`A-Z a-z 0-9 . _ -`): every other character becomes
/// `-`, one for one, so ids that differ stay apart as far as they can (those that
/// become equal are caught as duplicates).
pub fn sanitise(raw: &str) -> String {
    raw.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A stable slug of a name: lower case, ä → ae, ö → oe, ü → ue, ß → ss and other
/// Latin letters without their accents, every run of other characters one `-`,
/// none at the ends. Empty when the name has no Latin letter or digit.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut gap = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        let folded = fold(c);
        if folded.is_empty() {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            out.push('-');
        }
        gap = false;
        out.push_str(folded);
    }
    out
}

/// A lower-case letter or digit in ASCII; empty for anything else.
fn fold(c: char) -> &'static str {
    const ASCII: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
    if c.is_ascii_alphanumeric() {
        let i = ASCII.find(c).expect("a lower-case ASCII letter or digit");
        return &ASCII[i..i + 1];
    }
    match c {
        'ä' | 'æ' => "ae",
        'ö' | 'œ' => "oe",
        'ü' => "ue",
        'ß' => "ss",
        'þ' => "th",
        'à' | 'á' | 'â' | 'ã' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'ç' | 'ć' | 'č' | 'ĉ' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ğ' | 'ģ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => "i",
        'ķ' => "k",
        'ł' | 'ľ' | 'ĺ' | 'ļ' => "l",
        'ñ' | 'ń' | 'ň' | 'ņ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ø' | 'ō' | 'ő' => "o",
        'ŕ' | 'ř' => "r",
        'ś' | 'š' | 'ş' | 'ș' => "s",
        'ť' | 'ţ' | 'ț' => "t",
        'ù' | 'ú' | 'û' | 'ū' | 'ů' | 'ű' | 'ų' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => "",
    }
}

/// The fields of `existing` an import of `imported` would change, by their API names;
/// empty when it changes nothing and needs no write. The report interval and the
/// maximum height count only when the import sets them.
pub fn changes(existing: &pb::CarPark, imported: &pb::CarPark) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("region", existing.region != imported.region);
    check("name", existing.name != imported.name);
    check("address", existing.address != imported.address);
    check("location", existing.location != imported.location);
    check("kind", existing.kind != imported.kind);
    check(
        "capacity",
        normalised(&existing.capacity) != normalised(&imported.capacity),
    );
    check("time_zone", existing.time_zone != imported.time_zone);
    check(
        "report_interval_seconds",
        imported.report_interval_seconds != 0
            && existing.report_interval_seconds != imported.report_interval_seconds,
    );
    check(
        "max_height_cm",
        imported.max_height_cm != 0 && existing.max_height_cm != imported.max_height_cm,
    );
    changed
}

/// Capacity as (category, spaces) pairs with spaces, in category order.
fn normalised(capacity: &[pb::CategoryCapacity]) -> Vec<(i32, i32)> {
    let mut pairs: Vec<(i32, i32)> = capacity
        .iter()
        .filter(|c| c.spaces != 0)
        .map(|c| (c.category, c.spaces))
        .collect();
    pairs.sort_unstable();
    pairs
}

/// What to upsert over `existing`: the imported fields, and everything else as it is
/// (tariff, opening hours, closed, covered, reservation policy; the report interval
/// and maximum height unless the import sets them). An upsert replaces the whole car
/// park, so an import must not wipe what the operator set by other means. The
/// operator is left empty: the server takes the caller's and refuses another's car
/// park.
pub fn merged(existing: &pb::CarPark, imported: &pb::CarPark) -> pb::CarPark {
    let mut next = existing.clone();
    next.operator_id = String::new();
    next.region.clone_from(&imported.region);
    next.name.clone_from(&imported.name);
    next.address.clone_from(&imported.address);
    next.location = imported.location;
    next.kind = imported.kind;
    next.capacity.clone_from(&imported.capacity);
    next.time_zone.clone_from(&imported.time_zone);
    if imported.report_interval_seconds != 0 {
        next.report_interval_seconds = imported.report_interval_seconds;
    }
    if imported.max_height_cm != 0 {
        next.max_height_cm = imported.max_height_cm;
    }
    next
}

/// A JSON number, or a string holding one (ParkAPI v3's push input sends `"lat":
/// "54.03005"`).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok().filter(|n: &f64| n.is_finite()),
        _ => None,
    }
}

/// A whole number of spaces, or why the value is not one.
fn whole(value: &Value) -> Result<i64, String> {
    let n = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| format!("{value} is not a whole number"))
}

/// A string value, if it is one.
fn text(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str)
}

/// A GeoJSON Point's (latitude, longitude), or why the geometry is not one.
fn point(geometry: &Value) -> Result<(f64, f64), String> {
    let kind = geometry.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "Point" {
        return Err(if kind.is_empty() {
            "no coordinates: the geometry is not GeoJSON".to_owned()
        } else {
            format!("no coordinates: the geometry is a {kind}, not a Point")
        });
    }
    let coordinates = geometry.get("coordinates").and_then(Value::as_array);
    match coordinates.map(|c| c.as_slice()) {
        // GeoJSON puts the longitude first.
        Some([lon, lat, ..]) => match (number(lat), number(lon)) {
            (Some(lat), Some(lon)) => Ok((lat, lon)),
            _ => Err("no coordinates: the Point's coordinates are not numbers".to_owned()),
        },
        _ => Err("no coordinates: the Point has no [longitude, latitude]".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn options(region: &str) -> ImportOptions {
        ImportOptions::new(
            RegionId::parse_place(region).unwrap(),
            TimeZoneName::parse("Europe/Berlin").unwrap(),
        )
    }

    pub(super) fn fixture(path: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The car park of `id` in `parsed`.
    pub(super) fn find<'a>(parsed: &'a Parsed, id: &str) -> &'a pb::CarPark {
        parsed
            .car_parks
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("{id} is not among {:?}", ids(parsed)))
    }

    pub(super) fn ids(parsed: &Parsed) -> Vec<&str> {
        parsed.car_parks.iter().map(|c| c.id.as_str()).collect()
    }

    /// (category name, spaces) of a car park.
    pub(super) fn spaces(c: &pb::CarPark) -> Vec<(&'static str, i32)> {
        c.capacity
            .iter()
            .map(|c| {
                let category = SpaceCategory::ALL[(c.category - 1) as usize];
                (category.name(), c.spaces)
            })
            .collect()
    }

    pub(super) fn reason_of<'a>(parsed: &'a Parsed, source_ref: &str) -> &'a str {
        &parsed
            .skipped
            .iter()
            .find(|s| s.source_ref == source_ref)
            .unwrap_or_else(|| panic!("{source_ref} is not skipped: {:?}", parsed.skipped))
            .reason
    }

    #[test]
    fn format_names_parse_back() {
        for f in Format::ALL {
            assert_eq!(Format::parse(f.name()), Some(f));
        }
        assert_eq!(Format::parse("geojson"), None);
    }

    #[test]
    fn slugs_are_stable_lower_case_ascii() {
        assert_eq!(slug("Centrum - Galerie"), "centrum-galerie");
        assert_eq!(slug("Centrum Galerie"), "centrum-galerie");
        assert_eq!(slug("Wöhrl / Florentinum"), "woehrl-florentinum");
        assert_eq!(slug("Straßburger Platz"), "strassburger-platz");
        assert_eq!(slug("ÜBERSEE-Parkhaus"), "uebersee-parkhaus");
        assert_eq!(slug("Parkhaus Opéra"), "parkhaus-opera");
        assert_eq!(slug("  Wiener Platz / Hbf.  "), "wiener-platz-hbf");
        assert_eq!(slug("P+R 12"), "p-r-12");
        assert_eq!(slug("停车场"), "");
        assert_eq!(slug(""), "");
    }

    #[test]
    fn ids_are_the_sources_or_a_slug_after_the_region() {
        let lot = |id: LotId, name: &str| Lot {
            source_ref: name.to_owned(),
            id,
            name: name.to_owned(),
            address: String::new(),
            lat: 51.0,
            lon: 13.7,
            kind: None,
            capacity: vec![(SpaceCategory::Standard, 10)],
            max_height_cm: None,
            same_as: None,
        };
        let mut o = options("dresden");
        let id = |o: &ImportOptions, l: Lot| make_id(&l, o);
        assert_eq!(
            id(&o, lot(LotId::Name, "Haus am Zwinger")).unwrap(),
            "dresden-haus-am-zwinger"
        );
        assert_eq!(
            id(&o, lot(LotId::Source("urn x/1".into()), "A")).unwrap(),
            "urn-x-1"
        );
        let hashed = id(&o, lot(LotId::Name, "停车场")).unwrap();
        assert!(
            hashed.starts_with("dresden-") && hashed.len() == 24,
            "{hashed}"
        );
        assert_eq!(
            hashed,
            id(&o, lot(LotId::Name, "停车场")).unwrap(),
            "stable"
        );
        let long = "Parkhaus ".repeat(20);
        let cut = id(&o, lot(LotId::Name, &long)).unwrap();
        assert_eq!(cut.len(), 64, "cut to fit: {cut}");
        // 8 characters of "dresden-" and 55 of the name: the cut falls after a '-'.
        let cut = id(&o, lot(LotId::Name, &format!("{} yz", "x".repeat(55)))).unwrap();
        assert_eq!(
            cut,
            format!("dresden-{}", "x".repeat(55)),
            "no trailing '-'"
        );
        assert!(
            id(&o, lot(LotId::Source("x".repeat(65)), "A"))
                .unwrap_err()
                .contains("longer than 64"),
            "a source id is never cut"
        );
        assert!(id(&o, lot(LotId::Source(" ".into()), "A")).is_err());
        o.id_prefix = "pa.".into();
        assert_eq!(id(&o, lot(LotId::Source("7".into()), "A")).unwrap(), "pa.7");
        assert_eq!(
            id(&o, lot(LotId::Name, "Prohlis")).unwrap(),
            "pa.dresden-prohlis"
        );
    }

    #[test]
    fn a_record_named_only_by_its_place_in_the_file_has_no_id() {
        assert!(super::is_position(&super::position("feature", 2)));
        assert!(!super::is_position("Parkhaus #2"));
        assert!(!super::is_position("Lot b"));
    }

    #[test]
    fn a_record_the_domain_refuses_is_skipped_with_its_reason() {
        let good = Lot {
            source_ref: "ok".into(),
            id: LotId::Name,
            name: "Ok".into(),
            address: String::new(),
            lat: 51.0,
            lon: 13.7,
            kind: Some(CarParkKind::Garage),
            capacity: vec![(SpaceCategory::Standard, 10)],
            max_height_cm: None,
            same_as: None,
        };
        let lots = vec![
            Ok(good.clone()),
            Ok(Lot {
                source_ref: "zero".into(),
                name: "Zero".into(),
                capacity: vec![(SpaceCategory::Standard, 0)],
                ..good.clone()
            }),
            Ok(Lot {
                source_ref: "long".into(),
                name: "x".repeat(201),
                ..good.clone()
            }),
            Ok(Lot {
                source_ref: "far".into(),
                name: "Far".into(),
                lat: 91.0,
                ..good.clone()
            }),
            Ok(Lot {
                source_ref: "tall".into(),
                name: "Tall".into(),
                max_height_cm: Some(2_500),
                ..good.clone()
            }),
            Ok(Lot {
                source_ref: "ok again".into(),
                ..good.clone()
            }),
        ];
        let parsed = collect(lots, &options("dresden"));
        assert_eq!(ids(&parsed), ["dresden-ok"]);
        assert_eq!(
            reason_of(&parsed, "zero"),
            "capacity: a car park needs at least one space"
        );
        assert_eq!(
            reason_of(&parsed, "long"),
            "name: is 201 characters; at most 200 are allowed"
        );
        assert!(reason_of(&parsed, "far").starts_with("latitude: 91"));
        assert_eq!(
            reason_of(&parsed, "tall"),
            "max_height_cm: must be at most 2000"
        );
        assert_eq!(
            reason_of(&parsed, "ok again"),
            "duplicate of dresden-ok (the same id)"
        );
    }

    #[test]
    fn changes_and_merges_touch_only_the_imported_fields() {
        let imported = pb::CarPark {
            id: "a".into(),
            region: "dresden".into(),
            name: "A".into(),
            location: Some(pb::LatLng {
                latitude: 51.0,
                longitude: 13.7,
            }),
            kind: pb::CarParkKind::Garage.into(),
            capacity: vec![pb::CategoryCapacity {
                category: pb::SpaceCategory::Standard.into(),
                spaces: 10,
            }],
            time_zone: "Europe/Berlin".into(),
            ..Default::default()
        };
        let existing = pb::CarPark {
            operator_id: "op-a".into(),
            tariff: Some(pb::Tariff {
                currency: "EUR".into(),
                hourly_rate_minor: 200,
                ..Default::default()
            }),
            report_interval_seconds: 300,
            max_height_cm: 210,
            covered: true,
            ..imported.clone()
        };
        assert!(
            changes(&existing, &imported).is_empty(),
            "nothing imported differs"
        );
        let moved = pb::CarPark {
            name: "A2".into(),
            capacity: vec![pb::CategoryCapacity {
                category: pb::SpaceCategory::Standard.into(),
                spaces: 12,
            }],
            max_height_cm: 200,
            ..imported.clone()
        };
        assert_eq!(
            changes(&existing, &moved),
            ["name", "capacity", "max_height_cm"]
        );
        let next = merged(&existing, &moved);
        assert_eq!((next.name.as_str(), next.max_height_cm), ("A2", 200));
        assert_eq!(next.capacity, moved.capacity);
        assert_eq!(next.tariff, existing.tariff, "the operator's tariff stays");
        assert_eq!(next.report_interval_seconds, 300, "not set by the import");
        assert!(next.covered);
        assert_eq!(next.operator_id, "", "the server takes the caller's");
        // Capacity compares as a set of categories with spaces.
        let reordered = pb::CarPark {
            capacity: vec![
                pb::CategoryCapacity {
                    category: pb::SpaceCategory::Accessible.into(),
                    spaces: 0,
                },
                pb::CategoryCapacity {
                    category: pb::SpaceCategory::Standard.into(),
                    spaces: 10,
                },
            ],
            ..imported.clone()
        };
        assert!(changes(&existing, &reordered).is_empty());
    }

    #[test]
    fn numbers_may_be_strings_and_spaces_whole() {
        use serde_json::json;
        assert_eq!(number(&json!("54.03005")), Some(54.03005));
        assert_eq!(number(&json!(5.1)), Some(5.1));
        assert_eq!(number(&json!("north")), None);
        assert_eq!(whole(&json!(158)), Ok(158));
        assert_eq!(whole(&json!(158.0)), Ok(158));
        assert_eq!(whole(&json!("12")), Ok(12));
        assert!(whole(&json!(1.5)).is_err());
        assert!(whole(&json!(null)).is_err());
        assert_eq!(
            point(&json!({"type": "Point", "coordinates": [13.7, 51.0]})),
            Ok((51.0, 13.7))
        );
        assert!(
            point(&json!({"type": "Polygon", "coordinates": []}))
                .unwrap_err()
                .contains("Polygon")
        );
    }
}
