//! What a plugin may ask the gateway. Each call needs its capability granted in the gateway's
//! config (`capabilities = ["log", "counters", "clock", "agents", "kv"]`); a plugin importing an
//! ungranted function is refused when it loads.

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

/// The gateway's host functions (capabilities).
pub trait Host {
    /// Writes a log line (`log`); the gateway rate-limits plugin logs.
    fn log(&self, level: LogLevel, message: &str);
    /// Adds `delta` to the plugin counter `name` (`counters`; names `[a-z0-9_]`, at most 16 per plugin).
    fn counter_add(&self, name: &str, delta: i64);
    /// Milliseconds since the Unix epoch (`clock`).
    fn now_ms(&self) -> i64;
    /// The agents of `team`, in a stable order (`agents`).
    fn agents(&self, team: &str) -> Vec<Agent>;
    /// The value of `key` in the plugin's key-value map, 0 when absent (`kv`).
    fn kv_get(&self, key: &str) -> i64;
    /// Adds `delta` to `key` and returns the new value (`kv`).
    fn kv_add(&self, key: &str, delta: i64) -> i64;
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
    fn agents(&self, team: &str) -> Vec<Agent> {
        // One buffer for every call (plugins are single-threaded), grown when a team needs more.
        static mut BUF: Vec<u8> = Vec::new();
        // SAFETY: wasm32 plugins are single-threaded and this is the only user of BUF.
        let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
        if buf.len() < 512 {
            buf.resize(512, 0);
        }
        loop {
            // SAFETY: `buf` is writable for its length; the host writes at most `out_cap` bytes.
            let need = unsafe { imports::agents(team.as_ptr(), team.len() as u32, buf.as_mut_ptr(), buf.len() as u32) };
            if need as usize <= buf.len() {
                return crate::wire::decode_agents(&buf[..need as usize]).unwrap_or_default();
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
}
