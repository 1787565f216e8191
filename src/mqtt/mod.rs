//! MQTT: occupancy reports from sensor networks in, their acks and the signs'
//! availability out, over one connection to a broker (MQTT 5).
//!
//! The broker authenticates devices and its ACL bounds what each may write
//! (`deploy/mosquitto/`): citypark takes the operator a report's topic names as the
//! caller, so the one check it adds is the one the gRPC API makes, that the operator
//! owns the car park. Reports are taken with QoS 1 and acknowledged to the broker only
//! once decided (`ingest`); sequence numbers make the broker's redelivery harmless.
//! The connection is the only thing this module shares with the rest of the server: a
//! broker that is down or slow leaves gRPC ingest as it was, and the client reconnects
//! with a growing back-off.

mod ingest;
mod signs;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{Filter, Packet, SubscribeReasonCode},
    },
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{metrics, service::Service};

/// Where the reports arrive: `citypark/v1/reports/<operator>/<car park id>`.
pub const REPORTS: &str = "citypark/v1/reports";
/// Where each report's ack goes: `citypark/v1/acks/<operator>/<car park id>`.
pub const ACKS: &str = "citypark/v1/acks";
/// Where signs read availability: `citypark/v1/availability/<region>/<car park id>`.
pub const AVAILABILITY: &str = "citypark/v1/availability";

/// QoS 1 messages the broker may send before citypark acknowledges one: the reports
/// in decision at once, and the bound of the queue between the connection and them.
const RECEIVE_MAXIMUM: u16 = 1_024;
/// Messages waiting to go out (acks, availability) before a publisher waits.
const REQUEST_CAPACITY: usize = 4_096;
/// How long the broker keeps the session (its subscription and the reports not yet
/// acknowledged) after the connection drops: a restart or a broker blip within it
/// loses nothing. Short, because an instance that crashed keeps getting its share of
/// the reports until then (one that stops leaves the share group first).
const SESSION_EXPIRY_SECS: u32 = 60;
/// The first wait before reconnecting; it doubles with each failure.
const FIRST_BACK_OFF: Duration = Duration::from_millis(250);
/// The longest wait before reconnecting, unless the settings say otherwise.
pub const MAX_BACK_OFF: Duration = Duration::from_secs(30);

/// A broker's address, from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Broker {
    /// Reads `mqtt://host[:1883]` or `mqtts://host[:8883]`. Credentials do not belong
    /// in the URL (it shows in process listings): they come from a file.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "{url:?}: an MQTT URL starts with mqtt:// or mqtts://"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            return Err(format!(
                "{url:?}: put the credentials in --mqtt-credentials-file, not in the URL"
            ));
        }
        if rest.contains('/') || rest.contains('?') {
            return Err(format!("{url:?}: an MQTT URL names a host and a port only"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 address without a port: [::1].
            Some((_, p)) if rest.ends_with(']') || p.contains(']') => (rest, default_port),
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("{url:?}: {port:?} is not a port"))?,
            ),
            None => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// Reads a credentials file: one line, `username:password` (the password may hold
/// colons; a trailing newline is dropped).
pub fn read_credentials(path: &std::path::Path) -> Result<(String, String), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--mqtt-credentials-file {}: {e}", path.display()))?;
    let line = text.trim_end_matches(['\n', '\r']);
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() && !line.contains('\n') => {
            Ok((user.to_owned(), password.to_owned()))
        }
        _ => Err(format!(
            "--mqtt-credentials-file {}: expected one line, username:password",
            path.display()
        )),
    }
}

/// How citypark uses a broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub broker: Broker,
    /// Username and password, when the broker asks for them.
    pub credentials: Option<(String, String)>,
    /// PEM roots to trust for `mqtts://` besides the public ones (a city's own CA).
    pub ca_file: Option<PathBuf>,
    /// The client id: stable across restarts, so the broker keeps this instance's
    /// session; unique per instance, or the broker drops the older connection.
    pub client_id: String,
    /// Subscribe with `$share/<group>/…`, so that of several instances each report
    /// reaches one; `None` subscribes plainly (every instance gets every report).
    pub share_group: Option<String>,
    /// Publish each car park's availability, retained, for signs.
    pub publish_availability: bool,
    /// The largest report message taken (the gRPC port's limit).
    pub max_message_bytes: usize,
    /// The longest wait between two tries to reach the broker ([`MAX_BACK_OFF`]).
    pub max_back_off: Duration,
}

