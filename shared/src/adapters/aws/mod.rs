//! AWS adapters: DynamoDB (sessions and accounts), Cognito (user attributes), API Gateway
//! (API keys and the PRO usage plan). Clients are built on first use (`OnFirstUse`) from one
//! `SdkConfig`; `AWS_ENDPOINT_URL` (honoured by aws-config) points them at moto locally.

mod apigateway;
mod cognito;
mod dynamodb;
mod ssm;

pub use apigateway::ApiGatewayKeys;
pub use cognito::CognitoUsers;
pub use dynamodb::{DynamoStore, CUSTOMER_INDEX};
pub use ssm::{secure_parameter, secure_parameters};

use std::sync::{Arc, OnceLock};

use aws_config::{BehaviorVersion, SdkConfig};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::adapters::https::{AwsHttpClient, Connector, TrustRoots};

/// Loads region, credentials and endpoint from the environment, once, with paykey's HTTP
/// client ([`crate::adapters::https::AwsHttpClient`]: compiled-in roots, one pool for every
/// SDK client built from this config).
pub async fn load_config() -> aws_config::SdkConfig {
    load().await.0
}

/// [`load_config`], and the connector of its clients' pool, to open connections early with
/// ([`DynamoStore::open_early`] and the others).
pub async fn load() -> (aws_config::SdkConfig, Connector) {
    let http = AwsHttpClient::new(&TrustRoots::Bundled).expect("the compiled-in roots are usable");
    let connector = http.connector().clone();
    (aws_config::defaults(BehaviorVersion::latest()).http_client(http.shared()).load().await, connector)
}

/// Stops an operation after its endpoint is resolved, before it is signed or sent, keeping the
/// request's URI: the host a client's calls go to, as the SDK resolves it (region, FIPS,
/// dual-stack, `AWS_ENDPOINT_URL_<SERVICE>`), without a request or a quota spent.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointOnly(Arc<std::sync::Mutex<Option<hyper::Uri>>>);

impl EndpointOnly {
    pub(crate) fn uri(&self) -> Option<hyper::Uri> {
        self.0.lock().ok()?.take()
    }
}

impl Intercept for EndpointOnly {
    fn name(&self) -> &'static str {
        "EndpointOnly"
    }

    fn read_before_signing(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Ok(mut uri) = self.0.lock() {
            *uri = context.request().uri().parse().ok();
        }
        Err("stopped after resolving the endpoint: nothing is sent".into())
    }
}

/// In the background: resolves a client's endpoint with `resolve` (an operation run with
/// [`EndpointOnly`]) and opens `count` connections to it early.
pub(crate) fn open_early<F>(
    connector: &Connector,
    count: usize,
    resolve: impl FnOnce(EndpointOnly) -> F + Send + 'static,
) where
    F: std::future::Future<Output = ()> + Send,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let connector = connector.clone();
    runtime.spawn(async move {
        let endpoint = EndpointOnly::default();
        resolve(endpoint.clone()).await;
        match endpoint.uri() {
            Some(uri) => connector.open_early(&uri, count),
            None => tracing::debug!("no endpoint resolved: no connection opened early"),
        }
    });
}

/// An SDK client built when it is first used, then kept for the life of the process.
///
/// Building a client forces its service crate's endpoint partition table: a JSON document and
/// a regex per partition, parsed once per crate and process. In a profile of a cold start
/// (`perf`, stripe-webhook) that was the largest part of paykey's own init after aws-config;
/// a function whose first request never calls a service (a preflight, a malformed link, an
/// unsigned webhook, an event that only touches DynamoDB) no longer pays for it. A request
/// that calls the service pays it once, on first use. Clones share the client.
#[derive(Clone)]
pub(crate) struct OnFirstUse<C> {
    inner: Arc<Lazy<C>>,
}

struct Lazy<C> {
    config: Option<SdkConfig>,
    build: fn(&SdkConfig) -> C,
    client: OnceLock<C>,
}

impl<C> OnFirstUse<C> {
    pub(crate) fn new(config: &SdkConfig, build: fn(&SdkConfig) -> C) -> Self {
        Self { inner: Arc::new(Lazy { config: Some(config.clone()), build, client: OnceLock::new() }) }
    }

    /// A client built by the caller (tests with their own interceptors).
    pub(crate) fn built(client: C) -> Self {
        fn unreachable<C>(_: &SdkConfig) -> C {
            unreachable!("a client given at construction is never built again")
        }
        Self { inner: Arc::new(Lazy { config: None, build: unreachable::<C>, client: OnceLock::from(client) }) }
    }

