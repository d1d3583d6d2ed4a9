//! `--output table` renderings of every command's answer.

use myagent_proto::v1 as pb;

use super::table::{or_dash, Fields, Table};
use crate::condition;
use crate::timeparse::{human_duration, rfc3339, short};

fn t(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref().map(short).unwrap_or_else(|| "-".into())
}

fn t_full(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref().and_then(rfc3339).unwrap_or_else(|| "-".into())
}

fn num(v: f64) -> String {
    format!("{v:.1}")
}

fn health_of(s: &pb::Service) -> String {
    s.health
        .as_ref()
        .map(|h| {
            if h.flapping {
                format!("{} (flapping)", h.status)
            } else {
                or_dash(&h.status)
            }
        })
        .unwrap_or_else(|| "-".into())
}

pub fn register(r: &pb::RegisterServiceResponse) -> String {
    let mut f = Fields::new(None);
    f.add("service_id", &r.service_id)
        .add("endpoint", &r.endpoint);
    format!("{}\n{}", r.message, f.render())
}

pub fn list(r: &pb::ListServicesResponse) -> String {
    let mut tbl = Table::new([
        "NAME",
        "STATUS",
        "HEALTH",
        "ENDPOINT",
        "TAGS",
        "CONNS",
        "SESSIONS",
        "UPTIME",
        "SERVICE_ID",
    ]);
    for s in &r.services {
        let st = s.stats.unwrap_or_default();
        tbl.row([
            s.name.clone(),
            s.status.clone(),
            health_of(s),
            s.endpoint.clone(),
            or_dash(&s.tags.join(",")),
            st.active_connections.to_string(),
            st.active_sessions.to_string(),
            if s.status == "running" {
                human_duration(st.uptime_seconds)
            } else {
                "-".into()
            },
            s.service_id.clone(),
        ]);
    }
    let shown = r.services.len();
    let mut out = if tbl.is_empty() {
        "No services.\n".to_string()
    } else {
        tbl.render()
    };
    if shown == 0 && r.offset > 0 {
        out.push_str(&format!("\nNone at --offset {} of {}\n", r.offset, r.total));
    } else if r.has_next || r.offset > 0 {
        let (first, last) = (r.offset as usize + 1, r.offset as usize + shown);
        out.push_str(&format!("\nShowing {first}-{last} of {}", r.total));
        if r.has_next {
            out.push_str(&format!(" (next: --offset {last})"));
        }
        out.push('\n');
    } else {
        out.push_str(&format!("\n{} service(s)\n", r.total));
    }
    out
}