impl MqttSettings {
    fn options(&self) -> Result<MqttOptions, String> {
        let mut options = MqttOptions::new(&self.client_id, &self.broker.host, self.broker.port);
        // An ack is a small message that should leave at once: with Nagle's algorithm
        // it waits for the broker's TCP ack of the previous one (tens of ms).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options
            .set_network_options(network)
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_max_packet_size(Some(
                u32::try_from(self.max_message_bytes.saturating_add(1024)).unwrap_or(u32::MAX),
            ))
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_connection_timeout(10)
            // A report is acknowledged to the broker once decided, not on arrival.
            .set_manual_acks(true);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user, password);
        }
        if self.broker.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(self.tls_config()?)),
            ));
        }
        Ok(options)
    }

    fn tls_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            for cert in crate::tls::certs(path, "--mqtt-ca-file").map_err(|e| e.to_string())? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--mqtt-ca-file {}: {e}", path.display()))?;
            }
        }
        Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
    }

    /// The filter the reports are taken with.
    fn subscription(&self) -> String {
        match &self.share_group {
            Some(group) => format!("$share/{group}/{REPORTS}/+/+"),
            None => format!("{REPORTS}/+/+"),
        }
    }
}

/// Checks what can be checked before the first connection (the TLS roots, the
/// options), so a bad flag stops the server at start rather than in a loop.
pub fn check(settings: &MqttSettings) -> Result<(), String> {
    settings.options().map(|_| ())
}

