//! Structured JSON logs, set up once per process (`RUST_LOG` filters, default `info`), and
//! CloudWatch metrics in the embedded metric format (EMF).
//!
//! Metrics are one JSON line on stdout per observation, which CloudWatch Logs turns into metric
//! data points: no API call, nothing added to a request's latency, no IAM permission
//! (format: CloudWatch's "Specification: Embedded metric format"). They are written only when
//! `PAYKEY_METRICS_NAMESPACE` is set (the template sets `paykey/<stack name>`); the local stack
//! and the tests leave it unset unless they read the lines.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use tracing_subscriber::EnvFilter;

use crate::domain::Error;

/// JSON lines on stdout, without ANSI colours and without the time (CloudWatch adds it). Each
/// line carries the Lambda request id (the runtime's invocation span).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// A function could not start (configuration, secrets): logged, and counted as `InitFailed`.
pub fn init_failed(e: &dyn std::fmt::Display) {
    tracing::error!(error = %e, "init failed");
    emit(&[], &[("InitFailed", 1.0, Unit::Count)]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// The EMF document of one observation: every metric under the dimensions given and, rolled
/// up, under none (what the template's alarms watch).
pub fn document(
    namespace: &str,
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, f64, Unit)],
) -> Value {
    let names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let sets = if names.is_empty() { json!([[]]) } else { json!([names, []]) };
    let defs: Vec<Value> = metrics.iter().map(|(n, _, u)| json!({"Name": n, "Unit": u.as_str()})).collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": sets, "Metrics": defs}]
        }),
    );
    for (k, v) in dimensions {
        doc.insert((*k).into(), json!(v));
    }
    for (n, v, _) in metrics {
        doc.insert((*n).into(), json!(v));
    }
    Value::Object(doc)
}

fn namespace() -> Option<&'static str> {
    static NS: OnceLock<Option<String>> = OnceLock::new();
    NS.get_or_init(|| std::env::var("PAYKEY_METRICS_NAMESPACE").ok().filter(|n| !n.trim().is_empty())).as_deref()
}

#[cfg(test)]
thread_local! {
    /// The library's unit tests: the observations this thread writes, when set.
    pub(crate) static CAPTURED: std::cell::RefCell<Option<Vec<Value>>> = const { std::cell::RefCell::new(None) };
}

/// Writes one observation (when metrics are on).
pub fn emit(dimensions: &[(&str, &str)], metrics: &[(&str, f64, Unit)]) {
    #[cfg(test)]
    if CAPTURED.with(|c| c.borrow().is_some()) {
        let doc = document("test", 0, dimensions, metrics);
        CAPTURED.with(|c| c.borrow_mut().as_mut().expect("checked").push(doc));
        return;
    }
    let Some(ns) = namespace() else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    println!("{}", document(ns, now, dimensions, metrics));
}

/// The success redirect's outcome (`issued`, `pending`, `refused`, `not_granted`) and how long
/// the fulfilment took.
pub fn fulfilment(outcome: &str, latency_ms: f64) {
    emit(
        &[("Outcome", outcome)],
        &[("Fulfilment", 1.0, Unit::Count), ("FulfilmentLatency", latency_ms, Unit::Milliseconds)],
    );
}

/// A webhook delivery: the event type (`unknown` before it is verified) and the outcome
/// (`processed`, `duplicate`, `ignored`, `refused`, `failed`). Stripe retries both `failed`
/// (5xx: a backend) and `refused` (4xx: a missing or bad signature — a wrong signing secret
/// refuses every delivery until Stripe disables the endpoint), counted as `WebhookFailed` and
/// `WebhookRefused`.
pub fn webhook(event_type: &str, outcome: &str) {
    emit(&[("EventType", event_type), ("Outcome", outcome)], &[("WebhookEvent", 1.0, Unit::Count)]);
    match outcome {
        "failed" => emit(&[("EventType", event_type)], &[("WebhookFailed", 1.0, Unit::Count)]),
        "refused" => emit(&[], &[("WebhookRefused", 1.0, Unit::Count)]),
        _ => {}
    }
}

/// A key `Issued` (a first purchase's, a free key), `Rotated`, or `Moved` from one tier's usage
/// plan to another's (a plan change, a cancellation onto the free tier, a comp).
pub fn keys(action: &str) {
    emit(&[("Action", action)], &[("Keys", 1.0, Unit::Count)]);
}

/// Idle free keys the sweeper deleted in one run (`Keys` with `Action=Reclaimed`; written on
/// the hour's runs, 0 included).
pub fn keys_reclaimed(n: usize) {
    emit(&[("Action", "Reclaimed")], &[("Keys", n as f64, Unit::Count)]);
}

/// One usage report: meter events sent to Stripe and the calls they carry (`UsageReported`,
/// `UsageEvents`; written on every run of the reporter, 0 included).
pub fn usage_reported(events: usize, calls: u64) {
    emit(&[], &[("UsageEvents", events as f64, Unit::Count), ("UsageReported", calls as f64, Unit::Count)]);
}

