use serde::Serialize;

use crate::domain::{Error, Plan, User};

use crate::ports::{Accounts, KeyRegistry, UserDirectory};

/// Answer of `GET /account`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountView {
    pub user_name: String,
    pub plan: Plan,
    pub subscription_status: Option<String>,
    /// The subscription ends at `current_period_end` instead of renewing.
    pub cancel_at_period_end: bool,
    /// RFC 3339; the end date when `cancel_at_period_end`, else the renewal date.
    pub current_period_end: Option<String>,
    /// RFC 3339; the end of the subscription's trial, when it has or had one.
    pub trial_end: Option<String>,
    pub has_billing_account: bool,
    pub api_key: Option<ApiKeyView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKeyView {
    pub id: String,
    pub value: String,
    pub enabled: bool,
}

/// The caller's plan, subscription status and API key. The key's value comes from the key
/// registry (API Gateway's control plane, 10 calls/s per account): the deployed function keeps
/// values it has read (`CachedKeyValues`), so a page view costs no control-plane call once
/// the container has shown that key. Whether the key is enabled comes from the account
/// record, which the same flows write when they enable or disable it.
pub async fn get_account<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    settings: &super::Settings,
    user: &User,
) -> Result<AccountView, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
{
    // Keyed by the caller's sub: a new user who took a deleted user's name sees nothing of theirs.
    let (account, profile) = tokio::try_join!(store.get_account(&user.id), users.get_user(&user.name))?;
    let profile = profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    let api_key = match account.as_ref().and_then(|a| a.api_key_id.as_deref().map(|id| (a, id))) {
        Some((a, id)) => keys.key_value(id).await?.map(|value| ApiKeyView {
            id: id.to_string(),
            value,
            // The key works while the record's tier has a usage plan (a paid tier, or a free
            // tier with keys); the flows that change the tier enable or disable it.
            enabled: settings.tier_of(&a.plan).is_some_and(|t| t.usage_plan_id.is_some()),
        }),
        None => None,
    };
    Ok(AccountView {
        user_name: user.name.to_string(),
        plan: profile.plan(),
        subscription_status: account.as_ref().and_then(|a| a.subscription_status.clone()),
        cancel_at_period_end: account.as_ref().is_some_and(|a| a.cancel_at_period_end),
        current_period_end: account
            .as_ref()
            .and_then(|a| a.period_end)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        trial_end: account
            .as_ref()
            .and_then(|a| a.trial_end)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        has_billing_account: profile.customer_id.is_some(),
        api_key,
    })
}
