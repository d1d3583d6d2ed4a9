//! etcd backend over etcd-client: every key is stored under `prefix`, values are the caller's
//! bytes (JSON), and every call is bounded by `request_timeout`.
//!
//! Availability: `connect` never waits for etcd (the client's balanced channel connects lazily
//! and reconnects by itself), so a control plane starts while etcd is down, answers
//! `STORE_UNAVAILABLE` within `request_timeout`, and works again as soon as etcd is back.
//!
//! Watches do not survive a lost connection: the stream ends with `Error::StoreUnavailable`
//! and the caller re-watches from the revision after the last one it saw (the same resync path
//! as `Error::Compacted`). Hiding the outage inside the stream would leave callers believing
//! their view is current while it is not.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, PutOptions, Txn as EtcdTxn, TxnOp as EtcdTxnOp, WatchOptions,
};
use futures::StreamExt;

use super::{
    Compare, KeyValue, LeaseId, Revision, Store, Txn, TxnOp, TxnResponse, WatchEvent, WatchStream,
};
use crate::error::{Error, Result};

/// Default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/myagent/";

/// Maps etcd-client errors: anything that means "etcd is not reachable or not answering" is
/// `StoreUnavailable` (retryable, 503); a request etcd understood and refused (unknown lease,
/// compacted revision, bad argument) is `Internal`.
fn map_err(e: etcd_client::Error) -> Error {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated => Error::Internal(format!("etcd: {}", status.message())),
            _ => Error::StoreUnavailable(format!("etcd: {}", status.message())),
        },
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::LeaseKeepAliveError(_) => Error::StoreUnavailable(e.to_string()),
        other => Error::Internal(format!("etcd: {other}")),
    }
}

pub struct EtcdStore {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl EtcdStore {
    /// Builds a client for `endpoints` without waiting for etcd to answer (see module docs).
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        request_timeout: Duration,
    ) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(Error::invalid(
                "etcd_endpoints",
                "at least one etcd endpoint is required",
            ));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(request_timeout)
            // HTTP/2 pings notice a dead etcd on an idle watch stream.
            .with_keep_alive(request_timeout.max(Duration::from_secs(1)), request_timeout)
            .with_keep_alive_while_idle(true);
        let client =
            tokio::time::timeout(request_timeout, Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| Error::StoreUnavailable("etcd connect timed out".into()))?
                .map_err(|e| match e {
                    etcd_client::Error::InvalidUri(_) | etcd_client::Error::InvalidArgs(_) => {
                        Error::invalid("etcd_endpoints", format!("bad etcd endpoint: {e}"))
                    }
                    e => map_err(e),
                })?;
        tracing::info!(?endpoints, prefix, "etcd store configured");
        Ok(EtcdStore {
            client,
            prefix: prefix.to_string(),
            timeout: request_timeout,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn relative(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(self.prefix.as_str())
            .unwrap_or(&key)
            .to_string()
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.relative(kv.key()),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }

    /// Bounds one call by the request timeout.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(Error::StoreUnavailable(format!(
                "etcd {what} did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn compare(&self, c: &Compare) -> EtcdCompare {
        match c {
            Compare::Absent(k) => EtcdCompare::create_revision(self.full(k), CompareOp::Equal, 0),
            Compare::Exists(k) => EtcdCompare::create_revision(self.full(k), CompareOp::Greater, 0),
            Compare::ModRevision(k, rev) => {
                EtcdCompare::mod_revision(self.full(k), CompareOp::Equal, *rev)
            }
            Compare::Value(k, v) => EtcdCompare::value(self.full(k), CompareOp::Equal, v.clone()),
        }
    }

    fn op(&self, op: TxnOp) -> EtcdTxnOp {
        match op {
            TxnOp::Put { key, value, lease } => EtcdTxnOp::put(
                self.full(&key),
                value,
                lease.map(|l| PutOptions::new().with_lease(l)),
            ),
            TxnOp::Delete { key } => EtcdTxnOp::delete(self.full(&key), None),
        }
    }
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| Error::internal("etcd response without a header"))
}