pub fn service(s: &pb::Service) -> String {
    let mut out = String::new();
    let mut f = Fields::new(None);
    f.add("name", &s.name)
        .add("service_id", &s.service_id)
        .add("description", or_dash(&s.description))
        .add("status", &s.status)
        .add("endpoint", &s.endpoint)
        .add("host", &s.host)
        .add("port", s.port.to_string())
        .add("tags", or_dash(&s.tags.join(",")))
        .add(
            "agent",
            if s.agent_factory_path.is_empty() {
                "(external service)".to_string()
            } else {
                s.agent_factory_path.clone()
            },
        )
        .add("created_at", t_full(&s.created_at))
        .add("updated_at", t_full(&s.updated_at))
        .add("started_at", t_full(&s.started_at));
    out.push_str(&f.render());

    if let Some(c) = &s.config {
        let mut f = Fields::new(Some("Config"));
        let o = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        f.add("max_sessions", o(c.max_sessions.map(|v| v.to_string())))
            .add(
                "session_timeout",
                o(c.session_timeout.map(|v| format!("{v}s"))),
            )
            .add("auto_restart", o(c.auto_restart.map(|v| v.to_string())))
            .add(
                "health_check_enabled",
                o(c.health_check_enabled.map(|v| v.to_string())),
            )
            .add("proxy_metadata", o(c.proxy_metadata.map(|v| v.to_string())))
            .add("weight", o(c.weight.map(|v| v.to_string())));
        if let Some(wd) = c.working_dir.as_ref().filter(|w| !w.is_empty()) {
            f.add("working_dir", wd);
        }
        if let Some(a) = c.args.as_ref().filter(|a| !a.items.is_empty()) {
            f.add("args", a.items.join(" "));
        }
        if let Some(e) = c.env.as_ref().filter(|e| !e.entries.is_empty()) {
            let mut kv: Vec<_> = e.entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
            kv.sort();
            f.add("env", kv.join(" "));
        }
        f.add(
            "health_check",
            format!(
                "every {}s, timeout {}s, healthy after {}, unhealthy after {}, flap hold {} checks",
                o(c.health_check_interval.map(|v| v.to_string())),
                o(c.health_check_timeout.map(|v| v.to_string())),
                o(c.healthy_threshold.map(|v| v.to_string())),
                o(c.unhealthy_threshold.map(|v| v.to_string())),
                o(c.flap_stable_checks.map(|v| v.to_string())),
            ),
        )
        .add(
            "restart_policy",
            format!(
                "at most {} unstable restarts in {}s, startup timeout {}s, stop grace {}s, drain {}s",
                o(c.max_restarts.map(|v| v.to_string())),
                o(c.restart_window.map(|v| v.to_string())),
                o(c.startup_timeout.map(|v| v.to_string())),
                o(c.stop_grace_period.map(|v| v.to_string())),
                o(c.drain_timeout.map(|v| v.to_string())),
            ),
        );
        out.push('\n');
        out.push_str(&f.render());
    }

    if let Some(st) = &s.stats {
        let mut f = Fields::new(Some("Stats"));
        f.add(
            "connections",
            format!(
                "{} active, {} total, {} peak",
                st.active_connections, st.total_connections, st.peak_connections
            ),
        )
        .add(
            "sessions",
            format!(
                "{} active, {} total, {} completed, avg {}s",
                st.active_sessions,
                st.total_sessions,
                st.completed_sessions,
                num(st.avg_session_duration)
            ),
        )
        .add("messages_total", st.messages_total.to_string())
        .add("memory_usage_mb", num(st.memory_usage_mb))
        .add("cpu_usage_percent", num(st.cpu_usage_percent))
        .add(
            "errors",
            format!("{} (rate {:.4})", st.error_count, st.error_rate),
        )
        .add("uptime", human_duration(st.uptime_seconds))
        .add("restart_count", st.restart_count.to_string());
        out.push('\n');
        out.push_str(&f.render());
    }

    if let Some(h) = &s.health {
        let mut f = Fields::new(Some("Health"));
        f.add("status", or_dash(&h.status))
            .add("last_check", t_full(&h.last_check))
            .add("response_time_ms", num(h.response_time_ms))
            .add("consecutive_failures", h.consecutive_failures.to_string())
            .add("flapping", h.flapping.to_string());
        if !h.message.is_empty() {
            f.add("message", &h.message);
        }
        out.push('\n');
        out.push_str(&f.render());
    }

    if let Some(r) = &s.runtime {
        let mut f = Fields::new(Some("Runtime"));
        f.add("managed", r.managed.to_string())
            .add(
                "pid",
                if r.pid > 0 {
                    r.pid.to_string()
                } else {
                    "-".into()
                },
            )
            .add("command", or_dash(&r.command.join(" ")))
            .add("restart_count", r.restart_count.to_string())
            .add(
                "next_restart_in",
                format!("{}s", num(r.next_restart_in_seconds)),
            )
            .add(
                "last_exit",
                match &r.last_exit_at {
                    Some(at) => format!("code {} at {}", r.last_exit_code, t_full(&Some(*at))),
                    None => "-".into(),
                },
            )
            .add("last_error", or_dash(&r.last_error))
            .add("supervised_by", or_dash(&r.leader));
        out.push('\n');
        out.push_str(&f.render());
    }

    if let Some(sy) = &s.sync {
        out.push_str(&format!(
            "\nProxy sync: config version {}, {}\n",
            sy.config_version,
            if sy.in_sync {
                "all proxies in sync"
            } else {
                "NOT in sync"
            }
        ));
        if !sy.proxies.is_empty() {
            let mut tbl = Table::new(["  NODE", "APPLIED_VERSION", "IN_SYNC", "NACK_ERROR"]);
            for p in &sy.proxies {
                tbl.row([
                    format!("  {}", p.node_id),
                    p.applied_version.to_string(),
                    p.in_sync.to_string(),
                    or_dash(&p.nack_error),
                ]);
            }
            out.push_str(&tbl.render());
        }
    }
    out
}

