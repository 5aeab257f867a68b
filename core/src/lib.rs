//! Ember's shared domain: ids, job/stage/task descriptions, errors, and the distributed execution
//! operators (shuffle writer and reader) that every process runs.
//!
//! Nothing in this crate knows Ember's wire format (`ember-proto` does) or runs a server.

pub mod auth;
pub mod error;
pub mod ids;
pub mod job;
pub mod meta;
pub mod metrics;
pub mod net;
pub mod object_stores;
pub mod options;
pub mod records;
pub mod retry;
pub mod session;
pub mod shuffle;
pub mod task_metrics;
pub mod telemetry;
pub mod tls;
pub mod write;

pub use error::{EmberError, Result};
pub use ids::{ExecutorId, JobId, StageId, TaskId};

/// Version of the scheduler⇄executor protocol; registration refuses a mismatch.
/// 3: shuffle tickets carry grants, registration answers with the ticket key.
pub const PROTOCOL_VERSION: u32 = 3;

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Largest gRPC message any Ember service or client accepts (plans listing many files are big).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
