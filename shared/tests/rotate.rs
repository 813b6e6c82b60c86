//! Key rotation (issue 12, on memory): a new key on the same plan, the old one disabled now or
//! after a grace, the remaining quota carried over, a per-day limit, a retried request answered
//! not repeated, and a crash at every call followed by a retry.

mod support;

use std::sync::Arc;

use paykey::adapters::memory::{Fault, Refused};
use paykey::domain::User;
use paykey::flows::{self, RotateRequest, Rotated};
use paykey::ports::{EventSubject, StripeEvent, UserDirectory};
use paykey::Error;
use support::{World, BUSINESS_PLAN, FREE_PLAN, PRO_PLAN};

async fn rotate(w: &World, u: &User, grace: u64, id: Option<&str>) -> Result<Rotated, Error> {
    let req = RotateRequest { grace_seconds: grace, request_id: id.map(str::to_string) };
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), u, req).await
}

async fn free_key_value(w: &World, u: &User) -> (String, String) {
    let k = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), u).await.unwrap().api_key;
    (k.id, k.value)
}

fn call(w: &World, value: &str) -> Result<(String, String), Refused> {
    w.app.keys.call(value, w.clock_now())
}

trait Now {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc>;
}
impl Now for World {
    fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        use paykey::ports::Clock;
        self.clock.now()
    }
}

fn enabled_keys(w: &World, u: &User) -> Vec<String> {
    let name = w.app.settings.key_name(u);
    w.app.keys.all().into_iter().filter(|k| k.name == name && k.enabled).map(|k| k.id).collect()
}

#[tokio::test]
async fn a_rotation_without_grace_replaces_the_key_and_carries_the_remaining_quota() {
    let w = World::tiered();
    let u = w.user("alice");
    let (old, old_value) = free_key_value(&w, &u).await;
    for _ in 0..5 {
        w.clock.advance(chrono::Duration::seconds(1)); // inside FREE's throttle (burst 5, 1/s)
        call(&w, &old_value).unwrap();
    }
    let r = rotate(&w, &u, 0, None).await.unwrap();
    assert_ne!(r.api_key.id, old);
    assert_eq!(r.previous_key_id, old);
    assert_eq!(call(&w, &old_value), Err(Refused::Forbidden), "the old key stops at once");
    assert_eq!(w.app.keys.plan_of(&r.api_key.id).as_deref(), Some(FREE_PLAN), "same plan");
    assert_eq!(enabled_keys(&w, &u), vec![r.api_key.id.clone()]);
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    assert_eq!(view.api_key.unwrap().id, r.api_key.id);
    let usage = view.usage.unwrap();
    assert_eq!((usage.limit, usage.remaining), (1000, 995), "rotation grants no quota");
}

#[tokio::test]
async fn with_a_grace_both_keys_work_until_another_rotation_or_its_end() {
    let w = World::tiered();
    let u = w.user("bob");
    let (_, old_value) = free_key_value(&w, &u).await;
    let r = rotate(&w, &u, 3600, None).await.unwrap();
    call(&w, &old_value).unwrap();
    call(&w, &r.api_key.value).unwrap();
    assert_eq!(enabled_keys(&w, &u).len(), 2);
    // the next rotation ends the old key's grace at once
    w.clock.advance(chrono::Duration::seconds(2));
    let r2 = rotate(&w, &u, 0, None).await.unwrap();
    assert_eq!(call(&w, &old_value), Err(Refused::Forbidden));
    assert_eq!(call(&w, &r.api_key.value), Err(Refused::Forbidden));
    w.clock.advance(chrono::Duration::seconds(2));
    call(&w, &r2.api_key.value).unwrap();
    assert_eq!(enabled_keys(&w, &u), vec![r2.api_key.id]);
}

