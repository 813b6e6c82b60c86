use std::collections::HashMap;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};

use super::{describe, OnFirstUse};
use crate::adapters::https::Connector;
use crate::config::Tables;
use crate::domain::{
    AccountRecord, BackendError, CheckoutRecord, CheckoutStatus, CustomerId, OneTimeKey, Plan, SessionId,
    SubscriptionId, User, UserId, UserName,
};
use crate::ports::{
    AccountListing, AccountLock, Accounts, Budget, Budgets, Checkouts, Claim, Commit, OpenCheckout, OpenCheckouts,
    ProcessedEvents, Result,
};

const SERVICE: &str = "dynamodb";
/// Global secondary index of the API keys table on `StripeCustomerId` (for webhooks whose
/// subscription carries no user name).
pub const CUSTOMER_INDEX: &str = "StripeCustomerId-index";
/// Processed Stripe events live in the sessions table under this key prefix, with a TTL.
const EVENT_PREFIX: &str = "EVENT#";
/// The user's open Checkout Session per price lives in the sessions table under this prefix.
const OPEN_CHECKOUT_PREFIX: &str = "OPEN#";
/// Per-caller request budgets live in the sessions table under this prefix, with a TTL.
const BUDGET_PREFIX: &str = "BUDGET#";
/// The usage reporter's cursor: one item of the sessions table.
const USAGE_CURSOR_KEY: &str = "USAGE#reported-through";
/// How often a transaction that DynamoDB cancelled for a conflict with another one is tried.
const TRANSACTION_ATTEMPTS: u32 = 4;
type Item = HashMap<String, AttributeValue>;

/// Sessions table (`DYNAMODB_STRIPE_TABLE`, key `SessionID`) and API keys table
/// (`DYNAMODB_API_KEY_TABLE`, key `UserID`), attribute names kept from the Python version.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: OnFirstUse<Client>,
    tables: Tables,
}

impl DynamoStore {
    pub fn new(config: &aws_config::SdkConfig, tables: Tables) -> Self {
        Self { client: OnFirstUse::new(config, Client::new), tables }
    }

    pub fn from_client(client: Client, tables: Tables) -> Self {
        Self { client: OnFirstUse::built(client), tables }
    }

