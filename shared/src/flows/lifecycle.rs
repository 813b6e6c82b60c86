//! The subscription lifecycle: Stripe events keep plan and key in step with Stripe.
//!
//! Events arrive out of order and more than once, so every subscription event is acted on
//! through the subscription's *current* state fetched from Stripe, never the payload, and
//! each event id is processed once (remembered with a TTL). A failure to act is an error, so
//! the webhook answers 5xx and Stripe retries.

use chrono::{DateTime, Utc};

use super::{account_keys, chrono_duration, complete_checkout, Completion, Ctx, Rejection};
use crate::domain::{AccountRecord, Error, Plan, SubscriptionId, User, UserId, UserName, UserProfile};
use crate::ports::metering::{UsageCursor, UsageMeter};
use crate::ports::{
    AccountListing, Accounts, Checkouts, EventSubject, KeyRegistry, Payments, ProcessedEvents, StripeEvent,
    SubscriptionState, SubscriptionStatus, UserDirectory,
};

/// What became of one webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Acted on; the words say what happened.
    Processed(String),
    /// Seen before.
    Duplicate,
    /// Nothing to do (recorded, answered 200 so Stripe does not disable the endpoint).
    Ignored(String),
}

/// What a subscription sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The user is on the paid tier `plan` with one enabled key in its usage plan.
    Paid { user: User, plan: Plan },
    /// The user was downgraded (or stays on the free plan): the key moved to the free tier's
    /// usage plan, or (no free tier with a usage plan) disabled and detached.
    Free { user: User, plan: Plan },
    /// The status asks for no change (e.g. `incomplete`: first payment pending).
    Unchanged { user: User },
    /// No paykey user has this subscription's customer.
    UnknownCustomer,
    /// Stripe does not know the subscription.
    UnknownSubscription,
    /// Not paykey's: no item's price is one the catalog sells, and it is not the subscription
    /// paykey recorded for its customer. Left alone: nothing read beyond it, nothing written.
    NotPaykeys,
    /// The subscription was a second one for a user who has one already: cancelled, its
    /// charge refunded (`refunded`, minor units, by this call); the user stays on the first.
    DuplicateCancelled { user: User, cancelled: SubscriptionId, refunded: i64 },
}

/// What a subscription's status grants: the tier its price buys, or the free plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The paid tier of the subscription's price (`Catalog::tier_of_items`).
    Paid,
    Free,
}

/// What a subscription status grants, or `None` for "leave it as it is".
///
/// | status | grants |
/// |---|---|
/// | `active`, `trialing` | its tier (also with `cancel_at_period_end`: until the period ends) |
/// | `past_due` | its tier while within the grace period since first seen past due, then free |
/// | `canceled`, `unpaid`, `incomplete_expired`, `paused` (a trial ended without a payment method) | free |
/// | `incomplete`, unknown | unchanged |
pub fn desired_plan(
    status: &SubscriptionStatus,
    past_due_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    grace: std::time::Duration,
) -> Option<Access> {
    match status {
        SubscriptionStatus::Active | SubscriptionStatus::Trialing => Some(Access::Paid),
        SubscriptionStatus::PastDue => {
            let since = past_due_since.unwrap_or(now);
            Some(if now - since <= chrono_duration(grace) { Access::Paid } else { Access::Free })
        }
        SubscriptionStatus::Canceled
        | SubscriptionStatus::Unpaid
        | SubscriptionStatus::IncompleteExpired
        | SubscriptionStatus::Paused => Some(Access::Free),
        SubscriptionStatus::Incomplete | SubscriptionStatus::Other(_) => None,
    }
}

const CHECKOUT_EVENTS: [&str; 2] = ["checkout.session.completed", "checkout.session.async_payment_succeeded"];
const SUBSCRIPTION_EVENTS: [&str; 5] = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
];

/// A period's draft invoice: the closing period's metered usage is sent before Stripe
/// finalizes it.
const METERING_EVENTS: [&str; 1] = ["invoice.created"];

/// Every event type paykey acts on.
pub fn handled_event_types() -> Vec<&'static str> {
    CHECKOUT_EVENTS.iter().chain(SUBSCRIPTION_EVENTS.iter()).chain(METERING_EVENTS.iter()).copied().collect()
}

