//! The HTTP client the Stripe adapter sends async-stripe's requests with
//! ([`PooledClient::call`]: the request built by async-stripe, the answer read into paykey's
//! own types).
//!
//! async-stripe's own `Client` is built with `pool_max_idle_per_host(0)`: every call opens a
//! new TCP connection and a new TLS handshake, so a warm Lambda pays a handshake to
//! api.stripe.com on every Stripe call. Upstream disabled the pool because Stripe may close
//! an idle connection at any moment and a request written to it then fails (hyper#2136,
//! stripe-rs#176). paykey can pool safely: every create call carries an idempotency key and
//! the adapter retries a failed attempt (`adapters::stripe::retrying`), so a request lost on a
//! stale connection is sent again on a fresh one and Stripe replays or performs it once.
//!
//! One attempt per `call`: the adapter owns retries and backoff. The headers are the ones
//! async-stripe sends (`Authorization` marked sensitive, `Stripe-Version` of the crates'
//! generated types, the user agent with paykey's app info, `Idempotency-Key` when the request
//! strategy carries one).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::adapters::https;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use stripe_client_core::{IdempotencyKey, RequestBuilder, StripeMethod};

/// How long an idle connection is kept for the next call. Under Stripe's own idle limit, so
/// the client normally closes first; when Stripe closes first the retry covers it.
const POOL_IDLE: Duration = Duration::from_secs(30);
const DEFAULT_API_BASE: &str = "https://api.stripe.com/";

pub use crate::adapters::https::TrustRoots;

/// Why a Stripe call failed. Stripe's error answer is read into the four fields paykey uses,
/// not into async-stripe's `ApiErrors`: that type holds Stripe's full `PaymentIntent`,
/// `SetupIntent`, `PaymentMethod` and `Source` objects, and its deserializer linked ~2.4 MiB of
/// generated code reaching most of Stripe's object graph into every Stripe function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Stripe answered with an error status and its error object.
    #[error("{status} {}: {}", code.as_deref().unwrap_or(kind), message.as_deref().unwrap_or("no message"))]
    Stripe { status: u16, kind: String, code: Option<String>, message: Option<String> },
    /// No answer: the connection could not be made or was lost (the request may have arrived).
    #[error("{0}")]
    Transport(String),
    /// No answer within the client's timeout (the request may have arrived).
    #[error("timed out")]
    Timeout,
    /// An answer paykey could not read.
    #[error("unreadable answer: {0}")]
    Decode(String),
    /// The client or the request could not be built.
    #[error("{0}")]
    Config(String),
}

impl CallError {
    /// The HTTP status of a Stripe error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Stripe { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Stripe's error answer: `{"error": {"type": ..., "code": ..., "message": ...}}`.
#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: ErrorObject,
}

#[derive(serde::Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: String,
    code: Option<String>,
    message: Option<String>,
}

/// What every request carries, checked once when the client is built.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub api_base: Option<String>,
    pub timeout: Duration,
    pub roots: TrustRoots,
    /// Idle connections kept per host: 0 is async-stripe's behaviour (a connection per call),
    /// kept for the benchmark's reference.
    pub max_idle_per_host: usize,
    /// A connector made beforehand (to open a connection early, before the secret key is
    /// known: [`early_connector`]); `None`: one over `roots` with `timeout`.
    pub connector: Option<https::Connector>,
}

/// The default time a request (and a connection) may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

impl Default for ClientSettings {
    fn default() -> Self {
        Self { api_base: None, timeout: TIMEOUT, roots: TrustRoots::Bundled, max_idle_per_host: 8, connector: None }
    }
}

/// A connector for the default settings that starts opening one connection to the Stripe API
/// at `api_base` (api.stripe.com when `None`), for a [`PooledClient`] built later with it:
/// the handshake runs while the secret key is still being read.
pub fn early_connector(api_base: Option<&str>) -> Result<https::Connector, CallError> {
    let base = api_base.unwrap_or(DEFAULT_API_BASE);
    let uri = base.parse::<Uri>().map_err(|e| CallError::Config(format!("invalid Stripe API base: {e}")))?;
    let tls = https::tls_config(&TrustRoots::Bundled).map_err(|e| CallError::Config(e.to_string()))?;
    let connector = https::Connector::new(tls, TIMEOUT);
    connector.open_early(&uri, 1);
    Ok(connector)
}

/// A Stripe API client over one pooled hyper client on paykey's HTTPS stack
/// ([`crate::adapters::https`]). Cloning shares the pool.
#[derive(Clone)]
pub struct PooledClient {
    http: Client<https::Connector, Full<Bytes>>,
    base: Arc<str>,
    secret: HeaderValue,
    user_agent: HeaderValue,
    version: HeaderValue,
    timeout: Duration,
}

