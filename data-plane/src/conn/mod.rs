//! One client connection: session lookup, routing, upstream connect, then the relay (with
//! failover) until either side ends it.

mod relay;
mod replay;
pub mod upstream;
pub mod ws;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use myagent_proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::events;
use crate::routing::{Decision, RouteError, RouteRequest};
use crate::state::{unix_ms, Commands, ConnStats, RouteInfo, Shared};
use upstream::{Forwarded, Upstream};
use ws::{Limits, Message, WsStream};

/// What the listener hands over after a successful upgrade.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub req: RouteRequest,
    pub client_ip: IpAddr,
    pub connection_id: String,
}

/// The frame limits of a client connection.
pub fn limits(shared: &Shared) -> Limits {
    Limits {
        max_frame: shared.settings.max_frame_bytes,
        max_message: shared.settings.max_message_bytes,
    }
}

/// The frame limits of an agent connection.
fn agent_limits(shared: &Shared) -> Limits {
    Limits {
        max_frame: shared.settings.max_agent_frame_bytes,
        max_message: shared.settings.max_agent_message_bytes,
    }
}

/// A fresh random (v4) UUID for a connection or session, from the thread's generator rather
/// than a system call per id.
pub fn fresh_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Pauses before asking the control plane again about a session it does not know (yet).
const RESOLVE_RETRY_MS: [u64; 2] = [40, 120];

/// Session id to use, the service it is bound to (if live), and whether it is new.
async fn resolve_session(
    shared: &Shared,
    requested: Option<&str>,
) -> (String, Option<String>, bool) {
    let Some(sid) = requested else {
        return (fresh_id(), None, true);
    };
    if let Some(svc) = shared.sessions.get(sid) {
        return (sid.to_string(), Some(svc), false);
    }
    // Unknown locally: ask the control plane (bounded), the only wait on it in the connection
    // path and only for sessions this proxy has never heard of. A session created through
    // another proxy a few milliseconds ago may not be written yet: a proxy-minted id (a UUID)
    // that is not found is asked for again after short pauses before a fresh session is made.
    let retries: &[u64] = if uuid::Uuid::parse_str(sid).is_ok() {
        &RESOLVE_RETRY_MS
    } else {
        &[]
    };
    for pause in std::iter::once(&0).chain(retries) {
        if *pause > 0 {
            crate::timer::sleep(Duration::from_millis(*pause)).await;
        }
        let channel = shared
            .control_channel
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(ch) = channel else { break };
        let mut client = crate::control::client(ch, shared.token.clone());
        let call = client.resolve_session(pb::ResolveSessionRequest {
            session_id: sid.to_string(),
        });
        match crate::timer::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(resp)) => {
                let b = resp.into_inner();
                if b.service_id.is_empty() || b.state == "completed" {
                    break;
                }
                shared.sessions.bind(sid, &b.service_id);
                return (sid.to_string(), Some(b.service_id), false);
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                // The session update may reach this proxy over the stream meanwhile.
                if let Some(svc) = shared.sessions.get(sid) {
                    return (sid.to_string(), Some(svc), false);
                }
            }
            _ => break,
        }
    }
    // Unknown or completed: a fresh session (ids are minted by the proxy, never by clients).
    (fresh_id(), None, true)
}

/// Routes and connects, trying further candidates when an upstream cannot be reached.
pub(crate) async fn route_and_connect(
    shared: &Shared,
    req: &RouteRequest,
    bound: Option<&str>,
    session_id: &str,
    connection_id: &str,
    client_ip: IpAddr,
    exclude: &mut Vec<String>,
) -> Result<(Decision, Upstream), RouteError> {
    let fwd = Forwarded {
        session_id,
        connection_id,
        client_ip,
        prior_xff: req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
    };
    let mut last_err = None;
    for _attempt in 0..4 {
        let snap = shared.snapshot();
        let mut decision =
            shared
                .router
                .decide(&snap, &shared.load, req, bound, session_id, exclude)?;
        // Claimed before connecting, so connections routed meanwhile count this one. Lost to
        // a concurrent claim: decide again (the claims now show the service as full).
        let svc = &decision.service;
        let session = bound != Some(svc.id.as_str());
        match shared.load.try_reserve(&svc.id, svc.max_sessions, session) {
            Some(slot) => decision.slot = Some(Arc::new(slot)),
            None => {
                last_err = Some(RouteError::at_capacity(svc));
                continue;
            }
        }
        let started = Instant::now();
        match upstream::connect(
            &decision.service,
            &fwd,
            agent_limits(shared),
            shared.settings.connect_timeout,
        )
        .await
        {
            Ok(ws) => {
                shared
                    .metrics
                    .upstream_connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Ok((decision, ws));
            }
            Err(e) => {
                tracing::warn!(service = %decision.service.name, connection_id, error = %e, "upstream connect failed");
                shared.note_passive_failure(&decision.service.id);
                exclude.push(decision.service.id.clone());
                last_err = Some(RouteError::RoutingFailed(format!(
                    "Service '{}' is unreachable: {e}",
                    decision.service.name
                )));
            }
        }
    }
    Err(last_err.unwrap_or_else(|| RouteError::RoutingFailed("No reachable service".into())))
}

