//! First responses read from a Kafka topic the CRM writes (`reach.replies_topic`): each message
//! `{"inquiry_id": "...", "replied_at": "RFC 3339"?, "agent": "..."?}` stops the inquiry's SLA
//! clock like `POST /v1/inquiries/{id}/reply`. A replica that gets such a call for an inquiry it
//! does not hold writes it here too, with the caller (`actor`) and the accounts its key may use
//! (`accounts`), which the holder checks. Every replica reads the whole topic with a consumer
//! group of its own and applies the replies to the inquiries in its store; offsets are committed
//! once a reply is recorded (or found not to be this replica's), so a restart re-reads at most the
//! last few, and a reply recorded twice changes nothing.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use inquiry_connectors::webhook::SellerReply;
use inquiry_connectors::Channel;

use super::{Reach, ReplyOutcome};
use crate::compliance::audit::AuditEvent;
use crate::compliance::requests::{RequestError, SubjectRequests, SubjectSpec};
use crate::conversions::{Conversion, ReportError, Reported};
use crate::pipeline::{Pipeline, StoredInquiry, SubmitError};
use crate::retry::{sleep_or_stop, Backoff};
use crate::sinks::kafka::KafkaSink;
use crate::sinks::oauth::KafkaContext;
use crate::store::{off_the_workers, Store, StoreError};
use crate::telemetry;

/// One message the CRM writes to the replies topic.
#[derive(Debug, Deserialize)]
struct ReplyMessage {
    inquiry_id: Uuid,
    #[serde(default, with = "time::serde::rfc3339::option")]
    replied_at: Option<OffsetDateTime>,
    #[serde(default)]
    agent: Option<String>,
}

/// A reply or conversion report a replica forwards on the replies topic for the replica that
/// holds the inquiry (`reach.forward_http`): `{"forwarded": "<the inner JSON>", "signature":
/// "<hex HMAC-SHA256 of it>"}`. It has no top-level `inquiry_id`, so a replica of an older
/// version skips it as invalid rather than taking it for a reply.
#[derive(Debug, Deserialize)]
struct ForwardedEnvelope {
    forwarded: String,
    signature: String,
}

/// What a forwarded message carries.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    inquiry_id: Uuid,
    /// The caller, as the receiving replica authenticated it (`api_key:<id>`, `open`); always
    /// set in a forwarded message.
    actor: Option<String>,
    /// The accounts its key may use (absent: any): the holder applies it only to those.
    #[serde(default)]
    accounts: Option<Vec<String>>,
    /// A first response (absent with `conversion`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    replied_at: Option<OffsetDateTime>,
    #[serde(default)]
    agent: Option<String>,
    /// A conversion report instead of a reply.
    #[serde(default)]
    conversion: Option<Conversion>,
    /// A copy of a reply the sending replica recorded itself, for any other replica holding the
    /// same inquiry (a message that reached two): applied only where it is the first response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    shared: bool,
}

/// Signs and checks forwarded messages: HMAC-SHA256 under a key derived from
/// `store.pseudonym_key`, which every replica shares (`check` requires it for
/// `reach.forward_http`). A writer of the replies topic without it (a CRM) cannot pass for a
/// replica: it can report first responses in the plain shape, never conversions or another
/// caller's key.
pub struct ForwardKey(ring::hmac::Key);

impl ForwardKey {
    /// The key of replicas that share `pseudonym_key`.
    pub fn new(pseudonym_key: &[u8]) -> ForwardKey {
        ForwardKey(crate::compliance::replica_key(pseudonym_key, b"inquiry-gateway forwarded replies v1"))
    }

    /// The topic message for `forwarded`.
    fn seal(&self, forwarded: &Forwarded) -> Vec<u8> {
        let inner = serde_json::to_string(forwarded).expect("json");
        let signature = hex::encode(ring::hmac::sign(&self.0, inner.as_bytes()).as_ref());
        serde_json::to_vec(&serde_json::json!({ "forwarded": inner, "signature": signature })).expect("json")
    }

    /// The inner message of `envelope`, if its signature holds.
    fn open(&self, envelope: &ForwardedEnvelope) -> Option<Forwarded> {
        let signature = hex::decode(&envelope.signature).ok()?;
        ring::hmac::verify(&self.0, envelope.forwarded.as_bytes(), &signature).ok()?;
        serde_json::from_str(&envelope.forwarded).ok()
    }

