//! Agent alerts: SLA reminders, breaches and escalations (and, where a team asks, assignments) as
//! chat-bot messages (Slack, Feishu, DingTalk, WeCom), e-mails, SMS (Twilio's Messages API,
//! <https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource>) or
//! signed webhooks, with the person who must act @-mentioned where the target maps their id. A
//! burst of events is sent as one message per batch.
//!
//! Signing follows each platform's documentation:
//! - Feishu / Lark custom bot: `sign = base64(HMAC-SHA256(key = "{timestamp}\n{secret}", ""))`,
//!   with `timestamp` (Unix seconds) and `sign` in the JSON body.
//! - DingTalk custom robot: `sign = base64(HMAC-SHA256(key = secret, "{timestamp_ms}\n{secret}"))`,
//!   URL-encoded, with `timestamp` and `sign` appended to the webhook URL.
//! - Slack incoming webhooks and WeCom group robots are authorized by their URL alone.
//! - Generic webhooks: `X-Inquiry-Gateway-Signature: t={unix},v1={hex HMAC-SHA256(secret,
//!   "{t}.{body}")}` over the exact body (`{"events": [...]}`); receivers check it and the age of `t`.

use base64::Engine;
use inquiry_connectors::poll::{PollMethod, PollRequest};
use metrics::counter;
use ring::hmac;

use super::sla::{EventKind, SlaEvent};
use crate::config::{AlertKind, AlertTargetConfig};
use crate::poll::{exchange, PollClient};
use crate::telemetry;

/// The header that carries a generic webhook's signature.
pub const SIGNATURE_HEADER: &str = "x-inquiry-gateway-signature";

/// One line per event for `target`: what happened, to which inquiry, and who must act, mentioned
/// the way the platform notifies people where the target maps their id (no personal data).
pub fn render(events: &[SlaEvent], target: &AlertTargetConfig) -> String {
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            let what = match e.kind {
                EventKind::Started => "New inquiry assigned: first response due".to_owned(),
                EventKind::Reminder => "SLA reminder: first response due".to_owned(),
                EventKind::Breached => "SLA breached: no first response by".to_owned(),
                EventKind::Escalated => format!("SLA escalated (level {}): no first response since", e.level),
                other => other.as_str().to_owned(),
            };
            let who = e.notify.as_deref().map(|n| format!(" {}", mention(target, n))).unwrap_or_default();
            format!(
                "{what} {} | inquiry {} | {} {} | queue {} | {:?}{who}",
                e.deadline, e.inquiry_id, e.channel, e.account, e.queue, e.priority
            )
        })
        .collect();
    lines.join("\n")
}

/// `who` (an agent, lead or supervisor id) as the target's platform mentions a person: Slack
/// `<@U024BE7LH>`, Feishu `<at user_id="ou_..."></at>`, DingTalk and WeCom `@userid` (with the
/// id also listed in the message's mention field, see [`mentioned`]); `@who` as plain text where
/// the target does not map the id.
fn mention(target: &AlertTargetConfig, who: &str) -> String {
    match (target.kind, target.mentions.get(who)) {
        (AlertKind::Slack, Some(user)) => format!("<@{user}>"),
        (AlertKind::Feishu, Some(user)) => format!("<at user_id=\"{user}\"></at>"),
        (AlertKind::Dingtalk | AlertKind::Wecom, Some(user)) => format!("@{user}"),
        _ => format!("@{who}"),
    }
}

/// The platform user ids of the people `events` notify that `target` maps, each once (DingTalk's
/// `at.atUserIds`, WeCom's `mentioned_list`: without them the `@` in the text notifies nobody).
fn mentioned(target: &AlertTargetConfig, events: &[SlaEvent]) -> Vec<String> {
    let mut users: Vec<String> =
        events.iter().filter_map(|e| target.mentions.get(e.notify.as_deref()?)).cloned().collect();
    users.sort();
    users.dedup();
    users
}

