//! Least privilege, derived from the code: each function's flows are run on the in-memory
//! ports through the paths they can take (first purchase, refresh, re-enable, cancellation,
//! duplicate, deleted user, name-keyed record, failure and release, events seen before, …),
//! the backend operations they call are recorded, and each is mapped to the IAM actions it
//! needs *on the resource it names* (a table or its index, the user pool, an API Gateway
//! control-plane path, a tier's usage plan); the secrets each function's init reads are found
//! by starting its builder (`paykey::wiring`) without them. The result must equal
//! `infra/tests/iam-derived.json`, which the template test (`infra/tests/test_template.py`)
//! compares, action × resource, with each function's role in the transformed template: a new
//! AWS call, or a call on another resource, without its permission fails one of the two, and
//! so does a permission nothing calls. `PAYKEY_UPDATE_IAM=1` rewrites the file.
//!
//! What this does not prove: that a path not exercised here calls nothing else (the scenarios
//! are listed below), or that the mapping from an operation to its action and resource (the
//! table in [`grants`], read from `adapters/aws`) is right — the moto contract suite runs the
//! adapters, but moto does not enforce IAM.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::config::Env;
use paykey::domain::AccountRecord;
use paykey::flows::{self, CheckoutRequest};
use paykey::ports::{EventSubject, KeyRegistry, StripeEvent, SubscriptionStatus, UserDirectory};
use paykey::wiring;
use support::World;

// Resources, named as the template names them: a table or index (its logical id), the user
// pool, an API Gateway control-plane path (`{plan}`: each tier's usage plan), an SSM
// parameter (the secret's variable).
const SESSIONS: &str = "SessionsTable";
const ACCOUNTS: &str = "ApiKeysTable";
const CUSTOMER_INDEX: &str = "ApiKeysTable/index/StripeCustomerId-index";
const POOL: &str = "UserPool";
const KEYS: &str = "apigateway::/apikeys";
const KEY: &str = "apigateway::/apikeys/*";
const PLANS: &str = "apigateway::/usageplans";
const PLAN_KEYS: &str = "apigateway::/usageplans/{plan}/keys";
const PLAN_KEY: &str = "apigateway::/usageplans/{plan}/keys/*";
const PLAN_USAGE: &str = "apigateway::/usageplans/{plan}/usage";