/// Acts on one verified Stripe event, once per event id.
pub async fn handle_stripe_event<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    event: &StripeEvent,
) -> Result<EventOutcome, Error>
where
    S: Checkouts + Accounts + ProcessedEvents + UsageCursor,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments + UsageMeter,
{
    if store.event_seen(&event.id).await? {
        tracing::info!(event_id = %event.id, event_type = %event.kind, "duplicate event");
        return Ok(EventOutcome::Duplicate);
    }
    let kind = event.kind.as_str();
    let outcome = if CHECKOUT_EVENTS.contains(&kind) {
        match &event.subject {
            EventSubject::Checkout(session_id) => {
                let completed = match complete_checkout(store, keys, users, payments, ctx, session_id, None).await {
                    // The user deleted themselves (their name may be someone else's now): a
                    // retry cannot change that, so it is answered 200 (a 4xx would end with
                    // Stripe disabling the endpoint) and logged.
                    Err(Error::UserGone) => {
                        tracing::warn!(event_id = %event.id, session_id = %session_id, "checkout of a deleted user; nothing written");
                        Completion::Rejected(Rejection::UserMismatch)
                    }
                    other => other?,
                };
                match completed {
                    Completion::Issued { api_key_id } => EventOutcome::Processed(format!("issued key {api_key_id}")),
                    Completion::AlreadyFulfilled => EventOutcome::Processed("already fulfilled".into()),
                    Completion::Rejected(Rejection::UnknownSession) => {
                        EventOutcome::Ignored("checkout session not started by paykey".into())
                    }
                    Completion::Rejected(Rejection::Unpaid) => {
                        EventOutcome::Ignored("checkout session not paid yet".into())
                    }
                    Completion::Rejected(why) => EventOutcome::Ignored(format!("checkout session refused: {why:?}")),
                    Completion::Duplicate { refunded } => {
                        EventOutcome::Processed(format!("duplicate subscription cancelled, {refunded} refunded"))
                    }
                    Completion::NotGranted { status } => {
                        EventOutcome::Processed(format!("subscription is {status}: nothing granted"))
                    }
                    Completion::Pending => EventOutcome::Processed("subscription not settled yet".into()),
                }
            }
            _ => EventOutcome::Ignored("checkout event without a session".into()),
        }
    } else if SUBSCRIPTION_EVENTS.contains(&kind) {
        let sub = match &event.subject {
            EventSubject::Subscription { id, .. } => Some(id.clone()),
            EventSubject::Invoice { subscription, .. } => subscription.clone(),
            _ => None,
        };
        match sub {
            None => EventOutcome::Ignored("not about a subscription".into()),
            Some(id) => match sync_subscription(store, keys, users, payments, ctx, &id).await? {
                SyncOutcome::Paid { user, plan } => EventOutcome::Processed(format!("{} is {plan}", user.name)),
                SyncOutcome::Free { user, plan } => EventOutcome::Processed(format!("{} is {plan}", user.name)),
                SyncOutcome::Unchanged { user } => EventOutcome::Processed(format!("{} unchanged", user.name)),
                SyncOutcome::UnknownCustomer => {
                    tracing::warn!(event_id = %event.id, subscription = %id, "event for a customer paykey does not know");
                    EventOutcome::Ignored("unknown customer".into())
                }
                SyncOutcome::UnknownSubscription => EventOutcome::Ignored("unknown subscription".into()),
                SyncOutcome::NotPaykeys => {
                    tracing::info!(event_id = %event.id, subscription = %id, "a subscription to a price paykey does not sell; left alone");
                    EventOutcome::Ignored("not a paykey subscription".into())
                }
                SyncOutcome::DuplicateCancelled { user, cancelled, refunded } => EventOutcome::Processed(format!(
                    "{} keeps the current subscription; duplicate {cancelled} cancelled, {refunded} refunded",
                    user.name
                )),
            },
        }
    } else if METERING_EVENTS.contains(&kind) {
        match &event.subject {
            EventSubject::ClosingInvoice { subscription, customer, period_start, period_end } => {
                let sent = super::metering::report_closing_period(
                    store,
                    keys,
                    payments,
                    store,
                    ctx,
                    customer,
                    subscription,
                    *period_start,
                    *period_end,
                )
                .await?;
                EventOutcome::Processed(format!("closing period: days of usage sent: {}", sent.len()))
            }
            _ => EventOutcome::Ignored("not a draft invoice of a new period".into()),
        }
    } else {
        tracing::info!(event_id = %event.id, event_type = %kind, "event type not handled; ignored");
        EventOutcome::Ignored(format!("event type {kind} not handled"))
    };
    let expires = ctx.clock.now() + chrono_duration(ctx.settings.event_ttl);
    store.mark_event(&event.id, kind, expires).await?;
    tracing::info!(event_id = %event.id, event_type = %kind, outcome = ?outcome, "event processed");
    Ok(outcome)
}

/// Brings the user's plan, key and account record in line with the subscription's current
/// state in Stripe. Safe to run any number of times, in any order, concurrently.
pub async fn sync_subscription<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    subscription: &SubscriptionId,
) -> Result<SyncOutcome, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    sync_subscription_of(store, keys, users, payments, ctx, subscription, None).await
}

