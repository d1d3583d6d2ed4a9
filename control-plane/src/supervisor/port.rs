//! `PORT_IN_USE` checks before a launch: another registered service owns host:port, or
//! something already listens there.

use std::net::{TcpListener, ToSocketAddrs};

use crate::model::{DesiredState, ServiceDef};

/// Loopback spellings that name the same interface.
fn canonical_host(host: &str) -> String {
    match host.trim_matches(['[', ']']).to_ascii_lowercase().as_str() {
        "localhost" | "127.0.0.1" | "::1" | "0.0.0.0" | "::" | "" => "local".to_string(),
        other => other.to_string(),
    }
}

pub fn same_endpoint(a_host: &str, a_port: u16, b_host: &str, b_port: u16) -> bool {
    a_port == b_port && canonical_host(a_host) == canonical_host(b_host)
}

/// Another service (from `others`, already filtered to those that hold or will hold their
/// port) on the same host:port.
pub fn owner<'a>(
    me: &ServiceDef,
    others: impl IntoIterator<Item = &'a ServiceDef>,
) -> Option<&'a ServiceDef> {
    others
        .into_iter()
        .find(|o| o.id != me.id && same_endpoint(&me.host, me.port, &o.host, o.port))
}

/// Whether `def` wants to run (used for conflicts seen from the store).
pub fn wants_port(def: &ServiceDef) -> bool {
    def.desired == DesiredState::Running
}

/// Whether some process already listens on `host:port` here: binding it fails with
/// `AddrInUse`. (std sets SO_REUSEADDR, so sockets in TIME_WAIT do not count.)
pub fn listening(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host.trim_matches(['[', ']']), port).to_socket_addrs() else {
        return false;
    };
    addrs.into_iter().any(
        |a| matches!(TcpListener::bind(a), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_are_one_host() {
        assert!(same_endpoint("localhost", 80, "127.0.0.1", 80));
        assert!(!same_endpoint("localhost", 80, "127.0.0.1", 81));
        assert!(!same_endpoint("10.0.0.1", 80, "10.0.0.2", 80));
    }

    #[test]
    fn detects_a_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening("127.0.0.1", port));
        drop(l);
        assert!(!listening("127.0.0.1", port));
    }
}
