//! Why a payload was refused: a small fixed set of machine-readable codes plus a human message.

use std::fmt;

/// Machine-readable reason a payload was refused; also the `reason` label of the reject counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputErrorCode {
    /// The body is not valid UTF-8.
    InvalidUtf8,
    /// The body is not well-formed JSON (syntax error or truncated).
    MalformedJson,
    /// A field has the wrong JSON type.
    InvalidType,
    /// A required field is absent.
    MissingField,
    /// A field the schema does not know was sent.
    UnknownField,
    /// A field has the right type but an unacceptable value.
    InvalidValue,
    /// `channel` is not a known channel.
    UnknownChannel,
}

impl InputErrorCode {
    /// The code as it appears in error bodies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            InputErrorCode::InvalidUtf8 => "invalid_utf8",
            InputErrorCode::MalformedJson => "malformed_json",
            InputErrorCode::InvalidType => "invalid_type",
            InputErrorCode::MissingField => "missing_field",
            InputErrorCode::UnknownField => "unknown_field",
            InputErrorCode::InvalidValue => "invalid_value",
            InputErrorCode::UnknownChannel => "unknown_channel",
        }
    }
}

/// A refused payload: the code, the field at fault where known, and a message safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    /// Machine-readable reason.
    pub code: InputErrorCode,
    /// Dotted path of the offending field, where known.
    pub field: Option<String>,
    /// Human-readable explanation; never contains the payload's values.
    pub message: String,
}

impl InputError {
    /// A new error with `code` and `message`.
    pub fn new(code: InputErrorCode, message: impl Into<String>) -> Self {
        InputError { code, field: None, message: message.into() }
    }

    /// Names the offending field.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Sorts a serde_json error into a code. serde_json reports data errors only as text, so the
    /// well-known prefixes of its messages decide. Its messages can quote the offending value
    /// (personal data), so the message is rebuilt from the schema side only: field names and the
    /// expected type, never the value.
    pub fn from_json(err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let text = err.to_string();
        let at = format!("at line {} column {}", err.line(), err.column());
        let quoted = || text.split('`').nth(1).map(|f| f.chars().take(64).collect::<String>());
        let (code, field, message) = match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                (InputErrorCode::MalformedJson, None, format!("malformed json {at}"))
            }
            Category::Data if text.starts_with("missing field") => {
                let field = quoted();
                let message = format!("missing field `{}`", field.as_deref().unwrap_or("?"));
                (InputErrorCode::MissingField, field, message)
            }
            Category::Data if text.starts_with("unknown field") => {
                let field = quoted();
                let message = format!("unknown field `{}` {at}", field.as_deref().unwrap_or("?"));
                (InputErrorCode::UnknownField, field, message)
            }
            Category::Data if text.starts_with("invalid type") => {
                // "invalid type: <found>, expected <what the schema wants> at line ..."
                let expected = text.rsplit_once(", expected ").map_or("", |(_, e)| e);
                let expected = expected.split(" at line ").next().unwrap_or_default();
                (InputErrorCode::InvalidType, None, format!("wrong json type {at}: expected {expected}"))
            }
            Category::Data => (InputErrorCode::InvalidValue, None, format!("invalid value {at}")),
        };
        InputError { code, field, message }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
