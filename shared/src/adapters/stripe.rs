//! Stripe through async-stripe (1.0 line): prices by lookup key, Checkout Sessions, Billing
//! Portal sessions. Every create call carries an idempotency key built from our own data. The
//! base URL can point at the local Stripe emulator (`STRIPE_API_BASE`).

use std::collections::HashMap;
use std::time::Duration;

use stripe::{IdempotencyKey, StripeRequest};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
    ExpireCheckoutSession, RetrieveCheckoutSession,
};
use stripe_checkout::CheckoutSessionMode;
use stripe_product::price::ListPrice;

use stripe_billing::credit_note::CreateCreditNote;
use stripe_billing::subscription::{
    CancelSubscription, ListSubscription, ListSubscriptionStatus, RetrieveSubscription,
};

use crate::adapters::stripe_client::{CallError, ClientSettings, PooledClient};
use crate::config::StripeConfig;
use crate::domain::{BackendError, CustomerId, Error, LookupKey, SessionId, SubscriptionId};
use crate::ports::{
    CheckoutState, CreatedCheckout, DuplicateCancelled, EventSubject, NewCheckout, Payments, PriceInfo, Result,
    StripeEvent, SubscriptionState, SubscriptionStatus,
};

/// How far a webhook's signed timestamp may be from now, either way (Stripe's libraries: 300 s).
const WEBHOOK_TOLERANCE_SECONDS: i64 = 300;

/// Checks a webhook's `Stripe-Signature` header against the raw body the way Stripe's
/// libraries do (HMAC-SHA256 of `"{t}.{body}"` with the endpoint's `whsec_` secret, accepted
/// when any `v1` signature matches, compared in constant time by the `hmac` crate, the
/// timestamp within 300 s of `now`) and reads what the event is about from a minimal envelope
/// (`id`, `type`, and the object's id, customer and subscription), whatever the API version
/// or the object's other fields.
///
/// The check is written here rather than taken from async-stripe-webhook, whose
/// `construct_event` also deserializes the event into every Stripe resource type: that
/// crate pulled all of them into the webhook binary (see BENCHMARKS.md, sizes).
///
/// `Ok(None)`: correctly signed, but not a Stripe event paykey can read (no `id` or `type`).
/// Only a missing or wrong signature or a stale timestamp is an error.
pub fn verify_event(
    payload: &str,
    signature: &str,
    secret: &str,
    now: i64,
) -> std::result::Result<Option<StripeEvent>, Error> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for pair in signature.split(',') {
        let (key, value) = pair.split_once('=').ok_or_else(|| Error::BadSignature("signature mismatch".into()))?;
        match key {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| Error::BadSignature("malformed Stripe-Signature header".into()))?,
                )
            }
            "v1" => candidates.push(value),
            _ => {}
        }
    }
    let (Some(t), false) = (timestamp, candidates.is_empty()) else {
        return Err(Error::BadSignature("signature mismatch".into()));
    };
    use hmac::Mac;
    let mac = signer(secret, t, payload);
    let matches = candidates.iter().any(|c| hex::decode(c).is_ok_and(|sig| mac.clone().verify_slice(&sig).is_ok()));
    if !matches {
        return Err(Error::BadSignature("signature mismatch".into()));
    }
    if (now - t).abs() > WEBHOOK_TOLERANCE_SECONDS {
        return Err(Error::BadSignature(format!("timestamp {t} is outside the 300 s tolerance")));
    }
    Ok(read_envelope(payload))
}

/// HMAC-SHA256 over `"{t}.{payload}"` keyed with the whole secret string, as Stripe signs.
fn signer(secret: &str, t: i64, payload: &str) -> hmac::Hmac<sha2::Sha256> {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any size");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac
}

