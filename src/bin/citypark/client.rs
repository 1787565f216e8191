//! Client subcommands: ask a citypark server for space and send operator reports.
//!
//! Each command is one call of the public gRPC API, printed for people: enough to try a
//! deployment without grpcurl or an app.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::{self, Write as _};
use std::marker::PhantomData;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, Subcommand};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

use citypark::domain::{CarParkKind, CarParkStatus, SpaceCategory};
use citypark::pb;
use citypark::pb::availability_client::AvailabilityClient;
use citypark::pb::ingest_client::IngestClient;
use citypark::pb::occupancy_report::Body;
use citypark::pb::watch_availability_request::Selector;
use citypark::pb::watch_availability_response::Event;

/// Client subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Nearest car parks with available spaces.
    Nearby(NearbyArgs),
    /// Live availability of car parks by id.
    Get(GetArgs),
    /// Stream availability changes for ids or a bounding box.
    Watch(WatchArgs),
    /// Send one occupancy report as an operator.
    Report(ReportArgs),
    /// Reserve a space as a driver.
    Reserve(crate::reserve::ReserveArgs),
    /// List your reservations (a driver's own, or an operator's car parks').
    Reservations(crate::reserve::ReservationsArgs),
    /// Cancel a reservation as its driver.
    Cancel(crate::reserve::CancelArgs),
    /// Offer shared spaces as a host (a driver token's subject).
    Offer(crate::share::OfferArgs),
    /// Shared spaces free for a window near a place.
    SearchShared(crate::share::SearchArgs),
    /// Book a shared space as a driver.
    Book(crate::share::BookArgs),
    /// Link, unlink and list your plates as a driver: a linked plate's parking is
    /// charged to your wallet when it leaves.
    #[command(subcommand)]
    Plates(crate::sessions::PlatesCommand),
    /// List parking sessions: a driver's own (--token), or those at an operator's car
    /// parks (--api-key); --id prints one.
    Sessions(crate::sessions::SessionsArgs),
    /// One local day's settlement of an operator's car parks' sessions.
    Settlement(crate::sessions::SettlementArgs),
    /// Your built-in wallet as a driver: balance, arrears, latest entries; `wallet
    /// top-up` credits it.
    Wallet(crate::sessions::WalletArgs),
    /// Check the server's standard gRPC health, as container health checks do: prints
    /// one line, exits 0 when it is SERVING and 1 otherwise.
    Health(crate::health::HealthArgs),
    /// Register the car parks of an open-data file as an operator: ParkAPI city
    /// GeoJSON, ParkAPI v3 parking sites or FIWARE NGSI OffStreetParking entities.
    ///
    /// Each record becomes a car park of --region: its id is the source's (ParkAPI v3
    /// original_uid or uid, the NGSI id without its urn:ngsi-ld:OffStreetParking:
    /// prefix), or the region and a slug of the name when the source has none (ParkAPI
    /// GeoJSON); its kind comes from the source's type, category or layout, else
    /// --default-kind; its capacity is the source's total, never guessed. A record
    /// without capacity or coordinates, of another vehicle, or that the server's rules
    /// refuse is skipped and listed with the reason; a second record of an id is a
    /// duplicate, skipped too. The import sets name, address, location, kind,
    /// capacity and time zone (and the report interval and maximum height when given),
    /// and keeps everything else an existing car park has (tariff, opening hours,
    /// reservation policy).
    ///
    /// A car park whose imported fields are equal is not written, so running an import
    /// again changes nothing. The table lists what was imported, updated, skipped and
    /// failed (with the server's reason, e.g. another operator's car park), then the
    /// totals; the exit status is 1 when any failed. Progress goes to stderr every
    /// second. The mapping of each format is in the README ("Importing open data").
    Import(crate::import::ImportArgs),
}

/// Where the server is.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The citypark gRPC server.
    #[arg(
        long,
        env = "CITYPARK_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,

    /// PEM CA certificate to trust for an `https://` server, besides the public
    /// roots (for a city's private CA).
    #[arg(long, env = "CITYPARK_TLS_CA_FILE")]
    tls_ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate proving an operator over mutual TLS, instead of an API
    /// key (with --tls-client-key-file).
    #[arg(
        long,
        env = "CITYPARK_TLS_CLIENT_CERT_FILE",
        requires = "tls_client_key_file"
    )]
    tls_client_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of --tls-client-cert-file.
    #[arg(
        long,
        env = "CITYPARK_TLS_CLIENT_KEY_FILE",
        requires = "tls_client_cert_file"
    )]
    tls_client_key_file: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    /// The server's address as given, for messages.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// Whether an operator's client certificate is given: it proves the operator, as
    /// an API key would.
    pub(crate) fn has_client_certificate(&self) -> bool {
        self.tls_client_cert_file.is_some()
    }
}

