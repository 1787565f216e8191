//! MQTT: reports from devices through a real broker (Debian's `mosquitto`, started
//! on a free port), their acks, the ACL example, shared subscriptions over two
//! instances, a broker that goes away, and the signs' retained availability.
//!
//! Without `mosquitto` the tests say why and skip, unless `CITYPARK_REQUIRE_MQTT=1`
//! (CI), which makes them fail instead.

use std::{sync::Arc, time::Duration};

use citypark::{clock::ManualClock, domain::Timestamp, mqtt::MqttSettings, pb};
use prost::Message;
use rumqttc::v5::mqttbytes::v5::PubAckReason;

use crate::{
    mqtt_support::{Device, Mosquitto, json, mosquitto_passwd, topic},
    redis_support::{RedisServer, key_prefix},
    support::*,
};

fn settings(broker: &Mosquitto, client_id: &str) -> MqttSettings {
    settings_on(broker.port(), client_id)
}

fn settings_on(port: u16, client_id: &str) -> MqttSettings {
    MqttSettings {
        broker: citypark::mqtt::Broker::parse(&format!("mqtt://127.0.0.1:{port}")).unwrap(),
        credentials: None,
        ca_file: None,
        client_id: client_id.into(),
        share_group: Some("citypark".into()),
        publish_availability: false,
        max_message_bytes: 1 << 20,
        // A broker the tests stop and start is tried again within a second, whatever
        // the load on the machine made the earlier waits grow to.
        max_back_off: Duration::from_secs(1),
    }
}

/// A report's JSON: a snapshot of free standard spaces.
fn snapshot_json(sequence: u64, free: i32, at: Timestamp) -> String {
    format!(
        r#"{{"sequence":"{sequence}","observedAt":"{at}","snapshot":{{"free":[{{"category":"SPACE_CATEGORY_STANDARD","count":{free}}}]}}}}"#
    )
}

/// Waits until the server takes reports from `operator`'s topics: a probe on a car park
/// no one registered is published until its (rejected) ack comes back.
async fn until_subscribed(device: &mut Device, operator: &str, now: Timestamp) {
    let probe = format!("citypark/v1/reports/{operator}/probe");
    for _ in 0..100 {
        device.publish(&probe, snapshot_json(1, 1, now), None).await;
        if let Some(ack) = device.next_within(Duration::from_millis(200)).await {
            assert_eq!(topic(&ack), format!("citypark/v1/acks/{operator}/probe"));
            assert_eq!(json(&ack)["rejectCode"], "REJECT_CODE_NOT_FOUND");
            // Other probes' acks may still be on their way.
            while device
                .next_within(Duration::from_millis(300))
                .await
                .is_some()
            {}
            return;
        }
    }
    panic!("the server never took a report from the broker");
}

/// A device of operator A that reads its acks, once the server takes its reports.
async fn operator_a_device(port: u16, id: &str, now: Timestamp) -> Device {
    let mut device = Device::connect(port, id, None).await;
    device.subscribe("citypark/v1/acks/op-a/#").await;
    until_subscribed(&mut device, "op-a", now).await;
    device
}

