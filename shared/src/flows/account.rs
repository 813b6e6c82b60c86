use serde::Serialize;

use crate::domain::{Error, Plan, User};

use crate::ports::{Accounts, KeyRegistry, UserDirectory};

/// Answer of `GET /account`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountView {
    pub user_name: String,
    pub plan: Plan,
    pub subscription_status: Option<String>,
    /// The subscription ends at `current_period_end` instead of renewing.
    pub cancel_at_period_end: bool,
    /// RFC 3339; the end date when `cancel_at_period_end`, else the renewal date.
    pub current_period_end: Option<String>,
    /// RFC 3339; the end of the subscription's trial, when it has or had one.
    pub trial_end: Option<String>,
    pub has_billing_account: bool,
    pub api_key: Option<ApiKeyView>,
    /// The key's use of its tier's quota in the current quota period, as API Gateway counts
    /// it (`null`: no key, or a tier without a quota).
    pub usage: Option<UsageView>,
}

/// Quota use in the current period. API Gateway's periods are UTC calendar days, weeks or
/// months, not Stripe's billing period: both ends are shown.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageView {
    /// Where calls stop this period: the tier's quota, or on a metered tier the customer's
    /// spend cap (`spend_cap`).
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// `DAY`, `WEEK` or `MONTH`.
    pub period: crate::domain::QuotaPeriod,
    /// First and last day (UTC, inclusive) of the quota period API Gateway counts.
    pub period_start: String,
    pub period_end: String,
    /// When Stripe's billing period ends (renewal or end), for comparison; `null` without a
    /// subscription.
    pub billing_period_end: Option<String>,
    /// A metered tier's calls included each billing period (beyond them each call is billed,
    /// up to `limit`, the spend cap); `null` on a flat tier, whose `limit` is a hard limit.
    pub included: Option<u64>,
    /// The thresholds this period's use has reached, of [`USAGE_THRESHOLDS`]: `included_80`,
    /// `included_100` (of the included amount, on a metered tier), `limit_80`, `limit_100` (of
    /// the quota: the spend cap on a metered tier, where calls stop).
    pub alerts: Vec<&'static str>,
    /// A metered tier's spend cap and the range the customer may set it in (`PUT
    /// /api-key/cap`); `null` on a flat tier.
    pub spend_cap: Option<super::SpendCapView>,
    /// The key's calls per UTC day of the quota period so far, oldest first (as API Gateway
    /// reports them: its counts arrive with a delay).
    pub daily: Vec<DayUse>,
}

/// One day's calls.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DayUse {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub used: u64,
}

/// The days of `start..=today` with their counts, when GetUsage gave one per day (its
/// documented shape); otherwise none (a chart with shifted dates would mislead), logged.
fn daily(start: chrono::NaiveDate, today: chrono::NaiveDate, days: &[u64]) -> Vec<DayUse> {
    let want = (today - start).num_days() + 1;
    if days.len() as i64 != want {
        tracing::warn!(
            days = days.len(),
            expected = want,
            "GetUsage's daily entries do not cover the period so far: no daily figures"
        );
        return Vec::new();
    }
    start.iter_days().zip(days).map(|(d, n)| DayUse { date: d.format("%Y-%m-%d").to_string(), used: *n }).collect()
}

/// The thresholds `/account` reports (`UsageView::alerts`), in percent.
pub const USAGE_THRESHOLDS: [u64; 2] = [80, 100];

/// The thresholds `used` has reached: of the included amount (when the tier has one) and of the
/// quota. Measured over API Gateway's quota period (the UTC calendar month), which is not
/// Stripe's billing period unless the subscription started on the 1st.
pub fn usage_alerts(used: u64, included: Option<u64>, limit: u64) -> Vec<&'static str> {
    let mut alerts = Vec::new();
    let reached = |of: u64, pct: u64| of > 0 && used * 100 >= of * pct;
    if let Some(i) = included {
        for (pct, name) in USAGE_THRESHOLDS.iter().zip(["included_80", "included_100"]) {
            if reached(i, *pct) {
                alerts.push(name);
            }
        }
    }
    for (pct, name) in USAGE_THRESHOLDS.iter().zip(["limit_80", "limit_100"]) {
        if reached(limit, *pct) {
            alerts.push(name);
        }
    }
    alerts
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKeyView {
    pub id: String,
    pub value: String,
    pub enabled: bool,
}

