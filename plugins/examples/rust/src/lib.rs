//! Example routing plugin: the rules of `plugins/examples/RULES.md` in Rust.
//!
//! Build: `plugins/build.sh rust` (or, with rustup's target,
//! `cargo build --release --target wasm32-unknown-unknown`).

use inquiry_plugin_sdk::{export_router, Host, Inquiry, Keywords, Outcome, Priority, Route, Text};

export_router!(route);

/// The keywords of the rules, matched ignoring ASCII case in one pass.
const KEYWORDS: Keywords<5> = Keywords::new(["crypto giveaway", "bulk order", "wholesale", "urgent", "refund"]);

/// Routes one inquiry by the example rules.
pub fn route(inquiry: &Inquiry, host: &dyn Host) -> Outcome {
    let mut text = String::with_capacity(inquiry.subject.len() + inquiry.body.len() + 1);
    text.push_str(inquiry.subject);
    text.push(' ');
    text.push_str(inquiry.body);
    let [giveaway, bulk_order, wholesale, urgent, refund] = KEYWORDS.find(&text);

    if giveaway {
        let mut spam = Route::to_queue("spam");
        spam.spam_reason = Some("giveaway".into());
        return Outcome::Route(spam);
    }
    let default_team;
    let team = match team(inquiry.buyer_language, inquiry.buyer_country) {
        Some(team) => team,
        None => match host.settings().get("default_team").filter(|name| !name.is_empty()) {
            Some(name) => {
                default_team = Team::named(name);
                &default_team
            }
            None => return Outcome::Undecided,
        },
    };

    let mut route = Route::to_queue(team.name.clone());
    let raise = |route: &mut Route, to: Priority, tag: &'static str| {
        route.priority = route.priority.max(to);
        route.tags.push(tag.into());
    };
    if bulk_order || wholesale {
        raise(&mut route, Priority::High, "bulk");
    }
    if urgent {
        raise(&mut route, Priority::Urgent, "urgent");
    }
    if refund {
        raise(&mut route, Priority::Normal, "refund");
    }
    let vip = inquiry.attribute("customer_tier") == Some("vip");
    if vip {
        raise(&mut route, Priority::High, "vip");
    }
    route.reply_template = Some(if vip { "vip-ack".into() } else { team.reply_template.clone() });
    route.sla_policy = Some(
        match route.priority {
            Priority::Urgent => "sla-15m",
            Priority::High => "sla-1h",
            _ => "sla-4h",
        }
        .into(),
    );
    // The reply language is the buyer's: the gateway's default when `route.language` is unset.
    route.assignee = assign(team, host).map(Into::into);
    Outcome::Route(route)
}

/// A team and the names the rules derive from it.
pub struct Team {
    /// Queue name.
    pub name: Text,
    /// Reply template for buyers who are not VIP.
    pub reply_template: Text,
    /// Key of the team's round-robin position in the plugin's key-value map.
    pub round_robin_key: Text,
}

impl Team {
    /// A team known by name only (the `default_team` setting).
    fn named(name: &str) -> Team {
        Team {
            name: name.to_owned().into(),
            reply_template: format!("ack-{name}").into(),
            round_robin_key: format!("rr:{name}").into(),
        }
    }
}

/// A team known when the plugin is built: its names cost no allocation per inquiry.
const fn known(name: &'static str, reply_template: &'static str, round_robin_key: &'static str) -> Team {
    Team {
        name: Text::Borrowed(name),
        reply_template: Text::Borrowed(reply_template),
        round_robin_key: Text::Borrowed(round_robin_key),
    }
}

static EU_SALES: Team = known("eu-sales", "ack-eu-sales", "rr:eu-sales");
static JP_SALES: Team = known("jp-sales", "ack-jp-sales", "rr:jp-sales");
static CN_SALES: Team = known("cn-sales", "ack-cn-sales", "rr:cn-sales");
static EN_SALES: Team = known("en-sales", "ack-en-sales", "rr:en-sales");

/// The team for a buyer's language, else country.
fn team(language: &str, country: &str) -> Option<&'static Team> {
    let primary = language.split_once('-').map_or(language, |(primary, _)| primary);
    let by_language = match primary {
        "de" | "fr" | "it" | "es" | "nl" | "pl" => Some(&EU_SALES),
        "ja" => Some(&JP_SALES),
        "zh" => Some(&CN_SALES),
        "en" => Some(&EN_SALES),
        _ => None,
    };
    by_language.or(match country {
        "DE" | "FR" | "IT" | "ES" | "NL" | "PL" | "AT" | "BE" => Some(&EU_SALES),
        "JP" => Some(&JP_SALES),
        "CN" | "TW" | "HK" => Some(&CN_SALES),
        "US" | "GB" | "AU" | "CA" => Some(&EN_SALES),
        _ => None,
    })
}

/// Round-robin within `team`, skipping agents that are offline or at capacity.
fn assign(team: &Team, host: &dyn Host) -> Option<String> {
    let agents = host.agents(&team.name);
    if agents.is_empty() {
        return None;
    }
    let start = host.kv_get(&team.round_robin_key).rem_euclid(agents.len() as i64) as usize;
    // From `start` to the end, then from the first agent up to `start`.
    let mut from_start = agents.iter().enumerate().skip(start).chain(agents.iter().enumerate().take(start));
    let (picked, agent) = from_start.find(|(_, agent)| agent.available())?;
    host.kv_add(&team.round_robin_key, picked as i64 + 1 - start as i64);
    Some(agent.id.to_owned())
}
