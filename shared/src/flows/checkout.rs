use serde::{Deserialize, Serialize};

use super::{chrono_duration, Ctx};
use super::{spend_budget, Spending};
use crate::domain::{CheckoutRecord, CheckoutStatus, CustomerId, Error, LookupKey, OneTimeKey, Tier, User};
use crate::ports::{Accounts, Budgets, Checkouts, NewCheckout, OpenCheckout, OpenCheckouts, Payments, UserDirectory};

/// Body of `POST /checkout-sessions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutRequest {
    pub lookup_key: String,
}

impl CheckoutRequest {
    pub fn new(lookup_key: impl Into<String>) -> Self {
        Self { lookup_key: lookup_key.into() }
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
/// Repeats cost no Stripe write: the user-directory read (the caller's plan and customer)
/// runs beside the read of the user's open checkout for the price; while that session is
/// recent ([`super::Settings::checkout_reuse`]) and unpaid by paykey's record, its URL is the
/// answer. Otherwise one request at a time (a short claim) creates the session, for the
/// customer the directory knows, so one user never gets two Stripe customers; concurrent ones
/// wait for its URL. A user already on the tier gets 409 without any Stripe call.
///
/// One open checkout per user and price: the new session is recorded as the user's open one
/// and the one it replaces (an old one, a paid one) is expired at Stripe, so it can no longer
/// be paid. Should both still be paid (a race), fulfilment cancels and refunds the second
/// subscription.
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
    S: Checkouts + Accounts + OpenCheckouts + Budgets,
{
    let settings = ctx.settings;
    let lookup_key = LookupKey::parse(request.lookup_key.trim()).map_err(|e| Error::BadRequest(e.to_string()))?;
    let tier = settings
        .catalog
        .by_lookup_key(&lookup_key)
        .filter(|t| !t.is_free())
        .ok_or_else(|| Error::LookupKeyNotAllowed(lookup_key.to_string()))?;
    // A metered tier's overage price is looked up beside its own (one wave; cached after the
    // first checkout of the container).
    let (price, overage) = tokio::try_join!(payments.find_price(&lookup_key), async {
        match tier.overage_lookup_key() {
            Some(k) => payments.find_price(k).await.map(|p| p.ok_or_else(|| k.clone())).map(Some),
            None => Ok(None),
        }
    })?;
    let price = price.ok_or_else(|| Error::PriceNotFound(lookup_key.to_string()))?;
    let overage = match overage {
        Some(Err(k)) => return Err(Error::PriceNotFound(k.to_string())),
        Some(Ok(p)) => Some(p),
        None => None,
    };
    // What a metered tier sells must be what the catalog (and `/plans`) says: a price whose
    // tiers disagree (another included amount, a flat fee) is not sold. Nothing written.
    if let Some(m) = &tier.metered {
        let sold = overage.as_ref().unwrap_or(&price);
        if !super::plans::metered_price_agrees(Some(sold), m.included) {
            tracing::error!(tier = %tier.name, price = %sold.id, included = m.included, "the metered price's tiers do not match the catalog: not sold");
            return Err(Error::PriceMismatch(sold.lookup_key.clone()));
        }
    }
    let priced = Priced { price: &price, overage: overage.as_ref() };

    let now = ctx.clock.now();
    // The caller's budget is spent beside the two reads; refused, nothing else happens.
    let ((), profile, open, account) = tokio::try_join!(
        spend_budget(sessions, ctx, user, Spending::Checkout),
        async { Ok(users.get_user(&user.name).await?) },
        async { Ok(sessions.open_checkout(&user.id, &price.id).await?) },
        async { Ok(sessions.get_account(&user.id).await?) },
    )?;
    // The name's holder must be the caller (`sub`), not a deleted user's successor.
    let profile = profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    // A suspended user is sold nothing (what they paid for would not be served).
    if account.as_ref().is_some_and(|a| a.suspension.is_some()) {
        return Err(Error::Suspended);
    }
    // An operator's comp is not a subscription: a comped user whom no subscription grants a
    // paid tier may buy one (its tier applies while it grants; the comp after, until it ends).
    let comped_only = account.as_ref().is_some_and(|a| {
        let paying = a.subscription_status.as_deref().map(crate::ports::SubscriptionStatus::parse).is_some_and(|st| {
            super::desired_plan(&st, a.past_due_since, now, settings.past_due_grace) == Some(super::Access::Paid)
        });
        a.comp.as_ref().is_some_and(|c| c.active(now)) && !paying
    });
    let current = if comped_only { settings.free_plan() } else { profile.plan() };
    if let Some(on) = settings.tier_of(&current).filter(|t| !t.is_free()) {
        // Already subscribed.
        return match profile.customer_id.as_ref() {
            Some(customer) if on.name != tier.name => {
                // Another paid tier: switched in the billing portal (Stripe prorates), so the
                // user keeps one subscription.
                let url = super::portal::portal_session(payments, ctx, customer).await?;
                tracing::info!(user = %user, from = %on.name, to = %tier.name, "plan change: sent to the billing portal");
                Ok(CheckoutStarted { url, kind: "billing_portal" })
            }
            _ => Err(Error::AlreadySubscribed(current.to_string())),
        };
    }
    let seen = open.as_ref().map(|o| o.session_id.clone());
    if let Some(open) = open.as_ref() {
        match reuse(sessions, open, ctx).await? {
            Reuse::Answer => {
                tracing::info!(user = %user, session_id = %open.session_id, "open checkout handed out again");
                return Ok(CheckoutStarted { url: open.url.clone(), kind: "checkout" });
            }
            // Its payment is being fulfilled: a new payable session could charge twice.
            Reuse::InProgress => return Err(Error::FulfilmentInProgress),
            Reuse::Replace => {}
        }
    }
    // One request at a time creates the user's next session for this price, and only while
    // the recorded one is still the one read above.
    let claim = ctx.ids.token();
    let until = now + chrono_duration(settings.checkout_claim);
    if !sessions.claim_open_checkout(&user.id, &price.id, seen.as_ref(), &claim, now, until).await? {
        return wait_for_checkout(sessions, ctx, user, &price.id, seen).await;
    }
    let result = create_and_record(payments, sessions, ctx, user, tier, priced, profile.customer_id.as_ref()).await;
    if result.is_err() {
        // Best effort: the next request need not wait for the claim to run out.
        if let Err(e) = sessions.release_open_checkout(&user.id, &price.id, &claim).await {
            tracing::warn!(user = %user, error = %e, "could not give the checkout claim back");
        }
    }
    result
}

/// The prices a checkout sells: the tier's, and its metered overage price if it has one.
#[derive(Clone, Copy)]
struct Priced<'a> {
    price: &'a crate::ports::PriceInfo,
    overage: Option<&'a crate::ports::PriceInfo>,
}

/// Creates the Checkout Session at Stripe, records it and the pointer, and expires the one it
/// replaces.
async fn create_and_record<P, S>(
    payments: &P,
    sessions: &S,
    ctx: Ctx<'_>,
    user: &User,
    tier: &Tier,
    priced: Priced<'_>,
    customer: Option<&CustomerId>,
) -> Result<CheckoutStarted, Error>
where
    P: Payments,
    S: Checkouts + OpenCheckouts,
{
    let settings = ctx.settings;
    let now = ctx.clock.now();
    let one_time_key = ctx.ids.one_time_key();
    let price_id = priced.price.id.as_str();
    let created = payments.create_checkout(new_checkout(priced, tier, user, customer, ctx, &one_time_key)).await?;

    // Stripe expires an unpaid Checkout Session after 24 hours: so does the pointer. Both
    // writes are independent items: side by side.
    let open_until = now + chrono::Duration::hours(24);
    let pointer =
        OpenCheckout { session_id: created.id.clone(), url: created.url.clone(), created_at: now, open_until };
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
    let ((), previous) =
        tokio::try_join!(sessions.put_new(&record), sessions.replace_open_checkout(&user.id, price_id, &pointer))?;
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
    tracing::info!(user = %user, session_id = %created.id, price_id = %price_id, "checkout session started");
    Ok(CheckoutStarted { url: created.url, kind: "checkout" })
}

/// What a repeated request does with the user's recorded checkout for the price.
enum Reuse {
    /// Hand its URL out again.
    Answer,
    /// Its payment is being fulfilled (paykey's record is ISSUING).
    InProgress,
    /// Create a new one and expire it: older than the reuse window (Stripe may have expired
    /// it by then), past its 24 hours, fulfilled, or unknown.
    Replace,
}

async fn reuse<S: Checkouts>(sessions: &S, open: &OpenCheckout, ctx: Ctx<'_>) -> Result<Reuse, Error> {
    let now = ctx.clock.now();
    Ok(match sessions.get(&open.session_id).await? {
        Some(r) if r.status == CheckoutStatus::Issuing => Reuse::InProgress,
        Some(r)
            if r.status == CheckoutStatus::Pending
                && !r.paid
                && now - open.created_at < chrono_duration(ctx.settings.checkout_reuse)
                && open.open_until > now =>
        {
            Reuse::Answer
        }
        _ => Reuse::Replace,
    })
}

/// Another request holds the claim and is creating the session: its URL is the answer once
/// recorded (a session other than `previous`).
async fn wait_for_checkout<S: OpenCheckouts>(
    sessions: &S,
    ctx: Ctx<'_>,
    user: &User,
    price_id: &str,
    previous: Option<crate::domain::SessionId>,
) -> Result<CheckoutStarted, Error> {
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    while started.elapsed() < ctx.settings.wait_for_peer {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
        if let Some(open) = sessions.open_checkout(&user.id, price_id).await? {
            if Some(&open.session_id) != previous.as_ref() {
                return Ok(CheckoutStarted { url: open.url, kind: "checkout" });
            }
        }
    }
    Err(Error::FulfilmentInProgress)
}

fn new_checkout<'a>(
    priced: Priced<'a>,
    tier: &Tier,
    user: &'a User,
    customer: Option<&'a CustomerId>,
    ctx: Ctx<'_>,
    one_time_key: &OneTimeKey,
) -> NewCheckout<'a> {
    NewCheckout {
        price_id: &priced.price.id,
        price_metered: priced.price.metered,
        overage_price_id: priced.overage.map(|p| p.id.as_str()),
        user,
        customer,
        // Stripe replaces {CHECKOUT_SESSION_ID} itself.
        success_url: format!("{}/create-api-key/{{CHECKOUT_SESSION_ID}}/{one_time_key}", ctx.settings.api_url),
        cancel_url: ctx.settings.cancel_url(),
        // Deterministic from our own data: a retried call replays, another request does not.
        // The one-time key is a fresh uuid per request, so the key is unique without the user
        // name (which could take it past Stripe's 255 bytes: 128 characters of up to 4 bytes).
        idempotency_key: format!("paykey-checkout-{one_time_key}"),
        // One trial per customer: a user who subscribed before (has a Stripe customer) gets none.
        trial_days: if customer.is_none() { tier.trial_days } else { 0 },
    }
}