/// [`sync_subscription`], told whose subscription it is when the caller knows (the resync,
/// which found the user and their customer in a record): then the user is not looked up
/// again, unless the subscription's own `metadata.user_id` names someone else.
async fn sync_subscription_of<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    subscription: &SubscriptionId,
    known: Option<&User>,
) -> Result<SyncOutcome, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    let read_started = ctx.clock.now();
    let Some(state) = payments.get_subscription(subscription).await? else {
        return Ok(SyncOutcome::UnknownSubscription);
    };
    if !is_paykeys(store, ctx, &state).await? {
        return Ok(SyncOutcome::NotPaykeys);
    }
    let user = match known {
        Some(u) if state.user_id.as_deref().is_none_or(|id| id == u.id.as_str()) => Some(u.clone()),
        _ => subscriber(store, users, &state).await?,
    };
    let Some(user) = user else {
        return Ok(SyncOutcome::UnknownCustomer);
    };
    let token = ctx.ids.token();
    let key_name = ctx.settings.key_name(&user);
    let first = account_keys::try_lock_with_key_lookup(store, keys, ctx, &user, &token, &key_name).await?;
    let waited = matches!(first.0, crate::ports::AccountLock::Busy);
    let mut locked = account_keys::finish_locking(store, keys, ctx, &user, &token, &key_name, first).await?;
    // The first read is the subscription's current state when nothing can have changed since:
    // the lock was free at once, and the user's record (it exists: not a new or erased user)
    // was last written more than `UNCHANGED_MARGIN` before that read began (every writer
    // holds the lock and stamps the record after its own Stripe read, as in fulfilment).
    let unchanged = !waited
        && locked
            .account
            .as_ref()
            .is_some_and(|a| a.updated_at + super::chrono_duration(super::UNCHANGED_MARGIN) < read_started);
    let result = async {
        // Otherwise read the subscription again now that we hold the lock: a state read before
        // it may already be older than what another event applied meanwhile.
        // And, always, whether the user still holds their name, now: it was checked before the
        // lock, and a deletion (the name then free for someone else; a user may delete
        // themselves outside paykey, their record stays) may have come in between; the
        // directory write below goes by name. Side by side with the other reads.
        let subscription_now = async {
            match unchanged {
                true => Ok(Some(state.clone())),
                false => payments.get_subscription(subscription).await.map_err(Error::from),
            }
        };
        let (state, profile, ()) = tokio::try_join!(
            subscription_now,
            async { users.get_user(&user.name).await.map_err(Error::from) },
            locked.adopt_legacy(store, &user),
        )?;
        let from_legacy = locked.from_legacy;
        if !profile.is_some_and(|p| p.is(&user)) {
            tracing::warn!(user = %user, "the subscription's user no longer holds the name; nothing written");
            account_keys::release(store, &user, &token).await;
            return Ok(SyncOutcome::UnknownCustomer);
        }
        let Some(state) = state else {
            account_keys::release(store, &user, &token).await;
            return Ok(SyncOutcome::UnknownSubscription);
        };
        // Its items may have changed since the first read (a plan switch to another product).
        let recorded = locked.account.as_ref().and_then(|a| a.subscription_id.as_ref()) == Some(&state.id);
        if !recorded && ctx.settings.catalog.tier_of_items(&state.item_lookup_keys).is_none() {
            account_keys::release(store, &user, &token).await;
            return Ok(SyncOutcome::NotPaykeys);
        }
        let (next, outcome) =
            converge(keys, users, payments, ctx, &user, &key_name, &locked.named, locked.account, state).await?;
        match store.put_account(&next, &token).await? {
            crate::ports::Commit::Done => {
                account_keys::retire_legacy(store, &user, from_legacy).await;
                Ok(outcome)
            }
            crate::ports::Commit::LeaseLost => Err(Error::FulfilmentInProgress),
        }
    }
    .await;
    if result.is_err() {
        account_keys::release(store, &user, &token).await;
    }
    result
}

/// Whether a subscription is paykey's: one of its items is a price the catalog sells (a tier's
/// lookup key or a retired one), or it is the subscription recorded on its customer's account
/// (paykey took it on when it was sold; a later catalog change must not leave it granting
/// forever). A Stripe account usually sells more than paykey's tiers: everything else is left
/// alone, and costs one record read at most.
async fn is_paykeys<S: Accounts>(store: &S, ctx: Ctx<'_>, state: &SubscriptionState) -> Result<bool, Error> {
    if ctx.settings.catalog.tier_of_items(&state.item_lookup_keys).is_some() {
        return Ok(true);
    }
    let account = store.find_account_by_customer(&state.customer).await?;
    Ok(account.is_some_and(|a| a.subscription_id.as_ref() == Some(&state.id)))
}

