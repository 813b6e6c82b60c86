//! The small traits the flows are generic over. Each has an AWS or Stripe adapter and an
//! in-memory one (`adapters::memory`); `tests/contract.rs` runs one suite against both.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::domain::{
    AccountRecord, BackendError, CheckoutRecord, CustomerId, IssuedKey, LookupKey, OneTimeKey, Plan, SessionId,
    SubscriptionId, User, UserId, UserName, UserProfile,
};

pub type Result<T> = std::result::Result<T, BackendError>;

/// Outcome of trying to take the fulfilment lease on a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We hold the lease; `token` must be presented to `fulfil`.
    Acquired { token: String, record: CheckoutRecord },
    /// Someone else holds an unexpired lease.
    Busy,
    /// The checkout is already fulfilled.
    AlreadyFulfilled,
    /// No such session.
    Missing,
}

/// Outcome of a write that is conditional on holding a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    Done,
    /// The lease was lost (it expired and another attempt took it over).
    LeaseLost,
}

/// Outcome of trying to lock a user's account record (one key manager per user at a time).
// A short-lived return value; boxing the record would cost an allocation per lock for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountLock {
    /// Locked; the record as it stands (`None`: the user has none yet).
    Acquired(Option<AccountRecord>),
    /// Another attempt holds an unexpired lock.
    Busy,
}

