//! Crash matrices generated from the calls each flow really makes (issue 23): a clean run of the
//! flow records its backend calls (every call site, every occurrence, the branch and error-path
//! calls of the scenario included); then, in a new world each time, the call at each recorded
//! position fails or crashes — before or after it takes effect — and the flow's retry (a
//! refreshed redirect, Stripe's redelivery, the next sweep or resync) must end in the state the
//! clean run ends in. The number of cases is asserted: recorded calls × 4 faults. A panic that
//! is not an injected crash fails the case. The rotation's matrix is in `rotate.rs`.

mod support;

use std::future::Future;
use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::domain::{CustomerId, Plan, SessionId, SubscriptionId, User};
use paykey::flows;
use paykey::ports::{EventSubject, StripeEvent, SubscriptionStatus, UserDirectory};
use support::{World, BUSINESS_PLAN, FREE_PLAN, PRO_PLAN};

const FAULTS: [Fault; 4] = [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter];

/// Runs the matrix: `setup` builds a world up to the flow (and what the flow needs), `flow`
/// runs it once (its result is ignored: faults make it fail), `settle` retries as the system
/// would and asserts the end state (with the case's name for messages). Returns the cases run.
async fn matrix<T, Setup, SetupFut, Flow, FlowFut, Settle, SettleFut>(
    name: &str,
    setup: Setup,
    flow: Flow,
    settle: Settle,
) -> usize
where
    T: Clone + Send + 'static,
    Setup: Fn() -> SetupFut,
    SetupFut: Future<Output = (Arc<World>, T)>,
    Flow: Fn(Arc<World>, T) -> FlowFut,
    FlowFut: Future<Output = ()> + Send + 'static,
    Settle: Fn(Arc<World>, T, String) -> SettleFut,
    SettleFut: Future<Output = ()>,
{
    let (w, t) = setup().await;
    w.meter.reset_calls();
    flow(Arc::clone(&w), t.clone()).await;
    let recorded = w.meter.calls();
    settle(w, t, format!("{name}: clean run")).await;
    assert!(!recorded.is_empty(), "{name}: the flow made calls");
    let mut cases = 0;
    for (i, op) in recorded.iter().enumerate() {
        let n = recorded[..i].iter().filter(|c| *c == op).count();
        for fault in FAULTS {
            let case = format!("{name}: call {i} ({op} #{n}) {fault:?}");
            let (w, t) = setup().await;
            w.meter.reset_calls();
            w.meter.inject_at(op, n, fault);
            if let Err(e) = tokio::spawn(flow(Arc::clone(&w), t.clone())).await {
                let p = e.into_panic();
                let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(msg.starts_with("injected crash"), "{case}: an unexpected panic: {msg}");
            }
            assert!(!w.meter.faults_pending(), "{case}: the fault struck");
            w.meter.clear_faults();
            w.clock.advance(chrono::Duration::seconds(61)); // a crashed holder's leases expire
            settle(w, t, case).await;
            cases += 1;
        }
    }
    assert_eq!(cases, recorded.len() * FAULTS.len(), "{name}: every recorded call × every fault");
    println!("# {name}: {} recorded calls × {} faults = {cases} cases converged", recorded.len(), FAULTS.len());
    cases
}

/// The user's quota use as `/account` shows it.
async fn usage_of(w: &World, u: &User) -> flows::UsageView {
    flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), u).await.unwrap().usage.unwrap()
}

async fn handle(w: &World, e: &StripeEvent) -> Result<flows::EventOutcome, paykey::Error> {
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), e).await
}

fn sub_event(id: &str, kind: &str, sub: &SubscriptionId) -> StripeEvent {
    StripeEvent {
        id: id.into(),
        kind: kind.into(),
        subject: EventSubject::Subscription { id: sub.clone(), customer: None },
    }
}

