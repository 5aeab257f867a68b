//! The scheduler's decisions, as one pure state machine: [`Driver::handle`] takes an [`Event`]
//! (a job submitted, tasks reported, an executor joined or lost, leadership gained or lost, a
//! cancel, a timer tick) with the current time, and returns the [`Effect`]s the runtime must
//! perform (launch tasks, cancel them, record a fact, release shuffle data, commit a write).
//!
//! Nothing here does I/O, awaits, spawns or reads a clock: tests drive it with plain values
//! (`driver/tests.rs`, and a seeded random interleaving in `driver/simulation.rs`). The runtime
//! (`crate::runtime`) is the only caller, and the only writer of job state.

pub mod analyze;
mod events;
pub mod job;
mod job_records;
#[cfg(test)]
mod job_tests;
pub mod placement;
mod recovery;
#[cfg(test)]
mod simulation;
pub mod stats;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use ember_core::error::ErrorKind;
use ember_core::job::{
    ExecutorInfo, ExecutorSpec, JobState, JobStatus, TaskDefinition, TaskOutcome, TaskStatus,
};
use ember_core::records::{Record, WriteRecord};
use ember_core::{EmberError, ExecutorId, JobId, Result, TaskId};

pub use events::{Effect, Event, InlineResult, JobEntry, StageEncoder, StoredJob};
pub use job::{Job, JobEvent, JobOptions, StageState, TaskState};
pub use placement::{Cluster, Launch, SchedulingPolicy};

/// The driver's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// An executor that registered over gRPC and is not heard from for this long is lost; with
    /// no executor at all for this long, waiting jobs fail.
    pub executor_timeout_ms: u64,
    /// How long a finished job's status and result stay available.
    pub result_ttl_ms: u64,
    pub policy: SchedulingPolicy,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            executor_timeout_ms: 15_000,
            result_ttl_ms: 600_000,
            policy: SchedulingPolicy::Fair,
        }
    }
}

/// The scheduler's state: jobs, executors and slots, leadership. See the module docs.
pub struct Driver {
    config: DriverConfig,
    encoder: Arc<dyn StageEncoder>,
    jobs: BTreeMap<JobId, JobEntry>,
    /// Distributed jobs not yet finished, in submission order.
    active: Vec<JobId>,
    cluster: Cluster,
    /// Since when jobs have been waiting with no executor registered at all.
    no_executors_since: Option<u64>,
    /// The leadership this driver acts under; `None` while it does not lead.
    fence: Option<i64>,
    /// Write jobs whose commit runs.
    committing: BTreeSet<JobId>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("jobs", &self.jobs.len())
            .field("active", &self.active)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// Effects collected while handling one event.
type Out = Vec<Effect>;

impl Driver {
    pub fn new(config: DriverConfig, encoder: Arc<dyn StageEncoder>) -> Self {
        Driver {
            config,
            encoder,
            jobs: BTreeMap::new(),
            active: Vec::new(),
            cluster: Cluster::default(),
            no_executors_since: None,
            fence: None,
            committing: BTreeSet::new(),
        }
    }

