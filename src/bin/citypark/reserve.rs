//! Reservation subcommands: `reserve`, `reservations`, `cancel` (as a driver with a
//! token, or listing as an operator with an API key), and `token` for the demo.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use tonic::metadata::AsciiMetadataValue;

use citypark::domain::{DriverId, SpaceCategory};
use citypark::pb;
use citypark::pb::reservations_client::ReservationsClient;
use citypark::tokens::{DEMO_SECRET, DEMO_TOKEN_SECONDS, DriverTokens};

use super::client::{
    Align, ConnectArgs, Table, by_name, category_name, connect, failed, format_money, say,
};

/// Who calls: a driver's token or an operator's API key.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// A driver's bearer token (`citypark token --driver alice` prints one for the
    /// demo), or an operator's API key.
    #[arg(long, env = "CITYPARK_TOKEN", hide_env_values = true)]
    token: String,
}

impl CredentialArgs {
    pub(crate) fn bearer<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let value = AsciiMetadataValue::try_from(format!("Bearer {}", self.token.trim()))
            .map_err(|_| anyhow!("--token must be printable ASCII"))?;
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Arguments of `reserve`.
#[derive(Debug, Args)]
pub struct ReserveArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    credential: CredentialArgs,
    /// The car park.
    #[arg(long, env = "CITYPARK_CAR_PARK")]
    car_park: String,
    /// Start of the window: RFC 3339 (2026-12-01T18:00:00+08:00), `now`, or `+MINUTES`.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    start: String,
    /// Length of the window in minutes.
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// The vehicle's plate: its entry at the gate checks the reservation in.
    #[arg(long)]
    plate: String,
    /// The space category.
    #[arg(
        long,
        value_parser = by_name::<SpaceCategory>(),
        default_value = SpaceCategory::Standard.name()
    )]
    category: SpaceCategory,
    /// Idempotency key: the same key gives the same reservation [default: new each run].
    #[arg(long)]
    key: Option<String>,
}

/// Arguments of `reservations`.
#[derive(Debug, Args)]
pub struct ReservationsArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    credential: CredentialArgs,
    /// Only this state: reserved, checked_in, completed, cancelled, no_show.
    #[arg(long)]
    state: Option<String>,
}

/// Arguments of `cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    credential: CredentialArgs,
    /// The reservation's id.
    id: String,
    /// Why.
    #[arg(long, default_value = "")]
    reason: String,
}

/// Arguments of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The driver the token names (its `sub`).
    #[arg(long)]
    driver: String,
    /// File with the HS256 secret to sign with [default: the demo's public secret,
    /// which only `serve --demo` accepts].
    #[arg(long)]
    secret_file: Option<std::path::PathBuf>,
    /// Hours the token is valid.
    #[arg(long, default_value_t = DEMO_TOKEN_SECONDS / 3600)]
    hours: u64,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints a driver token.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let driver = DriverId::parse(&args.driver).map_err(|e| anyhow!("--driver: {e}"))?;
    let secret = match &args.secret_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim_ascii()
            .to_vec(),
        None => DEMO_SECRET.as_bytes().to_vec(),
    };
    if args.hours == 0 || args.hours > 24 * 365 {
        bail!("--hours must be 1 to 8760");
    }
    let token = DriverTokens::issue(&secret, &driver, unix_now(), args.hours * 3600, None, None);
    say(token)?;
    Ok(())
}

pub(crate) fn start_of(spec: &str) -> anyhow::Result<SystemTime> {
    let spec = spec.trim();
    if spec == "now" {
        return Ok(SystemTime::now());
    }
    if let Some(minutes) = spec.strip_prefix('+') {
        let minutes: u64 = minutes
            .trim_end_matches('m')
            .parse()
            .map_err(|_| anyhow!("--start {spec:?}: expected +MINUTES"))?;
        return Ok(SystemTime::now() + Duration::from_secs(minutes * 60));
    }
    let t: jiff::Timestamp = spec
        .parse()
        .map_err(|e| anyhow!("--start {spec:?}: not RFC 3339 ({e})"))?;
    Ok(SystemTime::from(t))
}

