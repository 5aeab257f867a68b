//! Spark Connect relations as DataFusion logical plans.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::logical_expr::utils::{find_aggregate_exprs, find_window_exprs};
use datafusion::logical_expr::{Expr, GroupingSet, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::{SessionContext, coalesce};
use ember_core::{EmberError, Result};
use ember_proto::spark::aggregate::GroupType;
use ember_proto::spark::relation::RelType;
use ember_proto::spark::{self as sc, Relation};
use futures::future::BoxFuture;

use super::expr::{matching, required as required_expr};
use super::{types, unsupported};
use crate::confine::AllowedLocations;

/// Translates one request's relations; it remembers each DataFrame's columns by its plan id,
/// so that `df["a"]` names `a` of that DataFrame even after a join.
pub struct Planner {
    pub(super) ctx: SessionContext,
    pub(super) plans: HashMap<i64, DFSchemaRef>,
    /// DataFrames whose columns a join had to rename (both sides came from the same table):
    /// plan id → the alias their columns now carry.
    pub(super) renamed: HashMap<i64, String>,
    /// Names made so far (for in-memory rows and renamed join sides).
    names: usize,
    /// Where reads and writes may go, checked before a file is opened or a folder listed
    /// (the submitted plan is checked again, as every plan is).
    pub(super) allowed: AllowedLocations,
}

/// A relation's plan, or what it asks of the server instead of rows.
pub enum Translated {
    Plan(LogicalPlan),
    /// `df.show()`: the input's first `rows` rows, formatted as Spark prints them.
    Show {
        input: LogicalPlan,
        rows: usize,
        truncate: usize,
        vertical: bool,
    },
}

impl Planner {
    pub fn new(ctx: SessionContext) -> Self {
        Self {
            ctx,
            plans: HashMap::new(),
            renamed: HashMap::new(),
            names: 0,
            allowed: AllowedLocations::Anywhere,
        }
    }

    /// A planner that reads and writes only under `allowed`.
    pub fn confined(mut self, allowed: AllowedLocations) -> Self {
        self.allowed = allowed;
        self
    }

    /// A root relation: a plan, or a `show()`.
    pub async fn root(&mut self, rel: &Relation) -> Result<Translated> {
        if let Some(RelType::ShowString(show)) = &rel.rel_type {
            let input = self.relation(required(&show.input, "show")?).await?;
            return Ok(Translated::Show {
                input,
                rows: show.num_rows.max(0) as usize,
                truncate: show.truncate.max(0) as usize,
                vertical: show.vertical,
            });
        }
        Ok(Translated::Plan(self.relation(rel).await?))
    }

    /// A relation as a logical plan.
    pub fn relation<'a>(&'a mut self, rel: &'a Relation) -> BoxFuture<'a, Result<LogicalPlan>> {
        Box::pin(async move {
            let plan = self.translate(rel).await?;
            if let Some(id) = rel.common.as_ref().and_then(|c| c.plan_id) {
                self.plans.insert(id, Arc::clone(plan.schema()));
            }
            Ok(plan)
        })
    }

    async fn translate(&mut self, rel: &Relation) -> Result<LogicalPlan> {
        let Some(kind) = &rel.rel_type else {
            return Err(EmberError::User("a relation without its kind".into()));
        };
        match kind {
            RelType::Read(read) => self.read(read).await,
            RelType::Sql(sql) => self.sql(sql).await,
            RelType::LocalRelation(local) => {
                let name = self.unique("local");
                super::sources::local_relation(local, &name)
            }
            RelType::Range(range) => self.range(range).await,
            RelType::Project(p) => {
                let input = self.input(&p.input, "select").await?;
                self.project(input, &p.expressions)
            }
            RelType::Filter(f) => {
                let input = self.input(&f.input, "filter").await?;
                let condition =
                    self.expr(required_expr(&f.condition, "filter")?, input.schema())?;
                Ok(LogicalPlanBuilder::from(input).filter(condition)?.build()?)
            }
            RelType::Join(j) => self.join(j).await,
            RelType::SetOp(s) => self.set_op(s).await,
            RelType::Sort(s) => {
                let input = self.input(&s.input, "sort").await?;
                let keys = s
                    .order
                    .iter()
                    .map(|o| self.sort(o, input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(LogicalPlanBuilder::from(input).sort(keys)?.build()?)
            }
            RelType::Limit(l) => {
                let input = self.input(&l.input, "limit").await?;
                let fetch = usize::try_from(l.limit).map_err(|_| negative("limit"))?;
                Ok(LogicalPlanBuilder::from(input)
                    .limit(0, Some(fetch))?
                    .build()?)
            }
            RelType::Offset(o) => {
                let input = self.input(&o.input, "offset").await?;
                let skip = usize::try_from(o.offset).map_err(|_| negative("offset"))?;
                Ok(LogicalPlanBuilder::from(input).limit(skip, None)?.build()?)
            }
            RelType::Aggregate(a) => self.aggregate(a).await,
            RelType::Deduplicate(d) => self.deduplicate(d).await,
            RelType::SubqueryAlias(a) => {
                let input = self.input(&a.input, "alias").await?;
                Ok(LogicalPlanBuilder::from(input)
                    .alias(a.alias.as_str())?
                    .build()?)
            }
            RelType::ToDf(t) => {
                let input = self.input(&t.input, "toDF").await?;
                if t.column_names.len() != input.schema().fields().len() {
                    return Err(EmberError::User(format!(
                        "toDF got {} names for {} columns",
                        t.column_names.len(),
                        input.schema().fields().len()
                    )));
                }
                let exprs: Vec<Expr> = input
                    .schema()
                    .columns()
                    .into_iter()
                    .zip(&t.column_names)
                    .map(|(c, name)| Expr::Column(c).alias(name))
                    .collect();
                Ok(LogicalPlanBuilder::from(input).project(exprs)?.build()?)
            }
            RelType::WithColumnsRenamed(w) => {
                let input = self.input(&w.input, "withColumnRenamed").await?;
                let mut renames: Vec<(String, String)> = w
                    .renames
                    .iter()
                    .map(|r| (r.col_name.clone(), r.new_col_name.clone()))
                    .collect();
                #[allow(deprecated)]
                renames.extend(
                    w.rename_columns_map
                        .iter()
                        .map(|(a, b)| (a.clone(), b.clone())),
                );
                rename(input, &renames)
            }
            RelType::WithColumns(w) => {
                let input = self.input(&w.input, "withColumns").await?;
                self.with_columns(input, &w.aliases)
            }
            RelType::Drop(d) => {
                let input = self.input(&d.input, "drop").await?;
                let mut dropped: Vec<Column> = Vec::new();
                for e in &d.columns {
                    if let Expr::Column(c) = self.expr(e, input.schema())? {
                        dropped.push(c);
                    }
                }
                for name in &d.column_names {
                    for (q, f) in matching(input.schema(), name, None) {
                        dropped.push(Column::new(q.cloned(), f.name()));
                    }
                }
                let kept: Vec<Expr> = input
                    .schema()
                    .columns()
                    .into_iter()
                    .filter(|c| !dropped.contains(c))
                    .map(Expr::Column)
                    .collect();
                Ok(LogicalPlanBuilder::from(input).project(kept)?.build()?)
            }
            RelType::Hint(h) => {
                // Hints (broadcast, ...) are advice; Ember plans joins from sizes.
                self.input(&h.input, "hint").await
            }
            RelType::Repartition(r) => {
                // Ember chooses partitioning per stage; the data and its order are unchanged.
                self.input(&r.input, "repartition").await
            }
            RelType::RepartitionByExpression(r) => self.input(&r.input, "repartition").await,
            RelType::FillNa(f) => self.fill_na(f).await,
            RelType::DropNa(d) => self.drop_na(d).await,
            RelType::ToSchema(t) => {
                let input = self.input(&t.input, "to").await?;
                let schema = types::arrow_type(t.schema.as_ref().ok_or_else(|| {
                    EmberError::User("to(schema): the schema is missing".into())
                })?)?;
                let DataType::Struct(fields) = schema else {
                    return Err(EmberError::User("to(schema) takes a struct type".into()));
                };
                let mut exprs = Vec::new();
                for field in fields.iter() {
                    let source = self.column(field.name(), None, input.schema())?;
                    exprs.push(cast(source, field.data_type().clone()).alias(field.name()));
                }
                Ok(LogicalPlanBuilder::from(input).project(exprs)?.build()?)
            }
            RelType::CachedRemoteRelation(r) => Err(unsupported(
                "relation",
                &format!("cached remote relation {}", r.relation_id),
            )),
            other => Err(unsupported("relation", relation_name(other))),
        }
    }

    pub(super) async fn input<R: std::borrow::Borrow<Relation>>(
        &mut self,
        input: &Option<R>,
        within: &str,
    ) -> Result<LogicalPlan> {
        self.relation(required(input, within)?).await
    }

    /// A projection; window functions and aggregates inside expressions are computed first.
    fn project(&mut self, input: LogicalPlan, exprs: &[sc::Expression]) -> Result<LogicalPlan> {
        let (input, exprs) = self.explode(input, exprs)?;
        let exprs = self.projection(&exprs, input.schema())?;
        let windows = find_window_exprs(exprs.iter());
        if !windows.is_empty() {
            let plan = LogicalPlanBuilder::window_plan(input, windows.clone())?;
            let exprs = rebase(exprs, &windows, plan.schema())?;
            return Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?);
        }
        let aggregates = find_aggregate_exprs(exprs.iter());
        if !aggregates.is_empty() {
            // `select(F.sum("a"))`: an aggregate over the whole input.
            let plan = LogicalPlanBuilder::from(input)
                .aggregate(Vec::<Expr>::new(), aggregates.clone())?
                .build()?;
            let exprs = rebase(exprs, &aggregates, plan.schema())?;
            return Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?);
        }
        Ok(LogicalPlanBuilder::from(input).project(exprs)?.build()?)
    }

    fn with_columns(
        &mut self,
        input: LogicalPlan,
        aliases: &[sc::expression::Alias],
    ) -> Result<LogicalPlan> {
        use sc::expression::ExprType;
        // `withColumn("x", explode(...))`: unnested first, read as a column.
        let wrapped: Vec<sc::Expression> = aliases
            .iter()
            .map(|a| sc::Expression {
                common: None,
                expr_type: Some(ExprType::Alias(Box::new(a.clone()))),
            })
            .collect();
        let (input, wrapped) = self.explode(input, &wrapped)?;
        let aliases: Vec<sc::expression::Alias> = wrapped
            .into_iter()
            .filter_map(|e| match e.expr_type {
                Some(ExprType::Alias(a)) => Some(*a),
                _ => None,
            })
            .collect();
        let schema = Arc::clone(input.schema());
        let mut exprs: Vec<(String, Expr)> = schema
            .columns()
            .into_iter()
            .map(|c| (c.name.clone(), Expr::Column(c)))
            .collect();
        for alias in &aliases {
            let [name] = alias.name.as_slice() else {
                return Err(unsupported("withColumns of", "several names"));
            };
            let value = self.expr(required_expr(&alias.expr, "withColumn")?, &schema)?;
            let value = value.alias(name);
            match exprs.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some(slot) => slot.1 = value,
                None => exprs.push((name.clone(), value)),
            }
        }
        let exprs: Vec<Expr> = exprs.into_iter().map(|(_, e)| e).collect();
        let windows = find_window_exprs(exprs.iter());
        if !windows.is_empty() {
            let plan = LogicalPlanBuilder::window_plan(input, windows.clone())?;
            let exprs = rebase(exprs, &windows, plan.schema())?;
            return Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?);
        }
        Ok(LogicalPlanBuilder::from(input).project(exprs)?.build()?)
    }

    pub(super) fn unique(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}_{}", self.names)
    }

    async fn aggregate(&mut self, a: &sc::Aggregate) -> Result<LogicalPlan> {
        let input = self.input(&a.input, "groupBy").await?;
        let schema = Arc::clone(input.schema());
        let keys = a
            .grouping_expressions
            .iter()
            .map(|e| self.named(e, &schema))
            .collect::<Result<Vec<_>>>()?;
        let group = match a.group_type() {
            GroupType::Groupby | GroupType::Unspecified => keys.clone(),
            GroupType::Rollup => vec![Expr::GroupingSet(GroupingSet::Rollup(keys.clone()))],
            GroupType::Cube => vec![Expr::GroupingSet(GroupingSet::Cube(keys.clone()))],
            GroupType::Pivot => {
                let pivot = a
                    .pivot
                    .as_ref()
                    .ok_or_else(|| EmberError::User("pivot: no column".into()))?;
                let outputs = a
                    .aggregate_expressions
                    .iter()
                    .map(|e| self.named(e, &schema))
                    .collect::<Result<Vec<_>>>()?;
                return self.pivot(input, keys, outputs, pivot);
            }
            GroupType::GroupingSets => return Err(unsupported("grouping", "grouping sets")),
        };
        let outputs = a
            .aggregate_expressions
            .iter()
            .map(|e| self.named(e, &schema))
            .collect::<Result<Vec<_>>>()?;
        let aggregates = find_aggregate_exprs(outputs.iter());
        let plan = LogicalPlanBuilder::from(input)
            .aggregate(group, aggregates.clone())?
            .build()?;
        // Keys, then each output computed from the aggregates.
        let key_columns: Vec<Expr> = plan
            .schema()
            .columns()
            .into_iter()
            .take(keys.len())
            .zip(&keys)
            .map(|(c, key)| match key {
                Expr::Alias(a) => Expr::Column(c).alias(a.name.clone()),
                _ => Expr::Column(c),
            })
            .collect();
        let mut exprs = key_columns;
        exprs.extend(rebase(outputs, &aggregates, plan.schema())?);
        Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
    }

    async fn deduplicate(&mut self, d: &sc::Deduplicate) -> Result<LogicalPlan> {
        let input = self.input(&d.input, "dropDuplicates").await?;
        if d.within_watermark.unwrap_or(false) {
            return Err(unsupported("relation", "dropDuplicatesWithinWatermark"));
        }
        if d.all_columns_as_keys.unwrap_or(false) || d.column_names.is_empty() {
            return Ok(LogicalPlanBuilder::from(input).distinct()?.build()?);
        }
        let mut on = Vec::new();
        for name in &d.column_names {
            on.push(self.column(name, None, input.schema())?);
        }
        let all: Vec<Expr> = input
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        Ok(LogicalPlanBuilder::from(input)
            .distinct_on(on, all, None)?
            .build()?)
    }

    async fn fill_na(&mut self, f: &sc::NaFill) -> Result<LogicalPlan> {
        let input = self.input(&f.input, "fillna").await?;
        let schema = Arc::clone(input.schema());
        let values = f
            .values
            .iter()
            .map(types::scalar)
            .collect::<Result<Vec<_>>>()?;
        let targets: Vec<(String, datafusion::common::ScalarValue)> = match values.as_slice() {
            [] => return Err(EmberError::User("fillna needs a value".into())),
            [one] if f.cols.is_empty() => schema
                .fields()
                .iter()
                .map(|field| (field.name().clone(), one.clone()))
                .collect(),
            [one] => f.cols.iter().map(|c| (c.clone(), one.clone())).collect(),
            many if many.len() == f.cols.len() => {
                f.cols.iter().cloned().zip(many.iter().cloned()).collect()
            }
            _ => return Err(EmberError::User("fillna: one value per column".into())),
        };
        let mut exprs = Vec::new();
        for (qualifier, field) in schema.iter() {
            let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
            let target = targets
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(field.name()));
            let filled = match target {
                // Spark fills a column only with a value of its kind (numbers, strings, booleans).
                Some((_, value)) if same_kind(&value.data_type(), field.data_type()) => {
                    coalesce(vec![
                        column,
                        cast(lit(value.clone()), field.data_type().clone()),
                    ])
                    .alias(field.name())
                }
                _ => column,
            };
            exprs.push(filled);
        }
        Ok(LogicalPlanBuilder::from(input).project(exprs)?.build()?)
    }

    async fn drop_na(&mut self, d: &sc::NaDrop) -> Result<LogicalPlan> {
        let input = self.input(&d.input, "dropna").await?;
        let schema = Arc::clone(input.schema());
        let columns: Vec<Expr> = if d.cols.is_empty() {
            schema.columns().into_iter().map(Expr::Column).collect()
        } else {
            d.cols
                .iter()
                .map(|c| self.column(c, None, &schema))
                .collect::<Result<_>>()?
        };
        let condition = match d.min_non_nulls {
            // At least n values that are not null.
            Some(n) => {
                let count = columns
                    .iter()
                    .map(|c| {
                        datafusion::logical_expr::when(c.clone().is_not_null(), lit(1i64))
                            .otherwise(lit(0i64))
                    })
                    .collect::<datafusion::error::Result<Vec<_>>>()?
                    .into_iter()
                    .reduce(|a, b| a + b)
                    .unwrap_or(lit(0i64));
                count.gt_eq(lit(n as i64))
            }
            None => columns
                .into_iter()
                .map(|c| c.is_not_null())
                .reduce(Expr::and)
                .unwrap_or(lit(true)),
        };
        Ok(LogicalPlanBuilder::from(input).filter(condition)?.build()?)
    }
}

