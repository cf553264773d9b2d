//! Access tokens of pollers whose platforms' tokens expire (Etsy after an hour, eBay after two,
//! Shopee after four): refreshed with the entry's `refresh_token` five minutes before they expire
//! (halfway through, for tokens shorter than ten minutes),
//! and at once when the platform answers 401. Several platforms rotate refresh tokens (each
//! refresh returns a new one and retires the old), so the newest grant is kept in the embedded
//! store, sealed under the KEK, and fsynced before it is used: a restart goes on with it rather
//! than with the spent token in the config. A new `refresh_token` in the config (a shop
//! re-authorized) wins over what is stored.

use std::time::{Duration, Instant};

use inquiry_connectors::poll::{PollCredentials, PollTarget, Poller};
use metrics::counter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::compliance::vault::Vault;
use crate::config::PollerConfig;
use crate::poll::{exchange, Place, PollClient};
use crate::store::Store;
use crate::telemetry;

/// How long before its expiry a token is refreshed (at most half its lifetime).
const EARLY: time::Duration = time::Duration::minutes(5);

/// The live tokens of one poller.
pub struct PollTokens {
    /// Store name of the sealed grant.
    name: String,
    access: String,
    refresh: Option<String>,
    /// When to refresh: five minutes before expiry, or halfway for tokens shorter than ten minutes.
    refresh_at: Option<OffsetDateTime>,
    /// Fingerprint of the config's refresh token the grant descends from.
    origin: String,
    refreshed_at: Option<Instant>,
    /// The sealed grant these tokens come from (what a new grant replaces in the store).
    sealed: Option<Vec<u8>>,
    /// The sealed grant of a refresh whose tokens are in use but not yet stored (the store or the
    /// CQL lease failed): stored before any other call, never given up for the retired one.
    unsaved: Option<Vec<u8>>,
}

/// A grant as stored (sealed).
#[derive(Serialize, Deserialize)]
struct Stored {
    origin: String,
    access_token: String,
    refresh_token: Option<String>,
    refresh_at: Option<i64>,
}

impl PollTokens {
    /// The tokens of the poller whose cursor is `cursor_name`: the `sealed` grant stored for it
    /// when it descends from the config's refresh token, else the config's tokens.
    pub fn load(config: &PollerConfig, cursor_name: &str, sealed: Option<Vec<u8>>, vault: &Vault) -> PollTokens {
        let name = format!("poll-token/{cursor_name}");
        let origin = config.refresh_token.as_deref().map(fingerprint).unwrap_or_default();
        let mut tokens = PollTokens {
            name,
            access: config.access_token.clone(),
            refresh: config.refresh_token.clone().filter(|t| !t.is_empty()),
            refresh_at: None,
            origin,
            refreshed_at: None,
            sealed: None,
            unsaved: None,
        };
        if tokens.refresh.is_none() {
            return tokens;
        }
        tokens.sealed = sealed.clone();
        let stored = sealed
            .and_then(|sealed| vault.open_secret(&tokens.name, &sealed).ok())
            .and_then(|plain| serde_json::from_slice::<Stored>(&plain).ok());
        if let Some(stored) = stored.filter(|s| s.origin == tokens.origin) {
            tokens.access = stored.access_token;
            tokens.refresh = stored.refresh_token.or(tokens.refresh);
            tokens.refresh_at = stored.refresh_at.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
        }
        tokens
    }

    /// Takes the grant another replica stored (`sealed`), when it descends from the same config
    /// refresh token; either way, a new grant will replace that one in the store.
    pub fn adopt(&mut self, sealed: Vec<u8>, vault: &Vault) {
        if self.sealed.as_deref() == Some(sealed.as_slice()) {
            return; // still the grant ours replaces: an unsaved one of ours stays the newest
        }
        let stored = vault
            .open_secret(&self.name, &sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice::<Stored>(&plain).ok())
            .filter(|s| s.origin == self.origin);
        if let Some(stored) = stored {
            self.access = stored.access_token;
            self.refresh = stored.refresh_token.or(self.refresh.take());
            self.refresh_at = stored.refresh_at.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
            // Another replica refreshed and stored first: its grant is the one every replica
            // uses (one of another origin is not taken, and ours stays to be stored).
            self.unsaved = None;
        }
        self.sealed = Some(sealed);
    }

    /// Sets the grant a new one replaces where it is kept: the lease's, which differs from the
    /// one loaded when a group polled locally before moves to `cql` coordination (the lease has
    /// none yet; a new grant conditioned on the local one would never be stored).
    pub fn replacing(&mut self, stored: Option<Vec<u8>>) {
        self.sealed = stored;
    }

