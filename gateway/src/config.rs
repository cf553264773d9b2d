//! Configuration: one TOML file, `${ENV}` interpolation for secrets, and a pure validation step.
//!
//! [`Config::from_toml`] parses and [`Config::validate`] checks; neither touches the network or
//! the filesystem, so `inquiry-gateway check` can vet a file anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::routing::Priority;
use inquiry_connectors::Region;

/// The whole gateway configuration. Every section has defaults: an empty file is the embedded default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The public ingest listener (`/v1/...`).
    pub ingest: IngestConfig,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: AdminConfig,
    /// The pipeline's queue and group-commit batch.
    pub pipeline: PipelineConfig,
    /// The embedded durable store.
    pub store: StoreConfig,
    /// Routing.
    pub routing: RoutingConfig,
    /// Who may call the ingest API.
    pub auth: AuthConfig,
    /// Push connectors: one entry per (connector, account) allowed to post to
    /// `/webhooks/{connector}/{account}`.
    pub webhooks: Vec<WebhookConfig>,
    /// Pull connectors: one entry per (connector, account) to poll.
    pub pollers: Vec<PollerConfig>,
    /// How several replicas share the `[[pollers]]` entries.
    pub polling: PollingConfig,
    /// Where the other replicas are, for reads of inquiries another replica holds.
    pub cluster: ClusterConfig,
    /// Reach-out: first-response SLA timers, reminders, escalation and agent alerts.
    pub reach: ReachConfig,
    /// IMAP mailboxes read for buyer e-mail (Amazon buyer-seller messages, Etsy and Shopify
    /// contact forms, the shop's own address).
    pub mailboxes: Vec<MailboxConfig>,
    /// Downstream sinks fed from the embedded spool; none configured: embedded store only.
    pub sinks: SinksConfig,
    /// The spool of inquiries waiting for the sinks.
    pub spool: SpoolConfig,
    /// Logging.
    pub log: LogConfig,
    /// Personal data protection, the audit trail and data subject requests.
    pub compliance: ComplianceConfig,
    /// How long each class of data is kept, in every store.
    pub retention: RetentionConfig,
    /// The file this configuration was read from (SIGHUP and `POST /v1/plugins/reload` re-read
    /// its `[routing]` section).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// One platform webhook endpoint.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Connector name: `whatsapp`, `messenger`, `instagram`, `line`, `telegram`, `tiktok_shop`,
    /// `web_form`, `shopee`, `mailgun`, `sendgrid`, `ebay`, `shopify` (and `shopify_compliance`).
    pub connector: String,
    /// Seller account the webhook posts for (the `{account}` of the URL).
    pub account: String,
    /// Signing secret: Meta app secret, LINE channel secret, Telegram `secret_token`, web-form key,
    /// Shopee live push partner key, Shopify app client secret, Mailgun webhook signing key (unused by SendGrid and eBay, which
    /// sign with public keys: leave it empty).
    #[serde(default)]
    pub secret: String,
    /// Token of the platform's subscription handshake (Meta's `hub.verify_token`, eBay's
    /// verification token).
    #[serde(default)]
    pub verify_token: Option<String>,
    /// The app's key where the platform signs it along with the body (TikTok Shop `app_key`).
    #[serde(default)]
    pub app_key: Option<String>,
    /// The full public URL of this endpoint exactly as registered with the platform (Shopee signs
    /// it; eBay hashes it into its challenge). Required by `shopee` and `ebay`.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// The platform's public key where it is configured rather than fetched: SendGrid's security
    /// policy `signature.public_key` (base64 DER). Required by `sendgrid`.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Where to fetch a signing key by id, `{kid}` standing for the id (eBay; default
    /// `https://api.ebay.com/commerce/notification/v1/public_key/{kid}`).
    #[serde(default)]
    pub public_key_url: Option<String>,
    /// Credential sent as `Authorization: Bearer` when fetching keys (an eBay application token;
    /// use `${ENV}`). A secret: never logged. eBay's expire after 2 hours: prefer `app_oauth`.
    #[serde(default)]
    pub app_token: Option<String>,
    /// Country (ISO 3166-1 alpha-2) of this account's buyers where a message names none and
    /// gives no phone number in international format: a marketplace shop that sells in one country
    /// (a Shopee or TikTok Shop shop of one market). Decides the inquiry's region like a country
    /// the platform sent (data residency, quiet hours, routing by country).
    #[serde(default)]
    pub buyer_country: Option<String>,
    /// Further accounts the deliveries to this endpoint may name, each inquiry under the account
    /// its delivery names: the other shops of a Shopee partner app or TikTok Shop app (one push
    /// URL per app, signed with the app's key), or the pages and numbers of a Meta app (without
    /// `accounts`, a Meta endpoint takes any of the app's). Other connectors have none.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Where the gateway mints the application token for fetching signing keys itself (eBay:
    /// `token_url = "https://api.ebay.com/identity/v1/oauth2/token"`, `client_id` = the App ID,
    /// `client_secret` = the Cert ID, `scope = "https://api.ebay.com/oauth/api_scope"`), renewed
    /// before it expires. In place of `app_token`.
    #[serde(default)]
    pub app_oauth: Option<OAuthClientConfig>,
}

/// Connectors whose deliveries name their account (shop, page or number) in the body.
pub const WEBHOOKS_NAMING_ACCOUNTS: &[&str] = &["shopee", "tiktok_shop", "whatsapp", "messenger", "instagram"];

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("connector", &self.connector)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// One platform API polled for one account.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerConfig {
    /// Connector name: `messenger_conversations`.
    pub connector: String,
    /// Seller account polled (page id, shop id).
    pub account: String,
    /// The account's API credential (OAuth access token, eBay user token, shop token); use
    /// `${ENV}`. Empty for partner-level APIs (`shopee_lost_push`).
    #[serde(default)]
    pub access_token: String,
    /// The account's OAuth refresh token, for platforms whose access tokens expire (Etsy, eBay,
    /// Shopee, TikTok Shop): the gateway refreshes the access token itself and keeps the newest
    /// grant sealed in its store; `access_token` may then be empty. Use `${ENV}`.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Scheme and host of the platform's token endpoint, where not the connector's default (a
    /// regional endpoint or a test server).
    #[serde(default)]
    pub token_url: Option<String>,
    /// The app's public id where the platform wants one (Etsy API key, Shopee partner id,
    /// TikTok Shop app key, eBay app id).
    #[serde(default)]
    pub app_key: Option<String>,
    /// The app's secret where the platform signs requests with it (Shopee partner key, TikTok
    /// Shop app secret); use `${ENV}`.
    #[serde(default)]
    pub app_secret: Option<String>,
    /// App the credential belongs to: accounts of one app share app-level quotas.
    #[serde(default = "default_app")]
    pub app: String,
    /// API base URL (override for a regional endpoint or a test server).
    pub base_url: String,
    /// Pause between polling cycles, in milliseconds (0: poll again at once, as fast as the quota allows).
    #[serde(default = "default_poll_interval")]
    pub interval_ms: u64,
    /// Override of the connector's published requests per second.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Override of the connector's published burst.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Override of the connector's published daily cap.
    #[serde(default)]
    pub per_day: Option<u32>,
    /// Country (ISO 3166-1 alpha-2) of this account's buyers where a message names none and
    /// gives no phone number in international format: a marketplace shop that sells in one country
    /// (a Shopee or TikTok Shop shop of one market). Decides the inquiry's region like a country
    /// the platform sent (data residency, quiet hours, routing by country).
    #[serde(default)]
    pub buyer_country: Option<String>,
}

/// The problem of an account's `buyer_country`, if any: it must be a country's ISO code.
fn buyer_country_problem(at: &str, country: &Option<String>, problems: &mut Vec<String>) {
    if let Some(country) = country.as_deref().filter(|c| !inquiry_connectors::is_known_country(c)) {
        problems.push(format!(
            "{at}.buyer_country `{country}` is not an ISO 3166-1 alpha-2 country code in upper case (e.g. `SG`)"
        ));
    }
}

fn default_app() -> String {
    "default".to_owned()
}

fn default_poll_interval() -> u64 {
    10_000
}

impl std::fmt::Debug for PollerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerConfig")
            .field("connector", &self.connector)
            .field("account", &self.account)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// One IMAP mailbox: its new messages become inquiries of channel `email`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailboxConfig {
    /// The account of its inquiries (e.g. `shop-eu-support`); also names its cursor.
    pub name: String,
    /// IMAP server host name.
    pub host: String,
    /// IMAP server port (993: IMAP over TLS).
    #[serde(default = "default_imap_port")]
    pub port: u16,
    /// IMAP over TLS (certificate checked against the webpki roots); `false` is allowed only
    /// for a loopback host (tests).
    #[serde(default = "default_true")]
    pub tls: bool,
    /// Login name.
    pub username: String,
    /// Password (or app password); use `${ENV}`. Never logged.
    pub password: String,
    /// Folder read.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// Pause between checks when the server has no IDLE, in milliseconds.
    #[serde(default = "default_mailbox_interval")]
    pub interval_ms: u64,
    /// Country (ISO 3166-1 alpha-2) of this mailbox's buyers where a message names none and
    /// gives no phone number in international format: the support address of one country's
    /// shop. Decides the inquiry's region like a country the platform sent.
    #[serde(default)]
    pub buyer_country: Option<String>,
    /// When the folder is read from its start (first start, or a new UIDVALIDITY), only messages
    /// the server received in the last this many days are imported (7, like the pollers' first
    /// poll; 0: the whole folder). Years of mail must not arrive as new inquiries.
    #[serde(default = "default_first_read_days")]
    pub first_read_days: u32,
}

fn default_first_read_days() -> u32 {
    7
}

fn default_imap_port() -> u16 {
    993
}

fn default_folder() -> String {
    "INBOX".to_owned()
}

fn default_mailbox_interval() -> u64 {
    60_000
}

impl std::fmt::Debug for MailboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxConfig")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("folder", &self.folder)
            .finish_non_exhaustive()
    }
}

/// The host of an `smtp://` or `smtps://` url.
fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("smtps://").or_else(|| url.strip_prefix("smtp://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_owned())
}

/// Problems of a cluster's data residency (`place`: its section, like `sinks.kafka`).
fn residency_problems(place: &str, location: Option<Region>, regions: &[Region], problems: &mut Vec<String>) {
    match location {
        None => problems
            .push(format!("{place}.location must say where the cluster runs: \"eu\" or \"other\" (data residency)")),
        Some(Region::Other) if regions.contains(&Region::Eu) => problems.push(format!(
            "{place} runs outside the EU (location = \"other\") but would receive EU-region data: \
             set regions = [\"other\"] or use a sink in the EU"
        )),
        _ => {}
    }
    if regions.is_empty() {
        problems.push(format!("{place}.regions must name at least one region"));
    }
}

/// Problems of the main `kind` cluster (`[sinks.<kind>]`) and its regional ones
/// (`[sinks.<kind>_regional.<name>]`): each cluster's own (`check` names `sinks.<kind>`; a
/// regional cluster's problems name it), a regional one without the main one or with a bad
/// name, and two that would write to the same place (`clash`).
fn cluster_problems<C>(
    kind: &str,
    main: Option<&C>,
    regional: &std::collections::BTreeMap<String, C>,
    check: impl Fn(&C, &mut Vec<String>),
    clash: impl Fn(&C, &C) -> Option<String>,
    problems: &mut Vec<String>,
) {
    let named = regional.iter().map(|(name, c)| (format!("sinks.{kind}_regional.{name}"), c));
    for (place, cluster) in main.map(|c| (format!("sinks.{kind}"), c)).into_iter().chain(named) {
        let mut found = Vec::new();
        check(cluster, &mut found);
        problems.extend(found.into_iter().map(|p| p.replace(&format!("sinks.{kind}"), &place)));
    }
    if !regional.is_empty() && main.is_none() {
        problems.push(format!("sinks.{kind}_regional needs [sinks.{kind}], the main cluster"));
    }
    for name in regional.keys() {
        if name.is_empty() || name.len() > 16 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            problems.push(format!(
                "sinks.{kind}_regional.{name}: a cluster's name is 1 to 16 lower-case letters and digits"
            ));
        }
    }
    let all: Vec<&C> = main.into_iter().chain(regional.values()).collect();
    for (i, a) in all.iter().enumerate() {
        problems.extend(all[i + 1..].iter().filter_map(|b| clash(a, b)));
    }
}

/// The `host:port` endpoints of a comma-separated list, host in lower case, `default_port` where
/// none is given (to tell whether two clusters' lists name the same server).
fn endpoints(list: &str, default_port: u16) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let has_port = e.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) && !e.ends_with(']');
            let e = e.to_ascii_lowercase();
            if has_port {
                e
            } else {
                format!("{e}:{default_port}")
            }
        })
        .collect()
}

/// True when `endpoint` (`host:port`, or a bare host) is on this machine.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    is_loopback_host(endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host))
}

/// True for `localhost` and loopback addresses.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Downstream sinks. Each configured sink gets an outbox in the embedded store (the spool) and a
/// forwarder that drains it in commit order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// Apache Kafka (or any Kafka-API broker) via librdkafka.
    pub kafka: Option<KafkaConfig>,
    /// ScyllaDB or Apache Cassandra via the `scylla` driver (CQL).
    pub cql: Option<CqlConfig>,
    /// Further Kafka clusters by name (`[sinks.kafka_regional.us]`: the sink `kafka-us`), each
    /// taking the inquiries of its `regions` (a cluster per region). Routed inquiries, dead
    /// letters, erasure tombstones, SLA events and (for a cluster in the EU) the audit trail; the
    /// replies topic stays on `[sinks.kafka]`, the main cluster.
    pub kafka_regional: std::collections::BTreeMap<String, KafkaConfig>,
    /// Further CQL clusters by name (`[sinks.cql_regional.us]`: the sink `cql-us`), each storing
    /// the inquiries of its `regions` (and, in the EU, the audit trail). The replicas' shared
    /// state (agent states, poll leases, acknowledgement claims, subject requests) stays on
    /// `[sinks.cql]`, the main cluster.
    pub cql_regional: std::collections::BTreeMap<String, CqlConfig>,
}

/// The Kafka sink.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Prefix of every topic name (e.g. `eu1.`); topics are `<prefix>inquiries.routed.v2`,
    /// `<prefix>audit.events.v1` and `<prefix>inquiries.deadletter.v2`.
    pub topic_prefix: String,
    /// Create missing topics at start-up (else they must exist).
    pub create_topics: bool,
    /// Partitions of created topics.
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Where the cluster runs (`eu` or `other`); required: `check` refuses EU-region data for a
    /// cluster outside the EU.
    pub location: Option<Region>,
    /// Regions of the inquiries this sink receives (default both); the others stay in the
    /// embedded store (and any sink that takes them).
    pub regions: Vec<Region>,
    /// Inquiries sent per forwarder round (all in flight at once).
    pub batch_size: usize,
    /// Extra librdkafka properties (security, SASL, tuning); they override the gateway's defaults
    /// except `enable.idempotence`, `acks` and `partitioner`, which are fixed. TLS and SASL go
    /// here: `security.protocol = "sasl_ssl"`, `sasl.mechanisms = "SCRAM-SHA-512"`,
    /// `sasl.username`, `sasl.password = "${KAFKA_PASSWORD}"`, `ssl.ca.location`. Values of
    /// secret properties ([`is_secret_property`]) never appear in logs or `Debug` output.
    pub properties: std::collections::BTreeMap<String, String>,
    /// OAuth 2.0 client credentials for `sasl.mechanisms = "OAUTHBEARER"`: the gateway fetches
    /// the access tokens from the identity provider itself (librdkafka's own OIDC needs curl,
    /// which is not built in).
    pub oauth: Option<OAuthClientConfig>,
}

/// The identity provider that issues the Kafka cluster's OAUTHBEARER tokens (the OAuth 2.0
/// client credentials grant, RFC 6749 section 4.4; client authentication by HTTP Basic).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientConfig {
    /// The token endpoint (`https://`; `http://` only on loopback).
    pub token_url: String,
    /// The gateway's client id at the identity provider.
    pub client_id: String,
    /// Its client secret; use `${ENV}`. Never logged.
    pub client_secret: String,
    /// The scope asked for, if the provider needs one (space-separated).
    #[serde(default)]
    pub scope: Option<String>,
    /// PEM file of the CA that signed the token endpoint's certificate (an identity provider
    /// behind a private CA); default: the webpki roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for OAuthClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClientConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// True for a librdkafka property whose value is a secret (passwords, keys, OAuth secrets):
/// its value is redacted wherever the configuration is printed.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "private", ".pem", "jaas", "token", "oauthbearer.config"].iter().any(|part| key.contains(part))
        || key == "ssl_key"
}

/// The SASL mechanisms the gateway's librdkafka can use: PLAIN, SCRAM, and OAUTHBEARER with the
/// tokens the gateway fetches ([`OAuthClientConfig`]). Not GSSAPI (Kerberos is not built in).
const KAFKA_SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

