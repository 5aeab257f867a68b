//! Wire ⇄ domain conversions. Each exists once; a missing required field is a typed error.

use ember_core::error::ErrorKind;
use ember_core::job::{
    ExecutorInfo, ExecutorSpec, JobState, JobStatus, PartitionStats, ScriptStatus, StageStatus,
    TaskDefinition, TaskOutcome, TaskStatus,
};
use ember_core::metrics::ExecutorMetrics;
use ember_core::shuffle::PartitionLocation;
use ember_core::task_metrics::{JobResources, Metric, MetricUnit, OperatorMetrics, TaskMetrics};
use ember_core::{EmberError, JobId, TaskId};

use crate::pb;

type Result<T> = std::result::Result<T, EmberError>;

fn missing(field: &str) -> EmberError {
    EmberError::InvalidMessage(format!("missing field {field}"))
}

/// Unwraps a required message field.
pub fn required<T>(value: Option<T>, field: &str) -> Result<T> {
    value.ok_or_else(|| missing(field))
}

impl From<&TaskId> for pb::TaskId {
    fn from(t: &TaskId) -> Self {
        pb::TaskId {
            job_id: t.job_id.to_string(),
            stage_id: t.stage_id,
            partition: t.partition,
            attempt: t.attempt,
        }
    }
}

impl TryFrom<pb::TaskId> for TaskId {
    type Error = EmberError;
    fn try_from(t: pb::TaskId) -> Result<Self> {
        if t.job_id.is_empty() {
            return Err(missing("task_id.job_id"));
        }
        Ok(TaskId {
            job_id: JobId::from(t.job_id),
            stage_id: t.stage_id,
            partition: t.partition,
            attempt: t.attempt,
        })
    }
}

impl From<&ExecutorSpec> for pb::ExecutorSpec {
    fn from(e: &ExecutorSpec) -> Self {
        pb::ExecutorSpec {
            executor_id: e.id.to_string(),
            address: e.address.clone(),
            slots: e.slots,
        }
    }
}

impl TryFrom<pb::ExecutorSpec> for ExecutorSpec {
    type Error = EmberError;
    fn try_from(e: pb::ExecutorSpec) -> Result<Self> {
        if e.executor_id.is_empty() {
            return Err(missing("executor.executor_id"));
        }
        if e.address.is_empty() {
            return Err(missing("executor.address"));
        }
        if e.slots == 0 {
            return Err(EmberError::InvalidMessage(
                "executor offers zero task slots".into(),
            ));
        }
        Ok(ExecutorSpec {
            id: e.executor_id.into(),
            address: e.address,
            slots: e.slots,
        })
    }
}

impl From<&ExecutorMetrics> for pb::ExecutorMetrics {
    fn from(m: &ExecutorMetrics) -> Self {
        pb::ExecutorMetrics {
            rows_scanned: m.rows_scanned,
            tasks_completed: m.tasks_completed,
            tasks_failed: m.tasks_failed,
            bytes_served: m.bytes_served,
            bytes_fetched_remote: m.bytes_fetched_remote,
            bytes_read_local: m.bytes_read_local,
            shuffle_bytes_written: m.shuffle_bytes_written,
            spill_count: m.spill_count,
            spilled_bytes: m.spilled_bytes,
            memory_reserved_bytes: m.memory_reserved_bytes,
            memory_limit_bytes: m.memory_limit_bytes,
        }
    }
}

impl From<pb::ExecutorMetrics> for ExecutorMetrics {
    fn from(m: pb::ExecutorMetrics) -> Self {
        ExecutorMetrics {
            rows_scanned: m.rows_scanned,
            tasks_completed: m.tasks_completed,
            tasks_failed: m.tasks_failed,
            bytes_served: m.bytes_served,
            bytes_fetched_remote: m.bytes_fetched_remote,
            bytes_read_local: m.bytes_read_local,
            shuffle_bytes_written: m.shuffle_bytes_written,
            spill_count: m.spill_count,
            spilled_bytes: m.spilled_bytes,
            memory_reserved_bytes: m.memory_reserved_bytes,
            memory_limit_bytes: m.memory_limit_bytes,
        }
    }
}

