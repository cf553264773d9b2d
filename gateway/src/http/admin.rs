//! The admin API on the admin listener: routing plugins (status, reload, replay) and the agent
//! directory, behind bearer tokens with scopes. Every call is logged with the token's name.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use hyper::body::Incoming;
use inquiry_connectors::Inquiry;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::{json_response, ApiError};
use super::{new_trace_id, HttpResponse};
use crate::config::{AdminConfig, Config};
use crate::pipeline::StoredInquiry;
use crate::plugins::{harness, PluginRouter, ReplayVersion};
use crate::store::Store;

/// Most inquiries one replay may take.
const MAX_REPLAY: usize = 10_000;
/// Largest admin request body.
const MAX_BODY: usize = 1024 * 1024;

/// What the admin API acts on.
pub struct AdminApi {
    tokens: Vec<([u8; 32], String, Vec<String>)>,
    open: bool,
    /// The plugin router, when plugins are configured.
    pub plugins: Option<Arc<PluginRouter>>,
    /// The store (replay reads inquiries from it).
    pub store: Store,
    /// The config file, re-read by a reload.
    pub source: Option<std::path::PathBuf>,
}

impl AdminApi {
    /// The admin API of `config`. Without tokens it is open only on a loopback listener.
    pub fn new(
        config: &AdminConfig,
        plugins: Option<Arc<PluginRouter>>,
        store: Store,
        source: Option<std::path::PathBuf>,
    ) -> Self {
        let tokens = config
            .tokens
            .iter()
            .map(|t| (Sha256::digest(t.token.as_bytes()).into(), t.id.clone(), t.scopes.clone()))
            .collect();
        AdminApi { tokens, open: config.tokens.is_empty() && config.listen.ip().is_loopback(), plugins, store, source }
    }

    /// The token's name when it holds `scope`; 401/403 otherwise.
    fn authorize(&self, req: &Request<Incoming>, scope: &str) -> Result<String, ApiError> {
        if self.open {
            return Ok("loopback".to_owned());
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "an admin bearer token is required")
                    .with_header(header::WWW_AUTHENTICATE, "Bearer")
            })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        match self.tokens.iter().find(|(d, _, _)| *d == digest) {
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown admin token")
                .with_header(header::WWW_AUTHENTICATE, "Bearer")),
            Some((_, id, scopes)) if scopes.iter().any(|s| s == scope) => Ok(id.clone()),
            Some((_, id, _)) => {
                tracing::warn!(token = %id, scope, "admin call refused: scope not granted");
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "scope_missing",
                    format!("this token lacks the `{scope}` scope"),
                ))
            }
        }
    }

    /// Handles `/v1/...` on the admin listener.
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let trace_id = new_trace_id();
        match self.route(req).await {
            Ok(response) => response,
            Err(err) => err.into_response(&trace_id),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<HttpResponse, ApiError> {
        let path: Vec<String> = req.uri().path().trim_matches('/').split('/').map(str::to_owned).collect();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let method = req.method().clone();
        match (method, path.as_slice()) {
            (Method::GET, ["v1", "plugins"]) => {
                self.authorize(&req, "plugins:read")?;
                let plugins = self.plugins.as_ref().map(|p| p.status()).unwrap_or_default();
                Ok(json_response(StatusCode::OK, &json!({ "plugins": plugins })))
            }
            (Method::POST, ["v1", "plugins", "reload"]) => {
                let who = self.authorize(&req, "plugins:write")?;
                tracing::info!(token = %who, "admin: plugin reload");
                self.reload()
                    .map_err(|message| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "reload_failed", message))?;
                Ok(json_response(StatusCode::OK, &json!({ "reloaded": true })))
            }
            (Method::POST, ["v1", "plugins", id, "replay"]) => {
                // Replay runs the plugin, which moves its key-value map (round-robin positions).
                let who = self.authorize(&req, "plugins:write")?;
                let id = id.to_string();
                let body = super::api::read_body(req, MAX_BODY).await?;
                tracing::info!(token = %who, plugin = %id, "admin: replay");
                tokio::task::block_in_place(|| self.replay(&id, &body))
            }
            (Method::PUT, ["v1", "agents", id]) => {
                let who = self.authorize(&req, "agents:write")?;
                let id = id.to_string();
                let body = super::api::read_body(req, MAX_BODY).await?;
                let update: AgentUpdate = serde_json::from_slice(&body)
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", e.to_string()))?;
                let plugins = self.plugins.as_ref().ok_or_else(no_plugins)?;
                if !plugins.agents().update(&id, update.load, update.capacity, update.online) {
                    return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no agent with that id"));
                }
                tracing::info!(token = %who, agent = %id, "admin: agent updated");
                Ok(json_response(StatusCode::OK, &json!({ "updated": id })))
            }
            (_, ["v1", "plugins", ..] | ["v1", "agents", ..]) => Err(ApiError::method_not_allowed("GET, POST, PUT")),
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
        }
    }

    /// Re-reads the config file's `[routing]` (or, without a file, the plugin files) and swaps it in.
    pub fn reload(&self) -> Result<(), String> {
        let plugins = self.plugins.as_ref().ok_or("no plugins are configured; restart to add them")?;
        let config = match &self.source {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
                config.validate().map_err(|e| e.to_string())?;
                Some(config.routing)
            }
            None => None,
        };
        plugins.reload(config.as_ref()).map_err(|e| e.to_string())
    }

    fn replay(&self, id: &str, body: &Bytes) -> Result<HttpResponse, ApiError> {
        let request: ReplayRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", e.to_string()))?;
        let plugins = self.plugins.as_ref().ok_or_else(no_plugins)?;
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
        let stored: Vec<StoredInquiry> = records.iter().filter_map(|r| serde_json::from_slice(r).ok()).collect();
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

fn no_plugins() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no routing plugins are configured")
}

/// Body of `PUT /v1/agents/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentUpdate {
    load: Option<u32>,
    capacity: Option<u32>,
    online: Option<bool>,
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
