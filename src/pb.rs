//! Generated protobuf and tonic code for `citypark.v1`; only `grpc/` and clients use it.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

tonic::include_proto!("citypark.v1");

/// Encoded descriptor set of every citypark proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("citypark_descriptor");
