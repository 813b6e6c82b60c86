//! `complete_checkout`: the one fulfilment path, used by the success redirect and by the
//! `checkout.session.completed` webhook.
//!
//! - Nothing reaches Stripe before the caller proved something: the session's record is read
//!   first and the one-time key compared (a signed webhook needs no key).
//! - A conditional claim (PENDING → ISSUING with a lease token) lets one attempt work at a time;
//!   a lease only expires after its holder is gone (lease > function timeout), and a failed
//!   attempt gives it back at once.
//! - Under the user's account lock, the plan is decided from the subscription's *current*
//!   state with the webhooks' policy (`lifecycle::converge`): a paid session of a subscription
//!   cancelled meanwhile grants nothing, and a second subscription of a user who has one is
//!   cancelled and refunded.
//! - The key has a deterministic name per user and is looked up (again after waiting for a
//!   lock) before one is created; attaching and the Cognito write are idempotent.
//! - The session turns FULFILLED and the account record is written in one transaction that
//!   only succeeds while the lease token still holds.

use super::lifecycle::{converge, SyncOutcome};
use super::{account_keys, Ctx};
use crate::domain::{BackendError, CheckoutStatus, Error, OneTimeKey, SessionId, User};
use crate::ports::{AccountLock, Accounts, Checkouts, Claim, Commit, KeyRegistry, Payments, UserDirectory};

/// Why a verification was turned away (the user is sent to the cancel page; nothing written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownSession,
    WrongOneTimeKey,
    Unpaid,
    /// The Stripe session was created for another user than the one recorded.
    UserMismatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// This call issued (or re-enabled) the key and finished the checkout.
    Issued {
        api_key_id: String,
    },
    /// Finished earlier, by this or another call.
    AlreadyFulfilled,
    /// The session paid for a second subscription of a user who has one: that subscription
    /// was cancelled and its charge refunded; the user stays on the first one.
    Duplicate {
        refunded: i64,
    },
    /// Paid, but the subscription no longer grants the plan (cancelled meanwhile, unpaid):
    /// nothing granted.
    NotGranted {
        status: String,
    },
    /// Paid, but the subscription is not settled yet (`incomplete`): the webhooks finish it.
    Pending,
    Rejected(Rejection),
}

impl Completion {
    /// Whether the user should see the thanks page.
    pub fn is_success(&self) -> bool {
        matches!(self, Completion::Issued { .. } | Completion::AlreadyFulfilled | Completion::Duplicate { .. })
    }
}

