//! [`EmberSession`]: DataFusion's `SessionContext` and DataFrame API, executed on a cluster.
//!
//! The session is a DataFusion `SessionContext` whose query planner does not run plans here:
//! every plan a DataFrame action (`collect`, `show`, `count`, ...) would execute is sent to the
//! cluster as a logical plan, run there as a distributed job, and its result streamed back.
//! Tables registered in the session (`read_parquet`, `register_csv`, ...) travel inside the
//! plans, so their paths must be readable by the executors (a shared file system or an object
//! store); tables of the cluster's own catalog are reached with [`EmberSession::cluster_sql`].

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use ember_core::{EmberError, Result};
use futures::{StreamExt, TryStreamExt, stream};

use crate::EmberClient;

/// The cluster a session started in this process (`embedded` feature).
#[cfg(feature = "embedded")]
type Embedded = crate::EmbeddedCluster;

/// Without the `embedded` feature, no cluster runs in this process.
#[cfg(not(feature = "embedded"))]
#[derive(Debug)]
enum Embedded {}

/// A DataFusion session whose DataFrames run on an Ember cluster.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use datafusion::functions_aggregate::expr_fn::{count, sum};
/// use datafusion::prelude::*;
/// use ember_client::EmberSession;
///
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("sales.csv");
/// # std::fs::write(&path, "region,amount\neu,10\nus,5\neu,7\nasia,1\nus,2\n")?;
/// # let path = path.to_str().unwrap();
/// // An embedded cluster in this process (or `EmberSession::connect("http://host:50050")`).
/// let session = EmberSession::embedded(2).await?;
/// let by_region = session
///     .read_csv(path, CsvReadOptions::new())
///     .await?
///     .filter(col("amount").gt(lit(1)))?
///     .aggregate(
///         vec![col("region")],
///         vec![count(lit(1)).alias("sales"), sum(col("amount")).alias("total")],
///     )?
///     .sort(vec![col("total").sort(false, true)])?;
/// let batches = by_region.collect().await?; // runs as a distributed job
/// let total_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
/// assert_eq!(total_rows, 2); // eu (17), us (7); asia's only sale is filtered out
/// session.close().await;
/// # Ok(()) }
/// ```
pub struct EmberSession {
    ctx: SessionContext,
    client: EmberClient,
    embedded: Option<Embedded>,
}

impl fmt::Debug for EmberSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmberSession")
            .field("embedded", &self.embedded.is_some())
            .finish_non_exhaustive()
    }
}

impl EmberSession {
    /// A session on the cluster whose scheduler is at `url` (several comma-separated are
    /// tried in turn).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_client(EmberClient::connect(url).await?)
    }

    /// A session on an embedded cluster of `executors` executors started in this process
    /// (stopped by [`close`](Self::close)).
    #[cfg(feature = "embedded")]
    pub async fn embedded(executors: usize) -> Result<Self> {
        let cluster = crate::EmbeddedCluster::start(executors, 0).await?;
        let client = cluster.client().await?;
        Self::build(client, Some(cluster))
    }

    /// A session over an existing client. Object stores (`s3://`) are set up from this
    /// process's `EMBER_S3_*` / `AWS_*` environment; a malformed value is an error.
    pub fn with_client(client: EmberClient) -> Result<Self> {
        Self::build(client, None)
    }

    fn build(client: EmberClient, embedded: Option<Embedded>) -> Result<Self> {
        let stores = ember_core::object_stores::EmberObjectStores::new(
            ember_core::object_stores::ObjectStoreConfig::from_env()?,
        );
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(stores)
            .build_arc()
            .expect("a runtime without limits builds");
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_information_schema(true))
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(ClusterPlanner {
                client: client.clone(),
            }))
            .build();
        Ok(Self {
            ctx: SessionContext::new_with_state(state),
            client,
            embedded,
        })
    }

    /// The client underneath, for SQL and job control.
    pub fn client(&self) -> &EmberClient {
        &self.client
    }

    /// Runs SQL on the cluster's own catalog (tables created by any session there) and
    /// collects the result.
    pub async fn cluster_sql(
        &self,
        sql: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        Ok(self.client.sql(sql).await?.batches)
    }

    /// A DataFrame over a table of the cluster's catalog: its definition is looked up there
    /// and registered in this session under the same name.
    pub async fn cluster_table(&self, name: &str) -> Result<DataFrame> {
        let ddl = self
            .client
            .sql(&format!("SHOW CREATE TABLE {name}"))
            .await?;
        let definition = ddl
            .batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column_by_name("definition").cloned())
            .and_then(|c| {
                datafusion::arrow::array::cast::as_string_array(&c)
                    .iter()
                    .next()
                    .flatten()
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                EmberError::User(format!("the cluster has no definition of table {name}"))
            })?;
        self.ctx.sql(&definition).await?;
        Ok(self.ctx.table(name).await?)
    }

    /// Stops the embedded cluster, if this session started one.
    pub async fn close(self) {
        #[cfg(feature = "embedded")]
        if let Some(cluster) = self.embedded {
            cluster.shutdown().await;
        }
    }
}

impl Deref for EmberSession {
    type Target = SessionContext;

    fn deref(&self) -> &SessionContext {
        &self.ctx
    }
}

/// Plans every query as one [`ClusterExec`]: the cluster does the real planning.
#[derive(Debug)]
struct ClusterPlanner {
    client: EmberClient,
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        _session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = datafusion_proto::bytes::logical_plan_to_bytes(logical_plan).map_err(|e| {
            DataFusionError::Plan(format!("this plan cannot be sent to the cluster: {e}"))
        })?;
        Ok(Arc::new(ClusterExec::new(
            self.client.clone(),
            plan.to_vec(),
            logical_plan.schema().inner().clone(),
        )))
    }
}

/// A leaf that runs its logical plan on the cluster and streams the result back.
#[derive(Debug)]
struct ClusterExec {
    client: EmberClient,
    plan: Vec<u8>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ClusterExec {
    fn new(client: EmberClient, plan: Vec<u8>, schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            client,
            plan,
            schema,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for ClusterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ClusterExec: plan_bytes={}", self.plan.len())
    }
}

impl ExecutionPlan for ClusterExec {
    fn name(&self) -> &str {
        "ClusterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "ClusterExec has no children".into(),
            ));
        }
        Ok(self)
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ClusterExec has one partition, not {partition}"
            )));
        }
        let client = self.client.clone();
        let plan = self.plan.clone();
        let run = async move {
            let job = client.submit_plan_bytes(plan).await?;
            let status = client.wait(&job, |_| {}).await?;
            let (_, batches) = client.fetch(&status)?;
            let release = ReleaseOnEnd(Some((client, job)));
            Ok::<_, EmberError>(batches.map(move |b| {
                let _keep = &release;
                b
            }))
        };
        let batches = stream::once(run)
            .try_flatten()
            .map_err(DataFusionError::from);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        )))
    }
}

/// Frees the job's result on the cluster once its stream is done with.
struct ReleaseOnEnd(Option<(EmberClient, ember_core::JobId)>);

impl Drop for ReleaseOnEnd {
    fn drop(&mut self) {
        if let Some((client, job)) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = client.release(&job).await;
            });
        }
    }
}
