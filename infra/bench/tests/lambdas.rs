//! The deployable binaries end to end. The five functions, built as the deploy builds them
//! (`cargo lambda build --bin <function>` from the workspace root resolves features across the
//! workspace, as `cargo build --workspace --bins` does; debug profile here), each started cold
//! as a child process for every single request under a Lambda Runtime API emulator, behind an
//! API Gateway REST emulation (routes, the Cognito authorizer verifying moto's ID tokens against
//! moto's JWKS, the proxy event), with the production AWS adapters on moto_server
//! (`AWS_ENDPOINT_URL`) and Stripe on the project's emulator (`STRIPE_API_BASE`), whose webhooks
//! are delivered to the `stripe-webhook` binary the same way. One journey: sign up, checkout,
//! pay, success redirect, `/account`, another product of the Stripe account bought by her and by a
//! stranger (left alone: both stay active, nothing refunded, she stays PRO), billing portal,
//! cancel → FREE, each step checked in
//! moto's DynamoDB, Cognito and API Gateway state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::types::AttributeValue;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use paykey_bench::runtime_api;
use paykey_local::gateway::{self, Function};
use serde_json::Value;

const FUNCTIONS: [&str; 5] =
    ["create-checkout-session", "create-api-key", "create-billing-portal", "get-account", "stripe-webhook"];
const APP_URL: &str = "https://app.paykey.test";
const WEBHOOK_SECRET: &str = "whsec_lambdas_e2e";

/// One cold invocation, for the report.
#[derive(Debug, Clone)]
struct Invocation {
    function: &'static str,
    route: String,
    status: u16,
    ms: f64,
    /// stdout and stderr of the process.
    logs: String,
}

struct Gateway {
    bin_dir: PathBuf,
    env: Vec<(String, String)>,
    jwks: Value,
    client_id: String,
    issuer: String,
    log: Mutex<Vec<Invocation>>,
}

fn binary(f: Function) -> &'static str {
    match f {
        Function::CreateCheckoutSession => "create-checkout-session",
        Function::CreateApiKey => "create-api-key",
        Function::CreateBillingPortal => "create-billing-portal",
        Function::GetAccount => "get-account",
        Function::StripeWebhook => "stripe-webhook",
    }
}

impl Gateway {
    /// Starts `function` cold with `event` as its one invocation; returns the proxy response.
    async fn invoke(&self, function: &'static str, route: &str, event: String) -> Result<Value, String> {
        let mut api = runtime_api::start(event).await.map_err(|e| e.to_string())?;
        let mut cmd = tokio::process::Command::new(self.bin_dir.join(function));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string()).env("AWS_LAMBDA_FUNCTION_NAME", function);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("{function}: {e}"))?;
        let outcome = tokio::time::timeout(Duration::from_secs(60), &mut api.outcome).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let _ = child.start_kill();
        let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
        // the functions log JSON lines to stdout (CloudWatch's side), panics go to stderr
        let logs = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        match outcome {
            Ok(Ok(runtime_api::Outcome::Response { body, .. })) => {
                let v: Value = serde_json::from_str(&body).map_err(|e| format!("{function}: {e}: {body}"))?;
                let status = v["statusCode"].as_u64().unwrap_or(0) as u16;
                if status >= 500 {
                    eprintln!("{function} answered {status}; its log:\n{logs}");
                }
                self.log.lock().unwrap().push(Invocation {
                    function,
                    route: route.to_string(),
                    status,
                    ms,
                    logs: logs.clone(),
                });
                Ok(v)
            }
            Ok(Ok(runtime_api::Outcome::Error { body, .. })) => Err(format!("{function} failed: {body}\n{logs}")),
            _ => Err(format!("{function} gave no answer within 60 s\n{logs}")),
        }
    }
}

