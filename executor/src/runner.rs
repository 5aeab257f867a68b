//! Runs tasks: decodes a stage plan, executes one partition of it, and reports the outcome.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::common::collect;
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_core::error::datafusion_is_user_error;
use ember_core::job::{TaskDefinition, TaskOutcome, TaskStatus};
use ember_core::metrics::{ExecutorCounters, file_rows_scanned};
use ember_core::session::distributed_session_config;
use ember_core::shuffle::{ShuffleEnv, ShuffleWriterExec};
use ember_core::{ExecutorId, TaskId};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Runs up to `slots` tasks at once and sends each finished task's status to `reports`.
pub struct TaskRunner {
    executor_id: ExecutorId,
    env: Arc<ShuffleEnv>,
    base: TaskContext,
    slots: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<TaskId, CancellationToken>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    reports: mpsc::UnboundedSender<TaskStatus>,
}

impl TaskRunner {
    pub fn new(
        env: Arc<ShuffleEnv>,
        slots: usize,
        reports: mpsc::UnboundedSender<TaskStatus>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            executor_id: env.executor_id.clone(),
            env,
            base: TaskContext::from(&SessionContext::new()),
            slots: Arc::new(Semaphore::new(slots.max(1))),
            running: Arc::default(),
            tracker: TaskTracker::new(),
            shutdown,
            reports,
        }
    }

    pub fn counters(&self) -> &Arc<ExecutorCounters> {
        &self.env.counters
    }

    pub fn launch(&self, task: TaskDefinition) {
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
        self.tracker.spawn(async move {
            let task_id = task.task_id.clone();
            let outcome = tokio::select! {
                _ = token.cancelled() => None,
                outcome = async {
                    let _permit = slots.acquire_owned().await.ok();
                    run(ctx, &task).await
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
            }
            let _ = reports.send(TaskStatus {
                task_id,
                executor_id,
                outcome,
            });
        });
    }

    pub fn cancel(&self, task_id: &TaskId) {
        if let Some(token) = self.running.lock().remove(task_id) {
            token.cancel();
        }
    }

    fn task_context(&self, task: &TaskDefinition) -> Result<Arc<TaskContext>, DataFusionError> {
        let mut config = distributed_session_config(SessionConfig::new());
        for (key, value) in &task.settings {
            config.options_mut().set(key, value)?;
        }
        let config = config.with_extension(Arc::clone(&self.env));
        let ctx = TaskContext::new(
            Some(task.task_id.to_string()),
            self.base.session_id(),
            config,
            self.base.scalar_functions().clone(),
            self.base.higher_order_functions().clone(),
            self.base.aggregate_functions().clone(),
            self.base.window_functions().clone(),
            self.base.runtime_env(),
        );
        Ok(Arc::new(ctx))
    }

    /// Waits for running tasks to end (after the shutdown token was cancelled).
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn run(ctx: Result<Arc<TaskContext>, DataFusionError>, task: &TaskDefinition) -> TaskOutcome {
    match execute(ctx, task).await {
        Ok(outcome) => outcome,
        Err(e) => TaskOutcome::Failed {
            message: e.to_string(),
            user_error: datafusion_is_user_error(&e),
        },
    }
}

async fn execute(
    ctx: Result<Arc<TaskContext>, DataFusionError>,
    task: &TaskDefinition,
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
    debug!(
        task = %task.task_id,
        metrics = %datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(false),
        "task done"
    );
    Ok(TaskOutcome::Succeeded {
        partitions: ShuffleWriterExec::stats_from_summary(&summary, partitions),
        rows_scanned: file_rows_scanned(&plan),
    })
}
