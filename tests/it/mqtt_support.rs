//! MQTT test harness: real `mosquitto` brokers on free loopback ports, and devices.
//!
//! Each broker runs with a config and a temp dir of its own, so tests never touch a
//! broker the machine runs on 1883, nor each other's topics; it is killed on drop. A
//! device is an MQTT 5 client (rumqttc) whose received messages arrive on a channel.

use std::{
    env,
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use bytes::Bytes;
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{Packet, Publish, PublishProperties},
    },
};
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::redis_support::free_port;

/// Set to "1" (CI does) to turn a missing `mosquitto` into a failure.
const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_MQTT";

/// How long a broker may take to accept connections; a bound, never a synchronisation.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// One `mosquitto` on 127.0.0.1:<port>, killed on drop.
pub struct Mosquitto {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
    binary: PathBuf,
    config: String,
}

impl Mosquitto {
    /// A broker that lets anyone in, or None (after saying why) when `mosquitto` is not
    /// installed and `CITYPARK_REQUIRE_MQTT` is not "1".
    pub fn start() -> Option<Self> {
        Self::start_with("allow_anonymous true\n")
    }

    /// A broker with these lines added to its config (`listener` is set here).
    pub fn start_with(config: &str) -> Option<Self> {
        Self::start_on(free_port(false), config)
    }

    /// A broker on `port` (one a server was already told about).
    pub fn start_on(port: u16, config: &str) -> Option<Self> {
        let binary = find()?;
        let dir = tempfile::Builder::new()
            .prefix("citypark-mosquitto-")
            .tempdir()
            .expect("creating a temp dir for mosquitto");
        let mut broker = Self {
            port,
            child: None,
            dir,
            binary,
            config: config.to_owned(),
        };
        broker.spawn();
        Some(broker)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A file in the broker's own directory (a password file, an ACL).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Kills the broker; `spawn` starts it again on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn spawn(&mut self) {
        let config = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type error\n{}",
                self.port, self.config
            ),
        )
        .expect("writing mosquitto.conf");
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let until = Instant::now() + READY_WITHIN;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > until {
                let log = std::fs::read_to_string(self.dir.path().join("mosquitto.log"))
                    .unwrap_or_default();
                panic!("mosquitto on port {} did not start: {log}", self.port);
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `mosquitto` is (Debian puts it in /usr/sbin, often not on a user's PATH).
fn find() -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let found = env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        if env::var(REQUIRE_VAR).as_deref() == Ok("1") {
            panic!("mosquitto not found and {REQUIRE_VAR}=1; install Debian's mosquitto");
        }
        eprintln!(
            "skipping: mosquitto not found; install Debian's mosquitto or set {REQUIRE_VAR}=1 \
             to fail instead"
        );
    }
    found
}

/// Where `mosquitto_passwd` is, for a broker that asks for logins.
pub fn mosquitto_passwd(file: &std::path::Path, user: &str, password: &str) {
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .expect("running mosquitto_passwd (Debian's mosquitto)");
    assert!(status.success(), "mosquitto_passwd {user}");
}

/// An MQTT 5 client standing for a sensor, a gateway or a sign.
pub struct Device {
    pub client: AsyncClient,
    /// Messages received on its subscriptions.
    pub inbox: mpsc::UnboundedReceiver<Publish>,
    /// PUBACK reason codes of its QoS 1 publishes, in order.
    pub pubacks: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::PubAckReason>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Connects (with a login when given) and waits for the broker's CONNACK.
    pub async fn connect(port: u16, id: &str, login: Option<(&str, &str)>) -> Self {
        match Self::try_connect(port, id, login).await {
            Ok(device) => device,
            Err(why) => panic!("{id} could not connect: {why}"),
        }
    }

    /// Connects, or says why the broker refused (or did not answer within 10 s).
    pub async fn try_connect(
        port: u16,
        id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Self, String> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut events) = AsyncClient::new(options, 10_000);
        let (tx, inbox) = mpsc::unbounded_channel();
        let (acks, pubacks) = mpsc::unbounded_channel();
        let (connected, up) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let task = tokio::spawn(async move {
            let mut connected = Some(connected);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(c) = connected.take() {
                            let _ = c.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let _ = acks.send(ack.reason);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if let Some(c) = connected.take() {
                            let _ = c.send(Err(error.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let answer = tokio::time::timeout(Duration::from_secs(10), up).await;
        match answer {
            Ok(Ok(Ok(()))) => Ok(Self {
                client,
                inbox,
                pubacks,
                task,
            }),
            Ok(Ok(Err(why))) => Err(why),
            _ => {
                task.abort();
                Err("no CONNACK within 10 s".into())
            }
        }
    }

    /// Subscribes with QoS 1 and waits until the broker has it (a SUBACK's worth).
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe sent");
        // The SUBACK is not surfaced; a short wait covers the broker's loopback turn.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Publishes with QoS 1 and, when given, an MQTT 5 content type.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        content_type: Option<&str>,
    ) {
        let properties = PublishProperties {
            content_type: content_type.map(str::to_owned),
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), properties)
            .await
            .expect("publish sent");
    }

    /// The next message received, within `bound`.
    pub async fn next_within(&mut self, bound: Duration) -> Option<Publish> {
        tokio::time::timeout(bound, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message received; fails the test after 10 s.
    pub async fn next(&mut self) -> Publish {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a message within 10 s")
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A payload as JSON.
pub fn json(publish: &Publish) -> serde_json::Value {
    serde_json::from_slice(&publish.payload).unwrap_or_else(|e| {
        panic!(
            "{}: not JSON ({e}): {:?}",
            String::from_utf8_lossy(&publish.topic),
            String::from_utf8_lossy(&publish.payload)
        )
    })
}

/// A message's topic as text.
pub fn topic(publish: &Publish) -> String {
    String::from_utf8_lossy(&publish.topic).into_owned()
}
