//! Plans (issue 11) on the in-memory ports: the free tier's key, one key for life moved between
//! the tiers' usage plans, plan changes through the subscription's price, trials, the portal
//! answer to a checkout for another tier, `GET /plans`; faults and crashes at each new call.

mod support;

use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::domain::{Plan, SubscriptionId, User};
use paykey::flows::{self, CheckoutRequest, EventOutcome, FreeKey};
use paykey::ports::{EventSubject, KeyRegistry, StripeEvent, SubscriptionStatus, UserDirectory};
use paykey::Error;
use support::{World, BUSINESS_PLAN, FREE_PLAN, PRO_PLAN};

fn sub_event(id: &str, kind: &str, sub: &SubscriptionId) -> StripeEvent {
    StripeEvent {
        id: id.into(),
        kind: kind.into(),
        subject: EventSubject::Subscription { id: sub.clone(), customer: None },
    }
}

async fn handle(w: &World, e: &StripeEvent) -> Result<EventOutcome, Error> {
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), e).await
}

async fn free_key(w: &World, u: &User) -> Result<FreeKey, Error> {
    flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), u).await
}

async fn plan_of(w: &World, u: &User) -> Plan {
    w.app.users.get_user(&u.name).await.unwrap().unwrap().plan()
}

/// The user's keys (by name): (id, enabled, usage plan).
fn keys_of(w: &World, u: &User) -> Vec<(String, bool, Option<String>)> {
    let name = w.app.settings.key_name(u);
    w.app
        .keys
        .all()
        .into_iter()
        .filter(|k| k.name == name)
        .map(|k| (k.id.clone(), k.enabled, w.app.keys.plan_of(&k.id)))
        .collect()
}

/// Exactly one key, enabled, in `plan`, recorded on the account; the record and Cognito on `tier`.
async fn assert_on(w: &World, u: &User, tier: &str, plan: &str) -> String {
    let keys = keys_of(w, u);
    assert_eq!(keys.len(), 1, "one key for life: {keys:?}");
    let (id, enabled, in_plan) = keys[0].clone();
    assert!(enabled, "{keys:?}");
    assert_eq!(in_plan.as_deref(), Some(plan), "{keys:?}");
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(account.api_key_id.as_deref(), Some(id.as_str()));
    assert_eq!(account.plan.as_str(), tier);
    assert_eq!(plan_of(w, u).await.as_str(), tier);
    id
}

async fn checkout_for(w: &World, u: &User, lookup_key: &str) -> Result<flows::CheckoutStarted, Error> {
    flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), u, CheckoutRequest::new(lookup_key))
        .await
}

/// Checkout for `lookup_key`, paid, success redirect: returns the subscription.
async fn subscribe(w: &World, u: &User, lookup_key: &str) -> SubscriptionId {
    let started = checkout_for(w, u, lookup_key).await.unwrap();
    assert_eq!(started.kind, "checkout");
    let id = paykey::domain::SessionId::parse(started.url.rsplit('/').next().unwrap()).unwrap();
    let key = w.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap().one_time_key;
    let state = w.app.payments.pay(&id).unwrap();
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    state.subscription.unwrap()
}

#[tokio::test]
async fn a_free_key_is_issued_once_on_the_free_plan_and_the_same_key_comes_back() {
    let w = World::tiered();
    let u = w.user("alice");
    let first = free_key(&w, &u).await.unwrap();
    assert!(first.created);
    assert_eq!(first.plan.as_str(), "FREE");
    let id = assert_on(&w, &u, "FREE", FREE_PLAN).await;
    assert_eq!(first.api_key.id, id);
    assert_eq!(w.app.keys.authorize(&first.api_key.value), Some((id.clone(), FREE_PLAN.to_string())));
    w.meter.reset_calls();
    let again = free_key(&w, &u).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.api_key, first.api_key, "the same key");
    assert_eq!(w.meter.count("apigw.create_key"), 0);
    // critical path of the repeat: the record and profile side by side, then the value
    println!("# free key, repeat: {:?}", w.meter.calls());
    assert_eq!(keys_of(&w, &u).len(), 1);
}

