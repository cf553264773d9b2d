//! Inquiry gateway: ingest, normalize, dedup, route and persist buyer inquiries from every channel.
//!
//! The data path is [`pipeline`]; [`http`] feeds it, [`store`] keeps it, [`routing`] decides.

pub mod agents;
pub mod compliance;
pub mod config;
pub mod conversions;
pub mod http;
pub mod imap;
pub mod pipeline;
pub mod plugins;
pub mod poll;
pub mod poll_leases;
pub mod poll_tokens;
pub mod reach;
pub mod retention;
pub mod retry;
pub mod routing;
pub mod sinks;
pub mod spool;
pub mod store;
pub mod tasks;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compliance::audit::AuditEvent;
use crate::config::Config;
use crate::http::api::ApiState;
use crate::http::auth::Authenticator;
use crate::http::{AdminState, IngressLimits};
use crate::pipeline::{Pipeline, PipelineLimits};
use crate::routing::FallbackRouter;
use crate::sinks::cql::CqlSink;
use crate::sinks::kafka::KafkaSink;
use crate::sinks::Sink;
use crate::spool::Spool;
use crate::store::{Store, StoreError};
use crate::tasks::finish;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The embedded store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sink could not be built or prepared.
    #[error(transparent)]
    Sink(#[from] sinks::SinkError),
    /// The plugin sandbox could not start.
    #[error(transparent)]
    Plugins(#[from] plugins::PluginError),
    /// The compliance keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] compliance::KeyError),
    /// A listener's certificate or key could not be loaded.
    #[error("{listener}.tls: {reason}")]
    Tls {
        /// `ingest` or `admin`.
        listener: &'static str,
        /// Which file, and why.
        reason: String,
    },
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Raises the soft limit on open files to the hard one (as Go programs do at start): every
/// connection, store file and broker socket takes a descriptor, and a service manager's soft
/// limit (often 1024) is below `ingest.max_connections`. Warns when even the hard limit is.
fn raise_open_files_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit.clone()) {
            tracing::warn!(error = %err, "could not raise the open files limit");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    // Room for the store's files, sinks and peers beside the connections.
    if current.is_some_and(|n| n < max_connections as u64 + 1024) {
        tracing::warn!(
            open_files_limit = current,
            max_connections,
            "the open files limit is below ingest.max_connections + 1024: raise LimitNOFILE (systemd) or ulimit -n"
        );
    }
}

/// Runs the gateway until `shutdown` resolves, then stops accepting, drains, flushes and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    config.validate()?;
    let metrics = telemetry::install_metrics();
    raise_open_files_limit(config.ingest.max_connections);
    // The phone-number metadata loads on first use: not on the first chat inquiry's request.
    std::thread::spawn(|| inquiry_connectors::country_of_phone("+4930901820"));
    let store = open_store(&config)?;
    let index_key = match &config.store.pseudonym_key {
        Some(key) => key.as_bytes().to_vec(),
        None => store.pseudonym_key()?,
    };
    let keys = compliance::load_keys(&config, &index_key)?;
    // Signs the replies and conversions forwarded between replicas (a validated config has a
    // configured pseudonym key, which they share).
    let forward_key = config.reach.forward_http.then(|| Arc::new(reach::replies::ForwardKey::new(&index_key)));
    // Signs this replica's reads from its peers and checks theirs (`[cluster] peers`).
    let peer_key = Arc::new(http::peers::PeerKey::new(&index_key));
    if keys.generated_kek {
        tracing::warn!(path = %compliance::key_dir(&config).display(),
            "compliance.kek is not configured: personal data is sealed with a key kept beside the data \
             (fine for one machine; set compliance.kek or kek_file from a secret store in production)");
    }
    let subjects = compliance::subjects(&keys, &store);
    let public_key = keys.signer.public_key().to_vec();
    let audit_log = compliance::audit::AuditLog::open(
        &store,
        keys.signer,
        Duration::from_millis(config.compliance.tree_head_interval_ms),
    )?;
    let fallback = FallbackRouter::new(config.routing.fallback.clone());
    let limits = PipelineLimits {
        queue_capacity: config.pipeline.queue_capacity,
        max_batch_inquiries: config.pipeline.max_batch_inquiries,
    };
    let (mut sinks, kafka_sinks) = build_sinks(&config)?;
    // The main cluster (`[sinks.kafka]`, always first): the replies topic and forwarding.
    let kafka_sink = kafka_sinks.first().cloned();
    let sinks_for_erasure = sinks.clone();
    // Reach-out reads the spool like a sink: it starts the SLAs of what was stored.
    let reach = if !reach_configured(&config.reach) {
        None
    } else {
        let clock = Arc::new(reach::SystemClock);
        let queues = kafka_sinks.iter().map(|k| (k.name().to_owned(), k.regions().to_vec(), k.location())).collect();
        let reach = reach::Reach::new(&config.reach, store.clone(), queues, clock)
            .map_err(|e| StoreError::from_message(&format!("reach: {e}")))?;
        let reach = Arc::new(reach);
        sinks.push(Arc::new(reach::ReachSink::new(reach.clone())));
        Some(reach)
    };
    let names: Vec<(&'static str, Vec<inquiry_connectors::Region>, inquiry_connectors::Region)> =
        sinks.iter().map(|s| (s.name(), s.regions().to_vec(), s.location())).collect();
    // What the journal recovered after a crash may never have been fsynced: make it durable before
    // forwarders may send it.
    store.sync()?;
    let (spool, next_seq) = Spool::open(&store, &names, config.spool.max_pending)?;
    let spool = Arc::new(spool);
    // The plugin router routes even without plugins (it leaves every inquiry to the fallback
    // route), so that a reload can add them. Compiling and starting plugins is blocking work
    // (and WASI must not run on a runtime thread).
    let plugin_router =
        Arc::new(tokio::task::block_in_place(|| plugins::PluginRouter::new(&config.routing, fallback.clone()))?);
    // Agents' run-time state: restored before traffic (embedded store), or read from the CQL
    // store by a refresher every replica runs (also without plugins: a reload may add them).
    let agent_states = Arc::new(agents::AgentStates::new(
        plugin_router.agents().clone(),
        store.clone(),
        config.routing.agent_state,
        config.sinks.cql.clone(),
    ));
    let restored = tokio::task::block_in_place(|| agent_states.restore_local())?;
    if restored > 0 {
        tracing::info!(agents = restored, "agent states restored from the store");
    }
    let parts = pipeline::StageParts {
        store: store.clone(),
        router: plugin_router.clone(),
        fallback,
        spool: spool.clone(),
        next_seq,
        audit: audit_log,
        subjects: subjects.clone(),
    };
    let (pipeline, stage) = Pipeline::start(parts, limits)?;
    if config.routing.reload_interval_ms > 0 {
        // A plugin file that changed is swapped in by the watcher: who routes is in the audit log.
        // (A weak handle: the stage holds the router, which holds the watcher.)
        let audit = pipeline.audit_handle();
        plugins::watch(&plugin_router, Duration::from_millis(config.routing.reload_interval_ms), move |status| {
            let event = AuditEvent::new("routing.reloaded", "gateway:plugin_watcher")
                .detail(serde_json::json!({ "plugins": plugin_versions(&status) }));
            audit.blocking_audit(vec![event]);
        });
    }

    let listener_tls = ListenersTls {
        ingest: load_tls("ingest", config.ingest.tls.as_ref())?,
        admin: load_tls("admin", config.admin.tls.as_ref())?,
    };
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
        ingest_tls = listener_tls.ingest.is_some(),
        admin_tls = listener_tls.admin.is_some(),
        "inquiry gateway started"
    );

    let (stop_tx, stop_rx) = watch::channel(());
    let forwarders: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .flat_map(|(i, sink)| {
            [
                tokio::spawn(sinks::forward(
                    sink.clone(),
                    i,
                    spool.clone(),
                    store.clone(),
                    pipeline.clone(),
                    stop_rx.clone(),
                )),
                tokio::spawn(sinks::forward_audit(sink, i, spool.clone(), store.clone(), stop_rx.clone())),
            ]
        })
        .collect();

    let replica = config.polling.replica.clone().unwrap_or_else(replica_name);
    // The pollers' current tokens, which the acknowledgement senders of their platforms use.
    let live_tokens = poll::LiveTokens::default();
    let reach_tasks = match &reach {
        Some(reach) => {
            let mut tasks = spawn_reach(reach, &kafka_sinks, &store, &stop_rx);
            if let Some(kafka) = kafka_sink.as_ref().filter(|k| k.replies_topic().is_some()) {
                let group = format!("inquiry-gateway-replies-{replica}");
                let parts = (reach.clone(), store.clone(), pipeline.clone(), stop_rx.clone());
                tasks.push(tokio::spawn(reach::replies::consume(
                    parts.0,
                    parts.1,
                    parts.2,
                    (kafka.clone(), forward_key.clone()),
                    group,
                    parts.3,
                )));
            }
            // With senders, templates may also come later (a reload).
            if !reach.acks().senders().is_empty() {
                // With a CQL store, replicas claim acknowledgements there: one per inquiry in all.
                let claims = config.sinks.cql.as_ref().map(|cql| Arc::new(reach::send::AckClaims::new(cql, &replica)));
                let parts = (reach.clone(), store.clone(), subjects.clone(), pipeline.clone(), stop_rx.clone());
                let senders = reach::send::SenderParts { claims, live_tokens: live_tokens.clone() };
                tasks.push(tokio::spawn(reach::send::run_acks(parts.0, parts.1, parts.2, parts.3, senders, parts.4)));
            }
            tasks
        }
        None => Vec::new(),
    };
    let disk_watch = tokio::spawn(spool::watch_disk(
        spool.clone(),
        config.store.path.clone(),
        config.store.min_free_mb.saturating_mul(1 << 20),
        Duration::from_secs(2),
        stop_rx.clone(),
    ));
    let sweeper =
        tokio::spawn(retention::run(store.clone(), config.retention.clone(), pipeline.clone(), stop_rx.clone()));
    // Erasures and consent withdrawals shared with the other replicas (a validated config has
    // [sinks.cql] for them).
    let shared_requests = match (config.compliance.request_sharing, &config.sinks.cql) {
        (config::StatePlace::Cql, Some(cql)) => {
            Some(Arc::new(compliance::shared::SharedRequests::new(cql.clone(), replica.clone())))
        }
        _ => None,
    };
    let requests = Arc::new(compliance::requests::SubjectRequests {
        store: store.clone(),
        subjects: subjects.clone(),
        pipeline: pipeline.clone(),
        sinks: sinks_for_erasure,
        processing: config.compliance.processing.clone(),
        retention: time::Duration::days(i64::from(config.compliance.request_retention_days)),
        // A withdrawal is kept as long as the consents it may withdraw (reported with inquiries).
        withdrawal_retention: time::Duration::days(i64::from(
            config.compliance.request_retention_days.max(config.retention.inquiries_days),
        )),
        shared: shared_requests.clone(),
    });
    let request_follower = shared_requests.as_ref().map(|shared| {
        let interval = Duration::from_millis(config.compliance.request_refresh_ms);
        tokio::spawn(compliance::shared::follow(shared.clone(), requests.clone(), interval, stop_rx.clone()))
    });
    let quotas = Arc::new(poll::QuotaRegistry::default());
    let polled: Vec<_> = config
        .pollers
        .iter()
        .filter_map(|p| Some((inquiry_connectors::poll::find(&p.connector)?, p.clone())))
        .collect();
    let user_agent = format!("inquiry-gateway/{} ({replica})", env!("CARGO_PKG_VERSION"));
    let group = |poller: &dyn inquiry_connectors::poll::Poller, entry: &config::PollerConfig| {
        poll_leases::group_of(poller.name(), poller.quota_scope(), &entry.account, &entry.app)
    };
    let leases = match (&config.polling.coordination, &config.sinks.cql) {
        (config::Coordination::Cql, Some(cql)) if !polled.is_empty() => {
            let groups: std::collections::BTreeSet<String> = polled.iter().map(|(p, e)| group(*p, e)).collect();
            let lease = Duration::from_millis(config.polling.lease_ms);
            let leases = Arc::new(poll_leases::Leases::new(cql, &replica, lease, groups));
            tracing::info!(holder = leases.holder(), "pollers share their work through leases in the cql store");
            Some(leases)
        }
        _ => None,
    };
    let lease_keeper = leases.clone().map(|leases| tokio::spawn(leases.keep(stop_rx.clone())));
    let agent_refresher = tokio::spawn(
        agent_states.clone().refresh(Duration::from_millis(config.routing.agent_refresh_ms), stop_rx.clone()),
    );
    // One task per `[[pollers]]` entry; a reload starts, stops and restarts them where each
    // replica polls on its own (with leases in the CQL store the groups are fixed at start).
    let pollers = Arc::new(tasks::EntryTasks::start(&config.pollers, stop_rx.clone(), {
        let (quotas, pipeline, store, subjects) = (quotas.clone(), pipeline.clone(), store.clone(), subjects.clone());
        let (live_tokens, reach, requests, leases) =
            (live_tokens.clone(), reach.clone(), requests.clone(), leases.clone());
        move |entry: &config::PollerConfig, stop| {
            // Validated: every entry names a known connector.
            let Some(poller) = inquiry_connectors::poll::find(&entry.connector) else {
                return tokio::spawn(async {});
            };
            let handle = leases.as_ref().map(|leases| leases.handle(&group(poller, entry)));
            let parts = poll::PollerParts {
                poller,
                config: entry.clone(),
                quotas: quotas.clone(),
                pipeline: pipeline.clone(),
                store: store.clone(),
                subjects: subjects.clone(),
                user_agent: user_agent.clone(),
                live_tokens: live_tokens.clone(),
                replies: reach.clone().map(|reach| poll::PollReplies { reach, requests: requests.clone() }),
            };
            tokio::spawn(poll::run(parts, handle, stop))
        }
    }));
    let mailboxes = Arc::new(tasks::EntryTasks::start(&config.mailboxes, stop_rx.clone(), {
        let (pipeline, store, subjects) = (pipeline.clone(), store.clone(), subjects.clone());
        move |mailbox: &config::MailboxConfig, stop| {
            tokio::spawn(imap::run(mailbox.clone(), pipeline.clone(), store.clone(), subjects.clone(), stop))
        }
    }));

    let api = Arc::new(ApiState {
        pipeline: pipeline.clone(),
        store: store.clone(),
        auth,
        subjects: subjects.clone(),
        requests: requests.clone(),
        max_body_bytes: config.ingest.max_body_bytes,
        max_batch_lines: config.ingest.max_batch_lines,
        webhooks: std::sync::RwLock::new(http::api::webhook_endpoints(&config.webhooks)),
        public_keys: Default::default(),
        replays: Default::default(),
        reach: reach.clone(),
        forward_replies: match (&reach, &kafka_sink, &forward_key) {
            (Some(_), Some(kafka), Some(key)) if kafka.replies_topic().is_some() => Some((kafka.clone(), key.clone())),
            _ => None,
        },
        peers: http::peers::Peers::new(&config.cluster, peer_key.clone())
            .map_err(|e| StoreError::from_message(&format!("cluster: {e}")))?,
        peer_key,
        polled_accounts: std::sync::RwLock::new(http::api::polled_accounts(&config.pollers)),
    });
    let retrier = tokio::spawn(retry_erasures(requests.clone()));
    let signer_tick = tokio::spawn({
        let (pipeline, every) = (pipeline.clone(), Duration::from_millis(config.compliance.tree_head_interval_ms));
        async move {
            loop {
                tokio::time::sleep(every).await;
                pipeline.tick();
            }
        }
    });
    let admin_api = http::admin::AdminApi::new(
        &config.admin,
        http::admin::AdminParts {
            plugins: plugin_router.clone(),
            agents: agent_states.clone(),
            store: store.clone(),
            source: config.source.clone(),
            pipeline: pipeline.clone(),
            subjects: subjects.clone(),
            requests,
            public_key,
            spool: spool.clone(),
        },
    );
    if config.admin.tokens.is_empty() && config.admin.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.admin.listen, "admin api is open: no admin.tokens configured (loopback only)");
    }
    let admin = Arc::new(AdminState { pipeline, spool, metrics, api: admin_api });
    let ingest_loopback = config.ingest.listen.ip().is_loopback();
    let readers = Readers {
        pollers: pollers.clone(),
        mailboxes: mailboxes.clone(),
        // As started: a gateway that started without pollers under `cql` has no leases to add
        // them to, and pollers started without leases would poll every shop on every replica.
        leased: config.polling.coordination == config::Coordination::Cql,
    };
    let reloader =
        tokio::spawn(reload_on_sighup(admin.clone(), api.clone(), listener_tls.clone(), ingest_loopback, readers));
    let ingress = IngressLimits {
        max_concurrent_requests: config.ingest.max_concurrent_requests,
        max_connections: config.ingest.max_connections,
        header_read_timeout: Duration::from_millis(config.ingest.header_read_timeout_ms),
        request_timeout: Duration::from_millis(config.ingest.request_timeout_ms),
    };

    let stopped = |mut rx: watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let ingest =
        tokio::spawn(http::serve_ingest(ingest_listener, listener_tls.ingest, api, ingress, stopped(stop_rx.clone())));
    let admin = tokio::spawn(http::serve_admin(admin_listener, listener_tls.admin, admin, stopped(stop_rx)));

    shutdown.await;
    reloader.abort();
    let _ = reloader.await; // it holds the pollers' and mailboxes' starters (pipeline handles)
    retrier.abort();
    signer_tick.abort();
    tracing::info!("shutting down: no new connections, draining open ones");
    let _ = stop_tx.send(());
    let _ = ingest.await;
    let _ = admin.await;
    finish(sweeper, Duration::from_secs(5)).await;
    finish(disk_watch, Duration::from_secs(1)).await;
    if let Some(follower) = request_follower {
        finish(follower, Duration::from_secs(5)).await;
    }
    for task in reach_tasks {
        finish(task, Duration::from_secs(5)).await;
    }
    // A poller in the middle of a token refresh finishes it (a platform that rotates refresh
    // tokens has retired the old one once it answers; a request takes at most 30 s).
    tokio::join!(pollers.finish(Duration::from_secs(31)), mailboxes.finish(Duration::from_secs(5)));
    // Their starters hold pipeline handles, which the stage waits for below.
    drop((pollers, mailboxes));
    // Pollers stopped: their leases are released for the other replicas.
    finish(agent_refresher, Duration::from_secs(5)).await;
    if let Some(keeper) = lease_keeper {
        finish(keeper, Duration::from_secs(5)).await;
    }
    // Forwarders finish their current round (a down sink's round is abandoned after 10 s); what is
    // left stays in the spool for the next start. They hold pipeline handles (to audit deliveries),
    // so they go before the stage is joined.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for forwarder in forwarders {
        finish(forwarder, deadline.saturating_duration_since(tokio::time::Instant::now())).await;
    }
    // Every pipeline handle is gone: the stage commits what is queued, signs a last tree head and stops.
    let joined = tokio::task::spawn_blocking(move || stage.join());
    if tokio::time::timeout(Duration::from_secs(10), joined).await.is_err() {
        tracing::warn!(
            "pipeline stage did not stop within 10 s; unacknowledged requests are lost to their clients' retries"
        );
    }
    tracing::info!("inquiry gateway stopped");
    Ok(())
}

