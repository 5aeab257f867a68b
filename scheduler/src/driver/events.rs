//! The driver's vocabulary: the events it takes, the effects it returns, and the values they
//! carry.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::physical_plan::ExecutionPlan;
use ember_core::job::{ExecutorSpec, JobState, TaskDefinition, TaskStatus};
use ember_core::metrics::ExecutorMetrics;
use ember_core::records::{JobRecord, Record, StageOutput, WriteRecord, WriteSpec};
use ember_core::shuffle::PartitionLocation;
use ember_core::{ExecutorId, JobId, Result, StageId, TaskId};

use super::job::Job;
use super::placement::Cluster;

/// Resolves a stage's shuffle readers to where its inputs lie and encodes the plan its tasks
/// run. Pure computation (a plan rewrite and datafusion-proto), passed in so that tests need no
/// real plans.
pub trait StageEncoder: Send + Sync {
    fn encode(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        inputs: &dyn Fn(StageId) -> Option<Vec<Vec<PartitionLocation>>>,
    ) -> Result<Bytes>;
}

/// A result the scheduler computed itself (DDL, EXPLAIN, queries that read no table files).
#[derive(Debug, Clone)]
pub struct InlineResult {
    /// Arrow IPC schema and stream of the result.
    pub schema: Bytes,
    pub result: Bytes,
    pub elapsed_ms: u64,
    pub finished_ms: u64,
    pub label: ember_core::records::JobLabel,
}

#[derive(Debug)]
pub enum JobEntry {
    Distributed(Box<Job>),
    Inline(InlineResult),
}

/// A job as its records hold it, read back by a new leader.
#[derive(Debug)]
pub struct StoredJob {
    pub record: JobRecord,
    /// Each stage's plan (unresolved readers); empty for a finished job.
    pub plans: BTreeMap<StageId, Arc<dyn ExecutionPlan>>,
    pub outputs: BTreeMap<StageId, StageOutput>,
}

/// What happened, as the runtime tells the driver.
#[derive(Debug)]
pub enum Event {
    /// A planned job, already recorded in the store.
    JobSubmitted {
        job: Box<Job>,
    },
    /// A statement the scheduler answered itself.
    InlineFinished {
        job: JobId,
        result: InlineResult,
    },
    TaskReports(Vec<TaskStatus>),
    /// Tasks could not be handed to their executor.
    LaunchFailed {
        executor: ExecutorId,
        tasks: Vec<TaskId>,
    },
    /// An executor registered over gRPC (heartbeats keep it alive); again means it restarted.
    ExecutorRegistered {
        spec: ExecutorSpec,
    },
    Heartbeat {
        executor: ExecutorId,
        metrics: ExecutorMetrics,
        draining: bool,
    },
    /// An executor's record in the store appeared or changed (its lease keeps it alive).
    ExecutorLeased {
        spec: ExecutorSpec,
        draining: bool,
    },
    /// An executor's record vanished: its lease expired (crash, kill, partition) or it left.
    ExecutorLeaseExpired {
        executor: ExecutorId,
    },
    /// The store's whole list of executors, `(spec, draining)`: the ones missing are lost.
    ExecutorsListed {
        executors: Vec<(ExecutorSpec, bool)>,
    },
    /// This scheduler leads under `fence`: continue the recorded jobs, and the commits the
    /// last leader recorded.
    LeadershipGained {
        fence: i64,
        jobs: Vec<StoredJob>,
        writes: Vec<WriteRecord>,
    },
    /// Leadership `fence` ended: the next leader continues the jobs from their records.
    LeadershipLost {
        fence: i64,
    },
    Cancel {
        job: JobId,
    },
    /// The client has the job's result: its shuffle data may go.
    Release {
        job: JobId,
    },
    /// A write's commit was recorded: from here it only rolls forward.
    CommitStarted {
        job: JobId,
    },
    CommitFinished {
        job: JobId,
    },
    /// A commit step failed for a reason retrying cannot fix.
    CommitFailed {
        job: JobId,
        error: String,
    },
    /// Time passed (timeouts, expiry).
    Tick,
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Launch {
        executor: ExecutorSpec,
        tasks: Vec<TaskDefinition>,
    },
    CancelTasks {
        address: String,
        tasks: Vec<TaskId>,
    },
    /// Delete a job's shuffle data on these executors.
    RemoveData {
        job: JobId,
        addresses: Vec<String>,
    },
    /// Record a fact, fenced on leadership `fence`.
    Persist {
        fence: i64,
        record: Record,
    },
    /// Commit a write: record it (unless `recorded`), move the staged files, report back.
    Commit {
        job: JobId,
        spec: WriteSpec,
        dirs: Vec<String>,
        recorded: bool,
    },
    /// Delete a failed, cancelled or committed write's staging files.
    CleanStaging {
        staging_root: String,
    },
    /// A job ended (for logs and waiting clients).
    JobEnded {
        job: JobId,
        state: JobState,
        error: Option<String>,
    },
}

impl Effect {
    pub(super) fn cancels(tasks: Vec<(ExecutorId, TaskId)>, cluster: &Cluster) -> Vec<Effect> {
        let mut by_address: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
        for (executor, task) in tasks {
            if let Some(spec) = cluster.get(&executor) {
                by_address
                    .entry(spec.address.clone())
                    .or_default()
                    .push(task);
            }
        }
        by_address
            .into_iter()
            .map(|(address, tasks)| Effect::CancelTasks { address, tasks })
            .collect()
    }
}
