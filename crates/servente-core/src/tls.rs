//! TLS with rustls: loading PEM certificates and keys, choosing a certificate by SNI, ALPN.
//!
//! A TLS listener has a default certificate; sites add certificates for their host names
//! (exact or `*.suffix`). The resolver picks the exact name first, then the wildcard, then the
//! listener's default, so a client without SNI still completes the handshake.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use servente_config::{Tls, TlsVersion};

/// A problem with a certificate or key, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    /// The config key the files came from, e.g. `listener[1].tls`.
    pub key: String,
    pub message: String,
}

/// Loads a certificate chain and its private key and checks that they belong together.
pub fn load_certified_key(tls: &Tls) -> Result<Arc<CertifiedKey>, TlsError> {
    let err = |message: String| TlsError { key: tls.key_name.clone(), message };
    let certs = load_certs(&tls.cert_path).map_err(err)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path)
        .map_err(|e| err(format!("no usable private key in {}: {e}", tls.key_path.display())))?;
    let signing_key =
        provider::sign::any_supported_type(&key).map_err(|e| err(format!("unsupported private key in {}: {e}", tls.key_path.display())))?;
    let ck = CertifiedKey::new(certs, signing_key);
    ck.keys_match().map_err(|e| {
        err(format!("the key in {} does not match the certificate in {}: {e}", tls.key_path.display(), tls.cert_path.display()))
    })?;
    Ok(Arc::new(ck))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.collect();
    let certs = certs.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Chooses the certificate for a handshake from its SNI name.
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*.`, e.g. `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").field("names", &self.exact.keys().collect::<Vec<_>>()).finish()
    }
}

impl SniResolver {
    pub fn new(default: Arc<CertifiedKey>) -> Self {
        SniResolver { exact: HashMap::new(), wildcard: HashMap::new(), default }
    }

    /// Adds a certificate for a host name (`example.org` or `*.example.org`).
    pub fn add(&mut self, host: &str, key: Arc<CertifiedKey>) {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_string(), key),
            None => self.exact.insert(host, key),
        };
    }

    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return k.clone();
            }
            if let Some((_, suffix)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(suffix)
            {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Builds the rustls config of a listener: TLS 1.2+ (or 1.3 only), ALPN h2 then http/1.1.
pub fn server_config(min: TlsVersion, resolver: SniResolver, alpn_h2: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min.get() {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError { key: "tls".into(), message: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if alpn_h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_key_and_path() {
        let tls = Tls {
            cert_path: "/nonexistent/c.pem".into(),
            key_path: "/nonexistent/k.pem".into(),
            key_name: "listener[0].tls".into(),
            ..Default::default()
        };
        let e = load_certified_key(&tls).expect_err("no such files").to_string();
        assert!(e.starts_with("listener[0].tls: cannot read /nonexistent/c.pem"), "{e}");
    }
}
