//! HTTPS on the ingest listener, over real sockets: certificates made with openssl for the test,
//! a rustls client that trusts one CA or another, a plain-HTTP client on the TLS port, a renewed
//! certificate picked up on SIGHUP, a broken one refused on SIGHUP, and a start with a missing key.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{eventually, inquiry_json, metric_value, unique, Gateway, HttpClient};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// A CA and a server certificate it signed for 127.0.0.1: (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |file: &str| dir.join(format!("{name}-{file}"));
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl").args(args).stderr(Stdio::null()).status().expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    let (ca, ca_key, cert, key, csr, ext) =
        (path("ca.pem"), path("ca.key"), path("server.pem"), path("server.key"), path("server.csr"), path("ext"));
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} CA"),
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", &s(&key), "-out", &s(&csr)]);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (ca, cert, key)
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// A client that trusts only `ca` (a fresh connection pool each, so each request handshakes anew).
fn https_client(ca: &Path) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector)
}

/// POSTs one inquiry over HTTPS; the status, or the client's error.
async fn post(client: &HttpsClient, gateway: &Gateway, external_id: &str) -> Result<(StatusCode, String), String> {
    let url = format!("https://{}/v1/inquiries", gateway.ingest);
    let body = inquiry_json("shop-tls", external_id);
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn tls_config(cert: &Path, key: &Path) -> String {
    format!("[ingest.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert.display(), key.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_serves_https_refuses_plain_http_and_takes_a_renewed_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, cert_a, key_a) = make_certificates(dir.path(), "a");
    let (ca_b, cert_b, key_b) = make_certificates(dir.path(), "b");
    let (cert, key) = (dir.path().join("live.pem"), dir.path().join("live.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let config = tls_config(&cert, &key);
    let mut gateway = Gateway::start(&config).await;
    let (trusts_a, trusts_b) = (https_client(&ca_a), https_client(&ca_b));

    // HTTPS with the certificate of CA a: accepted, and readable back over HTTPS.
    let external_id = unique("tls-");
    let (status, body) = post(&trusts_a, &gateway, &external_id).await.expect("https works");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    let request = Request::get(format!("https://{}/v1/inquiries/{id}", gateway.ingest)).body(Full::default()).unwrap();
    assert_eq!(trusts_a.request(request).await.unwrap().status(), StatusCode::OK);

    // A client that does not trust CA a gets no answer; neither does plain HTTP on the TLS port.
    let refused = post(&trusts_b, &gateway, &unique("tls-")).await.expect_err("untrusted certificate");
    assert!(refused.contains("UnknownIssuer") || refused.contains("certificate"), "{refused}");
    let plain = HttpClient::new()
        .try_request(Method::GET, &format!("http://{}/v1/inquiries/{id}", gateway.ingest), Bytes::new(), &[])
        .await;
    assert!(plain.is_err(), "plain HTTP gets no HTTP answer on the TLS port");
    eventually(Duration::from_secs(10), "failed handshakes are counted", || async {
        let metrics = support::metrics(&gateway).await;
        metric_value(&metrics, "inquiry_gateway_tls_handshake_failures_total", &[("listener", "ingest")]) >= 1.0
    })
    .await;

    // The certificate is renewed (CA b) in place: SIGHUP serves it to new connections.
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    gateway.reconfigure(&config);
    eventually(Duration::from_secs(10), "the renewed certificate is served", || async {
        post(&trusts_b, &gateway, &unique("tls-")).await.is_ok_and(|(status, _)| status == StatusCode::CREATED)
    })
    .await;
    assert!(post(&trusts_a, &gateway, &unique("tls-")).await.is_err(), "the old certificate is no longer served");

    // A broken certificate file on SIGHUP: refused, the one in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    gateway.reconfigure(&config);
    eventually(Duration::from_secs(10), "the refusal is logged", || async {
        gateway.log().contains("certificate not reloaded")
    })
    .await;
    let (status, _) = post(&trusts_b, &gateway, &unique("tls-")).await.expect("the working certificate stays");
    assert_eq!(status, StatusCode::CREATED);
}

#[test]
fn a_listener_whose_key_cannot_be_read_does_not_start_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = make_certificates(dir.path(), "c");
    let config = dir.path().join("gateway.toml");
    let store = dir.path().join("store");
    std::fs::write(
        &config,
        format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n",
            tls_config(&cert, &dir.path().join("missing.key")),
            store.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{output}");
    assert!(output.contains("ingest.tls") && output.contains("missing.key"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_health_and_metrics_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path(), "admin");
    let (ingest, admin) = (support::free_addr(), support::free_addr());
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[ingest]\nlisten = \"{ingest}\"\n[admin]\nlisten = \"{admin}\"\n[admin.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [store]\npath = \"{}\"\n",
            cert.display(),
            key.display(),
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inquiry-gateway"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let client = https_client(&ca);
    let get = |path: &str| Request::get(format!("https://{admin}{path}")).body(Full::default()).unwrap();
    let mut healthy = false;
    for _ in 0..200 {
        if let Ok(response) = client.request(get("/healthz")).await {
            healthy = response.status() == StatusCode::OK;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = client.request(get("/metrics")).await.map(|r| r.status());
    let plain = HttpClient::new().try_request(Method::GET, &format!("http://{admin}/healthz"), Bytes::new(), &[]).await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    assert!(healthy, "GET https://.../healthz answered 200\n{log}");
    assert_eq!(metrics.ok(), Some(StatusCode::OK), "{log}");
    assert!(plain.is_err(), "plain HTTP gets no answer on the admin TLS port");
    assert!(log.contains("\"admin_tls\":true"), "the start-up line says so: {log}");
}