/// The paykey user a subscription belongs to, and only while they still hold their name in
/// the user directory (a deleted user's name may belong to someone else now: then `None`, and
/// nothing is written for them).
///
/// Found from `metadata.user_id` (set at checkout), else from an older subscription's
/// `metadata.user_name`, else through the stored customer id (a record keyed by `sub`, or a
/// name-keyed record of an earlier version), else through the user directory's
/// `custom:stripe_customer_id` (records the Python version wrote without a customer id).
async fn subscriber<S, U>(store: &S, users: &U, state: &SubscriptionState) -> Result<Option<User>, Error>
where
    S: Accounts,
    U: UserDirectory,
{
    let id = state.user_id.as_deref().and_then(|u| UserId::parse(u).ok());
    let name = state.user_name.as_deref().and_then(|u| UserName::parse(u).ok());
    let (id, name) = match (id, name) {
        (Some(id), Some(name)) => (Some(id), name),
        (None, Some(name)) => (None, name),
        (_, None) => match store.find_account_by_customer(&state.customer).await? {
            Some(a) => (Some(a.user_id), a.user_name),
            None => match store.find_legacy_name_by_customer(&state.customer).await? {
                Some(name) => (None, name),
                // A record of an earlier version without a customer id: the user directory's
                // `custom:stripe_customer_id` names the user (a listing of the pool, once: the
                // record written below carries the customer id).
                None => match users.find_by_customer(&state.customer).await? {
                    Some(name) => (None, name),
                    None => return Ok(None),
                },
            },
        },
    };
    let Some(profile) = users.get_user(&name).await? else {
        return Ok(None);
    };
    match (id, profile.sub) {
        (Some(id), Some(sub)) if id == sub => Ok(Some(User { id, name })),
        (Some(id), _) => {
            tracing::warn!(user_id = %id, name = %name, "the subscription's user no longer holds the name; nothing written");
            Ok(None)
        }
        // Named only (an older subscription or record): the name's current holder, bound to
        // their sub from now on.
        (None, Some(sub)) => Ok(Some(User { id: sub, name })),
        (None, None) => Ok(None),
    }
}

/// The one policy for a user's plan and key, used by the webhooks, the resync and fulfilment
/// alike; the caller holds the user's account lock and writes the record it returns.
///
/// `state` is the current state (read under the lock) of the subscription the caller is about.
/// When the account already records another subscription that still grants PRO, that one stays
/// in charge: if `state`'s subscription would grant PRO too, it is a second subscription for the
/// same user (two tabs, a double click) and is cancelled at once with its charge refunded.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn converge<K, U, P>(
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    user: &User,
    key_name: &str,
    named: &[crate::domain::IssuedKey],
    account: Option<AccountRecord>,
    state: SubscriptionState,
) -> Result<(AccountRecord, SyncOutcome), Error>
where
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    let now = ctx.clock.now();
    let grace = ctx.settings.past_due_grace;
    let mut next = account.unwrap_or_else(|| AccountRecord::new(user, now));
    next.user_name = user.name.clone();
    let mut state = state;
    let mut duplicate = None;
    if let Some(recorded) = next.subscription_id.clone().filter(|r| r != &state.id) {
        let recorded_state = payments.get_subscription(&recorded).await?;
        let still_granting =
            recorded_state.filter(|r| desired_plan(&r.status, next.past_due_since, now, grace) == Some(Access::Paid));
        match still_granting {
            Some(current) => {
                let sells_all = ctx.settings.catalog.sells_every_item(&state.item_lookup_keys);
                if desired_plan(&state.status, None, now, grace) == Some(Access::Paid) && !sells_all {
                    // It also pays for something paykey does not sell: never cancelled by paykey.
                    tracing::warn!(user = %user, subscription = %state.id, kept = %current.id, "a second subscription that also pays for another product: left alone");
                } else if desired_plan(&state.status, None, now, grace) == Some(Access::Paid) {
                    tracing::warn!(user = %user, duplicate = %state.id, kept = %current.id, "a second subscription for one user: cancelling it and refunding its charge");
                    let done = payments.cancel_duplicate(&state.id).await?;
                    duplicate = Some((state.id.clone(), done.refunded));
                } else {
                    tracing::info!(user = %user, subscription = %state.id, current = %current.id, "event for another subscription; the current one stays");
                }
                state = current;
            }
            // The recorded subscription ended: this one takes over (a re-subscription).
            None => next.past_due_since = None,
        }
    }
    next.past_due_since = match state.status {
        SubscriptionStatus::PastDue => next.past_due_since.or(Some(now)),
        _ => None,
    };
    let desired = desired_plan(&state.status, next.past_due_since, now, grace);
    next.subscription_id = Some(state.id.clone());
    next.subscription_status = Some(state.status.as_str().to_string());
    next.customer_id = Some(state.customer.clone());
    next.cancel_at_period_end = state.cancel_at_period_end;
    next.period_end = state.period_end;
    next.updated_at = now;

    next.trial_end = state.trial_end;
    let catalog = &ctx.settings.catalog;

    // The tier its price buys; the recorded subscription switched to a price the catalog no
    // longer sells keeps the paid tier it had (never a tier it did not buy).
    let sub_tier = match desired {
        Some(Access::Paid) => catalog.tier_of_items(&state.item_lookup_keys).or_else(|| bought_before(ctx, &next)),
        _ => None,
    };
    if desired == Some(Access::Paid) && sub_tier.is_none() {
        tracing::warn!(user = %user, subscription = %state.id, "the recorded subscription pays for no tier of the catalog; plan unchanged");
        return Ok((next, SyncOutcome::Unchanged { user: user.clone() }));
    }
    next.subscription_plan = sub_tier.map(|t| Plan::of(&t.name));
    let target = policy(ctx, &mut next, desired, sub_tier, now);
    let outcome =
        apply_target(keys, users, ctx, user, key_name, named, &mut next, target, Some(&state.customer)).await?;
    let outcome = match duplicate {
        Some((cancelled, refunded)) => SyncOutcome::DuplicateCancelled { user: user.clone(), cancelled, refunded },
        None => outcome,
    };
    Ok((next, outcome))
}

