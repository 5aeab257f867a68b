//! Cluster mode on a real etcd: the metadata store's behaviour, and queries that keep their
//! correct answer while executors, the leading scheduler or etcd itself fail under them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_client::EmberClient;
use ember_core::job::{JobState, JobStatus, StageStatus};
use ember_core::meta::{EtcdStore, Keys, MetaStore};
use ember_core::{JobId, Result};
use prost::Message;

use crate::etcd_support::{Etcd, EtcdCluster};
use crate::support::TestCluster;
use crate::support::{
    assert_same_rows, datafusion_reference_at, eventually, register_tpch_at, tpch_dir,
    tpch_dir_large,
};

#[tokio::test]
async fn the_etcd_store_conforms_like_the_memory_store() {
    let etcd = Etcd::start().await;
    let store = EtcdStore::connect(&etcd.url).await.unwrap();
    ember_core::meta::conformance::run(&store, "/conformance")
        .await
        .unwrap();
}

/// Submits TPC-H query `q` and waits until at least one of its stages has completed while
/// the job still runs; returns the job and that status.
async fn submit_and_wait_for_a_stage(client: &EmberClient, q: usize) -> (JobId, JobStatus) {
    let sql = ember::tpch::query(q).unwrap();
    let job = client.submit(sql).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = client
            .status(&job, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(
            !status.state.is_terminal(),
            "q{q} ended ({:?}, {:?}) before any failure could be injected",
            status.state,
            status.error
        );
        if status.stages_completed >= 1 {
            return (job, status);
        }
        assert!(
            Instant::now() < deadline,
            "no stage of q{q} completed in 120 s"
        );
    }
}

