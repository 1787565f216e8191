//! Messages for feeds that are not gRPC calls (MQTT): reports read from a payload,
//! acks and availability written as one, in JSON or binary protobuf.
//!
//! The payloads are the API's own messages (`OccupancyReport`, `ReportAck`,
//! `CarParkAvailability`), read and written by the same conversions and the same JSON
//! plans as gRPC and Connect, so a device and an app see one shape. This is the one
//! place outside the gRPC handlers that knows protobuf.

use prost::Message;

use super::{connect::PLANS, convert, handlers::Read};
use crate::{
    audit::{self, Who},
    domain::{Applied, Availability, CarParkId, Error, OperatorId, Report, Result},
    pb,
};

/// How a payload is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The proto3 JSON mapping (`application/json`, or no content type).
    Json,
    /// Binary protobuf of one `OccupancyReport`.
    Proto,
    /// Binary protobuf of a `PublishRequest`: several reports.
    ProtoList,
}

impl Encoding {
    /// The encoding a content type names: JSON when there is none; binary protobuf for
    /// `application/protobuf` (or `application/x-protobuf`, `application/proto`), a
    /// list of reports with the parameter `proto=citypark.v1.PublishRequest`.
    pub fn of_content_type(content_type: Option<&str>) -> Result<Self> {
        let Some(content_type) = content_type else {
            return Ok(Self::Json);
        };
        let mut parts = content_type.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
        let message = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("proto"))
            .map(|(_, v)| v.trim().trim_matches('"'));
        let unknown = || Error::InvalidArgument {
            field: "content_type".into(),
            reason: format!(
                "{content_type:?} is neither application/json nor application/protobuf \
                 (with proto=citypark.v1.OccupancyReport or citypark.v1.PublishRequest)"
            ),
        };
        match essence.as_str() {
            "application/json" => Ok(Self::Json),
            "application/protobuf" | "application/x-protobuf" | "application/proto" => {
                match message {
                    None | Some("citypark.v1.OccupancyReport") => Ok(Self::Proto),
                    Some("citypark.v1.PublishRequest") => Ok(Self::ProtoList),
                    Some(_) => Err(unknown()),
                }
            }
            _ => Err(unknown()),
        }
    }

    /// The content type of an answer (an ack) in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Proto | Self::ProtoList => "application/protobuf; proto=citypark.v1.ReportAck",
        }
    }
}

/// A payload's reports on one car park, as read: the valid ones go to the service, in
/// order, and [`Reports::acks`] answers each.
pub struct Reports {
    read: Read,
    encoding: Encoding,
}

impl Reports {
    /// The reports of `payload` on `car_park`: JSON of one `OccupancyReport` or an
    /// array of them, or binary protobuf by `encoding`. A report that leaves
    /// `car_park_id` empty is on `car_park`; one that names another car park is
    /// rejected, so the topic a device may write to bounds what it can report on. The
    /// error is a payload that is not the message at all (nothing is read from it).
    pub fn read(
        payload: &[u8],
        encoding: Encoding,
        car_park: &CarParkId,
        max_batch: usize,
    ) -> Result<(Self, Vec<Report>)> {
        let malformed = |reason: String| Error::InvalidArgument {
            field: String::new(),
            reason,
        };
        let mut reports = match encoding {
            Encoding::Json => {
                let text = payload.trim_ascii_start();
                let mut wire = Vec::new();
                if text.first() == Some(&b'[') {
                    let mut list = Vec::with_capacity(text.len() + 12);
                    list.extend_from_slice(b"{\"reports\":");
                    list.extend_from_slice(text);
                    list.push(b'}');
                    PLANS
                        .read("citypark.v1.PublishRequest", &list, &mut wire)
                        .map_err(|e| malformed(e.0))?;
                    pb::PublishRequest::decode(wire.as_slice())
                        .map_err(|e| malformed(e.to_string()))?
                        .reports
                } else {
                    PLANS
                        .read("citypark.v1.OccupancyReport", text, &mut wire)
                        .map_err(|e| malformed(e.0))?;
                    vec![
                        pb::OccupancyReport::decode(wire.as_slice())
                            .map_err(|e| malformed(e.to_string()))?,
                    ]
                }
            }
            Encoding::Proto => vec![
                pb::OccupancyReport::decode(payload)
                    .map_err(|e| malformed(format!("not a citypark.v1.OccupancyReport: {e}")))?,
            ],
            Encoding::ProtoList => {
                pb::PublishRequest::decode(payload)
                    .map_err(|e| malformed(format!("not a citypark.v1.PublishRequest: {e}")))?
                    .reports
            }
        };
        if reports.is_empty() {
            return Err(malformed("no reports".into()));
        }
        if reports.len() > max_batch {
            return Err(Error::ResourceExhausted(format!(
                "more than {max_batch} reports in one message"
            )));
        }
        for report in &mut reports {
            if report.car_park_id.is_empty() {
                report.car_park_id = car_park.to_string();
            }
        }
        let (read, valid) = Read::checked(reports, |report| {
            if report.car_park_id == car_park.as_str() {
                return Ok(());
            }
            Err(Error::InvalidArgument {
                field: "car_park_id".into(),
                reason: format!("the topic is car park {car_park:?}'s; report it there"),
            })
        });
        Ok((Self { read, encoding }, valid))
    }

