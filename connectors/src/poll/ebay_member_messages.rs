//! eBay: buyers' "Ask Seller a Question" messages through the Trading API call
//! `GetMemberMessages` (<https://developer.ebay.com/Devzone/XML/docs/Reference/eBay/GetMemberMessages.html>,
//! request and response types `GetMemberMessagesRequestType`/`ResponseType`,
//! `MemberMessageExchangeType`, `MemberMessageType`, Trading API version 1423).
//!
//! `POST /ws/api.dll` with headers `X-EBAY-API-CALL-NAME: GetMemberMessages`,
//! `X-EBAY-API-SITEID`, `X-EBAY-API-COMPATIBILITY-LEVEL` and `X-EBAY-API-IAF-TOKEN: <OAuth user
//! token>`; the XML body names `MailMessageType` `AskSellerQuestion`, the date range
//! `StartCreationTime`..`EndCreationTime` and `Pagination` (`EntriesPerPage` 200, the maximum;
//! `PageNumber`). CONFIRMED from the call reference: ASQ messages need an ItemID or a date
//! range; `EntriesPerPage` is 25, 50, 100 or 200; the answer holds
//! `MemberMessage.MemberMessageExchange[]` with `Item.ItemID`, `Question` (`MessageType`,
//! `QuestionType`, `SenderID`, `SenderEmail`, `Subject`, `Body`, `MessageID`,
//! `ParentMessageID`), `Response[]`, `MessageStatus`, `CreationDate`, `MessageMedia[]`, and
//! `PaginationResult.TotalNumberOfPages`, `HasMoreItems`. NOTE: the response type's page also says
//! GetMemberMessages "does not return messages when ... MailMessageType is AskSellerQuestion",
//! which contradicts the call page; this poller follows the call page and ignores any exchange
//! whose `Question.MessageType` is not `AskSellerQuestion`, so switching the request to `All`
//! (`MAIL_MESSAGE_TYPE`) is a one-line change if production answers nothing.
//! INFERRED: the order of exchanges (not documented; the cycle reads every page of a fixed date
//! range, so order does not matter); a call over the quota answers `Ack` `Failure` with error
//! code 518.
//!
//! What becomes an inquiry: each exchange whose question was sent by someone other than the
//! seller (`SenderID` is not the polled account) and has a text `Body`. Buyer identity
//! `id:<SenderID>`; `ItemID` is the product; `QuestionType` goes to the `question_type`
//! attribute; `Subject` and `SenderEmail` are personal data. The conversation is the question's
//! `ParentMessageID` (a follow-up) or its own `MessageID`.
//!
//! Cursor: a [`Watermark`](super::watermark) in Unix milliseconds of `CreationDate` with the
//! `MessageID`s taken at that instant. A cycle asks `StartCreationTime` = the watermark less a
//! minute of [`super::LOOKBACK`] (a never-polled account: 7 days back) up to `EndCreationTime` =
//! the cycle's start, fixed for all its pages (carried in the page token with the page number), so
//! pages do not shift while the cycle reads them. A restart skips nothing (the boundary instant and
//! the minute before it are asked again); what is taken again is dropped by the pipeline's dedup.
//!
//! The seller's answers (only when reach-out runs, [`PollTarget::wants_answers`]): after the
//! last page of the questions, the cycle reads the questions of the last [`ANSWERS_WINDOW`] again
//! with `MessageStatus` `Answered`. eBay gives an answer (`Response[]`, text only) no id and no
//! time of its own: each answered exchange becomes one [`SellerReply`] at its
//! `LastModifiedDate` (the latest answer's time; the first answer may be earlier), in reply to
//! the question's `MessageID`, with the number of responses ([`SellerReply::responses`]): the
//! gateway's own acknowledgement (an `AddMemberMessageRTQ` answer) is one of them, so an exchange
//! holding only it answers nothing. A failed answer in this phase ends it with an empty page: the
//! cursor the questions moved is kept, and the next cycle reads the answers again. It costs one
//! call per 200 answered questions per cycle, from the same daily quota.
//!
//! Quota (<https://developer.ebay.com/develop/get-started/api-call-limits>, and the Developers
//! Program FAQ: "keys are set to a maximum of 5,000 API calls per day"): the Trading API's default
//! limit is 5,000 calls per day per application, shared by every seller of the app
//! ([`QuotaScope::App`]). eBay publishes no per-second limit for GetMemberMessages (the only
//! short-duration limit in the messaging calls is AddMemberMessageRTQ's 75 calls per 60 s per
//! seller). CHOSEN: 1 call per second, burst 1: the daily limiter (5,000 refilled over 24 h,
//! one call every 17 s on average) is what paces the poller; the per-second limit only keeps a
//! multi-page cycle from bursting and stays far under the one short-duration figure eBay gives.
//! Apps past the Application Growth Check override `per_day`.

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use super::walk::FIRST_POLL_LOOKBACK_SECONDS;
use super::watermark::Watermark;
use super::{PollMethod, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller, QuotaScope};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::webhook::SellerReply;
use crate::{Draft, NormalizeContext};

