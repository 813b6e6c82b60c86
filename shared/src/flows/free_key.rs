//! `POST /api-key`: the free tier's key, on request (never at sign-up: every key counts against
//! API Gateway's 10,000 keys per account and Region).

use serde::Serialize;

use super::{account_keys, ApiKeyView, Ctx};
use crate::domain::{AccountRecord, Error, Plan, User};
use crate::ports::{Accounts, Commit, KeyRegistry, UserDirectory};

/// Answer of `POST /api-key`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FreeKey {
    /// The caller's plan (the free tier, or the paid tier they are on: its key is the answer).
    pub plan: Plan,
    pub api_key: ApiKeyView,
    /// `false`: the caller had a working key already, and this is it.
    pub created: bool,
}

/// The caller's one key for life: created on the free tier's usage plan when they have none
/// working, else the key they have (also a paid tier's). Idempotent and crash-safe like
/// fulfilment: the key is named after the user's `sub` and looked up by name under the account
/// lock before one is created, placed in the free plan idempotently, and the record written
/// last. Without a free tier with a usage plan in the catalog: `NoFreeTier`, nothing written.
pub async fn issue_free_key<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    user: &User,
) -> Result<FreeKey, Error>
where
    S: Accounts + crate::ports::Budgets,
    K: KeyRegistry,
    U: UserDirectory,
{
    let settings = ctx.settings;
    let free = settings.catalog.free().filter(|t| t.usage_plan_id.is_some()).ok_or(Error::NoFreeTier)?;
    let free_plan_id = free.usage_plan_id.clone().expect("filtered");
    // Round trip 1: the caller's budget, the record and the caller's profile, side by side.
    let ((), account, profile) = tokio::try_join!(
        super::spend_budget(store, ctx, user, super::Spending::FreeKey),
        async { Ok(store.get_account(&user.id).await?) },
        async { Ok(users.get_user(&user.name).await?) },
    )?;
    profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    if account.as_ref().is_some_and(|a| a.suspension.is_some()) {
        return Err(Error::Suspended);
    }
    if let Some(done) = working_key(keys, settings, account.as_ref()).await? {
        return Ok(done);
    }
    // Round trip 2: the account lock beside the lookup of a key by the user's name (a crashed
    // attempt may have created it).
    let token = ctx.ids.token();
    let key_name = settings.key_name(user);
    let mut locked = account_keys::lock_with_key_lookup(store, keys, ctx, user, &token, &key_name).await?;
    let result = async {
        // Under the lock, the name's holder again (a deletion may have freed it since the first
        // read; the directory write below goes by name), beside the legacy lookup.
        let (profile, ()) = tokio::try_join!(
            async { users.get_user(&user.name).await.map_err(Error::from) },
            locked.adopt_legacy(store, user)
        )?;
        let profile = profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
        if locked.account.as_ref().is_some_and(|a| a.suspension.is_some()) {
            return Err(Error::Suspended);
        }
        // Under the lock: another request (or a checkout) may have given the key meanwhile.
        if let Some(done) = working_key(keys, settings, locked.account.as_ref()).await? {
            account_keys::release(store, user, &token).await;
            return Ok(done);
        }
        let now = ctx.clock.now();
        let mut next = locked.account.clone().unwrap_or_else(|| AccountRecord::new(user, now));
        let plan = Plan::of(&free.name);
        // Rounds 3–4: the key found or created, placed in the free plan; Cognito is written only
        // when its plan is not the free tier's already (UserUpdate is limited per account).
        let spare = account_keys::spared(&next, now).map(str::to_string);
        let (key, fresh) =
            account_keys::ensure_key(keys, &key_name, &locked.named, next.api_key_id.as_deref(), spare.as_deref())
                .await?;
        let write_plan = async {
            if profile.plan() != plan {
                users.set_plan(&user.name, plan.clone(), None).await?;
            }
            Ok::<_, Error>(())
        };
        tokio::try_join!(
            account_keys::move_into_plan(
                keys,
                ctx,
                locked.account.as_ref(),
                &locked.named,
                &key.id,
                &free_plan_id,
                fresh
            ),
            write_plan
        )?;
        next.plan = plan.clone();
        next.api_key_id = Some(key.id.clone());
        next.user_name = user.name.clone();
        next.updated_at = now;
        // Round 5: the record (releases the lock), then the value.
        match store.put_account(&next, &token).await? {
            Commit::Done => account_keys::retire_legacy(store, user, locked.from_legacy).await,
            Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        let value = keys.key_value(&key.id).await?.ok_or(Error::FulfilmentInProgress)?;
        tracing::info!(user = %user, api_key_id = %key.id, plan = %plan, "free key issued");
        Ok(FreeKey { plan, api_key: ApiKeyView { id: key.id, value, enabled: true }, created: true })
    }
    .await;
    if result.is_err() {
        account_keys::release(store, user, &token).await;
    }
    result
}

/// The recorded key, when the record's tier gives it a usage plan (it works): the answer.
async fn working_key<K: KeyRegistry>(
    keys: &K,
    settings: &super::Settings,
    account: Option<&AccountRecord>,
) -> Result<Option<FreeKey>, Error> {
    let Some(a) = account else { return Ok(None) };
    let Some(id) = a.api_key_id.as_deref() else { return Ok(None) };
    if settings.tier_of(&a.plan).is_none_or(|t| t.usage_plan_id.is_none()) {
        return Ok(None);
    }
    Ok(keys.key_value(id).await?.map(|value| FreeKey {
        plan: a.plan.clone(),
        api_key: ApiKeyView { id: id.to_string(), value, enabled: true },
        created: false,
    }))
}
