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

use crate::scheduler::{Query, Scheduler};
use crate::service::leader_channel;

/// Where Flight SQL clients read results from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FlightResults {
    /// Through the scheduler's port: one published port serves clients outside the cluster.
    #[default]
    Proxy,
    /// Straight from the executors holding the result (clients inside the cluster).
    Direct,
}

/// How long one wait on a job's status lasts before it is asked again.
const POLL: Duration = Duration::from_secs(30);

type FlightStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn err(e: EmberError) -> Status {
    status_from_error(&e)
}

/// A prepared statement: its SQL (placeholders numbered) and the values last bound.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
    params: Vec<ScalarValue>,
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

    async fn submit(&self, query: Query) -> Result<JobId, Status> {
        self.scheduler.submit(query, Vec::new()).await.map_err(err)
    }

    /// Waits until the job has finished; a failed or cancelled job is the error.
    async fn finished(&self, job_id: &JobId) -> Result<JobStatus, Status> {
        loop {
            let status = self.scheduler.job_status(job_id, POLL).await.map_err(err)?;
            match status.state {
                JobState::Succeeded => return Ok(status),
                JobState::Failed => {
                    return Err(Status::aborted(format!(
                        "query failed: {}",
                        status.error.unwrap_or_else(|| "unknown error".into())
                    )));
                }
                JobState::Cancelled => return Err(Status::cancelled("the query was cancelled")),
                JobState::Queued | JobState::Running => {}
            }
        }
    }

    /// The answer to `GetFlightInfo` for a submitted job.
    async fn job_info(
        &self,
        job_id: JobId,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .with_descriptor(descriptor)
            .with_ordered(true);
        let info = match self.results {
            FlightResults::Proxy => {
                let status = self
                    .scheduler
                    .job_status(&job_id, Duration::ZERO)
                    .await
                    .map_err(err)?;
                let ticket = TicketStatementQuery {
                    statement_handle: Bytes::from(job_id.to_string()),
                };
                let total = finished_rows(&status).unwrap_or(-1);
                with_schema(info, &status)?
                    .with_endpoint(
                        FlightEndpoint::new()
                            .with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
                    )
                    .with_total_records(total)
            }
            FlightResults::Direct => {
                let cancel = CancelOnDrop::new(&self.scheduler, &job_id);
                let status = self.finished(&job_id).await?;
                cancel.disarm();
                let endpoints = if status.inline_result.is_empty() {
                    status
                        .result_partitions
                        .iter()
                        .flatten()
                        .map(executor_endpoint)
                        .collect()
                } else {
                    // Computed on the scheduler: read from it.
                    let ticket = TicketStatementQuery {
                        statement_handle: Bytes::from(job_id.to_string()),
                    };
                    vec![
                        FlightEndpoint::new()
                            .with_ticket(Ticket::new(ticket.as_any().encode_to_vec())),
                    ]
                };
                let total = finished_rows(&status).unwrap_or(-1);
                with_schema(info, &status)?
                    .with_endpoints(endpoints)
                    .with_total_records(total)
            }
        };
        Ok(Response::new(info))
    }

    /// Streams a finished job's result; the job's data is freed when the stream ends or the
    /// client goes away.
    fn result_stream(&self, status: JobStatus) -> Result<FlightStream<FlightData>, Status> {
        let release = ReleaseOnDrop(Arc::clone(&self.scheduler), status.job_id.clone());
        let schema = Arc::new(schema_from_bytes(&status.result_schema).map_err(err)?);
        let data: FlightStream<FlightData> = if !status.inline_result.is_empty() {
            let batches = batches_from_ipc_stream(&status.inline_result).map_err(err)?;
            encode_batches(schema, batches)
        } else {
            let fetcher = Arc::clone(&self.fetcher);
            let locations: Vec<PartitionLocation> =
                status.result_partitions.into_iter().flatten().collect();
            let partitions = stream::iter(locations)
                .map(move |location| {
                    let fetcher = Arc::clone(&fetcher);
                    async move { fetcher.fetch(&location, None).await }
                })
                .buffered(2)
                .try_flatten()
                // Every partition starts with its schema; the client gets it once, first.
                .try_filter(|data| std::future::ready(!is_schema_message(data)))
                .map_err(err);
            stream::once(std::future::ready(Ok(encode_schema(&schema))))
                .chain(partitions)
                .boxed()
        };
        Ok(data
            .map(move |item| {
                let _release = &release;
                item
            })
            .boxed())
    }

    /// Runs a statement to its end and counts the rows it changed (the `count` column DML
    /// answers with; 0 for statements without one).
    async fn run_update(&self, query: Query) -> Result<i64, Status> {
        let job_id = self.submit(query).await?;
        let cancel = CancelOnDrop::new(&self.scheduler, &job_id);
        let status = self.finished(&job_id).await?;
        cancel.disarm();
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            self.result_stream(status)?.map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(Status::from)?;
        let mut count = 0i64;
        for batch in &batches {
            if let Some(column) = batch.column_by_name("count")
                && let Some(values) = column.as_primitive_opt::<UInt64Type>()
            {
                count += values.iter().flatten().sum::<u64>() as i64;
            }
        }
        Ok(count)
    }

    fn prepared(&self, handle: &Bytes) -> Result<Prepared, Status> {
        self.prepared.lock().get(handle).cloned().ok_or_else(|| {
            Status::not_found("no such prepared statement (it was closed, or the scheduler that prepared it is gone)")
        })
    }

    /// The batch the client sent to a prepared statement: one row of parameter values.
    async fn bound_values(
        stream: PeekableFlightDataStream,
    ) -> Result<Option<Vec<ScalarValue>>, Status> {
        let batches: Vec<RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from))
                .try_collect()
                .await
                .map_err(|e| {
                    Status::invalid_argument(format!("cannot read the parameters: {e}"))
                })?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        match rows {
            0 => Ok(None),
            1 => {
                let batch = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
                let values = batch
                    .columns()
                    .iter()
                    .map(|c| ScalarValue::try_from_array(c.as_ref(), 0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Status::invalid_argument(format!("bad parameter value: {e}")))?;
                Ok(Some(values))
            }
            n => Err(Status::invalid_argument(format!(
                "bind one row of parameters per execution ({n} rows were sent)"
            ))),
        }
    }

    async fn tables_batch(&self, query: CommandGetTables) -> Result<RecordBatch, Status> {
        let ctx = self.scheduler.session();
        let mut builder = query.into_builder();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let Ok(Some(table)) = schema.table(&table_name).await else {
                        continue;
                    };
                    let table_type = match table.table_type() {
                        TableType::Base => "TABLE",
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                    };
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type,
                            &table.schema(),
                        )
                        .map_err(|e| Status::internal(e.to_string()))?;
                }
            }
        }
        builder.build().map_err(|e| Status::internal(e.to_string()))
    }

    fn cancel_handle(&self, info: FlightInfo) -> Result<bool, Status> {
        let Some(ticket) = info.endpoint.first().and_then(|e| e.ticket.as_ref()) else {
            return Err(Status::invalid_argument("the FlightInfo names no query"));
        };
        let job_id = Any::decode(&*ticket.ticket)
            .ok()
            .and_then(|any| any.unpack::<TicketStatementQuery>().ok().flatten())
            .map(|t| String::from_utf8_lossy(&t.statement_handle).to_string())
            .or_else(|| {
                ember_core::shuffle::ShuffleTicket::parse(&ticket.ticket)
                    .ok()
                    .map(|t| t.job_id)
            })
            .ok_or_else(|| Status::invalid_argument("the FlightInfo names no Ember query"))?;
        self.scheduler.cancel(&JobId::from(job_id)).map_err(err)
    }
}