impl KafkaConfig {
    /// The configured `security.protocol`, lower case (`plaintext` when unset).
    pub fn security_protocol(&self) -> String {
        self.properties.get("security.protocol").map(|p| p.to_ascii_lowercase()).unwrap_or_else(|| "plaintext".into())
    }

    /// True when every broker of `brokers` is on this machine (loopback).
    pub fn brokers_are_loopback(&self) -> bool {
        self.brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).all(is_loopback_endpoint)
    }

    /// Every problem of this cluster's settings (named as `sinks.kafka`).
    fn problems(&self, problems: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            problems.push("sinks.kafka.brokers must not be empty".to_owned());
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            problems.push("sinks.kafka.partitions and replication_factor must be at least 1".to_owned());
        }
        if self.batch_size == 0 {
            problems.push("sinks.kafka.batch_size must be at least 1".to_owned());
        }
        let queue = self.properties.get("queue.buffering.max.messages").and_then(|v| v.parse::<usize>().ok());
        if queue.is_some_and(|q| q < 4 * self.batch_size) {
            problems.push(
                "sinks.kafka.properties queue.buffering.max.messages must hold 4 rounds (4 x batch_size)".to_owned(),
            );
        }
        for fixed in ["enable.idempotence", "acks", "partitioner"] {
            if self.properties.contains_key(fixed) {
                problems.push(format!("sinks.kafka.properties may not set `{fixed}`: the gateway fixes it"));
            }
        }
        residency_problems("sinks.kafka", self.location, &self.regions, problems);
        self.security_problems(problems);
        self.property_problems(problems);
    }

    /// Problems of the security properties (protocol, SASL mechanism, passwords in clear).
    fn security_problems(&self, problems: &mut Vec<String>) {
        let protocol = self.security_protocol();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
            problems.push(format!(
                "sinks.kafka.properties security.protocol `{protocol}` must be plaintext, ssl, sasl_plaintext or sasl_ssl"
            ));
            return;
        }
        if let Some(key) = self.properties.keys().find(|k| k.to_ascii_lowercase().contains("oauthbearer")) {
            problems.push(format!(
                "sinks.kafka.properties may not set `{key}`: OAUTHBEARER tokens come from [sinks.kafka.oauth]"
            ));
        }
        let oauthbearer = protocol.starts_with("sasl_")
            && self
                .properties
                .get("sasl.mechanisms")
                .or_else(|| self.properties.get("sasl.mechanism"))
                .is_some_and(|m| m.eq_ignore_ascii_case("OAUTHBEARER"));
        if let Some(oauth) = &self.oauth {
            if !oauthbearer {
                problems.push(
                    "sinks.kafka.oauth is used only with security.protocol = sasl_ssl and sasl.mechanisms = OAUTHBEARER"
                        .to_owned(),
                );
            }
            oauth.problems("sinks.kafka.oauth", problems);
        }
        if !protocol.starts_with("sasl_") {
            return;
        }
        let mechanism = self.properties.get("sasl.mechanisms").or_else(|| self.properties.get("sasl.mechanism"));
        let Some(mechanism) = mechanism.map(|m| m.to_ascii_uppercase()) else {
            problems.push(format!(
                "sinks.kafka.properties: security.protocol = {protocol} needs sasl.mechanisms ({})",
                KAFKA_SASL_MECHANISMS.join(", ")
            ));
            return;
        };
        if !KAFKA_SASL_MECHANISMS.contains(&mechanism.as_str()) {
            problems.push(format!(
                "sinks.kafka.properties sasl.mechanisms `{mechanism}` is not built in; use one of {}",
                KAFKA_SASL_MECHANISMS.join(", ")
            ));
        } else if let Some(written) = self
            .properties
            .get("sasl.mechanisms")
            .or_else(|| self.properties.get("sasl.mechanism"))
            .filter(|written| **written != mechanism)
        {
            // librdkafka compares the names exactly.
            problems.push(format!("sinks.kafka.properties sasl.mechanisms `{written}` must be written `{mechanism}`"));
        }
        if mechanism == "OAUTHBEARER" {
            if self.oauth.is_none() {
                problems.push(
                    "sinks.kafka: sasl.mechanisms = OAUTHBEARER needs [sinks.kafka.oauth] (token_url, client_id, \
                     client_secret)"
                        .to_owned(),
                );
            }
            // Not even for loopback bootstrap brokers (see PLAIN below).
            if protocol == "sasl_plaintext" {
                problems.push(
                    "sinks.kafka.properties: OAUTHBEARER over sasl_plaintext sends the bearer token in clear; \
                     use security.protocol = sasl_ssl"
                        .to_owned(),
                );
            }
            return;
        }
        let has = |key: &str| self.properties.get(key).is_some_and(|v| !v.is_empty());
        if !(has("sasl.username") && has("sasl.password")) {
            problems.push(format!("sinks.kafka.properties: SASL {mechanism} needs sasl.username and sasl.password"));
        }
        // Not even for loopback bootstrap brokers: the client then talks to the brokers the
        // cluster advertises, wherever they are.
        if protocol == "sasl_plaintext" && mechanism == "PLAIN" {
            problems.push(
                "sinks.kafka.properties: SASL PLAIN over sasl_plaintext sends the password in clear; \
                 use security.protocol = sasl_ssl (or SCRAM, which never sends it)"
                    .to_owned(),
            );
        }
    }

    /// Problems of settings that switch TLS verification off, and of properties librdkafka does
    /// not know or refuses (checked without creating a client: no I/O).
    fn property_problems(&self, problems: &mut Vec<String>) {
        let off = |key: &str, value: &str| self.properties.get(key).is_some_and(|v| v.eq_ignore_ascii_case(value));
        if (off("enable.ssl.certificate.verification", "false") || off("ssl.endpoint.identification.algorithm", "none"))
            && !self.brokers_are_loopback()
        {
            problems.push(
                "sinks.kafka.properties: TLS verification is switched off (enable.ssl.certificate.verification / \
                 ssl.endpoint.identification.algorithm); trust the cluster's CA with ssl.ca.location instead"
                    .to_owned(),
            );
        }
        let mut client = rdkafka::config::ClientConfig::new();
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        if let Err(err) = client.create_native_config() {
            problems.push(format!("sinks.kafka.properties: {}", crate::sinks::kafka::client_error(&err)));
        }
    }
}

impl OAuthClientConfig {
    /// Problems of the identity provider's settings, the setting named `at`.
    fn problems(&self, at: &str, problems: &mut Vec<String>) {
        match self.token_url.parse::<hyper::Uri>() {
            Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => problems.push(format!(
                "{at}.token_url must not carry a login (user:password@): the client secret goes in client_secret"
            )),
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some_and(is_loopback_host) => {}
            Ok(uri) if uri.scheme_str() == Some("http") => problems.push(format!(
                "{at}.token_url must be https:// (http:// sends the client secret in clear; allowed only on loopback)"
            )),
            _ => problems.push(format!("{at}.token_url `{}` is not an http(s) URL", self.token_url)),
        }
        if self.client_id.trim().is_empty() {
            problems.push(format!("{at}.client_id must not be empty"));
        }
        if self.client_secret.is_empty() {
            problems.push(format!("{at}.client_secret must not be empty"));
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: std::collections::BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| (key.as_str(), if is_secret_property(key) { "<redacted>" } else { value.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("create_topics", &self.create_topics)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("location", &self.location)
            .field("regions", &self.regions)
            .field("batch_size", &self.batch_size)
            .field("properties", &properties)
            .field("oauth", &self.oauth)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".to_owned(),
            topic_prefix: String::new(),
            create_topics: true,
            partitions: 6,
            replication_factor: 1,
            location: None,
            regions: vec![Region::Eu, Region::Other],
            batch_size: 2000,
            properties: Default::default(),
            oauth: None,
        }
    }
}

/// The CQL store sink (ScyllaDB or Cassandra).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    /// Keyspace, created by the migration if absent.
    pub keyspace: String,
    /// Local datacenter: requests go to its nodes first (token- and DC-aware).
    pub local_datacenter: String,
    /// Replication per datacenter for `NetworkTopologyStrategy`, e.g. `{ dc1 = 3, dc2 = 3 }`.
    pub replication: std::collections::BTreeMap<String, u32>,
    /// Consistency of writes: `one`, `local_one`, `local_quorum`, `quorum`, `each_quorum`, `all`.
    pub consistency: String,
    /// Where the cluster runs (`eu` or `other`); required, as for Kafka.
    pub location: Option<Region>,
    /// Regions of the inquiries this sink receives (default both).
    pub regions: Vec<Region>,
    /// Partitions per account and day in `inquiries_by_account_day` (spreads busy accounts).
    pub day_buckets: u16,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// Inquiries written per forwarder round.
    pub batch_size: usize,
    /// Run the schema migration at start-up (else run `inquiry-gateway migrate`).
    pub migrate: bool,
    /// User name for the cluster's password authentication (ScyllaDB / Cassandra
    /// `PasswordAuthenticator`); with `password`.
    pub username: Option<String>,
    /// Password of `username`; use `${ENV}`. Never logged.
    pub password: Option<String>,
    /// TLS to the nodes (client-to-node encryption); required to send a password to a node
    /// that is not on loopback.
    pub tls: Option<CqlTlsConfig>,
}

/// Client-to-node TLS of the CQL sink. The nodes' certificates are checked against `ca_file`
/// (else the system's trusted roots) and must name the node's IP address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CqlTlsConfig {
    /// PEM file of the CA(s) that signed the nodes' certificates.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for clusters that require client certificates (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for CqlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlConfig")
            .field("contact_points", &self.contact_points)
            .field("keyspace", &self.keyspace)
            .field("local_datacenter", &self.local_datacenter)
            .field("replication", &self.replication)
            .field("consistency", &self.consistency)
            .field("location", &self.location)
            .field("regions", &self.regions)
            .field("day_buckets", &self.day_buckets)
            .field("max_in_flight", &self.max_in_flight)
            .field("batch_size", &self.batch_size)
            .field("migrate", &self.migrate)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl CqlConfig {
    /// True when every contact point is on this machine (loopback).
    pub fn contact_points_are_loopback(&self) -> bool {
        self.contact_points.iter().all(|point| is_loopback_endpoint(point))
    }

    /// Every problem of this cluster's settings (named as `sinks.cql`).
    fn problems(&self, problems: &mut Vec<String>) {
        residency_problems("sinks.cql", self.location, &self.regions, problems);
        if self.contact_points.is_empty() {
            problems.push("sinks.cql.contact_points must name at least one node".to_owned());
        }
        let identifier = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !identifier(&self.keyspace) {
            problems.push("sinks.cql.keyspace must be letters, digits and underscores".to_owned());
        }
        if self.replication.is_empty() || !self.replication.keys().all(|dc| identifier(dc.replace('-', "_").as_str())) {
            problems.push("sinks.cql.replication must map datacenter names to replica counts".to_owned());
        }
        if !self.replication.contains_key(&self.local_datacenter) {
            problems.push("sinks.cql.local_datacenter must be one of the replication datacenters".to_owned());
        }
        if crate::sinks::cql::parse_consistency(&self.consistency).is_none() {
            problems.push(format!("sinks.cql.consistency `{}` is not a consistency level", self.consistency));
        }
        if self.day_buckets == 0 || self.max_in_flight == 0 || self.batch_size == 0 {
            problems.push("sinks.cql.day_buckets, max_in_flight and batch_size must be at least 1".to_owned());
        }
        if self.day_buckets > 1024 {
            problems.push("sinks.cql.day_buckets must be at most 1024".to_owned());
        }
        let given = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
        if given(&self.username) != given(&self.password) {
            problems.push("sinks.cql.username and password go together: set both or neither".to_owned());
        }
        if given(&self.password) && self.tls.is_none() && !self.contact_points_are_loopback() {
            problems.push(
                "sinks.cql: a password without [sinks.cql.tls] is sent in clear; configure tls \
                 (a password without TLS is allowed only for loopback contact points)"
                    .to_owned(),
            );
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                problems.push("sinks.cql.tls.cert_file and key_file go together: set both or neither".to_owned());
            }
        }
    }
}

impl Default for CqlConfig {
    fn default() -> Self {
        CqlConfig {
            contact_points: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "inquiry_gateway".to_owned(),
            local_datacenter: "dc1".to_owned(),
            replication: [("dc1".to_owned(), 1)].into_iter().collect(),
            consistency: "local_quorum".to_owned(),
            location: None,
            regions: vec![Region::Eu, Region::Other],
            day_buckets: 8,
            max_in_flight: 256,
            batch_size: 1000,
            migrate: true,
            username: None,
            password: None,
            tls: None,
        }
    }
}

/// How long each class of data is kept (docs/compliance.md): enforced by expiry in the embedded
/// store, by TTL in the CQL tables and by `retention.ms` of the Kafka topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Inquiries (records, sealed personal data, original payloads), by message time.
    pub inquiries_days: u32,
    /// Dead-letter records.
    pub dead_letters_days: u32,
    /// The audit trail in Kafka and CQL (0 = kept forever). The embedded audit log is never
    /// expired: removing entries would break its verification.
    pub audit_days: u32,
    /// The Kafka feed of routed inquiries (`inquiries.routed.v2`): consumers read it promptly;
    /// at most `inquiries_days`.
    pub kafka_feed_days: u32,
    /// How often the embedded store drops what has expired.
    pub sweep_interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            inquiries_days: 400,
            dead_letters_days: 30,
            audit_days: 0,
            kafka_feed_days: 7,
            sweep_interval_ms: 3_600_000,
        }
    }
}

impl RetentionConfig {
    /// Days as seconds (CQL TTL; 0 stays 0 = no expiry).
    pub fn seconds(days: u32) -> u32 {
        days.saturating_mul(86_400)
    }

    /// Days as Kafka `retention.ms` (0 = -1, kept forever).
    pub fn kafka_ms(days: u32) -> i64 {
        if days == 0 {
            -1
        } else {
            i64::from(days) * 86_400_000
        }
    }
}

/// The spool: inquiries stored durably but not yet taken by every sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Most inquiries a sink may have waiting; beyond it ingest answers 503 with Retry-After.
    pub max_pending: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { max_pending: 5_000_000 }
    }
}

/// Reach-out (`[reach]`): first-response SLA policies and the alerts that tell agents about them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReachConfig {
    /// SLA policies by id.
    pub sla_policies: Vec<SlaPolicyConfig>,
    /// Which policy an inquiry gets: the routing decision's `sla_policy`, else the first rule
    /// that matches its account, queue and priority; none: no SLA.
    pub sla_rules: Vec<SlaRuleConfig>,
    /// Business calendars by id.
    pub calendars: Vec<CalendarConfig>,
    /// Teams by queue: who breaches are escalated to and where the team's alerts go.
    pub teams: Vec<TeamConfig>,
    /// Where alerts are sent.
    pub alert_targets: Vec<AlertTargetConfig>,
    /// Record SLA events (store, Kafka) but send no alert: each is counted and logged as `dry_run`.
    /// Acknowledgements are rendered, audited and counted as `dry_run`, never sent.
    pub dry_run: bool,
    /// Auto-acknowledgement templates (one entry per id, language and account variant).
    pub templates: Vec<TemplateConfig>,
    /// Which inquiries are acknowledged: the routing decision's `reply_template`, else the first
    /// rule that matches; none: no acknowledgement.
    pub ack_rules: Vec<AckRuleConfig>,
    /// The language used when a template has no variant in the buyer's language.
    pub fallback_language: String,
    /// Contact block of the EU authorised representative, appended to every acknowledgement of
    /// an account in `eu_accounts`.
    pub eu_representative: Option<String>,
    /// Accounts selling in the EU (their acknowledgements carry `eu_representative`).
    pub eu_accounts: Vec<String>,
    /// Quiet hours in the buyer's time zone (`"21:00-08:00"`): acknowledgements wait for their end.
    pub quiet_hours: Option<String>,
    /// How acknowledgements leave, per channel.
    pub senders: Vec<SenderConfig>,
    /// A Kafka topic (in `[sinks.kafka]`, with its `topic_prefix`) the CRM writes first responses
    /// to (`{"inquiry_id", "replied_at"?, "agent"?}`); every replica reads all of it.
    pub replies_topic: Option<String>,
    /// With several replicas: a reply or conversion report over HTTP for an inquiry this replica
    /// does not hold is forwarded on `replies_topic` (signed with a key derived from
    /// `store.pseudonym_key`) to the replica that holds it, and answered 202. Turn it on once every
    /// replica runs a version that reads forwarded messages.
    pub forward_http: bool,
    /// A buyer who writes again in the same conversation within this time of an
    /// acknowledgement planned for them (sent, waiting for quiet hours to end, or cancelled by
    /// an agent's answer) gets no further one (`"0s"`: every message is acknowledged).
    pub ack_repeat_window: String,
    /// A buyer's further messages in a conversation (buyer, channel, account, conversation id)
    /// while the first-response SLA of an earlier one still runs (unanswered, steps pending) join it: one clock, one set of
    /// reminders and escalations, stopped by an answer to any of them. `false`: every message
    /// gets its own SLA (e.g. RFQs that are separate deals).
    pub sla_per_buyer: bool,
}

