//! Reads of inquiries another replica holds. Each replica keeps the inquiries it took in its own
//! embedded store (and the keys that open their personal data); behind a load balancer, a CRM's
//! `GET /v1/inquiries/{id}` reaches any replica. One that does not hold the inquiry asks the
//! others (`[cluster] peers`, each address a name resolves to being one replica) and answers with
//! the one that does.
//!
//! The asking replica signs its request with a key derived from the shared `store.pseudonym_key`
//! and passes the client's `Authorization` on: the peer checks the client's key itself, answers
//! from its own store only (no further asking) and audits the read with the client's address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use metrics::counter;
use tokio_rustls::rustls::pki_types::ServerName;
use uuid::Uuid;

use super::error::ApiError;
use crate::config::ClusterConfig;
use crate::telemetry;

/// The header of a peer's request: `v1 <unix seconds> <client address or -> <hex HMAC>`.
pub const PEER_HEADER: &str = "x-inquiry-gateway-peer";

/// How far a peer request's time may be from the clock of the replica that checks it.
const PEER_REQUEST_WINDOW_SECS: i64 = 60;

/// Largest answer taken from a peer (an inquiry with its original payload is far smaller).
const MAX_PEER_ANSWER_BYTES: usize = 16 << 20;

/// Signs and checks peer requests; every replica of a cluster has the same one.
pub struct PeerKey(ring::hmac::Key);

impl PeerKey {
    /// The key of replicas that share `pseudonym_key`.
    pub fn new(pseudonym_key: &[u8]) -> PeerKey {
        PeerKey(crate::compliance::replica_key(pseudonym_key, b"inquiry-gateway peer reads v1"))
    }

    /// The signed message: the inquiry, the time, the client's address and a digest of the
    /// client's `Authorization` (a captured header is worth nothing with another key).
    fn message(id: Uuid, at: i64, source: &str, authorization: Option<&HeaderValue>) -> Vec<u8> {
        let credential = ring::digest::digest(&ring::digest::SHA256, authorization.map_or(&b""[..], |v| v.as_bytes()));
        let mut message = format!("peer read v1\n{id}\n{at}\n{source}\n").into_bytes();
        message.extend_from_slice(credential.as_ref());
        message
    }

    /// The header value of a request for `id` with the client's `authorization`, on behalf of a
    /// client at `source`, made at `at`.
    fn header(&self, id: Uuid, at: i64, source: &str, authorization: Option<&HeaderValue>) -> String {
        let signature = ring::hmac::sign(&self.0, &Self::message(id, at, source, authorization));
        format!("v1 {at} {source} {}", hex::encode(signature.as_ref()))
    }

    /// For a request for `id` with `headers`: `Ok(None)` when it is not a peer's, the client's
    /// address (`None` inside when the client had none) when a peer signed it within the window,
    /// else 401 `peer_signature_invalid`.
    pub fn check(&self, headers: &HeaderMap, id: Uuid, now: i64) -> Result<Option<Option<String>>, ApiError> {
        let Some(value) = headers.get(PEER_HEADER) else { return Ok(None) };
        let refused = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "peer_signature_invalid",
                "the peer request's signature does not hold",
            )
        };
        let authorization = headers.get(AUTHORIZATION);
        let client = value.to_str().ok().and_then(|v| self.verify(v, id, now, authorization)).ok_or_else(refused)?;
        Ok(Some(client))
    }

    fn verify(&self, value: &str, id: Uuid, now: i64, authorization: Option<&HeaderValue>) -> Option<Option<String>> {
        let mut parts = value.split(' ');
        let (Some("v1"), Some(at), Some(source), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let at: i64 = at.parse().ok()?;
        let signature = hex::decode(signature).ok()?;
        ring::hmac::verify(&self.0, &Self::message(id, at, source, authorization), &signature).ok()?;
        ((now - at).abs() <= PEER_REQUEST_WINDOW_SECS).then(|| (source != "-").then(|| source.to_owned()))
    }
}

/// What the other replicas said about an inquiry.
#[derive(Debug)]
pub enum PeerAnswer {
    /// A replica holds it: its answer (`GET /v1/inquiries/{id}`'s JSON body).
    Found(Bytes),
    /// Every replica answered, none holds it (or the client's key may not see it).
    NotFound,
    /// None that answered holds it, and some did not answer: it may be on one of those.
    Unavailable,
}

/// One configured peer: a name and port, asked at every address the name resolves to.
#[derive(Debug, Clone)]
struct Peer {
    https: bool,
    host: String,
    port: u16,
}

/// How long resolved peer addresses are used before the names are resolved again.
const RESOLVED_FOR: Duration = Duration::from_secs(5);