/// A tier change ends a rotation's grace: the new key moves, the old one is disabled (a
/// cancelled or moved user keeps no share of the old tier's quota on it).
#[tokio::test]
async fn a_plan_change_during_the_grace_moves_the_new_key_and_ends_the_grace() {
    let w = World::tiered();
    let u = w.user("carol");
    let (_, old_value) = free_key_value(&w, &u).await;
    let r = rotate(&w, &u, 3600, None).await.unwrap();
    assert!(call(&w, &old_value).is_ok(), "the old key works in its grace");
    let (id, key) = w.checkout_and_pay(&u).await; // PRO (a trial: first-time customer)
    w.complete(&id, &key).await.unwrap();
    assert_eq!(w.app.keys.plan_of(&r.api_key.id).as_deref(), Some(PRO_PLAN), "the new key moved");
    assert_eq!(call(&w, &old_value), Err(Refused::Forbidden), "the grace ended with the tier change");
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
    let e = StripeEvent {
        id: "evt_up".into(),
        kind: "customer.subscription.updated".into(),
        subject: EventSubject::Subscription { id: sub, customer: None },
    };
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e)
        .await
        .unwrap();
    assert_eq!(w.app.keys.plan_of(&r.api_key.id).as_deref(), Some(BUSINESS_PLAN), "the new key moved again");
    assert_eq!(enabled_keys(&w, &u), vec![r.api_key.id.clone()]);
    assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan().as_str(), "BUSINESS");
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!((account.previous_key_id, account.previous_key_until), (None, None));
}

#[tokio::test]
async fn rotations_are_limited_per_day_and_a_retried_request_is_answered_not_repeated() {
    let w = World::tiered();
    let u = w.user("dave");
    free_key_value(&w, &u).await;
    let first = rotate(&w, &u, 0, Some("req-1")).await.unwrap();
    let again = rotate(&w, &u, 0, Some("req-1")).await.unwrap();
    assert_eq!(again, first, "the same answer, no second rotation");
    rotate(&w, &u, 0, Some("req-2")).await.unwrap();
    rotate(&w, &u, 0, None).await.unwrap();
    let before = w.snapshot();
    let e = rotate(&w, &u, 0, None).await.unwrap_err();
    assert!(matches!(e, Error::RotationLimited(3)), "{e:?}");
    assert_eq!((e.status(), e.code()), (429, "rotation_limited"));
    assert_eq!(w.snapshot(), before, "a refused rotation writes nothing");
    w.clock.advance(chrono::Duration::hours(25));
    rotate(&w, &u, 0, None).await.unwrap();
    // bad input
    let long = "x".repeat(65);
    for (grace, id) in [(24 * 3600 + 1, None), (0, Some("")), (0, Some(long.as_str()))] {
        let e = rotate(&w, &u, grace, id).await.unwrap_err();
        assert_eq!(e.status(), 400, "{grace} {id:?}");
    }
    let nobody = w.user("erin");
    assert!(matches!(rotate(&w, &nobody, 0, None).await.unwrap_err(), Error::NoKey));
}

/// The user's keys' use of the FREE plan this period, summed, and the current key's remaining.
async fn pool(w: &World, u: &User) -> (u64, u64) {
    use paykey::ports::{Clock, KeyRegistry};
    let q = w.app.settings.catalog.free().unwrap().quota.unwrap();
    let (start, end) = q.period.containing(w.clock.now().date_naive());
    let name = w.app.settings.key_name(u);
    let mut used = 0;
    for k in w.app.keys.all().into_iter().filter(|k| k.name == name) {
        used += w.app.keys.usage(&k.id, FREE_PLAN, start, end).await.unwrap().used;
    }
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    let current = account.api_key_id.unwrap();
    let remaining = w.app.keys.usage(&current, FREE_PLAN, start, end).await.unwrap().remaining.unwrap();
    (used, remaining)
}

/// A user with a key in the grace of an earlier rotation, both keys used: the rotation under
/// test ends that grace (the previous-key path) and starts its own (`grace`).
async fn mid_grace(w: &World, u: &User) {
    let (_, old_value) = free_key_value(w, u).await;
    for _ in 0..3 {
        call(w, &old_value).unwrap();
    }
    let r = rotate(w, u, 600, Some("r1")).await.unwrap();
    call(w, &old_value).unwrap();
    call(w, &r.api_key.value).unwrap();
    w.clock.advance(chrono::Duration::seconds(5));
}

