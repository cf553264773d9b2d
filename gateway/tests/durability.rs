//! An acknowledged inquiry survives SIGKILL, and posting it again creates no duplicate.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use support::{inquiry_json, Gateway, HttpClient};

const TOTAL: usize = 10_000;
const CLIENTS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_inquiries_survive_sigkill_and_reposting_creates_no_duplicate() {
    let mut gateway = Gateway::start("").await;
    let url = gateway.url("/v1/inquiries");
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();

    // 32 keep-alive clients post 10,000 inquiries; the process is killed once 3,000 are acknowledged.
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let (url, acked) = (url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::new();
            for n in (client_no..TOTAL).step_by(CLIENTS) {
                let external_id = format!("m-{n}");
                let Ok(reply) = client
                    .try_request(
                        hyper::Method::POST,
                        &url,
                        inquiry_json("shop-1", &external_id),
                        &[("content-type", "application/json")],
                    )
                    .await
                else {
                    return; // the gateway is gone
                };
                assert_eq!(reply.status, 201, "first post of {external_id}: {:?}", reply.body);
                let id = reply.json()["id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().insert(external_id, id);
            }
        }));
    }
    while acked.lock().unwrap().len() < 3_000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    gateway.kill9();
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 3_000 && acked.len() < TOTAL, "killed mid-stream: {} acknowledged", acked.len());

    gateway.restart().await;
    let client = HttpClient::new();

    // Every acknowledged id is readable, with its own external id.
    for (external_id, id) in &acked {
        let reply = client.get(&gateway.url(&format!("/v1/inquiries/{id}"))).await;
        assert_eq!(reply.status, 200, "acknowledged {external_id} ({id}) lost after SIGKILL");
        assert_eq!(reply.json()["inquiry"]["external"]["message_id"], external_id.as_str());
    }

    // Posting everything again: acknowledged ones are duplicates with their first id; every
    // external id maps to exactly one inquiry id.
    let mut ids = HashMap::new();
    for n in 0..TOTAL {
        let external_id = format!("m-{n}");
        let reply = client.post_json(&url, inquiry_json("shop-1", &external_id)).await;
        assert!(reply.status == 200 || reply.status == 201, "{external_id}: {}", reply.status);
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        if let Some(first) = acked.get(&external_id) {
            assert_eq!(reply.status, 200, "{external_id} was acknowledged before, so it is a duplicate");
            assert_eq!(&id, first);
        }
        ids.insert(external_id, id);
    }
    let distinct: HashSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), TOTAL);

    // A third round is all duplicates, with the same ids.
    for n in (0..TOTAL).step_by(7) {
        let external_id = format!("m-{n}");
        let reply = client.post_json(&url, inquiry_json("shop-1", &external_id)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["status"], "duplicate");
        assert_eq!(reply.json()["id"].as_str().unwrap(), ids[&external_id]);
    }
    assert!(gateway.terminate().success(), "graceful shutdown exits 0");
}
