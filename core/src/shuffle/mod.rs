//! Shuffle: how a stage's output reaches the next stage.
//!
//! A map task (one partition of a stage) writes its output, partitioned by the consumer's key, to
//! its executor's [`ShuffleStore`]: one set of segments per map task, not one file per
//! map×reduce pair. Consumers read a partition through [`ShuffleReaderExec`]: from the store
//! when the data is on the same executor, over Arrow Flight `do_get` otherwise.

mod flight;
mod format;
pub mod grant;
mod reader;
mod store;
mod writer;

use std::sync::Arc;

use datafusion::physical_plan::Partitioning;

pub use flight::{FlightFetcher, fetch_partition, flight_data_stream};
pub use format::{
    batches_from_ipc_stream, batches_to_ipc_stream, decode_records, encode_schema,
    schema_from_bytes, schema_to_bytes,
};
pub use reader::ShuffleReaderExec;
pub use store::{MapOutput, MapOutputWriter, ShuffleStore};
pub use writer::ShuffleWriterExec;

use crate::error::{EmberError, Result};
use crate::ids::ExecutorId;
use crate::metrics::ExecutorCounters;

/// Where one output partition of one map task lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLocation {
    pub executor_id: ExecutorId,
    /// `host:port` of the executor's Flight service.
    pub address: String,
    pub job_id: String,
    pub stage_id: u32,
    pub map_partition: u32,
    pub partition: u32,
    pub rows: u64,
    pub bytes: u64,
    /// The scheduler's grant to read this stage's output ([`grant`]); empty until the
    /// leader hands the location to a reader (it is never stored).
    pub grant: String,
}

impl PartitionLocation {
    /// The Flight ticket naming this partition, with the location's grant.
    pub fn ticket(&self) -> ShuffleTicket {
        ShuffleTicket {
            job_id: self.job_id.clone(),
            stage_id: self.stage_id,
            map_partition: self.map_partition,
            partition: self.partition,
            grant: self.grant.clone(),
        }
    }

    /// What a grant for this location must open.
    pub fn scope(&self) -> grant::Scope<'_> {
        grant::Scope {
            job_id: &self.job_id,
            stage_id: self.stage_id,
        }
    }

    pub fn fetch_failed(&self, message: impl Into<String>) -> EmberError {
        EmberError::FetchFailed {
            executor_id: self.executor_id.to_string(),
            stage_id: self.stage_id,
            map_partition: self.map_partition,
            partition: self.partition,
            message: message.into(),
        }
    }
}

/// How a stage's output is split among the consumer's partitions.
#[derive(Debug, Clone)]
pub enum ShuffleOutput {
    /// By hash of the consumer's key (a cut hash repartition).
    Hash(Partitioning),
    /// Map task `i` writes output partition `i` (under merges, broadcasts and the final stage).
    PassThrough(usize),
}

impl ShuffleOutput {
    pub fn partition_count(&self) -> usize {
        match self {
            ShuffleOutput::Hash(p) => p.partition_count(),
            ShuffleOutput::PassThrough(n) => *n,
        }
    }
}

/// The Flight ticket of one shuffle partition: `job/stage/map/partition/grant`. It names
/// data and carries the capability to read it; it is never read as a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShuffleTicket {
    pub job_id: String,
    pub stage_id: u32,
    pub map_partition: u32,
    pub partition: u32,
    /// The scheduler's signed grant for the job's stage (empty: none, refused).
    pub grant: String,
}

impl ShuffleTicket {
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "{}/{}/{}/{}/{}",
            self.job_id, self.stage_id, self.map_partition, self.partition, self.grant
        )
        .into_bytes()
    }

    /// What the ticket's grant must open.
    pub fn scope(&self) -> grant::Scope<'_> {
        grant::Scope {
            job_id: &self.job_id,
            stage_id: self.stage_id,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = || EmberError::InvalidMessage("malformed shuffle ticket".to_string());
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.split('/');
        let job_id = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
        let mut num =
            || -> Result<u32> { parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad) };
        let ticket = ShuffleTicket {
            job_id: job_id.to_string(),
            stage_id: num()?,
            map_partition: num()?,
            partition: num()?,
            grant: parts.next().unwrap_or_default().to_string(),
        };
        let job_id_is_a_name = ticket
            .job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if parts.next().is_some() || !job_id_is_a_name {
            return Err(bad());
        }
        Ok(ticket)
    }
}

/// Tuning of shuffle writes.
#[derive(Debug, Clone)]
pub struct ShuffleConfig {
    /// Rows per IPC message (batches are coalesced up to, and split down to, this size).
    pub batch_rows: usize,
    /// Memory a map task's output may take before it spills to disk (besides what the memory
    /// pool grants; `usize::MAX`: only the pool limits it).
    pub memory_budget: usize,
    /// LZ4-compress the IPC bodies (less to store and send, more CPU); off by default, as
    /// the executor's `--shuffle-compression`.
    pub compression: bool,
}

impl Default for ShuffleConfig {
    fn default() -> Self {
        Self {
            batch_rows: 8192,
            memory_budget: usize::MAX,
            compression: false,
        }
    }
}

/// What a task needs to take part in a shuffle; set as a `SessionConfig` extension by the executor.
#[derive(Debug)]
pub struct ShuffleEnv {
    pub executor_id: ExecutorId,
    pub store: Arc<ShuffleStore>,
    pub fetcher: Arc<FlightFetcher>,
    pub counters: Arc<ExecutorCounters>,
    pub config: ShuffleConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trip_and_rejects_garbage() {
        let t = ShuffleTicket {
            job_id: "abc".into(),
            stage_id: 3,
            map_partition: 7,
            partition: 1,
            grant: "123.abcd".into(),
        };
        assert_eq!(ShuffleTicket::parse(&t.to_bytes()).unwrap(), t);
        // Without a grant the ticket parses (and is refused when checked, with a reason).
        let bare = ShuffleTicket::parse(b"abc/3/7/1").unwrap();
        assert_eq!(bare.grant, "");
        for bad in [
            "",
            "abc",
            "abc/1/2",
            "abc/1/2/3/4/5",
            "abc/x/2/3",
            "/1/2/3",
            "../etc/1/2/3",
            "a.b/1/2/3",
        ] {
            assert!(ShuffleTicket::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(ShuffleTicket::parse(&[0xff, 0xfe]).is_err());
    }
}
