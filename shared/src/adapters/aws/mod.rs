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

use crate::adapters::https::{AwsHttpClient, TrustRoots};

/// Loads region, credentials and endpoint from the environment, once, with paykey's HTTP
/// client ([`crate::adapters::https::AwsHttpClient`]: compiled-in roots, one pool for every
/// SDK client built from this config).
pub async fn load_config() -> aws_config::SdkConfig {
    let http = AwsHttpClient::new(&TrustRoots::Bundled).expect("the compiled-in roots are usable");
    aws_config::defaults(BehaviorVersion::latest()).http_client(http.shared()).load().await
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

    use super::*;

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
