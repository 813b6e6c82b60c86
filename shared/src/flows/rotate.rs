//! `POST /api-key/rotate`: a new key on the same usage plan, the old one disabled now or after a
//! grace the caller picks (both work meanwhile). Rotation never grants quota: the user's keys
//! share what was left of the period (UpdateUsage), so however many rotations and graces, the
//! calls served in one period on one tier's plan stay within its quota. Limited per day,
//! because each rotation spends the account's control-plane calls.
//!
//! Crash-safe and idempotent like fulfilment, under the account lock: every generation of a
//! user's key carries the user's key name, so a retry finds the key a crashed attempt created
//! (enabled, neither the recorded nor the previous one) instead of creating another; the record
//! names the new key and writes down the quota moves and the keys to disable *before* any of
//! them is made (no moment where it calls a disabled key enabled), and the next holder of the
//! lock finishes them; a request id is answered with its first answer for 25 hours.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{account_keys, chrono_duration, ApiKeyView, Ctx};
use crate::domain::{Error, KeyWork, QuotaTarget, RotationAnswer, User};
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
    super::whole_number(&n).ok_or_else(|| {
        serde::de::Error::custom(format!("grace_seconds must be a whole number of seconds ≥ 0, got {n}"))
    })
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
    S: Accounts + crate::ports::Budgets,
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
    // Before the lock: a refused request takes nothing and calls nothing else.
    super::spend_budget(store, ctx, user, super::Spending::Rotation).await?;
    // Identity: `user` comes from the caller's verified ID token (the Cognito `sub`), and the
    // record and keys read below are keyed by that `sub` and its key name; nothing here writes
    // to the user directory, so the name's current holder need not be read.
    let token = ctx.ids.token();
    let key_name = settings.key_name(user);
    let locked = account_keys::lock_with_key_lookup(store, keys, ctx, user, &token, &key_name).await?;
    let result = async {
        let mut next = locked.account.clone().ok_or(Error::NoKey)?;
        if next.suspension.is_some() {
            return Err(Error::Suspended);
        }
        let now = ctx.clock.now();
        // Key work an earlier holder left and that could not be finished now: no rotation on
        // top of it (its split would start from quotas not moved yet). Retried later.
        if next.pending_key_work.is_some() {
            return Err(Error::FulfilmentInProgress);
        }
        next.rotation_answers.retain(|a| now - a.at < RotationAnswer::KEPT_FOR);
        // A retried request: its rotation is done; answer it again.
        if let Some(done) = req.request_id.as_ref().and_then(|r| next.rotation_answers.iter().find(|a| &a.request_id == r)) {
            let done = done.clone();
            account_keys::release(store, user, &token).await;
            let value = keys.key_value(&done.api_key_id).await?.ok_or(Error::NoKey)?;
            return Ok(answer(done.api_key_id, value, done.previous_key_id, done.previous_key_until));
        }
        let tier = settings.tier_of(&next.plan).filter(|t| t.usage_plan_id.is_some()).ok_or(Error::NoKey)?;
        let plan = tier.usage_plan_id.clone().expect("filtered");
        let old = next.api_key_id.clone().ok_or(Error::NoKey)?;
        next.recent_rotations.retain(|t| now - *t < chrono::Duration::hours(24));
        if next.recent_rotations.len() as u32 >= settings.rotations_per_day {
            return Err(Error::RotationLimited(settings.rotations_per_day));
        }
        // The recorded key must be in its tier's plan: a crashed plan change may have moved it
        // before the record said so (the webhook's retry finishes that); rotating it now would
        // split a quota it does not draw on. Nothing written: try again.
        let old_plans = keys.plans_of(&old).await?;
        if old_plans.is_empty() {
            return Err(Error::NoKey); // revoked (in no plan): nothing to rotate
        }
        if !old_plans.contains(&plan) {
            tracing::warn!(user = %user, api_key_id = %old, "the key is not in its tier's plan yet (a plan change in progress)");
            return Err(Error::FulfilmentInProgress);
        }
        // A previous key still in its grace: its grace ends now (one old key at a time), and
        // what it had left of the period joins the pool split below.
        let previous = next.previous_key_id.take().filter(|p| p != &old);
        let legacy_at_rotation = next.previous_key_remaining.take();
        next.previous_key_until = None;
        next.previous_key_period_start = None;
        // The new key: one a crashed attempt created (enabled, neither the current nor the
        // previous key; its value was never handed out, so it has served nothing), else a new one.
        let crashed =
            locked.named.iter().find(|k| k.enabled && k.id != old && Some(&k.id) != previous.as_ref()).cloned();
        // The keys by name were read beside the lock request: one another holder retired just
        // before we got the lock still looks enabled there. Asked again (rare: a crash left one).
        let crashed = match crashed {
            Some(k) => keys.get(&k.id).await?.filter(|k| k.enabled),
            None => None,
        };
        let (new, fresh) = match crashed {
            Some(k) => (k, false),
            None => (keys.create(&key_name).await?, true),
        };
        account_keys::place_in_plan(keys, &new.id, &plan, fresh).await?; // its share: below
        // Nothing on the new key until the work below gives it its share: the record names it
        // (and `/account` shows it) before that, and a fresh key in a plan holds the plan's
        // whole quota. A failure before the share is set leaves the user short, never over.
        if tier.quota.is_some() {
            keys.set_remaining(&new.id, &plan, 0).await?;
        }
        // Never grant quota: what the user's keys have left of this period is one pool. Without
        // a grace the new key takes all of it; with one, the old key keeps half (its clients
        // move over during the grace) and the new key gets the rest; what the old key has not
        // used when its grace ends goes to the new key. Each share is stated against what the
        // keys had used when it was computed (see `KeyWork`), so calls the old key serves until
        // it stops come off the pool too.
        let mut work = KeyWork {
            plan: Some(plan.clone()),
            period_start: None,
            targets: Vec::new(),
            retire: previous.iter().cloned().collect(),
        };
        if grace.is_zero() {
            work.retire.push(old.clone());
        }
        if let Some(q) = tier.quota {
            let (start, end) = q.period.containing(now.date_naive());
            let limit = account_keys::quota_limit(Some(&next), tier).unwrap_or(u64::from(q.limit));
            let old_use = keys.usage(&old, &plan, start, end).await?;
            // never more than the period's limit less what the key used (a new period's whole
            // quota before the sweep set the spend cap again)
            let mut pool = old_use.remaining.unwrap_or(u64::MAX).min(limit.saturating_sub(old_use.used));
            let mut counted_old = vec![(old.clone(), old_use.used)];
            if let Some(prev) = &previous {
                if keys.plans_of(prev).await?.contains(&plan) {
                    let p = keys.usage(prev, &plan, start, end).await?;
                    let left = p.remaining.unwrap_or(0);
                    pool = match legacy_at_rotation {
                        // A grace begun by an earlier version gave both keys the whole remaining:
                        // what the previous key used in it comes off.
                        Some(at) => pool.saturating_sub(at.saturating_sub(left)),
                        // Never more than the period's quota less what the two used of it (a
                        // grace that ran into a new period before the sweep split it anew has
                        // the whole new quota on each key).
                        None => (pool + left).min(limit.saturating_sub(old_use.used + p.used)),
                    };
                    counted_old.push((prev.clone(), p.used));
                }
            }
            let keep = if grace.is_zero() { 0 } else { pool - pool / 2 };
            let mut counted_new = vec![(new.id.clone(), 0)];
            if grace.is_zero() {
                // the old key's calls until it is disabled come off the new key's share
                counted_new.extend(counted_old.iter().cloned());
            } else {
                work.targets.push(QuotaTarget { key_id: old.clone(), remaining: keep, counted: counted_old });
            }
            let share = QuotaTarget { key_id: new.id.clone(), remaining: pool - keep, counted: counted_new };
            work.targets.insert(0, share);
            work.period_start = Some(start);
            if !grace.is_zero() {
                next.previous_key_period_start = Some(start);
            }
        }
        let until = now + chrono_duration(grace);
        next.previous_key_id = (!grace.is_zero()).then(|| old.clone());
        next.previous_key_until = (!grace.is_zero()).then_some(until);
        next.api_key_id = Some(new.id.clone());
        next.recent_rotations.push(now);
        if let Some(r) = &req.request_id {
            next.rotation_answers.push(RotationAnswer {
                request_id: r.clone(),
                api_key_id: new.id.clone(),
                previous_key_id: old.clone(),
                previous_key_until: until,
                at: now,
            });
        }
        // Written down first, then done: a crash in between is finished by the next holder of
        // the lock (a retry, any other flow, the sweep), with the same result.
        next.pending_key_work = Some(work.clone());
        next.updated_at = now;
        // Written down with the lock kept, then made under it (no newer work can land in
        // between), then cleared as the lock is given back. A failure in between leaves the
        // work to the next holder of the lock (a retry, any flow, the sweep), which makes it.
        match store.save_account(&next, &token, account_keys::lease_until(ctx, now)).await? {
            Commit::Done => {}
            Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        // The rotation is recorded from here on: it is answered (a retry without a request id
        // would rotate again). Key work that fails stays noted for the next holder of the lock
        // (the sweep within a minute, or the user's next request); until then the new key may
        // hold less than its share, never more.
        match account_keys::apply_key_work(keys, ctx, &work).await {
            Ok(()) => {
                next.pending_key_work = None;
                match store.put_account(&next, &token).await {
                    Ok(Commit::Done) => {}
                    Ok(Commit::LeaseLost) | Err(_) => {
                        tracing::warn!(user = %user, "rotation done; its key work stays noted until the next holder clears it");
                        account_keys::release(store, user, &token).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "rotation recorded; its key changes are finished by the next holder of the lock");
                account_keys::release(store, user, &token).await;
            }
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

/// Ends the grace of every rotated-out key whose grace is over (disabled, detached, what it had
/// not used of the period given to the current key) and finishes key changes a crashed holder
/// left written down; under the account lock (a user busy elsewhere is left for the next sweep).
/// Run on a schedule (the local stack every few seconds, `paykey-resync --sweep` from cron); a
/// full listing of the records. Returns the keys disabled.
pub async fn sweep_expired_keys<S, K>(store: &S, keys: &K, ctx: Ctx<'_>) -> Result<Vec<String>, Error>
where
    S: Accounts + crate::ports::AccountListing,
    K: KeyRegistry,
{
    sweep_listed(store, keys, ctx, &store.list_accounts().await?).await
}

/// [`sweep_expired_keys`] over records listed already.
async fn sweep_listed<S, K>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    accounts: &[crate::domain::AccountRecord],
) -> Result<Vec<String>, Error>
where
    S: Accounts,
    K: KeyRegistry,
{
    let now = ctx.clock.now();
    let mut disabled = Vec::new();
    for account in accounts {
        let expired = account.previous_key_id.is_some() && account.previous_key_until.is_none_or(|u| u <= now);
        if !expired
            && account.pending_key_work.is_none()
            && !grace_in_new_period(ctx, account, now)
            && !super::spend_cap::cap_due(ctx, account, now)
        {
            continue;
        }
        let user = account.user();
        let token = ctx.ids.token();
        let now = ctx.clock.now(); // a long scan: each user's lease from when it is taken
        let lock = store.lock_account(&user.id, &token, now, account_keys::lease_until(ctx, now)).await?;
        let crate::ports::AccountLock::Acquired(Some(mut next)) = lock else {
            if matches!(lock, crate::ports::AccountLock::Acquired(None)) {
                account_keys::release(store, &user, &token).await; // erased since the scan
            }
            continue; // busy: the next sweep
        };
        let result = async {
            if let Some(work) = next.pending_key_work.take() {
                account_keys::apply_key_work(keys, ctx, &work).await?;
            }
            let ended = match next.previous_key_id.clone() {
                Some(prev) if next.previous_key_until.is_none_or(|u| u <= now) => Some(prev),
                _ => None,
            };
            let mut work = None;
            if let Some(prev) = &ended {
                work = Some(end_grace(keys, ctx, &next, prev, now).await?);
                next.previous_key_id = None;
                next.previous_key_until = None;
                next.previous_key_remaining = None;
                next.previous_key_period_start = None;
            } else if grace_in_new_period(ctx, &next, now) {
                work = split_anew(keys, ctx, &mut next, now).await?;
            }
            if work.as_ref().is_some_and(|w| !w.targets.is_empty()) {
                // the quotas set above are of the period's limit: the spend cap, when set
                super::spend_cap::mark_applied(ctx, &mut next, now);
            } else if super::spend_cap::cap_due(ctx, &next, now) {
                // A new quota period (or a lifted suspension in one) gave the key the plan's
                // whole quota: the customer's cap again, beside a grace's end when one ended.
                let named = keys.find_by_name(&ctx.settings.key_name(&user)).await?;
                if let Some(capped) = super::spend_cap::limit_work(keys, ctx, &next, &named, now).await? {
                    work = Some(match work {
                        Some(ended) => KeyWork {
                            targets: capped.targets,
                            plan: capped.plan,
                            period_start: capped.period_start,
                            ..ended
                        },
                        None => capped,
                    });
                }
                super::spend_cap::mark_applied(ctx, &mut next, now);
            }
            next.updated_at = now;
            account_keys::commit_with_work(store, keys, ctx, &token, &mut next, work.as_ref(), now).await?;
            Ok::<_, Error>(ended)
        }
        .await;
        match result {
            Ok(Some(prev)) => {
                tracing::info!(user = %user, api_key_id = %prev, "rotated-out key disabled at the end of its grace");
                disabled.push(prev);
            }
            Ok(None) => {}
            Err(e) => {
                account_keys::release(store, &user, &token).await;
                tracing::warn!(user = %user, error = %e, "could not end a rotated key's grace; the next sweep retries");
            }
        }
    }
    Ok(disabled)
}

/// Whether a grace still running began its quota split in an earlier quota period (API Gateway
/// then gives both keys the whole quota of the new period).
fn grace_in_new_period(
    ctx: Ctx<'_>,
    account: &crate::domain::AccountRecord,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    let (Some(_), Some(split)) = (&account.previous_key_id, account.previous_key_period_start) else {
        return false;
    };
    let quota = ctx.settings.tier_of(&account.plan).and_then(|t| t.quota);
    quota.is_some_and(|q| q.period.containing(now.date_naive()).0 != split)
}

/// A grace that ran into a new quota period: the new period's quota split between the two keys
/// as a rotation splits it (half each, less what each used of it so far). Until this runs (the
/// sweep: every minute on AWS) both keys hold the new period's whole quota.
async fn split_anew<K: KeyRegistry>(
    keys: &K,
    ctx: Ctx<'_>,
    account: &mut crate::domain::AccountRecord,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<KeyWork>, Error> {
    let tier = ctx.settings.tier_of(&account.plan);
    let metered =
        tier.and_then(|t| Some((t.usage_plan_id.clone()?, t.quota?, account_keys::quota_limit(Some(account), t)?)));
    let (Some(prev), Some(current), Some((plan, q, limit))) =
        (account.previous_key_id.clone(), account.api_key_id.clone(), metered)
    else {
        return Ok(None);
    };
    let (start, end) = q.period.containing(now.date_naive());
    account.previous_key_period_start = Some(start);
    if prev == current || !keys.plans_of(&prev).await?.contains(&plan) {
        return Ok(None);
    }
    let (p, c) = tokio::try_join!(keys.usage(&prev, &plan, start, end), keys.usage(&current, &plan, start, end))?;
    let pool = limit.saturating_sub(p.used + c.used);
    let keep = pool - pool / 2;
    Ok(Some(KeyWork {
        plan: Some(plan),
        period_start: Some(start),
        targets: vec![
            QuotaTarget { key_id: current.clone(), remaining: pool - keep, counted: vec![(current, c.used)] },
            QuotaTarget { key_id: prev.clone(), remaining: keep, counted: vec![(prev, p.used)] },
        ],
        retire: Vec::new(),
    }))
}

/// The end of `prev`'s grace, as key work: `prev` retired, and what it has not used of the
/// period added to the current key's remaining (when both are in the current tier's plan; a
/// tier change meanwhile moved the current key to another plan, whose quota is its own).
async fn end_grace<K: KeyRegistry>(
    keys: &K,
    ctx: Ctx<'_>,
    account: &crate::domain::AccountRecord,
    prev: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<KeyWork, Error> {
    let mut work = KeyWork { plan: None, period_start: None, targets: Vec::new(), retire: vec![prev.to_string()] };
    let current = account.api_key_id.clone().filter(|c| c != prev);
    let metered = ctx
        .settings
        .tier_of(&account.plan)
        .and_then(|t| Some((t.usage_plan_id.clone()?, t.quota?, account_keys::quota_limit(Some(account), t)?)));
    let (Some(current), Some((plan, q, limit))) = (current, metered) else {
        return Ok(work);
    };
    if !keys.plans_of(prev).await?.contains(&plan) {
        return Ok(work);
    }
    let (start, end) = q.period.containing(now.date_naive());
    let (p, c) = tokio::try_join!(keys.usage(prev, &plan, start, end), keys.usage(&current, &plan, start, end))?;
    let (left, mine) = (p.remaining.unwrap_or(0), c.remaining.unwrap_or(0));
    let remaining = match account.previous_key_remaining {
        // A grace begun by an earlier version gave both keys the whole remaining: what the
        // previous key used in it comes off the current key (and never above the limit).
        Some(at) => mine.saturating_sub(at.saturating_sub(left)).min(limit.saturating_sub(c.used + p.used)),
        // never more than the period's quota less what the two used of it (see `rotate_key`)
        None => (mine + left).min(limit.saturating_sub(c.used + p.used)),
    };
    work.targets.push(QuotaTarget {
        key_id: current.clone(),
        remaining,
        counted: vec![(current, c.used), (prev.to_string(), p.used)],
    });
    work.plan = Some(plan);
    work.period_start = Some(start);
    Ok(work)
}

/// What one scheduled run did.
#[derive(Debug)]
pub struct ScheduledRun {
    /// Rotated-out keys disabled at the end of their grace, or why the sweep failed.
    pub disabled: Result<Vec<String>, Error>,
    /// Users whose complimentary tier ended in this run, or why that pass failed.
    pub comps_ended: Result<Vec<User>, Error>,
    /// Idle free keys deleted, or why that failed: on the hour's run (`None` on the others;
    /// nothing is deleted without `FREE_KEY_IDLE_DAYS`).
    pub reclaimed: Option<Result<Vec<String>, Error>>,
    /// The account's API keys (every key, paykey's or not), counted on the first run of each
    /// hour for the ceiling alarm; `None` on the other runs or when counting failed.
    pub key_count: Option<usize>,
    /// The usage report to Stripe's meter ([`super::metering::report_usage`]): on the hour's
    /// run when Stripe is configured (`None` on the others); nothing is read without a metered
    /// tier.
    pub usage: Option<Result<super::metering::UsageReport, Error>>,
}

/// The `sweep-keys` function's run (every minute): on the run scheduled for minute 0 of each
/// hour (`scheduled`: the schedule event's RFC 3339 `time`, else the clock) the account's API
/// key count (GetApiKeys pages: 20 calls at 10,000 keys), before and whatever the sweep does,
/// and the reclaim of idle free keys ([`super::reclaim_idle_free_keys`]); then, on one listing
/// of the records, [`sweep_expired_keys`] and [`end_expired_comps`]. A failed count is logged and does not fail the run.
pub async fn scheduled_run<S, K, U, M>(
    store: &S,
    keys: &K,
    users: &U,
    meter: Option<&M>,
    ctx: Ctx<'_>,
    scheduled: Option<&str>,
) -> ScheduledRun
where
    S: Accounts + crate::ports::AccountListing + crate::ports::metering::UsageCursor + crate::ports::ProcessedEvents,
    K: crate::ports::admin::KeyDeletion,
    U: crate::ports::UserDirectory,
    M: crate::ports::metering::UsageMeter,
{
    use chrono::Timelike;
    let at = scheduled
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| ctx.clock.now());
    let key_count = if at.minute() == 0 {
        match keys.count_keys().await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "API key count failed");
                None
            }
        }
    } else {
        None
    };
    // One listing of the records for every pass.
    let hourly = at.minute() == 0;
    let (disabled, comps_ended, reclaimed, usage) = match store.list_accounts().await {
        Ok(accounts) => {
            // The minute's work first; the reclaim and the usage report (hourly) after it.
            let disabled = sweep_listed(store, keys, ctx, &accounts).await;
            let comps = end_comps_listed(store, keys, users, ctx, &accounts).await;
            let reclaimed = match hourly {
                true => Some(super::reclaim_idle_free_keys(store, keys, ctx, &accounts).await),
                false => None,
            };
            let usage = match (hourly, meter) {
                (true, Some(m)) => Some(match super::metering::report_usage(keys, m, store, ctx, &accounts).await {
                    Ok(mut r) => super::metering::announce_thresholds(store, keys, ctx, &accounts).await.map(|a| {
                        r.alerts = a;
                        r
                    }),
                    Err(e) => Err(e),
                }),
                _ => None,
            };
            (disabled, comps, reclaimed, usage)
        }
        Err(e) => (
            Err(Error::Backend(e.clone())),
            Err(Error::Backend(e.clone())),
            hourly.then(|| Err(Error::Backend(e.clone()))),
            (hourly && meter.is_some()).then_some(Err(Error::Backend(e))),
        ),
    };
    ScheduledRun { disabled, comps_ended, reclaimed, key_count, usage }
}

/// Ends every complimentary tier whose end has passed: under the account lock, the user goes
/// back to what the record's subscription buys (kept in step by the webhooks), else the free
/// plan — key moved, directory written, comp cleared with the record, last (a crash before is
/// redone by the next run). A user busy elsewhere is left for the next run; one whose name is
/// no longer theirs in the directory (deleted) has the comp cleared and their keys revoked,
/// and nothing written to the directory. A full listing of the records. Returns the users whose
/// comp ended.
pub async fn end_expired_comps<S, K, U>(store: &S, keys: &K, users: &U, ctx: Ctx<'_>) -> Result<Vec<User>, Error>
where
    S: Accounts + crate::ports::AccountListing,
    K: KeyRegistry,
    U: crate::ports::UserDirectory,
{
    end_comps_listed(store, keys, users, ctx, &store.list_accounts().await?).await
}

/// [`end_expired_comps`] over records listed already.
async fn end_comps_listed<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    accounts: &[crate::domain::AccountRecord],
) -> Result<Vec<User>, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: crate::ports::UserDirectory,
{
    let mut ended = Vec::new();
    for account in accounts {
        if account.comp.as_ref().is_none_or(|c| c.active(ctx.clock.now())) {
            continue;
        }
        let user = account.user();
        let token = ctx.ids.token();
        let key_name = ctx.settings.key_name(&user);
        let locked = match account_keys::lock_with_key_lookup(store, keys, ctx, &user, &token, &key_name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "could not end a complimentary tier; the next run retries");
                continue;
            }
        };
        let result = async {
            let Some(mut next) = locked.account else {
                account_keys::release(store, &user, &token).await;
                return Ok(false); // erased meanwhile
            };
            if next.comp.as_ref().is_none_or(|c| c.active(ctx.clock.now())) {
                account_keys::release(store, &user, &token).await;
                return Ok(false); // changed meanwhile (renewed by an operator)
            }
            let holder = users.get_user(&user.name).await?;
            if holder.is_some_and(|p| p.is(&user)) {
                super::lifecycle::converge_recorded(keys, users, ctx, &user, &key_name, &locked.named, &mut next)
                    .await?;
            } else {
                tracing::warn!(user = %user, "the comped user no longer holds the name; keys revoked, directory untouched");
                account_keys::revoke_keys(keys, &locked.named, next.api_key_id.as_deref()).await?;
                next.plan = ctx.settings.free_plan();
            }
            next.comp = None;
            match store.put_account(&next, &token).await? {
                Commit::Done => Ok(true),
                Commit::LeaseLost => Err(Error::FulfilmentInProgress),
            }
        }
        .await;
        match result {
            Ok(true) => {
                tracing::info!(user = %user, "complimentary tier ended");
                ended.push(user);
            }
            Ok(false) => {}
            Err(e) => {
                account_keys::release(store, &user, &token).await;
                tracing::warn!(user = %user, error = %e, "could not end a complimentary tier; the next run retries");
            }
        }
    }
    Ok(ended)
}
