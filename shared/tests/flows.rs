//! The use-cases on in-memory ports: behaviour, concurrency, and crash safety.

mod support;

use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::domain::{CheckoutStatus, Error, OneTimeKey, Plan};
use paykey::flows::{self, CheckoutRequest, Completion, Rejection};
use paykey::ports::{KeyRegistry, UserDirectory};
use support::World;

fn req(k: &str) -> CheckoutRequest {
    CheckoutRequest::new(k)
}

#[tokio::test]
async fn checkout_records_a_pending_session_with_a_one_time_key_in_the_success_url() {
    let w = World::new();
    let alice = w.user("alice");
    let started =
        flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), &alice, req("FMMailPro"))
            .await
            .unwrap();
    assert!(started.url.starts_with("https://checkout.memory.invalid/pay/cs_test_"));
    let sessions = w.app.store.sessions();
    assert_eq!(sessions.len(), 1);
    let r = &sessions[0];
    assert_eq!(r.user_name, alice.name);
    assert_eq!(r.user_id.as_ref(), Some(&alice.id));
    assert_eq!(r.status, CheckoutStatus::Pending);
    assert!(!r.paid);
    assert!(r.expires_at > r.created_at + chrono::Duration::days(29));
    assert_eq!(w.meter.count("stripe.create_checkout"), 1);
}

#[tokio::test]
async fn checkout_refuses_lookup_keys_outside_the_allow_list_and_writes_nothing() {
    let w = World::new();
    w.app.payments.add_price("Secret", 1, "jpy");
    let alice = w.user("alice");
    let before = w.snapshot();
    let err = flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), &alice, req("Secret"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LookupKeyNotAllowed(_)), "{err:?}");
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.meter.count("stripe.create_checkout"), 0);
}

#[tokio::test]
async fn checkout_for_a_pro_user_is_a_conflict() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let err = flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), &alice, req("FMMailPro"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::AlreadySubscribed(p) if p == "PRO"));
    assert_eq!(err.code(), "already_pro", "the single-tier code is kept");
    assert_eq!(err.status(), 409);
}

#[tokio::test]
async fn a_returning_customer_is_reused_so_one_user_never_has_two_customers() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let first_customer = w.app.users.get_user(&alice.name).await.unwrap().unwrap().customer_id.unwrap();
    // Downgraded later (e.g. cancelled): she subscribes again.
    w.app.users.set_plan(&alice.name, Plan::FREE, None).await.unwrap();
    let (id2, _) = w.checkout(&alice).await;
    let state = w.app.payments.pay(&id2).unwrap();
    assert_eq!(state.customer, Some(first_customer));
}

#[tokio::test]
async fn a_price_missing_from_stripe_is_not_found() {
    let w = World::new();
    let mut settings = w.app.settings.clone();
    settings.catalog = paykey::domain::Catalog::legacy(
        Some(paykey::flows::DEFAULT_PRO_USAGE_PLAN),
        &[paykey::domain::LookupKey::parse("FMMailPro").unwrap(), paykey::domain::LookupKey::parse("Gone").unwrap()],
    );
    let ctx = paykey::flows::Ctx { settings: &settings, ..w.app.ctx() };
    let alice = w.user("alice");
    let err =
        flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, ctx, &alice, req("Gone")).await.unwrap_err();
    assert!(matches!(err, Error::PriceNotFound(_)));
    assert_eq!(err.status(), 404);
}

#[tokio::test]
async fn a_paid_checkout_issues_one_key_and_a_refresh_only_says_thanks_again() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    let first = w.complete(&id, &key).await.unwrap();
    assert!(matches!(first, Completion::Issued { .. }));
    w.assert_fulfilled_once(&alice, &id).await;
    w.meter.reset_calls();
    let again = w.complete(&id, &key).await.unwrap();
    assert_eq!(again, Completion::AlreadyFulfilled);
    assert_eq!(w.meter.count("apigw.create_key"), 0);
    w.assert_fulfilled_once(&alice, &id).await;
}