impl From<&ExecutorInfo> for pb::ExecutorInfo {
    fn from(e: &ExecutorInfo) -> Self {
        pb::ExecutorInfo {
            executor: Some((&e.spec).into()),
            metrics: Some((&e.metrics).into()),
            running_tasks: e.running_tasks,
        }
    }
}

impl TryFrom<pb::ExecutorInfo> for ExecutorInfo {
    type Error = EmberError;
    fn try_from(e: pb::ExecutorInfo) -> Result<Self> {
        Ok(ExecutorInfo {
            spec: required(e.executor, "executor")?.try_into()?,
            metrics: e.metrics.map(Into::into).unwrap_or_default(),
            running_tasks: e.running_tasks,
        })
    }
}

impl From<&JobResources> for pb::JobResources {
    fn from(r: &JobResources) -> Self {
        pb::JobResources {
            wall_ms: r.wall_ms,
            compute_ns: r.compute_ns,
            peak_task_memory_bytes: r.peak_task_memory_bytes,
            rows_scanned: r.rows_scanned,
            bytes_scanned: r.bytes_scanned,
            shuffle_bytes: r.shuffle_bytes,
            spilled_bytes: r.spilled_bytes,
        }
    }
}

impl From<pb::JobResources> for JobResources {
    fn from(r: pb::JobResources) -> Self {
        JobResources {
            wall_ms: r.wall_ms,
            compute_ns: r.compute_ns,
            peak_task_memory_bytes: r.peak_task_memory_bytes,
            rows_scanned: r.rows_scanned,
            bytes_scanned: r.bytes_scanned,
            shuffle_bytes: r.shuffle_bytes,
            spilled_bytes: r.spilled_bytes,
        }
    }
}