    /// Applies one event at time `now` (Unix milliseconds); returns what to do.
    pub fn handle(&mut self, event: Event, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::JobSubmitted { job } => self.job_submitted(*job, now, &mut out),
            Event::InlineFinished { job, result } => {
                self.jobs.insert(job, JobEntry::Inline(result));
            }
            Event::TaskReports(reports) => {
                for report in reports {
                    self.task_report(&report, now, &mut out);
                }
            }
            Event::LaunchFailed { executor, tasks } => {
                self.cluster.suspend(&executor);
                for task in &tasks {
                    if let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(&task.job_id) {
                        job.launch_failed(task);
                    }
                    self.cluster.release_slot(&executor);
                }
            }
            Event::ExecutorRegistered { spec } => {
                if self.cluster.contains(&spec.id) {
                    // A re-registration means the executor restarted: what it held is gone.
                    self.lose_executor(&spec.id, now, &mut out);
                }
                self.cluster.register(spec, now);
            }
            Event::Heartbeat {
                executor,
                metrics,
                draining,
            } => {
                if draining {
                    self.cluster.set_draining(&executor, true);
                }
                self.cluster.heartbeat(&executor, metrics, now);
            }
            Event::ExecutorLeased { spec, draining } => {
                self.executor_seen(spec, draining, now, &mut out)
            }
            Event::ExecutorLeaseExpired { executor } => {
                if self.cluster.remove(&executor) {
                    self.lose_executor(&executor, now, &mut out);
                }
            }
            Event::ExecutorsListed { executors } => {
                let listed: std::collections::HashSet<&ExecutorId> =
                    executors.iter().map(|(s, _)| &s.id).collect();
                for id in self.cluster.ids() {
                    if !listed.contains(&id) {
                        self.cluster.remove(&id);
                        self.lose_executor(&id, now, &mut out);
                    }
                }
                for (spec, draining) in executors {
                    self.executor_seen(spec, draining, now, &mut out);
                }
            }
            Event::LeadershipGained {
                fence,
                jobs,
                writes,
            } => self.leadership_gained(fence, jobs, writes, now, &mut out),
            Event::LeadershipLost { fence } => {
                if self.fence == Some(fence) {
                    self.fence = None;
                    self.jobs.retain(|_, e| matches!(e, JobEntry::Inline(_)));
                    self.active.clear();
                    self.committing.clear();
                    self.cluster.reset_slots();
                }
            }
            Event::Cancel { job } => self.cancel(&job, now, &mut out),
            Event::Release { job } => {
                if self.jobs.contains_key(&job) {
                    out.push(self.remove_data(&job));
                }
            }
            Event::CommitStarted { job } => self.commit_started(&job, &mut out),
            Event::CommitFinished { job } => self.commit_finished(&job, now, &mut out),
            Event::CommitFailed { job, error } => self.commit_failed(&job, error, now, &mut out),
            Event::Tick => self.tick(now, &mut out),
        }
        self.assign(now, &mut out);
        out
    }

    // ---- what the runtime reads -----------------------------------------------------------

    /// The leadership this driver acts under.
    pub fn fence(&self) -> Option<i64> {
        self.fence
    }

    pub fn job(&self, id: &JobId) -> Option<&JobEntry> {
        self.jobs.get(id)
    }

    pub fn jobs(&self) -> impl Iterator<Item = (&JobId, &JobEntry)> {
        self.jobs.iter()
    }

    pub fn executor_known(&self, id: &ExecutorId) -> bool {
        self.cluster.contains(id)
    }

    pub fn executor_ids(&self) -> Vec<ExecutorId> {
        self.cluster.ids()
    }

    pub fn executors(&self) -> Vec<ExecutorInfo> {
        self.cluster.infos()
    }

    pub fn total_slots(&self) -> u32 {
        self.cluster.total_slots()
    }

    pub fn free_slots(&self) -> u32 {
        self.cluster.free_slots()
    }