    /// Opens `count` connections to DynamoDB's endpoint in the background (the client built
    /// there too), for a first request's calls in one wave. The endpoint is the one a `GetItem`
    /// on the sessions table resolves to (an operation the adapter already makes: no other
    /// operation's code is linked in).
    pub fn open_early(&self, connector: &Connector, count: usize) {
        let (client, table) = (self.client.clone(), self.tables.sessions.clone());
        super::open_early(connector, count, move |only| async move {
            let get = client.get().get_item().table_name(table).key("SessionId", s(""));
            let _ = get.customize().interceptor(only).send().await;
        });
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn ts(t: DateTime<Utc>) -> AttributeValue {
    AttributeValue::S(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn epoch(t: DateTime<Utc>) -> AttributeValue {
    AttributeValue::N(t.timestamp().to_string())
}

fn bad(op: &'static str, what: impl Into<String>) -> BackendError {
    BackendError::new(SERVICE, op, format!("malformed item: {}", what.into()))
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn req_s<'a>(item: &'a Item, name: &str, op: &'static str) -> Result<&'a str> {
    get_s(item, name).ok_or_else(|| bad(op, format!("{name} missing")))
}

fn get_time(item: &Item, name: &str, op: &'static str) -> Result<DateTime<Utc>> {
    let v = req_s(item, name, op)?;
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| bad(op, format!("{name} is not RFC 3339")))
}

fn get_epoch(item: &Item, name: &str) -> Option<DateTime<Utc>> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<i64>().ok())
        .and_then(|n| DateTime::from_timestamp(n, 0))
}

fn session_item(r: &CheckoutRecord) -> Item {
    let mut item = HashMap::from([
        ("SessionID".to_string(), s(r.session_id.as_str())),
        ("UserName".to_string(), s(r.user_name.as_str())),
        ("OneTimeKey".to_string(), s(r.one_time_key.to_string())),
        ("PaidFlag".to_string(), AttributeValue::Bool(r.paid)),
        ("Status".to_string(), s(r.status.as_str())),
        ("CreatedAt".to_string(), ts(r.created_at)),
        ("UpdatedAt".to_string(), ts(r.updated_at)),
        ("ExpiresAt".to_string(), epoch(r.expires_at)),
    ]);
    if let Some(id) = &r.user_id {
        item.insert("UserSub".to_string(), s(id.as_str()));
    }
    if let Some((token, until)) = &r.lease {
        item.insert("LeaseToken".to_string(), s(token.clone()));
        item.insert("LeaseUntil".to_string(), AttributeValue::N(until.timestamp_millis().to_string()));
    }
    item
}

fn session_from_item(item: &Item, op: &'static str) -> Result<CheckoutRecord> {
    let lease = match (get_s(item, "LeaseToken"), item.get("LeaseUntil").and_then(|v| v.as_n().ok())) {
        (Some(t), Some(n)) => {
            let ms = n.parse::<i64>().map_err(|_| bad(op, "LeaseUntil"))?;
            Some((t.to_string(), DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(op, "LeaseUntil"))?))
        }
        _ => None,
    };
    Ok(CheckoutRecord {
        session_id: SessionId::parse(req_s(item, "SessionID", op)?).map_err(|e| bad(op, e.to_string()))?,
        user_id: get_s(item, "UserSub").map(UserId::parse).transpose().map_err(|e| bad(op, e.to_string()))?,
        user_name: UserName::parse(req_s(item, "UserName", op)?).map_err(|e| bad(op, e.to_string()))?,
        one_time_key: OneTimeKey::parse(req_s(item, "OneTimeKey", op)?).map_err(|e| bad(op, e.to_string()))?,
        paid: item.get("PaidFlag").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
        // Sessions written by the Python version have no Status: they are pending (a fulfilled
        // one has PaidFlag and an issued key, and fulfilment is idempotent on the key name).
        status: get_s(item, "Status").unwrap_or("PENDING").parse::<CheckoutStatus>().map_err(|e| bad(op, e))?,
        lease,
        // Python-era sessions carry neither timestamps nor a TTL.
        created_at: opt_time(item, "CreatedAt", op)?.unwrap_or(DateTime::UNIX_EPOCH),
        updated_at: opt_time(item, "UpdatedAt", op)?
            .or(opt_time(item, "CreatedAt", op)?)
            .unwrap_or(DateTime::UNIX_EPOCH),
        expires_at: get_epoch(item, "ExpiresAt").unwrap_or(DateTime::<Utc>::MAX_UTC),
    })
}

fn account_item(a: &AccountRecord) -> Item {
    let mut item = HashMap::from([
        // Keyed by the immutable sub; UserSub marks a record of this scheme (the Python
        // version and earlier paykey keyed UserID by the user name).
        ("UserID".to_string(), s(a.user_id.as_str())),
        ("UserSub".to_string(), s(a.user_id.as_str())),
        ("UserName".to_string(), s(a.user_name.as_str())),
        ("Type".to_string(), s(a.plan.as_str())),
        ("UpdatedAt".to_string(), ts(a.updated_at)),
    ]);
    let optional = [
        ("ApiKeyId", a.api_key_id.clone()),
        ("StripeCustomerId", a.customer_id.as_ref().map(|c| c.to_string())),
        ("StripeSubscriptionId", a.subscription_id.as_ref().map(|c| c.to_string())),
        ("SubscriptionStatus", a.subscription_status.clone()),
        ("PeriodEnd", a.period_end.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))),
        ("PastDueSince", a.past_due_since.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))),
        ("TrialEnd", a.trial_end.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))),
        ("PreviousKeyId", a.previous_key_id.clone()),
        ("PreviousKeyUntil", a.previous_key_until.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))),
        ("PreviousKeyRemaining", a.previous_key_remaining.map(|n| n.to_string())),
        ("PreviousKeyPeriodStart", a.previous_key_period_start.map(|d| d.format("%Y-%m-%d").to_string())),
        (
            "RecentRotations",
            (!a.recent_rotations.is_empty()).then(|| {
                a.recent_rotations
                    .iter()
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        ),
        (
            "RotationAnswers",
            (!a.rotation_answers.is_empty())
                .then(|| serde_json::to_string(&a.rotation_answers).expect("plain data serializes")),
        ),
        (
            "PendingKeyWork",
            a.pending_key_work.as_ref().map(|w| serde_json::to_string(w).expect("plain data serializes")),
        ),
        ("SubscriptionPlan", a.subscription_plan.as_ref().map(|p| p.to_string())),
        ("Comp", a.comp.as_ref().map(|c| serde_json::to_string(c).expect("plain data serializes"))),
        ("Suspension", a.suspension.as_ref().map(|c| serde_json::to_string(c).expect("plain data serializes"))),
        ("SpendCap", a.spend_cap.as_ref().map(|c| serde_json::to_string(c).expect("plain data serializes"))),
    ];
    item.insert("CancelAtPeriodEnd".to_string(), AttributeValue::Bool(a.cancel_at_period_end));
    for (k, v) in optional {
        if let Some(v) = v {
            item.insert(k.to_string(), s(v));
        }
    }
    item
}

