//! Stripe objects as JSON, with every field async-stripe needs to parse them.

use serde_json::{json, Value};

pub const API_VERSION: &str = "2026-09-30.endive";

pub fn list(data: Vec<Value>, url: &str) -> Value {
    json!({"object": "list", "data": data, "has_more": false, "url": url})
}

pub fn product(id: &str, name: &str, created: i64, metadata: Value) -> Value {
    json!({
        "id": id, "object": "product", "active": true, "created": created, "default_price": null,
        "description": null, "images": [], "livemode": false, "marketing_features": [],
        "metadata": metadata, "name": name, "package_dimensions": null, "shippable": null,
        "statement_descriptor": null, "tax_code": null, "type": "service", "unit_label": null,
        "updated": created, "url": null,
    })
}

pub struct NewPrice<'a> {
    pub id: &'a str,
    pub product: &'a str,
    /// `None` for a tiered price (its tiers say what a unit costs).
    pub unit_amount: Option<i64>,
    pub currency: &'a str,
    pub interval: &'a str,
    pub lookup_key: Option<&'a str>,
    pub nickname: Option<&'a str>,
    pub created: i64,
    pub metadata: Value,
    /// `graduated` or `volume` for a tiered price.
    pub tiers_mode: Option<&'a str>,
    /// The meter of a metered price (`recurring.usage_type: metered`).
    pub meter: Option<&'a str>,
}

pub fn price(p: NewPrice<'_>) -> Value {
    let usage_type = if p.meter.is_some() { "metered" } else { "licensed" };
    json!({
        "id": p.id, "object": "price", "active": true,
        "billing_scheme": if p.tiers_mode.is_some() { "tiered" } else { "per_unit" }, "created": p.created,
        "currency": p.currency, "custom_unit_amount": null, "livemode": false, "lookup_key": p.lookup_key,
        "metadata": p.metadata, "nickname": p.nickname, "product": p.product,
        "recurring": {"interval": p.interval, "interval_count": 1, "meter": p.meter, "trial_period_days": null, "usage_type": usage_type},
        "tax_behavior": "unspecified", "tiers_mode": p.tiers_mode, "transform_quantity": null, "type": "recurring",
        "unit_amount": p.unit_amount, "unit_amount_decimal": p.unit_amount.map(|a| a.to_string()),
    })
}

/// The legacy plan view of a recurring price (subscription items carry both).
pub fn plan_of(price: &Value) -> Value {
    json!({
        "id": price["id"], "object": "plan", "active": price["active"], "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"], "billing_scheme": price["billing_scheme"], "created": price["created"],
        "currency": price["currency"], "interval": price["recurring"]["interval"], "interval_count": 1,
        "livemode": false, "metadata": {}, "meter": price["recurring"]["meter"], "nickname": price["nickname"], "product": price["product"],
        "tiers_mode": price["tiers_mode"], "transform_usage": null, "trial_period_days": null, "usage_type": price["recurring"]["usage_type"],
    })
}

pub fn customer(id: &str, email: Option<&str>, created: i64, metadata: Value) -> Value {
    json!({
        "id": id, "object": "customer", "address": null, "balance": 0, "created": created, "currency": null,
        "default_source": null, "delinquent": false, "description": null, "discount": null, "email": email,
        "invoice_prefix": id.trim_start_matches("cus_").chars().take(8).collect::<String>().to_uppercase(),
        "livemode": false, "metadata": metadata, "name": null, "phone": null, "preferred_locales": [],
        "shipping": null, "tax_exempt": "none", "test_clock": null,
    })
}

pub struct NewSession<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub created: i64,
    pub success_url: &'a str,
    pub cancel_url: Option<&'a str>,
    pub client_reference_id: Option<&'a str>,
    pub customer: Option<&'a str>,
    pub metadata: Value,
    pub amount_total: i64,
    pub currency: &'a str,
}

