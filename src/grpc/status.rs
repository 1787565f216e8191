//! The one place where errors become gRPC statuses (and report rejections).

use tonic::{Code, Status};

use crate::{domain::Error, pb};

/// The gRPC status of an error. Internal details are logged here and never sent.
pub fn to_status(error: Error) -> Status {
    let code = code(&error);
    match error {
        Error::Internal(detail) => {
            tracing::error!(%detail, "internal error");
            Status::internal("internal error; see the server log")
        }
        other => Status::new(code, other.to_string()),
    }
}

/// The gRPC code of an error.
pub fn code(error: &Error) -> Code {
    match error {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::NotFound { .. } => Code::NotFound,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
    }
}

/// How a rejected report is described in its ack.
pub fn reject(error: &Error) -> (pb::RejectCode, String, String) {
    let code = match error {
        Error::InvalidArgument { .. } => pb::RejectCode::InvalidArgument,
        Error::NotFound { .. } => pb::RejectCode::NotFound,
        Error::PermissionDenied(_) | Error::Unauthenticated(_) => pb::RejectCode::PermissionDenied,
        _ => pb::RejectCode::Unavailable,
    };
    let field = match error {
        Error::InvalidArgument { field, .. } => field.clone(),
        _ => String::new(),
    };
    let reason = match error {
        Error::Internal(_) => "internal error; resend later".to_owned(),
        Error::InvalidArgument { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    (code, field, reason)
}

/// Lowercase snake-case name of a code, for metric labels.
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
