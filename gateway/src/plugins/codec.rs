//! Between the gateway's types and the ABI: inquiries into batch records, plugin routes into
//! [`Decision`]s (with the host's bounds on what a plugin may return).

use inquiry_connectors::Inquiry;
use inquiry_plugin_sdk::{wire, Priority as SdkPriority, Route};
use time::format_description::well_known::Rfc3339;

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
        let id = inquiry.id.to_string();
        let occurred = inquiry.occurred_at.format(&Rfc3339).unwrap_or_default();
        let received = inquiry.received_at.format(&Rfc3339).unwrap_or_default();
        let region = match inquiry.region {
            inquiry_connectors::Region::Eu => "eu",
            inquiry_connectors::Region::Other => "other",
        };
        wire::put_inquiry(
            out,
            &[
                &id,
                inquiry.channel.as_str(),
                &inquiry.account,
                &inquiry.external.message_id,
                &inquiry.external.conversation_id,
                &inquiry.buyer.pseudonym,
                inquiry.buyer.country.as_deref().unwrap_or(""),
                inquiry.buyer.language.as_deref().unwrap_or(""),
                region,
                inquiry.subject.as_deref().unwrap_or(""),
                &inquiry.body,
                inquiry.order_id.as_deref().unwrap_or(""),
                &products,
                &attributes,
                &occurred,
                &received,
            ],
        );
    }
}

/// The decision for a plugin's route, or why the route is refused.
pub fn decision(route: Route, inquiry: &Inquiry, decided_by: &str) -> Result<Decision, String> {
    let labels = [
        &Some(route.queue.clone()),
        &route.assignee,
        &route.language,
        &route.reply_template,
        &route.sla_policy,
        &route.spam_reason,
    ];
    if labels.iter().any(|l| l.as_ref().is_some_and(|l| l.len() > MAX_LABEL_BYTES)) {
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
