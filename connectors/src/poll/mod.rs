//! Pull connectors: platform APIs polled under their published quotas.
//!
//! A [`Poller`] is pure: it builds the request for a page and parses the response into
//! inquiries, a next-page token and a new cursor. The gateway's poll runner owns the HTTP calls,
//! the governor rate limiters, backoff on throttling, and the durable cursor. Adding a poller:
//! one module, one line in [`REGISTRY`], fixtures, a config example.

mod meta_conversations;

use crate::error::InputError;
use crate::inquiry::{Channel, Inquiry};
use crate::NormalizeContext;

/// Every pull connector, by name.
pub const REGISTRY: &[&dyn Poller] = &[&meta_conversations::MetaConversations];

/// The poller registered under `name`.
pub fn find(name: &str) -> Option<&'static dyn Poller> {
    REGISTRY.iter().copied().find(|p| p.name() == name)
}

/// A platform's published request quota for one operation of one account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollQuota {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
    /// Requests per day, where the platform caps them.
    pub per_day: Option<u32>,
}

/// What is polled: one account with its credentials.
#[derive(Debug, Clone, Copy)]
pub struct PollTarget<'a> {
    /// The seller account (page id, shop id).
    pub account: &'a str,
}

/// One parsed response.
#[derive(Debug, Default)]
pub struct PollPage {
    /// New buyer messages, normalized.
    pub inquiries: Vec<Inquiry>,
    /// Items that are not buyer messages (the seller's own replies, old messages).
    pub ignored: usize,
    /// Token of the next page of this cycle, if the platform has more that may be new.
    pub next_page: Option<String>,
    /// The cursor to keep once this cycle's inquiries are durable (the newest item seen).
    pub cursor: Option<String>,
}

/// A platform API polled for buyer messages.
pub trait Poller: Sync {
    /// Name in config and metrics.
    fn name(&self) -> &'static str;

    /// Channel of the inquiries it produces.
    fn channel(&self) -> Channel;

    /// The operation polled (the last part of the rate-limit key).
    fn operation(&self) -> &'static str;

    /// The published quota of that operation, per account.
    fn default_quota(&self) -> PollQuota;

    /// Path and query of the request for `page` (None: the first page) after `cursor`.
    fn request(&self, target: &PollTarget<'_>, cursor: Option<&str>, page: Option<&str>) -> String;

    /// True if a response says the caller is over its quota.
    fn is_throttled(&self, status: u16, body: &[u8]) -> bool;

    /// Parses a successful response.
    fn parse<'c>(
        &self,
        body: &[u8],
        target: &PollTarget<'_>,
        cursor: Option<&str>,
        context: &mut dyn FnMut() -> NormalizeContext<'c>,
    ) -> Result<PollPage, InputError>;
}