/// The IAM actions, each on its resource, that an in-memory operation stands for (the AWS
/// adapter's calls: `adapters/aws`).
fn grants(op: &str) -> &'static [(&'static str, &'static str)] {
    match op {
        "ddb.put_session" | "ddb.mark_event" | "ddb.replace_open_checkout" => &[("dynamodb:PutItem", SESSIONS)],
        "ddb.get_session" | "ddb.event_seen" => &[("dynamodb:GetItem", SESSIONS)],
        // a lost claim reads the session when the failed condition returned no item
        "ddb.claim" => &[("dynamodb:UpdateItem", SESSIONS), ("dynamodb:GetItem", SESSIONS)],
        "ddb.release_claim" | "ddb.claim_open_checkout" | "ddb.release_open_checkout" => {
            &[("dynamodb:UpdateItem", SESSIONS)]
        }
        "ddb.open_checkout" => &[("dynamodb:GetItem", SESSIONS)],
        // a refusal reads the bucket when the failed condition returned no item
        "ddb.spend" => &[("dynamodb:UpdateItem", SESSIONS), ("dynamodb:GetItem", SESSIONS)],
        // TransactWriteItems needs the actions of the writes it holds; after a lost answer the
        // adapter reads the session to recognise its own commit.
        "ddb.fulfil" => {
            &[("dynamodb:UpdateItem", SESSIONS), ("dynamodb:PutItem", ACCOUNTS), ("dynamodb:GetItem", SESSIONS)]
        }
        "ddb.put_account" | "ddb.save_account" => &[("dynamodb:PutItem", ACCOUNTS)],
        "ddb.get_account" | "ddb.legacy_account" => &[("dynamodb:GetItem", ACCOUNTS)],
        "ddb.lock_account" | "ddb.unlock_account" | "ddb.retire_legacy_account" => &[("dynamodb:UpdateItem", ACCOUNTS)],
        "ddb.find_account" | "ddb.find_legacy_account" => &[("dynamodb:Query", CUSTOMER_INDEX)],
        "ddb.list_accounts" | "ddb.list_legacy_names" => &[("dynamodb:Scan", ACCOUNTS)],
        // the usage reporter's cursor: one item of the sessions table
        "ddb.usage_cursor" => &[("dynamodb:GetItem", SESSIONS)],
        "ddb.set_usage_cursor" => &[("dynamodb:UpdateItem", SESSIONS)],
        // API Gateway's control plane: the HTTP method on the path the call names
        "apigw.find_key" | "apigw.count_keys" => &[("apigateway:GET", KEYS)],
        "apigw.create_key" => &[("apigateway:POST", KEYS)],
        "apigw.get_key" | "apigw.key_value" => &[("apigateway:GET", KEY)],
        "apigw.set_enabled" => &[("apigateway:PATCH", KEY)],
        "apigw.plans_of" => &[("apigateway:GET", PLANS)], // GetUsagePlans?keyId=
        "apigw.plan_keys" => &[("apigateway:GET", PLAN_KEYS)],
        // a ConflictException (already attached?) is settled by GetUsagePlanKey
        "apigw.attach" => &[("apigateway:POST", PLAN_KEYS), ("apigateway:GET", PLAN_KEY)],
        // detach reads the association first (moto and API Gateway answer a missing one differently)
        "apigw.detach" => &[("apigateway:GET", PLAN_KEY), ("apigateway:DELETE", PLAN_KEY)],
        "apigw.set_remaining" => &[("apigateway:PATCH", PLAN_KEY)], // UpdateUsage: …/keys/{key}/usage
        "apigw.usage" | "apigw.plan_usage" => &[("apigateway:GET", PLAN_USAGE)],
        "apigw.delete_key" => &[("apigateway:DELETE", KEY)], // DeleteApiKey
        "cognito.get_user" => &[("cognito-idp:AdminGetUser", POOL)],
        "cognito.set_plan" => &[("cognito-idp:AdminUpdateUserAttributes", POOL)],
        "cognito.find_by_customer" => &[("cognito-idp:ListUsers", POOL)],
        op if op.starts_with("stripe.") => &[],
        other => panic!("no IAM action known for {other}: add it to this table"),
    }
}

/// Resource → actions on it.
type Grants = BTreeMap<String, BTreeSet<String>>;

