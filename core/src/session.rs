//! DataFusion settings that distributed execution depends on.

use datafusion::prelude::SessionConfig;

/// Applies the settings that make a plan safe to cut into stages and run one partition per task.
///
/// - Join dynamic filters wait for every partition's build side inside one plan; a task runs one
///   partition of its own copy, so they would wait forever (or filter wrongly).
/// - File-stream work stealing lets an idle partition of a scan read its siblings' files; a task
///   runs one partition, which would then read the whole table.
/// - `information_schema` lets `SHOW TABLES` and `DESCRIBE` work on the scheduler.
pub fn distributed_session_config(config: SessionConfig) -> SessionConfig {
    config
        .with_information_schema(true)
        .set_bool(
            "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
            false,
        )
        .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false)
        .set_bool(
            "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
            false,
        )
        .set_bool(
            "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
            false,
        )
        .set_bool(
            "datafusion.execution.enable_file_stream_work_stealing",
            false,
        )
}
