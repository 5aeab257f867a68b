//! The distributed planner: cuts DataFusion's optimized physical plan into a DAG of stages.
//!
//! A stage ends in a [`ShuffleWriterExec`]; what it reads from other stages it reads through
//! [`ShuffleReaderExec`]s. Cuts are made at every exchange:
//! - a hash repartition (the child's output is shuffled by the key),
//! - a coalesce or sort-preserving merge to one partition (the child stage passes its partitions
//!   through and the merge reads them all in the consumer),
//! - the build side of a CollectLeft hash join, a nested loop join and a cross join (built once,
//!   read whole by every probe task),
//! - each uncorrelated scalar subquery (computed once, in its own stages). Every stage cut below
//!   a `ScalarSubqueryExec` whose plan uses the subquery's value gets its own
//!   `ScalarSubqueryExec` over readers of the subquery's result, so the value is there wherever
//!   an expression reads it.
//!
//! Before cutting, two rewrites keep one-partition-per-task execution correct: round-robin
//! repartitions are removed (a task must read only its own share of its input), and joins whose
//! build side emits unmatched rows at the end (left/full/left semi/anti/mark) are not broadcast:
//! a CollectLeft hash join becomes a partitioned one, a nested loop join runs in one task.
//!
//! This module is pure: no I/O, no `.await`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, JoinType, Result};
use datafusion::logical_expr::physical_planning_context::ScalarSubqueryResults;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::scalar_subquery::{ScalarSubqueryExec, ScalarSubqueryLink};
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    ReplaceChildrenOptions, displayable,
};
use ember_core::StageId;
use ember_core::shuffle::{ShuffleOutput, ShuffleReaderExec, ShuffleWriterExec};

/// One stage: a plan whose root is a `ShuffleWriterExec`, run as one task per input partition.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub stage_id: StageId,
    pub plan: Arc<dyn ExecutionPlan>,
    /// Stages whose output this stage reads.
    pub inputs: Vec<StageId>,
    /// Number of tasks.
    pub tasks: usize,
    /// Number of output partitions (what consumers' readers have).
    pub output_partitions: usize,
}

/// The stages of one job; the final stage's output is the job's result.
#[derive(Debug, Clone)]
pub struct StageGraph {
    pub stages: BTreeMap<StageId, StagePlan>,
    pub final_stage: StageId,
    pub schema: SchemaRef,
}