/// What a user's plan and key should be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'t> {
    /// On a paid tier (its usage plan).
    Paid(&'t crate::domain::Tier),
    /// On the free plan.
    Free,
    /// Left as it is (a subscription whose status asks for no change, no comp).
    Unchanged,
}

/// The one policy over what a subscription grants (`access`, and the tier it buys), an
/// operator's complimentary tier and nothing: what the subscription buys while it grants a paid
/// tier; otherwise the comp while it lasts; otherwise the free plan (or no change, for a status
/// that asks for none). An ended comp is cleared from the record here.
pub(crate) fn policy<'t>(
    ctx: Ctx<'t>,
    next: &mut AccountRecord,
    access: Option<Access>,
    sub_tier: Option<&'t crate::domain::Tier>,
    now: DateTime<Utc>,
) -> Target<'t> {
    let mut ended = false;
    if next.comp.as_ref().is_some_and(|c| !c.active(now)) {
        tracing::info!(user_id = %next.user_id, "the complimentary tier ended");
        next.comp = None;
        ended = true;
    }
    if let (Some(Access::Paid), Some(tier)) = (access, sub_tier) {
        return Target::Paid(tier);
    }
    let comp = next.comp.as_ref().and_then(|c| ctx.settings.tier_of(&c.plan)).filter(|t| !t.is_free());
    match (comp, access) {
        (Some(tier), _) => Target::Paid(tier),
        (None, Some(Access::Free)) => Target::Free,
        // A status that asks for no change (`incomplete`: a first payment pending) never kept
        // the comp's tier: the comp ending leaves the free plan.
        (None, _) if ended => Target::Free,
        (None, _) => Target::Unchanged,
    }
}

/// The paid tier the record says its subscription buys, for a subscription whose price the
/// catalog no longer sells: the recorded one, else (records before it was kept) the record's
/// plan unless that is a comp's.
fn bought_before<'t>(ctx: Ctx<'t>, next: &AccountRecord) -> Option<&'t crate::domain::Tier> {
    let plan = match &next.subscription_plan {
        Some(p) => p,
        None if next.comp.as_ref().is_some_and(|c| c.plan == next.plan) => return None,
        None => &next.plan,
    };
    ctx.settings.tier_of(plan).filter(|t| !t.is_free())
}

/// [`converge`] from the record alone, without reading Stripe: its recorded subscription's
/// status and tier (kept in step by the webhooks), its comp and its suspension. For an
/// operator's change and for a comp that ends (the sweep); the caller holds the lock and writes
/// the record.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn converge_recorded<K, U>(
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    user: &User,
    key_name: &str,
    named: &[crate::domain::IssuedKey],
    next: &mut AccountRecord,
) -> Result<SyncOutcome, Error>
where
    K: KeyRegistry,
    U: UserDirectory,
{
    let now = ctx.clock.now();
    // `incomplete` (the first payment pending) grants nothing yet: from the record alone, the
    // free plan. A status paykey does not know stays "no change".
    let access = match next.subscription_status.as_deref().map(SubscriptionStatus::parse) {
        Some(SubscriptionStatus::Incomplete) | None => Some(Access::Free),
        Some(status) => desired_plan(&status, next.past_due_since, now, ctx.settings.past_due_grace),
    };
    let sub_tier = match access {
        Some(Access::Paid) => bought_before(ctx, next),
        _ => None,
    };
    let target = policy(ctx, next, access, sub_tier, now);
    let customer = next.customer_id.clone();
    next.updated_at = now;
    apply_target(keys, users, ctx, user, key_name, named, next, target, customer.as_ref()).await
}

