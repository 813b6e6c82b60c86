//! Operator actions (`flows::admin`) on the in-memory ports: a comp the webhooks, the resync
//! and the sweep honour and end; a suspension nothing re-enables until it is lifted; an erasure
//! that refuses first and then removes everything of the user's. Their crash matrices are in
//! `crash_matrix.rs`; the same actions on moto_server and the Stripe emulator in
//! `admin_moto.rs`; the command line in `infra/setup/tests/admin_cli.rs`.

mod support;

use paykey::domain::{Plan, SubscriptionId, User};
use paykey::flows::admin::{self, EraseOptions, Who};
use paykey::flows::{self, RotateRequest};
use paykey::ports::{Clock, EventSubject, StripeEvent, SubscriptionStatus, UserDirectory};
use support::{World, BUSINESS_PLAN, FREE_PLAN, PRO_PLAN};

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

async fn event(w: &World, id: &str, sub: &SubscriptionId) -> flows::EventOutcome {
    let e = StripeEvent {
        id: id.into(),
        kind: "customer.subscription.updated".into(),
        subject: EventSubject::Subscription { id: sub.clone(), customer: None },
    };
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e).await.unwrap()
}

/// A PRO subscriber: (user, subscription).
async fn subscriber(w: &World, name: &str) -> (User, SubscriptionId) {
    let u = w.user(name);
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let sub = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap().subscription_id.unwrap();
    (u, sub)
}

/// The user's recorded key: (id, enabled, its plan).
fn key_of(w: &World, u: &User) -> (String, bool, Option<String>) {
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).expect("a record");
    let id = a.api_key_id.expect("a key");
    let k = w.app.keys.all().into_iter().find(|k| k.id == id).expect("the key exists");
    (id.clone(), k.enabled, w.app.keys.plan_of(&id))
}

async fn directory_plan(w: &World, u: &User) -> String {
    w.app.users.get_user(&u.name).await.unwrap().unwrap().plan().to_string()
}

#[tokio::test]
async fn a_comp_gives_its_tier_until_it_ends_through_webhooks_and_resync_then_the_sweep_ends_it() {
    let w = World::tiered();
    let free = w.user("fay");
    let until = w.clock.now() + days(30);
    let c = admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &free,
        Some((Plan::PRO, until, "support".into())),
    )
    .await
    .unwrap();
    assert_eq!((c.plan.as_str(), c.key_enabled), ("PRO", true));
    assert_eq!(key_of(&w, &free).2.as_deref(), Some(PRO_PLAN), "the new key is in PRO's plan");
    assert_eq!(directory_plan(&w, &free).await, "PRO");
    // the free-key route answers with the comped key, it does not move it back
    let k = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &free).await.unwrap();
    assert_eq!((k.plan.as_str(), k.created), ("PRO", false));

    // A subscriber comped to BUSINESS stays on PRO (what they pay for) while it pays; when the
    // subscription is cancelled the webhook leaves them on the comp, and the resync agrees.
    let (sam, sub) = subscriber(&w, "sam").await;
    admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &sam,
        Some(("BUSINESS".parse::<Plan>().unwrap(), until, String::new())),
    )
    .await
    .unwrap();
    assert_eq!(key_of(&w, &sam).2.as_deref(), Some(PRO_PLAN), "the subscription's tier wins while it pays");
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let out = event(&w, "evt_cancel", &sub).await;
    assert_eq!(out, flows::EventOutcome::Processed("sam is BUSINESS".into()));
    assert_eq!(key_of(&w, &sam).2.as_deref(), Some(BUSINESS_PLAN));
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), false).await.unwrap();
    assert!(drifts.is_empty(), "the resync respects the comps: {drifts:?}");

    // the end: the sweep moves both back to the free tier (their subscriptions buy nothing)
    w.clock.advance(days(30) + chrono::Duration::seconds(1));
    let ended = flows::end_expired_comps(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx()).await.unwrap();
    assert_eq!(ended.len(), 2, "{ended:?}");
    for u in [&free, &sam] {
        let (_, enabled, plan) = key_of(&w, u);
        assert_eq!((enabled, plan.as_deref()), (true, Some(FREE_PLAN)), "{u}: one key for life, on FREE");
        assert_eq!(directory_plan(&w, u).await, "FREE");
        let a = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id).unwrap();
        assert_eq!((a.plan.as_str(), a.comp.is_none()), ("FREE", true));
    }
    assert!(flows::end_expired_comps(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx()).await.unwrap().is_empty());
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), false).await.unwrap();
    assert!(drifts.is_empty(), "{drifts:?}");
}

