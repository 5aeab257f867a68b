//! Batch jobs: a script of statements (DDL, queries, writes) the leader runs in order, each as
//! an ordinary job, whether or not the client that submitted it is still there.
//!
//! A script's record (`{root}/scripts/{id}`) holds its statements and how far it got: the
//! statements done, and the job of the one running. It is written before the submission is
//! acknowledged and after every step, under the leader's fence. A new leader picks every
//! unfinished script up where its record says: it waits for the recorded job when that job
//! was restored (it continues too), and runs the statement again otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ember_core::error::ErrorKind;
use ember_core::job::{JobState, JobStatus, ScriptStatus};
use ember_core::meta::Op;
use ember_core::records::{JobLabel, ScriptRecord};
use ember_core::shuffle::batches_from_ipc_stream;
use ember_core::{EmberError, JobId, Result};
use parking_lot::Mutex;
use tracing::{info, warn};

use super::unix_ms;
use super::{Query, Scheduler};
use crate::driver::JobEntry;

/// The scripts this scheduler runs (as leader), by id.
#[derive(Debug, Default)]
pub struct Scripts {
    records: Mutex<BTreeMap<String, ScriptRecord>>,
    /// Saves one at a time, each writing the record as it is then: a later save never writes
    /// an older state (a cancel is not undone by a step recorded concurrently).
    saving: tokio::sync::Mutex<()>,
}

impl Scripts {
    /// `Some(owner)` when `id` is a batch job.
    pub(super) fn owner_of(&self, id: &str) -> Option<Option<String>> {
        self.records.lock().get(id).map(|r| r.owner.clone())
    }

    /// `owner`'s batch jobs that have not ended.
    pub(super) fn in_flight_of(&self, owner: &str) -> usize {
        self.records
            .lock()
            .values()
            .filter(|r| !terminal(r.state) && r.owner.as_deref() == Some(owner))
            .count()
    }
}

fn terminal(state: JobState) -> bool {
    state.is_terminal()
}

/// Rows a finished statement returned, or wrote (DML answers with a `count` column).
fn statement_rows(status: &JobStatus) -> u64 {
    if !status.inline_result.is_empty() {
        return batches_from_ipc_stream(&status.inline_result)
            .map(|batches| batches.iter().map(|b| b.num_rows() as u64).sum())
            .unwrap_or(0);
    }
    status
        .result_partitions
        .iter()
        .flatten()
        .map(|l| l.rows)
        .sum()
}

impl Scheduler {
    /// Records a script and starts running it; returns its id.
    pub async fn submit_script(
        self: &Arc<Self>,
        name: String,
        statements: Vec<String>,
        settings: Vec<(String, String)>,
        owner: Option<String>,
    ) -> Result<JobId> {
        let _admitted = self.admit(owner.as_deref())?;
        let statements: Vec<String> = statements
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if statements.is_empty() {
            return Err(EmberError::User("the script holds no statement".into()));
        }
        let fence = self.fence().ok_or_else(super::not_leader)?;
        let id = JobId::new_random();
        let record = ScriptRecord {
            script_id: id.to_string(),
            name: if name.is_empty() {
                id.to_string()
            } else {
                name
            },
            statements,
            settings,
            state: JobState::Queued,
            statements_done: 0,
            current_job_id: String::new(),
            error: None,
            error_kind: None,
            submitted_unix_ms: unix_ms(),
            finished_unix_ms: 0,
            statement_rows: Vec::new(),
            stages_done_before: 0,
            tasks_done_before: 0,
            owner,
            resources_before: Default::default(),
        };
        if !self.persist_script(fence, &record).await? {
            return Err(super::not_leader());
        }
        info!(script_id = %id, name = %record.name, statements = record.statements.len(), "script submitted");
        self.scripts.records.lock().insert(id.to_string(), record);
        self.spawn(Arc::clone(self).run_script(fence, id.to_string()));
        Ok(id)
    }

    async fn persist_script(&self, fence: i64, record: &ScriptRecord) -> Result<bool> {
        let guard = super::journal::fence(&self.keys, fence);
        let op = Op::put(
            self.keys.script(&record.script_id),
            ember_proto::records::encode_script(record),
        );
        Ok(self.store.txn(guard, vec![op]).await?.succeeded)
    }

