//! The money-path holes found when paykey was tried as a stranger would, each as a test on the
//! in-memory ports (the same flows run on DynamoDB, API Gateway and Cognito on moto in
//! `contract.rs`, and the Stripe calls on the emulator in `stripe_contract.rs`).

mod support;

use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::domain::{OneTimeKey, Plan, SessionId};
use paykey::flows::{self, Completion, Rejection};
use paykey::handlers;
use paykey::ports::{KeyRegistry, SubscriptionStatus, UserDirectory};
use support::World;

fn stripe_calls(w: &World) -> usize {
    w.meter.calls().iter().filter(|c| c.starts_with("stripe.")).count()
}

fn active_subscriptions(w: &World) -> Vec<paykey::ports::SubscriptionState> {
    w.app.payments.subscriptions().into_iter().filter(|s| s.status == SubscriptionStatus::Active).collect()
}

async fn assert_pro_with_one_enabled_key(w: &World, user: &paykey::domain::User) {
    let name = w.app.settings.key_name(user);
    let enabled: Vec<_> = w.app.keys.all().into_iter().filter(|k| k.name == name && k.enabled).collect();
    assert_eq!(enabled.len(), 1, "{enabled:?}");
    assert_eq!(w.app.users.get_user(&user.name).await.unwrap().unwrap().plan(), Plan::PRO);
}

// ---------------------------------------------------------------------------------------------
// Never bill a user twice

#[tokio::test]
async fn a_second_checkout_expires_the_first_so_only_one_tab_can_be_paid() {
    let w = World::new();
    let alice = w.user("alice");
    let (tab1, _) = w.checkout(&alice).await;
    let (tab2, key2) = w.checkout(&alice).await;
    assert!(w.app.payments.checkout_expired(&tab1), "the older open checkout is expired at Stripe");
    assert!(w.app.payments.pay(&tab1).is_none(), "an expired session cannot be paid");
    w.app.payments.pay(&tab2).unwrap();
    assert!(w.complete(&tab2, &key2).await.unwrap().is_success());
    assert_eq!(active_subscriptions(&w).len(), 1);
    assert_pro_with_one_enabled_key(&w, &alice).await;
}

/// The race the expiry cannot close: tab 1 is paid (but not yet fulfilled) when tab 2 starts,
/// so tab 2's checkout cannot expire it, and tab 2 is paid too. Both redirects come back: one
/// subscription is kept, the other cancelled at once and its charge refunded in full.
#[tokio::test]
async fn two_paid_tabs_end_with_one_active_subscription_and_one_charge_kept() {
    let w = World::new();
    let alice = w.user("alice");
    let (tab1, key1) = w.checkout(&alice).await;
    w.app.payments.pay(&tab1).unwrap();
    let (tab2, key2) = w.checkout(&alice).await;
    w.app.payments.pay(&tab2).unwrap();
    assert_eq!(active_subscriptions(&w).len(), 2, "Stripe took two payments");

    let first = w.complete(&tab1, &key1).await.unwrap();
    let second = w.complete(&tab2, &key2).await.unwrap();
    assert!(matches!(first, Completion::Issued { .. }), "{first:?}");
    assert_eq!(second, Completion::Duplicate { refunded: 980 });
    assert!(second.is_success(), "the second tab still lands on the thanks page: the user is PRO");

    let active = active_subscriptions(&w);
    assert_eq!(active.len(), 1, "{active:?}");
    let sub1 = w.app.payments.get_checkout_state(&tab1).subscription.unwrap();
    let sub2 = w.app.payments.get_checkout_state(&tab2).subscription.unwrap();
    assert_eq!(active[0].id, sub1, "the user stays on the subscription already recorded");
    assert_eq!(w.app.payments.charge(&sub1).unwrap().refunded, 0, "kept");
    let c2 = w.app.payments.charge(&sub2).unwrap();
    assert_eq!(c2.refunded, c2.amount, "refunded in full");
    assert_pro_with_one_enabled_key(&w, &alice).await;
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == alice.id).unwrap();
    assert_eq!(account.subscription_id, Some(sub1));

    // A refresh, or the webhooks of the duplicate, change nothing more.
    w.meter.reset_calls();
    assert_eq!(w.complete(&tab2, &key2).await.unwrap(), Completion::AlreadyFulfilled);
    let outcome = flows::sync_subscription(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        &w.app.payments,
        w.app.ctx(),
        &w.app.payments.get_checkout_state(&tab2).subscription.unwrap(),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, flows::SyncOutcome::Paid { .. }), "{outcome:?}");
    assert_eq!(w.meter.count("stripe.cancel_duplicate"), 0);
    assert_eq!(active_subscriptions(&w).len(), 1);
    assert_pro_with_one_enabled_key(&w, &alice).await;
}

