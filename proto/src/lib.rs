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

/// Whether `id` may name a proxy node (`Hello.node_id`): 1-128 of `A-Z a-z 0-9 - _ . :`. It
/// is part of store keys (`nodes/{id}`, `connections/{id}/...`); the control plane refuses
/// other ids and the proxy refuses them at start-up.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ids() {
        for ok in ["p1", "host-1.example:8080", "a_b", &"x".repeat(128)] {
            assert!(super::valid_node_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!super::valid_node_id(bad), "{bad}");
        }
    }
}
