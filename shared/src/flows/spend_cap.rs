//! `PUT /api-key/cap`: a customer's own spend cap on a metered tier. On such a tier the usage
//! plan's quota is where calls stop (each call beyond the included amount is billed), and that
//! quota is the tier's default and highest cap; a customer may lower it, down to the included
//! amount, and raise it back. API Gateway has no per-key quota, so the cap is the key's
//! remaining quota for the period (UpdateUsage): set now for this period, and by the sweep for
//! each next one (API Gateway gives every key its plan's whole quota again when a period
//! starts: until the sweep's next run, ≤ 1 minute on AWS, the key may serve up to the tier's
//! quota).
//!
//! Like a rotation it runs under the account lock and writes the key changes down before it
//! makes them ([`KeyWork`]): what every generation of the user's key used this period comes
//! off the cap, so rotating, changing tier or setting the cap again never grants calls beyond it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{account_keys, Ctx};
use crate::domain::{AccountRecord, Error, IssuedKey, KeyWork, Plan, QuotaTarget, SpendCap, Tier, User};
use crate::ports::{Accounts, KeyRegistry};

/// Body of `PUT /api-key/cap`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapRequest {
    /// Calls per quota period, from the tier's included amount to its quota; `null`: back to
    /// the tier's default (its quota). Required.
    #[serde(deserialize_with = "present")]
    pub requests: Option<u64>,
}

/// A whole number or `null`, and required (`deserialize_with` makes the field so): `1500.0` is
/// read as 1500, as JSON Schema reads it (JSON does not tell integers from floats).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    super::whole_number(&n).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("requests must be a whole number of calls ≥ 0 or null, got {n}"))
    })
}

/// A metered tier's spend cap as `/account` and `PUT /api-key/cap` show it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct SpendCapView {
    /// The cap in force: calls per quota period.
    pub requests: u64,
    /// Set by the customer (`false`: the tier's default).
    pub custom: bool,
    /// The lowest cap the customer may set: the tier's included amount.
    pub min: u64,
    /// The highest, and the default: the tier's quota.
    pub max: u64,
}

/// Answer of `PUT /api-key/cap`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CapSet {
    pub spend_cap: SpendCapView,
    /// What the key may still serve this period under the cap, as API Gateway reports it.
    pub remaining: u64,
}

/// The spend cap of `tier` for `account`, when the tier is metered and has a quota.
pub fn spend_cap_view(account: Option<&AccountRecord>, tier: &Tier) -> Option<SpendCapView> {
    let (m, q) = (tier.metered.as_ref()?, tier.quota?);
    let max = u64::from(q.limit);
    let requests = account_keys::quota_limit(account, tier)?;
    let custom = account.and_then(|a| a.spend_cap.as_ref()).is_some_and(|c| c.plan.as_str() == tier.name.as_str());
    Some(SpendCapView { requests, custom, min: m.included.min(max), max })
}

/// The caller's metered tier with a key, or why there is no cap to set.
fn capped_tier<'a>(ctx: Ctx<'a>, account: Option<&AccountRecord>) -> Result<&'a Tier, Error> {
    let account = account.filter(|a| a.api_key_id.is_some()).ok_or(Error::NoKey)?;
    let tier = ctx.settings.tier_of(&account.plan).filter(|t| t.usage_plan_id.is_some()).ok_or(Error::NoKey)?;
    match (&tier.metered, tier.quota) {
        (Some(_), Some(_)) => Ok(tier),
        _ => Err(Error::NotMetered(account.plan.to_string())),
    }
}

fn check(requests: Option<u64>, tier: &Tier) -> Result<(), Error> {
    let view = spend_cap_view(None, tier).expect("a capped tier");
    match requests {
        Some(r) if r < view.min || r > view.max => Err(Error::BadRequest(format!(
            "requests must be from {} (the {} plan's included calls) to {} (its quota), or null for the default",
            view.min, tier.name, view.max
        ))),
        _ => Ok(()),
    }
}

