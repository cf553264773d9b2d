//! The HTTP side: the ingest listener (behind tower's ingress limits) and the admin listener.

pub mod admin;
pub mod api;
pub mod auth;
pub mod error;
pub mod peers;
pub mod public_keys;
pub mod shopify_compliance;
pub mod tls;
pub mod webhooks;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder};

use self::api::ApiState;
use self::error::{json_response, ApiError};
use self::tls::ListenerTls;
use crate::pipeline::Pipeline;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// The peer address of a request's connection (a request extension), for the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Reads a request body that must be one JSON object into `T`. (serde reads a struct from a
/// JSON array too, by position: `[]` would pass as an empty object.)
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    serde_json::from_slice(body)
}

/// What is wrong with a JSON body, in words that never quote its values (serde's own messages
/// do: "invalid type: string \"...\""): the place and the kind, a missing or unknown field's name.
pub(crate) fn body_problem(err: serde_json::Error) -> String {
    if err.line() == 0 {
        return "expected a JSON object".to_owned();
    }
    inquiry_connectors::InputError::from_json(err).message
}

/// A request path as the audit log keeps it: at most 8 segments, each kept only when it looks
/// like a route name or an id (letters, digits, `.`, `_`, `-`; at most 64 bytes), else `*`; so
/// a caller cannot write an e-mail address or free text into the permanent log.
pub fn path_template(path: &str) -> String {
    let kept: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .take(8)
        .map(|s| {
            let plain = s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if plain {
                s
            } else {
                "*"
            }
        })
        .collect();
    format!("/{}", kept.join("/"))
}

/// The peer address of `req`, as text.
pub fn peer(req: &Request<Incoming>) -> Option<String> {
    req.extensions().get::<PeerAddr>().map(|p| p.0.to_string())
}

/// Ingress limits of the ingest listener.
#[derive(Debug, Clone, Copy)]
pub struct IngressLimits {
    /// Requests in progress at once.
    pub max_concurrent_requests: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Connections open at once; the listener stops accepting at the limit.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers or stay idle between requests.
    pub header_read_timeout: Duration,
}

/// Serves the ingest API on `listener` (over `tls` when given) until `shutdown` resolves, then
/// drains open connections.
pub async fn serve_ingest(
    listener: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    state: Arc<ApiState>,
    limits: IngressLimits,
    shutdown: impl Future<Output = ()>,
) {
    let service = ServiceBuilder::new()
        // Overload and timeouts become 503 with Retry-After, never a dropped connection.
        .map_result(limit_error_to_response)
        // Refuse at once when the concurrency limit is reached instead of queueing unboundedly.
        .load_shed()
        // Bounds memory: each request in progress may hold a body of up to max_body_bytes.
        .concurrency_limit(limits.max_concurrent_requests)
        // A client never waits forever; its inquiry may still land, and retrying is safe (dedup).
        .timeout(limits.request_timeout)
        .service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(api::handle(state, req).await) }
        });
    let connections =
        ConnectionLimits { max_open: limits.max_connections, header_read_timeout: limits.header_read_timeout };
    serve("ingest", listener, tls, connections, TowerToHyperService::new(service), shutdown).await;
}

/// What the admin endpoints report on.
pub struct AdminState {
    /// The pipeline (its readiness covers the embedded store).
    pub pipeline: Pipeline,
    /// The spool: sink health and depth.
    pub spool: Arc<crate::spool::Spool>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The admin API under `/v1/`.
    pub api: admin::AdminApi,
}

/// Serves `/healthz`, `/readyz`, `/metrics` and the admin API (over `tls` when given) until
/// `shutdown` resolves.
pub async fn serve_admin(
    listener: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            if req.uri().path().starts_with("/v1/") {
                return Ok::<_, Infallible>(state.api.handle(req).await);
            }
            Ok::<_, Infallible>(admin(&state, &req))
        }
    });
    let connections =
        ConnectionLimits { max_open: ADMIN_MAX_CONNECTIONS, header_read_timeout: ADMIN_HEADER_READ_TIMEOUT };
    serve("admin", listener, tls, connections, service, shutdown).await;
}