/// One variant of an acknowledgement template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// Template id (named by rules and routing decisions).
    pub id: String,
    /// Version, recorded in the audit log with every message sent from it.
    pub version: u32,
    /// Language (`de`, `en`, `zh`).
    pub language: String,
    /// Only for this account (a variant without one serves every account).
    #[serde(default)]
    pub account: Option<String>,
    /// E-mail subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// Text; placeholders: `{buyer_name}`, `{order_id}`, `{account}`, `{inquiry_id}`,
    /// `{first_response_by}` (`{{` and `}}` for braces).
    pub body: String,
}

/// Which inquiries get an acknowledgement; every given field must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRuleConfig {
    /// Account.
    #[serde(default)]
    pub account: Option<String>,
    /// Channel (`email`, `whatsapp`, ...).
    #[serde(default)]
    pub channel: Option<String>,
    /// Queue it was routed to.
    #[serde(default)]
    pub queue: Option<String>,
    /// Template id.
    pub template: String,
}

/// TLS of an SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// STARTTLS on the submission port (587).
    Starttls,
    /// TLS from the start (465).
    Tls,
    /// None: only for a loopback relay.
    None,
}

/// How acknowledgements leave for one channel.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SenderConfig {
    /// E-mail over SMTP, to the buyer's address (inquiries of `channels`).
    Smtp {
        /// Relay host.
        host: String,
        /// Port (587 STARTTLS, 465 TLS, 25 plain).
        port: u16,
        /// TLS mode.
        tls: SmtpTls,
        /// Login, if the relay wants one.
        #[serde(default)]
        username: Option<String>,
        /// Password (`${ENV}`).
        #[serde(default)]
        password: Option<String>,
        /// Sender address (`Shop <support@shop.example>`).
        from: String,
        /// Channels whose buyers are answered by e-mail.
        #[serde(default = "default_smtp_channels")]
        channels: Vec<String>,
        /// Messages per second to the relay.
        #[serde(default = "default_smtp_rate")]
        per_second: f64,
    },
    /// WhatsApp Cloud API: `POST {base_url}/{phone_number_id}/messages` (the account is the
    /// phone number id).
    Whatsapp {
        /// Graph API base (`https://graph.facebook.com/v21.0`).
        #[serde(default = "default_whatsapp_base")]
        base_url: String,
        /// System-user access token (`${ENV}`).
        access_token: String,
        /// Messages per second per business number (Meta's default throughput: 80).
        #[serde(default = "default_whatsapp_rate")]
        per_second: f64,
        /// Seconds between two messages to the same buyer (Meta's pair rate limit: 6).
        #[serde(default = "default_whatsapp_pair")]
        per_recipient_seconds: f64,
    },
    /// Messenger Platform Send API: `POST {base_url}/{account}/messages` (the account is the
    /// Facebook Page id, or the Instagram professional account id), to the buyer's PSID/IGSID.
    Messenger {
        /// Graph API base (`https://graph.facebook.com/v21.0`).
        #[serde(default = "default_whatsapp_base")]
        base_url: String,
        /// Page (or Instagram account) access token per account (`${ENV}`).
        page_tokens: std::collections::BTreeMap<String, String>,
        /// Calls per second per Page (Meta's Send API limit for text: 300).
        #[serde(default = "default_messenger_rate")]
        per_second: f64,
        /// Channels it answers (`messenger`, `instagram`).
        #[serde(default = "default_messenger_channels")]
        channels: Vec<String>,
    },
    /// Telegram Bot API `sendMessage` (the account is the bot's username).
    Telegram {
        /// API base (`https://api.telegram.org`).
        #[serde(default = "default_telegram_base")]
        base_url: String,
        /// Bot token per account (`${ENV}`).
        bot_tokens: std::collections::BTreeMap<String, String>,
        /// Messages per second per bot (Telegram's guidance: about 30).
        #[serde(default = "default_telegram_rate")]
        per_second: f64,
        /// Seconds between two messages to one chat (Telegram's guidance: about 1).
        #[serde(default = "default_telegram_pair")]
        per_recipient_seconds: f64,
    },
    /// LINE Messaging API push message (the account is the channel).
    Line {
        /// API base (`https://api.line.me`).
        #[serde(default = "default_line_base")]
        base_url: String,
        /// Channel access token per account (`${ENV}`).
        channel_tokens: std::collections::BTreeMap<String, String>,
        /// Requests per second per channel (LINE's limit for push: 2,000).
        #[serde(default = "default_line_rate")]
        per_second: f64,
    },
    /// Shopee seller chat `send_message` (the account is the shop id), to the buyer's user id.
    Shopee {
        /// API base (`https://partner.shopeemobile.com`).
        #[serde(default = "default_shopee_base")]
        base_url: String,
        /// The app's partner id.
        partner_id: String,
        /// The app's partner key (`${ENV}`), which signs each call.
        partner_key: String,
        /// Shop access tokens by shop id, for shops without a `shopee_chat` poller in this process
        /// (a running poller's current token comes first: Shopee's expire after 4 hours and the
        /// poller refreshes it).
        #[serde(default)]
        shop_tokens: std::collections::BTreeMap<String, String>,
        /// Messages per second per shop (Shopee publishes none: 1).
        #[serde(default = "default_marketplace_rate")]
        per_second: f64,
    },
    /// TikTok Shop customer service "Send Message" into the buyer's conversation (the account
    /// is the shop cipher).
    TiktokShop {
        /// API base (`https://open-api.tiktokglobalshop.com`).
        #[serde(default = "default_tiktok_base")]
        base_url: String,
        /// The app key.
        app_key: String,
        /// The app secret (`${ENV}`), which signs each call.
        app_secret: String,
        /// Shop access tokens by shop cipher, for shops without a `tiktok_customer_service`
        /// poller in this process (a running poller's current token comes first).
        #[serde(default)]
        shop_tokens: std::collections::BTreeMap<String, String>,
        /// Shop cipher by shop id, for inquiries that came by webhook (whose account is the shop
        /// id; the pollers' is the cipher).
        #[serde(default)]
        shop_ciphers: std::collections::BTreeMap<String, String>,
        /// Messages per second per shop (TikTok Shop publishes none for this call: 1).
        #[serde(default = "default_marketplace_rate")]
        per_second: f64,
    },
    /// eBay Trading `AddMemberMessageRTQ`: the answer to a buyer's question about a listing (the
    /// account is the seller).
    Ebay {
        /// API base (`https://api.ebay.com`).
        #[serde(default = "default_ebay_base")]
        base_url: String,
        /// OAuth user tokens by seller, for sellers without an `ebay_member_messages` (or
        /// `ebay_post_order_inquiries`) poller in this process (a running poller's token comes
        /// first).
        #[serde(default)]
        user_tokens: std::collections::BTreeMap<String, String>,
        /// Calls per second per seller (eBay: at most 75 in any 60 s, or a 100 s block: 1.25).
        #[serde(default = "default_ebay_rtq_rate")]
        per_second: f64,
    },
}

impl std::fmt::Debug for SenderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderConfig::Smtp { host, port, tls, .. } => {
                f.debug_struct("Smtp").field("host", host).field("port", port).field("tls", tls).finish_non_exhaustive()
            }
            SenderConfig::Whatsapp { base_url, .. } => {
                f.debug_struct("Whatsapp").field("base_url", base_url).finish_non_exhaustive()
            }
            SenderConfig::Messenger { base_url, page_tokens, .. } => f
                .debug_struct("Messenger")
                .field("base_url", base_url)
                .field("accounts", &page_tokens.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            SenderConfig::Telegram { base_url, bot_tokens, .. } => f
                .debug_struct("Telegram")
                .field("base_url", base_url)
                .field("accounts", &bot_tokens.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            SenderConfig::Line { base_url, channel_tokens, .. } => f
                .debug_struct("Line")
                .field("base_url", base_url)
                .field("accounts", &channel_tokens.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            SenderConfig::Shopee { base_url, partner_id, shop_tokens, .. } => f
                .debug_struct("Shopee")
                .field("base_url", base_url)
                .field("partner_id", partner_id)
                .field("accounts", &shop_tokens.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            SenderConfig::TiktokShop { base_url, app_key, shop_tokens, .. } => f
                .debug_struct("TiktokShop")
                .field("base_url", base_url)
                .field("app_key", app_key)
                .field("accounts", &shop_tokens.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            SenderConfig::Ebay { base_url, user_tokens, .. } => f
                .debug_struct("Ebay")
                .field("base_url", base_url)
                .field("accounts", &user_tokens.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
        }
    }
}

fn default_smtp_channels() -> Vec<String> {
    vec!["email".to_owned(), "web_form".to_owned()]
}

fn default_smtp_rate() -> f64 {
    10.0
}

fn default_whatsapp_base() -> String {
    "https://graph.facebook.com/v21.0".to_owned()
}

fn default_whatsapp_rate() -> f64 {
    80.0
}

fn default_whatsapp_pair() -> f64 {
    6.0
}

fn default_messenger_rate() -> f64 {
    300.0
}

fn default_messenger_channels() -> Vec<String> {
    vec!["messenger".to_owned(), "instagram".to_owned()]
}

fn default_telegram_base() -> String {
    "https://api.telegram.org".to_owned()
}

fn default_telegram_rate() -> f64 {
    30.0
}

fn default_telegram_pair() -> f64 {
    1.0
}

fn default_line_base() -> String {
    "https://api.line.me".to_owned()
}

fn default_line_rate() -> f64 {
    2000.0
}

fn default_shopee_base() -> String {
    "https://partner.shopeemobile.com".to_owned()
}

fn default_tiktok_base() -> String {
    "https://open-api.tiktokglobalshop.com".to_owned()
}

fn default_ebay_base() -> String {
    "https://api.ebay.com".to_owned()
}

fn default_marketplace_rate() -> f64 {
    1.0
}

fn default_ebay_rtq_rate() -> f64 {
    75.0 / 60.0
}

impl Default for ReachConfig {
    fn default() -> Self {
        ReachConfig {
            sla_policies: Vec::new(),
            sla_rules: Vec::new(),
            calendars: Vec::new(),
            teams: Vec::new(),
            alert_targets: Vec::new(),
            dry_run: false,
            templates: Vec::new(),
            ack_rules: Vec::new(),
            fallback_language: "en".to_owned(),
            eu_representative: None,
            eu_accounts: Vec::new(),
            quiet_hours: None,
            senders: Vec::new(),
            replies_topic: None,
            forward_http: false,
            ack_repeat_window: "24h".to_owned(),
            sla_per_buyer: true,
        }
    }
}

/// A first-response SLA policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicyConfig {
    /// Id (referenced by rules and routing decisions).
    pub id: String,
    /// Time allowed for the first response (`"4h"`, `"30m"`); business time when `calendar` is set.
    pub first_response: String,
    /// Reminders this long before the deadline (`["1h", "15m"]`).
    #[serde(default)]
    pub reminders: Vec<String>,
    /// Business calendar; none: around the clock.
    #[serde(default)]
    pub calendar: Option<String>,
    /// After a breach, escalate to the team lead, then to the supervisor, this long after the
    /// deadline (`["0s", "2h"]`).
    #[serde(default)]
    pub escalate_after: Vec<String>,
}

/// Which inquiries get a policy; every given field must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaRuleConfig {
    /// Account (shop).
    #[serde(default)]
    pub account: Option<String>,
    /// Queue the inquiry was routed to.
    #[serde(default)]
    pub queue: Option<String>,
    /// Its priority.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// The policy id.
    pub policy: String,
}

/// Business hours in one time zone, with holidays.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// Id.
    pub id: String,
    /// IANA time zone (`Europe/Berlin`, `Asia/Shanghai`).
    pub time_zone: String,
    /// Open slots per weekday (`mon` .. `sun`): `["09:00-12:30", "13:30-18:00"]`; a day not
    /// listed is closed.
    pub hours: std::collections::BTreeMap<String, Vec<String>>,
    /// Closed dates (`2026-12-25`).
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// A team (the agents of one queue).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// The queue it works.
    pub queue: String,
    /// Who a breach is escalated to first.
    #[serde(default)]
    pub lead: Option<String>,
    /// Who it is escalated to next.
    #[serde(default)]
    pub supervisor: Option<String>,
    /// Alert targets (ids) that get the team's SLA alerts.
    pub alert_targets: Vec<String>,
    /// Also alert the assignee when an inquiry with an SLA is assigned (`sla.started`), not
    /// only on reminders, breaches and escalations.
    #[serde(default)]
    pub alert_on_assignment: bool,
}

/// How an alert target is addressed and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Slack incoming webhook (the URL is the secret).
    Slack,
    /// Feishu / Lark custom bot; with `secret`, signed (`timestamp` + `sign` in the body).
    Feishu,
    /// DingTalk custom robot; with `secret`, signed (`timestamp` + `sign` in the URL).
    Dingtalk,
    /// WeCom group robot (the URL's key is the secret).
    Wecom,
    /// Any HTTPS endpoint: the event batch as JSON, signed with HMAC-SHA256 (`secret` required).
    Webhook,
    /// E-mail over SMTP: `url` is `smtps://user:pass@host:465` or
    /// `smtp://user:pass@host:587?tls=required` (`smtp://` without TLS only on loopback), to `to`.
    Email,
    /// SMS through Twilio's Messages API (`url`: `.../2010-04-01/Accounts/{AccountSid}/Messages.json`,
    /// `secret`: `{AccountSid}:{AuthToken}`, `from`: the sending number): to the phone number
    /// `mentions` maps the person who must act to, else to the numbers in `to`.
    Sms,
}

/// One place alerts are sent to.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTargetConfig {
    /// Id (referenced by teams).
    pub id: String,
    /// Which kind of endpoint.
    pub kind: AlertKind,
    /// Its URL (`${ENV}`: bot URLs carry their token).
    pub url: String,
    /// Signing secret.
    #[serde(default)]
    pub secret: Option<String>,
    /// Most events in one message (a burst is sent as few messages).
    #[serde(default = "default_alert_batch")]
    pub max_batch: usize,
    /// E-mail: the recipients; SMS: the numbers (E.164) that get alerts for people `mentions`
    /// does not map.
    #[serde(default)]
    pub to: Vec<String>,
    /// E-mail: the sender address; SMS: the sending number (E.164) or messaging service sid.
    #[serde(default)]
    pub from: Option<String>,
    /// Who to @-mention, by the id routing and teams use (agent, lead, supervisor) -> that
    /// person's id on this platform: a Slack member id (`U024BE7LH`), a Feishu open_id
    /// (`ou_...`), a DingTalk userId, a WeCom userid. Without an entry the alert names the id as
    /// plain text.
    #[serde(default)]
    pub mentions: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for AlertTargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertTargetConfig")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("url", &"<set>")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("max_batch", &self.max_batch)
            .field("to", &self.to.len())
            .field("mentions", &self.mentions.len())
            .finish()
    }
}

fn default_alert_batch() -> usize {
    20
}

/// Parses a config duration (`"90s"`, `"15m"`, `"4h"`, `"2d"`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration ({e})"))
}

/// Who polls what when several replicas run one configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coordination {
    /// This process polls every `[[pollers]]` entry; cursors live in the embedded store (one replica).
    #[default]
    Local,
    /// Replicas share the entries through leases in the CQL store of `[sinks.cql]`: each
    /// (platform, shop), or each app where the platform's quota is per app, is polled by exactly
    /// one replica at a time; cursors and token grants live with the lease.
    Cql,
}

/// How the pollers of several replicas share the work (`[polling]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollingConfig {
    /// `local` (default) or `cql`.
    pub coordination: Coordination,
    /// This replica's name in leases, logs and the pollers' User-Agent; default `$HOSTNAME`.
    pub replica: Option<String>,
    /// How long a lease lasts without renewal, in ms. It is renewed every tenth of that; a
    /// replica that cannot renew stops polling after 60% of it; another replica takes it over
    /// once it has expired (replica clocks must agree within 20% of it).
    pub lease_ms: u64,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig { coordination: Coordination::Local, replica: None, lease_ms: 10_000 }
    }
}

/// The other replicas (`[cluster]`): `GET /v1/inquiries/{id}` for an inquiry this replica does
/// not hold asks them (see `http::peers`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The replicas' ingest listeners, `http://host:port` or `https://host:port`; every address a
    /// name resolves to is asked (a Kubernetes headless Service names every pod). This replica
    /// may be among them. Empty: one replica, nothing to ask.
    pub peers: Vec<String>,
    /// How long a peer has to answer, in milliseconds.
    pub peer_timeout_ms: u64,
    /// CA certificate (PEM) the peers' ingest certificates are checked against (with `https`
    /// peers whose certificates no public CA signed); default the webpki roots.
    pub peer_ca_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { peers: Vec::new(), peer_timeout_ms: 2000, peer_ca_file: None }
    }
}

