//! The IMAP mailbox reader against a real Dovecot on loopback (tests/services/dovecot.sh): every
//! buyer message appended to the folder becomes exactly one inquiry, an auto-reply is skipped,
//! messages stay unseen, a message appended while the gateway waits in IDLE arrives within
//! seconds (the polling interval is 10 minutes), and across a SIGKILL nothing is lost and
//! nothing is imported twice.

mod support;

use std::time::{Duration, Instant};

use async_imap::Session;
use inquiry_connectors::{stable_id, Channel};
use support::{metric_value, metrics, Gateway, HttpClient};
use tokio::net::TcpStream;

const PORT: u16 = 31143;
/// The test user of tests/services/dovecot.sh (test credentials only).
const USER: &str = "inquiries";
const PASSWORD: &str = "imap-test-password";
const ACCOUNT: &str = "shop-support";

async fn imap() -> Session<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", PORT)).await.expect("dovecot listens");
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.unwrap().expect("a greeting");
    client.login(USER, PASSWORD).await.map_err(|(e, _)| e).expect("the test user logs in")
}

/// A plain buyer message with a unique Message-ID.
fn buyer_message(run: &str, n: u32) -> (String, String) {
    let id = format!("{run}-{n}@mail.example.com");
    let raw = format!(
        "From: Buyer {n} <buyer{n}@example.com>\r\nTo: hello@shop.example\r\nSubject: Question {n}\r\n\
         Date: Thu, 03 Dec 2026 08:{n:02}:00 +0000\r\nMessage-ID: <{id}>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello, do you have item {n} in stock? I would need it before Christmas.\r\n"
    );
    (id, raw)
}

/// A connector fixture with its Message-ID made unique to this run.
fn fixture(name: &str, run: &str) -> String {
    let raw =
        std::fs::read_to_string(support::workspace_file(&format!("connectors/tests/fixtures/email/{name}"))).unwrap();
    raw.replace("Message-ID: <", &format!("Message-ID: <{run}."))
}

async fn email_inquiries(gateway: &Gateway, outcome: &str) -> f64 {
    metric_value(
        &metrics(gateway).await,
        "inquiry_gateway_inquiries_total",
        &[("outcome", outcome), ("channel", "email")],
    )
}

