//! Starts myagent-control-plane (binary or in-process) on port 0 against a chosen store.
