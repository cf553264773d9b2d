//! A polling cycle over a conversation list, then the messages of each conversation that may
//! hold new ones (Shopee seller chat, TikTok Shop customer service). The work list travels in
//! the page token as JSON, so the poller stays pure:
//!
//! 1. The first page of a cycle lists conversations, newest first. Each conversation whose latest
//!    message is not older than the cursor goes on the work list; the listing stops at the first
//!    conversation older than the cursor (or when the platform has no more).
//! 2. Each listed conversation is read newest message first, page by page, until a message older
//!    than the cursor or the conversation's end; then the next one; then the next list page.
//!
//! `since` is the cycle's starting watermark (the durable cursor, or the look-back start of a
//! first poll); `mark` grows with every buyer message taken and is returned as the cursor of
//! every page, so the cursor the runner keeps with the cycle's last page covers the whole cycle.
//!
//! Lists page by offset or by time: a conversation that gets a new message while the cycle reads
//! its list moves to the top, past the pages still to read, and an older unread message in it
//! would be missed. The cursor therefore remembers when its cycle listed and where it started
//! ([`Moved`]); the next cycle reads a conversation whose latest message is newer than that
//! listing down to that start (what it takes twice, dedup drops).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::watermark::{Moved, Watermark};
use crate::error::{InputError, InputErrorCode};

/// How far back a never-polled account is read, in seconds (7 days).
pub(crate) const FIRST_POLL_LOOKBACK_SECONDS: i64 = 7 * 86_400;

/// Where a cycle stands; serialized as the page token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Walk {
    /// Token of the next conversation-list page (`None`: the first list page).
    pub list_page: Option<String>,
    /// The conversation list has been read to its end or to a conversation older than `since`.
    pub list_done: bool,
    /// Conversations still to read; the first is being read.
    pub todo: VecDeque<String>,
    /// Page token inside the first conversation (`None`: its newest page).
    pub inner_page: Option<String>,
    /// The cycle's starting watermark: messages not newer than it were taken before.
    pub since: Watermark,
    /// The watermark after what this cycle took so far.
    pub mark: Watermark,
    /// When the cycle listed its first page (Unix seconds): conversations not on that list may
    /// get messages later, so the cursor never goes past this time (less [`super::LOOKBACK`]).
    #[serde(default)]
    pub listed_at: i64,
    /// A conversation could not be read this cycle: the cursor stays where the cycle started, so
    /// the next cycle reads it again (what was taken meanwhile is dropped by dedup).
    #[serde(default)]
    pub failed: bool,
    /// The buyer of each conversation still to read, where the list names it (TikTok Shop: the
    /// shop's own messages do not say whom they answer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buyers: BTreeMap<String, String>,
    /// Conversations that moved up the list during the cycle before (see the module doc): read
    /// down to that cycle's start.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub moved: std::collections::BTreeSet<String>,
    /// Conversations the platform refused in this cycle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Conversation-list pages read so far in this cycle.
    #[serde(default)]
    pub list_pages: u32,
}

/// Cycles in a row a conversation may be refused before the cursor moves on without it: a
/// conversation refused for good (deleted, blocked) must not hold the cursor, or every cycle
/// would read a longer stretch of history than the last.
pub(crate) const MAX_REFUSALS: u32 = 3;

/// The call a cycle makes next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// A conversation-list page (`None`: the first).
    List(Option<&'a str>),
    /// A page of one conversation's messages (`None`: the newest).
    Messages { conversation: &'a str, page: Option<&'a str> },
}