    /// True while a refreshed grant is in use but not stored yet ([`PollTokens::keep_unsaved`]).
    pub fn has_unsaved(&self) -> bool {
        self.unsaved.is_some()
    }

    /// Stores the grant of the last refresh if it is not stored yet; until it is, no call may be
    /// made: the platform has retired the refresh token the store still holds.
    pub async fn keep_unsaved(&mut self, store: &Store, account: &str, place: &Place<'_>) -> Result<(), String> {
        let Some(sealed) = self.unsaved.clone() else { return Ok(()) };
        place
            .keep_grant(store, &self.name, account, &sealed, self.sealed.as_deref())
            .await
            .map_err(|e| format!("the new token could not be stored: {e}"))?;
        self.sealed = Some(sealed);
        self.unsaved = None;
        Ok(())
    }

    /// The access token to send.
    pub fn access(&self) -> &str {
        &self.access
    }

    /// True if tokens can be refreshed (the entry has a refresh token).
    pub fn can_refresh(&self) -> bool {
        self.refresh.is_some()
    }

    /// True if the token was refreshed in the last minute (a 401 right after a refresh is not
    /// cured by another one).
    pub fn just_refreshed(&self) -> bool {
        self.refreshed_at.is_some_and(|at| at.elapsed() < Duration::from_secs(60))
    }

    /// True if the token must be refreshed before the next call: there is none, or its refresh
    /// time has come.
    pub fn needs_refresh(&self, now: OffsetDateTime) -> bool {
        self.can_refresh() && (self.access.is_empty() || self.refresh_at.is_some_and(|at| at <= now))
    }

    /// Marks the token as expired (the platform answered 401).
    pub fn expire(&mut self) {
        self.refresh_at = Some(OffsetDateTime::UNIX_EPOCH);
    }

    /// Trades the refresh token for a new access token at the platform's token endpoint
    /// (`token_url`, else the poller's, else the API's base URL), and keeps the grant in `place`.
    pub async fn refresh(
        &mut self,
        poller: &dyn Poller,
        config: &PollerConfig,
        client: &PollClient,
        store: &Store,
        place: &Place<'_>,
        vault: &Vault,
    ) -> Result<(), String> {
        let name = poller.name();
        let refresh = self.refresh.clone().ok_or("no refresh token")?;
        let now = OffsetDateTime::now_utc();
        let credentials = PollCredentials {
            access_token: "",
            app_key: config.app_key.as_deref(),
            app_secret: config.app_secret.as_deref(),
        };
        let target = PollTarget { account: &config.account, credentials, now, wants_answers: false };
        let request = poller.refresh_request(&target, &refresh).ok_or("this platform's tokens are not refreshed")?;
        let base = config.token_url.as_deref().or(poller.token_base_url()).unwrap_or(&config.base_url);
        let outcome = async {
            let agent = concat!("inquiry-gateway/", env!("CARGO_PKG_VERSION"));
            let (status, _, body) = exchange(client, base, request, agent).await.map_err(|e| e.to_string())?;
            if !(200..300).contains(&status) {
                return Err(format!("the token endpoint answered {status}"));
            }
            let grant = poller.parse_refresh(&body, now).map_err(|e| e.to_string())?;
            self.access = grant.access_token;
            self.refresh = grant.refresh_token.or(Some(refresh));
            let lifetime = grant.expires_in_seconds.map(time::Duration::seconds);
            self.refresh_at = lifetime.map(|l| now + l - EARLY.min(l / 2));
            self.refreshed_at = Some(Instant::now());
            // In use from now on, stored or not: the old refresh token may be retired already.
            self.unsaved = Some(self.seal(vault));
            self.keep_unsaved(store, &config.account, place).await
        }
        .await;
        let label = if outcome.is_ok() { "ok" } else { "error" };
        counter!(telemetry::POLL_TOKEN_REFRESHES, "connector" => name, "outcome" => label).increment(1);
        if outcome.is_ok() {
            tracing::info!(poller = name, refresh_at = ?self.refresh_at, "access token refreshed");
        }
        outcome
    }

    /// The grant, sealed under the KEK.
    fn seal(&self, vault: &Vault) -> Vec<u8> {
        let stored = Stored {
            origin: self.origin.clone(),
            access_token: self.access.clone(),
            refresh_token: self.refresh.clone(),
            refresh_at: self.refresh_at.map(OffsetDateTime::unix_timestamp),
        };
        vault.seal_secret(&self.name, &serde_json::to_vec(&stored).expect("a grant serializes"))
    }
}

/// A short fingerprint of a token (which config token a stored grant descends from).
fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..8])
}
