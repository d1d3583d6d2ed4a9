//! Every replica answers Logs calls the same: a follower forwards them to the leader.
//!
//! Agent output is captured by the leader (which runs the agents) onto its own disk, so only
//! the leader can answer `GetLogs`, `SearchLogs` and `FollowLogs`. A follower looks up the
//! leader's advertised URL in `election/leader` and replays the call there, with the caller's
//! `authorization` metadata, over the replica's own TLS settings when the URL is `https`.
//! A forwarded call carries `x-myagent-forwarded-by`; the receiver always answers it from its
//! own disk, so a stale leader record can never bounce a call between replicas.
//!
//! When the leader is unknown (an election in progress), predates advertised URLs, or cannot
//! be reached, the call fails with `STORE_UNAVAILABLE` (gRPC `UNAVAILABLE`, REST 503) and a
//! message saying so: of the codes of DESIGN §7 it is the one for "the cluster's state cannot
//! be reached right now, retry shortly", which is exactly the situation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use myagent_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::TlsSettings;
use crate::context::Context;
use crate::election::{self, LeaderRecord};
use crate::error::ERROR_DOMAIN;

/// Metadata key marking a call a replica forwarded (value: the forwarding replica's id).
pub const FORWARDED_BY: &str = "x-myagent-forwarded-by";
/// Deadline of connecting to the leader (a dead leader must not hang the caller).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of a forwarded unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub type LogsClient = pb::logs_client::LogsClient<Channel>;

/// Decides where a Logs call is answered and holds one lazily connected channel per leader.
pub struct LeaderForward {
    ctx: Context,
    tls: Option<TlsSettings>,
    // Held only to look up or insert a channel, never across an await.
    channels: Mutex<HashMap<String, Channel>>,
}

/// Where a call is answered.
pub enum Route {
    /// This replica's disk (it leads, the store is embedded, or the call was forwarded to it).
    Local,
    /// The leader: replay the call with this client.
    Leader {
        client: Box<LogsClient>,
        leader: LeaderRecord,
    },
}

impl LeaderForward {
    /// `tls`: this replica's own TLS material, used towards `https` leaders.
    pub fn new(ctx: Context, tls: Option<TlsSettings>) -> Self {
        LeaderForward {
            ctx,
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub async fn route<T>(&self, req: &Request<T>) -> Result<Route, Status> {
        if *self.ctx.is_leader.borrow() || req.metadata().contains_key(FORWARDED_BY) {
            return Ok(Route::Local);
        }
        let leader = match election::current_leader_record(&self.ctx.store).await {
            Ok(Some(l)) => l,
            Ok(None) => return Err(unavailable("no replica leads right now", None)),
            Err(e) => {
                return Err(unavailable(
                    &format!("cannot read the leader record: {e}"),
                    None,
                ))
            }
        };
        if leader.replica_id == *self.ctx.replica_id {
            // Just elected; the leadership signal is about to flip.
            return Ok(Route::Local);
        }
        if leader.url.is_empty() {
            return Err(unavailable(
                "the leader does not advertise a URL (an older version); ask it directly",
                Some(&leader),
            ));
        }
        let channel = self
            .channel(&leader.url)
            .map_err(|e| unavailable(&e, Some(&leader)))?;
        Ok(Route::Leader {
            client: Box::new(LogsClient::new(channel)),
            leader,
        })
    }

    fn channel(&self, url: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("invalid leader URL {url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            ep = ep
                .tls_config(self.client_tls())
                .map_err(|e| format!("TLS towards {url}: {e}"))?;
        }
        // Lazy: a dead leader costs the caller one connect timeout, not this lock.
        let c = ep.connect_lazy();
        channels.insert(url.to_string(), c.clone());
        Ok(c)
    }

    /// Replicas share one deployment's TLS setup: trust `--tls-peer-ca`, else the client CA
    /// (mTLS deployments sign every replica's certificate with it), else this replica's own
    /// certificate chain; present this replica's identity for mTLS.
    fn client_tls(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        if let Some(own) = &self.tls {
            let ca = own
                .peer_ca
                .as_ref()
                .or(own.client_ca.as_ref())
                .unwrap_or(&own.cert);
            tls = tls
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(&own.cert, &own.key));
        }
        tls
    }

    /// The call to send to the leader: the caller's message and credentials, marked forwarded.
    pub fn outgoing<T>(&self, req: Request<T>, streaming: bool) -> Request<T> {
        let auth = req.metadata().get("authorization").cloned();
        let mut out = Request::new(req.into_inner());
        if let Some(a) = auth {
            out.metadata_mut().insert("authorization", a);
        }
        if let Ok(v) = self.ctx.replica_id.parse() {
            out.metadata_mut().insert(FORWARDED_BY, v);
        }
        if !streaming {
            out.set_timeout(CALL_TIMEOUT);
        }
        out
    }

    /// An error of a forwarded call: the leader's own answers (they carry the seed code) pass
    /// through unchanged; transport failures become a clear `STORE_UNAVAILABLE`.
    pub fn upstream_error(&self, status: Status, leader: &LeaderRecord) -> Status {
        if status.get_details_error_info().is_some() {
            return status;
        }
        tracing::warn!(
            leader = %leader.replica_id,
            url = %leader.url,
            code = ?status.code(),
            error = %status.message(),
            "forwarding a Logs call to the leader failed"
        );
        unavailable(
            &format!("the leader did not answer: {}", status.message()),
            Some(leader),
        )
    }
}

fn unavailable(why: &str, leader: Option<&LeaderRecord>) -> Status {
    let mut details = HashMap::new();
    if let Some(l) = leader {
        details.insert("leader".to_string(), l.replica_id.clone());
        details.insert("leader_url".to_string(), l.url.clone());
    }
    let message = format!(
        "Agent logs are kept by the leader replica and it cannot be reached ({why}); retry shortly"
    );
    Status::with_error_details(
        Code::Unavailable,
        message,
        ErrorDetails::with_error_info("STORE_UNAVAILABLE", ERROR_DOMAIN, details),
    )
}