/// The caller's plan, subscription status and API key. The key's value comes from the key
/// registry (API Gateway's control plane, 10 calls/s per account): the deployed function keeps
/// values it has read (`CachedKeyValues`), so a page view costs no control-plane call once
/// the container has shown that key. Whether the key is enabled comes from the account
/// record, which the same flows write when they enable or disable it.
pub async fn get_account<S, K, U>(
    store: &S,
    keys: &K,
    users: &U,
    ctx: super::Ctx<'_>,
    user: &User,
) -> Result<AccountView, Error>
where
    S: Accounts,
    K: KeyRegistry,
    U: UserDirectory,
{
    // Keyed by the caller's sub: a new user who took a deleted user's name sees nothing of theirs.
    let (account, profile) = tokio::try_join!(store.get_account(&user.id), users.get_user(&user.name))?;
    let profile = profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    let settings = ctx.settings;
    let (api_key, usage) = match account.as_ref().and_then(|a| a.api_key_id.as_deref().map(|id| (a, id))) {
        Some((a, id)) => {
            // The key works while the record's tier has a usage plan (a paid tier, or a free
            // tier with keys); the flows that change the tier enable or disable it.
            let tier = settings.tier_of(&a.plan).filter(|t| t.usage_plan_id.is_some());
            let metered = tier.and_then(|t| Some((t.usage_plan_id.as_deref()?, t.quota?)));
            // The value (cached per container) and this period's use: side by side.
            let (value, usage) = tokio::try_join!(keys.key_value(id), async {
                match metered {
                    Some((plan, quota)) => {
                        let today = ctx.clock.now().date_naive();
                        let (start, end) = quota.period.containing(today);
                        // through today: the days the chart shows (the use is the same)
                        keys.recent_usage(id, plan, start, today).await.map(|u| Some((quota, start, end, u)))
                    }
                    None => Ok(None),
                }
            })?;
            let view = value.map(|value| ApiKeyView {
                id: id.to_string(),
                value,
                enabled: tier.is_some() && a.suspension.is_none(),
            });
            let usage = usage.map(|(quota, start, end, u)| {
                let t = tier.expect("a tier with a quota");
                let limit = super::account_keys::quota_limit(Some(a), t).unwrap_or(u64::from(quota.limit));
                let included = t.metered.as_ref().map(|m| m.included);
                UsageView {
                    limit,
                    used: u.used,
                    remaining: u.remaining.unwrap_or_else(|| limit.saturating_sub(u.used)),
                    period: quota.period,
                    period_start: start.format("%Y-%m-%d").to_string(),
                    period_end: end.format("%Y-%m-%d").to_string(),
                    billing_period_end: a.period_end.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    included,
                    alerts: usage_alerts(u.used, included, limit),
                    spend_cap: super::spend_cap_view(Some(a), t),
                    daily: daily(start, ctx.clock.now().date_naive(), &u.days),
                }
            });
            (view, usage)
        }
        None => (None, None),
    };
    Ok(AccountView {
        user_name: user.name.to_string(),
        plan: profile.plan(),
        subscription_status: account.as_ref().and_then(|a| a.subscription_status.clone()),
        cancel_at_period_end: account.as_ref().is_some_and(|a| a.cancel_at_period_end),
        current_period_end: account
            .as_ref()
            .and_then(|a| a.period_end)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        trial_end: account
            .as_ref()
            .and_then(|a| a.trial_end)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        has_billing_account: profile.customer_id.is_some(),
        api_key,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::usage_alerts;

    #[test]
    fn alerts_name_each_threshold_reached_of_the_included_amount_and_the_limit() {
        assert_eq!(usage_alerts(0, Some(1000), 5000), Vec::<&str>::new());
        assert_eq!(usage_alerts(799, Some(1000), 5000), Vec::<&str>::new());
        assert_eq!(usage_alerts(800, Some(1000), 5000), ["included_80"]);
        assert_eq!(usage_alerts(1200, Some(1000), 5000), ["included_80", "included_100"]);
        assert_eq!(usage_alerts(4000, Some(1000), 5000), ["included_80", "included_100", "limit_80"]);
        assert_eq!(usage_alerts(5000, Some(1000), 5000), ["included_80", "included_100", "limit_80", "limit_100"]);
        assert_eq!(usage_alerts(900, None, 1000), ["limit_80"], "a flat tier: its quota only");
        assert_eq!(usage_alerts(5, Some(0), 10), Vec::<&str>::new(), "pay-per-call: nothing included to reach");
    }
}
