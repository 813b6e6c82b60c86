//! Creates or updates, in a Stripe account, what paykey needs: one product and recurring price
//! per paid tier (the price carries the tier's lookup key), a billing portal configuration
//! (cancel allowed, invoice history on, and with two tiers or more: switching between their
//! prices, prorated) and the webhook endpoint for the events paykey handles, pinned to the API
//! version async-stripe speaks. Every create carries an idempotency key derived from the
//! settings; a second run changes nothing and says so.

pub mod admin;
pub mod doctor;

use std::collections::HashMap;
use std::fmt;

use stripe::{Client, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_portal_configuration::{
    CreateBillingPortalConfiguration, CreateBillingPortalConfigurationFeatures,
    CreateBillingPortalConfigurationFeaturesSubscriptionCancel,
    CreateBillingPortalConfigurationFeaturesSubscriptionCancelMode,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdate,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates,
    CreateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior, InvoiceListParam,
    ListBillingPortalConfiguration, SubscriptionUpdateProductParam, UpdateBillingPortalConfiguration,
    UpdateBillingPortalConfigurationFeatures, UpdateBillingPortalConfigurationFeaturesSubscriptionCancel,
    UpdateBillingPortalConfigurationFeaturesSubscriptionCancelMode,
    UpdateBillingPortalConfigurationFeaturesSubscriptionUpdate,
    UpdateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates,
    UpdateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior,
};
use stripe_misc::webhook_endpoint::{
    CreateWebhookEndpoint, CreateWebhookEndpointEnabledEvents, ListWebhookEndpoint, UpdateWebhookEndpoint,
    UpdateWebhookEndpointEnabledEvents,
};
use stripe_product::price::{CreatePrice, CreatePriceRecurring, CreatePriceRecurringInterval, ListPrice};
use stripe_product::product::{CreateProduct, RetrieveProduct, UpdateProduct};

/// One paid tier's product and price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidTier {
    pub product_name: String,
    pub lookup_key: String,
    /// In the currency's minor unit (JPY has none).
    pub unit_amount: i64,
}

impl PaidTier {
    /// `NAME:LOOKUP_KEY:AMOUNT`, e.g. `FMMail BUSINESS:FMMailBusiness:4980`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.rsplitn(3, ':').collect();
        match parts.as_slice() {
            [amount, key, name] if !name.is_empty() && !key.is_empty() => Ok(Self {
                product_name: name.to_string(),
                lookup_key: key.to_string(),
                unit_amount: amount.parse().map_err(|_| format!("{s:?}: the amount must be a whole number"))?,
            }),
            _ => Err(format!("{s:?}: expected NAME:LOOKUP_KEY:AMOUNT")),
        }
    }
}

/// A tier's metered price (usage-based billing): a graduated price on paykey's meter, the
/// first `included` calls of a period at 0, every further one at `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteredPrice {
    /// The lookup key of the tier it belongs to (its product is that tier's).
    pub tier_lookup_key: String,
    /// The metered price's own lookup key (the catalog's `metered.lookup_key`).
    pub lookup_key: String,
    pub included: u64,
    /// Per call beyond `included`, in the currency's minor unit, a decimal string ("0.5").
    pub rate: String,
}

impl MeteredPrice {
    /// `TIER_LOOKUP_KEY:METERED_LOOKUP_KEY:INCLUDED:RATE`, e.g. `FMMailPro:FMMailProCalls:1000:0.5`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [tier, key, included, rate] = parts.as_slice() else {
            return Err(format!("{s:?}: expected TIER_LOOKUP_KEY:METERED_LOOKUP_KEY:INCLUDED:RATE"));
        };
        let decimal = |r: &str| {
            let (i, f) = r.split_once('.').unwrap_or((r, ""));
            !i.is_empty() && f.len() <= 12 && i.bytes().chain(f.bytes()).all(|b| b.is_ascii_digit())
        };
        if tier.is_empty() || key.is_empty() || !decimal(rate) {
            return Err(format!("{s:?}: lookup keys must be given and the rate a decimal number (at most 12 places)"));
        }
        Ok(Self {
            tier_lookup_key: tier.to_string(),
            lookup_key: key.to_string(),
            included: included.parse().map_err(|_| format!("{s:?}: INCLUDED must be a whole number"))?,
            rate: rate.to_string(),
        })
    }
}