/// The public ingest listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most lines accepted in one NDJSON batch (413 above it).
    pub max_batch_lines: usize,
    /// Requests served at once; more are refused with 503 rather than queued.
    pub max_concurrent_requests: usize,
    /// Connections open at once; at the limit the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may stay idle, in milliseconds; then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Longest a request may take before it is answered 503, in milliseconds.
    pub request_timeout_ms: u64,
    /// HTTPS on this listener (else plain HTTP, e.g. behind a TLS-terminating load balancer).
    pub tls: Option<ListenerTlsConfig>,
}

/// A listener's certificate: PEM files, read at start and again on SIGHUP (a renewed
/// certificate applies without a restart).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_batch_lines: 10_000,
            max_concurrent_requests: 4096,
            max_connections: 10_000,
            header_read_timeout_ms: 30_000,
            request_timeout_ms: 10_000,
            tls: None,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on; keep it off the public network.
    pub listen: SocketAddr,
    /// Bearer tokens of the admin API (`/v1/plugins`, `/v1/agents`), each with scopes. With none,
    /// the admin API answers only on a loopback listener; `/healthz`, `/readyz` and `/metrics`
    /// never need a token.
    pub tokens: Vec<AdminTokenConfig>,
    /// HTTPS on the admin listener (else plain HTTP).
    pub tls: Option<ListenerTlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9090)), tokens: Vec::new(), tls: None }
    }
}

/// One admin API token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// Name of the token, logged in place of it.
    pub id: String,
    /// The secret (at least 16 bytes); use `${ENV}`.
    pub token: String,
    /// What it may do: `plugins:read`, `plugins:write`, `agents:read`, `agents:write`, ...
    pub scopes: Vec<String>,
}

impl std::fmt::Debug for AdminTokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTokenConfig").field("id", &self.id).field("scopes", &self.scopes).finish_non_exhaustive()
    }
}

/// Scopes an admin token may hold.
pub const ADMIN_SCOPES: [&str; 9] = [
    "plugins:read",
    "plugins:write",
    "agents:read",
    "agents:write",
    "audit:read",
    "subjects:read",
    "subjects:export",
    "subjects:erase",
    "subjects:consent",
];

/// Personal data protection, the audit trail and data subject requests (docs/compliance.md).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceConfig {
    /// The data controller (the seller's organization); bound into every sealed field.
    pub tenant: String,
    /// The key-encryption key: base64 of 32 bytes, e.g. `${GATEWAY_KEK}`. With neither this nor
    /// `kek_file`, a key is generated into `<store.path>/keys/kek` (for a single machine only).
    pub kek: Option<String>,
    /// A file holding the key-encryption key (base64 of 32 bytes).
    pub kek_file: Option<PathBuf>,
    /// Ed25519 key (PKCS#8) that signs the audit log's tree heads; generated into
    /// `<store.path>/keys/audit-signing.pk8` when absent.
    pub signing_key_file: Option<PathBuf>,
    /// How often a tree head is signed while the log grows.
    pub tree_head_interval_ms: u64,
    /// How long subject request records are kept (24 months by default).
    pub request_retention_days: u32,
    /// What an export tells the data subject (GDPR Art. 15(1)).
    pub processing: ProcessingConfig,
    /// Where erasures and consent withdrawals are shared: `local` (this replica only) or `cql`
    /// (written to the CQL store before they are carried out; every replica carries them out on
    /// what it holds).
    pub request_sharing: StatePlace,
    /// With `request_sharing = "cql"`: how often each replica reads the shared requests, in
    /// milliseconds.
    pub request_refresh_ms: u64,
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        ComplianceConfig {
            tenant: "default".to_owned(),
            kek: None,
            kek_file: None,
            signing_key_file: None,
            tree_head_interval_ms: 10_000,
            request_retention_days: 730,
            processing: ProcessingConfig::default(),
            request_sharing: StatePlace::Local,
            request_refresh_ms: 5_000,
        }
    }
}

impl std::fmt::Debug for ComplianceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComplianceConfig")
            .field("tenant", &self.tenant)
            .field("kek", &self.kek.as_ref().map(|_| "<set>"))
            .field("kek_file", &self.kek_file)
            .field("signing_key_file", &self.signing_key_file)
            .finish_non_exhaustive()
    }
}

/// The GDPR Art. 15(1) information an export carries; fill it in from your records of processing.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// Who the controller is and how to reach them.
    pub controller: String,
    /// The purposes of the processing.
    pub purposes: Vec<String>,
    /// Recipients or categories of recipients.
    pub recipients: Vec<String>,
    /// How long the data is kept, or the criteria.
    pub retention: String,
    /// Where the data came from.
    pub source: String,
    /// Transfers to third countries and their safeguards.
    pub transfers: String,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            controller: "(set compliance.processing.controller)".to_owned(),
            purposes: vec!["answering the buyer's inquiries and the orders they concern".to_owned()],
            recipients: vec!["the seller's customer service team and its helpdesk".to_owned()],
            retention: "(set compliance.processing.retention)".to_owned(),
            source: "the buyer, through the marketplace or channel the message came from".to_owned(),
            transfers: "(set compliance.processing.transfers)".to_owned(),
        }
    }
}

/// The pipeline between ingest and the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Requests that may wait for the pipeline; when full, ingest answers 503 with Retry-After.
    pub queue_capacity: usize,
    /// Most inquiries committed together in one group commit.
    pub max_batch_inquiries: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig { queue_capacity: 4096, max_batch_inquiries: 16_384 }
    }
}

/// The embedded durable store.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the store; created if absent.
    pub path: PathBuf,
    /// Secret for buyer pseudonyms (at least 32 bytes, e.g. `${GATEWAY_PSEUDONYM_KEY}`). When absent,
    /// a random key is generated once and kept in the store.
    pub pseudonym_key: Option<String>,
    /// New inquiries are refused (503 `disk_full`) while the store's file system has less free
    /// space than this, in MiB, so that the store never runs out of space mid-write; 0: never.
    pub min_free_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: PathBuf::from("inquiry-gateway-data"), pseudonym_key: None, min_free_mb: 1024 }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.pseudonym_key.is_some() { "<set>" } else { "<generated>" };
        f.debug_struct("StoreConfig").field("path", &self.path).field("pseudonym_key", &key).finish()
    }
}

/// Routing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Where an inquiry goes when no rule or plugin decides, or when one fails.
    pub fallback: FallbackConfig,
    /// WebAssembly routing plugins, by id.
    pub plugins: Vec<PluginConfig>,
    /// Which plugins route which inquiries: the first chain whose `channel` and `account` match
    /// routes an inquiry; no match: the fallback route.
    pub chains: Vec<ChainConfig>,
    /// The agent directory plugins look up (capability `agents`); the admin API updates load
    /// and presence at run time.
    pub agents: Vec<AgentConfig>,
    /// How often plugin files are checked for changes, in milliseconds (0: only on SIGHUP or
    /// `POST /v1/plugins/reload`).
    pub reload_interval_ms: u64,
    /// Where agents' run-time state (`PUT /v1/agents/{id}`) is kept: `local` (the embedded
    /// store: a restart keeps it) or `cql` (the CQL store of `[sinks.cql]`: every replica sees it).
    pub agent_state: StatePlace,
    /// With `agent_state = "cql"`: how often each replica reads the shared state, in milliseconds.
    pub agent_refresh_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            fallback: FallbackConfig::default(),
            plugins: Vec::new(),
            chains: Vec::new(),
            agents: Vec::new(),
            reload_interval_ms: 2000,
            agent_state: StatePlace::Local,
            agent_refresh_ms: 1000,
        }
    }
}

/// Where state that must outlive a restart, or be seen by every replica, is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatePlace {
    /// The embedded store of this replica.
    #[default]
    Local,
    /// The CQL store of `[sinks.cql]`, shared by every replica.
    Cql,
}

/// A WebAssembly routing plugin (ABI v1, docs/plugin-abi.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Plugin id: lower-case letters, digits, `-` and `_` (a metric label).
    pub id: String,
    /// The module: a `.wasm` file (or `.wat` text).
    pub path: PathBuf,
    /// Version label shown in decisions (`plugin:<id>@<version>`); default: the first 12 hex
    /// digits of the module's SHA-256.
    #[serde(default)]
    pub version: Option<String>,
    /// Host functions granted: `log`, `counters`, `clock`, `agents`, `kv`. A module importing
    /// one that is not granted is refused.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Limits of the sandbox.
    #[serde(default)]
    pub limits: PluginLimits,
    /// A candidate version run beside this one on the same traffic without affecting routing;
    /// disagreements are counted and sampled (`GET /v1/plugins`).
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    /// The plugin's own settings (`igw.settings`, no capability needed): keys of `A-Z a-z 0-9 _ . -`,
    /// values given to the plugin as text (strings as they are, other values as JSON text).
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
}

/// Most settings one plugin may have.
pub const MAX_PLUGIN_SETTINGS: usize = 256;
/// Longest text of one plugin setting's value, in bytes.
pub const MAX_PLUGIN_SETTING_BYTES: usize = 16 * 1024;

/// A plugin's settings as the plugin reads them, sorted by key: strings as they are, other
/// values (numbers, booleans, arrays, tables, dates) as JSON text.
pub fn plugin_setting_texts(settings: &BTreeMap<String, toml::Value>) -> Vec<(String, String)> {
    fn json(value: &toml::Value) -> serde_json::Value {
        match value {
            toml::Value::String(s) => serde_json::Value::from(s.as_str()),
            toml::Value::Integer(n) => serde_json::Value::from(*n),
            toml::Value::Float(f) => serde_json::Value::from(*f),
            toml::Value::Boolean(b) => serde_json::Value::from(*b),
            toml::Value::Datetime(d) => serde_json::Value::from(d.to_string()),
            toml::Value::Array(items) => items.iter().map(json).collect(),
            toml::Value::Table(table) => table.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
        }
    }
    settings
        .iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                other => json(other).to_string(),
            };
            (key.clone(), text)
        })
        .collect()
}

/// A capability a plugin may be granted (a group of host functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `igw.log`: rate-limited log lines.
    Log,
    /// `igw.counter_add`: plugin counters in the metrics.
    Counters,
    /// `igw.now_ms`: the wall clock.
    Clock,
    /// `igw.agents`: agent load and presence per team.
    Agents,
    /// `igw.kv_get`, `igw.kv_add`: a per-plugin key-value map of integers.
    Kv,
}

/// Limits of one plugin's sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Largest linear memory, in bytes.
    pub max_memory_bytes: u64,
    /// Time a batch may take: this plus `record_timeout_us` per inquiry, in milliseconds.
    pub batch_timeout_ms: u64,
    /// Time per inquiry, added to the batch deadline and used alone when a failed batch is
    /// retried inquiry by inquiry, in microseconds.
    pub record_timeout_us: u64,
    /// Fuel (roughly, WebAssembly instructions) per inquiry: a deterministic cut-off on top of
    /// the deadline. None: deadline only (cheaper).
    pub fuel_per_record: Option<u64>,
    /// Largest result a batch may return, in bytes.
    pub max_output_bytes: usize,
    /// Consecutive failed batches that quarantine the plugin.
    pub quarantine_after_failures: u32,
    /// How long a quarantine lasts before one batch is tried again, in milliseconds.
    pub quarantine_ms: u64,
    /// Log lines per second the plugin may write (more are dropped and counted).
    pub log_lines_per_second: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            max_memory_bytes: 64 * 1024 * 1024,
            batch_timeout_ms: 50,
            record_timeout_us: 500,
            fuel_per_record: None,
            max_output_bytes: 4 * 1024 * 1024,
            quarantine_after_failures: 5,
            quarantine_ms: 30_000,
            log_lines_per_second: 10,
        }
    }
}

/// The candidate version of a plugin in shadow mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The candidate module (default: the live plugin's module, to try new settings).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Its version label (default: from its SHA-256 and its settings).
    #[serde(default)]
    pub version: Option<String>,
    /// The candidate's settings (default: the live plugin's).
    #[serde(default)]
    pub settings: Option<BTreeMap<String, toml::Value>>,
}

/// A chain of plugins for some channel and/or account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Channel this chain routes (any when absent).
    #[serde(default)]
    pub channel: Option<String>,
    /// Account this chain routes (any when absent).
    #[serde(default)]
    pub account: Option<String>,
    /// Plugin ids, asked in order: the first that decides wins; an undecided inquiry goes to
    /// the next, and past the last to the fallback route.
    pub plugins: Vec<String>,
}

/// An agent in the directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Agent id (what decisions name as assignee).
    pub id: String,
    /// Team (queue) the agent works in.
    pub team: String,
    /// Most open inquiries the agent takes.
    pub capacity: u32,
    /// Whether the agent starts online.
    #[serde(default = "default_true")]
    pub online: bool,
}

fn default_true() -> bool {
    true
}

/// The fallback route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// Queue (team) that receives the inquiry.
    pub queue: String,
    /// Priority it gets.
    pub priority: Priority,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig { queue: "unassigned".to_owned(), priority: Priority::Normal }
    }
}

/// Who may call the ingest API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Per-account API keys, sent as `Authorization: Bearer <key>`. With none, the API is open:
    /// allowed only when the ingest listener is on loopback.
    pub api_keys: Vec<ApiKeyConfig>,
}

/// One API key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Name of the key, shown in logs in place of the key.
    pub id: String,
    /// The secret (at least 16 bytes); use `${ENV}` interpolation rather than writing it in the file.
    pub key: String,
    /// Accounts this key may post for and read; `"*"` means all.
    pub accounts: Vec<String>,
    /// What the key may do (see [`API_KEY_SCOPES`]); all of it when absent. A key that only
    /// submits (a web shop's back end, a form relay) should hold just `inquiries:write`.
    #[serde(default = "all_api_key_scopes")]
    pub scopes: Vec<String>,
}

/// Scopes an ingest API key may hold: `inquiries:write` (`POST /v1/inquiries`, `/batch`),
/// `inquiries:read` (`GET /v1/inquiries/{id}`, personal data in clear), `replies:write`
/// (`POST /v1/inquiries/{id}/reply`), `conversions:write` (`POST /v1/inquiries/{id}/conversion`).
pub const API_KEY_SCOPES: [&str; 4] = ["inquiries:write", "inquiries:read", "replies:write", "conversions:write"];

fn all_api_key_scopes() -> Vec<String> {
    API_KEY_SCOPES.iter().map(|s| (*s).to_owned()).collect()
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("id", &self.id)
            .field("accounts", &self.accounts)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `inquiry_gateway=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_owned() }
    }
}

/// True for an `https://` URL, or an `http://` one on a loopback host.
fn is_https_or_loopback(url: &str) -> bool {
    match url.replace("{kid}", "kid").parse::<hyper::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") => uri.host().is_some(),
        Ok(uri) if uri.scheme_str() == Some("http") => uri.host().is_some_and(is_loopback_host),
        _ => false,
    }
}

