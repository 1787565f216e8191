//! Tests of the Redis harness itself: the servers it starts are real, durable and apart.

use std::collections::BTreeSet;

use redis::{Commands, Connection, RedisResult, cluster::ClusterClient};

use crate::redis_support::{RedisCluster, RedisServer, key_prefix};

fn connect(url: &str) -> Connection {
    redis::Client::open(url).unwrap().get_connection().unwrap()
}

#[test]
fn standalone_keeps_acknowledged_writes_across_a_kill_and_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let key = format!("{}:greeting", key_prefix());
    let mut conn = connect(&server.url());
    let () = conn.set(&key, "hello").unwrap();
    assert_eq!(conn.get::<_, String>(&key).unwrap(), "hello");
    drop(conn);

    server.stop();
    // Proves stop() really killed it: nothing answers on the port any more.
    assert!(
        redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .is_err()
    );
    server.restart();

    // `appendfsync always` means the SET was on disk before it was acknowledged.
    let mut conn = connect(&server.url());
    assert_eq!(conn.get::<_, String>(&key).unwrap(), "hello");
}

#[test]
fn cluster_routes_keys_across_all_three_masters() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    let url = cluster.url();
    for port in &ports {
        assert!(url.contains(&format!("127.0.0.1:{port}")), "{url}");
    }
    assert!(url.starts_with("redis+cluster://"), "{url}");

    let node_urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    for node in &node_urls {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(&mut connect(node))
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{node}: {info}");
    }

    // Hash tags {a}, {b}, {c} are slots 15495, 3300 and 7365: one in each third of the
    // slot space, so with three masters each key lives on a different node.
    let prefix = key_prefix();
    let keys: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|tag| format!("{prefix}:{{{tag}}}"))
        .collect();
    let mut conn = ClusterClient::new(node_urls.clone())
        .unwrap()
        .get_connection()
        .unwrap();
    for key in &keys {
        let () = conn.set(key, format!("value of {key}")).unwrap();
    }
    for key in &keys {
        assert_eq!(
            conn.get::<_, String>(key).unwrap(),
            format!("value of {key}")
        );
    }

    // Each key is readable on exactly one node (the others answer MOVED), and the three
    // owners differ: the cluster client really spread the writes.
    let mut owners = BTreeSet::new();
    for key in &keys {
        let holders: Vec<&String> = node_urls
            .iter()
            .filter(|node| {
                let got: RedisResult<String> = connect(node).get(key);
                got.is_ok()
            })
            .collect();
        assert_eq!(holders.len(), 1, "{key} held by {holders:?}");
        owners.insert(holders[0].clone());
    }
    assert_eq!(owners.len(), 3, "{owners:?}");
}

#[test]
fn servers_started_together_get_their_own_ports_and_data() {
    let Some(a) = RedisServer::start() else {
        return;
    };
    let Some(b) = RedisServer::start() else {
        return;
    };
    assert_ne!(a.port(), b.port());
    let key = format!("{}:owner", key_prefix());
    let () = connect(&a.url()).set(&key, "a").unwrap();
    let on_b: Option<String> = connect(&b.url()).get(&key).unwrap();
    assert_eq!(on_b, None);
}

#[test]
fn key_prefixes_differ() {
    let prefixes: BTreeSet<String> = (0..100).map(|_| key_prefix()).collect();
    assert_eq!(prefixes.len(), 100);
    for prefix in &prefixes {
        assert!(prefix.starts_with('t') && prefix.len() == 17, "{prefix}");
        assert!(
            prefix[1..].chars().all(|c| c.is_ascii_hexdigit()),
            "{prefix}"
        );
    }
}
