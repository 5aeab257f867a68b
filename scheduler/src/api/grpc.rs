//! The scheduler's gRPC service: each handler converts the request, calls the scheduler once,
//! and converts the reply.

use std::sync::Arc;
use std::time::Duration;

use ember_core::job::{ExecutorSpec, TaskStatus};
use ember_core::tls::Role as PeerRole;
use ember_core::{EmberError, JobId};
use ember_proto::convert::required;
use ember_proto::pb;
use ember_proto::pb::scheduler_service_server::SchedulerService;
use ember_proto::status_from_error;
use tonic::{Request, Response, Status};

use ember_core::net::Channels;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use tonic::transport::Channel;

use crate::runtime::{Query, Role, Scheduler};

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SchedulerGrpc {
    scheduler: Arc<Scheduler>,
    channels: Channels,
}

impl SchedulerGrpc {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self {
            scheduler,
            channels: Channels::default(),
        }
    }

    /// Where a request goes: `None` to this scheduler (it leads), or a client of the leader
    /// (this one stands by: it forwards, since some clients cannot follow a redirect).
    fn route(&self) -> Result<Option<SchedulerServiceClient<Channel>>, Status> {
        Ok(
            leader_channel(&self.scheduler, &self.channels)?.map(|channel| {
                SchedulerServiceClient::new(channel)
                    .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            }),
        )
    }
}

/// `None` when `scheduler` leads; a channel to the leader when it stands by; "unavailable,
/// retry" while no leader is known.
pub(crate) fn leader_channel(
    scheduler: &Scheduler,
    channels: &Channels,
) -> Result<Option<Channel>, Status> {
    match scheduler.role() {
        Role::Leader { .. } => Ok(None),
        Role::Standby {
            leader: Some(address),
        } => Ok(Some(channels.get(&address).map_err(err)?)),
        _ => Err(Status::unavailable(
            "no scheduler leads the cluster at the moment (an election is under way); retry",
        )),
    }
}

/// A failure to reach the leader is "unavailable" to the caller, who retries.
fn leader_unreachable(status: Status) -> Status {
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Cancelled => {
            Status::unavailable(format!("the leader did not answer: {}", status.message()))
        }
        _ => status,
    }
}

/// Forwards the request to the leader when this scheduler stands by.
macro_rules! forward {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut leader) = $self.route()? {
            return leader
                .$method(super::auth::forward($request))
                .await
                .map_err(leader_unreachable);
        }
    };
}

fn err(e: EmberError) -> Status {
    status_from_error(&e)
}

fn job_id(id: String) -> Result<JobId, Status> {
    if id.is_empty() {
        return Err(err(EmberError::InvalidMessage(
            "missing field job_id".into(),
        )));
    }
    Ok(JobId::from(id))
}

#[tonic::async_trait]
impl SchedulerService for SchedulerGrpc {
    async fn execute_query(
        &self,
        request: Request<pb::ExecuteQueryRequest>,
    ) -> Result<Response<pb::ExecuteQueryResponse>, Status> {
        forward!(self, request, execute_query);
        let owner = super::auth::owner(&request);
        let req = request.into_inner();
        let query = match required(req.query, "query").map_err(err)? {
            pb::execute_query_request::Query::Sql(sql) => Query::Sql(sql),
            pb::execute_query_request::Query::LogicalPlan(p) => Query::LogicalPlan(p),
        };
        let mut settings: Vec<_> = req.settings.into_iter().collect();
        settings.sort();
        let job_id = self
            .scheduler
            .submit(query, settings, owner)
            .await
            .map_err(err)?;
        Ok(Response::new(pb::ExecuteQueryResponse {
            job_id: job_id.to_string(),
        }))
    }

