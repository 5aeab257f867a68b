//! ExecutePlan and its companions: a relation runs as a job whose rows stream back as Arrow
//! batches; commands (`spark.sql`, temporary views, writes) run and answer; operations are
//! reattached, released and interrupted.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use ember_core::job::{JobState, JobStatus};
use ember_core::shuffle::{
    batches_from_ipc_stream, batches_to_ipc_stream, flight_data_stream, schema_from_bytes,
};
use ember_core::{EmberError, JobId, Result};
use ember_proto::spark::execute_plan_request::request_option::RequestOption;
use ember_proto::spark::execute_plan_response::{self as epr, ResponseType};
use ember_proto::spark::plan::OpType;
use ember_proto::spark::relation::RelType;
use ember_proto::spark::{self as sc, command::CommandType};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Status};

use super::sessions::Session;
use super::{ResponseStream, SparkConnect, spark_error};
use crate::api::auth;
use crate::runtime::{Query, Scheduler};
use crate::spark::{Translated, show, types};

/// How often a waiting operation checks that its client is still there.
const POLL: Duration = Duration::from_secs(1);

/// Where one operation's responses go, numbered for reattaching.
struct Responses {
    tx: mpsc::Sender<std::result::Result<sc::ExecutePlanResponse, Status>>,
    session: Arc<Session>,
    operation_id: String,
    /// Responses numbered up to this one were received before (a reattach): not sent again.
    skip_through: Option<u64>,
    next: u64,
}

impl Responses {
    async fn send(
        &mut self,
        response_type: Option<ResponseType>,
        schema: Option<sc::DataType>,
    ) -> bool {
        let index = self.next;
        self.next += 1;
        if self.skip_through.is_some_and(|last| index <= last) {
            return true;
        }
        let response = sc::ExecutePlanResponse {
            session_id: self.session.id.clone(),
            server_side_session_id: self.session.server_id.clone(),
            operation_id: self.operation_id.clone(),
            response_id: format!("{}/{index}", self.operation_id),
            response_type,
            metrics: None,
            observed_metrics: Vec::new(),
            schema,
        };
        self.tx.send(Ok(response)).await.is_ok()
    }

    async fn complete(&mut self) -> bool {
        self.send(
            Some(ResponseType::ResultComplete(epr::ResultComplete {})),
            None,
        )
        .await
    }
}

