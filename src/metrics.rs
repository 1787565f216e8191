//! Every metric citypark exports, named and described in this one file.
//!
//! Names carry the `citypark_` prefix and base units; only counters end in `_total`.
//! Labels are bounded: gRPC method, code, region, result, reason, status, the one MQTT
//! broker. Never a car
//! park id or a plate. [`ALL`] lists every name, so the dashboard and the alert rules
//! (`deploy/`) can be checked against it (`tests/it/metrics_kit.rs`).

use std::{collections::BTreeSet, sync::OnceLock};

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::{
    domain::{Applied, CarParkStatus, Error, RegionId, ReportOutcome, ReservationState, Result},
    engine::StatusCounts,
};

pub const GRPC_REQUESTS: &str = "citypark_grpc_requests_total";
pub const GRPC_DURATION: &str = "citypark_grpc_request_duration_seconds";
pub const INGEST_REPORTS: &str = "citypark_ingest_reports_total";
pub const INGEST_CLAMPED: &str = "citypark_ingest_clamped_counts_total";
pub const INGEST_REPORT_AGE: &str = "citypark_ingest_report_age_seconds";
pub const CAR_PARKS: &str = "citypark_car_parks";
pub const WATCHERS: &str = "citypark_watchers";
pub const WATCH_RESYNCS: &str = "citypark_watch_resyncs_total";
pub const REDIS_ROUND_TRIPS: &str = "citypark_redis_round_trips_total";
pub const REDIS_REPORTS_WRITTEN: &str = "citypark_redis_reports_written_total";
pub const STORE_UP: &str = "citypark_store_up";
pub const REPLICATION_SKIPPED: &str = "citypark_replication_skipped_total";
pub const RESERVATIONS: &str = "citypark_reservations_total";
pub const RESERVATIONS_ACTIVE: &str = "citypark_reservations_active";
pub const SHARED: &str = "citypark_shared_total";
pub const SHARED_OFFERS: &str = "citypark_shared_offers";
pub const SHARED_BOOKINGS: &str = "citypark_shared_bookings";
pub const SESSIONS_TOTAL: &str = "citypark_sessions_total";
pub const SESSIONS: &str = "citypark_sessions";
pub const PAYMENTS: &str = "citypark_payments_total";
pub const ARREARS: &str = "citypark_arrears_minor";
pub const ARREARS_SESSIONS: &str = "citypark_sessions_in_arrears";
pub const CONNECTIONS: &str = "citypark_connections";
pub const CONNECTIONS_REFUSED: &str = "citypark_connections_refused_total";
pub const CONNECTIONS_CLOSED: &str = "citypark_connections_closed_total";
pub const ACCEPT_ERRORS: &str = "citypark_accept_errors_total";
pub const TLS_RELOADS: &str = "citypark_tls_reloads_total";
pub const RATE_LIMITED: &str = "citypark_rate_limited_total";
pub const HTTP_REQUESTS: &str = "citypark_http_requests_total";
pub const HTTP_RESPONSE_BYTES: &str = "citypark_http_response_bytes_total";
pub const HTTP_CHANGE_STREAMS: &str = "citypark_http_change_streams";
pub const HISTORY_UP: &str = "citypark_history_up";
pub const HISTORY_HANDED_OFF: &str = "citypark_history_handed_off_total";
pub const HISTORY_BACKLOG: &str = "citypark_history_backlog";
pub const HISTORY_ERRORS: &str = "citypark_history_errors_total";
pub const HISTORY_WRITE_DURATION: &str = "citypark_history_write_duration_seconds";
pub const HISTORY_SAMPLES: &str = "citypark_history_samples_total";
pub const HISTORY_SAMPLE_QUEUE: &str = "citypark_history_sample_queue";
pub const FORECASTS_RESTORED: &str = "citypark_forecasts_restored_total";
pub const TOMBSTONES_COMPACTED: &str = "citypark_tombstones_compacted_total";
pub const STORE_COMMITS: &str = "citypark_store_commits_total";
pub const STORE_COMMIT_DURATION: &str = "citypark_store_commit_duration_seconds";
pub const MQTT_CONNECTED: &str = "citypark_mqtt_connected";
pub const MQTT_DISCONNECTS: &str = "citypark_mqtt_disconnects_total";
pub const MQTT_MESSAGES: &str = "citypark_mqtt_messages_total";
pub const MQTT_PUBLISHED: &str = "citypark_mqtt_published_total";

