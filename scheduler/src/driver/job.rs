//! One job: its stages, their tasks and attempts, and where finished tasks' outputs lie. Pure:
//! it consumes what happened (task launched, finished, executor lost, cancel) and answers what
//! changed; the [`Driver`](super::Driver) acts on that. Recovery (retries, lost outputs) is in
//! `recovery.rs`; what a job records and how it comes back from its records in
//! `job_records.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::ExecutionPlan;
use ember_core::error::ErrorKind;
use ember_core::job::{JobState, PartitionStats, StageStatus, TaskOutcome, TaskStatus};
use ember_core::records::{JobLabel, WriteSpec};
use ember_core::shuffle::PartitionLocation;
use ember_core::{ExecutorId, JobId, StageId, TaskId};

use super::stats::TaskInfo;
use crate::planner::StageGraph;

/// How many times one task may fail before its job fails, by default.
pub const DEFAULT_MAX_TASK_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    Pending,
    Running {
        executor: ExecutorId,
        attempt: u32,
    },
    Done {
        executor: ExecutorId,
        address: String,
        stats: Vec<PartitionStats>,
        /// The attempt that succeeded (a write stage commits that attempt's files).
        attempt: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Some input stage is not complete yet (or its inputs were lost and are being redone).
    Waiting,
    /// Runnable: its plan is resolved and its tasks are pending or running.
    Running,
    Completed,
}

impl StageState {
    pub fn name(self) -> &'static str {
        match self {
            StageState::Waiting => "waiting",
            StageState::Running => "running",
            StageState::Completed => "completed",
        }
    }
}

#[derive(Debug)]
pub struct Stage {
    pub plan: Arc<dyn ExecutionPlan>,
    pub inputs: Vec<StageId>,
    pub output_partitions: usize,
    pub state: StageState,
    pub tasks: Vec<TaskState>,
    /// The resolved, encoded stage plan that tasks run (set when the stage starts running).
    pub launch_plan: Option<Bytes>,
    /// Per task: attempts that reached an executor (a launch that could not be delivered
    /// does not count).
    pub launches: Vec<u32>,
    /// Per task: the next attempt number.
    pub attempts: Vec<u32>,
    /// Per task: failures counted against `max_task_attempts`.
    pub failures: Vec<u32>,
    /// Per task: the executor its last attempt failed on, avoided for the next one.
    pub avoid: Vec<Option<ExecutorId>>,
    /// How many metadata-store values the stage's plan was written in.
    pub plan_chunks: u32,
    /// Per task: when it was launched, what it measured, how it last failed.
    pub info: Vec<TaskInfo>,
}

/// What a task event changed for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// Nothing the driver must act on (or a stale report, ignored).
    None,
    /// A stage finished: new stages may be runnable.
    StageCompleted(StageId),
    /// Outputs were lost: stages must be restarted to recompute them.
    Recompute,
    /// A task goes back to pending, to be launched again.
    Retry,
    Succeeded,
    Failed(String),
}

/// How a job is to run, besides its plan.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    /// The DataFusion settings its tasks run with.
    pub settings: Vec<(String, String)>,
    /// How many times one task may fail before the job fails.
    pub max_task_attempts: u32,
    /// Its share of task slots against other running jobs (fair sharing).
    pub weight: u32,
    /// Set for `COPY` / `INSERT`: what to commit once every stage is done.
    pub write: Option<WriteSpec>,
    pub label: JobLabel,
    /// `EXPLAIN ANALYZE`: the job's answer is the report of what it measured.
    pub analyze: bool,
    /// The W3C `traceparent` of its planning span; its tasks' spans join that trace.
    pub trace_parent: String,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            settings: Vec::new(),
            max_task_attempts: DEFAULT_MAX_TASK_ATTEMPTS,
            weight: 1,
            write: None,
            label: JobLabel::default(),
            analyze: false,
            trace_parent: String::new(),
        }
    }
}

/// A pending task and the executor it should avoid.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTask {
    pub stage: StageId,
    pub partition: usize,
    pub avoid: Option<ExecutorId>,
}

#[derive(Debug)]
pub struct Job {
    pub id: JobId,
    pub state: JobState,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub stages: BTreeMap<StageId, Stage>,
    pub final_stage: StageId,
    pub schema: SchemaRef,
    /// Wall-clock submission and end (Unix milliseconds, as the driver is told the time).
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    pub rows_scanned: u64,
    pub settings: Vec<(String, String)>,
    pub max_task_attempts: u32,
    pub weight: u32,
    pub label: JobLabel,
    /// When it last got a slot, in the cluster's count of launches (fair-sharing ties).
    pub last_launch: u64,
    /// Added to attempt numbers, so that attempts launched by different scheduler terms differ.
    pub attempt_base: u32,
    /// Running tasks the job gave up on; the driver cancels them on their executors.
    pub(super) cancels: Vec<(ExecutorId, TaskId)>,
    /// Set for `COPY` / `INSERT`: the job succeeds for clients only once `committed`.
    pub write: Option<WriteSpec>,
    pub committed: bool,
    /// `EXPLAIN ANALYZE`: answered by [`super::analyze::report`], its data freed when it ends.
    pub analyze: bool,
    /// See [`JobOptions::trace_parent`] (not recorded: a restored job is not traced).
    pub trace_parent: String,
}

