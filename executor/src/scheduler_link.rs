//! The executor's side of membership: find the leading scheduler, register, heartbeat, report
//! tasks.
//!
//! Two ways to join. With `--scheduler URL[,URL…]` the executor registers with the scheduler
//! over gRPC and heartbeats keep it known (any listed scheduler works: a standby forwards to the
//! leader). With `--etcd URLS` it registers its own record under an etcd lease it keeps alive —
//! the leader watches those records, so a crashed, killed or cut-off executor is declared lost
//! when its lease ends — and it finds the leader through etcd. Either way task reports and
//! metrics go to the leader over gRPC.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ember_core::auth::{AuthChannel, CallCredentials};
use ember_core::job::{ExecutorSpec, TaskStatus};
use ember_core::meta::{KeptLease, Keys, LeaseId, MetaStore, Renewal};
use ember_core::metrics::ExecutorMetrics;
use ember_core::records::{ExecutorRecord, LeaderRecord};
use ember_core::retry::Backoff;
use ember_core::shuffle::grant::{SharedTicketKey, TicketKey};
use ember_core::{EmberError, Result};
use ember_proto::error_from_status;
use ember_proto::pb;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How the executor finds the leading scheduler.
#[derive(Debug, Clone)]
pub enum Leader {
    /// Any of these schedulers (tried in turn when one does not answer).
    Urls(Vec<String>),
    /// The one the leader record in etcd names.
    Etcd {
        store: Arc<dyn MetaStore>,
        keys: Keys,
    },
}

type Client = SchedulerServiceClient<AuthChannel>;

#[derive(Debug, Clone)]
pub struct SchedulerLink {
    leader: Leader,
    current: Arc<Mutex<Option<Client>>>,
    next: Arc<AtomicUsize>,
    /// The executor's token, for a cluster that asks for one (without mutual TLS).
    credentials: CallCredentials,
}

impl SchedulerLink {
    pub fn new(leader: Leader, credentials: CallCredentials) -> Result<Self> {
        if let Leader::Urls(urls) = &leader {
            if urls.is_empty() {
                return Err(EmberError::User("--scheduler needs a URL".into()));
            }
            for url in urls {
                ember_core::net::endpoint(url)?;
            }
        }
        Ok(Self {
            leader,
            current: Arc::new(Mutex::new(None)),
            next: Arc::new(AtomicUsize::new(0)),
            credentials,
        })
    }

    /// Parses `--scheduler`'s comma-separated list.
    pub fn urls(list: &str) -> Leader {
        Leader::Urls(
            list.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect(),
        )
    }

    async fn client(&self) -> Result<Client> {
        if let Some(c) = self.current.lock().clone() {
            return Ok(c);
        }
        let url = match &self.leader {
            Leader::Urls(urls) => urls[self.next.load(Ordering::Relaxed) % urls.len()].clone(),
            Leader::Etcd { store, keys } => {
                let record = leader_record(store.as_ref(), keys).await?.ok_or_else(|| {
                    EmberError::Unavailable("no scheduler leads the cluster yet".into())
                })?;
                format!("http://{}", record.address)
            }
        };
        let channel = ember_core::net::endpoint(&url)?.connect_lazy();
        let client = SchedulerServiceClient::with_interceptor(channel, self.credentials.clone())
            .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
        *self.current.lock() = Some(client.clone());
        Ok(client)
    }

    /// After a failed call: find the leader again (next URL, or re-read etcd).
    fn failed(&self, status: &tonic::Status) -> EmberError {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ) {
            *self.current.lock() = None;
            self.next.fetch_add(1, Ordering::Relaxed);
        }
        error_from_status(status)
    }

    /// Registers; returns the cluster's ticket key.
    pub async fn register(&self, spec: &ExecutorSpec) -> Result<TicketKey> {
        let request = pb::RegisterExecutorRequest {
            executor: Some(spec.into()),
            protocol_version: ember_core::PROTOCOL_VERSION,
        };
        let mut client = self.client().await?;
        let reply = client
            .register_executor(request)
            .await
            .map_err(|s| self.failed(&s))?;
        TicketKey::from_bytes(&reply.into_inner().ticket_key)
    }

    /// Returns true when the scheduler asks the executor to register again.
    pub async fn heartbeat(
        &self,
        spec: &ExecutorSpec,
        metrics: &ExecutorMetrics,
        draining: bool,
    ) -> Result<bool> {
        let request = pb::HeartbeatRequest {
            executor_id: spec.id.to_string(),
            metrics: Some(metrics.into()),
            draining,
        };
        let mut client = self.client().await?;
        let reply = client
            .heartbeat(request)
            .await
            .map_err(|s| self.failed(&s))?;
        Ok(reply.into_inner().reregister)
    }

    pub async fn report(&self, statuses: &[TaskStatus]) -> Result<()> {
        let request = pb::UpdateTaskStatusRequest {
            statuses: statuses.iter().map(Into::into).collect(),
        };
        let mut client = self.client().await?;
        client
            .update_task_status(request)
            .await
            .map_err(|s| self.failed(&s))?;
        Ok(())
    }
}

