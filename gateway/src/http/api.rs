//! The ingest API: `POST /v1/inquiries`, `POST /v1/inquiries/batch`, `GET /v1/inquiries/{id}`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use inquiry_connectors::{generic, Channel, NormalizeContext};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::auth::{Authenticator, Grant};
use super::error::{json_response, ApiError, LineError};
use crate::compliance::audit::AuditEvent;
use crate::conversions::{Conversion, ReportError, Reported};
use crate::pipeline::{AckStatus, Pipeline, StoredInquiry, Submission, SubmitError};
use crate::store::Store;
use crate::telemetry::{self, Hop};

/// Longest Idempotency-Key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What the ingest handlers share.
pub struct ApiState {
    /// The pipeline inquiries are submitted to.
    pub pipeline: Pipeline,
    /// The store, for reads.
    pub store: Store,
    /// API keys.
    pub auth: Authenticator,
    /// Data subject requests (Shopify's compliance webhooks create them).
    pub requests: Arc<crate::compliance::requests::SubjectRequests>,
    /// Data subjects: personal data is sealed for its subject before it is queued.
    pub subjects: std::sync::Arc<crate::compliance::subjects::Subjects>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Most lines in a batch.
    pub max_batch_lines: usize,
    /// Configured webhook endpoints by (connector, account); replaced on reload (SIGHUP).
    pub webhooks: std::sync::RwLock<WebhookEndpoints>,
    /// Platform signing keys fetched by id (eBay), cached an hour.
    pub public_keys: super::public_keys::PublicKeys,
    /// Signed webhook tokens already used (Mailgun), refused a second time.
    pub replays: super::webhooks::ReplayGuard,
    /// Reach-out (first-response SLAs), when configured.
    pub reach: Option<Arc<crate::reach::Reach>>,
    /// Where a reply or conversion report to an inquiry this replica does not hold goes (the
    /// replies topic, read by every replica) and the key that signs it (`reach.forward_http`).
    pub forward_replies: Option<(Arc<crate::sinks::kafka::KafkaSink>, Arc<crate::reach::replies::ForwardKey>)>,
    /// The other replicas, asked for an inquiry this one does not hold (`[cluster] peers`).
    pub peers: Option<super::peers::Peers>,
    /// Checks the requests of other replicas (every replica checks them, with or without peers).
    pub peer_key: Arc<super::peers::PeerKey>,
    /// The accounts the pollers read, by channel (`ebay` → seller accounts): a platform-wide
    /// account deletion reaches the buyer's data under every one of them.
    pub polled_accounts: std::sync::RwLock<PolledAccounts>,
}

/// Webhook endpoints by (connector, account).
pub type WebhookEndpoints = std::collections::HashMap<(String, String), crate::config::WebhookConfig>;

/// The accounts pollers read, by channel.
pub type PolledAccounts = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The accounts `pollers` read, by channel.
pub fn polled_accounts(pollers: &[crate::config::PollerConfig]) -> PolledAccounts {
    let mut accounts = PolledAccounts::new();
    for poller in pollers {
        if let Some(connector) = inquiry_connectors::poll::find(&poller.connector) {
            accounts.entry(connector.channel().as_str().to_owned()).or_default().insert(poller.account.clone());
        }
    }
    accounts
}

/// The endpoints of `config`'s `[[webhooks]]`.
pub fn webhook_endpoints(config: &[crate::config::WebhookConfig]) -> WebhookEndpoints {
    config.iter().map(|w| ((w.connector.clone(), w.account.clone()), w.clone())).collect()
}

impl ApiState {
    /// Every account of `channel` the gateway is configured for: its webhook endpoints (with
    /// their `accounts`) and its pollers.
    pub fn accounts_of(&self, channel: inquiry_connectors::Channel) -> std::collections::BTreeSet<String> {
        let polled = self.polled_accounts.read().expect("polled accounts lock");
        let mut accounts = polled.get(channel.as_str()).cloned().unwrap_or_default();
        drop(polled);
        for endpoint in self.webhooks.read().expect("webhooks lock").values() {
            if inquiry_connectors::webhook::find(&endpoint.connector).is_some_and(|hook| hook.channel() == channel) {
                accounts.insert(endpoint.account.clone());
                accounts.extend(endpoint.accounts.iter().cloned());
            }
        }
        accounts
    }

