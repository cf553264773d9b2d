//! The Messenger Conversations poller against a local stand-in for the Graph API that speaks the
//! documented shape (`GET /v21.0/{page-id}/conversations`, newest first, `paging.cursors.after`)
//! and enforces the documented quota of 2 calls per second per page (token bucket, burst 2),
//! answering Graph error 613 when exceeded. The gateway must import every buyer message exactly
//! once, across a SIGKILL, without ever exceeding the quota.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::{metric_value, Gateway, HttpClient};

const PAGE: &str = "110044338451234";

struct Message {
    id: String,
    created: i64,
    from: String,
    text: String,
}

/// The stand-in's state.
struct Graph {
    conversations: Vec<(String, Vec<Message>)>,
    tokens: f64,
    last_refill: Instant,
    calls: u64,
    over_quota: u64,
    saw_bearer: bool,
}

impl Graph {
    fn add_exchange(&mut self, conversation: usize, created: i64) {
        while self.conversations.len() <= conversation {
            let n = self.conversations.len();
            self.conversations.push((format!("t_{n}"), Vec::new()));
        }
        let (_, messages) = &mut self.conversations[conversation];
        let n = messages.len();
        messages.push(Message {
            id: format!("m_{conversation}_{n}"),
            created,
            from: format!("psid-{conversation}"),
            text: format!("question {n}"),
        });
        messages.push(Message {
            id: format!("m_{conversation}_{n}_reply"),
            created: created + 1,
            from: PAGE.to_owned(),
            text: "answer".to_owned(),
        });
    }

    fn buyer_messages(&self) -> usize {
        self.conversations.iter().map(|(_, m)| m.iter().filter(|m| m.from != PAGE).count()).sum()
    }

    /// Token bucket of the documented quota: 2 per second, burst 2 (20 ms of clock slack).
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + (now - self.last_refill).as_secs_f64() * 2.0 + 0.04).min(2.0);
        self.last_refill = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn page(&self, after: usize, base: &str) -> serde_json::Value {
        let time = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .unwrap()
                .format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+0000"))
                .unwrap()
        };
        let mut sorted: Vec<&(String, Vec<Message>)> = self.conversations.iter().collect();
        sorted.sort_by_key(|(_, m)| std::cmp::Reverse(m.iter().map(|m| m.created).max().unwrap_or(0)));
        let data: Vec<serde_json::Value> = sorted
            .iter()
            .skip(after)
            .take(25)
            .map(|(id, messages)| {
                let mut newest_first: Vec<&Message> = messages.iter().collect();
                newest_first.reverse();
                json!({
                    "id": id,
                    "updated_time": time(messages.iter().map(|m| m.created).max().unwrap_or(0)),
                    "messages": {"data": newest_first.iter().map(|m| json!({
                        "id": m.id, "created_time": time(m.created), "from": {"id": m.from}, "message": m.text,
                    })).collect::<Vec<_>>()},
                })
            })
            .collect();
        let mut body = json!({ "data": data });
        if after + 25 < sorted.len() {
            let next = after + 25;
            body["paging"] = json!({"cursors": {"after": next.to_string()}, "next": format!("{base}?after={next}")});
        }
        body
    }
}

