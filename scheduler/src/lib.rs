//! The Ember scheduler: plans SQL with DataFusion, cuts plans into stages, decides what runs
//! where in a pure job driver, and serves clients and executors over gRPC and Flight SQL.
//!
//! Layers, each importing only those below it: `api` (transports) → `runtime` (I/O: store,
//! RPCs, leadership) → `driver` (pure decisions); `planner`, `catalog` and `writes` are the
//! DataFusion-facing pieces the runtime uses; `spark` translates Spark Connect plans for the
//! transport that serves them; `config` holds the options.

pub mod api;
pub mod catalog;
pub mod config;
pub mod confine;
pub mod driver;
pub mod limits;
pub mod planner;
pub mod runtime;
pub mod server;
pub mod spark;
pub mod writes;

pub use config::SchedulerConfig;
pub use runtime::{Query, Role, Scheduler};
pub use server::{SchedulerHandle, start};
