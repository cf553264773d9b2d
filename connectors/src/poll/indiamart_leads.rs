//! IndiaMART (B2B marketplace, RFQs): buyer enquiries through the Lead Manager CRM API v2
//! (<https://help.indiamart.com/knowledge-base/lms-crm-integration-v2/>, and "Why migrate to
//! CRM API Version 2").
//!
//! `GET /wservce/crm/crmListing/v2/?glusr_crm_key=<key>&start_time=<t>&end_time=<t>` on
//! `https://mapi.indiamart.com`; the key (generated in the seller's Lead Manager, one per
//! seller) is the account's `access_token`. CONFIRMED: the answer is JSON with the five keys
//! `CODE`, `STATUS`, `MESSAGE`, `TOTAL_RECORDS`, `RESPONSE` (the leads: direct enquiries,
//! BuyLeads bought, PNS calls), errors carry their code in `CODE` with HTTP 200. INFERRED from
//! integrators' code (the official tables could not be read here): the lead fields
//! `UNIQUE_QUERY_ID`, `QUERY_TYPE` (`W` direct enquiry, `B` BuyLead, `P` PNS call, ...),
//! `QUERY_TIME` (`2026-11-24 14:44:27`, IST), `SENDER_NAME`, `SENDER_MOBILE`, `SENDER_EMAIL`,
//! `SENDER_COMPANY`, `SENDER_COUNTRY_ISO`, `SUBJECT`, `QUERY_PRODUCT_NAME`, `QUERY_MESSAGE`;
//! `CODE` 204 for no leads, 401 for a bad key, 429 for calling too often; times in
//! `DD-Mon-YYYYHH:MM:SS` IST; a window of at most 7 days; no paging (a window's leads come at once).
//!
//! Each lead is one inquiry of channel `rfq`: message and conversation id `UNIQUE_QUERY_ID`,
//! buyer `email:<address>` (else `phone:<mobile>`, else the query id), name `SENDER_NAME` with the
//! company, country `SENDER_COUNTRY_ISO`, subject `SUBJECT`, body `QUERY_MESSAGE` (a lead without
//! text, a PNS call, gets `[<type> lead: <product>]`), attributes `query_type`, `product_name`. A
//! lead whose `QUERY_TIME` does not read takes the receive time.
//!
//! Cursor: the newest `QUERY_TIME` taken (Unix seconds). A cycle asks from it less a minute of
//! [`super::LOOKBACK`] (a never-polled seller: 7 days back) to now, at most 7 days: a seller
//! whose cursor is older catches up one week per call, the cursor moving to each window's end.
//!
//! Quota: IndiaMART asks integrations to call once every 5 minutes per key, and answers `CODE`
//! 429 (blocking the key for a while) to more frequent calls: 1 call per 300 s, burst 1, per
//! seller.

use serde::Deserialize;
use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime};

use super::walk::FIRST_POLL_LOOKBACK_SECONDS;
use super::{PollPage, PollPosition, PollQuota, PollRequest, PollTarget, Poller};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::{Draft, NormalizeContext};

/// The widest window IndiaMART serves in one call.
const MAX_WINDOW_SECONDS: i64 = 7 * 86_400;

/// The Lead Manager poller.
pub struct IndiamartLeads;

/// The window a cycle at `now` asks for, from the cursor: (start, end), Unix seconds.
fn window(cursor: Option<&str>, now: OffsetDateTime) -> (i64, i64) {
    let now = now.unix_timestamp();
    let start = match cursor.and_then(|c| c.parse::<i64>().ok()) {
        // Never after now, whatever the stored cursor says.
        Some(at) => at.min(now).saturating_sub(super::LOOKBACK.whole_seconds()),
        None => now - FIRST_POLL_LOOKBACK_SECONDS,
    };
    (start, now.min(start.saturating_add(MAX_WINDOW_SECONDS)))
}

/// IndiaMART's request time: IST, `05-Jan-202609:00:00`.
fn indiamart_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset!(+5:30))
        .format(format_description!("[day]-[month repr:short]-[year][hour]:[minute]:[second]"))
        .unwrap_or_default()
}

