//! Auto-acknowledgements end to end: WhatsApp through a stand-in of the Cloud API that enforces
//! Meta's documented throughput (80 messages/s per number) and pair rate limit (one message per
//! 6 s to one user), and e-mail through a real SMTP server on loopback (Debian's aiosmtpd, which
//! writes what it receives to a Maildir). Each inquiry is acknowledged once, in the buyer's
//! language, with the EU representative's block for EU accounts, and never twice across a SIGKILL.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform_standins::whatsapp_send::WhatsappSend;
use platform_standins::Standin;
use support::{audit_entries_of, metric_value, metrics, Gateway, HttpClient, SmtpServer, StatusCode};

const NUMBER: &str = "106540352242922";
const EU_BLOCK: &str = "EU representative: Example Rep GmbH, Berlin";
/// A one-hour first-response SLA for every inquiry.
const HOUR_SLA: &str =
    "[[reach.sla_policies]]\nid = \"hour\"\nfirst_response = \"1h\"\n[[reach.sla_rules]]\npolicy = \"hour\"\n";

/// [`templates`] acknowledging every message, also a buyer's second within the day (the tests
/// of the platforms' per-buyer limits need them).
fn templates_for_every_message() -> String {
    templates().replacen("[reach]\n", "[reach]\nack_repeat_window = \"0s\"\n", 1)
}

fn templates() -> String {
    format!(
        r#"
[reach]
eu_representative = "{EU_BLOCK}"
eu_accounts = ["{NUMBER}"]
[[reach.templates]]
id = "ack"
version = 3
language = "en"
subject = "We received your message"
body = "Thanks {{buyer_name}}, we received your message (ref {{inquiry_id}})."
[[reach.templates]]
id = "ack"
version = 3
language = "de"
subject = "Wir haben Ihre Nachricht erhalten"
body = "Danke {{buyer_name}}, wir haben Ihre Nachricht erhalten (Ref {{inquiry_id}})."
[[reach.ack_rules]]
template = "ack"
"#
    )
}

/// A generic-API inquiry from `buyer` (a WhatsApp id or an e-mail address).
fn inquiry(channel: &str, account: &str, external_id: &str, buyer: &str, language: &str) -> String {
    let mut buyer_json = serde_json::json!({ "name": format!("Buyer {buyer}"), "language": language, "country": "DE" });
    if buyer.contains('@') {
        buyer_json["email"] = buyer.into();
    } else {
        buyer_json["id"] = buyer.into();
    }
    serde_json::json!({
        "channel": channel, "account": account, "external_id": external_id,
        "conversation_id": format!("conv-{buyer}"), "buyer": buyer_json,
        "body": "Is this in stock?", "occurred_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339).unwrap(),
    })
    .to_string()
}

