//! Conversions between protobuf messages and domain values; validation errors name
//! the field as the client wrote it.

use std::time::Duration;

use crate::{
    domain::{
        Arrival, Availability, BayId, BoundingBox, CATEGORY_COUNT, Capacity, CarPark, CarParkId,
        CarParkKind, CarParkStatus, Error, LatLng, NearbyQuery, OpeningHours, OpeningPeriod,
        OperatorId, PlateColor, Prediction, Radius, RegionId, Report, ReportBody,
        ReservationPolicy, Result, SpaceCategory, Stay, Tariff, TimeZoneName, Timestamp,
    },
    engine::Nearby,
    pb,
};

/// A required message field, or an error naming it.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T> {
    value.ok_or_else(|| Error::invalid(field, "is required"))
}

pub fn car_park_id(value: &str, field: &str) -> Result<CarParkId> {
    CarParkId::parse(value).map_err(|e| e.in_field(field))
}

/// A list's page size: 0 means `default`, else 1 to `max`.
pub fn page_size(value: i32, default: usize, max: usize) -> Result<usize> {
    match value {
        0 => Ok(default),
        n if n > 0 && n as usize <= max => Ok(n as usize),
        _ => Err(Error::invalid("page_size", format!("must be 1 to {max}"))),
    }
}

/// Longest idempotency key, in characters.
const MAX_KEY_CHARS: usize = 64;

/// A client's idempotency key: 1 to 64 printable characters without spaces.
pub fn idempotency_key(key: &str) -> Result<String> {
    if key.is_empty()
        || key.chars().count() > MAX_KEY_CHARS
        || key.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::invalid(
            "idempotency_key",
            format!("must be 1 to {MAX_KEY_CHARS} printable characters without spaces"),
        ));
    }
    Ok(key.to_owned())
}

/// A page token as clients see it: opaque (the position, hex-encoded) and
/// tamper-evident (a checksum of it), so a garbage or edited token is refused rather
/// than read as a starting point. It hides nothing a caller could not list anyway.
pub fn page_token_out(position: Option<String>) -> String {
    position.map_or_else(String::new, |p| {
        let payload = hex::encode(p.as_bytes());
        format!("{payload}{}", token_check(&payload))
    })
}

/// The position a page token names, if it is one this API gave; `None` for none.
pub fn page_token_in(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token this API gave");
    let split = token.len().checked_sub(16).ok_or_else(bad)?;
    let (payload, check) = (token.get(..split).ok_or_else(bad)?, &token[split..]);
    if token_check(payload) != check {
        return Err(bad());
    }
    let bytes = hex::decode(payload).map_err(|_| bad())?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// 16 hex digits of SHA-256 over a token's payload.
fn token_check(payload: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("citypark page token 1:{payload}"));
    hex::encode(&digest[..8])
}

pub fn timestamp(value: &prost_types::Timestamp, field: &str) -> Result<Timestamp> {
    if !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Error::invalid(field, "nanos must be in [0, 999999999]"));
    }
    // google.protobuf.Timestamp's range: 0001-01-01 to 9999-12-31 (UTC); clients that
    // check it would refuse to read anything outside it back.
    if !(-62_135_596_800..=253_402_300_799).contains(&value.seconds) {
        return Err(Error::invalid(
            field,
            "is outside google.protobuf.Timestamp's range (years 1 to 9999)",
        ));
    }
    Timestamp::new(value.seconds, value.nanos).map_err(|_| Error::invalid(field, "is out of range"))
}

/// A duration that is not negative.
pub fn duration(value: prost_types::Duration, field: &str) -> Result<std::time::Duration> {
    if value.seconds < 0 || !(0..1_000_000_000).contains(&value.nanos) {
        return Err(Error::invalid(
            field,
            "must not be negative, with nanos in [0, 999999999]",
        ));
    }
    Ok(std::time::Duration::new(
        value.seconds as u64,
        value.nanos as u32,
    ))
}

