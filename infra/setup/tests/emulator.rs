//! The catalog bootstrap against the project's Stripe emulator, through async-stripe.

use std::net::SocketAddr;

use paykey_setup::{run, Catalog, Change, PaidTier};

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
    let mut dearer = catalog();
    dearer.tiers[0].unit_amount = 1200;
    let changed = run(&client, &dearer).await.unwrap();
    let created: Vec<_> = changed.changes.iter().filter(|c| !matches!(c, Change::Unchanged(_))).collect();
    assert_eq!(created.len(), 1, "{:?}", changed.changes);
    assert!(created[0].to_string().contains("moved from the old price"));
    assert_ne!(changed.price_id, first.price_id);
    let (_, prices) = emu.shared.call("GET", "/v1/prices", "lookup_keys[0]=FMMailPro");
    assert_eq!(prices["data"].as_array().unwrap().len(), 1);
    assert_eq!(prices["data"][0]["unit_amount"], 1200);
}

#[tokio::test]
async fn two_tiers_get_a_price_each_and_a_portal_that_switches_between_them() {
    let (emu, client) = emulator().await;
    let mut two = catalog();
    two.tiers.push(PaidTier::parse("FMMail BUSINESS:FMMailBusiness:4980").unwrap());
    let first = run(&client, &two).await.unwrap();
    assert_eq!(first.price_ids.len(), 2);
    assert!(first.changes.iter().all(|c| matches!(c, Change::Created(_))), "{:?}", first.changes);
    let (_, configs) = emu.shared.call("GET", "/v1/billing_portal/configurations", "");
    let update = &configs["data"][0]["features"]["subscription_update"];
    assert_eq!(update["enabled"], true);
    assert_eq!(update["proration_behavior"], "always_invoice");
    let offered: Vec<(String, String)> = update["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["product"].as_str().unwrap().to_string(), p["prices"][0].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        offered,
        [
            ("paykey_FMMailPro".to_string(), first.price_ids[0].clone()),
            ("paykey_FMMailBusiness".to_string(), first.price_ids[1].clone())
        ]
    );
    // a second run changes nothing; going back to one tier turns switching off
    assert!(!run(&client, &two).await.unwrap().changed_anything());
    let one = run(&client, &catalog()).await.unwrap();
    assert!(
        one.changes.iter().any(|c| matches!(c, Change::Updated(s) if s.contains("billing portal"))),
        "{:?}",
        one.changes
    );
    let (_, configs) = emu.shared.call("GET", "/v1/billing_portal/configurations", "");
    assert_eq!(configs["data"][0]["features"]["subscription_update"]["enabled"], false);
    // a tier is NAME:LOOKUP_KEY:AMOUNT
    assert!(PaidTier::parse("no amount:Key").is_err());
    assert!(PaidTier::parse("x:Key:lots").is_err());
    assert_eq!(PaidTier::parse("A: B:C:12").unwrap().lookup_key, "C", "the name may hold colons");
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

/// An endpoint created in another API version (by hand, or by the Python version's setup) is
/// replaced in two runs without a gap: `--repin-webhook` adds a pinned endpoint beside it (both
/// deliver), `--retire-webhook` then disables the old one; later runs leave both as they are.
#[tokio::test]
async fn an_endpoint_in_another_api_version_is_replaced_by_a_pinned_one_then_retired() {
    let (emu, client) = emulator().await;
    let url = catalog().webhook_url.unwrap();
    let form = format!(
        "url={}&enabled_events[0]=checkout.session.completed&api_version=2020-08-27",
        percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, old) = emu.shared.call("POST", "/v1/webhook_endpoints", &form);
    assert_eq!(status, 200, "{old}");
    let old_id = old["id"].as_str().unwrap().to_string();
    let endpoints = || {
        let (_, hooks) = emu.shared.call("GET", "/v1/webhook_endpoints", "");
        hooks["data"].as_array().unwrap().clone()
    };

    // without the flag: reported, events fixed, nothing created
    let plain = run(&client, &catalog()).await.unwrap();
    assert!(plain.changes.iter().any(|c| c.to_string().contains("--repin-webhook")), "{:?}", plain.changes);
    assert_eq!(plain.webhook_secret, None);
    assert_eq!(endpoints().len(), 1);

    // --repin-webhook: a second endpoint, pinned, its secret shown; the old one still enabled
    let repin = run(&client, &Catalog { repin_webhook: true, ..catalog() }).await.unwrap();
    assert!(repin.webhook_secret.as_deref().is_some_and(|s| s.starts_with("whsec_")), "{:?}", repin.changes);
    let hooks = endpoints();
    assert_eq!(hooks.len(), 2);
    let new = hooks.iter().find(|h| h["id"] != old_id.as_str()).unwrap();
    assert_eq!(new["api_version"], stripe_emulator::objects::API_VERSION);
    assert!(hooks.iter().all(|h| h["status"] == "enabled" && h["url"] == url.as_str()));
    assert!(repin.changes.iter().any(|c| c.to_string().contains(&format!("--retire-webhook {old_id}"))));

    // a run in between (or a repeated --repin-webhook) creates nothing and points at the old one
    let again = run(&client, &Catalog { repin_webhook: true, ..catalog() }).await.unwrap();
    assert!(!again.changed_anything(), "{:?}", again.changes);
    assert!(again.changes.iter().any(|c| c.to_string().contains(&format!("--retire-webhook {old_id}"))));
    assert_eq!(endpoints().len(), 2);

    // the pinned endpoint cannot be retired while it is the only pinned one
    let new_id = new["id"].as_str().unwrap().to_string();
    let refused = run(&client, &Catalog { retire_webhook: Some(new_id.clone()), ..catalog() }).await.unwrap_err();
    assert!(refused.to_string().contains("only one"), "{refused}");

    // --retire-webhook: the old one disabled; later runs keep it disabled and change nothing
    let retired = run(&client, &Catalog { retire_webhook: Some(old_id.clone()), ..catalog() }).await.unwrap();
    assert!(
        retired.changes.iter().any(|c| matches!(c, Change::Updated(s) if s.contains(&old_id))),
        "{:?}",
        retired.changes
    );
    let status_of = |id: &str| endpoints().iter().find(|h| h["id"] == id).unwrap()["status"].clone();
    assert_eq!(status_of(&old_id), "disabled");
    assert_eq!(status_of(&new_id), "enabled");
    let after = run(&client, &catalog()).await.unwrap();
    assert!(!after.changed_anything(), "{:?}", after.changes);
    assert_eq!(status_of(&old_id), "disabled", "not re-enabled");
    let unknown = run(&client, &Catalog { retire_webhook: Some("we_nope".into()), ..catalog() }).await.unwrap_err();
    assert!(unknown.to_string().contains("we_nope"), "{unknown}");
}

/// Stripe's default portal configuration is the Dashboard's; the one paykey-setup creates is
/// not (`is_default: false`), so the functions must name it. The run reports its id, a second
/// run reports the same one, and a configuration deactivated in the Dashboard is turned back on.
#[tokio::test]
async fn the_run_reports_paykeys_portal_configuration_which_is_not_the_accounts_default() {
    let (emu, client) = emulator().await;
    let first = run(&client, &catalog()).await.unwrap();
    let id = first.portal_configuration.clone().expect("reported");
    assert!(id.starts_with("bpc_"), "{id}");
    let (_, cfg) = emu.shared.call("GET", "/v1/billing_portal/configurations", "");
    assert_eq!(cfg["data"][0]["id"], id.as_str());
    assert_eq!(cfg["data"][0]["is_default"], false, "created through the API");
    assert_eq!(run(&client, &catalog()).await.unwrap().portal_configuration, Some(id.clone()));

    emu.shared.call("POST", &format!("/v1/billing_portal/configurations/{id}"), "active=false");
    let again = run(&client, &catalog()).await.unwrap();
    assert_eq!(again.portal_configuration, Some(id.clone()));
    assert!(again.changes.iter().any(|c| matches!(c, Change::Updated(s) if s.contains(&id))), "{:?}", again.changes);
    let (_, cfg) = emu.shared.call("GET", "/v1/billing_portal/configurations", "");
    assert_eq!(cfg["data"][0]["active"], true);
}

#[tokio::test]
async fn metered_prices_get_the_meter_and_a_graduated_price_once_and_a_new_rate_moves_the_lookup_key() {
    use paykey_setup::MeteredPrice;
    let (emu, client) = emulator().await;
    let mut metered = catalog();
    metered.tiers.push(PaidTier::parse("FMMail PAYG:FMMailPayg:0").unwrap());
    metered.metered = vec![
        MeteredPrice::parse("FMMailPro:FMMailProCalls:1000:0.5").unwrap(),
        MeteredPrice::parse("FMMailPayg:FMMailPayg:0:0.25").unwrap(),
    ];
    let first = run(&client, &metered).await.unwrap();
    assert!(first.changes.iter().all(|c| matches!(c, Change::Created(_))), "{:?}", first.changes);
    assert!(first.changes.iter().any(|c| c.to_string().contains("meter ")), "{:?}", first.changes);
    let (_, meters) = emu.shared.call("GET", "/v1/billing/meters", "");
    let meter = &meters["data"][0];
    assert_eq!(meters["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            meter["event_name"].as_str(),
            meter["default_aggregation"]["formula"].as_str(),
            meter["event_time_window"].as_str()
        ),
        (Some("paykey_api_requests"), Some("sum"), Some("day"))
    );
    let (_, prices) = emu.shared.call("GET", "/v1/prices", "lookup_keys[0]=FMMailProCalls&expand[0]=data.tiers");
    let calls = &prices["data"][0];
    assert_eq!(
        (calls["recurring"]["usage_type"].as_str(), calls["recurring"]["meter"].as_str()),
        (Some("metered"), meter["id"].as_str())
    );
    assert_eq!(calls["product"], "paykey_FMMailPro", "the tier's product");
    assert_eq!(calls["tiers"][0]["up_to"], 1000);
    assert_eq!(calls["tiers"][1]["unit_amount_decimal"], "0.5");
    // With metered tiers the portal cancels at the period's end (Stripe then bills the period's
    // usage in a final invoice) and offers no switching (a switch would not move the overage
    // price).
    let (_, configs) = emu.shared.call("GET", "/v1/billing_portal/configurations", "");
    let ours =
        configs["data"].as_array().unwrap().iter().find(|c| c["metadata"]["paykey"] == "true").expect("paykey's");
    assert_eq!(ours["features"]["subscription_cancel"]["mode"], "at_period_end");
    assert_eq!(ours["features"]["subscription_update"]["enabled"], false);
    assert!(first.changes.iter().any(|c| c.to_string().contains("cancel at period end")), "{:?}", first.changes);
    // a pay-per-call tier: its metered price is its only price
    let (_, payg) = emu.shared.call("GET", "/v1/prices", "lookup_keys[0]=FMMailPayg&expand[0]=data.tiers");
    assert_eq!(payg["data"].as_array().unwrap().len(), 1);
    assert_eq!(payg["data"][0]["tiers"].as_array().unwrap().len(), 1, "nothing included");
    assert_eq!(first.price_ids.len(), 2, "PRO's flat price and PAYG's metered one: {:?}", first.price_ids);
    assert_eq!(first.price_ids[1], payg["data"][0]["id"].as_str().unwrap());

    // again: nothing changes; a new rate makes a new price that takes the lookup key over
    assert!(!run(&client, &metered).await.unwrap().changed_anything());
    metered.metered[0] = MeteredPrice::parse("FMMailPro:FMMailProCalls:1000:0.40").unwrap();
    let changed = run(&client, &metered).await.unwrap();
    let created: Vec<String> =
        changed.changes.iter().filter(|c| !matches!(c, Change::Unchanged(_))).map(|c| c.to_string()).collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0].contains("moved from the old price"), "{created:?}");
    let (_, prices) = emu.shared.call("GET", "/v1/prices", "lookup_keys[0]=FMMailProCalls&expand[0]=data.tiers");
    assert_eq!(prices["data"][0]["tiers"][1]["unit_amount_decimal"], "0.40");
    // bad arguments
    assert!(MeteredPrice::parse("FMMailPro:Calls:many:0.5").is_err());
    assert!(MeteredPrice::parse("FMMailPro:Calls:10:0.5.1").is_err());
    let yearly = Catalog { interval: "year".into(), ..metered.clone() };
    let refused = run(&client, &yearly).await.unwrap_err().to_string();
    assert!(refused.contains("monthly"), "a yearly invoice would carry 12 quotas: {refused}");
    let mut orphan = catalog();
    orphan.metered = vec![MeteredPrice::parse("Nope:Calls:10:1").unwrap()];
    assert!(run(&client, &orphan).await.unwrap_err().to_string().contains("Nope"));
}
