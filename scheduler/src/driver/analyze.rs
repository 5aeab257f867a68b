//! Distributed `EXPLAIN ANALYZE`: the query runs as a job like any other; when it has
//! succeeded, its answer is this report instead of its rows — every stage with its wall time,
//! the spread of its task times (skew), and each operator's metrics summed over its tasks.
//! Pure: it reads the driver's job.

use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::{ExecutionPlan, displayable};
use ember_core::Result;
use ember_core::shuffle::batches_to_ipc_stream;
use ember_core::task_metrics::{OperatorMetrics, StageMetrics, format_bytes, format_nanos};

use super::Job;

/// The columns of `EXPLAIN ANALYZE`'s answer, as DataFusion's.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]))
}

/// The report of a finished job, as an Arrow IPC stream of one row.
pub fn report(job: &Job) -> Result<Bytes> {
    let schema = schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec!["Plan with Metrics"])),
            Arc::new(StringArray::from(vec![render(job)])),
        ],
    )?;
    batches_to_ipc_stream(&schema, &[batch])
}

/// Every stage of the job, in order, with its metrics.
pub fn render(job: &Job) -> String {
    let mut out = String::new();
    let measured: u32 = job
        .stages
        .keys()
        .map(|id| job.stage_metrics(*id).tasks)
        .sum();
    if measured < job.tasks_total() {
        // Tasks restored from records after a failover carry no measurements.
        let _ = writeln!(
            out,
            "Measured {measured} of {} tasks: the others ran under an earlier leader; \
             sums below cover the measured tasks only.",
            job.tasks_total()
        );
    }
    for (id, stage) in &job.stages {
        let metrics = job.stage_metrics(*id);
        let (rows, bytes) = job.stage_written(*id);
        let _ = writeln!(
            out,
            "Stage {id} (tasks={}, inputs={:?}){}: {}, output={rows} rows, {}",
            stage.tasks.len(),
            stage.inputs,
            if *id == job.final_stage {
                " [final]"
            } else {
                ""
            },
            stage_summary(&metrics, job.stage_wall_ms(*id)),
            format_bytes(bytes),
        );
        let mut operators = metrics.operators.iter();
        write_operator(&mut out, &stage.plan, 1, &mut operators);
    }
    out
}

/// Wall time, task times and skew, compute time and peak memory of one stage.
fn stage_summary(m: &StageMetrics, wall_ms: Option<u64>) -> String {
    if m.tasks == 0 {
        return "no task metrics (its tasks ran under an earlier leader)".to_string();
    }
    let ms = |v: u64| format_nanos(v * 1_000_000);
    let median = m.task_ms_at(0.5);
    let max = m.task_ms_at(1.0);
    let skew = if median == 0 {
        1.0
    } else {
        max as f64 / median as f64
    };
    format!(
        "wall={}, task_time=[min={}, median={}, max={}], skew={skew:.1}x, compute={}, \
         peak_task_memory={}, spilled={}",
        wall_ms.map_or_else(|| "?".to_string(), ms),
        ms(m.task_ms_at(0.0)),
        ms(median),
        ms(max),
        format_nanos(m.compute_ns),
        format_bytes(m.peak_memory_bytes),
        format_bytes(m.spilled_bytes),
    )
}

fn write_operator<'a>(
    out: &mut String,
    plan: &Arc<dyn ExecutionPlan>,
    depth: usize,
    metrics: &mut impl Iterator<Item = &'a OperatorMetrics>,
) {
    let line = displayable(plan.as_ref()).one_line().to_string();
    let shown = match metrics.next() {
        Some(m) if m.operator == plan.name() => m
            .metrics
            .iter()
            .map(|v| format!("{}={}", v.name, v.unit.display(v.value)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{:indent$}{}, metrics=[{shown}]",
        "",
        line.trim_end(),
        indent = depth * 2
    );
    for child in plan.children() {
        write_operator(out, child, depth + 1, metrics);
    }
}
