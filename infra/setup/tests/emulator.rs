//! The catalog bootstrap against the project's Stripe emulator, through async-stripe.

use std::net::SocketAddr;

use paykey_setup::{run, Catalog, Change};

async fn emulator() -> (stripe_emulator::Running, stripe::Client) {
    let emu = stripe_emulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), Default::default()).await.unwrap();
    let client = stripe::ClientBuilder::new("sk_test_setup").url(format!("{}/", emu.base_url())).build().unwrap();
    (emu, client)
}

fn catalog() -> Catalog {
    Catalog {
        webhook_url: Some("https://abc.execute-api.ap-northeast-1.amazonaws.com/prod/stripe/webhook".into()),
        portal_return_url: Some("https://app.example.com/".into()),
        ..Catalog::default()
    }
}

#[tokio::test]
async fn a_first_run_creates_everything_and_a_second_changes_nothing() {
    let (emu, client) = emulator().await;
    let first = run(&client, &catalog()).await.unwrap();
    assert_eq!(first.changes.len(), 4, "{:?}", first.changes);
    assert!(first.changes.iter().all(|c| matches!(c, Change::Created(_))), "{:?}", first.changes);
    assert!(first.webhook_secret.as_deref().is_some_and(|s| s.starts_with("whsec_")));

    let second = run(&client, &catalog()).await.unwrap();
    assert!(!second.changed_anything(), "{:?}", second.changes);
    assert_eq!(second.price_id, first.price_id);
    assert_eq!(second.webhook_secret, None);

    // what Stripe now holds
    let (_, prices) = emu.shared.call("GET", "/v1/prices", "lookup_keys[0]=FMMailPro");
    let price = &prices["data"][0];
    assert_eq!(price["unit_amount"], 980);
    assert_eq!(price["currency"], "jpy");
    assert_eq!(price["recurring"]["interval"], "month");
    assert_eq!(price["product"], "paykey_FMMailPro");
    let (_, hooks) = emu.shared.call("GET", "/v1/webhook_endpoints", "");
    let hook = &hooks["data"][0];
    assert_eq!(hook["api_version"], stripe_emulator::objects::API_VERSION, "pinned to async-stripe's API version");
    let mut events: Vec<String> =
        hook["enabled_events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    events.sort();
    let mut want: Vec<String> = paykey_setup::webhook_events().iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(events, want);
    let (_, configs) = emu.shared.call("GET", "/v1/billing_portal/configurations", "");
    let cfg = &configs["data"][0];
    assert_eq!(cfg["features"]["subscription_cancel"]["enabled"], true);
    assert_eq!(cfg["features"]["invoice_history"]["enabled"], true);
}

#[tokio::test]
async fn a_new_amount_creates_a_new_price_that_takes_the_lookup_key_over() {
    let (emu, client) = emulator().await;
    let first = run(&client, &catalog()).await.unwrap();
    let changed = run(&client, &Catalog { unit_amount: 1200, ..catalog() }).await.unwrap();
    let created: Vec<_> = changed.changes.iter().filter(|c| !matches!(c, Change::Unchanged(_))).collect();
    assert_eq!(created.len(), 1, "{:?}", changed.changes);
    assert!(created[0].to_string().contains("moved from the old price"));
    assert_ne!(changed.price_id, first.price_id);
    let (_, prices) = emu.shared.call("GET", "/v1/prices", "lookup_keys[0]=FMMailPro");
    assert_eq!(prices["data"].as_array().unwrap().len(), 1);
    assert_eq!(prices["data"][0]["unit_amount"], 1200);
}

#[tokio::test]
async fn a_bad_interval_is_refused_before_anything_is_created() {
    let (emu, client) = emulator().await;
    let err = run(&client, &Catalog { interval: "fortnight".into(), webhook_url: None, ..Catalog::default() })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("interval"), "{err}");
    let (_, prices) = emu.shared.call("GET", "/v1/prices", "");
    assert!(prices["data"].as_array().unwrap().is_empty());
    let (_, products) = emu.shared.call("GET", "/v1/products", "");
    assert!(products["data"].as_array().unwrap().is_empty());
}
