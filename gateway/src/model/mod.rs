//! The REST wire types (request bodies, query strings, responses) and their conversions from and
//! to `myagent.v1` messages. Shapes follow the seed field for field.

pub mod connections;
pub mod monitoring;
pub mod routing;
pub mod services;