/// One step of a car park's occupancy history.
pub fn pb_step(s: &crate::history::Step) -> pb::OccupancyBucket {
    let status = crate::domain::CarParkStatus::parse(&s.status)
        .map_or(pb::CarParkStatus::Unspecified, pb::CarParkStatus::from);
    pb::OccupancyBucket {
        start: Some(pb_timestamp(s.start)),
        min_free: s.min_free,
        max_free: s.max_free,
        last_free: s.last_free,
        capacity: s.capacity,
        status: status.into(),
        observed: s.observed,
    }
}

pub fn pb_timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

pub fn lat_lng(value: Option<&pb::LatLng>, field: &str) -> Result<LatLng> {
    let p = required(value, field)?;
    LatLng::new(p.latitude, p.longitude).map_err(|e| e.in_field(field))
}

pub fn pb_lat_lng(p: LatLng) -> pb::LatLng {
    pb::LatLng {
        latitude: p.lat(),
        longitude: p.lon(),
    }
}

// The enums map one to one, except that the API's UNSPECIFIED has no domain value. The
// impls are public, so API clients in this crate (the CLI, the demo) convert with them
// and name values by the domain's one name table.

impl From<SpaceCategory> for pb::SpaceCategory {
    fn from(c: SpaceCategory) -> Self {
        match c {
            SpaceCategory::Standard => Self::Standard,
            SpaceCategory::EvCharging => Self::EvCharging,
            SpaceCategory::Accessible => Self::Accessible,
            SpaceCategory::Motorcycle => Self::Motorcycle,
        }
    }
}

impl TryFrom<pb::SpaceCategory> for SpaceCategory {
    type Error = Error;

    fn try_from(c: pb::SpaceCategory) -> Result<Self> {
        match c {
            pb::SpaceCategory::Standard => Ok(Self::Standard),
            pb::SpaceCategory::EvCharging => Ok(Self::EvCharging),
            pb::SpaceCategory::Accessible => Ok(Self::Accessible),
            pb::SpaceCategory::Motorcycle => Ok(Self::Motorcycle),
            pb::SpaceCategory::Unspecified => Err(Error::invalid("", "must be set")),
        }
    }
}

impl From<CarParkKind> for pb::CarParkKind {
    fn from(k: CarParkKind) -> Self {
        match k {
            CarParkKind::Garage => Self::Garage,
            CarParkKind::SurfaceLot => Self::SurfaceLot,
            CarParkKind::OnStreet => Self::OnStreet,
            CarParkKind::SharedPrivate => Self::SharedPrivate,
            CarParkKind::UndergroundGarage => Self::UndergroundGarage,
        }
    }
}

impl TryFrom<pb::CarParkKind> for CarParkKind {
    type Error = Error;

    fn try_from(k: pb::CarParkKind) -> Result<Self> {
        match k {
            pb::CarParkKind::Garage => Ok(Self::Garage),
            pb::CarParkKind::SurfaceLot => Ok(Self::SurfaceLot),
            pb::CarParkKind::OnStreet => Ok(Self::OnStreet),
            pb::CarParkKind::SharedPrivate => Ok(Self::SharedPrivate),
            pb::CarParkKind::UndergroundGarage => Ok(Self::UndergroundGarage),
            pb::CarParkKind::Unspecified => Err(Error::invalid("", "must be set")),
        }
    }
}

impl From<CarParkStatus> for pb::CarParkStatus {
    fn from(s: CarParkStatus) -> Self {
        match s {
            CarParkStatus::Open => Self::Open,
            CarParkStatus::Closed => Self::Closed,
            CarParkStatus::Stale => Self::Stale,
            CarParkStatus::NoData => Self::NoData,
        }
    }
}

impl TryFrom<pb::CarParkStatus> for CarParkStatus {
    type Error = Error;

    fn try_from(s: pb::CarParkStatus) -> Result<Self> {
        match s {
            pb::CarParkStatus::Open => Ok(Self::Open),
            pb::CarParkStatus::Closed => Ok(Self::Closed),
            pb::CarParkStatus::Stale => Ok(Self::Stale),
            pb::CarParkStatus::NoData => Ok(Self::NoData),
            pb::CarParkStatus::Unspecified => Err(Error::invalid("", "must be set")),
        }
    }
}

