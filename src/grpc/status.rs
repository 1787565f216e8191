//! The one place where errors become gRPC statuses (and report rejections).
//!
//! An error's [`ErrorKind`] alone picks its gRPC code and its reject code, from one
//! table; its metric label is [`ErrorKind::label`], the same word as the code's label.

use std::{collections::HashMap, sync::LazyLock};

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::{Code, Status};

use crate::{
    domain::{Error, ErrorKind},
    pb,
};

/// How each kind of error goes over the wire: the status code of a failed call, and
/// the reject code of a report rejected in its ack (which has fewer, coarser codes: an
/// operator only needs to know whether to fix the report, its car park, its key, or to
/// resend later).
fn rendering(kind: ErrorKind) -> (Code, pb::RejectCode) {
    use ErrorKind as K;
    use pb::RejectCode as R;
    match kind {
        K::InvalidArgument => (Code::InvalidArgument, R::InvalidArgument),
        K::NotFound => (Code::NotFound, R::NotFound),
        K::Unauthenticated => (Code::Unauthenticated, R::PermissionDenied),
        K::PermissionDenied => (Code::PermissionDenied, R::PermissionDenied),
        K::FailedPrecondition => (Code::FailedPrecondition, R::Unavailable),
        K::ResourceExhausted => (Code::ResourceExhausted, R::Unavailable),
        K::Unavailable => (Code::Unavailable, R::Unavailable),
        K::Internal => (Code::Internal, R::Unavailable),
    }
}

/// The gRPC code of a kind of error.
pub fn code(kind: ErrorKind) -> Code {
    rendering(kind).0
}

/// The reject code of a kind of error, for a report's ack.
pub fn reject_code(kind: ErrorKind) -> pb::RejectCode {
    rendering(kind).1
}

/// The gRPC status of an error. Internal details are logged here and never sent.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; see the server log")
            }
            other => Status::new(code(other.kind()), bounded(other.to_string())),
        }
    }
}

/// A message cut to `MAX_MESSAGE` characters: whatever a client sent, the answer stays
/// small enough for every client to receive (values echoed are cut at the source too,
/// see `Error::excerpt`; this bounds what no rule foresaw).
fn bounded(message: String) -> String {
    const MAX_MESSAGE: usize = 512;
    if message.chars().count() <= MAX_MESSAGE {
        return message;
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE).collect();
    cut.push('…');
    cut
}