/// One enabled key for the user, the recorded one, in `plan` and no other; directory and record
/// on `tier`.
async fn assert_one_key_in(w: &World, u: &User, plan: &str, tier: &str, case: &str) {
    let name = w.app.settings.key_name(u);
    let enabled: Vec<_> = w.app.keys.all().into_iter().filter(|k| k.name == name && k.enabled).collect();
    let account =
        w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap_or_else(|| panic!("{case}: no record"));
    assert_eq!(enabled.len(), 1, "{case}: one enabled key: {enabled:?}");
    assert_eq!(account.api_key_id.as_deref(), Some(enabled[0].id.as_str()), "{case}: the recorded key");
    assert_eq!(w.app.keys.plan_of(&enabled[0].id).as_deref(), Some(plan), "{case}: in {plan}");
    for k in w.app.keys.all().into_iter().filter(|k| k.name == name && !k.enabled) {
        assert_eq!(w.app.keys.plan_of(&k.id), None, "{case}: a disabled key in no plan");
    }
    assert_eq!(account.plan.as_str(), tier, "{case}: record");
    assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan().as_str(), tier, "{case}: directory");
}

#[tokio::test]
async fn the_first_purchase_converges_after_a_fault_at_any_call() {
    matrix(
        "first purchase (success redirect)",
        || async {
            let w = Arc::new(World::new());
            let u = w.user("alice");
            let (id, key) = w.checkout_and_pay(&u).await;
            (w, (u, id, key))
        },
        |w, (_, id, key)| async move {
            let _ = w.complete(&id, &key).await;
        },
        |w, (u, id, key), case| async move {
            // the user refreshes the success page; Stripe delivers checkout.session.completed
            let r = w.complete(&id, &key).await.unwrap_or_else(|e| panic!("{case}: refresh: {e}"));
            assert!(r.is_success(), "{case}: {r:?}");
            let e = StripeEvent {
                id: "evt_done".into(),
                kind: "checkout.session.completed".into(),
                subject: EventSubject::Checkout(id.clone()),
            };
            handle(&w, &e).await.unwrap_or_else(|e| panic!("{case}: webhook: {e}"));
            w.assert_fulfilled_once(&u, &id).await;
        },
    )
    .await;
}

#[tokio::test]
async fn the_free_key_converges_after_a_fault_at_any_call() {
    matrix(
        "free key",
        || async {
            let w = Arc::new(World::tiered());
            let u = w.user("bob");
            (w, u)
        },
        |w, u| async move {
            let _ = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await;
        },
        |w, u, case| async move {
            let k = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u)
                .await
                .unwrap_or_else(|e| panic!("{case}: retry: {e}"));
            assert_one_key_in(&w, &u, FREE_PLAN, "FREE", &case).await;
            assert_eq!(
                w.app.keys.call(&k.api_key.value, paykey::ports::Clock::now(&*w.clock)).map(|(_, p)| p).as_deref(),
                Ok(FREE_PLAN)
            );
        },
    )
    .await;
}

/// A PRO user (trial) switched to BUSINESS in the portal: the key moves plans.
async fn pro_then_switched() -> (Arc<World>, (User, SubscriptionId)) {
    let w = Arc::new(World::tiered());
    let u = w.user("carol");
    flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
    (w, (u, sub))
}

#[tokio::test]
async fn a_plan_move_converges_after_a_fault_at_any_call() {
    matrix(
        "plan move (PRO → BUSINESS webhook)",
        pro_then_switched,
        |w, (_, sub)| async move {
            let _ = handle(&w, &sub_event("evt_move", "customer.subscription.updated", &sub)).await;
        },
        |w, (u, sub), case| async move {
            // Stripe redelivers after a 5xx (a done event is answered as a duplicate)
            handle(&w, &sub_event("evt_move", "customer.subscription.updated", &sub))
                .await
                .unwrap_or_else(|e| panic!("{case}: redelivery: {e}"));
            assert_one_key_in(&w, &u, BUSINESS_PLAN, "BUSINESS", &case).await;
        },
    )
    .await;
}

/// A user whose rotated-out key's grace is over, both keys used.
async fn grace_over() -> (Arc<World>, User) {
    let w = Arc::new(World::tiered());
    let u = w.user("dora");
    let k = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap().api_key;
    w.app.keys.call(&k.value, paykey::ports::Clock::now(&*w.clock)).unwrap();
    let req = flows::RotateRequest { grace_seconds: 600, request_id: None };
    let r = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &u, req).await.unwrap();
    w.app.keys.call(&k.value, paykey::ports::Clock::now(&*w.clock)).unwrap();
    w.app.keys.call(&r.api_key.value, paykey::ports::Clock::now(&*w.clock)).unwrap();
    w.clock.advance(chrono::Duration::seconds(601));
    (w, u)
}

