//! eBay Trading API, `GetMemberMessages`
//! (<https://developer.ebay.com/Devzone/XML/docs/Reference/eBay/GetMemberMessages.html>):
//! `POST /ws/api.dll` with `X-EBAY-API-CALL-NAME: GetMemberMessages`, `X-EBAY-API-SITEID`,
//! `X-EBAY-API-COMPATIBILITY-LEVEL` and `X-EBAY-API-IAF-TOKEN: <OAuth user token>`; an XML
//! `GetMemberMessagesRequest` naming `MailMessageType`, `StartCreationTime`, `EndCreationTime` (an
//! ASQ request without an item needs both) and `Pagination` (`EntriesPerPage` 25/50/100/200,
//! others rounded as documented; `PageNumber`). Answers HTTP 200 with `Ack` and, on success,
//! `MemberMessage.MemberMessageExchange[]`, `PaginationResult` and `HasMoreItems`; errors are
//! `Ack` `Failure` with `Errors.ErrorCode` (931: the token is not valid; 518: call usage limit
//! reached; both codes INFERRED from the Trading API error list, not checked against a live call).
//!
//! Quota (<https://developer.ebay.com/develop/get-started/api-call-limits>): 5,000 Trading API
//! calls per day per application, counted under the app the OAuth token was issued to, whichever
//! seller's token it is. eBay documents no per-second limit for this call, so only the daily cap
//! is enforced (the bucket allows 5,000 at once).
//!
//! Each buyer [`Message`] is one exchange (its `Question`); the seller's messages of the same
//! conversation sent after it are its `Response`s (then `MessageStatus` is `Answered` and
//! `LastModifiedDate` the latest answer's time; a request's `MessageStatus` filters by it). The item is the message's order id or, without
//! one, its conversation id.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::{Admission, Mailbox, Message, Platform, QuotaRule, Reply, Request};

/// The eBay stand-in.
#[derive(Debug, Clone)]
pub struct Ebay {
    /// The application (App ID) every token below was issued to: the quota key.
    pub app_id: String,
    /// OAuth user tokens it accepts, with the seller (user id) each belongs to.
    pub tokens: Vec<(String, String)>,
}

impl Default for Ebay {
    fn default() -> Ebay {
        Ebay {
            app_id: "test-ebay-app-id".to_owned(),
            tokens: vec![("test-ebay-user-token".to_owned(), "1001".to_owned())],
        }
    }
}

/// An eBay Trading API answer: HTTP 200, XML.
pub(crate) fn xml(body: String) -> Reply {
    Reply { status: 200, headers: Vec::new(), content_type: "text/xml", body }
}

fn failure(code: u32, message: &str) -> Reply {
    failure_of("GetMemberMessages", code, message)
}

/// A Trading API call's `Failure` answer with error `code`.
pub(crate) fn failure_of(call: &str, code: u32, message: &str) -> Reply {
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{call}Response xmlns=\"urn:ebay:apis:eBLBaseComponents\">\
         <Ack>Failure</Ack><Errors><ShortMessage>{message}</ShortMessage><LongMessage>{message}</LongMessage>\
         <ErrorCode>{code}</ErrorCode><SeverityCode>Error</SeverityCode><ErrorClassification>RequestError</ErrorClassification>\
         </Errors><Version>1423</Version></{call}Response>\n"
    ))
}

/// The text of the first `<tag>` in `body`.
pub(crate) fn tag<'b>(body: &'b str, tag: &str) -> Option<&'b str> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..end].trim())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The text of escaped XML character data.
pub(crate) fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

fn ebay_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].000Z"))
        .unwrap_or_default()
}

impl Ebay {
    fn seller_of(&self, request: &Request) -> Option<&str> {
        let token = request.header("x-ebay-api-iaf-token")?;
        self.tokens.iter().find(|(t, _)| t == token).map(|(_, seller)| seller.as_str())
    }
}

