//! Property tests: arbitrary responses never make a poller panic, arbitrary messages never make
//! the e-mail parser panic, and arbitrary bodies never make the generic API parser panic; each
//! either parses or returns an `InputError`.

use inquiry_connectors::poll::{self, PollCredentials, PollPosition, PollTarget};
use inquiry_connectors::{email, generic, NormalizeContext};
use proptest::prelude::*;
use time::OffsetDateTime;

/// A body: random bytes, or a random tail after a prefix that steers it into a parser
/// (JSON object or array, XML, MIME headers).
fn body() -> impl Strategy<Value = Vec<u8>> {
    let prefixes = prop::sample::select(vec![
        "",
        "{",
        "{\"data\":",
        "{\"results\":[",
        "{\"response\":{",
        "<?xml version=\"1.0\"?><GetMemberMessagesResponse>",
        "From: a@b.c\r\nMessage-ID: <x@y>\r\n",
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n",
        "{\"channel\":\"generic\",\"account\":",
    ]);
    (prefixes, prop::collection::vec(any::<u8>(), 0..512)).prop_map(|(prefix, tail)| {
        let mut body = prefix.as_bytes().to_vec();
        body.extend(tail);
        body
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_parser_panics_on_arbitrary_input(body in body(), cursor in proptest::option::of(".{0,40}"), page in proptest::option::of(".{0,80}")) {
        let context = NormalizeContext { received_at: OffsetDateTime::UNIX_EPOCH, trace_id: "0af7651916cd43dd8448eb211c80319c" };
        let target = PollTarget {
            account: "1001",
            credentials: PollCredentials { access_token: "t", app_key: Some("k"), app_secret: Some("s") },
            now: OffsetDateTime::UNIX_EPOCH,
            wants_answers: true,
        };
        let position = PollPosition { cursor: cursor.as_deref(), page: page.as_deref() };
        for poller in poll::REGISTRY {
            let _ = poller.request(&target, &position);
            let _ = poller.is_throttled(429, &body);
            let mut ctx = || context;
            let _ = poller.parse(&body, &target, &position, &mut ctx);
        }
        let _ = email::parse(&body, "mailbox", None, &context);
        let _ = generic::normalize(&body, &context);
    }
}