#[tokio::test]
async fn unpaid_unknown_mismatched_and_foreign_sessions_are_rejected_without_writes() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let (unpaid, unpaid_key) = w.checkout(&alice).await;
    let (paid, paid_key) = w.checkout_and_pay(&bob).await;
    let before = w.snapshot();

    // A wrong one-time key or an unknown session: our record's read, nothing else.
    w.meter.reset_calls();
    assert_eq!(
        w.complete(&paid, &OneTimeKey::new_random()).await.unwrap(),
        Completion::Rejected(Rejection::WrongOneTimeKey)
    );
    // bob's session with alice's one-time key
    assert_eq!(w.complete(&paid, &unpaid_key).await.unwrap(), Completion::Rejected(Rejection::WrongOneTimeKey));
    let unknown = paykey::domain::SessionId::parse("cs_test_nope").unwrap();
    assert_eq!(w.complete(&unknown, &paid_key).await.unwrap(), Completion::Rejected(Rejection::UnknownSession));
    assert_eq!(w.meter.calls(), ["ddb.get_session"; 3], "one read each, no write, no other service");
    // Unpaid, with the right key: the lease and the lock were taken beside Stripe's read (the
    // second wave) and are given back; the records are as they were (on DynamoDB the session
    // item's UpdatedAt is rewritten and a user without a record keeps an empty lock item).
    w.meter.reset_calls();
    assert_eq!(w.complete(&unpaid, &unpaid_key).await.unwrap(), Completion::Rejected(Rejection::Unpaid));
    let calls = w.meter.calls();
    assert!(calls.contains(&"ddb.claim") && calls.contains(&"ddb.lock_account"), "{calls:?}");
    assert_eq!(w.snapshot(), before, "leases given back, nothing else written");
}

#[tokio::test]
async fn a_session_whose_stripe_reference_names_another_user_is_rejected() {
    let w = World::new();
    let alice = w.user("alice");
    let mallory = w.user("mallory");
    let (id, key) = w.checkout_and_pay(&alice).await;
    // Tamper with our record so it names mallory (as if a record was forged or mixed up).
    let mut rec = w.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap();
    rec.user_name = mallory.name.clone();
    rec.user_id = Some(mallory.id.clone());
    rec.session_id = paykey::domain::SessionId::parse("cs_test_forged").unwrap();
    use paykey::ports::Checkouts;
    w.app.store.put_new(&rec).await.unwrap();
    // Stripe knows no cs_test_forged: unpaid. The real one stays alice's.
    assert_eq!(w.complete(&rec.session_id, &key).await.unwrap(), Completion::Rejected(Rejection::Unpaid));
    assert!(matches!(w.complete(&id, &key).await.unwrap(), Completion::Issued { .. }));
    assert_eq!(w.app.users.get_user(&mallory.name).await.unwrap().unwrap().plan(), Plan::FREE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_verifications_issue_exactly_one_key_and_one_plan_association() {
    let w = Arc::new(World::new());
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.meter.reset_calls();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (w, id) = (Arc::clone(&w), id.clone());
        tasks.push(tokio::spawn(async move { w.complete(&id, &key).await }));
    }
    let mut issued = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(Completion::Issued { .. }) => issued += 1,
            Ok(Completion::AlreadyFulfilled) => {}
            other => panic!("every caller ends on the thanks page, got {other:?}"),
        }
    }
    assert_eq!(issued, 1, "one caller issued");
    assert_eq!(w.meter.count("apigw.create_key"), 1);
    assert_eq!(w.meter.count("apigw.attach"), 1);
    assert!(w.meter.max_in_flight() > 1, "the calls really overlapped");
    w.assert_fulfilled_once(&alice, &id).await;
}

/// The backend calls of a first purchase's fulfilment, in order.
const FULFILMENT_OPS: [&str; 11] = [
    "ddb.get_session",
    "stripe.get_checkout",
    "ddb.claim",
    "ddb.lock_account",
    "apigw.find_key",
    "cognito.get_user",
    "ddb.legacy_account",
    "apigw.create_key",
    "apigw.attach",
    "cognito.set_plan",
    "ddb.fulfil",
];

/// Runs one fulfilment in its own task, as a Lambda invocation would: a crash (an injected
/// panic) kills the task at that call, and nothing of the flow runs after it.
async fn complete_in_task(
    w: &Arc<World>,
    id: &paykey::domain::SessionId,
    key: &OneTimeKey,
) -> Option<Result<Completion, Error>> {
    let (w, id, key) = (Arc::clone(w), id.clone(), *key);
    tokio::spawn(async move { w.complete(&id, &key).await }).await.ok()
}

