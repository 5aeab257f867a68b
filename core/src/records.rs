//! The durable facts a leader records of each job, as domain values: the job record, each
//! completed stage's output, a write's commit. `ember-proto` encodes them for the store; the
//! scheduler's driver makes and reads them without knowing the wire format.

use bytes::Bytes;

use crate::ids::{JobId, StageId};
use crate::job::{JobState, PartitionStats};

/// A job's staged write (`COPY` / `INSERT`): tasks of `stage` stage files under
/// `staging_root`; the leader moves them to `target` once every stage is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSpec {
    pub target: String,
    pub staging_root: String,
    pub stage: StageId,
    /// The file name of a single-file output; `None` for a directory of files.
    pub single_file: Option<String>,
    /// The write replaces what the target held (Spark's mode "overwrite"): the files there
    /// when the commit is recorded are deleted once the new ones are in.
    pub replace: bool,
}

/// One stage as recorded: its shape, and how many store values its plan takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRecord {
    pub stage_id: StageId,
    pub inputs: Vec<StageId>,
    pub output_partitions: u32,
    pub tasks: u32,
    pub plan_chunks: u32,
}

/// What a job is: written before it is acknowledged, and again when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub job_id: JobId,
    pub state: JobState,
    pub error: Option<String>,
    /// The job's failure class, when it failed.
    pub error_kind: Option<crate::error::ErrorKind>,
    pub settings: Vec<(String, String)>,
    pub stages: Vec<StageRecord>,
    pub final_stage: StageId,
    /// The result's Arrow IPC schema.
    pub schema: Bytes,
    pub submitted_unix_ms: u64,
    /// 0 while the job runs.
    pub finished_unix_ms: u64,
    pub max_task_attempts: u32,
    pub write: Option<WriteSpec>,
    /// Relative share of task slots while jobs compete for them.
    pub weight: u32,
    pub label: JobLabel,
    /// `EXPLAIN ANALYZE`: the job answers with what it measured, not its rows.
    pub analyze: bool,
}

/// Where a job came from, for listings: the batch job (script) it is a statement of, if any,
/// and what it runs (its SQL, shortened).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobLabel {
    pub script: Option<String>,
    pub description: String,
    /// Who submitted it (the authenticated client's name), when known.
    pub owner: Option<String>,
}

impl JobLabel {
    /// Longest description kept (records stay small).
    pub const MAX_DESCRIPTION: usize = 1000;

    pub fn new(script: Option<String>, description: &str) -> JobLabel {
        let mut description = description.split_whitespace().collect::<Vec<_>>().join(" ");
        if description.len() > Self::MAX_DESCRIPTION {
            let mut end = Self::MAX_DESCRIPTION;
            while !description.is_char_boundary(end) {
                end -= 1;
            }
            description.truncate(end);
            description.push('…');
        }
        JobLabel {
            script,
            description,
            owner: None,
        }
    }

    /// The same, submitted by `owner`.
    pub fn owned_by(mut self, owner: Option<String>) -> JobLabel {
        self.owner = owner;
        self
    }
}

/// Where one finished map task's output lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutput {
    pub executor_id: String,
    pub address: String,
    pub attempt: u32,
    pub partitions: Vec<PartitionStats>,
}

/// A completed stage's output: one entry per task, in partition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutput {
    pub tasks: Vec<TaskOutput>,
}

/// A write's commit under way: the staging folders to move into the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub job_id: JobId,
    pub spec: WriteSpec,
    pub staged_dirs: Vec<String>,
    /// Of a write that replaces its target: the files it held when the commit was recorded.
    pub replaced_files: Vec<String>,
}

/// One write of a leader to the store, in the order decided; each is fenced on the
/// leadership it was decided under.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Job(Box<JobRecord>),
    StageOutput(JobId, StageId, StageOutput),
    /// The job expired: everything recorded of it goes.
    Remove(JobId),
    /// A write's commit finished (or was given up): its record goes.
    WriteDone(JobId),
}

/// `leader`: who leads the cluster, and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRecord {
    pub scheduler_id: String,
    /// `host:port` of its gRPC service.
    pub address: String,
    pub protocol_version: u32,
}

/// `executors/{id}`: a live executor, under its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorRecord {
    pub spec: crate::job::ExecutorSpec,
    pub protocol_version: u32,
    pub draining: bool,
}

/// `scripts/{id}`: a batch job (a script of statements) and how far it got.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptRecord {
    pub script_id: String,
    pub name: String,
    pub statements: Vec<String>,
    pub settings: Vec<(String, String)>,
    pub state: JobState,
    /// Statements finished successfully.
    pub statements_done: u32,
    /// The job of the statement running now (empty between statements).
    pub current_job_id: String,
    pub error: Option<String>,
    pub error_kind: Option<crate::error::ErrorKind>,
    pub submitted_unix_ms: u64,
    /// 0 while it runs.
    pub finished_unix_ms: u64,
    /// Rows each finished statement returned or wrote.
    pub statement_rows: Vec<u64>,
    /// Stages and tasks of the statements already finished.
    pub stages_done_before: u32,
    pub tasks_done_before: u32,
    /// Who submitted it (the authenticated client's name), when known.
    pub owner: Option<String>,
    /// What the statements already finished used.
    pub resources_before: crate::task_metrics::JobResources,
}
