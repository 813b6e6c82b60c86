//! One contract suite for the `Payments` port, run against the in-memory adapter and against
//! the production async-stripe adapter talking HTTP to the project's Stripe emulator.

use std::net::SocketAddr;
use std::sync::Arc;

use paykey::adapters::memory::{MemoryPayments, Meter};
use paykey::adapters::stripe::StripePayments;
use paykey::config::{Secret, StripeConfig};
use paykey::domain::{CustomerId, LookupKey, SessionId, SubscriptionId, User, UserId, UserName};
use paykey::ports::{NewCheckout, Payments, PriceInfo, SubscriptionStatus};
use serde_json::Value;

/// What a test needs from each side beyond the port: a catalog, a payer, a canceller.
trait Driver {
    fn add_price(&self, lookup_key: &str, amount: i64, currency: &str) -> PriceInfo;
    fn pay(&self, id: &SessionId);
    fn cancel(&self, sub: &SubscriptionId);
    /// What was refunded of the subscription's charges.
    fn refunded(&self, sub: &SubscriptionId) -> i64;
    /// A billing portal configuration created as `paykey-setup` does: its id.
    fn add_portal_configuration(&self) -> String;
    /// A graduated metered price on the meter of `paykey_api_requests` (made if missing):
    /// `included` calls at 0, then `rate` each.
    fn add_metered_price(&self, lookup_key: &str, included: u64, rate: &str) -> PriceInfo;
    /// What the meter bills the customer for the UTC day.
    fn meter_day(&self, customer: &CustomerId, day: chrono::NaiveDate) -> u64;
    /// A meter that sums raw events (no daily window).
    fn add_raw_meter(&self, event_name: &str);
}

impl Driver for MemoryPayments {
    fn add_price(&self, lookup_key: &str, amount: i64, currency: &str) -> PriceInfo {
        MemoryPayments::add_price(self, lookup_key, amount, currency)
    }
    fn pay(&self, id: &SessionId) {
        MemoryPayments::pay(self, id).expect("known session");
    }
    fn cancel(&self, sub: &SubscriptionId) {
        self.update_subscription(sub, |s| s.status = SubscriptionStatus::Canceled).expect("known subscription");
    }
    fn refunded(&self, sub: &SubscriptionId) -> i64 {
        self.charge(sub).map(|c| c.refunded).unwrap_or(0)
    }
    fn add_portal_configuration(&self) -> String {
        MemoryPayments::add_portal_configuration(self)
    }
    fn add_metered_price(&self, lookup_key: &str, included: u64, rate: &str) -> PriceInfo {
        MemoryPayments::add_metered_price(self, lookup_key, included, rate, "jpy")
    }
    fn meter_day(&self, customer: &CustomerId, day: chrono::NaiveDate) -> u64 {
        self.meter_total(customer, day, day)
    }
    fn add_raw_meter(&self, event_name: &str) {
        self.add_meter(event_name, false)
    }
}

struct Emulated(stripe_emulator::Running);

