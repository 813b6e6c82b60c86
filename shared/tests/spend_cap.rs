//! A customer's own spend cap on a metered tier (issue 26, item 4), on memory: the in-memory
//! registry refuses a call as API Gateway does once a key's period use (served calls plus what
//! UpdateUsage took or gave) reaches the plan's quota, and gives each key the whole quota again
//! when a quota period begins. What these tests prove is that paykey's flows keep the calls
//! *served* within the cap through rotations, graces, a new period and bad requests — on our
//! reading of UpdateUsage (it sets the remaining quota of the current period, never above the
//! plan's quota), not on API Gateway itself.

mod support;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use paykey::domain::User;
use paykey::flows::{self, CapRequest};
use paykey::ports::{EventSubject, KeyRegistry, StripeEvent};
use support::{World, PRO_PLAN};

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

fn set(w: &World, t: DateTime<Utc>) {
    use paykey::ports::Clock;
    let now = w.clock.now();
    assert!(t >= now, "the clock only moves forward");
    w.clock.advance(t - now);
}

/// A user who bought PRO (1,000 included, quota 5,000) on 2026-11-23: (user, key value).
async fn subscriber(w: &World, name: &str) -> (User, String) {
    let u = w.user(name);
    let (id, key) = w.checkout_and_pay(&u).await;
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    let value = current_value(w, &u).await;
    (u, value)
}

async fn current_value(w: &World, u: &User) -> String {
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    w.app.keys.key_value(a.api_key_id.as_deref().unwrap()).await.unwrap().unwrap()
}

/// Calls with the key until API Gateway (the in-memory registry) refuses one, at most `max`;
/// returns how many were served.
fn serve(w: &World, value: &str, now: DateTime<Utc>, max: u64) -> u64 {
    let mut n = 0;
    while n < max && w.app.keys.call(value, now).is_ok() {
        n += 1;
    }
    n
}

/// Calls served on PRO's plan in November by every key (what the customer is billed on).
fn november_served(w: &World) -> u64 {
    let (s, e) = (NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(), NaiveDate::from_ymd_opt(2026, 11, 30).unwrap());
    w.app.keys.export().used.iter().filter(|(_, p, d, _)| p == PRO_PLAN && (s..=e).contains(d)).map(|u| u.3).sum()
}

async fn cap(w: &World, u: &User, requests: Option<u64>) -> Result<flows::CapSet, paykey::Error> {
    flows::set_spend_cap(&w.app.store, &w.app.keys, w.app.ctx(), u, CapRequest { requests }).await
}

#[tokio::test]
async fn a_lowered_cap_stops_calls_there_and_raising_it_back_serves_up_to_the_tiers_quota() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    let now = at(2026, 11, 23, 13);
    assert_eq!(serve(&w, &value, now, 800), 800);
    let set1 = cap(&w, &u, Some(1500)).await.unwrap();
    assert_eq!((set1.spend_cap.requests, set1.spend_cap.custom, set1.remaining), (1500, true, 700));
    assert_eq!((set1.spend_cap.min, set1.spend_cap.max), (1000, 5000), "included .. quota");
    assert_eq!(serve(&w, &value, now, 10_000), 700, "the 1,501st call of the period is refused");
    // Raised: the difference is served, no more.
    let set2 = cap(&w, &u, Some(3000)).await.unwrap();
    assert_eq!(set2.remaining, 1500);
    assert_eq!(serve(&w, &value, now, 10_000), 1500);
    // Back to the default: the tier's quota.
    let set3 = cap(&w, &u, None).await.unwrap();
    assert_eq!((set3.spend_cap.requests, set3.spend_cap.custom, set3.remaining), (5000, false, 2000));
    assert_eq!(serve(&w, &value, now, 10_000), 2000);
    assert_eq!(november_served(&w), 5000);
    // Lowered below what was used: nothing more this period.
    let set4 = cap(&w, &u, Some(1000)).await.unwrap();
    assert_eq!(set4.remaining, 0);
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(a.spend_cap.map(|c| c.requests), Some(1000));
    assert_eq!(a.pending_key_work, None, "the key work was made and cleared");
}

