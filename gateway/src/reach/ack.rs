//! Auto-acknowledgements: which inquiries get one, from which template variant, and when (quiet
//! hours in the buyer's time zone). Pure; the sending is in [`super::send`].

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{AckRuleConfig, ReachConfig, SenderConfig};
use crate::pipeline::StoredInquiry;
use crate::routing::Disposition;

/// The placeholders a template may use.
const PLACEHOLDERS: &[&str] = &["buyer_name", "order_id", "account", "inquiry_id", "first_response_by"];

/// A parsed template: text and placeholders.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Placeholder(&'static str),
}

impl Template {
    /// Parses `{placeholder}` text (`{{` and `}}` for braces); unknown placeholders are errors.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("`{{{name}` is not closed"));
                    }
                    let known = PLACEHOLDERS.iter().find(|p| **p == name).ok_or_else(|| {
                        format!("unknown placeholder `{{{name}}}` (known: {})", PLACEHOLDERS.join(", "))
                    })?;
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                    parts.push(Part::Placeholder(known));
                }
                '}' => return Err("a lone `}` (write `}}`)".to_owned()),
                c => literal.push(c),
            }
        }
        parts.push(Part::Text(literal));
        Ok(Template { parts })
    }

    /// The text with each placeholder replaced by its value (empty when unknown).
    pub fn render(&self, values: &HashMap<&'static str, String>) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Placeholder(name) => values.get(name).map_or("", String::as_str),
            })
            .collect()
    }
}

/// Quiet hours (`"21:00-08:00"`, may span midnight).
#[derive(Debug, Clone, Copy)]
pub struct QuietHours {
    start: Time,
    end: Time,
}

