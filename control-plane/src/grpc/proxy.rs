//! `ProxyControl`: the data-plane config stream and session resolution (DESIGN §2, §6).

use tonic::{Request, Response, Status, Streaming};

use myagent_proto::v1 as pb;
use pb::proxy_control_server::ProxyControl;

use crate::keys;
use crate::store::json;
use crate::stream::model::{SessionRecord, SessionState};
use crate::stream::node::{open_stream, Outbound};
use crate::stream::Hub;

pub struct ProxyControlService {
    hub: Hub,
}

impl ProxyControlService {
    pub fn new(hub: Hub) -> Self {
        ProxyControlService { hub }
    }

    pub fn server(hub: Hub) -> pb::proxy_control_server::ProxyControlServer<Self> {
        pb::proxy_control_server::ProxyControlServer::new(Self::new(hub))
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

#[tonic::async_trait]
impl ProxyControl for ProxyControlService {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        request: Request<Streaming<pb::ProxyMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let out = open_stream(self.hub.clone(), request.into_inner()).await?;
        Ok(Response::new(out))
    }

    async fn resolve_session(
        &self,
        request: Request<pb::ResolveSessionRequest>,
    ) -> Result<Response<pb::SessionBinding>, Status> {
        let id = request.into_inner().session_id;
        if id.is_empty() {
            return Err(crate::Error::invalid("session_id", "session_id is required").into());
        }
        // From the store itself: the watched view may lag a session created a moment ago.
        let found =
            json::get::<SessionRecord>(&self.hub.inner.ctx.store, &keys::session(&id)).await?;
        match found {
            Some((s, _)) if s.state != SessionState::Completed => {
                Ok(Response::new(crate::stream::sessions::binding(&s)))
            }
            // Created a moment ago through this replica, not written yet.
            None => match crate::stream::reports::pending_binding(&self.hub, &id) {
                Some(b) => Ok(Response::new(b)),
                None => Err(not_found(&id)),
            },
            _ => Err(not_found(&id)),
        }
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("session '{id}' not found or completed"))
}
