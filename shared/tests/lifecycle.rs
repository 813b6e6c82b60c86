//! The subscription lifecycle on in-memory ports: events keep plan and key in step with
//! Stripe, whatever their order, duplicates, or failures.

mod support;

use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::domain::{Plan, SubscriptionId, User};
use paykey::flows::{self, EventOutcome};
use paykey::ports::{EventSubject, KeyRegistry, StripeEvent, SubscriptionStatus, UserDirectory};
use support::World;

fn event(id: &str, kind: &str, subject: EventSubject) -> StripeEvent {
    StripeEvent { id: id.into(), kind: kind.into(), subject }
}

fn sub_event(id: &str, kind: &str, sub: &SubscriptionId) -> StripeEvent {
    event(id, kind, EventSubject::Subscription { id: sub.clone(), customer: None })
}

async fn handle(w: &World, e: &StripeEvent) -> Result<EventOutcome, paykey::Error> {
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), e).await
}

/// A PRO user through checkout and the success redirect; returns the subscription id.
async fn pro_user(w: &World, name: &str) -> (User, SubscriptionId) {
    let u = w.user(name);
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let sub = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap().subscription_id.unwrap();
    (u, sub)
}

async fn plan_of(w: &World, u: &User) -> Plan {
    w.app.users.get_user(&u.name).await.unwrap().unwrap().plan()
}

fn enabled_keys(w: &World, u: &User) -> usize {
    let name = w.app.settings.key_name(u);
    w.app.keys.all().into_iter().filter(|k| k.name == name && k.enabled).count()
}

#[tokio::test]
async fn checkout_completed_before_the_redirect_fulfils_and_the_redirect_then_says_thanks() {
    let w = World::new();
    let u = w.user("alice");
    let (id, key) = w.checkout_and_pay(&u).await;
    let out =
        handle(&w, &event("evt_1", "checkout.session.completed", EventSubject::Checkout(id.clone()))).await.unwrap();
    assert!(matches!(out, EventOutcome::Processed(ref s) if s.starts_with("issued key")), "{out:?}");
    assert_eq!(w.complete(&id, &key).await.unwrap(), flows::Completion::AlreadyFulfilled);
    w.assert_fulfilled_once(&u, &id).await;
}

#[tokio::test]
async fn cancellation_downgrades_disables_and_detaches_the_key_and_keeps_the_customer() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    let value = view.api_key.unwrap().value;
    assert!(w.app.keys.authorize(&value).is_some());

    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let out = handle(&w, &sub_event("evt_del", "customer.subscription.deleted", &sub)).await.unwrap();
    assert_eq!(out, EventOutcome::Processed("alice is FREE".into()));
    assert_eq!(plan_of(&w, &u).await, Plan::FREE);
    assert_eq!(enabled_keys(&w, &u), 0);
    assert!(
        w.app.keys.plan_key_ids(paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap().is_empty(),
        "detached from the PRO plan"
    );
    assert_eq!(w.app.keys.authorize(&value), None, "the product API would reject the key");
    assert!(w.app.users.get_user(&u.name).await.unwrap().unwrap().customer_id.is_some(), "customer id kept");
    let acct = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(acct.plan, Plan::FREE);
    assert_eq!(acct.subscription_status.as_deref(), Some("canceled"));
}

#[tokio::test]
async fn a_duplicate_event_is_processed_once() {
    let w = World::new();
    let (_u, sub) = pro_user(&w, "alice").await;
    let e = sub_event("evt_dup", "customer.subscription.updated", &sub);
    assert!(matches!(handle(&w, &e).await.unwrap(), EventOutcome::Processed(_)));
    w.meter.reset_calls();
    assert_eq!(handle(&w, &e).await.unwrap(), EventOutcome::Duplicate);
    assert_eq!(w.meter.calls(), vec!["ddb.event_seen"], "nothing else was called");
}