    /// A job's status as clients see it, at time `now`.
    pub fn status(&self, id: &JobId, now: u64) -> Result<JobStatus> {
        let entry = self.jobs.get(id).ok_or_else(|| EmberError::JobNotFound {
            job_id: id.to_string(),
        })?;
        Ok(match entry {
            JobEntry::Inline(j) => JobStatus {
                job_id: id.clone(),
                state: JobState::Succeeded,
                error: None,
                error_kind: None,
                stages_total: 0,
                stages_completed: 0,
                tasks_total: 0,
                tasks_completed: 0,
                elapsed_ms: j.elapsed_ms,
                result_schema: j.schema.clone(),
                result_partitions: Vec::new(),
                inline_result: j.result.clone(),
                shuffle_bytes: 0,
                resources: ember_core::task_metrics::JobResources {
                    wall_ms: j.elapsed_ms,
                    ..Default::default()
                },
                stages: Vec::new(),
            },
            JobEntry::Distributed(job) => {
                let state = job.visible_state();
                JobStatus {
                    job_id: id.clone(),
                    state,
                    error: job.error.clone(),
                    error_kind: job.error_kind,
                    stages_total: job.stages.len() as u32,
                    stages_completed: job.stages_completed(),
                    tasks_total: job.tasks_total(),
                    tasks_completed: job.tasks_completed(),
                    elapsed_ms: job
                        .finished_ms
                        .unwrap_or(now)
                        .saturating_sub(job.submitted_ms),
                    result_schema: ember_core::shuffle::schema_to_bytes(&job.schema),
                    result_partitions: if state == JobState::Succeeded && !job.analyze {
                        job.output_locations(job.final_stage).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    inline_result: if state == JobState::Succeeded && job.analyze {
                        analyze::report(job)?
                    } else {
                        Bytes::new()
                    },
                    shuffle_bytes: job.shuffle_bytes(),
                    resources: job.resources(now),
                    stages: job.stage_statuses(),
                }
            }
        })
    }

    // ---- jobs -----------------------------------------------------------------------------

    fn job_submitted(&mut self, mut job: Job, now: u64, out: &mut Out) {
        let Some(fence) = self.fence else {
            return;
        };
        job.attempt_base = attempt_base(fence);
        let id = job.id.clone();
        self.jobs
            .insert(id.clone(), JobEntry::Distributed(Box::new(job)));
        self.active.push(id.clone());
        self.advance(&id, now, out);
    }

    fn task_report(&mut self, report: &TaskStatus, now: u64, out: &mut Out) {
        let job_id = &report.task_id.job_id;
        // A lost executor (its lease expired) cannot serve its output: ignore its reports.
        let Some(address) = self
            .cluster
            .get(&report.executor_id)
            .map(|s| s.address.clone())
        else {
            return;
        };
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(event) = job.task_finished(report, &address, now) else {
            return;
        };
        self.cluster.release_slot(&report.executor_id);
        if let TaskOutcome::FetchFailed { executor_id, .. } = &report.outcome {
            tracing::warn!(job_id = %job_id, task = %report.task_id, from = %executor_id, "fetch failed; recomputing the lost output");
        }
        self.on_job_event(job_id, event, now, out);
    }

    /// Acts on what a job's state machine decided.
    fn on_job_event(&mut self, job_id: &JobId, event: JobEvent, now: u64, out: &mut Out) {
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        stop_tasks(&mut self.cluster, job.take_cancels(), out);
        let completed = match event {
            JobEvent::StageCompleted(stage) => Some(stage),
            JobEvent::Succeeded => Some(job.final_stage),
            _ => None,
        };
        if let (Some(stage), Some(fence)) = (completed, self.fence)
            && let Some(output) = job.stage_output(stage)
        {
            let record = Record::StageOutput(job.id.clone(), stage, output);
            out.push(Effect::Persist { fence, record });
        }
        match event {
            JobEvent::None | JobEvent::Retry => {}
            JobEvent::StageCompleted(_) | JobEvent::Recompute => self.advance(job_id, now, out),
            JobEvent::Succeeded | JobEvent::Failed(_) => self.job_ended(job_id, now, out),
        }
    }

    /// Starts the job's stages whose inputs are complete, with their resolved plans; ends the
    /// job when that finished it.
    fn advance(&mut self, job_id: &JobId, now: u64, out: &mut Out) {
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        for stage_id in job.start_ready_stages() {
            let stage = &job.stages[&stage_id];
            match self
                .encoder
                .encode(&stage.plan, &|s| job.output_locations(s))
            {
                Ok(bytes) => job.set_launch_plan(stage_id, bytes),
                Err(e) => {
                    let message = format!("cannot start stage {stage_id}: {e}");
                    job.fail(message, e.kind(), now);
                    break;
                }
            }
        }
        if job.state.is_terminal() {
            job.finished_ms.get_or_insert(now);
            self.job_ended(job_id, now, out);
        }
    }

    /// A job reached a terminal state: records it, frees what it held. A write job whose
    /// stages all succeeded is committed first (it ends for clients when the commit is done);
    /// one that ended otherwise has its staging files deleted.
    fn job_ended(&mut self, job_id: &JobId, now: u64, out: &mut Out) {
        self.active.retain(|j| j != job_id);
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        stop_tasks(&mut self.cluster, job.stop_running(), out);
        if job.write.is_some() && job.state == JobState::Succeeded && job.staged_dirs().is_none() {
            // Restored with outputs of the write stage unrecorded: which attempt's files to
            // commit is unknown, so nothing is committed and the job fails clearly.
            job.state = JobState::Failed;
            job.error = Some("the write's staged files are not all known after a failover; nothing was committed, run it again".into());
            job.error_kind = Some(ErrorKind::Unavailable);
        }
        match (&job.write, job.state) {
            (Some(spec), JobState::Succeeded) if !job.committed => {
                let dirs = job.staged_dirs().unwrap_or_default();
                if !self.committing.insert(job_id.clone()) {
                    return;
                }
                out.push(Effect::Commit {
                    job: job_id.clone(),
                    spec: spec.clone(),
                    dirs,
                    recorded: false,
                });
                return;
            }
            (Some(spec), state) if state != JobState::Succeeded => out.push(Effect::CleanStaging {
                staging_root: spec.staging_root.clone(),
            }),
            _ => {}
        }
        job.finished_ms.get_or_insert(now);
        let ended = Effect::JobEnded {
            job: job_id.clone(),
            state: job.state,
            error: job.error.clone(),
        };
        if let Some(fence) = self.fence {
            let record = Record::Job(Box::new(job.record()));
            out.push(Effect::Persist { fence, record });
        }
        // Nobody reads an EXPLAIN ANALYZE job's rows: its answer is its report.
        if job.state != JobState::Succeeded || job.analyze {
            out.push(self.remove_data(job_id));
        }
        out.push(ended);
    }

    fn cancel(&mut self, job_id: &JobId, now: u64, out: &mut Out) {
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        if job.state.is_terminal() {
            return;
        }
        job.cancel(now);
        self.job_ended(job_id, now, out);
    }

    fn remove_data(&self, job: &JobId) -> Effect {
        Effect::RemoveData {
            job: job.clone(),
            addresses: self.cluster.addresses(),
        }
    }

    // ---- writes ---------------------------------------------------------------------------

    /// The commit is recorded: the job runs no task, cannot be cancelled and does not expire.
    fn commit_started(&mut self, job_id: &JobId, out: &mut Out) {
        self.active.retain(|j| j != job_id);
        if let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) {
            stop_tasks(&mut self.cluster, job.commit_started(), out);
        }
    }