async fn expected(dir: &std::path::Path, q: usize) -> Vec<datafusion::arrow::array::RecordBatch> {
    let reference = datafusion_reference_at(dir).await;
    let sql = ember::tpch::query(q).unwrap();
    reference.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn finish(client: &EmberClient, job: &JobId) -> Result<ember_client::QueryResult> {
    let status = tokio::time::timeout(Duration::from_secs(180), client.wait(job, |_| {}))
        .await
        .expect("the job did not finish within 180 s")?;
    client.collect(status).await
}

/// A cluster of `schedulers` and `executors` (one slot each) on etcd, running TPC-H `q` at
/// SF 0.5 with at least one stage completed, and the result the query must give.
struct Running {
    expected: Vec<datafusion::arrow::array::RecordBatch>,
    cluster: EtcdCluster,
    client: EmberClient,
    job: JobId,
    status: JobStatus,
}

async fn running(q: usize, schedulers: usize, executors: usize) -> Running {
    let dir = tpch_dir_large();
    let expected = expected(dir, q).await;
    let cluster = EtcdCluster::start(schedulers, executors, 1).await;
    let client = cluster.client().await;
    register_tpch_at(&client, dir).await;
    let (job, status) = submit_and_wait_for_a_stage(&client, q).await;
    Running {
        expected,
        cluster,
        client,
        job,
        status,
    }
}

/// Waits for `job` (TPC-H `q`) after a failure was injected: it must succeed with the rows
/// DataFusion gives. Prints how long it took after the failure.
async fn finish_correctly(
    client: &EmberClient,
    job: &JobId,
    q: usize,
    expected: &[datafusion::arrow::array::RecordBatch],
    failure: &str,
) -> ember_client::QueryResult {
    let start = Instant::now();
    let result = finish(client, job)
        .await
        .unwrap_or_else(|e| panic!("q{q} did not survive: {failure}: {e}"));
    eprintln!(
        "measure: q{q} finished {:?} after {failure}",
        start.elapsed()
    );
    assert_same_rows(&format!("q{q}"), expected, &result.batches);
    result
}

fn by_stage(stages: &[StageStatus]) -> BTreeMap<u32, StageStatus> {
    stages.iter().map(|s| (s.stage_id, s.clone())).collect()
}

#[tokio::test]
async fn killing_an_executor_mid_query_reruns_only_what_it_held() {
    let q = 18;
    let Running {
        expected,
        mut cluster,
        client,
        job,
        status: before,
    } = running(q, 1, 3).await;

    // The victim: the executor holding the most completed map outputs.
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    for stage in &before.stages {
        for e in stage.task_executors.iter().filter(|e| !e.is_empty()) {
            *held.entry(e.clone()).or_default() += 1;
        }
    }
    let victim = held.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    let index = cluster
        .executors
        .iter()
        .position(|m| m.id == victim)
        .unwrap();
    cluster.executors[index].kill();
    let result = finish_correctly(&client, &job, q, &expected, "an executor was killed").await;

    let after = by_stage(&result.status.stages);
    eprintln!(
        "killed {victim}; before: {:#?}\nafter: {:#?}",
        before.stages, after
    );
    for old in before.stages.iter().filter(|s| s.state == "completed") {
        let new = &after[&old.stage_id];
        let lost = old.task_executors.iter().filter(|e| **e == victim).count() as i64;
        let reran = new.launches as i64 - old.launches as i64;
        assert!(
            reran <= lost,
            "stage {}: {lost} task(s) were lost with {victim} but {reran} ran again",
            old.stage_id,
        );
        for (p, e) in old.task_executors.iter().enumerate() {
            if *e != victim {
                assert_eq!(
                    &new.task_executors[p], e,
                    "stage {} task {p}: output on a surviving executor was recomputed",
                    old.stage_id
                );
            }
        }
    }
    for stage in after.values() {
        assert!(
            !stage.task_executors.contains(&victim),
            "stage {} still points at the killed executor",
            stage.stage_id
        );
    }
    cluster.wait_executors(2).await;
}

#[tokio::test]
async fn the_standby_finishes_the_job_when_the_leader_is_killed() {
    let q = 9;
    let Running {
        expected,
        mut cluster,
        client,
        job,
        ..
    } = running(q, 2, 2).await;
    let first = cluster.leader().await;
    cluster.schedulers[first].kill();
    finish_correctly(&client, &job, q, &expected, "the leader was killed").await;
    let now = cluster.leader().await;
    assert_ne!(now, first, "the standby leads now");
}

/// Fencing: a leader frozen (SIGSTOP) past its lease, then resumed, finds another leader in its
/// place. It decides nothing more — its writes are refused by their fence, and it steps down on
/// its own clock before handling any event — and the job finishes under the new leader.
#[tokio::test]
async fn a_leader_paused_past_its_lease_steps_down_when_it_resumes() {
    let q = 9;
    let Running {
        expected,
        mut cluster,
        client,
        job,
        ..
    } = running(q, 2, 2).await;
    let first = cluster.leader().await;
    cluster.schedulers[first].signal("STOP");
    let now = cluster.leader_other_than(first).await;
    cluster.schedulers[first].signal("CONT");
    let log = cluster.log_path(&cluster.schedulers[first].id);
    eventually(
        "the resumed leader steps down",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            async move {
                if text.contains("stepping down as leader") {
                    Ok(())
                } else {
                    Err(tail)
                }
            }
        },
    )
    .await;
    assert!(
        cluster.schedulers[first].alive(),
        "the resumed scheduler stays, as a standby"
    );
    finish_correctly(&client, &job, q, &expected, "the leader was frozen").await;
    assert_eq!(cluster.leader().await, now, "the new leader keeps leading");
    // Through the old leader (now a standby) requests reach the new one.
    let old = EmberClient::connect(&format!(
        "http://127.0.0.1:{}",
        cluster.schedulers[first].port
    ))
    .await
    .unwrap();
    let one = old.sql("SELECT 1").await.unwrap();
    assert_eq!(one.num_rows(), 1);
}

