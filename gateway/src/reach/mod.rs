//! Reach-out: first-response SLA timers, reminders, escalation and agent alerts.
//!
//! The reach stage reads stored inquiries from the spool like a sink does ([`ReachSink`]): for
//! each routed inquiry with an SLA policy it stores the SLA's state and the timer of its next step
//! in the embedded store. The [`run_timers`] task fires due steps; each firing, in one atomic store
//! write, removes the timer, stores the state and the next timer, and queues the step's event for
//! every destination (each Kafka cluster's `sla.events.v1` that takes the inquiry's region, the
//! team's alert targets). So a restart
//! neither loses nor repeats a step, and a destination that is down only delays its events. A
//! reply (`POST /v1/inquiries/{id}/reply`) stops the clock the same way.

pub mod ack;
pub mod alerts;
pub mod calendar;
pub mod replies;
pub mod send;
pub mod sla;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::config::{AlertTargetConfig, ReachConfig, TeamConfig};
use crate::pipeline::StoredInquiry;
use crate::retry::{sleep_or_stop, Backoff};
use crate::sinks::{AuditRecord, Delivery, OutRecord, Sink, SinkError};
use crate::store::{Store, StoreBatch, StoreError, Timeline};
use crate::telemetry;
use sla::{EventKind, Policies, SlaEvent, SlaState, Status};

/// The queue of events for the main Kafka cluster's topic `sla.events.v1` (a regional cluster's
/// queue is named after its sink, `kafka-<name>`).
pub const KAFKA_QUEUE: &str = "kafka";

/// Most due timers fired in one store write.
const FIRE_BATCH: usize = 256;

/// The time source of the SLA clock (tests use a manual one).
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The reach-out engine: policies, the SLA states and timers in the store, and the event queues.
pub struct Reach {
    store: Store,
    /// Policies, teams and acknowledgement rules: swapped whole by [`Reach::reload`].
    rules: RwLock<Arc<Rules>>,
    /// What a reload cannot change (senders, alert targets, dry run, the replies topic), as
    /// started, to tell when a changed config needs a restart.
    restart_only: RestartOnly,
    targets: Vec<AlertTargetConfig>,
    /// The event queue of each Kafka cluster (its sink's name; `kafka` for the main one), the
    /// regions of the events it publishes and where it runs.
    kafka_queues: Vec<KafkaQueue>,
    dry_run: bool,
    pub(crate) clock: Arc<dyn Clock>,
    /// Next sequence number per queue; held while a write is built, so writes do not interleave.
    next_seq: Mutex<HashMap<String, u64>>,
    /// Wakes the timer task when an earlier timer may have been set.
    pub timers_changed: Notify,
    /// Wakes the queue deliverers when events were queued.
    pub queued: Notify,
    /// Wakes the acknowledgement sender when acknowledgements were planned.
    pub acks_changed: Notify,
}

/// How an inquiry's acknowledgement shows up among the shop's own messages on the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckSeenAs {
    /// Sent: the message with this platform id.
    Id(String),
    /// Perhaps sent (in flight, or the gateway stopped while sending): the first shop message
    /// from this time (Unix ms, when it was due) on.
    FirstFrom(i64),
    /// Sent by another replica holding the same inquiry, when its own plan said: the first shop
    /// message answering the inquiry after the buyer's message.
    FirstAfterMessage,
    /// Not sent (none planned, waiting, failed, cancelled, dry run).
    Nothing,
}

/// What a reply did to an inquiry's SLA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// The inquiry has no SLA (none configured, spam, unknown id).
    NoSla,
    /// This reply is the first response: the SLA as it stands now.
    Recorded(Box<SlaState>),
    /// An earlier reply was the first response and is kept: the SLA as it left it.
    Unchanged(Box<SlaState>),
}

impl ReplyOutcome {
    /// The SLA after the reply, if the inquiry has one.
    pub fn sla(&self) -> Option<&SlaState> {
        match self {
            ReplyOutcome::NoSla => None,
            ReplyOutcome::Recorded(sla) | ReplyOutcome::Unchanged(sla) => Some(sla),
        }
    }
}

/// The parts of the reach-out config a reload replaces: SLA policies, rules and calendars, teams,
/// acknowledgement templates and rules, quiet hours, the EU block and the fallback language.
pub struct Rules {
    policies: Policies,
    teams: HashMap<String, TeamConfig>,
    acks: ack::Acks,
    /// `reach.ack_repeat_window` in ms (0: every message is acknowledged).
    ack_repeat_window_ms: i64,
    /// `reach.sla_per_buyer`.
    sla_per_buyer: bool,
    /// The queues the config names (teams, SLA rules): the SLA metrics' `queue` label takes
    /// these, any other queue a plugin picks is `other` (a small fixed set of label values).
    queues: HashSet<String>,
}

impl Rules {
    fn from_config(config: &ReachConfig) -> Result<Rules, String> {
        let window = crate::config::parse_duration(&config.ack_repeat_window)?;
        Ok(Rules {
            policies: Policies::from_config(config)?,
            teams: config.teams.iter().map(|t| (t.queue.clone(), t.clone())).collect(),
            acks: ack::Acks::from_config(config)?,
            ack_repeat_window_ms: window.as_millis() as i64,
            sla_per_buyer: config.sla_per_buyer,
            queues: config
                .teams
                .iter()
                .map(|t| t.queue.clone())
                .chain(config.sla_rules.iter().filter_map(|r| r.queue.clone()))
                .collect(),
        })
    }

