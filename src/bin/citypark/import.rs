//! `citypark import`: the car parks of an open-data file (ParkAPI city GeoJSON,
//! ParkAPI v3 parking sites, FIWARE NGSI `OffStreetParking`) registered through the
//! Registry API with an operator's credential.
//!
//! The file is read by `citypark::import` (pure, tested on real files); this is the
//! client around it. Per car park, GetCarPark tells a new one from an existing one; an
//! existing one whose imported fields are already equal is left alone, so running an
//! import again writes nothing; anything else is upserted, and the server decides
//! ownership and validity.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, ValueEnum};
use futures_util::StreamExt as _;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use citypark::domain::{CarParkKind, Error, RegionId, TimeZoneName};
use citypark::import::{self, Format, ImportOptions, Parsed};
use citypark::pb;
use citypark::pb::registry_client::RegistryClient;
use citypark::pb::sessions_client::SessionsClient;

use super::client::{Align, ConnectArgs, Table, by_name, connect, say};

/// Car parks looked up and written at once: enough to hide a round trip, few enough to
/// stay inside an operator's rate limit on a busy server.
const IN_FLIGHT: usize = 8;

/// How often progress goes to stderr while a large file is imported.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The formats `import` reads, as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// ParkAPI city GeoJSON (park_api/cities/<City>.geojson of offenesdresden/ParkAPI).
    ParkapiGeojson,
    /// ParkAPI v3 parking sites: {"items": [...]}, an array, or one site.
    ParkapiV3,
    /// FIWARE OffStreetParking entities, NGSI-v2 or NGSI-LD, key-values or normalized.
    Ngsi,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::ParkapiGeojson => Format::ParkApiGeojson,
            FormatArg::ParkapiV3 => Format::ParkApiV3,
            FormatArg::Ngsi => Format::Ngsi,
        }
    }
}

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file's format.
    #[arg(value_enum)]
    format: FormatArg,
    /// The file to read; "-" reads standard input.
    file: PathBuf,
    #[command(flatten)]
    connect: ConnectArgs,
    /// The operator's API key; not needed with an operator's client certificate
    /// (--tls-client-cert-file). The car parks become this operator's.
    #[arg(
        long,
        env = "CITYPARK_API_KEY",
        hide_env_values = true,
        required_unless_present = "tls_client_cert_file"
    )]
    api_key: Option<String>,
    /// The region every car park of the file goes to, e.g. dresden.
    #[arg(long, env = "CITYPARK_REGION", value_parser = parse_region)]
    region: RegionId,
    /// The region's IANA time zone, e.g. Europe/Berlin (none of the formats carries
    /// one; opening hours and settlement days are in it).
    #[arg(long, env = "CITYPARK_TIME_ZONE", value_parser = parse_time_zone)]
    time_zone: TimeZoneName,
    /// The kind of a car park whose source names none (ParkAPI GeoJSON without
    /// "type", ParkAPI v3 "OTHER", NGSI without category or layout).
    #[arg(
        long,
        env = "CITYPARK_DEFAULT_KIND",
        value_parser = by_name::<CarParkKind>(),
        default_value = CarParkKind::SurfaceLot.name()
    )]
    default_kind: CarParkKind,
    /// Put in front of every id (up to 16 characters of A-Z a-z 0-9 . _ -), to keep
    /// apart sources whose ids could collide: ids are unique in a whole deployment.
    #[arg(long, env = "CITYPARK_ID_PREFIX", default_value = "", value_parser = parse_id_prefix)]
    id_prefix: String,
    /// How often the operator will report, in seconds (10 to 86400) [default: the
    /// server's on new car parks (60), the existing interval on others].
    #[arg(
        long,
        env = "CITYPARK_REPORT_INTERVAL_SECS",
        value_parser = clap::value_parser!(u32).range(10..=86_400)
    )]
    report_interval_secs: Option<u32>,
    /// Read the file and compare it with the server, but write nothing: the table says
    /// what an import would do.
    #[arg(long, env = "CITYPARK_DRY_RUN")]
    dry_run: bool,
    /// Also delete this operator's car parks in --region (ids starting with
    /// --id-prefix) that the file no longer has; a record the file has but the import
    /// skips keeps its car park when the file names it. Off by default: an import
    /// only adds and updates. Try it with --dry-run first, which lists them.
    #[arg(long, env = "CITYPARK_IMPORT_PRUNE")]
    prune: bool,
}