/// The request that delivers `events` to `target` at `now_ms` (signed where the target signs).
pub fn request(target: &AlertTargetConfig, events: &[SlaEvent], now_ms: i64) -> PollRequest {
    let text = render(events, target);
    let json = ("content-type".to_owned(), "application/json".to_owned());
    let mut url = target.url.clone();
    let mut headers = vec![json];
    let body = match target.kind {
        AlertKind::Slack => serde_json::json!({ "text": text }),
        AlertKind::Wecom => serde_json::json!({
            "msgtype": "text",
            "text": { "content": text, "mentioned_list": mentioned(target, events) },
        }),
        AlertKind::Dingtalk => {
            if let Some(secret) = &target.secret {
                let sign = dingtalk_sign(secret, now_ms);
                let joiner = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{joiner}timestamp={now_ms}&sign={}", percent_encode(&sign));
            }
            serde_json::json!({
                "msgtype": "text",
                "text": { "content": text },
                "at": { "atUserIds": mentioned(target, events), "isAtAll": false },
            })
        }
        AlertKind::Feishu => {
            let mut body = serde_json::json!({ "msg_type": "text", "content": { "text": text } });
            if let Some(secret) = &target.secret {
                let timestamp = now_ms / 1000;
                body["timestamp"] = timestamp.to_string().into();
                body["sign"] = feishu_sign(secret, timestamp).into();
            }
            body
        }
        AlertKind::Webhook => serde_json::json!({ "events": events }),
        AlertKind::Email | AlertKind::Sms => serde_json::Value::Null,
    };
    let body = body.to_string();
    if target.kind == AlertKind::Webhook {
        let secret = target.secret.as_deref().unwrap_or_default();
        headers.push((SIGNATURE_HEADER.to_owned(), webhook_signature(secret, now_ms / 1000, body.as_bytes())));
    }
    PollRequest { method: PollMethod::Post, path_and_query: url, headers, body }
}

/// True when the target's answer means the message was taken: a 2xx, and for the bots that
/// answer 200 with an error code, a zero code.
pub fn accepted(kind: AlertKind, status: u16, body: &[u8]) -> bool {
    if !(200..300).contains(&status) {
        return false;
    }
    let code = |field: &str| {
        serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v.get(field).and_then(|c| c.as_i64()))
    };
    match kind {
        AlertKind::Dingtalk | AlertKind::Wecom => code("errcode") == Some(0),
        AlertKind::Feishu => code("code").or_else(|| code("StatusCode")) == Some(0),
        AlertKind::Slack | AlertKind::Webhook | AlertKind::Email | AlertKind::Sms => true,
    }
}

/// Twilio's longest message body (it splits longer text into segments up to this).
const SMS_MAX_CHARS: usize = 1600;

/// The SMS requests that deliver `events` through a Twilio Messages API `target`: per phone
/// number, that number's lines in as few texts of at most 1,600 characters as they fit (an
/// event goes to the number `mentions` gives the person who must act, else to every number in
/// `to`). Form-encoded `To`, `From`, `Body`, HTTP Basic
/// authentication with the target's `secret` (`<account sid>:<auth token>`).
pub fn sms_requests(target: &AlertTargetConfig, events: &[SlaEvent]) -> Vec<PollRequest> {
    let mut by_number: std::collections::BTreeMap<&str, Vec<SlaEvent>> = std::collections::BTreeMap::new();
    for event in events {
        let mapped = event.notify.as_deref().and_then(|who| target.mentions.get(who));
        let numbers = mapped.map_or_else(|| target.to.iter().map(String::as_str).collect(), |n| vec![n.as_str()]);
        for number in numbers {
            by_number.entry(number).or_default().push(event.clone());
        }
    }
    let credentials = base64::engine::general_purpose::STANDARD.encode(target.secret.as_deref().unwrap_or_default());
    let mut requests = Vec::new();
    for (number, events) in by_number {
        // As many texts as the lines need: a long batch is split, never cut.
        let mut texts: Vec<String> = Vec::new();
        for line in render(&events, target).lines() {
            let line: String = line.chars().take(SMS_MAX_CHARS).collect();
            match texts.last_mut() {
                Some(text) if text.chars().count() + 1 + line.chars().count() <= SMS_MAX_CHARS => {
                    text.push('\n');
                    text.push_str(&line);
                }
                _ => texts.push(line),
            }
        }
        for text in texts {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", number)
                .append_pair("From", target.from.as_deref().unwrap_or_default())
                .append_pair("Body", &text)
                .finish();
            requests.push(PollRequest {
                method: PollMethod::Post,
                path_and_query: target.url.clone(),
                headers: vec![
                    ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
                    ("authorization".to_owned(), format!("Basic {credentials}")),
                ],
                body,
            });
        }
    }
    requests
}

