//! Spark Connect (the gRPC protocol of Spark 3.4+ that the thin PySpark client speaks) on the
//! scheduler: its own port (`--spark-connect-bind`, default 15002), and the main gRPC port,
//! where standbys forward every call (sessions live on the leader).
//!
//! A session is named by the client and belongs to the caller who opened it (another caller
//! naming it gets a session of its own). It holds temporary views and settings. A relation
//! is translated (`crate::spark`) into a DataFusion plan and submitted as an ordinary job;
//! its rows stream back as Arrow IPC batches of the types PySpark reads. Operations can be
//! reattached while their job's result is kept, and are interrupted by cancelling the job.

mod analyze;
mod execute;
mod sessions;

use std::pin::Pin;
use std::sync::Arc;

use ember_core::EmberError;
use ember_core::error::ErrorKind;
use ember_core::net::Channels;
use ember_core::shuffle::FlightFetcher;
use ember_proto::spark::spark_connect_service_client::SparkConnectServiceClient;
use ember_proto::spark::spark_connect_service_server::SparkConnectService;
use ember_proto::spark::{self as sc, rpc};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::api::grpc::leader_channel;
use crate::runtime::Scheduler;
use sessions::Sessions;

/// The version PySpark is told it talks to (the protocol Ember's files come from).
pub const SPARK_VERSION: &str = "4.2.0";

type ResponseStream =
    Pin<Box<dyn futures::Stream<Item = Result<sc::ExecutePlanResponse, Status>> + Send>>;

/// The Spark Connect service of a scheduler (forwarding to the leader when it stands by).
pub struct SparkConnect {
    scheduler: Arc<Scheduler>,
    fetcher: Arc<FlightFetcher>,
    sessions: Arc<Sessions>,
    channels: Channels,
}

impl SparkConnect {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self {
            scheduler,
            fetcher: Arc::new(FlightFetcher::new()),
            sessions: Arc::new(Sessions::default()),
            channels: Channels::default(),
        }
    }

    /// A client of the leader's service when this scheduler stands by.
    fn leader(&self) -> Result<Option<SparkConnectServiceClient<Channel>>, Status> {
        Ok(
            leader_channel(&self.scheduler, &self.channels)?.map(|channel| {
                SparkConnectServiceClient::new(channel)
                    .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            }),
        )
    }
}

/// Forwards a call to the leader when this scheduler stands by.
macro_rules! forward {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut leader) = $self.leader()? {
            return leader.$method(crate::api::auth::forward($request)).await;
        }
    };
    ($self:ident, $request:ident, $method:ident, stream) => {
        if let Some(mut leader) = $self.leader()? {
            let answer = leader.$method(crate::api::auth::forward($request)).await?;
            let stream: ResponseStream = Box::pin(answer.into_inner());
            return Ok(Response::new(stream));
        }
    };
}

#[tonic::async_trait]
impl SparkConnectService for SparkConnect {
    type ExecutePlanStream = ResponseStream;
    type ReattachExecuteStream = ResponseStream;

    async fn execute_plan(
        &self,
        request: Request<sc::ExecutePlanRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        forward!(self, request, execute_plan, stream);
        self.execute(request).await.map(Response::new)
    }

    async fn analyze_plan(
        &self,
        request: Request<sc::AnalyzePlanRequest>,
    ) -> Result<Response<sc::AnalyzePlanResponse>, Status> {
        forward!(self, request, analyze_plan);
        self.analyze(request).await.map(Response::new)
    }

    async fn config(
        &self,
        request: Request<sc::ConfigRequest>,
    ) -> Result<Response<sc::ConfigResponse>, Status> {
        forward!(self, request, config);
        self.configure(request).map(Response::new)
    }

    async fn add_artifacts(
        &self,
        _request: Request<Streaming<sc::AddArtifactsRequest>>,
    ) -> Result<Response<sc::AddArtifactsResponse>, Status> {
        Err(not_supported(
            "artifacts (addArtifact, Python UDFs and their files)",
        ))
    }

    async fn artifact_status(
        &self,
        _request: Request<sc::ArtifactStatusesRequest>,
    ) -> Result<Response<sc::ArtifactStatusesResponse>, Status> {
        Err(not_supported("artifacts"))
    }

    async fn interrupt(
        &self,
        request: Request<sc::InterruptRequest>,
    ) -> Result<Response<sc::InterruptResponse>, Status> {
        forward!(self, request, interrupt);
        self.interrupt_operations(request).map(Response::new)
    }

    async fn reattach_execute(
        &self,
        request: Request<sc::ReattachExecuteRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        forward!(self, request, reattach_execute, stream);
        self.reattach(request).await.map(Response::new)
    }

