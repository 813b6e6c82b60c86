//! What each Lambda builds once per cold start: settings from the environment, AWS and
//! Stripe clients (each AWS SDK client on its first use), the ports. `main` only sets up
//! logging, calls one of these and runs.
//!
//! Every variable is checked before the first network call, so a misconfigured function
//! fails at init with the variable's name, fast.

use std::sync::Arc;

use crate::adapters::aws::{self, ApiGatewayKeys, CognitoUsers, DynamoStore};
use crate::adapters::cached::{CachedKeyValues, CachedPrices};
use crate::adapters::https::Connector;
use crate::adapters::patient::Patient;
use crate::adapters::stripe::StripePayments;
use crate::adapters::stripe_client::{early_connector, ClientSettings};
use crate::config::{self, ConfigError, Env, Secret, SecretSource, StripeConfig, Tables};
use crate::domain::BackendError;
use crate::flows::Settings;
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

fn app<S, K, U, P>(store: S, keys: K, users: U, payments: P, settings: Settings) -> App<S, K, U, P> {
    App { store, keys, users, payments, clock: Arc::new(SystemClock), ids: Arc::new(RandomIds), settings }
}

async fn resolve(source: SecretSource, aws: &aws_config::SdkConfig) -> Result<Secret, InitError> {
    Ok(match source {
        SecretSource::Value(s) => s,
        SecretSource::SsmParameter(name) => aws::secure_parameter(aws, &name).await?,
    })
}

/// Both secrets of a function that needs two: the ones in SSM read in one `GetParameters` (the
/// webhook's Stripe key and signing secret: one round trip at init instead of two; its role is
/// granted `GetParameters` only, also when one of the two is set as a plain value instead).
async fn resolve_pair(
    a: SecretSource,
    b: SecretSource,
    aws: &aws_config::SdkConfig,
) -> Result<(Secret, Secret), InitError> {
    let names: Vec<String> = [&a, &b]
        .into_iter()
        .filter_map(|s| match s {
            SecretSource::SsmParameter(n) => Some(n.clone()),
            SecretSource::Value(_) => None,
        })
        .collect();
    let mut read = if names.is_empty() { Vec::new() } else { aws::secure_parameters(aws, &names).await? }.into_iter();
    let mut take = |s: SecretSource| match s {
        SecretSource::Value(v) => Ok(v),
        SecretSource::SsmParameter(_) => read
            .next()
            .ok_or_else(|| InitError::from(BackendError::new("ssm", "GetParameters", "fewer values than names"))),
    };
    let a = take(a)?;
    Ok((a, take(b)?))
}

/// The Stripe client, its key from `STRIPE_API_KEY` or the SSM parameter named by
/// `STRIPE_API_KEY_PARAMETER`.
async fn stripe(
    env: &Env,
    source: SecretSource,
    aws: &aws_config::SdkConfig,
    early: Option<Connector>,
) -> Result<(StripePayments, StripeConfig), InitError> {
    stripe_with(env, resolve(source, aws).await?, early)
}

fn stripe_with(env: &Env, key: Secret, early: Option<Connector>) -> Result<(StripePayments, StripeConfig), InitError> {
    let cfg = StripeConfig::with_secret(env, key)?;
    let settings = ClientSettings { connector: early, ..ClientSettings::default() };
    Ok((StripePayments::with_settings(&cfg, settings)?, cfg))
}

/// The connector of the Stripe client a function will build once its key is read, with one
/// connection to the Stripe API already being opened: its handshake runs beside the read of
/// the key from SSM instead of on the first request's critical path.
///
/// `None` when no secret is read from SSM: connections are opened early only while init waits
/// on the network. The functions run on one thread, so without that wait the work of opening
/// them (building the SDK clients, resolving their endpoints) would run before the first
/// request instead of beside something, and a first request that needs no backend (a
/// preflight, an unsigned webhook) would pay for it: +1.5–2 ms measured by BENCHMARKS.md's
/// cold start, whose functions get their secrets as plain values.
fn stripe_early(env: &Env, secrets: &[&SecretSource]) -> Result<Option<Connector>, InitError> {
    if !secrets.iter().any(|s| matches!(s, SecretSource::SsmParameter(_))) {
        return Ok(None);
    }
    let base = config::stripe_api_base(env)?;
    early_connector(base.as_deref())
        .map(Some)
        .map_err(|e| InitError::Client(BackendError::new("stripe", "client", e.to_string())))
}

