//! The job → stage → task state machine. Pure: it consumes events (task launched, finished,
//! executor lost, cancel) and answers what to do next; I/O happens around it and time is passed
//! in by the caller.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::ExecutionPlan;
use ember_core::job::{JobState, PartitionStats, TaskOutcome, TaskStatus};
use ember_core::shuffle::PartitionLocation;
use ember_core::{ExecutorId, JobId, StageId, TaskId};

use crate::planner::StageGraph;

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
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Some input stage is not complete yet.
    Waiting,
    /// Runnable: its plan is resolved and its tasks are pending or running.
    Running,
    Completed,
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
}

/// What a task event changed for the job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// Nothing the driver must act on (or a stale report, ignored).
    None,
    /// A stage finished: new stages may be runnable.
    StageCompleted(StageId),
    Succeeded,
    Failed(String),
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
    pub rows_scanned: u64,
    pub settings: Vec<(String, String)>,
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
            rows_scanned: 0,
            settings,
        }
    }

    /// Moves every waiting stage whose inputs are complete to `Running` and returns them; the
    /// driver must resolve and encode their plans (`set_launch_plan`). Stages without tasks
    /// complete at once.
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
                .filter(|(_, s)| {
                    s.inputs
                        .iter()
                        .all(|i| self.stages.get(i).map(|x| x.state) == Some(StageState::Completed))
                })
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                break;
            }
            for id in ready {
                let stage = self.stages.get_mut(&id).expect("ready stage exists");
                if stage.tasks.is_empty() {
                    stage.state = StageState::Completed;
                } else {
                    stage.state = StageState::Running;
                    started.push(id);
                }
            }
        }
        if !started.is_empty() || self.state == JobState::Queued {
            self.state = JobState::Running;
        }
        if self.all_complete() {
            self.state = JobState::Succeeded;
        }
        started
    }

    pub fn set_launch_plan(&mut self, stage: StageId, plan: Bytes) {
        if let Some(s) = self.stages.get_mut(&stage) {
            s.launch_plan = Some(plan);
        }
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

    /// Tasks that can be launched now: `(stage, partition)` in stage order.
    pub fn pending_tasks(&self) -> Vec<(StageId, usize)> {
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
                    .map(move |(p, _)| (*id, p))
            })
            .collect()
    }

    /// Records that a task was handed to `executor`; returns its id.
    pub fn task_launched(
        &mut self,
        stage: StageId,
        partition: usize,
        executor: &ExecutorId,
    ) -> TaskId {
        let attempt = 0;
        if let Some(t) = self
            .stages
            .get_mut(&stage)
            .and_then(|s| s.tasks.get_mut(partition))
        {
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
    /// that executor (late, duplicate, or for a finished job) is ignored: `None`.
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
        let stage = self
            .stages
            .get_mut(&id.stage_id)
            .expect("checked by caller");
        let task = &mut stage.tasks[id.partition as usize];
        match &status.outcome {
            TaskOutcome::Failed { message, .. } => {
                *task = TaskState::Pending;
                let message = format!(
                    "stage {} task {} failed on {}: {message}",
                    id.stage_id, id.partition, status.executor_id
                );
                self.fail(message.clone(), now_ms);
                JobEvent::Failed(message)
            }
            TaskOutcome::Succeeded {
                partitions,
                rows_scanned,
            } => {
                *task = TaskState::Done {
                    executor: status.executor_id.clone(),
                    address: address.to_string(),
                    stats: partitions.clone(),
                };
                self.rows_scanned += rows_scanned;
                let done = stage
                    .tasks
                    .iter()
                    .all(|t| matches!(t, TaskState::Done { .. }));
                if !done {
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

    /// An executor is gone. Without task retry (a later feature), a job that needed it fails.
    pub fn executor_lost(&mut self, executor: &ExecutorId, now_ms: u64) -> JobEvent {
        if self.state.is_terminal() {
            return JobEvent::None;
        }
        let needed = self.stages.values().any(|s| {
            s.tasks.iter().any(|t| match t {
                TaskState::Running { executor: e, .. } => e == executor,
                TaskState::Done { executor: e, .. } => e == executor,
                TaskState::Pending => false,
            })
        });
        if !needed {
            return JobEvent::None;
        }
        let message = format!("executor {executor} was lost while the job needed it");
        self.fail(message.clone(), now_ms);
        JobEvent::Failed(message)
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

    fn ok(stage: StageId, partition: u32, executor: &str, rows: &[u64]) -> TaskStatus {
        TaskStatus {
            task_id: TaskId {
                job_id: "j".into(),
                stage_id: stage,
                partition,
                attempt: 0,
            },
            executor_id: executor.into(),
            outcome: TaskOutcome::Succeeded {
                partitions: rows
                    .iter()
                    .map(|r| PartitionStats {
                        rows: *r,
                        bytes: r * 10,
                    })
                    .collect(),
                rows_scanned: 1,
            },
        }
    }

    fn failed(stage: StageId, partition: u32, executor: &str) -> TaskStatus {
        TaskStatus {
            outcome: TaskOutcome::Failed {
                message: "boom".into(),
                user_error: true,
            },
            ..ok(stage, partition, executor, &[])
        }
    }

    fn launch_all(job: &mut Job, executor: &str) {
        for (stage, p) in job.pending_tasks() {
            job.task_launched(stage, p, &executor.into());
        }
    }

    #[test]
    fn stages_run_in_dependency_order_and_the_job_succeeds() {
        let mut j = job(&[(1, 2, &[]), (2, 2, &[]), (3, 1, &[1, 2])]);
        assert_eq!(start(&mut j), vec![1, 2]);
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.pending_tasks().len(), 4);
        launch_all(&mut j, "e1");
        assert!(j.pending_tasks().is_empty());
        let steps: &[(TaskStatus, Option<JobEvent>)] = &[
            (ok(1, 0, "e1", &[1, 0]), Some(JobEvent::None)),
            (ok(1, 0, "e1", &[1, 0]), None), // duplicate report: ignored
            (ok(1, 1, "e2", &[1, 0]), None), // wrong executor: ignored
            (ok(1, 1, "e1", &[0, 2]), Some(JobEvent::StageCompleted(1))),
            (ok(2, 0, "e1", &[3, 3]), Some(JobEvent::None)),
            (ok(2, 1, "e1", &[0, 0]), Some(JobEvent::StageCompleted(2))),
        ];
        for (status, expected) in steps {
            assert_eq!(&j.task_finished(status, "addr", 5), expected, "{status:?}");
        }
        // Stage 1's output: partition 0 from map 0, partition 1 from map 1; empty ones skipped.
        let locs = j.output_locations(1).unwrap();
        assert_eq!(locs[0].len(), 1);
        assert_eq!(locs[0][0].map_partition, 0);
        assert_eq!(locs[1][0].map_partition, 1);
        assert_eq!(start(&mut j), vec![3]);
        launch_all(&mut j, "e1");
        assert_eq!(
            j.task_finished(&ok(3, 0, "e1", &[7, 0]), "addr", 9),
            Some(JobEvent::Succeeded)
        );
        assert_eq!(j.state, JobState::Succeeded);
        assert_eq!(j.finished_ms, Some(9));
        assert_eq!(j.rows_scanned, 5);
        assert_eq!(j.tasks_completed(), 5);
    }

    #[test]
    fn failures_loss_and_cancel() {
        // (what happens, expected final state)
        type Step = fn(&mut Job) -> Option<JobEvent>;
        let cases: &[(&str, Step, JobState)] = &[
            (
                "task fails",
                |j| j.task_finished(&failed(1, 0, "e1"), "a", 1),
                JobState::Failed,
            ),
            (
                "executor with running task lost",
                |j| Some(j.executor_lost(&"e1".into(), 1)),
                JobState::Failed,
            ),
            (
                "unrelated executor lost",
                |j| Some(j.executor_lost(&"e9".into(), 1)),
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
            step(&mut j);
            assert_eq!(j.state, *state, "{name}");
            if state.is_terminal() {
                assert!(j.pending_tasks().is_empty(), "{name}");
                // Late reports after the end change nothing.
                assert_eq!(
                    j.task_finished(&ok(1, 1, "e1", &[1, 1]), "a", 2),
                    None,
                    "{name}"
                );
            }
        }
        let mut j = job(&[(1, 2, &[]), (2, 1, &[1])]);
        start(&mut j);
        launch_all(&mut j, "e1");
        assert_eq!(j.cancel(3).len(), 2, "cancel returns the running tasks");
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