/// Renames columns (names that are not there are skipped, as Spark does).
fn rename(input: LogicalPlan, renames: &[(String, String)]) -> Result<LogicalPlan> {
    let exprs: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(|c| {
            match renames
                .iter()
                .find(|(from, _)| from.eq_ignore_ascii_case(&c.name))
            {
                Some((_, to)) => Expr::Column(c).alias(to),
                None => Expr::Column(c),
            }
        })
        .collect();
    Ok(LogicalPlanBuilder::from(input).project(exprs)?.build()?)
}

/// Replaces each of `inner` (aggregates or window functions) inside `exprs` by the column
/// that `plan_schema` computed it as.
fn rebase(exprs: Vec<Expr>, inner: &[Expr], plan_schema: &DFSchema) -> Result<Vec<Expr>> {
    exprs
        .into_iter()
        .map(|e| {
            let rebased = e
                .transform_down(|node| {
                    if inner.contains(&node) {
                        let name = node.schema_name().to_string();
                        let column = plan_schema
                            .columns()
                            .into_iter()
                            .find(|c| c.name == name)
                            .unwrap_or_else(|| Column::from_name(name));
                        return Ok(Transformed::yes(Expr::Column(column)));
                    }
                    Ok(Transformed::no(node))
                })?
                .data;
            Ok(rebased)
        })
        .collect()
}