/// A domain enum as the command line names it: by the domain's one name table
/// (`ev_charging`), in arguments and in output alike. Arguments may also use the
/// kebab-case of earlier versions (`ev-charging`) and any letter case, so old scripts
/// keep working; output always prints the domain's name.
pub(crate) trait Named: Copy + Send + Sync + 'static {
    fn all() -> &'static [Self];
    fn name(self) -> &'static str;
    fn parse(name: &str) -> Option<Self>;
}

macro_rules! named {
    ($($domain:ty),*) => {$(
        impl Named for $domain {
            fn all() -> &'static [Self] {
                &<$domain>::ALL
            }
            fn name(self) -> &'static str {
                <$domain>::name(self)
            }
            fn parse(name: &str) -> Option<Self> {
                <$domain>::parse(name)
            }
        }
    )*};
}

named!(SpaceCategory, CarParkKind, CarParkStatus);

/// The value a command-line spelling names, if any.
fn lookup<T: Named>(spelled: &str) -> Option<T> {
    T::parse(&spelled.trim().to_ascii_lowercase().replace('-', "_"))
}

/// The clap parser of a [`Named`] argument: `--help` and errors list the names.
#[derive(Clone, Copy)]
pub(crate) struct ByName<T>(PhantomData<fn() -> T>);

pub(crate) fn by_name<T: Named>() -> ByName<T> {
    ByName(PhantomData)
}

impl<T: Named> TypedValueParser for ByName<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        if let Some(v) = value.to_str().and_then(lookup) {
            return Ok(v);
        }
        // Not a name in any spelling: clap's own error, with the names and a suggestion.
        let name = PossibleValuesParser::new(T::all().iter().map(|v| v.name()))
            .parse_ref(cmd, arg, value)?;
        Ok(lookup(&name).expect("every possible value is a name"))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            T::all().iter().map(|v| PossibleValue::new(v.name())),
        ))
    }
}

/// Arguments of `nearby`.
#[derive(Debug, Args)]
pub struct NearbyArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Latitude of the search point, in degrees.
    #[arg(long, allow_negative_numbers = true, env = "CITYPARK_LAT")]
    lat: f64,
    /// Longitude of the search point, in degrees.
    #[arg(long, allow_negative_numbers = true, env = "CITYPARK_LON")]
    lon: f64,
    /// Search radius in metres (at most 50000).
    #[arg(long, default_value_t = 2000.0, env = "CITYPARK_RADIUS_M")]
    radius_m: f64,
    /// Most results (at most 100).
    #[arg(long, default_value_t = 10, env = "CITYPARK_LIMIT")]
    limit: i32,
    /// The space category needed.
    #[arg(
        long,
        value_parser = by_name::<SpaceCategory>(),
        default_value = SpaceCategory::Standard.name(),
        env = "CITYPARK_CATEGORY"
    )]
    category: SpaceCategory,
    /// Only car parks with at least this many available spaces.
    #[arg(long, default_value_t = 1, env = "CITYPARK_MIN_AVAILABLE")]
    min_available: i32,
    /// Only these kinds (repeat, or separate with commas).
    #[arg(
        long = "kind",
        value_parser = by_name::<CarParkKind>(),
        value_delimiter = ',',
        env = "CITYPARK_KIND"
    )]
    kinds: Vec<CarParkKind>,
    /// Only car parks open now.
    #[arg(long, env = "CITYPARK_OPEN_NOW")]
    open_now: bool,
    /// Price a stay of this many hours, starting now.
    #[arg(long, env = "CITYPARK_STAY_HOURS")]
    stay_hours: Option<f64>,
    /// Only car parks whose price for the stay is at most this, in minor units (fen).
    #[arg(long, requires = "stay_hours", env = "CITYPARK_MAX_PRICE")]
    max_price: Option<i64>,
    /// Also list car parks whose data is stale.
    #[arg(long, env = "CITYPARK_INCLUDE_STALE")]
    include_stale: bool,
    /// Also list car parks that never reported.
    #[arg(long, env = "CITYPARK_INCLUDE_NO_DATA")]
    include_no_data: bool,
    /// Also list shared private spaces free for the whole stay (needs --stay-hours).
    #[arg(long, requires = "stay_hours", env = "CITYPARK_INCLUDE_SHARED")]
    shared: bool,
    /// When you arrive, as +MINUTES from now (+20) or an RFC 3339 time: adds each car
    /// park's forecast then (available spaces, 80% interval, chance of a space).
    #[arg(long, value_parser = parse_arrival, allow_hyphen_values = true, env = "CITYPARK_ARRIVE")]
    arrive: Option<Arrival>,
    /// Only car parks with at least this chance (0 to 1) of a space when you arrive.
    #[arg(long, requires = "arrive", env = "CITYPARK_MIN_ARRIVAL_PROBABILITY")]
    min_probability: Option<f64>,
}