/// The rotation's crash matrix, generated: a clean rotation's calls are recorded (every call,
/// every occurrence, error and branch paths of this scenario included), then each of them in
/// turn fails or crashes (before or after taking effect) in a new world; a retry with the same
/// request id and the sweep then finish. Each case ends with one enabled key — the one the
/// record names —, two rotations counted, and the pool exact: what the user's keys used this
/// period plus what the current key has left is the quota, to the request (never more: quota
/// multiplied; never less: quota lost in a crash). A panic other than an injected crash fails.
#[tokio::test]
async fn a_fault_or_crash_at_every_recorded_rotation_call_then_a_retry_ends_with_one_key_and_the_exact_quota() {
    for grace in [0u64, 300] {
        let clean = World::tiered();
        let u = clean.user("frank");
        mid_grace(&clean, &u).await;
        clean.meter.reset_calls();
        rotate(&clean, &u, grace, Some("r2")).await.unwrap();
        let recorded = clean.meter.calls();
        assert!(recorded.contains(&"apigw.set_remaining") && recorded.contains(&"apigw.detach"), "{recorded:?}");
        clean.clock.advance(chrono::Duration::seconds(grace as i64 + 1));
        flows::sweep_expired_keys(&clean.app.store, &clean.app.keys, clean.app.ctx()).await.unwrap();
        let (used, left) = pool(&clean, &u).await;
        assert_eq!(used + left, 1000, "clean run");
        let mut cases = 0;
        for (i, op) in recorded.iter().enumerate() {
            let n = recorded[..i].iter().filter(|c| *c == op).count();
            for fault in [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter] {
                let case = format!("grace {grace}, call {i} ({op} #{n}) {fault:?}");
                let w = Arc::new(World::tiered());
                let u = w.user("frank");
                mid_grace(&w, &u).await;
                w.meter.reset_calls();
                w.meter.inject_at(op, n, fault);
                let (w2, u2) = (Arc::clone(&w), u.clone());
                let first = match tokio::spawn(async move { rotate(&w2, &u2, grace, Some("r2")).await }).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let p = e.into_panic();
                        let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
                        assert!(msg.starts_with("injected crash"), "{case}: an unexpected panic: {msg}");
                        None
                    }
                };
                let struck = !w.meter.faults_pending();
                assert!(struck, "{case}: the fault struck");
                w.clock.advance(chrono::Duration::seconds(61)); // a crashed holder's lease expires
                let r = rotate(&w, &u, grace, Some("r2")).await.unwrap_or_else(|e| panic!("{case}: retry: {e}"));
                if let Some(Ok(first)) = &first {
                    assert_eq!(&r, first, "{case}: the retry gets the first answer");
                }
                w.clock.advance(chrono::Duration::seconds(grace as i64 + 1));
                flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
                let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
                assert_eq!(account.api_key_id.as_deref(), Some(r.api_key.id.as_str()), "{case}");
                assert_eq!(enabled_keys(&w, &u), vec![r.api_key.id.clone()], "{case}: one enabled key");
                assert_eq!(account.recent_rotations.len(), 2, "{case}: two rotations counted");
                let (used, left) = pool(&w, &u).await;
                assert_eq!(used + left, 1000, "{case}: used {used} + left {left}");
                call(&w, &r.api_key.value).unwrap_or_else(|e| panic!("{case}: the new key works: {e:?}"));
                cases += 1;
            }
        }
        assert_eq!(cases, recorded.len() * 4, "every recorded call × every fault");
        println!("# rotation (grace {grace}): {} recorded calls × 4 faults = {cases} cases converged", recorded.len());
    }
}

