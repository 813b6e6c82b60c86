//! In-memory ports: the fast flow tests and the local stack's embedded default.
//!
//! They keep the same semantics as the real adapters (conditional writes, idempotent attach,
//! exact-name lookup, Stripe idempotency-key replay), which `tests/contract.rs` checks against
//! both. A shared [`Meter`] counts calls, can delay each call (to measure round trips) and can
//! inject a fault before or after any named operation (to test crash safety).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{
    AccountRecord, BackendError, CheckoutRecord, CheckoutStatus, CustomerId, IssuedKey, LookupKey, Plan, Quota,
    SessionId, SubscriptionId, Throttle as CatalogThrottle, User, UserId, UserName, UserProfile,
};
use crate::ports::{
    AccountListing, AccountLock, Accounts, Budget, Budgets, CheckoutState, Checkouts, Claim, Clock, Commit,
    CreatedCheckout, DuplicateCancelled, Ids, KeyRegistry, KeyUsage, NewCheckout, OpenCheckout, OpenCheckouts,
    Payments, PriceInfo, ProcessedEvents, Result, SubscriptionState, SubscriptionStatus, UserDirectory,
};

/// When an injected fault strikes, relative to the operation's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails and changes nothing.
    Before,
    /// The call takes effect, then the caller sees a failure (a timeout after commit).
    After,
    /// The process dies before the call takes effect: the task panics there, so no code of
    /// the caller runs after it (no error path, no lock released). Run the flow in a spawned
    /// task and retry.
    CrashBefore,
    /// The call takes effect, then the process dies before the caller sees the answer.
    CrashAfter,
}

