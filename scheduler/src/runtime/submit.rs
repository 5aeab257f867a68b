//! Planning and submission: a client's statement becomes a DataFusion plan, then either an
//! answer computed here (DDL, EXPLAIN, queries that read no table files) or a job cut into
//! stages, recorded in the store, and handed to the driver.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::{ExecutionPlan, collect, displayable};
use datafusion::prelude::SessionContext;
use ember_core::meta::put_chunked;
use ember_core::metrics::{file_rows_scanned, reads_files};
use ember_core::records::{JobLabel, Record, WriteSpec};
use ember_core::shuffle::{batches_to_ipc_stream, schema_to_bytes};
use ember_core::{EmberError, JobId, Result};
use tracing::{Instrument, info};

use super::{Scheduler, not_leader, unix_ms};
use crate::catalog;
use crate::driver::{Event, InlineResult, Job, JobOptions};
use crate::planner::{StageGraph, plan_stages};

/// What a client asks the scheduler to run.
#[derive(Debug, Clone)]
pub enum Query {
    Sql(String),
    /// A statement with positional placeholders (`$1`, `$2`, ...) and their values.
    Prepared {
        sql: String,
        params: Vec<ScalarValue>,
    },
    /// A DataFusion logical plan encoded with datafusion-proto.
    LogicalPlan(Bytes),
    /// A logical plan a front end built on this scheduler (Spark Connect), with what it runs
    /// for listings.
    Plan {
        plan: Arc<LogicalPlan>,
        description: String,
        /// A write that replaces what its target holds (Spark's mode "overwrite").
        replace: bool,
    },
}

impl Query {
    /// What it runs, for listings.
    fn describe(&self) -> String {
        match self {
            Query::Sql(sql) | Query::Prepared { sql, .. } => sql.clone(),
            Query::LogicalPlan(_) => "(a DataFrame plan)".to_string(),
            Query::Plan { description, .. } => description.clone(),
        }
    }
}

impl Scheduler {
    // ---- clients -------------------------------------------------------------------------

    /// Plans and starts a query; returns its job id. Planning errors come back here.
    /// Plans and submits a query for `owner` (the authenticated client; `None` when unknown),
    /// within its limit of jobs in flight.
    pub async fn submit(
        self: &Arc<Self>,
        query: Query,
        settings: Vec<(String, String)>,
        owner: Option<String>,
    ) -> Result<JobId> {
        let _admitted = self.admit(owner.as_deref())?;
        let label = JobLabel::new(None, "").owned_by(owner);
        self.submit_as(JobId::new_random(), query, settings, label)
            .await
    }

    /// Like [`submit`](Self::submit), under an id chosen (and recorded) beforehand; `label`
    /// says whose it is and of which batch job (its description is the query's).
    pub(crate) async fn submit_as(
        self: &Arc<Self>,
        job_id: JobId,
        query: Query,
        settings: Vec<(String, String)>,
        label: JobLabel,
    ) -> Result<JobId> {
        let this = Arc::clone(self);
        // Every log line of its planning carries the job's id.
        let span = tracing::info_span!("job", job_id = %job_id);
        super::isolate::planned(
            async move { this.plan_and_submit(job_id, query, settings, label).await }
                .instrument(span),
        )
        .await
    }