/// `message` (serde's "invalid type: string \"...\", expected ..." and "invalid value: ...")
/// without the value found: only its kind ("string", "integer") stays.
fn without_found_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) =
        ["invalid type: ", "invalid value: "].iter().filter_map(|p| rest.find(p).map(|i| i + p.len())).min()
    {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let kind_end = rest.find([' ', ',']).unwrap_or(rest.len());
        out.push_str(&rest[..kind_end]);
        // The value runs to ", expected" (serde always says what it expected).
        match rest.find(", expected") {
            Some(end) => rest = &rest[end..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A TOML syntax error by line and column, without the snippet of the line that `toml` adds.
fn syntax_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim_end();
    let Some(before) = err.span().and_then(|span| text.get(..span.start)) else {
        return ConfigError::Parse(format!("TOML parse error: {message}"));
    };
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    ConfigError::Parse(format!("TOML parse error at line {line}, column {column}: {message}"))
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text refers to an environment variable that is not set.
    #[error("environment variable `{0}` is not set (referenced as ${{{0}}})")]
    MissingEnv(String),
    /// The text is not valid TOML for this schema: where and what, never the line itself (it may
    /// hold a secret, and the message reaches logs and the admin API's reload answer).
    #[error("{0}")]
    Parse(String),
    /// The values are inconsistent.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads, parses and validates the config file at `path` (a reload: SIGHUP, or
    /// `POST /v1/plugins/reload`); the error says what is wrong.
    pub fn read_validated(path: &std::path::Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::validated_from(&text)
    }

    /// Parses and validates config text (see [`Config::read_validated`]).
    pub fn validated_from(text: &str) -> Result<Config, String> {
        let config = Config::from_toml(text).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Parses TOML text, replacing `${NAME}` in string values with the environment variable NAME
    /// (comments and keys are left alone, and a value can never inject TOML syntax).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, |name| std::env::var(name).ok())
    }

    /// Like [`Config::from_toml`] with an explicit environment lookup (for tests).
    pub fn from_toml_with_env(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        interpolate_strings(&mut value, &env)?;
        // Errors of the schema name the key and the expected type; serde's wording also quotes
        // the value found (a secret from `${ENV}` put under the wrong key), which is left out.
        value.try_into().map_err(|e: toml::de::Error| ConfigError::Parse(without_found_values(&e.to_string())))
    }

    /// Checks the values; pure: no network, no filesystem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let ingest = &self.ingest;
        if !(1024..=64 * 1024 * 1024).contains(&ingest.max_body_bytes) {
            problems.push("ingest.max_body_bytes must be between 1024 and 67108864".to_owned());
        }
        if ingest.max_batch_lines == 0 {
            problems.push("ingest.max_batch_lines must be at least 1".to_owned());
        }
        if ingest.max_concurrent_requests == 0 {
            problems.push("ingest.max_concurrent_requests must be at least 1".to_owned());
        }
        if ingest.max_connections == 0 {
            problems.push("ingest.max_connections must be at least 1".to_owned());
        }
        if ingest.header_read_timeout_ms < 100 {
            problems.push("ingest.header_read_timeout_ms must be at least 100".to_owned());
        }
        if ingest.request_timeout_ms < 100 {
            problems.push("ingest.request_timeout_ms must be at least 100".to_owned());
        }
        if ingest.listen == self.admin.listen && ingest.listen.port() != 0 {
            problems.push("ingest.listen and admin.listen must differ".to_owned());
        }
        if self.pipeline.queue_capacity == 0 {
            problems.push("pipeline.queue_capacity must be at least 1".to_owned());
        }
        if self.pipeline.max_batch_inquiries == 0 {
            problems.push("pipeline.max_batch_inquiries must be at least 1".to_owned());
        }
        if self.store.path.as_os_str().is_empty() {
            problems.push("store.path must not be empty".to_owned());
        }
        if let Some(key) = &self.store.pseudonym_key {
            if key.len() < 32 {
                problems.push("store.pseudonym_key must be at least 32 bytes".to_owned());
            }
        }
        if self.routing.fallback.queue.trim().is_empty() {
            problems.push("routing.fallback.queue must not be empty".to_owned());
        }
        validate_routing(&self.routing, &mut problems);
        cluster_problems(
            "kafka",
            self.sinks.kafka.as_ref(),
            &self.sinks.kafka_regional,
            KafkaConfig::problems,
            |a, b| {
                let shared = endpoints(&a.brokers, 9092).intersection(&endpoints(&b.brokers, 9092)).count() > 0;
                (shared && a.topic_prefix == b.topic_prefix).then(|| {
                    format!(
                        "two Kafka clusters share a broker and topic_prefix `{}`: they would write to the same topics",
                        a.topic_prefix
                    )
                })
            },
            &mut problems,
        );
        cluster_problems(
            "cql",
            self.sinks.cql.as_ref(),
            &self.sinks.cql_regional,
            CqlConfig::problems,
            |a, b| {
                let points = |c: &CqlConfig| endpoints(&c.contact_points.join(","), 9042);
                let shared = points(a).intersection(&points(b)).count() > 0;
                // Unquoted in every statement: keyspace names do not differ by case.
                (shared && a.keyspace.eq_ignore_ascii_case(&b.keyspace)).then(|| {
                    format!(
                        "two CQL clusters share a contact point and keyspace `{}`: they would write to the same tables",
                        a.keyspace
                    )
                })
            },
            &mut problems,
        );
        let retention = &self.retention;
        // CQL's largest TTL is 20 years.
        if retention.inquiries_days == 0 || retention.inquiries_days > 7300 || retention.audit_days > 7300 {
            problems
                .push("retention.inquiries_days must be 1 to 7300 and audit_days at most 7300 (20 years)".to_owned());
        }
        if retention.dead_letters_days == 0 || retention.dead_letters_days > retention.inquiries_days {
            problems.push("retention.dead_letters_days must be 1 to retention.inquiries_days".to_owned());
        }
        if retention.kafka_feed_days == 0 || retention.kafka_feed_days > retention.inquiries_days {
            problems.push("retention.kafka_feed_days must be 1 to retention.inquiries_days".to_owned());
        }
        if retention.sweep_interval_ms < 100 {
            problems.push("retention.sweep_interval_ms must be at least 100".to_owned());
        }
        let mut endpoints = BTreeSet::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            if inquiry_connectors::webhook::find(&hook.connector).is_none()
                && hook.connector != crate::http::shopify_compliance::CONNECTOR
            {
                let known: Vec<&str> = inquiry_connectors::webhook::REGISTRY.iter().map(|w| w.name()).collect();
                problems.push(format!(
                    "webhooks[{i}].connector `{}` is not one of {}, {}",
                    hook.connector,
                    known.join(", "),
                    crate::http::shopify_compliance::CONNECTOR
                ));
            }
            if hook.account.trim().is_empty() || hook.account.contains('/') {
                problems.push(format!("webhooks[{i}].account must be non-empty and contain no `/`"));
            }
            buyer_country_problem(&format!("webhooks[{i}]"), &hook.buyer_country, &mut problems);
            if !hook.accounts.is_empty() && !WEBHOOKS_NAMING_ACCOUNTS.contains(&hook.connector.as_str()) {
                problems.push(format!(
                    "webhooks[{i}].accounts: {} deliveries name no account (only {} do)",
                    hook.connector,
                    WEBHOOKS_NAMING_ACCOUNTS.join(", ")
                ));
            }
            if let Some(oauth) = &hook.app_oauth {
                if hook.connector != "ebay" {
                    problems.push(format!("webhooks[{i}].app_oauth: only ebay fetches signing keys"));
                }
                if hook.app_token.is_some() {
                    problems.push(format!("webhooks[{i}]: app_oauth mints the token; leave out app_token"));
                }
                oauth.problems(&format!("webhooks[{i}].app_oauth"), &mut problems);
            }
            if hook.accounts.iter().any(|a| a.is_empty() || a.len() > 128 || a.contains('/')) {
                problems.push(format!("webhooks[{i}].accounts: each must be 1 to 128 bytes without `/`"));
            }
            // SendGrid and eBay sign with public keys: no shared secret.
            let public_key_signed = ["sendgrid", "ebay"].contains(&hook.connector.as_str());
            if hook.secret.len() < 8 && !public_key_signed {
                problems.push(format!("webhooks[{i}].secret must be at least 8 bytes"));
            }
            let unset = |value: &Option<String>| value.as_deref().is_none_or(str::is_empty);
            if ["shopee", "ebay"].contains(&hook.connector.as_str()) && unset(&hook.endpoint_url) {
                problems.push(format!(
                    "webhooks[{i}]: {} needs endpoint_url, the endpoint's public URL as registered",
                    hook.connector
                ));
            }
            if hook.connector == "sendgrid" && unset(&hook.public_key) {
                problems.push(format!("webhooks[{i}]: sendgrid needs public_key, its security policy's signature key"));
            }
            if hook.connector == "ebay" && unset(&hook.verify_token) {
                problems.push(format!("webhooks[{i}]: ebay needs verify_token for its endpoint validation"));
            }
            if hook.public_key_url.as_deref().is_some_and(|url| !url.contains("{kid}")) {
                problems.push(format!("webhooks[{i}].public_key_url must contain `{{kid}}`"));
            }
            if let Some(url) = hook.public_key_url.as_deref().filter(|url| !is_https_or_loopback(url)) {
                problems.push(format!(
                    "webhooks[{i}].public_key_url `{url}` must be https:// (the eBay application token is sent \
                     to it; http:// is allowed only on loopback)"
                ));
            }
            if hook.connector == "tiktok_shop" && hook.app_key.as_deref().is_none_or(str::is_empty) {
                problems.push(format!("webhooks[{i}]: tiktok_shop signs with the app key: set app_key"));
            }
            let meta = ["whatsapp", "messenger", "instagram"].contains(&hook.connector.as_str());
            if meta && hook.verify_token.as_deref().is_none_or(str::is_empty) {
                problems.push(format!(
                    "webhooks[{i}]: {} needs verify_token for its subscription handshake",
                    hook.connector
                ));
            }
            if !endpoints.insert((hook.connector.as_str(), hook.account.as_str())) {
                problems.push(format!("webhooks[{i}]: {}/{} is configured twice", hook.connector, hook.account));
            }
        }
        let mut polled = BTreeSet::new();
        let mut app_quotas = std::collections::BTreeMap::new();
        for (i, poller) in self.pollers.iter().enumerate() {
            buyer_country_problem(&format!("pollers[{i}]"), &poller.buyer_country, &mut problems);
            let found = inquiry_connectors::poll::find(&poller.connector);
            for needed in found.map(|p| p.required_credentials()).unwrap_or_default() {
                let (field, given) = match needed {
                    inquiry_connectors::poll::Credential::AppKey => ("app_key", &poller.app_key),
                    inquiry_connectors::poll::Credential::AppSecret => ("app_secret", &poller.app_secret),
                };
                if given.as_deref().is_none_or(str::is_empty) {
                    problems.push(format!("pollers[{i}]: {} needs {field}", poller.connector));
                }
            }
            if found.is_none() {
                let known: Vec<&str> = inquiry_connectors::poll::REGISTRY.iter().map(|p| p.name()).collect();
                problems.push(format!(
                    "pollers[{i}].connector `{}` is not one of {}",
                    poller.connector,
                    known.join(", ")
                ));
            }
            if !poller.base_url.starts_with("https://") && !poller.base_url.starts_with("http://") {
                problems.push(format!("pollers[{i}].base_url must be an http(s) url"));
            }
            if poller.account.trim().is_empty() {
                problems.push(format!("pollers[{i}].account must not be empty"));
            }
            let refreshes = poller.refresh_token.as_deref().is_some_and(|t| !t.is_empty());
            if found.is_none_or(|p| p.needs_access_token()) && poller.access_token.is_empty() && !refreshes {
                problems.push(format!("pollers[{i}]: access_token (or refresh_token) must not be empty"));
            }
            if let (true, Some(found)) = (refreshes, found) {
                let probe = inquiry_connectors::poll::PollTarget {
                    account: &poller.account,
                    credentials: Default::default(),
                    now: time::OffsetDateTime::UNIX_EPOCH,
                    wants_answers: false,
                };
                if found.refresh_request(&probe, "probe").is_none() {
                    problems.push(format!(
                        "pollers[{i}]: {} does not refresh tokens; remove refresh_token",
                        poller.connector
                    ));
                }
            }
            if poller.token_url.as_deref().is_some_and(|u| !u.starts_with("https://") && !u.starts_with("http://")) {
                problems.push(format!("pollers[{i}].token_url must be an http(s) url"));
            }
            if poller.requests_per_second.is_some_and(|r| !(r > 0.0 && r <= 10_000.0)) || poller.burst == Some(0) {
                problems.push(format!("pollers[{i}]: requests_per_second must be in (0, 10000] and burst at least 1"));
            }
            if poller.per_day == Some(0) {
                problems.push(format!("pollers[{i}]: per_day must be at least 1"));
            }
            if found.is_some_and(|p| p.quota_scope() == inquiry_connectors::poll::QuotaScope::App) {
                let quota = (poller.requests_per_second.map(f64::to_bits), poller.burst, poller.per_day);
                let shared = app_quotas.entry((poller.connector.as_str(), poller.app.as_str())).or_insert(quota);
                if *shared != quota {
                    problems.push(format!(
                        "pollers[{i}]: {} shares app `{}`'s quota with another entry: requests_per_second, burst and per_day must be the same in every entry of the app",
                        poller.connector, poller.app
                    ));
                }
            }
            if !polled.insert((poller.connector.as_str(), poller.account.as_str())) {
                problems.push(format!("pollers[{i}]: {}/{} is configured twice", poller.connector, poller.account));
            }
        }
        let polling = &self.polling;
        if self.routing.agent_state == StatePlace::Cql && self.sinks.cql.is_none() {
            problems.push(
                "routing.agent_state = \"cql\" needs [sinks.cql] (the shared agent states live there)".to_owned(),
            );
        }
        if !(100..=60_000).contains(&self.routing.agent_refresh_ms) {
            problems.push("routing.agent_refresh_ms must be between 100 and 60000".to_owned());
        }
        if self.compliance.request_sharing == StatePlace::Cql && self.sinks.cql.is_none() {
            problems.push(
                "compliance.request_sharing = \"cql\" needs [sinks.cql] (the shared requests live there)".to_owned(),
            );
        }
        if self.compliance.request_sharing == StatePlace::Cql
            && self.sinks.cql.as_ref().is_some_and(|cql| cql.location != Some(Region::Eu))
        {
            problems.push(
                "compliance.request_sharing = \"cql\" needs [sinks.cql] in the EU (location = \"eu\"): the shared \
                 requests name EU subjects (a cluster outside the EU goes in [sinks.cql_regional])"
                    .to_owned(),
            );
        }
        if self.reach.forward_http && self.sinks.kafka.as_ref().is_some_and(|k| k.location != Some(Region::Eu)) {
            problems.push(
                "reach.forward_http needs [sinks.kafka] in the EU (location = \"eu\"): forwarded replies and \
                 conversions of EU inquiries travel on its replies topic"
                    .to_owned(),
            );
        }
        problems.extend(crate::http::peers::peer_problems(&self.cluster.peers));
        if !self.cluster.peers.is_empty() && self.store.pseudonym_key.is_none() {
            problems.push(
                "cluster.peers needs store.pseudonym_key (the same on every replica: it keys the peer requests' signatures)"
                    .to_owned(),
            );
        }
        if self.cluster.peer_timeout_ms < 100 || self.cluster.peer_timeout_ms >= self.ingest.request_timeout_ms {
            problems.push(format!(
                "cluster.peer_timeout_ms must be at least 100 and less than ingest.request_timeout_ms ({})",
                self.ingest.request_timeout_ms
            ));
        }
        if self.reach.forward_http && (self.reach.replies_topic.is_none() || self.store.pseudonym_key.is_none()) {
            problems.push(
                "reach.forward_http needs reach.replies_topic and store.pseudonym_key (the same on every replica: it keys the forwarded messages' signatures)"
                    .to_owned(),
            );
        }
        let reach_on = !self.reach.sla_policies.is_empty() || !self.reach.templates.is_empty();
        if self.reach.forward_http && !reach_on {
            problems.push(
                "reach.forward_http needs reach-out (an SLA policy or a template): only then is the replies topic read"
                    .to_owned(),
            );
        } else if self.reach.replies_topic.is_some() && !reach_on {
            problems.push(
                "reach.replies_topic needs reach-out (an SLA policy or a template): only then is the replies topic read"
                    .to_owned(),
            );
        }
        if self.compliance.request_sharing == StatePlace::Cql && self.store.pseudonym_key.is_none() {
            problems.push(
                "compliance.request_sharing = \"cql\" needs store.pseudonym_key, the same on every replica (a shared request finds its subjects by it)"
                    .to_owned(),
            );
        }
        if !(100..=600_000).contains(&self.compliance.request_refresh_ms) {
            problems.push("compliance.request_refresh_ms must be between 100 and 600000".to_owned());
        }
        if polling.coordination == Coordination::Cql && self.sinks.cql.is_none() {
            problems.push("polling.coordination = \"cql\" needs [sinks.cql] (the leases live there)".to_owned());
        }
        let refreshing = self.pollers.iter().any(|p| p.refresh_token.as_deref().is_some_and(|t| !t.is_empty()));
        let shared_kek = self.compliance.kek.is_some() || self.compliance.kek_file.is_some();
        if polling.coordination == Coordination::Cql && refreshing && !shared_kek {
            problems.push(
                "polling.coordination = \"cql\" with refresh tokens needs compliance.kek or kek_file: every replica must open the token grants the others seal".to_owned(),
            );
        }
        if !(1000..=300_000).contains(&polling.lease_ms) {
            problems.push("polling.lease_ms must be between 1000 and 300000".to_owned());
        }
        if polling.replica.as_ref().is_some_and(|r| {
            r.is_empty() || r.len() > 128 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }) {
            problems.push("polling.replica must be 1-128 of letters, digits, -, _ and .".to_owned());
        }
        let mut mailboxes = BTreeSet::new();
        for (i, mailbox) in self.mailboxes.iter().enumerate() {
            buyer_country_problem(&format!("mailboxes[{i}]"), &mailbox.buyer_country, &mut problems);
            let label = |s: &str| {
                !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
            };
            if !label(&mailbox.name) {
                problems.push(format!("mailboxes[{i}].name must be 1-128 of letters, digits, -, _, . and @"));
            } else if !mailboxes.insert(mailbox.name.as_str()) {
                problems.push(format!("mailboxes[{i}].name `{}` is used twice", mailbox.name));
            }
            if mailbox.host.trim().is_empty() || mailbox.port == 0 {
                problems.push(format!("mailboxes[{i}]: host must not be empty and port must not be 0"));
            }
            if !mailbox.tls && !is_loopback_host(&mailbox.host) {
                problems.push(format!(
                    "mailboxes[{i}]: tls = false sends the password in clear; allowed only for a loopback host, not `{}`",
                    mailbox.host
                ));
            }
            if mailbox.username.is_empty() || mailbox.password.is_empty() {
                problems.push(format!("mailboxes[{i}].username and password must not be empty"));
            }
            if mailbox.folder.is_empty() || mailbox.folder.contains(['"', '\\', '\r', '\n']) {
                problems.push(format!(
                    "mailboxes[{i}].folder must not be empty nor contain quotes, backslashes or line breaks"
                ));
            }
            if mailbox.interval_ms < 1000 {
                problems.push(format!("mailboxes[{i}].interval_ms must be at least 1000"));
            }
            if mailbox.first_read_days > 7300 {
                problems.push(format!("mailboxes[{i}].first_read_days must be at most 7300 (0: the whole folder)"));
            }
        }
        if self.spool.max_pending == 0 {
            problems.push("spool.max_pending must be at least 1".to_owned());
        }
        if self.auth.api_keys.is_empty() && !ingest.listen.ip().is_loopback() {
            problems.push(format!(
                "ingest.listen {} is not loopback: configure auth.api_keys (only a loopback gateway may run without keys)",
                ingest.listen
            ));
        }
        for (i, token) in self.admin.tokens.iter().enumerate() {
            if token.id.trim().is_empty() || token.token.len() < 16 {
                problems.push(format!("admin.tokens[{i}]: id must not be empty and token must be at least 16 bytes"));
            }
            for scope in token.scopes.iter().filter(|s| !ADMIN_SCOPES.contains(&s.as_str())) {
                problems.push(format!("admin.tokens[{i}]: scope `{scope}` is not one of {}", ADMIN_SCOPES.join(", ")));
            }
        }
        let mut ids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, key) in self.auth.api_keys.iter().enumerate() {
            if key.id.trim().is_empty() {
                problems.push(format!("auth.api_keys[{i}].id must not be empty"));
            } else if !ids.insert(key.id.as_str()) {
                problems.push(format!("auth.api_keys[{i}].id `{}` is used twice", key.id));
            }
            if key.key.len() < 16 {
                problems.push(format!("auth.api_keys[{i}].key must be at least 16 bytes"));
            } else if !keys.insert(key.key.as_str()) {
                problems.push(format!("auth.api_keys[{i}].key is the same as another key"));
            }
            if key.accounts.is_empty() {
                problems.push(format!("auth.api_keys[{i}].accounts must name at least one account or \"*\""));
            }
            if key.scopes.is_empty() {
                problems.push(format!("auth.api_keys[{i}].scopes must name at least one scope (or be left out: all)"));
            }
            for scope in key.scopes.iter().filter(|s| !API_KEY_SCOPES.contains(&s.as_str())) {
                problems
                    .push(format!("auth.api_keys[{i}]: scope `{scope}` is not one of {}", API_KEY_SCOPES.join(", ")));
            }
        }
        validate_compliance(&self.compliance, &mut problems);
        let polled: BTreeSet<&str> = self.pollers.iter().map(|p| p.connector.as_str()).collect();
        validate_reach(&self.reach, self.sinks.kafka.is_some(), &polled, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Checks `[compliance]` (pure: key files are read at start-up).
fn validate_compliance(compliance: &ComplianceConfig, problems: &mut Vec<String>) {
    use base64::Engine as _;
    if compliance.tenant.trim().is_empty() || compliance.tenant.len() > 128 {
        problems.push("compliance.tenant must be 1 to 128 bytes".to_owned());
    }
    match (&compliance.kek, &compliance.kek_file) {
        (Some(_), Some(_)) => problems.push("compliance: set kek or kek_file, not both".to_owned()),
        (Some(kek), None) => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(kek.trim());
            if decoded.map_or(true, |k| k.len() != 32) {
                problems.push("compliance.kek must be base64 of exactly 32 bytes".to_owned());
            }
        }
        _ => {}
    }
    if compliance.tree_head_interval_ms < 100 {
        problems.push("compliance.tree_head_interval_ms must be at least 100".to_owned());
    }
    if compliance.request_retention_days < 730 {
        problems.push("compliance.request_retention_days must be at least 730 (24 months)".to_owned());
    }
}

/// Checks plugins, chains and agents (pure: the modules themselves are checked when they load).
fn validate_reach(reach: &ReachConfig, kafka: bool, polled: &BTreeSet<&str>, problems: &mut Vec<String>) {
    if reach.replies_topic.is_some() && !kafka {
        problems.push("reach.replies_topic needs [sinks.kafka]".to_owned());
    }
    let calendars: BTreeSet<&str> = reach.calendars.iter().map(|c| c.id.as_str()).collect();
    for (i, calendar) in reach.calendars.iter().enumerate() {
        if let Err(err) = crate::reach::calendar::Calendar::from_config(calendar) {
            problems.push(format!("reach.calendars[{i}]: {err}"));
        }
    }
    if let Err(err) = parse_duration(&reach.ack_repeat_window) {
        problems.push(format!("reach.ack_repeat_window: {err}"));
    }
    let mut policies = BTreeSet::new();
    for (i, policy) in reach.sla_policies.iter().enumerate() {
        if !policies.insert(policy.id.as_str()) {
            problems.push(format!("reach.sla_policies[{i}]: id `{}` is used twice", policy.id));
        }
        match parse_duration(&policy.first_response) {
            Ok(d) if d.is_zero() => problems.push(format!("reach.sla_policies[{i}].first_response must be positive")),
            Ok(_) => {}
            Err(err) => problems.push(format!("reach.sla_policies[{i}].first_response: {err}")),
        }
        for (field, values) in [("reminders", &policy.reminders), ("escalate_after", &policy.escalate_after)] {
            for value in values {
                if let Err(err) = parse_duration(value) {
                    problems.push(format!("reach.sla_policies[{i}].{field}: {err}"));
                }
            }
        }
        if policy.escalate_after.len() > 2 {
            problems
                .push(format!("reach.sla_policies[{i}].escalate_after: at most two levels (team lead, supervisor)"));
        }
        if let Some(calendar) = &policy.calendar {
            if !calendars.contains(calendar.as_str()) {
                problems.push(format!("reach.sla_policies[{i}].calendar `{calendar}` is not in reach.calendars"));
            }
        }
    }
    for (i, rule) in reach.sla_rules.iter().enumerate() {
        if !policies.contains(rule.policy.as_str()) {
            problems.push(format!("reach.sla_rules[{i}].policy `{}` is not in reach.sla_policies", rule.policy));
        }
    }
    let mut targets = BTreeSet::new();
    for (i, target) in reach.alert_targets.iter().enumerate() {
        let label_ok = !target.id.is_empty()
            && target.id.len() <= 64
            && target.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !label_ok {
            problems.push(format!("reach.alert_targets[{i}].id must be 1-64 of letters, digits, - and _"));
        }
        if !targets.insert(target.id.as_str()) {
            problems.push(format!("reach.alert_targets[{i}]: id `{}` is used twice", target.id));
        }
        if target.kind == AlertKind::Email {
            let parsed = url_host(&target.url);
            let plain = target.url.starts_with("smtp://") && !target.url.contains("tls=required");
            match parsed {
                None => problems.push(format!("reach.alert_targets[{i}].url must be an smtp:// or smtps:// url")),
                Some(host) if plain && !is_loopback_host(&host) => problems.push(format!(
                    "reach.alert_targets[{i}]: smtp without TLS only to a loopback relay; use smtps:// or ?tls=required"
                )),
                Some(_) => {}
            }
            let address = |a: &str| a.parse::<lettre::message::Mailbox>().is_ok();
            if target.to.is_empty() || !target.to.iter().all(|a| address(a)) {
                problems.push(format!("reach.alert_targets[{i}].to must list e-mail addresses"));
            }
            if !target.from.as_deref().is_some_and(address) {
                problems.push(format!("reach.alert_targets[{i}].from must be an e-mail address"));
            }
        } else if !(target.url.starts_with("https://") || target.url.starts_with("http://")) {
            problems.push(format!("reach.alert_targets[{i}].url must be an http(s) url"));
        }
        if target.kind == AlertKind::Sms {
            let e164 = |n: &str| {
                n.strip_prefix('+')
                    .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
            };
            if !target
                .secret
                .as_deref()
                .is_some_and(|s| s.split_once(':').is_some_and(|(u, p)| !u.is_empty() && !p.is_empty()))
            {
                problems.push(format!(
                    "reach.alert_targets[{i}]: an sms target needs secret = \"<account sid>:<auth token>\""
                ));
            }
            if !target.from.as_deref().is_some_and(|f| e164(f) || f.starts_with("MG")) {
                problems.push(format!(
                    "reach.alert_targets[{i}].from must be an E.164 number (+...) or a messaging service sid"
                ));
            }
            if target.to.is_empty() {
                problems.push(format!(
                    "reach.alert_targets[{i}]: an sms target needs `to` numbers (for alerts `mentions` does not map)"
                ));
            }
            if !target.to.iter().chain(target.mentions.values()).all(|n| e164(n)) {
                problems.push(format!(
                    "reach.alert_targets[{i}]: sms numbers (`to`, `mentions`) must be E.164 (+4915112345678)"
                ));
            }
        }
        if target.kind == AlertKind::Webhook && target.secret.as_deref().is_none_or(|s| s.len() < 16) {
            problems.push(format!("reach.alert_targets[{i}]: a webhook target needs a secret of 16 bytes or more"));
        }
        if target.max_batch == 0 || target.max_batch > 100 {
            problems.push(format!("reach.alert_targets[{i}].max_batch must be between 1 and 100"));
        }
    }
    let mut variants = BTreeSet::new();
    for (i, template) in reach.templates.iter().enumerate() {
        if let Err(err) = crate::reach::ack::Template::parse(&template.body) {
            problems.push(format!("reach.templates[{i}].body: {err}"));
        }
        if let Some(Err(err)) = template.subject.as_deref().map(crate::reach::ack::Template::parse) {
            problems.push(format!("reach.templates[{i}].subject: {err}"));
        }
        if !variants.insert((template.id.as_str(), template.language.as_str(), template.account.as_deref())) {
            problems.push(format!(
                "reach.templates[{i}]: template `{}` has two variants for language `{}` and the same account",
                template.id, template.language
            ));
        }
    }
    let template_ids: BTreeSet<&str> = reach.templates.iter().map(|t| t.id.as_str()).collect();
    for id in &template_ids {
        let has_fallback =
            reach.templates.iter().any(|t| t.id == *id && t.language == reach.fallback_language && t.account.is_none());
        if !has_fallback {
            problems.push(format!(
                "reach.templates: template `{id}` needs a variant in the fallback language `{}` for every account",
                reach.fallback_language
            ));
        }
    }
    for (i, rule) in reach.ack_rules.iter().enumerate() {
        if !template_ids.contains(rule.template.as_str()) {
            problems.push(format!("reach.ack_rules[{i}].template `{}` is not in reach.templates", rule.template));
        }
    }
    if let Some(topic) = &reach.replies_topic {
        let legal = !topic.is_empty()
            && topic.len() <= 200
            && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !legal {
            problems.push(format!("reach.replies_topic `{topic}` is not a Kafka topic name"));
        }
    }
    if let Some(Err(err)) = reach.quiet_hours.as_deref().map(crate::reach::ack::QuietHours::parse) {
        problems.push(format!("reach.quiet_hours: {err}"));
    }
    for (i, sender) in reach.senders.iter().enumerate() {
        match sender {
            SenderConfig::Smtp { host, tls, from, per_second, .. } => {
                if *tls == SmtpTls::None && !is_loopback_host(host) {
                    problems.push(format!(
                        "reach.senders[{i}]: tls = \"none\" sends in clear; allowed only for a loopback relay, not `{host}`"
                    ));
                }
                if from.parse::<lettre::message::Mailbox>().is_err() {
                    problems.push(format!("reach.senders[{i}].from `{from}` is not an e-mail address"));
                }
                if !(*per_second > 0.0 && *per_second <= 10_000.0) {
                    problems.push(format!("reach.senders[{i}].per_second must be in (0, 10000]"));
                }
            }
            SenderConfig::Whatsapp { base_url, access_token, per_second, per_recipient_seconds } => {
                if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
                    problems.push(format!("reach.senders[{i}].base_url must be an http(s) url"));
                }
                if access_token.is_empty() {
                    problems.push(format!("reach.senders[{i}].access_token must not be empty"));
                }
                let rate_ok = *per_second > 0.0 && *per_second <= 10_000.0;
                let pause_ok = (0.0..=86_400.0).contains(per_recipient_seconds);
                if !rate_ok || !pause_ok {
                    problems.push(format!(
                        "reach.senders[{i}]: per_second must be in (0, 10000], per_recipient_seconds >= 0"
                    ));
                }
            }
            SenderConfig::Telegram { base_url, bot_tokens: tokens, per_second, per_recipient_seconds: pause } => {
                if !(0.0..=86_400.0).contains(pause) {
                    problems.push(format!("reach.senders[{i}].per_recipient_seconds must be between 0 and 86400"));
                }
                validate_chat_sender(i, base_url, tokens, *per_second, problems);
            }
            SenderConfig::Messenger { base_url, page_tokens: tokens, per_second, .. }
            | SenderConfig::Line { base_url, channel_tokens: tokens, per_second, .. } => {
                validate_chat_sender(i, base_url, tokens, *per_second, problems);
            }
            SenderConfig::Shopee {
                base_url,
                partner_id: key,
                partner_key: secret,
                shop_tokens: tokens,
                per_second,
            }
            | SenderConfig::TiktokShop {
                base_url,
                app_key: key,
                app_secret: secret,
                shop_tokens: tokens,
                per_second,
                ..
            } => {
                let pollers: &[&str] = if matches!(sender, SenderConfig::Shopee { .. }) {
                    &["shopee_chat"]
                } else {
                    &["tiktok_customer_service"]
                };
                validate_marketplace_sender(i, base_url, tokens, *per_second, pollers, polled, problems);
                if key.is_empty() || secret.is_empty() {
                    problems.push(format!("reach.senders[{i}]: the app's id and secret (partner_id/partner_key, app_key/app_secret) are required"));
                }
            }
            SenderConfig::Ebay { base_url, user_tokens: tokens, per_second } => {
                let pollers = ["ebay_member_messages", "ebay_post_order_inquiries"];
                validate_marketplace_sender(i, base_url, tokens, *per_second, &pollers, polled, problems);
            }
        }
    }
    for (i, team) in reach.teams.iter().enumerate() {
        for target in &team.alert_targets {
            if !targets.contains(target.as_str()) {
                problems.push(format!("reach.teams[{i}]: alert target `{target}` is not in reach.alert_targets"));
            }
        }
    }
}

