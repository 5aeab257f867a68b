//! What a job records in the store, and how a new leader brings it back from its records
//! (marking done the tasks whose recorded outputs lie on live executors).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use ember_core::job::JobState;
use ember_core::records::{JobRecord, StageOutput, StageRecord, TaskOutput};
use ember_core::{EmberError, ExecutorId, Result, StageId};

use super::job::{Job, JobOptions, StageState, TaskState};
use crate::planner::{StageGraph, StagePlan};

impl Job {
    /// What the store keeps of the job, as it stands.
    pub fn record(&self) -> JobRecord {
        JobRecord {
            job_id: self.id.clone(),
            state: self.state,
            error: self.error.clone(),
            error_kind: self.error_kind,
            settings: self.settings.clone(),
            stages: self
                .stages
                .iter()
                .map(|(id, s)| StageRecord {
                    stage_id: *id,
                    inputs: s.inputs.clone(),
                    output_partitions: s.output_partitions as u32,
                    tasks: s.tasks.len() as u32,
                    plan_chunks: s.plan_chunks,
                })
                .collect(),
            final_stage: self.final_stage,
            schema: ember_core::shuffle::schema_to_bytes(&self.schema),
            submitted_unix_ms: self.submitted_ms,
            finished_unix_ms: self.finished_ms.unwrap_or(0),
            max_task_attempts: self.max_task_attempts,
            write: self.write.clone(),
            weight: self.weight,
            label: self.label.clone(),
            analyze: self.analyze,
        }
    }

    /// Where a stage's output lies, for its record; `None` while some task is not done.
    pub fn stage_output(&self, stage: StageId) -> Option<StageOutput> {
        let tasks = self.stages.get(&stage)?.tasks.iter().map(|t| match t {
            TaskState::Done {
                executor,
                address,
                stats,
                attempt,
            } => Some(TaskOutput {
                executor_id: executor.to_string(),
                address: address.clone(),
                attempt: *attempt,
                partitions: stats.clone(),
            }),
            _ => None,
        });
        Some(StageOutput {
            tasks: tasks.collect::<Option<Vec<_>>>()?,
        })
    }

    /// Rebuilds a job from its records: `plans` holds each stage's decoded plan (a finished job
    /// needs none), `outputs` the recorded outputs of completed stages. A task whose output lies
    /// on an executor that is still `alive` is done; the rest run again, where still needed.
    pub fn restore(
        record: JobRecord,
        mut plans: BTreeMap<StageId, Arc<dyn ExecutionPlan>>,
        outputs: BTreeMap<StageId, StageOutput>,
        alive: &dyn Fn(&ExecutorId) -> bool,
    ) -> Result<Job> {
        let schema = Arc::new(ember_core::shuffle::schema_from_bytes(&record.schema)?);
        let terminal = record.state.is_terminal();
        let mut stages = BTreeMap::new();
        for s in &record.stages {
            let plan = match plans.remove(&s.stage_id) {
                Some(plan) => plan,
                // A finished job needs no plans, only its result's whereabouts.
                None if terminal => Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                    Arc::clone(&schema),
                )) as Arc<dyn ExecutionPlan>,
                None => {
                    return Err(EmberError::Internal(format!(
                        "job {}: the plan of stage {} is missing",
                        record.job_id, s.stage_id
                    )));
                }
            };
            let stage = StagePlan {
                stage_id: s.stage_id,
                plan,
                inputs: s.inputs.clone(),
                tasks: s.tasks as usize,
                output_partitions: s.output_partitions as usize,
            };
            stages.insert(s.stage_id, stage);
        }
        let graph = StageGraph {
            stages,
            final_stage: record.final_stage,
            schema,
        };
        let options = JobOptions {
            settings: record.settings.clone(),
            max_task_attempts: record.max_task_attempts,
            weight: record.weight,
            write: record.write.clone(),
            label: record.label.clone(),
            analyze: record.analyze,
            trace_parent: String::new(),
        };
        let mut job = Job::new(
            record.job_id.clone(),
            graph,
            options,
            record.submitted_unix_ms,
        );
        // A write job is recorded as succeeded only once its commit is done.
        job.committed = record.state == JobState::Succeeded;
        for s in &record.stages {
            if let Some(stage) = job.stages.get_mut(&s.stage_id) {
                stage.plan_chunks = s.plan_chunks;
            }
        }
        for (stage_id, output) in outputs {
            for (p, task) in output.tasks.into_iter().enumerate() {
                let executor = ExecutorId::from(task.executor_id);
                if !terminal && !alive(&executor) {
                    continue;
                }
                let done = TaskState::Done {
                    executor,
                    address: task.address,
                    stats: task.partitions,
                    attempt: task.attempt,
                };
                job.restore_task(stage_id, p, done);
            }
        }
        if terminal {
            for stage in job.stages.values_mut() {
                stage.state = StageState::Completed;
            }
            job.state = record.state;
            job.error = record.error;
            job.error_kind = record.error_kind;
            job.finished_ms = Some(record.finished_unix_ms);
        } else {
            job.settle_restored();
        }
        Ok(job)
    }

    /// Marks a recovered stage's task as done (its output was recorded before a failover).
    fn restore_task(&mut self, stage: StageId, partition: usize, done: TaskState) {
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
    fn settle_restored(&mut self) {
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
}
