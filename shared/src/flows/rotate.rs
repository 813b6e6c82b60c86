//! `POST /api-key/rotate`: a new key on the same usage plan, the old one disabled now or after a
//! grace the caller picks (both work meanwhile). Rotation never grants quota: the new key starts
//! with the old key's remaining quota for the period (UpdateUsage). Limited per day, because
//! each rotation spends the account's control-plane calls.
//!
//! Crash-safe and idempotent like fulfilment, under the account lock: every generation of a
//! user's key carries the user's key name, so a retry finds the key a crashed attempt created
//! (enabled, neither the recorded nor the previous one) instead of creating another; the record
//! is written last; a request id makes a retried request answer with its rotation instead of
//! rotating again.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{account_keys, chrono_duration, ApiKeyView, Ctx};
use crate::domain::{Error, User};
use crate::ports::{Accounts, Commit, KeyRegistry};

/// Body of `POST /api-key/rotate` (all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key keeps working (0: disabled now), at most the configured maximum.
    /// A whole number; `300.0` is read as 300 (JSON does not tell integers from floats).
    #[serde(default, deserialize_with = "whole_seconds")]
    pub grace_seconds: u64,
    /// The caller's id for this rotation: a retry with the same id answers, it does not rotate again.
    #[serde(default)]
    pub request_id: Option<String>,
}

fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        // below 2^53 every whole f64 is exact
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!("grace_seconds must be a whole number of seconds ≥ 0, got {n}"))),
    }
}

/// Answer of `POST /api-key/rotate`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rotated {
    pub api_key: ApiKeyView,
    /// The old key's id and when it stops working (RFC 3339; now when there is no grace).
    pub previous_key_id: String,
    pub previous_key_until: String,
}

