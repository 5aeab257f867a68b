//! Transports only: each handler decodes a request, calls the runtime once (a command, or a
//! read of the driver's state), and encodes the reply. Standbys forward to the leader here.

pub(crate) mod auth;
pub mod flight_sql;
pub mod grpc;
pub mod http;
pub mod rest;
pub mod spark_connect;
pub mod ui;
