//! The key ceiling: API Gateway allows 10,000 API keys per account and Region, enabled or not,
//! and AWS does not raise it. With a free tier every user who once asked for a key holds one
//! for life; with `FREE_KEY_IDLE_DAYS` set, the sweep deletes free keys that stopped being used,
//! and the user's next `POST /api-key` issues a new one (a new value: the old one is gone).

use chrono::Duration;

use super::{account_keys, Ctx};
use crate::domain::{AccountRecord, Error, Plan};
use crate::ports::admin::KeyDeletion;
use crate::ports::{AccountLock, Accounts, Commit};

/// The most keys one run deletes: about four control-plane calls each (GetApiKey, the key's
/// plans, DeleteApiKey, and the plan association's read and removal where a registry keeps
/// it), within API Gateway's 10 management calls per second shared with every other caller,
/// and after the minute's sweep inside the function's 20 s; an hourly run reclaims up to 240
/// a day.
pub const RECLAIMS_PER_RUN: usize = 10;

/// Whether the record is a candidate: on the free tier with a key and no subscription that may
/// come back (none, or one that ended: `canceled`, `incomplete_expired`), nothing else going on
/// (no comp, suspension, rotation grace or unfinished key work), unchanged since `cutoff`.
fn idle_candidate(a: &AccountRecord, free: &Plan, cutoff: chrono::DateTime<chrono::Utc>) -> bool {
    &a.plan == free
        && a.api_key_id.is_some()
        && matches!(a.subscription_status.as_deref(), None | Some("canceled") | Some("incomplete_expired"))
        && a.comp.is_none()
        && a.suspension.is_none()
        && a.previous_key_id.is_none()
        && a.pending_key_work.is_none()
        && a.updated_at <= cutoff
}

/// Deletes the keys of free-tier users whose key served no call from the start of the current
/// quota period, or `FREE_KEY_IDLE_DAYS` whole days before today if that is earlier, through
/// today (GetUsage for the free tier's plan, one paginated call), and whose record did not
/// change in those days — at most [`RECLAIMS_PER_RUN`]. No use in the quota period means the
/// new key a returning user gets (with the plan's whole quota) keeps the period's bound. Calls
/// in the last minutes before the run may not be reported yet (GetUsage's delay): a key first
/// used again then can still be deleted, and its user's next `POST /api-key` gets a new one.
///
/// Each under the user's lock, checked again there: only a key in the free tier's plan and no
/// other (one being moved by a fulfilment, or moved by hand, is left alone) is deleted, then
/// the record is written without it. A crash in between leaves the record naming a deleted
/// key: the next run finds it gone and clears the record; meanwhile `POST /api-key` looks the
/// key up and issues a new one (a warm container that cached the old value may hand it out
/// until then). A user busy elsewhere is left for the next run. Off (nothing read) without the
/// setting or a free tier with a usage plan. Returns the keys deleted.
pub async fn reclaim_idle_free_keys<S, K>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    accounts: &[AccountRecord],
) -> Result<Vec<String>, Error>
where
    S: Accounts,
    K: KeyDeletion,
{
    let Some(days) = ctx.settings.free_key_idle_days else { return Ok(Vec::new()) };
    let Some((tier, usage_plan)) = ctx.settings.catalog.free().and_then(|t| Some((t, t.usage_plan_id.clone()?))) else {
        return Ok(Vec::new());
    };
    let free = Plan::of(&tier.name);
    let now = ctx.clock.now();
    let window = Duration::days(i64::from(days));
    let cutoff = now - window;
    let candidates: Vec<&AccountRecord> = accounts.iter().filter(|a| idle_candidate(a, &free, cutoff)).collect();
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let today = now.date_naive();
    let mut first = today - window;
    if let Some(q) = tier.quota {
        first = first.min(q.period.containing(today).0);
    }
    let used = keys.plan_usage(&usage_plan, first, today).await?;
    let mut reclaimed = Vec::new();
    for account in candidates {
        if reclaimed.len() >= RECLAIMS_PER_RUN {
            break;
        }
        let key = account.api_key_id.clone().expect("a candidate has a key");
        if used.get(&key).copied().unwrap_or(0) > 0 {
            continue;
        }
        let user = account.user();
        let token = ctx.ids.token();
        let now = ctx.clock.now();
        let lock = match store.lock_account(&user.id, &token, now, account_keys::lease_until(ctx, now)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "could not lock an idle free key's record; the next run retries");
                continue;
            }
        };
        let AccountLock::Acquired(Some(mut next)) = lock else {
            if matches!(lock, AccountLock::Acquired(None)) {
                account_keys::release(store, &user, &token).await;
            }
            continue;
        };
        let result = async {
            // Checked again under the lock: the record read by the scan may be old.
            if !idle_candidate(&next, &free, cutoff) || next.api_key_id.as_deref() != Some(key.as_str()) {
                account_keys::release(store, &user, &token).await;
                return Ok(false);
            }
            if keys.get(&key).await?.is_some() {
                let plans = keys.plans_of(&key).await?;
                if plans != [usage_plan.clone()] {
                    account_keys::release(store, &user, &token).await;
                    return Ok(false);
                }
                keys.delete_key(&key).await?;
                // A registry that keeps a deleted key's plan association (moto does; API Gateway
                // removes it with the key): removed too.
                for p in &plans {
                    keys.detach_from_plan(&key, p).await?;
                }
            }
            next.api_key_id = None;
            next.updated_at = ctx.clock.now();
            match store.put_account(&next, &token).await? {
                Commit::Done => Ok(true),
                Commit::LeaseLost => Err(Error::FulfilmentInProgress),
            }
        }
        .await;
        match result {
            Ok(true) => {
                tracing::info!(user = %user, api_key_id = %key, days, "idle free key deleted");
                reclaimed.push(key);
            }
            Ok(false) => {}
            Err(e) => {
                account_keys::release(store, &user, &token).await;
                tracing::warn!(user = %user, error = %e, "could not reclaim an idle free key; the next run retries");
            }
        }
    }
    Ok(reclaimed)
}
