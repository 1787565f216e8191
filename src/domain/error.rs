//! The one error type of citypark, and its kind: the kind alone decides how an error
//! is rendered (gRPC code, ingest reject code, metric label), so they cannot disagree.

use std::fmt;

/// Result with citypark's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as a client should learn it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field is missing or invalid. `field` is a path such as `car_park.capacity[1].spaces`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The named thing does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// No or an unknown API key.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (another operator's car park).
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the current state forbids it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was exceeded.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store cannot be reached right now; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected state; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure an error is. Every rendering of an error derives from this:
/// the metric label here, the gRPC code and the ingest reject code in `grpc/status.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unauthenticated,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 8] = [
        Self::InvalidArgument,
        Self::NotFound,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::FailedPrecondition,
        Self::ResourceExhausted,
        Self::Unavailable,
        Self::Internal,
    ];

    /// Lowercase snake-case name, a bounded metric label; the same words as the gRPC
    /// code of the kind.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::FailedPrecondition => "failed_precondition",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// How an error message shows a value the client sent: quoted, and cut to its
    /// first 32 characters, so a huge bad value is not sent back whole.
    pub fn excerpt(value: &str) -> String {
        const SHOWN: usize = 32;
        let n = value.chars().count();
        if n <= SHOWN {
            return format!("{value:?}");
        }
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head:?}… ({n} characters)")
    }

    /// An invalid-argument error for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }

    /// Puts `prefix.` in front of an invalid field's path, so nested validators can name
    /// fields relative to themselves.
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument { field, reason } if field.is_empty() => {
                Error::InvalidArgument {
                    field: prefix.to_owned(),
                    reason,
                }
            }
            Error::InvalidArgument { field, reason } if field.starts_with('[') => {
                Error::InvalidArgument {
                    field: format!("{prefix}{field}"),
                    reason,
                }
            }
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: format!("{prefix}.{field}"),
                reason,
            },
            other => other,
        }
    }

    /// A not-found error for a car park.
    pub fn car_park_not_found(id: impl fmt::Display) -> Self {
        Error::NotFound {
            kind: "car park",
            id: id.to_string(),
        }
    }
}
