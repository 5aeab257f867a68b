//! The leader's durable records (`ember_core::records`) ⇄ their stored bytes. The scheduler's
//! journal encodes with these; a new leader decodes; nothing else knows the stored format.

use bytes::Bytes;
use ember_core::error::ErrorKind;
use ember_core::job::PartitionStats;
use ember_core::records::{
    ExecutorRecord, JobLabel, JobRecord, LeaderRecord, ScriptRecord, StageOutput, StageRecord,
    TaskOutput, WriteRecord, WriteSpec,
};
use ember_core::{EmberError, JobId, Result};
use prost::Message;

use crate::convert::{job_state, kind_to_wire, required, settings_to_wire};
use crate::pb;

fn invalid(what: &str, e: prost::DecodeError) -> EmberError {
    EmberError::InvalidMessage(format!("{what}: {e}"))
}

fn stats_to_proto(stats: &[PartitionStats]) -> Vec<pb::PartitionStats> {
    stats
        .iter()
        .map(|s| pb::PartitionStats {
            rows: s.rows,
            bytes: s.bytes,
        })
        .collect()
}

impl From<&WriteSpec> for pb::WriteSpec {
    fn from(w: &WriteSpec) -> Self {
        pb::WriteSpec {
            target: w.target.clone(),
            staging_root: w.staging_root.clone(),
            stage: w.stage,
            single_file: w.single_file.clone().unwrap_or_default(),
            replace: w.replace,
        }
    }
}

impl From<pb::WriteSpec> for WriteSpec {
    fn from(w: pb::WriteSpec) -> Self {
        WriteSpec {
            target: w.target,
            staging_root: w.staging_root,
            stage: w.stage,
            single_file: (!w.single_file.is_empty()).then_some(w.single_file),
            replace: w.replace,
        }
    }
}

pub fn encode_job(r: &JobRecord) -> Bytes {
    pb::JobRecord {
        job_id: r.job_id.to_string(),
        state: pb::JobState::from(r.state) as i32,
        error: r.error.clone().unwrap_or_default(),
        error_kind: kind_to_wire(r.error_kind),
        settings: settings_to_wire(&r.settings),
        stages: r
            .stages
            .iter()
            .map(|s| pb::StageRecord {
                stage_id: s.stage_id,
                inputs: s.inputs.clone(),
                output_partitions: s.output_partitions,
                tasks: s.tasks,
                plan_chunks: s.plan_chunks,
            })
            .collect(),
        final_stage: r.final_stage,
        schema: r.schema.clone(),
        submitted_unix_ms: r.submitted_unix_ms,
        finished_unix_ms: r.finished_unix_ms,
        max_task_attempts: r.max_task_attempts,
        write: r.write.as_ref().map(Into::into),
        weight: r.weight,
        script_id: r.label.script.clone().unwrap_or_default(),
        description: r.label.description.clone(),
        owner: r.label.owner.clone().unwrap_or_default(),
        analyze: r.analyze,
    }
    .encode_to_vec()
    .into()
}

pub fn decode_job(bytes: &[u8]) -> Result<JobRecord> {
    let r = pb::JobRecord::decode(bytes).map_err(|e| invalid("job record", e))?;
    let state = job_state(r.state)?;
    Ok(JobRecord {
        job_id: JobId::from(r.job_id),
        state,
        error: (!r.error.is_empty()).then_some(r.error),
        error_kind: ErrorKind::from_name(&r.error_kind),
        settings: r.settings.into_iter().map(|s| (s.key, s.value)).collect(),
        stages: r
            .stages
            .into_iter()
            .map(|s| StageRecord {
                stage_id: s.stage_id,
                inputs: s.inputs,
                output_partitions: s.output_partitions,
                tasks: s.tasks,
                plan_chunks: s.plan_chunks,
            })
            .collect(),
        final_stage: r.final_stage,
        schema: r.schema,
        submitted_unix_ms: r.submitted_unix_ms,
        finished_unix_ms: r.finished_unix_ms,
        max_task_attempts: r.max_task_attempts.max(1),
        write: r.write.map(Into::into),
        weight: r.weight.max(1),
        label: JobLabel {
            script: (!r.script_id.is_empty()).then_some(r.script_id),
            description: r.description,
            owner: (!r.owner.is_empty()).then_some(r.owner),
        },
        analyze: r.analyze,
    })
}

