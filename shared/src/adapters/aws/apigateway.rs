use aws_sdk_apigateway::types::{Op, PatchOperation};
use aws_sdk_apigateway::Client;

use super::{describe, OnFirstUse};
use crate::adapters::https::Connector;
use crate::domain::{BackendError, IssuedKey};
use crate::ports::{KeyRegistry, KeyUsage, Result};

const SERVICE: &str = "apigateway";

/// API keys and the tiers' usage plans. Keys are created without `stageKeys`: the usage plan
/// is what binds a key to the API stage (and moto answers `stageKeys` in a shape the SDK
/// rejects).
#[derive(Clone, Debug)]
pub struct ApiGatewayKeys {
    client: OnFirstUse<Client>,
}

impl ApiGatewayKeys {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { client: OnFirstUse::new(config, Client::new) }
    }

    /// Opens `count` connections to API Gateway's endpoint in the background (the client built
    /// there too). Nothing is sent: the account's 10 management calls/s are not touched.
    pub fn open_early(&self, connector: &Connector, count: usize) {
        let client = self.client.clone();
        // The endpoint a `GetApiKey` resolves to (an operation the adapter already makes).
        super::open_early(connector, count, move |only| async move {
            let _ = client.get().get_api_key().api_key("-").customize().interceptor(only).send().await;
        });
    }

    async fn in_plan(&self, id: &str, plan: &str) -> Result<bool> {
        match self.client.get().get_usage_plan_key().usage_plan_id(plan).key_id(id).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(false),
            Err(e) => Err(BackendError::new(SERVICE, "GetUsagePlanKey", describe(&e))),
        }
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
                .get()
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
        match self.client.get().get_api_key().api_key(id).include_value(false).send().await {
            Ok(k) => Ok(Some(issued(k.id(), k.name(), k.enabled(), OP)?)),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn create(&self, name: &str) -> Result<IssuedKey> {
        const OP: &str = "CreateApiKey";
        let k = self
            .client
            .get()
            .create_api_key()
            .name(name)
            .description("paykey API key")
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
            .get()
            .update_api_key()
            .api_key(id)
            .patch_operations(patch)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(())
    }

    async fn attach_to_plan(&self, id: &str, plan: &str) -> Result<()> {
        const OP: &str = "CreateUsagePlanKey";
        match self.client.get().create_usage_plan_key().usage_plan_id(plan).key_id(id).key_type("API_KEY").send().await
        {
            Ok(_) => Ok(()),
            // Already in this plan: done. A key in *another* plan of the stage is refused too
            // (one usage plan per key and stage), so a conflict is only success once the key is
            // found in this plan.
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conflict_exception()) => {
                if self.in_plan(id, plan).await? {
                    Ok(())
                } else {
                    Err(BackendError::new(SERVICE, OP, describe(&e)))
                }
            }
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn detach_from_plan(&self, id: &str, plan: &str) -> Result<()> {
        const OP: &str = "DeleteUsagePlanKey";
        // Ask first: deleting a key that is not in the plan is NotFound on AWS and a 500 on moto.
        if !self.in_plan(id, plan).await? {
            return Ok(());
        }
        match self.client.get().delete_usage_plan_key().usage_plan_id(plan).key_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn plans_of(&self, id: &str) -> Result<Vec<String>> {
        const OP: &str = "GetUsagePlans";
        let mut plans = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get()
                .get_usage_plans()
                .key_id(id)
                .limit(500)
                .set_position(position.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            plans.extend(out.items().iter().filter_map(|p| p.id().map(str::to_string)));
            match out.position() {
                Some(p) if !p.is_empty() && !out.items().is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        Ok(plans)
    }

    async fn plan_key_ids(&self, plan: &str) -> Result<Vec<String>> {
        const OP: &str = "GetUsagePlanKeys";
        let mut ids = Vec::new();
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get()
                .get_usage_plan_keys()
                .usage_plan_id(plan)
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

    async fn usage(&self, id: &str, plan: &str, start: chrono::NaiveDate, end: chrono::NaiveDate) -> Result<KeyUsage> {
        const OP: &str = "GetUsage";
        let mut usage = KeyUsage::default();
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get()
                .get_usage()
                .usage_plan_id(plan)
                .key_id(id)
                .start_date(start.format("%Y-%m-%d").to_string())
                .end_date(end.format("%Y-%m-%d").to_string())
                .limit(500)
                .set_position(position.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            // {"values": {"<key id>": [[used, remaining], …one per day]}}
            if let Some(days) = out.items().and_then(|m| m.get(id)) {
                for day in days {
                    let n = day.first().copied().unwrap_or(0).max(0) as u64;
                    usage.used += n;
                    usage.days.push(n);
                    if let Some(r) = day.get(1) {
                        usage.remaining = Some((*r).max(0) as u64);
                    }
                }
            }
            match out.position() {
                Some(p) if !p.is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        Ok(usage)
    }

    async fn plan_usage(
        &self,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> Result<std::collections::HashMap<String, u64>> {
        const OP: &str = "GetUsage";
        let mut used: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get()
                .get_usage()
                .usage_plan_id(plan)
                .start_date(start.format("%Y-%m-%d").to_string())
                .end_date(end.format("%Y-%m-%d").to_string())
                .limit(500)
                .set_position(position.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            // {"values": {"<key id>": [[used, remaining], …one per day]}}
            for (id, days) in out.items().into_iter().flatten() {
                let n: u64 = days.iter().map(|d| d.first().copied().unwrap_or(0).max(0) as u64).sum();
                *used.entry(id.clone()).or_default() += n;
            }
            match out.position() {
                Some(p) if !p.is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        Ok(used)
    }

    async fn set_remaining(&self, id: &str, plan: &str, remaining: u64) -> Result<()> {
        const OP: &str = "UpdateUsage";
        let patch = PatchOperation::builder().op(Op::Replace).path("/remaining").value(remaining.to_string()).build();
        self.client
            .get()
            .update_usage()
            .usage_plan_id(plan)
            .key_id(id)
            .patch_operations(patch)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(())
    }

    async fn count_keys(&self) -> Result<usize> {
        const OP: &str = "GetApiKeys";
        let mut n = 0;
        let mut position: Option<String> = None;
        loop {
            let out = self
                .client
                .get()
                .get_api_keys()
                .include_values(false)
                .limit(500)
                .set_position(position.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            n += out.items().len();
            match out.position() {
                Some(p) if !p.is_empty() && !out.items().is_empty() => position = Some(p.to_string()),
                _ => break,
            }
        }
        Ok(n)
    }

    async fn key_value(&self, id: &str) -> Result<Option<String>> {
        const OP: &str = "GetApiKey";
        match self.client.get().get_api_key().api_key(id).include_value(true).send().await {
            Ok(k) => {
                Ok(Some(k.value().ok_or_else(|| BackendError::new(SERVICE, OP, "key without value"))?.to_string()))
            }
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}

impl crate::ports::admin::KeyDeletion for ApiGatewayKeys {
    async fn delete_key(&self, id: &str) -> Result<()> {
        const OP: &str = "DeleteApiKey";
        match self.client.get().delete_api_key().api_key(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_not_found_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}
