//! AnalyzePlan (a DataFrame's schema, `explain()`, the server's version, type parsing) and
//! Config (a session's settings).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use ember_core::job::JobState;
use ember_core::shuffle::batches_from_ipc_stream;
use ember_core::{EmberError, Result};
use ember_proto::spark::analyze_plan_request::Analyze;
use ember_proto::spark::analyze_plan_response::{self as apr, Result as Answer};
use ember_proto::spark::config_request::operation::OpType as ConfigOp;
use ember_proto::spark::{self as sc, plan::OpType};
use tonic::{Request, Status};

use super::{SPARK_VERSION, SparkConnect, spark_error};
use crate::runtime::Query;
use crate::spark::{Translated, types};

/// Settings a session starts with, as a Spark server reports them.
/// (The client reads several before it sends rows of its own; local rows are always sent
/// inline and plans uncompressed, since Ember takes no artifacts.)
const DEFAULTS: &[(&str, &str)] = &[
    ("spark.app.name", "Ember"),
    ("spark.sql.session.timeZone", "UTC"),
    ("spark.sql.timestampType", "TIMESTAMP_LTZ"),
    ("spark.sql.ansi.enabled", "true"),
    ("spark.sql.caseSensitive", "false"),
    ("spark.sql.shuffle.partitions", "200"),
    ("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"),
    ("spark.sql.execution.arrow.useLargeVarTypes", "false"),
    (
        "spark.sql.execution.arrow.pyspark.selfDestruct.enabled",
        "false",
    ),
    (
        "spark.sql.execution.pandas.convertToArrowArraySafely",
        "false",
    ),
    ("spark.sql.execution.pandas.inferPandasDictAsMap", "false"),
    ("spark.sql.execution.pandas.structHandlingMode", "legacy"),
    ("spark.sql.execution.pyspark.binaryAsBytes", "true"),
    ("spark.sql.pyspark.inferNestedDictAsStruct.enabled", "false"),
    ("spark.sql.pyspark.jvmStacktrace.enabled", "false"),
    (
        "spark.sql.pyspark.legacy.inferArrayTypeFromFirstElement.enabled",
        "false",
    ),
    (
        "spark.sql.pyspark.legacy.inferMapTypeFromFirstPair.enabled",
        "false",
    ),
    ("spark.sql.connect.serverStacktrace.enabled", "false"),
    ("spark.sql.repl.eagerEval.enabled", "false"),
    ("spark.sql.repl.eagerEval.maxNumRows", "20"),
    ("spark.sql.repl.eagerEval.truncate", "20"),
    (
        "spark.sql.session.localRelationCacheThreshold",
        "9223372036854775807",
    ),
    ("spark.sql.session.localRelationChunkSizeRows", "10000"),
    ("spark.sql.session.localRelationChunkSizeBytes", "16777216"),
    (
        "spark.sql.session.localRelationBatchOfChunksSizeBytes",
        "134217728",
    ),
    (
        "spark.sql.session.localRelationSizeLimit",
        "9223372036854775807",
    ),
    ("spark.connect.session.planCompression.threshold", "-1"),
    (
        "spark.connect.session.planCompression.defaultAlgorithm",
        "NONE",
    ),
    ("spark.sql.artifact.isolation.enabled", "false"),
    (
        "spark.sql.artifact.isolation.alwaysApplyClassloader",
        "false",
    ),
];

