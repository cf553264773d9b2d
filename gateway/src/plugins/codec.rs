//! Between the gateway's types and the ABI: inquiries into batch records, plugin routes into
//! [`Decision`]s (with the host's bounds on what a plugin may return).

use inquiry_connectors::Inquiry;
use inquiry_plugin_sdk::{wire, Priority as SdkPriority, Route};
use time::{OffsetDateTime, UtcOffset};

use crate::routing::{Decision, Disposition, Priority};

/// Longest queue, assignee, template, policy, language or spam reason a plugin may return.
const MAX_LABEL_BYTES: usize = 256;
/// Most tags a plugin may return for one inquiry.
const MAX_TAGS: usize = 32;

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
            products.push_str(product);
        }
        attributes.clear();
        for (key, value) in &inquiry.attributes {
            let value = match value {
                serde_json::Value::String(s) => s.replace('\n', " "),
                other => other.to_string(),
            };
            attributes.push_str(&key.replace(['\n', '='], " "));
            attributes.push('=');
            attributes.push_str(&value);
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

/// Formats `at` in UTC as RFC 3339 (`2026-11-24T08:00:00Z`, with `.fff...` when it has a
/// fraction) into `buf`, without allocating (the time crate's formatter allocates a String).
fn rfc3339_utc(at: OffsetDateTime, buf: &mut [u8; 40]) -> &str {
    use std::io::Write as _;
    let at = at.to_offset(UtcOffset::UTC);
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let (date, time) = (at.date(), at.time());
    let _ = write!(
        cursor,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date.year(),
        date.month() as u8,
        date.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    if time.nanosecond() != 0 {
        let _ = write!(cursor, ".{:09}", time.nanosecond());
    }
    let _ = write!(cursor, "Z");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("")
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
    Ok(Decision {
        disposition: match route.spam_reason {
            Some(reason) => Disposition::RejectSpam { reason },
            None => Disposition::Deliver,
        },
        queue: route.queue,
        assignee: route.assignee,
        priority: match route.priority {
            SdkPriority::Low => Priority::Low,
            SdkPriority::Normal => Priority::Normal,
            SdkPriority::High => Priority::High,
            SdkPriority::Urgent => Priority::Urgent,
        },
        tags: route.tags,
        language: route.language.or_else(|| inquiry.buyer.language.clone()),
        reply_template: route.reply_template,
        sla_policy: route.sla_policy,
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
    }
}
