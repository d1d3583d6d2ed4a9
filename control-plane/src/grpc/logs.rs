//! gRPC `Logs` service (seed §1.6): query, search and follow (a server stream).
//!
//! Logs are read from the leader's disk: on any other replica the call is forwarded to the
//! leader (`crate::logs::forward`), so every replica answers the same.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use myagent_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use tonic_types::StatusExt;

use super::health::{find_service, timestamp};
use crate::config::TlsSettings;
use crate::context::Context;
use crate::error::Error;
use crate::logs::forward::{LeaderForward, Route};
use crate::logs::{Level, LogEntry, LogHub, LogQuery};

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
pub const DEFAULT_SEARCH_LIMIT: usize = 50;
/// Follow: live entries buffered per stream before the slow reader is told it lagged.
const FOLLOW_BUFFER: usize = 256;
/// How often a follow checks that its service still exists.
const FOLLOW_EXISTS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

pub struct LogsService {
    ctx: Context,
    logs: LogHub,
    forward: LeaderForward,
}

impl LogsService {
    pub fn new(ctx: Context, logs: LogHub) -> Self {
        let forward = LeaderForward::new(ctx.clone(), None);
        LogsService { ctx, logs, forward }
    }

    /// This replica's TLS material, used when forwarding to an `https` leader.
    pub fn with_peer_tls(mut self, tls: Option<TlsSettings>) -> Self {
        self.forward = LeaderForward::new(self.ctx.clone(), tls);
        self
    }

    pub fn into_server(self) -> pb::logs_server::LogsServer<Self> {
        pb::logs_server::LogsServer::new(self)
    }
}

fn to_pb(e: &LogEntry) -> pb::LogEntry {
    pb::LogEntry {
        timestamp: Some(timestamp(e.timestamp)),
        level: e.level.as_str().to_string(),
        source: e.source.as_str().to_string(),
        message: e.message.clone(),
        service_id: e.service_id.clone(),
        service_name: e.service_name.clone(),
    }
}

fn parse_level(s: &str) -> Result<Option<Level>, Error> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    Level::parse(s)
        .map(Some)
        .ok_or_else(|| Error::invalid("level", "level must be one of debug, info, warn, error"))
}

fn parse_limit(n: u32, default: usize) -> Result<usize, Error> {
    match n as usize {
        0 => Ok(default),
        n if n > MAX_LIMIT => Err(Error::invalid(
            "limit",
            format!("limit must be 1-{MAX_LIMIT}"),
        )),
        n => Ok(n),
    }
}

fn since(ts: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Error> {
    match ts {
        None => Ok(None),
        Some(t) => DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .map(Some)
            .ok_or_else(|| Error::invalid("since", "since is out of range")),
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

#[tonic::async_trait]
impl pb::logs_server::Logs for LogsService {
    async fn get_logs(
        &self,
        req: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        if let Route::Leader { mut client, leader } = self.forward.route(&req).await? {
            let out = self.forward.outgoing(req, false);
            return client
                .get_logs(out)
                .await
                .map_err(|s| self.forward.upstream_error(s, &leader));
        }
        let req = req.into_inner();
        let q = LogQuery {
            min_level: parse_level(&req.level)?,
            since: since(req.since)?,
            limit: parse_limit(req.limit, DEFAULT_LIMIT)?,
        };
        let def = find_service(&self.ctx, &req.service).await?;
        let (entries, total) = self.logs.query(&def.id, q).await?;
        Ok(Response::new(pb::GetLogsResponse {
            service_id: def.id,
            logs: entries.iter().map(to_pb).collect(),
            total,
        }))
    }

    async fn search_logs(
        &self,
        req: Request<pb::SearchLogsRequest>,
    ) -> Result<Response<pb::SearchLogsResponse>, Status> {
        if let Route::Leader { mut client, leader } = self.forward.route(&req).await? {
            let out = self.forward.outgoing(req, false);
            return client
                .search_logs(out)
                .await
                .map_err(|s| self.forward.upstream_error(s, &leader));
        }
        let req = req.into_inner();
        if req.query.trim().is_empty() {
            return Err(Error::invalid("query", "query is required").into());
        }
        let level = parse_level(&req.level)?;
        let limit = parse_limit(req.limit, DEFAULT_SEARCH_LIMIT)?;
        let service_id = if req.service.trim().is_empty() {
            None
        } else {
            Some(find_service(&self.ctx, &req.service).await?.id)
        };
        let (hits, total) = self
            .logs
            .search(&req.query, service_id.as_deref(), level, limit)
            .await?;
        Ok(Response::new(pb::SearchLogsResponse {
            query: req.query,
            results: hits.iter().map(to_pb).collect(),
            total,
        }))
    }

    type FollowLogsStream = FollowStream;

    async fn follow_logs(
        &self,
        req: Request<pb::FollowLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        if let Route::Leader { mut client, leader } = self.forward.route(&req).await? {
            let out = self.forward.outgoing(req, true);
            let upstream = client
                .follow_logs(out)
                .await
                .map_err(|s| self.forward.upstream_error(s, &leader))?
                .into_inner();
            // Relayed until either side ends; this replica's shutdown ends it too. A leader that
            // dies mid-stream ends the stream with UNAVAILABLE: the client follows again.
            let stream = upstream
                .map(|item| {
                    item.map_err(|s| {
                        if s.get_details_error_info().is_some() {
                            s
                        } else {
                            Status::unavailable(format!(
                                "the leader's log stream ended: {}; follow again",
                                s.message()
                            ))
                        }
                    })
                })
                .take_until(self.ctx.shutdown.clone().cancelled_owned());
            return Ok(Response::new(Box::pin(stream)));
        }
        let req = req.into_inner();
        let level = parse_level(&req.level)?;
        let tail = parse_limit(req.tail, 0).unwrap_or(MAX_LIMIT);
        let def = find_service(&self.ctx, &req.service).await?;
        // Subscribe before reading the tail so nothing falls between the two; `seq` removes
        // what both contain.
        let mut live = self.logs.subscribe();
        let (backlog, _) = if req.tail > 0 {
            self.logs
                .query(
                    &def.id,
                    LogQuery {
                        min_level: level,
                        since: None,
                        limit: tail,
                    },
                )
                .await?
        } else {
            (Vec::new(), 0)
        };
        let last_seq = backlog.iter().map(|e| e.seq).max().unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::LogEntry, Status>>(FOLLOW_BUFFER);
        let shutdown = self.ctx.shutdown.clone();
        let store = self.ctx.store.clone();
        let id = def.id.clone();
        tokio::spawn(async move {
            for e in &backlog {
                if tx.send(Ok(to_pb(e))).await.is_err() {
                    return;
                }
            }
            // A deleted service has no more lines: the follow ends with SERVICE_NOT_FOUND.
            let mut exists = tokio::time::interval(FOLLOW_EXISTS_CHECK);
            exists.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = exists.tick() => {
                        if let Ok(None) = store.get(&crate::keys::service(&id)).await {
                            let _ = tx.send(Err(Error::ServiceNotFound(id.clone()).into())).await;
                            return;
                        }
                        continue;
                    }
                    n = live.recv() => n,
                };
                match next {
                    Ok(e) => {
                        if e.service_id != id
                            || level.is_some_and(|l| e.level < l)
                            || (last_seq > 0 && e.seq <= last_seq)
                        {
                            continue;
                        }
                        if tx.send(Ok(to_pb(&e))).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(service_id = %id, skipped = n, "log follower lagged; lines skipped");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