/// The duplicate's `customer.subscription.created` webhook may come first: it cancels the
/// duplicate, and the redirect that follows lands on the thanks page without a second key.
#[tokio::test]
async fn a_duplicate_seen_first_by_its_webhook_is_cancelled_there() {
    let w = World::new();
    let alice = w.user("alice");
    let (tab1, key1) = w.checkout(&alice).await;
    w.app.payments.pay(&tab1).unwrap();
    let (tab2, key2) = w.checkout(&alice).await;
    w.app.payments.pay(&tab2).unwrap();
    w.complete(&tab1, &key1).await.unwrap();
    let sub2 = w.app.payments.get_checkout_state(&tab2).subscription.unwrap();
    let outcome =
        flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sub2)
            .await
            .unwrap();
    assert!(matches!(outcome, flows::SyncOutcome::DuplicateCancelled { refunded: 980, .. }), "{outcome:?}");
    assert!(w.complete(&tab2, &key2).await.unwrap().is_success());
    assert_eq!(active_subscriptions(&w).len(), 1);
    assert_eq!(w.app.payments.charge(&sub2).unwrap().refunded, 980, "refunded once, not twice");
    assert_pro_with_one_enabled_key(&w, &alice).await;
}

#[tokio::test]
async fn a_crash_while_cancelling_a_duplicate_is_finished_by_the_retry_and_refunds_once() {
    for fault in [Fault::CrashBefore, Fault::CrashAfter] {
        let w = Arc::new(World::new());
        let alice = w.user("alice");
        let (tab1, key1) = w.checkout(&alice).await;
        w.app.payments.pay(&tab1).unwrap();
        let (tab2, key2) = w.checkout(&alice).await;
        w.app.payments.pay(&tab2).unwrap();
        w.complete(&tab1, &key1).await.unwrap();
        w.meter.inject("stripe.cancel_duplicate", fault);
        let (w2, id2) = (Arc::clone(&w), tab2.clone());
        assert!(tokio::spawn(async move { w2.complete(&id2, &key2).await }).await.is_err(), "{fault:?}: crashed");
        w.clock.advance(chrono::Duration::seconds(61));
        assert!(w.complete(&tab2, &key2).await.unwrap().is_success(), "{fault:?}");
        let sub2 = w.app.payments.get_checkout_state(&tab2).subscription.unwrap();
        let c = w.app.payments.charge(&sub2).unwrap();
        assert_eq!(c.refunded, c.amount, "{fault:?}");
        assert_eq!(active_subscriptions(&w).len(), 1, "{fault:?}");
        assert_pro_with_one_enabled_key(&w, &alice).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A cancelled subscription is never revived

/// The checkout.session.completed event was lost, the subscription was cancelled (its
/// `customer.subscription.deleted` handled while the user had no record), then the success URL
/// is followed, or the lost checkout event redelivered: nothing is granted.
#[tokio::test]
async fn a_paid_session_of_a_cancelled_subscription_grants_nothing() {
    for via_webhook in [false, true] {
        let w = World::new();
        let alice = w.user("alice");
        let (id, key) = w.checkout_and_pay(&alice).await;
        let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
        w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
        flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sub)
            .await
            .unwrap();
        let outcome = if via_webhook {
            flows::complete_checkout(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &id, None)
                .await
                .unwrap()
        } else {
            w.complete(&id, &key).await.unwrap()
        };
        assert_eq!(outcome, Completion::NotGranted { status: "canceled".into() }, "webhook: {via_webhook}");
        assert!(!outcome.is_success());
        assert_eq!(w.app.users.get_user(&alice.name).await.unwrap().unwrap().plan(), Plan::FREE);
        assert!(w.app.keys.all().iter().all(|k| !k.enabled), "no enabled key: {:?}", w.app.keys.all());
        assert!(w.app.keys.plan_key_ids(paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap().is_empty());
        // A refresh afterwards does not revive it either.
        assert_eq!(w.complete(&id, &key).await.unwrap(), Completion::AlreadyFulfilled);
        assert_eq!(w.app.users.get_user(&alice.name).await.unwrap().unwrap().plan(), Plan::FREE);
    }
}

#[tokio::test]
async fn the_success_redirect_of_a_cancelled_subscription_goes_to_the_cancel_page() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let r = handlers::create_api_key(&w.app, support::verify_request(&id, &key.to_string())).await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], w.app.settings.cancel_url());
}

