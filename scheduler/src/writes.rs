//! Writes (`COPY ... TO`, `INSERT INTO`): planned as parallel staged writes, committed by the
//! leader when the job succeeds, cleaned up when it does not.
//!
//! Object stores have no atomic rename of a directory (S3 renames by copy and delete), so a
//! write is made visible by a commit the leader drives and can redo:
//!
//! 1. Each task attempt writes its files under `{target}/_ember_staging/{job}/{p}-{attempt}/`
//!    (for a single-file target: beside it). Readers of the target never list them: DataFusion
//!    skips sub-directories that are not `key=value` partitions, as Hive and Spark do.
//! 2. When every stage is done, the leader records `writes/{job}` (the staging directories of
//!    the attempts that succeeded) under its fence, moves each file to the same relative path
//!    under the target (a file already moved is skipped, so the move can be redone), writes
//!    the marker `_ember_commits/{job}` in the target last, deletes the staging prefix, and only then records the job
//!    as succeeded and drops `writes/{job}` in the same journal. Clients see the job succeed
//!    after that.
//! 3. A job that fails or is cancelled gets its staging prefix deleted (twice: once at once,
//!    once after tasks still being cancelled have stopped writing).
//! 4. A new leader redoes every recorded commit and cleanup, commits restored write jobs whose
//!    stages are all done, and cleans up restored ones that ended otherwise.

use std::sync::Arc;
use std::time::Duration;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::expressions::col;
use ember_core::write::{StagedWriteExec, file_sink_config};
use ember_core::{EmberError, JobId, Result};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{info, warn};

use crate::state::WriteSpec;

/// Name of the staging folder inside (or beside) a write's target.
pub const STAGING_DIR: &str = "_ember_staging";

/// Name of the folder inside (or beside) a write's target holding one marker per commit,
/// written when the commit is complete.
pub const COMMITS_DIR: &str = "_ember_commits";

fn parent_of(url: &str) -> String {
    url.rsplit_once('/')
        .map_or(url, |(parent, _)| parent)
        .to_string()
        + "/"
}

/// The job a write belongs to (the last segment of its staging root).
fn job_id_of(spec: &WriteSpec) -> String {
    spec.staging_root
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("write")
        .to_string()
}

/// What `plan_write` found: the plan to run and the write to commit.
pub struct PlannedWrite {
    pub plan: Arc<dyn ExecutionPlan>,
    pub target: String,
    pub staging_root: String,
    pub single_file: Option<String>,
}

/// If `plan` writes files (its root a Parquet, CSV or JSON `DataSinkExec`), rewrites it into a
/// staged write: every input partition writes in its own task, and the root sums their
/// counts. `None` for any other plan.
pub fn plan_write(job_id: &JobId, plan: &Arc<dyn ExecutionPlan>) -> Result<Option<PlannedWrite>> {
    let Some(sink) = plan.downcast_ref::<DataSinkExec>() else {
        return Ok(None);
    };
    let Some(config) = file_sink_config(sink.sink()) else {
        return Ok(None);
    };
    if config.insert_op != datafusion::logical_expr::dml::InsertOp::Append {
        return Err(EmberError::User(format!(
            "{} is not supported: Ember appends to tables (INSERT INTO) and writes new \
             folders (COPY ... TO)",
            config.insert_op
        )));
    }
    let target_url = config
        .table_paths
        .first()
        .ok_or_else(|| EmberError::Internal("a file sink without a path".into()))?;
    let target = target_url.as_str().to_string();
    let single = config.file_output_mode.single_file_output(target_url);
    let (staging_root, single_file) = if single {
        let (parent, name) = target
            .rsplit_once('/')
            .ok_or_else(|| EmberError::User(format!("cannot write to {target}")))?;
        (
            format!("{parent}/{STAGING_DIR}/{job_id}"),
            Some(name.to_string()),
        )
    } else {
        (
            format!("{}/{STAGING_DIR}/{job_id}", target.trim_end_matches('/')),
            None,
        )
    };
    // Every input partition writes in parallel, unless the output is one file or ordered.
    let input = sink.input();
    let parallel_input = match input.downcast_ref::<CoalescePartitionsExec>() {
        Some(coalesce) if !single && sink.sort_order().is_none() => Arc::clone(coalesce.input()),
        _ => Arc::clone(input),
    };
    let sink_plan = crate::planner::with_children(Arc::clone(plan), vec![parallel_input])?;
    let staged: Arc<dyn ExecutionPlan> = Arc::new(StagedWriteExec::try_new(
        sink_plan,
        staging_root.clone(),
        single_file.clone(),
    )?);
    let plan = if staged.output_partitioning().partition_count() == 1 {
        staged
    } else {
        let schema = staged.schema();
        let sum = AggregateExprBuilder::new(sum_udaf(), vec![col("count", &schema)?])
            .schema(Arc::clone(&schema))
            .alias("count")
            .build()?;
        let merged: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(staged));
        Arc::new(AggregateExec::try_new(
            AggregateMode::Single,
            PhysicalGroupBy::new_single(vec![]),
            vec![Arc::new(sum)],
            vec![None],
            merged,
            schema,
        )?)
    };
    Ok(Some(PlannedWrite {
        plan,
        target,
        staging_root,
        single_file,
    }))
}

