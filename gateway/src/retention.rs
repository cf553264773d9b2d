//! Retention in the embedded store: inquiries (with their sealed personal data, original payload,
//! subject link, place in the message index and Idempotency-Key) and dead letters past their
//! class's retention are removed, and the disk space of value-log files left without a live
//! record is freed.
//! Kafka and CQL enforce the same classes themselves (`retention.ms`, `USING TTL`).

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::compliance::audit::AuditEvent;
use crate::config::RetentionConfig;
use crate::pipeline::{Pipeline, StoredInquiry};
use crate::retry::sleep_or_stop;
use crate::store::{off_the_workers, Store, StoreError};

/// Removals per write.
const CHUNK: usize = 10_000;

/// Inquiries removed per job of the pipeline's stage (which also takes new inquiries: kept short).
const STAGE_CHUNK: usize = 500;

/// Inquiries a sweep must have removed before it frees their disk space.
const RECLAIM_AFTER: usize = 1_000;

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Swept {
    /// Inquiries removed.
    pub inquiries: usize,
    /// Dead letters removed.
    pub dead_letters: usize,
    /// Bytes of the store's value log freed after the removals.
    pub bytes_freed: u64,
}

/// How long an inquiry is kept after it was received, whatever its message time: one that
/// arrives already past its retention (a mailbox read from its start, a backfill) still reaches
/// the sinks, and a platform's redelivery of it is still recognised.
pub const KEPT_AFTER_RECEIPT: time::Duration = time::Duration::days(1);

/// How much earlier than its outbox entry an inquiry may have been received (its request or poll
/// cycle queued it later); retention keeps every inquiry received after the oldest entry a sink
/// has not taken, less this.
const SPOOL_MARGIN: time::Duration = time::Duration::hours(1);

/// How long retention waits for a sink that takes nothing.
const SPOOL_HOLD_LIMIT: time::Duration = time::Duration::days(7);

/// Removes what expired before `now` (message time older than the class's retention; an
/// inquiry at least [`KEPT_AFTER_RECEIPT`] after it was received, and never one a sink has not
/// taken yet: a backfill of old messages while Kafka is down waits for Kafka). The inquiries are removed by
/// the pipeline's stage ([`Pipeline::remove_expired`]), in its write order with conversion
/// reports. When the stage stops taking them, the sweep goes on with the rest (what it removed
/// is counted and audited); the other inquiries wait for the next sweep. An inquiry dated in the
/// future (a platform's clock; its id starts with that time, past every cutoff) goes by its
/// receipt time instead.
pub async fn sweep(
    store: &Store,
    pipeline: &Pipeline,
    retention: &RetentionConfig,
    now: OffsetDateTime,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    let cutoff = now - time::Duration::days(i64::from(retention.inquiries_days));
    // Inquiries received since then may still wait in an outbox (later ones are queued later).
    let oldest_spooled = {
        let pipeline = pipeline.clone();
        off_the_workers(move || pipeline.oldest_spooled()).await?
    };
    let spooled_since = match oldest_spooled {
        // A sink that has taken nothing for so long holds retention back no more (the storage
        // limit wins): what expires is removed unsent.
        Some(oldest) if now - oldest > SPOOL_HOLD_LIMIT => {
            tracing::warn!(
                waiting_days = (now - oldest).whole_days(),
                "a sink has not taken inquiries for over 7 days; retention no longer waits for it"
            );
            None
        }
        Some(oldest) => {
            tracing::info!(oldest_spooled = %oldest, "retention keeps the inquiries a sink has not taken yet");
            Some(oldest - SPOOL_MARGIN)
        }
        None => None,
    };
    let future = now + inquiry_connectors::MAX_CLOCK_SKEW;
    let mut after = None;
    let mut in_future = false;
    'pages: loop {
        let (expired, last) = {
            let store = store.clone();
            off_the_workers(move || {
                let (page, kept_from) = if in_future {
                    (store.inquiries_from(future, after, CHUNK)?, cutoff)
                } else {
                    (store.inquiries_before(cutoff, after, CHUNK)?, now - KEPT_AFTER_RECEIPT)
                };
                Ok::<_, StoreError>(expired_of(page, kept_from, spooled_since))
            })
            .await?
        };
        let Some(last) = last else {
            if in_future {
                break;
            }
            (in_future, after) = (true, None);
            continue;
        };
        after = Some(last);
        for chunk in expired.chunks(STAGE_CHUNK) {
            match pipeline.remove_expired(chunk.to_vec()).await {
                Ok(removed) => swept.inquiries += removed,
                Err(err) => {
                    tracing::error!(error = %err, removed = swept.inquiries,
                        "retention sweep stopped removing inquiries; the rest go at the next sweep");
                    break 'pages;
                }
            }
        }
    }
    let (store, retention) = (store.clone(), retention.clone());
    off_the_workers(move || sweep_the_rest(&store, &retention, now, swept)).await
}