#[derive(Default)]
struct MeterState {
    calls: Vec<&'static str>,
    /// (operation, fault, which call of it: `None` the next one, `Some(n)` the call with index
    /// `n` among all calls of that operation since the last reset).
    faults: Vec<(&'static str, Fault, Option<usize>)>,
    /// (operation, which call of it, what happens in the world just before that call acts).
    hooks: Vec<(&'static str, usize, Hook)>,
    /// (operation, which call of it, what happens in the world just after that call acted).
    after_hooks: Vec<(&'static str, usize, Hook)>,
    /// Latency of one operation, instead of the common one.
    latency_of: Vec<(&'static str, Duration)>,
}

type Hook = Box<dyn FnOnce() + Send>;

/// Counts calls, injects faults and adds latency; shared by the in-memory adapters.
#[derive(Default)]
pub struct Meter {
    state: Mutex<MeterState>,
    latency: Mutex<Duration>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Meter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every later call sleeps this long before it acts.
    pub fn set_latency(&self, d: Duration) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// The next call of `op` fails (once).
    pub fn inject(&self, op: &'static str, fault: Fault) {
        self.lock().faults.push((op, fault, None));
    }

    /// The call of `op` with index `n` (0: the first since the last [`Meter::reset_calls`], in
    /// the order the calls were made, also when several are under way at once) fails (once).
    pub fn inject_at(&self, op: &'static str, n: usize, fault: Fault) {
        self.lock().faults.push((op, fault, Some(n)));
    }

    /// Runs `f` when the call of `op` with index `n` (since the last reset) is made, before it
    /// acts: something happening elsewhere at exactly that point of a flow (a user deleted
    /// between a check and a write, say).
    pub fn on_call(&self, op: &'static str, n: usize, f: impl FnOnce() + Send + 'static) {
        self.lock().hooks.push((op, n, Box::new(f)));
    }

    /// Every call of `op` takes `d` (instead of the common latency): to order calls made side by
    /// side on tokio's paused clock.
    pub fn set_latency_of(&self, op: &'static str, d: Duration) {
        self.lock().latency_of.push((op, d));
    }

    /// Runs `f` when the call of `op` with index `n` has acted, before its caller sees the
    /// answer: something happening elsewhere right after a read (a webhook landing between a
    /// flow's read and its lock, say).
    pub fn after_call(&self, op: &'static str, n: usize, f: impl FnOnce() + Send + 'static) {
        self.lock().after_hooks.push((op, n, Box::new(f)));
    }

    /// Whether an injected fault has not struck yet.
    pub fn faults_pending(&self) -> bool {
        !self.lock().faults.is_empty()
    }

    /// Drops every fault not struck yet.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Names of the operations called so far, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.lock().calls.clone()
    }

    pub fn count(&self, op: &str) -> usize {
        self.lock().calls.iter().filter(|c| **c == op).count()
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
        self.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Most calls that were under way at once since the last reset.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn take_fault(&self, op: &'static str, when: Fault, index: usize) -> bool {
        let mut st = self.lock();
        if let Some(i) = st.faults.iter().position(|(o, f, n)| *o == op && *f == when && n.is_none_or(|n| n == index)) {
            st.faults.remove(i);
            true
        } else {
            false
        }
    }

    /// Records a call of `op` and returns its index among the calls of `op` (counted when it
    /// is made, so calls under way at once each know their own), for [`Meter::exit`].
    async fn enter(&self, service: &'static str, op: &'static str) -> Result<usize> {
        let (index, hook) = {
            let mut st = self.lock();
            st.calls.push(op);
            let index = st.calls.iter().filter(|c| **c == op).count() - 1;
            (index, st.hooks.iter().position(|(o, n, _)| *o == op && *n == index).map(|i| st.hooks.remove(i).2))
        };
        if let Some(f) = hook {
            f();
        }
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let own = self.lock().latency_of.iter().rev().find(|(o, _)| *o == op).map(|(_, d)| *d);
        let latency = own.unwrap_or_else(|| *self.latency.lock().unwrap_or_else(|p| p.into_inner()));
        if latency.is_zero() {
            // Let other tasks run between calls, so concurrency tests interleave.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(latency).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.take_fault(op, Fault::CrashBefore, index) {
            panic!("injected crash before {op}");
        }
        if self.take_fault(op, Fault::Before, index) {
            return Err(BackendError::new(service, op, "injected fault before the call"));
        }
        Ok(index)
    }

    fn exit(&self, service: &'static str, op: &'static str, index: usize) -> Result<()> {
        let hook = {
            let mut st = self.lock();
            st.after_hooks.iter().position(|(o, n, _)| *o == op && *n == index).map(|i| st.after_hooks.remove(i).2)
        };
        if let Some(f) = hook {
            f();
        }
        if self.take_fault(op, Fault::CrashAfter, index) {
            panic!("injected crash after {op}");
        }
        if self.take_fault(op, Fault::After, index) {
            return Err(BackendError::new(service, op, "injected fault after the call"));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Sessions and accounts (DynamoDB)

#[derive(Default, Clone)]
struct AccountSlot {
    record: Option<AccountRecord>,
    lock: Option<(String, DateTime<Utc>)>,
}

/// The item `OPEN#<user>#<price>`: the open checkout, and the claim to create the next one.
#[derive(Default, Clone)]
struct OpenPointer {
    open: Option<OpenCheckout>,
    claim: Option<(String, DateTime<Utc>)>,
}

#[derive(Default)]
struct StoreState {
    sessions: BTreeMap<String, CheckoutRecord>,
    accounts: BTreeMap<String, AccountSlot>,
    events: BTreeMap<String, DateTime<Utc>>,
    open_checkouts: BTreeMap<String, OpenPointer>,
    /// Budget bucket → its theoretical arrival time ([`Budget::admit`]).
    budgets: BTreeMap<String, DateTime<Utc>>,
    /// Records an earlier version keyed by user name (name → record, its id a placeholder).
    legacy: BTreeMap<String, AccountRecord>,
    /// The token whose `fulfil` finished each session (a repeat with it is recognised).
    fulfilled_by: BTreeMap<String, String>,
    /// The usage reporter's cursor.
    usage_cursor: Option<NaiveDate>,
}

impl StoreState {
    /// Replaces the account record, which releases its lock (as a DynamoDB PutItem does).
    fn write_account(&mut self, account: &AccountRecord) {
        self.accounts
            .insert(account.user_id.as_str().to_string(), AccountSlot { record: Some(account.clone()), lock: None });
    }

    fn holds_lock(&self, user: &UserId, token: &str) -> bool {
        self.accounts.get(user.as_str()).and_then(|a| a.lock.as_ref()).is_some_and(|(t, _)| t == token)
    }
}

/// Sessions table and API keys table in memory.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<StoreState>>,
    meter: Arc<Meter>,
}

impl MemoryStore {
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { state: Arc::default(), meter }
    }

    /// Every session, for assertions and for persisting the local stack.
    pub fn sessions(&self) -> Vec<CheckoutRecord> {
        lock(&self.state).sessions.values().cloned().collect()
    }

    /// Every account record (locks aside).
    pub fn accounts(&self) -> Vec<AccountRecord> {
        lock(&self.state).accounts.values().filter_map(|a| a.record.clone()).collect()
    }

    /// Processed Stripe event ids.
    pub fn events(&self) -> Vec<String> {
        lock(&self.state).events.keys().cloned().collect()
    }

    /// Restores persisted state (the local stack's data folder).
    pub fn restore(
        &self,
        sessions: Vec<CheckoutRecord>,
        accounts: Vec<AccountRecord>,
        events: Vec<(String, DateTime<Utc>)>,
    ) {
        let mut st = lock(&self.state);
        st.sessions = sessions.into_iter().map(|r| (r.session_id.as_str().to_string(), r)).collect();
        st.accounts = accounts
            .into_iter()
            .map(|a| (a.user_id.as_str().to_string(), AccountSlot { record: Some(a), lock: None }))
            .collect();
        st.events = events.into_iter().collect();
    }

    /// Adds a record as an earlier version wrote it: keyed by the user's name.
    pub fn add_legacy_account(&self, record: AccountRecord) {
        lock(&self.state).legacy.insert(record.user_name.as_str().to_string(), record);
    }

    /// Name-keyed records not migrated yet.
    pub fn legacy_accounts(&self) -> Vec<AccountRecord> {
        lock(&self.state).legacy.values().cloned().collect()
    }

    /// Processed event ids with their expiry, for persisting.
    pub fn event_entries(&self) -> Vec<(String, DateTime<Utc>)> {
        lock(&self.state).events.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The usage reporter's cursor, for persisting.
    pub fn usage_cursor(&self) -> Option<NaiveDate> {
        lock(&self.state).usage_cursor
    }

    /// Restores the usage reporter's cursor (the local stack's data folder).
    pub fn restore_usage_cursor(&self, day: Option<NaiveDate>) {
        lock(&self.state).usage_cursor = day;
    }
}

impl crate::ports::metering::UsageCursor for MemoryStore {
    async fn reported_through(&self) -> Result<Option<NaiveDate>> {
        let call = self.meter.enter(DDB, "ddb.usage_cursor").await?;
        let day = lock(&self.state).usage_cursor;
        self.meter.exit(DDB, "ddb.usage_cursor", call)?;
        Ok(day)
    }

    async fn set_reported_through(&self, day: NaiveDate) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.set_usage_cursor").await?;
        {
            let mut st = lock(&self.state);
            // forward only (DynamoDB: a condition on the stored day)
            if st.usage_cursor.is_none_or(|d| d < day) {
                st.usage_cursor = Some(day);
            }
        }
        self.meter.exit(DDB, "ddb.set_usage_cursor", call)
    }
}

const DDB: &str = "dynamodb";

impl Checkouts for MemoryStore {
    async fn put_new(&self, record: &CheckoutRecord) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.put_session").await?;
        {
            let mut st = lock(&self.state);
            let id = record.session_id.as_str().to_string();
            if st.sessions.contains_key(&id) {
                return Err(BackendError::new(
                    DDB,
                    "ddb.put_session",
                    "ConditionalCheckFailedException: session exists already",
                ));
            }
            st.sessions.insert(id, record.clone());
        }
        self.meter.exit(DDB, "ddb.put_session", call)
    }

    async fn get(&self, id: &SessionId) -> Result<Option<CheckoutRecord>> {
        let call = self.meter.enter(DDB, "ddb.get_session").await?;
        let r = lock(&self.state).sessions.get(id.as_str()).cloned();
        self.meter.exit(DDB, "ddb.get_session", call)?;
        Ok(r)
    }

    async fn claim(
        &self,
        id: &SessionId,
        token: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Claim> {
        let call = self.meter.enter(DDB, "ddb.claim").await?;
        let outcome = {
            let mut st = lock(&self.state);
            match st.sessions.get_mut(id.as_str()) {
                None => Claim::Missing,
                Some(r) => match (r.status, &r.lease) {
                    (CheckoutStatus::Fulfilled, _) => Claim::AlreadyFulfilled,
                    // Our own lease (the DynamoDB adapter recognises a retried request's token).
                    (CheckoutStatus::Issuing, Some((t, _))) if t == token => {
                        Claim::Acquired { token: token.to_string(), record: r.clone() }
                    }
                    (CheckoutStatus::Issuing, Some((_, until))) if *until >= now => Claim::Busy,
                    _ => {
                        r.status = CheckoutStatus::Issuing;
                        r.lease = Some((token.to_string(), lease_until));
                        r.updated_at = now;
                        Claim::Acquired { token: token.to_string(), record: r.clone() }
                    }
                },
            }
        };
        self.meter.exit(DDB, "ddb.claim", call)?;
        Ok(outcome)
    }

    async fn release_claim(&self, id: &SessionId, token: &str) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.release_claim").await?;
        if let Some(r) = lock(&self.state).sessions.get_mut(id.as_str()) {
            if r.status == CheckoutStatus::Issuing && r.lease.as_ref().is_some_and(|(t, _)| t == token) {
                r.status = CheckoutStatus::Pending;
                r.lease = None;
            }
        }
        self.meter.exit(DDB, "ddb.release_claim", call)
    }

    async fn fulfil(&self, id: &SessionId, token: &str, account: &AccountRecord, now: DateTime<Utc>) -> Result<Commit> {
        let call = self.meter.enter(DDB, "ddb.fulfil").await?;
        let outcome = {
            let mut st = lock(&self.state);
            let holds_session = st.sessions.get(id.as_str()).is_some_and(|r| {
                r.status == CheckoutStatus::Issuing && r.lease.as_ref().is_some_and(|(t, _)| t == token)
            });
            if holds_session && st.holds_lock(&account.user_id, token) {
                if let Some(r) = st.sessions.get_mut(id.as_str()) {
                    r.status = CheckoutStatus::Fulfilled;
                    r.paid = true;
                    r.lease = None;
                    r.updated_at = now;
                }
                st.fulfilled_by.insert(id.as_str().to_string(), token.to_string());
                st.write_account(account);
                Commit::Done
            } else if st.fulfilled_by.get(id.as_str()).is_some_and(|t| t == token) {
                // The same transaction again (as after a lost answer): already done.
                Commit::Done
            } else {
                Commit::LeaseLost
            }
        };
        self.meter.exit(DDB, "ddb.fulfil", call)?;
        Ok(outcome)
    }
}

impl Accounts for MemoryStore {
    async fn get_account(&self, user: &UserId) -> Result<Option<AccountRecord>> {
        let call = self.meter.enter(DDB, "ddb.get_account").await?;
        let r = lock(&self.state).accounts.get(user.as_str()).and_then(|a| a.record.clone());
        self.meter.exit(DDB, "ddb.get_account", call)?;
        Ok(r)
    }

    async fn legacy_account(&self, user: &User) -> Result<Option<AccountRecord>> {
        let call = self.meter.enter(DDB, "ddb.legacy_account").await?;
        let r = lock(&self.state)
            .legacy
            .get(user.name.as_str())
            .map(|a| AccountRecord { user_id: user.id.clone(), ..a.clone() });
        self.meter.exit(DDB, "ddb.legacy_account", call)?;
        Ok(r)
    }

    async fn retire_legacy_account(&self, user: &User) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.retire_legacy_account").await?;
        lock(&self.state).legacy.remove(user.name.as_str());
        self.meter.exit(DDB, "ddb.retire_legacy_account", call)
    }

    async fn find_account_by_customer(&self, customer: &CustomerId) -> Result<Option<AccountRecord>> {
        let call = self.meter.enter(DDB, "ddb.find_account").await?;
        let r = lock(&self.state)
            .accounts
            .values()
            .filter_map(|a| a.record.as_ref())
            .find(|a| a.customer_id.as_ref() == Some(customer))
            .cloned();
        self.meter.exit(DDB, "ddb.find_account", call)?;
        Ok(r)
    }

    async fn find_legacy_name_by_customer(&self, customer: &CustomerId) -> Result<Option<UserName>> {
        let call = self.meter.enter(DDB, "ddb.find_legacy_account").await?;
        let r = lock(&self.state)
            .legacy
            .values()
            .find(|a| a.customer_id.as_ref() == Some(customer))
            .map(|a| a.user_name.clone());
        self.meter.exit(DDB, "ddb.find_legacy_account", call)?;
        Ok(r)
    }

    async fn lock_account(
        &self,
        user: &UserId,
        token: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<AccountLock> {
        let call = self.meter.enter(DDB, "ddb.lock_account").await?;
        let outcome = {
            let mut st = lock(&self.state);
            let slot = st.accounts.entry(user.as_str().to_string()).or_default();
            match &slot.lock {
                Some((t, _)) if t == token => AccountLock::Acquired(slot.record.clone()),
                Some((_, held_until)) if *held_until >= now => AccountLock::Busy,
                _ => {
                    slot.lock = Some((token.to_string(), until));
                    AccountLock::Acquired(slot.record.clone())
                }
            }
        };
        self.meter.exit(DDB, "ddb.lock_account", call)?;
        Ok(outcome)
    }

    async fn unlock_account(&self, user: &UserId, token: &str) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.unlock_account").await?;
        {
            let mut st = lock(&self.state);
            if let Some(slot) = st.accounts.get_mut(user.as_str()) {
                if slot.lock.as_ref().is_some_and(|(t, _)| t == token) {
                    slot.lock = None;
                }
            }
        }
        self.meter.exit(DDB, "ddb.unlock_account", call)
    }

    async fn save_account(&self, account: &AccountRecord, token: &str, until: DateTime<Utc>) -> Result<Commit> {
        let call = self.meter.enter(DDB, "ddb.save_account").await?;
        let outcome = {
            let mut st = lock(&self.state);
            if st.holds_lock(&account.user_id, token) {
                st.write_account(account);
                if let Some(slot) = st.accounts.get_mut(account.user_id.as_str()) {
                    slot.lock = Some((token.to_string(), until));
                }
                Commit::Done
            } else {
                Commit::LeaseLost
            }
        };
        self.meter.exit(DDB, "ddb.save_account", call)?;
        Ok(outcome)
    }

    async fn put_account(&self, account: &AccountRecord, token: &str) -> Result<Commit> {
        let call = self.meter.enter(DDB, "ddb.put_account").await?;
        let outcome = {
            let mut st = lock(&self.state);
            if st.holds_lock(&account.user_id, token) {
                st.write_account(account);
                Commit::Done
            } else {
                Commit::LeaseLost
            }
        };
        self.meter.exit(DDB, "ddb.put_account", call)?;
        Ok(outcome)
    }
}

impl crate::ports::admin::AccountErasure for MemoryStore {
    async fn delete_account(&self, user: &UserId, token: &str) -> Result<Commit> {
        let call = self.meter.enter(DDB, "ddb.delete_account").await?;
        let outcome = {
            let mut st = lock(&self.state);
            if st.holds_lock(user, token) {
                st.accounts.remove(user.as_str());
                Commit::Done
            } else {
                Commit::LeaseLost
            }
        };
        self.meter.exit(DDB, "ddb.delete_account", call)?;
        Ok(outcome)
    }

    async fn delete_legacy_account(&self, name: &UserName) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.delete_legacy_account").await?;
        lock(&self.state).legacy.remove(name.as_str());
        self.meter.exit(DDB, "ddb.delete_legacy_account", call)
    }
}

impl AccountListing for MemoryStore {
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>> {
        let call = self.meter.enter(DDB, "ddb.list_accounts").await?;
        let r = self.accounts();
        self.meter.exit(DDB, "ddb.list_accounts", call)?;
        Ok(r)
    }

    async fn list_legacy_names(&self) -> Result<Vec<UserName>> {
        let call = self.meter.enter(DDB, "ddb.list_legacy_names").await?;
        let r = lock(&self.state).legacy.values().map(|a| a.user_name.clone()).collect();
        self.meter.exit(DDB, "ddb.list_legacy_names", call)?;
        Ok(r)
    }
}

impl ProcessedEvents for MemoryStore {
    async fn event_seen(&self, event_id: &str) -> Result<bool> {
        let call = self.meter.enter(DDB, "ddb.event_seen").await?;
        let seen = lock(&self.state).events.contains_key(event_id);
        self.meter.exit(DDB, "ddb.event_seen", call)?;
        Ok(seen)
    }

    async fn mark_event(&self, event_id: &str, _event_type: &str, expires_at: DateTime<Utc>) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.mark_event").await?;
        lock(&self.state).events.insert(event_id.to_string(), expires_at);
        self.meter.exit(DDB, "ddb.mark_event", call)
    }
}

impl OpenCheckouts for MemoryStore {
    async fn open_checkout(&self, user: &UserId, price_id: &str) -> Result<Option<OpenCheckout>> {
        let call = self.meter.enter(DDB, "ddb.open_checkout").await?;
        let open = lock(&self.state).open_checkouts.get(&format!("{user}#{price_id}")).and_then(|p| p.open.clone());
        self.meter.exit(DDB, "ddb.open_checkout", call)?;
        Ok(open)
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
        let call = self.meter.enter(DDB, "ddb.claim_open_checkout").await?;
        let taken = {
            let mut st = lock(&self.state);
            let pointer = st.open_checkouts.entry(format!("{user}#{price_id}")).or_default();
            let claimed = matches!(&pointer.claim, Some((t, u)) if *u >= now && t != token);
            if claimed || pointer.open.as_ref().map(|o| &o.session_id) != seen {
                false
            } else {
                pointer.claim = Some((token.to_string(), until));
                true
            }
        };
        self.meter.exit(DDB, "ddb.claim_open_checkout", call)?;
        Ok(taken)
    }

