//! Data-plane config stream: versioned pushes to proxies, ACK/NACK, reports, commands, load.
