//! Usage-based billing: meters, meter events, tiered metered prices and the usage lines of a
//! period's invoice.
//!
//! Sources, Stripe's docs unless said otherwise:
//! - Meters ("Configure meters", API reference `POST /v1/billing/meters`): an `event_name` is used
//!   by one meter only; `default_aggregation.formula` `sum`, `count` or `last`; `event_time_window`
//!   `day` or `hour` — "Pre-aggregated: Stripe only uses the most recently received meter event
//!   [within the window]. A newer event sent within the same hourly or daily window overwrites
//!   the previous one. The hour and day boundaries are based on the meter event timestamp in UTC."
//! - Meter events (`POST /v1/billing/meter_events`): `event_name` and `payload` required; the
//!   payload names the customer (`customer_mapping.event_payload_key`, default
//!   `stripe_customer_id`) and the value (`value_settings.event_payload_key`, default `value`);
//!   `timestamp` "must be within the past 35 calendar days or up to 5 minutes in the future";
//!   `identifier` unique "within a rolling period of at least 24 hours" — a second event with a
//!   seen identifier is refused `400 invalid_request_error` "An event already exists with
//!   identifier …" (as Stripe answered it live: langfuse/langfuse#16292). Stripe processes
//!   events asynchronously: an event for an event name no meter has, or an unknown customer, is
//!   accepted and counts nowhere (Stripe reports those later, as meter error reports).
//! - Tiered prices (`billing_scheme: tiered`, `tiers_mode: graduated`): each tier's units at its
//!   `unit_amount_decimal`, plus its `flat_amount` once when any unit falls in it; the last tier's
//!   `up_to` is `inf`. `tiers` is returned only when expanded.
//! - Metered prices (`recurring.usage_type: metered`, `recurring.meter`): sold without a quantity;
//!   billed in arrears — the invoice that opens a new period carries the closed period's usage.
//! - Invoices of a new period start as drafts ("invoice.created"); Stripe finalizes them after
//!   the account's grace period (1 hour by default, up to 72), and "during the configured
//!   finalization grace period, you can continue to report usage for the previous billing period.
//!   When the invoice finalizes, Stripe updates it to reflect the latest quantity" ("Configure an
//!   invoice finalization grace period").

use serde_json::{json, Value};

use crate::state::Emu;
use crate::{ApiResult, Form};

/// Stripe's default invoice finalization grace period.
pub const FINALIZATION_GRACE: i64 = 3600;

/// Meter events older than this are refused.
const PAST_WINDOW: i64 = 35 * 24 * 3600;
/// … and newer than this.
const FUTURE_WINDOW: i64 = 5 * 60;
/// How long an identifier is remembered.
const IDENTIFIER_WINDOW: i64 = 24 * 3600;

/// A decimal string (Stripe's `*_decimal`, up to 12 places) in units of 10⁻¹².
fn pico(s: &str) -> Option<i128> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || frac.len() > 12 || !digits(int) || !digits(frac) {
        return None;
    }
    let v = int.parse::<i128>().ok()? * 1_000_000_000_000 + format!("{frac:0<12}").parse::<i128>().ok()?;
    Some(if neg { -v } else { v })
}

/// What `quantity` units cost on a graduated price's `tiers`, in the currency's minor unit
/// (rounded half up, as Stripe rounds a line's amount).
pub fn graduated_amount(tiers: &Value, quantity: u64) -> i64 {
    let mut total: i128 = 0;
    let mut below: u64 = 0;
    for t in tiers.as_array().into_iter().flatten() {
        if quantity <= below {
            break;
        }
        let up_to = t["up_to"].as_u64().unwrap_or(u64::MAX);
        let units = quantity.min(up_to) - below;
        let unit = t["unit_amount_decimal"].as_str().and_then(pico).unwrap_or(0);
        let flat = t["flat_amount"].as_i64().unwrap_or(0) as i128 * 1_000_000_000_000;
        total += unit * units as i128 + flat;
        below = up_to;
    }
    ((total + 500_000_000_000) / 1_000_000_000_000) as i64
}

