//! Operator actions (`paykey-admin`): one user's state seen whole, a complimentary tier, a
//! suspension, an erasure. Each changes a user under their account lock, like the flows the
//! functions run, and is written down before it is made where a crash could leave it half done:
//! running the same command again finishes it (and the webhooks and the sweep honour what the
//! record says meanwhile).

use chrono::{DateTime, Utc};

use super::{account_keys, lifecycle, Ctx, SyncOutcome};
use crate::domain::{
    AccountRecord, Comp, CustomerId, Error, IssuedKey, Plan, SubscriptionId, Suspension, User, UserId, UserName,
    UserProfile,
};
use crate::ports::admin::{AccountErasure, DirectoryAdmin, KeyDeletion, PaymentsAdmin};
use crate::ports::{
    AccountListing, Accounts, Commit, KeyRegistry, KeyUsage, Payments, SubscriptionState, SubscriptionStatus,
    UserDirectory,
};

/// How an operator names a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Sub(UserId),
    Name(UserName),
    Email(String),
    Customer(CustomerId),
    /// An API key id (API Gateway's).
    Key(String),
}

impl Who {
    /// `sub:…`, `name:…`, `email:…`, `key:…`, or without a prefix: `cus_…` is a customer, a
    /// string with `@` an email address, a UUID a `sub`, anything else a user name.
    pub fn parse(s: &str) -> Result<Who, Error> {
        let bad = |e: String| Error::BadRequest(e);
        let s = s.trim();
        let (prefix, rest) = s.split_once(':').unwrap_or(("", s));
        Ok(match prefix {
            "sub" => Who::Sub(UserId::parse(rest).map_err(|e| bad(e.to_string()))?),
            "name" => Who::Name(UserName::parse(rest).map_err(|e| bad(e.to_string()))?),
            "email" if rest.contains('@') => Who::Email(rest.to_string()),
            "email" => return Err(bad(format!("{rest:?} is not an email address"))),
            "key" if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()) => Who::Key(rest.into()),
            "key" => return Err(bad(format!("{rest:?} is not an API key id"))),
            _ if s.starts_with("cus_") => Who::Customer(CustomerId::parse(s).map_err(|e| bad(e.to_string()))?),
            _ if s.contains('@') => Who::Email(s.to_string()),
            _ if uuid::Uuid::parse_str(s).is_ok() => Who::Sub(UserId::parse(s).map_err(|e| bad(e.to_string()))?),
            _ => Who::Name(UserName::parse(s).map_err(|e| bad(e.to_string()))?),
        })
    }
}