#[tokio::test]
async fn the_sweep_converges_after_a_fault_at_any_call_and_loses_no_quota() {
    matrix(
        "sweep (end of a grace)",
        grace_over,
        |w, _| async move {
            let _ = flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await;
        },
        |w, u, case| async move {
            flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx())
                .await
                .unwrap_or_else(|e| panic!("{case}: next sweep: {e}"));
            assert_one_key_in(&w, &u, FREE_PLAN, "FREE", &case).await;
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert_eq!((account.previous_key_id, account.previous_key_until), (None, None), "{case}");
            let usage = usage_of(&w, &u).await;
            assert_eq!(usage.remaining, 997, "{case}: 1,000 − 3 calls over both keys, exactly");
        },
    )
    .await;
}

/// A PRO user with a second subscription to a catalog price on the same customer.
async fn with_duplicate() -> (Arc<World>, (User, SubscriptionId, SubscriptionId)) {
    let w = Arc::new(World::new());
    let u = w.user("erin");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let state = w.app.payments.get_checkout_state(&id);
    let customer: CustomerId = state.customer.unwrap();
    let dup = w.app.payments.subscribe_elsewhere(Some(&customer), "FMMailPro", 980);
    (w, (u, state.subscription.unwrap(), dup.id))
}

#[tokio::test]
async fn a_duplicate_cancel_converges_after_a_fault_at_any_call_and_refunds_once() {
    matrix(
        "duplicate cancel",
        with_duplicate,
        |w, (_, _, dup)| async move {
            let _ = handle(&w, &sub_event("evt_dup", "customer.subscription.created", &dup)).await;
        },
        |w, (u, kept, dup), case| async move {
            handle(&w, &sub_event("evt_dup", "customer.subscription.created", &dup))
                .await
                .unwrap_or_else(|e| panic!("{case}: redelivery: {e}"));
            let subs = w.app.payments.subscriptions();
            let status = |id: &SubscriptionId| subs.iter().find(|s| &s.id == id).unwrap().status.clone();
            assert_eq!(status(&dup), SubscriptionStatus::Canceled, "{case}");
            assert_eq!(status(&kept), SubscriptionStatus::Active, "{case}");
            assert_eq!(w.app.payments.charge(&dup).unwrap().refunded, 980, "{case}: refunded once, in full");
            assert_eq!(w.app.payments.charge(&kept).unwrap().refunded, 0, "{case}");
            assert_one_key_in(&w, &u, PRO_PLAN, "PRO", &case).await;
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert_eq!(account.subscription_id.as_ref(), Some(&kept), "{case}");
        },
    )
    .await;
}

/// A PRO user whose cancellation webhook was missed.
async fn missed_cancellation() -> (Arc<World>, (User, SessionId)) {
    let w = Arc::new(World::new());
    let u = w.user("fred");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled).unwrap();
    (w, (u, id))
}

#[tokio::test]
async fn the_resync_converges_after_a_fault_at_any_call() {
    matrix(
        "resync --apply (a missed cancellation)",
        missed_cancellation,
        |w, _| async move {
            let _ = flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await;
        },
        |w, (u, _), case| async move {
            flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true)
                .await
                .unwrap_or_else(|e| panic!("{case}: run again: {e}"));
            let left = flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), false)
                .await
                .unwrap();
            assert!(left.is_empty(), "{case}: no drift left: {left:?}");
            assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan(), Plan::FREE, "{case}");
            let name = w.app.settings.key_name(&u);
            assert!(w.app.keys.all().iter().filter(|k| k.name == name).all(|k| !k.enabled), "{case}: key off");
            assert!(w.app.keys.plan_members().is_empty(), "{case}: in no plan");
        },
    )
    .await;
}

