//! WebAssembly routing plugins: the [`PluginRouter`] implements the pipeline's [`Router`] with
//! chains of sandboxed plugins (ABI v1, `docs/plugin-abi.md`).
//!
//! - [`sandbox`]: the wasmtime engine, deadlines, memory caps, fuel, failure classification.
//! - [`host`]: the host functions a plugin may be granted, and the agent directory.
//! - [`codec`]: inquiries into ABI records, plugin routes into decisions.
//! - [`harness`]: `inquiry-gateway plugin test` and `plugin bench`.
//!
//! A failing plugin never stops the pipeline: its inquiries go down the fallback route with the
//! reason (dead letter, metric), a failed batch is retried inquiry by inquiry so that one bad
//! record does not fail its batch, and a plugin that keeps failing is quarantined for a while.

pub mod codec;
pub mod harness;
pub mod host;
pub mod sandbox;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use inquiry_connectors::{Channel, Inquiry};
use inquiry_plugin_sdk::{wire, Outcome};
use metrics::{counter, gauge, histogram};
use serde::Serialize;
use uuid::Uuid;

use self::host::{AgentDirectory, PluginContext};
use self::sandbox::{Failure, Plugin, Sandbox};
use crate::config::{PluginConfig, RoutingConfig};
use crate::routing::{Decision, FallbackRouter, RouteOutcome, Router};
use crate::telemetry;

/// A failed batch is retried inquiry by inquiry; after this many in a row fail the same way,
/// the rest of the batch is failed without retrying.
const ISOLATION_STREAK: usize = 3;
/// Disagreement samples kept per shadowed plugin.
const SHADOW_SAMPLES: usize = 50;
/// Batches that may wait for a shadow candidate; more are skipped (and counted).
const SHADOW_QUEUE: usize = 64;

/// Routes with chains of WebAssembly plugins; hot-reloadable, also from no plugins at all (then
/// every inquiry is left to the fallback route).
pub struct PluginRouter {
    /// The engine, made when the first plugin is loaded (it reserves the plugins' memory).
    sandbox: OnceLock<Sandbox>,
    /// The fallback route, replaced with each reloaded configuration.
    fallback: FallbackRouter,
    agents: Arc<AgentDirectory>,
    current: RwLock<Arc<Routing>>,
    /// Compiled modules by SHA-256, so a reload recompiles only what changed.
    modules: Mutex<HashMap<String, wasmtime::Module>>,
    /// Key-value maps by plugin id, kept across reloads.
    kv: Mutex<HashMap<String, Arc<DashMap<String, i64>>>>,
    /// File stamps of the last reload that failed, so a broken file is tried once per change.
    failed_stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
    /// The batch encoding buffer, reused across batches.
    buffer: Mutex<Vec<u8>>,
    /// Held by a reload from reading the current generation to swapping in the next, so that
    /// reloads from the file watcher, SIGHUP and the admin API never overwrite each other.
    reload_lock: Mutex<()>,
}

/// One generation of the routing configuration: chains of loaded plugins. A batch uses the
/// generation it started with, so a reload never changes a batch in flight.
pub struct Routing {
    config: RoutingConfig,
    slots: BTreeMap<String, Arc<Slot>>,
    chains: Vec<Chain>,
    /// Plugin files and how they looked when loaded, to notice changes.
    files: Vec<(PathBuf, Option<(SystemTime, u64)>)>,
    /// SHA-256 of the modules this generation uses.
    digests: Vec<String>,
}

struct Chain {
    channel: Option<Channel>,
    account: Option<String>,
    slots: Vec<Arc<Slot>>,
}

/// A plugin of the routing configuration: loaded (or why not), its breaker and its shadow.
struct Slot {
    id: String,
    version: String,
    decided_by: String,
    plugin: Result<Plugin, Failure>,
    breaker: Mutex<Breaker>,
    shadow: Option<Shadow>,
}

/// The circuit breaker of a plugin: quarantined after consecutive failed batches.
#[derive(Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// A candidate version running beside the live one.
struct Shadow {
    version: String,
    jobs: SyncSender<ShadowJob>,
    stats: Arc<ShadowStats>,
}

struct ShadowJob {
    inquiries: Vec<Inquiry>,
    live: Vec<RouteOutcome>,
}

/// Agreement between a live plugin and its shadow candidate.
#[derive(Default)]
pub struct ShadowStats {
    agree: AtomicU64,
    disagree: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    samples: Mutex<VecDeque<ShadowSample>>,
}

/// One inquiry the live and the candidate version decided differently.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSample {
    /// The inquiry.
    pub inquiry_id: Uuid,
    /// The live decision, summarized (assignee left out: round-robin state differs).
    pub live: String,
    /// The candidate's decision, summarized.
    pub candidate: String,
}

/// What `GET /v1/plugins` shows of one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    /// Plugin id.
    pub id: String,
    /// Version label.
    pub version: String,
    /// `ok`, `quarantined`, or `broken` (it could not be loaded).
    pub state: &'static str,
    /// Why it is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The shadow candidate, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// What `GET /v1/plugins` shows of a shadow candidate.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStatus {
    /// Candidate version label.
    pub version: String,
    /// Inquiries both versions decided alike.
    pub agree: u64,
    /// Inquiries they decided differently.
    pub disagree: u64,
    /// Inquiries the candidate failed on.
    pub failed: u64,
    /// Inquiries not shadowed because the candidate fell behind.
    pub skipped: u64,
    /// The latest disagreements.
    pub samples: Vec<ShadowSample>,
}