/// The user `who` names: from the directory, else from paykey's records (a user deleted from
/// the directory but whose record, keys or subscription remain — e.g. an erasure that stopped
/// half way). `None`: no trace. Several users with one email address: `BadRequest` naming them.
pub async fn find_user<S, K, U>(store: &S, keys: &K, users: &U, ctx: Ctx<'_>, who: &Who) -> Result<Option<User>, Error>
where
    S: Accounts + AccountListing,
    K: KeyRegistry,
    U: DirectoryAdmin,
{
    let by_record = |pred: &dyn Fn(&AccountRecord) -> bool, list: Vec<AccountRecord>| {
        list.into_iter().find(|a| pred(a)).map(|a| a.user())
    };
    Ok(match who {
        Who::Sub(sub) => match store.get_account(sub).await? {
            Some(a) => Some(a.user()),
            None => users.find_by_sub(sub).await?.map(|name| User { id: sub.clone(), name }),
        },
        Who::Name(name) => match users.get_user(name).await?.and_then(|p| p.sub) {
            Some(id) => Some(User { id, name: name.clone() }),
            None => by_record(&|a| &a.user_name == name, store.list_accounts().await?),
        },
        Who::Email(email) => {
            let names = users.find_by_email(email).await?;
            match names.as_slice() {
                [] => None,
                [name] => users.get_user(name).await?.and_then(|p| p.sub).map(|id| User { id, name: name.clone() }),
                many => {
                    let list: Vec<&str> = many.iter().map(|n| n.as_str()).collect();
                    return Err(Error::BadRequest(format!(
                        "{} users have {email}: {}; name one by name",
                        many.len(),
                        list.join(", ")
                    )));
                }
            }
        }
        Who::Customer(customer) => match store.find_account_by_customer(customer).await? {
            Some(a) => Some(a.user()),
            None => match users.find_by_customer(customer).await? {
                Some(name) => users.get_user(&name).await?.and_then(|p| p.sub).map(|id| User { id, name }),
                None => None,
            },
        },
        Who::Key(id) => {
            // The key's name is the prefix and the owner's sub; a key of an earlier naming scheme
            // is found through the record that holds it.
            let owner = keys
                .get(id)
                .await?
                .and_then(|k| k.name.strip_prefix(&ctx.settings.key_name_prefix).map(str::to_string))
                .and_then(|sub| UserId::parse(&sub).ok());
            match owner {
                Some(sub) => match store.get_account(&sub).await? {
                    Some(a) => Some(a.user()),
                    None => users.find_by_sub(&sub).await?.map(|name| User { id: sub, name }),
                },
                None => by_record(
                    &|a| a.api_key_id.as_deref() == Some(id) || a.previous_key_id.as_deref() == Some(id),
                    store.list_accounts().await?,
                ),
            }
        }
    })
}

/// One key of the user, as API Gateway has it.
#[derive(Debug, Clone)]
pub struct KeyReport {
    pub key: IssuedKey,
    pub plans: Vec<String>,
    /// This quota period's use in the key's plan (when the plan is a tier's with a quota).
    pub usage: Option<KeyUsage>,
    /// `current`, `previous` (a rotation's, in its grace) or `other`.
    pub role: &'static str,
}

/// Everything paykey and its backends hold about one user.
#[derive(Debug, Clone)]
pub struct UserReport {
    pub user: User,
    /// `None`: the name is not (or no longer) this user's in the directory.
    pub profile: Option<UserProfile>,
    pub email: Option<String>,
    pub record: Option<AccountRecord>,
    /// The record is one an earlier version keyed by the user's name (not migrated yet).
    pub legacy: bool,
    pub keys: Vec<KeyReport>,
    /// The customer's subscriptions, paykey's and others, and whether each is paykey's.
    pub subscriptions: Vec<(SubscriptionState, bool)>,
}

/// Reads the user's state everywhere: directory, record, keys (by name and recorded), their
/// plans and this period's use, the customer's subscriptions. Read only.
pub async fn inspect<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    user: &User,
) -> Result<UserReport, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: DirectoryAdmin,
    P: Payments,
{
    let (profile, record, named) = tokio::try_join!(
        async { Ok::<_, Error>(users.get_user(&user.name).await?.filter(|p| p.is(user))) },
        async { Ok(store.get_account(&user.id).await?) },
        async { Ok(keys.find_by_name(&ctx.settings.key_name(user)).await?) },
    )?;
    let email = match profile {
        Some(_) => users.email_of(&user.name).await?,
        None => None,
    };
    // A record an earlier version keyed by the name (the user's while they hold the name).
    let (record, legacy) = match (record, &profile) {
        (None, Some(_)) => {
            let legacy = store.legacy_account(user).await?;
            let found = legacy.is_some();
            (legacy, found)
        }
        (record, _) => (record, false),
    };
    let mut all = named;
    for id in
        [record.as_ref().and_then(|r| r.api_key_id.clone()), record.as_ref().and_then(|r| r.previous_key_id.clone())]
            .into_iter()
            .flatten()
    {
        if !all.iter().any(|k| k.id == id) {
            if let Some(k) = keys.get(&id).await? {
                all.push(k);
            }
        }
    }
    let today = ctx.clock.now().date_naive();
    let mut reports = Vec::new();
    for key in all {
        let plans = keys.plans_of(&key.id).await?;
        let quota = plans.first().and_then(|p| {
            ctx.settings.catalog.tiers().iter().find(|t| t.usage_plan_id.as_deref() == Some(p.as_str()))?.quota
        });
        let usage = match (plans.first(), quota) {
            (Some(plan), Some(q)) => {
                let (start, end) = q.period.containing(today);
                Some(keys.usage(&key.id, plan, start, end).await?)
            }
            _ => None,
        };
        let role = match &record {
            Some(r) if r.api_key_id.as_deref() == Some(key.id.as_str()) => "current",
            Some(r) if r.previous_key_id.as_deref() == Some(key.id.as_str()) => "previous",
            _ => "other",
        };
        reports.push(KeyReport { key, plans, usage, role });
    }
    let customer =
        record.as_ref().and_then(|r| r.customer_id.clone()).or(profile.as_ref().and_then(|p| p.customer_id.clone()));
    let subscriptions = match &customer {
        Some(c) => payments
            .list_subscriptions(c)
            .await?
            .into_iter()
            .map(|s| {
                let ours = is_paykeys(ctx, record.as_ref(), &s);
                (s, ours)
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(UserReport { user: user.clone(), profile, email, record, legacy, keys: reports, subscriptions })
}

fn is_paykeys(ctx: Ctx<'_>, record: Option<&AccountRecord>, s: &SubscriptionState) -> bool {
    ctx.settings.catalog.tier_of_items(&s.item_lookup_keys).is_some()
        || record.is_some_and(|r| r.subscription_id.as_ref() == Some(&s.id))
}

fn live(s: &SubscriptionState) -> bool {
    !matches!(s.status, SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl std::fmt::Display for UserReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "user      {} (sub {})", self.user.name, self.user.id)?;
        match &self.profile {
            Some(p) => writeln!(
                f,
                "directory email {}, custom:plan_type {}, custom:stripe_customer_id {}",
                self.email.as_deref().unwrap_or("-"),
                p.plan.as_ref().map(|p| p.as_str()).unwrap_or("-"),
                p.customer_id.as_ref().map(|c| c.as_str()).unwrap_or("-"),
            )?,
            None => writeln!(f, "directory no such user (deleted, or the name is someone else's now)")?,
        }
        match &self.record {
            None => writeln!(f, "record    none")?,
            Some(r) => {
                if self.legacy {
                    writeln!(
                        f,
                        "record    (keyed by the user name: an earlier version's, migrated on the next change)"
                    )?;
                }
                writeln!(
                    f,
                    "record    plan {}, key {}, customer {}, subscription {} ({}{}), updated {}",
                    r.plan,
                    r.api_key_id.as_deref().unwrap_or("-"),
                    r.customer_id.as_ref().map(|c| c.as_str()).unwrap_or("-"),
                    r.subscription_id.as_ref().map(|s| s.as_str()).unwrap_or("-"),
                    r.subscription_status.as_deref().unwrap_or("-"),
                    if r.cancel_at_period_end { ", cancels at period end" } else { "" },
                    time(r.updated_at),
                )?;
                if let Some(c) = &r.comp {
                    writeln!(
                        f,
                        "comp      {} until {} (granted {}) {}",
                        c.plan,
                        time(c.until),
                        time(c.granted_at),
                        c.note
                    )?;
                }
                if let Some(s) = &r.suspension {
                    writeln!(f, "SUSPENDED since {}: {}", time(s.since), s.reason)?;
                }
                if r.pending_key_work.is_some() {
                    writeln!(f, "pending   key work written down, not finished (the next holder of the lock does it)")?;
                }
            }
        }
        if self.keys.is_empty() {
            writeln!(f, "keys      none")?;
        }
        for k in &self.keys {
            writeln!(
                f,
                "key       {} {} {}, plans [{}]{}",
                k.key.id,
                k.role,
                if k.key.enabled { "enabled" } else { "disabled" },
                k.plans.join(", "),
                match &k.usage {
                    Some(u) => format!(
                        ", this period {} used, {} left",
                        u.used,
                        u.remaining.map(|r| r.to_string()).unwrap_or_else(|| "?".into())
                    ),
                    None => String::new(),
                }
            )?;
        }
        for (s, ours) in &self.subscriptions {
            writeln!(
                f,
                "stripe    {} {} [{}] {}",
                s.id,
                s.status.as_str(),
                s.item_lookup_keys.iter().map(|k| k.as_deref().unwrap_or("-")).collect::<Vec<_>>().join(", "),
                if *ours { "paykey's" } else { "not paykey's (left alone)" }
            )?;
        }
        Ok(())
    }
}

/// What an operator's change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub user: User,
    /// The plan the user is on now.
    pub plan: Plan,
    /// The user's current key, if any, and whether it works.
    pub api_key_id: Option<String>,
    pub key_enabled: bool,
}

/// Grants `plan` (a paid tier of the catalog) until `until`, or with `plan = None` ends the
/// user's comp now. The user's key moves to the tier's usage plan (created if they have none,
/// unless suspended) and the directory says the tier. While it lasts the webhooks, the resync
/// and fulfilment keep it (a subscription that buys a paid tier wins while it does); when it
/// ends the sweep moves the user back to what their subscription buys, else the free plan.
pub async fn set_comp<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    user: &User,
    grant: Option<(Plan, DateTime<Utc>, String)>,
) -> Result<Changed, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
{
    let now = ctx.clock.now();
    if let Some((plan, until, _)) = &grant {
        let tier = ctx.settings.tier_of(plan).filter(|t| !t.is_free() && t.usage_plan_id.is_some());
        if tier.is_none() {
            let paid: Vec<&str> =
                ctx.settings.catalog.tiers().iter().filter(|t| !t.is_free()).map(|t| t.name.as_str()).collect();
            return Err(Error::BadRequest(format!("{plan} is not a paid tier of the catalog ({})", paid.join(", "))));
        }
        if *until <= now {
            return Err(Error::BadRequest(format!("the comp must end in the future, not {}", time(*until))));
        }
    }
    change(store, keys, users, ctx, user, |next| {
        next.comp = grant.clone().map(|(plan, until, note)| Comp { plan, until, granted_at: now, note });
    })
    .await
}