#[tokio::test]
async fn a_comp_that_ends_returns_a_subscriber_to_the_tier_they_pay_for_and_bad_grants_write_nothing() {
    let w = World::tiered();
    let (sam, _) = subscriber(&w, "sam").await;
    let business = "BUSINESS".parse::<Plan>().unwrap();
    let now = w.clock.now();
    // refused: a free tier, an unknown one, a past date — nothing written
    let before = w.app.store.accounts();
    for (plan, until) in [(Plan::FREE, now + days(1)), (Plan::PRO, now - days(1))] {
        let e = admin::set_comp(
            &w.app.store,
            &w.app.keys,
            &w.app.users,
            w.app.ctx(),
            &sam,
            Some((plan, until, String::new())),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }
    assert_eq!(w.app.store.accounts(), before, "a refused grant writes nothing");
    assert!("GOLD".parse::<Plan>().is_ok_and(|p| w.app.settings.tier_of(&p).is_none()));

    // a PRO payer is not moved by a comp of PRO; the comp's end leaves them on PRO
    admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &sam,
        Some((business.clone(), now + days(2), String::new())),
    )
    .await
    .unwrap();
    w.clock.advance(days(3));
    flows::end_expired_comps(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx()).await.unwrap();
    assert_eq!(key_of(&w, &sam).2.as_deref(), Some(PRO_PLAN));
    assert_eq!(directory_plan(&w, &sam).await, "PRO");

    // an operator ends a comp early
    let fay = w.user("fay");
    admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &fay,
        Some((business, w.clock.now() + days(9), String::new())),
    )
    .await
    .unwrap();
    let c = admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &fay, None).await.unwrap();
    assert_eq!(c.plan.as_str(), "FREE");
    assert_eq!(key_of(&w, &fay).2.as_deref(), Some(FREE_PLAN));
}

#[tokio::test]
async fn a_suspension_holds_against_webhooks_resync_free_key_rotation_and_checkout_until_lifted() {
    let w = World::tiered();
    let (sam, sub) = subscriber(&w, "sam").await;
    let (key, ..) = key_of(&w, &sam);
    let c = admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam, Some("abuse".into()))
        .await
        .unwrap();
    assert!(!c.key_enabled);
    assert_eq!(key_of(&w, &sam), (key.clone(), false, Some(PRO_PLAN.into())), "disabled, kept in its plan");

    // Stripe says active again and again: the key stays disabled
    event(&w, "evt_1", &sub).await;
    assert!(!key_of(&w, &sam).1, "a webhook does not re-enable it");
    // a tier change while suspended moves the (disabled) key with the tier
    w.app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
    event(&w, "evt_2", &sub).await;
    assert_eq!(key_of(&w, &sam), (key.clone(), false, Some(BUSINESS_PLAN.into())));
    let drifts =
        flows::resync(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), true).await.unwrap();
    assert!(drifts.is_empty(), "a suspended user's disabled key is no drift: {drifts:?}");
    assert!(!key_of(&w, &sam).1);
    // every route that would hand out or sell a key refuses
    let e = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (403, "account_suspended"));
    let rot = RotateRequest { grace_seconds: 0, request_id: None };
    let e = flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &sam, rot).await.unwrap_err();
    assert_eq!(e.code(), "account_suspended");
    let keys_before = w.app.keys.all().len();
    let e = flows::start_checkout(
        &w.app.users,
        &w.app.payments,
        &w.app.store,
        w.app.ctx(),
        &sam,
        flows::CheckoutRequest::new("FMMailBusiness"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "account_suspended");
    assert_eq!(w.app.keys.all().len(), keys_before, "nothing created");
    let view = flows::get_account(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam).await.unwrap();
    assert!(!view.api_key.unwrap().enabled, "/account shows the key as not working");
    // suspending a user with no key creates none
    let newbie = w.user("nia");
    admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &newbie, Some("fraud".into()))
        .await
        .unwrap();
    let name = w.app.settings.key_name(&newbie);
    assert!(w.app.keys.all().iter().all(|k| k.name != name), "no key created for a suspended user");

    // lifted: the same key works again, in the tier the subscription buys
    let c = admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam, None).await.unwrap();
    assert_eq!((c.plan.as_str(), c.key_enabled), ("BUSINESS", true));
    assert_eq!(key_of(&w, &sam), (key, true, Some(BUSINESS_PLAN.into())));
}

