//! Key management shared by fulfilment and the subscription lifecycle. Callers hold the
//! user's account lock, so one attempt at a time manages a user's key.

use chrono::{DateTime, Utc};

use super::Ctx;
use crate::domain::{AccountRecord, Error, IssuedKey, KeyWork, User};
use crate::ports::{AccountLock, Accounts, KeyRegistry};

/// The user's one enabled key: the recorded one, else one with the user's key name, else a new
/// one (`true`: created now, so in no usage plan yet). Other enabled keys with the same name
/// are disabled and detached: never two enabled keys for one user. The caller puts it in its
/// tier's usage plan ([`place_in_plan`]).
/// `spare`: a rotation's previous key still in its grace (it keeps working until then).
pub(crate) async fn ensure_key<K: KeyRegistry>(
    keys: &K,
    key_name: &str,
    named: &[IssuedKey],
    recorded: Option<&str>,
    spare: Option<&str>,
) -> Result<(IssuedKey, bool), Error> {
    let chosen = choose_key(keys, named, recorded).await?;
    let (key, created) = match chosen {
        Some(k) if k.enabled => (k, false),
        Some(k) => {
            keys.set_enabled(&k.id, true).await?;
            (IssuedKey { enabled: true, ..k }, false)
        }
        None => (keys.create(key_name).await?, true),
    };
    for extra in named.iter().filter(|k| k.enabled && k.id != key.id && Some(k.id.as_str()) != spare) {
        tracing::warn!(api_key_id = %extra.id, "disabling a second enabled key of one user");
        keys.set_enabled(&extra.id, false).await?;
        detach_from_every_plan(keys, &extra.id).await?;
    }
    Ok((key, created))
}

/// The previous key of a rotation while its grace lasts.
pub(crate) fn spared(account: &crate::domain::AccountRecord, now: DateTime<Utc>) -> Option<&str> {
    account.previous_key_id.as_deref().filter(|_| account.previous_key_until.is_some_and(|t| t > now))
}

/// Puts the key in `plan` and in no other. API Gateway allows one usage plan per key and stage,
/// so a move between tiers detaches from the old plan first, then attaches to the new one: a
/// crash in between leaves the key in no plan (its calls are refused) until the retry (the
/// webhook's, or the next event's: the caller writes the account record only after this), which
/// reads the key's plans again and finishes the move. `fresh`: the key was created now and is in
/// no plan (one call saved).
/// Returns whether the key entered the plan now (it was not in it).
pub(crate) async fn place_in_plan<K: KeyRegistry>(keys: &K, id: &str, plan: &str, fresh: bool) -> Result<bool, Error> {
    let current = if fresh { Vec::new() } else { keys.plans_of(id).await? };
    let moving = !current.is_empty() && !current.iter().any(|p| p == plan);
    for old in current.iter().filter(|p| p.as_str() != plan) {
        tracing::info!(api_key_id = %id, from = %old, to = %plan, "moving the key to another usage plan");
        keys.detach_from_plan(id, old).await?;
    }
    if moving {
        // Counted once it has left the old plan (a retry finds it in none: not counted again).
        crate::telemetry::keys("Moved");
    }
    let entered = !current.iter().any(|p| p == plan);
    if entered {
        keys.attach_to_plan(id, plan).await?;
    }
    Ok(entered)
}

/// The calls `tier`'s plan serves `account` in a quota period: the tier's quota, or on a metered
/// tier the spend cap the customer set for it ([`crate::domain::SpendCap`]), never below the
/// included amount nor above the quota. `None`: the tier has no quota.
pub(crate) fn quota_limit(account: Option<&AccountRecord>, tier: &crate::domain::Tier) -> Option<u64> {
    let limit = u64::from(tier.quota?.limit);
    let cap = account
        .and_then(|a| a.spend_cap.as_ref())
        .filter(|c| c.plan.as_str() == tier.name.as_str())
        .zip(tier.metered.as_ref())
        .map(|(c, m)| c.requests.clamp(m.included.min(limit), limit));
    Some(cap.unwrap_or(limit))
}