#[tokio::test]
async fn the_first_free_key_costs_these_round_trips() {
    let w = World::tiered();
    let u = w.user("alice");
    w.meter.set_latency(std::time::Duration::from_millis(20));
    let t = tokio::time::Instant::now();
    free_key(&w, &u).await.unwrap();
    let ms = t.elapsed().as_millis();
    println!(
        "# first free key: {} calls, {ms} ms at 20 ms per call ≈ {} sequential: {:?}",
        w.meter.calls().len(),
        ms / 20,
        w.meter.calls()
    );
}

#[tokio::test]
async fn without_a_free_tier_with_keys_no_free_key_is_issued_and_nothing_is_written() {
    let w = World::new(); // today's catalog: FREE has no key
    let u = w.user("alice");
    let before = w.snapshot();
    let e = free_key(&w, &u).await.unwrap_err();
    assert!(matches!(e, Error::NoFreeTier), "{e:?}");
    assert_eq!((e.status(), e.code()), (404, "no_free_tier"));
    assert_eq!(w.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_free_key_requests_give_one_key() {
    let w = Arc::new(World::tiered());
    let u = w.user("alice");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (w, u) = (Arc::clone(&w), u.clone());
        tasks.push(tokio::spawn(async move { free_key(&w, &u).await }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(k) => {
                ids.insert(k.api_key.id);
            }
            Err(Error::FulfilmentInProgress) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_on(&w, &u, "FREE", FREE_PLAN).await;
}

#[tokio::test]
async fn a_fault_or_crash_at_each_call_of_a_free_key_issue_converges_on_retry() {
    let ops = [
        "ddb.get_account",
        "cognito.get_user",
        "ddb.lock_account",
        "apigw.find_key",
        "ddb.legacy_account",
        "apigw.create_key",
        "apigw.attach",
        // (no Cognito write: a new user's plan is FREE already)
        "ddb.put_account",
        "apigw.key_value",
    ];
    for op in ops {
        for fault in [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter] {
            let w = Arc::new(World::tiered());
            let u = w.user("alice");
            w.meter.inject(op, fault);
            let (w2, u2) = (Arc::clone(&w), u.clone());
            let first = tokio::spawn(async move { free_key(&w2, &u2).await }).await;
            w.meter.clear_faults();
            assert!(!matches!(first, Ok(Ok(_))), "{op} {fault:?}: the fault fired");
            if !matches!(first, Ok(Ok(_))) {
                w.clock.advance(chrono::Duration::seconds(61)); // a crashed holder's lock expires
                free_key(&w, &u).await.unwrap_or_else(|e| panic!("{op} {fault:?}: retry: {e}"));
            }
            let id = assert_on(&w, &u, "FREE", FREE_PLAN).await;
            assert_eq!(free_key(&w, &u).await.unwrap().api_key.id, id, "{op} {fault:?}");
        }
    }
}

#[tokio::test]
async fn upgrading_moves_the_free_key_to_the_paid_plan_and_cancelling_moves_it_back() {
    let w = World::tiered();
    let u = w.user("alice");
    let key = free_key(&w, &u).await.unwrap().api_key;
    let sub = subscribe(&w, &u, "FMMailPro").await;
    // a first-time customer gets PRO's trial: trialing grants the tier
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(account.subscription_status.as_deref(), Some("trialing"));
    assert!(account.trial_end.is_some());
    assert_eq!(assert_on(&w, &u, "PRO", PRO_PLAN).await, key.id, "the same key, moved");
    assert_eq!(w.app.keys.authorize(&key.value), Some((key.id.clone(), PRO_PLAN.to_string())));
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    assert_eq!(view.trial_end, account.trial_end.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    assert!(view.api_key.unwrap().enabled);

    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    handle(&w, &sub_event("evt_c", "customer.subscription.deleted", &sub)).await.unwrap();
    assert_eq!(assert_on(&w, &u, "FREE", FREE_PLAN).await, key.id, "back on the free plan, not disabled");
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    assert!(view.api_key.unwrap().enabled);
    assert_eq!(free_key(&w, &u).await.unwrap().api_key.id, key.id);
}

#[tokio::test]
async fn a_paid_user_without_a_free_key_keeps_the_paid_key_on_the_free_plan_after_cancelling() {
    let w = World::tiered();
    let u = w.user("bob");
    let sub = subscribe(&w, &u, "FMMailBusiness").await;
    let id = assert_on(&w, &u, "BUSINESS", BUSINESS_PLAN).await;
    assert_eq!(free_key(&w, &u).await.unwrap().api_key.id, id, "POST /api-key answers the paid key");
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    handle(&w, &sub_event("evt_c", "customer.subscription.deleted", &sub)).await.unwrap();
    assert_eq!(assert_on(&w, &u, "FREE", FREE_PLAN).await, id);
}

#[tokio::test]
async fn a_plan_change_in_the_portal_moves_the_key_and_converges_under_duplicates_and_disorder() {
    let w = World::tiered();
    let u = w.user("carol");
    let sub = subscribe(&w, &u, "FMMailPro").await;
    let id = assert_on(&w, &u, "PRO", PRO_PLAN).await;
    // upgrade to BUSINESS (the portal changes the item's price; Stripe prorates)
    w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
    let up = sub_event("evt_up", "customer.subscription.updated", &sub);
    let out = handle(&w, &up).await.unwrap();
    assert!(matches!(&out, EventOutcome::Processed(s) if s.ends_with("is BUSINESS")), "{out:?}");
    assert_eq!(assert_on(&w, &u, "BUSINESS", BUSINESS_PLAN).await, id);
    assert_eq!(handle(&w, &up).await.unwrap(), EventOutcome::Duplicate);
    // downgrade back to PRO; the older event arriving late acts on the current state
    w.app.payments.switch_price(&sub, "FMMailPro").unwrap();
    handle(&w, &sub_event("evt_down", "customer.subscription.updated", &sub)).await.unwrap();
    handle(&w, &sub_event("evt_late_invoice", "invoice.paid", &sub)).await.unwrap();
    assert_eq!(assert_on(&w, &u, "PRO", PRO_PLAN).await, id);
    // the resync agrees: nothing drifted
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), false).await.unwrap();
    assert!(drifts.is_empty(), "{drifts:?}");
}

#[tokio::test]
async fn a_fault_or_crash_at_each_call_of_a_plan_move_converges_on_redelivery() {
    let ops = [
        "stripe.get_subscription",
        "ddb.lock_account",
        "apigw.find_key",
        "apigw.plans_of",
        "apigw.detach",
        "apigw.attach",
        "cognito.set_plan",
        "ddb.put_account",
        "ddb.mark_event",
    ];
    let mut cases = 0;
    for op in ops {
        for fault in [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter] {
            let w = Arc::new(World::tiered());
            let u = w.user("dave");
            let sub = subscribe(&w, &u, "FMMailPro").await;
            let id = assert_on(&w, &u, "PRO", PRO_PLAN).await;
            w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
            let e = sub_event("evt_move", "customer.subscription.updated", &sub);
            w.meter.inject(op, fault);
            let (w2, e2) = (Arc::clone(&w), e.clone());
            let first = tokio::spawn(async move { handle(&w2, &e2).await }).await;
            w.meter.clear_faults();
            let tolerated = op == "ddb.mark_event" && fault == Fault::After;
            assert!(tolerated || !matches!(first, Ok(Ok(_))), "{op} {fault:?}: the fault fired");
            if !matches!(first, Ok(Ok(_))) {
                w.clock.advance(chrono::Duration::seconds(61));
                handle(&w, &e).await.unwrap_or_else(|err| panic!("{op} {fault:?}: redelivery: {err}"));
            }
            assert_eq!(assert_on(&w, &u, "BUSINESS", BUSINESS_PLAN).await, id, "{op} {fault:?}");
            cases += 1;
        }
    }
    println!("# plan move: {cases} fault cases converged");
}

#[tokio::test]
async fn a_plan_move_costs_these_round_trips() {
    let w = World::tiered();
    let u = w.user("erin");
    let sub = subscribe(&w, &u, "FMMailPro").await;
    w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
    w.meter.reset_calls();
    w.meter.set_latency(std::time::Duration::from_millis(20));
    let t = tokio::time::Instant::now();
    handle(&w, &sub_event("evt_move", "customer.subscription.updated", &sub)).await.unwrap();
    let ms = t.elapsed().as_millis();
    println!(
        "# plan move (webhook): {} calls, {ms} ms at 20 ms per call ≈ {} sequential: {:?}",
        w.meter.calls().len(),
        ms / 20,
        w.meter.calls()
    );
}

#[tokio::test]
async fn a_checkout_for_another_tier_while_subscribed_answers_with_the_portal() {
    let w = World::tiered();
    let u = w.user("frank");
    subscribe(&w, &u, "FMMailPro").await;
    let subs_before = w.app.payments.subscriptions().len();
    let to_business = checkout_for(&w, &u, "FMMailBusiness").await.unwrap();
    assert_eq!(to_business.kind, "billing_portal");
    assert!(to_business.url.contains("billing"), "{}", to_business.url);
    let same = checkout_for(&w, &u, "FMMailPro").await.unwrap_err();
    assert!(matches!(&same, Error::AlreadySubscribed(p) if p == "PRO"), "{same:?}");
    assert_eq!(w.app.payments.subscriptions().len(), subs_before, "no second subscription");
    // the free tier is not something to check out
    let free = checkout_for(&w, &u, "FREE").await.unwrap_err();
    assert!(matches!(free, Error::LookupKeyNotAllowed(_)), "{free:?}");
}

#[tokio::test]
async fn a_trial_is_offered_once_and_ending_it_without_paying_returns_the_user_to_free() {
    let w = World::tiered();
    let u = w.user("gina");
    w.app.payments.add_price("FMMailPro", 980, "jpy");
    let started = checkout_for(&w, &u, "FMMailPro").await.unwrap();
    let id = paykey::domain::SessionId::parse(started.url.rsplit('/').next().unwrap()).unwrap();
    assert_eq!(w.app.payments.checkout_trial_days(&id), Some(14), "a first-time customer gets the tier's trial");
    let key = w.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap().one_time_key;
    let sub = w.app.payments.pay(&id).unwrap().subscription.unwrap();
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    let key_id = assert_on(&w, &u, "PRO", PRO_PLAN).await;
    assert_eq!(w.app.payments.charge(&sub).unwrap().amount, 0, "nothing charged during the trial");
    // the trial ends without a payment method: Stripe pauses the subscription
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Paused);
    handle(&w, &sub_event("evt_paused", "customer.subscription.paused", &sub)).await.unwrap();
    handle(&w, &sub_event("evt_upd", "customer.subscription.updated", &sub)).await.unwrap();
    assert_eq!(assert_on(&w, &u, "FREE", FREE_PLAN).await, key_id);
    // a returning customer gets no second trial
    let again = checkout_for(&w, &u, "FMMailPro").await.unwrap();
    let id2 = paykey::domain::SessionId::parse(again.url.rsplit('/').next().unwrap()).unwrap();
    assert_eq!(w.app.payments.checkout_trial_days(&id2), Some(0));
}

#[tokio::test]
async fn today_s_catalog_behaves_as_before_cancelling_disables_the_pro_key() {
    let w = World::new();
    let u = w.user("hank");
    let sub = subscribe(&w, &u, "FMMailPro").await;
    assert_on(&w, &u, "PRO", paykey::flows::DEFAULT_PRO_USAGE_PLAN).await;
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    handle(&w, &sub_event("evt_c", "customer.subscription.deleted", &sub)).await.unwrap();
    let keys = keys_of(&w, &u);
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].1 && keys[0].2.is_none(), "disabled and detached: {keys:?}");
    assert_eq!(plan_of(&w, &u).await, Plan::FREE);
}