#[tokio::test]
async fn erase_refuses_what_would_charge_or_touch_other_products_then_removes_everything_of_the_user() {
    let w = World::tiered();
    let (sam, sub) = subscriber(&w, "sam").await;
    let customer = w.app.store.accounts().into_iter().find(|a| a.user_id == sam.id).unwrap().customer_id.unwrap();
    let ctx = w.app.ctx();
    let erase = |opts| admin::erase(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, ctx, &sam, opts);
    let before = (w.app.store.accounts(), w.app.keys.all(), w.app.payments.subscriptions());
    // still paying for paykey: refused without --cancel-subscriptions
    let e = erase(EraseOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains(sub.as_str()) && e.status() == 400, "{e}");
    // the customer also pays for the seller's other product: --delete-customer refused
    let other = w.app.payments.subscribe_elsewhere(Some(&customer), "newsletter", 500);
    let e = erase(EraseOptions { cancel_subscriptions: true, delete_customer: true }).await.unwrap_err();
    assert!(e.to_string().contains(other.id.as_str()), "{e}");
    assert_eq!(before.0, w.app.store.accounts(), "refusals change nothing");
    assert_eq!(before.1, w.app.keys.all());
    assert!(w.app.payments.subscriptions().iter().all(|s| s.status != SubscriptionStatus::Canceled));

    // rotate first, so there is a previous key too
    let rot = RotateRequest { grace_seconds: 600, request_id: None };
    flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &sam, rot).await.unwrap();
    let done = erase(EraseOptions { cancel_subscriptions: true, delete_customer: false }).await.unwrap();
    assert_eq!(done.subscriptions_cancelled, vec![sub.clone()]);
    assert_eq!(done.keys_deleted.len(), 2, "current and previous: {done:?}");
    assert!(done.directory_user_deleted && done.record_deleted);
    assert_eq!(done.customer_kept.as_ref(), Some(&customer));
    let name = w.app.settings.key_name(&sam);
    assert!(w.app.keys.all().iter().all(|k| k.name != name), "no key left");
    assert!(w.app.store.accounts().iter().all(|a| a.user_id != sam.id), "no record left");
    assert!(w.app.users.get_user(&sam.name).await.unwrap().is_none(), "no directory user left");
    let subs = w.app.payments.subscriptions();
    assert_eq!(subs.iter().find(|s| s.id == sub).unwrap().status, SubscriptionStatus::Canceled);
    assert_eq!(
        subs.iter().find(|s| s.id == other.id).unwrap().status,
        SubscriptionStatus::Active,
        "not paykey's: untouched"
    );
    assert!(w.app.payments.has_customer(&customer), "kept without --delete-customer");
    // nothing left to find
    for who in [Who::Sub(sam.id.clone()), Who::Name(sam.name.clone()), Who::Customer(customer.clone())] {
        assert_eq!(admin::find_user(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &who).await.unwrap(), None);
    }
    // the cancellation's webhook, arriving after: nothing written for the erased user
    event(&w, "evt_after", &sub).await;
    assert!(w.app.store.accounts().iter().all(|a| a.user_id != sam.id));
}

#[tokio::test]
async fn erase_with_delete_customer_deletes_it_and_a_free_user_needs_no_flags() {
    let w = World::tiered();
    let (sam, _) = subscriber(&w, "sam").await;
    let customer = w.app.store.accounts().into_iter().find(|a| a.user_id == sam.id).unwrap().customer_id.unwrap();
    let opts = EraseOptions { cancel_subscriptions: true, delete_customer: true };
    let done =
        admin::erase(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sam, opts).await.unwrap();
    assert_eq!(done.customer_deleted, Some(customer.clone()));
    assert!(!w.app.payments.has_customer(&customer));

    let fay = w.user("fay");
    flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &fay).await.unwrap();
    let done = admin::erase(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        &w.app.payments,
        w.app.ctx(),
        &fay,
        EraseOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((done.keys_deleted.len(), done.subscriptions_cancelled.len()), (1, 0));
}

