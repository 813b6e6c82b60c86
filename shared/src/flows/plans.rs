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
/// `included` calls at 0 and then one rate, no flat amounts (a pay-per-call tier: one tier, where
/// graduated and volume bill alike). A per-unit metered price is not one paykey sells
/// (`paykey-setup` makes graduated ones).
pub(crate) fn metered_price_agrees(p: Option<&crate::ports::PriceInfo>, included: u64) -> bool {
    let Some(p) = p.filter(|p| p.metered) else { return false };
    let no_flat = p.tiers.iter().all(|t| t.flat_amount.unwrap_or(0) == 0);
    no_flat
        && match p.tiers.as_slice() {
            [first, rest] => {
                p.graduated
                    && first.up_to == Some(included)
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

#[cfg(test)]
mod tests {
    use super::metered_price_agrees;
    use crate::ports::{PriceInfo, PriceTier, Recurring};

    fn price(graduated: bool, tiers: &[(Option<u64>, &str)]) -> PriceInfo {
        PriceInfo {
            id: "price_1".into(),
            lookup_key: "calls".into(),
            unit_amount: None,
            currency: "jpy".into(),
            recurring: Some(Recurring::monthly()),
            metered: true,
            tiers: tiers
                .iter()
                .map(|(up_to, rate)| PriceTier {
                    up_to: *up_to,
                    unit_amount_decimal: Some(rate.to_string()),
                    flat_amount: None,
                })
                .collect(),
            graduated,
        }
    }

    #[test]
    fn a_metered_price_agrees_only_when_it_bills_what_the_catalog_says() {
        let ok = price(true, &[(Some(1000), "0.00"), (None, "0.50")]);
        assert!(metered_price_agrees(Some(&ok), 1000));
        assert!(!metered_price_agrees(Some(&ok), 500), "another included amount");
        // volume: past 1,000 every call (the first thousand too) at the rate
        assert!(!metered_price_agrees(Some(&price(false, &[(Some(1000), "0"), (None, "0.5")])), 1000));
        assert!(!metered_price_agrees(Some(&price(true, &[(Some(1000), "0.1"), (None, "0.5")])), 1000), "not free");
        let flat = PriceInfo {
            tiers: vec![PriceTier { flat_amount: Some(100), ..ok.tiers[0].clone() }, ok.tiers[1].clone()],
            ..ok.clone()
        };
        assert!(!metered_price_agrees(Some(&flat), 1000), "a flat fee");
        assert!(!metered_price_agrees(Some(&PriceInfo { metered: false, ..ok.clone() }), 1000), "licensed");
        // pay-per-call: one tier, either mode
        assert!(metered_price_agrees(Some(&price(false, &[(None, "0.25")])), 0));
        assert!(!metered_price_agrees(Some(&price(true, &[(None, "0.25")])), 10));
        assert!(!metered_price_agrees(Some(&price(true, &[])), 0), "per-unit: not sold");
        assert!(!metered_price_agrees(None, 0));
    }
}
