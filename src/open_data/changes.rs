//! `GET /open-data/v1/changes`: the engine's change feed (what `WatchAvailability`
//! sends) as Server-Sent Events, for consumers without gRPC.
//!
//! One task (the hub) follows the feed, numbers each change, keeps the last
//! `capacity` for resuming, and fans them out to every client; a change's SSE frame is
//! rendered once, by the first stream that sends it, so the feed costs next to
//! nothing while nobody listens and one rendering however many do. Event ids are `<epoch>-<n>`: `epoch` is when this instance started,
//! so an id from another instance or an earlier run is never mistaken for one of
//! these. A client that reconnects with `Last-Event-ID` gets what it missed while that
//! is still kept, or a `resync` event (fetch a snapshot again) when it is not; so does
//! a client too slow to keep up.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse as _, Response},
};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{OpenData, Problem, RegionQuery, site::rfc3339};
use crate::{
    domain::{CarParkStatus, RegionId},
    engine::{Change, ChangeKind, Engine},
    streams::{Full, Place, Places},
};

/// How often an idle stream carries a comment, so proxies keep it open and clients
/// notice a dead connection.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// One numbered change; cheap to clone.
type Frame = Arc<Numbered>;

struct Numbered {
    n: u64,
    epoch: u64,
    what: What,
    /// The SSE frame, rendered by the first stream that sends it.
    bytes: OnceLock<Bytes>,
}

enum What {
    Change(Arc<Change>),
    /// The hub itself fell behind the engine and lost this many.
    Lost(u64),
}

impl Numbered {
    /// Whether a stream of `region` (all when `None`) sends it: a removal and a loss
    /// go to every stream.
    fn for_region(&self, region: Option<&RegionId>) -> bool {
        match (region, &self.what) {
            (Some(wanted), What::Change(change)) => match &change.kind {
                ChangeKind::Updated(a) => &a.region == wanted,
                ChangeKind::Removed => true,
            },
            _ => true,
        }
    }

    fn bytes(&self) -> Bytes {
        self.bytes.get_or_init(|| self.render()).clone()
    }

    fn render(&self) -> Bytes {
        let (event, data) = match &self.what {
            What::Change(change) => match &change.kind {
                ChangeKind::Updated(a) => {
                    let live = matches!(a.status, CarParkStatus::Open | CarParkStatus::Closed);
                    let mut data = serde_json::json!({
                        "car_park_id": a.car_park.as_str(),
                        "region": a.region.as_str(),
                        "status": a.status.name(),
                        "capacity": a.categories.iter().map(|c| c.capacity).sum::<u32>(),
                    });
                    // As in the snapshots, numbers only while they are live.
                    if let (true, Some(observed_at)) = (live, a.observed_at) {
                        data["available"] =
                            a.categories.iter().map(|c| c.available).sum::<u32>().into();
                        data["observed_at"] = rfc3339(observed_at).into();
                    }
                    ("availability", data)
                }
                ChangeKind::Removed => (
                    "removed",
                    serde_json::json!({ "car_park_id": change.car_park.as_str() }),
                ),
            },
            What::Lost(missed) => ("resync", serde_json::json!({ "missed": missed })),
        };
        let (epoch, n) = (self.epoch, self.n);
        Bytes::from(format!("id: {epoch}-{n}\nevent: {event}\ndata: {data}\n\n"))
    }
}

struct Hub {
    epoch: u64,
    /// The newest frames, oldest first, at most `capacity`.
    kept: Mutex<VecDeque<Frame>>,
    capacity: usize,
    frames: broadcast::Sender<Frame>,
    /// The streams open, in all and per address: their own count, apart from gRPC's
    /// watches, under the same caps (`--max-watchers`, `--max-watchers-per-client`).
    places: Places,
    stop: CancellationToken,
}

/// The change streams' hub; cheap to clone.
#[derive(Clone)]
pub struct Changes(Arc<Hub>);

impl Changes {
    /// Starts the hub on `engine`'s feed until `stop`; `capacity` frames are kept for
    /// resuming and buffered per client; streams open at once are bounded by `places`
    /// (the client is the caller's address).
    pub fn start(
        engine: &Engine,
        capacity: usize,
        places: Places,
        epoch: u64,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let capacity = capacity.max(1);
        let (frames, _) = broadcast::channel(capacity);
        let hub = Arc::new(Hub {
            epoch,
            kept: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            frames,
            places,
            stop: stop.clone(),
        });
        let mut feed = engine.subscribe();
        let task = {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let change = tokio::select! {
                        () = stop.cancelled() => return,
                        change = feed.recv() => change,
                    };
                    n += 1;
                    let what = match change {
                        Ok(change) => What::Change(change),
                        // The hub itself fell behind the engine: everyone resyncs.
                        Err(broadcast::error::RecvError::Lagged(missed)) => What::Lost(missed),
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    hub.publish(Arc::new(Numbered {
                        n,
                        epoch: hub.epoch,
                        what,
                        bytes: OnceLock::new(),
                    }));
                }
            })
        };
        (Self(hub), task)
    }
}