impl QuietHours {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<QuietHours, String> {
        let (start, end) = text
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<Time>().ok()?, b.trim().parse::<Time>().ok()?)))
            .ok_or_else(|| format!("`{text}` is not a window like 21:00-08:00"))?;
        if start == end {
            return Err(format!("`{text}` is empty"));
        }
        Ok(QuietHours { start, end })
    }

    fn is_quiet(&self, time: Time) -> bool {
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }

    /// The first moment at or after `at_ms` outside quiet hours in every one of `zones` (a buyer
    /// whose country spans several zones is not woken in any of them).
    pub fn next_allowed(&self, at_ms: i64, zones: &[TimeZone]) -> i64 {
        let mut at = Timestamp::from_millisecond(at_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        // Each pass moves past one zone's quiet window; a few passes settle it.
        for _ in 0..(zones.len() * 2 + 2) {
            let mut moved = false;
            for zone in zones {
                let local = at.to_zoned(zone.clone());
                if !self.is_quiet(local.time()) {
                    continue;
                }
                let mut date = local.date();
                if local.time() >= self.end && self.start > self.end {
                    date = date.tomorrow().unwrap_or(date);
                }
                if let Ok(end) = date.to_datetime(self.end).to_zoned(zone.clone()) {
                    if end.timestamp() > at {
                        at = end.timestamp();
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        at.as_millisecond()
    }
}

/// The IANA zones of a country (ISO 3166 alpha-2), from the system's tz database (`zone.tab`).
pub fn country_zones(country: &str) -> Vec<TimeZone> {
    static BY_COUNTRY: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    let table = BY_COUNTRY.get_or_init(|| {
        let mut table: HashMap<String, Vec<String>> = HashMap::new();
        let text = std::fs::read_to_string("/usr/share/zoneinfo/zone.tab").unwrap_or_default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split('\t').collect();
            if let (Some(code), Some(zone)) = (fields.first(), fields.get(2)) {
                // Antarctic stations are not where buyers live.
                if !zone.starts_with("Antarctica/") {
                    table.entry(code.to_string()).or_default().push(zone.to_string());
                }
            }
        }
        table
    });
    table
        .get(&country.to_ascii_uppercase())
        .map(|zones| zones.iter().filter_map(|z| TimeZone::get(z).ok()).collect())
        .unwrap_or_default()
}

/// Where an acknowledgement stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AckStatus {
    /// Waiting for its time (quiet hours, the quota, a retry).
    Scheduled,
    /// Handed to the channel; the outcome is not recorded yet.
    Sending,
    /// The channel took it.
    Sent {
        /// The channel's id of the message (WhatsApp `wamid`, the SMTP queue id).
        provider_id: String,
    },
    /// Not sent, for good.
    Failed {
        /// Why (no personal data).
        reason: String,
    },
    /// The gateway stopped while sending: it may or may not have left; never sent again.
    Uncertain,
    /// Dry run: rendered and recorded, not sent.
    DryRun,
    /// An agent answered before it was sent.
    Cancelled,
}

/// An inquiry's acknowledgement as kept in the store (no personal data: the recipient and the
/// text are derived when it is sent, from the sealed inquiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckState {
    /// The inquiry.
    pub inquiry_id: Uuid,
    /// Template id and version.
    pub template: String,
    /// Its version.
    pub version: u32,
    /// The variant's language.
    pub language: String,
    /// Channel it answers on.
    pub channel: String,
    /// Account.
    pub account: String,
    /// Where it stands.
    pub status: AckStatus,
    /// Sending attempts so far.
    pub attempts: u32,
    /// The platform id of the shop message taken to be it, when it left without one of its own
    /// (its outcome unknown, or sent by another replica): the next poll cycles know it by that
    /// id instead of taking one more shop message for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_as: Option<String>,
    /// Times it waited for a token for the account that this replica does not hold.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub no_token_waits: u32,
    /// Not before (Unix ms).
    pub not_before_ms: i64,
    /// An agent answered while it was being sent: a retry is not made.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The inquiry's conversation id (a buyer who writes again in it within
    /// `reach.ack_repeat_window` is not acknowledged again); `None` in states of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    /// SHA-256 (hex) of the template variant's text as configured (subject, a newline, body),
    /// set when it is sent: the audit log's proof of which wording went out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_sha256: String,
}

/// The failure reason of an acknowledgement another replica sent (the buyer got one).
pub const CLAIMED_ELSEWHERE: &str = "acknowledged by another replica";

/// One variant of a template.
#[derive(Debug, Clone)]
struct Variant {
    version: u32,
    language: String,
    account: Option<String>,
    subject: Option<Template>,
    body: Template,
    /// SHA-256 (hex) of its configured text (see [`AckState::template_sha256`]).
    sha256: String,
}

/// A rendered acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// E-mail subject, where the template has one.
    pub subject: Option<String>,
    /// The text, with the EU representative's block where the account needs it.
    pub body: String,
    /// The version of the template variant rendered (the one in force when it is sent).
    pub version: u32,
    /// The language of that variant.
    pub language: String,
    /// SHA-256 (hex) of that variant's configured text.
    pub template_sha256: String,
}

/// The acknowledgement rules, templates and senders of a validated config.
#[derive(Debug, Clone, Default)]
pub struct Acks {
    templates: HashMap<String, Vec<Variant>>,
    rules: Vec<AckRuleConfig>,
    fallback_language: String,
    eu_block: Option<String>,
    eu_accounts: HashSet<String>,
    quiet: Option<QuietHours>,
    senders: Vec<SenderConfig>,
}

impl Acks {
    /// From a validated config.
    pub fn from_config(config: &ReachConfig) -> Result<Acks, String> {
        let mut templates: HashMap<String, Vec<Variant>> = HashMap::new();
        for t in &config.templates {
            templates.entry(t.id.clone()).or_default().push(Variant {
                version: t.version,
                language: t.language.to_ascii_lowercase(),
                account: t.account.clone(),
                subject: t.subject.as_deref().map(Template::parse).transpose()?,
                body: Template::parse(&t.body)?,
                sha256: crate::compliance::sha256_hex(
                    format!("{}\n{}", t.subject.as_deref().unwrap_or_default(), t.body).as_bytes(),
                ),
            });
        }
        Ok(Acks {
            templates,
            rules: config.ack_rules.clone(),
            fallback_language: config.fallback_language.to_ascii_lowercase(),
            eu_block: config.eu_representative.clone(),
            eu_accounts: config.eu_accounts.iter().cloned().collect(),
            quiet: config.quiet_hours.as_deref().map(QuietHours::parse).transpose()?,
            senders: config.senders.clone(),
        })
    }