fn grants_of(calls: &[&'static str]) -> Grants {
    let mut out = Grants::new();
    for op in calls {
        for (action, resource) in grants(op) {
            out.entry(resource.to_string()).or_default().insert(action.to_string());
        }
    }
    out
}

/// The secrets a function's init reads, each from the SSM parameter its `<NAME>_PARAMETER`
/// names once deployed (`paykey::wiring`): the function's builder is started with every
/// setting and no secret, and each secret its error names is added (as a value, so nothing
/// is fetched) until it starts.
async fn secrets_of(function: &str) -> BTreeSet<String> {
    // Region and credentials for aws-config without probing the instance metadata service.
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    loop {
        let mut pairs = vec![
            ("MY_DOMAIN", "https://app.example.com"),
            ("DYNAMODB_STRIPE_TABLE", "s"),
            ("DYNAMODB_API_KEY_TABLE", "k"),
            ("USER_POOL_ID", "us-east-1_pool"),
            ("STRIPE_PORTAL_CONFIGURATION", "bpc_derive"),
            // a catalog with a metered tier: the sweep then reports usage to Stripe
            ("PAYKEY_CATALOG", support::METERED_TIERS),
        ];
        for s in &secrets {
            pairs.push((s.as_str(), if s == "STRIPE_API_KEY" { "sk_test_derive" } else { "whsec_derive" }));
        }
        let env = Env::from_pairs(pairs.iter().map(|(k, v)| (*k, *v)));
        let started = match function {
            "CreateCheckoutSessionFunction" => wiring::checkout_app(&env).await.map(drop),
            "CreateApiKeyFunction" => wiring::fulfil_app(&env).await.map(drop),
            "CreateBillingPortalFunction" => wiring::portal_app(&env).await.map(drop),
            "GetAccountFunction" => wiring::account_app(&env).await.map(drop),
            "StripeWebhookFunction" => wiring::webhook_app(&env).await.map(drop),
            "SweepKeysFunction" => wiring::sweep_app(&env).await.map(drop),
            other => panic!("no builder known for {other}"),
        };
        let Err(e) = started else { return secrets };
        let e = e.to_string();
        let missing = e
            .strip_prefix("missing environment variable ")
            .and_then(|m| m.split_once(" (or "))
            .map(|(name, _)| name.to_string())
            .unwrap_or_else(|| panic!("{function} did not start with every setting: {e}"));
        assert!(secrets.insert(missing), "{function} still misses a secret it was given: {e}");
    }
}

fn event(id: &str, kind: &str, subject: EventSubject) -> StripeEvent {
    StripeEvent { id: id.into(), kind: kind.into(), subject }
}

/// Every path of the checkout function.
async fn checkout_calls() -> Vec<&'static str> {
    let w = World::new().spending_budgets();
    let alice = w.user("alice");
    let start = |u: paykey::domain::User| {
        let w = &w;
        async move {
            flows::start_checkout(
                &w.app.users,
                &w.app.payments,
                &w.app.store,
                w.app.ctx(),
                &u,
                CheckoutRequest::new("FMMailPro"),
            )
            .await
        }
    };
    start(alice.clone()).await.unwrap();
    start(alice.clone()).await.unwrap(); // a second tab: the first is expired
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    w.meter.reset_calls();
    start(alice.clone()).await.unwrap_err(); // already PRO
    let mut calls = w.meter.calls();
    w.meter.reset_calls();
    let w2 = World::new().spending_budgets();
    let bob = w2.user("bob");
    flows::start_checkout(
        &w2.app.users,
        &w2.app.payments,
        &w2.app.store,
        w2.app.ctx(),
        &bob,
        CheckoutRequest::new("FMMailPro"),
    )
    .await
    .unwrap();
    flows::start_checkout(
        &w2.app.users,
        &w2.app.payments,
        &w2.app.store,
        w2.app.ctx(),
        &bob,
        CheckoutRequest::new("FMMailPro"),
    )
    .await
    .unwrap();
    calls.extend(w2.meter.calls());
    calls
}