// ---------------------------------------------------------------------------------------------
// Nothing unauthenticated reaches Stripe

#[tokio::test]
async fn a_thousand_random_success_urls_cost_no_stripe_call_and_write_nothing() {
    let w = World::new();
    let alice = w.user("alice");
    let (real, real_key) = w.checkout(&alice).await;
    let before = w.snapshot();
    w.meter.reset_calls();
    for i in 0..1000 {
        // Half unknown sessions, half the real session with a wrong one-time key.
        let id = if i % 2 == 0 { SessionId::parse(&format!("cs_test_random{i:06}")).unwrap() } else { real.clone() };
        let r = handlers::create_api_key(&w.app, support::verify_request(&id, &OneTimeKey::new_random().to_string()))
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()["location"], w.app.settings.cancel_url());
    }
    assert_eq!(
        stripe_calls(&w),
        0,
        "requests reaching Stripe: {:?}",
        w.meter.calls().iter().find(|c| c.starts_with("stripe."))
    );
    assert_eq!(w.meter.calls().len(), 1000, "one DynamoDB read each");
    assert!(w.meter.calls().iter().all(|c| *c == "ddb.get_session"));
    assert_eq!(w.snapshot(), before);
    // The real pair still works (unpaid: the cancel page, after one Stripe read).
    assert_eq!(w.complete(&real, &real_key).await.unwrap(), Completion::Rejected(Rejection::Unpaid));
}

// ---------------------------------------------------------------------------------------------
// The success redirect never shows a raw error

