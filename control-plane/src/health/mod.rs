//! Health checker (leader only): WebSocket-handshake probes, thresholds, flap damping, history.