fn same_kind(value: &DataType, column: &DataType) -> bool {
    let numeric = |t: &DataType| t.is_numeric();
    let text =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    (numeric(value) && numeric(column))
        || (text(value) && text(column))
        || (value == &DataType::Boolean && column == &DataType::Boolean)
}

pub(super) fn required<'a, R: std::borrow::Borrow<Relation>>(
    rel: &'a Option<R>,
    within: &str,
) -> Result<&'a Relation> {
    rel.as_ref()
        .map(|r| r.borrow())
        .ok_or_else(|| EmberError::User(format!("{within}: its input is missing")))
}

pub(super) fn negative(what: &str) -> EmberError {
    EmberError::User(format!("{what} must not be negative"))
}

fn relation_name(kind: &RelType) -> &'static str {
    match kind {
        RelType::Sample(_) => "sample",
        RelType::Tail(_) => "tail",
        RelType::Unpivot(_) => "unpivot",
        RelType::MapPartitions(_) => "mapInPandas/mapInArrow",
        RelType::CollectMetrics(_) => "observe",
        RelType::Parse(_) => "from_json/csv parse",
        RelType::GroupMap(_) => "applyInPandas",
        RelType::CoGroupMap(_) => "cogroup",
        RelType::WithWatermark(_) => "withWatermark",
        RelType::HtmlString(_) => "_repr_html_",
        RelType::CachedLocalRelation(_) => "cached local relation",
        RelType::Replace(_) => "na.replace",
        RelType::Summary(_) => "summary",
        RelType::Crosstab(_) => "crosstab",
        RelType::Describe(_) => "describe",
        RelType::Cov(_) => "cov",
        RelType::Corr(_) => "corr",
        RelType::ApproxQuantile(_) => "approxQuantile",
        RelType::FreqItems(_) => "freqItems",
        RelType::SampleBy(_) => "sampleBy",
        RelType::Catalog(_) => "catalog",
        RelType::AsOfJoin(_) => "asOfJoin",
        RelType::LateralJoin(_) => "lateral join",
        RelType::Transpose(_) => "transpose",
        RelType::WithRelations(_) => "with relations (subqueries)",
        _ => "relation",
    }
}
