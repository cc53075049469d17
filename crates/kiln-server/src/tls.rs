//! HTTPS for `kiln serve` (`--tls-cert`, `--tls-key`) and the workers' and
//! clients' side of it (`--ca`): rustls on ring, nothing from the platform.
//!
//! The server's listener hands axum connections whose TLS handshake is
//! done. Handshakes run in tasks of their own with a deadline, so a client
//! that opens a connection and says nothing holds up no one else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::error::ServerError;

/// How long a client has to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Setup(format!("{what} {}: {e}", path.display()))
}

/// The server's TLS settings from a PEM certificate chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServerError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err("reading the certificate", cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("reading the certificate", cert, e))?;
    if chain.is_empty() {
        return Err(tls_err("reading the certificate", cert, "no CERTIFICATE in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err("reading the private key", key, e))?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Setup(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_err("the certificate and key", cert, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A listener whose connections have finished their TLS handshake.
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, as axum does.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake: no handshake within {HANDSHAKE:?}"),
                    }
                });
            }
        });
        Ok(TlsListener { local, ready, accepting })
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("local", &self.local).finish()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task is gone only when the listener is.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// An HTTP client's TLS settings: the certificates of `ca` (PEM: the
/// server's own certificate, or the CA that signed it) as the only roots,
/// or Mozilla's roots without one.
pub fn client_tls(ca: Option<&Path>) -> Result<ureq::tls::TlsConfig, ServerError> {
    let roots = match ca {
        None => ureq::tls::RootCerts::WebPki,
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| tls_err("reading", path, e))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err("reading", path, e))?;
            if certs.is_empty() {
                return Err(tls_err("reading", path, "no CERTIFICATE in it"));
            }
            ureq::tls::RootCerts::Specific(Arc::new(certs))
        }
    };
    Ok(ureq::tls::TlsConfig::builder().root_certs(roots).build())
}

/// Refuses a server URL that would carry tokens and secrets in the clear
/// off this host: `https://` anywhere, `http://` only to a loopback address.
pub fn check_server_url(url: &str) -> Result<(), ServerError> {
    let parsed = url::Url::parse(url).map_err(|e| ServerError::Setup(format!("server URL {url}: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(ServerError::Setup(format!(
                    "server URL {url}: plain http carries the worker's token and the builds' secrets in the clear; \
                     use https:// (kiln serve --tls-cert/--tls-key, and --ca here to pin its certificate) or a \
                     loopback address"
                )))
            }
        }
        s => Err(ServerError::Setup(format!("server URL {url}: `{s}` is not http or https"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_the_host() {
        assert!(check_server_url("https://kiln.internal:8420").is_ok());
        assert!(check_server_url("http://127.0.0.1:8420").is_ok());
        assert!(check_server_url("http://[::1]:8420").is_ok());
        assert!(check_server_url("http://localhost:8420").is_ok());
        let e = check_server_url("http://10.0.0.5:8420").unwrap_err().to_string();
        assert!(e.contains("in the clear") && e.contains("https://"), "{e}");
        assert!(check_server_url("http://kiln.internal").is_err());
        assert!(check_server_url("ftp://kiln.internal").is_err());
    }
}
