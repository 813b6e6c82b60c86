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
use support::{World, BUSINESS_PLAN, FREE_PLAN};

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

#[tokio::test]
async fn a_plan_change_during_the_grace_moves_the_new_key_and_spares_the_old_one() {
    let w = World::tiered();
    let u = w.user("carol");
    let (_, old_value) = free_key_value(&w, &u).await;
    let r = rotate(&w, &u, 3600, None).await.unwrap();
    let (id, key) = w.checkout_and_pay(&u).await; // PRO (a trial: first-time customer)
    w.complete(&id, &key).await.unwrap();
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
    assert_eq!(w.app.keys.plan_of(&r.api_key.id).as_deref(), Some(BUSINESS_PLAN), "the new key moved");
    assert!(call(&w, &old_value).is_ok(), "the old key still works in its grace");
    assert_eq!(w.app.users.get_user(&u.name).await.unwrap().unwrap().plan().as_str(), "BUSINESS");
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

#[tokio::test]
async fn a_fault_or_crash_at_each_rotation_call_then_a_retry_ends_with_one_new_key() {
    let ops = [
        "ddb.lock_account",
        "apigw.find_key",
        "apigw.create_key",
        "apigw.attach",
        "apigw.usage",
        "apigw.set_remaining",
        "apigw.set_enabled",
        "apigw.plans_of",
        "apigw.detach",
        "ddb.put_account",
        "apigw.key_value",
    ];
    let mut cases = 0;
    for op in ops {
        for fault in [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter] {
            let w = Arc::new(World::tiered());
            let u = w.user("frank");
            let (old, old_value) = free_key_value(&w, &u).await;
            w.meter.inject(op, fault);
            let (w2, u2) = (Arc::clone(&w), u.clone());
            let first = tokio::spawn(async move { rotate(&w2, &u2, 0, Some("r1")).await }).await;
            w.meter.clear_faults();
            assert!(!matches!(first, Ok(Ok(_))), "{op} {fault:?}: the fault fired");
            w.clock.advance(chrono::Duration::seconds(61));
            let r = rotate(&w, &u, 0, Some("r1")).await.unwrap_or_else(|e| panic!("{op} {fault:?}: retry: {e}"));
            assert_ne!(r.api_key.id, old, "{op} {fault:?}");
            assert_eq!(enabled_keys(&w, &u), vec![r.api_key.id.clone()], "{op} {fault:?}: exactly one new enabled key");
            assert_eq!(call(&w, &old_value), Err(Refused::Forbidden), "{op} {fault:?}: the old key is off");
            let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
            assert_eq!(account.api_key_id.as_deref(), Some(r.api_key.id.as_str()), "{op} {fault:?}");
            assert_eq!(account.recent_rotations.len(), 1, "{op} {fault:?}: one rotation counted");
            cases += 1;
        }
    }
    println!("# rotation: {cases} fault cases converged");
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