    async fn release_open_checkout(&self, user: &UserId, price_id: &str, token: &str) -> Result<()> {
        let call = self.meter.enter(DDB, "ddb.release_open_checkout").await?;
        if let Some(p) = lock(&self.state).open_checkouts.get_mut(&format!("{user}#{price_id}")) {
            if p.claim.as_ref().is_some_and(|(t, _)| t == token) {
                p.claim = None;
            }
        }
        self.meter.exit(DDB, "ddb.release_open_checkout", call)
    }

    async fn replace_open_checkout(
        &self,
        user: &UserId,
        price_id: &str,
        open: &OpenCheckout,
    ) -> Result<Option<SessionId>> {
        let call = self.meter.enter(DDB, "ddb.replace_open_checkout").await?;
        let previous = lock(&self.state)
            .open_checkouts
            .insert(format!("{user}#{price_id}"), OpenPointer { open: Some(open.clone()), claim: None });
        self.meter.exit(DDB, "ddb.replace_open_checkout", call)?;
        Ok(previous.and_then(|p| p.open).map(|o| o.session_id))
    }
}

impl Budgets for MemoryStore {
    async fn spend(&self, bucket: &str, budget: Budget, now: DateTime<Utc>) -> Result<Option<std::time::Duration>> {
        let call = self.meter.enter(DDB, "ddb.spend").await?;
        let answer = {
            let mut st = lock(&self.state);
            match budget.admit(st.budgets.get(bucket).copied(), now) {
                Ok(tat) => {
                    st.budgets.insert(bucket.to_string(), tat);
                    None
                }
                Err(wait) => Some(wait),
            }
        };
        self.meter.exit(DDB, "ddb.spend", call)?;
        Ok(answer)
    }
}

impl MemoryStore {
    /// The open checkout recorded for each `user#price`.
    pub fn open_checkouts(&self) -> Vec<(String, String)> {
        lock(&self.state)
            .open_checkouts
            .iter()
            .filter_map(|(k, v)| v.open.as_ref().map(|o| (k.clone(), o.session_id.as_str().to_string())))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// API keys and the usage plan (API Gateway)

#[derive(Default)]
struct KeysState {
    keys: BTreeMap<String, (IssuedKey, String)>,
    /// Key id → the usage plan it is attached to: one per key, as API Gateway allows one usage
    /// plan per key and stage (every plan here serves one stage).
    plans: BTreeMap<String, String>,
    next: u64,
    /// What API Gateway enforces per usage plan (quota, throttle), as the stack created them.
    limits: BTreeMap<String, (Option<Quota>, Option<CatalogThrottle>)>,
    /// (key id, usage plan, UTC day) → requests served.
    used: BTreeMap<(String, String, NaiveDate), u64>,
    /// (key id, usage plan, first day of the quota period) → extra use counted against the
    /// quota by UpdateUsage (negative: quota granted back).
    adjust: BTreeMap<(String, String, NaiveDate), i64>,
    /// Key id → its throttle bucket (rate, burst of its plan).
    buckets: HashMap<String, Bucket>,
}

/// Why the product API refused a request, with API Gateway's status and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such key, disabled, or in no usage plan: 403 `Forbidden`.
    Forbidden,
    /// The plan's quota for the period is used up: 429 `Limit Exceeded`.
    QuotaExceeded,
    /// Faster than the plan's throttle: 429 `Too Many Requests`.
    Throttled,
}

impl Refused {
    pub fn status(self) -> u16 {
        match self {
            Refused::Forbidden => 403,
            Refused::QuotaExceeded | Refused::Throttled => 429,
        }
    }
    /// API Gateway's `{"message": …}`.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Forbidden => "Forbidden",
            Refused::QuotaExceeded => "Limit Exceeded",
            Refused::Throttled => "Too Many Requests",
        }
    }
}

