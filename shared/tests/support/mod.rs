//! A whole paykey on in-memory ports, for flow and handler tests.
#![allow(dead_code)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use paykey::adapters::memory::{
    ManualClock, MemoryKeys, MemoryPayments, MemoryStore, MemoryUsers, Meter, SequentialIds,
};
use paykey::domain::{OneTimeKey, Plan, SessionId, User, UserId, UserName};
use paykey::flows::{self, CheckoutRequest, Completion, Settings};
use paykey::handlers::App;
use paykey::ports::{KeyRegistry, UserDirectory};

pub type MemApp = App<MemoryStore, MemoryKeys, MemoryUsers, MemoryPayments>;

pub struct World {
    pub meter: Arc<Meter>,
    pub clock: Arc<ManualClock>,
    pub app: MemApp,
}

pub const APP_URL: &str = "https://app.example.com";
pub const API_URL: &str = "https://api.example.com/prod";

/// [`World::tiered`]'s catalog.
pub const TIERS: &str = r#"{"tiers": [
    {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 1000, "period": "MONTH"},
     "throttle": {"rate": 1, "burst": 5}},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro", "trial_days": 14,
     "quota": {"limit": 100000, "period": "MONTH"}},
    {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "usage-plan-business",
     "quota": {"limit": 1000000, "period": "MONTH"}}
]}"#;
/// [`World::metered`]'s catalog: PRO includes 1,000 calls a month and bills the rest (cap
/// 5,000), BUSINESS includes 10,000 (cap 50,000).
pub const METERED_TIERS: &str = r#"{"tiers": [
    {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 1000, "period": "MONTH"}},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro",
     "quota": {"limit": 5000, "period": "MONTH"}, "metered": {"lookup_key": "FMMailProCalls", "included": 1000}},
    {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "usage-plan-business",
     "quota": {"limit": 50000, "period": "MONTH"}, "metered": {"lookup_key": "FMMailBusinessCalls", "included": 10000}}
]}"#;
pub const FREE_PLAN: &str = "usage-plan-free";
pub const PRO_PLAN: &str = "usage-plan-pro";
pub const BUSINESS_PLAN: &str = "usage-plan-business";

impl World {
    pub fn new() -> Self {
        let meter = Meter::new();
        let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()));
        let payments = MemoryPayments::new(Arc::clone(&meter));
        payments.add_price("FMMailPro", 980, "jpy");
        let mut settings = Settings::new(APP_URL, API_URL);
        settings.portal_configuration = Some(payments.add_portal_configuration());
        settings.wait_for_peer = std::time::Duration::from_millis(300);
        // The flows' other tests repeat requests at one instant; `budget.rs` tests the budget
        // and the reuse of an open checkout with the deployed defaults.
        settings.user_budget.interval = std::time::Duration::ZERO;
        settings.checkout_reuse = std::time::Duration::ZERO;
        let app = App {
            store: MemoryStore::new(Arc::clone(&meter)),
            keys: MemoryKeys::new(Arc::clone(&meter)),
            users: MemoryUsers::new(Arc::clone(&meter)),
            payments,
            clock: clock.clone(),
            ids: Arc::new(SequentialIds::default()),
            settings,
        };
        Self { meter, clock, app }
    }

    /// The per-user budget on, so every budgeted route spends it as deployed, but large enough
    /// never to refuse: for tests that record the calls a deployed function makes.
    pub fn spending_budgets(mut self) -> Self {
        self.app.settings.user_budget =
            paykey::ports::Budget { burst: 1_000_000, interval: std::time::Duration::from_secs(1) };
        self
    }

    /// A catalog of three tiers: FREE with keys (its own usage plan), PRO with a 14-day trial,
    /// BUSINESS.
    pub fn tiered() -> Self {
        let mut w = Self::new();
        w.app.settings.catalog = paykey::domain::Catalog::parse(TIERS).unwrap();
        w.app.payments.add_price("FMMailBusiness", 4980, "jpy");
        w.app.keys.define_catalog(&w.app.settings.catalog);
        w.app.keys.use_clock(w.clock.clone());
        w
    }

    /// [`METERED_TIERS`], with their flat and metered prices (¥0.5 a call beyond the included).
    pub fn metered() -> Self {
        let mut w = Self::new();
        w.app.settings.catalog = paykey::domain::Catalog::parse(METERED_TIERS).unwrap();
        w.app.payments.add_price("FMMailBusiness", 4980, "jpy");
        w.app.payments.add_metered_price("FMMailProCalls", 1000, "0.5", "jpy");
        w.app.payments.add_metered_price("FMMailBusinessCalls", 10000, "0.3", "jpy");
        w.app.keys.define_catalog(&w.app.settings.catalog);
        w.app.keys.use_clock(w.clock.clone());
        w
    }

    /// Signs a user up, with the `sub` [`sub_of`] gives the name (so API Gateway events built
    /// for the name carry it).
    pub fn user(&self, name: &str) -> User {
        let u = User { id: sub_of(name), name: UserName::parse(name).unwrap() };
        self.app.users.add_user_with_sub(&u);
        u
    }

    /// Starts a checkout for `user` and returns (session id, one-time key) as the success URL
    /// carries them.
    pub async fn checkout(&self, user: &User) -> (SessionId, OneTimeKey) {
        let started = flows::start_checkout(
            &self.app.users,
            &self.app.payments,
            &self.app.store,
            self.app.ctx(),
            user,
            CheckoutRequest::new("FMMailPro"),
        )
        .await
        .expect("checkout starts");
        let id = SessionId::parse(started.url.rsplit('/').next().unwrap()).unwrap();
        let record = self.app.store.sessions().into_iter().find(|r| r.session_id == id).unwrap();
        (id, record.one_time_key)
    }

    pub async fn checkout_and_pay(&self, user: &User) -> (SessionId, OneTimeKey) {
        let (id, key) = self.checkout(user).await;
        self.app.payments.pay(&id).unwrap();
        (id, key)
    }

    pub async fn complete(&self, id: &SessionId, key: &OneTimeKey) -> Result<Completion, paykey::Error> {
        flows::complete_checkout(
            &self.app.store,
            &self.app.keys,
            &self.app.users,
            &self.app.payments,
            self.app.ctx(),
            id,
            Some(key),
        )
        .await
    }

    /// The invariant after fulfilment: exactly one enabled key for the user, in the plan once,
    /// user PRO with the customer id, the record FULFILLED and the account pointing at the key.
    pub async fn assert_fulfilled_once(&self, user: &User, id: &SessionId) {
        let name = self.app.settings.key_name(user);
        let keys: Vec<_> = self.app.keys.all().into_iter().filter(|k| k.name == name).collect();
        assert_eq!(keys.len(), 1, "exactly one key for {user}: {keys:?}");
        assert!(keys[0].enabled, "the key is enabled");
        let plan = self.app.keys.plan_key_ids(paykey::flows::DEFAULT_PRO_USAGE_PLAN).await.unwrap();
        assert_eq!(plan.iter().filter(|k| **k == keys[0].id).count(), 1, "one usage-plan association");
        let profile = self.app.users.get_user(&user.name).await.unwrap().unwrap();
        assert_eq!(profile.plan, Some(Plan::PRO));
        assert!(profile.customer_id.is_some(), "customer id written");
        let record = self.app.store.sessions().into_iter().find(|r| &r.session_id == id).unwrap();
        assert_eq!(record.status, paykey::domain::CheckoutStatus::Fulfilled);
        assert!(record.paid);
        let account = self.app.store.accounts().into_iter().find(|a| a.user_id == user.id).unwrap();
        assert_eq!(account.api_key_id.as_deref(), Some(keys[0].id.as_str()));
        assert_eq!(account.plan, Plan::PRO);
    }

    /// A fingerprint of every store, to assert that a refused request wrote nothing.
    pub fn snapshot(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            self.app.store.sessions(),
            self.app.store.accounts(),
            self.app.keys.all(),
            self.app.keys.plan_members(),
            self.app.users_snapshot()
        )
    }
}

