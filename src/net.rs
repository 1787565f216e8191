//! The gRPC port's connections: accepted under a cap, with a back-off when the process
//! runs out of files, TLS where configured, and closed when they carry no call. The
//! HTTP port's connections count under the same cap (`Budget`).
//!
//! A connection that has never started a call is closed after the first-call timeout
//! (an idle socket, a bare HTTP/2 preface, a slow HTTP/1.1 header); one that has carried
//! calls is closed after the idle timeout with none in flight. Bytes do not count as
//! activity, calls do: a client trickling a header or answering pings cannot hold a
//! connection, and a long watch or publish stream is never cut.

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Sleep,
};
use tokio_util::{either::Either, sync::CancellationToken, task::TaskTracker};

use crate::{domain::OperatorId, metrics, tls::Tls};

/// How connections on the gRPC port are bounded.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Most connections open at once; more are refused with a clear answer.
    pub max_connections: usize,
    /// Time a new connection has to start its first call (TLS handshake included).
    pub first_call_timeout: Duration,
    /// Time a connection may stay open with no call in flight.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            first_call_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl ConnLimits {
    /// These limits lowered, where needed, so that the connections fit in `open_files`
    /// with room for the process's own files (listeners, store connections, logs).
    pub fn within_open_files(mut self, open_files: Option<u64>) -> Self {
        if let Some(limit) = open_files {
            let room = limit.saturating_sub(64.max(limit / 8)).max(1);
            if self.max_connections as u64 > room {
                tracing::warn!(
                    open_files = limit,
                    max_connections = room,
                    asked = self.max_connections,
                    "--max-connections lowered to fit the open-files limit (raise LimitNOFILE)"
                );
                self.max_connections = room as usize;
            }
        }
        self
    }
}

/// The connections the gRPC and HTTP ports hold together: one budget of
/// `--max-connections` (fitted to the open-files limit), so that no flood on either
/// port can take the files the process needs to answer the other. The HTTP port may
/// hold at most half of it: slow callers there (a callback trickling its body) leave
/// the gRPC port, where drivers' apps call, at least the other half.
#[derive(Clone)]
pub struct Budget {
    all: Arc<Semaphore>,
    http: Arc<Semaphore>,
}

/// One open connection's place in the [`Budget`], and its gauge; given back when
/// dropped.
pub struct Place {
    _all: OwnedSemaphorePermit,
    _port: Option<OwnedSemaphorePermit>,
    _gauge: metrics::Held,
}

impl Budget {
    /// A budget of `max_connections` for both ports.
    pub fn new(max_connections: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(max_connections)),
            http: Arc::new(Semaphore::new((max_connections / 2).max(1))),
        }
    }

    /// A place for a connection on the gRPC port; `None` when the budget is spent.
    pub fn grpc(&self) -> Option<Place> {
        Some(Place {
            _all: self.all.clone().try_acquire_owned().ok()?,
            _port: None,
            _gauge: metrics::Held::connection("grpc"),
        })
    }

    /// A place for a connection on the HTTP port; `None` when the budget is spent or
    /// the HTTP port holds its half.
    pub fn http(&self) -> Option<Place> {
        let port = self.http.clone().try_acquire_owned().ok()?;
        Some(Place {
            _all: self.all.clone().try_acquire_owned().ok()?,
            _port: Some(port),
            _gauge: metrics::Held::connection("http"),
        })
    }
}

/// The process's soft limit on open files, raised to its hard limit first (as Go's
/// runtime does): a server's connections are files, and the soft default of 1,024 is
/// a shell's, not a server's. `None` where the platform has no such limit.
// rlim_t is u64 on Linux, not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    ..limit
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
            Some(limit.rlim_cur as u64)
        }
    }
    #[cfg(not(unix))]
    None
}

/// The process's current soft limit on open files.
#[allow(clippy::unnecessary_cast)]
pub fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed.
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
            .then_some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_s_addresses_share_its_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = client_address(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, client_address(ip("2001:db8:1:2:bbbb::9")));
        assert_ne!(a, client_address(ip("2001:db8:1:3::1")));
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            "address:2001:db8:1:2::"
        );
        assert_eq!(client_address(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }
}

/// Calls in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    calls: AtomicU32,
    /// Milliseconds from `opened` to the end of the last call; `NEVER` before the first.
    last_end_ms: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    /// When the connection is to be closed, if it carries no call by then.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.last_end_ms.load(Ordering::Acquire) {
            NEVER => self.opened + limits.first_call_timeout,
            ms => self.opened + Duration::from_millis(ms) + limits.idle_timeout,
        })
    }
}