impl Driver for Emulated {
    fn add_price(&self, lookup_key: &str, amount: i64, currency: &str) -> PriceInfo {
        let (s, product) = self.0.shared.call("POST", "/v1/products", "name=paykey+PRO");
        assert_eq!(s, 200, "{product}");
        let form = format!(
            "product={}&unit_amount={amount}&currency={currency}&recurring[interval]=month&lookup_key={lookup_key}",
            product["id"].as_str().unwrap()
        );
        let (s, price) = self.0.shared.call("POST", "/v1/prices", &form);
        assert_eq!(s, 200, "{price}");
        PriceInfo {
            id: price["id"].as_str().unwrap().into(),
            lookup_key: lookup_key.into(),
            unit_amount: Some(amount),
            currency: currency.into(),
            recurring: Some(paykey::ports::Recurring::monthly()),
            metered: false,
            tiers: Vec::new(),
            graduated: false,
        }
    }
    fn pay(&self, id: &SessionId) {
        self.0.shared.pay(id.as_str()).expect("known session");
    }
    fn cancel(&self, sub: &SubscriptionId) {
        self.0.shared.set_subscription_status(sub.as_str(), "canceled").expect("known subscription");
    }
    fn refunded(&self, sub: &SubscriptionId) -> i64 {
        let (_, s) = self.0.shared.call("GET", &format!("/v1/subscriptions/{sub}"), "");
        let invoice = s["latest_invoice"].as_str().unwrap().to_string();
        let (_, refunds) = self.0.shared.call("GET", "/v1/refunds", "");
        refunds["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["invoice"] == invoice.as_str())
            .map(|r| r["amount"].as_i64().unwrap())
            .sum()
    }
    fn add_portal_configuration(&self) -> String {
        let (s, c) =
            self.0.shared.call("POST", "/v1/billing_portal/configurations", "features[invoice_history][enabled]=true");
        assert_eq!(s, 200, "{c}");
        c["id"].as_str().unwrap().to_string()
    }
    fn add_metered_price(&self, lookup_key: &str, included: u64, rate: &str) -> PriceInfo {
        let sh = &self.0.shared;
        let (_, meters) = sh.call("GET", "/v1/billing/meters", "");
        let meter = match meters["data"].as_array().unwrap().iter().find(|m| m["event_name"] == "paykey_api_requests") {
            Some(m) => m["id"].as_str().unwrap().to_string(),
            None => {
                let (s, m) = sh.call(
                    "POST",
                    "/v1/billing/meters",
                    "display_name=API+requests&event_name=paykey_api_requests&default_aggregation[formula]=sum&event_time_window=day",
                );
                assert_eq!(s, 200, "{m}");
                m["id"].as_str().unwrap().to_string()
            }
        };
        let (_, product) = sh.call("POST", "/v1/products", "name=paykey+PRO+calls");
        let form = format!(
            "product={}&currency=jpy&recurring[interval]=month&recurring[usage_type]=metered&recurring[meter]={meter}&billing_scheme=tiered&tiers_mode=graduated&tiers[0][up_to]={included}&tiers[0][unit_amount_decimal]=0&tiers[1][up_to]=inf&tiers[1][unit_amount_decimal]={rate}&lookup_key={lookup_key}",
            product["id"].as_str().unwrap()
        );
        let (s, price) = sh.call("POST", "/v1/prices", &form);
        assert_eq!(s, 200, "{price}");
        PriceInfo {
            id: price["id"].as_str().unwrap().into(),
            lookup_key: lookup_key.into(),
            unit_amount: None,
            currency: "jpy".into(),
            recurring: Some(paykey::ports::Recurring::monthly()),
            metered: true,
            tiers: vec![
                paykey::ports::PriceTier {
                    up_to: Some(included),
                    unit_amount_decimal: Some("0".into()),
                    flat_amount: None,
                },
                paykey::ports::PriceTier { up_to: None, unit_amount_decimal: Some(rate.into()), flat_amount: None },
            ],
            graduated: true,
        }
    }
    fn meter_day(&self, customer: &CustomerId, day: chrono::NaiveDate) -> u64 {
        let (_, meters) = self.0.shared.call("GET", "/v1/billing/meters", "");
        let meter = meters["data"][0]["id"].as_str().unwrap().to_string();
        let start = day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
        self.0.shared.meter_usage(&meter, customer.as_str(), start, start + 24 * 3600)
    }
    fn add_raw_meter(&self, event_name: &str) {
        let form = format!("display_name=raw&event_name={event_name}&default_aggregation[formula]=sum");
        let (s, m) = self.0.shared.call("POST", "/v1/billing/meters", &form);
        assert_eq!(s, 200, "{m}");
    }
}

fn checkout<'a>(price: &'a str, user: &'a User, customer: Option<&'a CustomerId>, key: &str) -> NewCheckout<'a> {
    NewCheckout {
        price_id: price,
        price_metered: false,
        overage_price_id: None,
        user,
        customer,
        success_url: "https://api.example.com/create-api-key/{CHECKOUT_SESSION_ID}/k".into(),
        cancel_url: "https://app.example.com/canceled_upgrade".into(),
        idempotency_key: key.into(),
        trial_days: 0,
    }
}

