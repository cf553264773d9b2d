//! What the inbound e-mail connectors (Mailgun routes, SendGrid Inbound Parse) share: reading the
//! posted form and turning one parsed e-mail into a [`Draft`].
//!
//! Both services post `multipart/form-data` (Mailgun also `application/x-www-form-urlencoded`).
//! Multipart is parsed with `mailparse`: a form is a MIME multipart body, and the same crate
//! parses the e-mail headers, addresses, dates and raw MIME these connectors need anyway. The
//! async-only multipart crates (`multer`) do not fit a pure, synchronous connector. A connector
//! sees the body only, not its `Content-Type`, so the boundary is read from the body's first line
//! (`--<boundary>`); neither service sends a preamble.

use std::collections::BTreeMap;

use super::{from_unix, percent_decode};
use crate::error::{InputError, InputErrorCode};
use crate::inquiry::Channel;
use crate::Draft;

/// Largest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// A posted form: (name, value) pairs in order; file parts (attachments) are left out.
#[derive(Debug, Default)]
pub(crate) struct Form {
    fields: Vec<(String, Vec<u8>)>,
}

impl Form {
    /// Parses a multipart/form-data body (it starts with `--<boundary>`) or a url-encoded one.
    pub(crate) fn parse(body: &[u8]) -> Result<Form, InputError> {
        if body.starts_with(b"--") {
            Self::multipart(body)
        } else {
            Ok(Self::urlencoded(body))
        }
    }

