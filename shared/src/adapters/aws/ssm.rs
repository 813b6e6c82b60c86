use aws_sdk_ssm::Client;

use super::describe;
use crate::config::Secret;
use crate::domain::BackendError;

/// A SecureString parameter, decrypted: how the deployed functions read the Stripe secrets
/// (once per cold start), so they never sit in the function's environment.
pub async fn secure_parameter(config: &aws_config::SdkConfig, name: &str) -> Result<Secret, BackendError> {
    let out = Client::new(config)
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| BackendError::new("ssm", "GetParameter", describe(&e)))?;
    out.parameter()
        .and_then(|p| p.value())
        .filter(|v| !v.is_empty())
        .map(Secret::new)
        .ok_or_else(|| BackendError::new("ssm", "GetParameter", format!("parameter {name} has no value")))
}