/// What to set up.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The paid tiers, in order (the first is the one `--product-name`, `--lookup-key` and
    /// `--amount` describe).
    pub tiers: Vec<PaidTier>,
    /// Metered prices of tiers (`--metered`), on one meter whose event name is
    /// `meter_event_name` (summing daily totals: `event_time_window: day`).
    pub metered: Vec<MeteredPrice>,
    pub meter_event_name: String,
    pub currency: String,
    /// `day`, `week`, `month` or `year`.
    pub interval: String,
    /// Where Stripe sends events (paykey's `…/stripe/webhook`); none: no endpoint is managed.
    pub webhook_url: Option<String>,
    /// The portal's default return URL (the front end).
    pub portal_return_url: Option<String>,
    /// When the endpoint sends events in another API version than paykey's: create a second,
    /// pinned endpoint for the same URL (both deliver until the old one is retired).
    pub repin_webhook: bool,
    /// Disable this endpoint of the webhook URL (the old one, once the new secret is deployed).
    pub retire_webhook: Option<String>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            tiers: vec![PaidTier {
                product_name: "FMMail PRO".into(),
                lookup_key: "FMMailPro".into(),
                unit_amount: 980,
            }],
            metered: Vec::new(),
            meter_event_name: paykey::domain::DEFAULT_METER_EVENT.into(),
            currency: "jpy".into(),
            interval: "month".into(),
            webhook_url: None,
            portal_return_url: None,
            repin_webhook: false,
            retire_webhook: None,
        }
    }
}

/// The events paykey's webhook acts on.
pub fn webhook_events() -> Vec<&'static str> {
    paykey::flows::handled_event_types()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created(String),
    Updated(String),
    Unchanged(String),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Created(s) => write!(f, "created   {s}"),
            Change::Updated(s) => write!(f, "updated   {s}"),
            Change::Unchanged(s) => write!(f, "unchanged {s}"),
        }
    }
}

/// What a run did; `webhook_secret` is set only when the endpoint was created (Stripe shows
/// it once).
#[derive(Debug, Default)]
pub struct Report {
    pub changes: Vec<Change>,
    /// The first tier's price.
    pub price_id: Option<String>,
    /// Every tier's price, in the catalog's order.
    pub price_ids: Vec<String>,
    pub webhook_secret: Option<String>,
    /// paykey's billing portal configuration (`bpc_…`): the functions that open the portal
    /// name it on every session (`STRIPE_PORTAL_CONFIGURATION`, template parameter
    /// `PortalConfigurationId`), because Stripe's default configuration is the Dashboard's.
    pub portal_configuration: Option<String>,
}

impl Report {
    pub fn changed_anything(&self) -> bool {
        self.changes.iter().any(|c| !matches!(c, Change::Unchanged(_)))
    }
}

#[derive(Debug)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

fn err(what: &str, e: StripeError) -> SetupError {
    let detail = match &e {
        StripeError::Stripe(api, status) => format!("{status} {}", api.message.as_deref().unwrap_or("")),
        other => other.to_string(),
    };
    SetupError(format!("{what}: {detail}"))
}

fn idem(key: String) -> Result<RequestStrategy, SetupError> {
    IdempotencyKey::new(key).map(RequestStrategy::Idempotent).map_err(|e| SetupError(e.to_string()))
}

fn interval(s: &str) -> Result<CreatePriceRecurringInterval, SetupError> {
    match s {
        "day" => Ok(CreatePriceRecurringInterval::Day),
        "week" => Ok(CreatePriceRecurringInterval::Week),
        "month" => Ok(CreatePriceRecurringInterval::Month),
        "year" => Ok(CreatePriceRecurringInterval::Year),
        other => Err(SetupError(format!("interval must be day, week, month or year, not {other:?}"))),
    }
}

const MARK: &str = "paykey";

