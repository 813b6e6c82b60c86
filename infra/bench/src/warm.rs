//! Backend round trips on the critical path (every port delayed by 50 ms) beside the
//! original version's call sequence, and warm per-request overhead of each handler on
//! in-memory ports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paykey::adapters::cached::CachedPrices;
use paykey::adapters::memory::{MemoryKeys, MemoryPayments, MemoryStore, MemoryUsers, Meter};
use paykey::domain::{LookupKey, OneTimeKey, Plan, SessionId, User, UserName};
use paykey::flows::{self, CheckoutRequest, Settings};
use paykey::handlers::{self, App};
use paykey::ports::{
    Checkouts, KeyRegistry, NewCheckout, Payments, ProcessedEvents, RandomIds, SystemClock, UserDirectory,
};
use serde_json::json;

const LATENCY: Duration = Duration::from_millis(50);

pub type BenchApp = App<MemoryStore, MemoryKeys, MemoryUsers, CachedPrices<MemoryPayments>>;

fn app(meter: &Arc<Meter>) -> BenchApp {
    let payments = MemoryPayments::new(Arc::clone(meter));
    payments.add_price("FMMailPro", 980, "jpy");
    let mut settings = Settings::new("https://app.example.com", "https://api.example.com/prod");
    settings.portal_configuration = Some(payments.add_portal_configuration());
    settings.webhook_secrets = vec![paykey::config::Secret::new("whsec_bench")];
    // One user's requests are repeated in a loop here: the per-user budget would refuse them,
    // and a repeat would answer the open session instead of the path measured (a new one).
    settings.user_budget.interval = Duration::ZERO;
    settings.checkout_reuse = Duration::ZERO;
    App {
        store: MemoryStore::new(Arc::clone(meter)),
        keys: MemoryKeys::new(Arc::clone(meter)),
        users: MemoryUsers::new(Arc::clone(meter)),
        payments: CachedPrices::new(payments, Duration::from_secs(300)),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        settings,
    }
}

async fn paid_session(a: &BenchApp, user: &User) -> (SessionId, OneTimeKey) {
    let started =
        flows::start_checkout(&a.users, &a.payments, &a.store, a.ctx(), user, CheckoutRequest::new("FMMailPro"))
            .await
            .expect("checkout");
    let id = SessionId::parse(started.url.rsplit('/').next().unwrap_or_default()).expect("id");
    let key = a.store.get(&id).await.expect("get").expect("record").one_time_key;
    a.payments.inner().pay(&id);
    (id, key)
}

/// (wall ms, sequential waves, calls)
async fn timed<F: std::future::Future>(meter: &Meter, f: F) -> (f64, u32, usize) {
    meter.reset_calls();
    meter.set_latency(LATENCY);
    let t = Instant::now();
    f.await;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    meter.set_latency(Duration::ZERO);
    (ms, (ms / LATENCY.as_millis() as f64).round() as u32, meter.calls().len())
}