    async fn get_job_status(
        &self,
        request: Request<pb::GetJobStatusRequest>,
    ) -> Result<Response<pb::GetJobStatusResponse>, Status> {
        forward!(self, request, get_job_status);
        let id = job_id(request.get_ref().job_id.clone())?;
        super::auth::may_act_on(&request, self.scheduler.owner_of(&id).as_deref())?;
        let req = request.into_inner();
        let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        let status = self.scheduler.job_status(&id, wait).await.map_err(err)?;
        Ok(Response::new(pb::GetJobStatusResponse {
            status: Some((&status).into()),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        forward!(self, request, cancel_job);
        let id = job_id(request.get_ref().job_id.clone())?;
        super::auth::may_act_on(&request, self.scheduler.owner_of(&id).as_deref())?;
        if let Some(cancelled) = self.scheduler.cancel_script(id.as_str()) {
            return Ok(Response::new(pb::CancelJobResponse { cancelled }));
        }
        let cancelled = self.scheduler.cancel(&id).map_err(err)?;
        Ok(Response::new(pb::CancelJobResponse { cancelled }))
    }

    async fn release_job(
        &self,
        request: Request<pb::ReleaseJobRequest>,
    ) -> Result<Response<pb::ReleaseJobResponse>, Status> {
        forward!(self, request, release_job);
        let id = job_id(request.get_ref().job_id.clone())?;
        super::auth::may_act_on(&request, self.scheduler.owner_of(&id).as_deref())?;
        self.scheduler.release(&id).map_err(err)?;
        Ok(Response::new(pb::ReleaseJobResponse {}))
    }

    async fn register_executor(
        &self,
        request: Request<pb::RegisterExecutorRequest>,
    ) -> Result<Response<pb::RegisterExecutorResponse>, Status> {
        // Executors (or a standby forwarding for them) only.
        super::auth::require_cluster(&request, &[PeerRole::Executor, PeerRole::Scheduler])?;
        forward!(self, request, register_executor);
        let req = request.into_inner();
        let spec: ExecutorSpec = required(req.executor, "executor")
            .and_then(TryInto::try_into)
            .map_err(err)?;
        let key = self
            .scheduler
            .register_executor(spec, req.protocol_version)
            .map_err(err)?;
        Ok(Response::new(pb::RegisterExecutorResponse {
            ticket_key: key.to_bytes().into(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        // Executors (or a standby forwarding for them) only.
        super::auth::require_cluster(&request, &[PeerRole::Executor, PeerRole::Scheduler])?;
        forward!(self, request, heartbeat);
        let req = request.into_inner();
        let known = self.scheduler.heartbeat(
            &req.executor_id.into(),
            req.metrics.map(Into::into).unwrap_or_default(),
            req.draining,
        );
        Ok(Response::new(pb::HeartbeatResponse { reregister: !known }))
    }

    async fn update_task_status(
        &self,
        request: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        // Executors (or a standby forwarding for them) only.
        super::auth::require_cluster(&request, &[PeerRole::Executor, PeerRole::Scheduler])?;
        forward!(self, request, update_task_status);
        let statuses = request
            .into_inner()
            .statuses
            .into_iter()
            .map(TaskStatus::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        self.scheduler.update_task_statuses(statuses);
        Ok(Response::new(pb::UpdateTaskStatusResponse {}))
    }

    async fn submit_script(
        &self,
        request: Request<pb::SubmitScriptRequest>,
    ) -> Result<Response<pb::SubmitScriptResponse>, Status> {
        forward!(self, request, submit_script);
        let owner = super::auth::owner(&request);
        let req = request.into_inner();
        let mut settings: Vec<_> = req.settings.into_iter().collect();
        settings.sort();
        let id = self
            .scheduler
            .submit_script(req.name, req.statements, settings, owner)
            .await
            .map_err(err)?;
        Ok(Response::new(pb::SubmitScriptResponse {
            script_id: id.to_string(),
        }))
    }

    async fn list_scripts(
        &self,
        request: Request<pb::ListScriptsRequest>,
    ) -> Result<Response<pb::ListScriptsResponse>, Status> {
        forward!(self, request, list_scripts);
        let caller = super::auth::caller(&request);
        let req = request.into_inner();
        let filter = (!req.script_id.is_empty()).then_some(req.script_id.as_str());
        let mut scripts = self.scheduler.scripts(filter).await.map_err(err)?;
        // Users see their own jobs (and those nobody owns).
        scripts.retain(|s| super::auth::may_act_as(caller.as_ref(), s.owner.as_deref()).is_ok());
        if filter.is_some() && scripts.is_empty() {
            return Err(Status::permission_denied(
                "this job belongs to another user",
            ));
        }
        Ok(Response::new(pb::ListScriptsResponse {
            scripts: scripts.iter().map(Into::into).collect(),
        }))
    }

    async fn list_executors(
        &self,
        request: Request<pb::ListExecutorsRequest>,
    ) -> Result<Response<pb::ListExecutorsResponse>, Status> {
        forward!(self, request, list_executors);
        Ok(Response::new(pb::ListExecutorsResponse {
            executors: self.scheduler.executors().iter().map(Into::into).collect(),
            scheduler_rows_scanned: self.scheduler.rows_scanned(),
        }))
    }

    async fn http_get(
        &self,
        request: Request<pb::HttpGetRequest>,
    ) -> Result<Response<pb::HttpGetResponse>, Status> {
        forward!(self, request, http_get);
        let caller = super::auth::caller(&request);
        let req = request.into_inner();
        let answer =
            super::http::answer(&self.scheduler, caller.as_ref(), &req.path, &req.query).await;
        Ok(Response::new(pb::HttpGetResponse {
            status: answer.status as u32,
            content_type: answer.content_type.to_string(),
            body: answer.body.into(),
        }))
    }
}