impl StageGraph {
    /// The stages as `EXPLAIN` shows them.
    pub fn display(&self) -> String {
        let mut out = String::new();
        for stage in self.stages.values() {
            let _ = writeln!(
                out,
                "Stage {} (tasks={}, inputs={:?}){}:",
                stage.stage_id,
                stage.tasks,
                stage.inputs,
                if stage.stage_id == self.final_stage {
                    " [final]"
                } else {
                    ""
                }
            );
            let plan = displayable(stage.plan.as_ref()).indent(false).to_string();
            for line in plan.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

/// Cuts `plan` into stages for job `job_id`.
pub fn plan_stages(job_id: &str, plan: Arc<dyn ExecutionPlan>) -> Result<StageGraph> {
    let schema = plan.schema();
    let mut cutter = StageCutter {
        job_id: job_id.to_string(),
        stages: BTreeMap::new(),
        subquery_scopes: Vec::new(),
    };
    let root = cutter.cut(plan)?;
    let n = root.output_partitioning().partition_count();
    let final_reader = cutter.new_stage(root, ShuffleOutput::PassThrough(n))?;
    let final_stage = final_reader
        .downcast_ref::<ShuffleReaderExec>()
        .map(|r| r.stage_id())
        .ok_or_else(|| DataFusionError::Internal("final stage has no reader".into()))?;
    Ok(StageGraph {
        stages: cutter.stages,
        final_stage,
        schema,
    })
}

struct StageCutter {
    job_id: String,
    stages: BTreeMap<StageId, StagePlan>,
    /// Scalar subqueries whose `ScalarSubqueryExec` is above the node being cut: their results
    /// container and the (materialized) subquery readers.
    subquery_scopes: Vec<(ScalarSubqueryResults, Vec<ScalarSubqueryLink>)>,
}

/// Join types whose build side may be broadcast: none of them emits unmatched build rows.
fn broadcast_safe(join_type: JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    )
}

impl StageCutter {
    fn cut(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.prepare(plan)?;
        if let Some(sq) = plan.downcast_ref::<ScalarSubqueryExec>() {
            return self.cut_scalar_subquery(sq);
        }
        let children = plan.children();
        let plan = if children.is_empty() {
            plan
        } else {
            let children = children
                .into_iter()
                .map(|c| self.cut(Arc::clone(c)))
                .collect::<Result<Vec<_>>>()?;
            with_children(Arc::clone(&plan), children)?
        };
        self.cut_node(plan)
    }

    /// Rewrites a node (not its children) so that running it one partition per task is correct.
    fn prepare(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(rep) = plan.downcast_ref::<RepartitionExec>()
            && matches!(rep.partitioning(), Partitioning::RoundRobinBatch(_))
        {
            return self.prepare(Arc::clone(rep.input()));
        }
        if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
            // With one probe partition the join runs as one task: safe as it is.
            if *join.partition_mode() == PartitionMode::CollectLeft
                && !broadcast_safe(*join.join_type())
                && join.right().output_partitioning().partition_count() > 1
            {
                let original = plan.output_partitioning().clone();
                let rewritten = if join.null_aware {
                    // NOT IN semantics need the whole probe side in one place: one task.
                    let right = single_partition(Arc::clone(join.right()));
                    join.builder()
                        .with_new_children(vec![Arc::clone(join.left()), right])?
                        .build_exec()?
                } else {
                    self.partitioned_join(join, original.partition_count())?
                };
                return restore_partitioning(&original, rewritten);
            }
        }
        if let Some(join) = plan.downcast_ref::<NestedLoopJoinExec>()
            && !broadcast_safe(*join.join_type())
            && join.right().output_partitioning().partition_count() > 1
        {
            let original = plan.output_partitioning().clone();
            let right = single_partition(Arc::clone(join.right()));
            let rewritten = with_children(Arc::clone(&plan), vec![Arc::clone(join.left()), right])?;
            return restore_partitioning(&original, rewritten);
        }
        Ok(plan)
    }

    /// A CollectLeft join as a partitioned one: both sides hash-partitioned by the join keys
    /// into `partitions` partitions (at least one).
    fn partitioned_join(
        &self,
        join: &HashJoinExec,
        partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = partitions.max(1);
        let left_input = match join.left().downcast_ref::<CoalescePartitionsExec>() {
            Some(c) if c.fetch().is_none() => Arc::clone(c.input()),
            _ => Arc::clone(join.left()),
        };
        let (left_keys, right_keys): (Vec<_>, Vec<_>) = join
            .on()
            .iter()
            .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
            .unzip();
        let left: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
            left_input,
            Partitioning::Hash(left_keys, partitions),
        )?);
        let right: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
            Arc::clone(join.right()),
            Partitioning::Hash(right_keys, partitions),
        )?);
        join.builder()
            .with_partition_mode(PartitionMode::Partitioned)
            .with_new_children(vec![left, right])?
            .build_exec()
    }

    /// Cuts between `plan` and those of its (already cut) children that are exchanges.
    fn cut_node(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(rep) = plan.downcast_ref::<RepartitionExec>() {
            if rep.preserve_order() {
                return Err(DataFusionError::NotImplemented(
                    "sort-preserving repartitions cannot be distributed yet".into(),
                ));
            }
            return self.new_stage(
                Arc::clone(rep.input()),
                ShuffleOutput::Hash(rep.partitioning().clone()),
            );
        }
        let merges = plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>();
        if merges {
            let child = Arc::clone(plan.children()[0]);
            let n = child.output_partitioning().partition_count();
            if n <= 1 || child.is::<ShuffleReaderExec>() {
                return Ok(plan);
            }
            let reader = self.new_stage(child, ShuffleOutput::PassThrough(n))?;
            return with_children(plan, vec![reader]);
        }
        let build_side = match plan.downcast_ref::<HashJoinExec>() {
            Some(join) => *join.partition_mode() == PartitionMode::CollectLeft,
            None => plan.is::<NestedLoopJoinExec>() || plan.is::<CrossJoinExec>(),
        };
        if build_side {
            let mut children: Vec<_> = plan.children().into_iter().cloned().collect();
            children[0] = self.materialize(Arc::clone(&children[0]))?;
            return with_children(plan, children);
        }
        Ok(plan)
    }

    /// Each subquery becomes its own stage(s), computed once; the main input is cut with the
    /// subquery's results in scope.
    fn cut_scalar_subquery(&mut self, sq: &ScalarSubqueryExec) -> Result<Arc<dyn ExecutionPlan>> {
        let mut links = Vec::with_capacity(sq.subqueries().len());
        for link in sq.subqueries() {
            let plan = self.cut(Arc::clone(&link.plan))?;
            links.push(ScalarSubqueryLink {
                plan: self.materialize(plan)?,
                index: link.index,
            });
        }
        self.subquery_scopes
            .push((sq.results().clone(), links.clone()));
        let input = self.cut(Arc::clone(sq.input()));
        self.subquery_scopes.pop();
        Ok(Arc::new(ScalarSubqueryExec::new(
            input?,
            links,
            sq.results().clone(),
        )))
    }

    /// Makes `plan` its own stage (unless it already is a reader) and returns its reader.
    /// A reader, or a merge straight over one, is already computed once: every task reads it
    /// whole through the reader, and a stage more would only add a barrier.
    fn materialize(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let merged_reader =
            plan.is::<CoalescePartitionsExec>() && plan.children()[0].is::<ShuffleReaderExec>();
        if plan.is::<ShuffleReaderExec>() || merged_reader {
            return Ok(plan);
        }
        let n = plan.output_partitioning().partition_count();
        self.new_stage(plan, ShuffleOutput::PassThrough(n))
    }

    fn new_stage(
        &mut self,
        mut input: Arc<dyn ExecutionPlan>,
        output: ShuffleOutput,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        for (results, links) in &self.subquery_scopes {
            if uses_subquery_results(&input, results)? {
                input = Arc::new(ScalarSubqueryExec::new(
                    input,
                    links.clone(),
                    results.clone(),
                ));
            }
        }
        let stage_id = self.stages.len() as StageId + 1;
        let mut inputs = Vec::new();
        collect_inputs(&input, &mut inputs);
        inputs.sort_unstable();
        inputs.dedup();
        let tasks = input.output_partitioning().partition_count();
        let output_partitions = output.partition_count();
        let schema = input.schema();
        let reader_partitioning = match &output {
            ShuffleOutput::Hash(p @ Partitioning::Hash(..)) => p.clone(),
            _ => Partitioning::UnknownPartitioning(output_partitions),
        };
        let plan = Arc::new(ShuffleWriterExec::new(
            self.job_id.clone(),
            stage_id,
            input,
            output,
        ));
        self.stages.insert(
            stage_id,
            StagePlan {
                stage_id,
                plan,
                inputs,
                tasks,
                output_partitions,
            },
        );
        Ok(Arc::new(ShuffleReaderExec::new(
            stage_id,
            schema,
            reader_partitioning,
        )))
    }
}

