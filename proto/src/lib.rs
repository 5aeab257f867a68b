//! Ember's wire format: the gRPC services generated from `proto/ember.proto`, the one place that
//! converts between wire messages and `ember-core` domain types, the physical plan codec for
//! Ember's own operators, and the mapping of errors to and from `tonic::Status`.

pub mod codec;
pub mod convert;
pub mod records;
pub mod status;
pub mod wire;

/// Generated prost/tonic code. Outside this crate, use it only in service modules.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("ember.v1");
}

pub use codec::{EmberPhysicalCodec, decode_plan, encode_plan};
pub use status::{error_from_status, status_from_error};
