//! Confinement: SQL reads and writes files only under the locations a scheduler allows.
//!
//! Without it, anyone who can send SQL can read any file the processes can read
//! (`CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'`) and write anywhere they can
//! write (`COPY … TO '/…'`). Every location a plan reads or writes — external tables' locations
//! when created and when scanned (tables restored from the catalog and views included), COPY and
//! INSERT targets, DataFrame scans — must lie under one of `--allowed-locations`. Locations are
//! compared as URLs, by whole path segments, after `.` and `..` are resolved, so neither
//! `/data/../etc` nor `/database` passes for `/data`.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::{ListingTable, ListingTableUrl};
use datafusion::datasource::source_as_provider;
use datafusion::datasource::stream::StreamTable;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};
use ember_core::EmberError;
use url::Url;

/// The option that confines SQL, shared by every command that starts a scheduler.
#[derive(Debug, Clone, clap::Args)]
pub struct Confinement {
    /// Where SQL may read and write files: folders and object-store prefixes
    /// (`s3://bucket/prefix`) separated by commas, or `*` for anywhere. Default: the folder
    /// the scheduler runs in.
    #[arg(
        long = "allowed-locations",
        env = "EMBER_ALLOWED_LOCATIONS",
        default_value = ".",
        value_parser = parse_option
    )]
    pub allowed_locations: AllowedLocations,
}

fn parse_option(text: &str) -> Result<AllowedLocations, String> {
    AllowedLocations::parse(text).map_err(|e| e.to_string())
}

/// Where SQL may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedLocations {
    /// Anywhere the processes can reach (an embedded cluster in the user's own process).
    Anywhere,
    /// Under one of these (normalized URLs of folders).
    Under(Vec<Url>),
}