/// The other replicas, asked for inquiries this one does not hold.
pub struct Peers {
    peers: Vec<Peer>,
    timeout: Duration,
    tls: tokio_rustls::TlsConnector,
    key: Arc<PeerKey>,
    /// The peers' addresses as last resolved, and when (shared by the requests of a few seconds,
    /// so that a burst of reads does not become a burst of name lookups).
    resolved: tokio::sync::Mutex<Option<(std::time::Instant, Resolved)>>,
}

/// Every peer address, and whether some name did not resolve.
#[derive(Clone)]
struct Resolved {
    addresses: Vec<(Peer, SocketAddr)>,
    incomplete: bool,
}

impl Peers {
    /// The peers of a validated `config`; `None` when there are none.
    pub fn new(config: &ClusterConfig, key: Arc<PeerKey>) -> Result<Option<Peers>, String> {
        if config.peers.is_empty() {
            return Ok(None);
        }
        let peers = config.peers.iter().map(|p| parse_peer(p)).collect::<Result<Vec<_>, _>>()?;
        let tls = super::tls::client_config(config.peer_ca_file.as_deref(), "cluster.peer_ca_file")?;
        Ok(Some(Peers {
            peers,
            timeout: Duration::from_millis(config.peer_timeout_ms),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            key,
            resolved: tokio::sync::Mutex::new(None),
        }))
    }

    /// The peers' addresses: resolved at most every [`RESOLVED_FOR`], all names at once.
    async fn addresses(&self) -> Resolved {
        let mut resolved = self.resolved.lock().await;
        if let Some((_, addresses)) = resolved.as_ref().filter(|(at, _)| at.elapsed() < RESOLVED_FOR) {
            return addresses.clone();
        }
        let lookups = self
            .peers
            .iter()
            .map(|peer| async move { (peer, tokio::net::lookup_host((peer.host.as_str(), peer.port)).await) });
        let mut fresh = Resolved { addresses: Vec::new(), incomplete: false };
        let mut seen = std::collections::HashSet::new();
        for (peer, found) in futures_util::future::join_all(lookups).await {
            match found {
                Ok(addresses) => {
                    fresh.addresses.extend(addresses.filter(|a| seen.insert(*a)).map(|a| (peer.clone(), a)));
                }
                Err(err) => {
                    tracing::warn!(peer = %peer.host, error = %err, "peer name does not resolve");
                    fresh.incomplete = true;
                }
            }
        }
        // A failed lookup is tried again at the next read rather than remembered.
        if !fresh.incomplete {
            *resolved = Some((std::time::Instant::now(), fresh.clone()));
        }
        fresh
    }

    /// Asks every peer address at once for inquiry `id`, with the client's `authorization`,
    /// address (`source`) and trace id; the whole call (name lookups included) ends within
    /// `cluster.peer_timeout_ms`.
    pub async fn find(
        &self,
        id: Uuid,
        authorization: Option<&HeaderValue>,
        source: Option<&str>,
        trace_id: &str,
    ) -> PeerAnswer {
        let answer = tokio::time::timeout(self.timeout, self.ask_all(id, authorization, source, trace_id))
            .await
            .unwrap_or(PeerAnswer::Unavailable);
        let outcome = match answer {
            PeerAnswer::Found(_) => "found",
            PeerAnswer::NotFound => "not_found",
            PeerAnswer::Unavailable => "unavailable",
        };
        counter!(telemetry::PEER_READS, "outcome" => outcome).increment(1);
        answer
    }

    async fn ask_all(
        &self,
        id: Uuid,
        authorization: Option<&HeaderValue>,
        source: Option<&str>,
        trace_id: &str,
    ) -> PeerAnswer {
        let at = time::OffsetDateTime::now_utc().unix_timestamp();
        let request = PeerRequest {
            id,
            authorization: authorization.cloned(),
            signed: self.key.header(id, at, source.unwrap_or("-"), authorization),
            // The holder's `inquiry.read` entry carries the client's trace id.
            traceparent: format!("00-{trace_id}-{:016x}-01", rand_span()),
        };
        let resolved = self.addresses().await;
        let mut asks = tokio::task::JoinSet::new();
        for (peer, address) in resolved.addresses {
            asks.spawn(ask(peer, address, self.tls.clone(), request.clone()));
        }
        let mut unavailable = resolved.incomplete;
        while let Some(done) = asks.join_next().await {
            match done {
                Ok(Ok(Some(body))) => return PeerAnswer::Found(body),
                Ok(Ok(None)) => {}
                Ok(Err(reason)) => {
                    tracing::warn!(%reason, "peer read failed");
                    unavailable = true;
                }
                Err(_) => unavailable = true,
            }
        }
        if unavailable {
            PeerAnswer::Unavailable
        } else {
            PeerAnswer::NotFound
        }
    }
}

