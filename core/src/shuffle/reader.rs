//! `ShuffleReaderExec`: a leaf that reads one partition of an earlier stage's output, from the
//! local store or, concurrently, over Flight from the executors that hold it.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::{PartitionLocation, ShuffleEnv, flight_data_stream};
use crate::error::EmberError;
use crate::metrics::ExecutorCounters;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};

/// How many map outputs one reader partition fetches at once.
const FETCH_CONCURRENCY: usize = 16;

#[derive(Debug)]
pub struct ShuffleReaderExec {
    stage_id: u32,
    schema: SchemaRef,
    /// Per output partition, where its pieces are; empty until the stage's inputs are resolved.
    locations: Vec<Vec<PartitionLocation>>,
    properties: Arc<PlanProperties>,
    /// Rows read, pieces read here and fetched from other executors (EXPLAIN ANALYZE).
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleReaderExec {
    /// A reader of stage `stage_id`'s output, partitioned as `partitioning` says (the hash
    /// partitioning of a cut repartition, so operators above see what they saw before the cut),
    /// not yet resolved.
    pub fn new(stage_id: u32, schema: SchemaRef, partitioning: Partitioning) -> Self {
        let locations = vec![Vec::new(); partitioning.partition_count()];
        Self::with_locations(stage_id, schema, partitioning, locations)
    }

    /// `partitioning` must have as many partitions as `locations`; otherwise the reader reports
    /// unknown partitioning.
    pub fn with_locations(
        stage_id: u32,
        schema: SchemaRef,
        partitioning: Partitioning,
        locations: Vec<Vec<PartitionLocation>>,
    ) -> Self {
        let partitioning = match partitioning {
            p @ Partitioning::Hash(..) if p.partition_count() == locations.len() => p,
            _ => Partitioning::UnknownPartitioning(locations.len()),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage_id,
            schema,
            locations,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    pub fn partitioning(&self) -> &Partitioning {
        &self.properties.partitioning
    }

    pub fn stage_id(&self) -> u32 {
        self.stage_id
    }

    pub fn locations(&self) -> &[Vec<PartitionLocation>] {
        &self.locations
    }

    pub fn partitions(&self) -> usize {
        self.locations.len()
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleReaderExec: stage={}, partitions={}",
            self.stage_id,
            self.locations.len()
        )
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "ShuffleReaderExec has no children".into(),
            ));
        }
        Ok(self)
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let env = context
            .session_config()
            .get_extension::<ShuffleEnv>()
            .ok_or_else(|| {
                DataFusionError::Internal("ShuffleReaderExec runs only on an executor".into())
            })?;
        let locations = self.locations.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("shuffle reader has no partition {partition}"))
        })?;
        let builder = || MetricBuilder::new(&self.metrics);
        let rows = builder().output_rows(partition);
        let (local, remote) = (
            builder().counter("local_pieces", partition),
            builder().counter("remote_pieces", partition),
        );
        let pieces = stream::iter(locations.into_iter().filter(|l| l.rows > 0))
            .map(move |location| {
                match location.executor_id == env.executor_id {
                    true => local.add(1),
                    false => remote.add(1),
                }
                read_location(Arc::clone(&env), location)
            })
            .flatten_unordered(FETCH_CONCURRENCY)
            .inspect_ok(move |batch| rows.add(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            pieces,
        )))
    }
}

/// One map output's piece of a partition: local when this executor holds it, Flight otherwise.
fn read_location(
    env: Arc<ShuffleEnv>,
    location: PartitionLocation,
) -> stream::BoxStream<'static, Result<datafusion::arrow::array::RecordBatch>> {
    let open = async move {
        if location.executor_id == env.executor_id {
            // Held here: the batches themselves, no encoding or copying.
            let counters = Arc::clone(&env.counters);
            let batches = env
                .store
                .partition_batches(&location.ticket())?
                .inspect_ok(move |b| {
                    let n = super::store::data_bytes(b) as u64;
                    ExecutorCounters::add(&counters.bytes_read_local, n);
                })
                .map_err(DataFusionError::from)
                .boxed();
            return Ok::<_, EmberError>(batches);
        }
        let data = env
            .fetcher
            .fetch(&location, Some(Arc::clone(&env.counters)))
            .await?;
        let batches = flight_data_stream(data)
            .map_err(move |e| to_datafusion(e, &location))
            .boxed();
        Ok(batches)
    };
    stream::once(open)
        .map_err(DataFusionError::from)
        .try_flatten()
        .boxed()
}

fn to_datafusion(
    e: arrow_flight::error::FlightError,
    location: &PartitionLocation,
) -> DataFusionError {
    use arrow_flight::error::FlightError;
    match e {
        FlightError::ExternalError(inner) => match inner.downcast::<EmberError>() {
            Ok(ember) => DataFusionError::from(*ember),
            Err(other) => DataFusionError::from(location.fetch_failed(other.to_string())),
        },
        FlightError::Arrow(e) => DataFusionError::ArrowError(Box::new(e), None),
        other => DataFusionError::from(location.fetch_failed(other.to_string())),
    }
}