    /// `queue` as an SLA metric's label.
    fn queue_label(&self, queue: &str) -> String {
        if self.queues.contains(queue) {
            queue.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

/// How many of a buyer's latest inquiries are looked at for an SLA still running or an
/// acknowledgement within the repeat window.
const BUYER_LOOKBACK: usize = 64;

/// A buyer's later inquiry that joined the running SLA of an earlier one (`reach.sla_per_buyer`):
/// its entry among the SLA states, which [`Reach::load`] follows.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinedSla {
    joined: Uuid,
}

/// Writes inquiry `id`'s marker: it joined the SLA of `holder`.
fn put_joined(batch: &mut StoreBatch<'_>, id: Uuid, holder: Uuid) {
    let marker = serde_json::to_vec(&JoinedSla { joined: holder }).expect("json");
    batch.put_timeline_state(Timeline::Sla, id, &marker);
}

/// When the buyer wrote `stored` (the platform's time), Unix ms.
fn written_ms(stored: &StoredInquiry) -> i64 {
    (stored.inquiry.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A buyer's conversation with a shop: (pseudonym, channel, account, conversation id). A chat
/// with the buyer is one conversation (its id is the buyer's pseudonym); an eBay question, an
/// e-mail thread or an RFQ is one of its own.
type Conversation = (String, &'static str, String, String);

/// `stored`'s conversation; `None` without a buyer pseudonym or a conversation id (nothing to
/// link it by).
fn conversation(stored: &StoredInquiry) -> Option<Conversation> {
    let inquiry = &stored.inquiry;
    (!inquiry.buyer.pseudonym.is_empty() && !inquiry.external.conversation_id.is_empty()).then(|| {
        (
            inquiry.buyer.pseudonym.clone(),
            inquiry.channel.as_str(),
            inquiry.account.clone(),
            inquiry.external.conversation_id.clone(),
        )
    })
}

/// The acknowledgement rules in force (see [`Reach::acks`]).
pub struct AcksInForce(Arc<Rules>);

impl std::ops::Deref for AcksInForce {
    type Target = ack::Acks;
    fn deref(&self) -> &ack::Acks {
        &self.0.acks
    }
}

/// The parts of a reach-out config only a restart changes (secrets and URLs included).
#[derive(PartialEq)]
struct RestartOnly {
    senders: Vec<crate::config::SenderConfig>,
    alert_targets: Vec<AlertTargetConfig>,
    dry_run: bool,
    replies_topic: Option<String>,
}

/// A Kafka cluster's SLA event queue: its sink's name and the residency it was declared with.
pub type KafkaQueue = (String, Vec<inquiry_connectors::Region>, inquiry_connectors::Region);

fn restart_only(config: &ReachConfig) -> RestartOnly {
    RestartOnly {
        senders: config.senders.clone(),
        alert_targets: config.alert_targets.clone(),
        dry_run: config.dry_run,
        replies_topic: config.replies_topic.clone(),
    }
}

impl Reach {
    /// The engine for a validated `config`; events go to the queue of each Kafka cluster of
    /// `kafka_queues` that takes their region (none: no Kafka).
    pub fn new(
        config: &ReachConfig,
        store: Store,
        kafka_queues: Vec<KafkaQueue>,
        clock: Arc<dyn Clock>,
    ) -> Result<Reach, String> {
        Ok(Reach {
            store,
            rules: RwLock::new(Arc::new(Rules::from_config(config)?)),
            restart_only: restart_only(config),
            targets: config.alert_targets.clone(),
            kafka_queues,
            dry_run: config.dry_run,
            clock,
            next_seq: Mutex::default(),
            timers_changed: Notify::new(),
            queued: Notify::new(),
            acks_changed: Notify::new(),
        })
    }

    /// The rules in force.
    fn rules(&self) -> Arc<Rules> {
        self.rules.read().expect("reach rules lock").clone()
    }

    /// The acknowledgement rules, templates and senders in force.
    pub fn acks(&self) -> AcksInForce {
        AcksInForce(self.rules())
    }

    /// Replaces the SLA policies, rules and calendars, the teams, the acknowledgement templates
    /// and rules, quiet hours, the EU block and the fallback language with those of a validated
    /// `config`; SLAs already started keep their deadlines. Senders, alert targets, `dry_run` and
    /// the replies topic stay as started: the answer is true when `config` changes any of them
    /// (they need a restart). Refused, changing nothing, when a team names an alert target that
    /// is not running.
    pub fn reload(&self, config: &ReachConfig) -> Result<bool, String> {
        if let Some((team, target)) = config.teams.iter().find_map(|team| {
            let unknown = team.alert_targets.iter().find(|t| !self.targets.iter().any(|running| &running.id == *t))?;
            Some((&team.queue, unknown))
        }) {
            return Err(format!("team `{team}` names alert target `{target}`, which starts with the next restart"));
        }
        let mut keeping = config.clone();
        keeping.senders = self.rules().acks.senders().to_vec();
        let rules = Rules::from_config(&keeping)?;
        *self.rules.write().expect("reach rules lock") = Arc::new(rules);
        Ok(restart_only(config) != self.restart_only)
    }

    /// True when alerts are only recorded, not sent.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The alert targets.
    pub fn targets(&self) -> &[AlertTargetConfig] {
        &self.targets
    }

    /// Starts the SLA of every record that has a policy and none yet, and plans its
    /// acknowledgement (a record delivered again after a crash finds both and is skipped).
    /// Blocking.
    pub fn schedule(&self, records: &[OutRecord]) -> Result<usize, StoreError> {
        let mut seqs = self.next_seq.lock().expect("reach lock");
        let now = self.clock.now_ms();
        let mut batch = self.store.batch();
        let mut started = 0;
        let rules = self.rules();
        // What this batch planned and started, per conversation (not in the store yet), and the
        // SLA states it writes (once each: a batch must not write one key twice).
        let mut acked_now: HashSet<Conversation> = HashSet::new();
        let mut started_now: HashMap<Conversation, Uuid> = HashMap::new();
        let mut states: HashMap<Uuid, SlaState> = HashMap::new();
        let mut joined_now: HashSet<Uuid> = HashSet::new();
        // In the order the buyer wrote them (a poll page comes newest first): a conversation's
        // SLA is held by its earliest message.
        let mut in_order: Vec<&OutRecord> = records.iter().collect();
        in_order.sort_by_key(|r| (r.stored().inquiry.occurred_at, r.seq));
        for record in in_order {
            let stored = record.stored();
            let talk = conversation(stored);
            // The buyer's latest inquiries, read once per record and only when a rule needs them.
            let mut history = None;
            if let Some(ack) = rules.acks.plan(stored, now) {
                if self.store.timeline_state(Timeline::Ack, record.id())?.is_none() {
                    let repeat = match &talk {
                        Some(talk) if rules.ack_repeat_window_ms > 0 => {
                            acked_now.contains(talk)
                                || self.acked_since(
                                    stored,
                                    self.history(stored, &mut history)?,
                                    now - rules.ack_repeat_window_ms,
                                )?
                        }
                        _ => false,
                    };
                    if repeat {
                        counter!(telemetry::REACH_REPEATS, "kind" => "ack_skipped").increment(1);
                    } else {
                        batch.put_timer(Timeline::Ack, ack.not_before_ms, ack.inquiry_id);
                        batch.put_timeline_state(
                            Timeline::Ack,
                            ack.inquiry_id,
                            &serde_json::to_vec(&ack).expect("acks serialize"),
                        );
                        acked_now.extend(talk.clone());
                    }
                }
            }
            let Some(policy) = rules.policies.policy_for(stored) else { continue };
            if self.store.timeline_state(Timeline::Sla, record.id())?.is_some() {
                continue;
            }
            if states.contains_key(&record.id()) || joined_now.contains(&record.id()) {
                continue; // the same record twice in one batch
            }
            if let Some(talk) = talk.as_ref().filter(|_| rules.sla_per_buyer) {
                let running = match started_now.get(talk) {
                    Some(first) => Some(*first),
                    None => self.running_sla_of_buyer(stored, self.history(stored, &mut history)?)?,
                };
                // Only a message written after the one holding the SLA joins it (an answer
                // then always answers the holder: see `split_later_messages`).
                let written = written_ms(stored);
                // The holder as this batch has it (started or joined here), else as stored.
                let holder = match running {
                    Some(first) => match states.remove(&first) {
                        Some(state) => Some((state, true)),
                        None => self.load_own(first)?.map(|state| (state, false)),
                    },
                    None => None,
                };
                match holder {
                    Some((mut holder, _)) if holder.joined.len() < BUYER_LOOKBACK && holder.written_ms <= written => {
                        holder.joined.push(record.id());
                        joined_now.insert(record.id());
                        put_joined(&mut batch, record.id(), holder.inquiry_id);
                        counter!(telemetry::REACH_REPEATS, "kind" => "sla_joined").increment(1);
                        states.insert(holder.inquiry_id, holder);
                        continue;
                    }
                    // Not joined: what this batch changed is still written, once.
                    Some((holder, true)) => {
                        states.insert(holder.inquiry_id, holder);
                    }
                    _ => {}
                }
            }
            let state = SlaState::start(policy, stored);
            if let Some(talk) = talk {
                started_now.insert(talk, state.inquiry_id);
            }
            self.queue_event(&rules, &mut batch, &mut seqs, state.started(now))?;
            if let Some(due) = state.next_due() {
                batch.put_timer(Timeline::Sla, due, state.inquiry_id);
            }
            states.insert(state.inquiry_id, state);
            started += 1;
        }
        for (id, state) in &states {
            batch.put_timeline_state(Timeline::Sla, *id, &serde_json::to_vec(state).expect("states serialize"));
        }
        if !batch.is_empty() {
            batch.commit()?;
            self.timers_changed.notify_one();
            self.acks_changed.notify_one();
            self.queued.notify_waiters();
        }
        Ok(started)
    }

    /// Fires every step due now (up to [`FIRE_BATCH`] timers in one write): the number fired.
    /// Blocking.
    pub fn fire_due(&self) -> Result<usize, StoreError> {
        let mut seqs = self.next_seq.lock().expect("reach lock");
        let now = self.clock.now_ms();
        let due = self.store.due_timers(Timeline::Sla, now, FIRE_BATCH)?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut batch = self.store.batch();
        let mut fired = 0;
        let rules = self.rules();
        for (due_ms, id) in due {
            batch.remove_timer(Timeline::Sla, due_ms, id);
            let Some(mut state) = self.load_own(id)? else { continue };
            while state.next_due().is_some_and(|at| at <= now) {
                let Some(event) = state.fire(now) else { break };
                histogram!(telemetry::SLA_TIMER_LAG).record((now - due_ms).max(0) as f64 / 1000.0);
                self.queue_event(&rules, &mut batch, &mut seqs, event)?;
                fired += 1;
            }
            if let Some(next) = state.next_due() {
                batch.put_timer(Timeline::Sla, next, id);
            }
            batch.put_timeline_state(Timeline::Sla, id, &serde_json::to_vec(&state).expect("states serialize"));
        }
        batch.commit()?;
        self.queued.notify_waiters();
        Ok(fired)
    }

    /// How inquiry `id`'s acknowledgement, if it may have left, shows up among the shop's own
    /// messages on the platform.
    pub fn ack_seen_as(&self, id: Uuid) -> Result<AckSeenAs, StoreError> {
        let Some(bytes) = self.store.timeline_state(Timeline::Ack, id)? else { return Ok(AckSeenAs::Nothing) };
        Ok(match serde_json::from_slice::<ack::AckState>(&bytes) {
            Ok(ack::AckState { status: ack::AckStatus::Sent { provider_id }, .. }) => AckSeenAs::Id(provider_id),
            Ok(ack::AckState { seen_as: Some(message_id), status, .. }) if status.left_unseen() => {
                AckSeenAs::Id(message_id)
            }
            Ok(ack::AckState {
                status: ack::AckStatus::Sending | ack::AckStatus::Uncertain, not_before_ms, ..
            }) => AckSeenAs::FirstFrom(not_before_ms),
            // Another replica holding the same inquiry sent it, at a time of its own plan: the
            // first shop message answering the inquiry is taken to be that acknowledgement.
            Ok(ack::AckState { status: ack::AckStatus::Failed { reason }, .. }) if reason == ack::CLAIMED_ELSEWHERE => {
                AckSeenAs::FirstAfterMessage
            }
            _ => AckSeenAs::Nothing,
        })
    }

    /// `stored`'s SLA as kept, or started now (`true`) when its policy has one and the reach
    /// stage has not taken it yet; `None` without an SLA.
    fn sla_of(&self, rules: &Rules, stored: &StoredInquiry) -> Result<Option<(SlaState, bool)>, StoreError> {
        if let Some(state) = self.load(stored.inquiry.id)? {
            return Ok(Some((state, false)));
        }
        Ok(rules.policies.policy_for(stored).map(|policy| (SlaState::start(policy, stored), true)))
    }

    /// What [`Reach::reply`] would do to `stored`'s SLA at `at_ms`, without writing anything:
    /// callers audit this outcome first and record the reply after, so that a reply is never
    /// recorded without its `inquiry.replied` entry (a failure in between leaves a retry that
    /// audits again, at worst twice, never not at all). Blocking.
    pub fn preview_reply(&self, stored: &StoredInquiry, at_ms: i64) -> Result<ReplyOutcome, StoreError> {
        let now = self.clock.now_ms();
        let Some((mut state, _)) = self.sla_of(&self.rules(), stored)? else { return Ok(ReplyOutcome::NoSla) };
        Ok(match state.reply(at_ms.max(state.started_ms), now) {
            Some(_) => ReplyOutcome::Recorded(Box::new(state)),
            None => ReplyOutcome::Unchanged(Box::new(state)),
        })
    }

    /// Records the first response to `stored` at `at_ms` (the answer's own time; one given
    /// before the SLA's start counts as given at its start): stops its clock and cancels an
    /// acknowledgement not sent yet. A reply that comes before the reach stage took the inquiry
    /// starts its SLA closed, so it is never reminded or escalated. Blocking.
    pub fn reply(&self, stored: &StoredInquiry, at_ms: i64) -> Result<ReplyOutcome, StoreError> {
        let mut seqs = self.next_seq.lock().expect("reach lock");
        let id = stored.inquiry.id;
        let now = self.clock.now_ms();
        let mut batch = self.store.batch();
        self.cancel_ack(&mut batch, id)?;
        let rules = self.rules();
        let mut state = match self.sla_of(&rules, stored)? {
            Some((state, false)) => state,
            Some((state, true)) => {
                self.queue_event(&rules, &mut batch, &mut seqs, state.started(now))?;
                state
            }
            None => {
                batch.commit()?;
                return Ok(ReplyOutcome::NoSla);
            }
        };
        // A buyer's later message that joined an earlier one's SLA answers that one (and the
        // earlier one's acknowledgement, still waiting for quiet hours to end, is not sent).
        let sla_id = state.inquiry_id;
        let pending = state.next_due();
        // The clock runs from receipt: an answer given before counts as given at receipt.
        let Some(event) = state.reply(at_ms.max(state.started_ms), now) else {
            batch.commit()?;
            return Ok(ReplyOutcome::Unchanged(Box::new(state)));
        };
        let outcome = if state.status == Status::Met { "met" } else { "late" };
        if let Some(due) = pending {
            batch.remove_timer(Timeline::Sla, due, sla_id);
        }
        self.queue_event(&rules, &mut batch, &mut seqs, event)?;
        self.split_later_messages(&rules, &mut batch, &mut seqs, &mut state, id, at_ms, now)?;
        // Every message the answer answered: an acknowledgement still waiting is not sent.
        for answered in std::iter::once(sla_id).chain(state.joined.iter().copied()).filter(|m| *m != id) {
            self.cancel_ack(&mut batch, answered)?;
        }
        batch.put_timeline_state(Timeline::Sla, sla_id, &serde_json::to_vec(&state).expect("states serialize"));
        batch.commit()?;
        let queue = rules.queue_label(&state.queue);
        counter!(telemetry::SLA_FIRST_RESPONSES, "outcome" => outcome, "channel" => state.channel.clone(), "queue" => queue.clone())
            .increment(1);
        let waited = state.replied_ms.unwrap_or(at_ms).saturating_sub(state.started_ms).max(0);
        histogram!(telemetry::SLA_FIRST_RESPONSE_TIME, "channel" => state.channel.clone(), "queue" => queue)
            .record(waited as f64 / 1000.0);
        self.queued.notify_waiters();
        Ok(ReplyOutcome::Recorded(Box::new(state)))
    }

    /// The buyer's messages that joined `state` but were written after the answer at `at_ms`
    /// are not answered by it (the message `replied` is, whatever its time): the earliest of
    /// them starts an SLA of its own now (from its receipt) and the others join that one.
    #[allow(clippy::too_many_arguments)]
    fn split_later_messages(
        &self,
        rules: &Rules,
        batch: &mut StoreBatch<'_>,
        seqs: &mut HashMap<String, u64>,
        state: &mut SlaState,
        replied: Uuid,
        at_ms: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut later = Vec::new();
        let mut still_joined = Vec::new();
        for id in std::mem::take(&mut state.joined) {
            match StoredInquiry::load(&self.store, id)? {
                Some(stored) if id != replied && written_ms(&stored) > at_ms => later.push(stored),
                Some(_) => still_joined.push(id),
                None => {} // gone (retention)
            }
        }
        later.sort_by_key(|stored| (written_ms(stored), stored.inquiry.id));
        later.dedup_by_key(|stored| stored.inquiry.id);
        let policy = later.first().and_then(|first| rules.policies.policy_for(first));
        let (Some(first), Some(policy)) = (later.first(), policy) else {
            // None, or no policy for them now (a reload): they stay with the SLA they joined.
            still_joined.extend(later.iter().map(|stored| stored.inquiry.id));
            state.joined = still_joined;
            return Ok(());
        };
        state.joined = still_joined;
        let mut holder = SlaState::start(policy, first);
        for joining in &later[1..] {
            holder.joined.push(joining.inquiry.id);
            put_joined(batch, joining.inquiry.id, holder.inquiry_id);
        }
        self.queue_event(rules, batch, seqs, holder.started(now))?;
        if let Some(due) = holder.next_due() {
            batch.put_timer(Timeline::Sla, due, holder.inquiry_id);
        }
        batch.put_timeline_state(
            Timeline::Sla,
            holder.inquiry_id,
            &serde_json::to_vec(&holder).expect("states serialize"),
        );
        Ok(())
    }

    /// An acknowledgement that has not left yet is not sent once an agent answered.
    fn cancel_ack(&self, batch: &mut StoreBatch<'_>, id: Uuid) -> Result<(), StoreError> {
        // Senders are fixed for the process; templates may come and go with reloads.
        if self.rules().acks.senders().is_empty() {
            return Ok(());
        }
        let planned = self.store.timeline_state(Timeline::Ack, id)?;
        let plan = planned.and_then(|b| serde_json::from_slice::<ack::AckState>(&b).ok());
        match plan {
            Some(mut plan) if plan.status == ack::AckStatus::Scheduled => {
                batch.remove_timer(Timeline::Ack, plan.not_before_ms, id);
                plan.status = ack::AckStatus::Cancelled;
                batch.put_timeline_state(Timeline::Ack, id, &serde_json::to_vec(&plan).expect("acks serialize"));
            }
            Some(mut plan) if plan.status == ack::AckStatus::Sending => {
                // Leaving now: it cannot be stopped, but it is not retried.
                plan.cancel_requested = true;
                batch.put_timeline_state(Timeline::Ack, id, &serde_json::to_vec(&plan).expect("acks serialize"));
            }
            Some(_) => {}
            None => {
                // Not planned yet: mark it, so the reach stage does not plan it later.
                let cancelled = serde_json::json!({ "inquiry_id": id, "status": "cancelled" });
                batch.put_timeline_state(Timeline::Ack, id, cancelled.to_string().as_bytes());
            }
        }
        Ok(())
    }

    /// Reads, changes and writes inquiry `id`'s acknowledgement under the reach lock, so a reply
    /// that cancels it cannot interleave: `change` returns false to leave it as it is. The timer
    /// `due_ms` (the one that fired) and the old one go; a scheduled state gets its new timer.
    /// `None` when it has no acknowledgement.
    pub(crate) fn update_ack(
        &self,
        id: Uuid,
        due_ms: Option<i64>,
        change: impl FnOnce(&mut ack::AckState) -> bool,
    ) -> Result<Option<ack::AckState>, StoreError> {
        let _writes = self.next_seq.lock().expect("reach lock");
        let mut batch = self.store.batch();
        if let Some(due) = due_ms {
            batch.remove_timer(Timeline::Ack, due, id);
        }
        let state = self.store.timeline_state(Timeline::Ack, id)?;
        let Some(mut state) = state.and_then(|b| serde_json::from_slice::<ack::AckState>(&b).ok()) else {
            batch.commit()?;
            return Ok(None);
        };
        let before = state.not_before_ms;
        if change(&mut state) {
            batch.remove_timer(Timeline::Ack, before, id);
            if state.status == ack::AckStatus::Scheduled {
                batch.put_timer(Timeline::Ack, state.not_before_ms, id);
            }
            batch.put_timeline_state(Timeline::Ack, id, &serde_json::to_vec(&state).expect("acks serialize"));
        } else if state.status == ack::AckStatus::Scheduled && Some(state.not_before_ms) == due_ms {
            // Unchanged and still scheduled at the time that fired: keep its timer.
            batch.put_timer(Timeline::Ack, state.not_before_ms, id);
        }
        batch.commit()?;
        Ok(Some(state))
    }

    /// `stored`'s buyer's latest [`BUYER_LOOKBACK`] inquiries, newest first: read into `cache`
    /// the first time a rule asks.
    fn history<'a>(&self, stored: &StoredInquiry, cache: &'a mut Option<Vec<Uuid>>) -> Result<&'a [Uuid], StoreError> {
        if cache.is_none() {
            *cache = Some(self.store.latest_inquiries_of(&stored.inquiry.buyer.pseudonym, BUYER_LOOKBACK)?);
        }
        Ok(cache.as_deref().unwrap_or_default())
    }

    /// Whether `stored`'s buyer got an acknowledgement planned at or after `since_ms` in the same
    /// conversation (sent, waiting, or cancelled by an answer).
    fn acked_since(&self, stored: &StoredInquiry, history: &[Uuid], since_ms: i64) -> Result<bool, StoreError> {
        let inquiry = &stored.inquiry;
        for &id in history {
            let Some(bytes) = self.store.timeline_state(Timeline::Ack, id)? else { continue };
            let Ok(ack) = serde_json::from_slice::<ack::AckState>(&bytes) else { continue };
            // A failed one was not received (unless another replica sent it); a state of an
            // earlier version names no conversation.
            let received = match &ack.status {
                ack::AckStatus::Failed { reason } => reason == ack::CLAIMED_ELSEWHERE,
                _ => true,
            };
            if id != inquiry.id
                && received
                && ack.channel == inquiry.channel.as_str()
                && ack.account == inquiry.account
                && ack.conversation.as_deref().is_none_or(|c| c == inquiry.external.conversation_id)
                && ack.not_before_ms >= since_ms
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The inquiry whose first-response SLA still runs (unanswered, steps pending) in `stored`'s
    /// conversation, if any.
    fn running_sla_of_buyer(&self, stored: &StoredInquiry, history: &[Uuid]) -> Result<Option<Uuid>, StoreError> {
        let inquiry = &stored.inquiry;
        for &id in history {
            if id == inquiry.id {
                continue;
            }
            let Some(state) = self.load(id)? else { continue };
            if state.channel == inquiry.channel.as_str()
                && state.account == inquiry.account
                // A state of an earlier version (no `written_ms`) names no conversation.
                && (state.written_ms == 0 || state.conversation == inquiry.external.conversation_id)
                && state.replied_ms.is_none()
                && state.next_due().is_some()
            {
                return Ok(Some(state.inquiry_id));
            }
        }
        Ok(None)
    }

    /// The SLA of inquiry `id`, if it has one: its own, or the one it joined (an unreadable one is
    /// logged and treated as none).
    pub fn load(&self, id: Uuid) -> Result<Option<SlaState>, StoreError> {
        let Some(bytes) = self.store.timeline_state(Timeline::Sla, id)? else { return Ok(None) };
        if let Ok(JoinedSla { joined }) = serde_json::from_slice(&bytes) {
            return self.load_own(joined);
        }
        self.parse_state(id, &bytes)
    }

    /// Inquiry `id`'s own SLA (not one it joined).
    fn load_own(&self, id: Uuid) -> Result<Option<SlaState>, StoreError> {
        let Some(bytes) = self.store.timeline_state(Timeline::Sla, id)? else { return Ok(None) };
        if serde_json::from_slice::<JoinedSla>(&bytes).is_ok() {
            return Ok(None);
        }
        self.parse_state(id, &bytes)
    }

    fn parse_state(&self, id: Uuid, bytes: &[u8]) -> Result<Option<SlaState>, StoreError> {
        match serde_json::from_slice(bytes) {
            Ok(state) => Ok(Some(state)),
            Err(err) => {
                tracing::error!(inquiry_id = %id, error = %err, "unreadable sla state; its steps are dropped");
                Ok(None)
            }
        }
    }

    /// Queues `event` for each Kafka cluster that takes its region and, for reminders, breaches and escalations (and the
    /// start, where the team wants assignment alerts), for the alert targets of the inquiry's
    /// team, addressed to who must act.
    fn queue_event(
        &self,
        rules: &Rules,
        batch: &mut StoreBatch<'_>,
        seqs: &mut HashMap<String, u64>,
        mut event: SlaEvent,
    ) -> Result<(), StoreError> {
        counter!(telemetry::SLA_EVENTS, "kind" => event.kind.as_str(), "queue" => rules.queue_label(&event.queue))
            .increment(1);
        let team = rules.teams.get(&event.queue);
        event.notify = match (event.kind, event.level) {
            (EventKind::Escalated, 1) => team.and_then(|t| t.lead.clone()),
            (EventKind::Escalated, _) => team.and_then(|t| t.supervisor.clone()),
            _ => event.assignee.clone(),
        };
        let payload = serde_json::to_vec(&event).expect("events serialize");
        for (queue, regions, location) in &self.kafka_queues {
            if crate::spool::region_allows(regions, *location, event.residency_region()) {
                let seq = self.next(seqs, queue)?;
                batch.put_queued(queue, seq, &payload);
            }
        }
        let assigned = event.kind == EventKind::Started && team.is_some_and(|t| t.alert_on_assignment);
        if event.kind.alerts() || assigned {
            for target in team.map(|t| t.alert_targets.as_slice()).unwrap_or_default() {
                let queue = alert_queue(target);
                let seq = self.next(seqs, &queue)?;
                batch.put_queued(&queue, seq, &payload);
            }
        }
        Ok(())
    }

    fn next(&self, seqs: &mut HashMap<String, u64>, queue: &str) -> Result<u64, StoreError> {
        let next = match seqs.get(queue) {
            Some(next) => *next,
            None => self.store.last_queued(queue)?.map_or(0, |last| last + 1),
        };
        seqs.insert(queue.to_owned(), next + 1);
        Ok(next)
    }
}

/// Removes what reach-out keeps of inquiry `id` (its SLA, its acknowledgement and their
/// timers) in `batch`: the retention sweeper calls it with the inquiry's removal.
pub fn forget(store: &Store, batch: &mut StoreBatch<'_>, id: Uuid) -> Result<(), StoreError> {
    if let Some(bytes) = store.timeline_state(Timeline::Sla, id)? {
        if let Some(due) = serde_json::from_slice::<SlaState>(&bytes).ok().and_then(|s| s.next_due()) {
            batch.remove_timer(Timeline::Sla, due, id);
        }
        batch.remove_timeline_state(Timeline::Sla, id);
    }
    if let Some(bytes) = store.timeline_state(Timeline::Ack, id)? {
        if let Ok(plan) = serde_json::from_slice::<ack::AckState>(&bytes) {
            batch.remove_timer(Timeline::Ack, plan.not_before_ms, id);
        }
        batch.remove_timeline_state(Timeline::Ack, id);
    }
    Ok(())
}

/// The queue of alert target `id`.
pub fn alert_queue(id: &str) -> String {
    format!("alert/{id}")
}

/// Fires SLA steps when they are due, until `stop` fires.
pub async fn run_timers(reach: Arc<Reach>, store: Store, mut stop: watch::Receiver<()>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let fired = {
            let (reach, store) = (reach.clone(), store.clone());
            tokio::task::spawn_blocking(move || {
                let fired = reach.fire_due()?;
                // The gauge walks the partition: off the async workers, with the firing.
                gauge!(telemetry::SLA_OPEN).set(store.timer_count(Timeline::Sla)? as f64);
                Ok::<_, StoreError>(fired)
            })
            .await
        };
        match fired.unwrap_or_else(|e| Err(StoreError::from_message(&e.to_string()))) {
            Ok(_) => backoff.reset(),
            Err(err) => {
                tracing::error!(error = %err, "sla timers could not fire; retrying");
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
                continue;
            }
        }
        // Sleep until the next timer (at most a second: the clock, not an event, makes steps due).
        let now = reach.clock.now_ms();
        let next = store.next_due(Timeline::Sla).ok().flatten().map_or(1000, |due| (due - now).clamp(0, 1000));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(next as u64)) => {}
            _ = reach.timers_changed.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Delivers queue `queue` in order, `batch` events at a time, with `send`, until `stop` fires;
/// an event leaves the queue once sent (after a crash, a few may be sent again: receivers drop
/// repeats by `event_id`). A refused delivery is tried again with half as many events (a chat bot
/// refuses a message over its size, 2,048 bytes for WeCom: the same batch would be refused for
/// ever and hold every later alert back), growing by one with each that goes through, up to
/// `batch`. One event refused on its own still waits (the target may only be down).
pub async fn deliver_queue<F>(
    reach: Arc<Reach>,
    store: Store,
    queue: String,
    batch: usize,
    mut stop: watch::Receiver<()>,
    send: F,
) where
    F: Fn(Vec<SlaEvent>) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(60));
    let mut size = batch.max(1);
    loop {
        let queued = reach.queued.notified();
        let items = match store.queued(&queue, size) {
            Ok(items) => items,
            Err(err) => {
                tracing::error!(queue = %queue, error = %err, "reach queue unreadable");
                if sleep_or_stop(backoff.next(), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        if items.is_empty() {
            tokio::select! {
                _ = queued => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let mut events = Vec::with_capacity(items.len());
        for (seq, bytes) in &items {
            match serde_json::from_slice::<SlaEvent>(bytes) {
                Ok(event) => events.push(event),
                Err(err) => tracing::error!(queue = %queue, seq, error = %err, "unreadable queued event; dropped"),
            }
        }
        let sent = if events.is_empty() { Ok(()) } else { send(events).await };
        match sent {
            Ok(()) => {
                backoff.reset();
                // One more each time one goes through (a size the target refused is not tried
                // again at once); back to `batch` after as many.
                size = (size + 1).min(batch.max(1));
                let mut done = store.batch();
                for (seq, _) in &items {
                    done.remove_queued(&queue, *seq);
                }
                if let Err(err) = done.write() {
                    // Not removed: they would be sent again at once; wait first.
                    tracing::warn!(queue = %queue, error = %err, "sent events not removed; they may be sent again");
                    if sleep_or_stop(backoff.next(), &mut stop).await {
                        return;
                    }
                }
            }
            Err(err) => {
                let delay = backoff.next();
                size = (items.len() / 2).max(1);
                tracing::warn!(queue = %queue, error = %err, delay_ms = delay.as_millis() as u64, "delivery failed; retrying");
                if sleep_or_stop(delay, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// The reach stage as a consumer of the spool: starts the SLAs of stored inquiries.
pub struct ReachSink {
    reach: Arc<Reach>,
}

impl ReachSink {
    /// The stage for `reach`.
    pub fn new(reach: Arc<Reach>) -> ReachSink {
        ReachSink { reach }
    }
}

impl Sink for ReachSink {
    fn name(&self) -> &'static str {
        "reach"
    }

    fn regions(&self) -> &[inquiry_connectors::Region] {
        &[inquiry_connectors::Region::Eu, inquiry_connectors::Region::Other]
    }

    fn location(&self) -> inquiry_connectors::Region {
        // On this machine, in the embedded store: wherever the gateway runs.
        inquiry_connectors::Region::Eu
    }

    fn hop(&self) -> crate::telemetry::Hop {
        crate::telemetry::Hop::Reach
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        async { Ok(()) }.boxed()
    }

    fn deliver<'a>(&'a self, records: &'a [OutRecord]) -> BoxFuture<'a, Vec<Delivery>> {
        async move {
            let outcome = tokio::task::block_in_place(|| self.reach.schedule(records));
            let delivery = match outcome {
                Ok(_) => Delivery::Delivered,
                Err(err) => Delivery::Retry { detail: err.to_string() },
            };
            vec![delivery; records.len()]
        }
        .boxed()
    }

    fn batch_size(&self) -> usize {
        FIRE_BATCH
    }

    fn erase<'a>(&'a self, _pseudonym: &'a str, _records: &'a [StoredInquiry]) -> BoxFuture<'a, Result<(), String>> {
        // SLA states and events hold ids, labels and times: no personal data to remove.
        async { Ok(()) }.boxed()
    }

    fn takes_audit(&self) -> bool {
        false
    }

    fn deliver_audit<'a>(&'a self, _entries: &'a [AuditRecord]) -> BoxFuture<'a, Result<(), String>> {
        async { Ok(()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use inquiry_connectors::{generic, NormalizeContext};
    use time::OffsetDateTime;

    use super::*;

    /// The main Kafka cluster's queue, for both regions.
    fn all_regions_to_kafka() -> Vec<KafkaQueue> {
        use inquiry_connectors::Region;
        vec![(KAFKA_QUEUE.to_owned(), vec![Region::Eu, Region::Other], Region::Eu)]
    }
    use crate::pipeline::StoredInquiry;
    use crate::routing::{Decision, Disposition, Priority};

    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// 2026-12-02T10:00:00Z, a Wednesday.
    const T0: i64 = 1_796_205_600_000;
    const MIN: i64 = 60_000;

    const CONFIG: &str = r#"
        [[sla_policies]]
        id = "standard"
        first_response = "60m"
        reminders = ["30m", "10m"]
        escalate_after = ["0s", "30m"]
        [[sla_policies]]
        id = "office"
        first_response = "2h"
        reminders = ["90m"]
        escalate_after = ["1h"]
        calendar = "berlin"
        [[sla_rules]]
        queue = "sales"
        policy = "standard"
        [[calendars]]
        id = "berlin"
        time_zone = "Europe/Berlin"
        [calendars.hours]
        mon = ["09:00-17:00"]
        tue = ["09:00-17:00"]
        wed = ["09:00-17:00"]
        thu = ["09:00-17:00"]
        fri = ["09:00-17:00"]
        [[teams]]
        queue = "sales"
        lead = "lead-li"
        supervisor = "boss-wang"
        alert_targets = ["ops"]
        [[alert_targets]]
        id = "ops"
        kind = "webhook"
        url = "http://127.0.0.1:1/alerts"
        secret = "0123456789abcdef"
    "#;

    fn reach(store: &Store, clock: &Arc<ManualClock>) -> Reach {
        let config: ReachConfig = toml::from_str(CONFIG).unwrap();
        Reach::new(&config, store.clone(), all_regions_to_kafka(), clock.clone()).unwrap()
    }

    fn record(seq: u64, received_ms: i64, queue: &str, sla_policy: Option<&str>) -> OutRecord {
        buyer_record(seq, received_ms, queue, sla_policy, serde_json::json!({ "email": "anna@example.com" }))
    }

    fn buyer_record(
        seq: u64,
        received_ms: i64,
        queue: &str,
        sla_policy: Option<&str>,
        buyer: serde_json::Value,
    ) -> OutRecord {
        message(seq, received_ms, queue, sla_policy, serde_json::json!({ "buyer": buyer }), "")
    }

    /// A stored message: the generic API's fields overridden by `fields`, the buyer `pseudonym`.
    fn message(
        seq: u64,
        received_ms: i64,
        queue: &str,
        sla_policy: Option<&str>,
        fields: serde_json::Value,
        pseudonym: &str,
    ) -> OutRecord {
        let mut raw = serde_json::json!({
            "channel": "generic", "account": "shop-1", "external_id": format!("m-{seq}"), "conversation_id": "chat",
            "buyer": { "email": "anna@example.com" }, "body": "hello", "occurred_at": "2026-12-02T09:59:00Z",
        });
        for (field, value) in fields.as_object().unwrap() {
            raw[field] = value.clone();
        }
        let raw = raw.to_string();
        let received_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(received_ms) * 1_000_000).unwrap();
        let ctx = NormalizeContext { received_at, trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" };
        let mut inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
        inquiry.buyer.pseudonym = pseudonym.to_owned();
        let decision = Decision {
            disposition: Disposition::Deliver,
            queue: queue.to_owned(),
            assignee: Some("agent-ana".to_owned()),
            priority: Priority::High,
            tags: Vec::new(),
            language: None,
            reply_template: None,
            sla_policy: sla_policy.map(str::to_owned),
            decided_by: "fallback".to_owned(),
            fallback_reason: None,
        };
        let stored = StoredInquiry { inquiry, decision };
        let json = serde_json::to_vec(&stored).unwrap();
        OutRecord::new(seq, stored, json)
    }

    #[tokio::test]
    async fn a_batch_the_target_refuses_as_too_large_is_delivered_in_smaller_ones() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let engine = Arc::new(Reach::new(&config_with_acks(""), store.clone(), all_regions_to_kafka(), clock).unwrap());
        let mut batch = store.batch();
        for seq in 0..10u64 {
            let event = SlaEvent {
                event_id: Uuid::from_u128(u128::from(seq) + 1),
                ..sla::sample_event(EventKind::Breached, None)
            };
            batch.put_queued("bot", seq, &serde_json::to_vec(&event).unwrap());
        }
        batch.commit().unwrap();
        // The bot takes at most 3 events a message (more is over its size limit).
        let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop_tx, stop) = watch::channel(());
        let sent = delivered.clone();
        let send = move |events: Vec<SlaEvent>| -> BoxFuture<'static, Result<(), String>> {
            let sent = sent.clone();
            Box::pin(async move {
                if events.len() > 3 {
                    return Err("errcode 40058: content exceeds max length".to_owned());
                }
                sent.lock().unwrap().push(events.len());
                Ok(())
            })
        };
        let task = tokio::spawn(deliver_queue(engine, store.clone(), "bot".to_owned(), 8, stop, send));
        for _ in 0..200 {
            if delivered.lock().unwrap().iter().sum::<usize>() == 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop_tx.send(());
        task.await.unwrap();
        let sizes = delivered.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 10, "every event delivered: {sizes:?}");
        assert!(sizes.iter().all(|n| *n <= 3), "{sizes:?}");
        assert!(store.queued("bot", 100).unwrap().is_empty());
    }

    fn queued(store: &Store, queue: &str) -> Vec<SlaEvent> {
        store.queued(queue, 1000).unwrap().into_iter().map(|(_, b)| serde_json::from_slice(&b).unwrap()).collect()
    }

    fn kinds(events: &[SlaEvent]) -> Vec<(&'static str, Option<String>)> {
        events.iter().map(|e| (e.kind.as_str(), e.notify.clone())).collect()
    }

    #[test]
    fn steps_fire_once_each_in_order_and_exactly_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let engine = reach(&store, &clock);
        let sales = record(1, T0, "sales", None);
        assert_eq!(engine.schedule(std::slice::from_ref(&sales)).unwrap(), 1);
        assert_eq!(engine.schedule(&[sales]).unwrap(), 0, "delivered again: the SLA is not restarted");
        assert_eq!(engine.schedule(&[record(2, T0, "other", None)]).unwrap(), 0, "no rule, no SLA");

        clock.0.store(T0 + 29 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 0, "nothing due before the first reminder");
        clock.0.store(T0 + 30 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 1, "the 30-minute reminder");
        assert_eq!(engine.fire_due().unwrap(), 0, "fired once");

        // Restart: the engine and the store are opened again; nothing fires twice.
        drop(engine);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let engine = reach(&store, &clock);
        assert_eq!(engine.fire_due().unwrap(), 0, "the reminder fired before the restart");
        // Down for an hour: everything due meanwhile fires once, in order.
        clock.0.store(T0 + 61 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 3, "second reminder, breach, level-1 escalation");
        clock.0.store(T0 + 95 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 1, "level-2 escalation");
        assert_eq!(engine.fire_due().unwrap(), 0);
        assert_eq!(store.next_due(Timeline::Sla).unwrap(), None, "no step left");

        let all = queued(&store, KAFKA_QUEUE);
        let agent = Some("agent-ana".to_owned());
        assert_eq!(
            kinds(&all),
            [
                ("sla.started", agent.clone()),
                ("sla.reminder", agent.clone()),
                ("sla.reminder", agent.clone()),
                ("sla.breached", agent),
                ("sla.escalated", Some("lead-li".to_owned())),
                ("sla.escalated", Some("boss-wang".to_owned())),
            ]
        );
        let ids: std::collections::HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), all.len(), "every event has its own id");
        assert_eq!(all[3].deadline, "2026-12-02T11:00:00Z");
        // Alerts: reminders, breach and escalations; not the start.
        assert_eq!(queued(&store, &alert_queue("ops")).len(), 5);
    }

    /// A message of the buyer `pseudonym` received at `received_ms` (the generic API's fields
    /// overridden by `fields`), kept as the pipeline keeps it: stored and linked to its buyer.
    fn kept(store: &Store, seq: u64, received_ms: i64, fields: serde_json::Value, pseudonym: &str) -> OutRecord {
        let record = message(seq, received_ms, "sales", None, fields, pseudonym);
        let mut batch = store.batch();
        batch.put_inquiry(record.id(), record.json(), b"");
        batch.link_inquiry(pseudonym, record.id());
        batch.commit().unwrap();
        record
    }

    /// [`CONFIG`] with WhatsApp acknowledgements.
    fn config_with_acks(extra: &str) -> ReachConfig {
        let acks = "[[templates]]\nid = \"ack\"\nversion = 1\nlanguage = \"en\"\nbody = \"Thanks\"\n\
                    [[ack_rules]]\ntemplate = \"ack\"\n[[senders]]\nkind = \"whatsapp\"\naccess_token = \"t\"\n";
        toml::from_str(&format!("{extra}\n{CONFIG}\n{acks}")).unwrap()
    }

    #[test]
    fn an_acknowledgement_whose_waits_reach_the_buyers_quiet_hours_is_held_until_they_end() {
        use super::send::{mark_leaving, Leaving};
        let dir = tempfile::tempdir().unwrap();
        // 19:59:30 UTC: 20:59:30 in Germany (CET), half a minute before its quiet hours.
        let evening = T0 + 9 * 60 * MIN + 59 * MIN + 30_000;
        let clock = Arc::new(ManualClock(AtomicI64::new(evening)));
        let store = Store::open(dir.path()).unwrap();
        let config = config_with_acks("quiet_hours = \"21:00-08:00\"");
        let engine = Reach::new(&config, store.clone(), all_regions_to_kafka(), clock.clone()).unwrap();
        let german = |seq: u64, pseudonym: &str| {
            let buyer = serde_json::json!({ "email": format!("{pseudonym}@example.com"), "country": "DE" });
            let fields = serde_json::json!({ "channel": "whatsapp", "buyer": buyer });
            kept(&store, seq, clock.now_ms(), fields, pseudonym)
        };
        let state = |id: Uuid| {
            serde_json::from_slice::<ack::AckState>(&store.timeline_state(Timeline::Ack, id).unwrap().unwrap()).unwrap()
        };
        let (early, late, answered) = (german(1, "bp_anna"), german(2, "bp_bo"), german(3, "bp_cem"));
        assert_eq!(engine.schedule(&[early.clone(), late.clone(), answered.clone()]).unwrap(), 3);
        let rendered = |id: Uuid| engine.acks().render(&state(id), &HashMap::new()).unwrap();
        let due = |id: Uuid| state(id).not_before_ms;
        assert!(due(late.id()) < T0 + 10 * 60 * MIN, "planned before the quiet hours");

        // Checked before its waits, it leaves at once.
        let leaving = mark_leaving(&engine, early.id(), due(early.id()), Some("DE"), &rendered(early.id())).unwrap();
        let Leaving::Now(marked) = leaving else { panic!("{leaving:?}") };
        assert_eq!((marked.status, marked.attempts), (ack::AckStatus::Sending, 1));

        // The other waited for its turn (the buyer's pause, the account's rate) past 21:00.
        clock.0.store(evening + 35_000, Ordering::SeqCst);
        let (planned, message) = (due(late.id()), rendered(late.id()));
        let leaving = mark_leaving(&engine, late.id(), planned, Some("DE"), &message).unwrap();
        // 08:00 in Germany the next morning: 07:00 UTC.
        let morning = T0 + 21 * 60 * MIN;
        assert!(matches!(leaving, Leaving::HeldUntil(at) if at == morning), "{leaving:?}");
        let held = state(late.id());
        assert_eq!((held.status, held.attempts, held.not_before_ms), (ack::AckStatus::Scheduled, 0, morning));
        let timers = store.due_timers(Timeline::Ack, morning, 10).unwrap();
        assert_eq!(timers, vec![(planned, answered.id()), (morning, late.id())], "its timer moved to the morning");

        // In the morning it leaves; one a reply cancelled meanwhile does not.
        engine.reply(answered.stored(), evening + 20_000).unwrap();
        clock.0.store(morning, Ordering::SeqCst);
        let leaving = mark_leaving(&engine, late.id(), morning, Some("DE"), &message).unwrap();
        assert!(matches!(leaving, Leaving::Now(_)), "{leaving:?}");
        let message = rendered(answered.id());
        let leaving = mark_leaving(&engine, answered.id(), planned, Some("DE"), &message).unwrap();
        assert!(matches!(leaving, Leaving::NotScheduled), "{leaving:?}");
        assert_eq!(store.next_due(Timeline::Ack).unwrap(), None, "no timer left");
    }

    #[test]
    fn a_buyers_repeat_messages_get_one_acknowledgement_and_join_the_running_sla() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let engine = Reach::new(&config_with_acks(""), store.clone(), all_regions_to_kafka(), clock.clone()).unwrap();
        let stored = |seq: u64, channel: &str, pseudonym: &str| {
            kept(&store, seq, clock.now_ms(), serde_json::json!({ "channel": channel }), pseudonym)
        };
        let acked = |record: &OutRecord| store.timeline_state(Timeline::Ack, record.id()).unwrap().is_some();
        let started = || queued(&store, KAFKA_QUEUE).iter().filter(|e| e.kind == EventKind::Started).count();

        let first = stored(1, "whatsapp", "bp_anna");
        assert_eq!(engine.schedule(std::slice::from_ref(&first)).unwrap(), 1);
        assert!(acked(&first));
        clock.0.store(T0 + 5 * MIN, Ordering::SeqCst);
        let second = stored(2, "whatsapp", "bp_anna");
        assert_eq!(engine.schedule(std::slice::from_ref(&second)).unwrap(), 0, "joins the running SLA");
        assert!(!acked(&second), "acknowledged 5 minutes ago: not again");
        assert_eq!(engine.load(second.id()).unwrap().unwrap().inquiry_id, first.id(), "its SLA is the first one's");
        assert_eq!(started(), 1);
        // Two messages of another buyer in one batch; the first buyer on another channel.
        let (bo1, bo2) = (stored(3, "whatsapp", "bp_bo"), stored(4, "whatsapp", "bp_bo"));
        let telegram = stored(5, "telegram", "bp_anna");
        assert_eq!(engine.schedule(&[bo1.clone(), bo2.clone(), telegram.clone()]).unwrap(), 2);
        assert!(acked(&bo1) && !acked(&bo2));
        assert_eq!(engine.load(bo2.id()).unwrap().unwrap().inquiry_id, bo1.id());
        assert_eq!(engine.load(telegram.id()).unwrap().unwrap().inquiry_id, telegram.id(), "another conversation");
        // The same buyer in another thread of the same channel (an eBay question, an e-mail
        // thread): a conversation of its own.
        let fields = serde_json::json!({ "channel": "whatsapp", "conversation_id": "another-thread" });
        let thread = kept(&store, 8, clock.now_ms(), fields, "bp_anna");
        assert_eq!(engine.schedule(std::slice::from_ref(&thread)).unwrap(), 1);
        assert!(acked(&thread));

        // An answer to the later message answers the buyer: the one clock stops, once.
        let outcome = engine.reply(second.stored(), T0 + 10 * MIN).unwrap();
        assert!(
            matches!(outcome, ReplyOutcome::Recorded(ref s) if s.inquiry_id == first.id() && s.status == Status::Met)
        );
        assert_eq!(engine.load(first.id()).unwrap().unwrap().status, Status::Met);
        let met: Vec<Uuid> =
            queued(&store, KAFKA_QUEUE).iter().filter(|e| e.kind == EventKind::Met).map(|e| e.inquiry_id).collect();
        assert_eq!(met, [first.id()]);
        assert!(matches!(engine.reply(first.stored(), T0 + 11 * MIN).unwrap(), ReplyOutcome::Unchanged(_)));
        // No reminder of the answered conversation fires; the other buyer's does.
        clock.0.store(T0 + 45 * MIN, Ordering::SeqCst);
        engine.fire_due().unwrap();
        let reminded: HashSet<Uuid> = queued(&store, KAFKA_QUEUE)
            .iter()
            .filter(|e| e.kind == EventKind::Reminder)
            .map(|e| e.inquiry_id)
            .collect();
        assert_eq!(reminded, HashSet::from([bo1.id(), telegram.id(), thread.id()]));

        // A poller reads two messages late, the second written after the shop's answer to the
        // first: the answer does not answer it, it gets its own SLA.
        let written = |minutes: i64| {
            let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(T0 + minutes * MIN) * 1_000_000).unwrap();
            at.format(&time::format_description::well_known::Rfc3339).unwrap()
        };
        let written_by = |seq: u64, minutes: i64, pseudonym: &str| {
            let fields = serde_json::json!({ "channel": "whatsapp", "occurred_at": written(minutes) });
            kept(&store, seq, clock.now_ms(), fields, pseudonym)
        };
        let late = |seq: u64, minutes: i64| written_by(seq, minutes, "bp_carl");
        let (asked, asked_again, asked_thrice) = (late(10, 1), late(11, 20), late(13, 25));
        // A poll page lists the newest first: the earliest message still holds the SLA.
        let page = [asked_thrice.clone(), asked_again.clone(), asked.clone()];
        assert_eq!(engine.schedule(&page).unwrap(), 1);
        assert_eq!(engine.load(asked_again.id()).unwrap().unwrap().inquiry_id, asked.id());
        let started_before = started();
        assert!(matches!(engine.reply(asked.stored(), T0 + 10 * MIN).unwrap(), ReplyOutcome::Recorded(_)));
        let own = engine.load(asked_again.id()).unwrap().unwrap();
        assert_eq!((own.inquiry_id, own.status), (asked_again.id(), Status::Open), "split off, still waiting");
        assert_eq!(engine.load(asked_thrice.id()).unwrap().unwrap().inquiry_id, asked_again.id(), "one new SLA");
        assert_eq!(started(), started_before + 1);
        assert!(engine.load(asked.id()).unwrap().unwrap().joined.is_empty());

        // A reply to a joined message with a time before it was written (a CRM's clock): that
        // message is answered all the same, never split off.
        let (dave1, dave2) = (written_by(20, 0, "bp_dave"), written_by(21, 30, "bp_dave"));
        assert_eq!(engine.schedule(&[dave1.clone(), dave2.clone()]).unwrap(), 1);
        let answered = engine.reply(dave2.stored(), T0 + 5 * MIN).unwrap();
        assert!(matches!(answered, ReplyOutcome::Recorded(ref s) if s.inquiry_id == dave1.id()));
        assert_eq!(engine.load(dave2.id()).unwrap().unwrap().status, Status::Met, "not split off");
        assert!(matches!(engine.reply(dave2.stored(), T0 + 6 * MIN).unwrap(), ReplyOutcome::Unchanged(_)));
        // A message the buyer wrote before the one holding the running SLA, read later still:
        // the holder's answer might come before it, so it does not join.
        let earlier = late(12, -30);
        assert_eq!(engine.schedule(std::slice::from_ref(&earlier)).unwrap(), 1, "its own SLA");

        // Answered: the buyer's next message starts a new SLA, but is not acknowledged again
        // within the day; after it, it is.
        let third = stored(6, "whatsapp", "bp_anna");
        assert_eq!(engine.schedule(std::slice::from_ref(&third)).unwrap(), 1, "nothing runs: a new SLA");
        assert!(!acked(&third));
        clock.0.store(T0 + 25 * 60 * MIN, Ordering::SeqCst);
        let next_day = stored(7, "whatsapp", "bp_anna");
        engine.schedule(std::slice::from_ref(&next_day)).unwrap();
        assert!(acked(&next_day), "a day later: acknowledged again");
    }

    #[test]
    fn an_answer_cancels_the_waiting_acknowledgements_of_every_message_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        // Every message acknowledged, one SLA: three acknowledgements wait, one answer.
        let config = config_with_acks("ack_repeat_window = \"0s\"");
        let engine = Reach::new(&config, store.clone(), all_regions_to_kafka(), clock.clone()).unwrap();
        let records: Vec<OutRecord> =
            (1..=3).map(|seq| kept(&store, seq, T0, serde_json::json!({ "channel": "whatsapp" }), "bp_eve")).collect();
        assert_eq!(engine.schedule(&records).unwrap(), 1);
        engine.reply(records[1].stored(), T0 + MIN).unwrap();
        for record in &records {
            let bytes = store.timeline_state(Timeline::Ack, record.id()).unwrap().unwrap();
            let ack: ack::AckState = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(ack.status, ack::AckStatus::Cancelled, "{}", record.id());
        }
    }

    #[test]
    fn a_failed_acknowledgement_does_not_count_unless_another_replica_sent_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let engine = Reach::new(&config_with_acks(""), store.clone(), all_regions_to_kafka(), clock.clone()).unwrap();
        let stored =
            |seq: u64, pseudonym: &str| kept(&store, seq, T0, serde_json::json!({ "channel": "whatsapp" }), pseudonym);
        let acked = |record: &OutRecord| store.timeline_state(Timeline::Ack, record.id()).unwrap().is_some();
        for (buyer, reason, acked_again) in
            [("bp_failed", "no template", true), ("bp_claimed", ack::CLAIMED_ELSEWHERE, false)]
        {
            let first = stored(if acked_again { 1 } else { 3 }, buyer);
            engine.schedule(std::slice::from_ref(&first)).unwrap();
            engine
                .update_ack(first.id(), None, |state| {
                    state.status = ack::AckStatus::Failed { reason: reason.to_owned() };
                    true
                })
                .unwrap();
            let again = stored(if acked_again { 2 } else { 4 }, buyer);
            engine.schedule(std::slice::from_ref(&again)).unwrap();
            assert_eq!(acked(&again), acked_again, "{reason}");
            // Sent by the other replica: the shop's first message answering it is that
            // acknowledgement, not the seller's answer; a failure of its own sent nothing.
            let seen = engine.ack_seen_as(first.id()).unwrap();
            let expected = if acked_again { AckSeenAs::Nothing } else { AckSeenAs::FirstAfterMessage };
            assert_eq!(seen, expected, "{reason}");
            // Once a poll cycle took a shop message for it, it is known by that message's id.
            if !acked_again {
                engine
                    .update_ack(first.id(), None, |state| {
                        state.seen_as = Some("m-9".to_owned());
                        true
                    })
                    .unwrap();
                assert_eq!(engine.ack_seen_as(first.id()).unwrap(), AckSeenAs::Id("m-9".to_owned()));
            }
        }
    }

    #[test]
    fn with_the_repeat_rules_off_every_message_gets_its_own_acknowledgement_and_sla() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let config = config_with_acks("ack_repeat_window = \"0s\"\nsla_per_buyer = false");
        let engine = Reach::new(&config, store.clone(), all_regions_to_kafka(), clock.clone()).unwrap();
        let records: Vec<OutRecord> =
            (1..=2).map(|seq| kept(&store, seq, T0, serde_json::json!({ "channel": "whatsapp" }), "bp_anna")).collect();
        assert_eq!(engine.schedule(&records).unwrap(), 2);
        for record in &records {
            assert!(store.timeline_state(Timeline::Ack, record.id()).unwrap().is_some());
            assert_eq!(engine.load(record.id()).unwrap().unwrap().inquiry_id, record.id());
        }
    }

    #[test]
    fn only_the_queues_the_config_names_become_metric_labels() {
        let mut config: ReachConfig = toml::from_str(CONFIG).unwrap();
        let rules = Rules::from_config(&config).unwrap();
        assert_eq!(rules.queue_label("sales"), "sales", "a team's queue");
        assert_eq!(rules.queue_label("vip-from-a-plugin"), "other", "a plugin's own queue");
        config.sla_rules[0].queue = Some("returns".to_owned());
        assert_eq!(Rules::from_config(&config).unwrap().queue_label("returns"), "returns", "an SLA rule's queue");
    }

    #[test]
    fn sla_events_reach_exactly_the_kafka_clusters_their_inquiry_reaches() {
        use inquiry_connectors::Region::{Eu, Other};
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let config: ReachConfig = toml::from_str(CONFIG).unwrap();
        // The unusual layout too: a cluster in the EU that takes only `other`.
        let clusters: Vec<KafkaQueue> = vec![
            ("kafka".to_owned(), vec![Eu], Eu),
            ("kafka-eu-other".to_owned(), vec![Other], Eu),
            ("kafka-us".to_owned(), vec![Other], Other),
        ];
        let engine = Reach::new(&config, store.clone(), clusters.clone(), clock.clone()).unwrap();
        let buyers = [
            (serde_json::json!({ "email": "anna@example.com" }), ["kafka", "kafka-eu-other"].as_slice()),
            (serde_json::json!({ "email": "bo@example.com", "country": "US" }), &["kafka-eu-other", "kafka-us"]),
            (serde_json::json!({ "email": "cy@example.com", "country": "DE" }), &["kafka"]),
        ];
        for (seq, (buyer, expected)) in buyers.into_iter().enumerate() {
            let record = buyer_record(seq as u64 + 1, T0, "sales", None, buyer);
            let inquiry = record.stored().inquiry.clone();
            let before: Vec<usize> = clusters.iter().map(|(q, _, _)| queued(&store, q).len()).collect();
            assert_eq!(engine.schedule(&[record]).unwrap(), 1);
            let reached: Vec<&str> = clusters
                .iter()
                .zip(before)
                .filter(|((queue, _, _), before)| queued(&store, queue).len() > *before)
                .map(|((queue, _, _), _)| queue.as_str())
                .collect();
            assert_eq!(reached, expected, "country {:?}", inquiry.buyer.country);
            let inquiry_reached: Vec<&str> = clusters
                .iter()
                .filter(|(_, regions, location)| crate::spool::residency_allows(regions, *location, &inquiry))
                .map(|(queue, _, _)| queue.as_str())
                .collect();
            assert_eq!(reached, inquiry_reached, "the events go where the inquiry went");
        }
        let unknown = &queued(&store, "kafka-eu-other")[0];
        assert_eq!(unknown.region, Eu, "an unknown country is published as EU data");
        assert!(!serde_json::to_string(unknown).unwrap().contains("country_unknown"), "never published");
    }

    #[test]
    fn a_team_that_asks_for_it_is_alerted_when_an_inquiry_is_assigned() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let mut config: ReachConfig = toml::from_str(CONFIG).unwrap();
        config.teams[0].alert_on_assignment = true;
        let engine = Reach::new(&config, store.clone(), all_regions_to_kafka(), clock.clone()).unwrap();
        assert_eq!(engine.schedule(&[record(1, T0, "sales", None)]).unwrap(), 1);
        let alerts = queued(&store, &alert_queue("ops"));
        assert_eq!(kinds(&alerts), [("sla.started", Some("agent-ana".to_owned()))]);
        assert_eq!(alerts[0].deadline, "2026-12-02T11:00:00Z");
        clock.0.store(T0 + 30 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 1);
        assert_eq!(queued(&store, &alert_queue("ops")).len(), 2, "and the reminders as before");
    }

    #[test]
    fn a_reply_stops_the_clock_and_says_whether_it_was_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let engine = reach(&store, &clock);
        let (early, late) = (record(1, T0, "sales", None), record(2, T0, "sales", None));
        engine.schedule(&[early.clone(), late.clone()]).unwrap();

        clock.0.store(T0 + 20 * MIN, Ordering::SeqCst);
        // The preview (what callers audit first) says what the reply will do and writes nothing.
        let preview = engine.preview_reply(early.stored(), T0 + 20 * MIN).unwrap();
        assert_eq!(engine.preview_reply(early.stored(), T0 + 20 * MIN).unwrap(), preview, "nothing was written");
        assert!(engine.load(early.id()).unwrap().is_some_and(|sla| sla.replied_ms.is_none()), "still open");
        let ReplyOutcome::Recorded(state) = engine.reply(early.stored(), T0 + 20 * MIN).unwrap() else { panic!() };
        assert_eq!(preview, ReplyOutcome::Recorded(state.clone()), "the preview is what the reply did");
        assert_eq!(state.status, Status::Met);
        assert!(state.pending.is_empty());
        let again = engine.reply(early.stored(), T0 + 25 * MIN).unwrap();
        assert_eq!(again, ReplyOutcome::Unchanged(state), "a second reply changes nothing");

        clock.0.store(T0 + 70 * MIN, Ordering::SeqCst);
        engine.fire_due().unwrap();
        let ReplyOutcome::Recorded(state) = engine.reply(late.stored(), T0 + 70 * MIN).unwrap() else { panic!() };
        assert_eq!(state.status, Status::RepliedLate);
        clock.0.store(T0 + 200 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 0, "the reply cancelled the level-2 escalation");

        let of = |id: Uuid| -> Vec<&'static str> {
            queued(&store, KAFKA_QUEUE).iter().filter(|e| e.inquiry_id == id).map(|e| e.kind.as_str()).collect()
        };
        assert_eq!(of(early.id()), ["sla.started", "sla.met"], "no reminder after the reply");
        assert_eq!(
            of(late.id()),
            ["sla.started", "sla.reminder", "sla.reminder", "sla.breached", "sla.escalated", "sla.replied_late"]
        );
        // A reply given before the deadline but recorded after the breach fired (a slow CRM) is
        // met: the preview the caller audits and the record agree, whichever timer fired between.
        let slow = record(5, T0, "sales", None);
        engine.schedule(std::slice::from_ref(&slow)).unwrap();
        engine.fire_due().unwrap();
        assert_eq!(engine.load(slow.id()).unwrap().unwrap().status, Status::Breached);
        let ReplyOutcome::Recorded(state) = engine.reply(slow.stored(), T0 + 50 * MIN).unwrap() else { panic!() };
        assert_eq!(state.status, Status::Met);
        assert_eq!(engine.reply(record(3, T0, "other", None).stored(), T0).unwrap(), ReplyOutcome::NoSla);
        assert_eq!(
            engine.preview_reply(early.stored(), T0 + 30 * MIN).unwrap(),
            ReplyOutcome::Unchanged(Box::new(engine.load(early.id()).unwrap().unwrap()))
        );

