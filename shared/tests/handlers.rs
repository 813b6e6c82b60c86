//! Handlers fed with real API Gateway REST proxy events (Cognito authorizer claims included),
//! on in-memory ports: status, headers and body, and that refused requests write nothing.

mod support;

use lambda_http::{Body, Request, Response};
use paykey::handlers;
use serde_json::{json, Value};
use support::{World, APP_URL};

const FIXTURE: &str = include_str!("data/apigw-rest-cognito.json");

/// The fixture event, re-aimed at another route.
struct Event(Value);

impl Event {
    fn new(method: &str, resource: &str, path: &str) -> Self {
        let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
        v["httpMethod"] = json!(method);
        v["requestContext"]["httpMethod"] = json!(method);
        v["resource"] = json!(resource);
        v["requestContext"]["resourcePath"] = json!(resource);
        v["path"] = json!(path);
        v["requestContext"]["path"] = json!(format!("/prod{path}"));
        v["body"] = Value::Null;
        v["requestContext"]["authorizer"]["claims"]["sub"] = json!(support::sub_of("alice").as_str());
        Self(v)
    }
    fn checkout(body: &str) -> Self {
        Self::new("POST", "/checkout-sessions", "/checkout-sessions").body(body)
    }
    fn verify(session_id: &str, key: &str) -> Self {
        let mut e = Self::new(
            "GET",
            "/create-api-key/{session_id}/{one_time_key}",
            &format!("/create-api-key/{session_id}/{key}"),
        )
        .no_claims();
        e.0["pathParameters"] = json!({"session_id": session_id, "one_time_key": key});
        e
    }
    fn portal() -> Self {
        Self::new("GET", "/create-billing-portal-by-user", "/create-billing-portal-by-user")
    }
    fn account() -> Self {
        Self::new("GET", "/account", "/account")
    }
    fn body(mut self, body: &str) -> Self {
        self.0["body"] = json!(body);
        self
    }
    fn user(mut self, name: &str) -> Self {
        self.0["requestContext"]["authorizer"]["claims"]["cognito:username"] = json!(name);
        self.0["requestContext"]["authorizer"]["claims"]["sub"] = json!(support::sub_of(name).as_str());
        self
    }
    fn no_claims(mut self) -> Self {
        self.0["requestContext"].as_object_mut().unwrap().remove("authorizer");
        self
    }
    fn with(mut self, f: impl FnOnce(&mut Value)) -> Self {
        f(&mut self.0);
        self
    }
    fn request(&self) -> Request {
        lambda_http::request::from_str(&self.0.to_string()).expect("a valid API Gateway event")
    }
}

fn body_json(r: &Response<Body>) -> Value {
    match r.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("expected a JSON text body, got {other:?}"),
    }
}

fn header<'a>(r: &'a Response<Body>, name: &str) -> &'a str {
    r.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

fn assert_json_with_cors(r: &Response<Body>) {
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "access-control-allow-origin"), APP_URL);
    assert_eq!(header(r, "cache-control"), "no-store");
}

