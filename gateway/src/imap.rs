//! IMAP mailboxes: new messages of a folder become inquiries of channel `email`.
//!
//! One task per `[[mailboxes]]` entry: LOGIN, SELECT the folder, then fetch every message whose
//! UID is above the durable cursor `<UIDVALIDITY>:<last UID>` in batches of [`BATCH`] with
//! `BODY.PEEK[]` (messages stay unread for the people who read the mailbox too). Each batch is
//! submitted together with the cursor after it in one atomic store write, so a restart neither
//! skips nor re-imports a message. When the server's UIDVALIDITY differs from the cursor's, the
//! folder is read again from the start: the inquiry ids come from the Message-ID, so what was
//! imported before is dropped by the pipeline's dedup. Between checks the task waits in IDLE
//! (RFC 2177, renewed every [`IDLE_RENEW`]) when the server offers it, else polls every
//! `interval_ms`. Errors close the connection and reconnect with backoff; the stop signal ends
//! the task at once (an unfinished batch is not acknowledged and is fetched again next time).
//!
//! Never logged: the password, the login name, anything of a message but its UID.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_imap::types::UnsolicitedResponse;
use async_imap::Client;
use futures_util::TryStreamExt;
use inquiry_connectors::email::{self, Parsed};
use inquiry_connectors::{Channel, NormalizeContext};
use metrics::counter;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls;

use crate::compliance::subjects::Subjects;
use crate::config::MailboxConfig;
use crate::pipeline::{Pipeline, Submission};
use crate::retry::{sleep_or_stop, Backoff};
use crate::store::Store;
use crate::telemetry::{self, Hop};

/// Messages fetched and submitted together.
pub const BATCH: usize = 50;
/// How long one IDLE lasts before it is renewed (RFC 2177: at most 29 minutes).
pub const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);
/// Longest wait for one IMAP command (connecting, logging in, a fetch of one batch).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The connector label of the poll metrics.
const CONNECTOR: &str = "imap";

/// Reads one mailbox until `stop` fires.
pub async fn run(
    config: MailboxConfig,
    pipeline: Pipeline,
    store: Store,
    subjects: Arc<Subjects>,
    mut stop: watch::Receiver<()>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(300));
    // Shown as a poller of connector `imap` named by the mailbox, so that the poller alerts
    // (a stalled cycle) cover mailboxes too.
    let _active = crate::poll::Active::new(CONNECTOR, &config.name);
    // Counted from the start: a reader that never gets through (a wrong password) shows as stalled.
    set_now(telemetry::POLL_CYCLE_COMPLETED, &config.name);
    let reader = Reader { cursor_name: format!("imap/{}", config.name), config, pipeline, store, subjects };
    tracing::info!(mailbox = %reader.config.name, host = %reader.config.host, "mailbox reader started");
    loop {
        let failure = tokio::select! {
            failed = reader.session(&mut backoff) => failed.unwrap_err(),
            _ = stop.changed() => return,
        };
        counter!(telemetry::POLL_REQUESTS, "connector" => CONNECTOR, "outcome" => "error").increment(1);
        let delay = backoff.next();
        tracing::warn!(mailbox = %reader.config.name, error = %failure, delay_ms = delay.as_millis() as u64,
            "mailbox session failed; reconnecting");
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
    }
}

/// One mailbox and where its inquiries go.
struct Reader {
    config: MailboxConfig,
    cursor_name: String,
    pipeline: Pipeline,
    store: Store,
    subjects: Arc<Subjects>,
}

impl Reader {
    /// Connects and reads until something fails; the error says what (never a secret).
    async fn session(&self, backoff: &mut Backoff) -> Result<Infallible, String> {
        let (host, port) = (self.config.host.as_str(), self.config.port);
        let tcp = timed(TcpStream::connect((host, port))).await?.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !self.config.tls {
            return self.serve(tcp, backoff).await;
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| "invalid host name")?;
        let tls = timed(tls_connector()?.connect(name, tcp)).await?.map_err(|e| format!("tls: {e}"))?;
        self.serve(tls, backoff).await
    }

