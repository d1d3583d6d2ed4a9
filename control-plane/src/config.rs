//! Command-line flags and their MYAGENT_* environment twins.