fn user(name: &str) -> User {
    User {
        id: UserId::parse(&format!("0000{}-0000-4000-8000-000000000000", name.len())).unwrap(),
        name: UserName::parse(name).unwrap(),
    }
}

async fn payments_contract<P: Payments, D: Driver>(p: &P, d: &D) {
    let key = LookupKey::parse(&format!("Pro{}", uuid::Uuid::new_v4().simple())).unwrap();
    assert_eq!(p.find_price(&key).await.unwrap(), None, "unknown lookup key");
    let price = d.add_price(key.as_str(), 980, "jpy");
    let found = p.find_price(&key).await.unwrap().expect("price by lookup key");
    assert_eq!(found, price);

    let alice = user("alice");
    let a = p.create_checkout(checkout(&price.id, &alice, None, "idem-a")).await.unwrap();
    assert!(a.id.as_str().starts_with("cs_test_"), "{:?}", a.id);
    assert!(a.url.starts_with("http"), "{}", a.url);
    let replay = p.create_checkout(checkout(&price.id, &alice, None, "idem-a")).await.unwrap();
    assert_eq!(replay, a, "the same idempotency key replays the same session");
    let b = p.create_checkout(checkout(&price.id, &alice, None, "idem-b")).await.unwrap();
    assert_ne!(b.id, a.id);

    let state = p.get_checkout(&a.id).await.unwrap().expect("created session");
    assert!(!state.paid);
    assert_eq!(state.client_reference_id.as_deref(), Some(alice.id.as_str()), "Stripe's reference is the sub");
    assert_eq!(state.customer, None);
    assert_eq!(p.get_checkout(&SessionId::parse("cs_test_nope").unwrap()).await.unwrap(), None);

    d.pay(&a.id);
    let paid = p.get_checkout(&a.id).await.unwrap().unwrap();
    assert!(paid.paid);
    let customer = paid.customer.clone().expect("a customer after payment");
    let sub_id = paid.subscription.clone().expect("a subscription after payment");

    let sub = p.get_subscription(&sub_id).await.unwrap().expect("the subscription");
    assert_eq!(sub.status, SubscriptionStatus::Active);
    assert_eq!(sub.customer, customer);
    assert_eq!(sub.user_name.as_deref(), Some("alice"), "metadata set at checkout");
    assert_eq!(sub.user_id.as_deref(), Some(alice.id.as_str()), "the sub too");
    assert_eq!(sub.item_lookup_keys, vec![Some(price.lookup_key.clone())], "the tier it buys");
    assert!(!sub.cancel_at_period_end);
    assert!(sub.period_end.is_some());
    assert_eq!(sub.trial_end, None, "no trial asked for");
    assert_eq!(p.get_subscription(&SubscriptionId::parse("sub_nope").unwrap()).await.unwrap(), None);

    // a returning customer keeps the customer id through the next checkout
    let again = p.create_checkout(checkout(&price.id, &alice, Some(&customer), "idem-c")).await.unwrap();
    d.pay(&again.id);
    assert_eq!(p.get_checkout(&again.id).await.unwrap().unwrap().customer, Some(customer.clone()));
    let again_sub = p.get_checkout(&again.id).await.unwrap().unwrap().subscription.unwrap();
    let subs = p.list_subscriptions(&customer).await.unwrap();
    assert_eq!(
        subs.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![again_sub.clone(), sub_id.clone()],
        "newest first"
    );
    let ghost = CustomerId::parse("cus_ghost").unwrap();
    assert!(p.list_subscriptions(&ghost).await.unwrap().is_empty());
    assert!(p.create_checkout(checkout(&price.id, &alice, Some(&ghost), "idem-d")).await.is_err());
    assert!(p.create_checkout(checkout("price_missing", &alice, None, "idem-e")).await.is_err());

    // A portal session in the configuration it names; an unknown one, or none of the account's,
    // is refused (Stripe: resource_missing).
    let configuration = d.add_portal_configuration();
    let url = p.create_portal(&customer, &configuration, "https://app.example.com/", "portal-1").await.unwrap();
    assert!(url.starts_with("http"), "{url}");
    assert!(p.create_portal(&ghost, &configuration, "https://app.example.com/", "portal-2").await.is_err());
    let err = p.create_portal(&customer, "bpc_unknown", "https://app.example.com/", "portal-3").await.unwrap_err();
    assert!(err.to_string().contains("resource_missing"), "{err}");

    // An open session can be expired, once; a completed one is not open.
    let open = p.create_checkout(checkout(&price.id, &alice, Some(&customer), "idem-x")).await.unwrap();
    assert!(p.expire_checkout(&open.id).await.unwrap(), "expired now");
    assert!(!p.expire_checkout(&open.id).await.unwrap(), "already expired");
    assert!(!p.expire_checkout(&again.id).await.unwrap(), "a completed session is not open");
    assert!(!p.get_checkout(&open.id).await.unwrap().unwrap().paid);
    assert!(p.expire_checkout(&SessionId::parse("cs_test_nope").unwrap()).await.is_err(), "unknown session");

    // A duplicate subscription: cancelled now, its charge refunded in full, once.
    let done = p.cancel_duplicate(&again_sub).await.unwrap();
    assert_eq!(done.refunded, 980);
    assert_eq!(p.get_subscription(&again_sub).await.unwrap().unwrap().status, SubscriptionStatus::Canceled);
    assert_eq!(d.refunded(&again_sub), 980);
    assert_eq!(p.cancel_duplicate(&again_sub).await.unwrap().refunded, 0, "a retry refunds nothing more");
    assert_eq!(d.refunded(&again_sub), 980);
    assert_eq!(d.refunded(&sub_id), 0, "the kept subscription keeps its charge");

    d.cancel(&sub_id);
    assert_eq!(p.get_subscription(&sub_id).await.unwrap().unwrap().status, SubscriptionStatus::Canceled);

    // A trial: `trialing` until `trial_end`, the trial's days after the checkout.
    let bob = user("bob-trial");
    let t = p
        .create_checkout(NewCheckout { trial_days: 14, ..checkout(&price.id, &bob, None, "idem-trial") })
        .await
        .unwrap();
    d.pay(&t.id);
    let trial_sub = p.get_checkout(&t.id).await.unwrap().unwrap().subscription.unwrap();
    let trial = p.get_subscription(&trial_sub).await.unwrap().unwrap();
    assert_eq!(trial.status, SubscriptionStatus::Trialing);
    let days = (trial.trial_end.expect("trial_end") - chrono::Utc::now()).num_hours();
    assert!((14 * 24 - 2..=14 * 24).contains(&days), "{days} hours");
    assert_eq!(trial.period_end, trial.trial_end, "the first period ends with the trial");
}

