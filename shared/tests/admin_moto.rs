//! The operator actions (`flows::admin`) through the deployed adapters: DynamoDB, API Gateway
//! and Cognito on moto_server, Stripe on the project's emulator. What this proves: the admin
//! ports' AWS and Stripe adapters do what the in-memory ones do for these paths (find by email,
//! sub and key id; a comp moving a key between real usage plans; a suspension disabling it; an
//! erasure deleting key, user, record and customer). What it does not: IAM (the operator's own
//! credentials are used; no function's role grants these calls) or Cognito's and Stripe's
//! behaviour beyond moto's and the emulator's reading of them.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use paykey::adapters::aws::{ApiGatewayKeys, CognitoUsers, DynamoStore};
use paykey::adapters::patient::Patient;
use paykey::adapters::stripe::StripePayments;
use paykey::config::{Secret, StripeConfig, Tables};
use paykey::domain::{CustomerId, Plan, User, UserName};
use paykey::flows::admin::{self, EraseOptions, Who};
use paykey::flows::{self, Settings};
use paykey::handlers::App;
use paykey::ports::{KeyRegistry, RandomIds, SystemClock, UserDirectory};
use support::moto::Moto;

#[tokio::test]
async fn comp_suspend_and_erase_on_moto_and_the_emulator() {
    let Some(m) = Moto::connect().await else {
        return;
    };
    let (sessions, api_keys) = m.create_tables().await;
    let pool = m.create_user_pool().await;
    let plans = m.create_usage_plans(3).await;
    // No quotas in the catalog: a key moved into a plan with a quota gets its remaining quota
    // set (UpdateUsage), which moto 5.2.5 answers with an error; that carry-over is tested on
    // the in-memory registry (`admin.rs`, `rotate.rs`).
    let catalog = format!(
        r#"{{"tiers": [
        {{"name": "FREE", "usage_plan_id": "{}"}},
        {{"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "{}"}},
        {{"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "{}"}}]}}"#,
        plans[0], plans[1], plans[2]
    );
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let stripe = StripePayments::new(&StripeConfig {
        secret_key: Secret::new("sk_test_admin"),
        api_base: Some(format!("{}/", emu.base_url())),
        price_cache: std::time::Duration::ZERO,
    })
    .unwrap();
    let mut settings = Settings::new("https://app.example.com", "https://api.example.com/prod");
    settings.catalog = paykey::domain::Catalog::parse(&catalog).unwrap();
    settings.user_budget.interval = std::time::Duration::ZERO;
    let app = App {
        store: DynamoStore::new(&m.config, Tables { sessions, api_keys }),
        keys: Patient::new(ApiGatewayKeys::new(&m.config)),
        users: CognitoUsers::new(&m.config, pool.clone()),
        payments: stripe,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        settings,
    };

    // a user with an email address and a free key
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&m.config);
    let name = UserName::parse(&format!("ada{}", &uuid::Uuid::new_v4().simple().to_string()[..8])).unwrap();
    let email = format!("{name}@example.com");
    let email_attr =
        aws_sdk_cognitoidentityprovider::types::AttributeType::builder().name("email").value(&email).build().unwrap();
    idp.admin_create_user()
        .user_pool_id(&pool)
        .username(name.as_str())
        .user_attributes(email_attr)
        .send()
        .await
        .unwrap();
    let sub = app.users.get_user(&name).await.unwrap().unwrap().sub.unwrap();
    let ada = User { id: sub.clone(), name: name.clone() };
    let free = flows::issue_free_key(&app.store, &app.keys, &app.users, app.ctx(), &ada).await.unwrap();
    let key = free.api_key.id.clone();

    // found by email, sub and key id, through Cognito's ListUsers filters and the key's name
    for who in [Who::Email(email.clone()), Who::Sub(sub.clone()), Who::Key(key.clone()), Who::Name(name.clone())] {
        let found = admin::find_user(&app.store, &app.keys, &app.users, app.ctx(), &who).await.unwrap();
        assert_eq!(found.as_ref(), Some(&ada), "{who:?}");
    }

    // comp: the key moves to PRO's usage plan on API Gateway, the pool says PRO
    let until = app.clock.now() + chrono::Duration::days(7);
    let c =
        admin::set_comp(&app.store, &app.keys, &app.users, app.ctx(), &ada, Some((Plan::PRO, until, "moto".into())))
            .await
            .unwrap();
    assert_eq!((c.plan.as_str(), c.key_enabled, c.api_key_id.as_deref()), ("PRO", true, Some(key.as_str())));
    assert_eq!(app.keys.plans_of(&key).await.unwrap(), vec![plans[1].clone()]);
    assert_eq!(app.users.get_user(&name).await.unwrap().unwrap().plan(), Plan::PRO);
    let report = admin::inspect(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &ada).await.unwrap();
    let text = report.to_string();
    assert!(text.contains(&email) && text.contains("comp      PRO until") && text.contains(&plans[1]), "{text}");

    // suspend: disabled on API Gateway and kept in its plan; the free-key route refuses
    let c =
        admin::set_suspension(&app.store, &app.keys, &app.users, app.ctx(), &ada, Some("moto".into())).await.unwrap();
    assert!(!c.key_enabled);
    assert!(!app.keys.get(&key).await.unwrap().unwrap().enabled);
    assert_eq!(app.keys.plans_of(&key).await.unwrap(), vec![plans[1].clone()]);
    let e = flows::issue_free_key(&app.store, &app.keys, &app.users, app.ctx(), &ada).await.unwrap_err();
    assert_eq!(e.code(), "account_suspended");
    let c = admin::set_suspension(&app.store, &app.keys, &app.users, app.ctx(), &ada, None).await.unwrap();
    assert!(c.key_enabled && app.keys.get(&key).await.unwrap().unwrap().enabled);
    let c = admin::set_comp(&app.store, &app.keys, &app.users, app.ctx(), &ada, None).await.unwrap();
    assert_eq!(c.plan.as_str(), "FREE");
    assert_eq!(app.keys.plans_of(&key).await.unwrap(), vec![plans[0].clone()]);

    // erase, with the Stripe customer the directory names deleted on the emulator
    let (_, customer) = emu.shared.call("POST", "/v1/customers", &format!("email={email}"));
    let customer = CustomerId::parse(customer["id"].as_str().unwrap()).unwrap();
    app.users.set_plan(&name, Plan::FREE, Some(&customer)).await.unwrap();
    let opts = EraseOptions { cancel_subscriptions: false, delete_customer: true };
    let done = admin::erase(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &ada, opts).await.unwrap();
    assert_eq!(done.keys_deleted, vec![key.clone()]);
    assert!(done.directory_user_deleted && done.record_deleted, "{done:?}");
    assert_eq!(done.customer_deleted.as_ref(), Some(&customer));
    assert_eq!(app.keys.get(&key).await.unwrap(), None, "key deleted on API Gateway");
    assert!(!app.keys.plan_key_ids(&plans[0]).await.unwrap().contains(&key), "and out of its plan");
    assert!(app.users.get_user(&name).await.unwrap().is_none(), "user deleted from the pool");
    assert!(paykey::ports::Accounts::get_account(&app.store, &sub).await.unwrap().is_none(), "record deleted");
    let (status, gone) = emu.shared.call("GET", &format!("/v1/customers/{customer}"), "");
    assert_eq!((status, gone["deleted"].as_bool()), (200, Some(true)), "customer deleted: {gone}");
    assert_eq!(admin::find_user(&app.store, &app.keys, &app.users, app.ctx(), &Who::Sub(sub)).await.unwrap(), None);
    // run again (a crash after the last step): nothing found, nothing fails
    let again = admin::erase(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &ada, opts).await.unwrap();
    assert!(!again.directory_user_deleted && !again.record_deleted && again.keys_deleted.is_empty(), "{again:?}");
}
