//! The admin API on the admin listener: routing plugins (status, reload, replay), the agent
//! directory, the audit log (tree heads, entries, proofs) and data subject requests (export,
//! erasure), behind bearer tokens with scopes. Every call, allowed or refused, is written to the
//! audit log with the token's name and the caller's address.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use inquiry_connectors::Inquiry;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::{json_response, ApiError};
use super::{new_trace_id, HttpResponse};
use crate::agents::{AgentStateError, AgentUpdate};
use crate::compliance::audit::{key_id, AuditEvent, StoredNodes};
use crate::compliance::merkle::PerfectNodes as _;
use crate::compliance::requests::{Jurisdiction, RequestError, RequestKind, SubjectRequests, SubjectSpec};
use crate::compliance::subjects::Subjects;
use crate::config::{AdminConfig, Config};
use crate::pipeline::{Pipeline, StoredInquiry};
use crate::plugins::{harness, PluginRouter, ReplayVersion};
use crate::store::Store;

/// Most inquiries one replay may take.
const MAX_REPLAY: usize = 10_000;
/// Largest admin request body.
const MAX_BODY: usize = 1024 * 1024;

/// What the admin API acts on.
pub struct AdminParts {
    /// The plugin router (with no plugins it leaves every inquiry to the fallback route).
    pub plugins: Arc<PluginRouter>,
    /// Where agents' run-time state is kept.
    pub agents: Arc<crate::agents::AgentStates>,
    /// The store (replay and the audit endpoints read it).
    pub store: Store,
    /// The config file, re-read by a reload.
    pub source: Option<std::path::PathBuf>,
    /// The pipeline (admin calls are audited through it).
    pub pipeline: Pipeline,
    /// Data subjects (replay opens sealed fields to route them).
    pub subjects: Arc<Subjects>,
    /// Data subject requests.
    pub requests: Arc<SubjectRequests>,
    /// The public key that verifies the audit log's tree heads.
    pub public_key: Vec<u8>,
    /// How far the audit log is durable (only that much is served).
    pub spool: Arc<crate::spool::Spool>,
}

/// The admin API.
pub struct AdminApi {
    tokens: std::sync::RwLock<AdminTokens>,
    /// The admin listener is on a loopback address (fixed until a restart).
    loopback: bool,
    parts: AdminParts,
}

/// The admin tokens (digest, id, scopes); without any, `open` on a loopback listener.
struct AdminTokens {
    tokens: Vec<([u8; 32], String, Vec<String>)>,
    open: bool,
}

impl AdminTokens {
    fn of(config: &AdminConfig, loopback: bool) -> AdminTokens {
        let tokens = config
            .tokens
            .iter()
            .map(|t| (Sha256::digest(t.token.as_bytes()).into(), t.id.clone(), t.scopes.clone()))
            .collect();
        AdminTokens { tokens, open: config.tokens.is_empty() && loopback }
    }
}

/// The caller of an admin request, as far as it is known.
struct Caller {
    actor: String,
    source: Option<String>,
    scope: Option<&'static str>,
}

impl std::ops::Deref for AdminApi {
    type Target = AdminParts;
    fn deref(&self) -> &AdminParts {
        &self.parts
    }
}

impl AdminApi {
    /// The admin API of `config`. Without tokens it is open only on a loopback listener.
    pub fn new(config: &AdminConfig, parts: AdminParts) -> Self {
        let loopback = config.listen.ip().is_loopback();
        AdminApi { tokens: std::sync::RwLock::new(AdminTokens::of(config, loopback)), loopback, parts }
    }

    /// Takes the tokens of `config` instead (a validated config, re-read on SIGHUP); the
    /// listener stays where it is.
    pub fn reload_tokens(&self, config: &AdminConfig) {
        *self.tokens.write().expect("admin tokens lock") = AdminTokens::of(config, self.loopback);
    }

