//! TLS for the test client: a rustls client (the same stack as the server) trusting
//! the CA the server generated (`tls_ca_out`), so certificate checking stays on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use server::{Config, RunningServer};
use tokio_rustls::TlsConnector;

use super::{Client, REPLY_WAIT, start_with};

/// A server with a generated certificate, and the directory holding its CA file.
pub struct TlsServer {
    pub server: RunningServer,
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts a server with `tls_self_signed`, writing its CA into a temporary directory.
pub async fn start_tls_with(f: impl FnOnce(&mut Config)) -> TlsServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("ca.pem");
    let ca_out = ca_file.clone();
    let server = start_with(move |c| {
        c.tls_self_signed = true;
        c.tls_ca_out = Some(ca_out);
        f(c);
    })
    .await;
    TlsServer {
        server,
        ca_file,
        _dir: dir,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting only the CA in `ca_file`, offering `versions`.
pub fn client_config(
    ca_file: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A connector trusting the server's CA, TLS 1.3 and 1.2 offered.
pub fn connector(ca_file: &Path) -> TlsConnector {
    TlsConnector::from(Arc::new(client_config(ca_file, rustls::DEFAULT_VERSIONS)))
}

/// What a finished client handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: Option<rustls::ProtocolVersion>,
    pub resumed: bool,
}

impl Client {
    /// STARTTLS (expecting `220 2.0.0`), then a verified handshake for `localhost`.
    pub async fn start_tls(mut self, connector: &TlsConnector) -> (Client, Negotiated) {
        self.cmd("STARTTLS").await.assert(220, "2.0.0");
        let stream = self.into_stream();
        handshake(stream, connector).await
    }

    /// Connects to an implicit TLS port and completes a verified handshake (the
    /// banner is not read yet).
    pub async fn connect_tls(addr: SocketAddr, connector: &TlsConnector) -> (Client, Negotiated) {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        handshake(Box::new(stream), connector).await
    }
}

async fn handshake(
    stream: Box<dyn super::Stream>,
    connector: &TlsConnector,
) -> (Client, Negotiated) {
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(REPLY_WAIT, connector.connect(name, stream))
        .await
        .expect("handshake within the wait time")
        .expect("handshake succeeds");
    let connection = tls.get_ref().1;
    let negotiated = Negotiated {
        version: connection.protocol_version(),
        resumed: connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    };
    (Client::over(tls), negotiated)
}
