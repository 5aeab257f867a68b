//! Ember's micro-benchmarks (criterion): shuffle write, shuffle fetch over Arrow Flight on
//! loopback, plan encode/decode of the 22 TPC-H plans, task assignment at scale, and the round
//! trip of `SELECT 1` through a running cluster. Run with `cargo bench --bench ember`.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use ember_client::EmbeddedCluster;
use ember_core::job::ExecutorSpec;
use ember_core::metrics::ExecutorCounters;
use ember_core::shuffle::grant::{Scope, SharedTicketKey, TicketKey};
use ember_core::shuffle::{
    FlightFetcher, PartitionLocation, ShuffleConfig, ShuffleStore, flight_data_stream,
};
use ember_executor::service::ShuffleFlight;
use ember_scheduler::driver::placement::{Cluster, SchedulingPolicy, assign};
use ember_scheduler::driver::{Job, JobOptions};
use ember_scheduler::planner::{StageGraph, StagePlan};
use futures::TryStreamExt;
use tokio::runtime::Runtime;

/// A lineitem-like batch: integers, a float and a short string.
fn batch(rows: usize, seed: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("orderkey", DataType::Int64, false),
        Field::new("partkey", DataType::Int64, false),
        Field::new("price", DataType::Float64, false),
        Field::new("comment", DataType::Utf8, false),
    ]));
    let ids = (0..rows as i64).map(|i| i * 7 + seed);
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Int64Array::from_iter_values(
                ids.clone().map(|i| i % 200_000),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.clone().map(|i| (i % 10_000) as f64 * 1.5),
            )),
            Arc::new(StringArray::from_iter_values(
                ids.map(|i| format!("comment {} of the line", i % 997)),
            )),
        ],
    )
    .unwrap()
}

/// How a map output is kept: in memory (batches, no encoding) or spilled past a budget
/// (here at every write: encoded as IPC into the spill file, LZ4 or not).
fn kept() -> [(&'static str, ShuffleConfig); 3] {
    let config = |memory_budget, compression| ShuffleConfig {
        memory_budget,
        compression,
        ..ShuffleConfig::default()
    };
    [
        ("in_memory", config(usize::MAX, false)),
        ("spilled_uncompressed", config(0, false)),
        ("spilled_lz4", config(0, true)),
    ]
}

fn shuffle_write(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = ShuffleStore::new(dir.path()).unwrap();
    let batches: Vec<RecordBatch> = (0..16).map(|i| batch(8192, i)).collect();
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut group = c.benchmark_group("shuffle_write");
    for (name, config) in kept() {
        for (unit, throughput) in [
            ("bytes", Throughput::Bytes(bytes as u64)),
            ("rows", Throughput::Elements(rows as u64)),
        ] {
            group.throughput(throughput);
            group.bench_function(BenchmarkId::new(name, unit), |b| {
                b.iter(|| {
                    let schema = batches[0].schema();
                    let mut writer = store.writer("bench", 1, 0, schema, 8, &config).unwrap();
                    for (i, batch) in batches.iter().enumerate() {
                        writer.write(i % 8, batch).unwrap();
                    }
                    writer.finish().unwrap()
                })
            });
        }
    }
    group.finish();
}

/// A Flight server on loopback holding `maps` map outputs of one partition each, kept as
/// `config` says; it serves tickets carrying a grant from the returned key.
fn flight_server(
    rt: &Runtime,
    maps: u32,
    config: &ShuffleConfig,
) -> (String, usize, tempfile::TempDir, TicketKey) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShuffleStore::new(dir.path()).unwrap());
    let batches: Vec<RecordBatch> = (0..32).map(|i| batch(8192, i)).collect();
    let decoded: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    for map in 0..maps {
        let mut w = store
            .writer("bench", 1, map, batches[0].schema(), 1, config)
            .unwrap();
        for b in &batches {
            w.write(0, b).unwrap();
        }
        store.insert("bench", 1, map, w.finish().unwrap());
    }
    let key = TicketKey::generate().unwrap();
    let shared = SharedTicketKey::default();
    shared.set(key.clone());
    let service = FlightServiceServer::new(ShuffleFlight::new(
        Arc::clone(&store),
        Arc::new(ExecutorCounters::default()),
        shared,
    ))
    .max_encoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap().to_string();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(ember_core::net::incoming(listener)),
    );
    (address, decoded, dir, key)
}

