//! What is sold: the tiers of the catalog.
//!
//! One JSON document (`PAYKEY_CATALOG`, written by the SAM stack from its parameters and read
//! by `paykey-setup` too) lists each tier: its name (what `custom:plan_type` holds), its Stripe
//! price lookup key (none for the free tier), its API Gateway usage plan (the stack fills in the
//! id; quota and throttle are what the stack creates it with) and its trial days. Without a
//! catalog, a deployment configured like the Python version's gets [`Catalog::legacy`]: one
//! PRO tier on `USAGE_PLAN_ID`, FREE without a key.

use serde::{Deserialize, Serialize};

use super::LookupKey;

/// A tier's name as `custom:plan_type` and the API keys table's `Type` hold it: `FREE`, `PRO`,
/// `BUSINESS`, … (1–16 of `A-Z`, `0-9`, `_`: the stack's `custom:plan_type` holds at most 16
/// characters, and a custom attribute's constraints cannot change once the pool exists).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierName(String);

impl TierName {
    pub fn parse(s: &str) -> Result<Self, CatalogError> {
        let ok =
            (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(CatalogError(format!("tier name {s:?}: 1 to 16 of A-Z, 0-9 and _")))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TierName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// API Gateway's quota periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum QuotaPeriod {
    Day,
    Week,
    Month,
}

impl QuotaPeriod {
    /// The quota period containing `day`, as API Gateway counts it: UTC calendar days, weeks
    /// (Monday to Sunday — API Gateway does not document the first day of its week: an
    /// assumption, said so in the README) and months. (first day, last day), both inclusive.
    pub fn containing(self, day: chrono::NaiveDate) -> (chrono::NaiveDate, chrono::NaiveDate) {
        use chrono::Datelike;
        match self {
            QuotaPeriod::Day => (day, day),
            QuotaPeriod::Week => {
                let first = day - chrono::Duration::days(i64::from(day.weekday().num_days_from_monday()));
                (first, first + chrono::Duration::days(6))
            }
            QuotaPeriod::Month => {
                let first = day.with_day(1).expect("day 1 exists");
                let next = if first.month() == 12 {
                    chrono::NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    chrono::NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .expect("a valid month");
                (first, next - chrono::Duration::days(1))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub limit: u32,
    pub period: QuotaPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// Steady requests per second.
    pub rate: f64,
    pub burst: u32,
}

/// One tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: TierName,
    /// The Stripe price's lookup key; `None` for the free tier.
    pub lookup_key: Option<LookupKey>,
    /// The API Gateway usage plan keys of this tier are attached to; `None`: the tier has no
    /// key (a catalog without a free tier: FREE users get none, as before).
    pub usage_plan_id: Option<String>,
    pub quota: Option<Quota>,
    pub throttle: Option<Throttle>,
    /// Checkout's `subscription_data.trial_period_days`; 0 for none.
    pub trial_days: u32,
    /// Lookup keys of prices no longer sold (checkout refuses them) whose subscriptions still
    /// grant this tier: e.g. the Python version's `FMMailPro` once PRO is sold at a new price.
    pub retired_lookup_keys: Vec<LookupKey>,
    /// Usage billed beyond an included amount (Stripe Billing Meters); `None`: a flat tier whose
    /// quota is a hard limit.
    pub metered: Option<Metered>,
}

/// A tier's metered price: calls each billing period up to `included` cost nothing, every call
/// after costs the price's rate (a graduated price: `included` at 0, then the rate, on the
/// catalog's meter). Checkout sells it beside the tier's flat price; when it *is* the tier's
/// price (`lookup_key` equal to the tier's), the tier is pay-per-call with no flat price. The
/// tier's quota is then a spend cap, not the included amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub lookup_key: LookupKey,
    pub included: u64,
}

impl Tier {
    pub fn is_free(&self) -> bool {
        self.lookup_key.is_none()
    }

    /// Whether a subscription to the price with this lookup key buys this tier (its price, or a
    /// retired one).
    pub fn sells(&self, lookup_key: &str) -> bool {
        self.sold_keys().any(|k| k.as_str() == lookup_key)
    }

    /// Whether a subscription to this price grants the tier: its own price or a retired one
    /// (not its overage price alone).
    pub fn grants(&self, lookup_key: &str) -> bool {
        self.lookup_key.iter().chain(&self.retired_lookup_keys).any(|k| k.as_str() == lookup_key)
    }

    /// Every lookup key whose price belongs to this tier: its price, its metered price, retired
    /// prices.
    fn sold_keys(&self) -> impl Iterator<Item = &LookupKey> {
        let metered = self.metered.as_ref().map(|m| &m.lookup_key).filter(|k| Some(*k) != self.lookup_key.as_ref());
        self.lookup_key.iter().chain(metered).chain(&self.retired_lookup_keys)
    }

    /// The metered price checkout sells beside the tier's own (overage above the included
    /// amount); `None` for a flat tier and for a pay-per-call tier (its own price is metered).
    pub fn overage_lookup_key(&self) -> Option<&LookupKey> {
        self.metered.as_ref().map(|m| &m.lookup_key).filter(|k| Some(*k) != self.lookup_key.as_ref())
    }

    /// Whether the tier's own price is its metered price (pay per call, no flat price).
    pub fn pay_per_call(&self) -> bool {
        self.metered.as_ref().is_some_and(|m| Some(&m.lookup_key) == self.lookup_key.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("catalog: {0}")]
pub struct CatalogError(pub String);

/// Every tier; checked when read (see [`Catalog::parse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    tiers: Vec<Tier>,
    meter_event_name: String,
}

/// The Stripe meter's `event_name` when the catalog names none.
pub const DEFAULT_METER_EVENT: &str = "paykey_api_requests";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetered {
    lookup_key: String,
    included: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    name: String,
    #[serde(default)]
    lookup_key: Option<String>,
    #[serde(default)]
    usage_plan_id: Option<String>,
    #[serde(default)]
    quota: Option<Quota>,
    #[serde(default)]
    throttle: Option<Throttle>,
    #[serde(default)]
    trial_days: u32,
    #[serde(default)]
    retired_lookup_keys: Vec<String>,
    #[serde(default)]
    metered: Option<RawMetered>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    tiers: Vec<RawTier>,
    #[serde(default)]
    meter_event_name: Option<String>,
}

/// Stripe refuses longer trials.
const MAX_TRIAL_DAYS: u32 = 730;

impl Catalog {
    /// `{"tiers": [{"name": "FREE", "usage_plan_id": "…", "quota": {"limit": 1000, "period": "MONTH"}},
    /// {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "…", "trial_days": 14}, …]}`.
    ///
    /// Refused: no paid tier, two tiers with one name or one lookup key, more than one free tier,
    /// a paid tier without a usage plan, a trial on the free tier or longer than 730 days, a
    /// non-positive throttle, unknown fields.
    pub fn parse(json: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog = serde_json::from_str(json).map_err(|e| CatalogError(e.to_string()))?;
        let mut tiers = Vec::with_capacity(raw.tiers.len());
        for t in raw.tiers {
            let name = TierName::parse(&t.name)?;
            let lookup_key = t
                .lookup_key
                .as_deref()
                .map(LookupKey::parse)
                .transpose()
                .map_err(|e| CatalogError(format!("tier {name}: {e}")))?;
            let retired_lookup_keys = t
                .retired_lookup_keys
                .iter()
                .map(|k| LookupKey::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CatalogError(format!("tier {name}: {e}")))?;
            let metered = t
                .metered
                .map(|m| {
                    LookupKey::parse(&m.lookup_key)
                        .map(|lookup_key| Metered { lookup_key, included: m.included })
                        .map_err(|e| CatalogError(format!("tier {name}: metered: {e}")))
                })
                .transpose()?;
            let tier = Tier {
                name,
                lookup_key,
                usage_plan_id: t.usage_plan_id.filter(|p| !p.is_empty()),
                quota: t.quota,
                throttle: t.throttle,
                trial_days: t.trial_days,
                retired_lookup_keys,
                metered,
            };
            if tier.is_free() && !tier.retired_lookup_keys.is_empty() {
                return Err(CatalogError(format!("the free tier {} sells no price (retired_lookup_keys)", tier.name)));
            }
            if !tier.is_free() && tier.usage_plan_id.is_none() {
                return Err(CatalogError(format!("paid tier {} names no usage plan", tier.name)));
            }
            if tier.is_free() && tier.trial_days > 0 {
                return Err(CatalogError(format!("the free tier {} cannot have a trial", tier.name)));
            }
            if tier.trial_days > MAX_TRIAL_DAYS {
                return Err(CatalogError(format!("tier {}: trials are at most {MAX_TRIAL_DAYS} days", tier.name)));
            }
            if tier.throttle.is_some_and(|th| th.rate.is_nan() || th.rate <= 0.0 || th.burst == 0) {
                return Err(CatalogError(format!("tier {}: throttle rate and burst must be positive", tier.name)));
            }
            if let Some(m) = &tier.metered {
                if tier.is_free() {
                    return Err(CatalogError(format!(
                        "the free tier {} cannot be metered (its quota is a hard limit)",
                        tier.name
                    )));
                }
                // The quota is the spend cap: without one, a key could run up any bill.
                match tier.quota {
                    None => {
                        return Err(CatalogError(format!(
                            "metered tier {} needs a quota: the spend cap API Gateway enforces",
                            tier.name
                        )))
                    }
                    // Stripe bills by month; a DAY or WEEK quota would cap a part of it only.
                    Some(q) if q.period != QuotaPeriod::Month => {
                        return Err(CatalogError(format!(
                            "metered tier {}: the quota (the spend cap) must be monthly",
                            tier.name
                        )))
                    }
                    Some(q) if u64::from(q.limit) < m.included => {
                        return Err(CatalogError(format!(
                            "metered tier {}: the quota ({}) is below the included amount ({})",
                            tier.name, q.limit, m.included
                        )))
                    }
                    Some(_) => {}
                }
            }
            if tiers.iter().any(|o: &Tier| o.name == tier.name) {
                return Err(CatalogError(format!("two tiers are named {}", tier.name)));
            }
            let mut sold: Vec<&LookupKey> = tier.sold_keys().collect();
            sold.extend(tiers.iter().flat_map(|o: &Tier| o.sold_keys()));
            let distinct: std::collections::HashSet<&str> = sold.iter().map(|k| k.as_str()).collect();
            if distinct.len() != sold.len() {
                return Err(CatalogError(format!(
                    "tier {} reuses a lookup key (its own or another tier's)",
                    tier.name
                )));
            }
            if tier.is_free() && tiers.iter().any(Tier::is_free) {
                return Err(CatalogError("more than one tier without a lookup key (free)".into()));
            }
            tiers.push(tier);
        }
        if !tiers.iter().any(|t| !t.is_free()) {
            return Err(CatalogError("no paid tier (a tier with a lookup_key)".into()));
        }
        let meter_event_name = raw.meter_event_name.unwrap_or_else(|| DEFAULT_METER_EVENT.to_string());
        // Stripe: `event_name` is at most 100 characters.
        let ok = (1..=100).contains(&meter_event_name.len())
            && meter_event_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok {
            return Err(CatalogError(format!(
                "meter_event_name {meter_event_name:?}: 1 to 100 of A-Z, a-z, 0-9, _ - ."
            )));
        }
        Ok(Self { tiers, meter_event_name })
    }

    /// The `event_name` of the Stripe meter every metered price is on.
    pub fn meter_event_name(&self) -> &str {
        &self.meter_event_name
    }

    /// The metered tiers (their usage is reported to the meter).
    pub fn metered(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.iter().filter(|t| t.metered.is_some())
    }

    /// Today's deployment: FREE without a key, and one PRO tier per allowed lookup key (in
    /// practice one: `FMMailPro`) on the PRO usage plan (`None` for functions that manage no
    /// key: checkout and the portal need no usage plan).
    pub fn legacy(pro_usage_plan_id: Option<&str>, lookup_keys: &[LookupKey]) -> Self {
        let mut tiers = vec![Tier {
            name: TierName("FREE".into()),
            lookup_key: None,
            usage_plan_id: None,
            quota: None,
            throttle: None,
            trial_days: 0,
            retired_lookup_keys: Vec::new(),
            metered: None,
        }];
        for k in lookup_keys {
            tiers.push(Tier {
                name: TierName("PRO".into()),
                lookup_key: Some(k.clone()),
                usage_plan_id: pro_usage_plan_id.map(str::to_string),
                quota: None,
                throttle: None,
                trial_days: 0,
                retired_lookup_keys: Vec::new(),
                metered: None,
            });
        }
        Self { tiers, meter_event_name: DEFAULT_METER_EVENT.to_string() }
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The free tier, when the catalog has one.
    pub fn free(&self) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.is_free())
    }

    pub fn by_lookup_key(&self, key: &LookupKey) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.lookup_key.as_ref() == Some(key))
    }

    pub fn by_name(&self, name: &TierName) -> Option<&Tier> {
        self.tiers.iter().find(|t| &t.name == name)
    }

    /// The paid tiers, in the catalog's order.
    pub fn paid(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.iter().filter(|t| !t.is_free())
    }

    /// Every usage plan a tier names (distinct): where a key may be attached.
    pub fn usage_plans(&self) -> Vec<&str> {
        distinct_plans(self.tiers.iter())
    }

    /// The usage plans of the metered tiers (distinct): where billed usage is counted.
    pub fn metered_usage_plans(&self) -> Vec<&str> {
        distinct_plans(self.metered())
    }

    /// The paid tier a subscription with these items (each item's price lookup key) buys: the
    /// first item whose price a tier sells (its lookup key or a retired one). `None`: the
    /// subscription is not paykey's — the Stripe account sells it, paykey does not, and paykey
    /// never grants, downgrades, cancels or refunds for it.
    pub fn tier_of_items(&self, items: &[Option<String>]) -> Option<&Tier> {
        // The tier's own price (or a retired one) grants it; its overage price alone does not
        // (the included calls come with the flat price).
        items.iter().flatten().find_map(|k| self.paid().find(|t| t.grants(k)))
    }

    /// Whether every item of the subscription is a price paykey sells: only such a subscription
    /// may be cancelled as a duplicate (one that also pays for something else is left alone).
    pub fn sells_every_item(&self, items: &[Option<String>]) -> bool {
        !items.is_empty() && items.iter().all(|k| k.as_deref().is_some_and(|k| self.paid().any(|t| t.sells(k))))
    }
}

/// The usage plans the tiers name, each once, in the tiers' order.
fn distinct_plans<'a>(tiers: impl Iterator<Item = &'a Tier>) -> Vec<&'a str> {
    let mut plans: Vec<&str> = Vec::new();
    for p in tiers.filter_map(|t| t.usage_plan_id.as_deref()) {
        if !plans.contains(&p) {
            plans.push(p);
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"{"tiers": [
        {"name": "FREE", "usage_plan_id": "free1", "quota": {"limit": 1000, "period": "MONTH"},
         "throttle": {"rate": 1, "burst": 2}},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "pro1", "trial_days": 14,
         "quota": {"limit": 100000, "period": "MONTH"}},
        {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "biz1"}
    ]}"#;

    #[test]
    fn a_catalog_of_three_tiers_reads_and_finds_each() {
        let c = Catalog::parse(THREE).unwrap();
        assert_eq!(c.tiers().len(), 3);
        assert_eq!(c.free().unwrap().usage_plan_id.as_deref(), Some("free1"));
        let pro = c.by_lookup_key(&LookupKey::parse("FMMailPro").unwrap()).unwrap();
        assert_eq!((pro.name.as_str(), pro.trial_days), ("PRO", 14));
        assert_eq!(pro.quota, Some(Quota { limit: 100_000, period: QuotaPeriod::Month }));
        assert!(c.by_name(&TierName::parse("BUSINESS").unwrap()).is_some());
        assert!(c.by_lookup_key(&LookupKey::parse("Other").unwrap()).is_none());
    }

    #[test]
    fn only_prices_the_catalog_sells_are_paykeys_and_nothing_else_buys_a_tier() {
        let c = Catalog::parse(
            r#"{"tiers": [{"name": "FREE", "usage_plan_id": "free1"},
            {"name": "PRO", "lookup_key": "ProV2", "usage_plan_id": "pro1", "retired_lookup_keys": ["FMMailPro"]},
            {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "biz1"}]}"#,
        )
        .unwrap();
        let k = |s: &str| Some(s.to_string());
        let tier = |items: &[Option<String>]| c.tier_of_items(items).map(|t| t.name.as_str().to_string());
        assert_eq!(tier(&[k("ProV2")]).as_deref(), Some("PRO"));
        assert_eq!(tier(&[k("FMMailPro")]).as_deref(), Some("PRO"), "a retired price still grants its tier");
        assert_eq!(tier(&[k("FMMailBusiness")]).as_deref(), Some("BUSINESS"));
        assert_eq!(tier(&[k("Newsletter")]), None, "another product of the account");
        assert_eq!(tier(&[None]), None, "a price without a lookup key");
        assert_eq!(tier(&[]), None);
        assert_eq!(tier(&[k("Newsletter"), k("ProV2")]).as_deref(), Some("PRO"), "any item");
        assert!(c.sells_every_item(&[k("ProV2")]));
        assert!(!c.sells_every_item(&[k("ProV2"), k("Newsletter")]), "also pays for something else");
        assert!(!c.sells_every_item(&[k("ProV2"), None]));
        assert!(!c.sells_every_item(&[]));
        assert!(
            c.by_lookup_key(&LookupKey::parse("FMMailPro").unwrap()).is_none(),
            "a retired price is not sold at checkout"
        );
    }

    #[test]
    fn a_metered_tier_sells_its_overage_price_and_a_pay_per_call_tier_its_one_price() {
        let c = Catalog::parse(
            r#"{"tiers": [{"name": "FREE", "usage_plan_id": "free1", "quota": {"limit": 100, "period": "MONTH"}},
            {"name": "PRO", "lookup_key": "Pro", "usage_plan_id": "pro1", "quota": {"limit": 5000, "period": "MONTH"},
             "metered": {"lookup_key": "ProCalls", "included": 1000}},
            {"name": "PAYG", "lookup_key": "Payg", "usage_plan_id": "payg1", "quota": {"limit": 100000, "period": "MONTH"},
             "metered": {"lookup_key": "Payg", "included": 0}},
            {"name": "BUSINESS", "lookup_key": "Biz", "usage_plan_id": "biz1"}],
            "meter_event_name": "fmmail_requests"}"#,
        )
        .unwrap();
        let k = |s: &str| Some(s.to_string());
        let tier = |items: &[Option<String>]| c.tier_of_items(items).map(|t| t.name.as_str().to_string());
        assert_eq!(tier(&[k("Pro"), k("ProCalls")]).as_deref(), Some("PRO"));
        assert_eq!(tier(&[k("ProCalls")]), None, "the overage price alone grants nothing (no flat price paid)");
        assert!(c.sells_every_item(&[k("ProCalls")]), "but it is paykey's (a duplicate may be cancelled)");
        assert_eq!(tier(&[k("Payg")]).as_deref(), Some("PAYG"));
        assert!(c.sells_every_item(&[k("Pro"), k("ProCalls")]));
        assert!(!c.sells_every_item(&[k("Pro"), k("ProCalls"), k("Newsletter")]));
        let by = |n: &str| c.by_name(&TierName::parse(n).unwrap()).unwrap();
        assert_eq!(by("PRO").overage_lookup_key().map(LookupKey::as_str), Some("ProCalls"));
        assert!(!by("PRO").pay_per_call());
        assert_eq!(by("PAYG").overage_lookup_key(), None, "its own price is the metered one");
        assert!(by("PAYG").pay_per_call());
        assert_eq!(by("BUSINESS").overage_lookup_key(), None);
        let metered: Vec<&str> = c.metered().map(|t| t.name.as_str()).collect();
        assert_eq!(metered, ["PRO", "PAYG"]);
        assert_eq!(c.meter_event_name(), "fmmail_requests");
        assert!(c.by_lookup_key(&LookupKey::parse("ProCalls").unwrap()).is_none(), "not sold on its own");
        let plain = Catalog::parse(r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}]}"#).unwrap();
        assert_eq!(plain.meter_event_name(), DEFAULT_METER_EVENT);
    }

    #[test]
    fn quota_periods_are_utc_calendar_days_weeks_and_months() {
        let d = |y, m, day| chrono::NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(QuotaPeriod::Day.containing(d(2026, 12, 2)), (d(2026, 12, 2), d(2026, 12, 2)));
        // 2026-12-02 is a Wednesday
        assert_eq!(QuotaPeriod::Week.containing(d(2026, 12, 2)), (d(2026, 11, 30), d(2026, 12, 6)));
        assert_eq!(QuotaPeriod::Week.containing(d(2026, 11, 30)), (d(2026, 11, 30), d(2026, 12, 6)));
        assert_eq!(QuotaPeriod::Week.containing(d(2026, 12, 6)), (d(2026, 11, 30), d(2026, 12, 6)));
        assert_eq!(QuotaPeriod::Month.containing(d(2026, 12, 31)), (d(2026, 12, 1), d(2026, 12, 31)));
        assert_eq!(QuotaPeriod::Month.containing(d(2028, 2, 10)), (d(2028, 2, 1), d(2028, 2, 29)), "leap year");
        assert_eq!(QuotaPeriod::Month.containing(d(2027, 2, 28)), (d(2027, 2, 1), d(2027, 2, 28)));
    }

    #[test]
    fn the_legacy_catalog_is_todays_deployment() {
        let c = Catalog::legacy(Some("plan123"), &[LookupKey::parse("FMMailPro").unwrap()]);
        let free = c.free().unwrap();
        assert_eq!((free.name.as_str(), free.usage_plan_id.as_deref()), ("FREE", None), "FREE has no key");
        let pro = c.by_lookup_key(&LookupKey::parse("FMMailPro").unwrap()).unwrap();
        assert_eq!((pro.name.as_str(), pro.usage_plan_id.as_deref()), ("PRO", Some("plan123")));
    }

    #[test]
    fn inconsistent_catalogs_are_refused_with_the_reason() {
        let cases = [
            (r#"{"tiers": []}"#, "no paid tier"),
            (r#"{"tiers": [{"name": "FREE"}]}"#, "no paid tier"),
            (r#"{"tiers": [{"name": "pro", "lookup_key": "a", "usage_plan_id": "p"}]}"#, "tier name"),
            (r#"{"tiers": [{"name": "PROFESSIONAL_PLUS", "lookup_key": "a", "usage_plan_id": "p"}]}"#, "1 to 16"),
            (r#"{"tiers": [{"name": "PRO", "lookup_key": "a"}]}"#, "names no usage plan"),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}, {"name": "PRO", "lookup_key": "b", "usage_plan_id": "q"}]}"#,
                "two tiers",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}, {"name": "BIZ", "lookup_key": "a", "usage_plan_id": "q"}]}"#,
                "lookup key",
            ),
            (
                r#"{"tiers": [{"name": "FREE"}, {"name": "GRATIS"}, {"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}]}"#,
                "more than one",
            ),
            (
                r#"{"tiers": [{"name": "FREE", "trial_days": 3}, {"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}]}"#,
                "cannot have a trial",
            ),
            (r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "trial_days": 731}]}"#, "730"),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "throttle": {"rate": 0, "burst": 1}}]}"#,
                "positive",
            ),
            (r#"{"tiers": [{"name": "PRO", "lookup_key": "a b", "usage_plan_id": "p"}]}"#, "lookup key"),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "quota": {"limit": 1, "period": "YEAR"}}]}"#,
                "YEAR",
            ),
            (r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "price": 5}]}"#, "price"),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "retired_lookup_keys": ["a"]}]}"#,
                "reuses a lookup key",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}, {"name": "BIZ", "lookup_key": "b", "usage_plan_id": "q", "retired_lookup_keys": ["a"]}]}"#,
                "reuses a lookup key",
            ),
            (
                r#"{"tiers": [{"name": "FREE", "retired_lookup_keys": ["x"]}, {"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}]}"#,
                "sells no price",
            ),
            (
                r#"{"tiers": [{"name": "FREE", "metered": {"lookup_key": "m", "included": 0}}, {"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}]}"#,
                "cannot be metered",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "metered": {"lookup_key": "m", "included": 10}}]}"#,
                "needs a quota",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "quota": {"limit": 9, "period": "MONTH"}, "metered": {"lookup_key": "m", "included": 10}}]}"#,
                "below the included amount",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "quota": {"limit": 9, "period": "MONTH"}, "metered": {"lookup_key": "b", "included": 1}}, {"name": "BIZ", "lookup_key": "b", "usage_plan_id": "q"}]}"#,
                "reuses a lookup key",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "quota": {"limit": 9, "period": "MONTH"}, "metered": {"lookup_key": "m", "included": 1, "rate": 2}}]}"#,
                "rate",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p"}], "meter_event_name": "a b"}"#,
                "meter_event_name",
            ),
            (
                r#"{"tiers": [{"name": "PRO", "lookup_key": "a", "usage_plan_id": "p", "quota": {"limit": 9000, "period": "DAY"}, "metered": {"lookup_key": "m", "included": 1}}]}"#,
                "monthly",
            ),
        ];
        for (json, why) in cases {
            let e = Catalog::parse(json).unwrap_err();
            assert!(e.to_string().contains(why), "{json}: {e}");
        }
    }
}
