//! What a plugin may ask the gateway. Each call needs its capability granted in the gateway's
//! config (`capabilities = ["log", "counters", "clock", "agents", "kv"]`); a plugin importing an
//! ungranted function is refused when it loads. The plugin's own settings need no capability.

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Details.
    Debug = 0,
    /// Normal events.
    Info = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Something failed.
    Error = 3,
}

/// An agent of a team, as the gateway's agent directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Agent id.
    pub id: String,
    /// Inquiries the agent has open now.
    pub load: u32,
    /// Most inquiries the agent may have open.
    pub capacity: u32,
    /// Whether the agent is online.
    pub online: bool,
}

impl Agent {
    /// Online and below capacity.
    pub fn available(&self) -> bool {
        self.online && self.load < self.capacity
    }
}

/// One agent of an [`Agents`] list, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentView<'a> {
    /// Agent id.
    pub id: &'a str,
    /// Inquiries the agent has open now.
    pub load: u32,
    /// Most inquiries the agent may have open.
    pub capacity: u32,
    /// Whether the agent is online.
    pub online: bool,
}

impl AgentView<'_> {
    /// Online and below capacity.
    pub fn available(&self) -> bool {
        self.online && self.load < self.capacity
    }
}

/// The agents of a team, in directory order: the gateway's answer (the ABI's agent list) read
/// in place, so a lookup allocates nothing once a plugin has warmed up (the buffer is reused
/// by the next lookup after this list is dropped).
#[derive(Debug)]
pub struct Agents {
    /// The buffer; the list is its first `used` bytes (the rest is room for the next lookup).
    encoded: Vec<u8>,
    used: usize,
    len: usize,
}

std::thread_local! {
    /// The buffer of the last dropped [`Agents`], for the next lookup.
    static SPARE: core::cell::Cell<Vec<u8>> = const { core::cell::Cell::new(Vec::new()) };
}

impl Agents {
    /// Reads an agent list in the ABI encoding (copied into a reused buffer); data that is not
    /// a valid list reads as no agents.
    pub fn decode(encoded: &[u8]) -> Agents {
        Agents::written(|buf| buf.extend_from_slice(encoded))
    }

    /// The agents of `list`, encoded.
    pub fn from_list(list: &[Agent]) -> Agents {
        Agents::written(|buf| crate::wire::encode_agents(buf, list.iter()))
    }

    /// The list `write` puts into the reused buffer.
    fn written(write: impl FnOnce(&mut Vec<u8>)) -> Agents {
        let mut buf = SPARE.take();
        buf.clear();
        write(&mut buf);
        let used = buf.len();
        Agents::from_buffer(buf, used)
    }

    /// Takes the list in the first `used` bytes of `encoded` after checking it once (structure
    /// and UTF-8), so reading it later cannot fail.
    pub(crate) fn from_buffer(encoded: Vec<u8>, used: usize) -> Agents {
        let used = used.min(encoded.len());
        let len = crate::wire::check_agents(&encoded[..used]).unwrap_or(0);
        Agents { encoded, used, len }
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the team has no agents.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The agents, in directory order.
    pub fn iter(&self) -> impl Iterator<Item = AgentView<'_>> + Clone {
        // SAFETY: `from_buffer` checked `encoded` and found `len` agents.
        unsafe { crate::wire::agent_views(&self.encoded[..self.used], self.len) }
    }

    /// The agent at `index` (a walk from the first: teams are small).
    pub fn get(&self, index: usize) -> Option<AgentView<'_>> {
        self.iter().nth(index)
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let encoded = core::mem::take(&mut self.encoded);
        // During thread teardown the spare is gone: the buffer is simply freed.
        let _ = SPARE.try_with(|spare| spare.set(encoded));
    }
}

/// A plugin's settings: the `settings` table of its entry in the gateway's configuration, as
/// text (strings as they are, other values as JSON text), sorted by key. They are fixed for the
/// life of a loaded plugin; a reload with changed settings starts new instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Key and value pairs, sorted by key.
    pairs: Vec<(String, String)>,
}

/// What [`Host::settings`] returns for a host without settings.
static NO_SETTINGS: Settings = Settings::empty();

impl Settings {
    /// No settings.
    pub const fn empty() -> Settings {
        Settings { pairs: Vec::new() }
    }

