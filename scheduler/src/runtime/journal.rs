//! The leader's journal: the facts the driver decided to record (`Effect::Persist`), written
//! to the metadata store in the order decided, each fenced on the leadership it was decided
//! under; and how a new leader reads them back.
//!
//! Small facts, O(stages) writes per job: the job record and each stage's plan before the job
//! is acknowledged; each completed stage's output locations; the job record again when it
//! ends. The store holds these facts, never derived graphs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::TaskContext;
use ember_core::meta::{Compare, KeyValue, Keys, MetaStore, Op, get_chunked};
use ember_core::records::{JobRecord, Record, StageOutput, WriteRecord};
use ember_core::retry::Backoff;
use ember_core::{EmberError, Result, StageId};
use ember_proto::records as wire;
use parking_lot::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::warn;

use super::Scheduler;
use crate::driver::StoredJob;

/// The guard of every leader write: the leader key is still the one this leader created.
pub fn fence(keys: &Keys, revision: i64) -> Vec<Compare> {
    vec![Compare::CreateRevision(keys.leader(), revision)]
}

/// The store operation that records `record`.
pub fn op(keys: &Keys, record: &Record) -> Op {
    match record {
        Record::Job(job) => Op::put(keys.job(job.job_id.as_str()), wire::encode_job(job)),
        Record::StageOutput(id, stage, output) => Op::put(
            keys.stage_output(id.as_str(), *stage),
            wire::encode_stage_output(output),
        ),
        Record::Remove(id) => Op::DeletePrefix(keys.job_prefix(id.as_str())),
        Record::WriteDone(id) => Op::Delete(keys.write(id.as_str())),
    }
}

/// The ordered queue of records to write.
pub(crate) struct Journal {
    tx: UnboundedSender<(i64, Record)>,
    rx: Mutex<Option<UnboundedReceiver<(i64, Record)>>>,
}

impl Journal {
    pub(crate) fn new() -> Self {
        let (tx, rx) = unbounded_channel();
        Journal {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn send(&self, fence: i64, record: Record) {
        let _ = self.tx.send((fence, record));
    }

    /// The writer loop, once.
    pub(crate) fn start(
        &self,
        sched: Arc<Scheduler>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let rx = self.rx.lock().take()?;
        Some(run(sched, rx))
    }
}

/// Writes records in order; retries while the store is unreachable. A refused write means
/// this scheduler was deposed: it steps down.
async fn run(sched: Arc<Scheduler>, mut rx: UnboundedReceiver<(i64, Record)>) {
    let token = sched.shutdown_token();
    loop {
        let (term, record) = tokio::select! {
            _ = token.cancelled() => return,
            r = rx.recv() => match r { Some(r) => r, None => return },
        };
        let op = op(&sched.keys, &record);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        while sched.is_leader(term) {
            match sched
                .store
                .txn(fence(&sched.keys, term), vec![op.clone()])
                .await
            {
                Ok(r) if r.succeeded => break,
                Ok(_) => {
                    warn!("a write was refused: this scheduler no longer leads");
                    sched.step_down(term);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "recording in the metadata store failed; retrying");
                    if !backoff.wait(&token).await {
                        return;
                    }
                }
            }
        }
    }
}

/// One job as read back from the store.
#[derive(Debug, Default)]
struct Stored {
    record: Option<JobRecord>,
    outputs: BTreeMap<StageId, StageOutput>,
}

/// Reads every job recorded under `keys`, with the plans of the unfinished ones (decoded with
/// `ctx`). A job whose record or plans cannot be read is skipped with a warning.
pub async fn read_jobs(
    store: &dyn MetaStore,
    keys: &Keys,
    ctx: &TaskContext,
) -> Result<Vec<StoredJob>> {
    let (kvs, _) = store.range(&keys.jobs()).await?;
    let mut jobs: BTreeMap<String, Stored> = BTreeMap::new();
    for KeyValue { key, value, .. } in &kvs {
        let rest = &key[keys.jobs().len()..];
        let mut parts = rest.split('/');
        let (Some(id), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let entry = jobs.entry(id.to_string()).or_default();
        let read = |r: Result<()>| {
            if let Err(e) = r {
                warn!(%key, error = %e, "skipping an unreadable job record");
            }
        };
        match (kind, parts.next()) {
            ("job", None) => read(wire::decode_job(value).map(|r| entry.record = Some(r))),
            ("out", Some(stage)) => {
                if let Ok(stage) = stage.parse() {
                    read(wire::decode_stage_output(value).map(|o| {
                        entry.outputs.insert(stage, o);
                    }))
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
        match read_plans(store, keys, ctx, &record).await {
            Ok(plans) => out.push(StoredJob {
                record,
                plans,
                outputs: stored.outputs,
            }),
            Err(e) => warn!(job_id = %id, error = %e, "cannot restore job"),
        }
    }
    Ok(out)
}

async fn read_plans(
    store: &dyn MetaStore,
    keys: &Keys,
    ctx: &TaskContext,
    record: &JobRecord,
) -> Result<BTreeMap<StageId, Arc<dyn datafusion::physical_plan::ExecutionPlan>>> {
    let mut plans = BTreeMap::new();
    if record.state.is_terminal() {
        return Ok(plans);
    }
    for s in &record.stages {
        let key = keys.stage_plan(record.job_id.as_str(), s.stage_id);
        let bytes = get_chunked(store, &key, s.plan_chunks)
            .await?
            .ok_or_else(|| EmberError::Internal(format!("stage plan {key} is incomplete")))?;
        plans.insert(s.stage_id, ember_proto::decode_plan(&bytes, ctx)?);
    }
    Ok(plans)
}

/// The commits the last leader recorded.
pub async fn read_writes(store: &dyn MetaStore, keys: &Keys) -> Result<Vec<WriteRecord>> {
    let (kvs, _) = store.range(&keys.writes()).await?;
    let mut recorded = Vec::new();
    for kv in kvs {
        match wire::decode_write(&kv.value) {
            Ok(w) => recorded.push(w),
            Err(e) => warn!(key = %kv.key, error = %e, "skipping an unreadable write record"),
        }
    }
    Ok(recorded)
}
