//! Test harness: builders that start the real binaries and servers on port 0.