    /// Settings from key and value pairs (a later duplicate key wins); for tests and native hosts.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Settings {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0)); // stable: the last of equal keys comes first
        pairs.dedup_by(|later, first| later.0 == first.0);
        Settings { pairs }
    }

    /// Reads settings in the ABI encoding; data that is not a valid list reads as no settings.
    pub fn decode(encoded: &[u8]) -> Settings {
        Settings::from_pairs(crate::wire::decode_settings(encoded).unwrap_or_default())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.pairs[at].1)
    }

    /// Every setting, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of settings.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when the plugin has no settings.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// The gateway's host functions (capabilities).
pub trait Host {
    /// Writes a log line (`log`); the gateway rate-limits plugin logs.
    fn log(&self, level: LogLevel, message: &str);
    /// Adds `delta` to the plugin counter `name` (`counters`; names `[a-z0-9_]`, at most 16 per plugin).
    fn counter_add(&self, name: &str, delta: i64);
    /// Milliseconds since the Unix epoch (`clock`).
    fn now_ms(&self) -> i64;
    /// The agents of `team`, in a stable order (`agents`).
    fn agents(&self, team: &str) -> Agents;
    /// The value of `key` in the plugin's key-value map, 0 when absent (`kv`).
    fn kv_get(&self, key: &str) -> i64;
    /// Adds `delta` to `key` and returns the new value (`kv`).
    fn kv_add(&self, key: &str, delta: i64) -> i64;
    /// The plugin's settings from the gateway's configuration (no capability needed; hosts
    /// without settings keep this default: none).
    fn settings(&self) -> &Settings {
        &NO_SETTINGS
    }
}

/// The host functions imported from the gateway (module `igw`).
#[cfg(target_arch = "wasm32")]
pub struct Imports;

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "igw")]
    extern "C" {
        pub fn log(level: i32, ptr: *const u8, len: u32);
        pub fn counter_add(ptr: *const u8, len: u32, delta: i64);
        pub fn now_ms() -> i64;
        pub fn agents(team_ptr: *const u8, team_len: u32, out_ptr: *mut u8, out_cap: u32) -> u32;
        pub fn kv_get(ptr: *const u8, len: u32) -> i64;
        pub fn kv_add(ptr: *const u8, len: u32, delta: i64) -> i64;
        pub fn settings(out_ptr: *mut u8, out_cap: u32) -> u32;
    }
}

/// The plugin's settings, read from the gateway once per instance.
#[cfg(target_arch = "wasm32")]
static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

#[cfg(target_arch = "wasm32")]
fn read_settings() -> Settings {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is writable for its length; the host writes at most `out_cap` bytes.
        let need = unsafe { imports::settings(buf.as_mut_ptr(), buf.len() as u32) } as usize;
        if need <= buf.len() {
            return Settings::decode(&buf[..need]);
        }
        buf.resize(need, 0);
    }
}

#[cfg(target_arch = "wasm32")]
impl Host for Imports {
    fn log(&self, level: LogLevel, message: &str) {
        // SAFETY: the pointer and length describe a live string.
        unsafe { imports::log(level as i32, message.as_ptr(), message.len() as u32) }
    }
    fn counter_add(&self, name: &str, delta: i64) {
        unsafe { imports::counter_add(name.as_ptr(), name.len() as u32, delta) }
    }
    fn now_ms(&self) -> i64 {
        unsafe { imports::now_ms() }
    }
    fn agents(&self, team: &str) -> Agents {
        // The spare keeps its full length (an `Agents` marks how much of it its list uses).
        let mut buf = SPARE.take();
        if buf.len() < 512 {
            buf.resize(512, 0);
        }
        loop {
            // SAFETY: `buf` is writable for its length; the host writes at most `out_cap` bytes.
            let need = unsafe { imports::agents(team.as_ptr(), team.len() as u32, buf.as_mut_ptr(), buf.len() as u32) };
            if need as usize <= buf.len() {
                return Agents::from_buffer(buf, need as usize);
            }
            buf.resize(need as usize, 0);
        }
    }
    fn kv_get(&self, key: &str) -> i64 {
        unsafe { imports::kv_get(key.as_ptr(), key.len() as u32) }
    }
    fn kv_add(&self, key: &str, delta: i64) -> i64 {
        unsafe { imports::kv_add(key.as_ptr(), key.len() as u32, delta) }
    }
    fn settings(&self) -> &Settings {
        SETTINGS.get_or_init(read_settings)
    }
}
