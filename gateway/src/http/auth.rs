//! Per-account API keys for the ingest API.
//!
//! Keys are held only as SHA-256 digests and looked up by the digest of the presented key, so
//! the comparison never runs over the secret itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::AuthConfig;

/// What a caller may do.
#[derive(Debug, Clone)]
pub enum Grant {
    /// No keys are configured (loopback embedded default): every account.
    Open,
    /// A key: the accounts it names.
    Key {
        /// The key's name from the config.
        id: String,
        /// Accounts it may use; `None` for all (`"*"`).
        accounts: Option<Vec<String>>,
        /// What it may do (`config::API_KEY_SCOPES`).
        scopes: Vec<String>,
    },
}

impl Grant {
    /// The accounts this grant is limited to; `None` for every account.
    pub fn accounts(&self) -> Option<&[String]> {
        match self {
            Grant::Open | Grant::Key { accounts: None, .. } => None,
            Grant::Key { accounts: Some(accounts), .. } => Some(accounts),
        }
    }

    /// True if this grant covers `account`.
    pub fn allows(&self, account: &str) -> bool {
        match self {
            Grant::Open => true,
            Grant::Key { accounts: None, .. } => true,
            Grant::Key { accounts: Some(accounts), .. } => accounts.iter().any(|a| a == account),
        }
    }

    /// 403 `scope_missing` unless the grant holds `scope` (see `config::API_KEY_SCOPES`).
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        match self {
            Grant::Key { id, scopes, .. } if !scopes.iter().any(|s| s == scope) => {
                tracing::warn!(api_key = %id, scope, "ingest call refused: scope not granted");
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "scope_missing",
                    format!("this key lacks the `{scope}` scope"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Who this is, for the audit trail: `api_key:<id>`, or `open` without keys.
    pub fn actor(&self) -> String {
        match self {
            Grant::Open => "open".to_owned(),
            Grant::Key { id, .. } => format!("api_key:{id}"),
        }
    }

    /// 403 for an account outside the grant.
    pub fn check(&self, account: &str) -> Result<(), ApiError> {
        if self.allows(account) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::FORBIDDEN, "account_forbidden", "this key may not use that account")
                .field_name("account"))
        }
    }
}

/// Key digest -> what the key may do.
type KeyTable = HashMap<[u8; 32], Grant>;

/// The configured keys; replaced as a whole on reload (SIGHUP).
#[derive(Debug)]
pub struct Authenticator {
    keys: RwLock<Option<Arc<KeyTable>>>,
}

impl Authenticator {
    /// Builds the key table from config; no keys means an open API.
    pub fn new(config: &AuthConfig) -> Self {
        Authenticator { keys: RwLock::new(table(config)) }
    }

    /// Takes the keys of `config` instead (a validated config, re-read on SIGHUP): a rotated key
    /// works and the old one is refused from the next request on.
    pub fn reload(&self, config: &AuthConfig) {
        *self.keys.write().expect("api keys lock") = table(config);
    }

    /// True when no keys are configured.
    pub fn is_open(&self) -> bool {
        self.keys.read().expect("api keys lock").is_none()
    }

    /// The grant of the request's `Authorization: Bearer` key, or 401 (403 for a browser's
    /// request to the open API, see [`refuse_browsers`]).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Grant, ApiError> {
        let Some(keys) = self.keys.read().expect("api keys lock").clone() else {
            refuse_browsers(headers)?;
            return Ok(Grant::Open);
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
            .map(|(_, key)| key)
            .ok_or_else(|| unauthorized("send an api key as Authorization: Bearer <key>"))?;
        keys.get(&digest(presented.trim())).cloned().ok_or_else(|| unauthorized("unknown api key"))
    }
}

/// Refuses what only a web browser sends to an API left open on loopback (no keys or tokens):
/// any page the operator visits can send a request to 127.0.0.1 (a simple POST needs no
/// preflight), or make its own host name resolve there and read the answers (DNS rebinding).
/// So a request naming another host, carrying `Origin`, or fetched by a page
/// (`Sec-Fetch-Site` other than `none`) is answered 403 `browser_refused`. Tools (curl, the CLI,
/// Prometheus) send none of these.
pub fn refuse_browsers(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |message: &str| Err(ApiError::new(StatusCode::FORBIDDEN, "browser_refused", message));
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or_default();
        // `127.0.0.1:8080`, `[::1]:8080`, `localhost`; and a bare `::1`, as some clients send it.
        let named = host.parse::<http::uri::Authority>().is_ok_and(|h| crate::config::is_loopback_host(h.host()));
        if !named && !crate::config::is_loopback_host(host) {
            return refuse("without keys the API answers only requests to a loopback host name");
        }
    }
    let fetched_by_a_page = headers.get("sec-fetch-site").is_some_and(|site| site.as_bytes() != b"none");
    if headers.contains_key(header::ORIGIN) || fetched_by_a_page {
        return refuse("without keys the API refuses requests from web pages; configure keys to serve them");
    }
    Ok(())
}

/// The key table of `config`; `None` (an open API) without keys.
fn table(config: &AuthConfig) -> Option<Arc<KeyTable>> {
    if config.api_keys.is_empty() {
        return None;
    }
    let keys = config
        .api_keys
        .iter()
        .map(|k| {
            let accounts = (!k.accounts.iter().any(|a| a == "*")).then(|| k.accounts.clone());
            (digest(&k.key), Grant::Key { id: k.id.clone(), accounts, scopes: k.scopes.clone() })
        })
        .collect();
    Some(Arc::new(keys))
}

fn unauthorized(message: &str) -> ApiError {
    let mut err = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
    err.headers.push((header::WWW_AUTHENTICATE, "Bearer"));
    err
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
