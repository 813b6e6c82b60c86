use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CustomerId, OneTimeKey, SessionId, SubscriptionId, User, UserId, UserName};

/// The plan a user is on, as written to `custom:plan_type` and the API keys table (`Type`): the
/// name of a catalog tier (`FREE`, `PRO`, `BUSINESS`, …; see [`super::Catalog`]). `FREE` and
/// `PRO` are the names a deployment configured like the Python version's uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Plan(Cow<'static, str>);

impl Plan {
    /// No subscription (and, without a free tier in the catalog, no key).
    pub const FREE: Plan = Plan(Cow::Borrowed("FREE"));
    /// The single paid tier of a deployment without a catalog.
    pub const PRO: Plan = Plan(Cow::Borrowed("PRO"));

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The plan a catalog tier names.
    pub fn of(tier: &super::TierName) -> Self {
        Plan(Cow::Owned(tier.as_str().to_string()))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plan {
    type Err = String;
    /// A tier name; lower case is read as upper case (`pro` → `PRO`, as the Python version
    /// accepted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.to_ascii_uppercase();
        super::TierName::parse(&upper).map(|t| Plan::of(&t)).map_err(|_| format!("unknown plan {s:?}"))
    }
}

impl TryFrom<String> for Plan {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Plan> for String {
    fn from(p: Plan) -> String {
        p.0.into_owned()
    }
}

/// Where a checkout stands in the sessions table (`Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckoutStatus {
    /// Created; nobody has started fulfilling it.
    Pending,
    /// Claimed by a fulfilment attempt holding the lease.
    Issuing,
    /// Key issued, user updated: done.
    Fulfilled,
}

impl CheckoutStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckoutStatus::Pending => "PENDING",
            CheckoutStatus::Issuing => "ISSUING",
            CheckoutStatus::Fulfilled => "FULFILLED",
        }
    }
}

impl FromStr for CheckoutStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PENDING" => Ok(CheckoutStatus::Pending),
            "ISSUING" => Ok(CheckoutStatus::Issuing),
            "FULFILLED" => Ok(CheckoutStatus::Fulfilled),
            other => Err(format!("unknown checkout status {other:?}")),
        }
    }
}

/// One row of the sessions table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRecord {
    pub session_id: SessionId,
    /// The user's `sub`; `None` for sessions the Python version wrote (found by name).
    pub user_id: Option<UserId>,
    pub user_name: UserName,
    pub one_time_key: OneTimeKey,
    pub paid: bool,
    pub status: CheckoutStatus,
    /// Fulfilment lease: who holds it and until when (only while `Issuing`).
    pub lease: Option<(String, DateTime<Utc>)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// DynamoDB TTL.
    pub expires_at: DateTime<Utc>,
}

/// One row of the API keys table: the user's plan and the id (not the value) of their key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The key of the record (the user's `sub`).
    pub user_id: UserId,
    /// The user's name when the record was written (for the directory's admin calls).
    pub user_name: UserName,
    pub plan: Plan,
    pub api_key_id: Option<String>,
    pub customer_id: Option<CustomerId>,
    pub subscription_id: Option<SubscriptionId>,
    pub subscription_status: Option<String>,
    /// The subscription ends at `period_end` instead of renewing.
    pub cancel_at_period_end: bool,
    /// End of the current period (renewal or, with `cancel_at_period_end`, the end).
    pub period_end: Option<DateTime<Utc>>,
    /// First time the subscription was seen `past_due` (grace period start).
    pub past_due_since: Option<DateTime<Utc>>,
    /// End of the subscription's trial, when it has or had one.
    #[serde(default)]
    pub trial_end: Option<DateTime<Utc>>,
    /// The key a rotation replaced, still working until `previous_key_until` (its grace).
    #[serde(default)]
    pub previous_key_id: Option<String>,
    #[serde(default)]
    pub previous_key_until: Option<DateTime<Utc>>,
    /// Only in records of graces begun before quota was split between the keys: the old key's
    /// remaining quota when it was rotated out (what the new key got too). At the end of such a
    /// grace, what the old key used meanwhile is taken from the new key.
    #[serde(default)]
    pub previous_key_remaining: Option<u64>,
    /// The first day of the quota period the grace's quota split was made for: when a grace
    /// runs into the next period, API Gateway gives both keys the whole quota again, and the
    /// sweep splits it anew.
    #[serde(default)]
    pub previous_key_period_start: Option<chrono::NaiveDate>,
    /// The rotations of the last 24 hours (for the per-day limit).
    #[serde(default)]
    pub recent_rotations: Vec<DateTime<Utc>>,
    /// The rotations answered in the last [`RotationAnswer::KEPT_FOR`], by request id: a retried
    /// request gets its first answer, never a second rotation.
    #[serde(default)]
    pub rotation_answers: Vec<RotationAnswer>,
    /// Key changes written here before they are made (see [`KeyWork`]); done again by the next
    /// holder of the account lock, which changes nothing if they were done.
    #[serde(default)]
    pub pending_key_work: Option<KeyWork>,
    /// The paid tier the recorded subscription buys, as of the last time it was read from Stripe
    /// (`None`: it buys none, or the record predates this field). What the user falls back to
    /// when a complimentary tier ends, without a Stripe read.
    #[serde(default)]
    pub subscription_plan: Option<Plan>,
    /// A complimentary tier an operator granted (`paykey-admin comp`), honoured by the webhooks,
    /// the resync and fulfilment until it ends; the sweep ends it.
    #[serde(default)]
    pub comp: Option<Comp>,
    /// Set by an operator (`paykey-admin suspend`): every key of the user stays disabled, and no
    /// key is issued, rotated or sold to them, whatever Stripe says, until it is lifted.
    #[serde(default)]
    pub suspension: Option<Suspension>,
    /// The customer's own spend cap on a metered tier (`PUT /api-key/cap`): the calls a quota
    /// period may serve, below the tier's quota (its default and highest cap). Applies while
    /// the user is on `plan`; `None`: the tier's quota.
    #[serde(default)]
    pub spend_cap: Option<SpendCap>,
    pub updated_at: DateTime<Utc>,
}

