//! Data subject requests: export (GDPR Art. 15, CCPA right to know, LGPD Art. 18) and erasure
//! (GDPR Art. 17, CCPA deletion, LGPD), each kept as a record with its jurisdiction's deadline.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::{Duration, Month, OffsetDateTime};
use uuid::Uuid;

use super::audit::{AuditEntry, AuditEvent};
use super::shared::{SharedRequest, SharedRequests};
use super::subjects::{SubjectRecord, Subjects};
use crate::config::ProcessingConfig;
use crate::pipeline::{Erasure, Pipeline, StoredInquiry, SubmitError};
use crate::retry::patiently;
use crate::sinks::Sink;
use crate::store::{Store, StoreError};

/// How long a request this process received may still be under way in the call that received
/// it, before the shared-request follower takes an open record of it for a failed attempt: far
/// more than that call can take (a full pipeline queue is waited out 10 s per subject, the sinks
/// 5 s in all).
const OWN_CALL_LIMIT: Duration = Duration::minutes(10);

/// Most audit entries an export scans for the subject's events.
const MAX_AUDIT_SCAN: u64 = 5_000_000;

/// What the data subject asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A copy of everything held on them.
    Export,
    /// Erasure of their personal data.
    Erasure,
    /// Withdrawal of consents they gave (GDPR Art. 7(3)): recorded and audited at once.
    ConsentWithdrawal,
}

/// The law the request is made under; it sets the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jurisdiction {
    /// GDPR Art. 12(3): one month, extendable by two further months.
    Gdpr,
    /// CCPA §1798.130: 45 days, extendable once by 45 days.
    Ccpa,
    /// LGPD Art. 19: 15 days.
    Lgpd,
}

impl Jurisdiction {
    /// The deadline and the extended deadline of a request received at `received`.
    pub fn deadlines(self, received: OffsetDateTime) -> (OffsetDateTime, Option<OffsetDateTime>) {
        match self {
            Jurisdiction::Gdpr => (add_months(received, 1), Some(add_months(received, 3))),
            Jurisdiction::Ccpa => (received + Duration::days(45), Some(received + Duration::days(90))),
            Jurisdiction::Lgpd => (received + Duration::days(15), None),
        }
    }
}

/// The same day `months` later, or the month's last day (31 January + 1 month = 28/29 February).
fn add_months(at: OffsetDateTime, months: u8) -> OffsetDateTime {
    let total = at.month() as u8 - 1 + months;
    let year = at.year() + i32::from(total / 12);
    let month = Month::try_from(total % 12 + 1).expect("1..=12");
    let day = at.day().min(month.length(year));
    at.replace_day(1)
        .and_then(|t| t.replace_year(year))
        .and_then(|t| t.replace_month(month))
        .and_then(|t| t.replace_day(day))
        .expect("a valid date")
}

/// `detail` with the replica that received `request` (`origin`), when another one did.
fn with_origin(mut detail: Value, request: &SubjectRequest) -> Value {
    if let (Some(origin), Some(map)) = (&request.origin, detail.as_object_mut()) {
        map.insert("origin".to_owned(), Value::String(origin.clone()));
    }
    detail
}

/// Who the request is about: any combination; every subject found is included.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    /// The buyer's e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A platform user id, with the channel and account it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Channel of `user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Account of `user_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// A pseudonym, as found on an inquiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudonym: Option<String>,
    /// More pseudonyms (e.g. every subject of an open request this one fulfils).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pseudonyms: Vec<String>,
    /// Identities as the connectors record them when a buyer has no e-mail or user id
    /// (`order:<id>`, `phone:<number>`, `rfq:<id>`, `conversation:<id>`...); with `channel` and
    /// `account`, except `email:` ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Received, not yet carried out (e.g. a Shopify data request awaiting the operator).
    Open,
    /// Carried out.
    Completed,
    /// Carried out; nothing was held on the subject.
    NotFound,
}

