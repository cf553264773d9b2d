//! Signing keys that platforms publish by id (eBay's `kid`): fetched on first use, cached an hour.
//!
//! eBay asks integrators to cache its notification keys rather than fetch one per notification
//! (`GET /commerce/notification/v1/public_key/{public_key_id}` with an application token, which
//! expires after 2 hours: the gateway mints it with the client credentials grant when the
//! endpoint has `app_oauth`, and renews it before it expires). The cache is keyed by (key URL
//! template, key id). Anyone can post a notification naming any key id, so fetches are bounded:
//! one at a time, ids not seen before at most [`NEW_IDS_PER_SECOND`] (more: 503, the platform
//! retries), an id the platform does not know is remembered as unknown for ten minutes (at most
//! 1,024 of them), and a key body is read up to 64 KiB. A key seen before is served past its hour
//! (up to [`STALE_LIMIT`]) while another request refreshes it or while the platform's key
//! endpoint cannot be reached, so a busy or unreachable key endpoint does not stop deliveries.

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
/// How long a key fetched before is still served when it cannot be fetched again.
pub const STALE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// Fetches of key ids not seen before, per second (forged ids must not crowd out real ones).
pub const NEW_IDS_PER_SECOND: u32 = 2;
/// A minted application token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// How a key fetch authenticates.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    None,
    /// A configured bearer token.
    Static(&'a str),
    /// A token minted with the client credentials grant (cached until shortly before it expires).
    Minted(&'a crate::config::OAuthClientConfig),
}

/// Why a key could not be had.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The platform knows no such key (or refused the id): the request is not genuine.
    Unknown,
    /// The key endpoint could not be reached or answered oddly: worth a retry by the platform.
    Unavailable,
    /// The key endpoint refused our token (answered to the platform as [`KeyError::Unavailable`]).
    Unauthorized,
}

/// The application token of `config`: the one minted before while it has [`TOKEN_MARGIN`] left,
/// else a new one.
async fn minted_token(
    tokens: &mut std::collections::HashMap<(String, String), (String, Instant)>,
    config: &crate::config::OAuthClientConfig,
) -> Result<String, String> {
    let key = (config.token_url.clone(), config.client_id.clone());
    if let Some((token, renew_at)) = tokens.get(&key) {
        if Instant::now() < *renew_at {
            return Ok(token.clone());
        }
    }
    let minted = crate::sinks::oauth::TokenSource::for_platform(config.clone()).fetch().await?;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let left = Duration::from_millis(u64::try_from(minted.lifetime_ms - now_ms).unwrap_or(0));
    tokens.insert(key, (minted.token.clone(), Instant::now() + left.saturating_sub(TOKEN_MARGIN)));
    Ok(minted.token)
}