    /// Writes the script's record after a step; keeps trying while the store is unreachable
    /// (the step is not lost). `false` when leadership `fence` ended: the runner stops.
    async fn save_script(&self, fence: i64, id: &str) -> bool {
        let _one_at_a_time = self.scripts.saving.lock().await;
        loop {
            let Some(record) = self.scripts.records.lock().get(id).cloned() else {
                return false;
            };
            match self.persist_script(fence, &record).await {
                Ok(ok) => return ok,
                Err(e) => {
                    warn!(script_id = %id, error = %e, "cannot record the script's progress; retrying");
                    if !self.is_leader(fence) {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    fn update_script(&self, id: &str, f: impl FnOnce(&mut ScriptRecord)) {
        if let Some(record) = self.scripts.records.lock().get_mut(id) {
            f(record);
        }
    }

    /// Runs the script's statements from where its record says, one job after another.
    async fn run_script(self: Arc<Self>, fence: i64, id: String) {
        let shutdown = self.shutdown_token();
        loop {
            if !self.is_leader(fence) || shutdown.is_cancelled() {
                return;
            }
            let Some(record) = self.scripts.records.lock().get(&id).cloned() else {
                return;
            };
            if terminal(record.state) {
                return;
            }
            let next = record.statements_done as usize;
            if next >= record.statements.len() {
                self.end_script(fence, &id, JobState::Succeeded).await;
                return;
            }
            let job_id = match self.statement_job(fence, &id, &record).await {
                Ok(Some(job_id)) => job_id,
                Ok(None) => return,
                Err(e) => {
                    if !self.is_leader(fence) {
                        return;
                    }
                    self.fail_script(fence, &id, next, &e.to_string(), e.kind())
                        .await;
                    return;
                }
            };
            let status = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    status = self.job_status(&job_id, Duration::from_secs(10)) => match status {
                        Ok(s) if s.state.is_terminal() => break s,
                        Ok(_) => {}
                        // The job is gone: leadership moved (the next leader goes on).
                        Err(_) => return,
                    },
                }
                if !self.is_leader(fence) {
                    return;
                }
            };
            match status.state {
                JobState::Succeeded => {
                    let rows = statement_rows(&status);
                    let _ = self.release(&job_id);
                    self.update_script(&id, |r| {
                        r.statements_done += 1;
                        r.statement_rows.push(rows);
                        r.stages_done_before += status.stages_total;
                        r.tasks_done_before += status.tasks_total;
                        r.resources_before.add(&status.resources);
                        r.current_job_id.clear();
                    });
                    if !self.save_script(fence, &id).await {
                        return;
                    }
                }
                JobState::Cancelled => {
                    self.end_script(fence, &id, JobState::Cancelled).await;
                    return;
                }
                _ => {
                    let error = status.error.unwrap_or_else(|| "the job failed".into());
                    let kind = status.error_kind.unwrap_or(ErrorKind::Internal);
                    self.fail_script(fence, &id, next, &error, kind).await;
                    return;
                }
            }
        }
    }

    /// The job of the script's next statement: the recorded one when this leader knows it
    /// (restored after a failover), else a new submission whose id is recorded first, so that
    /// a leader taking over never submits the statement a second time. `None` when the script
    /// was cancelled meanwhile or leadership ended.
    async fn statement_job(
        self: &Arc<Self>,
        fence: i64,
        id: &str,
        record: &ScriptRecord,
    ) -> Result<Option<JobId>> {
        if !record.current_job_id.is_empty() {
            let recorded = JobId::from(record.current_job_id.clone());
            if self.job_status(&recorded, Duration::ZERO).await.is_ok() {
                return Ok(Some(recorded));
            }
        }
        let job_id = JobId::new_random();
        let mut cancelled = false;
        self.update_script(id, |r| {
            cancelled = terminal(r.state);
            if !cancelled {
                r.current_job_id = job_id.to_string();
                r.state = JobState::Running;
            }
        });
        if cancelled || !self.save_script(fence, id).await {
            return Ok(None);
        }
        let sql = record.statements[record.statements_done as usize].clone();
        let settings = record.settings.clone();
        let label = JobLabel::new(Some(id.to_string()), "").owned_by(record.owner.clone());
        let job_id = self
            .submit_as(job_id, Query::Sql(sql), settings, label)
            .await?;
        // A cancel that came while the statement was being planned found no job to cancel.
        let mut cancelled = false;
        self.update_script(id, |r| cancelled = terminal(r.state));
        if cancelled {
            let _ = self.cancel(&job_id);
        }
        Ok(Some(job_id))
    }

    /// Records that a script ended (succeeded, or cancelled while a statement ran).
    async fn end_script(&self, fence: i64, id: &str, state: JobState) {
        self.update_script(id, |r| {
            r.state = state;
            r.finished_unix_ms = unix_ms();
            if state == JobState::Cancelled {
                r.error_kind = Some(ErrorKind::Cancelled);
            }
        });
        self.save_script(fence, id).await;
        self.record_history(id);
        info!(script_id = %id, state = state.name(), "script ended");
    }

    async fn fail_script(
        &self,
        fence: i64,
        id: &str,
        statement: usize,
        error: &str,
        kind: ErrorKind,
    ) {
        self.update_script(id, |r| {
            r.state = JobState::Failed;
            r.error_kind = Some(kind);
            r.error = Some(format!("statement {} failed: {error}", statement + 1));
            r.finished_unix_ms = unix_ms();
        });
        self.save_script(fence, id).await;
        self.record_history(id);
        warn!(script_id = %id, statement = statement + 1, %error, "script failed");
    }

    /// Stops a script: its running statement's job is cancelled and no later one starts.
    /// `None` when no script has this id.
    pub fn cancel_script(&self, id: &str) -> Option<bool> {
        let (cancelled, job) = {
            let mut records = self.scripts.records.lock();
            let record = records.get_mut(id)?;
            if terminal(record.state) {
                (false, None)
            } else {
                record.state = JobState::Cancelled;
                record.error_kind = Some(ErrorKind::Cancelled);
                record.finished_unix_ms = unix_ms();
                (true, Some(record.current_job_id.clone()))
            }
        };
        if let Some(job) = job.filter(|j| !j.is_empty()) {
            let _ = self.cancel(&JobId::from(job));
        }
        if cancelled && let Some(fence) = self.fence() {
            let this = self.self_ref();
            let id = id.to_string();
            self.spawn(async move {
                if let Some(this) = this {
                    this.save_script(fence, &id).await;
                }
            });
        }
        Some(cancelled)
    }

    /// Scripts this leader knows (all of them, or the one with `id`), newest first.
    /// Ad-hoc queries (not statements of a script) are listed beside them, as one-statement
    /// jobs named by their SQL.
    pub async fn scripts(&self, id: Option<&str>) -> Result<Vec<ScriptStatus>> {
        let records: Vec<ScriptRecord> = {
            let records = self.scripts.records.lock();
            match id {
                Some(id) => records.get(id).cloned().into_iter().collect(),
                None => records.values().cloned().collect(),
            }
        };
        if let (Some(id), true) = (id, records.is_empty()) {
            if let Some(job) = self.adhoc_jobs(Some(id)).pop() {
                return Ok(vec![job]);
            }
            // Ended and expired: the history may still hold it.
            return match self.history_of(id).await? {
                Some(job) => Ok(vec![job]),
                None => Err(EmberError::JobNotFound {
                    job_id: id.to_string(),
                }),
            };
        }
        let now = unix_ms();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let current = if r.current_job_id.is_empty() {
                None
            } else {
                self.job_status(&JobId::from(r.current_job_id.clone()), Duration::ZERO)
                    .await
                    .ok()
            };
            let (stages, stages_done, tasks, tasks_done, used) = current
                .map(|s| {
                    (
                        s.stages_total,
                        s.stages_completed,
                        s.tasks_total,
                        s.tasks_completed,
                        s.resources,
                    )
                })
                .unwrap_or_default();
            let mut resources = r.resources_before;
            resources.add(&used);
            let end = if r.finished_unix_ms > 0 {
                r.finished_unix_ms
            } else {
                now
            };
            out.push(ScriptStatus {
                script_id: r.script_id,
                name: r.name,
                state: r.state,
                statements_total: r.statements.len() as u32,
                statements_done: r.statements_done,
                current_job_id: r.current_job_id,
                stages_total: r.stages_done_before + stages,
                stages_completed: r.stages_done_before + stages_done,
                tasks_total: r.tasks_done_before + tasks,
                tasks_completed: r.tasks_done_before + tasks_done,
                elapsed_ms: end.saturating_sub(r.submitted_unix_ms),
                error: r.error,
                error_kind: r.error_kind,
                submitted_unix_ms: r.submitted_unix_ms,
                statement_rows: r.statement_rows,
                owner: r.owner,
                resources,
            });
        }
        if id.is_none() {
            out.extend(self.adhoc_jobs(None));
            // Those that ended and expired, from the history (unreadable: listed without them).
            let history = self.history().await.unwrap_or_else(|e| {
                warn!(error = %e, "cannot read the history");
                Vec::new()
            });
            for job in history {
                if !out.iter().any(|s| s.script_id == job.script_id) {
                    out.push(job);
                }
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.submitted_unix_ms));
        Ok(out)
    }

    /// A batch job's statements, while its record is kept.
    pub fn script_statements(&self, id: &str) -> Option<Vec<String>> {
        self.scripts
            .records
            .lock()
            .get(id)
            .map(|r| r.statements.clone())
    }

    /// The jobs this leader knows that no script submitted (all, or the one with `id`).
    fn adhoc_jobs(&self, id: Option<&str>) -> Vec<ScriptStatus> {
        let now = unix_ms();
        self.read(|d| {
            d.jobs()
                .filter(|(job, _)| id.is_none_or(|id| job.as_str() == id))
                .filter_map(|(job, entry)| {
                    let (label, submitted) = match entry {
                        JobEntry::Distributed(j) => (&j.label, j.submitted_ms),
                        JobEntry::Inline(r) => {
                            (&r.label, r.finished_ms.saturating_sub(r.elapsed_ms))
                        }
                    };
                    if label.script.is_some() {
                        return None;
                    }
                    let status = d.status(job, now).ok()?;
                    let done = status.state == JobState::Succeeded;
                    Some(ScriptStatus {
                        script_id: job.to_string(),
                        name: label.description.clone(),
                        state: status.state,
                        statements_total: 1,
                        statements_done: u32::from(done),
                        current_job_id: job.to_string(),
                        stages_total: status.stages_total,
                        stages_completed: status.stages_completed,
                        tasks_total: status.tasks_total,
                        tasks_completed: status.tasks_completed,
                        elapsed_ms: status.elapsed_ms,
                        error: status.error.clone(),
                        error_kind: status.error_kind,
                        submitted_unix_ms: submitted,
                        statement_rows: if done {
                            vec![statement_rows(&status)]
                        } else {
                            Vec::new()
                        },
                        owner: label.owner.clone(),
                        resources: status.resources,
                    })
                })
                .collect()
        })
    }

    /// The recorded scripts (read before this scheduler takes requests).
    pub(crate) async fn recorded_scripts(&self) -> Result<BTreeMap<String, ScriptRecord>> {
        let (kvs, _) = self.store.range(&self.keys.scripts()).await?;
        let mut records = BTreeMap::new();
        for kv in kvs {
            match ember_proto::records::decode_script(&kv.value) {
                Ok(r) => {
                    records.insert(r.script_id.clone(), r);
                }
                Err(e) => warn!(key = %kv.key, error = %e, "skipping an unreadable script record"),
            }
        }
        Ok(records)
    }

    /// As a new leader, before taking requests: knows the recorded scripts.
    pub(crate) fn load_scripts(&self, records: BTreeMap<String, ScriptRecord>) {
        *self.scripts.records.lock() = records;
    }

    /// As a new leader: continues every unfinished script.
    pub(crate) fn resume_scripts(self: &Arc<Self>, fence: i64) {
        let unfinished: Vec<String> = self
            .scripts
            .records
            .lock()
            .values()
            .filter(|r| !terminal(r.state))
            .map(|r| r.script_id.clone())
            .collect();
        if !unfinished.is_empty() {
            info!(
                scripts = unfinished.len(),
                "continuing the recorded scripts"
            );
        }
        for id in unfinished {
            self.spawn(Arc::clone(self).run_script(fence, id));
        }
    }

    /// Forgets scripts finished longer than `ttl_ms` ago, here and in the store.
    pub(crate) fn expire_scripts(&self, ttl_ms: u64) {
        let now = unix_ms();
        let expired: Vec<String> = {
            let mut records = self.scripts.records.lock();
            let ids: Vec<String> = records
                .values()
                .filter(|r| {
                    r.finished_unix_ms > 0 && now.saturating_sub(r.finished_unix_ms) > ttl_ms
                })
                .map(|r| r.script_id.clone())
                .collect();
            for id in &ids {
                records.remove(id);
            }
            ids
        };
        let Some(fence) = self.fence() else {
            return;
        };
        if expired.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        let keys = self.keys.clone();
        self.spawn(async move {
            let guard = super::journal::fence(&keys, fence);
            let ops = expired
                .iter()
                .map(|id| Op::Delete(keys.script(id)))
                .collect();
            if let Err(e) = store.txn(guard, ops).await {
                warn!(error = %e, "cannot delete expired script records");
            }
        });
    }
}
