//! Usage-based billing on memory (issue 26): checkout sells the flat and the metered price, the
//! hourly reporter sends each customer's daily totals (replacing, never adding), settles a day
//! three hours after it ends, sums a customer's keys and metered plans, bills nobody for a key
//! no record names, reports a day too old for Stripe instead of dropping it, and the closing
//! invoice gets its period's days before Stripe finalizes it. The crash matrix is in
//! `crash_matrix.rs`; the Stripe adapter and the emulator's meter in `stripe_contract.rs`.

mod support;

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use paykey::domain::{CustomerId, User};
use paykey::flows::{self, metering};
use paykey::ports::metering::UsageCursor;
use paykey::ports::{EventSubject, StripeEvent};
use support::{World, BUSINESS_PLAN, FREE_PLAN, PRO_PLAN};

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
}

fn at(d: u32, h: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
}

/// Moves the world's clock to `t` (never back).
fn set(w: &World, t: chrono::DateTime<Utc>) {
    use paykey::ports::Clock;
    let now = w.clock.now();
    assert!(t >= now, "the clock only moves forward");
    w.clock.advance(t - now);
}

/// A user who bought PRO (metered) on 2026-11-23: (user, key id, customer).
async fn subscriber(w: &World, name: &str) -> (User, String, CustomerId) {
    let u = w.user(name);
    let (id, key) = w.checkout_and_pay(&u).await;
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    (u, a.api_key_id.unwrap(), a.customer_id.unwrap())
}

/// `invoice.created` for the draft of the period `2026-11-23 12:00 .. end` (Stripe's closing
/// invoice of a subscription's period).
fn closing_invoice(
    id: &str,
    subscription: paykey::domain::SubscriptionId,
    customer: &CustomerId,
    end: chrono::DateTime<Utc>,
) -> StripeEvent {
    StripeEvent {
        id: id.into(),
        kind: "invoice.created".into(),
        subject: EventSubject::ClosingInvoice {
            subscription,
            customer: customer.clone(),
            period_start: at(23, 12),
            period_end: end,
        },
    }
}

async fn report(w: &World) -> metering::UsageReport {
    let accounts = w.app.store.accounts();
    metering::report_usage(&w.app.keys, &w.app.payments, &w.app.store, w.app.ctx(), &accounts).await.unwrap()
}

#[tokio::test]
async fn checkout_sells_the_flat_and_the_metered_price_and_the_subscription_grants_the_tier() {
    let w = World::metered();
    let (u, key, _) = subscriber(&w, "alice").await;
    let sub = w.app.payments.subscriptions().into_iter().find(|s| s.user_id.as_deref() == Some(u.id.as_str())).unwrap();
    assert_eq!(sub.item_lookup_keys, [Some("FMMailPro".to_string()), Some("FMMailProCalls".to_string())]);
    assert_eq!(w.app.keys.plan_of(&key).as_deref(), Some(PRO_PLAN));
    let plans = flows::list_plans(&w.app.payments, &w.app.settings).await.unwrap();
    let pro = plans.plans.iter().find(|p| p.name == "PRO").unwrap();
    let m = pro.metered.as_ref().unwrap();
    assert_eq!((m.included, m.unit_amount_decimal.as_deref(), m.currency.as_deref()), (1000, Some("0.5"), Some("jpy")));
    assert_eq!(pro.quota.unwrap().limit, 5000, "the quota is the spend cap");
    assert!(plans.plans.iter().find(|p| p.name == "FREE").unwrap().metered.is_none());
}

#[tokio::test]
async fn a_day_is_sent_after_it_ends_sent_again_until_it_settles_and_a_resend_replaces_it() {
    let w = World::metered();
    let (_, key, customer) = subscriber(&w, "alice").await;
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 700);
    set(&w, at(24, 0));
    let r = report(&w).await;
    assert_eq!((r.events, r.calls, r.reported_through), (1, 700, Some(day(22))), "{r:?}");
    // Late counts of the 23rd (GetUsage's delay) arrive; the next run's total replaces the first.
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 500);
    set(&w, at(24, 1));
    let r = report(&w).await;
    assert_eq!((r.events, r.calls), (1, 1200));
    assert_eq!(w.app.payments.meter_total(&customer, day(23), day(23)), 1200, "replaced, not 700 + 1,200");
    set(&w, at(24, 3));
    let r = report(&w).await;
    assert_eq!(r.reported_through, Some(day(23)), "settled three hours after the day ended");
    // Settled days are not sent again; the same total sent twice is one event.
    set(&w, at(24, 4));
    let r = report(&w).await;
    assert_eq!(r.events, 0);
    let events: Vec<u64> = w.app.payments.meter_events().iter().map(|e| e.value).collect();
    assert_eq!(events, [700, 1200, 1200], "every send is an event; each replaces the day's value");
    assert_eq!(w.app.payments.meter_total(&customer, day(1), day(30)), 1200);
}

