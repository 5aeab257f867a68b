//! The scheduler's options, each declared once: flag, environment variable, default and doc.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use crate::driver::SchedulingPolicy;

#[derive(Debug, Clone, Parser)]
#[command(about = "Ember scheduler options")]
pub struct SchedulerConfig {
    /// Address the scheduler's gRPC service listens on (port 0 picks a free port).
    #[arg(
        long = "bind",
        env = "EMBER_SCHEDULER_BIND",
        default_value = "127.0.0.1:50050"
    )]
    pub bind: String,

    /// Address of the HTTP endpoint (/healthz, /readyz, /metrics); `off` disables it. When
    /// the default port is taken (another process on this host), a free one is used and logged.
    #[arg(long, env = "EMBER_SCHEDULER_HTTP_BIND", default_value = DEFAULT_HTTP_BIND)]
    pub http_bind: String,

    /// Write the HTTP endpoint's port to this file once it listens.
    #[arg(long, env = "EMBER_SCHEDULER_HTTP_PORT_FILE")]
    pub http_port_file: Option<PathBuf>,

    /// Address of the Spark Connect endpoint (PySpark's `sc://host:port`); `off` disables it,
    /// port 0 picks a free one. Standbys serve it too, forwarding to the leader.
    #[arg(
        long,
        env = "EMBER_SPARK_CONNECT_BIND",
        default_value = DEFAULT_SPARK_CONNECT_BIND
    )]
    pub spark_connect_bind: String,

    /// Write the Spark Connect endpoint's port to this file once it listens.
    #[arg(long, env = "EMBER_SPARK_CONNECT_PORT_FILE")]
    pub spark_connect_port_file: Option<PathBuf>,

    /// Address that executors and clients dial, when it differs from --bind (0.0.0.0, port 0).
    #[arg(long, env = "EMBER_SCHEDULER_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Write the port the scheduler bound to this file once it listens (for scripts and tests).
    #[arg(long, env = "EMBER_SCHEDULER_PORT_FILE")]
    pub port_file: Option<PathBuf>,

    /// Partitions per shuffle; 0 means the total task slots of the registered executors.
    #[arg(long, env = "EMBER_TARGET_PARTITIONS", default_value_t = 0)]
    pub target_partitions: usize,

    /// An executor not heard from for this many seconds is considered lost.
    #[arg(long, env = "EMBER_EXECUTOR_TIMEOUT_SECS", default_value_t = 15)]
    pub executor_timeout_secs: u64,

    /// How long a finished job's status and result stay available, in seconds.
    #[arg(long, env = "EMBER_RESULT_TTL_SECS", default_value_t = 600)]
    pub result_ttl_secs: u64,

    /// How many times one task may fail (not counting its executor being lost) before its job
    /// fails.
    #[arg(long, env = "EMBER_MAX_TASK_ATTEMPTS", default_value_t = 4)]
    pub max_task_attempts: u32,

    /// etcd and the cluster's name (without etcd, executors register with this scheduler).
    #[command(flatten)]
    pub cluster: ember_core::options::ClusterConnection,

    /// Where Arrow Flight SQL clients read results: `proxy` streams them through the
    /// scheduler's port (one published port serves clients outside the cluster); `direct`
    /// points clients at the executors that hold them (for clients inside the cluster).
    #[arg(
        long,
        env = "EMBER_FLIGHT_RESULTS",
        value_enum,
        default_value = "proxy"
    )]
    pub flight_results: FlightResults,

    /// How running jobs share task slots: `fair` (by weight; a job's weight is its
    /// `ember.job_weight` setting, default 1) or `fifo` (the oldest job takes every slot).
    #[arg(long, env = "EMBER_SCHEDULING_POLICY", default_value = "fair")]
    pub scheduling_policy: SchedulingPolicy,

    /// Object stores (s3://) the scheduler lists and infers schemas from when planning.
    #[command(flatten)]
    pub object_store: ember_core::object_stores::ObjectStoreConfig,

    /// Seconds a leader may go unheard before a standby takes over.
    #[arg(long, env = "EMBER_LEADER_TTL_SECS", default_value_t = 10)]
    pub leader_ttl_secs: u64,

    /// Largest request a client may send, in MiB (a statement, a DataFrame plan, Flight
    /// parameters); larger ones are refused with `resource exhausted`.
    #[arg(long, env = "EMBER_MAX_REQUEST_MB", default_value_t = 64)]
    pub max_request_mb: usize,

    /// Where SQL may read and write files.
    #[command(flatten)]
    pub confinement: crate::confine::Confinement,

    /// How deep and how large a statement may be.
    #[command(flatten)]
    pub limits: crate::limits::PlanLimits,

    /// Who may call this scheduler.
    #[command(flatten)]
    pub auth: ember_core::auth::AuthOptions,

    /// Most queries and batch jobs one client (by its user name; anonymous clients count as
    /// one) may have planned or running at once; 0 for no limit.
    #[arg(long, env = "EMBER_MAX_JOBS_PER_CLIENT", default_value_t = 64)]
    pub max_jobs_per_client: usize,

    /// Longest a client may keep the scheduler waiting, in seconds, while it sends a request
    /// (a statement, a plan, uploaded rows); a stalled request fails with `deadline
    /// exceeded`. The scheduler's own time on a request (planning, running it) does not count.
    #[arg(long, env = "EMBER_CLIENT_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub client_idle_timeout_secs: u64,

    /// Most ended queries and batch jobs the cluster keeps for `ember jobs list` (the oldest
    /// go first); 0 keeps none.
    #[arg(long, env = "EMBER_HISTORY_MAX_JOBS", default_value_t = 1000)]
    pub history_max_jobs: usize,

    /// How long, in hours, an ended query or batch job stays listed.
    #[arg(long, env = "EMBER_HISTORY_MAX_AGE_HOURS", default_value_t = 168)]
    pub history_max_age_hours: u64,
}

/// The built-in defaults for a scheduler embedded in another program (no `EMBER_*` variable is
/// read): as on the command line, but without the HTTP endpoint (`ember standalone` sets its
/// own), so that an embedded cluster never takes a `ember scheduler`'s port on the same host,
/// and with SQL reaching any location (`ember standalone` confines its own).
impl Default for SchedulerConfig {
    fn default() -> Self {
        let mut config: SchedulerConfig = ember_core::options::built_in_defaults();
        config.http_bind = "off".into();
        config.spark_connect_bind = "off".into();
        // In the user's own process, SQL reaches what the user can.
        config.confinement.allowed_locations = crate::confine::AllowedLocations::Anywhere;
        // And its callers are the user's own code.
        config.auth = ember_core::auth::AuthOptions::open();
        config
    }
}

/// Spark Connect's usual port, where PySpark looks by default.
pub const DEFAULT_SPARK_CONNECT_BIND: &str = "127.0.0.1:15002";

/// The scheduler's HTTP endpoint, unless told otherwise.
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:9090";

/// Where Flight SQL clients read results from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FlightResults {
    /// Through the scheduler's port: one published port serves clients outside the cluster.
    #[default]
    Proxy,
    /// Straight from the executors holding the result (clients inside the cluster).
    Direct,
}

impl SchedulerConfig {
    pub fn executor_timeout(&self) -> Duration {
        Duration::from_secs(self.executor_timeout_secs)
    }

    pub fn max_request_bytes(&self) -> usize {
        self.max_request_mb.saturating_mul(1 << 20).max(1 << 20)
    }

    pub fn result_ttl(&self) -> Duration {
        Duration::from_secs(self.result_ttl_secs)
    }
}