fn drain_now(draining: &watch::Receiver<bool>) -> bool {
    *draining.borrow()
}

async fn leader_record(store: &dyn MetaStore, keys: &Keys) -> Result<Option<LeaderRecord>> {
    let Some(kv) = store.get(&keys.leader()).await? else {
        return Ok(None);
    };
    Ok(Some(ember_proto::records::decode_leader(&kv.value)?))
}

/// What the membership loops need from the executor.
pub struct Member<M, F> {
    pub spec: ExecutorSpec,
    pub metrics: M,
    /// The scheduler no longer counts on this executor (it was declared lost): the tasks it
    /// was running have been rescheduled elsewhere, and are cancelled here.
    pub forgotten: F,
    /// True once the executor drains (SIGTERM): it takes no new tasks.
    pub draining: watch::Receiver<bool>,
    pub shutdown: CancellationToken,
    /// Set while the executor is registered (what readiness reports).
    pub registered: Arc<std::sync::atomic::AtomicBool>,
    /// The cluster's key for checking shuffle grants, learnt when joining.
    pub ticket_key: SharedTicketKey,
}

/// Registers with the scheduler over gRPC (retrying while it is unreachable), then heartbeats
/// until shutdown. A refusal that retrying cannot fix (protocol mismatch) stops the executor.
pub async fn membership_loop<M, F>(
    link: SchedulerLink,
    member: Member<M, F>,
    interval: Duration,
) -> Result<()>
where
    M: Fn() -> ExecutorMetrics,
    F: Fn(),
{
    let Member {
        spec,
        metrics,
        forgotten,
        mut draining,
        shutdown,
        registered: ready,
        ticket_key,
    } = member;
    let mut registered = false;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let result = if registered {
            let drain = *draining.borrow();
            link.heartbeat(&spec, &metrics(), drain)
                .await
                .map(|again| !again)
        } else {
            link.register(&spec).await.map(|key| {
                ticket_key.set(key);
                true
            })
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
                ready.store(ok, std::sync::atomic::Ordering::Relaxed);
                backoff.reset();
            }
            Err(e) if e.is_user_error() => {
                error!(executor = %spec.id, error = %e, "the scheduler refused this executor");
                shutdown.cancel();
                return Err(e);
            }
            Err(e) => {
                warn!(executor = %spec.id, error = %e, "scheduler unreachable");
                registered = false;
                ready.store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let pause = if registered {
            interval
        } else {
            backoff.next_pause()
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = draining.changed() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Keeps this executor's record in etcd under a lease until shutdown, and sends the leader
/// heartbeats with its metrics. When the lease is found expired (the executor was frozen or cut
/// off for longer than the TTL, and the leader has rescheduled its work) it registers afresh.
/// On shutdown the lease is revoked, which tells the leader at once.
pub async fn lease_loop<M, F>(
    link: SchedulerLink,
    store: Arc<dyn MetaStore>,
    keys: Keys,
    member: Member<M, F>,
    ttl_secs: u64,
    interval: Duration,
) -> Result<()>
where
    M: Fn() -> ExecutorMetrics,
    F: Fn(),
{
    let Member {
        spec,
        metrics,
        forgotten,
        mut draining,
        shutdown,
        registered: ready,
        ticket_key,
    } = member;
    let ttl = Duration::from_secs(ttl_secs.max(1));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let lease = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = register_lease(store.as_ref(), &keys, &spec, ttl_secs, drain_now(&draining), &ticket_key) => r,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) if e.is_user_error() => {
                error!(executor = %spec.id, error = %e, "this executor cannot join the cluster");
                shutdown.cancel();
                return Err(e);
            }
            Err(e) => {
                warn!(executor = %spec.id, error = %e, "cannot register in etcd; retrying");
                if !backoff.wait(&shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        backoff.reset();
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        info!(executor = %spec.id, lease, "registered in etcd");
        let mut kept = KeptLease::new(lease, ttl);
        let mut next_beat = Instant::now();
        loop {
            let renew_in = kept.due_in();
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = store.revoke(lease).await;
                    return Ok(());
                }
                _ = draining.changed() => {
                    let drain = *draining.borrow();
                    if let Err(e) = put_record(store.as_ref(), &keys, &spec, drain, lease).await {
                        warn!(error = %e, "recording that this executor drains failed");
                    }
                    let _ = link.heartbeat(&spec, &metrics(), drain).await;
                    continue;
                }
                _ = tokio::time::sleep(renew_in.min(next_beat.saturating_duration_since(Instant::now()))) => {}
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + interval;
                // Metrics only: liveness is the lease. An unreachable leader is re-resolved.
                let drain = *draining.borrow();
                let _ = link.heartbeat(&spec, &metrics(), drain).await;
            }
            if !kept.due_in().is_zero() {
                continue;
            }
            match kept.renew(store.as_ref()).await {
                Renewal::Renewed => {}
                Renewal::Expired => {
                    warn!(executor = %spec.id, "the lease expired: this executor was declared lost; registering again");
                    ready.store(false, std::sync::atomic::Ordering::Relaxed);
                    // The leader rescheduled this executor's tasks: stop them before the new
                    // record is written, or a task launched on the new record (which gets
                    // no report once cancelled) would be cancelled with them.
                    forgotten();
                    break;
                }
                // While the store is away its leases are not counted down (etcd extends them
                // when it comes back): keep the tasks running and keep trying.
                Renewal::Failed(e) | Renewal::Lost(e) => {
                    warn!(executor = %spec.id, error = %e, "renewing the lease failed; retrying");
                }
            }
        }
    }
}

/// Checks that the leader speaks this executor's protocol, then writes the executor's record
/// under a fresh lease.
async fn register_lease(
    store: &dyn MetaStore,
    keys: &Keys,
    spec: &ExecutorSpec,
    ttl_secs: u64,
    draining: bool,
    ticket_key: &SharedTicketKey,
) -> Result<LeaseId> {
    if let Some(leader) = leader_record(store, keys).await?
        && leader.protocol_version != ember_core::PROTOCOL_VERSION
    {
        return Err(EmberError::ProtocolMismatch {
            executor_id: spec.id.to_string(),
            got: ember_core::PROTOCOL_VERSION,
            expected: leader.protocol_version,
        });
    }
    // Known to the leader means asked for shuffle data: learn the key first (the first
    // leader makes it).
    let key = ember_core::meta::ticket_key(store, keys)
        .await?
        .ok_or_else(|| {
            EmberError::Unavailable(
                "the cluster has no ticket key yet: waiting for a leader".into(),
            )
        })?;
    ticket_key.set(key);
    let lease = store.grant_lease(ttl_secs.max(1) as i64).await?;
    put_record(store, keys, spec, draining, lease).await?;
    Ok(lease)
}

async fn put_record(
    store: &dyn MetaStore,
    keys: &Keys,
    spec: &ExecutorSpec,
    draining: bool,
    lease: LeaseId,
) -> Result<()> {
    let value = ember_proto::records::encode_executor(&ExecutorRecord {
        spec: spec.clone(),
        protocol_version: ember_core::PROTOCOL_VERSION,
        draining,
    });
    store
        .put(&keys.executor(spec.id.as_str()), value, Some(lease))
        .await?;
    Ok(())
}

/// Sends task statuses to the leader, batching what has queued up, until delivered.
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
        // Until it is delivered (to whichever scheduler leads by then): a lost report would
        // leave its task running forever in the scheduler's view. Duplicates and reports of
        // attempts a new leader does not know are ignored there.
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        while let Err(e) = link.report(&batch).await {
            warn!(error = %e, tasks = batch.len(), "reporting task statuses failed; retrying");
            if !backoff.wait(&shutdown).await {
                return;
            }
        }
    }
}