/// Usage-based billing: a metered price found with its tiers, sold without a quantity beside a
/// flat one, and a day's meter total replaced (never added to) by a newer total, the same total
/// sent twice counting once.
async fn metering_contract<P: Payments + paykey::ports::metering::UsageMeter, D: Driver>(p: &P, d: &D) {
    use paykey::ports::metering::MeterEvent;
    let flat_key = LookupKey::parse(&format!("Pro{}", uuid::Uuid::new_v4().simple())).unwrap();
    let calls_key = LookupKey::parse(&format!("Calls{}", uuid::Uuid::new_v4().simple())).unwrap();
    let flat = d.add_price(flat_key.as_str(), 980, "jpy");
    let calls = d.add_metered_price(calls_key.as_str(), 1000, "0.5");
    let found = p.find_price(&calls_key).await.unwrap().expect("the metered price");
    assert_eq!(found, calls, "metered, with its tiers");
    let bob = user("bob");
    // A metered price with a quantity, a flat one without: refused by both.
    let wrong = NewCheckout { price_id: &calls.id, ..checkout(&calls.id, &bob, None, "idem-m0") };
    assert!(p.create_checkout(wrong).await.is_err(), "a metered price takes no quantity");
    let both = NewCheckout { overage_price_id: Some(&calls.id), ..checkout(&flat.id, &bob, None, "idem-m1") };
    let session = p.create_checkout(both).await.unwrap();
    d.pay(&session.id);
    let state = p.get_checkout(&session.id).await.unwrap().unwrap();
    let sub = p.get_subscription(state.subscription.as_ref().unwrap()).await.unwrap().unwrap();
    assert_eq!(sub.item_lookup_keys, [Some(flat_key.to_string()), Some(calls_key.to_string())]);
    let customer = state.customer.unwrap();
    let day = chrono::Utc::now().date_naive() - chrono::Duration::days(1);
    let event = |value, sent_at| MeterEvent {
        event_name: "paykey_api_requests".into(),
        customer: customer.clone(),
        day,
        value,
        sent_at,
    };
    p.send_meter_event(&event(700, 1)).await.unwrap();
    p.send_meter_event(&event(700, 1)).await.expect("an event Stripe holds already is delivered");
    assert_eq!(d.meter_day(&customer, day), 700);
    p.send_meter_event(&event(1200, 2)).await.unwrap();
    assert_eq!(d.meter_day(&customer, day), 1200, "the newer total replaces the day's");
    p.send_meter_event(&event(1150, 3)).await.unwrap();
    assert_eq!(d.meter_day(&customer, day), 1150, "the last one sent is the day's value");
    p.send_meter_event(&event(1200, 4)).await.unwrap();
    assert_eq!(d.meter_day(&customer, day), 1200, "a total sent before is sent again, not refused");
    // the meter paykey's events need: sums daily totals (a raw one would add every resend)
    assert_eq!(p.meter_sums_days("paykey_api_requests").await.unwrap(), Some(true));
    d.add_raw_meter("raw_requests");
    assert_eq!(p.meter_sums_days("raw_requests").await.unwrap(), Some(false));
    assert_eq!(p.meter_sums_days("nobody_sends_this").await.unwrap(), None);
    // a pay-per-call checkout: the metered price alone
    let payg = NewCheckout { price_metered: true, ..checkout(&calls.id, &bob, Some(&customer), "idem-m2") };
    p.create_checkout(payg).await.expect("a metered price alone");
}