/// A data subject request as kept (24 months by default). Holds no personal data: the subject
/// is recorded by pseudonym only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectRequest {
    /// Request id (UUIDv7).
    pub id: Uuid,
    /// Export or erasure.
    pub kind: RequestKind,
    /// The law it is made under.
    pub jurisdiction: Jurisdiction,
    /// Where it came from: `admin_api`, `shopify:<shop domain>`.
    pub source: String,
    /// Who made it (admin token, webhook).
    pub requested_by: String,
    /// When it was received.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// When it must be answered.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
    /// The latest answer allowed with an extension, where the law has one.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub extended_due_at: Option<OffsetDateTime>,
    /// Where it stands.
    pub status: RequestStatus,
    /// When it was carried out.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// Pseudonyms of the subjects found.
    pub subjects: Vec<String>,
    /// Inquiries concerned.
    pub inquiries: usize,
    /// Downstream sinks whose part of an erasure is still to do (retried).
    #[serde(default)]
    pub pending_sinks: Vec<String>,
    /// The purposes a consent withdrawal withdraws (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    /// The replica that received the request, when another one did (a shared request carried
    /// out here on what this replica holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// When this record itself is deleted.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Where one consent of a data subject stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentState {
    /// The subject's pseudonym.
    pub subject: String,
    /// The purpose.
    pub purpose: String,
    /// Whether it holds now.
    pub status: ConsentStatus,
    /// When it was last given (absent: withdrawn without a consent on record).
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub given_at: Option<OffsetDateTime>,
    /// The notice's version the buyer was shown then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// The inquiry that reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inquiry_id: Option<Uuid>,
    /// When it was last withdrawn.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<OffsetDateTime>,
    /// The withdrawal's request record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawal_request: Option<Uuid>,
    /// When the gateway counts the consent from: `given_at`, or the inquiry's receipt if earlier.
    #[serde(skip)]
    pub effective_at: OffsetDateTime,
}

impl ConsentState {
    /// Neither given nor withdrawn yet (filled in by [`consent_states`]).
    fn none(subject: &str, purpose: &str) -> ConsentState {
        ConsentState {
            subject: subject.to_owned(),
            purpose: purpose.to_owned(),
            status: ConsentStatus::Given,
            given_at: None,
            notice: None,
            inquiry_id: None,
            withdrawn_at: None,
            withdrawal_request: None,
            effective_at: OffsetDateTime::UNIX_EPOCH,
        }
    }
}

/// Whether a consent holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    /// Given, and not withdrawn since.
    Given,
    /// Withdrawn since it was last given.
    Withdrawn,
}

/// Why a request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request names no subject.
    #[error("name the subject: email, pseudonym, or user_id or identities with channel and account")]
    NoSubject,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline refused (overloaded, stopping).
    #[error(transparent)]
    Pipeline(#[from] SubmitError),
    /// The request could not be shared with the other replicas (`request_sharing = "cql"`):
    /// nothing was carried out.
    #[error("not shared with the other replicas: {0}")]
    Shared(String),
}

/// Carries out data subject requests.
pub struct SubjectRequests {
    /// The store.
    pub store: Store,
    /// The data subjects.
    pub subjects: Arc<Subjects>,
    /// The pipeline (erasures and audit events go through its stage).
    pub pipeline: Pipeline,
    /// Downstream sinks, for their part of an erasure.
    pub sinks: Vec<Arc<dyn Sink>>,
    /// What an export tells the subject.
    pub processing: ProcessingConfig,
    /// How long request records are kept.
    pub retention: Duration,
    /// How long consent withdrawals are kept: at least as long as the inquiries whose consents
    /// they withdraw, so that a withdrawal never expires before the consent it overrides.
    pub withdrawal_retention: Duration,
    /// Where erasures and consent withdrawals are shared with the other replicas, if they are.
    pub shared: Option<Arc<SharedRequests>>,
}

impl SubjectRequests {
    /// A new request record, received now.
    pub fn new_record(&self, kind: RequestKind, jurisdiction: Jurisdiction, source: &str, by: &str) -> SubjectRequest {
        // Shared, to the millisecond: the time the CQL row carries is the same.
        let now = OffsetDateTime::now_utc();
        let received_at = match &self.shared {
            Some(_) => now.replace_millisecond(now.millisecond()).unwrap_or(now),
            None => now,
        };
        let (due_at, extended_due_at) = jurisdiction.deadlines(received_at);
        SubjectRequest {
            id: Uuid::now_v7(),
            kind,
            jurisdiction,
            source: source.to_owned(),
            requested_by: by.to_owned(),
            received_at,
            due_at,
            extended_due_at,
            status: RequestStatus::Open,
            completed_at: None,
            subjects: Vec::new(),
            inquiries: 0,
            pending_sinks: Vec::new(),
            purposes: Vec::new(),
            origin: None,
            expires_at: received_at + self.retention,
        }
    }

    /// Stores a request record durably.
    pub fn save(&self, request: &SubjectRequest) -> Result<(), StoreError> {
        let mut batch = self.store.batch();
        batch.put_subject_request(request.id, &serde_json::to_vec(request).expect("requests serialize"));
        batch.commit()
    }

