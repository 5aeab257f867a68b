//! The Rust client of an Ember cluster: submit SQL, follow the job, stream its result.
//!
//! ```no_run
//! # async fn demo() -> ember_core::Result<()> {
//! use ember_client::EmbeddedCluster;
//! // A scheduler and two executors in this process, talking over loopback gRPC/Flight.
//! let cluster = EmbeddedCluster::start(2, 1).await?;
//! let client = cluster.client().await?;
//! let result = client.sql("SELECT 1 + 1 AS two").await?;
//! assert_eq!(result.num_rows(), 1);
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```

//!
//! An embedded cluster (`EmbeddedCluster`, `EmberSession::embedded`) needs the `embedded`
//! feature, which brings in the scheduler and executor crates; a client of a running cluster
//! does without them.

mod client;
#[cfg(feature = "embedded")]
mod embedded;
mod session;

pub use client::{EmberClient, QueryResult, ScriptStatus};
#[cfg(feature = "embedded")]
pub use embedded::EmbeddedCluster;
pub use session::EmberSession;
