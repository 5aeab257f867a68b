//! What one task measured while it ran — its operators' metrics, its time, its peak memory —
//! and how a stage's tasks add up. Executors read it off the executed plan; the scheduler keeps
//! it per task, sums it per stage and job, and shows it in `EXPLAIN ANALYZE`, the job's record
//! and the web UI.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::Result as DfResult;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricValue;

/// How a metric's number reads, and how tasks' values combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    /// A count (rows, batches, files): summed.
    Count,
    /// Bytes: summed.
    Bytes,
    /// Nanoseconds: summed.
    Nanos,
    /// The most bytes held at once: the largest task's.
    PeakBytes,
}

impl MetricUnit {
    pub fn name(self) -> &'static str {
        match self {
            MetricUnit::Count => "count",
            MetricUnit::Bytes => "bytes",
            MetricUnit::Nanos => "nanos",
            MetricUnit::PeakBytes => "peak_bytes",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "count" => MetricUnit::Count,
            "bytes" => MetricUnit::Bytes,
            "nanos" => MetricUnit::Nanos,
            "peak_bytes" => MetricUnit::PeakBytes,
            _ => return None,
        })
    }

    fn combine(self, a: u64, b: u64) -> u64 {
        match self {
            MetricUnit::PeakBytes => a.max(b),
            _ => a.saturating_add(b),
        }
    }

    /// The value as people read it: `1.50 s`, `12.0 MiB`, `3`.
    pub fn display(self, value: u64) -> String {
        match self {
            MetricUnit::Count => value.to_string(),
            MetricUnit::Bytes | MetricUnit::PeakBytes => format_bytes(value),
            MetricUnit::Nanos => format_nanos(value),
        }
    }
}

/// `512 B`, `1.5 KiB`, `12.0 MiB`, `2.25 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `850 ns`, `12.3 µs`, `4.56 ms`, `1.20 s`.
pub fn format_nanos(nanos: u64) -> String {
    match nanos {
        0..1_000 => format!("{nanos} ns"),
        1_000..1_000_000 => format!("{:.1} µs", nanos as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", nanos as f64 / 1e6),
        _ => format!("{:.2} s", nanos as f64 / 1e9),
    }
}

/// One named value of an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub unit: MetricUnit,
    pub value: u64,
}

/// One operator of a stage plan and what it measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorMetrics {
    /// The operator's name (`HashJoinExec`), to match it with the plan it came from.
    pub operator: String,
    pub metrics: Vec<Metric>,
}

impl OperatorMetrics {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Adds another task's values of the same operator.
    pub fn merge(&mut self, other: &OperatorMetrics) {
        for m in &other.metrics {
            match self.metrics.iter_mut().find(|own| own.name == m.name) {
                Some(own) => own.value = own.unit.combine(own.value, m.value),
                None => self.metrics.push(m.clone()),
            }
        }
    }
}

/// What a successful task measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMetrics {
    /// From the task getting its slot to its end.
    pub elapsed_ms: u64,
    /// Time its operators spent computing (DataFusion's `elapsed_compute`), summed: the CPU
    /// time of the task, as the operators count it.
    pub compute_ns: u64,
    /// The most memory the task held reserved from the executor's pool at once.
    pub peak_memory_bytes: u64,
    /// Bytes read from table files (where the scan counts them: Parquet).
    pub bytes_scanned: u64,
    pub spilled_bytes: u64,
    /// The stage plan's operators in pre-order (root first).
    pub operators: Vec<OperatorMetrics>,
}

impl TaskMetrics {
    /// Reads an executed plan's metrics.
    pub fn of_plan(plan: &Arc<dyn ExecutionPlan>, elapsed_ms: u64, peak_memory: u64) -> Self {
        let mut operators = Vec::new();
        collect_operators(plan, &mut operators);
        let sum = |name: &str| operators.iter().filter_map(|o| o.get(name)).sum::<u64>();
        TaskMetrics {
            elapsed_ms,
            compute_ns: operators
                .iter()
                .flat_map(|o| &o.metrics)
                .filter(|m| m.unit == MetricUnit::Nanos && m.name == "elapsed_compute")
                .map(|m| m.value)
                .sum(),
            peak_memory_bytes: peak_memory,
            bytes_scanned: sum("bytes_scanned"),
            spilled_bytes: sum("spilled_bytes"),
            operators,
        }
    }
}