#[tokio::test]
async fn a_cap_outside_the_tiers_range_or_on_a_flat_tier_is_refused_and_changes_nothing() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    let before = w.app.store.accounts();
    let updates = w.meter.count("apigw.set_remaining");
    for bad in [999, 5001, 0] {
        let e = cap(&w, &u, Some(bad)).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "bad_request"), "{bad}: {e}");
        assert!(e.to_string().contains("from 1000") && e.to_string().contains("to 5000"), "{e}");
    }
    // A FREE user (flat tier, hard limit) and a user without a key.
    let free = w.user("bob");
    flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &free).await.unwrap();
    let e = cap(&w, &free, Some(2000)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (409, "not_metered"));
    let nobody = w.user("carol");
    assert_eq!(cap(&w, &nobody, Some(2000)).await.unwrap_err().code(), "no_key");
    let after: Vec<_> = w.app.store.accounts().into_iter().filter(|a| a.user_id == u.id).collect();
    assert_eq!(after, before.into_iter().filter(|a| a.user_id == u.id).collect::<Vec<_>>(), "alice's record unchanged");
    assert_eq!(w.meter.count("apigw.set_remaining"), updates, "no quota changed");
    assert_eq!(serve(&w, &value, at(2026, 11, 23, 13), 10_000), 5000, "the tier's quota stands");
}

#[tokio::test]
async fn a_new_quota_period_restores_the_whole_quota_until_the_sweep_applies_the_cap_again() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    cap(&w, &u, Some(1500)).await.unwrap();
    assert_eq!(serve(&w, &value, at(2026, 11, 23, 13), 10_000), 1500);
    // 1 December: API Gateway gives the key its plan's whole quota again.
    set(&w, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 30).unwrap());
    let dec = paykey::ports::Clock::now(&*w.clock);
    assert_eq!(serve(&w, &value, dec, 100), 100, "served before the sweep: the plan's quota applies");
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(a.spend_cap.as_ref().and_then(|c| c.period_start), NaiveDate::from_ymd_opt(2026, 12, 1));
    assert_eq!(serve(&w, &value, dec, 10_000), 1400, "the cap again, less the 100 served before the sweep");
    // Applied once a period: the next sweep changes no quota.
    let updates = w.meter.count("apigw.set_remaining");
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    assert_eq!(w.meter.count("apigw.set_remaining"), updates, "no quota changed");
}

#[tokio::test]
async fn rotations_with_and_without_grace_never_serve_beyond_the_cap() {
    let w = World::metered();
    let (u, first) = subscriber(&w, "alice").await;
    let now = at(2026, 11, 23, 13);
    cap(&w, &u, Some(2000)).await.unwrap();
    assert_eq!(serve(&w, &first, now, 600), 600);
    let rotate = |grace| {
        flows::rotate_key(
            &w.app.store,
            &w.app.keys,
            w.app.ctx(),
            &u,
            flows::RotateRequest { grace_seconds: grace, request_id: None },
        )
    };
    // With a grace both keys work; together they serve what the cap left.
    let second = rotate(3600).await.unwrap().api_key.value;
    // The cap set again during the grace: split between the two keys, not given to each.
    cap(&w, &u, Some(2500)).await.unwrap();
    let served = serve(&w, &first, now, 10_000) + serve(&w, &second, now, 10_000);
    assert_eq!(served, 1900, "2,500 less the 600 served");
    // The grace ends (the sweep), then a rotation without grace: nothing more to serve.
    set(&w, at(2026, 11, 23, 15));
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let third = rotate(0).await.unwrap().api_key.value;
    assert_eq!(serve(&w, &third, at(2026, 11, 23, 15), 10_000), 0);
    // Raised: the new key serves the difference.
    cap(&w, &u, Some(3000)).await.unwrap();
    assert_eq!(serve(&w, &third, at(2026, 11, 23, 15), 10_000), 500);
    assert_eq!(november_served(&w), 3000);
}