/// `--arrive`: a time, and how to show it.
#[derive(Debug, Clone)]
pub struct Arrival {
    at: SystemTime,
    label: String,
}

fn parse_arrival(raw: &str) -> Result<Arrival, String> {
    if let Some(minutes) = raw.strip_prefix('+') {
        let minutes: u32 = minutes
            .parse()
            .map_err(|_| format!("{raw:?} is not +MINUTES (such as +20) or an RFC 3339 time"))?;
        return Ok(Arrival {
            at: SystemTime::now() + Duration::from_secs(u64::from(minutes) * 60),
            label: format!("+{minutes} min"),
        });
    }
    let at: jiff::Timestamp = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not +MINUTES (such as +20) or an RFC 3339 time"))?;
    Ok(Arrival {
        at: SystemTime::from(at),
        label: at.strftime("%H:%M UTC").to_string(),
    })
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Car park ids.
    #[arg(required = true)]
    ids: Vec<String>,
}

/// Arguments of `watch`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selector").required(true).args(["ids", "bbox"])))]
pub struct WatchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// A car park to watch (repeat for more).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// An area to watch: "south,west,north,east" in degrees.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_bbox)]
    bbox: Option<pb::BoundingBox>,
}

/// Arguments of `report`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("body").required(true).multiple(true).args(["free", "enter", "exit", "bay"])
))]
pub struct ReportArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The operator's API key; not needed with an operator's client certificate
    /// (--tls-client-cert-file).
    #[arg(
        long,
        env = "CITYPARK_API_KEY",
        hide_env_values = true,
        required_unless_present = "tls_client_cert_file"
    )]
    api_key: Option<String>,
    /// The car park reported on.
    #[arg(long, env = "CITYPARK_CAR_PARK")]
    car_park: String,
    /// The report's sequence number [default: the current Unix time in milliseconds,
    /// so every run is newer than the last].
    #[arg(long)]
    sequence: Option<u64>,
    /// Free spaces per category, absolute, e.g. standard=10,ev_charging=2.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, conflicts_with_all = ["enter", "exit", "bay"])]
    free: Vec<pb::CategoryCount>,
    /// Vehicles that entered, per category, e.g. standard=1.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, conflicts_with = "bay")]
    enter: Vec<pb::CategoryCount>,
    /// Vehicles that left, per category, e.g. standard=1.
    #[arg(long, value_delimiter = ',', value_parser = parse_count, conflicts_with = "bay")]
    exit: Vec<pb::CategoryCount>,
    /// Number again from this report's sequence, whatever was applied before (only
    /// with --free: a snapshot).
    #[arg(long)]
    restart_sequence: bool,
    /// Licence plate read at the barrier, for a single entry or exit: it opens or
    /// closes the plate's parking session.
    #[arg(long, conflicts_with_all = ["free", "bay"])]
    plate: Option<String>,
    /// The plate's colour (only with --plate).
    #[arg(long, requires = "plate", value_parser = by_name::<pb::PlateColor>())]
    plate_color: Option<pb::PlateColor>,
    /// The lane (gate) that read the plate, as the operator names it, up to 32
    /// characters (only with --plate).
    #[arg(long, requires = "plate")]
    lane: Option<String>,
    /// When it was observed, RFC 3339; at most 5 minutes ahead of the server's clock
    /// [default: now].
    #[arg(long, value_parser = crate::sessions::parse_time)]
    observed_at: Option<prost_types::Timestamp>,
    /// A bay whose sensor changed.
    #[arg(long, requires = "occupied")]
    bay: Option<String>,
    /// Whether a vehicle is in the bay now.
    #[arg(long, requires = "bay")]
    occupied: Option<bool>,
    /// The bay's category.
    #[arg(
        long,
        value_parser = by_name::<SpaceCategory>(),
        default_value = SpaceCategory::Standard.name()
    )]
    bay_category: SpaceCategory,
}

