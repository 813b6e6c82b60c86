//! What a warm container may keep between invocations.
//!
//! - Price lookups, for a short, configurable time: one round trip less on the checkout path.
//!   Only found prices are cached, so a newly created price shows up at once.
//! - API key values, which never change for a key id: `/account` then costs no API Gateway
//!   control-plane call for a key the container has shown before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{CustomerId, LookupKey, SessionId, SubscriptionId};
use crate::ports::{
    CheckoutState, CreatedCheckout, DuplicateCancelled, NewCheckout, Payments, PriceInfo, Result, SubscriptionState,
};

pub struct CachedPrices<P> {
    inner: P,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, PriceInfo)>>,
}

impl<P> CachedPrices<P> {
    /// `ttl` zero turns the cache off.
    pub fn new(inner: P, ttl: Duration) -> Self {
        Self { inner, ttl, cache: Mutex::default() }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: Payments> Payments for CachedPrices<P> {
    async fn list_subscriptions(&self, customer: &CustomerId) -> Result<Vec<SubscriptionState>> {
        self.inner.list_subscriptions(customer).await
    }

    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<SubscriptionState>> {
        self.inner.get_subscription(id).await
    }

    async fn find_price(&self, lookup_key: &LookupKey) -> Result<Option<PriceInfo>> {
        if !self.ttl.is_zero() {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, p)) = cache.get(lookup_key.as_str()) {
                if at.elapsed() < self.ttl {
                    return Ok(Some(p.clone()));
                }
            }
        }
        let found = self.inner.find_price(lookup_key).await?;
        if let (Some(p), false) = (&found, self.ttl.is_zero()) {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(lookup_key.to_string(), (Instant::now(), p.clone()));
        }
        Ok(found)
    }

    async fn create_checkout(&self, req: NewCheckout<'_>) -> Result<CreatedCheckout> {
        self.inner.create_checkout(req).await
    }

    async fn get_checkout(&self, id: &SessionId) -> Result<Option<CheckoutState>> {
        self.inner.get_checkout(id).await
    }

    async fn create_portal(
        &self,
        customer: &CustomerId,
        configuration: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<String> {
        self.inner.create_portal(customer, configuration, return_url, idempotency_key).await
    }

    async fn expire_checkout(&self, id: &SessionId) -> Result<bool> {
        self.inner.expire_checkout(id).await
    }

    async fn cancel_duplicate(&self, id: &SubscriptionId) -> Result<DuplicateCancelled> {
        self.inner.cancel_duplicate(id).await
    }
}

impl<P: crate::ports::metering::UsageMeter> crate::ports::metering::UsageMeter for CachedPrices<P> {
    async fn send_meter_event(&self, event: &crate::ports::metering::MeterEvent) -> Result<()> {
        self.inner.send_meter_event(event).await
    }

    async fn meter_sums_days(&self, event_name: &str) -> Result<Option<bool>> {
        self.inner.meter_sums_days(event_name).await
    }
}

/// Usage key: (key id, usage plan, first day, last day).
type UsageKey = (String, String, chrono::NaiveDate, chrono::NaiveDate);

/// Keeps API key values (immutable per key id) for the life of the container, up to
/// [`CachedKeyValues::CAPACITY`] keys, and a key's usage shown on `/account` (`recent_usage`; `usage`
/// is always asked) for [`CachedKeyValues::USAGE_TTL`]
/// (GetUsage is a control-plane call, 10/s per account: `/account` is a page view, polled by
/// the thanks page); every other call goes to the inner registry.
pub struct CachedKeyValues<K> {
    inner: K,
    values: Mutex<HashMap<String, String>>,
    usage: Mutex<HashMap<UsageKey, (Instant, crate::ports::KeyUsage)>>,
}

impl<K> CachedKeyValues<K> {
    /// Keys kept at most (about 1 MB); past it the map starts over.
    pub const CAPACITY: usize = 10_000;
    /// How long a key's usage is reused: the usage bar lags by at most this much.
    pub const USAGE_TTL: Duration = Duration::from_secs(30);

