//! `complete_checkout`: the one fulfilment path, used by the success redirect and by the
//! `checkout.session.completed` webhook.
//!
//! Safe under any number of concurrent or repeated calls and under a crash between any two
//! backend calls followed by a retry:
//! - a conditional claim (PENDING → ISSUING with a lease token) lets one attempt work at a time;
//!   a lease only expires after its holder is gone (lease > function timeout);
//! - the key has a deterministic name per user and is looked up before one is created;
//! - attaching to the usage plan and writing Cognito attributes are idempotent;
//! - the session turns FULFILLED and the account record is written in one transaction that
//!   only succeeds while the lease token still holds.

use std::time::Instant;

use super::{account_keys, Ctx};
use crate::domain::{AccountRecord, CheckoutStatus, Error, OneTimeKey, Plan, SessionId};
use crate::ports::{AccountLock, Claim, Commit, KeyRegistry, Payments, SessionStore, UserDirectory};

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
    Rejected(Rejection),
}

impl Completion {
    /// Whether the user should see the thanks page.
    pub fn is_success(&self) -> bool {
        !matches!(self, Completion::Rejected(_))
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
    S: SessionStore,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    let settings = ctx.settings;
    // Round trip 1: our record and Stripe's view of the session, side by side.
    let (record, state) = tokio::try_join!(store.get(session_id), payments.get_checkout(session_id))?;
    let Some(record) = record else {
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
    let Some(state) = state.filter(|s| s.paid) else {
        return Ok(Completion::Rejected(Rejection::Unpaid));
    };
    if state.client_reference_id.as_deref() != Some(record.user_name.as_str()) {
        tracing::warn!(session_id = %session_id, "checkout session belongs to another user");
        return Ok(Completion::Rejected(Rejection::UserMismatch));
    }
    let customer = state.customer.clone().ok_or_else(|| {
        Error::Backend(crate::domain::BackendError::new(
            "stripe",
            "stripe.get_checkout",
            "a paid checkout session has no customer",
        ))
    })?;
    let user = record.user_name.clone();
    let key_name = settings.key_name(&user);

    // Round trip 2: take the session's lease and the user's account lock (which returns the
    // account record); the key lookup is a read and runs beside them.
    let token = ctx.ids.token();
    let now = ctx.clock.now();
    let lease_until = account_keys::lease_until(ctx, now);
    let (claim, named, lock) = tokio::join!(
        store.claim(session_id, &token, now, lease_until),
        keys.find_by_name(&key_name),
        store.lock_account(&user, &token, now, lease_until),
    );
    // A failure beside a lock we got must not leave the lock to expire.
    let (claim, named, lock) = match (claim, named, lock) {
        (Ok(c), Ok(n), Ok(l)) => (c, n, l),
        (c, n, l) => {
            if matches!(l, Ok(AccountLock::Acquired(_))) {
                account_keys::release(store, &user, &token).await;
            }
            return Err(Error::Backend(c.err().or(n.err()).or(l.err()).expect("one of them failed")));
        }
    };
    let early = match claim {
        Claim::Acquired { .. } => None,
        Claim::AlreadyFulfilled => Some(Ok(Completion::AlreadyFulfilled)),
        Claim::Missing => Some(Ok(Completion::Rejected(Rejection::UnknownSession))),
        Claim::Busy => Some(Err(())),
    };
    if let Some(outcome) = early {
        if matches!(lock, AccountLock::Acquired(_)) {
            account_keys::release(store, &user, &token).await;
        }
        return match outcome {
            Ok(c) => Ok(c),
            Err(()) => wait_for_peer(store, ctx, session_id).await,
        };
    }

    let result = async {
        let account = account_keys::lock_account_waiting(store, ctx, &user, &token, Some(lock)).await?;
        // Round trip 3: the user's one key, found or created, and enabled.
        let recorded = account.as_ref().and_then(|a| a.api_key_id.clone());
        let key = account_keys::ensure_pro_key(keys, &key_name, &named, recorded.as_deref()).await?;
        // Round trip 4: both idempotent, independent of each other.
        tokio::try_join!(keys.attach_to_plan(&key.id), users.set_plan(&user, Plan::Pro, Some(&customer)))?;
        // Round trip 5: session FULFILLED and account record, in one transaction.
        let now = ctx.clock.now();
        let mut next = account.unwrap_or_else(|| AccountRecord::new(user.clone(), now));
        next.plan = Plan::Pro;
        next.api_key_id = Some(key.id.clone());
        next.customer_id = Some(customer.clone());
        if state.subscription.is_some() {
            next.subscription_id = state.subscription.clone();
        }
        next.subscription_status = Some("active".to_string());
        next.past_due_since = None;
        next.updated_at = now;
        Ok::<_, Error>((key, store.fulfil(session_id, &token, &next, now).await?))
    }
    .await;

    match result {
        Ok((key, Commit::Done)) => {
            tracing::info!(user = %user, session_id = %session_id, api_key_id = %key.id, "PRO key issued");
            Ok(Completion::Issued { api_key_id: key.id })
        }
        Ok((_, Commit::LeaseLost)) => {
            // Another attempt took over; it does the same idempotent work.
            tracing::warn!(session_id = %session_id, "fulfilment lease lost to another attempt");
            account_keys::release(store, &user, &token).await;
            match store.get(session_id).await? {
                Some(r) if r.status == CheckoutStatus::Fulfilled => Ok(Completion::AlreadyFulfilled),
                _ => Err(Error::FulfilmentInProgress),
            }
        }
        Err(e) => {
            account_keys::release(store, &user, &token).await;
            Err(e)
        }
    }
}

/// Another attempt holds the lease: wait a little for it to finish, and never report a
/// half-done state as success.
async fn wait_for_peer<S: SessionStore>(store: &S, ctx: Ctx<'_>, session_id: &SessionId) -> Result<Completion, Error> {
    let started = Instant::now();
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
