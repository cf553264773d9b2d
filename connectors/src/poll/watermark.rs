//! The cursor of the eBay, Shopee and TikTok Shop pollers: the newest message time taken, plus
//! the ids of the messages taken at exactly that time.
//!
//! The platforms filter or sort by a creation time whose unit (seconds, milliseconds) can hold
//! several messages. A cycle asks again from that time on (inclusive, so a message that arrived
//! later within the same second is not skipped) and drops the messages whose id is already in
//! the cursor (so the boundary messages are not taken twice). Stored as JSON:
//! `{"at": 1764748680, "seen": ["m1", "m2"]}`.

use serde::{Deserialize, Serialize};

use crate::error::{InputError, InputErrorCode};

/// The newest message time taken and the ids taken at that time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Watermark {
    /// Message time, in the platform's unit (seconds or milliseconds).
    pub at: i64,
    /// Ids of the messages taken whose time is exactly `at`.
    #[serde(default)]
    pub seen: Vec<String>,
    /// The conversation-list cycle that wrote this cursor (see [`Moved`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
    /// Conversations the platform refused, with the number of cycles in a row it did (the
    /// cursor stays put for them, up to a limit: see `Walk::cursor`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, u32>,
}

/// When the cycle that wrote a cursor listed its first page, and where it started. A
/// conversation whose latest message is newer than `after` may have moved up the list while that
/// cycle read its later pages, past them unread: the next cycle reads it down to `floor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Moved {
    /// The cycle's first list page (platform time unit).
    pub after: i64,
    /// How far down such a conversation is read: the cycle's starting watermark time, or the
    /// cycle's before it when that one may have missed it too (see `Walk::cursor`).
    pub floor: i64,
    /// The cycle's starting watermark time (where `floor` may go back to, one cycle on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
}

impl Watermark {
    /// A watermark at `at` with nothing taken there yet (a first poll's look-back start).
    pub fn starting(at: i64) -> Watermark {
        Watermark { at, seen: Vec::new(), moved: None, refused: Default::default() }
    }

    /// Reads a stored cursor; `None` when the account was never polled.
    pub fn parse(cursor: Option<&str>) -> Result<Option<Watermark>, InputError> {
        cursor
            .map(|c| {
                serde_json::from_str(c).map_err(|_| {
                    InputError::new(InputErrorCode::InvalidValue, "the stored cursor is not a watermark")
                        .field("cursor")
                })
            })
            .transpose()
    }

    /// True if a message sent at `at` with `id` was not taken yet.
    pub fn is_new(&self, at: i64, id: &str) -> bool {
        at > self.at || (at == self.at && !self.seen.iter().any(|s| s == id))
    }

    /// Records a message as taken.
    pub fn take(&mut self, at: i64, id: &str) {
        if at > self.at {
            self.at = at;
            self.seen = vec![id.to_owned()];
        } else if at == self.at && !self.seen.iter().any(|s| s == id) {
            self.seen.push(id.to_owned());
        }
    }

    /// The cursor string.
    pub fn to_cursor(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boundary_time_is_asked_again_but_its_taken_ids_are_not_taken_twice() {
        let mut mark = Watermark::starting(100);
        mark.take(105, "a");
        mark.take(105, "b");
        mark.take(104, "old");
        let stored = mark.to_cursor();
        let again = Watermark::parse(Some(&stored)).unwrap().unwrap();
        assert_eq!(again, Watermark { seen: vec!["a".into(), "b".into()], ..Watermark::starting(105) });
        assert!(!again.is_new(105, "a"));
        assert!(again.is_new(105, "c"), "a later message of the same second is not skipped");
        assert!(again.is_new(106, "a"));
        assert!(!again.is_new(104, "x"));
    }

    #[test]
    fn a_foreign_cursor_is_an_error() {
        assert!(Watermark::parse(Some("2026-12-01T00:00:00Z")).is_err());
        assert_eq!(Watermark::parse(None).unwrap(), None);
    }
}