/// [`place_in_plan`] for the user's key `id`, and when it entered a plan with a quota, its
/// remaining quota for the period set to what the user's keys (every generation, by name) left
/// of its limit ([`quota_limit`]: the quota, or the customer's spend cap): API Gateway counts per key and plan, so a key new to the plan — one made by a rotation
/// while the user was on another tier — would otherwise start with the whole quota again. A key
/// API Gateway reports no usage for counts 0 (the one place the quota bound rests on GetUsage
/// reporting the use of keys no longer in the plan).
pub(crate) async fn move_into_plan<K: KeyRegistry>(
    keys: &K,
    ctx: Ctx<'_>,
    account: Option<&AccountRecord>,
    named: &[IssuedKey],
    id: &str,
    plan: &str,
    fresh: bool,
) -> Result<(), Error> {
    let entered = place_in_plan(keys, id, plan, fresh).await?;
    let tier = ctx.settings.catalog.tiers().iter().find(|t| t.usage_plan_id.as_deref() == Some(plan));
    let (true, Some(t), Some(q)) = (entered, tier, tier.and_then(|t| t.quota)) else { return Ok(()) };
    let limit = quota_limit(account, t).unwrap_or(u64::from(q.limit));
    if fresh && named.is_empty() && limit == u64::from(q.limit) {
        return Ok(()); // the user's first key: nothing used the plan, the whole quota is theirs
    }
    let (start, end) = q.period.containing(ctx.clock.now().date_naive());
    let mut ids: Vec<&str> = named.iter().map(|k| k.id.as_str()).collect();
    if !ids.contains(&id) {
        ids.push(id);
    }
    let mut used = 0u64;
    for k in ids {
        if let Ok(u) = keys.usage(k, plan, start, end).await {
            used += u.used;
        }
    }
    keys.set_remaining(id, plan, limit.saturating_sub(used)).await?;
    Ok(())
}

pub(crate) async fn detach_from_every_plan<K: KeyRegistry>(keys: &K, id: &str) -> Result<(), Error> {
    for plan in keys.plans_of(id).await? {
        keys.detach_from_plan(id, &plan).await?;
    }
    Ok(())
}

async fn choose_key<K: KeyRegistry>(
    keys: &K,
    named: &[IssuedKey],
    recorded: Option<&str>,
) -> Result<Option<IssuedKey>, Error> {
    if let Some(id) = recorded {
        if let Some(k) = named.iter().find(|k| k.id == id) {
            return Ok(Some(k.clone()));
        }
        // A key from before the naming scheme (e.g. migrated from the Python version).
        if let Some(k) = keys.get(id).await? {
            return Ok(Some(k));
        }
    }
    Ok(named.iter().find(|k| k.enabled).or_else(|| named.first()).cloned())
}

/// Disables every key of the user and detaches it from its usage plan (a catalog without a free
/// tier: FREE users have no working key).
pub(crate) async fn revoke_keys<K: KeyRegistry>(
    keys: &K,
    named: &[IssuedKey],
    recorded: Option<&str>,
) -> Result<(), Error> {
    let mut ids: Vec<&str> = named.iter().map(|k| k.id.as_str()).collect();
    if let Some(r) = recorded {
        if !ids.contains(&r) {
            ids.push(r);
        }
    }
    for id in ids {
        // Independent calls: side by side.
        let (disabled, detached) = tokio::join!(keys.set_enabled(id, false), detach_from_every_plan(keys, id));
        match disabled {
            Ok(()) => {}
            // A recorded key deleted by hand in the console: nothing left to disable.
            Err(e) if keys.get(id).await?.is_none() => {
                tracing::warn!(api_key_id = %id, error = %e, "recorded key no longer exists")
            }
            Err(e) => return Err(e.into()),
        }
        detached?;
    }
    Ok(())
}

/// Takes the user's account lock, waiting a little for another holder to finish. Returns the
/// account record as it stands.
pub(crate) async fn lock_account_waiting<S: Accounts>(
    store: &S,
    ctx: Ctx<'_>,
    user: &User,
    token: &str,
    first_try: Option<AccountLock>,
) -> Result<Option<AccountRecord>, Error> {
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    let mut attempt = first_try;
    loop {
        let outcome = match attempt.take() {
            Some(o) => o,
            None => {
                let now = ctx.clock.now();
                store.lock_account(&user.id, token, now, lease_until(ctx, now)).await?
            }
        };
        match outcome {
            AccountLock::Acquired(record) => return Ok(record),
            AccountLock::Busy if started.elapsed() < ctx.settings.wait_for_peer => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(500));
            }
            AccountLock::Busy => return Err(Error::FulfilmentInProgress),
        }
    }
}

