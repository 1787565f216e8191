//! The demo's shared parking: residents, compounds and offices near the city's car
//! parks offer about 2,000 spaces through the public SharedParking API, as hosts with
//! demo driver tokens. Residents and compounds offer evenings and nights; offices
//! offer weekends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tonic::{Code, metadata::AsciiMetadataValue, transport::Channel};
use tracing::{info, warn};

use crate::domain::DriverId;
use crate::pb;
use crate::pb::shared_parking_client::SharedParkingClient;
use crate::rng::Rng;
use crate::tokens::{DEMO_SECRET, DEMO_TOKEN_SECONDS, DriverTokens};

use super::city::{DEMO_REGION, DEMO_TIME_ZONE};

/// How many offers the demo makes.
const OFFERS: usize = 2_000;
/// How many hosts make them (a host may offer several).
const HOSTS: usize = 600;

fn every_day(start_minute: i32, end_minute: i32) -> Vec<pb::WeeklyPeriod> {
    (1..=7)
        .map(|weekday| pb::WeeklyPeriod {
            weekday,
            start_minute,
            end_minute,
        })
        .collect()
}

/// Deterministic offers near the car parks of `city`: ids `so-0001` onwards, hosts
/// `demo-host-001` onwards.
pub fn generate_offers(city: &[pb::CarPark], seed: u64) -> Vec<(String, pb::SharedOffer)> {
    let mut rng = Rng::new(seed ^ 0x5348_4152_4544);
    (0..OFFERS)
        .filter_map(|i| {
            let anchor = city.get(rng.next_u64() as usize % city.len().max(1))?;
            let at = anchor.location.as_ref()?;
            // 60 to 300 m from the car park, any direction.
            let (distance, bearing) = (
                60.0 + rng.unit() * 240.0,
                rng.unit() * std::f64::consts::TAU,
            );
            let latitude = at.latitude + distance * bearing.cos() / 111_195.0;
            let longitude = at.longitude
                + distance * bearing.sin() / (111_195.0 * at.latitude.to_radians().cos());
            let kind = rng.unit();
            let (spaces, schedule, rate, what) = if kind < 0.75 {
                // A resident's own space, 19:00 to 08:00.
                (1, every_day(19 * 60, 8 * 60), 300, "Resident's space")
            } else if kind < 0.9 {
                // A compound's pool, 18:00 to 09:00.
                (
                    5 + (rng.next_u64() % 16) as i32,
                    every_day(18 * 60, 9 * 60),
                    400,
                    "Compound",
                )
            } else {
                // An office's pool, all weekend.
                let weekend = (6..=7)
                    .map(|weekday| pb::WeeklyPeriod {
                        weekday,
                        start_minute: 0,
                        end_minute: 1440,
                    })
                    .collect();
                (10 + (rng.next_u64() % 21) as i32, weekend, 500, "Office")
            };
            let host = format!("demo-host-{:03}", i % HOSTS + 1);
            Some((
                host,
                pb::SharedOffer {
                    id: format!("so-{:04}", i + 1),
                    region: DEMO_REGION.into(),
                    location: Some(pb::LatLng {
                        latitude,
                        longitude,
                    }),
                    address: format!("{what} near {}", anchor.name),
                    spaces,
                    time_zone: DEMO_TIME_ZONE.into(),
                    schedule,
                    hourly_rate_minor: rate,
                    cap_per_booking_minor: rate * 6,
                    currency: "CNY".into(),
                    ..Default::default()
                },
            ))
        })
        .collect()
}

/// Offers every one of `offers` through the server on `channel` as its host, retrying
/// while the city's car parks (which make the region known) are still being
/// registered. A server that does not take the demo's tokens is told once and left.
pub(super) async fn offer_all(
    channel: Channel,
    offers: Vec<(String, pb::SharedOffer)>,
    stop: CancellationToken,
) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut client = SharedParkingClient::new(channel);
    let mut made = 0;
    for (host, offer) in offers {
        let host = DriverId::parse(&host).expect("demo host ids are valid");
        let token = DriverTokens::issue(
            DEMO_SECRET.as_bytes(),
            &host,
            now,
            DEMO_TOKEN_SECONDS,
            None,
            None,
        );
        let bearer =
            AsciiMetadataValue::try_from(format!("Bearer {token}")).expect("a JWT is ASCII");
        loop {
            let mut request = tonic::Request::new(pb::OfferSpaceRequest {
                offer: Some(offer.clone()),
            });
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = client.offer_space(request) => result,
            };
            match result {
                Ok(_) => {
                    made += 1;
                    break;
                }
                // The region has no car park yet: the operators are still registering.
                Err(status)
                    if status.code() == Code::InvalidArgument
                        && status.message().contains("region") =>
                {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(status) => {
                    warn!(code = ?status.code(), message = status.message(), "demo hosts could not offer shared spaces");
                    return;
                }
            }
        }
    }
    info!(offers = made, "demo shared spaces offered");
}