pub fn lifecycle(r: &pb::LifecycleResponse) -> String {
    format!(
        "{} (service {}, status {})\n",
        r.message, r.service_id, r.status
    )
}

pub fn overview(o: &pb::Overview) -> String {
    let s = o.services.unwrap_or_default();
    let c = o.connections.unwrap_or_default();
    let se = o.sessions.unwrap_or_default();
    let p = o.performance.unwrap_or_default();
    let r = o.resources.unwrap_or_default();
    let mut f = Fields::new(None);
    f.add(
        "services",
        format!(
            "{} total, {} running, {} stopped, {} error",
            s.total, s.running, s.stopped, s.error
        ),
    )
    .add(
        "connections",
        format!(
            "{} active, {} total, {} peak today",
            c.active, c.total, c.peak_today
        ),
    )
    .add(
        "sessions",
        format!(
            "{} active, {} today, {} completed today",
            se.active, se.total_today, se.completed_today
        ),
    )
    .add(
        "avg_response_time",
        format!("{} ms", num(p.avg_response_time_ms)),
    )
    .add(
        "throughput",
        format!("{} msgs/min", num(p.throughput_per_minute)),
    )
    .add("error_rate", format!("{:.4}", p.error_rate))
    .add("memory", format!("{} MB", num(r.total_memory_mb)))
    .add("cpu", format!("{} %", num(r.total_cpu_percent)));
    f.render()
}

pub fn log_line(e: &pb::LogEntry) -> String {
    format!(
        "{} {:<5} {:<7} {}",
        t_full(&e.timestamp),
        e.level.to_uppercase(),
        e.source,
        e.message
    )
}

pub fn logs(r: &pb::GetLogsResponse) -> String {
    if r.logs.is_empty() {
        return "No log lines.\n".into();
    }
    let mut out: String = r.logs.iter().map(|e| log_line(e) + "\n").collect();
    if (r.logs.len() as u64) < r.total {
        out.push_str(&format!(
            "({} of {} lines; use --limit for more)\n",
            r.logs.len(),
            r.total
        ));
    }
    out
}

pub fn health_status(h: &pb::HealthStatus) -> String {
    let mut f = Fields::new(None);
    f.add("service_id", &h.service_id)
        .add("status", or_dash(&h.status))
        .add("last_check", t_full(&h.last_check))
        .add("response_time_ms", num(h.response_time_ms))
        .add("consecutive_failures", h.consecutive_failures.to_string())
        .add("flapping", h.flapping.to_string())
        .add("message", or_dash(&h.message));
    f.render()
}

pub fn health_history(h: &pb::HealthHistory) -> String {
    if h.history.is_empty() {
        return format!("No health checks recorded for {}.\n", h.service_id);
    }
    let mut tbl = Table::new(["TIMESTAMP", "STATUS", "RESPONSE_MS", "TRANSITION", "ERROR"]);
    for r in &h.history {
        tbl.row([
            t_full(&r.timestamp),
            r.status.clone(),
            num(r.response_time_ms),
            if r.transition {
                "yes".into()
            } else {
                String::new()
            },
            or_dash(&r.error),
        ]);
    }
    format!(
        "{}\n{} of {} check(s), newest first\n",
        tbl.render(),
        h.history.len(),
        h.total
    )
}

