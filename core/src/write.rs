//! Staged writes: `COPY ... TO` and `INSERT INTO` run in parallel, one task per input
//! partition, each task writing its own files under a staging prefix the scheduler commits
//! once the job succeeds (and deletes when it fails or is cancelled).
//!
//! [`StagedWriteExec`] wraps the `DataSinkExec` DataFusion planned (Parquet, CSV or JSON):
//! partition `p` of task attempt `a` runs that sink over input partition `p` alone, pointed at
//! `{staging_root}/{p}-{a}/` instead of the target. The attempt comes from the task's
//! [`TaskAttempt`] extension, so a retried task never mixes its files with a failed attempt's,
//! and the scheduler, which knows the attempt of each task that succeeded, commits exactly
//! those directories.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::file_format::csv::CsvSink;
use datafusion::datasource::file_format::json::JsonSink;
use datafusion::datasource::file_format::parquet::ParquetSink;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileSinkConfig};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};

/// The attempt number of the task a plan runs in (set by the executor for every task).
#[derive(Debug, Clone, Copy)]
pub struct TaskAttempt(pub u32);

/// Where task attempt `attempt` of partition `partition` stages its files.
pub fn staged_dir(staging_root: &str, partition: usize, attempt: u32) -> String {
    format!(
        "{}/{partition}-{attempt}/",
        staging_root.trim_end_matches('/')
    )
}

/// The sink a `DataSinkExec` writes through, if it is a file sink Ember can stage.
pub fn file_sink_config(sink: &dyn DataSink) -> Option<&FileSinkConfig> {
    if let Some(s) = sink.downcast_ref::<ParquetSink>() {
        return Some(datafusion::datasource::physical_plan::FileSink::config(s));
    }
    if let Some(s) = sink.downcast_ref::<CsvSink>() {
        return Some(datafusion::datasource::physical_plan::FileSink::config(s));
    }
    if let Some(s) = sink.downcast_ref::<JsonSink>() {
        return Some(datafusion::datasource::physical_plan::FileSink::config(s));
    }
    None
}

/// The same sink writing to `path` (a directory, or a file for single-file output).
fn retarget(sink: &dyn DataSink, path: &str) -> Result<Arc<dyn DataSink>> {
    let config = file_sink_config(sink)
        .ok_or_else(|| DataFusionError::Internal("not a file sink".into()))?;
    let url = ListingTableUrl::parse(path)?;
    let config = FileSinkConfig {
        original_url: path.to_string(),
        table_paths: vec![url],
        file_group: FileGroup::default(),
        insert_op: InsertOp::Append,
        ..config.clone()
    };
    if let Some(s) = sink.downcast_ref::<ParquetSink>() {
        return Ok(Arc::new(ParquetSink::new(
            config,
            s.parquet_options().clone(),
        )));
    }
    if let Some(s) = sink.downcast_ref::<CsvSink>() {
        return Ok(Arc::new(CsvSink::new(config, s.writer_options().clone())));
    }
    if let Some(s) = sink.downcast_ref::<JsonSink>() {
        return Ok(Arc::new(JsonSink::new(config, s.writer_options().clone())));
    }
    Err(DataFusionError::Internal("not a file sink".into()))
}

/// Runs its `DataSinkExec` child once per input partition, into that task attempt's staging
/// directory; each partition answers with the sink's one-row `count`.
#[derive(Debug)]
pub struct StagedWriteExec {
    /// A `DataSinkExec` over the (multi-partition) input.
    sink: Arc<dyn ExecutionPlan>,
    staging_root: String,
    /// The file name a single-file output is written as (`None`: a directory of files).
    single_file: Option<String>,
    properties: Arc<PlanProperties>,
}

impl StagedWriteExec {
    pub fn try_new(
        sink: Arc<dyn ExecutionPlan>,
        staging_root: impl Into<String>,
        single_file: Option<String>,
    ) -> Result<Self> {
        let exec = sink.downcast_ref::<DataSinkExec>().ok_or_else(|| {
            DataFusionError::Internal("StagedWriteExec wraps a DataSinkExec".into())
        })?;
        if file_sink_config(exec.sink()).is_none() {
            return Err(DataFusionError::NotImplemented(
                "only Parquet, CSV and JSON writes run distributed".into(),
            ));
        }
        let partitions = exec.input().output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(sink.schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            sink,
            staging_root: staging_root.into(),
            single_file,
            properties: Arc::new(properties),
        })
    }

    pub fn staging_root(&self) -> &str {
        &self.staging_root
    }

    pub fn single_file(&self) -> Option<&str> {
        self.single_file.as_deref()
    }

    fn sink_exec(&self) -> &DataSinkExec {
        self.sink
            .downcast_ref::<DataSinkExec>()
            .expect("checked in try_new")
    }
}

impl DisplayAs for StagedWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "StagedWriteExec: staging={}", self.staging_root)
    }
}

impl ExecutionPlan for StagedWriteExec {
    fn name(&self) -> &str {
        "StagedWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.sink]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "StagedWriteExec has one child".into(),
            ));
        }
        Ok(Arc::new(Self::try_new(
            children.remove(0),
            self.staging_root.clone(),
            self.single_file.clone(),
        )?))
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
        let attempt = context
            .session_config()
            .get_extension::<TaskAttempt>()
            .map_or(0, |a| a.0);
        let exec = self.sink_exec();
        let dir = staged_dir(&self.staging_root, partition, attempt);
        let path = match &self.single_file {
            Some(name) => format!("{dir}{name}"),
            None => dir,
        };
        let sink = retarget(exec.sink(), &path)?;
        let input: Arc<dyn ExecutionPlan> =
            Arc::new(OnePartitionExec::new(Arc::clone(exec.input()), partition));
        let write = DataSinkExec::new(input, sink, exec.sort_order().clone());
        write.execute(0, context)
    }
}

/// One partition of its input, as a single-partition plan (what a sink reads in one task).
#[derive(Debug)]
struct OnePartitionExec {
    input: Arc<dyn ExecutionPlan>,
    partition: usize,
    properties: Arc<PlanProperties>,
}

impl OnePartitionExec {
    fn new(input: Arc<dyn ExecutionPlan>, partition: usize) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            partition,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for OnePartitionExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "OnePartitionExec: partition={}", self.partition)
    }
}

impl ExecutionPlan for OnePartitionExec {
    fn name(&self) -> &str {
        "OnePartitionExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self::new(children.remove(0), self.partition)))
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
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "OnePartitionExec has one partition, not {partition}"
            )));
        }
        self.input.execute(self.partition, context)
    }
}
