//! The one place where errors become gRPC statuses (and report rejections).
//!
//! An error's [`ErrorKind`] alone picks its gRPC code and its reject code, from one
//! table; its metric label is [`ErrorKind::label`], the same word as the code's label.

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