#[tokio::test]
async fn a_customers_keys_and_metered_plans_of_one_day_are_one_total_and_free_use_is_not_billed() {
    let w = World::metered();
    let (u, key, customer) = subscriber(&w, "alice").await;
    // A rotation: the new key and the previous one both served calls on the 23rd …
    let rotated = flows::rotate_key(
        &w.app.store,
        &w.app.keys,
        w.app.ctx(),
        &u,
        flows::RotateRequest { grace_seconds: 3600, request_id: None },
    )
    .await
    .unwrap();
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 300);
    w.app.keys.add_use(&rotated.api_key.id, PRO_PLAN, day(23), 200);
    // … and in BUSINESS's plan after a move that day, and in the free plan before the purchase.
    w.app.keys.add_use(&rotated.api_key.id, BUSINESS_PLAN, day(23), 50);
    w.app.keys.add_use(&key, FREE_PLAN, day(23), 999);
    // The grace ends and the record no longer names the previous key: found by its name.
    set(&w, at(23, 14));
    flows::sweep_expired_keys(&w.app.store, &w.app.keys, w.app.ctx()).await.unwrap();
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    assert_eq!(a.previous_key_id, None);
    // A key no record names (created by hand) is not billed to anyone.
    let stray = paykey::ports::KeyRegistry::create(&w.app.keys, "someone-elses-key").await.unwrap();
    w.app.keys.add_use(&stray.id, PRO_PLAN, day(23), 40);
    set(&w, at(24, 3));
    let r = report(&w).await;
    assert_eq!((r.events, r.calls, r.unattributed), (1, 550, 40), "{r:?}");
    assert_eq!(w.app.payments.meter_total(&customer, day(23), day(23)), 550);
}

#[tokio::test]
async fn days_too_old_for_stripe_are_reported_as_unbilled_and_a_backlog_is_caught_up_a_few_days_a_run() {
    let w = World::metered();
    let (_, key, customer) = subscriber(&w, "alice").await;
    w.app.store.set_reported_through(day(22)).await.unwrap();
    for d in 23..=30 {
        w.app.keys.add_use(&key, PRO_PLAN, day(d), 10);
    }
    // The reporter was down: 40 days later, the 23rd to the 26th are older than Stripe takes.
    set(&w, at(23, 12) + Duration::days(40));
    let r = report(&w).await;
    assert_eq!(r.unreported, [(day(23), 10), (day(24), 10), (day(25), 10), (day(26), 10)]);
    assert_eq!((r.events, r.reported_through), (0, Some(day(26))), "{} days a run", metering::DAYS_PER_RUN);
    let r = report(&w).await;
    assert_eq!(r.unreported.len(), 2, "the 27th and 28th: 34 days is the limit");
    assert_eq!((r.events, r.days.len()), (2, 2), "the 29th and 30th are sent");
    assert_eq!(w.app.payments.meter_total(&customer, day(1), day(30)), 20);
}

#[tokio::test]
async fn the_closing_invoice_gets_its_periods_days_and_another_products_invoice_gets_nothing() {
    let w = World::metered();
    let (u, key, customer) = subscriber(&w, "alice").await;
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    let sub = a.subscription_id.clone().unwrap();
    for d in 23..=30 {
        w.app.keys.add_use(&key, PRO_PLAN, day(d), 150);
    }
    w.app.keys.add_use(&key, PRO_PLAN, NaiveDate::from_ymd_opt(2026, 12, 23).unwrap(), 1);
    // The hourly reporter settled the 23rd to the 29th; the period ends 2026-12-23 12:00.
    w.app.store.set_reported_through(day(27)).await.unwrap();
    set(&w, Utc.with_ymd_and_hms(2026, 12, 23, 12, 0, 5).unwrap());
    let end = Utc.with_ymd_and_hms(2026, 12, 23, 12, 0, 0).unwrap();
    let event = |id: &str, subscription| closing_invoice(id, subscription, &customer, end);
    let other = w.app.payments.subscribe_elsewhere(Some(&customer), "Newsletter", 300);
    let w = &w;
    let handle = |e: StripeEvent| async move {
        flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e).await
    };
    handle(event("evt_other", other.id.clone())).await.unwrap();
    assert!(w.app.payments.meter_events().is_empty(), "another product's invoice sends nothing");
    let out = handle(event("evt_close", sub)).await.unwrap();
    assert!(matches!(&out, flows::EventOutcome::Processed(m) if m.contains("days of usage sent: 3")), "{out:?}");
    let mut days: Vec<NaiveDate> = w.app.payments.meter_events().iter().map(|e| e.day).collect();
    days.sort(); // sent side by side
    assert_eq!(days, [day(28), day(29), day(30)], "the days after the cursor, through the period");
    assert_eq!(w.app.payments.meter_total(&customer, day(28), day(30)), 450);
}

