//! The REST wire types (request bodies, query strings, responses) and their conversions from and
//! to `myagent.v1` messages. Shapes follow the seed field for field.

pub mod connections;
pub mod monitoring;
pub mod routing;
pub mod services;

/// A `limit` query parameter: absent means the default, 0 is out of range (as over gRPC, where
/// 0 stands for "unset", it would silently mean the default).
pub(crate) fn page_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match <Option<u32> as serde::Deserialize>::deserialize(d)? {
        Some(0) => Err(serde::de::Error::custom("must be at least 1")),
        other => Ok(other),
    }
}