/// The sweep crashes or fails at any call, and the user's next rotation (not the sweep) comes
/// first: it finishes what the sweep wrote down, never picks the retired key as its new one,
/// and the pool stays exact.
#[tokio::test]
async fn a_rotation_after_a_failed_sweep_finishes_it_and_never_revives_the_retired_key() {
    matrix(
        "sweep, then a rotation",
        grace_over,
        |w, _| async move {
            let _ = flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await;
        },
        |w, u, case| async move {
            let req = flows::RotateRequest { grace_seconds: 0, request_id: Some("after-sweep".into()) };
            let r = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &u, req)
                .await
                .unwrap_or_else(|e| panic!("{case}: rotation: {e}"));
            assert_one_key_in(&w, &u, FREE_PLAN, "FREE", &case).await;
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert_eq!(account.api_key_id.as_deref(), Some(r.api_key.id.as_str()), "{case}");
            let usage = usage_of(&w, &u).await;
            assert_eq!(usage.remaining, 997, "{case}: 1,000 − 3 calls, exactly");
            w.app
                .keys
                .call(&r.api_key.value, paykey::ports::Clock::now(&*w.clock))
                .unwrap_or_else(|e| panic!("{case}: the new key works: {e:?}"));
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Operator actions (`paykey-admin`): the operator's retry is the same command again.

/// A PRO subscriber with a used key: (user, subscription).
async fn paying() -> (Arc<World>, (User, SubscriptionId)) {
    let w = Arc::new(World::tiered());
    let u = w.user("olga");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let sub = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap().subscription_id.unwrap();
    (w, (u, sub))
}

#[tokio::test]
async fn a_comp_converges_after_a_fault_at_any_call_and_survives_the_next_webhook() {
    // the worlds' clocks all start at one instant
    let until = paykey::ports::Clock::now(&*support::World::new().clock) + chrono::Duration::days(30);
    let business = move || Some(("BUSINESS".parse::<Plan>().unwrap(), until, "apology".to_string()));
    matrix(
        "comp (BUSINESS for a subscriber whose subscription ended)",
        || async {
            let (w, (u, sub)) = paying().await;
            w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
            handle(&w, &sub_event("evt_end", "customer.subscription.deleted", &sub)).await.unwrap();
            (w, (u, sub))
        },
        move |w, (u, _)| async move {
            let _ = flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, business()).await;
        },
        move |w, (u, sub), case| async move {
            flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, business())
                .await
                .unwrap_or_else(|e| panic!("{case}: the command again: {e}"));
            assert_one_key_in(&w, &u, BUSINESS_PLAN, "BUSINESS", &case).await;
            handle(&w, &sub_event("evt_late", "customer.subscription.updated", &sub))
                .await
                .unwrap_or_else(|e| panic!("{case}: a late webhook: {e}"));
            assert_one_key_in(&w, &u, BUSINESS_PLAN, "BUSINESS", &case).await;
        },
    )
    .await;
}

#[tokio::test]
async fn a_suspension_converges_after_a_fault_at_any_call_and_a_webhook_never_lifts_it() {
    matrix(
        "suspend (a subscriber)",
        paying,
        |w, (u, _)| async move {
            let why = Some("abuse".to_string());
            let _ = flows::admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, why).await;
        },
        |w, (u, sub), case| async move {
            // Stripe's event before the operator's retry: it must not re-enable a suspended key
            // whatever the crash left (a crash before the suspension was recorded leaves none).
            handle(&w, &sub_event("evt_between", "customer.subscription.updated", &sub))
                .await
                .unwrap_or_else(|e| panic!("{case}: webhook: {e}"));
            let why = Some("abuse".to_string());
            flows::admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, why)
                .await
                .unwrap_or_else(|e| panic!("{case}: the command again: {e}"));
            let name = w.app.settings.key_name(&u);
            let keys: Vec<_> = w.app.keys.all().into_iter().filter(|k| k.name == name).collect();
            assert_eq!(keys.len(), 1, "{case}: {keys:?}");
            assert!(!keys[0].enabled, "{case}: disabled");
            assert_eq!(w.app.keys.plan_of(&keys[0].id).as_deref(), Some(PRO_PLAN), "{case}: kept in its plan");
            handle(&w, &sub_event("evt_after", "customer.subscription.updated", &sub)).await.unwrap();
            assert!(!w.app.keys.all().iter().any(|k| k.name == name && k.enabled), "{case}: still disabled");
        },
    )
    .await;
}

