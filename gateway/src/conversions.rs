//! Conversions: the order an inquiry led to, reported by the seller's CRM or shop back end
//! (`POST /v1/inquiries/{id}/conversion`). The first report of an inquiry is kept (recorded
//! with its audit entry `inquiry.converted` in one write of the pipeline's stage, ordered with
//! the buyer's erasure) and counted in `inquiry_gateway_conversions_total`
//! and `inquiry_gateway_conversion_seconds`, from which the conversion rate and the time to an
//! order per channel are reported; a later report of the same inquiry changes nothing.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::compliance::audit::AuditEvent;
use crate::compliance::vault::Vault;
use crate::pipeline::{ConversionOutcome, ConversionRecord, Pipeline, StoredInquiry, SubmitError};
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Longest order id, in bytes.
pub const MAX_ORDER_ID_BYTES: usize = 128;

/// The order an inquiry led to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// The platform's or the shop's order id (removed with the inquiry and when its buyer is
    /// erased: the shop can trace it to the buyer).
    pub order_id: String,
    /// The order's value as a decimal string (`"129.90"`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// ISO 4217 currency of `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// When the order was placed.
    #[serde(with = "time::serde::rfc3339")]
    pub converted_at: OffsetDateTime,
    /// Who reported it (`api_key:<id>`).
    pub reported_by: String,
}

/// Why a conversion report is refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Conversion {
    /// Checks a report: an order id of 1 to [`MAX_ORDER_ID_BYTES`] bytes, a value of up to 15
    /// digits with up to 4 decimals that comes with a currency of three capital letters, and an
    /// order time no later than `now` (five minutes of clock skew allowed).
    pub fn check(&self, now: OffsetDateTime) -> Result<(), Invalid> {
        let invalid = |field, reason: &str| Err(Invalid { field, reason: reason.to_owned() });
        if self.order_id.trim().is_empty() || self.order_id.len() > MAX_ORDER_ID_BYTES {
            return invalid("order_id", "order_id must be 1 to 128 bytes");
        }
        if let Some(value) = &self.value {
            let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            let fraction_ok = if value.contains('.') { (1..=4).contains(&fraction.len()) } else { true };
            if !(1..=15).contains(&whole.len()) || !digits(whole) || !digits(fraction) || !fraction_ok {
                return invalid("value", "value must be a decimal of up to 15 digits and 4 decimals, like \"129.90\"");
            }
        }
        match (&self.value, &self.currency) {
            (Some(_), None) => return invalid("currency", "a value needs its currency"),
            (_, Some(c)) if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) => {
                return invalid("currency", "currency must be an ISO 4217 code, like \"EUR\"");
            }
            _ => {}
        }
        if self.converted_at > now + time::Duration::minutes(5) {
            return invalid("converted_at", "converted_at is in the future");
        }
        Ok(())
    }

    /// The conversion recorded for inquiry `id` (an unreadable record is an error, never "none":
    /// a report must not overwrite it).
    pub fn load(store: &Store, id: Uuid) -> Result<Option<Conversion>, StoreError> {
        store.conversion(id)?.map(|bytes| Conversion::parse(&bytes)).transpose()
    }

    /// A conversion as stored.
    fn parse(bytes: &[u8]) -> Result<Conversion, StoreError> {
        serde_json::from_slice(bytes).map_err(|_| StoreError::from_message("a conversion record is unreadable"))
    }

    /// Its audit entry (`inquiry.converted`). The log outlives the inquiry and its buyer's
    /// erasure: it holds the order id's keyed fingerprint (`vault`'s index key: proof of which
    /// order, given the id and the key), not the id.
    pub fn event(&self, id: Uuid, vault: &Vault) -> AuditEvent {
        AuditEvent::new("inquiry.converted", self.reported_by.clone()).inquiry(id).detail(serde_json::json!({
            "order_fingerprint": hex::encode(vault.order_fingerprint(&self.order_id)),
            "value": self.value, "currency": self.currency,
            "converted_at": self.converted_at.format(&time::format_description::well_known::Rfc3339).ok(),
        }))
    }
}

/// What a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// The first report: audited, recorded and counted.
    Recorded(Conversion),
    /// A conversion was kept before: nothing changed.
    Kept(Conversion),
    /// The inquiry is no longer stored (retention removed it meanwhile).
    Gone,
    /// The inquiry's buyer was erased: an order id must not be tied to them again.
    Erased,
}

