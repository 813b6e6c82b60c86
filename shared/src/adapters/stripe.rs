//! Stripe through async-stripe (1.0 line): prices by lookup key, Checkout Sessions, Billing
//! Portal sessions. Every create call carries an idempotency key built from our own data. The
//! base URL can point at the local Stripe emulator (`STRIPE_API_BASE`).

use std::collections::HashMap;
use std::time::Duration;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
    RetrieveCheckoutSession,
};
use stripe_checkout::{CheckoutSessionMode, CheckoutSessionPaymentStatus, CheckoutSessionStatus};
use stripe_product::price::ListPrice;

use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus, RetrieveSubscription};
use stripe_webhook::{EventObject, Webhook, WebhookError};

use crate::config::StripeConfig;
use crate::domain::{BackendError, CustomerId, Error, LookupKey, SessionId, SubscriptionId};
use crate::ports::{
    CheckoutState, CreatedCheckout, EventSubject, NewCheckout, Payments, PriceInfo, Result, StripeEvent,
    SubscriptionState, SubscriptionStatus,
};

/// Checks a webhook's `Stripe-Signature` header against the raw body (HMAC-SHA256 with the
/// endpoint's `whsec_` secret, any `v1` signature, timestamp within 300 s of `now`) and reads
/// what the event is about.
pub fn verify_event(payload: &str, signature: &str, secret: &str, now: i64) -> std::result::Result<StripeEvent, Error> {
    let event = Webhook::construct_event_with_timestamp(payload, signature, secret, now).map_err(|e| {
        Error::BadSignature(match e {
            WebhookError::BadSignature => "signature mismatch".into(),
            WebhookError::BadTimestamp(t) => {
                format!("timestamp {t} is outside the 300 s tolerance")
            }
            WebhookError::BadHeader(_) => "malformed Stripe-Signature header".into(),
            WebhookError::BadKey => "unusable webhook secret".into(),
            WebhookError::BadParse(m) => format!("signed body is not a Stripe event: {m}"),
        })
    })?;
    let id_of = |c: &stripe_types::Expandable<stripe_shared::Customer>| CustomerId::parse(c.id().as_str()).ok();
    let sub_of =
        |s: &stripe_types::Expandable<stripe_shared::Subscription>| SubscriptionId::parse(s.id().as_str()).ok();
    let subject = match &event.data.object {
        EventObject::CheckoutSessionCompleted(s) | EventObject::CheckoutSessionAsyncPaymentSucceeded(s) => {
            SessionId::parse(s.id.as_str()).map(EventSubject::Checkout).unwrap_or(EventSubject::Other)
        }
        EventObject::CustomerSubscriptionCreated(s)
        | EventObject::CustomerSubscriptionUpdated(s)
        | EventObject::CustomerSubscriptionDeleted(s) => match SubscriptionId::parse(s.id.as_str()) {
            Ok(id) => EventSubject::Subscription { id, customer: id_of(&s.customer) },
            Err(_) => EventSubject::Other,
        },
        EventObject::InvoicePaid(i) | EventObject::InvoicePaymentFailed(i) => EventSubject::Invoice {
            subscription: i
                .parent
                .as_ref()
                .and_then(|p| p.subscription_details.as_ref())
                .and_then(|d| sub_of(&d.subscription))
                .or_else(|| i.subscription.as_ref().and_then(sub_of)),
            customer: i.customer.as_ref().and_then(id_of),
        },
        _ => EventSubject::Other,
    };
    Ok(StripeEvent { id: event.id.to_string(), kind: event.type_.as_str().to_string(), subject })
}

/// A `Stripe-Signature` header for `payload`, as Stripe computes it (tests, the emulator).
pub fn sign_payload(payload: &str, secret: &str, timestamp: i64) -> String {
    Webhook::generate_test_header(payload, secret, Some(timestamp))
}

const SERVICE: &str = "stripe";

/// Stripe Connect destination charges for platforms: the connected account that receives the
/// subscription's payments, and the platform's fee in percent. Off unless configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub destination: String,
    pub application_fee_percent: Option<f64>,
}

/// The Stripe adapter.
#[derive(Clone)]
pub struct StripePayments {
    client: Client,
    connect: Option<Connect>,
}

impl std::fmt::Debug for StripePayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripePayments").finish_non_exhaustive()
    }
}

impl StripePayments {
    /// Builds the client once per cold start. The secret only goes into the (sensitive)
    /// Authorization header.
    pub fn new(config: &StripeConfig) -> std::result::Result<Self, BackendError> {
        let mut builder = ClientBuilder::new(config.secret_key.expose())
            .app_info("paykey", Some(env!("CARGO_PKG_VERSION").to_string()), None)
            .timeout(Duration::from_secs(10));
        if let Some(base) = &config.api_base {
            builder = builder.url(base.clone());
        }
        let client = builder.build().map_err(|e| BackendError::new(SERVICE, "client", describe(&e)))?;
        Ok(Self { client, connect: None })
    }

    pub fn with_connect(mut self, connect: Option<Connect>) -> Self {
        self.connect = connect;
        self
    }
}

/// Code and message of a Stripe error; never the request.
fn describe(e: &StripeError) -> String {
    match e {
        StripeError::Stripe(err, status) => format!(
            "{status} {}: {}",
            err.code.as_ref().map(|c| c.to_string()).unwrap_or_else(|| err.type_.to_string()),
            err.message.as_deref().unwrap_or("no message")
        ),
        other => other.to_string(),
    }
}