/// Creates or updates everything; idempotent.
pub async fn run(client: &Client, c: &Catalog) -> Result<Report, SetupError> {
    // Check the settings before touching the account.
    let recurring_interval = interval(&c.interval)?;
    let currency = c
        .currency
        .parse::<stripe_types::Currency>()
        .map_err(|_| SetupError(format!("unknown currency {:?}", c.currency)))?;
    if c.tiers.is_empty() {
        return Err(SetupError("at least one paid tier must be given".into()));
    }
    for (i, t) in c.tiers.iter().enumerate() {
        if t.unit_amount < 0 || t.lookup_key.is_empty() || t.product_name.is_empty() {
            return Err(SetupError("amount, lookup key and product name must be given".into()));
        }
        if c.tiers[..i].iter().any(|o| o.lookup_key == t.lookup_key) {
            return Err(SetupError(format!("two tiers have the lookup key {}", t.lookup_key)));
        }
    }
    if !c.metered.is_empty() && c.interval != "month" {
        return Err(SetupError(format!(
            "--metered needs monthly prices (--interval month, not {}): paykey's spend cap is a monthly quota",
            c.interval
        )));
    }
    for m in &c.metered {
        if !c.tiers.iter().any(|t| t.lookup_key == m.tier_lookup_key) {
            return Err(SetupError(format!(
                "--metered names the tier {}, which no --tier or --lookup-key gives",
                m.tier_lookup_key
            )));
        }
        if m.lookup_key != m.tier_lookup_key && c.tiers.iter().any(|t| t.lookup_key == m.lookup_key) {
            return Err(SetupError(format!("the metered lookup key {} is another tier's", m.lookup_key)));
        }
    }
    let mut report = Report::default();
    let mut offered = Vec::new();
    for t in &c.tiers {
        // A pay-per-call tier (its metered price has the tier's lookup key) has no flat price.
        let pay_per_call = c.metered.iter().any(|m| m.tier_lookup_key == t.lookup_key && m.lookup_key == t.lookup_key);
        if pay_per_call {
            continue;
        }
        let (product, price) = tier(client, c, t, currency.clone(), recurring_interval.clone(), &mut report).await?;
        report.price_ids.push(price.clone());
        offered.push((product, price));
    }
    if !c.metered.is_empty() {
        let meter = meter(client, c, &mut report).await?;
        for m in &c.metered {
            let t = c.tiers.iter().find(|t| t.lookup_key == m.tier_lookup_key).expect("checked above");
            let (product, price) =
                metered_price(client, c, t, m, &meter, currency.clone(), recurring_interval.clone(), &mut report)
                    .await?;
            if m.lookup_key == m.tier_lookup_key {
                report.price_ids.push(price.clone());
                offered.push((product, price));
            }
        }
    }
    report.price_id = report.price_ids.first().cloned();

    // Billing portal configuration: ours is marked with metadata. With two tiers or more,
    // customers switch between their prices there (Stripe prorates and invoices at once).
    // With metered tiers: no switching (the portal swaps one price of a subscription, so a
    // switch would neither add nor move the overage price, and Stripe bills no usage of a
    // metered price removed mid-period), and cancellation at the period's end: "any metered
    // usage is charged for in a final invoice when the subscription cancels at the end of the
    // billing period", whereas an immediate cancellation without `invoice_now` discards it
    // (Stripe's "Cancel subscriptions" docs).
    let metered = !c.metered.is_empty();
    let switching = offered.len() > 1 && !metered;
    let cancel_mode = if metered { "at_period_end" } else { "immediately" };
    let configs = ListBillingPortalConfiguration::new()
        .limit(100)
        .send(client)
        .await
        .map_err(|e| err("list portal configurations", e))?;
    let ours = configs
        .data
        .into_iter()
        .find(|cfg| cfg.metadata.as_ref().and_then(|m| m.get(MARK)).is_some_and(|v| v == "true"));
    match ours {
        Some(cfg) => {
            let f = &cfg.features;
            let mut has: Vec<(String, String)> = f
                .subscription_update
                .products
                .iter()
                .flatten()
                .flat_map(|p| p.prices.iter().map(|price| (p.product.clone(), price.clone())))
                .collect();
            has.sort();
            let mut want = if switching { offered.clone() } else { Vec::new() };
            want.sort();
            let ok = cfg.active
                && f.subscription_cancel.enabled
                && f.subscription_cancel.mode.as_str() == cancel_mode
                && f.invoice_history.enabled
                && f.subscription_update.enabled == switching
                && (!switching || has == want)
                && (c.portal_return_url.is_none() || cfg.default_return_url == c.portal_return_url);
            report.portal_configuration = Some(cfg.id.to_string());
            if ok {
                report.changes.push(Change::Unchanged(format!("billing portal configuration {}", cfg.id)));
            } else {
                let mut features = UpdateBillingPortalConfigurationFeatures::new();
                let mut cancel = UpdateBillingPortalConfigurationFeaturesSubscriptionCancel::new();
                cancel.enabled = Some(true);
                cancel.mode = Some(match metered {
                    true => UpdateBillingPortalConfigurationFeaturesSubscriptionCancelMode::AtPeriodEnd,
                    false => UpdateBillingPortalConfigurationFeaturesSubscriptionCancelMode::Immediately,
                });
                features.subscription_cancel = Some(cancel);
                features.invoice_history = Some(InvoiceListParam::new(true));
                let mut update = UpdateBillingPortalConfigurationFeaturesSubscriptionUpdate::new();
                update.enabled = Some(switching);
                if switching {
                    update.products = Some(switch_products(&offered));
                    update.default_allowed_updates = Some(vec![
                        UpdateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates::Price,
                    ]);
                    update.proration_behavior = Some(
                        UpdateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior::AlwaysInvoice,
                    );
                }
                features.subscription_update = Some(update);
                let mut req = UpdateBillingPortalConfiguration::new(cfg.id.as_str()).active(true).features(features);
                if let Some(u) = &c.portal_return_url {
                    req = req.default_return_url(u.as_str());
                }
                req.send(client).await.map_err(|e| err("update portal configuration", e))?;
                report.changes.push(Change::Updated(format!(
                    "billing portal configuration {} (cancel {}, invoice history{})",
                    cfg.id,
                    cancel_mode.replace('_', " "),
                    if switching { ", switching between the tiers" } else { "" }
                )));
            }
        }
        None => {
            let mut features = CreateBillingPortalConfigurationFeatures::new();
            let mut cancel = CreateBillingPortalConfigurationFeaturesSubscriptionCancel::new(true);
            cancel.mode = Some(match metered {
                true => CreateBillingPortalConfigurationFeaturesSubscriptionCancelMode::AtPeriodEnd,
                false => CreateBillingPortalConfigurationFeaturesSubscriptionCancelMode::Immediately,
            });
            features.subscription_cancel = Some(cancel);
            features.invoice_history = Some(InvoiceListParam::new(true));
            if switching {
                let mut update = CreateBillingPortalConfigurationFeaturesSubscriptionUpdate::new(true);
                update.products = Some(switch_products(&offered));
                update.default_allowed_updates =
                    Some(vec![CreateBillingPortalConfigurationFeaturesSubscriptionUpdateDefaultAllowedUpdates::Price]);
                update.proration_behavior =
                    Some(CreateBillingPortalConfigurationFeaturesSubscriptionUpdateProrationBehavior::AlwaysInvoice);
                features.subscription_update = Some(update);
            }
            let mut req = CreateBillingPortalConfiguration::new(features)
                .metadata(HashMap::from([(MARK.to_string(), "true".to_string())]));
            if let Some(u) = &c.portal_return_url {
                req = req.default_return_url(u.as_str());
            }
            let cfg = req
                .customize()
                .request_strategy(idem(format!(
                    "paykey-setup-portal-{}{}-{}",
                    if metered { "metered-" } else { "" },
                    c.portal_return_url.as_deref().unwrap_or("-"),
                    report.price_ids.join("-")
                ))?)
                .send(client)
                .await
                .map_err(|e| err("create portal configuration", e))?;
            report.changes.push(Change::Created(format!(
                "billing portal configuration {} (cancel {}, invoice history)",
                cfg.id,
                cancel_mode.replace('_', " ")
            )));
            report.portal_configuration = Some(cfg.id.to_string());
        }
    }

    // Webhook endpoint for the events paykey handles, pinned to async-stripe's API version.
    if let Some(url) = &c.webhook_url {
        webhook_endpoint(client, c, url, &mut report).await?;
    } else if c.retire_webhook.is_some() || c.repin_webhook {
        return Err(SetupError("--repin-webhook and --retire-webhook need --webhook-url".into()));
    }
    Ok(report)
}