/// The store and the path within it of `url`.
fn locate(runtime: &RuntimeEnv, url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let url = ListingTableUrl::parse(url)?;
    let store = runtime.object_store(url.object_store())?;
    Ok((store, url.prefix().clone()))
}

fn store_err(e: object_store::Error) -> EmberError {
    EmberError::Unavailable(format!("object store: {e}"))
}

/// Moves the files of `dirs` (staging directories) into the write's target, then writes the
/// marker `_ember_commits/{job}`. Redoable: files already moved are skipped. Returns the files moved.
pub async fn commit_files(
    runtime: &RuntimeEnv,
    spec: &WriteSpec,
    dirs: &[String],
) -> Result<usize> {
    let (store, target) = locate(runtime, &spec.target)?;
    let mut moved = 0;
    for dir in dirs {
        let (_, dir_path) = locate(runtime, dir)?;
        let files: Vec<_> = store
            .list(Some(&dir_path))
            .try_collect()
            .await
            .map_err(store_err)?;
        tracing::debug!(%dir, files = files.len(), "committing a task's files");
        for file in files {
            let dest = match &spec.single_file {
                Some(_) => target.clone(),
                None => {
                    let Some(parts) = file.location.prefix_match(&dir_path) else {
                        continue;
                    };
                    parts.fold(target.clone(), |path, part| path.join(part))
                }
            };
            match store.rename(&file.location, &dest).await {
                Ok(()) => moved += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
    }
    // The marker, last: in a folder, so that readers listing the target (and inferring its
    // partitions) never take it for data.
    let marker_dir = match &spec.single_file {
        Some(_) => locate(runtime, &parent_of(&spec.target))?.1,
        None => target.clone(),
    };
    let marker = marker_dir.join(COMMITS_DIR).join(job_id_of(spec));
    store
        .put(&marker, format!("committed {moved} files\n").into())
        .await
        .map_err(store_err)?;
    Ok(moved)
}

/// Deletes everything under a write's staging prefix (redoable).
pub async fn delete_staging(runtime: &RuntimeEnv, staging_root: &str) -> Result<()> {
    let (store, prefix) = locate(runtime, &format!("{}/", staging_root.trim_end_matches('/')))?;
    let files: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(store_err)?;
    for file in files {
        match store.delete(&file.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
    }
    // Local folders outlive their files: remove the (now empty) staging folders too.
    if let Ok(url) = url::Url::parse(staging_root)
        && url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        let _ = std::fs::remove_dir_all(&path);
        if let Some(parent) = path.parent()
            && parent.file_name().is_some_and(|n| n == STAGING_DIR)
        {
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(())
}

/// How long after a failed or cancelled write the staging prefix is deleted a second time,
/// once tasks still being cancelled have stopped writing.
pub const SECOND_CLEANUP: Duration = Duration::from_secs(5);

/// Whether `plan` holds the staged write (the stage whose tasks write files).
pub fn contains_staged_write(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<StagedWriteExec>().is_some()
        || plan.children().into_iter().any(contains_staged_write)
}

/// Forgets that a commit runs, however its task ends.
struct CommitGuard<'a>(&'a crate::scheduler::Scheduler, JobId);

impl Drop for CommitGuard<'_> {
    fn drop(&mut self) {
        self.0.committing.lock().remove(&self.1);
    }
}

impl crate::scheduler::Scheduler {
    /// Commits the write of a job whose stages are all done.
    pub(crate) async fn commit_write(self: Arc<Self>, job_id: JobId) {
        let Some(fence) = self.fence() else { return };
        let found = {
            let inner = self.inner.lock();
            match inner.jobs.get(&job_id) {
                Some(crate::scheduler::JobEntry::Distributed(job)) if !job.committed => {
                    job.write.clone().zip(job.staged_dirs())
                }
                _ => None,
            }
        };
        let Some((spec, dirs)) = found else { return };
        self.finish_commit(fence, job_id, spec, dirs).await;
    }

    /// Records the commit of `dirs`, moves their files into the target, and records the job as
    /// succeeded. Rolls forward only (retried while this scheduler leads; the next leader redoes
    /// it from its record).
    pub(crate) async fn finish_commit(
        &self,
        fence: i64,
        job_id: JobId,
        spec: WriteSpec,
        dirs: Vec<String>,
    ) {
        if !self.committing.lock().insert(job_id.clone()) {
            return;
        }
        let _done = CommitGuard(self, job_id.clone());
        let record = ember_proto::pb::WriteRecord {
            job_id: job_id.to_string(),
            spec: Some(crate::durable::write_spec_to_proto(&spec)),
            staged_dirs: dirs.clone(),
            abort: false,
        };
        let op = ember_core::meta::Op::put(
            self.keys.write(job_id.as_str()),
            prost::Message::encode_to_vec(&record),
        );
        loop {
            let guard = crate::durable::fence(&self.keys, fence);
            match self.store.txn(guard, vec![op.clone()]).await {
                Ok(r) if r.succeeded => break,
                Ok(_) => return, // no longer the leader: the next one commits
                Err(e) => {
                    warn!(job_id = %job_id, error = %e, "cannot record the commit; retrying");
                    if !self.is_leader(fence) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        // The job is past cancelling from here on, and does not expire while it commits.
        self.commit_started(&job_id);
        // Once recorded, a commit only rolls forward: some files may already be in the target,
        // so it is retried (here, or by the next leader) until it completes.
        let runtime = self.ctx.runtime_env();
        let mut pause = Duration::from_millis(200);
        let moved = loop {
            let attempt = async {
                let moved = commit_files(&runtime, &spec, &dirs).await?;
                delete_staging(&runtime, &spec.staging_root).await?;
                Ok::<_, EmberError>(moved)
            }
            .await;
            match attempt {
                Ok(moved) => break moved,
                Err(e) => {
                    warn!(job_id = %job_id, error = %e, "commit step failed; retrying");
                    if !self.is_leader(fence) {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        };
        info!(job_id = %job_id, files = moved, "write committed");
        if !self.is_leader(fence) {
            return;
        }
        let mut effects = crate::scheduler::Effects::default();
        {
            let mut inner = self.inner.lock();
            if let Some(crate::scheduler::JobEntry::Distributed(job)) = inner.jobs.get_mut(&job_id)
            {
                job.committed = true;
                job.state = ember_core::job::JobState::Succeeded;
                job.finished_ms = Some(self.now_ms());
                effects.records.push(crate::durable::Record::job(job));
            }
        }
        effects
            .records
            .push(crate::durable::Record::WriteDone(job_id.clone()));
        // Attempts launched by an earlier leader may still be writing: delete again later.
        effects.cleanups.push(spec.staging_root.clone());
        self.apply(effects);
        self.notify();
    }

    /// Deletes a failed or cancelled write's staging prefix, again once tasks still being
    /// cancelled have stopped.
    pub(crate) async fn clean_write(self: Arc<Self>, staging_root: String) {
        let runtime = self.ctx.runtime_env();
        for pass in 0..2 {
            if pass > 0 {
                tokio::time::sleep(SECOND_CLEANUP).await;
            }
            if let Err(e) = delete_staging(&runtime, &staging_root).await {
                warn!(%staging_root, error = %e, "cannot delete a write's staging files");
            }
        }
    }

    /// The commits the last leader recorded (read before this scheduler takes requests).
    pub(crate) async fn recorded_writes(&self) -> Result<Vec<RecordedWrite>> {
        let (kvs, _) = self.store.range(&self.keys.writes()).await?;
        let mut recorded = Vec::new();
        for kv in kvs {
            let Ok(record) =
                <ember_proto::pb::WriteRecord as prost::Message>::decode(&kv.value[..])
            else {
                warn!(key = %kv.key, "skipping an unreadable write record");
                continue;
            };
            let Some(spec) = record.spec.map(crate::durable::write_spec_from_proto) else {
                continue;
            };
            recorded.push(RecordedWrite {
                job_id: JobId::from(record.job_id),
                spec,
                dirs: record.staged_dirs,
            });
        }
        Ok(recorded)
    }

    /// As a new leader: finishes the commits the last leader recorded (their jobs were marked
    /// as committing before this scheduler took requests), commits restored write jobs whose
    /// stages are all done, and cleans up those that ended otherwise.
    pub(crate) fn resume_writes(self: &Arc<Self>, fence: i64, recorded: Vec<RecordedWrite>) {
        let recorded_ids: std::collections::HashSet<JobId> =
            recorded.iter().map(|w| w.job_id.clone()).collect();
        for write in recorded {
            info!(job_id = %write.job_id, "finishing the commit of a write");
            let this = Arc::clone(self);
            self.spawn(async move {
                this.finish_commit(fence, write.job_id, write.spec, write.dirs)
                    .await
            });
        }
        let (commits, cleanups): (Vec<JobId>, Vec<String>) = {
            let inner = self.inner.lock();
            let mut commits = Vec::new();
            let mut cleanups = Vec::new();
            for (id, entry) in &inner.jobs {
                let crate::scheduler::JobEntry::Distributed(job) = entry else {
                    continue;
                };
                let Some(write) = &job.write else { continue };
                if recorded_ids.contains(id) || job.committed {
                    continue;
                }
                match job.state {
                    ember_core::job::JobState::Succeeded => commits.push(id.clone()),
                    s if s.is_terminal() => cleanups.push(write.staging_root.clone()),
                    _ => {}
                }
            }
            (commits, cleanups)
        };
        for job_id in commits {
            self.spawn(Arc::clone(self).commit_write(job_id));
        }
        for root in cleanups {
            self.spawn(Arc::clone(self).clean_write(root));
        }
    }
}

/// A commit recorded in `writes/{job}`: what the next leader finishes.
pub(crate) struct RecordedWrite {
    pub(crate) job_id: JobId,
    spec: WriteSpec,
    dirs: Vec<String>,
}

impl crate::scheduler::Scheduler {
    /// A write job whose commit starts: it counts as done for the state machine (no tasks run,
    /// it cannot be cancelled or failed) but not yet for clients, and does not expire.
    pub(crate) fn commit_started(&self, job_id: &JobId) {
        let mut effects = crate::scheduler::Effects::default();
        {
            let mut inner = self.inner.lock();
            inner.active.retain(|j| j != job_id);
            let running = match inner.jobs.get_mut(job_id) {
                Some(crate::scheduler::JobEntry::Distributed(job)) => job.commit_started(),
                _ => Vec::new(),
            };
            for (executor, _) in &running {
                inner.cluster.release_slot(executor);
            }
            effects.cancels = running;
        }
        self.apply(effects);
    }
}