impl SparkConnect {
    pub(super) async fn execute(
        &self,
        request: Request<sc::ExecutePlanRequest>,
    ) -> std::result::Result<ResponseStream, Status> {
        let (session, request, owner) = self.session_of(request)?;
        let operation_id = request
            .operation_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let reattachable = request.request_options.iter().any(|o| {
            matches!(&o.request_option, Some(RequestOption::ReattachOptions(r)) if r.reattachable)
        });
        let op = request
            .plan
            .and_then(|p| p.op_type)
            .ok_or_else(|| Status::invalid_argument("the request carries no plan"))?;
        session.start(&operation_id, request.tags)?;
        let (tx, rx) = mpsc::channel(4);
        let responses = Responses {
            tx: tx.clone(),
            session: Arc::clone(&session),
            operation_id: operation_id.clone(),
            skip_through: None,
            next: 0,
        };
        let run = Run {
            scheduler: Arc::clone(&self.scheduler),
            fetcher: Arc::clone(&self.fetcher),
            session: Arc::clone(&session),
            owner,
            operation_id: operation_id.clone(),
            reattachable,
        };
        tokio::spawn(async move {
            let outcome = run.operation(op, responses).await;
            if let Err(e) = outcome {
                let _ = tx.send(Err(spark_error(&e))).await;
                // A failed operation has nothing to reattach to.
                if let Some(job) = run.session.forget(&run.operation_id) {
                    let _ = run.scheduler.release(&job);
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    pub(super) async fn reattach(
        &self,
        request: Request<sc::ReattachExecuteRequest>,
    ) -> std::result::Result<ResponseStream, Status> {
        let (session, request, _) = self.session_of(request)?;
        let operation = session.operation(&request.operation_id).ok_or_else(|| {
            Status::not_found(format!(
                "[INVALID_HANDLE.OPERATION_NOT_FOUND] operation {}",
                request.operation_id
            ))
        })?;
        let Some(status) = operation.finished else {
            return Err(Status::failed_precondition(format!(
                "[INVALID_HANDLE.OPERATION_ABANDONED] operation {} is still running; its \
                 first stream must be read",
                request.operation_id
            )));
        };
        let skip_through = request
            .last_response_id
            .as_deref()
            .and_then(|id| id.rsplit('/').next())
            .and_then(|n| n.parse().ok());
        let (tx, rx) = mpsc::channel(4);
        let mut responses = Responses {
            tx: tx.clone(),
            session: Arc::clone(&session),
            operation_id: request.operation_id.clone(),
            skip_through,
            next: 0,
        };
        let fetcher = Arc::clone(&self.fetcher);
        tokio::spawn(async move {
            if let Err(e) = stream_result(&fetcher, status, &mut responses).await {
                let _ = tx.send(Err(spark_error(&e))).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    pub(super) fn release_operation(
        &self,
        request: Request<sc::ReleaseExecuteRequest>,
    ) -> std::result::Result<sc::ReleaseExecuteResponse, Status> {
        let (session, request, _) = self.session_of(request)?;
        let all = matches!(
            request.release,
            Some(sc::release_execute_request::Release::ReleaseAll(_))
        );
        if all && let Some(job) = session.forget(&request.operation_id) {
            // Released before it ended: the client wants nothing more of it.
            let _ = self.scheduler.cancel(&job);
            let _ = self.scheduler.release(&job);
        }
        Ok(sc::ReleaseExecuteResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            operation_id: Some(request.operation_id),
        })
    }

    pub(super) fn interrupt_operations(
        &self,
        request: Request<sc::InterruptRequest>,
    ) -> std::result::Result<sc::InterruptResponse, Status> {
        use sc::interrupt_request::Interrupt;
        let (session, request, _) = self.session_of(request)?;
        let (tag, id) = match &request.interrupt {
            Some(Interrupt::OperationTag(t)) => (Some(t.as_str()), None),
            Some(Interrupt::OperationId(i)) => (None, Some(i.as_str())),
            None => (None, None),
        };
        let mut interrupted = Vec::new();
        for (operation_id, job) in session.select(tag, id) {
            if let Some(job) = job
                && self.scheduler.cancel(&job).unwrap_or(false)
            {
                interrupted.push(operation_id);
            }
        }
        Ok(sc::InterruptResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            interrupted_ids: interrupted,
        })
    }

    pub(super) fn end_session(
        &self,
        request: Request<sc::ReleaseSessionRequest>,
    ) -> std::result::Result<sc::ReleaseSessionResponse, Status> {
        let owner = auth::owner(&request);
        let request = request.into_inner();
        let server_id = match self.sessions.close(owner.as_deref(), &request.session_id) {
            Some(session) => {
                for (_, job) in session.select(None, None) {
                    if let Some(job) = job {
                        let _ = self.scheduler.cancel(&job);
                        let _ = self.scheduler.release(&job);
                    }
                }
                session.server_id.clone()
            }
            None => String::new(),
        };
        Ok(sc::ReleaseSessionResponse {
            session_id: request.session_id,
            server_side_session_id: server_id,
        })
    }
}

/// One operation being run.
struct Run {
    scheduler: Arc<Scheduler>,
    fetcher: Arc<ember_core::shuffle::FlightFetcher>,
    session: Arc<Session>,
    owner: Option<String>,
    operation_id: String,
    reattachable: bool,
}

impl Run {
    async fn operation(&self, op: OpType, mut responses: Responses) -> Result<()> {
        match op {
            OpType::Root(relation) => self.relation(relation, &mut responses).await,
            OpType::Command(command) => {
                self.command(command, &mut responses).await?;
                self.session.forget(&self.operation_id);
                responses.complete().await;
                Ok(())
            }
            OpType::CompressedOperation(_) => Err(EmberError::User(
                "Spark Connect: compressed plans are not supported by Ember; set \
                 spark.connect.session.planCompression.threshold to -1"
                    .into(),
            )),
        }
    }

    /// Translates a relation in this session (on the planning threads).
    async fn translate(&self, relation: sc::Relation) -> Result<Translated> {
        let mut planner = super::planner(&self.scheduler, &self.session);
        self.scheduler
            .planning(async move { planner.root(&relation).await })
            .await
    }

    async fn relation(&self, relation: sc::Relation, responses: &mut Responses) -> Result<()> {
        let description = describe(&relation);
        match self.translate(relation).await? {
            Translated::Plan(plan) => {
                let status = self.run(plan, description, responses).await?;
                self.session
                    .update(&self.operation_id, |op| op.finished = Some(status.clone()));
                stream_result(&self.fetcher, status.clone(), responses).await?;
                if !self.reattachable
                    && let Some(job) = self.session.forget(&self.operation_id)
                {
                    let _ = self.scheduler.release(&job);
                }
                Ok(())
            }
            Translated::Show {
                input,
                rows,
                truncate,
                vertical,
            } => {
                let limited = LogicalPlanBuilder::from(input)
                    .limit(0, Some(rows + 1))?
                    .build()?;
                let schema = Arc::new(limited.schema().as_arrow().clone());
                let batches = self.collect(limited, description, responses).await?;
                let text = show::show_string(&schema, &batches, rows, truncate, vertical)?;
                let batch = show::show_batch(text)?;
                self.session.forget(&self.operation_id);
                let schema = batch.schema();
                let rows = futures::stream::iter([Ok(batch)]).boxed();
                send_rows(responses, &schema, rows).await
            }
        }
    }

    /// Submits a plan as a job and waits for it; a client that leaves a non-reattachable
    /// operation cancels its job.
    async fn run(
        &self,
        plan: LogicalPlan,
        description: String,
        responses: &Responses,
    ) -> Result<JobStatus> {
        let query = Query::Plan {
            plan: Arc::new(plan),
            description,
            replace: false,
        };
        self.submit(query, responses).await
    }

    async fn submit(&self, query: Query, responses: &Responses) -> Result<JobStatus> {
        let job = self
            .scheduler
            .submit(query, self.settings(), self.owner.clone())
            .await?;
        self.session
            .update(&self.operation_id, |op| op.job = Some(job.clone()));
        self.wait(&job, responses).await
    }

    /// Session settings that are Ember's or DataFusion's go with each job.
    fn settings(&self) -> Vec<(String, String)> {
        self.session
            .config
            .lock()
            .iter()
            .filter(|(k, _)| k.starts_with("datafusion.") || k.starts_with("ember."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    async fn wait(&self, job: &JobId, responses: &Responses) -> Result<JobStatus> {
        loop {
            let status = self.scheduler.job_status(job, POLL).await?;
            match status.state {
                JobState::Succeeded => return Ok(status),
                JobState::Failed => {
                    return Err(EmberError::TaskFailed {
                        message: status.error.unwrap_or_else(|| "the job failed".into()),
                        kind: status
                            .error_kind
                            .unwrap_or(ember_core::error::ErrorKind::Internal),
                    });
                }
                JobState::Cancelled => {
                    return Err(EmberError::TaskFailed {
                        message: format!(
                            "[OPERATION_CANCELED] operation {} was interrupted",
                            self.operation_id
                        ),
                        kind: ember_core::error::ErrorKind::Cancelled,
                    });
                }
                JobState::Queued | JobState::Running => {
                    if responses.tx.is_closed() && !self.reattachable {
                        let _ = self.scheduler.cancel(job);
                    }
                }
            }
        }
    }

    /// Runs a plan and gathers its rows here (for `show()` and commands' answers).
    async fn collect(
        &self,
        plan: LogicalPlan,
        description: String,
        responses: &Responses,
    ) -> Result<Vec<RecordBatch>> {
        let status = self.run(plan, description, responses).await?;
        let job = status.job_id.clone();
        let batches = result_batches(&self.fetcher, status)
            .await?
            .try_collect()
            .await;
        let _ = self.scheduler.release(&job);
        batches
    }

    async fn command(&self, command: sc::Command, responses: &mut Responses) -> Result<()> {
        let Some(kind) = command.command_type else {
            return Err(EmberError::User("a command without its kind".into()));
        };
        match kind {
            CommandType::SqlCommand(sql) => self.sql_command(sql, responses).await,
            CommandType::CreateDataframeView(view) => {
                if view.is_global {
                    return Err(crate::spark::unsupported("view", "global temporary view"));
                }
                let input = view
                    .input
                    .ok_or_else(|| EmberError::User("createTempView: no DataFrame".into()))?;
                let Translated::Plan(plan) = self.translate(input).await? else {
                    return Err(EmberError::User("a view of show()".into()));
                };
                self.session.views.define(&view.name, plan, view.replace)
            }
            CommandType::WriteOperation(write) => {
                let mut planner = super::planner(&self.scheduler, &self.session);
                let plan = self
                    .scheduler
                    .planning(async move { planner.write(&write).await })
                    .await?;
                let Some(write) = plan else {
                    return Ok(()); // mode "ignore" and the target exists
                };
                let query = Query::Plan {
                    plan: Arc::new(write.plan),
                    description: write.description,
                    replace: write.replace,
                };
                self.submit(query, responses).await.map(|_| ())
            }
            CommandType::RegisterFunction(f) => Err(crate::spark::unsupported(
                "user-defined function",
                &f.function_name,
            )),
            other => Err(crate::spark::unsupported("command", command_name(&other))),
        }
    }

    /// `spark.sql(text)`: a query answers with itself, to be run when its rows are asked
    /// for; a temporary view is defined in the session; any other statement (DDL, INSERT,
    /// COPY, SHOW, EXPLAIN) runs now and answers with its rows.
    async fn sql_command(&self, sql: sc::SqlCommand, responses: &mut Responses) -> Result<()> {
        #[allow(deprecated)]
        let text = match sql.input.as_ref().and_then(|r| r.rel_type.as_ref()) {
            Some(RelType::Sql(s)) => s.query.clone(),
            _ => sql.sql.clone(),
        };
        let relation = match classify(&text)? {
            SqlKind::Query => sc::Relation {
                common: None,
                rel_type: Some(RelType::Sql(sc::Sql {
                    query: text,
                    ..Default::default()
                })),
            },
            SqlKind::TempView {
                name,
                query,
                replace,
            } => {
                let relation = sc::Relation {
                    common: None,
                    rel_type: Some(RelType::Sql(sc::Sql {
                        query,
                        ..Default::default()
                    })),
                };
                let Translated::Plan(plan) = self.translate(relation).await? else {
                    return Err(EmberError::User("a view of show()".into()));
                };
                self.session.views.define(&name, plan, replace)?;
                local_relation(&Schema::empty(), &[])?
            }
            SqlKind::Other => {
                let status = self.submit(Query::Sql(text), responses).await?;
                let job = status.job_id.clone();
                let schema = Arc::new(schema_from_bytes(&status.result_schema)?);
                let batches: Vec<RecordBatch> = result_batches(&self.fetcher, status)
                    .await?
                    .try_collect()
                    .await?;
                let _ = self.scheduler.release(&job);
                local_relation(&schema, &batches)?
            }
        };
        responses
            .send(
                Some(ResponseType::SqlCommandResult(epr::SqlCommandResult {
                    relation: Some(relation),
                })),
                None,
            )
            .await;
        Ok(())
    }
}

enum SqlKind {
    Query,
    TempView {
        name: String,
        query: String,
        replace: bool,
    },
    Other,
}

/// Whether a statement is a query (run lazily, like Spark), a temporary view of this session,
/// or something to run now.
fn classify(sql: &str) -> Result<SqlKind> {
    let statements = DFParserBuilder::new(sql).build()?.parse_statements()?;
    if statements.len() != 1 {
        return Err(EmberError::User(format!(
            "spark.sql takes one statement, not {}",
            statements.len()
        )));
    }
    Ok(match &statements[0] {
        DFStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) => SqlKind::Query,
            Statement::CreateView(view) if view.temporary => SqlKind::TempView {
                name: view.name.to_string(),
                query: view.query.to_string(),
                replace: view.or_replace,
            },
            _ => SqlKind::Other,
        },
        _ => SqlKind::Other,
    })
}

/// Rows answered inline, as a relation of the client's.
fn local_relation(schema: &Schema, batches: &[RecordBatch]) -> Result<sc::Relation> {
    let (schema, batches) = client_batches(schema, batches.to_vec())?;
    Ok(sc::Relation {
        common: None,
        rel_type: Some(RelType::LocalRelation(sc::LocalRelation {
            data: Some(batches_to_ipc_stream(&schema, &batches)?.to_vec()),
            schema: None,
        })),
    })
}

/// A finished job's rows, as DataFusion computed them.
async fn result_batches(
    fetcher: &Arc<ember_core::shuffle::FlightFetcher>,
    status: JobStatus,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    if !status.inline_result.is_empty() {
        let batches = batches_from_ipc_stream(&status.inline_result)?;
        return Ok(futures::stream::iter(batches.into_iter().map(Ok)).boxed());
    }
    let fetcher = Arc::clone(fetcher);
    let locations: Vec<_> = status.result_partitions.into_iter().flatten().collect();
    Ok(futures::stream::iter(locations)
        .then(move |location| {
            let fetcher = Arc::clone(&fetcher);
            async move {
                let data = fetcher.fetch(&location, None).await?;
                Ok::<_, EmberError>(
                    flight_data_stream(data)
                        .map_err(|e| EmberError::Unavailable(format!("reading the result: {e}"))),
                )
            }
        })
        .try_flatten()
        .boxed())
}

/// Streams a finished job's result.
async fn stream_result(
    fetcher: &Arc<ember_core::shuffle::FlightFetcher>,
    status: JobStatus,
    responses: &mut Responses,
) -> Result<()> {
    let schema = schema_from_bytes(&status.result_schema)?;
    let batches = result_batches(fetcher, status).await?;
    send_rows(responses, &schema, batches).await
}

/// Sends rows: their schema, then each batch with the types the client reads, numbered by
/// the row it starts at, then the end. Stops early when the client has gone.
async fn send_rows(
    responses: &mut Responses,
    schema: &Schema,
    mut batches: futures::stream::BoxStream<'static, Result<RecordBatch>>,
) -> Result<()> {
    let client_schema = Arc::new(client_schema(schema));
    if !responses
        .send(None, Some(types::spark_schema(&client_schema)))
        .await
    {
        return Ok(());
    }
    let mut offset = 0i64;
    while let Some(batch) = batches.try_next().await? {
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = to_client(&client_schema, batch)?;
        let rows = batch.num_rows() as i64;
        let data = batches_to_ipc_stream(&client_schema, &[batch])?;
        let sent = responses
            .send(
                Some(ResponseType::ArrowBatch(epr::ArrowBatch {
                    row_count: rows,
                    data,
                    start_offset: Some(offset),
                    chunk_index: None,
                    num_chunks_in_batch: None,
                })),
                None,
            )
            .await;
        if !sent {
            return Ok(());
        }
        offset += rows;
    }
    responses.complete().await;
    Ok(())
}

fn client_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_data_type(types::client_type(f.data_type()))
            })
            .collect::<Vec<_>>(),
    )
}

fn client_batches(
    schema: &Schema,
    batches: Vec<RecordBatch>,
) -> Result<(Schema, Vec<RecordBatch>)> {
    let client = Arc::new(client_schema(schema));
    let batches = batches
        .into_iter()
        .map(|b| to_client(&client, b))
        .collect::<Result<Vec<_>>>()?;
    Ok((client.as_ref().clone(), batches))
}

/// A batch with the column types PySpark reads (no views, no unsigned integers).
fn to_client(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                Ok(cast(c, f.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// What a relation runs, for job listings.
fn describe(relation: &sc::Relation) -> String {
    match &relation.rel_type {
        Some(RelType::Sql(sql)) => sql.query.clone(),
        Some(RelType::ShowString(s)) => match s.input.as_deref() {
            Some(input) => describe(input),
            None => "(a PySpark DataFrame)".into(),
        },
        _ => "(a PySpark DataFrame)".into(),
    }
}

fn command_name(kind: &CommandType) -> &'static str {
    match kind {
        CommandType::WriteOperationV2(_) => "writeTo (DataFrameWriterV2)",
        CommandType::WriteStreamOperationStart(_) => "writeStream",
        CommandType::StreamingQueryCommand(_) | CommandType::StreamingQueryManagerCommand(_) => {
            "streaming query"
        }
        CommandType::RegisterTableFunction(_) => "user-defined table function",
        CommandType::RegisterDataSource(_) => "Python data source",
        CommandType::CheckpointCommand(_) => "checkpoint / localCheckpoint",
        CommandType::MergeIntoTableCommand(_) => "MERGE INTO",
        CommandType::MlCommand(_) => "ML",
        CommandType::PipelineCommand(_) => "pipelines",
        CommandType::GetResourcesCommand(_) => "resources",
        CommandType::CreateResourceProfileCommand(_) => "resource profiles",
        _ => "command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_queries_views_or_commands() {
        assert!(matches!(classify("SELECT 1").unwrap(), SqlKind::Query));
        assert!(matches!(
            classify("WITH a AS (SELECT 1) SELECT * FROM a").unwrap(),
            SqlKind::Query
        ));
        match classify("CREATE OR REPLACE TEMP VIEW v AS SELECT 1 AS x").unwrap() {
            SqlKind::TempView {
                name,
                query,
                replace,
            } => {
                assert_eq!(name, "v");
                assert!(replace);
                assert!(query.contains("SELECT 1"), "{query}");
            }
            _ => panic!("not a temporary view"),
        }
        assert!(matches!(
            classify("CREATE VIEW v AS SELECT 1").unwrap(),
            SqlKind::Other
        ));
        assert!(matches!(classify("SHOW TABLES").unwrap(), SqlKind::Other));
        assert!(classify("SELEC 1").is_err());
        assert!(classify("SELECT 1; SELECT 2").is_err());
    }
}