pub fn encode_stage_output(o: &StageOutput) -> Bytes {
    pb::StageOutputRecord {
        tasks: o
            .tasks
            .iter()
            .map(|t| pb::TaskOutputRecord {
                executor_id: t.executor_id.clone(),
                address: t.address.clone(),
                attempt: t.attempt,
                partitions: stats_to_proto(&t.partitions),
            })
            .collect(),
    }
    .encode_to_vec()
    .into()
}

pub fn decode_stage_output(bytes: &[u8]) -> Result<StageOutput> {
    let r = pb::StageOutputRecord::decode(bytes).map_err(|e| invalid("stage output", e))?;
    Ok(StageOutput {
        tasks: r
            .tasks
            .into_iter()
            .map(|t| TaskOutput {
                executor_id: t.executor_id,
                address: t.address,
                attempt: t.attempt,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| PartitionStats {
                        rows: p.rows,
                        bytes: p.bytes,
                    })
                    .collect(),
            })
            .collect(),
    })
}

pub fn encode_write(w: &WriteRecord) -> Bytes {
    pb::WriteRecord {
        job_id: w.job_id.to_string(),
        spec: Some((&w.spec).into()),
        staged_dirs: w.staged_dirs.clone(),
        abort: false,
        replaced_files: w.replaced_files.clone(),
    }
    .encode_to_vec()
    .into()
}

pub fn decode_write(bytes: &[u8]) -> Result<WriteRecord> {
    let r = pb::WriteRecord::decode(bytes).map_err(|e| invalid("write record", e))?;
    Ok(WriteRecord {
        job_id: JobId::from(r.job_id),
        spec: required(r.spec, "spec")?.into(),
        staged_dirs: r.staged_dirs,
        replaced_files: r.replaced_files,
    })
}

pub fn encode_leader(r: &LeaderRecord) -> Bytes {
    pb::LeaderRecord {
        scheduler_id: r.scheduler_id.clone(),
        address: r.address.clone(),
        protocol_version: r.protocol_version,
    }
    .encode_to_vec()
    .into()
}

pub fn decode_leader(bytes: &[u8]) -> Result<LeaderRecord> {
    let r = pb::LeaderRecord::decode(bytes).map_err(|e| invalid("leader record", e))?;
    Ok(LeaderRecord {
        scheduler_id: r.scheduler_id,
        address: r.address,
        protocol_version: r.protocol_version,
    })
}

pub fn encode_executor(r: &ExecutorRecord) -> Bytes {
    pb::ExecutorRecord {
        executor: Some((&r.spec).into()),
        protocol_version: r.protocol_version,
        draining: r.draining,
    }
    .encode_to_vec()
    .into()
}

pub fn decode_executor(bytes: &[u8]) -> Result<ExecutorRecord> {
    let r = pb::ExecutorRecord::decode(bytes).map_err(|e| invalid("executor record", e))?;
    Ok(ExecutorRecord {
        spec: required(r.executor, "executor")?.try_into()?,
        protocol_version: r.protocol_version,
        draining: r.draining,
    })
}

pub fn encode_script(r: &ScriptRecord) -> Bytes {
    pb::ScriptRecord {
        script_id: r.script_id.clone(),
        name: r.name.clone(),
        statements: r.statements.clone(),
        settings: settings_to_wire(&r.settings),
        state: pb::JobState::from(r.state) as i32,
        statements_done: r.statements_done,
        current_job_id: r.current_job_id.clone(),
        error: r.error.clone().unwrap_or_default(),
        error_kind: kind_to_wire(r.error_kind),
        submitted_unix_ms: r.submitted_unix_ms,
        finished_unix_ms: r.finished_unix_ms,
        statement_rows: r.statement_rows.clone(),
        stages_done_before: r.stages_done_before,
        tasks_done_before: r.tasks_done_before,
        owner: r.owner.clone().unwrap_or_default(),
        resources_before: Some((&r.resources_before).into()),
    }
    .encode_to_vec()
    .into()
}