impl Platform for Ebay {
    fn name(&self) -> &'static str {
        "ebay"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 5_000.0, burst: 5_000, per_day: Some(5_000) }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "POST" || request.path != "/ws/api.dll" {
            return Err(Reply {
                status: 404,
                headers: Vec::new(),
                content_type: "text/html",
                body: "Not Found".into(),
            });
        }
        if request.header("x-ebay-api-call-name") != Some("GetMemberMessages") {
            return Err(failure(2, "Unsupported API call."));
        }
        if request.header("x-ebay-api-siteid").is_none() || request.header("x-ebay-api-compatibility-level").is_none() {
            return Err(failure(10012, "Invalid value for header."));
        }
        if self.seller_of(request).is_none() {
            return Err(failure(931, "Auth token is invalid."));
        }
        Ok(self.app_id.clone())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        failure(518, "Call usage limit has been reached.")
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let seller = self.seller_of(request).unwrap_or_default();
        let body = String::from_utf8_lossy(&request.body);
        let time =
            |name| tag(&body, name).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()).map(|t| t.unix_timestamp());
        let (Some(start), Some(end)) = (time("StartCreationTime"), time("EndCreationTime")) else {
            return failure(20139, "StartCreationTime and EndCreationTime are required for AskSellerQuestion.");
        };
        if !matches!(tag(&body, "MailMessageType"), Some("AskSellerQuestion" | "All")) {
            return failure(37, "Input data for tag <MailMessageType> is invalid or missing.");
        }
        let entries = match tag(&body, "EntriesPerPage").and_then(|e| e.parse::<u32>().ok()).unwrap_or(25) {
            0 | 201.. => return failure(37, "Input data for tag <Pagination.EntriesPerPage> is invalid."),
            1..=49 => 25,
            50..=99 => 50,
            100..=199 => 100,
            _ => 200,
        };
        let number = tag(&body, "PageNumber").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).max(1);
        let messages = mailbox.of_account(seller);
        let answers_to = |question: &Message| -> Vec<&Message> {
            messages
                .iter()
                .filter(|m| m.from_seller && m.conversation == question.conversation && m.created >= question.created)
                .collect()
        };
        // `MessageStatus` (optional): only the exchanges with (`Answered`) or without answers.
        let status = tag(&body, "MessageStatus");
        let questions: Vec<&Message> = messages
            .iter()
            .filter(|m| !m.from_seller && m.created >= start && m.created <= end)
            .filter(|m| match status {
                Some("Answered") => !answers_to(m).is_empty(),
                Some("Unanswered") => answers_to(m).is_empty(),
                _ => true,
            })
            .collect();
        let pages = questions.len().div_ceil(entries as usize);
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetMemberMessagesResponse xmlns=\"urn:ebay:apis:eBLBaseComponents\">\n\
             <Timestamp>2026-12-03T08:00:00.000Z</Timestamp>\n<Ack>Success</Ack>\n<Version>1423</Version>\n<MemberMessage>\n",
        );
        for question in questions.iter().skip((number - 1) * entries as usize).take(entries as usize) {
            let item = question.order_id.clone().unwrap_or_else(|| question.conversation.clone());
            out.push_str(&format!(
                "<MemberMessageExchange><Item><ItemID>{}</ItemID></Item><Question><MessageType>AskSellerQuestion</MessageType>\
                 <QuestionType>General</QuestionType><DisplayToPublic>false</DisplayToPublic><SenderID>{}</SenderID>\
                 <RecipientID>{}</RecipientID><Subject>Question about item {}</Subject><Body>{}</Body><MessageID>{}</MessageID></Question>",
                escape(&item),
                escape(&question.buyer_id),
                escape(seller),
                escape(&item),
                escape(&question.text),
                escape(&question.id)
            ));
            let answers = answers_to(question);
            for answer in &answers {
                out.push_str(&format!("<Response>{}</Response>", escape(&answer.text)));
            }
            // Last modified: when the latest answer was given.
            let modified = answers.iter().map(|a| a.created).max().unwrap_or(question.created);
            out.push_str(&format!(
                "<MessageStatus>{}</MessageStatus><CreationDate>{}</CreationDate><LastModifiedDate>{}</LastModifiedDate></MemberMessageExchange>\n",
                if answers.is_empty() { "Unanswered" } else { "Answered" },
                ebay_time(question.created),
                ebay_time(modified)
            ));
        }
        out.push_str(&format!(
            "</MemberMessage>\n<PaginationResult><TotalNumberOfPages>{pages}</TotalNumberOfPages><TotalNumberOfEntries>{}</TotalNumberOfEntries></PaginationResult>\n\
             <HasMoreItems>{}</HasMoreItems>\n</GetMemberMessagesResponse>\n",
            questions.len(),
            number < pages
        ));
        xml(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange, request_of};

    #[test]
    fn only_a_known_token_with_the_call_headers_is_served_and_counted_under_its_app() {
        let ebay = Ebay::default();
        let poller = inquiry_connectors::poll::find("ebay_member_messages").unwrap();
        let good = request_of(poller, "1001", "test-ebay-user-token", None, None, None);
        assert_eq!(ebay.quota_key(&good).unwrap(), "test-ebay-app-id");

        let mut wrong_token = good.clone();
        wrong_token.headers.insert("x-ebay-api-iaf-token".into(), "someone-elses".into());
        assert!(ebay.quota_key(&wrong_token).unwrap_err().body.contains("<ErrorCode>931</ErrorCode>"));
        let mut no_call = good.clone();
        no_call.headers.remove("x-ebay-api-call-name");
        assert!(ebay.quota_key(&no_call).unwrap_err().body.contains("<ErrorCode>2</ErrorCode>"));
        let mut no_level = good;
        no_level.headers.remove("x-ebay-api-compatibility-level");
        assert!(ebay.quota_key(&no_level).is_err());
        assert!(poller.is_throttled(200, ebay.throttled(&crate::testing::admission()).body.as_bytes()));
    }

    #[test]
    fn the_poller_reads_what_the_standin_serves() {
        let (inquiries, ignored) =
            exchange(&Ebay::default(), "ebay_member_messages", "1001", "test-ebay-user-token", None, None);
        assert_eq!((inquiries, ignored), (2, 0), "two buyer questions; the seller's reply rides on the first");
    }
}
