//! The REST API's answers (`/api/v1/...`, schema in `docs/openapi.yaml`), as JSON built from
//! what the driver and the job listings hold. The web UI renders the same values.

use ember_core::JobId;
use ember_core::job::{ExecutorInfo, JobState, ScriptStatus};
use ember_core::task_metrics::{JobResources, OperatorMetrics, StageMetrics};
use serde_json::{Value, json};

use crate::driver::{Job, StageState, TaskState};

/// The API's version, in its paths.
pub const PREFIX: &str = "/api/v1";

/// Which jobs a listing keeps: `?state=running&name=text&since=MS&until=MS&limit=N`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub state: Option<String>,
    pub name: Option<String>,
    /// Submitted at or after (Unix ms).
    pub since: Option<u64>,
    /// Submitted before (Unix ms).
    pub until: Option<u64>,
    pub limit: Option<usize>,
}

impl JobFilter {
    /// Reads a query string; an unknown key or a bad number is an error naming it.
    pub fn parse(query: &str) -> Result<JobFilter, String> {
        let mut f = JobFilter::default();
        let number = |key: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{key} must be a whole number, not `{v}`"))
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "state" => {
                    const STATES: [&str; 5] =
                        ["queued", "running", "succeeded", "failed", "cancelled"];
                    if !STATES.contains(&value.as_ref()) {
                        return Err(format!(
                            "state must be one of {}, not `{value}`",
                            STATES.join(", ")
                        ));
                    }
                    f.state = Some(value.into_owned());
                }
                "name" => f.name = Some(value.into_owned()),
                "since" => f.since = Some(number("since", &value)?),
                "until" => f.until = Some(number("until", &value)?),
                "limit" => f.limit = Some(number("limit", &value)? as usize),
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (known: state, name, since, until, limit)"
                    ));
                }
            }
        }
        Ok(f)
    }

    pub fn keeps(&self, job: &ScriptStatus) -> bool {
        self.state.as_deref().is_none_or(|s| job.state.name() == s)
            && self.name.as_deref().is_none_or(|n| {
                job.name.to_lowercase().contains(&n.to_lowercase()) || job.script_id == n
            })
            && self.since.is_none_or(|t| job.submitted_unix_ms >= t)
            && self.until.is_none_or(|t| job.submitted_unix_ms < t)
    }
}

pub fn resources(r: &JobResources) -> Value {
    json!({
        "wall_ms": r.wall_ms,
        "cpu_ns": r.compute_ns,
        "peak_task_memory_bytes": r.peak_task_memory_bytes,
        "rows_scanned": r.rows_scanned,
        "bytes_scanned": r.bytes_scanned,
        "shuffle_bytes": r.shuffle_bytes,
        "spilled_bytes": r.spilled_bytes,
    })
}

/// One entry of the jobs listing.
pub fn job_summary(s: &ScriptStatus) -> Value {
    json!({
        "id": s.script_id,
        "name": s.name,
        "state": s.state.name(),
        "owner": s.owner,
        "submitted_unix_ms": s.submitted_unix_ms,
        "elapsed_ms": s.elapsed_ms,
        "statements_total": s.statements_total,
        "statements_done": s.statements_done,
        "current_job_id": (!s.current_job_id.is_empty()).then_some(&s.current_job_id),
        "stages_total": s.stages_total,
        "stages_completed": s.stages_completed,
        "tasks_total": s.tasks_total,
        "tasks_completed": s.tasks_completed,
        "error": s.error,
        "error_kind": s.error_kind.map(|k| k.name()),
        "resources": resources(&s.resources),
    })
}

fn operators(ops: &[OperatorMetrics]) -> Value {
    ops.iter()
        .map(|o| {
            let metrics: serde_json::Map<String, Value> = o
                .metrics
                .iter()
                .map(|m| (m.name.clone(), json!(m.value)))
                .collect();
            json!({"operator": o.operator, "metrics": metrics})
        })
        .collect()
}

fn stage_metrics(m: &StageMetrics) -> Value {
    json!({
        "tasks_measured": m.tasks,
        "cpu_ns": m.compute_ns,
        "peak_task_memory_bytes": m.peak_memory_bytes,
        "bytes_scanned": m.bytes_scanned,
        "spilled_bytes": m.spilled_bytes,
        "task_ms": {
            "min": m.task_ms_at(0.0),
            "median": m.task_ms_at(0.5),
            "p90": m.task_ms_at(0.9),
            "max": m.task_ms_at(1.0),
        },
    })
}

