//! Plate-payment subcommands (无感支付): `plates link|unlink|list` and `wallet` (with
//! `wallet top-up`) as a driver with a token; `sessions` as a driver (their own) or an
//! operator (its car parks'); `settlement` as an operator.

use anyhow::{Context as _, anyhow, bail};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use tonic::metadata::AsciiMetadataValue;

use citypark::pb;
use citypark::pb::sessions_client::SessionsClient;

use super::client::{
    Align, ConnectArgs, Named, Table, by_name, connect, failed, format_money, say,
};
use super::reserve::time_of;

/// API enums as the command line names them: the proto's value names without their
/// prefix, in lower case (`PLATE_COLOR_BLUE` is `blue`, `SESSION_STATE_CLOSED_PAID`
/// is `closed_paid`); a unit test holds each table to the proto.
macro_rules! api_names {
    ($($ty:ty { $($variant:ident = $name:literal),+ $(,)? })*) => {$(
        impl Named for $ty {
            fn all() -> &'static [Self] {
                &[$(<$ty>::$variant),+]
            }
            fn name(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $name,)+
                    _ => "unknown",
                }
            }
            fn parse(name: &str) -> Option<Self> {
                Self::all().iter().copied().find(|v| v.name() == name)
            }
        }
    )*};
}

api_names! {
    pb::PlateColor {
        Blue = "blue",
        Yellow = "yellow",
        Green = "green",
        White = "white",
        Black = "black",
    }
    pb::SessionState {
        Open = "open",
        ClosedPaid = "closed_paid",
        ClosedUnpaid = "closed_unpaid",
        ClosedFree = "closed_free",
        Voided = "voided",
    }
    pb::PaymentMethod {
        Wallet = "wallet",
        Gateway = "gateway",
        Barrier = "barrier",
    }
    pb::PaymentStatus {
        NotNeeded = "not_needed",
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// The name of an API enum value; "unknown" for UNSPECIFIED or a value this client
/// does not know (a newer server's).
fn name_of<T: Named + TryFrom<i32>>(value: i32) -> &'static str {
    T::try_from(value).ok().map_or("unknown", T::name)
}

/// How a linked plate's parking is paid (BARRIER is what unlinked plates do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LinkMethod {
    /// The built-in wallet, which `citypark wallet top-up` credits.
    Wallet,
    /// The external payment gateway (refused by a server that has none).
    Gateway,
}

impl From<LinkMethod> for pb::PaymentMethod {
    fn from(m: LinkMethod) -> Self {
        match m {
            LinkMethod::Wallet => Self::Wallet,
            LinkMethod::Gateway => Self::Gateway,
        }
    }
}

/// Who calls, for commands only a driver may run.
#[derive(Debug, Args)]
pub struct DriverArgs {
    /// A driver's bearer token (`citypark token --driver alice` prints one for the
    /// demo).
    // Optional for clap's derive only: `wallet top-up` leaves `wallet`'s own unset.
    #[arg(long, env = "CITYPARK_TOKEN", hide_env_values = true, required = true)]
    token: Option<String>,
}

/// `message` with `authorization: Bearer <credential>`; `flag` names the credential's
/// flag in the error.
fn authorized<T>(message: T, credential: &str, flag: &str) -> anyhow::Result<tonic::Request<T>> {
    let value = AsciiMetadataValue::try_from(format!("Bearer {}", credential.trim()))
        .map_err(|_| anyhow!("{flag} must be printable ASCII"))?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// `message` with the credential (value, flag) if there is one: an operator proven by
/// its client certificate sends none.
fn with_credential<T>(
    message: T,
    credential: Option<(&str, &str)>,
) -> anyhow::Result<tonic::Request<T>> {
    match credential {
        Some((value, flag)) => authorized(message, value, flag),
        None => Ok(tonic::Request::new(message)),
    }
}

impl DriverArgs {
    fn bearer<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let token = self.token.as_deref().context("--token is needed")?;
        authorized(message, token, "--token")
    }
}

