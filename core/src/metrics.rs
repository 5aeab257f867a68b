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
    /// Memory its tasks and held shuffle output reserve from its pool now, and the pool's size.
    pub memory_reserved_bytes: u64,
    pub memory_limit_bytes: u64,
}

/// Upper bounds (seconds) of the buckets durations are counted in: from a millisecond to half
/// an hour, for tasks and fetches as for whole jobs.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 1800.0,
];

/// Durations counted in [`DURATION_BUCKETS`], as Prometheus' histograms count them: lock-free,
/// so any task may observe.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at most each bucket's bound (not cumulative; the last: above every bound).
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at most it)`, cumulative, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, duration: std::time::Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, count) in self.buckets.iter().enumerate() {
            total += count.load(Ordering::Relaxed);
            let bound = DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: total,
        }
    }
}

/// Live counters, shared by the task runner, the shuffle store and the Flight service.
#[derive(Debug, Default)]
pub struct ExecutorCounters {
    /// How long tasks ran (from getting a slot to their end).
    pub task_seconds: Histogram,
    /// How long fetching a shuffle partition from another executor took to its first message.
    pub fetch_seconds: Histogram,
    pub rows_scanned: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_fetched_remote: AtomicU64,
    pub bytes_read_local: AtomicU64,
    pub shuffle_bytes_written: AtomicU64,
    pub spill_count: AtomicU64,
    pub spilled_bytes: AtomicU64,
    /// The memory pool its tasks share (set once the executor built it).
    pub memory:
        std::sync::OnceLock<std::sync::Arc<dyn datafusion::execution::memory_pool::MemoryPool>>,
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
            memory_reserved_bytes: self.memory.get().map_or(0, |p| p.reserved() as u64),
            memory_limit_bytes: self.memory.get().map_or(0, |p| match p.memory_limit() {
                datafusion::execution::memory_pool::MemoryLimit::Finite(n) => n as u64,
                _ => 0,
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_histogram_counts_each_duration_once_in_cumulative_buckets() {
        let h = Histogram::default();
        for ms in [0, 3, 3, 700, 4_000_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        let at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.001), 1);
        assert_eq!(at(0.005), 3);
        assert_eq!(at(1.0), 4);
        assert_eq!(at(1800.0), 4, "4,000 s is above every bound");
        assert_eq!(s.buckets.last().unwrap(), &(f64::INFINITY, 5));
        assert!((s.sum_seconds - 4000.706).abs() < 1e-6, "{}", s.sum_seconds);
    }
}