fn reason(error: Error) -> String {
    match error {
        Error::InvalidArgument { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn parse_region(s: &str) -> Result<RegionId, String> {
    RegionId::parse_place(s.trim()).map_err(reason)
}

fn parse_time_zone(s: &str) -> Result<TimeZoneName, String> {
    TimeZoneName::parse(s.trim()).map_err(reason)
}

fn parse_id_prefix(s: &str) -> Result<String, String> {
    if s.len() > 16 {
        return Err("at most 16 characters".to_owned());
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("contains {bad:?}; allowed are A-Z a-z 0-9 . _ -"));
    }
    Ok(s.to_owned())
}

/// What became of one car park of the file.
#[derive(Debug)]
enum Outcome {
    /// New: registered (or, in a dry run, would be).
    Imported,
    /// Existing and different in these fields: written (or would be).
    Updated(Vec<&'static str>),
    /// Existing with every imported field equal: nothing written.
    Unchanged,
    /// Refused by the server (or, in a dry run, it would be), or not reachable.
    Failed(String),
    /// Not in the file any more: deleted (or, in a dry run, it would be), `--prune`.
    Deleted,
}

/// Who calls and how: the pieces every call of one import shares.
#[derive(Clone)]
struct Caller {
    registry: RegistryClient<Channel>,
    /// `authorization: Bearer <key>`; none for an operator proven by its client
    /// certificate.
    bearer: Option<AsciiMetadataValue>,
    /// The operator the credential proves.
    operator: String,
    dry_run: bool,
}

impl Caller {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    async fn get(&self, id: &str) -> Result<Option<pb::CarPark>, Status> {
        let answer = patiently(|| {
            let mut registry = self.registry.clone();
            let request = self.request(pb::GetCarParkRequest { id: id.to_owned() });
            async move { registry.get_car_park(request).await }
        })
        .await;
        match answer {
            Ok(found) => Ok(found.car_park),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// The operator's car parks in `region`, every page.
    async fn list(&self, region: &str) -> Result<Vec<pb::CarPark>, Status> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = patiently(|| {
                let mut registry = self.registry.clone();
                let request = self.request(pb::ListCarParksRequest {
                    region: region.to_owned(),
                    operator_id: self.operator.clone(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                });
                async move { registry.list_car_parks(request).await }
            })
            .await?;
            all.extend(page.car_parks);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// Deletes one car park the file no longer has (in a dry run, says it would).
    async fn prune(&self, id: &str) -> Outcome {
        if self.dry_run {
            return Outcome::Deleted;
        }
        let answer = patiently(|| {
            let mut registry = self.registry.clone();
            let request = self.request(pb::DeleteCarParkRequest { id: id.to_owned() });
            async move { registry.delete_car_park(request).await }
        })
        .await;
        match answer {
            Ok(_) => Outcome::Deleted,
            // Deleted meanwhile: gone either way.
            Err(status) if status.code() == Code::NotFound => Outcome::Deleted,
            Err(status) => Outcome::Failed(format!("deleting it: {}", describe(&status))),
        }
    }

    async fn upsert(&self, car_park: &pb::CarPark) -> Result<pb::UpsertCarParkResponse, Status> {
        patiently(|| {
            let mut registry = self.registry.clone();
            let request = self.request(pb::UpsertCarParkRequest {
                car_park: Some(car_park.clone()),
            });
            async move { registry.upsert_car_park(request).await }
        })
        .await
    }

    /// Imports one car park: new, updated, unchanged, or failed with the server's
    /// reason.
    async fn import(&self, car_park: &pb::CarPark) -> Outcome {
        let existing = match self.get(&car_park.id).await {
            Ok(existing) => existing,
            Err(status) => return Outcome::Failed(format!("GetCarPark: {}", describe(&status))),
        };
        let Some(existing) = existing else {
            if self.dry_run {
                return Outcome::Imported;
            }
            return match self.upsert(car_park).await {
                Ok(answer) if answer.created => Outcome::Imported,
                // Registered by someone else between the two calls.
                Ok(_) => Outcome::Updated(Vec::new()),
                Err(status) => Outcome::Failed(describe(&status)),
            };
        };
        let changed = import::changes(&existing, car_park);
        // The server refuses these; a dry run says so, a real one lets the server
        // answer (it decides ownership, and another operator's record may be equal).
        let refusal = if existing.operator_id != self.operator {
            Some(format!("belongs to operator {}", existing.operator_id))
        } else if existing.region != car_park.region {
            Some(format!("is in region {}", existing.region))
        } else {
            None
        };
        match refusal {
            Some(why) if self.dry_run => Outcome::Failed(format!("would be refused: {why}")),
            None if changed.is_empty() => Outcome::Unchanged,
            None if self.dry_run => Outcome::Updated(changed),
            _ => match self.upsert(&import::merged(&existing, car_park)).await {
                Ok(_) => Outcome::Updated(changed),
                Err(status) => Outcome::Failed(describe(&status)),
            },
        }
    }
}

/// "Code: message", as the other commands print a failed call.
fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Calls again, after 0.25, 0.5, 1, 2 and 4 s, when the server asks to slow down
/// (RESOURCE_EXHAUSTED: over the operator's rate) or cannot answer for now
/// (UNAVAILABLE). Both calls it is used for are safe to repeat: a read, and an upsert
/// of one state.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempts = 1;
    loop {
        match call().await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status)
                if attempts < 6
                    && matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) =>
            {
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempts += 1;
            }
            Err(status) => return Err(status),
        }
    }
}

/// The operator a credential proves. The Registry has no call that says so, but an
/// operator's settlement names its operator and changes nothing, so it is asked for
/// today's. It also checks the credential before anything is written.
async fn operator_of(
    channel: Channel,
    bearer: Option<&AsciiMetadataValue>,
) -> anyhow::Result<String> {
    let day = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    let mut request = tonic::Request::new(pb::GetSettlementRequest {
        operator: String::new(),
        day,
    });
    if let Some(bearer) = bearer {
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
    }
    match SessionsClient::new(channel).get_settlement(request).await {
        Ok(answer) => Ok(answer.into_inner().operator),
        Err(status) if status.code() == Code::Unauthenticated => {
            bail!(
                "the server does not know this operator credential: {}",
                status.message()
            )
        }
        Err(status) => bail!(
            "cannot tell which operator the credential is: {}",
            describe(&status)
        ),
    }
}

/// Reads the file, then registers its car parks; fails when any was refused.
pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let shown = args.file.display().to_string();
    let bytes = if shown == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("cannot read standard input")?;
        bytes
    } else {
        std::fs::read(&args.file).with_context(|| format!("cannot read {shown}"))?
    };
    let options = ImportOptions {
        region: args.region.clone(),
        time_zone: args.time_zone.clone(),
        default_kind: args.default_kind,
        id_prefix: args.id_prefix.clone(),
        report_interval_seconds: args.report_interval_secs,
    };
    let parsed =
        import::parse(args.format.into(), &bytes, &options).map_err(|e| anyhow!("{shown}: {e}"))?;

    let bearer = args
        .api_key
        .as_ref()
        .map(|key| {
            AsciiMetadataValue::try_from(format!("Bearer {}", key.trim()))
                .map_err(|_| anyhow!("--api-key must be printable ASCII"))
        })
        .transpose()?;
    let channel = connect(&args.connect).await?;
    let operator = operator_of(channel.clone(), bearer.as_ref()).await?;
    let caller = Caller {
        registry: RegistryClient::new(channel),
        bearer,
        operator,
        dry_run: args.dry_run,
    };

    let total = parsed.car_parks.len();
    let mut outcomes = futures_util::stream::iter(&parsed.car_parks)
        .map(|car_park| {
            let caller = caller.clone();
            async move { caller.import(car_park).await }
        })
        .buffered(IN_FLIGHT);
    let mut results = Vec::with_capacity(total);
    let mut last_progress = Instant::now();
    while let Some(outcome) = outcomes.next().await {
        results.push(outcome);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!("import: {} of {total} car parks done", results.len());
        }
    }
    drop(outcomes);
    let pruned = match args.prune {
        true => prune(&caller, &parsed, &options).await?,
        false => Vec::new(),
    };
    print_report(&parsed, &results, &pruned, &args)
}

