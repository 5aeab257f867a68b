//! `ember bench tpch`: runs TPC-H queries on single-node DataFusion and on Ember in the same
//! process, alternating, and reports medians and their ratio. `ember bench latency`: the round
//! trip of a small statement through a cluster.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::process::{Child, Command, Stdio};

use datafusion::prelude::{SessionConfig, SessionContext};
use ember_client::{EmbeddedCluster, EmberClient};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{BenchArgs, BenchMode, BenchSuite, TpchBenchArgs};
use crate::{sql, tpch};

struct QueryTiming {
    query: usize,
    datafusion: Duration,
    ember: Duration,
    /// CPU time the engine's processes used (median), where the platform reports it.
    datafusion_cpu: Option<Duration>,
    ember_cpu: Option<Duration>,
    rows: usize,
    shuffle_bytes: u64,
    tasks: u32,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.suite {
        BenchSuite::Tpch(args) => tpch_bench(args).await,
        BenchSuite::Latency(args) => {
            let session = sql::Session::open(&args.cluster).await?;
            let df = SessionContext::new();
            if let Some(dir) = &args.cluster.tables {
                for statement in sql::table_ddl(dir)? {
                    df.sql(&statement).await?.collect().await?;
                }
            }
            let result = latency(&session.client, &df, &args.sql, args.iterations.max(1)).await;
            session.close().await;
            result
        }
    }
}

/// Times `sql` through `client` and on single-node DataFusion, `iterations` times each after
/// ten untimed runs, and prints the percentiles.
async fn latency(
    client: &EmberClient,
    df: &SessionContext,
    sql: &str,
    iterations: usize,
) -> Result<()> {
    let mut ember = Vec::with_capacity(iterations);
    let mut datafusion = Vec::with_capacity(iterations);
    for i in 0..iterations + 10 {
        let start = Instant::now();
        client.sql(sql).await.context("Ember")?;
        let e = start.elapsed();
        let start = Instant::now();
        df.sql(sql).await?.collect().await.context("DataFusion")?;
        let d = start.elapsed();
        if i >= 10 {
            ember.push(e);
            datafusion.push(d);
        }
    }
    ember.sort();
    datafusion.sort();
    let at =
        |times: &[Duration], p: f64| ms(times[((times.len() - 1) as f64 * p).round() as usize]);
    println!("{sql:?}: {iterations} round trips, client connected (ms)");
    println!("{:<12}{:>9}{:>9}{:>9}{:>9}", "", "p50", "p90", "p99", "max");
    for (name, times) in [("ember", &ember), ("datafusion", &datafusion)] {
        println!(
            "{:<12}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
            name,
            at(times, 0.5),
            at(times, 0.9),
            at(times, 0.99),
            at(times, 1.0)
        );
    }
    Ok(())
}