/// Every backend call of the fulfilment path failing before or after its effect, or the
/// process crashing before or after it (the task dies there: no error path runs, no lock is
/// released), then a retry once the leases have expired: always one enabled key, user PRO,
/// FULFILLED. Two paths, each call the flow records on a clean run: a first purchase (the
/// subscription as read with the session), and one whose account record a webhook wrote just
/// before (the subscription read again under the lock).
#[tokio::test]
async fn a_fault_or_a_crash_at_any_call_followed_by_a_retry_converges() {
    let mut cases = 0;
    for webhook_first in [false, true] {
        let prepare = || async {
            let w = Arc::new(World::new());
            let alice = w.user("alice");
            let (id, key) = w.checkout_and_pay(&alice).await;
            if webhook_first {
                let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
                flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sub)
                    .await
                    .unwrap();
            }
            w.meter.reset_calls();
            (w, alice, id, key)
        };
        let ops = {
            let (w, _, id, key) = prepare().await;
            w.complete(&id, &key).await.unwrap();
            w.meter.calls()
        };
        assert_eq!(ops.contains(&"stripe.get_subscription"), webhook_first, "{ops:?}");
        if !webhook_first {
            assert_eq!(ops, FULFILMENT_OPS.to_vec());
        }
        for op in ops {
            for fault in [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter] {
                let (w, alice, id, key) = prepare().await;
                w.meter.inject(op, fault);
                let first = complete_in_task(&w, &id, &key).await;
                match fault {
                    Fault::CrashBefore | Fault::CrashAfter => {
                        assert!(first.is_none(), "{op} {fault:?}: the task died")
                    }
                    _ => assert!(
                        matches!(first, Some(Err(_))),
                        "{op} {fault:?}: the failed attempt reports failure, got {first:?}"
                    ),
                }
                let record = w.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap();
                if !(op == "ddb.fulfil" && matches!(fault, Fault::After | Fault::CrashAfter)) {
                    assert_ne!(record.status, CheckoutStatus::Fulfilled, "{op} {fault:?}: not fulfilled yet");
                }
                // The crashed attempt's leases run out; the user (or Stripe's webhook) retries.
                w.clock.advance(chrono::Duration::seconds(61));
                let retry = w.complete(&id, &key).await.unwrap_or_else(|e| panic!("{op} {fault:?}: retry failed: {e}"));
                assert!(retry.is_success(), "{op} {fault:?}: {retry:?}");
                w.assert_fulfilled_once(&alice, &id).await;
                cases += 1;
            }
        }
    }
    assert!(cases >= 2 * 44, "{cases}");
}

#[tokio::test]
async fn a_failed_attempt_gives_its_leases_back_so_an_immediate_retry_finishes() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.meter.inject("apigw.create_key", Fault::After);
    assert!(w.complete(&id, &key).await.is_err());
    let record = w.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap();
    assert_eq!(record.status, CheckoutStatus::Pending, "lease released");
    // No clock advance: the retry does not wait for the lease.
    assert!(matches!(w.complete(&id, &key).await.unwrap(), Completion::Issued { .. }));
    w.assert_fulfilled_once(&alice, &id).await;
}

#[tokio::test]
async fn a_retry_while_a_crashed_attempt_still_holds_its_lease_is_not_reported_as_success() {
    let w = Arc::new(World::new());
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.meter.inject("apigw.create_key", Fault::CrashAfter);
    assert!(complete_in_task(&w, &id, &key).await.is_none(), "crashed");
    let err = w.complete(&id, &key).await.unwrap_err();
    assert!(matches!(err, Error::FulfilmentInProgress), "{err:?}");
    assert_eq!(err.status(), 503);
    // Once the lease expires the retry finds the crashed attempt's key instead of a second one.
    w.clock.advance(chrono::Duration::seconds(61));
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    w.assert_fulfilled_once(&alice, &id).await;
}

#[tokio::test]
async fn a_disabled_key_from_an_earlier_subscription_is_re_enabled_not_duplicated() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let key_id = w.app.keys.all()[0].id.clone();
    // Cancellation: the subscription ends; key disabled and detached, user FREE.
    let first_sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.update_subscription(&first_sub, |s| s.status = paykey::ports::SubscriptionStatus::Canceled);
    w.app.keys.set_enabled(&key_id, false).await.unwrap();
    w.app.keys.detach_from_plan(&key_id, paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap();
    w.app.users.set_plan(&alice.name, Plan::FREE, None).await.unwrap();
    let (id2, key2) = w.checkout_and_pay(&alice).await;
    assert_eq!(w.complete(&id2, &key2).await.unwrap(), Completion::Issued { api_key_id: key_id });
    w.assert_fulfilled_once(&alice, &id2).await;
}