    pub(crate) fn get(&self) -> &C {
        let lazy = &*self.inner;
        lazy.client.get_or_init(|| (lazy.build)(lazy.config.as_ref().expect("a client without one is built")))
    }
}

impl<C> std::fmt::Debug for OnFirstUse<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnFirstUse").field("built", &self.inner.client.get().is_some()).finish()
    }
}

/// `ServiceError: message` for an SDK error, without request bodies or credentials.
fn describe<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    match err {
        SdkError::ServiceError(e) => {
            let e = e.err();
            format!("{}: {}", e.code().unwrap_or("ServiceError"), e.message().unwrap_or("no message"))
        }
        SdkError::TimeoutError(_) => "timed out".to_string(),
        SdkError::DispatchFailure(e) => format!("dispatch failure: {e:?}"),
        other => format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_sdk_dynamodb::config::{Credentials, Region, SharedCredentialsProvider};
    use aws_sdk_dynamodb::types::AttributeValue;

    use super::*;
    use crate::adapters::https::tests::{accepted, answer_with, server};

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    fn config(endpoint: Option<&str>) -> (SdkConfig, Connector) {
        let http = AwsHttpClient::new(&TrustRoots::Bundled).unwrap();
        let connector = http.connector().clone();
        let mut b = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new("AKID", "s", None, None, "test")))
            .http_client(http.shared());
        if let Some(e) = endpoint {
            b = b.endpoint_url(e);
        }
        (b.build(), connector)
    }

    #[tokio::test]
    async fn a_clients_endpoint_is_the_sdks_own_resolution_for_its_region() {
        let (cfg, _) = config(None);
        let only = EndpointOnly::default();
        let get = aws_sdk_dynamodb::Client::new(&cfg).get_item().table_name("t").key("k", s(""));
        // That nothing is sent is shown on a loopback server (the next test): here the endpoint
        // is AWS's own, and an answer from it would be an error too.
        assert!(get.customize().interceptor(only.clone()).send().await.is_err());
        assert_eq!(only.uri().unwrap().to_string(), "https://dynamodb.eu-west-1.amazonaws.com/");
        let only = EndpointOnly::default();
        let client = aws_sdk_cognitoidentityprovider::Client::new(&cfg);
        let _ =
            client.admin_get_user().user_pool_id("p").username("-").customize().interceptor(only.clone()).send().await;
        assert_eq!(only.uri().unwrap().to_string(), "https://cognito-idp.eu-west-1.amazonaws.com/");
        let only = EndpointOnly::default();
        let _ = aws_sdk_apigateway::Client::new(&cfg)
            .get_api_key()
            .api_key("-")
            .customize()
            .interceptor(only.clone())
            .send()
            .await;
        assert_eq!(only.uri().unwrap().host(), Some("apigateway.eu-west-1.amazonaws.com"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connections_an_adapter_opens_early_carry_its_clients_first_calls() {
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let (url, count) = server(move |s| answer_with(s, seen.clone(), r#"{"TableNames":[]}"#)).await;
        let (cfg, connector) = config(Some(&url));
        let store = DynamoStore::new(&cfg, crate::config::Tables { sessions: "s".into(), api_keys: "k".into() });
        store.open_early(&connector, 2);
        accepted(&count, 2).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!((count.load(Ordering::SeqCst), requests.load(Ordering::SeqCst)), (2, 0), "no request yet");

        // The SDK's own calls, through the same pool: they find the early connections.
        let client = aws_sdk_dynamodb::Client::new(&cfg);
        let (a, b) = tokio::join!(client.list_tables().send(), client.list_tables().send());
        a.unwrap();
        b.unwrap();
        assert_eq!((count.load(Ordering::SeqCst), requests.load(Ordering::SeqCst)), (2, 2));
    }

    static BUILT: AtomicUsize = AtomicUsize::new(0);

    fn count(_: &SdkConfig) -> usize {
        BUILT.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[test]
    fn a_client_is_built_on_first_use_once_and_shared_by_clones() {
        let lazy = OnFirstUse::new(&SdkConfig::builder().build(), count);
        let clone = lazy.clone();
        assert_eq!(BUILT.load(Ordering::SeqCst), 0, "nothing is built with the adapter");
        assert!(format!("{lazy:?}").contains("built: false"));
        assert_eq!(*clone.get(), 1);
        assert_eq!(*lazy.get(), 1, "the clone's client is the same one");
        assert_eq!(BUILT.load(Ordering::SeqCst), 1);
        assert_eq!(*OnFirstUse::built(7usize).get(), 7);
    }
}