/// Fetching partitions over Flight on loopback and decoding them: as the executor serves them
/// from memory (encoded as they stream) and from a spill file (stored IPC sent as is).
fn shuffle_fetch(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let streams = 4u32;
    let fetcher = Arc::new(FlightFetcher::new());
    let mut group = c.benchmark_group("shuffle_fetch");
    group.sample_size(20);
    for (name, config) in kept() {
        let (address, decoded, _dir, key) = flight_server(&rt, streams, &config);
        let grant = key.grant(
            Scope {
                job_id: "bench",
                stage_id: 1,
            },
            u64::MAX,
        );
        let location = |map: u32| PartitionLocation {
            executor_id: "bench".into(),
            address: address.clone(),
            job_id: "bench".into(),
            stage_id: 1,
            map_partition: map,
            partition: 0,
            rows: 0,
            bytes: 0,
            grant: grant.clone(),
        };
        for n in [1, streams] {
            group.throughput(Throughput::Bytes((decoded * n as usize) as u64));
            group.bench_function(BenchmarkId::new(format!("{name}/streams"), n), |b| {
                b.to_async(&rt).iter(|| {
                    let fetcher = Arc::clone(&fetcher);
                    let locations: Vec<PartitionLocation> = (0..n).map(location).collect();
                    async move {
                        let fetches = locations.into_iter().map(|loc| {
                            let fetcher = Arc::clone(&fetcher);
                            async move {
                                let data = fetcher.fetch(&loc, None).await.unwrap();
                                let batches: Vec<RecordBatch> =
                                    flight_data_stream(data).try_collect().await.unwrap();
                                batches.len()
                            }
                        });
                        futures::future::join_all(fetches).await
                    }
                })
            });
        }
    }
    group.finish();
}

fn plan_codec(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = std::env::temp_dir()
        .join("ember-bench-data")
        .join("tpch-sf0.01");
    ember::tpch::ensure_generated(0.01, &dir).unwrap();
    let ctx = SessionContext::new_with_config(ember_core::session::distributed_session_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(8),
    ));
    let plans: Vec<(usize, Arc<dyn ExecutionPlan>)> = rt.block_on(async {
        for ddl in ember::sql::table_ddl(&dir).unwrap() {
            ctx.sql(&ddl).await.unwrap().collect().await.unwrap();
        }
        let mut plans = Vec::new();
        for q in 1..=22 {
            let df = ctx.sql(ember::tpch::query(q).unwrap()).await.unwrap();
            plans.push((q, df.create_physical_plan().await.unwrap()));
        }
        plans
    });
    let task_ctx = ctx.task_ctx();
    let encoded: Vec<bytes::Bytes> = plans
        .iter()
        .map(|(_, p)| ember_proto::encode_plan(Arc::clone(p)).unwrap())
        .collect();
    let mut group = c.benchmark_group("plan_codec");
    group.throughput(Throughput::Elements(22));
    group.bench_function("encode_22_tpch_plans", |b| {
        b.iter(|| {
            for (_, plan) in &plans {
                ember_proto::encode_plan(Arc::clone(plan)).unwrap();
            }
        })
    });
    group.bench_function("decode_22_tpch_plans", |b| {
        b.iter(|| {
            for bytes in &encoded {
                ember_proto::decode_plan(bytes, &task_ctx).unwrap();
            }
        })
    });
    group.finish();
}

fn task_assignment(c: &mut Criterion) {
    const EXECUTORS: usize = 1_000;
    const TASKS: usize = 100_000;
    let schema = Arc::new(Schema::empty());
    let job = || {
        let plan: Arc<dyn ExecutionPlan> = Arc::new(
            datafusion::physical_plan::empty::EmptyExec::new(Arc::clone(&schema)),
        );
        let graph = StageGraph {
            stages: [(
                1,
                StagePlan {
                    stage_id: 1,
                    plan,
                    inputs: Vec::new(),
                    tasks: TASKS,
                    output_partitions: 1,
                },
            )]
            .into(),
            final_stage: 1,
            schema: Arc::clone(&schema),
        };
        let mut job = Job::new("bench".into(), graph, JobOptions::default(), 0);
        job.start_ready_stages();
        job.set_launch_plan(1, bytes::Bytes::from_static(b"plan"));
        job
    };
    let cluster = || {
        let mut cluster = Cluster::default();
        for i in 0..EXECUTORS {
            let spec = ExecutorSpec {
                id: format!("executor-{i:04}").into(),
                address: format!("10.0.{}.{}:50051", i / 250, i % 250),
                slots: (TASKS / EXECUTORS) as u32,
            };
            cluster.register(spec, 0);
        }
        cluster
    };
    let mut group = c.benchmark_group("task_assignment");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TASKS as u64));
    group.bench_function("100000_tasks_on_1000_executors", |b| {
        b.iter_batched(
            || (cluster(), job()),
            |(mut cluster, mut job)| {
                let launches = assign(SchedulingPolicy::Fair, &mut cluster, &mut [&mut job]);
                assert_eq!(launches.len(), TASKS);
                launches
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn select_one(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (cluster, client) = rt.block_on(async {
        let cluster = EmbeddedCluster::start(2, 1).await.unwrap();
        let client = cluster.client().await.unwrap();
        (cluster, client)
    });
    let mut group = c.benchmark_group("round_trip");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("select_1_embedded_cluster", |b| {
        b.to_async(&rt)
            .iter(|| async { client.sql("SELECT 1").await.unwrap().num_rows() })
    });
    group.finish();
    rt.block_on(cluster.shutdown());
}

criterion_group!(
    benches,
    shuffle_write,
    shuffle_fetch,
    plan_codec,
    task_assignment,
    select_one
);
criterion_main!(benches);