/// This replica's name when the config gives none: the host name (a StatefulSet pod's name).
fn replica_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// Retries the sink part of erasures that failed (a sink was down), every 30 s.
async fn retry_erasures(requests: Arc<compliance::requests::SubjectRequests>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Err(err) = requests.retry_pending().await {
            tracing::warn!(error = %err, "retrying erasures in sinks failed");
        }
    }
}

/// The TLS of the listeners that serve HTTPS.
#[derive(Clone)]
struct ListenersTls {
    ingest: Option<Arc<http::tls::ListenerTls>>,
    admin: Option<Arc<http::tls::ListenerTls>>,
}

fn load_tls(
    listener: &'static str,
    config: Option<&config::ListenerTlsConfig>,
) -> Result<Option<Arc<http::tls::ListenerTls>>, StartError> {
    config
        .map(|tls| http::tls::ListenerTls::load(tls).map_err(|reason| StartError::Tls { listener, reason }))
        .transpose()
}

/// Whether `[reach]` asks for anything (SLA policies or acknowledgement templates).
fn reach_configured(reach: &config::ReachConfig) -> bool {
    !reach.sla_policies.is_empty() || !reach.templates.is_empty()
}

/// The pollers and mailboxes a SIGHUP reloads.
struct Readers {
    pollers: Arc<tasks::EntryTasks<config::PollerConfig>>,
    mailboxes: Arc<tasks::EntryTasks<config::MailboxConfig>>,
    /// Pollers share leases in the CQL store (`polling.coordination = "cql"`): their groups
    /// are fixed at start.
    leased: bool,
}

