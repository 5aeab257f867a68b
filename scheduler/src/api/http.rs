//! The REST API (`/api/v1/...`) and the web UI (`/ui/...`) on the scheduler's HTTP port.
//! Every scheduler serves both: the caller is checked where the request arrives (every
//! scheduler holds the cluster's credentials), and a standby asks the leader over gRPC
//! (`HttpGet`), which answers from its driver — the only place job state lives.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use ember_core::JobId;
use ember_core::auth::Principal;
use ember_core::job::ScriptStatus;
use ember_core::net::Channels;
use ember_proto::pb;
use ember_proto::pb::scheduler_service_client::SchedulerServiceClient;
use serde_json::{Value, json};

use super::rest::{self, JobFilter};
use super::ui;
use crate::driver::JobEntry;
use crate::runtime::{Role, Scheduler};

/// An answer to a GET, wherever it was computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

impl Answer {
    fn json(status: u16, value: &Value) -> Answer {
        Answer {
            status,
            content_type: JSON,
            body: serde_json::to_vec_pretty(value).unwrap_or_default(),
        }
    }

    fn html(status: u16, page: String) -> Answer {
        Answer {
            status,
            content_type: HTML,
            body: page.into_bytes(),
        }
    }

    fn error(ui: bool, status: u16, message: &str) -> Answer {
        if ui {
            Answer::html(status, ui::error_page(status, message))
        } else {
            Answer::json(status, &json!({ "error": message }))
        }
    }
}

#[derive(Clone)]
struct Http {
    scheduler: Arc<Scheduler>,
    channels: Channels,
}

/// The routes the scheduler adds to its HTTP port.
pub fn router(scheduler: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(handle))
        .route("/ui/{*rest}", get(handle))
        .route("/api/v1/{*rest}", get(handle))
        .with_state(Http {
            scheduler,
            channels: Channels::default(),
        })
}

async fn handle(State(http): State<Http>, uri: Uri, headers: HeaderMap) -> Response {
    let presented = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let is_ui = path.starts_with("/ui");
    let answer = match http.scheduler.auth.authenticate(presented) {
        // A browser asks its user for a name and token (Basic), and sends them from then on.
        Err(e) if !is_ui => {
            return (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Bearer"),
                    (header::CONTENT_TYPE, JSON),
                ],
                serde_json::to_vec(&json!({ "error": e.to_string() })).unwrap_or_default(),
            )
                .into_response();
        }
        Err(e) => {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"Ember\", charset=\"UTF-8\"",
                )],
                format!("{e}\n"),
            )
                .into_response();
        }
        Ok(caller) => match super::grpc::leader_channel(&http.scheduler, &http.channels) {
            Ok(None) => answer(&http.scheduler, Some(&caller), path, query).await,
            Ok(Some(channel)) => {
                let request = pb::HttpGetRequest {
                    path: path.to_string(),
                    query: query.to_string(),
                };
                let mut leader = SchedulerServiceClient::new(channel)
                    .max_decoding_message_size(ember_core::MAX_GRPC_MESSAGE_BYTES);
                match leader
                    .http_get(super::auth::forwarded_http(presented, request))
                    .await
                {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let mut answer = Answer {
                            status: reply.status as u16,
                            content_type: if reply.content_type == JSON {
                                JSON
                            } else {
                                HTML
                            },
                            body: reply.body.to_vec(),
                        };
                        if path == "/api/v1/cluster" {
                            answered_by_standby(&mut answer, &http.scheduler);
                        }
                        answer
                    }
                    Err(status) => {
                        let code = match status.code() {
                            tonic::Code::Unauthenticated => 401,
                            tonic::Code::PermissionDenied => 403,
                            _ => 503,
                        };
                        let message = match code {
                            503 => format!("the leader did not answer: {}", status.message()),
                            _ => status.message().to_string(),
                        };
                        Answer::error(is_ui, code, &message)
                    }
                }
            }
            Err(status) => Answer::error(is_ui, 503, status.message()),
        },
    };
    (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, answer.content_type)],
        answer.body,
    )
        .into_response()
}