/// Issue 23's finding, attacked: a FREE quota of 10 a month; use, rotate with a grace, spend
/// every key that still works, rotate again (with and without a grace), up to the daily limit,
/// then the same across the month's end. The bound: at most the tier's quota per quota period.
#[tokio::test]
async fn no_sequence_of_rotations_and_graces_serves_more_than_the_quota_in_a_period() {
    let w = World::tiered();
    let small = r#"{"tiers": [
        {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 10, "period": "MONTH"}},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro"}]}"#;
    let mut w = w;
    w.app.settings.catalog = paykey::domain::Catalog::parse(small).unwrap();
    w.app.settings.rotations_per_day = 5;
    w.app.keys.define_catalog(&w.app.settings.catalog);
    // 2026-11-30 12:00: the last day of the month.
    w.clock.advance(chrono::Duration::days(7));
    let u = w.user("mallory");
    let (_, first) = free_key_value(&w, &u).await;
    let mut values = vec![first.clone()];
    let spend = |w: &World, values: &[String], at_most: usize| {
        let mut n = 0;
        for v in values {
            while n < at_most && call(w, v).is_ok() {
                n += 1;
            }
        }
        n
    };
    let mut served = spend(&w, &values, 5);
    let mut rotations = 0;
    for grace in [3600u64, 0, 3600, 3600, 0, 3600] {
        match rotate(&w, &u, grace, None).await {
            Ok(r) => values.push(r.api_key.value),
            Err(Error::RotationLimited(_)) => break,
            Err(e) => panic!("{e}"),
        }
        rotations += 1;
        served += spend(&w, &values, usize::MAX);
        w.clock.advance(chrono::Duration::minutes(1));
        flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
        served += spend(&w, &values, usize::MAX);
    }
    println!("# quota bound 10 per month; November: {rotations} rotations, {served} calls served");
    assert_eq!(rotations, 5, "up to the daily limit");
    assert_eq!(served, 10, "never more than the quota (and all of it)");
    // December: a new period, the plan's quota again — and still no more.
    w.clock.advance(chrono::Duration::days(1));
    let mut december = spend(&w, &values, usize::MAX);
    w.clock.advance(chrono::Duration::hours(24));
    if let Ok(r) = rotate(&w, &u, 3600, None).await {
        values.push(r.api_key.value);
    }
    december += spend(&w, &values, usize::MAX);
    println!("# December: {december} calls served");
    assert_eq!(december, 10);
}

#[tokio::test]
async fn a_rotation_costs_these_round_trips() {
    let w = World::tiered();
    let u = w.user("gina");
    free_key_value(&w, &u).await;
    w.meter.reset_calls();
    w.meter.set_latency(std::time::Duration::from_millis(20));
    let t = tokio::time::Instant::now();
    rotate(&w, &u, 0, None).await.unwrap();
    let ms = t.elapsed().as_millis();
    let calls = w.meter.calls();
    let control = calls.iter().filter(|c| c.starts_with("apigw.")).count();
    println!(
        "# rotation: {} calls ({control} API Gateway), {ms} ms at 20 ms per call ≈ {} sequential: {calls:?}",
        calls.len(),
        ms / 20
    );
}

#[tokio::test]
async fn the_sweep_disables_a_rotated_key_when_its_grace_ends_and_not_before() {
    let w = World::tiered();
    let u = w.user("hank");
    let (old, old_value) = free_key_value(&w, &u).await;
    let r = rotate(&w, &u, 600, None).await.unwrap();
    let sweep = || flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx());
    assert!(sweep().await.unwrap().is_empty(), "still in its grace");
    call(&w, &old_value).unwrap();
    w.clock.advance(chrono::Duration::seconds(601));
    assert_eq!(sweep().await.unwrap(), vec![old.clone()]);
    assert_eq!(call(&w, &old_value), Err(Refused::Forbidden));
    call(&w, &r.api_key.value).unwrap();
    assert_eq!(enabled_keys(&w, &u), vec![r.api_key.id.clone()]);
    assert!(sweep().await.unwrap().is_empty(), "done once");
    let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!((account.previous_key_id, account.previous_key_until), (None, None));
}

#[tokio::test]
async fn what_the_old_key_uses_in_its_grace_comes_off_the_new_key_when_it_ends() {
    let w = World::tiered();
    let u = w.user("ivy");
    let (_, old_value) = free_key_value(&w, &u).await;
    call(&w, &old_value).unwrap(); // 999 left
    let r = rotate(&w, &u, 600, None).await.unwrap();
    for _ in 0..4 {
        w.clock.advance(chrono::Duration::seconds(1));
        call(&w, &old_value).unwrap(); // in the grace
    }
    w.clock.advance(chrono::Duration::seconds(601));
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let usage =
        flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap().usage.unwrap();
    assert_eq!(usage.remaining, 995, "1,000 − 1 before − 4 in the grace: two keys never add quota");
    let _ = r;
}