impl Readers {
    /// Takes `config`'s `[[pollers]]` (unless leased) and `[[mailboxes]]`; what it did, for the
    /// log and the audit entry.
    async fn reload(&self, config: &Config, api: &ApiState) -> serde_json::Value {
        // Longer than a platform request may take (30 s): a token refresh in flight is never cut
        // off (the platform may have rotated the refresh token already).
        const LIMIT: Duration = Duration::from_secs(40);
        let pollers = if self.leased {
            if self.pollers.entries().await != config.pollers {
                tracing::warn!(
                    "SIGHUP: pollers share leases in the cql store: changed pollers apply at the next restart"
                );
                serde_json::json!("restart_needed")
            } else {
                serde_json::json!("unchanged")
            }
        } else {
            let changed = self.pollers.reload(&config.pollers, LIMIT).await;
            // Accounts no longer polled keep their stored inquiries until retention: a platform's
            // account deletion still looks under them.
            let mut polled = api.polled_accounts.write().expect("polled accounts lock");
            for (channel, accounts) in http::api::polled_accounts(&config.pollers) {
                polled.entry(channel).or_default().extend(accounts);
            }
            drop(polled);
            if changed != tasks::Changed::default() {
                tracing::info!(started = changed.started, stopped = changed.stopped, "SIGHUP: pollers reloaded");
            }
            serde_json::json!({ "started": changed.started, "stopped": changed.stopped })
        };
        let changed = self.mailboxes.reload(&config.mailboxes, LIMIT).await;
        if changed != tasks::Changed::default() {
            tracing::info!(started = changed.started, stopped = changed.stopped, "SIGHUP: mailboxes reloaded");
        }
        serde_json::json!({
            "pollers": pollers,
            "mailboxes": { "started": changed.started, "stopped": changed.stopped },
        })
    }
}

