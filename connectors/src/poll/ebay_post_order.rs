//! eBay: item-not-received inquiries buyers open on their orders, through the Post-Order API v2
//! (<https://developer.ebay.com/devzone/post-order/index.html>).
//!
//! CONFIRMED from the call references: `GET /post-order/v2/inquiry/search` takes
//! `inquiry_creation_date_range_from` / `_to` (ISO 8601, `2015-05-15T03:52:39.000Z`; from before
//! to, at most 18 months back), `limit` and `offset`, and answers `members[]`
//! (`InquirySummaryType`: `inquiryId`, `buyer`, `seller`, `itemId`, `transactionId`,
//! `inquiryStatusEnum`, `claimAmount {value, currency}`, `creationDate {value}`,
//! `respondByDate {value}`), `paginationOutput {limit, offset, totalEntries, totalPages}` and
//! `totalNumberOfInquiries`. `GET /post-order/v2/inquiry/{inquiryId}` answers the inquiry with
//! `inquiryHistoryDetails.history[]` (`action`, `actor` BUYER/SELLER/CSR/SYSTEM, `date {value}`,
//! `description`), where the buyer's comments are. Every call needs `Authorization` and
//! `X-EBAY-C-MARKETPLACE-ID`; an OAuth user token goes as `Authorization: IAF <token>` (eBay's
//! SDKs; the call page's own text on this was not readable). NOT CONFIRMED: the largest `limit`
//! (this poller asks 100) and the sort order (not relied on: a cycle reads every page of a fixed
//! creation-date window).
//!
//! A cycle: the search for inquiries created from the cursor less a minute of
//! [`super::LOOKBACK`] (a never-polled account: 7 days back) up to the cycle's start, fixed for
//! all its pages so they do not shift; then each listed inquiry's detail. The summaries travel in
//! the page token, since the detail does not name the buyer. Each buyer history entry with a
//! `description` is one message (`inquiry:<id>:<ms of the entry>`); an inquiry without one is a
//! single message `inquiry:<id>:opened` (`[item not received inquiry opened]`). Conversation
//! `inquiry:<id>`, buyer `id:<buyer>` (a user name, or eBay's immutable user id for some US users
//! since 2025-09), product the item, order `<itemId>-<transactionId>`, attributes
//! `inquiry_status`, `claim_amount`, `respond_by`. Messages the buyer adds to an inquiry after the
//! cycle that read it are not followed (the search filters by creation date only).
//!
//! Cursor: the newest `creationDate` taken (Unix milliseconds; once a window is read to its end,
//! at least its end less the look-back, so a quiet account's window follows the clock) and the ids
//! of the inquiries taken within a minute before it. The look-back lists those again, and they are
//! not read again (each costs a call); an inquiry that became visible late is. The cursor is
//! stored once the cycle's inquiries are durable: a restart mid-cycle skips nothing and reads that
//! cycle's details again (dropped by dedup). An inquiry whose detail eBay refuses (a 4xx) or that
//! does not read is taken from its summary alone, as the opening message.
//!
//! Quota: eBay publishes the Post-Order call limits per application on its API call limits page
//! (<https://developer.ebay.com/develop/get-started/api-call-limits>), which could not be read
//! here. CHOSEN: the 5,000 calls a day eBay gives every application before its Application Growth
//! Check ([`QuotaScope::App`]), 1 call per second, burst 1; override `per_day` with your app's
//! figure. Over the limit eBay's REST APIs answer HTTP 429 with error id 2001.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ebay_member_messages::{ebay_time, LOOKBACK_MS};
use super::walk::FIRST_POLL_LOOKBACK_SECONDS;
use super::{PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller, QuotaScope};
use crate::error::InputError;
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// The marketplace header every Post-Order call carries.
pub const MARKETPLACE_ID: &str = "EBAY_US";
/// Inquiries per search page.
const PAGE_SIZE: usize = 100;

/// The Post-Order inquiry poller.
pub struct EbayPostOrderInquiries;

/// The durable cursor: the newest creation time taken (Unix ms) and the inquiries taken within
/// the look-back before it, which the next cycle lists again but does not read again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Taken {
    at: i64,
    #[serde(default)]
    recent: Vec<(String, i64)>,
}