#[tokio::test]
async fn the_success_redirect_answers_a_redirect_whatever_fails() {
    let ops =
        ["ddb.get_session", "stripe.get_checkout", "ddb.claim", "ddb.lock_account", "apigw.create_key", "ddb.fulfil"];
    for op in ops {
        let w = World::new();
        let alice = w.user("alice");
        let (id, key) = w.checkout_and_pay(&alice).await;
        w.meter.inject(op, Fault::Before);
        let r = handlers::create_api_key(&w.app, support::verify_request(&id, &key.to_string())).await.unwrap();
        assert_eq!(r.status(), 302, "{op}");
        assert_eq!(r.headers()["location"], w.app.settings.pending_url(), "{op}: thanks page, marked pending");
        assert!(matches!(r.body(), lambda_http::Body::Empty), "{op}: no JSON body");
        // The page polls /account; the refresh (or the webhook) finishes it.
        let r = handlers::create_api_key(&w.app, support::verify_request(&id, &key.to_string())).await.unwrap();
        assert_eq!(r.headers()["location"], w.app.settings.thanks_url(), "{op}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_redirects_of_one_session_all_redirect() {
    let w = Arc::new(World::new());
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.meter.set_latency(std::time::Duration::from_millis(5));
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (w, id) = (Arc::clone(&w), id.clone());
        tasks.push(tokio::spawn(async move {
            handlers::create_api_key(&w.app, support::verify_request(&id, &key.to_string())).await.unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status(), 302);
        let to = r.headers()["location"].to_str().unwrap().to_string();
        assert!(to == w.app.settings.thanks_url() || to == w.app.settings.pending_url(), "{to}");
    }
    assert_pro_with_one_enabled_key(&w, &alice).await;
}

// ---------------------------------------------------------------------------------------------
// Backends that say "slow down"

/// Stripe refuses idempotency keys over 255 bytes: the longest user name Cognito allows (128
/// characters, here 4 bytes each) still gives a valid key.
#[tokio::test]
async fn the_checkout_idempotency_key_stays_under_255_bytes_for_the_longest_user_name() {
    let w = World::new();
    let long = w.user(&"😀".repeat(128));
    assert_eq!(long.name.as_str().len(), 512);
    w.checkout(&long).await;
    let keys = w.app.payments.idempotency_keys();
    assert!(!keys.is_empty());
    for k in keys {
        assert!(k.len() <= 255, "{} bytes: {k}", k.len());
        assert!(stripe::IdempotencyKey::new(&k).is_ok(), "{k}");
    }
}

/// A clock that follows tokio's (paused) clock, so leases and the throttle see the same time.
struct TokioClock {
    start: chrono::DateTime<chrono::Utc>,
    origin: tokio::time::Instant,
}

impl paykey::ports::Clock for TokioClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.start + chrono::Duration::from_std(self.origin.elapsed()).unwrap()
    }
}

type ThrottledApp = paykey::handlers::App<
    paykey::adapters::memory::MemoryStore,
    paykey::adapters::patient::Patient<paykey::adapters::memory::MemoryKeys>,
    paykey::adapters::memory::MemoryUsers,
    paykey::adapters::memory::MemoryPayments,
>;

/// The in-memory ports with API Gateway's control-plane limits (5 CreateApiKey/s, 10
/// management calls/s, burst 40) and a clock on tokio's (paused) one.
fn throttled_app() -> (Arc<ThrottledApp>, paykey::adapters::memory::MemoryKeys) {
    use paykey::adapters::memory::{MemoryKeys, MemoryPayments, MemoryStore, MemoryUsers, Meter, SequentialIds};
    use paykey::adapters::patient::Patient;
    use paykey::flows::Settings;

    let meter = Meter::new();
    let keys = MemoryKeys::new(Arc::clone(&meter));
    keys.throttle_like_aws();
    let payments = MemoryPayments::new(Arc::clone(&meter));
    payments.add_price("FMMailPro", 980, "jpy");
    let app = Arc::new(paykey::handlers::App {
        store: MemoryStore::new(Arc::clone(&meter)),
        keys: Patient::new(keys.clone()),
        users: MemoryUsers::new(Arc::clone(&meter)),
        payments,
        clock: Arc::new(TokioClock { start: chrono::Utc::now(), origin: tokio::time::Instant::now() }),
        ids: Arc::new(SequentialIds::default()),
        settings: Settings::new(support::APP_URL, support::API_URL),
    });
    (app, keys)
}

/// User `i` signs up, starts a checkout and pays it: (user, session, one-time key).
async fn pay(app: &ThrottledApp, i: u64) -> (paykey::domain::User, SessionId, OneTimeKey) {
    let user = app.users.add_user(&paykey::domain::UserName::parse(&format!("user{i:03}")).unwrap());
    let started = flows::start_checkout(
        &app.users,
        &app.payments,
        &app.store,
        app.ctx(),
        &user,
        flows::CheckoutRequest::new("FMMailPro"),
    )
    .await
    .unwrap();
    let id = SessionId::parse(started.url.rsplit('/').next().unwrap()).unwrap();
    let key = app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap().one_time_key;
    app.payments.pay(&id).unwrap();
    (user, id, key)
}

async fn assert_all_pro_with_one_key_each(app: &ThrottledApp, keys: &paykey::adapters::memory::MemoryKeys, n: usize) {
    let names: std::collections::HashSet<_> = keys.all().into_iter().map(|k| k.name).collect();
    assert_eq!(keys.all().len(), n, "one key per user, no duplicates");
    assert_eq!(names.len(), n);
    for a in app.store.accounts() {
        assert_eq!(a.plan, Plan::PRO, "{}", a.user_name);
        assert_eq!(app.users.get_user(&a.user_name).await.unwrap().unwrap().plan(), Plan::PRO);
    }
    assert_eq!(app.store.accounts().len(), n);
}

/// API Gateway's control plane allows 5 CreateApiKey/s and 10 management calls/s (burst 40)
/// per account. 100 users pay within 10 s; each browser follows the success redirect at
/// once, and Stripe delivers `checkout.session.completed` a second later and retries it (1 min,
/// 5 min, 30 min, 1 h) while paykey answers 5xx. On tokio's paused clock, so the times are the
/// model's, not this machine's.
#[tokio::test(start_paused = true)]
async fn a_hundred_upgrades_within_ten_seconds_under_api_gateways_limits_all_end_pro_with_one_key_each() {
    let (app, keys) = throttled_app();
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(i * 100)).await;
            let (user, id, key) = pay(&app, i).await;
            let paid_at = tokio::time::Instant::now();
            // The browser, at once.
            let r = handlers::create_api_key(&app, support::verify_request(&id, &key.to_string())).await.unwrap();
            assert_eq!(r.status(), 302, "never a raw error page");
            let location = r.headers()["location"].to_str().unwrap().to_string();
            if location == app.settings.thanks_url() {
                return (paid_at.elapsed(), "redirect");
            }
            assert_eq!(location, app.settings.pending_url());
            // Stripe's webhook and its retries.
            for delay in [1, 60, 300, 1800, 3600] {
                tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
                let done =
                    flows::complete_checkout(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &id, None)
                        .await;
                if matches!(done, Ok(ref c) if c.is_success()) {
                    return (paid_at.elapsed(), "webhook");
                }
            }
            panic!("{user} never became PRO");
        }));
    }
    let mut times = Vec::new();
    let mut by_webhook = 0;
    for t in tasks {
        let (took, via) = t.await.unwrap();
        times.push(took);
        by_webhook += usize::from(via == "webhook");
    }
    times.sort();
    assert_all_pro_with_one_key_each(&app, &keys, 100).await;
    let (median, worst) = (times[50], times[99]);
    println!(
        "# throttled burst: 100 users PRO; {} by the redirect, {by_webhook} by the webhook; seconds from payment to PRO: median {:.1}, max {:.1}; {} calls throttled",
        100 - by_webhook,
        median.as_secs_f64(),
        worst.as_secs_f64(),
        keys.throttled_calls()
    );
    assert!(keys.throttled_calls() > 0, "the limits were really hit");
}

