//! Runs the myagent-manager binary against a live stack and captures its output.
