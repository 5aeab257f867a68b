//! `ShuffleWriterExec`: the root of every stage; writes one input partition's output, split by
//! the consumer's partitioning, into the executor's shuffle store.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::BatchCoalescer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::{ShuffleEnv, ShuffleOutput};
use crate::job::PartitionStats;

/// Writes partition `i` of its input as map output `i` of stage `stage_id`.
///
/// `execute(i)` yields one summary batch: per output partition, the rows and bytes written.
#[derive(Debug)]
pub struct ShuffleWriterExec {
    job_id: String,
    stage_id: u32,
    input: Arc<dyn ExecutionPlan>,
    output: ShuffleOutput,
    properties: Arc<PlanProperties>,
    /// Rows and bytes written, time spent partitioning and writing (EXPLAIN ANALYZE).
    metrics: metrics::ExecutionPlanMetricsSet,
}

impl ShuffleWriterExec {
    pub fn new(
        job_id: impl Into<String>,
        stage_id: u32,
        input: Arc<dyn ExecutionPlan>,
        output: ShuffleOutput,
    ) -> Self {
        let schema = summary_schema();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            job_id: job_id.into(),
            stage_id,
            input,
            output,
            properties: Arc::new(properties),
            metrics: metrics::ExecutionPlanMetricsSet::new(),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn stage_id(&self) -> u32 {
        self.stage_id
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    pub fn output(&self) -> &ShuffleOutput {
        &self.output
    }

    /// Reads the per-partition stats out of the summary batches `execute` yields.
    pub fn stats_from_summary(batches: &[RecordBatch], partitions: usize) -> Vec<PartitionStats> {
        let mut stats = vec![PartitionStats::default(); partitions];
        for batch in batches {
            let col = |i: usize| batch.column(i);
            let (Some(p), Some(rows), Some(bytes)) = (
                col(0).as_any().downcast_ref::<UInt32Array>(),
                col(1).as_any().downcast_ref::<UInt64Array>(),
                col(2).as_any().downcast_ref::<UInt64Array>(),
            ) else {
                continue;
            };
            for i in 0..batch.num_rows() {
                if let Some(s) = stats.get_mut(p.value(i) as usize) {
                    s.rows += rows.value(i);
                    s.bytes += bytes.value(i);
                }
            }
        }
        stats
    }
}

fn summary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt32, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
    ]))
}

impl DisplayAs for ShuffleWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.output {
            ShuffleOutput::Hash(Partitioning::Hash(exprs, n)) => {
                let keys: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                write!(
                    f,
                    "ShuffleWriterExec: stage={}, hash=[{}], partitions={n}",
                    self.stage_id,
                    keys.join(", ")
                )
            }
            ShuffleOutput::Hash(other) => write!(
                f,
                "ShuffleWriterExec: stage={}, partitioning={other}",
                self.stage_id
            ),
            ShuffleOutput::PassThrough(n) => write!(
                f,
                "ShuffleWriterExec: stage={}, pass-through, partitions={n}",
                self.stage_id
            ),
        }
    }
}

impl ExecutionPlan for ShuffleWriterExec {
    fn name(&self) -> &str {
        "ShuffleWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn metrics(&self) -> Option<metrics::MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "ShuffleWriterExec takes one child".into(),
            ));
        }
        Ok(Arc::new(ShuffleWriterExec::new(
            self.job_id.clone(),
            self.stage_id,
            children.remove(0),
            self.output.clone(),
        )))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        if let ShuffleOutput::Hash(Partitioning::Hash(exprs, _)) = &self.output {
            for expr in exprs {
                if f(expr)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
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
                DataFusionError::Internal("ShuffleWriterExec runs only on an executor".into())
            })?;
        let pool = Arc::clone(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        let input_partitions = self.input.output_partitioning().partition_count();
        let measured = WriteMetrics {
            compute: metrics::MetricBuilder::new(&self.metrics).elapsed_compute(partition),
            repartition: metrics::MetricBuilder::new(&self.metrics)
                .subset_time("repartition_time", partition),
            rows: metrics::MetricBuilder::new(&self.metrics).counter("rows_written", partition),
            bytes: metrics::MetricBuilder::new(&self.metrics).counter("bytes_written", partition),
        };
        let write = write_partition(
            env,
            pool,
            self.job_id.clone(),
            self.stage_id,
            partition,
            input_partitions,
            self.output.clone(),
            input,
            measured,
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            summary_schema(),
            futures::stream::once(write),
        )))
    }
}

