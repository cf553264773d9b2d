//! The ABI v1 encoding (docs/plugin-abi.md), shared by the gateway and the Rust SDK.
//!
//! Everything is little-endian. A *string* is a `u32` byte length and that many UTF-8 bytes. A
//! *record* is a `u32` byte length and that many bytes of strings; a reader takes the strings it
//! knows and skips the rest of the record, so later ABI minors may append fields.
//!
//! - batch (host to plugin): `u32 abi_version`, `u32 count`, `count` inquiry records of
//!   [`INQUIRY_FIELDS`] strings each.
//! - results (plugin to host): `u32 count`, then per inquiry, in order, a record whose first byte is
//!   the status (0 route, 1 undecided, 2 failed) followed by strings: for a route
//!   [`ROUTE_FIELDS`], for a failure one detail string.
//! - agents (host to plugin): `u32 count`, then per agent a string (id) and `u32 load`,
//!   `u32 capacity`, `u32 online`.

use crate::{Agent, AgentView, Inquiry, Outcome, Priority, Route, ABI_VERSION};

/// Order of the strings of an inquiry record.
pub const INQUIRY_FIELDS: [&str; 16] = [
    "id",
    "channel",
    "account",
    "message_id",
    "conversation_id",
    "buyer_pseudonym",
    "buyer_country",
    "buyer_language",
    "region",
    "subject",
    "body",
    "order_id",
    "product_ids",
    "attributes",
    "occurred_at",
    "received_at",
];

/// Order of the strings of a route result.
pub const ROUTE_FIELDS: [&str; 8] =
    ["queue", "assignee", "priority", "tags", "language", "reply_template", "sla_policy", "spam_reason"];

/// Status byte of a route result.
pub const STATUS_ROUTE: u8 = 0;
/// Most tags a route may carry (docs/plugin-abi.md); decoding stops at the first one past it, so
/// a result of megabytes of empty-ish tags never becomes millions of strings.
pub const MAX_TAGS: usize = 32;
/// Status byte of an undecided result.
pub const STATUS_UNDECIDED: u8 = 1;
/// Status byte of a failed result.
pub const STATUS_FAILED: u8 = 2;

/// Why bytes are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The data ends inside a length or a value.
    Truncated,
    /// A string is not UTF-8.
    NotUtf8,
    /// The batch was written for another ABI version.
    Version(u32),
    /// The results hold another number of records than the batch.
    Count {
        /// Records in the batch.
        expected: usize,
        /// Records in the results.
        found: usize,
    },
    /// A result record is malformed: unknown status, empty queue, unknown priority.
    Invalid(&'static str),
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("data ends inside a value"),
            WireError::NotUtf8 => f.write_str("string is not utf-8"),
            WireError::Version(v) => write!(f, "abi version {v} is not {ABI_VERSION}"),
            WireError::Count { expected, found } => write!(f, "{found} results for {expected} inquiries"),
            WireError::Invalid(what) => write!(f, "invalid result: {what}"),
        }
    }
}

/// Reads the primitives of the encoding from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Takes `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.data.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    /// Takes a `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }

    /// Takes a string's bytes; an exhausted record reads as empty (fields appended later).
    fn field(&mut self) -> Result<&'a [u8], WireError> {
        if self.data.is_empty() {
            return Ok(&[]);
        }
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    /// Takes a string; an exhausted record reads as the empty string (fields appended later).
    pub fn str(&mut self) -> Result<&'a str, WireError> {
        core::str::from_utf8(self.field()?).map_err(|_| WireError::NotUtf8)
    }

    /// Takes a string without checking that it is UTF-8, for data the gateway wrote (it only
    /// writes Rust strings).
    ///
    /// # Safety
    /// The bytes must be UTF-8.
    unsafe fn str_trusted(&mut self) -> Result<&'a str, WireError> {
        // SAFETY: guaranteed by the caller.
        Ok(unsafe { core::str::from_utf8_unchecked(self.field()?) })
    }

    /// Takes a record and returns a reader over its bytes.
    pub fn record(&mut self) -> Result<Reader<'a>, WireError> {
        let len = self.u32()? as usize;
        Ok(Reader::new(self.bytes(len)?))
    }
}