/// On every SIGHUP, re-reads the config file and, once it validates, takes its credentials (API
/// keys, admin tokens, webhook endpoints and their secrets), the listeners' certificates and the
/// reach-out rules (policies, teams, templates: [`reach::Reach::reload`]), reloads the routing
/// plugins, and starts, stops and restarts pollers (unless they share leases in the CQL store)
/// and mailboxes by their entries ([`Readers`]). The rest (listen addresses, TLS on or off,
/// store, sinks, reach-out senders and alert targets, turning reach-out on) needs a restart. The
/// listeners stay where they were bound: a file that moved `ingest.listen` to loopback cannot
/// open the running, non-loopback listener by dropping every API key.
async fn reload_on_sighup(
    admin: Arc<AdminState>,
    api: Arc<ApiState>,
    tls: ListenersTls,
    ingest_loopback: bool,
    readers: Readers,
) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler; reload plugins with POST /v1/plugins/reload");
        return;
    };
    while hangup.recv().await.is_some() {
        let Some(path) = admin.api.source.clone() else {
            tracing::warn!("SIGHUP: the embedded default has no config file to reload");
            continue;
        };
        // The bytes parsed are the bytes hashed for the audit log.
        let parsed =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(
                |text| Config::validated_from(&text).map(|config| (compliance::sha256_hex(text.as_bytes()), config)),
            );
        let (file_sha256, config) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::error!(error, "SIGHUP: the config does not validate; nothing was reloaded");
                continue;
            }
        };
        if let Err(error) = keeps_the_listener_closed(&config, ingest_loopback) {
            tracing::error!(error, "SIGHUP: nothing was reloaded");
            continue;
        }
        api.auth.reload(&config.auth);
        *api.webhooks.write().expect("webhooks lock") = http::api::webhook_endpoints(&config.webhooks);
        admin.api.reload_tokens(&config.admin);
        tracing::info!(
            api_keys = config.auth.api_keys.len(),
            admin_tokens = config.admin.tokens.len(),
            webhooks = config.webhooks.len(),
            "SIGHUP: credentials reloaded"
        );
        let listeners = [("ingest", &tls.ingest, &config.ingest.tls), ("admin", &tls.admin, &config.admin.tls)];
        for (listener, running, configured) in listeners {
            match (running, configured) {
                (Some(running), Some(files)) => match running.reload(files) {
                    Ok(()) => tracing::info!(listener, "SIGHUP: certificate reloaded"),
                    Err(error) => {
                        tracing::error!(listener, error, "SIGHUP: certificate not reloaded; the old one stays")
                    }
                },
                (None, None) => {}
                _ => tracing::warn!(listener, "SIGHUP: turning tls on or off needs a restart"),
            }
        }
        let reach_outcome = match &api.reach {
            Some(reach) => match reach.reload(&config.reach) {
                Ok(false) => {
                    tracing::info!("SIGHUP: reach-out policies, teams and templates reloaded");
                    "reloaded"
                }
                Ok(true) => {
                    tracing::warn!(
                        "SIGHUP: reach-out policies, teams and templates reloaded; senders, alert targets, dry_run and replies_topic change at the next restart"
                    );
                    "reloaded_restart_pending"
                }
                Err(error) => {
                    tracing::error!(error, "SIGHUP: reach-out settings not reloaded; the previous ones stay");
                    "refused"
                }
            },
            None if reach_configured(&config.reach) => {
                tracing::warn!("SIGHUP: reach-out was off at start; turning it on needs a restart");
                "restart_needed"
            }
            None => "off",
        };
        let reloading = admin.clone();
        let routing = config.routing.clone();
        // Compiling plugins is blocking work.
        let routing_outcome = match tokio::task::spawn_blocking(move || reloading.api.reload_routing(&routing)).await {
            Ok(Ok(())) => {
                tracing::info!("SIGHUP: routing reloaded");
                "reloaded"
            }
            Ok(Err(error)) => {
                tracing::error!(error, "SIGHUP: routing reload refused; the previous routing stays");
                "refused"
            }
            Err(_) => {
                tracing::error!("SIGHUP: reload task failed");
                "refused"
            }
        };
        let readers_outcome = readers.reload(&config, &api).await;
        // Who may call in now, and what routes: in the audit log (ids and hashes, never a secret).
        let event = AuditEvent::new("config.reloaded", "signal:SIGHUP").detail(serde_json::json!({
            "config_sha256": file_sha256,
            "api_keys": config.auth.api_keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
            "admin_tokens": config.admin.tokens.iter().map(|t| &t.id).collect::<Vec<_>>(),
            "webhooks": config.webhooks.iter().map(|w| format!("{}/{}", w.connector, w.account)).collect::<Vec<_>>(),
            "reach": reach_outcome,
            "routing": routing_outcome,
            "readers": readers_outcome,
            "plugins": plugin_versions(&admin.api.plugins.status()),
        }));
        if let Err(err) = api.pipeline.audit(vec![event]).await {
            tracing::error!(error = %err, "SIGHUP: the reload is applied but its audit entry was not written");
        }
    }
}

