//! The scheduler's runtime: the only code that does I/O for the [`Driver`]. It turns what
//! happens (client calls, executor reports, store watches, timers) into driver events, applies
//! the effects the driver returns (RPCs to executors, journal writes, commits), and answers
//! clients from the driver's state. It makes no scheduling decision of its own.
//!
//! One writer of job state: every change goes through [`Scheduler::dispatch`], which holds the
//! driver's lock only while the driver decides; effects run after it is released, as tracked
//! tasks.

mod admission;
mod commit;
pub(crate) mod executors;
mod history;
mod isolate;
pub(crate) mod journal;
pub(crate) mod leader;
pub(crate) mod scripts;
mod submit;
mod tickets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_core::job::{ExecutorInfo, ExecutorSpec, JobState, JobStatus, TaskStatus};
use ember_core::meta::{Keys, MetaStore};
use ember_core::metrics::ExecutorMetrics;
use ember_core::session::distributed_session_config;
use ember_core::shuffle::PartitionLocation;
use ember_core::{EmberError, ExecutorId, JobId, Result, StageId};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::SchedulerConfig;
use crate::driver::{Driver, DriverConfig, Effect, Event, JobEntry, StageEncoder};
use crate::planner::resolve_readers;
use executors::ExecutorClients;

pub use submit::{JOB_WEIGHT_SETTING, Query};

/// What this scheduler is doing in its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not (yet) known: campaigning, or taking over and restoring jobs.
    Starting,
    /// Leads; `fence` is the create revision of the leader key, guarding every write.
    Leader { fence: i64 },
    /// Another scheduler leads (at `leader`, when known): requests are forwarded to it.
    Standby { leader: Option<String> },
}

/// Wall-clock milliseconds: the time the driver is told.
pub use ember_core::unix_ms;

/// Resolves readers (with grants to read their inputs) and encodes stage plans with
/// datafusion-proto and Ember's codec.
struct PlanEncoder {
    tickets: Arc<tickets::Tickets>,
}

impl StageEncoder for PlanEncoder {
    fn encode(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        inputs: &dyn Fn(StageId) -> Option<Vec<Vec<PartitionLocation>>>,
    ) -> Result<Bytes> {
        let signed = |stage| {
            inputs(stage).map(|mut parts| {
                self.tickets.sign(&mut parts);
                parts
            })
        };
        Ok(ember_proto::encode_plan(resolve_readers(plan, &signed)?)?)
    }
}

pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) store: Arc<dyn MetaStore>,
    pub(crate) keys: Keys,
    /// This scheduler's id in the leader record.
    pub(crate) id: String,
    role: watch::Sender<Role>,
    journal: journal::Journal,
    pub(crate) ctx: SessionContext,
    driver: Mutex<Driver>,
    changes: watch::Sender<u64>,
    clients: ExecutorClients,
    tasks: TaskTracker,
    /// The runtime the scheduler was started in: its background tasks and effects run there
    /// (not on the planning threads a submission runs on).
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    rows_scanned: AtomicU64,
    /// Until when this scheduler's leader lease surely holds (its last renewal plus the TTL):
    /// past it, another scheduler may lead, so this one decides nothing more.
    lease_deadline: Mutex<Option<std::time::Instant>>,
    pub(crate) scripts: scripts::Scripts,
    pub(crate) tickets: Arc<tickets::Tickets>,
    /// Who may call: credentials and session tokens.
    pub auth: Arc<ember_core::auth::Authenticator>,
    planning: admission::Planning,
    /// How long the jobs this scheduler led to their end took, by outcome (succeeded, failed,
    /// cancelled).
    job_seconds: [ember_core::metrics::Histogram; 3],
    /// How long stages of ended jobs ran, from their first launch to their last report.
    stage_seconds: ember_core::metrics::Histogram,
    me: Weak<Scheduler>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler on the current tokio runtime (its background work runs there).
    pub fn new(
        config: SchedulerConfig,
        store: Arc<dyn MetaStore>,
        auth: Arc<ember_core::auth::Authenticator>,
    ) -> Arc<Self> {
        let session = distributed_session_config(SessionConfig::new());
        // No cached file listings: files a write commits (or anyone adds) show at once.
        let caches = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
            .with_list_files_cache(None)
            .with_list_files_cache_limit(0);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(ember_core::object_stores::EmberObjectStores::new(
                config.object_store.clone(),
            ))
            .with_cache_manager(caches)
            .build_arc()
            .expect("a runtime without limits builds");
        let tickets = Arc::new(tickets::Tickets::default());
        let driver = Driver::new(
            DriverConfig {
                executor_timeout_ms: config.executor_timeout().as_millis() as u64,
                result_ttl_ms: config.result_ttl().as_millis() as u64,
                policy: config.scheduling_policy,
            },
            Arc::new(PlanEncoder {
                tickets: Arc::clone(&tickets),
            }),
        );
        Arc::new_cyclic(|me| Scheduler {
            keys: Keys::new(&config.cluster.cluster_name),
            id: uuid::Uuid::new_v4().simple().to_string(),
            config,
            store,
            role: watch::channel(Role::Starting).0,
            journal: journal::Journal::new(),
            ctx: SessionContext::new_with_config_rt(session, runtime),
            driver: Mutex::new(driver),
            changes: watch::channel(0).0,
            clients: ExecutorClients::default(),
            tasks: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            shutdown: CancellationToken::new(),
            rows_scanned: AtomicU64::new(0),
            lease_deadline: Mutex::new(None),
            scripts: Default::default(),
            tickets,
            auth,
            planning: Default::default(),
            job_seconds: Default::default(),
            stage_seconds: Default::default(),
            me: me.clone(),
        })
    }

    pub(crate) fn notify(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn role_changes(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub(crate) fn set_role(&self, role: Role) {
        self.role.send_if_modified(|r| {
            let changed = *r != role;
            *r = role;
            changed
        });
    }

    pub(crate) fn fence(&self) -> Option<i64> {
        match *self.role.borrow() {
            Role::Leader { fence } => Some(fence),
            _ => None,
        }
    }

    pub(crate) fn is_leader(&self, fence: i64) -> bool {
        self.fence() == Some(fence)
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn_on(task, &self.runtime);
    }

    pub(crate) fn self_ref(&self) -> Option<Arc<Scheduler>> {
        self.me.upgrade()
    }

    /// Starts the background loops: the journal that records facts in the metadata store,
    /// leadership, and the driver's clock.
    pub fn start_background(self: &Arc<Self>, address: String) {
        if let Some(run) = self.journal.start(Arc::clone(self)) {
            self.spawn(run);
        }
        self.spawn(leader::leadership(Arc::clone(self), address));
        self.spawn(Arc::clone(self).load_cluster_key());
        let this = Arc::clone(self);
        let token = self.shutdown.clone();
        self.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        this.dispatch(Event::Tick);
                        this.expire_scripts(this.config.result_ttl().as_millis() as u64);
                    }
                }
            }
        });
    }

    /// Stops background work and waits for in-flight RPCs.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    // ---- the one way job state changes ----------------------------------------------------

    /// Hands an event to the driver and performs what it decided.
    pub(crate) fn dispatch(&self, event: Event) {
        self.check_lease();
        let effects = self.driver.lock().handle(event, unix_ms());
        self.apply(effects);
        // Any event may have changed what clients wait on (a task done, a stage complete).
        self.notify();
    }

    /// The leader lease was renewed: it holds until `deadline`.
    pub(crate) fn lease_renewed(&self, deadline: std::time::Instant) {
        *self.lease_deadline.lock() = Some(deadline);
    }

    /// A leader whose lease may have run out (it was paused, or cut off from the store) steps
    /// down before deciding anything: its writes would be refused by their fence anyway, and
    /// it must launch no task another leader does not know of.
    fn check_lease(&self) {
        let Some(fence) = self.fence() else { return };
        let expired = self
            .lease_deadline
            .lock()
            .is_some_and(|d| std::time::Instant::now() >= d);
        if expired {
            warn!("the leader lease may have run out (was this process paused?)");
            self.step_down(fence);
        }
    }

    /// Like [`dispatch`](Self::dispatch), only while the driver still acts under `fence`
    /// (checked under the same lock); false when it does not.
    pub(crate) fn dispatch_under(&self, fence: i64, event: Event) -> bool {
        self.check_lease();
        let mut driver = self.driver.lock();
        if driver.fence() != Some(fence) {
            return false;
        }
        let effects = driver.handle(event, unix_ms());
        drop(driver);
        self.apply(effects);
        self.notify();
        true
    }

    /// Reads the driver's state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Driver) -> T) -> T {
        f(&self.driver.lock())
    }

    /// Performs effects, in order: RPCs and commits run as tracked tasks, records go to the
    /// journal (which keeps their order). The caller tells waiting clients.
    fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Launch { executor, tasks } => self.launch(executor, tasks),
                Effect::CancelTasks { address, tasks } => {
                    let clients = self.clients.clone();
                    self.spawn(async move {
                        if let Err(e) = clients.cancel(&address, &tasks).await {
                            warn!(%address, error = %e, "cancelling tasks failed");
                        }
                    });
                }
                Effect::RemoveData { job, addresses } => {
                    for address in addresses {
                        let clients = self.clients.clone();
                        let job = job.clone();
                        self.spawn(async move {
                            if let Err(e) = clients.remove_job_data(&address, &job).await {
                                warn!(%address, error = %e, "removing job data failed");
                            }
                        });
                    }
                }
                Effect::Persist { fence, record } => self.journal.send(fence, record),
                Effect::Commit {
                    job,
                    spec,
                    dirs,
                    recorded,
                } => {
                    if let (Some(this), Some(fence)) = (self.self_ref(), self.fence()) {
                        self.spawn(this.commit(fence, job, spec, dirs, recorded));
                    }
                }
                Effect::CleanStaging { staging_root } => {
                    if let Some(this) = self.self_ref() {
                        self.spawn(this.clean_staging(staging_root));
                    }
                }
                Effect::JobEnded { job, state, error } => {
                    self.observe_job_end(&job, state);
                    match state {
                        JobState::Failed => {
                            warn!(job_id = %job, error = error.as_deref().unwrap_or(""), "job failed")
                        }
                        state => info!(job_id = %job, state = state.name(), "job ended"),
                    }
                }
            }
        }
    }

    /// The outcomes job durations are kept by, in the order of `job_seconds`.
    const OUTCOMES: [JobState; 3] = [JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    fn observe_job_end(&self, job: &JobId, state: JobState) {
        let (submitted, adhoc, stages, trace_parent) = self.read(|d| match d.job(job) {
            Some(JobEntry::Distributed(job)) => (
                Some(job.submitted_ms),
                job.label.script.is_none(),
                job.stage_spans(),
                job.trace_parent.clone(),
            ),
            _ => (None, false, Vec::new(), String::new()),
        });
        for s in &stages {
            let ms = s.end_unix_ms.saturating_sub(s.start_unix_ms);
            self.stage_seconds.observe(Duration::from_millis(ms));
        }
        ember_core::telemetry::export_stage_spans(job.as_str(), &trace_parent, &stages);
        // A batch job's statements are kept in the history as the batch job.
        if adhoc {
            self.record_history(job.as_str());
        }
        let outcome = Self::OUTCOMES.iter().position(|s| *s == state);
        if let (Some(submitted), Some(outcome)) = (submitted, outcome) {
            let took = Duration::from_millis(unix_ms().saturating_sub(submitted));
            self.job_seconds[outcome].observe(took);
        }
    }

    fn launch(&self, executor: ExecutorSpec, tasks: Vec<ember_core::job::TaskDefinition>) {
        let clients = self.clients.clone();
        let this = self.self_ref();
        self.spawn(async move {
            if let Err(e) = clients.launch(&executor.address, &tasks).await {
                warn!(executor = %executor.id, error = %e, "launching tasks failed");
                if let Some(this) = this {
                    let tasks = tasks.into_iter().map(|t| t.task_id).collect();
                    this.dispatch(Event::LaunchFailed {
                        executor: executor.id,
                        tasks,
                    });
                }
            }
        });
    }

    // ---- clients --------------------------------------------------------------------------

    /// A job's status; with `wait`, waits up to that long for the job to make progress.
    pub async fn job_status(&self, job_id: &JobId, wait: Duration) -> Result<JobStatus> {
        let mut changes = self.changes.subscribe();
        let first = self.status_now(job_id)?;
        if first.state.is_terminal() || wait.is_zero() {
            return Ok(first);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return self.status_now(job_id);
            }
            let now = self.status_now(job_id)?;
            let progressed = now.state != first.state
                || now.stages_completed != first.stages_completed
                || now.tasks_completed != first.tasks_completed;
            if progressed {
                return Ok(now);
            }
        }
    }

    /// A job's status; its result's locations carry grants to read them.
    fn status_now(&self, job_id: &JobId) -> Result<JobStatus> {
        let mut status = self.read(|d| d.status(job_id, unix_ms()))?;
        self.tickets.sign(&mut status.result_partitions);
        Ok(status)
    }

    /// Who submitted a job or batch job, when known.
    pub fn owner_of(&self, id: &JobId) -> Option<String> {
        if let Some(owner) = self.scripts.owner_of(id.as_str()) {
            return owner;
        }
        self.read(|d| match d.job(id) {
            Some(JobEntry::Distributed(job)) => job.label.owner.clone(),
            Some(JobEntry::Inline(result)) => result.label.owner.clone(),
            None => None,
        })
    }

    /// Cancels a job; false when it had already ended.
    pub fn cancel(&self, job_id: &JobId) -> Result<bool> {
        let running = self.read(|d| match d.job(job_id) {
            None => Err(EmberError::JobNotFound {
                job_id: job_id.to_string(),
            }),
            // A write that commits counts as ended: it can no longer be cancelled.
            Some(JobEntry::Distributed(job)) => Ok(!job.state.is_terminal()),
            Some(JobEntry::Inline(_)) => Ok(false),
        })?;
        if running {
            info!(job_id = %job_id, "cancelling job");
            self.dispatch(Event::Cancel {
                job: job_id.clone(),
            });
        }
        Ok(running)
    }

    /// The client has its result: free the job's shuffle data on the executors.
    pub fn release(&self, job_id: &JobId) -> Result<()> {
        if self.read(|d| d.job(job_id).is_none()) {
            return Err(EmberError::JobNotFound {
                job_id: job_id.to_string(),
            });
        }
        self.dispatch(Event::Release {
            job: job_id.clone(),
        });
        Ok(())
    }

    // ---- executors ------------------------------------------------------------------------

    /// Registers an executor; returns the cluster's ticket key, with which it checks the
    /// grants of the tickets it is asked to serve.
    pub fn register_executor(
        &self,
        spec: ExecutorSpec,
        protocol_version: u32,
    ) -> Result<ember_core::shuffle::grant::TicketKey> {
        if protocol_version != ember_core::PROTOCOL_VERSION {
            return Err(EmberError::ProtocolMismatch {
                executor_id: spec.id.to_string(),
                got: protocol_version,
                expected: ember_core::PROTOCOL_VERSION,
            });
        }
        let key = self
            .tickets
            .key()
            .ok_or_else(|| EmberError::Unavailable("this scheduler is not leading yet".into()))?;
        info!(executor = %spec.id, address = %spec.address, slots = spec.slots, "executor registered");
        self.dispatch(Event::ExecutorRegistered { spec });
        Ok(key)
    }

    /// Returns false when the executor is unknown and must register again.
    pub fn heartbeat(&self, id: &ExecutorId, metrics: ExecutorMetrics, draining: bool) -> bool {
        self.dispatch(Event::Heartbeat {
            executor: id.clone(),
            metrics,
            draining,
        });
        self.read(|d| d.executor_known(id))
    }

    pub fn update_task_statuses(&self, statuses: Vec<TaskStatus>) {
        self.dispatch(Event::TaskReports(statuses));
    }

    pub fn executors(&self) -> Vec<ExecutorInfo> {
        self.read(|d| d.executors())
    }

    /// Rows the scheduler process itself read from table files.
    pub fn rows_scanned(&self) -> u64 {
        self.rows_scanned.load(Ordering::Relaxed)
    }

    pub(crate) fn add_rows_scanned(&self, rows: u64) {
        self.rows_scanned.fetch_add(rows, Ordering::Relaxed);
    }

    /// What the HTTP endpoint exposes: leadership, executors and slots, jobs by state.
    pub fn metrics(&self) -> Vec<ember_ops::Metric> {
        use ember_ops::Metric;
        let leader = matches!(self.role(), Role::Leader { .. });
        let mut out = vec![
            Metric::gauge(
                "ember_scheduler_leader",
                "1 when this scheduler leads the cluster.",
                if leader { 1.0 } else { 0.0 },
            ),
            Metric::counter(
                "ember_scheduler_rows_scanned_total",
                "Rows this scheduler scanned itself (queries answered without executors).",
                self.rows_scanned(),
            ),
        ];
        for (state, histogram) in Self::OUTCOMES.iter().zip(&self.job_seconds) {
            out.push(
                Metric::histogram(
                    "ember_job_duration_seconds",
                    "How long jobs took from submission to their end, by outcome.",
                    histogram.snapshot(),
                )
                .with_label("outcome", state.name()),
            );
        }
        out.push(Metric::histogram(
            "ember_stage_duration_seconds",
            "How long stages ran, from their first task's launch to their last task's report.",
            self.stage_seconds.snapshot(),
        ));
        self.read(|d| {
            let pending: usize = d
                .jobs()
                .filter_map(|(_, e)| match e {
                    JobEntry::Distributed(job) if !job.state.is_terminal() => {
                        Some(job.pending_tasks().len())
                    }
                    _ => None,
                })
                .sum();
            out.push(Metric::gauge(
                "ember_pending_tasks",
                "Tasks of runnable stages waiting for a free slot (the queue's depth).",
                pending as f64,
            ));
            out.push(Metric::gauge(
                "ember_executors",
                "Executors registered with this leader.",
                d.executor_ids().len() as f64,
            ));
            out.push(Metric::gauge(
                "ember_task_slots",
                "Task slots of the registered executors.",
                d.total_slots() as f64,
            ));
            out.push(Metric::gauge(
                "ember_free_task_slots",
                "Task slots no task holds now.",
                d.free_slots() as f64,
            ));
            let mut by_state: std::collections::BTreeMap<&'static str, usize> = Default::default();
            for (_, entry) in d.jobs() {
                let state = match entry {
                    JobEntry::Inline(_) => JobState::Succeeded,
                    JobEntry::Distributed(job) => job.visible_state(),
                };
                *by_state.entry(state.name()).or_default() += 1;
            }
            for (state, n) in by_state {
                out.push(
                    Metric::gauge("ember_jobs", "Jobs this leader knows, by state.", n as f64)
                        .with_label("state", state),
                );
            }
        });
        out
    }
}

pub(crate) fn not_leader() -> EmberError {
    EmberError::Unavailable("this scheduler is not the leader (any more); retry".into())
}
