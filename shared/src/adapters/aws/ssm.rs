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

/// Several SecureString parameters in one round trip (`GetParameters`, up to 10 names), in
/// the order asked: a function that needs two secrets at init waits for one call, not two.
pub async fn secure_parameters(config: &aws_config::SdkConfig, names: &[String]) -> Result<Vec<Secret>, BackendError> {
    const OP: &str = "GetParameters";
    let out = Client::new(config)
        .get_parameters()
        .set_names(Some(names.to_vec()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| BackendError::new("ssm", OP, describe(&e)))?;
    if let Some(missing) = out.invalid_parameters().first() {
        return Err(BackendError::new("ssm", OP, format!("parameter {missing} does not exist")));
    }
    names
        .iter()
        .map(|name| {
            out.parameters()
                .iter()
                .find(|p| p.name() == Some(name.as_str()))
                .and_then(|p| p.value())
                .filter(|v| !v.is_empty())
                .map(Secret::new)
                .ok_or_else(|| BackendError::new("ssm", OP, format!("parameter {name} has no value")))
        })
        .collect()
}
