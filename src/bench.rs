//! `ember bench tpch`: runs TPC-H queries on single-node DataFusion and on Ember in the same
//! process, alternating, and reports medians and their ratio.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datafusion::prelude::{SessionConfig, SessionContext};
use ember_client::EmbeddedCluster;

use crate::cli::{BenchArgs, BenchMode, BenchSuite};
use crate::{sql, tpch};

struct QueryTiming {
    query: usize,
    datafusion: Duration,
    ember: Duration,
    rows: usize,
    shuffle_bytes: u64,
    tasks: u32,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let BenchSuite::Tpch {
        scale_factor,
        data,
        executors,
        mode,
        queries,
        iterations,
        output,
    } = args.suite;
    if mode == BenchMode::Processes {
        bail!("--mode processes is not available yet; use --mode local");
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
    let dir = data.unwrap_or_else(|| PathBuf::from(format!("data/tpch-sf{scale_factor}")));
    eprintln!("data: {}", dir.display());
    tpch::ensure_generated(scale_factor, &dir)?;
    let ddl = sql::table_ddl(&dir)?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let df = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(cores));
    for statement in &ddl {
        df.sql(statement).await?.collect().await?;
    }
    let cluster = EmbeddedCluster::start(executors, 0).await?;
    let client = cluster.client().await?;
    for statement in &ddl {
        client.sql(statement).await?;
    }

    let mut results = Vec::new();
    for &q in &queries {
        let text = tpch::query(q).expect("checked above");
        let mut df_times = Vec::new();
        let mut ember_times = Vec::new();
        let mut last = None;
        for _ in 0..iterations {
            let start = Instant::now();
            df.sql(text)
                .await?
                .collect()
                .await
                .with_context(|| format!("DataFusion q{q}"))?;
            df_times.push(start.elapsed());
            let start = Instant::now();
            let result = client
                .sql(text)
                .await
                .with_context(|| format!("Ember q{q}"))?;
            ember_times.push(start.elapsed());
            last = Some(result);
        }
        let last = last.expect("at least one iteration");
        let timing = QueryTiming {
            query: q,
            datafusion: median(&mut df_times),
            ember: median(&mut ember_times),
            rows: last.num_rows(),
            shuffle_bytes: last.status.shuffle_bytes,
            tasks: last.status.tasks_total,
        };
        eprintln!(
            "q{:<2} datafusion {:>8.1} ms  ember {:>8.1} ms  ratio {:>5.2}",
            q,
            ms(timing.datafusion),
            ms(timing.ember),
            ratio(&timing)
        );
        results.push(timing);
    }
    cluster.shutdown().await;

    println!("{}", report(&results, scale_factor, executors));
    if let Some(path) = output {
        std::fs::write(&path, json(&results, scale_factor, executors))
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

fn report(results: &[QueryTiming], sf: f64, executors: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "TPC-H SF {sf}, Ember with {executors} embedded executors vs single-node DataFusion (medians)"
    );
    let _ = writeln!(
        out,
        "{:<6}{:>14}{:>12}{:>8}{:>8}{:>14}{:>7}",
        "query", "datafusion ms", "ember ms", "ratio", "rows", "shuffle bytes", "tasks"
    );
    for t in results {
        let _ = writeln!(
            out,
            "{:<6}{:>14.1}{:>12.1}{:>8.2}{:>8}{:>14}{:>7}",
            format!("q{}", t.query),
            ms(t.datafusion),
            ms(t.ember),
            ratio(t),
            t.rows,
            t.shuffle_bytes,
            t.tasks
        );
    }
    let df: f64 = results.iter().map(|t| ms(t.datafusion)).sum();
    let ember: f64 = results.iter().map(|t| ms(t.ember)).sum();
    let _ = writeln!(
        out,
        "{:<6}{:>14.1}{:>12.1}{:>8.2}",
        "total",
        df,
        ember,
        ember / df.max(1e-9)
    );
    out
}

fn json(results: &[QueryTiming], sf: f64, executors: usize) -> String {
    let rows: Vec<String> = results
        .iter()
        .map(|t| {
            format!(
                "{{\"query\":{},\"datafusion_ms\":{:.3},\"ember_ms\":{:.3},\"ratio\":{:.4},\"rows\":{},\"shuffle_bytes\":{},\"tasks\":{}}}",
                t.query,
                ms(t.datafusion),
                ms(t.ember),
                ratio(t),
                t.rows,
                t.shuffle_bytes,
                t.tasks
            )
        })
        .collect();
    format!(
        "{{\"benchmark\":\"tpch\",\"scale_factor\":{sf},\"executors\":{executors},\"queries\":[{}]}}\n",
        rows.join(",")
    )
}