/// The portal's plan-switch list: each tier's product with its price.
fn switch_products(offered: &[(String, String)]) -> Vec<SubscriptionUpdateProductParam> {
    offered
        .iter()
        .map(|(product, price)| SubscriptionUpdateProductParam::new(vec![price.clone()], product.clone()))
        .collect()
}

/// The tier's product (a deterministic id) and its price; returns (product id, price id).
async fn tier(
    client: &Client,
    c: &Catalog,
    t: &PaidTier,
    currency: stripe_types::Currency,
    recurring_interval: CreatePriceRecurringInterval,
    report: &mut Report,
) -> Result<(String, String), SetupError> {
    // The functions read this prefix: a price of this product that lost its lookup key to a
    // newer one still buys the tier (`adapters::stripe::PAYKEY_PRODUCT_PREFIX`).
    let product_id = format!("{}{}", paykey::adapters::stripe::PAYKEY_PRODUCT_PREFIX, t.lookup_key);

    ensure_product(client, t, &product_id, report).await?;

    // Price: the one holding the lookup key, if it matches; else a new one that takes the key over.
    tier_price(client, c, t, product_id, currency, recurring_interval, report).await
}

/// The tier's product, with a deterministic id so it is found again.
async fn ensure_product(
    client: &Client,
    t: &PaidTier,
    product_id: &str,
    report: &mut Report,
) -> Result<(), SetupError> {
    match RetrieveProduct::new(product_id).send(client).await {
        Ok(p) if p.name == t.product_name && p.active => {
            report.changes.push(Change::Unchanged(format!("product {product_id}")))
        }
        Ok(_) => {
            UpdateProduct::new(product_id)
                .name(t.product_name.as_str())
                .active(true)
                .send(client)
                .await
                .map_err(|e| err("update product", e))?;
            report.changes.push(Change::Updated(format!("product {product_id} (name {:?})", t.product_name)));
        }
        Err(StripeError::Stripe(_, 404)) => {
            CreateProduct::new(t.product_name.as_str())
                .id(product_id)
                .metadata(HashMap::from([(MARK.to_string(), "true".to_string())]))
                .customize()
                .request_strategy(idem(format!("paykey-setup-product-{product_id}"))?)
                .send(client)
                .await
                .map_err(|e| err("create product", e))?;
            report.changes.push(Change::Created(format!("product {product_id}")));
        }
        Err(e) => return Err(err("retrieve product", e)),
    }
    Ok(())
}

