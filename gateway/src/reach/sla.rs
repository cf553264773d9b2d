//! First-response SLAs: which policy an inquiry gets, its deadline, and the steps that follow
//! (reminders before the deadline, the breach, escalations after it). Pure: the caller keeps the
//! state in the store and fires the steps.

use std::collections::HashMap;
use std::time::Duration;

use inquiry_connectors::Region;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::calendar::Calendar;
use crate::config::{parse_duration, ReachConfig, SlaRuleConfig};
use crate::pipeline::StoredInquiry;
use crate::routing::{Disposition, Priority};

/// A policy, parsed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its id.
    pub id: String,
    first_response: Duration,
    reminders: Vec<Duration>,
    calendar: Option<Calendar>,
    escalate_after: Vec<Duration>,
}

/// Every policy and the rules that pick one.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_id: HashMap<String, Policy>,
    rules: Vec<SlaRuleConfig>,
}

impl Policies {
    /// The policies of a validated config.
    pub fn from_config(config: &ReachConfig) -> Result<Policies, String> {
        let calendars: HashMap<&str, Calendar> = config
            .calendars
            .iter()
            .map(|c| Ok((c.id.as_str(), Calendar::from_config(c)?)))
            .collect::<Result<_, String>>()?;
        let mut by_id = HashMap::new();
        for policy in &config.sla_policies {
            let durations = |values: &[String]| values.iter().map(|v| parse_duration(v)).collect::<Result<Vec<_>, _>>();
            by_id.insert(
                policy.id.clone(),
                Policy {
                    id: policy.id.clone(),
                    first_response: parse_duration(&policy.first_response)?,
                    reminders: durations(&policy.reminders)?,
                    calendar: policy.calendar.as_deref().and_then(|c| calendars.get(c).cloned()),
                    escalate_after: durations(&policy.escalate_after)?,
                },
            );
        }
        Ok(Policies { by_id, rules: config.sla_rules.clone() })
    }

    /// True when no policy is configured.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The policy of a stored inquiry: none for spam; the decision's `sla_policy` when it names
    /// a known policy; else the first rule matching its account, queue and priority.
    pub fn policy_for(&self, stored: &StoredInquiry) -> Option<&Policy> {
        let decision = &stored.decision;
        if matches!(decision.disposition, Disposition::RejectSpam { .. }) {
            return None;
        }
        if let Some(policy) = decision.sla_policy.as_deref().and_then(|id| self.by_id.get(id)) {
            return Some(policy);
        }
        let rule = self.rules.iter().find(|rule| {
            rule.account.as_deref().is_none_or(|a| a == stored.inquiry.account)
                && rule.queue.as_deref().is_none_or(|q| q == decision.queue)
                && rule.priority.is_none_or(|p| p == decision.priority)
        })?;
        self.by_id.get(&rule.policy)
    }
}

/// One step of an SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A reminder to the assignee (or the team) before the deadline.
    Reminder,
    /// The deadline passed without a first response.
    Breach,
    /// Escalation to level 1 (team lead) or 2 (supervisor).
    Escalation {
        /// 1 or 2.
        level: u8,
    },
}

/// Where an SLA stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the first response.
    Open,
    /// Answered in time.
    Met,
    /// The deadline passed unanswered.
    Breached,
    /// Answered, after the deadline.
    RepliedLate,
}

/// An inquiry's SLA as kept in the store (no personal data: ids, labels, times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlaState {
    /// The inquiry.
    pub inquiry_id: Uuid,
    /// Its account, channel, queue, priority and assignee, for the events.
    pub account: String,
    /// Channel name.
    pub channel: String,
    /// Queue it was routed to.
    pub queue: String,
    /// Priority.
    pub priority: Priority,
    /// Assignee, if routing picked one.
    pub assignee: Option<String>,
    /// The policy.
    pub policy: String,
    /// When the clock started (the gateway received the inquiry), Unix ms.
    pub started_ms: i64,
    /// The first-response deadline, Unix ms.
    pub deadline_ms: i64,
    /// Steps still to fire, in time order: (due Unix ms, step).
    pub pending: Vec<(i64, Step)>,
    /// Where it stands.
    pub status: Status,
    /// When the first response came, Unix ms.
    pub replied_ms: Option<i64>,
    /// The inquiry's data region: its events reach only sinks declared for it. States kept by
    /// earlier versions have none and count as EU (the stricter).
    #[serde(default = "eu")]
    pub region: Region,
    /// True when the buyer's country is unknown (`region` then says `eu`): its events reach the
    /// Kafka clusters its inquiry reached, by [`crate::spool::region_allows`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub country_unknown: bool,
    /// The buyer's later messages that joined this SLA while it ran (`reach.sla_per_buyer`): an
    /// answer given before one of them was written does not answer it (it gets its own SLA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<uuid::Uuid>,
    /// The inquiry's conversation id (the buyer's later messages in it join this SLA); empty in
    /// states of earlier versions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub conversation: String,
    /// When the buyer wrote the inquiry (the platform's time), Unix ms; 0 in states of earlier
    /// versions.
    #[serde(default)]
    pub written_ms: i64,
}