fn collect_operators(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<OperatorMetrics>) {
    let mut metrics: Vec<Metric> = Vec::new();
    if let Some(set) = plan.metrics() {
        for m in set.aggregate_by_name().sorted_for_display().iter() {
            let Some(metric) = metric(m.value()) else {
                continue;
            };
            match metrics.iter_mut().find(|own| own.name == metric.name) {
                Some(own) => own.value = own.unit.combine(own.value, metric.value),
                None => metrics.push(metric),
            }
        }
    }
    out.push(OperatorMetrics {
        operator: plan.name().to_string(),
        metrics,
    });
    for child in plan.children() {
        collect_operators(child, out);
    }
}

fn metric(value: &MetricValue) -> Option<Metric> {
    let unit = match value {
        MetricValue::ElapsedCompute(_) | MetricValue::Time { .. } => MetricUnit::Nanos,
        MetricValue::SpilledBytes(_) | MetricValue::OutputBytes(_) => MetricUnit::Bytes,
        MetricValue::CurrentMemoryUsage(_) | MetricValue::PeakMemoryUsage { .. } => {
            MetricUnit::PeakBytes
        }
        MetricValue::Count { name, .. } if name.contains("bytes") => MetricUnit::Bytes,
        MetricValue::OutputRows(_)
        | MetricValue::SpillCount(_)
        | MetricValue::OutputBatches(_)
        | MetricValue::SpilledRows(_)
        | MetricValue::Count { .. }
        | MetricValue::Gauge { .. } => MetricUnit::Count,
        // Timestamps, pruning and ratios do not add up over tasks.
        _ => return None,
    };
    Some(Metric {
        name: value.name().to_string(),
        unit,
        value: value.as_usize() as u64,
    })
}

/// What a stage's finished tasks add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageMetrics {
    pub tasks: u32,
    /// Per operator (pre-order), summed over tasks; empty when no task reported any.
    pub operators: Vec<OperatorMetrics>,
    pub compute_ns: u64,
    pub peak_memory_bytes: u64,
    pub bytes_scanned: u64,
    pub spilled_bytes: u64,
    /// Task times, sorted: the spread shows skew.
    pub task_ms: Vec<u64>,
}

impl StageMetrics {
    pub fn add(&mut self, task: &TaskMetrics) {
        self.tasks += 1;
        self.compute_ns += task.compute_ns;
        self.peak_memory_bytes = self.peak_memory_bytes.max(task.peak_memory_bytes);
        self.bytes_scanned += task.bytes_scanned;
        self.spilled_bytes += task.spilled_bytes;
        let at = self.task_ms.partition_point(|t| *t <= task.elapsed_ms);
        self.task_ms.insert(at, task.elapsed_ms);
        if self.operators.is_empty() {
            self.operators = task.operators.clone();
        } else if self.operators.len() == task.operators.len() {
            for (own, other) in self.operators.iter_mut().zip(&task.operators) {
                own.merge(other);
            }
        }
    }

    /// The task time at quantile `q` (0.0 = fastest, 1.0 = slowest); 0 without tasks.
    pub fn task_ms_at(&self, q: f64) -> u64 {
        if self.task_ms.is_empty() {
            return 0;
        }
        let i = ((self.task_ms.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.task_ms[i]
    }
}

/// What one job used, over all its stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobResources {
    /// From submission to the end (or now).
    pub wall_ms: u64,
    /// Its operators' compute time, summed over tasks (CPU time as DataFusion counts it).
    pub compute_ns: u64,
    /// The most memory one task held at once.
    pub peak_task_memory_bytes: u64,
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    /// Bytes its stages wrote to shuffle.
    pub shuffle_bytes: u64,
    pub spilled_bytes: u64,
}

impl JobResources {
    pub fn add_stage(&mut self, stage: &StageMetrics) {
        self.compute_ns += stage.compute_ns;
        self.peak_task_memory_bytes = self.peak_task_memory_bytes.max(stage.peak_memory_bytes);
        self.bytes_scanned += stage.bytes_scanned;
        self.spilled_bytes += stage.spilled_bytes;
    }

