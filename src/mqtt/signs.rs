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
    time::Duration,
};

use bytes::Bytes;
use rumqttc::v5::{
    AsyncClient,
    mqttbytes::{QoS, v5::PublishProperties},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::AVAILABILITY;
use crate::{
    domain::{Availability, BoundingBox, CarParkId, LatLng},
    grpc::feeds::availability_json,
    metrics,
    service::{Service, WatchEvent, WatchSelector},
};

/// The least time between two publications of one car park: a sign redraws no faster,
/// and a car park reporting every entry does not flood the broker.
const EVERY: Duration = Duration::from_secs(1);

/// What is known of one car park's publications.
struct Slot {
    topic: String,
    /// When it was last published.
    sent: Instant,
    /// The newest state, not yet published (it came within `EVERY` of the last).
    pending: Option<Vec<u8>>,
}

/// Publishes availability until `stop`.
pub(super) async fn serve(service: Service, client: AsyncClient, stop: CancellationToken) {
    let world = BoundingBox::new(
        LatLng::new(-90.0, -180.0).expect("a corner of the world"),
        LatLng::new(90.0, 180.0).expect("a corner of the world"),
    )
    .expect("the world is a box");
    let mut events = match service.watch(
        WatchSelector::Area(world),
        "mqtt-availability".into(),
        stop.clone(),
    ) {
        Ok(events) => events,
        Err(error) => {
            tracing::error!(%error, "MQTT availability not published");
            return;
        }
    };
    let mut slots: HashMap<CarParkId, Slot> = HashMap::new();
    // When each car park with a pending state may be published, soonest first.
    let mut due: BinaryHeap<Reverse<(Instant, CarParkId)>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            _ = stop.cancelled() => return,
            event = events.recv() => match event {
                Some(WatchEvent::Update(availability)) => {
                    let now = Instant::now();
                    let topic = topic(&availability);
                    let payload = availability_json(&availability);
                    match slots.get_mut(&availability.car_park) {
                        Some(slot) if slot.topic == topic && now < slot.sent + EVERY => {
                            if slot.pending.replace(payload).is_none() {
                                due.push(Reverse((slot.sent + EVERY, availability.car_park)));
                            }
                        }
                        previous => {
                            if let Some(moved) = previous.filter(|s| s.topic != topic) {
                                // It moved to another region: its old sign topic is cleared.
                                publish(&client, moved.topic.clone(), Vec::new()).await;
                            }
                            publish(&client, topic.clone(), payload).await;
                            slots.insert(availability.car_park, Slot { topic, sent: now, pending: None });
                        }
                    }
                }
                Some(WatchEvent::Removed(id)) => {
                    // An empty retained message clears the topic: signs stop showing it.
                    if let Some(slot) = slots.remove(&id) {
                        publish(&client, slot.topic, Vec::new()).await;
                    }
                }
                Some(WatchEvent::Resync(_) | WatchEvent::SnapshotComplete(_)) => {}
                None => return,
            },
            _ = sleep_until(next) => {
                let Some(Reverse((_, id))) = due.pop() else { continue };
                let Some(slot) = slots.get_mut(&id) else { continue };
                if let Some(payload) = slot.pending.take() {
                    slot.sent = Instant::now();
                    publish(&client, slot.topic.clone(), payload).await;
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

fn topic(availability: &Availability) -> String {
    format!(
        "{AVAILABILITY}/{}/{}",
        availability.region, availability.car_park
    )
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