/// Counted on tokio's paused clock: each call sleeps 50 ms of virtual time, so the elapsed
/// virtual time is the number of sequential waves × 50 ms, exactly, whatever the machine does.
#[tokio::test(start_paused = true)]
async fn the_fulfilment_critical_path_is_five_sequential_round_trips() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.meter.set_latency(std::time::Duration::from_millis(50));
    w.meter.reset_calls();
    let started = tokio::time::Instant::now();
    w.complete(&id, &key).await.unwrap();
    assert_eq!(w.meter.calls(), FULFILMENT_OPS.to_vec());
    // record; Stripe session and subscription ∥ claim ∥ lock ∥ key lookup ∥ name holder ∥
    // legacy record; create key; attach ∥ Cognito; transaction
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(5 * 50), "5 waves");
    assert_eq!(w.meter.max_in_flight(), 6, "the second wave's six calls overlap");
}

/// A record written less than [`flows::UNCHANGED_MARGIN`] before the session's read (here: by
/// the subscription's webhook, on a clock that stands still) costs one more wave: the
/// subscription read again under the lock.
#[tokio::test(start_paused = true)]
async fn a_record_written_since_the_session_read_costs_one_more_wave() {
    // (how long after the record's write the redirect comes, Stripe reads, waves)
    let margin = chrono::Duration::from_std(flows::UNCHANGED_MARGIN).unwrap();
    for (after, reads, waves) in [(chrono::Duration::zero(), 1, 6), (margin + chrono::Duration::milliseconds(1), 0, 5)]
    {
        let w = World::new();
        let alice = w.user("alice");
        let (id, key) = w.checkout_and_pay(&alice).await;
        // the subscription's webhook came first (the first payment still settling): a record
        let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
        w.app.payments.update_subscription(&sub, |s| s.status = paykey::ports::SubscriptionStatus::Incomplete);
        flows::sync_subscription(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sub)
            .await
            .unwrap();
        w.app.payments.update_subscription(&sub, |s| s.status = paykey::ports::SubscriptionStatus::Active);
        w.clock.advance(after);
        w.meter.set_latency(std::time::Duration::from_millis(50));
        w.meter.reset_calls();
        let started = tokio::time::Instant::now();
        assert!(matches!(w.complete(&id, &key).await.unwrap(), Completion::Issued { .. }));
        assert_eq!(w.meter.count("stripe.get_subscription"), reads, "{after}");
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(waves * 50), "{after}: {waves} waves");
    }
}

/// The window the session's read opens: between it and the lock, the subscription is cancelled
/// and the cancellation's webhook lands (its record written). The fulfilment reads the
/// subscription again under the lock and grants nothing: a cancellation is never revived.
#[tokio::test(start_paused = true)]
async fn a_cancellation_landed_between_the_session_read_and_the_lock_is_not_revived() {
    for advance_first in [false, true] {
        let w = Arc::new(World::new());
        let alice = w.user("alice");
        let (id, key) = w.checkout_and_pay(&alice).await;
        let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
        if advance_first {
            // the clock has moved on since any earlier write: only the new one counts
            w.clock.advance(chrono::Duration::seconds(3600));
        }
        // After the session's read (the first Stripe call), before the lock is taken (it acts
        // after the read, in the same wave): the cancellation, and the record its webhook
        // writes (a FREE record at this clock).
        let (w2, alice2, sub2) = (Arc::clone(&w), alice.clone(), sub.clone());
        w.meter.reset_calls();
        // Stripe answers before the lock is taken (they run side by side).
        w.meter.set_latency_of("stripe.get_checkout", std::time::Duration::from_millis(10));
        w.meter.set_latency_of("ddb.lock_account", std::time::Duration::from_millis(20));
        w.meter.after_call("stripe.get_checkout", 0, move || {
            w2.app.payments.update_subscription(&sub2, |s| s.status = paykey::ports::SubscriptionStatus::Canceled);
            let mut record = paykey::domain::AccountRecord::new(&alice2, paykey::ports::Clock::now(&*w2.clock));
            record.subscription_id = Some(sub2.clone());
            record.subscription_status = Some("canceled".into());
            w2.app.store.restore(w2.app.store.sessions(), vec![record], vec![]);
        });
        let done = w.complete(&id, &key).await.unwrap();
        assert!(matches!(done, Completion::NotGranted { .. }), "{done:?}");
        assert_eq!(w.app.users.get_user(&alice.name).await.unwrap().unwrap().plan, Some(Plan::FREE));
        assert!(w.app.keys.all().iter().all(|k| !k.enabled || w.app.keys.plan_of(&k.id).is_none()));
    }
}

