//! The `ember` command line: every option declared once (flag, `EMBER_*` variable, default, doc).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ember_executor::ExecutorConfig;
use ember_scheduler::SchedulerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Ember: distributed SQL on Apache DataFusion"
)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `ember_scheduler=debug`.
    #[arg(long, env = "EMBER_LOG", default_value = "warn", global = true)]
    pub log: String,

    /// Log lines as `text` (for people) or `json` (one object per line, for log collectors).
    #[arg(long, env = "EMBER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Export traces (spans per job, stage and task) over OTLP/gRPC to this collector, e.g.
    /// `http://otel-collector:4317`; also read from `OTEL_EXPORTER_OTLP_ENDPOINT`. Off when unset.
    #[arg(long, env = "EMBER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// Settings from a TOML file (keys are option names; `[scheduler]`, `[executor]`, ...
    /// tables apply to one command); flags and `EMBER_*` variables take precedence.
    #[arg(long, env = "EMBER_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate benchmark data.
    Datagen(DatagenArgs),
    /// Run SQL: one-shot (-c, -f) or an interactive shell, on an embedded or remote cluster.
    Sql(SqlArgs),
    /// Run a scheduler.
    Scheduler(SchedulerConfig),
    /// Run an executor that joins a scheduler.
    Executor(ExecutorConfig),
    /// Run a scheduler and executors in one long-running process.
    Standalone(StandaloneArgs),
    /// Measure Ember against single-node DataFusion.
    Bench(BenchArgs),
    /// Submit a batch job: a SQL script the cluster runs in order; prints the job's id.
    Submit(SubmitArgs),
    /// List, follow and cancel batch jobs.
    Jobs(JobsArgs),
    /// Exit 0 when a local Ember process answers /healthz (a container's healthcheck).
    Probe(ProbeArgs),
    /// Create a cluster CA and a certificate per role (for development and the compose stack).
    Certs(CertsArgs),
    /// Make client credentials.
    Auth(AuthArgs),
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub action: AuthAction,
}

#[derive(Debug, Subcommand)]
pub enum AuthAction {
    /// Make an API token for a user: the token goes to stdout (give it to the user), its
    /// hash to the credentials file schedulers read (--auth-file).
    Token {
        /// The user's name (letters, digits and ._@-): jobs are recorded as theirs and
        /// per-client limits count by it.
        name: String,
        /// The credentials file to add the hash to (created if missing); without it, the line
        /// to add is printed to stderr.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Folder to write ca.pem, ca.key and {scheduler,executor,client}.pem/.key into.
    #[arg(long)]
    pub out: PathBuf,

    /// Host names and IP addresses the certificates are valid for, comma-separated.
    #[arg(long, default_value = "localhost,127.0.0.1")]
    pub hosts: String,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// HTTP ports to try on 127.0.0.1 (any answering 200 is enough).
    #[arg(long, value_delimiter = ',', default_values_t = [9090u16, 9091u16])]
    pub ports: Vec<u16>,

    /// The path to ask.
    #[arg(long, default_value = "/healthz")]
    pub path: String,

    /// With a certificate (the process serves HTTPS), ask over TLS, trusting --tls-ca.
    #[command(flatten)]
    pub tls: ember_core::tls::TlsOptions,
}

/// A running cluster to talk to (batch jobs need one that outlives this process).
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The cluster: its scheduler URLs, or etcd.
    #[command(flatten)]
    pub cluster: ember_core::options::ClusterAddress,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,

    /// File of `;`-separated SQL statements (DDL, queries, COPY/INSERT) to run in order.
    #[arg(short = 'f', long = "file", required_unless_present = "command")]
    pub file: Option<PathBuf>,

    /// The script inline instead of in a file.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,

    /// A name to find the job by in `ember jobs list` (default: its id).
    #[arg(long)]
    pub name: Option<String>,

    /// The job's share of task slots while other jobs run (fair sharing): a job of weight 2
    /// gets twice the slots of one of weight 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub weight: u32,

    /// Wait for the job to finish (a progress bar on a terminal); exit non-zero if it fails.
    #[arg(long)]
    pub wait: bool,

    /// With --wait: how the job's progress shows.
    #[arg(long, value_enum, env = "EMBER_PROGRESS", default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub remote: RemoteArgs,

    #[command(subcommand)]
    pub action: JobsAction,
}

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Batch jobs the cluster knows, newest first.
    List,
    /// One job: state, statements and stages done, tasks, elapsed time, error.
    Status {
        /// The id `ember submit` printed.
        id: String,
    },
    /// Stop a job: its running statement is cancelled and no later one starts.
    Cancel {
        /// The id `ember submit` printed.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct DatagenArgs {
    #[command(subcommand)]
    pub dataset: Dataset,
}

