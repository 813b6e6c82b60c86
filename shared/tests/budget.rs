//! What one signed-in user can make paykey spend (issue 28): repeats of a checkout cost no
//! Stripe write, and each user has a budget on every route that spends Stripe writes or API
//! Gateway control-plane calls. On the in-memory ports with the deployed defaults (burst 5,
//! then one per 10 s; an open checkout handed out again for an hour); the same over HTTP on
//! the local stack in `infra/local/tests/e2e.rs`, and the DynamoDB budget on moto in
//! `contract.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use paykey::domain::Error;
use paykey::flows::{self, CheckoutRequest, Settings};
use paykey::ports::UserDirectory;
use support::World;

/// The deployed defaults (`Settings::new`), which the test `World` relaxes for other tests.
fn deployed(w: &mut World) {
    let d = Settings::new(support::APP_URL, support::API_URL);
    w.app.settings.user_budget = d.user_budget;
    w.app.settings.checkout_reuse = d.checkout_reuse;
}

fn stripe_writes(w: &World) -> usize {
    ["stripe.create_checkout", "stripe.expire_checkout", "stripe.create_portal", "stripe.cancel_duplicate"]
        .iter()
        .map(|op| w.meter.count(op))
        .sum()
}

async fn start(w: &World, user: &paykey::domain::User) -> Result<flows::CheckoutStarted, Error> {
    flows::start_checkout(
        &w.app.users,
        &w.app.payments,
        &w.app.store,
        w.app.ctx(),
        user,
        CheckoutRequest::new("FMMailPro"),
    )
    .await
}

#[test]
fn the_deployed_defaults_are_a_burst_of_five_then_one_per_ten_seconds_and_an_hour_of_reuse() {
    let d = Settings::new(support::APP_URL, support::API_URL);
    assert_eq!((d.user_budget.burst, d.user_budget.interval), (5, Duration::from_secs(10)));
    assert_eq!(d.checkout_reuse, Duration::from_secs(3600));
}

/// 50 requests of one user at once: 5 admitted (the burst), which create one session between
/// them and all answer its URL; 45 refused with how long to wait. One Stripe write.
#[tokio::test]
async fn one_users_fifty_checkout_requests_at_once_cost_one_stripe_write() {
    let mut w = World::new();
    deployed(&mut w);
    let alice = w.user("alice");
    w.meter.reset_calls();
    let w = Arc::new(w);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (w, alice) = (Arc::clone(&w), alice.clone());
            tokio::spawn(async move { start(&w, &alice).await })
        })
        .collect();
    let mut urls = std::collections::BTreeSet::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => {
                urls.insert(s.url);
            }
            Err(Error::TooManyRequests(wait)) => {
                assert!((1..=10).contains(&wait), "{wait}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    println!(
        "# one user, 50 checkout requests at once: {} answered, {refused} refused (429), {} Stripe writes",
        50 - refused,
        stripe_writes(&w)
    );
    assert_eq!(refused, 45, "the burst is 5");
    assert_eq!(urls.len(), 1, "every admitted request answers the one session");
    assert_eq!(stripe_writes(&w), 1);
    assert_eq!(w.app.store.sessions().len(), 1);
}

/// A repeat (another tab, a back button, a retry) after the first answered: the same URL, no
/// Stripe call but the price read (cached when deployed); once the budget refills, the same.
#[tokio::test]
async fn a_repeated_checkout_answers_the_open_session_without_calling_stripe() {
    let mut w = World::new();
    deployed(&mut w);
    let alice = w.user("alice");
    let first = start(&w, &alice).await.unwrap();
    w.meter.reset_calls();
    for _ in 0..4 {
        assert_eq!(start(&w, &alice).await.unwrap().url, first.url);
    }
    assert!(matches!(start(&w, &alice).await, Err(Error::TooManyRequests(10))));
    w.clock.advance(chrono::Duration::seconds(10));
    assert_eq!(start(&w, &alice).await.unwrap().url, first.url);
    // the only Stripe call is the price read, which the deployed price cache answers
    let stripe: Vec<_> =
        w.meter.calls().into_iter().filter(|c| c.starts_with("stripe.") && *c != "stripe.find_price").collect();
    assert_eq!(stripe, Vec::<&str>::new());
    assert_eq!(stripe_writes(&w), 0);
}

/// The two-tabs guarantee stays: one payable session per user and price. An old one (past the
/// reuse window) is replaced and expired at Stripe; a fulfilled one is never handed out again.
#[tokio::test]
async fn an_old_or_paid_open_session_is_replaced_and_expired() {
    let mut w = World::new();
    deployed(&mut w);
    let alice = w.user("alice");
    let (first, _) = w.checkout(&alice).await;
    w.clock.advance(chrono::Duration::seconds(3600));
    let (second, _) = w.checkout(&alice).await;
    assert_ne!(first, second, "an hour old: replaced");
    assert!(w.app.payments.checkout_expired(&first), "and expired at Stripe, so it cannot be paid");
    // fulfilled, and the user no longer on the tier (the subscription ended): a new purchase
    // gets a new session, never the completed one
    let bob = w.user("bob");
    let (id, key) = w.checkout_and_pay(&bob).await;
    w.complete(&id, &key).await.unwrap();
    w.app.users.set_plan(&bob.name, paykey::domain::Plan::FREE, None).await.unwrap();
    let again = start(&w, &bob).await.unwrap();
    assert!(!again.url.ends_with(id.as_str()), "a fulfilled session is never handed out again");
}

