//! Usage-based billing: API Gateway counts every key's calls per UTC day (GetUsage); the
//! reporter sends each customer's daily total on the metered tiers' usage plans to Stripe as
//! one meter event per customer and day. paykey's meter pre-aggregates by day, so a total sent
//! again replaces the day's earlier one: a retry, a crash before the cursor moved, a run that
//! overlaps another, all send totals, never increments — nothing is counted twice.
//!
//! When: a day is first sent on the first run after it ends, then again on every run until it
//! has *settled* ([`SETTLE`] after its end: GetUsage reports with a delay), and the cursor
//! (`UsageCursor`) moves past it. Stripe takes events up to 35 days old: a day older than that
//! which was never settled (the reporter stopped for weeks) is logged per customer with its
//! total and counted (`UsageUnreported`), for the operator to bill by hand — never dropped
//! silently. A period's invoice: the webhook's `invoice.created` (a draft, within Stripe's
//! finalization grace period) sends the customer's unsettled days of the closing period at once
//! ([`report_closing_period`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::Ctx;
use crate::domain::{AccountRecord, CustomerId, Error, SubscriptionId, UserId};
use crate::ports::metering::{MeterEvent, UsageCursor, UsageMeter};
use crate::ports::{Accounts, KeyRegistry};

/// How long after a UTC day ends its counts are taken as final (the last send before the
/// cursor moves past it). API Gateway documents no figure for GetUsage's delay; the usage
/// plans' own docs say usage data "might be delayed". Three hours of hourly runs.
pub const SETTLE: Duration = Duration::hours(3);

/// Stripe takes meter events "within the past 35 calendar days": days older than this many
/// days before today are not sent (a day's event carries the day's last second).
pub const SENDABLE_DAYS: i64 = 34;

/// Days one run works on (oldest first): a backlog is caught up a few days an hour, inside the
/// sweep's time.
pub const DAYS_PER_RUN: usize = 4;

/// Meter events in flight at once (Stripe allows 1,000 meter-event calls per second live).
pub const CONCURRENT_EVENTS: usize = 8;

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// The days sent, oldest first.
    pub days: Vec<NaiveDate>,
    /// Meter events sent (one per customer with calls, per day).
    pub events: usize,
    /// Calls in the events sent.
    pub calls: u64,
    /// Calls on metered plans by keys no record names (not billed; logged).
    pub unattributed: u64,
    /// Days too old to send, with their calls (logged per customer; not billed).
    pub unreported: Vec<(NaiveDate, u64)>,
    /// The cursor after the run.
    pub reported_through: Option<NaiveDate>,
    /// Thresholds announced to the operator in this run ([`announce_thresholds`]).
    pub alerts: Vec<(CustomerId, &'static str)>,
}

/// The metered tiers' usage plans (distinct).
fn metered_plans(ctx: Ctx<'_>) -> Vec<String> {
    ctx.settings.catalog.metered_usage_plans().into_iter().map(str::to_string).collect()
}

/// Whether `day`'s counts are final at `now`.
fn settled(day: NaiveDate, now: DateTime<Utc>) -> bool {
    let end = (day + Duration::days(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    now >= end + SETTLE
}

/// Who a key belongs to: the records' current and previous keys, else the key's name (prefix +
/// `sub`: every key paykey creates for a user carries it).
struct Owners<'a> {
    by_key: HashMap<&'a str, &'a AccountRecord>,
    by_user: HashMap<&'a str, &'a AccountRecord>,
}

impl<'a> Owners<'a> {
    fn new(accounts: &'a [AccountRecord]) -> Self {
        let mut by_key = HashMap::new();
        let mut by_user = HashMap::new();
        for a in accounts {
            for k in a.api_key_id.iter().chain(&a.previous_key_id) {
                by_key.insert(k.as_str(), a);
            }
            by_user.insert(a.user_id.as_str(), a);
        }
        Self { by_key, by_user }
    }

    async fn owner<K: KeyRegistry>(
        &self,
        keys: &K,
        ctx: Ctx<'_>,
        id: &str,
    ) -> Result<Option<&'a AccountRecord>, Error> {
        if let Some(a) = self.by_key.get(id) {
            return Ok(Some(a));
        }
        let Some(key) = keys.get(id).await? else { return Ok(None) };
        Ok(key
            .name
            .strip_prefix(ctx.settings.key_name_prefix.as_str())
            .and_then(|sub| UserId::parse(sub).ok())
            .and_then(|sub| self.by_user.get(sub.as_str()).copied()))
    }
}