#[tokio::test]
async fn memory_metering_meets_the_contract() {
    let p = MemoryPayments::new(Meter::new());
    metering_contract(&p, &p).await;
}

#[tokio::test]
async fn the_async_stripe_adapter_on_the_emulator_meets_the_metering_contract() {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), stripe_emulator::Config::default())
        .await
        .unwrap();
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_contract"),
        api_base: Some(format!("{}/", emu.base_url())),
        price_cache: std::time::Duration::ZERO,
    };
    let p = StripePayments::new(&cfg).unwrap();
    metering_contract(&p, &Emulated(emu)).await;
}

#[tokio::test]
async fn memory_payments_meet_the_contract() {
    let m = MemoryPayments::new(Arc::new(Meter::default()));
    payments_contract(&m, &m).await;
}

#[tokio::test]
async fn the_async_stripe_adapter_on_the_emulator_meets_the_contract() {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_paykey_contract"),
        api_base: Some(format!("{}/", emu.base_url())),
        price_cache: std::time::Duration::ZERO,
    };
    let stripe = StripePayments::new(&cfg).unwrap();
    payments_contract(&stripe, &Emulated(emu)).await;
}

#[tokio::test]
async fn the_emulator_refuses_a_bad_key_and_a_reused_idempotency_key_with_other_params() {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let d = Emulated(emu);
    let price = d.add_price("K1", 100, "usd");
    let bad = StripePayments::new(&StripeConfig {
        secret_key: Secret::new("sk_live_not_for_the_emulator"),
        api_base: Some(format!("{}/", d.0.base_url())),
        price_cache: std::time::Duration::ZERO,
    })
    .unwrap();
    let err = bad.find_price(&LookupKey::parse("K1").unwrap()).await.unwrap_err();
    assert!(err.message.starts_with("401"), "{err}");
    assert!(!err.message.contains("not_for_the_emulator"), "the key is not echoed: {err}");

    let good = StripePayments::new(&StripeConfig {
        secret_key: Secret::new("sk_test_x"),
        api_base: Some(format!("{}/", d.0.base_url())),
        price_cache: std::time::Duration::ZERO,
    })
    .unwrap();
    let alice = user("alice");
    let bob = user("bob");
    good.create_checkout(checkout(&price.id, &alice, None, "same-key")).await.unwrap();
    let err = good.create_checkout(checkout(&price.id, &bob, None, "same-key")).await.unwrap_err();
    assert!(err.message.contains("idempotency"), "{err}");
}