/// `id@version` (and the shadow candidate's) of every plugin, for the audit log.
fn plugin_versions(status: &[plugins::PluginStatus]) -> Vec<String> {
    let mut versions: Vec<String> = status
        .iter()
        .map(|p| match &p.shadow {
            Some(shadow) => format!("{}@{} (shadow {}; {})", p.id, p.version, shadow.version, p.state),
            None => format!("{}@{} ({})", p.id, p.version, p.state),
        })
        .collect();
    versions.sort();
    versions
}

/// Refuses a reloaded config that would leave the running ingest listener without API keys
/// when it is not on loopback (the file's own `ingest.listen` is not what is bound).
fn keeps_the_listener_closed(config: &Config, ingest_loopback: bool) -> Result<(), &'static str> {
    if config.auth.api_keys.is_empty() && !ingest_loopback {
        return Err("the ingest listener is not on loopback and the file has no auth.api_keys");
    }
    Ok(())
}

/// The configured sinks, in a fixed order (registration is here, in one place), and the Kafka
/// sinks by their type, the main cluster first (reach-out publishes SLA events with them).
fn build_sinks(config: &Config) -> Result<(Vec<Arc<dyn Sink>>, Vec<Arc<KafkaSink>>), StartError> {
    let mut built: Vec<Arc<dyn Sink>> = Vec::new();
    let mut kafka_sinks = Vec::new();
    let reach = !config.reach.sla_policies.is_empty();
    // The main cluster first (`None`), then the regional ones by name.
    let regional = config.sinks.kafka_regional.iter().map(|(name, kafka)| (Some(name), kafka));
    for (region, kafka) in config.sinks.kafka.iter().map(|kafka| (None, kafka)).chain(regional) {
        let name = sink_name("kafka", region);
        if !kafka.security_protocol().contains("ssl") && !kafka.brokers_are_loopback() {
            tracing::warn!(sink = name, brokers = %kafka.brokers,
                "kafka traffic is not encrypted: set security.protocol = \"sasl_ssl\" or \"ssl\" in its properties");
        }
        // The replies topic is read from the main cluster only.
        let replies = region.is_none().then(|| config.reach.replies_topic.clone()).flatten();
        let kafka = Arc::new(KafkaSink::new(name, kafka, &config.retention, reach, replies)?);
        built.push(kafka.clone());
        kafka_sinks.push(kafka);
    }
    let regional = config.sinks.cql_regional.iter().map(|(name, cql)| (Some(name), cql));
    for (region, cql) in config.sinks.cql.iter().map(|cql| (None, cql)).chain(regional) {
        let name = sink_name("cql", region);
        if cql.tls.is_none() && !cql.contact_points_are_loopback() {
            tracing::warn!(sink = name, contact_points = ?cql.contact_points,
                "cql traffic is not encrypted: configure its tls");
        }
        built.push(Arc::new(CqlSink::new(name, cql, &config.retention)?));
    }
    Ok((built, kafka_sinks))
}

