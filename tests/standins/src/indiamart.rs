//! IndiaMART Lead Manager CRM API v2
//! (<https://help.indiamart.com/knowledge-base/lms-crm-integration-v2/>):
//! `GET /wservce/crm/crmListing/v2/?glusr_crm_key=&start_time=&end_time=` answers HTTP 200 with
//! `{"CODE", "STATUS", "MESSAGE", "TOTAL_RECORDS", "RESPONSE"}`; errors are a `CODE` in the body
//! (401 unknown key, 400 a bad window, 204 no leads, 429 called too often). Times are IST,
//! `DD-Mon-YYYYHH:MM:SS` (a space before the hour is accepted too); a window is at most 7 days.
//!
//! Quota: one call every 5 minutes per key, as IndiaMART asks integrations; a call sooner is
//! answered `CODE` 429.
//!
//! Each buyer [`Message`] is one lead (a direct enquiry); the seller's messages are not leads.

use serde_json::json;
use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::{Admission, Mailbox, Platform, QuotaRule, Reply, Request};

/// The IndiaMART stand-in.
#[derive(Debug, Clone)]
pub struct Indiamart {
    /// CRM keys it accepts, with the seller each belongs to.
    pub keys: Vec<(String, String)>,
}

impl Default for Indiamart {
    fn default() -> Indiamart {
        Indiamart { keys: vec![("test-indiamart-crm-key".to_owned(), "1001".to_owned())] }
    }
}

const PATH: &str = "/wservce/crm/crmListing/v2/";

fn answer(code: u16, status: &str, message: &str, leads: Vec<serde_json::Value>) -> Reply {
    Reply::json(
        200,
        &json!({"CODE": code, "STATUS": status, "MESSAGE": message, "TOTAL_RECORDS": leads.len(), "RESPONSE": leads}),
    )
}

/// A request time: `05-Dec-202609:00:00` or `05-Dec-2026 09:00:00`, IST.
fn request_time(text: &str) -> Option<i64> {
    let compact: String = text.chars().filter(|c| *c != ' ').collect();
    PrimitiveDateTime::parse(&compact, format_description!("[day]-[month repr:short]-[year][hour]:[minute]:[second]"))
        .ok()
        .map(|t| t.assume_offset(offset!(+5:30)).unix_timestamp())
}

fn query_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset!(+5:30))
        .format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
        .unwrap_or_default()
}

impl Indiamart {
    fn seller_of(&self, request: &Request) -> Option<&str> {
        let key = request.param("glusr_crm_key")?;
        self.keys.iter().find(|(k, _)| k == key).map(|(_, seller)| seller.as_str())
    }
}

impl Platform for Indiamart {
    fn name(&self) -> &'static str {
        "indiamart"
    }

    fn documented_quota(&self) -> QuotaRule {
        QuotaRule { per_second: 1.0 / 300.0, burst: 1, per_day: None }
    }

    fn quota_key(&self, request: &Request) -> Result<String, Reply> {
        if request.method != "GET" || request.path != PATH {
            return Err(Reply::json(404, &json!({"error": "not found"})));
        }
        if self.seller_of(request).is_none() {
            return Err(answer(401, "FAILURE", "Invalid key, please try again with a valid key.", Vec::new()));
        }
        Ok(request.param("glusr_crm_key").unwrap_or_default().to_owned())
    }

    fn throttled(&self, _: &Admission) -> Reply {
        answer(
            429,
            "FAILURE",
            "It is advised to hit this API once in every 5 minutes, but it seems that you have crossed this limit. Please try again after 5 minutes.",
            Vec::new(),
        )
    }

    fn serve(&self, request: &Request, mailbox: &Mailbox, _: &Admission, _: &str) -> Reply {
        let seller = self.seller_of(request).unwrap_or_default();
        let (Some(start), Some(end)) =
            (request.param("start_time").and_then(request_time), request.param("end_time").and_then(request_time))
        else {
            return answer(400, "FAILURE", "Invalid start_time or end_time.", Vec::new());
        };
        if start > end || end - start > 7 * 86_400 {
            return answer(
                400,
                "FAILURE",
                "The duration between start_time and end_time must be up to 7 days.",
                Vec::new(),
            );
        }
        let leads: Vec<serde_json::Value> = mailbox
            .of_account(seller)
            .into_iter()
            .filter(|m| !m.from_seller && (start..=end).contains(&m.created))
            .map(|m| {
                json!({
                    "UNIQUE_QUERY_ID": m.id,
                    "QUERY_TYPE": "W",
                    "QUERY_TIME": query_time(m.created),
                    "SENDER_NAME": m.buyer_name,
                    "SENDER_MOBILE": format!("+91-98{:0>8}", m.buyer_id.chars().rev().take(8).collect::<String>()),
                    "SENDER_EMAIL": format!("buyer{}@example.com", m.buyer_id),
                    "SUBJECT": format!("Requirement for item {}", m.order_id.clone().unwrap_or_else(|| m.conversation.clone())),
                    "SENDER_COMPANY": "Test Buyer Traders",
                    "SENDER_COUNTRY_ISO": m.country.clone().unwrap_or_else(|| "IN".to_owned()),
                    "QUERY_PRODUCT_NAME": "Cotton Kitchen Apron",
                    "QUERY_MESSAGE": m.text,
                    "QUERY_MCAT_NAME": "Kitchen Aprons",
                })
            })
            .collect();
        if leads.is_empty() {
            return answer(204, "SUCCESS", "There are no leads in the given time duration.", leads);
        }
        answer(200, "SUCCESS", "", leads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{exchange, request_of};

    #[test]
    fn only_a_known_key_is_served_and_throttling_is_a_code_in_the_body() {
        let standin = Indiamart::default();
        let poller = inquiry_connectors::poll::find("indiamart_leads").unwrap();
        let good = request_of(poller, "1001", "test-indiamart-crm-key", None, None, None);
        assert_eq!(standin.quota_key(&good).unwrap(), "test-indiamart-crm-key");
        let wrong = request_of(poller, "1001", "guessed-key", None, None, None);
        assert!(standin.quota_key(&wrong).unwrap_err().body.contains("\"CODE\":401"));
        let throttled = standin.throttled(&crate::testing::admission());
        assert_eq!(throttled.status, 200);
        assert!(poller.is_throttled(throttled.status, throttled.body.as_bytes()));
        let mut too_wide = good;
        too_wide.query.insert("start_time".into(), "01-Nov-202600:00:00".into());
        too_wide.query.insert("end_time".into(), "09-Nov-2026 00:00:00".into());
        let reply = standin.serve(&too_wide, &Mailbox::default(), &crate::testing::admission(), "");
        assert!(reply.body.contains("\"CODE\":400"), "{}", reply.body);
    }

    #[test]
    fn the_poller_reads_what_the_standin_serves() {
        let (inquiries, ignored) =
            exchange(&Indiamart::default(), "indiamart_leads", "1001", "test-indiamart-crm-key", None, None);
        assert_eq!((inquiries, ignored), (2, 0), "two leads; the seller's reply is not one");
    }
}