    /// The message forwarding a reply to inquiry `inquiry_id` made by `actor` (whose key may use
    /// `accounts`); `shared`: recorded here already, for other replicas holding the inquiry too.
    pub fn reply(
        &self,
        inquiry_id: Uuid,
        replied_at: Option<OffsetDateTime>,
        agent: Option<&str>,
        actor: &str,
        accounts: Option<&[String]>,
        shared: bool,
    ) -> Vec<u8> {
        self.seal(&Forwarded {
            inquiry_id,
            actor: Some(actor.to_owned()),
            accounts: accounts.map(<[String]>::to_vec),
            replied_at,
            agent: agent.map(str::to_owned),
            conversion: None,
            shared,
        })
    }

    /// The message forwarding a conversion report of inquiry `inquiry_id`.
    pub fn conversion(&self, inquiry_id: Uuid, conversion: &Conversion, accounts: Option<&[String]>) -> Vec<u8> {
        self.seal(&Forwarded {
            inquiry_id,
            actor: Some(conversion.reported_by.clone()),
            accounts: accounts.map(<[String]>::to_vec),
            replied_at: None,
            agent: None,
            conversion: Some(conversion.clone()),
            shared: false,
        })
    }
}

/// Applies a forwarded conversion report: `converted`, `conversion_kept` (one was kept before),
/// `not_here`, `not_allowed`, `erased` (the buyer was erased), `invalid`, or `audit_error` /
/// `store_error` (both read again).
async fn apply_conversion(
    store: &Store,
    pipeline: &Pipeline,
    id: Uuid,
    conversion: Conversion,
    accounts: Option<Vec<String>>,
) -> &'static str {
    let loaded = {
        let store = store.clone();
        off_the_workers(move || StoredInquiry::load(&store, id)).await
    };
    let stored = match loaded {
        Ok(None) => return "not_here",
        Ok(Some(stored)) => stored,
        Err(err) => {
            tracing::error!(error = %err, "conversion not recorded");
            return "store_error";
        }
    };
    if accounts.is_some_and(|accounts| !accounts.contains(&stored.inquiry.account)) {
        return "not_allowed";
    }
    if conversion.check(OffsetDateTime::now_utc()).is_err() {
        return "invalid";
    }
    match crate::conversions::report(pipeline, &stored, conversion).await {
        Ok(Reported::Recorded(_)) => "converted",
        Ok(Reported::Kept(_)) => "conversion_kept",
        Ok(Reported::Gone) => "not_here",
        Ok(Reported::Erased) => "erased",
        Err(ReportError::Submit(err)) => {
            tracing::warn!(error = %err, "conversion not recorded; read again");
            "audit_error"
        }
        Err(ReportError::Store(err)) => {
            tracing::error!(error = %err, "conversion not recorded");
            "store_error"
        }
    }
}

/// Reads the replies topic of `kafka` as consumer group `group` until `stop` fires; forwarded
/// messages are taken when signed with `key` (none: forwarding is off, and they are skipped).
pub async fn consume(
    reach: Arc<Reach>,
    store: Store,
    pipeline: Pipeline,
    (kafka, key): (Arc<KafkaSink>, Option<Arc<ForwardKey>>),
    group: String,
    mut stop: watch::Receiver<()>,
) {
    let Some(topic) = kafka.replies_topic().map(str::to_owned) else { return };
    let consumer: StreamConsumer<KafkaContext> = match kafka
        .consumer_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The Kafka sink may create the topic just after this subscribes: look for it again
        // within seconds, not librdkafka's default five minutes.
        .set("topic.metadata.refresh.interval.ms", "3000")
        .create_with_context(kafka.context())
    {
        Ok(consumer) => consumer,
        Err(err) => {
            tracing::error!(error = %err, "cannot create the replies consumer; replies are read over HTTP only");
            return;
        }
    };
    if let Err(err) = consumer.subscribe(&[&topic]) {
        tracing::error!(error = %err, topic, "cannot subscribe to the replies topic");
        return;
    }
    tracing::info!(topic, group, "reading replies");
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            _ = stop.changed() => return,
        };
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "replies topic unreadable; retrying");
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let outcome = apply(&reach, &store, &pipeline, key.as_deref(), message.payload().unwrap_or_default()).await;
        counter!(telemetry::REPLIES, "source" => "kafka", "outcome" => outcome).increment(1);
        if outcome == "store_error" || outcome == "audit_error" {
            // Not committed: read again after a pause.
            if sleep_or_stop(backoff.next(), &mut stop).await {
                return;
            }
            let _ = consumer.seek(
                message.topic(),
                message.partition(),
                rdkafka::Offset::Offset(message.offset()),
                Duration::from_secs(5),
            );
            continue;
        }
        if let Err(err) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(error = %err, "replies offset not committed; the reply may be read again");
        }
    }
}

