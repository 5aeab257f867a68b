//! The Ember executor: runs stage tasks with DataFusion, keeps their shuffle output, serves it
//! to other executors over Arrow Flight, and reports to the scheduler.

pub mod config;
pub mod runner;
pub mod scheduler_link;
pub mod server;
pub mod service;
pub mod workdir;

pub use config::ExecutorConfig;
pub use server::{ExecutorHandle, start};