/// Every name above (a unit test holds this list to the declarations).
pub const ALL: &[&str] = &[
    GRPC_REQUESTS,
    GRPC_DURATION,
    INGEST_REPORTS,
    INGEST_CLAMPED,
    INGEST_REPORT_AGE,
    CAR_PARKS,
    WATCHERS,
    WATCH_RESYNCS,
    REDIS_ROUND_TRIPS,
    REDIS_REPORTS_WRITTEN,
    STORE_UP,
    REPLICATION_SKIPPED,
    RESERVATIONS,
    RESERVATIONS_ACTIVE,
    SHARED,
    SHARED_OFFERS,
    SHARED_BOOKINGS,
    SESSIONS_TOTAL,
    SESSIONS,
    PAYMENTS,
    ARREARS,
    ARREARS_SESSIONS,
    CONNECTIONS,
    CONNECTIONS_REFUSED,
    CONNECTIONS_CLOSED,
    ACCEPT_ERRORS,
    TLS_RELOADS,
    RATE_LIMITED,
    HTTP_REQUESTS,
    HTTP_RESPONSE_BYTES,
    HTTP_CHANGE_STREAMS,
    HISTORY_UP,
    HISTORY_HANDED_OFF,
    HISTORY_BACKLOG,
    HISTORY_ERRORS,
    HISTORY_WRITE_DURATION,
    HISTORY_SAMPLES,
    HISTORY_SAMPLE_QUEUE,
    FORECASTS_RESTORED,
    TOMBSTONES_COMPACTED,
    STORE_COMMITS,
    STORE_COMMIT_DURATION,
    MQTT_CONNECTED,
    MQTT_DISCONNECTS,
    MQTT_MESSAGES,
    MQTT_PUBLISHED,
];

