//! Physical plans on the wire: datafusion-proto for DataFusion's operators, plus this codec for
//! Ember's own (`ShuffleWriterExec`, `ShuffleReaderExec`).

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::from_proto::parse_protobuf_partitioning;
use datafusion_proto::physical_plan::to_proto::serialize_partitioning;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf;
use ember_core::shuffle::{
    ShuffleOutput, ShuffleReaderExec, ShuffleWriterExec, schema_from_bytes, schema_to_bytes,
};
use ember_core::write::StagedWriteExec;
use prost::Message;

use crate::convert::{locations_from_proto, locations_to_proto};
use crate::pb;

/// Encodes a physical plan (which may hold Ember's operators) to bytes.
pub fn encode_plan(plan: Arc<dyn ExecutionPlan>) -> Result<Bytes> {
    physical_plan_to_bytes_with_extension_codec(plan, &EmberPhysicalCodec)
}

/// Decodes a plan made by [`encode_plan`], resolving functions and formats through `ctx`.
pub fn decode_plan(bytes: &[u8], ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    physical_plan_from_bytes_with_extension_codec(bytes, ctx, &EmberPhysicalCodec)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EmberPhysicalCodec;

fn wire_err(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("malformed Ember plan node: {e}"))
}

impl EmberPhysicalCodec {
    fn encode_partitioning(
        &self,
        partitioning: &Partitioning,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Bytes> {
        let proto = serialize_partitioning(partitioning, self, proto_converter)?;
        Ok(proto.encode_to_vec().into())
    }

    fn decode_partitioning(
        &self,
        bytes: &[u8],
        ctx: &TaskContext,
        schema: &Schema,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Partitioning> {
        let proto = protobuf::Partitioning::decode(bytes).map_err(wire_err)?;
        let decode_ctx = PhysicalPlanDecodeContext::new(ctx, self);
        parse_protobuf_partitioning(Some(&proto), &decode_ctx, schema, proto_converter)?
            .ok_or_else(|| wire_err("missing partitioning"))
    }
}

impl PhysicalExtensionCodec for EmberPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node = pb::EmberPlanNode::decode(buf).map_err(wire_err)?;
        match node.node.ok_or_else(|| wire_err("empty node"))? {
            pb::ember_plan_node::Node::ShuffleWriter(w) => {
                let [input] = inputs else {
                    return Err(wire_err("ShuffleWriterExec needs one input"));
                };
                let output = match w.output.ok_or_else(|| wire_err("writer without output"))? {
                    pb::shuffle_writer_node::Output::PassThrough(0) => {
                        return Err(wire_err("writer with zero output partitions"));
                    }
                    pb::shuffle_writer_node::Output::PassThrough(n) => {
                        ShuffleOutput::PassThrough(n as usize)
                    }
                    pb::shuffle_writer_node::Output::Hash(bytes) => ShuffleOutput::Hash(
                        self.decode_partitioning(&bytes, ctx, &input.schema(), proto_converter)?,
                    ),
                };
                Ok(Arc::new(ShuffleWriterExec::new(
                    w.job_id,
                    w.stage_id,
                    Arc::clone(input),
                    output,
                )))
            }
            pb::ember_plan_node::Node::ShuffleReader(r) => {
                let schema = Arc::new(schema_from_bytes(&r.schema).map_err(wire_err)?);
                let mut locations = locations_from_proto(r.locations).map_err(wire_err)?;
                if locations.is_empty() {
                    locations = vec![Vec::new(); r.partitions as usize];
                }
                if locations.len() != r.partitions as usize {
                    return Err(wire_err("reader locations do not match its partitions"));
                }
                let partitioning = if r.hash_partitioning.is_empty() {
                    Partitioning::UnknownPartitioning(locations.len())
                } else {
                    self.decode_partitioning(&r.hash_partitioning, ctx, &schema, proto_converter)?
                };
                Ok(Arc::new(ShuffleReaderExec::with_locations(
                    r.stage_id,
                    schema,
                    partitioning,
                    locations,
                )))
            }
            pb::ember_plan_node::Node::StagedWrite(w) => {
                let [sink] = inputs else {
                    return Err(wire_err("StagedWriteExec needs one input"));
                };
                Ok(Arc::new(StagedWriteExec::try_new(
                    Arc::clone(sink),
                    w.staging_root,
                    (!w.single_file.is_empty()).then_some(w.single_file),
                )?))
            }
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let node = if let Some(w) = node.downcast_ref::<ShuffleWriterExec>() {
            let output = match w.output() {
                ShuffleOutput::PassThrough(n) => {
                    pb::shuffle_writer_node::Output::PassThrough(*n as u32)
                }
                ShuffleOutput::Hash(p) => pb::shuffle_writer_node::Output::Hash(
                    self.encode_partitioning(p, proto_converter)?,
                ),
            };
            pb::ember_plan_node::Node::ShuffleWriter(pb::ShuffleWriterNode {
                job_id: w.job_id().to_string(),
                stage_id: w.stage_id(),
                output: Some(output),
            })
        } else if let Some(r) = node.downcast_ref::<ShuffleReaderExec>() {
            pb::ember_plan_node::Node::ShuffleReader(pb::ShuffleReaderNode {
                stage_id: r.stage_id(),
                schema: schema_to_bytes(&r.schema()),
                partitions: r.partitions() as u32,
                locations: locations_to_proto(r.locations()),
                hash_partitioning: match r.partitioning() {
                    p @ Partitioning::Hash(..) => self.encode_partitioning(p, proto_converter)?,
                    _ => Bytes::new(),
                },
            })
        } else if let Some(w) = node.downcast_ref::<StagedWriteExec>() {
            pb::ember_plan_node::Node::StagedWrite(pb::StagedWriteNode {
                staging_root: w.staging_root().to_string(),
                single_file: w.single_file().unwrap_or_default().to_string(),
            })
        } else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot be sent to executors",
                node.name()
            )));
        };
        pb::EmberPlanNode { node: Some(node) }
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("encoding plan node: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::{collect_partitioned, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use ember_core::shuffle::ShuffleReaderExec;

    use super::*;

    /// Plans survive encode/decode: same display, and each partition reads the same rows.
    #[tokio::test]
    async fn scans_round_trip_with_their_file_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        let path = dir.path().join("t.parquet");
        ctx.sql("select value as v, value % 7 as k from generate_series(1, 100000)")
            .await
            .unwrap()
            .write_parquet(
                path.to_str().unwrap(),
                Default::default(),
                Some(datafusion::config::TableParquetOptions {
                    global: datafusion::config::ParquetOptions {
                        max_row_group_size: 10000,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        ctx.sql(&format!(
            "create external table t stored as parquet location '{}'",
            path.display()
        ))
        .await
        .unwrap();
        let plan = ctx
            .sql("select k, v from t where v > 10")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let decoded =
            decode_plan(&encode_plan(Arc::clone(&plan)).unwrap(), &ctx.task_ctx()).unwrap();
        assert_eq!(
            displayable(decoded.as_ref()).indent(true).to_string(),
            displayable(plan.as_ref()).indent(true).to_string()
        );
        let count = |parts: Vec<Vec<datafusion::arrow::array::RecordBatch>>| -> Vec<usize> {
            parts
                .iter()
                .map(|p| p.iter().map(|b| b.num_rows()).sum())
                .collect()
        };
        let original = count(collect_partitioned(plan, ctx.task_ctx()).await.unwrap());
        let round_tripped = count(collect_partitioned(decoded, ctx.task_ctx()).await.unwrap());
        assert_eq!(original, round_tripped);
        assert_eq!(original.iter().sum::<usize>(), 99990);
    }

    #[test]
    fn readers_round_trip_and_unknown_nodes_are_refused() {
        let schema = Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            "a",
            datafusion::arrow::datatypes::DataType::Int64,
            true,
        )]));
        let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::new(
            3,
            Arc::clone(&schema),
            Partitioning::UnknownPartitioning(2),
        ));
        let ctx = SessionContext::new();
        let back =
            decode_plan(&encode_plan(Arc::clone(&reader)).unwrap(), &ctx.task_ctx()).unwrap();
        let back = back.downcast_ref::<ShuffleReaderExec>().unwrap();
        assert_eq!(back.stage_id(), 3);
        assert_eq!(back.partitions(), 2);
        assert_eq!(back.schema(), schema);
        assert!(decode_plan(b"\xff\xff garbage", &ctx.task_ctx()).is_err());
    }
}
