//! Hosted pages: Checkout (pay with a test card) and the Billing Portal (plan, invoices,
//! cancel, return link).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use crate::{html_page, see_other, Form, Shared};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn money(amount: i64, currency: &str) -> String {
    match currency {
        "jpy" => format!("¥{amount}"),
        c => format!("{}.{:02} {}", amount / 100, amount % 100, c.to_uppercase()),
    }
}

fn date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font-family:system-ui,sans-serif;background:#f6f9fc;margin:0;color:#30313d}}
main{{max-width:440px;margin:40px auto;background:#fff;border-radius:8px;box-shadow:0 2px 8px #0002;padding:28px}}
h1{{font-size:20px}} .muted{{color:#6b7280;font-size:13px}} .amount{{font-size:28px;font-weight:600}}
label{{display:block;margin:14px 0 4px;font-size:14px}} input{{width:100%;padding:10px;font-size:16px;box-sizing:border-box;border:1px solid #d1d5db;border-radius:6px}}
button{{margin-top:18px;width:100%;padding:12px;font-size:16px;background:#635bff;color:#fff;border:0;border-radius:6px;cursor:pointer}}
button.danger{{background:#df1b41}} .error{{color:#df1b41;margin-top:12px}} table{{width:100%;border-collapse:collapse;font-size:14px}}
td{{padding:6px 0;border-bottom:1px solid #eee}} .badge{{padding:2px 8px;border-radius:10px;background:#e0e7ff;font-size:12px}}
</style></head><body><main>{body}
<p class="muted">paykey Stripe emulator · test mode</p></main></body></html>"#
    )
}

pub async fn checkout_page(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    render_checkout(&shared, &id, None)
}

fn render_checkout(shared: &Shared, id: &str, error: Option<&str>) -> Response {
    let emu = shared.lock();
    let Some(s) = emu.sessions.get(id) else {
        return html_page(StatusCode::NOT_FOUND, layout("Not found", "<h1>This checkout session does not exist.</h1>"));
    };
    if s["status"] == "expired" {
        return html_page(
            StatusCode::GONE,
            layout(
                "Expired",
                "<h1>This checkout session has expired.</h1><p>Start the upgrade again from the app.</p>",
            ),
        );
    }
    if s["status"] != "open" {
        return html_page(StatusCode::OK, layout("Paid", "<h1>This checkout session is already complete.</h1>"));
    }
    let price = s["_price"].as_str().and_then(|p| emu.prices.get(p)).cloned().unwrap_or(Value::Null);
    let product = price["product"]
        .as_str()
        .and_then(|p| emu.products.get(p))
        .map(|p| p["name"].as_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let amount = money(price["unit_amount"].as_i64().unwrap_or(0), price["currency"].as_str().unwrap_or("usd"));
    let trial_days = s["_trial_days"].as_i64().unwrap_or(0);
    let back = s["cancel_url"]
        .as_str()
        .map(|u| format!(r#"<p><a id="back" href="{}">← Back</a></p>"#, esc(u)))
        .unwrap_or_default();
    let err = error.map(|e| format!(r#"<p class="error" id="error" role="alert">{}</p>"#, esc(e))).unwrap_or_default();
    let body = format!(
        r#"{back}<p class="muted">Subscribe to</p><h1 id="product">{product}</h1>
<p class="amount" id="amount">{amount} <span class="muted">per {interval}</span></p>
<form method="post" action="{base}/checkout/{id}">
<label for="email">Email</label><input id="email" name="email" type="email" placeholder="you@example.com">
<label for="card">Card number</label><input id="card" name="card_number" inputmode="numeric" autocomplete="cc-number" placeholder="4242 4242 4242 4242" required>
<label for="exp">Expiry</label><input id="exp" name="exp" placeholder="12 / 34">
<label for="cvc">CVC</label><input id="cvc" name="cvc" placeholder="123">
{err}<button id="pay" type="submit">{cta}</button></form>{no_card}"#,
        cta = if trial_days > 0 { format!("Start {trial_days}-day trial") } else { "Subscribe".to_string() },
        no_card = if trial_days > 0 {
            format!(
                r#"<form method="post" action="{}/checkout/{}"><input type="hidden" name="without_card" value="1"><button id="trial-no-card" class="secondary" type="submit">Start the trial without a card</button></form>"#,
                esc(&shared.base()),
                esc(id)
            )
        } else {
            String::new()
        },
        product = esc(&product),
        interval = esc(price["recurring"]["interval"].as_str().unwrap_or("month")),
        id = esc(id),
        base = esc(&shared.base()),
    );
    let status = if error.is_some() { StatusCode::PAYMENT_REQUIRED } else { StatusCode::OK };
    html_page(status, layout("Checkout", &body))
}

pub async fn checkout_pay(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let card: String = form.get("card_number").unwrap_or("").chars().filter(|c| c.is_ascii_digit()).collect();
    let trial = shared.lock().sessions.get(&id).is_some_and(|s| s["_trial_days"].is_i64());
    if trial && form.get("without_card") == Some("1") {
        // A trial started without a payment method: paused when it ends.
        if let Some(s) = shared.lock().sessions.get_mut(&id) {
            s["_no_payment_method"] = json!(true);
        }
    } else {
        match card.as_str() {
            "4242424242424242" => {}
            "4000000000000002" => return render_checkout(&shared, &id, Some("Your card was declined.")),
            _ => return render_checkout(&shared, &id, Some("Your card number is incorrect. Use 4242 4242 4242 4242.")),
        }
    }
    if shared.lock().sessions.get(&id).is_some_and(|s| s["status"] == "expired") {
        return render_checkout(&shared, &id, None);
    }
    let target = shared.lock().pay(&id);
    shared.flush_events();
    match target {
        Some(url) => see_other(&url),
        None => html_page(StatusCode::NOT_FOUND, layout("Not found", "<h1>This checkout session does not exist.</h1>")),
    }
}

pub async fn portal_page(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let emu = shared.lock();
    let Some(p) = emu.portal_sessions.get(&id) else {
        return html_page(StatusCode::NOT_FOUND, layout("Not found", "<h1>This portal session does not exist.</h1>"));
    };
    let customer = p["customer"].as_str().unwrap_or_default();
    let config = p["configuration"].as_str().and_then(|c| emu.portal_configs.get(c)).cloned().unwrap_or(Value::Null);
    let mut subs = String::new();
    for s in emu.subscriptions.values().filter(|s| s["customer"] == customer) {
        let price = &s["items"]["data"][0]["price"];
        let product = price["product"]
            .as_str()
            .and_then(|x| emu.products.get(x))
            .and_then(|x| x["name"].as_str())
            .unwrap_or("Subscription");
        let status = s["status"].as_str().unwrap_or("");
        let end = s["items"]["data"][0]["current_period_end"].as_i64().unwrap_or(0);
        let note = if s["cancel_at_period_end"] == true {
            format!("Cancels on {}", date(end))
        } else if status == "canceled" {
            "Canceled".to_string()
        } else {
            format!("Renews on {}", date(end))
        };
        let cancel = if status != "canceled"
            && s["cancel_at_period_end"] != true
            && config["features"]["subscription_cancel"]["enabled"] != false
        {
            format!(
                r#"<form method="post" action="{}/portal/{}/cancel/{}"><button class="danger" id="cancel" type="submit">Cancel subscription</button></form>"#,
                esc(&shared.base()),
                esc(&id),
                esc(s["id"].as_str().unwrap_or(""))
            )
        } else {
            String::new()
        };
        // The plan-switch screen: the prices the configuration lets customers switch to.
        let update = &config["features"]["subscription_update"];
        let mut switch = String::new();
        if update["enabled"] == true && status != "canceled" {
            for offered in update["products"].as_array().into_iter().flatten() {
                for pid in offered["prices"].as_array().into_iter().flatten().filter_map(|p| p.as_str()) {
                    let Some(other) = emu.prices.get(pid) else { continue };
                    if other["id"] == price["id"] || other["active"] != true {
                        continue;
                    }
                    let name = other["product"]
                        .as_str()
                        .and_then(|x| emu.products.get(x))
                        .and_then(|x| x["name"].as_str())
                        .unwrap_or("Plan");
                    switch.push_str(&format!(
                        r#"<form method="post" action="{}/portal/{}/switch/{}"><input type="hidden" name="price" value="{}"><button class="switch" data-lookup-key="{}" type="submit">Switch to {} ({})</button></form>"#,
                        esc(&shared.base()),
                        esc(&id),
                        esc(s["id"].as_str().unwrap_or("")),
                        esc(pid),
                        esc(other["lookup_key"].as_str().unwrap_or("")),
                        esc(name),
                        money(other["unit_amount"].as_i64().unwrap_or(0), other["currency"].as_str().unwrap_or("usd")),
                    ));
                }
            }
        }
        subs.push_str(&format!(
            r#"<section class="subscription"><h2 id="plan">{}</h2><p class="amount">{} <span class="muted">per {}</span></p><p><span class="badge" id="status">{}</span> <span class="muted">{}</span></p>{}{}</section>"#,
            esc(product),
            money(price["unit_amount"].as_i64().unwrap_or(0), price["currency"].as_str().unwrap_or("usd")),
            esc(price["recurring"]["interval"].as_str().unwrap_or("month")),
            esc(status),
            esc(&note),
            switch,
            cancel
        ));
    }
    if subs.is_empty() {
        subs = "<p>No subscriptions.</p>".into();
    }
    let mut invoices = String::new();
    if config["features"]["invoice_history"]["enabled"] != false {
        invoices.push_str("<h2>Invoice history</h2><table id=\"invoices\">");
        for i in emu.invoices.values().filter(|i| i["customer"] == customer) {
            invoices.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                date(i["created"].as_i64().unwrap_or(0)),
                money(i["amount_due"].as_i64().unwrap_or(0), i["currency"].as_str().unwrap_or("usd")),
                esc(i["status"].as_str().unwrap_or(""))
            ));
        }
        invoices.push_str("</table>");
    }
    let back = p["return_url"]
        .as_str()
        .map(|u| format!(r#"<p><a id="return" href="{}">← Return to the app</a></p>"#, esc(u)))
        .unwrap_or_default();
    let body = format!(r#"{back}<h1>Manage your subscription</h1>{subs}{invoices}"#);
    html_page(StatusCode::OK, layout("Billing portal", &body))
}

/// The portal's plan switch: the subscription's item moves to `price` (prorated), if the
/// portal configuration offers it and the subscription is the portal customer's.
pub async fn portal_switch(
    State(shared): State<Shared>,
    Path((id, sub)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let ok = {
        let mut emu = shared.lock();
        let portal = emu.portal_sessions.get(&id).cloned().unwrap_or(Value::Null);
        let owner = portal["customer"].as_str().map(str::to_string);
        let sub_owner = emu.subscriptions.get(&sub).and_then(|s| s["customer"].as_str().map(str::to_string));
        let config =
            portal["configuration"].as_str().and_then(|c| emu.portal_configs.get(c)).cloned().unwrap_or(Value::Null);
        let update = &config["features"]["subscription_update"];
        let price_id = form.get("price").unwrap_or_default();
        let offered = update["enabled"] == true
            && update["products"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["prices"].as_array().into_iter().flatten().any(|x| x.as_str() == Some(price_id)));
        match emu.prices.get(price_id).cloned() {
            Some(price) if offered && owner.is_some() && owner == sub_owner => {
                let proration = update["proration_behavior"].as_str().unwrap_or("create_prorations").to_string();
                emu.change_price(&sub, &price, &proration).0.is_success()
            }
            _ => false,
        }
    };
    shared.flush_events();
    if ok {
        see_other(&format!("{}/portal/{id}", shared.base()))
    } else {
        html_page(
            StatusCode::NOT_FOUND,
            layout("Not found", "<h1>This plan is not offered for this subscription.</h1>"),
        )
    }
}

pub async fn portal_cancel(State(shared): State<Shared>, Path((id, sub)): Path<(String, String)>) -> Response {
    let ok = {
        let mut emu = shared.lock();
        let owner = emu.portal_sessions.get(&id).and_then(|p| p["customer"].as_str().map(str::to_string));
        let sub_owner = emu.subscriptions.get(&sub).and_then(|s| s["customer"].as_str().map(str::to_string));
        if owner.is_some() && owner == sub_owner {
            if shared.config.portal_cancel_mode == "at_period_end" {
                emu.cancel_at_period_end(&sub);
            } else {
                emu.cancel_now(&sub);
            }
            true
        } else {
            false
        }
    };
    shared.flush_events();
    if ok {
        see_other(&format!("{}/portal/{id}", shared.base()))
    } else {
        html_page(StatusCode::NOT_FOUND, layout("Not found", "<h1>No such subscription for this customer.</h1>"))
    }
}