/// Platforms (Stripe Connect destination charges): the destination account and the platform
/// fee reach the subscription created by checkout; off by default.
#[tokio::test]
async fn connect_destination_and_fee_are_passed_to_the_subscription() {
    use paykey::adapters::stripe::Connect;
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let d = Emulated(emu);
    let price = d.add_price("Tutoring", 5000, "jpy");
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_x"),
        api_base: Some(format!("{}/", d.0.base_url())),
        price_cache: std::time::Duration::ZERO,
    };
    let env = paykey::config::Env::from_pairs([
        ("STRIPE_CONNECT_DESTINATION", "acct_1Tutor"),
        ("STRIPE_APPLICATION_FEE_PERCENT", "12.5"),
    ]);
    let connect = paykey::config::connect(&env).unwrap();
    assert_eq!(connect, Some(Connect { destination: "acct_1Tutor".into(), application_fee_percent: Some(12.5) }));
    let p = StripePayments::new(&cfg).unwrap().with_connect(connect);
    let alice = user("alice");
    let s = p.create_checkout(checkout(&price.id, &alice, None, "connect-1")).await.unwrap();
    d.pay(&s.id);
    let sub_id = p.get_checkout(&s.id).await.unwrap().unwrap().subscription.unwrap();
    let (_, sub) = d.0.shared.call("GET", &format!("/v1/subscriptions/{sub_id}"), "");
    assert_eq!(sub["transfer_data"]["destination"], "acct_1Tutor");
    assert_eq!(sub["application_fee_percent"], 12.5);

    // off by default; a fee without a destination is a configuration error
    assert_eq!(paykey::config::connect(&paykey::config::Env::default()).unwrap(), None);
    let bad = paykey::config::Env::from_pairs([("STRIPE_APPLICATION_FEE_PERCENT", "10")]);
    assert!(paykey::config::connect(&bad).unwrap_err().to_string().contains("STRIPE_CONNECT_DESTINATION"));
    let bad = paykey::config::Env::from_pairs([
        ("STRIPE_CONNECT_DESTINATION", "acct_1"),
        ("STRIPE_APPLICATION_FEE_PERCENT", "101"),
    ]);
    assert!(paykey::config::connect(&bad).is_err());
}