fn eu() -> Region {
    Region::Eu
}

impl SlaState {
    /// The SLA of `stored` under `policy`, started when the gateway received it. Reminders whose
    /// time has already passed at the start are skipped.
    pub fn start(policy: &Policy, stored: &StoredInquiry) -> SlaState {
        let inquiry = &stored.inquiry;
        let started_ms = (inquiry.received_at.unix_timestamp_nanos() / 1_000_000) as i64;
        let deadline_ms = match &policy.calendar {
            Some(calendar) => calendar.add(started_ms, policy.first_response),
            None => started_ms.saturating_add(policy.first_response.as_millis() as i64),
        };
        // Reminders and escalations count in the same business time as the deadline: nobody is
        // reminded before the office opens or escalated to at night.
        let before = |d: &Duration| match &policy.calendar {
            Some(calendar) => calendar.sub(deadline_ms, *d),
            None => deadline_ms - d.as_millis() as i64,
        };
        let after = |d: &Duration| match &policy.calendar {
            Some(calendar) if !d.is_zero() => calendar.add(deadline_ms, *d),
            _ => deadline_ms + d.as_millis() as i64,
        };
        let mut pending: Vec<(i64, Step)> =
            policy.reminders.iter().map(|r| (before(r), Step::Reminder)).filter(|(at, _)| *at > started_ms).collect();
        pending.push((deadline_ms, Step::Breach));
        for (i, wait) in policy.escalate_after.iter().enumerate() {
            pending.push((after(wait), Step::Escalation { level: i as u8 + 1 }));
        }
        // Stable: a breach and a level-1 escalation at the same moment fire in that order.
        pending.sort_by_key(|(at, _)| *at);
        SlaState {
            inquiry_id: inquiry.id,
            account: inquiry.account.clone(),
            channel: inquiry.channel.as_str().to_owned(),
            queue: stored.decision.queue.clone(),
            priority: stored.decision.priority,
            assignee: stored.decision.assignee.clone(),
            policy: policy.id.clone(),
            started_ms,
            deadline_ms,
            pending,
            status: Status::Open,
            replied_ms: None,
            // An unknown country may be an EU buyer: its events count as EU (inquiries of unknown
            // country never reach a sink outside the EU either).
            region: if inquiry.buyer.country.is_some() { inquiry.region } else { Region::Eu },
            country_unknown: inquiry.buyer.country.is_none(),
            joined: Vec::new(),
            conversation: inquiry.external.conversation_id.clone(),
            written_ms: (inquiry.occurred_at.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }

    /// When the next step is due.
    pub fn next_due(&self) -> Option<i64> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// Fires the next step: its event. The caller stores the new state and the next timer.
    pub fn fire(&mut self, now_ms: i64) -> Option<SlaEvent> {
        if self.status != Status::Open && self.status != Status::Breached {
            self.pending.clear();
            return None;
        }
        let (due, step) = self.pending.first().copied()?;
        self.pending.remove(0);
        let (kind, level) = match step {
            Step::Reminder => (EventKind::Reminder, 0),
            Step::Breach => {
                self.status = Status::Breached;
                (EventKind::Breached, 0)
            }
            Step::Escalation { level } => (EventKind::Escalated, level),
        };
        Some(self.event(kind, level, due, now_ms))
    }

    /// Records the first response at `at_ms`: the event, or `None` if one was recorded before.
    pub fn reply(&mut self, at_ms: i64, now_ms: i64) -> Option<SlaEvent> {
        // By the reply's own time: one given before the deadline is met even when it is
        // recorded after the breach fired (a slow CRM, a poll cycle).
        let kind = match self.status {
            Status::Open | Status::Breached if at_ms <= self.deadline_ms => EventKind::Met,
            Status::Open | Status::Breached => EventKind::RepliedLate,
            Status::Met | Status::RepliedLate => return None,
        };
        self.status = if kind == EventKind::Met { Status::Met } else { Status::RepliedLate };
        self.replied_ms = Some(at_ms);
        self.pending.clear();
        Some(self.event(kind, 0, at_ms, now_ms))
    }

    /// The event of the start of the clock.
    pub fn started(&self, now_ms: i64) -> SlaEvent {
        self.event(EventKind::Started, 0, self.started_ms, now_ms)
    }

    fn event(&self, kind: EventKind, level: u8, due_ms: i64, now_ms: i64) -> SlaEvent {
        // The same step of the same SLA always has the same id: consumers drop repeats by it.
        let mut name = Vec::with_capacity(40);
        name.extend_from_slice(self.inquiry_id.as_bytes());
        name.extend_from_slice(kind.as_str().as_bytes());
        name.extend_from_slice(&due_ms.to_be_bytes());
        name.push(level);
        SlaEvent {
            schema: EVENT_SCHEMA.to_owned(),
            event_id: {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(&name);
                Uuid::new_v8(digest[..16].try_into().expect("16 bytes"))
            },
            kind,
            inquiry_id: self.inquiry_id,
            account: self.account.clone(),
            channel: self.channel.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            assignee: self.assignee.clone(),
            policy: self.policy.clone(),
            level,
            deadline: rfc3339(self.deadline_ms),
            due: rfc3339(due_ms),
            at: rfc3339(now_ms),
            notify: None,
            region: self.region,
            country_unknown: self.country_unknown,
        }
    }
}

/// The payload version of `sla.events.v1` (`docs/topics.md`).
pub const EVENT_SCHEMA: &str = "inquiry-gateway.sla-event.v1";

/// An event of inquiry nil on `shop-1`, assigned to `agent-ana` (tests).
#[cfg(test)]
pub(crate) fn sample_event(kind: EventKind, notify: Option<&str>) -> SlaEvent {
    SlaEvent {
        schema: EVENT_SCHEMA.to_owned(),
        event_id: uuid::Uuid::nil(),
        kind,
        inquiry_id: uuid::Uuid::nil(),
        account: "shop-1".to_owned(),
        channel: "generic".to_owned(),
        queue: "sales".to_owned(),
        priority: crate::routing::Priority::High,
        assignee: Some("agent-ana".to_owned()),
        policy: "standard".to_owned(),
        level: u8::from(kind == EventKind::Escalated),
        deadline: "2026-12-02T11:00:00Z".to_owned(),
        due: "2026-12-02T11:00:00Z".to_owned(),
        at: "2026-12-02T11:00:00Z".to_owned(),
        notify: notify.map(str::to_owned),
        region: inquiry_connectors::Region::Eu,
        country_unknown: false,
    }
}

/// What happened to an SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The clock started.
    #[serde(rename = "sla.started")]
    Started,
    /// A reminder before the deadline.
    #[serde(rename = "sla.reminder")]
    Reminder,
    /// The deadline passed unanswered.
    #[serde(rename = "sla.breached")]
    Breached,
    /// Escalated (level 1: team lead, 2: supervisor).
    #[serde(rename = "sla.escalated")]
    Escalated,
    /// Answered in time.
    #[serde(rename = "sla.met")]
    Met,
    /// Answered after the deadline.
    #[serde(rename = "sla.replied_late")]
    RepliedLate,
}

impl EventKind {
    /// The name (`sla.breached`); a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "sla.started",
            EventKind::Reminder => "sla.reminder",
            EventKind::Breached => "sla.breached",
            EventKind::Escalated => "sla.escalated",
            EventKind::Met => "sla.met",
            EventKind::RepliedLate => "sla.replied_late",
        }
    }

    /// True for the events people are alerted about.
    pub fn alerts(self) -> bool {
        matches!(self, EventKind::Reminder | EventKind::Breached | EventKind::Escalated)
    }
}

