//! The wasmtime sandbox: one [`Sandbox`] (engine, pooling allocator, epoch ticker) compiles
//! [`Plugin`]s; a plugin runs batches in a cached instance under a deadline, a memory cap and,
//! when configured, a fuel budget, and any failure is classified into a [`Failure`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use inquiry_plugin_sdk::{wire, Outcome, ABI_VERSION};
use wasmtime::{
    Engine, InstanceAllocationStrategy, InstancePre, Linker, Memory, Module, PoolingAllocationConfig, Store, Trap,
    TypedFunc,
};

use super::host::{self, HostState, PluginContext};

/// Epoch tick: deadlines are whole ticks.
const TICK: Duration = Duration::from_millis(1);
/// Instances live in a pool of this many slots (live, shadow, replay and tool instances).
const POOL_INSTANCES: u32 = 128;
/// Largest memory any plugin may be granted (the pool's slot size; each plugin's own cap is lower).
const POOL_MAX_MEMORY: usize = 4 << 30;
/// An instance is replaced after this many batches, so a slow leak in a guest cannot grow forever.
const RECYCLE_AFTER_CALLS: u32 = 10_000;
/// Deadline of a new instance's start-up (`_initialize` of WASI reactors, the ABI check), in
/// addition to the deadline of the call that needs the instance.
const START_DEADLINE_TICKS: u64 = 250;

/// Why a plugin call failed; [`Failure::reason`] is the metric label and dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The deadline passed (epoch interruption).
    #[error("deadline exceeded")]
    Timeout,
    /// The fuel budget ran out.
    #[error("fuel exhausted")]
    Fuel,
    /// The plugin asked for more memory than its cap.
    #[error("memory limit reached")]
    Memory,
    /// The plugin trapped.
    #[error("trap: {0}")]
    Trap(String),
    /// The plugin returned something that is not valid ABI output.
    #[error("bad output: {0}")]
    BadOutput(String),
    /// The module does not implement the ABI (missing exports, wrong version, ungranted imports).
    #[error("abi: {0}")]
    Abi(String),
    /// No instance could be created (the pool is exhausted, or start-up failed).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The plugin is quarantined after repeated failures and was not called.
    #[error("quarantined after repeated failures")]
    Quarantined,
}

impl Failure {
    /// The bounded reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "plugin_timeout",
            Failure::Fuel => "plugin_fuel",
            Failure::Memory => "plugin_memory",
            Failure::Trap(_) => "plugin_trap",
            Failure::BadOutput(_) => "plugin_bad_output",
            Failure::Abi(_) => "plugin_abi",
            Failure::Unavailable(_) => "plugin_unavailable",
            Failure::Quarantined => "plugin_quarantined",
        }
    }
}

/// The engine every plugin is compiled with, and the thread that advances its epoch (it ends
/// when the engine is gone: the sandbox and every plugin compiled with it).
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    fuel: bool,
}

impl Sandbox {
    /// An engine with epoch interruption, the pooling allocator (copy-on-write memory images)
    /// and, when `fuel` is true, fuel metering.
    pub fn new(fuel: bool) -> Result<Sandbox, Failure> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .max_memory_size(POOL_MAX_MEMORY)
            .table_elements(200_000)
            .max_core_instance_size(8 << 20);
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .consume_fuel(fuel)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if std::env::var_os("INQUIRY_GATEWAY_PERF_MAP").is_some() {
            // Names the plugins' compiled functions for `perf report` (/tmp/perf-PID.map).
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| Failure::Unavailable(format!("engine: {e}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".to_owned())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            })
            .map_err(|e| Failure::Unavailable(format!("epoch thread: {e}")))?;
        Ok(Sandbox { engine, fuel })
    }

    /// Whether plugins are metered with fuel.
    pub fn meters_fuel(&self) -> bool {
        self.fuel
    }

    /// Compiles a module from its bytes (`.wasm`, or `.wat` text).
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, Failure> {
        Module::new(&self.engine, bytes).map_err(|e| Failure::Abi(format!("not a valid module: {e}")))
    }

    /// Links a compiled module with the capabilities of `context` and checks the ABI by starting
    /// one instance.
    pub fn prepare(&self, module: &Module, context: Arc<PluginContext>) -> Result<Plugin, Failure> {
        let mut linker: Linker<HostState> = Linker::new(&self.engine);
        let wasi = host::link(&mut linker, module, &context.capabilities).map_err(Failure::Abi)?;
        let pre = linker.instantiate_pre(module).map_err(|e| Failure::Abi(format!("cannot link: {e}")))?;
        let plugin = Plugin { pre, context, wasi, fuel: self.fuel, cached: Mutex::new(None) };
        let started = plugin.start()?;
        plugin.cached.lock().expect("instance cache").replace(started);
        Ok(plugin)
    }
}

/// A linked plugin, ready to route batches.
pub struct Plugin {
    pre: InstancePre<HostState>,
    context: Arc<PluginContext>,
    wasi: bool,
    fuel: bool,
    /// One warm instance, reused across batches and dropped after any failure.
    cached: Mutex<Option<Instance>>,
}

/// A running instance and its exports.
struct Instance {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    route: TypedFunc<(u32, u32), i64>,
    calls: u32,
}