fn with_schema(info: FlightInfo, status: &JobStatus) -> Result<FlightInfo, Status> {
    let schema = schema_from_bytes(&status.result_schema).map_err(err)?;
    info.try_with_schema(&schema)
        .map_err(|e| Status::internal(format!("cannot encode the result schema: {e}")))
}

fn finished_rows(status: &JobStatus) -> Option<i64> {
    if status.state != JobState::Succeeded || !status.inline_result.is_empty() {
        return None;
    }
    Some(
        status
            .result_partitions
            .iter()
            .flatten()
            .map(|l| l.rows as i64)
            .sum(),
    )
}

fn executor_endpoint(location: &PartitionLocation) -> FlightEndpoint {
    FlightEndpoint::new()
        .with_ticket(Ticket::new(location.ticket().to_bytes()))
        .with_location(format!("grpc+tcp://{}", location.address))
}

fn is_schema_message(data: &FlightData) -> bool {
    datafusion::arrow::ipc::root_as_message(&data.data_header)
        .map(|m| m.header_type() == datafusion::arrow::ipc::MessageHeader::Schema)
        .unwrap_or(false)
}

fn encode_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> FlightStream<FlightData> {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from)
        .boxed()
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(message.0)
}

/// A `GetFlightInfo` answer for a metadata command: its schema, and a ticket carrying the
/// command back to `DoGet`.
fn metadata_info(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(
            FlightEndpoint::new().with_ticket(Ticket::new(command.as_any().encode_to_vec())),
        )
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn batch_stream(batch: RecordBatch) -> Response<FlightStream<FlightData>> {
    Response::new(encode_batches(batch.schema(), vec![batch]))
}

/// Numbers the `?` placeholders ADBC and JDBC send (`$1`, `$2`, ... in order of appearance),
/// leaving string literals, comments and everything else as written.
pub fn number_placeholders(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        return sql.to_string(); // planning reports the error
    };
    let marks: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    if marks.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + marks.len() * 2);
    let (mut line, mut column) = (1u64, 1u64);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' && marks.contains(&(line, column)) {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    out
}

