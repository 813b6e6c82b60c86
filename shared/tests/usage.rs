//! Quota use (issue 12): GetUsage and UpdateUsage through the key registry. moto 5.2.5 has
//! neither, so the AWS adapter is run against AWS's documented response shapes served on
//! loopback (`GET /usageplans/{id}/usage`, `PATCH /usageplans/{id}/keys/{keyId}/usage`), and
//! the in-memory registry — which the local stack's product API meters — through the same
//! assertions. What this does not prove: that API Gateway's real answers match its documented
//! shapes in every case (only a deployed stack can).

mod support;

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::routing::{get, patch};
use axum::{Json, Router};
use chrono::NaiveDate;
use paykey::adapters::aws::ApiGatewayKeys;
use paykey::adapters::memory::{MemoryKeys, Meter, Refused};
use paykey::domain::{Quota, QuotaPeriod};
use paykey::ports::{KeyRegistry, KeyUsage};
use serde_json::{json, Value};

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

/// What the fixture saw and will answer.
#[derive(Default)]
struct Fixture {
    /// key id → daily [used, remaining] entries (AWS's `values` map).
    days: Vec<[i64; 2]>,
    queries: Vec<(String, std::collections::HashMap<String, String>)>,
    patches: Vec<(String, String, Value)>,
}