/// Serves MQTT until `stop`: connects, subscribes to the reports, decides them and
/// publishes their acks (and, when asked, availability for signs), reconnecting with
/// back-off whenever the broker is lost. Reports in decision when `stop` fires are
/// answered; the ones not yet decided stay unacknowledged in the broker's session.
pub async fn run(service: Service, settings: MqttSettings, stop: CancellationToken) {
    let options = match settings.options() {
        Ok(options) => options,
        Err(error) => {
            tracing::error!(%error, "MQTT not started");
            return;
        }
    };
    let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
    let broker = format!("{}:{}", settings.broker.host, settings.broker.port);
    metrics::record_mqtt_connected(&broker, false);
    let (tx, rx) = mpsc::channel(usize::from(RECEIVE_MAXIMUM));
    let mut ingest = tokio::spawn(ingest::serve(
        service.clone(),
        client.clone(),
        rx,
        stop.clone(),
    ));
    // Told when the broker has lost the session (it restarted without persistence):
    // its retained availability went with it.
    let fresh = Arc::new(tokio::sync::Notify::new());
    let signs = settings.publish_availability.then(|| {
        tokio::spawn(signs::serve(
            service,
            client.clone(),
            fresh.clone(),
            stop.clone(),
        ))
    });
    let subscription = settings.subscription();
    let mut connection = Connection::new(broker.clone(), settings.max_back_off, fresh);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            event = events.poll() => connection.on(event, &client, &subscription, &tx, &stop).await,
        }
    }
    // Leave the share group first: the broker keeps a stopped instance's session, and
    // would go on giving it its share of the reports, held until it came back.
    if connection.up && client.try_unsubscribe(subscription.clone()).is_ok() {
        let unsubscribed = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::UnsubAck(_))) | Err(_) => return,
                    // Taken after the stop: left unacknowledged, for the session's next
                    // connection (its redelivery is harmless).
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), unsubscribed).await;
    }
    // Decide what was taken and send its acks (closing the queue ends the ingest task
    // once they are out): the connection is served meanwhile, or nothing would go out.
    drop(tx);
    let finishing = async {
        loop {
            tokio::select! {
                _ = &mut ingest => return,
                event = events.poll() => if event.is_err() { return },
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), finishing).await;
    ingest.abort();
    if let Some(signs) = signs {
        let _ = signs.await;
    }
    if client.try_disconnect().is_ok() {
        let flush = async { while events.poll().await.is_ok() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }
    metrics::record_mqtt_connected(&broker, false);
}

/// The connection's state: up or down, and how long to wait before the next try.
struct Connection {
    up: bool,
    max_back_off: Duration,
    /// Whether a connection was made before (the first has nothing to restore).
    connected_before: bool,
    back_off: Duration,
    broker: String,
    fresh: Arc<tokio::sync::Notify>,
}

impl Connection {
    fn new(broker: String, max_back_off: Duration, fresh: Arc<tokio::sync::Notify>) -> Self {
        Self {
            up: false,
            max_back_off,
            connected_before: false,
            back_off: FIRST_BACK_OFF,
            broker,
            fresh,
        }
    }

    async fn on(
        &mut self,
        event: Result<Event, ConnectionError>,
        client: &AsyncClient,
        subscription: &str,
        reports: &mpsc::Sender<rumqttc::v5::mqttbytes::v5::Publish>,
        stop: &CancellationToken,
    ) {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(broker = %self.broker, session_present = ack.session_present, "MQTT connected");
                self.up = true;
                self.back_off = FIRST_BACK_OFF;
                metrics::record_mqtt_connected(&self.broker, true);
                if self.connected_before && !ack.session_present {
                    self.fresh.notify_one();
                }
                self.connected_before = true;
                // Subscribed again on every connection: a session the broker lost (it
                // restarted without persistence) must not leave the reports unread.
                let mut filter = Filter::new(subscription, QoS::AtLeastOnce);
                filter.nolocal = false;
                if let Err(error) = client.try_subscribe_many([filter]) {
                    tracing::warn!(%error, "MQTT subscribe not sent");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                for code in &ack.return_codes {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        tracing::error!(
                            ?code,
                            subscription,
                            "the broker refused the reports' subscription"
                        );
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Err(mpsc::error::TrySendError::Full(_)) = reports.try_send(publish) {
                    // Only QoS 0 messages get here: the broker sends at most
                    // RECEIVE_MAXIMUM QoS 1 ones before they are acknowledged.
                    metrics::record_mqtt_message("dropped");
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                tracing::warn!(reason = ?disconnect.reason_code, "the MQTT broker disconnected");
            }
            Ok(_) => {}
            Err(error) => {
                if self.up {
                    tracing::warn!(broker = %self.broker, %error, "MQTT connection lost; reconnecting");
                    metrics::record_mqtt_disconnect(&self.broker);
                } else {
                    tracing::debug!(broker = %self.broker, %error, wait = ?self.back_off, "MQTT connect failed");
                }
                self.up = false;
                metrics::record_mqtt_connected(&self.broker, false);
                let wait = jittered(self.back_off);
                self.back_off = (self.back_off * 2).min(self.max_back_off);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// `wait` give or take a fifth, so instances that lost one broker together do not
/// come back together.
fn jittered(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1_000) / 1_000.0);
    wait.mul_f64(factor)
}

/// Reads a report topic: `citypark/v1/reports/<operator>/<car park id>`.
fn report_topic(topic: &[u8]) -> Option<(crate::domain::OperatorId, crate::domain::CarParkId)> {
    let topic = std::str::from_utf8(topic).ok()?;
    let rest = topic.strip_prefix(REPORTS)?.strip_prefix('/')?;
    let (operator, car_park) = rest.split_once('/')?;
    Some((
        crate::domain::OperatorId::parse(operator).ok()?,
        crate::domain::CarParkId::parse(car_park).ok()?,
    ))
}

/// The connection's client id when none is given: the host's name and the gRPC port,
/// stable across restarts and distinct for instances side by side.
pub fn default_client_id(grpc_port: u16) -> String {
    let host = hostname().unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    format!("citypark-{host}-{grpc_port}")
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_name_host_port_and_tls() {
        let b = |host: &str, port, tls| Broker {
            host: host.into(),
            port,
            tls,
        };
        assert_eq!(
            Broker::parse("mqtt://broker").unwrap(),
            b("broker", 1883, false)
        );
        assert_eq!(
            Broker::parse("mqtts://broker").unwrap(),
            b("broker", 8883, true)
        );
        assert_eq!(
            Broker::parse("mqtt://10.0.0.5:11883/").unwrap(),
            b("10.0.0.5", 11883, false)
        );
        assert_eq!(
            Broker::parse("mqtt://[::1]").unwrap(),
            b("::1", 1883, false)
        );
        assert_eq!(
            Broker::parse("mqtt://[::1]:1884").unwrap(),
            b("::1", 1884, false)
        );
        for bad in [
            "tcp://broker",
            "mqtt://user:pw@broker",
            "mqtt://broker:port",
            "mqtt://",
            "mqtt://broker/topic",
        ] {
            assert!(Broker::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_one_line_of_username_and_password() {
        let dir = std::env::temp_dir().join(format!("citypark-mqtt-login-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("login");
        for (text, expected) in [
            ("citypark:s3cret\n", Some(("citypark", "s3cret"))),
            ("citypark:a:b:c", Some(("citypark", "a:b:c"))),
            ("citypark:\r\n", Some(("citypark", ""))),
            ("citypark", None),
            (":password", None),
            ("a:b\nc:d\n", None),
        ] {
            std::fs::write(&file, text).unwrap();
            let read = read_credentials(&file).ok();
            let read = read.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            assert_eq!(read, expected, "{text:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn report_topics_name_an_operator_and_a_car_park() {
        let (operator, car_park) = report_topic(b"citypark/v1/reports/op-a/cp-1").unwrap();
        assert_eq!((operator.as_str(), car_park.as_str()), ("op-a", "cp-1"));
        for bad in [
            &b"citypark/v1/reports/op-a"[..],
            b"citypark/v1/reports/op-a/cp-1/x",
            b"citypark/v1/acks/op-a/cp-1",
            b"citypark/v1/reports//cp-1",
        ] {
            assert!(
                report_topic(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