impl Job {
    pub fn new(id: JobId, graph: StageGraph, options: JobOptions, now_ms: u64) -> Self {
        let stages = graph
            .stages
            .into_values()
            .map(|s| {
                let stage = Stage {
                    plan: s.plan,
                    inputs: s.inputs,
                    output_partitions: s.output_partitions,
                    state: StageState::Waiting,
                    tasks: vec![TaskState::Pending; s.tasks],
                    launch_plan: None,
                    launches: vec![0; s.tasks],
                    attempts: vec![0; s.tasks],
                    failures: vec![0; s.tasks],
                    avoid: vec![None; s.tasks],
                    plan_chunks: 0,
                    info: vec![TaskInfo::default(); s.tasks],
                };
                (s.stage_id, stage)
            })
            .collect();
        Job {
            id,
            state: JobState::Queued,
            error: None,
            error_kind: None,
            stages,
            final_stage: graph.final_stage,
            schema: graph.schema,
            submitted_ms: now_ms,
            finished_ms: None,
            rows_scanned: 0,
            settings: options.settings,
            max_task_attempts: options.max_task_attempts.max(1),
            weight: options.weight.max(1),
            label: options.label,
            last_launch: 0,
            attempt_base: 0,
            cancels: Vec::new(),
            write: options.write,
            committed: false,
            analyze: options.analyze,
            trace_parent: options.trace_parent,
        }
    }

    /// Moves every waiting stage whose inputs are complete to `Running` (or `Completed`, when
    /// all its tasks are done) and returns the running ones; the driver must resolve and encode
    /// their plans (`set_launch_plan`).
    pub fn start_ready_stages(&mut self) -> Vec<StageId> {
        if self.state.is_terminal() {
            return Vec::new();
        }
        let mut started = Vec::new();
        loop {
            let ready: Vec<StageId> = self
                .stages
                .iter()
                .filter(|(_, s)| s.state == StageState::Waiting)
                .filter(|(_, s)| s.inputs.iter().all(|i| self.is_completed(*i)))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            for id in ready {
                let stage = self.stages.get_mut(&id).expect("ready stage exists");
                if stage
                    .tasks
                    .iter()
                    .all(|t| matches!(t, TaskState::Done { .. }))
                {
                    stage.state = StageState::Completed;
                    stage.launch_plan = None;
                } else {
                    stage.state = StageState::Running;
                    started.push(id);
                }
            }
        }
        started.retain(|id| self.stages[id].state == StageState::Running);
        if !started.is_empty() || self.state == JobState::Queued {
            self.state = JobState::Running;
        }
        if self.all_complete() {
            self.state = JobState::Succeeded;
        }
        started
    }

    fn is_completed(&self, stage: StageId) -> bool {
        self.stages.get(&stage).map(|s| s.state) == Some(StageState::Completed)
    }

    pub fn set_launch_plan(&mut self, stage: StageId, plan: Bytes) {
        if let Some(s) = self.stages.get_mut(&stage) {
            s.launch_plan = Some(plan);
        }
    }

    /// The staging directories of the write stage's successful attempts (what a commit
    /// moves); `None` unless the job writes and that stage is complete.
    pub fn staged_dirs(&self) -> Option<Vec<String>> {
        let write = self.write.as_ref()?;
        let stage = self.stages.get(&write.stage)?;
        stage
            .tasks
            .iter()
            .enumerate()
            .map(|(p, t)| match t {
                TaskState::Done { attempt, .. } => Some(ember_core::write::staged_dir(
                    &write.staging_root,
                    p,
                    *attempt,
                )),
                _ => None,
            })
            .collect()
    }

    /// Whether clients see the job as succeeded: all stages done, and its write committed.
    pub fn visible_state(&self) -> JobState {
        if self.state == JobState::Succeeded && self.write.is_some() && !self.committed {
            JobState::Running
        } else {
            self.state
        }
    }

    /// The job's write starts committing: the job counts as done for the state machine (no
    /// task runs, it can neither be cancelled nor fail) but not yet for clients, and does not
    /// expire. Returns the tasks that were running, to cancel.
    pub fn commit_started(&mut self) -> Vec<(ExecutorId, TaskId)> {
        let running = self.stop_running();
        self.state = JobState::Succeeded;
        self.committed = false;
        self.finished_ms = None;
        running
    }

