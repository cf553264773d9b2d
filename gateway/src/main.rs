//! `inquiry-gateway`: run the gateway, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use inquiry_gateway::config::Config;

/// mimalloc: the request path allocates many small buffers; glibc malloc took ~18% of CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's option setter (`mi_option_set` in mimalloc.h; linked in by the `mimalloc` crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` (15 in mimalloc.h of both v2 and v3: the enum keeps deprecated
/// entries so that the numbers stay stable).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps the memory mimalloc has freed instead of returning it to the OS a second later (the
/// default of mimalloc v3, which the `mimalloc` crate builds). Under load the gateway frees and
/// reallocates the same memory all the time: each return cost a page fault and the zeroing of a
/// page when it was reused (~50,000 faults in 12 s, ~7% of the CPU per single POST). The price:
/// RSS stays at its peak (memory is still reused). `MIMALLOC_PURGE_DELAY` in the environment
/// overrides it.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of mimalloc's global options, valid at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// The inquiry gateway.
#[derive(Parser)]
#[command(name = "inquiry-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway; without --config, the embedded default on 127.0.0.1:8080 (admin :9090).
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Creates the Kafka topics and the CQL schema of a configuration, then exits.
    Migrate {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validates a configuration file without any network or store access.
    Check {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Works with a routing plugin offline.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Verifies or exports the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Data subject requests across replicas.
    #[command(subcommand)]
    Subjects(SubjectsCommand),
}

#[derive(Subcommand)]
enum SubjectsCommand {
    /// Exports everything every replica holds on a data subject as one JSON document: asks each
    /// replica's admin API (`POST /v1/subject-requests`, kind export; each records and audits its
    /// part) and joins the answers. Fails, writing nothing, when any replica does not answer.
    Export {
        /// A replica's admin base URL (`https://gateway-0.gateway:9090`); repeat for each replica.
        #[arg(long, required = true)]
        admin: Vec<String>,
        /// A file with the subject as JSON (`{"email": ...}`, `{"user_id", "channel", "account"}`
        /// or `{"pseudonym": ...}`), or `-` for standard input: personal data stays off the
        /// command line.
        #[arg(long)]
        subject: PathBuf,
        /// `gdpr`, `ccpa` or `lgpd`.
        #[arg(long, default_value = "gdpr")]
        jurisdiction: String,
        /// The environment variable holding an admin token with scope `subjects:export` (none
        /// sent when unset: a loopback gateway without tokens).
        #[arg(long, default_value = "GATEWAY_ADMIN_TOKEN")]
        token_env: String,
        /// Output file (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every signed tree head, inclusion and consistency proofs, and that no entry was
    /// changed, removed or reordered. Reads the store of a stopped gateway (--config), or an
    /// export (--export, with the --public-key you trust). Exit 1 when the log does not verify.
    Verify {
        /// Configuration file of the gateway whose store to read (the gateway must be stopped).
        #[arg(long, conflicts_with = "export")]
        config: Option<PathBuf>,
        /// An export written by `audit export` or fetched from `GET /v1/audit/entries`.
        #[arg(long, requires = "public_key")]
        export: Option<PathBuf>,
        /// The Ed25519 public key of the tree heads (hex); defaults to the gateway's own key.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Writes the signed tree heads and every entry as NDJSON, for an outside witness.
    Export {
        /// Configuration file of the gateway whose store to read (the gateway must be stopped).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Runs golden cases (JSON Lines: inquiry -> expected decision) and prints a readable diff.
    Test {
        /// The plugin (`.wasm` or `.wat`).
        plugin: PathBuf,
        /// The cases file.
        #[arg(long)]
        cases: PathBuf,
    },
    /// Measures the plugin's routing cost per inquiry in batches.
    Bench {
        /// The plugin (`.wasm` or `.wat`).
        plugin: PathBuf,
        /// Inquiries per batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    match Cli::parse().command {
        Command::Check { config } => match load(Some(&config)).and_then(|c| Ok(c.validate()?)) {
            Ok(()) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{}: {err:#}", config.display());
                ExitCode::from(2)
            }
        },
        Command::Migrate { config } => match migrate(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("inquiry-gateway: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin(command) => match plugin(command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("inquiry-gateway: {err:#}");
                ExitCode::from(2)
            }
        },
        Command::Audit(command) => match audit(command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("inquiry-gateway: {err:#}");
                ExitCode::from(2)
            }
        },
        Command::Subjects(command) => match subjects(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("inquiry-gateway: {err:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("inquiry-gateway: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut config = Config::from_toml(&text)?;
    config.source = Some(path.clone());
    Ok(config)
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load(config_path.as_ref())?;
    config.validate()?;
    inquiry_gateway::telemetry::init_logs(&config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(inquiry_gateway::run(config, shutdown_signal()))?;
    Ok(())
}

fn migrate(path: &PathBuf) -> anyhow::Result<()> {
    let config = load(Some(path))?;
    inquiry_gateway::telemetry::init_logs(&config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(inquiry_gateway::migrate(&config))?;
    Ok(())
}

/// `plugin test` and `plugin bench`; Ok(false) when a case failed.
fn plugin(command: PluginCommand) -> anyhow::Result<bool> {
    use inquiry_gateway::plugins::harness;
    match command {
        PluginCommand::Test { plugin, cases } => {
            let text = std::fs::read_to_string(&cases).with_context(|| format!("cannot read {}", cases.display()))?;
            let (report, passed) = harness::run_cases(&plugin, &text).map_err(anyhow::Error::msg)?;
            print!("{report}");
            Ok(passed)
        }
        PluginCommand::Bench { plugin, batch, seconds } => {
            let router = harness::single_plugin_router(&plugin, Default::default())?;
            harness::sample_agents(&router);
            let nanos = harness::bench(&router, batch, std::time::Duration::from_secs(seconds));
            println!("{}: {nanos:.0} ns per inquiry in batches of {batch}", plugin.display());
            Ok(true)
        }
    }
}

/// `audit verify` and `audit export`; Ok(false) when the log does not verify.
fn audit(command: AuditCommand) -> anyhow::Result<bool> {
    use inquiry_gateway::compliance::{self, audit};
    let open = |config: &Config| inquiry_gateway::store::Store::open(&config.store.path).map_err(anyhow::Error::from);
    let report = match command {
        AuditCommand::Export { config, out } => {
            let config = load(config.as_ref())?;
            let store = open(&config)?;
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?,
            );
            let entries = audit::write_export(&store, &mut file)?;
            std::io::Write::flush(&mut file)?;
            println!("{}: {entries} entries", out.display());
            return Ok(true);
        }
        AuditCommand::Verify { export: Some(export), public_key, .. } => {
            let key = hex::decode(public_key.unwrap_or_default().trim()).context("--public-key is not hex")?;
            let text = std::fs::read_to_string(&export).with_context(|| format!("cannot read {}", export.display()))?;
            audit::verify_export(&text, &key)
        }
        AuditCommand::Verify { config, public_key, .. } => {
            let config = load(config.as_ref())?;
            let key = match public_key {
                Some(hex_key) => hex::decode(hex_key.trim()).context("--public-key is not hex")?,
                None => {
                    let path = compliance::signing_key_path(&config);
                    eprintln!(
                        "note: the public key comes from {}; someone who can write that file can re-sign a \
                         changed log: pin the key with --public-key (from GET /v1/audit/tree-head, kept elsewhere)",
                        path.display()
                    );
                    let document = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    audit::TreeSigner::from_pkcs8(&document).map_err(anyhow::Error::msg)?.public_key().to_vec()
                }
            };
            audit::verify_store(&open(&config)?, &key)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.ok() {
        eprintln!("audit log verifies: {} entries, {} covered by signed tree heads", report.entries, report.covered);
    } else {
        eprintln!("audit log does NOT verify: {} problem(s)", report.problems.len());
    }
    Ok(report.ok())
}

/// `subjects export`: one export from every replica named.
fn subjects(command: SubjectsCommand) -> anyhow::Result<()> {
    let SubjectsCommand::Export { admin, subject, jurisdiction, token_env, out } = command;
    let text = if subject.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the subject from standard input")?
    } else {
        std::fs::read_to_string(&subject).with_context(|| format!("cannot read {}", subject.display()))?
    };
    let subject: serde_json::Value = serde_json::from_str(&text).context("the subject is not JSON")?;
    anyhow::ensure!(subject.is_object(), "the subject must be a JSON object");
    let token = std::env::var(&token_env).ok().filter(|t| !t.is_empty());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let joined = runtime.block_on(inquiry_gateway::compliance::fanout::export_from_replicas(
        &admin,
        token.as_deref(),
        &subject,
        &jurisdiction,
    ))?;
    let document = serde_json::to_string_pretty(&joined)? + "\n";
    match out {
        Some(path) => std::fs::write(&path, document).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{document}"),
    }
    let count = |key: &str| joined[key].as_array().map_or(0, Vec::len);
    eprintln!("{} replicas, {} subjects, {} inquiries", count("replicas"), count("subjects"), count("inquiries"));
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