    async fn release_execute(
        &self,
        request: Request<sc::ReleaseExecuteRequest>,
    ) -> Result<Response<sc::ReleaseExecuteResponse>, Status> {
        forward!(self, request, release_execute);
        self.release_operation(request).map(Response::new)
    }

    async fn release_session(
        &self,
        request: Request<sc::ReleaseSessionRequest>,
    ) -> Result<Response<sc::ReleaseSessionResponse>, Status> {
        forward!(self, request, release_session);
        self.end_session(request).map(Response::new)
    }

    async fn fetch_error_details(
        &self,
        request: Request<sc::FetchErrorDetailsRequest>,
    ) -> Result<Response<sc::FetchErrorDetailsResponse>, Status> {
        // Errors carry their whole message; there are no further details to fetch.
        let request = request.into_inner();
        Ok(Response::new(sc::FetchErrorDetailsResponse {
            session_id: request.session_id,
            server_side_session_id: String::new(),
            root_error_idx: None,
            errors: Vec::new(),
        }))
    }

    async fn clone_session(
        &self,
        _request: Request<sc::CloneSessionRequest>,
    ) -> Result<Response<sc::CloneSessionResponse>, Status> {
        Err(not_supported("cloneSession"))
    }

    async fn get_status(
        &self,
        _request: Request<sc::GetStatusRequest>,
    ) -> Result<Response<sc::GetStatusResponse>, Status> {
        Err(not_supported("getStatus"))
    }
}

/// A request that names its session, and the server-side session the client last saw.
trait SessionRequest {
    fn session_id(&self) -> &str;
    fn observed_server_session(&self) -> Option<&str>;
}

macro_rules! session_request {
    ($($t:ty),*) => {$(
        impl SessionRequest for $t {
            fn session_id(&self) -> &str {
                &self.session_id
            }
            fn observed_server_session(&self) -> Option<&str> {
                self.client_observed_server_side_session_id.as_deref()
            }
        }
    )*};
}
session_request!(
    sc::ExecutePlanRequest,
    sc::ReattachExecuteRequest,
    sc::AnalyzePlanRequest,
    sc::ConfigRequest,
    sc::ReleaseExecuteRequest,
    sc::InterruptRequest
);

impl SparkConnect {
    /// The caller's session a request names (opened if new), the request, and its caller.
    fn session_of<T: SessionRequest>(
        &self,
        request: Request<T>,
    ) -> Result<(Arc<sessions::Session>, T, Option<String>), Status> {
        let owner = crate::api::auth::owner(&request);
        let request = request.into_inner();
        let session = self.sessions.open(
            owner.as_deref(),
            request.session_id(),
            request.observed_server_session(),
        )?;
        Ok((session, request, owner))
    }
}

/// A planner for `session`: the cluster's catalog with the session's temporary views, reading
/// and writing only where the cluster allows.
fn planner(scheduler: &Scheduler, session: &sessions::Session) -> crate::spark::Planner {
    let ctx = crate::spark::session_context(scheduler.session(), Arc::clone(&session.views));
    crate::spark::Planner::new(ctx).confined(scheduler.config.confinement.allowed_locations.clone())
}

fn not_supported(what: &str) -> Status {
    spark_error(&EmberError::User(format!(
        "Spark Connect: {what} is not supported by Ember (docs/spark-connect.md lists what is)"
    )))
}

/// An Ember error as the status PySpark turns into its exception classes: the gRPC code
/// from the error's kind, and a `google.rpc.ErrorInfo` naming the Spark exception
/// (`AnalysisException` for what the user can fix, `ParseException` for SQL that does not
/// parse, `SparkException` otherwise).
pub(crate) fn spark_error(error: &EmberError) -> Status {
    let base = ember_proto::status_from_error(error);
    let message = base.message().to_string();
    let (class, error_class) = match error.kind() {
        ErrorKind::User if message.contains("ParserError") || message.contains("SQL error") => (
            "org.apache.spark.sql.catalyst.parser.ParseException",
            "PARSE_SYNTAX_ERROR",
        ),
        ErrorKind::User => ("org.apache.spark.sql.AnalysisException", "EMBER_USER_ERROR"),
        ErrorKind::Cancelled => ("org.apache.spark.SparkException", "OPERATION_CANCELED"),
        _ => ("org.apache.spark.SparkException", "EMBER_INTERNAL_ERROR"),
    };
    let info = rpc::ErrorInfo {
        reason: class.to_string(),
        domain: "org.apache.spark".to_string(),
        metadata: [
            ("classes".to_string(), format!("[\"{class}\"]")),
            ("errorClass".to_string(), error_class.to_string()),
            ("sqlState".to_string(), String::new()),
        ]
        .into_iter()
        .collect(),
    };
    let status = rpc::Status {
        code: base.code() as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_string(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(base.code(), message, status.encode_to_vec().into())
}