/// Every path of the success redirect (and of the webhook's checkout events, which run the same
/// fulfilment).
async fn fulfilment_calls(w: &Arc<World>) -> Vec<&'static str> {
    // Only the fulfilment's own calls count; the setup (checkouts, payments, webhooks) not.
    let mut calls = Vec::new();
    macro_rules! fulfil {
        ($id:expr, $key:expr) => {{
            w.meter.reset_calls();
            let r = w.complete($id, $key).await;
            calls.extend(w.meter.calls());
            r
        }};
    }
    // first purchase, refresh
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    fulfil!(&id, &key).unwrap();
    fulfil!(&id, &key).unwrap();
    // cancelled, then subscribed again: the old key re-enabled
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sub)
        .await
        .unwrap();
    let (id2, key2) = w.checkout_and_pay(&alice).await;
    fulfil!(&id2, &key2).unwrap();
    // a paid session whose subscription was cancelled meanwhile: keys revoked
    let bob = w.user("bob");
    let (id3, key3) = w.checkout_and_pay(&bob).await;
    let sub3 = w.app.payments.get_checkout_state(&id3).subscription.unwrap();
    w.app.payments.update_subscription(&sub3, |s| s.status = SubscriptionStatus::Canceled);
    fulfil!(&id3, &key3).unwrap();
    // two paid tabs: the duplicate cancelled
    let carol = w.user("carol");
    let (t1, k1) = w.checkout(&carol).await;
    w.app.payments.pay(&t1).unwrap();
    let (t2, k2) = w.checkout(&carol).await;
    w.app.payments.pay(&t2).unwrap();
    fulfil!(&t1, &k1).unwrap();
    fulfil!(&t2, &k2).unwrap();
    // a name-keyed record of an earlier version, with a key of the old name
    let dave = w.user("dave");
    let old = w.app.keys.create("paykey-pro-dave").await.unwrap();
    let mut legacy = AccountRecord::new(&dave, w.app.clock.now());
    legacy.api_key_id = Some(old.id);
    w.app.store.add_legacy_account(legacy);
    let (id4, key4) = w.checkout_and_pay(&dave).await;
    fulfil!(&id4, &key4).unwrap();
    // a deleted user
    let erin = w.user("erin");
    let (id5, key5) = w.checkout_and_pay(&erin).await;
    w.reregister(&erin);
    let _ = fulfil!(&id5, &key5);
    // a failure (leases released), then a crash-free retry; a busy lease
    let frank = w.user("frank");
    let (id6, key6) = w.checkout_and_pay(&frank).await;
    w.meter.inject("apigw.attach", Fault::Before);
    let _ = fulfil!(&id6, &key6);
    fulfil!(&id6, &key6).unwrap();
    // a second enabled key of one user (from a crash of an old version): disabled and detached
    let gina = w.user("gina");
    let name = w.app.settings.key_name(&gina);
    let extra = w.app.keys.create(&name).await.unwrap();
    w.app.keys.create(&name).await.unwrap();
    w.app.keys.attach_to_plan(&extra.id, paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap();
    let (id7, key7) = w.checkout_and_pay(&gina).await;
    fulfil!(&id7, &key7).unwrap();
    // with a free tier: a free-key user upgrading (the key moves: detach, then attach)
    let t = World::tiered().spending_budgets();
    let hank = t.user("hank");
    flows::issue_free_key(&t.app.store, &t.app.keys, &t.app.users, t.app.ctx(), &hank).await.unwrap();
    let (id8, key8) = t.checkout_and_pay(&hank).await;
    t.meter.reset_calls();
    t.complete(&id8, &key8).await.unwrap();
    calls.extend(t.meter.calls());
    calls
}