/// A price change as `paykey-setup` makes it: a new price of the product `paykey_<lookup key>`
/// takes the lookup key over (`transfer_lookup_key`), the old price keeps none. A subscription
/// to the old price — an existing one, or a session opened before the change and paid after —
/// is still sold under that lookup key (the product's), so it stays paykey's and its tier's.
/// Another product's price without a lookup key is sold under none.
#[tokio::test]
async fn a_subscription_to_a_price_whose_lookup_key_moved_is_still_sold_under_it() {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let d = Emulated(emu);
    let call = |m: &str, path: &str, form: &str| {
        let (status, v) = d.0.shared.call(m, path, form);
        assert_eq!(status, 200, "{path}: {v}");
        v
    };
    call("POST", "/v1/products", "id=paykey_FMMailPro&name=FMMail+PRO");
    let price_form = |amount: i64| {
        format!("product=paykey_FMMailPro&unit_amount={amount}&currency=jpy&recurring[interval]=month&lookup_key=FMMailPro&transfer_lookup_key=true")
    };
    let old = call("POST", "/v1/prices", &price_form(980));
    let other = call("POST", "/v1/products", "name=Newsletter");
    let plain = call(
        "POST",
        "/v1/prices",
        &format!("product={}&unit_amount=500&currency=jpy&recurring[interval]=month", other["id"].as_str().unwrap()),
    );
    let p = StripePayments::new(&StripeConfig {
        secret_key: Secret::new("sk_test_x"),
        api_base: Some(format!("{}/", d.0.base_url())),
        price_cache: std::time::Duration::ZERO,
    })
    .unwrap();
    let alice = user("alice");
    let at_old = p.create_checkout(checkout(old["id"].as_str().unwrap(), &alice, None, "old-1")).await.unwrap();
    let news = p.create_checkout(checkout(plain["id"].as_str().unwrap(), &alice, None, "news-1")).await.unwrap();
    // the price change: the new price takes the lookup key over
    let new = call("POST", "/v1/prices", &price_form(1200));
    assert_eq!(call("GET", &format!("/v1/prices/{}", old["id"].as_str().unwrap()), "")["lookup_key"], Value::Null);
    d.pay(&at_old.id);
    d.pay(&news.id);
    let sub_of = |id: &SessionId| {
        let p = &p;
        let id = id.clone();
        async move {
            let s = p.get_checkout(&id).await.unwrap().unwrap().subscription.unwrap();
            p.get_subscription(&s).await.unwrap().unwrap()
        }
    };
    assert_eq!(sub_of(&at_old.id).await.item_lookup_keys, vec![Some("FMMailPro".to_string())], "the product's");
    assert_eq!(sub_of(&news.id).await.item_lookup_keys, vec![None], "another product's price without one");
    assert_eq!(new["lookup_key"], "FMMailPro");
}

/// Stripe rate-limits (429), fails (5xx) and loses answers: the adapter retries with backoff,
/// each attempt carrying the same idempotency key, so a lost answer is replayed, not repeated.
#[tokio::test]
async fn stripe_calls_retry_429_5xx_and_lost_answers_with_the_same_idempotency_key() {
    use stripe_emulator::ApiFault;
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_paykey_retries"),
        api_base: Some(format!("{}/", emu.base_url())),
        price_cache: std::time::Duration::ZERO,
    };
    let stripe = StripePayments::new(&cfg).unwrap();
    let d = Emulated(emu);
    let price = d.add_price("RetryPro", 980, "jpy");
    let alice = user("alice");
    let shared = &d.0.shared;
    let sessions = |shared: &stripe_emulator::Shared| shared.export()["sessions"].as_object().unwrap().len();

    // 429, then 500, then the session is created but the answer lost: the fourth attempt
    // gets the kept answer. One session at Stripe.
    shared.inject("POST", "/v1/checkout/sessions", ApiFault::Refuse(429));
    shared.inject("POST", "/v1/checkout/sessions", ApiFault::Refuse(500));
    shared.inject("POST", "/v1/checkout/sessions", ApiFault::LoseAnswer);
    let before = sessions(shared);
    let created = stripe.create_checkout(checkout(&price.id, &alice, None, "paykey-checkout-retry-1")).await.unwrap();
    assert_eq!(sessions(shared), before + 1, "one session, not two");
    let attempts: Vec<_> =
        shared.requests().into_iter().filter(|r| r.method == "POST" && r.path == "/v1/checkout/sessions").collect();
    assert_eq!(attempts.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 500, 500, 200]);
    assert!(attempts.iter().all(|r| r.idempotency_key.as_deref() == Some("paykey-checkout-retry-1")), "{attempts:?}");
    assert!(stripe.get_checkout(&created.id).await.unwrap().is_some());

    // reads retry too
    shared.inject("GET", "/v1/checkout/sessions/", ApiFault::Refuse(429));
    assert!(stripe.get_checkout(&created.id).await.unwrap().is_some());

    // a limit on attempts: four 429s in a row are an error after four requests
    let n = shared.requests().len();
    for _ in 0..4 {
        shared.inject("GET", "/v1/prices", ApiFault::Refuse(429));
    }
    let err = stripe.find_price(&LookupKey::parse("RetryPro").unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("429"), "{err}");
    assert_eq!(shared.requests().len() - n, 4);

    // a request Stripe refuses for its content (400) is not retried
    let n = shared.requests().len();
    assert!(stripe.create_checkout(checkout("price_missing", &alice, None, "paykey-checkout-retry-2")).await.is_err());
    assert_eq!(shared.requests().len() - n, 1);
}