impl Walk {
    /// The cycle state for a request or response at `page` (the page token), starting from the
    /// durable `cursor`; a never-polled account starts `now_seconds - 7 days`.
    pub fn resume(cursor: Option<&str>, page: Option<&str>, now_seconds: i64) -> Result<Walk, InputError> {
        if let Some(token) = page {
            return serde_json::from_str(token).map_err(|_| {
                InputError::new(InputErrorCode::InvalidValue, "the page token is not a cycle state").field("page")
            });
        }
        let since =
            Watermark::parse(cursor)?.unwrap_or_else(|| Watermark::starting(now_seconds - FIRST_POLL_LOOKBACK_SECONDS));
        Ok(Walk {
            list_page: None,
            list_done: false,
            todo: VecDeque::new(),
            inner_page: None,
            mark: since.clone(),
            since,
            listed_at: now_seconds,
            failed: false,
            buyers: BTreeMap::new(),
            moved: Default::default(),
            refused: Vec::new(),
            list_pages: 0,
        })
    }

    /// Like [`Walk::resume`], but a page token or cursor this poller did not write starts the
    /// cycle again (from the cursor when only the token is unreadable, else 7 days back): the
    /// request and the parse of its answer must follow the same state, or a bad cursor would fail
    /// every cycle.
    pub fn resume_or_restart(cursor: Option<&str>, page: Option<&str>, now_seconds: i64) -> Walk {
        Walk::resume(cursor, page, now_seconds)
            .or_else(|_| Walk::resume(cursor, None, now_seconds))
            .or_else(|_| Walk::resume(None, None, now_seconds))
            .expect("a cycle without cursor or token always starts")
    }