/// Stripe's settings with the key from `STRIPE_API_KEY`, or else read through `aws` from the
/// SSM parameter `STRIPE_API_KEY_PARAMETER` names: how `paykey-setup` takes a live key
/// without it being typed on a command line (or kept in a shell's history).
pub async fn stripe_config(env: &Env, aws: &aws_config::SdkConfig) -> Result<StripeConfig, InitError> {
    let source = config::secret_source(env, "STRIPE_API_KEY", "STRIPE_API_KEY_PARAMETER")?;
    Ok(StripeConfig::with_secret(env, resolve(source, aws).await?)?)
}

pub type CheckoutApp = App<DynamoStore, (), CognitoUsers, CachedPrices<StripePayments>>;
/// API Gateway keys behind [`Patient`]: throttled control-plane calls are waited out.
pub type Keys = Patient<ApiGatewayKeys>;
pub type FulfilApp = App<DynamoStore, Keys, CognitoUsers, StripePayments>;
/// The portal needs the sessions table only for the caller's request budget.
pub type PortalApp = App<DynamoStore, (), CognitoUsers, StripePayments>;
pub type AccountApp = App<DynamoStore, CachedKeyValues<Keys>, CognitoUsers, ()>;
pub type WebhookApp = App<DynamoStore, Keys, CognitoUsers, StripePayments>;

/// `create-checkout-session`.
pub async fn checkout_app(env: &Env) -> Result<CheckoutApp, InitError> {
    let settings = config::settings(env)?;
    config::require_portal_configuration(&settings)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    let key = config::secret_source(env, "STRIPE_API_KEY", "STRIPE_API_KEY_PARAMETER")?;
    let connect = config::connect(env)?;
    // The connections a first checkout makes (counted on the latency model: BENCHMARKS.md):
    // three to DynamoDB (the budget, the open-checkout lookup and its claim), one to Cognito.
    let (store, users, stripe, cfg) = store_users_stripe(env, tables, pool, key, 3).await?;
    let payments = CachedPrices::new(stripe.with_connect(connect), cfg.price_cache);
    Ok(app(store, (), users, payments, settings))
}

/// `create-api-key`: the same ports as the webhook, without its secret.
pub async fn fulfil_app(env: &Env) -> Result<FulfilApp, InitError> {
    Ok(all_ports(env, None).await?.0)
}

/// `create-billing-portal`.
pub async fn portal_app(env: &Env) -> Result<PortalApp, InitError> {
    let settings = config::settings(env)?;
    config::require_portal_configuration(&settings)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    let key = config::secret_source(env, "STRIPE_API_KEY", "STRIPE_API_KEY_PARAMETER")?;
    let (store, users, payments, _) = store_users_stripe(env, tables, pool, key, 1).await?;
    Ok(app(store, (), users, payments, settings))
}

/// DynamoDB, Cognito and Stripe (checkout's and the portal's ports): `dynamodb` connections to
/// DynamoDB and one to Cognito opened early when the Stripe key is read from SSM.
async fn store_users_stripe(
    env: &Env,
    tables: Tables,
    pool: String,
    key: SecretSource,
    dynamodb: usize,
) -> Result<(DynamoStore, CognitoUsers, StripePayments, StripeConfig), InitError> {
    let (aws, connector) = aws::load().await;
    let early = stripe_early(env, &[&key])?;
    let store = DynamoStore::new(&aws, tables);
    let users = CognitoUsers::new(&aws, pool);
    if early.is_some() {
        store.open_early(&connector, dynamodb);
        users.open_early(&connector);
    }
    let (payments, cfg) = stripe(env, key, &aws, early).await?;
    Ok((store, users, payments, cfg))
}