    /// Checks that the caller holds `scope`; records who it is in `caller`; 401/403 otherwise.
    fn authorize(
        &self,
        headers: &http::HeaderMap,
        scope: &'static str,
        caller: &mut Caller,
    ) -> Result<String, ApiError> {
        caller.scope = Some(scope);
        let who = self.token_of(headers, scope);
        if let Ok(id) | Err((Some(id), _)) = &who {
            caller.actor = format!("admin:{id}");
        }
        who.map_err(|(_, err)| err)
    }

    /// The token's name when it holds `scope`; otherwise the name (if the token is known) and the refusal.
    fn token_of(&self, headers: &http::HeaderMap, scope: &str) -> Result<String, (Option<String>, ApiError)> {
        let tokens = self.tokens.read().expect("admin tokens lock");
        if tokens.open {
            super::auth::refuse_browsers(headers).map_err(|err| (None, err))?;
            return Ok("loopback".to_owned());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                (
                    None,
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "an admin bearer token is required")
                        .with_header(header::WWW_AUTHENTICATE, "Bearer"),
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        match tokens.tokens.iter().find(|(d, _, _)| *d == digest) {
            None => Err((
                None,
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown admin token")
                    .with_header(header::WWW_AUTHENTICATE, "Bearer"),
            )),
            Some((_, id, scopes)) if scopes.iter().any(|s| s == scope) => Ok(id.clone()),
            Some((_, id, _)) => {
                tracing::warn!(token = %id, scope, "admin call refused: scope not granted");
                Err((
                    Some(id.clone()),
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "scope_missing",
                        format!("this token lacks the `{scope}` scope"),
                    ),
                ))
            }
        }
    }