        // Answered before the reach stage took it: the SLA starts closed and never reminds.
        let quick = record(4, T0 + 200 * MIN, "sales", None);
        let ReplyOutcome::Recorded(state) = engine.reply(quick.stored(), T0 + 201 * MIN).unwrap() else { panic!() };
        assert_eq!(state.status, Status::Met);
        assert_eq!(engine.schedule(std::slice::from_ref(&quick)).unwrap(), 0, "taken later: already closed");
        clock.0.store(T0 + 400 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 0);
        assert_eq!(of(quick.id()), ["sla.started", "sla.met"]);
    }

    #[test]
    fn business_hours_move_the_deadline_and_the_decision_picks_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        // Friday 2026-12-04 15:00 UTC = 16:00 in Berlin: one office hour left that day.
        let friday = T0 + 2 * 24 * 60 * MIN + 5 * 60 * MIN;
        let clock = Arc::new(ManualClock(AtomicI64::new(friday)));
        let store = Store::open(dir.path()).unwrap();
        let engine = reach(&store, &clock);
        let office = record(1, friday, "other", Some("office"));
        engine.schedule(std::slice::from_ref(&office)).unwrap();
        let state = engine.load(office.id()).unwrap().unwrap();
        assert_eq!(state.policy, "office", "the routing decision names the policy");
        // One hour on Friday, the second on Monday from 09:00 Berlin (08:00 UTC).
        assert_eq!(sla::SlaEvent::clone(&queued(&store, KAFKA_QUEUE)[0]).deadline, "2026-12-07T09:00:00Z");
        // The reminder 90 office minutes before: 30 on Monday, 60 before Friday's close, so
        // 16:30 Berlin on Friday; the escalation an office hour after the deadline.
        let at = |ms: i64| sla::rfc3339(ms);
        let steps: Vec<(String, sla::Step)> = state.pending.iter().map(|(ms, step)| (at(*ms), *step)).collect();
        assert_eq!(
            steps,
            [
                ("2026-12-04T15:30:00Z".to_owned(), sla::Step::Reminder),
                ("2026-12-07T09:00:00Z".to_owned(), sla::Step::Breach),
                ("2026-12-07T10:00:00Z".to_owned(), sla::Step::Escalation { level: 1 }),
            ]
        );
    }

    #[test]
    fn retention_forgets_an_inquirys_sla_with_its_timers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
        let store = Store::open(dir.path()).unwrap();
        let engine = reach(&store, &clock);
        let sales = record(1, T0, "sales", None);
        engine.schedule(std::slice::from_ref(&sales)).unwrap();
        assert!(store.next_due(Timeline::Sla).unwrap().is_some());
        let mut batch = store.batch();
        forget(&store, &mut batch, sales.id()).unwrap();
        batch.commit().unwrap();
        assert_eq!(engine.load(sales.id()).unwrap(), None);
        assert_eq!(store.next_due(Timeline::Sla).unwrap(), None, "no timer left behind");
        clock.0.store(T0 + 500 * MIN, Ordering::SeqCst);
        assert_eq!(engine.fire_due().unwrap(), 0);
    }
}