pub fn connections(r: &pb::ListConnectionsResponse) -> String {
    if r.connections.is_empty() {
        return "No connections.\n".into();
    }
    let mut tbl = Table::new([
        "CONNECTION_ID",
        "SERVICE",
        "STATUS",
        "CLIENT_IP",
        "SESSION_ID",
        "NODE",
        "CONNECTED_AT",
        "LAST_ACTIVITY",
        "MSGS",
        "BYTES_IN",
        "BYTES_OUT",
    ]);
    for c in &r.connections {
        tbl.row([
            c.connection_id.clone(),
            if c.target_service.is_empty() {
                c.target_service_id.clone()
            } else {
                c.target_service.clone()
            },
            c.status.clone(),
            c.client_ip.clone(),
            or_dash(&c.session_id),
            or_dash(&c.node_id),
            t(&c.connected_at),
            t(&c.last_activity),
            c.message_count.to_string(),
            c.bytes_received.to_string(),
            c.bytes_sent.to_string(),
        ]);
    }
    format!(
        "{}\n{} of {} connection(s)\n",
        tbl.render(),
        r.connections.len(),
        r.total
    )
}

pub fn disconnect(r: &pb::DisconnectResponse) -> String {
    // The message names the connection already.
    format!("{}\n", r.message)
}

pub fn notification(r: &pb::SendNotificationResponse) -> String {
    format!("Notification delivered to {} connection(s)\n", r.delivered)
}

pub fn rule(r: &pb::RoutingRule) -> String {
    let mut f = Fields::new(None);
    f.add("name", &r.name)
        .add("rule_id", &r.rule_id)
        .add("description", or_dash(&r.description))
        .add("priority", r.priority.to_string())
        .add("enabled", r.enabled.to_string())
        .add("target_strategy", &r.target_strategy)
        .add("target_tags", or_dash(&r.target_tags.join(",")))
        .add("hash_key", or_dash(&r.hash_key))
        .add("created_at", t_full(&r.created_at))
        .add("updated_at", t_full(&r.updated_at));
    if r.conditions.is_empty() {
        f.add("conditions", "(none: matches every connection)");
    }
    for (i, c) in r.conditions.iter().enumerate() {
        f.add(if i == 0 { "conditions" } else { "" }, condition::render(c));
    }
    f.render()
}