    /// The configured webhook endpoint of (`connector`, `account`), as configured now.
    pub fn webhook(&self, connector: &str, account: &str) -> Option<crate::config::WebhookConfig> {
        self.webhooks.read().expect("webhooks lock").get(&(connector.to_owned(), account.to_owned())).cloned()
    }
}

/// Answers one ingest request; never fails (errors become 4xx/5xx responses).
pub async fn handle(state: Arc<ApiState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let traceparent = super::traceparent_id(req.headers());
    let trace_id = traceparent.clone().unwrap_or_else(super::new_trace_id);
    let (method, full_path, source) = (req.method().to_string(), req.uri().path().to_owned(), super::peer(&req));
    let audited_path = super::path_template(&full_path);
    let path: Vec<&str> = full_path.trim_matches('/').split('/').collect();
    let result = match (req.method(), path.as_slice()) {
        (&Method::POST, ["v1", "inquiries"]) => post_one(&state, req, &trace_id, started).await,
        (&Method::POST, ["v1", "inquiries", "batch"]) => {
            post_batch(&state, req, &trace_id, traceparent.is_some(), started).await
        }
        (&Method::GET, ["v1", "inquiries"]) => list_of_buyer(&state, req.headers(), req.uri().query()).await,
        (_, ["v1", "inquiries"]) => Err(ApiError::method_not_allowed("GET, POST")),
        (_, ["v1", "inquiries", "batch"]) => Err(ApiError::method_not_allowed("POST")),
        (&Method::GET, ["v1", "inquiries", id]) => get_one(&state, req.headers(), id, source.clone(), &trace_id).await,
        (&Method::POST, ["v1", "inquiries", id, "reply"]) => {
            let id = id.to_string();
            post_reply(&state, req, &id).await
        }
        (_, ["v1", "inquiries", _, "reply"]) => Err(ApiError::method_not_allowed("POST")),
        (&Method::POST, ["v1", "inquiries", id, "conversion"]) => {
            let id = id.to_string();
            post_conversion(&state, req, &id).await
        }
        (_, ["v1", "inquiries", _, "conversion"]) => Err(ApiError::method_not_allowed("POST")),
        (_, ["webhooks", connector, account]) => {
            let (connector, account) = (connector.to_string(), account.to_string());
            super::webhooks::handle(&state, req, &connector, &account, &trace_id, started).await
        }
        (_, ["v1", "inquiries", _]) => Err(ApiError::method_not_allowed("GET")),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
    };
    result.unwrap_or_else(|err| {
        audit_refusal(&state, &err, &method, &audited_path, source, &trace_id);
        err.into_response(&trace_id)
    })
}

/// Writes a refused request (a 4xx other than 404 and 429) to the audit log, without waiting:
/// who could not get in, or what was malformed, and from where. Never the payload.
fn audit_refusal(state: &ApiState, err: &ApiError, method: &str, path: &str, source: Option<String>, trace_id: &str) {
    let status = err.status.as_u16();
    if !(400..500).contains(&status) || matches!(status, 404 | 429) {
        return;
    }
    let kind = if path.starts_with("/webhooks/") { "webhook.rejected" } else { "request.rejected" };
    let event = AuditEvent::new(kind, "unauthenticated").from_source(source).detail(serde_json::json!({
        "method": method, "path": path, "status": status, "reason": err.code, "field": err.field,
        "lines": err.lines.len(), "trace_id": trace_id,
    }));
    state.pipeline.audit_soon(vec![event]);
}

#[derive(Serialize)]
struct Accepted<'a> {
    id: Uuid,
    status: AckStatus,
    trace_id: &'a str,
}