/// Each customer's calls on `day` over the metered plans (one paginated GetUsage per plan), and
/// the calls of keys no record names.
async fn day_totals<K: KeyRegistry>(
    keys: &K,
    ctx: Ctx<'_>,
    owners: &Owners<'_>,
    plans: &[String],
    day: NaiveDate,
) -> Result<(BTreeMap<CustomerId, u64>, u64), Error> {
    let mut per_key: HashMap<String, u64> = HashMap::new();
    for plan in plans {
        for (key, n) in keys.plan_usage(plan, day, day).await? {
            *per_key.entry(key).or_default() += n;
        }
    }
    let mut totals: BTreeMap<CustomerId, u64> = BTreeMap::new();
    let mut unattributed = 0;
    for (key, n) in per_key.into_iter().filter(|(_, n)| *n > 0) {
        match owners.owner(keys, ctx, &key).await? {
            // On a tier an operator's comp grants (no subscription buys it): not billed.
            Some(a) if comped(a, ctx, day) => {
                tracing::info!(user = %a.user(), day = %day, calls = n, "metered calls on a complimentary tier: not billed")
            }
            Some(a) => match &a.customer_id {
                Some(c) => *totals.entry(c.clone()).or_default() += n,
                // A metered tier without a customer: a comp (nothing to bill).
                None => {
                    tracing::info!(user = %a.user(), day = %day, calls = n, "metered calls of a user without a Stripe customer (a comp): not billed")
                }
            },
            None => {
                tracing::warn!(api_key_id = %key, day = %day, calls = n, "calls on a metered plan by a key no record names: not billed");
                unattributed += n;
            }
        }
    }
    Ok((totals, unattributed))
}

/// Whether the record's tier is an operator's comp rather than what a subscription buys, on
/// `day` (from the day it was granted). A comp that ended is cleared from the record: its last
/// unsettled days are then billed like the others (README).
fn comped(a: &AccountRecord, ctx: Ctx<'_>, day: NaiveDate) -> bool {
    a.comp.as_ref().is_some_and(|c| c.active(ctx.clock.now()) && c.plan == a.plan && day >= c.granted_at.date_naive())
        && a.subscription_plan.as_ref() != Some(&a.plan)
}

/// Refuses to send unless the catalog's meter sums daily totals (a newer event of a day
/// replaces the older): on any other meter a resend would add to the bill.
async fn check_meter<M: UsageMeter>(meter: &M, ctx: Ctx<'_>) -> Result<(), Error> {
    let name = ctx.settings.catalog.meter_event_name();
    let why = match meter.meter_sums_days(name).await? {
        Some(true) => return Ok(()),
        Some(false) => "is not a meter that sums daily totals (default_aggregation sum, event_time_window day); Stripe cannot change a meter: make one with paykey-setup --metered and another meter_event_name",
        None => "has no active meter: run paykey-setup --metered",
    };
    tracing::error!(meter_event_name = name, "usage not sent: the meter {why}");
    Err(Error::Backend(crate::domain::BackendError::new(
        "stripe",
        "meter",
        format!("the meter event name {name} {why}"),
    )))
}

