//! The TLS layer of the client: one rustls configuration per run, shared by every
//! session, and the handshake that turns a TCP stream into a TLS one. The SMTP
//! code in [`crate::client`] runs unchanged over either stream.
//!
//! rustls with the ring provider through tokio-rustls, the stack the reference
//! server uses too. Certificates are checked by default against the system's roots
//! plus `--tls-ca`; `--tls-insecure` swaps in [`AcceptAnyCertificate`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, HandshakeKind, ProtocolVersion, RootCertStore,
    SignatureScheme,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cli::TlsMode;
use crate::client::TlsFailure;

/// rustls keeps at most this many TLS 1.3 tickets per server name (its
/// `ClientSessionMemoryCache`, which counts its size in tickets).
const TICKETS_PER_SERVER: usize = 8;

/// The TLS settings of a run, checked (see [`crate::config`]).
#[derive(Debug, Clone, Serialize)]
pub struct TlsSettings {
    pub mode: TlsMode,
    pub ca: Option<std::path::PathBuf>,
    pub insecure: bool,
    pub sni: Option<String>,
    pub resume: bool,
    /// The certificates of `--tls-ca`, read and checked once.
    #[serde(skip)]
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The name each server is asked for (SNI) and checked against, one per server.
    #[serde(skip)]
    pub server_names: Vec<ServerName<'static>>,
}

/// Reads the certificates of a `--tls-ca` file, each checked as a trust anchor.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    let mut probe = RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        probe
            .add(c.clone())
            .map_err(|e| format!("{shown}: certificate {} is not usable: {e}", i + 1))?;
    }
    Ok(certs)
}

/// A host name or IP address as a TLS server name.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is neither a DNS name nor an IP address"))
}

/// What one finished handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The IANA name of the cipher suite.
    pub cipher_suite: &'static str,
    /// An earlier session was resumed (an abbreviated handshake).
    pub resumed: bool,
}

/// When a session starts TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsStart {
    /// After EHLO, with STARTTLS (RFC 3207).
    Starttls,
    /// Right after the connect (RFC 8314).
    Implicit,
}

/// The run's TLS client: one configuration (and so one session cache) for every
/// session, and the name to ask each server for.
#[derive(Clone)]
pub struct TlsClient {
    pub start: TlsStart,
    connector: TlsConnector,
    config: Arc<ClientConfig>,
    names: Vec<ServerName<'static>>,
}

impl TlsClient {
    /// The client for `settings`, or `None` when the run is plaintext. `sessions`
    /// is the run's session count, which sizes the resumption cache.
    pub fn new(settings: &TlsSettings, sessions: usize) -> anyhow::Result<Option<TlsClient>> {
        let start = match settings.mode {
            TlsMode::None => return Ok(None),
            TlsMode::Starttls => TlsStart::Starttls,
            TlsMode::Implicit => TlsStart::Implicit,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let mut config = if settings.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate::new(&provider)))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(roots(&settings.ca_certs))
                .with_no_client_auth()
        };
        config.resumption = if settings.resume {
            // Every session may hold a ticket of its server at once; rustls keeps
            // up to eight per server name, and each handshake brings new ones.
            let servers = settings.server_names.len();
            Resumption::in_memory_sessions(sessions.max(servers * TICKETS_PER_SERVER))
        } else {
            Resumption::disabled()
        };
        let config = Arc::new(config);
        Ok(Some(TlsClient {
            start,
            connector: TlsConnector::from(Arc::clone(&config)),
            config,
            names: settings.server_names.clone(),
        }))
    }

    /// The same client without resumption, for the check before the run: its
    /// session would otherwise make the run's first handshake a resumed one.
    pub fn without_resumption(&self) -> TlsClient {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);
        TlsClient {
            start: self.start,
            connector: TlsConnector::from(Arc::clone(&config)),
            config,
            names: self.names.clone(),
        }
    }

    /// Runs the client side of a handshake with server number `server` over
    /// `stream`, within `limit`.
    pub async fn handshake<S>(
        &self,
        server: usize,
        stream: S,
        limit: Duration,
    ) -> Result<(TlsStream<S>, Handshake), TlsFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.names[server].clone();
        let tls = match tokio::time::timeout(limit, self.connector.connect(name, stream)).await {
            Err(_) => return Err(TlsFailure::Timeout),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(s)) => s,
        };
        let conn = tls.get_ref().1;
        let handshake = Handshake {
            version: version_name(conn.protocol_version()),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
        };
        Ok((tls, handshake))
    }
}

/// The system's trusted roots plus `extra`. A system store that cannot be read
/// (a minimal container) leaves `extra` alone, which is what `--tls-ca` is for.
fn roots(extra: &[CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    // Checked when the flag was read.
    store.add_parsable_certificates(extra.iter().cloned());
    store
}

/// tokio-rustls reports a failed handshake as an I/O error wrapping rustls' own.
/// A certificate that does not check out is told apart, since it is the one a
/// user fixes with `--tls-ca` or `--tls-insecure`.
fn classify(e: &std::io::Error) -> TlsFailure {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            TlsFailure::Certificate
        }
        _ => TlsFailure::Handshake,
    }
}

fn version_name(v: Option<ProtocolVersion>) -> &'static str {
    match v {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

/// `--tls-insecure`: accepts any certificate, for test servers with self-made
/// ones. It exists because a load test of a staging server should not need its
/// CA at hand; it still verifies the handshake's signatures, so the session is
/// really keyed to the certificate the server sent, and the TLS work measured is
/// the work a real client does.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAnyCertificate {
    fn new(provider: &CryptoProvider) -> Self {
        AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_take_hosts_and_addresses() {
        assert!(matches!(
            server_name("mail.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn ca_files_without_certificates_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "just text\n").unwrap();
        let err = read_ca_file(&path).unwrap_err();
        assert!(err.ends_with("ca.pem holds no PEM certificate"), "{err}");
        let err = read_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(
            err.starts_with("cannot read ") && err.contains("missing.pem"),
            "{err}"
        );
    }
}
