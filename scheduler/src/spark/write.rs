//! `df.write.mode(...).partitionBy(...).parquet(path)`: a `COPY` plan, which Ember runs as
//! a staged write that becomes visible at once when it commits.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::datasource::file_format::csv::CsvFormatFactory;
use datafusion::datasource::file_format::format_as_file_type;
use datafusion::datasource::file_format::json::JsonFormatFactory;
use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use ember_core::{EmberError, Result};
use ember_proto::spark::WriteOperation;
use ember_proto::spark::write_operation::{SaveMode, SaveType};
use futures::StreamExt;

use super::{Planner, unsupported};

/// A write to run: its plan, what it does (for listings), and whether it replaces what the
/// target holds.
pub struct Write {
    pub plan: LogicalPlan,
    pub description: String,
    pub replace: bool,
}

impl Planner {
    /// The write's plan, or `None` when there is nothing to do (mode `ignore` and the target
    /// has files).
    pub async fn write(&mut self, w: &WriteOperation) -> Result<Option<Write>> {
        let input = w
            .input
            .as_ref()
            .ok_or_else(|| EmberError::User("write: no DataFrame to write".into()))?;
        let path = match &w.save_type {
            Some(SaveType::Path(p)) if !p.is_empty() => p.clone(),
            Some(SaveType::Table(_)) => {
                return Err(unsupported(
                    "write",
                    "saveAsTable/insertInto (use spark.sql(\"INSERT INTO ...\"))",
                ));
            }
            _ => return Err(EmberError::User("write: give a path".into())),
        };
        if w.bucket_by.is_some() {
            return Err(unsupported("write option", "bucketBy"));
        }
        if !w.sort_column_names.is_empty() {
            return Err(unsupported("write option", "sortBy"));
        }
        if !w.clustering_columns.is_empty() {
            return Err(unsupported("write option", "clusterBy"));
        }
        let format = w
            .source
            .as_deref()
            .unwrap_or("parquet")
            .to_ascii_lowercase();
        let known: &[&str] = match format.as_str() {
            "csv" => &["header", "sep", "delimiter", "compression"],
            _ => &["compression"],
        };
        super::check_options(&format!("write.{format}"), w.options.keys(), known)?;
        let option = |key: &str| {
            w.options
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        let mut options = HashMap::new();
        let file_type = match format.as_str() {
            "parquet" => format_as_file_type(Arc::new(ParquetFormatFactory::new())),
            "csv" => {
                // Spark writes no header unless asked.
                let header = option("header").unwrap_or_else(|| "false".into());
                options.insert("format.has_header".to_string(), header);
                if let Some(sep) = option("sep").or_else(|| option("delimiter")) {
                    options.insert("format.delimiter".to_string(), sep);
                }
                format_as_file_type(Arc::new(CsvFormatFactory::new()))
            }
            "json" => format_as_file_type(Arc::new(JsonFormatFactory::new())),
            other => return Err(unsupported("data source format", other)),
        };
        if let Some(compression) = option("compression") {
            options.insert("format.compression".to_string(), compression);
        }
        // A Spark output is a folder.
        let folder = if path.ends_with('/') {
            path.clone()
        } else {
            format!("{path}/")
        };
        self.allowed.check(&folder)?;
        let exists = self.has_files(&folder).await?;
        match w.mode() {
            SaveMode::Append => {}
            SaveMode::ErrorIfExists | SaveMode::Unspecified if exists => {
                return Err(EmberError::User(format!(
                    "[PATH_ALREADY_EXISTS] {path} already exists; use mode(\"append\") to add \
                     to it"
                )));
            }
            SaveMode::ErrorIfExists | SaveMode::Unspecified => {}
            SaveMode::Ignore if exists => return Ok(None),
            SaveMode::Ignore => {}
            // The target's files go once the new ones are in (the commit records them).
            SaveMode::Overwrite => {}
        }
        let input = self.relation(input).await?;
        let plan = LogicalPlanBuilder::copy_to(
            input,
            folder,
            file_type,
            options,
            w.partitioning_columns.clone(),
        )?
        .build()?;
        Ok(Some(Write {
            plan,
            description: format!("write.{format}('{path}')"),
            replace: w.mode() == SaveMode::Overwrite && exists,
        }))
    }

    /// Whether a folder holds any file.
    async fn has_files(&self, folder: &str) -> Result<bool> {
        let url = ListingTableUrl::parse(folder)?;
        let store = self.ctx.runtime_env().object_store(&url)?;
        let mut listing = store.list(Some(url.prefix()));
        match listing.next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(object_store::Error::NotFound { .. })) => Ok(false),
            Some(Err(e)) => Err(EmberError::Unavailable(format!("listing {folder}: {e}"))),
        }
    }
}
