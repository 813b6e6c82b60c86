//! Idle free keys reclaimed by the sweep (`flows::reclaim_idle_free_keys`, `FREE_KEY_IDLE_DAYS`)
//! on the in-memory ports: which keys go and which stay, the per-run cap, and the user's next
//! request getting a new key. Its crash matrix is in `crash_matrix.rs`.

mod support;

use paykey::domain::{Plan, User};
use paykey::flows::{self, admin};
use paykey::ports::Clock;
use support::{World, FREE_PLAN};

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

async fn free_key(w: &World, u: &User) -> flows::FreeKey {
    flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), u).await.unwrap()
}

async fn reclaim(w: &World) -> Vec<String> {
    flows::reclaim_idle_free_keys(&w.app.store, &w.app.keys, w.app.ctx(), &w.app.store.accounts()).await.unwrap()
}

#[tokio::test]
async fn only_keys_idle_for_the_whole_window_go_and_the_next_request_gets_a_new_one() {
    let mut w = World::tiered();
    w.app.settings.free_key_idle_days = Some(30);
    let (idle, busy, late, comped, held, payer) =
        (w.user("ida"), w.user("bo"), w.user("lou"), w.user("cam"), w.user("sus"), w.user("pat"));
    let idle_key = free_key(&w, &idle).await.api_key;
    let busy_key = free_key(&w, &busy).await.api_key;
    free_key(&w, &comped).await;
    free_key(&w, &held).await;
    let (id, key) = w.checkout_and_pay(&payer).await;
    w.complete(&id, &key).await.unwrap();
    let until = w.clock.now() + days(90);
    admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &comped,
        Some((Plan::PRO, until, String::new())),
    )
    .await
    .unwrap();
    admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &held, Some("x".into())).await.unwrap();
    w.clock.advance(days(20));
    free_key(&w, &late).await; // issued 11 days before the run: not idle for 30 yet
    w.app.keys.call(&busy_key.value, w.clock.now()).unwrap(); // one call 11 days before the run
    w.clock.advance(days(11));

    let off = {
        let mut s = w.app.settings.clone();
        s.free_key_idle_days = None;
        s
    };
    let ctx = flows::Ctx { settings: &off, ..w.app.ctx() };
    assert!(
        flows::reclaim_idle_free_keys(&w.app.store, &w.app.keys, ctx, &w.app.store.accounts())
            .await
            .unwrap()
            .is_empty(),
        "off: nothing"
    );

    assert_eq!(reclaim(&w).await, vec![idle_key.id.clone()], "only the idle free key");
    assert!(w.app.keys.all().iter().all(|k| k.id != idle_key.id), "deleted from API Gateway");
    let record = w.app.store.accounts().into_iter().find(|a| a.user_id == idle.id).unwrap();
    assert_eq!((record.api_key_id, record.plan.as_str()), (None, "FREE"));
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &idle).await.unwrap();
    assert!(view.api_key.is_none(), "/account shows no key");
    assert!(reclaim(&w).await.is_empty(), "a second run finds nothing");
    // the user comes back: a new key, working, on the free plan
    let again = free_key(&w, &idle).await;
    assert!(again.created && again.api_key.id != idle_key.id);
    assert_eq!(w.app.keys.plan_of(&again.api_key.id).as_deref(), Some(FREE_PLAN));
    w.app.keys.call(&again.api_key.value, w.clock.now()).unwrap();
}

#[tokio::test]
async fn one_run_reclaims_at_most_its_cap_and_the_next_run_the_rest() {
    let mut w = World::tiered();
    w.app.settings.free_key_idle_days = Some(7);
    let n = flows::RECLAIMS_PER_RUN + 5;
    for i in 0..n {
        let u = w.user(&format!("user{i}"));
        free_key(&w, &u).await;
    }
    w.clock.advance(days(8));
    assert_eq!(reclaim(&w).await.len(), flows::RECLAIMS_PER_RUN);
    assert_eq!(reclaim(&w).await.len(), 5);
    assert!(w.app.keys.all().is_empty(), "every idle key deleted");
}

#[tokio::test]
async fn a_key_used_earlier_in_the_quota_period_or_yesterday_or_of_a_lapsed_payer_stays() {
    let mut w = World::tiered();
    w.app.settings.free_key_idle_days = Some(1);
    // the clock starts on 2026-11-23 12:00 UTC; the FREE quota is monthly
    let (early, yesterday, lapsed) = (w.user("ed"), w.user("yul"), w.user("lap"));
    let early_key = free_key(&w, &early).await.api_key;
    let y_key = free_key(&w, &yesterday).await.api_key;
    w.app.keys.call(&early_key.value, w.clock.now()).unwrap(); // used on the 23rd
                                                               // a payer whose subscription went past due and then lapsed to FREE: not a candidate
    let (id, key) = w.checkout_and_pay(&lapsed).await;
    w.complete(&id, &key).await.unwrap();
    let sub = w.app.store.accounts().into_iter().find(|a| a.user_id == lapsed.id).unwrap().subscription_id.unwrap();
    w.app.payments.update_subscription(&sub, |s| s.status = paykey::ports::SubscriptionStatus::Unpaid);
    let e = paykey::ports::StripeEvent {
        id: "evt_unpaid".into(),
        kind: "customer.subscription.updated".into(),
        subject: paykey::ports::EventSubject::Subscription { id: sub, customer: None },
    };
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e)
        .await
        .unwrap();
    // to 2026-11-29 23:00: yul calls once; then the 00:00 run of the 30th
    w.clock.advance(days(6) + chrono::Duration::hours(11));
    w.app.keys.call(&y_key.value, w.clock.now()).unwrap();
    w.clock.advance(chrono::Duration::hours(1));
    assert!(reclaim(&w).await.is_empty(), "used on the 23rd (this month), yesterday, or a lapsed payer: all kept");
    // 1 December 01:00, a new quota period: ed's and yul's calls were last month and more than a
    // whole day ago; the lapsed payer stays
    w.clock.advance(days(1) + chrono::Duration::hours(1));
    let mut gone = reclaim(&w).await;
    gone.sort();
    let mut want = vec![early_key.id.clone(), y_key.id.clone()];
    want.sort();
    assert_eq!(gone, want);
}