#[tokio::test]
async fn account_shows_the_cap_its_range_the_thresholds_of_the_cap_and_the_days() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    serve(&w, &value, at(2026, 11, 23, 13), 300);
    set(&w, at(2026, 11, 24, 9));
    serve(&w, &value, at(2026, 11, 24, 9), 1000);
    cap(&w, &u, Some(1600)).await.unwrap();
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    let usage = view.usage.unwrap();
    assert_eq!((usage.limit, usage.used, usage.remaining, usage.included), (1600, 1300, 300, Some(1000)));
    let c = usage.spend_cap.unwrap();
    assert_eq!((c.requests, c.custom, c.min, c.max), (1600, true, 1000, 5000));
    assert_eq!(usage.alerts, ["included_80", "included_100", "limit_80"], "80 % of the cap (1,280) reached");
    let days: Vec<(String, u64)> = usage.daily.iter().map(|d| (d.date.clone(), d.used)).collect();
    assert_eq!(days.len(), 24, "1 to 24 November");
    assert_eq!(&days[22..], [("2026-11-23".to_string(), 300), ("2026-11-24".to_string(), 1000)]);
    assert!(days[..22].iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn on_another_tier_its_own_quota_applies_and_moving_back_applies_the_cap_again() {
    let w = World::metered();
    let u = w.user("alice");
    let (id, key) = w.checkout_and_pay(&u).await;
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    let value = current_value(&w, &u).await;
    let sub = w.app.payments.get_checkout_state(&id).subscription.unwrap();
    let now = at(2026, 11, 23, 13);
    cap(&w, &u, Some(1200)).await.unwrap();
    assert_eq!(serve(&w, &value, now, 1000), 1000);
    let moved = |id: &'static str| {
        let e = StripeEvent {
            id: id.into(),
            kind: "customer.subscription.updated".into(),
            subject: EventSubject::Subscription { id: sub.clone(), customer: None },
        };
        let w = &w;
        async move {
            flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e)
                .await
                .unwrap()
        }
    };
    // The cap is PRO's: on BUSINESS (10,000 included, quota 50,000) BUSINESS's own quota applies.
    w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
    moved("evt_up").await;
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u).await.unwrap();
    let c = view.usage.unwrap().spend_cap.unwrap();
    assert_eq!((c.requests, c.custom, c.min, c.max), (50_000, false, 10_000, 50_000));
    assert_eq!(serve(&w, &value, now, 2000), 2000, "beyond PRO's cap: BUSINESS's plan");
    // Back on PRO: what the user's keys used of PRO's plan this period (1,000) comes off the cap.
    w.app.payments.switch_price(&sub, "FMMailPro").unwrap();
    moved("evt_down").await;
    assert_eq!(serve(&w, &value, now, 10_000), 200);
    let e = cap(&w, &u, Some(999)).await.unwrap_err();
    assert_eq!(e.code(), "bad_request");
}

#[tokio::test]
async fn a_cap_set_after_a_grace_ended_but_before_the_sweep_gives_the_old_key_nothing_more() {
    let w = World::metered();
    let (u, first) = subscriber(&w, "alice").await;
    let now = at(2026, 11, 23, 13);
    assert_eq!(serve(&w, &first, now, 1000), 1000);
    let req = flows::RotateRequest { grace_seconds: 60, request_id: None };
    let second = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &u, req).await.unwrap().api_key.value;
    // The grace is over; the sweep has not run: the old key is still enabled and in the plan.
    set(&w, at(2026, 11, 23, 14));
    cap(&w, &u, Some(1500)).await.unwrap();
    let later = at(2026, 11, 23, 14);
    assert_eq!(serve(&w, &first, later, 10_000), 0, "the old key gets nothing more");
    assert_eq!(serve(&w, &second, later, 10_000), 500);
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    assert_eq!(serve(&w, &second, later, 10_000), 0, "the grace's end adds nothing beyond the cap");
    assert_eq!(november_served(&w), 1500);
}