/// The scheduled sweep: a rotated-out key whose grace ended (with use in the grace to take off
/// the new key), one still in its grace, a failure (lock released).
async fn sweep_calls() -> Vec<&'static str> {
    let mut w = World::tiered().spending_budgets();
    w.app.settings.free_key_idle_days = Some(30);
    let (a, b) = (w.user("ann"), w.user("ben"));
    let mut values = Vec::new();
    for u in [&a, &b] {
        let k = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), u).await.unwrap();
        values.push(k.api_key.value);
    }
    let rot = |g| flows::RotateRequest { grace_seconds: g, request_id: None };
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &a, rot(60)).await.unwrap();
    use paykey::ports::Clock;
    w.app.keys.call(&values[0], w.clock.now()).unwrap();
    w.clock.advance(chrono::Duration::seconds(61));
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &b, rot(600)).await.unwrap();
    w.meter.reset_calls();
    w.meter.inject("apigw.set_enabled", Fault::Before);
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    // the function's run: the same sweep, and at the top of an hour the key count
    use chrono::Timelike;
    let to_hour = 60 - i64::from(w.clock.now().minute());
    w.clock.advance(chrono::Duration::minutes(to_hour));
    let run =
        flows::scheduled_run(&w.app.store, &w.app.keys, &w.app.users, Some(&w.app.payments), w.app.ctx(), None).await;
    assert!(run.key_count.is_some() && run.disabled.is_ok(), "counted at the top of the hour");
    let mut calls = w.meter.calls();
    // complimentary tiers that end: the users move back to the free tier's plan
    let (cal, dee) = (w.user("cal"), w.user("dee"));
    let until = w.clock.now() + chrono::Duration::days(1);
    for u in [&cal, &dee] {
        let pro = Some((paykey::domain::Plan::PRO, until, String::new()));
        flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), u, pro).await.unwrap();
    }
    // dee's key deleted by hand in the console: the comp's end makes her a new one on FREE
    let dee_key = w.app.store.accounts().into_iter().find(|a| a.user_id == dee.id).unwrap().api_key_id.unwrap();
    paykey::ports::admin::KeyDeletion::delete_key(&w.app.keys, &dee_key).await.unwrap();
    w.clock.advance(chrono::Duration::days(2));
    w.meter.reset_calls();
    let run =
        flows::scheduled_run(&w.app.store, &w.app.keys, &w.app.users, Some(&w.app.payments), w.app.ctx(), None).await;
    assert_eq!(run.comps_ended.unwrap().len(), 2);
    calls.extend(w.meter.calls());
    // a month later, on the hour: the idle free keys are reclaimed
    w.clock.advance(chrono::Duration::days(31));
    let to_hour = 60 - i64::from(w.clock.now().minute());
    w.clock.advance(chrono::Duration::minutes(to_hour % 60));
    w.meter.reset_calls();
    let run =
        flows::scheduled_run(&w.app.store, &w.app.keys, &w.app.users, Some(&w.app.payments), w.app.ctx(), None).await;
    assert!(!run.reclaimed.unwrap().unwrap().is_empty(), "idle free keys reclaimed");
    calls.extend(w.meter.calls());
    // a catalog with metered tiers: on the hour, a subscriber's usage is reported to Stripe,
    // the keys no record names looked up by id
    let w = World::metered();
    let eve = w.user("eve");
    let (id, key) = w.checkout_and_pay(&eve).await;
    w.complete(&id, &key).await.unwrap();
    let eve_key = w.app.store.accounts()[0].api_key_id.clone().unwrap();
    let stray = w.app.keys.create("made-by-hand").await.unwrap();
    let day = w.clock.now().date_naive();
    w.app.keys.add_use(&eve_key, support::PRO_PLAN, day, 900); // 90 % of the included 1,000: announced
    w.app.keys.add_use(&stray.id, support::PRO_PLAN, day, 1);
    w.clock.advance(chrono::Duration::hours(16));
    let to_hour = 60 - i64::from(w.clock.now().minute());
    w.clock.advance(chrono::Duration::minutes(to_hour % 60));
    w.meter.reset_calls();
    let run =
        flows::scheduled_run(&w.app.store, &w.app.keys, &w.app.users, Some(&w.app.payments), w.app.ctx(), None).await;
    let usage = run.usage.unwrap().unwrap();
    assert_eq!((usage.events, usage.alerts.len()), (1, 1), "usage reported, a threshold announced");
    calls.extend(w.meter.calls());
    // eve's spend cap, set in one month, applied again by the sweep when the next one begins
    let cap = flows::CapRequest { requests: Some(2000) };
    flows::set_spend_cap(&w.app.store, &w.app.keys, w.app.ctx(), &eve, cap).await.unwrap();
    w.clock.advance(chrono::Duration::days(40));
    w.meter.reset_calls();
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    assert!(w.meter.count("apigw.set_remaining") > 0, "the cap applied to the new month");
    calls.extend(w.meter.calls());
    calls
}

async fn portal_calls() -> Vec<&'static str> {
    let w = World::new().spending_budgets();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    w.meter.reset_calls();
    flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &alice).await.unwrap();
    let bob = w.user("bob");
    flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &bob).await.unwrap_err();
    w.meter.calls()
}

