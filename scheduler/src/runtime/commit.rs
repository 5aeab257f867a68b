//! Performing a write's commit (`Effect::Commit`) and staging cleanup
//! (`Effect::CleanStaging`): the object-store I/O of `crate::writes`, driven to an end the
//! driver is told about.
//!
//! A commit is recorded (`writes/{job}`, fenced) before anything moves; from then on it only
//! rolls forward: a step that fails for a reason that may pass (network, throttling) is retried
//! with backoff while this scheduler leads (the next leader redoes it from the record); one
//! that cannot succeed (permissions, unsupported store) fails the job.

use std::sync::Arc;
use std::time::Duration;

use ember_core::records::{WriteRecord, WriteSpec};
use ember_core::retry::Backoff;
use ember_core::{EmberError, JobId};
use tracing::{info, warn};

use super::{Scheduler, journal};
use crate::driver::Event;
use crate::writes::{SECOND_CLEANUP, commit_files, delete_files, delete_staging, target_files};

impl Scheduler {
    /// Commits a write job whose stages are all done (its record first, unless `recorded`).
    pub(super) async fn commit(
        self: Arc<Self>,
        fence: i64,
        job: JobId,
        spec: WriteSpec,
        dirs: Vec<String>,
        recorded: bool,
    ) {
        let runtime = self.ctx.runtime_env();
        // A write that replaces its target deletes what the target held when its commit was
        // recorded (listed now, or read back from the record by a new leader).
        let replaced = match (spec.replace, recorded) {
            (false, _) => Vec::new(),
            (true, false) => match target_files(&runtime, &spec).await {
                Ok(files) => files,
                Err(e) => {
                    warn!(job_id = %job, error = %e, "cannot list the target to replace");
                    if self.is_leader(fence) {
                        let error = format!("listing the target to replace: {e}");
                        self.dispatch(Event::CommitFailed { job, error });
                    }
                    return;
                }
            },
            (true, true) => match self.store.get(&self.keys.write(job.as_str())).await {
                Ok(Some(kv)) => ember_proto::records::decode_write(&kv.value)
                    .map(|r| r.replaced_files)
                    .unwrap_or_default(),
                _ => Vec::new(),
            },
        };
        if !recorded {
            let record = WriteRecord {
                job_id: job.clone(),
                spec: spec.clone(),
                staged_dirs: dirs.clone(),
                replaced_files: replaced.clone(),
            };
            let op = ember_core::meta::Op::put(
                self.keys.write(job.as_str()),
                ember_proto::records::encode_write(&record),
            );
            loop {
                let guard = journal::fence(&self.keys, fence);
                match self.store.txn(guard, vec![op.clone()]).await {
                    Ok(r) if r.succeeded => break,
                    Ok(_) => return, // no longer the leader: the next one commits
                    Err(e) => {
                        warn!(job_id = %job, error = %e, "cannot record the commit; retrying");
                        if !self.is_leader(fence) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        self.dispatch(Event::CommitStarted { job: job.clone() });
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let shutdown = self.shutdown_token();
        let moved = loop {
            let attempt = async {
                let moved = commit_files(&runtime, &spec, &dirs).await?;
                delete_files(&runtime, &spec, &replaced).await?;
                delete_staging(&runtime, &spec.staging_root).await?;
                Ok::<_, EmberError>(moved)
            }
            .await;
            match attempt {
                Ok(moved) => break moved,
                Err(e) if e.kind().is_retryable() => {
                    warn!(job_id = %job, error = %e, "commit step failed; retrying");
                    if !self.is_leader(fence) || !backoff.wait(&shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    warn!(job_id = %job, error = %e, "the commit cannot complete");
                    if self.is_leader(fence) {
                        let error = e.to_string();
                        self.dispatch(Event::CommitFailed { job, error });
                    }
                    return;
                }
            }
        };
        info!(job_id = %job, files = moved, "write committed");
        if self.is_leader(fence) {
            self.dispatch(Event::CommitFinished { job });
        }
    }

    /// Deletes a write's staging prefix, and again once tasks still being cancelled have
    /// stopped writing.
    pub(super) async fn clean_staging(self: Arc<Self>, staging_root: String) {
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
}
