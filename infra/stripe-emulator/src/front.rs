//! A front for a loopback server that counts the connections clients open to it: TLS with the
//! test certificate in `testdata/` (as api.stripe.com is reached), or plain TCP (as moto is),
//! and an optional delay before each new connection is served, standing in for a TLS
//! handshake across a real network. Used to show how many connections a warm Lambda opens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The test certificate (self-signed, `127.0.0.1` and `localhost`, valid until 2126) and its key.
pub const TEST_CERT_PEM: &str = include_str!("../testdata/loopback-cert.pem");
const TEST_KEY_PEM: &str = include_str!("../testdata/loopback-key.pem");

/// The test certificate in DER, to trust it in a client.
pub fn test_cert_der() -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(TEST_CERT_PEM.as_bytes())
        .expect("valid test certificate")
        .to_vec()
}

/// A running front.
pub struct Front {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    kill: Arc<tokio::sync::Notify>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Front {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Closes every open connection, as a server does with idle ones or when it restarts.
    pub fn close_connections(&self) {
        self.kill.notify_waiters();
    }
    /// `https://127.0.0.1:port` or `http://…`.
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{}", if tls { "https" } else { "http" }, self.addr)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards every connection to `upstream`, after `delay`; with `tls`, terminates TLS with
/// the test certificate first (HTTP/1.1 by ALPN).
pub async fn start(upstream: SocketAddr, tls: bool, delay: Duration) -> std::io::Result<Front> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = if tls { Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config()?))) } else { None };
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let kill = Arc::new(tokio::sync::Notify::new());
    let killer = kill.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let kill = killer.clone();
            tokio::spawn(async move {
                let serve = async move {
                    let _ = client.set_nodelay(true);
                    tokio::time::sleep(delay).await;
                    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                    match acceptor {
                        Some(a) => {
                            if let Ok(mut stream) = a.accept(client).await {
                                let _ = tokio::io::copy_bidirectional(&mut stream, &mut server).await;
                            }
                        }
                        None => {
                            let mut client = client;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }
                };
                tokio::select! {
                    () = serve => {}
                    () = kill.notified() => {}
                }
            });
        }
    });
    Ok(Front { addr, accepted, kill, task })
}

fn server_config() -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_slice(TEST_CERT_PEM.as_bytes()).map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(TEST_KEY_PEM.as_bytes()).map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