/// Serves one upgraded client connection to the end. Not an `async fn`: opening (a
/// control-plane call, the upstream handshake) runs in its own box, freed once the relay
/// starts, so an open connection's future is the relay alone.
pub fn handle<C>(
    shared: Arc<Shared>,
    client: WsStream<C>,
    acc: Accepted,
) -> impl Future<Output = ()> + Send
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = Box::pin(open(shared, client, acc));
    async move {
        // (A match, so nothing keeps a second copy of the relay beside the running one.)
        let run = match open.await {
            Some(relay) => relay.run(),
            None => return,
        };
        run.await;
    }
}

/// Session, routing and the upstream connection: the relay to run, or `None` when the client
/// got an error event instead.
async fn open<C>(
    shared: Arc<Shared>,
    mut client: WsStream<C>,
    acc: Accepted,
) -> Option<relay::Relay<C>>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session_id, bound, new_session) =
        resolve_session(&shared, acc.req.session_id.as_deref()).await;
    let mut exclude = Vec::new();
    let routed = route_and_connect(
        &shared,
        &acc.req,
        bound.as_deref(),
        &session_id,
        &acc.connection_id,
        acc.client_ip,
        &mut exclude,
    )
    .await;
    let (decision, up) = match routed {
        Ok(x) => x,
        Err(e) => {
            shared
                .metrics
                .routing_failures
                .with_label_values(&[e.code()])
                .inc();
            tracing::info!(connection_id = %acc.connection_id, code = e.code(), message = e.message(), "routing failed");
            let recoverable = matches!(e, RouteError::InsufficientResources(_));
            let ev = events::error(e.code(), e.message(), recoverable);
            client.start_send(Message::text(ev));
            let _ = client.send(Message::close(1013, e.code())).await;
            // Let the close handshake finish (bounded) so the client sees the frame.
            let _ = crate::timer::timeout(Duration::from_secs(2), client.finish()).await;
            return None;
        }
    };
    let svc = decision.service.clone();
    let route = RouteInfo {
        service_id: svc.id.clone(),
        service_name: svc.name.clone(),
        session_id: session_id.clone(),
        strategy: decision.strategy.to_string(),
    };
    let stats = Arc::new(ConnStats::new(
        acc.connection_id.clone(),
        acc.client_ip.to_string(),
        unix_ms(),
        route,
    ));
    let commands = Arc::new(Commands::default());
    shared.register(stats.clone(), commands.clone());
    shared.load.connection_opened(&svc.id, new_session);
    // Only a new or moved binding is written: re-writing the one just read could undo a removal
    // the control plane applied meanwhile (the session completed).
    if bound.as_deref() != Some(svc.id.as_str()) {
        shared.sessions.bind(&session_id, &svc.id);
    }
    shared.push_connection_event(
        pb::connection_event::Kind::Opened,
        stats.to_proto(&shared.settings.node_id, "active"),
    );
    let kind = if new_session {
        pb::session_event::Kind::Created
    } else {
        pb::session_event::Kind::Attached
    };
    shared.push_session_event(kind, &session_id, &svc.id);
    tracing::debug!(connection_id = %acc.connection_id, session_id = %session_id, service = %svc.name, strategy = decision.strategy, "connection routed");

    let routed_ev = events::connection_routed(
        &svc.name,
        &svc.endpoint,
        decision.strategy,
        &session_id,
        &acc.connection_id,
    );
    Some(relay::Relay::new(
        shared, stats, client, up, decision, session_id, acc, commands, routed_ev,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn output_size<A, B, C, R>(_: &impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What an open connection keeps for its whole life is its relay: not the futures of the
    /// steps before it, nor a second copy of the relay. (An `async fn` holding them was
    /// 3.7 KB where the relay is 1.2 KB; the proxy's idle connections cost 14 KB each then.)
    #[test]
    fn an_open_connection_is_its_relay() {
        let relay = std::mem::size_of::<relay::Relay<TcpStream>>();
        let handle = output_size(&handle::<TcpStream>);
        assert!(handle <= relay + 64, "handle {handle} B, relay {relay} B");
    }
}