async fn post_one(
    state: &ApiState,
    req: Request<Incoming>,
    trace_id: &str,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = state.auth.authenticate(req.headers())?;
    grant.require("inquiries:write")?;
    require_content_type(req.headers(), &["application/json"])?;
    let idempotency_key = idempotency_key(req.headers())?;
    let raw = read_body(req, state.max_body_bytes).await?;

    let normalize_started = Instant::now();
    let inquiry = generic::normalize(&raw, &context(trace_id))?;
    grant.check(&inquiry.account)?;
    let channel = inquiry.channel;
    telemetry::record_hop(Hop::Normalize, channel, normalize_started.elapsed(), 1);

    let submission =
        Submission::seal(inquiry, &raw, true, idempotency_key, &grant.actor(), &state.subjects).map_err(store_error)?;
    let acks = state.pipeline.submit(vec![submission]).await.map_err(submit_error)?;
    telemetry::record_hop(Hop::Ingest, channel, started.elapsed(), 1);
    let ack = &acks[0];
    let status = match ack.status {
        AckStatus::Accepted => StatusCode::CREATED,
        AckStatus::Duplicate => StatusCode::OK,
        AckStatus::Conflict => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used before with a different payload",
            ))
        }
    };
    let mut response = json_response(status, &Accepted { id: ack.id, status: ack.status, trace_id });
    let location = format!("/v1/inquiries/{}", ack.id);
    response.headers_mut().insert(header::LOCATION, location.parse().expect("a uuid path is a valid header"));
    Ok(response)
}

#[derive(Serialize)]
struct BatchAccepted<'a> {
    trace_id: &'a str,
    accepted: usize,
    duplicates: usize,
    /// Lines whose Idempotency-Key was used before with another payload: not stored.
    conflicts: usize,
    results: Vec<BatchResult>,
}

#[derive(Serialize)]
struct BatchResult {
    line: usize,
    id: Uuid,
    status: AckStatus,
    trace_id: String,
}

/// NDJSON: every line is one generic inquiry. All lines are checked first; if any is bad the
/// whole batch is refused (422 with every bad line) and nothing is stored. Each line gets a trace
/// id of its own, unless the client sent a `traceparent`: then every line carries the client's.
async fn post_batch(
    state: &Arc<ApiState>,
    req: Request<Incoming>,
    trace_id: &str,
    client_traced: bool,
    started: Instant,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = state.auth.authenticate(req.headers())?;
    grant.require("inquiries:write")?;
    require_content_type(req.headers(), &["application/x-ndjson", "application/ndjson", "application/jsonl"])?;
    let idempotency_key = idempotency_key(req.headers())?;
    let body = read_body(req, state.max_body_bytes).await?;

    // Parsing a large batch takes milliseconds: keep it off the async workers.
    let normalize_started = Instant::now();
    let worker_state = state.clone();
    let shared_trace = client_traced.then(|| trace_id.to_owned());
    let (submissions, line_numbers) = tokio::task::spawn_blocking(move || {
        normalize_batch(&worker_state, &body, &grant, idempotency_key.as_deref(), shared_trace.as_deref())
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "batch normalization failed"))??;
    let per_line = normalize_started.elapsed() / submissions.len().max(1) as u32;
    for item in &submissions {
        telemetry::record_hop(Hop::Normalize, item.inquiry.channel, per_line, 1);
    }

    let channels: Vec<(Channel, String)> =
        submissions.iter().map(|s| (s.inquiry.channel, s.inquiry.trace_id.clone())).collect();
    let acks = state.pipeline.submit(submissions).await.map_err(submit_error)?;
    let elapsed = started.elapsed();
    let mut results = Vec::with_capacity(acks.len());
    for ((ack, (channel, line_trace)), line) in acks.iter().zip(channels).zip(line_numbers) {
        telemetry::record_hop(Hop::Ingest, channel, elapsed, 1);
        results.push(BatchResult { line, id: ack.id, status: ack.status, trace_id: line_trace });
    }
    let count = |status| results.iter().filter(|r| r.status == status).count();
    let (accepted, duplicates, conflicts) =
        (count(AckStatus::Accepted), count(AckStatus::Duplicate), count(AckStatus::Conflict));
    let body = BatchAccepted { trace_id, accepted, duplicates, conflicts, results };
    Ok(json_response(StatusCode::OK, &body))
}