/// Runs one client command against the server.
pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    let result = match command {
        ClientCommand::Nearby(args) => nearby(args).await,
        ClientCommand::Get(args) => get(args).await,
        ClientCommand::Watch(args) => watch(args).await,
        ClientCommand::Report(args) => report(args).await,
        ClientCommand::Reserve(args) => crate::reserve::reserve(args).await,
        ClientCommand::Reservations(args) => crate::reserve::reservations(args).await,
        ClientCommand::Cancel(args) => crate::reserve::cancel(args).await,
        ClientCommand::Offer(args) => crate::share::offer(args).await,
        ClientCommand::SearchShared(args) => crate::share::search(args).await,
        ClientCommand::Book(args) => crate::share::book(args).await,
        ClientCommand::Plates(command) => crate::sessions::plates(command).await,
        ClientCommand::Sessions(args) => crate::sessions::sessions(args).await,
        ClientCommand::Settlement(args) => crate::sessions::settlement(args).await,
        ClientCommand::Wallet(args) => crate::sessions::wallet(args).await,
        ClientCommand::Health(args) => crate::health::health(args).await,
        ClientCommand::Import(args) => crate::import::import(args).await,
    };
    match result {
        // A reader that stops early (`citypark watch ... | head`) is not a failure.
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Writes a line to stdout; unlike `println!` it reports a closed pipe instead of
/// panicking.
pub(crate) fn say(line: impl Display) -> io::Result<()> {
    writeln!(io::stdout(), "{line}")
}

pub(crate) async fn connect(args: &ConnectArgs) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(args.server.clone())
        .with_context(|| format!("invalid --server {:?}", args.server))?;
    if args.server.starts_with("https://") {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &args.tls_ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.tls_client_cert_file, &args.tls_client_key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    } else if args.tls_ca_file.is_some() || args.tls_client_cert_file.is_some() {
        anyhow::bail!("--tls-ca-file and --tls-client-cert-file need an https:// --server");
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))
}

/// Turns a failed call into "Rpc failed: Code: message".
pub(crate) fn failed(rpc: &'static str) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |status| anyhow!("{rpc} failed: {:?}: {}", status.code(), status.message())
}

async fn nearby(args: NearbyArgs) -> anyhow::Result<()> {
    let category = pb::SpaceCategory::from(args.category);
    let stay = args.stay_hours.map(stay_from_now).transpose()?;
    let request = pb::FindNearbyRequest {
        location: Some(pb::LatLng {
            latitude: args.lat,
            longitude: args.lon,
        }),
        radius_m: args.radius_m,
        limit: args.limit,
        category: category as i32,
        min_available: args.min_available,
        kinds: args
            .kinds
            .iter()
            .map(|k| pb::CarParkKind::from(*k) as i32)
            .collect(),
        open_now: args.open_now,
        stay,
        max_price_minor: args.max_price,
        include_stale: args.include_stale,
        include_no_data: args.include_no_data,
        view: pb::NearbyView::Basic.into(),
        include_shared: args.shared,
        arrival_time: args.arrive.as_ref().map(|a| a.at.into()),
        min_arrival_probability: args.min_probability.unwrap_or(0.0),
    };
    let mut client = AvailabilityClient::new(connect(&args.connect).await?);
    let results = client
        .find_nearby(request)
        .await
        .map_err(failed("FindNearby"))?
        .into_inner()
        .results;
    let category_name = category_name(category as i32);
    if results.is_empty() {
        say(format_args!(
            "no car park with {category_name} space within {} m",
            args.radius_m
        ))?;
        return Ok(());
    }

    let mut columns = vec![
        ("#", Align::Right),
        ("distance", Align::Right),
        ("id", Align::Left),
        ("name", Align::Left),
        ("kind", Align::Left),
        ("status", Align::Left),
        (category_name, Align::Right),
    ];
    if stay.is_some() {
        columns.push(("price", Align::Right));
    }
    columns.push(("age", Align::Right));
    if let Some(arrival) = &args.arrive {
        say(format_args!(
            "forecast at {}: available spaces (80% interval) and the chance of a space",
            arrival.label
        ))?;
        columns.push(("at arrival", Align::Right));
    }
    let mut table = Table::new(columns);
    for (rank, result) in results.iter().enumerate() {
        let mut row = vec![
            (rank + 1).to_string(),
            format_distance(result.distance_m),
            // A shared offer has an offer id instead of a car park id.
            if result.car_park_id.is_empty() {
                result.offer_id.clone()
            } else {
                result.car_park_id.clone()
            },
            result.name.clone(),
            kind_name(result.kind).to_owned(),
            status_name(result.status).to_owned(),
            format!("{}/{}", result.available, result.capacity),
        ];
        if stay.is_some() {
            row.push(
                result
                    .price_minor
                    .map_or_else(|| "-".to_owned(), |p| format_money(p, &result.currency)),
            );
        }
        row.push(format_age(result.data_age_seconds));
        if args.arrive.is_some() {
            row.push(result.arrival_forecast.as_ref().map_or_else(
                || "-".to_owned(),
                |f| {
                    format!(
                        "{} ({}–{}) {:.0}%",
                        f.available,
                        f.p10,
                        f.p90,
                        100.0 * f.probability
                    )
                },
            ));
        }
        table.push(row);
    }
    table.print()?;
    Ok(())
}