/// The `(id, buyer pseudonym)` of a page's expired inquiries, and the page's last id.
type ExpiredPage = (Vec<(uuid::Uuid, String)>, Option<uuid::Uuid>);

/// Of one page of inquiries (ids and records), the `(id, buyer pseudonym)` of those to remove:
/// not those received after `kept_from`, nor since `spooled_since`; and the page's last id (None:
/// no more pages).
fn expired_of(
    page: Vec<(uuid::Uuid, Vec<u8>)>,
    kept_from: OffsetDateTime,
    spooled_since: Option<OffsetDateTime>,
) -> ExpiredPage {
    let last = page.last().map(|(id, _)| *id);
    let mut expired = Vec::with_capacity(page.len());
    for (id, record) in &page {
        match serde_json::from_slice::<StoredInquiry>(record) {
            // Received too recently: kept for a later sweep.
            Ok(stored) if stored.inquiry.received_at > kept_from => continue,
            // Perhaps not taken by a sink yet: kept until it is.
            Ok(stored) if spooled_since.is_some_and(|since| stored.inquiry.received_at >= since) => continue,
            Ok(stored) => expired.push((*id, stored.inquiry.buyer.pseudonym)),
            // Unreadable: remove the record itself; its subject cannot be found from it.
            Err(_) => expired.push((*id, String::new())),
        }
    }
    (expired, last)
}

/// After the inquiries in `swept`: their Idempotency-Keys, the expired dead letters, and the disk
/// space of the value log.
fn sweep_the_rest(
    store: &Store,
    retention: &RetentionConfig,
    now: OffsetDateTime,
    mut swept: Swept,
) -> Result<Swept, StoreError> {
    let cutoff = now - time::Duration::days(i64::from(retention.inquiries_days));
    // Their Idempotency-Keys, found by the inquiry id they hold: a scan of every stored key, so
    // only when inquiries expired (a key expires with its inquiry; one left by a sweep that
    // failed here goes with the next inquiries that expire).
    if swept.inquiries > 0 {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let expired = store.dedup_keys_before(cutoff, after.as_deref(), CHUNK)?;
            let Some(last) = expired.last().cloned() else { break };
            let mut batch = store.batch();
            expired.iter().for_each(|key| batch.remove_dedup(key));
            batch.write()?;
            after = Some(last);
        }
    }
    let cutoff = now - time::Duration::days(i64::from(retention.dead_letters_days));
    loop {
        let expired = store.dead_letters_before(cutoff, CHUNK)?;
        if expired.is_empty() {
            break;
        }
        let mut batch = store.batch();
        for id in &expired {
            batch.remove_dead_letter(*id);
        }
        batch.write()?;
        swept.dead_letters += expired.len();
    }
    // After large sweeps only: the scan it takes can pause writes (see Store::reclaim_space).
    if swept.inquiries >= RECLAIM_AFTER {
        match store.reclaim_space() {
            Ok(freed) => swept.bytes_freed = freed,
            // The removals stand (and are audited); the space is freed after a later sweep.
            Err(err) => tracing::warn!(error = %err, "expired records removed; their disk space not freed yet"),
        }
    }
    Ok(swept)
}

/// Sweeps every `retention.sweep_interval_ms` until `stop`; each sweep that removed something is audited.
pub async fn run(store: Store, retention: RetentionConfig, pipeline: Pipeline, mut stop: watch::Receiver<()>) {
    loop {
        match sweep(&store, &pipeline, &retention, OffsetDateTime::now_utc()).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(
                    inquiries = swept.inquiries,
                    dead_letters = swept.dead_letters,
                    bytes_freed = swept.bytes_freed,
                    "expired data removed"
                );
                let event = AuditEvent::new("retention.expired", "gateway").detail(serde_json::json!({
                    "removed": swept, "inquiries_days": retention.inquiries_days,
                    "dead_letters_days": retention.dead_letters_days,
                }));
                // The removals stand: their entry waits out a full queue rather than being dropped.
                if let Err(err) = crate::retry::patiently(|| pipeline.audit(vec![event.clone()])).await {
                    tracing::error!(error = %err, "a retention sweep could not be audited");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "retention sweep failed; retried next time"),
        }
        if sleep_or_stop(Duration::from_millis(retention.sweep_interval_ms), &mut stop).await {
            return;
        }
    }
}