/// A job's stages and tasks, with what they measured, as the driver holds them.
pub fn job_stages(job: &Job) -> Value {
    let stages: Vec<Value> = job
        .stages
        .iter()
        .map(|(id, s)| {
            let metrics = job.stage_metrics(*id);
            let (rows, bytes) = job.stage_written(*id);
            let tasks: Vec<Value> = s
                .tasks
                .iter()
                .zip(&s.info)
                .enumerate()
                .map(|(p, (task, info))| {
                    let (state, executor) = match task {
                        TaskState::Pending => ("pending", None),
                        TaskState::Running { executor, .. } => ("running", Some(executor)),
                        TaskState::Done { executor, .. } => ("succeeded", Some(executor)),
                    };
                    let m = info.metrics.as_ref().filter(|_| state == "succeeded");
                    json!({
                        "partition": p,
                        "state": state,
                        "executor": executor.map(|e| e.to_string()),
                        "attempt": info.attempt,
                        "attempts": s.launches[p],
                        "launched_unix_ms": info.launched_ms,
                        "finished_unix_ms": info.finished_ms,
                        "elapsed_ms": m.map(|m| m.elapsed_ms),
                        "cpu_ns": m.map(|m| m.compute_ns),
                        "peak_memory_bytes": m.map(|m| m.peak_memory_bytes),
                        "spilled_bytes": m.map(|m| m.spilled_bytes),
                        "last_error": info.last_error,
                        "operators": m.map(|m| operators(&m.operators)),
                    })
                })
                .collect();
            // Stages a failed or cancelled job left unfinished ended with it (after a failover
            // a finished job's stages are all restored as completed: their tasks tell).
            let all_done = s.tasks.iter().all(|t| matches!(t, TaskState::Done { .. }));
            let state = match (job.state, s.state) {
                (JobState::Failed | JobState::Cancelled, StageState::Waiting | StageState::Running) => {
                    job.state.name()
                }
                (JobState::Failed | JobState::Cancelled, _) if !all_done => job.state.name(),
                _ => s.state.name(),
            };
            json!({
                "id": id,
                "state": state,
                "inputs": s.inputs,
                "final": *id == job.final_stage,
                "tasks_total": s.tasks.len(),
                "tasks_completed": s.tasks.iter().filter(|t| matches!(t, TaskState::Done { .. })).count(),
                "launches": s.launches.iter().sum::<u32>(),
                "output_rows": rows,
                "output_bytes": bytes,
                "shuffle_read_bytes": s.inputs.iter().map(|i| job.stage_written(*i).1).sum::<u64>(),
                "metrics": stage_metrics(&metrics),
                "operators": operators(&metrics.operators),
                "plan": datafusion::physical_plan::displayable(s.plan.as_ref()).indent(false).to_string(),
                "tasks": tasks,
            })
        })
        .collect();
    json!({
        "job_id": job.id.to_string(),
        "stages": stages,
        "plan_with_metrics": crate::driver::analyze::render(job),
    })
}

/// One job: its listing entry, a batch job's statements (while its record is kept) and,
/// while the driver still holds it, its stages and tasks.
pub fn job_detail(
    summary: &ScriptStatus,
    statements: Option<Vec<String>>,
    stages: Option<Value>,
) -> Value {
    let mut out = job_summary(summary);
    out["statements"] = json!(statements);
    out["running_job"] = stages.unwrap_or(Value::Null);
    out
}

/// The id of the job whose stages a listing entry shows: a batch job's running statement.
pub fn stages_job(summary: &ScriptStatus) -> JobId {
    if summary.current_job_id.is_empty() {
        JobId::from(summary.script_id.clone())
    } else {
        JobId::from(summary.current_job_id.clone())
    }
}

pub fn executor(e: &ExecutorInfo) -> Value {
    let m = &e.metrics;
    json!({
        "id": e.spec.id.to_string(),
        "address": e.spec.address,
        "slots": e.spec.slots,
        "running_tasks": e.running_tasks,
        "metrics": {
            "tasks_completed": m.tasks_completed,
            "tasks_failed": m.tasks_failed,
            "rows_scanned": m.rows_scanned,
            "shuffle_bytes_written": m.shuffle_bytes_written,
            "bytes_served": m.bytes_served,
            "bytes_fetched_remote": m.bytes_fetched_remote,
            "bytes_read_local": m.bytes_read_local,
            "spill_count": m.spill_count,
            "spilled_bytes": m.spilled_bytes,
            "memory_reserved_bytes": m.memory_reserved_bytes,
            "memory_limit_bytes": m.memory_limit_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_what_they_do_not_know() {
        let f = JobFilter::parse("state=running&name=lineitem&since=5&limit=2").unwrap();
        assert_eq!(f.state.as_deref(), Some("running"));
        assert_eq!((f.since, f.limit), (Some(5), Some(2)));
        assert!(
            JobFilter::parse("state=asleep")
                .unwrap_err()
                .contains("asleep")
        );
        assert!(
            JobFilter::parse("since=yesterday")
                .unwrap_err()
                .contains("since")
        );
        assert!(
            JobFilter::parse("colour=red")
                .unwrap_err()
                .contains("colour")
        );
        assert_eq!(JobFilter::parse("").unwrap(), JobFilter::default());
    }
}