    fn commit_finished(&mut self, job_id: &JobId, now: u64, out: &mut Out) {
        if !self.committing.remove(job_id) {
            return;
        }
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        job.committed = true;
        job.state = JobState::Succeeded;
        job.finished_ms = Some(now);
        self.write_ended(job_id, out);
    }

    /// A commit that cannot complete fails its job; whatever it moved stays, named in the
    /// error (a commit only rolls forward).
    fn commit_failed(&mut self, job_id: &JobId, error: String, now: u64, out: &mut Out) {
        if !self.committing.remove(job_id) {
            return;
        }
        let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(job_id) else {
            return;
        };
        job.state = JobState::Failed;
        job.error = Some(format!("committing the write failed: {error}"));
        job.error_kind = Some(ErrorKind::Internal);
        job.finished_ms = Some(now);
        self.write_ended(job_id, out);
        out.push(self.remove_data(job_id));
    }

    /// Records a write job's end and forgets its commit record; the staging files go.
    fn write_ended(&mut self, job_id: &JobId, out: &mut Out) {
        let Some(JobEntry::Distributed(job)) = self.jobs.get(job_id) else {
            return;
        };
        if let Some(fence) = self.fence {
            let record = Record::Job(Box::new(job.record()));
            out.push(Effect::Persist { fence, record });
            let record = Record::WriteDone(job_id.clone());
            out.push(Effect::Persist { fence, record });
        }
        if let Some(spec) = &job.write {
            // Attempts launched by an earlier leader may still be writing: clean up anyway.
            out.push(Effect::CleanStaging {
                staging_root: spec.staging_root.clone(),
            });
        }
        out.push(Effect::JobEnded {
            job: job_id.clone(),
            state: job.state,
            error: job.error.clone(),
        });
    }