/// What stands in front of a deployed function, as the template sets it: the route's throttle
/// (a token bucket, API Gateway's algorithm), the function's reserved concurrency, its timeout,
/// and the API's gateway responses. Read from `infra/tests/front-door.json`, which
/// `infra/tests/test_template.py` derives from the SAM-transformed template (parameter
/// defaults) and compares with the committed file. What API Gateway answers when (the sources
/// of this model): the route throttle → THROTTLED (429); a function at its reserved
/// concurrency → Lambda's 429, which a proxy integration turns into INTEGRATION_FAILURE (a 5XX);
/// a type the API does not customise falls back to DEFAULT_4XX / DEFAULT_5XX, whose status
/// code, when set, all types of its class take (API Gateway developer guide, "Gateway
/// response types"). A function error (its timeout, a crash) is API Gateway's 502 "Internal
/// server error", taken here to be DEFAULT_5XX's: no published type names it, and only a
/// deployed probe can confirm it.
struct FrontDoor {
    rate: f64,
    burst: f64,
    bucket: std::sync::Mutex<(f64, tokio::time::Instant)>,
    slots: Arc<tokio::sync::Semaphore>,
    timeout: std::time::Duration,
    responses: serde_json::Value,
    refused: std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>,
}

/// What a caller gets: the function's answer, or API Gateway's own (status, Location).
enum Through<T> {
    Function(T),
    Gateway(u16, Option<String>),
}