async fn tpch_bench(args: TpchBenchArgs) -> Result<()> {
    let TpchBenchArgs {
        scale_factor,
        data,
        executors,
        mode,
        queries,
        iterations,
        output,
        tls,
    } = args;
    if tls && mode != BenchMode::Processes {
        bail!("--tls needs --mode processes");
    }
    let queries = if queries.is_empty() {
        (1..=22).collect()
    } else {
        queries
    };
    if let Some(bad) = queries.iter().find(|q| tpch::query(**q).is_none()) {
        bail!("there is no TPC-H query {bad} (1..=22)");
    }
    let iterations = iterations.max(1);
    let dir = data
        .unwrap_or_else(|| PathBuf::from(format!("data/tpch-sf{}", scale_factor.unwrap_or(1.0))));
    let scale_factor = match (scale_factor, tpch::recorded_scale_factor(&dir)) {
        (Some(asked), Some(found)) if asked != found => bail!(
            "{} holds TPC-H at scale factor {found}, not {asked}: leave out --scale-factor, or \
             name another --data folder",
            dir.display()
        ),
        (asked, found) => asked.or(found).unwrap_or(1.0),
    };
    eprintln!("data: {} (scale factor {scale_factor})", dir.display());
    tpch::ensure_generated(scale_factor, &dir)?;
    let ddl = sql::table_ddl(&dir)?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let df = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(cores));
    for statement in &ddl {
        df.sql(statement).await?.collect().await?;
    }
    if executors == 0 {
        bail!("--executors must be at least 1");
    }
    let cluster = match mode {
        BenchMode::Local => Cluster::Embedded(EmbeddedCluster::start(executors, 0).await?),
        BenchMode::Processes => {
            Cluster::Processes(Processes::start(executors, cores, &dir, tls).await?)
        }
    };
    let client = cluster.client().await?;
    for statement in &ddl {
        client.sql(statement).await?;
    }

    let progress = ProgressBar::new((queries.len() * iterations * 2) as u64).with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let mut results = Vec::new();
    for &q in &queries {
        let text = tpch::query(q).expect("checked above");
        let mut df_times = Vec::new();
        let mut ember_times = Vec::new();
        let mut df_cpu = Vec::new();
        let mut ember_cpu = Vec::new();
        let mut last = None;
        let mut df_rows = 0;
        for _ in 0..iterations {
            progress.set_message(format!("q{q} DataFusion"));
            let cpu = cpu_time(&[std::process::id()]);
            let start = Instant::now();
            let batches = df
                .sql(text)
                .await?
                .collect()
                .await
                .with_context(|| format!("DataFusion q{q}"))?;
            df_times.push(start.elapsed());
            df_rows = batches.iter().map(|b| b.num_rows()).sum();
            df_cpu.extend(cpu_since(cpu, &[std::process::id()]));
            progress.inc(1);
            progress.set_message(format!("q{q} Ember"));
            let pids = cluster.pids();
            let cpu = cpu_time(&pids);
            let start = Instant::now();
            let result = client
                .sql(text)
                .await
                .with_context(|| format!("Ember q{q}"))?;
            ember_times.push(start.elapsed());
            ember_cpu.extend(cpu_since(cpu, &pids));
            progress.inc(1);
            last = Some(result);
        }
        let last = last.expect("at least one iteration");
        if last.num_rows() != df_rows {
            bail!(
                "q{q}: Ember returned {} rows where DataFusion returned {df_rows}",
                last.num_rows()
            );
        }
        let timing = QueryTiming {
            query: q,
            datafusion: median(&mut df_times),
            ember: median(&mut ember_times),
            datafusion_cpu: (df_cpu.len() == iterations).then(|| median(&mut df_cpu)),
            ember_cpu: (ember_cpu.len() == iterations).then(|| median(&mut ember_cpu)),
            rows: last.num_rows(),
            shuffle_bytes: last.status.shuffle_bytes,
            tasks: last.status.tasks_total,
        };
        progress.suspend(|| {
            eprintln!(
                "q{:<2} datafusion {:>8.1} ms  ember {:>8.1} ms  ratio {:>5.2}",
                q,
                ms(timing.datafusion),
                ms(timing.ember),
                ratio(&timing)
            )
        });
        results.push(timing);
    }
    progress.finish_and_clear();
    cluster.shutdown().await;

    let how = match mode {
        BenchMode::Local => format!("{executors} embedded executors"),
        BenchMode::Processes => format!("a scheduler and {executors} executor processes"),
    };
    println!("{}", report(&results, scale_factor, &how));
    if let Some(path) = output {
        std::fs::write(&path, json(&results, scale_factor, executors, mode))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(t: &QueryTiming) -> f64 {
    ms(t.ember) / ms(t.datafusion).max(1e-9)
}

fn report(results: &[QueryTiming], sf: f64, how: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "TPC-H SF {sf}, Ember with {how} vs single-node DataFusion (medians)"
    );
    let _ = writeln!(
        out,
        "{:<6}{:>14}{:>12}{:>8}{:>8}{:>14}{:>7}{:>9}{:>11}",
        "query",
        "datafusion ms",
        "ember ms",
        "ratio",
        "rows",
        "shuffle bytes",
        "tasks",
        "df cpu",
        "ember cpu"
    );
    for t in results {
        let _ = writeln!(
            out,
            "{:<6}{:>14.1}{:>12.1}{:>8.2}{:>8}{:>14}{:>7}{:>9}{:>11}",
            format!("q{}", t.query),
            ms(t.datafusion),
            ms(t.ember),
            ratio(t),
            t.rows,
            t.shuffle_bytes,
            t.tasks,
            cores_busy(t.datafusion_cpu, t.datafusion),
            cores_busy(t.ember_cpu, t.ember)
        );
    }
    let df: f64 = results.iter().map(|t| ms(t.datafusion)).sum();
    let ember: f64 = results.iter().map(|t| ms(t.ember)).sum();
    let total =
        |f: fn(&QueryTiming) -> Option<Duration>| results.iter().map(f).sum::<Option<Duration>>();
    let _ = writeln!(
        out,
        "{:<6}{:>14.1}{:>12.1}{:>8.2}{:>37}{:>9}{:>11}",
        "total",
        df,
        ember,
        ember / df.max(1e-9),
        "",
        cores_busy(
            total(|t| t.datafusion_cpu),
            Duration::from_secs_f64(df / 1000.0)
        ),
        cores_busy(
            total(|t| t.ember_cpu),
            Duration::from_secs_f64(ember / 1000.0)
        )
    );
    let _ = writeln!(
        out,
        "(cpu: cores busy on average while the query ran, CPU time / wall time)"
    );
    out
}

