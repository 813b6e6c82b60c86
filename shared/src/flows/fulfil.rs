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
//!   cancelled and refunded. The subscription comes with the session (one read beside the
//!   lease and the lock); it is read again under the lock when the account record was written
//!   since that read began, or the lock had to be waited for ([`UNCHANGED_MARGIN`]).
//! - Five sequential round trips for a first purchase: our record; Stripe's session beside the
//!   lease, the lock, the key lookup and the name check; the key created; attached beside the
//!   Cognito write; the commit.
//! - The key has a deterministic name per user and is looked up (again after waiting for a
//!   lock) before one is created; attaching and the Cognito write are idempotent.
//! - The session turns FULFILLED and the account record is written in one transaction that
//!   only succeeds while the lease token still holds.

use super::lifecycle::{converge, SyncOutcome};
use super::{account_keys, Ctx};
use crate::domain::{BackendError, CheckoutRecord, CheckoutStatus, Error, OneTimeKey, SessionId, SubscriptionId, User};
use crate::ports::{
    AccountLock, Accounts, CheckoutState, Checkouts, Claim, Commit, KeyRegistry, Payments, UserDirectory,
};

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
    // A session of an earlier version names only the user: bound to the name's holder (one
    // Cognito read first: the account lock is the holder's sub).
    let (user, profile) = match &record.user_id {
        Some(id) => (User { id: id.clone(), name: record.user_name.clone() }, None),
        None => match users.get_user(&record.user_name).await? {
            Some(p) => match p.sub.clone() {
                Some(id) => (User { id, name: record.user_name.clone() }, Some(Some(p))),
                None => return Ok(Completion::Rejected(Rejection::UserMismatch)),
            },
            None => return Ok(Completion::Rejected(Rejection::UserMismatch)),
        },
    };
    let key_name = settings.key_name(&user);

    // Round trip 2, everything that depends only on the record, side by side: Stripe's view of
    // the session with its subscription; the session's lease; the user's account lock (which
    // returns the account record) beside the key lookup by name; whether the user still holds
    // their name (a deleted user's name may be someone else's now); and a record an earlier
    // version keyed by the name (used only if the user has no record of their own). The lease
    // and the lock are given back at once if Stripe turns the session away.
    let token = ctx.ids.token();
    let now = ctx.clock.now();
    let (state, claim, first_lock, profile, legacy) = tokio::join!(
        payments.get_checkout(session_id),
        store.claim(session_id, &token, now, account_keys::lease_until(ctx, now)),
        account_keys::try_lock_with_key_lookup(store, keys, ctx, &user, &token, &key_name),
        async {
            match profile {
                Some(known) => Ok(known),
                None => users.get_user(&user.name).await,
            }
        },
        store.legacy_account(&user),
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
    // From here this call holds the lease (and maybe the lock): every way out gives both back.
    let checked = check_session(state, &record, &user, session_id);
    let (state, subscription) = match checked {
        Ok(Ok(ok)) => ok,
        Ok(Err(rejection)) => {
            give_back(store, &user, session_id, &token).await;
            return Ok(Completion::Rejected(rejection));
        }
        Err(e) => {
            give_back(store, &user, session_id, &token).await;
            return Err(e);
        }
    };

    let result = async {
        let waited = matches!(first_lock, Ok((AccountLock::Busy, _)));
        let mut locked = account_keys::finish_locking(store, keys, ctx, &user, &token, &key_name, first_lock?).await?;
        // After a wait, the holder may have erased the user (and the name be someone else's
        // now): the name is checked again under the lock.
        let profile = if waited { users.get_user(&user.name).await? } else { profile? };
        if !profile.is_some_and(|p| p.is(&user)) {
            return Err(Error::UserGone);
        }
        if waited {
            // The holder we waited for may have adopted (and retired) the name-keyed record.
            locked.adopt_legacy(store, &user).await?;
        } else {
            locked.adopt(legacy?);
        }
        // The subscription as read with the session is its current state unless something
        // may have changed it since: the read began before the lock was ours. Every writer of
        // the account record holds the lock and stamps `updated_at` after its own Stripe read,
        // so a record last written `UNCHANGED_MARGIN` before this read began holds nothing
        // newer than it; after a wait for another holder, or a later write, it is read again
        // now, under the lock (round trip 2b): a paid session of a subscription cancelled
        // meanwhile grants nothing.
        let unchanged = !waited && locked.account.as_ref().is_none_or(|a| a.updated_at + chrono_margin() < now);
        let current = match state.subscription_state.filter(|s| unchanged && s.id == subscription) {
            Some(s) => s,
            None => payments.get_subscription(&subscription).await?.ok_or_else(|| {
                BackendError::new("stripe", "stripe.get_subscription", "the paid session's subscription does not exist")
            })?,
        };
        // Round trips 3–4: the key found or created and enabled; attach and Cognito side by side.
        let (next, outcome) =
            converge(keys, users, payments, ctx, &user, &key_name, &locked.named, locked.account, current).await?;
        // Round trip 5: session FULFILLED and account record, in one transaction.
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
            give_back(store, &user, session_id, &token).await;
            Err(e)
        }
    }
}

/// How long before a read of Stripe the account record must have been last written for that
/// read to be newer than anything the record holds. Timestamps are written to the millisecond
/// and Lambda's clocks are kept by the Amazon Time Sync Service (well within a millisecond of
/// each other); a second covers both with room to spare. A later write only costs a second
/// read of the subscription.
pub const UNCHANGED_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

fn chrono_margin() -> chrono::Duration {
    super::chrono_duration(UNCHANGED_MARGIN)
}

/// Stripe's answer about the session, checked against our record: paid, created for this user,
/// with a subscription. `Ok(Err(_))`: turned away (nothing is kept).
fn check_session(
    state: Result<Option<CheckoutState>, BackendError>,
    record: &CheckoutRecord,
    user: &User,
    session_id: &SessionId,
) -> Result<Result<(CheckoutState, SubscriptionId), Rejection>, Error> {
    let Some(state) = state?.filter(|s| s.paid) else {
        return Ok(Err(Rejection::Unpaid));
    };
    // Stripe's reference is the user's sub (a session of an earlier version: the user name).
    let reference = match &record.user_id {
        Some(_) => user.id.as_str(),
        None => record.user_name.as_str(),
    };
    if state.client_reference_id.as_deref() != Some(reference) {
        tracing::warn!(session_id = %session_id, "checkout session belongs to another user");
        return Ok(Err(Rejection::UserMismatch));
    }
    let subscription = state.subscription.clone().ok_or_else(|| {
        Error::Backend(BackendError::new(
            "stripe",
            "stripe.get_checkout",
            "a paid checkout session has no subscription",
        ))
    })?;
    Ok(Ok((state, subscription)))
}

/// Gives back the session's lease and the user's account lock (either may not be held: the
/// give-back is conditional on the token).
async fn give_back<S: Checkouts + Accounts>(store: &S, user: &User, session_id: &SessionId, token: &str) {
    tokio::join!(account_keys::release(store, user, token), release_claim(store, session_id, token));
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