impl FrontDoor {
    fn of(name: &str) -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/tests/front-door.json");
        let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let d = &all[name];
        let burst = d["throttle_burst"].as_f64().unwrap();
        Self {
            rate: d["throttle_rate_per_second"].as_f64().unwrap(),
            burst,
            bucket: std::sync::Mutex::new((burst, tokio::time::Instant::now())),
            slots: Arc::new(tokio::sync::Semaphore::new(d["reserved_concurrency"].as_u64().unwrap() as usize)),
            timeout: std::time::Duration::from_secs(d["timeout_seconds"].as_u64().unwrap()),
            responses: d["gateway_responses"].clone(),
            refused: Default::default(),
        }
    }

    fn admit(&self) -> bool {
        let mut b = self.bucket.lock().unwrap();
        let now = tokio::time::Instant::now();
        b.0 = (b.0 + (now - b.1).as_secs_f64() * self.rate).min(self.burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// API Gateway's answer of `kind` (its own status `status`), with the API's customisation.
    fn gateway<T>(&self, kind: &'static str, status: u16) -> Through<T> {
        *self.refused.lock().unwrap().entry(kind).or_default() += 1;
        let class = if status < 500 { "DEFAULT_4XX" } else { "DEFAULT_5XX" };
        let default = &self.responses[class];
        let own = &self.responses[kind];
        let r = if own.is_null() { default } else { own };
        let code = r["status"].as_u64().or(default["status"].as_u64()).map_or(status, |c| c as u16);
        Through::Gateway(code, r["location"].as_str().map(|l| l.replace("{AppUrl}", support::APP_URL)))
    }

    async fn call<T>(&self, function: impl std::future::Future<Output = T>) -> Through<T> {
        if !self.admit() {
            return self.gateway("THROTTLED", 429);
        }
        let Ok(_slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return self.gateway("INTEGRATION_FAILURE", 504);
        };
        // A timed-out function is stopped wherever it is (its next call never happens).
        match tokio::time::timeout(self.timeout, function).await {
            Ok(answer) => Through::Function(answer),
            Err(_) => self.gateway("FUNCTION_ERROR", 502),
        }
    }
}

/// A function that outlives its timeout (or crashes) behind the redirect's door: the browser
/// gets DEFAULT_5XX's redirect to the pending thanks page, not API Gateway's JSON.
#[tokio::test(start_paused = true)]
async fn a_timed_out_success_redirect_lands_on_the_pending_thanks_page() {
    let door = FrontDoor::of("success_redirect");
    let slow = async {
        tokio::time::sleep(door.timeout * 2).await;
        unreachable!("stopped at the timeout")
    };
    let Through::<()>::Gateway(status, location) = door.call(slow).await else { panic!("the function cannot answer") };
    let settings = paykey::flows::Settings::new(support::APP_URL, support::API_URL);
    assert_eq!((status, location.as_deref()), (302, Some(settings.pending_url().as_str())));
}

/// A launch: 200 users pay within 4 s (50/s, against a route throttle of 10/s, burst 20, and
/// 10 concurrent functions), each browser follows Stripe's success redirect once, at once;
/// Stripe delivers `checkout.session.completed` a second later through the webhook's own door
/// and retries it (1 min, 5 min, 30 min, 1 h, then hourly) while it is refused or fails. Every
/// browser lands on a page of the front end — the thanks page, or the thanks page marked
/// pending — never API Gateway's JSON and never the cancel page; every user ends PRO with one
/// key. On tokio's paused clock: the times are the model's.
#[tokio::test(start_paused = true)]
async fn a_launch_burst_behind_the_deployed_limits_shows_every_paying_browser_a_front_end_page_and_ends_pro() {
    const USERS: u64 = 200;
    let (app, keys) = throttled_app();
    let redirect = Arc::new(FrontDoor::of("success_redirect"));
    let webhook = Arc::new(FrontDoor::of("webhook"));
    let mut tasks = Vec::new();
    for i in 0..USERS {
        let (app, redirect, webhook) = (Arc::clone(&app), Arc::clone(&redirect), Arc::clone(&webhook));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(i * 20)).await;
            let (user, id, key) = pay(&app, i).await;
            let paid_at = tokio::time::Instant::now();
            let browser = {
                let (app, id) = (Arc::clone(&app), id.clone());
                tokio::spawn(async move {
                    match redirect
                        .call(handlers::create_api_key(&app, support::verify_request(&id, &key.to_string())))
                        .await
                    {
                        Through::Function(r) => {
                            let r = r.unwrap();
                            let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_string());
                            (r.status().as_u16(), location, "function")
                        }
                        Through::Gateway(status, location) => (status, location, "gateway"),
                    }
                })
            };
            let mut delays = vec![1u64, 60, 300, 1800, 3600];
            delays.extend([3600; 24]);
            let mut became_pro = None;
            for delay in delays {
                tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
                let delivery = webhook.call(flows::complete_checkout(
                    &app.store,
                    &app.keys,
                    &app.users,
                    &app.payments,
                    app.ctx(),
                    &id,
                    None,
                ));
                if let Through::Function(Ok(done)) = delivery.await {
                    if done.is_success() {
                        became_pro = Some(paid_at.elapsed());
                        break;
                    }
                }
            }
            let became_pro = became_pro.unwrap_or_else(|| panic!("{user} never became PRO"));
            (browser.await.unwrap(), became_pro)
        }));
    }
    let (app_url, thanks, pending) = (support::APP_URL, app.settings.thanks_url(), app.settings.pending_url());
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut waits = Vec::new();
    for t in tasks {
        let ((status, location, by), took) = t.await.unwrap();
        assert_eq!(status, 302, "a browser is always redirected ({by})");
        let location = location.expect("a redirect says where");
        assert!(
            location == thanks || location == pending,
            "a paying browser lands on {location}, not a thanks page ({by})"
        );
        assert!(location.starts_with(app_url));
        *seen.entry(format!("{} by the {by}", if location == thanks { "thanks" } else { "pending" })).or_default() += 1;
        waits.push(took);
    }
    waits.sort();
    assert_all_pro_with_one_key_each(&app, &keys, USERS as usize).await;
    let refused = |d: &FrontDoor| format!("{:?}", d.refused.lock().unwrap());
    println!(
        "# launch burst behind the deployed limits: {USERS} paying browsers in {} s; pages: {seen:?}; refused at the redirect's door: {}; at the webhook's: {}; seconds from payment to PRO: median {:.0}, max {:.0}; {} control-plane calls throttled",
        USERS * 20 / 1000,
        refused(&redirect),
        refused(&webhook),
        waits[waits.len() / 2].as_secs_f64(),
        waits[waits.len() - 1].as_secs_f64(),
        keys.throttled_calls(),
    );
    let redirect_refusals = redirect.refused.lock().unwrap().clone();
    assert!(redirect_refusals.get("THROTTLED").is_some_and(|n| *n > 0), "the route throttle was really hit");
    assert!(redirect_refusals.get("INTEGRATION_FAILURE").is_some_and(|n| *n > 0), "the reserved concurrency too");
    assert!(seen.keys().any(|k| k.ends_with("by the gateway")), "some browsers were answered by API Gateway itself");
}