/// What a call knows of the connection it came on: a request extension (tonic's
/// connect info) for the layers and handlers.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The operator a verified client certificate names (mutual TLS).
    pub client_operator: Option<OperatorId>,
    activity: Arc<Activity>,
}

impl Peer {
    /// Marks a call in flight on this connection until the guard is dropped.
    pub fn call(&self) -> CallGuard {
        self.activity.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.activity.clone())
    }
}

/// A call in flight; see [`Peer::call`].
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let ms = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_end_ms.store(ms, Ordering::Release);
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The address a client's budgets (watchers, rate) are kept under when it proves no
/// identity: an IPv4 address, or an IPv6 address's /64, which one subscriber usually
/// holds whole.
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// [`client_address`] as a budget's name.
pub fn address_key(ip: IpAddr) -> String {
    format!("address:{}", client_address(ip))
}

/// A plain or TLS stream.
pub type Stream = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

pin_project_lite::pin_project! {
    /// One accepted connection: its stream, its place under the cap, and the timer that
    /// closes it when it carries no call.
    pub struct Conn {
        #[pin]
        stream: Stream,
        peer: Peer,
        limits: Arc<ConnLimits>,
        timer: Pin<Box<Sleep>>,
        // The timer holds this connection's waker: until it fires, a read need not
        // poll it again (most reads of a busy connection find nothing and would).
        armed: bool,
        closed: bool,
        _place: Place,
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.closed {
            return Poll::Ready(Ok(()));
        }
        if let ready @ Poll::Ready(_) = this.stream.poll_read(cx, buf) {
            return ready;
        }
        // Nothing to read: the server is waiting for the client, which is when a
        // connection without calls runs out of time. An end of stream closes it as a
        // client's close would, without an error to log.
        if *this.armed && !this.timer.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                *this.armed = true;
                return Poll::Pending;
            }
            let now = Instant::now();
            match this.peer.activity.deadline(this.limits) {
                None => this
                    .timer
                    .as_mut()
                    .reset((now + this.limits.idle_timeout).into()),
                Some(at) if at <= now => {
                    *this.closed = true;
                    let first = this.peer.activity.last_end_ms.load(Ordering::Acquire) == NEVER;
                    metrics::record_connection_closed(if first { "no_first_call" } else { "idle" });
                    return Poll::Ready(Ok(()));
                }
                Some(at) => this.timer.as_mut().reset(at.into()),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Refusals answered at once; beyond this many in progress, a refused connection is
/// just closed (a flood gets no more of the server's time than that).
const MAX_REFUSING: usize = 64;

/// Accepts the next connection on a port, pausing after an error (out of open files)
/// for 5 ms, then twice as long while errors last, up to a second: the loop neither
/// spins a core nor floods the log while the process has no file to spare.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    port: &'static str,
    backoff: Duration,
}

impl Acceptor {
    const MIN_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);

    pub fn new(listener: TcpListener, port: &'static str) -> Self {
        Self {
            listener,
            port,
            backoff: Self::MIN_BACKOFF,
        }
    }

    /// The next connection, or `None` once `stop` is cancelled.
    pub async fn accept(&mut self, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok(accepted) => {
                    self.backoff = Self::MIN_BACKOFF;
                    return Some(accepted);
                }
                // A connection reset before it was accepted: the next may come at once.
                Err(error) if is_transient(&error) => {}
                Err(error) => {
                    metrics::record_accept_error(self.port);
                    if self.backoff == Self::MIN_BACKOFF {
                        tracing::warn!(port = self.port, %error, "cannot accept connections now (out of open files?); backing off");
                    }
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(self.backoff) => {}
                    }
                    self.backoff = (self.backoff * 2).min(Self::MAX_BACKOFF);
                }
            }
        }
    }
}