/// `plates` subcommands.
#[derive(Debug, Subcommand)]
pub enum PlatesCommand {
    /// Link a plate to you: its sessions are then charged to you when it leaves.
    ///
    /// Linking your own plate again changes its colour and payment method; a plate
    /// another driver linked is refused until they unlink it. At most 5 plates each.
    Link(LinkArgs),
    /// Unlink one of your plates: its later entries are no longer charged to you.
    Unlink(UnlinkArgs),
    /// List your linked plates.
    List(ListPlatesArgs),
}

/// Arguments of `plates link`.
#[derive(Debug, Args)]
pub struct LinkArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    driver: DriverArgs,
    /// The plate, e.g. 鲁B12345 (spaces, dots and hyphens are ignored).
    #[arg(long)]
    plate: String,
    /// The plate's colour (blue: small car; yellow: large vehicle; green: new energy).
    #[arg(long, value_parser = by_name::<pb::PlateColor>())]
    plate_color: Option<pb::PlateColor>,
    /// How its parking is paid.
    #[arg(long, value_enum, default_value_t = LinkMethod::Wallet)]
    payment_method: LinkMethod,
}

/// Arguments of `plates unlink`.
#[derive(Debug, Args)]
pub struct UnlinkArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    driver: DriverArgs,
    /// The plate to unlink.
    #[arg(long)]
    plate: String,
}

/// Arguments of `plates list`.
#[derive(Debug, Args)]
pub struct ListPlatesArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    driver: DriverArgs,
}

/// Arguments of `sessions`.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("operator").multiple(true).args(["api_key", "tls_client_cert_file"])
))]
pub struct SessionsArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// A driver's bearer token: lists the sessions charged to you (your linked
    /// plates').
    #[arg(
        long,
        env = "CITYPARK_TOKEN",
        hide_env_values = true,
        required_unless_present_any = ["api_key", "tls_client_cert_file"]
    )]
    token: Option<String>,
    /// An operator's API key: lists the sessions at your car parks (an operator's
    /// client certificate does the same; either is used rather than --token when both
    /// are given).
    #[arg(long, env = "CITYPARK_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print one session with its details (as its driver, or as its car park's
    /// operator).
    #[arg(long, conflicts_with_all = ["car_park", "state", "from", "to", "limit"])]
    id: Option<String>,
    /// Only this car park (operators).
    #[arg(long, requires = "operator")]
    car_park: Option<String>,
    /// Only this state (operators).
    #[arg(long, requires = "operator", value_parser = by_name::<pb::SessionState>())]
    state: Option<pb::SessionState>,
    /// Only sessions that entered (or, without an entry, left) at or after this time,
    /// RFC 3339 (operators).
    #[arg(long, requires = "operator", value_parser = parse_time)]
    from: Option<prost_types::Timestamp>,
    /// Only sessions that entered (or, without an entry, left) before this time, RFC
    /// 3339 (operators).
    #[arg(long, requires = "operator", value_parser = parse_time)]
    to: Option<prost_types::Timestamp>,
    /// Most sessions to print, newest entry first (pages are followed up to it).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
}

/// Arguments of `settlement`.
#[derive(Debug, Args)]
pub struct SettlementArgs {
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
    /// The local day, YYYY-MM-DD, in the time zone of your car parks.
    #[arg(long, value_parser = parse_day)]
    day: jiff::civil::Date,
}

/// Arguments of `wallet`: without a subcommand, shows the wallet.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WalletArgs {
    #[command(subcommand)]
    command: Option<WalletCommand>,
    #[command(flatten)]
    show: ShowWalletArgs,
}

/// Arguments of `wallet` itself.
#[derive(Debug, Args)]
pub struct ShowWalletArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    driver: DriverArgs,
}

/// `wallet` subcommands.
#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Credit your wallet. In production an app's backend makes this call once the
    /// payment provider confirms a payment; the same --key credits once.
    TopUp(TopUpArgs),
}