fn state_name(state: i32) -> &'static str {
    match pb::ReservationState::try_from(state) {
        Ok(pb::ReservationState::Reserved) => "reserved",
        Ok(pb::ReservationState::CheckedIn) => "checked_in",
        Ok(pb::ReservationState::Completed) => "completed",
        Ok(pb::ReservationState::Cancelled) => "cancelled",
        Ok(pb::ReservationState::NoShow) => "no_show",
        _ => "unknown",
    }
}

pub(crate) fn time_of(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map_or_else(
            || "-".to_owned(),
            |t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
        )
}

fn print(reservations: &[pb::Reservation]) -> std::io::Result<()> {
    let mut table = Table::new(vec![
        ("id", Align::Left),
        ("state", Align::Left),
        ("car park", Align::Left),
        ("category", Align::Left),
        ("start", Align::Left),
        ("end", Align::Left),
        ("price", Align::Right),
    ]);
    for r in reservations {
        table.push(vec![
            r.id.clone(),
            state_name(r.state).to_owned(),
            r.car_park_id.clone(),
            category_name(r.category).to_owned(),
            time_of(&r.start_time),
            time_of(&r.end_time),
            format_money(r.price_minor, &r.currency),
        ]);
    }
    table.print()
}

pub async fn reserve(args: ReserveArgs) -> anyhow::Result<()> {
    let start = start_of(&args.start)?;
    if args.minutes == 0 {
        bail!("--minutes must be positive");
    }
    let key = args.key.unwrap_or_else(|| format!("cli-{}", unix_now()));
    let request = args.credential.bearer(pb::CreateReservationRequest {
        car_park_id: args.car_park,
        category: pb::SpaceCategory::from(args.category) as i32,
        start_time: Some(start.into()),
        end_time: Some((start + Duration::from_secs(args.minutes * 60)).into()),
        plate: args.plate,
        idempotency_key: key,
    })?;
    let mut client = ReservationsClient::new(connect(&args.connect).await?);
    let r = client
        .create_reservation(request)
        .await
        .map_err(failed("CreateReservation"))?
        .into_inner()
        .reservation
        .context("CreateReservation answered without a reservation")?;
    print(std::slice::from_ref(&r))?;
    say(format_args!(
        "no-show after {}; cancellable until {}",
        time_of(&r.no_show_at),
        time_of(&r.cancel_until)
    ))?;
    Ok(())
}

pub async fn reservations(args: ReservationsArgs) -> anyhow::Result<()> {
    let state = match args.state.as_deref() {
        None => pb::ReservationState::Unspecified,
        Some(s) => {
            let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
            (1..=5)
                .filter_map(|i| pb::ReservationState::try_from(i).ok())
                .find(|p| state_name(*p as i32) == wanted)
                .ok_or_else(|| {
                    anyhow!(
                        "--state {s:?}: one of reserved, checked_in, completed, cancelled, no_show"
                    )
                })?
        }
    };
    let mut client = ReservationsClient::new(connect(&args.connect).await?);
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_reservations(args.credential.bearer(pb::ListReservationsRequest {
                state: state as i32,
                page_size: 500,
                page_token: token,
            })?)
            .await
            .map_err(failed("ListReservations"))?
            .into_inner();
        all.extend(page.reservations);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    print(&all)?;
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let request = args.credential.bearer(pb::CancelReservationRequest {
        id: args.id,
        reason: args.reason,
    })?;
    let mut client = ReservationsClient::new(connect(&args.connect).await?);
    let r = client
        .cancel_reservation(request)
        .await
        .map_err(failed("CancelReservation"))?
        .into_inner()
        .reservation
        .context("CancelReservation answered without a reservation")?;
    print(std::slice::from_ref(&r))?;
    Ok(())
}