/// `/account` reads the key's value from API Gateway's control plane (10 calls/s for the whole
/// account): the deployed function keeps the values it has read, so page views cost none.
#[tokio::test]
async fn account_page_views_spend_one_control_plane_call_per_key_per_container() {
    use paykey::adapters::cached::CachedKeyValues;
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let keys = CachedKeyValues::new(w.app.keys.clone());
    w.meter.reset_calls();
    let mut views = Vec::new();
    for _ in 0..100 {
        views.push(flows::get_account(&w.app.store, &keys, &w.app.users, w.app.ctx(), &alice).await.unwrap());
    }
    let control_plane = w.meter.calls().iter().filter(|c| c.starts_with("apigw.")).count();
    assert_eq!(control_plane, 1, "{:?}", w.meter.calls());
    assert!(views.iter().all(|v| v.api_key.as_ref().is_some_and(|k| k.enabled)));
    // Cancelled: the next view says disabled without asking API Gateway again.
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sub)
        .await
        .unwrap();
    w.meter.reset_calls();
    let view = flows::get_account(&w.app.store, &keys, &w.app.users, w.app.ctx(), &alice).await.unwrap();
    assert_eq!(view.plan, Plan::FREE);
    assert!(!view.api_key.unwrap().enabled);
    assert_eq!(w.meter.calls().iter().filter(|c| c.starts_with("apigw.")).count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Identity cannot be inherited

/// Cognito frees a deleted user's name. Whoever registers it next gets nothing of the old
/// user: not the key, not the plan, not the customer, not the old subscription's events; and
/// the old user's still-valid token reaches nothing of the new user's.
#[tokio::test]
async fn a_new_user_with_a_deleted_users_name_inherits_nothing() {
    let w = World::new();
    let old = w.user("alice");
    let (id, key) = w.checkout_and_pay(&old).await;
    w.complete(&id, &key).await.unwrap();
    let old_sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    let new = w.reregister(&old);
    assert_ne!(new.id, old.id);

    // the new alice: FREE, no key, no billing account
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &new).await.unwrap();
    assert_eq!(view.plan, Plan::FREE);
    assert!(view.api_key.is_none(), "the old key is not shown: {view:?}");
    assert!(!view.has_billing_account);
    assert!(matches!(
        flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &new).await,
        Err(paykey::Error::NoCustomer)
    ));

    // the old subscription renews, then is cancelled: its events touch nobody
    for status in [SubscriptionStatus::Active, SubscriptionStatus::Canceled] {
        w.app.payments.update_subscription(&old_sub, |s| s.status = status.clone());
        let outcome =
            flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &old_sub)
                .await
                .unwrap();
        assert_eq!(outcome, flows::SyncOutcome::UnknownCustomer, "{status:?}");
        let p = w.app.users.get_user(&new.name).await.unwrap().unwrap();
        assert_eq!((p.plan(), p.customer_id), (Plan::FREE, None), "nothing written to the new alice");
    }

    // the old user's token (old sub, same name) reaches nothing of the new user's
    assert!(matches!(
        flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &old).await,
        Err(paykey::Error::UserNotFound)
    ));
    let r = flows::start_checkout(
        &w.app.users,
        &w.app.payments,
        &w.app.store,
        w.app.ctx(),
        &old,
        flows::CheckoutRequest::new("FMMailPro"),
    )
    .await;
    assert!(matches!(r, Err(paykey::Error::UserNotFound)), "{r:?}");

    // the new alice buys her own: a key of her own, bound to her sub
    let (id2, key2) = w.checkout_and_pay(&new).await;
    assert!(matches!(w.complete(&id2, &key2).await.unwrap(), Completion::Issued { .. }));
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &new).await.unwrap();
    let old_key = w.app.store.accounts().into_iter().find(|a| a.user_id == old.id).unwrap().api_key_id.unwrap();
    assert_ne!(view.api_key.unwrap().id, old_key, "a new key, not the old user's");
}

