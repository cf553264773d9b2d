//! Between the gateway's types and the ABI: inquiries into batch records, plugin routes into
//! [`Decision`]s (with the host's bounds on what a plugin may return).

use inquiry_connectors::Inquiry;
use inquiry_plugin_sdk::{wire, Priority as SdkPriority, Route, Text};
use time::{OffsetDateTime, UtcOffset};

use crate::routing::{Decision, Disposition, Priority};

/// Longest queue, assignee, template, policy, language or spam reason a plugin may return.
const MAX_LABEL_BYTES: usize = 256;
/// Most tags a plugin may return for one inquiry.
const MAX_TAGS: usize = wire::MAX_TAGS;

/// Encodes a batch of inquiries (ABI v1 batch).
pub fn encode_batch(batch: &[&Inquiry], out: &mut Vec<u8>) {
    out.clear();
    wire::begin_batch(out, batch.len());
    let mut products = String::new();
    let mut attributes = String::new();
    for inquiry in batch {
        products.clear();
        for (i, product) in inquiry.product_ids.iter().enumerate() {
            if i > 0 {
                products.push('\n');
            }
            // One product per line: an id holding a line break must not read as two products.
            push_line_safe(&mut products, product, &['\n']);
        }
        attributes.clear();
        for (key, value) in &inquiry.attributes {
            push_line_safe(&mut attributes, key, &['\n', '=']);
            attributes.push('=');
            match value {
                serde_json::Value::String(text) => push_line_safe(&mut attributes, text, &['\n']),
                // Compact JSON has no raw line break.
                other => {
                    use std::fmt::Write as _;
                    let _ = write!(attributes, "{other}");
                }
            }
            attributes.push('\n');
        }
        let mut id = [0u8; 36];
        let id = inquiry.id.hyphenated().encode_lower(&mut id);
        let (mut occurred, mut received) = ([0u8; 40], [0u8; 40]);
        let occurred = rfc3339_utc(inquiry.occurred_at, &mut occurred);
        let received = rfc3339_utc(inquiry.received_at, &mut received);
        let region = match inquiry.region {
            inquiry_connectors::Region::Eu => "eu",
            inquiry_connectors::Region::Other => "other",
        };
        wire::put_inquiry(
            out,
            &[
                id,
                inquiry.channel.as_str(),
                &inquiry.account,
                &inquiry.external.message_id,
                &inquiry.external.conversation_id,
                &inquiry.buyer.pseudonym,
                inquiry.buyer.country.as_deref().unwrap_or(""),
                inquiry.buyer.language.as_deref().unwrap_or(""),
                region,
                inquiry.personal.subject.as_deref().unwrap_or(""),
                &inquiry.personal.body,
                inquiry.order_id.as_deref().unwrap_or(""),
                &products,
                &attributes,
                occurred,
                received,
            ],
        );
    }
}

/// Appends `text` with each of `separators` replaced by a space (attribute keys and values
/// are one `key=value` line each).
fn push_line_safe(out: &mut String, text: &str, separators: &[char]) {
    if text.contains(separators) {
        out.extend(text.chars().map(|c| if separators.contains(&c) { ' ' } else { c }));
    } else {
        out.push_str(text);
    }
}

/// Formats `at` in UTC as RFC 3339 (`2026-11-24T08:00:00Z`, with `.fffffffff` when it has a
/// fraction) into `buf`, digit by digit: it runs twice per inquiry routed by a plugin, and
/// `fmt` machinery cost more than the rest of the encoding.
fn rfc3339_utc(at: OffsetDateTime, buf: &mut [u8; 40]) -> &str {
    let at = at.to_offset(UtcOffset::UTC);
    let (date, time) = (at.date(), at.time());
    let Ok(year) = u32::try_from(date.year()) else {
        return ""; // Before year 0: not representable in RFC 3339.
    };
    let mut put = |at: usize, mut value: u32, width: usize| {
        for slot in buf[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, date.month() as u32, 2);
    put(8, date.day().into(), 2);
    put(11, time.hour().into(), 2);
    put(14, time.minute().into(), 2);
    put(17, time.second().into(), 2);
    let mut len = 19;
    if time.nanosecond() != 0 {
        put(20, time.nanosecond(), 9);
        buf[19] = b'.';
        len = 29;
    }
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        buf[at] = separator;
    }
    buf[len] = b'Z';
    std::str::from_utf8(&buf[..len + 1]).unwrap_or("")
}