/// `get-account`.
pub async fn account_app(env: &Env) -> Result<AccountApp, InitError> {
    let settings = config::settings(env)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    config::require_usage_plans(&settings.catalog)?;
    let aws = aws::load_config().await;
    Ok(app(
        DynamoStore::new(&aws, tables),
        CachedKeyValues::new(Patient::new(ApiGatewayKeys::new(&aws))),
        CognitoUsers::new(&aws, pool),
        (),
        settings,
    ))
}

pub type SweepApp = App<DynamoStore, Keys, CognitoUsers, Option<StripePayments>>;

/// `sweep-keys`: the API keys table, API Gateway and the user pool (a comp that ends writes the
/// user's plan); Stripe only when a tier is metered (the hourly usage report), its key then
/// required.
pub async fn sweep_app(env: &Env) -> Result<SweepApp, InitError> {
    let settings = config::settings(env)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    config::require_usage_plans(&settings.catalog)?;
    let key = match settings.catalog.metered().next() {
        Some(_) => Some(config::secret_source(env, "STRIPE_API_KEY", "STRIPE_API_KEY_PARAMETER")?),
        None => None,
    };
    let aws = aws::load_config().await;
    // Scheduled, nobody waits: no connection is opened early.
    let payments = match key {
        Some(key) => Some(stripe(env, key, &aws, None).await?.0),
        None => None,
    };
    Ok(app(
        DynamoStore::new(&aws, tables),
        Patient::new(ApiGatewayKeys::new(&aws)),
        CognitoUsers::new(&aws, pool),
        payments,
        settings,
    ))
}

/// `stripe-webhook`.
pub async fn webhook_app(env: &Env) -> Result<WebhookApp, InitError> {
    let hook = config::secret_source(env, "STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET_PARAMETER");
    let (mut app, hook) = all_ports(env, Some(hook)).await?;
    let hook = hook.ok_or_else(|| BackendError::new("ssm", "GetParameters", "no signing secret read"))?;
    app.settings.webhook_secrets = config::check_webhook_secrets(hook)?;
    Ok(app)
}

/// The resync command: every port, no webhook secret.
pub async fn resync_app(env: &Env) -> Result<WebhookApp, InitError> {
    fulfil_app(env).await
}

