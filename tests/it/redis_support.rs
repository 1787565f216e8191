//! Redis test harness: real redis-server processes and clusters on free loopback ports.
//!
//! A standalone server or a 3-master cluster, each process killed on drop.
//!
//! Modelled on redis-rs `redis-test/src/server.rs` and `src/cluster.rs`. Every server gets a
//! port of its own and a temp dir of its own, so tests never touch a Redis the machine may
//! already run on 6379, and never each other's data.

use std::{
    collections::BTreeSet,
    env,
    fs::{self, File},
    hash::{BuildHasher, RandomState},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use tempfile::TempDir;

/// How long a server may take to answer PING, or a cluster to report `cluster_state:ok`.
/// An upper bound on a slow CI machine, never a synchronisation.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How often readiness is polled while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Start attempts before giving up: picking a free port and binding it in the child is a
/// race another process can win, so an "Address already in use" exit is retried on a new port.
const START_ATTEMPTS: usize = 5;

/// Set to "1" (CI does) to turn a missing redis-server/redis-cli into a failure.
const REQUIRE_VAR: &str = "CITYPARK_REQUIRE_REDIS";

/// The cluster bus listens on the client port + 10000 (a fixed Redis rule).
const BUS_OFFSET: u16 = 10000;

/// One redis-server child process on 127.0.0.1:<free port>, its own temp dir, AOF on
/// (`--appendonly yes --appendfsync always`, so a restart keeps every acknowledged write),
/// `--save ""`; killed (SIGKILL) and its dir removed on drop.
pub struct RedisServer {
    port: u16,
    /// `None` while stopped.
    child: Option<Child>,
    /// Removed (AOF, nodes.conf, logs) only after `Drop` has killed the child, since a
    /// struct's `drop` runs before its fields are dropped.
    dir: TempDir,
    binary: PathBuf,
    cluster: bool,
}

impl RedisServer {
    /// Starts a server, or returns None after printing one line to stderr when `redis-server`
    /// is not on PATH and `CITYPARK_REQUIRE_REDIS` is not "1" (then it panics instead).
    pub fn start() -> Option<Self> {
        let binary = find_tool("redis-server")?;
        Some(Self::launch(binary, false))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "redis://127.0.0.1:<port>/0"
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process but keeps its dir (its AOF).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL, not SHUTDOWN: with `appendfsync always` every acknowledged write is
            // already on disk, and a hard kill is the crash a restart must survive.
            let _ = child.kill();
            // Reaps the child so it neither lingers as a zombie nor holds the port.
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same dir; waits until it answers PING
    /// (which also means the AOF has been loaded: Redis answers -LOADING until then).
    pub fn restart(&mut self) {
        self.stop();
        // The port was reserved for this server, but another process may have taken it
        // while it was down; Redis' SO_REUSEADDR covers our own TIME_WAIT sockets.
        for _ in 0..START_ATTEMPTS {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(Exit::PortTaken) => {
                    self.stop();
                    sleep(Duration::from_millis(200));
                }
                Err(Exit::Failed(why)) => self.fail(&why),
            }
        }
        self.fail(&format!(
            "port {} stayed in use after the restart",
            self.port
        ));
    }

    /// Starts a fresh server (a cluster node when `cluster`), retrying on a new port when
    /// the chosen one was taken between choosing and binding.
    fn launch(binary: PathBuf, cluster: bool) -> Self {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("citypark-redis-")
                .tempdir()
                .expect("creating a temp dir for redis-server");
            let mut server = Self {
                port: free_port(cluster),
                child: None,
                dir,
                binary: binary.clone(),
                cluster,
            };
            server.spawn();
            // `server` owns the child from here on, so a panic below still kills it.
            match server.wait_ready() {
                Ok(()) => return server,
                Err(Exit::PortTaken) => last = server.log(),
                Err(Exit::Failed(why)) => server.fail(&why),
            }
        }
        panic!("redis-server: no free port after {START_ATTEMPTS} attempts; last log:\n{last}");
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let mut command = Command::new(&self.binary);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            // No RDB snapshots: the AOF alone is the durability under test.
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"]);
        if self.cluster {
            command
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join("nodes.conf"))
                // Short, so a cluster notices a dead node quickly in failure tests.
                .args(["--cluster-node-timeout", "2000"]);
        }
        // Errors before the log file is open (a bad flag) go to stderr; keep them for the
        // panic message rather than interleaving them with the test output.
        let stderr = File::create(dir.join("stderr.log")).expect("creating stderr.log");
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Waits until the server answers PING with PONG, or says why it will not.
    fn wait_ready(&mut self) -> Result<(), Exit> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if ping(addr) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("waiting on a stopped server");
            if let Some(status) = child.try_wait().expect("polling redis-server") {
                self.child = None;
                return Err(if self.log().contains("Address already in use") {
                    Exit::PortTaken
                } else {
                    Exit::Failed(format!("redis-server exited early ({status})"))
                });
            }
            if Instant::now() >= deadline {
                return Err(Exit::Failed(format!(
                    "redis-server did not answer PING within {READY_WITHIN:?}"
                )));
            }
            sleep(POLL);
        }
    }

    /// Panics with the server's log; `Drop` then kills the process.
    fn fail(&self, why: &str) -> ! {
        panic!("{why} (127.0.0.1:{}):\n{}", self.port, self.log())
    }

    /// The server's log and anything it printed to stderr, for failure messages.
    fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- redis.log\n{}--- stderr\n{}",
            read("redis.log"),
            read("stderr.log")
        )
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Also runs while a failing test unwinds, so no process outlives its test.
        self.stop();
    }
}

/// Why a start attempt did not produce a ready server.
enum Exit {
    /// Someone else bound the port first: worth another try.
    PortTaken,
    Failed(String),
}

