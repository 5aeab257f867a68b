//! Job, stage and task descriptions shared by the scheduler, executors and clients.

use bytes::Bytes;

use crate::ids::{ExecutorId, JobId, TaskId};
use crate::metrics::ExecutorMetrics;
use crate::shuffle::PartitionLocation;

/// What an executor offers the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorSpec {
    pub id: ExecutorId,
    /// `host:port` that peers dial for the executor's gRPC and Flight services.
    pub address: String,
    /// How many tasks it runs at once.
    pub slots: u32,
}

/// Rows and encoded bytes of one output partition of one map task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub rows: u64,
    pub bytes: u64,
}

/// How a task attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    Succeeded {
        /// One entry per output partition of the stage.
        partitions: Vec<PartitionStats>,
        /// Rows this task read from table files.
        rows_scanned: u64,
        /// What it measured while it ran.
        metrics: crate::task_metrics::TaskMetrics,
    },
    Failed {
        message: String,
        /// Who is at fault, and whether running it again may help.
        kind: crate::error::ErrorKind,
    },
    /// The task could not read an input stage's output from the executor holding it: that
    /// output must be recomputed before the task can run again.
    FetchFailed {
        executor_id: ExecutorId,
        stage_id: u32,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub executor_id: ExecutorId,
    pub outcome: TaskOutcome,
}

/// A task as the scheduler hands it to an executor.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDefinition {
    pub task_id: TaskId,
    /// The stage plan (root: `ShuffleWriterExec`), encoded by `ember-proto`.
    pub plan: Bytes,
    /// DataFusion configuration for the task (`datafusion.*` keys).
    pub settings: Vec<(String, String)>,
    /// The W3C `traceparent` of its job's span (empty when traces are not exported).
    pub trace_parent: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a client sees of a job.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub job_id: JobId,
    pub state: JobState,
    pub error: Option<String>,
    /// Why the job failed (or was cancelled).
    pub error_kind: Option<crate::error::ErrorKind>,
    pub stages_total: u32,
    pub stages_completed: u32,
    pub tasks_total: u32,
    pub tasks_completed: u32,
    pub elapsed_ms: u64,
    /// Arrow IPC encoded schema of the result.
    pub result_schema: Bytes,
    /// Where the result lies: per output partition, in order.
    pub result_partitions: Vec<Vec<PartitionLocation>>,
    /// A result computed on the scheduler itself, as an Arrow IPC stream.
    pub inline_result: Bytes,
    /// Bytes written to shuffle by all stages of the job.
    pub shuffle_bytes: u64,
    /// What its tasks used so far.
    pub resources: crate::task_metrics::JobResources,
    pub stages: Vec<StageStatus>,
}

/// One stage of a job, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    pub stage_id: u32,
    /// `waiting`, `running` or `completed`.
    pub state: String,
    pub tasks: u32,
    pub tasks_completed: u32,
    /// Task attempts launched so far (more than `tasks` when work was retried or recomputed).
    pub launches: u32,
    /// Per task: the executor holding its output, or empty while it is not done.
    pub task_executors: Vec<String>,
}

/// An executor as the scheduler reports it.
#[derive(Debug, Clone)]
pub struct ExecutorInfo {
    pub spec: ExecutorSpec,
    pub metrics: ExecutorMetrics,
    pub running_tasks: u32,
}

/// What a client sees of a batch job (a script), or of an ad-hoc query listed beside them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptStatus {
    pub script_id: String,
    pub name: String,
    pub state: JobState,
    pub statements_total: u32,
    pub statements_done: u32,
    /// The statement's job that runs now (or ran last).
    pub current_job_id: String,
    pub stages_total: u32,
    pub stages_completed: u32,
    pub tasks_total: u32,
    pub tasks_completed: u32,
    pub elapsed_ms: u64,
    pub error: Option<String>,
    pub error_kind: Option<crate::error::ErrorKind>,
    pub submitted_unix_ms: u64,
    /// Rows each finished statement returned or wrote.
    pub statement_rows: Vec<u64>,
    /// Who submitted it, when known.
    pub owner: Option<String>,
    /// What its statements used so far.
    pub resources: crate::task_metrics::JobResources,
}