    /// Logs in, selects the folder, then alternates fetching and waiting.
    async fn serve<T>(&self, stream: T, backoff: &mut Backoff) -> Result<Infallible, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
    {
        let mut client = Client::new(stream);
        timed(client.read_response()).await?.map_err(|e| format!("greeting: {e}"))?.ok_or("closed before greeting")?;
        let mut session = timed(client.login(&self.config.username, &self.config.password))
            .await?
            .map_err(|(e, _)| format!("login refused: {}", describe(&e)))?;
        let idle = timed(session.capabilities()).await?.map_err(|e| describe(&e))?.has_str("IDLE");
        let mailbox = timed(session.select(&self.config.folder)).await?.map_err(|e| describe(&e))?;
        let validity = mailbox.uid_validity.ok_or("the server gave no UIDVALIDITY")?;
        let mut last = self.resume(validity).await?;
        tracing::info!(mailbox = %self.config.name, idle, uid_validity = validity, last_uid = last, "mailbox open");
        let unsolicited = session.unsolicited_responses.clone();
        loop {
            // What arrived before this search is found by it; what arrives later is announced.
            while unsolicited.try_recv().is_ok() {}
            last = self.fetch_new(&mut session, validity, last).await?;
            // A check of the folder is a completed cycle (with IDLE at least every IDLE_RENEW).
            set_now(telemetry::POLL_CYCLE_COMPLETED, &self.config.name);
            // Only a fetch that went through resets the backoff: a message that breaks every
            // fetch must not make the reader log in again twice a second.
            backoff.reset();
            if idle {
                let mut handle = session.idle();
                timed(handle.init()).await?.map_err(|e| describe(&e))?;
                // EXISTS sent during the fetch or before IDLE was accepted went to the channel.
                let announced = std::iter::from_fn(|| unsolicited.try_recv().ok())
                    .any(|r| matches!(r, UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)));
                if !announced {
                    let (wait, _interrupt) = handle.wait_with_timeout(IDLE_RENEW);
                    if let Ok(result) = tokio::time::timeout(IDLE_RENEW, wait).await {
                        result.map_err(|e| describe(&e))?;
                    }
                }
                session = timed(handle.done()).await?.map_err(|e| describe(&e))?;
            } else {
                tokio::time::sleep(Duration::from_millis(self.config.interval_ms)).await;
                timed(session.noop()).await?.map_err(|e| describe(&e))?;
            }
        }
    }

    /// The last UID imported under `validity`; 0 (read everything) when the cursor is absent or
    /// belongs to another UIDVALIDITY, which is then recorded at once.
    async fn resume(&self, validity: u32) -> Result<u32, String> {
        let cursor = self.store.cursor(&self.cursor_name).map_err(|e| format!("cursor: {e}"))?;
        let stored = cursor.as_deref().and_then(|c| c.split_once(':'));
        let stored = stored.and_then(|(v, u)| Some((v.parse::<u32>().ok()?, u.parse::<u32>().ok()?)));
        match stored {
            Some((v, uid)) if v == validity => return Ok(uid),
            Some((v, _)) => tracing::warn!(mailbox = %self.config.name, old = v, new = validity,
                "UIDVALIDITY changed: reading the folder again (messages imported before are dropped as duplicates)"),
            None if cursor.is_some() => {
                tracing::warn!(mailbox = %self.config.name, "unreadable cursor: reading the folder again")
            }
            None => tracing::info!(mailbox = %self.config.name, "no cursor yet: reading the whole folder"),
        }
        self.submit(Vec::new(), validity, 0).await?;
        Ok(0)
    }

    /// Fetches, parses and submits every message above `last`, a batch at a time; returns the
    /// last UID submitted.
    async fn fetch_new<T>(
        &self,
        session: &mut async_imap::Session<T>,
        validity: u32,
        mut last: u32,
    ) -> Result<u32, String>
    where
        T: AsyncRead + AsyncWrite + Unpin + Debug + Send,
    {
        // `n:*` always matches the highest UID, even below n: filter.
        let query = search_query(last, self.config.first_read_days, OffsetDateTime::now_utc());
        let found = timed(session.uid_search(query)).await?;
        let mut uids: Vec<u32> = found.map_err(|e| describe(&e))?.into_iter().filter(|u| *u > last).collect();
        uids.sort_unstable();
        counter!(telemetry::POLL_REQUESTS, "connector" => CONNECTOR, "outcome" => "ok").increment(1);
        for chunk in uids.chunks(BATCH) {
            let set: Vec<String> = chunk.iter().map(u32::to_string).collect();
            let fetches = timed(async {
                session.uid_fetch(set.join(","), "(UID INTERNALDATE BODY.PEEK[])").await?.try_collect::<Vec<_>>().await
            })
            .await?
            .map_err(|e| describe(&e))?;
            counter!(telemetry::POLL_REQUESTS, "connector" => CONNECTOR, "outcome" => "ok").increment(1);
            let started = Instant::now();
            let mut submissions = Vec::with_capacity(fetches.len());
            let mut ignored = 0u64;
            for fetch in &fetches {
                let (Some(uid), Some(raw)) = (fetch.uid, fetch.body()) else { continue };
                let internal_date =
                    fetch.internal_date().and_then(|d| OffsetDateTime::from_unix_timestamp(d.timestamp()).ok());
                let trace_id = crate::http::new_trace_id();
                let context = NormalizeContext { received_at: OffsetDateTime::now_utc(), trace_id: &trace_id };
                match email::parse(raw, &self.config.name, internal_date, &context) {
                    Ok(Parsed::Inquiry(mut inquiry)) => {
                        inquiry.assume_country(self.config.buyer_country.as_deref());
                        let actor = format!("mailbox:{}", self.config.name);
                        let submission = Submission::seal(*inquiry, raw, true, None, &actor, &self.subjects)
                            .map_err(|e| format!("sealing failed: {e}"))?;
                        submissions.push(submission);
                    }
                    Ok(Parsed::Ignored(reason)) => {
                        ignored += 1;
                        tracing::debug!(mailbox = %self.config.name, uid, reason = reason.as_str(), "message ignored");
                    }
                    Err(err) => {
                        ignored += 1;
                        tracing::warn!(mailbox = %self.config.name, uid, error = %err, "unparsable message skipped");
                    }
                }
            }
            telemetry::record_hop(Hop::Normalize, Channel::Email, started.elapsed(), submissions.len());
            if ignored > 0 {
                counter!(telemetry::POLL_ITEMS_IGNORED, "connector" => CONNECTOR).increment(ignored);
            }
            let next = *chunk.last().expect("chunks are not empty");
            let imported = submissions.len() as u64;
            self.submit(submissions, validity, next).await?;
            counter!(telemetry::POLL_ITEMS, "connector" => CONNECTOR).increment(imported);
            set_now(telemetry::POLL_CURSOR_UPDATED, &self.config.name);
            last = next;
        }
        Ok(last)
    }

    /// Stores `submissions` and the cursor `<validity>:<uid>` in one write, retrying while the
    /// pipeline is full.
    async fn submit(&self, submissions: Vec<Submission>, validity: u32, uid: u32) -> Result<(), String> {
        let cursor = Some((self.cursor_name.clone(), format!("{validity}:{uid}")));
        loop {
            match self.pipeline.submit_with_cursor(submissions.clone(), cursor.clone()).await {
                Ok(_) => return Ok(()),
                Err(crate::pipeline::SubmitError::Stopped) => return Err("pipeline stopped".to_owned()),
                Err(err) => {
                    tracing::warn!(mailbox = %self.config.name, error = %err, "pipeline refused the batch; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Sets the timestamp gauge `metric` of this mailbox (connector `imap`) to now.
fn set_now(metric: &'static str, mailbox: &str) {
    let now = OffsetDateTime::now_utc().unix_timestamp() as f64;
    metrics::gauge!(metric, "connector" => CONNECTOR, "account" => mailbox.to_owned()).set(now);
}

/// A TLS connector trusting the webpki roots.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Runs `f` with the command timeout.
async fn timed<F: Future>(f: F) -> Result<F::Output, String> {
    tokio::time::timeout(COMMAND_TIMEOUT, f).await.map_err(|_| "imap command timed out".to_owned())
}

/// An IMAP error for the log: parse errors can quote server data (message content), so only
/// their kind is given.
fn describe(err: &async_imap::error::Error) -> String {
    use async_imap::error::Error;
    match err {
        Error::Parse(_) => "unparsable server response".to_owned(),
        Error::Io(e) => format!("io: {}", e.kind()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_connector_builds_with_the_webpki_roots() {
        assert!(tls_connector().is_ok());
    }

    #[test]
    fn parse_errors_are_described_without_the_server_data() {
        let err = async_imap::error::Error::Parse(async_imap::error::ParseError::Invalid(b"Subject: private".to_vec()));
        assert_eq!(describe(&err), "unparsable server response");
    }
}

/// The `UID SEARCH` of the messages after UID `last`; read from the start (`last` 0), only those
/// the server received in the last `first_read_days` days (`SINCE`, by INTERNALDATE; 0: all).
fn search_query(last: u32, first_read_days: u32, now: OffsetDateTime) -> String {
    let uids = format!("UID {}:*", last.saturating_add(1));
    if last > 0 || first_read_days == 0 {
        return uids;
    }
    let since = (now - time::Duration::days(i64::from(first_read_days))).date();
    // RFC 3501 date: `1-Dec-2026` (English month abbreviations whatever the locale).
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS[usize::from(u8::from(since.month())) - 1];
    format!("{uids} SINCE {}-{month}-{}", since.day(), since.year())
}

#[cfg(test)]
mod search_tests {
    use super::*;

    #[test]
    fn a_folder_read_from_its_start_goes_back_first_read_days_only() {
        let now = time::macros::datetime!(2026-12-05 07:00 UTC);
        assert_eq!(search_query(0, 7, now), "UID 1:* SINCE 28-Nov-2026");
        assert_eq!(search_query(0, 0, now), "UID 1:*", "0: the whole folder");
        assert_eq!(search_query(41, 7, now), "UID 42:*", "resumed after a cursor: every new UID");
    }
}