impl SparkConnect {
    pub(super) async fn analyze(
        &self,
        request: Request<sc::AnalyzePlanRequest>,
    ) -> std::result::Result<sc::AnalyzePlanResponse, Status> {
        let (session, request, owner) = self.session_of(request)?;
        let plan_of = |plan: Option<sc::Plan>| -> Result<sc::Relation> {
            match plan.and_then(|p| p.op_type) {
                Some(OpType::Root(relation)) => Ok(relation),
                _ => Err(EmberError::User(
                    "analyze: the plan is not a relation".into(),
                )),
            }
        };
        let translate = |relation: sc::Relation| {
            let mut planner = super::planner(&self.scheduler, &session);
            self.scheduler.planning(async move {
                match planner.root(&relation).await? {
                    Translated::Plan(plan) => Ok(plan),
                    Translated::Show { .. } => {
                        Err(EmberError::User("show() has no schema to analyze".into()))
                    }
                }
            })
        };
        let answer = async {
            Ok::<_, EmberError>(match request.analyze {
                Some(Analyze::Schema(s)) => {
                    let plan = translate(plan_of(s.plan)?).await?;
                    Answer::Schema(apr::Schema {
                        schema: Some(types::spark_schema(plan.schema().as_arrow())),
                    })
                }
                Some(Analyze::Explain(e)) => {
                    let plan = translate(plan_of(e.plan)?).await?;
                    let verbose = e.explain_mode
                        == sc::analyze_plan_request::explain::ExplainMode::Extended as i32;
                    Answer::Explain(apr::Explain {
                        explain_string: self.explain(plan, verbose, owner.clone()).await?,
                    })
                }
                Some(Analyze::TreeString(t)) => {
                    let plan = translate(plan_of(t.plan)?).await?;
                    Answer::TreeString(apr::TreeString {
                        tree_string: tree_string(&plan),
                    })
                }
                Some(Analyze::IsLocal(_)) => Answer::IsLocal(apr::IsLocal { is_local: false }),
                Some(Analyze::IsStreaming(_)) => Answer::IsStreaming(apr::IsStreaming {
                    is_streaming: false,
                }),
                Some(Analyze::InputFiles(_)) => {
                    Answer::InputFiles(apr::InputFiles { files: Vec::new() })
                }
                Some(Analyze::SparkVersion(_)) => Answer::SparkVersion(apr::SparkVersion {
                    version: SPARK_VERSION.to_string(),
                }),
                Some(Analyze::DdlParse(d)) => {
                    let parsed = match types::parse_schema(&d.ddl_string) {
                        Ok(schema) => types::spark_schema(&schema),
                        Err(_) => types::spark_type(&types::parse_type(&d.ddl_string)?),
                    };
                    Answer::DdlParse(apr::DdlParse {
                        parsed: Some(parsed),
                    })
                }
                Some(Analyze::SameSemantics(s)) => {
                    let a = translate(plan_of(s.target_plan)?).await?;
                    let b = translate(plan_of(s.other_plan)?).await?;
                    Answer::SameSemantics(apr::SameSemantics { result: a == b })
                }
                Some(Analyze::SemanticHash(s)) => {
                    use std::hash::{Hash, Hasher};
                    let plan = translate(plan_of(s.plan)?).await?;
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    plan.hash(&mut hasher);
                    Answer::SemanticHash(apr::SemanticHash {
                        result: hasher.finish() as i32,
                    })
                }
                // Ember keeps no cached DataFrames: results are recomputed, so persisting is
                // a no-op that keeps the answers right.
                Some(Analyze::Persist(_)) => Answer::Persist(apr::Persist {}),
                Some(Analyze::Unpersist(_)) => Answer::Unpersist(apr::Unpersist {}),
                Some(Analyze::GetStorageLevel(_)) => {
                    Answer::GetStorageLevel(apr::GetStorageLevel {
                        storage_level: Some(sc::StorageLevel::default()),
                    })
                }
                Some(Analyze::JsonToDdl(_)) => {
                    return Err(crate::spark::unsupported("analysis", "json_to_ddl"));
                }
                None => return Err(EmberError::User("an empty analyze request".into())),
            })
        };
        let result = answer.await.map_err(|e| spark_error(&e))?;
        Ok(sc::AnalyzePlanResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            result: Some(result),
        })
    }

    /// Ember's `EXPLAIN` of the plan: its logical and physical plans and its stages.
    async fn explain(
        &self,
        plan: LogicalPlan,
        verbose: bool,
        owner: Option<String>,
    ) -> Result<String> {
        let explain = LogicalPlanBuilder::from(plan)
            .explain(verbose, false)?
            .build()?;
        let query = Query::Plan {
            plan: Arc::new(explain),
            description: "EXPLAIN (a PySpark DataFrame)".into(),
            replace: false,
        };
        let job = self.scheduler.submit(query, Vec::new(), owner).await?;
        let status = self
            .scheduler
            .job_status(&job, std::time::Duration::from_secs(30))
            .await?;
        let _ = self.scheduler.release(&job);
        if status.state != JobState::Succeeded || status.inline_result.is_empty() {
            return Err(EmberError::Internal("EXPLAIN answered no plan".into()));
        }
        let mut out = String::new();
        for batch in batches_from_ipc_stream(&status.inline_result)? {
            let (Some(kind), Some(text)) = (
                batch.column(0).as_string_opt::<i32>(),
                batch.column(1).as_string_opt::<i32>(),
            ) else {
                continue;
            };
            for row in 0..batch.num_rows() {
                if kind.is_valid(row) && text.is_valid(row) {
                    out.push_str(&format!(
                        "== {} ==\n{}\n\n",
                        kind.value(row),
                        text.value(row)
                    ));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn configure(
        &self,
        request: Request<sc::ConfigRequest>,
    ) -> std::result::Result<sc::ConfigResponse, Status> {
        let (session, request, _) = self.session_of(request)?;
        let mut config = session.config.lock();
        let get = |config: &std::collections::BTreeMap<String, String>, key: &str| {
            config.get(key).cloned().or_else(|| {
                DEFAULTS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            })
        };
        let pair = |key: &str, value: Option<String>| sc::KeyValue {
            key: key.to_string(),
            value,
        };
        let mut pairs = Vec::new();
        let mut warnings = Vec::new();
        match request.operation.and_then(|o| o.op_type) {
            Some(ConfigOp::Set(set)) => {
                for kv in set.pairs {
                    if kv.key.starts_with("datafusion.") || kv.key.starts_with("ember.") {
                        // Checked here, so that a typo fails at set() rather than in a job.
                        let mut options = datafusion::config::ConfigOptions::new();
                        if kv.key.starts_with("datafusion.")
                            && let Err(e) =
                                options.set(&kv.key, kv.value.as_deref().unwrap_or_default())
                        {
                            return Err(spark_error(&EmberError::User(format!(
                                "setting {}: {e}",
                                kv.key
                            ))));
                        }
                    } else if !kv.key.starts_with("spark.") {
                        warnings.push(format!("{} is kept but means nothing to Ember", kv.key));
                    }
                    match kv.value {
                        Some(v) => config.insert(kv.key, v),
                        None => config.remove(&kv.key),
                    };
                }
            }
            Some(ConfigOp::Get(g)) => {
                for key in g.keys {
                    match get(&config, &key) {
                        Some(v) => pairs.push(pair(&key, Some(v))),
                        None => {
                            return Err(spark_error(&EmberError::User(format!(
                                "[SQL_CONF_NOT_FOUND] the setting {key} is not set"
                            ))));
                        }
                    }
                }
            }
            Some(ConfigOp::GetWithDefault(g)) => {
                for kv in g.pairs {
                    let value = config.get(&kv.key).cloned().or(kv.value);
                    pairs.push(pair(&kv.key, value));
                }
            }
            Some(ConfigOp::GetOption(g)) => {
                for key in g.keys {
                    let value = get(&config, &key);
                    pairs.push(pair(&key, value));
                }
            }
            Some(ConfigOp::GetAll(g)) => {
                let prefix = g.prefix.unwrap_or_default();
                let mut all: std::collections::BTreeMap<String, String> = DEFAULTS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                all.extend(config.clone());
                for (k, v) in all.into_iter().filter(|(k, _)| k.starts_with(&prefix)) {
                    pairs.push(pair(&k, Some(v)));
                }
            }
            Some(ConfigOp::Unset(u)) => {
                for key in u.keys {
                    config.remove(&key);
                }
            }
            Some(ConfigOp::IsModifiable(m)) => {
                for key in m.keys {
                    pairs.push(pair(&key, Some("true".into())));
                }
            }
            None => {
                return Err(Status::invalid_argument(
                    "a config request without an operation",
                ));
            }
        }
        Ok(sc::ConfigResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            pairs,
            warnings,
        })
    }
}

/// `df.printSchema()`'s tree, as Spark prints it.
fn tree_string(plan: &LogicalPlan) -> String {
    let mut out = String::from("root\n");
    for field in plan.schema().fields() {
        out.push_str(&format!(
            " |-- {}: {} (nullable = {})\n",
            field.name(),
            types::type_name(&types::client_type(field.data_type())).to_lowercase(),
            field.is_nullable()
        ));
    }
    out
}