/// Verifies a paid checkout and fulfils it exactly once.
///
/// `one_time_key` is `None` only for callers that already proved the session is genuine (a
/// signed Stripe webhook).
pub async fn complete_checkout<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    session_id: &SessionId,
    one_time_key: Option<&OneTimeKey>,
) -> Result<Completion, Error>
where
    S: Checkouts + Accounts,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    let settings = ctx.settings;
    // Round trip 1: our record only. An unknown session or a wrong one-time key costs this one
    // DynamoDB read and nothing else (no Stripe call an anonymous caller could spend).
    let Some(record) = store.get(session_id).await? else {
        return Ok(Completion::Rejected(Rejection::UnknownSession));
    };
    if let Some(given) = one_time_key {
        if !record.one_time_key.ct_eq(given) {
            tracing::warn!(session_id = %session_id, "one-time key mismatch");
            return Ok(Completion::Rejected(Rejection::WrongOneTimeKey));
        }
    }
    if record.status == CheckoutStatus::Fulfilled {
        return Ok(Completion::AlreadyFulfilled);
    }
    // Round trip 2: Stripe's view of the session.
    let Some(state) = payments.get_checkout(session_id).await?.filter(|s| s.paid) else {
        return Ok(Completion::Rejected(Rejection::Unpaid));
    };
    // Stripe's reference is the user's sub (a session of an earlier version: the user name).
    let reference = match &record.user_id {
        Some(id) => id.as_str(),
        None => record.user_name.as_str(),
    };
    if state.client_reference_id.as_deref() != Some(reference) {
        tracing::warn!(session_id = %session_id, "checkout session belongs to another user");
        return Ok(Completion::Rejected(Rejection::UserMismatch));
    }
    let subscription = state.subscription.clone().ok_or_else(|| {
        Error::Backend(BackendError::new(
            "stripe",
            "stripe.get_checkout",
            "a paid checkout session has no subscription",
        ))
    })?;
    let user = match &record.user_id {
        Some(id) => User { id: id.clone(), name: record.user_name.clone() },
        // A session of an earlier version names only the user: bind it to the name's holder.
        None => match users.get_user(&record.user_name).await?.and_then(|p| p.sub) {
            Some(id) => User { id, name: record.user_name.clone() },
            None => return Ok(Completion::Rejected(Rejection::UserMismatch)),
        },
    };
    let key_name = settings.key_name(&user);

    // Round trip 3: take the session's lease and the user's account lock (which returns the
    // account record); the key lookup is a read and runs beside them.
    let token = ctx.ids.token();
    let now = ctx.clock.now();
    let (claim, first_lock) = tokio::join!(
        store.claim(session_id, &token, now, account_keys::lease_until(ctx, now)),
        account_keys::try_lock_with_key_lookup(store, keys, ctx, &user, &token, &key_name),
    );
    let holds_lock = matches!(first_lock, Ok((AccountLock::Acquired(_), _)));
    let claim = match claim {
        Ok(c) => c,
        Err(e) => {
            if holds_lock {
                account_keys::release(store, &user, &token).await;
            }
            return Err(e.into());
        }
    };
    let early = match claim {
        Claim::Acquired { .. } => None,
        Claim::AlreadyFulfilled => Some(Ok(Completion::AlreadyFulfilled)),
        Claim::Missing => Some(Ok(Completion::Rejected(Rejection::UnknownSession))),
        Claim::Busy => Some(Err(())),
    };
    if let Some(outcome) = early {
        if holds_lock {
            account_keys::release(store, &user, &token).await;
        }
        return match outcome {
            Ok(c) => Ok(c),
            Err(()) => wait_for_peer(store, ctx, session_id).await,
        };
    }

    let result = async {
        let mut locked = account_keys::finish_locking(store, keys, ctx, &user, &token, &key_name, first_lock?).await?;
        // Round trip 4: the subscription as it stands now, read under the lock; whether the
        // user still holds their name (a deleted user's name may be someone else's now); and,
        // for a user without a record, one an earlier version keyed by the name.
        let (current, profile, ()) = tokio::try_join!(
            async { payments.get_subscription(&subscription).await.map_err(Error::from) },
            async { users.get_user(&user.name).await.map_err(Error::from) },
            locked.adopt_legacy(store, &user),
        )?;
        let current = current.ok_or_else(|| {
            BackendError::new("stripe", "stripe.get_subscription", "the paid session's subscription does not exist")
        })?;
        if !profile.is_some_and(|p| p.is(&user)) {
            return Err(Error::UserGone);
        }
        // Round trips 5–6: the key found or created and enabled; attach and Cognito side by side.
        let (next, outcome) =
            converge(keys, users, payments, ctx, &user, &key_name, &locked.named, locked.account, current).await?;
        // Round trip 7: session FULFILLED and account record, in one transaction.
        let commit = store.fulfil(session_id, &token, &next, ctx.clock.now()).await?;
        if commit == Commit::Done {
            account_keys::retire_legacy(store, &user, locked.from_legacy).await;
        }
        Ok::<_, Error>((next, outcome, commit))
    }
    .await;

    match result {
        Ok((next, outcome, Commit::Done)) => {
            let completion = match outcome {
                SyncOutcome::Paid { .. } => {
                    Completion::Issued { api_key_id: next.api_key_id.clone().unwrap_or_default() }
                }
                SyncOutcome::DuplicateCancelled { refunded, .. } => Completion::Duplicate { refunded },
                SyncOutcome::Free { .. } => {
                    Completion::NotGranted { status: next.subscription_status.clone().unwrap_or_default() }
                }
                _ => Completion::Pending,
            };
            tracing::info!(user = %user, session_id = %session_id, api_key_id = ?next.api_key_id, outcome = ?completion, "checkout fulfilled");
            Ok(completion)
        }
        Ok((_, _, Commit::LeaseLost)) => {
            // Another attempt took over; it does the same idempotent work.
            tracing::warn!(session_id = %session_id, "fulfilment lease lost to another attempt");
            account_keys::release(store, &user, &token).await;
            match store.get(session_id).await? {
                Some(r) if r.status == CheckoutStatus::Fulfilled => Ok(Completion::AlreadyFulfilled),
                _ => Err(Error::FulfilmentInProgress),
            }
        }
        Err(e) => {
            // Give both locks back so a retry (the redirect refreshed, the webhook redelivered)
            // need not wait for the leases to expire.
            tokio::join!(account_keys::release(store, &user, &token), release_claim(store, session_id, &token));
            Err(e)
        }
    }
}

async fn release_claim<S: Checkouts>(store: &S, session_id: &SessionId, token: &str) {
    if let Err(e) = store.release_claim(session_id, token).await {
        tracing::warn!(session_id = %session_id, error = %e, "could not release the session lease; it expires");
    }
}

/// Another attempt holds the lease: wait a little for it to finish, and never report a
/// half-done state as success.
async fn wait_for_peer<S: Checkouts>(store: &S, ctx: Ctx<'_>, session_id: &SessionId) -> Result<Completion, Error> {
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    while started.elapsed() < ctx.settings.wait_for_peer {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(500));
        if let Some(r) = store.get(session_id).await? {
            if r.status == CheckoutStatus::Fulfilled {
                return Ok(Completion::AlreadyFulfilled);
            }
        }
    }
    Err(Error::FulfilmentInProgress)
}