/// The few fields of a Stripe event paykey acts on; the rest is fetched from Stripe.
fn read_envelope(payload: &str) -> Option<StripeEvent> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let id = v.get("id")?.as_str()?.to_string();
    let kind = v.get("type")?.as_str()?.to_string();
    let object = v.get("data").and_then(|d| d.get("object"));
    // An expandable field: an id, or the object carrying it.
    let id_of = |field: Option<&serde_json::Value>| -> Option<String> {
        let f = field?;
        f.as_str().map(str::to_string).or_else(|| f.get("id").and_then(|i| i.as_str()).map(str::to_string))
    };
    let object_id = object.and_then(|o| o.get("id")).and_then(|i| i.as_str());
    let customer = id_of(object.and_then(|o| o.get("customer"))).and_then(|c| CustomerId::parse(&c).ok());
    let subject = if kind.starts_with("checkout.session.") {
        object_id.and_then(|i| SessionId::parse(i).ok()).map(EventSubject::Checkout)
    } else if kind.starts_with("customer.subscription.") {
        object_id.and_then(|i| SubscriptionId::parse(i).ok()).map(|id| EventSubject::Subscription { id, customer })
    } else if kind == "invoice.created" && closing_invoice(object).is_some() {
        closing_invoice(object)
    } else if kind.starts_with("invoice.") {
        let from_parent = object
            .and_then(|o| o.get("parent"))
            .and_then(|p| p.get("subscription_details"))
            .and_then(|d| d.get("subscription"));
        let subscription = id_of(from_parent)
            .or_else(|| id_of(object.and_then(|o| o.get("subscription"))))
            .and_then(|s| SubscriptionId::parse(&s).ok());
        Some(EventSubject::Invoice { subscription, customer })
    } else {
        None
    };
    Some(StripeEvent { id, kind, subject: subject.unwrap_or(EventSubject::Other) })
}

/// A draft invoice of a subscription's new period: the closed period it bills (the invoice's
/// `period_start`/`period_end`: "the usage period during which invoice items were added").
fn closing_invoice(object: Option<&serde_json::Value>) -> Option<EventSubject> {
    let o = object?;
    if o.get("billing_reason")?.as_str()? != "subscription_cycle" || o.get("status")?.as_str()? != "draft" {
        return None;
    }
    let id_of = |f: &serde_json::Value| f.as_str().or_else(|| f.get("id").and_then(|i| i.as_str())).map(str::to_string);
    let subscription = o
        .get("parent")
        .and_then(|p| p.get("subscription_details"))
        .and_then(|d| d.get("subscription"))
        .and_then(id_of)
        .or_else(|| o.get("subscription").and_then(id_of))?;
    let at = |k: &str| chrono::DateTime::from_timestamp(o.get(k)?.as_i64()?, 0);
    Some(EventSubject::ClosingInvoice {
        subscription: SubscriptionId::parse(&subscription).ok()?,
        customer: CustomerId::parse(&id_of(o.get("customer")?)?).ok()?,
        period_start: at("period_start")?,
        period_end: at("period_end")?,
    })
}

/// A `Stripe-Signature` header for `payload`, as Stripe computes it (tests, the emulator).
pub fn sign_payload(payload: &str, secret: &str, timestamp: i64) -> String {
    use hmac::Mac;
    format!("t={timestamp},v1={}", hex::encode(signer(secret, timestamp, payload).finalize().into_bytes()))
}

const SERVICE: &str = "stripe";

pub use crate::domain::Connect;

/// The Stripe adapter.
#[derive(Clone)]
pub struct StripePayments {
    client: PooledClient,
    connect: Option<Connect>,
}

impl std::fmt::Debug for StripePayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripePayments").finish_non_exhaustive()
    }
}

impl StripePayments {
    /// Builds the client once per cold start (no connection is opened until the first call).
    /// The secret only goes into the (sensitive) Authorization header.
    pub fn new(config: &StripeConfig) -> std::result::Result<Self, BackendError> {
        Self::with_settings(config, ClientSettings::default())
    }

