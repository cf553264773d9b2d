//! Data subject requests shared between replicas (`[compliance] request_sharing = "cql"`).
//!
//! Each replica holds the inquiries it ingested. An erasure or a consent withdrawal is written to
//! the CQL store's `subject_requests` table before the replica that received it carries it out;
//! every replica reads the table every `request_refresh_ms` and carries out, on what it holds,
//! each request not carried out there yet (one left open by a failed attempt is done again),
//! under the same request id and deadline. A row names its subjects by their index (the keyed
//! hash of an identity, the same on every replica that shares `store.pseudonym_key`) and by
//! pseudonym: pseudonymised data, no names, addresses or message texts. Rows live 90 days.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use time::OffsetDateTime;
use tokio::sync::{watch, OnceCell};
use uuid::Uuid;

use super::requests::{Jurisdiction, RequestKind, SubjectRequests};
use crate::config::CqlConfig;

/// One shared request, as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRequest {
    /// The request id on the replica that received it; every replica records it under this id.
    pub id: Uuid,
    /// The replica that received it.
    pub origin: String,
    /// Erasure or consent withdrawal.
    pub kind: RequestKind,
    /// The law it is made under (the deadline runs from `received_at` everywhere).
    pub jurisdiction: Jurisdiction,
    /// Where it came from (`admin_api`, `shopify:<shop>`).
    pub source: String,
    /// Who made it.
    pub requested_by: String,
    /// The subjects' indexes.
    pub indexes: Vec<[u8; 32]>,
    /// Pseudonyms the request named.
    pub pseudonyms: Vec<String>,
    /// The purposes a consent withdrawal withdraws.
    pub purposes: Vec<String>,
    /// When the origin received it.
    pub received_at: OffsetDateTime,
}

/// The prepared statements of the table.
struct Cql {
    session: Session,
    insert: PreparedStatement,
    select: PreparedStatement,
}

/// The CQL store's `subject_requests` table, as this replica uses it.
pub struct SharedRequests {
    config: CqlConfig,
    replica: String,
    /// This process: its own rows are not read back as another replica's.
    instance: Uuid,
    cql: OnceCell<Cql>,
}

/// A CQL row: id, origin, instance, kind, jurisdiction, source, requested_by, indexes,
/// pseudonyms, purposes, received_at.
type Row = (
    Uuid,
    String,
    Uuid,
    String,
    String,
    String,
    String,
    Option<Vec<Vec<u8>>>,
    Option<Vec<String>>,
    Option<Vec<String>>,
    CqlTimestamp,
);

/// The single partition: shared requests are few (a handful a day), and every replica reads
/// them all.
const BUCKET: i32 = 0;

/// A unit enum as the text serde gives it (`erasure`, `gdpr`).
fn text_of(value: impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The unit enum `text` names.
fn parse_text<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

impl SharedRequests {
    /// The table of the CQL store `config`, used by replica `replica`.
    pub fn new(config: CqlConfig, replica: String) -> SharedRequests {
        SharedRequests { config, replica, instance: Uuid::new_v4(), cql: OnceCell::new() }
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The CQL connection, opened on first use.
    async fn cql(&self) -> Result<&Cql, String> {
        self.cql
            .get_or_try_init(|| async {
                let session = crate::sinks::cql::connect(&self.config).await.map_err(|e| e.to_string())?;
                let ks = &self.config.keyspace;
                let consistency = crate::sinks::cql::consistency_of(&self.config);
                let columns = "id, origin, instance, kind, jurisdiction, source, requested_by, indexes, pseudonyms, purposes, received_at";
                let mut insert = session
                    .prepare(format!(
                        "INSERT INTO {ks}.subject_requests (bucket, {columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                insert.set_consistency(consistency);
                let mut select = session
                    .prepare(format!("SELECT {columns} FROM {ks}.subject_requests WHERE bucket = ?"))
                    .await
                    .map_err(|e| e.to_string())?;
                select.set_consistency(consistency);
                Ok(Cql { session, insert, select })
            })
            .await
    }

    /// Writes `request` for every replica to read.
    pub async fn publish(&self, request: &SharedRequest) -> Result<(), String> {
        let cql = self.cql().await?;
        let at = CqlTimestamp((request.received_at.unix_timestamp_nanos() / 1_000_000) as i64);
        let indexes: Vec<Vec<u8>> = request.indexes.iter().map(|i| i.to_vec()).collect();
        let values = (
            BUCKET,
            request.id,
            &request.origin,
            self.instance,
            text_of(request.kind),
            text_of(request.jurisdiction),
            &request.source,
            &request.requested_by,
            indexes,
            &request.pseudonyms,
            &request.purposes,
            at,
        );
        cql.session.execute_unpaged(&cql.insert, values).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Every shared request, oldest first, and whether this process wrote it (a row this
    /// version cannot read is skipped).
    pub async fn all(&self) -> Result<Vec<(SharedRequest, bool)>, String> {
        let cql = self.cql().await?;
        let result = cql.session.execute_unpaged(&cql.select, (BUCKET,)).await.map_err(|e| e.to_string())?;
        let rows = result.into_rows_result().map_err(|e| e.to_string())?;
        let mut requests = Vec::new();
        for row in rows.rows::<Row>().map_err(|e| e.to_string())? {
            let Ok((id, origin, instance, kind, jurisdiction, source, requested_by, indexes, pseudonyms, purposes, at)) =
                row
            else {
                continue;
            };
            let (Some(kind), Some(jurisdiction), Ok(received_at)) = (
                parse_text(&kind),
                parse_text(&jurisdiction),
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.0) * 1_000_000),
            ) else {
                continue;
            };
            let indexes =
                indexes.unwrap_or_default().into_iter().filter_map(|i| <[u8; 32]>::try_from(i).ok()).collect();
            let request = SharedRequest {
                id,
                origin,
                kind,
                jurisdiction,
                source,
                requested_by,
                indexes,
                pseudonyms: pseudonyms.unwrap_or_default(),
                purposes: purposes.unwrap_or_default(),
                received_at,
            };
            requests.push((request, instance == self.instance));
        }
        Ok(requests)
    }
}

/// Reads the shared requests every `interval` and carries out, on this replica, each one not
/// carried out here yet ([`SubjectRequests::carry_out_shared`]), until `stop` (a failure is
/// logged and tried again at the next tick).
pub async fn follow(
    shared: Arc<SharedRequests>,
    requests: Arc<SubjectRequests>,
    interval: Duration,
    stop: watch::Receiver<()>,
) {
    crate::retry::every(interval, stop, "carrying out shared subject requests", || async {
        let mut failed = None;
        for (row, written_here) in shared.all().await? {
            let (id, origin) = (row.id, row.origin.clone());
            match requests.carry_out_shared(row, written_here).await {
                Ok(Some(request)) => tracing::info!(
                    request_id = %id, origin, kind = ?request.kind, status = ?request.status,
                    inquiries = request.inquiries, "shared subject request carried out"
                ),
                Ok(None) => {}
                Err(err) => failed = Some(err.to_string()),
            }
        }
        failed.map_or(Ok(()), Err)
    })
    .await;
}
