//! One contract suite for every port with a real backend, run against the in-memory adapters
//! and against the AWS adapters on moto_server, so the fakes provably behave like the real
//! APIs. The README's test command starts moto and sets `PAYKEY_MOTO_URL`; without it the
//! moto half fails (set `PAYKEY_SKIP_MOTO=1` to run only the in-memory half on purpose).

mod support;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use paykey::adapters::memory::{MemoryKeys, MemoryStore, MemoryUsers, Meter};
use paykey::domain::{
    AccountRecord, CheckoutRecord, CheckoutStatus, CustomerId, OneTimeKey, Plan, SessionId, SubscriptionId, User,
    UserId, UserName,
};
use paykey::ports::{
    AccountListing, AccountLock, Accounts, Budget, Budgets, Checkouts, Claim, Commit, KeyRegistry, OpenCheckout,
    OpenCheckouts, ProcessedEvents, UserDirectory,
};

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A user with a unique name and a fresh sub.
fn new_user(prefix: &str) -> User {
    User {
        id: UserId::parse(&uuid::Uuid::new_v4().to_string()).unwrap(),
        name: UserName::parse(&unique(prefix)).unwrap(),
    }
}

fn record(user: &User) -> CheckoutRecord {
    let t = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
    CheckoutRecord {
        session_id: SessionId::parse(&unique("cs_test_")).unwrap(),
        user_id: Some(user.id.clone()),
        user_name: user.name.clone(),
        one_time_key: OneTimeKey::new_random(),
        paid: false,
        status: CheckoutStatus::Pending,
        lease: None,
        created_at: t,
        updated_at: t,
        expires_at: t + chrono::Duration::days(30),
    }
}

fn account(user: &User, key: &str) -> AccountRecord {
    AccountRecord {
        user_id: user.id.clone(),
        user_name: user.name.clone(),
        plan: Plan::PRO,
        api_key_id: Some(key.to_string()),
        customer_id: Some(CustomerId::parse("cus_contract1").unwrap()),
        subscription_id: Some(SubscriptionId::parse("sub_contract1").unwrap()),
        subscription_status: Some("active".into()),
        cancel_at_period_end: true,
        period_end: Some(Utc.with_ymd_and_hms(2026, 12, 23, 12, 0, 0).unwrap()),
        past_due_since: None,
        trial_end: Some(Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()),
        previous_key_id: Some("oldkey1".into()),
        previous_key_until: Some(Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()),
        previous_key_remaining: Some(92),
        previous_key_period_start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1),
        recent_rotations: vec![
            Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 23, 11, 30, 0).unwrap(),
        ],
        rotation_answers: vec![paykey::domain::RotationAnswer {
            request_id: "req-1".into(),
            api_key_id: key.to_string(),
            previous_key_id: "oldkey1".into(),
            previous_key_until: Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
            at: Utc.with_ymd_and_hms(2026, 11, 23, 11, 30, 0).unwrap(),
        }],
        pending_key_work: Some(paykey::domain::KeyWork {
            plan: Some("plan-1".into()),
            period_start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1),
            targets: vec![paykey::domain::QuotaTarget {
                key_id: key.to_string(),
                remaining: 40,
                counted: vec![(key.to_string(), 3), ("oldkey1".into(), 7)],
            }],
            retire: vec!["oldkey0".into()],
        }),
        subscription_plan: Some(Plan::PRO),
        comp: Some(paykey::domain::Comp {
            plan: Plan::PRO,
            until: Utc.with_ymd_and_hms(2026, 12, 31, 0, 0, 0).unwrap(),
            granted_at: Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(),
            note: "support ticket 42".into(),
        }),
        suspension: Some(paykey::domain::Suspension {
            since: Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 1).unwrap(),
            reason: "abuse".into(),
        }),
        spend_cap: Some(paykey::domain::SpendCap {
            plan: Plan::PRO,
            requests: 2500,
            period_start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1),
        }),
        updated_at: Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 5).unwrap(),
    }
}

async fn session_store_contract<
    S: Checkouts
        + Accounts
        + AccountListing
        + ProcessedEvents
        + OpenCheckouts
        + Budgets
        + paykey::ports::admin::AccountErasure
        + paykey::ports::metering::UsageCursor,