#[tokio::test]
async fn the_plans_list_the_catalog_with_stripe_prices_quotas_and_trials() {
    let w = World::tiered();
    let view = flows::list_plans(&w.app.payments, &w.app.settings).await.unwrap();
    let got: Vec<_> = view
        .plans
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.lookup_key.as_deref(),
                p.price.as_ref().and_then(|x| x.unit_amount),
                p.trial_days,
                p.has_api_key,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("FREE", None, None, 0, true),
            ("PRO", Some("FMMailPro"), Some(980), 14, true),
            ("BUSINESS", Some("FMMailBusiness"), Some(4980), 0, true)
        ]
    );
    assert_eq!(view.plans[0].quota.unwrap().limit, 1000);
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["plans"][1]["quota"], serde_json::json!({"limit": 100000, "period": "MONTH"}));
    assert_eq!(json["plans"][1]["price"]["currency"], "jpy");
}

#[tokio::test]
async fn the_key_report_counts_every_key_and_each_tier_s_plan() {
    let w = World::tiered();
    let (a, b) = (w.user("ann"), w.user("ben"));
    free_key(&w, &a).await.unwrap();
    subscribe(&w, &b, "FMMailBusiness").await;
    w.app.keys.create("someone-elses-key").await.unwrap();
    let c = flows::count_keys(&w.app.keys, w.app.ctx()).await.unwrap();
    assert_eq!(c.total, 3, "keys outside paykey's plans count too");
    assert_eq!(
        c.per_tier,
        [
            ("FREE".to_string(), FREE_PLAN.to_string(), 1),
            ("PRO".to_string(), PRO_PLAN.to_string(), 0),
            ("BUSINESS".to_string(), BUSINESS_PLAN.to_string(), 1)
        ]
    );
    assert_eq!(
        c.to_string(),
        "API keys: 3 of 10000 per account and Region (0.0%); in the tiers' usage plans: FREE 1, PRO 0, BUSINESS 1"
    );
}