#[tokio::test]
async fn users_are_found_by_name_email_sub_customer_and_key_id() {
    let w = World::tiered();
    let (sam, _) = subscriber(&w, "sam").await;
    w.app.users.set_email(&sam.name, "sam@example.com");
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == sam.id).unwrap();
    let w = &w;
    let find = |s: String| async move {
        let who = Who::parse(&s).unwrap();
        admin::find_user(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &who).await.unwrap()
    };
    for q in [
        "sam".to_string(),
        "sam@example.com".into(),
        sam.id.to_string(),
        a.customer_id.clone().unwrap().to_string(),
        format!("key:{}", a.api_key_id.clone().unwrap()),
    ] {
        assert_eq!(find(q.clone()).await.as_ref(), Some(&sam), "{q}");
    }
    assert_eq!(find("nobody".into()).await, None);
    // two users with one email address: refused, naming both
    let sue = w.user("sue");
    w.app.users.set_email(&sue.name, "sam@example.com");
    let who = Who::parse("sam@example.com").unwrap();
    let e = admin::find_user(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &who).await.unwrap_err();
    assert!(e.to_string().contains("sam, sue"), "{e}");
    // the report shows the whole user
    let r = admin::inspect(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sam).await.unwrap();
    let text = r.to_string();
    for part in ["sam@example.com", "plan PRO", "current enabled", PRO_PLAN, "trialing", "paykey's"] {
        assert!(text.contains(part), "{part:?} in\n{text}");
    }
}

#[tokio::test]
async fn a_suspension_or_a_comps_end_with_an_incomplete_subscription_recorded_still_acts() {
    let w = World::tiered();
    // a record whose subscription is `incomplete` (a status the webhooks make no change for)
    let (sam, sub) = subscriber(&w, "sam").await;
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Incomplete);
    event(&w, "evt_incomplete", &sub).await;
    admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam, Some("x".into())).await.unwrap();
    assert!(!key_of(&w, &sam).1, "suspended: disabled whatever the status");
    event(&w, "evt_incomplete_again", &sub).await;
    assert!(!key_of(&w, &sam).1, "a no-change event holds it too");
    admin::set_suspension(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam, None).await.unwrap();

    // a comp over it, ended by a webhook that arrives after its end (before the sweep)
    let until = w.clock.now() + days(1);
    let business = "BUSINESS".parse::<Plan>().unwrap();
    admin::set_comp(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &sam, Some((business, until, String::new())))
        .await
        .unwrap();
    assert_eq!(key_of(&w, &sam).2.as_deref(), Some(BUSINESS_PLAN));
    w.clock.advance(days(2));
    event(&w, "evt_after_comp", &sub).await;
    assert_eq!(
        key_of(&w, &sam).2.as_deref(),
        Some(FREE_PLAN),
        "the comp's end leaves the free plan, not the comp's tier"
    );
    assert_eq!(directory_plan(&w, &sam).await, "FREE");
}

#[tokio::test]
async fn a_comped_user_without_a_subscription_may_buy_one() {
    let w = World::tiered();
    let fay = w.user("fay");
    let until = w.clock.now() + days(30);
    admin::set_comp(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        w.app.ctx(),
        &fay,
        Some((Plan::PRO, until, String::new())),
    )
    .await
    .unwrap();
    let (id, key) = w.checkout_and_pay(&fay).await;
    w.complete(&id, &key).await.unwrap();
    let a = w.app.store.accounts().into_iter().find(|a| a.user_id == fay.id).unwrap();
    assert!(a.subscription_id.is_some() && a.comp.is_some(), "subscribed, comp kept for after");
    assert_eq!(key_of(&w, &fay).2.as_deref(), Some(PRO_PLAN));
}