async fn post(gateway: &Gateway, body: String) -> String {
    let reply = HttpClient::new().post_json(&gateway.url("/v1/inquiries"), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.json()["id"].as_str().unwrap().to_owned()
}

/// Waits until `sent()` reaches `count`; fails after `seconds` with `log()`.
async fn wait_until_sent(sent: impl Fn() -> usize, count: usize, seconds: u64, log: impl Fn() -> String) {
    let started = Instant::now();
    while sent() < count {
        assert!(
            started.elapsed() < Duration::from_secs(seconds),
            "{} of {count} acknowledgements sent\n{}",
            sent(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_acknowledgements_keep_the_throughput_and_pair_limits_and_go_once_each() {
    let platform = Arc::new(WhatsappSend::default());
    let standin = Standin::start(platform.clone(), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"whatsapp\"\nbase_url = \"{}/v21.0\"\naccess_token = \"test-whatsapp-token\"\n",
        templates_for_every_message(),
        standin.url()
    );
    let gateway = Gateway::start(&config).await;

    // 240 inquiries from 200 buyers: 40 write twice (their second acknowledgement waits 6 s).
    let mut expected: HashMap<String, (String, &str)> = HashMap::new();
    for n in 0..240 {
        let buyer = format!("4917600{:05}", n % 200);
        let language = if n % 2 == 0 { "de" } else { "en" };
        let id = post(&gateway, inquiry("whatsapp", NUMBER, &format!("wamid.in{n}"), &buyer, language)).await;
        expected.insert(id, (buyer, language));
    }
    wait_until_sent(|| standin.mailbox().all().len(), expected.len(), 60, || gateway.log()).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more may come

    let sent = standin.mailbox().all();
    assert_eq!(sent.len(), expected.len(), "exactly one acknowledgement per inquiry");
    for (id, (buyer, language)) in &expected {
        let mine: Vec<_> = sent.iter().filter(|m| m.text.contains(id.as_str())).collect();
        assert_eq!(mine.len(), 1, "inquiry {id}: {mine:?}");
        assert_eq!(&mine[0].buyer_id, buyer, "sent to the buyer who wrote");
        let greeting = if *language == "de" { "Danke Buyer" } else { "Thanks Buyer" };
        assert!(mine[0].text.starts_with(greeting), "{language}: {}", mine[0].text);
        assert!(mine[0].text.ends_with(EU_BLOCK), "an EU account's message carries the block");
    }
    let stats = standin.stats();
    assert_eq!(stats[NUMBER].violations, 0, "over 80 messages/s: {:?}", stats[NUMBER]);
    assert_eq!(platform.pair_pause.violations.load(Ordering::SeqCst), 0, "two messages to one buyer within 6 s");
    let exposition = metrics(&gateway).await;
    let counted =
        metric_value(&exposition, "inquiry_gateway_acks_total", &[("channel", "whatsapp"), ("outcome", "sent")]);
    assert_eq!(counted, expected.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_who_writes_again_is_not_acknowledged_again_and_keeps_one_sla() {
    let standin = Standin::start(Arc::new(WhatsappSend::default()), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"whatsapp\"\nbase_url = \"{}/v21.0\"\naccess_token = \"test-whatsapp-token\"\n{HOUR_SLA}",
        templates(),
        standin.url()
    );
    let gateway = Gateway::start(&config).await;
    let first = post(&gateway, inquiry("whatsapp", NUMBER, "wamid.again-1", "491760000001", "en")).await;
    let other = post(&gateway, inquiry("whatsapp", NUMBER, "wamid.again-2", "491760000002", "en")).await;
    let text = metrics_until(&gateway, |t| {
        metric_value(t, "inquiry_gateway_acks_total", &[("channel", "whatsapp"), ("outcome", "sent")]) == 2.0
    })
    .await;
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_events_total", &[("kind", "sla.started")]), 2.0);
    // The first buyer writes again a moment later, in the same chat.
    let again = post(&gateway, inquiry("whatsapp", NUMBER, "wamid.again-3", "491760000001", "en")).await;
    let text = metrics_until(&gateway, |t| {
        metric_value(t, "inquiry_gateway_reach_repeats_total", &[("kind", "sla_joined")]) == 1.0
    })
    .await;
    assert_eq!(metric_value(&text, "inquiry_gateway_reach_repeats_total", &[("kind", "ack_skipped")]), 1.0);
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing more may come
    let sent = standin.mailbox().all();
    assert_eq!(sent.len(), 2, "one acknowledgement per buyer: {sent:?}");
    assert!(sent.iter().any(|m| m.text.contains(&first)) && sent.iter().any(|m| m.text.contains(&other)));
    assert!(!sent.iter().any(|m| m.text.contains(&again)));
    // The audit log proves the wording: the hash of the variant's text as configured.
    let configured = "We received your message\nThanks {buyer_name}, we received your message (ref {inquiry_id}).";
    let expected = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(configured.as_bytes()));
    let acks = audit_entries_of(&gateway, "ack.sent").await;
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert!(acks.iter().all(|a| a["detail"]["template_sha256"] == expected.as_str()), "{acks:?}");
    let text = metrics(&gateway).await;
    assert_eq!(
        metric_value(&text, "inquiry_gateway_sla_events_total", &[("kind", "sla.started")]),
        2.0,
        "no second clock"
    );
    // An answer to the later message answers the buyer: the one SLA is met.
    let client = HttpClient::new();
    let reply = client.post_json(&gateway.url(&format!("/v1/inquiries/{again}/reply")), "{}").await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["sla"]["inquiry_id"], first.as_str());
    assert_eq!(reply.json()["sla"]["status"], "met");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_acknowledgements_go_through_smtp_once_even_across_a_sigkill() {
    let smtp = SmtpServer::start();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"Shop Support <support@shop.example>\"\n",
        templates(),
        smtp.port
    );
    let mut gateway = Gateway::start(&config).await;
    let first = post(&gateway, inquiry("email", "shop-1", "mid-1", "anna@example.com", "de-AT")).await;
    let wait_for = |count: usize| wait_until_sent(|| smtp.messages().len(), count, 30, String::new);
    wait_for(1).await;
    let message = &smtp.messages()[0];
    assert!(message.contains("To: anna@example.com"), "{message}");
    assert!(message.contains("Subject: Wir haben Ihre Nachricht erhalten"), "de-AT takes the de variant: {message}");
    assert!(message.contains(&format!("Message-ID: <ack-{first}@inquiry-gateway>")), "{message}");
    assert!(message.contains(&first), "{message}");
    assert!(!message.contains(EU_BLOCK), "shop-1 is not an EU account");

    // A SIGKILL and a restart: the first is not sent again; a new inquiry is.
    gateway.kill9();
    gateway.restart().await;
    let second = post(&gateway, inquiry("email", "shop-1", "mid-2", "ben@example.com", "fr")).await;
    wait_for(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 2, "one e-mail per inquiry");
    let ben = messages.iter().find(|m| m.contains(&second)).expect("the second acknowledgement");
    assert!(ben.contains("Subject: We received your message"), "French falls back to English: {ben}");
    assert_eq!(messages.iter().filter(|m| m.contains(&first)).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_and_line_acknowledgements_respect_their_limits_and_go_once_each() {
    use platform_standins::chat_send::{LineSend, TelegramSend};
    let telegram = Arc::new(TelegramSend::default());
    let telegram_standin = Standin::start(telegram.clone(), None).await.unwrap();
    let line_standin = Standin::start(Arc::new(LineSend::default()), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"telegram\"\nbase_url = \"{}\"\nbot_tokens = {{ shop_bot = \"123:test-bot-token\" }}\n\
         [[reach.senders]]\nkind = \"line\"\nbase_url = \"{}\"\nchannel_tokens = {{ \"1657000001\" = \"test-line-channel-token\" }}\n",
        templates_for_every_message(),
        telegram_standin.url(),
        line_standin.url()
    );
    let gateway = Gateway::start(&config).await;
    // 60 Telegram inquiries from 20 chats (three each: one second apart at least), 40 on LINE.
    let mut ids = Vec::new();
    for n in 0..60 {
        let chat = format!("{}", 700_000_000 + n % 20);
        ids.push(("telegram", post(&gateway, inquiry("telegram", "shop_bot", &format!("tg-{n}"), &chat, "en")).await));
    }
    for n in 0..40 {
        let user = format!("U{:032x}", n);
        ids.push(("line", post(&gateway, inquiry("line", "1657000001", &format!("line-{n}"), &user, "en")).await));
    }
    let total = || telegram_standin.mailbox().all().len() + line_standin.mailbox().all().len();
    wait_until_sent(total, ids.len(), 60, || gateway.log()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (channel, id) in &ids {
        let standin = if *channel == "telegram" { &telegram_standin } else { &line_standin };
        let count = standin.mailbox().all().iter().filter(|m| m.text.contains(id.as_str())).count();
        assert_eq!(count, 1, "{channel} inquiry {id}");
    }
    assert_eq!(telegram.chat_pause.violations.load(Ordering::SeqCst), 0, "two messages to one chat within a second");
    for (name, standin) in [("telegram", &telegram_standin), ("line", &line_standin)] {
        for (key, stats) in standin.stats() {
            assert_eq!(stats.violations, 0, "{name} {key}: {stats:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inquiry_that_reached_two_replicas_is_acknowledged_once() {
    let platform = Arc::new(WhatsappSend::default());
    let standin = Standin::start(platform.clone(), None).await.unwrap();
    let keyspace = support::unique("acks");
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"whatsapp\"\nbase_url = \"{}/v21.0\"\naccess_token = \"test-whatsapp-token\"\n\
         [sinks.cql]\ncontact_points = [\"127.0.0.1:9042\"]\nkeyspace = \"{keyspace}\"\nlocation = \"eu\"\n{}",
        templates(),
        standin.url(),
        support::cql_login()
    );
    let first = Gateway::start(&format!("[polling]\nreplica = \"gw-a\"\n{config}")).await;
    let second = Gateway::start(&format!("[polling]\nreplica = \"gw-b\"\n{config}")).await;
    // The platform delivers each message to both replicas (a retried webhook landing elsewhere).
    let mut ids = Vec::new();
    for n in 0..30 {
        let body = inquiry("whatsapp", NUMBER, &format!("wamid.twice{n}"), &format!("4917611{n:05}"), "en");
        let a = post(&first, body.clone()).await;
        let b = post(&second, body).await;
        assert_eq!(a, b, "the same message has the same inquiry id on every replica");
        ids.push(a);
    }
    wait_until_sent(|| standin.mailbox().all().len(), ids.len(), 90, || first.log()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = standin.mailbox().all();
    for id in &ids {
        assert_eq!(sent.iter().filter(|m| m.text.contains(id.as_str())).count(), 1, "inquiry {id} acknowledged twice");
    }
    let failed = [("channel", "whatsapp"), ("outcome", "failed")];
    // The replica that lost a claim may still be retrying it (a CQL timeout under load): it stands
    // down once it gets its answer, and never sends.
    support::eventually(Duration::from_secs(30), "the other replica stood down for every inquiry", || async {
        let stood_down = support::metric(&first, "inquiry_gateway_acks_total", &failed).await
            + support::metric(&second, "inquiry_gateway_acks_total", &failed).await;
        assert!(stood_down <= ids.len() as f64, "{stood_down} refusals for {} inquiries", ids.len());
        stood_down == ids.len() as f64
    })
    .await;
    assert_eq!(standin.mailbox().all().len(), ids.len(), "nothing was sent twice meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messenger_acknowledgements_stay_in_the_24_hour_window_and_under_the_page_limit() {
    use platform_standins::chat_send::MessengerSend;
    let sender = Arc::new(MessengerSend::default());
    let standin = Standin::start(sender.clone(), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"messenger\"\nbase_url = \"{}/v21.0\"\npage_tokens = {{ \"110044338451234\" = \"test-page-token\" }}\n",
        templates(),
        standin.url()
    );
    let gateway = Gateway::start(&config).await;
    let mut fresh = Vec::new();
    for n in 0..50 {
        let body = inquiry("messenger", "110044338451234", &format!("mid.{n}"), &format!("24{n:014}"), "en");
        fresh.push(post(&gateway, body).await);
    }
    // Written two days ago (a backlog imported late): outside the window, not answered.
    let mut old: serde_json::Value =
        serde_json::from_str(&inquiry("messenger", "110044338451234", "mid.old", "2400000000000099", "en")).unwrap();
    old["occurred_at"] = (time::OffsetDateTime::now_utc() - time::Duration::days(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .into();
    let stale = post(&gateway, old.to_string()).await;
    wait_until_sent(|| standin.mailbox().all().len(), fresh.len(), 30, || gateway.log()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = standin.mailbox().all();
    assert_eq!(sent.len(), fresh.len(), "one each, none for the stale one");
    assert!(sent.iter().all(|m| !m.text.contains(&stale)));
    for id in &fresh {
        assert_eq!(sent.iter().filter(|m| m.text.contains(id.as_str())).count(), 1, "{id}");
    }
    for (key, stats) in standin.stats() {
        assert_eq!(stats.violations, 0, "{key}: {stats:?}");
    }
    let failed = metric_value(
        &metrics(&gateway).await,
        "inquiry_gateway_acks_total",
        &[("channel", "messenger"), ("outcome", "failed")],
    );
    assert_eq!(failed, 1.0, "the stale one failed for the window");
    // Each marked as the gateway's own, so that Meta's echo of it is no agent's first response.
    let metadata = sender.metadata.lock().unwrap().clone();
    assert_eq!(metadata.len(), fresh.len());
    assert!(metadata.iter().all(|m| m.as_deref() == Some(inquiry_connectors::webhook::AUTO_ACK_METADATA)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketplace_acknowledgements_use_the_pollers_tokens_and_keep_each_platforms_limit() {
    use platform_standins::marketplace_send::{EbayRtq, ShopeeSend, TiktokSend};
    use platform_standins::shopee::Shopee;
    let shopee = Standin::start(Arc::new(ShopeeSend::default()), None).await.unwrap();
    let tiktok = Standin::start(Arc::new(TiktokSend::default()), None).await.unwrap();
    let rtq = Arc::new(EbayRtq::default());
    let ebay = Standin::start(rtq.clone(), None).await.unwrap();
    // Shopee's sender has no token of its own: it answers with the one the shop's poller holds.
    let shopee_chat = Standin::start(Arc::new(Shopee::default()), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"shopee\"\nbase_url = \"{}\"\npartner_id = \"100001\"\npartner_key = \"test-shopee-partner-key\"\n\
         [[reach.senders]]\nkind = \"tiktok_shop\"\nbase_url = \"{}\"\napp_key = \"test-tiktok-app-key\"\napp_secret = \"test-tiktok-app-secret\"\nshop_tokens = {{ \"1001\" = \"test-tiktok-shop-token\" }}\nshop_ciphers = {{ \"7494049642642441621\" = \"1001\" }}\n\
         [[reach.senders]]\nkind = \"ebay\"\nbase_url = \"{}\"\nuser_tokens = {{ \"1001\" = \"test-ebay-user-token\" }}\n\
         [[pollers]]\nconnector = \"shopee_chat\"\naccount = \"1001\"\naccess_token = \"test-shopee-shop-token\"\napp_key = \"100001\"\napp_secret = \"test-shopee-partner-key\"\nbase_url = \"{}\"\ninterval_ms = 1000\n",
        templates(),
        shopee.url(),
        tiktok.url(),
        ebay.url(),
        shopee_chat.url()
    );
    let gateway = Gateway::start(&config).await;
    let with = |body: String, extra: serde_json::Value| {
        let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json.to_string()
    };
    let mut expected = Vec::new();
    for n in 0..8 {
        let buyer = format!("60000000{n:02}");
        let id = post(&gateway, inquiry("shopee", "1001", &format!("shopee-{n}"), &buyer, "en")).await;
        expected.push(("shopee", id, buyer.clone(), buyer.clone()));
        let id = post(&gateway, inquiry("tiktok_shop", "1001", &format!("tts-{n}"), &buyer, "en")).await;
        // TikTok Shop names the conversation only, not the buyer.
        expected.push(("tiktok_shop", id, format!("conv-{buyer}"), format!("conv-{buyer}")));
        let question = inquiry("ebay", "1001", &format!("asq-{n}"), &format!("ebay_buyer_{n}"), "en");
        let id = post(&gateway, with(question, serde_json::json!({"product_ids": ["226543219876"]}))).await;
        expected.push(("ebay", id, format!("ebay_buyer_{n}"), format!("asq-{n}")));
    }
    // A TikTok Shop message that came by webhook carries the shop id: sent under its cipher.
    let pushed = post(&gateway, inquiry("tiktok_shop", "7494049642642441621", "tts-pushed", "6000000099", "en")).await;
    expected.push(("tiktok_shop", pushed, "conv-6000000099".to_owned(), "conv-6000000099".to_owned()));
    // A Post-Order inquiry is not a question: it is not answered by member message.
    let post_order = inquiry("ebay", "1001", "inquiry:5045163718:opened", "alpine_buyer_77", "en");
    post(
        &gateway,
        with(
            post_order,
            serde_json::json!({"product_ids": ["226543219876"], "attributes": {"inquiry_id": "5045163718"}}),
        ),
    )
    .await;

    let standin = |channel: &str| match channel {
        "shopee" => &shopee,
        "tiktok_shop" => &tiktok,
        _ => &ebay,
    };
    let total = || shopee.mailbox().all().len() + tiktok.mailbox().all().len() + ebay.mailbox().all().len();
    wait_until_sent(total, expected.len(), 60, || gateway.log()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(total(), expected.len(), "one acknowledgement per inquiry, none for the Post-Order inquiry");
    for (channel, id, buyer, conversation) in &expected {
        let sent = standin(channel).mailbox().all();
        let mine: Vec<_> = sent.iter().filter(|m| m.text.contains(id.as_str())).collect();
        assert_eq!(mine.len(), 1, "{channel} inquiry {id}");
        assert_eq!(
            (&mine[0].buyer_id, &mine[0].conversation),
            (buyer, conversation),
            "{channel}: to the buyer who wrote"
        );
        assert_eq!(mine[0].account, "1001");
    }
    for (name, standin) in [("shopee", &shopee), ("tiktok", &tiktok), ("ebay", &ebay)] {
        for (key, stats) in standin.stats() {
            assert_eq!(stats.violations, 0, "{name} {key}: {stats:?}");
        }
    }
    assert_eq!(rtq.violations.load(Ordering::SeqCst), 0, "over 75 eBay answers in 60 s");
    // eBay's 75 per 60 s, paced evenly: eight answers take at least 7 / 1.25 s.
    let ebay_span = ebay.stats()["1001"].span_seconds;
    assert!(ebay_span >= 7.0 / 1.25 * 0.95, "eBay answers paced at 1.25/s: {ebay_span:.2} s");
    let text = metrics(&gateway).await;
    for (channel, count) in [("shopee", 8.0), ("tiktok_shop", 9.0), ("ebay", 8.0)] {
        let sent = metric_value(&text, "inquiry_gateway_acks_total", &[("channel", channel), ("outcome", "sent")]);
        assert_eq!(sent, count, "{channel}");
    }
    let refused = metric_value(&text, "inquiry_gateway_acks_total", &[("channel", "ebay"), ("outcome", "failed")]);
    assert_eq!(refused, 1.0, "the Post-Order inquiry's acknowledgement fails");
}

/// A chat message of `buyer` in `conversation` on shop `1001`, for the chat stand-ins.
fn chat_message(
    (conversation, buyer): (&str, &str),
    id: &str,
    from_seller: bool,
    text: &str,
    created: i64,
) -> platform_standins::Message {
    platform_standins::Message {
        account: "1001".to_owned(),
        conversation: conversation.to_owned(),
        id: id.to_owned(),
        buyer_id: buyer.to_owned(),
        buyer_name: "Ming".to_owned(),
        text: text.to_owned(),
        created,
        from_seller,
        order_id: None,
        country: Some("MY".to_owned()),
    }
}

fn now_seconds() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Platform answers recorded (`inquiry_gateway_replies_total{source="platform"}`).
fn platform_answers(exposition: &str) -> f64 {
    metric_value(exposition, "inquiry_gateway_replies_total", &[("source", "platform"), ("outcome", "recorded")])
}

/// Polls the metrics until `done` holds (10 s at most); the last exposition.
async fn metrics_until(gateway: &Gateway, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = metrics(gateway).await;
        if done(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    text
}

/// What both marketplace chats must do: the buyer's question is acknowledged in the chat; that
/// acknowledgement, seen in the chat as the shop's message, answers nothing; the agent's answer
/// `answer_id` stops the clock. Returns the metrics after the answer.
async fn ack_is_no_answer_but_the_agents_is(
    gateway: &Gateway,
    (send, chat): (&Standin, &Standin),
    channel: &str,
    chat_of: (&str, &str),
    (question_id, answer_id): (&str, &str),
) -> String {
    chat.mailbox().add(chat_message(chat_of, question_id, false, "Do you ship to Penang?", now_seconds() - 5));
    wait_until_sent(|| send.mailbox().all().len(), 1, 60, || gateway.log()).await;
    let ack = send.mailbox().all().remove(0);
    let sent = [("channel", channel), ("outcome", "sent")];
    let text = metrics_until(gateway, |t| metric_value(t, "inquiry_gateway_acks_total", &sent) == 1.0).await;
    assert_eq!(metric_value(&text, "inquiry_gateway_acks_total", &sent), 1.0, "acknowledged\n{}", gateway.log());

    chat.mailbox().add(chat_message(chat_of, &ack.id, true, &ack.text, now_seconds()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(platform_answers(&metrics(gateway).await), 0.0, "the gateway's own acknowledgement is no answer");

    chat.mailbox().add(chat_message(chat_of, answer_id, true, "Yes, 3-5 days to Penang.", now_seconds() + 1));
    let text = metrics_until(gateway, |t| platform_answers(t) >= 1.0).await;
    assert_eq!(platform_answers(&text), 1.0, "{}", gateway.log());
    let met = [("outcome", "met"), ("channel", channel)];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 1.0);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shops_answer_in_shopee_chat_stops_the_clock_but_the_gateways_own_acknowledgement_does_not() {
    use platform_standins::marketplace_send::ShopeeSend;
    use platform_standins::shopee::Shopee;
    let send = Standin::start(Arc::new(ShopeeSend::default()), None).await.unwrap();
    let chat = Standin::start(Arc::new(Shopee::default()), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"shopee\"\nbase_url = \"{}\"\npartner_id = \"100001\"\npartner_key = \"test-shopee-partner-key\"\n\
         {HOUR_SLA}\
         [[pollers]]\nconnector = \"shopee_chat\"\naccount = \"1001\"\naccess_token = \"test-shopee-shop-token\"\napp_key = \"100001\"\napp_secret = \"test-shopee-partner-key\"\nbase_url = \"{}\"\ninterval_ms = 300\n",
        templates(),
        send.url(),
        chat.url()
    );
    let gateway = Gateway::start(&config).await;
    let ming = ("c-870002222", "870002222");
    let pair = (&send, &chat);
    ack_is_no_answer_but_the_agents_is(&gateway, pair, "shopee", ming, ("2210000000000000001", "2210000000000000009"))
        .await;
    let replies = audit_entries_of(&gateway, "inquiry.replied").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["actor"], "poller:shopee_chat/1001");

    // Another buyer's two questions and their two answers, read in one page (newest first): each
    // question takes the first answer after it.
    let other = |id: &str, from_seller: bool, text: &str, created: i64| {
        chat_message(("c-870003333", "870003333"), id, from_seller, text, created)
    };
    // All in the past when the poller reads them, as on the platform: a shop message sent before
    // an acknowledgement was due can never be that acknowledgement.
    let start = now_seconds() + 2;
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (n, (from_seller, text)) in
        [(false, "Price for 10?"), (true, "USD 90."), (false, "And for 20?"), (true, "USD 170.")]
            .into_iter()
            .enumerate()
    {
        chat.mailbox().add(other(&format!("22100000000000001{n}"), from_seller, text, start + n as i64));
    }
    let text = metrics_until(&gateway, |t| platform_answers(t) >= 3.0).await;
    assert_eq!(platform_answers(&text), 3.0, "both questions are answered\n{}", gateway.log());
    let met = [("outcome", "met"), ("channel", "shopee")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shops_answer_in_tiktok_shop_chat_stops_the_clock_but_the_gateways_own_acknowledgement_does_not() {
    use platform_standins::marketplace_send::TiktokSend;
    use platform_standins::tiktok::Tiktok;
    let send = Standin::start(Arc::new(TiktokSend::default()), None).await.unwrap();
    let chat = Standin::start(Arc::new(Tiktok::default()), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"tiktok_shop\"\nbase_url = \"{}\"\napp_key = \"test-tiktok-app-key\"\napp_secret = \"test-tiktok-app-secret\"\nshop_tokens = {{ \"1001\" = \"test-tiktok-shop-token\" }}\n\
         {HOUR_SLA}\
         [[pollers]]\nconnector = \"tiktok_customer_service\"\naccount = \"1001\"\naccess_token = \"test-tiktok-shop-token\"\napp_key = \"test-tiktok-app-key\"\napp_secret = \"test-tiktok-app-secret\"\nbase_url = \"{}\"\ninterval_ms = 300\n",
        templates(),
        send.url(),
        chat.url()
    );
    let gateway = Gateway::start(&config).await;
    // The shop's messages name no buyer: the conversation list's participants do.
    let sunny = ("576460752303429001", "7494560109738881111");
    let pair = (&send, &chat);
    let ids = ("7494560109732331001", "7494560109732331009");
    ack_is_no_answer_but_the_agents_is(&gateway, pair, "tiktok_shop", sunny, ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sellers_answer_in_aliexpress_messages_stops_the_clock_of_the_conversations_buyer() {
    use platform_standins::aliexpress::Aliexpress;
    let chat = Standin::start(Arc::new(Aliexpress::default()), None).await.unwrap();
    let config = format!(
        "{HOUR_SLA}[[pollers]]\nconnector = \"aliexpress_messages\"\naccount = \"1001\"\naccess_token = \"test-aliexpress-session\"\napp_key = \"test-aliexpress-app-key\"\napp_secret = \"test-aliexpress-app-secret\"\nbase_url = \"{}\"\ninterval_ms = 300\nper_day = 2000000\n",
        chat.url()
    );
    let gateway = Gateway::start(&config).await;
    let anna = ("2300000000000007", "2200000007");
    chat.mailbox().add(chat_message(anna, "10071", false, "Do you ship to Penang?", now_seconds() - 5));
    let stored = [("channel", "aliexpress"), ("outcome", "accepted")];
    let text = metrics_until(&gateway, |t| metric_value(t, "inquiry_gateway_inquiries_total", &stored) >= 1.0).await;
    assert_eq!(platform_answers(&text), 0.0, "no answer yet\n{}", gateway.log());

    chat.mailbox().add(chat_message(anna, "10072", true, "Yes, 3-5 days to Penang.", now_seconds()));
    let text = metrics_until(&gateway, |t| platform_answers(t) >= 1.0).await;
    assert_eq!(platform_answers(&text), 1.0, "{}", gateway.log());
    let met = [("outcome", "met"), ("channel", "aliexpress")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 1.0);
    let replied = audit_entries_of(&gateway, "inquiry.replied").await;
    assert_eq!(replied.len(), 1, "{replied:?}");
    assert_eq!(replied[0]["actor"], "poller:aliexpress_messages/1001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sellers_answer_to_an_ebay_question_stops_its_clock_only_and_the_gateways_own_acknowledgement_none() {
    use platform_standins::ebay::Ebay;
    use platform_standins::marketplace_send::EbayRtq;
    let send = Standin::start(Arc::new(EbayRtq::default()), None).await.unwrap();
    let questions = Standin::start(Arc::new(Ebay::default()), None).await.unwrap();
    let config = format!(
        "{}\n[[reach.senders]]\nkind = \"ebay\"\nbase_url = \"{}\"\nuser_tokens = {{ \"1001\" = \"test-ebay-user-token\" }}\n\
         {HOUR_SLA}\
         [[pollers]]\nconnector = \"ebay_member_messages\"\naccount = \"1001\"\naccess_token = \"test-ebay-user-token\"\nbase_url = \"{}\"\ninterval_ms = 300\nrequests_per_second = 20.0\nburst = 2\nper_day = 2000000\n",
        templates(),
        send.url(),
        questions.url()
    );
    let gateway = Gateway::start(&config).await;
    // eBay: one exchange per question; the acknowledgement goes into it (its parent is the question).
    let buyer = "k.schmidt_84";
    let pair = (&send, &questions);
    let first = ("2178893412100", buyer);
    ack_is_no_answer_but_the_agents_is(&gateway, pair, "ebay", first, ("2178893412100", "agent-answer-1")).await;
    let replies = audit_entries_of(&gateway, "inquiry.replied").await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["actor"], "poller:ebay_member_messages/1001");

    // The same buyer asks about two more listings; both are acknowledged, the agent answers the
    // second only: an answer stops the clock of the question it answers, not the buyer's others.
    let (second, third) = ("2178893412200", "2178893412300");
    for (n, question) in [second, third].into_iter().enumerate() {
        let text = format!("Question {n}: do you have it in blue?");
        questions.mailbox().add(chat_message((question, buyer), question, false, &text, now_seconds() - 2));
    }
    wait_until_sent(|| send.mailbox().all().len(), 3, 60, || gateway.log()).await;
    let sent = [("channel", "ebay"), ("outcome", "sent")];
    let text = metrics_until(&gateway, |t| metric_value(t, "inquiry_gateway_acks_total", &sent) == 3.0).await;
    assert_eq!(metric_value(&text, "inquiry_gateway_acks_total", &sent), 3.0, "{}", gateway.log());
    for ack in send.mailbox().all().into_iter().filter(|m| m.conversation != first.0) {
        questions.mailbox().add(chat_message((&ack.conversation, buyer), &ack.id, true, &ack.text, now_seconds()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(platform_answers(&metrics(&gateway).await), 1.0, "acknowledgements answer nothing");
    questions.mailbox().add(chat_message((third, buyer), "agent-answer-3", true, "Yes, in blue.", now_seconds() + 1));
    metrics_until(&gateway, |t| platform_answers(t) >= 2.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // an answer to the second would come meanwhile
    let text = metrics(&gateway).await;
    assert_eq!(platform_answers(&text), 2.0, "the third question is answered, the second is not\n{}", gateway.log());
    let met = [("outcome", "met"), ("channel", "ebay")];
    assert_eq!(metric_value(&text, "inquiry_gateway_sla_first_responses_total", &met), 2.0);
}