fn opt_time(item: &Item, name: &str, op: &'static str) -> Result<Option<DateTime<Utc>>> {
    match get_s(item, name) {
        None => Ok(None),
        Some(_) => get_time(item, name, op).map(Some),
    }
}

/// The record in an API keys item keyed by sub; `None` for an item that only holds a lock
/// or a name-keyed item of an earlier version.
fn account_from_item_opt(item: &Item, op: &'static str) -> Result<Option<AccountRecord>> {
    match get_s(item, "UserSub") {
        Some(sub) if item.contains_key("Type") => {
            let id = UserId::parse(sub).map_err(|e| bad(op, e.to_string()))?;
            let name = UserName::parse(req_s(item, "UserName", op)?).map_err(|e| bad(op, e.to_string()))?;
            account_from_item(item, id, name, op).map(Some)
        }
        _ => Ok(None),
    }
}

/// A name-keyed item of an earlier version (no UserSub), not migrated yet.
fn is_legacy_account(item: &Item) -> bool {
    item.contains_key("Type") && !item.contains_key("UserSub") && !item.contains_key("MigratedTo")
}

fn account_from_item(item: &Item, user_id: UserId, user_name: UserName, op: &'static str) -> Result<AccountRecord> {
    Ok(AccountRecord {
        user_id,
        user_name,
        plan: get_s(item, "Type").unwrap_or("FREE").parse::<Plan>().map_err(|e| bad(op, e))?,
        api_key_id: get_s(item, "ApiKeyId").map(str::to_string),
        customer_id: get_s(item, "StripeCustomerId")
            .map(CustomerId::parse)
            .transpose()
            .map_err(|e| bad(op, e.to_string()))?,
        subscription_id: get_s(item, "StripeSubscriptionId")
            .map(SubscriptionId::parse)
            .transpose()
            .map_err(|e| bad(op, e.to_string()))?,
        subscription_status: get_s(item, "SubscriptionStatus").map(str::to_string),
        cancel_at_period_end: item.get("CancelAtPeriodEnd").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
        period_end: opt_time(item, "PeriodEnd", op)?,
        past_due_since: opt_time(item, "PastDueSince", op)?,
        trial_end: opt_time(item, "TrialEnd", op)?,
        previous_key_id: get_s(item, "PreviousKeyId").map(str::to_string),
        previous_key_until: opt_time(item, "PreviousKeyUntil", op)?,
        previous_key_remaining: get_s(item, "PreviousKeyRemaining")
            .map(|n| n.parse::<u64>().map_err(|e| bad(op, format!("PreviousKeyRemaining: {e}"))))
            .transpose()?,
        previous_key_period_start: get_s(item, "PreviousKeyPeriodStart")
            .map(|d| {
                chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|e| bad(op, format!("PreviousKeyPeriodStart: {e}")))
            })
            .transpose()?,
        recent_rotations: match get_s(item, "RecentRotations") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|t| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(op, format!("RecentRotations: {e}")))?,
        },
        // (records of earlier versions remember one request id in `RotationRequest`, without its
        // answer: not read, so such a retry rotates again once)
        rotation_answers: match get_s(item, "RotationAnswers") {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| bad(op, format!("RotationAnswers: {e}")))?,
        },
        pending_key_work: get_s(item, "PendingKeyWork")
            .map(|json| serde_json::from_str(json).map_err(|e| bad(op, format!("PendingKeyWork: {e}"))))
            .transpose()?,
        subscription_plan: get_s(item, "SubscriptionPlan")
            .map(|p| p.parse::<Plan>().map_err(|e| bad(op, e)))
            .transpose()?,
        comp: get_s(item, "Comp")
            .map(|json| serde_json::from_str(json).map_err(|e| bad(op, format!("Comp: {e}"))))
            .transpose()?,
        suspension: get_s(item, "Suspension")
            .map(|json| serde_json::from_str(json).map_err(|e| bad(op, format!("Suspension: {e}"))))
            .transpose()?,
        spend_cap: get_s(item, "SpendCap")
            .map(|json| serde_json::from_str(json).map_err(|e| bad(op, format!("SpendCap: {e}"))))
            .transpose()?,
        // Records written by the Python version have no UpdatedAt.
        updated_at: get_time(item, "UpdatedAt", op).unwrap_or(DateTime::UNIX_EPOCH),
    })
}

impl Checkouts for DynamoStore {
    async fn put_new(&self, record: &CheckoutRecord) -> Result<()> {
        const OP: &str = "PutItem(session)";
        self.client
            .get()
            .put_item()
            .table_name(&self.tables.sessions)
            .set_item(Some(session_item(record)))
            .condition_expression("attribute_not_exists(SessionID)")
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(())
    }

