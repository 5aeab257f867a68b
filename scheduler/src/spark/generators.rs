//! `explode`: a select (or `withColumn`) whose column is `explode(array)` gives one row per
//! element, as Spark does: rows whose array is null or empty give none. One generator per
//! select, as on Spark; `explode_outer`, `posexplode` and maps are refused by name.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, UnnestOptions};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder};
use ember_core::{EmberError, Result};
use ember_proto::spark::Expression;
use ember_proto::spark::expression::{Alias, ExprType, UnresolvedAttribute};

use super::Planner;

/// The array an `explode(...)` column takes, and the name it was given.
fn generator(e: &Expression) -> Option<(&Expression, Option<&str>)> {
    match &e.expr_type {
        Some(ExprType::UnresolvedFunction(f))
            if f.function_name.eq_ignore_ascii_case("explode") && f.arguments.len() == 1 =>
        {
            Some((&f.arguments[0], None))
        }
        Some(ExprType::Alias(a)) => {
            let inner = a.expr.as_deref()?;
            let (array, _) = generator(inner)?;
            Some((array, a.name.first().map(String::as_str)))
        }
        _ => None,
    }
}

/// Whether `explode` is called anywhere inside `e`.
fn contains_explode(e: &Expression) -> bool {
    match &e.expr_type {
        Some(ExprType::UnresolvedFunction(f)) => {
            f.function_name.eq_ignore_ascii_case("explode")
                || f.arguments.iter().any(contains_explode)
        }
        Some(ExprType::Alias(a)) => a.expr.as_deref().is_some_and(contains_explode),
        Some(ExprType::Cast(c)) => c.expr.as_deref().is_some_and(contains_explode),
        _ => false,
    }
}

fn column(name: &str, alias: &str) -> Expression {
    let attribute = Expression {
        common: None,
        expr_type: Some(ExprType::UnresolvedAttribute(UnresolvedAttribute {
            unparsed_identifier: name.to_string(),
            plan_id: None,
            is_metadata_column: None,
        })),
    };
    Expression {
        common: None,
        expr_type: Some(ExprType::Alias(Box::new(Alias {
            expr: Some(Box::new(attribute)),
            name: vec![alias.to_string()],
            metadata: None,
        }))),
    }
}

impl Planner {
    /// `input` with the array of the one `explode` among `exprs` unnested into a column of its
    /// own, and `exprs` reading that column instead (Spark names it `col` unless aliased);
    /// both unchanged when there is no `explode`.
    pub(super) fn explode(
        &mut self,
        input: LogicalPlan,
        exprs: &[Expression],
    ) -> Result<(LogicalPlan, Vec<Expression>)> {
        let mut found: Option<(String, Expr)> = None;
        let mut rewritten = Vec::with_capacity(exprs.len());
        for e in exprs {
            let Some((array, alias)) = generator(e) else {
                if contains_explode(e) {
                    return Err(EmberError::User(
                        "explode must be a whole column of select or withColumn, not inside \
                         another expression"
                            .into(),
                    ));
                }
                rewritten.push(e.clone());
                continue;
            };
            if found.is_some() {
                return Err(EmberError::User(
                    "only one explode per select, as on Spark".into(),
                ));
            }
            let value = self.expr(array, input.schema())?;
            let data_type = value.get_type(input.schema())?;
            if !matches!(
                data_type,
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
            ) {
                return Err(EmberError::User(format!(
                    "explode takes an array, not {data_type} (maps are not supported)"
                )));
            }
            let name = self.unique("__explode");
            rewritten.push(column(&name, alias.unwrap_or("col")));
            found = Some((name, value));
        }
        let Some((name, value)) = found else {
            return Ok((input, rewritten));
        };
        let mut columns: Vec<Expr> = input
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        columns.push(value.alias(&name));
        let plan = LogicalPlanBuilder::from(input)
            .project(columns)?
            .unnest_column_with_options(
                Column::from_name(name),
                UnnestOptions::new().with_preserve_nulls(false),
            )?
            .build()?;
        Ok((plan, rewritten))
    }
}
