//! Prometheus metrics of the control plane (`/metrics` on the admin port).
//!
//! One `Metrics` value owns its own `Registry` (no global state, so several control planes can
//! run in one test process). Names carry the `myagent_` prefix, counters end in `_total`, and
//! labels are bounded (gRPC method and code, store operation — never an id). Other modules
//! register their metrics in `Metrics::registry` or add fields here.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tower::{Layer, Service};

use crate::error::{Error, Result};
use crate::store::{KeyValue, LeaseId, Revision, Store, StoreRef, Txn, TxnResponse, WatchStream};

pub type MetricsRef = Arc<Metrics>;

pub struct Metrics {
    pub registry: Registry,
    /// gRPC calls by method and status code.
    pub grpc_requests: IntCounterVec,
    /// gRPC call latency by method (time to response headers).
    pub grpc_latency: HistogramVec,
    /// Store operation latency by operation.
    pub store_latency: HistogramVec,
}

impl Metrics {
    pub fn new() -> Result<MetricsRef> {
        let registry = Registry::new();
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "myagent_grpc_requests_total",
                "gRPC calls served, by method and status code",
            ),
            &["method", "code"],
        )
        .map_err(Error::internal)?;
        let grpc_latency = HistogramVec::new(
            HistogramOpts::new(
                "myagent_grpc_request_duration_seconds",
                "Latency of gRPC calls until response headers, by method",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method"],
        )
        .map_err(Error::internal)?;
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "myagent_store_operation_duration_seconds",
                "Latency of state store operations, by operation",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["op"],
        )
        .map_err(Error::internal)?;
        registry
            .register(Box::new(grpc_requests.clone()))
            .map_err(Error::internal)?;
        registry
            .register(Box::new(grpc_latency.clone()))
            .map_err(Error::internal)?;
        registry
            .register(Box::new(store_latency.clone()))
            .map_err(Error::internal)?;
        Ok(Arc::new(Metrics {
            registry,
            grpc_requests,
            grpc_latency,
            store_latency,
        }))
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(Error::internal)?;
        String::from_utf8(buf).map_err(Error::internal)
    }
}

/// Keeps the `method` label bounded: only our own and the standard gRPC services get a label
/// of their own; anything else a client invents is `other`.
fn method_label(path: &str) -> &str {
    let known = path.starts_with("/myagent.v1.") || path.starts_with("/grpc.");
    if known && path.len() <= 96 && path.bytes().all(|b| b.is_ascii_graphic()) {
        path
    } else {
        "other"
    }
}

/// Tower layer counting and timing every gRPC call.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: MetricsRef,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: MetricsRef) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: MetricsRef,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path()).to_string();
        let metrics = self.metrics.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(async move {
            let res = inner.call(req).await;
            metrics
                .grpc_latency
                .with_label_values(&[method.as_str()])
                .observe(started.elapsed().as_secs_f64());
            // Errors of unary calls come "trailers-only", with grpc-status in the headers; a
            // response without it is a success whose status follows in the trailers.
            let code = match &res {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .map(|v| tonic::Code::from_bytes(v.as_bytes()))
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unknown,
            };
            metrics
                .grpc_requests
                .with_label_values(&[method.as_str(), &format!("{code:?}")])
                .inc();
            res
        })
    }
}

/// A `Store` that times every call into `myagent_store_operation_duration_seconds`.
pub struct MeteredStore {
    inner: StoreRef,
    metrics: MetricsRef,
}

impl MeteredStore {
    pub fn wrap(inner: StoreRef, metrics: MetricsRef) -> StoreRef {
        Arc::new(MeteredStore { inner, metrics })
    }

    async fn timed<T>(&self, op: &str, fut: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = fut.await;
        self.metrics
            .store_latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        out
    }
}

#[async_trait::async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        self.timed("range", self.inner.range(prefix)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.timed("put", self.inner.put(key, value, lease)).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.timed("delete", self.inner.delete(key)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.timed("delete_prefix", self.inner.delete_prefix(prefix))
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.timed("txn", self.inner.txn(txn)).await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, from_revision).await
    }

    async fn revision(&self) -> Result<Revision> {
        self.timed("revision", self.inner.revision()).await
    }

    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<LeaseId> {
        self.timed("grant_lease", self.inner.grant_lease(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.timed("keep_alive", self.inner.keep_alive(lease)).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.timed("revoke_lease", self.inner.revoke_lease(lease))
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.timed("ping", self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new().unwrap();
        m.grpc_requests
            .with_label_values(&["/myagent.v1.RoutingRules/ListRules", "Ok"])
            .inc();
        let text = m.render().unwrap();
        assert!(text.contains("myagent_grpc_requests_total{code=\"Ok\",method=\"/myagent.v1.RoutingRules/ListRules\"} 1"));
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/myagent.v1.ServiceRegistry/GetService"),
            "/myagent.v1.ServiceRegistry/GetService"
        );
        assert_eq!(method_label("/evil/random-123"), "other");
    }
}