/// The adapter over TLS to the emulator, trusting only the emulator front's test certificate.
fn over_tls(front: &stripe_emulator::front::Front, max_idle_per_host: usize) -> StripePayments {
    use paykey::adapters::stripe_client::{ClientSettings, TrustRoots};
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_paykey_pool"),
        api_base: Some(format!("{}/", front.url(true))),
        price_cache: std::time::Duration::ZERO,
    };
    let settings = ClientSettings {
        roots: TrustRoots::Only(vec![stripe_emulator::front::test_cert_der()]),
        max_idle_per_host,
        ..ClientSettings::default()
    };
    StripePayments::with_settings(&cfg, settings).unwrap()
}

/// A warm container makes its later Stripe calls on the TLS connection its first call opened
/// (async-stripe's own client opens one per call: `pool_max_idle_per_host(0)`, kept here as
/// the reference), and a pooled connection the server has closed meanwhile is replaced
/// without the caller seeing an error. Connections are counted where the emulator's TLS front
/// accepts them.
#[tokio::test]
async fn warm_stripe_calls_reuse_one_tls_connection_and_survive_the_server_closing_it() {
    use stripe_emulator::front;
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let tls = front::start(emu.addr, true, std::time::Duration::ZERO).await.unwrap();
    let d = Emulated(emu);
    d.add_price("POOLED", 980, "jpy");
    let key = LookupKey::parse("POOLED").unwrap();

    let pooled = over_tls(&tls, 8);
    for _ in 0..5 {
        assert_eq!(pooled.find_price(&key).await.unwrap().unwrap().unit_amount, Some(980));
    }
    assert_eq!(tls.accepted(), 1, "five calls, one connection");

    // The server drops the idle connection (Stripe may at any time): the next call still
    // answers, on a new connection.
    tls.close_connections();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(pooled.find_price(&key).await.unwrap().unwrap().unit_amount, Some(980));
    let alice = user("alice");
    let price = pooled.find_price(&key).await.unwrap().unwrap();
    let created = pooled.create_checkout(checkout(&price.id, &alice, None, "pool-ck-1")).await.unwrap();
    assert!(pooled.get_checkout(&created.id).await.unwrap().is_some());
    assert_eq!(tls.accepted(), 2, "one new connection after the close, reused by the next three calls");

    let before = tls.accepted();
    let unpooled = over_tls(&tls, 0);
    for _ in 0..3 {
        unpooled.find_price(&key).await.unwrap();
    }
    assert_eq!(tls.accepted() - before, 3, "the reference opens a connection per call");
}

/// A certificate the client does not trust is refused before any request is sent.
#[tokio::test]
async fn a_server_with_an_untrusted_certificate_gets_no_request() {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let tls = stripe_emulator::front::start(emu.addr, true, std::time::Duration::ZERO).await.unwrap();
    let cfg = StripeConfig {
        secret_key: Secret::new("sk_test_paykey_untrusted"),
        api_base: Some(format!("{}/", tls.url(true))),
        price_cache: std::time::Duration::ZERO,
    };
    // The production roots (webpki-roots) do not include the test certificate.
    let stripe = StripePayments::new(&cfg).unwrap();
    let err = stripe.find_price(&LookupKey::parse("ANY").unwrap()).await.unwrap_err();
    assert!(err.message.contains("certificate"), "the cause is named: {err}");
    assert!(!err.message.contains("sk_test_paykey_untrusted"), "{err}");
}