async fn tier_price(
    client: &Client,
    c: &Catalog,
    t: &PaidTier,
    product_id: String,
    currency: stripe_types::Currency,
    recurring_interval: CreatePriceRecurringInterval,
    report: &mut Report,
) -> Result<(String, String), SetupError> {
    let prices = ListPrice::new()
        .lookup_keys(vec![t.lookup_key.clone()])
        .limit(1)
        .send(client)
        .await
        .map_err(|e| err("list prices", e))?;
    let current = prices.data.into_iter().next();
    let matches = current.as_ref().is_some_and(|p| {
        p.active
            && p.unit_amount == Some(t.unit_amount)
            && p.currency.to_string() == c.currency
            && p.product.id().as_str() == product_id
            && p.recurring.as_ref().is_some_and(|r| r.interval.as_str() == c.interval)
    });
    if matches {
        let id = current.map(|p| p.id.to_string()).unwrap_or_default();
        report.changes.push(Change::Unchanged(format!(
            "price {id} ({} {} per {}, lookup key {})",
            t.unit_amount, c.currency, c.interval, t.lookup_key
        )));
        Ok((product_id, id))
    } else {
        let price = CreatePrice::new(currency)
            .product(product_id.as_str())
            .unit_amount(t.unit_amount)
            .recurring(CreatePriceRecurring::new(recurring_interval))
            .lookup_key(t.lookup_key.as_str())
            .transfer_lookup_key(true)
            .nickname(format!("{} {}", t.product_name, c.interval))
            .customize()
            .request_strategy(idem(format!(
                "paykey-setup-price-{}-{}-{}-{}-{}",
                product_id, t.lookup_key, t.unit_amount, c.currency, c.interval
            ))?)
            .send(client)
            .await
            .map_err(|e| err("create price", e))?;
        report.changes.push(Change::Created(format!(
            "price {} ({} {} per {}, lookup key {}{})",
            price.id,
            t.unit_amount,
            c.currency,
            c.interval,
            t.lookup_key,
            if current.is_some() { ", moved from the old price" } else { "" }
        )));
        Ok((product_id, price.id.to_string()))
    }
}