/// Why a report could not be taken (nothing was recorded; a retry is safe).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The conversion kept before is unreadable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline could not take or write the report.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// Takes `conversion` (checked) as the report of `stored`'s order. The pipeline's stage decides,
/// in its write order: the first report is recorded with its audit entry (`inquiry.converted`)
/// in one atomic write, then counted; a later one changes nothing; none is recorded for an erased
/// buyer, and an erasure written after it removes it.
pub async fn report(
    pipeline: &Pipeline,
    stored: &StoredInquiry,
    conversion: Conversion,
) -> Result<Reported, ReportError> {
    let id = stored.inquiry.id;
    let record = ConversionRecord {
        inquiry_id: id,
        pseudonym: stored.inquiry.buyer.pseudonym.clone(),
        record: serde_json::to_vec(&conversion).expect("conversions serialize"),
        event: conversion.event(id, pipeline.vault()),
    };
    // Its own task, so that a recorded conversion is counted even when the caller goes away
    // (a retry then finds it kept, which counts nothing).
    let (pipeline, channel) = (pipeline.clone(), stored.inquiry.channel.as_str().to_owned());
    let waited = (conversion.converted_at - stored.inquiry.received_at).as_seconds_f64().max(0.0);
    let outcome = tokio::spawn(async move {
        let outcome = pipeline.record_conversion(record).await?;
        if outcome == ConversionOutcome::Recorded {
            metrics::counter!(telemetry::CONVERSIONS, "channel" => channel.clone()).increment(1);
            metrics::histogram!(telemetry::CONVERSION_TIME, "channel" => channel).record(waited);
        }
        Ok::<_, SubmitError>(outcome)
    })
    .await
    .map_err(|_| SubmitError::StageFailed)??;
    match outcome {
        ConversionOutcome::Recorded => Ok(Reported::Recorded(conversion)),
        ConversionOutcome::Kept(kept) => Ok(Reported::Kept(Conversion::parse(&kept)?)),
        ConversionOutcome::Gone => Ok(Reported::Gone),
        ConversionOutcome::Erased => Ok(Reported::Erased),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn reports_are_checked_field_by_field() {
        let now = datetime!(2026-12-04 12:00 UTC);
        let good = Conversion {
            order_id: "8100000000000001".to_owned(),
            value: Some("129.90".to_owned()),
            currency: Some("EUR".to_owned()),
            converted_at: now,
            reported_by: "api_key:crm".to_owned(),
        };
        assert_eq!(good.check(now), Ok(()));
        assert_eq!(Conversion { value: None, currency: None, ..good.clone() }.check(now), Ok(()));
        let field = |c: Conversion| c.check(now).unwrap_err().field;
        assert_eq!(field(Conversion { order_id: " ".to_owned(), ..good.clone() }), "order_id");
        assert_eq!(field(Conversion { order_id: "x".repeat(129), ..good.clone() }), "order_id");
        for bad in ["", "12,5", "1.", ".5", "-3", "1.23456", "1e3", "1234567890123456"] {
            assert_eq!(field(Conversion { value: Some(bad.to_owned()), ..good.clone() }), "value", "{bad}");
        }
        assert_eq!(field(Conversion { currency: None, ..good.clone() }), "currency");
        assert_eq!(field(Conversion { currency: Some("eur".to_owned()), ..good.clone() }), "currency");
        let later = now + time::Duration::minutes(6);
        assert_eq!(field(Conversion { converted_at: later, ..good.clone() }), "converted_at");
        let vault = Vault::new("test", &[9u8; 32], b"index-key-for-conversion-tests-0");
        let event = good.event(Uuid::nil(), &vault);
        let entry = serde_json::to_value(&event).unwrap();
        assert_eq!(entry["kind"], "inquiry.converted", "{entry}");
        assert!(!entry.to_string().contains("8100000000000001"), "the order id itself stays out of the log: {entry}");
        // Nor its plain hash, which trying the ids in turn would reverse.
        let plain = crate::compliance::sha256_hex(b"8100000000000001");
        assert!(!entry.to_string().contains(&plain), "{entry}");
        assert_eq!(entry["detail"]["order_fingerprint"], hex::encode(vault.order_fingerprint("8100000000000001")));
    }
}
