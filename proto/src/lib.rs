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

/// Spark Connect's protocol (package `spark.connect`, Apache Spark's), generated from the files
/// vendored in `proto/spark/connect/`. Outside this crate, use it only in the Spark Connect
/// service and its translation of plans.
#[allow(clippy::all)]
pub mod spark {
    tonic::include_proto!("spark.connect");

    /// `google.rpc.Status` and `google.rpc.ErrorInfo`: the details of an error that PySpark
    /// reads to raise the matching exception class.
    pub mod rpc {
        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct Status {
            #[prost(int32, tag = "1")]
            pub code: i32,
            #[prost(string, tag = "2")]
            pub message: ::prost::alloc::string::String,
            #[prost(message, repeated, tag = "3")]
            pub details: ::prost::alloc::vec::Vec<::prost_types::Any>,
        }

        #[derive(Clone, PartialEq, ::prost::Message)]
        pub struct ErrorInfo {
            #[prost(string, tag = "1")]
            pub reason: ::prost::alloc::string::String,
            #[prost(string, tag = "2")]
            pub domain: ::prost::alloc::string::String,
            #[prost(map = "string, string", tag = "3")]
            pub metadata: ::std::collections::HashMap<
                ::prost::alloc::string::String,
                ::prost::alloc::string::String,
            >,
        }
    }
}

pub use codec::{EmberPhysicalCodec, decode_plan, encode_plan};
pub use status::{error_from_status, status_from_error};
