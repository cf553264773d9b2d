//! Debian's Prometheus scrapes a running gateway and evaluates the shipped alert rules; promtool
//! checks and unit-tests the rules. Fails if prometheus/promtool are missing (tests/setup.sh
//! installs them).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_addr, inquiry_json, workspace_file, Gateway, HttpClient};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [vec!["check", "rules", "alerts.yml"], vec!["test", "rules", "alerts.test.yml"]] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(workspace_file("deploy/prometheus"))
            .output()
            .expect("promtool (Debian package prometheus) must be installed");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_and_evaluates_the_rules() {
    let gateway = Gateway::start("").await;
    let client = HttpClient::new();
    for n in 0..5 {
        client.post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-p", &format!("p-{n}"))).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let web = free_addr();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: inquiry-gateway\n    static_configs:\n      - targets: ['{}']\n",
        workspace_file("deploy/prometheus/alerts.yml").display(),
        gateway.admin
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus) must be installed"),
    );

    let api = |path: &str| format!("http://{web}/api/v1/{path}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let accepted = loop {
        let query = api("query?query=sum(inquiry_gateway_inquiries_total%7Boutcome%3D%22accepted%22%7D)");
        if let Ok(reply) = client.try_request(hyper::Method::GET, &query, "", &[]).await {
            let body = reply.json();
            if let Some(value) = body["data"]["result"][0]["value"][1].as_str() {
                break value.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "prometheus never scraped the gateway");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(accepted, "5");

    // Every query of the Grafana dashboard runs on a real Prometheus without error.
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(workspace_file("deploy/grafana/inquiry-gateway.json")).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$hop", ".*");
            let url = format!(
                "{}?query={}",
                api("query"),
                url::form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>()
            );
            let reply = client.get(&url).await;
            assert_eq!(
                reply.json()["status"],
                "success",
                "panel {}: {expr}: {}",
                panel["title"],
                String::from_utf8_lossy(&reply.body)
            );
            queries += 1;
        }
    }
    assert!(queries >= 17);

    let targets = client.get(&api("targets")).await.json();
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");

    // Every rule group loads and evaluates without error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = client.get(&api("rules")).await.json();
        let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
        let rules: Vec<serde_json::Value> =
            groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        let evaluated = !rules.is_empty()
            && rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        if evaluated {
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "rule {} failed: {}", rule["name"], rule["lastError"]);
            }
            let defined = std::fs::read_to_string(workspace_file("deploy/prometheus/alerts.yml")).unwrap();
            let defined = defined.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
            assert_eq!(rules.len(), defined, "every rule of alerts.yml is loaded");
            assert!(defined >= 18);
            let firing: Vec<&serde_json::Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
            assert!(firing.is_empty(), "a healthy gateway fires nothing: {firing:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rules never evaluated");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
