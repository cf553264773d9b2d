//! Routing plugins over real sockets: the example plugins (Rust, Go, C) in chains, hostile
//! plugins contained, a poison inquiry failing alone, quarantine, hot reload, shadow mode,
//! replay, and `plugin test`. Needs plugins/build.sh to have run (tests/run-all.sh does).

mod support;

use std::process::Command;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use support::{built_plugin, eventually, metric_value, test_plugin, workspace_file, Gateway, HttpClient};

fn inquiry(account: &str, external_id: &str, country: &str, body: &str) -> String {
    json!({
        "channel": "generic", "account": account, "external_id": external_id,
        "conversation_id": format!("conv-{external_id}"),
        "buyer": {"country": country}, "subject": "Question", "body": body,
        "occurred_at": "2026-11-24T08:00:00Z",
    })
    .to_string()
}

/// Posts one inquiry and returns its stored decision.
async fn route(client: &HttpClient, gateway: &Gateway, body: String) -> Value {
    let reply = client.post_json(&gateway.url("/v1/inquiries"), body).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let stored = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await;
    stored.json()["decision"].clone()
}

/// Posts `lines` as one NDJSON batch and returns the stored inquiries, in order.
async fn route_batch(client: &HttpClient, gateway: &Gateway, lines: Vec<String>) -> Vec<Value> {
    let reply = client
        .request(
            Method::POST,
            &gateway.url("/v1/inquiries/batch"),
            lines.join("\n"),
            &[("content-type", "application/x-ndjson")],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", String::from_utf8_lossy(&reply.body));
    let mut stored = Vec::new();
    for item in reply.json()["results"].as_array().unwrap() {
        stored.push(client.get(&gateway.url(&format!("/v1/inquiries/{}", item["id"].as_str().unwrap()))).await.json());
    }
    stored
}

/// Sets agent anna offline over the admin API.
async fn take_anna_offline(client: &HttpClient, gateway: &Gateway) {
    let url = gateway.admin_url("/v1/agents/anna");
    let reply =
        client.request(Method::PUT, &url, r#"{"online": false}"#, &[("content-type", "application/json")]).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", String::from_utf8_lossy(&reply.body));
}

/// A plugin's configuration. Without limits of its own (`extra`), deadlines that a loaded CI
/// machine meets: the default 50 ms per batch and 500 µs per inquiry retried alone are for
/// production hardware, and a test routing fine inquiries must not fall back on a timeout.
fn plugin_toml(id: &str, path: &std::path::Path, extra: &str) -> String {
    let limits = if extra.contains("[routing.plugins.limits]") {
        ""
    } else {
        "[routing.plugins.limits]\nbatch_timeout_ms = 5000\nrecord_timeout_us = 100000\n"
    };
    format!(
        "[[routing.plugins]]\nid = \"{id}\"\npath = \"{}\"\ncapabilities = [\"agents\", \"kv\", \"log\", \"counters\", \"clock\"]\n{extra}\n{limits}",
        path.display()
    )
}

fn chain_toml(account: &str, plugins: &[&str]) -> String {
    let list: Vec<String> = plugins.iter().map(|p| format!("\"{p}\"")).collect();
    format!("[[routing.chains]]\naccount = \"{account}\"\nplugins = [{}]\n", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugins_route_in_chains_by_account_with_round_robin() {
    let mut config = String::new();
    for language in ["rust", "go", "c"] {
        config += &plugin_toml(language, &built_plugin(&format!("example-{language}.wasm")), "");
        config += &chain_toml(&format!("shop-{language}"), &[language]);
    }
    config += "[[routing.agents]]\nid = \"anna\"\nteam = \"eu-sales\"\ncapacity = 5\n";
    config += "[[routing.agents]]\nid = \"ben\"\nteam = \"eu-sales\"\ncapacity = 5\n";
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();

    for language in ["rust", "go", "c"] {
        let account = format!("shop-{language}");
        let first =
            route(&client, &gateway, inquiry(&account, &format!("{language}-1"), "DE", "Bulk order of 500 units?"))
                .await;
        assert_eq!(first["queue"], "eu-sales", "{language}: {first}");
        assert_eq!(first["priority"], "high", "{language}: {first}");
        assert_eq!(first["tags"], json!(["bulk"]), "{language}: {first}");
        assert_eq!(first["assignee"], "anna", "{language}: {first}");
        assert!(first["decided_by"].as_str().unwrap().starts_with(&format!("plugin:{language}@")), "{first}");
        let second = route(&client, &gateway, inquiry(&account, &format!("{language}-2"), "AT", "Hallo")).await;
        assert_eq!(second["assignee"], "ben", "{language}: round-robin moves on: {second}");

        // No rule: the plugin is undecided and the fallback route takes it, without a dead letter.
        let undecided = route(&client, &gateway, inquiry(&account, &format!("{language}-3"), "BR", "Olá")).await;
        assert_eq!(
            (undecided["queue"].as_str(), undecided["decided_by"].as_str()),
            (Some("unassigned"), Some("fallback"))
        );
        assert!(undecided.get("fallback_reason").is_none(), "{undecided}");
    }
    // An account without a chain takes the fallback route.
    let unchained = route(&client, &gateway, inquiry("shop-other", "x-1", "DE", "Bulk order")).await;
    assert_eq!(unchained["decided_by"], "fallback");

    // Agent presence from the admin API changes the next assignment.
    take_anna_offline(&client, &gateway).await;
    let third = route(&client, &gateway, inquiry("shop-rust", "rust-4", "DE", "Hallo")).await;
    assert_eq!(third["assignee"], "ben", "anna is offline: {third}");

    let text = support::metrics(&gateway).await;
    assert!(
        metric_value(&text, "inquiry_gateway_plugin_outcomes_total", &[("plugin", "go"), ("outcome", "decided")])
            >= 2.0
    );
    assert!(metric_value(&text, "inquiry_gateway_plugin_duration_seconds_count", &[("plugin", "c")]) >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_their_inquiries_take_the_fallback_route() {
    let hostile = [
        ("loop", "loop.wat", "plugin_timeout"),
        ("bomb", "memory-bomb.wat", "plugin_memory"),
        ("trap", "trap.wat", "plugin_trap"),
        ("garbage", "garbage.wat", "plugin_bad_output"),
        ("enormous", "enormous.wat", "plugin_bad_output"),
        ("wrong-abi", "wrong-abi.wat", "plugin_abi"),
        ("ungranted", "ungranted.wat", "plugin_abi"),
    ];
    let mut config = String::new();
    for (id, file, _) in hostile {
        // Deadlines well above a loaded machine's stalls (an inquiry retried alone has 500 µs by
        // default): only the looping plugin reaches them, the others fail their own way.
        let extra = "[routing.plugins.limits]\nmax_memory_bytes = 8388608\nbatch_timeout_ms = 200\n\
                     record_timeout_us = 50000\nquarantine_after_failures = 1000\n";
        // `ungranted` gets no capabilities at all.
        let text = plugin_toml(id, &test_plugin(file), extra);
        config += &if id == "ungranted" {
            text.replace("capabilities = [\"agents\", \"kv\", \"log\", \"counters\", \"clock\"]", "")
        } else {
            text
        };
        config += &chain_toml(&format!("shop-{id}"), &[id]);
    }
    // A quarantined plugin: two failures open its breaker for a minute.
    config += &plugin_toml(
        "flaky",
        &test_plugin("trap.wat"),
        "[routing.plugins.limits]\nquarantine_after_failures = 2\nquarantine_ms = 60000\n",
    );
    config += &chain_toml("shop-flaky", &["flaky"]);
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();

    for (id, _, reason) in hostile {
        // A batch of three: the failed batch is retried inquiry by inquiry; every one still lands.
        let lines: Vec<String> =
            (0..3).map(|i| inquiry(&format!("shop-{id}"), &format!("{id}-{i}"), "DE", "Hallo")).collect();
        for stored in route_batch(&client, &gateway, lines).await {
            let decision = &stored["decision"];
            assert_eq!(decision["queue"], "unassigned", "{id}: {decision}");
            assert_eq!(decision["fallback_reason"], reason, "{id}: {decision}");
        }
    }
    for i in 0..3 {
        let decision = route(&client, &gateway, inquiry("shop-flaky", &format!("flaky-{i}"), "DE", "Hallo")).await;
        let expected = if i < 2 { "plugin_trap" } else { "plugin_quarantined" };
        assert_eq!(decision["fallback_reason"], expected, "inquiry {i}: {decision}");
    }

    let health = client.get(&gateway.admin_url("/healthz")).await;
    assert_eq!(health.status.as_u16(), 200, "the gateway survives every hostile plugin");
    let text = support::metrics(&gateway).await;
    for (id, _, reason) in hostile {
        assert!(
            metric_value(&text, "inquiry_gateway_plugin_failures_total", &[("plugin", id), ("reason", reason)]) >= 3.0,
            "{id}: failures counted by reason"
        );
        assert!(
            metric_value(&text, "inquiry_gateway_dead_letters_total", &[("reason", reason)]) >= 3.0,
            "{reason} dead-lettered"
        );
    }
    assert_eq!(metric_value(&text, "inquiry_gateway_plugin_loaded", &[("plugin", "wrong-abi")]), 0.0);
    assert_eq!(metric_value(&text, "inquiry_gateway_plugin_loaded", &[("plugin", "trap")]), 1.0);
    assert_eq!(metric_value(&text, "inquiry_gateway_plugin_quarantined", &[("plugin", "flaky")]), 1.0);
    assert_eq!(metric_value(&text, "inquiry_gateway_plugin_quarantined", &[("plugin", "trap")]), 0.0);

    let status = client.get(&gateway.admin_url("/v1/plugins")).await.json();
    let state = |id: &str| status["plugins"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap().clone();
    assert_eq!(state("flaky")["state"], "quarantined");
    assert_eq!(state("wrong-abi")["state"], "broken");
    assert!(
        state("ungranted")["error"].as_str().unwrap().contains("capability `kv` is not granted"),
        "{}",
        state("ungranted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_inquiry_fails_alone_and_the_rest_of_its_batch_is_routed() {
    // Deadlines well above a loaded machine's stalls (an inquiry retried alone has 500 µs by
    // default): only the spinning inquiry reaches them.
    let limits = "[routing.plugins.limits]\nbatch_timeout_ms = 500\nrecord_timeout_us = 50000\n";
    let config = plugin_toml("poison", &built_plugin("test-poison.wasm"), limits) + &chain_toml("shop-1", &["poison"]);
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let bodies = ["fine", "this is poison", "fine too", "spin forever", "also fine"];
    let lines: Vec<String> =
        bodies.iter().enumerate().map(|(i, b)| inquiry("shop-1", &format!("p-{i}"), "DE", b)).collect();
    let seen: Vec<(String, Value, Value)> = route_batch(&client, &gateway, lines)
        .await
        .into_iter()
        .map(|stored| {
            let decision = &stored["decision"];
            (
                stored["personal"]["body"].as_str().unwrap().to_owned(),
                decision["queue"].clone(),
                decision["fallback_reason"].clone(),
            )
        })
        .collect();
    let expected = [
        ("fine", "clean", Value::Null),
        ("this is poison", "unassigned", json!("plugin_trap")),
        ("fine too", "clean", Value::Null),
        ("spin forever", "unassigned", json!("plugin_timeout")),
        ("also fine", "clean", Value::Null),
    ];
    for ((body, queue, reason), (got_body, got_queue, got_reason)) in expected.iter().zip(&seen) {
        assert_eq!(
            (body.to_string(), json!(queue), reason.clone()),
            (got_body.clone(), got_queue.clone(), got_reason.clone())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_updates_are_kept_across_a_restart_and_unknown_agents_or_fields_are_refused() {
    let config = plugin_toml("router", &built_plugin("example-c.wasm"), "")
        + &chain_toml("shop-1", &["router"])
        + "[[routing.agents]]\nid = \"anna\"\nteam = \"eu-sales\"\ncapacity = 5\n\
           [[routing.agents]]\nid = \"ben\"\nteam = \"eu-sales\"\ncapacity = 5\n";
    let mut gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let agents_url = gateway.admin_url("/v1/agents/"); // the same after a restart
    let put = |agent: &str, body: &'static str| {
        let (client, url) = (client.clone(), format!("{agents_url}{agent}"));
        async move { client.request(Method::PUT, &url, body, &[("content-type", "application/json")]).await }
    };
    let unknown = put("nobody", r#"{"online": false}"#).await;
    assert_eq!((unknown.status.as_u16(), unknown.error_code().as_str()), (404, "not_found"));
    let bad = put("anna", r#"{"online": false, "mood": "sunny"}"#).await;
    assert_eq!((bad.status.as_u16(), bad.error_code().as_str()), (422, "invalid_value"));
    // Two updates of one agent: each keeps the other's field.
    assert_eq!(put("anna", r#"{"load": 4}"#).await.status.as_u16(), 200);
    assert_eq!(put("anna", r#"{"online": false}"#).await.status.as_u16(), 200);
    let first = route(&client, &gateway, inquiry("shop-1", "k-1", "DE", "Hallo")).await;
    assert_eq!(first["assignee"], "ben", "anna is offline: {first}");

    let listed = |gateway: &Gateway| {
        let (client, url) = (client.clone(), gateway.admin_url("/v1/agents"));
        async move { client.get(&url).await.json() }
    };
    let expected = json!({"agents": [
        {"id": "anna", "team": "eu-sales", "load": 4, "capacity": 5, "online": false, "available": false},
        {"id": "ben", "team": "eu-sales", "load": 0, "capacity": 5, "online": true, "available": true},
    ]});
    assert_eq!(listed(&gateway).await, expected);

    assert!(gateway.terminate().success());
    gateway.restart().await;
    assert_eq!(listed(&gateway).await, expected, "the same after the restart");
    for n in 2..4 {
        let next = route(&client, &gateway, inquiry("shop-1", &format!("k-{n}"), "DE", "Hallo")).await;
        assert_eq!(next["assignee"], "ben", "anna is still offline after the restart: {next}");
    }
    // Back online with her kept load of 4 and a capacity lowered to 4: at capacity, she takes none.
    assert_eq!(put("anna", r#"{"online": true, "capacity": 4}"#).await.status.as_u16(), 200);
    let mut assignees = Vec::new();
    for n in 4..8 {
        let next = route(&client, &gateway, inquiry("shop-1", &format!("k-{n}"), "DE", "Hallo")).await;
        assignees.push(next["assignee"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(assignees, ["ben"; 4], "anna's kept load 4 is at her new capacity 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_file_is_swapped_in_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("router.wasm");
    std::fs::copy(built_plugin("example-c.wasm"), &live).unwrap();
    let config =
        plugin_toml("router", &live, "") + &chain_toml("shop-1", &["router"]) + "[routing]\nreload_interval_ms = 100\n";
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let version = |status: &Value| status["plugins"][0]["version"].as_str().unwrap().to_owned();

    let before = route(&client, &gateway, inquiry("shop-1", "r-1", "DE", "Hallo")).await;
    let first_version = version(&client.get(&gateway.admin_url("/v1/plugins")).await.json());
    assert_eq!(before["decided_by"], format!("plugin:router@{first_version}"));

    // A new version is written beside and renamed into place (atomic for readers).
    let staged = dir.path().join("router.wasm.new");
    std::fs::copy(built_plugin("example-rust.wasm"), &staged).unwrap();
    std::fs::rename(&staged, &live).unwrap();
    eventually(Duration::from_secs(10), "the new version is live", || async {
        version(&client.get(&gateway.admin_url("/v1/plugins")).await.json()) != first_version
    })
    .await;
    let second_version = version(&client.get(&gateway.admin_url("/v1/plugins")).await.json());
    let after = route(&client, &gateway, inquiry("shop-1", "r-2", "DE", "Hallo")).await;
    assert_eq!(after["decided_by"], format!("plugin:router@{second_version}"));

    // A broken file is refused: the previous version keeps routing.
    std::fs::write(&staged, b"\0asm garbage").unwrap();
    std::fs::rename(&staged, &live).unwrap();
    eventually(Duration::from_secs(10), "the broken reload is counted", || async {
        let text = support::metrics(&gateway).await;
        metric_value(&text, "inquiry_gateway_plugin_reloads_total", &[("result", "error")]) >= 1.0
    })
    .await;
    let still = route(&client, &gateway, inquiry("shop-1", "r-3", "DE", "Hallo")).await;
    assert_eq!(still["decided_by"], format!("plugin:router@{second_version}"));
    assert_eq!(still["queue"], "eu-sales");
    // The swap is in the audit log (who routes from when on); the refused file changed nothing.
    let swaps = support::audit_entries_of(&gateway, "routing.reloaded").await;
    assert_eq!(swaps.len(), 1, "{swaps:?}");
    assert_eq!(swaps[0]["actor"], "gateway:plugin_watcher");
    assert_eq!(swaps[0]["detail"]["plugins"], serde_json::json!([format!("router@{second_version} (ok)")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_without_plugins_takes_them_and_a_new_fallback_route_on_reload() {
    let mut gateway = Gateway::start("[routing]\nreload_interval_ms = 100\n").await;
    let client = HttpClient::new();
    let before = route(&client, &gateway, inquiry("shop-1", "n-1", "DE", "Hallo")).await;
    assert_eq!((before["decided_by"].as_str(), before["queue"].as_str()), (Some("fallback"), Some("unassigned")));
    assert_eq!(client.get(&gateway.admin_url("/v1/plugins")).await.json()["plugins"], json!([]));

    // SIGHUP with a plugin for shop-1, its agents, and another fallback queue for everything else.
    let config = plugin_toml("router", &built_plugin("example-c.wasm"), "")
        + &chain_toml("shop-1", &["router"])
        + "[[routing.agents]]\nid = \"anna\"\nteam = \"eu-sales\"\ncapacity = 5\n"
        + "[routing]\nreload_interval_ms = 100\n[routing.fallback]\nqueue = \"triage\"\npriority = \"high\"\n";
    gateway.reconfigure(&config);
    eventually(Duration::from_secs(20), "the plugin is loaded", || async {
        client.get(&gateway.admin_url("/v1/plugins")).await.json()["plugins"][0]["state"] == "ok"
    })
    .await;
    let routed = route(&client, &gateway, inquiry("shop-1", "n-2", "DE", "Hallo")).await;
    assert!(routed["decided_by"].as_str().unwrap().starts_with("plugin:router@"), "{routed}");
    assert_eq!(routed["queue"], "eu-sales");
    let other = route(&client, &gateway, inquiry("shop-2", "n-3", "DE", "Hallo")).await;
    assert_eq!((other["decided_by"].as_str(), other["queue"].as_str()), (Some("fallback"), Some("triage")));
    assert_eq!(other["priority"], "high");
    let reloads = support::audit_entries_of(&gateway, "config.reloaded").await;
    assert_eq!(reloads.last().unwrap()["detail"]["routing"], "reloaded", "{reloads:?}");
    // The agents that came with them take run-time updates like those configured at start.
    take_anna_offline(&client, &gateway).await;
    let agents = client.get(&gateway.admin_url("/v1/agents")).await.json();
    assert_eq!(
        (agents["agents"][0]["id"].as_str(), agents["agents"][0]["online"].as_bool()),
        (Some("anna"), Some(false))
    );

    // Taken away again: back to the fallback route alone (the engine stays, unused).
    gateway.reconfigure("[routing]\nreload_interval_ms = 100\n");
    eventually(Duration::from_secs(20), "the plugin is gone", || async {
        client.get(&gateway.admin_url("/v1/plugins")).await.json()["plugins"] == json!([])
    })
    .await;
    let after = route(&client, &gateway, inquiry("shop-1", "n-4", "DE", "Hallo")).await;
    assert_eq!((after["decided_by"].as_str(), after["queue"].as_str()), (Some("fallback"), Some("unassigned")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_settings_reach_the_plugin_name_its_version_and_a_shadow_tries_new_ones_on_live_traffic() {
    let go = built_plugin("example-go.wasm");
    // The Go example reads the `default_team` setting through the SDK; the shadow runs the same
    // module with other settings.
    let config = |team: &str| {
        plugin_toml(
            "router",
            &go,
            &format!(
                "[routing.plugins.settings]\ndefault_team = \"{team}\"\n[routing.plugins.shadow.settings]\ndefault_team = \"latam-sales\"\n"
            ),
        ) + &chain_toml("shop-1", &["router"])
    };
    let mut gateway = Gateway::start(&config("global-sales")).await;
    let client = HttpClient::new();

    let unmatched = route(&client, &gateway, inquiry("shop-1", "s-1", "BR", "Olá")).await;
    assert_eq!(unmatched["queue"], "global-sales", "no team by the rules: the setting's: {unmatched}");
    let matched = route(&client, &gateway, inquiry("shop-1", "s-2", "DE", "Hallo")).await;
    assert_eq!(matched["queue"], "eu-sales", "the rules come first: {matched}");

    // The version label names the module and the settings: plugin:router@<12 hex>+<8 hex>.
    let version_of = |decision: &Value| {
        let decided_by = decision["decided_by"].as_str().unwrap().to_owned();
        let version = decided_by.strip_prefix("plugin:router@").expect("decided by the plugin").to_owned();
        let (module, settings) = version.split_once('+').expect("a settings digest");
        assert!(module.len() == 12 && settings.len() == 8, "{version}");
        (module.to_owned(), settings.to_owned())
    };
    let (module, settings) = version_of(&unmatched);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&go).unwrap()));
    assert_eq!(module, digest[..12], "the module part is the module's SHA-256");

    let plugin_status = |status: &Value| status["plugins"][0].clone();
    eventually(Duration::from_secs(10), "the shadow compared both", || async {
        let shadow = plugin_status(&client.get(&gateway.admin_url("/v1/plugins")).await.json())["shadow"].clone();
        shadow["agree"] == 1 && shadow["disagree"] == 1
    })
    .await;
    let status = plugin_status(&client.get(&gateway.admin_url("/v1/plugins")).await.json());
    let sample = &status["shadow"]["samples"][0];
    assert!(sample["live"].as_str().unwrap().contains("queue=global-sales"), "{sample}");
    assert!(sample["candidate"].as_str().unwrap().contains("queue=latam-sales"), "{sample}");
    let shadow_version = status["shadow"]["version"].as_str().unwrap();
    assert!(shadow_version.starts_with(&format!("{module}+")), "same module: {shadow_version}");
    assert_ne!(shadow_version, status["version"].as_str().unwrap(), "other settings, another version");

    // New settings on SIGHUP: the next decisions follow them under a new version label.
    gateway.reconfigure(&config("apac-sales"));
    eventually(Duration::from_secs(10), "the new settings are live", || async {
        let status = plugin_status(&client.get(&gateway.admin_url("/v1/plugins")).await.json());
        status["version"].as_str().is_some_and(|v| !v.ends_with(&settings))
    })
    .await;
    let after = route(&client, &gateway, inquiry("shop-1", "s-3", "BR", "Olá")).await;
    assert_eq!(after["queue"], "apac-sales", "{after}");
    let (module_after, settings_after) = version_of(&after);
    assert_eq!(module_after, module);
    assert_ne!(settings_after, settings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_candidates_are_compared_without_changing_routing_and_replay_uses_either_version() {
    let rust = built_plugin("example-rust.wasm");
    let mut config = String::new();
    config += &plugin_toml(
        "agreeing",
        &rust,
        &format!(
            "[routing.plugins.shadow]\npath = \"{}\"\nversion = \"c-1\"\n",
            built_plugin("example-c.wasm").display()
        ),
    );
    config += &chain_toml("shop-a", &["agreeing"]);
    config += &plugin_toml(
        "disagreeing",
        &rust,
        &format!(
            "[routing.plugins.shadow]\npath = \"{}\"\nversion = \"review-1\"\n",
            test_plugin("everything-to-review.wat").display()
        ),
    );
    config += &chain_toml("shop-b", &["disagreeing"]);
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();

    let mut ids = Vec::new();
    for i in 0..6 {
        for account in ["shop-a", "shop-b"] {
            let country = ["DE", "US", "JP"][i % 3];
            let body = inquiry(account, &format!("{account}-{i}"), country, "Urgent: wholesale price?");
            let reply = client.post_json(&gateway.url("/v1/inquiries"), body).await;
            assert_eq!(reply.status.as_u16(), 201);
            let id = reply.json()["id"].as_str().unwrap().to_owned();
            let decision = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await.json()["decision"].clone();
            assert_ne!(decision["queue"], "review", "the shadow never routes");
            ids.push((account, id));
        }
    }
    let shadow = |status: &Value, id: &str| {
        status["plugins"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["shadow"].clone()
    };
    eventually(Duration::from_secs(10), "both shadows compared all six", || async {
        let status = client.get(&gateway.admin_url("/v1/plugins")).await.json();
        shadow(&status, "agreeing")["agree"] == 6 && shadow(&status, "disagreeing")["disagree"] == 6
    })
    .await;
    let status = client.get(&gateway.admin_url("/v1/plugins")).await.json();
    assert_eq!(shadow(&status, "agreeing")["disagree"], 0);
    let sample = &shadow(&status, "disagreeing")["samples"][0];
    assert!(sample["candidate"].as_str().unwrap().contains("queue=review"), "{sample}");

    // Replay: the live version reproduces the stored decisions; the candidate changes them all.
    let b_ids: Vec<&str> = ids.iter().filter(|(a, _)| *a == "shop-b").map(|(_, id)| id.as_str()).collect();
    let replay = |version: &'static str| {
        let body = json!({ "ids": b_ids, "version": version }).to_string();
        let client = client.clone();
        let url = gateway.admin_url("/v1/plugins/disagreeing/replay");
        async move { client.request(Method::POST, &url, body, &[("content-type", "application/json")]).await.json() }
    };
    let live = replay("live").await;
    assert_eq!((live["replayed"].as_u64(), live["changed"].as_u64()), (Some(6), Some(0)), "{live}");
    let candidate = replay("shadow").await;
    assert_eq!((candidate["replayed"].as_u64(), candidate["changed"].as_u64()), (Some(6), Some(6)), "{candidate}");
    assert_eq!(candidate["results"][0]["replayed"]["queue"], "review");
    // By time range too (ids start with the message time).
    let body = json!({ "from": "2026-11-24T07:00:00Z", "to": "2026-11-24T09:00:00Z", "limit": 100 }).to_string();
    let ranged = client
        .request(
            Method::POST,
            &gateway.admin_url("/v1/plugins/agreeing/replay"),
            body,
            &[("content-type", "application/json")],
        )
        .await
        .json();
    assert_eq!(ranged["replayed"].as_u64(), Some(12), "{ranged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_a_token_with_the_right_scope_once_tokens_are_configured() {
    let config = plugin_toml("router", &built_plugin("example-c.wasm"), "")
        + &chain_toml("shop-1", &["router"])
        + "[[admin.tokens]]\nid = \"ops\"\ntoken = \"read-only-token-0123456789\"\nscopes = [\"plugins:read\"]\n";
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let url = gateway.admin_url("/v1/plugins");
    assert_eq!(client.get(&url).await.status.as_u16(), 401);
    let bad = client.request(Method::GET, &url, "", &[("authorization", "Bearer nope-nope-nope-nope")]).await;
    assert_eq!(bad.status.as_u16(), 401);
    let ok = client.request(Method::GET, &url, "", &[("authorization", "Bearer read-only-token-0123456789")]).await;
    assert_eq!(ok.status.as_u16(), 200);
    let reload = client
        .request(
            Method::POST,
            &gateway.admin_url("/v1/plugins/reload"),
            "",
            &[("authorization", "Bearer read-only-token-0123456789")],
        )
        .await;
    assert_eq!((reload.status.as_u16(), reload.error_code().as_str()), (403, "scope_missing"));
    let agents = client
        .request(
            Method::GET,
            &gateway.admin_url("/v1/agents"),
            "",
            &[("authorization", "Bearer read-only-token-0123456789")],
        )
        .await;
    assert_eq!(
        (agents.status.as_u16(), agents.error_code().as_str()),
        (403, "scope_missing"),
        "agents:read is its own"
    );
    assert_eq!(client.get(&gateway.admin_url("/metrics")).await.status.as_u16(), 200, "scrapes need no token");
}

#[test]
fn plugin_test_passes_the_golden_cases_of_every_example_and_prints_a_diff_on_a_mismatch() {
    // `inquiry-gateway plugin test PLUGIN --cases CASES`: its exit code and standard output.
    let plugin_test = |plugin: &str, cases: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway"))
            .args(["plugin", "test"])
            .arg(built_plugin(plugin))
            .arg("--cases")
            .arg(cases)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), stdout + &String::from_utf8_lossy(&out.stderr))
    };
    for language in ["rust", "go", "c"] {
        let cases = workspace_file(&format!("plugins/examples/{language}/cases.jsonl"));
        let (code, output) = plugin_test(&format!("example-{language}.wasm"), &cases);
        assert_eq!(code, Some(0), "{language}:\n{output}");
        assert!(output.contains("15 passed, 0 failed"), "{language}:\n{output}");
    }
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.jsonl");
    let case = json!({
        "name": "expects the wrong team",
        "inquiry": {"channel": "generic", "account": "a", "external_id": "1", "body": "Hallo", "occurred_at": "2026-11-24T08:00:00Z", "buyer": {"country": "DE"}},
        "expect": {"queue": "jp-sales", "priority": "normal"},
    });
    std::fs::write(&wrong, case.to_string()).unwrap();
    let (code, stdout) = plugin_test("example-c.wasm", &wrong);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  expects the wrong team"), "{stdout}");
    assert!(stdout.contains(r#"queue: expected "jp-sales", got "eu-sales""#), "{stdout}");
    assert!(!stdout.contains("priority:"), "matching fields are not listed: {stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");

    // Agents set by a case stay for later ones, also for a case that changes the settings.
    let kept = dir.path().join("kept.jsonl");
    let inquiry = |id: &str| json!({"channel": "generic", "account": "a", "external_id": id, "body": "Hallo", "occurred_at": "2026-11-24T08:00:00Z", "buyer": {"country": "DE"}});
    let cases = [
        json!({"name": "agents given", "inquiry": inquiry("1"), "agents": [{"id": "anna", "team": "eu-sales", "capacity": 5}], "expect": {"assignee": "anna"}}),
        json!({"name": "new settings, same agents", "settings": {"default_team": "global-sales"}, "inquiry": inquiry("2"), "expect": {"queue": "eu-sales", "assignee": "anna"}}),
    ];
    std::fs::write(&kept, cases.iter().map(|c| c.to_string() + "\n").collect::<String>()).unwrap();
    let (code, stdout) = plugin_test("example-c.wasm", &kept);
    assert!(code == Some(0) && stdout.contains("2 passed, 0 failed"), "{stdout}");
}