/// The checks every chat sender shares: an http(s) base, a token per account, a sane rate.
fn validate_chat_sender(
    i: usize,
    base_url: &str,
    tokens: &std::collections::BTreeMap<String, String>,
    per_second: f64,
    problems: &mut Vec<String>,
) {
    if tokens.is_empty() || tokens.values().any(String::is_empty) {
        problems.push(format!("reach.senders[{i}]: a token for each account, none empty"));
    }
    validate_sender_endpoint(i, base_url, per_second, problems);
}

/// An http(s) base and a sane rate.
fn validate_sender_endpoint(i: usize, base_url: &str, per_second: f64, problems: &mut Vec<String>) {
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        problems.push(format!("reach.senders[{i}].base_url must be an http(s) url"));
    }
    if !(per_second > 0.0 && per_second <= 10_000.0) {
        problems.push(format!("reach.senders[{i}].per_second must be in (0, 10000]"));
    }
}

/// The checks of a marketplace sender: an http(s) base and a sane rate, as a chat sender's, and
/// tokens from its config or from pollers of its platform.
fn validate_marketplace_sender(
    i: usize,
    base_url: &str,
    tokens: &std::collections::BTreeMap<String, String>,
    per_second: f64,
    pollers: &[&str],
    polled: &BTreeSet<&str>,
    problems: &mut Vec<String>,
) {
    if tokens.values().any(String::is_empty) {
        problems.push(format!("reach.senders[{i}]: an empty token (leave the account out to use its poller's)"));
    }
    if tokens.is_empty() && !pollers.iter().any(|p| polled.contains(p)) {
        problems
            .push(format!("reach.senders[{i}]: no tokens, and no {} poller to take them from", pollers.join(" or ")));
    }
    validate_sender_endpoint(i, base_url, per_second, problems);
}