/// Sends every total, [`CONCURRENT_EVENTS`] at a time; the first failure after all were tried.
async fn send_all<M: UsageMeter>(meter: &M, events: Vec<MeterEvent>) -> Result<(), Error> {
    // A loop rather than a stream combinator over a closure: the future stays `Send` for any
    // lifetime of `meter` (a closure's higher-ranked signature would not be).
    let mut pending = FuturesUnordered::new();
    let mut first_error = None;
    for e in &events {
        if pending.len() >= CONCURRENT_EVENTS {
            if let Some(Err(err)) = pending.next().await {
                first_error.get_or_insert(err);
            }
        }
        pending.push(meter.send_meter_event(e));
    }
    while let Some(r) = pending.next().await {
        if let Err(err) = r {
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(e) => Err(Error::Backend(e)),
        None => Ok(()),
    }
}

/// The scheduled run (hourly): sends the days after the cursor through yesterday (at most
/// [`DAYS_PER_RUN`], oldest first) and moves the cursor past each settled one. Off (nothing
/// read) when no tier is metered. A failure leaves the cursor where the last fully sent,
/// settled day put it: the next run sends that day's totals again (replacing, not adding).
/// `accounts`: the sweep's listing of the records.
pub async fn report_usage<K, M, C>(
    keys: &K,
    meter: &M,
    cursor: &C,
    ctx: Ctx<'_>,
    accounts: &[AccountRecord],
) -> Result<UsageReport, Error>
where
    K: KeyRegistry,
    M: UsageMeter,
    C: UsageCursor,
{
    let plans = metered_plans(ctx);
    let mut report = UsageReport::default();
    if plans.is_empty() {
        return Ok(report);
    }
    let now = ctx.clock.now();
    let today = now.date_naive();
    let yesterday = today - Duration::days(1);
    check_meter(meter, ctx).await?;
    let through = cursor.reported_through().await?;
    report.reported_through = through;
    // A first run starts the day before yesterday (no metered tier was sold before it).
    let mut day = through.map(|d| d + Duration::days(1)).unwrap_or(yesterday - Duration::days(1));
    let oldest = today - Duration::days(SENDABLE_DAYS);
    let owners = Owners::new(accounts);
    let event_name = ctx.settings.catalog.meter_event_name().to_string();
    let mut worked = 0;
    while day <= yesterday && worked < DAYS_PER_RUN {
        worked += 1;
        let (totals, unattributed) = day_totals(keys, ctx, &owners, &plans, day).await?;
        report.unattributed += unattributed;
        if day < oldest {
            let calls: u64 = totals.values().sum();
            for (customer, n) in &totals {
                tracing::error!(customer = %customer, day = %day, calls = n, "usage too old for Stripe (35 days): not billed; bill it by hand");
            }
            crate::telemetry::usage_unreported(calls);
            report.unreported.push((day, calls));
        } else {
            let events: Vec<MeterEvent> = totals
                .into_iter()
                .map(|(customer, value)| MeterEvent {
                    event_name: event_name.clone(),
                    customer,
                    day,
                    value,
                    sent_at: now.timestamp(),
                })
                .collect();
            report.events += events.len();
            report.calls += events.iter().map(|e| e.value).sum::<u64>();
            send_all(meter, events).await?;
            report.days.push(day);
            if !settled(day, now) {
                // Sent as it stands; sent again (replacing) until it settles.
                break;
            }
        }
        cursor.set_reported_through(day).await?;
        report.reported_through = Some(day);
        day += Duration::days(1);
    }
    crate::telemetry::usage_reported(report.events, report.calls);
    Ok(report)
}

/// Tells the operator, once per customer, quota period and threshold, that a metered tier's
/// customer reached 80 % or 100 % of the included amount or of the cap (`/account`'s
/// `usage.alerts`): a `UsageAlert` metric by `Threshold` (the stack alarms on it, to the alarm
/// topic an operator subscribes email to) and a log line naming the user and customer. The use
/// measured is what API Gateway counts against the quota: the customer's current key on their
/// current tier's plan this quota period (one paginated GetUsage per plan); comped and
/// suspended users are skipped. Remembered in the processed-events items (`usage-alert:…`,
/// kept 40 days): a crash between the announcement and the note announces it again on the next
/// run (at least once). Returns the announcements made.
pub async fn announce_thresholds<S, K>(
    store: &S,
    keys: &K,
    ctx: Ctx<'_>,
    accounts: &[AccountRecord],
) -> Result<Vec<(CustomerId, &'static str)>, Error>
where
    S: crate::ports::ProcessedEvents,
    K: KeyRegistry,
{
    let now = ctx.clock.now();
    let today = now.date_naive();
    let mut announced = Vec::new();
    // What API Gateway counts against each key's quota: its plan's use this quota period (one
    // GetUsage per plan), read for the customer's current key on their current tier's plan.
    let mut used_on: HashMap<String, (NaiveDate, HashMap<String, u64>)> = HashMap::new();
    for tier in ctx.settings.catalog.metered() {
        let (Some(plan), Some(quota)) = (&tier.usage_plan_id, tier.quota) else { continue };
        if used_on.contains_key(plan) {
            continue;
        }
        let (start, _) = quota.period.containing(today);
        used_on.insert(plan.clone(), (start, keys.plan_usage(plan, start, today).await?));
    }
    for account in accounts {
        let (Some(customer), Some(key)) = (&account.customer_id, &account.api_key_id) else { continue };
        let Some(tier) = ctx.settings.tier_of(&account.plan) else { continue };
        let (Some(m), Some(limit), Some(plan)) =
            (&tier.metered, super::account_keys::quota_limit(Some(account), tier), &tier.usage_plan_id)
        else {
            continue;
        };
        if comped(account, ctx, today) || account.suspension.is_some() {
            continue; // nothing billed, nothing to warn about
        }
        let Some((start, used)) = used_on.get(plan) else { continue };
        let n = used.get(key).copied().unwrap_or(0);
        // of the customer's spend cap when they set one
        for alert in super::usage_alerts(n, Some(m.included), limit) {
            let id = format!("usage-alert:{customer}:{start}:{alert}");
            if store.event_seen(&id).await? {
                continue;
            }
            tracing::warn!(user = %account.user(), customer = %customer, threshold = alert, used = n, included = m.included, limit, "usage threshold reached");
            crate::telemetry::usage_alert(alert);
            store.mark_event(&id, "usage-alert", now + Duration::days(40)).await?;
            announced.push((customer.clone(), alert));
        }
    }
    Ok(announced)
}

/// A period's invoice was created (`invoice.created`, a draft that Stripe finalizes after the
/// account's grace period): sends the customer's totals for the days of the period
/// `period_start..period_end` that the cursor has not passed (the day `period_end` falls in
/// belongs to the next period: see [`MeterEvent::timestamp`]), so the draft is final before it
/// is finalized. The customer's keys: the record's current and previous ones and every key
/// named for the user. Returns the events sent. A customer paykey has no record of: nothing.
#[allow(clippy::too_many_arguments)] // the ports, then what the invoice says
pub async fn report_closing_period<S, K, M, C>(
    store: &S,
    keys: &K,
    meter: &M,
    cursor: &C,
    ctx: Ctx<'_>,
    customer: &CustomerId,
    subscription: &SubscriptionId,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
) -> Result<Vec<MeterEvent>, Error>
where
    S: Accounts,
    K: KeyRegistry,
    M: UsageMeter,
    C: UsageCursor,
{
    let plans = metered_plans(ctx);
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    // Only paykey's subscription (the record's): another product's invoice of the customer
    // is left alone.
    let Some(account) =
        store.find_account_by_customer(customer).await?.filter(|a| a.subscription_id.as_ref() == Some(subscription))
    else {
        return Ok(Vec::new());
    };
    // Only a subscription to a metered tier has usage to bill (a flat tier's invoice is left
    // to Stripe at once).
    let tier = account.subscription_plan.as_ref().unwrap_or(&account.plan);
    if ctx.settings.tier_of(tier).is_none_or(|t| t.metered.is_none()) {
        return Ok(Vec::new());
    }
    let today = ctx.clock.now().date_naive();
    let last = period_end.date_naive() - Duration::days(1);
    let mut first = period_start.date_naive().max(today - Duration::days(SENDABLE_DAYS));
    if let Some(through) = cursor.reported_through().await? {
        first = first.max(through + Duration::days(1));
    }
    let last = last.min(today - Duration::days(1));
    if first > last {
        return Ok(Vec::new());
    }
    let mut ids: Vec<String> = account.api_key_id.iter().chain(&account.previous_key_id).cloned().collect();
    for k in keys.find_by_name(&ctx.settings.key_name(&account.user())).await? {
        if !ids.contains(&k.id) {
            ids.push(k.id);
        }
    }
    check_meter(meter, ctx).await?;
    let mut events = Vec::new();
    let event_name = ctx.settings.catalog.meter_event_name();
    let mut day = first;
    while day <= last {
        let mut value = 0;
        if comped(&account, ctx, day) {
            day += Duration::days(1);
            continue;
        }
        for id in &ids {
            for plan in &plans {
                value += keys.usage(id, plan, day, day).await?.used;
            }
        }
        if value > 0 {
            events.push(MeterEvent {
                event_name: event_name.to_string(),
                customer: customer.clone(),
                day,
                value,
                sent_at: ctx.clock.now().timestamp(),
            });
        }
        day += Duration::days(1);
    }
    send_all(meter, events.clone()).await?;
    tracing::info!(customer = %customer, events = events.len(), "closing period's usage sent");
    // The period's last day has not settled (GetUsage may still add to it): answered as a
    // failure, so Stripe delivers the event again and holds the draft meanwhile (an invoice is
    // finalized an hour after a successful answer to its invoice.created, else after 72 hours:
    // Stripe's "Configure an invoice finalization grace period" and webhook docs).
    let period_last = period_end.date_naive() - Duration::days(1);
    if !settled(period_last, ctx.clock.now()) && period_last >= today - Duration::days(SENDABLE_DAYS) {
        return Err(Error::UsageNotSettled(period_last));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_settles_three_hours_after_it_ends() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(!settled(d, at("2026-12-04T02:59:59Z")));
        assert!(settled(d, at("2026-12-04T03:00:00Z")));
    }

    #[test]
    fn an_event_carries_the_days_last_second_and_an_identifier_per_total() {
        let e = MeterEvent {
            event_name: "paykey_api_requests".into(),
            customer: CustomerId::parse("cus_123").unwrap(),
            day: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
            value: 200,
            sent_at: 1_796_000_000,
        };
        assert_eq!(e.timestamp().to_rfc3339(), "2026-12-03T23:59:59+00:00");
        assert_eq!(e.identifier(), "paykey-cus_123-20261203-200-1796000000");
        let later = MeterEvent { sent_at: 1_796_003_600, ..e.clone() };
        assert_ne!(later.identifier(), e.identifier(), "each send is a new event (it replaces the day's value)");
    }
}