/// The other guard on the session's read: after a wait for the account lock it is not trusted,
/// however old the record. The holder here cancels the subscription after the session's read
/// and gives the lock back without writing the record (a holder that failed: no stamp), so
/// only the wait says something may have changed. The fulfilment reads the subscription again
/// under the lock and grants nothing. (Trusting the early read whenever the record is old
/// enough, the wait ignored, grants PRO here.)
#[tokio::test(start_paused = true)]
async fn after_waiting_for_a_holder_that_wrote_nothing_the_subscription_is_read_again() {
    use paykey::ports::Accounts;
    let w = Arc::new(World::new());
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    // an account record written an hour ago: old enough for the early read to be trusted
    let record = paykey::domain::AccountRecord::new(&alice, paykey::ports::Clock::now(&*w.clock));
    w.app.store.restore(w.app.store.sessions(), vec![record], vec![]);
    w.clock.advance(chrono::Duration::seconds(3600));
    // the holder: it has the lock before the redirect comes
    let now = paykey::ports::Clock::now(&*w.clock);
    let held = w.app.store.lock_account(&alice.id, "holder", now, now + chrono::Duration::seconds(60)).await.unwrap();
    assert!(matches!(held, paykey::ports::AccountLock::Acquired(Some(_))));
    // after the session's read: the subscription is cancelled, and the holder gives the lock
    // back 100 ms later, having written nothing
    let (w2, alice2, sub2) = (Arc::clone(&w), alice.clone(), sub.clone());
    w.meter.set_latency_of("stripe.get_checkout", std::time::Duration::from_millis(10));
    w.meter.set_latency_of("ddb.lock_account", std::time::Duration::from_millis(20));
    w.meter.after_call("stripe.get_checkout", 0, move || {
        w2.app.payments.update_subscription(&sub2, |s| s.status = paykey::ports::SubscriptionStatus::Canceled);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            w2.app.store.unlock_account(&alice2.id, "holder").await.unwrap();
        });
    });
    w.meter.reset_calls();
    let done = w.complete(&id, &key).await.unwrap();
    assert!(matches!(done, Completion::NotGranted { .. }), "{done:?}");
    assert_eq!(w.meter.count("stripe.get_subscription"), 1, "read again under the lock");
    assert_ne!(w.app.users.get_user(&alice.name).await.unwrap().unwrap().plan, Some(Plan::PRO));
    assert!(w.app.keys.all().iter().all(|k| !k.enabled || w.app.keys.plan_of(&k.id).is_none()));
}

#[tokio::test(start_paused = true)]
async fn checkout_with_a_cold_price_cache_is_five_sequential_round_trips() {
    let w = World::new().spending_budgets();
    let alice = w.user("alice");
    w.meter.set_latency(std::time::Duration::from_millis(50));
    let started = tokio::time::Instant::now();
    w.checkout(&alice).await;
    assert_eq!(
        started.elapsed(),
        std::time::Duration::from_millis(5 * 50),
        "price, budget ∥ user ∥ open checkout, claim, create, record ∥ pointer"
    );
}

#[tokio::test]
async fn the_portal_opens_for_the_callers_own_customer_only() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let err =
        flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &bob).await.unwrap_err();
    assert!(matches!(err, Error::NoCustomer));
    assert_eq!(err.status(), 409);
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let customer = w.app.users.get_user(&alice.name).await.unwrap().unwrap().customer_id.unwrap();
    let url =
        flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &alice).await.unwrap();
    assert!(url.contains(customer.as_str()), "{url}");
    let configuration = w.app.settings.portal_configuration.clone().unwrap();
    assert!(
        url.contains(&format!("configuration={configuration}")),
        "paykey's configuration, not Stripe's default: {url}"
    );
    // a double click within the minute gets the same session (Stripe's idempotency key), a
    // visit a minute later a new one (found by `cargo mutants`: `/ 60` → `% 60` passed)
    let open = || flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &alice);
    assert_eq!(open().await.unwrap(), url);
    w.clock.advance(chrono::Duration::seconds(60));
    let later = open().await.unwrap();
    assert_ne!(later, url);
    w.clock.advance(chrono::Duration::seconds(30));
    assert_eq!(open().await.unwrap(), later);
}

