//! TLS for STARTTLS (RFC 3207) and the implicit TLS port (RFC 8314): the rustls
//! server configuration, its certificate (PEM files or generated at start) and the
//! handshake, timed out and counted.
//!
//! One configuration serves every connection. Session resumption is on both ways a
//! client may ask for it, so that a load test measures what real clients cost: TLS 1.3
//! and TLS 1.2 tickets sealed by rustls' rotating ring `Ticketer` (no per-client state
//! on the server) and a bounded server-side cache for TLS 1.2 clients without tickets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, tls_handshake};

/// TLS 1.2 sessions the server remembers for clients that resume by session id.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// What a connection's rustls state may hold while a handshake runs: rustls lets a
/// handshake flight grow its receive buffer to 64 KiB (`MAX_HANDSHAKE_SIZE`), plus the
/// outgoing flight (the certificate chain) and the connection state itself.
pub const HANDSHAKE_MEMORY: u64 = 64 * 1024 + 8 * 1024;
/// What an established TLS connection may hold while data flows: one record being
/// received (up to 16 KiB plus header and tag), its decrypted plaintext until the
/// session reads it (16 KiB), and the connection state. Idle, rustls shrinks its
/// receive buffer back to 4 KiB, so this is the busy bound, charged like the input
/// buffer: before it is used, for the whole connection.
pub const ESTABLISHED_MEMORY: u64 = 2 * (16 * 1024 + 512) + 2 * 1024;

/// The server's TLS setup, built once at start.
pub struct Tls {
    acceptor: TlsAcceptor,
    /// SHA-256 of the leaf certificate (hex), for the start log.
    pub fingerprint: String,
}

/// A handshake that did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer sent something that is not TLS, or the handshake failed.
    Failed,
    /// `tls_handshake_timeout` passed.
    Timeout,
}

impl Tls {
    /// Loads or generates the certificate; `None` when TLS is not configured.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let (chain, key) = if config.tls_self_signed {
            let generated = generate(&config.domain)?;
            if let Some(path) = &config.tls_ca_out {
                std::fs::write(path, &generated.ca_pem).map_err(|e| ConfigError::KeyFile {
                    key: "tls_ca_out".into(),
                    reason: format!("cannot write {}: {e}", path.display()),
                })?;
            }
            (generated.chain, generated.key)
        } else {
            match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => (load_chain(cert)?, load_key(key)?),
                _ => return Ok(None),
            }
        };
        let fingerprint = sha256_hex(&chain[0]);
        let server_config = server_config(chain, key)?;
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
            fingerprint,
        }))
    }

    /// Runs the server side of a handshake on `stream` within `limit`, counting the
    /// result and, on success, the protocol version.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        limit: Duration,
        metrics: &Metrics,
    ) -> Result<TlsStream<S>, HandshakeFailure> {
        let result = match tokio::time::timeout(limit, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(_)) => Err(HandshakeFailure::Failed),
            Err(_) => Err(HandshakeFailure::Timeout),
        };
        match &result {
            Ok(tls) => {
                metrics.tls_handshake(tls_handshake::OK);
                metrics.tls_session(version_label(tls.get_ref().1.protocol_version()));
            }
            Err(HandshakeFailure::Failed) => metrics.tls_handshake(tls_handshake::FAILED),
            Err(HandshakeFailure::Timeout) => metrics.tls_handshake(tls_handshake::TIMEOUT),
        }
        result
    }
}

/// The label of a negotiated protocol version, as loadgen's result spells it.
fn version_label(version: Option<rustls::ProtocolVersion>) -> &'static str {
    match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::KeyFile {
        key: key.into(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("tls_cert", format!("no usable TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            invalid(
                "tls_key",
                format!("the key does not fit the certificate or is not supported: {e}"),
            )
        })?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| invalid("tls_cert", format!("cannot set up session tickets: {e}")))?;
    Ok(config)
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let error = |reason: String| ConfigError::KeyFile {
        key: "tls_cert".into(),
        reason: format!("{}: {reason}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("no PEM CERTIFICATE found".into()));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| ConfigError::KeyFile {
        key: "tls_key".into(),
        reason: format!(
            "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            path.display()
        ),
    })
}

/// A certificate made at start: the chain to serve and the CA clients may trust.
struct Generated {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_pem: String,
}

/// A throwaway CA and a leaf it signs for `domain`, `localhost` and `127.0.0.1`, both
/// ECDSA P-256. A CA rather than one self-signed leaf so that clients can verify the
/// chain as they would a real one (a self-signed end-entity certificate is refused by
/// webpki as a trust anchor for itself).
fn generate(domain: &str) -> Result<Generated, ConfigError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| ConfigError::KeyFile {
        key: "tls_self_signed".into(),
        reason: format!("cannot generate a certificate for {domain}: {e}"),
    };
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("Stampede throwaway CA for {domain}"),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![domain.to_string()];
    for name in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    let leaf_key = KeyPair::generate().map_err(failed)?;
    let mut leaf_params = CertificateParams::new(names).map_err(failed)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, domain.to_string());
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(failed)?;
    let key =
        PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| ConfigError::KeyFile {
            key: "tls_self_signed".into(),
            reason: format!("generated key unusable: {e}"),
        })?;
    Ok(Generated {
        chain: vec![leaf.der().clone(), ca_cert.der().clone()],
        key,
        ca_pem: ca_cert.pem(),
    })
}

/// SHA-256 of a certificate as lowercase hex, computed with the TLS stack's own hash
/// (no second crypto crate for one digest).
fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    let Some(suite) = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13() else {
        return String::new();
    };
    let digest = suite.common.hash_provider.hash(cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_names_the_domain_and_loopback_and_chains_to_its_ca() {
        let generated = generate("mx.test").expect("generate");
        assert_eq!(generated.chain.len(), 2);
        assert!(generated.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(generated.chain[1].clone()).expect("CA is a root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        use rustls::client::danger::ServerCertVerifier;
        for name in ["mx.test", "localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).expect("name");
            verifier
                .verify_server_cert(
                    &generated.chain[0],
                    &generated.chain[1..],
                    &name,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = rustls_pki_types::ServerName::try_from("other.test").expect("name");
        assert!(
            verifier
                .verify_server_cert(
                    &generated.chain[0],
                    &[],
                    &other,
                    &[],
                    rustls_pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_leaf() {
        // SHA-256 of the empty input, the known test vector.
        let empty = CertificateDer::from(Vec::new());
        assert_eq!(
            sha256_hex(&empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_missing_or_keyless_pem_file_is_an_error_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_chain(&missing).unwrap_err().to_string();
        assert!(
            err.contains("tls_cert") && err.contains("missing.pem"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = load_chain(&empty).unwrap_err().to_string();
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");
        let err = load_key(&empty).unwrap_err().to_string();
        assert!(
            err.contains("tls_key") && err.contains("empty.pem"),
            "{err}"
        );
    }
}