/// What `MemoryKeys::export` saves.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct KeysSnapshot {
    pub keys: Vec<(IssuedKey, String)>,
    /// (key id, usage plan id).
    #[serde(default)]
    pub plans: Vec<(String, String)>,
    pub next: u64,
    /// (key id, usage plan, day, requests).
    #[serde(default)]
    pub used: Vec<(String, String, NaiveDate, u64)>,
    #[serde(default)]
    pub adjust: Vec<(String, String, NaiveDate, i64)>,
}

/// A token bucket on tokio's clock (so a paused test clock drives it).
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: burst, at: tokio::time::Instant::now() }
    }
    fn refill(&mut self) {
        let now = tokio::time::Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }
}

/// API Gateway's per-account control-plane limits.
struct Throttle {
    all: Bucket,
    create: Bucket,
    throttled: u64,
}

/// API Gateway keys and usage plans in memory.
#[derive(Clone, Default)]
pub struct MemoryKeys {
    state: Arc<Mutex<KeysState>>,
    meter: Arc<Meter>,
    throttle: Arc<Mutex<Option<Throttle>>>,
    /// The clock UpdateUsage's "current period" is read from (default: the wall clock).
    clock: Arc<Mutex<Option<Arc<dyn Clock>>>>,
}

impl MemoryKeys {
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { state: Arc::default(), meter, throttle: Arc::default(), clock: Arc::default() }
    }

    /// Every key, for assertions.
    pub fn all(&self) -> Vec<IssuedKey> {
        lock(&self.state).keys.values().map(|(k, _)| k.clone()).collect()
    }

    /// Everything, key values included, for persisting (the local stack's data folder).
    pub fn export(&self) -> KeysSnapshot {
        let st = lock(&self.state);
        KeysSnapshot {
            keys: st.keys.values().cloned().collect(),
            plans: st.plans.iter().map(|(k, p)| (k.clone(), p.clone())).collect(),
            next: st.next,
            used: st.used.iter().map(|((k, p, d), n)| (k.clone(), p.clone(), *d, *n)).collect(),
            adjust: st.adjust.iter().map(|((k, p, d), n)| (k.clone(), p.clone(), *d, *n)).collect(),
        }
    }

    /// Restores what `export` saved.
    pub fn restore(&self, snap: KeysSnapshot) {
        let mut st = lock(&self.state);
        st.keys = snap.keys.into_iter().map(|(k, v)| (k.id.clone(), (k, v))).collect();
        st.plans = snap.plans.into_iter().collect();
        st.used = snap.used.into_iter().map(|(k, p, d, n)| ((k, p, d), n)).collect();
        st.adjust = snap.adjust.into_iter().map(|(k, p, d, n)| ((k, p, d), n)).collect();
        st.next = snap.next;
    }

    /// Refuses calls beyond API Gateway's account limits, as API Gateway does
    /// (`TooManyRequestsException`): CreateApiKey 5 per second (burst 5), all management calls
    /// together 10 per second (burst 40). A refused call changes nothing.
    pub fn throttle_like_aws(&self) {
        *lock(&self.throttle) =
            Some(Throttle { all: Bucket::new(10.0, 40.0), create: Bucket::new(5.0, 5.0), throttled: 0 });
    }

    /// How many calls the throttle refused.
    pub fn throttled_calls(&self) -> u64 {
        lock(&self.throttle).as_ref().map_or(0, |t| t.throttled)
    }

    fn admit(&self, op: &'static str) -> Result<()> {
        let mut guard = lock(&self.throttle);
        let Some(t) = guard.as_mut() else { return Ok(()) };
        t.all.refill();
        t.create.refill();
        let creating = op == "apigw.create_key";
        if t.all.tokens >= 1.0 && (!creating || t.create.tokens >= 1.0) {
            t.all.tokens -= 1.0;
            if creating {
                t.create.tokens -= 1.0;
            }
            Ok(())
        } else {
            t.throttled += 1;
            Err(BackendError::new(APIGW, op, "TooManyRequestsException: Too Many Requests"))
        }
    }

    /// Adds `n` requests served by the key on `plan` on `day`, as API Gateway's daily counts
    /// would show them (also late: counts that arrive after the day was first read).
    pub fn add_use(&self, id: &str, plan: &str, day: NaiveDate, n: u64) {
        *lock(&self.state).used.entry((id.to_string(), plan.to_string(), day)).or_default() += n;
    }

    /// Ids of the keys attached to a usage plan (any), for assertions.
    pub fn plan_members(&self) -> Vec<String> {
        lock(&self.state).plans.keys().cloned().collect()
    }

    /// The usage plan the key is attached to, for assertions.
    pub fn plan_of(&self, id: &str) -> Option<String> {
        lock(&self.state).plans.get(id).cloned()
    }

    /// Reads "today" (UpdateUsage's current period) from `clock` instead of the wall clock.
    pub fn use_clock(&self, clock: Arc<dyn Clock>) {
        *lock(&self.clock) = Some(clock);
    }

    fn today(&self) -> NaiveDate {
        lock(&self.clock).as_ref().map(|c| c.now()).unwrap_or_else(Utc::now).date_naive()
    }

    /// Declares every tier's usage plan with its quota and throttle.
    pub fn define_catalog(&self, catalog: &crate::domain::Catalog) {
        for t in catalog.tiers() {
            if let Some(plan) = &t.usage_plan_id {
                self.define_plan(plan, t.quota, t.throttle);
            }
        }
    }

    /// Declares what a usage plan enforces (the quota and throttle the stack created it with).
    pub fn define_plan(&self, plan: &str, quota: Option<Quota>, throttle: Option<CatalogThrottle>) {
        lock(&self.state).limits.insert(plan.to_string(), (quota, throttle));
    }

    /// A request to the product API carrying `x-api-key: value` at `now`, as API Gateway meters
    /// it: the key must be enabled and in a usage plan (else 403); the plan's throttle (token
    /// bucket per key, tokio's clock) and quota for the UTC period are checked, and a served
    /// request counts against the quota. Returns (key id, usage plan).
    pub fn call(&self, value: &str, now: DateTime<Utc>) -> std::result::Result<(String, String), Refused> {
        let mut st = lock(&self.state);
        let id = st.keys.values().find(|(k, v)| v == value && k.enabled).map(|(k, _)| k.id.clone());
        let Some(id) = id else { return Err(Refused::Forbidden) };
        let Some(plan) = st.plans.get(&id).cloned() else { return Err(Refused::Forbidden) };
        let (quota, throttle) = st.limits.get(&plan).copied().unwrap_or((None, None));
        if let Some(th) = throttle {
            let bucket = st.buckets.entry(id.clone()).or_insert_with(|| Bucket::new(th.rate, f64::from(th.burst)));
            bucket.refill();
            if bucket.tokens < 1.0 {
                return Err(Refused::Throttled);
            }
            bucket.tokens -= 1.0;
        }
        let today = now.date_naive();
        if let Some(q) = quota {
            let (start, end) = q.period.containing(today);
            let used = period_use(&st, &id, &plan, start, end);
            if used >= i64::from(q.limit) {
                return Err(Refused::QuotaExceeded);
            }
        }
        *st.used.entry((id.clone(), plan.clone(), today)).or_insert(0) += 1;
        Ok((id, plan))
    }

    /// The id of the key with this value and the usage plan it is in, if it is enabled and in
    /// one: what API Gateway checks when a request to the product API carries `x-api-key`.
    pub fn authorize(&self, value: &str) -> Option<(String, String)> {
        let st = lock(&self.state);
        st.keys
            .values()
            .find(|(k, v)| v == value && k.enabled)
            .and_then(|(k, _)| st.plans.get(&k.id).map(|p| (k.id.clone(), p.clone())))
    }
}

const APIGW: &str = "apigateway";

/// Requests counted against the quota in `start..=end` (served, plus UpdateUsage's adjustment).
fn period_use(st: &KeysState, id: &str, plan: &str, start: NaiveDate, end: NaiveDate) -> i64 {
    let served: i64 = st
        .used
        .range((id.to_string(), plan.to_string(), start)..=(id.to_string(), plan.to_string(), end))
        .map(|(_, n)| *n as i64)
        .sum();
    served + st.adjust.get(&(id.to_string(), plan.to_string(), start)).copied().unwrap_or(0)
}

impl crate::ports::admin::KeyDeletion for MemoryKeys {
    async fn delete_key(&self, id: &str) -> Result<()> {
        let call = self.meter.enter(APIGW, "apigw.delete_key").await?;
        self.admit("apigw.delete_key")?;
        {
            let mut st = lock(&self.state);
            st.keys.remove(id);
            st.plans.remove(id);
        }
        self.meter.exit(APIGW, "apigw.delete_key", call)
    }
}

impl KeyRegistry for MemoryKeys {
    async fn find_by_name(&self, name: &str) -> Result<Vec<IssuedKey>> {
        let call = self.meter.enter(APIGW, "apigw.find_key").await?;
        self.admit("apigw.find_key")?;
        let r = lock(&self.state).keys.values().filter(|(k, _)| k.name == name).map(|(k, _)| k.clone()).collect();
        self.meter.exit(APIGW, "apigw.find_key", call)?;
        Ok(r)
    }