/// paykey's meter: the one whose `event_name` is the catalog's, summing daily totals (the
/// reporter sends one event per customer and UTC day; a newer one replaces the day's). Returns
/// its id. Stripe allows one meter per event name and never changes a meter's settings: a meter
/// of that name with other settings is an error to resolve by hand.
async fn meter(client: &Client, c: &Catalog, report: &mut Report) -> Result<String, SetupError> {
    use stripe_billing::billing_meter::{
        CreateBillingMeter, CreateBillingMeterDefaultAggregation, CreateBillingMeterDefaultAggregationFormula,
        ListBillingMeter,
    };
    let meters = ListBillingMeter::new().limit(100).send(client).await.map_err(|e| err("list meters", e))?;
    if let Some(m) = meters.data.into_iter().find(|m| m.event_name == c.meter_event_name) {
        let ok = m.status.as_str() == "active"
            && m.default_aggregation.formula.as_str() == "sum"
            && m.event_time_window.as_ref().map(|w| w.as_str()) == Some("day")
            && m.customer_mapping.event_payload_key == "stripe_customer_id"
            && m.value_settings.event_payload_key == "value";
        if !ok {
            return Err(SetupError(format!(
                "the meter {} ({}) is not paykey's kind (active, sum, daily window, stripe_customer_id, value): Stripe cannot change a meter; deactivate it or set another meter_event_name",
                m.id, c.meter_event_name
            )));
        }
        report.changes.push(Change::Unchanged(format!("meter {} ({})", m.id, c.meter_event_name)));
        return Ok(m.id.to_string());
    }
    let m = CreateBillingMeter::new(
        CreateBillingMeterDefaultAggregation::new(CreateBillingMeterDefaultAggregationFormula::Sum),
        "API requests (paykey)",
        c.meter_event_name.as_str(),
    )
    .event_time_window(stripe_billing::BillingMeterEventTimeWindow::Day)
    .customize()
    .request_strategy(idem(format!("paykey-setup-meter-{}", c.meter_event_name))?)
    .send(client)
    .await
    .map_err(|e| err("create meter", e))?;
    report.changes.push(Change::Created(format!("meter {} ({}, daily totals summed)", m.id, c.meter_event_name)));
    Ok(m.id.to_string())
}

/// The tiers a metered price should have: the included calls at 0, then the rate.
fn wanted_tiers(m: &MeteredPrice) -> Vec<(Option<i64>, String)> {
    let mut t = Vec::new();
    if m.included > 0 {
        t.push((Some(m.included as i64), "0".to_string()));
    }
    t.push((None, m.rate.clone()));
    t
}

/// Two decimal strings with the same value ("0.50" and "0.5").
fn same_decimal(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let (i, f) = s.split_once('.').unwrap_or((s, ""));
        let i = i.trim_start_matches('0');
        format!("{}.{}", if i.is_empty() { "0" } else { i }, f.trim_end_matches('0'))
    };
    norm(a) == norm(b)
}

