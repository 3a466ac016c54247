//! TLS for the API: a server certificate, and optionally client certificates that must be
//! signed by a given CA (a connection without one never reaches HTTP).
//!
//! [`TlsListener`] plugs into `axum::serve`: a background task accepts TCP connections and runs
//! each handshake in its own task (bounded in time), so a slow or hostile client cannot hold up
//! the others; finished handshakes are handed to the server.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Longest time a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} from {path}: {detail}")]
    Read {
        what: &'static str,
        path: String,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::Read {
        what,
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Which client certificates a TLS server asks for.
pub enum ClientCerts {
    /// None: callers are identified (if at all) above TLS.
    None,
    /// Every client must show one signed by one of these CAs, or the handshake fails.
    Required(Vec<CertificateDer<'static>>),
    /// A client may show one signed by one of these CAs (one signed by another is refused).
    Optional(Vec<CertificateDer<'static>>),
}

impl ClientCerts {
    /// `Required` by the CA in the PEM file `ca`, or `None` without one.
    pub fn required_by(ca: Option<&Path>) -> Result<ClientCerts, TlsError> {
        Ok(match ca {
            Some(ca) => ClientCerts::Required(read_certs(ca, "the client CA")?),
            None => ClientCerts::None,
        })
    }

    /// The CA certificates of the PEM file `ca`.
    pub fn read_ca(ca: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        read_certs(ca, "the client CA")
    }
}

/// The server side of TLS: `cert` and `key` (PEM), and the client certificates to ask for.
pub fn server_config(
    cert: &Path,
    key: &Path,
    clients: ClientCerts,
) -> Result<ServerConfig, TlsError> {
    let chain = read_certs(cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        what: "the server key",
        path: key.display().to_string(),
        detail: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let (cas, required) = match clients {
        ClientCerts::None => (Vec::new(), false),
        ClientCerts::Required(cas) => (cas, true),
        ClientCerts::Optional(cas) => (cas, false),
    };
    let builder = if cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in cas {
            roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if required {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(
            verifier
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
        )
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TCP listener that hands out connections after their TLS handshake.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: ServerConfig) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(64);
        let said = Arc::new(std::sync::Mutex::new(
            std::collections::HashSet::<String>::new(),
        ));
        let acceptor_task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx, said) = (acceptor.clone(), tx.clone(), said.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            // Said once per reason (a client with an unknown CA retries often).
                            let why = e.to_string();
                            let first = {
                                let mut seen = said.lock().expect("said lock");
                                seen.len() < 64 && seen.insert(why.clone())
                            };
                            if first {
                                tracing::warn!(%peer, error = %why, "TLS handshake refused (said once per reason)");
                            } else {
                                tracing::debug!(%peer, error = %why, "TLS handshake refused");
                            }
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The acceptor task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Who is at the other end of a connection: its address and, where it showed one, the leaf of
/// its (verified) client certificate. Handlers get it as `ConnectInfo<Peer>`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub certificate: Option<CertificateDer<'static>>,
}

impl Peer {
    /// The peer of a TLS connection.
    pub fn of(stream: &TlsStream<TcpStream>) -> Peer {
        let (tcp, session) = stream.get_ref();
        let certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.clone().into_owned());
        Peer {
            addr: tcp
                .peer_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            certificate,
        }
    }
}