/// A lead's `QUERY_TIME` (IST).
fn query_time(text: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(text.trim(), format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
        .ok()
        .map(|t| t.assume_offset(offset!(+5:30)).to_offset(time::UtcOffset::UTC))
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct Response {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    response: Option<serde_json::Value>,
}

fn code_of(value: &Option<serde_json::Value>) -> Option<i64> {
    match value.as_ref()? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct Lead {
    unique_query_id: serde_json::Value,
    #[serde(default)]
    query_type: Option<String>,
    #[serde(default)]
    query_time: Option<String>,
    #[serde(default)]
    sender_name: Option<String>,
    #[serde(default)]
    sender_mobile: Option<String>,
    #[serde(default)]
    sender_email: Option<String>,
    #[serde(default)]
    sender_company: Option<String>,
    #[serde(default)]
    sender_country_iso: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    query_product_name: Option<String>,
    #[serde(default)]
    query_message: Option<String>,
}

fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl Poller for IndiamartLeads {
    fn name(&self) -> &'static str {
        "indiamart_leads"
    }

    fn channel(&self) -> Channel {
        Channel::Rfq
    }

    fn operation(&self) -> &'static str {
        "crm_listing"
    }

    fn default_quota(&self) -> PollQuota {
        PollQuota { per_second: 1.0 / 300.0, burst: 1, per_day: None }
    }

    fn request(&self, target: &PollTarget<'_>, position: &PollPosition<'_>) -> PollRequest {
        let (start, end) = window(position.cursor, target.now);
        PollRequest {
            method: super::PollMethod::Get,
            path_and_query: format!(
                "/wservce/crm/crmListing/v2/?glusr_crm_key={}&start_time={}&end_time={}",
                super::encode(target.credentials.access_token),
                super::encode(&indiamart_time(start)),
                super::encode(&indiamart_time(end)),
            ),
            headers: vec![("accept".to_owned(), "application/json".to_owned())],
            body: String::new(),
        }
    }

    /// `CODE` 429 comes with HTTP 200.
    fn is_throttled(&self, status: u16, body: &[u8]) -> bool {
        status == 429 || serde_json::from_slice::<Response>(body).is_ok_and(|r| code_of(&r.code) == Some(429))
    }

    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        position: &PollPosition<'_>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError> {
        let response: Response = serde_json::from_slice(body).map_err(InputError::from_json)?;
        let code = code_of(&response.code)
            .ok_or_else(|| InputError::new(InputErrorCode::MissingField, "the answer has no CODE").field("CODE"))?;
        let mut page = PollPage::default();
        let (start, end) = window(position.cursor, target.now);
        let leads = match (code, response.response) {
            (200, Some(serde_json::Value::Array(leads))) => leads,
            (200 | 204, _) => Vec::new(),
            (other, _) => {
                // A refused key or window: an error, so the runner backs off and keeps the cursor.
                return Err(InputError::new(
                    InputErrorCode::InvalidValue,
                    format!("IndiaMART answered CODE {other}: {}", response.message.unwrap_or_default()),
                )
                .field("CODE"));
            }
        };
        let mut newest: Option<i64> = None;
        for lead in leads {
            let Ok(lead) = serde_json::from_value::<Lead>(lead) else {
                page.ignored += 1; // malformed: skipped, the others are taken
                continue;
            };
            let id = match &lead.unique_query_id {
                serde_json::Value::String(s) if !s.trim().is_empty() => s.trim().to_owned(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => {
                    page.ignored += 1;
                    continue;
                }
            };
            // A time that does not read (its format is inferred) is no reason to lose the lead: it
            // takes the receive time, and does not move the cursor.
            let at = match lead.query_time.as_deref().and_then(query_time) {
                Some(at) => {
                    newest = newest.max(Some(at.unix_timestamp()));
                    at
                }
                None => context().received_at,
            };
            page.inquiries.push(lead_inquiry(&lead, id, at, target.account).into_inquiry(&context()));
        }
        // A window that ends before now is read to its end: the cursor moves there even when it
        // held nothing, so a seller catching up goes on a week per call.
        let mut cursor = newest.unwrap_or(i64::MIN);
        if end < target.now.unix_timestamp() {
            cursor = cursor.max(end);
        }
        let old = position.cursor.and_then(|c| c.parse::<i64>().ok()).unwrap_or(start);
        page.cursor = (cursor > old).then(|| cursor.to_string());
        Ok(page)
    }
}

fn lead_inquiry(lead: &Lead, id: String, at: OffsetDateTime, account: &str) -> Draft {
    let email = text(&lead.sender_email).map(str::to_owned);
    let phone = text(&lead.sender_mobile).map(str::to_owned);
    let identity = match (&email, &phone) {
        (Some(email), _) => format!("email:{}", email.to_lowercase()),
        (None, Some(phone)) => format!("phone:{phone}"),
        (None, None) => format!("rfq:{id}"),
    };
    let kind = text(&lead.query_type).unwrap_or("W").to_owned();
    let product = text(&lead.query_product_name).map(str::to_owned);
    let body = match text(&lead.query_message) {
        Some(message) => message.to_owned(),
        None => format!("[{kind} lead: {}]", product.as_deref().unwrap_or("no product named")),
    };
    let mut draft = Draft::message(Channel::Rfq, account, id.clone(), id, identity, body, at);
    draft.buyer_email = email;
    draft.buyer_phone = phone;
    draft.buyer_name = match (text(&lead.sender_name), text(&lead.sender_company)) {
        (Some(name), Some(company)) => Some(format!("{name} ({company})")),
        (name, company) => name.or(company).map(str::to_owned),
    };
    draft.country = text(&lead.sender_country_iso).filter(|c| c.len() == 2).map(str::to_ascii_uppercase);
    draft.subject = text(&lead.subject).map(str::to_owned);
    draft.attributes.insert("query_type".to_owned(), kind.into());
    draft.attributes.insert("platform".to_owned(), "indiamart".into());
    if let Some(product) = product {
        draft.attributes.insert("product_name".to_owned(), product.into());
    }
    draft
}