/// Calls on metered plans in a day too old for Stripe's 35-day window: not billed, logged per
/// customer (`UsageUnreported`).
pub fn usage_unreported(calls: u64) {
    emit(&[], &[("UsageUnreported", calls as f64, Unit::Count)]);
}

/// A metered tier's customer reached a threshold this quota period (`included_80`,
/// `included_100`, `limit_80`, `limit_100`): `UsageAlert` by `Threshold`, once per customer,
/// period and threshold.
pub fn usage_alert(threshold: &str) {
    emit(&[("Threshold", threshold)], &[("UsageAlert", 1.0, Unit::Count)]);
}

/// The account's API keys (hourly, from the sweeper), against API Gateway's 10,000.
pub fn key_count(n: usize) {
    emit(&[], &[("KeyCount", n as f64, Unit::Count)]);
}

/// A request that ended in a backend error: counted as `BackendThrottled` by service when the
/// service said slow down (API Gateway's and AWS's throttling codes, DynamoDB's throughput and
/// request-limit errors, Stripe's 429), else `BackendFailed`.
pub fn backend(err: &Error) {
    if let Error::Backend(b) = err {
        let throttled = b.is_throttled()
            || b.message.starts_with("429 ")
            || ["ProvisionedThroughputExceededException", "RequestLimitExceeded"]
                .iter()
                .any(|c| b.message.starts_with(c));
        let metric = if throttled { "BackendThrottled" } else { "BackendFailed" };
        emit(&[("Service", b.service)], &[(metric, 1.0, Unit::Count)]);
    }
}

#[cfg(test)]
mod moved_tests {
    use crate::adapters::memory::{ManualClock, MemoryKeys, MemoryStore, MemoryUsers, Meter, SequentialIds};
    use crate::domain::{Plan, User, UserId, UserName};
    use crate::flows::{self, Ctx, Settings};

    /// `Keys` `Action=Moved`: written by the flows where a key leaves one tier's usage plan for
    /// another's (`account_keys::place_in_plan`), once per move.
    #[tokio::test(flavor = "current_thread")]
    async fn a_key_leaving_one_tiers_plan_for_another_is_counted_once_as_moved() {
        super::CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let meter = Meter::new();
        let (store, keys, users) =
            (MemoryStore::new(meter.clone()), MemoryKeys::new(meter.clone()), MemoryUsers::new(meter));
        let mut settings = Settings::new("https://app.example.com", "https://api.example.com");
        settings.catalog = crate::domain::Catalog::parse(
            r#"{"tiers": [{"name": "FREE", "usage_plan_id": "plan-free"},
            {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "plan-pro"}]}"#,
        )
        .unwrap();
        settings.user_budget.interval = std::time::Duration::ZERO;
        let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(20_000));
        let ids = SequentialIds::default();
        let ctx = Ctx { clock: &clock, ids: &ids, settings: &settings };
        let u = User {
            id: UserId::parse("6f1e9a52-0000-4000-8000-000000000001").unwrap(),
            name: UserName::parse("mo").unwrap(),
        };
        users.add_user_with_sub(&u);
        flows::issue_free_key(&store, &keys, &users, ctx, &u).await.unwrap(); // a new key: not a move
        let until = crate::ports::Clock::now(&clock) + chrono::Duration::days(9);
        flows::admin::set_comp(&store, &keys, &users, ctx, &u, Some((Plan::PRO, until, String::new()))).await.unwrap();
        flows::admin::set_comp(&store, &keys, &users, ctx, &u, Some((Plan::PRO, until, String::new()))).await.unwrap();
        let docs = super::CAPTURED.with(|c| c.borrow_mut().take()).unwrap();
        let moved: Vec<_> = docs.iter().filter(|d| d["Action"] == "Moved").collect();
        assert_eq!(moved.len(), 1, "FREE → PRO once; the repeat finds it in PRO: {docs:?}");
        assert_eq!(moved[0]["Keys"].as_f64(), Some(1.0));
        assert_eq!(moved[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["Action"], []]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_follows_the_emf_specification() {
        let d = document(
            "paykey/prod",
            1_700_000_000_000,
            &[("Outcome", "issued")],
            &[("Fulfilment", 1.0, Unit::Count), ("FulfilmentLatency", 812.5, Unit::Milliseconds)],
        );
        assert_eq!(
            d,
            json!({
                "_aws": {"Timestamp": 1_700_000_000_000i64, "CloudWatchMetrics": [{
                    "Namespace": "paykey/prod",
                    "Dimensions": [["Outcome"], []],
                    "Metrics": [{"Name": "Fulfilment", "Unit": "Count"}, {"Name": "FulfilmentLatency", "Unit": "Milliseconds"}]
                }]},
                "Outcome": "issued",
                "Fulfilment": 1.0,
                "FulfilmentLatency": 812.5
            })
        );
        // no dimensions: one empty dimension set (the metric alone)
        let d = document("paykey", 0, &[], &[("InitFailed", 1.0, Unit::Count)]);
        assert_eq!(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
    }
}