/// The decision for a plugin's route, or why the route is refused.
pub fn decision(route: Route, inquiry: &Inquiry, decided_by: &str) -> Result<Decision, String> {
    let optional = [&route.assignee, &route.language, &route.reply_template, &route.sla_policy, &route.spam_reason];
    if route.queue.len() > MAX_LABEL_BYTES
        || optional.iter().any(|l| l.as_ref().is_some_and(|l| l.len() > MAX_LABEL_BYTES))
    {
        return Err(format!("a value is longer than {MAX_LABEL_BYTES} bytes"));
    }
    if route.tags.len() > MAX_TAGS || route.tags.iter().any(|t| t.len() > MAX_LABEL_BYTES) {
        return Err(format!("more than {MAX_TAGS} tags or a tag longer than {MAX_LABEL_BYTES} bytes"));
    }
    let owned = |text: Option<Text>| text.map(Text::into_owned);
    Ok(Decision {
        disposition: match route.spam_reason {
            Some(reason) => Disposition::RejectSpam { reason: reason.into_owned() },
            None => Disposition::Deliver,
        },
        queue: route.queue.into_owned(),
        assignee: owned(route.assignee),
        priority: match route.priority {
            SdkPriority::Low => Priority::Low,
            SdkPriority::Normal => Priority::Normal,
            SdkPriority::High => Priority::High,
            SdkPriority::Urgent => Priority::Urgent,
        },
        tags: route.tags.into_iter().map(Text::into_owned).collect(),
        language: owned(route.language).or_else(|| inquiry.buyer.language.clone()),
        reply_template: owned(route.reply_template),
        sla_policy: owned(route.sla_policy),
        decided_by: decided_by.to_owned(),
        fallback_reason: None,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        let mut buf = [0u8; 40];
        assert_eq!(rfc3339_utc(datetime!(2026-11-24 09:30:00 +01:00), &mut buf), "2026-11-24T08:30:00Z");
        assert_eq!(rfc3339_utc(datetime!(2026-01-02 03:04:05.5 UTC), &mut buf), "2026-01-02T03:04:05.500000000Z");
        let parsed = OffsetDateTime::parse(
            rfc3339_utc(datetime!(9999-12-31 23:59:59.999999999 UTC), &mut buf),
            &time::format_description::well_known::Rfc3339,
        );
        assert_eq!(parsed.unwrap(), datetime!(9999-12-31 23:59:59.999999999 UTC));
        assert_eq!(rfc3339_utc(datetime!(0001-01-01 00:00:00 UTC), &mut buf), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn attribute_lines_cannot_be_split_by_their_keys_or_values() {
        let mut inquiry = crate::plugins::harness::sample_inquiries(1).remove(0);
        inquiry.occurred_at = datetime!(2026-11-24 08:00:00 UTC);
        inquiry.received_at = datetime!(2026-11-24 08:00:01.5 UTC);
        inquiry.attributes.clear();
        inquiry.attributes.insert("tier=x\ny".into(), "gold\nvip".into());
        inquiry.attributes.insert("n".into(), serde_json::json!({"a": [1, "b\nc"]}));
        let mut out = Vec::new();
        encode_batch(&[&inquiry], &mut out);
        let batch = wire::decode_batch(&out).expect("a batch");
        assert_eq!(batch[0].attributes, "n={\"a\":[1,\"b\\nc\"]}\ntier x y=gold vip\n");
        assert_eq!(
            (batch[0].occurred_at, batch[0].received_at),
            ("2026-11-24T08:00:00Z", "2026-11-24T08:00:01.500000000Z")
        );
    }
}