    async fn get(&self, id: &SessionId) -> Result<Option<CheckoutRecord>> {
        const OP: &str = "GetItem(session)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        out.item.as_ref().map(|i| session_from_item(i, OP)).transpose()
    }

    async fn claim(
        &self,
        id: &SessionId,
        token: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim> {
        const OP: &str = "UpdateItem(claim)";
        let res = self
            .client.get()
            .update_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(id.as_str()))
            .update_expression("SET #st = :issuing, LeaseToken = :tok, LeaseUntil = :until, UpdatedAt = :now")
            .condition_expression(
                // A session without Status was written by the Python version: pending.
                "attribute_exists(SessionID) AND (attribute_not_exists(#st) OR #st = :pending OR (#st = :issuing AND LeaseUntil < :nowms))",
            )
            .expression_attribute_names("#st", "Status")
            .expression_attribute_values(":issuing", s(CheckoutStatus::Issuing.as_str()))
            .expression_attribute_values(":pending", s(CheckoutStatus::Pending.as_str()))
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":until", AttributeValue::N(lease_until.timestamp_millis().to_string()))
            .expression_attribute_values(":nowms", AttributeValue::N(now.timestamp_millis().to_string()))
            .expression_attribute_values(":now", ts(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let item = out.attributes.ok_or_else(|| bad(OP, "no attributes returned"))?;
                Ok(Claim::Acquired { token: token.to_string(), record: session_from_item(&item, OP)? })
            }
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                // The item as it stood when the condition failed. If it carries our own token,
                // the SDK retried a request whose first attempt succeeded (its response was
                // lost): the lease is ours.
                let old = match e.as_service_error() {
                    Some(
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c),
                    ) => c.item().cloned(),
                    _ => None,
                };
                let current = match old {
                    Some(item) => Some(session_from_item(&item, OP)?),
                    None => self.get(id).await?,
                };
                Ok(match current {
                    None => Claim::Missing,
                    Some(r) if r.status == CheckoutStatus::Fulfilled => Claim::AlreadyFulfilled,
                    Some(r)
                        if r.status == CheckoutStatus::Issuing && r.lease.as_ref().is_some_and(|(t, _)| t == token) =>
                    {
                        Claim::Acquired { token: token.to_string(), record: r }
                    }
                    Some(_) => Claim::Busy,
                })
            }
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn release_claim(&self, id: &SessionId, token: &str) -> Result<()> {
        const OP: &str = "UpdateItem(release claim)";
        let res = self
            .client
            .get()
            .update_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(id.as_str()))
            .update_expression("SET #st = :pending REMOVE LeaseToken, LeaseUntil")
            .condition_expression("#st = :issuing AND LeaseToken = :tok")
            .expression_attribute_names("#st", "Status")
            .expression_attribute_values(":pending", s(CheckoutStatus::Pending.as_str()))
            .expression_attribute_values(":issuing", s(CheckoutStatus::Issuing.as_str()))
            .expression_attribute_values(":tok", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn fulfil(&self, id: &SessionId, token: &str, account: &AccountRecord, now: DateTime<Utc>) -> Result<Commit> {
        const OP: &str = "TransactWriteItems(fulfil)";
        let update = Update::builder()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(id.as_str()))
            .update_expression(
                "SET #st = :fulfilled, PaidFlag = :paid, UpdatedAt = :now, FulfilledBy = :tok REMOVE LeaseToken, LeaseUntil",
            )
            .condition_expression("#st = :issuing AND LeaseToken = :tok")
            .expression_attribute_names("#st", "Status")
            .expression_attribute_values(":fulfilled", s(CheckoutStatus::Fulfilled.as_str()))
            .expression_attribute_values(":issuing", s(CheckoutStatus::Issuing.as_str()))
            .expression_attribute_values(":paid", AttributeValue::Bool(true))
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":now", ts(now))
            .build()
            .map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        let put = Put::builder()
            .table_name(&self.tables.api_keys)
            .set_item(Some(account_item(account)))
            .condition_expression("LockToken = :tok")
            .expression_attribute_values(":tok", s(token))
            .build()
            .map_err(|e| BackendError::new(SERVICE, OP, e.to_string()))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = self
                .client
                .get()
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update.clone()).build())
                .transact_items(TransactWriteItem::builder().put(put.clone()).build())
                .send()
                .await;
            let e = match res {
                Ok(_) => return Ok(Commit::Done),
                Err(e) => e,
            };
            let reasons: Vec<String> = match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t)) => {
                    t.cancellation_reasons().iter().filter_map(|r| r.code().map(str::to_string)).collect()
                }
                _ => Vec::new(),
            };
            if reasons.iter().any(|r| r == "ConditionalCheckFailed") {
                // Either the lease was lost, or the SDK retried a transaction whose first attempt
                // committed (its response lost): then the session is FULFILLED by our token.
                return Ok(if self.fulfilled_by(id).await?.as_deref() == Some(token) {
                    Commit::Done
                } else {
                    Commit::LeaseLost
                });
            }
            if reasons.iter().any(|r| r == "TransactionConflict") && attempt < TRANSACTION_ATTEMPTS {
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
                continue;
            }
            let msg = e.as_service_error().and_then(|se| se.message()).map(str::to_string);
            return Err(BackendError::new(SERVICE, OP, msg.unwrap_or_else(|| describe(&e))));
        }
    }
}