/// How a rejected report is described in its ack: code, field and reason.
pub fn reject(error: &Error) -> (pb::RejectCode, String, String) {
    let field = match error {
        Error::InvalidArgument { field, .. } => field.clone(),
        _ => String::new(),
    };
    let reason = match error {
        Error::Internal(_) => "internal error; resend later".to_owned(),
        Error::InvalidArgument { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    (reject_code(error.kind()), field, reason)
}

/// The field of the request a protobuf decode error is about, as a path from the
/// request (`car_park.capacity.spaces`), so that a message that breaks in a field is
/// refused naming it like any other invalid field. tonic's codec reports prost's error,
/// which lists where decoding failed, innermost first: `failed to decode Protobuf
/// message: CategoryCapacity.spaces: CarPark.capacity: UpsertCarParkRequest.car_park:
/// invalid varint`. prost names a oneof, not its member: where decoding went on into a
/// member's message, the member is named (`report.snapshot.free.count`, not
/// `report.body.free.count`). `None` if the error names no field: the bytes broke
/// before a field of the request could be read.
pub fn decode_error_field(message: &str) -> Option<String> {
    let mut rest = message.strip_prefix("failed to decode Protobuf message: ")?;
    let mut stack = Vec::new();
    while let Some((entry, tail)) = rest.split_once(": ") {
        let Some((message, field)) = entry.split_once('.') else {
            break;
        };
        let field = field.strip_prefix("r#").unwrap_or(field);
        let ident =
            |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ident(message) || !ident(field) {
            break;
        }
        stack.push((message, field));
        rest = tail;
    }
    let path: Vec<&str> = (0..stack.len())
        .rev()
        .map(|i| {
            let (message, field) = stack[i];
            let inner = i.checked_sub(1).map(|j| stack[j].0);
            inner
                .and_then(|inner| oneof_member(message, field, inner))
                .unwrap_or(field)
        })
        .collect();
    (!path.is_empty()).then(|| path.join("."))
}

/// The member of oneof `oneof` of message `message` (simple names, as prost gives
/// them) whose type is message `inner`, if `oneof` is one.
fn oneof_member(message: &str, oneof: &str, inner: &str) -> Option<&'static str> {
    /// Every message of the protos, by simple name (unique across them).
    static MESSAGES: LazyLock<HashMap<String, DescriptorProto>> = LazyLock::new(|| {
        fn collect(messages: &[DescriptorProto], into: &mut HashMap<String, DescriptorProto>) {
            for m in messages {
                collect(&m.nested_type, into);
                into.insert(m.name().to_owned(), m.clone());
            }
        }
        let mut messages = HashMap::new();
        let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
        for file in &set.file {
            collect(&file.message_type, &mut messages);
        }
        messages
    });
    let descriptor = MESSAGES.get(message)?;
    let index = descriptor
        .oneof_decl
        .iter()
        .position(|o| o.name() == oneof)?;
    descriptor
        .field
        .iter()
        .find(|f| {
            f.oneof_index == Some(index as i32) && f.type_name().rsplit('.').next() == Some(inner)
        })
        .map(|f| f.name())
}

/// Lowercase snake-case name of a code, for metric labels. Codes come from tonic too
/// (a cancelled call, a message too large), so every code has one; for the codes of
/// citypark's errors it is [`ErrorKind::label`] (a test checks they agree).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_has_the_label_of_its_code() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.label(), code_label(code(kind)), "{kind:?}");
        }
    }

    #[test]
    fn internal_details_are_never_sent() {
        let status = Status::from(Error::Internal("redis said: secret".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"), "{status:?}");
        let (code, field, reason) = reject(&Error::Internal("secret".into()));
        assert_eq!(code, pb::RejectCode::Unavailable);
        assert!(field.is_empty() && !reason.contains("secret"));
    }

    #[test]
    fn a_decode_error_names_its_field_from_the_request() {
        let field =
            |m: &str| decode_error_field(&format!("failed to decode Protobuf message: {m}"));
        assert_eq!(
            field(
                "CategoryCapacity.spaces: CarPark.capacity: UpsertCarParkRequest.car_park: \
                 invalid varint"
            )
            .as_deref(),
            Some("car_park.capacity.spaces")
        );
        // A oneof's member, by the message decoding went on into.
        assert_eq!(
            field(
                "CategoryCount.count: SnapshotReport.free: OccupancyReport.body: \
                 ReportRequest.report: invalid wire type: LengthDelimited (expected Varint)"
            )
            .as_deref(),
            Some("report.snapshot.free.count")
        );
        // A scalar member of a oneof: the oneof is as near as prost says.
        assert_eq!(
            field("OccupancyReport.body: ReportRequest.report: buffer underflow").as_deref(),
            Some("report.body")
        );
        assert_eq!(
            field("GetCarParkRequest.id: invalid string value: data is not UTF-8 encoded")
                .as_deref(),
            Some("id")
        );
        assert_eq!(field("invalid wire type value: 7"), None);
        assert_eq!(field("buffer underflow"), None);
        assert_eq!(decode_error_field("Missing request message"), None);
    }

    #[test]
    fn statuses_and_rejections_carry_the_message() {
        let invalid = Error::invalid("car_park.name", "must be 1 to 200 characters");
        let status = Status::from(invalid.clone());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "car_park.name: must be 1 to 200 characters"
        );
        assert_eq!(
            reject(&invalid),
            (
                pb::RejectCode::InvalidArgument,
                "car_park.name".to_owned(),
                "must be 1 to 200 characters".to_owned()
            )
        );
        let denied = Error::Unauthenticated("no API key".into());
        assert_eq!(Status::from(denied.clone()).code(), Code::Unauthenticated);
        assert_eq!(reject(&denied).0, pb::RejectCode::PermissionDenied);
    }
}