pub async fn round_trips() -> String {
    let mut md = String::from("\n## Backend round trips (every port call delayed by 50 ms, in-memory ports)\n\n");
    md.push_str("Sequential waves = wall time / 50 ms. The reference makes the original Python version's calls, in its order, on the same ports.\n\n");
    md.push_str("| flow | paykey ms | paykey sequential / calls | reference ms | reference sequential |\n|---|---|---|---|---|\n");

    // verification
    let meter = Meter::new();
    let a = app(&meter);
    let alice = a.users.add_user(&UserName::parse("alice").expect("name"));
    let (id, key) = paid_session(&a, &alice).await;
    let ours =
        timed(&meter, flows::complete_checkout(&a.store, &a.keys, &a.users, &a.payments, a.ctx(), &id, Some(&key)))
            .await;
    let bob = a.users.add_user(&UserName::parse("bob").expect("name"));
    let (id2, _) = paid_session(&a, &bob).await;
    let reference = timed(&meter, async {
        // Stripe retrieve, DynamoDB get, CreateApiKey, CreateUsagePlanKey, DynamoDB put,
        // DynamoDB update, Cognito update: one after the other.
        let state = a.payments.get_checkout(&id2).await.expect("retrieve").expect("session");
        a.store.get(&id2).await.expect("get");
        let k = a.keys.create("paykey-pro-bob").await.expect("create");
        a.keys.attach_to_plan(&k.id, paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.expect("attach");
        let now = chrono::Utc::now();
        a.store.mark_event("put-stand-in", "x", now).await.expect("put");
        a.store.claim(&id2, "t", now, now).await.expect("update");
        a.users.set_plan(&bob.name, Plan::PRO, state.customer.as_ref()).await.expect("cognito");
    })
    .await;
    md.push_str(&format!(
        "| verification (success redirect) | {:.0} | {} / {} | {:.0} | {} |\n",
        ours.0, ours.1, ours.2, reference.0, reference.1
    ));

    // checkout, warm price cache
    let carol = a.users.add_user(&UserName::parse("carol").expect("name"));
    a.payments.find_price(&LookupKey::parse("FMMailPro").expect("key")).await.expect("warm the cache");
    let ours = timed(&meter, async {
        flows::start_checkout(&a.users, &a.payments, &a.store, a.ctx(), &carol, CheckoutRequest::new("FMMailPro"))
            .await
            .expect("checkout")
    })
    .await;
    let reference = timed(&meter, async {
        let p = a
            .payments
            .inner()
            .find_price(&LookupKey::parse("FMMailPro").expect("key"))
            .await
            .expect("price")
            .expect("found");
        let s = a
            .payments
            .create_checkout(NewCheckout {
                price_id: &p.id,
                price_metered: false,
                overage_price_id: None,
                user: &carol,
                customer: None,
                success_url: "https://x/{CHECKOUT_SESSION_ID}".into(),
                cancel_url: "https://x".into(),
                idempotency_key: "ref-1".into(),
                trial_days: 0,
            })
            .await
            .expect("create");
        let now = chrono::Utc::now();
        let r = paykey::domain::CheckoutRecord {
            session_id: s.id,
            user_id: Some(carol.id.clone()),
            user_name: carol.name.clone(),
            one_time_key: OneTimeKey::new_random(),
            paid: false,
            status: paykey::domain::CheckoutStatus::Pending,
            lease: None,
            created_at: now,
            updated_at: now,
            expires_at: now,
        };
        a.store.put_new(&r).await.expect("put");
    })
    .await;
    md.push_str(&format!(
        "| checkout (warm price cache) | {:.0} | {} / {} | {:.0} | {} |\n",
        ours.0, ours.1, ours.2, reference.0, reference.1
    ));

    // portal
    let ours = timed(&meter, async {
        flows::open_billing_portal(&a.store, &a.users, &a.payments, a.ctx(), &alice).await.expect("portal")
    })
    .await;
    let reference = timed(&meter, async {
        let c = a.users.get_user(&alice.name).await.expect("get").expect("user").customer_id.expect("customer");
        let configuration = a.settings.portal_configuration.as_deref().expect("configured");
        a.payments.create_portal(&c, configuration, "https://x", "ref-portal").await.expect("portal");
    })
    .await;
    md.push_str(&format!(
        "| billing portal | {:.0} | {} / {} | {:.0} | {} |\n",
        ours.0, ours.1, ours.2, reference.0, reference.1
    ));
    md
}

fn event(
    method: &str,
    resource: &str,
    path: &str,
    params: serde_json::Value,
    body: Option<String>,
    headers: serde_json::Value,
    user: &User,
) -> String {
    json!({
        "resource": resource, "path": path, "httpMethod": method, "headers": headers, "multiValueHeaders": {},
        "queryStringParameters": null, "multiValueQueryStringParameters": null, "pathParameters": params,
        "stageVariables": null,
        "requestContext": {"resourcePath": resource, "httpMethod": method, "path": path, "stage": "prod",
            "requestId": "bench", "accountId": "000000000000", "apiId": "bench", "domainName": "bench.example",
            "identity": {"sourceIp": "127.0.0.1"}, "requestTimeEpoch": 0,
            "authorizer": {"claims": {"cognito:username": user.name.as_str(), "sub": user.id.as_str(), "token_use": "id"}}},
        "body": body, "isBase64Encoded": false,
    })
    .to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The app and one API Gateway event per handler, ready for repeated calls: a FREE user
/// starting checkouts, a fulfilled session refreshed, a PRO user's portal and account, and a
/// signed webhook seen before (verify + duplicate).
pub async fn setup() -> (BenchApp, Vec<(&'static str, String)>) {
    let meter = Meter::new();
    let a = app(&meter);
    let alice = a.users.add_user(&UserName::parse("alice").expect("name"));
    let dave = a.users.add_user(&UserName::parse("dave").expect("name"));
    let (id, key) = paid_session(&a, &alice).await;
    flows::complete_checkout(&a.store, &a.keys, &a.users, &a.payments, a.ctx(), &id, Some(&key)).await.expect("fulfil");
    let t = chrono::Utc::now().timestamp();
    let payload = json!({"id": "evt_bench", "object": "event", "api_version": "2026-09-30.endive", "created": t,
        "data": {"object": {"id": "cus_bench", "object": "customer", "created": t, "livemode": false}},
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}, "type": "customer.created"})
    .to_string();
    // Signed one hour ahead would be refused; criterion runs for minutes, so sign "now" and
    // let the clock tolerance (300 s) cover a run.
    let sig = paykey::adapters::stripe::sign_payload(&payload, "whsec_bench", t);
    let cases = vec![
        (
            "create-checkout-session",
            event(
                "POST",
                "/checkout-sessions",
                "/checkout-sessions",
                json!(null),
                Some(r#"{"lookup_key":"FMMailPro"}"#.into()),
                json!({}),
                &dave,
            ),
        ),
        (
            "create-api-key",
            event(
                "GET",
                "/create-api-key/{session_id}/{one_time_key}",
                "/create-api-key",
                json!({"session_id": id.as_str(), "one_time_key": key.to_string()}),
                None,
                json!({}),
                &alice,
            ),
        ),
        (
            "create-billing-portal",
            event(
                "GET",
                "/create-billing-portal-by-user",
                "/create-billing-portal-by-user",
                json!(null),
                None,
                json!({}),
                &alice,
            ),
        ),
        ("get-account", event("GET", "/account", "/account", json!(null), None, json!({}), &alice)),
        (
            "stripe-webhook",
            event(
                "POST",
                "/stripe/webhook",
                "/stripe/webhook",
                json!(null),
                Some(payload.clone()),
                json!({"Stripe-Signature": sig}),
                &alice,
            ),
        ),
    ];
    (a, cases)
}

/// One request: event JSON parsed → handler → response status.
pub async fn call(a: &BenchApp, handler: &str, event: &str) -> u16 {
    let req = lambda_http::request::from_str(event).expect("event");
    let resp = match handler {
        "create-checkout-session" => handlers::create_checkout_session(a, req).await,
        "create-api-key" => handlers::create_api_key(a, req).await,
        "create-billing-portal" => handlers::create_billing_portal(a, req).await,
        "get-account" => handlers::get_account(a, req).await,
        _ => handlers::stripe_webhook(a, req).await,
    };
    match resp {
        Ok(r) => r.status().as_u16(),
        Err(never) => match never {},
    }
}

pub async fn warm_overhead(iterations: usize) -> String {
    let (a, cases) = setup().await;
    let mut md = format!(
        "\n## Warm overhead per request (API Gateway event JSON parsed → handler → response, in-memory ports, {iterations} iterations)\n\nPaths: a new checkout session; the success URL refreshed after fulfilment; portal; account; a signed webhook already processed (verify + duplicate). `cargo bench -p paykey-bench` runs the same calls under criterion.\n\n| handler | p50 µs | p99 µs |\n|---|---|---|\n"
    );
    for (name, ev) in cases {
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let status = call(&a, name, &ev).await;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(status < 500, "{name} answered {status}");
        }
        times.sort_by(|x, y| x.total_cmp(y));
        md.push_str(&format!("| {name} | {:.0} | {:.0} |\n", percentile(&times, 0.5), percentile(&times, 0.99)));
    }
    md
}