    async fn get(&self, id: &str) -> Result<Option<IssuedKey>> {
        let call = self.meter.enter(APIGW, "apigw.get_key").await?;
        self.admit("apigw.get_key")?;
        let r = lock(&self.state).keys.get(id).map(|(k, _)| k.clone());
        self.meter.exit(APIGW, "apigw.get_key", call)?;
        Ok(r)
    }

    async fn create(&self, name: &str) -> Result<IssuedKey> {
        let call = self.meter.enter(APIGW, "apigw.create_key").await?;
        self.admit("apigw.create_key")?;
        let key = {
            let mut st = lock(&self.state);
            st.next += 1;
            let id = format!("memkey{:06}", st.next);
            let value = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            let key = IssuedKey { id: id.clone(), name: name.to_string(), enabled: true };
            st.keys.insert(id, (key.clone(), value));
            key
        };
        self.meter.exit(APIGW, "apigw.create_key", call)?;
        Ok(key)
    }

    async fn set_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        let call = self.meter.enter(APIGW, "apigw.set_enabled").await?;
        self.admit("apigw.set_enabled")?;
        match lock(&self.state).keys.get_mut(id) {
            Some((k, _)) => k.enabled = enabled,
            None => {
                return Err(BackendError::new(
                    APIGW,
                    "apigw.set_enabled",
                    "NotFoundException: Invalid API Key identifier specified",
                ))
            }
        }
        self.meter.exit(APIGW, "apigw.set_enabled", call)
    }

    async fn attach_to_plan(&self, id: &str, plan: &str) -> Result<()> {
        let call = self.meter.enter(APIGW, "apigw.attach").await?;
        self.admit("apigw.attach")?;
        {
            let mut st = lock(&self.state);
            if !st.keys.contains_key(id) {
                return Err(BackendError::new(
                    APIGW,
                    "apigw.attach",
                    "NotFoundException: Invalid API Key identifier specified",
                ));
            }
            match st.plans.get(id) {
                Some(p) if p == plan => {}
                Some(other) => {
                    return Err(BackendError::new(
                        APIGW,
                        "apigw.attach",
                        format!(
                            "ConflictException: API Key {id} cannot reference multiple Usage Plans with the same API Stage (it is in {other})"
                        ),
                    ))
                }
                None => {
                    st.plans.insert(id.to_string(), plan.to_string());
                }
            }
        }
        self.meter.exit(APIGW, "apigw.attach", call)
    }

    async fn detach_from_plan(&self, id: &str, plan: &str) -> Result<()> {
        let call = self.meter.enter(APIGW, "apigw.detach").await?;
        self.admit("apigw.detach")?;
        {
            let mut st = lock(&self.state);
            if st.plans.get(id).is_some_and(|p| p == plan) {
                st.plans.remove(id);
            }
        }
        self.meter.exit(APIGW, "apigw.detach", call)
    }

    async fn plans_of(&self, id: &str) -> Result<Vec<String>> {
        let call = self.meter.enter(APIGW, "apigw.plans_of").await?;
        self.admit("apigw.plans_of")?;
        let r = lock(&self.state).plans.get(id).cloned().into_iter().collect();
        self.meter.exit(APIGW, "apigw.plans_of", call)?;
        Ok(r)
    }

    async fn plan_key_ids(&self, plan: &str) -> Result<Vec<String>> {
        let call = self.meter.enter(APIGW, "apigw.plan_keys").await?;
        self.admit("apigw.plan_keys")?;
        let r = lock(&self.state).plans.iter().filter(|(_, p)| *p == plan).map(|(k, _)| k.clone()).collect();
        self.meter.exit(APIGW, "apigw.plan_keys", call)?;
        Ok(r)
    }

    async fn usage(&self, id: &str, plan: &str, start: NaiveDate, end: NaiveDate) -> Result<KeyUsage> {
        let call = self.meter.enter(APIGW, "apigw.usage").await?;
        self.admit("apigw.usage")?;
        let today = self.today();
        let r = {
            let st = lock(&self.state);
            if !st.keys.contains_key(id) {
                return Err(BackendError::new(
                    APIGW,
                    "apigw.usage",
                    "NotFoundException: Invalid API Key identifier specified",
                ));
            }
            let used: u64 = st
                .used
                .range((id.to_string(), plan.to_string(), start)..=(id.to_string(), plan.to_string(), end))
                .map(|(_, n)| *n)
                .sum();
            // One entry per day of the range up to today, as GetUsage answers (0: no calls).
            let days: Vec<u64> = start
                .iter_days()
                .take_while(|d| *d <= end && *d <= today)
                .map(|d| st.used.get(&(id.to_string(), plan.to_string(), d)).copied().unwrap_or(0))
                .collect();
            // Remaining as API Gateway reports it: the quota of the period holding `end`, less
            // what was used in it and what UpdateUsage took or gave.
            let remaining = st.limits.get(plan).and_then(|(q, _)| *q).map(|q| {
                let (ps, pe) = q.period.containing(end);
                (i64::from(q.limit) - period_use(&st, id, plan, ps, pe)).max(0) as u64
            });
            KeyUsage { used, remaining, days }
        };
        self.meter.exit(APIGW, "apigw.usage", call)?;
        Ok(r)
    }

    async fn plan_usage(&self, plan: &str, start: NaiveDate, end: NaiveDate) -> Result<HashMap<String, u64>> {
        let call = self.meter.enter(APIGW, "apigw.plan_usage").await?;
        self.admit("apigw.plan_usage")?;
        let r = {
            let st = lock(&self.state);
            let mut out: HashMap<String, u64> = HashMap::new();
            for ((id, p, day), n) in &st.used {
                if p == plan && (start..=end).contains(day) {
                    *out.entry(id.clone()).or_default() += n;
                }
            }
            out
        };
        self.meter.exit(APIGW, "apigw.plan_usage", call)?;
        Ok(r)
    }

    async fn set_remaining(&self, id: &str, plan: &str, remaining: u64) -> Result<()> {
        let call = self.meter.enter(APIGW, "apigw.set_remaining").await?;
        self.admit("apigw.set_remaining")?;
        let today = self.today();
        {
            let mut st = lock(&self.state);
            let Some(q) = st.limits.get(plan).and_then(|(q, _)| *q) else {
                return Err(BackendError::new(
                    APIGW,
                    "apigw.set_remaining",
                    "BadRequestException: Usage plan does not have a quota",
                ));
            };
            if st.plans.get(id).is_none_or(|p| p != plan) {
                return Err(BackendError::new(
                    APIGW,
                    "apigw.set_remaining",
                    "NotFoundException: API Key is not associated with the usage plan",
                ));
            }
            let (ps, pe) = q.period.containing(today);
            let used: i64 = st
                .used
                .range((id.to_string(), plan.to_string(), ps)..=(id.to_string(), plan.to_string(), pe))
                .map(|(_, n)| *n as i64)
                .sum();
            let target_use = i64::from(q.limit) - remaining.min(u64::from(q.limit)) as i64;
            st.adjust.insert((id.to_string(), plan.to_string(), ps), target_use - used);
        }
        self.meter.exit(APIGW, "apigw.set_remaining", call)
    }

    async fn count_keys(&self) -> Result<usize> {
        let call = self.meter.enter(APIGW, "apigw.count_keys").await?;
        self.admit("apigw.count_keys")?;
        let n = lock(&self.state).keys.len();
        self.meter.exit(APIGW, "apigw.count_keys", call)?;
        Ok(n)
    }

    async fn key_value(&self, id: &str) -> Result<Option<String>> {
        let call = self.meter.enter(APIGW, "apigw.key_value").await?;
        self.admit("apigw.key_value")?;
        let r = lock(&self.state).keys.get(id).map(|(_, v)| v.clone());
        self.meter.exit(APIGW, "apigw.key_value", call)?;
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------------
// Users (Cognito)

/// Cognito users and their custom attributes in memory.
#[derive(Clone, Default)]
pub struct MemoryUsers {
    users: Arc<Mutex<BTreeMap<String, UserProfile>>>,
    /// Name → email address.
    emails: Arc<Mutex<BTreeMap<String, String>>>,
    meter: Arc<Meter>,
}

impl MemoryUsers {
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { users: Arc::default(), emails: Arc::default(), meter }
    }

    /// Sets a user's email address.
    pub fn set_email(&self, name: &UserName, email: &str) {
        lock(&self.emails).insert(name.as_str().to_string(), email.to_string());
    }

    /// Every user and their attributes, for assertions.
    pub fn dump(&self) -> String {
        format!("{:?}", *lock(&self.users))
    }

    /// Adds a user with a fresh `sub` and no custom attributes (what sign-up does), or returns
    /// the one holding the name.
    pub fn add_user(&self, name: &UserName) -> User {
        let mut users = lock(&self.users);
        let p = users.entry(name.as_str().to_string()).or_insert_with(|| UserProfile {
            sub: Some(UserId::parse(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a valid sub")),
            ..UserProfile::default()
        });
        User { id: p.sub.clone().expect("set above"), name: name.clone() }
    }

    /// Adds a user with a given `sub` (the local Cognito's users).
    pub fn add_user_with_sub(&self, user: &User) {
        lock(&self.users)
            .entry(user.name.as_str().to_string())
            .or_insert_with(|| UserProfile { sub: Some(user.id.clone()), ..UserProfile::default() });
    }

    /// Deletes a user (as `DeleteUser` does): the name is free for someone else.
    pub fn delete_user(&self, name: &UserName) {
        lock(&self.users).remove(name.as_str());
        lock(&self.emails).remove(name.as_str());
    }
}

impl crate::ports::admin::DirectoryAdmin for MemoryUsers {
    async fn find_by_email(&self, email: &str) -> Result<Vec<UserName>> {
        let call = self.meter.enter(COGNITO, "cognito.find_by_email").await?;
        let found = lock(&self.emails)
            .iter()
            .filter(|(_, e)| e.as_str() == email)
            .map(|(n, _)| UserName::parse(n).expect("stored names are valid"))
            .collect();
        self.meter.exit(COGNITO, "cognito.find_by_email", call)?;
        Ok(found)
    }

    async fn find_by_sub(&self, sub: &UserId) -> Result<Option<UserName>> {
        let call = self.meter.enter(COGNITO, "cognito.find_by_sub").await?;
        let found = lock(&self.users)
            .iter()
            .find(|(_, p)| p.sub.as_ref() == Some(sub))
            .map(|(n, _)| UserName::parse(n).expect("stored names are valid"));
        self.meter.exit(COGNITO, "cognito.find_by_sub", call)?;
        Ok(found)
    }

    async fn email_of(&self, user: &UserName) -> Result<Option<String>> {
        let call = self.meter.enter(COGNITO, "cognito.get_user").await?;
        let found = lock(&self.emails).get(user.as_str()).cloned();
        self.meter.exit(COGNITO, "cognito.get_user", call)?;
        Ok(found)
    }

    async fn remove_user(&self, user: &UserName) -> Result<()> {
        let call = self.meter.enter(COGNITO, "cognito.delete_user").await?;
        self.delete_user(user);
        self.meter.exit(COGNITO, "cognito.delete_user", call)
    }
}

const COGNITO: &str = "cognito-idp";

impl UserDirectory for MemoryUsers {
    async fn get_user(&self, user: &UserName) -> Result<Option<UserProfile>> {
        let call = self.meter.enter(COGNITO, "cognito.get_user").await?;
        let r = lock(&self.users).get(user.as_str()).cloned();
        self.meter.exit(COGNITO, "cognito.get_user", call)?;
        Ok(r)
    }

    async fn find_by_customer(&self, customer: &CustomerId) -> Result<Option<UserName>> {
        let call = self.meter.enter(COGNITO, "cognito.find_by_customer").await?;
        let found = lock(&self.users)
            .iter()
            .find(|(_, p)| p.customer_id.as_ref() == Some(customer))
            .map(|(name, _)| UserName::parse(name).expect("stored names are valid"));
        self.meter.exit(COGNITO, "cognito.find_by_customer", call)?;
        Ok(found)
    }

    async fn set_plan(&self, user: &UserName, plan: Plan, customer: Option<&CustomerId>) -> Result<()> {
        let call = self.meter.enter(COGNITO, "cognito.set_plan").await?;
        match lock(&self.users).get_mut(user.as_str()) {
            Some(p) => {
                p.plan = Some(plan);
                if let Some(c) = customer {
                    p.customer_id = Some(c.clone());
                }
            }
            None => {
                return Err(BackendError::new(
                    COGNITO,
                    "cognito.set_plan",
                    "UserNotFoundException: User does not exist.",
                ))
            }
        }
        self.meter.exit(COGNITO, "cognito.set_plan", call)
    }
}

// ---------------------------------------------------------------------------------------------
// Stripe

#[derive(Clone)]
struct MemCheckout {
    state: CheckoutState,
    /// `metadata.user_id` / `metadata.user_name`, copied onto the subscription.
    user: User,
    price_id: String,
    /// A metered price sold beside it (overage).
    overage_price_id: Option<String>,
    success_url: String,
    trial_days: u32,
    /// Expired (by paykey or by time): it can no longer be paid.
    expired: bool,
}

/// What one subscription's first invoice charged and what was refunded of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Charge {
    pub amount: i64,
    pub refunded: i64,
}

#[derive(Default)]
struct PaymentsState {
    prices: BTreeMap<String, PriceInfo>,
    checkouts: BTreeMap<String, MemCheckout>,
    subscriptions: BTreeMap<String, SubscriptionState>,
    charges: BTreeMap<String, Charge>,
    customers: Vec<CustomerId>,
    portal_configurations: std::collections::BTreeSet<String>,
    replay: HashMap<String, String>,
    next: u64,
    /// The meter's value per (customer, UTC day of the event's timestamp): the latest event
    /// received for the day (a meter pre-aggregated by day).
    meter_days: BTreeMap<(String, NaiveDate), u64>,
    /// Every meter event received (identifiers Stripe saw are dropped as duplicates).
    meter_events: Vec<crate::ports::metering::MeterEvent>,
    meter_identifiers: std::collections::HashSet<String>,
    /// Meters by event name: whether each sums daily totals (`event_time_window: day`).
    meters: BTreeMap<String, bool>,
}

/// Stripe prices, Checkout Sessions, customers and portal sessions in memory, with
/// idempotency-key replay.
#[derive(Clone, Default)]
pub struct MemoryPayments {
    state: Arc<Mutex<PaymentsState>>,
    meter: Arc<Meter>,
}

const STRIPE: &str = "stripe";

impl MemoryPayments {
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { state: Arc::default(), meter }
    }

    /// Adds an active recurring price.
    pub fn add_price(&self, lookup_key: &str, unit_amount: i64, currency: &str) -> PriceInfo {
        let mut st = lock(&self.state);
        st.next += 1;
        let p = PriceInfo {
            id: format!("price_mem{:06}", st.next),
            lookup_key: lookup_key.to_string(),
            unit_amount: Some(unit_amount),
            currency: currency.to_string(),
            recurring: Some(crate::ports::Recurring::monthly()),
            metered: false,
            tiers: Vec::new(),
            graduated: false,
        };
        st.prices.insert(lookup_key.to_string(), p.clone());
        p
    }

    /// Adds a meter: `sums_days` for one like `paykey-setup` makes (sum, daily window).
    pub fn add_meter(&self, event_name: &str, sums_days: bool) {
        lock(&self.state).meters.insert(event_name.to_string(), sums_days);
    }

    /// Adds an active metered price with graduated tiers: `included` calls at 0, then
    /// `rate` (a decimal string, in the currency's minor unit) per call, on the meter
    /// `paykey_api_requests` (made, summing daily totals, if missing).
    pub fn add_metered_price(&self, lookup_key: &str, included: u64, rate: &str, currency: &str) -> PriceInfo {
        let mut st = lock(&self.state);
        st.meters.entry(crate::domain::DEFAULT_METER_EVENT.to_string()).or_insert(true);
        st.next += 1;
        let mut tiers = Vec::new();
        if included > 0 {
            tiers.push(crate::ports::PriceTier {
                up_to: Some(included),
                unit_amount_decimal: Some("0".into()),
                flat_amount: None,
            });
        }
        tiers.push(crate::ports::PriceTier { up_to: None, unit_amount_decimal: Some(rate.into()), flat_amount: None });
        let p = PriceInfo {
            id: format!("price_mem{:06}", st.next),
            lookup_key: lookup_key.to_string(),
            unit_amount: None,
            currency: currency.to_string(),
            recurring: Some(crate::ports::Recurring::monthly()),
            metered: true,
            tiers,
            graduated: true,
        };
        st.prices.insert(lookup_key.to_string(), p.clone());
        p
    }

    /// What the meter holds for `customer` over `first..=last` (UTC days): the sum of each
    /// day's latest event, as a period's invoice would bill it.
    pub fn meter_total(&self, customer: &CustomerId, first: NaiveDate, last: NaiveDate) -> u64 {
        let st = lock(&self.state);
        st.meter_days.range((customer.to_string(), first)..=(customer.to_string(), last)).map(|(_, v)| *v).sum()
    }

    /// Every meter event received, in order (duplicates dropped).
    pub fn meter_events(&self) -> Vec<crate::ports::metering::MeterEvent> {
        lock(&self.state).meter_events.clone()
    }

    /// Adds a billing portal configuration (what `paykey-setup` creates) and returns its id.
    pub fn add_portal_configuration(&self) -> String {
        let mut st = lock(&self.state);
        st.next += 1;
        let id = format!("bpc_mem{:06}", st.next);
        st.portal_configurations.insert(id.clone());
        id
    }

    /// Completes a checkout as if the customer paid: creates the customer (unless the session
    /// had one) and the subscription.
    pub fn pay(&self, id: &SessionId) -> Option<CheckoutState> {
        let mut st = lock(&self.state);
        st.next += 1;
        let n = st.next;
        let customer = {
            let c = st.checkouts.get(id.as_str())?;
            c.state.customer.clone()
        }
        .unwrap_or_else(|| CustomerId::parse(&format!("cus_mem{n:06}")).expect("valid id"));
        if !st.customers.contains(&customer) {
            st.customers.push(customer.clone());
        }
        let sub_id = SubscriptionId::parse(&format!("sub_mem{n:06}")).expect("valid id");
        let c = st.checkouts.get_mut(id.as_str())?;
        if c.expired || c.state.paid {
            return None;
        }
        c.state.paid = true;
        let price_id = c.price_id.clone();
        let overage_price_id = c.overage_price_id.clone();
        let trial_end = (c.trial_days > 0).then(|| Utc::now() + chrono::Duration::days(c.trial_days.into()));
        c.state.customer = Some(customer.clone());
        c.state.subscription = Some(sub_id.clone());
        let state = c.state.clone();
        let user = c.user.clone();
        let price = st.prices.values().find(|p| p.id == price_id);
        // A trial charges nothing until it ends.
        let amount = if trial_end.is_some() { 0 } else { price.and_then(|p| p.unit_amount).unwrap_or(0) };
        let mut item_lookup_keys = vec![price.map(|p| p.lookup_key.clone())];
        if let Some(o) = overage_price_id {
            item_lookup_keys.push(st.prices.values().find(|p| p.id == o).map(|p| p.lookup_key.clone()));
        }
        st.charges.insert(sub_id.as_str().to_string(), Charge { amount, refunded: 0 });
        st.subscriptions.insert(
            sub_id.as_str().to_string(),
            SubscriptionState {
                id: sub_id,
                customer,
                status: if trial_end.is_some() { SubscriptionStatus::Trialing } else { SubscriptionStatus::Active },
                cancel_at_period_end: false,
                period_end: Some(trial_end.unwrap_or_else(|| Utc::now() + chrono::Duration::days(30))),
                user_name: Some(user.name.to_string()),
                user_id: Some(user.id.to_string()),
                item_lookup_keys,
                trial_end,
            },
        );
        Some(state)
    }

    /// A subscription paykey did not start: the Stripe account's other product bought through a
    /// plain Checkout (no paykey metadata), by an existing customer (`Some`) or a new one. The
    /// price is added when the account does not sell it yet. Returns its state.
    pub fn subscribe_elsewhere(
        &self,
        customer: Option<&CustomerId>,
        lookup_key: &str,
        amount: i64,
    ) -> SubscriptionState {
        if !lock(&self.state).prices.contains_key(lookup_key) {
            self.add_price(lookup_key, amount, "jpy");
        }
        let mut st = lock(&self.state);
        st.next += 1;
        let n = st.next;
        let customer =
            customer.cloned().unwrap_or_else(|| CustomerId::parse(&format!("cus_mem{n:06}")).expect("valid id"));
        if !st.customers.contains(&customer) {
            st.customers.push(customer.clone());
        }
        let id = SubscriptionId::parse(&format!("sub_mem{n:06}")).expect("valid id");
        st.charges.insert(id.as_str().to_string(), Charge { amount, refunded: 0 });
        let state = SubscriptionState {
            id: id.clone(),
            customer,
            status: SubscriptionStatus::Active,
            cancel_at_period_end: false,
            period_end: Some(Utc::now() + chrono::Duration::days(30)),
            user_name: None,
            user_id: None,
            item_lookup_keys: vec![Some(lookup_key.to_string())],
            trial_end: None,
        };
        st.subscriptions.insert(id.as_str().to_string(), state.clone());
        state
    }

    /// Changes a subscription as Stripe would (a cancellation, a failed renewal, …).
    pub fn update_subscription(
        &self,
        id: &SubscriptionId,
        f: impl FnOnce(&mut SubscriptionState),
    ) -> Option<SubscriptionState> {
        let mut st = lock(&self.state);
        let sub = st.subscriptions.get_mut(id.as_str())?;
        f(sub);
        Some(sub.clone())
    }

    /// Every subscription, oldest first.
    pub fn subscriptions(&self) -> Vec<SubscriptionState> {
        lock(&self.state).subscriptions.values().cloned().collect()
    }

    /// What a subscription charged and what was refunded of it.
    pub fn charge(&self, id: &SubscriptionId) -> Option<Charge> {
        lock(&self.state).charges.get(id.as_str()).copied()
    }

    /// Every idempotency key a create call carried.
    pub fn idempotency_keys(&self) -> Vec<String> {
        lock(&self.state)
            .replay
            .keys()
            .map(|k| k.split_once(':').map(|(_, k)| k.to_string()).unwrap_or_default())
            .collect()
    }

    /// Whether the checkout was expired.
    pub fn checkout_expired(&self, id: &SessionId) -> bool {
        lock(&self.state).checkouts.get(id.as_str()).is_some_and(|c| c.expired)
    }

    /// A checkout's state (panics on an unknown id: for tests).
    pub fn get_checkout_state(&self, id: &SessionId) -> CheckoutState {
        lock(&self.state).checkouts.get(id.as_str()).map(|c| c.state.clone()).expect("known checkout session")
    }

    /// The success URL a checkout was created with.
    pub fn checkout_success_url(&self, id: &SessionId) -> Option<String> {
        lock(&self.state).checkouts.get(id.as_str()).map(|c| c.success_url.clone())
    }

    /// The trial days a checkout was created with.
    pub fn checkout_trial_days(&self, id: &SessionId) -> Option<u32> {
        lock(&self.state).checkouts.get(id.as_str()).map(|c| c.trial_days)
    }

    /// Moves a subscription to another price (a plan switch in the billing portal): its items'
    /// price and so its tier; returns the new state.
    pub fn switch_price(&self, id: &SubscriptionId, lookup_key: &str) -> Option<SubscriptionState> {
        let mut st = lock(&self.state);
        st.prices.get(lookup_key)?;
        let sub = st.subscriptions.get_mut(id.as_str())?;
        sub.item_lookup_keys = vec![Some(lookup_key.to_string())];
        Some(sub.clone())
    }

    /// The price a checkout was created for.
    pub fn checkout_price(&self, id: &SessionId) -> Option<String> {
        lock(&self.state).checkouts.get(id.as_str()).map(|c| c.price_id.clone())
    }
}