async fn account_calls() -> Vec<&'static str> {
    let w = World::new().spending_budgets();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    w.meter.reset_calls();
    flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &alice).await.unwrap();
    flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &bob).await.unwrap();
    let mut calls = w.meter.calls();
    // POST /api-key: a first free key, the same again, a paid user's key, a failure released
    let w = World::tiered().spending_budgets();
    let (carol, dave) = (w.user("carol"), w.user("dave"));
    let free = |u: paykey::domain::User| {
        let w = &w;
        async move { flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await }
    };
    free(carol.clone()).await.unwrap();
    free(carol.clone()).await.unwrap();
    let (id, key) = w.checkout_and_pay(&dave).await;
    w.meter.reset_calls();
    w.complete(&id, &key).await.unwrap();
    w.meter.reset_calls();
    free(dave).await.unwrap();
    calls.extend(w.meter.calls());
    w.meter.reset_calls();
    let erin = w.user("erin");
    w.meter.inject("apigw.attach", Fault::Before);
    free(erin.clone()).await.unwrap_err();
    free(erin).await.unwrap();
    // a directory that still says PRO (a cancellation of an older version): set to FREE
    // /account of a user on a metered tier: the period's usage (GetUsage)
    flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &carol).await.unwrap();
    let fay = w.user("fay");
    w.app.users.set_plan(&fay.name, paykey::domain::Plan::PRO, None).await.unwrap();
    w.meter.reset_calls();
    free(fay).await.unwrap();
    calls.extend(w.meter.calls());
    w.meter.reset_calls();
    // POST /api-key/rotate: with a grace, then without (the old key disabled and detached)
    let rot = |g| flows::RotateRequest { grace_seconds: g, request_id: None };
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &carol, rot(60)).await.unwrap();
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &carol, rot(0)).await.unwrap();
    calls.extend(w.meter.calls());
    // PUT /api-key/cap: a metered subscriber's cap, set with a rotated-out key in its grace
    let w = World::metered().spending_budgets();
    let gil = w.user("gil");
    let (id, key) = w.checkout_and_pay(&gil).await;
    w.complete(&id, &key).await.unwrap();
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &gil, rot(60)).await.unwrap();
    w.meter.reset_calls();
    let cap = |n| flows::CapRequest { requests: Some(n) };
    flows::set_spend_cap(&w.app.store, &w.app.keys, w.app.ctx(), &gil, cap(2000)).await.unwrap();
    flows::set_spend_cap(&w.app.store, &w.app.keys, w.app.ctx(), &gil, cap(1)).await.unwrap_err();
    calls.extend(w.meter.calls());
    calls
}