/// Three masters with `cluster-enabled`, slots assigned by `redis-cli --cluster create`,
/// every node reporting `cluster_state:ok`. Killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the cluster, or returns None (printing one line) when `redis-server` or
    /// `redis-cli` is missing, under the same rule as [`RedisServer::start`].
    pub fn start() -> Option<Self> {
        let server = find_tool("redis-server")?;
        let cli = find_tool("redis-cli")?;
        // Owned by `cluster` as soon as they run, so a panic below still kills them all.
        let cluster = Self {
            nodes: (0..3)
                .map(|_| RedisServer::launch(server.clone(), true))
                .collect(),
        };
        cluster.create(&cli);
        cluster.wait_ok();
        Some(cluster)
    }

    /// "redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Assigns all 16384 slots across the three masters.
    fn create(&self, cli: &Path) {
        let mut command = Command::new(cli);
        command.args(["--cluster", "create"]);
        command.args(self.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        command.args(["--cluster-replicas", "0", "--cluster-yes"]);
        command.stdin(Stdio::null());
        let mut last = String::new();
        // redis-cli gives up if a node is not yet accepting cluster commands; retry briefly.
        for _ in 0..START_ATTEMPTS {
            let out = command
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", cli.display()));
            if out.status.success() {
                return;
            }
            last = format!(
                "{}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            sleep(Duration::from_millis(200));
        }
        panic!(
            "redis-cli --cluster create failed:\n{last}\n{}",
            self.logs()
        );
    }

    /// Waits until every node reports `cluster_state:ok` and knows all three nodes, so the
    /// first request of a test does not race the gossip that follows `--cluster create`.
    fn wait_ok(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        for node in &self.nodes {
            let addr = SocketAddr::from(([127, 0, 0, 1], node.port()));
            loop {
                let info = command(addr, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "127.0.0.1:{} did not report cluster_state:ok within {READY_WITHIN:?}; \
                         last CLUSTER INFO:\n{info}\n{}",
                        node.port(),
                        self.logs()
                    );
                }
                sleep(POLL);
            }
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "=== node 127.0.0.1:{} ({})\n{}",
                    n.port,
                    n.dir().display(),
                    n.log()
                )
            })
            .collect()
    }
}

/// Holds every write on the Redis at `url` for `ms` milliseconds (`CLIENT PAUSE WRITE`):
/// a write sent meanwhile is made when the pause ends, after its sender, if the pause
/// outlasts the store's 2 s reply timeout, has given up on the answer.
pub async fn pause_writes(url: &str, ms: u64) {
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut raw)
        .await
        .unwrap();
}

/// A random key prefix per test ("t<random hex>"), so tests sharing a server never collide.
pub fn key_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process (and varies per instance), so hashing a
    // counter with it gives unpredictable, per-call distinct values without a rand dependency.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let value = RandomState::new().hash_one((
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos,
        std::process::id(),
    ));
    format!("t{value:016x}")
}

/// Where `name` is on PATH, or None after printing the skip line; panics instead when
/// `CITYPARK_REQUIRE_REDIS=1` so CI cannot pass by skipping every Redis test.
fn find_tool(name: &str) -> Option<PathBuf> {
    let found = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    });
    if found.is_none() {
        if env::var(REQUIRE_VAR).as_deref() == Ok("1") {
            panic!("{name} not found on PATH and {REQUIRE_VAR}=1; install Debian's redis-server");
        }
        eprintln!(
            "skipping: {name} not found on PATH; install Debian's redis-server or set \
             {REQUIRE_VAR}=1 to fail instead"
        );
    }
    found
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Ports handed out by this process. Never released: a stopped server keeps its port for
/// `restart`, and two servers starting at once must not both pick a port the OS just freed.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port nothing listens on now. For a cluster node the bus port (+10000) must be
/// free too, which also bounds the port below 55535.
pub fn free_port(cluster: bool) -> u16 {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = {
            // Bound and released at once: the OS picks an unused port, redis-server binds it
            // right after (a race `launch` retries when lost).
            let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
            listener.local_addr().expect("local_addr").port()
        };
        let mut wanted = vec![port];
        if cluster {
            if port >= u16::MAX - BUS_OFFSET {
                continue;
            }
            wanted.push(port + BUS_OFFSET);
        }
        // Bus ports are recorded too, so no later server lands on one.
        if wanted.iter().any(|p| taken.contains(p)) || !wanted[1..].iter().all(|&p| bindable(p)) {
            continue;
        }
        taken.extend(wanted);
        return port;
    }
    panic!("no free loopback port found")
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// True when the server at `addr` answers PING with PONG (not -LOADING or an error).
fn ping(addr: SocketAddr) -> bool {
    command(addr, &["PING"]).is_some_and(|reply| reply == "PONG")
}

/// Sends one command over a fresh connection and returns a simple or bulk string reply,
/// or None on any error. Raw RESP keeps readiness checks independent of client behaviour.
fn command(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(done) = parse_reply(&reply) {
            return done;
        }
    }
}

/// Some(reply) once `raw` holds a complete reply (Some(None) for an error reply),
/// None while more bytes are needed.
fn parse_reply(raw: &[u8]) -> Option<Option<String>> {
    let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&raw[1..line_end]).into_owned();
    match raw[0] {
        b'+' => Some(Some(line)),
        b'$' => {
            // `$-1` (nil) fails to parse and counts as "no string".
            let Ok(len) = line.parse::<usize>() else {
                return Some(None);
            };
            let body = raw.get(line_end + 2..line_end + 2 + len)?;
            Some(Some(String::from_utf8_lossy(body).into_owned()))
        }
        _ => Some(None),
    }
}