impl Plugin {
    /// The plugin's context (id, capabilities, limits, key-value map).
    pub fn context(&self) -> &Arc<PluginContext> {
        &self.context
    }

    /// Routes an encoded batch of `records` inquiries with the batch deadline
    /// (`batch_timeout_ms` + `record_timeout_us` per inquiry); one result per inquiry.
    pub fn route(&self, input: &[u8], records: usize) -> Result<Vec<Result<Outcome, wire::WireError>>, Failure> {
        let limits = &self.context.limits;
        let micros = limits.batch_timeout_ms * 1000 + limits.record_timeout_us * records as u64;
        self.call(input, records, micros.div_ceil(1000))
    }

    /// Routes an encoded batch of one inquiry with the per-record deadline only.
    pub fn route_one(&self, input: &[u8]) -> Result<Vec<Result<Outcome, wire::WireError>>, Failure> {
        self.call(input, 1, self.context.limits.record_timeout_us.div_ceil(1000))
    }

    fn call(&self, input: &[u8], records: usize, ticks: u64) -> Result<Vec<Result<Outcome, wire::WireError>>, Failure> {
        let cached = self.cached.lock().expect("instance cache").take();
        let mut instance = match cached {
            Some(instance) => instance,
            None => self.start()?,
        };
        // +1: the current tick may be about to end.
        let result = self.call_on(&mut instance, input, records, ticks + 1);
        instance.calls += 1;
        if result.is_ok() && instance.calls < RECYCLE_AFTER_CALLS {
            self.cached.lock().expect("instance cache").replace(instance);
        }
        result
    }

    fn call_on(
        &self,
        instance: &mut Instance,
        input: &[u8],
        records: usize,
        ticks: u64,
    ) -> Result<Vec<Result<Outcome, wire::WireError>>, Failure> {
        let limits = &self.context.limits;
        let store = &mut instance.store;
        store.set_epoch_deadline(ticks);
        if self.fuel {
            let budget = limits.fuel_per_record.unwrap_or(u64::MAX / 4).saturating_mul(records as u64 + 1);
            store.set_fuel(budget).map_err(|e| Failure::Unavailable(e.to_string()))?;
        }
        let len = u32::try_from(input.len()).map_err(|_| Failure::Unavailable("batch over 4 GiB".into()))?;
        let ptr = instance.alloc.call(&mut *store, len).map_err(|e| classify(e, store))?;
        instance
            .memory
            .write(&mut *store, ptr as usize, input)
            .map_err(|_| Failure::BadOutput("igw_alloc returned a buffer outside memory".into()))?;
        let packed = instance.route.call(&mut *store, (ptr, len)).map_err(|e| classify(e, store))?;
        if packed < 0 {
            return Err(Failure::BadOutput("igw_route refused the batch".into()));
        }
        let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        if out_len > limits.max_output_bytes {
            return Err(Failure::BadOutput(format!(
                "{out_len} bytes of results, more than max_output_bytes {}",
                limits.max_output_bytes
            )));
        }
        let memory = instance.memory.data(&*store);
        let output = out_ptr
            .checked_add(out_len)
            .and_then(|end| memory.get(out_ptr..end))
            .ok_or_else(|| Failure::BadOutput("results lie outside memory".into()))?;
        wire::decode_results(output, records).map_err(|e| Failure::BadOutput(e.to_string()))
    }

    /// Starts an instance: `_initialize` for reactors, then the ABI version check.
    fn start(&self) -> Result<Instance, Failure> {
        let state = HostState::new(self.context.clone(), self.wasi);
        let mut store = Store::new(self.pre.module().engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(START_DEADLINE_TICKS);
        if self.fuel {
            store.set_fuel(u64::MAX / 4).map_err(|e| Failure::Unavailable(e.to_string()))?;
        }
        let instance = self.pre.instantiate(&mut store).map_err(|e| match classify(e, &store) {
            Failure::Trap(detail) => Failure::Unavailable(detail),
            other => other,
        })?;
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).map_err(|e| classify(e, &store))?;
        }
        let export = |what: &str| Failure::Abi(format!("missing or mistyped export `{what}`"));
        let version = instance
            .get_typed_func::<(), u32>(&mut store, "igw_abi_version")
            .map_err(|_| export("igw_abi_version() -> i32"))?;
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| export("memory"))?;
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "igw_alloc")
            .map_err(|_| export("igw_alloc(i32) -> i32"))?;
        let route = instance
            .get_typed_func::<(u32, u32), i64>(&mut store, "igw_route")
            .map_err(|_| export("igw_route(i32, i32) -> i64"))?;
        let found = version.call(&mut store, ()).map_err(|e| classify(e, &store))?;
        if found != ABI_VERSION {
            return Err(Failure::Abi(format!("abi version {found}, the gateway speaks {ABI_VERSION}")));
        }
        Ok(Instance { store, memory, alloc, route, calls: 0 })
    }
}

/// Sorts a wasmtime error into a [`Failure`].
fn classify(err: wasmtime::Error, store: &Store<HostState>) -> Failure {
    if store.data().limiter.denied() {
        return Failure::Memory;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout,
        Some(Trap::OutOfFuel) => Failure::Fuel,
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(format!("{err:#}").chars().take(300).collect()),
    }
}