/// Makes the user's key and directory plan what `target` says, and the record's plan with them
/// (the caller holds the account lock and writes `next`). A suspended user's keys are all held
/// disabled: none is created or enabled, and the recorded one is still moved to its tier's usage
/// plan, so that lifting the suspension only has to enable it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn apply_target<K, U>(
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    user: &User,
    key_name: &str,
    named: &[crate::domain::IssuedKey],
    next: &mut AccountRecord,
    target: Target<'_>,
    customer: Option<&crate::domain::CustomerId>,
) -> Result<SyncOutcome, Error>
where
    K: KeyRegistry,
    U: UserDirectory,
{
    let now = ctx.clock.now();
    let catalog = &ctx.settings.catalog;
    let held = next.suspension.is_some();
    let (plan, usage_plan, paid) = match target {
        Target::Unchanged if held => {
            // No plan change, but a suspended user's keys are held whatever the status.
            hold_keys(keys, ctx, named, next, None).await?;
            return Ok(SyncOutcome::Unchanged { user: user.clone() });
        }
        Target::Unchanged => return Ok(SyncOutcome::Unchanged { user: user.clone() }),
        Target::Paid(tier) => {
            let plan = Plan::of(&tier.name);
            let usage_plan = tier.usage_plan_id.as_deref().ok_or(Error::TierWithoutUsagePlan(plan.to_string()))?;
            (plan, Some(usage_plan), true)
        }
        Target::Free => {
            let has_key = next.api_key_id.is_some() || !named.is_empty();
            // One key for life: it stays, on the free tier's usage plan (without one, FREE users
            // have no working key).
            let usage_plan = catalog.free().and_then(|t| t.usage_plan_id.as_deref()).filter(|_| has_key);
            (ctx.settings.free_plan(), usage_plan, false)
        }
    };
    // The customer id is kept on a downgrade: re-subscribing reuses the Stripe customer.
    let set_plan = async { users.set_plan(&user.name, plan.clone(), customer).await.map_err(Error::from) };
    match usage_plan {
        Some(usage_plan) if held => {
            grace_through(keys, next, &plan, now).await?;
            tokio::try_join!(hold_keys(keys, ctx, named, next, Some(usage_plan)), set_plan)?;
        }
        Some(usage_plan) => {
            let spare = grace_through(keys, next, &plan, now).await?;
            let (key, fresh) =
                account_keys::ensure_key(keys, key_name, named, next.api_key_id.as_deref(), spare.as_deref()).await?;
            tokio::try_join!(
                account_keys::move_into_plan(keys, ctx, Some(next), named, &key.id, usage_plan, fresh),
                set_plan
            )?;
            next.api_key_id = Some(key.id);
        }
        None => {
            tokio::try_join!(account_keys::revoke_keys(keys, named, next.api_key_id.as_deref()), set_plan)?;
        }
    }
    next.plan = plan.clone();
    Ok(if paid {
        SyncOutcome::Paid { user: user.clone(), plan }
    } else {
        SyncOutcome::Free { user: user.clone(), plan }
    })
}

/// A suspended user's keys: every one disabled (by name, the recorded one, a rotation's previous
/// one), none created; the recorded key, if it still exists, placed in `usage_plan` (when given).
async fn hold_keys<K: KeyRegistry>(
    keys: &K,
    ctx: Ctx<'_>,
    named: &[crate::domain::IssuedKey],
    next: &AccountRecord,
    usage_plan: Option<&str>,
) -> Result<(), Error> {
    let mut ids: Vec<&str> = named.iter().map(|k| k.id.as_str()).collect();
    for id in [next.api_key_id.as_deref(), next.previous_key_id.as_deref()].into_iter().flatten() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for id in ids {
        account_keys::disable_if_exists(keys, id).await?;
    }
    if let (Some(id), Some(usage_plan)) = (next.api_key_id.as_deref(), usage_plan) {
        if keys.get(id).await?.is_some() {
            account_keys::move_into_plan(keys, ctx, Some(next), named, id, usage_plan, false).await?;
        }
    }
    Ok(())
}

/// The rotated-out key that keeps working through a tier change: the one in its grace while
/// the user stays on their tier. A tier change ends the grace (the key is disabled and leaves
/// the old tier's plan with the other extra keys): a cancelled user must not keep half of the
/// paid tier's quota on the old key until the grace ends.
async fn grace_through<K: KeyRegistry>(
    keys: &K,
    next: &mut AccountRecord,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Option<String>, Error> {
    if &next.plan == plan {
        return Ok(account_keys::spared(next, now).map(str::to_string));
    }
    // Retired here, by id: it may be a key of an earlier version, not found by the key name.
    if let Some(prev) = next.previous_key_id.clone().filter(|p| Some(p) != next.api_key_id.as_ref()) {
        account_keys::disable_if_exists(keys, &prev).await?;
        account_keys::detach_from_every_plan(keys, &prev).await?;
    }
    next.previous_key_id = None;
    next.previous_key_until = None;
    next.previous_key_remaining = None;
    next.previous_key_period_start = None;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_plan_follows_the_status_with_a_grace_period_for_past_due() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let grace = std::time::Duration::from_secs(3 * 24 * 3600);
        let day = chrono::Duration::days(1);
        use SubscriptionStatus::*;
        let table = [
            (Active, None, Some(Access::Paid)),
            (Trialing, None, Some(Access::Paid)),
            (PastDue, None, Some(Access::Paid)),
            (PastDue, Some(now - day * 2), Some(Access::Paid)),
            (PastDue, Some(now - day * 4), Some(Access::Free)),
            (Canceled, None, Some(Access::Free)),
            (Unpaid, None, Some(Access::Free)),
            (IncompleteExpired, None, Some(Access::Free)),
            (Paused, None, Some(Access::Free)),
            (Incomplete, None, None),
            (Other("future_status".into()), None, None),
        ];
        for (status, since, want) in table {
            assert_eq!(desired_plan(&status, since, now, grace), want, "{status:?} since {since:?}");
        }
    }
}

