//! The three citypark services: convert the request, call the service, convert back.
//!
//! Every handler has one shape: `?` on each step's `Result` (a domain error becomes a
//! `Status` through `From`, in `status.rs`), then `Ok(Response::new(..))`.

use std::{pin::Pin, sync::Arc};

use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    admission::Verified,
    convert::{self, required},
    status::reject,
};
use crate::{
    audit::{self, Who},
    auth::ApiKeys,
    domain::{Applied, CarParkId, DriverId, Error, OperatorId, RegionId, ReportOutcome, Result},
    net::{Peer, address_key},
    pb,
    service::{Caller, Service, WatchEvent, WatchSelector},
    tokens::{DriverTokens, looks_like_jwt},
};

/// The gRPC face of the service.
#[derive(Clone)]
pub struct Api {
    pub(super) service: Service,
    keys: Arc<ApiKeys>,
    drivers: Arc<DriverTokens>,
    shutdown: CancellationToken,
}

type Reply<T> = std::result::Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

impl Api {
    pub fn new(
        service: Service,
        keys: Arc<ApiKeys>,
        drivers: Arc<DriverTokens>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            service,
            keys,
            drivers,
            shutdown,
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<OperatorId> {
        if let Some(Verified(Caller::Operator(operator))) = request.extensions().get() {
            return Ok(operator.clone());
        }
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        self.keys.authenticate(header)
    }

    /// A driver (bearer JWT) or an operator (bearer API key).
    pub(super) fn any_caller<T>(&self, request: &Request<T>) -> Result<Caller> {
        // Verified once by the admission layer; otherwise checked here, which also
        // says why a credential is refused.
        if let Some(Verified(caller)) = request.extensions().get() {
            return Ok(caller.clone());
        }
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or(""));
        // Said before the credential is read as either kind, so the reason survives.
        header.map_or(Ok(()), crate::auth::credential_size)?;
        let credential = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim);
        match credential {
            Some(token) if looks_like_jwt(token) => {
                Ok(Caller::Driver(self.drivers.authenticate(token)?))
            }
            _ => self.keys.authenticate(header).map(Caller::Operator).map_err(|_| {
                Error::Unauthenticated(
                    "this call needs a driver token or an operator API key: send `authorization: Bearer <token or key>`".into(),
                )
            }),
        }
    }

    /// The driver calling; an operator may not make this call.
    /// An operator (bearer API key or client certificate); a driver may not `action`.
    pub(super) fn operator<T>(&self, request: &Request<T>, action: &str) -> Result<OperatorId> {
        match self.any_caller(request)? {
            Caller::Operator(o) => Ok(o),
            Caller::Driver(_) => Err(Error::PermissionDenied(format!(
                "only an operator may {action}"
            ))),
        }
    }

    pub(super) fn driver<T>(&self, request: &Request<T>, action: &str) -> Result<DriverId> {
        match self.any_caller(request)? {
            Caller::Driver(d) => Ok(d),
            Caller::Operator(_) => Err(Error::PermissionDenied(format!(
                "only a driver may {action}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl pb::registry_server::Registry for Api {
    async fn upsert_car_park(
        &self,
        request: Request<pb::UpsertCarParkRequest>,
    ) -> Reply<pb::UpsertCarParkResponse> {
        let caller = self.caller(&request)?;
        let car_park = required(request.into_inner().car_park, "car_park")?;
        let car_park = convert::car_park(car_park, &caller)?;
        let id = car_park.id.to_string();
        let result = self.service.upsert_car_park(&caller, car_park).await;
        audit::write(Who::Operator(&caller), "upsert_car_park", &id, &result);
        let (stored, created) = result?;
        Ok(Response::new(pb::UpsertCarParkResponse {
            car_park: Some(convert::pb_car_park(&stored)),
            created,
        }))
    }

    async fn get_car_park(
        &self,
        request: Request<pb::GetCarParkRequest>,
    ) -> Reply<pb::GetCarParkResponse> {
        let id = convert::car_park_id(&request.get_ref().id, "id")?;
        let (car_park, availability) = self.service.get_car_park(&id)?;
        Ok(Response::new(pb::GetCarParkResponse {
            car_park: Some(convert::pb_car_park(&car_park)),
            availability: Some(convert::pb_availability(&availability)),
        }))
    }

    async fn list_car_parks(
        &self,
        request: Request<pb::ListCarParksRequest>,
    ) -> Reply<pb::ListCarParksResponse> {
        let r = request.get_ref();
        let region = match r.region.as_str() {
            "" => None,
            s => Some(RegionId::parse(s).map_err(|e| e.in_field("region"))?),
        };
        let operator = match r.operator_id.as_str() {
            "" => None,
            s => Some(OperatorId::parse(s).map_err(|e| e.in_field("operator_id"))?),
        };
        let token = match convert::page_token_in(&r.page_token)? {
            None => None,
            Some(s) => Some(
                CarParkId::parse(&s)
                    .map_err(|_| Error::invalid("page_token", "is not a token this API gave"))?,
            ),
        };
        let size = match r.page_size {
            0 => 100,
            n => usize::try_from(n)
                .map_err(|_| Error::invalid("page_size", "must not be negative"))?,
        };
        let (page, next) = self.service.list_car_parks(
            region.as_ref(),
            operator.as_ref(),
            token.as_ref(),
            size,
        )?;
        Ok(Response::new(pb::ListCarParksResponse {
            car_parks: page.iter().map(|cp| convert::pb_car_park(cp)).collect(),
            next_page_token: convert::page_token_out(next.map(|id| id.to_string())),
        }))
    }

    async fn delete_car_park(
        &self,
        request: Request<pb::DeleteCarParkRequest>,
    ) -> Reply<pb::DeleteCarParkResponse> {
        let caller = self.caller(&request)?;
        let id = convert::car_park_id(&request.get_ref().id, "id")?;
        let result = self.service.delete_car_park(&caller, id.clone()).await;
        audit::write(
            Who::Operator(&caller),
            "delete_car_park",
            id.as_str(),
            &result,
        );
        result?;
        Ok(Response::new(pb::DeleteCarParkResponse {
            id: id.to_string(),
        }))
    }
}

fn ack_applied(report: (String, u64), applied: &Applied) -> pb::ReportAck {
    let (result, clamped) = match applied.outcome {
        ReportOutcome::Applied { clamped } => (pb::ReportResult::Applied, clamped),
        ReportOutcome::Duplicate => (pb::ReportResult::Duplicate, 0),
    };
    let gate = applied.gate.as_ref();
    pb::ReportAck {
        car_park_id: report.0,
        sequence: report.1,
        result: result.into(),
        availability: Some(convert::pb_availability(&applied.availability)),
        clamped,
        session_id: gate
            .and_then(|g| g.session.as_ref())
            .map_or_else(String::new, |s| s.to_string()),
        arrears: gate.is_some_and(|g| g.arrears_minor > 0),
        arrears_minor: gate.map_or(0, |g| g.arrears_minor),
        arrears_currency: gate.map_or_else(String::new, |g| g.arrears_currency.clone()),
        ..Default::default()
    }
}

pub(super) fn ack_rejected(report: (String, u64), error: &Error) -> pb::ReportAck {
    let (code, field, reason) = reject(error);
    pb::ReportAck {
        car_park_id: report.0,
        sequence: report.1,
        result: pb::ReportResult::Rejected.into(),
        reject_code: code.into(),
        field,
        reason,
        ..Default::default()
    }
}

/// A Publish message's reports as read: each one's key (car park, sequence) and whether
/// it parsed; the valid ones went to the service, in order.
pub(super) struct Read {
    keys: Vec<(String, u64)>,
    parsed: Vec<Result<()>>,
}

impl Read {
    fn of(reports: Vec<pb::OccupancyReport>) -> (Self, Vec<crate::domain::Report>) {
        Self::checked(reports, |_| Ok(()))
    }

    /// As `of`, with a report that fails `check` rejected as read (MQTT: a report on a
    /// car park other than its topic's).
    pub(super) fn checked(
        reports: Vec<pb::OccupancyReport>,
        check: impl Fn(&pb::OccupancyReport) -> Result<()>,
    ) -> (Self, Vec<crate::domain::Report>) {
        let keys = reports
            .iter()
            .map(|r| (r.car_park_id.clone(), r.sequence))
            .collect();
        let mut valid = Vec::with_capacity(reports.len());
        let parsed = reports
            .into_iter()
            .map(|r| {
                check(&r)?;
                convert::report(r).map(|r| valid.push(r))
            })
            .collect();
        (Self { keys, parsed }, valid)
    }

    /// Acks in order: invalid reports rejected as read, the valid ones as the service
    /// answered (`results`, one per valid report, or one error for them all).
    pub(super) fn acks(
        self,
        caller: &OperatorId,
        results: Result<Vec<Result<Applied>>>,
    ) -> Vec<pb::ReportAck> {
        let valid = self.parsed.iter().filter(|p| p.is_ok()).count();
        let mut results = match results {
            Ok(results) => results.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
            Err(error) => vec![Err(error); valid].into_iter(),
        };
        self.keys
            .into_iter()
            .zip(self.parsed)
            .map(|(key, parsed)| {
                let result = match parsed {
                    Err(error) => {
                        crate::metrics::record_report(&Err(error.clone()));
                        Err(error)
                    }
                    Ok(()) => match results.next().expect("one result per valid report") {
                        Ok(Ok(applied)) => Ok(applied),
                        Ok(Err(error)) | Err(error) => Err(error),
                    },
                };
                audit::report(Who::Operator(caller), &key.0, key.1, &result);
                match result {
                    Ok(applied) => ack_applied(key, &applied),
                    Err(error) => ack_rejected(key, &error),
                }
            })
            .collect()
    }
}

/// A Publish stream's messages in decision at once: the next ones are queued while the
/// first is decided, so a store that batches (Redis, the durable store) takes several
/// of a stream's messages into one commit. Acks still go back in order.
const PUBLISH_WINDOW: usize = 8;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Api {
    async fn report(&self, request: Request<pb::ReportRequest>) -> Reply<pb::ReportResponse> {
        let caller = self.caller(&request)?;
        let raw = required(request.into_inner().report, "report")?;
        let key = (raw.car_park_id.clone(), raw.sequence);
        let applied = match convert::report(raw) {
            Err(e) => {
                crate::metrics::record_report(&Err(e.clone()));
                Err(e)
            }
            Ok(report) => match self.service.report(&caller, vec![report]).await {
                Ok(mut results) => results.pop().expect("one result per report"),
                Err(e) => Err(e),
            },
        }
        // The store names fields relative to the report, as in a Publish ack.
        .map_err(|e| e.in_field("report"));
        audit::report(Who::Operator(&caller), &key.0, key.1, &applied);
        let applied = applied?;
        Ok(Response::new(pb::ReportResponse {
            ack: Some(ack_applied(key, &applied)),
        }))
    }

    type PublishStream = BoxStream<pb::PublishResponse>;

    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Reply<Self::PublishStream> {
        let caller = self.caller(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        self.service.spawn(async move {
            let mut in_flight = FuturesOrdered::new();
            // Why the stream ends, once the messages in decision are answered.
            let end = loop {
                let message = tokio::select! {
                    biased;
                    _ = api.shutdown.cancelled() => {
                        break Some(Error::Unavailable(
                            "server shutting down; reconnect and resend from the last ack".into(),
                        ).into());
                    }
                    Some(acks) = in_flight.next(), if !in_flight.is_empty() => {
                        if tx.send(Ok(pb::PublishResponse { acks })).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    m = inbound.next(), if in_flight.len() < PUBLISH_WINDOW => m,
                };
                let batch = match message {
                    None => break None,
                    // A message that could not be read (too large, malformed) ends the
                    // stream with its status, not with a silent OK; a client that went
                    // away is not listening, so the send fails harmlessly.
                    Some(Err(status)) => {
                        tracing::debug!(%status, "publish stream ended by the client");
                        break Some(status);
                    }
                    Some(Ok(batch)) => batch,
                };
                let max = api.service.limits().max_batch;
                if batch.reports.len() > max {
                    let error = Error::ResourceExhausted(format!(
                        "more than {max} reports in one PublishRequest"
                    ));
                    break Some(error.into());
                }
                let (read, valid) = Read::of(batch.reports);
                if !api.service.queues_ahead(&valid) {
                    // A gate report is decided after what came before it is answered.
                    while let Some(acks) = in_flight.next().await {
                        if tx.send(Ok(pb::PublishResponse { acks })).await.is_err() {
                            return;
                        }
                    }
                }
                let queued = api.service.queue_reports(&caller, valid).await;
                let caller = caller.clone();
                in_flight.push_back(async move { read.acks(&caller, queued.results().await) });
            };
            while let Some(acks) = in_flight.next().await {
                if tx.send(Ok(pb::PublishResponse { acks })).await.is_err() {
                    return;
                }
            }
            if let Some(status) = end {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn pb_event(event: WatchEvent) -> pb::WatchAvailabilityResponse {
    use pb::watch_availability_response::Event;
    let event = match event {
        WatchEvent::Update(a) => Event::Update(convert::pb_availability(&a)),
        WatchEvent::SnapshotComplete(n) => {
            Event::SnapshotComplete(pb::SnapshotComplete { car_parks: n })
        }
        WatchEvent::Resync(missed) => Event::Resync(pb::Resync { missed }),
        WatchEvent::Removed(id) => Event::Removed(pb::CarParkRemoved {
            car_park_id: id.to_string(),
        }),
    };
    pb::WatchAvailabilityResponse { event: Some(event) }
}

#[tonic::async_trait]
impl pb::availability_server::Availability for Api {
    async fn find_nearby(
        &self,
        request: Request<pb::FindNearbyRequest>,
    ) -> Reply<pb::FindNearbyResponse> {
        let request = request.into_inner();
        let full = convert::full_view(request.view)?;
        let include_shared = request.include_shared;
        let query = convert::nearby_query(request)?;
        let results = self.service.find_nearby(&query)?;
        let mut ranked: Vec<(f64, pb::NearbyCarPark)> = results
            .iter()
            .map(|n| (n.distance_m, convert::pb_nearby(n, full, &query)))
            .collect();
        if include_shared {
            let offers = self.service.nearby_offers(&query)?;
            ranked.extend(
                offers
                    .iter()
                    .map(|f| (f.distance_m, convert::pb_nearby_offer(f))),
            );
            // Car parks and offers together, nearest first (a stable sort keeps each
            // list's own tie order).
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            ranked.truncate(query.limit);
        }
        Ok(Response::new(pb::FindNearbyResponse {
            results: ranked.into_iter().map(|(_, r)| r).collect(),
        }))
    }

    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Reply<pb::GetAvailabilityResponse> {
        let ids = request
            .get_ref()
            .car_park_ids
            .iter()
            .enumerate()
            .map(|(i, id)| convert::car_park_id(id, &format!("car_park_ids[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let (found, missing) = self.service.get_availability(&ids)?;
        Ok(Response::new(pb::GetAvailabilityResponse {
            availabilities: found.iter().map(convert::pb_availability).collect(),
            not_found_ids: missing.iter().map(|id| id.to_string()).collect(),
        }))
    }

    type WatchAvailabilityStream = BoxStream<pb::WatchAvailabilityResponse>;

    async fn watch_availability(
        &self,
        request: Request<pb::WatchAvailabilityRequest>,
    ) -> Reply<Self::WatchAvailabilityStream> {
        use pb::watch_availability_request::Selector;
        // Whose watch it is, for the per-client cap: the operator or driver its
        // credential proves, else the address it comes from (a made-up credential
        // proves nothing, so it cannot buy a budget of its own).
        let client = match self.any_caller(&request) {
            Ok(Caller::Operator(o)) => format!("operator:{o}"),
            Ok(Caller::Driver(d)) => format!("driver:{d}"),
            Err(_) => request.extensions().get::<Peer>().map_or_else(
                || "address:unknown".to_owned(),
                |p| address_key(p.remote.ip()),
            ),
        };
        let selector = match required(request.into_inner().selector, "selector")? {
            Selector::Ids(ids) => WatchSelector::Ids(
                ids.ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| convert::car_park_id(id, &format!("ids.ids[{i}]")))
                    .collect::<Result<_>>()?,
            ),
            Selector::Area(area) => WatchSelector::Area(convert::bounding_box(&area)?),
        };
        let events = self
            .service
            .watch(selector, client, self.shutdown.clone())?;
        Ok(Response::new(Box::pin(
            ReceiverStream::new(events).map(|e| Ok(pb_event(e))),
        )))
    }

    async fn ping(&self, request: Request<pb::PingRequest>) -> Reply<pb::PingResponse> {
        Ok(Response::new(pb::PingResponse {
            payload: request.into_inner().payload,
        }))
    }

    async fn forecast(&self, request: Request<pb::ForecastRequest>) -> Reply<pb::ForecastResponse> {
        let r = request.get_ref();
        let id = convert::car_park_id(&r.car_park_id, "car_park_id")?;
        let category = convert::query_category(r.category, "category")?;
        let times = r
            .times
            .iter()
            .enumerate()
            .map(|(i, t)| convert::timestamp(t, &format!("times[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let answer = self.service.forecast(&id, category, &times)?;
        Ok(Response::new(pb::ForecastResponse {
            car_park_id: id.to_string(),
            category: pb::SpaceCategory::from(category).into(),
            forecasts: answer
                .points
                .iter()
                .map(|(at, p)| convert::pb_forecast_point(*at, p))
                .collect(),
            observed_at: answer.observed_at.map(convert::pb_timestamp),
            days_learned: answer.days_learned,
        }))
    }

    async fn get_occupancy_history(
        &self,
        request: Request<pb::GetOccupancyHistoryRequest>,
    ) -> Reply<pb::GetOccupancyHistoryResponse> {
        let r = request.get_ref();
        let id = convert::car_park_id(&r.car_park_id, "car_park_id")?;
        let category = convert::query_category(r.category, "category")?;
        let from = r
            .from
            .as_ref()
            .ok_or_else(|| Error::invalid("from", "must be set"))
            .and_then(|t| convert::timestamp(t, "from"))?;
        let to =
            r.to.as_ref()
                .map(|t| convert::timestamp(t, "to"))
                .transpose()?;
        let step = r
            .step
            .map(|d| convert::duration(d, "step"))
            .transpose()?
            .unwrap_or_default();
        let steps = self
            .service
            .occupancy_history(&id, category, from, to, step)
            .await?;
        Ok(Response::new(pb::GetOccupancyHistoryResponse {
            car_park_id: id.to_string(),
            category: pb::SpaceCategory::from(category).into(),
            buckets: steps.iter().map(convert::pb_step).collect(),
        }))
    }
}