pub mod moto;

pub trait UsersSnapshot {
    fn users_snapshot(&self) -> String;
}

impl UsersSnapshot for MemApp {
    fn users_snapshot(&self) -> String {
        self.users.dump()
    }
}

/// Stripe's success redirect as API Gateway delivers it (no authorizer, path parameters).
pub fn verify_request(session_id: &SessionId, one_time_key: &str) -> lambda_http::Request {
    let mut v: serde_json::Value = serde_json::from_str(include_str!("../data/apigw-rest-cognito.json")).unwrap();
    let path = format!("/create-api-key/{session_id}/{one_time_key}");
    v["httpMethod"] = serde_json::json!("GET");
    v["requestContext"]["httpMethod"] = serde_json::json!("GET");
    v["resource"] = serde_json::json!("/create-api-key/{session_id}/{one_time_key}");
    v["requestContext"]["resourcePath"] = v["resource"].clone();
    v["path"] = serde_json::json!(path);
    v["requestContext"]["path"] = serde_json::json!(format!("/prod{path}"));
    v["body"] = serde_json::Value::Null;
    v["requestContext"].as_object_mut().unwrap().remove("authorizer");
    v["pathParameters"] = serde_json::json!({"session_id": session_id.as_str(), "one_time_key": one_time_key});
    lambda_http::request::from_str(&v.to_string()).unwrap()
}

/// A fixed `sub` per user name for tests (a new sign-up of a deleted user's name gets another
/// one: use `World::user_again`).
pub fn sub_of(name: &str) -> UserId {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    UserId::parse(&format!("{:08x}-0000-4000-8000-{:012x}", h >> 32, h & 0xffff_ffff_ffff)).unwrap()
}

impl World {
    /// The user deletes their account; someone else signs up with the same name (a new sub).
    pub fn reregister(&self, old: &User) -> User {
        self.app.users.delete_user(&old.name);
        let u = User { id: UserId::parse(&uuid::Uuid::new_v4().to_string()).unwrap(), name: old.name.clone() };
        self.app.users.add_user_with_sub(&u);
        u
    }
}

impl World {
    /// At the next flow's first account lock, `user` deletes themselves and someone else (the
    /// returned user, with `sub`) signs up with the same name. Resets the call counts.
    pub fn name_taken_over_at_the_lock(&self, user: &User, sub: &str) -> User {
        let newcomer = User { id: UserId::parse(sub).unwrap(), name: user.name.clone() };
        let (users, n) = (self.app.users.clone(), newcomer.clone());
        self.meter.reset_calls();
        self.meter.on_call("ddb.lock_account", 0, move || {
            users.delete_user(&n.name);
            users.add_user_with_sub(&n);
        });
        newcomer
    }
}

/// xorshift64*: small, deterministic, good enough to pick steps of a seeded history.
pub struct Rng(pub u64);

impl Rng {
    pub fn seeded(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len())])
        }
    }
}

/// Keeps injected crashes (panics in their own tasks, expected) out of the output; every other
/// panic is printed as usual. `PAYKEY_SHOW_PANICS` prints them all.
pub fn quiet_injected_crashes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !msg.starts_with("injected crash") || std::env::var_os("PAYKEY_SHOW_PANICS").is_some() {
            default(info);
        }
    }));
}
