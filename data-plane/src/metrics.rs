//! Prometheus metrics of the proxy (prefix `myagent_proxy_`). The relay path only bumps
//! per-connection atomics; the reporter folds them into these counters every report interval.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    pub connections_rejected: IntCounterVec,
    pub messages: IntCounterVec,
    pub bytes: IntCounterVec,
    pub routing_failures: IntCounterVec,
    pub failovers: IntCounterVec,
    pub config_version: IntGauge,
    pub config_nacks: IntCounter,
    pub control_plane_connected: IntGauge,
    pub upstream_connect_seconds: Histogram,
    pub upstream_response_seconds: Histogram,
    pub sessions_known: IntGauge,
    pub worker_connections: IntGaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are constants: a failure is a programming error caught by the tests.
    match r {
        Ok(v) => v,
        Err(e) => panic!("metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let ic = |n: &str, h: &str| {
            let c = must(IntCounter::new(format!("myagent_proxy_{n}"), h));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let icv = |n: &str, h: &str, l: &[&str]| {
            let c = must(IntCounterVec::new(
                Opts::new(format!("myagent_proxy_{n}"), h),
                l,
            ));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let ig = |n: &str, h: &str| {
            let g = must(IntGauge::new(format!("myagent_proxy_{n}"), h));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let hist = |n: &str, h: &str| {
            let b = vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ];
            let x = must(Histogram::with_opts(
                HistogramOpts::new(format!("myagent_proxy_{n}"), h).buckets(b),
            ));
            must(registry.register(Box::new(x.clone())));
            x
        };
        Metrics {
            connections_active: ig(
                "connections_active",
                "Client WebSocket connections currently open.",
            ),
            connections_total: ic(
                "connections_total",
                "Client WebSocket connections accepted.",
            ),
            connections_rejected: icv(
                "connections_rejected_total",
                "Upgrade requests refused before the upgrade, by reason.",
                &["reason"],
            ),
            messages: icv(
                "messages_total",
                "WebSocket messages relayed, by direction.",
                &["direction"],
            ),
            bytes: icv(
                "bytes_total",
                "WebSocket payload bytes relayed, by direction.",
                &["direction"],
            ),
            routing_failures: icv(
                "routing_failures_total",
                "Connections that could not be routed, by error code.",
                &["code"],
            ),
            failovers: icv(
                "failovers_total",
                "Upstream switches of live connections, by reason.",
                &["reason"],
            ),
            config_version: ig(
                "config_version",
                "Version of the config snapshot in use (0 = none).",
            ),
            config_nacks: ic("config_nacks_total", "Config pushes rejected (NACKed)."),
            control_plane_connected: ig(
                "control_plane_connected",
                "1 while the config stream is up.",
            ),
            upstream_connect_seconds: hist(
                "upstream_connect_seconds",
                "Time to open an upstream WebSocket (TCP + handshake).",
            ),
            upstream_response_seconds: hist(
                "upstream_latency_seconds",
                "Time from a client message to the next agent message on the same connection.",
            ),
            sessions_known: ig("sessions_known", "Session bindings held by this proxy."),
            worker_connections: {
                let g = must(IntGaugeVec::new(
                    Opts::new(
                        "myagent_proxy_worker_connections",
                        "Client sockets open on each event-loop thread (accepted, not yet \
                         closed): what connections are spread over the threads by.",
                    ),
                    &["worker"],
                ));
                must(registry.register(Box::new(g.clone())));
                g
            },
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_every_family_with_prefix() {
        let m = super::Metrics::new();
        m.messages.with_label_values(&["client_to_agent"]).inc();
        m.routing_failures
            .with_label_values(&["ROUTING_FAILED"])
            .inc();
        m.failovers.with_label_values(&["upstream_closed"]).inc();
        m.connections_rejected
            .with_label_values(&["max_connections"])
            .inc();
        m.bytes.with_label_values(&["agent_to_client"]).inc();
        m.upstream_connect_seconds.observe(0.001);
        let text = m.render();
        for name in [
            "myagent_proxy_connections_active",
            "myagent_proxy_connections_total",
            "myagent_proxy_messages_total",
            "myagent_proxy_bytes_total",
            "myagent_proxy_routing_failures_total",
            "myagent_proxy_failovers_total",
            "myagent_proxy_config_version",
            "myagent_proxy_upstream_latency_seconds",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
