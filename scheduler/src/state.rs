//! The job → stage → task state machine. Pure: it consumes events (task launched, finished,
//! fetch failed, executor lost, cancel) and answers what to do next; I/O happens around it and
//! time is passed in by the caller.
//!
//! Recovery lives here: a task that fails for a reason other than the user's retries (on another
//! executor where one exists) up to `max_task_attempts`; when map outputs are lost (their
//! executor died, or a reader could not fetch them) only the lost outputs that some unfinished
//! stage still needs are recomputed, and the stages reading them wait for the recomputation.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::ExecutionPlan;
use ember_core::job::{JobState, PartitionStats, StageStatus, TaskOutcome, TaskStatus};
use ember_core::shuffle::PartitionLocation;
use ember_core::{ExecutorId, JobId, StageId, TaskId};

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

/// A job's staged write (`COPY` / `INSERT`): tasks of `stage` stage files under
/// `staging_root`; the driver moves them to `target` once every stage is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteSpec {
    pub target: String,
    pub staging_root: String,
    pub stage: StageId,
    pub single_file: Option<String>,
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
    pub stages: BTreeMap<StageId, Stage>,
    pub final_stage: StageId,
    pub schema: SchemaRef,
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    /// Wall-clock submission and end, as recorded for other schedulers.
    pub submitted_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub rows_scanned: u64,
    pub settings: Vec<(String, String)>,
    pub max_task_attempts: u32,
    /// Added to attempt numbers, so that attempts launched by different scheduler terms differ.
    pub attempt_base: u32,
    /// Running tasks the job gave up on; the driver cancels them on their executors.
    cancels: Vec<(ExecutorId, TaskId)>,
    /// Set for `COPY` / `INSERT`: the job succeeds for clients only once `committed`.
    pub write: Option<WriteSpec>,
    pub committed: bool,
}