    /// Adds another job's use (the statements of one batch job); wall times add up too.
    pub fn add(&mut self, other: &JobResources) {
        self.wall_ms += other.wall_ms;
        self.compute_ns += other.compute_ns;
        self.peak_task_memory_bytes = self
            .peak_task_memory_bytes
            .max(other.peak_task_memory_bytes);
        self.rows_scanned += other.rows_scanned;
        self.bytes_scanned += other.bytes_scanned;
        self.shuffle_bytes += other.shuffle_bytes;
        self.spilled_bytes += other.spilled_bytes;
    }
}

/// A task's view of the executor's memory pool: every reservation goes to the shared pool,
/// and the task's own total and peak are counted on the way.
#[derive(Debug)]
pub struct TaskMemoryPool {
    inner: Arc<dyn MemoryPool>,
    reserved: AtomicUsize,
    peak: AtomicUsize,
}

impl TaskMemoryPool {
    pub fn new(inner: Arc<dyn MemoryPool>) -> Self {
        Self {
            inner,
            reserved: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// The most bytes this task held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed) as u64
    }

    fn grown(&self, additional: usize) {
        let now = self.reserved.fetch_add(additional, Ordering::Relaxed) + additional;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl std::fmt::Display for TaskMemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task share of {}", self.inner)
    }
}

impl MemoryPool for TaskMemoryPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.grown(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.reserved.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.inner.try_grow(reservation, additional)?;
        self.grown(additional);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn a_task_pool_counts_its_own_peak_and_leaves_the_limit_to_the_shared_pool() {
        let shared: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let task = Arc::new(TaskMemoryPool::new(Arc::clone(&shared)));
        let pool: Arc<dyn MemoryPool> = task.clone();
        let a = MemoryConsumer::new("a").register(&pool);
        let other = MemoryConsumer::new("other task").register(&shared);
        a.try_grow(300).unwrap();
        a.shrink(200);
        a.grow(150);
        other.try_grow(500).unwrap();
        assert!(a.try_grow(300).is_err(), "the shared limit holds");
        assert_eq!(task.peak(), 300);
        assert_eq!(shared.reserved(), 750);
        drop(a);
        assert_eq!(shared.reserved(), 500);
    }

    #[test]
    fn stage_metrics_sum_counts_and_keep_the_largest_peak() {
        let task = |ms, rows, peak| TaskMetrics {
            elapsed_ms: ms,
            compute_ns: 10,
            peak_memory_bytes: peak,
            bytes_scanned: 5,
            spilled_bytes: 0,
            operators: vec![OperatorMetrics {
                operator: "SortExec".into(),
                metrics: vec![
                    Metric {
                        name: "output_rows".into(),
                        unit: MetricUnit::Count,
                        value: rows,
                    },
                    Metric {
                        name: "mem".into(),
                        unit: MetricUnit::PeakBytes,
                        value: peak,
                    },
                ],
            }],
        };
        let mut stage = StageMetrics::default();
        for t in [task(30, 1, 7), task(10, 2, 9), task(20, 3, 8)] {
            stage.add(&t);
        }
        assert_eq!(stage.task_ms, vec![10, 20, 30]);
        assert_eq!(stage.task_ms_at(0.5), 20);
        assert_eq!(stage.operators[0].get("output_rows"), Some(6));
        assert_eq!(stage.operators[0].get("mem"), Some(9));
        assert_eq!(
            (stage.tasks, stage.compute_ns, stage.peak_memory_bytes),
            (3, 30, 9)
        );
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_nanos(4_560_000), "4.56 ms");
    }
}