/// One attempt at the user's account lock beside the lookup of the user's keys by name
/// (independent calls: side by side). If either fails, a lock taken is released.
pub(crate) async fn try_lock_with_key_lookup<S: Accounts, K: KeyRegistry>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    user: &User,
    token: &str,
    key_name: &str,
) -> Result<(AccountLock, Vec<IssuedKey>), Error> {
    let now = ctx.clock.now();
    let (lock, named) =
        tokio::join!(store.lock_account(&user.id, token, now, lease_until(ctx, now)), keys.find_by_name(key_name));
    match (lock, named) {
        (Ok(l), Ok(n)) => Ok((l, n)),
        (l, n) => {
            if matches!(l, Ok(AccountLock::Acquired(_))) {
                release(store, user, token).await;
            }
            Err(Error::Backend(l.err().or(n.err()).expect("one of them failed")))
        }
    }
}

/// The user's account as the lock returned it, the user's keys by name, and whether the
/// record came from a name-keyed record of an earlier version (then the caller retires that
/// one after writing the new record).
pub(crate) struct Locked {
    pub account: Option<AccountRecord>,
    pub named: Vec<IssuedKey>,
    pub from_legacy: bool,
}

/// Finishes taking the lock from a first attempt (waiting a little for another holder) and
/// returns the account record and the user's keys by name. After a wait the keys are looked
/// up again: the holder we waited for (or crashed one) may have created a key meanwhile. A
/// name-keyed record of an earlier version is looked up by the caller ([`Locked::adopt_legacy`])
/// beside its other reads.
pub(crate) async fn finish_locking<S: Accounts, K: KeyRegistry>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    user: &User,
    token: &str,
    key_name: &str,
    first: (AccountLock, Vec<IssuedKey>),
) -> Result<Locked, Error> {
    let (lock, named) = first;
    let waited = matches!(lock, AccountLock::Busy);
    let account = lock_account_waiting(store, ctx, user, token, Some(lock)).await?;
    let named = if waited {
        match keys.find_by_name(key_name).await {
            Ok(n) => n,
            Err(e) => {
                release(store, user, token).await;
                return Err(e.into());
            }
        }
    } else {
        named
    };
    // Key changes a crashed or failed holder wrote down and may not have made: made now (nothing
    // changes if they were), and cleared by this holder's write.
    let mut account = account;
    let mut named = named;
    if let Some(a) = account.as_mut() {
        if let Some(work) = a.pending_key_work.take() {
            match apply_key_work(keys, ctx, &work).await {
                // The keys by name were read before: the ones just retired are disabled now
                // (never taken for a crashed attempt's new key, or for the user's enabled one).
                Ok(()) => {
                    for k in named.iter_mut().filter(|k| work.retire.contains(&k.id)) {
                        k.enabled = false;
                    }
                }
                // Kept in the record (this holder's write keeps it) for the next holder: a
                // webhook still lands (a user is never stuck behind key work that keeps
                // failing); a rotation refuses to start on top of it.
                Err(e) => {
                    tracing::warn!(user = %user, error = %e, "pending key work failed; kept for the next holder");
                    a.pending_key_work = Some(work);
                }
            }
        }
    }
    Ok(Locked { account, named, from_legacy: false })
}

