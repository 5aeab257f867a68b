//! The Ember scheduler: plans SQL with DataFusion, cuts plans into stages, tracks jobs through a
//! pure state machine, places tasks on executor slots, and serves clients and executors over gRPC.

pub mod catalog;
pub mod cluster;
pub mod config;
pub mod durable;
pub mod executor_client;
pub mod flight_sql;
pub mod ha;
pub mod planner;
pub mod scheduler;
pub mod scripts;
pub mod server;
pub mod service;
pub mod state;
pub mod writes;

pub use config::SchedulerConfig;
pub use scheduler::{Query, Role, Scheduler};
pub use server::{SchedulerHandle, start};
