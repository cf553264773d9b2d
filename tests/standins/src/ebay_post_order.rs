//! eBay Post-Order API v2, the inquiry resource
//! (<https://developer.ebay.com/devzone/post-order/index.html>):
//! `GET /post-order/v2/inquiry/search?inquiry_creation_date_range_from=&inquiry_creation_date_range_to=&limit=&offset=`
//! answers `{members: [InquirySummaryType], paginationOutput: {limit, offset, totalEntries,
//! totalPages}, totalNumberOfInquiries}`; `GET /post-order/v2/inquiry/{inquiryId}` answers the
//! inquiry with `inquiryHistoryDetails.history[]` (`action`, `actor`, `date {value}`,
//! `description`). Every call needs `Authorization: IAF <OAuth user token>` and
//! `X-EBAY-C-MARKETPLACE-ID`; dates are ISO 8601 (`2015-05-15T03:52:39.000Z`), from before to.
//!
//! Quota: eBay's per-application call limit; the figure for the Post-Order API could not be read
//! (see the poller's module), so this stand-in enforces the 5,000 calls a day every eBay app
//! starts with, no per-second limit, counted under the app the token was issued to. Over it:
//! HTTP 429 with error id 2001, as eBay's REST APIs answer.
//!
//! Each buyer [`Message`] is one inquiry (its id is the inquiry id, its text the buyer's comment
//! when opening); the seller's messages of the same conversation sent after it are `SELLER`
//! entries of its history.

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

/// The Post-Order stand-in.
#[derive(Debug, Clone)]
pub struct EbayPostOrder {
    /// The application every token below was issued to: the quota key.
    pub app_id: String,
    /// OAuth user tokens it accepts, with the seller each belongs to.
    pub tokens: Vec<(String, String)>,
}

impl Default for EbayPostOrder {
    fn default() -> EbayPostOrder {
        EbayPostOrder {
            app_id: "test-ebay-app-id".to_owned(),
            tokens: vec![("test-ebay-user-token".to_owned(), "1001".to_owned())],
        }
    }
}

const PREFIX: &str = "/post-order/v2/inquiry/";

fn error(status: u16, id: u32, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"errors": [{"errorId": id, "domain": "API_POST_ORDER", "category": "REQUEST", "message": message}]}),
    )
}

fn ebay_date(unix: i64) -> serde_json::Value {
    let at = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let value =
        at.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].000Z")).unwrap_or_default();
    let formatted = at.format(format_description!("[month repr:short] [day], [year]")).unwrap_or_default();
    json!({ "value": value, "formattedValue": formatted })
}

fn summary(inquiry: &Message, seller: &str) -> serde_json::Value {
    json!({
        "inquiryId": inquiry.id,
        "buyer": inquiry.buyer_id,
        "seller": seller,
        "itemId": inquiry.order_id.clone().unwrap_or_else(|| inquiry.conversation.clone()),
        "transactionId": "0",
        "inquiryStatusEnum": "WAITING_SELLER_RESPONSE",
        "claimAmount": {"value": 19.9, "currency": "EUR"},
        "creationDate": ebay_date(inquiry.created),
        "lastModifiedDate": ebay_date(inquiry.created),
        "respondByDate": ebay_date(inquiry.created + 3 * 86_400),
    })
}

impl EbayPostOrder {
    fn seller_of(&self, request: &Request) -> Option<&str> {
        let token = request.header("authorization")?.strip_prefix("IAF ")?;
        self.tokens.iter().find(|(t, _)| t == token).map(|(_, seller)| seller.as_str())
    }

    fn search(&self, request: &Request, seller: &str, mailbox: &Mailbox) -> Reply {
        let time = |name| {
            request.param(name).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()).map(|t| t.unix_timestamp())
        };
        let from = time("inquiry_creation_date_range_from");
        let to = time("inquiry_creation_date_range_to");
        if from.zip(to).is_some_and(|(from, to)| from >= to) {
            return error(400, 1_000_018, "The creation date range 'from' must be earlier than 'to'.");
        }
        let from = from.unwrap_or(i64::MIN);
        let to = to.unwrap_or(i64::MAX);
        let limit: usize = request.param("limit").and_then(|l| l.parse().ok()).unwrap_or(25).clamp(1, 200);
        let offset: usize = request.param("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let inquiries: Vec<Message> = mailbox
            .of_account(seller)
            .into_iter()
            .filter(|m| !m.from_seller && (from..=to).contains(&m.created))
            .collect();
        let members: Vec<_> = inquiries.iter().skip(offset).take(limit).map(|m| summary(m, seller)).collect();
        Reply::json(
            200,
            &json!({
                "members": members,
                "paginationOutput": {
                    "limit": limit, "offset": offset,
                    "totalEntries": inquiries.len(), "totalPages": inquiries.len().div_ceil(limit),
                },
                "totalNumberOfInquiries": inquiries.len(),
            }),
        )
    }

