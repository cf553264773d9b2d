//! Host functions (module `igw`) and what they see: a plugin's [`PluginContext`] (its id,
//! limits, granted capabilities, key-value map, log budget) and the shared [`AgentDirectory`].
//! Nothing here reaches the filesystem, the network or the environment.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use inquiry_plugin_sdk::{wire, Agent};
use metrics::counter;
use wasmtime::{Caller, Linker, Memory, Module, ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::config::{AgentConfig, Capability, PluginLimits};
use crate::telemetry;

/// Most distinct counter names one plugin may use (they become metric labels).
const MAX_COUNTER_NAMES: usize = 16;
/// Longest log line kept from a plugin, in bytes.
const MAX_LOG_BYTES: usize = 1024;
/// Longest key of a plugin's key-value map, in bytes.
const MAX_KV_KEY_BYTES: usize = 128;
/// Most keys in a plugin's key-value map; `kv_add` on a new key beyond it stores nothing.
const MAX_KV_KEYS: usize = 10_000;
/// Longest team name `agents` looks up, in bytes.
const MAX_TEAM_BYTES: usize = 256;
/// WASI errno `notsup`.
const WASI_ENOTSUP: i32 = 58;

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Agents by team, shared by every plugin; read by `igw.agents`, updated by the admin API.
/// Each team is kept with its ABI encoding, so a lookup copies bytes and allocates nothing.
#[derive(Debug, Default)]
pub struct AgentDirectory {
    teams: DashMap<String, Team>,
    /// What run-time updates set over the configuration, by agent: what a reload applies again
    /// over the reloaded file, as start-up applies the kept states. Its lock is held by every
    /// change ([`AgentDirectory::update`], [`AgentDirectory::reconfigure`]), so that an update is
    /// never lost to a reload.
    set_at_run_time: Mutex<HashMap<String, RunTimeState>>,
}

/// The fields of an agent that updates set (`None`: as configured).
#[derive(Debug, Default, Clone, Copy)]
struct RunTimeState {
    load: Option<u32>,
    capacity: Option<u32>,
    online: Option<bool>,
}

#[derive(Debug, Default)]
struct Team {
    agents: Vec<Agent>,
    encoded: Vec<u8>,
}

impl Team {
    fn of(agents: Vec<Agent>) -> Team {
        let mut encoded = Vec::new();
        wire::encode_agents(&mut encoded, agents.iter());
        Team { agents, encoded }
    }
}

impl AgentDirectory {
    /// A directory of the configured agents (load 0).
    pub fn new(agents: &[AgentConfig]) -> AgentDirectory {
        let directory = AgentDirectory::default();
        directory.reconfigure(agents);
        directory
    }

    /// True when no agent is configured.
    pub fn is_empty(&self) -> bool {
        self.teams.is_empty()
    }

    /// The agents of `team`, in configuration order.
    pub fn team(&self, team: &str) -> Vec<Agent> {
        self.teams.get(team).map(|t| t.agents.clone()).unwrap_or_default()
    }

    /// Calls `with` on the ABI encoding of `team`'s agents (an empty list when unknown).
    pub fn with_encoded<R>(&self, team: &str, with: impl FnOnce(&[u8]) -> R) -> R {
        match self.teams.get(team) {
            Some(t) => with(&t.encoded),
            None => with(&0u32.to_le_bytes()),
        }
    }

    /// Every agent with its team, by team name, then in directory order.
    pub fn all(&self) -> Vec<(String, Agent)> {
        let mut all: Vec<(String, Agent)> = self
            .teams
            .iter()
            .flat_map(|team| team.agents.iter().map(|a| (team.key().clone(), a.clone())).collect::<Vec<_>>())
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0)); // stable: directory order within a team
        all
    }

    /// True when the directory has an agent with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.teams.iter().any(|team| team.agents.iter().any(|a| a.id == id))
    }

    /// Updates an agent's load, capacity or presence; false when no agent has that id. An update
    /// that changes nothing takes no write lock (plugins' lookups are not held up).
    pub fn update(&self, id: &str, load: Option<u32>, capacity: Option<u32>, online: Option<bool>) -> bool {
        let mut set_at_run_time = self.set_at_run_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = |agent: &Agent| Agent {
            id: agent.id.clone(),
            load: load.unwrap_or(agent.load),
            capacity: capacity.unwrap_or(agent.capacity),
            online: online.unwrap_or(agent.online),
        };
        let Some((team_name, unchanged)) = self.teams.iter().find_map(|team| {
            let agent = team.agents.iter().find(|a| a.id == id)?;
            Some((team.key().clone(), changed(agent) == *agent))
        }) else {
            return false;
        };
        let set = set_at_run_time.entry(id.to_owned()).or_default();
        (set.load, set.capacity, set.online) = (load.or(set.load), capacity.or(set.capacity), online.or(set.online));
        if unchanged {
            return true;
        }
        match self.teams.get_mut(&team_name) {
            Some(mut team) => {
                let agents = team.agents.iter().map(|a| if a.id == id { changed(a) } else { a.clone() }).collect();
                *team = Team::of(agents);
                true
            }
            None => false,
        }
    }

    /// Takes a reloaded configuration's agents: exactly the configured agents, in their configured
    /// teams and order, each as configured with what run-time updates set over it applied again
    /// (as at start-up, where the kept states of `PUT /v1/agents` apply over the file). One no
    /// longer configured is no longer assigned.
    pub fn reconfigure(&self, agents: &[AgentConfig]) {
        let set_at_run_time = self.set_at_run_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut teams: HashMap<String, Vec<Agent>> = HashMap::new();
        for agent in agents {
            let set = set_at_run_time.get(&agent.id).copied().unwrap_or_default();
            teams.entry(agent.team.clone()).or_default().push(Agent {
                id: agent.id.clone(),
                load: set.load.unwrap_or(0),
                capacity: set.capacity.unwrap_or(agent.capacity),
                online: set.online.unwrap_or(agent.online),
            });
        }
        self.teams.retain(|team, _| teams.contains_key(team));
        for (team, agents) in teams {
            self.teams.insert(team, Team::of(agents));
        }
    }

    /// Replaces one team's agents (used by the plugin test harness).
    pub fn set_team(&self, team: &str, agents: Vec<Agent>) {
        self.teams.insert(team.to_owned(), Team::of(agents));
    }
}

