//! The `myagent.v1` gRPC contract: generated messages, clients and servers, plus the encoded
//! file descriptor set for server reflection.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("myagent.v1");

    /// Encoded `FileDescriptorSet` of every `myagent.v1` file, for tonic-reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("myagent_descriptor");
}

pub use prost_types::Timestamp;
