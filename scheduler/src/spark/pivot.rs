//! `groupBy(keys).pivot(col, values).agg(...)`: one column per value (and aggregate), each
//! aggregating only the rows whose pivot column holds that value, as Spark computes it.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, Operator, binary_expr, lit, when,
};
use ember_core::{EmberError, Result};
use ember_proto::spark::aggregate::Pivot;

use super::{Planner, types};

/// Aggregates that ignore nulls, so that `f(CASE WHEN col = v THEN x END)` is `f` over the
/// rows of `v`.
const PIVOTABLE: &[&str] = &["sum", "avg", "min", "max", "count"];

impl Planner {
    /// The aggregate of `input` by `keys`, with `outputs` (named aggregate calls) once per
    /// pivot value.
    pub(super) fn pivot(
        &self,
        input: LogicalPlan,
        keys: Vec<Expr>,
        outputs: Vec<Expr>,
        pivot: &Pivot,
    ) -> Result<LogicalPlan> {
        let column = self.expr(
            pivot
                .col
                .as_ref()
                .ok_or_else(|| EmberError::User("pivot: no column".into()))?,
            input.schema(),
        )?;
        if pivot.values.is_empty() {
            return Err(EmberError::User(
                "pivot needs its values, e.g. pivot(\"col\", [\"a\", \"b\"]): Ember does not \
                 compute them first"
                    .into(),
            ));
        }
        let values = pivot
            .values
            .iter()
            .map(types::scalar)
            .collect::<Result<Vec<_>>>()?;
        let mut aggregates = Vec::new();
        for value in &values {
            let matches = binary_expr(
                column.clone(),
                Operator::IsNotDistinctFrom,
                lit(value.clone()),
            );
            for output in &outputs {
                let (call, name) = match output {
                    Expr::Alias(a) => (a.expr.as_ref(), a.name.clone()),
                    other => (other, other.schema_name().to_string()),
                };
                let Expr::AggregateFunction(agg) = call else {
                    return Err(EmberError::User(format!(
                        "pivot takes aggregate calls (sum, avg, min, max, count), not {name}"
                    )));
                };
                if !PIVOTABLE.contains(&agg.func.name()) || agg.params.filter.is_some() {
                    return Err(super::unsupported("aggregate in a pivot", agg.func.name()));
                }
                let args = agg
                    .params
                    .args
                    .iter()
                    .map(|arg| when(matches.clone(), arg.clone()).end())
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let only = Expr::AggregateFunction(AggregateFunction::new_udf(
                    agg.func.clone(),
                    args,
                    agg.params.distinct,
                    None,
                    agg.params.order_by.clone(),
                    agg.params.null_treatment,
                ));
                let label = value_name(value);
                let label = if outputs.len() == 1 {
                    label
                } else {
                    format!("{label}_{name}")
                };
                aggregates.push(only.alias(label));
            }
        }
        Ok(LogicalPlanBuilder::from(input)
            .aggregate(keys, aggregates)?
            .build()?)
    }
}

/// Spark's column name for a pivot value.
fn value_name(value: &ScalarValue) -> String {
    if value.is_null() {
        "null".to_string()
    } else {
        value.to_string()
    }
}