/// Normalizes every non-empty line; returns the submissions and their 1-based line numbers.
fn normalize_batch(
    state: &ApiState,
    body: &Bytes,
    grant: &Grant,
    idempotency_key: Option<&str>,
    shared_trace: Option<&str>,
) -> Result<(Vec<Submission>, Vec<usize>), ApiError> {
    let lines: Vec<(usize, Bytes)> = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| (i + 1, body.slice_ref(line.strip_suffix(b"\r").unwrap_or(line))))
        .collect();
    if lines.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "empty_batch", "the batch has no lines"));
    }
    if lines.len() > state.max_batch_lines {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_lines",
            format!("a batch may hold at most {} lines", state.max_batch_lines),
        ));
    }
    let mut submissions = Vec::with_capacity(lines.len());
    let mut numbers = Vec::with_capacity(lines.len());
    let mut errors = Vec::new();
    let actor = grant.actor();
    for (number, line) in lines {
        let line_trace = shared_trace.map_or_else(super::new_trace_id, str::to_owned);
        match generic::normalize(&line, &context(&line_trace)) {
            Ok(inquiry) if grant.allows(&inquiry.account) => {
                // Keys are visible ascii, so "\0" cannot occur in one: "key\0line" is unambiguous.
                let idempotency_key = idempotency_key.map(|k| format!("{k}\0{number}"));
                if errors.is_empty() {
                    let submission = Submission::seal(inquiry, &line, true, idempotency_key, &actor, &state.subjects)
                        .map_err(store_error)?;
                    submissions.push(submission);
                }
                numbers.push(number);
            }
            Ok(_) => {
                telemetry::count_rejected("account_forbidden");
                let message = "this key may not use that account".to_owned();
                errors.push(LineError {
                    line: number,
                    code: "account_forbidden",
                    field: Some("account".into()),
                    message,
                });
            }
            Err(err) => {
                telemetry::count_rejected(err.code.as_str());
                errors.push(LineError {
                    line: number,
                    code: err.code.as_str(),
                    field: err.field,
                    message: err.message,
                });
            }
        }
    }
    if errors.is_empty() {
        return Ok((submissions, numbers));
    }
    let mut err = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_lines",
        format!("{} line(s) refused; nothing of the batch was stored", errors.len()),
    );
    err.lines = errors;
    Err(err)
}

/// The id in a path: 400 `invalid_id` when it is not a UUID.
fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "the id is not a uuid"))
}

/// The stored inquiry `id`, if `grant` may use its account. A key that may not learns nothing,
/// not even that the id exists: 404 either way.
fn stored_for(state: &ApiState, grant: &Grant, id: Uuid) -> Result<StoredInquiry, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no inquiry with this id");
    let bytes = state.store.get_inquiry(id).map_err(store_error)?.ok_or_else(not_found)?;
    let stored: StoredInquiry = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "stored record is unreadable"))?;
    if !grant.allows(&stored.inquiry.account) {
        return Err(not_found());
    }
    Ok(stored)
}

/// Most inquiries one `GET /v1/inquiries?buyer=` answers with.
const MAX_LISTED: usize = 500;

/// `GET /v1/inquiries?buyer=<pseudonym>&limit=<n>`: a buyer's inquiries on the accounts the key
/// may use, newest message first (default 50, at most [`MAX_LISTED`]), as stored: envelope and
/// routing decision, personal data sealed (no read of personal data, so no audit entry). Links a
/// repeat buyer's conversation history for a CRM. Inquiry ids begin with the message time, so
/// the buyer's index is walked backwards and only what is returned (and what the key may not
/// see) is read.
async fn list_of_buyer(
    state: &Arc<ApiState>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = state.auth.authenticate(headers)?;
    grant.require("inquiries:read")?;
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let invalid =
        |field: &str, message: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", message).field_name(field);
    let buyer = params.get("buyer").cloned().unwrap_or_default();
    let pseudonym_shape =
        buyer.strip_prefix("bp_").is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !pseudonym_shape {
        return Err(invalid("buyer", "buyer must be a buyer pseudonym (bp_ and 32 hex digits)"));
    }
    let limit = match params.get("limit") {
        None => 50,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LISTED).contains(n))
            .ok_or_else(|| invalid("limit", &format!("limit must be a number from 1 to {MAX_LISTED}")))?,
    };
    let (store, pseudonym) = (state.store.clone(), buyer.clone());
    let inquiries = off_the_workers(move || {
        let mut inquiries = Vec::new();
        for id in store.inquiries_of(&pseudonym)?.into_iter().rev() {
            if inquiries.len() == limit {
                break;
            }
            let Some(stored) = StoredInquiry::load(&store, id)? else { continue };
            if grant.allows(&stored.inquiry.account) {
                inquiries.push(stored);
            }
        }
        Ok(inquiries)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "buyer": buyer, "inquiries": inquiries })))
}

