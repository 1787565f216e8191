//! Connections: one multiplexed handle for commands (a `ConnectionManager`, or the
//! cluster connection), cloned per call; and dedicated connections for blocking
//! stream reads, which would otherwise stall every command queued behind them.

use std::time::Duration;

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

/// Where Redis is, parsed from `--store`. One exists per store, so its size does
/// not matter.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Target {
    Standalone(redis::Client),
    Cluster(ClusterClient),
}

/// Why a `--store` value was refused.
pub fn parse_target(url: &str) -> Result<Target, String> {
    for (scheme, node_scheme) in [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            // Credentials, if any, come once before the first node and apply to all.
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{node_scheme}{auth}{h}"))
                .collect();
            if nodes.is_empty() {
                return Err("a cluster URL needs at least one host:port".into());
            }
            let client = ClusterClient::builder(nodes)
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(Duration::from_secs(2))
                .retries(2)
                .build()
                .map_err(|e| e.to_string())?;
            return Ok(Target::Cluster(client));
        }
    }
    if url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
    {
        return redis::Client::open(url)
            .map(Target::Standalone)
            .map_err(|e| e.to_string());
    }
    Err("must start with redis://, rediss://, redis+cluster:// or rediss+cluster://".into())
}

/// The shared command connection.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects once; the caller retries.
    pub async fn connect(target: &Target) -> redis::RedisResult<Self> {
        match target {
            Target::Standalone(client) => {
                // Few retries inside: a write that cannot reach Redis should fail fast
                // with UNAVAILABLE, while the manager reconnects in the background.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(2)))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Conn::Standalone(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

/// Both connection enums delegate every call to the connection they hold.
macro_rules! delegate_connection_like {
    ($name:ident) => {
        impl ConnectionLike for $name {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $name::Standalone(c) => c.req_packed_command(cmd),
                    $name::Cluster(c) => c.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $name::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
                    $name::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $name::Standalone(c) => c.get_db(),
                    $name::Cluster(c) => c.get_db(),
                }
            }
        }
    };
}

delegate_connection_like!(Conn);
delegate_connection_like!(Dedicated);

/// A connection of its own for blocking reads (XREAD BLOCK).
pub enum Dedicated {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Dedicated {
    /// Its response timeout outlasts the longest block.
    pub async fn connect(target: &Target, block: Duration) -> redis::RedisResult<Self> {
        let timeout = block + Duration::from_secs(2);
        match target {
            Target::Standalone(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(timeout));
                Ok(Dedicated::Standalone(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Target::Cluster(client) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(timeout);
                Ok(Dedicated::Cluster(
                    client.get_async_connection_with_config(config).await?,
                ))
            }
        }
    }
}

/// A URL with any password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
