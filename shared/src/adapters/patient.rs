//! API Gateway's control plane is limited per account and Region, fixed by AWS: CreateApiKey
//! 5 requests per second, and 10 per second (burst 40) for all management calls together.
//! [`Patient`] waits and tries again when the registry says "slow down", with exponential
//! backoff and jitter, within a budget that keeps a fulfilment inside the function timeout;
//! past the budget the call fails, the redirect lands on the pending thanks page and the
//! webhook's retries finish the work.

use std::time::Duration;

use crate::domain::IssuedKey;
use crate::ports::{KeyRegistry, Result};

/// How long one call may wait in all before it gives up.
pub const WAIT_BUDGET: Duration = Duration::from_secs(4);
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_millis(1000);

/// A key registry that waits out throttling.
#[derive(Clone, Debug)]
pub struct Patient<K> {
    inner: K,
    budget: Duration,
}

impl<K> Patient<K> {
    pub fn new(inner: K) -> Self {
        Self { inner, budget: WAIT_BUDGET }
    }

    pub fn with_budget(inner: K, budget: Duration) -> Self {
        Self { inner, budget }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }
}

async fn patiently<T, F, Fut>(budget: Duration, op: &'static str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut waited = Duration::ZERO;
    let mut wait = FIRST_WAIT;
    loop {
        match call().await {
            Err(e) if e.is_throttled() && waited + wait <= budget => {
                // Full jitter: concurrent callers spread out instead of retrying in step.
                let pause = wait.mul_f64(0.5 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 2000.0);
                tracing::info!(op, waited_ms = waited.as_millis() as u64, "API Gateway throttled the call; waiting");
                tokio::time::sleep(pause).await;
                waited += pause;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
            other => return other,
        }
    }
}

impl<K: KeyRegistry> KeyRegistry for Patient<K> {
    async fn find_by_name(&self, name: &str) -> Result<Vec<IssuedKey>> {
        patiently(self.budget, "GetApiKeys", || self.inner.find_by_name(name)).await
    }
    async fn get(&self, id: &str) -> Result<Option<IssuedKey>> {
        patiently(self.budget, "GetApiKey", || self.inner.get(id)).await
    }
    async fn create(&self, name: &str) -> Result<IssuedKey> {
        // Safe to repeat only because a throttled CreateApiKey created nothing.
        patiently(self.budget, "CreateApiKey", || self.inner.create(name)).await
    }
    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        patiently(self.budget, "UpdateApiKey", || self.inner.set_enabled(id, enabled)).await
    }
    async fn attach_to_plan(&self, id: &str, plan: &str) -> Result<()> {
        patiently(self.budget, "CreateUsagePlanKey", || self.inner.attach_to_plan(id, plan)).await
    }
    async fn detach_from_plan(&self, id: &str, plan: &str) -> Result<()> {
        patiently(self.budget, "DeleteUsagePlanKey", || self.inner.detach_from_plan(id, plan)).await
    }
    async fn plans_of(&self, id: &str) -> Result<Vec<String>> {
        patiently(self.budget, "GetUsagePlans", || self.inner.plans_of(id)).await
    }
    async fn plan_key_ids(&self, plan: &str) -> Result<Vec<String>> {
        patiently(self.budget, "GetUsagePlanKeys", || self.inner.plan_key_ids(plan)).await
    }
    async fn usage(
        &self,
        id: &str,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> Result<crate::ports::KeyUsage> {
        patiently(self.budget, "GetUsage", || self.inner.usage(id, plan, start, end)).await
    }
    async fn plan_usage(
        &self,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> Result<std::collections::HashMap<String, u64>> {
        patiently(self.budget, "GetUsage", || self.inner.plan_usage(plan, start, end)).await
    }
    async fn set_remaining(&self, id: &str, plan: &str, remaining: u64) -> Result<()> {
        patiently(self.budget, "UpdateUsage", || self.inner.set_remaining(id, plan, remaining)).await
    }
    async fn count_keys(&self) -> Result<usize> {
        patiently(self.budget, "GetApiKeys", || self.inner.count_keys()).await
    }
    async fn key_value(&self, id: &str) -> Result<Option<String>> {
        patiently(self.budget, "GetApiKey", || self.inner.key_value(id)).await
    }
}

impl<K: crate::ports::admin::KeyDeletion> crate::ports::admin::KeyDeletion for Patient<K> {
    async fn delete_key(&self, id: &str) -> Result<()> {
        patiently(self.budget, "DeleteApiKey", || self.inner.delete_key(id)).await
    }
}
