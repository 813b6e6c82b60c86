//! paykey acts only on paykey's subscriptions (issue 23), on in-memory ports: one Stripe
//! account sells paykey's tiers and another product ("Newsletter"); a paykey customer buys the
//! other product through a plain Checkout (same customer), a stranger buys it too, and every
//! event Stripe sends for those subscriptions changes nothing for anyone — no cancellation, no
//! refund, no tier granted, none taken away.

mod support;

use paykey::domain::{CustomerId, Plan, SessionId, SubscriptionId, User};
use paykey::flows::{self, EventOutcome};
use paykey::ports::{EventSubject, StripeEvent, SubscriptionStatus, UserDirectory};
use support::World;

const OTHER: &str = "Newsletter";

async fn handle(w: &World, e: &StripeEvent) -> EventOutcome {
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), e)
        .await
        .unwrap_or_else(|err| panic!("{}: {err}", e.kind))
}

/// Every event Stripe sends for a subscription bought through a plain Checkout: the session,
/// the subscription's creation and updates, the invoice, and at last its deletion.
fn events_of(n: &str, sub: &SubscriptionId, customer: &CustomerId) -> Vec<StripeEvent> {
    let session = SessionId::parse(&format!("cs_test_plain_{n}")).unwrap();
    let s = || EventSubject::Subscription { id: sub.clone(), customer: Some(customer.clone()) };
    let i = || EventSubject::Invoice { subscription: Some(sub.clone()), customer: Some(customer.clone()) };
    [
        ("checkout.session.completed", EventSubject::Checkout(session)),
        ("customer.subscription.created", s()),
        ("invoice.paid", i()),
        ("customer.subscription.updated", s()),
        ("invoice.payment_failed", i()),
    ]
    .into_iter()
    .enumerate()
    .map(|(k, (kind, subject))| StripeEvent { id: format!("evt_{n}_{k}"), kind: kind.into(), subject })
    .collect()
}

async fn pro_user(w: &World, name: &str) -> (User, SubscriptionId, CustomerId) {
    let u = w.user(name);
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
    (u, a.subscription_id.unwrap(), a.customer_id.unwrap())
}

async fn plan_of(w: &World, u: &User) -> Plan {
    w.app.users.get_user(&u.name).await.unwrap().unwrap().plan()
}

/// Stripe's side of a subscription paykey must not touch: still active, nothing refunded.
fn untouched(w: &World, sub: &SubscriptionId) {
    let s = w.app.payments.subscriptions().into_iter().find(|s| &s.id == sub).unwrap();
    assert_eq!(s.status, SubscriptionStatus::Active, "{sub} not cancelled");
    assert_eq!(w.app.payments.charge(sub).unwrap().refunded, 0, "{sub} not refunded");
}

#[tokio::test]
async fn another_product_bought_by_a_paykey_customer_or_a_stranger_changes_nothing_for_anyone() {
    let w = World::tiered();
    let (alice, pro_sub, alice_customer) = pro_user(&w, "alice").await;
    let bob = w.user("bob"); // signed up, free, never paid
    let before = w.snapshot();
    let calls_before = w.meter.calls().len();

    // Alice buys the other product through a plain Checkout (same customer); a stranger buys it.
    let hers = w.app.payments.subscribe_elsewhere(Some(&alice_customer), OTHER, 500);
    let stranger = w.app.payments.subscribe_elsewhere(None, OTHER, 500);
    // and one to a price with no lookup key at all
    let bare = w.app.payments.subscribe_elsewhere(Some(&alice_customer), "Consulting", 9000);
    w.app.payments.update_subscription(&bare.id, |s| s.item_lookup_keys = vec![None]).unwrap();
    let mut events = events_of("alice", &hers.id, &alice_customer);
    events.extend(events_of("stranger", &stranger.id, &stranger.customer));
    events.extend(events_of("bare", &bare.id, &alice_customer));
    for e in &events {
        let out = handle(&w, e).await;
        assert!(matches!(out, EventOutcome::Ignored(_)), "{} {:?}: {out:?}", e.kind, e.subject);
    }
    untouched(&w, &hers.id);
    untouched(&w, &stranger.id);
    untouched(&w, &bare.id);
    assert_eq!(w.meter.count("stripe.cancel_duplicate"), 0, "nothing cancelled or refunded");
    assert_eq!(w.snapshot(), before, "no record, key, usage plan or user attribute changed");
    let writes: Vec<_> = w.meter.calls()[calls_before..]
        .iter()
        .filter(|c| !c.contains("get") && !c.contains("find") && !c.contains("seen") && !c.contains("mark_event"))
        .map(|c| c.to_string())
        .collect();
    assert!(writes.is_empty(), "only reads (and the processed-event marks): {writes:?}");
    assert_eq!(plan_of(&w, &alice).await.as_str(), "PRO");
    assert_eq!(plan_of(&w, &bob).await.as_str(), "FREE");

    // The resync sees no drift for anyone: the other product is not a paykey subscription.
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await.unwrap();
    assert!(drifts.is_empty(), "{drifts:?}");
    untouched(&w, &hers.id);

    // The other product's cancellation does not downgrade her, and her PRO's does not touch it.
    w.app.payments.update_subscription(&hers.id, |s| s.status = SubscriptionStatus::Canceled).unwrap();
    let e = StripeEvent {
        id: "evt_other_deleted".into(),
        kind: "customer.subscription.deleted".into(),
        subject: EventSubject::Subscription { id: hers.id.clone(), customer: Some(alice_customer.clone()) },
    };
    assert!(matches!(handle(&w, &e).await, EventOutcome::Ignored(_)));
    assert_eq!(plan_of(&w, &alice).await.as_str(), "PRO", "still PRO");
    let other2 = w.app.payments.subscribe_elsewhere(Some(&alice_customer), OTHER, 500);
    w.app.payments.update_subscription(&pro_sub, |s| s.status = SubscriptionStatus::Canceled).unwrap();
    let e = StripeEvent {
        id: "evt_pro_deleted".into(),
        kind: "customer.subscription.deleted".into(),
        subject: EventSubject::Subscription { id: pro_sub.clone(), customer: Some(alice_customer.clone()) },
    };
    assert!(matches!(handle(&w, &e).await, EventOutcome::Processed(_)));
    assert_eq!(plan_of(&w, &alice).await.as_str(), "FREE", "her paykey subscription ended");
    untouched(&w, &other2.id);
    // …and a later event for the other product does not grant a tier to the now-free customer
    // (it used to: an unlisted price granted the first paid tier).
    for e in events_of("again", &other2.id, &alice_customer) {
        assert!(matches!(handle(&w, &e).await, EventOutcome::Ignored(_)), "{}", e.kind);
    }
    assert_eq!(plan_of(&w, &alice).await.as_str(), "FREE");
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await.unwrap();
    assert!(drifts.is_empty(), "{drifts:?}");
    untouched(&w, &other2.id);
}

