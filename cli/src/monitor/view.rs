//! Drawing the monitor screen from the `Model`.

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use myagent_proto::v1 as pb;

use super::data::Model;
use crate::timeparse::{human_duration, short};

pub fn draw(f: &mut Frame, m: &Model) {
    let detail = m.service.is_some();
    let [title, overview, body, extra, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(if detail { 14 } else { 0 }),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let refreshed = m
        .last_ok
        .map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "never".into());
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("myagent monitor", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  server {}  every {}s  refreshed {}",
                m.server, m.interval, refreshed
            )),
        ])),
        title,
    );

    f.render_widget(
        Paragraph::new(overview_lines(m))
            .block(Block::new().borders(Borders::TOP | Borders::BOTTOM)),
        overview,
    );

    f.render_widget(services_table(m), body);
    if detail {
        f.render_widget(detail_panel(m), extra);
    }

    let status_line = match &m.error {
        Some(e) => Line::from(Span::styled(
            format!("error: {e}"),
            Style::new().fg(Color::Red),
        )),
        None => Line::from(Span::styled(
            "q / Esc / Ctrl-C: quit",
            Style::new().fg(Color::DarkGray),
        )),
    };
    f.render_widget(Paragraph::new(status_line), status);
}

fn overview_lines(m: &Model) -> Vec<Line<'static>> {
    vec![Line::from(overview_text(m))]
}

/// The overview in one line (the screen's and the plain mode's).
pub fn overview_text(m: &Model) -> String {
    let Some(o) = &m.data.overview else {
        let running = m
            .data
            .services
            .iter()
            .filter(|s| s.status == "running")
            .count();
        return format!(
            "services {} total, {} running  (overview unavailable)",
            m.data.services.len(),
            running
        );
    };
    let s = o.services.unwrap_or_default();
    let c = o.connections.unwrap_or_default();
    let se = o.sessions.unwrap_or_default();
    let p = o.performance.unwrap_or_default();
    let r = o.resources.unwrap_or_default();
    format!(
        "services {} total, {} running, {} stopped, {} error   connections {} active (peak today {})   \
         sessions {} active   {:.1} msgs/min   avg response {:.1} ms   memory {:.1} MB   cpu {:.1} %",
        s.total,
        s.running,
        s.stopped,
        s.error,
        c.active,
        c.peak_today,
        se.active,
        p.throughput_per_minute,
        p.avg_response_time_ms,
        r.total_memory_mb,
        r.total_cpu_percent
    )
}

fn status_style(status: &str) -> Style {
    match status {
        "running" | "healthy" => Style::new().fg(Color::Green),
        "starting" | "stopping" | "unknown" => Style::new().fg(Color::Yellow),
        "error" | "unhealthy" => Style::new().fg(Color::Red),
        _ => Style::new(),
    }
}

/// The services table's columns, and each service's cells (the screen's and the plain mode's).
pub const COLUMNS: [&str; 11] = [
    "NAME", "STATUS", "HEALTH", "CONNS", "SESSIONS", "MSG/S", "CPU %", "MEM MB", "UPTIME",
    "RESTARTS", "ENDPOINT",
];

pub fn service_cells(m: &Model, s: &pb::Service) -> [String; 11] {
    let st = s.stats.unwrap_or_default();
    let health = s
        .health
        .as_ref()
        .map(|h| h.status.clone())
        .unwrap_or_else(|| "-".into());
    let rate = m
        .rates
        .get(&s.service_id)
        .map(|r| format!("{r:.1}"))
        .unwrap_or_else(|| "-".into());
    [
        s.name.clone(),
        s.status.clone(),
        health,
        st.active_connections.to_string(),
        st.active_sessions.to_string(),
        rate,
        format!("{:.1}", st.cpu_usage_percent),
        format!("{:.1}", st.memory_usage_mb),
        if s.status == "running" {
            human_duration(st.uptime_seconds)
        } else {
            "-".into()
        },
        st.restart_count.to_string(),
        s.endpoint.clone(),
    ]
}

fn services_table(m: &Model) -> Table<'static> {
    let header = Row::new(COLUMNS).style(Style::new().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = m
        .data
        .services
        .iter()
        .map(|s| {
            Row::new(
                service_cells(m, s)
                    .into_iter()
                    .enumerate()
                    .map(|(i, cell)| {
                        // Status and health in colour.
                        let style = if i == 1 || i == 2 {
                            status_style(&cell)
                        } else {
                            Style::new()
                        };
                        ratatui::text::Text::styled(cell, style)
                    }),
            )
        })
        .collect();
    let empty = rows.is_empty();
    let title = if empty && m.last_ok.is_some() {
        " Services (none registered) ".to_string()
    } else {
        format!(" Services ({}) ", m.data.services.len())
    };
    Table::new(
        rows,
        [
            Constraint::Min(14),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Min(16),
        ],
    )
    .header(header)
    .block(Block::bordered().title(title))
}

fn detail_panel(m: &Model) -> Paragraph<'static> {
    let lines: Vec<Line> = detail_lines(m)
        .into_iter()
        .map(|l| {
            if l.starts_with("last error: ") {
                Line::from(Span::styled(l, Style::new().fg(Color::Red)))
            } else {
                Line::from(l)
            }
        })
        .collect();
    Paragraph::new(lines).block(Block::bordered().title(" Details and recent logs "))
}

/// With `--service`: that service's details, last error and recent log lines (the screen's
/// panel and the plain mode's lines).
pub fn detail_lines(m: &Model) -> Vec<String> {
    let mut lines = Vec::new();
    let Some(s) = m.data.services.first() else {
        return lines;
    };
    let st = s.stats.unwrap_or_default();
    let h = s.health.clone().unwrap_or_default();
    let rt = s.runtime.clone().unwrap_or_default();
    lines.push(format!(
        "id {}  pid {}  tags {}  connections {} total / {} peak  sessions {} total / {} completed",
        s.service_id,
        if rt.pid > 0 {
            rt.pid.to_string()
        } else {
            "-".into()
        },
        s.tags.join(","),
        st.total_connections,
        st.peak_connections,
        st.total_sessions,
        st.completed_sessions
    ));
    lines.push(format!(
        "health {} (last check {}, {:.1} ms, {} consecutive failures{})  errors {} (rate {:.4})",
        h.status,
        h.last_check
            .as_ref()
            .map(short)
            .unwrap_or_else(|| "-".into()),
        h.response_time_ms,
        h.consecutive_failures,
        if h.flapping { ", flapping" } else { "" },
        st.error_count,
        st.error_rate
    ));
    if !rt.last_error.is_empty() {
        lines.push(format!("last error: {}", rt.last_error));
    }
    for e in m.data.logs.iter().rev().take(9).rev() {
        lines.push(format!(
            "{} {:<5} {}",
            e.timestamp.as_ref().map(short).unwrap_or_default(),
            e.level.to_uppercase(),
            e.message
        ));
    }
    lines
}
