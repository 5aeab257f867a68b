//! Runs tasks: decodes a stage plan, executes one partition of it, and reports the outcome.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::common::collect;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_core::EmberError;
use ember_core::error::{ErrorKind, datafusion_error_kind, find_ember_error};
use ember_core::job::{TaskDefinition, TaskOutcome, TaskStatus};
use ember_core::metrics::{ExecutorCounters, file_rows_scanned, plan_spills};
use ember_core::session::distributed_session_config;
use ember_core::shuffle::{ShuffleEnv, ShuffleWriterExec};
use ember_core::task_metrics::{TaskMemoryPool, TaskMetrics};
use ember_core::{ExecutorId, TaskId};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

/// Runs up to `slots` tasks at once and sends each finished task's status to `reports`.
pub struct TaskRunner {
    executor_id: ExecutorId,
    env: Arc<ShuffleEnv>,
    base: TaskContext,
    slots: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<TaskId, CancellationToken>>>,
    /// Tasks cancelled before their launch arrived.
    cancelled: Mutex<HashSet<TaskId>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    reports: mpsc::UnboundedSender<TaskStatus>,
    /// Set when the executor drains: launches are refused.
    draining: std::sync::atomic::AtomicBool,
}

impl TaskRunner {
    /// `runtime` holds the memory pool and spill directory every task shares.
    pub fn new(
        env: Arc<ShuffleEnv>,
        slots: usize,
        reports: mpsc::UnboundedSender<TaskStatus>,
        shutdown: CancellationToken,
        runtime: Arc<RuntimeEnv>,
    ) -> Self {
        Self {
            executor_id: env.executor_id.clone(),
            env,
            base: TaskContext::from(&SessionContext::new_with_config_rt(
                SessionConfig::new(),
                runtime,
            )),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            running: Arc::default(),
            cancelled: Mutex::default(),
            tracker: TaskTracker::new(),
            shutdown,
            reports,
            draining: Default::default(),
        }
    }

    /// Refuse new tasks from now on (the executor is shutting down).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Tasks launched and not finished.
    pub fn running(&self) -> usize {
        self.running.lock().len()
    }

    pub fn counters(&self) -> &Arc<ExecutorCounters> {
        &self.env.counters
    }

    pub fn launch(&self, task: TaskDefinition) {
        // A cancel that overtook its launch: the task must not run.
        if self.cancelled.lock().remove(&task.task_id) {
            debug!(task = %task.task_id, "task cancelled before it arrived");
            return;
        }
        let token = self.shutdown.child_token();
        self.running
            .lock()
            .insert(task.task_id.clone(), token.clone());
        let slots = Arc::clone(&self.slots);
        let running = Arc::clone(&self.running);
        let reports = self.reports.clone();
        let ctx = self.task_context(&task);
        let env = Arc::clone(&self.env);
        let executor_id = self.executor_id.clone();
        // Every log line of the task carries its job, stage, partition and attempt.
        let span = tracing::info_span!(
            "task",
            job_id = %task.task_id.job_id,
            stage = %task.task_id.stage_id,
            partition = task.task_id.partition,
            attempt = task.task_id.attempt,
        );
        // Exported traces: the task's span is a child of its job's.
        ember_core::telemetry::set_parent(&span, &task.trace_parent);
        let task_run = async move {
            let task_id = task.task_id.clone();
            let outcome = tokio::select! {
                _ = token.cancelled() => None,
                outcome = async {
                    let _permit = slots.acquire_owned().await.ok();
                    let started = Instant::now();
                    // A panic inside DataFusion fails the task instead of losing its report.
                    let outcome = AssertUnwindSafe(run(ctx, &task, started))
                        .catch_unwind()
                        .await;
                    env.counters.task_seconds.observe(started.elapsed());
                    outcome
                        .unwrap_or_else(|panic| TaskOutcome::Failed {
                            message: format!("task panicked: {}", ember_core::error::panic_message(panic.as_ref())),
                            kind: ErrorKind::Internal,
                        })
                } => Some(outcome),
            };
            running.lock().remove(&task_id);
            let Some(outcome) = outcome else {
                debug!(task = %task_id, "task cancelled");
                return;
            };
            let counters = &env.counters;
            match &outcome {
                TaskOutcome::Succeeded { rows_scanned, .. } => {
                    ExecutorCounters::add(&counters.tasks_completed, 1);
                    ExecutorCounters::add(&counters.rows_scanned, *rows_scanned);
                }
                TaskOutcome::Failed { message, .. } => {
                    warn!(task = %task_id, %message, "task failed");
                    ExecutorCounters::add(&counters.tasks_failed, 1);
                }
                TaskOutcome::FetchFailed {
                    executor_id: from,
                    message,
                    ..
                } => {
                    warn!(task = %task_id, %from, %message, "task could not fetch its input");
                    ExecutorCounters::add(&counters.tasks_failed, 1);
                }
            }
            let _ = reports.send(TaskStatus {
                task_id,
                executor_id,
                outcome,
            });
        };
        self.tracker.spawn(task_run.instrument(span));
    }