/// A spend cap: API Gateway gives every key its plan's whole quota again at the start of each
/// quota period, so the cap is applied to the key (UpdateUsage) once per period —
/// `period_start` says for which period it was last applied (the sweep applies it to the next).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendCap {
    pub plan: Plan,
    /// Calls per quota period, at least the tier's included amount.
    pub requests: u64,
    pub period_start: Option<chrono::NaiveDate>,
}

/// A complimentary tier: the user is on `plan` until `until`, unless a subscription buys them a
/// paid tier (then they are on what they pay for; the comp still applies if that ends first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comp {
    pub plan: Plan,
    pub until: DateTime<Utc>,
    pub granted_at: DateTime<Utc>,
    /// The operator's note (why), shown by `paykey-admin show`.
    #[serde(default)]
    pub note: String,
}

impl Comp {
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        self.until > now
    }
}

/// An operator's suspension of a user's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub since: DateTime<Utc>,
    pub reason: String,
}

impl AccountRecord {
    /// A FREE record with nothing else known.
    pub fn new(user: &User, updated_at: DateTime<Utc>) -> Self {
        Self {
            user_id: user.id.clone(),
            user_name: user.name.clone(),
            plan: Plan::FREE,
            api_key_id: None,
            customer_id: None,
            subscription_id: None,
            subscription_status: None,
            cancel_at_period_end: false,
            period_end: None,
            past_due_since: None,
            trial_end: None,
            previous_key_id: None,
            previous_key_until: None,
            previous_key_remaining: None,
            previous_key_period_start: None,
            recent_rotations: Vec::new(),
            rotation_answers: Vec::new(),
            pending_key_work: None,
            subscription_plan: None,
            comp: None,
            suspension: None,
            spend_cap: None,
            updated_at,
        }
    }
}

/// One answered rotation, remembered so that a retry of the request is answered the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationAnswer {
    pub request_id: String,
    /// The key the answer handed out.
    pub api_key_id: String,
    pub previous_key_id: String,
    pub previous_key_until: DateTime<Utc>,
    /// When it was answered.
    pub at: DateTime<Utc>,
}

impl RotationAnswer {
    /// How long an answer is remembered: longer than any client's retry (a day), with an hour
    /// to spare for clocks and queues.
    pub const KEPT_FOR: chrono::Duration = chrono::Duration::hours(25);
}

/// Quota and key changes for one user's keys, written to the account record (under the lock)
/// before they are made, so that a crash or an error between the two is finished by a retry
/// instead of being lost or done twice.
///
/// API Gateway's UpdateUsage sets a key's *remaining* quota outright, so doing it twice would
/// give back what the key used in between. A target here is therefore stated against what the key
/// had used when it was computed: applied at any later time in the same period it sets
/// `remaining − (used now − used then)`, the same quota whenever (and however often) it is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWork {
    /// The usage plan the targets are in, and the first day of the quota period they are for (in
    /// a later period the plan's full quota applies again: targets are skipped).
    pub plan: Option<String>,
    pub period_start: Option<chrono::NaiveDate>,
    pub targets: Vec<QuotaTarget>,
    /// Keys to disable and detach from every usage plan (first: a disabled key serves nothing).
    pub retire: Vec<String>,
}

/// A key's remaining quota for the period, as of when the `counted` keys had used what they
/// list: whatever they use after that comes off it (the key itself, and a key that keeps serving
/// until it is retired, whose quota this one takes over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaTarget {
    pub key_id: String,
    pub remaining: u64,
    /// (key id, requests it had used in the period).
    pub counted: Vec<(String, u64)>,
}

/// What the user directory (Cognito) knows about a user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserProfile {
    /// The `sub` of the user who holds the name now.
    pub sub: Option<UserId>,
    pub plan: Option<Plan>,
    pub customer_id: Option<CustomerId>,
}

impl UserProfile {
    /// Whether this profile is `user`'s: the name is held by the same `sub`. A name freed by a
    /// deleted user and taken by someone else is not.
    pub fn is(&self, user: &User) -> bool {
        self.sub.as_ref() == Some(&user.id)
    }

    pub fn plan(&self) -> Plan {
        self.plan.clone().unwrap_or(Plan::FREE)
    }
}

impl AccountRecord {
    pub fn user(&self) -> User {
        User { id: self.user_id.clone(), name: self.user_name.clone() }
    }
}

/// An API key in the key registry (API Gateway), without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    pub id: String,
    pub name: String,
    pub enabled: bool,
}
