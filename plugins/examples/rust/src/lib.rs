//! Example routing plugin: the rules of `plugins/examples/RULES.md` in Rust.
//!
//! Build: `plugins/build.sh rust` (or, with rustup's target,
//! `cargo build --release --target wasm32-unknown-unknown`).

use inquiry_plugin_sdk::{export_router, Host, Inquiry, Outcome, Priority, Route};

export_router!(route);

/// Routes one inquiry by the example rules.
pub fn route(inquiry: &Inquiry, host: &dyn Host) -> Outcome {
    let mut text = String::with_capacity(inquiry.subject.len() + inquiry.body.len() + 1);
    text.push_str(inquiry.subject);
    text.push(' ');
    text.push_str(inquiry.body);
    text.make_ascii_lowercase();

    if text.contains("crypto giveaway") {
        let mut spam = Route::to_queue("spam");
        spam.spam_reason = Some("giveaway".to_owned());
        return Outcome::Route(spam);
    }
    let Some(team) = team(inquiry.buyer_language, inquiry.buyer_country) else {
        return Outcome::Undecided;
    };

    let mut route = Route::to_queue(team);
    let raise = |route: &mut Route, to: Priority, tag: &str| {
        route.priority = route.priority.max(to);
        route.tags.push(tag.to_owned());
    };
    if text.contains("bulk order") || text.contains("wholesale") {
        raise(&mut route, Priority::High, "bulk");
    }
    if text.contains("urgent") {
        raise(&mut route, Priority::Urgent, "urgent");
    }
    if text.contains("refund") {
        raise(&mut route, Priority::Normal, "refund");
    }
    let vip = inquiry.attribute("customer_tier") == Some("vip");
    if vip {
        raise(&mut route, Priority::High, "vip");
    }
    route.reply_template = Some(if vip { "vip-ack".to_owned() } else { format!("ack-{team}") });
    route.sla_policy = Some(
        match route.priority {
            Priority::Urgent => "sla-15m",
            Priority::High => "sla-1h",
            _ => "sla-4h",
        }
        .to_owned(),
    );
    if !inquiry.buyer_language.is_empty() {
        route.language = Some(inquiry.buyer_language.to_owned());
    }
    route.assignee = assign(team, host);
    Outcome::Route(route)
}

/// The team for a buyer's language, else country.
fn team(language: &str, country: &str) -> Option<&'static str> {
    let by_language = match language.split('-').next().unwrap_or("") {
        "de" | "fr" | "it" | "es" | "nl" | "pl" => Some("eu-sales"),
        "ja" => Some("jp-sales"),
        "zh" => Some("cn-sales"),
        "en" => Some("en-sales"),
        _ => None,
    };
    by_language.or(match country {
        "DE" | "FR" | "IT" | "ES" | "NL" | "PL" | "AT" | "BE" => Some("eu-sales"),
        "JP" => Some("jp-sales"),
        "CN" | "TW" | "HK" => Some("cn-sales"),
        "US" | "GB" | "AU" | "CA" => Some("en-sales"),
        _ => None,
    })
}

/// Round-robin within `team`, skipping agents that are offline or at capacity.
fn assign(team: &str, host: &dyn Host) -> Option<String> {
    let agents = host.agents(team);
    if agents.is_empty() {
        return None;
    }
    let key = format!("rr:{team}");
    let start = host.kv_get(&key).rem_euclid(agents.len() as i64) as usize;
    let picked = (0..agents.len()).map(|i| (start + i) % agents.len()).find(|&i| agents[i].available())?;
    host.kv_add(&key, picked as i64 + 1 - start as i64);
    Some(agents[picked].id.clone())
}