/// A category where unspecified means STANDARD (queries).
pub fn query_category(value: i32, field: &str) -> Result<SpaceCategory> {
    match value {
        0 => Ok(SpaceCategory::Standard),
        c => category(c, field),
    }
}

/// A category that must be set.
pub fn category(value: i32, field: &str) -> Result<SpaceCategory> {
    match pb::SpaceCategory::try_from(value) {
        Ok(c) => SpaceCategory::try_from(c).map_err(|e| e.in_field(field)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not a space category"),
        )),
    }
}

/// A plate's colour; unspecified when none was read.
pub fn plate_color(value: i32, field: &str) -> Result<PlateColor> {
    use pb::PlateColor as P;
    Ok(match P::try_from(value) {
        Ok(P::Unspecified) => PlateColor::Unspecified,
        Ok(P::Blue) => PlateColor::Blue,
        Ok(P::Yellow) => PlateColor::Yellow,
        Ok(P::Green) => PlateColor::Green,
        Ok(P::White) => PlateColor::White,
        Ok(P::Black) => PlateColor::Black,
        Err(_) => {
            return Err(Error::invalid(
                field,
                format!("{value} is not a plate colour"),
            ));
        }
    })
}

/// A plate's colour for the API.
pub fn pb_plate_color(color: PlateColor) -> pb::PlateColor {
    use pb::PlateColor as P;
    match color {
        PlateColor::Unspecified => P::Unspecified,
        PlateColor::Blue => P::Blue,
        PlateColor::Yellow => P::Yellow,
        PlateColor::Green => P::Green,
        PlateColor::White => P::White,
        PlateColor::Black => P::Black,
    }
}

fn kind(value: i32, field: &str) -> Result<CarParkKind> {
    match pb::CarParkKind::try_from(value) {
        Ok(k) => CarParkKind::try_from(k).map_err(|e| e.in_field(field)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{value} is not a car park kind"),
        )),
    }
}