#[tokio::test]
async fn out_of_order_events_converge_on_stripes_current_state() {
    // deleted arrives before an older updated (and before invoice.paid): still FREE.
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    handle(&w, &sub_event("evt_2", "customer.subscription.deleted", &sub)).await.unwrap();
    handle(&w, &sub_event("evt_1", "customer.subscription.updated", &sub)).await.unwrap();
    let inv = event("evt_0", "invoice.paid", EventSubject::Invoice { subscription: Some(sub.clone()), customer: None });
    handle(&w, &inv).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::FREE);
    assert_eq!(enabled_keys(&w, &u), 0);

    // and the other way round: created after updated (both active) → PRO with one key.
    let w = World::new();
    let (u, sub) = pro_user(&w, "bob").await;
    handle(&w, &sub_event("evt_b2", "customer.subscription.updated", &sub)).await.unwrap();
    handle(&w, &sub_event("evt_b1", "customer.subscription.created", &sub)).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::PRO);
    assert_eq!(enabled_keys(&w, &u), 1);
}

#[tokio::test]
async fn past_due_keeps_pro_during_the_grace_period_then_downgrades() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::PastDue);
    let failed = |n: &str| {
        event(n, "invoice.payment_failed", EventSubject::Invoice { subscription: Some(sub.clone()), customer: None })
    };
    handle(&w, &failed("evt_f1")).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::PRO, "within the grace period");
    assert_eq!(enabled_keys(&w, &u), 1);
    w.clock.advance(chrono::Duration::days(8));
    handle(&w, &failed("evt_f2")).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::FREE, "grace period (7 days) over");
    assert_eq!(enabled_keys(&w, &u), 0);
    // the payment finally succeeds: PRO again, with the same key.
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Active);
    handle(
        &w,
        &event("evt_p", "invoice.paid", EventSubject::Invoice { subscription: Some(sub.clone()), customer: None }),
    )
    .await
    .unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::PRO);
    assert_eq!(enabled_keys(&w, &u), 1);
    assert_eq!(w.app.keys.all().len(), 1, "the key was re-enabled, not re-issued");
}

#[tokio::test]
async fn cancel_at_period_end_stays_pro_and_the_account_shows_the_end_date() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    let end = w.app.payments.update_subscription(&sub, |s| s.cancel_at_period_end = true).unwrap().period_end.unwrap();
    handle(&w, &sub_event("evt_c", "customer.subscription.updated", &sub)).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::PRO);
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    assert!(view.cancel_at_period_end);
    assert_eq!(view.current_period_end, Some(end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    assert!(view.api_key.unwrap().enabled);
}

#[tokio::test]
async fn resubscribing_after_cancellation_reuses_the_customer_and_the_key() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    let customer = w.app.users.get_user(&u.name).await.unwrap().unwrap().customer_id.unwrap();
    let key_id = w.app.keys.all()[0].id.clone();
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    handle(&w, &sub_event("evt_x", "customer.subscription.deleted", &sub)).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::FREE);

    let (id, key) = w.checkout_and_pay(&u).await;
    let paid = w.app.payments.get_checkout_state(&id);
    assert_eq!(paid.customer, Some(customer), "the Stripe customer is reused");
    assert_eq!(w.complete(&id, &key).await.unwrap(), flows::Completion::Issued { api_key_id: key_id });
    assert_eq!(enabled_keys(&w, &u), 1);
    assert_eq!(w.app.keys.all().len(), 1);
    // the old subscription's late events do not undo the new one
    handle(&w, &sub_event("evt_late", "customer.subscription.updated", &sub)).await.unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::PRO);
}

#[tokio::test]
async fn events_for_unknown_customers_and_types_are_recorded_and_ignored() {
    let w = World::new();
    let ghost = SubscriptionId::parse("sub_ghost").unwrap();
    let out = handle(&w, &sub_event("evt_g", "customer.subscription.updated", &ghost)).await.unwrap();
    assert_eq!(out, EventOutcome::Ignored("unknown subscription".into()));
    let out = handle(&w, &event("evt_t", "charge.refunded", EventSubject::Other)).await.unwrap();
    assert!(matches!(out, EventOutcome::Ignored(_)));
    assert!(w.app.store.events().contains(&"evt_g".to_string()));
    assert!(w.app.store.events().contains(&"evt_t".to_string()));
}