impl Accounts for DynamoStore {
    async fn get_account(&self, user: &UserId) -> Result<Option<AccountRecord>> {
        const OP: &str = "GetItem(account)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.api_keys)
            .key("UserID", s(user.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        match out.item.as_ref() {
            Some(i) => account_from_item_opt(i, OP),
            None => Ok(None),
        }
    }

    async fn legacy_account(&self, user: &User) -> Result<Option<AccountRecord>> {
        const OP: &str = "GetItem(legacy account)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.api_keys)
            .key("UserID", s(user.name.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        match out.item {
            Some(item) if is_legacy_account(&item) => {
                account_from_item(&item, user.id.clone(), user.name.clone(), OP).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn retire_legacy_account(&self, user: &User) -> Result<()> {
        const OP: &str = "UpdateItem(retire legacy account)";
        // The customer id goes, so the customer index no longer finds the old item.
        let res = self
            .client
            .get()
            .update_item()
            .table_name(&self.tables.api_keys)
            .key("UserID", s(user.name.as_str()))
            .update_expression("SET MigratedTo = :id REMOVE StripeCustomerId")
            .condition_expression("attribute_exists(#t) AND attribute_not_exists(UserSub)")
            .expression_attribute_names("#t", "Type")
            .expression_attribute_values(":id", s(user.id.as_str()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn find_account_by_customer(&self, customer: &CustomerId) -> Result<Option<AccountRecord>> {
        const OP: &str = "Query(account by customer)";
        for item in &self.items_of_customer(customer, OP).await? {
            if let Some(a) = account_from_item_opt(item, OP)? {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    async fn find_legacy_name_by_customer(&self, customer: &CustomerId) -> Result<Option<UserName>> {
        const OP: &str = "Query(legacy account by customer)";
        self.items_of_customer(customer, OP)
            .await?
            .iter()
            .find(|i| is_legacy_account(i))
            .map(|i| UserName::parse(req_s(i, "UserID", OP)?).map_err(|e| bad(OP, e.to_string())))
            .transpose()
    }

    async fn lock_account(
        &self,
        user: &UserId,
        token: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<AccountLock> {
        const OP: &str = "UpdateItem(lock account)";
        let res = self
            .client
            .get()
            .update_item()
            .table_name(&self.tables.api_keys)
            .key("UserID", s(user.as_str()))
            .update_expression("SET LockToken = :tok, LockUntil = :until")
            .condition_expression("attribute_not_exists(LockUntil) OR LockUntil < :now")
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":until", AttributeValue::N(until.timestamp_millis().to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.timestamp_millis().to_string()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(AccountLock::Acquired(match out.attributes.as_ref() {
                Some(item) => account_from_item_opt(item, OP)?,
                None => None,
            })),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                // Our own lock, taken by a first attempt whose response was lost.
                let old = match e.as_service_error() {
                    Some(
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c),
                    ) => c.item().cloned(),
                    _ => None,
                };
                match old {
                    Some(item) if get_s(&item, "LockToken") == Some(token) => {
                        Ok(AccountLock::Acquired(account_from_item_opt(&item, OP)?))
                    }
                    _ => Ok(AccountLock::Busy),
                }
            }
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn unlock_account(&self, user: &UserId, token: &str) -> Result<()> {
        let key = ("UserID", s(user.as_str()));
        self.give_back(&self.tables.api_keys, key, ("LockToken", "LockUntil"), token, "UpdateItem(unlock account)")
            .await
    }

    async fn save_account(&self, account: &AccountRecord, token: &str, until: DateTime<Utc>) -> Result<Commit> {
        let mut item = account_item(account);
        item.insert("LockToken".to_string(), s(token));
        item.insert("LockUntil".to_string(), AttributeValue::N(until.timestamp_millis().to_string()));
        self.put_while_locked(item, token, "PutItem(account, lock kept)").await
    }

    async fn put_account(&self, account: &AccountRecord, token: &str) -> Result<Commit> {
        // The item written has no LockToken/LockUntil: the lock is released with it.
        self.put_while_locked(account_item(account), token, "PutItem(account)").await
    }
}

impl DynamoStore {
    /// Replaces an account item while `token` holds its lock.
    /// Removes a lock or claim (`token_attr`, `until_attr`) from an item if `token` still holds
    /// it; one that is not ours any more (taken over, ended) is left as it is, and that is Ok.
    async fn give_back(
        &self,
        table: &str,
        (key_attr, key): (&str, AttributeValue),
        (token_attr, until_attr): (&str, &str),
        token: &str,
        op: &'static str,
    ) -> Result<()> {
        let res = self
            .client
            .get()
            .update_item()
            .table_name(table)
            .key(key_attr, key)
            .update_expression(format!("REMOVE {token_attr}, {until_attr}"))
            .condition_expression(format!("{token_attr} = :tok"))
            .expression_attribute_values(":tok", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, op, describe(&e))),
        }
    }

    async fn put_while_locked(&self, item: Item, token: &str, op: &'static str) -> Result<Commit> {
        let res = self
            .client
            .get()
            .put_item()
            .table_name(&self.tables.api_keys)
            .set_item(Some(item))
            .condition_expression("LockToken = :tok")
            .expression_attribute_values(":tok", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Commit::Done),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Ok(Commit::LeaseLost)
            }
            Err(e) => Err(BackendError::new(SERVICE, op, describe(&e))),
        }
    }

    /// Every item of the API keys table, page by page.
    async fn scan_accounts_table(&self, op: &'static str) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .get()
                .scan()
                .table_name(&self.tables.api_keys)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, op, describe(&e)))?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

impl crate::ports::admin::AccountErasure for DynamoStore {
    async fn delete_account(&self, user: &UserId, token: &str) -> Result<Commit> {
        const OP: &str = "DeleteItem(account)";
        let res = self
            .client
            .get()
            .delete_item()
            .table_name(&self.tables.api_keys)
            .key("UserID", s(user.as_str()))
            .condition_expression("LockToken = :tok")
            .expression_attribute_values(":tok", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Commit::Done),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => {
                Ok(Commit::LeaseLost)
            }
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn delete_legacy_account(&self, name: &UserName) -> Result<()> {
        const OP: &str = "DeleteItem(legacy account)";
        let res = self
            .client
            .get()
            .delete_item()
            .table_name(&self.tables.api_keys)
            .key("UserID", s(name.as_str()))
            // never a record keyed by sub (a user name may look like one)
            .condition_expression("attribute_not_exists(UserSub)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}

impl AccountListing for DynamoStore {
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>> {
        const OP: &str = "Scan(accounts)";
        let mut out = Vec::new();
        for item in &self.scan_accounts_table(OP).await? {
            if let Some(a) = account_from_item_opt(item, OP)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    async fn list_legacy_names(&self) -> Result<Vec<UserName>> {
        const OP: &str = "Scan(legacy accounts)";
        self.scan_accounts_table(OP)
            .await?
            .iter()
            .filter(|i| is_legacy_account(i))
            .map(|i| UserName::parse(req_s(i, "UserID", OP)?).map_err(|e| bad(OP, e.to_string())))
            .collect()
    }
}

impl ProcessedEvents for DynamoStore {
    async fn event_seen(&self, event_id: &str) -> Result<bool> {
        const OP: &str = "GetItem(event)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(format!("{EVENT_PREFIX}{event_id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(out.item.is_some())
    }

    async fn mark_event(&self, event_id: &str, event_type: &str, expires_at: DateTime<Utc>) -> Result<()> {
        const OP: &str = "PutItem(event)";
        self.client
            .get()
            .put_item()
            .table_name(&self.tables.sessions)
            .item("SessionID", s(format!("{EVENT_PREFIX}{event_id}")))
            .item("RecordType", s("stripe-event"))
            .item("EventType", s(event_type))
            .item("ExpiresAt", epoch(expires_at))
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(())
    }
}

impl crate::ports::metering::UsageCursor for DynamoStore {
    async fn reported_through(&self) -> Result<Option<chrono::NaiveDate>> {
        const OP: &str = "GetItem(usage cursor)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(USAGE_CURSOR_KEY))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        out.item
            .as_ref()
            .map(|i| {
                chrono::NaiveDate::parse_from_str(req_s(i, "Day", OP)?, "%Y-%m-%d").map_err(|e| bad(OP, e.to_string()))
            })
            .transpose()
    }

    async fn set_reported_through(&self, day: chrono::NaiveDate) -> Result<()> {
        const OP: &str = "UpdateItem(usage cursor)";
        // Forward only: ISO dates compare as strings.
        let r = self
            .client
            .get()
            .update_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(USAGE_CURSOR_KEY))
            .update_expression("SET #d = :d, #t = :t")
            .condition_expression("attribute_not_exists(#d) OR #d < :d")
            .expression_attribute_names("#d", "Day")
            .expression_attribute_names("#t", "RecordType")
            .expression_attribute_values(":d", s(day.format("%Y-%m-%d").to_string()))
            .expression_attribute_values(":t", s("usage-cursor"))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }
}

impl DynamoStore {
    /// The API keys items with this Stripe customer (index `StripeCustomerId-index`).
    async fn items_of_customer(&self, customer: &CustomerId, op: &'static str) -> Result<Vec<Item>> {
        let out = self
            .client
            .get()
            .query()
            .table_name(&self.tables.api_keys)
            .index_name(CUSTOMER_INDEX)
            .key_condition_expression("StripeCustomerId = :c")
            .expression_attribute_values(":c", s(customer.as_str()))
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, op, describe(&e)))?;
        Ok(out.items.unwrap_or_default())
    }

    /// The token whose transaction fulfilled the session, if it is fulfilled.
    async fn fulfilled_by(&self, id: &SessionId) -> Result<Option<String>> {
        const OP: &str = "GetItem(session)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(id.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        Ok(out
            .item
            .as_ref()
            .filter(|i| get_s(i, "Status") == Some(CheckoutStatus::Fulfilled.as_str()))
            .and_then(|i| get_s(i, "FulfilledBy"))
            .map(str::to_string))
    }
}

impl OpenCheckouts for DynamoStore {
    async fn open_checkout(&self, user: &UserId, price_id: &str) -> Result<Option<OpenCheckout>> {
        const OP: &str = "GetItem(open checkout)";
        let out = self
            .client
            .get()
            .get_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(format!("{OPEN_CHECKOUT_PREFIX}{user}#{price_id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        let Some(item) = out.item else { return Ok(None) };
        // A pointer an earlier version wrote has no URL: nothing to hand out again.
        let (Some(id), Some(url)) = (get_s(&item, "OpenSessionID"), get_s(&item, "OpenSessionURL")) else {
            return Ok(None);
        };
        let open_until = get_epoch(&item, "ExpiresAt").ok_or_else(|| bad(OP, "open checkout without ExpiresAt"))?;
        Ok(Some(OpenCheckout {
            session_id: SessionId::parse(id).map_err(|e| bad(OP, e.to_string()))?,
            url: url.to_string(),
            created_at: get_time(&item, "CreatedAt", OP)?,
            open_until,
        }))
    }

    async fn claim_open_checkout(
        &self,
        user: &UserId,
        price_id: &str,
        seen: Option<&SessionId>,
        token: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        const OP: &str = "UpdateItem(claim open checkout)";
        // No other live claim (our own token: the SDK retried a request whose answer was
        // lost), and the recorded checkout is still the one the caller read (a pointer without
        // a URL, from an earlier version, reads as none).
        let free = "(attribute_not_exists(ClaimUntil) OR ClaimUntil < :now OR ClaimToken = :tok)";
        let condition = match seen {
            Some(_) => format!("{free} AND OpenSessionID = :seen AND attribute_exists(OpenSessionURL)"),
            None => format!("{free} AND attribute_not_exists(OpenSessionURL)"),
        };
        let mut req = self
            .client
            .get()
            .update_item()
            .table_name(&self.tables.sessions)
            .key("SessionID", s(format!("{OPEN_CHECKOUT_PREFIX}{user}#{price_id}")))
            .update_expression(
                "SET ClaimToken = :tok, ClaimUntil = :until, RecordType = if_not_exists(RecordType, :rt), ExpiresAt = if_not_exists(ExpiresAt, :ttl)",
            )
            .condition_expression(condition)
            .expression_attribute_values(":tok", s(token))
            .expression_attribute_values(":until", AttributeValue::N(until.timestamp_millis().to_string()))
            .expression_attribute_values(":now", AttributeValue::N(now.timestamp_millis().to_string()))
            .expression_attribute_values(":rt", s("open-checkout"))
            .expression_attribute_values(":ttl", epoch(until + chrono::Duration::days(1)));
        if let Some(id) = seen {
            req = req.expression_attribute_values(":seen", s(id.as_str()));
        }
        let res = req.send().await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
    }

    async fn release_open_checkout(&self, user: &UserId, price_id: &str, token: &str) -> Result<()> {
        // Taken over, or ended by a recorded checkout: nothing of ours to give back (Ok).
        let key = ("SessionID", s(format!("{OPEN_CHECKOUT_PREFIX}{user}#{price_id}")));
        let op = "UpdateItem(release open checkout claim)";
        self.give_back(&self.tables.sessions, key, ("ClaimToken", "ClaimUntil"), token, op).await
    }

    async fn replace_open_checkout(
        &self,
        user: &UserId,
        price_id: &str,
        open: &OpenCheckout,
    ) -> Result<Option<SessionId>> {
        const OP: &str = "PutItem(open checkout)";
        // A whole-item put: it also ends the claim.
        let out = self
            .client
            .get()
            .put_item()
            .table_name(&self.tables.sessions)
            .item("SessionID", s(format!("{OPEN_CHECKOUT_PREFIX}{user}#{price_id}")))
            .item("RecordType", s("open-checkout"))
            .item("OpenSessionID", s(open.session_id.as_str()))
            .item("OpenSessionURL", s(&open.url))
            .item("CreatedAt", ts(open.created_at))
            .item("ExpiresAt", epoch(open.open_until))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| BackendError::new(SERVICE, OP, describe(&e)))?;
        out.attributes
            .as_ref()
            .and_then(|item| get_s(item, "OpenSessionID"))
            .map(|id| SessionId::parse(id).map_err(|e| bad(OP, e.to_string())))
            .transpose()
    }
}

impl Budgets for DynamoStore {
    /// One conditional UpdateItem when the caller is not in a burst (the common path), a second
    /// while in one, and a read to say how long to wait once the budget is spent. The bucket's
    /// theoretical arrival time is kept in milliseconds ([`Budget::admit`]); DynamoDB's update
    /// expressions have no `max`, so the two cases are two conditions.
    async fn spend(&self, bucket: &str, budget: Budget, now: DateTime<Utc>) -> Result<Option<std::time::Duration>> {
        const OP: &str = "UpdateItem(budget)";
        let key = format!("{BUDGET_PREFIX}{bucket}");
        let interval = budget.interval.as_millis() as i64;
        let tolerance = interval * (i64::from(budget.burst.max(1)) - 1);
        let now_ms = now.timestamp_millis();
        let n = |v: i64| AttributeValue::N(v.to_string());
        // Kept a day beyond the latest time it can matter.
        let ttl = epoch(now + chrono::Duration::milliseconds(tolerance + interval) + chrono::Duration::days(1));
        let update = |expression: &'static str, condition: &'static str| {
            self.client
                .get()
                .update_item()
                .table_name(&self.tables.sessions)
                .key("SessionID", s(key.clone()))
                .update_expression(expression)
                .condition_expression(condition)
                .expression_attribute_values(":t", n(interval))
                .expression_attribute_values(":ttl", ttl.clone())
                .expression_attribute_values(":rt", s("budget"))
        };
        let failed_condition =
            |e: &aws_sdk_dynamodb::error::SdkError<
                aws_sdk_dynamodb::operation::update_item::UpdateItemError,
                aws_sdk_dynamodb::config::http::HttpResponse,
            >| { e.as_service_error().is_some_and(|se| se.is_conditional_check_failed_exception()) };
        // Idle (or new): the bucket's time is in the past, so it restarts at now.
        let idle = update(
            "SET Tat = :now + :t, ExpiresAt = :ttl, RecordType = :rt",
            "attribute_not_exists(Tat) OR Tat < :now",
        )
        .expression_attribute_values(":now", n(now_ms))
        .send()
        .await;
        match idle {
            Ok(_) => return Ok(None),
            Err(e) if failed_condition(&e) => {}
            Err(e) => return Err(BackendError::new(SERVICE, OP, describe(&e))),
        }
        // In a burst: admitted while the time stays within the tolerance.
        let busy = update("SET Tat = Tat + :t, ExpiresAt = :ttl, RecordType = :rt", "Tat <= :limit")
            .expression_attribute_values(":limit", n(now_ms + tolerance))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match busy {
            Ok(_) => return Ok(None),
            Err(e) if failed_condition(&e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                    c.item().cloned()
                }
                _ => None,
            },
            Err(e) => return Err(BackendError::new(SERVICE, OP, describe(&e))),
        };
        let old = match old {
            Some(item) => item,
            None => self
                .client
                .get()
                .get_item()
                .table_name(&self.tables.sessions)
                .key("SessionID", s(key.clone()))
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| BackendError::new(SERVICE, "GetItem(budget)", describe(&e)))?
                .item
                .unwrap_or_default(),
        };
        let tat = old
            .get("Tat")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(DateTime::<Utc>::from_timestamp_millis);
        // Recomputed from what stood: a denial says how long until the next admission.
        Ok(budget.admit(tat, now).err().or(Some(std::time::Duration::from_millis(1))))
    }
}
