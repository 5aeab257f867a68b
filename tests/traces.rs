//! Traces across processes: a scheduler and executors given an OTLP endpoint export a job's
//! spans — the job (planning, on the scheduler), its stages, and its tasks (on the executors)
//! — as one trace, to a real OTLP/gRPC collector (OpenTelemetry's own service definition,
//! served here over TCP).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::sync::Mutex;

use crate::support::{ProcessCluster, TestCluster, eventually, register_tpch};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    attributes: Vec<(String, String)>,
}

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            other => format!("{other:?}"),
        };
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace: span.trace_id,
                    id: span.span_id,
                    parent: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute<'a>(span: &'a Received, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_spans_from_every_process_form_one_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let cluster = ProcessCluster::start_with_env(
        2,
        2,
        &[
            ("EMBER_OTLP_ENDPOINT", &endpoint),
            // Export within a tenth of a second rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let client = cluster.client().await;
    register_tpch(&client).await;
    let result = client
        .sql("SELECT n_regionkey, count(*) FROM nation GROUP BY n_regionkey")
        .await
        .unwrap();
    let job = result.status.job_id.to_string();
    let stages = result.status.stages_total as usize;
    let tasks = result.status.tasks_total as usize;

    let (root, stage_spans, task_spans) = eventually(
        "the job's spans reach the collector",
        Duration::from_secs(30),
        || {
            let spans = collector.0.lock().unwrap().clone();
            let job = job.clone();
            async move {
                let root = spans
                    .iter()
                    .find(|s| s.name == "job" && attribute(s, "job_id") == Some(job.as_str()))
                    .cloned()
                    .ok_or_else(|| format!("no job span among {} spans", spans.len()))?;
                let children = |name: &str| -> Vec<Received> {
                    spans
                        .iter()
                        .filter(|s| s.name == name && s.trace == root.trace)
                        .cloned()
                        .collect()
                };
                let (stage_spans, task_spans) = (children("stage"), children("task"));
                if stage_spans.len() < stages || task_spans.len() < tasks {
                    return Err(format!(
                        "{} stage and {} task spans of {stages} and {tasks}",
                        stage_spans.len(),
                        task_spans.len()
                    ));
                }
                Ok((root, stage_spans, task_spans))
            }
        },
    )
    .await;
    assert_eq!(root.service, "ember-scheduler");
    assert!(root.parent.is_empty(), "the job's span is the trace's root");
    for s in &stage_spans {
        assert_eq!(
            (s.service.as_str(), &s.parent),
            ("ember-scheduler", &root.id)
        );
        assert_eq!(attribute(s, "job_id"), Some(job.as_str()));
    }
    for t in &task_spans {
        assert_eq!(t.service, "ember-executor", "{t:?}");
        assert_eq!(t.parent, root.id, "a task's span is a child of its job's");
        assert_eq!(attribute(t, "job_id"), Some(job.as_str()));
    }
    // Each task attempt has a span of its own.
    let mut ids: Vec<&Vec<u8>> = task_spans.iter().map(|t| &t.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), task_spans.len());
    drop(cluster);
    server.abort();
}