/// The tier's metered price on `meter` (a graduated price): the one holding the lookup key if
/// it matches, else a new one that takes the key over. Returns (product id, price id).
#[allow(clippy::too_many_arguments)]
async fn metered_price(
    client: &Client,
    c: &Catalog,
    t: &PaidTier,
    m: &MeteredPrice,
    meter: &str,
    currency: stripe_types::Currency,
    recurring_interval: CreatePriceRecurringInterval,
    report: &mut Report,
) -> Result<(String, String), SetupError> {
    use stripe_product::price::{CreatePriceRecurringUsageType, CreatePriceTiers, CreatePriceTiersUpTo};
    let product_id = format!("{}{}", paykey::adapters::stripe::PAYKEY_PRODUCT_PREFIX, t.lookup_key);
    if m.lookup_key == m.tier_lookup_key {
        // a pay-per-call tier: its product is made here
        ensure_product(client, t, &product_id, report).await?;
    }
    let prices = ListPrice::new()
        .lookup_keys(vec![m.lookup_key.clone()])
        .limit(1)
        .expand(vec!["data.tiers".to_string()])
        .send(client)
        .await
        .map_err(|e| err("list prices", e))?;
    let current = prices.data.into_iter().next();
    let wanted = wanted_tiers(m);
    let matches = current.as_ref().is_some_and(|p| {
        let tiers: Vec<(Option<i64>, String)> = p
            .tiers
            .iter()
            .flatten()
            .map(|t| {
                (t.up_to, t.unit_amount_decimal.clone().or(t.unit_amount.map(|a| a.to_string())).unwrap_or_default())
            })
            .collect();
        p.active
            && p.currency.to_string() == c.currency
            && p.product.id().as_str() == product_id
            && p.recurring.as_ref().is_some_and(|r| {
                r.interval.as_str() == c.interval
                    && r.usage_type.as_str() == "metered"
                    && r.meter.as_deref() == Some(meter)
            })
            // graduated (a volume price bills every call at the last tier's rate), no flat
            // amounts, no quantity transform
            && p.tiers_mode.as_ref().map(|m| m.as_str()) == Some("graduated")
            && p.transform_quantity.is_none()
            && p.tiers.iter().flatten().all(|t| {
                t.flat_amount.unwrap_or(0) == 0 && t.flat_amount_decimal.as_deref().is_none_or(|f| same_decimal(f, "0"))
            })
            && tiers.len() == wanted.len()
            && tiers.iter().zip(&wanted).all(|(a, b)| a.0 == b.0 && same_decimal(&a.1, &b.1))
    });
    let what = format!("{} included, then {} {} per call, lookup key {}", m.included, m.rate, c.currency, m.lookup_key);
    if matches {
        let id = current.map(|p| p.id.to_string()).unwrap_or_default();
        report.changes.push(Change::Unchanged(format!("metered price {id} ({what})")));
        return Ok((product_id, id));
    }
    let tiers: Vec<CreatePriceTiers> = wanted
        .iter()
        .map(|(up_to, rate)| {
            let mut tier = CreatePriceTiers::new(match up_to {
                Some(n) => CreatePriceTiersUpTo::I64(*n),
                None => CreatePriceTiersUpTo::Inf,
            });
            tier.unit_amount_decimal = Some(rate.clone());
            tier
        })
        .collect();
    let mut recurring = CreatePriceRecurring::new(recurring_interval);
    recurring.usage_type = Some(CreatePriceRecurringUsageType::Metered);
    recurring.meter = Some(meter.to_string());
    let price = CreatePrice::new(currency)
        .product(product_id.as_str())
        .recurring(recurring)
        .billing_scheme(stripe_shared::PriceBillingScheme::Tiered)
        .tiers_mode(stripe_shared::PriceTiersMode::Graduated)
        .tiers(tiers)
        .lookup_key(m.lookup_key.as_str())
        .transfer_lookup_key(true)
        .nickname(format!("{} calls", t.product_name))
        .customize()
        .request_strategy(idem(format!(
            "paykey-setup-metered-{}-{}-{}-{}-{}-{}-{}",
            product_id, m.lookup_key, meter, m.included, m.rate, c.currency, c.interval
        ))?)
        .send(client)
        .await
        .map_err(|e| err("create metered price", e))?;
    report.changes.push(Change::Created(format!(
        "metered price {} ({what}{})",
        price.id,
        if current.is_some() { ", moved from the old price" } else { "" }
    )));
    Ok((product_id, price.id.to_string()))
}