/// `cpu / wall` as "1.87x", or "-" where CPU time is not known.
fn cores_busy(cpu: Option<Duration>, wall: Duration) -> String {
    match cpu {
        Some(cpu) => format!("{:.2}x", cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)),
        None => "-".into(),
    }
}

/// CPU time (user + system) the processes `pids` have used so far: `/proc/PID/stat` on Linux,
/// in its fixed 100 Hz ticks; `None` elsewhere or when a process is gone.
fn cpu_time(pids: &[u32]) -> Option<Duration> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        ticks += utime + stime;
    }
    Some(Duration::from_millis(ticks * 10))
}

fn cpu_since(before: Option<Duration>, pids: &[u32]) -> Option<Duration> {
    Some(cpu_time(pids)?.saturating_sub(before?))
}

fn json(results: &[QueryTiming], sf: f64, executors: usize, mode: BenchMode) -> String {
    let rows: Vec<String> = results
        .iter()
        .map(|t| {
            format!(
                "{{\"query\":{},\"datafusion_ms\":{:.3},\"ember_ms\":{:.3},\"ratio\":{:.4},\"rows\":{},\"shuffle_bytes\":{},\"tasks\":{},\"datafusion_cpu_ms\":{},\"ember_cpu_ms\":{}}}",
                t.query,
                ms(t.datafusion),
                ms(t.ember),
                ratio(t),
                t.rows,
                t.shuffle_bytes,
                t.tasks,
                t.datafusion_cpu.map_or("null".into(), |c| format!("{:.0}", ms(c))),
                t.ember_cpu.map_or("null".into(), |c| format!("{:.0}", ms(c)))
            )
        })
        .collect();
    let df: f64 = results.iter().map(|t| ms(t.datafusion)).sum();
    let ember: f64 = results.iter().map(|t| ms(t.ember)).sum();
    let mode = match mode {
        BenchMode::Local => "local",
        BenchMode::Processes => "processes",
    };
    format!(
        "{{\"benchmark\":\"tpch\",\"scale_factor\":{sf},\"executors\":{executors},\"mode\":\"{mode}\",\"total\":{{\"datafusion_ms\":{df:.3},\"ember_ms\":{ember:.3},\"ratio\":{:.4}}},\"queries\":[{}]}}\n",
        ember / df.max(1e-9),
        rows.join(",")
    )
}

/// Where Ember runs during the benchmark.
enum Cluster {
    Embedded(EmbeddedCluster),
    Processes(Processes),
}

impl Cluster {
    async fn client(&self) -> Result<EmberClient> {
        Ok(match self {
            Cluster::Embedded(c) => c.client().await?,
            Cluster::Processes(p) => EmberClient::connect(&p.url).await?.with_token(&p.token)?,
        })
    }

    async fn shutdown(self) {
        match self {
            Cluster::Embedded(c) => c.shutdown().await,
            Cluster::Processes(p) => drop(p),
        }
    }