/// Sends `events` to `target` (or, in dry-run, only counts and logs them).
pub async fn send(
    client: &PollClient,
    target: &AlertTargetConfig,
    events: Vec<SlaEvent>,
    now_ms: i64,
    dry_run: bool,
) -> Result<(), String> {
    let label = target.id.clone();
    if dry_run {
        let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
        tracing::info!(target = %label, events = ?ids, "dry run: alert not sent");
        counter!(telemetry::ALERTS, "target" => label, "outcome" => "dry_run").increment(1);
        return Ok(());
    }
    if target.kind == AlertKind::Email {
        let sent = send_email(target, &events).await;
        let outcome = if sent.is_ok() { "sent" } else { "failed" };
        counter!(telemetry::ALERTS, "target" => label, "outcome" => outcome).increment(1);
        return sent;
    }
    let agent = concat!("inquiry-gateway/", env!("CARGO_PKG_VERSION"));
    if target.kind == AlertKind::Sms {
        return send_sms(client, target, &events, agent).await;
    }
    let (status, _, body) =
        exchange(client, "", request(target, &events, now_ms), agent).await.map_err(|e| e.to_string())?;
    if accepted(target.kind, status, &body) {
        counter!(telemetry::ALERTS, "target" => label, "outcome" => "sent").increment(1);
        Ok(())
    } else {
        counter!(telemetry::ALERTS, "target" => label, "outcome" => "failed").increment(1);
        // The answer of a bot endpoint holds its error message, never a secret of ours.
        let answer = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        Err(format!("alert target answered {status}: {answer}"))
    }
}

/// Sends the texts of `events` through an SMS target. A number Twilio refuses for good (a 4xx
/// other than 429: not a mobile number, the person replied STOP) is counted as failed and
/// dropped, so it cannot hold up the target's queue; a 429 or 5xx fails the batch, which is
/// retried whole (a number that got its text may get it again). Only Twilio's error code is
/// logged: its message may quote the phone number.
async fn send_sms(
    client: &PollClient,
    target: &AlertTargetConfig,
    events: &[SlaEvent],
    agent: &str,
) -> Result<(), String> {
    let label = target.id.clone();
    for request in sms_requests(target, events) {
        let (status, _, body) = exchange(client, "", request, agent).await.map_err(|e| e.to_string())?;
        if (200..300).contains(&status) {
            continue;
        }
        let code = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|b| b["code"].as_i64());
        counter!(telemetry::ALERTS, "target" => label.clone(), "outcome" => "failed").increment(1);
        if (400..500).contains(&status) && status != 429 {
            tracing::warn!(target = %label, status, code, "an sms was refused for good; dropped");
            continue;
        }
        return Err(format!("sms target answered {status} (code {code:?})"));
    }
    counter!(telemetry::ALERTS, "target" => label, "outcome" => "sent").increment(1);
    Ok(())
}