/// `http://host:port` or `https://host:port` (no path).
fn parse_peer(peer: &str) -> Result<Peer, String> {
    let url = url::Url::parse(peer).map_err(|e| format!("cluster.peers `{peer}`: {e}"))?;
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        _ => return Err(format!("cluster.peers `{peer}` must be an http:// or https:// URL")),
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || !url.username().is_empty() {
        return Err(format!("cluster.peers `{peer}` must be a scheme, a host and a port only"));
    }
    let host = url.host_str().ok_or_else(|| format!("cluster.peers `{peer}` has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = url.port_or_known_default().unwrap_or(8080);
    Ok(Peer { https, host, port })
}

/// Checks `peers` without I/O (for `check`).
pub fn peer_problems(peers: &[String]) -> Vec<String> {
    peers.iter().filter_map(|p| parse_peer(p).err()).collect()
}

/// What every peer is asked.
#[derive(Clone)]
struct PeerRequest {
    id: Uuid,
    authorization: Option<HeaderValue>,
    signed: String,
    traceparent: String,
}

/// A span id for the peer request's `traceparent`.
fn rand_span() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source");
    u64::from_le_bytes(bytes) | 1
}

/// One peer address's answer: the body when it holds the inquiry, `None` on 404.
async fn ask(
    peer: Peer,
    address: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    asked: PeerRequest,
) -> Result<Option<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("{address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut request = Request::get(format!("/v1/inquiries/{}", asked.id))
        .header(hyper::header::HOST, &peer.host)
        .header(PEER_HEADER, asked.signed)
        .header("traceparent", asked.traceparent);
    if let Some(authorization) = asked.authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let response = if peer.https {
        // The certificate is checked against the configured name, whichever address answered.
        let name = ServerName::try_from(peer.host.clone()).map_err(|e| format!("{}: {e}", peer.host))?;
        let stream = tls.connect(name, tcp).await.map_err(|e| format!("{address}: tls: {e}"))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_PEER_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{address}: {e}"))?
        .to_bytes();
    match status {
        StatusCode::OK => Ok(Some(body)),
        StatusCode::NOT_FOUND => Ok(None),
        // The caller's key, accepted here, refused there: the replicas' keys differ (a reload
        // that reached one replica only), or their clocks are more than a minute apart.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(format!("{address} refused the request ({status}): are the replicas' api keys and clocks the same?"))
        }
        other => Err(format!("{address} answered {other}")),
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_request_is_good_for_its_inquiry_and_a_minute_only() {
        let key = PeerKey::new(b"shared pseudonym key of the cluster");
        let id = Uuid::now_v7();
        let headers = |value: String| {
            let mut headers = HeaderMap::new();
            headers.insert(PEER_HEADER, HeaderValue::from_str(&value).unwrap());
            headers
        };
        let crm = HeaderValue::from_static("Bearer key-of-the-crm");
        let headers = |value: String| {
            let mut headers = headers(value);
            headers.insert(AUTHORIZATION, crm.clone());
            headers
        };
        let signed = headers(key.header(id, 1_000, "203.0.113.9:4711", Some(&crm)));
        assert_eq!(key.check(&signed, id, 1_030).unwrap(), Some(Some("203.0.113.9:4711".to_owned())));
        assert_eq!(key.check(&headers(key.header(id, 1_000, "-", Some(&crm))), id, 1_000).unwrap(), Some(None));
        let mut other_key = signed.clone();
        other_key.insert(AUTHORIZATION, HeaderValue::from_static("Bearer another-key"));
        assert!(key.check(&other_key, id, 1_000).is_err(), "replayed with another key");
        assert_eq!(key.check(&HeaderMap::new(), id, 1_000).unwrap(), None, "not a peer's request");
        assert!(key.check(&signed, Uuid::now_v7(), 1_000).is_err(), "another inquiry");
        assert!(key.check(&signed, id, 1_061).is_err(), "too old");
        assert!(key.check(&signed, id, 939).is_err(), "from the future");
        let forged = key.header(id, 1_000, "203.0.113.9:4711", Some(&crm)).replace("203.0.113.9", "198.51.100.1");
        assert!(key.check(&headers(forged), id, 1_000).is_err(), "another client address");
        let other = PeerKey::new(b"another cluster's key");
        assert!(other.check(&signed, id, 1_000).is_err(), "another cluster");
        assert!(key.check(&headers("v1 1000 - zz".to_owned()), id, 1_000).is_err(), "garbage");
    }

    #[test]
    fn peers_are_scheme_host_and_port() {
        let peer = parse_peer("https://inquiry-gateway-pods.shop.svc:8443").unwrap();
        assert_eq!((peer.https, peer.host.as_str(), peer.port), (true, "inquiry-gateway-pods.shop.svc", 8443));
        assert_eq!(parse_peer("http://[::1]:8080").unwrap().host, "::1");
        for bad in ["ftp://a:1", "http://a:1/v1", "http://user@a:1", "a:8080"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }
}
