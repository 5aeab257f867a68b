//! The scheduler's driver: plans queries, keeps the job state machines and the executor slots
//! under one lock, and performs what they decide (launch RPCs, data cleanup) outside it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_core::job::{
    ExecutorInfo, ExecutorSpec, JobState, JobStatus, TaskDefinition, TaskOutcome, TaskStatus,
};
use ember_core::metrics::{ExecutorMetrics, file_rows_scanned, reads_files};
use ember_core::session::distributed_session_config;
use ember_core::shuffle::{batches_to_ipc_stream, schema_to_bytes};
use ember_core::{EmberError, ExecutorId, JobId, Result, TaskId};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use ember_core::meta::{Keys, MetaStore, put_chunked};

use crate::catalog;
use crate::cluster::{Cluster, ExecutorMembership};
use crate::config::SchedulerConfig;
use crate::durable::{Record, fence, restore_jobs, stage_output_record, unix_ms};
use crate::executor_client::ExecutorClients;
use crate::planner::{StageGraph, plan_stages, resolve_readers};
use crate::state::{Job, JobEvent};

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

/// What a client asks the scheduler to run.
#[derive(Debug, Clone)]
pub enum Query {
    Sql(String),
    /// A statement with positional placeholders (`$1`, `$2`, ...) and their values.
    Prepared {
        sql: String,
        params: Vec<ScalarValue>,
    },
    /// A DataFusion logical plan encoded with datafusion-proto.
    LogicalPlan(Bytes),
}

/// A result computed on the scheduler itself (metadata statements, EXPLAIN, queries without
/// table files).
#[derive(Debug)]
pub(crate) struct InlineJob {
    schema: Bytes,
    result: Bytes,
    elapsed_ms: u64,
    finished_ms: u64,
}

#[derive(Debug)]
pub(crate) enum JobEntry {
    Distributed(Job),
    Inline(InlineJob),
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) jobs: BTreeMap<JobId, JobEntry>,
    /// Distributed jobs not yet finished, in submission order.
    pub(crate) active: Vec<JobId>,
    pub(crate) cluster: Cluster,
    /// Since when jobs have been waiting with no executor registered at all.
    no_executors_since: Option<u64>,
}

/// A task to send to an executor.
#[derive(Debug)]
pub struct Launch {
    pub executor: ExecutorSpec,
    pub task: TaskDefinition,
}

/// Work to do after the lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    launches: Vec<Launch>,
    pub(crate) cancels: Vec<(ExecutorId, TaskId)>,
    remove_data: Vec<JobId>,
    /// Facts to record in the metadata store (in order).
    pub(crate) records: Vec<Record>,
    /// Write jobs whose stages are all done: commit their files.
    commits: Vec<JobId>,
    /// Staging prefixes of writes that failed or were cancelled: delete them.
    pub(crate) cleanups: Vec<String>,
}

/// Records a job that ended. A write job whose stages all succeeded is committed first (its
/// record is written once the commit is done); a write that ended otherwise is cleaned up.
fn record_finished(job: &Job, effects: &mut Effects) {
    match &job.write {
        Some(_) if job.state == JobState::Succeeded && !job.committed => {
            effects.commits.push(job.id.clone());
        }
        Some(write) if job.state != JobState::Succeeded => {
            effects.records.push(Record::job(job));
            effects.cleanups.push(write.staging_root.clone());
        }
        _ => effects.records.push(Record::job(job)),
    }
}

pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) store: Arc<dyn MetaStore>,
    pub(crate) keys: Keys,
    /// This scheduler's id in the leader record.
    pub(crate) id: String,
    role: watch::Sender<Role>,
    journal: tokio::sync::mpsc::UnboundedSender<(i64, Record)>,
    journal_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(i64, Record)>>>,
    pub(crate) ctx: SessionContext,
    pub(crate) inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    clients: ExecutorClients,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    started: Instant,
    rows_scanned: AtomicU64,
    pub(crate) scripts: crate::scripts::Scripts,
    /// Write jobs whose commit this leader runs (so that none is committed twice).
    pub(crate) committing: Mutex<std::collections::HashSet<JobId>>,
    me: Weak<Scheduler>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, store: Arc<dyn MetaStore>) -> Arc<Self> {
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
        let (journal, journal_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new_cyclic(|me| Scheduler {
            keys: Keys::new(&config.cluster_name),
            id: uuid::Uuid::new_v4().simple().to_string(),
            config,
            store,
            role: watch::channel(Role::Starting).0,
            journal,
            journal_rx: Mutex::new(Some(journal_rx)),
            ctx: SessionContext::new_with_config_rt(session, runtime),
            inner: Mutex::new(Inner::default()),
            changes: watch::channel(0).0,
            clients: ExecutorClients::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            rows_scanned: AtomicU64::new(0),
            scripts: Default::default(),
            committing: Default::default(),
            me: me.clone(),
        })
    }

    /// Milliseconds since this scheduler started (the clock of job times).
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
        self.tasks.spawn(task);
    }

    /// Starts the background loops: housekeeping (old jobs, silent executors), the journal
    /// that records facts in the metadata store, and leadership.
    pub fn start_background(self: &Arc<Self>, address: String) {
        if let Some(rx) = self.journal_rx.lock().take() {
            self.tasks.spawn(Arc::clone(self).journal_loop(rx));
        }
        self.tasks
            .spawn(crate::ha::leadership(Arc::clone(self), address));
        let this = Arc::clone(self);
        let token = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => this.housekeeping(),
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

    // ---- clients -------------------------------------------------------------------------

    /// Plans and starts a query; returns its job id. Planning errors come back here.
    pub async fn submit(
        self: &Arc<Self>,
        query: Query,
        settings: Vec<(String, String)>,
    ) -> Result<JobId> {
        self.submit_as(JobId::new_random(), query, settings).await
    }

    /// Like [`submit`](Self::submit), under an id chosen (and recorded) beforehand.
    pub(crate) async fn submit_as(
        self: &Arc<Self>,
        job_id: JobId,
        query: Query,
        settings: Vec<(String, String)>,
    ) -> Result<JobId> {
        let start = Instant::now();
        let partitions = self.shuffle_partitions();
        let mut state = self.ctx.state();
        {
            let options = state.config_mut().options_mut();
            options.execution.target_partitions = partitions;
            for (k, v) in &settings {
                options
                    .set(k, v)
                    .map_err(|e| EmberError::User(format!("setting {k}: {e}")))?;
            }
        }
        let ctx = SessionContext::new_with_state(state);
        // SQL (prepared or not: JDBC prepares every statement) may be DDL, which the catalog
        // keeps; a plan built elsewhere may not.
        let plan = match query {
            Query::Sql(sql) => self.plan_sql(&ctx, &sql, None).await?,
            Query::Prepared { sql, params } => self.plan_sql(&ctx, &sql, Some(params)).await?,
            Query::LogicalPlan(bytes) => {
                let plan =
                    datafusion_proto::bytes::logical_plan_from_bytes(&bytes, &ctx.task_ctx())
                        .map_err(|e| {
                            EmberError::User(format!("cannot decode logical plan: {e}"))
                        })?;
                if let LogicalPlan::Ddl(_) = &plan {
                    return Err(EmberError::User(
                        "send DDL statements as SQL, so that the catalog can keep them".into(),
                    ));
                }
                Some(plan)
            }
        };
        let Some(plan) = plan else {
            // DDL, run and recorded.
            self.finish_inline(job_id.clone(), &Schema::empty(), &[], start)?;
            return Ok(job_id);
        };
        let df = ctx.execute_logical_plan(plan).await?;
        let logical = df.logical_plan().clone();
        if let LogicalPlan::Analyze(_) = logical {
            return Err(EmberError::User(
                "EXPLAIN ANALYZE is not supported yet; use EXPLAIN".into(),
            ));
        }
        if let LogicalPlan::Explain(explain) = &logical {
            let inner = ctx.state().create_physical_plan(&explain.plan).await?;
            // A write shows as it runs: staged, in parallel.
            let inner = match crate::writes::plan_write(&job_id, &inner)? {
                Some(write) => write.plan,
                None => inner,
            };
            let graph = plan_stages(job_id.as_str(), Arc::clone(&inner))?;
            let batch = explain_batch(&explain.plan, &inner, &graph)?;
            self.finish_inline(job_id.clone(), batch.schema().as_ref(), &[batch], start)?;
            return Ok(job_id);
        }
        let physical = df.create_physical_plan().await?;
        let write = crate::writes::plan_write(&job_id, &physical)?;
        let physical = match &write {
            Some(w) => Arc::clone(&w.plan),
            None => physical,
        };
        if write.is_none() && !reads_files(&physical) {
            let batches = collect(Arc::clone(&physical), ctx.task_ctx()).await?;
            self.rows_scanned
                .fetch_add(file_rows_scanned(&physical), Ordering::Relaxed);
            self.finish_inline(job_id.clone(), physical.schema().as_ref(), &batches, start)?;
            return Ok(job_id);
        }
        let graph = plan_stages(job_id.as_str(), physical)?;
        // Encoding refuses a plan executors could not receive now, rather than fail it later.
        let plans = graph
            .stages
            .values()
            .map(|stage| {
                Ok((
                    stage.stage_id,
                    ember_proto::encode_plan(Arc::clone(&stage.plan))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let task_settings = task_settings(&ctx, settings);
        let write_stage = graph
            .stages
            .values()
            .find(|s| crate::writes::contains_staged_write(&s.plan))
            .map(|s| s.stage_id);
        let mut job = Job::new(job_id.clone(), graph, task_settings, self.now_ms());
        if let (Some(w), Some(stage)) = (write, write_stage) {
            job.write = Some(crate::state::WriteSpec {
                target: w.target,
                staging_root: w.staging_root,
                stage,
                single_file: w.single_file,
            });
        }
        job.max_task_attempts = self.config.max_task_attempts;
        job.submitted_unix_ms = unix_ms();
        let fence = self.record_job(&mut job, plans).await?;
        info!(job_id = %job_id, stages = job.stages.len(), "job submitted");
        let effects = {
            let mut inner = self.inner.lock();
            if !self.is_leader(fence) {
                return Err(not_leader());
            }
            inner
                .jobs
                .insert(job_id.clone(), JobEntry::Distributed(job));
            inner.active.push(job_id.clone());
            let mut effects = Effects::default();
            self.advance(&mut inner, &job_id, &mut effects);
            self.assign(&mut inner, &mut effects);
            effects
        };
        self.apply(effects);
        self.notify();
        Ok(job_id)
    }

    /// Records a new job (its stage plans, then the job record) before it is acknowledged, so
    /// that a leader taking over finds it. Returns the leadership it was recorded under.
    async fn record_job(&self, job: &mut Job, plans: Vec<(u32, Bytes)>) -> Result<i64> {
        let fence = self.fence().ok_or_else(not_leader)?;
        let guard = crate::durable::fence(&self.keys, fence);
        let unavailable = |e: EmberError| match e {
            EmberError::Unavailable(m) => {
                EmberError::Unavailable(format!("cannot record the job: {m}"))
            }
            other => other,
        };
        for (stage_id, bytes) in plans {
            let key = self.keys.stage_plan(job.id.as_str(), stage_id);
            let chunks = put_chunked(self.store.as_ref(), &key, &bytes, &guard)
                .await
                .map_err(unavailable)?
                .ok_or_else(not_leader)?;
            if let Some(stage) = job.stages.get_mut(&stage_id) {
                stage.plan_chunks = chunks;
            }
        }
        let op = Record::job(job).op(&self.keys);
        if !self
            .store
            .txn(guard, vec![op])
            .await
            .map_err(unavailable)?
            .succeeded
        {
            return Err(not_leader());
        }
        Ok(fence)
    }

    /// Plans a SQL statement, binding `params` when given. DDL is run here (and kept in the
    /// catalog): `None` then.
    async fn plan_sql(
        &self,
        ctx: &SessionContext,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Option<LogicalPlan>> {
        let plan = ctx.state().create_logical_plan(sql).await?;
        if let LogicalPlan::Ddl(_) = &plan {
            self.run_ddl(ctx, plan, sql).await?;
            return Ok(None);
        }
        Ok(Some(match params {
            Some(params) => bind_parameters(plan, params)?,
            None => plan,
        }))
    }

    /// Runs a DDL statement and keeps what it changed in the shared catalog. A statement the
    /// store cannot record is undone, so that no scheduler serves a table the next would not.
    async fn run_ddl(&self, ctx: &SessionContext, plan: LogicalPlan, sql: &str) -> Result<()> {
        let fence = self.fence().ok_or_else(not_leader)?;
        let change = catalog::change_for(&self.keys, ctx, &plan);
        let undo = match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(c)) => Some(c.name.clone()),
            LogicalPlan::Ddl(DdlStatement::CreateView(c)) => Some(c.name.clone()),
            _ => None,
        };
        ctx.execute_logical_plan(plan).await?;
        let guard = crate::durable::fence(&self.keys, fence);
        match catalog::record(self.store.as_ref(), guard, &change, sql).await {
            Ok(true) => Ok(()),
            failed => {
                if let (catalog::CatalogChange::Put(_), Some(name)) = (&change, undo) {
                    let _ = ctx.deregister_table(name);
                }
                match failed {
                    Err(e) => Err(EmberError::Unavailable(format!(
                        "cannot record the statement in the catalog: {e}"
                    ))),
                    _ => Err(not_leader()),
                }
            }
        }
    }

    /// Plans a statement without running it: the schema of its result, and of its parameters
    /// (`$1`, `$2`, ... as fields in order; a type not inferable from the query is `Null`).
    pub async fn prepare(&self, sql: &str) -> Result<(Schema, Schema)> {
        let plan = self.ctx.state().create_logical_plan(sql).await?;
        let result = plan.schema().as_arrow().clone();
        let types = plan.get_parameter_types()?;
        let mut params: Vec<(usize, DataType)> = Vec::new();
        for (name, data_type) in types {
            let index = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    EmberError::User(format!(
                        "placeholder {name}: use positional parameters ($1, $2, ... or ?)"
                    ))
                })?;
            params.push((index, data_type.unwrap_or(DataType::Null)));
        }
        params.sort_by_key(|(i, _)| *i);
        let fields: Vec<Field> = params
            .into_iter()
            .map(|(i, t)| Field::new(format!("${i}"), t, true))
            .collect();
        Ok((result, Schema::new(fields)))
    }

    /// The session every statement plans in: its catalog is the cluster's tables.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    fn shuffle_partitions(&self) -> usize {
        if self.config.target_partitions > 0 {
            return self.config.target_partitions;
        }
        (self.inner.lock().cluster.total_slots() as usize).max(1)
    }

    fn finish_inline(
        &self,
        job_id: JobId,
        schema: &Schema,
        batches: &[RecordBatch],
        start: Instant,
    ) -> Result<()> {
        let entry = InlineJob {
            schema: schema_to_bytes(schema),
            result: batches_to_ipc_stream(schema, batches)?,
            elapsed_ms: start.elapsed().as_millis() as u64,
            finished_ms: self.now_ms(),
        };
        self.inner
            .lock()
            .jobs
            .insert(job_id, JobEntry::Inline(entry));
        self.notify();
        Ok(())
    }

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

    fn status_now(&self, job_id: &JobId) -> Result<JobStatus> {
        let inner = self.inner.lock();
        let entry = inner
            .jobs
            .get(job_id)
            .ok_or_else(|| EmberError::JobNotFound {
                job_id: job_id.to_string(),
            })?;
        Ok(match entry {
            JobEntry::Inline(j) => JobStatus {
                job_id: job_id.clone(),
                state: JobState::Succeeded,
                error: None,
                stages_total: 0,
                stages_completed: 0,
                tasks_total: 0,
                tasks_completed: 0,
                elapsed_ms: j.elapsed_ms,
                result_schema: j.schema.clone(),
                result_partitions: Vec::new(),
                inline_result: j.result.clone(),
                shuffle_bytes: 0,
                stages: Vec::new(),
            },
            JobEntry::Distributed(job) => JobStatus {
                job_id: job_id.clone(),
                state: job.visible_state(),
                error: job.error.clone(),
                stages_total: job.stages.len() as u32,
                stages_completed: job.stages_completed(),
                tasks_total: job.tasks_total(),
                tasks_completed: job.tasks_completed(),
                elapsed_ms: job.finished_ms.unwrap_or_else(|| self.now_ms()) - job.submitted_ms,
                result_schema: schema_to_bytes(&job.schema),
                result_partitions: if job.visible_state() == JobState::Succeeded {
                    job.output_locations(job.final_stage).unwrap_or_default()
                } else {
                    Vec::new()
                },
                inline_result: Bytes::new(),
                shuffle_bytes: job.shuffle_bytes(),
                stages: job.stage_statuses(),
            },
        })
    }

    pub fn cancel(&self, job_id: &JobId) -> Result<bool> {
        let now = self.now_ms();
        let effects = {
            let mut inner = self.inner.lock();
            let Some(entry) = inner.jobs.get_mut(job_id) else {
                return Err(EmberError::JobNotFound {
                    job_id: job_id.to_string(),
                });
            };
            let JobEntry::Distributed(job) = entry else {
                return Ok(false);
            };
            if job.state.is_terminal() {
                return Ok(false);
            }
            let running = job.cancel(now);
            let mut effects = Effects {
                remove_data: vec![job_id.clone()],
                ..Default::default()
            };
            record_finished(job, &mut effects);
            for (executor, _) in &running {
                inner.cluster.release_slot(executor);
            }
            effects.cancels = running;
            inner.active.retain(|j| j != job_id);
            self.assign(&mut inner, &mut effects);
            effects
        };
        info!(job_id = %job_id, "job cancelled");
        self.apply(effects);
        self.notify();
        Ok(true)
    }

    /// The client has its result: free the job's shuffle data on the executors.
    pub fn release(&self, job_id: &JobId) -> Result<()> {
        if !self.inner.lock().jobs.contains_key(job_id) {
            return Err(EmberError::JobNotFound {
                job_id: job_id.to_string(),
            });
        }
        self.apply(Effects {
            remove_data: vec![job_id.clone()],
            ..Default::default()
        });
        Ok(())
    }

    // ---- executors -----------------------------------------------------------------------

    pub fn register_executor(&self, spec: ExecutorSpec, protocol_version: u32) -> Result<()> {
        if protocol_version != ember_core::PROTOCOL_VERSION {
            return Err(EmberError::ProtocolMismatch {
                executor_id: spec.id.to_string(),
                got: protocol_version,
                expected: ember_core::PROTOCOL_VERSION,
            });
        }
        info!(executor = %spec.id, address = %spec.address, slots = spec.slots, "executor registered");
        let now = self.now_ms();
        let effects = {
            let mut inner = self.inner.lock();
            let mut effects = Effects::default();
            // A re-registration means the executor restarted: what it held is gone.
            if inner.cluster.get(&spec.id).is_some() {
                self.lose_executor(&mut inner, &spec.id, &mut effects);
            }
            inner.cluster.register(spec, now);
            self.assign(&mut inner, &mut effects);
            effects
        };
        self.apply(effects);
        self.notify();
        Ok(())
    }

    /// Returns false when the executor is unknown and must register again.
    pub fn heartbeat(&self, id: &ExecutorId, metrics: ExecutorMetrics, draining: bool) -> bool {
        let now = self.now_ms();
        let mut inner = self.inner.lock();
        if draining {
            inner.cluster.set_draining(id, true);
        }
        inner.cluster.heartbeat(id, metrics, now)
    }

    pub fn executors(&self) -> Vec<ExecutorInfo> {
        self.inner.lock().cluster.infos()
    }

    /// Rows the scheduler process itself read from table files.
    pub fn rows_scanned(&self) -> u64 {
        self.rows_scanned.load(Ordering::Relaxed)
    }

    /// What the HTTP endpoint exposes: leadership, executors and slots, jobs by state.
    pub fn metrics(&self) -> Vec<ember_core::ops::Metric> {
        use ember_core::ops::Metric;
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
        let inner = self.inner.lock();
        out.push(Metric::gauge(
            "ember_executors",
            "Executors registered with this leader.",
            inner.cluster.ids().len() as f64,
        ));
        out.push(Metric::gauge(
            "ember_task_slots",
            "Task slots of the registered executors.",
            inner.cluster.total_slots() as f64,
        ));
        let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
        for entry in inner.jobs.values() {
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
        out
    }

    pub fn update_task_statuses(&self, statuses: Vec<TaskStatus>) {
        let now = self.now_ms();
        let effects = {
            let mut inner = self.inner.lock();
            let mut effects = Effects::default();
            for status in statuses {
                self.apply_status(&mut inner, &status, now, &mut effects);
            }
            self.assign(&mut inner, &mut effects);
            effects
        };
        self.apply(effects);
        self.notify();
    }

    fn apply_status(
        &self,
        inner: &mut Inner,
        status: &TaskStatus,
        now: u64,
        effects: &mut Effects,
    ) {
        let job_id = &status.task_id.job_id;
        let address = inner
            .cluster
            .get(&status.executor_id)
            .map(|s| s.address.clone());
        let Some(JobEntry::Distributed(job)) = inner.jobs.get_mut(job_id) else {
            return;
        };
        // An executor that was lost meanwhile cannot serve its output: ignore its reports.
        let Some(address) = address else { return };
        let Some(event) = job.task_finished(status, &address, now) else {
            return;
        };
        inner.cluster.release_slot(&status.executor_id);
        if let TaskOutcome::FetchFailed { executor_id, .. } = &status.outcome {
            warn!(job_id = %job_id, task = %status.task_id, from = %executor_id, "fetch failed; recomputing the lost output");
        }
        self.on_event(inner, job_id, event, effects);
    }

    /// Acts on what a job's state machine decided.
    fn on_event(&self, inner: &mut Inner, job_id: &JobId, event: JobEvent, effects: &mut Effects) {
        if let Some(JobEntry::Distributed(job)) = inner.jobs.get_mut(job_id) {
            let cancels = job.take_cancels();
            for (executor, _) in &cancels {
                inner.cluster.release_slot(executor);
            }
            effects.cancels.extend(cancels);
            let completed = match event {
                JobEvent::StageCompleted(stage) => Some(stage),
                JobEvent::Succeeded => Some(job.final_stage),
                _ => None,
            };
            if let Some(record) = completed.and_then(|s| stage_output_record(job, s)) {
                let bytes = prost::Message::encode_to_vec(&record).into();
                let stage = completed.expect("some");
                effects
                    .records
                    .push(Record::StageOutput(job.id.clone(), stage, bytes));
            }
            if job.state.is_terminal() {
                record_finished(job, effects);
            }
        }
        match event {
            JobEvent::None | JobEvent::Retry => {}
            JobEvent::StageCompleted(_) | JobEvent::Recompute => {
                self.advance(inner, job_id, effects)
            }
            JobEvent::Succeeded => {
                info!(job_id = %job_id, "job succeeded");
                inner.active.retain(|j| j != job_id);
            }
            JobEvent::Failed(message) => {
                warn!(job_id = %job_id, %message, "job failed");
                self.finish_failed(inner, job_id, effects);
            }
        }
    }

    /// Tasks could not be handed to an executor: they go back to pending, and the executor
    /// gets no more tasks until it is heard from again.
    fn launch_failed(&self, executor: &ExecutorId, tasks: Vec<TaskId>) {
        let effects = {
            let mut inner = self.inner.lock();
            inner.cluster.suspend(executor);
            for task in &tasks {
                if let Some(JobEntry::Distributed(job)) = inner.jobs.get_mut(&task.job_id) {
                    job.launch_failed(task);
                }
                inner.cluster.release_slot(executor);
            }
            let mut effects = Effects::default();
            self.assign(&mut inner, &mut effects);
            effects
        };
        self.apply(effects);
        self.notify();
    }

    fn finish_failed(&self, inner: &mut Inner, job_id: &JobId, effects: &mut Effects) {
        if let Some(JobEntry::Distributed(job)) = inner.jobs.get(job_id) {
            let running = job.running_tasks();
            for (executor, _) in &running {
                inner.cluster.release_slot(executor);
            }
            effects.cancels.extend(running);
        }
        inner.active.retain(|j| j != job_id);
        effects.remove_data.push(job_id.clone());
    }

    fn lose_executor(&self, inner: &mut Inner, id: &ExecutorId, effects: &mut Effects) {
        warn!(executor = %id, "executor lost");
        let active = inner.active.clone();
        for job_id in active {
            let Some(JobEntry::Distributed(job)) = inner.jobs.get_mut(&job_id) else {
                continue;
            };
            let event = job.executor_lost(id);
            self.on_event(inner, &job_id, event, effects);
        }
    }

    fn housekeeping(&self) {
        let now = self.now_ms();
        let timeout = self.config.executor_timeout().as_millis() as u64;
        let ttl = self.config.result_ttl().as_millis() as u64;
        let effects = {
            let mut inner = self.inner.lock();
            let mut effects = Effects::default();
            let lost = inner.cluster.expire(now, timeout);
            for id in &lost {
                self.lose_executor(&mut inner, id, &mut effects);
            }
            let expired: Vec<JobId> = inner
                .jobs
                .iter()
                .filter(|(_, e)| {
                    let finished = match e {
                        JobEntry::Inline(j) => Some(j.finished_ms),
                        JobEntry::Distributed(j) => j.finished_ms,
                    };
                    finished.is_some_and(|f| now.saturating_sub(f) > ttl)
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some(JobEntry::Distributed(_)) = inner.jobs.remove(&id) {
                    effects.remove_data.push(id.clone());
                    effects.records.push(Record::Remove(id));
                }
            }
            self.fail_jobs_without_executors(&mut inner, now, timeout, &mut effects);
            if !lost.is_empty() {
                self.assign(&mut inner, &mut effects);
            }
            effects
        };
        self.expire_scripts(ttl);
        let changed = !effects.remove_data.is_empty()
            || !effects.launches.is_empty()
            || !effects.records.is_empty();
        self.apply(effects);
        if changed {
            self.notify();
        }
    }

    /// Jobs cannot wait forever for executors that never come: past the executor timeout with
    /// none registered, the waiting jobs fail with that reason.
    fn fail_jobs_without_executors(
        &self,
        inner: &mut Inner,
        now: u64,
        timeout: u64,
        effects: &mut Effects,
    ) {
        if inner.cluster.total_slots() > 0 || inner.active.is_empty() {
            inner.no_executors_since = None;
            return;
        }
        let since = *inner.no_executors_since.get_or_insert(now);
        if now.saturating_sub(since) <= timeout {
            return;
        }
        let message = format!(
            "no executor has been registered for {} s; start executors with `ember executor --scheduler URL` (`--etcd URLS` for a cluster on etcd)",
            timeout / 1000
        );
        for job_id in inner.active.clone() {
            if let Some(JobEntry::Distributed(job)) = inner.jobs.get_mut(&job_id) {
                job.fail(message.clone(), now);
                record_finished(job, effects);
            }
            warn!(job_id = %job_id, %message, "job failed");
            self.finish_failed(inner, &job_id, effects);
        }
    }

    // ---- the decisions -------------------------------------------------------------------

    /// Starts the job's stages whose inputs are complete, with their resolved plans.
    fn advance(&self, inner: &mut Inner, job_id: &JobId, effects: &mut Effects) {
        let Some(JobEntry::Distributed(job)) = inner.jobs.get_mut(job_id) else {
            return;
        };
        let now = self.now_ms();
        for stage_id in job.start_ready_stages() {
            let encoded = {
                let stage = &job.stages[&stage_id];
                resolve_readers(&stage.plan, &|s| job.output_locations(s))
                    .and_then(ember_proto::encode_plan)
            };
            match encoded {
                Ok(bytes) => job.set_launch_plan(stage_id, bytes),
                Err(e) => {
                    job.fail(format!("cannot start stage {stage_id}: {e}"), now);
                    break;
                }
            }
        }
        match job.state {
            JobState::Failed => {
                effects.records.push(Record::job(job));
                self.finish_failed(inner, job_id, effects)
            }
            JobState::Succeeded => {
                job.finished_ms.get_or_insert(now);
                record_finished(job, effects);
                inner.active.retain(|j| j != job_id);
            }
            _ => {}
        }
    }

    /// Places pending tasks of active jobs (oldest first) on free executor slots.
    fn assign(&self, inner: &mut Inner, effects: &mut Effects) {
        let Inner {
            jobs,
            active,
            cluster,
            ..
        } = inner;
        for job_id in active.iter() {
            let Some(JobEntry::Distributed(job)) = jobs.get_mut(job_id) else {
                continue;
            };
            let (launches, full) = assign_tasks(cluster, job);
            effects.launches.extend(launches);
            if full {
                break;
            }
        }
    }

    /// Performs effects: RPCs run as tracked tasks, never under the lock.
    pub(crate) fn apply(&self, effects: Effects) {
        if let Some(this) = self.self_ref() {
            for job_id in effects.commits {
                self.spawn(Arc::clone(&this).commit_write(job_id));
            }
            for staging_root in effects.cleanups {
                self.spawn(Arc::clone(&this).clean_write(staging_root));
            }
        }
        if !effects.records.is_empty() {
            match self.fence() {
                Some(fence) => {
                    for record in effects.records {
                        let _ = self.journal.send((fence, record));
                    }
                }
                None => warn!("not the leader: facts left unrecorded"),
            }
        }
        let mut by_executor: HashMap<ExecutorId, (ExecutorSpec, Vec<TaskDefinition>)> =
            HashMap::new();
        for launch in effects.launches {
            by_executor
                .entry(launch.executor.id.clone())
                .or_insert_with(|| (launch.executor.clone(), Vec::new()))
                .1
                .push(launch.task);
        }
        for (_, (executor, tasks)) in by_executor {
            let clients = self.clients.clone();
            let this = self.self_ref();
            self.tasks.spawn(async move {
                if let Err(e) = clients.launch(&executor.address, &tasks).await {
                    warn!(executor = %executor.id, error = %e, "launching tasks failed");
                    if let Some(this) = this {
                        let ids = tasks.into_iter().map(|t| t.task_id).collect();
                        this.launch_failed(&executor.id, ids);
                    }
                }
            });
        }
        if effects.cancels.is_empty() && effects.remove_data.is_empty() {
            return;
        }
        let addresses: HashMap<ExecutorId, String> = {
            let inner = self.inner.lock();
            inner
                .cluster
                .infos()
                .into_iter()
                .map(|i| (i.spec.id, i.spec.address))
                .collect()
        };
        let mut cancels: HashMap<String, Vec<TaskId>> = HashMap::new();
        for (executor, task) in effects.cancels {
            if let Some(address) = addresses.get(&executor) {
                cancels.entry(address.clone()).or_default().push(task);
            }
        }
        for (address, tasks) in cancels {
            let clients = self.clients.clone();
            self.tasks.spawn(async move {
                if let Err(e) = clients.cancel(&address, &tasks).await {
                    warn!(%address, error = %e, "cancelling tasks failed");
                }
            });
        }
        for job_id in effects.remove_data {
            for address in addresses.values().cloned() {
                let clients = self.clients.clone();
                let job_id = job_id.clone();
                self.tasks.spawn(async move {
                    if let Err(e) = clients.remove_job_data(&address, &job_id).await {
                        warn!(%address, error = %e, "removing job data failed");
                    }
                });
            }
        }
    }

    // ---- leadership ----------------------------------------------------------------------

    /// Writes recorded facts in order, each fenced on the leadership it was decided under;
    /// retries while the store is unreachable. A refused write means this scheduler was
    /// deposed: it steps down.
    async fn journal_loop(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(i64, Record)>,
    ) {
        let token = self.shutdown.clone();
        loop {
            let (term, record) = tokio::select! {
                _ = token.cancelled() => return,
                r = rx.recv() => match r { Some(r) => r, None => return },
            };
            let mut delay = Duration::from_millis(100);
            loop {
                if !self.is_leader(term) {
                    break;
                }
                let op = record.op(&self.keys);
                match self.store.txn(fence(&self.keys, term), vec![op]).await {
                    Ok(r) if r.succeeded => break,
                    Ok(_) => {
                        warn!("a write was refused: this scheduler no longer leads");
                        self.step_down(term);
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "recording in the metadata store failed; retrying");
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }

    /// Takes over as leader under `fence`: reads the live executors (when they register in
    /// the store) and the recorded jobs, and continues every unfinished job.
    pub(crate) async fn become_leader(
        self: &Arc<Self>,
        fence: i64,
        executors: Option<Vec<(ExecutorSpec, bool)>>,
    ) -> Result<()> {
        let now = self.now_ms();
        if let Some(executors) = &executors {
            self.sync_executors(executors);
        }
        catalog::restore(self.store.as_ref(), &self.keys, &self.ctx).await?;
        let alive: std::collections::HashSet<ExecutorId> =
            self.inner.lock().cluster.ids().into_iter().collect();
        let jobs = restore_jobs(
            self.store.as_ref(),
            &self.keys,
            &self.ctx.task_ctx(),
            &alive,
            now,
        )
        .await?;
        // Everything a client could ask about is read before this scheduler takes requests.
        let writes = self.recorded_writes().await?;
        let scripts = self.recorded_scripts().await?;
        self.load_scripts(scripts);
        let committing: std::collections::HashSet<&JobId> =
            writes.iter().map(|w| &w.job_id).collect();
        let effects = {
            let mut inner = self.inner.lock();
            inner.jobs.retain(|_, e| matches!(e, JobEntry::Inline(_)));
            inner.active.clear();
            inner.cluster.reset_slots();
            let mut ids = Vec::new();
            for mut job in jobs {
                // Attempts of this term differ from any an earlier leader launched.
                job.attempt_base = ((fence as u32) & 0xffff) << 12;
                let id = job.id.clone();
                if committing.contains(&id) {
                    // A recorded commit: nothing runs, and it can no longer be cancelled.
                    job.commit_started();
                } else if !job.state.is_terminal() {
                    ids.push(id.clone());
                }
                inner.jobs.insert(id, JobEntry::Distributed(job));
            }
            ids.sort_by_key(|id| match &inner.jobs[id] {
                JobEntry::Distributed(j) => j.submitted_unix_ms,
                JobEntry::Inline(_) => 0,
            });
            inner.active = ids.clone();
            self.set_role(Role::Leader { fence });
            let mut effects = Effects::default();
            for id in &ids {
                self.advance(&mut inner, id, &mut effects);
            }
            self.assign(&mut inner, &mut effects);
            if !ids.is_empty() {
                info!(jobs = ids.len(), "continuing the recorded jobs");
            }
            effects
        };
        self.apply(effects);
        self.notify();
        self.resume_writes(fence, writes);
        self.resume_scripts(fence);
        Ok(())
    }

    /// Leadership `fence` ended: forget the jobs (the next leader continues them from their
    /// records) and refuse work until a leader is known.
    pub(crate) fn step_down(&self, fence: i64) {
        if !self.is_leader(fence) {
            return;
        }
        if self.shutdown.is_cancelled() {
            info!("leaving leadership: shutting down");
        } else {
            warn!("stepping down as leader");
        }
        self.set_role(Role::Starting);
        self.committing.lock().clear();
        let mut inner = self.inner.lock();
        inner.jobs.retain(|_, e| matches!(e, JobEntry::Inline(_)));
        inner.active.clear();
        drop(inner);
        self.notify();
    }

    /// Makes the executors the store lists (`(spec, draining)`) the membership: missing ones
    /// are lost, new ones join, and a changed address means a restart.
    pub(crate) fn sync_executors(&self, executors: &[(ExecutorSpec, bool)]) {
        let effects = {
            let mut inner = self.inner.lock();
            let mut effects = Effects::default();
            let listed: std::collections::HashSet<&ExecutorId> =
                executors.iter().map(|(s, _)| &s.id).collect();
            for id in inner.cluster.ids() {
                if !listed.contains(&id) {
                    inner.cluster.remove(&id);
                    self.lose_executor(&mut inner, &id, &mut effects);
                }
            }
            for (spec, draining) in executors {
                self.executor_seen(&mut inner, spec, *draining, &mut effects);
            }
            self.assign(&mut inner, &mut effects);
            effects
        };
        self.apply(effects);
        self.notify();
    }

    /// An executor's record appeared or changed in the store.
    pub(crate) fn executor_put(&self, spec: ExecutorSpec, draining: bool) {
        let effects = {
            let mut inner = self.inner.lock();
            let mut effects = Effects::default();
            self.executor_seen(&mut inner, &spec, draining, &mut effects);
            self.assign(&mut inner, &mut effects);
            effects
        };
        self.apply(effects);
        self.notify();
    }

    /// An executor's record vanished (its lease ended: crash, kill, partition, or shutdown).
    pub(crate) fn executor_gone(&self, id: &ExecutorId) {
        let effects = {
            let mut inner = self.inner.lock();
            let mut effects = Effects::default();
            if inner.cluster.remove(id) {
                self.lose_executor(&mut inner, id, &mut effects);
                self.assign(&mut inner, &mut effects);
            }
            effects
        };
        self.apply(effects);
        self.notify();
    }

    fn executor_seen(
        &self,
        inner: &mut Inner,
        spec: &ExecutorSpec,
        draining: bool,
        effects: &mut Effects,
    ) {
        match inner.cluster.get(&spec.id) {
            Some(known) if known == spec => {}
            known => {
                if known.is_some() {
                    self.lose_executor(inner, &spec.id, effects);
                }
                info!(executor = %spec.id, address = %spec.address, slots = spec.slots, "executor joined");
                inner.cluster.register_leased(spec.clone(), self.now_ms());
            }
        }
        inner.cluster.set_draining(&spec.id, draining);
    }

    pub(crate) fn self_ref(&self) -> Option<Arc<Scheduler>> {
        self.me.upgrade()
    }
}

/// Places `job`'s pending tasks on free slots of `cluster`; returns the launches and whether
/// the cluster ran out of free slots.
pub fn assign_tasks(cluster: &mut Cluster, job: &mut Job) -> (Vec<Launch>, bool) {
    let mut launches = Vec::new();
    for pending in job.pending_tasks() {
        let Some(executor) = cluster.take_slot(pending.avoid.as_ref()) else {
            if !cluster.has_free_slot() {
                return (launches, true);
            }
            continue;
        };
        let stage_id = pending.stage;
        let task_id = job.task_launched(stage_id, pending.partition, &executor.id);
        let plan = job.stages[&stage_id]
            .launch_plan
            .clone()
            .expect("pending tasks belong to stages with a plan");
        launches.push(Launch {
            executor,
            task: TaskDefinition {
                task_id,
                plan,
                settings: job.settings.clone(),
            },
        });
    }
    (launches, false)
}

/// Puts `params` in for the plan's placeholders `$1`, `$2`, ..., checking their number and
/// types: a value of another numeric type is cast when it fits, anything else is refused.
fn bind_parameters(plan: LogicalPlan, params: Vec<ScalarValue>) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    if types.len() != params.len() {
        return Err(EmberError::User(format!(
            "the statement has {} parameter(s) but {} value(s) were bound",
            types.len(),
            params.len()
        )));
    }
    let mut bound = Vec::with_capacity(params.len());
    for (i, value) in params.into_iter().enumerate() {
        let name = format!("${}", i + 1);
        let expected = types
            .get(&name)
            .ok_or_else(|| EmberError::User(format!("the statement has no parameter {name}")))?;
        let value = match expected {
            Some(t) if *t != value.data_type() && !value.is_null() => {
                let got = value.data_type();
                // Clients bind Utf8 where a Parquet column is read as Utf8View, Int64 where
                // it is Int32, and so on: values of the same kind are cast.
                let compatible = (t.is_numeric() && got.is_numeric())
                    || (t.is_temporal() && got.is_temporal())
                    || (is_string(t) && is_string(&got))
                    || (is_binary(t) && is_binary(&got));
                let cast = compatible.then(|| value.cast_to(t).ok()).flatten();
                cast.ok_or_else(|| {
                    EmberError::User(format!(
                        "parameter {name} must be of type {t}, but a value of type {} was bound ({value})",
                        value.data_type()
                    ))
                })?
            }
            _ => value,
        };
        bound.push(value);
    }
    Ok(plan.with_param_values(bound)?)
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

pub(crate) fn not_leader() -> EmberError {
    EmberError::Unavailable("this scheduler is not the leader (any more); retry".into())
}

/// The DataFusion settings tasks run with: the client's, plus the execution batch size.
fn task_settings(
    ctx: &SessionContext,
    mut settings: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let batch_size = ctx.state().config().options().execution.batch_size;
    if !settings
        .iter()
        .any(|(k, _)| k == "datafusion.execution.batch_size")
    {
        settings.push((
            "datafusion.execution.batch_size".to_string(),
            batch_size.to_string(),
        ));
    }
    settings
}

fn explain_batch(
    logical: &LogicalPlan,
    physical: &Arc<dyn ExecutionPlan>,
    graph: &StageGraph,
) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    let rows = [
        ("logical_plan", logical.display_indent().to_string()),
        (
            "physical_plan",
            displayable(physical.as_ref()).indent(false).to_string(),
        ),
        ("distributed_plan", graph.display()),
    ];
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )?)
}
