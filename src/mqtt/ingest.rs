//! Reports taken from the broker: decided in arrival order, acked to the device's ack
//! topic, and acknowledged to the broker (PUBACK) once decided, in the order received.

use bytes::Bytes;
use futures_util::{StreamExt, future::BoxFuture, stream::FuturesOrdered};
use rumqttc::v5::{
    AsyncClient,
    mqttbytes::{
        QoS,
        v5::{Publish, PublishProperties},
    },
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ACKS, report_topic};
use crate::{
    domain::{CarParkId, Error, OperatorId},
    grpc::feeds::{Encoding, Reports, malformed_ack},
    metrics,
    service::Service,
};

/// Messages in decision at once: the next ones are queued while the first is decided,
/// so a store that batches takes many of them into one commit.
const WINDOW: usize = 256;

/// A message, decided: the acks to publish on its car park's ack topic, and whether
/// to acknowledge it to the broker.
struct Done {
    publish: Publish,
    topic: Option<String>,
    content_type: &'static str,
    acks: Vec<Vec<u8>>,
    /// False for reports the server could not decide because it is stopping: left
    /// unacknowledged, the broker delivers them again.
    puback: bool,
}

/// Decides the reports `inbound` brings until it ends, answering all it took. `stop` is
/// the server's: reports that fail because it fired are left unacknowledged.
pub(super) async fn serve(
    service: Service,
    client: AsyncClient,
    mut inbound: mpsc::Receiver<Publish>,
    stop: CancellationToken,
) {
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Done>> = FuturesOrdered::new();
    loop {
        let publish = tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                finish(&client, done).await;
                continue;
            }
            message = inbound.recv(), if in_flight.len() < WINDOW => match message {
                Some(publish) => publish,
                None => break,
            },
        };
        let taken = match read(&service, publish, &stop) {
            Ok(taken) => taken,
            Err(done) => {
                in_flight.push_back(Box::pin(std::future::ready(*done)));
                continue;
            }
        };
        if !service.queues_ahead(&taken.valid) {
            // A gate report is decided once what came before it is answered (and on
            // a store that does not batch, every report is decided in its turn).
            while let Some(done) = in_flight.next().await {
                finish(&client, done).await;
            }
        }
        in_flight.push_back(taken.decide(&service).await);
    }
    while let Some(done) = in_flight.next().await {
        finish(&client, done).await;
    }
}

/// A message's reports, read and on their way to the service.
struct Taken {
    publish: Publish,
    operator: OperatorId,
    topic: String,
    reports: Reports,
    valid: Vec<crate::domain::Report>,
    encoding: Encoding,
    stop: CancellationToken,
}

impl Taken {
    /// Queues the reports (or decides them, where the store does not batch) and
    /// returns what answers them once decided.
    async fn decide(self, service: &Service) -> BoxFuture<'static, Done> {
        let queued = service.queue_reports(&self.operator, self.valid).await;
        let Taken {
            publish,
            operator,
            topic,
            reports,
            encoding,
            stop,
            ..
        } = self;
        Box::pin(async move {
            let results = queued.results().await;
            // Not decided because the server is stopping: left unacknowledged, the
            // broker delivers it again on the session's next connection.
            let stopping = results.is_err() && stop.is_cancelled();
            let acks = if stopping {
                Vec::new()
            } else {
                reports.acks(&operator, results)
            };
            Done {
                publish,
                topic: Some(topic),
                content_type: encoding.content_type(),
                acks,
                puback: !stopping,
            }
        })
    }
}

/// Reads a message's reports, or answers it at once when it cannot be read: a topic
/// that is not a report topic is only acknowledged; a payload that is not reports is
/// acked as rejected.
fn read(service: &Service, publish: Publish, stop: &CancellationToken) -> Result<Taken, Box<Done>> {
    let Some((operator, car_park)) = report_topic(&publish.topic) else {
        metrics::record_mqtt_message("bad_topic");
        tracing::debug!(topic = %String::from_utf8_lossy(&publish.topic), "not a report topic");
        return Err(Box::new(Done {
            publish,
            topic: None,
            content_type: "",
            acks: Vec::new(),
            puback: true,
        }));
    };
    let topic = format!("{ACKS}/{operator}/{car_park}");
    let content_type = publish
        .properties
        .as_ref()
        .and_then(|p| p.content_type.as_deref());
    let max_batch = service.limits().max_batch;
    let read = Encoding::of_content_type(content_type).and_then(|encoding| {
        let (reports, valid) = Reports::read(&publish.payload, encoding, &car_park, max_batch)?;
        Ok((encoding, reports, valid))
    });
    match read {
        Ok((encoding, reports, valid)) => {
            metrics::record_mqtt_message("decided");
            Ok(Taken {
                publish,
                operator,
                topic,
                reports,
                valid,
                encoding,
                stop: stop.clone(),
            })
        }
        Err(error) => {
            // A refused content type is answered in JSON.
            let encoding = Encoding::of_content_type(content_type).unwrap_or(Encoding::Json);
            Err(Box::new(rejected(
                publish, &operator, &car_park, topic, encoding, &error,
            )))
        }
    }
}

fn rejected(
    publish: Publish,
    operator: &OperatorId,
    car_park: &CarParkId,
    topic: String,
    encoding: Encoding,
    error: &Error,
) -> Done {
    metrics::record_mqtt_message("malformed");
    Done {
        acks: vec![malformed_ack(operator, car_park, encoding, error)],
        publish,
        topic: Some(topic),
        content_type: encoding.content_type(),
        puback: true,
    }
}

/// Publishes a decided message's acks, then acknowledges it to the broker.
async fn finish(client: &AsyncClient, done: Done) {
    if let Some(topic) = &done.topic {
        for ack in done.acks {
            let properties = PublishProperties {
                content_type: Some(done.content_type.to_owned()),
                ..Default::default()
            };
            match client
                .publish_with_properties(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    Bytes::from(ack),
                    properties,
                )
                .await
            {
                Ok(()) => metrics::record_mqtt_published("ack"),
                Err(error) => tracing::debug!(%error, "MQTT ack not sent"),
            }
        }
    }
    if done.puback
        && done.publish.qos != QoS::AtMostOnce
        && let Err(error) = client.ack(&done.publish).await
    {
        tracing::debug!(%error, "MQTT PUBACK not sent");
    }
}
