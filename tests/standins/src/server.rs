//! The HTTP server every stand-in runs: quota check, then the platform's answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::{KeyStats, Mailbox, Message, Platform, QuotaRule, Quotas, Reply, Request};

/// A running stand-in.
#[derive(Clone)]
pub struct Standin {
    addr: SocketAddr,
    mailbox: Mailbox,
    quotas: Arc<Mutex<Quotas>>,
}

struct Shared {
    platform: Arc<dyn Platform>,
    mailbox: Mailbox,
    quotas: Arc<Mutex<Quotas>>,
    base: String,
}

impl Standin {
    /// Serves `platform` on a free loopback port under its documented quota, or `rule`.
    pub async fn start(platform: Arc<dyn Platform>, rule: Option<QuotaRule>) -> std::io::Result<Standin> {
        Standin::start_on("127.0.0.1:0".parse().expect("a valid address"), platform, rule).await
    }

    /// Serves `platform` on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        platform: Arc<dyn Platform>,
        rule: Option<QuotaRule>,
    ) -> std::io::Result<Standin> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let rule = rule.unwrap_or_else(|| platform.documented_quota());
        let quotas = Arc::new(Mutex::new(Quotas::new(rule).counting_seconds(platform.counts_per_second())));
        let mailbox = Mailbox::default();
        let shared = Arc::new(Shared {
            platform,
            mailbox: mailbox.clone(),
            quotas: quotas.clone(),
            base: format!("http://{addr}"),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&shared, req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Standin { addr, mailbox, quotas })
    }

    /// The base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a message to the mailbox.
    pub fn add(&self, message: Message) {
        self.mailbox.add(message);
    }

    /// Adds a buyer's message and the seller's reply to conversation `conversation` of `account`,
    /// sent at `created` (Unix seconds); message ids are unique per account.
    pub fn add_exchange(&self, account: &str, conversation: usize, created: i64) {
        let n = self.mailbox.of_account(account).len();
        let conversation_id = format!("{}", 3_000_000_000u64 + conversation as u64);
        let buyer_id = format!("{}", 6_000_000_000u64 + conversation as u64);
        self.add(Message {
            account: account.to_owned(),
            conversation: conversation_id.clone(),
            id: format!("m_{account}_{conversation}_{n}"),
            buyer_id: buyer_id.clone(),
            buyer_name: "Test Buyer".to_owned(),
            text: format!("question {n} about conversation {conversation}"),
            created,
            from_seller: false,
            order_id: None,
            country: Some("DE".to_owned()),
        });
        self.add(Message {
            account: account.to_owned(),
            conversation: conversation_id,
            id: format!("m_{account}_{conversation}_{n}_reply"),
            buyer_id,
            buyer_name: String::new(),
            text: "answer".to_owned(),
            created,
            from_seller: true,
            order_id: None,
            country: None,
        });
    }

    /// The mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Calls and violations per quota key.
    pub fn stats(&self) -> BTreeMap<String, KeyStats> {
        self.quotas.lock().expect("quota lock").stats()
    }

    /// The quota enforced.
    pub fn rule(&self) -> QuotaRule {
        self.quotas.lock().expect("quota lock").rule()
    }
}

async fn answer(shared: &Shared, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let request = Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body,
    };
    let reply = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/_standin/stats") => {
            let stats = shared.quotas.lock().expect("quota lock").stats();
            Reply::json(200, &serde_json::json!({ "platform": shared.platform.name(), "keys": stats }))
        }
        ("POST", "/_standin/messages") => match serde_json::from_slice::<Vec<Message>>(&request.body) {
            Ok(messages) => {
                let count = messages.len();
                messages.into_iter().for_each(|m| shared.mailbox.add(m));
                Reply::json(200, &serde_json::json!({ "added": count }))
            }
            Err(err) => Reply::json(400, &serde_json::json!({ "error": err.to_string() })),
        },
        _ => match shared.platform.outside_quota(&request).map_or_else(|| shared.platform.quota_key(&request), Err) {
            Err(reply) => reply,
            Ok(key) => {
                let admission = {
                    let mut quotas = shared.quotas.lock().expect("quota lock");
                    let admission = quotas.admit(&key);
                    quotas.record_caller(&key, request.header("user-agent").unwrap_or("-"));
                    admission
                };
                if admission.allowed {
                    shared.platform.serve(&request, &shared.mailbox, &admission, &shared.base)
                } else {
                    shared.platform.throttled(&admission)
                }
            }
        },
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(reply.content_type));
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) =
            (hyper::header::HeaderName::try_from(name), hyper::header::HeaderValue::try_from(value))
        {
            headers.insert(name, value);
        }
    }
    response
}

/// Decodes `%XX` and `+` in a query component.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