    /// The processes whose CPU time is Ember's: this one (the client, and an embedded
    /// cluster), and the scheduler and executor processes.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        if let Cluster::Processes(p) = self {
            pids.extend(p.children.iter().map(Child::id));
        }
        pids
    }
}

/// A scheduler and executors as child processes of this binary, killed on drop.
struct Processes {
    url: String,
    /// The token the processes' clients and executors call the scheduler with.
    token: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Processes {
    /// Starts them, the CPU cores shared out among the executors' slots.
    /// SQL may read `data`; with `tls`, every process speaks TLS with certificates made in
    /// the run's folder, and this process dials them over TLS.
    async fn start(executors: usize, cores: usize, data: &Path, tls: bool) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the ember binary")?;
        let dir = tempfile::tempdir()?;
        let (token, executor_token) = (
            ember_core::auth::new_token()?,
            ember_core::auth::new_token()?,
        );
        let mut this = Processes {
            url: String::new(),
            token: token.clone(),
            children: Vec::new(),
            _dir: dir,
        };
        let certs = this._dir.path().join("certs");
        // Clients and executors sign in, as on a shared network.
        let mut env: Vec<(&str, std::ffi::OsString)> = vec![
            (
                "EMBER_ALLOWED_LOCATIONS",
                std::path::absolute(data)?.into_os_string(),
            ),
            (
                "EMBER_AUTH_TOKENS",
                [
                    ember_core::auth::Credentials::line("bench", &token)?,
                    ember_core::auth::Credentials::line("ember-executor", &executor_token)?,
                ]
                .join("\n")
                .into(),
            ),
            ("EMBER_TOKEN", executor_token.into()),
        ];
        if tls {
            crate::certs::write_all(&certs, &["127.0.0.1".to_string()])?;
            env.push(("EMBER_TLS_CA", certs.join("ca.pem").into_os_string()));
            ember_core::tls::TlsOptions {
                tls_ca: Some(certs.join("ca.pem")),
                ..Default::default()
            }
            .install()?;
        }
        let role_env = |role: &str| -> Vec<(String, std::ffi::OsString)> {
            let mut all: Vec<(String, std::ffi::OsString)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            if tls {
                all.push((
                    "EMBER_TLS_CERT".into(),
                    certs.join(format!("{role}.pem")).into(),
                ));
                all.push((
                    "EMBER_TLS_KEY".into(),
                    certs.join(format!("{role}.key")).into(),
                ));
            }
            all
        };
        let port_file = this._dir.path().join("scheduler.port");
        let child = Command::new(&exe)
            .args([
                "scheduler",
                "--bind",
                "127.0.0.1:0",
                "--http-bind",
                "127.0.0.1:0",
            ])
            .arg("--port-file")
            .arg(&port_file)
            .envs(role_env("scheduler"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting the scheduler")?;
        this.children.push(child);
        this.url = format!("http://127.0.0.1:{}", wait_for_port(&port_file).await?);
        let slots = (cores / executors).max(1).to_string();
        for i in 0..executors {
            let port_file = this._dir.path().join(format!("executor-{i}.port"));
            let child = Command::new(&exe)
                .args([
                    "executor",
                    "--scheduler",
                    &this.url,
                    "--bind",
                    "127.0.0.1:0",
                ])
                // Several executors on one host: each its own HTTP port.
                .args([
                    "--slots",
                    &slots,
                    "--http-bind",
                    "127.0.0.1:0",
                    "--port-file",
                ])
                .arg(&port_file)
                // Shuffle and spill files in this bench's folder, removed with it (the
                // executors are killed, so they cannot remove their own).
                .arg("--work-dir")
                .arg(this._dir.path())
                .envs(role_env("executor"))
                .stdout(Stdio::null())
                .spawn()
                .context("starting an executor")?;
            this.children.push(child);
            wait_for_port(&port_file).await?;
        }
        let client = EmberClient::connect(&this.url)
            .await?
            .with_token(&this.token)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.executors().await?.0.len() < executors {
            if Instant::now() > deadline {
                bail!("the executors did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(this)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_for_port(path: &std::path::Path) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return Ok(port);
        }
        if Instant::now() > deadline {
            bail!("no port in {} after 30 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