    fn all_complete(&self) -> bool {
        self.stages
            .values()
            .all(|s| s.state == StageState::Completed)
    }

    /// Where a completed stage's output lies: per output partition, the map outputs holding it.
    pub fn output_locations(&self, stage_id: StageId) -> Option<Vec<Vec<PartitionLocation>>> {
        let stage = self.stages.get(&stage_id)?;
        if stage.state != StageState::Completed {
            return None;
        }
        let mut parts = vec![Vec::new(); stage.output_partitions];
        for (map, task) in stage.tasks.iter().enumerate() {
            let TaskState::Done {
                executor,
                address,
                stats,
                ..
            } = task
            else {
                return None;
            };
            for (p, stat) in stats.iter().enumerate().take(stage.output_partitions) {
                if stat.rows == 0 {
                    continue;
                }
                parts[p].push(PartitionLocation {
                    executor_id: executor.clone(),
                    address: address.clone(),
                    job_id: self.id.to_string(),
                    stage_id,
                    map_partition: map as u32,
                    partition: p as u32,
                    rows: stat.rows,
                    bytes: stat.bytes,
                    grant: String::new(),
                });
            }
        }
        Some(parts)
    }

    /// Tasks that can be launched now, in stage order.
    pub fn pending_tasks(&self) -> Vec<PendingTask> {
        if self.state.is_terminal() {
            return Vec::new();
        }
        self.stages
            .iter()
            .filter(|(_, s)| s.state == StageState::Running && s.launch_plan.is_some())
            .flat_map(|(id, s)| {
                s.tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| **t == TaskState::Pending)
                    .map(move |(p, _)| PendingTask {
                        stage: *id,
                        partition: p,
                        avoid: s.avoid[p].clone(),
                    })
            })
            .collect()
    }

    /// Records that a task was handed to `executor`; returns its id (with a fresh attempt).
    pub fn task_launched(
        &mut self,
        stage: StageId,
        partition: usize,
        executor: &ExecutorId,
    ) -> TaskId {
        let mut attempt = self.attempt_base;
        if let Some(s) = self.stages.get_mut(&stage)
            && let Some(t) = s.tasks.get_mut(partition)
        {
            attempt += s.attempts[partition];
            s.attempts[partition] += 1;
            s.launches[partition] += 1;
            *t = TaskState::Running {
                executor: executor.clone(),
                attempt,
            };
        }
        TaskId {
            job_id: self.id.clone(),
            stage_id: stage,
            partition: partition as u32,
            attempt,
        }
    }

    /// Applies a task's report. A report for a task that is not running as that attempt on
    /// that executor (late, duplicate, from a zombie, or for a finished job) is ignored: `None`.
    pub fn task_finished(
        &mut self,
        status: &TaskStatus,
        address: &str,
        now_ms: u64,
    ) -> Option<JobEvent> {
        if self.state.is_terminal() {
            return None;
        }
        let id = &status.task_id;
        let stage = self.stages.get_mut(&id.stage_id)?;
        let task = stage.tasks.get_mut(id.partition as usize)?;
        match task {
            TaskState::Running { executor, attempt }
                if *executor == status.executor_id && *attempt == id.attempt => {}
            _ => return None,
        }
        Some(self.apply_outcome(status, address, now_ms))
    }

    fn apply_outcome(&mut self, status: &TaskStatus, address: &str, now_ms: u64) -> JobEvent {
        let id = &status.task_id;
        let p = id.partition as usize;
        let stage = self
            .stages
            .get_mut(&id.stage_id)
            .expect("checked by caller");
        stage.info[p].reported(&status.outcome, now_ms);
        match &status.outcome {
            TaskOutcome::Failed {
                message,
                kind: ErrorKind::User,
            } => {
                stage.tasks[p] = TaskState::Pending;
                let message = format!(
                    "stage {} task {} failed on {}: {message}",
                    id.stage_id, id.partition, status.executor_id
                );
                self.fail(message.clone(), ErrorKind::User, now_ms);
                JobEvent::Failed(message)
            }
            TaskOutcome::Failed { message, kind } => {
                let message = format!("failed on {}: {message}", status.executor_id);
                self.retry(id, &status.executor_id, message, *kind, now_ms)
            }
            TaskOutcome::FetchFailed {
                executor_id,
                stage_id,
                message,
            } => {
                let message = format!(
                    "could not fetch stage {stage_id} output from {executor_id}: {message}"
                );
                let event = self.retry(
                    id,
                    &status.executor_id,
                    message,
                    ErrorKind::Unavailable,
                    now_ms,
                );
                if matches!(event, JobEvent::Failed(_)) {
                    return event;
                }
                // The reader found the map output gone: recompute what that executor held.
                let lost = executor_id.clone();
                self.outputs_lost(&|e| *e == lost, Some(*stage_id));
                JobEvent::Recompute
            }
            TaskOutcome::Succeeded {
                partitions,
                rows_scanned,
                ..
            } => {
                stage.tasks[p] = TaskState::Done {
                    executor: status.executor_id.clone(),
                    address: address.to_string(),
                    stats: partitions.clone(),
                    attempt: id.attempt,
                };
                self.rows_scanned += rows_scanned;
                if stage.state != StageState::Running
                    || !stage
                        .tasks
                        .iter()
                        .all(|t| matches!(t, TaskState::Done { .. }))
                {
                    return JobEvent::None;
                }
                stage.state = StageState::Completed;
                stage.launch_plan = None;
                if self.all_complete() {
                    self.state = JobState::Succeeded;
                    self.finished_ms = Some(now_ms);
                    JobEvent::Succeeded
                } else {
                    JobEvent::StageCompleted(id.stage_id)
                }
            }
        }
    }

    /// Running tasks the job gave up on since the last call; to cancel on their executors.
    pub fn take_cancels(&mut self) -> Vec<(ExecutorId, TaskId)> {
        std::mem::take(&mut self.cancels)
    }

    pub fn fail(&mut self, message: String, kind: ErrorKind, now_ms: u64) {
        if self.state.is_terminal() {
            return;
        }
        self.state = JobState::Failed;
        self.error = Some(message);
        self.error_kind = Some(kind);
        self.finished_ms = Some(now_ms);
    }

    /// Cancels the job (its running tasks are then [`stop_running`](Self::stop_running)).
    pub fn cancel(&mut self, now_ms: u64) {
        if self.state.is_terminal() {
            return;
        }
        self.state = JobState::Cancelled;
        self.error_kind = Some(ErrorKind::Cancelled);
        self.finished_ms = Some(now_ms);
    }

    /// How many of its tasks run now.
    pub fn running_count(&self) -> usize {
        self.stages
            .values()
            .flat_map(|s| &s.tasks)
            .filter(|t| matches!(t, TaskState::Running { .. }))
            .count()
    }

    /// Stops every running task (it goes back to pending); returns them with their
    /// executors, to cancel there. A job that ended, or commits, runs nothing.
    pub fn stop_running(&mut self) -> Vec<(ExecutorId, TaskId)> {
        let mut out = Vec::new();
        for (stage_id, stage) in self.stages.iter_mut() {
            for (p, t) in stage.tasks.iter_mut().enumerate() {
                if let TaskState::Running { executor, attempt } = t {
                    out.push((
                        executor.clone(),
                        TaskId {
                            job_id: self.id.clone(),
                            stage_id: *stage_id,
                            partition: p as u32,
                            attempt: *attempt,
                        },
                    ));
                    *t = TaskState::Pending;
                }
            }
        }
        out
    }

    pub fn stages_completed(&self) -> u32 {
        self.stages
            .values()
            .filter(|s| s.state == StageState::Completed)
            .count() as u32
    }

    pub fn tasks_total(&self) -> u32 {
        self.stages.values().map(|s| s.tasks.len() as u32).sum()
    }

    pub fn tasks_completed(&self) -> u32 {
        self.stages
            .values()
            .flat_map(|s| &s.tasks)
            .filter(|t| matches!(t, TaskState::Done { .. }))
            .count() as u32
    }

    pub fn shuffle_bytes(&self) -> u64 {
        self.stages
            .values()
            .flat_map(|s| &s.tasks)
            .filter_map(|t| match t {
                TaskState::Done { stats, .. } => Some(stats.iter().map(|s| s.bytes).sum::<u64>()),
                _ => None,
            })
            .sum()
    }

    /// Per stage: state, tasks, launches, and which executor holds each finished task's output.
    pub fn stage_statuses(&self) -> Vec<StageStatus> {
        self.stages
            .iter()
            .map(|(id, s)| StageStatus {
                stage_id: *id,
                state: s.state.name().to_string(),
                tasks: s.tasks.len() as u32,
                tasks_completed: s
                    .tasks
                    .iter()
                    .filter(|t| matches!(t, TaskState::Done { .. }))
                    .count() as u32,
                launches: s.launches.iter().sum(),
                task_executors: s
                    .tasks
                    .iter()
                    .map(|t| match t {
                        TaskState::Done { executor, .. } => executor.to_string(),
                        _ => String::new(),
                    })
                    .collect(),
            })
            .collect()
    }
}