/// The lifecycle table, extended to tiers and trials: each (status, price) a subscription can
/// be in → the plan and the usage plan of the user's one key (or "unchanged").
#[tokio::test]
async fn the_lifecycle_table_gives_each_status_and_price_its_tier_and_usage_plan() {
    use SubscriptionStatus::*;
    let day = chrono::Duration::days(1);
    // (status, price, days past due already, want (tier, usage plan)); None: unchanged (PRO)
    type Row = (SubscriptionStatus, &'static str, i64, Option<(&'static str, &'static str)>);
    let table: [Row; 12] = [
        (Active, "FMMailPro", 0, Some(("PRO", PRO_PLAN))),
        (Active, "FMMailBusiness", 0, Some(("BUSINESS", BUSINESS_PLAN))),
        (Trialing, "FMMailPro", 0, Some(("PRO", PRO_PLAN))),
        (Trialing, "FMMailBusiness", 0, Some(("BUSINESS", BUSINESS_PLAN))),
        (PastDue, "FMMailBusiness", 0, Some(("BUSINESS", BUSINESS_PLAN))),
        (PastDue, "FMMailBusiness", 8, Some(("FREE", FREE_PLAN))),
        (Canceled, "FMMailBusiness", 0, Some(("FREE", FREE_PLAN))),
        (Unpaid, "FMMailPro", 0, Some(("FREE", FREE_PLAN))),
        (IncompleteExpired, "FMMailPro", 0, Some(("FREE", FREE_PLAN))),
        (Paused, "FMMailBusiness", 0, Some(("FREE", FREE_PLAN))),
        (Incomplete, "FMMailBusiness", 0, None),
        (Other("future_status".into()), "FMMailBusiness", 0, None),
    ];
    for (i, (status, price, past_due_days, want)) in table.into_iter().enumerate() {
        let w = World::tiered();
        let u = w.user("tab");
        let sub = subscribe(&w, &u, "FMMailPro").await;
        let id = assert_on(&w, &u, "PRO", PRO_PLAN).await;
        if past_due_days > 0 {
            w.app.payments.update_subscription(&sub, |s| s.status = PastDue);
            handle(&w, &sub_event("evt_pd", "invoice.payment_failed", &sub)).await.unwrap();
            w.clock.advance(day * past_due_days as i32);
        }
        w.app.payments.switch_price(&sub, price).unwrap();
        w.app.payments.update_subscription(&sub, |s| s.status = status.clone());
        handle(&w, &sub_event(&format!("evt_{i}"), "customer.subscription.updated", &sub)).await.unwrap();
        let (tier, plan) = want.unwrap_or(("PRO", PRO_PLAN));
        assert_eq!(assert_on(&w, &u, tier, plan).await, id, "{status:?} {price} +{past_due_days}d: one key for life");
    }
}