#[tokio::test]
async fn a_subscription_whose_customer_paykey_does_not_know_is_ignored_with_a_warning() {
    let w = World::new();
    let (_u, sub) = pro_user(&w, "alice").await;
    // metadata names nobody in the pool and the customer is in no account
    w.app.payments.update_subscription(&sub, |s| {
        s.user_name = Some("nobody".into());
        s.customer = paykey::domain::CustomerId::parse("cus_stranger").unwrap();
    });
    let out = handle(&w, &sub_event("evt_s", "customer.subscription.updated", &sub)).await.unwrap();
    assert_eq!(out, EventOutcome::Ignored("unknown customer".into()));
}

#[tokio::test]
async fn a_fault_while_acting_is_an_error_and_redelivery_converges() {
    for op in [
        "stripe.get_subscription",
        "ddb.lock_account",
        "apigw.set_enabled",
        "apigw.detach",
        "cognito.set_plan",
        "ddb.put_account",
        "ddb.mark_event",
    ] {
        for fault in [Fault::Before, Fault::After] {
            let w = World::new();
            let (u, sub) = pro_user(&w, "alice").await;
            w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
            let e = sub_event("evt_f", "customer.subscription.deleted", &sub);
            w.meter.inject(op, fault);
            assert!(handle(&w, &e).await.is_err(), "{op} {fault:?}: a failure to act is an error (5xx)");
            w.clock.advance(chrono::Duration::seconds(61));
            let out = handle(&w, &e).await.unwrap_or_else(|err| panic!("{op} {fault:?}: redelivery failed: {err}"));
            // a fault after mark_event means the work was done and recorded
            if !(op == "ddb.mark_event" && fault == Fault::After) {
                assert!(matches!(out, EventOutcome::Processed(_)), "{op} {fault:?}: {out:?}");
            }
            assert_eq!(plan_of(&w, &u).await, Plan::FREE, "{op} {fault:?}");
            assert_eq!(enabled_keys(&w, &u), 0, "{op} {fault:?}");
            assert!(
                w.app.keys.plan_key_ids(paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap().is_empty(),
                "{op} {fault:?}"
            );
        }
    }
}

/// The success redirect, checkout.session.completed, customer.subscription.created and
/// invoice.paid all at once: one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redirect_and_the_first_webhooks_racing_issue_one_key() {
    let w = Arc::new(World::new());
    let u = w.user("alice");
    let (id, key) = w.checkout_and_pay(&u).await;
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    let events = vec![
        event("evt_a", "checkout.session.completed", EventSubject::Checkout(id.clone())),
        sub_event("evt_b", "customer.subscription.created", &sub),
        event("evt_c", "invoice.paid", EventSubject::Invoice { subscription: Some(sub.clone()), customer: None }),
    ];
    let mut tasks = Vec::new();
    for e in events {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move { handle(&w, &e).await.map(|_| ()) }));
    }
    for _ in 0..3 {
        let (w, id) = (Arc::clone(&w), id.clone());
        tasks.push(tokio::spawn(async move { w.complete(&id, &key).await.map(|_| ()) }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(w.app.keys.all().len(), 1, "{:?}", w.app.keys.all());
    w.assert_fulfilled_once(&u, &id).await;
}

/// An event whose handler read the subscription as "active", then had to wait for the
/// account lock while the subscription was cancelled, must not re-upgrade the user: the
/// state is read again under the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_read_the_subscription_before_a_cancellation_does_not_undo_it() {
    use paykey::ports::Accounts;
    let w = Arc::new(World::new());
    let (u, sub) = pro_user(&w, "alice").await;
    // Another handler holds the lock (as the cancellation's would).
    let now = w.app.clock.now();
    w.app.store.lock_account(&u.id, "held", now, now + chrono::Duration::seconds(60)).await.unwrap();
    let paid = {
        let w = Arc::clone(&w);
        let sub = sub.clone();
        tokio::spawn(async move {
            handle(
                &w,
                &event("evt_paid", "invoice.paid", EventSubject::Invoice { subscription: Some(sub), customer: None }),
            )
            .await
        })
    };
    // the late handler has read "active" and is waiting for the lock; now the cancellation lands
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    w.app.store.unlock_account(&u.id, "held").await.unwrap();
    paid.await.unwrap().unwrap();
    assert_eq!(plan_of(&w, &u).await, Plan::FREE, "the fresh state (canceled) was applied");
}

#[tokio::test]
async fn resync_reports_missed_cancellations_in_a_dry_run_and_repairs_them_with_apply() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    let (v, _) = pro_user(&w, "bob").await;
    // alice cancelled, but the webhook never arrived
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let resync = |apply| flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), apply);
    let before = w.snapshot();
    let drifts = resync(false).await.unwrap();
    assert_eq!(drifts.len(), 1, "{drifts:?}");
    assert_eq!(drifts[0].user, u);
    assert_eq!((drifts[0].current.clone(), drifts[0].desired.clone()), (Plan::PRO, Plan::FREE));
    assert!(!drifts[0].repaired() && drifts[0].applied.is_none());
    assert_eq!(w.snapshot(), before, "a dry run changes nothing");

    let drifts = resync(true).await.unwrap();
    assert!(drifts[0].repaired(), "{}", drifts[0]);
    assert!(drifts[0].to_string().ends_with("repaired: alice is FREE"), "{}", drifts[0]);
    assert_eq!(plan_of(&w, &u).await, Plan::FREE);
    assert_eq!(enabled_keys(&w, &u), 0);
    assert_eq!(plan_of(&w, &v).await, Plan::PRO, "bob untouched");
    assert!(resync(false).await.unwrap().is_empty(), "nothing left to repair");
}