/// The webhook endpoint for `url`, pinned to async-stripe's API version.
///
/// Stripe sets an endpoint's API version at creation only (there is no update parameter), so
/// an endpoint created in another version is replaced in two runs, without losing an event:
/// `--repin-webhook` creates a second, pinned endpoint for the same URL and prints its secret;
/// both endpoints deliver every event (the webhook deduplicates by event id) while the
/// operator deploys both secrets (`STRIPE_WEBHOOK_SECRET=new,old`); then
/// `--retire-webhook <old id>` disables the old endpoint.
async fn webhook_endpoint(client: &Client, c: &Catalog, url: &str, report: &mut Report) -> Result<(), SetupError> {
    let version = stripe_shared::version::VERSION.as_str();
    let wanted: Vec<String> = webhook_events().iter().map(|s| s.to_string()).collect();
    let endpoints =
        ListWebhookEndpoint::new().limit(100).send(client).await.map_err(|e| err("list webhook endpoints", e))?;
    let mut mine: Vec<_> = endpoints.data.into_iter().filter(|e| e.url == url).collect();
    let pinned = |e: &stripe_misc::WebhookEndpoint| e.api_version.as_deref() == Some(version);

    if let Some(old) = &c.retire_webhook {
        let Some(e) = mine.iter_mut().find(|e| e.id.as_str() == old) else {
            return Err(SetupError(format!("no webhook endpoint {old} sends to {url}")));
        };
        if e.status == "disabled" {
            report.changes.push(Change::Unchanged(format!("webhook endpoint {old} (retired already)")));
        } else {
            let e_id = e.id.clone();
            let is_pinned = pinned(e);
            let others_pinned = mine.iter().any(|o| o.id != e_id && pinned(o) && o.status == "enabled");
            if is_pinned && !others_pinned {
                return Err(SetupError(format!(
                    "webhook endpoint {old} is the only one in API version {version}: not retired"
                )));
            }
            UpdateWebhookEndpoint::new(old.as_str())
                .disabled(true)
                .send(client)
                .await
                .map_err(|er| err("disable webhook endpoint", er))?;
            report.changes.push(Change::Updated(format!("webhook endpoint {old} disabled (retired)")));
            if let Some(e) = mine.iter_mut().find(|e| e.id.as_str() == old) {
                e.status = "disabled".into();
            }
        }
    }

    let current = mine.iter().filter(|e| pinned(e)).max_by_key(|e| e.status == "enabled").or_else(|| {
        mine.iter().filter(|e| c.retire_webhook.as_deref() != Some(e.id.as_str())).max_by_key(|e| e.status == "enabled")
    });
    let replace = current.is_some_and(|e| !pinned(e)) && c.repin_webhook;
    match current {
        Some(e) if !replace => {
            if !pinned(e) {
                report.changes.push(Change::Unchanged(format!(
                    "webhook endpoint {} sends events in API version {}, not {version} (paykey reads only id, type and object ids, so it works; to pin it, run again with --repin-webhook)",
                    e.id,
                    e.api_version.as_deref().unwrap_or("the account default"),
                )));
            }
            let mut have: Vec<String> = e.enabled_events.clone();
            have.sort();
            let mut want = wanted.clone();
            want.sort();
            if have == want && e.status == "enabled" {
                report.changes.push(Change::Unchanged(format!("webhook endpoint {} → {url}", e.id)));
            } else {
                let events: Vec<UpdateWebhookEndpointEnabledEvents> = wanted
                    .iter()
                    .map(|s| s.parse().map_err(|_| SetupError(format!("event {s}"))))
                    .collect::<Result<_, _>>()?;
                UpdateWebhookEndpoint::new(e.id.as_str())
                    .enabled_events(events)
                    .disabled(false)
                    .send(client)
                    .await
                    .map_err(|er| err("update webhook endpoint", er))?;
                report.changes.push(Change::Updated(format!("webhook endpoint {} (events)", e.id)));
            }
            // An old endpoint still delivering beside the pinned one: say how to retire it.
            for o in mine.iter().filter(|o| o.id != e.id && !pinned(o) && o.status == "enabled") {
                report.changes.push(Change::Unchanged(format!(
                    "webhook endpoint {} (API version {}) also delivers to {url}; once the new secret is deployed, retire it: --retire-webhook {}",
                    o.id,
                    o.api_version.as_deref().unwrap_or("the account default"),
                    o.id
                )));
            }
        }
        _ => {
            let events: Vec<CreateWebhookEndpointEnabledEvents> = wanted
                .iter()
                .map(|s| s.parse().map_err(|_| SetupError(format!("event {s}"))))
                .collect::<Result<_, _>>()?;
            // A replacement has its own idempotency key (the first creation's would replay it).
            let key = match current {
                Some(old) => format!("paykey-setup-webhook-{url}-{version}-replaces-{}", old.id),
                None => format!("paykey-setup-webhook-{url}"),
            };
            let e = CreateWebhookEndpoint::new(events, url)
                .api_version(stripe_shared::version::VERSION)
                .description("paykey: plan and key lifecycle")
                .customize()
                .request_strategy(idem(key)?)
                .send(client)
                .await
                .map_err(|er| err("create webhook endpoint", er))?;
            report.webhook_secret = e.secret.clone();
            report.changes.push(Change::Created(match current {
                None => format!("webhook endpoint {} → {url} (API version {version})", e.id),
                Some(old) => format!(
                    "webhook endpoint {} → {url} (API version {version}), replacing {}: deploy both secrets (STRIPE_WEBHOOK_SECRET=<new>,<old>), then run with --retire-webhook {}",
                    e.id, old.id, old.id
                ),
            }));
        }
    }
    Ok(())
}