    // ---- executors ------------------------------------------------------------------------

    fn executor_seen(&mut self, spec: ExecutorSpec, draining: bool, now: u64, out: &mut Out) {
        let id = spec.id.clone();
        match self.cluster.get(&id) {
            Some(known) if *known == spec => {}
            known => {
                if known.is_some() {
                    // Another address under the same id: a restart, what it held is gone.
                    self.lose_executor(&id, now, out);
                }
                self.cluster.register_leased(spec, now);
            }
        }
        self.cluster.set_draining(&id, draining);
    }

    fn lose_executor(&mut self, id: &ExecutorId, now: u64, out: &mut Out) {
        tracing::warn!(executor = %id, "executor lost");
        for job_id in self.active.clone() {
            let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let event = job.executor_lost(id);
            self.on_job_event(&job_id, event, now, out);
        }
    }

    // ---- leadership -----------------------------------------------------------------------

    fn leadership_gained(
        &mut self,
        fence: i64,
        stored: Vec<StoredJob>,
        writes: Vec<WriteRecord>,
        now: u64,
        out: &mut Out,
    ) {
        self.fence = Some(fence);
        self.jobs.retain(|_, e| matches!(e, JobEntry::Inline(_)));
        self.active.clear();
        self.committing.clear();
        self.cluster.reset_slots();
        let recorded: BTreeSet<JobId> = writes.iter().map(|w| w.job_id.clone()).collect();
        let cluster = &self.cluster;
        let mut restored = Vec::new();
        for s in stored {
            let id = s.record.job_id.clone();
            match Job::restore(s.record, s.plans, s.outputs, &|e| cluster.contains(e)) {
                Ok(mut job) => {
                    // Attempts of this term differ from any an earlier leader launched.
                    job.attempt_base = attempt_base(fence);
                    restored.push(job);
                }
                Err(e) => tracing::warn!(job_id = %id, error = %e, "cannot restore job"),
            }
        }
        restored.sort_by_key(|j| j.submitted_ms);
        for mut job in restored {
            let id = job.id.clone();
            if recorded.contains(&id) {
                // A recorded commit: nothing runs, and it can no longer be cancelled.
                job.commit_started();
            } else if !job.state.is_terminal() {
                self.active.push(id.clone());
            } else if let Some(spec) = job.write.as_ref().filter(|_| !job.committed) {
                // Ended before its commit: staging files may be left.
                if job.state != JobState::Succeeded {
                    out.push(Effect::CleanStaging {
                        staging_root: spec.staging_root.clone(),
                    });
                }
            }
            self.jobs.insert(id, JobEntry::Distributed(Box::new(job)));
        }
        for write in writes {
            if self.committing.insert(write.job_id.clone()) {
                out.push(Effect::Commit {
                    job: write.job_id,
                    spec: write.spec,
                    dirs: write.staged_dirs,
                    recorded: true,
                });
            }
        }
        for id in self.active.clone() {
            self.advance(&id, now, out);
        }
    }

    // ---- time -----------------------------------------------------------------------------