/// A paid session of a user deleted before the redirect writes nothing for the name's new
/// holder.
#[tokio::test]
async fn a_success_redirect_after_the_user_was_deleted_writes_nothing_for_the_names_new_holder() {
    let w = World::new();
    let old = w.user("alice");
    let (id, key) = w.checkout_and_pay(&old).await;
    let new = w.reregister(&old);
    let r = handlers::create_api_key(&w.app, support::verify_request(&id, &key.to_string())).await.unwrap();
    assert_eq!(r.status(), 302, "still a redirect");
    let p = w.app.users.get_user(&new.name).await.unwrap().unwrap();
    assert_eq!((p.plan(), p.customer_id), (Plan::FREE, None));
    assert!(w.app.keys.all().is_empty(), "no key issued: {:?}", w.app.keys.all());
    // Stripe's checkout.session.completed for it: answered, not retried for days
    let event = paykey::ports::StripeEvent {
        id: "evt_deleted_user".into(),
        kind: "checkout.session.completed".into(),
        subject: paykey::ports::EventSubject::Checkout(id.clone()),
    };
    let outcome =
        flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &event)
            .await
            .unwrap();
    assert!(matches!(outcome, flows::EventOutcome::Ignored(_)), "{outcome:?}");
    assert!(w.app.keys.all().is_empty());
}

/// Records an earlier version keyed by user name are found by name once, moved under the
/// user's sub, and the old item retired.
#[tokio::test]
async fn a_name_keyed_record_of_an_earlier_version_is_adopted_once_and_retired() {
    let w = World::new();
    let bob = w.user("bob");
    // bob was PRO under the old scheme; his key exists, disabled after a cancellation
    let old_key = w.app.keys.create("paykey-pro-bob").await.unwrap();
    w.app.keys.set_enabled(&old_key.id, false).await.unwrap();
    let mut legacy = paykey::domain::AccountRecord::new(&bob, w.app.clock.now());
    legacy.api_key_id = Some(old_key.id.clone());
    w.app.store.add_legacy_account(legacy);
    let (id, key) = w.checkout_and_pay(&bob).await;
    assert_eq!(w.complete(&id, &key).await.unwrap(), Completion::Issued { api_key_id: old_key.id.clone() });
    assert_eq!(w.app.keys.all().len(), 1, "the old key re-enabled, not a second one");
    assert!(w.app.keys.all()[0].enabled);
    assert!(w.app.store.legacy_accounts().is_empty(), "retired");
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == bob.id).unwrap();
    assert_eq!(account.api_key_id, Some(old_key.id));
}

/// A fulfilment that lost its lease to another attempt still at work answers the pending
/// thanks page, never the thanks page: the key is not there yet. (Found by `cargo mutants`:
/// answering "already fulfilled" whatever the session's state passed the suite.)
#[tokio::test]
async fn a_fulfilment_that_lost_its_lease_to_one_still_at_work_answers_pending() {
    use paykey::ports::Clock;
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    let (store, clock, sid) = (w.app.store.clone(), w.clock.clone(), id.clone());
    w.meter.reset_calls();
    w.meter.on_call("ddb.fulfil", 0, move || {
        // the lease ran out: another attempt holds the session and the account now
        let mut sessions = store.sessions();
        for s in sessions.iter_mut().filter(|s| s.session_id == sid) {
            s.lease = Some(("tok-other".into(), clock.now() + chrono::Duration::seconds(60)));
        }
        store.restore(sessions, store.accounts(), store.event_entries());
    });
    let r = handlers::create_api_key(&w.app, support::verify_request(&id, &key.to_string())).await.unwrap();
    assert_eq!(r.headers()["location"].to_str().unwrap(), w.app.settings.pending_url());
}
