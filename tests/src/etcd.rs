//! Starts a real etcd process on free loopback ports with its own data dir; fails clearly when etcd is missing.
