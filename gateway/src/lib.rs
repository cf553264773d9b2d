//! Inquiry gateway: ingest, normalize, dedup, route and persist buyer inquiries from every channel.
//!
//! The data path is [`pipeline`]; [`http`] feeds it, [`store`] keeps it, [`routing`] decides.

pub mod config;
pub mod http;
pub mod pipeline;
pub mod routing;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::http::api::ApiState;
use crate::http::auth::Authenticator;
use crate::http::{AdminState, IngressLimits};
use crate::pipeline::{Pipeline, PipelineLimits};
use crate::routing::FallbackRouter;
use crate::store::{Store, StoreError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The embedded store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs the gateway until `shutdown` resolves, then stops accepting, drains, flushes and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    config.validate()?;
    let metrics = telemetry::install_metrics();
    let store = open_store(&config)?;
    let pseudonym_key = match &config.store.pseudonym_key {
        Some(key) => key.as_bytes().to_vec(),
        None => store.pseudonym_key()?,
    };
    let fallback = FallbackRouter::new(config.routing.fallback.clone());
    let limits = PipelineLimits {
        queue_capacity: config.pipeline.queue_capacity,
        max_batch_inquiries: config.pipeline.max_batch_inquiries,
    };
    let (pipeline, stage) = Pipeline::start(store.clone(), Arc::new(fallback.clone()), fallback, limits);

    let ingest_listener = bind(config.ingest.listen).await?;
    let admin_listener = bind(config.admin.listen).await?;
    let auth = Authenticator::new(&config.auth);
    if auth.is_open() {
        tracing::warn!(listen = %config.ingest.listen,
            "ingest api is open: no auth.api_keys configured (allowed only on a loopback listener)");
    }
    tracing::info!(
        ingest = %ingest_listener.local_addr().map_err(|source| StartError::Bind { addr: config.ingest.listen, source })?,
        admin = %admin_listener.local_addr().map_err(|source| StartError::Bind { addr: config.admin.listen, source })?,
        store = %config.store.path.display(),
        "inquiry gateway started"
    );

    let api = Arc::new(ApiState {
        pipeline: pipeline.clone(),
        store,
        auth,
        pseudonym_key,
        max_body_bytes: config.ingest.max_body_bytes,
        max_batch_lines: config.ingest.max_batch_lines,
    });
    let admin = Arc::new(AdminState { pipeline, metrics });
    let ingress = IngressLimits {
        max_concurrent_requests: config.ingest.max_concurrent_requests,
        request_timeout: Duration::from_millis(config.ingest.request_timeout_ms),
    };

    let (stop_tx, stop_rx) = watch::channel(());
    let stopped = |mut rx: watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let ingest = tokio::spawn(http::serve_ingest(ingest_listener, api, ingress, stopped(stop_rx.clone())));
    let admin = tokio::spawn(http::serve_admin(admin_listener, admin, stopped(stop_rx)));

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining open ones");
    let _ = stop_tx.send(());
    let _ = ingest.await;
    let _ = admin.await;
    // Every pipeline handle is gone with the servers: the stage commits what is queued and stops.
    let joined = tokio::task::spawn_blocking(move || stage.join());
    if tokio::time::timeout(Duration::from_secs(10), joined).await.is_err() {
        tracing::warn!(
            "pipeline stage did not stop within 10 s; unacknowledged requests are lost to their clients' retries"
        );
    }
    tracing::info!("inquiry gateway stopped");
    Ok(())
}

fn open_store(config: &Config) -> Result<Store, StoreError> {
    Store::open(&config.store.path)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}