/// Which version of a plugin a replay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVersion {
    /// The live version.
    Live,
    /// The shadow candidate.
    Shadow,
}

/// Why a reload or replay was refused.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A plugin could not be loaded; the previous generation stays.
    #[error("plugin `{id}`: {failure}")]
    Load {
        /// Plugin id.
        id: String,
        /// Why.
        failure: Failure,
    },
    /// The engine could not be created.
    #[error("sandbox: {0}")]
    Sandbox(Failure),
    /// No such plugin (or it has no shadow).
    #[error("no plugin `{0}`")]
    Unknown(String),
    /// The new configuration needs a restart.
    #[error("{0}")]
    NeedsRestart(&'static str),
}

impl PluginRouter {
    /// Loads every configured plugin (none: every inquiry is left to `fallback` until a reload
    /// adds some). A plugin that cannot be loaded does not stop the gateway: its inquiries take
    /// the fallback route with the reason, until a reload fixes it.
    pub fn new(config: &RoutingConfig, fallback: FallbackRouter) -> Result<PluginRouter, PluginError> {
        let router = PluginRouter {
            sandbox: OnceLock::new(),
            fallback,
            agents: Arc::new(AgentDirectory::new(&config.agents)),
            current: RwLock::new(Arc::new(Routing::empty())),
            modules: Mutex::new(HashMap::new()),
            kv: Mutex::new(HashMap::new()),
            failed_stamps: Mutex::new(Vec::new()),
            buffer: Mutex::new(Vec::new()),
            reload_lock: Mutex::new(()),
        };
        let sandbox = router.sandbox_for(config)?;
        let routing = router.build(config, sandbox.as_ref(), false)?;
        if let Some(sandbox) = sandbox {
            let _ = router.sandbox.set(sandbox);
        }
        *router.current.write().expect("routing lock") = Arc::new(routing);
        Ok(router)
    }

    /// The engine to load `config`'s plugins with: the router's, or (before its first plugins) a
    /// new one with fuel metering when any of them meters fuel (an engine cannot turn it on
    /// later), which the router keeps once a generation built with it is in force. None without
    /// plugins.
    fn sandbox_for(&self, config: &RoutingConfig) -> Result<Option<Sandbox>, PluginError> {
        if config.plugins.is_empty() {
            return Ok(None);
        }
        if let Some(sandbox) = self.sandbox.get() {
            return Ok(Some(sandbox.clone()));
        }
        let fuel = config.plugins.iter().any(|p| p.limits.fuel_per_record.is_some());
        Sandbox::new(fuel).map(Some).map_err(PluginError::Sandbox)
    }

    /// The agent directory plugins read.
    pub fn agents(&self) -> &Arc<AgentDirectory> {
        &self.agents
    }

    /// Whether any chain is configured (else every inquiry takes the fallback route).
    pub fn is_empty(&self) -> bool {
        self.current().chains.is_empty()
    }

    fn current(&self) -> Arc<Routing> {
        self.current.read().expect("routing lock").clone()
    }

    /// Loads `config` (or, when None, the current configuration's files anew) and swaps it in
    /// atomically; when any plugin fails to load, nothing changes and the error says which.
    pub fn reload(&self, config: Option<&RoutingConfig>) -> Result<(), PluginError> {
        let _one_at_a_time = self.reload_lock.lock().expect("reload lock");
        let current = self.current();
        let config = config.unwrap_or(&current.config);
        let meters_fuel = self.sandbox.get().is_none_or(Sandbox::meters_fuel);
        if config.plugins.iter().any(|p| p.limits.fuel_per_record.is_some()) && !meters_fuel {
            counter!(telemetry::PLUGIN_RELOADS, "result" => "error").increment(1);
            return Err(PluginError::NeedsRestart("fuel_per_record was not set at start-up: restart to meter fuel"));
        }
        let built =
            self.sandbox_for(config).and_then(|sandbox| Ok((self.build(config, sandbox.as_ref(), true)?, sandbox)));
        match built {
            Ok((routing, sandbox)) => {
                if let Some(sandbox) = sandbox {
                    // Under the reload lock: nobody else sets it meanwhile.
                    let _ = self.sandbox.set(sandbox);
                }
                self.agents.reconfigure(&config.agents);
                self.fallback.replace(config.fallback.clone());
                // Compiled modules no generation uses any more are dropped.
                let used: std::collections::HashSet<&str> = routing.digests.iter().map(String::as_str).collect();
                self.modules.lock().expect("module cache").retain(|digest, _| used.contains(digest.as_str()));
                *self.current.write().expect("routing lock") = Arc::new(routing);
                counter!(telemetry::PLUGIN_RELOADS, "result" => "ok").increment(1);
                tracing::info!(
                    plugins = config.plugins.len(),
                    chains = config.chains.len(),
                    "routing plugins reloaded"
                );
                Ok(())
            }
            Err(err) => {
                if self.sandbox.get().is_none() {
                    // Modules compiled with the engine just dropped cannot run on the next one.
                    self.modules.lock().expect("module cache").clear();
                }
                counter!(telemetry::PLUGIN_RELOADS, "result" => "error").increment(1);
                tracing::error!(error = %err, "plugin reload refused; the previous plugins stay");
                Err(err)
            }
        }
    }