impl std::fmt::Debug for PooledClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl PooledClient {
    /// The secret goes only into the `Authorization` header, marked sensitive.
    pub fn new(secret_key: &str, app: &str, settings: ClientSettings) -> Result<Self, CallError> {
        let base = settings.api_base.unwrap_or_else(|| DEFAULT_API_BASE.to_string());
        let base = if base.ends_with('/') { base } else { format!("{base}/") };
        base.parse::<Uri>().map_err(|e| CallError::Config(format!("invalid Stripe API base: {e}")))?;
        let mut secret = HeaderValue::try_from(format!("Bearer {secret_key}"))
            .map_err(|_| CallError::Config("the secret key is not a valid header value".into()))?;
        secret.set_sensitive(true);
        let user_agent = HeaderValue::try_from(format!("Stripe/v1 RustBindings/async-stripe {app}"))
            .map_err(|_| CallError::Config("app info is not a valid header value".into()))?;
        let version = HeaderValue::from_str(stripe_shared::version::VERSION.as_str())
            .map_err(|_| CallError::Config("the Stripe API version is not a valid header value".into()))?;

        let connector = match settings.connector {
            Some(c) => c,
            None => {
                let tls = https::tls_config(&settings.roots).map_err(|e| CallError::Config(e.to_string()))?;
                https::Connector::new(tls, settings.timeout)
            }
        };
        let http = https::client(connector, settings.max_idle_per_host, POOL_IDLE);
        Ok(Self { http, base: base.into(), secret, user_agent, version, timeout: settings.timeout })
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Bytes, CallError> {
        let response = self.http.request(req).await.map_err(|e| transport(&e))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| transport(&e))?.to_bytes();
        if status.is_success() {
            return Ok(body);
        }
        Err(error_answer(status.as_u16(), &body))
    }
}

/// Reads Stripe's error answer (any other fields, such as a declined payment's
/// `payment_intent`, are skipped unread).
fn error_answer(status: u16, body: &[u8]) -> CallError {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(ErrorAnswer { error }) => {
            CallError::Stripe { status, kind: error.kind, code: error.code, message: error.message }
        }
        Err(_) => CallError::Decode(format!("an error answer ({status}) without Stripe's error")),
    }
}

/// A failure on the way to Stripe, with its causes ("client error (Connect): invalid peer
/// certificate: UnknownIssuer"); requests and headers are never part of it.
fn transport(e: &(dyn std::error::Error + 'static)) -> CallError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(message, ": {cause}");
        source = cause.source();
    }
    CallError::Transport(message)
}

impl PooledClient {
    /// Sends one request built by an async-stripe request type and reads the answer into `T`,
    /// paykey's own type holding only the fields it uses (`adapters::stripe::wire`): the
    /// generated deserializers of Stripe's full objects are then never linked in.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: RequestBuilder,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<T, CallError> {
        let bytes = self.send_built(req, idempotency_key).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Decode(e.to_string()))
    }

    async fn send_built(
        &self,
        req: RequestBuilder,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Bytes, CallError> {
        let mut uri = format!("{}v1{}", self.base, req.path);
        if let Some(query) = &req.query {
            let _ = write!(uri, "?{query}");
        }
        let method = match req.method {
            StripeMethod::Get => Method::GET,
            StripeMethod::Post => Method::POST,
            StripeMethod::Delete => Method::DELETE,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.secret.clone())
            .header(USER_AGENT, self.user_agent.clone())
            .header(HeaderName::from_static("stripe-version"), self.version.clone());
        if let Some(key) = idempotency_key {
            builder = builder.header(HeaderName::from_static("idempotency-key"), key.as_str());
        }
        if req.body.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
            .map_err(|e| CallError::Config(format!("request not built: {e}")))?;
        tokio::time::timeout(self.timeout, self.send(request)).await.unwrap_or(Err(CallError::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripe_error_answer_is_read_into_status_code_and_message_whatever_else_it_holds() {
        // A card decline as Stripe sends it: the error carries the whole PaymentIntent.
        let body = br#"{"error": {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
            "message": "Your card was declined.", "param": "", "request_log_url": "https://dashboard.stripe.com/x",
            "payment_intent": {"id": "pi_1", "object": "payment_intent", "amount": 900, "status": "requires_payment_method",
              "last_payment_error": {"type": "card_error"}, "metadata": {}}}}"#;
        let err = error_answer(402, body);
        assert_eq!(
            err,
            CallError::Stripe {
                status: 402,
                kind: "card_error".into(),
                code: Some("card_declined".into()),
                message: Some("Your card was declined.".into())
            }
        );
        assert_eq!(err.to_string(), "402 card_declined: Your card was declined.");
        assert_eq!(err.status(), Some(402));

        let rate =
            error_answer(429, br#"{"error": {"type": "invalid_request_error", "message": "Too many requests"}}"#);
        assert_eq!(rate.to_string(), "429 invalid_request_error: Too many requests");

        let proxy = error_answer(502, b"<html>Bad Gateway</html>");
        assert_eq!(proxy, CallError::Decode("an error answer (502) without Stripe's error".into()));
        assert_eq!(proxy.status(), None);
    }
}
