//! Use-cases, generic over the ports: no AWS or Stripe types here.

mod account;
mod account_keys;
pub mod admin;
mod budget;
mod checkout;
mod free_key;
mod fulfil;
mod lifecycle;
pub mod metering;
mod plans;
mod portal;
mod reclaim;
mod rotate;
mod spend_cap;

pub use account::{get_account, usage_alerts, AccountView, ApiKeyView, DayUse, UsageView, USAGE_THRESHOLDS};
pub use budget::{spend_budget, Spending};
pub use checkout::{start_checkout, CheckoutRequest, CheckoutStarted};
pub use free_key::{issue_free_key, FreeKey};
pub use fulfil::{complete_checkout, Completion, Rejection, UNCHANGED_MARGIN};
pub use lifecycle::{
    count_keys, desired_plan, handle_stripe_event, handled_event_types, resync, sync_subscription, Access, Drift,
    EventOutcome, KeyCount, SyncOutcome, API_KEY_QUOTA,
};
pub use plans::{list_plans, MeteredView, PlanView, PlansView, PriceView};
pub use portal::open_billing_portal;
pub use reclaim::{reclaim_idle_free_keys, RECLAIMS_PER_RUN};
pub use rotate::{
    end_expired_comps, rotate_key, scheduled_run, sweep_expired_keys, RotateRequest, Rotated, ScheduledRun,
};
pub use spend_cap::{set_spend_cap, spend_cap_view, CapRequest, CapSet, SpendCapView};

use std::time::Duration;

use crate::domain::{Catalog, LookupKey, Plan, Tier};

/// The PRO usage plan id of [`Settings::new`]'s catalog (tests and the local stack).
pub const DEFAULT_PRO_USAGE_PLAN: &str = "usage-plan-pro";

/// Settings the flows need, read once per cold start (by `crate::config`, which the flows do
/// not import).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The front end's origin, e.g. `https://app.example.com` (no trailing slash).
    pub app_url: String,
    /// This API's public base URL (where Stripe redirects after payment), no trailing slash.
    pub api_url: String,
    /// Other front-end origins a browser may call the API from (`ALLOWED_ORIGINS`, lowercased
    /// `scheme://host[:port]`): answered with their own `Access-Control-Allow-Origin`.
    pub allowed_origins: Vec<String>,
    /// What is sold: `PAYKEY_CATALOG`, or without it today's single PRO tier
    /// ([`Catalog::legacy`]). A checkout may ask for its paid tiers' lookup keys only.
    pub catalog: Catalog,
    /// API key names are this prefix plus the user name.
    pub key_name_prefix: String,
    /// How long a fulfilment attempt holds its claim; longer than the function timeout, so a
    /// lease only expires once its holder is gone.
    pub lease: Duration,
    /// How long a concurrent request waits for another attempt to finish fulfilment.
    pub wait_for_peer: Duration,
    /// How long checkout records are kept (DynamoDB TTL).
    pub session_ttl: Duration,
    /// How long a `past_due` subscription keeps PRO while Stripe retries the payment.
    pub past_due_grace: Duration,
    /// How long processed webhook event ids are remembered.
    pub event_ttl: Duration,
    /// The longest grace a key rotation may give the old key.
    pub rotation_max_grace: Duration,
    /// Key rotations a user may make in 24 hours (each costs control-plane calls).
    pub rotations_per_day: u32,
    /// Each user's budget on each route that spends Stripe writes or API Gateway
    /// control-plane calls (checkout, billing portal, free key, rotation): `USER_BUDGET_BURST`
    /// requests at once, then one per `USER_BUDGET_INTERVAL_SECONDS`.
    pub user_budget: crate::ports::Budget,
    /// How long after its creation a user's open checkout is handed out again to a repeated
    /// request (`CHECKOUT_REUSE_SECONDS`); an older one is replaced and expired at Stripe.
    pub checkout_reuse: Duration,
    /// paykey's billing portal configuration (`STRIPE_PORTAL_CONFIGURATION`, `bpc_…`, made by
    /// `paykey-setup`), passed on every portal session. Required by the functions that open
    /// the portal (checked at init); without it the flows refuse to open one.
    pub portal_configuration: Option<String>,
    /// How long one request may take to create a user's checkout before another may.
    pub checkout_claim: Duration,
    /// `FREE_KEY_IDLE_DAYS` (1–60; unset or 0: off): the sweep deletes a free-tier key that served
    /// no call in that many days nor in the current quota period, and whose record did not change
    /// in them (re-issued, as a new key, on the user's next `POST /api-key`), so idle free keys do
    /// not fill API Gateway's 10,000 keys per account and Region.
    pub free_key_idle_days: Option<u32>,
    /// `STRIPE_WEBHOOK_SECRET` (`whsec_…`), for the webhook function: one, or several while
    /// an endpoint is being replaced (a delivery signed with any of them is accepted).
    pub webhook_secrets: Vec<crate::domain::Secret>,
}