fn stay_from_now(hours: f64) -> anyhow::Result<pb::StayWindow> {
    let length = Duration::try_from_secs_f64(hours * 3_600.0)
        .map_err(|_| anyhow!("--stay-hours must be a positive number of hours"))?;
    let start = SystemTime::now();
    Ok(pb::StayWindow {
        start: Some(start.into()),
        end: Some((start + length).into()),
    })
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut client = AvailabilityClient::new(connect(&args.connect).await?);
    let response = client
        .get_availability(pb::GetAvailabilityRequest {
            car_park_ids: args.ids,
        })
        .await
        .map_err(failed("GetAvailability"))?
        .into_inner();
    if !response.availabilities.is_empty() {
        print_availability(&response.availabilities)?;
    }
    if !response.not_found_ids.is_empty() {
        bail!("not registered: {}", response.not_found_ids.join(", "));
    }
    Ok(())
}

/// One row per car park and category, so the output greps well.
fn print_availability(availabilities: &[pb::CarParkAvailability]) -> io::Result<()> {
    let mut table = Table::new(vec![
        ("id", Align::Left),
        ("status", Align::Left),
        ("category", Align::Left),
        ("free", Align::Right),
        ("held", Align::Right),
        ("available", Align::Right),
        ("capacity", Align::Right),
        ("age", Align::Right),
        ("sequence", Align::Right),
    ]);
    for a in availabilities {
        for c in &a.categories {
            table.push(vec![
                a.car_park_id.clone(),
                status_name(a.status).to_owned(),
                category_name(c.category).to_owned(),
                c.free.to_string(),
                c.held.to_string(),
                c.available.to_string(),
                c.capacity.to_string(),
                format_age(a.data_age_seconds),
                a.last_sequence.to_string(),
            ]);
        }
    }
    table.print()
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let selector = match args.bbox {
        Some(area) => Selector::Area(area),
        None => Selector::Ids(pb::CarParkIds { ids: args.ids }),
    };
    let mut client = AvailabilityClient::new(connect(&args.connect).await?);
    let mut events = client
        .watch_availability(pb::WatchAvailabilityRequest {
            selector: Some(selector),
        })
        .await
        .map_err(failed("WatchAvailability"))?
        .into_inner();
    // One listener for the whole watch: a fresh one per event could miss a Ctrl-C
    // that lands between two events.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let message = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            message = events.message() => message.map_err(failed("WatchAvailability"))?,
        };
        let Some(message) = message else {
            say(format_args!("{} closed by the server", now()))?;
            return Ok(());
        };
        let event = match message.event {
            Some(Event::Update(a)) => format!(
                "update {} {} {} age {}",
                a.car_park_id,
                status_name(a.status),
                format_categories(&a.categories),
                format_age(a.data_age_seconds)
            ),
            Some(Event::SnapshotComplete(s)) => {
                format!("snapshot_complete car_parks={}", s.car_parks)
            }
            Some(Event::Resync(r)) => format!("resync missed={}", r.missed),
            Some(Event::Removed(r)) => format!("removed {}", r.car_park_id),
            None => continue,
        };
        say(format_args!("{} {event}", now()))?;
    }
}

