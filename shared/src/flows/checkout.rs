use serde::{Deserialize, Serialize};

use super::{chrono_duration, Ctx};
use crate::domain::{CheckoutRecord, CheckoutStatus, CustomerId, Error, LookupKey, OneTimeKey, Tier, User};
use crate::ports::{Accounts, Checkouts, NewCheckout, OpenCheckouts, Payments, UserDirectory};

/// Body of `POST /checkout-sessions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutRequest {
    pub lookup_key: String,
    /// The caller's `custom:stripe_customer_id` claim, if the ID token has one: a hint that
    /// lets the Stripe call run beside the user-directory read. Never taken from the body.
    #[serde(skip)]
    pub customer_hint: Option<CustomerId>,
}

impl CheckoutRequest {
    pub fn new(lookup_key: impl Into<String>) -> Self {
        Self { lookup_key: lookup_key.into(), customer_hint: None }
    }
}

/// Answer of `POST /checkout-sessions`: where to send the browser.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckoutStarted {
    pub url: String,
    /// `checkout` (a Stripe Checkout page) or `billing_portal` (the caller is on another paid
    /// tier: plans are switched in the portal, never by a second subscription).
    pub kind: &'static str,
}

/// Starts a Stripe Checkout Session for the signed-in `user` and records it with a fresh
/// one-time key. Nothing is written to paykey's stores unless every check passed.
///
/// Two sequential round trips with a warm price cache: the Checkout Session is created (with
/// the customer id the ID token names) beside the authoritative user-directory read; if that
/// read says the user is PRO, the session is left unused (Stripe expires it); if it names
/// another customer than the token did, the session is created again for that customer, so
/// one user never gets two Stripe customers.
///
/// One open checkout per user and price: the new session is recorded as the user's open one
/// and the one it replaces (another tab, a double click) is expired at Stripe, so it can no
/// longer be paid. Should both still be paid (a race), fulfilment cancels and refunds the
/// second subscription.
pub async fn start_checkout<U, P, S>(
    users: &U,
    payments: &P,
    sessions: &S,
    ctx: Ctx<'_>,
    user: &User,
    request: CheckoutRequest,
) -> Result<CheckoutStarted, Error>
where
    U: UserDirectory,
    P: Payments,
    S: Checkouts + Accounts + OpenCheckouts,
{
    let settings = ctx.settings;
    let lookup_key = LookupKey::parse(request.lookup_key.trim()).map_err(|e| Error::BadRequest(e.to_string()))?;
    let tier = settings
        .catalog
        .by_lookup_key(&lookup_key)
        .filter(|t| !t.is_free())
        .ok_or_else(|| Error::LookupKeyNotAllowed(lookup_key.to_string()))?;
    let price = payments.find_price(&lookup_key).await?.ok_or_else(|| Error::PriceNotFound(lookup_key.to_string()))?;

    let one_time_key = ctx.ids.one_time_key();
    let hint = request.customer_hint.as_ref();
    let (profile, created) = tokio::try_join!(
        users.get_user(&user.name),
        payments.create_checkout(new_checkout(&price.id, tier, user, hint, ctx, &one_time_key, "a"))
    )?;
    // The name's holder must be the caller (`sub`), not a deleted user's successor.
    let profile = profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    let current = profile.plan();
    if let Some(on) = settings.tier_of(&current).filter(|t| !t.is_free()) {
        // Already subscribed (the session created above is left unused; Stripe expires it).
        return match profile.customer_id.as_ref() {
            Some(customer) if on.name != tier.name => {
                // Another paid tier: switched in the billing portal (Stripe prorates), so the
                // user keeps one subscription.
                let minute = ctx.clock.now().timestamp() / 60;
                let url = payments
                    .create_portal(
                        customer,
                        &format!("{}/", settings.app_url),
                        &format!("paykey-portal-{customer}-{minute}"),
                    )
                    .await?;
                tracing::info!(user = %user, from = %on.name, to = %tier.name, "plan change: sent to the billing portal");
                Ok(CheckoutStarted { url, kind: "billing_portal" })
            }
            _ => Err(Error::AlreadySubscribed(current.to_string())),
        };
    }
    let created = if profile.customer_id.as_ref() != hint {
        // The token's claim was missing or stale: reuse the customer the directory knows.
        payments
            .create_checkout(new_checkout(&price.id, tier, user, profile.customer_id.as_ref(), ctx, &one_time_key, "b"))
            .await?
    } else {
        created
    };

    let now = ctx.clock.now();
    // Stripe expires an unpaid Checkout Session after 24 hours: so does the pointer. Both
    // writes are independent items: side by side.
    let open_until = now + chrono::Duration::hours(24);
    let record = CheckoutRecord {
        session_id: created.id.clone(),
        user_id: Some(user.id.clone()),
        user_name: user.name.clone(),
        one_time_key,
        paid: false,
        status: CheckoutStatus::Pending,
        lease: None,
        created_at: now,
        updated_at: now,
        expires_at: now + chrono_duration(settings.session_ttl),
    };
    let ((), previous) = tokio::try_join!(
        sessions.put_new(&record),
        sessions.replace_open_checkout(&user.id, &price.id, &created.id, open_until)
    )?;
    if let Some(previous) = previous.filter(|p| p != &created.id) {
        match payments.expire_checkout(&previous).await {
            Ok(expired) => {
                tracing::info!(user = %user, session_id = %previous, expired, "earlier open checkout expired")
            }
            // The new session is good; should the old one be paid too, fulfilment refunds it.
            Err(e) => {
                tracing::warn!(user = %user, session_id = %previous, error = %e, "could not expire the earlier checkout")
            }
        }
    }
    tracing::info!(user = %user, session_id = %created.id, price_id = %price.id, "checkout session started");
    Ok(CheckoutStarted { url: created.url, kind: "checkout" })
}

fn new_checkout<'a>(
    price_id: &'a str,
    tier: &Tier,
    user: &'a User,
    customer: Option<&'a CustomerId>,
    ctx: Ctx<'_>,
    one_time_key: &OneTimeKey,
    attempt: &str,
) -> NewCheckout<'a> {
    NewCheckout {
        price_id,
        user,
        customer,
        // Stripe replaces {CHECKOUT_SESSION_ID} itself.
        success_url: format!("{}/create-api-key/{{CHECKOUT_SESSION_ID}}/{one_time_key}", ctx.settings.api_url),
        cancel_url: ctx.settings.cancel_url(),
        // Deterministic from our own data: a retried call replays, a second attempt does not.
        // The one-time key is a fresh uuid per request, so the key is unique without the user
        // name (which could take it past Stripe's 255 bytes: 128 characters of up to 4 bytes).
        idempotency_key: format!("paykey-checkout-{one_time_key}-{attempt}"),
        // One trial per customer: a user who subscribed before (has a Stripe customer) gets none.
        trial_days: if customer.is_none() { tier.trial_days } else { 0 },
    }
}