#[tokio::test]
async fn reports_over_mqtt_are_decided_and_acked_on_the_ack_topic() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let server = TestServer::start_with(|s| s.mqtt = Some(settings(&broker, "citypark-a"))).await;
    register(&server, garage("g1", 36.07, 120.38)).await;
    register_as(&server, garage("gb", 36.08, 120.39), OPERATOR_B.1).await;
    let mut device = operator_a_device(broker.port(), "sensor-1", server.now()).await;
    let now = server.now();
    let reports = "citypark/v1/reports/op-a/g1";

    // One report, as JSON without a content type (an MQTT 3 device sends none).
    device
        .publish(reports, snapshot_json(1, 42, now), None)
        .await;
    let ack = device.next().await;
    assert_eq!(topic(&ack), "citypark/v1/acks/op-a/g1");
    let content_type = ack.properties.as_ref().and_then(|p| p.content_type.clone());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let ack = json(&ack);
    assert_eq!(ack["result"], "REPORT_RESULT_APPLIED", "{ack}");
    assert_eq!(ack["carParkId"], "g1");
    assert_eq!(ack["sequence"], "1");
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 42);

    // Redelivered (QoS 1 may): a duplicate, harmless.
    device
        .publish(reports, snapshot_json(1, 42, now), None)
        .await;
    assert_eq!(
        json(&device.next().await)["result"],
        "REPORT_RESULT_DUPLICATE"
    );

    // A list, applied in order, one ack each.
    let list = format!(
        "[{},{}]",
        snapshot_json(2, 40, now),
        snapshot_json(3, 38, now)
    );
    device
        .publish(reports, list, Some("application/json"))
        .await;
    for sequence in ["2", "3"] {
        let ack = json(&device.next().await);
        assert_eq!(
            (ack["sequence"].as_str(), ack["result"].as_str()),
            (Some(sequence), Some("REPORT_RESULT_APPLIED"))
        );
    }
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 38);

    // Binary protobuf by content type: one report, and a list; acks in protobuf.
    let one = snapshot("", 4, 30, now).encode_to_vec();
    device
        .publish(reports, one, Some("application/protobuf"))
        .await;
    let ack = device.next().await;
    let content_type = ack.properties.as_ref().and_then(|p| p.content_type.clone());
    assert_eq!(
        content_type.as_deref(),
        Some("application/protobuf; proto=citypark.v1.ReportAck")
    );
    let ack = pb::ReportAck::decode(ack.payload).unwrap();
    assert_eq!(
        (ack.car_park_id.as_str(), ack.sequence, ack.result()),
        ("g1", 4, pb::ReportResult::Applied)
    );
    let list = pb::PublishRequest {
        reports: vec![snapshot("g1", 5, 25, now), snapshot("g1", 6, 20, now)],
    };
    device
        .publish(
            reports,
            list.encode_to_vec(),
            Some("application/protobuf; proto=citypark.v1.PublishRequest"),
        )
        .await;
    for sequence in [5, 6] {
        let ack = pb::ReportAck::decode(device.next().await.payload).unwrap();
        assert_eq!(
            (ack.sequence, ack.result()),
            (sequence, pb::ReportResult::Applied)
        );
    }
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 20);

    // What cannot be read is acked as rejected, naming what is wrong.
    device.publish(reports, r#"{"sequence": "x"#, None).await;
    let ack = json(&device.next().await);
    assert_eq!(ack["result"], "REPORT_RESULT_REJECTED");
    assert_eq!(ack["rejectCode"], "REJECT_CODE_INVALID_ARGUMENT");
    assert_eq!(ack["sequence"], "0");
    device
        .publish(reports, snapshot_json(7, 1, now), Some("text/plain"))
        .await;
    let ack = json(&device.next().await);
    assert_eq!(ack["rejectCode"], "REJECT_CODE_INVALID_ARGUMENT", "{ack}");
    assert!(
        ack["reason"].as_str().unwrap().contains("text/plain"),
        "{ack}"
    );
    // A report on another car park than the topic's.
    let elsewhere = snapshot_json(7, 1, now).replacen('{', r#"{"carParkId":"gb","#, 1);
    device.publish(reports, elsewhere, None).await;
    let ack = json(&device.next().await);
    assert_eq!(
        (ack["rejectCode"].as_str(), ack["field"].as_str()),
        (Some("REJECT_CODE_INVALID_ARGUMENT"), Some("car_park_id")),
        "{ack}"
    );
    // The operator in the topic must own the car park: op-a's topic, op-b's car park.
    device
        .publish(
            "citypark/v1/reports/op-a/gb",
            snapshot_json(1, 1, now),
            None,
        )
        .await;
    let ack = device.next().await;
    assert_eq!(topic(&ack), "citypark/v1/acks/op-a/gb");
    assert_eq!(json(&ack)["rejectCode"], "REJECT_CODE_PERMISSION_DENIED");
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 20);
    assert_ne!(free_standard(&availability_of(&server, "gb").await), 1);

    let metrics = server.metrics_text().await;
    for line in [
        &format!(
            "citypark_mqtt_connected{{broker=\"127.0.0.1:{}\"}} 1",
            broker.port()
        ),
        "citypark_mqtt_messages_total{outcome=\"decided\"}",
        "citypark_mqtt_messages_total{outcome=\"malformed\"}",
        "citypark_mqtt_published_total{kind=\"ack\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

/// deploy/mosquitto/acl.conf, as shipped, on a broker that asks for logins.
#[tokio::test]
async fn the_acl_example_keeps_each_device_to_its_operators_topics() {
    let Some(mut broker) = Mosquitto::start_with("") else {
        return;
    };
    let passwords = broker.path("passwd");
    std::fs::write(&passwords, "").unwrap();
    for user in ["citypark", "op-a", "op-b"] {
        mosquitto_passwd(&passwords, user, &format!("{user}-secret"));
    }
    let acl = broker.path("acl");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/mosquitto/acl.conf"),
        &acl,
    )
    .unwrap();
    broker.stop();
    let config = format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwords.display(),
        acl.display()
    );
    let mut broker = Mosquitto::start_on(broker.port(), &config).unwrap();
    let credentials = broker.path("citypark-login");
    std::fs::write(&credentials, "citypark:citypark-secret\n").unwrap();
    let mut mqtt = settings(&broker, "citypark-acl");
    mqtt.credentials = Some(citypark::mqtt::read_credentials(&credentials).unwrap());
    mqtt.publish_availability = true;
    let server = TestServer::start_with(|s| s.mqtt = Some(mqtt)).await;
    register(&server, garage("ga", 36.07, 120.38)).await;
    register_as(&server, garage("gb", 36.08, 120.39), OPERATOR_B.1).await;
    let now = server.now();

    let mut a = Device::connect(broker.port(), "sensor-a", Some(("op-a", "op-a-secret"))).await;
    a.subscribe("citypark/v1/acks/#").await;
    until_subscribed(&mut a, "op-a", server.now()).await;
    // op-a writes on op-b's topic, on a car park op-b owns: the broker drops it and
    // says so.
    while a.pubacks.try_recv().is_ok() {}
    a.publish(
        "citypark/v1/reports/op-b/gb",
        snapshot_json(1, 7, now),
        None,
    )
    .await;
    let refused = tokio::time::timeout(Duration::from_secs(5), a.pubacks.recv()).await;
    assert_eq!(refused.unwrap(), Some(PubAckReason::NotAuthorized));
    // Then on its own: the ack proves the server has seen all op-a sent before.
    a.publish(
        "citypark/v1/reports/op-a/ga",
        snapshot_json(1, 8, now),
        None,
    )
    .await;
    let ack = a.next().await;
    // op-a reads only its own acks, though it subscribed to every operator's.
    assert_eq!(topic(&ack), "citypark/v1/acks/op-a/ga");
    assert_eq!(json(&ack)["result"], "REPORT_RESULT_APPLIED");
    assert_ne!(free_standard(&availability_of(&server, "gb").await), 7);
    assert!(
        a.next_within(Duration::from_millis(500)).await.is_none(),
        "op-a read an ack not its own"
    );

    // op-b's own report on gb goes through, and only op-b reads its ack.
    let mut b = Device::connect(broker.port(), "sensor-b", Some(("op-b", "op-b-secret"))).await;
    b.subscribe("citypark/v1/acks/op-b/#").await;
    b.publish(
        "citypark/v1/reports/op-b/gb",
        snapshot_json(1, 9, now),
        None,
    )
    .await;
    assert_eq!(json(&b.next().await)["result"], "REPORT_RESULT_APPLIED");
    assert_eq!(free_standard(&availability_of(&server, "gb").await), 9);
    assert!(a.next_within(Duration::from_millis(300)).await.is_none());

    // A device cannot forge what signs read: its retained message is dropped, and a
    // sign sees only citypark's.
    a.client
        .publish(
            "citypark/v1/availability/qingdao/ga",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            true,
            "forged",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sign = Device::connect(broker.port(), "sign-1", Some(("op-b", "op-b-secret"))).await;
    sign.subscribe("citypark/v1/availability/qingdao/ga").await;
    let retained = sign.next().await;
    assert_eq!(json(&retained)["carParkId"], "ga");

    // No login, or a wrong password: no entry.
    let anonymous = Device::try_connect(broker.port(), "anonymous", None).await;
    assert!(anonymous.is_err(), "an anonymous device connected");
    let wrong = Device::try_connect(broker.port(), "guess", Some(("op-a", "op-b-secret"))).await;
    assert!(wrong.is_err(), "a wrong password connected");
    broker.stop();
}

#[tokio::test]
async fn signs_read_retained_availability_at_most_once_a_second_per_car_park() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let mut mqtt = settings(&broker, "citypark-signs");
    mqtt.publish_availability = true;
    let server = TestServer::start_with(|s| s.mqtt = Some(mqtt)).await;
    register(&server, garage("g1", 36.07, 120.38)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 42, now)).await;

    // A sign that connects later gets the current state at once: it is retained.
    let state = "citypark/v1/availability/qingdao/g1";
    let (mut sign, first) = eventually("the availability is retained", || async {
        let mut sign = Device::connect(broker.port(), "sign-1", None).await;
        sign.subscribe("citypark/v1/availability/+/+").await;
        let first = sign.next_within(Duration::from_millis(500)).await?;
        let body = json(&first);
        (first.retain && topic(&first) == state && body["categories"][0]["free"] == 42)
            .then_some((sign, body))
    })
    .await;
    assert_eq!(first["carParkId"], "g1");
    assert_eq!(first["region"], "qingdao");
    assert_eq!(first["status"], "CAR_PARK_STATUS_OPEN");
    assert_eq!(
        first["categories"][0]["category"],
        "SPACE_CATEGORY_STANDARD"
    );
    assert!(
        first["observedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );

    // Ten changes within a second: the sign gets the first and then the last, not
    // every one.
    let started = std::time::Instant::now();
    for (i, free) in (0..10).map(|i| (i, 30 - i)) {
        report_ok(&server, snapshot("g1", 2 + i as u64, free, now)).await;
    }
    let mut seen = Vec::new();
    while let Some(message) = sign.next_within(Duration::from_millis(1_500)).await {
        seen.push(json(&message)["categories"][0]["free"].as_i64().unwrap());
    }
    let window = started.elapsed().as_secs_f64();
    assert_eq!(
        seen.last(),
        Some(&21),
        "the last state is published: {seen:?}"
    );
    assert!(
        seen.len() as f64 <= window.ceil() + 1.0,
        "{} publications in {window:.1} s: {seen:?}",
        seen.len()
    );

    // A car park removed is cleared from the broker: a new sign does not see it.
    let mut registry = server.registry().await;
    registry
        .delete_car_park(authed(
            pb::DeleteCarParkRequest { id: "g1".into() },
            OPERATOR_A.1,
        ))
        .await
        .unwrap();
    let cleared = sign.next().await;
    assert!(cleared.payload.is_empty() && topic(&cleared) == state);
    let mut late = Device::connect(broker.port(), "sign-2", None).await;
    late.subscribe("citypark/v1/availability/+/+").await;
    assert!(late.next_within(Duration::from_millis(500)).await.is_none());
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains("citypark_mqtt_published_total{kind=\"availability\"}"),
        "{metrics}"
    );
}