/// One user whose plan or key is out of step with Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub user: User,
    pub current: Plan,
    pub desired: Plan,
    /// `desired` is a paid tier (else the free plan).
    pub desired_paid: bool,
    pub subscription: Option<SubscriptionId>,
    pub status: String,
    pub key_enabled: Option<bool>,
    /// Found in a name-keyed record of an earlier version (migrated by `apply`).
    pub legacy: bool,
    /// With `apply`: what the sync did, or the error it ended with (`None` in a dry run, or
    /// when there was nothing it could do, e.g. no subscription to follow).
    pub applied: Option<Result<SyncOutcome, String>>,
}

impl Drift {
    /// Whether `apply` brought the user to the desired plan.
    pub fn repaired(&self) -> bool {
        match &self.applied {
            Some(Ok(SyncOutcome::Paid { plan, .. })) => self.desired_paid && plan == &self.desired,
            Some(Ok(SyncOutcome::Free { .. })) => !self.desired_paid,
            Some(Ok(SyncOutcome::DuplicateCancelled { .. })) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} → {} (subscription {} {}, key {}{})",
            self.user,
            self.current,
            self.desired,
            self.subscription.as_ref().map(|s| s.as_str()).unwrap_or("none"),
            self.status,
            match self.key_enabled {
                Some(true) => "enabled",
                Some(false) => "disabled",
                None => "none",
            },
            if self.legacy { ", record of an earlier version" } else { "" }
        )?;
        match &self.applied {
            None => Ok(()),
            Some(Ok(outcome)) if self.repaired() => write!(f, " — repaired: {}", describe_sync(outcome)),
            Some(Ok(outcome)) => write!(f, " — NOT repaired: {}", describe_sync(outcome)),
            Some(Err(e)) => write!(f, " — NOT repaired: {e}"),
        }
    }
}

fn describe_sync(outcome: &SyncOutcome) -> String {
    match outcome {
        SyncOutcome::Paid { user, plan } => format!("{} is {plan}", user.name),
        SyncOutcome::Free { user, plan } => format!("{} is {plan}", user.name),
        SyncOutcome::Unchanged { user } => format!("{} unchanged (the subscription asks for no change)", user.name),
        SyncOutcome::UnknownCustomer => "no user holds this customer any more".into(),
        SyncOutcome::UnknownSubscription => "Stripe no longer knows the subscription".into(),
        SyncOutcome::NotPaykeys => "not a paykey subscription; left alone".into(),
        SyncOutcome::DuplicateCancelled { user, cancelled, refunded } => {
            format!(
                "{} keeps the current subscription; duplicate {cancelled} cancelled, {refunded} refunded",
                user.name
            )
        }
    }
}

