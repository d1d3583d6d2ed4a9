//! Test agents: small WebSocket agent servers (in-process echo agents and the example Python agents).