/// With `--prune`: the operator's car parks in the region, with the prefix, that the
/// file does not have (nor names among its skipped records), each deleted (or, in a
/// dry run, listed).
async fn prune(
    caller: &Caller,
    parsed: &Parsed,
    options: &ImportOptions,
) -> anyhow::Result<Vec<(pb::CarPark, Outcome)>> {
    let kept: std::collections::HashSet<String> = parsed
        .car_parks
        .iter()
        .map(|c| c.id.clone())
        .chain(parsed.skipped.iter().filter_map(|s| s.id.clone()))
        .collect();
    let listed = caller
        .list(options.region.as_str())
        .await
        .map_err(|status| anyhow!("cannot list the car parks to prune: {}", describe(&status)))?;
    let mut pruned = Vec::new();
    for car_park in listed {
        if car_park.id.starts_with(&options.id_prefix) && !kept.contains(&car_park.id) {
            let outcome = caller.prune(&car_park.id).await;
            pruned.push((car_park, outcome));
        }
    }
    Ok(pruned)
}

/// The table (every car park but the unchanged ones, then the skipped records), a note
/// on default kinds and the totals; an error when any car park failed.
fn print_report(
    parsed: &Parsed,
    results: &[Outcome],
    pruned: &[(pb::CarPark, Outcome)],
    args: &ImportArgs,
) -> anyhow::Result<()> {
    let mut table = Table::new(vec![
        ("result", Align::Left),
        ("id", Align::Left),
        ("name", Align::Left),
        ("detail", Align::Left),
    ]);
    let (mut imported, mut updated, mut unchanged, mut failed) = (0, 0, 0, 0);
    let (mut deleted, pruned_rows) = (0, pruned.iter().map(|(c, o)| (c, o)));
    for (car_park, outcome) in parsed.car_parks.iter().zip(results).chain(pruned_rows) {
        let (result, detail) = match outcome {
            Outcome::Imported => {
                imported += 1;
                ("imported", summary(car_park))
            }
            Outcome::Updated(fields) => {
                updated += 1;
                let detail = if fields.is_empty() {
                    "registered meanwhile by the same operator".to_owned()
                } else {
                    format!("changed: {}", fields.join(", "))
                };
                ("updated", detail)
            }
            Outcome::Unchanged => {
                unchanged += 1;
                continue;
            }
            Outcome::Failed(why) => {
                failed += 1;
                ("failed", why.clone())
            }
            Outcome::Deleted => {
                deleted += 1;
                ("deleted", "not in the file (--prune)".to_owned())
            }
        };
        table.push(vec![
            result.to_owned(),
            car_park.id.clone(),
            car_park.name.clone(),
            detail,
        ]);
    }
    for s in &parsed.skipped {
        table.push(vec![
            "skipped".to_owned(),
            "-".to_owned(),
            s.source_ref.clone(),
            s.reason.clone(),
        ]);
    }
    if imported + updated + failed + deleted + parsed.skipped.len() > 0 {
        table.print()?;
    }
    if parsed.kind_defaulted > 0 {
        say(format_args!(
            "{} car park(s) name no kind in the source: {} (--default-kind)",
            parsed.kind_defaulted,
            args.default_kind.name()
        ))?;
    }
    let run = if args.dry_run {
        "dry run, nothing written"
    } else {
        "totals"
    };
    let deleted = match args.prune {
        true => format!(", deleted {deleted}"),
        false => String::new(),
    };
    say(format_args!(
        "{run}: imported {imported}, updated {updated}, unchanged {unchanged}, skipped {}, failed {failed}{deleted}",
        parsed.skipped.len()
    ))?;
    if failed > 0 {
        bail!(
            "{failed} of {} car parks failed",
            results.len() + pruned.len()
        );
    }
    Ok(())
}

