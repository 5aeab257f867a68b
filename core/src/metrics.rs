//! Counters an executor keeps and reports to the scheduler with each heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of an executor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorMetrics {
    pub rows_scanned: u64,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    /// Bytes this executor served to others over Flight `do_get`.
    pub bytes_served: u64,
    /// Bytes this executor fetched from other executors over Flight.
    pub bytes_fetched_remote: u64,
    /// Bytes of shuffle input read from this executor's own store.
    pub bytes_read_local: u64,
    pub shuffle_bytes_written: u64,
    /// Times operators (sort, aggregate, join) spilled state to disk for want of memory.
    pub spill_count: u64,
    pub spilled_bytes: u64,
}

/// Live counters, shared by the task runner, the shuffle store and the Flight service.
#[derive(Debug, Default)]
pub struct ExecutorCounters {
    pub rows_scanned: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_fetched_remote: AtomicU64,
    pub bytes_read_local: AtomicU64,
    pub shuffle_bytes_written: AtomicU64,
    pub spill_count: AtomicU64,
    pub spilled_bytes: AtomicU64,
}

impl ExecutorCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExecutorMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExecutorMetrics {
            rows_scanned: get(&self.rows_scanned),
            tasks_completed: get(&self.tasks_completed),
            tasks_failed: get(&self.tasks_failed),
            bytes_served: get(&self.bytes_served),
            bytes_fetched_remote: get(&self.bytes_fetched_remote),
            bytes_read_local: get(&self.bytes_read_local),
            shuffle_bytes_written: get(&self.shuffle_bytes_written),
            spill_count: get(&self.spill_count),
            spilled_bytes: get(&self.spilled_bytes),
        }
    }
}

use std::sync::Arc;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;

fn is_file_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<DataSourceExec>()
        .is_some_and(|ds| ds.data_source().downcast_ref::<FileScanConfig>().is_some())
}

/// Whether a plan reads table files (and so must run on executors).
pub fn reads_files(plan: &Arc<dyn ExecutionPlan>) -> bool {
    is_file_scan(plan) || plan.children().into_iter().any(reads_files)
}

/// Rows an executed plan read from table files, from its scans' metrics.
pub fn file_rows_scanned(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = if is_file_scan(plan) {
        plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0) as u64
    } else {
        0
    };
    own + plan
        .children()
        .into_iter()
        .map(file_rows_scanned)
        .sum::<u64>()
}

/// Spills and spilled bytes of an executed plan's operators, from their metrics.
pub fn plan_spills(plan: &Arc<dyn ExecutionPlan>) -> (u64, u64) {
    let (count, bytes) = plan.metrics().map_or((0, 0), |m| {
        (
            m.spill_count().unwrap_or(0) as u64,
            m.spilled_bytes().unwrap_or(0) as u64,
        )
    });
    plan.children()
        .into_iter()
        .map(plan_spills)
        .fold((count, bytes), |(c, b), (c2, b2)| (c + c2, b + b2))
}