    async fn plan_and_submit(
        self: Arc<Self>,
        job_id: JobId,
        query: Query,
        settings: Vec<(String, String)>,
        label: JobLabel,
    ) -> Result<JobId> {
        let start = Instant::now();
        let label = JobLabel::new(label.script, &query.describe()).owned_by(label.owner);
        let replace = matches!(&query, Query::Plan { replace: true, .. });
        let partitions = self.shuffle_partitions();
        let (weight, settings) = job_weight(settings)?;
        let mut state = self.ctx.state();
        {
            let options = state.config_mut().options_mut();
            options.execution.target_partitions = partitions;
            for (k, v) in &settings {
                options
                    .set(k, v)
                    .map_err(|e| EmberError::User(format!("setting {k}: {e}")))?;
            }
        }
        let ctx = SessionContext::new_with_state(state);
        // SQL (prepared or not: JDBC prepares every statement) may be DDL, which the catalog
        // keeps; a plan built elsewhere may not.
        let plan = match query {
            Query::Sql(sql) => self.plan_sql(&ctx, &sql, None).await?,
            Query::Prepared { sql, params } => self.plan_sql(&ctx, &sql, Some(params)).await?,
            Query::LogicalPlan(bytes) => {
                crate::limits::check_plan_bytes(&bytes, &self.config.limits)?;
                let plan =
                    datafusion_proto::bytes::logical_plan_from_bytes(&bytes, &ctx.task_ctx())
                        .map_err(|e| {
                            EmberError::User(format!("cannot decode logical plan: {e}"))
                        })?;
                Some(self.check_built_plan(plan)?)
            }
            Query::Plan { plan, .. } => Some(self.check_built_plan(Arc::unwrap_or_clone(plan))?),
        };
        let Some(plan) = plan else {
            // DDL, run and recorded.
            // (not kept in the history: a DDL statement may carry a table's options)
            self.finish_inline(job_id.clone(), &Schema::empty(), &[], start, label, false)?;
            return Ok(job_id);
        };
        let df = ctx.execute_logical_plan(plan).await?;
        let logical = df.logical_plan().clone();
        if let LogicalPlan::Explain(explain) = &logical {
            let inner = ctx.state().create_physical_plan(&explain.plan).await?;
            // A write shows as it runs: staged, in parallel.
            let inner = match crate::writes::plan_write(&job_id, &inner)? {
                Some(write) => write.plan,
                None => inner,
            };
            let graph = plan_stages(job_id.as_str(), Arc::clone(&inner))?;
            let batch = explain_batch(&explain.plan, &inner, &graph)?;
            let schema = batch.schema();
            self.finish_inline(job_id.clone(), &schema, &[batch], start, label, true)?;
            return Ok(job_id);
        }
        // EXPLAIN ANALYZE runs its query as a job that answers with what it measured.
        let (physical, analyze) = match &logical {
            LogicalPlan::Analyze(a) => (ctx.state().create_physical_plan(&a.input).await?, true),
            _ => (df.create_physical_plan().await?, false),
        };
        let write = crate::writes::plan_write(&job_id, &physical)?;
        let physical = match &write {
            Some(w) => Arc::clone(&w.plan),
            None => physical,
        };
        if write.is_none() && !analyze && !reads_files(&physical) {
            let batches = collect(Arc::clone(&physical), ctx.task_ctx()).await?;
            self.add_rows_scanned(file_rows_scanned(&physical));
            let schema = physical.schema();
            self.finish_inline(job_id.clone(), &schema, &batches, start, label, true)?;
            return Ok(job_id);
        }
        let mut graph = plan_stages(job_id.as_str(), physical)?;
        if analyze {
            graph.schema = crate::driver::analyze::schema();
        }
        // Encoding refuses a plan executors could not receive now, rather than fail it later.
        let plans = graph
            .stages
            .values()
            .map(|stage| {
                Ok((
                    stage.stage_id,
                    ember_proto::encode_plan(Arc::clone(&stage.plan))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let write_stage = graph
            .stages
            .values()
            .find(|s| crate::writes::contains_staged_write(&s.plan))
            .map(|s| s.stage_id);
        let options = JobOptions {
            settings: task_settings(&ctx, settings),
            max_task_attempts: self.config.max_task_attempts,
            weight,
            label,
            write: write.zip(write_stage).map(|(w, stage)| WriteSpec {
                target: w.target,
                staging_root: w.staging_root,
                stage,
                single_file: w.single_file,
                replace,
            }),
            analyze,
            // Planning runs in the job's span: its tasks join that trace.
            trace_parent: ember_core::telemetry::current_traceparent(),
        };
        let mut job = Job::new(job_id.clone(), graph, options, unix_ms());
        let fence = self.record_job(&mut job, plans).await?;
        info!(job_id = %job_id, stages = job.stages.len(), "job submitted");
        let submitted = Event::JobSubmitted { job: Box::new(job) };
        if !self.dispatch_under(fence, submitted) {
            return Err(not_leader());
        }
        Ok(job_id)
    }

    /// Records a new job (its stage plans, then the job record) before it is acknowledged, so
    /// that a leader taking over finds it. Returns the leadership it was recorded under.
    async fn record_job(&self, job: &mut Job, plans: Vec<(u32, Bytes)>) -> Result<i64> {
        let fence = self.fence().ok_or_else(not_leader)?;
        let guard = super::journal::fence(&self.keys, fence);
        let unavailable = |e: EmberError| match e {
            EmberError::Unavailable(m) => {
                EmberError::Unavailable(format!("cannot record the job: {m}"))
            }
            other => other,
        };
        for (stage_id, bytes) in plans {
            let key = self.keys.stage_plan(job.id.as_str(), stage_id);
            let chunks = put_chunked(self.store.as_ref(), &key, &bytes, &guard)
                .await
                .map_err(unavailable)?
                .ok_or_else(not_leader)?;
            if let Some(stage) = job.stages.get_mut(&stage_id) {
                stage.plan_chunks = chunks;
            }
        }
        let op = super::journal::op(&self.keys, &Record::Job(Box::new(job.record())));
        if !self
            .store
            .txn(guard, vec![op])
            .await
            .map_err(unavailable)?
            .succeeded
        {
            return Err(not_leader());
        }
        Ok(fence)
    }

    /// A plan built by a client (or a front end) passes the same limits and confinement as
    /// SQL; DDL must come as SQL, so that the catalog can keep it.
    fn check_built_plan(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        crate::limits::check_logical_plan(&plan, &self.config.limits)?;
        self.allowed().check_plan(&plan)?;
        if let LogicalPlan::Ddl(_) = &plan {
            return Err(EmberError::User(
                "send DDL statements as SQL, so that the catalog can keep them".into(),
            ));
        }
        Ok(plan)
    }

    /// Runs a front end's planning work (translating a client's plan) on the planning
    /// threads, where deep plans have stack to spare and a panic fails only that request.
    pub async fn planning<T, F>(&self, planning: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        super::isolate::planned(planning).await
    }

    /// Plans a SQL statement, binding `params` when given. DDL is run here (and kept in the
    /// catalog): `None` then.
    async fn plan_sql(
        &self,
        ctx: &SessionContext,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Option<LogicalPlan>> {
        let plan = self.logical_plan(&ctx.state(), sql).await?;
        self.allowed().check_plan(&plan)?;
        if let LogicalPlan::Ddl(_) = &plan {
            self.run_ddl(ctx, plan, sql).await?;
            return Ok(None);
        }
        Ok(Some(match params {
            Some(params) => bind_parameters(plan, params)?,
            None => plan,
        }))
    }

    /// Runs a DDL statement and keeps what it changed in the shared catalog. A statement the
    /// store cannot record is undone, so that no scheduler serves a table the next would not.
    async fn run_ddl(&self, ctx: &SessionContext, plan: LogicalPlan, sql: &str) -> Result<()> {
        let fence = self.fence().ok_or_else(not_leader)?;
        let change = catalog::change_for(&self.keys, ctx, &plan);
        let undo = match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(c)) => Some(c.name.clone()),
            LogicalPlan::Ddl(DdlStatement::CreateView(c)) => Some(c.name.clone()),
            _ => None,
        };
        ctx.execute_logical_plan(plan).await?;
        let guard = super::journal::fence(&self.keys, fence);
        match catalog::record(self.store.as_ref(), guard, &change, sql).await {
            Ok(true) => Ok(()),
            failed => {
                if let (catalog::CatalogChange::Put(_), Some(name)) = (&change, undo) {
                    let _ = ctx.deregister_table(name);
                }
                match failed {
                    Err(e) => Err(EmberError::Unavailable(format!(
                        "cannot record the statement in the catalog: {e}"
                    ))),
                    _ => Err(not_leader()),
                }
            }
        }
    }

    /// Plans a statement without running it: the schema of its result, and of its parameters
    /// (`$1`, `$2`, ... as fields in order; a type not inferable from the query is `Null`).
    pub async fn prepare(self: &Arc<Self>, sql: &str) -> Result<(Schema, Schema)> {
        let this = Arc::clone(self);
        let sql = sql.to_string();
        super::isolate::planned(async move { this.prepare_here(&sql).await }).await
    }

    /// Parses `sql`, refuses it when it passes the limits, and plans it.
    async fn logical_plan(&self, state: &SessionState, sql: &str) -> Result<LogicalPlan> {
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        crate::limits::check_statement(&statement, &self.config.limits)?;
        Ok(state.statement_to_plan(statement).await?)
    }

    async fn prepare_here(&self, sql: &str) -> Result<(Schema, Schema)> {
        let plan = self.logical_plan(&self.ctx.state(), sql).await?;
        let result = plan.schema().as_arrow().clone();
        let types = plan.get_parameter_types()?;
        let mut params: Vec<(usize, DataType)> = Vec::new();
        for (name, data_type) in types {
            let index = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    EmberError::User(format!(
                        "placeholder {name}: use positional parameters ($1, $2, ... or ?)"
                    ))
                })?;
            params.push((index, data_type.unwrap_or(DataType::Null)));
        }
        params.sort_by_key(|(i, _)| *i);
        let fields: Vec<Field> = params
            .into_iter()
            .map(|(i, t)| Field::new(format!("${i}"), t, true))
            .collect();
        Ok((result, Schema::new(fields)))
    }

    /// Where this scheduler's SQL may read and write.
    fn allowed(&self) -> &crate::confine::AllowedLocations {
        &self.config.confinement.allowed_locations
    }

    /// The session every statement plans in: its catalog is the cluster's tables.
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    fn shuffle_partitions(&self) -> usize {
        if self.config.target_partitions > 0 {
            return self.config.target_partitions;
        }
        (self.read(|d| d.total_slots()) as usize).max(1)
    }

    fn finish_inline(
        &self,
        job_id: JobId,
        schema: &Schema,
        batches: &[RecordBatch],
        start: Instant,
        label: JobLabel,
        history: bool,
    ) -> Result<()> {
        // An ad-hoc query is kept in the history like a distributed one (a batch job's
        // statements are kept as their batch job).
        let adhoc = history && label.script.is_none();
        let result = InlineResult {
            schema: schema_to_bytes(schema),
            result: batches_to_ipc_stream(schema, batches)?,
            elapsed_ms: start.elapsed().as_millis() as u64,
            finished_ms: unix_ms(),
            label,
        };
        self.dispatch(Event::InlineFinished {
            job: job_id.clone(),
            result,
        });
        if adhoc {
            self.record_history(job_id.as_str());
        }
        Ok(())
    }
}

/// The setting that gives a job its share of task slots against other running jobs.
pub const JOB_WEIGHT_SETTING: &str = "ember.job_weight";

/// Takes Ember's own settings out of a client's (the rest are DataFusion's): the job's weight.
fn job_weight(settings: Vec<(String, String)>) -> Result<(u32, Vec<(String, String)>)> {
    let mut weight = 1;
    let mut rest = Vec::with_capacity(settings.len());
    for (key, value) in settings {
        if key == JOB_WEIGHT_SETTING {
            weight = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| (1..=10_000).contains(w))
                .ok_or_else(|| {
                    EmberError::User(format!(
                        "{JOB_WEIGHT_SETTING} must be a whole number from 1 to 10000, not `{value}`"
                    ))
                })?;
        } else if key.starts_with("ember.") {
            return Err(EmberError::User(format!(
                "unknown setting {key} (Ember's own settings: {JOB_WEIGHT_SETTING})"
            )));
        } else {
            rest.push((key, value));
        }
    }
    Ok((weight, rest))
}