/// A paying user whose record names no key (a record restored from a backup, an edit by hand):
/// resync sees the drift and gives the key back. (Found by `cargo mutants`: reading "no key"
/// as fine for a paid user passed the suite.)
#[tokio::test]
async fn resync_repairs_a_paying_user_whose_record_names_no_key() {
    let w = World::new();
    let (u, _) = pro_user(&w, "dora").await;
    let mut accounts = w.app.store.accounts();
    for a in accounts.iter_mut().filter(|a| a.user_id == u.id) {
        a.api_key_id = None;
    }
    w.app.store.restore(w.app.store.sessions(), accounts, w.app.store.event_entries());
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await.unwrap();
    assert_eq!(drifts.len(), 1, "{drifts:?}");
    assert!(drifts[0].repaired(), "{}", drifts[0]);
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert!(account.api_key_id.is_some(), "the key is recorded again");
    assert_eq!(enabled_keys(&w, &u), 1);
}

/// A user as the Python version left them: a name-keyed record with a key and no customer id;
/// the customer only in Cognito's `custom:stripe_customer_id`; a subscription without paykey's
/// metadata. Returns (user, subscription, key id).
async fn python_era_user(w: &World, name: &str) -> (User, SubscriptionId, String) {
    let u = w.user(name);
    let (id, _) = w.checkout_and_pay(&u).await;
    let state = w.app.payments.get_checkout_state(&id);
    let (sub, customer) = (state.subscription.unwrap(), state.customer.unwrap());
    w.app.payments.update_subscription(&sub, |s| {
        s.user_id = None;
        s.user_name = None;
    });
    let key = w.app.keys.create(&format!("paykey-pro-{name}")).await.unwrap();
    w.app.keys.attach_to_plan(&key.id, paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap();
    w.app.users.set_plan(&u.name, Plan::PRO, Some(&customer)).await.unwrap();
    let mut legacy = paykey::domain::AccountRecord::new(&u, w.app.clock.now());
    legacy.plan = Plan::PRO;
    legacy.api_key_id = Some(key.id.clone());
    assert_eq!(legacy.customer_id, None, "what the Python version wrote");
    w.app.store.add_legacy_account(legacy);
    (u, sub, key.id)
}

#[tokio::test]
async fn a_cancellation_finds_a_python_era_user_through_the_cognito_customer_attribute_once() {
    let w = World::new();
    let (u, sub, key) = python_era_user(&w, "carol").await;
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let out = handle(&w, &sub_event("evt_del", "customer.subscription.deleted", &sub)).await.unwrap();
    assert_eq!(out, EventOutcome::Processed("carol is FREE".into()));
    assert_eq!(plan_of(&w, &u).await, Plan::FREE);
    let k = w.app.keys.get(&key).await.unwrap().unwrap();
    assert!(!k.enabled, "the old key disabled");
    assert!(
        !w.app.keys.plan_key_ids(paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap().contains(&key),
        "and detached"
    );
    assert!(w.app.store.legacy_accounts().is_empty(), "the name-keyed record retired");
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert!(account.customer_id.is_some(), "the record now carries the customer");
    assert_eq!(w.meter.count("cognito.find_by_customer"), 1);
    // the next event finds the record by customer: no second listing of the pool
    let out = handle(&w, &sub_event("evt_upd", "customer.subscription.updated", &sub)).await.unwrap();
    assert_eq!(out, EventOutcome::Processed("carol is FREE".into()));
    assert_eq!(w.meter.count("cognito.find_by_customer"), 1);
}

#[tokio::test]
async fn resync_finds_python_era_records_without_a_customer_id_and_migrates_them() {
    let w = World::new();
    let (carol, sub, key) = python_era_user(&w, "carol").await;
    let (dan, _, dan_key) = python_era_user(&w, "dan").await;
    // carol cancelled while the Python version ran; dan is still paying
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let resync = |apply| flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), apply);
    let before = w.snapshot();
    let mut drifts = resync(false).await.unwrap();
    drifts.sort_by(|a, b| a.user.name.as_str().cmp(b.user.name.as_str()));
    assert_eq!(drifts.len(), 2, "{drifts:?}");
    assert_eq!(
        (&drifts[0].user, drifts[0].current.clone(), drifts[0].desired.clone(), drifts[0].legacy),
        (&carol, Plan::PRO, Plan::FREE, true)
    );
    assert_eq!(
        (&drifts[1].user, drifts[1].current.clone(), drifts[1].desired.clone(), drifts[1].legacy),
        (&dan, Plan::PRO, Plan::PRO, true)
    );
    assert_eq!(w.snapshot(), before, "a dry run changes nothing");

    let drifts = resync(true).await.unwrap();
    assert!(drifts.iter().all(|d| d.repaired()), "{drifts:?}");
    assert_eq!(plan_of(&w, &carol).await, Plan::FREE);
    assert!(!w.app.keys.get(&key).await.unwrap().unwrap().enabled);
    assert_eq!(plan_of(&w, &dan).await, Plan::PRO);
    assert!(w.app.keys.get(&dan_key).await.unwrap().unwrap().enabled, "dan keeps his key");
    assert!(w.app.store.legacy_accounts().is_empty(), "both migrated");
    assert_eq!(w.meter.count("cognito.find_by_customer"), 0, "the resync knew whose customer it was");
    assert!(resync(false).await.unwrap().is_empty(), "nothing left");
}