/// Cancels a job unless disarmed: a client that goes away while its query runs stops it.
struct CancelOnDrop(Option<(Arc<Scheduler>, JobId)>);

impl CancelOnDrop {
    fn new(scheduler: &Arc<Scheduler>, job_id: &JobId) -> Self {
        Self(Some((Arc::clone(scheduler), job_id.clone())))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((scheduler, job_id)) = self.0.take() {
            if let Ok(true) = scheduler.cancel(&job_id) {
                tracing::info!(%job_id, "the client went away; query cancelled");
            }
        }
    }
}

/// Frees a job's result data when dropped.
struct ReleaseOnDrop(Arc<Scheduler>, JobId);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.release(&self.1);
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlGrpc {
    type FlightService = FlightSqlGrpc;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let job_id = self
            .submit(Query::Sql(number_placeholders(&query.query)))
            .await?;
        self.job_info(job_id, request.into_inner()).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = self.prepared(&query.prepared_statement_handle)?;
        let job_id = self
            .submit(Query::Prepared {
                sql: prepared.sql,
                params: prepared.params,
            })
            .await?;
        self.job_info(job_id, request.into_inner()).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
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
        let schema = query.clone().into_builder().schema();
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
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let job_id = JobId::from(String::from_utf8_lossy(&ticket.statement_handle).to_string());
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
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.run_update(Query::Sql(number_placeholders(&command.query)))
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
        let params = Self::bound_values(request.into_inner())
            .await?
            .unwrap_or(prepared.params);
        self.run_update(Query::Prepared {
            sql: prepared.sql,
            params,
        })
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
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(query.info)
            .map_err(|e| Status::invalid_argument(format!("bad FlightInfo: {e}")))?;
        let cancelled = self.cancel_handle(info)?;
        // `ActionCancelQueryResult.CancelResult`: 1 cancelled, 3 not cancellable.
        Ok(ActionCancelQueryResult {
            result: if cancelled { 1 } else { 3 },
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
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
        let status = if self.cancel_handle(info)? {
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

/// The Flight service on the scheduler's port: Flight SQL when this scheduler leads, the
/// leader's when it stands by (every call is forwarded there, so a client may connect to any
/// scheduler).
pub struct FlightSqlFront {
    sql: FlightSqlGrpc,
    channels: Channels,
}

impl FlightSqlFront {
    pub fn new(scheduler: Arc<Scheduler>, results: FlightResults) -> Self {
        Self {
            sql: FlightSqlGrpc::new(scheduler, results),
            channels: Channels::default(),
        }
    }

    fn leader(&self) -> Result<Option<FlightServiceClient<Channel>>, Status> {
        Ok(
            leader_channel(&self.sql.scheduler, &self.channels)?.map(|channel| {
                FlightServiceClient::new(channel)
                    .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
                    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES)
            }),
        )
    }
}

/// Forwards a call to the leader when this scheduler stands by; `$boxed` turns the leader's
/// streaming answer into this service's stream type.
macro_rules! forward_flight {
    ($self:ident, $request:ident, $method:ident) => {
        if let Some(mut leader) = $self.leader()? {
            return leader.$method($request.into_inner()).await;
        }
    };
    ($self:ident, $request:ident, $method:ident, stream) => {
        if let Some(mut leader) = $self.leader()? {
            let answer = leader.$method($request.into_inner()).await?;
            return Ok(Response::new(answer.into_inner().boxed()));
        }
    };
}

/// A client stream forwarded to the leader, through a channel fed by its own task. A client
/// stream that breaks is reported on the second half, so that the forwarded call is abandoned
/// (the leader sees it cancelled) rather than ended as if the client had sent everything.
fn forward_input<T: Send + 'static>(
    mut stream: Streaming<T>,
) -> (
    tokio_stream::wrappers::ReceiverStream<T>,
    tokio::sync::oneshot::Receiver<Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (broken_tx, broken_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                Err(status) => {
                    let _ = broken_tx.send(status);
                    return;
                }
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), broken_rx)
}

/// Client-streaming calls forwarded to the leader (outside the trait: their futures must be
/// boxed as `Send` on their own).
fn forward_handshake(
    mut leader: FlightServiceClient<Channel>,
    input: Streaming<HandshakeRequest>,
) -> futures::future::BoxFuture<'static, Result<Response<FlightStream<HandshakeResponse>>, Status>>
{
    let (input, broken) = forward_input(input);
    Box::pin(async move {
        tokio::select! {
            answer = leader.handshake(input) => Ok(Response::new(answer?.into_inner().boxed())),
            Ok(status) = broken => Err(status),
        }
    })
}

fn forward_do_put(
    mut leader: FlightServiceClient<Channel>,
    input: Streaming<FlightData>,
) -> futures::future::BoxFuture<'static, Result<Response<FlightStream<PutResult>>, Status>> {
    let (input, broken) = forward_input(input);
    Box::pin(async move {
        tokio::select! {
            answer = leader.do_put(input) => Ok(Response::new(answer?.into_inner().boxed())),
            Ok(status) = broken => Err(status),
        }
    })
}