/// Waits until exactly `expected` e-mail inquiries were accepted (never more); returns how long it took.
async fn wait_accepted(gateway: &Gateway, expected: f64, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = email_inquiries(gateway, "accepted").await;
        assert!(now <= expected, "accepted {now}, more than the {expected} buyer messages\n{}", gateway.log());
        if now == expected {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "accepted {now} of {expected} in {timeout:?}\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_messages_become_inquiries_once_with_idle_delivery_across_a_sigkill() {
    support::service("dovecot.sh", "start");
    let run = support::unique("t");
    let folder = format!("gateway-{run}");
    let mut client = imap().await;
    client.create(&folder).await.unwrap();

    // Four plain buyer messages, a quoted-printable German one, a base64 Japanese one, an Amazon
    // relay and an auto-reply.
    let mut appended = Vec::new();
    for n in 1..=4 {
        let (id, raw) = buyer_message(&run, n);
        client.append(&folder, None, None, raw).await.unwrap();
        appended.push(id);
    }
    for name in ["01-german-quoted-printable.eml", "02-japanese-base64.eml", "05-amazon-relay.eml"] {
        client.append(&folder, None, None, fixture(name, &run).replace('\n', "\r\n")).await.unwrap();
    }
    client.append(&folder, None, None, fixture("06-auto-reply.eml", &run).replace('\n', "\r\n")).await.unwrap();

    let config = format!(
        "[[mailboxes]]\nname = \"{ACCOUNT}\"\nhost = \"127.0.0.1\"\nport = {PORT}\ntls = false\n\
         username = \"{USER}\"\npassword = \"{PASSWORD}\"\nfolder = \"{folder}\"\ninterval_ms = 600000\n"
    );
    let mut gateway = Gateway::start(&config).await;
    wait_accepted(&gateway, 7.0, Duration::from_secs(30)).await;
    // Counted by the reader once the pipeline took the batch: a moment after the pipeline's count.
    support::eventually(Duration::from_secs(5), "the reader counts the 7 buyer messages it imported", || async {
        metric_value(&metrics(&gateway).await, "inquiry_gateway_poll_items_total", &[("connector", "imap")]) == 7.0
    })
    .await;
    let text = metrics(&gateway).await;
    assert_eq!(metric_value(&text, "inquiry_gateway_poll_items_ignored_total", &[("connector", "imap")]), 1.0);
    assert_eq!(
        metric_value(&text, "inquiry_gateway_poll_requests_total", &[("connector", "imap"), ("outcome", "error")]),
        0.0
    );
    // The mailbox is reported like a poller, so the poller alerts (a stalled cycle) cover it.
    let labels = [("connector", "imap"), ("account", ACCOUNT)];
    assert_eq!(metric_value(&text, "inquiry_gateway_poller_active", &labels), 1.0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    for gauge in [
        "inquiry_gateway_poll_cycle_completed_timestamp_seconds",
        "inquiry_gateway_poll_cursor_updated_timestamp_seconds",
    ] {
        let at = metric_value(&text, gauge, &labels);
        assert!((now - 60.0..=now + 1.0).contains(&at), "{gauge} is recent: {at} (now {now})");
    }
    assert!(!gateway.log().contains(PASSWORD), "the password is never logged");
    assert!(gateway.log().contains("\"idle\":true"), "dovecot offers IDLE and the reader uses it");

    // The German message, by the id derived from its Message-ID and Date, with its text decoded.
    let german_id = format!("{run}.20261201091500.4711@mail.example.de");
    let occurred = time::macros::datetime!(2026-12-01 08:15:00 UTC);
    // Message ids are hashed in the envelope (they name the sender's mail host).
    use sha2::Digest;
    let hashed = format!("mid:{}", &hex::encode(sha2::Sha256::digest(german_id.as_bytes()))[..32]);
    let id = stable_id(Channel::Email, ACCOUNT, &hashed, occurred);
    let reply = HttpClient::new().get(&gateway.url(&format!("/v1/inquiries/{id}"))).await;
    assert_eq!(reply.status, support::StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["inquiry"]["channel"], "email");
    assert_eq!(body["inquiry"]["account"], ACCOUNT);
    assert_eq!(body["personal"]["name"], "Jürgen Weiß");
    assert!(body["personal"]["body"].as_str().unwrap().contains("Kaffeemühlen"), "{body}");

    // While the gateway waits in IDLE, a new message arrives within seconds, not 10 minutes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, raw) = buyer_message(&run, 5);
    client.append(&folder, None, None, raw).await.unwrap();
    let took = wait_accepted(&gateway, 8.0, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "IDLE delivery took {took:?}");
    eprintln!("IDLE delivery took {took:?}");

    // SIGKILL, two more messages, restart: only those two are imported, nothing twice.
    gateway.kill9();
    for n in 6..=7 {
        let (_, raw) = buyer_message(&run, n);
        client.append(&folder, None, None, raw).await.unwrap();
    }
    gateway.restart().await;
    wait_accepted(&gateway, 2.0, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(email_inquiries(&gateway, "accepted").await, 2.0);
    assert_eq!(email_inquiries(&gateway, "duplicate").await, 0.0, "the cursor resumed after the last batch");

    // BODY.PEEK: every message is still unread for the people reading the mailbox.
    client.select(&folder).await.unwrap();
    let unseen = client.uid_search("UNSEEN").await.unwrap();
    assert_eq!(unseen.len(), 11, "all 11 messages stay unseen");

    // The folder is deleted and made again (a new UIDVALIDITY): the reader reconnects, reads it
    // from the start, and what it imported before is dropped as a duplicate.
    client.close().await.unwrap();
    client.delete(&folder).await.unwrap();
    client.create(&folder).await.unwrap();
    for n in [6, 7, 8] {
        let (_, raw) = buyer_message(&run, n);
        client.append(&folder, None, None, raw).await.unwrap();
    }
    wait_accepted(&gateway, 3.0, Duration::from_secs(30)).await;
    support::eventually(Duration::from_secs(10), "the re-read messages are counted as duplicates", || async {
        email_inquiries(&gateway, "duplicate").await == 2.0
    })
    .await;
    assert!(gateway.log().contains("UIDVALIDITY changed"), "{}", gateway.log());

    // SIGTERM: the reader leaves IDLE at once and the gateway stops cleanly.
    let stopping = Instant::now();
    assert!(gateway.terminate().success(), "{}", gateway.log());
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopping took {:?}", stopping.elapsed());
    client.delete(&folder).await.ok();
    client.logout().await.ok();
}
