//! Thousands of seeded random histories on the in-memory ports: checkouts in several tabs,
//! payments, success redirects and webhooks (duplicated, reordered, concurrent), subscription
//! changes and cancellations, faults and crashes at any backend call, lease expiry. After each
//! history and a final settling (Stripe's retries: every paid session's and subscription's
//! webhook once more, leases expired), the invariants must hold:
//!
//! - the user's plan (directory and record) is what the kept subscription's current state grants;
//! - at most one enabled key per user, it is the recorded one, and it is in the usage plan
//!   exactly when the user is PRO;
//! - never two active subscriptions for one user.
//!
//! Each history runs on a single-threaded runtime with no real time, so a seed replays the
//! same history: `PAYKEY_SEED=<n> cargo test -p paykey --test interleavings` runs one seed.
//! `PAYKEY_SEEDS` sets how many (default 5000).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use paykey::adapters::memory::Fault;
use paykey::domain::{OneTimeKey, Plan, SessionId, User};
use paykey::flows::{self, desired_plan};
use paykey::ports::{EventSubject, KeyRegistry, StripeEvent, SubscriptionStatus, UserDirectory};
use support::{quiet_injected_crashes, Rng, World};

/// What the histories covered, reported with the result (so a test that stopped exercising
/// something would show it).
static PRO_AT_END: AtomicUsize = AtomicUsize::new(0);
static REFUNDED: AtomicUsize = AtomicUsize::new(0);
static CRASHED: AtomicUsize = AtomicUsize::new(0);
static CANCELLED: AtomicUsize = AtomicUsize::new(0);

const OPS: [&str; 12] = [
    "ddb.get_session",
    "stripe.get_checkout",
    "ddb.claim",
    "ddb.lock_account",
    "apigw.find_key",
    "stripe.get_subscription",
    "cognito.get_user",
    "apigw.create_key",
    "apigw.set_enabled",
    "apigw.attach",
    "cognito.set_plan",
    "ddb.fulfil",
];
const FAULTS: [Fault; 4] = [Fault::Before, Fault::After, Fault::CrashBefore, Fault::CrashAfter];

struct History {
    w: Arc<World>,
    users: Vec<User>,
    tabs: Vec<(User, SessionId, OneTimeKey)>,
    events: u64,
    log: Vec<String>,
}

impl History {
    fn paid(&self) -> Vec<(SessionId, OneTimeKey)> {
        self.tabs
            .iter()
            .filter(|(_, id, _)| self.w.app.payments.get_checkout_state(id).paid)
            .map(|(_, id, k)| (id.clone(), *k))
            .collect()
    }

    fn next_event(&mut self) -> String {
        self.events += 1;
        format!("evt_{}", self.events)
    }

    /// Runs one redirect or webhook in its own task: an injected crash kills only that task.
    async fn redirect(&mut self, id: SessionId, key: OneTimeKey) {
        let w = Arc::clone(&self.w);
        let r = tokio::spawn(async move { w.complete(&id, &key).await }).await;
        if r.is_err() {
            CRASHED.fetch_add(1, Ordering::Relaxed);
        }
        self.log.push(format!("  redirect → {:?}", r.as_ref().map(|r| r.as_ref().map_err(|e| e.code()))));
    }

    async fn webhook(&mut self, e: StripeEvent) {
        let w = Arc::clone(&self.w);
        let r = tokio::spawn(async move {
            flows::handle_stripe_event(&w.app.store, &w.app.keys, &w.app.users, &w.app.payments, w.app.ctx(), &e).await
        })
        .await;
        if r.is_err() {
            CRASHED.fetch_add(1, Ordering::Relaxed);
        }
        self.log.push(format!("  webhook → {:?}", r.as_ref().map(|r| r.as_ref().map_err(|e| e.code()))));
    }

    fn checkout_event(&mut self, id: &SessionId) -> StripeEvent {
        StripeEvent {
            id: self.next_event(),
            kind: "checkout.session.completed".into(),
            subject: EventSubject::Checkout(id.clone()),
        }
    }

    fn subscription_event(&mut self, sub: &paykey::domain::SubscriptionId, kind: &str) -> StripeEvent {
        StripeEvent {
            id: self.next_event(),
            kind: kind.into(),
            subject: EventSubject::Subscription { id: sub.clone(), customer: None },
        }
    }
}

async fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng::seeded(seed);
    let w = Arc::new(World::new());
    let n_users = 1 + rng.below(2);
    let users: Vec<User> = (0..n_users).map(|i| w.user(&format!("u{i}"))).collect();
    let mut h = History { w: Arc::clone(&w), users, tabs: Vec::new(), events: 0, log: Vec::new() };
    let steps = 6 + rng.below(12);
    for _ in 0..steps {
        match rng.below(9) {
            0 | 1 => {
                let u = rng.pick(&h.users).unwrap().clone();
                let (w1, u1) = (Arc::clone(&w), u.clone());
                let started = tokio::spawn(async move {
                    flows::start_checkout(
                        &w1.app.users,
                        &w1.app.payments,
                        &w1.app.store,
                        w1.app.ctx(),
                        &u1,
                        flows::CheckoutRequest::new("FMMailPro"),
                    )
                    .await
                })
                .await;
                match started {
                    Ok(Ok(s)) => {
                        let id = SessionId::parse(s.url.rsplit('/').next().unwrap()).unwrap();
                        let key = w.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap().one_time_key;
                        h.log.push(format!("checkout {} → {id}", u.name));
                        h.tabs.push((u, id, key));
                    }
                    Ok(Err(e)) => h.log.push(format!("checkout {} → {}", u.name, e.code())),
                    Err(_) => h.log.push(format!("checkout {} → crashed", u.name)),
                }
            }
            2 => {
                if let Some((_, id, _)) = rng.pick(&h.tabs).cloned() {
                    let paid = w.app.payments.pay(&id).is_some();
                    h.log.push(format!("pay {id} → {paid}"));
                }
            }
            3 => {
                if let Some((id, key)) = rng.pick(&h.paid()).cloned() {
                    h.log.push(format!("redirect {id}"));
                    h.redirect(id, key).await;
                }
            }
            4 => {
                if let Some((id, _)) = rng.pick(&h.paid()).cloned() {
                    let e = h.checkout_event(&id);
                    h.log.push(format!("webhook checkout {id} ({})", e.id));
                    h.webhook(e.clone()).await;
                    if rng.below(3) == 0 {
                        h.log.push("  delivered again".into());
                        h.webhook(e).await;
                    }
                }
            }
            5 => {
                let subs = w.app.payments.subscriptions();
                if let Some(s) = rng.pick(&subs).cloned() {
                    let status = [
                        SubscriptionStatus::Active,
                        SubscriptionStatus::PastDue,
                        SubscriptionStatus::Canceled,
                        SubscriptionStatus::Unpaid,
                    ][rng.below(4)]
                    .clone();
                    // Stripe never revives a cancelled subscription
                    if s.status != SubscriptionStatus::Canceled {
                        w.app.payments.update_subscription(&s.id, |x| x.status = status.clone());
                        h.log.push(format!("subscription {} → {}", s.id, status.as_str()));
                        if rng.below(2) == 0 {
                            let e = h.subscription_event(&s.id, "customer.subscription.updated");
                            h.webhook(e).await;
                        }
                    }
                }
            }
            6 => {
                // a fault or crash at a random call of the next redirect or webhook
                let op = OPS[rng.below(OPS.len())];
                let fault = FAULTS[rng.below(FAULTS.len())];
                w.meter.inject(op, fault);
                h.log.push(format!("inject {fault:?} at {op}"));
            }
            7 => {
                w.clock.advance(chrono::Duration::seconds(61));
                h.log.push("61 s pass (leases expire)".into());
            }
            _ => {
                // the redirect and the webhook of one session at the same time
                if let Some((id, key)) = rng.pick(&h.paid()).cloned() {
                    h.log.push(format!("redirect ∥ webhook {id}"));
                    let e = h.checkout_event(&id);
                    let (w1, w2, id1) = (Arc::clone(&w), Arc::clone(&w), id.clone());
                    let a = tokio::spawn(async move { w1.complete(&id1, &key).await });
                    let b = tokio::spawn(async move {
                        flows::handle_stripe_event(
                            &w2.app.store,
                            &w2.app.keys,
                            &w2.app.users,
                            &w2.app.payments,
                            w2.app.ctx(),
                            &e,
                        )
                        .await
                    });
                    let _ = tokio::join!(a, b);
                }
            }
        }
    }
    // Settle: no more faults; leases expire; Stripe's retries deliver every paid session's and
    // every subscription's webhook once more.
    w.meter.clear_faults();
    w.clock.advance(chrono::Duration::seconds(61));
    for (id, _) in h.paid() {
        let e = h.checkout_event(&id);
        h.webhook(e).await;
    }
    for s in w.app.payments.subscriptions() {
        let e = h.subscription_event(&s.id, "customer.subscription.updated");
        h.webhook(e).await;
    }
    check(&h).await.map_err(|e| format!("seed {seed}: {e}\nhistory:\n{}", h.log.join("\n")))
}

