//! The stage plans of the 22 TPC-H queries, kept as approved snapshots
//! (`tests/snapshots/tpch/qNN.txt`): a change to planning or stage cutting shows in review as a
//! change of these files. After a deliberate change, approve the new plans with
//! `EMBER_BLESS=1 cargo nextest run -E 'test(stage_plans)'` and commit them.

use std::path::{Path, PathBuf};

use ember_client::{EmbeddedCluster, EmberClient};

use crate::support::{register_tpch, rows, tpch_dir};

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/tpch")
}

/// The distributed plan EXPLAIN shows, with the data folder's path made neutral.
async fn stage_plan(client: &EmberClient, q: usize) -> String {
    let sql = format!("EXPLAIN {}", ember::tpch::query(q).unwrap());
    // A fixed partition count: the plan must not depend on the machine's cores.
    let settings = [("datafusion.execution.target_partitions", "4")];
    let job = client.submit_with_settings(&sql, &settings).await.unwrap();
    let status = client.wait(&job, |_| {}).await.unwrap();
    let result = client.collect(status).await.unwrap();
    let plan = rows(&result.batches)
        .into_iter()
        .find(|r| r[0] == "distributed_plan")
        .expect("EXPLAIN shows the distributed plan")[1]
        .clone();
    let data = tpch_dir().display().to_string();
    let plan = plan.replace(data.trim_start_matches('/'), "DATA");
    plan.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_stage_plans_match_their_approved_snapshots() {
    let cluster = EmbeddedCluster::start(2, 2).await.unwrap();
    let client = cluster.client().await.unwrap();
    register_tpch(&client).await;
    let bless = std::env::var_os("EMBER_BLESS").is_some();
    let mut changed = Vec::new();
    for q in 1..=22 {
        let plan = stage_plan(&client, q).await;
        let path = snapshot_dir().join(format!("q{q:02}.txt"));
        if bless {
            std::fs::create_dir_all(snapshot_dir()).unwrap();
            std::fs::write(&path, &plan).unwrap();
            continue;
        }
        let approved = std::fs::read_to_string(&path).unwrap_or_default();
        if approved != plan {
            let line = approved
                .lines()
                .zip(plan.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| approved.lines().count().min(plan.lines().count()));
            changed.push(format!(
                "q{q} ({}), first difference at line {}:\n  approved: {}\n  now:      {}",
                path.display(),
                line + 1,
                approved.lines().nth(line).unwrap_or("(end)"),
                plan.lines().nth(line).unwrap_or("(end)")
            ));
        }
    }
    cluster.shutdown().await;
    assert!(
        changed.is_empty(),
        "stage plans changed (approve with EMBER_BLESS=1 if intended):\n{}",
        changed.join("\n")
    );
}

/// `EXPLAIN ANALYZE` output with what varies from run to run made neutral: every metric but
/// the row counts (times, sizes, counts of batches and pieces), and the stage lines' timings.
fn neutral_analyze(plan: &str) -> String {
    let data = tpch_dir().display().to_string();
    let plan = plan.replace(data.trim_start_matches('/'), "DATA");
    let mut out = String::new();
    for line in plan.lines() {
        let line = line.trim_end();
        if line.starts_with("Stage ") {
            // "Stage 1 (tasks=4, inputs=[]): wall=..., output=N rows, SIZE"
            let (head, rest) = line.split_once(": ").expect("a stage line");
            let rows = rest
                .split(", ")
                .find(|part| part.starts_with("output="))
                .expect("the stage's output rows");
            out.push_str(&format!("{head}: {rows}\n"));
        } else if let Some((operator, metrics)) = line.rsplit_once(", metrics=[") {
            let metrics = metrics.trim_end_matches(']');
            let shown: Vec<String> = metrics
                .split(", ")
                .filter(|m| !m.is_empty())
                .map(|m| match m.split_once('=') {
                    Some((name @ ("output_rows" | "rows_written"), v)) => format!("{name}={v}"),
                    Some((name, _)) => format!("{name}=_"),
                    None => m.to_string(),
                })
                .collect();
            out.push_str(&format!("{operator}, metrics=[{}]\n", shown.join(", ")));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Distributed EXPLAIN ANALYZE of TPC-H q3: every stage with its operators' metrics summed
/// over tasks, against `tests/snapshots/explain_analyze_q03.txt` (approve a deliberate change
/// with `EMBER_BLESS=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_q3_explain_analyze_shows_each_stage_with_its_metrics() {
    let cluster = EmbeddedCluster::start(2, 2).await.unwrap();
    let client = cluster.client().await.unwrap();
    register_tpch(&client).await;
    let sql = format!("EXPLAIN ANALYZE {}", ember::tpch::query(3).unwrap());
    let settings = [("datafusion.execution.target_partitions", "4")];
    let job = client.submit_with_settings(&sql, &settings).await.unwrap();
    let status = client.wait(&job, |_| {}).await.unwrap();
    assert!(status.stages_total >= 4, "it ran as a distributed job");
    let result = client.collect(status).await.unwrap();
    let rows = rows(&result.batches);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "Plan with Metrics");
    let plan = &rows[0][1];
    // Real measurements, before they are made neutral.
    assert!(plan.contains("elapsed_compute="), "{plan}");
    assert!(plan.contains("skew="), "{plan}");
    // The final stage's rows are the query's 10 rows.
    assert!(plan.contains("[final]: wall="), "{plan}");
    let final_line = plan.lines().find(|l| l.contains("[final]")).unwrap();
    assert!(final_line.contains("output=10 rows"), "{final_line}");
    let neutral = neutral_analyze(plan);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/explain_analyze_q03.txt");
    if std::env::var_os("EMBER_BLESS").is_some() {
        std::fs::write(&path, &neutral).unwrap();
    }
    let approved = std::fs::read_to_string(&path).unwrap_or_default();
    cluster.shutdown().await;
    assert_eq!(
        neutral, approved,
        "EXPLAIN ANALYZE of q3 changed (approve with EMBER_BLESS=1 if intended)"
    );
}