/// Appends a string.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Starts a record; returns the position to pass to [`end_record`].
pub fn begin_record(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; 4]);
    out.len()
}

/// Ends the record begun at `start` by writing its length.
pub fn end_record(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start - 4..start].copy_from_slice(&len.to_le_bytes());
}

/// Starts a batch of `count` inquiries (host side); append each with [`put_inquiry`].
pub fn begin_batch(out: &mut Vec<u8>, count: usize) {
    out.extend_from_slice(&ABI_VERSION.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

/// Appends one inquiry record; `fields` are in [`INQUIRY_FIELDS`] order.
pub fn put_inquiry(out: &mut Vec<u8>, fields: &[&str; 16]) {
    let start = begin_record(out);
    for field in fields {
        put_str(out, field);
    }
    end_record(out, start);
}

/// Decodes a batch (plugin side), checking that every string is UTF-8.
pub fn decode_batch(data: &[u8]) -> Result<Vec<Inquiry<'_>>, WireError> {
    if !strings_are_utf8(data)? {
        return Err(WireError::NotUtf8);
    }
    // SAFETY: every string was checked above.
    unsafe { decode_batch_trusted(data) }
}

/// Decodes a batch the gateway wrote, without checking the strings for UTF-8 again (the
/// gateway encodes Rust strings only); this is what `export_router!` uses.
///
/// # Safety
/// Every string in `data` must be UTF-8.
pub unsafe fn decode_batch_trusted(data: &[u8]) -> Result<Vec<Inquiry<'_>>, WireError> {
    let mut reader = Reader::new(data);
    let version = reader.u32()?;
    if version != ABI_VERSION {
        return Err(WireError::Version(version));
    }
    let count = reader.u32()? as usize;
    let mut batch = Vec::with_capacity(count.min(data.len() / 4));
    for _ in 0..count {
        let mut r = reader.record()?;
        // SAFETY: guaranteed by the caller.
        let mut s = || unsafe { r.str_trusted() };
        batch.push(Inquiry {
            id: s()?,
            channel: s()?,
            account: s()?,
            message_id: s()?,
            conversation_id: s()?,
            buyer_pseudonym: s()?,
            buyer_country: s()?,
            buyer_language: s()?,
            region: s()?,
            subject: s()?,
            body: s()?,
            order_id: s()?,
            product_ids: s()?,
            attributes: s()?,
            occurred_at: s()?,
            received_at: s()?,
        });
    }
    Ok(batch)
}

/// Whether every string of the batch is UTF-8 (checked string by string: the batch as a whole
/// being UTF-8 says nothing, since lengths are binary).
fn strings_are_utf8(data: &[u8]) -> Result<bool, WireError> {
    let mut reader = Reader::new(data);
    reader.u32()?;
    let count = reader.u32()?;
    for _ in 0..count {
        let mut r = reader.record()?;
        while !r.is_empty() {
            match r.str() {
                Ok(_) => {}
                Err(WireError::NotUtf8) => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }
    Ok(true)
}

/// Writes the results of a batch (plugin side).
pub struct ResultWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ResultWriter<'a> {
    /// Starts the results of a batch of `count` inquiries.
    pub fn new(out: &'a mut Vec<u8>, count: usize) -> Self {
        out.extend_from_slice(&(count as u32).to_le_bytes());
        ResultWriter { out }
    }

    /// Appends the outcome of the next inquiry.
    pub fn push(&mut self, outcome: &Outcome) {
        let out = &mut *self.out;
        let start = begin_record(out);
        match outcome {
            Outcome::Route(route) => {
                out.push(STATUS_ROUTE);
                put_str(out, &route.queue);
                put_str(out, route.assignee.as_deref().unwrap_or(""));
                put_str(out, route.priority.as_str());
                // The tags, one per line, written in place (no joined copy).
                let tags_len = route.tags.iter().map(|t| t.len() + 1).sum::<usize>().saturating_sub(1);
                out.extend_from_slice(&(tags_len as u32).to_le_bytes());
                for (i, tag) in route.tags.iter().enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    out.extend_from_slice(tag.as_bytes());
                }
                for value in [&route.language, &route.reply_template, &route.sla_policy, &route.spam_reason] {
                    put_str(out, value.as_deref().unwrap_or(""));
                }
            }
            Outcome::Undecided => out.push(STATUS_UNDECIDED),
            Outcome::Failed(detail) => {
                out.push(STATUS_FAILED);
                put_str(out, detail);
            }
        }
        end_record(out, start);
    }
}