/// Accepts connections on `listener` until `stop`, and yields them (TLS handshakes
/// done) as the stream tonic serves. Its tasks (the loop, handshakes, refusals) run on
/// `tasks` and end soon after `stop`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    budget: Budget,
    tls: Option<Tls>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (sender, receiver) = mpsc::channel(128);
    let limits = Arc::new(limits);
    let refusing = refusals();
    let mut acceptor = Acceptor::new(listener, "grpc");
    let spawner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = sender.closed() => return,
                accepted = acceptor.accept(&stop) => accepted,
            };
            let Some((stream, remote)) = accepted else {
                return;
            };
            let Some(place) = budget.grpc() else {
                refuse_soon(stream, "grpc", tls.is_none(), &refusing, &spawner);
                continue;
            };
            let (limits, tls, sender) = (limits.clone(), tls.clone(), sender.clone());
            let stop = stop.clone();
            spawner.spawn(async move {
                let opened = tokio::select! {
                    () = stop.cancelled() => return,
                    opened = open(stream, remote, place, limits, tls) => opened,
                };
                if let Some(conn) = opened {
                    let _ = sender.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Errors of one connection, not of the listener: the next accept may succeed at once.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Sets up an accepted connection: socket options, then the TLS handshake within the
/// first-call timeout. `None` when the handshake fails or takes too long.
async fn open(
    stream: TcpStream,
    remote: SocketAddr,
    place: Place,
    limits: Arc<ConnLimits>,
    tls: Option<Tls>,
) -> Option<Conn> {
    // Small request/response pairs: Nagle's delay would dominate their latency.
    let _ = stream.set_nodelay(true);
    // A peer that vanished without a FIN is found by the kernel's keepalive probes.
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10)),
    );
    let opened = Instant::now();
    let (stream, client_operator) = match tls {
        None => (Either::Left(stream), None),
        Some(tls) => {
            match tokio::time::timeout(limits.first_call_timeout, tls.accept(stream)).await {
                Ok(Ok((stream, operator))) => (Either::Right(Box::new(stream)), operator),
                Ok(Err(error)) => {
                    metrics::record_connection_closed("tls_handshake_failed");
                    tracing::debug!(%remote, %error, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    metrics::record_connection_closed("no_first_call");
                    return None;
                }
            }
        }
    };
    let activity = Arc::new(Activity {
        opened,
        calls: AtomicU32::new(0),
        last_end_ms: AtomicU64::new(NEVER),
    });
    let first = opened + limits.first_call_timeout;
    Some(Conn {
        stream,
        peer: Peer {
            remote,
            client_operator,
            activity,
        },
        timer: Box::pin(tokio::time::sleep_until(first.into())),
        limits,
        armed: false,
        closed: false,
        _place: place,
    })
}

/// Refuses a connection over the budget on `port`: answered in its protocol while
/// fewer than [`MAX_REFUSING`] refusals are in progress (see [`refuse`]), else closed.
pub fn refuse_soon(
    stream: TcpStream,
    port: &'static str,
    plain: bool,
    refusing: &Arc<Semaphore>,
    tasks: &TaskTracker,
) {
    metrics::record_connection_refused(port);
    if let Ok(refusal) = refusing.clone().try_acquire_owned() {
        tasks.spawn(async move {
            refuse(stream, plain).await;
            drop(refusal);
        });
    }
}

/// Refusals in progress on one port, at most [`MAX_REFUSING`].
pub fn refusals() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_REFUSING))
}

/// What a refused client is told, in the protocol it speaks: HTTP/2 (gRPC) gets the
/// server's SETTINGS and a GOAWAY with ENHANCE_YOUR_CALM and a reason; HTTP/1.1
/// (gRPC-Web) gets a 503. Over TLS nothing can be said before a handshake the server
/// will not spend on a refused client, so the connection is just closed.
async fn refuse(mut stream: TcpStream, plain: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REASON: &[u8] = b"citypark: too many connections (--max-connections); retry later";
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    if !plain {
        return;
    }
    let answer = async {
        let mut first = [0u8; 14];
        let mut read = 0;
        while read < first.len() {
            match stream.read(&mut first[read..]).await? {
                0 => return Ok(()),
                n => read += n,
            }
        }
        let answer = if first == PREFACE {
            let mut frames = vec![0, 0, 0, 4, 0, 0, 0, 0, 0];
            let length = (8 + REASON.len()) as u32;
            frames.extend_from_slice(&length.to_be_bytes()[1..]);
            frames.extend_from_slice(&[7, 0, 0, 0, 0, 0]);
            frames.extend_from_slice(&0u32.to_be_bytes());
            // ENHANCE_YOUR_CALM: the peer is generating excessive load.
            frames.extend_from_slice(&0xbu32.to_be_bytes());
            frames.extend_from_slice(REASON);
            frames
        } else {
            let mut answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                REASON.len()
            )
            .into_bytes();
            answer.extend_from_slice(REASON);
            answer
        };
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        // Read what the client still sends until it closes, so the close is a FIN
        // after the answer, not a reset that could discard it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}