/// Splits one watch response into batches of one revision each (etcd may group several).
fn split_by_revision(events: Vec<WatchEvent>) -> Vec<Vec<WatchEvent>> {
    let mut out: Vec<Vec<WatchEvent>> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(batch) if batch[0].revision() == e.revision() => batch.push(e),
            _ => out.push(vec![e]),
        }
    }
    out
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.client.kv_client();
        let resp = self.call("get", kv.get(self.full(key), None)).await?;
        Ok(resp.kvs().first().map(|kv| self.kv(kv)))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let mut kv = self.client.kv_client();
        let resp = self
            .call(
                "range",
                kv.get(self.full(prefix), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let revision = revision_of(resp.header())?;
        Ok((resp.kvs().iter().map(|kv| self.kv(kv)).collect(), revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let mut kv = self.client.kv_client();
        let options = lease.map(|l| PutOptions::new().with_lease(l));
        let resp = self
            .call("put", kv.put(self.full(key), value, options))
            .await?;
        revision_of(resp.header())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut kv = self.client.kv_client();
        let resp = self.call("delete", kv.delete(self.full(key), None)).await?;
        Ok(resp.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let mut kv = self.client.kv_client();
        let resp = self
            .call(
                "delete",
                kv.delete(self.full(prefix), Some(DeleteOptions::new().with_prefix())),
            )
            .await?;
        Ok(u64::try_from(resp.deleted()).unwrap_or(0))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let compares: Vec<_> = txn.compares.iter().map(|c| self.compare(c)).collect();
        let success: Vec<_> = txn.success.into_iter().map(|o| self.op(o)).collect();
        let failure: Vec<_> = txn.failure.into_iter().map(|o| self.op(o)).collect();
        let request = EtcdTxn::new()
            .when(compares)
            .and_then(success)
            .or_else(failure);
        let mut kv = self.client.kv_client();
        let resp = self.call("txn", kv.txn(request)).await?;
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: revision_of(resp.header())?,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let mut client = self.client.watch_client();
        let key = self.full(prefix);
        // Wait for etcd to confirm the watch, so every write after this call returns is seen.
        let (stream, first) = self
            .call("watch", async {
                let mut stream = client.watch(key, Some(options)).await?;
                let first = stream.message().await?;
                Ok((stream, first))
            })
            .await?;
        let compacted = |resp: &etcd_client::WatchResponse| Error::Compacted {
            requested: from_revision,
            oldest: resp.compact_revision(),
        };
        match &first {
            Some(resp) if resp.compact_revision() > 0 => return Err(compacted(resp)),
            Some(resp) if resp.canceled() => {
                return Err(Error::StoreUnavailable(format!(
                    "etcd canceled the watch: {}",
                    resp.cancel_reason()
                )))
            }
            Some(_) => {}
            None => return Err(Error::StoreUnavailable("etcd closed the watch".into())),
        }
        let prefix = self.prefix.clone();
        let to_kv = move |kv: &etcd_client::KeyValue| {
            let key = String::from_utf8_lossy(kv.key());
            KeyValue {
                key: key
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(&key)
                    .to_string(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                lease: kv.lease(),
            }
        };
        // The `created` response may already carry events; handle it like the rest.
        let responses = futures::stream::iter(first.map(Ok)).chain(stream);
        let batches = responses
            .map(move |item| -> Result<Vec<Vec<WatchEvent>>> {
                let resp = item.map_err(map_err)?;
                if resp.compact_revision() > 0 {
                    return Err(Error::Compacted {
                        requested: from_revision,
                        oldest: resp.compact_revision(),
                    });
                }
                if resp.canceled() {
                    return Err(Error::StoreUnavailable(format!(
                        "etcd canceled the watch: {}",
                        resp.cancel_reason()
                    )));
                }
                let events = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = to_kv(e.kv()?);
                        Some(match e.event_type() {
                            EventType::Put => WatchEvent::Put(kv),
                            EventType::Delete => WatchEvent::Delete {
                                key: kv.key,
                                mod_revision: kv.mod_revision,
                            },
                        })
                    })
                    .collect();
                Ok(split_by_revision(events))
            })
            // A stream that ends without an error lost its connection all the same.
            .chain(futures::stream::once(async {
                Err(Error::StoreUnavailable("etcd watch stream ended".into()))
            }))
            // Stop after the first error: the stream's contract is "ends with the error".
            .scan(false, |failed, item| {
                let out = if *failed {
                    None
                } else {
                    *failed = item.is_err();
                    Some(item)
                };
                futures::future::ready(out)
            })
            .flat_map(|item| match item {
                Ok(batches) => {
                    futures::stream::iter(batches.into_iter().map(Ok).collect::<Vec<_>>())
                }
                Err(e) => futures::stream::iter(vec![Err(e)]),
            })
            .filter(|item| futures::future::ready(!matches!(item, Ok(b) if b.is_empty())));
        Ok(batches.boxed())
    }

    async fn revision(&self) -> Result<Revision> {
        let mut kv = self.client.kv_client();
        let resp = self
            .call(
                "get",
                kv.get(
                    self.prefix.clone(),
                    Some(GetOptions::new().with_count_only()),
                ),
            )
            .await?;
        revision_of(resp.header())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut kv = self.client.kv_client();
        self.call(
            "compact",
            kv.compact(revision, Some(CompactionOptions::new().with_physical())),
        )
        .await?;
        Ok(())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        // etcd TTLs are whole seconds; round up so a lease never dies early.
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut lease = self.client.lease_client();
        let resp = self.call("lease grant", lease.grant(secs, None)).await?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        let mut lease = self.client.lease_client();
        let resp = self
            .call("lease keepalive", async {
                let (mut keeper, mut stream) = lease.keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await?;
        match resp {
            Some(r) if r.ttl() > 0 => Ok(()),
            Some(_) => Err(Error::Internal(format!("lease {id} not found or expired"))),
            None => Err(Error::StoreUnavailable(
                "etcd closed the keepalive stream".into(),
            )),
        }
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        let mut lease = self.client.lease_client();
        self.call("lease revoke", lease.revoke(id)).await?;
        Ok(())
    }
}