/// Decodes the results of a batch of `expected` inquiries (host side). A malformed record is an
/// error for that inquiry only; a broken frame (truncated data, wrong count) fails them all.
pub fn decode_results(data: &[u8], expected: usize) -> Result<Vec<Result<Outcome, WireError>>, WireError> {
    let mut reader = Reader::new(data);
    let found = reader.u32()? as usize;
    if found != expected {
        return Err(WireError::Count { expected, found });
    }
    let mut results = Vec::with_capacity(expected);
    for _ in 0..expected {
        let record = reader.record()?;
        results.push(decode_outcome(record));
    }
    Ok(results)
}

fn decode_outcome(mut r: Reader<'_>) -> Result<Outcome, WireError> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned().into());
    match r.u8()? {
        STATUS_ROUTE => {
            let queue = r.str()?;
            if queue.trim().is_empty() {
                return Err(WireError::Invalid("empty queue"));
            }
            let assignee = r.str()?;
            let priority = match r.str()? {
                "" => Priority::Normal,
                name => Priority::parse(name).ok_or(WireError::Invalid("unknown priority"))?,
            };
            let tags: Vec<_> = r.str()?.split('\n').filter(|t| !t.is_empty()).take(MAX_TAGS + 1).collect();
            if tags.len() > MAX_TAGS {
                return Err(WireError::Invalid("more than 32 tags"));
            }
            let tags = tags.into_iter().map(|t| t.to_owned().into()).collect();
            Ok(Outcome::Route(Route {
                queue: queue.to_owned().into(),
                assignee: opt(assignee),
                priority,
                tags,
                language: opt(r.str()?),
                reply_template: opt(r.str()?),
                sla_policy: opt(r.str()?),
                spam_reason: opt(r.str()?),
            }))
        }
        STATUS_UNDECIDED => Ok(Outcome::Undecided),
        STATUS_FAILED => Ok(Outcome::Failed(r.str()?.to_owned())),
        _ => Err(WireError::Invalid("unknown status")),
    }
}