/// Sends `events` as one e-mail to the target's recipients.
async fn send_email(target: &AlertTargetConfig, events: &[SlaEvent]) -> Result<(), String> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    // The url carries the relay's credentials: errors name the target, never the url.
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&target.url)
        .map_err(|_| format!("alert target {}: the smtp url is unusable", target.id))?
        .timeout(Some(std::time::Duration::from_secs(30)))
        .build();
    let breached = events.iter().filter(|e| matches!(e.kind, EventKind::Breached | EventKind::Escalated)).count();
    let subject = format!("[SLA] {} alert(s), {breached} breached or escalated", events.len());
    let mut message = Message::builder()
        .from(target.from.as_deref().unwrap_or_default().parse().map_err(|_| "bad from address".to_owned())?)
        .subject(subject)
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for to in &target.to {
        message = message.to(to.parse().map_err(|_| "bad recipient address".to_owned())?);
    }
    let message = message.body(render(events, target)).map_err(|e| format!("alert e-mail: {e}"))?;
    // The relay's reply text can quote recipients' addresses: only its status code is kept.
    transport.send(message).await.map(|_| ()).map_err(|e| {
        let code = e.status().map(|c| format!(" {c}")).unwrap_or_default();
        let kind = if e.is_permanent() { "refused" } else { "failed" };
        format!("alert target {}: smtp {kind}{code}", target.id)
    })
}

/// Feishu: HMAC-SHA256 keyed by "{timestamp}\n{secret}" over nothing, base64.
pub fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, format!("{timestamp_s}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, b"").as_ref())
}

/// DingTalk: HMAC-SHA256 keyed by the secret over "{timestamp_ms}\n{secret}", base64.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let signed = hmac::sign(&key, format!("{timestamp_ms}\n{secret}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(signed.as_ref())
}

/// Generic webhooks: `t={unix},v1={hex HMAC-SHA256(secret, "{t}.{body}")}`.
pub fn webhook_signature(secret: &str, timestamp_s: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{timestamp_s}.").into_bytes();
    signed.extend_from_slice(body);
    format!("t={timestamp_s},v1={}", hex::encode(hmac::sign(&key, &signed).as_ref()))
}