/// Two instances on one Redis, one share group: each report is decided once, by one
/// of them (the other would answer a second delivery DUPLICATE).
#[tokio::test]
async fn a_shared_subscription_gives_each_report_to_one_instance() {
    let Some(broker) = Mosquitto::start_with("allow_anonymous true\nsys_interval 1\n") else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let prefix = key_prefix();
    let clock = Arc::new(ManualClock::new(start_time()));
    let one = TestServer::start_redis_with(&redis.url(), &prefix, clock.clone(), |s| {
        s.mqtt = Some(settings(&broker, "citypark-1"))
    })
    .await;
    let two = TestServer::start_redis_with(&redis.url(), &prefix, clock.clone(), |s| {
        s.mqtt = Some(settings(&broker, "citypark-2"))
    })
    .await;
    let ids: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        register(&one, garage(id, 36.07 + i as f64 * 0.001, 120.38)).await;
    }
    let mut device = operator_a_device(broker.port(), "gateway-1", one.now()).await;
    // Both instances connected (the broker's $SYS count, published every second: the
    // two, the device and this watcher); each subscribes as its connection is
    // acknowledged, which a moment more covers.
    let mut sys = Device::connect(broker.port(), "watcher", None).await;
    sys.subscribe("$SYS/broker/clients/connected").await;
    loop {
        let count = sys.next().await;
        let count: u32 = String::from_utf8_lossy(&count.payload).parse().unwrap();
        if count >= 4 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = one.now();
    for id in &ids {
        device
            .publish(
                &format!("citypark/v1/reports/op-a/{id}"),
                snapshot_json(1, 17, now),
                None,
            )
            .await;
    }
    let mut results = Vec::new();
    while let Some(ack) = device.next_within(Duration::from_secs(2)).await {
        let ack = json(&ack);
        results.push((
            ack["carParkId"].as_str().unwrap().to_owned(),
            ack["result"].as_str().unwrap().to_owned(),
        ));
    }
    results.sort();
    let expected: Vec<(String, String)> = {
        let mut e: Vec<_> = ids
            .iter()
            .map(|id| (id.clone(), "REPORT_RESULT_APPLIED".to_owned()))
            .collect();
        e.sort();
        e
    };
    assert_eq!(results, expected);
    for id in &ids {
        assert_eq!(free_standard(&availability_of(&two, id).await), 17);
    }

    // An instance that stops leaves the group: every report goes to the other at once,
    // none waits in the stopped one's session.
    two.stop().await.unwrap();
    for id in &ids {
        let topic = format!("citypark/v1/reports/op-a/{id}");
        device
            .publish(&topic, snapshot_json(2, 16, now), None)
            .await;
    }
    let mut applied = 0;
    while let Some(ack) = device.next_within(Duration::from_secs(3)).await {
        assert_eq!(json(&ack)["result"], "REPORT_RESULT_APPLIED");
        applied += 1;
    }
    assert_eq!(
        applied,
        ids.len(),
        "reports were left with the stopped instance"
    );
}

