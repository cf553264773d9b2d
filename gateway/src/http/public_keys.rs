//! Signing keys that platforms publish by id (eBay's `kid`): fetched on first use, cached an hour.
//!
//! eBay asks integrators to cache its notification keys rather than fetch one per notification
//! (`GET /commerce/notification/v1/public_key/{public_key_id}` with an application token). The
//! cache is keyed by (key URL template, key id); a failed fetch is not cached.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long a fetched key is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(3600);
/// Where eBay serves its notification keys.
pub const EBAY_KEY_URL: &str = "https://api.ebay.com/commerce/notification/v1/public_key/{kid}";
/// Longest wait for the key endpoint.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

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
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Default for PublicKeys {
    fn default() -> Self {
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        PublicKeys { cache: DashMap::new(), client: Client::builder(TokioExecutor::new()).build(connector) }
    }
}

impl PublicKeys {
    /// The PEM of key `kid`: from the cache while fresh, else fetched from `url_template` (`{kid}`
    /// replaced) with `Authorization: Bearer <token>`.
    pub async fn get(&self, url_template: &str, kid: &str, token: Option<&str>) -> Result<String, KeyError> {
        let key = (url_template.to_owned(), kid.to_owned());
        if let Some(entry) = self.cache.get(&key) {
            if entry.1.elapsed() < KEY_TTL {
                return Ok(entry.0.clone());
            }
        }
        let pem = self.fetch(url_template, kid, token).await?;
        self.cache.insert(key, (pem.clone(), Instant::now()));
        Ok(pem)
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
        let body = tokio::time::timeout(FETCH_TIMEOUT, response.into_body().collect())
            .await
            .map_err(|_| KeyError::Unavailable)?
            .map_err(|_| KeyError::Unavailable)?
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|_| KeyError::Unavailable)?;
        answer["key"].as_str().map(str::to_owned).ok_or(KeyError::Unavailable)
    }
}