/// Arguments of `wallet top-up`.
#[derive(Debug, Args)]
pub struct TopUpArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(flatten)]
    driver: DriverArgs,
    /// The amount in minor units (fen): 1 to 1000000000.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=1_000_000_000))]
    amount_minor: i64,
    /// Idempotency key, 1 to 64 characters without spaces (the external payment's
    /// id): running again with the same key credits nothing more.
    #[arg(long)]
    key: String,
}

/// An RFC 3339 time, e.g. 2026-11-30T10:00:00+08:00.
pub(crate) fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    let t: jiff::Timestamp = s
        .trim()
        .parse()
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-30T10:00:00+08:00 ({e})"))?;
    Ok(prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    })
}

fn parse_day(s: &str) -> Result<jiff::civil::Date, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a day: expected YYYY-MM-DD"))
}

async fn client(
    connect_args: &ConnectArgs,
) -> anyhow::Result<SessionsClient<tonic::transport::Channel>> {
    Ok(SessionsClient::new(connect(connect_args).await?))
}

fn print_plates(plates: &[pb::LinkedPlate]) -> std::io::Result<()> {
    if plates.is_empty() {
        return say("no linked plates");
    }
    let mut table = Table::new(vec![
        ("plate", Align::Left),
        ("colour", Align::Left),
        ("payment", Align::Left),
        ("linked", Align::Left),
    ]);
    for p in plates {
        table.push(vec![
            p.plate.clone(),
            name_of::<pb::PlateColor>(p.plate_color).to_owned(),
            name_of::<pb::PaymentMethod>(p.payment_method).to_owned(),
            time_of(&p.linked_at),
        ]);
    }
    table.print()
}

pub async fn plates(command: PlatesCommand) -> anyhow::Result<()> {
    match command {
        PlatesCommand::Link(args) => {
            let request = args.driver.bearer(pb::LinkPlateRequest {
                plate: args.plate,
                plate_color: args.plate_color.map_or(0, i32::from),
                payment_method: pb::PaymentMethod::from(args.payment_method).into(),
            })?;
            let linked = client(&args.connect)
                .await?
                .link_plate(request)
                .await
                .map_err(failed("LinkPlate"))?
                .into_inner()
                .plate
                .context("LinkPlate answered without the plate")?;
            print_plates(std::slice::from_ref(&linked))?;
        }
        PlatesCommand::Unlink(args) => {
            let request = args.driver.bearer(pb::UnlinkPlateRequest {
                plate: args.plate.clone(),
            })?;
            client(&args.connect)
                .await?
                .unlink_plate(request)
                .await
                .map_err(failed("UnlinkPlate"))?;
            say(format_args!("unlinked {}", args.plate))?;
        }
        PlatesCommand::List(args) => {
            let request = args.driver.bearer(pb::ListMyPlatesRequest {})?;
            let plates = client(&args.connect)
                .await?
                .list_my_plates(request)
                .await
                .map_err(failed("ListMyPlates"))?
                .into_inner()
                .plates;
            print_plates(&plates)?;
        }
    }
    Ok(())
}

/// A session's fee: "-" while it is open (nothing is priced before the exit).
fn fee(s: &pb::ParkingSession) -> String {
    if s.state == i32::from(pb::SessionState::Open) {
        "-".to_owned()
    } else {
        format_money(s.fee_minor, &s.currency)
    }
}

