//! Fills the traffic part of `ServiceStats` in the registry's service views (one batched read
//! for a whole list; the registry already filled memory, CPU, uptime and restarts from
//! `runtime/{id}`).

use super::service_stats::per_service;
use crate::context::Context;
use crate::error::Result;
use crate::registry::ServiceView;

pub async fn fill(ctx: &Context, views: &mut [ServiceView]) -> Result<()> {
    let ids: Vec<&str> = views.iter().map(|v| v.def.id.as_str()).collect();
    let figures = per_service(ctx, &ids).await?;
    for v in views.iter_mut() {
        let Some(f) = figures.get(&v.def.id) else {
            continue;
        };
        let s = &mut v.stats;
        s.total_connections = f.total_connections;
        s.active_connections = f.active_connections;
        s.peak_connections = f.peak_connections;
        s.total_sessions = f.total_sessions;
        s.active_sessions = f.active_sessions;
        s.completed_sessions = f.completed_sessions;
        s.avg_session_duration = f.avg_session_duration;
        s.error_count = f.error_count;
        s.error_rate = f.error_rate;
        s.messages_total = f.messages_total;
    }
    Ok(())
}
