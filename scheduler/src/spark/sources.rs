//! Where DataFrames start: tables, files (`spark.read`), SQL, rows sent by the client
//! (`createDataFrame`) and `spark.range`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use ember_core::{EmberError, Result};
use ember_proto::spark::read::ReadType;
use ember_proto::spark::{self as sc};

use super::{Planner, types, unsupported};

impl Planner {
    pub(super) async fn read(&mut self, read: &sc::Read) -> Result<LogicalPlan> {
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
    pub(super) async fn read_files(
        &mut self,
        source: &sc::read::DataSource,
    ) -> Result<LogicalPlan> {
        let format = source
            .format
            .as_deref()
            .unwrap_or("parquet")
            .to_ascii_lowercase();
        if source.paths.is_empty() {
            return Err(EmberError::User(format!("read.{format}() needs a path")));
        }
        for path in &source.paths {
            self.allowed.check(path)?;
        }
        if !source.predicates.is_empty() {
            return Err(unsupported("read option", "predicates"));
        }
        let known: &[&str] = match format.as_str() {
            "csv" => &[
                "header",
                "sep",
                "delimiter",
                "inferSchema",
                "file_extension",
            ],
            _ => &[],
        };
        super::check_options(&format!("read.{format}"), source.options.keys(), known)?;
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

    pub(super) async fn sql(&mut self, sql: &sc::Sql) -> Result<LogicalPlan> {
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

    pub(super) async fn range(&mut self, range: &sc::Range) -> Result<LogicalPlan> {
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
}

/// `spark.createDataFrame(...)`: the rows the client sent, as Arrow IPC.
pub(super) fn local_relation(local: &sc::LocalRelation, name: &str) -> Result<LogicalPlan> {
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