fn print_sessions(sessions: &[pb::ParkingSession]) -> std::io::Result<()> {
    let mut table = Table::new(vec![
        ("id", Align::Left),
        ("car park", Align::Left),
        ("plate", Align::Left),
        ("state", Align::Left),
        ("entry", Align::Left),
        ("exit", Align::Left),
        ("fee", Align::Right),
        ("payment", Align::Left),
    ]);
    for s in sessions {
        let payment = match &s.payment {
            // Decided at the exit: an open session has no payment yet.
            Some(p) if p.method != i32::from(pb::PaymentMethod::Unspecified) => format!(
                "{} {}",
                name_of::<pb::PaymentMethod>(p.method),
                name_of::<pb::PaymentStatus>(p.status)
            ),
            _ => "-".to_owned(),
        };
        table.push(vec![
            s.id.clone(),
            s.car_park_id.clone(),
            // Empty once the plate was forgotten after the retention period.
            if s.plate.is_empty() {
                "-".to_owned()
            } else {
                s.plate.clone()
            },
            name_of::<pb::SessionState>(s.state).to_owned(),
            time_of(&s.entry_time),
            time_of(&s.exit_time),
            fee(s),
            payment,
        ]);
    }
    table.print()
}

/// The details of one session the table leaves out, one line each.
fn details(s: &pb::ParkingSession) -> Vec<String> {
    let mut lines = Vec::new();
    let mut read = vec![format!(
        "plate colour {}",
        name_of::<pb::PlateColor>(s.plate_color)
    )];
    if !s.lane.is_empty() {
        read.push(format!("lane {}", s.lane));
    }
    read.push(format!("tariff version {}", s.tariff_version));
    lines.push(read.join(", "));
    if !s.driver_id.is_empty() {
        lines.push(format!("charged to driver {}", s.driver_id));
    }
    if !s.reservation_id.is_empty() {
        lines.push(format!("prepaid by {}", s.reservation_id));
    }
    if let Some(p) = &s.payment {
        if p.attempts > 0 {
            lines.push(format!("charge attempts {}", p.attempts));
        }
        if !p.receipt_id.is_empty() {
            lines.push(format!("receipt {}", p.receipt_id));
        }
        if !p.failure.is_empty() {
            lines.push(format!("failure: {}", p.failure));
        }
    }
    if s.arrears_at_entry {
        lines.push("its driver owed arrears when it entered".to_owned());
    }
    if s.clock_skew {
        lines.push("the exit was read before the entry (device clocks disagree)".to_owned());
    }
    if !s.void_reason.is_empty() {
        lines.push(format!("voided: {}", s.void_reason));
    }
    lines
}

pub async fn sessions(args: SessionsArgs) -> anyhow::Result<()> {
    // An operator's key or certificate wins over a driver's token, so a token left in
    // the environment does not hide the operator's view asked for.
    let operator = args.api_key.is_some() || args.connect.has_client_certificate();
    let credential = match (&args.api_key, &args.token) {
        (Some(key), _) => Some((key.as_str(), "--api-key")),
        // A client certificate proves the operator: no header to add.
        (None, _) if operator => None,
        (None, Some(token)) => Some((token.as_str(), "--token")),
        (None, None) => bail!("--token or --api-key is needed"),
    };
    let mut client = client(&args.connect).await?;
    if let Some(id) = args.id.clone() {
        let s = client
            .get_session(with_credential(pb::GetSessionRequest { id }, credential)?)
            .await
            .map_err(failed("GetSession"))?
            .into_inner()
            .session
            .context("GetSession answered without a session")?;
        print_sessions(std::slice::from_ref(&s))?;
        for line in details(&s) {
            say(line)?;
        }
        return Ok(());
    }
    let limit = args.limit as usize;
    let mut all = Vec::new();
    let mut page_token = String::new();
    let more = loop {
        // The server's pages are at most 500.
        let page_size = (limit - all.len()).min(500) as i32;
        let (sessions, next) = if operator {
            let message = pb::ListSessionsRequest {
                car_park_id: args.car_park.clone().unwrap_or_default(),
                state: args.state.map_or(0, i32::from),
                from: args.from,
                to: args.to,
                page_size,
                page_token,
            };
            let page = client
                .list_sessions(with_credential(message, credential)?)
                .await
                .map_err(failed("ListSessions"))?
                .into_inner();
            (page.sessions, page.next_page_token)
        } else {
            let message = pb::ListMySessionsRequest {
                page_size,
                page_token,
            };
            let page = client
                .list_my_sessions(with_credential(message, credential)?)
                .await
                .map_err(failed("ListMySessions"))?
                .into_inner();
            (page.sessions, page.next_page_token)
        };
        all.extend(sessions);
        if next.is_empty() {
            break false;
        }
        if all.len() >= limit {
            break true;
        }
        page_token = next;
    };
    if all.is_empty() {
        say("no parking sessions")?;
        return Ok(());
    }
    print_sessions(&all)?;
    if more {
        say(format_args!("(the newest {limit}; --limit shows more)"))?;
    }
    Ok(())
}