#[tokio::test]
async fn the_cluster_rides_out_an_etcd_outage() {
    let q = 18;
    let Running {
        expected,
        mut cluster,
        client,
        job,
        ..
    } = running(q, 2, 2).await;
    cluster.etcd.kill();
    // The outage itself is what is tested: etcd stays away this long.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for m in cluster
        .schedulers
        .iter_mut()
        .chain(cluster.executors.iter_mut())
    {
        assert!(m.alive(), "{} exited while etcd was down", m.id);
    }
    cluster.etcd.restart().await;

    // The job itself rides it out: a leader is elected again and continues it from its records.
    finish_correctly(&client, &job, q, &expected, "an etcd outage").await;
    for m in cluster
        .schedulers
        .iter_mut()
        .chain(cluster.executors.iter_mut())
    {
        assert!(m.alive(), "{} exited after etcd came back", m.id);
    }
    // The cluster serves again (on whichever scheduler leads now: tables are declared in the
    // leader's session until the shared catalog exists, so declare them again).
    cluster.wait_executors(2).await;
    register_tpch_at(&client, tpch_dir_large()).await;
    let again = client.sql("SELECT count(*) FROM nation").await.unwrap();
    assert_eq!(again.num_rows(), 1);
}

#[tokio::test]
async fn a_frozen_executor_is_declared_lost_its_work_redone_and_it_rejoins() {
    let q = 18;
    let Running {
        expected,
        cluster,
        client,
        job,
        ..
    } = running(q, 1, 3).await;
    let frozen = &cluster.executors[0];
    frozen.signal("STOP");
    let stopped = Instant::now();
    eventually(
        "the frozen executor is declared lost",
        Duration::from_secs(30),
        || async {
            let (executors, _) = client.executors().await.unwrap();
            match executors.iter().any(|e| e.spec.id.as_str() == frozen.id) {
                false => Ok(()),
                true => Err(format!("{} still listed", frozen.id)),
            }
        },
    )
    .await;
    frozen.signal("CONT");
    eprintln!(
        "measure: q{q} was running; frozen executor declared lost after {:?}",
        stopped.elapsed()
    );

    let result = finish(&client, &job)
        .await
        .expect("the query survives the freeze");
    assert_same_rows(&format!("q{q}"), &expected, &result.batches);
    let ids = cluster.wait_executors(3).await;
    assert!(ids.contains(&frozen.id), "{} rejoined: {ids:?}", frozen.id);
    // And it takes work again.
    let again = client.sql(ember::tpch::query(1).unwrap()).await.unwrap();
    assert!(again.num_rows() > 0);
}

#[tokio::test]
async fn executors_of_another_protocol_version_are_refused() {
    let cluster = EtcdCluster::start(1, 1, 1).await;
    let store = cluster.etcd.store().await;
    let keys = Keys::new("default");
    let lease = store.grant_lease(30).await.unwrap();
    let record = |id: &str, version: u32| ember_proto::pb::ExecutorRecord {
        executor: Some(ember_proto::pb::ExecutorSpec {
            executor_id: id.into(),
            address: "127.0.0.1:1".into(),
            slots: 1,
        }),
        protocol_version: version,
        draining: false,
    };
    let put = |id: &'static str, version: u32| {
        let store = store.clone();
        let key = keys.executor(id);
        let value = Bytes::from(record(id, version).encode_to_vec());
        async move { store.put(&key, value, Some(lease)).await.unwrap() }
    };
    put("old", ember_core::PROTOCOL_VERSION + 1).await;
    put("zz-current", ember_core::PROTOCOL_VERSION).await;
    // Once the later, valid record is in, the earlier one has been seen and refused.
    let ids = cluster.wait_executors(2).await;
    assert!(
        ids.contains(&"zz-current".to_string()) && !ids.contains(&"old".to_string()),
        "{ids:?}"
    );
    store.revoke(lease).await.unwrap();
    cluster.wait_executors(1).await;
    let log = std::fs::read_to_string(cluster.log_path("scheduler-0")).unwrap();
    assert!(
        log.contains("another protocol version"),
        "the refusal is logged"
    );
}