async fn serve(fixture: Arc<Mutex<Fixture>>) -> String {
    async fn usage(
        State(f): State<Arc<Mutex<Fixture>>>,
        Path(plan): Path<String>,
        Query(q): Query<std::collections::HashMap<String, String>>,
    ) -> Json<Value> {
        let mut f = f.lock().unwrap();
        f.queries.push((plan.clone(), q.clone()));
        let key = q.get("keyId").cloned().unwrap_or_default();
        // GetUsage's documented response: {"usagePlanId", "startDate", "endDate", "values": {key: [[used, remaining], …]}}
        Json(json!({
            "usagePlanId": plan, "startDate": q.get("startDate"), "endDate": q.get("endDate"),
            "values": { key: f.days }
        }))
    }
    async fn update(
        State(f): State<Arc<Mutex<Fixture>>>,
        Path((plan, key)): Path<(String, String)>,
        Json(body): Json<Value>,
    ) -> Json<Value> {
        f.lock().unwrap().patches.push((plan.clone(), key.clone(), body));
        Json(json!({"usagePlanId": plan, "values": { key: [[0, 0]] }}))
    }
    let app = Router::new()
        .route("/usageplans/{plan}/usage", get(usage))
        .route("/usageplans/{plan}/keys/{key}/usage", patch(update))
        .with_state(fixture);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn adapter(url: &str) -> ApiGatewayKeys {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(paykey::adapters::https::AwsHttpClient::new(&Default::default()).unwrap().shared())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(aws_sdk_apigateway::config::Credentials::new("testing", "testing", None, None, "fixture"))
        .load()
        .await;
    ApiGatewayKeys::new(&config)
}

/// The shared assertion: a key that used 3 + 5 requests of a 100-request month reports 8 used
/// and 92 remaining; `set_remaining(40)` is what the next read reports as remaining.
async fn usage_contract<K: KeyRegistry>(keys: &K, key: &str, plan: &str, after_set: impl AsyncFn() -> KeyUsage) {
    let (start, end) = QuotaPeriod::Month.containing(d(2026, 12, 2));
    let u = keys.usage(key, plan, start, end).await.unwrap();
    assert_eq!(u, KeyUsage { used: 8, remaining: Some(92), days: vec![3, 5] });
    keys.set_remaining(key, plan, 40).await.unwrap();
    assert_eq!(after_set().await.remaining, Some(40));
}

#[tokio::test]
async fn the_api_gateway_adapter_reads_and_sets_usage_in_aws_s_documented_shapes() {
    let fixture = Arc::new(Mutex::new(Fixture { days: vec![[3, 97], [5, 92]], ..Default::default() }));
    let url = serve(fixture.clone()).await;
    let keys = adapter(&url).await;
    let f2 = fixture.clone();
    let keys2 = adapter(&url).await;
    usage_contract(&keys, "key1", "plan1", async move || {
        f2.lock().unwrap().days = vec![[3, 97], [5, 40]];
        keys2.usage("key1", "plan1", d(2026, 12, 1), d(2026, 12, 31)).await.unwrap()
    })
    .await;
    let f = fixture.lock().unwrap();
    let (plan, q) = &f.queries[0];
    assert_eq!(plan, "plan1");
    assert_eq!(
        (q["keyId"].as_str(), q["startDate"].as_str(), q["endDate"].as_str()),
        ("key1", "2026-12-01", "2026-12-31")
    );
    assert_eq!(f.patches.len(), 1);
    let (plan, key, body) = &f.patches[0];
    assert_eq!((plan.as_str(), key.as_str()), ("plan1", "key1"));
    assert_eq!(body["patchOperations"], json!([{"op": "replace", "path": "/remaining", "value": "40"}]));
}

#[tokio::test]
async fn the_memory_registry_meters_calls_and_meets_the_same_contract() {
    let keys = MemoryKeys::new(Meter::new());
    let clock = Arc::new(paykey::adapters::memory::ManualClock::new("2026-12-02T12:00:00Z".parse().unwrap()));
    keys.use_clock(clock.clone());
    keys.define_plan("plan1", Some(Quota { limit: 100, period: QuotaPeriod::Month }), None);
    let k = keys.create("k").await.unwrap();
    let value = keys.key_value(&k.id).await.unwrap().unwrap();
    assert_eq!(keys.call(&value, "2026-12-01T10:00:00Z".parse().unwrap()), Err(Refused::Forbidden), "in no plan yet");
    keys.attach_to_plan(&k.id, "plan1").await.unwrap();
    for (day, n) in [("2026-12-01T10:00:00Z", 3), ("2026-12-02T10:00:00Z", 5)] {
        for _ in 0..n {
            keys.call(&value, day.parse().unwrap()).unwrap();
        }
    }
    // last month's calls do not count in this one
    keys.call(&value, "2026-11-30T23:59:59Z".parse().unwrap()).unwrap();
    let id = k.id.clone();
    let keys2 = keys.clone();
    usage_contract(&keys, &k.id, "plan1", async move || {
        keys2.usage(&id, "plan1", d(2026, 12, 1), d(2026, 12, 31)).await.unwrap()
    })
    .await;
    // 40 remaining: the 41st call of the period is refused with API Gateway's message
    for _ in 0..40 {
        keys.call(&value, "2026-12-02T11:00:00Z".parse().unwrap()).unwrap();
    }
    let refused = keys.call(&value, "2026-12-02T11:00:01Z".parse().unwrap()).unwrap_err();
    assert_eq!((refused, refused.status(), refused.message()), (Refused::QuotaExceeded, 429, "Limit Exceeded"));
    // the next month starts afresh
    keys.call(&value, "2027-01-01T00:00:00Z".parse().unwrap()).unwrap();
    keys.set_enabled(&k.id, false).await.unwrap();
    assert_eq!(keys.call(&value, "2027-01-01T00:00:01Z".parse().unwrap()), Err(Refused::Forbidden));
}

#[tokio::test(start_paused = true)]
async fn the_memory_registry_throttles_like_a_token_bucket() {
    let keys = MemoryKeys::new(Meter::new());
    keys.define_plan("p", None, Some(paykey::domain::Throttle { rate: 2.0, burst: 3 }));
    let k = keys.create("k").await.unwrap();
    keys.attach_to_plan(&k.id, "p").await.unwrap();
    let value = keys.key_value(&k.id).await.unwrap().unwrap();
    let now = "2026-12-02T12:00:00Z".parse().unwrap();
    for _ in 0..3 {
        keys.call(&value, now).unwrap();
    }
    let r = keys.call(&value, now).unwrap_err();
    assert_eq!((r, r.status(), r.message()), (Refused::Throttled, 429, "Too Many Requests"));
    tokio::time::advance(std::time::Duration::from_millis(500)).await;
    keys.call(&value, now).unwrap();
    assert_eq!(keys.call(&value, now), Err(Refused::Throttled));
}

#[tokio::test]
async fn a_container_reads_a_key_s_usage_once_per_half_minute_and_again_after_an_update() {
    let meter = Meter::new();
    let inner = MemoryKeys::new(meter.clone());
    inner.define_plan("plan1", Some(Quota { limit: 100, period: QuotaPeriod::Month }), None);
    let keys = paykey::adapters::cached::CachedKeyValues::new(inner);
    let k = keys.create("k").await.unwrap();
    keys.attach_to_plan(&k.id, "plan1").await.unwrap();
    let (start, end) = (d(2026, 12, 1), d(2026, 12, 31));
    meter.reset_calls();
    for _ in 0..5 {
        keys.recent_usage(&k.id, "plan1", start, end).await.unwrap();
    }
    assert_eq!(meter.count("apigw.usage"), 1, "one GetUsage for five page views");
    keys.set_remaining(&k.id, "plan1", 10).await.unwrap();
    keys.recent_usage(&k.id, "plan1", start, end).await.unwrap();
    assert_eq!(meter.count("apigw.usage"), 2, "read again after UpdateUsage");
    // What decides quota (rotation, the end of a grace) is never read from the cache.
    for _ in 0..3 {
        keys.usage(&k.id, "plan1", start, end).await.unwrap();
    }
    assert_eq!(meter.count("apigw.usage"), 5, "exact usage: one GetUsage each");
}
