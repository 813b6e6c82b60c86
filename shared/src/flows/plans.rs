//! `GET /plans` (public): the catalog for a pricing table, with prices read from Stripe
//! (through the price cache the checkout uses, so a page view costs no Stripe call once the
//! container has read them).

use serde::Serialize;

use super::Settings;
use crate::domain::{Error, Quota, Throttle};
use crate::ports::Payments;

/// Answer of `GET /plans`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlansView {
    pub plans: Vec<PlanView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanView {
    /// What `custom:plan_type` holds on this tier.
    pub name: String,
    /// What `POST /checkout-sessions` takes; `null` for the free tier.
    pub lookup_key: Option<String>,
    /// `null` for the free tier, or a price Stripe does not have (yet).
    pub price: Option<PriceView>,
    /// API Gateway's quota for the tier's keys (`null`: none, or no key on this tier).
    pub quota: Option<Quota>,
    pub throttle: Option<Throttle>,
    pub trial_days: u32,
    /// Whether users on this tier get an API key.
    pub has_api_key: bool,
    /// Usage billed beyond an included amount (`null`: a flat tier, whose quota is a hard
    /// limit). The quota is then the spend cap.
    pub metered: Option<MeteredView>,
}

/// A metered tier's terms.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MeteredView {
    /// Calls each billing period included in the tier's price.
    pub included: u64,
    /// The price of each call beyond them, in the currency's minor unit as a decimal string
    /// ("0.5": half a cent, or half a yen); `null` when Stripe has no such price (yet).
    pub unit_amount_decimal: Option<String>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PriceView {
    /// In the currency's minor unit (JPY has none: 980 means ¥980).
    pub unit_amount: Option<i64>,
    pub currency: String,
    /// `day`, `week`, `month` or `year`; `null` for a price that does not recur.
    pub interval: Option<String>,
    /// Billed every `interval_count` intervals (`null` with `interval`).
    pub interval_count: Option<u32>,
}

/// A decimal string equal to zero ("0", "0.00").
fn zero(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c == '0' || c == '.')
}

/// Whether a metered tier's price says what the catalog says: metered, graduated, the first
/// `included` calls at 0 and then one rate, no flat amounts (a pay-per-call tier: one tier).
pub(crate) fn metered_price_agrees(p: Option<&crate::ports::PriceInfo>, included: u64) -> bool {
    let Some(p) = p.filter(|p| p.metered) else { return false };
    let no_flat = p.tiers.iter().all(|t| t.flat_amount.unwrap_or(0) == 0);
    no_flat
        && match p.tiers.as_slice() {
            [first, rest] => {
                first.up_to == Some(included)
                    && first.unit_amount_decimal.as_deref().is_some_and(zero)
                    && rest.up_to.is_none()
            }
            [only] => included == 0 && only.up_to.is_none(),
            _ => false,
        }
}

/// Every tier, in the catalog's order. The paid tiers' prices are looked up one after the
/// other: a handful of tiers, and after the first view each is a cache hit.
pub async fn list_plans<P: Payments>(payments: &P, settings: &Settings) -> Result<PlansView, Error> {
    let tiers = settings.catalog.tiers();
    let mut prices = Vec::with_capacity(tiers.len());
    let mut metered = Vec::with_capacity(tiers.len());
    for t in tiers {
        let price = match &t.lookup_key {
            Some(k) => payments.find_price(k).await?,
            None => None,
        };
        metered.push(match &t.metered {
            Some(m) => {
                let p = match t.overage_lookup_key() {
                    Some(k) => payments.find_price(k).await?,
                    None => price.clone(),
                };
                // The rate: the last tier of the graduated price (the first is the included
                // amount at 0). A price whose tiers do not say what the catalog says (included
                // calls free, then one rate) shows no rate: what customers read must be what
                // they pay.
                let tiers = p.as_ref().map(|p| p.tiers.as_slice()).unwrap_or_default();
                let agrees = metered_price_agrees(p.as_ref(), m.included);
                if !agrees && p.is_some() {
                    tracing::warn!(tier = %t.name, included = m.included, "the metered price's tiers do not match the catalog's included amount: no rate shown");
                }
                let rate = tiers.last().filter(|_| agrees).and_then(|t| t.unit_amount_decimal.clone());
                Some(MeteredView { included: m.included, unit_amount_decimal: rate, currency: p.map(|p| p.currency) })
            }
            None => None,
        });
        prices.push(price);
    }
    let plans = tiers
        .iter()
        .zip(prices)
        .zip(metered)
        .map(|((t, price), metered)| PlanView {
            name: t.name.to_string(),
            lookup_key: t.lookup_key.as_ref().map(|k| k.to_string()),
            price: price.map(|p| PriceView {
                unit_amount: p.unit_amount,
                currency: p.currency,
                interval: p.recurring.as_ref().map(|r| r.interval.clone()),
                interval_count: p.recurring.as_ref().map(|r| r.interval_count),
            }),
            quota: t.quota,
            throttle: t.throttle,
            trial_days: t.trial_days,
            has_api_key: t.usage_plan_id.is_some(),
            metered,
        })
        .collect();
    Ok(PlansView { plans })
}
