//! The shared catalog: schemas, tables and views created with SQL DDL are kept in the
//! `MetaStore` (etcd in cluster mode), so that every session on the cluster sees them and a
//! scheduler that takes over leadership serves the same tables.
//!
//! An entry is the statement that created the object, keyed by the object's resolved name:
//! `catalog/schema/{catalog}/{schema}` and `catalog/table/{catalog}/{schema}/{name}` (views
//! are tables to the catalog). A new leader replays the entries in the order they were last
//! written, so a view comes after the tables it reads. Objects that only live in memory
//! (`CREATE TABLE ... AS`, temporary tables) are not kept: they hold data, not a definition.

use datafusion::common::{SchemaReference, TableReference};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;
use ember_core::meta::{Compare, Keys, MetaStore, Op};
use ember_core::{EmberError, Result};
use tracing::{info, warn};

/// What a DDL statement does to the shared catalog once it has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// Record the statement under this key.
    Put(String),
    /// Forget the object (and, for a schema dropped with CASCADE, what is under it).
    Delete { key: String, prefix: Option<String> },
    /// Nothing to keep: the statement changed nothing, or made an in-memory object.
    None,
}

/// The change `plan` (a DDL statement about to run) makes, decided before it runs: whether
/// the object existed decides whether a CREATE ... IF NOT EXISTS or a DROP changed anything.
pub fn change_for(keys: &Keys, ctx: &SessionContext, plan: &LogicalPlan) -> CatalogChange {
    let LogicalPlan::Ddl(ddl) = plan else {
        return CatalogChange::None;
    };
    let table = |name: &TableReference| {
        let options = ctx.state().config().options().catalog.clone();
        let resolved = name
            .clone()
            .resolve(&options.default_catalog, &options.default_schema);
        let key = keys.catalog_entry(
            "table",
            &[&resolved.catalog, &resolved.schema, &resolved.table],
        );
        let exists = ctx.table_exist(name.clone()).unwrap_or(false);
        (key, exists)
    };
    let create = |key: String, exists: bool, replace: bool, temporary: bool| {
        if temporary || (exists && !replace) {
            CatalogChange::None
        } else {
            CatalogChange::Put(key)
        }
    };
    let drop = |key: String, exists: bool| {
        if exists {
            CatalogChange::Delete { key, prefix: None }
        } else {
            CatalogChange::None
        }
    };
    match ddl {
        DdlStatement::CreateExternalTable(c) => {
            let (key, exists) = table(&c.name);
            create(key, exists, c.or_replace, c.temporary)
        }
        DdlStatement::CreateView(c) => {
            let (key, exists) = table(&c.name);
            create(key, exists, c.or_replace, c.temporary)
        }
        DdlStatement::DropTable(d) => {
            let (key, exists) = table(&d.name);
            drop(key, exists)
        }
        DdlStatement::DropView(d) => {
            let (key, exists) = table(&d.name);
            drop(key, exists)
        }
        DdlStatement::CreateCatalogSchema(c) => {
            let (catalog, schema) = split_schema_name(ctx, &c.schema_name);
            let key = keys.catalog_entry("schema", &[&catalog, &schema]);
            create(key, schema_exists(ctx, &catalog, &schema), false, false)
        }
        DdlStatement::DropCatalogSchema(d) => {
            let (catalog, schema) = match &d.name {
                SchemaReference::Bare { schema } => (default_catalog(ctx), schema.to_string()),
                SchemaReference::Full { schema, catalog } => {
                    (catalog.to_string(), schema.to_string())
                }
            };
            let key = keys.catalog_entry("schema", &[&catalog, &schema]);
            let prefix = d.cascade.then(|| {
                let mut p = keys.catalog_entry("table", &[&catalog, &schema]);
                p.push('/');
                p
            });
            match drop(key, schema_exists(ctx, &catalog, &schema)) {
                CatalogChange::Delete { key, .. } => CatalogChange::Delete { key, prefix },
                other => other,
            }
        }
        DdlStatement::CreateMemoryTable(_) => {
            info!("an in-memory table lives on this scheduler only; it is not kept in the catalog");
            CatalogChange::None
        }
        _ => CatalogChange::None,
    }
}