impl Hub {
    fn publish(&self, frame: Frame) {
        // Kept and sent under one lock, so a client resuming (which reads the kept
        // frames and subscribes under it) misses nothing and sees nothing twice.
        let mut kept = self.kept.lock();
        if kept.len() == self.capacity {
            kept.pop_front();
        }
        kept.push_back(frame.clone());
        let _ = self.frames.send(frame);
    }

    /// What a client that saw `last` (an event id) missed, and its subscription from
    /// then on; `None` in place of the backlog when `last` is not resumable here.
    fn resume(&self, last: Option<&str>) -> (Option<Vec<Frame>>, broadcast::Receiver<Frame>) {
        let kept = self.kept.lock();
        let frames = self.frames.subscribe();
        let Some(last) = last else {
            return (Some(Vec::new()), frames);
        };
        let seen = last
            .split_once('-')
            .filter(|(epoch, _)| epoch.parse() == Ok(self.epoch))
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let backlog = seen.and_then(|seen| {
            let oldest = kept.front().map_or(seen + 1, |f| f.n);
            // Resumable when nothing between `seen` and the oldest kept was dropped.
            (seen + 1 >= oldest).then(|| kept.iter().filter(|f| f.n > seen).cloned().collect())
        });
        (backlog, frames)
    }
}

/// Holds a client's place under the caps, and the gauge of open streams.
struct Slot {
    hub: Arc<Hub>,
    _place: Place,
    _gauge: crate::metrics::Held,
}

pub(super) async fn stream(
    State(data): State<OpenData>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    query: Result<Query<RegionQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let region = data.region(query?.region.as_deref())?;
    let hub = data.changes.0.clone();
    // Open data is anonymous: a client is its address (an IPv6 client, its /64), as
    // for gRPC's anonymous watchers.
    let place = hub
        .places
        .take(crate::net::address_key(remote.ip()))
        .map_err(|full| match full {
            Full::Server(max) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this server has {max} change streams open, its most (--max-watchers); \
                     retry later"
                ),
            ),
            Full::Client(max) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address has {max} change streams open, the most one client may \
                     (--max-watchers-per-client); close one: a stream of the whole city \
                     carries every region's changes"
                ),
            ),
        })?;
    let slot = Slot {
        hub: hub.clone(),
        _place: place,
        _gauge: crate::metrics::Held::change_stream(),
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (backlog, frames) = hub.resume(last);
    let mut first: VecDeque<Bytes> = match backlog {
        Some(backlog) => backlog
            .into_iter()
            .filter(|f| f.for_region(region.as_ref()))
            .map(|f| f.bytes())
            .collect(),
        // Too old to resume: start over from a snapshot.
        None => [Bytes::from_static(
            b"event: resync\ndata: {\"missed\":null}\n\n",
        )]
        .into(),
    };
    // Tells EventSource to wait a few seconds before reconnecting.
    first.push_front(Bytes::from_static(b"retry: 3000\n\n"));
    let state = Client {
        slot,
        first,
        frames,
        region,
    };
    let body = futures_util::stream::unfold(state, |mut client| async move {
        let bytes = client.next().await?;
        crate::metrics::record_change_stream_bytes(bytes.len() as u64);
        Some((Ok::<_, Infallible>(bytes), client))
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer (nginx) would hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct Client {
    slot: Slot,
    first: VecDeque<Bytes>,
    frames: broadcast::Receiver<Frame>,
    region: Option<RegionId>,
}

impl Client {
    /// The next bytes to send; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(bytes) = self.first.pop_front() {
            return Some(bytes);
        }
        loop {
            let frame = tokio::select! {
                () = self.slot.hub.stop.cancelled() => return None,
                frame = tokio::time::timeout(HEARTBEAT, self.frames.recv()) => frame,
            };
            match frame {
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                Ok(Ok(frame)) if frame.for_region(self.region.as_ref()) => {
                    return Some(frame.bytes());
                }
                Ok(Ok(_)) => continue,
                // Too slow: what it missed is gone; it starts over from a snapshot.
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    let bytes = format!("event: resync\ndata: {{\"missed\":{missed}}}\n\n");
                    return Some(Bytes::from(bytes));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        }
    }
}