    fn urlencoded(body: &[u8]) -> Form {
        let text = String::from_utf8_lossy(body);
        let fields = text
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value).into_bytes())
            })
            .collect();
        Form { fields }
    }

    fn multipart(body: &[u8]) -> Result<Form, InputError> {
        let malformed = || InputError::new(InputErrorCode::InvalidValue, "malformed multipart/form-data body");
        let line_end = body.iter().position(|&b| b == b'\n').ok_or_else(malformed)?;
        let boundary = std::str::from_utf8(&body[2..line_end]).map_err(|_| malformed())?.trim_end_matches('\r');
        let valid = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
        if boundary.is_empty() || boundary.len() > MAX_BOUNDARY || !boundary.chars().all(valid) {
            return Err(malformed());
        }
        let mut mime = format!("Content-Type: multipart/form-data; boundary=\"{boundary}\"\r\n\r\n").into_bytes();
        mime.extend_from_slice(body);
        let parsed = mailparse::parse_mail(&mime).map_err(|_| malformed())?;
        let mut fields = Vec::with_capacity(parsed.subparts.len());
        for part in &parsed.subparts {
            let disposition = part.get_content_disposition();
            if disposition.params.contains_key("filename") {
                continue; // an attachment
            }
            let Some(name) = disposition.params.get("name") else { continue };
            fields.push((name.clone(), part.get_body_raw().map_err(|_| malformed())?));
        }
        Ok(Form { fields })
    }

    /// The first value of field `name`, as UTF-8 (invalid bytes replaced).
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.raw(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The first value of field `name`, as posted.
    pub(crate) fn raw(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// Bytes in `charset` as text (the label as e-mail gives it; unknown labels read as UTF-8).
pub(crate) fn decode_charset(bytes: &[u8], charset: &str) -> String {
    let utf8 = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if charset.is_empty() || charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8") {
        return utf8(bytes);
    }
    // mailparse decodes a body by its Content-Type charset; give it one.
    let safe = charset.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !safe {
        return utf8(bytes);
    }
    let mut mime = format!("Content-Type: text/plain; charset=\"{charset}\"\r\n\r\n").into_bytes();
    mime.extend_from_slice(bytes);
    mailparse::parse_mail(&mime).and_then(|m| m.get_body()).unwrap_or_else(|_| utf8(bytes))
}

/// One inbound e-mail, as the service reported it.
#[derive(Debug, Default)]
pub(crate) struct Email {
    /// The `From` header (`Name <address>`).
    pub from: Option<String>,
    /// The envelope sender, where `From` is absent or unreadable.
    pub sender: Option<String>,
    pub subject: Option<String>,
    /// The text of the message, quoted replies removed where the service does that.
    pub text: Option<String>,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Option<String>,
    /// The `Date` header.
    pub date: Option<String>,
    /// Unix seconds of the delivery, when the e-mail has no readable `Date`.
    pub delivered_at: Option<i64>,
    /// `Auto-Submitted` and `Precedence` headers: machine-sent mail is not an inquiry.
    pub auto_submitted: Option<String>,
    pub precedence: Option<String>,
}

impl Email {
    /// Fills the header fields from (name, value) pairs, names compared case-insensitively; fields
    /// already set are kept.
    pub(crate) fn headers(&mut self, headers: impl IntoIterator<Item = (String, String)>) {
        for (name, value) in headers {
            let slot = match name.to_ascii_lowercase().as_str() {
                "from" => &mut self.from,
                "subject" => &mut self.subject,
                "message-id" => &mut self.message_id,
                "in-reply-to" => &mut self.in_reply_to,
                "references" => &mut self.references,
                "date" => &mut self.date,
                "auto-submitted" => &mut self.auto_submitted,
                "precedence" => &mut self.precedence,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
    }

    /// True for mail a machine sent (auto-replies, bounces, lists): acknowledged, not an inquiry.
    pub(crate) fn is_automatic(&self) -> bool {
        let auto = self.auto_submitted.as_deref().is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
        let bulk = self
            .precedence
            .as_deref()
            .is_some_and(|v| ["bulk", "list", "junk"].contains(&v.trim().to_ascii_lowercase().as_str()));
        auto || bulk
    }

    /// The draft inquiry: buyer `email:<address>` (lower case), the display name as the buyer's
    /// name, the conversation the thread's root (first of `References`, else `In-Reply-To`, else the
    /// message itself). A `Message-Id` names the sender's mail host (often the buyer's own domain),
    /// so the envelope carries each id hashed ([`hashed_id`]): still unique, still the same for a
    /// redelivery and for every message of the thread; the ids in clear stay in the sealed payload.
    pub(crate) fn into_draft(self, account: &str, service: &str) -> Result<Draft, InputError> {
        let (name, address) =
            self.from.as_deref().and_then(mailbox).or_else(|| self.sender.as_deref().and_then(mailbox)).ok_or_else(
                || InputError::new(InputErrorCode::MissingField, "no readable sender address").field("from"),
            )?;
        let message_id = self.message_id.as_deref().and_then(first_id).ok_or_else(|| {
            InputError::new(InputErrorCode::MissingField, "missing Message-Id header").field("Message-Id")
        })?;
        let conversation_id = self
            .references
            .as_deref()
            .and_then(first_id)
            .or_else(|| self.in_reply_to.as_deref().and_then(first_id))
            .unwrap_or_else(|| message_id.clone());
        let occurred_at = self
            .date
            .as_deref()
            .and_then(|d| mailparse::dateparse(d).ok())
            .or(self.delivered_at)
            .and_then(|s| from_unix(s, false))
            .ok_or_else(|| InputError::new(InputErrorCode::MissingField, "no readable Date header").field("Date"))?;
        let body = self.text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).unwrap_or_else(|| "[empty]".into());
        let mut attributes = BTreeMap::new();
        attributes.insert("inbound_service".to_owned(), service.into());
        Ok(Draft {
            buyer_name: name,
            buyer_email: Some(address.clone()),
            subject: self.subject.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
            attributes,
            ..Draft::message(
                Channel::Email,
                account,
                message_id,
                conversation_id,
                format!("email:{address}"),
                body,
                occurred_at,
            )
        })
    }
}

/// (display name, lower-case address) of the first mailbox in an address header.
fn mailbox(header: &str) -> Option<(Option<String>, String)> {
    let parsed = mailparse::addrparse(header).ok().and_then(|list| {
        list.iter().find_map(|addr| match addr {
            mailparse::MailAddr::Single(info) => Some(info.clone()),
            mailparse::MailAddr::Group(group) => group.addrs.first().cloned(),
        })
    });
    let (name, address) = match parsed.filter(|single| single.addr.contains('@')) {
        Some(single) => (single.display_name, single.addr),
        // A display name decoded from RFC 2047 (`=?iso-8859-1?Q?M=FCller=2C_Hans?=`) can hold a
        // comma or a quote unquoted, which the address parser reads as a list: the address in
        // angle brackets, the text before it the name.
        None => {
            let (open, close) = (header.rfind('<')?, header.rfind('>')?);
            let name = header[..open].trim().trim_matches('"').to_owned();
            (Some(name), header.get(open + 1..close)?.to_owned())
        }
    };
    // Lower-cased as every connector and subject request does (Unicode, not only ASCII): one
    // address, one index.
    let address = address.trim().to_lowercase();
    if !address.contains('@') || address.contains(char::is_whitespace) {
        return None;
    }
    let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    Some((name, address))
}

/// The first message id of a `Message-Id`/`In-Reply-To`/`References` value, hashed.
fn first_id(value: &str) -> Option<String> {
    let token = value.split_whitespace().next()?;
    let id = token.trim_start_matches('<').split('>').next().unwrap_or_default().trim();
    (!id.is_empty()).then(|| hashed_id(id))
}

/// `mid:` and the first 32 hex digits of SHA-256 over a message id (without `<>`).
pub(crate) fn hashed_id(id: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("mid:{}", &hex::encode(Sha256::digest(id.as_bytes()))[..32])
}

#[cfg(test)]
mod tests {
    use super::mailbox;

    #[test]
    fn a_sender_is_read_also_when_its_decoded_name_holds_a_comma() {
        let plain = mailbox("Anna Berg <Anna.Berg@Example.com>").unwrap();
        assert_eq!(plain, (Some("Anna Berg".to_owned()), "anna.berg@example.com".to_owned()));
        // `=?iso-8859-1?Q?M=FCller=2C_Hans?= <h@x.de>` as header decoding hands it over.
        let decoded = mailbox("Müller, Hans <H.Mueller@X.de>").unwrap();
        assert_eq!(decoded, (Some("Müller, Hans".to_owned()), "h.mueller@x.de".to_owned()));
        let quoted = mailbox("\"Berg, Anna\" <anna@example.com>").unwrap();
        assert_eq!(quoted.1, "anna@example.com");
        // Lower-cased like every other connector: Unicode, not only ASCII.
        assert_eq!(mailbox("ÜBER@Example.com").unwrap().1, "über@example.com");
        assert_eq!(mailbox("Müller"), None);
        assert_eq!(mailbox("Müller <not an address>"), None);
    }
}