    /// True when no acknowledgement can ever be sent.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty() || self.senders.is_empty()
    }

    /// The senders.
    pub fn senders(&self) -> &[SenderConfig] {
        &self.senders
    }

    /// The acknowledgement `stored` gets, scheduled for `now_ms` or the end of the buyer's quiet
    /// hours; `None`: none (spam, no template, no sender for its channel).
    pub fn plan(&self, stored: &StoredInquiry, now_ms: i64) -> Option<AckState> {
        let (inquiry, decision) = (&stored.inquiry, &stored.decision);
        if matches!(decision.disposition, Disposition::RejectSpam { .. }) {
            return None;
        }
        let template = match decision.reply_template.as_deref().filter(|t| self.templates.contains_key(*t)) {
            Some(template) => template,
            None => {
                let channel = inquiry.channel.as_str();
                let rule = self.rules.iter().find(|r| {
                    r.account.as_deref().is_none_or(|a| a == inquiry.account)
                        && r.channel.as_deref().is_none_or(|c| c == channel)
                        && r.queue.as_deref().is_none_or(|q| q == decision.queue)
                })?;
                rule.template.as_str()
            }
        };
        // No sender for the channel: nothing to plan (the sender is looked up again when sending).
        self.sender_for(inquiry.channel.as_str())?;
        let language = decision.language.as_deref().or(inquiry.buyer.language.as_deref());
        let variant = self.variant(template, language, &inquiry.account)?;
        let not_before_ms = self.quiet_until(now_ms, inquiry.buyer.country.as_deref());
        Some(AckState {
            inquiry_id: inquiry.id,
            template: template.to_owned(),
            version: variant.version,
            language: variant.language.clone(),
            channel: inquiry.channel.as_str().to_owned(),
            account: inquiry.account.clone(),
            status: AckStatus::Scheduled,
            attempts: 0,
            seen_as: None,
            no_token_waits: 0,
            not_before_ms,
            cancel_requested: false,
            conversation: Some(inquiry.external.conversation_id.clone()),
            template_sha256: String::new(),
        })
    }

    /// The text of `state` for its inquiry: `values` fill the placeholders.
    pub fn render(&self, state: &AckState, values: &HashMap<&'static str, String>) -> Option<Rendered> {
        let variant = self.variant(&state.template, Some(&state.language), &state.account)?;
        let mut body = variant.body.render(values);
        if let Some(block) = self.eu_block.as_deref().filter(|_| self.eu_accounts.contains(&state.account)) {
            body.push_str("\n\n");
            body.push_str(block);
        }
        Some(Rendered {
            subject: variant.subject.as_ref().map(|s| s.render(values)),
            body,
            version: variant.version,
            language: variant.language.clone(),
            template_sha256: variant.sha256.clone(),
        })
    }

    /// The variant of `template` for `language` (its primary subtag: `de-AT` takes `de`) and
    /// `account`, else the fallback language's; an account's own variant wins.
    fn variant(&self, template: &str, language: Option<&str>, account: &str) -> Option<&Variant> {
        let variants = self.templates.get(template)?;
        let primary = |l: &str| l.split(['-', '_']).next().unwrap_or(l).to_ascii_lowercase();
        let pick = |language: &str| {
            let of_language = variants.iter().filter(move |v| primary(&v.language) == primary(language));
            of_language
                .clone()
                .find(|v| v.account.as_deref() == Some(account))
                .or_else(|| of_language.clone().find(|v| v.account.is_none()))
        };
        language.and_then(pick).or_else(|| pick(&self.fallback_language))
    }

    /// The first moment at or after `now_ms` outside the quiet hours of a buyer in `country`
    /// (`now_ms` itself without quiet hours or a known country).
    pub fn quiet_until(&self, now_ms: i64, country: Option<&str>) -> i64 {
        let zones = country.map(country_zones).unwrap_or_default();
        match &self.quiet {
            Some(quiet) if !zones.is_empty() => quiet.next_allowed(now_ms, &zones),
            _ => now_ms,
        }
    }

    /// The sender of `channel`, by its index in `reach.senders`.
    pub fn sender_for(&self, channel: &str) -> Option<usize> {
        self.senders.iter().position(|sender| match sender {
            SenderConfig::Smtp { channels, .. } => channels.iter().any(|c| c == channel),
            SenderConfig::Whatsapp { .. } => channel == "whatsapp",
            SenderConfig::Messenger { channels, .. } => channels.iter().any(|c| c == channel),
            SenderConfig::Telegram { .. } => channel == "telegram",
            SenderConfig::Line { .. } => channel == "line",
            SenderConfig::Shopee { .. } => channel == "shopee",
            SenderConfig::TiktokShop { .. } => channel == "tiktok_shop",
            SenderConfig::Ebay { .. } => channel == "ebay",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(zoned: &str) -> i64 {
        zoned.parse::<jiff::Zoned>().unwrap().timestamp().as_millisecond()
    }

    #[test]
    fn templates_fill_placeholders_and_refuse_unknown_ones() {
        let t = Template::parse("Hallo {buyer_name}, Bestellung {order_id} {{ok}}").unwrap();
        let values = HashMap::from([("buyer_name", "Anna".to_owned())]);
        assert_eq!(t.render(&values), "Hallo Anna, Bestellung  {ok}");
        assert!(Template::parse("Hi {name}").unwrap_err().contains("unknown placeholder `{name}`"));
        assert!(Template::parse("a } b").is_err());
        assert!(Template::parse("Hi {buyer_name").unwrap_err().contains("not closed"));
    }

    #[test]
    fn quiet_hours_wait_for_the_morning_in_every_zone_of_the_country() {
        let quiet = QuietHours::parse("21:00-08:00").unwrap();
        let de = country_zones("DE");
        assert!(!de.is_empty(), "the system's tz database knows Germany");
        // 23:30 in Berlin: wait until 08:00.
        assert_eq!(
            quiet.next_allowed(ms("2026-12-02T23:30[Europe/Berlin]"), &de),
            ms("2026-12-03T08:00[Europe/Berlin]")
        );
        // 06:00: until 08:00 the same day; 12:00: at once.
        assert_eq!(
            quiet.next_allowed(ms("2026-12-03T06:00[Europe/Berlin]"), &de),
            ms("2026-12-03T08:00[Europe/Berlin]")
        );
        let noon = ms("2026-12-03T12:00[Europe/Berlin]");
        assert_eq!(quiet.next_allowed(noon, &de), noon);
        // The US spans New York to Honolulu: 08:00 in Honolulu is 13:00 in New York.
        let us = country_zones("US");
        let at = quiet.next_allowed(ms("2026-12-03T09:00[America/New_York]"), &us);
        assert!(at >= ms("2026-12-03T08:00[Pacific/Honolulu]"), "no buyer is woken anywhere in the US");
        assert!(at < ms("2026-12-03T21:00[America/New_York]"), "but it is sent that day");
        assert!(QuietHours::parse("9-5").is_err());
    }

    fn stored(country: &str, language: &str, channel: &str) -> StoredInquiry {
        let mut raw = serde_json::json!({
            "channel": channel, "account": "shop-1", "external_id": "m-1",
            "buyer": { "id": "4917600000001", "email": "anna@example.com", "country": country, "language": language },
            "body": "hello", "occurred_at": "2026-12-02T22:00:00Z",
        });
        if country.is_empty() {
            raw["buyer"].as_object_mut().unwrap().remove("country");
        }
        let raw = raw.to_string();
        let received_at = time::macros::datetime!(2026-12-02 22:30 UTC);
        let ctx = inquiry_connectors::NormalizeContext { received_at, trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" };
        let inquiry = inquiry_connectors::generic::normalize(raw.as_bytes(), &ctx).unwrap();
        let decision = crate::routing::Decision {
            disposition: Disposition::Deliver,
            queue: "sales".to_owned(),
            assignee: None,
            priority: crate::routing::Priority::Normal,
            tags: Vec::new(),
            language: None,
            reply_template: None,
            sla_policy: None,
            decided_by: "fallback".to_owned(),
            fallback_reason: None,
        };
        StoredInquiry { inquiry, decision }
    }

    /// Two language variants of one template, quiet hours and a WhatsApp sender.
    fn config_text() -> String {
        r#"
            quiet_hours = "21:00-08:00"
            [[templates]]
            id = "ack"
            version = 2
            language = "en"
            body = "Thanks"
            [[templates]]
            id = "ack"
            version = 2
            language = "de"
            body = "Danke"
            [[ack_rules]]
            template = "ack"
            [[senders]]
            kind = "whatsapp"
            access_token = "t"
            "#
        .to_owned()
    }

    #[test]
    fn a_plan_waits_for_the_buyers_morning_and_picks_the_language_variant() {
        let config: ReachConfig = toml::from_str(&config_text()).unwrap();
        let acks = Acks::from_config(&config).unwrap();
        let now = ms("2026-12-02T23:30[Europe/Berlin]");
        // A German buyer writing at 23:30 Berlin time hears back at 08:00.
        let plan = acks.plan(&stored("DE", "de-DE", "whatsapp"), now).unwrap();
        assert_eq!(plan.not_before_ms, ms("2026-12-03T08:00[Europe/Berlin]"));
        assert_eq!((plan.language.as_str(), plan.version), ("de", 2));
        // In Singapore it is 06:30: until 08:00 there.
        let plan = acks.plan(&stored("SG", "en", "whatsapp"), now).unwrap();
        assert_eq!(plan.not_before_ms, ms("2026-12-03T08:00[Asia/Singapore]"));
        // No country: at once. No sender for e-mail: no plan.
        assert_eq!(acks.plan(&stored("", "fr", "whatsapp"), now).unwrap().not_before_ms, now);
        assert!(acks.plan(&stored("DE", "de", "email"), now).is_none());

        // A reload that bumped the German variant: a plan made before renders the variant in force
        // and says which one it rendered (so the send is recorded with version 3).
        let planned = acks.plan(&stored("DE", "de-DE", "whatsapp"), now).unwrap();
        let bumped = config_text().replace(
            "version = 2\n            language = \"de\"\n            body = \"Danke\"",
            "version = 3\n            language = \"de\"\n            body = \"Vielen Dank\"",
        );
        let reloaded: ReachConfig = toml::from_str(&bumped).unwrap();
        let rendered = Acks::from_config(&reloaded).unwrap().render(&planned, &HashMap::new()).unwrap();
        assert_eq!((rendered.body.as_str(), rendered.version, rendered.language.as_str()), ("Vielen Dank", 3, "de"));
    }
}

impl AckStatus {
    /// True when it left without an id of its own: its outcome unknown, or another replica sent
    /// it (the shop message taken for it is then remembered in [`AckState::seen_as`]).
    pub fn left_unseen(&self) -> bool {
        match self {
            AckStatus::Uncertain => true,
            AckStatus::Failed { reason } => reason == CLAIMED_ELSEWHERE,
            _ => false,
        }
    }
}

/// For `skip_serializing_if`.
fn is_zero(n: &u32) -> bool {
    *n == 0
}