/// Every port; with `extra`, a second secret too (the webhook's signing secret), read with the
/// Stripe key in one `GetParameters` when both are parameters. The extra variable is checked
/// after the others (the first missing is named).
async fn all_ports(
    env: &Env,
    extra: Option<Result<SecretSource, ConfigError>>,
) -> Result<(WebhookApp, Option<Secret>), InitError> {
    let settings = config::settings(env)?;
    let tables = Tables::from_env(env)?;
    let pool = config::user_pool_id(env)?;
    config::require_usage_plans(&settings.catalog)?;
    let key = config::secret_source(env, "STRIPE_API_KEY", "STRIPE_API_KEY_PARAMETER")?;
    let extra = extra.transpose()?;
    let (aws, connector) = aws::load().await;
    let early = match &extra {
        Some(extra) => stripe_early(env, &[&key, extra])?,
        None => stripe_early(env, &[&key])?,
    };
    let (store, keys, users) =
        (DynamoStore::new(&aws, tables), ApiGatewayKeys::new(&aws), CognitoUsers::new(&aws, pool));
    // The connections a first redirect or webhook makes (counted on the latency model:
    // BENCHMARKS.md): three to DynamoDB (the redirect's session lease, account lock and legacy
    // record at once), two to API Gateway (the webhook's cancellation), one to Cognito.
    if early.is_some() {
        store.open_early(&connector, 3);
        keys.open_early(&connector, 2);
        users.open_early(&connector);
    }
    let (key, extra) = match extra {
        Some(extra) => resolve_pair(key, extra, &aws).await.map(|(k, e)| (k, Some(e)))?,
        None => (resolve(key, &aws).await?, None),
    };
    let (payments, _) = stripe_with(env, key, early)?;
    Ok((app(store, Patient::new(keys), users, payments, settings), extra))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::https::tests::{accepted, server};

    #[tokio::test]
    async fn connections_are_opened_early_only_beside_a_secret_read_from_ssm() {
        let (url, count) = server(|s| async move { drop(s) }).await;
        let env = Env::from_pairs([("STRIPE_API_BASE", url.trim_end_matches('/'))]);
        let plain = SecretSource::Value(Secret::new("sk_test_plain"));
        let ssm = SecretSource::SsmParameter("/paykey/stripe".into());
        assert!(stripe_early(&env, &[&plain, &plain]).unwrap().is_none());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0, "no wait at init: nothing opened");
        assert!(stripe_early(&env, &[&plain, &ssm]).unwrap().is_some());
        accepted(&count, 1).await;
    }

    #[tokio::test]
    async fn the_stripe_client_built_after_the_secret_read_uses_the_connection_opened_before_it() {
        use crate::ports::Payments;
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        let (url, count) = server(move |s| {
            crate::adapters::https::tests::answer_with(
                s,
                seen.clone(),
                r#"{"object":"list","data":[],"has_more":false}"#,
            )
        })
        .await;
        let env = Env::from_pairs([("STRIPE_API_BASE", url.trim_end_matches('/'))]);
        let early = stripe_early(&env, &[&SecretSource::SsmParameter("/paykey/stripe".into())]).unwrap();
        accepted(&count, 1).await;
        let (payments, _) = stripe_with(&env, Secret::new("sk_test_early"), early).unwrap();
        let price = payments.find_price(&crate::domain::LookupKey::parse("basic").unwrap()).await.unwrap();
        assert!(price.is_none());
        let counted =
            (count.load(std::sync::atomic::Ordering::SeqCst), requests.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(counted, (1, 1), "the price lookup went over the early connection");
    }

    #[tokio::test]
    async fn every_function_names_the_first_missing_variable_before_any_network_call() {
        let empty = Env::default();
        assert_eq!(checkout_app(&empty).await.err().unwrap().to_string(), "missing environment variable MY_DOMAIN");
        let env = Env::from_pairs([
            ("MY_DOMAIN", "https://app.example.com"),
            ("DYNAMODB_STRIPE_TABLE", "s"),
            ("DYNAMODB_API_KEY_TABLE", "k"),
            ("USER_POOL_ID", "p"),
            ("USAGE_PLAN_ID", "u"),
        ]);
        for err in [checkout_app(&env).await.err().unwrap(), portal_app(&env).await.err().unwrap()] {
            assert_eq!(err.to_string(), "missing environment variable STRIPE_PORTAL_CONFIGURATION");
        }
        let mut with_portal = env.clone();
        with_portal.set("STRIPE_PORTAL_CONFIGURATION", "bpc_1Abc");
        for err in [
            checkout_app(&with_portal).await.err().unwrap(),
            fulfil_app(&env).await.err().unwrap(),
            portal_app(&with_portal).await.err().unwrap(),
            webhook_app(&env).await.err().unwrap(),
        ] {
            assert_eq!(err.to_string(), "missing environment variable STRIPE_API_KEY (or STRIPE_API_KEY_PARAMETER)");
        }
        with_portal.set("STRIPE_PORTAL_CONFIGURATION", "pc_nope");
        assert!(portal_app(&with_portal).await.err().unwrap().to_string().contains("bpc_"));
        let env = Env::from_pairs([("MY_DOMAIN", "https://app.example.com"), ("DYNAMODB_STRIPE_TABLE", "s")]);
        assert_eq!(
            account_app(&env).await.err().unwrap().to_string(),
            "missing environment variable DYNAMODB_API_KEY_TABLE"
        );
    }
}
