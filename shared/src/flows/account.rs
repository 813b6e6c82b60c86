use serde::Serialize;

use crate::domain::{Error, Plan, UserName};
use crate::ports::{KeyRegistry, SessionStore, UserDirectory};

/// Answer of `GET /account`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountView {
    pub user_name: String,
    pub plan: Plan,
    pub subscription_status: Option<String>,
    pub has_billing_account: bool,
    pub api_key: Option<ApiKeyView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKeyView {
    pub id: String,
    pub value: String,
    pub enabled: bool,
}

/// The caller's plan, subscription status and API key (value read from the key registry).
pub async fn get_account<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    user: &UserName,
) -> Result<AccountView, Error>
where
    S: SessionStore,
    K: KeyRegistry,
    U: UserDirectory,
{
    let (account, profile) = tokio::try_join!(store.get_account(user), users.get_user(user))?;
    let profile = profile.ok_or(Error::UserNotFound)?;
    let api_key = match account.as_ref().and_then(|a| a.api_key_id.as_deref()) {
        Some(id) => keys.get_with_value(id).await?.map(|(k, value)| ApiKeyView {
            id: k.id,
            value,
            enabled: k.enabled,
        }),
        None => None,
    };
    Ok(AccountView {
        user_name: user.to_string(),
        plan: profile.plan(),
        subscription_status: account.as_ref().and_then(|a| a.subscription_status.clone()),
        has_billing_account: profile.customer_id.is_some(),
        api_key,
    })
}
