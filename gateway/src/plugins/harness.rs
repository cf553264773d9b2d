//! `inquiry-gateway plugin test` (golden cases) and `plugin bench` (cost per inquiry): a plugin
//! run offline in the same sandbox, with the same host functions, as in the gateway.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inquiry_connectors::{generic, Inquiry, NormalizeContext};
use inquiry_plugin_sdk::Agent;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{PluginError, PluginRouter};
use crate::config::{Capability, ChainConfig, PluginConfig, PluginLimits, RoutingConfig};
use crate::routing::{Disposition, RouteOutcome, Router};

/// One golden case: an inquiry in the generic API shape and the decision expected for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// The inquiry, as `POST /v1/inquiries` takes it.
    pub inquiry: Value,
    /// Agents to put in the directory before this case (kept for later cases).
    #[serde(default)]
    pub agents: Vec<CaseAgent>,
    /// The plugin's settings from this case on (the plugin is reloaded with them; `{}` clears
    /// them); absent: the settings of the case before (none at first).
    #[serde(default)]
    pub settings: Option<BTreeMap<String, toml::Value>>,
    /// `"undecided"`, `{"failed": "<reason>"}`, or the decision fields to check (`queue`,
    /// `assignee`, `priority`, `tags`, `language`, `reply_template`, `sla_policy`, `spam`);
    /// fields left out are not checked.
    pub expect: Value,
}

/// An agent of a case's directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseAgent {
    /// Agent id.
    pub id: String,
    /// Team.
    pub team: String,
    /// Open inquiries.
    #[serde(default)]
    pub load: u32,
    /// Capacity.
    pub capacity: u32,
    /// Presence.
    #[serde(default = "online")]
    pub online: bool,
}

fn online() -> bool {
    true
}

/// A router holding one plugin, with every capability granted, routing everything.
pub fn single_plugin_router(path: &Path, limits: PluginLimits) -> Result<PluginRouter, PluginError> {
    let config = single_plugin_config(path, limits, BTreeMap::new());
    let router = PluginRouter::new(&config, crate::routing::FallbackRouter::new(config.fallback.clone()))?;
    if let Some(status) = router.status().into_iter().find(|s| s.error.is_some()) {
        return Err(PluginError::Load {
            id: status.id,
            failure: super::sandbox::Failure::Abi(status.error.unwrap_or_default()),
        });
    }
    Ok(router)
}

/// The routing configuration of [`single_plugin_router`], with `settings` for the plugin.
pub(crate) fn single_plugin_config(
    path: &Path,
    limits: PluginLimits,
    settings: BTreeMap<String, toml::Value>,
) -> RoutingConfig {
    RoutingConfig {
        plugins: vec![PluginConfig {
            id: "under-test".to_owned(),
            path: path.to_owned(),
            version: None,
            capabilities: vec![
                Capability::Log,
                Capability::Counters,
                Capability::Clock,
                Capability::Agents,
                Capability::Kv,
            ],
            limits,
            shadow: None,
            settings,
        }],
        chains: vec![ChainConfig { channel: None, account: None, plugins: vec!["under-test".to_owned()] }],
        ..RoutingConfig::default()
    }
}

/// Normalizes a generic-API inquiry for a case or a benchmark.
pub fn normalize(raw: &Value) -> Result<Inquiry, String> {
    let ctx = NormalizeContext {
        // After every case's message time (2030-01-01: a message from the future is refused).
        received_at: OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000),
        trace_id: "00000000000000000000000000000000",
    };
    let mut inquiry = generic::normalize(raw.to_string().as_bytes(), &ctx).map_err(|e| e.to_string())?;
    // Cases have no store: a pseudonym derived from the identity stands in for the gateway's random one.
    let digest = <sha2::Sha256 as sha2::Digest>::digest(inquiry.personal.identity.as_bytes());
    inquiry.buyer.pseudonym = format!("bp_{}", hex::encode(&digest[..16]));
    Ok(inquiry)
}

/// The outcome as the cases write it.
pub fn outcome_json(outcome: &RouteOutcome) -> Value {
    match outcome {
        RouteOutcome::Decided(d) => json!({
            "queue": d.queue,
            "assignee": d.assignee,
            "priority": d.priority,
            "tags": d.tags,
            "language": d.language,
            "reply_template": d.reply_template,
            "sla_policy": d.sla_policy,
            "spam": match &d.disposition { Disposition::RejectSpam { reason } => Some(reason), Disposition::Deliver => None },
        }),
        RouteOutcome::Undecided => json!("undecided"),
        RouteOutcome::Failed { reason, .. } => json!({ "failed": reason }),
    }
}

/// Compares an outcome with a case's expectation; the differences, one per line.
pub fn differences(expect: &Value, got: &Value) -> Vec<String> {
    match (expect, got) {
        (Value::Object(fields), Value::Object(actual)) => fields
            .iter()
            .filter(|(key, value)| actual.get(*key).unwrap_or(&Value::Null) != *value)
            .map(|(key, value)| format!("{key}: expected {value}, got {}", actual.get(key).unwrap_or(&Value::Null)))
            .collect(),
        _ if expect == got => Vec::new(),
        _ => vec![format!("expected {expect}, got {got}")],
    }
}