impl Job {
    pub fn new(id: JobId, graph: StageGraph, settings: Vec<(String, String)>, now_ms: u64) -> Self {
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
                };
                (s.stage_id, stage)
            })
            .collect();
        Job {
            id,
            state: JobState::Queued,
            error: None,
            stages,
            final_stage: graph.final_stage,
            schema: graph.schema,
            submitted_ms: now_ms,
            finished_ms: None,
            submitted_unix_ms: 0,
            finished_unix_ms: None,
            rows_scanned: 0,
            settings,
            max_task_attempts: DEFAULT_MAX_TASK_ATTEMPTS,
            attempt_base: 0,
            cancels: Vec::new(),
            write: None,
            committed: false,
        }
    }

    /// Marks a recovered stage's task as done (its output was recorded before a failover).
    pub fn restore_task(&mut self, stage: StageId, partition: usize, done: TaskState) {
        if let Some(t) = self
            .stages
            .get_mut(&stage)
            .and_then(|s| s.tasks.get_mut(partition))
        {
            *t = done;
        }
    }

    /// After tasks were restored from records: stages whose tasks are all done are complete,
    /// and so are stages no unfinished stage reads any more (their lost outputs are not redone).
    pub fn settle_restored(&mut self) {
        for stage in self.stages.values_mut() {
            if stage
                .tasks
                .iter()
                .all(|t| matches!(t, TaskState::Done { .. }))
            {
                stage.state = StageState::Completed;
            }
        }
        loop {
            let unneeded: Vec<StageId> = self
                .stages
                .iter()
                .filter(|(id, s)| s.state != StageState::Completed && !self.is_needed(**id))
                .map(|(id, _)| *id)
                .collect();
            if unneeded.is_empty() {
                break;
            }
            for id in unneeded {
                self.stages.get_mut(&id).expect("listed").state = StageState::Completed;
            }
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
        let running = self.running_tasks();
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
        match &status.outcome {
            TaskOutcome::Failed {
                message,
                user_error: true,
            } => {
                stage.tasks[p] = TaskState::Pending;
                let message = format!(
                    "stage {} task {} failed on {}: {message}",
                    id.stage_id, id.partition, status.executor_id
                );
                self.fail(message.clone(), now_ms);
                JobEvent::Failed(message)
            }
            TaskOutcome::Failed { message, .. } => {
                let message = format!("failed on {}: {message}", status.executor_id);
                self.retry(id, &status.executor_id, message, now_ms)
            }
            TaskOutcome::FetchFailed {
                executor_id,
                stage_id,
                message,
            } => {
                let message = format!(
                    "could not fetch stage {stage_id} output from {executor_id}: {message}"
                );
                let event = self.retry(id, &status.executor_id, message, now_ms);
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

    /// Counts a failure of `task` on `executor`: the task goes back to pending (to run
    /// elsewhere), or, past the limit, the job fails with the task's last error.
    fn retry(
        &mut self,
        task: &TaskId,
        executor: &ExecutorId,
        message: String,
        now_ms: u64,
    ) -> JobEvent {
        let p = task.partition as usize;
        let max = self.max_task_attempts.max(1);
        let stage = self
            .stages
            .get_mut(&task.stage_id)
            .expect("checked by caller");
        stage.tasks[p] = TaskState::Pending;
        stage.failures[p] += 1;
        stage.avoid[p] = Some(executor.clone());
        if stage.failures[p] >= max {
            let message = format!(
                "stage {} task {} failed {} times; last attempt {message}",
                task.stage_id, task.partition, stage.failures[p]
            );
            self.fail(message.clone(), now_ms);
            return JobEvent::Failed(message);
        }
        JobEvent::Retry
    }

    /// A task could not be handed to its executor (unreachable): it goes back to pending,
    /// without counting as a failure of the task.
    pub fn launch_failed(&mut self, task: &TaskId) {
        if let Some(s) = self.stages.get_mut(&task.stage_id)
            && let Some(t) = s.tasks.get_mut(task.partition as usize)
            && matches!(t, TaskState::Running { attempt, .. } if *attempt == task.attempt)
        {
            let p = task.partition as usize;
            if let TaskState::Running { executor, .. } = t {
                s.avoid[p] = Some(executor.clone());
            }
            *t = TaskState::Pending;
            s.launches[p] = s.launches[p].saturating_sub(1);
        }
    }

    /// An executor is gone: its running tasks go back to pending and the map outputs it held
    /// are recomputed where an unfinished stage still needs them.
    pub fn executor_lost(&mut self, executor: &ExecutorId) -> JobEvent {
        if self.state.is_terminal() {
            return JobEvent::None;
        }
        let mut changed = false;
        for stage in self.stages.values_mut() {
            for t in stage.tasks.iter_mut() {
                if matches!(t, TaskState::Running { executor: e, .. } if e == executor) {
                    *t = TaskState::Pending;
                    changed = true;
                }
            }
        }
        changed |= self.outputs_lost(&|e| e == executor, None);
        if changed {
            JobEvent::Recompute
        } else {
            JobEvent::None
        }
    }

    /// Map outputs on executors for which `lost` holds are gone (in `only` stage, or in every
    /// stage). Outputs some unfinished stage still reads go back to pending, their stage waits
    /// to be restarted, and stages reading it wait too (their running tasks are cancelled: they
    /// would read the lost output). Returns whether anything changed.
    fn outputs_lost(&mut self, lost: &dyn Fn(&ExecutorId) -> bool, only: Option<StageId>) -> bool {
        let mut changed = false;
        loop {
            let mut round = false;
            let ids: Vec<StageId> = self.stages.keys().copied().collect();
            for id in ids {
                if only.is_some_and(|o| o != id) || !self.is_needed(id) {
                    continue;
                }
                let stage = self.stages.get_mut(&id).expect("listed");
                // Completed without all outputs: skipped after a failover, needed again now.
                let mut redo = stage.state == StageState::Completed
                    && !stage
                        .tasks
                        .iter()
                        .all(|t| matches!(t, TaskState::Done { .. }));
                for t in stage.tasks.iter_mut() {
                    if matches!(t, TaskState::Done { executor, .. } if lost(executor)) {
                        *t = TaskState::Pending;
                        redo = true;
                    }
                }
                if !redo {
                    continue;
                }
                round = true;
                if stage.state == StageState::Completed {
                    stage.state = StageState::Waiting;
                }
                self.hold_consumers(id);
            }
            changed |= round;
            if !round || only.is_some() {
                break;
            }
        }
        changed
    }

    /// Stages reading `producer` that have not completed wait for it again: their resolved
    /// plans are stale, their running tasks are cancelled and go back to pending.
    fn hold_consumers(&mut self, producer: StageId) {
        let job_id = self.id.clone();
        for (id, stage) in self.stages.iter_mut() {
            if !stage.inputs.contains(&producer) || stage.state == StageState::Completed {
                continue;
            }
            stage.state = StageState::Waiting;
            stage.launch_plan = None;
            for (p, t) in stage.tasks.iter_mut().enumerate() {
                if let TaskState::Running { executor, attempt } = t {
                    self.cancels.push((
                        executor.clone(),
                        TaskId {
                            job_id: job_id.clone(),
                            stage_id: *id,
                            partition: p as u32,
                            attempt: *attempt,
                        },
                    ));
                    *t = TaskState::Pending;
                }
            }
        }
    }

    /// Whether a stage's output is still to be read: by the client (the final stage of an
    /// unfinished job) or by a stage that has not completed.
    fn is_needed(&self, stage: StageId) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        stage == self.final_stage
            || self
                .stages
                .values()
                .any(|s| s.inputs.contains(&stage) && s.state != StageState::Completed)
    }

    /// Running tasks the job gave up on since the last call; to cancel on their executors.
    pub fn take_cancels(&mut self) -> Vec<(ExecutorId, TaskId)> {
        std::mem::take(&mut self.cancels)
    }

    pub fn fail(&mut self, message: String, now_ms: u64) {
        if self.state.is_terminal() {
            return;
        }
        self.state = JobState::Failed;
        self.error = Some(message);
        self.finished_ms = Some(now_ms);
    }

    /// Cancels the job; returns the tasks still running (to cancel on their executors).
    pub fn cancel(&mut self, now_ms: u64) -> Vec<(ExecutorId, TaskId)> {
        if self.state.is_terminal() {
            return Vec::new();
        }
        self.state = JobState::Cancelled;
        self.finished_ms = Some(now_ms);
        self.running_tasks()
    }

    /// Tasks currently running, with their executors.
    pub fn running_tasks(&self) -> Vec<(ExecutorId, TaskId)> {
        let mut out = Vec::new();
        for (stage_id, stage) in &self.stages {
            for (p, t) in stage.tasks.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::datatypes::Schema;
    use datafusion::physical_plan::empty::EmptyExec;
    use ember_core::shuffle::{ShuffleOutput, ShuffleWriterExec};

    use super::*;
    use crate::planner::StagePlan;

    /// A graph of stages `(id, tasks, inputs)`; the last is final.
    fn graph(stages: &[(StageId, usize, &[StageId])]) -> StageGraph {
        let schema = Arc::new(Schema::empty());
        let mut map = BTreeMap::new();
        for (id, tasks, inputs) in stages {
            let input = Arc::new(EmptyExec::new(Arc::clone(&schema)));
            let plan = Arc::new(ShuffleWriterExec::new(
                "j",
                *id,
                input,
                ShuffleOutput::PassThrough(2),
            ));
            map.insert(
                *id,
                StagePlan {
                    stage_id: *id,
                    plan,
                    inputs: inputs.to_vec(),
                    tasks: *tasks,
                    output_partitions: 2,
                },
            );
        }
        StageGraph {
            final_stage: stages.last().unwrap().0,
            stages: map,
            schema,
        }
    }

    fn job(stages: &[(StageId, usize, &[StageId])]) -> Job {
        Job::new("j".into(), graph(stages), Vec::new(), 0)
    }

    fn start(job: &mut Job) -> Vec<StageId> {
        let started = job.start_ready_stages();
        for s in &started {
            job.set_launch_plan(*s, Bytes::from_static(b"plan"));
        }
        started
    }

    /// The attempt a task is running as (reports must name it).
    fn attempt(job: &Job, stage: StageId, partition: u32) -> u32 {
        match &job.stages[&stage].tasks[partition as usize] {
            TaskState::Running { attempt, .. } => *attempt,
            _ => u32::MAX,
        }
    }

    fn report(
        job: &Job,
        stage: StageId,
        partition: u32,
        executor: &str,
        outcome: TaskOutcome,
    ) -> TaskStatus {
        TaskStatus {
            task_id: TaskId {
                job_id: "j".into(),
                stage_id: stage,
                partition,
                attempt: attempt(job, stage, partition),
            },
            executor_id: executor.into(),
            outcome,
        }
    }

    fn ok(job: &Job, stage: StageId, partition: u32, executor: &str, rows: &[u64]) -> TaskStatus {
        let partitions = rows
            .iter()
            .map(|r| PartitionStats {
                rows: *r,
                bytes: r * 10,
            })
            .collect();
        report(
            job,
            stage,
            partition,
            executor,
            TaskOutcome::Succeeded {
                partitions,
                rows_scanned: 1,
            },
        )
    }

    fn failed(
        job: &Job,
        stage: StageId,
        partition: u32,
        executor: &str,
        user_error: bool,
    ) -> TaskStatus {
        let outcome = TaskOutcome::Failed {
            message: "boom".into(),
            user_error,
        };
        report(job, stage, partition, executor, outcome)
    }

    fn launch_all(job: &mut Job, executor: &str) {
        for t in job.pending_tasks() {
            job.task_launched(t.stage, t.partition, &executor.into());
        }
    }

    /// Runs every pending task of `stage` on `executor` to success.
    fn finish_stage(job: &mut Job, stage: StageId, executor: &str, now: u64) -> Vec<JobEvent> {
        let pending: Vec<usize> = job
            .pending_tasks()
            .into_iter()
            .filter(|t| t.stage == stage)
            .map(|t| t.partition)
            .collect();
        let mut events = Vec::new();
        for p in pending {
            job.task_launched(stage, p, &executor.into());
            let status = ok(job, stage, p as u32, executor, &[1, 1]);
            events.push(job.task_finished(&status, "addr", now).unwrap());
        }
        events
    }

    /// Runs task `p` of `stage` on `executors[p]`, each to success; returns the last event.
    fn run_on(job: &mut Job, stage: StageId, executors: &[&str], now: u64) -> Option<JobEvent> {
        for (p, e) in executors.iter().enumerate() {
            job.task_launched(stage, p, &(*e).into());
        }
        let mut last = None;
        for (p, e) in executors.iter().enumerate() {
            let status = ok(job, stage, p as u32, e, &[1, 1]);
            last = job.task_finished(&status, &format!("addr-{e}"), now);
        }
        last
    }

    #[test]
    fn stages_run_in_dependency_order_and_the_job_succeeds() {
        let mut j = job(&[(1, 2, &[]), (2, 2, &[]), (3, 1, &[1, 2])]);
        assert_eq!(start(&mut j), vec![1, 2]);
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.pending_tasks().len(), 4);
        launch_all(&mut j, "e1");
        assert!(j.pending_tasks().is_empty());
        let first = ok(&j, 1, 0, "e1", &[1, 0]);
        let wrong_executor = ok(&j, 1, 1, "e2", &[1, 0]);
        assert_eq!(j.task_finished(&first, "addr", 5), Some(JobEvent::None));
        assert_eq!(
            j.task_finished(&first, "addr", 5),
            None,
            "duplicate ignored"
        );
        assert_eq!(j.task_finished(&wrong_executor, "addr", 5), None);
        let steps = [
            (1, 1, vec![0, 2], JobEvent::StageCompleted(1)),
            (2, 0, vec![3, 3], JobEvent::None),
            (2, 1, vec![0, 0], JobEvent::StageCompleted(2)),
        ];
        for (stage, p, rows, expected) in steps {
            let status = ok(&j, stage, p, "e1", &rows);
            assert_eq!(
                j.task_finished(&status, "addr", 5),
                Some(expected),
                "{status:?}"
            );
        }
        // Stage 1's output: partition 0 from map 0, partition 1 from map 1; empty ones skipped.
        let locs = j.output_locations(1).unwrap();
        assert_eq!(locs[0].len(), 1);
        assert_eq!(locs[0][0].map_partition, 0);
        assert_eq!(locs[1][0].map_partition, 1);
        assert_eq!(start(&mut j), vec![3]);
        launch_all(&mut j, "e1");
        let last = ok(&j, 3, 0, "e1", &[7, 0]);
        assert_eq!(j.task_finished(&last, "addr", 9), Some(JobEvent::Succeeded));
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.finished_ms, Some(9));
        assert_eq!(j.rows_scanned, 5);
        assert_eq!(j.tasks_completed(), 5);
    }

    #[test]
    fn user_errors_fail_the_job_and_late_reports_change_nothing() {
        type Step = fn(&mut Job) -> Option<JobEvent>;
        let cases: &[(&str, Step, JobState)] = &[
            (
                "task fails with a user error",
                |j| {
                    let s = failed(j, 1, 0, "e1", true);
                    j.task_finished(&s, "a", 1)
                },
                JobState::Failed,
            ),
            (
                "unrelated executor lost",
                |j| Some(j.executor_lost(&"e9".into())),
                JobState::Running,
            ),
            (
                "cancelled",
                |j| {
                    j.cancel(1);
                    None
                },
                JobState::Cancelled,
            ),
        ];
        for (name, step, state) in cases {
            let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
            start(&mut j);
            launch_all(&mut j, "e1");
            let late = ok(&j, 1, 1, "e1", &[1, 1]);
            step(&mut j);
            assert_eq!(j.state, *state, "{name}");
            if state.is_terminal() {
                assert!(j.pending_tasks().is_empty(), "{name}");
                assert_eq!(j.task_finished(&late, "a", 2), None, "{name}");
            }
        }
        let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
        start(&mut j);
        launch_all(&mut j, "e1");
        assert_eq!(j.cancel(3).len(), 2, "cancel returns the running tasks");
    }

    #[test]
    fn failed_tasks_retry_elsewhere_up_to_the_limit() {
        let mut j = job(&[(1, 1, &[])]);
        j.max_task_attempts = 3;
        start(&mut j);
        for round in 1..=3u64 {
            launch_all(&mut j, "e1");
            let s = failed(&j, 1, 0, "e1", false);
            let event = j.task_finished(&s, "a", round).unwrap();
            if round < 3 {
                assert_eq!(event, JobEvent::Retry);
                let pending = j.pending_tasks();
                assert_eq!(pending[0].avoid, Some("e1".into()), "retry avoids e1");
            } else {
                assert!(
                    matches!(&event, JobEvent::Failed(m) if m.contains("failed 3 times") && m.contains("boom")),
                    "{event:?}"
                );
            }
        }
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.stage_statuses()[0].launches, 3);
    }

    #[test]
    fn a_zombie_attempt_is_ignored_after_its_executor_was_lost() {
        let mut j = job(&[(1, 1, &[])]);
        start(&mut j);
        launch_all(&mut j, "e1");
        let zombie = ok(&j, 1, 0, "e1", &[1, 1]);
        assert_eq!(j.executor_lost(&"e1".into()), JobEvent::Recompute);
        launch_all(&mut j, "e1"); // the same executor came back under the same id
        assert_eq!(
            j.task_finished(&zombie, "a", 1),
            None,
            "old attempt ignored"
        );
        let fresh = ok(&j, 1, 0, "e1", &[1, 1]);
        assert_eq!(j.task_finished(&fresh, "a", 2), Some(JobEvent::Succeeded));
    }

    #[test]
    fn losing_an_executor_recomputes_only_the_outputs_still_needed() {
        // 1 → 2 → 3 (final); stage 1 runs on e1 and e2, stage 2 completes, stage 3 is running.
        let mut j = job(&[(1, 2, &[]), (2, 2, &[1]), (3, 1, &[2])]);
        start(&mut j);
        let event = run_on(&mut j, 1, &["e1", "e2"], 1);
        assert_eq!(event, Some(JobEvent::StageCompleted(1)));
        start(&mut j);
        run_on(&mut j, 2, &["e1", "e2"], 2);
        assert_eq!(start(&mut j), vec![3]);
        j.task_launched(3, 0, &"e2".into());

        // e1 dies: stage 2's map 0 on e1 is needed by the running stage 3, whose task is
        // cancelled to wait for it; rerunning it needs stage 1's map 0 on e1 too. What e2
        // holds is kept.
        assert_eq!(j.executor_lost(&"e1".into()), JobEvent::Recompute);
        let cancels = j.take_cancels();
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].0.as_str(), "e2");
        let st = j.stage_statuses();
        for s in &st[..2] {
            assert_eq!(s.state, "waiting");
            assert_eq!(s.task_executors, vec!["".to_string(), "e2".to_string()]);
        }
        assert_eq!(st[2].state, "waiting");
        assert_eq!(start(&mut j), vec![1]);
        assert_eq!(
            finish_stage(&mut j, 1, "e2", 3),
            vec![JobEvent::StageCompleted(1)]
        );
        assert_eq!(start(&mut j), vec![2]);
        assert_eq!(
            finish_stage(&mut j, 2, "e2", 3),
            vec![JobEvent::StageCompleted(2)]
        );
        assert_eq!(start(&mut j), vec![3]);
        assert_eq!(finish_stage(&mut j, 3, "e2", 4), vec![JobEvent::Succeeded]);
        let launches: Vec<u32> = j.stage_statuses().iter().map(|s| s.launches).collect();
        assert_eq!(launches, vec![3, 3, 2], "only e1's outputs ran twice");
    }

    #[test]
    fn outputs_no_unfinished_stage_reads_are_not_recomputed() {
        let mut j = job(&[(1, 1, &[]), (2, 1, &[1]), (3, 1, &[2])]);
        start(&mut j);
        finish_stage(&mut j, 1, "e1", 1);
        start(&mut j);
        finish_stage(&mut j, 2, "e2", 2);
        start(&mut j);
        j.task_launched(3, 0, &"e2".into());
        assert_eq!(j.executor_lost(&"e1".into()), JobEvent::None);
        assert_eq!(j.stage_statuses()[0].state, "completed");
        assert!(j.pending_tasks().is_empty());
    }

    #[test]
    fn a_fetch_failure_recomputes_the_producer_and_retries_the_reader() {
        let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
        start(&mut j);
        run_on(&mut j, 1, &["e1", "e2"], 1);
        start(&mut j);
        j.task_launched(2, 0, &"e2".into());
        let outcome = TaskOutcome::FetchFailed {
            executor_id: "e1".into(),
            stage_id: 1,
            message: "connection refused".into(),
        };
        let s = report(&j, 2, 0, "e2", outcome);
        assert_eq!(j.task_finished(&s, "a2", 2), Some(JobEvent::Recompute));
        let st = j.stage_statuses();
        assert_eq!(st[0].task_executors, vec!["".to_string(), "e2".to_string()]);
        assert_eq!(start(&mut j), vec![1]);
        finish_stage(&mut j, 1, "e2", 3);
        assert_eq!(start(&mut j), vec![2]);
        assert_eq!(finish_stage(&mut j, 2, "e2", 4), vec![JobEvent::Succeeded]);
    }

    #[test]
    fn a_stage_without_tasks_completes_at_once() {
        let mut j = job(&[(1, 0, &[]), (2, 1, &[1])]);
        assert_eq!(start(&mut j), vec![2]);
        assert_eq!(j.output_locations(1).unwrap(), vec![Vec::new(), Vec::new()]);
        let mut empty = job(&[(1, 0, &[])]);
        assert!(start(&mut empty).is_empty());
        assert_eq!(empty.state, JobState::Succeeded);
    }
}
