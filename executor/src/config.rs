//! The executor's options, each declared once: flag, environment variable, default and doc.

use std::path::PathBuf;

use clap::Parser;

/// The executor's HTTP endpoint, unless told otherwise (a taken default falls back to a free
/// port, so that several executors share a host).
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:9091";

#[derive(Debug, Clone, Parser)]
#[command(about = "Ember executor options")]
pub struct ExecutorConfig {
    /// The scheduler(s) to register with (default http://127.0.0.1:50050), or etcd, where the
    /// executor registers under a lease and finds the leading scheduler.
    #[command(flatten)]
    pub cluster: ember_core::options::ClusterAddress,

    /// Address the executor's gRPC and Flight services listen on (port 0 picks a free port).
    #[arg(
        long = "bind",
        env = "EMBER_EXECUTOR_BIND",
        default_value = "127.0.0.1:50051"
    )]
    pub bind: String,

    /// Address of the HTTP endpoint (/healthz, /readyz, /metrics); `off` disables it.
    #[arg(
        long,
        env = "EMBER_EXECUTOR_HTTP_BIND",
        default_value = DEFAULT_HTTP_BIND
    )]
    pub http_bind: String,

    /// Write the HTTP endpoint's port to this file once it listens.
    #[arg(long, env = "EMBER_EXECUTOR_HTTP_PORT_FILE")]
    pub http_port_file: Option<PathBuf>,

    /// Address the scheduler and other executors dial, when it differs from --bind.
    #[arg(long, env = "EMBER_EXECUTOR_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// Write the port the executor bound to this file once it listens.
    #[arg(long, env = "EMBER_EXECUTOR_PORT_FILE")]
    pub port_file: Option<PathBuf>,

    /// Tasks run at once; 0 means one per CPU core.
    #[arg(long, env = "EMBER_EXECUTOR_SLOTS", default_value_t = 0)]
    pub slots: usize,

    /// Directory for spilled shuffle data (default: a fresh temporary directory).
    #[arg(long, env = "EMBER_EXECUTOR_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// This executor's id (default: a random one).
    #[arg(long, env = "EMBER_EXECUTOR_ID")]
    pub executor_id: Option<String>,

    /// Milliseconds between heartbeats to the scheduler.
    #[arg(long, env = "EMBER_HEARTBEAT_INTERVAL_MS", default_value_t = 2000)]
    pub heartbeat_interval_ms: u64,

    /// Shuffle output one task may keep in memory before spilling it to disk, in MiB. 0 (the
    /// default): as much as the executor's memory pool grants (the pool also counts the
    /// outputs the executor holds, so the shuffle spills once it is full).
    #[arg(long, env = "EMBER_SHUFFLE_MEMORY_MB", default_value_t = 0)]
    pub shuffle_memory_mb: usize,

    /// Compression of shuffle data: `none` (default: on fast networks and one host, compressing
    /// costs more CPU than it saves) or `lz4` (for slow networks).
    #[arg(long, env = "EMBER_SHUFFLE_COMPRESSION", value_enum, default_value_t = ShuffleCompression::None)]
    pub shuffle_compression: ShuffleCompression,

    /// Seconds without a lease renewal after which the scheduler declares this executor lost
    /// (with --etcd).
    #[arg(long, env = "EMBER_LEASE_TTL_SECS", default_value_t = 10)]
    pub lease_ttl_secs: u64,

    /// On SIGTERM, the longest the executor keeps serving shuffle output still held for
    /// running jobs before it exits, in seconds.
    #[arg(long, env = "EMBER_DRAIN_TIMEOUT_SECS", default_value_t = 60)]
    pub drain_timeout_secs: u64,

    /// Object stores (s3://) this executor reads and writes.
    #[command(flatten)]
    pub object_store: ember_core::object_stores::ObjectStoreConfig,

    /// Memory the executor's tasks share, in MiB (operator state and shuffle buffers); sorts,
    /// aggregates and joins spill to disk past it. 0: 70% of the machine's memory, or of the
    /// cgroup's limit when it is lower.
    #[arg(long, env = "EMBER_MEMORY_LIMIT_MB", default_value_t = 0)]
    pub memory_limit_mb: u64,

    /// Directory for operators' spill files (default: `spill/` in the work directory).
    #[arg(long, env = "EMBER_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShuffleCompression {
    None,
    Lz4,
}

/// The built-in defaults for an executor embedded in another program (no `EMBER_*` variable is
/// read): as on the command line, but without the HTTP endpoint (several share the process).
impl Default for ExecutorConfig {
    fn default() -> Self {
        let mut config: ExecutorConfig = ember_core::options::built_in_defaults();
        config.http_bind = "off".into();
        config
    }
}

/// The scheduler an executor registers with when neither --scheduler nor --etcd is given.
pub const DEFAULT_SCHEDULER_URL: &str = "http://127.0.0.1:50050";

impl ExecutorConfig {
    /// The scheduler URLs to register with (without etcd).
    pub fn scheduler_urls(&self) -> &str {
        self.cluster
            .scheduler
            .as_deref()
            .unwrap_or(DEFAULT_SCHEDULER_URL)
    }

    /// The memory limit in bytes: `--memory-limit-mb`, or 70% of what the machine (or the
    /// cgroup) gives this process.
    pub fn effective_memory_limit(&self) -> usize {
        if self.memory_limit_mb > 0 {
            return (self.memory_limit_mb as usize) << 20;
        }
        default_memory_limit()
    }

    pub fn effective_slots(&self) -> usize {
        if self.slots > 0 {
            self.slots
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// 70% of the memory available to this process: the machine's, or its cgroup's when lower.
pub fn default_memory_limit() -> usize {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    .min()
    .unwrap_or(u64::MAX);
    (machine.min(cgroup) as f64 * 0.7) as usize
}
