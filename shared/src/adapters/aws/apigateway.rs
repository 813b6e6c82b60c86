use aws_sdk_apigateway::types::{Op, PatchOperation};
use aws_sdk_apigateway::Client;

use super::describe;
use crate::domain::{BackendError, IssuedKey};
use crate::ports::{KeyRegistry, Result};

const SERVICE: &str = "apigateway";

/// API keys and the PRO usage plan. Keys are created without `stageKeys`: the usage plan is
/// what binds a key to the API stage (and moto answers `stageKeys` in a shape the SDK rejects).
#[derive(Clone, Debug)]
pub struct ApiGatewayKeys {
    client: Client,
    usage_plan_id: String,
}

impl ApiGatewayKeys {
    pub fn new(config: &aws_config::SdkConfig, usage_plan_id: String) -> Self {
        Self { client: Client::new(config), usage_plan_id }
    }
}

fn issued(id: Option<&str>, name: Option<&str>, enabled: bool, op: &'static str) -> Result<IssuedKey> {
    Ok(IssuedKey {
        id: id.ok_or_else(|| BackendError::new(SERVICE, op, "key without id"))?.to_string(),
        name: name.unwrap_or_default().to_string(),
        enabled,
    })
}

impl KeyRegistry for ApiGatewayKeys {
    async fn find_by_name(&self, name: &str) -> Result<Vec<IssuedKey>> {
        const OP: &str = "GetApiKeys";
        let mut found = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get_api_keys()
                .name_query(name)
                .include_values(false)
                .limit(500)
                .set_position(position.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            for k in out.items() {
                // nameQuery matches by prefix: keep exact names only.
                if k.name() == Some(name) {
                    found.push(issued(k.id(), k.name(), k.enabled(), OP)?);
                }
            }
            match out.position() {
                Some(p) if !p.is_empty() && !out.items().is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        Ok(found)
    }

    async fn get(&self, id: &str) -> Result<Option<IssuedKey>> {
        const OP: &str = "GetApiKey";
        match self.client.get_api_key().api_key(id).include_value(false).send().await {
            Ok(k) => Ok(Some(issued(k.id(), k.name(), k.enabled(), OP)?)),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn create(&self, name: &str) -> Result<IssuedKey> {
        const OP: &str = "CreateApiKey";
        let k = self
            .client
            .create_api_key()
            .name(name)
            .description("paykey PRO plan key")
            .enabled(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        issued(k.id(), k.name(), k.enabled(), OP)
    }

    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        const OP: &str = "UpdateApiKey";
        let patch = PatchOperation::builder().op(Op::Replace).path("/enabled").value(enabled.to_string()).build();
        self.client
            .update_api_key()
            .api_key(id)
            .patch_operations(patch)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(())
    }

    async fn attach_to_plan(&self, id: &str) -> Result<()> {
        const OP: &str = "CreateUsagePlanKey";
        match self
            .client
            .create_usage_plan_key()
            .usage_plan_id(&self.usage_plan_id)
            .key_id(id)
            .key_type("API_KEY")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conflict_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn detach_from_plan(&self, id: &str) -> Result<()> {
        const OP: &str = "DeleteUsagePlanKey";
        // Ask first: deleting a key that is not in the plan is NotFound on AWS and a 500 on moto.
        match self.client.get_usage_plan_key().usage_plan_id(&self.usage_plan_id).key_id(id).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => return Ok(()),
            Err(e) => return Err(BackendError::new(SERVICE, "GetUsagePlanKey", describe(&e))),
        }
        match self.client.delete_usage_plan_key().usage_plan_id(&self.usage_plan_id).key_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn plan_key_ids(&self) -> Result<Vec<String>> {
        const OP: &str = "GetUsagePlanKeys";
        let mut ids = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get_usage_plan_keys()
                .usage_plan_id(&self.usage_plan_id)
                .limit(500)
                .set_position(position.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            ids.extend(out.items().iter().filter_map(|k| k.id().map(str::to_string)));
            match out.position() {
                Some(p) if !p.is_empty() && !out.items().is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        Ok(ids)
    }

    async fn key_value(&self, id: &str) -> Result<Option<String>> {
        const OP: &str = "GetApiKey";
        match self.client.get_api_key().api_key(id).include_value(true).send().await {
            Ok(k) => {
                Ok(Some(k.value().ok_or_else(|| BackendError::new(SERVICE, OP, "key without value"))?.to_string()))
            }
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}
