//! End to end over HTTP against the real `paykey-local` binary: sign up, sign in, checkout,
//! pay through the emulator's form (declined card, cancel link), redirects, key issued,
//! `/account`, product API, portal, cancel → webhook → FREE, restart keeps everything.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

struct Stack {
    child: Child,
    base: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deployment configured like the single-tier version: FREE without a key, PRO.
const SINGLE_TIER: &str = r#"{"tiers": [{"name": "FREE"},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro"}]}"#;

/// FREE with keys, PRO with a 14-day trial, BUSINESS (the local stack's catalog plus a trial).
const TIERS_WITH_TRIAL: &str = r#"{"tiers": [
    {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 1000, "period": "MONTH"}},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro", "trial_days": 14},
    {"name": "BUSINESS", "lookup_key": "FMMailBusiness", "usage_plan_id": "usage-plan-business"}]}"#;

/// The stack's base URL from its "paykey local stack on …" line. Log lines of its background
/// work (a restarted stack delivers the webhooks it still owes, the sweep runs) may come first:
/// printed, not taken for it.
fn url_line(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> String {
    for line in lines.by_ref() {
        let line = line.expect("paykey-local's output");
        match line.strip_prefix("paykey local stack on ") {
            Some(base) => return base.trim().to_string(),
            None => println!("paykey-local: {line}"),
        }
    }
    panic!("paykey-local ended without printing its URL line")
}

fn start(data: &std::path::Path) -> Stack {
    start_with(data, SINGLE_TIER)
}

fn start_with(data: &std::path::Path, catalog: &str) -> Stack {
    let mut child = Command::new(env!("CARGO_BIN_EXE_paykey-local"))
        .env("PAYKEY_PORT", "0")
        .env("PAYKEY_CATALOG", catalog)
        .env("PAYKEY_DATA_DIR", data)
        .env("RUST_LOG", "info")
        .env_remove("STRIPE_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start paykey-local");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = url_line(&mut lines);
    // JSON logs go to stdout: keep them, and print them when the test fails (captured by the
    // test harness like any test output).
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("paykey-local: {line}");
        }
    });
    Stack { child, base }
}

struct Resp {
    status: u16,
    location: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.expect("request");
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (location, retry_after) = (header("location"), header("retry-after"));
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Resp { status, location, retry_after, body }
}