    pub fn new(inner: K) -> Self {
        Self { inner, values: Mutex::default(), usage: Mutex::default() }
    }

    pub fn inner(&self) -> &K {
        &self.inner
    }
}

impl<K: crate::ports::KeyRegistry> crate::ports::KeyRegistry for CachedKeyValues<K> {
    async fn find_by_name(&self, name: &str) -> Result<Vec<crate::domain::IssuedKey>> {
        self.inner.find_by_name(name).await
    }
    async fn get(&self, id: &str) -> Result<Option<crate::domain::IssuedKey>> {
        self.inner.get(id).await
    }
    async fn create(&self, name: &str) -> Result<crate::domain::IssuedKey> {
        self.inner.create(name).await
    }
    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        self.inner.set_enabled(id, enabled).await
    }
    async fn attach_to_plan(&self, id: &str, plan: &str) -> Result<()> {
        self.inner.attach_to_plan(id, plan).await
    }
    async fn detach_from_plan(&self, id: &str, plan: &str) -> Result<()> {
        self.inner.detach_from_plan(id, plan).await
    }
    async fn plans_of(&self, id: &str) -> Result<Vec<String>> {
        self.inner.plans_of(id).await
    }
    async fn plan_key_ids(&self, plan: &str) -> Result<Vec<String>> {
        self.inner.plan_key_ids(plan).await
    }
    async fn usage(
        &self,
        id: &str,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> Result<crate::ports::KeyUsage> {
        // Exact: what rotation and the end of a grace decide quota from.
        self.inner.usage(id, plan, start, end).await
    }
    async fn plan_usage(
        &self,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> Result<std::collections::HashMap<String, u64>> {
        self.inner.plan_usage(plan, start, end).await
    }
    async fn recent_usage(
        &self,
        id: &str,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> Result<crate::ports::KeyUsage> {
        let key = (id.to_string(), plan.to_string(), start, end);
        if let Some((at, u)) = self.usage.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if at.elapsed() < Self::USAGE_TTL {
                return Ok(u.clone());
            }
        }
        let u = self.inner.usage(id, plan, start, end).await?;
        let mut cache = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= Self::CAPACITY {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), u.clone()));
        Ok(u)
    }
    async fn set_remaining(&self, id: &str, plan: &str, remaining: u64) -> Result<()> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| k.0 != id);
        self.inner.set_remaining(id, plan, remaining).await
    }
    async fn count_keys(&self) -> Result<usize> {
        self.inner.count_keys().await
    }
    async fn key_value(&self, id: &str) -> Result<Option<String>> {
        if let Some(v) = self.values.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(Some(v.clone()));
        }
        let value = self.inner.key_value(id).await?;
        if let Some(v) = &value {
            let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
            if values.len() >= Self::CAPACITY {
                values.clear();
            }
            values.insert(id.to_string(), v.clone());
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::adapters::memory::{MemoryPayments, Meter};

    #[tokio::test]
    async fn a_found_price_is_reused_until_the_ttl_passes_and_a_missing_one_is_not_cached() {
        let meter = Meter::new();
        let stripe = MemoryPayments::new(Arc::clone(&meter));
        stripe.add_price("FMMailPro", 980, "jpy");
        let cached = CachedPrices::new(stripe, Duration::from_millis(200));
        let key = LookupKey::parse("FMMailPro").unwrap();
        let missing = LookupKey::parse("Other").unwrap();
        for _ in 0..3 {
            assert!(cached.find_price(&key).await.unwrap().is_some());
            assert!(cached.find_price(&missing).await.unwrap().is_none());
        }
        assert_eq!(meter.count("stripe.find_price"), 4, "1 for the found price, 3 for the missing one");
        tokio::time::sleep(Duration::from_millis(250)).await;
        cached.find_price(&key).await.unwrap();
        assert_eq!(meter.count("stripe.find_price"), 5);
    }
}
