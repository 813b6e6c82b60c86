//! The key ceiling: API Gateway allows 10,000 API keys per account and Region, enabled or not,
//! and AWS does not raise it. With a free tier every user who once asked for a key holds one
//! for life; with `FREE_KEY_IDLE_DAYS` set, the sweep deletes free keys that stopped being used,
//! and the user's next `POST /api-key` issues a new one (a new value: the old one is gone).

use chrono::Duration;

use super::{account_keys, Ctx};
use crate::domain::{AccountRecord, Error, Plan};
use crate::ports::admin::KeyDeletion;
use crate::ports::{AccountLock, Accounts, Commit};

/// The most keys one run deletes: three control-plane calls each (plans, detach, delete) within
/// API Gateway's 10 management calls per second, and the function's 20 s; an hourly run
/// reclaims up to 1,200 a day.
pub const RECLAIMS_PER_RUN: usize = 50;

/// Whether the record is a candidate: on the free tier with a key, nothing else going on (no
/// comp, suspension, rotation grace or unfinished key work), unchanged since `cutoff`.
fn idle_candidate(a: &AccountRecord, free: &Plan, cutoff: chrono::DateTime<chrono::Utc>) -> bool {
    &a.plan == free
        && a.api_key_id.is_some()
        && a.comp.is_none()
        && a.suspension.is_none()
        && a.previous_key_id.is_none()
        && a.pending_key_work.is_none()
        && a.updated_at <= cutoff
}

/// Deletes the keys of free-tier users whose key served no call over the last
/// `FREE_KEY_IDLE_DAYS` days (today included: GetUsage's data for the plan, one paginated call)
/// and whose record did not change in that time (a key issued or moved to the free tier
/// recently is not idle), at most [`RECLAIMS_PER_RUN`]. Each under the user's lock, checked
/// again there: the key is detached and deleted, then the record written without it; a crash
/// in between leaves a record naming a deleted key, which `POST /api-key` replaces (the key is
/// looked up, not trusted). A user busy elsewhere is left for the next run. Off (nothing read)
/// without the setting or a free tier with a usage plan. Returns the keys deleted.
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
    let first = today - Duration::days(i64::from(days) - 1);
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
            // Only a key in the free tier's plan and nowhere else (its usage above is that
            // plan's), or in none (a reclaim that failed after detaching it: it serves nothing):
            // one moved to another plan by hand is left alone.
            let plans = keys.plans_of(&key).await?;
            if !(plans.is_empty() || plans == [usage_plan.clone()]) {
                account_keys::release(store, &user, &token).await;
                return Ok(false);
            }
            account_keys::detach_from_every_plan(keys, &key).await?;
            keys.delete_key(&key).await?;
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
