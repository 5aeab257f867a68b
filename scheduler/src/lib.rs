//! The Ember scheduler: plans SQL with DataFusion, cuts plans into stages, tracks jobs through a
//! pure state machine, places tasks on executor slots, and serves clients and executors over gRPC.

pub mod cluster;
pub mod config;
pub mod durable;
pub mod executor_client;
pub mod ha;
pub mod planner;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod state;

pub use config::SchedulerConfig;
pub use scheduler::{Query, Role, Scheduler};
pub use server::{SchedulerHandle, start};