#[tokio::test]
async fn an_erasure_converges_after_a_fault_at_any_call_when_run_again() {
    use paykey::flows::admin::{EraseOptions, Who};
    let opts = EraseOptions { cancel_subscriptions: true, delete_customer: true };
    matrix(
        "erase (a subscriber, customer deleted)",
        paying,
        move |w, (u, _)| async move {
            let _ =
                flows::admin::erase(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &u, opts)
                    .await;
        },
        move |w, (u, sub), case| async move {
            let customer = w.app.payments.subscriptions().into_iter().find(|s| s.id == sub).unwrap().customer;
            // the operator runs it again, finding the user by sub (the name may be gone)
            let who = Who::Sub(u.id.clone());
            let found = flows::admin::find_user(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &who)
                .await
                .unwrap_or_else(|e| panic!("{case}: find: {e}"));
            if let Some(again) = found {
                assert_eq!(again, u, "{case}");
                flows::admin::erase(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &u, opts)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: the command again: {e}"));
            }
            let name = w.app.settings.key_name(&u);
            assert!(w.app.keys.all().iter().all(|k| k.name != name), "{case}: no key left");
            assert!(w.app.keys.plan_members().is_empty(), "{case}: nothing in a plan");
            assert!(w.app.store.accounts().iter().all(|a| a.user_id != u.id), "{case}: no record");
            assert!(w.app.users.get_user(&u.name).await.unwrap().is_none(), "{case}: no directory user");
            assert!(!w.app.payments.has_customer(&customer), "{case}: customer deleted");
            let s = w.app.payments.subscriptions().into_iter().find(|s| s.id == sub).unwrap();
            assert_eq!(s.status, SubscriptionStatus::Canceled, "{case}");
        },
    )
    .await;
}

#[tokio::test]
async fn the_end_of_a_comp_converges_after_a_fault_at_any_call_on_the_next_sweep() {
    matrix(
        "comp ends (sweep)",
        || async {
            let w = Arc::new(World::tiered());
            let u = w.user("cleo");
            let until = paykey::ports::Clock::now(&*w.clock) + chrono::Duration::days(1);
            let pro = Some((Plan::PRO, until, String::new()));
            flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, pro).await.unwrap();
            w.clock.advance(chrono::Duration::days(2));
            (w, u)
        },
        |w, _| async move {
            let _ = flows::end_expired_comps(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx()).await;
        },
        |w, u, case| async move {
            flows::end_expired_comps(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx())
                .await
                .unwrap_or_else(|e| panic!("{case}: next sweep: {e}"));
            assert_one_key_in(&w, &u, FREE_PLAN, "FREE", &case).await;
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert!(account.comp.is_none(), "{case}: comp cleared");
        },
    )
    .await;
}

#[tokio::test]
async fn lifting_a_suspension_converges_after_a_fault_at_any_call() {
    matrix(
        "unsuspend (a subscriber)",
        || async {
            let (w, t) = paying().await;
            let why = Some("abuse".to_string());
            flows::admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &t.0, why)
                .await
                .unwrap();
            (w, t)
        },
        |w, (u, _)| async move {
            let _ = flows::admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, None).await;
        },
        |w, (u, _), case| async move {
            flows::admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, None)
                .await
                .unwrap_or_else(|e| panic!("{case}: the command again: {e}"));
            assert_one_key_in(&w, &u, PRO_PLAN, "PRO", &case).await;
        },
    )
    .await;
}

#[tokio::test]
async fn ending_a_comp_by_hand_converges_after_a_fault_at_any_call() {
    matrix(
        "comp --end (a free user)",
        || async {
            let w = Arc::new(World::tiered());
            let u = w.user("enzo");
            let until = paykey::ports::Clock::now(&*w.clock) + chrono::Duration::days(9);
            let pro = Some((Plan::PRO, until, String::new()));
            flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, pro).await.unwrap();
            (w, u)
        },
        |w, u| async move {
            let _ = flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, None).await;
        },
        |w, u, case| async move {
            flows::admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, None)
                .await
                .unwrap_or_else(|e| panic!("{case}: the command again: {e}"));
            assert_one_key_in(&w, &u, FREE_PLAN, "FREE", &case).await;
        },
    )
    .await;
}

