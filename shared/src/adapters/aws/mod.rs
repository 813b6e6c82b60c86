//! AWS adapters: DynamoDB (sessions and accounts), Cognito (user attributes), API Gateway
//! (API keys and the PRO usage plan). Clients are built once per cold start from one
//! `SdkConfig`; `AWS_ENDPOINT_URL` (honoured by aws-config) points them at moto locally.

mod apigateway;
mod cognito;
mod dynamodb;
mod ssm;

pub use apigateway::ApiGatewayKeys;
pub use cognito::CognitoUsers;
pub use dynamodb::{DynamoStore, CUSTOMER_INDEX};
pub use ssm::secure_parameter;

use aws_config::BehaviorVersion;

use crate::adapters::https::{AwsHttpClient, TrustRoots};

/// Loads region, credentials and endpoint from the environment, once, with paykey's HTTP
/// client ([`crate::adapters::https::AwsHttpClient`]: compiled-in roots, one pool for every
/// SDK client built from this config).
pub async fn load_config() -> aws_config::SdkConfig {
    let http = AwsHttpClient::new(&TrustRoots::Bundled).expect("the compiled-in roots are usable");
    aws_config::defaults(BehaviorVersion::latest()).http_client(http.shared()).load().await
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