impl Emu {
    pub(crate) fn create_meter(&mut self, form: &Form) -> ApiResult {
        let Some(display_name) = form.get("display_name") else { return ApiResult::missing_param("display_name") };
        let Some(event_name) = form.get("event_name") else { return ApiResult::missing_param("event_name") };
        let Some(formula) = form.sub("default_aggregation").get("formula").map(str::to_string) else {
            return ApiResult::missing_param("default_aggregation[formula]");
        };
        if !matches!(formula.as_str(), "sum" | "count" | "last") {
            return ApiResult::invalid(
                &format!("Invalid default_aggregation[formula]: must be one of count, last, or sum (got {formula})."),
                Some("default_aggregation[formula]"),
            );
        }
        let window = form.get("event_time_window");
        if window.is_some_and(|w| w != "day" && w != "hour") {
            return ApiResult::invalid(
                "Invalid event_time_window: must be one of day or hour.",
                Some("event_time_window"),
            );
        }
        if self.meters.values().any(|m| m["event_name"] == event_name) {
            return ApiResult::invalid(
                &format!("A meter with event_name `{event_name}` already exists."),
                Some("event_name"),
            );
        }
        let cm = form.sub("customer_mapping");
        let id = self.new_id("mtr");
        let t = self.now();
        let meter = json!({
            "id": id, "object": "billing.meter", "created": t,
            "customer_mapping": {
                "event_payload_key": cm.get("event_payload_key").unwrap_or("stripe_customer_id"),
                "type": cm.get("type").unwrap_or("by_id"),
            },
            "default_aggregation": {"formula": formula},
            "display_name": display_name, "event_name": event_name, "event_time_window": window,
            "livemode": false, "status": "active", "status_transitions": {"deactivated_at": null}, "updated": t,
            "value_settings": {"event_payload_key": form.sub("value_settings").get("event_payload_key").unwrap_or("value")},
        });
        self.meters.insert(id, meter.clone());
        ApiResult::ok(meter)
    }

    pub(crate) fn list_meters(&self, form: &Form) -> ApiResult {
        let status = form.get("status");
        let data = self.meters.values().filter(|m| status.is_none_or(|s| m["status"] == s)).cloned().collect();
        ApiResult::ok(crate::objects::list(data, "/v1/billing/meters"))
    }

    pub(crate) fn create_meter_event(&mut self, form: &Form) -> ApiResult {
        let Some(event_name) = form.get("event_name").map(str::to_string) else {
            return ApiResult::missing_param("event_name");
        };
        let payload = form.map("payload");
        if payload.is_empty() {
            return ApiResult::missing_param("payload");
        }
        let now = self.now();
        let timestamp = match form.get("timestamp").map(|t| t.parse::<i64>()) {
            None => now,
            Some(Ok(t)) => t,
            Some(Err(_)) => {
                return ApiResult::invalid("Invalid timestamp: must be an integer Unix timestamp.", Some("timestamp"))
            }
        };
        if timestamp < now - PAST_WINDOW || timestamp > now + FUTURE_WINDOW {
            return ApiResult::invalid(
                "Timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
                Some("timestamp"),
            );
        }
        self.meter_identifiers.retain(|_, at| at.as_i64().is_some_and(|at| at > now - IDENTIFIER_WINDOW));
        let identifier = form.get("identifier").map(str::to_string).unwrap_or_else(|| self.new_id("mev"));
        if self.meter_identifiers.contains_key(&identifier) {
            return ApiResult::invalid(
                &format!("An event already exists with identifier {identifier}."),
                Some("identifier"),
            );
        }
        self.meter_identifiers.insert(identifier.clone(), json!(now));
        // Counted by the meter with this event name, if one is active (else, like an unknown
        // customer, it counts nowhere).
        let meter =
            self.meters.values().find(|m| m["event_name"] == event_name.as_str() && m["status"] == "active").cloned();
        if let Some(meter) = meter {
            let customer = payload.get(meter["customer_mapping"]["event_payload_key"].as_str().unwrap_or_default());
            let value = payload.get(meter["value_settings"]["event_payload_key"].as_str().unwrap_or_default());
            if let (Some(customer), Some(value)) = (customer, value.and_then(|v| pico(v.as_str()))) {
                let bucket = match meter["event_time_window"].as_str() {
                    Some("day") => chrono::DateTime::from_timestamp(timestamp, 0)
                        .map(|d| d.format("%Y-%m-%d").to_string())
                        .unwrap_or_default(),
                    Some("hour") => chrono::DateTime::from_timestamp(timestamp, 0)
                        .map(|d| d.format("%Y-%m-%dT%H").to_string())
                        .unwrap_or_default(),
                    _ => identifier.clone(),
                };
                let seq = self.next_seq();
                self.meter_values.insert(
                    format!("{event_name}|{customer}|{bucket}"),
                    json!({"value_pico": value.to_string(), "timestamp": timestamp, "received": seq}),
                );
            }
        }
        ApiResult::ok(json!({
            "object": "billing.meter_event", "created": now, "event_name": event_name, "identifier": identifier,
            "livemode": false, "payload": payload, "timestamp": timestamp,
        }))
    }