#[tokio::test]
async fn a_terminated_executor_drains_and_the_leader_hands_over_on_sigterm() {
    let cluster_dir = tpch_dir();
    let mut cluster = EtcdCluster::start(2, 2, 1).await;
    let client = cluster.client().await;
    register_tpch_at(&client, cluster_dir).await;
    let q = 3;
    let expected = expected(cluster_dir, q).await;
    let sql = ember::tpch::query(q).unwrap();

    // An executor told to stop drains: it leaves the cluster, exits cleanly, and no query
    // loses anything.
    let job = client.submit(sql).await.unwrap();
    cluster.executors[1].signal("TERM");
    let result = finish(&client, &job).await.unwrap();
    assert_same_rows(&format!("q{q}"), &expected, &result.batches);
    assert!(
        cluster.executors[1].wait_exit(Duration::from_secs(30)),
        "drained executor exits 0"
    );
    cluster.wait_executors(1).await;

    // The leader told to stop resigns: the standby leads well before the lease would expire.
    let first = cluster.leader().await;
    let start = Instant::now();
    cluster.schedulers[first].signal("TERM");
    // Well before the 2 s lease could expire: the leader resigned.
    while cluster.leader().await == first {
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "no handover within 1.5 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "measure: leadership handed over {:?} after SIGTERM",
        start.elapsed()
    );
    assert!(cluster.schedulers[first].wait_exit(Duration::from_secs(30)));
    // Tables live in the leader's session until the shared catalog exists: declare them again.
    register_tpch_at(&client, cluster_dir).await;
    let again = client.sql(sql).await.unwrap();
    assert_same_rows(&format!("q{q} after handover"), &expected, &again.batches);
    assert_eq!(again.status.state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_leader_through_etcd_and_any_listed_scheduler_works() {
    let cluster = EtcdCluster::start(2, 1, 1).await;
    let tables = tpch_dir().to_str().unwrap().to_string();
    let standby = 1 - cluster.leader().await;
    let run = |how: Vec<String>| {
        let tables = tables.clone();
        tokio::task::spawn_blocking(move || {
            let mut args: Vec<&str> = vec!["sql"];
            args.extend(how.iter().map(String::as_str));
            args.extend(["--tables", &tables, "--format", "csv", "-c"]);
            args.push("select count(*) as n from nation");
            crate::cli::ember(&args)
        })
    };
    let etcd = vec!["--etcd".to_string(), cluster.etcd.url.clone()];
    // Through a standby: it forwards to the leader.
    let standby_url = format!("http://127.0.0.1:{}", cluster.schedulers[standby].port);
    let listed = vec![
        "--scheduler".to_string(),
        format!("http://127.0.0.1:1,{standby_url}"),
    ];
    for how in [etcd, listed] {
        let (ok, stdout, stderr) = run(how.clone()).await.unwrap();
        assert!(ok, "{how:?}: {stderr}");
        assert_eq!(stdout.lines().last(), Some("25"), "{how:?}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_stops_its_tasks_and_deletes_its_shuffle_data() {
    let dir = tpch_dir_large();
    let cluster = ember_client::EmbeddedCluster::start(2, 1).await.unwrap();
    let client = cluster.client().await.unwrap();
    register_tpch_at(&client, dir).await;
    let (job, _) = submit_and_wait_for_a_stage(&client, 18).await;
    let held: usize = cluster
        .executors()
        .iter()
        .map(|e| e.store.jobs_held())
        .sum();
    assert!(held > 0, "a completed stage left shuffle data");
    assert!(client.cancel(&job).await.unwrap());
    let status = client.status(&job, Duration::ZERO).await.unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    let err = client.wait(&job, |_| {}).await.unwrap_err();
    assert!(matches!(err, ember_core::EmberError::Cancelled), "{err}");
    eventually(
        "the cancelled job's tasks and data are gone",
        Duration::from_secs(30),
        || async {
            let (executors, _) = client.executors().await.unwrap();
            let running: u32 = executors.iter().map(|e| e.running_tasks).sum();
            let held: usize = cluster
                .executors()
                .iter()
                .map(|e| e.store.jobs_held())
                .sum();
            match (running, held) {
                (0, 0) => Ok(()),
                _ => Err(format!("{running} tasks still run, {held} jobs' data kept")),
            }
        },
    )
    .await;
    // The cluster runs the next job normally.
    let again = client.sql("select count(*) from region").await.unwrap();
    assert_eq!(again.num_rows(), 1);
}

#[tokio::test]
async fn an_executor_exits_when_the_leader_speaks_another_protocol_version() {
    let etcd = Etcd::start().await;
    let store = etcd.store().await;
    let leader = ember_proto::pb::LeaderRecord {
        scheduler_id: "future".into(),
        address: "127.0.0.1:1".into(),
        protocol_version: ember_core::PROTOCOL_VERSION + 1,
    };
    let key = Keys::new("default").leader();
    store
        .put(&key, Bytes::from(leader.encode_to_vec()), None)
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::ember_bin())
            .args(["executor", "--etcd", &etcd.url, "--bind", "127.0.0.1:0"])
            .env("EMBER_EXECUTOR_HTTP_BIND", "127.0.0.1:0")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("protocol version"), "{stderr}");
}

/// Jobs that ended stay listed after their own records expire — in the cluster's store, so
/// also after the leader that ran them is gone.
#[tokio::test]
async fn ended_jobs_stay_listed_after_they_expire_and_across_a_failover() {
    let mut cluster = EtcdCluster::start_with_env(2, 1, 2, &[("EMBER_RESULT_TTL_SECS", "1")]).await;
    let client = cluster.client().await;
    crate::support::register_tpch(&client).await;
    let job = crate::support::run_distributed_query(&client).await;
    eventually(
        "the job's own records expire",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let job = job.clone();
            async move {
                match client.status(&job, Duration::ZERO).await {
                    Err(e) if e.to_string().contains("not found") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let listed = |client: EmberClient, job: JobId| async move {
        let jobs = client.scripts(None).await.map_err(|e| e.to_string())?;
        match jobs.iter().find(|s| s.script_id == job.as_str()) {
            Some(s) if s.state == JobState::Succeeded && s.statement_rows == [5] => Ok(()),
            other => Err(format!("{other:?} in {} jobs", jobs.len())),
        }
    };
    listed(client.clone(), job.clone()).await.unwrap();
    let first = cluster.leader().await;
    // The REST API of the standby answers with the leader's history, what the job used too.
    let standby = &cluster.schedulers[1 - first];
    let path = format!("/api/v1/jobs/{job}");
    let (status, body) = crate::support::http_get(standby.http_port, &path);
    assert_eq!(status, 200, "{body}");
    let before: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(before["state"], "succeeded", "{before}");
    assert!(
        before["resources"]["cpu_ns"].as_u64().unwrap() > 0,
        "{before}"
    );
    let (status, listing) = crate::support::http_get(standby.http_port, "/api/v1/cluster");
    assert!(
        status == 200 && listing.contains("\"standby\""),
        "{listing}"
    );
    cluster.schedulers[first].kill();
    let second = cluster.leader_other_than(first).await;
    eventually("the new leader lists it", Duration::from_secs(30), || {
        listed(client.clone(), job.clone())
    })
    .await;
    let one = client.scripts(Some(job.as_str())).await.unwrap();
    assert_eq!(one[0].script_id, job.as_str());
    let (status, body) = crate::support::http_get(cluster.schedulers[second].http_port, &path);
    assert_eq!(status, 200, "{body}");
    let after: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        after["resources"], before["resources"],
        "kept in the history"
    );
}
