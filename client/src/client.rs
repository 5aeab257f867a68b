//! `EmberClient`: a connection to a scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ember_core::meta::{EtcdStore, Keys, MetaStore};
use parking_lot::Mutex;
use prost::Message;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use ember_core::auth::{AuthChannel, CallCredentials};
use ember_core::error::ErrorKind;
use ember_core::job::{ExecutorInfo, JobState, JobStatus};
use ember_core::retry::Backoff;
use ember_core::shuffle::{
    FlightFetcher, PartitionLocation, batches_from_ipc_stream, flight_data_stream,
    schema_from_bytes,
};
use ember_core::{EmberError, JobId, Result};
use ember_proto::error_from_status;
use ember_proto::pb;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use tonic::transport::Channel;

/// A batch job's status, as `ember jobs status` shows it.
pub use ember_core::job::ScriptStatus;

/// How often a waiting client asks how a batch job is doing.
const SCRIPT_POLL: Duration = Duration::from_millis(250);

/// How long one status request waits for progress on the server.
const POLL: Duration = Duration::from_secs(10);

/// How long calls keep retrying while no scheduler answers (a leader failover takes up to the
/// leader TTL plus the new leader's recovery).
const FAILOVER: Duration = Duration::from_secs(90);

/// The schedulers a client knows, each by its URL with a channel to it.
type Schedulers = Arc<Mutex<Vec<(String, Channel)>>>;

/// A scheduler's gRPC client, whose calls carry the client's credentials.
type Scheduler = SchedulerServiceClient<AuthChannel>;

/// A connection to an Ember cluster through one or more of its schedulers. Calls that find
/// no scheduler able to answer (it died, or an election is under way) try the next address
/// and retry for a while, so a client waiting on a job keeps waiting through a failover.
#[derive(Debug, Clone)]
pub struct EmberClient {
    schedulers: Schedulers,
    current: Arc<AtomicUsize>,
    /// With etcd, the leader is looked up there again whenever it stops answering.
    etcd: Option<(Arc<dyn MetaStore>, Keys)>,
    fetcher: Arc<FlightFetcher>,
    /// What every call to a scheduler carries (a token, or nothing).
    credentials: CallCredentials,
}

fn scheduler_channel(url: &str) -> Result<Channel> {
    Ok(ember_core::net::endpoint(url)?.connect_lazy())
}

/// The URL of the leading scheduler, as its record in etcd gives it.
async fn leader_url(store: &dyn MetaStore, keys: &Keys) -> Result<Option<String>> {
    let Some(kv) = store.get(&keys.leader()).await? else {
        return Ok(None);
    };
    let record = ember_proto::records::decode_leader(&kv.value)?;
    Ok(Some(format!("http://{}", record.address)))
}

/// A finished query: its schema, its rows, and the job's final status.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub status: JobStatus,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