#[tokio::test]
async fn erase_refuses_a_subscription_that_also_pays_for_another_product() {
    let w = World::tiered();
    let (sam, sub) = subscriber(&w, "sam").await;
    w.app.payments.update_subscription(&sub, |s| s.item_lookup_keys.push(Some("newsletter".into())));
    let before = (w.app.store.accounts(), w.app.keys.all());
    let opts = EraseOptions { cancel_subscriptions: true, delete_customer: false };
    let e = admin::erase(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &sam, opts)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("also pays for products paykey does not sell") && e.to_string().contains(sub.as_str()),
        "{e}"
    );
    assert_eq!((w.app.store.accounts(), w.app.keys.all()), before, "nothing changed");
    assert_eq!(w.app.payments.subscriptions()[0].status, SubscriptionStatus::Trialing, "not cancelled");
}

#[tokio::test]
async fn erase_removes_a_name_keyed_record_of_an_earlier_version_and_its_key_and_open_checkouts() {
    let w = World::tiered();
    let old = w.user("olds");
    // the earlier version's key (named after the user name) and its record
    let k = paykey::ports::KeyRegistry::create(&w.app.keys, "paykey-pro-olds").await.unwrap();
    paykey::ports::KeyRegistry::attach_to_plan(&w.app.keys, &k.id, PRO_PLAN).await.unwrap();
    let mut record = paykey::domain::AccountRecord::new(&old, w.clock.now());
    record.plan = Plan::PRO;
    record.api_key_id = Some(k.id.clone());
    w.app.store.add_legacy_account(record);
    let r = admin::inspect(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &old).await.unwrap();
    assert!(r.legacy && r.to_string().contains(&k.id), "{r}");
    // an open checkout, not paid
    let (session, _) = w.checkout(&old).await;
    let done = admin::erase(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        &w.app.payments,
        w.app.ctx(),
        &old,
        EraseOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(done.checkouts_expired, vec![session.clone()]);
    assert!(w.app.payments.checkout_expired(&session), "can no longer be paid");
    assert_eq!(done.keys_deleted, vec![k.id.clone()]);
    assert!(done.legacy_record_deleted);
    assert!(w.app.store.legacy_accounts().is_empty(), "the name's next holder adopts nothing");
    assert!(w.app.keys.all().iter().all(|x| x.id != k.id));
    // the name taken again: a fresh user, nothing of the erased one's
    let new = w.app.users.add_user(&old.name);
    let k2 = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &new).await.unwrap();
    assert_ne!(k2.api_key.id, k.id);
}

#[tokio::test]
async fn erase_sees_a_checkout_paid_but_not_fulfilled_yet() {
    let w = World::tiered();
    let nat = w.user("nat");
    // paid at Stripe; neither the redirect nor the webhook has come yet: no customer recorded
    let (session, _) = w.checkout_and_pay(&nat).await;
    assert!(w.app.store.accounts().iter().all(|a| a.user_id != nat.id));
    let e = admin::erase(
        &w.app.store,
        &w.app.keys,
        &w.app.users,
        &w.app.payments,
        w.app.ctx(),
        &nat,
        EraseOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("still pays for paykey"), "{e}");
    assert!(
        w.app.payments.subscriptions().iter().all(|s| s.status != SubscriptionStatus::Canceled),
        "nothing cancelled"
    );
    let opts = EraseOptions { cancel_subscriptions: true, delete_customer: false };
    let done =
        admin::erase(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &nat, opts).await.unwrap();
    assert_eq!(done.subscriptions_cancelled.len(), 1, "{done:?}");
    assert!(done.checkouts_expired.is_empty(), "a paid session is not open any more");
    let state = w.app.payments.get_checkout_state(&session);
    let sub = w.app.payments.subscriptions().into_iter().find(|s| Some(&s.id) == state.subscription.as_ref()).unwrap();
    assert_eq!(sub.status, SubscriptionStatus::Canceled, "the user is not charged for nothing");
    // the late webhook: nothing written for the erased user
    let e = StripeEvent {
        id: "evt_late_checkout".into(),
        kind: "checkout.session.completed".into(),
        subject: EventSubject::Checkout(session),
    };
    flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e)
        .await
        .unwrap();
    let name = w.app.settings.key_name(&nat);
    assert!(w.app.keys.all().iter().all(|k| k.name != name), "no key issued to an erased user");
}
