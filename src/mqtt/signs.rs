//! Availability for roadside guidance signs: each car park's counts, retained on
//! `citypark/v1/availability/<region>/<car park id>`, at most once a second each.
//!
//! Retained, so a sign that connects (or reconnects after a power cut) gets every car
//! park's current state from the broker at once, without asking citypark. The counts
//! come from a watch over the whole world, the machinery gRPC watchers use: a car park
//! registered later is included, and a publisher that falls behind is resynced with a
//! snapshot rather than holding back ingest.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use rumqttc::v5::{
    AsyncClient,
    mqttbytes::{QoS, v5::PublishProperties},
};
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::AVAILABILITY;
use crate::{
    domain::{Availability, BoundingBox, CarParkId, LatLng, RegionId},
    grpc::feeds::availability_json,
    metrics,
    service::{Service, WatchEvent, WatchSelector},
};

/// The least time between two publications of one car park: a sign redraws no faster,
/// and a car park reporting every entry does not flood the broker.
const EVERY: Duration = Duration::from_secs(1);

/// What is known of one car park's publications.
struct Slot {
    /// The region it was published under (its topic's).
    region: RegionId,
    /// When it was last published.
    sent: Instant,
    /// The newest state, not yet published (it came within `EVERY` of the last).
    /// Written as JSON only when it goes out, so the states it replaced cost nothing.
    pending: Option<Availability>,
}

/// Every car park's events: the current state of each, then its changes.
fn watch_all(service: &Service, stop: &CancellationToken) -> Option<mpsc::Receiver<WatchEvent>> {
    let world = BoundingBox::new(
        LatLng::new(-90.0, -180.0).expect("a corner of the world"),
        LatLng::new(90.0, 180.0).expect("a corner of the world"),
    )
    .expect("the world is a box");
    let watch = service.watch(
        WatchSelector::Area(world),
        "mqtt-availability".into(),
        stop.clone(),
    );
    watch
        .inspect_err(|error| tracing::error!(%error, "MQTT availability not published"))
        .ok()
}

/// Publishes availability until `stop`; when `fresh` says the broker lost its retained
/// messages, every car park's state again.
pub(super) async fn serve(
    service: Service,
    client: AsyncClient,
    fresh: Arc<Notify>,
    stop: CancellationToken,
) {
    let Some(mut events) = watch_all(&service, &stop) else {
        return;
    };
    let mut slots: HashMap<CarParkId, Slot> = HashMap::new();
    // When each car park with a pending state may be published, soonest first.
    let mut due: BinaryHeap<Reverse<(Instant, CarParkId)>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            _ = stop.cancelled() => return,
            () = fresh.notified() => {
                // A new watch starts with every car park's state, published as it
                // comes (within a second of the last publication, at the second's end).
                tracing::info!("the MQTT broker lost its retained availability: publishing it again");
                let Some(again) = watch_all(&service, &stop) else { return };
                events = again;
                let long_ago = Instant::now().checked_sub(EVERY).unwrap_or_else(Instant::now);
                slots.values_mut().for_each(|slot| slot.sent = long_ago);
            }
            event = events.recv() => match event {
                Some(WatchEvent::Update(availability)) => {
                    let now = Instant::now();
                    match slots.get_mut(&availability.car_park) {
                        Some(slot) if slot.region == availability.region && now < slot.sent + EVERY => {
                            let id = availability.car_park.clone();
                            if slot.pending.replace(availability).is_none() {
                                due.push(Reverse((slot.sent + EVERY, id)));
                            }
                        }
                        previous => {
                            if let Some(moved) = previous.filter(|s| s.region != availability.region) {
                                // It moved to another region: its old sign topic is cleared.
                                let old = topic(&moved.region, &availability.car_park);
                                publish(&client, old, Vec::new()).await;
                            }
                            publish_state(&client, &availability).await;
                            let slot = Slot { region: availability.region, sent: now, pending: None };
                            slots.insert(availability.car_park, slot);
                        }
                    }
                }
                Some(WatchEvent::Removed(id)) => {
                    // An empty retained message clears the topic: signs stop showing it.
                    if let Some(slot) = slots.remove(&id) {
                        publish(&client, topic(&slot.region, &id), Vec::new()).await;
                    }
                }
                Some(WatchEvent::Resync(_) | WatchEvent::SnapshotComplete(_)) => {}
                None => return,
            },
            _ = sleep_until(next) => {
                let Some(Reverse((_, id))) = due.pop() else { continue };
                let Some(slot) = slots.get_mut(&id) else { continue };
                if let Some(availability) = slot.pending.take() {
                    slot.sent = Instant::now();
                    publish_state(&client, &availability).await;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn topic(region: &RegionId, car_park: &CarParkId) -> String {
    format!("{AVAILABILITY}/{region}/{car_park}")
}

/// Publishes a car park's state, retained, on its region's topic.
async fn publish_state(client: &AsyncClient, availability: &Availability) {
    let topic = topic(&availability.region, &availability.car_park);
    publish(client, topic, availability_json(availability)).await;
}

async fn publish(client: &AsyncClient, topic: String, payload: Vec<u8>) {
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let sent = client
        .publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            true,
            Bytes::from(payload),
            properties,
        )
        .await;
    match sent {
        Ok(()) => metrics::record_mqtt_published("availability"),
        Err(error) => tracing::debug!(%error, "MQTT availability not sent"),
    }
}
