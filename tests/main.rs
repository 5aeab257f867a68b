//! Ember's integration tests: one binary, clusters started for real (in-process on loopback, and
//! as separate `ember` processes), results checked against single-node DataFusion.

mod etcd_support;
mod support;
mod tidy;

mod auth;
mod cli;
mod compose;
mod dataframe;
mod distribution;
mod errors;
mod failover;
mod flight_sql;
mod fuzz;
mod hostile;
mod k8s;
mod memory;
mod object_store;
mod ops;
mod plan_snapshots;
mod planner_traps;
mod secure;
mod slt;
mod spark_connect;
mod tls;
mod tpch;
mod traces;
mod web;
mod writes;
