//! Plain values the driver's tests are written in: stage graphs, executors, task reports.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use ember_core::error::ErrorKind;
use ember_core::job::{ExecutorSpec, PartitionStats, TaskOutcome, TaskStatus};
use ember_core::shuffle::{PartitionLocation, ShuffleOutput, ShuffleWriterExec};
use ember_core::{EmberError, Result, StageId, TaskId};

use super::StageEncoder;
use crate::planner::{StageGraph, StagePlan};

/// A graph of stages `(id, tasks, inputs)`, each with 2 output partitions; the last is final.
pub fn graph(stages: &[(StageId, usize, &[StageId])]) -> StageGraph {
    let schema = Arc::new(Schema::empty());
    let mut map = BTreeMap::new();
    for (id, tasks, inputs) in stages {
        let input = Arc::new(EmptyExec::new(Arc::clone(&schema)));
        let plan = Arc::new(ShuffleWriterExec::new(
            "j",
            *id,
            input,
            ShuffleOutput::PassThrough(2),
        ));
        let stage = StagePlan {
            stage_id: *id,
            plan,
            inputs: inputs.to_vec(),
            tasks: *tasks,
            output_partitions: 2,
        };
        map.insert(*id, stage);
    }
    StageGraph {
        final_stage: stages.last().unwrap().0,
        stages: map,
        schema,
    }
}

/// Encodes a stage as the text `stage N`: the driver's tests need no real plans.
pub struct TestEncoder;

impl StageEncoder for TestEncoder {
    fn encode(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        _inputs: &dyn Fn(StageId) -> Option<Vec<Vec<PartitionLocation>>>,
    ) -> Result<Bytes> {
        let writer = plan
            .downcast_ref::<ShuffleWriterExec>()
            .ok_or_else(|| EmberError::Internal("not a stage plan".into()))?;
        Ok(Bytes::from(format!("stage {}", writer.stage_id())))
    }
}

pub fn exec(id: &str, slots: u32) -> ExecutorSpec {
    ExecutorSpec {
        id: id.into(),
        address: format!("{id}:50051"),
        slots,
    }
}

pub fn succeeded(task: &TaskId, executor: &str) -> TaskStatus {
    TaskStatus {
        task_id: task.clone(),
        executor_id: executor.into(),
        outcome: TaskOutcome::Succeeded {
            partitions: vec![PartitionStats { rows: 1, bytes: 8 }; 2],
            rows_scanned: 1,
            metrics: task_metrics(),
        },
    }
}

/// What a test task measured: 5 ms, 1 µs of CPU, 64 bytes at most.
pub fn task_metrics() -> ember_core::task_metrics::TaskMetrics {
    ember_core::task_metrics::TaskMetrics {
        elapsed_ms: 5,
        compute_ns: 1_000,
        peak_memory_bytes: 64,
        ..Default::default()
    }
}

pub fn failed(task: &TaskId, executor: &str, kind: ErrorKind) -> TaskStatus {
    TaskStatus {
        task_id: task.clone(),
        executor_id: executor.into(),
        outcome: TaskOutcome::Failed {
            message: "boom".into(),
            kind,
        },
    }
}

pub fn fetch_failed(task: &TaskId, executor: &str, from: &str, stage: StageId) -> TaskStatus {
    TaskStatus {
        task_id: task.clone(),
        executor_id: executor.into(),
        outcome: TaskOutcome::FetchFailed {
            executor_id: from.into(),
            stage_id: stage,
            message: "connection refused".into(),
        },
    }
}