pub async fn settlement(args: SettlementArgs) -> anyhow::Result<()> {
    let message = pb::GetSettlementRequest {
        // Empty: the caller's own, which is the only one an operator may settle.
        operator: String::new(),
        day: args.day.to_string(),
    };
    let credential = args.api_key.as_deref().map(|key| (key, "--api-key"));
    let request = with_credential(message, credential)?;
    let s = client(&args.connect)
        .await?
        .get_settlement(request)
        .await
        .map_err(failed("GetSettlement"))?
        .into_inner();
    let money = |minor| format_money(minor, &s.currency);
    say(format_args!("settlement of {} for {}", s.operator, s.day))?;
    say(format_args!(
        "sessions closed  {} paid, {} unpaid, {} free, {} voided",
        s.sessions_paid, s.sessions_unpaid, s.sessions_free, s.sessions_voided
    ))?;
    let rows = [
        (
            "revenue",
            s.revenue_minor,
            "charged through citypark (wallets, gateway)",
        ),
        ("refunds", s.refunds_minor, "refunded on the day"),
        (
            "arrears",
            s.arrears_minor,
            "charges refused: owed by drivers",
        ),
        (
            "at the barrier",
            s.barrier_minor,
            "to collect at the barrier",
        ),
        (
            "pending",
            s.pending_minor,
            "being charged: to revenue, or arrears if refused",
        ),
    ];
    let width = rows
        .iter()
        .map(|(_, m, _)| money(*m).chars().count())
        .max()
        .unwrap_or(0);
    for (what, minor, meaning) in rows {
        say(format_args!(
            "{what:<16} {:>width$}  {meaning}",
            money(minor)
        ))?;
    }
    Ok(())
}