/// `garage, standard 171`: what a new car park is.
fn summary(car_park: &pb::CarPark) -> String {
    let kind = pb::CarParkKind::try_from(car_park.kind)
        .ok()
        .and_then(|k| CarParkKind::try_from(k).ok())
        .map_or("unknown", CarParkKind::name);
    let spaces: Vec<String> = car_park
        .capacity
        .iter()
        .map(|c| format!("{} {}", super::client::category_name(c.category), c.spaces))
        .collect();
    format!("{kind}, {}", spaces.join(" "))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn parse(args: &[&str]) -> Result<ImportArgs, clap::Error> {
        TestCli::try_parse_from(std::iter::once("import").chain(args.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn command_line_checks_region_time_zone_and_prefix() {
        let base = [
            "parkapi-geojson",
            "Dresden.geojson",
            "--api-key",
            "k",
            "--region",
            "dresden",
            "--time-zone",
            "Europe/Berlin",
        ];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let args = with(&[]).expect("parses");
        assert_eq!(args.format, FormatArg::ParkapiGeojson);
        assert_eq!(args.default_kind, CarParkKind::SurfaceLot);
        assert_eq!(
            (args.id_prefix.as_str(), args.report_interval_secs),
            ("", None)
        );
        assert!(!args.dry_run);
        let args = with(&[
            "--default-kind",
            "garage",
            "--id-prefix",
            "pa.",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(args.default_kind, CarParkKind::Garage);
        assert!(args.dry_run);
        assert!(
            with(&["--region", "Dresden"]).is_err(),
            "regions are lower case"
        );
        assert!(with(&["--time-zone", "Mars/Olympus"]).is_err());
        assert!(with(&["--id-prefix", "a b"]).is_err());
        assert!(with(&["--report-interval-secs", "5"]).is_err());
        assert!(
            parse(&[
                "geojson",
                "x",
                "--api-key",
                "k",
                "--region",
                "r",
                "--time-zone",
                "UTC"
            ])
            .is_err()
        );
        // Without a credential, or without the region's time zone, nothing runs.
        assert!(parse(&["ngsi", "x", "--region", "r", "--time-zone", "UTC"]).is_err());
        assert!(parse(&["ngsi", "x", "--api-key", "k", "--region", "r"]).is_err());
    }
}