/// Sets (or with `requests: null` clears) the caller's spend cap and applies it to their key(s)
/// for the current quota period.
pub async fn set_spend_cap<S, K>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    user: &User,
    req: CapRequest,
) -> Result<CapSet, Error>
where
    S: Accounts + crate::ports::Budgets,
    K: KeyRegistry,
{
    // Checked before anything is spent, locked or written: a refused request changes nothing.
    let tier = capped_tier(ctx, store.get_account(&user.id).await?.as_ref())?;
    check(req.requests, tier)?;
    super::spend_budget(store, ctx, user, super::Spending::SpendCap).await?;
    let token = ctx.ids.token();
    let key_name = ctx.settings.key_name(user);
    let locked = account_keys::lock_with_key_lookup(store, keys, ctx, user, &token, &key_name).await?;
    let result = async {
        let mut next = locked.account.clone().ok_or(Error::NoKey)?;
        if next.suspension.is_some() {
            return Err(Error::Suspended);
        }
        // Key work an earlier holder left (a rotation, a tier change): finished first by the
        // next holder that can; the cap is not stacked on quotas not moved yet.
        if next.pending_key_work.is_some() {
            return Err(Error::FulfilmentInProgress);
        }
        // Again under the lock: the tier may have changed since the first read.
        let tier = capped_tier(ctx, Some(&next))?;
        check(req.requests, tier)?;
        let now = ctx.clock.now();
        let start = tier.quota.expect("a capped tier").period.containing(now.date_naive()).0;
        next.spend_cap =
            req.requests.map(|requests| SpendCap { plan: Plan::of(&tier.name), requests, period_start: Some(start) });
        let work = limit_work(keys, ctx, &next, &locked.named, now).await?;
        next.updated_at = now;
        account_keys::commit_with_work(store, keys, ctx, &token, &mut next, work.as_ref(), now).await?;
        let view = spend_cap_view(Some(&next), tier).expect("a capped tier");
        let (plan, current) = (tier.usage_plan_id.as_deref().expect("capped"), next.api_key_id.as_deref());
        let (first, last) = tier.quota.expect("capped").period.containing(now.date_naive());
        let remaining = match current {
            Some(id) => keys.usage(id, plan, first, last).await?.remaining.unwrap_or(0),
            None => 0,
        };
        tracing::info!(user = %user, requests = view.requests, custom = view.custom, remaining, "spend cap set");
        Ok(CapSet { spend_cap: view, remaining })
    }
    .await;
    if result.is_err() {
        account_keys::release(store, user, &token).await;
    }
    result
}

/// Whether the account's spend cap still has to be applied to the current quota period (set in
/// an earlier one: API Gateway gave the key the plan's whole quota again when this one began).
pub(crate) fn cap_due(ctx: Ctx<'_>, account: &AccountRecord, now: DateTime<Utc>) -> bool {
    let Some(cap) = &account.spend_cap else { return false };
    if cap.plan != account.plan || account.suspension.is_some() || account.api_key_id.is_none() {
        return false;
    }
    let Some(tier) = ctx.settings.tier_of(&account.plan) else { return false };
    let (Some(_), Some(q), Some(_)) = (&tier.usage_plan_id, tier.quota, &tier.metered) else { return false };
    cap.period_start != Some(q.period.containing(now.date_naive()).0)
}

