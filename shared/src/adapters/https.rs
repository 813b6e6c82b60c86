//! The one HTTPS stack of every function: hyper 1 with rustls on aws-lc-rs, checked against
//! one trust store, the Mozilla roots compiled into the binary (webpki-roots). The Stripe
//! client and the AWS SDK clients both connect through [`Connector`], so a cold start reads
//! no certificate file and parses no PEM: the AWS SDK's default HTTPS client loads the
//! platform's roots (`rustls-native-certs`: the CA bundle, or ~300 files on Debian) while
//! `aws_config` loads, before the first request. [`AwsHttpClient`] replaces it.

use std::collections::HashMap;
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
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service as _;

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

/// The stream a [`Connector`] hands to hyper.
pub type Stream = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection opened early and not handed out within this time is dropped, not used: a
/// server may close an idle connection (Stripe's client pool keeps them 30 s, AWS's 90 s), and a
/// request written to a closed one fails (and is retried on a new one).
pub const EARLY_MAX_AGE: Duration = Duration::from_secs(20);

/// An HTTPS (or plain HTTP, for moto and the emulator on loopback) connector: TCP_NODELAY,
/// a connect timeout, HTTP/2 or HTTP/1.1 by ALPN; and connections opened ahead of need
/// ([`Connector::open_early`]).
///
/// A cold function reads its secret from SSM before it can build its Stripe client, then opens
/// a new connection (TCP + TLS) to each service on the critical path of its first request. With
/// `open_early` at init those handshakes run beside the SSM read instead: a request to a host
/// with a connection opened early takes it instead of dialing, waiting for its handshake if it
/// is still under way (normally less than a new one: it started earlier; but a dial that then
/// fails, e.g. a connect timeout, is waited out before the request dials its own). Nothing is sent on an early
/// connection before hyper sends a request on it: no request, no credential, no quota spent.
/// A failed early dial costs nothing but itself: the request then dials as it would have.
#[derive(Clone)]
pub struct Connector {
    inner: HttpsConnector<TcpConnector>,
    early: Arc<std::sync::Mutex<HashMap<String, Vec<Early>>>>,
}

struct Early {
    opened: tokio::time::Instant,
    stream: tokio::sync::oneshot::Receiver<Result<Stream, BoxError>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let early = self.early.lock().map(|m| m.values().map(Vec::len).sum::<usize>()).unwrap_or(0);
        f.debug_struct("Connector").field("early", &early).finish_non_exhaustive()
    }
}

/// `scheme://host:port`, the port made explicit: the key early connections are found by.
fn host_key(uri: &Uri) -> Option<String> {
    let scheme = uri.scheme_str()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some(format!("{scheme}://{host}:{port}"))
}

impl Connector {
    pub fn new(tls: rustls::ClientConfig, connect_timeout: Duration) -> Self {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let inner = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Self { inner, early: Arc::default() }
    }

    /// Starts opening `count` connections to `uri`'s host in the background (on the current
    /// Tokio runtime; outside one, nothing is done), for the next requests to that host.
    /// At most `count` are kept per host, however often it is called.
    pub fn open_early(&self, uri: &Uri, count: usize) {
        let (Some(key), Ok(runtime)) = (host_key(uri), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let Ok(mut early) = self.early.lock() else { return };
        let waiting = early.entry(key).or_default();
        waiting.retain(|e| e.opened.elapsed() < EARLY_MAX_AGE);
        while waiting.len() < count {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let dial = self.inner.clone().call(uri.clone());
            runtime.spawn(async move {
                let _ = tx.send(dial.await);
            });
            waiting.push(Early { opened: tokio::time::Instant::now(), stream: rx });
        }
    }

    /// An early connection to `uri`'s host, if one was opened and is young enough.
    fn take_early(&self, uri: &Uri) -> Option<Early> {
        let key = host_key(uri)?;
        let mut early = self.early.lock().ok()?;
        let waiting = early.get_mut(&key)?;
        let taken = waiting.pop();
        if waiting.is_empty() {
            early.remove(&key);
        }
        taken.filter(|e| e.opened.elapsed() < EARLY_MAX_AGE)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let early = self.take_early(&uri);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            if let Some(early) = early {
                if let Ok(Ok(stream)) = early.stream.await {
                    return Ok(stream);
                }
            }
            inner.call(uri).await
        })
    }
}

/// A hyper client over a [`Connector`] that keeps `max_idle_per_host` idle connections for
/// `idle` (0: a connection per request).
pub fn client<B>(connector: Connector, max_idle_per_host: usize, idle: Duration) -> Client<Connector, B>
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
    client: Client<Connector, SdkBody>,
    connector: Connector,
}

impl AwsHttpClient {
    pub fn new(roots: &TrustRoots) -> Result<Self, TrustError> {
        let connector = Connector::new(tls_config(roots)?, AWS_CONNECT_TIMEOUT);
        Ok(Self { client: client(connector.clone(), usize::MAX, AWS_POOL_IDLE), connector })
    }