/// Puts `params` in for the plan's placeholders `$1`, `$2`, ..., checking their number and
/// types: a value of another numeric type is cast when it fits, anything else is refused.
fn bind_parameters(plan: LogicalPlan, params: Vec<ScalarValue>) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    if types.len() != params.len() {
        return Err(EmberError::User(format!(
            "the statement has {} parameter(s) but {} value(s) were bound",
            types.len(),
            params.len()
        )));
    }
    let mut bound = Vec::with_capacity(params.len());
    for (i, value) in params.into_iter().enumerate() {
        let name = format!("${}", i + 1);
        let expected = types
            .get(&name)
            .ok_or_else(|| EmberError::User(format!("the statement has no parameter {name}")))?;
        let value = match expected {
            Some(t) if *t != value.data_type() && !value.is_null() => {
                let got = value.data_type();
                // Clients bind Utf8 where a Parquet column is read as Utf8View, Int64 where
                // it is Int32, and so on: values of the same kind are cast.
                let compatible = (t.is_numeric() && got.is_numeric())
                    || (t.is_temporal() && got.is_temporal())
                    || (is_string(t) && is_string(&got))
                    || (is_binary(t) && is_binary(&got));
                let cast = compatible.then(|| value.cast_to(t).ok()).flatten();
                cast.ok_or_else(|| {
                    EmberError::User(format!(
                        "parameter {name} must be of type {t}, but a value of type {} was bound ({value})",
                        value.data_type()
                    ))
                })?
            }
            _ => value,
        };
        bound.push(value);
    }
    Ok(plan.with_param_values(bound)?)
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// The DataFusion settings tasks run with: the client's, plus the execution batch size.
fn task_settings(
    ctx: &SessionContext,
    mut settings: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let batch_size = ctx.state().config().options().execution.batch_size;
    if !settings
        .iter()
        .any(|(k, _)| k == "datafusion.execution.batch_size")
    {
        settings.push((
            "datafusion.execution.batch_size".to_string(),
            batch_size.to_string(),
        ));
    }
    settings
}

fn explain_batch(
    logical: &LogicalPlan,
    physical: &Arc<dyn ExecutionPlan>,
    graph: &StageGraph,
) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    let rows = [
        ("logical_plan", logical.display_indent().to_string()),
        (
            "physical_plan",
            displayable(physical.as_ref()).indent(false).to_string(),
        ),
        ("distributed_plan", graph.display()),
    ];
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
        ],
    )?)
}