fn parse_bbox(s: &str) -> Result<pb::BoundingBox, String> {
    let corners: Vec<f64> = s
        .split(',')
        .map(|part| part.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{e} (expected \"south,west,north,east\")"))?;
    let [south, west, north, east] = corners[..] else {
        return Err("expected four numbers: \"south,west,north,east\"".to_owned());
    };
    Ok(pb::BoundingBox {
        south_west: Some(pb::LatLng {
            latitude: south,
            longitude: west,
        }),
        north_east: Some(pb::LatLng {
            latitude: north,
            longitude: east,
        }),
    })
}

async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let bearer = args
        .api_key
        .as_ref()
        .map(|key| {
            AsciiMetadataValue::try_from(format!("Bearer {key}"))
                .map_err(|_| anyhow!("--api-key must be printable ASCII"))
        })
        .transpose()?;
    let body = if !args.free.is_empty() {
        Body::Snapshot(pb::SnapshotReport { free: args.free })
    } else if let Some(bay_id) = args.bay {
        Body::Bay(pb::BayStatusReport {
            bay_id,
            category: pb::SpaceCategory::from(args.bay_category) as i32,
            occupied: args.occupied.unwrap_or_default(),
        })
    } else {
        Body::Delta(pb::DeltaReport {
            entries: args.enter,
            exits: args.exit,
            plate: args.plate.unwrap_or_default(),
            plate_color: args.plate_color.map_or(0, i32::from),
            lane: args.lane.unwrap_or_default(),
        })
    };
    let sequence = args.sequence.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
    });
    let mut request = tonic::Request::new(pb::ReportRequest {
        report: Some(pb::OccupancyReport {
            car_park_id: args.car_park,
            sequence,
            observed_at: Some(args.observed_at.unwrap_or_else(|| SystemTime::now().into())),
            body: Some(body),
            restart_sequence: args.restart_sequence,
        }),
    });
    if let Some(bearer) = bearer {
        request.metadata_mut().insert("authorization", bearer);
    }
    let mut client = IngestClient::new(connect(&args.connect).await?);
    let ack = client
        .report(request)
        .await
        .map_err(failed("Report"))?
        .into_inner()
        .ack
        .context("Report answered without an ack")?;
    let result = match ack.result() {
        pb::ReportResult::Applied => "applied",
        pb::ReportResult::Duplicate => "duplicate (not newer than the last applied sequence)",
        pb::ReportResult::Rejected => "rejected",
        pb::ReportResult::Unspecified => "unspecified",
    };
    say(format_args!(
        "{} sequence {}: {result}",
        ack.car_park_id, ack.sequence
    ))?;
    if ack.clamped > 0 {
        say(format_args!(
            "clamped {} count(s) into [0, capacity]",
            ack.clamped
        ))?;
    }
    if !ack.reason.is_empty() {
        say(format_args!("reason: {} {}", ack.field, ack.reason))?;
    }
    if !ack.session_id.is_empty() {
        say(format_args!("parking session {}", ack.session_id))?;
    }
    if ack.arrears {
        say(format_args!(
            "arrears: the plate's driver owes {}",
            format_money(ack.arrears_minor, &ack.arrears_currency)
        ))?;
    }
    if let Some(availability) = ack.availability {
        print_availability(&[availability])?;
    }
    Ok(())
}

/// Parses `category=count`, e.g. `ev_charging=2`.
fn parse_count(s: &str) -> Result<pb::CategoryCount, String> {
    let (name, count) = s
        .split_once('=')
        .ok_or_else(|| format!("expected CATEGORY=COUNT, got {s:?}"))?;
    let category = lookup::<SpaceCategory>(name).ok_or_else(|| {
        let names: Vec<_> = SpaceCategory::ALL.map(SpaceCategory::name).into();
        format!("unknown category {name:?} (one of {})", names.join(", "))
    })?;
    let count = count
        .trim()
        .parse::<i32>()
        .map_err(|e| format!("count of {name}: {e}"))?;
    Ok(pb::CategoryCount {
        category: pb::SpaceCategory::from(category) as i32,
        count,
    })
}