#[tokio::test]
async fn resync_reports_a_repair_that_failed_and_goes_on_with_the_others() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    let (v, subv) = pro_user(&w, "bob").await;
    for s in [&sub, &subv] {
        w.app.payments.update_subscription(s, |s| s.status = SubscriptionStatus::Canceled);
    }
    // the first repair's Cognito write fails
    w.meter.inject("cognito.set_plan", Fault::Before);
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await.unwrap();
    assert_eq!(drifts.len(), 2);
    let failed: Vec<_> = drifts.iter().filter(|d| !d.repaired()).collect();
    assert_eq!(failed.len(), 1, "{drifts:?}");
    assert!(failed[0].to_string().contains("NOT repaired"), "{}", failed[0]);
    assert!(matches!(failed[0].applied, Some(Err(_))));
    let fixed = drifts.iter().find(|d| d.repaired()).unwrap();
    assert_eq!(plan_of(&w, &fixed.user).await, Plan::FREE);
    // a second run repairs what is left
    let again =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].repaired(), "{}", again[0]);
    for x in [&u, &v] {
        assert_eq!(plan_of(&w, x).await, Plan::FREE);
    }
}

/// Identity under the lock (issue 23): the user deletes themselves and someone else signs up
/// with the same name between the webhook's first look-up and its lock. The directory write
/// goes by name, so the name's holder is read again under the lock: nothing is written to the
/// newcomer.
#[tokio::test]
async fn a_name_taken_over_between_the_lookup_and_the_lock_gets_no_write() {
    // a record just written (the subscription read again under the lock) and one an hour old
    // (the first read trusted): the name is checked under the lock on both paths
    for old_record in [false, true] {
        let w = World::new();
        let (u, sub) = pro_user(&w, "alice").await;
        if old_record {
            w.clock.advance(chrono::Duration::hours(1));
        }
        w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled).unwrap();
        let newcomer = w.name_taken_over_at_the_lock(&u, "0f0f0f0f-0000-4000-8000-000000000001");
        w.meter.reset_calls();
        let out = handle(&w, &sub_event("evt_late", "customer.subscription.deleted", &sub)).await.unwrap();
        assert_eq!(out, EventOutcome::Ignored("unknown customer".into()), "old record: {old_record}");
        assert_eq!(w.meter.count("stripe.get_subscription"), if old_record { 1 } else { 2 });
        assert_eq!(w.meter.count("cognito.set_plan"), 0, "nothing written to the newcomer: {:?}", w.meter.calls());
        let profile = w.app.users.get_user(&newcomer.name).await.unwrap().unwrap();
        assert_eq!((profile.sub, profile.plan), (Some(newcomer.id), None));
    }
}

