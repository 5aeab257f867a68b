//! Arrow Flight SQL on the scheduler's gRPC port: the way BI tools, ADBC and JDBC drivers
//! talk to Ember.
//!
//! A statement runs as one job. `GetFlightInfo` plans and submits it and answers with the
//! result's schema and one endpoint whose ticket names the job; `DoGet` on that ticket waits
//! for the job and streams its result through the scheduler, partition by partition, as the
//! executors stored it (no re-encoding, nothing gathered). With `--flight-results direct`,
//! `GetFlightInfo` waits for the job and lists one endpoint per result partition pointing at
//! the executor that holds it, for clients inside the cluster. A client that goes away before
//! its result is read cancels the job; a result read to its end is freed on the executors.
//!
//! Prepared statements take positional parameters, bound as one row of values; ADBC and JDBC
//! send `?` placeholders, which are numbered (`$1`, `$2`, ...) in the order they appear.
//! Catalog metadata (catalogs, schemas, tables with their Arrow schemas, table types, SqlInfo)
//! comes from the leader's catalog. A standby scheduler forwards every Flight call to the
//! leader ([`FlightSqlFront`]), as it does for Ember's own service.
mod front;
mod metadata;
mod prepared;
mod statements;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionCancelQueryRequest, ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, Criteria,
    Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Schema, SchemaRef, UInt64Type};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use ember_core::job::{JobState, JobStatus};
