//! `status`, `logs` (incl. `--follow`), `health-check`.

use std::io::Write;

use myagent_proto::v1 as pb;

use crate::args::{HealthCheckArgs, LogsArgs, OutputFormat};
use crate::client::Clients;
use crate::error::{Error, Result};
use crate::output::{json, text, Rendered};

pub async fn status(c: &mut Clients) -> Result<Rendered> {
    let o = c
        .stats
        .get_overview(pb::GetOverviewRequest {})
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::overview(&o), text::overview(&o)))
}

/// `health-check`: the result, and `HEALTH_CHECK_FAILED` to exit with when the service failed
/// the check (seed §4.2).
pub async fn health_check(
    c: &mut Clients,
    a: &HealthCheckArgs,
) -> Result<(Rendered, Option<Error>)> {
    if a.history {
        let req = pb::GetHealthHistoryRequest {
            service: a.service.clone(),
            limit: a.limit.unwrap_or(0),
        };
        let h = c
            .health
            .get_health_history(req)
            .await
            .map_err(|s| c.err(s))?
            .into_inner();
        return Ok((
            Rendered::new(json::health_history(&h), text::health_history(&h)),
            None,
        ));
    }
    let req = pb::CheckHealthRequest {
        service: a.service.clone(),
    };
    let h = c
        .health
        .check_health(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    let failed = (h.status == "unhealthy").then(|| Error::HealthCheckFailed {
        service: a.service.clone(),
        message: h.message.clone(),
    });
    Ok((
        Rendered::new(json::health_status(&h), text::health_status(&h)),
        failed,
    ))
}

pub async fn logs(c: &mut Clients, a: &LogsArgs) -> Result<Rendered> {
    let req = pb::GetLogsRequest {
        service: a.service.clone(),
        level: a.level.clone().unwrap_or_default(),
        limit: a.limit.unwrap_or(0),
        since: a.since,
    };
    let r = c
        .logs
        .get_logs(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    Ok(Rendered::new(json::logs(&r), text::logs(&r)))
}

/// `logs --follow`: prints the last `--limit` lines (default 10), then each new line as the
/// server streams it, until Ctrl-C or the stream ends. JSON output is one object per line.
pub async fn follow(c: &mut Clients, a: &LogsArgs, format: OutputFormat) -> Result<()> {
    let req = pb::FollowLogsRequest {
        service: a.service.clone(),
        level: a.level.clone().unwrap_or_default(),
        tail: a.limit.unwrap_or(10),
    };
    // The channel's timeout bounds only the wait for the stream's headers, not the stream.
    let mut stream = c
        .logs
        .follow_logs(req)
        .await
        .map_err(|s| c.err(s))?
        .into_inner();
    let since = a.since.as_ref().map(|t| (t.seconds, t.nanos));
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let entry = match next {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(()),
            Err(s) => return Err(c.err(s)),
        };
        if let (Some(since), Some(ts)) = (since, entry.timestamp.as_ref()) {
            if (ts.seconds, ts.nanos) < since {
                continue;
            }
        }
        let line = match format {
            OutputFormat::Json => serde_json::to_string(&json::followed_entry(&entry))?,
            OutputFormat::Table => text::log_line(&entry),
        };
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.map_err(Error::Terminal)?,
        }
    }
}