impl EmberClient {
    /// Connects to the scheduler at `url` (`http://HOST:PORT`), or to any of several given
    /// comma-separated: the first that answers is used, the others when it stops answering.
    pub async fn connect(url: &str) -> Result<Self> {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(EmberError::User("no scheduler URL given".into()));
        }
        let mut schedulers = Vec::new();
        for url in &urls {
            schedulers.push((url.to_string(), scheduler_channel(url)?));
        }
        let mut errors = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            match ember_core::net::endpoint(url)?.connect().await {
                Ok(_) => {
                    return Ok(Self {
                        schedulers: Arc::new(Mutex::new(schedulers)),
                        current: Arc::new(AtomicUsize::new(i)),
                        etcd: None,
                        fetcher: Arc::new(FlightFetcher::new()),
                        credentials: CallCredentials::default(),
                    });
                }
                Err(e) => errors.push(format!("{url}: {}", ember_core::net::describe(&e))),
            }
        }
        Err(EmberError::Unavailable(format!(
            "cannot reach the scheduler at {}",
            errors.join("; ")
        )))
    }

    /// Connects to the cluster `address` names (its schedulers, or etcd); `None` when it
    /// names neither.
    pub async fn connect_to(address: &ember_core::options::ClusterAddress) -> Result<Option<Self>> {
        address.connection.tls.install()?;
        let credentials = address.token.credentials()?;
        let client = match (&address.scheduler, &address.connection.etcd) {
            (Some(urls), _) => Self::connect(urls).await?,
            (None, Some(etcd)) => {
                Self::connect_etcd(etcd, &address.connection.cluster_name).await?
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(client.with_credentials(credentials)))
    }

    /// The same connection, calling with `token` (an API token, or a session token).
    pub fn with_token(self, token: &str) -> Result<Self> {
        Ok(self.with_credentials(CallCredentials::token(token)?))
    }

    fn with_credentials(mut self, credentials: CallCredentials) -> Self {
        self.credentials = credentials;
        self
    }

    fn scheduler(&self, channel: Channel) -> Scheduler {
        SchedulerServiceClient::with_interceptor(channel, self.credentials.clone())
            .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
    }

    /// Connects to the cluster named `cluster` through etcd (`urls`: comma-separated
    /// `http://host:port`): the leading scheduler is found there, and again after a failover.
    pub async fn connect_etcd(urls: &str, cluster: &str) -> Result<Self> {
        let store: Arc<dyn MetaStore> = Arc::new(EtcdStore::connect(urls).await?);
        let keys = Keys::new(cluster);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let url = loop {
            match leader_url(store.as_ref(), &keys).await {
                Ok(Some(url)) => break url,
                Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => {
                    return Err(EmberError::Unavailable(format!(
                        "no scheduler leads cluster {cluster:?} in etcd at {urls}"
                    )));
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Self {
            schedulers: Arc::new(Mutex::new(vec![(url.clone(), scheduler_channel(&url)?)])),
            current: Arc::new(AtomicUsize::new(0)),
            etcd: Some((store, keys)),
            fetcher: Arc::new(FlightFetcher::new()),
            credentials: CallCredentials::default(),
        })
    }

    /// After a scheduler did not answer: the next address, or the leader etcd names now.
    async fn next_scheduler(&self, failed: usize) {
        if let Some((store, keys)) = &self.etcd {
            if let Ok(Some(url)) = leader_url(store.as_ref(), keys).await
                && let Ok(client) = scheduler_channel(&url)
            {
                let mut schedulers = self.schedulers.lock();
                if schedulers[0].0 != url {
                    *schedulers = vec![(url, client)];
                }
            }
            return;
        }
        let n = self.schedulers.lock().len();
        let _ = self.current.compare_exchange(
            failed,
            (failed + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Runs one call on the current scheduler; while none can answer (unreachable, or no
    /// leader yet) moves to the next address and retries, up to [`FAILOVER`]. A call that is
    /// not `idempotent` is retried only when it surely did not reach a leader.
    async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T>
    where
        F: Fn(Scheduler) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + FAILOVER;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            let (i, url, client) = {
                let schedulers = self.schedulers.lock();
                let i = self.current.load(Ordering::Relaxed) % schedulers.len();
                (i, schedulers[i].0.clone(), schedulers[i].1.clone())
            };
            match f(self.scheduler(client)).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if retryable(&status, idempotent) => {
                    let pause = backoff.next_pause();
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(EmberError::Unavailable(format!(
                            "no scheduler answered for {} s (last: {url}: {})",
                            FAILOVER.as_secs(),
                            status.message()
                        )));
                    }
                    tracing::debug!(%url, error = %status.message(), "scheduler unavailable; trying again");
                    tokio::time::sleep(pause).await;
                    self.next_scheduler(i).await;
                }
                Err(status) => return Err(error_from_status(&status)),
            }
        }
    }

    /// Submits a statement; returns its job id once planned (planning errors come back here).
    pub async fn submit(&self, sql: &str) -> Result<JobId> {
        self.submit_with_settings(sql, &[]).await
    }

    pub async fn submit_with_settings(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
    ) -> Result<JobId> {
        let request = pb::ExecuteQueryRequest {
            query: Some(pb::execute_query_request::Query::Sql(sql.to_string())),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.execute(request).await
    }

    /// Submits a DataFusion logical plan, e.g. one built with DataFusion's DataFrame API over
    /// tables whose files the cluster can read.
    pub async fn submit_plan(&self, plan: &LogicalPlan) -> Result<JobId> {
        let bytes = datafusion_proto::bytes::logical_plan_to_bytes(plan)
            .map_err(|e| EmberError::User(format!("cannot send this plan: {e}")))?;
        self.submit_plan_bytes(bytes.to_vec()).await
    }

    /// Submits a logical plan already encoded with datafusion-proto.
    pub async fn submit_plan_bytes(&self, bytes: Vec<u8>) -> Result<JobId> {
        let request = pb::ExecuteQueryRequest {
            query: Some(pb::execute_query_request::Query::LogicalPlan(bytes.into())),
            settings: Default::default(),
        };
        self.execute(request).await
    }

    async fn execute(&self, request: pb::ExecuteQueryRequest) -> Result<JobId> {
        let reply = self
            .call(false, |mut c| {
                let request = request.clone();
                async move { c.execute_query(request).await }
            })
            .await?;
        Ok(JobId::from(reply.job_id))
    }

    /// The job's status now, or after up to `wait` if it makes progress before.
    pub async fn status(&self, job_id: &JobId, wait: Duration) -> Result<JobStatus> {
        let request = pb::GetJobStatusRequest {
            job_id: job_id.to_string(),
            wait_ms: wait.as_millis() as u64,
        };
        let reply = self
            .call(true, |mut c| {
                let request = request.clone();
                async move { c.get_job_status(request).await }
            })
            .await?;
        let status = reply
            .status
            .ok_or_else(|| EmberError::InvalidMessage("missing field status".into()))?;
        status.try_into()
    }

    /// Waits for the job to finish; `progress` sees every status on the way. A failed or
    /// cancelled job is an error carrying its cause.
    pub async fn wait(
        &self,
        job_id: &JobId,
        mut progress: impl FnMut(&JobStatus),
    ) -> Result<JobStatus> {
        loop {
            let status = self.status(job_id, POLL).await?;
            progress(&status);
            match status.state {
                JobState::Succeeded => return Ok(status),
                JobState::Failed => {
                    return Err(EmberError::TaskFailed {
                        message: status.error.unwrap_or_else(|| "job failed".into()),
                        kind: status.error_kind.unwrap_or(ErrorKind::Internal),
                    });
                }
                JobState::Cancelled => return Err(EmberError::Cancelled),
                JobState::Queued | JobState::Running => {}
            }
        }
    }

    /// Streams a succeeded job's result, partition by partition in order.
    pub fn fetch(
        &self,
        status: &JobStatus,
    ) -> Result<(SchemaRef, BoxStream<'static, Result<RecordBatch>>)> {
        let schema = Arc::new(schema_from_bytes(&status.result_schema)?);
        if !status.inline_result.is_empty() {
            let batches = batches_from_ipc_stream(&status.inline_result)?;
            return Ok((schema, stream::iter(batches.into_iter().map(Ok)).boxed()));
        }
        let locations: Vec<PartitionLocation> =
            status.result_partitions.iter().flatten().cloned().collect();
        let fetcher = Arc::clone(&self.fetcher);
        let batches = stream::iter(locations)
            .map(move |location| {
                let fetcher = Arc::clone(&fetcher);
                async move {
                    let data = fetcher.fetch(&location, None).await?;
                    Ok::<_, EmberError>(
                        flight_data_stream(data)
                            .map_err(move |e| location.fetch_failed(e.to_string())),
                    )
                }
            })
            .buffered(4)
            .try_flatten();
        Ok((schema, batches.boxed()))
    }

    /// Runs a statement to completion and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult> {
        let job_id = self.submit(sql).await?;
        let status = self.wait(&job_id, |_| {}).await?;
        self.collect(status).await
    }

    /// Collects a succeeded job's result and frees it on the cluster. When the executors
    /// cannot be reached from here (a client outside the cluster's network), the result comes
    /// through the scheduler instead.
    pub async fn collect(&self, status: JobStatus) -> Result<QueryResult> {
        let (schema, stream) = self.fetch(&status)?;
        let batches = match stream.try_collect::<Vec<_>>().await {
            Err(EmberError::FetchFailed { message, .. }) if status.inline_result.is_empty() => {
                tracing::debug!(%message, "executors unreachable; reading the result through the scheduler");
                self.fetch_via_scheduler(&status.job_id).await
            }
            other => other,
        };
        let _ = self.release(&status.job_id).await;
        Ok(QueryResult {
            schema,
            batches: batches?,
            status,
        })
    }

    /// A finished job's result as the scheduler streams it (its Flight SQL `DoGet`).
    async fn fetch_via_scheduler(&self, job_id: &JobId) -> Result<Vec<RecordBatch>> {
        use arrow_flight::sql::{ProstMessageExt, TicketStatementQuery};
        let url = {
            let schedulers = self.schedulers.lock();
            schedulers[self.current.load(Ordering::Relaxed) % schedulers.len()]
                .0
                .clone()
        };
        let channel = ember_core::net::endpoint(&url)?.connect_lazy();
        let mut flight =
            arrow_flight::flight_service_client::FlightServiceClient::with_interceptor(
                channel,
                self.credentials.clone(),
            )
            .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
        let ticket = TicketStatementQuery {
            statement_handle: job_id.to_string().into(),
        };
        let ticket = arrow_flight::Ticket::new(ticket.as_any().encode_to_vec());
        let data = flight
            .do_get(ticket)
            .await
            .map_err(|s| error_from_status(&s))?
            .into_inner()
            .map_err(arrow_flight::error::FlightError::from);
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
            .try_collect()
            .await
            .map_err(|e| EmberError::Unavailable(format!("reading the result from {url}: {e}")))
    }

    /// Frees a job's result data on the executors.
    pub async fn release(&self, job_id: &JobId) -> Result<()> {
        let request = pb::ReleaseJobRequest {
            job_id: job_id.to_string(),
        };
        self.call(true, |mut c| {
            let request = request.clone();
            async move { c.release_job(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn cancel(&self, job_id: &JobId) -> Result<bool> {
        let request = pb::CancelJobRequest {
            job_id: job_id.to_string(),
        };
        let reply = self
            .call(true, |mut c| {
                let request = request.clone();
                async move { c.cancel_job(request).await }
            })
            .await?;
        Ok(reply.cancelled)
    }

    /// Submits a batch job: `statements` run in order on the cluster, whether or not this
    /// client stays connected. Returns the script's id.
    pub async fn submit_script(
        &self,
        name: &str,
        statements: Vec<String>,
        settings: &[(&str, &str)],
    ) -> Result<String> {
        let request = pb::SubmitScriptRequest {
            name: name.to_string(),
            statements,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let reply = self
            .call(false, |mut c| {
                let request = request.clone();
                async move { c.submit_script(request).await }
            })
            .await?;
        Ok(reply.script_id)
    }

    /// Batch jobs the cluster knows (all of them, or the one with `id`), newest first.
    pub async fn scripts(&self, id: Option<&str>) -> Result<Vec<ScriptStatus>> {
        let request = pb::ListScriptsRequest {
            script_id: id.unwrap_or_default().to_string(),
        };
        let reply = self
            .call(true, |mut c| {
                let request = request.clone();
                async move { c.list_scripts(request).await }
            })
            .await?;
        reply.scripts.into_iter().map(TryInto::try_into).collect()
    }

    /// Waits for a batch job to finish; `progress` sees its status on the way. A failed or
    /// cancelled script is an error carrying its cause.
    pub async fn wait_script(
        &self,
        id: &str,
        mut progress: impl FnMut(&ScriptStatus),
    ) -> Result<ScriptStatus> {
        loop {
            let status =
                self.scripts(Some(id))
                    .await?
                    .pop()
                    .ok_or_else(|| EmberError::JobNotFound {
                        job_id: id.to_string(),
                    })?;
            progress(&status);
            match status.state {
                JobState::Succeeded => return Ok(status),
                JobState::Failed => {
                    return Err(EmberError::TaskFailed {
                        message: status.error.clone().unwrap_or_default(),
                        kind: status.error_kind.unwrap_or(ErrorKind::Internal),
                    });
                }
                JobState::Cancelled => return Err(EmberError::Cancelled),
                JobState::Queued | JobState::Running => tokio::time::sleep(SCRIPT_POLL).await,
            }
        }
    }

    /// The registered executors with their counters, and the rows the scheduler itself scanned.
    pub async fn executors(&self) -> Result<(Vec<ExecutorInfo>, u64)> {
        let reply = self
            .call(true, |mut c| async move {
                c.list_executors(pb::ListExecutorsRequest {}).await
            })
            .await?;
        let executors = reply
            .executors
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<Vec<_>>>()?;
        Ok((executors, reply.scheduler_rows_scanned))
    }
}

/// Whether a failed call may be tried again (elsewhere): the scheduler was unreachable or had
/// no leader; for idempotent calls also a connection that broke mid-call.
fn retryable(status: &tonic::Status, idempotent: bool) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Cancelled => idempotent,
        _ => false,
    }
}