/// Checks a plugin's settings: how many, their keys and the size of their values.
pub(crate) fn validate_plugin_settings(at: &str, settings: &BTreeMap<String, toml::Value>, problems: &mut Vec<String>) {
    if settings.len() > MAX_PLUGIN_SETTINGS {
        problems.push(format!("{at}: at most {MAX_PLUGIN_SETTINGS} settings"));
    }
    let key_ok = |key: &str| {
        !key.is_empty()
            && key.len() <= 64
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    for (key, text) in plugin_setting_texts(settings) {
        if !key_ok(&key) {
            problems.push(format!("{at}: key `{}` must be 1-64 of A-Z, a-z, 0-9, _, . and -", key.escape_debug()));
        } else if text.len() > MAX_PLUGIN_SETTING_BYTES {
            problems.push(format!("{at}.{key} is longer than {MAX_PLUGIN_SETTING_BYTES} bytes"));
        }
    }
}

fn validate_routing(routing: &RoutingConfig, problems: &mut Vec<String>) {
    let label = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    let mut ids = BTreeSet::new();
    for (i, plugin) in routing.plugins.iter().enumerate() {
        if !label(&plugin.id) {
            problems.push(format!("routing.plugins[{i}].id must be 1-64 of a-z, 0-9, - and _"));
        } else if !ids.insert(plugin.id.as_str()) {
            problems.push(format!("routing.plugins[{i}].id `{}` is used twice", plugin.id));
        }
        if plugin.path.as_os_str().is_empty() {
            problems.push(format!("routing.plugins[{i}].path must not be empty"));
        }
        validate_plugin_settings(&format!("routing.plugins[{i}].settings"), &plugin.settings, problems);
        if let Some(shadow) = &plugin.shadow {
            if shadow.path.is_none() && shadow.settings.is_none() {
                problems.push(format!("routing.plugins[{i}].shadow needs a path or settings to try"));
            }
            if shadow.path.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
                problems.push(format!("routing.plugins[{i}].shadow.path must not be empty"));
            }
            if let Some(settings) = &shadow.settings {
                validate_plugin_settings(&format!("routing.plugins[{i}].shadow.settings"), settings, problems);
            }
        }
        let limits = &plugin.limits;
        // Results are returned as (pointer << 32 | length) in an i64: pointers stay below 2 GiB.
        if !(1024 * 1024..=2 * 1024 * 1024 * 1024).contains(&limits.max_memory_bytes) {
            problems.push(format!("routing.plugins[{i}].limits.max_memory_bytes must be between 1 MiB and 2 GiB"));
        }
        if limits.batch_timeout_ms == 0 || limits.record_timeout_us == 0 || limits.batch_timeout_ms > 60_000 {
            problems.push(format!(
                "routing.plugins[{i}].limits: batch_timeout_ms must be 1-60000 and record_timeout_us at least 1"
            ));
        }
        if limits.fuel_per_record == Some(0) || limits.max_output_bytes < 1024 || limits.quarantine_after_failures == 0
        {
            problems.push(format!(
                "routing.plugins[{i}].limits: fuel_per_record, quarantine_after_failures must be at least 1 and max_output_bytes at least 1024"
            ));
        }
    }
    for (i, chain) in routing.chains.iter().enumerate() {
        if let Some(channel) = &chain.channel {
            if channel.parse::<inquiry_connectors::Channel>().is_err() {
                problems.push(format!("routing.chains[{i}].channel `{channel}` is not a channel"));
            }
        }
        if chain.plugins.is_empty() {
            problems.push(format!("routing.chains[{i}].plugins must name at least one plugin"));
        }
        for id in chain.plugins.iter().filter(|id| !ids.contains(id.as_str())) {
            problems.push(format!("routing.chains[{i}] names plugin `{id}`, which is not in routing.plugins"));
        }
    }
    let mut agents = BTreeSet::new();
    for (i, agent) in routing.agents.iter().enumerate() {
        if agent.id.trim().is_empty() || agent.team.trim().is_empty() {
            problems.push(format!("routing.agents[{i}]: id and team must not be empty"));
        } else if !agents.insert(agent.id.as_str()) {
            problems.push(format!("routing.agents[{i}].id `{}` is used twice", agent.id));
        }
    }
}