impl Settings {
    /// Defaults for everything but the two URLs.
    pub fn new(app_url: impl Into<String>, api_url: impl Into<String>) -> Self {
        Self {
            app_url: app_url.into(),
            api_url: api_url.into(),
            allowed_origins: Vec::new(),
            catalog: Catalog::legacy(
                Some(DEFAULT_PRO_USAGE_PLAN),
                &[LookupKey::parse("FMMailPro").expect("valid lookup key")],
            ),
            key_name_prefix: "paykey-pro-".to_string(),
            lease: Duration::from_secs(60),
            wait_for_peer: Duration::from_secs(5),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            past_due_grace: Duration::from_secs(7 * 24 * 3600),
            event_ttl: Duration::from_secs(30 * 24 * 3600),
            rotation_max_grace: Duration::from_secs(24 * 3600),
            rotations_per_day: 3,
            user_budget: crate::ports::Budget { burst: 5, interval: Duration::from_secs(10) },
            checkout_reuse: Duration::from_secs(3600),
            portal_configuration: None,
            // the function's timeout (20 s): a crashed holder stops blocking once it is gone
            checkout_claim: Duration::from_secs(20),
            webhook_secrets: Vec::new(),
            free_key_idle_days: None,
        }
    }

    /// The user's key name: prefix + `sub` (keys of earlier versions, named after the user
    /// name, are found through the account record's key id).
    pub fn key_name(&self, user: &crate::domain::User) -> String {
        format!("{}{}", self.key_name_prefix, user.id)
    }

    /// The tier a user on `plan` is on; a plan the catalog no longer names (a tier removed
    /// from it) is treated as the free tier.
    pub fn tier_of(&self, plan: &Plan) -> Option<&Tier> {
        self.catalog.tiers().iter().find(|t| t.name.as_str() == plan.as_str())
    }

    /// The plan of a user without a subscription: the catalog's free tier, else `FREE`.
    pub fn free_plan(&self) -> Plan {
        self.catalog.free().map(|t| Plan::of(&t.name)).unwrap_or(Plan::FREE)
    }

    /// The `Access-Control-Allow-Origin` to answer a request carrying `origin` (its `Origin`
    /// header) with: that origin when it is the front end's or an allowed one, else the front
    /// end's (a page on any other origin cannot read the answer).
    pub fn cors_origin<'a>(&'a self, origin: Option<&'a str>) -> &'a str {
        match origin {
            Some(o) if o == self.app_url || self.allowed_origins.iter().any(|a| a == o) => o,
            _ => &self.app_url,
        }
    }

    pub fn thanks_url(&self) -> String {
        format!("{}/thanks_upgrade", self.app_url)
    }

    /// The thanks page, told that the key is not there yet (another attempt holds the work,
    /// or a backend failed): the page polls `/account`; the webhook finishes the fulfilment.
    pub fn pending_url(&self) -> String {
        format!("{}/thanks_upgrade?status=pending", self.app_url)
    }

    pub fn cancel_url(&self) -> String {
        format!("{}/canceled_upgrade", self.app_url)
    }
}

/// The clock, id source and settings every flow may use.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub clock: &'a dyn crate::ports::Clock,
    pub ids: &'a dyn crate::ports::Ids,
    pub settings: &'a Settings,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A JSON number that is a whole number ≥ 0, as JSON Schema reads it (`300.0` is 300: JSON does
/// not tell integers from floats, and Schemathesis sends both); `None` otherwise.
pub(crate) fn whole_number(n: &serde_json::Number) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    // below 2^53 every whole f64 is exact
    n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 9_007_199_254_740_992.0).map(|f| f as u64)
}