    /// Each report's ack, in order: rejected as read, or as the service answered
    /// (`results`, one per valid report, or one error for them all). Audited and
    /// counted as gRPC reports are. Each is a `ReportAck` in the payload's encoding.
    pub fn acks(self, caller: &OperatorId, results: Result<Vec<Result<Applied>>>) -> Vec<Vec<u8>> {
        let encoding = self.encoding;
        self.read
            .acks(caller, results)
            .iter()
            .map(|ack| encode(encoding, "citypark.v1.ReportAck", ack))
            .collect()
    }
}

/// The ack of a payload that could not be read at all: rejected, on `car_park`, with
/// sequence 0 and the reason. Counted and audited as a rejected report.
pub fn malformed_ack(
    caller: &OperatorId,
    car_park: &CarParkId,
    encoding: Encoding,
    error: &Error,
) -> Vec<u8> {
    let rejected: Result<Applied> = Err(error.clone());
    crate::metrics::record_report(&rejected);
    audit::report(Who::Operator(caller), car_park.as_str(), 0, &rejected);
    let ack = super::handlers::ack_rejected((car_park.to_string(), 0), error);
    encode(encoding, "citypark.v1.ReportAck", &ack)
}

/// A car park's availability as the JSON of `CarParkAvailability`, every field
/// written (zeros too), as Connect and the gRPC JSON mapping write it.
pub fn availability_json(availability: &Availability) -> Vec<u8> {
    encode(
        Encoding::Json,
        "citypark.v1.CarParkAvailability",
        &convert::pb_availability(availability),
    )
}

fn encode(encoding: Encoding, name: &str, message: &impl Message) -> Vec<u8> {
    let wire = message.encode_to_vec();
    if encoding != Encoding::Json {
        return wire;
    }
    let mut json = Vec::new();
    PLANS
        .write(name, &wire, &mut json)
        .expect("a message the server encoded is its own kind");
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_the_encoding() {
        use Encoding::*;
        for (given, expected) in [
            (None, Json),
            (Some("application/json"), Json),
            (Some("Application/JSON; charset=utf-8"), Json),
            (Some("application/protobuf"), Proto),
            (Some("application/x-protobuf"), Proto),
            (
                Some("application/protobuf; proto=citypark.v1.OccupancyReport"),
                Proto,
            ),
            (
                Some("application/protobuf;proto=\"citypark.v1.PublishRequest\""),
                ProtoList,
            ),
        ] {
            assert_eq!(
                Encoding::of_content_type(given).unwrap(),
                expected,
                "{given:?}"
            );
        }
        for refused in [
            "text/plain",
            "application/protobuf; proto=citypark.v1.ReportAck",
        ] {
            assert!(
                Encoding::of_content_type(Some(refused)).is_err(),
                "{refused}"
            );
        }
    }
}