fn admin(state: &AdminState, req: &Request<Incoming>) -> HttpResponse {
    if req.method() != Method::GET {
        return ApiError::method_not_allowed("GET").into_response(&new_trace_id());
    }
    match req.uri().path() {
        "/healthz" => {
            // Live while the pipeline can still make progress; a poisoned store needs a restart.
            if state.pipeline.is_alive() {
                json_response(StatusCode::OK, &json!({ "status": "ok" }))
            } else {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "status": "failed" }))
            }
        }
        "/readyz" => {
            // Ready while ingest can accept durably: the store works, the queue has room and no
            // spool is full. A degraded sink alone keeps the gateway ready (it spools), and is
            // reported here so that operators see it.
            let spool = &state.spool;
            let embedded = state.pipeline.is_alive();
            let ready = state.pipeline.is_ready() && !spool.is_full() && !spool.disk_low();
            let mut sinks = serde_json::Map::new();
            sinks.insert("embedded".into(), json!(if embedded { "ready" } else { "unavailable" }));
            for (i, sink) in spool.sinks.iter().enumerate() {
                let status =
                    if sink.degraded.load(std::sync::atomic::Ordering::Relaxed) { "degraded" } else { "ready" };
                sinks.insert(sink.name.into(), json!({ "status": status, "spooled": spool.depth(i) }));
            }
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(status, &json!({ "ready": ready, "disk_low": spool.disk_low(), "sinks": sinks }))
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            response
        }
        _ => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint").into_response(&new_trace_id()),
    }
}

/// Always `Ok`: the `BoxError` type only satisfies tower's `From<S::Error>` bound.
fn limit_error_to_response(result: Result<HttpResponse, BoxError>) -> Result<HttpResponse, BoxError> {
    Ok(result.unwrap_or_else(|err| {
        if err.is::<tower::timeout::error::Elapsed>() {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; retry later")
                .retry_after(1)
                .into_response(&new_trace_id())
        } else {
            ApiError::overloaded().into_response(&new_trace_id())
        }
    }))
}

/// The trace id of the W3C `traceparent` header, if it carries a valid one.
pub fn traceparent_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_owned())
}

/// A new random trace id (32 lowercase hex digits).
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Longest a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections open at once on the admin listener (operators, Prometheus, the CLI).
const ADMIN_MAX_CONNECTIONS: usize = 512;

/// The admin listener's `header_read_timeout` (the ingest listener's is configured).
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What bounds a listener's connections.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// Open at once; at the limit the listener stops accepting until one closes.
    max_open: usize,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may stay idle: a client trickling bytes or holding idle connections cannot
    /// pile up open connections (hyper applies no such limit without a timer).
    header_read_timeout: Duration,
}

/// An open connection: holds its place under the listener's limit and counts in the
/// `inquiry_gateway_http_connections` gauge until dropped.
struct OpenConnection {
    listener: &'static str,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(listener: &'static str, permit: tokio::sync::OwnedSemaphorePermit) -> OpenConnection {
        metrics::gauge!(crate::telemetry::HTTP_CONNECTIONS, "listener" => listener).increment(1);
        OpenConnection { listener, _permit: permit }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::HTTP_CONNECTIONS, "listener" => self.listener).decrement(1);
    }
}

/// The HTTP/1.1 settings of every connection of the gateway's listeners.
fn connection_builder(limits: ConnectionLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
}

/// Accepts HTTP/1.1 connections (over TLS when `tls` is given) until `shutdown`, then lets open
/// ones finish (up to 10 s). At `limits.max_open` connections it stops accepting until one
/// closes (new clients wait in the kernel's backlog) rather than run the process out of file
/// descriptors.
async fn serve<S>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    limits: ConnectionLimits,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_open));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = OpenConnection::new(name, permit);
                let inner = service.clone();
                let with_peer = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(addr));
                    inner.call(req)
                });
                let Some(tls) = &tls else {
                    let conn = graceful.watch(connection_builder(limits).serve_connection(TokioIo::new(stream), with_peer));
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(connection);
                    });
                    continue;
                };
                // The handshake runs in the connection's own task: a slow client holds up no one.
                let (acceptor, watcher) = (tls.acceptor(), graceful.watcher());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = connection_builder(limits).serve_connection(TokioIo::new(stream), with_peer);
                            let _ = watcher.watch(conn).await;
                        }
                        failed => {
                            metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES, "listener" => name).increment(1);
                            if let Ok(Err(err)) = failed {
                                tracing::debug!(listener = name, peer = %addr, error = %err, "tls handshake failed");
                            }
                        }
                    }
                    drop(connection);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}