#[tokio::test]
async fn thresholds_are_announced_once_per_customer_period_and_threshold() {
    let w = World::metered();
    let (_, key, customer) = subscriber(&w, "alice").await;
    let announce = || async {
        let accounts = w.app.store.accounts();
        metering::announce_thresholds(&w.app.store, &w.app.keys, w.app.ctx(), &accounts).await.unwrap()
    };
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 799);
    assert!(announce().await.is_empty(), "79.9 % of the included 1,000");
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 1);
    assert_eq!(announce().await, [(customer.clone(), "included_80")]);
    assert!(announce().await.is_empty(), "once");
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 3400); // 4,200 of the cap 5,000
    assert_eq!(announce().await, [(customer.clone(), "included_100"), (customer.clone(), "limit_80")]);
    // the next quota period starts over
    set(&w, Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    w.app.keys.add_use(&key, PRO_PLAN, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(), 900);
    assert_eq!(announce().await, [(customer.clone(), "included_80")]);
}

#[tokio::test]
async fn nothing_is_sent_to_a_meter_that_would_add_resends_and_a_comped_users_calls_are_not_billed() {
    let w = World::metered();
    let (_, key, customer) = subscriber(&w, "alice").await;
    w.app.keys.add_use(&key, PRO_PLAN, day(23), 300);
    set(&w, at(24, 4));
    w.app.payments.add_meter("paykey_api_requests", false); // made by hand, without the daily window
    let accounts = w.app.store.accounts();
    let e =
        metering::report_usage(&w.app.keys, &w.app.payments, &w.app.store, w.app.ctx(), &accounts).await.unwrap_err();
    assert!(e.to_string().contains("daily"), "{e}");
    assert!(w.app.payments.meter_events().is_empty(), "nothing sent");
    assert_eq!(w.app.store.reported_through().await.unwrap(), None, "the cursor stays");
    w.app.payments.add_meter("paykey_api_requests", true);
    // bob is on PRO by an operator's comp (no subscription): his calls are not billed
    let bob = w.user("bob");
    let until = Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap();
    flows::admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &bob,
        Some((paykey::domain::Plan::PRO, until, String::new())),
    )
    .await
    .unwrap();
    let mut b = w.app.store.accounts().into_iter().find(|a| a.user_id == bob.id).unwrap();
    b.customer_id = Some(CustomerId::parse("cus_bobonce").unwrap()); // a customer from an earlier purchase
    w.app.store.restore(
        w.app.store.sessions(),
        w.app.store.accounts().into_iter().filter(|a| a.user_id != bob.id).chain([b.clone()]).collect(),
        Vec::new(),
    );
    w.app.keys.add_use(b.api_key_id.as_deref().unwrap(), PRO_PLAN, day(24), 50); // after the grant
    set(&w, at(25, 4));
    let r = report(&w).await;
    assert_eq!((r.events, r.calls), (1, 300), "alice's only: {r:?}");
    assert_eq!(w.app.payments.meter_total(&customer, day(23), day(23)), 300);
}

#[tokio::test]
async fn a_closing_invoice_before_its_last_day_settled_is_sent_and_answered_as_a_failure_until_it_has() {
    let w = World::metered();
    let (u, key, customer) = subscriber(&w, "alice").await;
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    w.app.keys.add_use(&key, PRO_PLAN, day(29), 40);
    w.app.store.set_reported_through(day(28)).await.unwrap();
    // the period ends on 12-01 at 01:00: its last day, the 30th, settles at 03:00
    let end = Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap();
    set(&w, end + Duration::seconds(5));
    w.app.keys.add_use(&key, PRO_PLAN, day(30), 60);
    let event = closing_invoice("evt_early", a.subscription_id.clone().unwrap(), &customer, end);
    let handle =
        || flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &event);
    let e = handle().await.unwrap_err();
    assert!(matches!(e, paykey::Error::UsageNotSettled(d) if d == day(30)), "{e}");
    assert_eq!(e.status(), 503, "Stripe delivers it again and holds the draft");
    assert_eq!(w.app.payments.meter_total(&customer, day(29), day(30)), 100, "sent as it stands meanwhile");
    // late counts of the 30th; Stripe's redelivery after 03:00 finishes it
    w.app.keys.add_use(&key, PRO_PLAN, day(30), 5);
    set(&w, Utc.with_ymd_and_hms(2026, 12, 1, 3, 30, 0).unwrap());
    assert!(matches!(handle().await.unwrap(), flows::EventOutcome::Processed(_)));
    assert_eq!(w.app.payments.meter_total(&customer, day(29), day(30)), 105);
}