/// A grace that runs into the next quota period: API Gateway gives both keys the new period's
/// whole quota; the sweep splits it anew, so the new period still serves at most its quota.
#[tokio::test]
async fn a_grace_across_the_end_of_the_month_does_not_double_the_next_months_quota() {
    let mut w = World::tiered();
    let small = r#"{"tiers": [
        {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 10, "period": "MONTH"}},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro"}]}"#;
    w.app.settings.catalog = paykey::domain::Catalog::parse(small).unwrap();
    w.app.keys.define_catalog(&w.app.settings.catalog);
    // 2026-11-30 23:50
    w.clock.advance(chrono::Duration::days(7) + chrono::Duration::hours(11) + chrono::Duration::minutes(50));
    let u = w.user("nina");
    let (_, a) = free_key_value(&w, &u).await;
    for _ in 0..4 {
        call(&w, &a).unwrap();
    }
    let b = rotate(&w, &u, 3600, None).await.unwrap().api_key.value;
    let spend = |w: &World| [&a, &b].iter().map(|k| std::iter::from_fn(|| call(w, k).ok()).count()).sum::<usize>();
    assert_eq!(spend(&w), 6, "November: what was left");
    w.clock.advance(chrono::Duration::minutes(15)); // December 1st, 00:05, the grace still on
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let mut december = spend(&w);
    w.clock.advance(chrono::Duration::hours(1)); // the grace ends
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    december += spend(&w);
    println!("# quota 10 per month; a grace across the month's end: December served {december}");
    assert_eq!(december, 10, "the new month's quota once, not once per key");
}

/// A webhook for an unchanged subscription during a paid user's grace (a renewal, a metadata
/// edit) keeps both keys working: the key work of every path spares the previous key while
/// its grace lasts. (Found by `cargo mutants`: `spared` answering `Some("")` passed the suite.)
#[tokio::test]
async fn a_webhook_during_a_paid_users_grace_keeps_the_previous_key_working() {
    let w = World::tiered();
    let u = w.user("iris");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let old = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap().api_key_id.unwrap();
    let old_value = paykey::ports::KeyRegistry::key_value(&w.app.keys, &old).await.unwrap().unwrap();
    let r = rotate(&w, &u, 3600, None).await.unwrap();
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    let e = StripeEvent {
        id: "evt_renewal".into(),
        kind: "customer.subscription.updated".into(),
        subject: EventSubject::Subscription { id: sub, customer: None },
    };
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e)
        .await
        .unwrap();
    let mut both = vec![old.clone(), r.api_key.id.clone()];
    both.sort();
    let mut enabled = enabled_keys(&w, &u);
    enabled.sort();
    assert_eq!(enabled, both, "the previous key keeps its grace");
    call(&w, &old_value).unwrap();
    call(&w, &r.api_key.value).unwrap();
}

#[tokio::test]
async fn the_scheduled_run_counts_keys_on_the_hours_run_by_its_scheduled_time_even_when_the_sweep_fails() {
    let w = World::tiered();
    let u = w.user("ann");
    flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    // started late (the clock is past minute 0): the schedule's time decides
    let run = flows::scheduled_run(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        Some(&w.app.payments),
        w.app.ctx(),
        Some("2026-12-04T15:00:00Z"),
    )
    .await;
    assert_eq!(run.key_count, Some(1));
    let run = flows::scheduled_run(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        Some(&w.app.payments),
        w.app.ctx(),
        Some("2026-12-04T15:01:00Z"),
    )
    .await;
    assert_eq!(run.key_count, None, "other minutes do not count");
    assert!(run.disabled.is_ok());
    // the sweep fails: the count is still there, and the failure too
    w.meter.inject("ddb.list_accounts", Fault::Before);
    let run = flows::scheduled_run(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        Some(&w.app.payments),
        w.app.ctx(),
        Some("2026-12-04T16:00:00Z"),
    )
    .await;
    assert_eq!(run.key_count, Some(1));
    assert!(run.disabled.is_err());
    // a count that fails does not fail the sweep
    w.meter.inject("apigw.count_keys", Fault::Before);
    let run = flows::scheduled_run(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        Some(&w.app.payments),
        w.app.ctx(),
        Some("2026-12-04T17:00:00Z"),
    )
    .await;
    assert_eq!(run.key_count, None);
    assert!(run.disabled.is_ok());
}