impl AllowedLocations {
    /// Parses the option: locations separated by commas (local folders, `file://` or
    /// object-store URLs such as `s3://bucket/prefix`); `*` allows every location.
    pub fn parse(list: &str) -> Result<Self, EmberError> {
        let items: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.contains(&"*") {
            return Ok(AllowedLocations::Anywhere);
        }
        let under = items
            .into_iter()
            .map(|item| {
                location_url(item).map_err(|e| {
                    EmberError::User(format!(
                        "--allowed-locations: {item:?} is not a location: {e}"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowedLocations::Under(under))
    }

    /// Whether `/` is among the locations (a scheduler started in the root folder with the
    /// default `.`): every local file, likely by mistake (`*` says it on purpose).
    pub fn allows_the_whole_filesystem(&self) -> bool {
        match self {
            AllowedLocations::Anywhere => false,
            AllowedLocations::Under(urls) => urls.iter().any(|u| {
                u.scheme() == "file" && u.path_segments().is_none_or(|mut s| s.all(str::is_empty))
            }),
        }
    }

    /// Refuses `location` (a path or URL, as SQL or a table names it) unless it lies under an
    /// allowed location.
    pub fn check(&self, location: &str) -> Result<(), EmberError> {
        let AllowedLocations::Under(allowed) = self else {
            return Ok(());
        };
        let url = location_url(location)
            .map_err(|e| EmberError::User(format!("{location:?} is not a location: {e}")))?;
        if allowed.iter().any(|prefix| lies_under(&url, prefix)) {
            return Ok(());
        }
        let list: Vec<&str> = allowed.iter().map(Url::as_str).collect();
        Err(EmberError::User(format!(
            "{location:?} is outside the locations this cluster allows ({}); an administrator \
             can add it to the scheduler's --allowed-locations",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        )))
    }

    /// Refuses `plan` if it reads or writes a location that is not allowed.
    pub fn check_plan(&self, plan: &LogicalPlan) -> Result<(), EmberError> {
        if *self == AllowedLocations::Anywhere {
            return Ok(());
        }
        let mut result = Ok(());
        let _ = plan.apply_with_subqueries(|node| {
            result = self.check_node(node);
            Ok(if result.is_ok() {
                TreeNodeRecursion::Continue
            } else {
                TreeNodeRecursion::Stop
            })
        });
        result
    }

    fn check_node(&self, node: &LogicalPlan) -> Result<(), EmberError> {
        match node {
            LogicalPlan::TableScan(scan) => match source_as_provider(&scan.source) {
                Ok(provider) => self.check_provider(&provider),
                Err(_) => Ok(()),
            },
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create)) => create
                .locations
                .iter()
                .try_for_each(|location| self.check(location)),
            LogicalPlan::Copy(copy) => self.check(&copy.output_url),
            // Every write's target, whatever the operation.
            LogicalPlan::Dml(dml) => match source_as_provider(&dml.target) {
                Ok(provider) => self.check_provider(&provider),
                Err(_) => Ok(()),
            },
            // Runtime settings name folders the processes write to (spill files).
            LogicalPlan::Statement(Statement::SetVariable(set))
                if set
                    .variable
                    .to_lowercase()
                    .starts_with("datafusion.runtime.") =>
            {
                Err(EmberError::User(format!(
                    "{} cannot be set on a cluster that confines locations",
                    set.variable
                )))
            }
            _ => Ok(()),
        }
    }

    fn check_provider(&self, provider: &Arc<dyn TableProvider>) -> Result<(), EmberError> {
        if let Some(listing) = provider.downcast_ref::<ListingTable>() {
            for path in listing.table_paths() {
                self.check(path.as_str())?;
            }
        }
        if let Some(view) = provider.downcast_ref::<ViewTable>() {
            self.check_plan(view.logical_plan())?;
        }
        // A stream table reads a file (or FIFO) whose location it does not expose.
        if provider.downcast_ref::<StreamTable>().is_some() {
            return Err(EmberError::User(
                "unbounded (stream) tables are not allowed on a cluster that confines locations"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A location as a normalized URL: local paths made absolute, `.` and `..` resolved.
fn location_url(location: &str) -> Result<Url, String> {
    let url = ListingTableUrl::parse(location).map_err(|e| e.to_string())?;
    // Parsing the text again resolves dot segments (also percent-encoded ones).
    Url::parse(url.as_str()).map_err(|e| e.to_string())
}

/// Whether `url` is `prefix` or lies below it, by whole path segments.
fn lies_under(url: &Url, prefix: &Url) -> bool {
    if url.scheme() != prefix.scheme() || url.host_str() != prefix.host_str() {
        return false;
    }
    let segments = |u: &Url| -> Vec<String> {
        u.path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let (path, prefix) = (segments(url), segments(prefix));
    path.len() >= prefix.len() && path[..prefix.len()] == prefix[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_allowed_by_whole_segments_after_dots_are_resolved() {
        let allowed = AllowedLocations::parse("/data, s3://bucket/lake/").unwrap();
        let cases = [
            ("/data", true),
            ("/data/t.csv", true),
            ("/data/sub/*.parquet", true),
            ("file:///data/x/", true),
            ("/data/../etc/passwd", false),
            // In a path, `%2e%2e` is a folder's name; in a URL it means `..`.
            ("/data/%2e%2e/etc/passwd", true),
            ("file:///data/%2e%2e/etc/passwd", false),
            ("file:///data/x/../../etc/", false),
            ("/database/t.csv", false),
            ("/etc/passwd", false),
            ("s3://bucket/lake/t/", true),
            ("s3://bucket/lakehouse/t/", false),
            ("s3://other/lake/t/", false),
            ("gs://bucket/lake/t/", false),
        ];
        for (location, ok) in cases {
            assert_eq!(allowed.check(location).is_ok(), ok, "{location}");
        }
        let error = allowed.check("/etc/passwd").unwrap_err().to_string();
        assert!(error.contains("--allowed-locations"), "{error}");
    }

    #[test]
    fn the_option_parses() {
        assert_eq!(
            AllowedLocations::parse("/a, *").unwrap(),
            AllowedLocations::Anywhere
        );
        assert_eq!(
            AllowedLocations::parse("").unwrap(),
            AllowedLocations::Under(vec![])
        );
        assert!(
            AllowedLocations::parse("")
                .unwrap()
                .check("/tmp/x")
                .is_err()
        );
        assert!(AllowedLocations::Anywhere.check("/etc/passwd").is_ok());
        assert!(
            AllowedLocations::parse("/")
                .unwrap()
                .allows_the_whole_filesystem()
        );
        assert!(
            !AllowedLocations::parse("/data")
                .unwrap()
                .allows_the_whole_filesystem()
        );
    }
}
