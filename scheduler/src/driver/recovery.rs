//! Recovery, as decisions of a job's state machine: a task that fails for a reason other than
//! the user's retries (on another executor where one exists) up to `max_task_attempts`; when map
//! outputs are lost (their executor died, or a reader could not fetch them) only the lost
//! outputs that some unfinished stage still needs are recomputed, and the stages reading them
//! wait for the recomputation.

use ember_core::error::ErrorKind;
use ember_core::{ExecutorId, StageId, TaskId};

use super::job::{Job, JobEvent, StageState, TaskState};

impl Job {
    /// Counts a failure of `task` on `executor`: the task goes back to pending (to run
    /// elsewhere), or, past the limit, the job fails with the task's last error.
    pub(super) fn retry(
        &mut self,
        task: &TaskId,
        executor: &ExecutorId,
        message: String,
        kind: ErrorKind,
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
            self.fail(message.clone(), kind, now_ms);
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
    pub(super) fn outputs_lost(
        &mut self,
        lost: &dyn Fn(&ExecutorId) -> bool,
        only: Option<StageId>,
    ) -> bool {
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
    pub(super) fn is_needed(&self, stage: StageId) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        stage == self.final_stage
            || self
                .stages
                .values()
                .any(|s| s.inputs.contains(&stage) && s.state != StageState::Completed)
    }
}