/// Interpolates every string inside `value`.
fn interpolate_strings(value: &mut toml::Value, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) => *s = interpolate(s, env)?,
        toml::Value::Array(items) => items.iter_mut().try_for_each(|v| interpolate_strings(v, env))?,
        toml::Value::Table(table) => table.iter_mut().try_for_each(|(_, v)| interpolate_strings(v, env))?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${NAME}` with the value of NAME; `$$` is a literal `$`.
fn interpolate(text: &str, env: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or_else(|| ConfigError::MissingEnv(inner.chars().take(40).collect()))?;
            let name = &inner[..end];
            out.push_str(&env(name).ok_or_else(|| ConfigError::MissingEnv(name.to_owned()))?);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY_A").then(|| "0123456789abcdef0123".to_owned())
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = Config::from_toml_with_env("", env).unwrap();
        config.validate().unwrap();
        assert_eq!(config.ingest.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.ingest.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn env_interpolation_fills_secrets_and_reports_missing_ones() {
        let text = "[[auth.api_keys]]\nid = \"a\"\nkey = \"${KEY_A}\"\naccounts = [\"shop-1\"]\n";
        let config = Config::from_toml_with_env(text, env).unwrap();
        assert_eq!(config.auth.api_keys[0].key, "0123456789abcdef0123");
        let err = Config::from_toml_with_env("[store]\npseudonym_key = \"${NOPE}\"", env).unwrap_err();
        assert_eq!(err.to_string(), "environment variable `NOPE` is not set (referenced as ${NOPE})");
        assert_eq!(interpolate("a$$b$c", &env).unwrap(), "a$b$c");
        let commented = "# key = \"${NOPE}\"\n[log]\nlevel = \"info\"";
        assert!(Config::from_toml_with_env(commented, env).is_ok(), "comments are not interpolated");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Config::from_toml_with_env("[ingest]\nlisten_addr = \"127.0.0.1:1\"", env).unwrap_err();
        assert!(err.to_string().contains("unknown field `listen_addr`"), "{err}");
    }

    #[test]
    fn public_listener_without_keys_is_refused() {
        let config = Config::from_toml_with_env("[ingest]\nlisten = \"0.0.0.0:8080\"", env).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("only a loopback gateway may run without keys"), "{err}");
    }

    #[test]
    fn peers_need_the_shared_key_urls_and_a_timeout_within_the_requests() {
        let peers = "[cluster]\npeers = [\"http://gateway-pods:8080\", \"ftp://x:1\"]\npeer_timeout_ms = 10000\n";
        let err = Config::from_toml_with_env(peers, env).unwrap().validate().unwrap_err().to_string();
        for expected in [
            "cluster.peers needs store.pseudonym_key",
            "cluster.peers `ftp://x:1` must be an http:// or https:// URL",
            "cluster.peer_timeout_ms must be at least 100 and less than ingest.request_timeout_ms (10000)",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
        let good = "[store]\npseudonym_key = \"pseudonym-key-shared-by-the-replicas-01\"\n\
                    [cluster]\npeers = [\"http://gateway-pods:8080\"]\n";
        Config::from_toml_with_env(good, env).unwrap().validate().unwrap();
    }

    #[test]
    fn a_buyer_country_must_be_a_country_code() {
        let hook = |country: &str| {
            format!("[[webhooks]]\nconnector = \"line\"\naccount = \"oa\"\nsecret = \"line-secret-01\"\nbuyer_country = \"{country}\"\n")
        };
        Config::from_toml_with_env(&hook("TH"), env).unwrap().validate().unwrap();
        for bad in ["th", "THA", "XX", ""] {
            let err = Config::from_toml_with_env(&hook(bad), env).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(&format!("webhooks[0].buyer_country `{bad}` is not an ISO 3166-1")), "{err}");
        }
        let poller = "[[pollers]]\nconnector = \"messenger_conversations\"\naccount = \"p\"\naccess_token = \"t\"\n\
                      base_url = \"https://graph.facebook.com\"\nbuyer_country = \"Germany\"\n";
        let err = Config::from_toml_with_env(poller, env).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("pollers[0].buyer_country `Germany`"), "{err}");
    }

    #[test]
    fn a_value_under_the_wrong_key_is_not_quoted_in_the_error() {
        let env = |name: &str| (name == "API_KEY").then(|| "sk-live-0123456789".to_owned());
        let err = Config::from_toml_with_env("[auth]\napi_keys = \"${API_KEY}\"\n", env).unwrap_err().to_string();
        assert!(err.contains("invalid type: string, expected") && err.contains("api_keys"), "{err}");
        assert!(!err.contains("sk-live"), "{err}");
        let err = Config::from_toml_with_env("[ingest]\nmax_body_bytes = \"4930901820\"\n", env).unwrap_err();
        assert!(!err.to_string().contains("4930901820"), "{err}");
        assert_eq!(
            without_found_values(
                "invalid value: integer `70000`, expected u16 and invalid type: map, expected a string"
            ),
            "invalid value: integer, expected u16 and invalid type: map, expected a string"
        );
    }

    #[test]
    fn ebay_signing_keys_are_fetched_over_https_or_from_loopback_only() {
        let hook = |url: &str| {
            format!(
                "[[webhooks]]\nconnector = \"ebay\"\naccount = \"seller-1\"\nendpoint_url = \"https://gw.example/webhooks/ebay/seller-1\"\n\
                 verify_token = \"verify-token-0123456789abcdef0123\"\napp_token = \"t\"\npublic_key_url = \"{url}\"\n"
            )
        };
        let problems = |url: &str| match Config::from_toml_with_env(&hook(url), env).unwrap().validate() {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        };
        assert_eq!(problems("https://api.ebay.com/commerce/notification/v1/public_key/{kid}"), "");
        assert_eq!(problems("http://127.0.0.1:8089/public_key/{kid}"), "");
        let clear = problems("http://keys.example.com/public_key/{kid}");
        assert!(
            clear.contains("public_key_url `http://keys.example.com/public_key/{kid}` must be https://"),
            "{clear}"
        );
        assert!(problems("keys.example.com/{kid}").contains("must be https://"));
    }

    #[test]
    fn only_connectors_whose_deliveries_name_their_shop_take_more_accounts() {
        let hook = |connector: &str, accounts: &str| {
            format!(
                "[[webhooks]]\nconnector = \"{connector}\"\naccount = \"1001\"\nsecret = \"push-key-0001\"\n\
                     endpoint_url = \"https://gw.example/webhooks/x/1001\"\napp_key = \"k\"\naccounts = {accounts}\n"
            )
        };
        for connector in ["shopee", "tiktok_shop"] {
            Config::from_toml_with_env(&hook(connector, "[\"1002\"]"), env).unwrap().validate().unwrap();
        }
        let err = Config::from_toml_with_env(&hook("line", "[\"1002\"]"), env).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("webhooks[0].accounts: line deliveries name no account"), "{err}");
        let err = Config::from_toml_with_env(&hook("shopee", "[\"a/b\"]"), env).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("webhooks[0].accounts: each must be 1 to 128 bytes"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[ingest]\nmax_body_bytes = 10\n[pipeline]\nqueue_capacity = 0\n[[auth.api_keys]]\nid = \"a\"\nkey = \"short\"\naccounts = []\n\
                    [[auth.api_keys]]\nid = \"b\"\nkey = \"long-enough-key-0001\"\naccounts = [\"*\"]\nscopes = [\"inquiries:delete\"]\n\
                    [[auth.api_keys]]\nid = \"c\"\nkey = \"long-enough-key-0002\"\naccounts = [\"*\"]\nscopes = []\n";
        let err = Config::from_toml_with_env(text, env).unwrap().validate().unwrap_err().to_string();
        for expected in [
            "ingest.max_body_bytes",
            "pipeline.queue_capacity",
            "api_keys[0].key",
            "api_keys[0].accounts",
            "auth.api_keys[1]: scope `inquiries:delete` is not one of inquiries:write, inquiries:read, replies:write, conversions:write",
            "auth.api_keys[2].scopes must name at least one scope",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
        let unscoped = Config::from_toml_with_env(
            "[[auth.api_keys]]\nid = \"a\"\nkey = \"long-enough-key-0001\"\naccounts = [\"*\"]\n",
            env,
        )
        .unwrap();
        assert_eq!(unscoped.auth.api_keys[0].scopes, API_KEY_SCOPES, "a key without scopes may do everything");
    }

    #[test]
    fn routing_plugins_chains_and_admin_tokens_are_checked() {
        let text = r#"
[[routing.plugins]]
id = "Rules!"
path = "a.wasm"
[routing.plugins.limits]
batch_timeout_ms = 0
[[routing.plugins]]
id = "ok"
path = "b.wasm"
[[routing.plugins]]
id = "ok"
path = "c.wasm"
[[routing.chains]]
channel = "myspace"
plugins = ["ok", "missing"]
[[admin.tokens]]
id = "ops"
token = "short"
scopes = ["plugins:read", "root"]
"#;
        let err = Config::from_toml_with_env(text, env).unwrap().validate().unwrap_err().to_string();
        for expected in [
            "routing.plugins[0].id must be",
            "routing.plugins[0].limits: batch_timeout_ms",
            "routing.plugins[2].id `ok` is used twice",
            "routing.chains[0].channel `myspace`",
            "names plugin `missing`",
            "admin.tokens[0]: id must not be empty and token must be at least 16 bytes",
            "scope `root`",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
        let unknown = Config::from_toml_with_env(
            "[[routing.plugins]]\nid = \"a\"\npath = \"a.wasm\"\ncapabilities = [\"network\"]\n",
            env,
        );
        assert!(unknown.unwrap_err().to_string().contains("unknown variant `network`"));
    }

    #[test]
    fn plugin_settings_are_text_for_the_plugin_and_are_checked() {
        let text = r#"
[[routing.plugins]]
id = "rules"
path = "a.wasm"
[routing.plugins.settings]
default_team = "global-sales"
vip_min_order = 500
discount = 0.5
strict = true
countries = ["BR", "AR"]
teams = { BR = "latam" }
[routing.plugins.shadow.settings]
default_team = "latam-sales"
"#;
        let config = Config::from_toml_with_env(text, env).unwrap();
        config.validate().unwrap();
        let plugin = &config.routing.plugins[0];
        let texts = plugin_setting_texts(&plugin.settings);
        let expected = [
            ("countries", r#"["BR","AR"]"#),
            ("default_team", "global-sales"),
            ("discount", "0.5"),
            ("strict", "true"),
            ("teams", r#"{"BR":"latam"}"#),
            ("vip_min_order", "500"),
        ];
        let got: Vec<(&str, &str)> = texts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, expected, "sorted by key; strings as they are, the rest as JSON");
        let shadow = plugin.shadow.as_ref().unwrap();
        assert_eq!((shadow.path.as_ref(), shadow.settings.as_ref().map(|s| s.len())), (None, Some(1)));

        let long = "x".repeat(MAX_PLUGIN_SETTING_BYTES + 1);
        let bad = format!(
            "[[routing.plugins]]\nid = \"a\"\npath = \"a.wasm\"\nshadow = {{}}\n[routing.plugins.settings]\n\"has space\" = 1\nlong = \"{long}\"\n"
        );
        let err = Config::from_toml_with_env(&bad, env).unwrap().validate().unwrap_err().to_string();
        for expected in [
            "routing.plugins[0].settings: key `has space` must be 1-64 of",
            "routing.plugins[0].settings.long is longer than 16384 bytes",
            "routing.plugins[0].shadow needs a path or settings to try",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let text = "[store]\npseudonym_key = \"${KEY_A}${KEY_A}\"\n[[auth.api_keys]]\nid = \"a\"\nkey = \"${KEY_A}\"\naccounts = [\"*\"]\n";
        let config = Config::from_toml_with_env(text, env).unwrap();
        assert!(!format!("{config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn mailboxes_have_defaults_and_are_checked() {
        let env = |name: &str| (name == "IMAP_PASSWORD").then(|| "s3cret-imap-pass".to_owned());
        let text = "[[mailboxes]]\nname = \"support\"\nhost = \"imap.example.com\"\nusername = \"support@example.com\"\npassword = \"${IMAP_PASSWORD}\"\n";
        let config = Config::from_toml_with_env(text, env).unwrap();
        config.validate().unwrap();
        let mailbox = &config.mailboxes[0];
        assert_eq!(
            (mailbox.port, mailbox.tls, mailbox.folder.as_str(), mailbox.interval_ms),
            (993, true, "INBOX", 60_000)
        );
        assert_eq!(mailbox.password, "s3cret-imap-pass");
        assert!(!format!("{config:?}").contains("s3cret"), "the password is not in Debug output");

        let text = "[[mailboxes]]\nname = \"a b\"\nhost = \"imap.example.com\"\ntls = false\nusername = \"u\"\npassword = \"\"\nfolder = \"In\\\"box\"\ninterval_ms = 10\n\
                    [[mailboxes]]\nname = \"t\"\nhost = \"127.0.0.1\"\nport = 31143\ntls = false\nusername = \"u\"\npassword = \"p\"\n";
        let err = Config::from_toml_with_env(text, env).unwrap().validate().unwrap_err().to_string();
        for expected in [
            "mailboxes[0].name must be",
            "mailboxes[0]: tls = false sends the password in clear; allowed only for a loopback host, not `imap.example.com`",
            "mailboxes[0].username and password must not be empty",
            "mailboxes[0].folder must not",
            "mailboxes[0].interval_ms must be at least 1000",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
        assert!(!err.contains("mailboxes[1]"), "plaintext on loopback is allowed: {err}");
    }

    #[test]
    fn check_refuses_eu_data_for_a_sink_outside_the_eu_and_a_sink_without_a_location() {
        let problems = |text: &str| match Config::from_toml(text).unwrap().validate() {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        };
        let outside = problems("[sinks.kafka]\nlocation = \"other\"\n");
        assert!(outside.contains("runs outside the EU") && outside.contains("sinks.kafka"), "{outside}");
        assert_eq!(problems("[sinks.kafka]\nlocation = \"other\"\nregions = [\"other\"]\n"), "");
        assert_eq!(problems("[sinks.cql]\nlocation = \"eu\"\n"), "");
        assert!(problems("[sinks.cql]\n").contains("sinks.cql.location must say where the cluster runs"));
        // A Kafka cluster per region: each checked like the main one, under its own name.
        let main = "[sinks.kafka]\nlocation = \"eu\"\nregions = [\"eu\"]\n";
        let us =
            "[sinks.kafka_regional.us]\nbrokers = \"kafka-us:9092\"\nlocation = \"other\"\nregions = [\"other\"]\n";
        assert_eq!(problems(&format!("{main}{us}")), "");
        assert!(problems(us).contains("sinks.kafka_regional needs [sinks.kafka]"));
        let leaky = us.replace("regions = [\"other\"]", "regions = [\"eu\", \"other\"]");
        let leaky = problems(&format!("{main}{leaky}"));
        assert!(leaky.contains("sinks.kafka_regional.us runs outside the EU"), "{leaky}");
        let bad = problems(&format!("{main}[sinks.kafka_regional.US_1]\nlocation = \"eu\"\nbatch_size = 0\n"));
        assert!(bad.contains("sinks.kafka_regional.US_1: a cluster's name is 1 to 16"), "{bad}");
        assert!(bad.contains("sinks.kafka_regional.US_1.batch_size must be at least 1"), "{bad}");
        // And a CQL cluster per region, the same way.
        let cql = "[sinks.cql]\nlocation = \"eu\"\nregions = [\"eu\"]\n";
        let cql_us = "[sinks.cql_regional.us]\ncontact_points = [\"cql-us:9042\"]\nlocation = \"other\"\nregions = [\"other\"]\n";
        assert_eq!(problems(&format!("{cql}{cql_us}")), "");
        assert!(problems(cql_us).contains("sinks.cql_regional needs [sinks.cql]"));
        let twice = problems(&format!("{cql}{}", cql_us.replace("cql-us:9042", "127.0.0.1")));
        assert!(twice.contains("they would write to the same tables"), "{twice}");
        let other_keyspace =
            cql_us.replace("location", "keyspace = \"us\"\nlocation").replace("cql-us:9042", "127.0.0.1");
        assert_eq!(problems(&format!("{cql}{other_keyspace}")), "");
        let bad = problems(&format!("{cql}{}", cql_us.replace("location", "consistency = \"most\"\nlocation")));
        assert!(bad.contains("sinks.cql_regional.us.consistency `most`"), "{bad}");
        let same = problems(&format!("{main}[sinks.kafka_regional.eu2]\nlocation = \"eu\"\n"));
        assert!(same.contains("they would write to the same topics"), "{same}");
        let oauth = problems(&format!(
            "{main}{us}[sinks.kafka_regional.us.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\
             \"sasl.mechanisms\" = \"OAUTHBEARER\"\n"
        ));
        assert!(oauth.contains("needs [sinks.kafka_regional.us.oauth]"), "{oauth}");
        assert!(problems("[retention]\ninquiries_days = 10\nkafka_feed_days = 20\n").contains("kafka_feed_days"));
    }

    #[test]
    fn cluster_security_settings_are_checked_and_their_secrets_never_printed() {
        let problems = |text: &str| match Config::from_toml(text).unwrap().validate() {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        };
        let kafka = |brokers: &str, properties: &str| {
            problems(&format!(
                "[sinks.kafka]\nbrokers = \"{brokers}\"\nlocation = \"eu\"\n[sinks.kafka.properties]\n{properties}"
            ))
        };
        let scram = "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
                     \"sasl.username\" = \"gw\"\n\"sasl.password\" = \"s3cret-kafka\"\n";
        assert_eq!(kafka("kafka-1.example.com:9094,kafka-2.example.com:9094", scram), "");
        assert!(kafka("k:9092", "\"security.protocol\" = \"tls\"\n").contains("security.protocol `tls`"));
        let no_mechanism = kafka("k:9092", "\"security.protocol\" = \"sasl_ssl\"\n");
        assert!(no_mechanism.contains("needs sasl.mechanisms"), "{no_mechanism}");
        let gssapi = kafka("k:9092", "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"GSSAPI\"\n");
        assert!(gssapi.contains("`GSSAPI` is not built in"), "{gssapi}");
        let no_login = kafka("k:9092", "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n");
        assert!(no_login.contains("needs sasl.username and sasl.password"), "{no_login}");
        let plain = "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
                     \"sasl.username\" = \"gw\"\n\"sasl.password\" = \"pw\"\n";
        assert!(kafka("kafka.example.com:9092", plain).contains("sends the password in clear"));
        assert!(kafka("127.0.0.1:9092", plain).contains("in clear"), "advertised brokers may be anywhere");
        // OAUTHBEARER: tokens from the identity provider of [sinks.kafka.oauth], nowhere else.
        let bearer = "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"OAUTHBEARER\"\n";
        let no_idp = kafka("k:9092", bearer);
        assert!(no_idp.contains("OAUTHBEARER needs [sinks.kafka.oauth]"), "{no_idp}");
        let with_idp = |token_url: &str, properties: &str| {
            kafka(
                "k:9092",
                &format!(
                    "{properties}[sinks.kafka.oauth]\ntoken_url = \"{token_url}\"\nclient_id = \"gw\"\n\
                     client_secret = \"s3cret-idp\"\nscope = \"kafka\"\n"
                ),
            )
        };
        assert_eq!(with_idp("https://idp.example.com/oauth2/token", bearer), "");
        assert_eq!(with_idp("http://127.0.0.1:8081/token", bearer), "");
        let clear = with_idp("http://idp.example.com/token", bearer);
        assert!(clear.contains("token_url must be https://") && !clear.contains("s3cret-idp"), "{clear}");
        assert!(with_idp("idp.example.com", bearer).contains("is not an http(s) URL"));
        let unused = with_idp("https://idp.example.com/token", scram);
        assert!(unused.contains("sinks.kafka.oauth is used only with"), "{unused}");
        let oidc =
            with_idp("https://idp.example.com/token", &format!("{bearer}\"sasl.oauthbearer.method\" = \"oidc\"\n"));
        assert!(oidc.contains("may not set `sasl.oauthbearer.method`"), "{oidc}");
        let unsecured = format!("{bearer}\"enable.sasl.oauthbearer.unsecure.jwt\" = \"true\"\n");
        assert!(with_idp("https://idp.example.com/token", &unsecured).contains("may not set `enable.sasl.oauthbearer"));
        let login = with_idp("https://gw:s3cret-url@idp.example.com/token", bearer);
        assert!(login.contains("must not carry a login"), "{login}");
        // librdkafka compares mechanism names exactly.
        let lower = with_idp("https://idp.example.com/token", &bearer.replace("OAUTHBEARER", "oauthbearer"));
        assert!(lower.contains("`oauthbearer` must be written `OAUTHBEARER`"), "{lower}");
        let in_clear = "\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"OAUTHBEARER\"\n";
        assert!(with_idp("https://idp.example.com/token", in_clear).contains("bearer token in clear"));
        let config = Config::from_toml(
            "[sinks.kafka]\nlocation = \"eu\"\n[sinks.kafka.oauth]\ntoken_url = \"https://idp\"\nclient_id = \"gw\"\n\
             client_secret = \"s3cret-idp\"\n",
        )
        .unwrap();
        let printed = format!("{:?}", config.sinks.kafka);
        assert!(printed.contains("client_id") && !printed.contains("s3cret-idp"), "{printed}");
        // librdkafka's own checks, without the value: a misspelled secret, a refused value.
        let typo = kafka("k:9092", "\"sasl.passwd\" = \"s3cret-typo\"\n");
        assert!(typo.contains("`sasl.passwd`") && !typo.contains("s3cret-typo"), "{typo}");
        let refused = kafka("k:9092", "\"ssl.key.password\" = \"s3cret-x\"\n\"compression.type\" = \"s3cret-codec\"\n");
        assert!(refused.contains("`compression.type`") && !refused.contains("s3cret"), "{refused}");
        let unverified = "\"security.protocol\" = \"ssl\"\n\"enable.ssl.certificate.verification\" = \"false\"\n";
        assert!(kafka("kafka.example.com:9093", unverified).contains("TLS verification is switched off"));
        assert_eq!(kafka("127.0.0.1:9093", unverified), "", "a loopback test broker may skip it");

        let cql = |points: &str, extra: &str| {
            problems(&format!("[sinks.cql]\ncontact_points = [{points}]\nlocation = \"eu\"\n{extra}"))
        };
        let login = "username = \"gw\"\npassword = \"s3cret-cql\"\n";
        assert!(cql("\"10.0.0.5:9042\"", login).contains("sent in clear"), "a password needs TLS off loopback");
        assert_eq!(cql("\"10.0.0.5:9042\"", &format!("{login}[sinks.cql.tls]\nca_file = \"/etc/ca.pem\"\n")), "");
        assert_eq!(cql("\"127.0.0.1:9042\"", login), "", "loopback without TLS");
        assert!(cql("\"127.0.0.1:9042\"", "username = \"gw\"\n").contains("username and password go together"));
        let half = cql("\"127.0.0.1:9042\"", "[sinks.cql.tls]\ncert_file = \"/etc/client.pem\"\n");
        assert!(half.contains("cert_file and key_file go together"), "{half}");

        let text = format!(
            "[sinks.kafka]\nlocation = \"eu\"\n[sinks.kafka.properties]\n{scram}\"ssl.key.password\" = \"s3cret-key\"\n\
             [sinks.cql]\nlocation = \"eu\"\n{login}"
        );
        let printed = format!("{:?}", Config::from_toml(&text).unwrap());
        for secret in ["s3cret-kafka", "s3cret-key", "s3cret-cql"] {
            assert!(!printed.contains(secret), "{secret} is printed: {printed}");
        }
        assert!(printed.contains("SCRAM-SHA-512") && printed.contains("\"gw\""), "the rest is shown: {printed}");
    }

    #[test]
    fn cql_coordination_needs_the_cql_store_a_sane_lease_and_a_plain_replica_name() {
        let problems = |text: &str| match Config::from_toml(text).unwrap().validate() {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        };
        let err = problems(
            "[polling]\ncoordination = \"cql\"\nlease_ms = 100\nreplica = \"a b\"\n[routing]\nagent_state = \"cql\"\nagent_refresh_ms = 10\n",
        );
        for expected in [
            "routing.agent_state = \"cql\" needs [sinks.cql]",
            "routing.agent_refresh_ms must be between 100 and 60000",
            "polling.coordination = \"cql\" needs [sinks.cql]",
            "polling.lease_ms must be between 1000 and 300000",
            "polling.replica must be",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
        let shared = "[polling]\ncoordination = \"cql\"\nreplica = \"gateway-0\"\n[sinks.cql]\nlocation = \"eu\"\n";
        assert_eq!(problems(shared), "");
        assert_eq!(problems(&format!("{shared}[routing]\nagent_state = \"cql\"\n")), "");
        let err = problems(
            "[compliance]\nrequest_sharing = \"cql\"\nrequest_refresh_ms = 50\n[reach]\nforward_http = true\n",
        );
        for expected in [
            "reach.forward_http needs reach.replies_topic and store.pseudonym_key",
            "compliance.request_sharing = \"cql\" needs [sinks.cql]",
            "compliance.request_sharing = \"cql\" needs store.pseudonym_key",
            "compliance.request_refresh_ms must be between 100 and 600000",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
        let key = "[store]\npseudonym_key = \"0123456789abcdef0123456789abcdef\"\n";
        assert_eq!(problems(&format!("{shared}{key}[compliance]\nrequest_sharing = \"cql\"\n")), "");
        // The shared requests name EU subjects: their table must be in the EU.
        let outside = format!(
            "{key}[sinks.cql]\nlocation = \"other\"\nregions = [\"other\"]\n[compliance]\nrequest_sharing = \"cql\"\n"
        );
        assert!(problems(&outside).contains("needs [sinks.cql] in the EU"), "{}", problems(&outside));
        // Forwarded replies and conversions of EU inquiries must not leave the EU.
        let abroad = format!("{key}[sinks.kafka]\nlocation = \"other\"\nregions = [\"other\"]\n[reach]\nforward_http = true\nreplies_topic = \"r\"\n");
        assert!(
            problems(&abroad).contains("reach.forward_http needs [sinks.kafka] in the EU"),
            "{}",
            problems(&abroad)
        );
        // A replies topic is read only while reach-out runs.
        let kafka = "[sinks.kafka]\nlocation = \"eu\"\n[reach]\nreplies_topic = \"crm.replies.v1\"\n";
        assert!(problems(kafka).contains("reach.replies_topic needs reach-out"), "{}", problems(kafka));
        assert_eq!(problems(&format!("{kafka}[[reach.sla_policies]]\nid = \"day\"\nfirst_response = \"24h\"\n")), "");
        let refreshing = "[[pollers]]\nconnector = \"etsy_receipts\"\naccount = \"1\"\naccess_token = \"\"\nrefresh_token = \"r\"\napp_key = \"k\"\nbase_url = \"https://openapi.etsy.com\"\n";
        let err = problems(&format!("{shared}{refreshing}"));
        assert!(err.contains("with refresh tokens needs compliance.kek"), "{err}");
        assert_eq!(
            problems(&format!(
                "{shared}[compliance]\nkek = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n{refreshing}"
            )),
            ""
        );
        assert!(Config::from_toml("[polling]\ncoordination = \"zookeeper\"\n").is_err(), "unknown coordination");
    }

    #[test]
    fn reach_checks_durations_references_calendars_and_targets() {
        let problems = |text: &str| match Config::from_toml(text).unwrap().validate() {
            Ok(()) => String::new(),
            Err(err) => err.to_string(),
        };
        let text = r#"
            [[reach.sla_policies]]
            id = "p"
            first_response = "soon"
            reminders = ["1 fortnight"]
            calendar = "nowhere"
            escalate_after = ["1h", "2h", "3h"]
            [[reach.sla_rules]]
            policy = "missing"
            [[reach.calendars]]
            id = "c"
            time_zone = "Europe/Nowhere"
            [reach.calendars.hours]
            mon = ["09:00-17:00"]
            [[reach.teams]]
            queue = "q"
            alert_targets = ["ghost"]
            [[reach.alert_targets]]
            id = "hook"
            kind = "webhook"
            url = "ftp://example.com"
            secret = "short"
            [[reach.alert_targets]]
            id = "mail"
            kind = "email"
            url = "smtp://user:pass@smtp.example.com:587"
            to = ["not an address"]
            [[reach.alert_targets]]
            id = "sms"
            kind = "sms"
            url = "https://api.twilio.com/2010-04-01/Accounts/AC01/Messages.json"
            secret = "only-a-token"
            from = "015112345678"
            to = ["+49 151 1234"]
            [[reach.alert_targets]]
            id = "sms-nobody"
            kind = "sms"
            url = "https://api.twilio.com/2010-04-01/Accounts/AC01/Messages.json"
            secret = "AC01:token"
            from = "+15005550006"
        "#;
        let err = problems(text);
        for expected in [
            "reach.sla_policies[0].first_response: `soon` is not a duration",
            "reach.sla_policies[0].reminders: `1 fortnight` is not a duration",
            "reach.sla_policies[0].escalate_after: at most two levels",
            "reach.sla_policies[0].calendar `nowhere` is not in reach.calendars",
            "reach.sla_rules[0].policy `missing` is not in reach.sla_policies",
            "reach.calendars[0]: time_zone `Europe/Nowhere` is not an IANA time zone",
            "reach.teams[0]: alert target `ghost` is not in reach.alert_targets",
            "reach.alert_targets[0].url must be an http(s) url",
            "reach.alert_targets[0]: a webhook target needs a secret of 16 bytes or more",
            "reach.alert_targets[1]: smtp without TLS only to a loopback relay",
            "reach.alert_targets[1].to must list e-mail addresses",
            "reach.alert_targets[1].from must be an e-mail address",
            "reach.alert_targets[2]: an sms target needs secret = \"<account sid>:<auth token>\"",
            "reach.alert_targets[2].from must be an E.164 number",
            "reach.alert_targets[2]: sms numbers (`to`, `mentions`) must be E.164",
            "reach.alert_targets[3]: an sms target needs `to` numbers",
        ] {
            assert!(err.contains(expected), "missing {expected} in {err}");
        }
    }
}