/// Runs the golden cases of `cases` (JSON Lines) against the plugin at `plugin`, in order; returns
/// the report and whether every case passed.
pub fn run_cases(plugin: &Path, cases: &str) -> Result<(String, bool), String> {
    let router = single_plugin_router(plugin, PluginLimits::default()).map_err(|e| e.to_string())?;
    let mut report = String::new();
    let (mut passed, mut failed) = (0, 0);
    // The latest agents of every team set so far: they stay for later cases, also across a case's
    // settings (its reload starts the agent directory empty).
    let mut agents_so_far: Vec<CaseAgent> = Vec::new();
    for (line_no, line) in cases.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let case: Case = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", line_no + 1))?;
        if let Some(settings) = case.settings {
            let mut problems = Vec::new();
            crate::config::validate_plugin_settings("settings", &settings, &mut problems);
            if !problems.is_empty() {
                return Err(format!("line {} ({}): {}", line_no + 1, case.name, problems.join("; ")));
            }
            // The plugin's key-value map is kept across the reload (round-robin positions go on).
            router
                .reload(Some(&single_plugin_config(plugin, PluginLimits::default(), settings)))
                .map_err(|e| format!("line {} ({}): {e}", line_no + 1, case.name))?;
            set_agents(router.agents(), &agents_so_far);
        }
        set_agents(router.agents(), &case.agents);
        agents_so_far.retain(|known| !case.agents.iter().any(|agent| agent.team == known.team));
        agents_so_far.extend(case.agents.iter().cloned());
        let inquiry = normalize(&case.inquiry).map_err(|e| format!("line {} ({}): {e}", line_no + 1, case.name))?;
        let got = outcome_json(&router.route(&[&inquiry])[0]);
        let diffs = differences(&case.expect, &got);
        if diffs.is_empty() {
            passed += 1;
            let _ = writeln!(report, "ok    {}", case.name);
        } else {
            failed += 1;
            let _ = writeln!(report, "FAIL  {} (line {})", case.name, line_no + 1);
            for diff in diffs {
                let _ = writeln!(report, "        {diff}");
            }
        }
    }
    let _ = writeln!(report, "{passed} passed, {failed} failed");
    Ok((report, failed == 0 && passed > 0))
}

fn set_agents(directory: &Arc<super::host::AgentDirectory>, agents: &[CaseAgent]) {
    let mut teams: Vec<(&str, Vec<Agent>)> = Vec::new();
    for agent in agents {
        let entry = Agent { id: agent.id.clone(), load: agent.load, capacity: agent.capacity, online: agent.online };
        match teams.iter_mut().find(|(team, _)| *team == agent.team) {
            Some((_, list)) => list.push(entry),
            None => teams.push((&agent.team, vec![entry])),
        }
    }
    for (team, list) in teams {
        directory.set_team(team, list);
    }
}

/// Sample inquiries for benchmarks: a mix of languages, countries, keywords and tiers.
pub fn sample_inquiries(count: usize) -> Vec<Inquiry> {
    let variants = [
        ("de", "DE", "Bulk order", "Können Sie 500 Stück liefern? wholesale price please", "standard"),
        ("en", "US", "Urgent", "My parcel has not arrived, this is urgent", "vip"),
        ("ja", "JP", "Question", "サイズについて教えてください", "standard"),
        ("", "BR", "Pergunta", "Vocês enviam para o Brasil?", "standard"),
        ("zh", "CN", "Refund", "I want a refund for order 42", "standard"),
        ("fr", "FR", "Hello", "Bonjour, avez-vous ce produit en bleu ?", "vip"),
    ];
    (0..count)
        .map(|i| {
            let (language, country, subject, body, tier) = variants[i % variants.len()];
            let mut raw = json!({
                "channel": "generic", "account": "shop-1", "external_id": format!("bench-{i}"),
                "conversation_id": format!("conv-{}", i % 97), "subject": subject, "body": body,
                "occurred_at": "2026-11-24T08:00:00Z", "buyer": {"country": country},
                "attributes": {"customer_tier": tier},
            });
            if !language.is_empty() {
                raw["buyer"]["language"] = json!(language);
            }
            normalize(&raw).expect("sample inquiries normalize")
        })
        .collect()
}

/// Agents for the sample inquiries' teams.
pub fn sample_agents(router: &PluginRouter) {
    for team in ["eu-sales", "en-sales", "jp-sales", "cn-sales"] {
        let agents =
            (0..4).map(|i| Agent { id: format!("{team}-{i}"), load: i, capacity: 3, online: i != 1 }).collect();
        router.agents().set_team(team, agents);
    }
}

/// Routes sample batches of `batch` inquiries through `router` for about `duration`; the
/// cost per inquiry in nanoseconds.
pub fn bench(router: &dyn Router, batch: usize, duration: Duration) -> f64 {
    let inquiries = sample_inquiries(batch.max(1) * 4);
    let batches: Vec<Vec<&Inquiry>> = inquiries.chunks(batch.max(1)).map(|c| c.iter().collect()).collect();
    for refs in &batches {
        router.route(refs); // warm up
    }
    let started = Instant::now();
    let mut routed = 0usize;
    while started.elapsed() < duration {
        for refs in &batches {
            let outcomes = router.route(refs);
            routed += outcomes.len();
        }
    }
    started.elapsed().as_nanos() as f64 / routed as f64
}
