//! Admits each call before its handler: finds who calls (an operator by API key or
//! client certificate, a driver by token, else the address it comes from) once, for
//! the handler to reuse, refuses the call when that caller's rate is spent, and holds
//! a unary or server-streaming call's body to one message (`methods::OneMessage`).
//!
//! Rates are token buckets: a caller may make `rate` calls a second on average and
//! `2 × rate` at once. A refusal is RESOURCE_EXHAUSTED with the delay after which a
//! call will pass, as a `google.rpc.RetryInfo` in the status details (the trailers).

use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::{
    auth::ApiKeys,
    domain::{DriverId, OperatorId},
    metrics,
    net::{Peer, client_address},
    service::Caller,
    tokens::{DriverTokens, looks_like_jwt},
};

use super::methods::{METHODS, OneMessage};

/// Calls a second allowed to one caller of each class; 0 is unlimited.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Per operator (API key or client certificate).
    pub operator: f64,
    /// Per driver (token).
    pub driver: f64,
    /// Per address (an IPv6 /64) for calls without a valid credential.
    pub anonymous: f64,
}

impl RateLimits {
    /// No limit for anyone: for programs that embed the server and for tests.
    pub fn unlimited() -> Self {
        Self {
            operator: 0.0,
            driver: 0.0,
            anonymous: 0.0,
        }
    }
}

impl Default for RateLimits {
    /// A city's defaults: an operator's feed of unary reports for a few hundred car
    /// parks, a driver's app at its busiest, and a carrier NAT's address shared by many
    /// phones all fit, while one client's flood is held to a small share of a server.
    fn default() -> Self {
        Self {
            operator: 2_000.0,
            driver: 50.0,
            anonymous: 200.0,
        }
    }
}

/// The caller a request's credential proves, set by the admission layer as a request
/// extension: the handlers take it rather than verify the credential again.
#[derive(Debug, Clone)]
pub struct Verified(pub Caller);

/// Most callers whose buckets are kept. A bucket that has refilled is the same as
/// none and is dropped first; past this many recently active callers, new ones are
/// admitted without a bucket (a flood of addresses must not grow memory without end,
/// nor lock out everyone else).
const MAX_BUCKETS: usize = 100_000;

/// Methods no rate limit applies to: load balancers' health checks and reflection.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Operator(OperatorId),
    Driver(DriverId),
    Address(IpAddr),
}

impl Key {
    fn class(&self) -> &'static str {
        match self {
            Key::Operator(_) => "operator",
            Key::Driver(_) => "driver",
            Key::Address(_) => "anonymous",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every caller seen lately.
#[derive(Debug)]
struct Buckets {
    map: HashMap<Key, Bucket>,
    pruned: Instant,
}

/// What the layer needs: the credentials to check and the rates.
#[derive(Debug)]
struct Admission {
    keys: Arc<ApiKeys>,
    drivers: Arc<DriverTokens>,
    limits: RateLimits,
    buckets: Mutex<Buckets>,
}

impl Admission {
    /// The caller the request proves, if any. An invalid credential proves nothing: the
    /// handler that needs one says why it is refused.
    fn verify(&self, request: &http::Request<impl Sized>) -> Option<Caller> {
        let header = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return request
                .extensions()
                .get::<Peer>()
                .and_then(|p| p.client_operator.clone())
                .map(Caller::Operator);
        };
        let bearer = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim);
        match bearer {
            Some(token) if looks_like_jwt(token) => {
                self.drivers.authenticate(token).ok().map(Caller::Driver)
            }
            _ => self
                .keys
                .authenticate(Some(header))
                .ok()
                .map(Caller::Operator),
        }
    }