/// Walks every account record (and every name-keyed record of an earlier version not
/// migrated yet), reads the user's subscriptions from Stripe and reports every user whose plan
/// or key does not match: for webhooks that were missed. With `apply`, each is repaired
/// through the webhooks' code, and the report says what that did for each (an error for one
/// user is reported in its drift and the walk goes on; reading the records or Stripe's
/// subscriptions failing ends it with the error).
///
/// The customer is the record's, else the user's `custom:stripe_customer_id` (records the
/// Python version wrote carry none). A user no longer in the directory (deleted; the name may
/// be someone else's) is skipped: nothing is written for them.
pub async fn resync<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    apply: bool,
) -> Result<Vec<Drift>, Error>
where
    S: Accounts + AccountListing,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    let now = ctx.clock.now();
    let grace = ctx.settings.past_due_grace;
    let catalog = &ctx.settings.catalog;
    // Key id → the usage plan it is in, over every tier's plan.
    let mut attached: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for plan in catalog.usage_plans() {
        for id in keys.plan_key_ids(plan).await? {
            attached.insert(id, plan.to_string());
        }
    }
    // Each record, whether it is a name-keyed one of an earlier version, and its user's profile
    // when it was read already (for those: read once, here).
    let mut records: Vec<(AccountRecord, bool, Option<UserProfile>)> =
        store.list_accounts().await?.into_iter().map(|a| (a, false, None)).collect();
    let own: std::collections::HashSet<UserId> = records.iter().map(|(a, ..)| a.user_id.clone()).collect();
    for name in store.list_legacy_names().await? {
        let Some(profile) = users.get_user(&name).await? else { continue };
        let Some(sub) = profile.sub.clone() else { continue };
        if own.contains(&sub) {
            continue; // the user has a record of their own; the old one is not in charge
        }
        if let Some(record) = store.legacy_account(&User { id: sub, name }).await? {
            records.push((record, true, Some(profile)));
        }
    }
    let mut drifts = Vec::new();
    for (account, legacy, profile) in records {
        let user = account.user();
        let profile = match profile {
            Some(p) => Some(p),
            None => users.get_user(&user.name).await?,
        };
        let Some(profile) = profile.filter(|p| p.is(&user)) else {
            tracing::info!(user = %user, "resync: the user is no longer in the directory; skipped");
            continue;
        };
        let Some(customer) = account.customer_id.clone().or_else(|| profile.customer_id.clone()) else { continue };
        // paykey's subscriptions only: the customer may pay for the account's other products too.
        let subs: Vec<SubscriptionState> = payments
            .list_subscriptions(&customer)
            .await?
            .into_iter()
            .filter(|s| {
                catalog.tier_of_items(&s.item_lookup_keys).is_some() || account.subscription_id.as_ref() == Some(&s.id)
            })
            .collect();
        // The subscription that grants a paid tier, if any, else the newest one.
        let chosen = subs
            .iter()
            .find(|s| desired_plan(&s.status, account.past_due_since, now, grace) == Some(Access::Paid))
            .or_else(|| subs.first());
        let access = match chosen {
            Some(s) => match desired_plan(&s.status, account.past_due_since, now, grace) {
                Some(a) => a,
                None => continue,
            },
            None => Access::Free,
        };
        // The tier wanted and the usage plan its key must be in (`None`: no working key): the
        // webhooks' policy (what the subscription buys, else a comp while it lasts, else free).
        let sub_tier = match access {
            Access::Paid => {
                let items = chosen.map(|s| s.item_lookup_keys.as_slice()).unwrap_or_default();
                let tier = catalog.tier_of_items(items).or_else(|| bought_before(ctx, &account));
                match tier {
                    Some(tier) => Some(tier),
                    None => continue, // the recorded subscription pays for no tier: left as it is
                }
            }
            Access::Free => None,
        };
        let (desired, want_plan, paid) = match policy(ctx, &mut account.clone(), Some(access), sub_tier, now) {
            Target::Paid(tier) => (Plan::of(&tier.name), tier.usage_plan_id.clone(), true),
            Target::Free => (ctx.settings.free_plan(), catalog.free().and_then(|t| t.usage_plan_id.clone()), false),
            Target::Unchanged => continue,
        };
        let access = if paid { Access::Paid } else { Access::Free };
        let current = profile.plan();
        let key = match &account.api_key_id {
            Some(id) => keys.get(id).await?,
            None => None,
        };
        let key_ok = match (&want_plan, access) {
            // Suspended by an operator: no key serves.
            _ if account.suspension.is_some() => key.as_ref().is_none_or(|k| !k.enabled),
            (Some(plan), _) => {
                key.as_ref().map_or(access == Access::Free, |k| k.enabled && attached.get(&k.id) == Some(plan))
            }
            (None, _) => key.as_ref().is_none_or(|k| !k.enabled && !attached.contains_key(&k.id)),
        };
        if current == desired && account.plan == desired && key_ok && !legacy {
            continue;
        }
        let mut drift = Drift {
            user: user.clone(),
            current,
            desired,
            desired_paid: access == Access::Paid,
            subscription: chosen.map(|s| s.id.clone()),
            status: chosen.map(|s| s.status.as_str().to_string()).unwrap_or_else(|| "none".into()),
            key_enabled: key.map(|k| k.enabled),
            legacy,
            applied: None,
        };
        if apply {
            if let Some(sub) = &drift.subscription {
                // One user's failure is reported and the walk goes on (run again to retry).
                let done = sync_subscription_of(store, keys, users, payments, ctx, sub, Some(&user)).await;
                drift.applied = Some(done.map_err(|e| e.to_string()));
            }
        }
        tracing::info!(drift = %drift, "resync");
        drifts.push(drift);
    }
    Ok(drifts)
}

/// How many API keys are in use, for the 10,000-keys-per-account-and-Region quota API Gateway
/// does not raise: every key of the account (paykey's and others, enabled or not: all count)
/// and, per tier, the keys in its usage plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCount {
    pub total: usize,
    /// (tier, usage plan, keys in it), in the catalog's order.
    pub per_tier: Vec<(String, String, usize)>,
}

/// API Gateway's quota of API keys per account and Region (not raisable).
pub const API_KEY_QUOTA: usize = 10_000;

impl std::fmt::Display for KeyCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tiers: Vec<String> = self.per_tier.iter().map(|(t, _, n)| format!("{t} {n}")).collect();
        write!(
            f,
            "API keys: {} of {API_KEY_QUOTA} per account and Region ({:.1}%); in the tiers' usage plans: {}",
            self.total,
            self.total as f64 * 100.0 / API_KEY_QUOTA as f64,
            if tiers.is_empty() { "none".to_string() } else { tiers.join(", ") }
        )
    }
}

/// Counts the keys (one full listing of the account's keys and of each tier's plan).
pub async fn count_keys<K: KeyRegistry>(keys: &K, ctx: Ctx<'_>) -> Result<KeyCount, Error> {
    let total = keys.count_keys().await?;
    let mut per_tier = Vec::new();
    for t in ctx.settings.catalog.tiers() {
        if let Some(plan) = &t.usage_plan_id {
            per_tier.push((t.name.to_string(), plan.clone(), keys.plan_key_ids(plan).await?.len()));
        }
    }
    Ok(KeyCount { total, per_tier })
}
