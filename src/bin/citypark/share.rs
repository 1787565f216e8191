//! Shared-parking subcommands, as a driver with a token: `offer` (a host offers
//! spaces), `search-shared` (offers free for a window near a place) and `book`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use citypark::pb;
use citypark::pb::shared_parking_client::SharedParkingClient;

use super::client::{
    Align, ConnectArgs, Table, connect, failed, format_distance, format_money, say,
};
use super::reserve::{CredentialArgs, start_of, time_of, unix_now};

/// Arguments of `offer`.
#[derive(Debug, Args)]
pub struct OfferArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    credential: CredentialArgs,
    /// The offer's id: the same id makes a rerun return the same offer [default: one
    /// made by the server].
    #[arg(long, default_value = "")]
    id: String,
    /// The region (a region of the city's car parks).
    #[arg(long, default_value = "qingdao")]
    region: String,
    /// Latitude of the space, in degrees.
    #[arg(long, allow_negative_numbers = true)]
    lat: f64,
    /// Longitude of the space, in degrees.
    #[arg(long, allow_negative_numbers = true)]
    lon: f64,
    /// How drivers find it.
    #[arg(long)]
    address: String,
    /// Spaces in the pool (1 for one's own space).
    #[arg(long, default_value_t = 1)]
    spaces: i32,
    /// When it is offered: DAYS/HH:MM-HH:MM, days 1 (Monday) to 7 as `1-5` or `6`; an
    /// end before the start is the next day (`1-5/18:00-08:00`). Repeat for more.
    #[arg(long = "period", required = true)]
    periods: Vec<String>,
    /// The IANA time zone of the periods.
    #[arg(long, default_value = "Asia/Shanghai")]
    time_zone: String,
    /// Price per hour in minor units (fen), charged per started quarter hour.
    #[arg(long, default_value_t = 400)]
    hourly_rate: i64,
    /// Most one booking costs, in minor units (0: no cap).
    #[arg(long, default_value_t = 0)]
    cap: i64,
}

/// Arguments of `search-shared`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    credential: CredentialArgs,
    /// Latitude of the search point, in degrees.
    #[arg(long, allow_negative_numbers = true)]
    lat: f64,
    /// Longitude of the search point, in degrees.
    #[arg(long, allow_negative_numbers = true)]
    lon: f64,
    /// Search radius in metres (at most 50000).
    #[arg(long, default_value_t = 2000.0)]
    radius_m: f64,
    /// Start of the window: RFC 3339, `now` or `+MINUTES`, moved on to the next
    /// quarter hour (bookings are whole quarter hours).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    start: String,
    /// Length of the window in minutes (whole quarter hours).
    #[arg(long, default_value_t = 60)]
    minutes: u64,
}

/// Arguments of `book`.
#[derive(Debug, Args)]
pub struct BookArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    credential: CredentialArgs,
    /// The offer.
    #[arg(long)]
    offer: String,
    /// Start of the window: RFC 3339, `now` or `+MINUTES`, moved on to the next
    /// quarter hour.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    start: String,
    /// Length of the window in minutes (whole quarter hours).
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// The vehicle's plate.
    #[arg(long)]
    plate: String,
    /// Idempotency key: the same key gives the same booking [default: new each run].
    #[arg(long)]
    key: Option<String>,
}

/// A window of `minutes` from `start` moved on to the next quarter hour.
fn quarter_window(start: &str, minutes: u64) -> anyhow::Result<(SystemTime, SystemTime)> {
    if minutes == 0 || !minutes.is_multiple_of(15) {
        bail!("--minutes must be a positive multiple of 15");
    }
    let start = start_of(start)?;
    let secs = start
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("--start is before 1970"))?
        .as_secs();
    let start = UNIX_EPOCH + Duration::from_secs(secs.div_ceil(900) * 900);
    Ok((start, start + Duration::from_secs(minutes * 60)))
}

/// `DAYS/HH:MM-HH:MM` as weekly periods.
fn periods(spec: &str) -> anyhow::Result<Vec<pb::WeeklyPeriod>> {
    let bad = || anyhow!("--period {spec:?}: expected DAYS/HH:MM-HH:MM such as 1-5/18:00-08:00");
    let (days, times) = spec.split_once('/').ok_or_else(bad)?;
    let (first, last) = days.split_once('-').unwrap_or((days, days));
    let (first, last): (i32, i32) = (
        first.trim().parse().map_err(|_| bad())?,
        last.trim().parse().map_err(|_| bad())?,
    );
    let minute = |t: &str| -> anyhow::Result<i32> {
        let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        Ok(h * 60 + m)
    };
    let (from, to) = times.split_once('-').ok_or_else(bad)?;
    let (start_minute, end_minute) = (minute(from)?, minute(to)?);
    if !(1..=7).contains(&first) || !(first..=7).contains(&last) {
        return Err(bad());
    }
    Ok((first..=last)
        .map(|weekday| pb::WeeklyPeriod {
            weekday,
            start_minute,
            end_minute,
        })
        .collect())
}