/// The domain's name of an API enum value; "unknown" for UNSPECIFIED or a value this
/// client does not know (a newer server's).
fn name_of<P: TryFrom<i32>, T: Named + TryFrom<P>>(value: i32) -> &'static str {
    P::try_from(value)
        .ok()
        .and_then(|p| T::try_from(p).ok())
        .map_or("unknown", T::name)
}

pub(crate) fn category_name(category: i32) -> &'static str {
    name_of::<pb::SpaceCategory, SpaceCategory>(category)
}

fn kind_name(kind: i32) -> &'static str {
    name_of::<pb::CarParkKind, CarParkKind>(kind)
}

fn status_name(status: i32) -> &'static str {
    name_of::<pb::CarParkStatus, CarParkStatus>(status)
}

/// `standard 118/400 ev_charging 3/40`: available of capacity per category.
fn format_categories(categories: &[pb::CategoryAvailability]) -> String {
    categories
        .iter()
        .map(|c| {
            format!(
                "{} {}/{}",
                category_name(c.category),
                c.available,
                c.capacity
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn format_distance(metres: f64) -> String {
    if metres < 1_000.0 {
        format!("{metres:.0} m")
    } else {
        format!("{:.1} km", metres / 1_000.0)
    }
}

fn format_age(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 60 => format!("{s}s"),
        Some(s) if s < 3_600 => format!("{}m", s / 60),
        Some(s) if s < 86_400 => format!("{}h", s / 3_600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

pub(crate) fn format_money(minor: i64, currency: &str) -> String {
    // The sign goes first, so that -50 reads -¥0.50 (a charge, a wallet in its
    // overdraft) rather than losing it with the units.
    let sign = if minor < 0 { "-" } else { "" };
    let (units, cents) = (minor.unsigned_abs() / 100, minor.unsigned_abs() % 100);
    match currency {
        "CNY" => format!("{sign}¥{units}.{cents:02}"),
        "" => format!("{sign}{units}.{cents:02}"),
        other => format!("{sign}{units}.{cents:02} {other}"),
    }
}

/// Local wall-clock time for watch lines.
fn now() -> impl std::fmt::Display {
    jiff::Zoned::now().strftime("%Y-%m-%d %H:%M:%S")
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A plain text table: each column as wide as its widest cell.
pub(crate) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(columns: Vec<(&'static str, Align)>) -> Self {
        Self {
            columns,
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub(crate) fn print(&self) -> io::Result<()> {
        let width = |cell: &str| cell.chars().count();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (header, _))| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(i))
                    .map(|cell| width(cell))
                    .fold(width(header), usize::max)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for ((cell, (_, align)), w) in cells.into_iter().zip(&self.columns).zip(&widths) {
                let pad = " ".repeat(w - width(cell));
                match align {
                    Align::Left => out.extend([cell, &pad]),
                    Align::Right => out.extend([&pad, cell]),
                }
                out.push_str("  ");
            }
            out.trim_end().to_owned()
        };
        say(line(
            self.columns.iter().map(|(header, _)| *header).collect(),
        ))?;
        for row in &self.rows {
            say(line(row.iter().map(String::as_str).collect()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("citypark").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn command_line_is_consistent() {
        TestCli::command().debug_assert();
        let Ok(ClientCommand::Nearby(nearby)) = parse(&[
            "nearby",
            "--lat",
            "-33.9",
            "--lon",
            "18.4",
            "--kind",
            "garage,on_street",
            "--kind",
            "surface-lot",
            "--category",
            "ev-charging",
        ]) else {
            panic!("nearby parses");
        };
        assert_eq!(nearby.lat, -33.9);
        assert_eq!(
            nearby.kinds,
            [
                CarParkKind::Garage,
                CarParkKind::OnStreet,
                CarParkKind::SurfaceLot
            ]
        );
        assert_eq!(nearby.category, SpaceCategory::EvCharging);
        assert!(parse(&["nearby", "--lat", "1", "--lon", "2", "--kind", "castle"]).is_err());
        assert!(parse(&["nearby", "--lat", "1", "--lon", "2", "--max-price", "5"]).is_err());
        assert!(parse(&["watch"]).is_err());
        assert!(parse(&["watch", "--id", "a", "--bbox", "1,2,3,4"]).is_err());
        assert!(parse(&["watch", "--bbox", "-34,18,-33,19"]).is_ok());
        let report = ["report", "--api-key", "k", "--car-park", "p"];
        let with = |extra: &[&str]| parse(&[&report[..], extra].concat());
        assert!(with(&[]).is_err());
        assert!(with(&["--free", "standard=3,accessible=1"]).is_ok());
        assert!(
            with(&[
                "--enter",
                "standard=1",
                "--exit",
                "ev_charging=1",
                "--plate",
                "X"
            ])
            .is_ok()
        );
        let Ok(ClientCommand::Report(gate)) = with(&[
            "--enter",
            "standard=1",
            "--plate",
            "鲁B12345",
            "--plate-color",
            "blue",
            "--lane",
            "in-1",
            "--observed-at",
            "2026-11-30T10:00:00+08:00",
        ]) else {
            panic!("an entry with a plate read at a lane parses");
        };
        assert_eq!(gate.plate_color, Some(pb::PlateColor::Blue));
        assert_eq!(gate.observed_at.map(|t| t.seconds), Some(1_796_004_000));
        // A colour or a lane describes a plate read: not without one.
        assert!(with(&["--enter", "standard=1", "--plate-color", "blue"]).is_err());
        assert!(with(&["--exit", "standard=1", "--lane", "out-1"]).is_err());
        assert!(with(&["--free", "standard=1", "--observed-at", "10:00"]).is_err());
        assert!(with(&["--bay", "b001", "--occupied", "true"]).is_ok());
        let Ok(ClientCommand::Report(bay)) = with(&[
            "--bay",
            "b001",
            "--occupied",
            "true",
            "--bay-category",
            "accessible",
        ]) else {
            panic!("a bay report parses");
        };
        assert_eq!(bay.bay_category, SpaceCategory::Accessible);
        assert!(with(&["--bay", "b001"]).is_err());
        assert!(with(&["--free", "standard=3", "--enter", "standard=1"]).is_err());
    }

    #[test]
    fn names_are_the_domains_and_help_lists_them() {
        let mut command = TestCli::command();
        let nearby = command.find_subcommand_mut("nearby").unwrap();
        let listed = |arg: &str| -> Vec<String> {
            let arg = nearby.get_arguments().find(|a| a.get_id() == arg).unwrap();
            let values = arg.get_value_parser().possible_values().unwrap();
            values.map(|v| v.get_name().to_owned()).collect()
        };
        assert_eq!(
            listed("category"),
            ["standard", "ev_charging", "accessible", "motorcycle"]
        );
        assert_eq!(
            listed("kinds"),
            [
                "garage",
                "surface_lot",
                "on_street",
                "shared_private",
                "underground_garage"
            ]
        );
        assert_eq!(
            category_name(pb::SpaceCategory::EvCharging as i32),
            "ev_charging"
        );
        assert_eq!(kind_name(pb::CarParkKind::SurfaceLot as i32), "surface_lot");
        assert_eq!(status_name(pb::CarParkStatus::NoData as i32), "no_data");
        assert_eq!(
            status_name(pb::CarParkStatus::Unspecified as i32),
            "unknown"
        );
        assert_eq!(category_name(99), "unknown");
        for c in SpaceCategory::ALL {
            let wire = pb::SpaceCategory::from(c) as i32;
            assert_eq!(category_name(wire), c.name(), "printed as parsed");
        }
    }

    #[test]
    fn parses_counts_and_boxes() {
        let count = parse_count("ev_charging=2").expect("valid");
        assert_eq!(count.category, pb::SpaceCategory::EvCharging as i32);
        assert_eq!(count.count, 2);
        let old = parse_count("EV-Charging=3").expect("the kebab-case of old scripts");
        assert_eq!(old.category, pb::SpaceCategory::EvCharging as i32);
        assert!(parse_count("standard").is_err());
        assert!(parse_count("bicycle=1").is_err());
        let bbox = parse_bbox("36.0,120.3,36.1,120.45").expect("valid");
        assert_eq!(bbox.north_east.map(|p| p.longitude), Some(120.45));
        assert!(parse_bbox("36.0,120.3,36.1").is_err());
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_distance(349.6), "350 m");
        assert_eq!(format_distance(1_234.0), "1.2 km");
        assert_eq!(format_age(Some(75)), "1m");
        assert_eq!(format_age(None), "-");
        assert_eq!(format_money(1_250, "CNY"), "¥12.50");
        assert_eq!(format_money(905, "EUR"), "9.05 EUR");
        assert_eq!(format_money(-50, "CNY"), "-¥0.50");
        assert_eq!(format_money(-1_500, ""), "-15.00");
    }
}
