//! Generates Ember's gRPC code from `proto/ember.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ember.proto");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/ember.proto"], &["proto"])?;
    Ok(())
}