/// Fetched public keys by (URL template, key id), with when each was fetched.
pub struct PublicKeys {
    cache: DashMap<(String, String), (String, Instant)>,
    unknown: DashMap<(String, String), Instant>,
    /// One fetch at a time: a flood of forged ids cannot multiply calls to the platform. Holds
    /// the minted application tokens by (token URL, client id), with when each must be renewed.
    fetching: tokio::sync::Mutex<std::collections::HashMap<(String, String), (String, Instant)>>,
    new_ids: governor::DefaultDirectRateLimiter,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Default for PublicKeys {
    fn default() -> Self {
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http().enable_http1().build();
        PublicKeys {
            cache: DashMap::new(),
            unknown: DashMap::new(),
            fetching: tokio::sync::Mutex::new(Default::default()),
            new_ids: governor::RateLimiter::direct(governor::Quota::per_second(
                std::num::NonZeroU32::new(NEW_IDS_PER_SECOND).expect("non-zero"),
            )),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl PublicKeys {
    /// The PEM of key `kid`: from the cache while fresh, else fetched from `url_template` (`{kid}`
    /// replaced) with `Authorization: Bearer <token>` (see [`Credential`]).
    pub async fn get(&self, url_template: &str, kid: &str, credential: Credential<'_>) -> Result<String, KeyError> {
        let key = (url_template.to_owned(), kid.to_owned());
        let cached =
            |keys: &Self, age: Duration| keys.cache.get(&key).filter(|e| e.1.elapsed() < age).map(|e| e.0.clone());
        if let Some(pem) = cached(self, KEY_TTL) {
            return Ok(pem);
        }
        if self.unknown.get(&key).is_some_and(|at| at.elapsed() < UNKNOWN_TTL) {
            return Err(KeyError::Unknown);
        }
        let stale = cached(self, STALE_LIMIT);
        let mut tokens = match (self.fetching.try_lock(), &stale) {
            (Ok(tokens), _) => tokens,
            // Another request is fetching: a key seen before serves meanwhile.
            (Err(_), Some(pem)) => return Ok(pem.clone()),
            (Err(_), None) => self.fetching.lock().await,
        };
        if let Some(pem) = cached(self, KEY_TTL) {
            return Ok(pem); // fetched while this request waited
        }
        // A fetch of an id never seen spends the budget (waiters refused by it leave at once).
        if stale.is_none() && self.new_ids.check().is_err() {
            return Err(KeyError::Unavailable);
        }
        let token = match credential {
            Credential::None => None,
            Credential::Static(token) => Some(token.to_owned()),
            Credential::Minted(config) => match minted_token(&mut tokens, config).await {
                Ok(token) => Some(token),
                Err(err) => {
                    tracing::warn!(error = %err, "no application token for the platform's signing keys");
                    return stale.ok_or(KeyError::Unavailable);
                }
            },
        };
        let fetched = self.fetch(url_template, kid, token.as_deref()).await;
        if matches!(fetched, Err(KeyError::Unauthorized)) {
            if let Credential::Minted(config) = credential {
                // Revoked before its time: minted again next time.
                tokens.remove(&(config.token_url.clone(), config.client_id.clone()));
            }
            tracing::warn!("the platform refused the application token for its signing keys");
        }
        match fetched {
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
            // Unreachable, or our token refused: the key seen before, if any.
            Err(_) => stale.ok_or(KeyError::Unavailable),
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
            StatusCode::UNAUTHORIZED => return Err(KeyError::Unauthorized),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_seen_before_serves_while_the_key_endpoint_is_down_and_new_ids_are_limited() {
        // A port nobody listens on: every fetch fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let template = format!("http://127.0.0.1:{port}/public_key/{{kid}}");
        let keys = PublicKeys::default();
        let two_hours_ago = Instant::now().checked_sub(Duration::from_secs(7200)).unwrap();
        keys.cache.insert((template.clone(), "kid-1".to_owned()), ("PEM-1".to_owned(), two_hours_ago));
        assert_eq!(keys.get(&template, "kid-1", Credential::None).await, Ok("PEM-1".to_owned()));
        // Never seen: nothing to fall back on.
        assert_eq!(keys.get(&template, "kid-2", Credential::None).await, Err(KeyError::Unavailable));
        // A flood of ids never seen: beyond the rate, refused without asking the platform (a key
        // endpoint that counts the connections and closes them).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let counting = format!("http://{}/public_key/{{kid}}", listener.local_addr().unwrap());
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await; // the limiter refills
        for n in 0..10 {
            assert!(keys.get(&counting, &format!("forged-{n}"), Credential::None).await.is_err());
        }
        let asked = asked.load(std::sync::atomic::Ordering::SeqCst);
        assert!((1..=3).contains(&asked), "{asked} of 10 forged ids reached the key endpoint");
        // Past the stale limit a key is no longer served.
        let too_old = Instant::now().checked_sub(STALE_LIMIT + Duration::from_secs(1)).unwrap();
        keys.cache.insert((template.clone(), "kid-1".to_owned()), ("PEM-1".to_owned(), too_old));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(keys.get(&template, "kid-1", Credential::None).await, Err(KeyError::Unavailable));
    }
}
