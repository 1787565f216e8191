//! The demo's drivers: `demo-driver-01` to `demo-driver-20`, each with a plate or two
//! linked for sensorless payment and a wallet topped up once a day, through the public
//! Sessions API with demo driver tokens (as the demo's hosts offer spaces). The
//! simulated operators' gates read their plates among the city's cars, so their
//! sessions are charged to their wallets.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tonic::{Code, metadata::AsciiMetadataValue, transport::Channel};
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::domain::DriverId;
use crate::pb;
use crate::pb::sessions_client::SessionsClient;
use crate::rng::Rng;
use crate::tokens::{DEMO_SECRET, DEMO_TOKEN_SECONDS, DriverTokens};

use super::city::DEMO_TIME_ZONE;
use super::simulation::demo_plate;

/// How many demo drivers there are.
pub const DEMO_DRIVERS: usize = 20;
/// What each demo driver tops up a day, in fen: more than a day of their parking
/// usually costs, so a wallet rarely runs dry (and when it does, the charge is refused
/// and becomes arrears, as it would for anyone).
const DAILY_TOP_UP_MINOR: i64 = 30_000;
/// How often the drivers look whether a new day has begun (and retry what failed).
const CHECK_EVERY: Duration = Duration::from_secs(600);

/// One demo driver and the plates they link.
#[derive(Debug, Clone)]
pub struct DemoDriver {
    /// `demo-driver-01` onwards; a token for it signed with the demo secret is theirs.
    pub id: String,
    /// Their plates and colours, linked to pay from the wallet.
    pub plates: Vec<(String, pb::PlateColor)>,
}

/// The demo drivers for `seed` (the same seed, the same drivers and plates): one in
/// four has a second car, one plate in five is a new-energy (green) one.
pub fn demo_drivers(seed: u64) -> Vec<DemoDriver> {
    let mut rng = Rng::new(seed ^ 0x4452_4956_4552);
    let mut taken = std::collections::HashSet::new();
    (1..=DEMO_DRIVERS)
        .map(|n| {
            let cars = 1 + usize::from(rng.chance(0.25));
            let plates = (0..cars)
                .map(|_| {
                    loop {
                        let color = if rng.chance(0.2) {
                            pb::PlateColor::Green
                        } else {
                            pb::PlateColor::Blue
                        };
                        let plate = demo_plate(&mut rng, color);
                        if taken.insert(plate.clone()) {
                            break (plate, color);
                        }
                    }
                })
                .collect();
            DemoDriver {
                id: format!("demo-driver-{n:02}"),
                plates,
            }
        })
        .collect()
}

/// The idempotency key of a demo driver's top-up on the local `day`: a restart on the
/// same day tops up nothing more.
fn top_up_key(day: jiff::civil::Date) -> String {
    format!("demo-daily-{day}")
}

/// Why a demo driver's call ended the drivers' work: the server refuses the demo's
/// tokens, or shutdown.
enum Stop {
    Refused(tonic::Status),
    Shutdown,
}