    /// Handles `/v1/...` on the admin listener; every call is audited with its outcome.
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let trace_id = new_trace_id();
        let (method, path) = (req.method().to_string(), super::path_template(req.uri().path()));
        let mut caller = Caller { actor: "anonymous".to_owned(), source: super::peer(&req), scope: None };
        let response = match self.route(req, &mut caller).await {
            Ok(response) => response,
            Err(err) => err.into_response(&trace_id),
        };
        let status = response.status().as_u16();
        let event = AuditEvent::new("admin.call", caller.actor).from_source(caller.source).detail(json!({
            "method": method, "path": path, "scope": caller.scope, "status": status,
            "allowed": caller.scope.is_some() && !matches!(status, 401 | 403),
        }));
        // Refused calls must not be able to fill the queue and block inquiries: they are audited
        // without waiting; allowed calls wait for their audit entry to be durable.
        if matches!(status, 401 | 403) {
            self.pipeline.audit_soon(vec![event]);
        } else if let Err(err) = self.pipeline.audit(vec![event]).await {
            tracing::error!(error = %err, "admin call could not be audited");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the call could not be audited; retry",
            )
            .retry_after(1)
            .into_response(&trace_id);
        }
        response
    }

    async fn route(&self, req: Request<Incoming>, caller: &mut Caller) -> Result<HttpResponse, ApiError> {
        let path: Vec<String> = req.uri().path().trim_matches('/').split('/').map(str::to_owned).collect();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let method = req.method().clone();
        match (method, path.as_slice()) {
            (Method::GET, ["v1", "plugins"]) => {
                self.authorize(req.headers(), "plugins:read", caller)?;
                let plugins = self.plugins.status();
                Ok(json_response(StatusCode::OK, &json!({ "plugins": plugins })))
            }
            (Method::POST, ["v1", "plugins", "reload"]) => {
                let who = self.authorize(req.headers(), "plugins:write", caller)?;
                tracing::info!(token = %who, "admin: plugin reload");
                self.reload()
                    .map_err(|message| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", message))?;
                Ok(json_response(StatusCode::OK, &json!({ "reloaded": true })))
            }
            (Method::POST, ["v1", "plugins", id, "replay"]) => {
                // Replay runs the plugin, which moves its key-value map (round-robin positions).
                let who = self.authorize(req.headers(), "plugins:write", caller)?;
                let id = id.to_string();
                let body = super::api::read_body(req, MAX_BODY).await?;
                tracing::info!(token = %who, plugin = %id, "admin: replay");
                tokio::task::block_in_place(|| self.replay(&id, &body))
            }
            (Method::GET, ["v1", "agents"]) => {
                self.authorize(req.headers(), "agents:read", caller)?;
                let agents: Vec<Value> = self
                    .plugins
                    .agents()
                    .all()
                    .into_iter()
                    .map(|(team, a)| {
                        json!({
                            "id": a.id, "team": team, "load": a.load, "capacity": a.capacity,
                            "online": a.online, "available": a.available(),
                        })
                    })
                    .collect();
                Ok(json_response(StatusCode::OK, &json!({ "agents": agents })))
            }
            (Method::PUT, ["v1", "agents", id]) => {
                let who = self.authorize(req.headers(), "agents:write", caller)?;
                let id = id.to_string();
                let body = super::api::read_body(req, MAX_BODY).await?;
                let update: AgentUpdate = super::json_object(&body).map_err(|e| {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", super::body_problem(e))
                })?;
                let agents = &self.agents;
                agents.update(&id, update).await.map_err(|err| match err {
                    AgentStateError::Unknown => {
                        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no agent with that id")
                    }
                    other => {
                        tracing::error!(agent = %id, error = %other, "agent state not kept");
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "store_unavailable",
                            "the agent state could not be kept; try again",
                        )
                        .retry_after(1)
                    }
                })?;
                tracing::info!(token = %who, agent = %id, "admin: agent updated");
                Ok(json_response(StatusCode::OK, &json!({ "updated": id })))
            }
            (Method::GET, ["v1", "audit", "tree-head"]) => {
                self.authorize(req.headers(), "audit:read", caller)?;
                let head = self.durable_heads()?.pop();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "tree_head": head,
                        "public_key": hex::encode(&self.public_key),
                        "key_id": key_id(&self.public_key),
                        "entries": self.spool.audit_durable_end(),
                    }),
                ))
            }
            (Method::GET, ["v1", "audit", "tree-heads"]) => {
                self.authorize(req.headers(), "audit:read", caller)?;
                Ok(json_response(StatusCode::OK, &json!({ "tree_heads": self.durable_heads()? })))
            }
            (Method::GET, ["v1", "audit", "entries"]) => {
                self.authorize(req.headers(), "audit:read", caller)?;
                let query = Query::of(&req);
                let from = query.number("from")?.unwrap_or(0);
                let limit = query.number("limit")?.unwrap_or(1000).min(10_000);
                let to = from.saturating_add(limit).min(self.spool.audit_durable_end());
                let entries = self.store.audit_entries(from, to).map_err(store_error)?;
                // NDJSON: each line is an entry exactly as hashed into the log.
                let mut body = Vec::new();
                for (_, entry) in entries {
                    body.extend_from_slice(&entry);
                    body.push(b'\n');
                }
                let mut response = http::Response::new(http_body_util::Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
                Ok(response)
            }
            (Method::GET, ["v1", "audit", "proof", "inclusion"]) => {
                self.authorize(req.headers(), "audit:read", caller)?;
                let query = Query::of(&req);
                let (index, size) = (query.required("index")?, query.required("size")?);
                let proof = self.checked_size(size).and_then(|()| {
                    StoredNodes(&self.store).inclusion_proof(index, size).ok_or_else(|| {
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", "index must be below size")
                    })
                })?;
                let leaf = StoredNodes(&self.store).perfect(0, index).map(hex::encode);
                let proof: Vec<String> = proof.iter().map(hex::encode).collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "index": index, "tree_size": size, "leaf_hash": leaf, "audit_path": proof }),
                ))
            }
            (Method::GET, ["v1", "audit", "proof", "consistency"]) => {
                self.authorize(req.headers(), "audit:read", caller)?;
                let query = Query::of(&req);
                let (first, second) = (query.required("first")?, query.required("second")?);
                let proof = self.checked_size(second).and_then(|()| {
                    StoredNodes(&self.store).consistency_proof(first, second).ok_or_else(|| {
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", "first must not exceed second")
                    })
                })?;
                let proof: Vec<String> = proof.iter().map(hex::encode).collect();
                Ok(json_response(StatusCode::OK, &json!({ "first": first, "second": second, "proof": proof })))
            }
            (Method::POST, ["v1", "subject-requests"]) => {
                let headers = req.headers().clone();
                // Who it is first (401 before the body is even read); the scope depends on the kind.
                if let Err((None, err)) = self.token_of(&headers, "") {
                    return Err(err);
                }
                let body = super::api::read_body(req, MAX_BODY).await?;
                let request: NewSubjectRequest = parse_subject_body(&body, "a subject request")?;
                let scope = match request.kind {
                    RequestKind::Export => "subjects:export",
                    RequestKind::Erasure => "subjects:erase",
                    RequestKind::ConsentWithdrawal => "subjects:consent",
                };
                let who = self.authorize(&headers, scope, caller)?;
                check_purposes(&request)?;
                let by = format!("admin:{who}");
                let jurisdiction = request.jurisdiction.unwrap_or(Jurisdiction::Gdpr);
                self.subject_request(&request, jurisdiction, &by).await.map_err(super::api::request_error)
            }
            (Method::POST, ["v1", "subject-consents"]) => {
                // A read, with the subject in the body: personal data never in a URL or access log.
                self.authorize(req.headers(), "subjects:read", caller)?;
                let body = super::api::read_body(req, MAX_BODY).await?;
                let lookup: ConsentLookup = parse_subject_body(&body, "a consent lookup")?;
                let requests = self.requests.clone();
                let (subjects, consents) = tokio::task::spawn_blocking(move || requests.consents(&lookup.subject))
                    .await
                    .map_err(|e| store_error(crate::store::StoreError::from_message(&e.to_string())))?
                    .map_err(super::api::request_error)?;
                Ok(json_response(StatusCode::OK, &json!({ "subjects": subjects, "consents": consents })))
            }
            (Method::GET, ["v1", "subject-requests"]) => {
                self.authorize(req.headers(), "subjects:read", caller)?;
                let requests = self.requests.list().map_err(store_error)?;
                Ok(json_response(StatusCode::OK, &json!({ "requests": requests })))
            }
            (Method::GET, ["v1", "subject-requests", id]) => {
                self.authorize(req.headers(), "subjects:read", caller)?;
                let id = Uuid::try_parse(id)
                    .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", "the id is not a uuid"))?;
                let request = self.requests.get(id).map_err(store_error)?.ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no subject request with this id")
                })?;
                Ok(json_response(StatusCode::OK, &request))
            }
            (
                _,
                ["v1", "plugins", ..]
                | ["v1", "agents", ..]
                | ["v1", "audit", ..]
                | ["v1", "subject-requests", ..]
                | ["v1", "subject-consents", ..],
            ) => Err(ApiError::method_not_allowed("GET, POST, PUT")),
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
        }
    }

    /// Re-reads the config file's `[routing]` (or, without a file, the plugin files) and swaps it in.
    pub fn reload(&self) -> Result<(), String> {
        let config = match &self.source {
            Some(path) => Some(Config::read_validated(path)?.routing),
            None => None,
        };
        self.plugins.reload(config.as_ref()).map_err(|e| e.to_string())
    }

    /// Reloads the routing plugins and the fallback route from `routing` (a validated config's
    /// `[routing]`).
    pub fn reload_routing(&self, routing: &crate::config::RoutingConfig) -> Result<(), String> {
        self.plugins.reload(Some(routing)).map_err(|e| e.to_string())
    }

    /// Carries out an export or erasure; marks the open request it answers (`fulfils`) fulfilled.
    async fn subject_request(
        &self,
        request: &NewSubjectRequest,
        jurisdiction: Jurisdiction,
        by: &str,
    ) -> Result<HttpResponse, RequestError> {
        if let Some(open) = request.fulfils {
            let open = self
                .requests
                .get(open)?
                .filter(|r| r.status == crate::compliance::requests::RequestStatus::Open && r.kind == request.kind);
            let Some(open) = open else {
                return Ok(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no open request of this kind with the id in `fulfils`",
                )
                .into_response(&new_trace_id()));
            };
            // It answers the open request only if it covers every subject that one names (checked
            // before anything is carried out).
            let found = match self.requests.find(&request.subject) {
                Err(RequestError::NoSubject) => Vec::new(),
                found => found?,
            };
            // A subject erased since is answered already (nothing of it is left to find).
            let subjects = &self.requests.subjects;
            let missing: Vec<&String> =
                open.subjects.iter().filter(|s| !found.contains(s) && !subjects.is_erased(s)).collect();
            if !missing.is_empty() {
                let message = format!(
                    "the open request names subjects this one does not ({}): name them all, e.g. with `pseudonyms`",
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
                return Ok(ApiError::new(StatusCode::CONFLICT, "fulfils_other_subjects", message)
                    .into_response(&new_trace_id()));
            }
        }
        let (record, document) = match request.kind {
            RequestKind::Export => self.requests.export(&request.subject, jurisdiction, "admin_api", by).await?,
            RequestKind::Erasure => {
                let record = self.requests.erase(&request.subject, jurisdiction, "admin_api", by).await?;
                let document = json!({ "request": record });
                (record, document)
            }
            RequestKind::ConsentWithdrawal => {
                let record = self
                    .requests
                    .withdraw_consent(&request.subject, &request.purposes, jurisdiction, "admin_api", by)
                    .await?;
                let document = json!({ "request": record });
                (record, document)
            }
        };
        if let Some(open) = request.fulfils {
            self.requests.fulfil(open, &record, by).await?;
        }
        Ok(json_response(StatusCode::OK, &document))
    }

    /// The signed tree heads whose entries are durable (a witness must never see a head that a
    /// crash could take back), oldest first.
    fn durable_heads(&self) -> Result<Vec<crate::compliance::audit::SignedTreeHead>, ApiError> {
        let durable = self.spool.audit_durable_end();
        Ok(self
            .store
            .audit_heads()
            .map_err(store_error)?
            .iter()
            .filter_map(|h| serde_json::from_slice::<crate::compliance::audit::SignedTreeHead>(h).ok())
            .filter(|h| h.tree_size <= durable)
            .collect())
    }

    /// 422 unless `size` entries exist in the log.
    fn checked_size(&self, size: u64) -> Result<(), ApiError> {
        let entries = self.spool.audit_durable_end();
        if size == 0 || size > entries {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                format!("tree size must be between 1 and {entries}"),
            ));
        }
        Ok(())
    }

    fn replay(&self, id: &str, body: &Bytes) -> Result<HttpResponse, ApiError> {
        let request: ReplayRequest = super::json_object(body)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", super::body_problem(e)))?;
        let plugins = &self.plugins;
        if !plugins.status().iter().any(|plugin| plugin.id == id) {
            // Before reading any inquiry.
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no plugin `{id}`")));
        }
        let limit = request.limit.unwrap_or(1000).min(MAX_REPLAY);
        let store_error = |e: crate::store::StoreError| {
            tracing::error!(error = %e, "replay could not read the store");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store could not be read")
        };
        let records = match (&request.ids, request.from, request.to) {
            (Some(ids), None, None) => {
                let mut records = Vec::new();
                for id in ids.iter().take(limit) {
                    records.extend(self.store.get_inquiry(*id).map_err(store_error)?);
                }
                records
            }
            (None, Some(from), Some(to)) => self.store.inquiries_between(from, to, limit).map_err(store_error)?,
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_value",
                    "give either `ids` or both `from` and `to`",
                ))
            }
        };
        let mut stored: Vec<StoredInquiry> = records.iter().filter_map(|r| serde_json::from_slice(r).ok()).collect();
        // Plugins route on the message text: open it (an erased subject's inquiries replay without it).
        for record in &mut stored {
            if let Some(personal) = self.subjects.open(&record.inquiry).map_err(store_error)? {
                record.inquiry.personal = personal;
            }
        }
        let inquiries: Vec<&Inquiry> = stored.iter().map(|s| &s.inquiry).collect();
        let version = match request.version.as_deref() {
            None | Some("live") => ReplayVersion::Live,
            Some("shadow") => ReplayVersion::Shadow,
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_value",
                    "version is `live` or `shadow`",
                ))
            }
        };
        let outcomes = plugins
            .replay(id, version, &inquiries)
            .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()))?;
        let mut changed = 0;
        let results: Vec<_> = stored
            .iter()
            .zip(&outcomes)
            .map(|(stored, outcome)| {
                let replayed = harness::outcome_json(outcome);
                let before = harness::outcome_json(&crate::routing::RouteOutcome::Decided(stored.decision.clone()));
                let differs = before != replayed;
                changed += differs as usize;
                json!({
                    "id": stored.inquiry.id,
                    "stored": stored.decision,
                    "replayed": replayed,
                    "changed": differs,
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({ "replayed": results.len(), "changed": changed, "results": results })))
    }
}