impl Payments for MemoryPayments {
    async fn list_subscriptions(&self, customer: &CustomerId) -> Result<Vec<SubscriptionState>> {
        let call = self.meter.enter(STRIPE, "stripe.list_subscriptions").await?;
        // ids grow with time (sub_mem000001, …): newest first.
        let mut r: Vec<SubscriptionState> =
            lock(&self.state).subscriptions.values().filter(|s| &s.customer == customer).cloned().collect();
        r.reverse();
        self.meter.exit(STRIPE, "stripe.list_subscriptions", call)?;
        Ok(r)
    }

    async fn get_subscription(&self, id: &SubscriptionId) -> Result<Option<SubscriptionState>> {
        let call = self.meter.enter(STRIPE, "stripe.get_subscription").await?;
        let r = lock(&self.state).subscriptions.get(id.as_str()).cloned();
        self.meter.exit(STRIPE, "stripe.get_subscription", call)?;
        Ok(r)
    }

    async fn find_price(&self, lookup_key: &LookupKey) -> Result<Option<PriceInfo>> {
        let call = self.meter.enter(STRIPE, "stripe.find_price").await?;
        let r = lock(&self.state).prices.get(lookup_key.as_str()).cloned();
        self.meter.exit(STRIPE, "stripe.find_price", call)?;
        Ok(r)
    }