/// The audit entry of a first response recorded for inquiry `id` (`inquiry.replied`): who
/// reported it (`actor`), the agent if named, and the SLA's status after it.
pub fn replied_event(actor: &str, id: Uuid, agent: Option<&str>, outcome: &ReplyOutcome) -> AuditEvent {
    let status = outcome.sla().map(|sla| serde_json::to_value(sla.status).expect("statuses serialize"));
    AuditEvent::new("inquiry.replied", actor)
        .inquiry(id)
        .detail(serde_json::json!({ "agent": agent, "sla_status": status }))
}

/// Applies one message: `recorded`, `not_here` (another replica's inquiry), `not_allowed` (an
/// inquiry of an account the forwarding caller's key may not use), `invalid`, `audit_error` or
/// `store_error` (both read again).
async fn apply(
    reach: &Arc<Reach>,
    store: &Store,
    pipeline: &Pipeline,
    key: Option<&ForwardKey>,
    payload: &[u8],
) -> &'static str {
    // A replica's forwarded message (signed), or the CRM's reply.
    let reply = if let Ok(envelope) = serde_json::from_slice::<ForwardedEnvelope>(payload) {
        let Some(forwarded) = key.and_then(|key| key.open(&envelope)) else {
            tracing::warn!("a forwarded replies message without a valid signature; skipped");
            return "invalid";
        };
        if let Some(conversion) = forwarded.conversion {
            return apply_conversion(store, pipeline, forwarded.inquiry_id, conversion, forwarded.accounts).await;
        }
        forwarded
    } else {
        let Ok(reply) = serde_json::from_slice::<ReplyMessage>(payload) else {
            tracing::warn!("a replies message is not a reply; skipped");
            return "invalid";
        };
        let ReplyMessage { inquiry_id, replied_at, agent } = reply;
        // The CRM's own: no caller to name, every account.
        Forwarded { inquiry_id, actor: None, accounts: None, replied_at, agent, conversion: None, shared: false }
    };
    let id = reply.inquiry_id;
    let previewed = {
        let (reach, store) = (reach.clone(), store.clone());
        off_the_workers(move || {
            let Some(stored) = StoredInquiry::load(&store, id)? else { return Ok(None) };
            if reply.accounts.as_ref().is_some_and(|accounts| !accounts.contains(&stored.inquiry.account)) {
                return Ok(Some(Err(())));
            }
            let now = OffsetDateTime::now_utc();
            let at = reply.replied_at.unwrap_or(now).min(now);
            let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
            reach.preview_reply(&stored, at_ms).map(|outcome| Some(Ok((stored, at_ms, outcome))))
        })
        .await
    };
    let (stored, at_ms, preview) = match previewed {
        Ok(None) => return "not_here",
        Ok(Some(Err(()))) => return "not_allowed",
        Ok(Some(Ok(previewed))) => previewed,
        Err(err) => {
            tracing::error!(error = %err, "reply not recorded");
            return "store_error";
        }
    };
    // A shared copy is for a replica where it is news (the sender reads its own copy too).
    if reply.shared && !matches!(preview, super::ReplyOutcome::Recorded(_)) {
        return "already";
    }
    // Audited first, recorded after: either failing leaves the message to be read again.
    let actor = reply.actor.as_ref().map_or_else(|| "kafka:replies".to_owned(), |by| format!("kafka:replies:{by}"));
    if let Err(err) = pipeline.audit(vec![replied_event(&actor, id, reply.agent.as_deref(), &preview)]).await {
        tracing::warn!(error = %err, "reply not audited; read again");
        return "audit_error";
    }
    let reach = reach.clone();
    match off_the_workers(move || reach.reply(&stored, at_ms)).await {
        Ok(_) => "recorded",
        Err(err) => {
            tracing::error!(error = %err, "reply not recorded");
            "store_error"
        }
    }
}

/// Why the seller's platform answers could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum SellerReplyError {
    /// Finding the buyers or their inquiries failed.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The audit entries could not be written.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