pub fn decode_script(bytes: &[u8]) -> Result<ScriptRecord> {
    let r = pb::ScriptRecord::decode(bytes).map_err(|e| invalid("script record", e))?;
    let state = job_state(r.state)?;
    Ok(ScriptRecord {
        script_id: r.script_id,
        name: r.name,
        statements: r.statements,
        settings: r.settings.into_iter().map(|s| (s.key, s.value)).collect(),
        state,
        statements_done: r.statements_done,
        current_job_id: r.current_job_id,
        error: (!r.error.is_empty()).then_some(r.error),
        error_kind: ErrorKind::from_name(&r.error_kind),
        submitted_unix_ms: r.submitted_unix_ms,
        finished_unix_ms: r.finished_unix_ms,
        statement_rows: r.statement_rows,
        stages_done_before: r.stages_done_before,
        tasks_done_before: r.tasks_done_before,
        owner: (!r.owner.is_empty()).then_some(r.owner),
        resources_before: r.resources_before.map(Into::into).unwrap_or_default(),
    })
}

/// A job that ended, as the history keeps it: its status and when it ended.
pub fn encode_history(status: &ember_core::job::ScriptStatus, finished_unix_ms: u64) -> Bytes {
    pb::HistoryRecord {
        status: Some(status.into()),
        finished_unix_ms,
    }
    .encode_to_vec()
    .into()
}

pub fn decode_history(bytes: &[u8]) -> Result<(ember_core::job::ScriptStatus, u64)> {
    let r = pb::HistoryRecord::decode(bytes).map_err(|e| invalid("history record", e))?;
    let status = r
        .status
        .ok_or_else(|| EmberError::InvalidMessage("history record without a status".into()))?;
    Ok((status.try_into()?, r.finished_unix_ms))
}

#[cfg(test)]
mod tests {
    use ember_core::job::JobState;

    use super::*;

    #[test]
    fn records_round_trip() {
        let spec = WriteSpec {
            target: "s3://b/out/".into(),
            staging_root: "s3://b/out/_ember_staging/j/".into(),
            stage: 2,
            single_file: None,
            replace: true,
        };
        let job = JobRecord {
            job_id: "j".into(),
            state: JobState::Failed,
            error: Some("boom".into()),
            error_kind: Some(ErrorKind::ResourcesExhausted),
            settings: vec![("datafusion.execution.batch_size".into(), "8192".into())],
            stages: vec![StageRecord {
                stage_id: 1,
                inputs: vec![0],
                output_partitions: 4,
                tasks: 3,
                plan_chunks: 1,
            }],
            final_stage: 1,
            schema: Bytes::from_static(b"schema"),
            submitted_unix_ms: 5,
            finished_unix_ms: 9,
            max_task_attempts: 4,
            write: Some(spec.clone()),
            weight: 3,
            label: JobLabel::new(Some("s1".into()), "SELECT  1"),
            analyze: true,
        };
        assert_eq!(decode_job(&encode_job(&job)).unwrap(), job);
        let out = StageOutput {
            tasks: vec![TaskOutput {
                executor_id: "e1".into(),
                address: "h:1".into(),
                attempt: 2,
                partitions: vec![PartitionStats { rows: 1, bytes: 8 }],
            }],
        };
        assert_eq!(
            decode_stage_output(&encode_stage_output(&out)).unwrap(),
            out
        );
        let write = WriteRecord {
            job_id: "j".into(),
            spec,
            staged_dirs: vec!["a/0-0/".into()],
            replaced_files: vec!["s3://b/out/old.parquet".into()],
        };
        assert_eq!(decode_write(&encode_write(&write)).unwrap(), write);
        assert!(matches!(
            decode_job(b"\xff\xff"),
            Err(EmberError::InvalidMessage(_))
        ));
    }
}
