//! HTTPS on the gateway's own listeners: the certificate chain and key from PEM files (rustls with
//! the ring provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN), swapped in place on SIGHUP so that a
//! renewed certificate (cert-manager, ACME) applies without a restart.

use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerTlsConfig;

/// A listener's TLS: the acceptor of the certificate loaded last.
pub struct ListenerTls {
    acceptor: RwLock<TlsAcceptor>,
}

impl ListenerTls {
    /// Loads the certificate chain and key of `config`; the error names the file and the reason.
    pub fn load(config: &ListenerTlsConfig) -> Result<Arc<ListenerTls>, String> {
        Ok(Arc::new(ListenerTls { acceptor: RwLock::new(acceptor(config)?) }))
    }

    /// Loads `config`'s files again and serves them to new connections; on an error the
    /// certificate in use stays (and the error says why).
    pub fn reload(&self, config: &ListenerTlsConfig) -> Result<(), String> {
        let fresh = acceptor(config)?;
        *self.acceptor.write().expect("tls lock") = fresh;
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("tls lock").clone()
    }
}

/// A TLS client config (ring provider) trusting the CA certificates of the PEM file `ca_file`,
/// else the webpki roots; `setting` names the file's setting in errors.
pub fn client_config(ca_file: Option<&std::path::Path>, setting: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca_file) => {
            let unreadable = |err: &dyn std::fmt::Display| format!("{setting} {}: {err}", ca_file.display());
            for certificate in CertificateDer::pem_file_iter(ca_file).map_err(|e| unreadable(&e))? {
                roots.add(certificate.map_err(|e| unreadable(&e))?).map_err(|e| unreadable(&e))?;
            }
            if roots.is_empty() {
                return Err(unreadable(&"no PEM certificate in it"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn acceptor(config: &ListenerTlsConfig) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|certificates| certificates.collect())
        .map_err(|e| format!("cannot read certificates from {}: {e}", config.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", config.cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", config.key_file.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", config.cert_file.display(), config.key_file.display()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