/// A car park from an upsert; an empty operator_id means the caller's.
pub fn car_park(p: pb::CarPark, caller: &OperatorId) -> Result<CarPark> {
    let f = |name: &str| format!("car_park.{name}");
    let operator = match p.operator_id.as_str() {
        "" => caller.clone(),
        other => OperatorId::parse(other).map_err(|e| e.in_field(&f("operator_id")))?,
    };
    let capacity = Capacity::new(
        p.capacity
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok((
                    category(c.category, &format!("car_park.capacity[{i}].category"))?,
                    i64::from(c.spaces),
                ))
            })
            .collect::<Result<Vec<_>>>()?,
    )
    .map_err(|e| e.in_field(&f("capacity")))?;
    let periods = p
        .opening_hours
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let day = u8::try_from(h.day)
                .ok()
                .filter(|d| (1..=7).contains(d))
                .unwrap_or(0);
            OpeningPeriod::new(day, i64::from(h.open_minute), i64::from(h.close_minute))
                .map_err(|e| e.in_field(&format!("car_park.opening_hours[{i}]")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tariff = match &p.tariff {
        Some(t) => Tariff::new(
            &t.currency,
            t.hourly_rate_minor,
            t.daily_cap_minor,
            i64::from(t.free_minutes),
        )
        .map_err(|e| e.in_field(&f("tariff")))?,
        None => Tariff::default(),
    };
    let interval = match p.report_interval_seconds {
        0 => CarPark::DEFAULT_REPORT_INTERVAL,
        s if s < 0 => {
            return Err(Error::invalid(
                f("report_interval_seconds"),
                "must not be negative",
            ));
        }
        s => Duration::from_secs(s as u64),
    };
    if p.max_height_cm < 0 {
        return Err(Error::invalid(f("max_height_cm"), "must not be negative"));
    }
    let reservation_policy = p
        .reservation_policy
        .as_ref()
        .map(|p| reservation_policy(p).map(Box::new))
        .transpose()
        .map_err(|e| e.in_field("car_park"))?;
    CarPark {
        id: car_park_id(&p.id, &f("id"))?,
        region: RegionId::parse_place(&p.region).map_err(|e| e.in_field(&f("region")))?,
        operator,
        name: p.name,
        address: p.address,
        location: lat_lng(p.location.as_ref(), &f("location"))?,
        kind: kind(p.kind, &f("kind"))?,
        capacity,
        time_zone: TimeZoneName::parse(&p.time_zone).map_err(|e| e.in_field(&f("time_zone")))?,
        opening_hours: OpeningHours::new(periods).map_err(|e| e.in_field(&f("opening_hours")))?,
        closed: p.closed,
        tariff,
        covered: p.covered,
        max_height_cm: (p.max_height_cm > 0).then_some(p.max_height_cm as u32),
        // The registry stamps it when it writes (`CarPark::replacing`).
        modified_at: Timestamp::UNIX_EPOCH,
        report_interval: interval,
        reservation_policy,
    }
    .validated()
    .map_err(|e| e.in_field("car_park"))
}

pub fn pb_car_park(c: &CarPark) -> pb::CarPark {
    pb::CarPark {
        id: c.id.to_string(),
        region: c.region.to_string(),
        operator_id: c.operator.to_string(),
        name: c.name.clone(),
        address: c.address.clone(),
        location: Some(pb_lat_lng(c.location)),
        kind: pb::CarParkKind::from(c.kind).into(),
        capacity: SpaceCategory::ALL
            .into_iter()
            .filter(|cat| c.capacity.of(*cat) > 0)
            .map(|cat| pb::CategoryCapacity {
                category: pb::SpaceCategory::from(cat).into(),
                spaces: c.capacity.of(cat) as i32,
            })
            .collect(),
        time_zone: c.time_zone.as_str().to_owned(),
        opening_hours: c
            .opening_hours
            .periods()
            .iter()
            .map(|p| pb::OpeningPeriod {
                day: i32::from(p.day),
                open_minute: i32::from(p.open_minute),
                close_minute: i32::from(p.close_minute),
            })
            .collect(),
        closed: c.closed,
        tariff: Some(pb::Tariff {
            currency: c.tariff.currency.clone(),
            hourly_rate_minor: c.tariff.hourly_rate,
            daily_cap_minor: c.tariff.daily_cap,
            free_minutes: c.tariff.free_minutes as i32,
            version: c.tariff.version,
        }),
        covered: c.covered,
        max_height_cm: c.max_height_cm.map_or(0, |h| h as i32),
        report_interval_seconds: c.report_interval.as_secs() as i32,
        reservation_policy: c.reservation_policy.as_deref().map(pb_reservation_policy),
        modified_at: (c.modified_at != Timestamp::UNIX_EPOCH).then(|| pb_timestamp(c.modified_at)),
    }
}

/// A reservation policy; errors name the field under `reservation_policy`.
fn reservation_policy(p: &pb::ReservationPolicy) -> Result<ReservationPolicy> {
    let mut quota = [0u32; CATEGORY_COUNT];
    for (i, q) in p.quota.iter().enumerate() {
        let field = format!("reservation_policy.quota[{i}]");
        let c = category(q.category, &format!("{field}.category"))?;
        if quota[c.index()] > 0 {
            return Err(Error::invalid(field, "names its category twice"));
        }
        quota[c.index()] = u32::try_from(q.spaces)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::invalid(format!("{field}.spaces"), "must be positive"))?;
    }
    let minutes = |v: i32, name: &str| {
        u32::try_from(v).map_err(|_| {
            Error::invalid(format!("reservation_policy.{name}"), "must not be negative")
        })
    };
    ReservationPolicy::new(
        quota,
        minutes(p.slot_minutes, "slot_minutes")?,
        minutes(p.max_window_minutes, "max_window_minutes")?,
        minutes(p.max_days_ahead, "max_days_ahead")?,
        minutes(p.no_show_grace_minutes, "no_show_grace_minutes")?,
        minutes(p.cancel_until_minutes, "cancel_until_minutes")?,
    )
}

fn pb_reservation_policy(p: &ReservationPolicy) -> pb::ReservationPolicy {
    pb::ReservationPolicy {
        quota: SpaceCategory::ALL
            .into_iter()
            .filter(|c| p.quota(*c) > 0)
            .map(|c| pb::CategoryCapacity {
                category: pb::SpaceCategory::from(c).into(),
                spaces: p.quota(c) as i32,
            })
            .collect(),
        slot_minutes: p.slot_minutes as i32,
        max_window_minutes: p.max_window_minutes as i32,
        max_days_ahead: p.max_days_ahead as i32,
        no_show_grace_minutes: p.no_show_grace_minutes as i32,
        cancel_until_minutes: p.cancel_until_minutes as i32,
    }
}