    /// Reloads when a plugin file changed since it was loaded; true when it reloaded.
    pub fn reload_if_changed(&self) -> bool {
        let current = self.current();
        let stamps: Vec<_> = current.files.iter().map(|(path, _)| file_stamp(path)).collect();
        let changed = current.files.iter().zip(&stamps).any(|((_, seen), now)| now != seen);
        if !changed || *self.failed_stamps.lock().expect("stamps") == stamps {
            return false;
        }
        let reloaded = self.reload(None).is_ok();
        *self.failed_stamps.lock().expect("stamps") = if reloaded { Vec::new() } else { stamps };
        reloaded
    }

    /// The state of every plugin.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.current().slots.values().map(|slot| slot.status()).collect()
    }

    /// Routes `inquiries` through one plugin version alone, without breaker or shadow effects
    /// (replay of stored inquiries).
    pub fn replay(
        &self,
        id: &str,
        version: ReplayVersion,
        inquiries: &[&Inquiry],
    ) -> Result<Vec<RouteOutcome>, PluginError> {
        let current = self.current();
        let slot = current.slots.get(id).ok_or_else(|| PluginError::Unknown(id.to_owned()))?;
        let mut buf = Vec::new();
        match version {
            ReplayVersion::Live => Ok(match &slot.plugin {
                Ok(plugin) => run(plugin, inquiries, &slot.decided_by, &mut buf).0,
                Err(failure) => failed_all(inquiries.len(), failure),
            }),
            ReplayVersion::Shadow => {
                let candidate = current
                    .config
                    .plugins
                    .iter()
                    .find(|p| p.id == id)
                    .and_then(candidate_config)
                    .ok_or_else(|| PluginError::Unknown(format!("{id} (shadow)")))?;
                let sandbox = self.sandbox.get().ok_or_else(|| PluginError::Unknown(id.to_owned()))?;
                let (plugin, version) = self.load(sandbox, &candidate, Arc::new(DashMap::new()), &mut Vec::new());
                let decided_by = format!("plugin:{id}@{version}");
                Ok(match plugin {
                    Ok(plugin) => run(&plugin, inquiries, &decided_by, &mut buf).0,
                    Err(failure) => failed_all(inquiries.len(), &failure),
                })
            }
        }
    }

    /// Builds a generation; `strict`: any plugin that fails to load fails the build.
    fn build(&self, config: &RoutingConfig, sandbox: Option<&Sandbox>, strict: bool) -> Result<Routing, PluginError> {
        let mut slots = BTreeMap::new();
        let mut files = Vec::new();
        let mut digests = Vec::new();
        for plugin_config in &config.plugins {
            let sandbox = sandbox.expect("sandbox_for makes one for a config with plugins");
            let kv = self.kv.lock().expect("kv maps").entry(plugin_config.id.clone()).or_default().clone();
            files.push((plugin_config.path.clone(), file_stamp(&plugin_config.path)));
            let (plugin, version) = self.load(sandbox, plugin_config, kv, &mut digests);
            if let Err(failure) = &plugin {
                if strict {
                    return Err(PluginError::Load { id: plugin_config.id.clone(), failure: failure.clone() });
                }
                tracing::error!(plugin = %plugin_config.id, error = %failure,
                    "plugin not loaded; its inquiries take the fallback route");
            }
            let shadow = candidate_config(plugin_config).map(|candidate_config| {
                files.push((candidate_config.path.clone(), file_stamp(&candidate_config.path)));
                let (candidate, version) =
                    self.load(sandbox, &candidate_config, Arc::new(DashMap::new()), &mut digests);
                // Live routing never depends on the candidate: told, not refused.
                if let Err(failure) = &candidate {
                    tracing::error!(plugin = %plugin_config.id, error = %failure,
                        "shadow candidate not loaded; its comparisons all count as failed");
                }
                Shadow::start(&plugin_config.id, candidate, version)
            });
            gauge!(telemetry::PLUGIN_LOADED, "plugin" => plugin_config.id.clone()).set(if plugin.is_ok() {
                1.0
            } else {
                0.0
            });
            gauge!(telemetry::PLUGIN_QUARANTINED, "plugin" => plugin_config.id.clone()).set(0.0);
            let slot = Slot {
                decided_by: format!("plugin:{}@{version}", plugin_config.id),
                id: plugin_config.id.clone(),
                version,
                plugin,
                breaker: Mutex::new(Breaker::default()),
                shadow,
            };
            slots.insert(plugin_config.id.clone(), Arc::new(slot));
        }
        let chains = config
            .chains
            .iter()
            .map(|chain| Chain {
                channel: chain.channel.as_deref().and_then(|c| c.parse().ok()),
                account: chain.account.clone(),
                slots: chain.plugins.iter().filter_map(|id| slots.get(id).cloned()).collect(),
            })
            .collect();
        Ok(Routing { config: config.clone(), slots, chains, files, digests })
    }

    /// Reads, compiles (or takes from the cache) and links one plugin; returns it (or why not)
    /// and its version label, and notes the module's digest in `digests`.
    fn load(
        &self,
        sandbox: &Sandbox,
        config: &PluginConfig,
        kv: Arc<DashMap<String, i64>>,
        digests: &mut Vec<String>,
    ) -> (Result<Plugin, Failure>, String) {
        let bytes = match std::fs::read(&config.path) {
            Ok(bytes) => bytes,
            Err(err) => {
                let version = config.version.clone().unwrap_or_else(|| "unknown".to_owned());
                return (Err(Failure::Unavailable(format!("cannot read {}: {err}", config.path.display()))), version);
            }
        };
        let digest = crate::compliance::sha256_hex(&bytes);
        digests.push(digest.clone());
        let mut settings = Vec::new();
        let texts = crate::config::plugin_setting_texts(&config.settings);
        wire::encode_settings(&mut settings, texts.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let version = config.version.clone().unwrap_or_else(|| default_version(&digest, &texts, &settings));
        let cached = self.modules.lock().expect("module cache").get(&digest).cloned();
        let module = match cached {
            Some(module) => Ok(module),
            None => sandbox.compile(&bytes).inspect(|module| {
                self.modules.lock().expect("module cache").insert(digest.clone(), module.clone());
            }),
        };
        let context = Arc::new(PluginContext::new(
            &config.id,
            &config.capabilities,
            config.limits.clone(),
            self.agents.clone(),
            kv,
            settings,
        ));
        (module.and_then(|module| sandbox.prepare(&module, context)), version)
    }
}