/// The Trading API schema version the requests declare.
pub const COMPATIBILITY_LEVEL: &str = "1423";
/// The eBay site the calls name (0: US; messages are returned for every site of the seller).
pub const SITE_ID: &str = "0";
/// The message type asked for.
pub const MAIL_MESSAGE_TYPE: &str = "AskSellerQuestion";
/// Exchanges per page (the maximum eBay accepts).
const ENTRIES_PER_PAGE: u32 = 200;
/// How far back (by the question's creation) a cycle looks for the seller's answers: an answer
/// to an older question is not seen. A week: first-response SLAs run hours to a few business
/// days (a long weekend and holidays included).
pub const ANSWERS_WINDOW: time::Duration = time::Duration::days(7);

/// The id of the answers an exchange holds when it holds `responses` of them (eBay names no
/// answer; a new answer makes a new id).
pub fn answer_key(question_id: &str, responses: usize) -> String {
    format!("ebay-rtq:{question_id}:{responses}")
}

/// The GetMemberMessages poller.
pub struct EbayMemberMessages;

/// Where a cycle stands; serialized as the page token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cycle {
    /// Page to ask, from 1.
    page: u32,
    /// The cycle's `EndCreationTime`, Unix milliseconds.
    end: i64,
    /// The cycle's starting watermark.
    since: Watermark,
    /// The watermark after what the cycle took so far.
    mark: Watermark,
    /// In the answers phase (the answered questions of the last [`ANSWERS_WINDOW`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    answers: bool,
}

impl Cycle {
    /// Like [`Cycle::resume`], but a token or cursor this poller did not write starts the cycle
    /// again, the same way for the request and the parse of its answer.
    fn resume_or_restart(position: &PollPosition<'_>, now: OffsetDateTime) -> Cycle {
        Cycle::resume(position, now)
            .or_else(|_| Cycle::resume(&PollPosition { cursor: position.cursor, page: None }, now))
            .or_else(|_| Cycle::resume(&PollPosition { cursor: None, page: None }, now))
            .expect("a cycle without cursor or token always starts")
    }

    fn resume(position: &PollPosition<'_>, now: OffsetDateTime) -> Result<Cycle, InputError> {
        if let Some(token) = position.page {
            return serde_json::from_str(token).map_err(|_| {
                InputError::new(InputErrorCode::InvalidValue, "the page token is not a cycle state").field("page")
            });
        }
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        let since = Watermark::parse(position.cursor)?
            .unwrap_or_else(|| Watermark::starting(now_ms - FIRST_POLL_LOOKBACK_SECONDS * 1000));
        Ok(Cycle { page: 1, end: now_ms.max(since.at), mark: since.clone(), since, answers: false })
    }
}

/// [`super::LOOKBACK`] in milliseconds: how far before the cursor a cycle asks again.
pub(super) const LOOKBACK_MS: i64 = super::LOOKBACK.whole_milliseconds() as i64;

/// eBay's `dateTime` in UTC with milliseconds.
pub(super) fn ebay_time(unix_ms: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"))
        .unwrap_or_default()
}

