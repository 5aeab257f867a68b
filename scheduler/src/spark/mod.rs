//! Spark Connect's plans as DataFusion's: the relations and expressions a PySpark client sends
//! (`ember_proto::spark`, the protocol's own messages, are this front end's input language as
//! SQL text is Flight SQL's) become a `LogicalPlan` that runs on the cluster like any query.
//!
//! Each Spark session sees the cluster's catalog and its own temporary views
//! ([`SessionViews`]); nothing a session defines is visible to another. What is not translated
//! fails with an error naming the relation, expression or function, never with a guess; the
//! list of what is supported is `docs/spark-connect.md`.

mod expr;
mod functions;
mod generators;
mod joins;
mod names;
mod pivot;
mod plan;
pub mod show;
mod sources;
pub mod types;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::datasource::ViewTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use ember_core::EmberError;
use parking_lot::RwLock;

pub use plan::{Planner, Translated};
pub use write::Write;

/// The error for what Ember does not translate: it names the thing and where the list is.
pub fn unsupported(kind: &str, name: &str) -> EmberError {
    EmberError::User(format!(
        "Spark Connect: the {kind} `{name}` is not supported by Ember (docs/spark-connect.md \
         lists what is)"
    ))
}

/// Refuses options Ember does not apply: ignoring one (`nullValue`, `multiLine`, ...) could
/// change the answer.
pub(crate) fn check_options<'a>(
    what: &str,
    given: impl IntoIterator<Item = &'a String>,
    known: &[&str],
) -> ember_core::Result<()> {
    for key in given {
        if !known.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            return Err(EmberError::User(format!(
                "Spark Connect: the {what} option `{key}` is not supported by Ember (supported: \
                 {known})"
            )));
        }
    }
    Ok(())
}

/// One Spark session's temporary views (`createOrReplaceTempView`), by lower-case name.
#[derive(Debug, Default)]
pub struct SessionViews {
    views: RwLock<HashMap<String, LogicalPlan>>,
}

impl SessionViews {
    /// Defines `name`; refuses an existing one unless `replace`.
    pub fn define(&self, name: &str, plan: LogicalPlan, replace: bool) -> ember_core::Result<()> {
        let key = name.to_ascii_lowercase();
        let mut views = self.views.write();
        if !replace && views.contains_key(&key) {
            return Err(EmberError::User(format!(
                "[TEMP_TABLE_OR_VIEW_ALREADY_EXISTS] the temporary view `{name}` already exists"
            )));
        }
        views.insert(key, plan);
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.views.read().keys().cloned().collect();
        names.sort();
        names
    }

    fn get(&self, name: &str) -> Option<LogicalPlan> {
        self.views.read().get(&name.to_ascii_lowercase()).cloned()
    }
}

/// A context that plans in the cluster's catalog, where the session's temporary views come
/// before the default schema's tables of the same name. The shared catalog is not changed:
/// DDL never runs here (it goes through the scheduler's catalog, which records it).
pub fn session_context(shared: &SessionContext, views: Arc<SessionViews>) -> SessionContext {
    let state = shared.state();
    let options = state.config().options();
    let default_catalog = options.catalog.default_catalog.clone();
    let default_schema = options.catalog.default_schema.clone();
    let catalogs = Arc::new(ViewCatalogList {
        inner: Arc::clone(state.catalog_list()),
        default_catalog,
        default_schema,
        views,
    });
    let state = SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(catalogs)
        .build();
    SessionContext::new_with_state(state)
}

#[derive(Debug)]
struct ViewCatalogList {
    inner: Arc<dyn CatalogProviderList>,
    default_catalog: String,
    default_schema: String,
    views: Arc<SessionViews>,
}

impl CatalogProviderList for ViewCatalogList {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.inner.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.inner.catalog_names()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let catalog = self.inner.catalog(name)?;
        if name != self.default_catalog {
            return Some(catalog);
        }
        Some(Arc::new(ViewCatalog {
            inner: catalog,
            default_schema: self.default_schema.clone(),
            views: Arc::clone(&self.views),
        }))
    }
}

#[derive(Debug)]
struct ViewCatalog {
    inner: Arc<dyn CatalogProvider>,
    default_schema: String,
    views: Arc<SessionViews>,
}

impl CatalogProvider for ViewCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.inner.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let schema = self.inner.schema(name)?;
        if name != self.default_schema {
            return Some(schema);
        }
        Some(Arc::new(ViewSchema {
            inner: schema,
            views: Arc::clone(&self.views),
        }))
    }
}

#[derive(Debug)]
struct ViewSchema {
    inner: Arc<dyn SchemaProvider>,
    views: Arc<SessionViews>,
}

#[async_trait]
impl SchemaProvider for ViewSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.views.names();
        names.extend(self.inner.table_names());
        names
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        if let Some(plan) = self.views.get(name) {
            return Ok(Some(Arc::new(ViewTable::new(plan, None))));
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.views.get(name).is_some() || self.inner.table_exist(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn temporary_views_belong_to_their_session() {
        let shared = SessionContext::new();
        shared
            .sql("CREATE TABLE t AS VALUES (1), (2)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let (a, b) = (
            Arc::new(SessionViews::default()),
            Arc::new(SessionViews::default()),
        );
        let ctx_a = session_context(&shared, Arc::clone(&a));
        let ctx_b = session_context(&shared, Arc::clone(&b));
        let plan = ctx_a
            .sql("SELECT column1 * 10 AS x FROM t")
            .await
            .unwrap()
            .into_unoptimized_plan();
        a.define("Tens", plan, false).unwrap();
        let rows = ctx_a
            .sql("SELECT sum(x) FROM tens")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(rows[0].num_rows(), 1);
        let err = ctx_b.sql("SELECT * FROM tens").await.unwrap_err();
        assert!(err.to_string().contains("tens"), "{err}");
        assert!(!shared.table_exist("tens").unwrap());
        // Both see the shared table.
        assert!(ctx_b.sql("SELECT * FROM t").await.is_ok());
        assert!(
            a.define(
                "tens",
                LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(datafusion::common::DFSchema::empty()),
                },),
                false
            )
            .is_err()
        );
    }
}