/// The sink name of a main cluster (`kafka`, `cql`) or of a regional one (`kafka-us`). Built once
/// per process from the configuration: a regional name lives as long as the process.
fn sink_name(kind: &'static str, region: Option<&String>) -> &'static str {
    match region {
        None => kind,
        Some(region) => Box::leak(format!("{kind}-{region}").into_boxed_str()),
    }
}

/// The reach-out tasks: the SLA timers, and one deliverer per destination (each Kafka cluster's
/// `sla.events.v1`, each alert target).
fn spawn_reach(
    reach: &Arc<reach::Reach>,
    kafka_sinks: &[Arc<KafkaSink>],
    store: &Store,
    stop: &watch::Receiver<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let dry_run = reach.dry_run();
    use futures_util::FutureExt;
    let mut tasks = vec![tokio::spawn(reach::run_timers(reach.clone(), store.clone(), stop.clone()))];
    // One queue per Kafka cluster, named after its sink (the main one's is `kafka`).
    for kafka in kafka_sinks {
        let queue = kafka.name().to_owned();
        let kafka = kafka.clone();
        let send = move |events: Vec<reach::sla::SlaEvent>| {
            let kafka = kafka.clone();
            async move { kafka.publish_sla(&events).await }.boxed()
        };
        tasks.push(tokio::spawn(reach::deliver_queue(reach.clone(), store.clone(), queue, 500, stop.clone(), send)));
    }
    let client = Arc::new(poll::client());
    for target in reach.targets() {
        let (client, target_config) = (client.clone(), Arc::new(target.clone()));
        let send = move |events: Vec<reach::sla::SlaEvent>| {
            let (client, target) = (client.clone(), target_config.clone());
            let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
            async move { reach::alerts::send(&client, &target, events, now, dry_run).await }.boxed()
        };
        let queue = reach::alert_queue(&target.id);
        let batch = target.max_batch;
        tasks.push(tokio::spawn(reach::deliver_queue(reach.clone(), store.clone(), queue, batch, stop.clone(), send)));
    }
    tasks
}

/// Creates the Kafka topics and migrates the CQL schema of `config`, then returns: of every
/// cluster, also those whose `create_topics` / `migrate` is off (the gateways then leave it to
/// this command).
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    config.validate()?;
    let mut config = config.clone();
    for kafka in config.sinks.kafka.iter_mut().chain(config.sinks.kafka_regional.values_mut()) {
        kafka.create_topics = true;
    }
    for cql in config.sinks.cql.iter_mut().chain(config.sinks.cql_regional.values_mut()) {
        cql.migrate = true;
    }
    for sink in build_sinks(&config)?.0 {
        sink.prepare().await?;
        tracing::info!(sink = sink.name(), "sink prepared");
    }
    Ok(())
}

fn open_store(config: &Config) -> Result<Store, StoreError> {
    Store::open(&config.store.path)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_never_drops_the_keys_of_a_listener_that_is_not_on_loopback() {
        let keyless = Config::from_toml("[ingest]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert!(keeps_the_listener_closed(&keyless, false).is_err(), "bound on 0.0.0.0: refused");
        assert!(keeps_the_listener_closed(&keyless, true).is_ok(), "bound on loopback: allowed");
        let keyed =
            Config::from_toml("[[auth.api_keys]]\nid = \"a\"\nkey = \"long-enough-key-0001\"\naccounts = [\"*\"]\n")
                .unwrap();
        assert!(keeps_the_listener_closed(&keyed, false).is_ok());
    }
}