/// A plugin's version label when the config gives none: the first 12 hex digits of the module's
/// SHA-256, and with settings `+` the first 8 of their encoding's, so decisions name the
/// settings that made them too.
fn default_version(module_digest: &str, texts: &[(String, String)], encoded_settings: &[u8]) -> String {
    if texts.is_empty() {
        return module_digest[..12].to_owned();
    }
    format!("{}+{}", &module_digest[..12], &crate::compliance::sha256_hex(encoded_settings)[..8])
}

impl Routing {
    fn empty() -> Routing {
        Routing {
            config: RoutingConfig::default(),
            slots: BTreeMap::new(),
            chains: Vec::new(),
            files: Vec::new(),
            digests: Vec::new(),
        }
    }

    fn chain_for(&self, inquiry: &Inquiry) -> Option<usize> {
        self.chains.iter().position(|chain| {
            chain.channel.is_none_or(|c| c == inquiry.channel)
                && chain.account.as_deref().is_none_or(|a| a == inquiry.account)
        })
    }
}

impl Router for PluginRouter {
    fn route(&self, batch: &[&Inquiry]) -> Vec<RouteOutcome> {
        let routing = self.current();
        let mut outcomes = vec![RouteOutcome::Undecided; batch.len()];
        let mut by_chain: Vec<Vec<usize>> = vec![Vec::new(); routing.chains.len()];
        for (i, inquiry) in batch.iter().enumerate() {
            if let Some(chain) = routing.chain_for(inquiry) {
                by_chain[chain].push(i);
            }
        }
        let mut buf = self.buffer.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default();
        for (chain, mut pending) in routing.chains.iter().zip(by_chain) {
            for slot in &chain.slots {
                if pending.is_empty() {
                    break;
                }
                let subset: Vec<&Inquiry> = pending.iter().map(|&i| batch[i]).collect();
                let results = slot.route(&subset, &mut buf);
                let mut undecided = Vec::new();
                for (i, outcome) in pending.into_iter().zip(results) {
                    match outcome {
                        RouteOutcome::Undecided => undecided.push(i),
                        decided_or_failed => outcomes[i] = decided_or_failed,
                    }
                }
                pending = undecided;
            }
        }
        if let Ok(mut kept) = self.buffer.lock() {
            *kept = buf; // the next batch encodes into the same allocation
        }
        outcomes
    }
}