    async fn create_checkout(&self, req: NewCheckout<'_>) -> Result<CreatedCheckout> {
        let call = self.meter.enter(STRIPE, "stripe.create_checkout").await?;
        let created = {
            let mut st = lock(&self.state);
            let replay_key = format!("checkout:{}", req.idempotency_key);
            if let Some(id) = st.replay.get(&replay_key).cloned() {
                let id = SessionId::parse(&id).expect("stored ids are valid");
                let url = format!("https://checkout.memory.invalid/pay/{id}");
                CreatedCheckout { id, url }
            } else {
                for (i, id) in std::iter::once(req.price_id).chain(req.overage_price_id).enumerate() {
                    let Some(p) = st.prices.values().find(|p| p.id == id) else {
                        return Err(BackendError::new(
                            STRIPE,
                            "stripe.create_checkout",
                            format!("resource_missing: No such price: '{id}'"),
                        ));
                    };
                    // Stripe: a metered price takes no quantity, every other one needs one.
                    let without_quantity = if i == 0 { req.price_metered } else { true };
                    if p.metered != without_quantity {
                        return Err(BackendError::new(
                            STRIPE,
                            "stripe.create_checkout",
                            format!("invalid_request_error: line_items[{i}]: quantity must be given exactly when usage_type is not `metered`"),
                        ));
                    }
                }
                if let Some(c) = req.customer {
                    if !st.customers.contains(c) {
                        return Err(BackendError::new(
                            STRIPE,
                            "stripe.create_checkout",
                            format!("resource_missing: No such customer: '{c}'"),
                        ));
                    }
                }
                st.next += 1;
                let id = SessionId::parse(&format!("cs_test_mem{:06}", st.next)).expect("valid id");
                st.checkouts.insert(
                    id.as_str().to_string(),
                    MemCheckout {
                        state: CheckoutState {
                            id: id.clone(),
                            paid: false,
                            client_reference_id: Some(req.user.id.to_string()),
                            customer: req.customer.cloned(),
                            subscription: None,
                            subscription_state: None,
                        },
                        user: req.user.clone(),
                        price_id: req.price_id.to_string(),
                        overage_price_id: req.overage_price_id.map(str::to_string),
                        success_url: req.success_url.clone(),
                        trial_days: req.trial_days,
                        expired: false,
                    },
                );
                st.replay.insert(replay_key, id.as_str().to_string());
                let url = format!("https://checkout.memory.invalid/pay/{id}");
                CreatedCheckout { id, url }
            }
        };
        self.meter.exit(STRIPE, "stripe.create_checkout", call)?;
        Ok(created)
    }