    /// Cancels a task; a task not started yet is remembered so that its launch is dropped.
    pub fn cancel(&self, task_id: &TaskId) {
        match self.running.lock().remove(task_id) {
            Some(token) => token.cancel(),
            None => {
                self.cancelled.lock().insert(task_id.clone());
            }
        }
    }

    /// Cancels every running task (the scheduler forgot this executor, and with it the tasks).
    pub fn cancel_all(&self) {
        for (_, token) in self.running.lock().drain() {
            token.cancel();
        }
    }

    /// Forgets cancel records of a job whose data is gone.
    pub fn forget_job(&self, job_id: &str) {
        self.cancelled
            .lock()
            .retain(|t| t.job_id.as_str() != job_id);
    }

    fn task_context(&self, task: &TaskDefinition) -> Result<Arc<TaskContext>, DataFusionError> {
        let mut config = distributed_session_config(SessionConfig::new());
        for (key, value) in &task.settings {
            config.options_mut().set(key, value)?;
        }
        let config = config
            .with_extension(Arc::clone(&self.env))
            .with_extension(Arc::new(ember_core::write::TaskAttempt(
                task.task_id.attempt,
            )));
        let ctx = TaskContext::new(
            Some(task.task_id.to_string()),
            self.base.session_id(),
            config,
            self.base.scalar_functions().clone(),
            self.base.higher_order_functions().clone(),
            self.base.aggregate_functions().clone(),
            self.base.window_functions().clone(),
            self.task_runtime()?,
        );
        Ok(Arc::new(ctx))
    }

    /// The executor's runtime, with a memory pool that counts what this task holds (all tasks
    /// still share one pool and its limit).
    fn task_runtime(&self) -> Result<Arc<RuntimeEnv>, DataFusionError> {
        let shared = self.base.runtime_env();
        let pool = Arc::new(TaskMemoryPool::new(Arc::clone(&shared.memory_pool)));
        RuntimeEnvBuilder::from_runtime_env(&shared)
            .with_memory_pool(pool)
            .build_arc()
    }

    /// Waits for running tasks to end (after the shutdown token was cancelled).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn run(
    ctx: Result<Arc<TaskContext>, DataFusionError>,
    task: &TaskDefinition,
    started: Instant,
) -> TaskOutcome {
    let limit = ctx.as_ref().ok().map(|c| c.memory_pool().memory_limit());
    match execute(ctx, task, started).await {
        Ok(outcome) => outcome,
        Err(e) => match find_ember_error(&e) {
            Some(EmberError::FetchFailed {
                executor_id,
                stage_id,
                message,
                ..
            }) => TaskOutcome::FetchFailed {
                executor_id: executor_id.as_str().into(),
                stage_id: *stage_id,
                message: message.clone(),
            },
            _ if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                let limit = match limit {
                    Some(MemoryLimit::Finite(bytes)) => format!("{} MiB", bytes >> 20),
                    _ => "unknown".to_string(),
                };
                TaskOutcome::Failed {
                    message: format!(
                        "{e} (the executor's memory limit is {limit}: raise --memory-limit-mb, \
                         or run fewer tasks at once with --slots)"
                    ),
                    kind: ErrorKind::ResourcesExhausted,
                }
            }
            _ => TaskOutcome::Failed {
                message: e.to_string(),
                kind: datafusion_error_kind(&e),
            },
        },
    }
}

async fn execute(
    ctx: Result<Arc<TaskContext>, DataFusionError>,
    task: &TaskDefinition,
    started: Instant,
) -> Result<TaskOutcome, DataFusionError> {
    let ctx = ctx?;
    let plan = ember_proto::decode_plan(&task.plan, &ctx)?;
    let writer = plan.downcast_ref::<ShuffleWriterExec>().ok_or_else(|| {
        DataFusionError::Internal(format!(
            "stage plan root is {}, not a shuffle writer",
            plan.name()
        ))
    })?;
    let partitions = writer.output().partition_count();
    debug!(
        task = %task.task_id,
        plan = %datafusion::physical_plan::displayable(plan.as_ref()).indent(false),
        "running task"
    );
    let stream = plan.execute(task.task_id.partition as usize, Arc::clone(&ctx))?;
    let summary = collect(stream).await?;
    let (spills, spilled) = plan_spills(&plan);
    if let Some(env) = ctx.session_config().get_extension::<ShuffleEnv>() {
        ExecutorCounters::add(&env.counters.spill_count, spills);
        ExecutorCounters::add(&env.counters.spilled_bytes, spilled);
    }
    debug!(
        task = %task.task_id,
        metrics = %datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(false),
        "task done"
    );
    let peak_memory = ctx
        .memory_pool()
        .downcast_ref::<TaskMemoryPool>()
        .map_or(0, TaskMemoryPool::peak);
    Ok(TaskOutcome::Succeeded {
        partitions: ShuffleWriterExec::stats_from_summary(&summary, partitions),
        rows_scanned: file_rows_scanned(&plan),
        metrics: TaskMetrics::of_plan(&plan, started.elapsed().as_millis() as u64, peak_memory),
    })
}