/// Encodes an agent list (host side).
pub fn encode_agents<'a>(out: &mut Vec<u8>, agents: impl ExactSizeIterator<Item = &'a Agent>) {
    out.extend_from_slice(&(agents.len() as u32).to_le_bytes());
    for agent in agents {
        put_str(out, &agent.id);
        for n in [agent.load, agent.capacity, agent.online as u32] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// Encodes a plugin's settings (host side): `u32 count`, then per setting its key and its value
/// as strings, in the order given (the gateway sorts them by key).
pub fn encode_settings<'a>(out: &mut Vec<u8>, settings: impl ExactSizeIterator<Item = (&'a str, &'a str)>) {
    out.extend_from_slice(&(settings.len() as u32).to_le_bytes());
    for (key, value) in settings {
        put_str(out, key);
        put_str(out, value);
    }
}

/// Decodes a settings list (plugin side), strictly: every string present in full and nothing
/// after the last one.
pub fn decode_settings(data: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut r = Reader::new(data);
    let count = r.u32()? as usize;
    // Each setting takes at least two length prefixes: a count beyond that is a broken list.
    if count > data.len() / 8 {
        return Err(WireError::Truncated);
    }
    let mut string = || -> Result<String, WireError> {
        let len = r.u32()? as usize;
        let bytes = r.bytes(len)?;
        core::str::from_utf8(bytes).map(str::to_owned).map_err(|_| WireError::NotUtf8)
    };
    let mut settings = Vec::with_capacity(count);
    for _ in 0..count {
        settings.push((string()?, string()?));
    }
    if !r.is_empty() {
        return Err(WireError::Invalid("bytes after the settings"));
    }
    Ok(settings)
}

/// Checks an agent list (plugin side): its structure and that every id is UTF-8; the number
/// of agents.
pub(crate) fn check_agents(data: &[u8]) -> Result<usize, WireError> {
    let mut r = Reader::new(data);
    let count = r.u32()? as usize;
    for _ in 0..count {
        r.str()?;
        r.bytes(12)?;
    }
    Ok(count)
}

/// The agents of a list that [`check_agents`] accepted with `count` agents.
///
/// # Safety
/// `check_agents(data)` must have returned `Ok(count)`: the ids are read without a UTF-8 check.
pub(crate) unsafe fn agent_views(data: &[u8], count: usize) -> impl Iterator<Item = AgentView<'_>> + Clone {
    let mut r = Reader::new(data.get(4..).unwrap_or_default());
    (0..count).map_while(move |_| {
        // Checked when the list was taken: no read fails. SAFETY: the caller's guarantee,
        // `check_agents` found every id UTF-8.
        let id = unsafe { r.str_trusted() }.ok()?;
        Some(AgentView { id, load: r.u32().ok()?, capacity: r.u32().ok()?, online: r.u32().ok()? != 0 })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_unknown_trailing_fields_are_skipped() {
        let mut out = Vec::new();
        begin_batch(&mut out, 2);
        let mut fields = [""; 16];
        fields[1] = "whatsapp";
        fields[10] = "bulk order please";
        put_inquiry(&mut out, &fields);
        // A record from a later minor with one more field: readers skip it.
        let start = begin_record(&mut out);
        for field in fields.iter().chain(&["future"]) {
            put_str(&mut out, field);
        }
        end_record(&mut out, start);
        let batch = decode_batch(&out).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!((batch[0].channel, batch[0].body), ("whatsapp", "bulk order please"));
        assert_eq!(batch[1], batch[0]);
    }

    #[test]
    fn results_round_trip_and_one_bad_record_fails_alone() {
        let route = Route {
            queue: "eu-sales".into(),
            assignee: Some("anna".into()),
            priority: Priority::High,
            tags: vec!["bulk".into(), "vip".into()],
            language: Some("de".into()),
            ..Route::default()
        };
        let mut out = Vec::new();
        let mut writer = ResultWriter::new(&mut out, 3);
        writer.push(&Outcome::Route(route.clone()));
        writer.push(&Outcome::Route(Route { queue: "".into(), ..Route::default() }));
        writer.push(&Outcome::Failed("no rule".into()));
        let results = decode_results(&out, 3).unwrap();
        assert_eq!(results[0], Ok(Outcome::Route(route)));
        assert_eq!(results[1], Err(WireError::Invalid("empty queue")));
        assert_eq!(results[2], Ok(Outcome::Failed("no rule".into())));
        assert_eq!(decode_results(&out, 4).unwrap_err(), WireError::Count { expected: 4, found: 3 });
        assert_eq!(decode_results(&out[..out.len() - 1], 3).unwrap_err(), WireError::Truncated);
    }

    #[test]
    fn agents_round_trip() {
        let agents = vec![
            Agent { id: "anna".into(), load: 2, capacity: 5, online: true },
            Agent { id: "ben".into(), load: 0, capacity: 3, online: false },
        ];
        let mut out = Vec::new();
        encode_agents(&mut out, agents.iter());
        let list = crate::Agents::decode(&out);
        let read: Vec<Agent> = list
            .iter()
            .map(|a| Agent { id: a.id.to_owned(), load: a.load, capacity: a.capacity, online: a.online })
            .collect();
        assert_eq!(read, agents);
        assert_eq!(list.get(1).map(|a| a.available()), Some(false));
        assert_eq!(list.get(2), None);
        // Dropping the list leaves its buffer for the next one, which must not see old agents.
        drop(list);
        assert!(crate::Agents::decode(&[0, 0, 0, 0]).is_empty());
        assert_eq!(crate::Agents::from_list(&agents).len(), 2);
        let mut broken = out.clone();
        broken[4 + 4] = 0xff; // the first id's first byte: not UTF-8
        assert!(crate::Agents::decode(&broken).is_empty());
        assert!(crate::Agents::decode(&out[..out.len() - 1]).is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..600 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed % 5 == 0 {
                        0
                    } else {
                        seed as u8
                    }
                })
                .collect();
            let _ = decode_batch(&data);
            let _ = decode_results(&data, 3);
            let _ = crate::Agents::decode(&data).iter().count();
        }
    }
}