/// What one plugin's host functions act on; shared by all its instances.
pub struct PluginContext {
    /// Plugin id (the `plugin` metric label).
    pub id: String,
    /// Granted capabilities.
    pub capabilities: BTreeSet<Capability>,
    /// Sandbox limits.
    pub limits: PluginLimits,
    /// The agent directory.
    pub agents: Arc<AgentDirectory>,
    /// The plugin's key-value map (round-robin positions and the like); kept in memory and
    /// carried over when the plugin is reloaded.
    pub kv: Arc<DashMap<String, i64>>,
    /// The plugin's settings in the ABI encoding (`igw.settings`).
    pub settings: Vec<u8>,
    log_budget: DefaultDirectRateLimiter,
    counter_names: Mutex<HashMap<String, String>>,
}

impl PluginContext {
    /// A context for plugin `id`.
    pub fn new(
        id: &str,
        capabilities: &[Capability],
        limits: PluginLimits,
        agents: Arc<AgentDirectory>,
        kv: Arc<DashMap<String, i64>>,
        settings: Vec<u8>,
    ) -> PluginContext {
        let per_second = NonZeroU32::new(limits.log_lines_per_second.max(1)).expect("at least 1");
        PluginContext {
            id: id.to_owned(),
            capabilities: capabilities.iter().copied().collect(),
            limits,
            agents,
            kv,
            settings,
            log_budget: RateLimiter::direct(Quota::per_second(per_second)),
            counter_names: Mutex::new(HashMap::new()),
        }
    }

