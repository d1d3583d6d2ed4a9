//! The last good config on disk (`<data-dir>/config-cache.pb`, a full `ConfigPush` in protobuf),
//! so a restarted proxy serves immediately even with no control plane reachable.

use std::path::{Path, PathBuf};

use myagent_proto::v1 as pb;
use prost::Message;

use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

pub const FILE: &str = "config-cache.pb";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Loads and validates the cache; a missing file is `Ok(None)`.
pub fn load(path: &Path) -> Result<Option<Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Cache {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
        }
    };
    let push = pb::ConfigPush::decode(bytes.as_slice()).map_err(|e| Error::Cache {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    let snap = Snapshot::default().apply(&push).map_err(|e| Error::Cache {
        path: path.display().to_string(),
        detail: e,
    })?;
    Ok(Some(snap))
}

/// Writes atomically (temp file + rename) so a crash never leaves a torn cache.
pub fn save(path: &Path, snap: &Snapshot) -> Result<()> {
    let bytes = snap.encode_full_push();
    let tmp = path.with_extension("pb.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert!(load(&p).unwrap().is_none());
        let push = pb::ConfigPush {
            version: 42,
            full: true,
            services: vec![pb::ServiceSnapshot {
                service_id: "s1".into(),
                name: "a".into(),
                host: "127.0.0.1".into(),
                port: 1,
                routable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let snap = Snapshot::default().apply(&push).unwrap();
        save(&p, &snap).unwrap();
        let back = load(&p).unwrap().unwrap();
        assert_eq!(back.version, 42);
        assert!(back.service_by_name("a").is_some());
        std::fs::write(&p, b"\xff\xff garbage").unwrap();
        assert!(load(&p).is_err());
    }
}
