//! tonic handlers: convert protobuf <-> domain at the edge, call the domain layer, convert back.

pub mod connections;
pub mod health;
pub mod logs;
pub mod proxy;