    /// A stored request.
    pub fn get(&self, id: Uuid) -> Result<Option<SubjectRequest>, StoreError> {
        Ok(self.store.subject_request(id)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Every request still kept, oldest first (one past its retention is left out; the periodic
    /// sweep deletes it).
    pub fn list(&self) -> Result<Vec<SubjectRequest>, StoreError> {
        let now = OffsetDateTime::now_utc();
        Ok(self.stored()?.into_iter().filter(|r| r.expires_at >= now).collect())
    }

    /// Every stored request, expired or not.
    fn stored(&self) -> Result<Vec<SubjectRequest>, StoreError> {
        Ok(self.store.subject_requests()?.iter().filter_map(|bytes| serde_json::from_slice(bytes).ok()).collect())
    }

    /// Deletes the requests past their retention and sets the overdue gauge; returns the kept
    /// requests. Run periodically (with [`SubjectRequests::retry_pending`]), never on a read.
    fn sweep(&self) -> Result<Vec<SubjectRequest>, StoreError> {
        let now = OffsetDateTime::now_utc();
        let (expired, kept): (Vec<_>, Vec<_>) = self.stored()?.into_iter().partition(|r| r.expires_at < now);
        if !expired.is_empty() {
            let mut batch = self.store.batch();
            for request in &expired {
                batch.remove_subject_request(request.id);
            }
            batch.commit()?;
        }
        let overdue = kept.iter().filter(|r| r.status == RequestStatus::Open && r.due_at < now).count();
        metrics::gauge!(crate::telemetry::SUBJECT_REQUESTS_OVERDUE).set(overdue as f64);
        Ok(kept)
    }

    /// The pseudonyms the spec names that exist (never creates a subject).
    pub fn find(&self, spec: &SubjectSpec) -> Result<Vec<String>, RequestError> {
        let (indexes, pseudonyms) = self.keys_of(spec)?;
        Ok(self.find_by(&indexes, &pseudonyms)?)
    }

    /// What finds the subjects `spec` names: the indexes of its identities, and its pseudonym.
    fn keys_of(&self, spec: &SubjectSpec) -> Result<(Vec<[u8; 32]>, Vec<String>), RequestError> {
        let identities: Vec<&str> = spec.identities.iter().map(|i| i.trim()).filter(|i| !i.is_empty()).collect();
        let named_by_pseudonym = spec.pseudonym.is_some() || !spec.pseudonyms.is_empty();
        if spec.email.is_none() && !named_by_pseudonym && spec.user_id.is_none() && identities.is_empty() {
            return Err(RequestError::NoSubject);
        }
        let scoped = spec.user_id.is_some() || identities.iter().any(|i| !i.starts_with("email:"));
        if scoped && (spec.channel.is_none() || spec.account.is_none()) {
            return Err(RequestError::NoSubject);
        }
        let mut indexes = Vec::new();
        if let Some(email) = spec.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            indexes.push(self.subjects.index_of("", "", &format!("email:{}", email.to_lowercase())));
        }
        if let (Some(user), Some(channel), Some(account)) = (&spec.user_id, &spec.channel, &spec.account) {
            indexes.push(self.subjects.index_of(channel, account, &format!("id:{}", user.trim())));
        }
        for identity in identities {
            let (channel, account) = (spec.channel.as_deref().unwrap_or(""), spec.account.as_deref().unwrap_or(""));
            indexes.push(self.subjects.index_of(channel, account, identity));
        }
        Ok((indexes, spec.pseudonym.iter().chain(&spec.pseudonyms).cloned().collect()))
    }

    /// The pseudonyms of the subjects held here under `indexes` or named in `pseudonyms`.
    fn find_by(&self, indexes: &[[u8; 32]], pseudonyms: &[String]) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for index in indexes {
            if let Some(bytes) = self.store.subject(index)? {
                if let Ok(record) = serde_json::from_slice::<SubjectRecord>(&bytes) {
                    found.push(record.pseudonym);
                }
            }
        }
        for pseudonym in pseudonyms {
            if self.store.subject_index(pseudonym)?.is_some() {
                found.push(pseudonym.clone());
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// With sharing on: writes `request` (an erasure or a withdrawal for the subjects `spec`
    /// names, `found` here) for the other replicas, before it is carried out here. The indexes of
    /// the subjects found here go with it, so a replica finds them when the request named them
    /// by a pseudonym of this replica's.
    async fn share(
        &self,
        request: &SubjectRequest,
        (indexes, pseudonyms): (Vec<[u8; 32]>, Vec<String>),
        found: &[String],
    ) -> Result<(), RequestError> {
        let Some(shared) = &self.shared else { return Ok(()) };
        let mut indexes = indexes;
        for pseudonym in found {
            indexes.extend(self.store.subject_index(pseudonym)?);
        }
        indexes.sort();
        indexes.dedup();
        let row = SharedRequest {
            id: request.id,
            origin: shared.replica().to_owned(),
            kind: request.kind,
            jurisdiction: request.jurisdiction,
            source: request.source.clone(),
            requested_by: request.requested_by.clone(),
            indexes,
            pseudonyms,
            purposes: request.purposes.clone(),
            received_at: request.received_at,
        };
        shared.publish(&row).await.map_err(RequestError::Shared)
    }

    /// Carries out a shared request (`written_here`: by this process) on what this replica
    /// holds, unless it was carried out here already, or is being carried out by the call that
    /// received it. A record left open by an attempt that failed part way is done again. The
    /// record keeps the request's id, law, source and deadline. `None` when there was nothing to
    /// do.
    pub async fn carry_out_shared(
        &self,
        shared: SharedRequest,
        written_here: bool,
    ) -> Result<Option<SubjectRequest>, RequestError> {
        let existing = self.get(shared.id)?;
        match &existing {
            Some(record) if record.status != RequestStatus::Open => return Ok(None),
            // This process received it: the call that did carries it out.
            None if written_here => return Ok(None),
            // An earlier attempt failed part way (the record stays open): done again, unless it
            // is this process's call still under way.
            Some(record) if written_here && OffsetDateTime::now_utc() - record.received_at < OWN_CALL_LIMIT => {
                return Ok(None)
            }
            _ => {}
        }
        let found = self.found_again(&shared.indexes, &shared.pseudonyms, existing.as_ref())?;
        let mut request = self.new_record(shared.kind, shared.jurisdiction, &shared.source, &shared.requested_by);
        let (due_at, extended_due_at) = shared.jurisdiction.deadlines(shared.received_at);
        (request.id, request.received_at, request.due_at, request.extended_due_at) =
            (shared.id, shared.received_at, due_at, extended_due_at);
        let here = self.shared.as_ref().map(|s| s.replica());
        request.origin = (here != Some(shared.origin.as_str())).then_some(shared.origin);
        let request = match shared.kind {
            RequestKind::Erasure => {
                request.expires_at = shared.received_at + self.retention;
                self.carry_out_erasure(request, found).await?
            }
            RequestKind::ConsentWithdrawal => {
                request.expires_at = shared.received_at + self.withdrawal_retention;
                self.carry_out_withdrawal(request, found, &shared.purposes).await?
            }
            RequestKind::Export => return Ok(None), // never shared
        };
        Ok(Some(request))
    }

    /// Records a request to be carried out later (a Shopify `customers/data_request`: the export
    /// goes to the merchant, so an operator runs it and marks this one fulfilled).
    pub async fn open(
        &self,
        kind: RequestKind,
        spec: &SubjectSpec,
        jurisdiction: Jurisdiction,
        source: &str,
        by: &str,
    ) -> Result<SubjectRequest, RequestError> {
        let mut request = self.new_record(kind, jurisdiction, source, by);
        request.subjects = match self.find(spec) {
            Ok(found) => found,
            Err(RequestError::NoSubject) => Vec::new(),
            Err(err) => return Err(err),
        };
        self.save(&request)?;
        let event = AuditEvent::new("subject.request_received", by).detail(json!({
            "request_id": request.id, "kind": kind, "subjects": request.subjects, "source": source,
            "due_at": request.due_at.unix_timestamp(),
        }));
        patiently(|| self.pipeline.audit(vec![event.clone()])).await?;
        Ok(request)
    }

    /// Marks an open request fulfilled by another (the export or erasure that answered it).
    pub async fn fulfil(
        &self,
        open: Uuid,
        by_request: &SubjectRequest,
        by: &str,
    ) -> Result<Option<SubjectRequest>, RequestError> {
        let Some(mut request) = self.get(open)? else { return Ok(None) };
        // Only an open request of the same kind, about the same subjects, is answered by this one.
        let same_subjects =
            request.subjects.iter().all(|s| by_request.subjects.contains(s) || self.subjects.is_erased(s));
        if request.status != RequestStatus::Open || request.kind != by_request.kind || !same_subjects {
            return Ok(None);
        }
        request.status = by_request.status;
        request.completed_at = by_request.completed_at;
        request.inquiries = by_request.inquiries;
        self.save(&request)?;
        let event = AuditEvent::new("subject.request_fulfilled", by)
            .detail(json!({ "request_id": open, "fulfilled_by": by_request.id }));
        patiently(|| self.pipeline.audit(vec![event.clone()])).await?;
        Ok(Some(request))
    }

    /// Exports everything held on the subject, decrypted, with the Art. 15 information; the
    /// request is recorded and audited (the export itself is not kept).
    pub async fn export(
        &self,
        spec: &SubjectSpec,
        jurisdiction: Jurisdiction,
        source: &str,
        by: &str,
    ) -> Result<(SubjectRequest, Value), RequestError> {
        let pseudonyms = self.find(spec)?;
        let mut request = self.new_record(RequestKind::Export, jurisdiction, source, by);
        let store = self.store.clone();
        let subjects = self.subjects.clone();
        let wanted = pseudonyms.clone();
        let withdrawals = self.consent_withdrawals()?;
        let ((inquiries, events, events_from), consents) = tokio::task::spawn_blocking(move || {
            let collected = collect_export(&store, &subjects, &wanted)?;
            Ok::<_, StoreError>((collected, consent_states(&store, &wanted, &withdrawals)?))
        })
        .await
        .map_err(|_| RequestError::Store(StoreError::from_message("export task failed")))??;
        request.subjects = pseudonyms;
        request.inquiries = inquiries.len();
        request.status = if request.subjects.is_empty() { RequestStatus::NotFound } else { RequestStatus::Completed };
        request.completed_at = Some(OffsetDateTime::now_utc());
        self.save(&request)?;
        let event = AuditEvent::new("subject.exported", by).detail(json!({
            "request_id": request.id, "subjects": request.subjects, "inquiries": request.inquiries,
            "jurisdiction": jurisdiction, "source": source,
        }));
        patiently(|| self.pipeline.audit(vec![event.clone()])).await?;
        count(RequestKind::Export, request.status);
        let document = json!({
            "request": request,
            "processing": self.processing,
            "subjects": request.subjects,
            "inquiries": inquiries,
            "consents": consents,
            "audit_events": events,
            // Where the search of the audit log began (0: the whole log was searched).
            "audit_events_from": events_from,
        });
        Ok((request, document))
    }

    /// Records the subject's withdrawal of consent to `purposes`, effective at once: one
    /// `consent.withdrawn` audit entry per subject found, and the request record that
    /// [`SubjectRequests::consents`] reads.
    pub async fn withdraw_consent(
        &self,
        spec: &SubjectSpec,
        purposes: &[String],
        jurisdiction: Jurisdiction,
        source: &str,
        by: &str,
    ) -> Result<SubjectRequest, RequestError> {
        let keys = self.keys_of(spec)?;
        let pseudonyms = self.find_by(&keys.0, &keys.1)?;
        let mut request = self.new_record(RequestKind::ConsentWithdrawal, jurisdiction, source, by);
        request.expires_at = request.received_at + self.withdrawal_retention;
        request.purposes = purposes.to_vec();
        request.purposes.sort();
        request.purposes.dedup();
        self.share(&request, keys, &pseudonyms).await?;
        let purposes = request.purposes.clone();
        self.carry_out_withdrawal(request, pseudonyms, &purposes).await
    }

    /// Records and audits the withdrawal `request` of `purposes` by the subjects `pseudonyms`.
    async fn carry_out_withdrawal(
        &self,
        mut request: SubjectRequest,
        pseudonyms: Vec<String>,
        purposes: &[String],
    ) -> Result<SubjectRequest, RequestError> {
        request.purposes = purposes.to_vec();
        request.purposes.sort();
        request.purposes.dedup();
        // Kept open first: a failure before the record is complete leaves it to be done again,
        // and it is audited at most once more.
        request.subjects = pseudonyms.clone();
        self.save(&request)?;
        let (by, source) = (request.requested_by.clone(), request.source.clone());
        let events: Vec<AuditEvent> = pseudonyms
            .iter()
            .map(|pseudonym| {
                AuditEvent::new("consent.withdrawn", &by).subject(pseudonym).detail(with_origin(
                    json!({"request_id": request.id, "purposes": request.purposes, "source": source}),
                    &request,
                ))
            })
            .collect();
        if !events.is_empty() {
            patiently(|| self.pipeline.audit(events.clone())).await?;
        }
        self.complete(&mut request)?;
        Ok(request)
    }

    /// Marks `request` carried out (`not_found` when it found no subject), keeps and counts it.
    fn complete(&self, request: &mut SubjectRequest) -> Result<(), StoreError> {
        request.status = if request.subjects.is_empty() { RequestStatus::NotFound } else { RequestStatus::Completed };
        request.completed_at = Some(OffsetDateTime::now_utc());
        self.save(request)?;
        count(request.kind, request.status);
        Ok(())
    }

    /// The subjects found under `indexes` and `pseudonyms`, with those an earlier attempt of
    /// `record` already erased (no longer found; the open record still names them).
    fn found_again(
        &self,
        indexes: &[[u8; 32]],
        pseudonyms: &[String],
        record: Option<&SubjectRequest>,
    ) -> Result<Vec<String>, StoreError> {
        let mut found = self.find_by(indexes, pseudonyms)?;
        found.extend(record.into_iter().flat_map(|r| r.subjects.iter().cloned()));
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Where each consent of the subject stands: per subject and purpose, the latest consent
    /// reported with one of their inquiries and the latest withdrawal, and whether it holds now.
    pub fn consents(&self, spec: &SubjectSpec) -> Result<(Vec<String>, Vec<ConsentState>), RequestError> {
        let pseudonyms = self.find(spec)?;
        let states = consent_states(&self.store, &pseudonyms, &self.consent_withdrawals()?)?;
        Ok((pseudonyms, states))
    }

    /// The recorded consent withdrawals (within their retention).
    fn consent_withdrawals(&self) -> Result<Vec<SubjectRequest>, StoreError> {
        Ok(self.list()?.into_iter().filter(|r| r.kind == RequestKind::ConsentWithdrawal).collect())
    }

    /// True if the gateway holds data on the subject `spec` names.
    pub fn holds(&self, spec: &SubjectSpec) -> Result<bool, RequestError> {
        Ok(!self.find(spec)?.is_empty())
    }

    /// Erases the subject: its data key and pseudonym mapping are destroyed (every sealed copy,
    /// anywhere, becomes unreadable), its stored records lose their sealed fields, and each sink
    /// is asked to delete what it can. The request is recorded and audited.
    pub async fn erase(
        &self,
        spec: &SubjectSpec,
        jurisdiction: Jurisdiction,
        source: &str,
        by: &str,
    ) -> Result<SubjectRequest, RequestError> {
        let keys = self.keys_of(spec)?;
        let pseudonyms = self.find_by(&keys.0, &keys.1)?;
        let request = self.new_record(RequestKind::Erasure, jurisdiction, source, by);
        self.share(&request, keys, &pseudonyms).await?;
        self.carry_out_erasure(request, pseudonyms).await
    }

    /// Carries out again an erasure whose earlier attempt failed part way (`record` is still
    /// open), for the subjects `spec` names: under the same id, with the subjects the attempt
    /// already erased. `NoSubject` when `spec` names nobody (a request recorded open on purpose).
    pub async fn erase_again(
        &self,
        record: SubjectRequest,
        spec: &SubjectSpec,
    ) -> Result<SubjectRequest, RequestError> {
        let (indexes, pseudonyms) = self.keys_of(spec)?;
        let found = self.found_again(&indexes, &pseudonyms, Some(&record))?;
        self.carry_out_erasure(record, found).await
    }

    /// Carries out the erasure `request` of the subjects `pseudonyms` here, and asks the sinks
    /// to erase them too.
    async fn carry_out_erasure(
        &self,
        mut request: SubjectRequest,
        pseudonyms: Vec<String>,
    ) -> Result<SubjectRequest, RequestError> {
        // Open, with the subjects found and every sink's part pending: an attempt that fails part
        // way (or whose caller gives up, a webhook's timeout) is known and done again, by a
        // redelivery or by the retry loop, sinks included.
        request.subjects = pseudonyms.clone();
        request.pending_sinks = self.sinks.iter().map(|s| s.name().to_owned()).collect();
        self.save(&request)?;
        let by = request.requested_by.clone();
        let by = by.as_str();
        let mut erased = Vec::new();
        for pseudonym in &pseudonyms {
            let Some(index) = self.store.subject_index(pseudonym)? else {
                // Erased here by an earlier attempt: the sinks' part is still owed.
                erased.push((pseudonym.clone(), self.store.inquiries_of(pseudonym)?));
                continue;
            };
            let record = serde_json::to_vec(
                &json!({ "request_id": request.id, "erased_at": OffsetDateTime::now_utc().unix_timestamp() }),
            )
            .expect("json");
            let event = AuditEvent::new("subject.erased", by).subject(pseudonym).detail(with_origin(
                json!({"request_id": request.id, "jurisdiction": request.jurisdiction, "source": request.source}),
                &request,
            ));
            let erasure = Erasure { pseudonym: pseudonym.clone(), index, record, event };
            let ids = patiently(|| self.pipeline.erase(erasure.clone())).await?;
            erased.push((pseudonym.clone(), ids));
        }
        request.inquiries = erased.iter().map(|(_, ids)| ids.len()).sum();
        request.pending_sinks = self.erase_in_sinks(&erased, by).await;
        self.complete(&mut request)?;
        Ok(request)
    }

    /// Asks every sink to delete the erased inquiries; returns the sinks that failed.
    async fn erase_in_sinks(&self, erased: &[(String, Vec<Uuid>)], by: &str) -> Vec<String> {
        let mut failed = Vec::new();
        // One deadline for all sinks: the caller may be a webhook with a short timeout.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // The erased inquiries' records, read once for every sink.
        let erased: Vec<(&String, Vec<StoredInquiry>)> = erased
            .iter()
            .map(|(pseudonym, ids)| {
                let records = ids
                    .iter()
                    .filter_map(|id| self.store.get_inquiry(*id).ok().flatten())
                    .filter_map(|bytes| serde_json::from_slice::<StoredInquiry>(&bytes).ok())
                    .collect();
                (pseudonym, records)
            })
            .collect();
        for sink in &self.sinks {
            // What the sink was sent before the erasure lands first (a round still in flight
            // would put a deleted row back); after it, the forwarders skip erased inquiries. A
            // sink that is behind is tried again later (`pending_sinks`).
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !self.pipeline.sink_caught_up(sink.name(), left).await {
                tracing::warn!(sink = sink.name(), "sink still behind the erasure; its part is retried later");
                failed.push(sink.name().to_owned());
                continue;
            }
            for (pseudonym, all) in &erased {
                // Only what the sink was allowed to hold (data residency).
                let records: Vec<StoredInquiry> = all
                    .iter()
                    .filter(|r| crate::spool::residency_allows(sink.regions(), sink.location(), &r.inquiry))
                    .cloned()
                    .collect();
                if records.is_empty() && sink.location() != inquiry_connectors::Region::Eu {
                    // It never got any of them, and the pseudonym itself must not leave the EU.
                    continue;
                }
                let outcome = sink.erase(pseudonym, &records).await;
                let event = AuditEvent::new("sink.erased", by).subject(pseudonym).detail(json!({
                    "sink": sink.name(), "inquiries": records.len(), "ok": outcome.is_ok(),
                    "error": outcome.as_ref().err(),
                }));
                if let Err(err) = patiently(|| self.pipeline.audit(vec![event.clone()])).await {
                    tracing::warn!(error = %err, "a sink's erasure could not be audited");
                }
                if let Err(err) = outcome {
                    tracing::warn!(sink = sink.name(), error = %err, "erasure in sink failed; retried later");
                    failed.push(sink.name().to_owned());
                }
            }
        }
        failed.sort();
        failed.dedup();
        failed
    }

    /// Deletes expired requests, sets the overdue gauge and retries the sink part of erasures
    /// that failed before; called periodically. An erasure still open (its caller gave up part
    /// way) is carried out again whole: subjects not yet erased here, then the sinks.
    pub async fn retry_pending(&self) -> Result<(), StoreError> {
        // (An open erasure naming nobody was recorded open on purpose, for an operator; one
        // received less than OWN_CALL_LIMIT ago may still be under way in its own call.)
        let given_up_before = OffsetDateTime::now_utc() - OWN_CALL_LIMIT;
        let unfinished = |r: &SubjectRequest| {
            r.kind == RequestKind::Erasure
                && r.status == RequestStatus::Open
                && !r.subjects.is_empty()
                && r.received_at < given_up_before
        };
        // An open request that young is left to its call altogether (its sinks' part included).
        let in_its_call = |r: &SubjectRequest| r.status == RequestStatus::Open && r.received_at >= given_up_before;
        let due = |r: &SubjectRequest| !in_its_call(r) && (!r.pending_sinks.is_empty() || unfinished(r));
        for request in self.sweep()?.into_iter().filter(|r| due(r)) {
            if unfinished(&request) {
                // As it stands now: a redelivery may have finished it since the sweep read it.
                let Some(request) = self.get(request.id)?.filter(|r| unfinished(r)) else { continue };
                let (id, subjects) = (request.id, request.subjects.clone());
                if let Err(err) = self.carry_out_erasure(request, subjects).await {
                    tracing::warn!(request_id = %id, error = %err, "open erasure not finished; retried later");
                }
                continue;
            }
            let erased: Vec<(String, Vec<Uuid>)> = request
                .subjects
                .iter()
                .map(|p| Ok((p.clone(), self.store.inquiries_of(p)?)))
                .collect::<Result<_, StoreError>>()?;
            let pending = self.erase_in_sinks(&erased, "gateway").await;
            // Onto the record as it stands now (a redelivery may have changed it meanwhile).
            if let Some(mut now) = self.get(request.id)? {
                now.pending_sinks.retain(|sink| pending.contains(sink));
                self.save(&now)?;
            }
        }
        Ok(())
    }
}

/// Counts a carried-out request by kind and status.
fn count(kind: RequestKind, status: RequestStatus) {
    let kind = match kind {
        RequestKind::Export => "export",
        RequestKind::Erasure => "erasure",
        RequestKind::ConsentWithdrawal => "consent_withdrawal",
    };
    let outcome = match status {
        RequestStatus::NotFound => "not_found",
        _ => "completed",
    };
    metrics::counter!(crate::telemetry::SUBJECT_REQUESTS, "kind" => kind, "outcome" => outcome).increment(1);
}

/// Per subject and purpose: the latest consent reported with one of their inquiries, the
/// latest of `withdrawals`, and whether the consent holds now.
fn consent_states(
    store: &Store,
    pseudonyms: &[String],
    withdrawals: &[SubjectRequest],
) -> Result<Vec<ConsentState>, StoreError> {
    let mut states = Vec::new();
    for pseudonym in pseudonyms {
        let mut latest: std::collections::BTreeMap<String, ConsentState> = Default::default();
        for id in store.inquiries_of(pseudonym)? {
            let Some(stored) = StoredInquiry::load(store, id)? else { continue };
            let Some(consent) = stored.inquiry.consent.filter(|_| &stored.inquiry.buyer.pseudonym == pseudonym) else {
                continue;
            };
            // A consent counts from when the gateway had it at the latest: a client's clock
            // (`given_at` may be up to 5 minutes ahead) never puts it after a later withdrawal.
            let effective = consent.given_at.min(stored.inquiry.received_at);
            for purpose in &consent.purposes {
                let state = latest.entry(purpose.clone()).or_insert_with(|| ConsentState::none(pseudonym, purpose));
                if state.given_at.is_none() || state.effective_at < effective {
                    state.given_at = Some(consent.given_at);
                    state.notice = Some(consent.notice.clone());
                    state.inquiry_id = Some(id);
                    state.effective_at = effective;
                }
            }
        }
        for withdrawal in withdrawals.iter().filter(|r| r.subjects.contains(pseudonym)) {
            for purpose in &withdrawal.purposes {
                let state = latest.entry(purpose.clone()).or_insert_with(|| ConsentState::none(pseudonym, purpose));
                if state.withdrawn_at.is_none_or(|at| at < withdrawal.received_at) {
                    state.withdrawn_at = Some(withdrawal.received_at);
                    state.withdrawal_request = Some(withdrawal.id);
                }
            }
        }
        for mut state in latest.into_values() {
            // A consent given again after a withdrawal holds; otherwise the withdrawal does.
            state.status = match (state.given_at, state.withdrawn_at) {
                (Some(_), Some(withdrawn)) if state.effective_at > withdrawn => ConsentStatus::Given,
                (_, Some(_)) => ConsentStatus::Withdrawn,
                _ => ConsentStatus::Given,
            };
            states.push(state);
        }
    }
    Ok(states)
}

/// The subject's inquiries (decrypted) and audit events, and the index of the first audit entry
/// searched (the latest [`MAX_AUDIT_SCAN`] are: 0 unless the log is longer).
fn collect_export(
    store: &Store,
    subjects: &Subjects,
    pseudonyms: &[String],
) -> Result<(Vec<Value>, Vec<Value>, u64), StoreError> {
    let mut inquiries = Vec::new();
    let mut wanted_ids = std::collections::HashSet::new();
    for pseudonym in pseudonyms {
        for id in store.inquiries_of(pseudonym)? {
            let Some(bytes) = store.get_inquiry(id)? else { continue };
            let Ok(mut stored) = serde_json::from_slice::<StoredInquiry>(&bytes) else { continue };
            // Only what was sealed for this very subject: never another buyer's data.
            if &stored.inquiry.buyer.pseudonym != pseudonym {
                continue;
            }
            let personal = subjects.open(&stored.inquiry)?;
            let raw = match store.get_raw(id)? {
                Some(sealed) => subjects.open_raw(&stored.inquiry, &sealed)?,
                None => None,
            };
            stored.inquiry.sealed.clear();
            wanted_ids.insert(id);
            inquiries.push(json!({
                "inquiry": stored.inquiry,
                "personal": personal,
                "decision": stored.decision,
                "original_payload": raw.map(|r| String::from_utf8(r.clone()).map(Value::from).unwrap_or_else(|_| BASE64.encode(r).into())),
            }));
        }
    }
    let mut events = Vec::new();
    let len = store.audit_len()?;
    let searched_from = len.saturating_sub(MAX_AUDIT_SCAN);
    let mut from = searched_from;
    while from < len {
        let to = (from + 10_000).min(len);
        for (_, bytes) in store.audit_entries(from, to)? {
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&bytes) else { continue };
            let about_subject = entry.event.subject.as_ref().is_some_and(|s| pseudonyms.contains(s));
            let about_inquiry = entry.event.inquiry_id.is_some_and(|id| wanted_ids.contains(&id));
            if about_subject || about_inquiry {
                events.push(serde_json::to_value(&entry).expect("audit entries serialize"));
            }
        }
        from = to;
    }
    Ok((inquiries, events, searched_from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn deadlines_follow_each_law() {
        let received = datetime!(2026-01-31 10:00 UTC);
        let (due, extended) = Jurisdiction::Gdpr.deadlines(received);
        assert_eq!(due, datetime!(2026-02-28 10:00 UTC), "one month, clamped to the month's end");
        assert_eq!(extended, Some(datetime!(2026-04-30 10:00 UTC)), "two further months");
        let (due, _) = Jurisdiction::Gdpr.deadlines(datetime!(2026-12-15 09:00 UTC));
        assert_eq!(due, datetime!(2027-01-15 09:00 UTC));
        assert_eq!(
            Jurisdiction::Ccpa.deadlines(received),
            (datetime!(2026-03-17 10:00 UTC), Some(datetime!(2026-05-01 10:00 UTC)))
        );
        assert_eq!(Jurisdiction::Lgpd.deadlines(received), (datetime!(2026-02-15 10:00 UTC), None));
    }
}
