//! API errors: a status, a machine-readable code from a fixed list, a message safe for clients.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use inquiry_connectors::InputError;
use serde::Serialize;

use crate::telemetry;

/// A refused or failed request, rendered as `{"error": {...}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable reason; also the `reason` label of the reject counter.
    pub code: &'static str,
    /// Human-readable message; never personal data or internals.
    pub message: String,
    /// Offending field, where known.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (sets `Retry-After`).
    pub retry_after: Option<u32>,
    /// Per-line errors of a refused NDJSON batch.
    pub lines: Vec<LineError>,
    /// Extra response headers (`WWW-Authenticate`, `Allow`).
    pub headers: Vec<(header::HeaderName, &'static str)>,
}

/// One refused line of an NDJSON batch.
#[derive(Debug, Serialize)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// Machine-readable reason.
    pub code: &'static str,
    /// Offending field, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            lines: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Names the offending field.
    pub fn field_name(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    /// 405 naming the methods the resource allows.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut err = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here");
        err.headers.push((header::ALLOW, allow));
        err
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Sets `Retry-After`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 503: the pipeline queue or the request limit is full.
    pub fn overloaded() -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the gateway is at capacity; retry later")
            .retry_after(1)
    }

    /// Renders the error with the request's trace id, counting it by reason.
    pub fn into_response(self, trace_id: &str) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
            trace_id: &'a str,
            #[serde(skip_serializing_if = "<[LineError]>::is_empty")]
            lines: &'a [LineError],
        }
        telemetry::count_rejected(self.code);
        if self.status.is_server_error() {
            tracing::warn!(trace_id, code = self.code, status = self.status.as_u16(), "request failed");
        } else {
            tracing::debug!(trace_id, code = self.code, status = self.status.as_u16(), "request refused");
        }
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                trace_id,
                lines: &self.lines,
            },
        };
        let mut response = json_response(self.status, &body);
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        for (name, value) in self.headers {
            response.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

impl From<InputError> for ApiError {
    fn from(err: InputError) -> Self {
        use inquiry_connectors::InputErrorCode::*;
        let status = match err.code {
            InvalidUtf8 | MalformedJson => StatusCode::BAD_REQUEST,
            InvalidType | MissingField | UnknownField | InvalidValue | UnknownChannel => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        ApiError { field: err.field, ..ApiError::new(status, err.code.as_str(), err.message) }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