>(
    store: &S,
) {
    // The usage reporter's cursor: none at first, then only forward.
    let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    assert_eq!(store.reported_through().await.unwrap(), None);
    store.set_reported_through(day(23)).await.unwrap();
    store.set_reported_through(day(21)).await.expect("an older day is not an error");
    assert_eq!(store.reported_through().await.unwrap(), Some(day(23)), "never back");
    store.set_reported_through(day(24)).await.unwrap();
    assert_eq!(store.reported_through().await.unwrap(), Some(day(24)));

    let alice = new_user("alice-");
    let r = record(&alice);
    let t = r.created_at;

    // put_new / get round-trip, and a second put of the same id is refused.
    assert_eq!(store.get(&r.session_id).await.unwrap(), None);
    store.put_new(&r).await.unwrap();
    assert_eq!(store.get(&r.session_id).await.unwrap().as_ref(), Some(&r));
    assert!(store.put_new(&r).await.is_err(), "put_new refuses an existing session");

    // claim: PENDING → ISSUING; a second claim within the lease is Busy.
    let lease_until = t + chrono::Duration::seconds(60);
    let Claim::Acquired { token, record: claimed } = store.claim(&r.session_id, "tok-1", t, lease_until).await.unwrap()
    else {
        panic!("first claim is acquired")
    };
    assert_eq!(token, "tok-1");
    assert_eq!(claimed.status, CheckoutStatus::Issuing);
    assert_eq!(claimed.lease, Some(("tok-1".to_string(), lease_until)));
    assert_eq!(
        store.claim(&r.session_id, "tok-2", t + chrono::Duration::seconds(59), lease_until).await.unwrap(),
        Claim::Busy
    );

    // after the lease expires another attempt takes over; the old token can no longer fulfil.
    let later = t + chrono::Duration::seconds(61);
    assert!(matches!(
        store.claim(&r.session_id, "tok-3", later, later + chrono::Duration::seconds(60)).await.unwrap(),
        Claim::Acquired { .. }
    ));
    let acct = account(&alice, "key123");
    assert_eq!(
        store.lock_account(&alice.id, "tok-3", later, later + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(None),
        "locking a user with no record yet"
    );
    assert_eq!(store.get_account(&alice.id).await.unwrap(), None, "a lock alone is no account record");
    assert_eq!(store.fulfil(&r.session_id, "tok-1", &acct, later).await.unwrap(), Commit::LeaseLost);
    assert_eq!(store.get_account(&alice.id).await.unwrap(), None, "a lost lease writes no account");

    // fulfil with the current token: session FULFILLED and account written together.
    assert_eq!(store.fulfil(&r.session_id, "tok-3", &acct, later).await.unwrap(), Commit::Done);
    let done = store.get(&r.session_id).await.unwrap().unwrap();
    assert_eq!(done.status, CheckoutStatus::Fulfilled);
    assert!(done.paid);
    assert_eq!(done.lease, None);
    assert_eq!(done.updated_at, later);
    assert_eq!(store.get_account(&alice.id).await.unwrap(), Some(acct.clone()));

    // a fulfilled session can be neither claimed nor fulfilled again.
    let much_later = later + chrono::Duration::hours(1);
    assert_eq!(store.claim(&r.session_id, "tok-4", much_later, much_later).await.unwrap(), Claim::AlreadyFulfilled);
    assert_eq!(store.fulfil(&r.session_id, "tok-1", &acct, much_later).await.unwrap(), Commit::LeaseLost);
    // the same transaction repeated (the SDK retrying after a lost answer) is recognised as done
    assert_eq!(store.fulfil(&r.session_id, "tok-3", &acct, much_later).await.unwrap(), Commit::Done);

    // unknown sessions
    let ghost = SessionId::parse(&unique("cs_test_ghost")).unwrap();
    assert_eq!(store.claim(&ghost, "t", t, t).await.unwrap(), Claim::Missing);
    assert_eq!(store.fulfil(&ghost, "t", &acct, t).await.unwrap(), Commit::LeaseLost);

    // fulfil released the account lock: it can be taken again at once.
    let t2 = much_later;
    assert_eq!(
        store.lock_account(&alice.id, "tok-5", t2, t2 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(Some(acct.clone()))
    );
    assert_eq!(store.lock_account(&alice.id, "tok-6", t2, t2).await.unwrap(), AccountLock::Busy);
    // put_account needs the lock and releases it; optional fields may be absent.
    let free = AccountRecord {
        plan: Plan::FREE,
        api_key_id: None,
        subscription_id: None,
        subscription_status: None,
        cancel_at_period_end: false,
        period_end: None,
        past_due_since: Some(t2),
        ..acct.clone()
    };
    assert_eq!(store.put_account(&free, "tok-6").await.unwrap(), Commit::LeaseLost);
    assert_eq!(store.get_account(&alice.id).await.unwrap(), Some(acct.clone()));
    // save_account writes under the lock and keeps it: another token still finds it busy, the
    // holder writes again (and releases it) with put_account.
    let saved = AccountRecord { pending_key_work: None, ..acct.clone() };
    let until = t2 + chrono::Duration::seconds(90);
    assert_eq!(store.save_account(&saved, "tok-6", until).await.unwrap(), Commit::LeaseLost);
    assert_eq!(store.save_account(&saved, "tok-5", until).await.unwrap(), Commit::Done);
    assert_eq!(store.get_account(&alice.id).await.unwrap(), Some(saved.clone()));
    assert_eq!(store.lock_account(&alice.id, "tok-6", t2, t2).await.unwrap(), AccountLock::Busy, "still locked");
    assert_eq!(
        store.lock_account(&alice.id, "tok-6", until - chrono::Duration::seconds(1), until).await.unwrap(),
        AccountLock::Busy,
        "until its new lease ends"
    );
    assert_eq!(store.put_account(&free, "tok-5").await.unwrap(), Commit::Done);
    assert_eq!(store.get_account(&alice.id).await.unwrap(), Some(free.clone()));
    assert_eq!(store.put_account(&free, "tok-5").await.unwrap(), Commit::LeaseLost, "the lock was released");

    // an expired lock is taken over; unlock by a stale token is a no-op; unlock frees.
    let t3 = t2 + chrono::Duration::seconds(1);
    assert!(matches!(store.lock_account(&alice.id, "tok-7", t3, t3).await.unwrap(), AccountLock::Acquired(_)));
    let t4 = t3 + chrono::Duration::seconds(1);
    assert!(matches!(
        store.lock_account(&alice.id, "tok-8", t4, t4 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(_)
    ));
    store.unlock_account(&alice.id, "tok-7").await.unwrap();
    assert_eq!(store.lock_account(&alice.id, "tok-9", t4, t4).await.unwrap(), AccountLock::Busy);
    store.unlock_account(&alice.id, "tok-8").await.unwrap();
    assert!(matches!(store.lock_account(&alice.id, "tok-9", t4, t4).await.unwrap(), AccountLock::Acquired(_)));
    store.unlock_account(&alice.id, "tok-9").await.unwrap();

    // the account is found by its Stripe customer
    let cus = CustomerId::parse(&unique("cus_")).unwrap();
    let bob = new_user("bob-");
    let bobs = AccountRecord {
        user_id: bob.id.clone(),
        user_name: bob.name.clone(),
        customer_id: Some(cus.clone()),
        ..free.clone()
    };
    assert!(matches!(
        store.lock_account(&bob.id, "b", t4, t4 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(None)
    ));
    assert_eq!(store.put_account(&bobs, "b").await.unwrap(), Commit::Done);
    assert_eq!(store.find_account_by_customer(&cus).await.unwrap(), Some(bobs));
    assert_eq!(store.find_account_by_customer(&CustomerId::parse(&unique("cus_")).unwrap()).await.unwrap(), None);

    // listing returns records, not lock-only items
    let carol = new_user("carol-");
    assert!(matches!(store.lock_account(&carol.id, "c", t4, t4).await.unwrap(), AccountLock::Acquired(None)));
    let all = store.list_accounts().await.unwrap();
    assert!(all.iter().any(|a| a.user_id == alice.id) && all.iter().any(|a| a.user_id == bob.id));
    assert!(!all.iter().any(|a| a.user_id == carol.id));

    let t5 = t4 + chrono::Duration::seconds(1);
    // a failed attempt gives the session's lease back (only with its own token)
    let r2 = record(&carol);
    store.put_new(&r2).await.unwrap();
    assert!(matches!(
        store.claim(&r2.session_id, "tok-a", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
        Claim::Acquired { .. }
    ));
    store.release_claim(&r2.session_id, "tok-other").await.unwrap();
    assert_eq!(
        store.get(&r2.session_id).await.unwrap().unwrap().status,
        CheckoutStatus::Issuing,
        "another token releases nothing"
    );
    store.release_claim(&r2.session_id, "tok-a").await.unwrap();
    let released = store.get(&r2.session_id).await.unwrap().unwrap();
    assert_eq!((released.status, released.lease), (CheckoutStatus::Pending, None));
    assert!(
        matches!(
            store.claim(&r2.session_id, "tok-b", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
            Claim::Acquired { .. }
        ),
        "claimable again at once"
    );
    store.release_claim(&ghost, "tok-b").await.unwrap();

    // a claim or lock repeated with the same token (the SDK retrying a request whose first
    // attempt succeeded but whose answer was lost) is recognised as ours, not Busy
    assert!(matches!(
        store.claim(&r2.session_id, "tok-b", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
        Claim::Acquired { .. }
    ));
    assert!(matches!(
        store.lock_account(&carol.id, "tok-b", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(None)
    ));
    assert!(matches!(
        store.lock_account(&carol.id, "tok-b", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(None)
    ));
    assert_eq!(store.lock_account(&carol.id, "tok-c", t5, t5).await.unwrap(), AccountLock::Busy);
    store.unlock_account(&carol.id, "tok-b").await.unwrap();

    // one open checkout per user and price: each new one returns the one it replaces
    let price = unique("price_");
    let (s1, s2) = (SessionId::parse(&unique("cs_test_")).unwrap(), SessionId::parse(&unique("cs_test_")).unwrap());
    let until = t5 + chrono::Duration::hours(24);
    let open = |id: &SessionId| OpenCheckout {
        session_id: id.clone(),
        url: format!("https://checkout.example/{id}"),
        created_at: t5,
        open_until: until,
    };
    assert_eq!(store.open_checkout(&carol.id, &price).await.unwrap(), None);
    let secs = |n| chrono::Duration::seconds(n);
    // the claim: one holder at a time, its own token again (a retried call), anyone once it
    // ends; and only while the recorded checkout is the one the caller read
    assert!(store.claim_open_checkout(&carol.id, &price, None, "c1", t5, t5 + secs(20)).await.unwrap());
    assert!(!store.claim_open_checkout(&carol.id, &price, None, "c2", t5, t5 + secs(20)).await.unwrap());
    assert!(store.claim_open_checkout(&carol.id, &price, None, "c1", t5, t5 + secs(20)).await.unwrap());
    assert_eq!(store.open_checkout(&carol.id, &price).await.unwrap(), None, "a claim is no open checkout");
    let later = t5 + secs(21);
    assert!(
        !store.claim_open_checkout(&carol.id, &price, Some(&s1), "c3", later, later + secs(20)).await.unwrap(),
        "not what was read"
    );
    assert!(store.claim_open_checkout(&carol.id, &price, None, "c3", later, later + secs(20)).await.unwrap());
    assert_eq!(store.replace_open_checkout(&carol.id, &price, &open(&s1)).await.unwrap(), None);
    assert_eq!(store.open_checkout(&carol.id, &price).await.unwrap(), Some(open(&s1)));
    // recording one ended the claim; a caller that read before it was recorded cannot claim
    assert!(
        !store.claim_open_checkout(&carol.id, &price, None, "c4", later, later + secs(20)).await.unwrap(),
        "read before s1"
    );
    assert!(store.claim_open_checkout(&carol.id, &price, Some(&s1), "c4", later, later + secs(20)).await.unwrap());
    assert_eq!(store.open_checkout(&carol.id, &price).await.unwrap(), Some(open(&s1)), "a claim keeps the open one");
    // given back, another may claim at once
    store.release_open_checkout(&carol.id, &price, "c4").await.unwrap();
    store.release_open_checkout(&carol.id, &price, "c-none").await.unwrap();
    assert!(store.claim_open_checkout(&carol.id, &price, Some(&s1), "c5", later, later + secs(20)).await.unwrap());
    assert_eq!(store.replace_open_checkout(&carol.id, &price, &open(&s2)).await.unwrap(), Some(s1.clone()));
    assert_eq!(
        store.open_checkout(&carol.id, &price).await.unwrap(),
        Some(open(&s2)),
        "past its 24 hours too: the caller decides"
    );
    assert_eq!(store.replace_open_checkout(&carol.id, &unique("price_"), &open(&s1)).await.unwrap(), None, "per price");
    assert_eq!(store.replace_open_checkout(&bob.id, &price, &open(&s1)).await.unwrap(), None, "per user");

    // request budgets (GCRA): a burst of 3, then one per 10 s; an idle bucket starts over
    let budget = Budget { burst: 3, interval: std::time::Duration::from_secs(10) };
    let bucket = unique("checkout#");
    for _ in 0..3 {
        assert_eq!(store.spend(&bucket, budget, t5).await.unwrap(), None);
    }
    assert_eq!(store.spend(&bucket, budget, t5).await.unwrap(), Some(std::time::Duration::from_secs(10)));
    let t6 = t5 + chrono::Duration::seconds(4);
    assert_eq!(
        store.spend(&bucket, budget, t6).await.unwrap(),
        Some(std::time::Duration::from_secs(6)),
        "nothing spent by a refusal"
    );
    let t7 = t5 + chrono::Duration::seconds(10);
    assert_eq!(store.spend(&bucket, budget, t7).await.unwrap(), None);
    assert_eq!(store.spend(&bucket, budget, t7).await.unwrap(), Some(std::time::Duration::from_secs(10)));
    assert_eq!(store.spend(&unique("checkout#"), budget, t7).await.unwrap(), None, "per bucket");
    let idle = t7 + chrono::Duration::hours(1);
    for _ in 0..3 {
        assert_eq!(store.spend(&bucket, budget, idle).await.unwrap(), None, "idle: a whole burst again, not more");
    }
    assert!(store.spend(&bucket, budget, idle).await.unwrap().is_some());

    // processed events are remembered
    let evt = unique("evt_");
    assert!(!store.event_seen(&evt).await.unwrap());
    store.mark_event(&evt, "invoice.paid", t4 + chrono::Duration::days(30)).await.unwrap();
    assert!(store.event_seen(&evt).await.unwrap());
    assert!(!store.event_seen(&unique("evt_")).await.unwrap());

    // an erasure deletes a record (comp and suspension round-tripped above) only under its lock
    let eve = new_user("eve-");
    let t5 = t4 + chrono::Duration::days(1);
    assert!(matches!(
        store.lock_account(&eve.id, "tok-e", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(None)
    ));
    let eve_record = AccountRecord { customer_id: None, ..account(&eve, "keyeve1") };
    assert_eq!(store.put_account(&eve_record, "tok-e").await.unwrap(), Commit::Done);
    assert_eq!(store.get_account(&eve.id).await.unwrap().as_ref(), Some(&eve_record), "comp and suspension kept");
    assert!(matches!(
        store.lock_account(&eve.id, "tok-f", t5, t5 + chrono::Duration::seconds(60)).await.unwrap(),
        AccountLock::Acquired(Some(_))
    ));
    assert_eq!(store.delete_account(&eve.id, "tok-other").await.unwrap(), Commit::LeaseLost);
    assert!(store.get_account(&eve.id).await.unwrap().is_some(), "not deleted without the lock");
    assert_eq!(store.delete_account(&eve.id, "tok-f").await.unwrap(), Commit::Done);
    assert_eq!(store.get_account(&eve.id).await.unwrap(), None);
    assert!(store.list_accounts().await.unwrap().iter().all(|a| a.user_id != eve.id));
}

/// How the registry treats a key attached to a second usage plan of the same stage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SecondPlan {
    /// Refused, as API Gateway does (one usage plan per key and stage).
    Refused,
    /// Accepted: moto 5.2.5 does (measured), so on moto this is asserted as moto's difference.
    AcceptedLikeMoto,
}

/// `plans`: two usage plans on one stage (two tiers).
async fn key_registry_contract<K: KeyRegistry + paykey::ports::admin::KeyDeletion>(
    keys: &K,
    plans: [&str; 2],
    second_plan: SecondPlan,
) {
    let [a, b] = plans;
    let name = unique("paykey-pro-contract-");
    assert!(keys.find_by_name(&name).await.unwrap().is_empty());
    let before = keys.count_keys().await.unwrap();
    let k = keys.create(&name).await.unwrap();
    assert_eq!(k.name, name);
    assert!(k.enabled);
    // exact-name lookup: a longer name sharing the prefix is not returned
    let longer = keys.create(&format!("{name}-other")).await.unwrap();
    // (moto's store is shared by the suite's tests running at once: at least the two new keys)
    assert!(keys.count_keys().await.unwrap() >= before + 2, "every key counts");
    assert_eq!(keys.find_by_name(&name).await.unwrap(), vec![k.clone()]);
    assert_eq!(keys.get(&k.id).await.unwrap(), Some(k.clone()));
    assert_eq!(keys.get("doesnotexist").await.unwrap(), None);

    let value = keys.key_value(&k.id).await.unwrap().unwrap();
    assert!(value.len() >= 20, "a real key value");
    assert_eq!(keys.key_value(&k.id).await.unwrap(), Some(value), "the same value every time");
    assert_ne!(keys.key_value(&longer.id).await.unwrap(), keys.key_value(&k.id).await.unwrap());
    assert_eq!(keys.key_value("doesnotexist").await.unwrap(), None);

    // attach is idempotent; detach removes; detaching again is fine.
    assert!(keys.plans_of(&k.id).await.unwrap().is_empty(), "a new key is in no plan");
    keys.attach_to_plan(&k.id, a).await.unwrap();
    keys.attach_to_plan(&k.id, a).await.unwrap();
    let in_plan = keys.plan_key_ids(a).await.unwrap();
    assert_eq!(in_plan.iter().filter(|id| **id == k.id).count(), 1);
    assert!(!in_plan.contains(&longer.id));
    assert_eq!(keys.plans_of(&k.id).await.unwrap(), vec![a.to_string()]);
    assert!(keys.plans_of(&longer.id).await.unwrap().is_empty());

    // a second plan of the same stage while in the first
    let second = keys.attach_to_plan(&k.id, b).await;
    match second_plan {
        SecondPlan::Refused => {
            assert!(second.is_err(), "one usage plan per key and stage");
            assert_eq!(keys.plans_of(&k.id).await.unwrap(), vec![a.to_string()], "nothing changed");
        }
        SecondPlan::AcceptedLikeMoto => {
            second.unwrap();
            assert_eq!(keys.plans_of(&k.id).await.unwrap().len(), 2, "moto keeps the key in both plans");
            keys.detach_from_plan(&k.id, b).await.unwrap();
        }
    }

    // the move between tiers: detach from the old plan, then attach to the new one
    keys.detach_from_plan(&k.id, a).await.unwrap();
    assert!(!keys.plan_key_ids(a).await.unwrap().contains(&k.id));
    assert!(keys.plans_of(&k.id).await.unwrap().is_empty());
    keys.detach_from_plan(&k.id, a).await.unwrap();
    keys.attach_to_plan(&k.id, b).await.unwrap();
    assert_eq!(keys.plans_of(&k.id).await.unwrap(), vec![b.to_string()]);
    assert!(keys.plan_key_ids(b).await.unwrap().contains(&k.id));
    assert!(!keys.plan_key_ids(a).await.unwrap().contains(&k.id));
    keys.detach_from_plan(&k.id, b).await.unwrap();

    // enable / disable
    keys.set_enabled(&k.id, false).await.unwrap();
    assert!(!keys.get(&k.id).await.unwrap().unwrap().enabled);
    assert!(!keys.find_by_name(&name).await.unwrap()[0].enabled);
    keys.set_enabled(&k.id, true).await.unwrap();
    assert!(keys.get(&k.id).await.unwrap().unwrap().enabled);
    assert!(keys.set_enabled("doesnotexist", true).await.is_err());

    // an operator's erasure: deleted, gone from its plan, and deleting it again is no error
    keys.delete_key(&longer.id).await.unwrap();
    assert_eq!(keys.get(&longer.id).await.unwrap(), None);
    assert!(keys.find_by_name(&format!("{name}-other")).await.unwrap().is_empty());
    // (whether a deleted key leaves its plan is not relied on — moto 5.2.5 keeps the association:
    // the erasure detaches a key from its plans before deleting it)
    keys.delete_key(&longer.id).await.unwrap();
}

async fn user_directory_contract<U: UserDirectory>(users: &U, existing: &UserName) {
    let sub = users.get_user(existing).await.unwrap().expect("the existing user").sub;
    assert!(sub.is_some(), "the directory names the user's immutable sub");
    let ghost = UserName::parse(&unique("ghost-")).unwrap();
    assert_eq!(users.get_user(&ghost).await.unwrap(), None);
    assert!(users.set_plan(&ghost, Plan::PRO, None).await.is_err(), "unknown user");

    let fresh = users.get_user(existing).await.unwrap().unwrap();
    assert_eq!(fresh.plan, None);
    assert_eq!(fresh.plan(), Plan::FREE);
    assert_eq!(fresh.customer_id, None);

    let cus = CustomerId::parse("cus_contractABC").unwrap();
    users.set_plan(existing, Plan::PRO, Some(&cus)).await.unwrap();
    let pro = users.get_user(existing).await.unwrap().unwrap();
    assert_eq!(pro.plan, Some(Plan::PRO));
    assert_eq!(pro.customer_id, Some(cus.clone()));

    // downgrading keeps the customer id
    users.set_plan(existing, Plan::FREE, None).await.unwrap();
    let free = users.get_user(existing).await.unwrap().unwrap();
    assert_eq!(free.plan, Some(Plan::FREE));
    assert_eq!(free.customer_id, Some(cus.clone()));

    // found by the customer attribute (records of the Python version carry no customer id)
    assert_eq!(users.find_by_customer(&cus).await.unwrap(), Some(existing.clone()));
    let other = CustomerId::parse("cus_contractNobody").unwrap();
    assert_eq!(users.find_by_customer(&other).await.unwrap(), None);
}

// ----------------------------------------------------------------------------------------
// In memory

#[tokio::test]
async fn memory_session_store_meets_the_contract() {
    session_store_contract(&MemoryStore::new(Meter::new())).await;
}

#[tokio::test]
async fn memory_key_registry_meets_the_contract() {
    key_registry_contract(&MemoryKeys::new(Meter::new()), ["plan-a", "plan-b"], SecondPlan::Refused).await;
}

#[tokio::test]
async fn memory_user_directory_meets_the_contract() {
    let users = MemoryUsers::new(Arc::new(Meter::default()));
    let u = UserName::parse("contract-user").unwrap();
    users.add_user(&u);
    user_directory_contract(&users, &u).await;
}

// ----------------------------------------------------------------------------------------
// On moto_server

mod moto {
    use super::*;

    /// Today's catalog (one PRO tier) on a usage plan moto made.
    fn with_pro_plan(mut s: paykey::flows::Settings, plan: &str) -> paykey::flows::Settings {
        s.catalog =
            paykey::domain::Catalog::legacy(Some(plan), &[paykey::domain::LookupKey::parse("FMMailPro").unwrap()]);
        s
    }
    use paykey::adapters::aws::{ApiGatewayKeys, CognitoUsers, DynamoStore};
    use paykey::config::Tables;
    pub use support::moto::*;

    #[tokio::test]
    async fn dynamodb_session_store_meets_the_contract() {
        let Some(m) = Moto::connect().await else {
            return;
        };
        let tables = m.create_tables().await;
        session_store_contract(&DynamoStore::new(&m.config, Tables { sessions: tables.0, api_keys: tables.1 })).await;
    }

    #[tokio::test]
    async fn api_gateway_key_registry_meets_the_contract() {
        let Some(m) = Moto::connect().await else {
            return;
        };
        let plans = m.create_usage_plans(2).await;
        key_registry_contract(
            &ApiGatewayKeys::new(&m.config),
            [plans[0].as_str(), plans[1].as_str()],
            SecondPlan::AcceptedLikeMoto,
        )
        .await;
    }

    #[tokio::test]
    async fn cognito_user_directory_meets_the_contract() {
        let Some(m) = Moto::connect().await else {
            return;
        };
        let pool = m.create_user_pool().await;
        let u = UserName::parse(&unique("contract-user-")).unwrap();
        m.create_user(&pool, &u).await;
        user_directory_contract(&CognitoUsers::new(&m.config, pool), &u).await;
    }

    /// DynamoDB cancels a transaction that conflicts with another one in flight on the same item
    /// (`TransactionConflict`); moto never does, so this interceptor turns the first `conflicts`
    /// TransactWriteItems calls into that answer: the request is re-aimed at DescribeLimits (it
    /// writes nothing) and the response replaced by the error DynamoDB sends.
    #[derive(Debug)]
    struct Conflicts {
        left: std::sync::atomic::AtomicUsize,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    const CONFLICT: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]","CancellationReasons":[{"Code":"None"},{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"}]}"#;

    impl Conflicts {
        fn strikes(&self, target: Option<&str>) -> bool {
            use std::sync::atomic::Ordering::SeqCst;
            if !target.is_some_and(|t| t.ends_with(".TransactWriteItems")) {
                return false;
            }
            self.seen.fetch_add(1, SeqCst);
            self.left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
        }
    }

    impl aws_sdk_dynamodb::config::Intercept for Conflicts {
        fn name(&self) -> &'static str {
            "Conflicts"
        }
        fn modify_before_transmit(
            &self,
            ctx: &mut aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
            _: &aws_sdk_dynamodb::config::RuntimeComponents,
            cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
        ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
            let req = ctx.request_mut();
            if self.strikes(req.headers().get("x-amz-target")) {
                req.headers_mut().insert("x-amz-target", "DynamoDB_20120810.DescribeLimits");
                cfg.interceptor_state().store_put(Struck);
            }
            Ok(())
        }
        fn modify_before_deserialization(
            &self,
            ctx: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
            _: &aws_sdk_dynamodb::config::RuntimeComponents,
            cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
        ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
            if cfg.load::<Struck>().is_some() {
                cfg.interceptor_state().unset::<Struck>();
                let resp = ctx.response_mut();
                *resp.status_mut() = 400u16.try_into()?;
                *resp.body_mut() = aws_smithy_types::body::SdkBody::from(CONFLICT);
            }
            Ok(())
        }
    }

    #[derive(Debug, Clone)]
    struct Struck;
    impl aws_smithy_types::config_bag::Storable for Struck {
        type Storer = aws_smithy_types::config_bag::StoreReplace<Self>;
    }

    async fn store_with_conflicts(m: &Moto, conflicts: usize) -> (DynamoStore, Arc<std::sync::atomic::AtomicUsize>) {
        let tables = m.create_tables().await;
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let interceptor = Conflicts { left: conflicts.into(), seen: Arc::clone(&seen) };
        let conf = aws_sdk_dynamodb::config::Builder::from(&m.config).interceptor(interceptor).build();
        let client = aws_sdk_dynamodb::Client::from_conf(conf);
        (DynamoStore::from_client(client, Tables { sessions: tables.0, api_keys: tables.1 }), seen)
    }

    /// Claims a fresh session and locks its user's record: ready to `fulfil` with "tok".
    async fn ready_to_fulfil(store: &DynamoStore) -> (CheckoutRecord, AccountRecord) {
        let u = new_user("conflict-");
        let r = record(&u);
        let t = r.created_at;
        store.put_new(&r).await.unwrap();
        assert!(matches!(
            store.claim(&r.session_id, "tok", t, t + chrono::Duration::seconds(60)).await.unwrap(),
            Claim::Acquired { .. }
        ));
        let until = t + chrono::Duration::seconds(60);
        assert_eq!(store.lock_account(&u.id, "tok", t, until).await.unwrap(), AccountLock::Acquired(None));
        (r, account(&u, "conflictkey"))
    }

    #[tokio::test]
    async fn a_fulfilment_transaction_cancelled_for_a_conflict_is_tried_again() {
        let Some(m) = Moto::connect().await else {
            return;
        };
        let (store, seen) = store_with_conflicts(&m, 2).await;
        let (r, acct) = ready_to_fulfil(&store).await;
        assert_eq!(store.fulfil(&r.session_id, "tok", &acct, r.created_at).await.unwrap(), Commit::Done);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3, "two conflicts, then the commit");
        assert_eq!(store.get(&r.session_id).await.unwrap().unwrap().status, CheckoutStatus::Fulfilled);
        assert_eq!(store.get_account(&acct.user_id).await.unwrap().unwrap().api_key_id.as_deref(), Some("conflictkey"));
    }

    #[tokio::test]
    async fn a_transaction_that_keeps_conflicting_fails_and_writes_nothing() {
        let Some(m) = Moto::connect().await else {
            return;
        };
        let (store, seen) = store_with_conflicts(&m, usize::MAX).await;
        let (r, acct) = ready_to_fulfil(&store).await;
        let e = store.fulfil(&r.session_id, "tok", &acct, r.created_at).await.unwrap_err();
        assert!(e.to_string().contains("TransactWriteItems"), "{e}");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4, "four attempts");
        assert_eq!(store.get(&r.session_id).await.unwrap().unwrap().status, CheckoutStatus::Issuing);
        assert_eq!(store.get_account(&acct.user_id).await.unwrap(), None);
    }

    /// ListUsers answers 60 users a page at most: the lookup by customer follows the pages.
    #[tokio::test]
    async fn cognito_finds_a_user_by_customer_beyond_the_first_page() {
        let Some(m) = Moto::connect().await else {
            return;
        };
        let pool = m.create_user_pool().await;
        let mut last = None;
        for n in 0..65 {
            let u = UserName::parse(&format!("page-user-{n:02}")).unwrap();
            m.create_user(&pool, &u).await;
            last = Some(u);
        }
        let last = last.unwrap();
        let users = CognitoUsers::new(&m.config, pool);
        let cus = CustomerId::parse("cus_pagedXYZ").unwrap();
        assert_eq!(users.find_by_customer(&cus).await.unwrap(), None);
        users.set_plan(&last, Plan::PRO, Some(&cus)).await.unwrap();
        assert_eq!(users.find_by_customer(&cus).await.unwrap(), Some(last));
    }

    /// The whole fulfilment flow on the AWS adapters (Stripe in memory): twenty concurrent
    /// verifications of one paid session and its webhooks (checkout.session.completed three
    /// times, customer.subscription.created, invoice.paid) end in one key, one plan association,
    /// user PRO. A caller that gave up waiting (the redirect's pending page) is allowed; the
    /// state at the end is not negotiable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_fulfilment_on_moto_issues_exactly_one_key() {
        use paykey::adapters::memory::{MemoryPayments, SequentialIds};
        use paykey::flows::{self, CheckoutRequest, Completion, Settings};
        use paykey::handlers::App;

        let Some(m) = Moto::connect().await else {
            return;
        };
        let (sessions, api_keys) = m.create_tables().await;
        let plan = m.create_usage_plan().await;
        let pool = m.create_user_pool().await;
        let name = UserName::parse(&unique("moto-alice-")).unwrap();
        m.create_user(&pool, &name).await;
        let payments = MemoryPayments::new(Meter::new());
        payments.add_price("FMMailPro", 980, "jpy");
        let app = Arc::new(App {
            store: DynamoStore::new(&m.config, Tables { sessions, api_keys }),
            keys: ApiGatewayKeys::new(&m.config),
            users: CognitoUsers::new(&m.config, pool),
            payments,
            clock: Arc::new(paykey::ports::SystemClock),
            ids: Arc::new(SequentialIds::default()),
            settings: with_pro_plan(Settings::new("https://app.example.com", "https://api.example.com"), &plan),
        });
        let user = User { id: app.users.get_user(&name).await.unwrap().unwrap().sub.expect("moto gives a sub"), name };
        let started = flows::start_checkout(
            &app.users,
            &app.payments,
            &app.store,
            app.ctx(),
            &user,
            CheckoutRequest::new("FMMailPro"),
        )
        .await
        .unwrap();
        let id = SessionId::parse(started.url.rsplit('/').next().unwrap()).unwrap();
        let key = app.store.get(&id).await.unwrap().unwrap().one_time_key;
        app.payments.pay(&id).unwrap();

        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (app, id) = (Arc::clone(&app), id.clone());
            tasks.push(tokio::spawn(async move {
                flows::complete_checkout(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &id, Some(&key))
                    .await
            }));
        }
        let sub = app.payments.get_checkout_state(&id).subscription.unwrap();
        let events = [
            ("evt_moto_c1", "checkout.session.completed", paykey::ports::EventSubject::Checkout(id.clone())),
            ("evt_moto_c2", "checkout.session.completed", paykey::ports::EventSubject::Checkout(id.clone())),
            ("evt_moto_c3", "checkout.session.completed", paykey::ports::EventSubject::Checkout(id.clone())),
            (
                "evt_moto_s1",
                "customer.subscription.created",
                paykey::ports::EventSubject::Subscription { id: sub.clone(), customer: None },
            ),
            (
                "evt_moto_i1",
                "invoice.paid",
                paykey::ports::EventSubject::Invoice { subscription: Some(sub.clone()), customer: None },
            ),
        ];
        let mut hooks = Vec::new();
        for (eid, kind, subject) in events {
            let app = Arc::clone(&app);
            let e = paykey::ports::StripeEvent { id: eid.into(), kind: kind.into(), subject };
            hooks.push(tokio::spawn(async move {
                flows::handle_stripe_event(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &e).await
            }));
        }
        let (mut issued, mut pending) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(Completion::Issued { .. }) => issued += 1,
                Ok(Completion::AlreadyFulfilled) => {}
                Err(paykey::Error::FulfilmentInProgress) => pending += 1,
                other => panic!("{other:?}"),
            }
        }
        for h in hooks {
            match h.await.unwrap() {
                Ok(_) | Err(paykey::Error::FulfilmentInProgress) => {}
                Err(e) => panic!("{e}"),
            }
        }
        println!("# moto: 20 verifications + 5 webhooks: {issued} issued, {pending} gave up waiting");
        assert!(issued <= 1, "{issued}");
        // Whatever gave up, a retry (a refresh, Stripe's redelivery) finishes it.
        assert!(flows::complete_checkout(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &id, Some(&key))
            .await
            .unwrap()
            .is_success());
        let name = app.settings.key_name(&user);
        let keys = app.keys.find_by_name(&name).await.unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let in_plan = app.keys.plan_key_ids(&plan).await.unwrap();
        assert_eq!(in_plan, vec![keys[0].id.clone()]);
        let profile = app.users.get_user(&user.name).await.unwrap().unwrap();
        assert_eq!(profile.plan, Some(Plan::PRO));
        assert!(profile.customer_id.is_some());
        assert_eq!(app.store.get(&id).await.unwrap().unwrap().status, CheckoutStatus::Fulfilled);
        assert_eq!(app.store.get_account(&user.id).await.unwrap().unwrap().api_key_id, Some(keys[0].id.clone()));
    }

    /// Plans on the AWS adapters (Stripe in memory): a free key on the FREE plan, subscribing
    /// moves it to PRO, a plan change to BUSINESS, cancelling back to FREE; after each step the
    /// key is in exactly one of the three usage plans as moto reports them (GetUsagePlans by key
    /// and GetUsagePlanKeys per plan). moto would accept a key in two plans of one stage, so
    /// this checks the end state the flows leave, not that AWS would have accepted each call.
    #[tokio::test]
    async fn plan_moves_on_moto_leave_the_one_key_in_exactly_the_tier_s_plan() {
        use paykey::adapters::memory::{MemoryPayments, SequentialIds};
        use paykey::flows::{self, CheckoutRequest, Settings};
        use paykey::handlers::App;
        use paykey::ports::{EventSubject, StripeEvent, SubscriptionStatus};

        let Some(m) = Moto::connect().await else { return };
        let (sessions, api_keys) = m.create_tables().await;
        let plans = m.create_usage_plans(3).await;
        let pool = m.create_user_pool().await;
        let name = UserName::parse(&unique("moto-tiers-")).unwrap();
        m.create_user(&pool, &name).await;
        let payments = MemoryPayments::new(Meter::new());
        payments.add_price("FMMailPro", 980, "jpy");
        payments.add_price("FMMailBusiness", 4980, "jpy");
        let mut settings = Settings::new("https://app.example.com", "https://api.example.com");
        settings.catalog = paykey::domain::Catalog::parse(&format!(
            r#"{{"tiers": [{{"name": "FREE", "usage_plan_id": "{}"}},
                {{"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "{}"}},
                {{"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "{}"}}]}}"#,
            plans[0], plans[1], plans[2]
        ))
        .unwrap();
        let app = App {
            store: DynamoStore::new(&m.config, Tables { sessions, api_keys }),
            keys: ApiGatewayKeys::new(&m.config),
            users: CognitoUsers::new(&m.config, pool),
            payments,
            clock: Arc::new(paykey::ports::SystemClock),
            ids: Arc::new(SequentialIds::default()),
            settings,
        };
        let user = User { id: app.users.get_user(&name).await.unwrap().unwrap().sub.expect("moto gives a sub"), name };
        let in_plans = |id: String| {
            let app = &app;
            let plans = plans.clone();
            async move {
                let by_key = app.keys.plans_of(&id).await.unwrap();
                let mut by_plan = Vec::new();
                for p in &plans {
                    if app.keys.plan_key_ids(p).await.unwrap().contains(&id) {
                        by_plan.push(p.clone());
                    }
                }
                assert_eq!(by_key, by_plan, "GetUsagePlans?keyId= agrees with each plan's keys");
                by_key
            }
        };
        let plan_of = || async { app.users.get_user(&user.name).await.unwrap().unwrap().plan() };

        let free = flows::issue_free_key(&app.store, &app.keys, &app.users, app.ctx(), &user).await.unwrap();
        let key = free.api_key.id.clone();
        assert_eq!(in_plans(key.clone()).await, [plans[0].clone()]);

        let started = flows::start_checkout(
            &app.users,
            &app.payments,
            &app.store,
            app.ctx(),
            &user,
            CheckoutRequest::new("FMMailPro"),
        )
        .await
        .unwrap();
        let session = SessionId::parse(started.url.rsplit('/').next().unwrap()).unwrap();
        let one_time = app.store.get(&session).await.unwrap().unwrap().one_time_key;
        let sub = app.payments.pay(&session).unwrap().subscription.unwrap();
        flows::complete_checkout(
            &app.store,
            &app.keys,
            &app.users,
            &app.payments,
            app.ctx(),
            &session,
            Some(&one_time),
        )
        .await
        .unwrap();
        assert_eq!(in_plans(key.clone()).await, [plans[1].clone()], "the free key moved to PRO");
        assert_eq!(plan_of().await, Plan::PRO);

        let event = |id: &str| StripeEvent {
            id: id.into(),
            kind: "customer.subscription.updated".into(),
            subject: EventSubject::Subscription { id: sub.clone(), customer: None },
        };
        app.payments.switch_price(&sub, "FMMailBusiness").unwrap();
        flows::handle_stripe_event(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &event("evt_up"))
            .await
            .unwrap();
        assert_eq!(in_plans(key.clone()).await, [plans[2].clone()], "moved to BUSINESS");
        assert_eq!(plan_of().await.as_str(), "BUSINESS");

        app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
        flows::handle_stripe_event(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &event("evt_del"))
            .await
            .unwrap();
        assert_eq!(in_plans(key.clone()).await, [plans[0].clone()], "back on FREE");
        assert_eq!(plan_of().await, Plan::FREE);
        assert!(app.keys.get(&key).await.unwrap().unwrap().enabled, "the key still works on the free plan");
        let account = app.store.get_account(&user.id).await.unwrap().unwrap();
        assert_eq!((account.plan, account.api_key_id.as_deref()), (Plan::FREE, Some(key.as_str())));
    }

    /// A session the Python version wrote (no Status, timestamps or TTL) is read as pending and
    /// fulfils like any other.
    #[tokio::test]
    async fn a_python_era_session_without_status_is_pending_and_fulfils() {
        use aws_sdk_dynamodb::types::AttributeValue as A;
        use paykey::adapters::memory::{MemoryPayments, SequentialIds};
        use paykey::flows::{self, Settings};
        use paykey::handlers::App;
        use paykey::ports::Payments;

        let Some(m) = Moto::connect().await else { return };
        let (sessions, api_keys) = m.create_tables().await;
        let plan = m.create_usage_plan().await;
        let pool = m.create_user_pool().await;
        let name = UserName::parse(&unique("python-era-")).unwrap();
        m.create_user(&pool, &name).await;
        let payments = MemoryPayments::new(Meter::new());
        payments.add_price("FMMailPro", 980, "jpy");
        let app = App {
            store: DynamoStore::new(&m.config, Tables { sessions: sessions.clone(), api_keys }),
            keys: ApiGatewayKeys::new(&m.config),
            users: CognitoUsers::new(&m.config, pool),
            payments,
            clock: Arc::new(paykey::ports::SystemClock),
            ids: Arc::new(SequentialIds::default()),
            settings: with_pro_plan(Settings::new("https://app.example.com", "https://api.example.com"), &plan),
        };
        let user = User { id: app.users.get_user(&name).await.unwrap().unwrap().sub.expect("moto gives a sub"), name };
        // A Stripe session as the Python version made it (its reference is the user name),
        // and its record in the Python shape.
        let python_user = User { id: UserId::parse(user.name.as_str()).unwrap(), name: user.name.clone() };
        let price =
            app.payments.find_price(&paykey::domain::LookupKey::parse("FMMailPro").unwrap()).await.unwrap().unwrap();
        let created = app
            .payments
            .create_checkout(paykey::ports::NewCheckout {
                price_id: &price.id,
                price_metered: false,
                overage_price_id: None,
                user: &python_user,
                customer: None,
                trial_days: 0,
                success_url: "https://api.example.com/create-api-key/{CHECKOUT_SESSION_ID}/k".into(),
                cancel_url: "https://app.example.com/canceled_upgrade".into(),
                idempotency_key: "python-era".into(),
            })
            .await
            .unwrap();
        let id = created.id;
        let key = OneTimeKey::new_random();
        aws_sdk_dynamodb::Client::new(&m.config)
            .put_item()
            .table_name(&sessions)
            .item("SessionID", A::S(id.to_string()))
            .item("UserName", A::S(user.name.to_string()))
            .item("OneTimeKey", A::S(key.to_string()))
            .item("PaidFlag", A::Bool(false))
            .send()
            .await
            .unwrap();
        let read = app.store.get(&id).await.unwrap().unwrap();
        assert_eq!(read.status, CheckoutStatus::Pending);
        app.payments.pay(&id).unwrap();
        let done =
            flows::complete_checkout(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &id, Some(&key))
                .await
                .unwrap();
        assert!(matches!(done, paykey::flows::Completion::Issued { .. }), "{done:?}");
        assert_eq!(app.store.get(&id).await.unwrap().unwrap().status, CheckoutStatus::Fulfilled);
    }

    /// The deployed functions read the Stripe secrets from SSM SecureString parameters.
    #[tokio::test]
    async fn secure_parameters_are_read_decrypted_from_ssm() {
        let Some(m) = Moto::connect().await else { return };
        let name = format!("/paykey/test/{}", uuid::Uuid::new_v4().simple());
        aws_sdk_ssm::Client::new(&m.config)
            .put_parameter()
            .name(&name)
            .value("sk_test_from_ssm")
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
        let secret = paykey::adapters::aws::secure_parameter(&m.config, &name).await.unwrap();
        assert_eq!(secret.expose(), "sk_test_from_ssm");
        let err = paykey::adapters::aws::secure_parameter(&m.config, "/paykey/missing").await.unwrap_err();
        assert!(err.message.contains("ParameterNotFound"), "{err}");
        // two in one GetParameters, in the order asked; a missing one is named
        let second = format!("{name}-hook");
        aws_sdk_ssm::Client::new(&m.config)
            .put_parameter()
            .name(&second)
            .value("whsec_from_ssm")
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
        let both = paykey::adapters::aws::secure_parameters(&m.config, &[second.clone(), name.clone()]).await.unwrap();
        assert_eq!(both.iter().map(|s| s.expose()).collect::<Vec<_>>(), ["whsec_from_ssm", "sk_test_from_ssm"]);
        let err = paykey::adapters::aws::secure_parameters(&m.config, &[name.clone(), "/paykey/missing".into()])
            .await
            .unwrap_err();
        assert!(err.message.contains("/paykey/missing") && !err.message.contains("sk_test"), "{err}");

        // paykey-setup's key: from the parameter, unless the variable holds one
        let from_ssm = paykey::config::Env::from_pairs([("STRIPE_API_KEY_PARAMETER", name.as_str())]);
        let cfg = paykey::wiring::stripe_config(&from_ssm, &m.config).await.unwrap();
        assert_eq!(cfg.secret_key.expose(), "sk_test_from_ssm");
        let both =
            paykey::config::Env::from_pairs([("STRIPE_API_KEY", "sk_test_env"), ("STRIPE_API_KEY_PARAMETER", "/x")]);
        assert_eq!(paykey::wiring::stripe_config(&both, &m.config).await.unwrap().secret_key.expose(), "sk_test_env");
        let missing = paykey::config::Env::from_pairs([("STRIPE_API_KEY_PARAMETER", "/paykey/missing")]);
        let err = paykey::wiring::stripe_config(&missing, &m.config).await.unwrap_err().to_string();
        assert!(err.contains("ParameterNotFound") && !err.contains("sk_"), "{err}");
    }
}

/// Name-keyed records of earlier versions, on DynamoDB: found by name (re-keyed to the sub)
/// and by customer, ignored by the sub-keyed reads, and retired once adopted.
#[tokio::test]
async fn name_keyed_records_of_earlier_versions_are_found_and_retired_on_moto() {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    use paykey::adapters::aws::DynamoStore;
    use paykey::config::Tables;
    let Some(m) = support::moto::Moto::connect().await else { return };
    let (sessions, api_keys) = m.create_tables().await;
    let store = DynamoStore::new(&m.config, Tables { sessions, api_keys: api_keys.clone() });
    let bob = new_user("bob-");
    let cus = CustomerId::parse(&unique("cus_")).unwrap();
    aws_sdk_dynamodb::Client::new(&m.config)
        .put_item()
        .table_name(&api_keys)
        .item("UserID", A::S(bob.name.to_string()))
        .item("Type", A::S("PRO".into()))
        .item("ApiKeyId", A::S("legacykey1".into()))
        .item("StripeCustomerId", A::S(cus.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(store.get_account(&bob.id).await.unwrap(), None, "not under the sub");
    assert_eq!(store.find_account_by_customer(&cus).await.unwrap(), None, "not a sub-keyed record");
    assert_eq!(store.find_legacy_name_by_customer(&cus).await.unwrap(), Some(bob.name.clone()));
    assert!(store.list_legacy_names().await.unwrap().contains(&bob.name), "listed for the resync");
    assert!(store.list_accounts().await.unwrap().iter().all(|a| a.user_name != bob.name), "not as an account");
    let legacy = store.legacy_account(&bob).await.unwrap().expect("found by name");
    assert_eq!(
        (legacy.user_id.clone(), legacy.plan, legacy.api_key_id.as_deref()),
        (bob.id.clone(), Plan::PRO, Some("legacykey1"))
    );
    assert!(
        store.list_accounts().await.unwrap().iter().all(|a| a.user_name != bob.name),
        "listing shows sub-keyed records"
    );
    store.retire_legacy_account(&bob).await.unwrap();
    store.retire_legacy_account(&bob).await.unwrap();
    assert_eq!(store.legacy_account(&bob).await.unwrap(), None, "retired");
    assert_eq!(store.find_legacy_name_by_customer(&cus).await.unwrap(), None);
    assert!(!store.list_legacy_names().await.unwrap().contains(&bob.name), "no longer listed");
}