/// The histograms of [`ALL`]: Prometheus serves each as `_bucket`, `_sum` and `_count`
/// series.
pub const HISTOGRAMS: &[&str] = &[
    GRPC_DURATION,
    INGEST_REPORT_AGE,
    HISTORY_WRITE_DURATION,
    STORE_COMMIT_DURATION,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// From a feed that reports as it observes (well under a second) to numbers that are
/// already stale when they arrive (a car park's staleness window is 3 report intervals,
/// minutes).
const REPORT_AGE_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A batch of a thousand rows to a nearby PostgreSQL takes milliseconds; seconds mean
/// a struggling database.
const HISTORY_WRITE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder once and returns its handle; later
/// calls (several servers in one test process) share it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(GRPC_DURATION.to_owned()), LATENCY_BUCKETS)
                .expect("static buckets are not empty")
                .set_buckets_for_metric(
                    Matcher::Full(INGEST_REPORT_AGE.to_owned()),
                    REPORT_AGE_BUCKETS,
                )
                .expect("static buckets are not empty")
                .set_buckets_for_metric(
                    Matcher::Full(HISTORY_WRITE_DURATION.to_owned()),
                    HISTORY_WRITE_BUCKETS,
                )
                .expect("static buckets are not empty")
                .set_buckets_for_metric(
                    Matcher::Full(STORE_COMMIT_DURATION.to_owned()),
                    LATENCY_BUCKETS,
                )
                .expect("static buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then
            // ours only renders what it sees, which is nothing, and that is its choice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        GRPC_REQUESTS,
        Unit::Count,
        "gRPC requests answered, by method and status code"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "time to answer a gRPC request (to the response headers for streams)"
    );
    describe_counter!(
        INGEST_REPORTS,
        Unit::Count,
        "occupancy reports by result (applied, duplicate, rejected) and reason"
    );
    describe_counter!(
        INGEST_CLAMPED,
        Unit::Count,
        "counts pulled back into [0, capacity] by deltas and bay reports (drift)"
    );
    describe_histogram!(
        INGEST_REPORT_AGE,
        Unit::Seconds,
        "age of an applied report's numbers when it was applied (server clock minus observed_at), by region: the operator's delay, the network and the ingest queue"
    );
    describe_gauge!(
        CAR_PARKS,
        Unit::Count,
        "registered car parks by region and status (open, closed, stale, no_data); every instance counts the whole city"
    );
    describe_gauge!(WATCHERS, Unit::Count, "open availability watch streams");
    describe_counter!(
        REPLICATION_SKIPPED,
        Unit::Count,
        "stored records and change-stream entries skipped because this version cannot read them, by kind and reason (unknown_kind, newer_format, missing_base, undecodable)"
    );
    describe_counter!(
        RESERVATIONS,
        Unit::Count,
        "reservation changes by result (created, refused with a reason, cancelled, checked_in, completed, no_show)"
    );
    describe_gauge!(
        RESERVATIONS_ACTIVE,
        Unit::Count,
        "reservations held in this instance's replica, by state"
    );
    describe_counter!(
        SHARED,
        Unit::Count,
        "shared-parking changes by result (offered, booked, refused, cancelled, host_cancelled, checked_in, completed, no_show)"
    );
    describe_gauge!(
        SHARED_OFFERS,
        Unit::Count,
        "shared offers in this instance's replica, by state"
    );
    describe_gauge!(
        SHARED_BOOKINGS,
        Unit::Count,
        "shared bookings in this instance's replica, by state"
    );
    describe_counter!(
        SESSIONS_TOTAL,
        Unit::Count,
        "plates read at gates by what they did to parking sessions (opened, voided_previous, closed_free, closed_to_charge, closed_at_barrier, exit_without_entry, failed)"
    );
    describe_gauge!(
        SESSIONS,
        Unit::Count,
        "parking sessions in this instance's replica, by state"
    );
    describe_counter!(
        PAYMENTS,
        Unit::Count,
        "charges of closed sessions by method (wallet, gateway) and result (succeeded, declined, retry, error)"
    );
    describe_gauge!(
        ARREARS,
        Unit::Count,
        "fees charged and refused for good (arrears), in minor units, by currency"
    );
    describe_gauge!(
        ARREARS_SESSIONS,
        Unit::Count,
        "sessions whose charge was refused for good (arrears)"
    );
    describe_gauge!(
        CONNECTIONS,
        Unit::Count,
        "connections open, by port (grpc, http); both are under --max-connections together"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "connections refused, by port (grpc, http), because --max-connections were open (on the HTTP port, also when it held half of them)"
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "connections the server closed, by reason (no_first_call, idle, tls_handshake_failed, tls_client_certificate_refused)"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        Unit::Count,
        "errors accepting a connection, by port (grpc, http, metrics): out of open files; each is followed by a pause"
    );
    describe_counter!(
        TLS_RELOADS,
        Unit::Count,
        "TLS certificate reloads after a file change, by result (ok, failed)"
    );
    describe_counter!(
        RATE_LIMITED,
        Unit::Count,
        "calls refused by a rate limit, by class of caller (operator, driver, anonymous)"
    );
    describe_counter!(
        WATCH_RESYNCS,
        Unit::Count,
        "watchers that fell behind and were sent a fresh snapshot"
    );
    describe_counter!(
        REDIS_ROUND_TRIPS,
        Unit::Count,
        "round trips to Redis by purpose (registry, ingest, start, snapshot, tail, heartbeat, and the other writes by use case)"
    );
    describe_counter!(
        REDIS_REPORTS_WRITTEN,
        Unit::Count,
        "occupancy reports written to Redis; per ingest round trip, the batching"
    );
    describe_counter!(
        HTTP_REQUESTS,
        Unit::Count,
        "requests answered on the HTTP port, by route (the path pattern; other for none) and status"
    );
    describe_counter!(
        HTTP_RESPONSE_BYTES,
        Unit::Bytes,
        "bytes of response bodies sent on the HTTP port, by route (change streams as they flow)"
    );
    describe_gauge!(
        HTTP_CHANGE_STREAMS,
        Unit::Count,
        "open-data change streams (Server-Sent Events) open"
    );
    describe_gauge!(
        HISTORY_UP,
        Unit::Count,
        "1 while the history database takes writes, 0 while its last write failed (hand-off pauses, samples wait)"
    );
    describe_counter!(
        HISTORY_HANDED_OFF,
        Unit::Count,
        "finished records written to history and removed from live state, by kind (session, reservation, booking, ledger_entry)"
    );
    describe_gauge!(
        HISTORY_BACKLOG,
        Unit::Count,
        "finished records past the hot window still in live state after the last hand-off round, by kind"
    );
    describe_counter!(
        HISTORY_ERRORS,
        Unit::Count,
        "history statements that failed, by operation (hand_off, samples, read, retention)"
    );
    describe_histogram!(
        HISTORY_WRITE_DURATION,
        Unit::Seconds,
        "time to write one batch to history, by kind (session, reservation, booking, ledger_entry, sample)"
    );
    describe_counter!(
        HISTORY_SAMPLES,
        Unit::Count,
        "occupancy samples (one car park, category and 5-minute bucket) by result (written; dropped: the queue was full, or changes the sampler fell behind on)"
    );
    describe_gauge!(
        HISTORY_SAMPLE_QUEUE,
        Unit::Count,
        "occupancy samples waiting to be written to history"
    );
    describe_counter!(
        FORECASTS_RESTORED,
        Unit::Count,
        "forecasters (one car park and category) restored from history at start, by result (restored; failed: history could not be read, counted once)"
    );
    describe_counter!(
        TOMBSTONES_COMPACTED,
        Unit::Count,
        "version tombstones of removed records dropped once past the change stream's reach, by kind"
    );
    describe_gauge!(
        STORE_UP,
        Unit::Count,
        "1 while the store accepts writes (Redis reachable, the data directory writable), 0 while writes are refused"
    );
    describe_counter!(
        STORE_COMMITS,
        Unit::Count,
        "commits of the durable embedded store (each a batch of writes appended to its commit log and synced to disk), by result (ok, error)"
    );
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "time to append one commit of the durable embedded store to its commit log and sync it to disk"
    );
    describe_gauge!(
        MQTT_CONNECTED,
        "1 while the connection to the MQTT broker (--mqtt-url; its host:port as the broker label) is up, 0 while it is down and being retried"
    );
    describe_counter!(
        MQTT_DISCONNECTS,
        Unit::Count,
        "MQTT broker connections lost after they were up, by broker (host:port)"
    );
    describe_counter!(
        MQTT_MESSAGES,
        Unit::Count,
        "MQTT messages taken from the reports' topics, by outcome (decided; malformed: not reports, acked as rejected; bad_topic: not a report topic; dropped: QoS 0 with the queue full)"
    );
    describe_counter!(
        MQTT_PUBLISHED,
        Unit::Count,
        "MQTT messages published, by kind (ack: a report's ack; availability: a car park's retained availability for signs)"
    );
}