/// An SLA event: the Kafka topic `sla.events.v1` and the alerts carry it (no personal data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaEvent {
    /// `inquiry-gateway.sla-event.v1`.
    pub schema: String,
    /// Stable per (inquiry, step).
    pub event_id: Uuid,
    /// What happened.
    pub kind: EventKind,
    /// The inquiry.
    pub inquiry_id: Uuid,
    /// Its account.
    pub account: String,
    /// Its channel.
    pub channel: String,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: Priority,
    /// Its assignee, if any.
    pub assignee: Option<String>,
    /// The policy.
    pub policy: String,
    /// Escalation level (0 unless `sla.escalated`).
    pub level: u8,
    /// The deadline (RFC 3339).
    pub deadline: String,
    /// When the step was due, or when the reply came (RFC 3339).
    pub due: String,
    /// When the gateway recorded it (RFC 3339).
    pub at: String,
    /// Who the alert is for: the assignee, the team lead or the supervisor.
    pub notify: Option<String>,
    /// The inquiry's data region (`eu`, `other`): a Kafka cluster gets the events of the regions
    /// it is declared for only.
    #[serde(default = "eu")]
    pub region: Region,
    /// True when the buyer's country is unknown: decides which clusters get the event, never
    /// published.
    #[serde(skip)]
    pub country_unknown: bool,
}

impl SlaEvent {
    /// The region [`crate::spool::region_allows`] decides the event's clusters by (`None`:
    /// the buyer's country is unknown).
    pub(crate) fn residency_region(&self) -> Option<Region> {
        (!self.country_unknown).then_some(self.region)
    }
}

/// Unix ms as RFC 3339 (UTC).
pub(crate) fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
