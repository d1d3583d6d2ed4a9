//! Test harness: builders that start the real binaries and servers on port 0, read the bound
//! addresses back, and shut them down on `Drop` (STYLE 13–15).

pub mod agents;
pub mod bins;
pub mod cli;
pub mod control_plane;
pub mod etcd;
pub mod gate;
pub mod gateway;
pub mod proxy;
pub mod tls;
pub mod wait;
