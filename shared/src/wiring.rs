//! What each Lambda builds once per cold start: settings from the environment, AWS and
//! Stripe clients, the ports. `main` only sets up logging, calls one of these and runs.

use std::sync::Arc;

use crate::adapters::aws::{self, ApiGatewayKeys, CognitoUsers, DynamoStore};
use crate::adapters::cached::CachedPrices;
use crate::adapters::stripe::StripePayments;
use crate::config::{self, ConfigError, Env, StripeConfig, Tables};
use crate::domain::BackendError;
use crate::handlers::App;
use crate::ports::{RandomIds, SystemClock};

/// Why a function could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] BackendError),
}

fn app<S, K, U, P>(
    store: S,
    keys: K,
    users: U,
    payments: P,
    settings: crate::flows::Settings,
) -> App<S, K, U, P> {
    App {
        store,
        keys,
        users,
        payments,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        settings,
    }
}

pub type CheckoutApp = App<DynamoStore, (), CognitoUsers, CachedPrices<StripePayments>>;
pub type FulfilApp = App<DynamoStore, ApiGatewayKeys, CognitoUsers, StripePayments>;
pub type PortalApp = App<(), (), CognitoUsers, StripePayments>;
pub type WebhookApp = App<DynamoStore, ApiGatewayKeys, CognitoUsers, StripePayments>;
pub type AccountApp = App<DynamoStore, ApiGatewayKeys, CognitoUsers, ()>;

/// `create-checkout-session`.
pub async fn checkout_app(env: &Env) -> Result<CheckoutApp, InitError> {
    let settings = config::settings(env)?;
    config::require_api_url(&settings)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    let stripe = StripeConfig::from_env(env)?;
    let payments = CachedPrices::new(
        StripePayments::new(&stripe)?.with_connect(config::connect(env)?),
        stripe.price_cache,
    );
    let aws = aws::load_config().await;
    Ok(app(
        DynamoStore::new(&aws, tables),
        (),
        CognitoUsers::new(&aws, pool),
        payments,
        settings,
    ))
}

/// `create-api-key`.
pub async fn fulfil_app(env: &Env) -> Result<FulfilApp, InitError> {
    let settings = config::settings(env)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    let plan = config::usage_plan_id(env)?;
    let payments = StripePayments::new(&StripeConfig::from_env(env)?)?;
    let aws = aws::load_config().await;
    Ok(app(
        DynamoStore::new(&aws, tables),
        ApiGatewayKeys::new(&aws, plan),
        CognitoUsers::new(&aws, pool),
        payments,
        settings,
    ))
}

/// `create-billing-portal`.
pub async fn portal_app(env: &Env) -> Result<PortalApp, InitError> {
    let settings = config::settings(env)?;
    let pool = config::user_pool_id(env)?;
    let payments = StripePayments::new(&StripeConfig::from_env(env)?)?;
    let aws = aws::load_config().await;
    Ok(app(
        (),
        (),
        CognitoUsers::new(&aws, pool),
        payments,
        settings,
    ))
}

/// `get-account`.
pub async fn account_app(env: &Env) -> Result<AccountApp, InitError> {
    let settings = config::settings(env)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    let plan = config::usage_plan_id(env)?;
    let aws = aws::load_config().await;
    Ok(app(
        DynamoStore::new(&aws, tables),
        ApiGatewayKeys::new(&aws, plan),
        CognitoUsers::new(&aws, pool),
        (),
        settings,
    ))
}

/// `stripe-webhook`.
pub async fn webhook_app(env: &Env) -> Result<WebhookApp, InitError> {
    let mut settings = config::settings(env)?;
    settings.webhook_secret = Some(config::webhook_secret(env)?);
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    let plan = config::usage_plan_id(env)?;
    let payments = StripePayments::new(&StripeConfig::from_env(env)?)?;
    let aws = aws::load_config().await;
    Ok(app(
        DynamoStore::new(&aws, tables),
        ApiGatewayKeys::new(&aws, plan),
        CognitoUsers::new(&aws, pool),
        payments,
        settings,
    ))
}