async fn sign_in(base: &str, user: &str, password: &str) -> String {
    let r = call(
        "POST",
        &format!("{base}/cognito/sign-in"),
        &[("content-type", "application/json")],
        &json!({"username": user, "password": password}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["AuthenticationResult"]["IdToken"].as_str().unwrap().to_string()
}

async fn account(base: &str, token: &str) -> Value {
    let r = call("GET", &format!("{base}/api/account"), &[("authorization", token)], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn checkout(base: &str, token: &str) -> String {
    let r = checkout_for(base, token, "FMMailPro").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["kind"], "checkout");
    r.json()["url"].as_str().unwrap().to_string()
}

async fn checkout_for(base: &str, token: &str, lookup_key: &str) -> Resp {
    call(
        "POST",
        &format!("{base}/api/checkout-sessions"),
        &[("authorization", token), ("content-type", "application/json")],
        &json!({ "lookup_key": lookup_key }).to_string(),
    )
    .await
}

async fn product(base: &str, key: &str) -> Resp {
    call("GET", &format!("{base}/product/hello"), &[("x-api-key", key)], "").await
}

/// The `action` of the form whose button carries `marker`, on an HTML page.
fn form_action(page: &str, marker: &str) -> String {
    let at = page.find(marker).unwrap_or_else(|| panic!("{marker} not on the page: {page}"));
    let form = page[..at].rfind("<form").unwrap();
    page[form..].split(r#"action=""#).nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&")
}

/// Pays on the hosted checkout page and follows Stripe's redirect to paykey's success URL.
async fn pay(base: &str, checkout_url: &str) -> String {
    let r = call(
        "POST",
        checkout_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        "card_number=4242+4242+4242+4242&exp=12%2F34&cvc=123",
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let success = r.location.unwrap();
    assert!(success.starts_with(&format!("{base}/api/create-api-key/cs_test_")), "{success}");
    success
}

async fn eventually(base: &str, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries = call("GET", &format!("{base}/stripe/_emulator/deliveries"), &[], "").await.body;
    panic!("timed out waiting for: {what}\nwebhook deliveries: {deliveries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_upgrade_flow_over_http() {
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start(&data);
    let base = stack.base.clone();

    // sign up and sign in
    let r = call(
        "POST",
        &format!("{base}/cognito/sign-up"),
        &[("content-type", "application/json")],
        r#"{"username":"alice","password":"correct horse"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = sign_in(&base, "alice", "correct horse").await;
    assert_eq!(account(&base, &token).await["plan"], "FREE");

    // forged, foreign and missing tokens are refused by the authorizer
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    for bad in [forged.as_str(), "eyJhbGciOiJub25lIn0.eyJjb2duaXRvOnVzZXJuYW1lIjoiYWxpY2UifQ.", ""] {
        let r = call("GET", &format!("{base}/api/account"), &[("authorization", bad)], "").await;
        assert_eq!(r.status, 401, "token {bad:?}: {}", r.body);
    }

    // checkout page; the back link goes to the cancel page
    let url = checkout(&base, &token).await;
    let page = call("GET", &url, &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("FMMail PRO") && page.body.contains("¥980"), "{}", page.body);
    assert!(page.body.contains(&format!(r#"href="{base}/canceled_upgrade""#)), "back link to cancel_url");
    assert_eq!(call("GET", &format!("{base}/canceled_upgrade"), &[], "").await.status, 200);

    // a declined card leaves the session unpaid
    let declined =
        call("POST", &url, &[("content-type", "application/x-www-form-urlencoded")], "card_number=4000000000000002")
            .await;
    assert_eq!(declined.status, 402);
    assert!(declined.body.contains("Your card was declined."));
    let session_id = url.rsplit('/').next().unwrap();
    let early =
        call("GET", &format!("{base}/api/create-api-key/{session_id}/00000000-0000-4000-8000-000000000000"), &[], "")
            .await;
    assert_eq!(early.location.as_deref(), Some(format!("{base}/canceled_upgrade").as_str()));
    assert_eq!(account(&base, &token).await["plan"], "FREE");

    // pay, follow the redirect: thanks page; a refresh says thanks again
    let success = pay(&base, &url).await;
    for _ in 0..2 {
        let r = call("GET", &success, &[], "").await;
        assert_eq!(r.status, 302, "{}", r.body);
        assert_eq!(r.location.as_deref(), Some(format!("{base}/thanks_upgrade").as_str()));
    }
    let acct = account(&base, &token).await;
    assert_eq!(acct["plan"], "PRO");
    let key = acct["api_key"]["value"].as_str().unwrap().to_string();
    let key_id = acct["api_key"]["id"].as_str().unwrap().to_string();
    assert_eq!(call("GET", &format!("{base}/product/hello"), &[("x-api-key", &key)], "").await.status, 200);
    assert_eq!(call("GET", &format!("{base}/product/hello"), &[("x-api-key", "guess")], "").await.status, 403);

    // a second checkout while PRO is refused
    let r = call(
        "POST",
        &format!("{base}/api/checkout-sessions"),
        &[("authorization", &token), ("content-type", "application/json")],
        r#"{"lookup_key":"FMMailPro"}"#,
    )
    .await;
    assert_eq!(r.status, 409);

    // the portal opens for her customer; cancel there → webhook → FREE, key refused
    let r = call("GET", &format!("{base}/api/create-billing-portal-by-user"), &[("authorization", &token)], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "OK");
    let portal_url = r.json()["billing_portal_url"].as_str().unwrap().to_string();
    let portal = call("GET", &portal_url, &[], "").await;
    assert!(portal.body.contains("Cancel subscription") && portal.body.contains("Invoice history"), "{}", portal.body);
    let action = form_action(&portal.body, "Cancel subscription");
    assert_eq!(call("POST", &action, &[], "").await.status, 303);
    eventually(&base, "the cancellation webhook downgrades alice", async || {
        account(&base, &token).await["plan"] == "FREE"
    })
    .await;
    let acct = account(&base, &token).await;
    assert_eq!(acct["subscription_status"], "canceled");
    assert_eq!(acct["api_key"]["enabled"], false);
    assert_eq!(
        call("GET", &format!("{base}/product/hello"), &[("x-api-key", &key)], "").await.status,
        403,
        "the product API rejects the key"
    );

    // restart: users, keys and plans survive; re-subscribing reuses the customer and the key
    drop(stack);
    let stack = start(&data);
    let base = stack.base.clone();
    let token = sign_in(&base, "alice", "correct horse").await;
    let acct = account(&base, &token).await;
    assert_eq!(acct["plan"], "FREE");
    assert_eq!(acct["has_billing_account"], true);
    let url = checkout(&base, &token).await;
    let success = pay(&base, &url).await;
    assert_eq!(
        call("GET", &success, &[], "").await.location.as_deref(),
        Some(format!("{base}/thanks_upgrade").as_str())
    );
    let acct = account(&base, &token).await;
    assert_eq!(acct["plan"], "PRO");
    assert_eq!(acct["api_key"]["id"], key_id.as_str(), "the same key, re-enabled");
    assert_eq!(call("GET", &format!("{base}/product/hello"), &[("x-api-key", &key)], "").await.status, 200);
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 11's walk over HTTP on the local stack: the pricing table, a free key, a trial of PRO,
/// the trial ending with a card (the test clock), a switch to BUSINESS in the portal
/// (prorated), a checkout for another tier answered with the portal, cancel → back to the free
/// plan with the same key. The product API says which tier's usage plan served each call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_then_trial_then_paid_then_business_then_cancel_back_to_free_with_one_key() {
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start_with(&data, TIERS_WITH_TRIAL);
    let base = stack.base.clone();

    // the pricing table, public
    let plans = call("GET", &format!("{base}/api/plans"), &[], "").await;
    assert_eq!(plans.status, 200, "{}", plans.body);
    let p = plans.json();
    let names: Vec<&str> = p["plans"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["FREE", "PRO", "BUSINESS"]);
    assert_eq!(p["plans"][1]["price"]["unit_amount"], 980);
    assert_eq!(p["plans"][1]["trial_days"], 14);
    assert_eq!(p["plans"][2]["price"]["unit_amount"], 4980);

    let r = call(
        "POST",
        &format!("{base}/cognito/sign-up"),
        &[("content-type", "application/json")],
        r#"{"username":"nora","password":"correct horse"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = sign_in(&base, "nora", "correct horse").await;

    // a free key, once
    let r = call("POST", &format!("{base}/api/api-key"), &[("authorization", &token)], "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let key = r.json()["api_key"]["value"].as_str().unwrap().to_string();
    let key_id = r.json()["api_key"]["id"].as_str().unwrap().to_string();
    let again = call("POST", &format!("{base}/api/api-key"), &[("authorization", &token)], "").await;
    assert_eq!((again.status, again.json()["api_key"]["id"].as_str()), (200, Some(key_id.as_str())));
    assert_eq!(product(&base, &key).await.json()["tier"], "FREE");

    // PRO with its trial: the checkout page offers it, trialing grants PRO on the same key
    let url = checkout(&base, &token).await;
    let page = call("GET", &url, &[], "").await;
    assert!(page.body.contains("Start 14-day trial"), "{}", page.body);
    let success = pay(&base, &url).await;
    assert_eq!(
        call("GET", &success, &[], "").await.location.as_deref(),
        Some(format!("{base}/thanks_upgrade").as_str())
    );
    let acct = account(&base, &token).await;
    assert_eq!((acct["plan"].as_str(), acct["subscription_status"].as_str()), (Some("PRO"), Some("trialing")));
    assert!(acct["trial_end"].is_string(), "{acct}");
    assert_eq!(acct["api_key"]["id"], key_id.as_str(), "one key for life");
    assert_eq!(product(&base, &key).await.json()["tier"], "PRO");

    // the trial ends (test clock +15 days): the card is charged, active, still PRO
    let r = call(
        "POST",
        &format!("{base}/stripe/_emulator/advance"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "seconds=1296000",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(&base, "the trial turns active", async || {
        account(&base, &token).await["subscription_status"] == "active"
    })
    .await;
    assert_eq!(account(&base, &token).await["plan"], "PRO");

    // asking to check out BUSINESS while on PRO: the portal, not a second subscription
    let r = checkout_for(&base, &token, "FMMailBusiness").await;
    assert_eq!((r.status, r.json()["kind"].as_str()), (200, Some("billing_portal")), "{}", r.body);
    let portal = call("GET", r.json()["url"].as_str().unwrap(), &[], "").await;
    let switch = form_action(&portal.body, r#"data-lookup-key="FMMailBusiness""#);
    let price = portal.body.split(r#"name="price" value=""#).nth(1).unwrap().split('"').next().unwrap().to_string();
    let r = call("POST", &switch, &[("content-type", "application/x-www-form-urlencoded")], &format!("price={price}"))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    eventually(&base, "the plan change reaches paykey", async || account(&base, &token).await["plan"] == "BUSINESS")
        .await;
    assert_eq!(account(&base, &token).await["api_key"]["id"], key_id.as_str());
    assert_eq!(product(&base, &key).await.json()["tier"], "BUSINESS");
    let events = call("GET", &format!("{base}/stripe/_emulator/events"), &[], "").await.json();
    let proration = events.as_array().unwrap().iter().rev().find(|e| e["type"] == "invoice.paid").unwrap();
    assert_eq!(proration["data"]["object"]["billing_reason"], "subscription_update");
    assert!(proration["data"]["object"]["amount_due"].as_i64().unwrap() > 0, "the difference is charged");
    let same = checkout_for(&base, &token, "FMMailBusiness").await;
    assert_eq!((same.status, same.json()["error"].as_str()), (409, Some("already_subscribed")));

    // cancel in the portal: back to the free plan, the same key still works there
    let portal = call("GET", r.location.as_deref().unwrap(), &[], "").await;
    let cancel = form_action(&portal.body, "Cancel subscription");
    assert_eq!(call("POST", &cancel, &[], "").await.status, 303);
    eventually(&base, "the cancellation reaches paykey", async || account(&base, &token).await["plan"] == "FREE").await;
    let acct = account(&base, &token).await;
    assert_eq!(
        (acct["api_key"]["id"].as_str(), acct["api_key"]["enabled"].as_bool()),
        (Some(key_id.as_str()), Some(true))
    );
    assert_eq!(product(&base, &key).await.json()["tier"], "FREE");
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 12 over HTTP: a small quota (5 a month) counted by the local product API, `/account`
/// usage, a rotation with a 2-second grace (both keys work, then only the new one), the
/// remaining quota carried over, and the quota exhausted (429 `Limit Exceeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rotation_with_grace_and_an_exhausted_quota_over_http() {
    const SMALL: &str = r#"{"tiers": [
        {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 5, "period": "MONTH"}},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro"}]}"#;
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start_with(&data, SMALL);
    let base = stack.base.clone();
    let r = call(
        "POST",
        &format!("{base}/cognito/sign-up"),
        &[("content-type", "application/json")],
        r#"{"username":"olga","password":"correct horse"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = sign_in(&base, "olga", "correct horse").await;
    let r = call("POST", &format!("{base}/api/api-key"), &[("authorization", &token)], "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let old = r.json()["api_key"]["value"].as_str().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(product(&base, &old).await.status, 200);
    }
    let usage = account(&base, &token).await["usage"].clone();
    assert_eq!(
        (usage["limit"].as_u64(), usage["used"].as_u64(), usage["remaining"].as_u64()),
        (Some(5), Some(3), Some(2))
    );
    assert_eq!(usage["period"], "MONTH");

    let r = call(
        "POST",
        &format!("{base}/api/api-key/rotate"),
        &[("authorization", &token), ("content-type", "application/json")],
        r#"{"grace_seconds": 2}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.json()["api_key"]["value"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(product(&base, &old).await.status, 200, "the old key works in its grace");
    tokio::time::sleep(Duration::from_millis(3500)).await; // the grace (2 s) and a sweep (every 1 s)
    assert_eq!(product(&base, &old).await.status, 403, "only the new key works after the grace");
    // the new key has what was left (5 − 3 − 1 used by the old key in its grace = 1)
    let ok = product(&base, &new).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let refused = product(&base, &new).await;
    assert_eq!((refused.status, refused.json()["message"].as_str()), (429, Some("Limit Exceeded")));
    let acct = account(&base, &token).await;
    assert_eq!(acct["usage"]["remaining"], 0, "{acct}");
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_corrupt_data_file_stops_the_stack_with_a_clear_error() {
    let data = std::env::temp_dir().join(format!("paykey-corrupt-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("state.json"), "{ not json").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paykey-local"))
        .env("PAYKEY_PORT", "0")
        .env("PAYKEY_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") && err.contains("state.json"), "{err}");
    assert_eq!(std::fs::read_to_string(data.join("state.json")).unwrap(), "{ not json", "never silently replaced");
    let _ = std::fs::remove_dir_all(&data);
}

/// Two tabs: the second checkout answers the first tab's session (no second session at
/// Stripe), so only one can be paid; the user ends with one active subscription and one
/// charge. (A second session replaces the first only once it is an hour old or paid; then the
/// first is expired at Stripe: `budget.rs` on memory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tab_gets_the_first_tabs_checkout_over_http() {
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start(&data);
    let base = stack.base.clone();
    let r = call(
        "POST",
        &format!("{base}/cognito/sign-up"),
        &[("content-type", "application/json")],
        r#"{"username":"tabby","password":"correct horse"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = sign_in(&base, "tabby", "correct horse").await;
    let tab1 = checkout(&base, &token).await;
    let tab2 = checkout(&base, &token).await;
    assert_eq!(tab1, tab2, "one open session per user and price");
    let success = pay(&base, &tab2).await;
    let again =
        call("POST", &tab1, &[("content-type", "application/x-www-form-urlencoded")], "card_number=4242424242424242")
            .await;
    // a completed session charges nothing more: back to the success URL (one subscription below)
    assert_eq!(again.location.as_deref(), Some(success.as_str()), "{}", again.body);
    let r = call("GET", &success, &[], "").await;
    assert_eq!(r.location.as_deref(), Some(format!("{base}/thanks_upgrade").as_str()));
    assert_eq!(account(&base, &token).await["plan"], "PRO");
    let auth = [("authorization", "Bearer sk_test_e2e")];
    let subs = call("GET", &format!("{base}/stripe/v1/subscriptions?status=all&limit=100"), &auth, "").await.json();
    let mine: Vec<&Value> =
        subs["data"].as_array().unwrap().iter().filter(|s| s["metadata"]["user_name"] == "tabby").collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["status"], "active");
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// Thirty users upgrade at once on one stack: every success URL answers with a redirect to the
/// thanks page (done, or `?status=pending` when the webhook is finishing it), never a 5xx or
/// JSON, and every user ends PRO with exactly one key. The numbers are printed (run with
/// `--nocapture`), not asserted: this is not a benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_journeys_all_redirect_and_all_end_pro() {
    const USERS: usize = 30;
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start(&data);
    let base = stack.base.clone();
    let started = Instant::now();
    let journeys = (0..USERS).map(|n| {
        let base = base.clone();
        tokio::spawn(async move {
            let user = format!("crowd{n:02}");
            let r = call(
                "POST",
                &format!("{base}/cognito/sign-up"),
                &[("content-type", "application/json")],
                &json!({"username": user, "password": "correct horse"}).to_string(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let token = sign_in(&base, &user, "correct horse").await;
            let success = pay(&base, &checkout(&base, &token).await).await;
            let r = call("GET", &success, &[], "").await;
            (user, token, r.status, r.location, r.body)
        })
    });
    let mut results = Vec::new();
    for j in journeys {
        results.push(j.await.expect("a journey"));
    }
    let redirected_after = started.elapsed();
    let (thanks, pending) = (format!("{base}/thanks_upgrade"), format!("{base}/thanks_upgrade?status=pending"));
    let mut done = 0;
    for (user, _, status, location, body) in &results {
        assert_eq!(*status, 302, "{user}: the success URL answered {status}: {body}");
        match location.as_deref() {
            Some(l) if l == thanks => done += 1,
            Some(l) if l == pending => {}
            other => panic!("{user}: redirected to {other:?}"),
        }
    }
    for (user, token, ..) in &results {
        eventually(&base, &format!("{user} is PRO"), async || {
            let a = account(&base, token).await;
            a["plan"] == "PRO" && a["api_key"]["value"].is_string()
        })
        .await;
    }
    let all_pro_after = started.elapsed();
    // the stores as the stack saved them after the last request: one enabled key per user, each
    // on the usage plan and the one its account record names
    let state: Value = serde_json::from_str(&std::fs::read_to_string(data.join("state.json")).unwrap()).unwrap();
    let keys = state["keys"]["keys"].as_array().unwrap();
    let names: std::collections::BTreeSet<&str> = keys.iter().map(|k| k[0]["name"].as_str().unwrap()).collect();
    assert_eq!((keys.len(), names.len()), (USERS, USERS), "one key per user: {keys:?}");
    assert!(keys.iter().all(|k| k[0]["enabled"] == true));
    // (key id, usage plan id) pairs
    let on_plan: Vec<(&str, &str)> = state["keys"]["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect();
    let accounts = state["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), USERS);
    for a in accounts {
        assert_eq!(a["plan"], "PRO", "{a}");
        let key = a["api_key_id"].as_str().unwrap();
        assert_eq!(on_plan.iter().filter(|(k, _)| *k == key).count(), 1, "{a}");
        assert!(on_plan.iter().any(|(k, p)| *k == key && *p == paykey::flows::DEFAULT_PRO_USAGE_PLAN), "{a}");
    }
    println!(
        "{USERS} concurrent journeys: {done} thanks, {} pending; all redirected after {:.1} s, all PRO after {:.1} s",
        USERS - done,
        redirected_after.as_secs_f64(),
        all_pro_after.as_secs_f64()
    );
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 13: the same stack on the production AWS adapters (`PAYKEY_BACKEND=aws`) against
/// moto_server, its resources created on the first start (`PAYKEY_AWS_PROVISION=1`) and found
/// by name on the second: sign up and sign in on moto's Cognito, checkout, pay, redirect, key,
/// `/account`, portal, cancel → FREE; the plan checked in moto's user pool too. The catalog has
/// no quotas: moto 5.2.5 has no GetUsage, which `/account` calls for a metered tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_flow_on_the_aws_adapters_against_moto() {
    let Some(moto) = std::env::var("PAYKEY_MOTO_URL").ok().filter(|u| !u.is_empty()) else {
        assert_eq!(std::env::var("PAYKEY_SKIP_MOTO").as_deref(), Ok("1"), "PAYKEY_MOTO_URL is not set");
        return;
    };
    let prefix = format!("paykey-local-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let start_aws = |provision: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paykey-local"))
            .env("PAYKEY_PORT", "0")
            .env("PAYKEY_CATALOG", SINGLE_TIER)
            .env("PAYKEY_DATA_DIR", &data)
            .env("PAYKEY_BACKEND", "aws")
            .env("PAYKEY_AWS_PREFIX", &prefix)
            .env("PAYKEY_AWS_PROVISION", provision)
            .env("AWS_ENDPOINT_URL", &moto)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info")
            .env_remove("STRIPE_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start paykey-local");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = url_line(&mut lines);
        let mut pool = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("user pool ").nth(1) {
                pool = rest.split(' ').next().unwrap().to_string();
                break;
            }
        }
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                println!("paykey-local: {line}");
            }
        });
        (Stack { child, base }, pool)
    };
    // without PAYKEY_AWS_PROVISION nothing is created: the start fails naming what is missing
    let out = Command::new(env!("CARGO_BIN_EXE_paykey-local"))
        .env("PAYKEY_PORT", "0")
        .env("PAYKEY_DATA_DIR", &data)
        .env("PAYKEY_BACKEND", "aws")
        .env("PAYKEY_AWS_PREFIX", &prefix)
        .env("AWS_ENDPOINT_URL", &moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("the DynamoDB table {prefix}-sessions does not exist")), "{err}");

    let (stack, pool) = start_aws("1");
    drop(stack);
    // the second start finds what the first created
    let (stack, pool_again) = start_aws("0");
    assert_eq!(pool, pool_again);
    let base = stack.base.clone();
    let creds = r#"{"username":"erin","password":"Correct-horse-9"}"#;
    let r = call("POST", &format!("{base}/cognito/sign-up"), &[("content-type", "application/json")], creds).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call("POST", &format!("{base}/cognito/sign-up"), &[("content-type", "application/json")], creds).await;
    assert_eq!((r.status, r.json()["__type"].as_str()), (400, Some("UsernameExistsException")), "{}", r.body);
    let token = sign_in(&base, "erin", "Correct-horse-9").await;
    assert_eq!(account(&base, &token).await["plan"], "FREE");
    let r = call("GET", &format!("{base}/api/account"), &[("authorization", "eyJhbGciOiJub25lIn0.e30.")], "").await;
    assert_eq!(r.status, 401);

    let success = pay(&base, &checkout(&base, &token).await).await;
    let r = call("GET", &success, &[], "").await;
    assert_eq!(r.location.as_deref(), Some(format!("{base}/thanks_upgrade").as_str()), "{}", r.body);
    let acct = account(&base, &token).await;
    assert_eq!(acct["plan"], "PRO", "{acct}");
    assert!(acct["api_key"]["value"].as_str().is_some_and(|v| !v.is_empty()), "{acct}");

    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(paykey::adapters::https::AwsHttpClient::new(&Default::default()).unwrap().shared())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&moto)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await;
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&config);
    let plan_in_pool = || async {
        let u = idp.admin_get_user().user_pool_id(&pool).username("erin").send().await.unwrap();
        u.user_attributes().iter().find(|a| a.name() == "custom:plan_type").and_then(|a| a.value().map(str::to_string))
    };
    assert_eq!(plan_in_pool().await.as_deref(), Some("PRO"));

    let r = call("GET", &format!("{base}/api/create-billing-portal-by-user"), &[("authorization", &token)], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let portal = call("GET", r.json()["billing_portal_url"].as_str().unwrap(), &[], "").await;
    let action = form_action(&portal.body, "Cancel subscription");
    assert_eq!(call("POST", &action, &[], "").await.status, 303);
    eventually(&base, "the cancellation webhook downgrades erin", async || {
        account(&base, &token).await["plan"] == "FREE"
    })
    .await;
    assert_eq!(plan_in_pool().await.as_deref(), Some("FREE"));
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

async fn sign_up_and_in(base: &str, user: &str) -> String {
    let body = json!({"username": user, "password": "correct horse"}).to_string();
    let r = call("POST", &format!("{base}/cognito/sign-up"), &[("content-type", "application/json")], &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    sign_in(base, user, "correct horse").await
}

async fn rotate_over_http(base: &str, token: &str, grace: u64, request_id: &str) -> Resp {
    call(
        "POST",
        &format!("{base}/api/api-key/rotate"),
        &[("authorization", token), ("content-type", "application/json")],
        &json!({"grace_seconds": grace, "request_id": request_id}).to_string(),
    )
    .await
}

/// Issue 23's three findings over HTTP on the local stack, the way they were found: a FREE
/// quota of 10 a month; 5 calls, then rotations with and without a grace up to the daily limit,
/// every key that still works spent after each step and after the sweep → never more than 10
/// served (it was 15); a rotation retried with its request id after the sweep ran gets its
/// first answer and the key it handed out keeps working (it rotated again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_graces_and_retries_never_serve_more_than_the_quota_over_http() {
    const TEN: &str = r#"{"tiers": [
        {"name": "FREE", "usage_plan_id": "usage-plan-free", "quota": {"limit": 10, "period": "MONTH"}},
        {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "usage-plan-pro"}]}"#;
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start_with(&data, TEN);
    let base = stack.base.clone();
    let token = sign_up_and_in(&base, "mallory").await;
    let r = call("POST", &format!("{base}/api/api-key"), &[("authorization", &token)], "").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut keys = vec![r.json()["api_key"]["value"].as_str().unwrap().to_string()];
    let mut served = 0;
    for _ in 0..5 {
        assert_eq!(product(&base, &keys[0]).await.status, 200);
        served += 1;
    }
    // Every key handed out so far, spent until each is refused.
    async fn spend(base: &str, keys: &[String]) -> usize {
        let mut n = 0;
        for k in keys {
            while product(base, k).await.status == 200 {
                n += 1;
            }
        }
        n
    }
    let mut answers = Vec::new();
    for (grace, id) in [(2u64, "a"), (0, "b"), (2, "c")] {
        let r = rotate_over_http(&base, &token, grace, id).await;
        assert_eq!(r.status, 200, "{}", r.body);
        keys.push(r.json()["api_key"]["value"].as_str().unwrap().to_string());
        answers.push((id, r.json()));
        served += spend(&base, &keys).await;
    }
    tokio::time::sleep(Duration::from_millis(3500)).await; // the graces end; the sweep runs (every 1 s)
    served += spend(&base, &keys).await;
    // The retry of "c", after the sweep: its first answer, no second rotation.
    let (_, first_c) = &answers[2];
    let again = rotate_over_http(&base, &token, 2, "c").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(&again.json(), first_c, "the first answer again");
    let c_key = first_c["api_key"]["value"].as_str().unwrap();
    let c = product(&base, c_key).await;
    assert_eq!(
        (c.status, c.json()["message"].as_str()),
        (429, Some("Limit Exceeded")),
        "the key the first answer handed out is still enabled and in its plan (only the quota is spent)"
    );
    assert_eq!(account(&base, &token).await["api_key"]["id"], first_c["api_key"]["id"], "not rotated again");
    // The daily limit (3) refuses a fourth rotation.
    let r = rotate_over_http(&base, &token, 0, "d").await;
    assert_eq!(r.status, 429, "{}", r.body);
    served += spend(&base, &keys).await;
    println!("# quota bound 10 calls per month; served {served} over 3 rotations (graces 2 s, 0, 2 s) and a retry");
    assert_eq!(served, 10, "the quota, all of it, and not one call more");
    let usage = account(&base, &token).await["usage"].clone();
    assert_eq!(usage["remaining"], 0, "{usage}");
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 23, the way it was found: one Stripe account sells paykey's PRO and another product
/// (a newsletter). A paykey PRO customer buys the newsletter through a plain Checkout (same
/// customer), a stranger buys it too; Stripe's webhooks for both reach paykey. Nothing changes
/// for anyone: both newsletter subscriptions stay active, nothing is refunded, she stays PRO with
/// her key; cancelling the newsletter does not downgrade her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_product_of_the_stripe_account_is_left_alone_over_http() {
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start(&data);
    let base = stack.base.clone();
    let token = sign_up_and_in(&base, "nora").await;
    let url = checkout(&base, &token).await;
    let success = pay(&base, &url).await;
    assert_eq!(call("GET", &success, &[], "").await.status, 302);
    let acct = account(&base, &token).await;
    assert_eq!(acct["plan"], "PRO");
    let key = acct["api_key"]["value"].as_str().unwrap().to_string();

    let auth = [("authorization", "Bearer sk_test_e2e"), ("content-type", "application/x-www-form-urlencoded")];
    let stripe = |p: &str| format!("{base}/stripe/v1/{p}");
    let subs = call("GET", &stripe("subscriptions?status=all&limit=100"), &auth, "").await.json();
    let customer = subs["data"][0]["customer"].as_str().unwrap().to_string();
    let other = call("POST", &stripe("products"), &auth, "name=Newsletter").await.json();
    let price = call(
        "POST",
        &stripe("prices"),
        &auth,
        &format!(
            "product={}&currency=jpy&unit_amount=500&recurring%5Binterval%5D=month&lookup_key=Newsletter",
            other["id"].as_str().unwrap()
        ),
    )
    .await
    .json();
    let price_id = price["id"].as_str().unwrap().to_string();
    // A plain Checkout of the newsletter: hers (her customer) and a stranger's (a new one).
    let mut newsletter = Vec::new();
    for customer in [Some(customer.as_str()), None] {
        let mut form = format!(
            "mode=subscription&success_url=https%3A%2F%2Fnews.example%2Fok&line_items%5B0%5D%5Bprice%5D={price_id}&line_items%5B0%5D%5Bquantity%5D=1"
        );
        if let Some(c) = customer {
            form.push_str(&format!("&customer={c}"));
        }
        let s = call("POST", &stripe("checkout/sessions"), &auth, &form).await;
        assert_eq!(s.status, 200, "{}", s.body);
        let paid = call(
            "POST",
            s.json()["url"].as_str().unwrap(),
            &[("content-type", "application/x-www-form-urlencoded")],
            "card_number=4242+4242+4242+4242&exp=12%2F34&cvc=123",
        )
        .await;
        assert_eq!(paid.status, 303, "{}", paid.body);
        let session =
            call("GET", &stripe(&format!("checkout/sessions/{}", s.json()["id"].as_str().unwrap())), &auth, "")
                .await
                .json();
        newsletter.push(session["subscription"].as_str().unwrap().to_string());
    }
    let settled =
        async || call("GET", &format!("{base}/stripe/_emulator/undelivered"), &[], "").await.json()["undelivered"] == 0;
    eventually(&base, "every webhook answered", settled).await;
    let deliveries = call("GET", &format!("{base}/stripe/_emulator/deliveries"), &[], "").await.body;
    for kind in ["checkout.session.completed", "customer.subscription.created", "invoice.paid"] {
        assert!(deliveries.matches(kind).count() >= 3, "{kind} delivered for PRO and both newsletters: {deliveries}");
    }
    for sub in &newsletter {
        let s = call("GET", &stripe(&format!("subscriptions/{sub}")), &auth, "").await.json();
        assert_eq!(s["status"], "active", "{sub} is not paykey's to cancel");
    }
    let notes = call("GET", &stripe("credit_notes"), &auth, "").await.json();
    assert_eq!(notes["data"].as_array().unwrap().len(), 0, "nothing refunded: {notes}");
    let acct = account(&base, &token).await;
    assert_eq!(acct["plan"], "PRO");
    assert_eq!(product(&base, &key).await.status, 200);
    // She cancels the newsletter: she stays PRO.
    let r = call("DELETE", &stripe(&format!("subscriptions/{}", newsletter[0])), &auth, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(&base, "the cancellation delivered", settled).await;
    assert_eq!(account(&base, &token).await["plan"], "PRO");
    assert_eq!(product(&base, &key).await.status, 200);
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// One signed-in user sends 50 `POST /checkout-sessions` at once: the admitted ones (the
/// budget's burst) share one Checkout Session — one Stripe write — and the rest get 429 with
/// `Retry-After` and a JSON error; 50 users at once are all served. Counted at the (emulated)
/// Stripe through its list of Checkout Sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_burst_of_checkouts_costs_one_stripe_write_and_fifty_users_are_served_over_http() {
    let data = std::env::temp_dir().join(format!("paykey-e2e-{}", uuid::Uuid::new_v4().simple()));
    let stack = start(&data);
    let base = stack.base.clone();
    let sessions = |base: String| async move {
        let auth = [("authorization", "Bearer sk_test_e2e")];
        call("GET", &format!("{base}/stripe/v1/checkout/sessions?limit=100"), &auth, "").await.json()["data"]
            .as_array()
            .unwrap()
            .len()
    };
    let token = sign_up_and_in(&base, "bursty").await;
    let before = sessions(base.clone()).await;
    let answers = at_once((0..50).map(|_| (base.clone(), token.clone()))).await;
    let mut urls = std::collections::BTreeSet::new();
    let mut refused = 0;
    for r in &answers {
        match r.status {
            200 => {
                urls.insert(r.json()["url"].as_str().unwrap().to_string());
            }
            429 => {
                assert_eq!(r.json()["error"], "too_many_requests", "{}", r.body);
                assert!(r
                    .retry_after
                    .as_deref()
                    .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| (1..=10).contains(&n))));
                refused += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    let created = sessions(base.clone()).await - before;
    println!("# one user, 50 checkouts at once over HTTP: {} answered ({} URL), {refused} refused (429); Checkout Sessions created at Stripe: {created}", 50 - refused, urls.len());
    assert_eq!(urls.len(), 1);
    assert_eq!(refused, 45);
    assert_eq!(created, 1, "one Stripe write");

    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(sign_up_and_in(&base, &format!("crowd{i:02}")).await);
    }
    let before = sessions(base.clone()).await;
    let answers = at_once(tokens.iter().map(|t| (base.clone(), t.clone()))).await;
    assert!(answers.iter().all(|r| r.status == 200), "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(sessions(base.clone()).await - before, 50);
    drop(stack);
    let _ = std::fs::remove_dir_all(&data);
}

/// `POST /checkout-sessions` for each (base, token), all at once.
async fn at_once(calls: impl Iterator<Item = (String, String)>) -> Vec<Resp> {
    let mut set = tokio::task::JoinSet::new();
    for (base, token) in calls {
        set.spawn(async move { checkout_for(&base, &token, "FMMailPro").await });
    }
    set.join_all().await
}
