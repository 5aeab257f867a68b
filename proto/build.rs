//! Generates Ember's gRPC code from `proto/ember.proto`, and the Spark Connect service's from
//! the protocol's files in `proto/spark/connect/` (vendored by `scripts/spark-connect-protos.py`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ember.proto");
    println!("cargo:rerun-if-changed=proto/spark");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/ember.proto"], &["proto"])?;
    tonic_prost_build::configure()
        // Arrow IPC payloads travel without a copy.
        .bytes(".spark.connect.ExecutePlanResponse.ArrowBatch")
        .compile_protos(
            &[
                "proto/spark/connect/base.proto",
                "proto/spark/connect/relations.proto",
                "proto/spark/connect/expressions.proto",
                "proto/spark/connect/commands.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