/// The broker is down at start, comes up, goes away and comes back: gRPC ingest never
/// notices, and MQTT reconnects and takes reports again.
#[tokio::test]
async fn a_broker_that_comes_and_goes_leaves_grpc_alone_and_is_reconnected() {
    // Whether the tests can start a broker at all (one is started below, later).
    if Mosquitto::start().is_none() {
        return;
    }
    let port = crate::redis_support::free_port(false);
    let mut mqtt = settings_on(port, "citypark-flaky");
    mqtt.share_group = None;
    mqtt.publish_availability = true;
    let server = TestServer::start_with(|s| s.mqtt = Some(mqtt)).await;
    register(&server, garage("g1", 36.07, 120.38)).await;
    let now = server.now();
    report_ok(&server, snapshot("g1", 1, 50, now)).await;
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 50);
    // The gauge is labelled by broker, so this test reads its own.
    let gauge = |up: u8| format!("citypark_mqtt_connected{{broker=\"127.0.0.1:{port}\"}} {up}");
    let seen = |up: u8| {
        let (server, line) = (&server, gauge(up));
        async move { server.metrics_text().await.contains(&line).then_some(()) }
    };
    assert!(server.metrics_text().await.contains(&gauge(0)));

    let mut broker = Mosquitto::start_on(port, "allow_anonymous true\n").unwrap();
    eventually("MQTT connects", || seen(1)).await;
    let mut device = operator_a_device(port, "sensor-1", server.now()).await;
    let report = snapshot_json(2, 40, now);
    device
        .publish("citypark/v1/reports/op-a/g1", report, None)
        .await;
    assert_eq!(
        json(&device.next().await)["result"],
        "REPORT_RESULT_APPLIED"
    );
    drop(device);
    let retained = |id: &'static str| async move {
        let mut sign = Device::connect(port, id, None).await;
        sign.subscribe("citypark/v1/availability/+/g1").await;
        let message = sign.next_within(Duration::from_millis(500)).await?;
        (json(&message)["categories"][0]["free"] == 40).then_some(())
    };
    eventually("a sign reads g1's 40", || retained("sign-1")).await;

    broker.stop();
    eventually("MQTT is seen down", || seen(0)).await;
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 40);
    let lost = format!("citypark_mqtt_disconnects_total{{broker=\"127.0.0.1:{port}\"}} 1");
    assert!(server.metrics_text().await.contains(&lost));

    // The broker kept nothing (no persistence): citypark subscribes again, and
    // publishes every car park's availability again, though none changed.
    broker.spawn();
    eventually("MQTT reconnects", || seen(1)).await;
    eventually("a new sign reads g1's 40", || retained("sign-2")).await;
    let mut device = operator_a_device(port, "sensor-1", server.now()).await;
    let report = snapshot_json(3, 20, now);
    device
        .publish("citypark/v1/reports/op-a/g1", report, None)
        .await;
    assert_eq!(
        json(&device.next().await)["result"],
        "REPORT_RESULT_APPLIED"
    );
    assert_eq!(free_standard(&availability_of(&server, "g1").await), 20);
}