/// Makes the changes `work` describes; the same result however often, and whenever in its
/// quota period, it is done (see [`KeyWork`]): retired keys are disabled first (from then on
/// they serve nothing), each target is set less what its counted keys used since it was
/// computed, then the retired keys leave every usage plan. Every step is tried even when one
/// fails (a key that could not be disabled is still detached: in no plan it serves nothing);
/// the first error is returned, and the work stays written down for the next holder.
pub(crate) async fn apply_key_work<K: KeyRegistry>(keys: &K, ctx: Ctx<'_>, work: &KeyWork) -> Result<(), Error> {
    let mut first: Option<Error> = None;
    let mut keep = |r: Result<(), Error>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    for id in &work.retire {
        keep(disable_if_exists(keys, id).await);
    }
    if let (Some(plan), Some(start)) = (&work.plan, work.period_start) {
        let tier = ctx.settings.catalog.tiers().iter().find(|t| t.usage_plan_id.as_deref() == Some(plan.as_str()));
        let period = tier.and_then(|t| t.quota).map(|q| q.period.containing(ctx.clock.now().date_naive()));
        // In a later period the plan's full quota applies again: nothing to carry.
        if let Some((first_day, last_day)) = period.filter(|(first_day, _)| *first_day == start) {
            for t in &work.targets {
                let target = async {
                    // A key no longer in the plan (moved by a tier change since, or deleted by
                    // hand): its quota there serves nothing, and UpdateUsage would refuse it.
                    if !keys.plans_of(&t.key_id).await?.iter().any(|p| p == plan) {
                        return Ok(());
                    }
                    let mut since = 0u64;
                    for (id, then) in &t.counted {
                        let now = match keys.usage(id, plan, first_day, last_day).await {
                            Ok(u) => u.used,
                            // a counted key deleted by hand serves nothing more
                            Err(_) if keys.get(id).await?.is_none() => *then,
                            Err(e) => return Err(e.into()),
                        };
                        since += now.saturating_sub(*then);
                    }
                    keys.set_remaining(&t.key_id, plan, t.remaining.saturating_sub(since)).await?;
                    Ok::<(), Error>(())
                };
                keep(target.await);
            }
        }
    }
    for id in &work.retire {
        keep(detach_from_every_plan(keys, id).await);
    }
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Disables a key; one deleted by hand meanwhile is already as good as disabled.
pub(crate) async fn disable_if_exists<K: KeyRegistry>(keys: &K, id: &str) -> Result<(), Error> {
    match keys.set_enabled(id, false).await {
        Ok(()) => Ok(()),
        Err(_) if keys.get(id).await?.is_none() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Locked {
    /// A user with no record of their own takes over the record an earlier version keyed by
    /// their name, if there is one (one DynamoDB read, only while the user has no record: the
    /// caller runs it beside its other reads).
    pub(crate) async fn adopt_legacy<S: Accounts>(&mut self, store: &S, user: &User) -> Result<(), Error> {
        if self.account.is_none() {
            if let Some(legacy) = store.legacy_account(user).await? {
                tracing::info!(user = %user, "adopting the record an earlier version keyed by the user name");
                self.account = Some(legacy);
                self.from_legacy = true;
            }
        }
        Ok(())
    }
}

impl Locked {
    /// [`Locked::adopt_legacy`] with the name-keyed record read beside the lock (valid when the
    /// lock was taken at the first attempt: no holder since can have adopted it).
    pub(crate) fn adopt(&mut self, legacy: Option<AccountRecord>) {
        if let (None, Some(legacy)) = (&self.account, legacy) {
            tracing::info!(user_id = %legacy.user_id, "adopting the record an earlier version keyed by the user name");
            self.account = Some(legacy);
            self.from_legacy = true;
        }
    }
}

/// After the new record is written: the name-keyed one is retired (best effort; while it is
/// not, it is never read, as the user now has a record of their own).
pub(crate) async fn retire_legacy<S: Accounts>(store: &S, user: &User, locked_from_legacy: bool) {
    if locked_from_legacy {
        if let Err(e) = store.retire_legacy_account(user).await {
            tracing::warn!(user = %user, error = %e, "could not retire the name-keyed record; it is never read again");
        }
    }
}

/// The user's account lock and keys by name: [`try_lock_with_key_lookup`] then
/// [`finish_locking`].
pub(crate) async fn lock_with_key_lookup<S: Accounts, K: KeyRegistry>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    user: &User,
    token: &str,
    key_name: &str,
) -> Result<Locked, Error> {
    let first = try_lock_with_key_lookup(store, keys, ctx, user, token, key_name).await?;
    finish_locking(store, keys, ctx, user, token, key_name, first).await
}

/// Writes the held account with its key `work` (if any) noted and the lock kept, makes the work
/// under the lock, then writes the account with the work cleared as the lock is given back. A
/// crash or failure in between leaves the work noted for the next holder of the lock (a retry,
/// any flow, the sweep within a minute), which makes it again with the same result
/// ([`KeyWork`]'s targets are stated against the use they were computed from).
pub(crate) async fn commit_with_work<S: Accounts, K: KeyRegistry>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    token: &str,
    next: &mut AccountRecord,
    work: Option<&KeyWork>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    if let Some(work) = work {
        next.pending_key_work = Some(work.clone());
        match store.save_account(next, token, lease_until(ctx, now)).await? {
            crate::ports::Commit::Done => {}
            crate::ports::Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        apply_key_work(keys, ctx, work).await?;
        next.pending_key_work = None;
    }
    match store.put_account(next, token).await? {
        crate::ports::Commit::Done => Ok(()),
        crate::ports::Commit::LeaseLost => Err(Error::FulfilmentInProgress),
    }
}

pub(crate) fn lease_until(ctx: Ctx<'_>, now: DateTime<Utc>) -> DateTime<Utc> {
    now + super::chrono_duration(ctx.settings.lease)
}

/// Releases the lock after a failure, so a retry need not wait for the lease to expire. Best
/// effort: a crash leaves the lease to expire instead.
pub(crate) async fn release<S: Accounts>(store: &S, user: &User, token: &str) {
    if let Err(e) = store.unlock_account(&user.id, token).await {
        tracing::warn!(user = %user, error = %e, "could not release the account lock; it expires with its lease");
    }
}