#[tokio::test]
async fn reclaiming_an_idle_free_key_converges_after_a_fault_at_any_call() {
    matrix(
        "reclaim an idle free key (sweep)",
        || async {
            let mut w = World::tiered();
            w.app.settings.free_key_idle_days = Some(30);
            let w = Arc::new(w);
            let u = w.user("ivy");
            flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
            w.clock.advance(chrono::Duration::days(31));
            (w, u)
        },
        |w, _| async move {
            let accounts = w.app.store.accounts();
            let _ = flows::reclaim_idle_free_keys(&w.app.store, &w.app.keys, w.app.ctx(), &accounts).await;
        },
        |w, u, case| async move {
            let accounts = w.app.store.accounts();
            flows::reclaim_idle_free_keys(&w.app.store, &w.app.keys, w.app.ctx(), &accounts)
                .await
                .unwrap_or_else(|e| panic!("{case}: next run: {e}"));
            let name = w.app.settings.key_name(&u);
            assert!(w.app.keys.all().iter().all(|k| k.name != name), "{case}: the idle key is gone");
            // the user's next request: one new working key on the free plan
            let k = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u)
                .await
                .unwrap_or_else(|e| panic!("{case}: the user's next request: {e}"));
            assert!(k.created, "{case}");
            assert_one_key_in(&w, &u, FREE_PLAN, "FREE", &case).await;
        },
    )
    .await;
}

/// Two customers of the metered PRO with calls on 2026-11-23 (700 and 1,300), reported at
/// 03:00 the next day, when the day has settled.
async fn two_metered_customers() -> (Arc<World>, Vec<(paykey::domain::CustomerId, u64)>) {
    let w = Arc::new(World::metered());
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let mut expected = Vec::new();
    for (name, calls) in [("jane", 700), ("kim", 1300)] {
        let u = w.user(name);
        let (id, key) = w.checkout_and_pay(&u).await;
        w.complete(&id, &key).await.unwrap();
        let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
        w.app.keys.add_use(a.api_key_id.as_deref().unwrap(), PRO_PLAN, day, calls);
        expected.push((a.customer_id.unwrap(), calls));
    }
    w.clock.advance(chrono::Duration::hours(15)); // 2026-11-24 03:00
    (w, expected)
}

#[tokio::test]
async fn the_usage_report_converges_after_a_fault_at_any_call_and_never_counts_twice() {
    use paykey::ports::metering::UsageCursor;
    matrix(
        "usage report",
        two_metered_customers,
        |w, _| async move {
            let accounts = w.app.store.accounts();
            let _ =
                flows::metering::report_usage(&w.app.keys, &w.app.payments, &w.app.store, w.app.ctx(), &accounts).await;
        },
        |w, expected, case| async move {
            // the next hourly run
            w.clock.advance(chrono::Duration::hours(1));
            let accounts = w.app.store.accounts();
            flows::metering::report_usage(&w.app.keys, &w.app.payments, &w.app.store, w.app.ctx(), &accounts)
                .await
                .unwrap_or_else(|e| panic!("{case}: next run: {e}"));
            let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
            for (customer, calls) in &expected {
                assert_eq!(w.app.payments.meter_total(customer, day, day), *calls, "{case}: {customer}");
            }
            assert_eq!(w.app.store.reported_through().await.unwrap(), Some(day), "{case}: settled");
        },
    )
    .await;
}

/// A metered PRO subscriber with 150 calls a day from 23 to 30 November, the hourly report
/// settled through the 27th, and Stripe opening the period's invoice on 23 December 12:00:
/// (world, (customer, the invoice.created event)).
async fn closing_period() -> (Arc<World>, (CustomerId, StripeEvent)) {
    use chrono::TimeZone;
    use paykey::ports::metering::UsageCursor;
    let w = Arc::new(World::metered());
    let u = w.user("fay");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    for d in 23..=30 {
        w.app.keys.add_use(a.api_key_id.as_deref().unwrap(), PRO_PLAN, day(d), 150);
    }
    w.app.store.set_reported_through(day(27)).await.unwrap();
    let start = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    let end = chrono::Utc.with_ymd_and_hms(2026, 12, 23, 12, 0, 0).unwrap();
    let now = paykey::ports::Clock::now(&*w.clock);
    w.clock.advance(end + chrono::Duration::seconds(5) - now);
    let customer = a.customer_id.clone().unwrap();
    let e = StripeEvent {
        id: "evt_close".into(),
        kind: "invoice.created".into(),
        subject: EventSubject::ClosingInvoice {
            subscription: a.subscription_id.clone().unwrap(),
            customer: customer.clone(),
            period_start: start,
            period_end: end,
        },
    };
    (w, (customer, e))
}