fn booking_state(state: i32) -> &'static str {
    match pb::BookingState::try_from(state) {
        Ok(pb::BookingState::Booked) => "booked",
        Ok(pb::BookingState::CheckedIn) => "checked_in",
        Ok(pb::BookingState::Completed) => "completed",
        Ok(pb::BookingState::Cancelled) => "cancelled",
        Ok(pb::BookingState::NoShow) => "no_show",
        _ => "unknown",
    }
}

pub async fn offer(args: OfferArgs) -> anyhow::Result<()> {
    let mut schedule = Vec::new();
    for p in &args.periods {
        schedule.extend(periods(p)?);
    }
    let request = args.credential.bearer(pb::OfferSpaceRequest {
        offer: Some(pb::SharedOffer {
            id: args.id,
            region: args.region,
            location: Some(pb::LatLng {
                latitude: args.lat,
                longitude: args.lon,
            }),
            address: args.address,
            spaces: args.spaces,
            time_zone: args.time_zone,
            schedule,
            hourly_rate_minor: args.hourly_rate,
            cap_per_booking_minor: args.cap,
            ..Default::default()
        }),
    })?;
    let mut client = SharedParkingClient::new(connect(&args.connect).await?);
    let o = client
        .offer_space(request)
        .await
        .map_err(failed("OfferSpace"))?
        .into_inner()
        .offer
        .context("OfferSpace answered without an offer")?;
    say(format_args!(
        "offer {} by {}: {} space(s) at {}, {} per hour",
        o.id,
        o.host_id,
        o.spaces,
        o.address,
        format_money(o.hourly_rate_minor, &o.currency)
    ))?;
    Ok(())
}

pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let (start, end) = quarter_window(&args.start, args.minutes)?;
    let request = args.credential.bearer(pb::SearchOffersRequest {
        location: Some(pb::LatLng {
            latitude: args.lat,
            longitude: args.lon,
        }),
        radius_m: args.radius_m,
        start_time: Some(start.into()),
        end_time: Some(end.into()),
        ..Default::default()
    })?;
    let mut client = SharedParkingClient::new(connect(&args.connect).await?);
    let results = client
        .search_offers(request)
        .await
        .map_err(failed("SearchOffers"))?
        .into_inner()
        .results;
    if results.is_empty() {
        say(format_args!(
            "no shared space free for the window within {} m",
            args.radius_m
        ))?;
        return Ok(());
    }
    let mut table = Table::new(vec![
        ("#", Align::Right),
        ("distance", Align::Right),
        ("offer", Align::Left),
        ("address", Align::Left),
        ("spaces", Align::Right),
        ("price", Align::Right),
    ]);
    for (rank, r) in results.iter().enumerate() {
        let o = r.offer.as_ref().context("a result without its offer")?;
        table.push(vec![
            (rank + 1).to_string(),
            format_distance(r.distance_m),
            o.id.clone(),
            o.address.clone(),
            o.spaces.to_string(),
            format_money(r.price_minor, &r.currency),
        ]);
    }
    table.print()?;
    Ok(())
}

pub async fn book(args: BookArgs) -> anyhow::Result<()> {
    let (start, end) = quarter_window(&args.start, args.minutes)?;
    let key = args.key.unwrap_or_else(|| format!("cli-{}", unix_now()));
    let request = args.credential.bearer(pb::BookOfferRequest {
        offer_id: args.offer,
        start_time: Some(start.into()),
        end_time: Some(end.into()),
        plate: args.plate,
        idempotency_key: key,
    })?;
    let mut client = SharedParkingClient::new(connect(&args.connect).await?);
    let b = client
        .book_offer(request)
        .await
        .map_err(failed("BookOffer"))?
        .into_inner()
        .booking
        .context("BookOffer answered without a booking")?;
    let mut table = Table::new(vec![
        ("id", Align::Left),
        ("state", Align::Left),
        ("offer", Align::Left),
        ("start", Align::Left),
        ("end", Align::Left),
        ("price", Align::Right),
    ]);
    table.push(vec![
        b.id.clone(),
        booking_state(b.state).to_owned(),
        b.offer_id.clone(),
        time_of(&b.start_time),
        time_of(&b.end_time),
        format_money(b.price_minor, &b.currency),
    ]);
    table.print()?;
    say(format_args!("no-show after {}", time_of(&b.no_show_at)))?;
    Ok(())
}
