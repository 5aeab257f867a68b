//! What the leader records of each job in the metadata store, and how a new leader rebuilds
//! the jobs from it.
//!
//! Small facts, O(stages) writes per job: the job record (stages, their inputs and sizes,
//! session settings, result schema) and each stage's plan are written before the job is
//! acknowledged; each completed stage's output locations when it completes; the job record
//! again when the job ends. A new leader restores every stage whose output is still on a live
//! executor as done and runs the rest.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use datafusion::execution::TaskContext;
use ember_core::job::{JobState, PartitionStats};
use ember_core::meta::{Compare, KeyValue, Keys, MetaStore, Op, get_chunked};
use ember_core::shuffle::schema_from_bytes;
use ember_core::{EmberError, ExecutorId, JobId, Result, StageId};
use ember_proto::pb;
use prost::Message;

use crate::planner::{StageGraph, StagePlan};
use crate::state::{Job, StageState, TaskState, WriteSpec};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The job record of `job`, as it stands.
pub fn job_record(job: &Job) -> pb::JobRecord {
    pb::JobRecord {
        job_id: job.id.to_string(),
        state: pb::JobState::from(job.state) as i32,
        error: job.error.clone().unwrap_or_default(),
        settings: job
            .settings
            .iter()
            .map(|(key, value)| pb::Setting {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        stages: job
            .stages
            .iter()
            .map(|(id, s)| pb::StageRecord {
                stage_id: *id,
                inputs: s.inputs.clone(),
                output_partitions: s.output_partitions as u32,
                tasks: s.tasks.len() as u32,
                plan_chunks: s.plan_chunks,
            })
            .collect(),
        final_stage: job.final_stage,
        schema: ember_core::shuffle::schema_to_bytes(&job.schema),
        submitted_unix_ms: job.submitted_unix_ms,
        finished_unix_ms: match job.finished_unix_ms {
            Some(t) => t,
            None if job.state.is_terminal() => unix_ms(),
            None => 0,
        },
        max_task_attempts: job.max_task_attempts,
        write: job.write.as_ref().map(write_spec_to_proto),
    }
}

pub fn write_spec_to_proto(w: &WriteSpec) -> pb::WriteSpec {
    pb::WriteSpec {
        target: w.target.clone(),
        staging_root: w.staging_root.clone(),
        stage: w.stage,
        single_file: w.single_file.clone().unwrap_or_default(),
    }
}

pub fn write_spec_from_proto(w: pb::WriteSpec) -> WriteSpec {
    WriteSpec {
        target: w.target,
        staging_root: w.staging_root,
        stage: w.stage,
        single_file: (!w.single_file.is_empty()).then_some(w.single_file),
    }
}

/// The output record of a completed stage; `None` while some task is not done.
pub fn stage_output_record(job: &Job, stage: StageId) -> Option<pb::StageOutputRecord> {
    let tasks = job.stages.get(&stage)?.tasks.iter().map(|t| match t {
        TaskState::Done {
            executor,
            address,
            stats,
            attempt,
        } => Some(pb::TaskOutputRecord {
            executor_id: executor.to_string(),
            address: address.clone(),
            attempt: *attempt,
            partitions: stats
                .iter()
                .map(|s| pb::PartitionStats {
                    rows: s.rows,
                    bytes: s.bytes,
                })
                .collect(),
        }),
        _ => None,
    });
    Some(pb::StageOutputRecord {
        tasks: tasks.collect::<Option<Vec<_>>>()?,
    })
}

/// A write the leader makes, fenced on its leadership.
#[derive(Debug, Clone)]
pub enum Record {
    Job(JobId, Bytes),
    StageOutput(JobId, StageId, Bytes),
    Remove(JobId),
    /// A write's commit finished (or its cleanup did): forget its record.
    WriteDone(JobId),
}

impl Record {
    pub fn job(job: &Job) -> Record {
        Record::Job(job.id.clone(), job_record(job).encode_to_vec().into())
    }

    pub fn op(&self, keys: &Keys) -> Op {
        match self {
            Record::Job(id, bytes) => Op::put(keys.job(id.as_str()), bytes.clone()),
            Record::StageOutput(id, stage, bytes) => {
                Op::put(keys.stage_output(id.as_str(), *stage), bytes.clone())
            }
            Record::Remove(id) => Op::DeletePrefix(keys.job_prefix(id.as_str())),
            Record::WriteDone(id) => Op::Delete(keys.write(id.as_str())),
        }
    }
}

/// The guard of every leader write: the leader key is still the one this leader created.
pub fn fence(keys: &Keys, revision: i64) -> Vec<Compare> {
    vec![Compare::CreateRevision(keys.leader(), revision)]
}

/// One job as read back from the store.
#[derive(Debug, Default)]
struct Stored {
    record: Option<pb::JobRecord>,
    outputs: BTreeMap<StageId, pb::StageOutputRecord>,
}

/// Reads every job recorded under `keys` and rebuilds it: stages whose output lies on an
/// executor in `alive` are done, the rest run again. `ctx` decodes the stage plans.
pub async fn restore_jobs(
    store: &dyn MetaStore,
    keys: &Keys,
    ctx: &TaskContext,
    alive: &HashSet<ExecutorId>,
    now_ms: u64,
) -> Result<Vec<Job>> {
    let (kvs, _) = store.range(&keys.jobs()).await?;
    let mut jobs: BTreeMap<String, Stored> = BTreeMap::new();
    for KeyValue { key, value, .. } in &kvs {
        let rest = &key[keys.jobs().len()..];
        let mut parts = rest.split('/');
        let (Some(id), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let entry = jobs.entry(id.to_string()).or_default();
        let bad = |e: prost::DecodeError| EmberError::InvalidMessage(format!("{key}: {e}"));
        match (kind, parts.next()) {
            ("job", None) => entry.record = Some(pb::JobRecord::decode(&value[..]).map_err(bad)?),
            ("out", Some(stage)) => {
                if let Ok(stage) = stage.parse() {
                    let out = pb::StageOutputRecord::decode(&value[..]).map_err(bad)?;
                    entry.outputs.insert(stage, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (id, stored) in jobs {
        // A job whose record is missing was never acknowledged: its plans are leftovers.
        let Some(record) = stored.record else {
            continue;
        };
        let job = restore_job(store, keys, ctx, record, stored.outputs, alive, now_ms).await;
        match job {
            Ok(job) => out.push(job),
            Err(e) => tracing::warn!(job_id = %id, error = %e, "cannot restore job"),
        }
    }
    Ok(out)
}

async fn restore_job(
    store: &dyn MetaStore,
    keys: &Keys,
    ctx: &TaskContext,
    record: pb::JobRecord,
    outputs: BTreeMap<StageId, pb::StageOutputRecord>,
    alive: &HashSet<ExecutorId>,
    now_ms: u64,
) -> Result<Job> {
    let id = JobId::from(record.job_id.clone());
    let state: JobState = pb::JobState::try_from(record.state)
        .map_err(|_| EmberError::InvalidMessage(format!("job state {}", record.state)))?
        .try_into()?;
    let schema = Arc::new(schema_from_bytes(&record.schema)?);
    let mut stages = BTreeMap::new();
    for s in &record.stages {
        let plan = if state.is_terminal() {
            // A finished job needs no plans, only its result's whereabouts.
            Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                Arc::clone(&schema),
            )) as Arc<dyn datafusion::physical_plan::ExecutionPlan>
        } else {
            let key = keys.stage_plan(id.as_str(), s.stage_id);
            let bytes = get_chunked(store, &key, s.plan_chunks)
                .await?
                .ok_or_else(|| EmberError::Internal(format!("stage plan {key} is incomplete")))?;
            ember_proto::decode_plan(&bytes, ctx)?
        };
        stages.insert(
            s.stage_id,
            StagePlan {
                stage_id: s.stage_id,
                plan,
                inputs: s.inputs.clone(),
                tasks: s.tasks as usize,
                output_partitions: s.output_partitions as usize,
            },
        );
    }
    let graph = StageGraph {
        stages,
        final_stage: record.final_stage,
        schema,
    };
    let settings = record
        .settings
        .iter()
        .map(|s| (s.key.clone(), s.value.clone()))
        .collect();
    let age = unix_ms().saturating_sub(record.submitted_unix_ms);
    let mut job = Job::new(id, graph, settings, now_ms.saturating_sub(age));
    job.submitted_unix_ms = record.submitted_unix_ms;
    job.max_task_attempts = record.max_task_attempts.max(1);
    job.write = record.write.clone().map(write_spec_from_proto);
    // A write job is recorded as succeeded only once its commit is done.
    job.committed = state == JobState::Succeeded;
    for s in &record.stages {
        if let Some(stage) = job.stages.get_mut(&s.stage_id) {
            stage.plan_chunks = s.plan_chunks;
        }
    }
    for (stage_id, output) in outputs {
        for (p, task) in output.tasks.into_iter().enumerate() {
            let executor = ExecutorId::from(task.executor_id);
            if !state.is_terminal() && !alive.contains(&executor) {
                continue;
            }
            let stats = task
                .partitions
                .iter()
                .map(|s| PartitionStats {
                    rows: s.rows,
                    bytes: s.bytes,
                })
                .collect();
            job.restore_task(
                stage_id,
                p,
                TaskState::Done {
                    executor,
                    address: task.address,
                    stats,
                    attempt: task.attempt,
                },
            );
        }
    }
    if state.is_terminal() {
        for stage in job.stages.values_mut() {
            stage.state = StageState::Completed;
        }
        job.state = state;
        job.error = (!record.error.is_empty()).then_some(record.error);
        let finished_age = unix_ms().saturating_sub(record.finished_unix_ms);
        job.finished_ms = Some(now_ms.saturating_sub(finished_age));
        job.finished_unix_ms = Some(record.finished_unix_ms);
    } else {
        job.settle_restored();
    }
    Ok(job)
}