pub fn pb_availability(a: &Availability) -> pb::CarParkAvailability {
    pb::CarParkAvailability {
        car_park_id: a.car_park.to_string(),
        region: a.region.to_string(),
        status: pb::CarParkStatus::from(a.status).into(),
        categories: a
            .categories
            .iter()
            .map(|c| pb::CategoryAvailability {
                category: pb::SpaceCategory::from(c.category).into(),
                capacity: c.capacity as i32,
                free: c.free as i32,
                available: c.available as i32,
                held: c.held as i32,
            })
            .collect(),
        observed_at: a.observed_at.map(pb_timestamp),
        data_age_seconds: a.data_age.map(|d| d.as_secs() as i64),
        last_sequence: a.last_sequence,
        drift_count: a.drift_count,
    }
}

fn counts(list: &[pb::CategoryCount], field: &str) -> Result<Vec<(SpaceCategory, i64)>> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            Ok((
                category(c.category, &format!("{field}[{i}].category"))?,
                i64::from(c.count),
            ))
        })
        .collect()
}

/// A report; errors name fields relative to the report (`snapshot.free[0].count`).
pub fn report(r: pb::OccupancyReport) -> Result<Report> {
    use pb::occupancy_report::Body;
    let id = car_park_id(&r.car_park_id, "car_park_id")?;
    let observed_at = timestamp(
        required(r.observed_at.as_ref(), "observed_at")?,
        "observed_at",
    )?;
    let body = match required(r.body, "body")? {
        Body::Snapshot(s) => ReportBody::snapshot(counts(&s.free, "snapshot.free")?)
            .map_err(|e| e.in_field("snapshot.free"))?,
        Body::Delta(d) => ReportBody::delta(
            counts(&d.entries, "delta.entries")?,
            counts(&d.exits, "delta.exits")?,
            &d.plate,
            plate_color(d.plate_color, "delta.plate_color")?,
            &d.lane,
        )
        .map_err(|e| e.in_field("delta"))?,
        Body::Bay(b) => ReportBody::Bay {
            bay: BayId::parse(&b.bay_id).map_err(|e| e.in_field("bay.bay_id"))?,
            category: category(b.category, "bay.category")?,
            occupied: b.occupied,
        },
    };
    let report = Report::new(id, r.sequence, observed_at, body)?;
    if r.restart_sequence {
        report.restarting()
    } else {
        Ok(report)
    }
}