pub(crate) fn with_children(
    plan: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}

/// Gives a rewritten node the output partitioning the original had, so that the operators above
/// it (which were planned for that partitioning) stay correct.
fn restore_partitioning(
    original: &Partitioning,
    plan: Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let now = plan.output_partitioning();
    let count = original.partition_count();
    match original {
        Partitioning::Hash(..) if now != original => {
            Ok(Arc::new(RepartitionExec::try_new(plan, original.clone())?))
        }
        _ if now.partition_count() == count => Ok(plan),
        _ if count <= 1 => Ok(single_partition(plan)),
        _ => Ok(Arc::new(RepartitionExec::try_new(
            plan,
            Partitioning::RoundRobinBatch(count),
        )?)),
    }
}

fn single_partition(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if plan.output_partitioning().partition_count() <= 1 {
        plan
    } else {
        Arc::new(CoalescePartitionsExec::new(plan))
    }
}

/// Whether an expression anywhere in `plan` reads a scalar subquery result from `results`.
fn uses_subquery_results(
    plan: &Arc<dyn ExecutionPlan>,
    results: &ScalarSubqueryResults,
) -> Result<bool> {
    let mut found = false;
    plan.apply_expressions(&mut |expr| {
        expr.apply(|e| {
            if let Some(sq) = e.downcast_ref::<ScalarSubqueryExpr>()
                && ScalarSubqueryResults::ptr_eq(sq.results(), results)
            {
                found = true;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    if found {
        return Ok(true);
    }
    for child in plan.children() {
        if uses_subquery_results(child, results)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn collect_inputs(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<StageId>) {
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        out.push(reader.stage_id());
    }
    for child in plan.children() {
        collect_inputs(child, out);
    }
}

/// Replaces each reader in a stage plan with one that knows where its input lies.
pub fn resolve_readers(
    plan: &Arc<dyn ExecutionPlan>,
    locations: &dyn Fn(StageId) -> Option<Vec<Vec<ember_core::shuffle::PartitionLocation>>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        let locs = locations(reader.stage_id()).ok_or_else(|| {
            DataFusionError::Internal(format!("stage {} is not complete", reader.stage_id()))
        })?;
        return Ok(Arc::new(ShuffleReaderExec::with_locations(
            reader.stage_id(),
            reader.schema(),
            reader.partitioning().clone(),
            locs,
        )));
    }
    let children = plan.children();
    if children.is_empty() {
        return Ok(Arc::clone(plan));
    }
    let children = children
        .into_iter()
        .map(|c| resolve_readers(c, locations))
        .collect::<Result<Vec<_>>>()?;
    with_children(Arc::clone(plan), children)
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{SessionConfig, SessionContext};
    use ember_core::session::distributed_session_config;

    use super::*;

    async fn context() -> (SessionContext, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = distributed_session_config(SessionConfig::new().with_target_partitions(4));
        let ctx = SessionContext::new_with_config(config);
        for (name, rows) in [("big", 2000), ("small", 5)] {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            for f in 0..4 {
                let mut csv = String::from("k,v\n");
                for i in 0..rows {
                    csv.push_str(&format!("{},{}\n", i % 50, i + f));
                }
                std::fs::write(path.join(format!("{f}.csv")), csv).unwrap();
            }
            ctx.sql(&format!(
                "create external table {name} (k int, v int) stored as csv location '{}/' \
                 options ('format.has_header' 'true')",
                path.display()
            ))
            .await
            .unwrap();
        }
        (ctx, dir)
    }

    /// Every stage is a writer over a plan in which no task reads beyond its own partition,
    /// except through a shuffle reader.
    fn check_invariants(sql: &str, graph: &StageGraph) {
        assert!(graph.stages.contains_key(&graph.final_stage));
        for stage in graph.stages.values() {
            assert!(stage.plan.is::<ShuffleWriterExec>(), "{sql}: stage root");
            for input in &stage.inputs {
                assert!(*input < stage.stage_id, "{sql}: stage order");
            }
            check_node(sql, stage.plan.children()[0]);
        }
    }

    fn check_node(sql: &str, plan: &Arc<dyn ExecutionPlan>) {
        assert!(
            !plan.is::<RepartitionExec>(),
            "{sql}: repartition left inside a stage"
        );
        if plan.is::<CoalescePartitionsExec>() || plan.is::<SortPreservingMergeExec>() {
            let child = plan.children()[0];
            assert!(
                child.is::<ShuffleReaderExec>()
                    || child.output_partitioning().partition_count() == 1,
                "{sql}: merge over a multi-partition child that is not a reader"
            );
        }
        if let Some(join) = plan.downcast_ref::<HashJoinExec>()
            && *join.partition_mode() == PartitionMode::CollectLeft
        {
            // Unsafe join types run as a single task (the probe side in one partition).
            assert!(
                broadcast_safe(*join.join_type())
                    || join.right().output_partitioning().partition_count() == 1,
                "{sql}: unsafe broadcast"
            );
            let left = join.left();
            assert!(
                left.is::<ShuffleReaderExec>()
                    || (left.is::<CoalescePartitionsExec>()
                        && left.children()[0].is::<ShuffleReaderExec>()),
                "{sql}: build side not cut"
            );
        }
        for child in plan.children() {
            check_node(sql, child);
        }
    }

    #[tokio::test]
    async fn stage_cutting_keeps_its_invariants() {
        let (ctx, _dir) = context().await;
        // (query, minimum number of stages)
        let cases = [
            ("select k, sum(v) from big group by k", 2),
            ("select * from big order by v limit 5", 2),
            ("select count(*) from big where v > 10", 2),
            ("select b.k, s.v from big b join small s on b.k = s.k", 2),
            (
                "select s.k, count(b.v) from small s left join big b on s.k = b.k group by s.k",
                3,
            ),
            ("select * from small s full join big b on s.k = b.k", 2),
            (
                "select k from small where k not in (select k from big where v > 1990)",
                2,
            ),
            ("select k from big where v > (select avg(v) from big)", 3),
            ("select * from small, (select max(v) m from big) x", 2),
        ];
        for (sql, min_stages) in cases {
            let plan = ctx
                .sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let graph = plan_stages("job", plan).unwrap();
            check_invariants(sql, &graph);
            assert!(
                graph.stages.len() >= min_stages,
                "{sql}: {} stages\n{}",
                graph.stages.len(),
                graph.display()
            );
        }
    }

    #[tokio::test]
    async fn readers_are_resolved_with_their_locations() {
        let (ctx, _dir) = context().await;
        let plan = ctx
            .sql("select k, sum(v) from big group by k")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let graph = plan_stages("job", plan).unwrap();
        let consumer = graph
            .stages
            .values()
            .find(|s| !s.inputs.is_empty())
            .unwrap();
        let unresolved = resolve_readers(&consumer.plan, &|_| None);
        assert!(unresolved.is_err(), "an incomplete input is an error");
        let resolved = resolve_readers(&consumer.plan, &|_| Some(vec![Vec::new(); 4])).unwrap();
        assert_eq!(
            displayable(resolved.as_ref()).indent(false).to_string(),
            displayable(consumer.plan.as_ref())
                .indent(false)
                .to_string()
        );
    }
}