    /// [`Self::new`] with other connection settings: trust roots (a test CA), pool size.
    pub fn with_settings(
        config: &StripeConfig,
        mut settings: ClientSettings,
    ) -> std::result::Result<Self, BackendError> {
        settings.api_base = config.api_base.clone();
        let app = concat!("paykey/", env!("CARGO_PKG_VERSION"));
        let client = PooledClient::new(config.secret_key.expose(), app, settings)
            .map_err(|e| BackendError::new(SERVICE, "client", describe(&e)))?;
        Ok(Self { client, connect: None })
    }

    pub fn with_connect(mut self, connect: Option<Connect>) -> Self {
        self.connect = connect;
        self
    }
}

/// The lookup key a price was sold under: its own, or — for a price of a product `paykey-setup`
/// made (id `paykey_<lookup key>`) whose lookup key moved to a newer price of that product
/// (`transfer_lookup_key`, a price change) — the product's. So a subscription to the old price
/// (or a session opened at it and paid after the change) is still the tier's.
fn sold_under(price: &wire::Price) -> Option<String> {
    price.lookup_key.clone().or_else(|| {
        let product = price.product.as_ref()?.id();
        product.strip_prefix(PAYKEY_PRODUCT_PREFIX).filter(|k| !k.is_empty()).map(str::to_string)
    })
}

/// The id prefix of the products `paykey-setup` creates (`paykey_<lookup key>`).
pub const PAYKEY_PRODUCT_PREFIX: &str = "paykey_";

/// Status, code and message of a Stripe error; never the request.
fn describe(e: &CallError) -> String {
    e.to_string()
}

fn subscription_state(sub: &wire::Subscription, op: &'static str) -> Result<SubscriptionState> {
    let id = SubscriptionId::parse(&sub.id).map_err(|e| BackendError::new(SERVICE, op, e.to_string()))?;
    let customer = CustomerId::parse(sub.customer.id()).map_err(|e| BackendError::new(SERVICE, op, e.to_string()))?;
    let period_end = sub
        .cancel_at
        .or_else(|| sub.items.data.iter().filter_map(|i| i.current_period_end).max())
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0));
    Ok(SubscriptionState {
        id,
        customer,
        status: SubscriptionStatus::parse(&sub.status),
        cancel_at_period_end: sub.cancel_at_period_end || sub.cancel_at.is_some(),
        period_end,
        user_name: sub.metadata.get("user_name").cloned(),
        user_id: sub.metadata.get("user_id").cloned(),
        item_lookup_keys: sub.items.data.iter().map(|i| sold_under(&i.price)).collect(),
        trial_end: sub.trial_end.and_then(|t| chrono::DateTime::from_timestamp(t, 0)),
    })
}

/// The fields paykey reads from Stripe's answers, and nothing else: serde skips the rest, so
/// neither the API version's other fields nor async-stripe's generated deserializers for
/// Stripe's full objects (which reach most of its types) are part of the functions.
mod wire {
    use std::collections::HashMap;

    use serde::Deserialize;

