use serde::{Deserialize, Serialize};

use super::{chrono_duration, Ctx};
use crate::domain::{CheckoutRecord, CheckoutStatus, Error, LookupKey, Plan, UserName};
use crate::ports::{NewCheckout, Payments, SessionStore, UserDirectory};

/// Body of `POST /checkout-sessions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutRequest {
    pub lookup_key: String,
}

/// Answer of `POST /checkout-sessions`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckoutStarted {
    pub url: String,
}

/// Starts a Stripe Checkout Session for the signed-in `user` and records it with a fresh
/// one-time key. Nothing is written unless every check passed and Stripe created the session.
pub async fn start_checkout<U, P, S>(
    users: &U,
    payments: &P,
    sessions: &S,
    ctx: Ctx<'_>,
    user: &UserName,
    request: CheckoutRequest,
) -> Result<CheckoutStarted, Error>
where
    U: UserDirectory,
    P: Payments,
    S: SessionStore,
{
    let settings = ctx.settings;
    let lookup_key = LookupKey::parse(request.lookup_key.trim()).map_err(|e| Error::BadRequest(e.to_string()))?;
    if !settings.allowed_lookup_keys.contains(&lookup_key) {
        return Err(Error::LookupKeyNotAllowed(lookup_key.to_string()));
    }

    // Independent reads, one round trip.
    let (profile, price) = tokio::try_join!(users.get_user(user), payments.find_price(&lookup_key))?;
    let profile = profile.ok_or(Error::UserNotFound)?;
    if profile.plan() == Plan::Pro {
        return Err(Error::AlreadyPro);
    }
    let price = price.ok_or_else(|| Error::PriceNotFound(lookup_key.to_string()))?;

    let one_time_key = ctx.ids.one_time_key();
    let created = payments
        .create_checkout(NewCheckout {
            price_id: &price.id,
            user,
            // Reuse the customer, so one user never has two Stripe customers.
            customer: profile.customer_id.as_ref(),
            // Stripe replaces {CHECKOUT_SESSION_ID} itself.
            success_url: format!("{}/create-api-key/{{CHECKOUT_SESSION_ID}}/{one_time_key}", settings.api_url),
            cancel_url: settings.cancel_url(),
            idempotency_key: format!("paykey-checkout-{user}-{one_time_key}"),
        })
        .await?;

    let now = ctx.clock.now();
    sessions
        .put_new(&CheckoutRecord {
            session_id: created.id.clone(),
            user_name: user.clone(),
            one_time_key,
            paid: false,
            status: CheckoutStatus::Pending,
            lease: None,
            created_at: now,
            updated_at: now,
            expires_at: now + chrono_duration(settings.session_ttl),
        })
        .await?;
    tracing::info!(user = %user, session_id = %created.id, price_id = %price.id, "checkout session started");
    Ok(CheckoutStarted { url: created.url })
}
