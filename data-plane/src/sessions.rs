//! Session → service bindings known to this proxy: those the control plane streams
//! (SessionUpdate) plus the ones created here.

use std::collections::HashMap;
use std::sync::RwLock;

use myagent_proto::v1 as pb;

#[derive(Debug, Default)]
pub struct Sessions {
    map: RwLock<HashMap<String, String>>,
}

impl Sessions {
    /// Service id a session is bound to, if known and not completed.
    pub fn get(&self, session_id: &str) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session_id)
            .cloned()
    }

    pub fn bind(&self, session_id: &str, service_id: &str) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id.to_string(), service_id.to_string());
    }

    pub fn apply(&self, update: &pb::SessionUpdate) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        for b in &update.upserted {
            if b.state == "completed" {
                m.remove(&b.session_id);
            } else {
                m.insert(b.session_id.clone(), b.service_id.clone());
            }
        }
        for id in &update.removed {
            m.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
