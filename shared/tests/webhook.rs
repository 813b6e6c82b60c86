//! `POST /stripe/webhook` fed with real API Gateway events carrying Stripe-shaped event JSON,
//! signed the way Stripe signs (by the emulator's own HMAC code, independent of async-stripe).

mod support;

use base64::Engine as _;
use lambda_http::{Body, Request, Response};
use paykey::config::Secret;
use paykey::handlers;
use paykey::ports::SubscriptionStatus;
use serde_json::{json, Value};
use stripe_emulator::objects::{self, NewSession};
use stripe_emulator::webhooks::signature_header;
use support::World;

const SECRET: &str = "whsec_test_paykey_webhooks";
const FIXTURE: &str = include_str!("data/apigw-rest-cognito.json");

fn world() -> World {
    let mut w = World::new();
    w.app.settings.webhook_secrets = vec![Secret::new(SECRET)];
    w
}

fn request(payload: &str, signature: Option<&str>, base64: bool) -> Request {
    let mut v: Value = serde_json::from_str(FIXTURE).unwrap();
    v["httpMethod"] = json!("POST");
    v["resource"] = json!("/stripe/webhook");
    v["path"] = json!("/stripe/webhook");
    v["requestContext"].as_object_mut().unwrap().remove("authorizer");
    let mut headers = json!({"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0"});
    if let Some(s) = signature {
        headers["Stripe-Signature"] = json!(s);
    }
    v["multiValueHeaders"] = json!(headers
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), json!([v])))
        .collect::<serde_json::Map<_, _>>());
    v["headers"] = headers;
    if base64 {
        v["body"] = json!(base64::engine::general_purpose::STANDARD.encode(payload));
        v["isBase64Encoded"] = json!(true);
    } else {
        v["body"] = json!(payload);
    }
    lambda_http::request::from_str(&v.to_string()).unwrap()
}

fn signed(w: &World, payload: &str) -> String {
    signature_header(payload, SECRET, w.app.clock.now().timestamp())
}

fn completed_event(w: &World, id: &str, session_id: &str) -> String {
    let t = w.app.clock.now().timestamp();
    let mut session = objects::checkout_session(NewSession {
        id: session_id,
        url: "https://checkout.example/x",
        created: t,
        success_url: "https://api.example.com/create-api-key/{CHECKOUT_SESSION_ID}/k",
        cancel_url: None,
        client_reference_id: Some("alice"),
        customer: None,
        metadata: json!({}),
        amount_total: 980,
        currency: "jpy",
    });
    session["status"] = json!("complete");
    session["payment_status"] = json!("paid");
    objects::event(id, "checkout.session.completed", session, t).to_string()
}

fn subscription_event(w: &World, id: &str, kind: &str, sub_id: &str, customer: &str) -> String {
    let t = w.app.clock.now().timestamp();
    let price = objects::price(objects::NewPrice {
        id: "price_1",
        product: "prod_1",
        unit_amount: Some(980),
        currency: "jpy",
        interval: "month",
        lookup_key: Some("FMMailPro"),
        nickname: None,
        created: t,
        metadata: json!({}),
        tiers_mode: None,
        meter: None,
    });
    let sub = objects::subscription(objects::NewSubscription {
        id: sub_id,
        item_id: "si_1",
        customer,
        price: &price,
        now: t,
        period_end: t + 30 * 86400,
        metadata: json!({"user_name": "alice"}),
        latest_invoice: "in_1",
        application_fee_percent: None,
        transfer_destination: None,
        more_items: &[],
    });
    objects::event(id, kind, sub, t).to_string()
}

fn body(r: &Response<Body>) -> Value {
    match r.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_signed_checkout_completed_event_fulfils() {
    let w = world();
    let u = w.user("alice");
    let (id, _) = w.checkout_and_pay(&u).await;
    let payload = completed_event(&w, "evt_1", id.as_str());
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert!(body(&r)["outcome"].as_str().unwrap().starts_with("processed: issued key"));
    w.assert_fulfilled_once(&u, &id).await;
    // the same delivery again: 200, duplicate
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(body(&r)["outcome"], "duplicate");
}

#[tokio::test]
async fn a_base64_encoded_body_is_verified_after_decoding() {
    let w = world();
    let u = w.user("alice");
    let (id, _) = w.checkout_and_pay(&u).await;
    let payload = completed_event(&w, "evt_b64", id.as_str());
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), true)).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
}