fn subscription_state(sub: &stripe_shared::Subscription, op: &'static str) -> Result<SubscriptionState> {
    let id = SubscriptionId::parse(sub.id.as_str()).map_err(|e| BackendError::new(SERVICE, op, e.to_string()))?;
    let customer =
        CustomerId::parse(sub.customer.id().as_str()).map_err(|e| BackendError::new(SERVICE, op, e.to_string()))?;
    let period_end = sub
        .cancel_at
        .or_else(|| sub.items.data.iter().map(|i| i.current_period_end).max())
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0));
    Ok(SubscriptionState {
        id,
        customer,
        status: SubscriptionStatus::parse(sub.status.as_str()),
        cancel_at_period_end: sub.cancel_at_period_end || sub.cancel_at.is_some(),
        period_end,
        user_name: sub.metadata.get("user_name").cloned(),
    })
}

fn is_missing(e: &StripeError) -> bool {
    matches!(e, StripeError::Stripe(_, 404))
}

fn idempotent(key: &str, op: &'static str) -> Result<RequestStrategy> {
    IdempotencyKey::new(key).map(RequestStrategy::Idempotent).map_err(|e| BackendError::new(SERVICE, op, e.to_string()))
}

impl Payments for StripePayments {
    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<SubscriptionState>> {
        const OP: &str = "GET /v1/subscriptions/{id}";
        match RetrieveSubscription::new(id.as_str()).send(&self.client).await {
            Ok(s) => subscription_state(&s, OP).map(Some),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn list_subscriptions(&self, customer: &CustomerId) -> Result<Vec<SubscriptionState>> {
        const OP: &str = "GET /v1/subscriptions";
        let list = ListSubscription::new()
            .customer(customer.as_str())
            .status(ListSubscriptionStatus::All)
            .limit(100)
            .send(&self.client)
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        let mut subs: Vec<_> = list.data.iter().map(|s| (s.created, subscription_state(s, OP))).collect();
        subs.sort_by_key(|s| std::cmp::Reverse(s.0));
        subs.into_iter().map(|(_, s)| s).collect()
    }

    async fn find_price(&self, lookup_key: &LookupKey) -> Result<Option<PriceInfo>> {
        const OP: &str = "GET /v1/prices";
        let list = ListPrice::new()
            .lookup_keys(vec![lookup_key.to_string()])
            .active(true)
            .limit(1)
            .send(&self.client)
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(list.data.into_iter().next().map(|p| PriceInfo {
            id: p.id.to_string(),
            lookup_key: p.lookup_key.unwrap_or_else(|| lookup_key.to_string()),
            unit_amount: p.unit_amount,
            currency: p.currency.to_string(),
        }))
    }

    async fn create_checkout(&self, req: NewCheckout<'_>) -> Result<CreatedCheckout> {
        const OP: &str = "POST /v1/checkout/sessions";
        let metadata = HashMap::from([("user_name".to_string(), req.user.to_string())]);
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(req.price_id.to_string());
        item.quantity = Some(1);
        let mut sub = CreateCheckoutSessionSubscriptionData::new();
        sub.metadata = Some(metadata.clone());
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
            .line_items(vec![item])
            .success_url(req.success_url)
            .cancel_url(req.cancel_url)
            .client_reference_id(req.user.to_string())
            .metadata(metadata)
            .subscription_data(sub);
        if let Some(c) = req.customer {
            create = create.customer(c.to_string());
        }
        let session = create
            .customize()
            .request_strategy(idempotent(&req.idempotency_key, OP)?)
            .send(&self.client)
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        let id = SessionId::parse(session.id.as_str()).map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        let url = session.url.ok_or_else(|| BackendError::new(SERVICE, OP, "session without url"))?;
        Ok(CreatedCheckout { id, url })
    }

    async fn get_checkout(&self, id: &SessionId) -> Result<Option<CheckoutState>> {
        const OP: &str = "GET /v1/checkout/sessions/{id}";
        let session = match RetrieveCheckoutSession::new(id.as_str()).send(&self.client).await {
            Ok(s) => s,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(BackendError::new(SERVICE, OP, describe(&e))),
        };
        let paid = matches!(
            session.payment_status,
            CheckoutSessionPaymentStatus::Paid | CheckoutSessionPaymentStatus::NoPaymentRequired
        ) && session.status == Some(CheckoutSessionStatus::Complete);
        let customer = session
            .customer
            .as_ref()
            .map(|c| CustomerId::parse(c.id().as_str()))
            .transpose()
            .map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        let subscription = session
            .subscription
            .as_ref()
            .map(|s| SubscriptionId::parse(s.id().as_str()))
            .transpose()
            .map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        Ok(Some(CheckoutState {
            id: id.clone(),
            paid,
            client_reference_id: session.client_reference_id,
            customer,
            subscription,
        }))
    }

    async fn create_portal(&self, customer: &CustomerId, return_url: &str, idempotency_key: &str) -> Result<String> {
        const OP: &str = "POST /v1/billing_portal/sessions";
        let session = CreateBillingPortalSession::new()
            .customer(customer.to_string())
            .return_url(return_url)
            .customize()
            .request_strategy(idempotent(idempotency_key, OP)?)
            .send(&self.client)
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(session.url)
    }
}