async fn check(h: &History) -> Result<(), String> {
    let w = &h.w;
    let now = w.app.clock.now();
    for s in w.app.payments.subscriptions() {
        if w.app.payments.charge(&s.id).is_some_and(|c| c.refunded > 0) {
            REFUNDED.fetch_add(1, Ordering::Relaxed);
        }
        if s.status == SubscriptionStatus::Canceled {
            CANCELLED.fetch_add(1, Ordering::Relaxed);
        }
    }
    for u in &h.users {
        let subs: Vec<_> = w
            .app
            .payments
            .subscriptions()
            .into_iter()
            .filter(|s| s.user_id.as_deref() == Some(u.id.as_str()))
            .collect();
        let active = subs.iter().filter(|s| s.status == SubscriptionStatus::Active).count();
        if active > 1 {
            return Err(format!("{}: {active} active subscriptions", u.name));
        }
        let account = w.app.store.accounts().into_iter().find(|a| a.user_id == u.id);
        let plan = w.app.users.get_user(&u.name).await.unwrap().unwrap().plan();
        // The plan the subscriptions grant: PRO if any grants it (there is at most one active).
        let granted = subs.iter().any(|s| {
            let since = account.as_ref().and_then(|a| a.past_due_since);
            desired_plan(&s.status, since, now, w.app.settings.past_due_grace) == Some(flows::Access::Paid)
        });
        let want = if granted { Plan::PRO } else { Plan::FREE };
        if !subs.is_empty() && plan != want {
            return Err(format!("{}: plan {plan} but the subscriptions grant {want}: {subs:?}", u.name));
        }
        if let Some(a) = &account {
            if !subs.is_empty() && a.plan != want {
                return Err(format!("{}: record says {} but the subscriptions grant {want}", u.name, a.plan));
            }
        }
        if plan == Plan::PRO {
            PRO_AT_END.fetch_add(1, Ordering::Relaxed);
        }
        let name = w.app.settings.key_name(u);
        let enabled: Vec<_> = w.app.keys.all().into_iter().filter(|k| k.name == name && k.enabled).collect();
        if enabled.len() > 1 {
            return Err(format!("{}: {} enabled keys", u.name, enabled.len()));
        }
        let in_plan = w.app.keys.plan_key_ids(paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap();
        match (plan == Plan::PRO, enabled.first(), account.as_ref().and_then(|a| a.api_key_id.clone())) {
            (true, Some(k), Some(recorded)) if k.id == recorded && in_plan.contains(&k.id) => {}
            (true, k, r) => return Err(format!("{}: PRO but key {k:?}, recorded {r:?}", u.name)),
            (false, None, _) => {}
            (false, Some(k), _) => return Err(format!("{}: FREE with an enabled key {}", u.name, k.id)),
        }
        for k in w.app.keys.all().into_iter().filter(|k| k.name == name && !k.enabled) {
            if in_plan.contains(&k.id) {
                return Err(format!("{}: disabled key {} still in the usage plan", u.name, k.id));
            }
        }
    }
    Ok(())
}

#[test]
fn seeded_random_histories_keep_the_money_invariants() {
    // Injected crashes are panics in their own tasks: keep their messages out of the output.
    quiet_injected_crashes();
    let seeds: Vec<u64> = match std::env::var("PAYKEY_SEED") {
        Ok(s) => vec![s.parse().expect("PAYKEY_SEED is a number")],
        Err(_) => (0..std::env::var("PAYKEY_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(5000)).collect(),
    };
    let mut failures = Vec::new();
    for seed in &seeds {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        if let Err(e) = rt.block_on(run(*seed)) {
            failures.push(e);
            if failures.len() >= 3 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke an invariant; replay with PAYKEY_SEED:\n\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
    println!(
        "# interleavings: {} seeded histories, invariants held; users PRO at the end {}, duplicate subscriptions refunded {}, subscriptions cancelled {}, redirects or webhooks crashed mid-way {}",
        seeds.len(),
        PRO_AT_END.load(Ordering::Relaxed),
        REFUNDED.load(Ordering::Relaxed),
        CANCELLED.load(Ordering::Relaxed),
        CRASHED.load(Ordering::Relaxed)
    );
    assert!(
        PRO_AT_END.load(Ordering::Relaxed) > 0
            && REFUNDED.load(Ordering::Relaxed) > 0
            && CRASHED.load(Ordering::Relaxed) > 0,
        "the histories cover upgrades, duplicates and crashes"
    );
}