pub fn checkout_session(s: NewSession<'_>) -> Value {
    json!({
        "id": s.id, "object": "checkout.session", "after_expiration": null, "allow_promotion_codes": null,
        "amount_subtotal": s.amount_total, "amount_total": s.amount_total,
        "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
        "billing_address_collection": null, "cancel_url": s.cancel_url, "client_reference_id": s.client_reference_id,
        "client_secret": null, "consent": null, "consent_collection": null, "created": s.created,
        "currency": s.currency, "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null},
        "customer": s.customer, "customer_creation": if s.customer.is_some() { Value::Null } else { json!("always") },
        "customer_details": null, "customer_email": null, "expires_at": s.created + 24 * 3600, "invoice": null,
        "livemode": false, "locale": null, "metadata": s.metadata, "mode": "subscription", "payment_intent": null,
        "payment_link": null, "payment_method_collection": "always", "payment_method_types": ["card"],
        "payment_status": "unpaid", "recovered_from": null, "setup_intent": null, "shipping_address_collection": null,
        "shipping_cost": null, "shipping_options": [], "status": "open", "submit_type": null, "subscription": null,
        "success_url": s.success_url, "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted_page", "url": s.url,
    })
}

pub struct NewSubscription<'a> {
    pub id: &'a str,
    pub item_id: &'a str,
    pub customer: &'a str,
    pub price: &'a Value,
    pub now: i64,
    pub period_end: i64,
    pub metadata: Value,
    pub latest_invoice: &'a str,
    pub application_fee_percent: Option<f64>,
    pub transfer_destination: Option<&'a str>,
    /// Items after the first: (item id, price).
    pub more_items: &'a [(String, Value)],
}

/// A subscription item; a metered price's has no quantity (the meter's usage is billed).
pub fn subscription_item(id: &str, subscription: &str, price: &Value, now: i64, period_end: i64) -> Value {
    let mut item = json!({
        "id": id, "object": "subscription_item", "billing_thresholds": null, "created": now,
        "current_period_end": period_end, "current_period_start": now, "discounts": [], "metadata": {},
        "plan": plan_of(price), "price": price, "quantity": 1, "subscription": subscription, "tax_rates": [],
    });
    if price["recurring"]["usage_type"] == "metered" {
        item.as_object_mut().expect("an object").remove("quantity");
    }
    item
}

pub fn subscription(s: NewSubscription<'_>) -> Value {
    let mut items = vec![subscription_item(s.item_id, s.id, s.price, s.now, s.period_end)];
    items.extend(s.more_items.iter().map(|(id, price)| subscription_item(id, s.id, price, s.now, s.period_end)));
    json!({
        "id": s.id, "object": "subscription", "application": null, "application_fee_percent": s.application_fee_percent,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
        "billing_cycle_anchor": s.now, "billing_cycle_anchor_config": null,
        "billing_mode": {"flexible": null, "type": "classic"}, "billing_schedules": [],
        "billing_thresholds": null, "cancel_at": null, "cancel_at_period_end": false, "canceled_at": null,
        "cancellation_details": {"comment": null, "feedback": null, "reason": null},
        "collection_method": "charge_automatically", "created": s.now, "currency": s.price["currency"],
        "customer": s.customer, "days_until_due": null, "default_payment_method": null, "default_source": null,
        "default_tax_rates": [], "description": null, "discounts": [], "ended_at": null,
        "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
        "items": list(items, &format!("/v1/subscription_items?subscription={}", s.id)),
        "latest_invoice": s.latest_invoice, "livemode": false, "metadata": s.metadata,
        "next_pending_invoice_item_invoice": null, "on_behalf_of": null, "pause_collection": null,
        "payment_settings": {"payment_method_options": null, "payment_method_types": null, "save_default_payment_method": "off"},
        "pending_invoice_item_interval": null, "pending_setup_intent": null, "pending_update": null, "schedule": null,
        "start_date": s.now, "status": "active", "test_clock": null,
        "transfer_data": s.transfer_destination.map(|d| json!({"amount_percent": null, "destination": d})),
        "trial_end": null, "trial_settings": null, "trial_start": null,
    })
}