async fn serve_graph(graph: Arc<Mutex<Graph>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let base_for_pages = base.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (graph, base) = (graph.clone(), base_for_pages.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (graph, base) = (graph.clone(), base.clone());
                    async move {
                        let mut graph = graph.lock().unwrap();
                        graph.calls += 1;
                        graph.saw_bearer |=
                            req.headers().get("authorization").is_some_and(|v| v == "Bearer page-token-123");
                        let path = req.uri().path().to_owned();
                        let after = req
                            .uri()
                            .query()
                            .unwrap_or_default()
                            .split('&')
                            .find_map(|p| p.strip_prefix("after="))
                            .and_then(|a| a.parse().ok())
                            .unwrap_or(0);
                        let (status, body) = if path != format!("/v21.0/{PAGE}/conversations") {
                            (404, json!({"error": {"code": 803, "message": "unknown path"}}))
                        } else if !graph.take_token() {
                            graph.over_quota += 1;
                            (
                                400,
                                json!({"error": {"code": 613, "message": "Calls to this api have exceeded the rate limit."}}),
                            )
                        } else {
                            (200, graph.page(after, &format!("{base}{path}")))
                        };
                        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    base
}

async fn accepted(gateway: &Gateway) -> f64 {
    let metrics = HttpClient::new().get(&gateway.admin_url("/metrics")).await;
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    metric_value(&text, "inquiry_gateway_inquiries_total", &[("outcome", "accepted"), ("channel", "messenger")])
}

async fn wait_for(gateway: &Gateway, expected: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = accepted(gateway).await;
        assert!(now <= expected, "imported {now}, more than the {expected} buyer messages");
        if now == expected {
            return;
        }
        assert!(Instant::now() < deadline, "imported {now} of {expected} in {timeout:?}\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stand-in with `conversations` conversations of one exchange each, and the gateway config
/// polling it (`extra` appended to the poller entry).
async fn graph_with(conversations: usize, extra: &str) -> (Arc<Mutex<Graph>>, String, i64) {
    let start = time::OffsetDateTime::now_utc().unix_timestamp() - 3600;
    let graph = Arc::new(Mutex::new(Graph {
        conversations: Vec::new(),
        tokens: 2.0,
        last_refill: Instant::now(),
        calls: 0,
        over_quota: 0,
        saw_bearer: false,
    }));
    {
        let mut g = graph.lock().unwrap();
        for c in 0..conversations {
            g.add_exchange(c, start + c as i64 * 10);
        }
    }
    let base = serve_graph(graph.clone()).await;
    let config = format!(
        "[[pollers]]\nconnector = \"messenger_conversations\"\naccount = \"{PAGE}\"\naccess_token = \"page-token-123\"\nbase_url = \"{base}\"\ninterval_ms = 200\n{extra}"
    );
    (graph, config, start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_set_too_high_is_corrected_by_backing_off_on_throttling() {
    // Configured at 20 calls/s (burst 10), against the platform's 2/s: the platform answers 613,
    // the poller pauses with growing backoff instead of hammering, and still imports everything.
    let (graph, config, _) = graph_with(120, "requests_per_second = 20.0\nburst = 10\n").await;
    let gateway = Gateway::start(&config).await;
    wait_for(&gateway, 120.0, Duration::from_secs(60)).await;
    let g = graph.lock().unwrap();
    assert!(g.over_quota > 0, "the configured quota was too high, so the platform throttled");
    assert!(g.over_quota <= g.calls / 2, "backing off: {} throttled of {} calls", g.over_quota, g.calls);
    let metrics = {
        drop(g);
        String::from_utf8(HttpClient::new().get(&gateway.admin_url("/metrics")).await.body.to_vec()).unwrap()
    };
    let throttled = metric_value(&metrics, "inquiry_gateway_poll_requests_total", &[("outcome", "throttled")]);
    assert_eq!(throttled, graph.lock().unwrap().over_quota as f64, "every throttled call is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_buyer_message_is_imported_once_within_quota_across_a_sigkill() {
    let (graph, config, start) = graph_with(60, "").await;
    let mut gateway = Gateway::start(&config).await;

    // Three pages of 25 conversations: 60 buyer messages.
    wait_for(&gateway, 60.0, Duration::from_secs(30)).await;

    // New messages in old conversations come back to the first page.
    {
        let mut g = graph.lock().unwrap();
        for c in [3, 17, 42] {
            g.add_exchange(c, start + 5000 + c as i64);
        }
    }
    wait_for(&gateway, 63.0, Duration::from_secs(30)).await;

    // Killed and restarted: the durable cursor resumes; nothing is imported twice or skipped.
    gateway.kill9();
    {
        let mut g = graph.lock().unwrap();
        for c in [5, 59] {
            g.add_exchange(c, start + 6000 + c as i64);
        }
        g.add_exchange(60, start + 6100); // a new conversation
    }
    gateway.restart().await;
    wait_for(&gateway, 3.0, Duration::from_secs(30)).await; // only the 3 new ones after the restart
    let calls_before_idle = graph.lock().unwrap().calls;
    tokio::time::sleep(Duration::from_secs(2)).await; // a few more cycles: still nothing new
    assert_eq!(accepted(&gateway).await, 3.0);

    let g = graph.lock().unwrap();
    assert_eq!(g.buyer_messages(), 66);
    assert_eq!(g.over_quota, 0, "{} of {} calls exceeded the quota", g.over_quota, g.calls);
    assert!(g.saw_bearer, "the access token is sent as a bearer token");
    assert!(
        g.calls >= calls_before_idle + 2,
        "the poller keeps polling when idle ({} calls)",
        g.calls - calls_before_idle
    );
}
