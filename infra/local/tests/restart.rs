//! "A restart loses nothing", for webhooks: an event the emulator could not deliver before
//! the stack stopped is in the data file and is delivered by the next start (on another port),
//! which fulfils the checkout from the webhook alone (the success redirect is never visited).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use paykey_local::{start, Options};
use serde_json::{json, Value};

async fn post_json(url: &str, token: &str, body: Value) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(url)
        .header("authorization", token)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn options(data: &std::path::Path) -> Options {
    Options {
        port: 0,
        data_dir: data.to_path_buf(),
        // a failed delivery is not retried within the test: only a restart can deliver it
        webhook_retry_delay: Duration::from_secs(3600),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owed_when_the_stack_stops_is_delivered_after_the_restart() {
    let data = std::env::temp_dir().join(format!("paykey-restart-{}", uuid::Uuid::new_v4().simple()));
    let mut first = start(options(&data)).await.expect("first start");
    first.state.cognito.sign_up("carol", "correct horse", None).unwrap();
    let token = first.state.cognito.sign_in("carol", "correct horse", chrono::Utc::now().timestamp()).unwrap().id_token;
    let (status, body) =
        post_json(&format!("{}/api/checkout-sessions", first.base_url()), &token, json!({"lookup_key": "FMMailPro"}))
            .await;
    assert_eq!(status, 200, "{body}");
    let session = body["url"].as_str().unwrap().rsplit('/').next().unwrap().to_string();

    // the stack stops listening; the customer pays meanwhile: every delivery is refused
    first.task.abort();
    let _ = (&mut first.task).await;
    let emulator = first.state.emulator.clone().expect("the emulator");
    assert!(emulator.pay(&session).is_some(), "paid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while emulator.deliveries().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = emulator.deliveries();
    assert!(!attempts.is_empty() && attempts.iter().all(|a| a.status.is_none()), "refused: {attempts:?}");
    assert!(emulator.undelivered() > 0);
    first.state.save().expect("save");
    assert!(first.state.app.store.accounts().iter().all(|a| a.plan.as_str() != "PRO"), "nothing fulfilled yet");
    let owed = first.state.emulator.as_ref().unwrap().undelivered();
    drop(first);

    // the next start, on another port, delivers what was owed
    let second = start(options(&data)).await.expect("second start");
    let deadline = Instant::now() + Duration::from_secs(30);
    let fulfilled = loop {
        let pro = second.state.app.store.accounts().iter().any(|a| a.plan.as_str() == "PRO" && a.api_key_id.is_some());
        if pro || Instant::now() > deadline {
            break pro;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let emulator = second.state.emulator.as_ref().unwrap();
    assert!(fulfilled, "not fulfilled after the restart; deliveries: {:?}", emulator.deliveries());
    while emulator.undelivered() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(emulator.undelivered(), 0, "{owed} owed, all answered 2xx");
    let delivered = emulator.deliveries();
    assert!(
        delivered.iter().any(|a| a.event_type == "checkout.session.completed"
            && a.status == Some(200)
            && a.url.starts_with(&second.base_url())),
        "{delivered:?}"
    );
    drop(second);
    let _ = std::fs::remove_dir_all(&data);
}
