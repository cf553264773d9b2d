//! Signing keys that platforms publish by id (eBay's `kid`): fetched on first use, cached an hour.
//!
//! eBay asks integrators to cache its notification keys rather than fetch one per notification
//! (`GET /commerce/notification/v1/public_key/{public_key_id}` with an application token). The
//! cache is keyed by (key URL template, key id). Anyone can post a notification naming any key
//! id, so fetches are bounded: one at a time, an id the platform does not know is remembered as
//! unknown for ten minutes (at most 1,024 of them), and a key body is read up to 64 KiB.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long a fetched key is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(3600);
/// Where eBay serves its notification keys.
pub const EBAY_KEY_URL: &str = "https://api.ebay.com/commerce/notification/v1/public_key/{kid}";
/// Longest wait for the key endpoint.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an id the platform does not know is answered as unknown without asking again.
const UNKNOWN_TTL: Duration = Duration::from_secs(600);
/// The most unknown ids remembered (beyond it, the oldest are forgotten).
const MAX_UNKNOWN: usize = 1024;
/// The largest key answer read.
const MAX_KEY_BYTES: usize = 64 * 1024;

/// Why a key could not be had.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The platform knows no such key (or refused the id): the request is not genuine.
    Unknown,
    /// The key endpoint could not be reached or answered oddly: worth a retry by the platform.
    Unavailable,
}

/// Fetched public keys by (URL template, key id), with when each was fetched.
pub struct PublicKeys {
    cache: DashMap<(String, String), (String, Instant)>,
    unknown: DashMap<(String, String), Instant>,
    /// One fetch at a time: a flood of forged ids cannot multiply calls to the platform.
    fetching: tokio::sync::Mutex<()>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Default for PublicKeys {
    fn default() -> Self {
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        PublicKeys {
            cache: DashMap::new(),
            unknown: DashMap::new(),
            fetching: tokio::sync::Mutex::new(()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl PublicKeys {
    /// The PEM of key `kid`: from the cache while fresh, else fetched from `url_template` (`{kid}`
    /// replaced) with `Authorization: Bearer <token>`.
    pub async fn get(&self, url_template: &str, kid: &str, token: Option<&str>) -> Result<String, KeyError> {
        let key = (url_template.to_owned(), kid.to_owned());
        let fresh = |keys: &Self| keys.cache.get(&key).filter(|e| e.1.elapsed() < KEY_TTL).map(|e| e.0.clone());
        if let Some(pem) = fresh(self) {
            return Ok(pem);
        }
        if self.unknown.get(&key).is_some_and(|at| at.elapsed() < UNKNOWN_TTL) {
            return Err(KeyError::Unknown);
        }
        let _one_at_a_time = self.fetching.lock().await;
        if let Some(pem) = fresh(self) {
            return Ok(pem); // fetched while this request waited
        }
        match self.fetch(url_template, kid, token).await {
            Ok(pem) => {
                self.cache.insert(key, (pem.clone(), Instant::now()));
                Ok(pem)
            }
            Err(KeyError::Unknown) => {
                if self.unknown.len() >= MAX_UNKNOWN {
                    self.unknown.retain(|_, at| at.elapsed() < UNKNOWN_TTL);
                    if self.unknown.len() >= MAX_UNKNOWN {
                        self.unknown.clear();
                    }
                }
                self.unknown.insert(key, Instant::now());
                Err(KeyError::Unknown)
            }
            Err(err) => Err(err),
        }
    }

    async fn fetch(&self, url_template: &str, kid: &str, token: Option<&str>) -> Result<String, KeyError> {
        // The id goes into a URL path: anything but a plain token is no key id eBay issues.
        if kid.is_empty() || kid.len() > 128 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(KeyError::Unknown);
        }
        let mut request = Request::get(url_template.replace("{kid}", kid)).header(header::ACCEPT, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(|_| KeyError::Unavailable)?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| KeyError::Unavailable)?
            .map_err(|_| KeyError::Unavailable)?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => return Err(KeyError::Unknown),
            _ => return Err(KeyError::Unavailable),
        }
        let body = tokio::time::timeout(FETCH_TIMEOUT, Limited::new(response.into_body(), MAX_KEY_BYTES).collect())
            .await
            .map_err(|_| KeyError::Unavailable)?
            .map_err(|_| KeyError::Unavailable)?
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|_| KeyError::Unavailable)?;
        answer["key"].as_str().map(str::to_owned).ok_or(KeyError::Unavailable)
    }
}
