//! Usage-based billing end to end on the local stack (issue 26), over HTTP with the emulator's
//! test clock: PRO includes 1,000 calls a month and bills the rest at ¥0.5; 1,200 calls over two
//! days through the local product API; the hourly reporter (its first event's answer lost on the
//! way back) and the period's `invoice.created` webhook (its meter events refused until Stripe
//! redelivers the event) send the daily totals; the finalized invoice carries 200 × ¥0.5.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use paykey_local::{start, Options};
use serde_json::{json, Value};
use stripe_emulator::ApiFault;

const METERED: &str = r#"{"tiers": [
    {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 1000, "period": "MONTH"}},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro",
     "quota": {"limit": 5000, "period": "MONTH"}, "metered": {"lookup_key": "FMMailProCalls", "included": 1000}}]}"#;

async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, Option<String>, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.expect("request");
    let status = resp.status().as_u16();
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, location, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_hundred_calls_on_a_tier_that_includes_a_thousand_bill_two_hundred_at_period_end_over_http() {
    let data = std::env::temp_dir().join(format!("paykey-metering-{}", uuid::Uuid::new_v4().simple()));
    let stack = start(Options {
        port: 0,
        data_dir: data.clone(),
        catalog: Some(METERED.into()),
        webhook_retry_delay: Duration::from_millis(200),
        sweep_every: None, // the reporter runs when this test says
        ..Options::default()
    })
    .await
    .expect("start");
    let base = stack.base_url();
    let emulator = stack.state.emulator.clone().expect("the emulator");
    let day_secs = 24 * 3600;
    // The test clock to the 2nd of next month, 10:00 UTC: the walk's days stay in one calendar
    // month (one quota period) and its period ends at 10:00, after that day's usage settled.
    {
        use chrono::{Datelike, TimeZone};
        let now = chrono::Utc::now();
        let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
        let target = chrono::Utc.with_ymd_and_hms(y, m, 2, 10, 0, 0).unwrap();
        emulator.advance((target - now).num_seconds());
    }

    // The pricing table shows the included amount and the rate.
    let (s, _, body) = call("GET", &format!("{base}/api/plans"), &[], "").await;
    assert_eq!(s, 200, "{body}");
    let plans: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        plans["plans"][1]["metered"],
        json!({"included": 1000, "unit_amount_decimal": "0.5", "currency": "jpy"})
    );

    // mia buys PRO: the checkout sells the flat and the metered price.
    stack.state.cognito.sign_up("mia", "correct horse", None).unwrap();
    let token = stack.state.cognito.sign_in("mia", "correct horse", chrono::Utc::now().timestamp()).unwrap().id_token;
    let auth = [("authorization", token.as_str()), ("content-type", "application/json")];
    let (s, _, body) =
        call("POST", &format!("{base}/api/checkout-sessions"), &auth, &json!({"lookup_key": "FMMailPro"}).to_string())
            .await;
    assert_eq!(s, 200, "{body}");
    let session =
        serde_json::from_str::<Value>(&body).unwrap()["url"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let success = emulator.pay(&session).expect("paid");
    let (s, location, _) = call("GET", &success, &[], "").await;
    assert_eq!((s, location), (302, Some(format!("{base}/thanks_upgrade"))));
    let (_, _, body) = call("GET", &format!("{base}/api/account"), &auth, "").await;
    let account: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(account["plan"], "PRO", "{account}");
    let key = account["api_key"]["value"].as_str().unwrap().to_string();
    let customer = stack.state.app.store.accounts()[0].customer_id.clone().unwrap().to_string();
    let (_, sub) = emulator.call("GET", "/v1/subscriptions", &format!("customer={customer}"));
    let sub = sub["data"][0].clone();
    let items: Vec<&str> =
        sub["items"]["data"].as_array().unwrap().iter().map(|i| i["price"]["lookup_key"].as_str().unwrap()).collect();
    assert_eq!(items, ["FMMailPro", "FMMailProCalls"]);
    let item = &sub["items"]["data"][0];
    let (period_start, period_end) =
        (item["current_period_start"].as_i64().unwrap(), item["current_period_end"].as_i64().unwrap());
    let now = || chrono::Utc::now().timestamp() + emulator.clock_offset();
    let hello = |n: usize| {
        let (base, key) = (base.clone(), key.clone());
        async move {
            for _ in 0..n {
                let (s, _, body) =
                    call("GET", &format!("{base}/product/hello"), &[("x-api-key", key.as_str())], "").await;
                assert_eq!(s, 200, "{body}");
            }
        }
    };

    // 700 calls on the first day.
    let started = Instant::now();
    hello(700).await;

    // 03:00 the next day (the test clock moves the stack's day too): the first day has settled.
    // The hourly reporter runs; Stripe's answer to its meter event is lost on the way back (the
    // adapter retries with the same idempotency key and identifier).
    let t = now();
    emulator.advance((t / day_secs + 1) * day_secs + 3 * 3600 - t);
    emulator.inject("POST", "/v1/billing/meter_events", ApiFault::LoseAnswer);
    let app = &stack.state.app;
    let accounts = app.store.accounts();
    let r = paykey::flows::metering::report_usage(&app.keys, &app.payments, &app.store, app.ctx(), &accounts)
        .await
        .expect("the hourly report");
    println!("# hourly report: {} event(s), {} calls, reported through {:?}", r.events, r.calls, r.reported_through);
    assert_eq!((r.events, r.calls), (1, 700), "{r:?}");
    let meter = emulator.call("GET", "/v1/billing/meters", "").1["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(emulator.meter_usage(&meter, &customer, period_start, period_end), 700);

    // 500 more on the second day: left to the period's invoice.created.
    hello(500).await;
    println!("# 1,200 product calls in {:.1} s", started.elapsed().as_secs_f64());
    // /account: the included amount, the cap, and the thresholds reached
    let (_, _, body) = call("GET", &format!("{base}/api/account"), &auth, "").await;
    let usage = serde_json::from_str::<Value>(&body).unwrap()["usage"].clone();
    assert_eq!(
        (usage["used"].as_u64(), usage["included"].as_u64(), usage["limit"].as_u64()),
        (Some(1200), Some(1000), Some(5000)),
        "{usage}"
    );
    assert_eq!(usage["alerts"], json!(["included_80", "included_100"]), "{usage}");

    // The period ends: a draft invoice (invoice.created) whose meter events Stripe refuses four
    // times (every attempt of the first delivery's call): the webhook fails, Stripe redelivers,
    // the second delivery sends the day the reporter has not settled.
    for _ in 0..4 {
        emulator.inject("POST", "/v1/billing/meter_events", ApiFault::Refuse(500));
    }
    emulator.advance(period_end - now() + 60);
    let (_, s) = emulator.call("GET", &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()), "");
    let invoice_id = s["latest_invoice"].as_str().unwrap().to_string();
    let (_, draft) = emulator.call("GET", &format!("/v1/invoices/{invoice_id}"), "");
    assert_eq!(draft["status"], "draft", "{draft}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while emulator.meter_usage(&meter, &customer, period_start, period_end) != 1200 {
        assert!(
            Instant::now() < deadline,
            "the closing period's usage did not reach the meter: {}; deliveries: {:?}; requests: {:?}",
            emulator.meter_usage(&meter, &customer, period_start, period_end),
            emulator.deliveries().iter().map(|d| (d.event_type.clone(), d.status)).collect::<Vec<_>>(),
            emulator.requests().iter().map(|r| (r.path.clone(), r.status)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused =
        emulator.requests().iter().filter(|r| r.path == "/v1/billing/meter_events" && r.status == 500).count();
    assert_eq!(refused, 5, "the lost answer, then the first delivery's four attempts");

    // The grace period ends: finalized with the usage as it stands, and paid.
    emulator.advance(2 * 3600);
    let (_, invoice) = emulator.call("GET", &format!("/v1/invoices/{invoice_id}"), "");
    assert_eq!(invoice["status"], "paid", "{invoice}");
    let usage = invoice["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["period"]["end"] == period_end)
        .unwrap_or_else(|| panic!("no usage line: {invoice}"))
        .clone();
    println!(
        "# the period's invoice: {} calls metered, 1000 included, usage line ¥{} at ¥{} a call, invoice total ¥{}",
        usage["quantity"],
        usage["amount"],
        paykey_local::LOCAL_RATE,
        invoice["total"]
    );
    assert_eq!((usage["quantity"].as_u64(), usage["amount"].as_i64()), (Some(1200), Some(100)), "200 × ¥0.5");
    assert_eq!(invoice["total"], 980 + 100, "the next month's ¥980 and the usage");
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}
