//! The one HTTPS stack of every function: hyper 1 with rustls on aws-lc-rs, checked against
//! one trust store, the Mozilla roots compiled into the binary (webpki-roots). The Stripe
//! client and the AWS SDK clients both connect through [`connector`], so a cold start reads
//! no certificate file and parses no PEM: the AWS SDK's default HTTPS client loads the
//! platform's roots (`rustls-native-certs`: the CA bundle, or ~300 files on Debian) while
//! `aws_config` loads, before the first request. [`AwsHttpClient`] replaces it.

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The certificates a TLS connection is checked against.
#[derive(Clone, Debug, Default)]
pub enum TrustRoots {
    /// The Mozilla roots compiled into the binary (webpki-roots): no file read or PEM parsed
    /// at start, the same on every machine.
    #[default]
    Bundled,
    /// Only these certificates (DER), e.g. a test certificate for an emulator behind TLS.
    Only(Vec<Vec<u8>>),
}

/// A trust root that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("unusable TLS trust root: {0}")]
pub struct TrustError(String);

/// rustls' client configuration for `roots` (TLS 1.2 and 1.3, ALPN h2 and http/1.1 added by
/// the connector). The bundled roots' configuration is built once per process and cloned for
/// each client, so the AWS SDK's client and the Stripe client share one store.
pub fn tls_config(roots: &TrustRoots) -> Result<rustls::ClientConfig, TrustError> {
    static BUNDLED: std::sync::OnceLock<rustls::ClientConfig> = std::sync::OnceLock::new();
    if let TrustRoots::Bundled = roots {
        if let Some(config) = BUNDLED.get() {
            return Ok(config.clone());
        }
        let config = build_tls_config(roots)?;
        return Ok(BUNDLED.get_or_init(|| config).clone());
    }
    build_tls_config(roots)
}

fn build_tls_config(roots: &TrustRoots) -> Result<rustls::ClientConfig, TrustError> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        TrustRoots::Bundled => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        TrustRoots::Only(certs) => {
            for der in certs {
                store
                    .add(rustls::pki_types::CertificateDer::from(der.clone()))
                    .map_err(|e| TrustError(e.to_string()))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth())
}

/// An HTTPS (or plain HTTP, for moto and the emulator on loopback) connector: TCP_NODELAY,
/// a connect timeout, HTTP/2 or HTTP/1.1 by ALPN.
pub fn connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsConnector<TcpConnector> {
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp)
}

/// A hyper client over [`connector`] that keeps `max_idle_per_host` idle connections for
/// `idle` (0: a connection per request).
pub fn client<B>(
    connector: HttpsConnector<TcpConnector>,
    max_idle_per_host: usize,
    idle: Duration,
) -> Client<HttpsConnector<TcpConnector>, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle)
        .pool_max_idle_per_host(max_idle_per_host)
        .build(connector)
}

/// The AWS SDK's connect timeout for `BehaviorVersion::latest()` (3.1 s).
const AWS_CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);
/// Idle connections to AWS endpoints are kept this long (hyper's and the SDK's default).
const AWS_POOL_IDLE: Duration = Duration::from_secs(90);

/// The AWS SDK's HTTP client on paykey's HTTPS stack: one pooled hyper client shared by every
/// SDK client built from the same `SdkConfig`. The SDK's own retry, operation timeouts and
/// signing are unchanged; this only sends requests. Errors are classified as the SDK's
/// default client does (timeouts, I/O and connect failures retryable as I/O, an incomplete
/// answer transient), so its retry strategy behaves the same.
#[derive(Clone, Debug)]
pub struct AwsHttpClient {
    client: Client<HttpsConnector<TcpConnector>, SdkBody>,
}

impl AwsHttpClient {
    pub fn new(roots: &TrustRoots) -> Result<Self, TrustError> {
        Ok(Self { client: client(connector(tls_config(roots)?, AWS_CONNECT_TIMEOUT), usize::MAX, AWS_POOL_IDLE) })
    }

    pub fn shared(self) -> SharedHttpClient {
        SharedHttpClient::new(self)
    }
}

impl HttpClient for AwsHttpClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(AwsConnector { client: self.client.clone(), read_timeout: settings.read_timeout() })
    }
}

#[derive(Clone, Debug)]
struct AwsConnector {
    client: Client<HttpsConnector<TcpConnector>, SdkBody>,
    read_timeout: Option<Duration>,
}

impl HttpConnector for AwsConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let answer = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let answer = match read_timeout {
                Some(t) => match tokio::time::timeout(t, answer).await {
                    Ok(a) => a,
                    Err(elapsed) => return Err(ConnectorError::timeout(elapsed.into())),
                },
                None => answer.await,
            };
            match answer {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(classify(e)),
            }
        })
    }
}

fn find<'a, E: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(e), |e| e.source()).find_map(|e| e.downcast_ref::<E>())
}

/// The SDK's classification of hyper's errors (aws-smithy-http-client's `downcast_error`).
fn classify(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let connect = e.is_connect();
    let (io, timeout, transient) = match find::<hyper::Error>(&e) {
        Some(h) => (
            h.is_closed() || h.is_canceled() || find::<std::io::Error>(h).is_some(),
            h.is_timeout(),
            h.is_incomplete_message(),
        ),
        None => (find::<std::io::Error>(&e).is_some(), false, false),
    };
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
    if timeout {
        ConnectorError::timeout(boxed)
    } else if connect || io {
        ConnectorError::io(boxed)
    } else if transient {
        ConnectorError::other(boxed, Some(ErrorKind::TransientError))
    } else {
        ConnectorError::other(boxed, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn connector(read_timeout: Option<Duration>) -> AwsConnector {
        let http = AwsHttpClient::new(&TrustRoots::Bundled).unwrap();
        AwsConnector { client: http.client, read_timeout }
    }

    fn get(url: &str) -> HttpRequest {
        HttpRequest::try_from(hyper::Request::builder().uri(url).body(SdkBody::empty()).unwrap()).unwrap()
    }

    /// A server that runs `serve` on each connection it accepts, counting them.
    async fn server<F, Fut>(serve: F) -> (String, Arc<std::sync::atomic::AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = count.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve(s));
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn answers_pass_through_and_the_connection_is_kept_for_the_next_request() {
        let (url, accepted) = server(|mut s| async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                    break;
                }
            }
        })
        .await;
        let c = connector(None);
        for _ in 0..3 {
            let r = c.call(get(&url)).await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_classified_as_the_sdk_client_does_so_its_retries_apply() {
        // nothing listening: a connect failure, retryable as I/O
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let e = connector(None).call(get(&format!("http://127.0.0.1:{port}/"))).await.unwrap_err();
        assert!(e.is_io(), "{e:?}");

        // the server closes without answering: retryable (I/O or transient)
        let (url, _) = server(|mut s| async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
        })
        .await;
        let e = connector(None).call(get(&url)).await.unwrap_err();
        assert!(e.is_io() || e.as_other() == Some(ErrorKind::TransientError), "{e:?}");

        // no answer within the read timeout
        let (url, _) = server(|s| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        })
        .await;
        let e = connector(Some(Duration::from_millis(100))).call(get(&url)).await.unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
    }
}
