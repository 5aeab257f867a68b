//! `EmberError` ⇄ `tonic::Status`, in exactly one place.
//!
//! The gRPC code says who is at fault (`InvalidArgument`/`NotFound` for the caller,
//! `Unavailable` for a retryable fault, `Internal` for a bug); a metadata key carries the
//! fetch-failure details so the other side gets its typed error back.

use ember_core::EmberError;
use ember_core::error::ErrorKind;
use tonic::{Code, Status};

const KIND: &str = "ember-error-kind";

pub fn status_from_error(e: &EmberError) -> Status {
    let (code, kind) = match e {
        EmberError::JobNotFound { .. } | EmberError::ExecutorNotFound { .. } => {
            (Code::NotFound, "not-found")
        }
        EmberError::ProtocolMismatch { .. } => (Code::FailedPrecondition, "protocol"),
        EmberError::InvalidMessage(_) => (Code::InvalidArgument, "invalid-message"),
        EmberError::FetchFailed { .. } => (Code::Unavailable, "fetch-failed"),
        e => match e.kind() {
            ErrorKind::User => (Code::InvalidArgument, ErrorKind::User.name()),
            ErrorKind::ResourcesExhausted => (
                Code::ResourceExhausted,
                ErrorKind::ResourcesExhausted.name(),
            ),
            ErrorKind::Unavailable => (Code::Unavailable, ErrorKind::Unavailable.name()),
            ErrorKind::Internal => (Code::Internal, ErrorKind::Internal.name()),
            ErrorKind::Cancelled => (Code::Cancelled, ErrorKind::Cancelled.name()),
        },
    };
    let mut status = Status::new(code, e.to_string());
    if let Ok(v) = kind.parse() {
        status.metadata_mut().insert(KIND, v);
    }
    status
}

pub fn error_from_status(status: &Status) -> EmberError {
    let kind = status
        .metadata()
        .get(KIND)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let message = status.message().to_string();
    match (status.code(), kind) {
        (Code::Cancelled, _) => EmberError::Cancelled,
        (_, "user") | (_, "not-found") | (_, "protocol") => EmberError::User(message),
        (_, "invalid-message") => EmberError::InvalidMessage(message),
        (_, "resources-exhausted") | (Code::ResourceExhausted, _) => {
            EmberError::ResourcesExhausted(message)
        }
        (Code::Unavailable, _) => EmberError::Unavailable(if message.is_empty() {
            format!("peer unavailable ({})", status.code())
        } else {
            message
        }),
        (Code::InvalidArgument, _) | (Code::NotFound, _) => EmberError::User(message),
        // Missing or wrong credentials, or someone else's job: the caller must change.
        (Code::Unauthenticated, _) | (Code::PermissionDenied, _) => EmberError::User(message),
        // A connection that broke below gRPC while this process dials without TLS: the
        // server may speak TLS only (plain HTTP/2 to it fails one of these two ways).
        _ if !ember_core::tls::dials_tls()
            && (message.contains("h2 protocol error") || message.contains("transport error")) =>
        {
            EmberError::Internal(format!(
                "{message} (if the server speaks TLS only, dial https://HOST:PORT with the \
                 cluster's CA: --tls-ca or EMBER_TLS_CA)"
            ))
        }
        _ => EmberError::Internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_stay_user_errors_across_the_wire() {
        let cases = [
            (EmberError::User("no such table".into()), ErrorKind::User),
            (
                EmberError::JobNotFound { job_id: "j".into() },
                ErrorKind::User,
            ),
            (EmberError::Internal("bug".into()), ErrorKind::Internal),
            (
                EmberError::Unavailable("down".into()),
                ErrorKind::Unavailable,
            ),
            (
                EmberError::ResourcesExhausted("pool full".into()),
                ErrorKind::ResourcesExhausted,
            ),
            (EmberError::Cancelled, ErrorKind::Cancelled),
            (
                EmberError::TaskFailed {
                    message: "out of memory".into(),
                    kind: ErrorKind::ResourcesExhausted,
                },
                ErrorKind::ResourcesExhausted,
            ),
        ];
        for (e, kind) in cases {
            let back = error_from_status(&status_from_error(&e));
            assert_eq!(back.kind(), kind, "{e}");
            assert!(
                back.to_string().contains(&e.to_string()) || matches!(back, EmberError::Cancelled)
            );
        }
    }
}
