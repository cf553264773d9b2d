//! Etsy: the note a buyer leaves with an order (`message_from_buyer`), read from the shop's
//! receipts with Open API v3 `getShopReceipts`
//! (<https://developers.etsy.com/documentation/reference/#operation/getShopReceipts>). Etsy's API
//! has no conversations endpoint; conversations reach the gateway by e-mail (IMAP).
//!
//! `GET /v3/application/shops/{shop_id}/receipts?min_last_modified={cursor}&sort_on=updated&sort_order=asc&limit=100&offset={page}`
//! with `x-api-key: <keystring>` and `Authorization: Bearer <token>`. The cursor is the newest
//! `updated_timestamp` seen; a cycle reads the receipts modified at or after it, less a minute of
//! [`super::LOOKBACK`], paging by keyset (each page starts at the previous page's newest
//! modification time; by offset only within one second), so a receipt modified during the cycle
//! shifts nothing out of reach. Receipts seen again are dropped by the pipeline's dedup. A receipt whose
//! note is empty is ignored; a receipt modified later (shipped, refunded) gives the same message
//! id and is deduplicated.
//!
//! Quota (<https://developers.etsy.com/documentation/essentials/rate-limits>): per app (API key)
//! for all its shops, 10 requests per second and 10,000 per rolling 24 hours; answers carry
//! `x-limit-per-second`, `x-limit-per-day` and `x-remaining-today`, which the runner follows.

use serde::Deserialize;

use super::{Credential, PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller, QuotaScope};
use crate::error::InputError;
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// Receipts per page (Etsy's maximum).
const PAGE_SIZE: usize = 100;

/// The receipts poller.
pub struct EtsyReceipts;