impl From<&TaskMetrics> for pb::TaskMetrics {
    fn from(m: &TaskMetrics) -> Self {
        pb::TaskMetrics {
            elapsed_ms: m.elapsed_ms,
            compute_ns: m.compute_ns,
            peak_memory_bytes: m.peak_memory_bytes,
            bytes_scanned: m.bytes_scanned,
            spilled_bytes: m.spilled_bytes,
            operators: m
                .operators
                .iter()
                .map(|o| pb::OperatorMetrics {
                    operator: o.operator.clone(),
                    metrics: o
                        .metrics
                        .iter()
                        .map(|m| pb::OperatorMetric {
                            name: m.name.clone(),
                            unit: m.unit.name().to_string(),
                            value: m.value,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<pb::TaskMetrics> for TaskMetrics {
    /// Metrics of a unit this version does not know are left out.
    fn from(m: pb::TaskMetrics) -> Self {
        TaskMetrics {
            elapsed_ms: m.elapsed_ms,
            compute_ns: m.compute_ns,
            peak_memory_bytes: m.peak_memory_bytes,
            bytes_scanned: m.bytes_scanned,
            spilled_bytes: m.spilled_bytes,
            operators: m
                .operators
                .into_iter()
                .map(|o| OperatorMetrics {
                    operator: o.operator,
                    metrics: o
                        .metrics
                        .into_iter()
                        .filter_map(|m| {
                            Some(Metric {
                                unit: MetricUnit::from_name(&m.unit)?,
                                name: m.name,
                                value: m.value,
                            })
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<&TaskStatus> for pb::TaskStatus {
    fn from(s: &TaskStatus) -> Self {
        let outcome = match &s.outcome {
            TaskOutcome::Succeeded {
                partitions,
                rows_scanned,
                metrics,
            } => pb::task_status::Outcome::Succeeded(pb::TaskSucceeded {
                partitions: partitions
                    .iter()
                    .map(|p| pb::PartitionStats {
                        rows: p.rows,
                        bytes: p.bytes,
                    })
                    .collect(),
                rows_scanned: *rows_scanned,
                metrics: Some(metrics.into()),
            }),
            TaskOutcome::Failed { message, kind } => {
                pb::task_status::Outcome::Failed(pb::TaskFailed {
                    message: message.clone(),
                    user_error: *kind == ErrorKind::User,
                    kind: kind.name().to_string(),
                })
            }
            TaskOutcome::FetchFailed {
                executor_id,
                stage_id,
                message,
            } => pb::task_status::Outcome::FetchFailed(pb::TaskFetchFailed {
                executor_id: executor_id.to_string(),
                stage_id: *stage_id,
                message: message.clone(),
            }),
        };
        pb::TaskStatus {
            task_id: Some((&s.task_id).into()),
            executor_id: s.executor_id.to_string(),
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<pb::TaskStatus> for TaskStatus {
    type Error = EmberError;
    fn try_from(s: pb::TaskStatus) -> Result<Self> {
        let outcome = match required(s.outcome, "outcome")? {
            pb::task_status::Outcome::Succeeded(ok) => TaskOutcome::Succeeded {
                partitions: ok
                    .partitions
                    .into_iter()
                    .map(|p| PartitionStats {
                        rows: p.rows,
                        bytes: p.bytes,
                    })
                    .collect(),
                rows_scanned: ok.rows_scanned,
                metrics: ok.metrics.map(Into::into).unwrap_or_default(),
            },
            pb::task_status::Outcome::Failed(f) => TaskOutcome::Failed {
                message: f.message,
                kind: ErrorKind::from_name(&f.kind).unwrap_or(if f.user_error {
                    ErrorKind::User
                } else {
                    ErrorKind::Internal
                }),
            },
            pb::task_status::Outcome::FetchFailed(f) => TaskOutcome::FetchFailed {
                executor_id: f.executor_id.into(),
                stage_id: f.stage_id,
                message: f.message,
            },
        };
        if s.executor_id.is_empty() {
            return Err(missing("executor_id"));
        }
        Ok(TaskStatus {
            task_id: required(s.task_id, "task_id")?.try_into()?,
            executor_id: s.executor_id.into(),
            outcome,
        })
    }
}

impl From<&TaskDefinition> for pb::TaskDefinition {
    fn from(t: &TaskDefinition) -> Self {
        pb::TaskDefinition {
            task_id: Some((&t.task_id).into()),
            plan: t.plan.clone(),
            settings: t.settings.iter().cloned().collect(),
            trace_parent: t.trace_parent.clone(),
        }
    }
}

impl TryFrom<pb::TaskDefinition> for TaskDefinition {
    type Error = EmberError;
    fn try_from(t: pb::TaskDefinition) -> Result<Self> {
        if t.plan.is_empty() {
            return Err(missing("plan"));
        }
        let mut settings: Vec<_> = t.settings.into_iter().collect();
        settings.sort();
        Ok(TaskDefinition {
            task_id: required(t.task_id, "task_id")?.try_into()?,
            plan: t.plan,
            settings,
            trace_parent: t.trace_parent,
        })
    }
}

impl From<&PartitionLocation> for pb::PartitionLocation {
    fn from(l: &PartitionLocation) -> Self {
        pb::PartitionLocation {
            executor_id: l.executor_id.to_string(),
            address: l.address.clone(),
            job_id: l.job_id.clone(),
            stage_id: l.stage_id,
            map_partition: l.map_partition,
            partition: l.partition,
            rows: l.rows,
            bytes: l.bytes,
            grant: l.grant.clone(),
        }
    }
}

impl TryFrom<pb::PartitionLocation> for PartitionLocation {
    type Error = EmberError;
    fn try_from(l: pb::PartitionLocation) -> Result<Self> {
        if l.executor_id.is_empty() || l.address.is_empty() || l.job_id.is_empty() {
            return Err(missing("partition location executor_id/address/job_id"));
        }
        Ok(PartitionLocation {
            executor_id: l.executor_id.into(),
            address: l.address,
            job_id: l.job_id,
            stage_id: l.stage_id,
            map_partition: l.map_partition,
            partition: l.partition,
            rows: l.rows,
            bytes: l.bytes,
            grant: l.grant,
        })
    }
}

pub fn locations_to_proto(parts: &[Vec<PartitionLocation>]) -> Vec<pb::PartitionLocations> {
    parts
        .iter()
        .map(|locs| pb::PartitionLocations {
            locations: locs.iter().map(Into::into).collect(),
        })
        .collect()
}

pub fn locations_from_proto(
    parts: Vec<pb::PartitionLocations>,
) -> Result<Vec<Vec<PartitionLocation>>> {
    parts
        .into_iter()
        .map(|p| p.locations.into_iter().map(TryInto::try_into).collect())
        .collect()
}

/// An error kind as it travels: its name, or empty for none.
pub fn kind_to_wire(kind: Option<ErrorKind>) -> String {
    kind.map(|k| k.name().to_string()).unwrap_or_default()
}

/// Session settings as they travel in records.
pub fn settings_to_wire(settings: &[(String, String)]) -> Vec<pb::Setting> {
    settings
        .iter()
        .map(|(key, value)| pb::Setting {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// A job state as it travels (an `i32` of the enum); unknown or missing is a typed error.
pub fn job_state(raw: i32) -> Result<JobState> {
    pb::JobState::try_from(raw)
        .map_err(|_| EmberError::InvalidMessage(format!("unknown job state {raw}")))?
        .try_into()
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

impl TryFrom<pb::JobState> for JobState {
    type Error = EmberError;
    fn try_from(s: pb::JobState) -> Result<Self> {
        Ok(match s {
            pb::JobState::Queued => JobState::Queued,
            pb::JobState::Running => JobState::Running,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Cancelled => JobState::Cancelled,
            pb::JobState::Unspecified => return Err(missing("state")),
        })
    }
}

impl From<&JobStatus> for pb::JobStatus {
    fn from(s: &JobStatus) -> Self {
        pb::JobStatus {
            job_id: s.job_id.to_string(),
            state: pb::JobState::from(s.state) as i32,
            error: s.error.clone().unwrap_or_default(),
            error_kind: kind_to_wire(s.error_kind),
            stages_total: s.stages_total,
            stages_completed: s.stages_completed,
            tasks_total: s.tasks_total,
            tasks_completed: s.tasks_completed,
            elapsed_ms: s.elapsed_ms,
            result_schema: s.result_schema.clone(),
            result_partitions: locations_to_proto(&s.result_partitions),
            inline_result: s.inline_result.clone(),
            shuffle_bytes: s.shuffle_bytes,
            resources: Some((&s.resources).into()),
            stages: s
                .stages
                .iter()
                .map(|st| pb::StageStatus {
                    stage_id: st.stage_id,
                    state: st.state.clone(),
                    tasks: st.tasks,
                    tasks_completed: st.tasks_completed,
                    launches: st.launches,
                    task_executors: st.task_executors.clone(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::JobStatus> for JobStatus {
    type Error = EmberError;
    fn try_from(s: pb::JobStatus) -> Result<Self> {
        Ok(JobStatus {
            job_id: JobId::from(s.job_id),
            state: job_state(s.state)?,
            error: (!s.error.is_empty()).then_some(s.error),
            error_kind: ErrorKind::from_name(&s.error_kind),
            stages_total: s.stages_total,
            stages_completed: s.stages_completed,
            tasks_total: s.tasks_total,
            tasks_completed: s.tasks_completed,
            elapsed_ms: s.elapsed_ms,
            result_schema: s.result_schema,
            result_partitions: locations_from_proto(s.result_partitions)?,
            inline_result: s.inline_result,
            shuffle_bytes: s.shuffle_bytes,
            resources: s.resources.map(Into::into).unwrap_or_default(),
            stages: s
                .stages
                .into_iter()
                .map(|st| StageStatus {
                    stage_id: st.stage_id,
                    state: st.state,
                    tasks: st.tasks,
                    tasks_completed: st.tasks_completed,
                    launches: st.launches,
                    task_executors: st.task_executors,
                })
                .collect(),
        })
    }
}

impl From<&ScriptStatus> for pb::ScriptStatus {
    fn from(s: &ScriptStatus) -> Self {
        pb::ScriptStatus {
            script_id: s.script_id.clone(),
            name: s.name.clone(),
            state: pb::JobState::from(s.state) as i32,
            statements_total: s.statements_total,
            statements_done: s.statements_done,
            current_job_id: s.current_job_id.clone(),
            stages_total: s.stages_total,
            stages_completed: s.stages_completed,
            tasks_total: s.tasks_total,
            tasks_completed: s.tasks_completed,
            elapsed_ms: s.elapsed_ms,
            error: s.error.clone().unwrap_or_default(),
            error_kind: kind_to_wire(s.error_kind),
            submitted_unix_ms: s.submitted_unix_ms,
            statement_rows: s.statement_rows.clone(),
            owner: s.owner.clone().unwrap_or_default(),
            resources: Some((&s.resources).into()),
        }
    }
}

impl TryFrom<pb::ScriptStatus> for ScriptStatus {
    type Error = EmberError;
    fn try_from(s: pb::ScriptStatus) -> Result<Self> {
        Ok(ScriptStatus {
            script_id: s.script_id,
            name: s.name,
            state: job_state(s.state)?,
            statements_total: s.statements_total,
            statements_done: s.statements_done,
            current_job_id: s.current_job_id,
            stages_total: s.stages_total,
            stages_completed: s.stages_completed,
            tasks_total: s.tasks_total,
            tasks_completed: s.tasks_completed,
            elapsed_ms: s.elapsed_ms,
            error: (!s.error.is_empty()).then_some(s.error),
            error_kind: ErrorKind::from_name(&s.error_kind),
            submitted_unix_ms: s.submitted_unix_ms,
            statement_rows: s.statement_rows,
            owner: (!s.owner.is_empty()).then_some(s.owner),
            resources: s.resources.map(Into::into).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<D, P>(value: &D) -> D
    where
        for<'a> P: From<&'a D>,
        D: TryFrom<P, Error = EmberError>,
    {
        D::try_from(P::from(value)).unwrap()
    }

    #[test]
    fn task_status_round_trips() {
        let id = TaskId {
            job_id: "job1".into(),
            stage_id: 2,
            partition: 5,
            attempt: 1,
        };
        for outcome in [
            TaskOutcome::Succeeded {
                partitions: vec![
                    PartitionStats { rows: 3, bytes: 90 },
                    PartitionStats::default(),
                ],
                rows_scanned: 42,
                metrics: TaskMetrics {
                    elapsed_ms: 12,
                    compute_ns: 3_000,
                    peak_memory_bytes: 1 << 20,
                    bytes_scanned: 99,
                    spilled_bytes: 7,
                    operators: vec![OperatorMetrics {
                        operator: "SortExec".into(),
                        metrics: vec![Metric {
                            name: "spilled_bytes".into(),
                            unit: MetricUnit::Bytes,
                            value: 7,
                        }],
                    }],
                },
            },
            TaskOutcome::Failed {
                message: "boom".into(),
                kind: ErrorKind::User,
            },
            TaskOutcome::Failed {
                message: "out of memory".into(),
                kind: ErrorKind::ResourcesExhausted,
            },
        ] {
            let s = TaskStatus {
                task_id: id.clone(),
                executor_id: "e1".into(),
                outcome,
            };
            assert_eq!(round_trip::<TaskStatus, pb::TaskStatus>(&s), s);
        }
    }

    #[test]
    fn location_and_spec_round_trip() {
        let l = PartitionLocation {
            executor_id: "e".into(),
            address: "127.0.0.1:1".into(),
            job_id: "j".into(),
            stage_id: 1,
            map_partition: 2,
            partition: 3,
            rows: 4,
            bytes: 5,
            grant: "7.ab".into(),
        };
        assert_eq!(
            round_trip::<PartitionLocation, pb::PartitionLocation>(&l),
            l
        );
        let e = ExecutorSpec {
            id: "e".into(),
            address: "h:1".into(),
            slots: 4,
        };
        assert_eq!(round_trip::<ExecutorSpec, pb::ExecutorSpec>(&e), e);
    }

    #[test]
    fn missing_fields_are_typed_errors() {
        let bad = pb::TaskStatus {
            task_id: None,
            executor_id: "e".into(),
            outcome: Some(pb::task_status::Outcome::Failed(pb::TaskFailed::default())),
        };
        assert!(matches!(
            TaskStatus::try_from(bad),
            Err(EmberError::InvalidMessage(_))
        ));
        let no_slots = pb::ExecutorSpec {
            executor_id: "e".into(),
            address: "a:1".into(),
            slots: 0,
        };
        assert!(ExecutorSpec::try_from(no_slots).is_err());
        assert!(TaskId::try_from(pb::TaskId::default()).is_err());
    }
}
