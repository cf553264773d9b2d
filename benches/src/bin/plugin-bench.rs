//! Routing cost per inquiry, in one run: each example plugin (Rust, Go, C) in the wasmtime
//! sandbox, through the gateway's own `PluginRouter` (encode the batch, call, decode, build
//! decisions), against the same rules compiled natively (the Rust example's `route`, called
//! directly from a native `Router` with the same agent directory and key-value map).
//!
//! `cargo run --release -p inquiry-benches --bin plugin-bench` after `plugins/build.sh`;
//! `benches/plugins.sh` does both. ROUNDS (default 5) interleaved rounds of SECONDS_PER_RUN
//! (default 1) per cell; each cell is the median.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use inquiry_connectors::Inquiry;
use inquiry_gateway::config::PluginLimits;
use inquiry_gateway::plugins::host::AgentDirectory;
use inquiry_gateway::plugins::{codec, harness};
use inquiry_gateway::routing::{RouteOutcome, Router};
use inquiry_plugin_sdk::{Inquiry as View, Outcome};
use native_host::NativeHost;

/// The gateway's allocator, so that both sides allocate as they would in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The native baseline: the example's rules on views of the gateway's inquiries.
struct NativeRules {
    host: NativeHost,
}

impl Router for NativeRules {
    fn route(&self, batch: &[&Inquiry]) -> Vec<RouteOutcome> {
        let mut attributes = String::new();
        batch
            .iter()
            .map(|inquiry| {
                // The rules read language, country, subject, body and attributes; the rest stays empty.
                attributes.clear();
                for (key, value) in &inquiry.attributes {
                    attributes.push_str(key);
                    attributes.push('=');
                    attributes.push_str(value.as_str().unwrap_or_default());
                    attributes.push('\n');
                }
                let view = View {
                    buyer_country: inquiry.buyer.country.as_deref().unwrap_or(""),
                    buyer_language: inquiry.buyer.language.as_deref().unwrap_or(""),
                    subject: inquiry.personal.subject.as_deref().unwrap_or(""),
                    body: &inquiry.personal.body,
                    attributes: &attributes,
                    ..View::default()
                };
                match example_router::route(&view, &self.host) {
                    Outcome::Route(route) => match codec::decision(route, inquiry, "native") {
                        Ok(decision) => RouteOutcome::Decided(decision),
                        Err(detail) => RouteOutcome::Failed { reason: "plugin_bad_output", detail },
                    },
                    Outcome::Undecided => RouteOutcome::Undecided,
                    Outcome::Failed(detail) => RouteOutcome::Failed { reason: "plugin_error", detail },
                }
            })
            .collect()
    }
}

mod native_host {
    use std::sync::Arc;

    use inquiry_gateway::plugins::host::AgentDirectory;
    use inquiry_plugin_sdk::{Agents, Host, LogLevel};

    /// The host functions, natively: the same agent directory and a map like the plugin's.
    pub struct NativeHost {
        pub agents: Arc<AgentDirectory>,
        pub kv: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    }

    impl Host for NativeHost {
        fn log(&self, _level: LogLevel, _message: &str) {}
        fn counter_add(&self, _name: &str, _delta: i64) {}
        fn now_ms(&self) -> i64 {
            0
        }
        fn agents(&self, team: &str) -> Agents {
            self.agents.with_encoded(team, Agents::decode)
        }
        fn kv_get(&self, key: &str) -> i64 {
            *self.kv.lock().unwrap().get(key).unwrap_or(&0)
        }
        fn kv_add(&self, key: &str, delta: i64) -> i64 {
            let mut kv = self.kv.lock().unwrap();
            let value = kv.entry(key.to_owned()).or_insert(0);
            *value += delta;
            *value
        }
    }
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::var_os("PLUGINS_OUT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/inquiry-gateway/plugins")
    });
    let seconds: u64 = std::env::var("SECONDS_PER_RUN").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let duration = Duration::from_secs(seconds);
    let batches = [1usize, 16, 256];

    // Rounds interleave the implementations, and each cell is the median of its rounds, so that
    // a noisy neighbour on a shared machine shifts every implementation alike.
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let native_router = harness::single_plugin_router(&dir.join("example-rust.wasm"), PluginLimits::default())?;
    harness::sample_agents(&native_router);
    let native = NativeRules {
        host: NativeHost { agents: Arc::<AgentDirectory>::clone(native_router.agents()), kv: Default::default() },
    };
    // ONLY=rust (a comma-separated list of native, rust, go, c) measures just those, e.g. under
    // a profiler.
    let only = std::env::var("ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|only| only.split(',').any(|o| o == name));
    let mut routers: Vec<(String, Box<dyn Router>)> = Vec::new();
    if wanted("native") {
        routers.push(("native".into(), Box::new(native)));
    }
    for language in ["rust", "go", "c"].into_iter().filter(|language| wanted(language)) {
        let path = dir.join(format!("example-{language}.wasm"));
        let router = harness::single_plugin_router(&path, PluginLimits::default())
            .map_err(|e| anyhow::anyhow!("{}: {e} (run plugins/build.sh)", path.display()))?;
        harness::sample_agents(&router);
        routers.push((language.into(), Box::new(router)));
    }
    let mut samples: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    for _ in 0..rounds {
        for (name, router) in &routers {
            for &batch in &batches {
                samples.entry((name.clone(), batch)).or_default().push(harness::bench(
                    router.as_ref(),
                    batch,
                    duration,
                ));
            }
        }
    }
    let results: BTreeMap<(String, usize), f64> = samples
        .into_iter()
        .map(|(key, mut values)| {
            values.sort_by(f64::total_cmp);
            (key, values[values.len() / 2])
        })
        .collect();

    println!("| implementation | batch 1 | batch 16 | batch 256 | ratio to native at 256 |");
    println!("|---|---:|---:|---:|---:|");
    for name in ["native", "rust", "go", "c"].into_iter().filter(|name| wanted(name)) {
        let cell = |batch: usize| format!("{:.0} ns", results[&(name.to_owned(), batch)]);
        let ratio = match results.get(&("native".to_owned(), 256)) {
            Some(native) => format!("{:.2}x", results[&(name.to_owned(), 256)] / native),
            None => "n/a".to_owned(),
        };
        let label =
            if name == "native" { "native Rust (same rules)".to_owned() } else { format!("{name} plugin (wasm)") };
        println!("| {label} | {} | {} | {} | {ratio} |", cell(1), cell(16), cell(256));
    }
    Ok(())
}
