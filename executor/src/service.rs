//! The executor's gRPC services: `ExecutorService` (launch/cancel tasks, free a job's data) and
//! Arrow Flight `do_get`, which streams stored shuffle partitions as they are, without decoding.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use ember_core::job::TaskDefinition;
use ember_core::metrics::ExecutorCounters;
use ember_core::shuffle::grant::SharedTicketKey;
use ember_core::shuffle::{ShuffleStore, ShuffleTicket};
use ember_core::tls::Role;
use ember_core::{EmberError, TaskId};
use ember_proto::pb;
use ember_proto::pb::executor_service_server::ExecutorService;
use ember_proto::status_from_error;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::runner::TaskRunner;

fn err(e: EmberError) -> Status {
    status_from_error(&e)
}

#[derive(Clone)]
pub struct ExecutorGrpc {
    runner: Arc<TaskRunner>,
    store: Arc<ShuffleStore>,
}

impl ExecutorGrpc {
    pub fn new(runner: Arc<TaskRunner>, store: Arc<ShuffleStore>) -> Self {
        Self { runner, store }
    }
}

#[tonic::async_trait]
impl ExecutorService for ExecutorGrpc {
    async fn launch_tasks(
        &self,
        request: Request<pb::LaunchTasksRequest>,
    ) -> Result<Response<pb::LaunchTasksResponse>, Status> {
        // Only the scheduler launches, cancels and frees work here.
        ember_core::tls::require_role(&request, &[Role::Scheduler])?;
        if self.runner.is_draining() {
            // The scheduler places these tasks elsewhere.
            return Err(Status::unavailable(
                "this executor is draining: it takes no new tasks",
            ));
        }
        let tasks = request
            .into_inner()
            .tasks
            .into_iter()
            .map(TaskDefinition::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        for task in tasks {
            self.runner.launch(task);
        }
        Ok(Response::new(pb::LaunchTasksResponse {}))
    }

    async fn cancel_tasks(
        &self,
        request: Request<pb::CancelTasksRequest>,
    ) -> Result<Response<pb::CancelTasksResponse>, Status> {
        // Only the scheduler launches, cancels and frees work here.
        ember_core::tls::require_role(&request, &[Role::Scheduler])?;
        for id in request.into_inner().task_ids {
            let id = TaskId::try_from(id).map_err(err)?;
            self.runner.cancel(&id);
        }
        Ok(Response::new(pb::CancelTasksResponse {}))
    }

    async fn remove_job_data(
        &self,
        request: Request<pb::RemoveJobDataRequest>,
    ) -> Result<Response<pb::RemoveJobDataResponse>, Status> {
        // Only the scheduler launches, cancels and frees work here.
        ember_core::tls::require_role(&request, &[Role::Scheduler])?;
        let job_id = request.into_inner().job_id;
        if job_id.is_empty() || job_id.contains('/') || job_id.contains("..") {
            return Err(err(EmberError::InvalidMessage(format!(
                "bad job id {job_id:?}"
            ))));
        }
        self.store.remove_job(&job_id);
        self.runner.forget_job(&job_id);
        Ok(Response::new(pb::RemoveJobDataResponse {}))
    }
}

/// Arrow Flight: only `do_get` of shuffle tickets; the rest is not offered by executors.
#[derive(Clone)]
pub struct ShuffleFlight {
    store: Arc<ShuffleStore>,
    counters: Arc<ExecutorCounters>,
    ticket_key: SharedTicketKey,
}

impl ShuffleFlight {
    pub fn new(
        store: Arc<ShuffleStore>,
        counters: Arc<ExecutorCounters>,
        ticket_key: SharedTicketKey,
    ) -> Self {
        Self {
            store,
            counters,
            ticket_key,
        }
    }

    /// Whether `ticket` carries a grant of this cluster's leader for its job and stage.
    fn check(&self, ticket: &ShuffleTicket) -> Result<(), Status> {
        let Some(key) = self.ticket_key.get() else {
            return Err(Status::unavailable(
                "this executor has not joined the cluster yet",
            ));
        };
        key.verify(&ticket.grant, ticket.scope(), ember_core::unix_ms())
            .map_err(|why| Status::permission_denied(format!("shuffle data refused: {why}")))
    }
}

type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unsupported<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not offered by Ember executors"
    )))
}

#[tonic::async_trait]
impl FlightService for ShuffleFlight {
    type HandshakeStream = BoxedStream<HandshakeResponse>;
    type ListFlightsStream = BoxedStream<FlightInfo>;
    type DoGetStream = BoxedStream<FlightData>;
    type DoPutStream = BoxedStream<PutResult>;
    type DoActionStream = BoxedStream<arrow_flight::Result>;
    type ListActionsStream = BoxedStream<ActionType>;
    type DoExchangeStream = BoxedStream<FlightData>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = ShuffleTicket::parse(&request.into_inner().ticket).map_err(err)?;
        self.check(&ticket)?;
        let data = self.store.partition_stream(&ticket).map_err(err)?;
        let counters = Arc::clone(&self.counters);
        let stream = data.map(move |item| {
            let data = item.map_err(err)?;
            let n = (data.data_header.len() + data.data_body.len()) as u64;
            ExecutorCounters::add(&counters.bytes_served, n);
            Ok(data)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unsupported("handshake")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unsupported("list_flights")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unsupported("get_flight_info")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unsupported("poll_flight_info")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unsupported("get_schema")
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unsupported("do_put")
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unsupported("do_exchange")
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unsupported("do_action")
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unsupported("list_actions")
    }
}
