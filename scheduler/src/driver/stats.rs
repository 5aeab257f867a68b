//! What a job's tasks measured: per task (launch time, metrics, last error), summed per stage
//! and per job. Kept by the driver as reports arrive; read by `EXPLAIN ANALYZE`, the REST API,
//! the web UI and the job's history entry. Tasks restored after a failover have no metrics.

use ember_core::StageId;
use ember_core::job::TaskOutcome;
use ember_core::task_metrics::{JobResources, StageMetrics, TaskMetrics};
use ember_core::telemetry::StageSpan;

use super::job::{Job, TaskState};

/// One task of a stage, beyond its state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskInfo {
    /// The running (or last) attempt and when it was launched (Unix ms).
    pub attempt: Option<u32>,
    pub launched_ms: Option<u64>,
    /// When its first attempt was launched: where its stage's wall time starts.
    pub first_launched_ms: Option<u64>,
    /// When its last attempt's report arrived.
    pub finished_ms: Option<u64>,
    /// What its successful attempt measured.
    pub metrics: Option<TaskMetrics>,
    /// How its last failed attempt failed.
    pub last_error: Option<String>,
}

impl TaskInfo {
    pub(super) fn launched(&mut self, attempt: u32, now_ms: u64) {
        self.attempt = Some(attempt);
        self.launched_ms = Some(now_ms);
        self.first_launched_ms.get_or_insert(now_ms);
        self.finished_ms = None;
    }

    pub(super) fn reported(&mut self, outcome: &TaskOutcome, now_ms: u64) {
        self.finished_ms = Some(now_ms);
        match outcome {
            TaskOutcome::Succeeded { metrics, .. } => self.metrics = Some(metrics.clone()),
            TaskOutcome::Failed { message, .. } => self.last_error = Some(message.clone()),
            TaskOutcome::FetchFailed {
                executor_id,
                stage_id,
                message,
            } => {
                self.last_error = Some(format!(
                    "could not fetch stage {stage_id} output from {executor_id}: {message}"
                ))
            }
        }
    }
}

impl Job {
    /// What the stage's finished tasks measured, summed.
    pub fn stage_metrics(&self, stage: StageId) -> StageMetrics {
        let mut out = StageMetrics::default();
        if let Some(s) = self.stages.get(&stage) {
            for (task, info) in s.tasks.iter().zip(&s.info) {
                if let (TaskState::Done { .. }, Some(m)) = (task, &info.metrics) {
                    out.add(m);
                }
            }
        }
        out
    }

    /// Rows and bytes the stage's finished tasks wrote (what the stages reading it fetch).
    pub fn stage_written(&self, stage: StageId) -> (u64, u64) {
        self.stages
            .get(&stage)
            .into_iter()
            .flat_map(|s| &s.tasks)
            .filter_map(|t| match t {
                TaskState::Done { stats, .. } => Some(stats),
                _ => None,
            })
            .flatten()
            .fold((0, 0), |(r, b), s| (r + s.rows, b + s.bytes))
    }

    /// Per stage that ran here: from its first task's launch to its last task's report.
    pub fn stage_spans(&self) -> Vec<StageSpan> {
        self.stages
            .iter()
            .filter_map(|(id, s)| {
                let (start_unix_ms, end_unix_ms) = self.stage_times(*id)?;
                Some(StageSpan {
                    stage: *id,
                    tasks: s.tasks.len() as u32,
                    start_unix_ms,
                    end_unix_ms,
                })
            })
            .collect()
    }

    /// From the stage's first launch to its last report; `None` where no task of it ran here.
    pub fn stage_wall_ms(&self, stage: StageId) -> Option<u64> {
        self.stage_times(stage)
            .map(|(start, end)| end.saturating_sub(start))
    }

    /// The stage's first launch and last report (Unix ms).
    fn stage_times(&self, stage: StageId) -> Option<(u64, u64)> {
        let s = self.stages.get(&stage)?;
        let start = s.info.iter().filter_map(|i| i.first_launched_ms).min()?;
        let end = s.info.iter().filter_map(|i| i.finished_ms).max()?;
        Some((start, end))
    }

    /// What the whole job used, as of `now_ms`.
    pub fn resources(&self, now_ms: u64) -> JobResources {
        let mut out = JobResources {
            wall_ms: self
                .finished_ms
                .unwrap_or(now_ms)
                .saturating_sub(self.submitted_ms),
            rows_scanned: self.rows_scanned,
            shuffle_bytes: self.shuffle_bytes(),
            ..JobResources::default()
        };
        for id in self.stages.keys() {
            out.add_stage(&self.stage_metrics(*id));
        }
        out
    }
}