/// A JSON body that names a data subject; a body that does not read is 422 with only the line
/// and column (serde's message may quote the input: an e-mail address).
fn parse_subject_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    super::json_object(body).map_err(|e| {
        let at = match e.line() {
            0 => "expected a JSON object".to_owned(),
            line => format!("line {line}, column {}", e.column()),
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", format!("not {what} ({at})"))
    })
}

/// A consent withdrawal names 1 to 16 purposes by their names; other requests name none.
fn check_purposes(request: &NewSubjectRequest) -> Result<(), ApiError> {
    let invalid = |message: &str| {
        Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message).field_name("purposes"))
    };
    match request.kind {
        RequestKind::ConsentWithdrawal => {
            let max = inquiry_connectors::generic::MAX_CONSENT_PURPOSES;
            if request.purposes.is_empty() || request.purposes.len() > max {
                return invalid("a consent withdrawal names 1 to 16 purposes");
            }
            if !request.purposes.iter().all(|p| inquiry_connectors::generic::is_purpose_name(p)) {
                return invalid("a purpose is 1 to 64 bytes of lower-case letters, digits, `_`, `-`, `.` and `:`");
            }
            Ok(())
        }
        _ if !request.purposes.is_empty() => invalid("only a consent_withdrawal names purposes"),
        _ => Ok(()),
    }
}