/// 50 different users at once are all served: the budget is per user.
#[tokio::test]
async fn fifty_users_at_once_are_all_served() {
    let mut w = World::new();
    deployed(&mut w);
    let users: Vec<_> = (0..50).map(|i| w.user(&format!("user{i:02}"))).collect();
    w.meter.reset_calls();
    let w = Arc::new(w);
    let tasks: Vec<_> = users
        .into_iter()
        .map(|u| {
            let w = Arc::clone(&w);
            tokio::spawn(async move { start(&w, &u).await })
        })
        .collect();
    let mut urls = std::collections::BTreeSet::new();
    for t in tasks {
        urls.insert(t.await.unwrap().expect("every user is served").url);
    }
    assert_eq!(urls.len(), 50);
    assert_eq!(w.meter.count("stripe.create_checkout"), 50);
}

/// The billing portal, the free key and the rotation: 50 requests of one user → the burst
/// (5) served, the rest refused before any Stripe or control-plane call.
#[tokio::test]
async fn the_portal_the_free_key_and_the_rotation_each_stop_at_the_burst() {
    let mut w = World::tiered();
    deployed(&mut w);
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    w.meter.reset_calls();
    let mut served = 0;
    for _ in 0..50 {
        match flows::open_billing_portal(&w.app.store, &w.app.users, &w.app.payments, w.app.ctx(), &alice).await {
            Ok(_) => served += 1,
            Err(Error::TooManyRequests(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(served, 5);
    assert_eq!(w.meter.count("stripe.create_portal"), 5, "one portal session per admitted request");

    let bob = w.user("bob");
    w.meter.reset_calls();
    let mut served = 0;
    for _ in 0..50 {
        match flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &bob).await {
            Ok(_) => served += 1,
            Err(Error::TooManyRequests(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(served, 5);
    let control_plane = w.meter.calls().iter().filter(|c| c.starts_with("apigw.")).count();
    w.meter.reset_calls();
    for _ in 0..10 {
        let r = flows::issue_free_key(&w.app.store, &w.app.keys, &w.app.users, w.app.ctx(), &bob).await;
        assert!(matches!(r, Err(Error::TooManyRequests(_))));
    }
    assert_eq!(w.meter.calls().iter().filter(|c| c.starts_with("apigw.")).count(), 0, "refused: no control-plane call");
    println!("# free key: 50 requests of one user → 5 served, {control_plane} control-plane calls in all");

    w.clock.advance(chrono::Duration::seconds(60));
    let mut served = 0;
    let mut refused = 0;
    for i in 0..50 {
        let req = flows::RotateRequest { grace_seconds: 0, request_id: Some(format!("r{i}")) };
        match flows::rotate_key(&w.app.store, &w.app.keys, w.app.ctx(), &bob, req).await {
            Ok(_) => served += 1,
            Err(Error::TooManyRequests(_)) => refused += 1,
            Err(Error::RotationLimited(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 45, "the budget refuses before the daily rotation limit is even read");
    assert_eq!(served, 3, "of the 5 admitted, the daily limit (3) allows 3");
}

/// A repeat while the open session's payment is being fulfilled (paykey's record ISSUING):
/// 503, no new payable session (it could be paid too), no Stripe write.
#[tokio::test]
async fn a_repeat_while_the_session_is_being_fulfilled_creates_nothing() {
    use paykey::ports::Checkouts;
    let mut w = World::new();
    deployed(&mut w);
    let alice = w.user("alice");
    let (id, _) = w.checkout_and_pay(&alice).await;
    let now = paykey::ports::Clock::now(&*w.clock);
    let claim = w.app.store.claim(&id, "tok-fulfilment", now, now + chrono::Duration::seconds(60)).await.unwrap();
    assert!(matches!(claim, paykey::ports::Claim::Acquired { .. }));
    w.meter.reset_calls();
    assert!(matches!(start(&w, &alice).await, Err(Error::FulfilmentInProgress)));
    assert_eq!(stripe_writes(&w), 0);
    assert_eq!(w.app.store.sessions().len(), 1);
}

/// Stripe refuses the create: the claim is given back, so the user's retry creates at once
/// instead of waiting for it to run out.
#[tokio::test]
async fn a_failed_create_gives_the_claim_back() {
    let mut w = World::new();
    deployed(&mut w);
    let alice = w.user("alice");
    w.meter.inject("stripe.create_checkout", paykey::adapters::memory::Fault::Before);
    assert!(start(&w, &alice).await.is_err());
    // (a claim left held would last 20 s on this clock: the retry would wait, then get 503)
    start(&w, &alice).await.expect("the retry creates the session");
    assert_eq!(w.meter.count("stripe.create_checkout"), 2);
}
