//! Ember's error type: each variant says who is at fault and whether a retry can help.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

pub type Result<T, E = EmberError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EmberError {
    /// The user's query or data is wrong (bad SQL, unknown table, missing file, bad schema).
    #[error("{0}")]
    User(String),
    #[error("job {job_id} not found")]
    JobNotFound { job_id: String },
    #[error("executor {executor_id} is not registered")]
    ExecutorNotFound { executor_id: String },
    #[error(
        "executor {executor_id} speaks protocol version {got}, this scheduler speaks {expected}"
    )]
    ProtocolMismatch {
        executor_id: String,
        got: u32,
        expected: u32,
    },
    /// A shuffle partition could not be fetched from the executor that holds it.
    #[error(
        "fetching shuffle partition {partition} of stage {stage_id} map {map_partition} from {executor_id}: {message}"
    )]
    FetchFailed {
        executor_id: String,
        stage_id: u32,
        map_partition: u32,
        partition: u32,
        message: String,
    },
    /// A task failed; the message is the task's own error.
    #[error("{message}")]
    TaskFailed { message: String, kind: ErrorKind },
    /// A memory (or other) limit was reached.
    #[error("{0}")]
    ResourcesExhausted(String),
    #[error("job was cancelled")]
    Cancelled,
    /// A malformed or incomplete message arrived over the wire.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The peer could not be reached or the connection broke.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The text of a caught panic's payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Why a job (or a request) failed, as clients and exit codes see it: whose fault it is and
/// whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// What the user sent is wrong (bad SQL, unknown table, missing file, bad data): fix it.
    User,
    /// It did not fit in the memory (or other limit) it was given: raise the limit or shrink it.
    ResourcesExhausted,
    /// A peer or store could not be reached: the same request may succeed later.
    Unavailable,
    /// A bug in Ember.
    Internal,
    /// Someone cancelled it.
    Cancelled,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::User,
        ErrorKind::ResourcesExhausted,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::User => "user",
            ErrorKind::ResourcesExhausted => "resources-exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Cancelled => "cancelled",
        }
    }

    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether running the same work again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl EmberError {
    /// The failure's class, carried over the wire and mapped to exit codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EmberError::Cancelled => ErrorKind::Cancelled,
            EmberError::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
            EmberError::FetchFailed { .. } | EmberError::Unavailable(_) | EmberError::Io(_) => {
                ErrorKind::Unavailable
            }
            EmberError::TaskFailed { kind, .. } => *kind,
            EmberError::DataFusion(e) if datafusion_is_resources_exhausted(e) => {
                ErrorKind::ResourcesExhausted
            }
            e if e.is_user_error() => ErrorKind::User,
            _ => ErrorKind::Internal,
        }
    }

    /// True when the fault lies in what the user sent (query, data) rather than in Ember.
    pub fn is_user_error(&self) -> bool {
        match self {
            EmberError::User(_)
            | EmberError::JobNotFound { .. }
            | EmberError::ProtocolMismatch { .. } => true,
            EmberError::TaskFailed { kind, .. } => *kind == ErrorKind::User,
            EmberError::DataFusion(e) => datafusion_is_user_error(e),
            EmberError::Arrow(_) => true,
            _ => false,
        }
    }

    /// True when running the same work again (elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EmberError::FetchFailed { .. } | EmberError::Unavailable(_) | EmberError::Io(_)
        )
    }
}

/// Whether a DataFusion error says a memory limit was reached.
pub fn datafusion_is_resources_exhausted(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::ResourcesExhausted(_) => true,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_is_resources_exhausted(inner)
        }
        DataFusionError::Shared(inner) => datafusion_is_resources_exhausted(inner),
        DataFusionError::External(inner) => matches!(
            inner.downcast_ref::<EmberError>(),
            Some(EmberError::ResourcesExhausted(_))
        ),
        _ => false,
    }
}

/// The class of a DataFusion error (who is at fault, whether to retry).
pub fn datafusion_error_kind(e: &DataFusionError) -> ErrorKind {
    if let Some(inner) = find_ember_error(e) {
        return inner.kind();
    }
    if datafusion_is_resources_exhausted(e) {
        ErrorKind::ResourcesExhausted
    } else if datafusion_is_user_error(e) {
        ErrorKind::User
    } else {
        ErrorKind::Internal
    }
}

/// Whether a DataFusion error is the user's fault (plan, schema, SQL, missing data).
pub fn datafusion_is_user_error(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::Plan(_)
        | DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..)
        | DataFusionError::ParquetError(..)
        | DataFusionError::ObjectStore(..)
        | DataFusionError::IoError(_) => true,
        DataFusionError::Context(_, inner) => datafusion_is_user_error(inner),
        DataFusionError::Diagnostic(_, inner) => datafusion_is_user_error(inner),
        DataFusionError::Shared(inner) => datafusion_is_user_error(inner),
        DataFusionError::External(inner) => match inner.downcast_ref::<EmberError>() {
            Some(e) => e.is_user_error(),
            None => true,
        },
        _ => false,
    }
}

impl From<EmberError> for DataFusionError {
    fn from(e: EmberError) -> Self {
        match e {
            EmberError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

/// Finds an [`EmberError`] carried inside a DataFusion error (for typed fetch failures).
pub fn find_ember_error(e: &DataFusionError) -> Option<&EmberError> {
    match e {
        DataFusionError::External(inner) => inner.downcast_ref::<EmberError>(),
        DataFusionError::Context(_, inner) => find_ember_error(inner),
        DataFusionError::Shared(inner) => find_ember_error(inner),
        DataFusionError::Diagnostic(_, inner) => find_ember_error(inner),
        _ => None,
    }
}