impl Poller for EbayMemberMessages {
    fn name(&self) -> &'static str {
        "ebay_member_messages"
    }

    fn channel(&self) -> Channel {
        Channel::Ebay
    }

    fn operation(&self) -> &'static str {
        "trading"
    }

    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 1.0, burst: 1, per_day: Some(5_000) }
    }

    fn quota_scope(&self) -> QuotaScope {
        QuotaScope::App
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let cycle = Cycle::resume_or_restart(position, target.now);
        let (status, start) = if cycle.answers {
            ("<MessageStatus>Answered</MessageStatus>\n", cycle.end - ANSWERS_WINDOW.whole_milliseconds() as i64)
        } else {
            ("", cycle.since.at - LOOKBACK_MS)
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
             <GetMemberMessagesRequest xmlns=\"urn:ebay:apis:eBLBaseComponents\">\n\
             <MailMessageType>{MAIL_MESSAGE_TYPE}</MailMessageType>\n\
             {status}<StartCreationTime>{}</StartCreationTime>\n\
             <EndCreationTime>{}</EndCreationTime>\n\
             <Pagination><EntriesPerPage>{ENTRIES_PER_PAGE}</EntriesPerPage><PageNumber>{}</PageNumber></Pagination>\n\
             </GetMemberMessagesRequest>\n",
            ebay_time(start),
            ebay_time(cycle.end),
            cycle.page
        );
        let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        PollRequest {
            method: PollMethod::Post,
            path_and_query: "/ws/api.dll".to_owned(),
            headers: vec![
                header("x-ebay-api-call-name", "GetMemberMessages"),
                header("x-ebay-api-siteid", SITE_ID),
                header("x-ebay-api-compatibility-level", COMPATIBILITY_LEVEL),
                header("x-ebay-api-iaf-token", target.credentials.access_token),
                header("content-type", "text/xml"),
            ],
            body,
        }
    }

    /// eBay OAuth (<https://developer.eBay.com/api-docs/static/oauth-refresh-token-request.html>):
    /// user access tokens last two hours; `POST /identity/v1/oauth2/token` with HTTP Basic
    /// `app id:cert id` (`app_key`:`app_secret`) and `grant_type=refresh_token` answers
    /// `{access_token, expires_in}`; the refresh token itself lasts 18 months and is not rotated.
    fn refresh_request(&self, target: &PollTarget<'_>, refresh_token: &str) -> Option<PollRequest> {
        use base64::Engine;
        let credentials = target.credentials;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            credentials.app_key.unwrap_or_default(),
            credentials.app_secret.unwrap_or_default()
        ));
        Some(PollRequest {
            method: PollMethod::Post,
            path_and_query: "/identity/v1/oauth2/token".to_owned(),
            headers: vec![
                ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
                ("authorization".to_owned(), format!("Basic {basic}")),
            ],
            body: super::form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]),
        })
    }

    fn parse_refresh(&self, body: &[u8], _now: time::OffsetDateTime) -> Result<super::TokenGrant, InputError> {
        super::oauth_grant(body)
    }

    /// Error 518: the application's call limit (a daily cap) is used up.
    fn is_daily_cap(&self, _status: u16, body: &[u8]) -> bool {
        const USAGE_LIMIT: &[u8] = b"<ErrorCode>518</ErrorCode>";
        body.windows(USAGE_LIMIT.len()).any(|w| w == USAGE_LIMIT)
    }

    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        status == 429 || self.is_daily_cap(status, body)
    }

    /// The Trading API answers an expired or invalid token with HTTP 200, `Ack` Failure and
    /// error 931 ("Auth token is invalid") or 21917053 ("Token has expired").
    fn is_token_refused(&self, status: u16, body: &[u8]) -> bool {
        let has = |code: &[u8]| body.windows(code.len()).any(|w| w == code);
        status == 401 || has(b"<ErrorCode>931</ErrorCode>") || has(b"<ErrorCode>21917053</ErrorCode>")
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let mut cycle = Cycle::resume_or_restart(position, target.now);
        let text = std::str::from_utf8(body)
            .map_err(|_| InputError::new(InputErrorCode::InvalidUtf8, "the answer is not UTF-8"))?;
        // quick-xml's errors can quote the document: not passed on (they reach the logs).
        let response: Response = quick_xml::de::from_str(text)
            .map_err(|_| InputError::new(InputErrorCode::MalformedJson, "not a GetMemberMessages answer"))?;
        if cycle.answers && !matches!(response.ack.as_str(), "Success" | "Warning") {
            // The answers are read again next cycle; the questions' cursor moves now.
            let code = response.errors.first().and_then(|e| e.error_code.clone()).unwrap_or_default();
            let refused = Some(format!("the answered questions: eBay answered {} ({code})", response.ack));
            return Ok(PollPage { cursor: Some(cycle.mark.to_cursor()), refused, ..PollPage::default() });
        }
        if !matches!(response.ack.as_str(), "Success" | "Warning") {
            let code = response.errors.first().and_then(|e| e.error_code.clone()).unwrap_or_default();
            return Err(InputError::new(
                InputErrorCode::InvalidValue,
                format!("eBay answered {} ({code})", response.ack),
            )
            .field("Ack"));
        }
        let mut page = PollPage::default();
        let exchanges = response.member_message.map(|m| m.exchanges).unwrap_or_default();
        let received = exchanges.len();
        for exchange in exchanges {
            if cycle.answers {
                match answer_of(exchange, target.account) {
                    Some(reply) => page.replies.push(reply),
                    None => page.ignored += 1,
                }
                continue;
            }
            let Some(question) = exchange.question else {
                page.ignored += 1;
                continue;
            };
            let created = exchange.creation_date.as_deref().and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok());
            let at = created.map(|c| (c.unix_timestamp_nanos() / 1_000_000) as i64);
            let asq = question.message_type.as_deref().is_none_or(|t| t == MAIL_MESSAGE_TYPE);
            let sender = question.sender_id.filter(|s| !s.is_empty() && s != target.account);
            let text = question.body.filter(|b| !b.trim().is_empty());
            let (Some(created), Some(at), Some(id), Some(sender), Some(text), true) =
                (created, at, question.message_id, sender, text, asq)
            else {
                page.ignored += 1;
                continue;
            };
            // Within the look-back, taken again (a question eBay indexed late must not be lost;
            // what was taken before is dropped by the pipeline's dedup).
            if !cycle.since.is_new(at, &id) && at < cycle.since.at - LOOKBACK_MS {
                page.ignored += 1;
                continue;
            }
            cycle.mark.take(at, &id);
            let conversation = question.parent_message_id.filter(|p| !p.is_empty()).unwrap_or_else(|| id.clone());
            let mut draft =
                Draft::message(Channel::Ebay, target.account, id, conversation, format!("id:{sender}"), text, created)
                    .sent_by(&sender);
            draft.buyer_email = question.sender_email.filter(|e| e.contains('@'));
            draft.subject = question.subject.filter(|s| !s.is_empty());
            draft.product_ids = exchange.item.and_then(|i| i.item_id).into_iter().collect();
            if let Some(kind) = question.question_type.filter(|q| !q.is_empty()) {
                draft.attributes.insert("question_type".to_owned(), serde_json::Value::String(kind));
            }
            page.inquiries.push(draft.into_inquiry(&context()));
        }
        let pages = response.pagination_result.and_then(|p| p.total_number_of_pages).unwrap_or(0);
        let more = cycle.page < pages || (response.has_more_items == Some(true) && received > 0);
        if more {
            cycle.page += 1;
            page.next_page = serde_json::to_string(&cycle).ok();
        } else if target.wants_answers && !cycle.answers {
            (cycle.answers, cycle.page) = (true, 1);
            page.next_page = serde_json::to_string(&cycle).ok();
        }
        page.cursor = Some(cycle.mark.to_cursor());
        Ok(page)
    }
}