pub fn rules(r: &pb::ListRulesResponse) -> String {
    if r.rules.is_empty() {
        return "No routing rules.\n".into();
    }
    let mut tbl = Table::new([
        "NAME",
        "PRIORITY",
        "ENABLED",
        "STRATEGY",
        "TARGET_TAGS",
        "CONDITIONS",
        "RULE_ID",
    ]);
    for x in &r.rules {
        tbl.row([
            x.name.clone(),
            x.priority.to_string(),
            x.enabled.to_string(),
            x.target_strategy.clone(),
            or_dash(&x.target_tags.join(",")),
            or_dash(
                &x.conditions
                    .iter()
                    .map(condition::render)
                    .collect::<Vec<_>>()
                    .join(" && "),
            ),
            x.rule_id.clone(),
        ]);
    }
    format!("{}\n{} rule(s)\n", tbl.render(), r.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<prost_types::Timestamp> {
        crate::timeparse::parse_since(s).ok()
    }

    fn weather() -> pb::Service {
        pb::Service {
            service_id: "0b6c".into(),
            name: "weather-agent".into(),
            host: "localhost".into(),
            port: 8081,
            endpoint: "ws://localhost:8081".into(),
            status: "running".into(),
            tags: vec!["weather".into(), "information".into()],
            created_at: ts("2024-01-01T10:00:00Z"),
            started_at: ts("2024-01-01T10:01:00Z"),
            stats: Some(pb::ServiceStats {
                active_connections: 12,
                active_sessions: 8,
                uptime_seconds: 3600,
                ..Default::default()
            }),
            health: Some(pb::HealthSummary {
                status: "healthy".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn list_snapshot() {
        let ext = pb::Service {
            service_id: "9f1d".into(),
            name: "ext".into(),
            endpoint: "ws://10.0.0.2:9000".into(),
            status: "stopped".into(),
            ..Default::default()
        };
        let r = pb::ListServicesResponse {
            services: vec![weather(), ext],
            total: 2,
            has_next: false,
            limit: 100,
            offset: 0,
        };
        assert_eq!(
            list(&r),
            "\
NAME           STATUS   HEALTH   ENDPOINT             TAGS                 CONNS  SESSIONS  UPTIME  SERVICE_ID
weather-agent  running  healthy  ws://localhost:8081  weather,information  12     8         1h 0m   0b6c
ext            stopped  -        ws://10.0.0.2:9000   -                    0      0         -       9f1d

2 service(s)
"
        );
    }

    #[test]
    fn list_paging_hint() {
        let r = pb::ListServicesResponse {
            services: vec![weather()],
            total: 3,
            has_next: true,
            limit: 1,
            offset: 1,
        };
        assert!(
            list(&r).ends_with("\nShowing 2-2 of 3 (next: --offset 2)\n"),
            "{}",
            list(&r)
        );
        // The last page has no next offset; a page past the end says so.
        let last = pb::ListServicesResponse {
            has_next: false,
            offset: 2,
            ..r.clone()
        };
        assert!(
            list(&last).ends_with("\nShowing 3-3 of 3\n"),
            "{}",
            list(&last)
        );
        let past = pb::ListServicesResponse {
            services: vec![],
            has_next: false,
            offset: 99,
            ..r
        };
        assert_eq!(list(&past), "No services.\n\nNone at --offset 99 of 3\n");
    }

    #[test]
    fn rules_snapshot() {
        let r = pb::ListRulesResponse {
            rules: vec![pb::RoutingRule {
                rule_id: "r1".into(),
                name: "VIP用户路由".into(),
                priority: 10,
                conditions: vec![pb::Condition {
                    field: "header.x-user-tier".into(),
                    operator: "equals".into(),
                    value: "vip".into(),
                    values: vec![],
                }],
                target_strategy: "least_connections".into(),
                target_tags: vec!["high-performance".into()],
                enabled: true,
                ..Default::default()
            }],
            total: 1,
        };
        assert_eq!(
            rules(&r),
            "\
NAME         PRIORITY  ENABLED  STRATEGY           TARGET_TAGS       CONDITIONS              RULE_ID
VIP用户路由  10        true     least_connections  high-performance  header.x-user-tier=vip  r1

1 rule(s)
"
        );
    }

    #[test]
    fn show_has_every_section() {
        let mut s = weather();
        s.config = Some(pb::ServiceConfig {
            max_sessions: Some(100),
            ..Default::default()
        });
        s.runtime = Some(pb::RuntimeInfo {
            managed: true,
            pid: 4242,
            ..Default::default()
        });
        s.sync = Some(pb::SyncStatus {
            config_version: 7,
            in_sync: false,
            proxies: vec![pb::ProxySyncState {
                node_id: "p1".into(),
                applied_version: 6,
                in_sync: false,
                nack_error: "bad rule".into(),
            }],
        });
        let out = service(&s);
        for piece in [
            "name:         weather-agent",
            "started_at:   2024-01-01T10:01:00Z",
            "Config:\n  max_sessions:",
            "Stats:\n  connections:",
            "Health:\n  status:",
            "Runtime:\n  managed:",
            "pid:",
            "4242",
            "Proxy sync: config version 7, NOT in sync",
            "bad rule",
        ] {
            assert!(out.contains(piece), "show lacks {piece:?}:\n{out}");
        }
    }
}