#[tokio::test]
async fn checkout_answers_the_stripe_url_with_json_and_cors() {
    let w = World::new();
    w.user("alice");
    let r = handlers::create_checkout_session(&w.app, Event::checkout(r#"{"lookup_key":"FMMailPro"}"#).request())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_json_with_cors(&r);
    let url = body_json(&r)["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("https://checkout.memory.invalid/pay/cs_test_"), "{url}");
    assert_eq!(w.app.store.sessions()[0].user_name.as_str(), "alice");
}

#[tokio::test]
async fn checkout_takes_the_user_from_the_claims_never_from_the_body() {
    let w = World::new();
    w.user("alice");
    w.user("bob");
    let ev = Event::checkout(r#"{"lookup_key":"FMMailPro","user_name":"bob"}"#);
    let r = handlers::create_checkout_session(&w.app, ev.request()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(w.app.store.sessions()[0].user_name.as_str(), "alice");
}

#[tokio::test]
async fn a_base64_encoded_body_is_decoded() {
    let w = World::new();
    w.user("alice");
    let ev = Event::checkout("eyJsb29rdXBfa2V5IjoiRk1NYWlsUHJvIn0=").with(|v| v["isBase64Encoded"] = json!(true));
    let r = handlers::create_checkout_session(&w.app, ev.request()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
}

#[tokio::test]
async fn a_preflight_without_an_origin_is_answered_for_the_app_origin() {
    let w = World::new();
    let r = handlers::create_checkout_session(
        &w.app,
        Event::new("OPTIONS", "/checkout-sessions", "/checkout-sessions").no_claims().request(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), APP_URL);
    assert!(header(&r, "access-control-allow-headers").contains("Authorization"));
    assert!(header(&r, "access-control-allow-methods").contains("POST"));
}

#[tokio::test]
async fn an_allowed_origin_gets_its_own_origin_back_and_any_other_the_app_origin() {
    let mut w = World::new();
    w.app.settings.allowed_origins = vec!["https://admin.example.com".into()];
    w.user("alice");
    let from = |origin: &str| {
        let o = origin.to_string();
        move |v: &mut Value| v["headers"]["origin"] = json!(o)
    };
    for (origin, expected) in [
        ("https://admin.example.com", "https://admin.example.com"),
        (APP_URL, APP_URL),
        ("https://evil.example", APP_URL),
        ("https://ADMIN.example.com", APP_URL),
        ("null", APP_URL),
    ] {
        let pre = Event::new("OPTIONS", "/account", "/account").no_claims().with(from(origin));
        let r = handlers::get_account(&w.app, pre.request()).await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "access-control-allow-origin"), expected, "preflight from {origin}");
        assert_eq!(header(&r, "vary"), "Origin");
        assert_eq!(header(&r, "access-control-max-age"), "7200");
        let r = handlers::get_account(&w.app, Event::account().with(from(origin)).request()).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "access-control-allow-origin"), expected, "GET /account from {origin}");
        // an error answer too (a body the page must be able to read)
        let bad = Event::checkout("{").with(from(origin));
        let r = handlers::create_checkout_session(&w.app, bad.request()).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(header(&r, "access-control-allow-origin"), expected, "400 from {origin}");
    }
    assert!(w.app.store.sessions().is_empty(), "the refused checkouts wrote nothing");
}

#[tokio::test]
async fn the_success_redirect_issues_the_key_and_a_refresh_shows_thanks_again() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    for _ in 0..2 {
        let r = handlers::create_api_key(&w.app, Event::verify(id.as_str(), &key.to_string()).request()).await.unwrap();
        assert_eq!(r.status(), 302);
        assert_eq!(header(&r, "location"), format!("{APP_URL}/thanks_upgrade"));
    }
    w.assert_fulfilled_once(&alice, &id).await;
}

#[tokio::test]
async fn the_portal_answers_the_shape_existing_front_ends_expect() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let r = handlers::create_billing_portal(&w.app, Event::portal().request()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_json_with_cors(&r);
    let b = body_json(&r);
    assert_eq!(b["status"], "OK");
    assert!(b["billing_portal_url"].as_str().unwrap().starts_with("https://billing.memory.invalid/"));
}

#[tokio::test]
async fn the_account_shows_plan_and_key() {
    let w = World::new();
    let alice = w.user("alice");
    let (id, key) = w.checkout_and_pay(&alice).await;
    w.complete(&id, &key).await.unwrap();
    let r = handlers::get_account(&w.app, Event::account().request()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_json_with_cors(&r);
    let b = body_json(&r);
    assert_eq!(b["plan"], "PRO");
    assert_eq!(b["user_name"], "alice");
    assert_eq!(b["api_key"]["enabled"], true);
    assert_eq!(b["api_key"]["value"].as_str().unwrap().len(), 64);
}

enum Expect {
    Json(u16, &'static str),
    Redirect(&'static str),
}

/// Bad input of every kind: exact status (or redirect) and error code, and no store changed.
#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_writes_nothing() {
    let w = World::new();
    let alice = w.user("alice");
    let bob = w.user("bob");
    let (unpaid, unpaid_key) = w.checkout(&alice).await;
    let (bobs, bobs_key) = w.checkout_and_pay(&bob).await;
    let (unpaid, unpaid_key, bobs, bobs_key) =
        (unpaid.to_string(), unpaid_key.to_string(), bobs.to_string(), bobs_key.to_string());
    let ok_body = r#"{"lookup_key":"FMMailPro"}"#;
    let random_key = paykey::domain::OneTimeKey::new_random().to_string();

    #[derive(Clone, Copy)]
    enum H {
        Checkout,
        Verify,
        Portal,
        Account,
    }
    use Expect::*;
    let cases: Vec<(&str, H, Event, Expect)> = vec![
        ("no authorizer at all", H::Checkout, Event::checkout(ok_body).no_claims(), Json(401, "unauthorized")),
        (
            "claims without cognito:username",
            H::Checkout,
            Event::checkout(ok_body).with(|v| {
                v["requestContext"]["authorizer"]["claims"].as_object_mut().unwrap().remove("cognito:username");
            }),
            Json(401, "unauthorized"),
        ),
        ("empty cognito:username", H::Checkout, Event::checkout(ok_body).user(""), Json(401, "unauthorized")),
        (
            "cognito:username with a newline",
            H::Checkout,
            Event::checkout(ok_body).user("alice\nbob"),
            Json(401, "unauthorized"),
        ),
        (
            "claims not an object",
            H::Checkout,
            Event::checkout(ok_body).with(|v| v["requestContext"]["authorizer"]["claims"] = json!("alice")),
            Json(401, "unauthorized"),
        ),
        ("user not in the pool", H::Checkout, Event::checkout(ok_body).user("ghost"), Json(404, "user_not_found")),
        ("no body", H::Checkout, Event::checkout("").with(|v| v["body"] = Value::Null), Json(400, "bad_request")),
        ("blank body", H::Checkout, Event::checkout("  \n"), Json(400, "bad_request")),
        ("malformed JSON", H::Checkout, Event::checkout(r#"{"lookup_key":"#), Json(400, "bad_request")),
        ("a JSON array", H::Checkout, Event::checkout(r#"["FMMailPro"]"#), Json(400, "bad_request")),
        ("lookup_key missing", H::Checkout, Event::checkout(r#"{"lookupKey":"FMMailPro"}"#), Json(400, "bad_request")),
        ("lookup_key a number", H::Checkout, Event::checkout(r#"{"lookup_key":42}"#), Json(400, "bad_request")),
        (
            "oversized body",
            H::Checkout,
            Event::checkout(&format!(r#"{{"lookup_key":"FMMailPro","pad":"{}"}}"#, "x".repeat(5000))),
            Json(400, "bad_request"),
        ),
        (
            "lookup key not offered",
            H::Checkout,
            Event::checkout(r#"{"lookup_key":"FMMailEnterprise"}"#),
            Json(400, "lookup_key_not_allowed"),
        ),
        (
            "lookup key with odd characters",
            H::Checkout,
            Event::checkout(r#"{"lookup_key":"FM Mail;Pro"}"#),
            Json(400, "bad_request"),
        ),
        ("unknown session", H::Verify, Event::verify("cs_test_unknown", &random_key), Redirect("/canceled_upgrade")),
        ("wrong one-time key", H::Verify, Event::verify(&bobs, &random_key), Redirect("/canceled_upgrade")),
        ("another session's one-time key", H::Verify, Event::verify(&bobs, &unpaid_key), Redirect("/canceled_upgrade")),
        ("one-time key not a uuid", H::Verify, Event::verify(&bobs, "00000000"), Redirect("/canceled_upgrade")),
        (
            "session id with path characters",
            H::Verify,
            Event::verify("cs_test_..%2F..%2Fadmin", &bobs_key),
            Redirect("/canceled_upgrade"),
        ),
        (
            "session id not a checkout session",
            H::Verify,
            Event::verify("pi_3Nxyz", &bobs_key),
            Redirect("/canceled_upgrade"),
        ),
        ("unpaid session", H::Verify, Event::verify(&unpaid, &unpaid_key), Redirect("/canceled_upgrade")),
        (
            "missing path parameters",
            H::Verify,
            Event::verify(&bobs, &bobs_key).with(|v| v["pathParameters"] = Value::Null),
            Redirect("/canceled_upgrade"),
        ),
        ("portal without sign-in", H::Portal, Event::portal().no_claims(), Json(401, "unauthorized")),
        ("portal for a user with no customer", H::Portal, Event::portal(), Json(409, "no_customer")),
        ("account without sign-in", H::Account, Event::account().no_claims(), Json(401, "unauthorized")),
        ("account of a user not in the pool", H::Account, Event::account().user("ghost"), Json(404, "user_not_found")),
    ];
    assert!(cases.len() >= 15);
    for (name, h, ev, expect) in cases {
        let before = w.snapshot();
        let req = ev.request();
        let r = match h {
            H::Checkout => handlers::create_checkout_session(&w.app, req).await,
            H::Verify => handlers::create_api_key(&w.app, req).await,
            H::Portal => handlers::create_billing_portal(&w.app, req).await,
            H::Account => handlers::get_account(&w.app, req).await,
        }
        .unwrap();
        match expect {
            Json(status, code) => {
                assert_eq!(r.status(), status, "{name}: {:?}", r.body());
                assert_json_with_cors(&r);
                let b = body_json(&r);
                assert_eq!(b["error"], code, "{name}");
                assert!(!b["message"].as_str().unwrap().is_empty(), "{name}: a message");
            }
            Redirect(path) => {
                assert_eq!(r.status(), 302, "{name}");
                assert_eq!(header(&r, "location"), format!("{APP_URL}{path}"), "{name}");
            }
        }
        assert_eq!(w.snapshot(), before, "{name}: nothing written");
    }
}

#[tokio::test]
async fn a_backend_failure_is_a_short_502_without_internal_detail() {
    let w = World::new();
    w.user("alice");
    w.meter.inject("stripe.create_checkout", paykey::adapters::memory::Fault::Before);
    let r = handlers::create_checkout_session(&w.app, Event::checkout(r#"{"lookup_key":"FMMailPro"}"#).request())
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let b = body_json(&r);
    assert_eq!(b["error"], "backend_unavailable");
    assert!(!b["message"].as_str().unwrap().contains("injected"), "no internal detail leaks");
    assert!(w.app.store.sessions().is_empty());
}

#[tokio::test]
async fn without_api_url_the_success_redirect_comes_back_to_the_api_the_request_used() {
    let mut w = World::new();
    w.app.settings.api_url = String::new();
    w.user("alice");
    let r = handlers::create_checkout_session(&w.app, Event::checkout(r#"{"lookup_key":"FMMailPro"}"#).request())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let record = &w.app.store.sessions()[0];
    let success = w.app.payments.checkout_success_url(&record.session_id).unwrap();
    assert_eq!(
        success,
        format!(
            "https://abc123defg.execute-api.ap-northeast-1.amazonaws.com/prod/create-api-key/{{CHECKOUT_SESSION_ID}}/{}",
            record.one_time_key
        )
    );
}

/// `POST /api-key` and `GET /plans` (issue 11): what a front end gets, and bad input answered
/// with its code and nothing written.
#[tokio::test]
async fn the_free_key_and_plans_routes_answer_and_refuse_bad_input_without_writing() {
    let w = World::tiered();
    w.user("alice");
    let free = || Event::new("POST", "/api-key", "/api-key");
    let plans = || Event::new("GET", "/plans", "/plans").no_claims();
    for (name, ev, status, code) in [
        ("free key without sign-in", free().no_claims(), 401, "unauthorized"),
        (
            "free key with GET",
            free().with(|v| {
                v["httpMethod"] = json!("GET");
                v["requestContext"]["httpMethod"] = json!("GET");
            }),
            400,
            "bad_request",
        ),
        ("free key for a user not in the pool", free().user("ghost"), 404, "user_not_found"),
        (
            "plans with POST",
            plans().with(|v| {
                v["httpMethod"] = json!("POST");
                v["requestContext"]["httpMethod"] = json!("POST");
            }),
            400,
            "bad_request",
        ),
    ] {
        let before = w.snapshot();
        let req = ev.request();
        let r = if name.starts_with("plans") {
            handlers::checkout_routes(&w.app, req).await
        } else {
            handlers::get_account(&w.app, req).await
        }
        .unwrap();
        assert_eq!(r.status(), status, "{name}: {:?}", r.body());
        assert_json_with_cors(&r);
        assert_eq!(body_json(&r)["error"], code, "{name}");
        assert_eq!(w.snapshot(), before, "{name}: nothing written");
    }
    // the free key: 201 once, then 200 with the same key
    let first = handlers::get_account(&w.app, free().request()).await.unwrap();
    assert_eq!(first.status(), 201, "{:?}", first.body());
    let again = handlers::get_account(&w.app, free().request()).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(body_json(&again)["api_key"]["id"], body_json(&first)["api_key"]["id"]);
    assert_eq!(body_json(&again)["plan"], "FREE");
    let account = handlers::get_account(&w.app, Event::account().request()).await.unwrap();
    assert_eq!(body_json(&account)["api_key"]["enabled"], true);
    // the plans: public, cacheable, the catalog's order
    let r = handlers::checkout_routes(&w.app, plans().request()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), APP_URL);
    assert_eq!(header(&r, "cache-control"), "public, max-age=300", "the same for everyone: cacheable");
    let names: Vec<String> =
        body_json(&r)["plans"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["FREE", "PRO", "BUSINESS"]);
    // today's catalog has no free key: 404, nothing written
    let single = World::new();
    single.user("alice");
    let before = single.snapshot();
    let r = handlers::get_account(&single.app, free().request()).await.unwrap();
    assert_eq!((r.status().as_u16(), body_json(&r)["error"].as_str()), (404, Some("no_free_tier")));
    assert_eq!(single.snapshot(), before);
}

/// Each `(name, event, status, code)` answered by the get-account function with that status and
/// error code, as JSON with CORS, and nothing written.
async fn refused_without_writing(w: &World, cases: Vec<(&str, Event, u16, &str)>) {
    for (name, ev, status, code) in cases {
        let before = w.snapshot();
        let r = handlers::get_account(&w.app, ev.request()).await.unwrap();
        assert_eq!(r.status(), status, "{name}: {:?}", r.body());
        assert_json_with_cors(&r);
        assert_eq!(body_json(&r)["error"], code, "{name}");
        assert_eq!(w.snapshot(), before, "{name}: nothing written");
    }
}

/// `POST /api-key/rotate` (issue 12): bad input answered with its code, nothing written.
#[tokio::test]
async fn the_rotate_route_refuses_bad_input_without_writing() {
    let w = World::tiered();
    w.user("alice");
    let rotate = |body: &str| Event::new("POST", "/api-key/rotate", "/api-key/rotate").body(body);
    let get = |v: &mut Value| {
        v["httpMethod"] = json!("GET");
        v["requestContext"]["httpMethod"] = json!("GET");
    };
    let cases: Vec<(&str, Event, u16, &str)> = vec![
        ("no key yet", rotate(""), 409, "no_key"),
        ("without sign-in", rotate("").no_claims(), 401, "unauthorized"),
        ("with GET", rotate("").with(get), 400, "bad_request"),
        ("malformed JSON", rotate("{\"grace_seconds\":"), 400, "bad_request"),
        ("unknown field", rotate(r#"{"grace":5}"#), 400, "bad_request"),
        ("negative grace", rotate(r#"{"grace_seconds":-1}"#), 400, "bad_request"),
        ("fractional grace", rotate(r#"{"grace_seconds":1.5}"#), 400, "bad_request"),
        ("grace as a string", rotate(r#"{"grace_seconds":"60"}"#), 400, "bad_request"),
        ("grace over the maximum", rotate(r#"{"grace_seconds":86401}"#), 400, "bad_request"),
        ("empty request id", rotate(r#"{"request_id":""}"#), 400, "bad_request"),
        ("user not in the pool", rotate("").user("ghost"), 409, "no_key"),
    ];
    refused_without_writing(&w, cases).await;
    // with a key: 200, a new key
    handlers::get_account(&w.app, Event::new("POST", "/api-key", "/api-key").request()).await.unwrap();
    // 60.0 is the integer 60 to JSON Schema (and to the OpenAPI document): Schemathesis sent it
    let r = handlers::get_account(&w.app, rotate(r#"{"grace_seconds": 60.0}"#).request()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert!(body_json(&r)["previous_key_until"].is_string());
}

/// `PUT /api-key/cap` (issue 26): bad input answered with its code, nothing written; a metered
/// subscriber's cap set.
#[tokio::test]
async fn the_spend_cap_route_refuses_bad_input_without_writing() {
    let w = World::metered();
    let alice = w.user("alice");
    let cap = |body: &str| Event::new("PUT", "/api-key/cap", "/api-key/cap").body(body);
    let post = |v: &mut Value| {
        v["httpMethod"] = json!("POST");
        v["requestContext"]["httpMethod"] = json!("POST");
    };
    refused_without_writing(
        &w,
        vec![
            ("no key yet", cap(r#"{"requests":2000}"#), 409, "no_key"),
            ("without sign-in", cap(r#"{"requests":2000}"#).no_claims(), 401, "unauthorized"),
        ],
    )
    .await;
    let (id, key) = w.checkout_and_pay(&alice).await;
    assert!(w.complete(&id, &key).await.unwrap().is_success());
    refused_without_writing(
        &w,
        vec![
            ("with POST", cap(r#"{"requests":2000}"#).with(post), 400, "bad_request"),
            ("empty body", cap(""), 400, "bad_request"),
            ("no requests field", cap("{}"), 400, "bad_request"),
            ("unknown field", cap(r#"{"requests":2000,"cap":1}"#), 400, "bad_request"),
            ("negative", cap(r#"{"requests":-1}"#), 400, "bad_request"),
            ("fractional", cap(r#"{"requests":1500.5}"#), 400, "bad_request"),
            ("a string", cap(r#"{"requests":"2000"}"#), 400, "bad_request"),
            ("below the included amount", cap(r#"{"requests":999}"#), 400, "bad_request"),
            ("above the quota", cap(r#"{"requests":5001}"#), 400, "bad_request"),
            ("user not in the pool", cap(r#"{"requests":2000}"#).user("ghost"), 409, "no_key"),
        ],
    )
    .await;
    let r = handlers::get_account(&w.app, cap(r#"{"requests": 2000.0}"#).request()).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let body = body_json(&r);
    assert_eq!(body["spend_cap"], json!({"requests": 2000, "custom": true, "min": 1000, "max": 5000}));
    assert_eq!(body["remaining"], 2000);
    let r = handlers::get_account(&w.app, cap(r#"{"requests": null}"#).request()).await.unwrap();
    assert_eq!(body_json(&r)["spend_cap"]["custom"], false);
    let pre =
        handlers::get_account(&w.app, Event::new("OPTIONS", "/api-key/cap", "/api-key/cap").request()).await.unwrap();
    assert_eq!(pre.headers()["access-control-allow-methods"], "PUT, OPTIONS");
}

/// A user over the route's budget: 429, `Retry-After`, a JSON error with CORS; nothing else
/// done (no session recorded beyond the admitted ones).
#[tokio::test]
async fn a_request_over_the_users_budget_is_429_with_retry_after_and_a_json_error() {
    let mut w = World::new();
    let d = paykey::flows::Settings::new(APP_URL, support::API_URL);
    w.app.settings.user_budget = d.user_budget;
    w.app.settings.checkout_reuse = d.checkout_reuse;
    w.user("alice");
    let mut last = None;
    for _ in 0..6 {
        let ev = Event::checkout(r#"{"lookup_key":"FMMailPro"}"#);
        last = Some(handlers::create_checkout_session(&w.app, ev.request()).await.unwrap());
    }
    let r = last.unwrap();
    assert_eq!(r.status(), 429);
    assert_json_with_cors(&r);
    assert_eq!(header(&r, "retry-after"), "10");
    let body = body_json(&r);
    assert_eq!(body["error"], "too_many_requests");
    assert!(body["message"].as_str().unwrap().contains("retry in 10 s"), "{body}");
    assert_eq!(w.app.store.sessions().len(), 1, "the five admitted share one session");
    // a lookup key not offered is refused before any budget is spent
    let mut w = World::new();
    w.app.settings.user_budget = d.user_budget;
    w.user("alice");
    for _ in 0..10 {
        let r = handlers::create_checkout_session(&w.app, Event::checkout(r#"{"lookup_key":"Nope"}"#).request())
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(w.meter.count("ddb.spend"), 0, "bad input writes nothing");
}
