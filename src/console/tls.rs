//! TLS for the console (rustls, through tokio-rustls): `custos serve
//! --tls-cert FILE --tls-key FILE` with PEM files.
//!
//! [`load_server_config`] reads the certificate chain (leaf first) and the
//! private key (PKCS#8, PKCS#1 or SEC1), and builds a rustls server config
//! with the aws-lc-rs provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP
//! connections and runs each handshake in its own task (bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a slow or broken client never holds up
//! others; failed handshakes are logged and dropped.

use super::ConsoleError;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_err(path: &Path, why: impl std::fmt::Display) -> ConsoleError {
    ConsoleError::Tls {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Reads a PEM certificate chain and private key and builds the server
/// configuration. Errors name the file and what is wrong, never key bytes.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ConsoleError> {
    let cert_pem = std::fs::read(cert).map_err(|e| tls_err(cert, e))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(cert, format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(tls_err(
            cert,
            "holds no CERTIFICATE block; give the PEM certificate chain, leaf first",
        ));
    }
    let key_pem = zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| tls_err(key, e))?);
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        tls_err(
            key,
            "holds no readable PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            tls_err(
                key,
                format!("the key does not fit the certificate, or is not usable ({e})"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener that yields TLS connections whose handshake completed.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp` and runs the handshakes with `config`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("console: accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // A response is often written in two segments: without
                // this the second waits for the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "console: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "console: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task never ends on its own; if it is gone, no
            // connection will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