/// A nearby query with the documented defaults and caps.
pub fn nearby_query(r: pb::FindNearbyRequest) -> Result<NearbyQuery> {
    let center = lat_lng(r.location.as_ref(), "location")?;
    let radius_m = if r.radius_m == 0.0 {
        NearbyQuery::DEFAULT_RADIUS_M
    } else {
        r.radius_m
    };
    let radius =
        Radius::new(radius_m, NearbyQuery::MAX_RADIUS_M).map_err(|e| e.in_field("radius_m"))?;
    let limit = match r.limit {
        0 => NearbyQuery::DEFAULT_LIMIT,
        n if n < 0 => return Err(Error::invalid("limit", "must not be negative")),
        n => n as usize,
    };
    let category = query_category(r.category, "category")?;
    let min_available = match r.min_available {
        0 => 1,
        n if n < 0 => return Err(Error::invalid("min_available", "must not be negative")),
        n => n as u32,
    };
    let kinds = r
        .kinds
        .iter()
        .enumerate()
        .map(|(i, k)| kind(*k, &format!("kinds[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let stay = match &r.stay {
        Some(s) => {
            let start = timestamp(required(s.start.as_ref(), "stay.start")?, "stay.start")?;
            let end = timestamp(required(s.end.as_ref(), "stay.end")?, "stay.end")?;
            Some(Stay::new(start, end).map_err(|e| e.in_field("stay"))?)
        }
        None => None,
    };
    let min_probability = r.min_arrival_probability;
    let arrival = match &r.arrival_time {
        Some(t) => Some(Arrival {
            at: timestamp(t, "arrival_time")?,
            min_probability: min_probability as f32,
        }),
        None if min_probability != 0.0 => {
            return Err(Error::invalid(
                "min_arrival_probability",
                "needs an arrival_time to forecast",
            ));
        }
        None => None,
    };
    if !(0.0..=1.0).contains(&min_probability) {
        return Err(Error::invalid("min_arrival_probability", "must be 0 to 1"));
    }
    NearbyQuery {
        center,
        radius,
        limit,
        category,
        min_available,
        kinds,
        open_now: r.open_now,
        stay,
        max_price: r.max_price_minor,
        include_stale: r.include_stale,
        include_no_data: r.include_no_data,
        arrival,
    }
    .validated()
}

/// A forecast of one time.
pub fn pb_forecast_point(time: Timestamp, p: &Prediction) -> pb::ForecastPoint {
    pb::ForecastPoint {
        time: Some(pb_timestamp(time)),
        available: p.available as i32,
        p10: p.p10 as i32,
        p90: p.p90 as i32,
        probability: f64::from(p.probability),
    }
}

/// One result; the full registration and every category only for view FULL.
pub fn pb_nearby(n: &Nearby, full: bool, query: &NearbyQuery) -> pb::NearbyCarPark {
    let category = query.category;
    let cp = &n.car_park;
    pb::NearbyCarPark {
        car_park_id: cp.id.to_string(),
        name: cp.name.clone(),
        kind: pb::CarParkKind::from(cp.kind).into(),
        location: Some(pb_lat_lng(cp.location)),
        address: cp.address.clone(),
        status: pb::CarParkStatus::from(n.admitted.status).into(),
        distance_m: n.distance_m,
        available: n.admitted.available as i32,
        capacity: cp.capacity.of(category) as i32,
        data_age_seconds: n.availability.data_age.map(|d| d.as_secs() as i64),
        price_minor: n.admitted.price,
        currency: n
            .admitted
            .price
            .map(|_| cp.tariff.currency.clone())
            .unwrap_or_default(),
        car_park: full.then(|| pb_car_park(cp)),
        availability: full.then(|| pb_availability(&n.availability)),
        offer_id: String::new(),
        // Without its time, which is the request's: a list answer stays lean (10
        // results, 90 bytes less).
        arrival_forecast: n.forecast.as_ref().map(|p| pb::ForecastPoint {
            time: None,
            ..pb_forecast_point(Timestamp::UNIX_EPOCH, p)
        }),
    }
}

/// A shared offer in a FindNearby answer.
pub fn pb_nearby_offer(f: &crate::service::OfferFound) -> pb::NearbyCarPark {
    let o = &f.offer;
    pb::NearbyCarPark {
        offer_id: o.id.to_string(),
        name: o.address.clone(),
        kind: pb::CarParkKind::SharedPrivate.into(),
        location: Some(pb_lat_lng(o.location)),
        address: o.address.clone(),
        status: pb::CarParkStatus::Open.into(),
        distance_m: f.distance_m,
        available: f.available as i32,
        capacity: o.spaces as i32,
        price_minor: Some(f.price_minor),
        currency: o.currency.to_string(),
        ..Default::default()
    }
}

/// Whether a FindNearby request asks for the FULL view.
pub fn full_view(view: i32) -> Result<bool> {
    match pb::NearbyView::try_from(view) {
        Ok(pb::NearbyView::Unspecified | pb::NearbyView::Basic) => Ok(false),
        Ok(pb::NearbyView::Full) => Ok(true),
        Err(_) => Err(Error::invalid("view", format!("{view} is not a view"))),
    }
}

pub fn bounding_box(b: &pb::BoundingBox) -> Result<BoundingBox> {
    let sw = lat_lng(b.south_west.as_ref(), "area.south_west")?;
    let ne = lat_lng(b.north_east.as_ref(), "area.north_east")?;
    BoundingBox::new(sw, ne).map_err(|e| e.in_field("area"))
}
