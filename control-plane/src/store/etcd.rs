//! etcd backend over etcd-client (placeholder).

use std::time::Duration;

use crate::error::{Error, Result};

pub struct EtcdStore;

impl EtcdStore {
    pub async fn connect(
        _endpoints: &[String],
        _prefix: &str,
        _timeout: Duration,
    ) -> Result<EtcdStore> {
        Err(Error::internal("etcd store: not built yet"))
    }
}
