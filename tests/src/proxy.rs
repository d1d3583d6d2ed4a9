//! Starts myagent-proxy on port 0 against one or more control planes.