/// The seller's answer in an answered `exchange` (see the module doc), if it is one: a buyer's
/// question (not the seller's own message) with at least one response and its time.
fn answer_of(exchange: Exchange, account: &str) -> Option<SellerReply> {
    let question = exchange.question?;
    let buyer = question.sender_id.filter(|s| !s.is_empty() && s != account)?;
    let id = question.message_id.filter(|id| !id.is_empty())?;
    let replied_at = exchange.last_modified_date.as_deref().and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok())?;
    let responses = exchange.responses.len();
    if responses == 0 || exchange.message_status.as_deref() == Some("Unanswered") {
        return None;
    }
    Some(SellerReply {
        account: account.to_owned(),
        buyer_id: buyer,
        replied_at,
        message_id: Some(answer_key(&id, responses)),
        in_reply_to: Some(id),
        responses: Some(responses),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    /// Required: a body without it (an HTML error page, another call's answer) is refused.
    ack: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    member_message: Option<MemberMessage>,
    #[serde(default)]
    pagination_result: Option<PaginationResult>,
    #[serde(default)]
    has_more_items: Option<bool>,
}

/// One `Errors` entry of a Trading API answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ErrorItem {
    #[serde(default)]
    pub error_code: Option<String>,
}

#[derive(Deserialize)]
struct MemberMessage {
    #[serde(rename = "MemberMessageExchange", default)]
    exchanges: Vec<Exchange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Exchange {
    #[serde(default)]
    item: Option<Item>,
    #[serde(default)]
    question: Option<Question>,
    #[serde(rename = "Response", default)]
    responses: Vec<String>,
    #[serde(default)]
    message_status: Option<String>,
    #[serde(default)]
    creation_date: Option<String>,
    #[serde(default)]
    last_modified_date: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(rename = "ItemID", default)]
    item_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Question {
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default)]
    question_type: Option<String>,
    #[serde(rename = "SenderID", default)]
    sender_id: Option<String>,
    #[serde(default)]
    sender_email: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(rename = "MessageID", default)]
    message_id: Option<String>,
    #[serde(rename = "ParentMessageID", default)]
    parent_message_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PaginationResult {
    #[serde(default)]
    total_number_of_pages: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::PollCredentials;
    use time::macros::datetime;

    fn parse(body: &str) -> Result<PollPage, InputError> {
        let target = PollTarget {
            account: "seller1",
            credentials: PollCredentials { access_token: "t", app_key: None, app_secret: None },
            now: datetime!(2026-12-03 08:00:00 UTC),
            wants_answers: false,
        };
        let mut context = || NormalizeContext { received_at: datetime!(2026-12-03 08:00:01 UTC), trace_id: "t" };
        EbayMemberMessages.parse(body.as_bytes(), &target, &PollPosition::default(), &mut context)
    }

    #[test]
    fn an_expired_token_is_told_from_other_failures() {
        let failure = |code: &str| {
            format!("<?xml version=\"1.0\"?><GetMemberMessagesResponse xmlns=\"urn:ebay:apis:eBLBaseComponents\"><Ack>Failure</Ack><Errors><ErrorCode>{code}</ErrorCode></Errors></GetMemberMessagesResponse>")
        };
        assert!(EbayMemberMessages.is_token_refused(200, failure("931").as_bytes()));
        assert!(EbayMemberMessages.is_token_refused(200, failure("21917053").as_bytes()));
        assert!(!EbayMemberMessages.is_token_refused(200, failure("518").as_bytes()));
        assert!(!EbayMemberMessages.is_token_refused(200, failure("9310").as_bytes()));
        assert!(EbayMemberMessages.is_token_refused(401, b""));
    }

    #[test]
    fn truncated_foreign_and_failed_answers_are_errors() {
        for body in [
            "",
            "<html>502 Bad Gateway</html>",
            "{\"data\": [",
            "<?xml version=\"1.0\"?><GetMemberMessagesResponse xmlns=\"urn:ebay:apis:eBLBaseComponents\"><Ack>Success</Ack><MemberMessage><MemberMessageExchange>",
            "<GetMemberMessagesResponse><Ack>Failure</Ack><Errors><ErrorCode>931</ErrorCode></Errors></GetMemberMessagesResponse>",
        ] {
            assert!(parse(body).is_err(), "accepted {body:?}");
        }
        assert!(EbayMemberMessages.is_throttled(200, b"<Errors><ErrorCode>518</ErrorCode></Errors>"));
        assert!(!EbayMemberMessages.is_throttled(200, b"<Errors><ErrorCode>931</ErrorCode></Errors>"));
    }

    #[test]
    fn a_failed_answers_phase_ends_the_cycle_with_the_questions_cursor() {
        let token = r#"{"page":1,"end":1796284800000,"since":{"at":1796283000000,"seen":[]},"mark":{"at":1796284770000,"seen":["q1"]},"answers":true}"#;
        let target = PollTarget {
            account: "seller1",
            credentials: PollCredentials { access_token: "t", app_key: None, app_secret: None },
            now: datetime!(2026-12-03 08:00:00 UTC),
            wants_answers: true,
        };
        let position = PollPosition { cursor: None, page: Some(token) };
        assert!(EbayMemberMessages
            .request(&target, &position)
            .body
            .contains("<MessageStatus>Answered</MessageStatus>"));
        let failure = "<GetMemberMessagesResponse><Ack>Failure</Ack><Errors><ErrorCode>10007</ErrorCode></Errors></GetMemberMessagesResponse>";
        let mut context = || NormalizeContext { received_at: datetime!(2026-12-03 08:00:01 UTC), trace_id: "t" };
        let page = EbayMemberMessages.parse(failure.as_bytes(), &target, &position, &mut context).unwrap();
        assert!(page.next_page.is_none() && page.replies.is_empty() && page.inquiries.is_empty());
        assert_eq!(page.refused.as_deref(), Some("the answered questions: eBay answered Failure (10007)"));
        assert_eq!(page.cursor.unwrap(), r#"{"at":1796284770000,"seen":["q1"]}"#);
        // In the questions phase the same answer is an error: the cycle is tried again.
        assert!(EbayMemberMessages.parse(failure.as_bytes(), &target, &PollPosition::default(), &mut context).is_err());
    }

    #[test]
    fn an_empty_success_keeps_the_cycle_start_as_cursor() {
        let page = parse("<GetMemberMessagesResponse><Ack>Success</Ack></GetMemberMessagesResponse>").unwrap();
        assert!(page.inquiries.is_empty() && page.next_page.is_none());
        let week_ago_ms = datetime!(2026-11-26 08:00:00 UTC).unix_timestamp() * 1000;
        assert_eq!(page.cursor.unwrap(), format!("{{\"at\":{week_ago_ms},\"seen\":[]}}"));
    }
}