    async fn get_checkout(&self, id: &SessionId) -> Result<Option<CheckoutState>> {
        let call = self.meter.enter(STRIPE, "stripe.get_checkout").await?;
        let r = {
            let st = lock(&self.state);
            // `expand[]=subscription`: the subscription as it stands at this read.
            st.checkouts.get(id.as_str()).map(|c| CheckoutState {
                subscription_state: c
                    .state
                    .subscription
                    .as_ref()
                    .and_then(|s| st.subscriptions.get(s.as_str()).cloned()),
                ..c.state.clone()
            })
        };
        self.meter.exit(STRIPE, "stripe.get_checkout", call)?;
        Ok(r)
    }

    async fn create_portal(
        &self,
        customer: &CustomerId,
        configuration: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<String> {
        let call = self.meter.enter(STRIPE, "stripe.create_portal").await?;
        let url = {
            let mut st = lock(&self.state);
            if !st.customers.contains(customer) {
                return Err(BackendError::new(
                    STRIPE,
                    "stripe.create_portal",
                    format!("resource_missing: No such customer: '{customer}'"),
                ));
            }
            // Stripe answers an unknown configuration with resource_missing.
            if !st.portal_configurations.contains(configuration) {
                return Err(BackendError::new(
                    STRIPE,
                    "stripe.create_portal",
                    format!("resource_missing: No such billing_portal.configuration: '{configuration}'"),
                ));
            }
            // Stripe's idempotency: the same key answers the same session.
            let replay_key = format!("portal:{idempotency_key}");
            let n = st.replay.len();
            st.replay
                .entry(replay_key)
                .or_insert_with(|| {
                    format!(
                        "https://billing.memory.invalid/p/session/{customer}/{n}?configuration={configuration}&return_url={return_url}"
                    )
                })
                .clone()
        };
        self.meter.exit(STRIPE, "stripe.create_portal", call)?;
        Ok(url)
    }

    async fn expire_checkout(&self, id: &SessionId) -> Result<bool> {
        let call = self.meter.enter(STRIPE, "stripe.expire_checkout").await?;
        let expired = {
            let mut st = lock(&self.state);
            let Some(c) = st.checkouts.get_mut(id.as_str()) else {
                return Err(BackendError::new(
                    STRIPE,
                    "stripe.expire_checkout",
                    format!("resource_missing: No such checkout.session: '{id}'"),
                ));
            };
            if c.expired || c.state.paid {
                false
            } else {
                c.expired = true;
                true
            }
        };
        self.meter.exit(STRIPE, "stripe.expire_checkout", call)?;
        Ok(expired)
    }

    async fn cancel_duplicate(&self, id: &SubscriptionId) -> Result<DuplicateCancelled> {
        let call = self.meter.enter(STRIPE, "stripe.cancel_duplicate").await?;
        let refunded = {
            let mut st = lock(&self.state);
            let Some(sub) = st.subscriptions.get_mut(id.as_str()) else {
                return Err(BackendError::new(
                    STRIPE,
                    "stripe.cancel_duplicate",
                    format!("resource_missing: No such subscription: '{id}'"),
                ));
            };
            sub.status = SubscriptionStatus::Canceled;
            sub.cancel_at_period_end = false;
            let charge = st.charges.entry(id.as_str().to_string()).or_default();
            let left = charge.amount - charge.refunded;
            charge.refunded = charge.amount;
            left
        };
        self.meter.exit(STRIPE, "stripe.cancel_duplicate", call)?;
        Ok(DuplicateCancelled { refunded })
    }
}

impl crate::ports::metering::UsageMeter for MemoryPayments {
    async fn send_meter_event(&self, event: &crate::ports::metering::MeterEvent) -> Result<()> {
        let call = self.meter.enter(STRIPE, "stripe.meter_event").await?;
        {
            let mut st = lock(&self.state);
            // Stripe drops an identifier it saw within 24 hours; otherwise the newest event of
            // the customer's day replaces the day's value (`event_time_window: day`).
            if st.meter_identifiers.insert(event.identifier()) {
                let day = event.timestamp().date_naive();
                st.meter_days.insert((event.customer.to_string(), day), event.value);
                st.meter_events.push(event.clone());
            }
        }
        self.meter.exit(STRIPE, "stripe.meter_event", call)
    }

    async fn meter_sums_days(&self, event_name: &str) -> Result<Option<bool>> {
        let call = self.meter.enter(STRIPE, "stripe.meters").await?;
        let found = lock(&self.state).meters.get(event_name).copied();
        self.meter.exit(STRIPE, "stripe.meters", call)?;
        Ok(found)
    }
}

impl crate::ports::admin::PaymentsAdmin for MemoryPayments {
    async fn cancel_subscription(&self, id: &SubscriptionId) -> Result<()> {
        let call = self.meter.enter(STRIPE, "stripe.cancel_subscription").await?;
        {
            let mut st = lock(&self.state);
            let Some(sub) = st.subscriptions.get_mut(id.as_str()) else {
                return Err(BackendError::new(
                    STRIPE,
                    "stripe.cancel_subscription",
                    format!("resource_missing: No such subscription: '{id}'"),
                ));
            };
            sub.status = SubscriptionStatus::Canceled;
            sub.cancel_at_period_end = false;
        }
        self.meter.exit(STRIPE, "stripe.cancel_subscription", call)
    }

    async fn delete_customer(&self, id: &CustomerId) -> Result<()> {
        let call = self.meter.enter(STRIPE, "stripe.delete_customer").await?;
        {
            let mut st = lock(&self.state);
            st.customers.retain(|c| c != id);
            // Stripe cancels every subscription the customer still has, of any product.
            for sub in st.subscriptions.values_mut().filter(|s| &s.customer == id) {
                sub.status = SubscriptionStatus::Canceled;
                sub.cancel_at_period_end = false;
            }
        }
        self.meter.exit(STRIPE, "stripe.delete_customer", call)
    }
}

impl MemoryPayments {
    /// Whether the customer exists (not deleted).
    pub fn has_customer(&self, id: &CustomerId) -> bool {
        lock(&self.state).customers.contains(id)
    }
}

// ---------------------------------------------------------------------------------------------
// Clock and ids for tests

/// A clock that stands still until moved.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *lock(&self.0) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *lock(&self.0)
    }
}

/// Counting ids: deterministic one-time keys and tokens for tests.
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl Ids for SequentialIds {
    fn one_time_key(&self) -> crate::domain::OneTimeKey {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let u = uuid::Builder::from_random_bytes((n as u128).to_be_bytes()).into_uuid();
        crate::domain::OneTimeKey::from_uuid(u)
    }

    fn token(&self) -> String {
        format!("token-{}", self.0.fetch_add(1, Ordering::SeqCst) + 1)
    }
}
