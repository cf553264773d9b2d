//! Test support: the real gateway binary in a temporary directory, and a keep-alive HTTP client.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
pub use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// A gateway process started from the built binary.
pub struct Gateway {
    child: Option<Child>,
    /// Its working directory (holds the store and the config file).
    pub dir: PathBuf,
    /// Ingest listener.
    pub ingest: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    extra_config: String,
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl Gateway {
    /// Starts a gateway with a fresh store and `extra_config` appended to its config file.
    pub async fn start(extra_config: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap().keep();
        Gateway::start_in(dir, extra_config).await
    }

    /// Starts a gateway whose store lives in `dir` (reused across restarts).
    pub async fn start_in(dir: PathBuf, extra_config: &str) -> Gateway {
        let mut gateway = Gateway {
            child: None,
            dir,
            ingest: free_addr(),
            admin: free_addr(),
            extra_config: extra_config.to_owned(),
        };
        gateway.spawn_with_retry(true).await;
        gateway
    }

    /// Writes the config file: the listeners and store (with what `extra_config` adds to those
    /// sections), then the rest of `extra_config`.
    fn write_config(&self) -> PathBuf {
        let (ingest, rest) = split_section(&self.extra_config, "ingest");
        let (store, rest) = split_section(&rest, "store");
        let config = format!(
            "[ingest]\nlisten = \"{}\"\n{ingest}\n[admin]\nlisten = \"{}\"\n[store]\npath = \"{}\"\n{store}\n{rest}\n",
            self.ingest,
            self.admin,
            self.dir.join("store").display(),
        );
        let config_path = self.dir.join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        config_path
    }

    /// Takes `extra_config` instead at the next [`Gateway::restart`] (same listeners and store).
    pub fn configure_for_restart(&mut self, extra_config: &str) {
        self.extra_config = extra_config.to_owned();
    }

    /// Rewrites the config file with `extra_config` instead and sends the running gateway SIGHUP.
    pub fn reconfigure(&mut self, extra_config: &str) {
        self.extra_config = extra_config.to_owned();
        self.write_config();
        let pid = self.child.as_ref().expect("gateway is running").id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    }

    async fn spawn(&mut self) {
        let config_path = self.write_config();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway"))
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the gateway binary starts");
        self.child = Some(child);
        self.wait_healthy().await;
    }

    /// Starts the process; when one of its ports was taken meanwhile (ports are picked free,
    /// then released, and parallel tests bind their own servers), tries again: with new ports for
    /// a first start, with the same ones (after a pause) for a restart.
    async fn spawn_with_retry(&mut self, first_start: bool) {
        for attempt in 0.. {
            let log_before = self.log().len();
            let started = std::panic::AssertUnwindSafe(self.spawn());
            match futures_util::FutureExt::catch_unwind(started).await {
                Ok(()) => return,
                Err(panic) => {
                    let clash = self.log()[log_before..].contains("Address already in use");
                    if !clash || attempt >= 5 {
                        std::panic::resume_unwind(panic);
                    }
                    self.child = None;
                    if first_start {
                        self.ingest = free_addr();
                        self.admin = free_addr();
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    async fn wait_healthy(&mut self) {
        let client = HttpClient::new();
        // Generous: a gateway with plugins compiles them before it serves, and tests run in parallel.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(resp) = client.try_request(Method::GET, &self.admin_url("/healthz"), Bytes::new(), &[]).await {
                if resp.status == StatusCode::OK {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {status} before it was healthy; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "gateway not healthy within 90 s; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts the gateway on the same store and ports.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the gateway before restarting it");
        self.spawn_with_retry(false).await;
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("gateway is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("gateway is running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not stop within 30 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// URL on the ingest listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingest, path)
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Splits `config` into the keys of `[section]` (lines up to the next section) and everything else.
fn split_section(config: &str, section: &str) -> (String, String) {
    let header = format!("[{section}]");
    let (mut inside, mut body, mut rest) = (false, String::new(), String::new());
    for line in config.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == header;
            if inside {
                continue;
            }
        }
        let target = if inside { &mut body } else { &mut rest };
        target.push_str(line);
        target.push('\n');
    }
    (body, rest)
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not json ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A new client with its own connection pool.
    pub fn new() -> Self {
        HttpClient { client: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// Sends a request; connection errors are returned.
    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let resp = self.client.request(builder.body(Full::new(body.into())).unwrap()).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// Sends a request; panics on connection errors.
    pub async fn request(&self, method: Method, url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
        self.try_request(method, url, body, headers).await.expect("request reaches the gateway")
    }

    /// POSTs JSON.
    pub async fn post_json(&self, url: &str, body: impl Into<Bytes>) -> Reply {
        self.request(Method::POST, url, body, &[("content-type", "application/json")]).await
    }

    /// GETs a URL.
    pub async fn get(&self, url: &str) -> Reply {
        self.request(Method::GET, url, Bytes::new(), &[]).await
    }
}

/// A valid generic inquiry with the given account and external id.
pub fn inquiry_json(account: &str, external_id: &str) -> String {
    serde_json::json!({
        "channel": "generic",
        "account": account,
        "external_id": external_id,
        "conversation_id": format!("conv-{external_id}"),
        "buyer": {"name": "Test Buyer", "email": format!("{external_id}@example.com"), "country": "DE", "language": "de"},
        "subject": "Bulk order",
        "body": "Can you ship 500 units to Berlin?",
        "occurred_at": "2026-11-24T08:00:00Z",
        "product_ids": ["sku-1"],
    })
    .to_string()
}

/// The audit log's entries of `kind`, in log order (the admin API on its open loopback
/// listener; the first 1,000 entries).
pub async fn audit_entries_of(gateway: &Gateway, kind: &str) -> Vec<serde_json::Value> {
    let entries = HttpClient::new().get(&gateway.admin_url("/v1/audit/entries?from=0&limit=1000")).await;
    assert_eq!(entries.status, 200, "{}", String::from_utf8_lossy(&entries.body));
    String::from_utf8_lossy(&entries.body)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Reads a metric sample's value from a Prometheus exposition (sum over matching label sets).
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The gateway's `/metrics` exposition.
pub async fn metrics(gateway: &Gateway) -> String {
    String::from_utf8(HttpClient::new().get(&gateway.admin_url("/metrics")).await.body.to_vec()).unwrap()
}

/// The value of sample `name{labels}` in the gateway's `/metrics` now (0 when absent).
pub async fn metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&metrics(gateway).await, name, labels)
}

/// HMAC-SHA256 of the concatenated `parts` under `key`: the signature most platforms use.
pub fn hmac_sha256(key: impl AsRef<[u8]>, parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Path of a file at the workspace root.
pub fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Runs `tests/services/<script> <command>` (fetch, start, stop, kill9, restart); panics with its
/// output on failure. The test runner starts the services; tests only kill and restart them.
pub fn service(script: &str, command: &str) {
    let path = workspace_file(&format!("tests/services/{script}"));
    let out = Command::new("bash").arg(&path).arg(command).output().expect("bash runs the service script");
    assert!(
        out.status.success(),
        "{script} {command} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Cassandra test node's login (`tests/services/cassandra.sh` makes this role; the node
/// runs PasswordAuthenticator on loopback).
pub const CQL_USER: &str = "gateway_test";
/// Password of [`CQL_USER`].
pub const CQL_PASSWORD: &str = "gateway-cql-test-secret";

/// The `username`/`password` lines of a `[sinks.cql]` table for the test node.
pub fn cql_login() -> String {
    format!("username = \"{CQL_USER}\"\npassword = \"{CQL_PASSWORD}\"\n")
}

/// A driver session on the Cassandra test node at `node`, logged in.
pub async fn cql_session(node: &str) -> scylla::client::session::Session {
    scylla::client::session_builder::SessionBuilder::new()
        .known_node(node)
        .user(CQL_USER, CQL_PASSWORD)
        .build()
        .await
        .expect("cql session")
}

/// The ids in `keyspace.inquiries_by_id` on the Cassandra test node at `node`.
pub async fn cql_inquiry_ids(node: &str, keyspace: &str) -> std::collections::HashSet<String> {
    use futures_util::StreamExt;
    let mut rows = cql_session(node)
        .await
        .query_iter(format!("SELECT id FROM {keyspace}.inquiries_by_id"), ())
        .await
        .expect("select")
        .rows_stream::<(uuid::Uuid,)>()
        .expect("typed rows");
    let mut ids = std::collections::HashSet::new();
    while let Some(row) = rows.next().await {
        ids.insert(row.expect("row").0.to_string());
    }
    ids
}

/// A name no other test run uses (topics, keyspaces).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple().to_string().get(..10).unwrap())
}

/// Posts `total` inquiries as NDJSON batches of `batch` from `clients` concurrent clients and
/// returns the acknowledged ids. `on_progress` is called with the running count after each
/// acknowledged batch (to kill things mid-load). 503s are retried after their Retry-After.
pub async fn post_batches(
    gateway: &Gateway,
    account: &str,
    total: usize,
    batch: usize,
    clients: usize,
    on_progress: impl Fn(usize) + Send + Sync + 'static,
) -> std::collections::HashSet<String> {
    use std::sync::{Arc, Mutex};
    let acked: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let progress = Arc::new(on_progress);
    let batches: Vec<usize> = (0..total.div_ceil(batch)).collect();
    let mut tasks = Vec::new();
    for client_no in 0..clients {
        let (url, acked, progress, account) =
            (gateway.url("/v1/inquiries/batch"), acked.clone(), progress.clone(), account.to_owned());
        let mine: Vec<usize> = batches.iter().copied().filter(|b| b % clients == client_no).collect();
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::new();
            for b in mine {
                let body: String = (b * batch..((b + 1) * batch).min(total))
                    .map(|n| inquiry_json(&account, &format!("m-{n}")) + "\n")
                    .collect();
                loop {
                    let reply = client
                        .request(Method::POST, &url, body.clone(), &[("content-type", "application/x-ndjson")])
                        .await;
                    if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    assert_eq!(reply.status, StatusCode::OK, "{}", String::from_utf8_lossy(&reply.body));
                    let ids: Vec<String> = reply.json()["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_str().unwrap().to_owned())
                        .collect();
                    let count = {
                        let mut acked = acked.lock().unwrap();
                        acked.extend(ids);
                        acked.len()
                    };
                    progress(count);
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    acked
}

/// Waits until the gateway has forwarded everything to `sink` (its spool is empty).
pub async fn wait_spool_empty(gateway: &Gateway, sink: &str, timeout: Duration) {
    let client = HttpClient::new();
    let deadline = Instant::now() + timeout;
    loop {
        let ready = client.get(&gateway.admin_url("/readyz")).await.json();
        let sink_state = &ready["sinks"][sink];
        if sink_state["spooled"].as_u64() == Some(0) && sink_state["status"] == "ready" {
            return;
        }
        assert!(Instant::now() < deadline, "{sink} spool not drained in {timeout:?}: {ready}\n{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plugin built by `plugins/build.sh` (in `$PLUGINS_OUT`, default ~/.cache/inquiry-gateway/plugins);
/// panics, saying how to build it, when it is missing.
pub fn built_plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PLUGINS_OUT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/inquiry-gateway/plugins")
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run plugins/build.sh (tests/run-all.sh does)", path.display());
    path
}

/// A hostile or helper test plugin in gateway/tests/plugins.
pub fn test_plugin(name: &str) -> PathBuf {
    workspace_file(&format!("gateway/tests/plugins/{name}"))
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; panics with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Debian's aiosmtpd on a loopback port, delivering into a Maildir.
pub struct SmtpServer {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts it on a free port and waits until it listens.
    pub fn start() -> SmtpServer {
        let maildir = tempfile::tempdir().unwrap();
        let port = free_addr().port();
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd is installed (tests/setup.sh installs python3-aiosmtpd)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer { child, port, maildir }
    }

    /// Every message received so far, raw.
    pub fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail/new");
        let mut messages: Vec<String> = std::fs::read_dir(new)
            .map(|dir| dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect())
            .unwrap_or_default();
        messages.sort();
        messages
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small HTTP/1.1 server on a free loopback port (over TLS with `tls`) that answers every
/// request with `answer(request head, body)`: a status and a body. For stand-ins of the services
/// the gateway calls (alert targets, key servers, identity providers). Returns its address.
pub async fn serve<F>(tls: Option<tokio_rustls::TlsAcceptor>, answer: F) -> SocketAddr
where
    F: Fn(&hyper::http::request::Parts, &[u8]) -> (u16, String) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (answer, tls) = (answer.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let (status, text) = answer(&parts, &body);
                        let response = hyper::Response::builder().status(status).body(Full::new(Bytes::from(text)));
                        Ok::<_, std::convert::Infallible>(response.unwrap())
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else { return };
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                    None => {
                        let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    addr
}