#[tokio::test]
async fn a_second_catalog_subscription_is_still_cancelled_but_one_that_also_sells_another_product_is_not() {
    let w = World::tiered();
    let (alice, _pro_sub, customer) = pro_user(&w, "alice").await;
    // A second PRO subscription slipped through (the duplicate rule still holds for catalog prices).
    let dup = w.app.payments.subscribe_elsewhere(Some(&customer), "FMMailBusiness", 4980);
    let e = StripeEvent {
        id: "evt_dup".into(),
        kind: "customer.subscription.created".into(),
        subject: EventSubject::Subscription { id: dup.id.clone(), customer: Some(customer.clone()) },
    };
    assert!(matches!(handle(&w, &e).await, EventOutcome::Processed(ref s) if s.contains("duplicate")));
    assert_eq!(w.app.payments.charge(&dup.id).unwrap().refunded, 4980);
    // One that pays for a paykey tier *and* another product is never cancelled by paykey.
    let mixed = w.app.payments.subscribe_elsewhere(Some(&customer), "FMMailBusiness", 4980);
    w.app.payments.update_subscription(&mixed.id, |s| s.item_lookup_keys.push(Some(OTHER.to_string()))).unwrap();
    let e = StripeEvent {
        id: "evt_mixed".into(),
        kind: "customer.subscription.created".into(),
        subject: EventSubject::Subscription { id: mixed.id.clone(), customer: Some(customer.clone()) },
    };
    handle(&w, &e).await;
    untouched(&w, &mixed.id);
    assert_eq!(plan_of(&w, &alice).await.as_str(), "PRO", "the recorded subscription stays in charge");
}

#[tokio::test]
async fn the_recorded_subscription_switched_to_a_price_paykey_no_longer_sells_keeps_its_tier_and_still_ends() {
    let w = World::tiered();
    let (alice, pro_sub, _) = pro_user(&w, "alice").await;
    w.app.payments.update_subscription(&pro_sub, |s| s.item_lookup_keys = vec![Some("ProLegacy2019".into())]).unwrap();
    let e = |id: &str, kind: &str| StripeEvent {
        id: id.into(),
        kind: kind.into(),
        subject: EventSubject::Subscription { id: pro_sub.clone(), customer: None },
    };
    let out = handle(&w, &e("evt_switch", "customer.subscription.updated")).await;
    assert!(matches!(out, EventOutcome::Processed(_)), "{out:?}");
    assert_eq!(plan_of(&w, &alice).await.as_str(), "PRO", "never a tier it did not buy, never a free ride down");
    w.app.payments.update_subscription(&pro_sub, |s| s.status = SubscriptionStatus::Canceled).unwrap();
    handle(&w, &e("evt_end", "customer.subscription.deleted")).await;
    assert_eq!(plan_of(&w, &alice).await.as_str(), "FREE", "its end still downgrades: it is paykey's");
}