/// Body of `POST /v1/subject-consents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentLookup {
    subject: SubjectSpec,
}

/// Body of `POST /v1/subject-requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubjectRequest {
    kind: RequestKind,
    /// The purposes a `consent_withdrawal` withdraws.
    #[serde(default)]
    purposes: Vec<String>,
    /// An open request (e.g. from Shopify's `customers/data_request`) this one answers.
    fulfils: Option<Uuid>,
    /// `gdpr` (default), `ccpa` or `lgpd`.
    jurisdiction: Option<Jurisdiction>,
    subject: SubjectSpec,
}

/// Query parameters of a GET.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(req: &Request<Incoming>) -> Query {
        let pairs = req.uri().query().unwrap_or_default().split('&').filter_map(|p| p.split_once('='));
        Query(pairs.map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.0.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v.parse().map(Some).map_err(|_| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_value", format!("`{name}` must be a whole number"))
            }),
        }
    }

    fn required(&self, name: &str) -> Result<u64, ApiError> {
        self.number(name)?
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing_field", format!("`{name}` is required")))
    }
}

fn store_error(err: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %err, "admin call could not use the store");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store could not be read").retry_after(1)
}

/// Body of `POST /v1/plugins/{id}/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    /// Inquiry ids.
    ids: Option<Vec<Uuid>>,
    /// Message time range (inquiry ids start with the message time).
    #[serde(default, with = "time::serde::rfc3339::option")]
    from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    to: Option<OffsetDateTime>,
    /// Most inquiries to replay (default 1000, at most 10000).
    limit: Option<usize>,
    /// `live` (default) or `shadow`.
    version: Option<String>,
}
