//! Serde helpers for ids and times that platforms send as JSON numbers or as strings (Shopee sends
//! 64-bit ids as numbers, which JavaScript clients cannot hold, and some SDKs rewrite them as
//! strings).

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An id given as a string or a number, as a string.
pub(crate) fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("an id must be a string or a number")),
    }
}

/// An optional id given as a string or a number (`0` and `""` are absent).
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) if n.as_u64() != Some(0) => Some(n.to_string()),
        _ => None,
    })
}

/// An integer given as a number or a decimal string.
pub(crate) fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64().ok_or_else(|| serde::de::Error::custom("an integer is out of range")),
        Value::String(s) => s.trim().parse().map_err(|_| serde::de::Error::custom("not an integer")),
        _ => Err(serde::de::Error::custom("an integer must be a number or a string")),
    }
}
