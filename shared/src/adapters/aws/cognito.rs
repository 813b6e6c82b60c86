use aws_sdk_cognitoidentityprovider::types::AttributeType;
use aws_sdk_cognitoidentityprovider::Client;

use super::{describe, OnFirstUse};
use crate::adapters::https::Connector;
use crate::domain::{BackendError, CustomerId, Plan, UserId, UserName, UserProfile};
use crate::ports::{Result, UserDirectory};

const SERVICE: &str = "cognito-idp";
pub const PLAN_ATTRIBUTE: &str = "custom:plan_type";
pub const CUSTOMER_ATTRIBUTE: &str = "custom:stripe_customer_id";

/// `custom:plan_type` and `custom:stripe_customer_id` of users in one user pool, through the
/// admin API (the app client cannot write them).
#[derive(Clone, Debug)]
pub struct CognitoUsers {
    client: OnFirstUse<Client>,
    pool_id: String,
}

impl CognitoUsers {
    pub fn new(config: &aws_config::SdkConfig, pool_id: String) -> Self {
        Self { client: OnFirstUse::new(config, Client::new), pool_id }
    }

    /// Opens a connection to Cognito's endpoint in the background (the client built there too;
    /// the endpoint an `AdminGetUser` resolves to, an operation the adapter already makes).
    pub fn open_early(&self, connector: &Connector) {
        let (client, pool) = (self.client.clone(), self.pool_id.clone());
        super::open_early(connector, 1, move |only| async move {
            let get = client.get().admin_get_user().user_pool_id(pool).username("-");
            let _ = get.customize().interceptor(only).send().await;
        });
    }
}

impl UserDirectory for CognitoUsers {
    async fn get_user(&self, user: &UserName) -> Result<Option<UserProfile>> {
        const OP: &str = "AdminGetUser";
        let out =
            match self.client.get().admin_get_user().user_pool_id(&self.pool_id).username(user.as_str()).send().await {
                Ok(out) => out,
                Err(e) if e.as_service_error().is_some_and(|se| se.is_user_not_found_exception()) => return Ok(None),
                Err(e) => return Err(BackendError::new(SERVICE, OP, describe(&e))),
            };
        let mut profile = UserProfile::default();
        for a in out.user_attributes() {
            match (a.name(), a.value()) {
                ("sub", Some(v)) => {
                    profile.sub =
                        Some(UserId::parse(v).map_err(|e| BackendError::new(SERVICE, OP, format!("sub: {e}")))?)
                }
                (PLAN_ATTRIBUTE, Some(v)) => profile.plan = v.parse::<Plan>().ok(),
                (CUSTOMER_ATTRIBUTE, Some(v)) if !v.is_empty() => {
                    profile.customer_id = Some(
                        CustomerId::parse(v)
                            .map_err(|e| BackendError::new(SERVICE, OP, format!("{CUSTOMER_ATTRIBUTE}: {e}")))?,
                    )
                }
                _ => {}
            }
        }
        Ok(Some(profile))
    }

    async fn find_by_customer(&self, customer: &CustomerId) -> Result<Option<UserName>> {
        const OP: &str = "ListUsers";
        let mut token: Option<String> = None;
        loop {
            // 60 is ListUsers' largest page; only the attribute compared is asked for.
            let page = self
                .client
                .get()
                .list_users()
                .user_pool_id(&self.pool_id)
                .attributes_to_get(CUSTOMER_ATTRIBUTE)
                .limit(60)
                .set_pagination_token(token.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            for u in page.users() {
                let holds = u
                    .attributes()
                    .iter()
                    .any(|a| a.name() == CUSTOMER_ATTRIBUTE && a.value() == Some(customer.as_str()));
                if let (true, Some(name)) = (holds, u.username()) {
                    return UserName::parse(name).map(Some).map_err(|e| BackendError::new(SERVICE, OP, e.to_string()));
                }
            }
            match page.pagination_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(None),
            }
        }
    }

    async fn set_plan(&self, user: &UserName, plan: Plan, customer: Option<&CustomerId>) -> Result<()> {
        const OP: &str = "AdminUpdateUserAttributes";
        let attr = |n: &str, v: &str| {
            AttributeType::builder().name(n).value(v).build().map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))
        };
        let mut req = self
            .client
            .get()
            .admin_update_user_attributes()
            .user_pool_id(&self.pool_id)
            .username(user.as_str())
            .user_attributes(attr(PLAN_ATTRIBUTE, plan.as_str())?);
        if let Some(c) = customer {
            req = req.user_attributes(attr(CUSTOMER_ATTRIBUTE, c.as_str())?);
        }
        req.send().await.map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(())
    }
}

impl CognitoUsers {
    /// The names of the users `ListUsers` finds with `filter` (one attribute, `=`), every page.
    async fn list_names(&self, attribute: &str, value: &str) -> Result<Vec<UserName>> {
        const OP: &str = "ListUsers";
        // A filter value is a quoted string: a quote or backslash in it would end it early.
        if value.contains(['"', '\\']) {
            return Err(BackendError::new(SERVICE, OP, format!("{attribute} may not contain quotes or backslashes")));
        }
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .get()
                .list_users()
                .user_pool_id(&self.pool_id)
                .filter(format!("{attribute} = \"{value}\""))
                .limit(60)
                .set_pagination_token(token.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
            for u in page.users() {
                if let Some(name) = u.username() {
                    names.push(UserName::parse(name).map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?);
                }
            }
            match page.pagination_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(names),
            }
        }
    }
}

impl crate::ports::admin::DirectoryAdmin for CognitoUsers {
    async fn find_by_email(&self, email: &str) -> Result<Vec<UserName>> {
        self.list_names("email", email).await
    }

    async fn find_by_sub(&self, sub: &UserId) -> Result<Option<UserName>> {
        Ok(self.list_names("sub", sub.as_str()).await?.into_iter().next())
    }

    async fn email_of(&self, user: &UserName) -> Result<Option<String>> {
        const OP: &str = "AdminGetUser";
        match self.client.get().admin_get_user().user_pool_id(&self.pool_id).username(user.as_str()).send().await {
            Ok(out) => Ok(out
                .user_attributes()
                .iter()
                .find(|a| a.name() == "email")
                .and_then(|a| a.value())
                .map(str::to_string)),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_user_not_found_exception()) => Ok(None),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn remove_user(&self, user: &UserName) -> Result<()> {
        const OP: &str = "AdminDeleteUser";
        match self.client.get().admin_delete_user().user_pool_id(&self.pool_id).username(user.as_str()).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_user_not_found_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}