impl Poller for EtsyReceipts {
    fn name(&self) -> &'static str {
        "etsy_receipts"
    }

    fn channel(&self) -> Channel {
        Channel::Etsy
    }

    fn operation(&self) -> &'static str {
        "requests"
    }

    /// 10 requests per second and 10,000 per 24 hours per app; the second is counted as a
    /// window, so no burst on top of the rate
    /// (<https://developers.etsy.com/documentation/essentials/rate-limits>).
    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 10.0, burst: 1, per_day: Some(10_000) }
    }

    fn quota_scope(&self) -> QuotaScope {
        QuotaScope::App
    }

    fn required_credentials(&self) -> &'static [Credential] {
        &[Credential::AppKey]
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let (since, offset) = window(position, target.now);
        let path = format!(
            "/v3/application/shops/{}/receipts?min_last_modified={since}&sort_on=updated&sort_order=asc&limit={PAGE_SIZE}&offset={offset}",
            super::encode(target.account),
        );
        let mut request = PollRequest::get_bearer(path, target.credentials.access_token);
        request.headers.push(("x-api-key".to_owned(), target.credentials.app_key.unwrap_or_default().to_owned()));
        request
    }

    fn token_base_url(&self) -> Option<&'static str> {
        Some("https://api.etsy.com")
    }

    /// Etsy OAuth 2.0 (<https://developers.etsy.com/documentation/essentials/authentication>):
    /// access tokens last an hour; `POST /v3/public/oauth/token` with `grant_type=refresh_token`,
    /// `client_id` (the keystring) and `refresh_token` answers `{access_token, expires_in,
    /// refresh_token}` (a new refresh token each time).
    fn refresh_request(&self, target: &PollTarget<'_>, refresh_token: &str) -> Option<PollRequest> {
        let client_id = target.credentials.app_key.unwrap_or_default();
        Some(PollRequest {
            method: super::PollMethod::Post,
            path_and_query: "/v3/public/oauth/token".to_owned(),
            headers: vec![("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned())],
            body: super::form(&[
                ("grant_type", "refresh_token"),
                ("client_id", client_id),
                ("refresh_token", refresh_token),
            ]),
        })
    }

    fn parse_refresh(&self, body: &[u8], _now: time::OffsetDateTime) -> Result<super::TokenGrant, InputError> {
        super::oauth_grant(body)
    }

    fn is_throttled(&self, status: u16, _body: &[u8]) -> bool {
        status == 429
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let response: Response = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let (since, offset) = window(position, target.now);
        let mut page = PollPage::default();
        let mut newest: Option<i64> = None;
        let received = response.results.len();
        for receipt in response.results {
            newest = newest.max(Some(receipt.updated_timestamp));
            let note = receipt.message_from_buyer.as_deref().map(str::trim).unwrap_or_default();
            let Some(created) = crate::webhook::from_unix(receipt.created_timestamp, false) else {
                page.ignored += 1;
                continue;
            };
            if note.is_empty() {
                page.ignored += 1;
                continue;
            }
            let receipt_id = receipt.receipt_id.to_string();
            let buyer = receipt.buyer_user_id.to_string();
            let mut draft = Draft::message(
                Channel::Etsy,
                target.account,
                format!("receipt:{receipt_id}"),
                format!("receipt:{receipt_id}"),
                format!("id:{buyer}"),
                note.to_owned(),
                created,
            )
            .sent_by(&buyer);
            draft.buyer_name = receipt.name.filter(|n| !n.is_empty());
            draft.buyer_email = receipt.buyer_email.filter(|e| !e.is_empty());
            draft.country = receipt.country_iso.filter(|c| c.len() == 2).map(|c| c.to_ascii_uppercase());
            draft.order_id = Some(receipt_id);
            draft.product_ids =
                receipt.transactions.iter().filter_map(|t| t.listing_id).map(|l| l.to_string()).collect();
            page.inquiries.push(draft.into_inquiry(&context()));
        }
        if received == PAGE_SIZE && offset + PAGE_SIZE < response.count {
            // Keyset paging: the next page starts at this page's newest modification time, so a
            // receipt modified meanwhile (moved to the end) shifts nothing out of reach. Only a
            // page that is one second throughout moves on by offset.
            let newest = newest.unwrap_or(since);
            let next_offset = if newest == since { offset + PAGE_SIZE } else { 0 };
            page.next_page = Some(format!("{newest}:{next_offset}"));
        }
        page.cursor = newest.map(|t| t.to_string());
        // Only forward: the look-back can return nothing newer than the cursor.
        if page.cursor.as_deref().zip(position.cursor).is_some_and(|(new, old)| parse(new) < parse(old)) {
            page.cursor = None;
        }
        Ok(page)
    }
}

/// `min_last_modified` and `offset` of the request at `position`: the page token
/// (`<modified>:<offset>`), else the cursor less the look-back, else (a shop never polled) the
/// last 7 days like every poller's first poll, not the shop's whole order history. That start is
/// whole hours, so the request and the parsing of its answer (a moment later) agree on it.
fn window(position: &PollPosition<'_>, now: time::OffsetDateTime) -> (i64, usize) {
    let token =
        position.page.and_then(|p| p.split_once(':')).and_then(|(t, o)| Some((t.parse().ok()?, o.parse().ok()?)));
    let first_poll = || {
        let start = now.unix_timestamp() - super::walk::FIRST_POLL_LOOKBACK_SECONDS;
        start - start.rem_euclid(3600)
    };
    let since = || position.cursor.map_or_else(first_poll, |c| parse(c) - super::LOOKBACK.whole_seconds()).max(0);
    token.unwrap_or_else(|| (since(), 0))
}

fn parse(timestamp: &str) -> i64 {
    timestamp.parse().unwrap_or(0)
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    count: usize,
    #[serde(default)]
    results: Vec<Receipt>,
}

#[derive(Deserialize)]
struct Receipt {
    receipt_id: u64,
    buyer_user_id: u64,
    #[serde(default)]
    buyer_email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    country_iso: Option<String>,
    #[serde(default)]
    message_from_buyer: Option<String>,
    created_timestamp: i64,
    updated_timestamp: i64,
    #[serde(default)]
    transactions: Vec<Transaction>,
}

#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    listing_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shop_never_polled_is_read_from_seven_days_back_not_from_its_first_receipt() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_764_633_540).unwrap();
        let at = |cursor, page| window(&PollPosition { cursor, page }, now);
        let (since, offset) = at(None, None);
        assert_eq!(offset, 0);
        assert!(since > 0, "not the whole order history");
        let week = super::super::walk::FIRST_POLL_LOOKBACK_SECONDS;
        assert!((now.unix_timestamp() - week - 3600..=now.unix_timestamp() - week).contains(&since), "{since}");
        assert_eq!(since % 3600, 0, "whole hours: the answer's parsing a moment later agrees");
        // A cursor: from it, less the look-back; a page token: exactly where it says.
        assert_eq!(at(Some("1764600000"), None), (1_764_600_000 - super::super::LOOKBACK.whole_seconds(), 0));
        assert_eq!(at(Some("1764600000"), Some("1764610000:200")), (1_764_610_000, 200));
    }
}