pub async fn rotate_key<S, K>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    user: &User,
    req: RotateRequest,
) -> Result<Rotated, Error>
where
    S: Accounts,
    K: KeyRegistry,
{
    let settings = ctx.settings;
    let grace = Duration::from_secs(req.grace_seconds);
    if grace > settings.rotation_max_grace {
        return Err(Error::BadRequest(format!("grace_seconds is at most {}", settings.rotation_max_grace.as_secs())));
    }
    if req.request_id.as_ref().is_some_and(|r| r.is_empty() || r.chars().count() > 64) {
        return Err(Error::BadRequest("request_id is 1 to 64 characters".into()));
    }
    let token = ctx.ids.token();
    let key_name = settings.key_name(user);
    let locked = account_keys::lock_with_key_lookup(store, keys, ctx, user, &token, &key_name).await?;
    let result = async {
        let mut next = locked.account.clone().ok_or(Error::NoKey)?;
        let now = ctx.clock.now();
        // A retried request: its rotation is done; answer it again.
        if let (Some(r), Some(done)) = (&req.request_id, &next.rotation_request) {
            if r == done {
                if let (Some(id), Some(prev), Some(until)) =
                    (next.api_key_id.clone(), next.previous_key_id.clone(), next.previous_key_until)
                {
                    account_keys::release(store, user, &token).await;
                    let value = keys.key_value(&id).await?.ok_or(Error::NoKey)?;
                    return Ok(answer(id, value, prev, until));
                }
            }
        }
        let tier = settings.tier_of(&next.plan).filter(|t| t.usage_plan_id.is_some()).ok_or(Error::NoKey)?;
        let plan = tier.usage_plan_id.clone().expect("filtered");
        let old = next.api_key_id.clone().ok_or(Error::NoKey)?;
        next.recent_rotations.retain(|t| now - *t < chrono::Duration::hours(24));
        if next.recent_rotations.len() as u32 >= settings.rotations_per_day {
            return Err(Error::RotationLimited(settings.rotations_per_day));
        }
        // A previous key still in its grace: its grace ends now (one old key at a time).
        let previous = next.previous_key_id.clone();
        if let Some(prev) = next.previous_key_id.take() {
            if prev != old {
                keys.set_enabled(&prev, false).await?;
                account_keys::detach_from_every_plan(keys, &prev).await?;
            }
        }
        // The new key: one a crashed attempt created (enabled, not the old one), else a new one.
        let crashed =
            locked.named.iter().find(|k| k.enabled && k.id != old && Some(&k.id) != previous.as_ref()).cloned();
        let (new, fresh) = match crashed {
            Some(k) => (k, false),
            None => (keys.create(&key_name).await?, true),
        };
        account_keys::place_in_plan(keys, &new.id, &plan, fresh).await?;
        // Never grant quota: the new key gets the old key's remaining quota of this period (and
        // what the old key uses in its grace is taken from the new one when the grace ends).
        let mut carried = None;
        if let Some(q) = tier.quota {
            let (start, end) = q.period.containing(now.date_naive());
            let used = keys.usage(&old, &plan, start, end).await?;
            let remaining = used.remaining.unwrap_or_else(|| u64::from(q.limit).saturating_sub(used.used));
            keys.set_remaining(&new.id, &plan, remaining).await?;
            carried = Some(remaining);
        }
        let until = now + chrono_duration(grace);
        if grace.is_zero() {
            keys.set_enabled(&old, false).await?;
            account_keys::detach_from_every_plan(keys, &old).await?;
        }
        next.previous_key_id = Some(old.clone());
        next.previous_key_until = Some(until);
        next.previous_key_remaining = if grace.is_zero() { None } else { carried };
        next.api_key_id = Some(new.id.clone());
        next.recent_rotations.push(now);
        next.rotation_request = req.request_id.clone();
        next.updated_at = now;
        match store.put_account(&next, &token).await? {
            Commit::Done => {}
            Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        let value = keys.key_value(&new.id).await?.ok_or(Error::FulfilmentInProgress)?;
        tracing::info!(user = %user, old = %old, new = %new.id, grace_s = grace.as_secs(), "API key rotated");
        Ok(answer(new.id, value, old, until))
    }
    .await;
    if result.is_err() {
        account_keys::release(store, user, &token).await;
    }
    result
}

fn answer(id: String, value: String, previous: String, until: chrono::DateTime<chrono::Utc>) -> Rotated {
    Rotated {
        api_key: ApiKeyView { id, value, enabled: true },
        previous_key_id: previous,
        previous_key_until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// Ends the grace of every rotated-out key whose grace is over: disabled, detached, and the
/// record's `previous_key_*` cleared (under the account lock; a user busy elsewhere is left for
/// the next sweep). Run on a schedule (the local stack every few seconds, `paykey-resync
/// --sweep` from cron); a full listing of the records. Returns the keys disabled.
pub async fn sweep_expired_keys<S, K>(store: &S, keys: &K, ctx: Ctx<'_>) -> Result<Vec<String>, Error>
where
    S: Accounts + crate::ports::AccountListing,
    K: KeyRegistry,
{
    let now = ctx.clock.now();
    let mut disabled = Vec::new();
    for account in store.list_accounts().await? {
        let (Some(prev), Some(until)) = (account.previous_key_id.clone(), account.previous_key_until) else {
            continue;
        };
        if until > now {
            continue;
        }
        let user = account.user();
        let token = ctx.ids.token();
        let lock = store.lock_account(&user.id, &token, now, account_keys::lease_until(ctx, now)).await?;
        let crate::ports::AccountLock::Acquired(Some(mut next)) = lock else {
            continue; // busy: the next sweep
        };
        let result = async {
            if next.previous_key_id.as_deref() == Some(prev.as_str())
                && next.api_key_id.as_deref() != Some(prev.as_str())
            {
                keys.set_enabled(&prev, false).await?;
                // What the old key used in its grace comes off the new key's remaining quota.
                let tier = ctx.settings.tier_of(&next.plan);
                let metered = tier.and_then(|t| Some((t.usage_plan_id.clone()?, t.quota?)));
                if let (Some((plan, q)), Some(at_rotation), Some(new)) =
                    (metered, next.previous_key_remaining, next.api_key_id.clone())
                {
                    let (start, end) = q.period.containing(now.date_naive());
                    let (old_use, new_use) =
                        tokio::try_join!(keys.usage(&prev, &plan, start, end), keys.usage(&new, &plan, start, end))?;
                    let grace_use = at_rotation.saturating_sub(old_use.remaining.unwrap_or(at_rotation));
                    if grace_use > 0 {
                        let left = new_use.remaining.unwrap_or(0).saturating_sub(grace_use);
                        keys.set_remaining(&new, &plan, left).await?;
                    }
                }
                account_keys::detach_from_every_plan(keys, &prev).await?;
            }
            next.previous_key_id = None;
            next.previous_key_until = None;
            next.previous_key_remaining = None;
            next.updated_at = now;
            match store.put_account(&next, &token).await? {
                Commit::Done => Ok(()),
                Commit::LeaseLost => Err(Error::FulfilmentInProgress),
            }
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(user = %user, api_key_id = %prev, "rotated-out key disabled at the end of its grace");
                disabled.push(prev);
            }
            Err(e) => {
                account_keys::release(store, &user, &token).await;
                tracing::warn!(user = %user, error = %e, "could not end a rotated key's grace; the next sweep retries");
            }
        }
    }
    Ok(disabled)
}