#[derive(Debug, Subcommand)]
pub enum Dataset {
    /// TPC-H as Parquet, one folder per table.
    Tpch {
        /// TPC-H scale factor (1 is about 1 GB of raw data).
        #[arg(long, env = "EMBER_SCALE_FACTOR", default_value_t = 1.0)]
        scale_factor: f64,
        /// Folder to write the tables into.
        #[arg(long, env = "EMBER_DATAGEN_OUTPUT")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How a command that waits for a job shows its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar (stages, tasks) on a terminal; nothing otherwise.
    Auto,
    /// A line on stderr each time the job's stages or tasks advance (for logs and CI).
    Plain,
    /// Nothing.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// Where SQL runs: an embedded cluster or a remote scheduler.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Run on an embedded cluster in this process (the default without --scheduler/--etcd).
    #[arg(long, conflicts_with_all = ["scheduler", "etcd"])]
    pub local: bool,

    /// A running cluster to use instead: its scheduler URLs, or etcd.
    #[command(flatten)]
    pub remote: ember_core::options::ClusterAddress,

    /// Executors of the embedded cluster.
    #[arg(long, env = "EMBER_EXECUTORS", default_value_t = 2)]
    pub executors: usize,

    /// Task slots per embedded executor; 0 shares the CPU cores out among them.
    #[arg(long, env = "EMBER_SLOTS", default_value_t = 0)]
    pub slots: usize,

    /// Register each sub-folder or file of this folder as a table named after it.
    #[arg(long, env = "EMBER_TABLES")]
    pub tables: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// How results are printed.
    #[arg(long, value_enum, env = "EMBER_FORMAT", default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,

    /// SQL to run (several `;`-separated statements run in order).
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    pub command: Option<String>,

    /// File of `;`-separated SQL statements to run in order.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,

    /// Print each statement's row count and time to stderr.
    #[arg(long, env = "EMBER_TIMING", default_value_t = true, action = clap::ArgAction::Set)]
    pub timing: bool,

    /// How a running statement's progress shows.
    #[arg(long, value_enum, env = "EMBER_PROGRESS", default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Address the scheduler listens on; executors listen on free loopback ports.
    #[arg(long, env = "EMBER_STANDALONE_BIND", default_value = "127.0.0.1:50050")]
    pub bind: String,

    /// Executors to run in the process.
    #[arg(long, env = "EMBER_EXECUTORS", default_value_t = 2)]
    pub executors: usize,

    /// Task slots per executor; 0 shares the CPU cores out among them.
    #[arg(long, env = "EMBER_SLOTS", default_value_t = 0)]
    pub slots: usize,

    /// Write the scheduler's port to this file once it listens.
    #[arg(long, env = "EMBER_STANDALONE_PORT_FILE")]
    pub port_file: Option<PathBuf>,

    /// Address of the HTTP endpoint (/healthz, /readyz, /metrics); `off` disables it.
    #[arg(
        long,
        env = "EMBER_STANDALONE_HTTP_BIND",
        default_value = ember_scheduler::config::DEFAULT_HTTP_BIND
    )]
    pub http_bind: String,

    /// Address of the Spark Connect endpoint (PySpark's `sc://host:port`); `off` disables it.
    #[arg(
        long,
        env = "EMBER_STANDALONE_SPARK_CONNECT_BIND",
        default_value = ember_scheduler::config::DEFAULT_SPARK_CONNECT_BIND
    )]
    pub spark_connect_bind: String,

    /// Where SQL may read and write files.
    #[command(flatten)]
    pub confinement: ember_scheduler::confine::Confinement,

    /// Who may call the scheduler.
    #[command(flatten)]
    pub auth: ember_core::auth::AuthOptions,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub suite: BenchSuite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    Local,
    Processes,
}

#[derive(Debug, Subcommand)]
pub enum BenchSuite {
    /// TPC-H queries on Ember and on single-node DataFusion, alternating.
    Tpch(TpchBenchArgs),
    /// The round trip of one small statement through a cluster, client connected: latency
    /// percentiles, next to single-node DataFusion's for the same statement in this process.
    Latency(LatencyBenchArgs),
}

#[derive(Debug, Args)]
pub struct TpchBenchArgs {
    /// TPC-H scale factor; default: that of the data in --data, or 1.
    #[arg(long, env = "EMBER_SCALE_FACTOR")]
    pub scale_factor: Option<f64>,
    /// Where the generated data is kept (generated when missing).
    #[arg(long, env = "EMBER_BENCH_DATA")]
    pub data: Option<PathBuf>,
    /// Executors (their slots share out the CPU cores).
    #[arg(long, default_value_t = 2)]
    pub executors: usize,
    /// Where Ember runs: `local`, an embedded cluster in this process; `processes`, a
    /// scheduler and executor processes on loopback.
    #[arg(long, value_enum, default_value_t = BenchMode::Local)]
    pub mode: BenchMode,
    /// Queries to run, e.g. `1,3,18` (default: all 22).
    #[arg(long, value_delimiter = ',')]
    pub queries: Vec<usize>,
    /// Timed runs per query and engine (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub iterations: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// With `--mode processes`: the cluster speaks TLS (certificates made for the run).
    #[arg(long)]
    pub tls: bool,
}

#[derive(Debug, Args)]
pub struct LatencyBenchArgs {
    /// The cluster timed: a running one (--scheduler, --etcd) or, by default, an embedded one
    /// in this process. Tables of --tables are registered in DataFusion too.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The statement timed.
    #[arg(long, default_value = "SELECT 1")]
    pub sql: String,
    /// Timed round trips (after 10 untimed ones).
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
}
