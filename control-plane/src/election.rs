//! Leader election over the store: a lease-backed election/leader key.
