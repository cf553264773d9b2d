//! Messenger conversations through the Graph API Conversations endpoint, for pages that cannot
//! receive webhooks (or to backfill what webhooks missed).
//!
//! `GET /v21.0/{page-id}/conversations?platform=messenger&fields=updated_time,messages.limit(100){id,created_time,from,message}`
//! returns conversations newest first, each with its newest 100 messages first, paged by
//! `paging.cursors.after`. The cursor kept between cycles is the newest `updated_time` seen: a
//! cycle walks pages until it reaches a conversation not updated since (less a minute of
//! [`super::LOOKBACK`], for messages the platform stamps late), and takes every buyer
//! message of each conversation it visits. Messages are not filtered by time: a conversation can
//! move to an already-read page while a cycle pages on, and its messages are then taken in the
//! next cycle; what was taken before is dropped by the pipeline's dedup (message id). Limit: a
//! conversation that gets more than 100 messages between two cycles loses the older ones (the
//! messages edge is not paged yet). A never-polled page is read 7 days back.
//!
//! Quota: Meta documents 2 calls per second per page for the Conversations API; throttled calls
//! answer with Graph error codes 4, 17, 32, 613 or 80006 (HTTP 400/403/429).

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{encode, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// Graph API version the requests name.
pub const GRAPH_VERSION: &str = "v21.0";

/// The Conversations API poller.
pub struct MetaConversations;

impl Poller for MetaConversations {
    fn name(&self) -> &'static str {
        "messenger_conversations"
    }

    fn channel(&self) -> Channel {
        Channel::Messenger
    }

    fn operation(&self) -> &'static str {
        "conversations"
    }

    /// "2 calls per second per Facebook Page", with no burst on top of the rate (the shape of
    /// the window is not documented)
    /// (<https://developers.facebook.com/documentation/business-messaging/messenger-platform/overview/rate-limiting>).
    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 2.0, burst: 1, per_day: None }
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let mut path = format!(
            "/{GRAPH_VERSION}/{}/conversations?platform=messenger&limit=25&fields=updated_time,messages.limit(100)%7Bid,created_time,from,message%7D",
            target.account
        );
        if let Some(after) = position.page {
            path.push_str("&after=");
            path.push_str(&encode(after));
        }
        PollRequest::get_bearer(path, target.credentials.access_token)
    }

    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        if status == 429 {
            return true;
        }
        let code = serde_json::from_slice::<ErrorBody>(body).ok().map(|e| e.error.code);
        matches!(code, Some(4 | 17 | 32 | 613 | 80006))
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let response: Response = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let cursor = position.cursor;
        // A never-polled page is read 7 days back, like the other pollers (not every conversation
        // it ever had).
        let since = match cursor {
            Some(cursor) => parse_time(cursor)? - super::LOOKBACK,
            None => target.now - time::Duration::seconds(super::walk::FIRST_POLL_LOOKBACK_SECONDS),
        };
        let mut page = PollPage::default();
        let mut reached_old = false;
        for conversation in response.data {
            let Ok(updated) = parse_time(&conversation.updated_time) else {
                page.ignored += 1; // a malformed item must not stall the poller
                continue;
            };
            if updated < since {
                reached_old = true;
                break;
            }
            if page.cursor.as_deref().map_or(true, |c| parse_time(c).map_or(true, |c| updated > c)) {
                page.cursor = Some(conversation.updated_time.clone());
            }
            for message in conversation.messages.map(|m| m.data).unwrap_or_default() {
                let created = parse_time(&message.created_time);
                let from_page = message.from.as_ref().is_none_or(|f| f.id == target.account);
                let text = message.message.filter(|t| !t.trim().is_empty());
                let Ok(created) = created else {
                    page.ignored += 1;
                    continue;
                };
                if from_page || text.is_none() {
                    page.ignored += 1;
                    continue;
                }
                let buyer = message.from.expect("checked above").id;
                let draft = Draft::message(
                    Channel::Messenger,
                    target.account,
                    message.id,
                    conversation.id.clone(),
                    format!("id:{buyer}"),
                    text.expect("checked above"),
                    created,
                )
                .sent_by(&buyer);
                page.inquiries.push(draft.into_inquiry(&context()));
            }
        }
        if !reached_old {
            page.next_page = response.paging.and_then(|p| p.next.and(p.cursors.and_then(|c| c.after)));
        }
        // Conversations come newest first: the first page of a cycle holds its newest time; later
        // pages leave the cycle's cursor as it is.
        // Only forward: the look-back can show nothing newer than the cursor.
        let newer =
            |c: &String| parse_time(c).ok().zip(cursor.and_then(|c| parse_time(c).ok())).is_none_or(|(n, o)| n > o);
        if position.page.is_some() || !page.cursor.as_ref().is_some_and(newer) {
            page.cursor = None;
        }
        Ok(page)
    }
}

/// Graph API times: `2026-11-24T08:00:00+0000` (no colon in the offset), or RFC 3339.
fn parse_time(value: &str) -> Result<OffsetDateTime, InputError> {
    let bad =
        || InputError::new(InputErrorCode::InvalidValue, "a time is not in Graph API format").field("created_time");
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(t);
    }
    let split = value.len().checked_sub(5).filter(|at| value.is_char_boundary(*at)).ok_or_else(bad)?;
    let (local, offset) = value.split_at(split);
    let local = PrimitiveDateTime::parse(local, format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"))
        .map_err(|_| bad())?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let hours: i8 = offset.get(1..3).and_then(|h| h.parse().ok()).ok_or_else(bad)?;
    let minutes: i8 = offset.get(3..5).and_then(|m| m.parse().ok()).ok_or_else(bad)?;
    let offset = time::UtcOffset::from_hms(sign * hours, sign * minutes, 0).map_err(|_| bad())?;
    Ok(local.assume_offset(offset))
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    data: Vec<Conversation>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Conversation {
    id: String,
    updated_time: String,
    #[serde(default)]
    messages: Option<Messages>,
}

#[derive(Deserialize)]
struct Messages {
    #[serde(default)]
    data: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    id: String,
    created_time: String,
    #[serde(default)]
    from: Option<From>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct From {
    id: String,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    cursors: Option<Cursors>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorCode,
}

#[derive(Deserialize)]
struct ErrorCode {
    code: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::PollCredentials;

    #[test]
    fn a_first_poll_stops_at_conversations_older_than_seven_days() {
        let now = time::macros::datetime!(2026-12-03 08:00:00 UTC);
        let target = PollTarget {
            account: "110044338451234",
            credentials: PollCredentials { access_token: "t", app_key: None, app_secret: None },
            now,
            wants_answers: false,
        };
        let conversation = |id: &str, at: &str| {
            serde_json::json!({ "id": id, "updated_time": at, "messages": { "data": [
                { "id": format!("m-{id}"), "created_time": at, "from": { "id": "buyer-1" }, "message": "Hello?" }]}})
        };
        let body = serde_json::json!({
            "data": [conversation("recent", "2026-12-01T08:00:00+0000"), conversation("old", "2026-11-20T08:00:00+0000")],
            "paging": { "cursors": { "after": "QVFI" }, "next": "https://graph.facebook.com/next" },
        });
        let mut context = || NormalizeContext { received_at: now, trace_id: "t" };
        let page =
            MetaConversations.parse(body.to_string().as_bytes(), &target, &PollPosition::default(), &mut context);
        let page = page.unwrap();
        assert_eq!(page.inquiries.len(), 1, "only the conversation of the last 7 days");
        assert_eq!(page.next_page, None, "the listing ends there");
    }
}