impl From<StoreError> for SellerReplyError {
    fn from(err: StoreError) -> Self {
        SellerReplyError::Request(RequestError::Store(err))
    }
}

/// A seller's answer as [`record_seller_replies`] weighs it.
struct Candidate {
    /// When (the platform's time, not in the future).
    at: OffsetDateTime,
    /// The platform's id.
    message_id: Option<String>,
    /// The buyer's message it answers, where the platform says.
    in_reply_to: Option<String>,
    /// The answers the question holds, where the platform counts them.
    responses: Option<usize>,
}

impl Candidate {
    /// Whether it may answer `stored` (any inquiry of the buyer, unless it names its question).
    fn answers(&self, stored: &StoredInquiry) -> bool {
        self.in_reply_to.as_ref().is_none_or(|to| *to == stored.inquiry.external.message_id)
    }
}

/// Records the seller's own answers on a platform (Messenger and Instagram echoes, a marketplace
/// chat's shop messages) as the first response to every inquiry of that buyer on that account
/// written before the answer (by the platform's message times; only the inquiry it answers where
/// the platform names it, [`SellerReply::in_reply_to`]): their SLA clocks stop like with
/// `POST /v1/inquiries/{id}/reply`, audited as `inquiry.replied` by `actor` before they are
/// recorded. A message whose id is that of one of the gateway's own acknowledgements to the buyer
/// is not an answer; where the platform does not mark the gateway's own messages
/// (`acks_marked` false: a marketplace chat), an acknowledgement whose outcome is unknown is taken
/// to be the first shop message from when it was due. A buyer never seen here is skipped
/// (nothing is recorded of a stranger). Returns how many inquiries got their first response now.
pub async fn record_seller_replies(
    reach: &Arc<Reach>,
    requests: &Arc<SubjectRequests>,
    pipeline: &Pipeline,
    actor: &str,
    channel: Channel,
    replies: &[SellerReply],
    acks_marked: bool,
) -> Result<usize, SellerReplyError> {
    let mut by_buyer: std::collections::BTreeMap<(String, String), Vec<&SellerReply>> = Default::default();
    for reply in replies {
        by_buyer.entry((reply.account.clone(), reply.buyer_id.clone())).or_default().push(reply);
    }
    let mut answered = 0;
    for ((account, buyer_id), replies) in by_buyer {
        let spec = SubjectSpec {
            email: None,
            channel: Some(channel.as_str().to_owned()),
            account: Some(account.clone()),
            user_id: Some(buyer_id),
            pseudonym: None,
            pseudonyms: Vec::new(),
            identities: Vec::new(),
        };
        let mut candidates: Vec<Candidate> = replies
            .iter()
            .map(|r| Candidate {
                at: r.replied_at.min(OffsetDateTime::now_utc()),
                message_id: r.message_id.clone(),
                in_reply_to: r.in_reply_to.clone(),
                responses: r.responses,
            })
            .collect();
        candidates.sort_by(|a, b| (a.at, &a.message_id).cmp(&(b.at, &b.message_id)));
        let (previewer, requests) = (reach.clone(), requests.clone());
        let mut answered_now = off_the_workers(move || {
            let pseudonyms = requests.find(&spec).map_err(|err| match err {
                RequestError::Store(err) => err,
                other => StoreError::from_message(&other.to_string()),
            })?;
            let store = &requests.store;
            let mut inquiries = Vec::new();
            for id in pseudonyms.iter().map(|p| store.inquiries_of(p)).collect::<Result<Vec<_>, _>>()?.concat() {
                let Some(stored) = StoredInquiry::load(store, id)? else { continue };
                if stored.inquiry.channel == channel && stored.inquiry.account == account {
                    inquiries.push(stored);
                }
            }
            // The gateway's own acknowledgements to this buyer come back as the shop's messages:
            // known by the id the platform answered the send with; one whose outcome is unknown
            // (in flight, or the gateway stopped while sending) is taken to be the first shop
            // message from when it was due. Where the platform only counts a question's answers,
            // an acknowledgement sent (or maybe sent) is one of them.
            let mut answers = candidates;
            let mut acknowledged = std::collections::HashSet::new();
            for stored in &inquiries {
                let seen_as = previewer.ack_seen_as(stored.inquiry.id)?;
                if !matches!(seen_as, super::AckSeenAs::Nothing) {
                    acknowledged.insert(stored.inquiry.id);
                }
                // From when the shop's first message may be it (none: known by id, or not sent).
                let due = match seen_as {
                    super::AckSeenAs::Id(id) => {
                        answers.retain(|c| c.message_id.as_ref() != Some(&id));
                        None
                    }
                    super::AckSeenAs::FirstFrom(due_ms) => Some(
                        OffsetDateTime::from_unix_timestamp_nanos(i128::from(due_ms) * 1_000_000)
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
                            - time::Duration::seconds(1),
                    ),
                    // Not before the buyer's message (a shop message before it answers nothing).
                    super::AckSeenAs::FirstAfterMessage => Some(stored.inquiry.occurred_at),
                    super::AckSeenAs::Nothing => None,
                };
                match due {
                    Some(due) if !acks_marked => {
                        let first =
                            answers.iter().position(|c| c.at >= due && c.responses.is_none() && c.answers(stored));
                        if let Some(first) = first {
                            let taken = answers.remove(first);
                            // Remembered: a later cycle that reads it again knows it by its id.
                            if let Some(message_id) = taken.message_id {
                                // Only once it has left for good (not while it is still sending: a
                                // retry may follow, and the message taken may be the seller's).
                                previewer.update_ack(stored.inquiry.id, None, |state| {
                                    let remember = state.status.left_unseen();
                                    if remember {
                                        state.seen_as = Some(message_id);
                                    }
                                    remember
                                })?;
                            }
                        }
                    }
                    _ => {}
                }
            }
            let mut answered_now = Vec::new();
            for stored in inquiries {
                let inquiry = &stored.inquiry;
                // Platform times on both sides: the gateway may receive the buyer's message after
                // the answer to it (a slow delivery, a poll cycle). The first answer at or after
                // the question answers it; a page may hold several questions and answers.
                let own_acks = usize::from(acknowledged.contains(&inquiry.id));
                let answer = answers.iter().find(|c| {
                    c.at >= inquiry.occurred_at && c.answers(&stored) && c.responses.is_none_or(|n| n > own_acks)
                });
                let Some(answer) = answer else {
                    continue;
                };
                let replied_at = answer.at;
                if previewer.load(inquiry.id)?.is_some_and(|sla| sla.replied_ms.is_some()) {
                    continue; // answered before (also: this answer, delivered again)
                }
                // The answer's own time (an answer before receipt counts as given at receipt:
                // `Reach::reply`).
                let at_ms = (replied_at.unix_timestamp_nanos() / 1_000_000) as i64;
                let outcome = previewer.preview_reply(&stored, at_ms)?;
                if matches!(&outcome, ReplyOutcome::Recorded(_)) {
                    answered_now.push((stored, at_ms, outcome));
                }
            }
            Ok(answered_now)
        })
        .await?;
        if answered_now.is_empty() {
            continue;
        }
        // In the order they were given: an answer to a buyer's first message comes before (and
        // does not answer) a message the buyer wrote after it (see `Reach::reply`).
        answered_now.sort_by_key(|(_, at_ms, _)| *at_ms);
        // Audited first, recorded after: if recording fails, the caller tries again (a webhook's
        // redelivery, the poller's retry) and finds the inquiries still open, never a recorded
        // answer without its entry.
        let events: Vec<_> = answered_now
            .iter()
            .map(|(stored, _, outcome)| replied_event(actor, stored.inquiry.id, None, outcome))
            .collect();
        pipeline.audit(events).await?;
        let reach = reach.clone();
        let recorded = off_the_workers(move || {
            // Counted per inquiry answered: a buyer's messages that share one SLA (a
            // conversation) are all answered when the first reply to them is recorded.
            let mut recorded = 0;
            let mut answered_slas = std::collections::HashSet::new();
            for (stored, at_ms, _) in &answered_now {
                match reach.reply(stored, *at_ms)? {
                    ReplyOutcome::Recorded(state) => {
                        answered_slas.insert(state.inquiry_id);
                        recorded += 1;
                    }
                    ReplyOutcome::Unchanged(state) if answered_slas.contains(&state.inquiry_id) => recorded += 1,
                    // Unchanged: the same answer, delivered twice at once, was recorded meanwhile.
                    _ => {}
                }
            }
            Ok(recorded)
        })
        .await?;
        answered += recorded;
        counter!(telemetry::REPLIES, "source" => "platform", "outcome" => "recorded").increment(recorded as u64);
    }
    Ok(answered)
}