    /// Takes one call from `key`'s bucket, or says how long until one is there.
    fn take(&self, key: Key, rate: f64, now: Instant) -> Result<(), Duration> {
        let burst = (2.0 * rate).max(1.0);
        let mut buckets = self.buckets.lock().expect("rate buckets lock");
        if buckets.map.len() >= MAX_BUCKETS && !buckets.map.contains_key(&key) {
            // At most once a second: a pass over every bucket is not for every call.
            if now.duration_since(buckets.pruned) >= Duration::from_secs(1) {
                buckets.pruned = now;
                let limits = &self.limits;
                buckets.map.retain(|k, b| {
                    let rate = rate_of(limits, k);
                    b.tokens + now.duration_since(b.at).as_secs_f64() * rate < 2.0 * rate
                });
            }
            if buckets.map.len() >= MAX_BUCKETS {
                return Ok(());
            }
        }
        let bucket = buckets.map.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    /// `Some(refusal)` when the caller's rate is spent.
    fn admit<B>(&self, request: &mut http::Request<B>) -> Option<Status> {
        let caller = self.verify(request);
        let rate = match &caller {
            Some(Caller::Operator(_)) => self.limits.operator,
            Some(Caller::Driver(_)) => self.limits.driver,
            None => self.limits.anonymous,
        };
        if rate <= 0.0 || exempt(request.uri().path()) {
            if let Some(caller) = caller {
                request.extensions_mut().insert(Verified(caller));
            }
            return None;
        }
        let key = match &caller {
            Some(Caller::Operator(o)) => Key::Operator(o.clone()),
            Some(Caller::Driver(d)) => Key::Driver(d.clone()),
            None => Key::Address(
                request
                    .extensions()
                    .get::<Peer>()
                    .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |p| {
                        client_address(p.remote.ip())
                    }),
            ),
        };
        if let Some(caller) = caller {
            request.extensions_mut().insert(Verified(caller));
        }
        let class = key.class();
        let retry = self.take(key, rate, Instant::now()).err()?;
        metrics::record_rate_limited(class);
        let millis = retry.as_millis().max(1);
        Some(Status::with_error_details(
            Code::ResourceExhausted,
            format!(
                "rate limit: {class} callers may make {rate} calls a second each; retry in {millis} ms"
            ),
            ErrorDetails::with_retry_info(Some(retry)),
        ))
    }
}

fn rate_of(limits: &RateLimits, key: &Key) -> f64 {
    match key {
        Key::Operator(_) => limits.operator,
        Key::Driver(_) => limits.driver,
        Key::Address(_) => limits.anonymous,
    }
}

/// Adds admission to a service; see the module's documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLayer(Arc<Admission>);

impl AdmissionLayer {
    pub fn new(keys: Arc<ApiKeys>, drivers: Arc<DriverTokens>, limits: RateLimits) -> Self {
        Self(Arc::new(Admission {
            keys,
            drivers,
            limits,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                pruned: Instant::now(),
            }),
        }))
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.0.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S, B> Service<http::Request<B>> for AdmissionService<S>
where
    S: Service<http::Request<OneMessage<B>>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Admitted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.admission.admit(&mut request) {
            None => {
                let one = METHODS
                    .find(request.uri().path())
                    .is_some_and(|i| METHODS.methods[i].one_request);
                Admitted::Called {
                    future: self
                        .inner
                        .call(request.map(|body| OneMessage::new(body, one))),
                }
            }
            Some(refusal) => Admitted::Refused {
                response: Some(refusal.into_http()),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's answer, or the refusal.
    #[project = AdmittedProjection]
    pub enum Admitted<F> {
        Called { #[pin] future: F },
        Refused { response: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> std::future::Future for Admitted<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmittedProjection::Called { future } => future.poll(cx),
            AdmittedProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(limits: RateLimits) -> Admission {
        Admission {
            keys: Arc::default(),
            drivers: Arc::default(),
            limits,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                pruned: Instant::now(),
            }),
        }
    }

    #[test]
    fn a_bucket_holds_two_seconds_of_calls_and_refills_at_its_rate() {
        let a = admission(RateLimits::default());
        let key = || Key::Address("192.0.2.1".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..4 {
            a.take(key(), 2.0, t0).unwrap();
        }
        let wait = a.take(key(), 2.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Half a second later one call passes, and the next waits again.
        let t1 = t0 + Duration::from_millis(500);
        a.take(key(), 2.0, t1).unwrap();
        assert!(a.take(key(), 2.0, t1).is_err());
        // Another address has its own bucket.
        a.take(Key::Address("192.0.2.2".parse().unwrap()), 2.0, t1)
            .unwrap();
    }
}
