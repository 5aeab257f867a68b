//! Joins and set operations: Spark's join types, joins on column names (the keys once) or on
//! expressions, and telling apart two DataFrames of one table.

use std::sync::Arc;

use datafusion::common::{Column, JoinType};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::coalesce;
use ember_core::{EmberError, Result};
use ember_proto::spark::join::JoinType as SparkJoin;
use ember_proto::spark::set_operation::SetOpType;
use ember_proto::spark::{self as sc};

use super::expr::matching;
use super::{Planner, unsupported};

impl Planner {
    /// A join's right side, renamed when its columns have the same names and tables as the
    /// left side's (two DataFrames of one table): Spark tells them apart by DataFrame, so
    /// `df2["a"]` must still find the right side's `a`.
    pub(super) fn distinct_sides(
        &mut self,
        left: &LogicalPlan,
        right: LogicalPlan,
    ) -> Result<LogicalPlan> {
        if !clashes(left, &right) {
            return Ok(right);
        }
        let alias = self.unique("right");
        let before = Arc::clone(right.schema());
        let renamed = LogicalPlanBuilder::from(right)
            .alias(alias.as_str())?
            .build()?;
        let ids: Vec<i64> = self
            .plans
            .keys()
            .copied()
            .filter(|id| {
                let columns = self.current_columns(*id);
                !columns.is_empty() && columns.iter().all(|c| before.has_column(c))
            })
            .collect();
        for id in ids {
            self.renamed.insert(id, alias.clone());
        }
        Ok(renamed)
    }

    /// A DataFrame's columns as they are named now (after any renaming by a join).
    pub(super) fn current_columns(&self, id: i64) -> Vec<Column> {
        let Some(schema) = self.plans.get(&id) else {
            return Vec::new();
        };
        schema
            .columns()
            .into_iter()
            .map(|c| match self.renamed.get(&id) {
                Some(alias) => Column::new(Some(alias.as_str()), c.name),
                None => c,
            })
            .collect()
    }

    pub(super) async fn join(&mut self, j: &sc::Join) -> Result<LogicalPlan> {
        let left = self.input(&j.left, "join").await?;
        let right = self.input(&j.right, "join").await?;
        let right = self.distinct_sides(&left, right)?;
        let join_type = match j.join_type() {
            SparkJoin::Inner | SparkJoin::Unspecified => JoinType::Inner,
            SparkJoin::FullOuter => JoinType::Full,
            SparkJoin::LeftOuter => JoinType::Left,
            SparkJoin::RightOuter => JoinType::Right,
            SparkJoin::LeftAnti => JoinType::LeftAnti,
            SparkJoin::LeftSemi => JoinType::LeftSemi,
            SparkJoin::Cross => {
                let plan = LogicalPlanBuilder::from(left).cross_join(right)?;
                return match &j.join_condition {
                    Some(c) => {
                        let plan = plan.build()?;
                        let condition = self.expr(c, plan.schema())?;
                        Ok(LogicalPlanBuilder::from(plan).filter(condition)?.build()?)
                    }
                    None => Ok(plan.build()?),
                };
            }
        };
        if j.join_data_type.is_some() {
            return Err(unsupported("join", "joinWith (rows as structs)"));
        }
        if !j.using_columns.is_empty() {
            return using_join(left, right, join_type, &j.using_columns);
        }
        let Some(condition) = &j.join_condition else {
            if join_type == JoinType::Inner {
                return Ok(LogicalPlanBuilder::from(left).cross_join(right)?.build()?);
            }
            return Err(EmberError::User(format!(
                "a {join_type} join needs a condition or columns to join on"
            )));
        };
        let both = left.schema().join(right.schema())?;
        let condition = self.expr(condition, &both)?;
        Ok(LogicalPlanBuilder::from(left)
            .join_on(right, join_type, [condition])?
            .build()?)
    }