/// The period's invoice.created fails or crashes at any call, then Stripe redelivers it (a 5xx
/// or no answer: it retries; an answered event is a duplicate): the days after the cursor hold
/// exactly the calls served, never twice.
#[tokio::test]
async fn the_closing_invoices_usage_converges_after_a_fault_at_any_call_and_never_counts_twice() {
    matrix(
        "closing invoice (invoice.created)",
        closing_period,
        |w, (_, e)| async move {
            let _ = handle(&w, &e).await;
        },
        |w, (customer, e), case| async move {
            handle(&w, &e).await.unwrap_or_else(|err| panic!("{case}: redelivery: {err}"));
            let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
            for d in 28..=30 {
                assert_eq!(w.app.payments.meter_total(&customer, day(d), day(d)), 150, "{case}: day {d}");
            }
        },
    )
    .await;
}

/// A metered PRO user (quota 5,000, 1,000 included) who used 600 calls and rotated with a grace
/// (two working keys): (user, the two key values).
async fn metered_in_grace() -> (Arc<World>, (User, [String; 2])) {
    let w = Arc::new(World::metered());
    let u = w.user("erin");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let now = paykey::ports::Clock::now(&*w.clock);
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    let first =
        paykey::ports::KeyRegistry::key_value(&w.app.keys, a.api_key_id.as_deref().unwrap()).await.unwrap().unwrap();
    for _ in 0..600 {
        w.app.keys.call(&first, now).unwrap();
    }
    let req = flows::RotateRequest { grace_seconds: 3600, request_id: None };
    let second = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &u, req).await.unwrap().api_key.value;
    (w, (u, [first, second]))
}

/// The spend cap (issue 26) fails or crashes at any call, then the customer sets it again: the
/// two keys of a grace together serve exactly the cap less what was used — never more, however
/// the first attempt ended.
#[tokio::test]
async fn a_spend_cap_converges_after_a_fault_at_any_call_and_never_serves_beyond_it() {
    matrix(
        "spend cap during a grace",
        metered_in_grace,
        |w, (u, _)| async move {
            let _ = flows::set_spend_cap(
                &w.app.store,
                &w.app.keys,
                w.app.ctx(),
                &u,
                flows::CapRequest { requests: Some(1500) },
            )
            .await;
        },
        |w, (u, values), case| async move {
            let r = flows::set_spend_cap(
                &w.app.store,
                &w.app.keys,
                w.app.ctx(),
                &u,
                flows::CapRequest { requests: Some(1500) },
            )
            .await
            .unwrap_or_else(|e| panic!("{case}: the retry: {e}"));
            assert_eq!(r.spend_cap.requests, 1500, "{case}");
            let now = paykey::ports::Clock::now(&*w.clock);
            let mut served = 0;
            for v in &values {
                while served < 10_000 && w.app.keys.call(v, now).is_ok() {
                    served += 1;
                }
            }
            assert_eq!(served, 900, "{case}: 1,500 less the 600 used, over both keys");
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert_eq!(account.pending_key_work, None, "{case}");
        },
    )
    .await;
}

/// The same faults, settled by the sweep alone (no retry by the customer): what the first
/// attempt wrote down is finished; if it wrote nothing, the quota is as it was. Either way the
/// two keys serve the cap less what was used (when the cap was recorded) or the quota's rest.
#[tokio::test]
async fn a_failed_spend_cap_is_finished_by_the_sweep_or_left_as_it_was() {
    matrix(
        "spend cap during a grace, then only the sweep",
        metered_in_grace,
        |w, (u, _)| async move {
            let req = flows::CapRequest { requests: Some(1500) };
            let _ = flows::set_spend_cap(&w.app.store, &w.app.keys, w.app.ctx(), &u, req).await;
        },
        |w, (u, values), case| async move {
            flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx())
                .await
                .unwrap_or_else(|e| panic!("{case}: sweep: {e}"));
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert_eq!(account.pending_key_work, None, "{case}: finished");
            let now = paykey::ports::Clock::now(&*w.clock);
            let mut served = 0;
            for v in &values {
                while served < 10_000 && w.app.keys.call(v, now).is_ok() {
                    served += 1;
                }
            }
            let want = if account.spend_cap.is_some() { 900 } else { 4400 };
            assert_eq!(served, want, "{case}: cap recorded: {}", account.spend_cap.is_some());
        },
    )
    .await;
}