    fn log(&self, level: i32, message: &str) {
        if self.log_budget.check().is_err() {
            counter!(telemetry::PLUGIN_LOGS_DROPPED, "plugin" => self.id.clone()).increment(1);
            return;
        }
        let message = truncate(message, MAX_LOG_BYTES);
        let plugin = self.id.as_str();
        match level {
            0 => tracing::debug!(plugin, message, "plugin log"),
            1 => tracing::info!(plugin, message, "plugin log"),
            2 => tracing::warn!(plugin, message, "plugin log"),
            _ => tracing::error!(plugin, message, "plugin log"),
        }
    }

    fn counter_add(&self, name: &str, delta: i64) {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let label = {
            let mut names = self.counter_names.lock().expect("counter names");
            match names.get(name) {
                Some(label) => label.clone(),
                None if valid && names.len() < MAX_COUNTER_NAMES => {
                    names.insert(name.to_owned(), name.to_owned());
                    name.to_owned()
                }
                None => "_overflow".to_owned(),
            }
        };
        if delta > 0 {
            counter!(telemetry::PLUGIN_COUNTER, "plugin" => self.id.clone(), "name" => label).increment(delta as u64);
        }
    }
}

/// Memory and table caps of one store, remembering whether a growth was refused.
pub struct Limiter {
    inner: StoreLimits,
    denied: bool,
}

impl Limiter {
    /// True once the plugin asked for more memory than its cap.
    pub fn denied(&self) -> bool {
        self.denied
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.denied = true;
        }
        allowed
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
}

/// The state of one store (one instance).
pub struct HostState {
    /// Memory cap.
    pub limiter: Limiter,
    context: Arc<PluginContext>,
    /// WASI preview 1 with nothing granted: no preopened directories, no sockets, no
    /// environment, no arguments, no stdio. Present only for modules that import WASI.
    wasi: Option<WasiP1Ctx>,
    /// The instance's exported memory, set once it is instantiated (host functions read and
    /// write through it without looking the export up on every call).
    pub memory: Option<Memory>,
}

impl HostState {
    /// The state of a new instance of the plugin of `context`.
    pub fn new(context: Arc<PluginContext>, wasi: bool) -> HostState {
        let memory = usize::try_from(context.limits.max_memory_bytes).unwrap_or(usize::MAX);
        let inner = StoreLimitsBuilder::new()
            .memory_size(memory)
            .table_elements(1_000_000)
            .instances(1)
            .trap_on_grow_failure(true)
            .build();
        // `random_get` fills a host buffer of the size asked before it checks guest memory (64
        // MiB by default), and no deadline interrupts a host call: a small bound.
        let wasi = wasi.then(|| wasmtime_wasi::WasiCtxBuilder::new().max_random_size(MAX_RANDOM_BYTES).build_p1());
        HostState { limiter: Limiter { inner, denied: false }, context, wasi, memory: None }
    }
}

/// Most bytes one WASI `random_get` call fills (plugins need a seed, not a stream).
const MAX_RANDOM_BYTES: u64 = 4096;

/// Calls `with` on the string at `ptr`/`len` of the caller's memory, without copying it (an
/// empty string when out of bounds or not UTF-8: a plugin cannot make the host fail).
fn with_str<R>(caller: &Caller<'_, HostState>, ptr: u32, len: u32, with: impl FnOnce(&str, &HostState) -> R) -> R {
    let state = caller.data();
    let data = state.memory.map(|m| m.data(caller)).unwrap_or_default();
    let (start, end) = (ptr as usize, ptr as usize + len as usize);
    let text = data.get(start..end).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("");
    with(text, state)
}

/// Writes a host answer at `out_ptr` when it fits in `out_cap` bytes and returns the bytes it
/// needs (the guest calls again with a bigger buffer). Out of bounds, the plugin reads nothing:
/// it cannot make the host fail.
fn answer(caller: &mut Caller<'_, HostState>, memory: Memory, out_ptr: u32, out_cap: u32, bytes: &[u8]) -> u32 {
    if bytes.len() <= out_cap as usize {
        let _ = memory.write(caller, out_ptr as usize, bytes);
    }
    bytes.len() as u32
}