    /// An expandable field: the id, or the object.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Expandable<T> {
        Id(String),
        Object(T),
    }

    #[derive(Debug, Deserialize)]
    pub struct Object {
        pub id: String,
    }

    impl Expandable<Object> {
        pub fn id(&self) -> &str {
            match self {
                Self::Id(id) => id,
                Self::Object(o) => &o.id,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    pub struct List<T> {
        pub data: Vec<T>,
        #[serde(default)]
        pub has_more: bool,
    }

    #[derive(Debug, Deserialize)]
    pub struct Subscription {
        pub id: String,
        pub customer: Expandable<Object>,
        pub status: String,
        #[serde(default)]
        pub cancel_at_period_end: bool,
        pub cancel_at: Option<i64>,
        pub items: List<SubscriptionItem>,
        #[serde(default)]
        pub metadata: HashMap<String, String>,
        pub trial_end: Option<i64>,
        pub created: i64,
        pub latest_invoice: Option<Expandable<Invoice>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct SubscriptionItem {
        pub current_period_end: Option<i64>,
        pub price: Price,
    }

    #[derive(Debug, Deserialize)]
    pub struct Price {
        pub id: String,
        pub lookup_key: Option<String>,
        #[serde(default)]
        pub product: Option<Expandable<Object>>,
        pub unit_amount: Option<i64>,
        pub currency: String,
        #[serde(default)]
        pub recurring: Option<Recurring>,
        /// Present when expanded (`expand[]=data.tiers`).
        #[serde(default)]
        pub tiers: Option<Vec<PriceTier>>,
        /// `graduated` or `volume` on a tiered price.
        #[serde(default)]
        pub tiers_mode: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Recurring {
        pub interval: String,
        pub interval_count: u32,
        /// `licensed` or `metered`.
        #[serde(default)]
        pub usage_type: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct PriceTier {
        /// `null`: the last tier ("inf").
        pub up_to: Option<u64>,
        pub unit_amount_decimal: Option<String>,
        pub flat_amount: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Invoice {
        pub id: Option<String>,
        pub amount_paid: i64,
        #[serde(default)]
        pub post_payment_credit_notes_amount: i64,
    }

    #[derive(Debug, Deserialize)]
    pub struct CheckoutSession {
        pub id: String,
        pub url: Option<String>,
        pub payment_status: String,
        pub status: Option<String>,
        pub client_reference_id: Option<String>,
        pub customer: Option<Expandable<Object>>,
        pub subscription: Option<Expandable<Subscription>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct PortalSession {
        pub url: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct Meter {
        pub id: String,
        pub event_name: String,
        pub event_time_window: Option<String>,
        pub default_aggregation: Aggregation,
        pub customer_mapping: PayloadKey,
        pub value_settings: PayloadKey,
    }

    #[derive(Debug, Deserialize)]
    pub struct PayloadKey {
        pub event_payload_key: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct Aggregation {
        pub formula: String,
    }

    #[derive(Debug, Deserialize)]
    pub struct MeterEvent {
        #[allow(dead_code)] // read to check the answer is a meter event
        pub identifier: String,
    }
}

/// Attempts per Stripe call: the first and up to three retries.
const ATTEMPTS: u32 = 4;
/// The first wait before a retry; it doubles each time (0.2, 0.4, 0.8 s, plus up to 10% jitter).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Whether Stripe (or the way to it) asks to try again: rate limited (429), a lock on the
/// idempotency key by a concurrent request (409), a Stripe-side error (5xx), or no answer at all.
fn is_retryable(e: &CallError) -> bool {
    match e {
        CallError::Stripe { status, .. } => matches!(status, 409 | 429 | 500..=599),
        CallError::Transport(_) | CallError::Timeout => true,
        CallError::Decode(_) | CallError::Config(_) => false,
    }
}

/// Runs a Stripe call, retrying what [`is_retryable`] allows with exponential backoff. The
/// request is rebuilt each time with the *same* idempotency key, so a retry after a lost
/// answer replays Stripe's first answer instead of acting twice.
async fn retrying<T, F, Fut>(op: &'static str, mut call: F) -> std::result::Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, CallError>>,
{
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < ATTEMPTS && is_retryable(&e) => {
                tracing::warn!(op, attempt, error = %describe(&e), "Stripe asked to slow down or failed; retrying");
                let jitter = wait.mul_f64((uuid::Uuid::new_v4().as_u128() % 100) as f64 / 1000.0);
                tokio::time::sleep(wait + jitter).await;
                wait *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn is_missing(e: &CallError) -> bool {
    e.status() == Some(404)
}

fn idempotency_key(key: &str, op: &'static str) -> Result<IdempotencyKey> {
    IdempotencyKey::new(key).map_err(|e| BackendError::new(SERVICE, op, e.to_string()))
}

impl Payments for StripePayments {
    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<SubscriptionState>> {
        const OP: &str = "GET /v1/subscriptions/{id}";
        match retrying(OP, || async {
            self.client.call::<wire::Subscription>(RetrieveSubscription::new(id.as_str()).build(), None).await
        })
        .await
        {
            Ok(s) => subscription_state(&s, OP).map(Some),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn list_subscriptions(&self, customer: &CustomerId) -> Result<Vec<SubscriptionState>> {
        const OP: &str = "GET /v1/subscriptions";
        let list = retrying(OP, || async {
            let req =
                ListSubscription::new().customer(customer.as_str()).status(ListSubscriptionStatus::All).limit(100);
            self.client.call::<wire::List<wire::Subscription>>(req.build(), None).await
        })
        .await
        .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        let mut subs: Vec<_> = list.data.iter().map(|s| (s.created, subscription_state(s, OP))).collect();
        subs.sort_by_key(|s| std::cmp::Reverse(s.0));
        subs.into_iter().map(|(_, s)| s).collect()
    }

    async fn find_price(&self, lookup_key: &LookupKey) -> Result<Option<PriceInfo>> {
        const OP: &str = "GET /v1/prices";
        let list = retrying(OP, || async {
            // `tiers` is included only when expanded (Stripe: "expand[]=data.tiers").
            let req = ListPrice::new()
                .lookup_keys(vec![lookup_key.to_string()])
                .active(true)
                .limit(1)
                .expand(vec!["data.tiers".to_string()]);
            self.client.call::<wire::List<wire::Price>>(req.build(), None).await
        })
        .await
        .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(list.data.into_iter().next().map(|p| PriceInfo {
            graduated: p.tiers_mode.as_deref() == Some("graduated"),
            id: p.id,
            lookup_key: p.lookup_key.unwrap_or_else(|| lookup_key.to_string()),
            unit_amount: p.unit_amount,
            currency: p.currency,
            metered: p.recurring.as_ref().is_some_and(|r| r.usage_type.as_deref() == Some("metered")),
            recurring: p
                .recurring
                .map(|r| crate::ports::Recurring { interval: r.interval, interval_count: r.interval_count }),
            tiers: p
                .tiers
                .unwrap_or_default()
                .into_iter()
                .map(|t| crate::ports::PriceTier {
                    up_to: t.up_to,
                    unit_amount_decimal: t.unit_amount_decimal,
                    flat_amount: t.flat_amount,
                })
                .collect(),
        }))
    }

    async fn create_checkout(&self, req: NewCheckout<'_>) -> Result<CreatedCheckout> {
        const OP: &str = "POST /v1/checkout/sessions";
        let metadata = HashMap::from([
            ("user_id".to_string(), req.user.id.to_string()),
            ("user_name".to_string(), req.user.name.to_string()),
        ]);
        // A metered price is sold without a quantity (Stripe refuses one): the meter's usage
        // is the quantity. A tier's overage price goes beside its flat price.
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(req.price_id.to_string());
        item.quantity = (!req.price_metered).then_some(1);
        let mut items = vec![item];
        if let Some(o) = req.overage_price_id {
            let mut overage = CreateCheckoutSessionLineItems::new();
            overage.price = Some(o.to_string());
            items.push(overage);
        }
        let mut sub = CreateCheckoutSessionSubscriptionData::new();
        sub.metadata = Some(metadata.clone());
        if req.trial_days > 0 {
            sub.trial_period_days = Some(req.trial_days);
        }
        if let Some(c) = &self.connect {
            sub.application_fee_percent = c.application_fee_percent;
            sub.transfer_data =
                Some(stripe_checkout::checkout_session::CreateCheckoutSessionSubscriptionDataTransferData {
                    amount_percent: None,
                    destination: c.destination.clone(),
                });
        }
        let mut create = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Subscription)
            .line_items(items)
            .success_url(req.success_url)
            .cancel_url(req.cancel_url)
            .client_reference_id(req.user.id.to_string())
            .metadata(metadata)
            .subscription_data(sub);
        if let Some(c) = req.customer {
            create = create.customer(c.to_string());
        }
        let key = idempotency_key(&req.idempotency_key, OP)?;
        let session =
            retrying(OP, || async { self.client.call::<wire::CheckoutSession>(create.build(), Some(&key)).await })
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        let id = SessionId::parse(&session.id).map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        let url = session.url.ok_or_else(|| BackendError::new(SERVICE, OP, "session without url"))?;
        Ok(CreatedCheckout { id, url })
    }

    async fn get_checkout(&self, id: &SessionId) -> Result<Option<CheckoutState>> {
        const OP: &str = "GET /v1/checkout/sessions/{id}";
        let session = match retrying(OP, || async {
            // The subscription in the same answer: fulfilment decides from it when nothing can
            // have changed since (one round trip fewer on the success redirect).
            let req = RetrieveCheckoutSession::new(id.as_str()).expand(vec!["subscription".to_string()]);
            self.client.call::<wire::CheckoutSession>(req.build(), None).await
        })
        .await
        {
            Ok(s) => s,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(BackendError::new(SERVICE, OP, describe(&e))),
        };
        let paid = matches!(session.payment_status.as_str(), "paid" | "no_payment_required")
            && session.status.as_deref() == Some("complete");
        let customer = session
            .customer
            .as_ref()
            .map(|c| CustomerId::parse(c.id()))
            .transpose()
            .map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        let (subscription, subscription_state) = match &session.subscription {
            None => (None, None),
            Some(wire::Expandable::Id(s)) => {
                (Some(SubscriptionId::parse(s).map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?), None)
            }
            Some(wire::Expandable::Object(s)) => {
                let state = subscription_state(s, OP)?;
                (Some(state.id.clone()), Some(state))
            }
        };
        Ok(Some(CheckoutState {
            id: id.clone(),
            paid,
            client_reference_id: session.client_reference_id,
            customer,
            subscription,
            subscription_state,
        }))
    }

    async fn create_portal(
        &self,
        customer: &CustomerId,
        configuration: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<String> {
        const OP: &str = "POST /v1/billing_portal/sessions";
        let key = self::idempotency_key(idempotency_key, OP)?;
        let create = CreateBillingPortalSession::new()
            .customer(customer.to_string())
            .configuration(configuration)
            .return_url(return_url);
        let session =
            retrying(OP, || async { self.client.call::<wire::PortalSession>(create.build(), Some(&key)).await })
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(session.url)
    }

    async fn expire_checkout(&self, id: &SessionId) -> Result<bool> {
        const OP: &str = "POST /v1/checkout/sessions/{id}/expire";
        // Naturally idempotent (only an open session can be expired), so no idempotency key: a
        // replayed 200 would hide that the session was expired already.
        match retrying(OP, || async {
            self.client.call::<serde::de::IgnoredAny>(ExpireCheckoutSession::new(id.as_str()).build(), None).await
        })
        .await
        {
            Ok(_) => Ok(true),
            // Stripe answers 400 for a session that is no longer open (completed or expired).
            Err(e) if e.status() == Some(400) => Ok(false),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn cancel_duplicate(&self, id: &SubscriptionId) -> Result<DuplicateCancelled> {
        const GET: &str = "GET /v1/subscriptions/{id}";
        const CANCEL: &str = "DELETE /v1/subscriptions/{id}";
        const CREDIT: &str = "POST /v1/credit_notes";
        let sub = retrying(GET, || async {
            let req = RetrieveSubscription::new(id.as_str()).expand(vec!["latest_invoice".to_string()]);
            self.client.call::<wire::Subscription>(req.build(), None).await
        })
        .await
        .map_err(|e| BackendError::new(SERVICE, GET, describe(&e)))?;
        if sub.status != "canceled" {
            let key = idempotency_key(&format!("paykey-duplicate-cancel-{id}"), CANCEL)?;
            let cancel = CancelSubscription::new(id.as_str()).invoice_now(false).prorate(false);
            retrying(CANCEL, || async { self.client.call::<serde::de::IgnoredAny>(cancel.build(), Some(&key)).await })
                .await
                .map_err(|e| BackendError::new(SERVICE, CANCEL, describe(&e)))?;
        }
        let Some(wire::Expandable::Object(invoice)) = sub.latest_invoice.as_ref() else {
            return Ok(DuplicateCancelled { refunded: 0 });
        };
        let left = invoice.amount_paid - invoice.post_payment_credit_notes_amount;
        let Some(invoice_id) = invoice.id.as_ref().filter(|_| left > 0) else {
            return Ok(DuplicateCancelled { refunded: 0 });
        };
        let key = idempotency_key(&format!("paykey-duplicate-refund-{id}"), CREDIT)?;
        let credit = CreateCreditNote::new(invoice_id.as_str())
            .amount(left)
            .refund_amount(left)
            .reason(stripe_shared::CreditNoteReason::Duplicate)
            .memo("Second subscription for the same plan: cancelled and refunded by paykey.");
        retrying(CREDIT, || async { self.client.call::<serde::de::IgnoredAny>(credit.build(), Some(&key)).await })
            .await
            .map_err(|e| BackendError::new(SERVICE, CREDIT, describe(&e)))?;
        Ok(DuplicateCancelled { refunded: left })
    }
}

/// The start of Stripe's message refusing a meter event whose identifier it saw already.
pub const DUPLICATE_METER_EVENT: &str = "An event already exists with identifier";

impl crate::ports::metering::UsageMeter for StripePayments {
    async fn send_meter_event(&self, event: &crate::ports::metering::MeterEvent) -> Result<()> {
        const OP: &str = "POST /v1/billing/meter_events";
        let identifier = event.identifier();
        let req = stripe_billing::billing_meter_event::CreateBillingMeterEvent::new(
            event.event_name.as_str(),
            HashMap::from([
                ("stripe_customer_id".to_string(), event.customer.to_string()),
                ("value".to_string(), event.value.to_string()),
            ]),
        )
        .identifier(identifier.as_str())
        .timestamp(event.timestamp().timestamp());
        let key = idempotency_key(&identifier, OP)?;
        match retrying(OP, || async { self.client.call::<wire::MeterEvent>(req.build(), Some(&key)).await }).await {
            Ok(_) => Ok(()),
            // Stripe refuses an identifier it saw within 24 hours: "400 invalid_request_error An
            // event already exists with identifier …" (not retryable; as Stripe answered it live,
            // langfuse/langfuse#16292). The identifier carries the customer, day and total, so
            // Stripe holding it means this total was delivered.
            Err(e) if describe(&e).contains(DUPLICATE_METER_EVENT) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn meter_sums_days(&self, event_name: &str) -> Result<Option<bool>> {
        const OP: &str = "GET /v1/billing/meters";
        let mut after: Option<String> = None;
        loop {
            let list = retrying(OP, || async {
                let mut req = stripe_billing::billing_meter::ListBillingMeter::new()
                    .status(stripe_billing::BillingMeterStatus::Active)
                    .limit(100);
                if let Some(a) = &after {
                    req = req.starting_after(a.as_str());
                }
                self.client.call::<wire::List<wire::Meter>>(req.build(), None).await
            })
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            if let Some(m) = list.data.iter().find(|m| m.event_name == event_name) {
                // what paykey-setup makes: sum of daily totals, keyed by stripe_customer_id and value
                return Ok(Some(
                    m.default_aggregation.formula == "sum"
                        && m.event_time_window.as_deref() == Some("day")
                        && m.customer_mapping.event_payload_key == "stripe_customer_id"
                        && m.value_settings.event_payload_key == "value",
                ));
            }
            match (list.has_more, list.data.last()) {
                (true, Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
    }
}

impl crate::ports::admin::PaymentsAdmin for StripePayments {
    async fn cancel_subscription(&self, id: &SubscriptionId) -> Result<()> {
        const GET: &str = "GET /v1/subscriptions/{id}";
        const CANCEL: &str = "DELETE /v1/subscriptions/{id}";
        let sub = retrying(GET, || async {
            self.client.call::<wire::Subscription>(RetrieveSubscription::new(id.as_str()).build(), None).await
        })
        .await
        .map_err(|e| BackendError::new(SERVICE, GET, describe(&e)))?;
        if sub.status == "canceled" {
            return Ok(());
        }
        let key = idempotency_key(&format!("paykey-admin-cancel-{id}"), CANCEL)?;
        let cancel = CancelSubscription::new(id.as_str()).invoice_now(false).prorate(false);
        retrying(CANCEL, || async { self.client.call::<serde::de::IgnoredAny>(cancel.build(), Some(&key)).await })
            .await
            .map_err(|e| BackendError::new(SERVICE, CANCEL, describe(&e)))?;
        Ok(())
    }

    async fn delete_customer(&self, id: &crate::domain::CustomerId) -> Result<()> {
        const OP: &str = "DELETE /v1/customers/{id}";
        let path = format!("/customers/{id}");
        let res = retrying(OP, || async {
            let req = stripe_client_core::RequestBuilder::new(stripe_client_core::StripeMethod::Delete, path.clone());
            self.client.call::<serde::de::IgnoredAny>(req, None).await
        })
        .await;
        match res {
            Ok(_) => Ok(()),
            // Deleted already (a retry after a lost answer).
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str =
        r#"{"id":"evt_1","type":"customer.subscription.deleted","data":{"object":{"id":"sub_1","customer":"cus_1"}}}"#;
    const SECRET: &str = "whsec_paykey_vector";
    const T: i64 = 1_764_000_000;
    /// Computed by stripe-python 16.1.0 (`WebhookSignature._compute_signature`), which also
    /// accepted the header of `a_signature_stripe_python_computed_is_accepted_among_others`.
    const STRIPE_PYTHON_V1: &str = "02a6e9ad28d9c61471f9eea1016b78a4fe01809a4e1ab5f51bb62483a8727ee9";

    #[test]
    fn the_signature_is_the_one_stripes_own_library_computes() {
        assert_eq!(sign_payload(PAYLOAD, SECRET, T), format!("t={T},v1={STRIPE_PYTHON_V1}"));
    }

    #[test]
    fn a_signature_stripe_python_computed_is_accepted_among_others() {
        let header = format!("t={T},v0=deadbeef,v1=00,v1={STRIPE_PYTHON_V1}");
        let event = verify_event(PAYLOAD, &header, SECRET, T + 300).unwrap().unwrap();
        assert_eq!((event.id.as_str(), event.kind.as_str()), ("evt_1", "customer.subscription.deleted"));
    }

    #[test]
    fn every_bad_header_is_refused_with_its_reason() {
        let good = format!("t={T},v1={STRIPE_PYTHON_V1}");
        let cases: [(&str, String, i64, &str); 9] = [
            ("a stale timestamp", good.clone(), T + 301, "timestamp 1764000000 is outside the 300 s tolerance"),
            ("a timestamp from the future", good.clone(), T - 301, "outside the 300 s tolerance"),
            ("another secret's signature", format!("t={T},v1={}", "0".repeat(64)), T, "signature mismatch"),
            ("a v0 signature only", format!("t={T},v0={STRIPE_PYTHON_V1}"), T, "signature mismatch"),
            ("no timestamp", format!("v1={STRIPE_PYTHON_V1}"), T, "signature mismatch"),
            ("a timestamp that is not a number", format!("t=soon,v1={STRIPE_PYTHON_V1}"), T, "malformed"),
            ("a pair without =", format!("t={T},v1"), T, "signature mismatch"),
            ("an empty header", String::new(), T, "signature mismatch"),
            (
                "the signature of another timestamp",
                format!("t={},v1={STRIPE_PYTHON_V1}", T + 1),
                T,
                "signature mismatch",
            ),
        ];
        for (what, header, now, reason) in cases {
            match verify_event(PAYLOAD, &header, SECRET, now) {
                Err(Error::BadSignature(r)) => assert!(r.contains(reason), "{what}: {r}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        let tampered = PAYLOAD.replace("sub_1", "sub_2");
        assert!(verify_event(&tampered, &good, SECRET, T).is_err(), "a changed body");
    }
}