/// What one map task's write measures.
struct WriteMetrics {
    compute: metrics::Time,
    repartition: metrics::Time,
    rows: metrics::Count,
    bytes: metrics::Count,
}

#[allow(clippy::too_many_arguments)]
async fn write_partition(
    env: Arc<ShuffleEnv>,
    pool: Arc<dyn MemoryPool>,
    job_id: String,
    stage_id: u32,
    map: usize,
    input_partitions: usize,
    output: ShuffleOutput,
    mut input: SendableRecordBatchStream,
    measured: WriteMetrics,
) -> Result<RecordBatch> {
    let schema = input.schema();
    let partitions = output.partition_count();
    let mut partitioner = match &output {
        ShuffleOutput::Hash(p) => Some(BatchPartitioner::try_new(
            p.clone(),
            measured.repartition.clone(),
            map,
            input_partitions,
        )?),
        ShuffleOutput::PassThrough(_) => None,
    };
    let mut writer = env
        .store
        .writer(
            &job_id,
            stage_id,
            map as u32,
            Arc::clone(&schema),
            partitions,
            &env.config,
        )?
        .with_memory_pool(&pool, format!("ShuffleWriterExec[{map}]"));
    let batch_rows = env.config.batch_rows;
    let mut coalescers: Vec<BatchCoalescer> = (0..partitions)
        .map(|_| BatchCoalescer::new(Arc::clone(&schema), batch_rows))
        .collect();
    let mut push =
        |writer: &mut super::MapOutputWriter, p: usize, batch: RecordBatch| -> Result<()> {
            let coalescer = &mut coalescers[p];
            coalescer.push_batch(batch)?;
            while let Some(done) = coalescer.next_completed_batch() {
                writer.write(p, &done)?;
            }
            Ok(())
        };
    while let Some(batch) = input.next().await {
        let batch = batch?;
        // Time spent here, not waiting for the input.
        let _timer = measured.compute.timer();
        match partitioner.as_mut() {
            Some(partitioner) => {
                for item in partitioner.partition_iter(batch)? {
                    let (p, part) = item?;
                    push(&mut writer, p, part)?;
                }
            }
            None => push(&mut writer, map.min(partitions - 1), batch)?,
        }
    }
    let _timer = measured.compute.timer();
    for (p, coalescer) in coalescers.iter_mut().enumerate() {
        coalescer.finish_buffered_batch()?;
        while let Some(done) = coalescer.next_completed_batch() {
            writer.write(p, &done)?;
        }
    }
    let output = writer.finish()?;
    let stats = output.stats().to_vec();
    env.store.insert(&job_id, stage_id, map as u32, output);
    let written: u64 = stats.iter().map(|s| s.bytes).sum();
    measured.bytes.add(written as usize);
    measured
        .rows
        .add(stats.iter().map(|s| s.rows).sum::<u64>() as usize);
    crate::metrics::ExecutorCounters::add(&env.counters.shuffle_bytes_written, written);
    let batch = RecordBatch::try_new(
        summary_schema(),
        vec![
            Arc::new(UInt32Array::from_iter_values(0..partitions as u32)),
            Arc::new(UInt64Array::from_iter_values(stats.iter().map(|s| s.rows))),
            Arc::new(UInt64Array::from_iter_values(stats.iter().map(|s| s.bytes))),
        ],
    )?;
    Ok(batch)
}