/// Which capability an `igw` import needs; `None` for one the gateway does not offer.
/// `settings` (the plugin's own configuration) needs none.
fn capability_of(name: &str) -> Option<Option<Capability>> {
    Some(Some(match name {
        "settings" => return Some(None),
        "log" => Capability::Log,
        "counter_add" => Capability::Counters,
        "now_ms" => Capability::Clock,
        "agents" => Capability::Agents,
        "kv_get" | "kv_add" => Capability::Kv,
        _ => return None,
    }))
}

/// Defines the granted host functions in `linker` after checking every import of `module`;
/// returns whether the module needs WASI. An import of an ungranted capability, of an unknown
/// `igw` function or of another module is refused with a message saying which.
pub fn link(linker: &mut Linker<HostState>, module: &Module, granted: &BTreeSet<Capability>) -> Result<bool, String> {
    let mut wasi = false;
    for import in module.imports() {
        match import.module() {
            "igw" => match capability_of(import.name()) {
                Some(None) => {}
                Some(Some(capability)) if granted.contains(&capability) => {}
                Some(Some(capability)) => {
                    return Err(format!(
                        "imports igw.{} but capability `{}` is not granted",
                        import.name(),
                        format!("{capability:?}").to_lowercase()
                    ))
                }
                None => {
                    return Err(format!(
                        "imports igw.{}, which the gateway does not offer",
                        truncate(import.name(), 64)
                    ))
                }
            },
            "wasi_snapshot_preview1" => wasi = true,
            other => {
                return Err(format!(
                    "imports {}.{}, which the gateway does not offer",
                    truncate(other, 64),
                    truncate(import.name(), 64)
                ))
            }
        }
    }
    let e = |err: wasmtime::Error| err.to_string();
    linker
        .func_wrap("igw", "settings", |mut caller: Caller<'_, HostState>, out_ptr: u32, out_cap: u32| -> u32 {
            let Some(memory) = caller.data().memory else { return 0 };
            let context = caller.data().context.clone();
            answer(&mut caller, memory, out_ptr, out_cap, &context.settings)
        })
        .map_err(e)?;
    if granted.contains(&Capability::Log) {
        linker
            .func_wrap("igw", "log", |caller: Caller<'_, HostState>, level: i32, ptr: u32, len: u32| {
                with_str(&caller, ptr, len, |message, state| state.context.log(level, message));
            })
            .map_err(e)?;
    }
    if granted.contains(&Capability::Counters) {
        linker
            .func_wrap("igw", "counter_add", |caller: Caller<'_, HostState>, ptr: u32, len: u32, delta: i64| {
                with_str(&caller, ptr, len, |name, state| state.context.counter_add(name, delta));
            })
            .map_err(e)?;
    }
    if granted.contains(&Capability::Clock) {
        linker
            .func_wrap("igw", "now_ms", || {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
            })
            .map_err(e)?;
    }
    if granted.contains(&Capability::Agents) {
        linker
            .func_wrap(
                "igw",
                "agents",
                |mut caller: Caller<'_, HostState>, team_ptr: u32, team_len: u32, out_ptr: u32, out_cap: u32| -> u32 {
                    let Some(memory) = caller.data().memory else { return 0 };
                    let context = caller.data().context.clone();
                    if team_len as usize > MAX_TEAM_BYTES {
                        // An empty list (no team has such a name), written like any other answer:
                        // an SDK reads what the size says, not what an earlier call left there.
                        return answer(&mut caller, memory, out_ptr, out_cap, &0u32.to_le_bytes());
                    }
                    let team = with_str(&caller, team_ptr, team_len, |team, _| team.to_owned());
                    context.agents.with_encoded(&team, |encoded| answer(&mut caller, memory, out_ptr, out_cap, encoded))
                },
            )
            .map_err(e)?;
    }
    if granted.contains(&Capability::Kv) {
        linker
            .func_wrap("igw", "kv_get", |caller: Caller<'_, HostState>, ptr: u32, len: u32| -> i64 {
                with_str(&caller, ptr, len, |key, state| state.context.kv.get(key).map_or(0, |v| *v))
            })
            .map_err(e)?;
        linker
            .func_wrap("igw", "kv_add", |caller: Caller<'_, HostState>, ptr: u32, len: u32, delta: i64| -> i64 {
                with_str(&caller, ptr, len, |key, state| {
                    let kv = &state.context.kv;
                    if let Some(mut value) = kv.get_mut(key) {
                        *value = value.wrapping_add(delta);
                        return *value;
                    }
                    if key.len() > MAX_KV_KEY_BYTES || kv.len() >= MAX_KV_KEYS {
                        counter!(telemetry::PLUGIN_KV_REFUSED, "plugin" => state.context.id.clone()).increment(1);
                        return 0;
                    }
                    *kv.entry(key.to_owned()).and_modify(|v| *v = v.wrapping_add(delta)).or_insert(delta)
                })
            })
            .map_err(e)?;
    }
    if wasi {
        wasmtime_wasi::p1::add_to_linker_sync(linker, |state: &mut HostState| {
            state.wasi.as_mut().expect("modules importing WASI get a WASI context")
        })
        .map_err(e)?;
        // No sleeping: a host call is not interrupted by the deadline, so a plugin that asked to
        // wait would stall the pipeline. Routing never needs to wait.
        linker.allow_shadowing(true);
        linker
            .func_wrap("wasi_snapshot_preview1", "poll_oneoff", |_: i32, _: i32, _: i32, _: i32| -> i32 {
                WASI_ENOTSUP
            })
            .map_err(e)?;
        linker.allow_shadowing(false);
    }
    Ok(wasi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, team: &str, capacity: u32) -> AgentConfig {
        AgentConfig { id: id.to_owned(), team: team.to_owned(), capacity, online: true }
    }

    fn ids(directory: &AgentDirectory, team: &str) -> Vec<String> {
        directory.team(team).into_iter().map(|a| a.id).collect()
    }

    #[test]
    fn a_reload_takes_the_configured_agents_and_keeps_what_they_are_doing() {
        let before = [agent("anna", "sales", 5), agent("bo", "sales", 5), agent("cem", "support", 3)];
        let directory = AgentDirectory::new(&before);
        assert!(directory.update("anna", Some(4), None, Some(false)));
        assert!(directory.update("bo", Some(2), Some(8), None)); // capacity set over the admin API
        assert!(directory.update("cem", Some(1), None, None));

        // Bo moves to support, Cem leaves, Dan joins sales, Anna's capacity is raised in the file.
        let after = [agent("dan", "sales", 2), agent("anna", "sales", 9), agent("bo", "support", 6)];
        directory.reconfigure(&after);
        assert_eq!(ids(&directory, "sales"), ["dan", "anna"], "configured order");
        assert_eq!(ids(&directory, "support"), ["bo"]);
        assert!(!directory.contains("cem"), "no longer configured: no longer assigned");
        let find = |id: &str| directory.all().into_iter().map(|(_, a)| a).find(|a| a.id == id).unwrap();
        let anna = find("anna");
        assert_eq!(
            (anna.load, anna.capacity, anna.online),
            (4, 9, false),
            "the file's capacity, its run-time load and presence"
        );
        let bo = find("bo");
        assert_eq!((bo.load, bo.capacity), (2, 8), "moved; the capacity set at run time stays over the file's");
        let dan = find("dan");
        assert_eq!((dan.load, dan.capacity, dan.online), (0, 2, true), "new: as configured");
        // The encoding plugins read follows.
        directory.with_encoded("support", |encoded| assert_eq!(&encoded[..4], &1u32.to_le_bytes()));

        // Every agent removed: teams gone too.
        directory.reconfigure(&[]);
        assert!(directory.all().is_empty());
    }
}
