//! Spark Connect relations as DataFusion logical plans.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, DFSchemaRef, JoinType};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::utils::{find_aggregate_exprs, find_window_exprs};
use datafusion::logical_expr::{Expr, GroupingSet, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::{
    CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext, coalesce,
};
use ember_core::{EmberError, Result};
use ember_proto::spark::aggregate::GroupType;
use ember_proto::spark::join::JoinType as SparkJoin;
use ember_proto::spark::read::ReadType;
use ember_proto::spark::relation::RelType;
use ember_proto::spark::set_operation::SetOpType;
use ember_proto::spark::{self as sc, Relation};
use futures::future::BoxFuture;

use super::expr::{matching, required as required_expr};
use super::{types, unsupported};

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
        }
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
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
                local_relation(local, &name)
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

    async fn input<R: std::borrow::Borrow<Relation>>(
        &mut self,
        input: &Option<R>,
        within: &str,
    ) -> Result<LogicalPlan> {
        self.relation(required(input, within)?).await
    }

    async fn read(&mut self, read: &sc::Read) -> Result<LogicalPlan> {
        if read.is_streaming {
            return Err(unsupported("relation", "streaming read"));
        }
        match &read.read_type {
            Some(ReadType::NamedTable(t)) => {
                let df = self
                    .ctx
                    .table(t.unparsed_identifier.as_str())
                    .await
                    .map_err(|e| {
                        EmberError::User(format!(
                            "[TABLE_OR_VIEW_NOT_FOUND] `{}`: {e}",
                            t.unparsed_identifier
                        ))
                    })?;
                Ok(df.into_unoptimized_plan())
            }
            Some(ReadType::DataSource(source)) => self.read_files(source).await,
            None => Err(EmberError::User("a read of nothing".into())),
        }
    }

    /// `spark.read.format(...).load(paths)`: Parquet, CSV or JSON lines, Hive-style
    /// `key=value` folders as partition columns.
    async fn read_files(&mut self, source: &sc::read::DataSource) -> Result<LogicalPlan> {
        let format = source
            .format
            .as_deref()
            .unwrap_or("parquet")
            .to_ascii_lowercase();
        if source.paths.is_empty() {
            return Err(EmberError::User(format!("read.{format}() needs a path")));
        }
        if !source.predicates.is_empty() {
            return Err(unsupported("read option", "predicates"));
        }
        let option = |key: &str| {
            source
                .options
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        };
        let user_schema = match &source.schema {
            Some(text) if !text.trim().is_empty() => Some(Arc::new(types::parse_schema(text)?)),
            _ => None,
        };
        let state = self.ctx.state();
        let config = self.ctx.copied_config();
        let table_options = state.default_table_options();
        let options: ListingOptions = match format.as_str() {
            "parquet" => ParquetReadOptions::default().to_listing_options(&config, table_options),
            "csv" => {
                let header = option("header").is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let delimiter = option("sep").or(option("delimiter")).unwrap_or(",");
                let delimiter = match delimiter.as_bytes() {
                    [b] => *b,
                    _ => {
                        return Err(EmberError::User(format!(
                            "csv: the separator must be one byte, not {delimiter:?}"
                        )));
                    }
                };
                let mut csv = CsvReadOptions::new()
                    .has_header(header)
                    .delimiter(delimiter);
                if let Some(ext) = option("file_extension") {
                    csv = csv.file_extension(ext);
                }
                csv.to_listing_options(&config, table_options)
            }
            "json" => JsonReadOptions::default().to_listing_options(&config, table_options),
            other => return Err(unsupported("data source format", other)),
        };
        let urls = source
            .paths
            .iter()
            .map(|p| ListingTableUrl::parse(p).map_err(EmberError::from))
            .collect::<Result<Vec<_>>>()?;
        let mut table = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_partitions_from_path(&state)
            .await?;
        table = match &user_schema {
            Some(schema) => table.with_schema(Arc::clone(schema)),
            None => table.infer_schema(&state).await?,
        };
        let provider: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(table)?);
        let plan =
            LogicalPlanBuilder::scan("files", provider_as_source(provider), None)?.build()?;
        // CSV as Spark reads it: `_c0, _c1, ...` without a header, strings unless asked to
        // infer (or given a schema).
        if format == "csv" && user_schema.is_none() {
            let header = option("header").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let infer = option("inferSchema").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let exprs: Vec<Expr> = plan
                .schema()
                .columns()
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let name = if header {
                        c.name.clone()
                    } else {
                        format!("_c{i}")
                    };
                    let e = Expr::Column(c);
                    let e = if infer { e } else { cast(e, DataType::Utf8) };
                    e.alias(name)
                })
                .collect();
            return Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?);
        }
        Ok(plan)
    }

    async fn sql(&mut self, sql: &sc::Sql) -> Result<LogicalPlan> {
        #[allow(deprecated)]
        let has_args = !sql.pos_arguments.is_empty()
            || !sql.named_arguments.is_empty()
            || !sql.args.is_empty()
            || !sql.pos_args.is_empty();
        if has_args {
            return Err(unsupported(
                "spark.sql argument",
                "args (use literals in the SQL)",
            ));
        }
        let state = self.ctx.state();
        let plan = state.create_logical_plan(&sql.query).await?;
        if matches!(
            plan,
            LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_)
        ) {
            return Err(EmberError::User(
                "a statement that changes the catalog or writes data runs as spark.sql(...) on \
                 its own, not inside a DataFrame"
                    .into(),
            ));
        }
        Ok(plan)
    }

    async fn range(&mut self, range: &sc::Range) -> Result<LogicalPlan> {
        let start = range.start.unwrap_or(0);
        let step = if range.step == 0 { 1 } else { range.step };
        let plan = self
            .ctx
            .sql(&format!(
                "SELECT value AS id FROM range({start}, {}, {step})",
                range.end
            ))
            .await?
            .into_unoptimized_plan();
        Ok(plan)
    }

    /// A projection; window functions and aggregates inside expressions are computed first.
    fn project(&self, input: LogicalPlan, exprs: &[sc::Expression]) -> Result<LogicalPlan> {
        let exprs = self.projection(exprs, input.schema())?;
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
        &self,
        input: LogicalPlan,
        aliases: &[sc::expression::Alias],
    ) -> Result<LogicalPlan> {
        let schema = Arc::clone(input.schema());
        let mut exprs: Vec<(String, Expr)> = schema
            .columns()
            .into_iter()
            .map(|c| (c.name.clone(), Expr::Column(c)))
            .collect();
        for alias in aliases {
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

    fn unique(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}_{}", self.names)
    }

    /// A join's right side, renamed when its columns have the same names and tables as the
    /// left side's (two DataFrames of one table): Spark tells them apart by DataFrame, so
    /// `df2["a"]` must still find the right side's `a`.
    fn distinct_sides(&mut self, left: &LogicalPlan, right: LogicalPlan) -> Result<LogicalPlan> {
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

    async fn join(&mut self, j: &sc::Join) -> Result<LogicalPlan> {
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

    async fn set_op(&mut self, s: &sc::SetOperation) -> Result<LogicalPlan> {
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
            GroupType::Pivot => return Err(unsupported("grouping", "pivot")),
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

/// `spark.createDataFrame(...)`: the rows the client sent, as Arrow IPC.
fn local_relation(local: &sc::LocalRelation, name: &str) -> Result<LogicalPlan> {
    let (schema, batches) = match &local.data {
        Some(data) if !data.is_empty() => {
            let batches = ember_core::shuffle::batches_from_ipc_stream(data)?;
            let schema = match batches.first() {
                Some(b) => b.schema(),
                None => {
                    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
                        std::io::Cursor::new(data.as_slice()),
                        None,
                    )?;
                    reader.schema()
                }
            };
            (schema, batches)
        }
        _ => {
            let schema = match &local.schema {
                Some(text) => types::parse_schema(text)?,
                None => Schema::empty(),
            };
            (Arc::new(schema), Vec::new())
        }
    };
    let table = MemTable::try_new(Arc::clone(&schema), vec![batches])?;
    Ok(LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(table)), None)?.build()?)
}

fn same_kind(value: &DataType, column: &DataType) -> bool {
    let numeric = |t: &DataType| t.is_numeric();
    let text =
        |t: &DataType| matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8);
    (numeric(value) && numeric(column))
        || (text(value) && text(column))
        || (value == &DataType::Boolean && column == &DataType::Boolean)
}

fn required<'a, R: std::borrow::Borrow<Relation>>(
    rel: &'a Option<R>,
    within: &str,
) -> Result<&'a Relation> {
    rel.as_ref()
        .map(|r| r.borrow())
        .ok_or_else(|| EmberError::User(format!("{within}: its input is missing")))
}

fn negative(what: &str) -> EmberError {
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