/// The leader's answer to `path?query` for `caller`.
pub(crate) async fn answer(
    scheduler: &Arc<Scheduler>,
    caller: Option<&Principal>,
    path: &str,
    query: &str,
) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is_ui = segments.first() == Some(&"ui");
    let result: Result<Answer, Failure> = match segments.as_slice() {
        ["api", "v1", "cluster"] => Ok(Answer::json(200, &cluster(scheduler))),
        ["api", "v1", "executors"] => Ok(Answer::json(200, &executors(scheduler))),
        ["api", "v1", "jobs"] => jobs(scheduler, caller, query)
            .await
            .map(|jobs| Answer::json(200, &json!({ "jobs": jobs }))),
        ["api", "v1", "jobs", id] => job(scheduler, caller, id)
            .await
            .map(|job| Answer::json(200, &job)),
        ["ui"] | ["ui", "jobs"] => jobs(scheduler, caller, query)
            .await
            .map(|jobs| Answer::html(200, ui::jobs_page(&jobs, &cluster(scheduler)))),
        ["ui", "jobs", id] => job(scheduler, caller, id)
            .await
            .map(|job| Answer::html(200, ui::job_page(&job))),
        ["ui", "jobs", id, "stages", stage] => job(scheduler, caller, id)
            .await
            .and_then(|job| ui::stage_page(&job, stage).ok_or((404, "no such stage".into())))
            .map(|page| Answer::html(200, page)),
        ["ui", "jobs", id, "stages", stage, "tasks", task] => job(scheduler, caller, id)
            .await
            .and_then(|job| ui::task_page(&job, stage, task).ok_or((404, "no such task".into())))
            .map(|page| Answer::html(200, page)),
        ["ui", "executors"] => Ok(Answer::html(
            200,
            ui::executors_page(&executors(scheduler)["executors"]),
        )),
        _ => Err((404, format!("nothing at {path}"))),
    };
    result.unwrap_or_else(|(status, message)| Answer::error(is_ui, status, &message))
}

type Failure = (u16, String);

/// The leader's view of the cluster, as the standby that was asked tells it: its own role,
/// and where the leader is.
fn answered_by_standby(answer: &mut Answer, scheduler: &Scheduler) {
    if let Ok(mut view) = serde_json::from_slice::<Value>(&answer.body) {
        view["role"] = json!("standby");
        if let Role::Standby { leader } = scheduler.role() {
            view["leader"] = json!(leader);
        }
        *answer = Answer::json(answer.status, &view);
    }
}

fn cluster(scheduler: &Scheduler) -> Value {
    let (role, leader) = match scheduler.role() {
        Role::Leader { .. } => ("leader", None),
        Role::Standby { leader } => ("standby", leader),
        Role::Starting => ("starting", None),
    };
    let (executors, total, free, running) = scheduler.read(|d| {
        let running = d
            .jobs()
            .filter(|(_, e)| matches!(e, JobEntry::Distributed(j) if !j.state.is_terminal()))
            .count();
        (
            d.executor_ids().len(),
            d.total_slots(),
            d.free_slots(),
            running,
        )
    });
    let members: Vec<Value> = scheduler
        .executors()
        .iter()
        .map(|e| json!({ "role": "executor", "id": e.spec.id.to_string(), "address": e.spec.address }))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": role,
        "leader": leader,
        "members": members,
        "executors": executors,
        "total_slots": total,
        "free_slots": free,
        "running_jobs": running,
    })
}

fn executors(scheduler: &Scheduler) -> Value {
    let list: Vec<Value> = scheduler.executors().iter().map(rest::executor).collect();
    json!({ "executors": list })
}

fn visible(caller: Option<&Principal>, job: &ScriptStatus) -> bool {
    super::auth::may_act_as(caller, job.owner.as_deref()).is_ok()
}

async fn jobs(
    scheduler: &Arc<Scheduler>,
    caller: Option<&Principal>,
    query: &str,
) -> Result<Vec<Value>, Failure> {
    let filter = JobFilter::parse(query).map_err(|e| (400, e))?;
    let all = scheduler
        .scripts(None)
        .await
        .map_err(|e| (503, e.to_string()))?;
    Ok(all
        .iter()
        .filter(|j| visible(caller, j) && filter.keeps(j))
        .take(filter.limit.unwrap_or(usize::MAX))
        .map(rest::job_summary)
        .collect())
}

async fn job(
    scheduler: &Arc<Scheduler>,
    caller: Option<&Principal>,
    id: &str,
) -> Result<Value, Failure> {
    let not_found = || (404, format!("no job {id}"));
    let summary = match scheduler.scripts(Some(id)).await {
        Ok(mut found) => found.pop().ok_or_else(not_found)?,
        Err(ember_core::EmberError::JobNotFound { .. }) => return Err(not_found()),
        Err(e) => return Err((503, e.to_string())),
    };
    if !visible(caller, &summary) {
        // Another user's job is not there, as far as this caller can tell.
        return Err(not_found());
    }
    let running: JobId = rest::stages_job(&summary);
    let stages = scheduler.read(|d| match d.job(&running) {
        Some(JobEntry::Distributed(job)) => Some(rest::job_stages(job)),
        _ => None,
    });
    let statements = scheduler.script_statements(id);
    Ok(rest::job_detail(&summary, statements, stages))
}