    fn tick(&mut self, now: u64, out: &mut Out) {
        for id in self.cluster.expire(now, self.config.executor_timeout_ms) {
            self.lose_executor(&id, now, out);
        }
        let ttl = self.config.result_ttl_ms;
        let expired: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(id, e)| {
                let finished = match e {
                    JobEntry::Inline(j) => Some(j.finished_ms),
                    JobEntry::Distributed(j) if !self.committing.contains(*id) => {
                        j.finished_ms.filter(|_| j.visible_state().is_terminal())
                    }
                    JobEntry::Distributed(_) => None,
                };
                finished.is_some_and(|f| now.saturating_sub(f) > ttl)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(JobEntry::Distributed(_)) = self.jobs.remove(&id) {
                out.push(self.remove_data(&id));
                if let Some(fence) = self.fence {
                    let record = Record::Remove(id);
                    out.push(Effect::Persist { fence, record });
                }
            }
        }
        self.fail_jobs_without_executors(now, out);
    }

    /// Jobs cannot wait forever for executors that never come: past the executor timeout with
    /// none registered, the waiting jobs fail with that reason.
    fn fail_jobs_without_executors(&mut self, now: u64, out: &mut Out) {
        if self.cluster.total_slots() > 0 || self.active.is_empty() {
            self.no_executors_since = None;
            return;
        }
        let timeout = self.config.executor_timeout_ms;
        let since = *self.no_executors_since.get_or_insert(now);
        if now.saturating_sub(since) <= timeout {
            return;
        }
        let message = format!(
            "no executor has been registered for {} s; start executors with `ember executor --scheduler URL` (`--etcd URLS` for a cluster on etcd)",
            timeout / 1000
        );
        for job_id in self.active.clone() {
            if let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(&job_id) {
                job.fail(message.clone(), ErrorKind::Unavailable, now);
            }
            self.job_ended(&job_id, now, out);
        }
    }

    // ---- placement ------------------------------------------------------------------------

    /// Places pending tasks of the active jobs on free slots, by the configured policy.
    fn assign(&mut self, now: u64, out: &mut Out) {
        if self.fence.is_none() || !self.cluster.has_free_slot() {
            return;
        }
        let active: BTreeSet<&JobId> = self.active.iter().collect();
        let order: HashMap<&JobId, usize> = self
            .active
            .iter()
            .enumerate()
            .map(|(i, j)| (j, i))
            .collect();
        let mut jobs: Vec<&mut Job> = self
            .jobs
            .iter_mut()
            .filter(|(id, _)| active.contains(id))
            .filter_map(|(_, e)| match e {
                JobEntry::Distributed(job) => Some(&mut **job),
                JobEntry::Inline(_) => None,
            })
            .collect();
        jobs.sort_by_key(|j| order[&j.id]);
        let launches = placement::assign(self.config.policy, &mut self.cluster, &mut jobs);
        let mut by_executor: BTreeMap<ExecutorId, (ExecutorSpec, Vec<TaskDefinition>)> =
            BTreeMap::new();
        for launch in launches {
            let task = &launch.task.task_id;
            if let Some(JobEntry::Distributed(job)) = self.jobs.get_mut(&task.job_id)
                && let Some(stage) = job.stages.get_mut(&task.stage_id)
                && let Some(info) = stage.info.get_mut(task.partition as usize)
            {
                info.launched(task.attempt, now);
            }
            by_executor
                .entry(launch.executor.id.clone())
                .or_insert_with(|| (launch.executor.clone(), Vec::new()))
                .1
                .push(launch.task);
        }
        out.extend(
            by_executor
                .into_values()
                .map(|(executor, tasks)| Effect::Launch { executor, tasks }),
        );
    }
}

/// Tasks the driver gave up on: their slots are free, and their executors are told to stop them.
fn stop_tasks(cluster: &mut Cluster, tasks: Vec<(ExecutorId, TaskId)>, out: &mut Out) {
    for (executor, _) in &tasks {
        cluster.release_slot(executor);
    }
    out.extend(Effect::cancels(tasks, cluster));
}

/// Added to attempt numbers, so that attempts launched by different leadership terms differ.
fn attempt_base(fence: i64) -> u32 {
    ((fence as u32) & 0xffff) << 12
}