#[tokio::test]
async fn a_rotation_in_a_new_month_before_the_sweep_never_hands_out_more_than_the_cap() {
    let w = World::metered();
    let (u, first) = subscriber(&w, "alice").await;
    cap(&w, &u, Some(1500)).await.unwrap();
    set(&w, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 10).unwrap());
    let dec = paykey::ports::Clock::now(&*w.clock);
    assert_eq!(serve(&w, &first, dec, 200), 200, "the plan's whole quota until the sweep");
    let req = flows::RotateRequest { grace_seconds: 0, request_id: None };
    let second = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &u, req).await.unwrap().api_key.value;
    assert_eq!(serve(&w, &second, dec, 10_000), 1300, "the cap less the 200 served");
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    assert_eq!(serve(&w, &second, dec, 10_000), 0);
}

#[tokio::test]
async fn a_suspended_customer_cannot_set_a_cap_and_the_cap_is_applied_again_once_lifted() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    cap(&w, &u, Some(1500)).await.unwrap();
    let suspend = |r: Option<&str>| {
        flows::admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &u, r.map(String::from))
    };
    suspend(Some("abuse")).await.unwrap();
    let e = cap(&w, &u, Some(2000)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (403, "account_suspended"));
    // lifted in the next month: the sweep applies the cap to it
    set(&w, Utc.with_ymd_and_hms(2026, 12, 2, 0, 0, 0).unwrap());
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    suspend(None).await.unwrap();
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let dec = paykey::ports::Clock::now(&*w.clock);
    assert_eq!(serve(&w, &value, dec, 10_000), 1500);
}

#[tokio::test]
async fn the_operator_is_told_when_a_customer_reaches_80_and_100_percent_of_their_cap() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    cap(&w, &u, Some(2000)).await.unwrap();
    let announce = || async {
        let accounts = w.app.store.accounts();
        flows::metering::announce_thresholds(&w.app.store, &w.app.keys, w.app.ctx(), &accounts).await.unwrap()
    };
    let now = at(2026, 11, 23, 13);
    serve(&w, &value, now, 1600);
    let names = |v: Vec<(paykey::domain::CustomerId, &'static str)>| v.into_iter().map(|(_, a)| a).collect::<Vec<_>>();
    assert_eq!(names(announce().await), ["included_80", "included_100", "limit_80"], "80 % of the 2,000 cap");
    serve(&w, &value, now, 10_000);
    assert_eq!(names(announce().await), ["limit_100"]);
}

#[tokio::test]
async fn a_grace_running_into_a_new_month_is_split_from_the_cap_not_the_quota() {
    let w = World::metered();
    let (u, first) = subscriber(&w, "alice").await;
    cap(&w, &u, Some(1500)).await.unwrap();
    set(&w, at(2026, 11, 30, 12));
    let req = flows::RotateRequest { grace_seconds: 86_400, request_id: None };
    let second = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &u, req).await.unwrap().api_key.value;
    // 1 December, the grace still running: the sweep splits the new month's cap between the keys
    set(&w, Utc.with_ymd_and_hms(2026, 12, 1, 0, 1, 0).unwrap());
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(
        a.spend_cap.and_then(|c| c.period_start),
        NaiveDate::from_ymd_opt(2026, 12, 1),
        "applied with the split"
    );
    let dec = paykey::ports::Clock::now(&*w.clock);
    let served = serve(&w, &first, dec, 10_000) + serve(&w, &second, dec, 10_000);
    assert_eq!(served, 1500, "the cap, not the quota, over both keys");
}

#[tokio::test]
async fn a_usage_read_that_fails_fails_the_cap_and_changes_no_quota() {
    let w = World::metered();
    let (u, value) = subscriber(&w, "alice").await;
    let updates = w.meter.count("apigw.set_remaining");
    w.meter.inject("apigw.usage", paykey::adapters::memory::Fault::Before);
    let e = cap(&w, &u, Some(1500)).await.unwrap_err();
    assert_eq!(e.status(), 502, "{e}");
    assert_eq!(w.meter.count("apigw.set_remaining"), updates, "nothing counted as 0, nothing handed out");
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(a.spend_cap, None);
    assert_eq!(serve(&w, &value, at(2026, 11, 23, 13), 10_000), 5000, "the tier's quota stands");
}