pub struct NewInvoice<'a> {
    pub id: &'a str,
    pub customer: &'a str,
    pub subscription: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub paid: bool,
    pub period_start: i64,
    pub period_end: i64,
    pub now: i64,
}

/// A period's invoice as a draft (Stripe finalizes it after the grace period): its lines, no
/// payment yet.
pub fn draft_invoice(i: NewInvoice<'_>, lines: Vec<Value>) -> Value {
    let id = i.id.to_string();
    let mut v = invoice(i);
    v["status"] = json!("draft");
    v["amount_paid"] = json!(0);
    v["amount_remaining"] = v["amount_due"].clone();
    v["attempt_count"] = json!(0);
    v["attempted"] = json!(false);
    v["auto_advance"] = json!(true);
    v["status_transitions"] =
        json!({"finalized_at": null, "marked_uncollectible_at": null, "paid_at": null, "voided_at": null});
    v["number"] = Value::Null;
    v["lines"] = list(lines, &format!("/v1/invoices/{id}/lines"));
    v
}

pub fn invoice(i: NewInvoice<'_>) -> Value {
    let paid = if i.paid { i.amount } else { 0 };
    json!({
        "id": i.id, "object": "invoice", "account_country": "JP", "account_name": "paykey emulator",
        "amount_due": i.amount, "amount_overpaid": 0, "amount_paid": paid, "amount_remaining": i.amount - paid,
        "amount_shipping": 0, "attempt_count": 1, "attempted": true, "auto_advance": false,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
        "billing_reason": "subscription_cycle", "collection_method": "charge_automatically", "created": i.now,
        "currency": i.currency, "customer": i.customer, "default_tax_rates": [], "description": null, "discounts": [],
        "hosted_invoice_url": null, "invoice_pdf": null, "issuer": {"type": "self"},
        "lines": list(vec![], &format!("/v1/invoices/{}/lines", i.id)), "livemode": false, "metadata": {},
        "number": format!("EMU-{}", &i.id[i.id.len().saturating_sub(6)..]),
        "parent": {"quote_details": null, "subscription_details": {"metadata": {}, "subscription": i.subscription}, "type": "subscription_details"},
        "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
        "period_end": i.period_end, "period_start": i.period_start, "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0, "starting_balance": 0, "status": if i.paid { "paid" } else { "open" },
        "status_transitions": {"finalized_at": i.now, "marked_uncollectible_at": null, "paid_at": if i.paid { json!(i.now) } else { Value::Null }, "voided_at": null},
        "subtotal": i.amount, "total": i.amount,
    })
}

pub fn portal_session(
    id: &str,
    configuration: &str,
    customer: &str,
    return_url: Option<&str>,
    url: &str,
    created: i64,
) -> Value {
    json!({
        "id": id, "object": "billing_portal.session", "configuration": configuration, "created": created,
        "customer": customer, "flow": null, "livemode": false, "locale": null, "on_behalf_of": null,
        "return_url": return_url, "url": url,
    })
}

pub fn event(id: &str, kind: &str, object: Value, created: i64) -> Value {
    json!({
        "id": id, "object": "event", "api_version": API_VERSION, "created": created,
        "data": {"object": object}, "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null}, "type": kind,
    })
}

/// A Stripe error body.
pub fn error(kind: &str, code: Option<&str>, message: &str, param: Option<&str>) -> Value {
    // Stripe leaves `code`, `param` and `doc_url` out when they do not apply (optional, not
    // nullable, in stripe-node's declarations).
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
        e["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{}", c.replace('_', "-")));
    }
    if let Some(p) = param {
        e["param"] = json!(p);
    }
    json!({ "error": e })
}