/// Percent-encodes a query parameter's value.
fn percent_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_platforms_reference_computations() {
        // Computed with the platforms' published Python samples (hmac, hashlib.sha256, base64).
        assert_eq!(feishu_sign("demo-secret", 1_700_000_000), "mYHw2R2SOm8Rw/sne3lQdmz4sOfntKR+1P/8RKKTwmA=");
        assert_eq!(dingtalk_sign("SECdemo", 1_700_000_000_000), "lOvVf9TQCVugV68mGbSZCg0gzOl1SVjxWi1MyVZCUuA=");
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    fn event(kind: EventKind, notify: Option<&str>) -> SlaEvent {
        crate::reach::sla::sample_event(kind, notify)
    }

    fn target(kind: &str) -> AlertTargetConfig {
        toml::from_str(&format!(
            "id = \"t\"\nkind = \"{kind}\"\nurl = \"https://bots.example/send\"\n\
             [mentions]\nagent-ana = \"u-ana\"\nlead-li = \"u-li\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_person_who_must_act_is_mentioned_the_way_each_platform_notifies() {
        let events = [
            event(EventKind::Started, Some("agent-ana")),
            event(EventKind::Escalated, Some("lead-li")),
            event(EventKind::Breached, Some("agent-ana")),
            event(EventKind::Reminder, Some("agent-bo")), // not mapped: named as text
        ];
        let body = |kind: &str| -> serde_json::Value {
            serde_json::from_str(&request(&target(kind), &events, 1_700_000_000_000).body).unwrap()
        };

        let slack = body("slack")["text"].as_str().unwrap().to_owned();
        assert!(slack.starts_with("New inquiry assigned: first response due 2026-12-02T11:00:00Z"), "{slack}");
        assert_eq!((slack.matches("<@u-ana>").count(), slack.matches("<@u-li>").count()), (2, 1), "{slack}");
        assert!(slack.lines().nth(3).unwrap().ends_with(" @agent-bo"), "{slack}");

        let feishu = body("feishu")["content"]["text"].as_str().unwrap().to_owned();
        assert_eq!(feishu.matches(r#"<at user_id="u-ana"></at>"#).count(), 2, "{feishu}");

        let ding = body("dingtalk");
        assert_eq!(ding["at"]["atUserIds"], serde_json::json!(["u-ana", "u-li"]), "each mapped person once");
        assert_eq!(ding["at"]["isAtAll"], false);
        assert!(ding["text"]["content"].as_str().unwrap().contains("level 1): no first response since"));
        assert!(ding["text"]["content"].as_str().unwrap().contains(" @u-li"));

        let wecom = body("wecom");
        assert_eq!(wecom["text"]["mentioned_list"], serde_json::json!(["u-ana", "u-li"]));
        assert!(wecom["text"]["content"].as_str().unwrap().contains(" @u-ana"));

        // Generic webhooks carry the events themselves: `notify` is the routing id, unmapped.
        assert_eq!(body("webhook")["events"][1]["notify"], "lead-li");
        // Without mentions the ids stay plain text and no one is listed.
        let plain: AlertTargetConfig =
            toml::from_str("id = \"p\"\nkind = \"dingtalk\"\nurl = \"https://bots.example/send\"\n").unwrap();
        let ding: serde_json::Value = serde_json::from_str(&request(&plain, &events, 0).body).unwrap();
        assert_eq!(ding["at"]["atUserIds"], serde_json::json!([]));
        assert!(ding["text"]["content"].as_str().unwrap().contains(" @lead-li"));
    }

    #[test]
    fn an_sms_goes_to_the_number_of_who_must_act_else_to_the_default_numbers() {
        let target: AlertTargetConfig = toml::from_str(
            "id = \"sms\"\nkind = \"sms\"\nurl = \"https://api.twilio.com/2010-04-01/Accounts/AC01/Messages.json\"\n\
             secret = \"AC01:token-01\"\nfrom = \"+15005550006\"\nto = [\"+4915100000009\"]\n\
             [mentions]\nlead-li = \"+4915100000002\"\n",
        )
        .unwrap();
        let events = [event(EventKind::Escalated, Some("lead-li")), event(EventKind::Breached, Some("agent-ana"))];
        let requests = sms_requests(&target, &events);
        assert_eq!(requests.len(), 2, "one message per number");
        let form = |r: &PollRequest| -> std::collections::HashMap<String, String> {
            url::form_urlencoded::parse(r.body.as_bytes()).into_owned().collect()
        };
        let (lead, others) = (form(&requests[0]), form(&requests[1]));
        assert_eq!((lead["To"].as_str(), lead["From"].as_str()), ("+4915100000002", "+15005550006"));
        assert!(lead["Body"].starts_with("SLA escalated (level 1)") && lead["Body"].ends_with(" @lead-li"));
        assert_eq!(others["To"], "+4915100000009");
        assert!(others["Body"].starts_with("SLA breached") && !others["Body"].contains('\n'));
        let auth = base64::engine::general_purpose::STANDARD.encode("AC01:token-01");
        assert!(requests[0].headers.contains(&("authorization".to_owned(), format!("Basic {auth}"))));
        assert_eq!(requests[0].path_and_query, target.url);

        // A long batch is split into texts of at most 1,600 characters, nothing cut.
        let many: Vec<SlaEvent> = (0..20).map(|_| event(EventKind::Breached, Some("agent-ana"))).collect();
        let texts: Vec<String> = sms_requests(&target, &many).iter().map(|r| form(r)["Body"].clone()).collect();
        assert!(texts.len() >= 2, "{} texts", texts.len());
        assert!(texts.iter().all(|t| t.chars().count() <= SMS_MAX_CHARS));
        assert_eq!(texts.iter().map(|t| t.lines().count()).sum::<usize>(), 20);
    }

    #[test]
    fn bots_that_answer_200_with_an_error_code_are_not_taken_as_delivered() {
        assert!(accepted(AlertKind::Dingtalk, 200, br#"{"errcode":0,"errmsg":"ok"}"#));
        assert!(!accepted(AlertKind::Dingtalk, 200, br#"{"errcode":310000,"errmsg":"sign not match"}"#));
        assert!(!accepted(AlertKind::Wecom, 200, br#"{"errcode":93000}"#));
        assert!(accepted(AlertKind::Feishu, 200, br#"{"code":0,"msg":"success"}"#));
        assert!(!accepted(AlertKind::Feishu, 200, br#"{"code":19021,"msg":"sign match fail"}"#));
        assert!(accepted(AlertKind::Slack, 200, b"ok"));
        assert!(!accepted(AlertKind::Webhook, 500, b""));
    }
}