/// Stripe's default portal configuration is the Dashboard's; a deployment without its own
/// (the functions refuse to start so, see `wiring`) opens no portal and calls Stripe for nothing.
#[tokio::test]
async fn without_a_portal_configuration_no_portal_is_opened() {
    let mut w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    w.app.settings.portal_configuration = None;
    let before = w.meter.count("stripe.create_portal");
    let err =
        flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &alice).await.unwrap_err();
    assert!(matches!(err, Error::PortalNotConfigured), "{err}");
    assert_eq!((err.status(), err.code()), (500, "misconfigured"));
    assert_eq!(w.meter.count("stripe.create_portal"), before);
}

#[tokio::test]
async fn the_account_shows_plan_and_key_value_once_issued() {
    let w = World::new();
    let alice = w.user("alice");
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &alice).await.unwrap();
    assert_eq!(view.plan, Plan::FREE);
    assert!(view.api_key.is_none());
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &alice).await.unwrap();
    assert_eq!(view.plan, Plan::PRO);
    assert_eq!(view.subscription_status.as_deref(), Some("active"));
    let k = view.api_key.unwrap();
    assert!(k.enabled);
    assert_eq!(w.app.keys.authorize(&k.value), Some((k.id, paykey::flows::DEFAULT_PRO_USAGE_PLAN.to_string())));
}

/// With a warm price cache, a first checkout is four sequential round trips: the budget, the
/// directory read and the open-checkout read side by side; the claim; the Stripe session;
/// the record and the pointer side by side. (Two before the per-user budget and the reuse of
/// open sessions: the Stripe session was created beside the directory read, and left unused
/// when the user turned out to be subscribed — a Stripe write per repeat.) A repeat is one
/// round trip and a read of the session, and calls Stripe never.
#[tokio::test(start_paused = true)]
async fn checkout_with_a_warm_price_cache_is_four_sequential_round_trips_and_a_repeat_two() {
    use paykey::adapters::cached::CachedPrices;
    use paykey::ports::Payments;
    let w = World::new().spending_budgets();
    let alice = w.user("alice");
    let cached = CachedPrices::new(w.app.payments.clone(), std::time::Duration::from_secs(300));
    cached.find_price(&paykey::domain::LookupKey::parse("FMMailPro").unwrap()).await.unwrap();
    w.meter.set_latency(std::time::Duration::from_millis(50));
    w.meter.reset_calls();
    let started = tokio::time::Instant::now();
    flows::start_checkout(&w.app.users, &cached, &w.app.store, w.app.ctx(), &alice, req("FMMailPro")).await.unwrap();
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(4 * 50));
    let mut first = w.meter.calls();
    first[..4].sort();
    assert_eq!(
        first,
        vec![
            "cognito.get_user",
            "ddb.get_account",
            "ddb.open_checkout",
            "ddb.spend",
            "ddb.claim_open_checkout",
            "stripe.create_checkout",
            "ddb.put_session",
            "ddb.replace_open_checkout"
        ]
    );
    let mut w = w;
    w.app.settings.checkout_reuse = std::time::Duration::from_secs(3600);
    w.meter.reset_calls();
    let started = tokio::time::Instant::now();
    flows::start_checkout(&w.app.users, &cached, &w.app.store, w.app.ctx(), &alice, req("FMMailPro")).await.unwrap();
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(2 * 50));
    let mut repeat = w.meter.calls();
    repeat[..4].sort();
    assert_eq!(
        repeat,
        vec!["cognito.get_user", "ddb.get_account", "ddb.open_checkout", "ddb.spend", "ddb.get_session"]
    );
}

#[tokio::test]
async fn a_token_without_the_customer_claim_still_reuses_the_customer_the_directory_knows() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let customer = w.app.users.get_user(&alice.name).await.unwrap().unwrap().customer_id.unwrap();
    w.app.users.set_plan(&alice.name, Plan::FREE, None).await.unwrap();
    w.meter.reset_calls();
    // whatever the ID token says: the customer is the directory's, one create
    let (id2, _) = w.checkout(&alice).await;
    assert_eq!(w.meter.count("stripe.create_checkout"), 1, "created once, for the known customer");
    assert_eq!(w.app.payments.pay(&id2).unwrap().customer, Some(customer.clone()));
}

#[tokio::test]
async fn a_stale_token_of_a_pro_user_gets_409_and_no_record() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let sessions = w.app.store.sessions().len();
    let err = flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), &alice, req("FMMailPro"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::AlreadySubscribed(p) if p == "PRO"));
    assert_eq!(err.code(), "already_pro", "the single-tier code is kept");
    assert_eq!(w.app.store.sessions().len(), sessions, "nothing recorded; the Stripe session is left to expire");
}