impl Slot {
    /// Routes `subset` through this plugin: one outcome per inquiry; `Undecided` passes it on.
    fn route(&self, subset: &[&Inquiry], buf: &mut Vec<u8>) -> Vec<RouteOutcome> {
        let plugin = match &self.plugin {
            Ok(plugin) => plugin,
            Err(failure) => return self.failed(subset.len(), failure),
        };
        let limits = &plugin.context().limits;
        if !self.breaker.lock().expect("breaker").admits() {
            return self.failed(subset.len(), &Failure::Quarantined);
        }
        let started = Instant::now();
        let (outcomes, batch_failure) = run(plugin, subset, &self.decided_by, buf);
        histogram!(telemetry::PLUGIN_DURATION, "plugin" => self.id.clone()).record(started.elapsed().as_secs_f64());
        {
            let mut breaker = self.breaker.lock().expect("breaker");
            // A batch whose retries routed some inquiries alone failed on its inputs, not for the
            // plugin's own sake: not counted either way (a buyer sending a poison message again
            // and again must not quarantine the plugin for every account).
            // Only failures an input causes (a trap, bad output), every inquiry retried alone
            // (none cut off), and some of them routed: a timeout or a limit is the plugin's own.
            let some_routed = outcomes.iter().any(|o| !matches!(o, RouteOutcome::Failed { .. }));
            let all_retried = !outcomes
                .iter()
                .any(|o| matches!(o, RouteOutcome::Failed { detail, .. } if detail.starts_with("not retried")));
            let on_its_inputs = |failure: &Failure| matches!(failure.reason(), "plugin_trap" | "plugin_bad_output");
            match &batch_failure {
                None => breaker.succeeded(&self.id),
                Some(failure) if some_routed && all_retried && on_its_inputs(failure) => {
                    tracing::warn!(plugin = %self.id, version = %self.version, reason = failure.reason(),
                        error = %failure, inquiries = subset.len(), "plugin batch failed; retried alone, the rest routed");
                    // It works for the other inputs (a half-open trial closes).
                    breaker.succeeded(&self.id);
                }
                Some(failure) => {
                    tracing::warn!(plugin = %self.id, version = %self.version, reason = failure.reason(),
                        error = %failure, inquiries = subset.len(), "plugin batch failed");
                    breaker.failed(
                        &self.id,
                        limits.quarantine_after_failures,
                        Duration::from_millis(limits.quarantine_ms),
                    );
                }
            }
        }
        self.count(&outcomes);
        if let Some(shadow) = &self.shadow {
            shadow.offer(subset, &outcomes);
        }
        outcomes
    }

    fn failed(&self, count: usize, failure: &Failure) -> Vec<RouteOutcome> {
        let outcomes = failed_all(count, failure);
        self.count(&outcomes);
        outcomes
    }

    /// Counts a batch's outcomes: one metric update per outcome kind and failure reason.
    fn count(&self, outcomes: &[RouteOutcome]) {
        let (mut decided, mut undecided) = (0u64, 0u64);
        let mut failures: Vec<(&'static str, u64)> = Vec::new();
        for outcome in outcomes {
            match outcome {
                RouteOutcome::Decided(_) => decided += 1,
                RouteOutcome::Undecided => undecided += 1,
                RouteOutcome::Failed { reason, .. } => match failures.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, n)) => *n += 1,
                    None => failures.push((reason, 1)),
                },
            }
        }
        let failed = failures.iter().map(|(_, n)| n).sum::<u64>();
        for (label, n) in [("decided", decided), ("undecided", undecided), ("failed", failed)] {
            if n > 0 {
                counter!(telemetry::PLUGIN_OUTCOMES, "plugin" => self.id.clone(), "outcome" => label).increment(n);
            }
        }
        for (reason, n) in failures {
            counter!(telemetry::PLUGIN_FAILURES, "plugin" => self.id.clone(), "reason" => reason).increment(n);
        }
    }

    fn status(&self) -> PluginStatus {
        let quarantined = !self.breaker.lock().expect("breaker").is_closed();
        PluginStatus {
            id: self.id.clone(),
            version: self.version.clone(),
            state: match (&self.plugin, quarantined) {
                (Err(_), _) => "broken",
                (Ok(_), true) => "quarantined",
                (Ok(_), false) => "ok",
            },
            error: self.plugin.as_ref().err().map(ToString::to_string),
            shadow: self.shadow.as_ref().map(|shadow| ShadowStatus {
                version: shadow.version.clone(),
                agree: shadow.stats.agree.load(Ordering::Relaxed),
                disagree: shadow.stats.disagree.load(Ordering::Relaxed),
                failed: shadow.stats.failed.load(Ordering::Relaxed),
                skipped: shadow.stats.skipped.load(Ordering::Relaxed),
                samples: shadow.stats.samples.lock().expect("samples").iter().cloned().collect(),
            }),
        }
    }
}

/// Runs `subset` through `plugin`. When the whole batch fails, retries it inquiry by inquiry so
/// that only the inquiries the plugin really fails on are failed; returns the outcomes and the
/// batch's failure, if it had one. The retries get the batch's own deadline once more, in all:
/// a plugin that fails every other inquiry alone (each failure starts a new instance) must not
/// hold the pipeline's one routing thread for minutes.
fn run(
    plugin: &Plugin,
    subset: &[&Inquiry],
    decided_by: &str,
    buf: &mut Vec<u8>,
) -> (Vec<RouteOutcome>, Option<Failure>) {
    let limits = &plugin.context().limits;
    let budget = Duration::from_micros(limits.batch_timeout_ms * 1000 + limits.record_timeout_us * subset.len() as u64);
    run_within(plugin, subset, decided_by, buf, budget)
}