async fn webhook_calls() -> Vec<&'static str> {
    let w = Arc::new(World::new().spending_budgets());
    let handle = |e: StripeEvent| {
        let w = Arc::clone(&w);
        async move {
            flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e).await
        }
    };
    // checkout events run the fulfilment: all of its paths
    let mut calls = fulfilment_calls(&w).await;
    macro_rules! webhook {
        ($e:expr) => {{
            w.meter.reset_calls();
            let r = handle($e).await;
            calls.extend(w.meter.calls());
            r
        }};
    }
    let alice = w.user("zoe");
    let (id, _) = w.checkout_and_pay(&alice).await;
    webhook!(event("evt_1", "checkout.session.completed", EventSubject::Checkout(id.clone()))).unwrap();
    webhook!(event("evt_1", "checkout.session.completed", EventSubject::Checkout(id.clone()))).unwrap();
    let state = w.app.payments.get_checkout_state(&id);
    let sub = state.subscription.unwrap();
    for (n, status) in
        [SubscriptionStatus::PastDue, SubscriptionStatus::Active, SubscriptionStatus::Canceled].into_iter().enumerate()
    {
        w.app.payments.update_subscription(&sub, |s| s.status = status.clone());
        let subject = EventSubject::Subscription { id: sub.clone(), customer: state.customer.clone() };
        webhook!(event(&format!("evt_s{n}"), "customer.subscription.updated", subject)).unwrap();
    }
    // a subscription without user metadata: found by customer, and a name-keyed record by customer
    w.app.payments.update_subscription(&sub, |s| {
        s.user_id = None;
        s.user_name = None;
    });
    let subject = EventSubject::Invoice { subscription: Some(sub.clone()), customer: state.customer.clone() };
    webhook!(event("evt_inv", "invoice.paid", subject)).unwrap();
    let yuri = w.user("yuri");
    let (idy, keyy) = w.checkout_and_pay(&yuri).await;
    let suby = w.app.payments.get_checkout_state(&idy).subscription.unwrap();
    let customer_y = w.app.payments.get_checkout_state(&idy).customer.unwrap();
    let mut legacy = AccountRecord::new(&yuri, w.app.clock.now());
    legacy.customer_id = Some(customer_y.clone());
    w.app.store.add_legacy_account(legacy);
    w.app.payments.update_subscription(&suby, |s| {
        s.user_id = None;
        s.user_name = None;
    });
    let _ = keyy;
    let subject = EventSubject::Subscription { id: suby, customer: Some(customer_y) };
    webhook!(event("evt_legacy", "customer.subscription.updated", subject)).unwrap();
    // a record the Python version wrote without a customer id: found through Cognito's
    // custom:stripe_customer_id
    let zoe = w.user("pyra");
    let (idz, _) = w.checkout_and_pay(&zoe).await;
    let sz = w.app.payments.get_checkout_state(&idz);
    let (subz, customer_z) = (sz.subscription.unwrap(), sz.customer.unwrap());
    w.app.payments.update_subscription(&subz, |s| {
        s.user_id = None;
        s.user_name = None;
    });
    paykey::ports::UserDirectory::set_plan(&w.app.users, &zoe.name, paykey::domain::Plan::PRO, Some(&customer_z))
        .await
        .unwrap();
    w.app.store.add_legacy_account(AccountRecord::new(&zoe, w.app.clock.now()));
    let subject = EventSubject::Subscription { id: subz, customer: Some(customer_z) };
    let out = webhook!(event("evt_python_era", "customer.subscription.updated", subject)).unwrap();
    assert_eq!(out, flows::EventOutcome::Processed("pyra is PRO".into()));
    webhook!(event("evt_other", "customer.created", EventSubject::Other)).unwrap();
    // a period's draft invoice on a metered tier: the closing period's usage is sent
    use paykey::ports::Clock;
    let w = World::metered();
    let una = w.user("una");
    let (id, key) = w.checkout_and_pay(&una).await;
    w.complete(&id, &key).await.unwrap();
    let a = w.app.store.accounts()[0].clone();
    w.app.keys.add_use(a.api_key_id.as_deref().unwrap(), support::PRO_PLAN, w.clock.now().date_naive(), 5);
    let start = w.clock.now();
    w.clock.advance(chrono::Duration::days(30));
    let subject = EventSubject::ClosingInvoice {
        subscription: a.subscription_id.clone().unwrap(),
        customer: a.customer_id.clone().unwrap(),
        period_start: start,
        period_end: w.clock.now(),
    };
    w.meter.reset_calls();
    let out = flows::handle_stripe_event(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        &w.app.payments,
        w.app.ctx(),
        &event("evt_close", "invoice.created", subject),
    )
    .await
    .unwrap();
    assert!(matches!(&out, flows::EventOutcome::Processed(m) if m.contains("days of usage sent: 1")), "{out:?}");
    calls.extend(w.meter.calls());
    calls
}

#[tokio::test]
async fn each_functions_permissions_are_what_its_code_calls() {
    let mut derived: BTreeMap<&str, Grants> = BTreeMap::new();
    derived.insert("CreateCheckoutSessionFunction", grants_of(&checkout_calls().await));
    let w = Arc::new(World::new().spending_budgets());
    derived.insert("CreateApiKeyFunction", grants_of(&fulfilment_calls(&w).await));
    derived.insert("CreateBillingPortalFunction", grants_of(&portal_calls().await));
    derived.insert("GetAccountFunction", grants_of(&account_calls().await));
    derived.insert("StripeWebhookFunction", grants_of(&webhook_calls().await));
    derived.insert("SweepKeysFunction", grants_of(&sweep_calls().await));
    for (function, grants) in &mut derived {
        // wiring reads one secret with GetParameter, two in one GetParameters (resolve_pair)
        let secrets = secrets_of(function).await;
        let action = if secrets.len() > 1 { "ssm:GetParameters" } else { "ssm:GetParameter" };
        for secret in secrets {
            grants.entry(format!("ssm:parameter/{secret}")).or_default().insert(action.to_string());
        }
    }
    let text = serde_json::to_string_pretty(&derived).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/tests/iam-derived.json");
    if std::env::var_os("PAYKEY_UPDATE_IAM").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed, text,
        "the functions' code calls another set of AWS actions or resources than infra/tests/iam-derived.json says: check the change, update template.yaml's policies, then run with PAYKEY_UPDATE_IAM=1"
    );
}
