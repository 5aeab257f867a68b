//! `EmberClient`: a connection to a scheduler.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::LogicalPlan;
use ember_core::job::{ExecutorInfo, JobState, JobStatus};
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

/// How long one status request waits for progress on the server.
const POLL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct EmberClient {
    scheduler: SchedulerServiceClient<Channel>,
    fetcher: Arc<FlightFetcher>,
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
    /// Connects to the scheduler at `url` (`http://HOST:PORT`).
    pub async fn connect(url: &str) -> Result<Self> {
        let channel = ember_core::net::endpoint(url)?
            .connect()
            .await
            .map_err(|e| {
                EmberError::Unavailable(format!("cannot reach the scheduler at {url}: {e}"))
            })?;
        Ok(Self {
            scheduler: SchedulerServiceClient::new(channel)
                .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES),
            fetcher: Arc::new(FlightFetcher::new()),
        })
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
        let request = pb::ExecuteQueryRequest {
            query: Some(pb::execute_query_request::Query::LogicalPlan(bytes)),
            settings: Default::default(),
        };
        self.execute(request).await
    }

    async fn execute(&self, request: pb::ExecuteQueryRequest) -> Result<JobId> {
        let reply = self
            .scheduler
            .clone()
            .execute_query(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(JobId::from(reply.into_inner().job_id))
    }

    /// The job's status now, or after up to `wait` if it makes progress before.
    pub async fn status(&self, job_id: &JobId, wait: Duration) -> Result<JobStatus> {
        let request = pb::GetJobStatusRequest {
            job_id: job_id.to_string(),
            wait_ms: wait.as_millis() as u64,
        };
        let reply = self
            .scheduler
            .clone()
            .get_job_status(request)
            .await
            .map_err(|s| error_from_status(&s))?;
        let status = reply
            .into_inner()
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
                        user_error: true,
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

    /// Collects a succeeded job's result and frees it on the cluster.
    pub async fn collect(&self, status: JobStatus) -> Result<QueryResult> {
        let (schema, stream) = self.fetch(&status)?;
        let batches = stream.try_collect().await;
        let _ = self.release(&status.job_id).await;
        Ok(QueryResult {
            schema,
            batches: batches?,
            status,
        })
    }

    /// Frees a job's result data on the executors.
    pub async fn release(&self, job_id: &JobId) -> Result<()> {
        self.scheduler
            .clone()
            .release_job(pb::ReleaseJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(())
    }

    pub async fn cancel(&self, job_id: &JobId) -> Result<bool> {
        let reply = self
            .scheduler
            .clone()
            .cancel_job(pb::CancelJobRequest {
                job_id: job_id.to_string(),
            })
            .await
            .map_err(|s| error_from_status(&s))?;
        Ok(reply.into_inner().cancelled)
    }

    /// The registered executors with their counters, and the rows the scheduler itself scanned.
    pub async fn executors(&self) -> Result<(Vec<ExecutorInfo>, u64)> {
        let reply = self
            .scheduler
            .clone()
            .list_executors(pb::ListExecutorsRequest {})
            .await
            .map_err(|s| error_from_status(&s))?
            .into_inner();
        let executors = reply
            .executors
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<Vec<_>>>()?;
        Ok((executors, reply.scheduler_rows_scanned))
    }
}