/// The sessions table's checkouts (DynamoDB `DYNAMODB_STRIPE_TABLE`): stored at checkout, claimed
/// and fulfilled by the success redirect and the webhook.
pub trait Checkouts: Send + Sync {
    /// Stores a new checkout; fails if the session id exists already.
    fn put_new(&self, record: &CheckoutRecord) -> impl Future<Output = Result<()>> + Send;
    fn get(&self, id: &SessionId) -> impl Future<Output = Result<Option<CheckoutRecord>>> + Send;
    /// PENDING → ISSUING, or ISSUING with a lease older than `now` → ISSUING with a new lease.
    fn claim(
        &self,
        id: &SessionId,
        token: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Claim>> + Send;
    /// Gives up the session's lease after a failed attempt (ISSUING → PENDING while `token`
    /// holds it), so a retry need not wait for the lease to expire. No-op otherwise.
    fn release_claim(&self, id: &SessionId, token: &str) -> impl Future<Output = Result<()>> + Send;
    /// In one transaction, only while `token` holds both the session's lease and the
    /// account lock: session → FULFILLED, and the account record written (which releases
    /// the account lock).
    fn fulfil(
        &self,
        id: &SessionId,
        token: &str,
        account: &AccountRecord,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Commit>> + Send;
}

/// The users' account records and their locks (the API keys table, `DYNAMODB_API_KEY_TABLE`),
/// including the name-keyed records of earlier versions.
pub trait Accounts: Send + Sync {
    fn get_account(&self, user: &UserId) -> impl Future<Output = Result<Option<AccountRecord>>> + Send;
    /// The record an earlier version keyed by the user's *name* (the Python version, paykey
    /// before records were keyed by `sub`), re-keyed to `user` in memory; `None` if there is
    /// none or it was migrated already. Read only while `user` has no record of its own.
    fn legacy_account(&self, user: &User) -> impl Future<Output = Result<Option<AccountRecord>>> + Send;
    /// Marks the name-keyed record as moved to `user`'s own record (after that was written), so
    /// neither a lookup by name nor by customer finds it again.
    fn retire_legacy_account(&self, user: &User) -> impl Future<Output = Result<()>> + Send;
    /// The account whose Stripe customer is `customer`.
    fn find_account_by_customer(
        &self,
        customer: &CustomerId,
    ) -> impl Future<Output = Result<Option<AccountRecord>>> + Send;
    /// The name of a name-keyed record of an earlier version whose Stripe customer is
    /// `customer` (not migrated yet).
    fn find_legacy_name_by_customer(
        &self,
        customer: &CustomerId,
    ) -> impl Future<Output = Result<Option<UserName>>> + Send;
    /// Locks the user's account record until `until` (or takes over an expired lock).
    fn lock_account(
        &self,
        user: &UserId,
        token: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<AccountLock>> + Send;
    /// Releases the lock if `token` still holds it.
    fn unlock_account(&self, user: &UserId, token: &str) -> impl Future<Output = Result<()>> + Send;
    /// Writes the account record while `token` holds its lock, releasing the lock.
    fn put_account(&self, account: &AccountRecord, token: &str) -> impl Future<Output = Result<Commit>> + Send;
    /// Writes the account record while `token` holds its lock, and keeps the lock (its lease
    /// now ending at `until`): for changes written down before they are made, then made by the
    /// same holder before anyone else can write newer ones.
    fn save_account(
        &self,
        account: &AccountRecord,
        token: &str,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<Commit>> + Send;
}

/// Every account record, for the resync command (full scans; never on a request path).
pub trait AccountListing: Send + Sync {
    /// Every account record (for the resync command; a full scan).
    fn list_accounts(&self) -> impl Future<Output = Result<Vec<AccountRecord>>> + Send;
    /// The names of the name-keyed records of earlier versions not migrated yet (a full scan).
    fn list_legacy_names(&self) -> impl Future<Output = Result<Vec<UserName>>> + Send;
}

/// The Stripe event ids processed already (beside the checkouts, with a TTL).
pub trait ProcessedEvents: Send + Sync {
    /// Whether a Stripe event id was processed already.
    fn event_seen(&self, event_id: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Remembers a processed Stripe event id until `expires_at` (TTL).
    fn mark_event(
        &self,
        event_id: &str,
        event_type: &str,
        expires_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A user's open Checkout Session for one price, as recorded when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCheckout {
    pub session_id: SessionId,
    /// Stripe's hosted page for it, handed out again on a repeated request.
    pub url: String,
    pub created_at: DateTime<Utc>,
    /// When Stripe expires it unpaid (24 hours after creation).
    pub open_until: DateTime<Utc>,
}

/// The one open Checkout Session per user and price (a pointer item beside the sessions),
/// and the short claim that lets one request at a time create the next one.
pub trait OpenCheckouts: Send + Sync {
    /// The user's last recorded checkout for `price_id` (also once past `open_until`), unless
    /// there is none or it was recorded by a version that kept no URL.
    fn open_checkout(&self, user: &UserId, price_id: &str)
        -> impl Future<Output = Result<Option<OpenCheckout>>> + Send;
    /// Takes the right to create the user's next checkout for `price_id` until `until`: only
    /// while no other unexpired claim holds it and the recorded checkout is still `seen` (the
    /// one the caller read, `None` for none), so a request that read before another recorded
    /// a new one cannot replace it (`false` then). Recording a checkout
    /// ([`OpenCheckouts::replace_open_checkout`]) ends the claim.
    fn claim_open_checkout(
        &self,
        user: &UserId,
        price_id: &str,
        seen: Option<&SessionId>,
        token: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Gives the claim back if `token` still holds it (a create that failed).
    fn release_open_checkout(
        &self,
        user: &UserId,
        price_id: &str,
        token: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Records `open` as the user's open checkout for `price_id` and returns the session it
    /// replaces, if any (atomically: of two concurrent calls, one sees the other's session).
    fn replace_open_checkout(
        &self,
        user: &UserId,
        price_id: &str,
        open: &OpenCheckout,
    ) -> impl Future<Output = Result<Option<SessionId>>> + Send;
}

/// A per-caller request budget: `burst` requests at once, then one per `interval` (a token
/// bucket, kept as GCRA's theoretical arrival time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub burst: u32,
    pub interval: std::time::Duration,
}

impl Budget {
    /// GCRA: a request at `now` is admitted when the bucket's theoretical arrival time `tat`
    /// is at most `(burst - 1) × interval` ahead of `now`; the new time is then
    /// `max(tat, now) + interval`. Otherwise, how long until a request is admitted.
    pub fn admit(
        &self,
        tat: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> std::result::Result<DateTime<Utc>, std::time::Duration> {
        let ms = i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX / 4).min(i64::MAX / 4);
        let interval = chrono::Duration::milliseconds(ms);
        let tolerance =
            chrono::Duration::milliseconds(ms.saturating_mul(i64::from(self.burst.max(1)) - 1).min(i64::MAX / 4));
        match tat {
            Some(t) if t > now + tolerance => Err((t - tolerance - now).to_std().unwrap_or_default()),
            Some(t) if t > now => Ok(t + interval),
            _ => Ok(now + interval),
        }
    }
}

/// Per-caller request budgets, shared by every function (beside the checkouts, with a TTL).
pub trait Budgets: Send + Sync {
    /// Spends one request of `bucket`'s `budget` at `now`: `None` when admitted, otherwise how
    /// long until one would be (nothing spent).
    fn spend(
        &self,
        bucket: &str,
        budget: Budget,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<std::time::Duration>>> + Send;
}

/// API keys and the usage plans of the catalog's tiers (API Gateway). All plans serve one API
/// stage, and API Gateway lets a key be in one usage plan per stage: moving a key between
/// tiers is detach from the old plan, then attach to the new one.
pub trait KeyRegistry: Send + Sync {
    /// The keys whose name is exactly `name`.
    fn find_by_name(&self, name: &str) -> impl Future<Output = Result<Vec<IssuedKey>>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<IssuedKey>>> + Send;
    /// Creates an enabled key (no stage keys: the usage plan binds it to the stage).
    fn create(&self, name: &str) -> impl Future<Output = Result<IssuedKey>> + Send;
    fn set_enabled(&self, id: &str, enabled: bool) -> impl Future<Output = Result<()>> + Send;
    /// Attaches the key to the usage plan; attaching twice is not an error. Refused while the
    /// key is attached to another plan (one usage plan per key and stage).
    fn attach_to_plan(&self, id: &str, plan: &str) -> impl Future<Output = Result<()>> + Send;
    /// Detaches the key from the usage plan; detaching a key not in it is not an error.
    fn detach_from_plan(&self, id: &str, plan: &str) -> impl Future<Output = Result<()>> + Send;
    /// The usage plans the key is attached to (API Gateway: `GetUsagePlans?keyId=`).
    fn plans_of(&self, id: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Ids of the keys attached to the usage plan.
    fn plan_key_ids(&self, plan: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The key's use of `plan`'s quota over `start..=end` (UTC dates), as API Gateway's GetUsage
    /// reports it: requests used (summed over the days) and the remaining quota at the end.
    fn usage(
        &self,
        id: &str,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> impl Future<Output = Result<KeyUsage>> + Send;
    /// [`usage`](Self::usage) for showing (the `/account` page): an adapter may answer from a
    /// cache a few seconds old. Never for deciding quota (rotation, the end of a grace).
    fn recent_usage(
        &self,
        id: &str,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> impl Future<Output = Result<KeyUsage>> + Send {
        self.usage(id, plan, start, end)
    }
    /// Requests each key of `plan` served over `start..=end` (UTC dates), summed over the days:
    /// one paginated GetUsage for the whole plan (a key with no data is absent). For the sweep's
    /// reclaim of idle free keys.
    fn plan_usage(
        &self,
        plan: &str,
        start: chrono::NaiveDate,
        end: chrono::NaiveDate,
    ) -> impl Future<Output = Result<std::collections::HashMap<String, u64>>> + Send;
    /// Sets the key's remaining quota on `plan` for the current period (UpdateUsage): a new key
    /// starts at zero use, so a replacement is given its predecessor's remaining quota.
    fn set_remaining(&self, id: &str, plan: &str, remaining: u64) -> impl Future<Output = Result<()>> + Send;
    /// How many API keys the account has in this Region, paykey's or not, enabled or not: what
    /// API Gateway's 10,000-key quota counts (a full listing; for reports, never on a request).
    fn count_keys(&self) -> impl Future<Output = Result<usize>> + Send;
    /// The key's secret value, for showing to its owner. A key's value never changes, so
    /// callers may keep it (`adapters::cached::CachedKeyValues`).
    fn key_value(&self, id: &str) -> impl Future<Output = Result<Option<String>>> + Send;
}

/// A key's use of its plan's quota in a period.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyUsage {
    pub used: u64,
    /// `None` when the plan has no quota (or nothing was reported).
    pub remaining: Option<u64>,
    /// Requests per day from the first day asked for, in order, as GetUsage's daily entries
    /// report them (its documentation shows one entry per day of the range; the in-memory
    /// registry gives one per day up to today). For showing: `used` is the figure to decide on.
    pub days: Vec<u64>,
}

/// User attributes (Cognito).
pub trait UserDirectory: Send + Sync {
    fn get_user(&self, user: &UserName) -> impl Future<Output = Result<Option<UserProfile>>> + Send;
    /// The user whose `custom:stripe_customer_id` is `customer`. Cognito cannot filter on a
    /// custom attribute, so this lists the whole pool: only for records of earlier versions
    /// that carry no customer id (found once, then the account record holds it).
    fn find_by_customer(&self, customer: &CustomerId) -> impl Future<Output = Result<Option<UserName>>> + Send;
    /// Writes `custom:plan_type` and, when given, `custom:stripe_customer_id`.
    fn set_plan(
        &self,
        user: &UserName,
        plan: Plan,
        customer: Option<&CustomerId>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A price found by lookup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceInfo {
    pub id: String,
    pub lookup_key: String,
    /// Amount in the currency's minor unit (JPY has none: 980 means ¥980).
    pub unit_amount: Option<i64>,
    pub currency: String,
    /// How often it recurs (Stripe's `recurring`); `None` for a one-time price.
    pub recurring: Option<Recurring>,
    /// Billed for usage reported to a meter (`recurring.usage_type: metered`): sold without a
    /// quantity.
    pub metered: bool,
    /// A tiered price's tiers in order (`billing_scheme: tiered`); empty for a per-unit price.
    pub tiers: Vec<PriceTier>,
    /// A tiered price's `tiers_mode` is `graduated` (each tier bills the units within it; with
    /// `volume` every unit is billed at the tier the total lands in).
    pub graduated: bool,
}

/// One tier of a tiered price (Stripe's `tiers[]`): units up to `up_to` (`None`: the rest) cost
/// `unit_amount_decimal` each (in the currency's minor unit, a decimal string: "0.5" is half a
/// cent or half a yen), plus `flat_amount` once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PriceTier {
    pub up_to: Option<u64>,
    pub unit_amount_decimal: Option<String>,
    pub flat_amount: Option<i64>,
}

/// A recurring price's billing interval: every `interval_count` `interval`s.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recurring {
    /// `day`, `week`, `month` or `year`.
    pub interval: String,
    pub interval_count: u32,
}

impl Recurring {
    pub fn monthly() -> Self {
        Self { interval: "month".into(), interval_count: 1 }
    }
}

/// What we ask Stripe Checkout for.
#[derive(Debug, Clone)]
pub struct NewCheckout<'a> {
    pub price_id: &'a str,
    /// The price is metered (sold without a quantity: a pay-per-call tier).
    pub price_metered: bool,
    /// A metered price sold beside `price_id` (a tier's overage above its included amount).
    pub overage_price_id: Option<&'a str>,
    pub user: &'a User,
    pub customer: Option<&'a CustomerId>,
    pub success_url: String,
    pub cancel_url: String,
    pub idempotency_key: String,
    /// `subscription_data.trial_period_days`; 0 for none.
    pub trial_days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCheckout {
    pub id: SessionId,
    pub url: String,
}

/// The state of a Checkout Session as Stripe reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutState {
    pub id: SessionId,
    /// `payment_status` is `paid` or `no_payment_required`, and the session is `complete`.
    pub paid: bool,
    pub client_reference_id: Option<String>,
    pub customer: Option<CustomerId>,
    pub subscription: Option<SubscriptionId>,
    /// The subscription as Stripe reported it in the same answer (`expand[]=subscription`): as
    /// old as the session's read, so a caller that must act on the subscription's current state
    /// uses it only when nothing can have changed since (see `flows::complete_checkout`).
    pub subscription_state: Option<SubscriptionState>,
}

/// A subscription's status as Stripe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Active,
    Trialing,
    PastDue,
    Canceled,
    Unpaid,
    Incomplete,
    IncompleteExpired,
    Paused,
    Other(String),
}

impl SubscriptionStatus {
    pub fn as_str(&self) -> &str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "active" => SubscriptionStatus::Active,
            "trialing" => SubscriptionStatus::Trialing,
            "past_due" => SubscriptionStatus::PastDue,
            "canceled" => SubscriptionStatus::Canceled,
            "unpaid" => SubscriptionStatus::Unpaid,
            "incomplete" => SubscriptionStatus::Incomplete,
            "incomplete_expired" => SubscriptionStatus::IncompleteExpired,
            "paused" => SubscriptionStatus::Paused,
            other => SubscriptionStatus::Other(other.to_string()),
        }
    }
}

/// A subscription as Stripe reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub id: SubscriptionId,
    pub customer: CustomerId,
    pub status: SubscriptionStatus,
    pub cancel_at_period_end: bool,
    /// When the subscription ends (if it is set to cancel) or renews.
    pub period_end: Option<DateTime<Utc>>,
    /// `metadata.user_name`, set at checkout.
    pub user_name: Option<String>,
    /// `metadata.user_id` (the user's `sub`), set at checkout; absent on subscriptions started
    /// before records were keyed by `sub`.
    pub user_id: Option<String>,
    /// The lookup key of each item's price, in the subscription's order (`None`: a price without
    /// one). Whether the subscription is paykey's, and the tier it buys, is the catalog's to say
    /// (`Catalog::tier_of_items`): a Stripe account usually sells more than paykey's tiers.
    pub item_lookup_keys: Vec<Option<String>>,
    /// End of the trial, when the subscription has or had one.
    pub trial_end: Option<DateTime<Utc>>,
}

/// What a verified Stripe event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSubject {
    Checkout(SessionId),
    Subscription {
        id: SubscriptionId,
        customer: Option<CustomerId>,
    },
    Invoice {
        subscription: Option<SubscriptionId>,
        customer: Option<CustomerId>,
    },
    /// `invoice.created` for a subscription's new period (`billing_reason: subscription_cycle`),
    /// still a draft: the invoice of the period `period_start..period_end` that just closed
    /// (Stripe bills metered usage in arrears), which Stripe finalizes after the account's grace
    /// period.
    ClosingInvoice {
        subscription: SubscriptionId,
        customer: CustomerId,
        period_start: DateTime<Utc>,
        period_end: DateTime<Utc>,
    },
    Other,
}

/// A Stripe event whose signature was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeEvent {
    pub id: String,
    pub kind: String,
    pub subject: EventSubject,
}

/// Stripe.
pub trait Payments: Send + Sync {
    fn get_subscription(&self, id: &SubscriptionId) -> impl Future<Output = Result<Option<SubscriptionState>>> + Send;
    /// Every subscription of a customer, whatever its status, newest first.
    fn list_subscriptions(&self, customer: &CustomerId) -> impl Future<Output = Result<Vec<SubscriptionState>>> + Send;
    fn find_price(&self, lookup_key: &LookupKey) -> impl Future<Output = Result<Option<PriceInfo>>> + Send;
    fn create_checkout(&self, req: NewCheckout<'_>) -> impl Future<Output = Result<CreatedCheckout>> + Send;
    fn get_checkout(&self, id: &SessionId) -> impl Future<Output = Result<Option<CheckoutState>>> + Send;
    /// A billing portal session for `customer` in paykey's own portal `configuration`
    /// (`bpc_…`, from `paykey-setup`): Stripe's default configuration is the Dashboard's, not
    /// the one paykey set up.
    fn create_portal(
        &self,
        customer: &CustomerId,
        configuration: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<String>> + Send;
    /// Expires an open Checkout Session so it can no longer be paid. `false` when it was not
    /// open any more (completed or expired already).
    fn expire_checkout(&self, id: &SessionId) -> impl Future<Output = Result<bool>> + Send;
    /// A second subscription of a user who already has one: cancels it now (no proration) and
    /// refunds what its latest invoice charged, through a credit note. Idempotent: a
    /// cancelled subscription is not cancelled again, a credited invoice not credited again.
    fn cancel_duplicate(&self, id: &SubscriptionId) -> impl Future<Output = Result<DuplicateCancelled>> + Send;
}

/// What [`Payments::cancel_duplicate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateCancelled {
    /// Amount refunded by this call, in the currency's minor unit (0 when nothing was left).
    pub refunded: i64,
}

/// Operator operations (`paykey-admin`), beside the ports the functions use. No function calls
/// them, and no function's role grants them (an operator's credentials do) — except
/// [`admin::KeyDeletion`], which the sweep also uses to reclaim idle free keys.
pub mod admin {
    use std::future::Future;

    use super::{Commit, Result};
    use crate::domain::{CustomerId, SubscriptionId, UserId, UserName};

    /// Deleting a user's account record.
    pub trait AccountErasure: super::Accounts {
        /// Deletes the record (keyed by `sub`) while `token` holds its lock.
        fn delete_account(&self, user: &UserId, token: &str) -> impl Future<Output = Result<Commit>> + Send;
        /// Deletes the record an earlier version keyed by the user's name, migrated or not (never
        /// a record keyed by `sub`).
        fn delete_legacy_account(&self, name: &UserName) -> impl Future<Output = Result<()>> + Send;
    }

    /// Deleting API keys.
    pub trait KeyDeletion: super::KeyRegistry {
        /// Deletes the key (`DeleteApiKey`); a key that does not exist is deleted already.
        fn delete_key(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    }

    /// Finding and deleting users in the directory.
    pub trait DirectoryAdmin: super::UserDirectory {
        /// The names of the users with this email address (Cognito `ListUsers`, `email = "…"`).
        fn find_by_email(&self, email: &str) -> impl Future<Output = Result<Vec<UserName>>> + Send;
        /// The name of the user with this `sub`.
        fn find_by_sub(&self, sub: &UserId) -> impl Future<Output = Result<Option<UserName>>> + Send;
        /// The user's email address, if the directory has one.
        fn email_of(&self, user: &UserName) -> impl Future<Output = Result<Option<String>>> + Send;
        /// Deletes the user (`AdminDeleteUser`); a user that does not exist is deleted already.
        fn remove_user(&self, user: &UserName) -> impl Future<Output = Result<()>> + Send;
    }

    /// Cancelling subscriptions and deleting customers.
    pub trait PaymentsAdmin: super::Payments {
        /// Cancels the subscription now (no proration, no refund); one cancelled already stays so.
        fn cancel_subscription(&self, id: &SubscriptionId) -> impl Future<Output = Result<()>> + Send;
        /// Deletes the customer (Stripe also cancels every subscription it still has, of any
        /// product); one that does not exist is deleted already.
        fn delete_customer(&self, id: &CustomerId) -> impl Future<Output = Result<()>> + Send;
    }
}

/// Usage-based billing: what the usage reporter reads and writes beside the other ports.
pub mod metering {
    use std::future::Future;

    use chrono::{DateTime, NaiveDate, Utc};

    use super::Result;
    use crate::domain::CustomerId;

    /// One customer's calls on one UTC day, as one Stripe meter event. paykey's meter
    /// pre-aggregates by day (`event_time_window: day`): Stripe keeps, per customer and UTC day
    /// of the event's timestamp, only the most recently received event — so a day's total sent
    /// again *replaces* the earlier one, it never adds to it (Stripe's "Record usage for billing":
    /// "A newer event sent within the same hourly or daily window overwrites the previous one").
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MeterEvent {
        pub event_name: String,
        pub customer: CustomerId,
        pub day: NaiveDate,
        pub value: u64,
        /// When this send was decided (Unix seconds of the run's clock): part of the
        /// identifier, so each send is a new event that replaces the day's value.
        pub sent_at: i64,
    }

    impl MeterEvent {
        /// The event's timestamp: the day's last second, so the whole day falls in the billing
        /// period that contains its end (the day a period ends in is billed in the next one).
        pub fn timestamp(&self) -> DateTime<Utc> {
            self.day.and_hms_opt(23, 59, 59).expect("a valid time").and_utc()
        }

        /// Unique per customer, day, total and send: retries of one send (the same
        /// identifier and idempotency key) count once, and every later send is a new event that
        /// replaces the day's value — the day's value is the total Stripe *received* last
        /// (Stripe's rule), so a total that went back down, or a refusal of a seen identifier,
        /// cannot pin an old value once a later send arrives. A stale total that arrives after
        /// the last send (an overlapping sender) stays. At most 100 characters (a digest of the
        /// whole beyond that).
        pub fn identifier(&self) -> String {
            let id = format!("paykey-{}-{}-{}-{}", self.customer, self.day.format("%Y%m%d"), self.value, self.sent_at);
            if id.len() <= 100 {
                return id;
            }
            // A long customer id: a digest of the whole (cutting would drop the total and the
            // send time, and two sends would share an identifier).
            use sha2::Digest;
            format!("paykey-{}", hex::encode(sha2::Sha256::digest(id.as_bytes())))
        }
    }

    /// Stripe Billing Meters.
    pub trait UsageMeter: Send + Sync {
        /// Sends the event (`POST /v1/billing/meter_events`).
        fn send_meter_event(&self, event: &MeterEvent) -> impl Future<Output = Result<()>> + Send;
        /// Whether the active meter with this event name sums daily totals that replace each
        /// other (`default_aggregation.formula: sum`, `event_time_window: day`): `None` when no
        /// active meter has it. paykey's events are only right on such a meter (on a meter
        /// without the daily window, every resend of a day would add to the bill).
        fn meter_sums_days(&self, event_name: &str) -> impl Future<Output = Result<Option<bool>>> + Send;
    }

    /// How far the usage reporter has reported: every day up to and including it was sent after
    /// it had settled (API Gateway's daily counts arrive late), so it is final at Stripe.
    pub trait UsageCursor: Send + Sync {
        fn reported_through(&self) -> impl Future<Output = Result<Option<NaiveDate>>> + Send;
        /// Moves the cursor forward to `day`; never back (a slower run that finishes after a
        /// faster one leaves the later day).
        fn set_reported_through(&self, day: NaiveDate) -> impl Future<Output = Result<()>> + Send;
    }
}

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub trait Ids: Send + Sync {
    fn one_time_key(&self) -> OneTimeKey;
    /// A fresh lease token.
    fn token(&self) -> String;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Random uuid v4 ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn one_time_key(&self) -> OneTimeKey {
        OneTimeKey::new_random()
    }
    fn token(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}
