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

use ember_core::records::WriteSpec;

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

use ember_core::object_stores::store_error as store_err;

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

/// The files a write's target holds now, which a replacing write deletes once its own are in:
/// every file under a directory target but Ember's own (`_ember_staging`, `_ember_commits`)
/// and hidden ones, or the single file.
pub async fn target_files(runtime: &RuntimeEnv, spec: &WriteSpec) -> Result<Vec<String>> {
    let (store, target) = locate(runtime, &spec.target)?;
    if spec.single_file.is_some() {
        return match store.head(&target).await {
            Ok(_) => Ok(vec![target.to_string()]),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(store_err(e)),
        };
    }
    let files: Vec<_> = store
        .list(Some(&target))
        .try_collect()
        .await
        .map_err(store_err)?;
    Ok(files
        .into_iter()
        .filter(|f| {
            f.location
                .prefix_match(&target)
                .is_some_and(|mut parts| !parts.any(|p| p.as_ref().starts_with(['_', '.'])))
        })
        .map(|f| f.location.to_string())
        .collect())
}

/// Deletes the files a replacing write's commit recorded (redoable: gone ones are skipped).
pub async fn delete_files(runtime: &RuntimeEnv, spec: &WriteSpec, files: &[String]) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let (store, _) = locate(runtime, &spec.target)?;
    for file in files {
        match store.delete(&Path::from(file.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
    }
    // Local folders outlive their files: remove those left empty (old partitions), so that
    // readers inferring partitions from folder names do not find them.
    if let Ok(url) = url::Url::parse(&spec.target)
        && url.scheme() == "file"
        && let Ok(target) = url.to_file_path()
    {
        for file in files {
            let mut dir = std::path::Path::new("/")
                .join(file)
                .parent()
                .map(|d| d.to_path_buf());
            while let Some(d) = dir {
                if !d.starts_with(&target) || d == target || std::fs::remove_dir(&d).is_err() {
                    break;
                }
                dir = d.parent().map(|p| p.to_path_buf());
            }
        }
    }
    Ok(())
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
