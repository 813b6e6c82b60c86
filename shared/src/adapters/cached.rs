//! A warm container reuses price lookups for a short, configurable time: one round trip less
//! on the checkout path. Only found prices are cached, so a newly created price shows up at once.

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

    async fn create_portal(&self, customer: &CustomerId, return_url: &str, idempotency_key: &str) -> Result<String> {
        self.inner.create_portal(customer, return_url, idempotency_key).await
    }

    async fn expire_checkout(&self, id: &SessionId) -> Result<bool> {
        self.inner.expire_checkout(id).await
    }

    async fn cancel_duplicate(&self, id: &SubscriptionId) -> Result<DuplicateCancelled> {
        self.inner.cancel_duplicate(id).await
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