/// `GET /v1/inquiries/{id}`: the stored inquiry with its personal data opened for the caller. Who
/// read whose data is in the audit log (`inquiry.read`) before the answer leaves: a read that
/// cannot be audited is refused like an inquiry that cannot be stored (429/503).
async fn get_one(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    source: Option<String>,
    trace_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = state.auth.authenticate(headers)?;
    grant.require("inquiries:read")?;
    let id = parse_id(id)?;
    // Another replica asking for its client: answer from this store only, audit the client's address.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let (source, via, from_peer) = match state.peer_key.check(headers, id, now)? {
        Some(client) => (client, source, true),
        None => (source, None, false),
    };
    let stored = match stored_for(state, &grant, id) {
        // A peer's request is answered from this store only: replicas never ask in a loop.
        Err(err) if err.status == StatusCode::NOT_FOUND && !from_peer => match &state.peers {
            Some(peers) => return from_peers(peers, headers, id, source.as_deref(), trace_id).await,
            None => return Err(err),
        },
        other => other?,
    };
    // The personal data, opened for the caller; `null` once the subject was erased.
    let personal = state.subjects.open(&stored.inquiry).map_err(store_error)?;
    let conversion = Conversion::load(&state.store, stored.inquiry.id).map_err(store_error)?;
    let inquiry = &stored.inquiry;
    let read = AuditEvent::new("inquiry.read", grant.actor())
        .from_source(source)
        .inquiry(inquiry.id)
        .subject(&inquiry.buyer.pseudonym)
        .detail(serde_json::json!({
            "channel": inquiry.channel, "account": inquiry.account,
            "personal_data": personal.is_some(), "trace_id": trace_id,
        }));
    // Asked by another replica (its address): the client's address is the source.
    let read = match via {
        Some(via) => AuditEvent { detail: with_via(read.detail, via), ..read },
        None => read,
    };
    state.pipeline.audit(vec![read]).await.map_err(submit_error)?;
    let mut body = serde_json::to_value(&stored).expect("stored inquiries serialize");
    body["personal"] = serde_json::to_value(personal).expect("personal data serializes");
    body["conversion"] = serde_json::to_value(conversion).expect("conversions serialize");
    Ok(json_response(StatusCode::OK, &body))
}

/// `detail` with the replica that asked on the client's behalf.
fn with_via(mut detail: serde_json::Value, via: String) -> serde_json::Value {
    detail["via_replica"] = serde_json::Value::String(via);
    detail
}

/// The answer of the replica that holds inquiry `id`, passed on as it is.
async fn from_peers(
    peers: &super::peers::Peers,
    headers: &HeaderMap,
    id: Uuid,
    source: Option<&str>,
    trace_id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    use super::peers::PeerAnswer;
    match peers.find(id, headers.get(header::AUTHORIZATION), source, trace_id).await {
        PeerAnswer::Found(body) => {
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            Ok(response)
        }
        PeerAnswer::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no inquiry with this id")),
        PeerAnswer::Unavailable => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "peer_unavailable",
            "this replica does not hold the inquiry and another replica did not answer; retry",
        )
        .retry_after(1)),
    }
}

/// The body of `POST /v1/inquiries/{id}/reply` (all optional).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplyBody {
    /// When the first response was sent (RFC 3339); default: now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    replied_at: Option<OffsetDateTime>,
    /// The agent who answered (an agent id, not a name).
    #[serde(default)]
    agent: Option<String>,
}