    /// The connector of this client's pool: what [`Connector::open_early`] opens is used by it.
    pub fn connector(&self) -> &Connector {
        &self.connector
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
    client: Client<Connector, SdkBody>,
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
pub(crate) mod tests {
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
    pub(crate) async fn server<F, Fut>(serve: F) -> (String, Arc<std::sync::atomic::AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        server_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), serve)
    }

    fn server_on<F, Fut>(listener: TcpListener, serve: F) -> (String, Arc<std::sync::atomic::AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
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

    /// Answers every request on a connection with `200 ok`, counting the requests.
    async fn answer_ok(s: tokio::net::TcpStream, requests: Arc<std::sync::atomic::AtomicUsize>) {
        answer_with(s, requests, "ok").await
    }

    /// Answers every request on a connection (one read each) with `200` and `body`, counting
    /// the requests.
    pub(crate) async fn answer_with(
        mut s: tokio::net::TcpStream,
        requests: Arc<std::sync::atomic::AtomicUsize>,
        body: &'static str,
    ) {
        let mut buf = [0u8; 8192];
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if s.write_all(answer.as_bytes()).await.is_err() {
                break;
            }
        }
    }

    /// A server answering `200 ok`: its URL, connections accepted, requests answered.
    async fn ok_server() -> (String, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>) {
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        let (url, count) = server(move |s| answer_ok(s, seen.clone())).await;
        (url, count, requests)
    }

    /// Waits (up to 5 s) until `n` connections were accepted.
    pub(crate) async fn accepted(count: &std::sync::atomic::AtomicUsize, n: usize) {
        for _ in 0..500 {
            if count.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} connections accepted, {n} expected", count.load(std::sync::atomic::Ordering::SeqCst));
    }

    fn plain() -> Connector {
        Connector::new(tls_config(&TrustRoots::Bundled).unwrap(), Duration::from_secs(1))
    }

    async fn get_ok(http: &Client<Connector, SdkBody>, url: &str) {
        let r = http.request(hyper::Request::builder().uri(url).body(SdkBody::empty()).unwrap()).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_opened_early_carry_the_first_requests_and_nothing_before_them() {
        let (url, count, requests) = ok_server().await;
        let connector = plain();
        connector.open_early(&url.parse().unwrap(), 2);
        connector.open_early(&url.parse().unwrap(), 2); // at most `count` per host
        accepted(&count, 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing is sent on an early connection");

        let http = client::<SdkBody>(connector, usize::MAX, AWS_POOL_IDLE);
        tokio::join!(get_ok(&http, &url), get_ok(&http, &url));
        get_ok(&http, &url).await;
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "two requests at once took the two early connections"
        );
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// One thread: the early dials are spawned but not yet run when the requests ask for
    /// connections, so the requests find them under way.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_while_the_early_dial_is_under_way_waits_for_it_instead_of_dialing() {
        let (url, count, requests) = ok_server().await;
        let connector = plain();
        connector.open_early(&url.parse().unwrap(), 2);
        let http = client::<SdkBody>(connector, usize::MAX, AWS_POOL_IDLE);
        tokio::join!(get_ok(&http, &url), get_ok(&http, &url));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_early_connection_older_than_its_limit_is_dropped_and_a_new_one_dialed() {
        let (url, count, _) = ok_server().await;
        let connector = plain();
        connector.open_early(&url.parse().unwrap(), 1);
        accepted(&count, 1).await;
        tokio::time::pause();
        tokio::time::advance(EARLY_MAX_AGE).await;
        tokio::time::resume();
        let http = client::<SdkBody>(connector, usize::MAX, AWS_POOL_IDLE);
        get_ok(&http, &url).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_early_dial_leaves_the_request_to_dial_its_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let connector = plain();
        let url = format!("http://{addr}/");
        connector.open_early(&url.parse().unwrap(), 1); // refused: nothing listens
        tokio::time::sleep(Duration::from_millis(100)).await;
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        let (_, count) = server_on(TcpListener::bind(addr).await.unwrap(), move |s| answer_ok(s, seen.clone()));
        let http = client::<SdkBody>(connector, usize::MAX, AWS_POOL_IDLE);
        get_ok(&http, &url).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn early_connections_are_found_by_scheme_host_and_port() {
        let key = |u: &str| host_key(&u.parse().unwrap());
        assert_eq!(key("https://api.stripe.com/"), key("https://api.stripe.com:443/v1/prices?x=1"));
        assert_ne!(key("https://api.stripe.com/"), key("http://api.stripe.com/"));
        assert_eq!(key("http://127.0.0.1:5055").as_deref(), Some("http://127.0.0.1:5055"));
        assert_eq!(key("/relative"), None);
    }

    #[tokio::test]
    async fn answers_pass_through_and_the_connection_is_kept_for_the_next_request() {
        let (url, accepted) = server(|s| answer_ok(s, Arc::default())).await;
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