pub async fn wallet(args: WalletArgs) -> anyhow::Result<()> {
    if let Some(WalletCommand::TopUp(args)) = args.command {
        let request = args.driver.bearer(pb::TopUpRequest {
            amount_minor: args.amount_minor,
            idempotency_key: args.key,
        })?;
        let done = client(&args.connect)
            .await?
            .top_up(request)
            .await
            .map_err(failed("TopUp"))?
            .into_inner();
        let entry = done.entry.context("TopUp answered without its entry")?;
        say(format_args!(
            "topped up {} ({}): balance {}",
            format_money(entry.amount_minor, &entry.currency),
            entry.id,
            format_money(done.balance_minor, &entry.currency)
        ))?;
        return Ok(());
    }
    let args = args.show;
    let request = args.driver.bearer(pb::GetWalletRequest {})?;
    let w = client(&args.connect)
        .await?
        .get_wallet(request)
        .await
        .map_err(failed("GetWallet"))?
        .into_inner();
    let money = |minor| format_money(minor, &w.currency);
    say(format_args!(
        "balance {}, overdraft {}, arrears {}",
        money(w.balance_minor),
        money(w.overdraft_minor),
        money(w.arrears_minor)
    ))?;
    if w.entries.is_empty() {
        say("no entries yet")?;
        return Ok(());
    }
    let mut table = Table::new(vec![
        ("at", Align::Left),
        ("kind", Align::Left),
        ("amount", Align::Right),
        ("balance", Align::Right),
        ("entry", Align::Left),
    ]);
    for e in &w.entries {
        // A charge takes money out of the wallet; top-ups and refunds put it in.
        let signed = if e.kind == "charge" {
            -e.amount_minor
        } else {
            e.amount_minor
        };
        table.push(vec![
            time_of(&e.at),
            e.kind.clone(),
            format_money(signed, &e.currency),
            format_money(e.balance_after, &e.currency),
            e.id.clone(),
        ]);
    }
    table.print()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;
    use crate::client::ClientCommand;

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
    fn names_are_the_protos() {
        fn check<T: Named + std::fmt::Debug>(prefix: &str, proto: impl Fn(T) -> &'static str) {
            for v in T::all() {
                let wire = proto(*v).strip_prefix(prefix).expect("the prefix");
                assert_eq!(v.name(), wire.to_ascii_lowercase(), "{v:?}");
                assert_eq!(T::parse(v.name()).map(T::name), Some(v.name()));
            }
        }
        check::<pb::PlateColor>("PLATE_COLOR_", |v| v.as_str_name());
        check::<pb::SessionState>("SESSION_STATE_", |v| v.as_str_name());
        check::<pb::PaymentMethod>("PAYMENT_METHOD_", |v| v.as_str_name());
        check::<pb::PaymentStatus>("PAYMENT_STATUS_", |v| v.as_str_name());
        assert_eq!(pb::SessionState::all().len(), 5, "every state is listed");
        assert_eq!(name_of::<pb::PlateColor>(0), "unknown");
        assert_eq!(name_of::<pb::SessionState>(99), "unknown");
    }

    #[test]
    fn plates_commands_parse() {
        TestCli::command().debug_assert();
        let driver = ["--token", "t"];
        let with = |extra: &[&str]| parse(&[extra, &driver[..]].concat());
        let Ok(ClientCommand::Plates(PlatesCommand::Link(link))) = with(&[
            "plates",
            "link",
            "--plate",
            "鲁B 12345",
            "--plate-color",
            "Green",
        ]) else {
            panic!("plates link parses");
        };
        assert_eq!(link.plate_color, Some(pb::PlateColor::Green));
        assert_eq!(link.payment_method, LinkMethod::Wallet);
        let Ok(ClientCommand::Plates(PlatesCommand::Link(link))) = with(&[
            "plates",
            "link",
            "--plate",
            "X1",
            "--payment-method",
            "gateway",
        ]) else {
            panic!("a gateway link parses");
        };
        assert_eq!(
            pb::PaymentMethod::from(link.payment_method),
            pb::PaymentMethod::Gateway
        );
        // Unlinked plates pay at the barrier: not a method to link with.
        assert!(
            with(&[
                "plates",
                "link",
                "--plate",
                "X1",
                "--payment-method",
                "barrier"
            ])
            .is_err()
        );
        assert!(with(&["plates", "link", "--plate", "X1", "--plate-color", "red"]).is_err());
        assert!(with(&["plates", "link"]).is_err());
        assert!(with(&["plates", "unlink", "--plate", "X1"]).is_ok());
        assert!(with(&["plates", "list"]).is_ok());
        assert!(with(&["plates"]).is_err());
    }

    #[test]
    fn sessions_take_a_driver_token_or_an_operator_key() {
        let Ok(ClientCommand::Sessions(mine)) = parse(&["sessions", "--token", "t"]) else {
            panic!("a driver's sessions parse");
        };
        assert_eq!((mine.limit, mine.api_key.is_none()), (100, true));
        let Ok(ClientCommand::Sessions(theirs)) = parse(&[
            "sessions",
            "--api-key",
            "k",
            "--car-park",
            "g1",
            "--state",
            "closed-paid",
            "--from",
            "2026-11-30T00:00:00+08:00",
            "--to",
            "2026-12-01T00:00:00Z",
            "--limit",
            "600",
        ]) else {
            panic!("an operator's filtered sessions parse");
        };
        assert_eq!(theirs.state, Some(pb::SessionState::ClosedPaid));
        assert_eq!(theirs.from.map(|t| t.seconds), Some(1_795_968_000));
        assert_eq!(theirs.limit, 600);
        // Filters are the operator's: a driver's token alone does not take them.
        assert!(parse(&["sessions", "--token", "t", "--state", "open"]).is_err());
        assert!(parse(&["sessions", "--api-key", "k", "--from", "yesterday"]).is_err());
        assert!(parse(&["sessions", "--api-key", "k", "--state", "paid"]).is_err());
        assert!(parse(&["sessions", "--token", "t", "--limit", "0"]).is_err());
        assert!(parse(&["sessions", "--token", "t", "--id", "g1~2"]).is_ok());
        assert!(
            parse(&[
                "sessions",
                "--api-key",
                "k",
                "--id",
                "g1~2",
                "--state",
                "open"
            ])
            .is_err()
        );
    }

    #[test]
    fn settlement_and_wallet_parse() {
        let Ok(ClientCommand::Settlement(day)) =
            parse(&["settlement", "--api-key", "k", "--day", "2026-11-30"])
        else {
            panic!("settlement parses");
        };
        assert_eq!(day.day.to_string(), "2026-11-30");
        assert!(parse(&["settlement", "--api-key", "k", "--day", "30/11/2026"]).is_err());
        assert!(parse(&["settlement", "--api-key", "k"]).is_err());

        let Ok(ClientCommand::Wallet(show)) = parse(&["wallet", "--token", "t"]) else {
            panic!("wallet parses");
        };
        assert!(show.command.is_none());
        let Ok(ClientCommand::Wallet(top_up)) = parse(&[
            "wallet",
            "top-up",
            "--token",
            "t",
            "--amount-minor",
            "2000",
            "--key",
            "pay-1",
        ]) else {
            panic!("wallet top-up parses");
        };
        let Some(WalletCommand::TopUp(top_up)) = top_up.command else {
            panic!("the top-up subcommand");
        };
        assert_eq!((top_up.amount_minor, top_up.key.as_str()), (2000, "pay-1"));
        let top_up = ["wallet", "top-up", "--token", "t", "--key", "k"];
        let with = |extra: &[&str]| parse(&[&top_up[..], extra].concat());
        assert!(with(&["--amount-minor", "0"]).is_err());
        assert!(with(&["--amount-minor", "1000000001"]).is_err());
        assert!(parse(&["wallet", "top-up", "--token", "t", "--amount-minor", "5"]).is_err());
        // The wallet's own flags go after the subcommand, not before it.
        assert!(
            parse(&[
                "wallet",
                "--token",
                "t",
                "top-up",
                "--amount-minor",
                "5",
                "--key",
                "k"
            ])
            .is_err()
        );
    }

    #[test]
    fn session_details_say_what_the_table_leaves_out() {
        let s = pb::ParkingSession {
            id: "g1~2".into(),
            state: pb::SessionState::ClosedUnpaid.into(),
            plate_color: pb::PlateColor::Blue.into(),
            lane: "in-1".into(),
            tariff_version: 2,
            driver_id: "ann".into(),
            fee_minor: 1500,
            currency: "CNY".into(),
            payment: Some(pb::Payment {
                method: pb::PaymentMethod::Wallet.into(),
                status: pb::PaymentStatus::Failed.into(),
                attempts: 1,
                failure: "the balance does not cover it".into(),
                ..Default::default()
            }),
            arrears_at_entry: true,
            ..Default::default()
        };
        assert_eq!(
            details(&s),
            [
                "plate colour blue, lane in-1, tariff version 2",
                "charged to driver ann",
                "charge attempts 1",
                "failure: the balance does not cover it",
                "its driver owed arrears when it entered",
            ]
        );
        assert_eq!(fee(&s), "¥15.00");
        let open = pb::ParkingSession {
            state: pb::SessionState::Open.into(),
            ..s
        };
        assert_eq!(fee(&open), "-");
    }
}
