//! SDK for inquiry-gateway routing plugins: write a [`Router`], export it with [`export_router!`],
//! build for `wasm32-unknown-unknown` (or `wasm32-wasip1`), and the gateway runs it in its sandbox.
//!
//! The ABI (v1) is documented in `docs/plugin-abi.md`; [`wire`] is its encoding, shared with the
//! gateway so both ends read and write the same bytes. [`Host`] is what a plugin may ask the
//! gateway (logging, counters, the clock, agent lookups, a key-value map, the plugin's own
//! settings); the gateway grants each capability per plugin in its configuration.
//!
//! ```ignore
//! use inquiry_plugin_sdk::{export_router, Host, Inquiry, Outcome, Priority, Route};
//!
//! fn route(inquiry: &Inquiry, _host: &dyn Host) -> Outcome {
//!     if inquiry.buyer_country == "DE" {
//!         return Outcome::Route(Route::to_queue("eu-sales").priority(Priority::High));
//!     }
//!     Outcome::Undecided
//! }
//! export_router!(route);
//! ```

use std::borrow::Cow;

pub mod wire;

mod host;
mod keywords;
#[cfg(target_arch = "wasm32")]
pub use host::Imports;
pub use host::{Agent, AgentView, Agents, Host, LogLevel, Settings};
pub use keywords::Keywords;

/// The ABI version this SDK speaks; returned by the plugin's `igw_abi_version` export.
pub const ABI_VERSION: u32 = 1;

/// One inquiry as a plugin sees it: borrowed views into the batch the gateway sent.
///
/// Absent optional values are empty strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inquiry<'a> {
    /// Inquiry id (UUID text).
    pub id: &'a str,
    /// Channel wire name: `whatsapp`, `shopify`, `email`, `generic`...
    pub channel: &'a str,
    /// Seller account (shop, page, mailbox).
    pub account: &'a str,
    /// The platform's message id.
    pub message_id: &'a str,
    /// The platform's conversation id.
    pub conversation_id: &'a str,
    /// Buyer pseudonym (`bp_...`); never personal data.
    pub buyer_pseudonym: &'a str,
    /// ISO 3166-1 alpha-2 country, upper case.
    pub buyer_country: &'a str,
    /// BCP 47 language tag, primary subtag lower case.
    pub buyer_language: &'a str,
    /// Data-residency region: `eu` or `other`.
    pub region: &'a str,
    /// Subject line.
    pub subject: &'a str,
    /// Message text.
    pub body: &'a str,
    /// Order reference.
    pub order_id: &'a str,
    /// Product references, one per line.
    pub product_ids: &'a str,
    /// Channel attributes, one `key=value` per line (non-string values as JSON text).
    pub attributes: &'a str,
    /// When the buyer sent it (RFC 3339).
    pub occurred_at: &'a str,
    /// When the gateway received it (RFC 3339).
    pub received_at: &'a str,
}

impl<'a> Inquiry<'a> {
    /// The product references.
    pub fn product_ids(&self) -> impl Iterator<Item = &'a str> {
        self.product_ids.split('\n').filter(|p| !p.is_empty())
    }

    /// The value of attribute `key`, if present.
    pub fn attribute(&self, key: &str) -> Option<&'a str> {
        if key.contains('=') {
            return None; // Keys end at the first `=` of their line.
        }
        // Byte by byte: in WebAssembly, `split` and `split_once` cost more than the short lines.
        let mut rest = self.attributes;
        while !rest.is_empty() {
            let end = rest.bytes().position(|b| b == b'\n').unwrap_or(rest.len());
            let line = &rest[..end];
            if line.len() > key.len() && line.as_bytes()[key.len()] == b'=' && line.starts_with(key) {
                return Some(&line[key.len() + 1..]);
            }
            rest = &rest[(end + 1).min(rest.len())..];
        }
        None
    }
}

/// Priority label of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Answer when convenient.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Answer before normal work.
    High,
    /// Answer now.
    Urgent,
}

impl Priority {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Priority> {
        Some(match name {
            "low" => Priority::Low,
            "normal" => Priority::Normal,
            "high" => Priority::High,
            "urgent" => Priority::Urgent,
            _ => return None,
        })
    }
}

/// A decision's text: a `&'static str` costs no allocation (most queue names, tags and policies
/// are constants), a `String` is taken as it is. `"eu-sales".into()` and `name.into()` both work.
pub type Text = Cow<'static, str>;

/// A routing decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Queue (team) that handles the inquiry; must not be empty.
    pub queue: Text,
    /// Agent assigned, if any.
    pub assignee: Option<Text>,
    /// Priority label.
    pub priority: Priority,
    /// Tags for the helpdesk.
    pub tags: Vec<Text>,
    /// Language the reply should be written in.
    pub language: Option<Text>,
    /// Reply template of the auto-acknowledgement.
    pub reply_template: Option<Text>,
    /// First-response SLA policy.
    pub sla_policy: Option<Text>,
    /// When set, the inquiry is kept but not delivered: spam, for this reason.
    pub spam_reason: Option<Text>,
}

impl Route {
    /// A decision for `queue` with normal priority and nothing else set.
    pub fn to_queue(queue: impl Into<Text>) -> Route {
        Route { queue: queue.into(), ..Route::default() }
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Route {
        self.priority = priority;
        self
    }
}

/// A plugin's answer for one inquiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin decided.
    Route(Route),
    /// No opinion: the next plugin of the chain, or the gateway's fallback route, decides.
    Undecided,
    /// The plugin failed on this inquiry (the gateway takes the fallback route and dead-letters it).
    Failed(String),
}