    fn detail(&self, id: &str, seller: &str, mailbox: &Mailbox) -> Reply {
        let messages = mailbox.of_account(seller);
        let Some(inquiry) = messages.iter().find(|m| m.id == id && !m.from_seller) else {
            return error(404, 1_000_010, "The inquiry id is invalid.");
        };
        let mut history = vec![
            json!({"action": "OPEN", "actor": "BUYER", "date": ebay_date(inquiry.created), "description": inquiry.text}),
        ];
        for reply in messages
            .iter()
            .filter(|m| m.from_seller && m.conversation == inquiry.conversation && m.created >= inquiry.created)
        {
            history.push(json!({
                "action": "SELLER_SEND_MESSAGE", "actor": "SELLER",
                "date": ebay_date(reply.created), "description": reply.text,
            }));
        }
        Reply::json(
            200,
            &json!({
                "inquiryId": inquiry.id,
                "itemId": inquiry.order_id.clone().unwrap_or_else(|| inquiry.conversation.clone()),
                "transactionId": "0",
                "initiator": "BUYER",
                "state": "OPEN",
                "status": "WAITING_SELLER_RESPONSE",
                "claimAmount": {"value": 19.9, "currency": "EUR"},
                "inquiryDetails": {"creationDate": ebay_date(inquiry.created)},
                "inquiryHistoryDetails": {"history": history},
            }),
        )
    }
}

impl Platform for EbayPostOrder {
    fn name(&self) -> &'static str {
        "ebay_post_order"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 5_000.0, burst: 5_000, per_day: Some(5_000) }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "GET" || !request.path.starts_with(PREFIX) {
            return Err(error(404, 1_000_000, "Resource not found."));
        }
        if self.seller_of(request).is_none() {
            return Err(error(401, 1_001, "Invalid access token."));
        }
        if request.header("x-ebay-c-marketplace-id").is_none_or(str::is_empty) {
            return Err(error(400, 1_000_002, "The X-EBAY-C-MARKETPLACE-ID header is missing."));
        }
        Ok(self.app_id.clone())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        error(429, 2001, "Too many requests. The request limit has been reached for the resource.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let seller = self.seller_of(request).unwrap_or_default();
        match request.path.strip_prefix(PREFIX).unwrap_or_default() {
            "search" => self.search(request, seller, mailbox),
            id if !id.is_empty() && !id.contains('/') => self.detail(id, seller, mailbox),
            _ => error(404, 1_000_000, "Resource not found."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange, request_of};

    #[test]
    fn only_a_known_iaf_token_with_a_marketplace_is_served_and_counted_under_its_app() {
        let standin = EbayPostOrder::default();
        let poller = inquiry_connectors::poll::find("ebay_post_order_inquiries").unwrap();
        let good = request_of(poller, "1001", "test-ebay-user-token", None, None, None);
        assert_eq!(standin.quota_key(&good).unwrap(), "test-ebay-app-id");
        let mut bearer = good.clone();
        bearer.headers.insert("authorization".into(), "Bearer test-ebay-user-token".into());
        assert_eq!(standin.quota_key(&bearer).unwrap_err().status, 401);
        let mut no_marketplace = good;
        no_marketplace.headers.remove("x-ebay-c-marketplace-id");
        assert_eq!(standin.quota_key(&no_marketplace).unwrap_err().status, 400);
        let throttled = standin.throttled(&crate::testing::admission());
        assert!(poller.is_throttled(throttled.status, throttled.body.as_bytes()));
        assert!(poller.is_daily_cap(throttled.status, throttled.body.as_bytes()));
    }

    #[test]
    fn the_poller_reads_what_the_standin_serves() {
        let (inquiries, ignored) = exchange(
            &EbayPostOrder::default(),
            "ebay_post_order_inquiries",
            "1001",
            "test-ebay-user-token",
            None,
            None,
        );
        assert_eq!((inquiries, ignored), (2, 1), "two inquiries; the seller's reply is in the first one's history");
    }
}
