//! Starts myagent-gateway on port 0 against a control plane.