fn default_catalog(ctx: &SessionContext) -> String {
    ctx.state()
        .config()
        .options()
        .catalog
        .default_catalog
        .clone()
}

/// `schema` or `catalog.schema`, as `CREATE SCHEMA` takes it.
fn split_schema_name(ctx: &SessionContext, name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((catalog, schema)) => (catalog.to_string(), schema.to_string()),
        None => (default_catalog(ctx), name.to_string()),
    }
}

fn schema_exists(ctx: &SessionContext, catalog: &str, schema: &str) -> bool {
    ctx.catalog(catalog)
        .and_then(|c| c.schema(schema))
        .is_some()
}

/// Records `change` (made by the statement `sql`) under the leadership `guard`. Returns
/// `false` when the guard no longer holds.
pub async fn record(
    store: &dyn MetaStore,
    guard: Vec<Compare>,
    change: &CatalogChange,
    sql: &str,
) -> Result<bool> {
    let ops = match change {
        CatalogChange::None => return Ok(true),
        CatalogChange::Put(key) => vec![Op::put(key.clone(), sql.trim().to_string())],
        CatalogChange::Delete { key, prefix } => {
            let mut ops = vec![Op::Delete(key.clone())];
            if let Some(prefix) = prefix {
                ops.push(Op::DeletePrefix(prefix.clone()));
            }
            ops
        }
    };
    Ok(store.txn(guard, ops).await?.succeeded)
}

/// Makes `ctx`'s catalog what the store records: drops every schema and table it has (but
/// `information_schema`), then replays the recorded statements, schemas first, each group in
/// the order the entries were last written. An entry that no longer runs (its files are
/// gone) is skipped with a warning rather than keeping the scheduler from leading.
/// Entries reaching locations `allowed` does not cover (written under wider settings) are
/// skipped with a warning: creating a table reads its files.
pub async fn restore(
    store: &dyn MetaStore,
    keys: &Keys,
    ctx: &SessionContext,
    allowed: &crate::confine::AllowedLocations,
) -> Result<usize> {
    clear(ctx)?;
    let (mut entries, _) = store.range(&keys.catalog()).await?;
    let schema_prefix = keys.catalog_entry("schema", &[]);
    entries.sort_by_key(|kv| (!kv.key.starts_with(&schema_prefix), kv.mod_revision));
    // Passes until one makes no progress: an entry may need one written after it (a view
    // over a table re-created later).
    let mut restored = 0;
    let mut pending = entries;
    loop {
        let before = restored;
        let mut failed = Vec::new();
        for kv in pending {
            let sql = String::from_utf8_lossy(&kv.value).to_string();
            let plan = match ctx.state().create_logical_plan(&sql).await {
                Ok(plan) => plan,
                Err(e) => {
                    failed.push((kv, e));
                    continue;
                }
            };
            if let Err(e) = allowed.check_plan(&plan) {
                warn!(key = %kv.key, error = %e, "a catalog entry is outside the allowed locations; skipping it");
                continue;
            }
            match ctx.execute_logical_plan(plan).await {
                Ok(_) => restored += 1,
                Err(e) => failed.push((kv, e)),
            }
        }
        if failed.is_empty() {
            break;
        }
        if restored == before {
            for (kv, e) in failed {
                warn!(key = %kv.key, error = %e, "cannot restore a catalog entry; skipping it");
            }
            break;
        }
        pending = failed.into_iter().map(|(kv, _)| kv).collect();
    }
    if restored > 0 {
        info!(entries = restored, "catalog restored");
    }
    Ok(restored)
}

/// Removes every table and every non-default schema from `ctx`.
fn clear(ctx: &SessionContext) -> Result<()> {
    let options = ctx.state().config().options().catalog.clone();
    for catalog_name in ctx.catalog_names() {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            if schema_name == "information_schema" {
                continue;
            }
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            for table in schema.table_names() {
                schema.deregister_table(&table).map_err(EmberError::from)?;
            }
            let is_default =
                catalog_name == options.default_catalog && schema_name == options.default_schema;
            if !is_default {
                let _ = catalog.deregister_schema(&schema_name, true);
            }
        }
    }
    Ok(())
}
