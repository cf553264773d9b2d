//! Reach-out end to end: the gateway binary starts first-response SLAs for what it stores, fires
//! reminders, breaches and escalations on time and exactly once across a SIGKILL, stops the clock
//! on a reply, and alerts a local receiver that checks every signature the way the platforms do
//! (DingTalk, Feishu, HMAC webhooks) and refuses the first deliveries (they are retried).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use support::{audit_entries_of, eventually, inquiry_json, metric_value, Gateway, HttpClient, Method, StatusCode};

const HOOK_SECRET: &str = "hook-secret-0123456789";
const DING_SECRET: &str = "SECding-test-secret";
const FEISHU_SECRET: &str = "feishu-test-secret";

/// What the receiver took, per target: (event ids or text lines), and the signatures it refused.
#[derive(Default)]
struct Received {
    /// Webhook events: (event_id, kind, inquiry_id, notify).
    hook: Vec<(String, String, String, Option<String>)>,
    /// Lines of DingTalk and Feishu messages.
    ding: Vec<String>,
    /// DingTalk's `at.atUserIds` of each message.
    ding_mentions: Vec<String>,
    feishu: Vec<String>,
    /// SMS lines by number: (To, line).
    sms: Vec<(String, String)>,
    bad_signatures: Vec<String>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Checks one delivery as the platform would; records it, or why it was refused.
fn receive(
    received: &Mutex<Received>,
    refusals: &AtomicUsize,
    path: &str,
    query: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> (u16, String) {
    let mut received = received.lock().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match path {
        "/hook" => {
            // The first two deliveries fail: the gateway must retry them.
            if refusals.fetch_add(1, Ordering::SeqCst) < 2 {
                return (503, String::new());
            }
            let signature = headers.get("x-inquiry-gateway-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
            let parts: HashMap<&str, &str> = signature.split(',').filter_map(|p| p.split_once('=')).collect();
            let t: i64 = parts.get("t").and_then(|t| t.parse().ok()).unwrap_or(0);
            let mut signed = format!("{t}.").into_bytes();
            signed.extend_from_slice(body);
            let expected = hex::encode(support::hmac_sha256(HOOK_SECRET, &[&signed]));
            if parts.get("v1") != Some(&expected.as_str()) || (now - t).abs() > 300 {
                received.bad_signatures.push(format!("hook: {signature}"));
                return (401, String::new());
            }
            for event in json["events"].as_array().cloned().unwrap_or_default() {
                let text = |f: &str| event[f].as_str().unwrap_or_default().to_owned();
                received.hook.push((
                    text("event_id"),
                    text("kind"),
                    text("inquiry_id"),
                    event["notify"].as_str().map(str::to_owned),
                ));
            }
            (200, String::new())
        }
        "/ding" => {
            let params: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
            let timestamp = params.get("timestamp").copied().unwrap_or("");
            let sign = percent_decode(params.get("sign").copied().unwrap_or(""));
            let expected = b64(&support::hmac_sha256(DING_SECRET, &[format!("{timestamp}\n{DING_SECRET}").as_bytes()]));
            let fresh = timestamp.parse::<i64>().is_ok_and(|ms| (now * 1000 - ms).abs() < 3_600_000);
            if sign != expected || !fresh || params.get("access_token") != Some(&"ding-token") {
                received.bad_signatures.push(format!("ding: {query}"));
                return (200, r#"{"errcode":310000,"errmsg":"sign not match"}"#.to_owned());
            }
            let text = json["text"]["content"].as_str().unwrap_or_default();
            received.ding.extend(text.lines().map(str::to_owned));
            let mentioned = json["at"]["atUserIds"].as_array().cloned().unwrap_or_default();
            received.ding_mentions.extend(mentioned.iter().filter_map(|u| u.as_str().map(str::to_owned)));
            (200, r#"{"errcode":0,"errmsg":"ok"}"#.to_owned())
        }
        "/feishu" => {
            let timestamp = json["timestamp"].as_str().unwrap_or_default();
            let expected = b64(&support::hmac_sha256(format!("{timestamp}\n{FEISHU_SECRET}"), &[]));
            let fresh = timestamp.parse::<i64>().is_ok_and(|s| (now - s).abs() < 3600);
            if json["sign"].as_str() != Some(expected.as_str()) || !fresh {
                received.bad_signatures.push(format!("feishu: {json}"));
                return (
                    200,
                    r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour from current time"}"#
                        .to_owned(),
                );
            }
            let text = json["content"]["text"].as_str().unwrap_or_default();
            received.feishu.extend(text.lines().map(str::to_owned));
            (200, r#"{"code":0,"msg":"success"}"#.to_owned())
        }
        "/sms/2010-04-01/Accounts/AC0123/Messages.json" => {
            // Twilio: HTTP Basic with the account sid and auth token, a form body.
            let expected = format!("Basic {}", b64(b"AC0123:sms-auth-token"));
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                received.bad_signatures.push("sms: authorization".to_owned());
                return (401, r#"{"code": 20003, "message": "Authenticate", "status": 401}"#.to_owned());
            }
            let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
            if form.get("From").map(String::as_str) != Some("+15005550006") {
                return (400, r#"{"code": 21212, "message": "Invalid From Number", "status": 400}"#.to_owned());
            }
            let to = form.get("To").cloned().unwrap_or_default();
            if to == "+4915100000666" {
                // A number that replied STOP: refused for good, quoting the number (as Twilio does).
                let answer = format!(
                    r#"{{"code": 21610, "message": "Attempt to send to unsubscribed recipient {to}", "status": 400}}"#
                );
                return (400, answer);
            }
            let lines = form.get("Body").map(|b| b.lines().map(str::to_owned).collect::<Vec<_>>()).unwrap_or_default();
            received.sms.extend(lines.into_iter().map(|l| (to.clone(), l)));
            (201, r#"{"sid": "SM0123", "status": "queued"}"#.to_owned())
        }
        _ => (404, String::new()),
    }
}

async fn alert_receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let refusals = Arc::new(AtomicUsize::new(0));
    let shared = received.clone();
    let addr = support::serve(None, move |head, body| {
        let query = head.uri.query().unwrap_or_default();
        receive(&shared, &refusals, head.uri.path(), query, &head.headers, body)
    })
    .await;
    (format!("http://{addr}"), received)
}

fn config(receiver: &str) -> String {
    format!(
        r#"
[[reach.sla_policies]]
id = "fast"
first_response = "3s"
reminders = ["2s"]
escalate_after = ["1s"]
[[reach.sla_rules]]
policy = "fast"
[[reach.teams]]
queue = "unassigned"
lead = "lead-li"
alert_targets = ["hook", "ding", "feishu", "sms"]
[[reach.alert_targets]]
id = "hook"
kind = "webhook"
url = "{receiver}/hook"
secret = "{HOOK_SECRET}"
[[reach.alert_targets]]
id = "ding"
kind = "dingtalk"
url = "{receiver}/ding?access_token=ding-token"
secret = "{DING_SECRET}"
[reach.alert_targets.mentions]
lead-li = "dt-lead-li"
[[reach.alert_targets]]
id = "sms"
kind = "sms"
url = "{receiver}/sms/2010-04-01/Accounts/AC0123/Messages.json"
secret = "AC0123:sms-auth-token"
from = "+15005550006"
to = ["+4915100000009", "+4915100000666"]
[reach.alert_targets.mentions]
lead-li = "+4915100000002"
[[reach.alert_targets]]
id = "feishu"
kind = "feishu"
url = "{receiver}/feishu"
secret = "{FEISHU_SECRET}"
"#
    )
}

async fn post(gateway: &Gateway, external_id: &str) -> String {
    let reply = HttpClient::new().post_json(&gateway.url("/v1/inquiries"), inquiry_json("shop-1", external_id)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.json()["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_steps_fire_once_across_a_sigkill_a_reply_stops_them_and_every_alert_is_signed() {
    let (receiver, received) = alert_receiver().await;
    let mut gateway = Gateway::start(&config(&receiver)).await;
    let client = HttpClient::new();

    let answered = post(&gateway, "reach-answered").await;
    let reply = client
        .request(
            Method::POST,
            &gateway.url(&format!("/v1/inquiries/{answered}/reply")),
            r#"{"agent": "agent-ana"}"#,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    // Answered at once, maybe before the reach stage took it: the SLA starts closed either way.
    let sla = reply.json()["sla"].clone();
    assert_eq!(sla["status"], "met", "{sla}");
    // Attainment and response time per channel.
    let text = support::metrics(&gateway).await;
    let met = [("outcome", "met"), ("channel", "generic")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 1.0);
    // Per team: the queue a team is configured for is a label value; the rest are `other`.
    let team = [("outcome", "met"), ("queue", "unassigned")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &team), 1.0);
    assert_eq!(
        metric_value(&text, "inquiry_gateway_sla_events_total", &[("kind", "sla.started"), ("queue", "unassigned")]),
        1.0
    );
    let generic = [("channel", "generic")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_response_seconds_count", &generic), 1.0);
    let within_a_minute = [("channel", "generic"), ("le", "60")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_response_seconds_bucket", &within_a_minute), 1.0);

    let late = post(&gateway, "reach-late").await;
    let across_kill = post(&gateway, "reach-across-kill").await;
    // Killed before any step is due; down while all of them come due.
    gateway.kill9();
    tokio::time::sleep(Duration::from_secs(5)).await;
    gateway.restart().await;

    let started = Instant::now();
    loop {
        let count = received.lock().unwrap().hook.len();
        if count >= 6 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{count} webhook events:\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more may come
    let received = received.lock().unwrap();
    assert!(received.bad_signatures.is_empty(), "refused signatures: {:?}", received.bad_signatures);

    // Each step of each unanswered inquiry, once; nothing for the answered one.
    let mut steps: Vec<(String, String, Option<String>)> =
        received.hook.iter().map(|(_, kind, id, notify)| (id.clone(), kind.clone(), notify.clone())).collect();
    steps.sort();
    let mut expected = Vec::new();
    for id in [&late, &across_kill] {
        expected.push((id.clone(), "sla.breached".to_owned(), None));
        expected.push((id.clone(), "sla.escalated".to_owned(), Some("lead-li".to_owned())));
        expected.push((id.clone(), "sla.reminder".to_owned(), None));
    }
    expected.sort();
    assert_eq!(steps, expected);
    let ids: std::collections::HashSet<&String> = received.hook.iter().map(|(id, ..)| id).collect();
    assert_eq!(ids.len(), received.hook.len(), "no event delivered twice");

    // The chat bots got the same six alerts, signed, as text lines.
    for (name, lines) in [("dingtalk", &received.ding), ("feishu", &received.feishu)] {
        assert_eq!(lines.len(), 6, "{name}: {lines:?}");
        assert!(lines.iter().all(|l| !l.contains(&answered)), "{name}: alerted about the answered inquiry");
        // DingTalk maps the lead to a DingTalk user: @-mentioned so that DingTalk notifies them.
        let lead = if name == "dingtalk" { "@dt-lead-li" } else { "@lead-li" };
        assert_eq!(lines.iter().filter(|l| l.contains("escalated") && l.ends_with(lead)).count(), 2, "{name}");
    }
    assert!(!received.ding_mentions.is_empty(), "the escalations list the lead in at.atUserIds");
    // SMS: the lead's phone gets the escalations, the duty number the rest.
    let texts =
        |number: &str| -> Vec<&String> { received.sms.iter().filter(|(to, _)| to == number).map(|(_, l)| l).collect() };
    let (lead, duty) = (texts("+4915100000002"), texts("+4915100000009"));
    assert_eq!(lead.len(), 2, "{lead:?}");
    assert!(lead.iter().all(|l| l.starts_with("SLA escalated")));
    assert_eq!(duty.len(), 4, "{duty:?}");
    assert!(duty.iter().all(|l| l.starts_with("SLA reminder") || l.starts_with("SLA breached")));
    // The unsubscribed number is dropped, not retried forever (the duty number got no repeats),
    // and its number never reaches the log.
    assert!(texts("+4915100000666").is_empty());
    assert!(!gateway.log().contains("4915100000666"), "phone numbers stay out of the log");
    assert!(received.ding_mentions.iter().all(|u| u == "dt-lead-li"), "{:?}", received.ding_mentions);

    drop(received);
    let metrics = support::metrics(&gateway).await;
    assert!(metric_value(&metrics, "inquiry_gateway_alerts_total", &[("target", "hook"), ("outcome", "sent")]) >= 1.0);
    assert!(metric_value(&metrics, "inquiry_gateway_alerts_total", &[("target", "sms"), ("outcome", "failed")]) >= 1.0);
    assert!(metric_value(&metrics, "inquiry_gateway_sla_events_total", &[("kind", "sla.breached")]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_unknown_inquiry_or_with_a_bad_body_is_refused() {
    let (receiver, _) = alert_receiver().await;
    let gateway = Gateway::start(&config(&receiver)).await;
    let client = HttpClient::new();
    let unknown = client
        .request(Method::POST, &gateway.url("/v1/inquiries/0190a0c4-5c7e-7000-8000-000000000000/reply"), "", &[])
        .await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let id = post(&gateway, "reach-bad-body").await;
    let bad =
        client.request(Method::POST, &gateway.url(&format!("/v1/inquiries/{id}/reply")), "{\"when\": 1}", &[]).await;
    assert_eq!((bad.status, bad.error_code().as_str()), (StatusCode::BAD_REQUEST, "invalid_json"));
    let array = client.request(Method::POST, &gateway.url(&format!("/v1/inquiries/{id}/reply")), "[]", &[]).await;
    assert_eq!((array.status, array.error_code().as_str()), (StatusCode::BAD_REQUEST, "invalid_json"), "not an object");
    let wrong_method = client.request(Method::GET, &gateway.url(&format!("/v1/inquiries/{id}/reply")), "", &[]).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_on_the_kafka_topic_stops_the_clock_and_the_events_reach_kafka() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};

    const BROKERS: &str = "127.0.0.1:9092";
    let prefix = support::unique("reach");
    let (receiver, received) = alert_receiver().await;
    // A replica name of its own: its replies consumer group is then new, not one where a gateway
    // of an earlier run (same host name) is still a member until its session times out.
    let kafka = format!(
        "[polling]\nreplica = \"{prefix}\"\n[sinks.kafka]\nbrokers = \"{BROKERS}\"\nlocation = \"eu\"\nregions = [\"eu\"]\npartitions = 1\ntopic_prefix = \"{prefix}.\"\n[reach]\nreplies_topic = \"crm.replies.v1\"\n"
    );
    // Longer than the other tests: the replies consumer first joins its group (seconds).
    let reach = config(&receiver)
        .replace("first_response = \"3s\"", "first_response = \"15s\"")
        .replace("reminders = [\"2s\"]", "reminders = [\"5s\"]");
    let gateway = Gateway::start(&format!("{kafka}{reach}")).await;
    support::wait_spool_empty(&gateway, "kafka", Duration::from_secs(60)).await; // topics created
    let answered = post(&gateway, "kafka-answered").await;
    let unanswered = post(&gateway, "kafka-unanswered").await;
    // A buyer outside the EU: its SLA runs, but this EU-only cluster gets none of its events.
    let body = inquiry_json("shop-1", "kafka-elsewhere").replace("\"DE\"", "\"US\"");
    let reply = HttpClient::new().post_json(&gateway.url("/v1/inquiries"), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let elsewhere = reply.json()["id"].as_str().unwrap().to_owned();

    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
    let payload = serde_json::json!({ "inquiry_id": answered, "agent": "agent-ana" }).to_string();
    let topic = format!("{prefix}.crm.replies.v1");
    // The gateway creates the topic when its Kafka sink is ready (maybe a moment from now).
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err((err, _)) =
        producer.send(FutureRecord::to(&topic).key(&answered).payload(&payload), Duration::from_secs(10)).await
    {
        assert!(Instant::now() < deadline, "reply not produced: {err}\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Read sla.events.v1 until both inquiries' fates are known.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", support::unique("sla-reader-"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{prefix}.sla.events.v1")]).unwrap();
    let mut kinds: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let done = kinds.get(&answered).is_some_and(|k| k.contains(&"sla.met".to_owned()))
            && kinds.get(&unanswered).is_some_and(|k| k.contains(&"sla.escalated".to_owned()));
        if done {
            break;
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            assert_eq!(message.key(), Some(event["inquiry_id"].as_str().unwrap().as_bytes()), "keyed by inquiry id");
            let id = event["inquiry_id"].as_str().unwrap().to_owned();
            kinds.entry(id).or_default().push(event["kind"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        kinds.get(&answered).cloned().unwrap_or_default(),
        ["sla.started", "sla.met"],
        "{kinds:?}\n{}",
        gateway.log()
    );
    assert_eq!(
        kinds.get(&unanswered).cloned().unwrap_or_default(),
        ["sla.started", "sla.reminder", "sla.breached", "sla.escalated"],
        "{kinds:?}"
    );
    assert!(!kinds.contains_key(&elsewhere), "no events of another region: {kinds:?}");
    let hook = &received.lock().unwrap().hook;
    assert!(hook.iter().all(|(_, _, id, _)| id != &answered), "no alert about the answered inquiry");
    assert!(hook.iter().any(|(_, _, id, _)| id == &elsewhere), "its SLA ran (alerts go to the team)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_alerts_reach_the_team_lead_by_email() {
    let smtp = support::SmtpServer::start();
    let config = format!(
        r#"
[[reach.sla_policies]]
id = "fast"
first_response = "1s"
escalate_after = ["0s"]
[[reach.sla_rules]]
policy = "fast"
[[reach.teams]]
queue = "unassigned"
lead = "lead-li"
alert_targets = ["mail"]
[[reach.alert_targets]]
id = "mail"
kind = "email"
url = "smtp://127.0.0.1:{}"
from = "Inquiry Gateway <sla@shop.example>"
to = ["lead-li@shop.example", "ops@shop.example"]
"#,
        smtp.port
    );
    let gateway = Gateway::start(&config).await;
    let late = post(&gateway, "mail-late").await;
    let started = Instant::now();
    while smtp.messages().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no alert e-mail\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = smtp.messages().join("\n");
    assert!(all.contains("To: lead-li@shop.example, ops@shop.example"), "{all}");
    assert!(all.contains("Subject: [SLA]"), "{all}");
    assert!(all.contains(&late), "the inquiry is named: {all}");
    assert!(all.contains("@lead-li"), "the escalation names the lead: {all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_on_the_platform_stops_the_clock_of_that_buyers_inquiries() {
    const PAGE: &str = "110044338451234";
    const META_SECRET: &str = "meta-app-secret-reach-01";
    let config = format!(
        "[[webhooks]]\nconnector = \"messenger\"\naccount = \"shop-main\"\nsecret = \"{META_SECRET}\"\nverify_token = \"verify-me-please\"\n\
         [[reach.sla_policies]]\nid = \"hour\"\nfirst_response = \"1h\"\n[[reach.sla_rules]]\npolicy = \"hour\"\n"
    );
    let gateway = Gateway::start(&config).await;
    let client = HttpClient::new();
    let now_ms = || (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let deliver = |events: Vec<serde_json::Value>| {
        let body =
            serde_json::json!({"object": "page", "entry": [{"id": PAGE, "time": now_ms(), "messaging": events}]})
                .to_string();
        let signature = format!("sha256={}", hex::encode(support::hmac_sha256(META_SECRET, &[body.as_bytes()])));
        // One app's endpoint carries the deliveries of every page it serves.
        let (client, url) = (client.clone(), gateway.url("/webhooks/messenger/shop-main"));
        async move {
            let headers = [("content-type", "application/json"), ("x-hub-signature-256", signature.as_str())];
            let reply = client.request(Method::POST, &url, body, &headers).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            reply.json()
        }
    };
    let message = |psid: &str, mid: &str| {
        serde_json::json!({"sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": now_ms(),
            "message": {"mid": mid, "text": "Is the blue lamp in stock?"}})
    };
    let echo = |psid: &str, mid: &str, metadata: Option<&str>| {
        serde_json::json!({"sender": {"id": PAGE}, "recipient": {"id": psid}, "timestamp": now_ms(),
            "message": {"mid": mid, "is_echo": true, "text": "Yes, 40 in stock.", "metadata": metadata}})
    };
    let (anna, bo) = ("6784739827364819", "5550001112223334");
    let anna_ids = deliver(vec![message(anna, "m_a1"), message(anna, "m_a2")]).await["ids"].clone();
    let bo_ids = deliver(vec![message(bo, "m_b1")]).await["ids"].clone();
    assert_eq!((anna_ids.as_array().unwrap().len(), bo_ids.as_array().unwrap().len()), (2, 1));
    tokio::time::sleep(Duration::from_millis(20)).await;

    // The echo of the gateway's own acknowledgement, and an answer to a stranger: no one answered.
    let ours = deliver(vec![echo(anna, "m_ack", Some(inquiry_connectors::webhook::AUTO_ACK_METADATA))]).await;
    assert_eq!(ours["answered"], 0);
    assert_eq!(deliver(vec![echo("1000000000000001", "m_x", None)]).await["answered"], 0);
    // An agent answers Anna in the page's inbox: both her inquiries, not Bo's. Redelivered: nothing new.
    let answer = vec![echo(anna, "m_reply", None)];
    assert_eq!(deliver(answer.clone()).await["answered"], 2);
    assert_eq!(deliver(answer).await["answered"], 0);
    // A question and its answer in one delivery (Meta batches events): answered too.
    let carl = "4440001112223335";
    let both = deliver(vec![message(carl, "m_c1"), echo(carl, "m_c_reply", None)]).await;
    assert_eq!((both["accepted"].as_u64(), both["answered"].as_u64()), (Some(1), Some(1)));

    let mut replied = audit_entries_of(&gateway, "inquiry.replied").await;
    replied.sort_by_key(|e| e["inquiry_id"].as_str().unwrap().to_owned());
    let mut expected: Vec<&serde_json::Value> = anna_ids.as_array().unwrap().iter().chain([&both["ids"][0]]).collect();
    expected.sort_by_key(|id| id.as_str().unwrap().to_owned());
    assert_eq!(replied.iter().map(|e| &e["inquiry_id"]).collect::<Vec<_>>(), expected);
    for entry in &replied {
        assert_eq!(entry["actor"], "webhook:messenger/shop-main");
        assert_eq!(entry["detail"]["sla_status"], "met");
    }
    let text = support::metrics(&gateway).await;
    // Anna's two messages are one conversation with one SLA: two first responses (hers and
    // Carl's), three inquiries answered.
    let met = [("outcome", "met"), ("channel", "messenger")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 2.0);
    let platform = [("source", "platform"), ("outcome", "recorded")];
    assert_eq!(metric_value(&text, "inquiry_gateway_replies_total", &platform), 3.0);

    // Bo's clock still runs: a reply now is his first.
    let bo_id = bo_ids[0].as_str().unwrap();
    let reply =
        client.request(Method::POST, &gateway.url(&format!("/v1/inquiries/{bo_id}/reply")), "", &[]).await.json();
    assert_eq!(reply["sla"]["status"], "met");
    let text = support::metrics(&gateway).await;
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 3.0, "recorded now, not before");
    assert!(gateway.log().lines().all(|l| !l.contains(anna)), "platform user ids never reach the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_policies_change_on_sighup_for_new_inquiries_and_a_reload_naming_an_unknown_target_is_refused() {
    let policies = |rule: &str| {
        format!(
            "[[reach.sla_policies]]\nid = \"hour\"\nfirst_response = \"1h\"\n\
             [[reach.sla_policies]]\nid = \"quarter\"\nfirst_response = \"15m\"\n\
             [[reach.sla_rules]]\npolicy = \"{rule}\"\n"
        )
    };
    let mut gateway = Gateway::start(&policies("hour")).await;
    let client = HttpClient::new();
    let base = gateway.url("/v1/inquiries/"); // the same across reloads
    let reply = |id: String| {
        let (client, url) = (client.clone(), format!("{base}{id}/reply"));
        async move {
            let answer = client.request(Method::POST, &url, "", &[]).await;
            assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
            answer.json()["sla"].clone()
        }
    };
    let first = reply(post(&gateway, "policy-1").await).await;
    assert_eq!(first["policy"], "hour", "{first}");

    gateway.reconfigure(&policies("quarter"));
    let mut n = 1;
    let mut latest = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(10);
    while latest["policy"] != "quarter" {
        assert!(Instant::now() < deadline, "the new rule never applied: {latest}\n{}", gateway.log());
        n += 1;
        latest = reply(post(&gateway, &format!("policy-{n}")).await).await;
    }
    let minutes =
        |sla: &serde_json::Value| (sla["deadline_ms"].as_i64().unwrap() - sla["started_ms"].as_i64().unwrap()) / 60_000;
    assert_eq!((minutes(&first), minutes(&latest)), (60, 15), "each keeps the deadline it started with");
    assert!(gateway.log().contains("reach-out policies, teams and templates reloaded"), "{}", gateway.log());

    // A team that names an alert target the running gateway does not have: refused whole.
    let unknown_target = policies("hour")
        + "[[reach.alert_targets]]\nid = \"ops-chat\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef0123\"\n\
           [[reach.teams]]\nqueue = \"unassigned\"\nalert_targets = [\"ops-chat\"]\n";
    gateway.reconfigure(&unknown_target);
    logged(&gateway, "reach-out settings not reloaded").await;
    let after = reply(post(&gateway, "policy-after").await).await;
    assert_eq!(after["policy"], "quarter", "the previous rules stay: {after}");

    // dry_run changes only at a restart: the reload says so, and applies the rest.
    gateway.reconfigure(&format!("[reach]\ndry_run = true\n{}", policies("hour")));
    logged(&gateway, "change at the next restart").await;
    let last = reply(post(&gateway, "policy-last").await).await;
    assert_eq!(last["policy"], "hour", "the rules reloaded all the same: {last}");
}

/// Waits (10 s at most) until the gateway's log holds `text`.
async fn logged(gateway: &Gateway, text: &str) {
    eventually(Duration::from_secs(10), &format!("the log says `{text}`"), || async { gateway.log().contains(text) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_to_a_replica_that_does_not_hold_the_inquiry_reaches_the_one_that_does() {
    const BROKERS: &str = "127.0.0.1:9092";
    const SHOP_1_KEY: &str = "crm-key-of-shop-1-0123456789";
    const SHOP_2_KEY: &str = "crm-key-of-shop-2-0123456789";
    let prefix = support::unique("forward");
    let config = |replica: &str| {
        format!(
            "[polling]\nreplica = \"{prefix}-{replica}\"\n[store]\npseudonym_key = \"the-key-every-replica-of-the-test-shares\"\n\
             [[auth.api_keys]]\nid = \"crm-1\"\nkey = \"{SHOP_1_KEY}\"\naccounts = [\"shop-1\"]\n\
             [[auth.api_keys]]\nid = \"crm-2\"\nkey = \"{SHOP_2_KEY}\"\naccounts = [\"shop-2\"]\n\
             [sinks.kafka]\nbrokers = \"{BROKERS}\"\nlocation = \"eu\"\npartitions = 1\ntopic_prefix = \"{prefix}.\"\n\
             [reach]\nreplies_topic = \"crm.replies.v1\"\nforward_http = true\n\
             [[reach.sla_policies]]\nid = \"hour\"\nfirst_response = \"1h\"\n[[reach.sla_rules]]\npolicy = \"hour\"\n"
        )
    };
    let a = Gateway::start(&config("a")).await;
    let b = Gateway::start(&config("b")).await;
    for gateway in [&a, &b] {
        support::wait_spool_empty(gateway, "kafka", Duration::from_secs(60)).await;
        // topics created
    }
    let client = HttpClient::new();
    let as_key = |key: &str| format!("Bearer {key}");
    let (shop_1, shop_2) = (as_key(SHOP_1_KEY), as_key(SHOP_2_KEY));
    let headers =
        |auth: &str| [("content-type", "application/json"), ("authorization", auth)].map(|(k, v)| (k, v.to_owned()));
    let send = |gateway: &Gateway, path: &str, body: String, auth: &str| {
        let (client, url, headers) = (client.clone(), gateway.url(path), headers(auth));
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client.request(hyper::Method::POST, &url, body, &headers).await
        }
    };
    // B holds the inquiry; A does not.
    let stored = send(&b, "/v1/inquiries", inquiry_json("shop-1", "forwarded-1"), &shop_1).await;
    assert_eq!(stored.status, StatusCode::CREATED, "{stored:?}");
    let id = stored.json()["id"].as_str().unwrap().to_owned();
    let reply_path = format!("/v1/inquiries/{id}/reply");
    let kafka_outcome = |outcome: &'static str| {
        let b = &b;
        async move {
            support::metric(b, "inquiry_gateway_replies_total", &[("source", "kafka"), ("outcome", outcome)]).await
        }
    };

    // Another shop's key: A cannot tell and forwards it (202); B, which can, does not record it.
    let wrong = send(&a, &reply_path, r#"{"agent": "agent-x"}"#.to_owned(), &shop_2).await;
    assert_eq!(wrong.status, StatusCode::ACCEPTED, "{wrong:?}");
    assert_eq!(wrong.json()["forwarded"], true);
    support::eventually(Duration::from_secs(60), "B refuses the reply of another shop's key", || async {
        kafka_outcome("not_allowed").await == 1.0
    })
    .await;
    assert_eq!(kafka_outcome("recorded").await, 0.0);

    // The shop's own key: recorded by B, audited with who sent it.
    let right = send(&a, &reply_path, r#"{"agent": "agent-ana"}"#.to_owned(), &shop_1).await;
    assert_eq!(right.status, StatusCode::ACCEPTED, "{right:?}");
    support::eventually(Duration::from_secs(30), "B records the forwarded reply", || async {
        kafka_outcome("recorded").await == 1.0
    })
    .await;
    let replied = support::audit_entries_of(&b, "inquiry.replied").await;
    assert_eq!(replied.len(), 1, "{replied:?}");
    assert_eq!(replied[0]["actor"], "kafka:replies:api_key:crm-1");
    assert_eq!(replied[0]["detail"]["sla_status"], "met");
    // On B itself the reply is answered at once, from its own store.
    let direct = send(&b, &reply_path, String::new(), &shop_1).await;
    assert_eq!(direct.status, StatusCode::OK, "{direct:?}");
    // B shares its copy; where it is no news (B itself, the first response kept) it is skipped.
    support::eventually(Duration::from_secs(30), "B skips its own shared copy", || async {
        kafka_outcome("already").await >= 1.0
    })
    .await;
    assert_eq!(support::audit_entries_of(&b, "inquiry.replied").await.len(), 2, "the direct one only");

    // A message both replicas hold (delivered to each): a reply on A stops B's SLA too.
    let both = inquiry_json("shop-1", "held-by-both");
    let on_a = send(&a, "/v1/inquiries", both.clone(), &shop_1).await;
    let on_b = send(&b, "/v1/inquiries", both, &shop_1).await;
    assert_eq!(on_a.json()["id"], on_b.json()["id"], "one message, one id");
    let both_id = on_a.json()["id"].as_str().unwrap().to_owned();
    let on_a = send(&a, &format!("/v1/inquiries/{both_id}/reply"), String::new(), &shop_1).await;
    assert_eq!(on_a.status, StatusCode::OK, "{on_a:?}");
    support::eventually(Duration::from_secs(30), "B records the reply A shared", || async {
        kafka_outcome("recorded").await == 2.0
    })
    .await;

    // A message that only looks forwarded (not signed with the replicas' key) is skipped.
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", BROKERS).create().unwrap();
        let inner = serde_json::json!({
            "inquiry_id": id, "actor": "api_key:crm-1", "conversion":
            {"order_id": "FORGED", "converted_at": "2026-12-01T00:00:00Z", "reported_by": "api_key:crm-1"},
        });
        let forged = serde_json::json!({ "forwarded": inner.to_string(), "signature": "00".repeat(32) }).to_string();
        let topic = format!("{prefix}.crm.replies.v1");
        producer.send(FutureRecord::to(&topic).key(&id).payload(&forged), Duration::from_secs(10)).await.unwrap();
    }
    support::eventually(Duration::from_secs(30), "B skips the forged message", || async {
        kafka_outcome("invalid").await == 1.0
    })
    .await;

    // A conversion report goes the same way; the first one is kept.
    let conversion_path = format!("/v1/inquiries/{id}/conversion");
    let order = r#"{"order_id": "8100000000000042", "value": "129.90", "currency": "EUR"}"#;
    let forwarded = send(&a, &conversion_path, order.to_owned(), &shop_1).await;
    assert_eq!(forwarded.status, StatusCode::ACCEPTED, "{forwarded:?}");
    support::eventually(Duration::from_secs(30), "B records the forwarded conversion", || async {
        kafka_outcome("converted").await == 1.0
    })
    .await;
    let again = send(&a, &conversion_path, r#"{"order_id": "8100000000000043"}"#.to_owned(), &shop_1).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    support::eventually(Duration::from_secs(30), "B keeps the first conversion", || async {
        kafka_outcome("conversion_kept").await == 1.0
    })
    .await;
    let read = client
        .request(hyper::Method::GET, &b.url(&format!("/v1/inquiries/{id}")), "", &[("authorization", shop_1.as_str())])
        .await;
    let kept = &read.json()["conversion"];
    assert_eq!((&kept["order_id"], &kept["reported_by"]), (&"8100000000000042".into(), &"api_key:crm-1".into()));
    // A bad report is refused by the replica it reached, before anything is forwarded.
    let bad =
        send(&a, &conversion_path, r#"{"order_id": "x", "value": "1,5", "currency": "EUR"}"#.to_owned(), &shop_1).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