/// Suspends the user (`reason` kept in the record), or with `None` lifts the suspension: every
/// key of theirs is disabled and stays so — the webhooks, the resync, fulfilment, the free key,
/// rotation and checkout all honour it — until lifted, when their current key works again in
/// its tier's plan.
pub async fn set_suspension<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    user: &User,
    reason: Option<String>,
) -> Result<Changed, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
{
    let now = ctx.clock.now();
    change(store, keys, users, ctx, user, |next| {
        next.suspension = match (&reason, next.suspension.take()) {
            // suspended again: the first time stays the start
            (Some(r), Some(s)) => Some(Suspension { reason: r.clone(), ..s }),
            (Some(r), None) => Some(Suspension { since: now, reason: r.clone() }),
            (None, _) => None,
        };
    })
    .await
}

/// The operator's change, under the user's lock: written to the record first (lock kept), then
/// the key and directory brought in line with the record ([`lifecycle::converge_recorded`]),
/// then the record written again (lock released). A crash after the first write leaves the
/// change recorded: the next holder of the lock (a webhook, the same command again) makes it.
async fn change<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    ctx: Ctx<'_>,
    user: &User,
    edit: impl FnOnce(&mut AccountRecord),
) -> Result<Changed, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
{
    // The directory is written by name: only while the name is still this user's.
    users.get_user(&user.name).await?.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    let token = ctx.ids.token();
    let key_name = ctx.settings.key_name(user);
    let mut locked = account_keys::lock_with_key_lookup(store, keys, ctx, user, &token, &key_name).await?;
    let result = async {
        locked.adopt_legacy(store, user).await?;
        let now = ctx.clock.now();
        let mut next = locked.account.clone().unwrap_or_else(|| AccountRecord::new(user, now));
        next.user_name = user.name.clone();
        edit(&mut next);
        next.updated_at = now;
        match store.save_account(&next, &token, account_keys::lease_until(ctx, now)).await? {
            Commit::Done => {}
            Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        let outcome = lifecycle::converge_recorded(keys, users, ctx, user, &key_name, &locked.named, &mut next).await?;
        match store.put_account(&next, &token).await? {
            Commit::Done => account_keys::retire_legacy(store, user, locked.from_legacy).await,
            Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        let plan = match outcome {
            SyncOutcome::Paid { plan, .. } | SyncOutcome::Free { plan, .. } => plan,
            _ => next.plan.clone(),
        };
        let working = next.suspension.is_none() && ctx.settings.tier_of(&plan).is_some_and(|t| t.usage_plan_id.is_some());
        let key_enabled = match (&next.api_key_id, working) {
            (Some(id), true) => keys.get(id).await?.is_some_and(|k| k.enabled),
            _ => false,
        };
        tracing::info!(user = %user, plan = %plan, suspended = next.suspension.is_some(), comp = ?next.comp.as_ref().map(|c| (&c.plan, c.until)), "operator change applied");
        Ok(Changed { user: user.clone(), plan, api_key_id: next.api_key_id.clone(), key_enabled })
    }
    .await;
    if result.is_err() {
        account_keys::release(store, user, &token).await;
    }
    result
}

/// What an erasure may do beyond paykey's own data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EraseOptions {
    /// Cancel the user's live paykey subscriptions now (no refund). Without it, a user who still
    /// pays for a paykey tier is not erased (they would go on being charged for nothing).
    pub cancel_subscriptions: bool,
    /// Delete the Stripe customer too (Stripe keeps invoices and payments; it cancels every
    /// subscription the customer still has). Refused while the customer pays for something
    /// paykey does not sell: that is the seller's other business.
    pub delete_customer: bool,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Erased {
    /// The user's open Checkout Sessions, expired so that none can be paid.
    pub checkouts_expired: Vec<crate::domain::SessionId>,
    pub subscriptions_cancelled: Vec<SubscriptionId>,
    pub customer_deleted: Option<CustomerId>,
    /// The customer kept (no `delete_customer`).
    pub customer_kept: Option<CustomerId>,
    pub keys_deleted: Vec<String>,
    pub directory_user_deleted: bool,
    /// A record an earlier version keyed by the user's name.
    pub legacy_record_deleted: bool,
    pub record_deleted: bool,
}

/// Erases a user: checks first (nothing is changed when one fails), then under the user's lock
/// the checks again (a checkout may have completed meanwhile), the user's open Checkout Sessions
/// expired (none can be paid after), their live paykey subscriptions cancelled (with
/// `cancel_subscriptions`), the Stripe customer deleted (with `delete_customer`), every key of
/// theirs detached and deleted (by name, recorded, previous, and those of a name-keyed record of
/// an earlier version), the directory user deleted (only while the name is still theirs), the
/// name-keyed record deleted (only then: the name's next holder would adopt it), and the record
/// deleted last — so a crash at any step is finished by running it again, found by `sub`,
/// customer or key id through the record. Checkout records (keyed by session) keep the user's
/// id and name until their TTL removes them.
#[allow(clippy::too_many_arguments)]
pub async fn erase<S, K, U, P>(
    store: &S,
    keys: &K,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    user: &User,
    opts: EraseOptions,
) -> Result<Erased, Error>
where
    S: AccountErasure + crate::ports::OpenCheckouts,
    K: KeyDeletion,
    U: DirectoryAdmin,
    P: PaymentsAdmin,
{
    let (profile, record) =
        tokio::try_join!(async { Ok::<_, Error>(users.get_user(&user.name).await?.filter(|p| p.is(user))) }, async {
            Ok(store.get_account(&user.id).await?)
        },)?;
    // A record an earlier version keyed by the name: the user's while they hold the name.
    let legacy = match (&record, &profile) {
        (None, Some(_)) => store.legacy_account(user).await?,
        _ => None,
    };
    let held = record.as_ref().or(legacy.as_ref());
    let customer = held.and_then(|r| r.customer_id.clone()).or(profile.as_ref().and_then(|p| p.customer_id.clone()));
    // Refused here, before anything is written (the lock included).
    let mut ours = erasable(payments, ctx, held, customer.as_ref(), opts, user).await?;
    let token = ctx.ids.token();
    let key_name = ctx.settings.key_name(user);
    let locked = account_keys::lock_with_key_lookup(store, keys, ctx, user, &token, &key_name).await?;
    let result = async {
        // Again under the lock, with what may have happened since the first look: a checkout
        // fulfilled (the record's customer now), or paid and not fulfilled yet (its customer
        // and subscription exist only at Stripe: read from the user's open checkouts).
        let held = locked.account.as_ref().or(legacy.as_ref());
        let mut customer = held.and_then(|r| r.customer_id.clone()).or(customer.clone());
        let mut open = Vec::new();
        for lookup_key in ctx.settings.catalog.paid().filter_map(|t| t.lookup_key.as_ref()) {
            let Some(price) = payments.find_price(lookup_key).await? else { continue };
            if let Some(o) = store.open_checkout(&user.id, &price.id).await? {
                if let Some(state) = payments.get_checkout(&o.session_id).await? {
                    customer = customer.or(state.customer.clone());
                }
                open.push(o.session_id);
            }
        }
        ours = erasable(payments, ctx, held, customer.as_ref(), opts, user).await?;
        let mut done = Erased::default();
        // Open checkouts next: none can start a subscription after this (a paid one is not open
        // any more; its subscription is among `ours`).
        for session in open {
            if payments.expire_checkout(&session).await? {
                done.checkouts_expired.push(session);
            }
        }
        if opts.cancel_subscriptions {
            for s in &ours {
                payments.cancel_subscription(s).await?;
                done.subscriptions_cancelled.push(s.clone());
            }
        }
        match (&customer, opts.delete_customer) {
            (Some(c), true) => {
                payments.delete_customer(c).await?;
                done.customer_deleted = Some(c.clone());
            }
            (Some(c), false) => done.customer_kept = Some(c.clone()),
            (None, _) => {}
        }
        // Stripe's calls may have taken a while: the lease renewed before the keys go.
        if let Some(r) = &locked.account {
            let now = ctx.clock.now();
            if store.save_account(r, &token, account_keys::lease_until(ctx, now)).await? == Commit::LeaseLost {
                return Err(Error::FulfilmentInProgress);
            }
        }
        let mut ids: Vec<String> = locked.named.iter().map(|k| k.id.clone()).collect();
        for r in [locked.account.as_ref(), legacy.as_ref()].into_iter().flatten() {
            for id in [r.api_key_id.clone(), r.previous_key_id.clone()].into_iter().flatten() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        for id in ids {
            // Out of its usage plans first (moto keeps a deleted key's association; a retry
            // after a crash finds the key gone and skips it).
            if keys.get(&id).await?.is_some() {
                account_keys::detach_from_every_plan(keys, &id).await?;
                keys.delete_key(&id).await?;
            }
            done.keys_deleted.push(id);
        }
        // Under the lock, whether the name is still the user's (it is deleted by name).
        if users.get_user(&user.name).await?.is_some_and(|p| p.is(user)) {
            if legacy.is_some() {
                store.delete_legacy_account(&user.name).await?;
                done.legacy_record_deleted = true;
            }
            users.remove_user(&user.name).await?;
            done.directory_user_deleted = true;
        }
        match store.delete_account(&user.id, &token).await? {
            Commit::Done => done.record_deleted = locked.account.is_some(),
            Commit::LeaseLost => return Err(Error::FulfilmentInProgress),
        }
        tracing::info!(user = %user, keys = done.keys_deleted.len(), subscriptions = done.subscriptions_cancelled.len(), customer_deleted = done.customer_deleted.is_some(), "user erased");
        Ok(done)
    }
    .await;
    if result.is_err() {
        account_keys::release(store, user, &token).await;
    }
    result
}

/// The live paykey subscriptions an erasure cancels, or why it may not go on: a live paykey
/// subscription without `cancel_subscriptions` (the user would go on paying for nothing), one
/// that also pays for products paykey does not sell (cancelling it would end those: the seller
/// removes paykey's item or cancels it in the Dashboard first), or `delete_customer` while the
/// customer pays for anything paykey does not sell (deleting a customer cancels all of them).
async fn erasable<P: Payments>(
    payments: &P,
    ctx: Ctx<'_>,
    record: Option<&AccountRecord>,
    customer: Option<&CustomerId>,
    opts: EraseOptions,
    user: &User,
) -> Result<Vec<SubscriptionId>, Error> {
    let subs = match customer {
        Some(c) => match payments.list_subscriptions(c).await {
            Ok(subs) => subs,
            // A customer deleted already (a run again after `--delete-customer`): Stripe cancelled
            // its subscriptions with it.
            Err(e) if e.message.starts_with("404 ") => Vec::new(),
            Err(e) => return Err(e.into()),
        },
        None => Vec::new(),
    };
    let catalog = &ctx.settings.catalog;
    let live: Vec<&SubscriptionState> = subs.iter().filter(|s| live(s)).collect();
    let ids = |v: &[&SubscriptionState]| v.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ");
    let mixed: Vec<&SubscriptionState> = live
        .iter()
        .copied()
        .filter(|s| is_paykeys(ctx, record, s) && !catalog.sells_every_item(&s.item_lookup_keys))
        .collect();
    if !mixed.is_empty() {
        return Err(Error::BadRequest(format!(
            "{} also pays for products paykey does not sell: remove paykey's item from it or cancel it in the Stripe Dashboard, then erase",
            ids(&mixed)
        )));
    }
    let ours: Vec<&SubscriptionState> = live.iter().copied().filter(|s| is_paykeys(ctx, record, s)).collect();
    if !ours.is_empty() && !opts.cancel_subscriptions {
        return Err(Error::BadRequest(format!(
            "{} still pays for paykey through {}: pass --cancel-subscriptions to cancel (no refund), or wait until it ends",
            user.name,
            ids(&ours)
        )));
    }
    let others: Vec<&SubscriptionState> = live.iter().copied().filter(|s| !is_paykeys(ctx, record, s)).collect();
    if opts.delete_customer && !others.is_empty() {
        return Err(Error::BadRequest(format!(
            "the Stripe customer also pays for products paykey does not sell ({}): deleting it would cancel them; erase without --delete-customer",
            ids(&others)
        )));
    }
    Ok(ours.iter().map(|s| s.id.clone()).collect())
}

impl std::fmt::Display for Erased {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checkouts_expired {
            writeln!(f, "open checkout {c} expired")?;
        }
        for s in &self.subscriptions_cancelled {
            writeln!(f, "subscription {s} cancelled (no refund)")?;
        }
        if let Some(c) = &self.customer_deleted {
            writeln!(f, "Stripe customer {c} deleted")?;
        }
        if let Some(c) = &self.customer_kept {
            writeln!(
                f,
                "Stripe customer {c} kept (invoices and payments stay in Stripe; --delete-customer deletes it)"
            )?;
        }
        for k in &self.keys_deleted {
            writeln!(f, "API key {k} deleted")?;
        }
        writeln!(f, "directory user {}", if self.directory_user_deleted { "deleted" } else { "already gone" })?;
        if self.legacy_record_deleted {
            writeln!(f, "name-keyed record of an earlier version deleted")?;
        }
        writeln!(f, "account record {}", if self.record_deleted { "deleted" } else { "already gone" })?;
        write!(f, "checkout records keep the user's id and name until their TTL removes them")
    }
}