#[tokio::test]
async fn a_subscription_deleted_event_downgrades() {
    let w = world();
    let u = w.user("alice");
    let (id, key) = w.checkout_and_pay(&u).await;
    w.complete(&id, &key).await.unwrap();
    let state = w.app.payments.get_checkout_state(&id);
    let sub = state.subscription.unwrap();
    w.app.payments.update_subscription(&sub, |s| s.status = SubscriptionStatus::Canceled);
    let payload = subscription_event(
        &w,
        "evt_del",
        "customer.subscription.deleted",
        sub.as_str(),
        state.customer.unwrap().as_str(),
    );
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert_eq!(body(&r)["outcome"], "processed: alice is FREE");
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_missing_headers_are_400_and_do_nothing() {
    let w = world();
    let u = w.user("alice");
    let (id, _) = w.checkout_and_pay(&u).await;
    let payload = completed_event(&w, "evt_bad", id.as_str());
    let now = w.app.clock.now().timestamp();
    let cases: Vec<(&str, Option<String>, String)> = vec![
        ("no Stripe-Signature header", None, payload.clone()),
        ("signed with another secret", Some(signature_header(&payload, "whsec_other", now)), payload.clone()),
        ("signature of another body", Some(signed(&w, "{}")), payload.clone()),
        ("body changed after signing", Some(signed(&w, &payload)), payload.replace("alice", "mallory")),
        ("timestamp 301 s old", Some(signature_header(&payload, SECRET, now - 301)), payload.clone()),
        ("timestamp 301 s ahead", Some(signature_header(&payload, SECRET, now + 301)), payload.clone()),
        ("garbage header", Some("v1=zzz".to_string()), payload.clone()),
        ("empty body signed for another body", Some(signed(&w, "{}")), String::new()),
    ];
    for (name, sig, body_text) in cases {
        let before = w.snapshot();
        let r = handlers::stripe_webhook(&w.app, request(&body_text, sig.as_deref(), false)).await.unwrap();
        assert_eq!(r.status(), 400, "{name}: {:?}", r.body());
        assert_eq!(body(&r)["error"], "bad_signature", "{name}");
        assert_eq!(w.snapshot(), before, "{name}: nothing done");
        assert!(w.app.store.events().is_empty(), "{name}: not even recorded");
    }
    // within tolerance is fine
    let r = handlers::stripe_webhook(
        &w.app,
        request(&payload, Some(&signature_header(&payload, SECRET, now - 299)), false),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

/// Stripe retries a 4xx delivery for days and then disables the endpoint: only a bad
/// signature is 400. A correctly signed body paykey cannot read is 200 and changes nothing; an
/// event of another API version or object shape is acted on from its minimal envelope.
#[tokio::test]
async fn a_signed_event_paykey_cannot_fully_parse_is_never_400() {
    let w = world();
    let u = w.user("alice");
    let (id, _) = w.checkout_and_pay(&u).await;
    for (name, text) in [
        ("empty body", String::new()),
        ("empty object", "{}".to_string()),
        ("not JSON", "<xml/>".to_string()),
        ("an event without a type", json!({"id": "evt_notype", "data": {}}).to_string()),
    ] {
        let before = w.snapshot();
        let r = handlers::stripe_webhook(&w.app, request(&text, Some(&signed(&w, &text)), false)).await.unwrap();
        assert_eq!(r.status(), 200, "{name}: {:?}", r.body());
        assert!(body(&r)["outcome"].as_str().unwrap().starts_with("ignored"), "{name}");
        assert_eq!(w.snapshot(), before, "{name}: nothing changed");
    }
    // A future API version: the session object carries only a few fields, in a shape
    // async-stripe's types do not accept. The envelope (id, type, object id) is enough.
    let future = json!({
        "id": "evt_future", "object": "event", "api_version": "2099-01-01.future", "type": "checkout.session.completed",
        "created": w.app.clock.now().timestamp(),
        "data": {"object": {"id": id.as_str(), "object": "checkout.session", "status": {"new": "shape"}}},
    })
    .to_string();
    let r = handlers::stripe_webhook(&w.app, request(&future, Some(&signed(&w, &future)), false)).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert!(body(&r)["outcome"].as_str().unwrap().starts_with("processed: issued key"), "{:?}", body(&r));
    w.assert_fulfilled_once(&u, &id).await;
}

#[tokio::test]
async fn an_unknown_event_type_is_answered_200_and_ignored() {
    let w = world();
    let t = w.app.clock.now().timestamp();
    let payload =
        objects::event("evt_u", "customer.created", objects::customer("cus_1", None, t, json!({})), t).to_string();
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    assert!(body(&r)["outcome"].as_str().unwrap().starts_with("ignored"));
}

#[tokio::test]
async fn a_failure_to_act_is_5xx_so_stripe_retries_and_the_retry_converges() {
    let w = world();
    let u = w.user("alice");
    let (id, _) = w.checkout_and_pay(&u).await;
    let payload = completed_event(&w, "evt_retry", id.as_str());
    w.meter.inject("apigw.create_key", paykey::adapters::memory::Fault::Before);
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    assert!(w.app.store.events().is_empty(), "not marked processed");
    w.clock.advance(chrono::Duration::seconds(61));
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.body());
    w.assert_fulfilled_once(&u, &id).await;
}

#[tokio::test]
async fn without_a_configured_secret_every_event_is_refused() {
    let w = World::new();
    let payload = "{}";
    let r = handlers::stripe_webhook(&w.app, request(payload, Some(&signed(&w, payload)), false)).await.unwrap();
    assert_eq!(r.status(), 400);
}

/// While a webhook endpoint is replaced (to pin its API version), both endpoints deliver
/// every event, each signed with its own secret: either secret is accepted, the event is
/// processed once (deduplicated by event id), and a third secret is still refused.
#[tokio::test]
async fn during_an_endpoint_replacement_either_secret_verifies_and_the_event_is_processed_once() {
    const NEW: &str = "whsec_test_paykey_new_endpoint";
    let mut w = world();
    w.app.settings.webhook_secrets.push(Secret::new(NEW));
    let u = w.user("alice");
    let (id, _) = w.checkout_and_pay(&u).await;
    let payload = completed_event(&w, "evt_both", id.as_str());
    let now = w.app.clock.now().timestamp();
    let by_new =
        handlers::stripe_webhook(&w.app, request(&payload, Some(&signature_header(&payload, NEW, now)), false))
            .await
            .unwrap();
    assert_eq!(by_new.status(), 200, "{:?}", by_new.body());
    let by_old = handlers::stripe_webhook(&w.app, request(&payload, Some(&signed(&w, &payload)), false)).await.unwrap();
    assert_eq!(by_old.status(), 200, "{:?}", by_old.body());
    assert_eq!(body(&by_old)["outcome"], "duplicate", "{:?}", body(&by_old));
    w.assert_fulfilled_once(&u, &id).await;
    let other = signature_header(&payload, "whsec_someone_else", now);
    let r = handlers::stripe_webhook(&w.app, request(&payload, Some(&other), false)).await.unwrap();
    assert_eq!(r.status(), 400);
}
