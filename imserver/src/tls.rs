//! TLS served by the node itself (`wss://`), for deployments without a TLS-terminating proxy.
//! The certificate chain and key are read from PEM files; rustls asks a resolver for them on
//! every handshake, so replacing them (SIGHUP reads the files again) takes effect for new
//! connections without touching open ones. A file that cannot be read keeps the old pair.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}; give --tls-cert a PEM certificate chain and --tls-key its PEM private key")]
pub struct TlsError(String);

/// The node's certificate and key, replaceable while it runs.
#[derive(Debug)]
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certs {
    /// Reads the certificate chain and key.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified_key(cert, key)?)),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// Reads the files again; new handshakes use what they hold.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(certified_key(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The rustls configuration serving these certificates (HTTP/1.1 only: WebSocket
    /// upgrades need it).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("no certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", key.display())))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError(format!("unusable key in {}: {e}", key.display())))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()
        .map_err(|e| TlsError(format!("the key does not match the certificate: {e}")))?;
    Ok(pair)
}

/// Reads the certificate and key again on every SIGHUP, until `stop` turns true. Without TLS
/// (`certs` is `None`) there is nothing to reload, but SIGHUP is still taken: its default
/// action would stop the node, and `systemctl reload` sends it.
pub async fn reload_on_hangup(
    node: imclient::NodeId,
    certs: Option<Arc<Certs>>,
    mut stop: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!(node = %node, "cannot listen for SIGHUP: certificates will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => match certs.as_ref().map(|c| c.reload()) {
                    Some(Ok(())) => tracing::info!(node = %node, "TLS certificate reloaded"),
                    Some(Err(e)) => tracing::warn!(node = %node, error = %e, "keeping the previous TLS certificate"),
                    None => tracing::info!(node = %node, "SIGHUP: no TLS certificate to reload"),
                },
                _ = stop.changed() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (node, certs);
        let _ = stop.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_that_fails_keeps_the_pair_in_use() {
        let dir = std::env::temp_dir().join(format!("imserver-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        std::fs::write(&cert, made.cert.pem()).expect("write");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write");
        let certs = Certs::load(&cert, &key).expect("loads");
        let before = certs.current.read().expect("lock").cert.clone();

        std::fs::write(&key, "not a key").expect("write");
        assert!(certs.reload().is_err());
        assert_eq!(certs.current.read().expect("lock").cert, before);

        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        std::fs::write(&cert, other.cert.pem()).expect("write");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write");
        assert!(
            certs.reload().is_err(),
            "a key that does not match is refused"
        );
        std::fs::write(&key, other.key_pair.serialize_pem()).expect("write");
        certs.reload().expect("reloads");
        assert_ne!(certs.current.read().expect("lock").cert, before);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
