//! HTTP admin port: /healthz, /readyz (store reachable), /metrics.
