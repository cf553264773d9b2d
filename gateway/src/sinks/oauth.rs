//! SASL/OAUTHBEARER tokens for the Kafka clients. The gateway itself asks the identity provider
//! of `[sinks.kafka.oauth]` for an access token (the OAuth 2.0 client credentials grant, RFC 6749
//! section 4.4, the client authenticated by HTTP Basic as in section 2.3.1): librdkafka's own OIDC
//! client needs curl, which is not built in. librdkafka asks for a token when a client starts and
//! again at 80% of the token's lifetime, through [`KafkaContext::generate_oauth_token`].
//!
//! Neither the client secret nor a token is ever logged.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use rdkafka::client::{Client, OAuthToken};
use rdkafka::consumer::ConsumerContext;
use rdkafka::ClientContext;
use serde::Deserialize;

use crate::config::{KafkaConfig, OAuthClientConfig};
use crate::telemetry;

/// How long one token request may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Lifetime assumed when the provider names none (`expires_in` absent, not a JWT).
const DEFAULT_LIFETIME_SECONDS: i64 = 3600;
/// Shortest lifetime taken from `expires_in`: a provider that says 0 must not be asked again
/// every second.
const MIN_LIFETIME_SECONDS: i64 = 30;

/// Fetches access tokens from the identity provider.
pub struct TokenSource {
    config: OAuthClientConfig,
    /// What the tokens are for, in error messages (`kafka oauth`, `ebay app token`).
    purpose: &'static str,
    /// The counter of tokens asked for, by `result`.
    metric: &'static str,
}

/// The token endpoint's answer (RFC 6749 section 5.1; errors: section 5.2).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    /// A number, or a string of one (Azure AD's v1 endpoint).
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenResponse {
    fn expires_in(&self) -> Option<i64> {
        match self.expires_in.as_ref()? {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// The claims of a JWT access token the gateway reads: whose it is and when it expires.
#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
}

impl TokenSource {
    /// A source for the Kafka cluster's identity provider `config`.
    pub fn new(config: OAuthClientConfig) -> TokenSource {
        TokenSource { config, purpose: "kafka oauth", metric: telemetry::KAFKA_OAUTH_TOKENS }
    }

    /// A source of a platform's application tokens (eBay's, for its notification keys).
    pub fn for_platform(config: OAuthClientConfig) -> TokenSource {
        TokenSource { config, purpose: "platform app token", metric: telemetry::WEBHOOK_APP_TOKENS }
    }

    /// Asks the identity provider for a new access token: the token, its principal (the JWT's
    /// `sub`, else the client id) and when it expires (the JWT's `exp`, else `expires_in`).
    pub async fn fetch(&self) -> Result<OAuthToken, String> {
        let fetched = tokio::time::timeout(TOKEN_TIMEOUT, self.request()).await;
        let fetched = fetched.unwrap_or_else(|_| Err(format!("no answer within {} s", TOKEN_TIMEOUT.as_secs())));
        let result = if fetched.is_ok() { "ok" } else { "error" };
        metrics::counter!(self.metric, "result" => result).increment(1);
        // Without its query, which might carry a secret of its own.
        let endpoint = self.config.token_url.split('?').next().unwrap_or_default();
        fetched.map_err(|err| format!("{}: token endpoint {endpoint}: {err}", self.purpose))
    }

    async fn request(&self) -> Result<OAuthToken, String> {
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = self.config.scope.as_deref().filter(|s| !s.is_empty()) {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        // As librdkafka and the Kafka Java client send them by default (not form-encoded: some
        // providers do not decode, and secrets hold characters like `~`).
        let credentials = format!("{}:{}", self.config.client_id, self.config.client_secret);
        let request = hyper::Request::post(&self.config.token_url)
            .header(hyper::header::AUTHORIZATION, format!("Basic {}", BASE64.encode(credentials)))
            .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(form)))
            .map_err(|err| format!("cannot build the request: {err}"))?;
        let response = self.client()?.request(request).await.map_err(|err| format!("unreachable: {err}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_TOKEN_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|err| format!("answer unreadable: {err}"))?
            .to_bytes();
        let answer: Option<TokenResponse> = serde_json::from_slice(&body).ok();
        match answer {
            Some(answer @ TokenResponse { access_token: Some(_), .. }) if status.is_success() => {
                let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
                let expires_in = answer.expires_in();
                let token = answer.access_token.expect("matched");
                Ok(token_of(token, expires_in, &self.config.client_id, now_ms))
            }
            Some(TokenResponse { error: Some(error), error_description, .. }) => {
                let description = error_description.unwrap_or_default().chars().take(200).collect::<String>();
                Err(format!("answered {status}: {error} {description}").trim_end().to_owned())
            }
            _ => Err(format!("answered {status} without an access token")),
        }
    }

    /// The HTTP client: trusting `ca_file` when one is configured (read at each fetch, so a
    /// renewed CA file applies), else the webpki roots.
    fn client(&self) -> Result<crate::poll::PollClient, String> {
        let Some(ca_file) = &self.config.ca_file else { return Ok(crate::poll::client()) };
        let tls = crate::http::tls::client_config(Some(ca_file), "ca_file")?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
    }

    /// [`TokenSource::fetch`] for a caller outside the runtime (librdkafka's threads): on a
    /// thread of its own with a runtime of its own, so that it never blocks a runtime's worker
    /// in a way the runtime cannot see.
    pub fn fetch_blocking(self: &Arc<Self>) -> Result<OAuthToken, String> {
        let source = self.clone();
        let fetch = move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| format!("kafka oauth: no runtime: {err}"))?;
            runtime.block_on(source.fetch())
        };
        let joined = || std::thread::spawn(fetch).join().unwrap_or_else(|_| Err("kafka oauth: fetch panicked".into()));
        match tokio::runtime::Handle::try_current() {
            // A consumer polled from a task asks on a worker thread: let the runtime know.
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(joined)
            }
            _ => joined(),
        }
    }
}