impl Taken {
    /// The stored cursor: `{"at", "recent"}`, or a bare time; `None` when never polled.
    fn parse(cursor: Option<&str>) -> Option<Taken> {
        let cursor = cursor?;
        serde_json::from_str(cursor).ok().or_else(|| Some(Taken { at: cursor.parse().ok()?, recent: Vec::new() }))
    }

    fn has(&self, inquiry_id: &str) -> bool {
        self.recent.iter().any(|(id, _)| id == inquiry_id)
    }
}

/// Where a cycle stands; serialized as the page token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cycle {
    /// Creation-date window of the search, Unix milliseconds (from already less the look-back).
    from: i64,
    to: i64,
    /// Offset of the next search page; `None` once the search is read to its end.
    search_offset: Option<usize>,
    /// Inquiries listed and not yet read in detail; the first is read next.
    todo: VecDeque<Summary>,
    /// What the cycle has taken so far, on top of the cursor it started from.
    taken: Taken,
}

impl Cycle {
    fn resume(position: &PollPosition<'_>, now: OffsetDateTime) -> Cycle {
        if let Some(cycle) = position.page.and_then(|token| serde_json::from_str::<Cycle>(token).ok()) {
            return cycle;
        }
        let now_ms = now.unix_timestamp() * 1000;
        let taken = Taken::parse(position.cursor)
            .unwrap_or(Taken { at: now_ms - FIRST_POLL_LOOKBACK_SECONDS * 1000, recent: Vec::new() });
        // Never a window that ends before it starts, whatever the stored cursor says.
        let from = taken.at.min(now_ms).saturating_sub(LOOKBACK_MS);
        Cycle { from, to: now_ms, search_offset: Some(0), todo: VecDeque::new(), taken }
    }
}

/// What the search says of one inquiry, kept until its detail is read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    #[serde(deserialize_with = "super::json_ids::id")]
    inquiry_id: String,
    #[serde(default)]
    buyer: Option<String>,
    #[serde(default, deserialize_with = "super::json_ids::opt_id")]
    item_id: Option<String>,
    /// `0` for an auction's single sale.
    #[serde(default, deserialize_with = "transaction")]
    transaction_id: Option<String>,
    #[serde(default)]
    inquiry_status_enum: Option<String>,
    #[serde(default)]
    claim_amount: Option<Amount>,
    #[serde(default)]
    creation_date: Option<EbayDate>,
    #[serde(default)]
    respond_by_date: Option<EbayDate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Amount {
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    currency: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct EbayDate {
    #[serde(default)]
    value: Option<String>,
}

impl EbayDate {
    fn time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(self.value.as_deref()?.trim(), &Rfc3339).ok()
    }
}

fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A transaction id as a string or a number (`0` included).
fn transaction<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(de)? {
        serde_json::Value::String(s) if !s.trim().is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchResponse {
    #[serde(default)]
    members: Vec<serde_json::Value>,
    #[serde(default)]
    pagination_output: Option<Pagination>,
    #[serde(default)]
    total_number_of_inquiries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pagination {
    #[serde(default)]
    total_entries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Detail {
    #[serde(default)]
    inquiry_history_details: Option<HistoryDetails>,
}

#[derive(Deserialize)]
struct HistoryDetails {
    #[serde(default)]
    history: Vec<HistoryEntry>,
}

#[derive(Deserialize)]
struct HistoryEntry {
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    date: Option<EbayDate>,
    #[serde(default)]
    description: Option<String>,
}

impl Poller for EbayPostOrderInquiries {
    fn name(&self) -> &'static str {
        "ebay_post_order_inquiries"
    }

    fn channel(&self) -> Channel {
        Channel::Ebay
    }

    fn operation(&self) -> &'static str {
        "post_order"
    }

    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 1.0, burst: 1, per_day: Some(5_000) }
    }

    fn quota_scope(&self) -> QuotaScope {
        QuotaScope::App
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let cycle = Cycle::resume(position, target.now);
        let path = match (cycle.todo.front(), cycle.search_offset) {
            (Some(inquiry), _) => format!("/post-order/v2/inquiry/{}", super::encode(&inquiry.inquiry_id)),
            (None, offset) => format!(
                "/post-order/v2/inquiry/search?inquiry_creation_date_range_from={}&inquiry_creation_date_range_to={}&limit={PAGE_SIZE}&offset={}",
                super::encode(&ebay_time(cycle.from)),
                super::encode(&ebay_time(cycle.to)),
                offset.unwrap_or(0)
            ),
        };
        let header = |name: &str, value: String| (name.to_owned(), value);
        PollRequest {
            method: super::PollMethod::Get,
            path_and_query: path,
            headers: vec![
                header("authorization", format!("IAF {}", target.credentials.access_token)),
                header("x-ebay-c-marketplace-id", MARKETPLACE_ID.to_owned()),
                header("accept", "application/json".to_owned()),
                header("content-type", "application/json".to_owned()),
            ],
            body: String::new(),
        }
    }

    /// The same eBay OAuth user token as `ebay_member_messages`, refreshed the same way.
    fn refresh_request(&self, target: &PollTarget<'_>, refresh_token: &str) -> Option<PollRequest> {
        super::ebay_member_messages::EbayMemberMessages.refresh_request(target, refresh_token)
    }

    fn parse_refresh(&self, body: &[u8], now: OffsetDateTime) -> Result<super::TokenGrant, InputError> {
        super::ebay_member_messages::EbayMemberMessages.parse_refresh(body, now)
    }

    /// eBay's REST error 2001, "Too many requests": the resource's call limit (daily) is used up.
    fn is_daily_cap(&self, status: u16, body: &[u8]) -> bool {
        status == 429
            && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|b| {
                b["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["errorId"].as_i64() == Some(2001)))
            })
    }

    fn is_throttled(&self, status: u16, _body: &[u8]) -> bool {
        status == 429
    }

    /// An inquiry whose detail eBay refuses (400 bad id, 403 not visible to this seller, 404/410
    /// gone) is taken from its summary alone, so one such inquiry cannot hold the account's cycle.
    /// Other refusals (401 token, 408 timeout...) are retried: the detail may still be read.
    fn step_over<'c>(
        &self,
        status: u16,
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Option<Result<PollPage, InputError>> {
        let reading_detail = Cycle::resume(position, target.now).todo.front().is_some();
        (reading_detail && matches!(status, 400 | 403 | 404 | 410)).then(|| self.parse(b"", target, position, context))
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let mut cycle = Cycle::resume(position, target.now);
        let mut page = PollPage::default();
        if let Some(inquiry) = cycle.todo.pop_front() {
            // A detail that does not read still has its summary: the inquiry is not lost.
            let detail = serde_json::from_slice::<Detail>(body).ok();
            take_inquiry(&inquiry, detail, target.account, &mut page, context);
        } else {
            let response: SearchResponse = serde_json::from_slice(body).map_err(InputError::from_json)?;
            let offset = cycle.search_offset.unwrap_or(0);
            let listed = response.members.len();
            for member in response.members {
                let Ok(summary) = serde_json::from_value::<Summary>(member) else {
                    page.ignored += 1; // malformed: skipped, the rest of the page is read
                    continue;
                };
                let Some(created) = summary.creation_date.as_ref().and_then(EbayDate::time).map(unix_ms) else {
                    page.ignored += 1;
                    continue;
                };
                if cycle.taken.has(&summary.inquiry_id) {
                    continue; // read by an earlier cycle, listed again by the look-back
                }
                if summary.buyer.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    page.ignored += 1; // nobody to answer
                    continue;
                }
                // A creation time past the window's end (clock skew) must not push the cursor ahead.
                let created = created.min(cycle.to);
                cycle.taken.at = cycle.taken.at.max(created);
                cycle.taken.recent.push((summary.inquiry_id.clone(), created));
                cycle.todo.push_back(summary);
            }
            // eBay may cap `limit` below what was asked: page on while it lists anything and the
            // total (when it gives one) is not reached.
            let total = response.pagination_output.and_then(|p| p.total_entries).or(response.total_number_of_inquiries);
            let more = listed > 0 && total.is_none_or(|total| offset + listed < total);
            cycle.search_offset = more.then_some(offset + listed);
        }
        if !cycle.todo.is_empty() || cycle.search_offset.is_some() {
            page.next_page = Some(serde_json::to_string(&cycle).expect("a cycle serializes"));
        } else {
            // The window is read to its end: a quiet account's cursor follows the clock (less the
            // look-back), so its window never reaches back past what eBay serves.
            cycle.taken.at = cycle.taken.at.max(cycle.to.saturating_sub(LOOKBACK_MS));
        }
        // The runner keeps the cursor with the cycle's last page: by then every listed inquiry is read.
        let horizon = cycle.taken.at.saturating_sub(LOOKBACK_MS);
        let mut taken = cycle.taken;
        taken.recent.retain(|(_, created)| *created >= horizon);
        page.cursor = Some(serde_json::to_string(&taken).expect("a cursor serializes"));
        Ok(page)
    }
}