async fn api(State(gw): State<Arc<Gateway>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let Some(matched) = gateway::route(&method, &path) else {
        return gateway::gateway_error(StatusCode::FORBIDDEN, "Missing Authentication Token");
    };
    let claims = if matched.auth {
        let token = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        match paykey_local::cognito::verify_id_token(token, &gw.jwks, &gw.client_id, &gw.issuer, now) {
            Ok(c) => Some(c),
            Err(_) => return gateway::gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized"),
        }
    } else {
        None
    };
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1").to_string();
    let ev = gateway::event(&method, &path, uri.query(), &headers, &body, &matched, claims, &host);
    let route = format!("{method} {}", matched.resource);
    match gw.invoke(binary(matched.function), &route, ev.to_string()).await {
        Ok(v) => proxy_response(&v),
        Err(e) => {
            eprintln!("{e}");
            (StatusCode::BAD_GATEWAY, e).into_response()
        }
    }
}

/// API Gateway's mapping of a Lambda proxy response to HTTP.
fn proxy_response(v: &Value) -> Response {
    let status =
        StatusCode::from_u16(v["statusCode"].as_u64().unwrap_or(502) as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut b = Response::builder().status(status);
    for (k, vals) in v["multiValueHeaders"].as_object().into_iter().flatten() {
        for val in vals.as_array().into_iter().flatten() {
            b = b.header(k, val.as_str().unwrap_or_default());
        }
    }
    for (k, val) in v["headers"].as_object().into_iter().flatten() {
        if v["multiValueHeaders"].get(k).is_none() {
            b = b.header(k, val.as_str().unwrap_or_default());
        }
    }
    let body = v["body"].as_str().unwrap_or_default().to_string();
    b.body(axum::body::Body::from(body)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

struct Resp {
    status: u16,
    location: Option<String>,
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
    let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_string());
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Resp { status, location, body }
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

fn bin_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_paykey-bench")).parent().unwrap().to_path_buf();
    for f in FUNCTIONS {
        assert!(
            dir.join(f).is_file(),
            "{f} is not built in {}: run `cargo build --workspace --bins` first (the test command does)",
            dir.display()
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_binaries_cold_per_request_on_moto_and_the_stripe_emulator() {
    let moto = match std::env::var("PAYKEY_MOTO_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var("PAYKEY_SKIP_MOTO").as_deref() == Ok("1") => {
            return eprintln!("PAYKEY_SKIP_MOTO=1: skipped")
        }
        _ => panic!("PAYKEY_MOTO_URL is not set: run the README's test command, which starts moto_server"),
    };
    let test_started = Instant::now();
    let bin_dir = bin_dir();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(paykey::adapters::https::AwsHttpClient::new(&Default::default()).unwrap().shared())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(&moto)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await;
    let prefix = format!("paykey-e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    // PRO without a quota: moto 5.2.5 has no GetUsage, which /account calls for a metered
    // tier (the adapter's GetUsage is tested against AWS's documented shapes in shared/tests/usage.rs)
    let catalog = paykey::domain::Catalog::parse(
        r#"{"tiers": [{"name": "FREE"}, {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "set-by-provision"}]}"#,
    )
    .unwrap();
    let res = paykey_local::provision::provision(&config, &prefix, &catalog).await.expect("provision on moto");
    // found, not created again, on a second call
    let again = paykey_local::provision::provision(&config, &prefix, &catalog).await.unwrap();
    assert_eq!(
        (&again.user_pool_id, &again.client_id, &again.catalog_json),
        (&res.user_pool_id, &res.client_id, &res.catalog_json)
    );
    let pro_plan = serde_json::from_str::<Value>(&res.catalog_json).unwrap()["tiers"][1]["usage_plan_id"]
        .as_str()
        .unwrap()
        .to_string();

    // the Stripe emulator, its webhooks sent to the gateway's /stripe/webhook
    let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw_base = format!("http://{}", gw_listener.local_addr().unwrap());
    let emulator = stripe_emulator::Shared::new(stripe_emulator::Config {
        webhook_url: Some(format!("{gw_base}/stripe/webhook")),
        webhook_secret: WEBHOOK_SECRET.into(),
        retry_delay: Duration::from_millis(500),
        ..Default::default()
    });
    let stripe_base = serve(emulator.clone().router()).await;
    emulator.set_base(&stripe_base);
    let (_, product) = emulator.call("POST", "/v1/products", "name=FMMail+PRO");
    let form = format!(
        "product={}&unit_amount=980&currency=jpy&recurring[interval]=month&lookup_key=FMMailPro",
        product["id"].as_str().unwrap()
    );
    emulator.call("POST", "/v1/prices", &form);
    // paykey's own configuration, as paykey-setup creates it: not the account's default (the
    // emulator has none, like an account whose portal settings were never saved)
    let (_, portal) =
        emulator.call("POST", "/v1/billing_portal/configurations", "features[subscription_cancel][enabled]=true");
    let portal = portal["id"].as_str().unwrap().to_string();

    let env: Vec<(String, String)> = [
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("MY_DOMAIN", APP_URL),
        ("API_URL", gw_base.as_str()),
        ("USER_POOL_ID", res.user_pool_id.as_str()),
        ("DYNAMODB_STRIPE_TABLE", res.sessions_table.as_str()),
        ("DYNAMODB_API_KEY_TABLE", res.api_keys_table.as_str()),
        ("PAYKEY_CATALOG", res.catalog_json.as_str()),
        ("STRIPE_API_KEY", "sk_test_lambdas_e2e"),
        ("STRIPE_API_BASE", stripe_base.as_str()),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("STRIPE_PORTAL_CONFIGURATION", portal.as_str()),
        ("RUST_LOG", "info"),
        ("PAYKEY_METRICS_NAMESPACE", "paykey/lambdas-e2e"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // moto signs ID tokens with its own key (JWKS under /<pool id>/) and AWS's issuer
    let jwks: Value = serde_json::from_str(
        &call("GET", &format!("{moto}/{}/.well-known/jwks.json", res.user_pool_id), &[], "").await.body,
    )
    .unwrap();
    let gw = Arc::new(Gateway {
        bin_dir,
        env,
        jwks,
        client_id: res.client_id.clone(),
        issuer: format!("https://cognito-idp.us-east-1.amazonaws.com/{}", res.user_pool_id),
        log: Mutex::new(Vec::new()),
    });
    let router = axum::Router::new().fallback(api).with_state(gw.clone());
    tokio::spawn(async move {
        let _ = axum::serve(gw_listener, router).await;
    });

    // sign up and sign in on moto's Cognito
    let idp = aws_sdk_cognitoidentityprovider::Client::new(&config);
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let apigw = aws_sdk_apigateway::Client::new(&config);
    let user = "dana";
    idp.admin_create_user()
        .user_pool_id(&res.user_pool_id)
        .username(user)
        .message_action(aws_sdk_cognitoidentityprovider::types::MessageActionType::Suppress)
        .send()
        .await
        .unwrap();
    idp.admin_set_user_password()
        .user_pool_id(&res.user_pool_id)
        .username(user)
        .password("Correct-horse-9")
        .permanent(true)
        .send()
        .await
        .unwrap();
    let sign_in = || async {
        let auth = idp
            .admin_initiate_auth()
            .user_pool_id(&res.user_pool_id)
            .client_id(&res.client_id)
            .auth_flow(aws_sdk_cognitoidentityprovider::types::AuthFlowType::AdminUserPasswordAuth)
            .auth_parameters("USERNAME", user)
            .auth_parameters("PASSWORD", "Correct-horse-9")
            .send()
            .await
            .expect("AdminInitiateAuth on moto");
        auth.authentication_result().and_then(|r| r.id_token()).unwrap().to_string()
    };
    let token = sign_in().await;
    let attrs = || async {
        let u = idp.admin_get_user().user_pool_id(&res.user_pool_id).username(user).send().await.unwrap();
        let sub = u.user_attributes().iter().find(|a| a.name() == "sub").and_then(|a| a.value()).unwrap().to_string();
        let map: BTreeMap<String, String> = u
            .user_attributes()
            .iter()
            .map(|a| (a.name().to_string(), a.value().unwrap_or_default().to_string()))
            .collect();
        (sub, map)
    };
    let (sub, before) = attrs().await;
    assert!(!before.contains_key("custom:plan_type"));
    let account = |token: String| {
        let gw_base = gw_base.clone();
        async move {
            let r = call("GET", &format!("{gw_base}/account"), &[("authorization", &token)], "").await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }
    };
    assert_eq!(account(token.clone()).await["plan"], "FREE");
    let r = call("GET", &format!("{gw_base}/account"), &[("authorization", "not-a-token")], "").await;
    assert_eq!(r.status, 401, "the authorizer refuses a bad token before any function runs");

    // checkout (create-checkout-session): the session is recorded in DynamoDB for the caller
    let r = call(
        "POST",
        &format!("{gw_base}/checkout-sessions"),
        &[("authorization", &token), ("content-type", "application/json")],
        r#"{"lookup_key": "FMMailPro"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let checkout_url = r.json()["url"].as_str().unwrap().to_string();
    let session_id = checkout_url.rsplit('/').next().unwrap().to_string();
    let item = ddb
        .get_item()
        .table_name(&res.sessions_table)
        .key("SessionID", AttributeValue::S(session_id.clone()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the session's record on moto");
    assert_eq!(item["UserSub"].as_s().unwrap(), &sub, "{item:?}");
    assert_eq!(item["UserName"].as_s().unwrap(), user, "{item:?}");
    assert!(item.contains_key("OneTimeKey") && item.contains_key("ExpiresAt"), "{item:?}");

    // pay on the emulator's checkout page; Stripe's redirect → create-api-key → thanks page
    let r = call(
        "POST",
        &checkout_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        "card_number=4242+4242+4242+4242&exp=12%2F34&cvc=123",
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let success = r.location.unwrap();
    assert!(success.starts_with(&format!("{gw_base}/create-api-key/{session_id}/")), "{success}");
    let r = call("GET", &success, &[], "").await;
    assert_eq!(r.status, 302, "{}", r.body);
    let thanks = r.location.unwrap();
    assert!(thanks.starts_with(&format!("{APP_URL}/thanks_upgrade")), "{thanks}");

    // the key, in moto's API Gateway, DynamoDB and Cognito; /account (get-account) shows it
    let pro_item = || {
        let (ddb, table, sub) = (ddb.clone(), res.api_keys_table.clone(), sub.clone());
        async move {
            let item =
                ddb.get_item().table_name(table).key("UserID", AttributeValue::S(sub)).send().await.unwrap().item;
            item.filter(|i| i.get("Type").and_then(|v| v.as_s().ok()).map(String::as_str) == Some("PRO"))
        }
    };
    eventually("the account is PRO in DynamoDB", || async { pro_item().await.is_some() }).await;
    let key_id = pro_item().await.unwrap()["ApiKeyId"].as_s().unwrap().clone();
    let key = apigw.get_api_key().api_key(&key_id).include_value(true).send().await.unwrap();
    assert!(key.enabled(), "the key is enabled");
    let on_plan = apigw.get_usage_plan_keys().usage_plan_id(&pro_plan).send().await.unwrap();
    assert!(on_plan.items().iter().any(|k| k.id() == Some(key_id.as_str())), "the key is on the PRO usage plan");
    let (_, after) = attrs().await;
    assert_eq!(after.get("custom:plan_type").map(String::as_str), Some("PRO"));
    let customer = after.get("custom:stripe_customer_id").cloned().unwrap_or_default();
    assert!(customer.starts_with("cus_"), "{after:?}");
    let token = sign_in().await; // a fresh token carries the new attributes
    let a = account(token.clone()).await;
    assert_eq!((a["plan"].as_str(), a["api_key"]["value"].as_str()), (Some("PRO"), key.value()), "{a}");

    // Issue 23: the Stripe account sells another product too. She buys it through a plain
    // Checkout (her customer), a stranger buys it (a new customer); the events reach the
    // stripe-webhook binary, which leaves both subscriptions alone and her on PRO.
    let paykey_sub = pro_item().await.unwrap()["StripeSubscriptionId"].as_s().unwrap().clone();
    let (_, other) = emulator.call("POST", "/v1/products", "name=Newsletter");
    let (_, price) = emulator.call(
        "POST",
        "/v1/prices",
        &format!(
            "product={}&currency=jpy&unit_amount=500&recurring%5Binterval%5D=month&lookup_key=Newsletter",
            other["id"].as_str().unwrap()
        ),
    );
    let mut newsletter = Vec::new();
    for buyer in [Some(customer.as_str()), None] {
        let mut form = format!(
            "mode=subscription&success_url=https%3A%2F%2Fnews.example%2Fok&line_items%5B0%5D%5Bprice%5D={}&line_items%5B0%5D%5Bquantity%5D=1",
            price["id"].as_str().unwrap()
        );
        if let Some(c) = buyer {
            form.push_str(&format!("&customer={c}"));
        }
        let (status, session) = emulator.call("POST", "/v1/checkout/sessions", &form);
        assert_eq!(status, 200, "{session}");
        let r = call(
            "POST",
            session["url"].as_str().unwrap(),
            &[("content-type", "application/x-www-form-urlencoded")],
            "card_number=4242+4242+4242+4242&exp=12%2F34&cvc=123",
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.body);
        let (_, paid) = emulator.call("GET", &format!("/v1/checkout/sessions/{}", session["id"].as_str().unwrap()), "");
        newsletter.push(paid["subscription"].as_str().unwrap().to_string());
    }
    eventually("every webhook of the newsletter purchases answered", || {
        let emulator = emulator.clone();
        async move { emulator.undelivered() == 0 }
    })
    .await;
    let exported = emulator.export();
    for sub in &newsletter {
        assert_eq!(exported["subscriptions"][sub]["status"], "active", "{sub} is not paykey's to cancel");
    }
    assert!(
        exported["credit_notes"].as_object().is_none_or(|m| m.is_empty()),
        "nothing refunded: {}",
        exported["credit_notes"]
    );
    let item = pro_item().await.expect("still PRO in DynamoDB");
    assert_eq!(item["StripeSubscriptionId"].as_s().unwrap(), &paykey_sub, "the recorded subscription is unchanged");
    assert!(apigw.get_api_key().api_key(&key_id).send().await.unwrap().enabled(), "her key is still enabled");
    assert_eq!(attrs().await.1.get("custom:plan_type").map(String::as_str), Some("PRO"));

    // billing portal (create-billing-portal), for the caller's own customer
    let r = call("GET", &format!("{gw_base}/create-billing-portal-by-user"), &[("authorization", &token)], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let portal = r.json()["billing_portal_url"].as_str().unwrap().to_string();
    assert_eq!(call("GET", &portal, &[], "").await.status, 200, "the portal page opens");
    let portal_id = portal.rsplit('/').next().unwrap();
    assert_eq!(
        emulator.export()["portal_sessions"][portal_id]["customer"],
        customer.as_str(),
        "the caller's own customer"
    );

    // cancel in Stripe → customer.subscription.deleted → stripe-webhook → FREE, key off the plan
    let subscriptions = emulator.export()["subscriptions"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(subscriptions.len(), 3, "hers, and the two newsletters: {subscriptions:?}");
    emulator.set_subscription_status(&paykey_sub, "canceled").expect("cancelled");
    eventually("Cognito says FREE", || {
        let attrs = &attrs;
        async move { attrs().await.1.get("custom:plan_type").map(String::as_str) == Some("FREE") }
    })
    .await;
    eventually("the key is disabled or off the PRO plan", || {
        let (apigw, pro_plan, key_id) = (apigw.clone(), pro_plan.clone(), key_id.clone());
        async move {
            let k = apigw.get_api_key().api_key(&key_id).send().await.unwrap();
            let plan = apigw.get_usage_plan_keys().usage_plan_id(&pro_plan).send().await.unwrap();
            !k.enabled() || !plan.items().iter().any(|i| i.id() == Some(key_id.as_str()))
        }
    })
    .await;
    let item = ddb
        .get_item()
        .table_name(&res.api_keys_table)
        .key("UserID", AttributeValue::S(sub.clone()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["Type"].as_s().unwrap(), "FREE", "{item:?}");
    assert_eq!(item["StripeCustomerId"].as_s().unwrap(), &customer, "the customer id is kept for a re-subscription");
    let a = account(sign_in().await).await;
    assert_eq!(a["plan"], "FREE", "{a}");
    let exported = emulator.export();
    for sub in &newsletter {
        assert_eq!(exported["subscriptions"][sub]["status"], "active", "{sub} untouched by her cancellation");
    }

    let log = gw.log.lock().unwrap().clone();
    let webhooks = log.iter().filter(|i| i.function == "stripe-webhook").count();
    assert!(webhooks >= 2, "checkout and cancellation webhooks reached the stripe-webhook binary: {log:?}");
    for f in FUNCTIONS {
        assert!(log.iter().any(|i| i.function == f), "{f} never ran: {log:?}");
    }
    assert!(log.iter().all(|i| i.status < 500), "no 5xx: {log:?}");
    // The functions' own metrics (embedded metric format lines on stdout) and request ids.
    let emf = |i: &Invocation| -> Vec<Value> {
        i.logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "paykey/lambdas-e2e")
            .collect()
    };
    let redirect = log.iter().find(|i| i.function == "create-api-key").expect("the success redirect ran");
    let lines = emf(redirect);
    let fulfilment =
        lines.iter().find(|v| v.get("Fulfilment").is_some()).unwrap_or_else(|| panic!("{}", redirect.logs));
    assert!(fulfilment["Outcome"] == "issued" || fulfilment["Outcome"] == "already_fulfilled", "{fulfilment}");
    assert!(fulfilment["FulfilmentLatency"].as_f64().unwrap() > 0.0, "{fulfilment}");
    assert_eq!(fulfilment["_aws"]["CloudWatchMetrics"][0]["Dimensions"], serde_json::json!([["Outcome"], []]));
    let events: Vec<(String, String)> = log
        .iter()
        .filter(|i| i.function == "stripe-webhook")
        .flat_map(emf)
        .filter(|v| v.get("WebhookEvent").is_some())
        .map(|v| (v["EventType"].as_str().unwrap().to_string(), v["Outcome"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(events.len(), webhooks, "one WebhookEvent line per delivery: {events:?}");
    assert!(events.contains(&("customer.subscription.deleted".to_string(), "processed".to_string())), "{events:?}");
    // the handlers' log lines name the Lambda request id (the runtime's invocation span); lines
    // written at init, before any invocation, have none
    let traced: Vec<Value> = log
        .iter()
        .flat_map(|i| i.logs.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect::<Vec<_>>())
        .filter(|v| v.get("level").is_some())
        .collect();
    let with_id = traced.iter().filter(|v| v["span"]["requestId"].as_str().is_some_and(|id| !id.is_empty())).count();
    assert!(with_id > 0, "no log line carries the request id: {traced:?}");
    println!("{with_id} of {} log lines carry the Lambda request id", traced.len());
    // a signed-in caller's lines name them too (the flows run in the handler's `caller` span)
    let with_user: Vec<&Value> = traced
        .iter()
        .filter(|v| v["span"]["userId"].as_str().is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()))
        .collect();
    assert!(!with_user.is_empty(), "no log line carries the caller's sub: {traced:?}");
    assert!(
        with_user.iter().all(|v| v["span"]["requestId"].as_str().is_some_and(|id| !id.is_empty())),
        "{with_user:?}"
    );
    println!("{} log lines carry the caller's sub", with_user.len());
    let mut per_fn: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in &log {
        per_fn.entry(i.function).or_default().push(i.ms);
    }
    println!("{} cold invocations in {:.1} s (test wall time):", log.len(), test_started.elapsed().as_secs_f64());
    for (f, ms) in per_fn {
        let max = ms.iter().cloned().fold(0.0, f64::max);
        println!("  {f}: {} invocations, slowest {max:.0} ms (spawn → response, debug build)", ms.len());
    }
    for i in &log {
        println!("  {} {} → {} ({:.0} ms)", i.function, i.route, i.status, i.ms);
    }
}