use ember_core::net::Channels;
use ember_core::shuffle::{
    FlightFetcher, PartitionLocation, batches_from_ipc_stream, encode_schema, schema_from_bytes,
};
use ember_core::{EmberError, JobId};
use ember_proto::status_from_error;
use futures::stream::{self, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::api::grpc::leader_channel;
use crate::config::FlightResults;
use crate::runtime::{Query, Scheduler};

pub use front::FlightSqlFront;
use metadata::{batch_stream, metadata_info, schema_bytes};
use prepared::Prepared;
pub use prepared::number_placeholders;
use statements::{CancelOnDrop, encode_batches};

/// How long one wait on a job's status lasts before it is asked again.
const POLL: Duration = Duration::from_secs(30);

type FlightStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn err(e: EmberError) -> Status {
    status_from_error(&e)
}

/// The Flight SQL service of a leading scheduler.
pub struct FlightSqlGrpc {
    scheduler: Arc<Scheduler>,
    fetcher: Arc<FlightFetcher>,
    prepared: Mutex<HashMap<Bytes, Prepared>>,
    sql_info: SqlInfoData,
    results: FlightResults,
}

impl FlightSqlGrpc {
    pub fn new(scheduler: Arc<Scheduler>, results: FlightResults) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Ember");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, true);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        Self {
            scheduler,
            fetcher: Arc::new(FlightFetcher::new()),
            prepared: Mutex::new(HashMap::new()),
            sql_info: info.build().expect("static SqlInfo values are valid"),
            results,
        }
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlGrpc {
    type FlightService = FlightSqlGrpc;

    /// Signing in: the credentials in the header (already checked) become a session token,
    /// in the answer's `authorization` header and payload. Anonymous callers get none.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<FlightStream<HandshakeResponse>>, Status> {
        let Some(header) = crate::api::auth::credentials(&request) else {
            let empty = HandshakeResponse::default();
            return Ok(Response::new(stream::iter([Ok(empty)]).boxed()));
        };
        let session = self.scheduler.auth.issue_session(header.as_bytes())?;
        let bearer = ember_core::auth::bearer(&session).map_err(err)?;
        let answer = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::from(session),
        };
        let mut response = Response::new(stream::iter([Ok(answer)]).boxed());
        response
            .metadata_mut()
            .insert(crate::api::auth::AUTHORIZATION, bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let owner = crate::api::auth::owner(&request);
        let job_id = self
            .submit(Query::Sql(number_placeholders(&query.query)), owner)
            .await?;
        self.job_info(job_id, request.into_inner()).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = self.prepared(&query.prepared_statement_handle)?;
        let owner = crate::api::auth::owner(&request);
        let job_id = self
            .submit(
                Query::Prepared {
                    sql: prepared.sql,
                    params: prepared.params,
                },
                owner,
            )
            .await?;
        self.job_info(job_id, request.into_inner()).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let job_id = JobId::from(String::from_utf8_lossy(&ticket.statement_handle).to_string());
        // A result is its owner's to read (and, read, to free).
        crate::api::auth::may_act_on(&request, self.scheduler.owner_of(&job_id).as_deref())?;
        let cancel = CancelOnDrop::new(&self.scheduler, &job_id);
        let status = self.finished(&job_id).await?;
        cancel.disarm();
        Ok(Response::new(self.result_stream(status)?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for name in self.scheduler.session().catalog_names() {
            builder.append(name);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(batch_stream(batch))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ctx = self.scheduler.session();
        let mut builder = query.into_builder();
        for catalog_name in ctx.catalog_names() {
            if let Some(catalog) = ctx.catalog(&catalog_name) {
                for schema_name in catalog.schema_names() {
                    builder.append(&catalog_name, schema_name);
                }
            }
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(batch_stream(batch))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(batch_stream(self.tables_batch(query).await?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for table_type in ["LOCAL TEMPORARY", "TABLE", "VIEW"] {
            builder.append(table_type);
        }
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(batch_stream(batch))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(batch_stream(batch))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let owner = crate::api::auth::owner(&request);
        self.run_update(Query::Sql(number_placeholders(&command.query)), owner)
            .await
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle;
        self.prepared(&handle)?;
        let values = Self::bound_values(request.into_inner()).await?;
        if let Some(prepared) = self.prepared.lock().get_mut(&handle) {
            prepared.params = values.unwrap_or_default();
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        query: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let prepared = self.prepared(&query.prepared_statement_handle)?;
        let owner = crate::api::auth::owner(&request);
        let params = Self::bound_values(request.into_inner())
            .await?
            .unwrap_or(prepared.params);
        self.run_update(
            Query::Prepared {
                sql: prepared.sql,
                params,
            },
            owner,
        )
        .await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let sql = number_placeholders(&query.query);
        let (result, params) = self.scheduler.prepare(&sql).await.map_err(err)?;
        let handle = Bytes::from(uuid::Uuid::new_v4().simple().to_string());
        self.prepared.lock().insert(
            handle.clone(),
            Prepared {
                sql,
                params: Vec::new(),
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema: schema_bytes(&result)?,
            parameter_schema: schema_bytes(&params)?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared
            .lock()
            .remove(&query.prepared_statement_handle);
        Ok(())
    }

    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("bad FlightInfo: {e}")))?;
        let caller = crate::api::auth::caller(&request);
        let cancelled = self.cancel_handle(info, caller.as_ref())?;
        // `ActionCancelQueryResult.CancelResult`: 1 cancelled, 3 not cancellable.
        Ok(ActionCancelQueryResult {
            result: if cancelled { 1 } else { 3 },
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let caller = crate::api::auth::caller(&request);
        let action = request.into_inner();
        if action.r#type != "CancelFlightInfo" {
            return Err(Status::invalid_argument(format!(
                "unknown action {:?}",
                action.r#type
            )));
        }
        let cancel = CancelFlightInfoRequest::decode(action.body)
            .map_err(|e| Status::invalid_argument(format!("bad CancelFlightInfo: {e}")))?;
        let info = cancel
            .info
            .ok_or_else(|| Status::invalid_argument("CancelFlightInfo without a FlightInfo"))?;
        let status = if self.cancel_handle(info, caller.as_ref())? {
            CancelStatus::Cancelled
        } else {
            CancelStatus::NotCancellable
        };
        let body = CancelFlightInfoResult::new(status).encode_to_vec();
        let result = arrow_flight::Result::new(body);
        Ok(Response::new(stream::iter([Ok(result)]).boxed()))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        Some(vec![Ok(ActionType {
            r#type: "CancelFlightInfo".into(),
            description: "Cancel the query a FlightInfo names".into(),
        })])
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