#[tokio::test]
async fn a_flat_tiers_closing_invoice_is_left_to_stripe_at_once_and_a_long_customer_id_keeps_sends_apart() {
    let mut metered_elsewhere = World::metered();
    // a catalog where PRO is flat and BUSINESS metered
    metered_elsewhere.app.settings.catalog = paykey::domain::Catalog::parse(
        r#"{"tiers": [{"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 1000, "period": "MONTH"}},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro", "quota": {"limit": 5000, "period": "MONTH"}},
        {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "usage-plan-business",
         "quota": {"limit": 50000, "period": "MONTH"}, "metered": {"lookup_key": "FMMailBusinessCalls", "included": 10000}}]}"#,
    )
    .unwrap();
    let w2 = metered_elsewhere;
    let (u, _, customer) = subscriber(&w2, "alice").await;
    let a = w2.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    // a period ending at 01:00: its last day has not settled, but a flat tier has nothing to wait for
    let end = Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).unwrap();
    set(&w2, end + Duration::seconds(5));
    let event = closing_invoice("evt_flat", a.subscription_id.clone().unwrap(), &customer, end);
    let out =
        flows::handle_stripe_event(&w2.app.store, &w2.app.keys, &w2.app.users, &w2.app.payments, w2.app.ctx(), &event)
            .await
            .unwrap();
    assert!(matches!(&out, flows::EventOutcome::Processed(m) if m.contains("days of usage sent: 0")), "{out:?}");
    // identifiers: at most 100 characters, distinct per total and send even for a long customer id
    let long = CustomerId::parse(&format!("cus_{}", "x".repeat(120))).unwrap();
    let e = |value, sent_at| paykey::ports::metering::MeterEvent {
        event_name: "paykey_api_requests".into(),
        customer: long.clone(),
        day: day(23),
        value,
        sent_at,
    };
    let ids = [e(1, 1).identifier(), e(2, 1).identifier(), e(1, 2).identifier()];
    assert!(ids.iter().all(|i| i.len() <= 100), "{ids:?}");
    assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2], "{ids:?}");
}

#[tokio::test]
async fn the_pricing_table_shows_no_rate_when_the_stripe_price_disagrees_with_the_catalog() {
    let w = World::new();
    let mut w = w;
    w.app.settings.catalog = paykey::domain::Catalog::parse(support::METERED_TIERS).unwrap();
    w.app.payments.add_price("FMMailBusiness", 4980, "jpy");
    // PRO's metered price includes 500, the catalog says 1,000; BUSINESS's agrees
    w.app.payments.add_metered_price("FMMailProCalls", 500, "0.5", "jpy");
    w.app.payments.add_metered_price("FMMailBusinessCalls", 10000, "0.3", "jpy");
    let plans = flows::list_plans(&w.app.payments, &w.app.settings).await.unwrap();
    let rate = |n: &str| {
        plans.plans.iter().find(|p| p.name == n).unwrap().metered.as_ref().unwrap().unit_amount_decimal.clone()
    };
    assert_eq!(rate("PRO"), None, "what customers read must be what they pay");
    assert_eq!(rate("BUSINESS").as_deref(), Some("0.3"));
    // … and checkout does not sell it: 500 misconfigured, nothing written, no Stripe write
    let u = w.user("alice");
    let before = w.snapshot();
    let writes = w.meter.count("stripe.create_checkout");
    let buy = |k: &str| flows::CheckoutRequest { lookup_key: k.into() };
    let e = flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), &u, buy("FMMailPro"))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (500, "misconfigured"), "{e}");
    assert_eq!(w.snapshot(), before);
    assert_eq!(w.meter.count("stripe.create_checkout"), writes);
    let ok = flows::start_checkout(&w.app.users, &w.app.payments, &w.app.store, w.app.ctx(), &u, buy("FMMailBusiness"));
    assert!(ok.await.is_ok(), "the tier whose price agrees is sold");
}