    /// The call to make now.
    pub fn step(&self) -> Step<'_> {
        match self.todo.front() {
            Some(conversation) => Step::Messages { conversation, page: self.inner_page.as_deref() },
            None => Step::List(self.list_page.as_deref()),
        }
    }

    /// Takes in one conversation-list page: `(conversation id, latest message time in seconds)`,
    /// newest first, and the platform's next-page token (`None` or empty: no more).
    pub fn listed(&mut self, conversations: impl IntoIterator<Item = (String, i64)>, next: Option<String>) {
        let mut reached_old = false;
        for (id, latest) in conversations {
            if latest < self.since.at {
                reached_old = true;
                break;
            }
            if self.since.moved.is_some_and(|moved| latest > moved.after) {
                self.moved.insert(id.clone());
            }
            if !self.todo.contains(&id) {
                self.todo.push_back(id);
            }
        }
        self.list_pages += 1;
        let next = next.filter(|n| !n.is_empty());
        self.list_done = reached_old || next.is_none();
        self.list_page = if self.list_done { None } else { next };
    }

    /// Notes the buyer of a conversation still to read.
    pub fn note_buyer(&mut self, conversation: &str, buyer: String) {
        if self.todo.iter().any(|c| c == conversation) {
            self.buyers.insert(conversation.to_owned(), buyer);
        }
    }

    /// The buyer of `conversation`, when its list entry named one.
    pub fn buyer_of(&self, conversation: &str) -> Option<&str> {
        self.buyers.get(conversation).map(String::as_str)
    }

    /// Takes in one page of the current conversation: whether it reached a message older than the
    /// cycle's start, and the platform's next-page token (`None` or empty: no more).
    pub fn read(&mut self, reached_old: bool, next: Option<String>) {
        match next.filter(|n| !n.is_empty() && !reached_old) {
            Some(next) => self.inner_page = Some(next),
            None => self.done_with_conversation(),
        }
    }

    fn done_with_conversation(&mut self) {
        if let Some(conversation) = self.todo.pop_front() {
            self.buyers.remove(&conversation);
            self.moved.remove(&conversation);
        }
        self.inner_page = None;
    }

    /// True if a message of `conversation` sent at `at` with `id` is to be taken: newer than the
    /// cycle's start, or, in a conversation that moved up the list during the cycle before, not
    /// older than that cycle's start.
    pub fn is_new(&self, conversation: &str, at: i64, id: &str) -> bool {
        match self.floor_of(conversation) {
            Some(floor) => at >= floor,
            None => self.since.is_new(at, id),
        }
    }

    /// True if a message of `conversation` sent at `at` is older than what the cycle reads of it:
    /// the conversation's older pages need not be read.
    pub fn is_old(&self, conversation: &str, at: i64) -> bool {
        at < self.floor_of(conversation).unwrap_or(self.since.at)
    }

    /// How far down a conversation that moved is read.
    fn floor_of(&self, conversation: &str) -> Option<i64> {
        let floor = self.since.moved.map(|moved| moved.floor)?;
        (self.moved.contains(conversation) && floor < self.since.at).then_some(floor)
    }

    /// Gives up on the conversation being read (the platform refused it): the cycle goes on with
    /// the others, and its cursor stays where it started.
    pub fn skip_conversation(&mut self) {
        self.failed = true;
        if let Some(conversation) = self.todo.front() {
            self.refused.push(conversation.clone());
        }
        self.done_with_conversation();
    }

    /// Records a message newer than the cycle's start as seen (taken or ignored), so the cursor
    /// moves past the seller's own messages too.
    pub fn saw(&mut self, at: i64, id: &str) {
        self.mark.take(at, id);
    }

    /// The cursor to keep: what the cycle saw, but never past the time of its first list page less
    /// the look-back (a conversation not on that list may hold a message from before), never
    /// before where it started, and where it started when a conversation could not be read.
    pub fn cursor(&self) -> String {
        let cap = self.listed_at - super::LOOKBACK.whole_seconds();
        // A refused conversation holds the cursor where the cycle started, for MAX_REFUSALS
        // cycles in a row; then it is given up (what it held is not read).
        let strikes: BTreeMap<String, u32> =
            self.refused.iter().map(|c| (c.clone(), self.since.refused.get(c).copied().unwrap_or(0) + 1)).collect();
        let held = self.failed && (strikes.is_empty() || strikes.values().any(|n| *n < MAX_REFUSALS));
        if held || cap <= self.since.at {
            let mut kept = self.since.clone();
            if self.failed {
                kept.refused = strikes;
            }
            return kept.to_cursor();
        }
        let mut cursor = if self.mark.at > cap { Watermark::starting(cap) } else { self.mark.clone() };
        // Given up (or none refused: empty): their counts stay, so that refused again they do not
        // hold the cursor anew.
        cursor.refused = strikes;
        // The platform's clock may run behind ours: a message it stamps a little before our
        // listing time (less the look-back, `cap`) may still have come after it. A listing of
        // several pages may have missed, again, a conversation the cycle before missed the same
        // way: the floor then goes back to that cycle's start (one cycle, never further).
        let floor = match self.since.moved {
            Some(moved) if self.list_pages > 1 => moved.start.unwrap_or(moved.floor).min(self.since.at),
            _ => self.since.at,
        };
        cursor.moved = Some(Moved { after: cap, floor, start: Some(self.since.at) });
        cursor.to_cursor()
    }

    /// The answer to an HTTP refusal (`status`) of the request at `position`: when it refused one
    /// conversation's messages (400, 403, 404), the cycle goes on without it and keeps its
    /// starting cursor ([`Walk::skip_conversation`]); anything else is asked again.
    pub fn step_over(status: u16, position: &super::PollPosition<'_>, now_seconds: i64) -> Option<super::PollPage> {
        let mut walk = Walk::resume_or_restart(position.cursor, position.page, now_seconds);
        if !matches!(status, 400 | 403 | 404) || !matches!(walk.step(), Step::Messages { .. }) {
            return None;
        }
        walk.skip_conversation();
        Some(super::PollPage {
            ignored: 1,
            refused: Some(format!("a conversation: HTTP {status}")),
            next_page: walk.next_token(),
            cursor: Some(walk.cursor()),
            ..Default::default()
        })
    }

    /// The token of the next page, or `None` when the cycle is complete.
    pub fn next_token(&self) -> Option<String> {
        (!self.todo.is_empty() || !self.list_done).then(|| serde_json::to_string(self).unwrap_or_default())
    }
}