/// The same for the free key: the name changes hands between the first check and the lock.
#[tokio::test]
async fn a_free_key_for_a_name_taken_over_before_the_lock_writes_nothing_to_the_directory() {
    let w = World::tiered();
    let u = w.user("bob");
    w.name_taken_over_at_the_lock(&u, "0f0f0f0f-0000-4000-8000-000000000002");
    let e = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap_err();
    assert!(matches!(e, paykey::Error::UserNotFound), "{e:?}");
    assert_eq!(w.meter.count("cognito.set_plan"), 0, "{:?}", w.meter.calls());
    assert!(w.app.keys.all().iter().all(|k| !k.enabled || w.app.keys.plan_of(&k.id).is_none()), "no working key");
}

/// A cancellation's webhook for a record last written long before: the subscription read
/// before the lock is its current state (no second read), and the user is FREE.
#[tokio::test]
async fn a_webhook_for_a_record_unchanged_since_its_read_reads_the_subscription_once() {
    let w = World::new();
    let (u, sub) = pro_user(&w, "alice").await;
    w.clock.advance(chrono::Duration::hours(1));
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    w.meter.reset_calls();
    let out = handle(&w, &sub_event("evt_once", "customer.subscription.deleted", &sub)).await.unwrap();
    assert!(matches!(out, EventOutcome::Processed(_)), "{out:?}");
    assert_eq!(w.meter.count("stripe.get_subscription"), 1, "{:?}", w.meter.calls());
    assert_eq!(w.meter.count("cognito.get_user"), 2, "the name checked before the lock and under it");
    assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan, Some(Plan::FREE));
}

