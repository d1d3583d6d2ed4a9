//! Embedded backend: a redb file under `--data-dir` with etcd semantics (placeholder).

use std::path::Path;

use crate::error::{Error, Result};

pub struct EmbeddedStore;

impl EmbeddedStore {
    pub fn open(_data_dir: &Path) -> Result<EmbeddedStore> {
        Err(Error::internal("embedded store: not built yet"))
    }
}