/// The key work that brings the user's working keys on their tier's plan to the period's limit
/// ([`account_keys::quota_limit`]: the spend cap when set): what every generation of the key
/// (by name, plus the recorded and the rotated-out one) used this period comes off it; with a
/// rotated-out key still in its grace, the rest is split as a rotation splits it (half each).
/// `None`: the tier has no quota, or the user no key on its plan.
pub(crate) async fn limit_work<K: KeyRegistry>(
    keys: &K,
    ctx: Ctx<'_>,
    account: &AccountRecord,
    named: &[IssuedKey],
    now: DateTime<Utc>,
) -> Result<Option<KeyWork>, Error> {
    let Some(tier) = ctx.settings.tier_of(&account.plan) else { return Ok(None) };
    let (Some(plan), Some(q), Some(limit), Some(current)) =
        (&tier.usage_plan_id, tier.quota, account_keys::quota_limit(Some(account), tier), &account.api_key_id)
    else {
        return Ok(None);
    };
    let (start, end) = q.period.containing(now.date_naive());
    // The rotated-out key: sharing the rest while its grace runs; after it, until the sweep
    // retires it, still enabled and in the plan: it gets nothing more.
    let previous = account.previous_key_id.as_deref().filter(|p| p != current);
    let in_grace = account_keys::spared(account, now).is_some();
    let mut ids: Vec<&str> = named.iter().map(|k| k.id.as_str()).collect();
    for id in [Some(current.as_str()), previous].into_iter().flatten() {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let (mut used_all, mut current_used, mut previous_used) = (0u64, 0u64, 0u64);
    for id in ids {
        let used = match keys.usage(id, plan, start, end).await {
            Ok(u) => u.used,
            // a key deleted by hand serves nothing; what it served is lost to the count
            Err(_) if keys.get(id).await?.is_none() => 0,
            // An old generation in no plan now, refused as not found (API Gateway may refuse
            // GetUsage for a key not in the plan): counted as 0, as a tier change counts it
            // (`move_into_plan`). Any other failure (throttling, 5xx) fails the cap: counting
            // it as 0 would hand out what the key used.
            Err(e)
                if e.message.contains("NotFoundException") && !keys.plans_of(id).await?.iter().any(|p| p == plan) =>
            {
                tracing::warn!(api_key_id = %id, error = %e, "usage of a key no longer in the plan refused: counted as 0");
                0
            }
            Err(e) => return Err(e.into()),
        };
        used_all += used;
        if id == current {
            current_used = used;
        }
        if Some(id) == previous {
            previous_used = used;
        }
    }
    let pool = limit.saturating_sub(used_all);
    let previous = match previous {
        Some(p) if keys.plans_of(p).await?.contains(plan) => Some(p),
        _ => None,
    };
    let keep = if previous.is_some() && in_grace { pool - pool / 2 } else { 0 };
    let mut counted = vec![(current.clone(), current_used)];
    if let Some(p) = previous.filter(|_| !in_grace) {
        // its grace is over: what it still serves until the sweep retires it comes off the
        // current key's share, as after a rotation without grace
        counted.push((p.to_string(), previous_used));
    }
    let mut targets = vec![QuotaTarget { key_id: current.clone(), remaining: pool - keep, counted }];
    if let Some(p) = previous {
        let old = QuotaTarget { key_id: p.to_string(), remaining: keep, counted: vec![(p.to_string(), previous_used)] };
        // An ended grace's key is stopped first: what it serves until then comes off the
        // current key's share, which is set after it.
        match in_grace {
            true => targets.push(old),
            false => targets.insert(0, old),
        }
    }
    Ok(Some(KeyWork { plan: Some(plan.clone()), period_start: Some(start), targets, retire: Vec::new() }))
}

/// Marks the account's spend cap as applied to the current quota period.
/// (Only while the user is on the cap's tier: elsewhere nothing applied it.)
pub(crate) fn mark_applied(ctx: Ctx<'_>, account: &mut AccountRecord, now: DateTime<Utc>) {
    let start =
        ctx.settings.tier_of(&account.plan).and_then(|t| t.quota).map(|q| q.period.containing(now.date_naive()).0);
    let plan = account.plan.clone();
    if let (Some(cap), Some(start)) = (account.spend_cap.as_mut().filter(|c| c.plan == plan), start) {
        cap.period_start = Some(start);
    }
}
