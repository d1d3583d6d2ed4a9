//! `monitor` when stdout is not a terminal (a pipe, a file, a script): the same snapshot as
//! the screen, printed once per interval as text blocks, or as one JSON object per line with
//! `--output json`. Runs until Ctrl-C / SIGTERM, or for `--count` refreshes; a count run whose
//! last refresh failed exits with that error's status, so a script can tell.

use std::io::Write;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::data::{self, Model};
use super::view;
use crate::args::{GlobalArgs, MonitorArgs, OutputFormat};
use crate::error::{Error, Result};
use crate::output::{json as out_json, table::Table};

pub async fn run(global: &GlobalArgs, args: &MonitorArgs) -> Result<()> {
    let stop = CancellationToken::new();
    let (mut snap_rx, fetcher) = data::start(global, args, &stop);
    let mut model = Model::new(global.server.clone(), args.service.clone(), args.interval);
    let mut sigterm = super::terminate_signal()?;
    let mut printed = 0u64;
    let mut failed: Option<Error> = None;
    let result: Result<()> = async {
        loop {
            if args.count.is_some_and(|n| printed >= n) {
                return failed.take().map_or(Ok(()), Err);
            }
            tokio::select! {
                Some(snap) = snap_rx.recv() => {
                    let wall = snap.wall;
                    failed = model.apply(snap);
                    let text = match global.output {
                        OutputFormat::Json => format!("{}\n", snapshot_json(&model, wall)),
                        OutputFormat::Table => snapshot_text(&model, wall),
                    };
                    let mut out = std::io::stdout().lock();
                    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                        // The reader went away (`| head`): done.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        r => r?,
                    }
                    printed += 1;
                }
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
        }
    }
    .await;
    stop.cancel();
    let _ = fetcher.await;
    result
}

/// One refresh as text: a time-stamped overview line, the services table (or the error), with
/// `--service` that service's details and recent logs, and a blank line.
fn snapshot_text(m: &Model, at: chrono::DateTime<chrono::Utc>) -> String {
    let stamp = at.format("%Y-%m-%dT%H:%M:%SZ");
    if let Some(e) = &m.error {
        return format!("{stamp}  error: {e}\n\n");
    }
    let mut t = Table::new(view::COLUMNS);
    for s in &m.data.services {
        t.row(view::service_cells(m, s));
    }
    let mut out = format!("{stamp}  {}\n{}", view::overview_text(m), t.render());
    if m.service.is_some() {
        for line in view::detail_lines(m) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

/// One refresh as a JSON object: the REST shapes of `GET /stats/overview` and
/// `GET /services/{id}`, each service with its message rate over the last interval; with
/// `--service`, its recent log lines as `GET /logs/search` results.
fn snapshot_json(m: &Model, at: chrono::DateTime<chrono::Utc>) -> Value {
    let timestamp = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    if let Some(e) = &m.error {
        return json!({ "timestamp": timestamp, "error": e });
    }
    let services: Vec<Value> = m
        .data
        .services
        .iter()
        .map(|s| {
            let mut v = out_json::service(s);
            if let Value::Object(o) = &mut v {
                o.insert(
                    "messages_per_second".into(),
                    json!(m.rates.get(&s.service_id).copied()),
                );
            }
            v
        })
        .collect();
    let mut snap = json!({
        "timestamp": timestamp,
        "overview": m.data.overview.as_ref().map(out_json::overview),
        "services": services,
    });
    if m.service.is_some() {
        let logs: Vec<Value> = m.data.logs.iter().map(out_json::followed_entry).collect();
        snap["logs"] = Value::Array(logs);
    }
    snap
}