/// Seconds from a platform time given in seconds, milliseconds, microseconds or nanoseconds.
pub(crate) fn to_seconds(value: i64) -> i64 {
    match value.unsigned_abs() {
        v if v >= 100_000_000_000_000_000 => value / 1_000_000_000,
        v if v >= 100_000_000_000_000 => value / 1_000_000,
        v if v >= 100_000_000_000 => value / 1_000,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_lists_then_reads_each_new_conversation_then_lists_on() {
        let cursor = Watermark::starting(1_000).to_cursor();
        let mut walk = Walk::resume(Some(&cursor), None, 5_000).unwrap();
        assert_eq!(walk.step(), Step::List(None));
        walk.listed([("a".to_owned(), 1_200), ("b".to_owned(), 1_000)], Some("p2".to_owned()));
        assert_eq!(walk.step(), Step::Messages { conversation: "a", page: None });
        walk.read(false, Some("a2".to_owned()));
        assert_eq!(walk.step(), Step::Messages { conversation: "a", page: Some("a2") });
        walk.read(true, Some("a3".to_owned()));
        assert_eq!(walk.step(), Step::Messages { conversation: "b", page: None });
        walk.read(false, None);
        assert_eq!(walk.step(), Step::List(Some("p2")));
        let walk: Walk = serde_json::from_str(&walk.next_token().unwrap()).unwrap();
        let mut walk = walk;
        walk.listed([("c".to_owned(), 999)], Some("p3".to_owned()));
        assert_eq!(walk.next_token(), None, "a conversation older than the cursor ends the listing");
    }

    #[test]
    fn a_conversations_buyer_travels_with_the_work_list_until_it_is_read() {
        let mut walk = Walk::resume(Some(&Watermark::starting(1_000).to_cursor()), None, 5_000).unwrap();
        walk.listed([("a".to_owned(), 1_200), ("b".to_owned(), 1_100), ("old".to_owned(), 900)], None);
        for (conversation, buyer) in [("a", "buyer-a"), ("b", "buyer-b"), ("old", "buyer-old")] {
            walk.note_buyer(conversation, buyer.to_owned());
        }
        assert_eq!(walk.buyer_of("old"), None, "only conversations still to read");
        let mut walk: Walk = serde_json::from_str(&walk.next_token().unwrap()).unwrap();
        assert_eq!((walk.buyer_of("a"), walk.buyer_of("b")), (Some("buyer-a"), Some("buyer-b")));
        walk.read(false, None);
        assert_eq!((walk.buyer_of("a"), walk.buyer_of("b")), (None, Some("buyer-b")), "dropped once read");
        walk.skip_conversation();
        assert!(walk.buyers.is_empty());
    }

    #[test]
    fn the_cursor_stops_before_the_first_list_and_stays_put_after_a_failure() {
        let cursor = Watermark::starting(1_000).to_cursor();
        let mut walk = Walk::resume(Some(&cursor), None, 5_000).unwrap();
        walk.saw(4_990, "late");
        let capped = Watermark {
            moved: Some(Moved { after: 5_000 - 60, floor: 1_000, start: Some(1_000) }),
            ..Watermark::starting(5_000 - 60)
        };
        assert_eq!(walk.cursor(), capped.to_cursor(), "capped at the list time less a minute");
        walk.saw(1_200, "m");
        let mut early = Walk::resume(Some(&cursor), None, 5_000).unwrap();
        early.saw(2_000, "m");
        let moved = Some(Moved { after: early.listed_at - 60, floor: early.since.at, start: Some(early.since.at) });
        assert_eq!(
            early.cursor(),
            Watermark { seen: vec!["m".into()], moved, ..Watermark::starting(2_000) }.to_cursor()
        );
        early.listed([("a".to_owned(), 2_000)], None);
        early.skip_conversation();
        let kept = Watermark::parse(Some(&early.cursor())).unwrap().unwrap();
        assert_eq!(kept.at, 1_000, "a conversation that failed keeps the cycle's start");
        assert_eq!(kept.refused.get("a"), Some(&1));
        assert_eq!(early.next_token(), None);
    }

    #[test]
    fn a_conversation_that_moved_up_the_list_during_a_cycle_is_read_down_to_its_start() {
        // Cycle 1 starts at 1,000 and lists at 5,000: page 1 holds "a"; "x" (latest message at
        // 1,500, unread) was on page 2, but a buyer wrote in it at 5,010 while page 1 was read,
        // so it moved to the top and page 2 no longer has it.
        let mut first = Walk::resume(Some(&Watermark::starting(1_000).to_cursor()), None, 5_000).unwrap();
        first.listed([("a".to_owned(), 4_000)], Some("p2".to_owned()));
        assert!(first.is_new("a", 4_000, "a1"));
        first.saw(4_000, "a1");
        first.read(true, None);
        first.listed([("b".to_owned(), 900)], None);
        let cursor = first.cursor();
        assert_eq!(Watermark::parse(Some(&cursor)).unwrap().unwrap().at, 4_000);

        // Cycle 2 lists "x" (latest 5,010, after cycle 1 listed) and "a" (no new message).
        let mut second = Walk::resume(Some(&cursor), None, 6_000).unwrap();
        second.listed([("x".to_owned(), 5_010), ("a".to_owned(), 4_000)], None);
        assert!(second.is_new("x", 5_010, "x2"));
        assert!(second.is_new("x", 1_500, "x1"), "the message cycle 1 missed is taken");
        assert!(!second.is_old("x", 1_500), "so the conversation is read on down to 1,000");
        assert!(second.is_old("x", 999));
        // A conversation that did not move is read down to the cursor only, as before.
        assert!(!second.is_new("a", 3_000, "a0") && second.is_old("a", 3_000));
        // Once read, the next cycle no longer goes back for it.
        second.saw(5_010, "x2");
        second.read(true, None);
        second.read(true, None);
        let mut third = Walk::resume(Some(&second.cursor()), None, 7_000).unwrap();
        third.listed([("x".to_owned(), 5_010)], None);
        assert!(third.moved.is_empty() && !third.is_new("x", 1_500, "x1"));
    }

    #[test]
    fn a_conversation_missed_by_two_multi_page_listings_in_a_row_is_still_read_down_to_its_message() {
        // "y" has an unread message at 4,600 and sits on page 2; in cycles 1 and 2 a buyer writes
        // in it while page 1 is read, so it moves to the top and neither listing has it.
        let missing_y = |cursor: &str, now: i64| {
            let mut walk = Walk::resume(Some(cursor), None, now).unwrap();
            walk.listed([("a".to_owned(), now - 100)], Some("p2".to_owned()));
            walk.saw(now - 100, &format!("a{now}"));
            walk.read(true, None);
            walk.listed([("b".to_owned(), now - 200)], None);
            walk.cursor()
        };
        let first = missing_y(&Watermark::starting(4_500).to_cursor(), 5_000);
        let second = missing_y(&first, 5_100);
        // Cycle 3 lists "y" (moved: its latest is after cycle 2 listed) on one page.
        let mut third = Walk::resume(Some(&second), None, 5_200).unwrap();
        third.listed([("y".to_owned(), 5_190)], None);
        assert!(third.is_new("y", 4_600, "y1"), "the message both listings missed is taken");
        assert!(!third.is_old("y", 4_600));
        // After a listing of one page nothing was missed: the floor moves on.
        third.saw(5_190, "y2");
        third.read(true, None);
        let mut fourth = Walk::resume(Some(&third.cursor()), None, 5_300).unwrap();
        fourth.listed([("y".to_owned(), 5_295)], None);
        assert!(fourth.is_old("y", 4_600));
        // The floor goes back one cycle, never further: a third miss in a row reads down to the
        // second cycle's start, not the first's (however long the cycles take).
        let first_start = 4_500;
        let third = missing_y(&missing_y(&first, 20_000), 21_000);
        let moved = Watermark::parse(Some(&third)).unwrap().unwrap().moved.unwrap();
        assert!(moved.floor > first_start, "{moved:?}");
        assert_eq!(
            moved.floor,
            Watermark::parse(Some(&missing_y(&first, 20_000))).unwrap().unwrap().moved.unwrap().start.unwrap()
        );
    }

    #[test]
    fn a_conversation_refused_cycle_after_cycle_holds_the_cursor_three_times_then_not() {
        let mut cursor = Watermark::starting(1_000).to_cursor();
        for cycle in 1..=MAX_REFUSALS + 2 {
            let mut walk = Walk::resume(Some(&cursor), None, 5_000 + i64::from(cycle)).unwrap();
            walk.listed([("gone".to_owned(), 2_000), ("ok".to_owned(), 1_900)], None);
            walk.skip_conversation();
            walk.saw(1_900, "m");
            walk.read(true, None);
            cursor = walk.cursor();
            let kept = Watermark::parse(Some(&cursor)).unwrap().unwrap();
            if cycle < MAX_REFUSALS {
                assert_eq!((kept.at, kept.refused.get("gone")), (1_000, Some(&cycle)), "cycle {cycle} holds");
            } else {
                // Given up: the cursor moves on, and refused again the conversation holds it no more.
                assert_eq!((kept.at, kept.refused.get("gone")), (1_900, Some(&cycle)), "cycle {cycle} moves on");
            }
        }
    }

    #[test]
    fn a_refused_conversation_is_stepped_over_and_a_refused_list_asked_again() {
        let cursor = Watermark::starting(1_000).to_cursor();
        let mut walk = Walk::resume(Some(&cursor), None, 5_000).unwrap();
        walk.listed([("a".to_owned(), 1_200), ("b".to_owned(), 1_100)], None);
        let token = walk.next_token().unwrap();
        let reading_a = super::super::PollPosition { cursor: Some(&cursor), page: Some(&token) };
        let page = Walk::step_over(404, &reading_a, 5_000).expect("a gone conversation is stepped over");
        let kept = Watermark::parse(page.cursor.as_deref()).unwrap().unwrap();
        assert_eq!((page.ignored, kept.at, kept.refused.get("a")), (1, 1_000, Some(&1)), "the cycle's start is kept");
        let next = Walk::resume(Some(&cursor), page.next_page.as_deref(), 5_000).unwrap();
        assert_eq!(next.step(), Step::Messages { conversation: "b", page: None });
        assert!(Walk::step_over(500, &reading_a, 5_000).is_none(), "a server error is asked again");
        let listing = super::super::PollPosition { cursor: Some(&cursor), page: None };
        assert!(Walk::step_over(404, &listing, 5_000).is_none(), "a refused list is asked again");
    }

    #[test]
    fn a_first_poll_looks_back_seven_days_and_times_are_normalized() {
        let walk = Walk::resume(None, None, 1_000_000).unwrap();
        assert_eq!(walk.since.at, 1_000_000 - 7 * 86_400);
        assert_eq!(to_seconds(1_764_748_680), 1_764_748_680);
        assert_eq!(to_seconds(1_764_748_680_123), 1_764_748_680);
        assert_eq!(to_seconds(1_764_748_680_123_456_789), 1_764_748_680);
        assert!(Walk::resume(None, Some("not json"), 0).is_err());
        let cursor = Watermark::starting(1_000).to_cursor();
        assert_eq!(Walk::resume_or_restart(Some(&cursor), Some("not json"), 5_000).since.at, 1_000, "the cursor kept");
        assert_eq!(Walk::resume_or_restart(Some("garbage"), None, 1_000_000).since.at, 1_000_000 - 7 * 86_400);
    }
}