/// Between the webhook's first read and its lock another event lands (the subscription came
/// back to active and its webhook wrote the record): the record is newer than the read, so the
/// subscription is read again under the lock and the user stays PRO — an older read never
/// overwrites a newer state.
#[tokio::test(start_paused = true)]
async fn a_record_written_between_the_webhooks_read_and_its_lock_makes_it_read_again() {
    let w = Arc::new(World::new());
    let (u, sub) = pro_user(&w, "alice").await;
    w.clock.advance(chrono::Duration::hours(1));
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Unpaid);
    w.meter.reset_calls();
    let (w2, sub2) = (Arc::clone(&w), sub.clone());
    w.meter.after_call("stripe.get_subscription", 0, move || {
        // the invoice paid meanwhile; that event's webhook rewrote the record (same content,
        // this clock)
        w2.app.payments.update_subscription(&sub2, |s| s.status = SubscriptionStatus::Active);
        let mut records = w2.app.store.accounts();
        for r in &mut records {
            r.updated_at = paykey::ports::Clock::now(&*w2.clock);
        }
        w2.app.store.restore(w2.app.store.sessions(), records, vec![]);
    });
    // a stale read (unpaid) would downgrade her
    let out = handle(&w, &sub_event("evt_late", "customer.subscription.updated", &sub)).await.unwrap();
    assert!(matches!(out, EventOutcome::Processed(_)), "{out:?}");
    assert_eq!(w.meter.count("stripe.get_subscription"), 2, "read again under the lock");
    assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan, Some(Plan::PRO));
}

/// After a wait for the account lock the webhook's first read is not trusted, however old the
/// record: the holder here (it had the lock before the event came) sees the subscription back
/// to active after the webhook's read and gives the lock back without writing (a holder that
/// failed: no stamp). The subscription is read again under the lock and the user stays PRO.
/// (Trusting the first read whenever the record is old enough, the wait ignored, downgrades her
/// on the stale "unpaid".)
#[tokio::test(start_paused = true)]
async fn after_waiting_for_a_holder_that_wrote_nothing_the_webhook_reads_again() {
    use paykey::ports::Accounts;
    let w = Arc::new(World::new());
    let (u, sub) = pro_user(&w, "alice").await;
    w.clock.advance(chrono::Duration::hours(1));
    let now = paykey::ports::Clock::now(&*w.clock);
    let held = w.app.store.lock_account(&u.id, "holder", now, now + chrono::Duration::seconds(60)).await.unwrap();
    assert!(matches!(held, paykey::ports::AccountLock::Acquired(Some(_))));
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Unpaid);
    w.meter.reset_calls();
    let (w2, u2, sub2) = (Arc::clone(&w), u.clone(), sub.clone());
    w.meter.after_call("stripe.get_subscription", 0, move || {
        w2.app.payments.update_subscription(&sub2, |s| s.status = SubscriptionStatus::Active);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            w2.app.store.unlock_account(&u2.id, "holder").await.unwrap();
        });
    });
    let out = handle(&w, &sub_event("evt_waited", "customer.subscription.updated", &sub)).await.unwrap();
    assert!(matches!(out, EventOutcome::Processed(_)), "{out:?}");
    assert_eq!(w.meter.count("stripe.get_subscription"), 2, "read again under the lock");
    assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan, Some(Plan::PRO));
}

/// A record written half a second before the webhook's read (within `UNCHANGED_MARGIN`, which
/// covers clocks that disagree) is not trusted: the subscription is read again under the lock.
#[tokio::test]
async fn a_record_written_within_the_margin_before_the_read_is_not_trusted() {
    let w = World::new();
    let (_, sub) = pro_user(&w, "alice").await;
    w.clock.advance(chrono::Duration::milliseconds(500));
    w.meter.reset_calls();
    handle(&w, &sub_event("evt_margin", "customer.subscription.updated", &sub)).await.unwrap();
    assert_eq!(w.meter.count("stripe.get_subscription"), 2, "{:?}", w.meter.calls());
}