/// Records the first response to an inquiry (a CRM calls it when an agent answered): stops its
/// SLA clock. Idempotent: a second call reports the SLA as the first one left it.
async fn post_reply(state: &ApiState, req: Request<Incoming>, id: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = state.auth.authenticate(req.headers())?;
    grant.require("replies:write")?;
    let id = parse_id(id)?;
    let body = read_body(req, 64 * 1024).await?;
    let reply: ReplyBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReplyBody::default()
    } else {
        super::json_object(&body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body: {}", super::body_problem(e)))
        })?
    };
    if reply.agent.as_ref().is_some_and(|a| a.len() > 128) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_agent", "agent is at most 128 bytes"));
    }
    // A reply cannot come from the future (one before the SLA's start counts from its start:
    // `Reach::reply`).
    let now = OffsetDateTime::now_utc();
    let at = reply.replied_at.unwrap_or(now);
    if at > now + time::Duration::minutes(5) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", "replied_at is in the future")
            .field_name("replied_at"));
    }
    if let Some((kafka, key)) = &state.forward_replies {
        if !state.store.has_inquiry(id).map_err(store_error)? {
            // The time it was answered here: the holder may take it in late (a restart, a lag).
            let message = key.reply(id, Some(at), reply.agent.as_deref(), &grant.actor(), grant.accounts(), false);
            return forward(kafka, id, &message, Forwarded::Reply).await;
        }
    }
    let stored = stored_for(state, &grant, id)?;
    let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    // Audited first, recorded after: a failure in between leaves the client's retry to audit
    // again, never a recorded reply without its entry.
    let preview = match &state.reach {
        Some(reach) => {
            let (reach, stored) = (reach.clone(), stored.clone());
            off_the_workers(move || reach.preview_reply(&stored, at_ms)).await?
        }
        None => crate::reach::ReplyOutcome::NoSla,
    };
    let event = crate::reach::replies::replied_event(&grant.actor(), id, reply.agent.as_deref(), &preview);
    state.pipeline.audit(vec![event]).await.map_err(submit_error)?;
    let outcome = match &state.reach {
        Some(reach) => {
            let (reach, stored) = (reach.clone(), stored.clone());
            off_the_workers(move || reach.reply(&stored, at_ms)).await?
        }
        None => crate::reach::ReplyOutcome::NoSla,
    };
    let sla = outcome.sla().map(|state| serde_json::to_value(state).expect("states serialize"));
    metrics::counter!(telemetry::REPLIES, "source" => "http", "outcome" => "recorded").increment(1);
    if let Some((kafka, key)) = &state.forward_replies {
        // Another replica may hold the same inquiry (a message that reached two): its SLA stops
        // too. Best effort: the reply is recorded here whatever the broker does.
        let message = key.reply(id, Some(at), reply.agent.as_deref(), &grant.actor(), grant.accounts(), true);
        if let Err(err) = publish_within_3s(kafka, id, &message).await {
            tracing::warn!(error = %err, "reply not shared with the other replicas");
        }
    }
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "inquiry_id": id, "sla": sla })))
}

/// Writes `message` about inquiry `id` to the replies topic, if the broker takes it within 3 s.
async fn publish_within_3s(kafka: &crate::sinks::kafka::KafkaSink, id: Uuid, message: &[u8]) -> Result<(), String> {
    let published = tokio::time::timeout(std::time::Duration::from_secs(3), kafka.publish_reply(id, message)).await;
    published.unwrap_or_else(|_| Err("the broker did not take it within 3 s".to_owned()))
}

/// What [`forward`] sends.
enum Forwarded {
    /// A first response.
    Reply,
    /// A conversion report.
    Conversion,
}

/// Writes `message` (a `what`: reply or conversion, signed) about inquiry `id` to the replies
/// topic for the replica that holds the inquiry (with several replicas, a load balancer sends a
/// call anywhere); 202 once the broker has it, 503 `not_forwarded` when it has not within 3 s.
async fn forward(
    kafka: &crate::sinks::kafka::KafkaSink,
    id: Uuid,
    message: &[u8],
    what: Forwarded,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (what, outcome) = match what {
        Forwarded::Reply => ("reply", "forwarded"),
        Forwarded::Conversion => ("conversion", "conversion_forwarded"),
    };
    if let Err(err) = publish_within_3s(kafka, id, message).await {
        tracing::warn!(error = %err, what, "not forwarded to the replies topic");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_forwarded",
            format!("the inquiry is not held here and the {what} could not be written to the replies topic"),
        )
        .retry_after(1));
    }
    metrics::counter!(telemetry::REPLIES, "source" => "http", "outcome" => outcome).increment(1);
    Ok(json_response(StatusCode::ACCEPTED, &serde_json::json!({ "inquiry_id": id, "forwarded": true })))
}

/// The body of `POST /v1/inquiries/{id}/conversion`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionBody {
    /// The order's id.
    order_id: String,
    /// Its value: a decimal string (`"129.90"`) or a JSON number.
    #[serde(default)]
    value: Option<serde_json::Value>,
    /// ISO 4217 currency of the value.
    #[serde(default)]
    currency: Option<String>,
    /// When the order was placed (RFC 3339); default: now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    converted_at: Option<OffsetDateTime>,
}