    pub(super) async fn set_op(&mut self, s: &sc::SetOperation) -> Result<LogicalPlan> {
        let left = self.input(&s.left_input, "set operation").await?;
        let right = self.input(&s.right_input, "set operation").await?;
        let all = s.is_all.unwrap_or(false);
        Ok(match s.set_op_type() {
            SetOpType::Union if s.by_name.unwrap_or(false) => {
                if !s.allow_missing_columns.unwrap_or(false) {
                    let names = |p: &LogicalPlan| {
                        let mut n: Vec<String> = p
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.name().to_ascii_lowercase())
                            .collect();
                        n.sort();
                        n
                    };
                    if names(&left) != names(&right) {
                        return Err(EmberError::User(
                            "unionByName: the two sides have different columns (pass \
                             allowMissingColumns=True to fill them with nulls)"
                                .into(),
                        ));
                    }
                }
                let builder = LogicalPlanBuilder::from(left);
                if all {
                    builder.union_by_name(right)?.build()?
                } else {
                    builder.union_by_name_distinct(right)?.build()?
                }
            }
            SetOpType::Union => {
                if left.schema().fields().len() != right.schema().fields().len() {
                    return Err(EmberError::User(format!(
                        "union: the sides have {} and {} columns",
                        left.schema().fields().len(),
                        right.schema().fields().len()
                    )));
                }
                let builder = LogicalPlanBuilder::from(left);
                if all {
                    builder.union(right)?.build()?
                } else {
                    builder.union_distinct(right)?.build()?
                }
            }
            SetOpType::Intersect => LogicalPlanBuilder::intersect(left, right, all)?,
            SetOpType::Except => LogicalPlanBuilder::except(left, right, all)?,
            SetOpType::Unspecified => {
                return Err(EmberError::User("a set operation without its kind".into()));
            }
        })
    }
}

/// `a.join(b, ["k"])`: the join keys once (first; from both sides in a full join), then the
/// other columns of each side, as Spark answers.
fn using_join(
    left: LogicalPlan,
    right: LogicalPlan,
    join_type: JoinType,
    using: &[String],
) -> Result<LogicalPlan> {
    let mut left_keys = Vec::new();
    let mut right_keys = Vec::new();
    for name in using {
        let find = |plan: &LogicalPlan, side: &str| -> Result<Column> {
            match matching(plan.schema(), name, None).as_slice() {
                [(q, f)] => Ok(Column::new(q.cloned(), f.name())),
                _ => Err(EmberError::User(format!(
                    "[UNRESOLVED_USING_COLUMN_FOR_JOIN] `{name}` is not a column of the {side} \
                     side"
                ))),
            }
        };
        left_keys.push(find(&left, "left")?);
        right_keys.push(find(&right, "right")?);
    }
    let right_columns = right.schema().columns();
    let left_columns = left.schema().columns();
    let plan = LogicalPlanBuilder::from(left)
        .join(
            right,
            join_type,
            (left_keys.clone(), right_keys.clone()),
            None,
        )?
        .build()?;
    if matches!(join_type, JoinType::LeftSemi | JoinType::LeftAnti) {
        return Ok(plan);
    }
    let mut exprs = Vec::new();
    for ((l, r), name) in left_keys.iter().zip(&right_keys).zip(using) {
        let key = match join_type {
            JoinType::Right => Expr::Column(r.clone()),
            JoinType::Full => coalesce(vec![Expr::Column(l.clone()), Expr::Column(r.clone())]),
            _ => Expr::Column(l.clone()),
        };
        exprs.push(key.alias(name));
    }
    exprs.extend(
        left_columns
            .into_iter()
            .filter(|c| !left_keys.contains(c))
            .map(Expr::Column),
    );
    exprs.extend(
        right_columns
            .into_iter()
            .filter(|c| !right_keys.contains(c))
            .map(Expr::Column),
    );
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

fn clashes(left: &LogicalPlan, right: &LogicalPlan) -> bool {
    left.schema()
        .columns()
        .iter()
        .any(|c| right.schema().has_column(c))
}