/// A routing function: one inquiry in, one outcome out.
pub type RouteFn = fn(&Inquiry<'_>, &dyn Host) -> Outcome;

/// Routes one encoded batch with `route` and returns the encoded results (what the `igw_route`
/// export does; also usable natively, for tests and benchmarks).
pub fn route_batch(input: &[u8], route: RouteFn, host: &dyn Host, out: &mut Vec<u8>) -> Result<(), wire::WireError> {
    let batch = wire::decode_batch(input)?;
    route_decoded(&batch, route, host, out);
    Ok(())
}

/// Routes a decoded batch with `route`, appending the encoded results to `out`.
pub fn route_decoded(batch: &[Inquiry<'_>], route: RouteFn, host: &dyn Host, out: &mut Vec<u8>) {
    let mut writer = wire::ResultWriter::new(out, batch.len());
    for inquiry in batch {
        writer.push(&route(inquiry, host));
    }
}

/// Exports `igw_abi_version`, `igw_alloc` and `igw_route` for a routing function
/// `fn(&Inquiry, &dyn Host) -> Outcome`. Use once, in the plugin's `lib.rs`.
#[macro_export]
macro_rules! export_router {
    ($route:path) => {
        #[cfg(target_arch = "wasm32")]
        mod __igw_exports {
            #[allow(unused_imports)]
            use super::*;

            static mut INPUT: ::std::vec::Vec<u8> = ::std::vec::Vec::new();
            static mut OUTPUT: ::std::vec::Vec<u8> = ::std::vec::Vec::new();

            #[no_mangle]
            pub extern "C" fn igw_abi_version() -> u32 {
                $crate::ABI_VERSION
            }

            /// Gives the host a buffer of `len` bytes for the next batch.
            #[no_mangle]
            pub extern "C" fn igw_alloc(len: u32) -> *mut u8 {
                // SAFETY: wasm32 plugins are single-threaded and the host calls one export at a time.
                let input = unsafe { &mut *::core::ptr::addr_of_mut!(INPUT) };
                input.clear();
                input.resize(len as usize, 0);
                input.as_mut_ptr()
            }

            /// Routes the batch in the buffer; returns `(out_ptr << 32) | out_len`, or -1.
            #[no_mangle]
            pub extern "C" fn igw_route(ptr: *const u8, len: u32) -> i64 {
                // SAFETY: `ptr` is the buffer returned by `igw_alloc`, `len` bytes long.
                let input = unsafe { ::core::slice::from_raw_parts(ptr, len as usize) };
                let output = unsafe { &mut *::core::ptr::addr_of_mut!(OUTPUT) };
                output.clear();
                // SAFETY: the gateway writes only UTF-8 strings into batches.
                match unsafe { $crate::wire::decode_batch_trusted(input) } {
                    Ok(batch) => {
                        $crate::route_decoded(&batch, $route, &$crate::Imports, output);
                        ((output.as_ptr() as i64) << 32) | output.len() as i64
                    }
                    Err(_) => -1,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_by_their_whole_key() {
        let inquiry = Inquiry { attributes: "tier=vip\ncustomer_tier=gold\nempty=\nlast=x=y", ..Inquiry::default() };
        assert_eq!(inquiry.attribute("customer_tier"), Some("gold"));
        assert_eq!(inquiry.attribute("tier"), Some("vip"));
        assert_eq!(inquiry.attribute("empty"), Some(""));
        assert_eq!(inquiry.attribute("last"), Some("x=y"));
        assert_eq!(inquiry.attribute("last=x"), None);
        assert_eq!(inquiry.attribute("tie"), None);
        assert_eq!(inquiry.attribute(""), None);
        assert_eq!(Inquiry::default().attribute("tier"), None);
    }

    #[test]
    fn settings_round_trip_and_are_looked_up_by_key() {
        let mut encoded = Vec::new();
        wire::encode_settings(
            &mut encoded,
            [("team", "eu-sales"), ("vip_min", "500"), ("flags", "[\"a\"]")].into_iter(),
        );
        let settings = Settings::decode(&encoded);
        assert_eq!(settings.len(), 3);
        assert_eq!(settings.get("team"), Some("eu-sales"));
        assert_eq!(settings.get("vip_min"), Some("500"));
        assert_eq!(settings.get("flags"), Some("[\"a\"]"));
        assert_eq!(settings.get("missing"), None);
        let keys: Vec<&str> = settings.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["flags", "team", "vip_min"], "sorted by key");
        assert!(Settings::decode(&encoded[..encoded.len() - 1]).is_empty(), "a truncated list reads as none");
        // Cut at a field boundary (before the last value): still none, not an empty value.
        let cut = encoded.len() - 4 - "[\"a\"]".len();
        assert!(Settings::decode(&encoded[..cut]).is_empty(), "cut before the last value: none");
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(Settings::decode(&longer).is_empty(), "bytes after the list: none");
        assert!(Settings::decode(&u32::MAX.to_le_bytes()).is_empty(), "a count with nothing behind it: none");
        assert!(Settings::decode(&[]).is_empty());
        let later_wins = Settings::from_pairs([("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!((later_wins.get("a"), later_wins.len()), (Some("3"), 2));
    }
}