/// Records the order an inquiry led to (the seller's CRM or shop back end calls it): the first
/// report is audited (`inquiry.converted`), kept and counted (201); a later one changes nothing
/// and answers what was kept (200).
async fn post_conversion(
    state: &ApiState,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let grant = state.auth.authenticate(req.headers())?;
    grant.require("conversions:write")?;
    let id = parse_id(id)?;
    let body = read_body(req, 64 * 1024).await?;
    let report: ConversionBody = super::json_object(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body: {}", super::body_problem(e)))
    })?;
    let value = match report.value {
        None => None,
        Some(serde_json::Value::String(text)) => Some(text),
        Some(serde_json::Value::Number(number)) => Some(number.to_string()),
        Some(_) => {
            return Err(
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", "value must be a decimal").field_name("value")
            )
        }
    };
    let now = OffsetDateTime::now_utc();
    let conversion = Conversion {
        order_id: report.order_id,
        value,
        currency: report.currency,
        converted_at: report.converted_at.unwrap_or(now),
        reported_by: grant.actor(),
    };
    conversion
        .check(now)
        .map_err(|bad| ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", bad.reason).field_name(bad.field))?;
    if let Some((kafka, key)) = &state.forward_replies {
        if !state.store.has_inquiry(id).map_err(store_error)? {
            let message = key.conversion(id, &conversion, grant.accounts());
            return forward(kafka, id, &message, Forwarded::Conversion).await;
        }
    }
    let stored = stored_for(state, &grant, id)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no inquiry with this id");
    let reported = crate::conversions::report(&state.pipeline, &stored, conversion).await;
    let (status, recorded, conversion) = match reported {
        Ok(Reported::Recorded(conversion)) => (StatusCode::CREATED, true, conversion),
        Ok(Reported::Kept(kept)) => (StatusCode::OK, false, kept),
        Ok(Reported::Gone) => return Err(not_found()),
        Ok(Reported::Erased) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "subject_erased", "the inquiry's buyer was erased"))
        }
        Err(ReportError::Store(err)) => return Err(store_error(err)),
        Err(ReportError::Submit(err)) => return Err(submit_error(err)),
    };
    let answer = serde_json::json!({ "inquiry_id": id, "recorded": recorded, "conversion": conversion });
    Ok(json_response(status, &answer))
}

fn context(trace_id: &str) -> NormalizeContext<'_> {
    NormalizeContext { received_at: OffsetDateTime::now_utc(), trace_id }
}

pub(super) async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body exceeds {limit} bytes"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::new(StatusCode::BAD_REQUEST, "body_read_error", "the request body could not be read")),
    }
}

fn require_content_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if accepted.contains(&essence.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content-type must be one of {}", accepted.join(", ")),
        ))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ascii characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

pub(crate) fn submit_error(err: SubmitError) -> ApiError {
    match err {
        SubmitError::Overloaded => ApiError::overloaded(),
        SubmitError::SpoolFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "spool_full",
            "a downstream sink is unavailable and the spool is full; retry later",
        )
        .retry_after(5),
        SubmitError::DiskFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "disk_full",
            "the gateway's store is almost out of disk space; retry later",
        )
        .retry_after(30),
        SubmitError::Stopped => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the gateway is shutting down")
                .retry_after(5)
        }
        SubmitError::Store(err) => store_error(err),
        SubmitError::StageFailed => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the pipeline failed before acknowledging; retrying is safe",
        ),
    }
}

/// Runs blocking store work `work` off the async workers ([`crate::store::off_the_workers`]); a
/// store error (or the task's panic) becomes the store's 503.
pub(crate) async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::store::off_the_workers(work).await.map_err(store_error)
}

pub(crate) fn store_error(err: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %err, "store failure");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store could not complete the request")
        .retry_after(1)
}

/// A data subject request that could not be carried out, as the HTTP error it answers.
pub(crate) fn request_error(err: crate::compliance::requests::RequestError) -> ApiError {
    use crate::compliance::requests::RequestError;
    match err {
        RequestError::Store(err) => store_error(err),
        RequestError::Pipeline(err) => submit_error(err),
        RequestError::NoSubject => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_subject", RequestError::NoSubject.to_string())
        }
        RequestError::Shared(err) => {
            tracing::error!(error = %err, "subject request not shared with the other replicas");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the request could not be shared with the other replicas (cql store); nothing was carried out",
            )
            .retry_after(5)
        }
    }
}