/// Links every demo driver's plates once, and tops every wallet up once a local day
/// (by `clock`), until `stop`. Both are idempotent on the server (linking one's own
/// plate again writes nothing; a day's top-up has the day in its key), so a demo
/// restarted on a store that kept them doubles nothing. A server that does not take
/// the demo's tokens is told once and left.
pub(super) async fn run_drivers(
    channel: Channel,
    drivers: Vec<DemoDriver>,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let zone = jiff::tz::TimeZone::get(DEMO_TIME_ZONE).expect("the demo's zone is known");
    let mut client = SessionsClient::new(channel);
    let mut linked: Vec<Vec<bool>> = drivers
        .iter()
        .map(|d| vec![false; d.plates.len()])
        .collect();
    let mut topped_up: Vec<Option<jiff::civil::Date>> = vec![None; drivers.len()];
    let mut told = false;
    loop {
        let day = clock.now().to_zoned(zone.clone()).date();
        match pass(
            &mut client,
            &drivers,
            day,
            &mut linked,
            &mut topped_up,
            &stop,
        )
        .await
        {
            Ok(()) => {}
            Err(Stop::Shutdown) => return,
            Err(Stop::Refused(status)) => {
                warn!(code = ?status.code(), message = status.message(), "demo drivers could not link plates or top up");
                return;
            }
        }
        if !told && linked.iter().flatten().all(|l| *l) && topped_up.iter().all(Option::is_some) {
            told = true;
            let plates = linked.iter().flatten().count();
            info!(
                drivers = drivers.len(),
                plates, "demo drivers linked their plates and topped up"
            );
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

/// One pass over the drivers: links what is not linked yet, tops up who has not on
/// `day`. A call that fails for a passing reason is tried again on the next pass.
async fn pass(
    client: &mut SessionsClient<Channel>,
    drivers: &[DemoDriver],
    day: jiff::civil::Date,
    linked: &mut [Vec<bool>],
    topped_up: &mut [Option<jiff::civil::Date>],
    stop: &CancellationToken,
) -> Result<(), Stop> {
    // Tokens are checked against the real clock, whatever clock the demo runs on.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (d, driver) in drivers.iter().enumerate() {
        let id = DriverId::parse(&driver.id).expect("demo driver ids are valid");
        let token = DriverTokens::issue(
            DEMO_SECRET.as_bytes(),
            &id,
            now,
            DEMO_TOKEN_SECONDS,
            None,
            None,
        );
        let bearer =
            AsciiMetadataValue::try_from(format!("Bearer {token}")).expect("a JWT is ASCII");
        for (p, (plate, color)) in driver.plates.iter().enumerate() {
            if linked[d][p] {
                continue;
            }
            let request = authed(
                &bearer,
                pb::LinkPlateRequest {
                    plate: plate.clone(),
                    plate_color: *color as i32,
                    payment_method: pb::PaymentMethod::Wallet as i32,
                },
            );
            let result = tokio::select! {
                () = stop.cancelled() => return Err(Stop::Shutdown),
                result = client.link_plate(request) => result,
            };
            match result {
                Ok(_) => linked[d][p] = true,
                Err(status) => check_refusal(&driver.id, "link a plate", status)?,
            }
        }
        if topped_up[d] == Some(day) {
            continue;
        }
        let request = authed(
            &bearer,
            pb::TopUpRequest {
                amount_minor: DAILY_TOP_UP_MINOR,
                idempotency_key: top_up_key(day),
            },
        );
        let result = tokio::select! {
            () = stop.cancelled() => return Err(Stop::Shutdown),
            result = client.top_up(request) => result,
        };
        match result {
            Ok(_) => topped_up[d] = Some(day),
            Err(status) => check_refusal(&driver.id, "top up", status)?,
        }
    }
    Ok(())
}

fn authed<T>(bearer: &AsciiMetadataValue, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// What a failed call means: the end, if the server refuses the demo's tokens;
/// otherwise nothing more than a retry on the next pass (a plate someone else linked
/// stays theirs, and is retried in case they unlink it).
fn check_refusal(driver: &str, what: &str, status: tonic::Status) -> Result<(), Stop> {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented => {
            Err(Stop::Refused(status))
        }
        code => {
            // The server's messages name no plate.
            debug!(
                driver,
                ?code,
                message = status.message(),
                "a demo driver could not {what} yet"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_are_the_same_for_a_seed_and_their_plates_distinct() {
        let (a, b) = (demo_drivers(2026), demo_drivers(2026));
        assert_eq!(a.len(), DEMO_DRIVERS);
        assert_eq!(a[0].id, "demo-driver-01");
        assert_eq!(a[19].id, "demo-driver-20");
        let plates: Vec<_> = a.iter().flat_map(|d| d.plates.clone()).collect();
        let again: Vec<_> = b.iter().flat_map(|d| d.plates.clone()).collect();
        assert_eq!(plates, again);
        let distinct: std::collections::HashSet<_> = plates.iter().map(|(p, _)| p).collect();
        assert_eq!(distinct.len(), plates.len());
        assert!(a.iter().all(|d| (1..=2).contains(&d.plates.len())));
        assert!(plates.iter().any(|(_, c)| *c == pb::PlateColor::Blue));
        let other: Vec<_> = demo_drivers(7).into_iter().flat_map(|d| d.plates).collect();
        assert_ne!(plates, other, "another seed, other plates");
        for d in &a {
            assert!(DriverId::parse(&d.id).is_ok());
        }
        let day: jiff::civil::Date = "2026-11-30".parse().unwrap();
        assert_eq!(top_up_key(day), "demo-daily-2026-11-30");
    }
}