fn forward_do_exchange(
    mut leader: FlightServiceClient<Channel>,
    input: Streaming<FlightData>,
) -> futures::future::BoxFuture<'static, Result<Response<FlightStream<FlightData>>, Status>> {
    let (input, broken) = forward_input(input);
    Box::pin(async move {
        tokio::select! {
            answer = leader.do_exchange(input) => Ok(Response::new(answer?.into_inner().boxed())),
            Ok(status) = broken => Err(status),
        }
    })
}

#[tonic::async_trait]
impl FlightService for FlightSqlFront {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;
    type DoExchangeStream = FlightStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        if let Some(leader) = self.leader()? {
            return forward_handshake(leader, request.into_inner()).await;
        }
        FlightService::handshake(&self.sql, request).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        forward_flight!(self, request, list_flights, stream);
        FlightService::list_flights(&self.sql, request).await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        forward_flight!(self, request, get_flight_info);
        FlightService::get_flight_info(&self.sql, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        forward_flight!(self, request, poll_flight_info);
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        forward_flight!(self, request, get_schema);
        FlightService::get_schema(&self.sql, request).await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        forward_flight!(self, request, do_get, stream);
        FlightService::do_get(&self.sql, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        if let Some(leader) = self.leader()? {
            return forward_do_put(leader, request.into_inner()).await;
        }
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        if let Some(leader) = self.leader()? {
            return forward_do_exchange(leader, request.into_inner()).await;
        }
        FlightService::do_exchange(&self.sql, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        forward_flight!(self, request, do_action, stream);
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        forward_flight!(self, request, list_actions, stream);
        FlightService::list_actions(&self.sql, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND c > ?"),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(
            number_placeholders("SELECT 'it''s ?' -- a comment?\n, ?"),
            "SELECT 'it''s ?' -- a comment?\n, $1"
        );
        assert_eq!(number_placeholders("SELECT $1"), "SELECT $1");
    }

    #[test]
    fn schema_messages_are_recognized() {
        let schema = Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "a",
            datafusion::arrow::datatypes::DataType::Int32,
            false,
        )]);
        assert!(is_schema_message(&encode_schema(&schema)));
        assert!(!is_schema_message(&FlightData::default()));
    }
}