/// The messages of one inquiry: each buyer comment, or the opening when there is none (or no
/// detail could be read).
fn take_inquiry<'c>(
    inquiry: &Summary,
    detail: Option<Detail>,
    account: &str,
    page: &mut PollPage,
    context: &mut dyn FnMut() -> NormalizeContext<'c>,
) {
    let buyer = inquiry.buyer.clone().unwrap_or_default();
    let id = &inquiry.inquiry_id;
    let opened = inquiry.creation_date.as_ref().and_then(EbayDate::time).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let history = detail.and_then(|d| d.inquiry_history_details).map(|h| h.history).unwrap_or_default();
    let mut comments: Vec<(String, OffsetDateTime, String)> = Vec::new();
    for entry in history {
        let text = entry.description.as_deref().map(str::trim).unwrap_or_default();
        if entry.actor.as_deref() != Some("BUYER") || text.is_empty() {
            page.ignored += 1; // the seller's, eBay's and the system's entries
            continue;
        }
        let at = entry.date.as_ref().and_then(EbayDate::time).unwrap_or(opened);
        comments.push((format!("inquiry:{id}:{}", unix_ms(at)), at, text.to_owned()));
    }
    if comments.is_empty() {
        comments.push((format!("inquiry:{id}:opened"), opened, "[item not received inquiry opened]".to_owned()));
    }
    for (message_id, at, text) in comments {
        let mut draft = Draft::message(
            Channel::Ebay,
            account,
            message_id,
            format!("inquiry:{id}"),
            format!("id:{buyer}"),
            text,
            at,
        )
        .sent_by(&buyer);
        draft.product_ids = inquiry.item_id.iter().cloned().collect();
        draft.order_id = inquiry.item_id.as_ref().zip(inquiry.transaction_id.as_ref()).map(|(i, t)| format!("{i}-{t}"));
        let attributes = &mut draft.attributes;
        attributes.insert("inquiry_id".to_owned(), id.clone().into());
        if let Some(status) = &inquiry.inquiry_status_enum {
            attributes.insert("inquiry_status".to_owned(), status.clone().into());
        }
        if let Some(Amount { value: Some(value), currency }) = &inquiry.claim_amount {
            let value = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            attributes.insert(
                "claim_amount".to_owned(),
                format!("{value} {}", currency.as_deref().unwrap_or("")).trim().into(),
            );
        }
        if let Some(by) = inquiry.respond_by_date.as_ref().and_then(|d| d.value.clone()) {
            attributes.insert("respond_by".to_owned(), by.into());
        }
        page.inquiries.push(draft.into_inquiry(&context()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::PollCredentials;
    use time::macros::datetime;

    #[test]
    fn only_an_inquiry_the_platform_will_never_show_is_stepped_over() {
        let target = PollTarget {
            account: "seller1",
            credentials: PollCredentials { access_token: "t", app_key: None, app_secret: None },
            now: datetime!(2026-12-03 08:00:00 UTC),
            wants_answers: false,
        };
        let cycle = r#"{"from":1796280000000,"to":1796284800000,"search_offset":null,"todo":[{"inquiryId":"5001","buyer":"b1"}],"taken":{"at":1796280000000}}"#;
        let reading_detail = PollPosition { cursor: None, page: Some(cycle) };
        let mut context = || NormalizeContext { received_at: datetime!(2026-12-03 08:00:01 UTC), trace_id: "t" };
        for status in [400, 403, 404, 410] {
            let page = EbayPostOrderInquiries.step_over(status, &target, &reading_detail, &mut context);
            let page = page.unwrap_or_else(|| panic!("{status} is stepped over")).unwrap();
            assert_eq!(page.inquiries.len(), 1, "{status}: taken from its summary");
        }
        // An expired token or a timeout says nothing about the inquiry: asked again.
        for status in [401, 408, 409, 429] {
            assert!(
                EbayPostOrderInquiries.step_over(status, &target, &reading_detail, &mut context).is_none(),
                "{status}"
            );
        }
        // Nor is a refused search stepped over.
        let searching = PollPosition::default();
        assert!(EbayPostOrderInquiries.step_over(404, &target, &searching, &mut context).is_none());
    }
}
