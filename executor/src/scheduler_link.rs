//! The executor's side of membership: register with the scheduler, heartbeat, report tasks.
//! Registration goes to the scheduler directly today; it is the seam a coordination service
//! (etcd) replaces.

use std::time::Duration;

use ember_core::Result;
use ember_core::job::{ExecutorSpec, TaskStatus};
use ember_core::metrics::ExecutorMetrics;
use ember_proto::error_from_status;
use ember_proto::pb;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{error, info, warn};

#[derive(Debug, Clone)]
pub struct SchedulerLink {
    client: SchedulerServiceClient<Channel>,
}

impl SchedulerLink {
    pub fn new(url: &str) -> Result<Self> {
        let client = SchedulerServiceClient::new(ember_core::net::endpoint(url)?.connect_lazy())
            .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
        Ok(Self { client })
    }

    pub async fn register(&self, spec: &ExecutorSpec) -> Result<()> {
        let request = pb::RegisterExecutorRequest {
            executor: Some(spec.into()),
            protocol_version: ember_core::PROTOCOL_VERSION,
        };
        self.client
            .clone()
            .register_executor(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    /// Returns true when the scheduler asks the executor to register again.
    pub async fn heartbeat(&self, spec: &ExecutorSpec, metrics: &ExecutorMetrics) -> Result<bool> {
        let request = pb::HeartbeatRequest {
            executor_id: spec.id.to_string(),
            metrics: Some(metrics.into()),
            draining: false,
        };
        let reply = self
            .client
            .clone()
            .heartbeat(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(reply.into_inner().reregister)
    }

    pub async fn report(&self, statuses: &[TaskStatus]) -> Result<()> {
        let request = pb::UpdateTaskStatusRequest {
            statuses: statuses.iter().map(Into::into).collect(),
        };
        self.client
            .clone()
            .update_task_status(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(())
    }
}

/// Registers (retrying while the scheduler is unreachable), then heartbeats until shutdown.
/// A refusal that retrying cannot fix (protocol mismatch) stops the executor.
/// `forgotten` runs when the scheduler no longer knows this executor (it was declared lost):
/// the tasks it was running are no longer expected, and are cancelled.
pub async fn membership_loop(
    link: SchedulerLink,
    spec: ExecutorSpec,
    interval: Duration,
    metrics: impl Fn() -> ExecutorMetrics,
    forgotten: impl Fn(),
    shutdown: CancellationToken,
) -> Result<()> {
    let mut registered = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = if registered {
            link.heartbeat(&spec, &metrics()).await.map(|again| !again)
        } else {
            link.register(&spec).await.map(|()| true)
        };
        match result {
            Ok(ok) => {
                if !registered && ok {
                    info!(executor = %spec.id, "registered with the scheduler");
                }
                if registered && !ok {
                    warn!(executor = %spec.id, "the scheduler forgot this executor; re-registering");
                    forgotten();
                }
                registered = ok;
                backoff = Duration::from_millis(100);
            }
            Err(e) if e.is_user_error() => {
                error!(executor = %spec.id, error = %e, "the scheduler refused this executor");
                shutdown.cancel();
                return Err(e);
            }
            Err(e) => {
                warn!(executor = %spec.id, error = %e, "scheduler unreachable");
                registered = false;
            }
        }
        let pause = if registered { interval } else { backoff };
        backoff = (backoff * 2).min(Duration::from_secs(2));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Sends task statuses to the scheduler, batching what has queued up, retrying briefly.
pub async fn report_loop(
    link: SchedulerLink,
    mut statuses: mpsc::UnboundedReceiver<TaskStatus>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = statuses.recv() => match s { Some(s) => s, None => return },
        };
        let mut batch = vec![first];
        while let Ok(more) = statuses.try_recv() {
            batch.push(more);
        }
        // Until it is delivered: a lost report would leave its task running forever in the
        // scheduler's view. Duplicates are harmless (the scheduler ignores them).
        let mut delay = Duration::from_millis(50);
        while let Err(e) = link.report(&batch).await {
            warn!(error = %e, tasks = batch.len(), "reporting task statuses failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