/// The token librdkafka gets for `access_token`: a JWT's `sub` and `exp` when it is one, else
/// `client_id` and `expires_in` (an hour when absent) from `now_ms`.
fn token_of(access_token: String, expires_in: Option<i64>, client_id: &str, now_ms: i64) -> OAuthToken {
    let claims = access_token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|json| serde_json::from_slice::<Claims>(&json).ok());
    let (sub, exp) = claims.map_or((None, None), |c| (c.sub, c.exp));
    let lifetime_ms = match exp {
        Some(exp) => exp.saturating_mul(1000),
        None => now_ms + expires_in.unwrap_or(DEFAULT_LIFETIME_SECONDS).max(MIN_LIFETIME_SECONDS).saturating_mul(1000),
    };
    OAuthToken {
        token: access_token,
        principal_name: sub.filter(|s| !s.is_empty()).unwrap_or_else(|| client_id.to_owned()),
        lifetime_ms,
    }
}

/// The context of the gateway's Kafka clients: hands librdkafka the identity provider's tokens
/// when the cluster wants OAUTHBEARER (otherwise librdkafka never asks).
#[derive(Clone, Default)]
pub struct KafkaContext {
    oauth: Option<Arc<TokenSource>>,
}

impl KafkaContext {
    /// The context for the cluster of `config`.
    pub fn new(config: &KafkaConfig) -> KafkaContext {
        KafkaContext { oauth: config.oauth.clone().map(|oauth| Arc::new(TokenSource::new(oauth))) }
    }

    /// Gives `client` a token now. For a client whose main queue nobody polls (the admin
    /// client), which would otherwise never answer librdkafka's request for one. Nothing to do
    /// without OAUTHBEARER.
    pub async fn authenticate<C: ClientContext>(&self, client: &Client<C>) -> Result<(), String> {
        let Some(source) = &self.oauth else { return Ok(()) };
        let token = source.fetch().await?;
        set_token(client, &token)
    }
}

impl ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let source = self.oauth.as_ref().ok_or("OAUTHBEARER needs [sinks.kafka.oauth]")?;
        source.fetch_blocking().map_err(|err| {
            tracing::warn!(error = %err, "no OAUTHBEARER token for the kafka cluster; librdkafka asks again");
            err.into()
        })
    }
}

impl ConsumerContext for KafkaContext {}

/// Sets `token` on `client` (librdkafka's `rd_kafka_oauthbearer_set_token`).
fn set_token<C: ClientContext>(client: &Client<C>, token: &OAuthToken) -> Result<(), String> {
    use std::ffi::CString;
    let text = |s: &str| CString::new(s).map_err(|_| "kafka oauth: the token holds a NUL byte".to_owned());
    let (value, principal) = (text(&token.token)?, text(&token.principal_name)?);
    let mut error = [0 as std::os::raw::c_char; 512];
    // SAFETY: the client pointer is alive for the call; every string is NUL-terminated and
    // outlives it; no extensions (a null array of length 0); `error` is writable for its length.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.native_ptr(),
            value.as_ptr(),
            token.lifetime_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Ok(());
    }
    // SAFETY: librdkafka wrote a NUL-terminated message into `error`.
    let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned();
    Err(format!("kafka oauth: librdkafka refused the token: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_names_its_principal_and_expiry_and_an_opaque_token_takes_the_client_and_expires_in() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"svc-gateway","exp":1800000000,"aud":"kafka"}"#);
        let jwt = format!("eyJhbGciOiJFUzI1NiJ9.{payload}.c2ln");
        let token = token_of(jwt.clone(), Some(60), "gw", 1_000);
        assert_eq!(
            (token.token, token.principal_name, token.lifetime_ms),
            (jwt, "svc-gateway".into(), 1_800_000_000_000)
        );
        let opaque = token_of("2YotnFZFEjr1zCsicMWpAA".into(), Some(300), "gw", 1_000);
        assert_eq!((opaque.principal_name.as_str(), opaque.lifetime_ms), ("gw", 301_000));
        let unnamed = token_of("opaque".into(), None, "gw", 0);
        assert_eq!(unnamed.lifetime_ms, DEFAULT_LIFETIME_SECONDS * 1000);
        let instant = token_of("opaque".into(), Some(0), "gw", 0);
        assert_eq!(instant.lifetime_ms, MIN_LIFETIME_SECONDS * 1000, "not asked again every second");
    }

    #[test]
    fn expires_in_is_read_as_a_number_or_a_string_of_one() {
        let read = |json: &str| serde_json::from_str::<TokenResponse>(json).unwrap().expires_in();
        assert_eq!(read(r#"{"access_token":"t","expires_in":3599}"#), Some(3599));
        assert_eq!(read(r#"{"access_token":"t","expires_in":"3599"}"#), Some(3599));
        assert_eq!(read(r#"{"access_token":"t"}"#), None);
    }
}