/// [`run`], with `budget` for retrying a failed batch inquiry by inquiry.
fn run_within(
    plugin: &Plugin,
    subset: &[&Inquiry],
    decided_by: &str,
    buf: &mut Vec<u8>,
    budget: Duration,
) -> (Vec<RouteOutcome>, Option<Failure>) {
    codec::encode_batch(subset, buf);
    let failure = match plugin.route(buf, subset.len()) {
        Ok(results) => return (convert(results, subset, decided_by), None),
        Err(failure) => failure,
    };
    if subset.len() == 1 {
        return (failed_all(1, &failure), Some(failure));
    }
    let mut outcomes = Vec::with_capacity(subset.len());
    let mut streak: Option<(&'static str, usize)> = None;
    let started = Instant::now();
    for inquiry in subset {
        if started.elapsed() > budget {
            let detail = "not retried: the retries used up the batch's deadline".to_owned();
            outcomes.push(RouteOutcome::Failed { reason: failure.reason(), detail });
            continue;
        }
        if let Some((reason, n)) = streak {
            if n >= ISOLATION_STREAK {
                let detail = format!("not retried: {ISOLATION_STREAK} inquiries in a row failed alone ({reason})");
                outcomes.push(RouteOutcome::Failed { reason, detail });
                continue;
            }
        }
        codec::encode_batch(&[inquiry], buf);
        match plugin.route_one(buf) {
            Ok(results) => {
                streak = None;
                outcomes.extend(convert(results, &[inquiry], decided_by));
            }
            Err(alone) => {
                streak = match streak {
                    Some((reason, n)) if reason == alone.reason() => Some((reason, n + 1)),
                    _ => Some((alone.reason(), 1)),
                };
                outcomes.extend(failed_all(1, &alone));
            }
        }
    }
    (outcomes, Some(failure))
}

/// Plugin results into route outcomes.
fn convert(results: Vec<Result<Outcome, wire::WireError>>, subset: &[&Inquiry], decided_by: &str) -> Vec<RouteOutcome> {
    results
        .into_iter()
        .zip(subset)
        .map(|(result, inquiry)| match result {
            Ok(Outcome::Route(route)) => match codec::decision(route, inquiry, decided_by) {
                Ok(decision) => RouteOutcome::Decided(decision),
                Err(detail) => RouteOutcome::Failed { reason: "plugin_bad_output", detail },
            },
            Ok(Outcome::Undecided) => RouteOutcome::Undecided,
            Ok(Outcome::Failed(detail)) => {
                RouteOutcome::Failed { reason: "plugin_error", detail: detail.chars().take(300).collect() }
            }
            Err(err) => RouteOutcome::Failed { reason: "plugin_bad_output", detail: err.to_string() },
        })
        .collect()
}

fn failed_all(count: usize, failure: &Failure) -> Vec<RouteOutcome> {
    vec![RouteOutcome::Failed { reason: failure.reason(), detail: failure.to_string() }; count]
}

impl Breaker {
    /// Closed, or open but past its quarantine (then one batch may try: half-open).
    fn admits(&self) -> bool {
        self.open_until.is_none_or(|until| Instant::now() >= until)
    }

    fn is_closed(&self) -> bool {
        self.open_until.is_none()
    }

    fn succeeded(&mut self, id: &str) {
        if self.open_until.take().is_some() {
            tracing::info!(plugin = %id, "plugin recovered; quarantine lifted");
            gauge!(telemetry::PLUGIN_QUARANTINED, "plugin" => id.to_owned()).set(0.0);
        }
        self.consecutive_failures = 0;
    }

    fn failed(&mut self, id: &str, threshold: u32, quarantine: Duration) {
        self.consecutive_failures += 1;
        if self.consecutive_failures >= threshold {
            self.open_until = Some(Instant::now() + quarantine);
            gauge!(telemetry::PLUGIN_QUARANTINED, "plugin" => id.to_owned()).set(1.0);
            tracing::error!(plugin = %id, failures = self.consecutive_failures, quarantine_ms = quarantine.as_millis() as u64,
                "plugin quarantined: its inquiries take the fallback route");
        }
    }
}

impl Shadow {
    /// Starts the thread that runs `candidate` on copies of the live traffic.
    fn start(id: &str, candidate: Result<Plugin, Failure>, version: String) -> Shadow {
        let (jobs, receiver) = sync_channel::<ShadowJob>(SHADOW_QUEUE);
        let stats = Arc::new(ShadowStats::default());
        let thread_stats = stats.clone();
        let id = id.to_owned();
        let thread_id = id.clone();
        let decided_by = format!("plugin:{id}@{version}");
        let spawned = std::thread::Builder::new().name(format!("shadow-{id}")).spawn(move || {
            let mut buf = Vec::new();
            // Ends when the generation holding the sender is replaced.
            while let Ok(job) = receiver.recv() {
                let refs: Vec<&Inquiry> = job.inquiries.iter().collect();
                let candidate_outcomes = match &candidate {
                    Ok(plugin) => run(plugin, &refs, &decided_by, &mut buf).0,
                    Err(failure) => failed_all(refs.len(), failure),
                };
                for ((inquiry, live), candidate) in job.inquiries.iter().zip(&job.live).zip(&candidate_outcomes) {
                    thread_stats.compare(&thread_id, inquiry.id, live, candidate);
                }
            }
        });
        if let Err(err) = spawned {
            tracing::error!(plugin = %id, error = %err, "shadow thread not started");
        }
        Shadow { version, jobs, stats }
    }

    /// Queues a copy of a routed batch for the candidate; skips it when the candidate lags.
    fn offer(&self, subset: &[&Inquiry], live: &[RouteOutcome]) {
        let job = ShadowJob { inquiries: subset.iter().map(|i| (*i).clone()).collect(), live: live.to_vec() };
        if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = self.jobs.try_send(job) {
            self.stats.skipped.fetch_add(job.inquiries.len() as u64, Ordering::Relaxed);
        }
    }
}

impl ShadowStats {
    fn compare(&self, id: &str, inquiry_id: Uuid, live: &RouteOutcome, candidate: &RouteOutcome) {
        let (live, candidate) = (summary(live), summary(candidate));
        let result = if candidate.starts_with("failed") {
            self.failed.fetch_add(1, Ordering::Relaxed);
            "failed"
        } else if live == candidate {
            self.agree.fetch_add(1, Ordering::Relaxed);
            "agree"
        } else {
            self.disagree.fetch_add(1, Ordering::Relaxed);
            "disagree"
        };
        counter!(telemetry::PLUGIN_SHADOW, "plugin" => id.to_owned(), "result" => result).increment(1);
        if result != "agree" {
            let mut samples = self.samples.lock().expect("samples");
            if samples.len() == SHADOW_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(ShadowSample { inquiry_id, live, candidate });
        }
    }
}

/// A comparable summary of an outcome; the assignee and who decided are left out.
fn summary(outcome: &RouteOutcome) -> String {
    match outcome {
        RouteOutcome::Decided(Decision {
            disposition,
            queue,
            priority,
            tags,
            language,
            reply_template,
            sla_policy,
            ..
        }) => {
            let mut tags = tags.clone();
            tags.sort();
            format!(
                "{disposition:?} queue={queue} priority={priority:?} tags={} language={} template={} sla={}",
                tags.join(","),
                language.as_deref().unwrap_or("-"),
                reply_template.as_deref().unwrap_or("-"),
                sla_policy.as_deref().unwrap_or("-"),
            )
        }
        RouteOutcome::Undecided => "undecided".to_owned(),
        RouteOutcome::Failed { reason, .. } => format!("failed {reason}"),
    }
}

/// The configuration of `plugin`'s shadow candidate: the plugin's, with the candidate's module.
fn candidate_config(plugin: &PluginConfig) -> Option<PluginConfig> {
    let shadow = plugin.shadow.as_ref()?;
    Some(PluginConfig {
        // Its logs and counters are its own, not the live plugin's (`<id>/shadow`).
        id: format!("{}/shadow", plugin.id),
        path: shadow.path.clone().unwrap_or_else(|| plugin.path.clone()),
        version: shadow.version.clone(),
        settings: shadow.settings.clone().unwrap_or_else(|| plugin.settings.clone()),
        shadow: None,
        ..plugin.clone()
    })
}

/// Modification time and size of a file, to notice a new version.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Starts the thread that reloads plugins whose files changed, every `interval`, and tells
/// `reloaded` what runs after each reload (for the audit log); it ends when the router is dropped.
pub fn watch(router: &Arc<PluginRouter>, interval: Duration, reloaded: impl Fn(Vec<PluginStatus>) + Send + 'static) {
    let weak = Arc::downgrade(router);
    let spawned = std::thread::Builder::new().name("plugin-reload".to_owned()).spawn(move || loop {
        std::thread::sleep(interval);
        match weak.upgrade() {
            Some(router) => {
                if router.reload_if_changed() {
                    reloaded(router.status());
                }
            }
            None => break,
        }
    });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "plugin reload thread not started; reload with SIGHUP");
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::PluginLimits;

    fn wat(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/plugins").join(name)
    }

    fn one_inquiry() -> Inquiry {
        harness::sample_inquiries(1).remove(0)
    }

    #[test]
    fn a_fuel_budget_stops_a_loop_deterministically() {
        let limits =
            PluginLimits { fuel_per_record: Some(100_000), batch_timeout_ms: 60_000, ..PluginLimits::default() };
        let router = harness::single_plugin_router(&wat("loop.wat"), limits).unwrap();
        let inquiry = one_inquiry();
        let started = Instant::now();
        let outcome = router.route(&[&inquiry]).remove(0);
        assert!(matches!(outcome, RouteOutcome::Failed { reason: "plugin_fuel", .. }), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "fuel, not the 60 s deadline, stopped it");
    }

    #[test]
    fn a_router_started_without_plugins_takes_its_first_ones_by_reload_with_the_fuel_they_ask_for() {
        let fallback = FallbackRouter::new(crate::config::FallbackConfig::default());
        let router = PluginRouter::new(&RoutingConfig::default(), fallback).unwrap();
        let inquiry = one_inquiry();
        assert!(matches!(router.route(&[&inquiry])[..], [RouteOutcome::Undecided]), "no plugins: the fallback's");
        // Refused as a whole (one file is missing) after compiling the other: no engine is kept,
        // and no module compiled with the engine it dropped.
        let mut broken = harness::single_plugin_config(&wat("loop.wat"), PluginLimits::default(), Default::default());
        let mut missing = broken.plugins[0].clone();
        (missing.id, missing.path) = ("missing".to_owned(), wat("missing.wat"));
        broken.plugins.push(missing);
        assert!(matches!(router.reload(Some(&broken)), Err(PluginError::Load { .. })));
        // The first plugins that load decide fuel metering.
        let limits =
            PluginLimits { fuel_per_record: Some(100_000), batch_timeout_ms: 60_000, ..PluginLimits::default() };
        let fueled = harness::single_plugin_config(&wat("loop.wat"), limits, Default::default());
        router.reload(Some(&fueled)).unwrap();
        let outcome = router.route(&[&inquiry]).remove(0);
        assert!(matches!(outcome, RouteOutcome::Failed { reason: "plugin_fuel", .. }), "{outcome:?}");
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_lets_one_batch_try_after_the_quarantine() {
        let limits = PluginLimits { quarantine_after_failures: 2, quarantine_ms: 50, ..PluginLimits::default() };
        let router = harness::single_plugin_router(&wat("trap.wat"), limits).unwrap();
        let inquiry = one_inquiry();
        let reason = |router: &PluginRouter| match router.route(&[&inquiry]).remove(0) {
            RouteOutcome::Failed { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&router), "plugin_trap");
        assert_eq!(reason(&router), "plugin_trap");
        assert_eq!(reason(&router), "plugin_quarantined");
        assert_eq!(router.status()[0].state, "quarantined");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(reason(&router), "plugin_trap", "half-open: one batch is tried again");
        assert_eq!(reason(&router), "plugin_quarantined", "it failed, so the quarantine is back");
    }

    #[test]
    fn a_batch_failing_on_one_poison_inquiry_does_not_open_the_breaker() {
        let limits = PluginLimits {
            quarantine_after_failures: 1,
            quarantine_ms: 60_000,
            batch_timeout_ms: 5_000,
            record_timeout_us: 100_000,
            ..PluginLimits::default()
        };
        let path = std::path::PathBuf::from(std::env::var("PLUGINS_OUT").unwrap_or_else(|_| {
            format!("{}/.cache/inquiry-gateway/plugins", std::env::var("HOME").unwrap_or_default())
        }))
        .join("test-poison.wasm");
        if !path.exists() {
            panic!("{} is missing: run plugins/build.sh", path.display());
        }
        let router = harness::single_plugin_router(&path, limits).unwrap();
        let mut batch = harness::sample_inquiries(3);
        batch[1].personal.body = "this is poison".to_owned();
        let refs: Vec<&Inquiry> = batch.iter().collect();
        for _ in 0..3 {
            let outcomes = router.route(&refs);
            assert!(matches!(outcomes[1], RouteOutcome::Failed { reason: "plugin_trap", .. }), "{outcomes:?}");
            assert!(!matches!(outcomes[0], RouteOutcome::Failed { .. }), "the others are routed: {outcomes:?}");
        }
        assert_eq!(router.status()[0].state, "ok", "after one failed batch it would be quarantined");
        // A batch of only the poison inquiry is all failures: that one counts.
        router.route(&refs[1..2]);
        assert_eq!(router.status()[0].state, "quarantined");
    }

    #[test]
    fn the_retries_of_a_failed_batch_stop_when_they_used_up_its_deadline() {
        let router = harness::single_plugin_router(&wat("trap.wat"), PluginLimits::default()).unwrap();
        let current = router.current();
        let plugin = current.slots.values().next().unwrap().plugin.as_ref().unwrap();
        let inquiries = harness::sample_inquiries(4);
        let subset: Vec<&Inquiry> = inquiries.iter().collect();
        let detail = |outcome: &RouteOutcome| match outcome {
            RouteOutcome::Failed { reason: "plugin_trap", detail } => detail.clone(),
            other => panic!("{other:?}"),
        };
        // With the deadline's time: retried alone until three in a row failed the same way.
        let (outcomes, failure) = run_within(plugin, &subset, "x", &mut Vec::new(), Duration::from_secs(60));
        assert_eq!(failure.map(|f| f.reason()), Some("plugin_trap"));
        let retried: Vec<String> = outcomes.iter().map(detail).collect();
        assert!(!retried[2].starts_with("not retried") && retried[3].contains("in a row"), "{retried:?}");
        // With none left: the rest fails at once, told why.
        let (outcomes, _) = run_within(plugin, &subset, "x", &mut Vec::new(), Duration::ZERO);
        assert!(outcomes.iter().map(detail).all(|d| d.contains("used up the batch's deadline")), "{outcomes:?}");
    }

    #[test]
    fn summaries_leave_out_the_assignee_and_who_decided() {
        let inquiry = one_inquiry();
        let decision = |assignee: &str, by: &str| {
            let mut d = crate::routing::FallbackRouter::new(Default::default()).decide(&inquiry, None);
            d.assignee = Some(assignee.to_owned());
            d.decided_by = by.to_owned();
            RouteOutcome::Decided(d)
        };
        assert_eq!(summary(&decision("anna", "plugin:a@1")), summary(&decision("ben", "plugin:a@2")));
        assert_ne!(summary(&decision("anna", "x")), summary(&RouteOutcome::Undecided));
    }
}

#[cfg(test)]
mod wasi_tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::PluginLimits;

    #[test]
    fn a_plugin_cannot_sleep_in_a_host_call() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/sleeper.wat");
        let router = harness::single_plugin_router(&path, PluginLimits::default()).unwrap();
        let inquiry = harness::sample_inquiries(1).remove(0);
        let started = Instant::now();
        let outcome = router.route(&[&inquiry]).remove(0);
        assert!(matches!(outcome, RouteOutcome::Failed { reason: "plugin_bad_output", .. }), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "poll_oneoff returned at once");
    }
}
