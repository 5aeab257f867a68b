//! Ember's integration tests: one binary, clusters started for real (in-process on loopback, and
//! as separate `ember` processes), results checked against single-node DataFusion.

mod etcd_support;
mod support;

mod cli;
mod distribution;
mod errors;
mod failover;
mod memory;
mod planner_traps;
mod tpch;