    /// The meter's aggregate for `customer` over events with timestamps in `start..end`, in
    /// whole units (a fraction rounds down).
    pub fn meter_usage(&self, meter_id: &str, customer: &str, start: i64, end: i64) -> u64 {
        let Some(meter) = self.meters.get(meter_id) else { return 0 };
        let prefix = format!("{}|{customer}|", meter["event_name"].as_str().unwrap_or_default());
        let mut picked: Vec<(i64, i128)> = self
            .meter_values
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(_, v)| {
                let t = v["timestamp"].as_i64()?;
                let value = v["value_pico"].as_str()?.parse::<i128>().ok()?;
                (start <= t && t < end).then_some((v["received"].as_i64().unwrap_or(0), value))
            })
            .collect();
        let total: i128 = match meter["default_aggregation"]["formula"].as_str() {
            Some("count") => picked.len() as i128 * 1_000_000_000_000,
            Some("last") => {
                picked.sort();
                picked.last().map(|(_, v)| *v).unwrap_or(0)
            }
            _ => picked.iter().map(|(_, v)| v).sum(),
        };
        (total.max(0) / 1_000_000_000_000) as u64
    }

    /// The usage lines of a subscription's metered items for the period `start..end`: (line
    /// JSON, amount).
    pub(crate) fn usage_lines(&self, sub: &Value, invoice: &str, start: i64, end: i64) -> Vec<(Value, i64)> {
        let customer = sub["customer"].as_str().unwrap_or_default();
        let mut lines = Vec::new();
        for item in sub["items"]["data"].as_array().into_iter().flatten() {
            let price = &item["price"];
            if price["recurring"]["usage_type"] != "metered" {
                continue;
            }
            let id = price["id"].as_str().unwrap_or_default();
            let tiers = self.prices.get(id).map(|p| p["_tiers"].clone()).unwrap_or(Value::Null);
            let quantity =
                self.meter_usage(price["recurring"]["meter"].as_str().unwrap_or_default(), customer, start, end);
            let amount = if tiers.is_array() {
                graduated_amount(&tiers, quantity)
            } else {
                let unit = price["unit_amount_decimal"].as_str().and_then(pico).unwrap_or(0);
                ((unit * quantity as i128 + 500_000_000_000) / 1_000_000_000_000) as i64
            };
            lines.push((
                line(invoice, &format!("{quantity} × usage"), amount, price, Some(quantity), start, end),
                amount,
            ));
        }
        lines
    }
}

/// An invoice line item (stripe-node `InvoiceLineItem`).
pub(crate) fn line(
    invoice: &str,
    description: &str,
    amount: i64,
    price: &Value,
    quantity: Option<u64>,
    start: i64,
    end: i64,
) -> Value {
    json!({
        "id": format!("il_{}_{}", &invoice[invoice.len().saturating_sub(8)..], price["id"].as_str().unwrap_or_default()),
        "object": "line_item", "amount": amount, "currency": price["currency"], "description": description,
        "discount_amounts": [], "discountable": true, "discounts": [], "invoice": invoice, "livemode": false,
        "metadata": {}, "period": {"start": start, "end": end},
        "pricing": {"price_details": {"price": price["id"], "product": price["product"]}, "type": "price_details",
                    "unit_amount_decimal": price["unit_amount_decimal"]},
        "quantity": quantity, "subtotal": amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graduated_price_charges_each_tier_its_own_rate() {
        let tiers = json!([{"up_to": 1000, "unit_amount_decimal": "0", "flat_amount": null},
                           {"up_to": null, "unit_amount_decimal": "0.5", "flat_amount": null}]);
        assert_eq!(graduated_amount(&tiers, 0), 0);
        assert_eq!(graduated_amount(&tiers, 1000), 0);
        assert_eq!(graduated_amount(&tiers, 1200), 100, "200 × 0.5");
        assert_eq!(graduated_amount(&tiers, 1201), 101, "100.5 rounds half up");
        let flat = json!([{"up_to": 10, "unit_amount_decimal": "2", "flat_amount": 100},
                          {"up_to": null, "unit_amount_decimal": "1", "flat_amount": 50}]);
        assert_eq!(graduated_amount(&flat, 5), 110);
        assert_eq!(graduated_amount(&flat, 12), 100 + 20 + 50 + 2);
        assert_eq!(pico("0.000000000001"), Some(1));
        assert_eq!(pico("1.5"), Some(1_500_000_000_000));
        assert_eq!(pico("x"), None);
    }
}