/// One transaction of the durable store, made or failed, and how long it took.
pub fn record_store_commit(ok: bool, seconds: f64) {
    counter!(STORE_COMMITS, "result" => if ok { "ok" } else { "error" }).increment(1);
    if ok {
        histogram!(STORE_COMMIT_DURATION).record(seconds);
    }
}

/// Whether the connection to the MQTT broker at `broker` (host:port) is up.
pub fn record_mqtt_connected(broker: &str, up: bool) {
    gauge!(MQTT_CONNECTED, "broker" => broker.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// An MQTT connection to `broker` that was up was lost.
pub fn record_mqtt_disconnect(broker: &str) {
    counter!(MQTT_DISCONNECTS, "broker" => broker.to_owned()).increment(1);
}

/// An MQTT message taken from the reports' topics, by what became of it.
pub fn record_mqtt_message(outcome: &'static str) {
    counter!(MQTT_MESSAGES, "outcome" => outcome).increment(1);
}

/// An MQTT message published, by kind.
pub fn record_mqtt_published(kind: &'static str) {
    counter!(MQTT_PUBLISHED, "kind" => kind).increment(1);
}

/// Whether history takes writes.
pub fn record_history_up(up: bool) {
    gauge!(HISTORY_UP).set(if up { 1.0 } else { 0.0 });
}

/// `n` records of `kind` moved from live state to history.
pub fn record_handed_off(kind: &'static str, n: u64) {
    counter!(HISTORY_HANDED_OFF, "kind" => kind).increment(n);
}

/// Finished records of `kind` past the hot window still live.
pub fn record_history_backlog(kind: &'static str, n: usize) {
    gauge!(HISTORY_BACKLOG, "kind" => kind).set(n as f64);
}

/// A history statement for `op` failed.
pub fn record_history_error(op: &'static str) {
    counter!(HISTORY_ERRORS, "op" => op).increment(1);
}

/// A batch of `kind` written to history in `seconds`.
pub fn record_history_write(kind: &'static str, seconds: f64) {
    histogram!(HISTORY_WRITE_DURATION, "kind" => kind).record(seconds);
}

/// `n` occupancy samples written or dropped.
pub fn record_samples(result: &'static str, n: u64) {
    counter!(HISTORY_SAMPLES, "result" => result).increment(n);
}

/// `n` forecasters restored from history at start (or a failed restore).
pub fn record_forecasts_restored(result: &'static str, n: u64) {
    counter!(FORECASTS_RESTORED, "result" => result).increment(n);
}

/// Occupancy samples waiting to be written.
pub fn record_sample_queue(n: usize) {
    gauge!(HISTORY_SAMPLE_QUEUE).set(n as f64);
}

/// `n` tombstones of `kind` compacted.
pub fn record_tombstones_compacted(kind: &'static str, n: u64) {
    counter!(TOMBSTONES_COMPACTED, "kind" => kind).increment(n);
}

/// The counter and the latency histogram of a gRPC method's answers with one status
/// code, for the metrics layer to keep.
pub fn request_handles(method: &'static str, code: &'static str) -> (Counter, Histogram) {
    (
        counter!(GRPC_REQUESTS, "method" => method, "code" => code),
        histogram!(GRPC_DURATION, "method" => method, "code" => code),
    )
}

/// Counts one report's result.
pub fn record_report(result: &Result<Applied>) {
    match result {
        Ok(Applied {
            outcome: ReportOutcome::Applied { clamped },
            availability,
            ..
        }) => {
            counter!(INGEST_REPORTS, "result" => "applied", "reason" => "").increment(1);
            if *clamped > 0 {
                counter!(INGEST_CLAMPED).increment(u64::from(*clamped));
            }
            // An applied report's numbers are the car park's newest, so the data age
            // worked out when it was applied is the report's.
            if let Some(age) = availability.data_age {
                histogram!(INGEST_REPORT_AGE, "region" => availability.region.as_str().to_owned())
                    .record(age.as_secs_f64());
            }
        }
        Ok(Applied {
            outcome: ReportOutcome::Duplicate,
            ..
        }) => counter!(INGEST_REPORTS, "result" => "duplicate", "reason" => "").increment(1),
        Err(error) => {
            counter!(INGEST_REPORTS, "result" => "rejected", "reason" => error.kind().label())
                .increment(1)
        }
    }
}

/// Counts the `reports` of a batch that failed as a whole.
pub fn record_batch_failure(error: &Error, reports: u64) {
    counter!(INGEST_REPORTS, "result" => "rejected", "reason" => error.kind().label())
        .increment(reports);
}

/// The car-park gauges, by region and status. Remembers the regions it set, so that a
/// region whose last car park went reads zero rather than its last count.
#[derive(Debug, Default)]
pub struct CarParkGauges {
    regions: BTreeSet<RegionId>,
}

impl CarParkGauges {
    /// Sets every status of every region in `counts`, and zero for regions gone since
    /// the last call.
    pub fn record(&mut self, counts: &StatusCounts) {
        let gone = self.regions.iter().filter(|r| !counts.contains_key(*r));
        let zeros = [0; CarParkStatus::ALL.len()];
        for (region, row) in gone.map(|r| (r, &zeros)).chain(counts) {
            for (status, n) in CarParkStatus::ALL.iter().zip(row) {
                let region = region.as_str().to_owned();
                gauge!(CAR_PARKS, "region" => region, "status" => status.name()).set(*n as f64);
            }
        }
        self.regions = counts.keys().cloned().collect();
    }
}

/// Counts one reservation change: `result` is what happened ("created", "cancelled",
/// "checked_in", "completed", "no_show"), or "refused" with the error's kind.
pub fn record_reservation(result: &'static str, refused: Option<&Error>) {
    let reason = refused.map_or("", |e| e.kind().label());
    counter!(RESERVATIONS, "result" => result, "reason" => reason).increment(1);
}

/// Sets the reservations-by-state gauges.
pub fn record_reservation_states(counts: &[(ReservationState, usize)]) {
    for (state, n) in counts {
        gauge!(RESERVATIONS_ACTIVE, "state" => state.label()).set(*n as f64);
    }
}

/// Counts one shared-parking change by its result.
pub fn record_shared(result: &'static str) {
    counter!(SHARED, "result" => result).increment(1);
}

/// Sets the shared-parking gauges: active and withdrawn offers, bookings by state.
pub fn record_shared_states((active, withdrawn, bookings): (usize, usize, [usize; 5])) {
    gauge!(SHARED_OFFERS, "state" => "active").set(active as f64);
    gauge!(SHARED_OFFERS, "state" => "withdrawn").set(withdrawn as f64);
    for (state, n) in crate::domain::BookingState::ALL.iter().zip(bookings) {
        gauge!(SHARED_BOOKINGS, "state" => state.name().to_ascii_lowercase()).set(n as f64);
    }
}

/// Counts one plate read at a gate by what it did to a session.
pub fn record_session(result: &'static str) {
    counter!(SESSIONS_TOTAL, "result" => result).increment(1);
}

/// Counts one charge attempt by method and result.
pub fn record_payment(method: &'static str, result: &'static str) {
    counter!(PAYMENTS, "method" => method, "result" => result).increment(1);
}

/// Sets the session gauges: sessions by state, and the arrears.
pub fn record_session_states(counts: &crate::engine::SessionCounts) {
    for (state, n) in crate::domain::SessionState::ALL.iter().zip(counts.by_state) {
        gauge!(SESSIONS, "state" => state.as_str()).set(n as f64);
    }
    gauge!(ARREARS_SESSIONS).set(counts.arrears as f64);
    for (currency, minor) in &counts.arrears_minor {
        gauge!(ARREARS, "currency" => currency.clone()).set(*minor as f64);
    }
}

/// Counts one round trip to Redis.
pub fn record_redis_round_trip(op: &'static str) {
    counter!(REDIS_ROUND_TRIPS, "op" => op).increment(1);
}

/// Counts reports written to Redis in one round trip.
pub fn record_redis_reports_written(n: u64) {
    counter!(REDIS_REPORTS_WRITTEN).increment(n);
}

/// Sets whether the store accepts writes.
pub fn record_store_up(up: bool) {
    gauge!(STORE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts a stored record or change skipped by replication.
pub fn record_replication_skipped(kind: &'static str, reason: &'static str) {
    counter!(REPLICATION_SKIPPED, "kind" => kind, "reason" => reason).increment(1);
}

/// Counts a watcher resync.
pub fn record_resync() {
    counter!(WATCH_RESYNCS).increment(1);
}

/// Counts a connection refused at the cap on a port (grpc, http).
pub fn record_connection_refused(port: &'static str) {
    counter!(CONNECTIONS_REFUSED, "port" => port).increment(1);
}

/// Counts a connection the server closed, and why.
pub fn record_connection_closed(reason: &'static str) {
    counter!(CONNECTIONS_CLOSED, "reason" => reason).increment(1);
}

/// Counts an error accepting a connection on a port (grpc, metrics).
pub fn record_accept_error(port: &'static str) {
    counter!(ACCEPT_ERRORS, "port" => port).increment(1);
}

/// Counts a TLS certificate reload.
pub fn record_tls_reload(ok: bool) {
    counter!(TLS_RELOADS, "result" => if ok { "ok" } else { "failed" }).increment(1);
}

/// Counts a call refused by a rate limit.
pub fn record_rate_limited(caller: &'static str) {
    counter!(RATE_LIMITED, "caller" => caller).increment(1);
}

/// Counts one answered HTTP request and its body's bytes, when known.
pub fn record_http(route: &str, status: u16, bytes: Option<u64>) {
    let route = route.to_owned();
    counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status.to_string()).increment(1);
    if let Some(bytes) = bytes {
        counter!(HTTP_RESPONSE_BYTES, "route" => route).increment(bytes);
    }
}

/// Counts bytes of a change stream as they are sent.
pub fn record_change_stream_bytes(bytes: u64) {
    counter!(HTTP_RESPONSE_BYTES, "route" => "/open-data/v1/changes").increment(bytes);
}

/// Holds a gauge of things open (watchers, connections) one higher for as long as it
/// lives.
pub struct Held(metrics::Gauge);

impl Held {
    /// An open watch stream.
    pub fn watcher() -> Self {
        Self::new(gauge!(WATCHERS))
    }

    /// An open connection on a port (grpc, http).
    pub fn connection(port: &'static str) -> Self {
        Self::new(gauge!(CONNECTIONS, "port" => port))
    }

    /// An open open-data change stream.
    pub fn change_stream() -> Self {
        Self::new(gauge!(HTTP_CHANGE_STREAMS))
    }

    fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Mutex};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};

    use super::*;

    #[test]
    fn all_lists_every_name_this_file_declares() {
        let declared: BTreeSet<&str> = include_str!("metrics.rs")
            .lines()
            .filter_map(|line| {
                let (_, literal) = line.strip_prefix("pub const ")?.split_once(": &str = \"")?;
                literal.strip_suffix("\";")
            })
            .collect();
        let listed: BTreeSet<&str> = ALL.iter().copied().collect();
        assert_eq!(listed.len(), ALL.len(), "a name is listed twice");
        assert_eq!(declared, listed, "ALL and the declared names differ");
        assert!(HISTOGRAMS.iter().all(|h| listed.contains(h)));
    }

    /// What `describe` says each name is.
    #[derive(Default)]
    struct Descriptions(Mutex<BTreeMap<String, (&'static str, Option<Unit>)>>);

    impl Descriptions {
        fn note(&self, key: KeyName, kind: &'static str, unit: Option<Unit>) {
            let previous = self
                .0
                .lock()
                .unwrap()
                .insert(key.as_str().to_owned(), (kind, unit));
            assert!(previous.is_none(), "{} described twice", key.as_str());
        }
    }

    impl Recorder for Descriptions {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
            self.note(key, "counter", unit);
        }
        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
            self.note(key, "gauge", unit);
        }
        fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
            self.note(key, "histogram", unit);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Every name gets its help text (Prometheus shows it, promtool wants it), and the
    /// naming rules hold: only counters end in `_total`, seconds end in `_seconds`.
    #[test]
    fn every_name_is_described_as_its_kind() {
        let recorder = Descriptions::default();
        metrics::with_local_recorder(&recorder, describe);
        let described = recorder.0.into_inner().unwrap();
        for name in ALL {
            let (kind, unit) = described
                .get(*name)
                .unwrap_or_else(|| panic!("{name} is not described"));
            assert!(name.starts_with("citypark_"), "{name}");
            assert_eq!(
                name.ends_with("_total"),
                *kind == "counter",
                "{name} is a {kind}"
            );
            assert_eq!(
                HISTOGRAMS.contains(name),
                *kind == "histogram",
                "{name} is a {kind}"
            );
            assert_eq!(
                name.ends_with("_seconds"),
                *unit == Some(Unit::Seconds),
                "{name} is in {unit:?}"
            );
        }
        let extra: Vec<&String> = described
            .keys()
            .filter(|n| !ALL.contains(&n.as_str()))
            .collect();
        assert!(extra.is_empty(), "described but not in ALL: {extra:?}");
    }
}
