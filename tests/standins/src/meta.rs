//! Meta Graph API, Conversations endpoint for Messenger
//! (<https://developers.facebook.com/docs/messenger-platform/conversations/>):
//! `GET /v21.0/{page-id}/conversations?platform=messenger&fields=...` with
//! `Authorization: Bearer <page token>`; conversations newest first (25 per page), each with its
//! newest messages first; paging by `paging.cursors.after` with a `paging.next` link. Quota: 2
//! calls per second per page (the Conversations API limit); over it, HTTP 400 with Graph error
//! code 613.

use serde_json::json;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

/// The Graph API stand-in.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The page access token it accepts.
    pub access_token: String,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta { access_token: "test-page-token".to_owned() }
    }
}

/// Conversations per page.
const PAGE_SIZE: usize = 25;

fn graph_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+0000"))
        .unwrap_or_default()
}

fn graph_error(status: u16, code: u32, message: &str) -> Reply {
    Reply::json(status, &json!({"error": {"message": message, "type": "OAuthException", "code": code}}))
}

fn page_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v21.0/")?.strip_suffix("/conversations")
}

impl Platform for Meta {
    fn name(&self) -> &'static str {
        "meta"
    }

    /// "2 calls per second per Facebook Page"
    /// (<https://developers.facebook.com/documentation/business-messaging/messenger-platform/overview/rate-limiting>).
    fn counts_per_second(&self) -> bool {
        true
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 2.0, burst: 2, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        let Some(page) = page_of(&request.path) else {
            return Err(graph_error(404, 803, "Unknown path components"));
        };
        if request.header("authorization") != Some(&format!("Bearer {}", self.access_token)) {
            return Err(graph_error(401, 190, "Invalid OAuth access token."));
        }
        Ok(page.to_owned())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        graph_error(400, 613, "Calls to this api have exceeded the rate limit.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, base: &str) -> Reply {
        let page = page_of(&request.path).unwrap_or_default();
        let after: usize = request.param("after").and_then(|a| a.parse().ok()).unwrap_or(0);
        let mut conversations: Vec<(String, Vec<Message>)> = Vec::new();
        for message in mailbox.of_account(page) {
            match conversations.iter_mut().find(|(id, _)| *id == message.conversation) {
                Some((_, messages)) => messages.push(message),
                None => conversations.push((message.conversation.clone(), vec![message])),
            }
        }
        let newest = |messages: &[Message]| messages.iter().map(|m| m.created).max().unwrap_or(0);
        conversations.sort_by_key(|(_, messages)| std::cmp::Reverse(newest(messages)));
        let data: Vec<serde_json::Value> = conversations
            .iter()
            .skip(after)
            .take(PAGE_SIZE)
            .map(|(id, messages)| {
                let newest_first: Vec<serde_json::Value> = messages
                    .iter()
                    .rev()
                    .take(100)
                    .map(|m| {
                        let from = if m.from_seller { page.to_owned() } else { m.buyer_id.clone() };
                        json!({"id": m.id, "created_time": graph_time(m.created), "from": {"id": from}, "message": m.text})
                    })
                    .collect();
                json!({"id": id, "updated_time": graph_time(newest(messages)), "messages": {"data": newest_first}})
            })
            .collect();
        let mut body = json!({ "data": data });
        if after + PAGE_SIZE < conversations.len() {
            let next = after + PAGE_SIZE;
            body["paging"] = json!({
                "cursors": {"after": next.to_string()},
                "next": format!("{base}{}?after={next}", request.path),
            });
        }
        Reply::json(200, &body)
    }
}
