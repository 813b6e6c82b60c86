//! The emulator's objects and the API operations on them.

use std::collections::{BTreeMap, HashMap};

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::objects::{self, NewInvoice, NewPrice, NewSession, NewSubscription};
use crate::webhooks::Attempt;
use crate::{metering, ApiResult, Form};

#[derive(Default)]
pub struct Emu {
    pub products: BTreeMap<String, Value>,
    pub prices: BTreeMap<String, Value>,
    pub customers: BTreeMap<String, Value>,
    pub sessions: BTreeMap<String, Value>,
    pub subscriptions: BTreeMap<String, Value>,
    pub invoices: BTreeMap<String, Value>,
    pub credit_notes: BTreeMap<String, Value>,
    pub refunds: BTreeMap<String, Value>,
    pub portal_sessions: BTreeMap<String, Value>,
    pub portal_configs: BTreeMap<String, Value>,
    pub webhook_endpoints: BTreeMap<String, Value>,
    /// Idempotency-Key → (request fingerprint, status, answer).
    pub idempotency: HashMap<String, (String, u16, Value)>,
    /// Every event, and those not yet handed to delivery.
    pub events: Vec<Value>,
    pub outbox: Vec<Value>,
    /// Deliveries not finished yet (not answered 2xx, attempts left), keyed by
    /// `event id|target`: exported, so a restart resumes them.
    pub undelivered: BTreeMap<String, Undelivered>,
    pub deliveries: Vec<Attempt>,
    /// Billing meters, by id.
    pub meters: BTreeMap<String, Value>,
    /// What meters aggregate: `event name|customer|window` (a day or hour of a pre-aggregated
    /// meter, else the event's identifier) → the latest event's value (in 10⁻¹² units, a
    /// string), timestamp and order of receipt.
    pub meter_values: BTreeMap<String, Value>,
    /// Meter event identifiers seen in the last 24 hours → when.
    pub meter_identifiers: BTreeMap<String, Value>,
    counter: u64,
    /// Seconds the emulator's clock runs ahead of the wall clock (a test clock: see
    /// [`Emu::advance`]).
    pub clock_offset: i64,
}

/// Where one delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The configured `webhook_url` (resolved at delivery time: the local stack's port may
    /// differ after a restart).
    Configured,
    /// A webhook endpoint created through the API, by id.
    Endpoint(String),
    /// Not yet fanned out to targets (an event emitted and not handed to delivery).
    All,
}

/// One event owed to one target.
#[derive(Debug, Clone)]
pub struct Undelivered {
    pub event: Value,
    pub target: Target,
}

impl Undelivered {
    pub fn key(&self) -> String {
        let t = match &self.target {
            Target::Configured => "configured",
            Target::Endpoint(id) => id.as_str(),
            Target::All => "all",
        };
        format!("{}|{t}", self.event["id"].as_str().unwrap_or_default())
    }

    fn to_json(&self) -> Value {
        let target = match &self.target {
            Target::Configured => json!("configured"),
            Target::Endpoint(id) => json!({ "endpoint": id }),
            Target::All => json!("all"),
        };
        json!({"event": self.event, "target": target})
    }

    fn from_json(v: &Value) -> Option<Self> {
        let target = match &v["target"] {
            Value::String(s) if s == "configured" => Target::Configured,
            Value::String(s) if s == "all" => Target::All,
            t => Target::Endpoint(t["endpoint"].as_str()?.to_string()),
        };
        v["event"]["id"].as_str()?;
        Some(Self { event: v["event"].clone(), target })
    }
}

fn wall_clock() -> i64 {
    chrono::Utc::now().timestamp()
}

fn month_after(t: i64) -> i64 {
    t + 30 * 24 * 3600
}

fn metadata(form: &Form, key: &str) -> Value {
    json!(form.map(key))
}

impl Emu {
    /// The emulator's time (the wall clock plus the test clock's offset).
    pub fn now(&self) -> i64 {
        wall_clock() + self.clock_offset
    }

    /// The next number of the emulator's counter (orders what happened within one second).
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    pub fn new_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        let rand = uuid::Uuid::new_v4().simple().to_string();
        format!("{prefix}_{}{:04}", &rand[..20], self.counter)
    }

    pub fn export(&self) -> Value {
        serde_json::from_str(&self.export_json()).expect("the emulator's own JSON")
    }

    /// [`Emu::export`] as JSON text, serialised straight from the maps: no copy of the state
    /// is made (the local stack calls this under the lock on every group commit).
    pub fn export_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Export<'a> {
            products: &'a BTreeMap<String, Value>,
            prices: &'a BTreeMap<String, Value>,
            customers: &'a BTreeMap<String, Value>,
            sessions: &'a BTreeMap<String, Value>,
            subscriptions: &'a BTreeMap<String, Value>,
            invoices: &'a BTreeMap<String, Value>,
            credit_notes: &'a BTreeMap<String, Value>,
            refunds: &'a BTreeMap<String, Value>,
            portal_sessions: &'a BTreeMap<String, Value>,
            portal_configs: &'a BTreeMap<String, Value>,
            webhook_endpoints: &'a BTreeMap<String, Value>,
            meters: &'a BTreeMap<String, Value>,
            meter_values: &'a BTreeMap<String, Value>,
            meter_identifiers: &'a BTreeMap<String, Value>,
            events: &'a Vec<Value>,
            counter: u64,
            clock_offset: i64,
            // events emitted but not yet handed to delivery belong to the undelivered too
            undelivered: Vec<Value>,
        }
        let undelivered = self
            .undelivered
            .values()
            .map(Undelivered::to_json)
            .chain(self.outbox.iter().map(|e| Undelivered { event: e.clone(), target: Target::All }.to_json()))
            .collect();
        serde_json::to_string(&Export {
            products: &self.products,
            prices: &self.prices,
            customers: &self.customers,
            sessions: &self.sessions,
            subscriptions: &self.subscriptions,
            invoices: &self.invoices,
            credit_notes: &self.credit_notes,
            refunds: &self.refunds,
            portal_sessions: &self.portal_sessions,
            portal_configs: &self.portal_configs,
            webhook_endpoints: &self.webhook_endpoints,
            meters: &self.meters,
            meter_values: &self.meter_values,
            meter_identifiers: &self.meter_identifiers,
            events: &self.events,
            counter: self.counter,
            clock_offset: self.clock_offset,
            undelivered,
        })
        .expect("maps of JSON values serialise")
    }

    pub fn import(&mut self, v: &Value) -> Result<(), String> {
        fn map(v: &Value, k: &str) -> Result<BTreeMap<String, Value>, String> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(BTreeMap::new()),
                Some(Value::Object(o)) => Ok(o.iter().map(|(a, b)| (a.clone(), b.clone())).collect()),
                Some(_) => Err(format!("stripe.{k} is not an object")),
            }
        }
        self.products = map(v, "products")?;
        self.prices = map(v, "prices")?;
        self.customers = map(v, "customers")?;
        self.sessions = map(v, "sessions")?;
        self.subscriptions = map(v, "subscriptions")?;
        self.invoices = map(v, "invoices")?;
        self.credit_notes = map(v, "credit_notes")?;
        self.refunds = map(v, "refunds")?;
        self.portal_sessions = map(v, "portal_sessions")?;
        self.portal_configs = map(v, "portal_configs")?;
        self.webhook_endpoints = map(v, "webhook_endpoints")?;
        self.meters = map(v, "meters")?;
        self.meter_values = map(v, "meter_values")?;
        self.meter_identifiers = map(v, "meter_identifiers")?;
        self.events = v.get("events").and_then(|e| e.as_array()).cloned().unwrap_or_default();
        self.counter = v.get("counter").and_then(|c| c.as_u64()).unwrap_or(0);
        self.clock_offset = v.get("clock_offset").and_then(|c| c.as_i64()).unwrap_or(0);
        self.undelivered.clear();
        self.outbox.clear();
        for u in v.get("undelivered").and_then(|u| u.as_array()).into_iter().flatten() {
            let u = Undelivered::from_json(u).ok_or("stripe.undelivered holds a malformed entry")?;
            match u.target {
                Target::All => self.outbox.push(u.event),
                _ => {
                    self.undelivered.insert(u.key(), u);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn emit(&mut self, kind: &str, object: Value) {
        let id = self.new_id("evt");
        let ev = objects::event(&id, kind, strip_private(object), self.now());
        self.events.push(ev.clone());
        self.outbox.push(ev);
    }

    /// Where `target` delivers now (url, secret): `None` when the endpoint is gone or disabled.
    pub(crate) fn resolve(
        &self,
        target: &Target,
        config_url: Option<&str>,
        config_secret: &str,
    ) -> Option<(String, String)> {
        match target {
            Target::All => None,
            Target::Configured => config_url.map(|u| (u.to_string(), config_secret.to_string())),
            Target::Endpoint(id) => self.webhook_endpoints.get(id).filter(|e| e["status"] == "enabled").map(|e| {
                (
                    e["url"].as_str().unwrap_or_default().to_string(),
                    e["secret_for_delivery"].as_str().unwrap_or_default().to_string(),
                )
            }),
        }
    }

    /// (endpoint id, enabled events) of every enabled webhook endpoint.
    pub(crate) fn endpoint_ids(&self) -> Vec<(String, Vec<String>)> {
        self.webhook_endpoints
            .iter()
            .filter(|(_, e)| e["status"] == "enabled")
            .map(|(id, e)| {
                let events = e["enabled_events"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                (id.clone(), events)
            })
            .collect()
    }

    /// Replaces ids with the objects they name, for the fields listed in `expand[]`.
    pub fn expand(&self, mut value: Value, fields: &[String]) -> Value {
        for field in fields {
            let path: Vec<&str> = field.split('.').collect();
            if path.len() == 2 && path[0] == "data" {
                if let Some(items) = value["data"].as_array_mut() {
                    for item in items {
                        self.expand_field(item, path[1]);
                    }
                }
            } else {
                self.expand_field(&mut value, field);
            }
        }
        value
    }

    fn expand_field(&self, obj: &mut Value, field: &str) {
        // A price's `tiers` are returned only when expanded.
        if field == "tiers" && obj["object"] == "price" {
            if let Some(t) = obj["id"].as_str().and_then(|id| self.prices.get(id)).map(|p| p["_tiers"].clone()) {
                if t.is_array() {
                    obj["tiers"] = t;
                }
            }
            return;
        }
        let Some(id) = obj.get(field).and_then(|v| v.as_str()).map(str::to_string) else {
            return;
        };
        let found = match field {
            "customer" => self.customers.get(&id),
            "subscription" => self.subscriptions.get(&id),
            "invoice" | "latest_invoice" => self.invoices.get(&id),
            "product" => self.products.get(&id),
            _ => None,
        };
        if let Some(o) = found {
            // as its own GET answers it: without the emulator's private fields
            obj[field] = strip_private(o.clone());
        }
    }

    pub(crate) fn route(&mut self, method: &Method, path: &str, form: &Form, base: &str) -> ApiResult {
        let parts: Vec<&str> = path.trim_start_matches("/v1/").trim_end_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["products"]) => self.create_product(form),
            ("GET", ["products"]) => ApiResult::ok(objects::list(self.products.values().cloned().collect(), "/v1/products")),
            ("GET", ["products", id]) => self.products.get(*id).cloned().map(ApiResult::ok).unwrap_or_else(|| ApiResult::missing("product", id, "id")),
            ("POST", ["products", id]) => self.update_product(id, form),
            ("POST", ["prices"]) => self.create_price(form),
            ("GET", ["prices"]) => self.list_prices(form),
            ("GET", ["prices", id]) => self.prices.get(*id).cloned().map(ApiResult::ok).unwrap_or_else(|| ApiResult::missing("price", id, "price")),
            ("POST", ["prices", id]) => self.update_price(id, form),
            ("POST", ["customers"]) => {
                let id = self.new_id("cus");
                let c = objects::customer(&id, form.get("email"), self.now(), metadata(form, "metadata"));
                self.customers.insert(id, c.clone());
                self.emit("customer.created", c.clone());
                ApiResult::ok(c)
            }
            ("GET", ["customers", id]) => self.customers.get(*id).cloned().map(ApiResult::ok).unwrap_or_else(|| ApiResult::missing("customer", id, "id")),
            // Stripe: "Delete a customer" — permanent; "also immediately cancels any active
            // subscriptions on the customer" (API reference, DELETE /v1/customers/:id). Answers
            // `{id, object: "customer", deleted: true}` (stripe-node: `del` resolves to
            // `DeletedCustomer`), which a later GET answers too (`retrieve` resolves to
            // `Customer | DeletedCustomer`); deleting it again is 404 resource_missing.
            ("DELETE", ["customers", id]) => self.delete_customer(id),
            ("POST", ["checkout", "sessions"]) => self.create_session(form, base),
            // Stripe: "List all Checkout Sessions" (filters `customer`, `status`), newest first.
            ("GET", ["checkout", "sessions"]) => {
                let (customer, status) = (form.get("customer"), form.get("status"));
                let mut data: Vec<Value> = self
                    .sessions
                    .values()
                    .filter(|s| customer.is_none_or(|c| s["customer"] == c))
                    .filter(|s| status.is_none_or(|st| s["status"] == st))
                    .map(public)
                    .collect();
                data.sort_by_key(|s| std::cmp::Reverse(s["created"].as_i64()));
                ApiResult::ok(objects::list(data, "/v1/checkout/sessions"))
            }
            ("GET", ["checkout", "sessions", id]) => self.sessions.get(*id).map(|s| ApiResult::ok(public(s))).unwrap_or_else(|| ApiResult::missing("checkout.session", id, "session")),
            ("POST", ["checkout", "sessions", id, "expire"]) => self.expire_session(id),
            ("GET", ["invoices", id]) => self.invoices.get(*id).cloned().map(ApiResult::ok).unwrap_or_else(|| ApiResult::missing("invoice", id, "invoice")),
            ("POST", ["credit_notes"]) => self.create_credit_note(form),
            ("GET", ["credit_notes"]) => {
                let invoice = form.get("invoice");
                let data = self.credit_notes.values().filter(|c| invoice.is_none_or(|i| c["invoice"] == i)).cloned().collect();
                ApiResult::ok(objects::list(data, "/v1/credit_notes"))
            }
            ("GET", ["refunds"]) => ApiResult::ok(objects::list(self.refunds.values().cloned().collect(), "/v1/refunds")),
            ("POST", ["billing_portal", "sessions"]) => self.create_portal_session(form, base),
            ("POST", ["billing_portal", "configurations"]) => self.save_portal_config(None, form),
            ("POST", ["billing_portal", "configurations", id]) => self.save_portal_config(Some(id), form),
            ("GET", ["billing_portal", "configurations"]) => ApiResult::ok(objects::list(self.portal_configs.values().cloned().collect(), "/v1/billing_portal/configurations")),
            ("GET", ["subscriptions"]) => {
                let customer = form.get("customer");
                let status = form.get("status").unwrap_or("all");
                let mut data: Vec<Value> = self
                    .subscriptions
                    .values()
                    .filter(|s| customer.is_none_or(|c| s["customer"] == c))
                    .filter(|s| status == "all" || s["status"] == status || (status == "ended" && s["status"] == "canceled"))
                    .cloned()
                    .collect();
                // newest first; the id's counter suffix orders objects created in one second
                let key = |v: &Value| (v["created"].as_i64(), v["id"].as_str().map(|i| i[i.len().saturating_sub(4)..].to_string()));
                data.sort_by_key(|v| std::cmp::Reverse(key(v)));
                ApiResult::ok(objects::list(data, "/v1/subscriptions"))
            }
            ("GET", ["subscriptions", id]) => self.subscriptions.get(*id).cloned().map(ApiResult::ok).unwrap_or_else(|| ApiResult::missing("subscription", id, "id")),
            ("POST", ["subscriptions", id]) => self.update_subscription(id, form),
            ("DELETE", ["subscriptions", id]) => match self.cancel_now(id) {
                Some(s) => ApiResult::ok(s),
                None => ApiResult::missing("subscription", id, "id"),
            },
            ("GET", ["invoices"]) => {
                let customer = form.get("customer");
                let data = self.invoices.values().filter(|i| customer.is_none_or(|c| i["customer"] == c)).cloned().collect();
                ApiResult::ok(objects::list(data, "/v1/invoices"))
            }
            ("POST", ["billing", "meters"]) => self.create_meter(form),
            ("GET", ["billing", "meters"]) => self.list_meters(form),
            ("POST", ["billing", "meter_events"]) => self.create_meter_event(form),
            ("POST", ["webhook_endpoints"]) => self.save_webhook_endpoint(None, form),
            ("POST", ["webhook_endpoints", id]) => self.save_webhook_endpoint(Some(id), form),
            ("GET", ["webhook_endpoints"]) => {
                let data = self.webhook_endpoints.values().map(public_endpoint).collect();
                ApiResult::ok(objects::list(data, "/v1/webhook_endpoints"))
            }
            _ => {
                ApiResult(
                    StatusCode::NOT_FOUND,
                    objects::error("invalid_request_error", None, &format!("Unrecognized request URL ({method}: {path}). The paykey Stripe emulator implements only the calls paykey makes."), None),
                )
            }
        }
    }

    fn create_product(&mut self, form: &Form) -> ApiResult {
        let Some(name) = form.get("name") else {
            return ApiResult::missing_param("name");
        };
        let id = form.get("id").map(str::to_string).unwrap_or_else(|| self.new_id("prod"));
        if self.products.contains_key(&id) {
            return ApiResult::invalid(&format!("Product already exists: {id}"), Some("id"));
        }
        let p = objects::product(&id, name, self.now(), metadata(form, "metadata"));
        self.products.insert(id, p.clone());
        ApiResult::ok(p)
    }

    fn update_product(&mut self, id: &str, form: &Form) -> ApiResult {
        let t = self.now();
        let Some(p) = self.products.get_mut(id) else { return ApiResult::missing("product", id, "id") };
        if let Some(n) = form.get("name") {
            p["name"] = json!(n);
        }
        if let Some(a) = form.get("active") {
            p["active"] = json!(a == "true");
        }
        for (k, v) in form.map("metadata") {
            p["metadata"][k] = json!(v);
        }
        p["updated"] = json!(t);
        ApiResult::ok(p.clone())
    }

    fn create_price(&mut self, form: &Form) -> ApiResult {
        let Some(product) = form.get("product") else {
            return ApiResult::missing_param("product");
        };
        if !self.products.contains_key(product) {
            return ApiResult::missing("product", product, "product");
        }
        let Some(currency) = form.get("currency") else {
            return ApiResult::missing_param("currency");
        };
        let tiered = form.get("billing_scheme") == Some("tiered");
        let amount = form.get("unit_amount").and_then(|a| a.parse::<i64>().ok());
        if amount.is_none() && !tiered {
            return ApiResult::missing_param("unit_amount");
        }
        let interval = form.sub("recurring").get("interval").map(str::to_string);
        let Some(interval) = interval else {
            return ApiResult::missing_param("recurring[interval]");
        };
        // A tiered price: `tiers_mode` and `tiers`, no `unit_amount`, the last tier up to `inf`.
        let mut tiers = Value::Null;
        let tiers_mode = form.get("tiers_mode");
        if tiered {
            if amount.is_some() {
                return ApiResult::invalid(
                    "You may only specify one of these parameters: tiers, unit_amount.",
                    Some("unit_amount"),
                );
            }
            let Some(mode) = tiers_mode.filter(|m| *m == "graduated" || *m == "volume") else {
                return ApiResult::missing_param("tiers_mode");
            };
            let _ = mode;
            let items = form.items("tiers");
            if items.is_empty() {
                return ApiResult::missing_param("tiers");
            }
            let mut out = Vec::new();
            for (i, t) in items.iter().enumerate() {
                let up_to = match t.get("up_to") {
                    Some("inf") => Value::Null,
                    Some(n) => match n.parse::<u64>() {
                        Ok(n) => json!(n),
                        Err(_) => {
                            return ApiResult::invalid(
                                &format!("Invalid tiers[{i}][up_to]: an integer or inf."),
                                Some("tiers"),
                            )
                        }
                    },
                    None => return ApiResult::missing_param(&format!("tiers[{i}][up_to]")),
                };
                if (i + 1 == items.len()) != up_to.is_null() {
                    return ApiResult::invalid(
                        "The last tier's up_to must be inf, and only the last one's.",
                        Some("tiers"),
                    );
                }
                let unit = t
                    .get("unit_amount_decimal")
                    .map(str::to_string)
                    .or_else(|| t.get("unit_amount").map(str::to_string));
                let flat = t.get("flat_amount").and_then(|f| f.parse::<i64>().ok());
                out.push(json!({
                    "flat_amount": flat, "flat_amount_decimal": flat.map(|f| f.to_string()),
                    "unit_amount": unit.as_deref().and_then(|u| u.parse::<i64>().ok()),
                    "unit_amount_decimal": unit, "up_to": up_to,
                }));
            }
            tiers = Value::Array(out);
        } else if tiers_mode.is_some() || !form.items("tiers").is_empty() {
            return ApiResult::invalid("tiers and tiers_mode require billing_scheme=tiered.", Some("billing_scheme"));
        }
        // A metered price counts a meter's usage (`recurring[meter]`, an active meter).
        let recurring = form.sub("recurring");
        let meter = match recurring.get("usage_type").unwrap_or("licensed") {
            "licensed" => None,
            "metered" => match recurring.get("meter") {
                Some(m) if self.meters.get(m).is_some_and(|x| x["status"] == "active") => Some(m.to_string()),
                Some(m) => return ApiResult::missing("billing.meter", m, "recurring[meter]"),
                None => return ApiResult::missing_param("recurring[meter]"),
            },
            other => {
                return ApiResult::invalid(
                    &format!("Invalid recurring[usage_type]: {other}"),
                    Some("recurring[usage_type]"),
                )
            }
        };
        let lookup_key = form.get("lookup_key");
        if let Some(k) = lookup_key {
            let taken = self.prices.values().any(|p| p["lookup_key"] == k);
            if taken && form.get("transfer_lookup_key") != Some("true") {
                return ApiResult::invalid(
                    &format!("A price (`{k}`) already uses that lookup key."),
                    Some("lookup_key"),
                );
            }
            for p in self.prices.values_mut().filter(|p| p["lookup_key"] == k) {
                p["lookup_key"] = Value::Null;
            }
        }
        let id = self.new_id("price");
        let p = objects::price(NewPrice {
            id: &id,
            product,
            unit_amount: amount,
            currency,
            interval: &interval,
            lookup_key,
            nickname: form.get("nickname"),
            created: self.now(),
            metadata: metadata(form, "metadata"),
            tiers_mode: if tiered { tiers_mode } else { None },
            meter: meter.as_deref(),
        });
        let mut kept = p.clone();
        kept["_tiers"] = tiers;
        self.prices.insert(id, kept);
        ApiResult::ok(p)
    }

    fn update_price(&mut self, id: &str, form: &Form) -> ApiResult {
        let Some(p) = self.prices.get_mut(id) else {
            return ApiResult::missing("price", id, "price");
        };
        if let Some(a) = form.get("active") {
            p["active"] = json!(a == "true");
        }
        if let Some(n) = form.get("nickname") {
            p["nickname"] = json!(n);
        }
        for (k, v) in form.map("metadata") {
            p["metadata"][k] = json!(v);
        }
        ApiResult::ok(p.clone())
    }

    fn list_prices(&self, form: &Form) -> ApiResult {
        let keys = form.list("lookup_keys");
        let active = form.get("active").map(|a| a == "true");
        let product = form.get("product");
        let limit = form.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(10);
        let data: Vec<Value> = self
            .prices
            .values()
            .filter(|p| keys.is_empty() || p["lookup_key"].as_str().is_some_and(|k| keys.iter().any(|x| x == k)))
            .filter(|p| active.is_none_or(|a| p["active"] == a))
            .filter(|p| product.is_none_or(|x| p["product"] == x))
            .take(limit)
            .cloned()
            .collect();
        ApiResult::ok(objects::list(data, "/v1/prices"))
    }

    fn create_session(&mut self, form: &Form, base: &str) -> ApiResult {
        if form.get("mode") != Some("subscription") {
            return ApiResult::invalid("The emulator supports mode=subscription only.", Some("mode"));
        }
        let Some(success_url) = form.get("success_url") else {
            return ApiResult::missing_param("success_url");
        };
        let items = form.items("line_items");
        if items.is_empty() {
            return ApiResult::missing_param("line_items");
        }
        let mut prices = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(price_id) = item.get("price") else {
                return ApiResult::missing_param(&format!("line_items[{i}][price]"));
            };
            let Some(price) = self.prices.get(price_id).cloned() else {
                return ApiResult::missing("price", price_id, &format!("line_items[{i}][price]"));
            };
            if price["active"] != true {
                return ApiResult::invalid(
                    &format!("The price specified is inactive: {price_id}"),
                    Some(format!("line_items[{i}][price]").as_str()),
                );
            }
            // Stripe: a metered price is sold without a quantity, any other with one.
            let metered = price["recurring"]["usage_type"] == "metered";
            match (metered, item.get("quantity").is_some()) {
                (true, true) => {
                    return ApiResult::invalid(
                        &format!("Quantity should not be specified where usage_type is `metered`. Remove quantity from `line_items[{i}]`."),
                        Some(format!("line_items[{i}][quantity]").as_str()),
                    )
                }
                (false, false) => return ApiResult::missing_param(&format!("line_items[{i}][quantity]")),
                _ => {}
            }
            prices.push(price);
        }
        let price = prices[0].clone();
        let price_id = price["id"].as_str().unwrap_or_default().to_string();
        let price_id = price_id.as_str();
        // What the first invoice charges: the licensed prices (metered ones bill at period end).
        let amount_total: i64 = prices.iter().filter_map(|p| p["unit_amount"].as_i64()).sum();
        let customer = form.get("customer");
        if let Some(c) = customer {
            if !self.customer_exists(c) {
                return ApiResult::missing("customer", c, "customer");
            }
        }
        let id = self.new_id("cs_test");
        let url = format!("{base}/checkout/{id}");
        let mut s = objects::checkout_session(NewSession {
            id: &id,
            url: &url,
            created: self.now(),
            success_url,
            cancel_url: form.get("cancel_url"),
            client_reference_id: form.get("client_reference_id"),
            customer,
            metadata: metadata(form, "metadata"),
            amount_total,
            currency: price["currency"].as_str().unwrap_or("usd"),
        });
        // Kept for the payment step (not part of Stripe's object).
        let sd = form.sub("subscription_data");
        s["_price"] = json!(price_id);
        s["_more_prices"] = json!(prices[1..].iter().map(|p| p["id"].clone()).collect::<Vec<_>>());
        s["_subscription_metadata"] = json!(sd.map("metadata"));
        s["_application_fee_percent"] = sd
            .get("application_fee_percent")
            .and_then(|f| f.parse::<f64>().ok())
            .map(Value::from)
            .unwrap_or(Value::Null);
        s["_transfer_destination"] = sd.sub("transfer_data").get("destination").map(Value::from).unwrap_or(Value::Null);
        match sd.get("trial_period_days").map(|d| d.parse::<i64>()) {
            None => {}
            Some(Ok(d)) if (1..=730).contains(&d) => s["_trial_days"] = json!(d),
            Some(_) => {
                return ApiResult::invalid(
                    "trial_period_days must be a whole number from 1 to 730.",
                    Some("subscription_data[trial_period_days]"),
                )
            }
        }
        self.sessions.insert(id, s.clone());
        ApiResult::ok(public(&s))
    }

    /// `POST /v1/checkout/sessions/{id}/expire`: only an open session can be expired.
    fn expire_session(&mut self, id: &str) -> ApiResult {
        let Some(session) = self.sessions.get_mut(id) else {
            return ApiResult::missing("checkout.session", id, "session");
        };
        if session["status"] != "open" {
            let status = session["status"].as_str().unwrap_or("").to_string();
            return ApiResult::invalid(
                &format!("Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{status}\"."),
                None,
            );
        }
        session["status"] = json!("expired");
        session["url"] = Value::Null;
        let s = public(session);
        self.emit("checkout.session.expired", s.clone());
        ApiResult::ok(s)
    }

    /// `POST /v1/credit_notes` on a paid invoice: `amount` credited, `refund_amount` of it
    /// refunded to the card (a refund object), never more than the invoice has left to credit.
    fn create_credit_note(&mut self, form: &Form) -> ApiResult {
        let Some(invoice_id) = form.get("invoice").map(str::to_string) else {
            return ApiResult::missing_param("invoice");
        };
        let Some(invoice) = self.invoices.get(&invoice_id).cloned() else {
            return ApiResult::missing("invoice", &invoice_id, "invoice");
        };
        let Some(amount) = form.get("amount").and_then(|a| a.parse::<i64>().ok()) else {
            return ApiResult::invalid(
                "One of `amount`, `lines`, or `shipping_cost` must be provided.",
                Some("amount"),
            );
        };
        let refund_amount = form.get("refund_amount").and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
        let credit_amount = form.get("credit_amount").and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
        let paid = invoice["amount_paid"].as_i64().unwrap_or(0);
        let credited = invoice["post_payment_credit_notes_amount"].as_i64().unwrap_or(0);
        if invoice["status"] != "paid" {
            return ApiResult::invalid("The emulator credits paid invoices only.", Some("invoice"));
        }
        if amount <= 0 || amount > paid - credited {
            return ApiResult::invalid(
                &format!(
                    "The credit note amount ({amount}) exceeds what is left to credit on the invoice ({}).",
                    paid - credited
                ),
                Some("amount"),
            );
        }
        if refund_amount + credit_amount != amount {
            return ApiResult::invalid(
                &format!("The sum of credit amount, refund amount and out of band amount ({}) must equal the credit note amount ({amount}).", refund_amount + credit_amount),
                Some("amount"),
            );
        }
        let t = self.now();
        let (cn_id, re_id) = (self.new_id("cn"), self.new_id("re"));
        let customer = invoice["customer"].clone();
        let currency = invoice["currency"].clone();
        let refunds = if refund_amount > 0 {
            let refund = json!({
                "id": re_id, "object": "refund", "amount": refund_amount, "currency": currency, "created": t,
                "status": "succeeded", "reason": "duplicate", "metadata": {}, "invoice": invoice_id, "customer": customer,
            });
            self.refunds.insert(re_id.clone(), refund);
            json!([{"amount_refunded": refund_amount, "payment_record_refund": null, "refund": re_id, "type": "refund"}])
        } else {
            json!([])
        };
        let note = json!({
            "id": cn_id, "object": "credit_note", "amount": amount, "amount_shipping": 0, "created": t,
            "currency": currency, "customer": customer, "customer_account": null, "customer_balance_transaction": null,
            "discount_amount": 0, "discount_amounts": [], "effective_at": t, "invoice": invoice_id,
            "lines": objects::list(vec![], &format!("/v1/credit_notes/{cn_id}/lines")), "livemode": false,
            "memo": form.get("memo"), "metadata": {}, "number": format!("EMU-CN-{}", &cn_id[cn_id.len().saturating_sub(4)..]),
            "out_of_band_amount": null, "pdf": format!("https://emulator.invalid/credit_notes/{cn_id}.pdf"),
            "post_payment_amount": amount, "pre_payment_amount": 0, "pretax_credit_amounts": [],
            "reason": form.get("reason"), "refunds": refunds, "shipping_cost": null, "status": "issued",
            "subtotal": amount, "subtotal_excluding_tax": amount, "total": amount, "total_excluding_tax": amount,
            "total_taxes": [], "type": "post_payment", "voided_at": null,
        });
        if let Some(inv) = self.invoices.get_mut(&invoice_id) {
            inv["post_payment_credit_notes_amount"] = json!(credited + amount);
        }
        self.credit_notes.insert(cn_id, note.clone());
        self.emit("credit_note.created", note.clone());
        ApiResult::ok(note)
    }

    /// Completes a checkout as a successful card payment would, emitting Stripe's events.
    pub fn pay(&mut self, id: &str) -> Option<String> {
        let s = self.sessions.get(id)?.clone();
        if s["status"] == "expired" {
            return None;
        }
        if s["status"] != "open" {
            return s["success_url"].as_str().map(|u| u.replace("{CHECKOUT_SESSION_ID}", id));
        }
        let t = self.now();
        let customer = match s["customer"].as_str() {
            Some(c) => c.to_string(),
            None => {
                let cid = self.new_id("cus");
                let c = objects::customer(&cid, None, t, json!({}));
                self.customers.insert(cid.clone(), c.clone());
                self.emit("customer.created", c);
                cid
            }
        };
        let price = strip_private(self.prices.get(s["_price"].as_str()?)?.clone());
        let more: Vec<Value> = s["_more_prices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().and_then(|id| self.prices.get(id)).cloned().map(strip_private))
            .collect();
        let trial_end = s["_trial_days"].as_i64().map(|d| t + d * 24 * 3600);
        let (sub_id, item_id, inv_id) = (self.new_id("sub"), self.new_id("si"), self.new_id("in"));
        let more_items: Vec<(String, Value)> = more.into_iter().map(|p| (self.new_id("si"), p)).collect();
        let licensed: i64 = std::iter::once(&price)
            .chain(more_items.iter().map(|(_, p)| p))
            .filter_map(|p| p["unit_amount"].as_i64())
            .sum();
        let mut sub = objects::subscription(NewSubscription {
            id: &sub_id,
            item_id: &item_id,
            customer: &customer,
            price: &price,
            now: t,
            period_end: trial_end.unwrap_or_else(|| month_after(t)),
            metadata: s["_subscription_metadata"].clone(),
            latest_invoice: &inv_id,
            application_fee_percent: s["_application_fee_percent"].as_f64(),
            transfer_destination: s["_transfer_destination"].as_str(),
            more_items: &more_items,
        });
        if let Some(end) = trial_end {
            // A trial: `trialing` until `trial_end`, a $0 first invoice; the card given on the
            // checkout page is the payment method (none when the trial was started without one).
            sub["status"] = json!("trialing");
            sub["trial_start"] = json!(t);
            sub["trial_end"] = json!(end);
        }
        sub["_payment_method"] = json!(s["_no_payment_method"] != true);
        let inv = objects::invoice(NewInvoice {
            id: &inv_id,
            customer: &customer,
            subscription: &sub_id,
            amount: if trial_end.is_some() { 0 } else { licensed },
            currency: price["currency"].as_str().unwrap_or("usd"),
            paid: true,
            period_start: t,
            period_end: trial_end.unwrap_or_else(|| month_after(t)),
            now: t,
        });
        self.subscriptions.insert(sub_id.clone(), sub.clone());
        self.invoices.insert(inv_id.clone(), inv.clone());
        let session = self.sessions.get_mut(id)?;
        session["status"] = json!("complete");
        // Stripe (checkout.session.payment_status): `no_payment_required` when "the payment is
        // delayed to a future date" — a trial; `paid` when the first invoice was charged.
        session["payment_status"] = json!(if trial_end.is_some() { "no_payment_required" } else { "paid" });
        session["customer"] = json!(customer);
        session["subscription"] = json!(sub_id);
        session["invoice"] = json!(inv_id);
        session["customer_details"] =
            json!({"address": null, "email": null, "name": null, "phone": null, "tax_exempt": "none", "tax_ids": []});
        let session = public(session);
        self.emit("customer.subscription.created", sub);
        self.emit("invoice.paid", inv);
        self.emit("checkout.session.completed", session.clone());
        session["success_url"].as_str().map(|u| u.replace("{CHECKOUT_SESSION_ID}", id))
    }

    fn create_portal_session(&mut self, form: &Form, base: &str) -> ApiResult {
        let Some(customer) = form.get("customer") else {
            return ApiResult::missing_param("customer");
        };
        if !self.customer_exists(customer) {
            return ApiResult::missing("customer", customer, "customer");
        }
        // Without `configuration`, Stripe uses the account's default configuration: the one saved
        // in the Dashboard (`is_default`: "this configuration can be managed in the Dashboard";
        // API reference, billing_portal.configuration). A configuration created through the API
        // is never the default, and an account whose portal settings were never saved refuses the
        // session (the message below is Stripe's, as its API answers it in test mode).
        let config = match form.get("configuration") {
            Some(c) if self.portal_configs.get(c).is_some_and(|c| c["active"] == true) => c.to_string(),
            Some(c) if self.portal_configs.contains_key(c) => {
                return ApiResult::invalid(
                    &format!("The configuration {c} is not active. Activate it or use another configuration."),
                    Some("configuration"),
                )
            }
            Some(c) => return ApiResult::missing_in_param("billing_portal.configuration", c, "configuration"),
            None => match self.portal_configs.values().find(|c| c["is_default"] == true) {
                Some(c) => c["id"].as_str().unwrap_or_default().to_string(),
                None => {
                    return ApiResult::invalid(
                        "You can’t create a portal session in test mode until you save your customer portal settings in test mode at https://dashboard.stripe.com/test/settings/billing/portal.",
                        None,
                    )
                }
            },
        };
        let id = self.new_id("bps");
        let url = format!("{base}/portal/{id}");
        let p = objects::portal_session(&id, &config, customer, form.get("return_url"), &url, self.now());
        self.portal_sessions.insert(id, p.clone());
        ApiResult::ok(p)
    }

    /// What saving the customer portal settings in the Dashboard does: the account gets its
    /// default configuration (cancel and invoice history), the one portal sessions without
    /// `configuration` use. Not reachable through the API, as on Stripe.
    pub fn save_dashboard_portal_settings(&mut self) -> String {
        if let Some(c) = self.portal_configs.values().find(|c| c["is_default"] == true) {
            return c["id"].as_str().unwrap_or_default().to_string();
        }
        let ApiResult(_, mut c) = self.save_portal_config(
            None,
            &Form::parse(b"features[subscription_cancel][enabled]=true&features[invoice_history][enabled]=true"),
        );
        let id = c["id"].as_str().unwrap_or_default().to_string();
        c["is_default"] = json!(true);
        self.portal_configs.insert(id.clone(), c);
        id
    }

    fn save_portal_config(&mut self, id: Option<&str>, form: &Form) -> ApiResult {
        let existing = id.and_then(|i| self.portal_configs.get(i).cloned());
        if let (Some(i), None) = (id, &existing) {
            return ApiResult::missing("billing_portal.configuration", i, "configuration");
        }
        let id = id.map(str::to_string).unwrap_or_else(|| self.new_id("bpc"));
        // created through the API: never the default (see create_portal_session)
        let is_default = existing.as_ref().is_some_and(|e| e["is_default"] == true);
        let mut c = existing.unwrap_or_else(|| {
            json!({
                "id": id, "object": "billing_portal.configuration", "active": true, "application": null,
                "business_profile": {"headline": null, "privacy_policy_url": null, "terms_of_service_url": null},
                "created": self.now(), "default_return_url": null,
                "features": {
                    "customer_update": {"allowed_updates": [], "enabled": false},
                    "invoice_history": {"enabled": false},
                    "payment_method_update": {"enabled": false, "payment_method_configuration": null},
                    "subscription_cancel": {"cancellation_reason": {"enabled": false, "options": []}, "enabled": false, "mode": "at_period_end", "proration_behavior": "none"},
                    "subscription_update": {"billing_cycle_anchor": null, "default_allowed_updates": [], "enabled": false, "products": [], "proration_behavior": "none", "schedule_at_period_end": {"conditions": []}, "trial_update_behavior": "continue_trial"}
                },
                "is_default": is_default, "livemode": false, "login_page": {"enabled": false, "url": null},
                "metadata": {}, "name": null, "updated": self.now(),
            })
        });
        let f = form.sub("features");
        for feature in ["invoice_history", "payment_method_update", "customer_update", "subscription_update"] {
            if let Some(e) = f.sub(feature).get("enabled") {
                c["features"][feature]["enabled"] = json!(e == "true");
            }
        }
        let update = f.sub("subscription_update");
        let products: Vec<Value> = update
            .items("products")
            .iter()
            .map(|p| {
                json!({"adjustable_quantity": {"enabled": false, "maximum": null, "minimum": 1},
                    "product": p.get("product").unwrap_or_default(), "prices": p.list("prices")})
            })
            .collect();
        if !products.is_empty() {
            c["features"]["subscription_update"]["products"] = json!(products);
        }
        let allowed = update.list("default_allowed_updates");
        if !allowed.is_empty() {
            c["features"]["subscription_update"]["default_allowed_updates"] = json!(allowed);
        }
        if let Some(p) = update.get("proration_behavior") {
            c["features"]["subscription_update"]["proration_behavior"] = json!(p);
        }
        let cancel = f.sub("subscription_cancel");
        if let Some(e) = cancel.get("enabled") {
            c["features"]["subscription_cancel"]["enabled"] = json!(e == "true");
        }
        if let Some(m) = cancel.get("mode") {
            c["features"]["subscription_cancel"]["mode"] = json!(m);
        }
        if let Some(h) = form.sub("business_profile").get("headline") {
            c["business_profile"]["headline"] = json!(h);
        }
        if let Some(u) = form.get("default_return_url") {
            c["default_return_url"] = json!(u);
        }
        if let Some(a) = form.get("active") {
            c["active"] = json!(a == "true");
        }
        for (k, v) in form.map("metadata") {
            c["metadata"][k] = json!(v);
        }
        c["updated"] = json!(self.now());
        self.portal_configs.insert(id, c.clone());
        ApiResult::ok(c)
    }

    fn update_subscription(&mut self, id: &str, form: &Form) -> ApiResult {
        let t = self.now();
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return ApiResult::missing("subscription", id, "id");
        };
        if let Some(v) = form.get("cancel_at_period_end") {
            let on = v == "true";
            sub["cancel_at_period_end"] = json!(on);
            let end = sub["items"]["data"][0]["current_period_end"].clone();
            sub["cancel_at"] = if on { end } else { Value::Null };
            sub["canceled_at"] = if on { json!(t) } else { Value::Null };
        }
        for (k, v) in form.map("metadata") {
            sub["metadata"][k] = json!(v);
        }
        let items = form.items("items");
        if let Some(new_price) = items.first().and_then(|i| i.get("price")) {
            let Some(price) = self.prices.get(new_price).cloned() else {
                return ApiResult::missing("price", new_price, "items[0][price]");
            };
            return self.change_price(id, &price, form.get("proration_behavior").unwrap_or("create_prorations"));
        }
        let s = self.subscriptions.get(id).cloned().unwrap_or(Value::Null);
        self.emit("customer.subscription.updated", s.clone());
        ApiResult::ok(s)
    }

    /// A plan switch (the portal's, or `items[0][price]`): the item's price changes now; with
    /// prorations, an invoice charges the difference for the rest of the period (a credit when
    /// negative), as Stripe's `always_invoice` does. A trial continues.
    pub(crate) fn change_price(&mut self, id: &str, price: &Value, proration: &str) -> ApiResult {
        let t = self.now();
        let Some(sub) = self.subscriptions.get_mut(id) else {
            return ApiResult::missing("subscription", id, "id");
        };
        let old = sub["items"]["data"][0]["price"].clone();
        if old["id"] == price["id"] {
            return ApiResult::ok(sub.clone());
        }
        let start = sub["items"]["data"][0]["current_period_start"].as_i64().unwrap_or(t);
        let end = sub["items"]["data"][0]["current_period_end"].as_i64().unwrap_or(t);
        sub["items"]["data"][0]["price"] = price.clone();
        sub["items"]["data"][0]["plan"] = objects::plan_of(price);
        let trialing = sub["status"] == "trialing";
        let customer = sub["customer"].as_str().unwrap_or_default().to_string();
        let s = sub.clone();
        self.emit("customer.subscription.updated", s.clone());
        if proration != "none" && !trialing && end > start {
            let left = (end - t).max(0) as f64 / (end - start) as f64;
            let diff = price["unit_amount"].as_i64().unwrap_or(0) - old["unit_amount"].as_i64().unwrap_or(0);
            let amount = (diff as f64 * left).round() as i64;
            let inv_id = self.new_id("in");
            let inv = objects::invoice(NewInvoice {
                id: &inv_id,
                customer: &customer,
                subscription: id,
                amount: amount.max(0),
                currency: price["currency"].as_str().unwrap_or("usd"),
                paid: true,
                period_start: t,
                period_end: end,
                now: t,
            });
            let mut inv = inv;
            inv["billing_reason"] = json!("subscription_update");
            inv["_proration"] = json!(amount);
            self.invoices.insert(inv_id.clone(), inv.clone());
            if let Some(sub) = self.subscriptions.get_mut(id) {
                sub["latest_invoice"] = json!(inv_id);
            }
            self.emit("invoice.paid", inv);
        }
        ApiResult::ok(s)
    }

    /// Moves the emulator's clock forward (like a Stripe test clock) and does what Stripe
    /// would have done meanwhile, in time order per subscription: a trial that ends with a
    /// payment method turns `active` with its first charge, without one it is `paused`; a period
    /// that ends renews with a paid invoice, or ends the subscription when it was set to cancel.
    pub fn advance(&mut self, seconds: i64) {
        self.clock_offset += seconds.max(0);
        let t = self.now();
        let ids: Vec<String> = self.subscriptions.keys().cloned().collect();
        for id in ids {
            while let Some(sub) = self.subscriptions.get(&id).cloned() {
                let status = sub["status"].as_str().unwrap_or_default().to_string();
                let end = sub["items"]["data"][0]["current_period_end"].as_i64().unwrap_or(i64::MAX);
                if !matches!(status.as_str(), "active" | "trialing" | "past_due") || end > t {
                    break;
                }
                if sub["cancel_at_period_end"] == true {
                    self.cancel_now(&id);
                    break;
                }
                if status == "trialing" && sub["_payment_method"] == false {
                    let s = self.subscriptions.get_mut(&id).expect("exists");
                    s["status"] = json!("paused");
                    s["pause_collection"] = Value::Null;
                    let s = s.clone();
                    self.emit("customer.subscription.paused", s.clone());
                    self.emit("customer.subscription.updated", s);
                    break;
                }
                self.renew(&id, end);
            }
        }
        self.finalize_drafts(t);
    }

    /// A new period from `from`: `active`, and an invoice for it. Without a metered item, a paid
    /// invoice for the licensed prices; with one, a draft carrying the licensed prices for the new
    /// period and the closed period's metered usage (`invoice.created`), finalized and paid after
    /// [`metering::FINALIZATION_GRACE`] by [`Emu::advance`] with the usage as it stands then.
    fn renew(&mut self, id: &str, from: i64) {
        let inv_id = self.new_id("in");
        let Some(sub) = self.subscriptions.get_mut(id) else { return };
        let price = sub["items"]["data"][0]["price"].clone();
        let customer = sub["customer"].as_str().unwrap_or_default().to_string();
        let closed_from = sub["items"]["data"][0]["current_period_start"].as_i64().unwrap_or(from);
        let metered = sub["items"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["price"]["recurring"]["usage_type"] == "metered");
        let licensed: Vec<Value> = sub["items"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["price"]["recurring"]["usage_type"] != "metered")
            .map(|i| i["price"].clone())
            .collect();
        sub["status"] = json!("active");
        for item in sub["items"]["data"].as_array_mut().into_iter().flatten() {
            item["current_period_start"] = json!(from);
            item["current_period_end"] = json!(month_after(from));
        }
        sub["latest_invoice"] = json!(inv_id);
        let s = sub.clone();
        if metered {
            let mut lines: Vec<Value> = licensed
                .iter()
                .map(|p| {
                    let a = p["unit_amount"].as_i64().unwrap_or(0);
                    metering::line(&inv_id, "1 × subscription", a, p, Some(1), from, month_after(from))
                })
                .collect();
            let usage = self.usage_lines(&s, &inv_id, closed_from, from);
            let amount = lines.iter().filter_map(|l| l["amount"].as_i64()).sum::<i64>()
                + usage.iter().map(|(_, a)| a).sum::<i64>();
            lines.extend(usage.into_iter().map(|(l, _)| l));
            let mut inv = objects::draft_invoice(
                NewInvoice {
                    id: &inv_id,
                    customer: &customer,
                    subscription: id,
                    amount,
                    currency: price["currency"].as_str().unwrap_or("usd"),
                    paid: false,
                    period_start: closed_from,
                    period_end: from,
                    now: from,
                },
                lines,
            );
            let public_inv = inv.clone();
            inv["_finalize_at"] = json!(from + metering::FINALIZATION_GRACE);
            self.invoices.insert(inv_id, inv);
            self.emit("customer.subscription.updated", s);
            self.emit("invoice.created", public_inv);
            return;
        }
        let inv = objects::invoice(NewInvoice {
            id: &inv_id,
            customer: &customer,
            subscription: id,
            amount: licensed.iter().filter_map(|p| p["unit_amount"].as_i64()).sum(),
            currency: price["currency"].as_str().unwrap_or("usd"),
            paid: true,
            period_start: from,
            period_end: month_after(from),
            now: from,
        });
        self.invoices.insert(inv_id, inv.clone());
        self.emit("customer.subscription.updated", s);
        self.emit("invoice.paid", inv);
    }

    /// Finalizes and pays every draft whose grace period has ended by `t`: its usage lines are
    /// computed again from the meters (the usage reported meanwhile counts), then
    /// `invoice.finalized` and `invoice.paid`.
    fn finalize_drafts(&mut self, t: i64) {
        let due: Vec<String> = self
            .invoices
            .iter()
            .filter(|(_, i)| i["status"] == "draft" && i["_finalize_at"].as_i64().is_some_and(|at| at <= t))
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            let inv = self.invoices[&id].clone();
            let at = inv["_finalize_at"].as_i64().unwrap_or(t);
            let sub_id = inv["parent"]["subscription_details"]["subscription"].as_str().unwrap_or_default().to_string();
            let Some(sub) = self.subscriptions.get(&sub_id).cloned() else { continue };
            let (start, end) = (inv["period_start"].as_i64().unwrap_or(0), inv["period_end"].as_i64().unwrap_or(0));
            let mut lines: Vec<Value> = inv["lines"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| {
                    !sub["items"]["data"].as_array().into_iter().flatten().any(|i| {
                        i["price"]["recurring"]["usage_type"] == "metered"
                            && l["pricing"]["price_details"]["price"] == i["price"]["id"]
                    })
                })
                .cloned()
                .collect();
            lines.extend(self.usage_lines(&sub, &id, start, end).into_iter().map(|(l, _)| l));
            let amount: i64 = lines.iter().filter_map(|l| l["amount"].as_i64()).sum();
            let inv = self.invoices.get_mut(&id).expect("listed");
            inv["lines"]["data"] = Value::Array(lines);
            for k in ["amount_due", "amount_paid", "subtotal", "total"] {
                inv[k] = json!(amount);
            }
            inv["amount_remaining"] = json!(0);
            inv["status"] = json!("paid");
            inv["attempted"] = json!(true);
            inv["attempt_count"] = json!(1);
            inv["number"] = json!(format!("EMU-{}", &id[id.len().saturating_sub(6)..]));
            inv["status_transitions"]["finalized_at"] = json!(at);
            inv["status_transitions"]["paid_at"] = json!(at);
            if let Some(o) = inv.as_object_mut() {
                o.remove("_finalize_at");
            }
            let done = inv.clone();
            self.emit("invoice.finalized", done.clone());
            self.emit("invoice.paid", done);
        }
    }

    /// Cancels at once: `canceled`, with `customer.subscription.deleted`.
    /// A customer that exists and is not deleted (a deleted one is kept as a tombstone).
    fn customer_exists(&self, id: &str) -> bool {
        self.customers.get(id).is_some_and(|c| c["deleted"] != true)
    }

    fn delete_customer(&mut self, id: &str) -> ApiResult {
        let Some(customer) = self.customers.get(id).filter(|c| c["deleted"] != true).cloned() else {
            return ApiResult::missing("customer", id, "id");
        };
        let tombstone = json!({ "id": id, "object": "customer", "deleted": true });
        self.customers.insert(id.to_string(), tombstone.clone());
        let live: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, s)| s["customer"] == id && s["status"] != "canceled" && s["status"] != "incomplete_expired")
            .map(|(k, _)| k.clone())
            .collect();
        for sub in live {
            self.cancel_now(&sub);
        }
        self.emit("customer.deleted", customer);
        ApiResult::ok(tombstone)
    }

    pub fn cancel_now(&mut self, id: &str) -> Option<Value> {
        let t = self.now();
        let sub = self.subscriptions.get_mut(id)?;
        if sub["status"] != "canceled" {
            sub["status"] = json!("canceled");
            sub["canceled_at"] = json!(t);
            sub["ended_at"] = json!(t);
            sub["cancellation_details"]["reason"] = json!("cancellation_requested");
            let s = sub.clone();
            self.emit("customer.subscription.deleted", s);
        }
        self.subscriptions.get(id).cloned()
    }

    /// Cancels at the end of the period: stays `active` with `cancel_at_period_end`.
    pub(crate) fn cancel_at_period_end(&mut self, id: &str) -> Option<Value> {
        let r = self.update_subscription(id, &Form::parse(b"cancel_at_period_end=true"));
        r.0.is_success().then_some(r.1)
    }

    pub fn set_subscription_status(&mut self, id: &str, status: &str) -> Option<Value> {
        if status == "canceled" {
            return self.cancel_now(id);
        }
        let sub = self.subscriptions.get_mut(id)?;
        sub["status"] = json!(status);
        let s = sub.clone();
        let customer = s["customer"].as_str().unwrap_or_default().to_string();
        let price = s["items"]["data"][0]["price"].clone();
        let inv_id = self.new_id("in");
        let t = self.now();
        let paid = status == "active";
        let inv = objects::invoice(NewInvoice {
            id: &inv_id,
            customer: &customer,
            subscription: id,
            amount: price["unit_amount"].as_i64().unwrap_or(0),
            currency: price["currency"].as_str().unwrap_or("usd"),
            paid,
            period_start: t,
            period_end: month_after(t),
            now: t,
        });
        self.invoices.insert(inv_id.clone(), inv.clone());
        if let Some(sub) = self.subscriptions.get_mut(id) {
            sub["latest_invoice"] = json!(inv_id);
        }
        let s = self.subscriptions.get(id).cloned()?;
        self.emit("customer.subscription.updated", s.clone());
        self.emit(if paid { "invoice.paid" } else { "invoice.payment_failed" }, inv);
        Some(s)
    }

    fn save_webhook_endpoint(&mut self, id: Option<&str>, form: &Form) -> ApiResult {
        let existing = id.and_then(|i| self.webhook_endpoints.get(i).cloned());
        if let (Some(i), None) = (id, &existing) {
            return ApiResult::missing("webhook_endpoint", i, "webhook_endpoint");
        }
        let mut e = match existing {
            Some(e) => e,
            None => {
                let Some(url) = form.get("url") else {
                    return ApiResult::missing_param("url");
                };
                let events = form.list("enabled_events");
                if events.is_empty() {
                    return ApiResult::missing_param("enabled_events");
                }
                let id = self.new_id("we");
                let secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
                json!({
                    "id": id, "object": "webhook_endpoint", "api_version": form.get("api_version"),
                    "application": null, "created": self.now(), "description": form.get("description"),
                    "enabled_events": events, "livemode": false, "metadata": {}, "status": "enabled",
                    "url": url, "secret_for_delivery": secret,
                })
            }
        };
        if let Some(u) = form.get("url") {
            e["url"] = json!(u);
        }
        let events = form.list("enabled_events");
        if !events.is_empty() {
            e["enabled_events"] = json!(events);
        }
        if let Some(d) = form.get("disabled") {
            e["status"] = json!(if d == "true" { "disabled" } else { "enabled" });
        }
        if let Some(d) = form.get("description") {
            e["description"] = json!(d);
        }
        for (k, v) in form.map("metadata") {
            e["metadata"][k] = json!(v);
        }
        let created_now = id.is_none();
        let key = e["id"].as_str().unwrap_or_default().to_string();
        self.webhook_endpoints.insert(key, e.clone());
        let mut shown = public_endpoint(&e);
        if created_now {
            // Like Stripe, the secret is shown only when the endpoint is created.
            shown["secret"] = e["secret_for_delivery"].clone();
        }
        ApiResult::ok(shown)
    }
}

/// A value without the emulator's private `_…` fields at any depth: what every API answer and
/// event carries (Stripe has no field starting with `_`; the Stripe oracle checks answers
/// against stripe-node's declarations).
pub(crate) fn strip_private(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k, strip_private(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_private).collect()),
        other => other,
    }
}

/// An object without the emulator's private `_…` fields.
pub(crate) fn public(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.retain(|k, _| !k.starts_with('_'));
    }
    v
}

fn public_endpoint(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("secret_for_delivery");
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(emu: &mut Emu, method: Method, path: &str, form: &str) -> Value {
        let r = emu.route(&method, path, &Form::parse(form.as_bytes()), "http://emu");
        assert!(r.0.is_success(), "{path}: {}", r.1);
        r.1
    }

    /// Two monthly prices (¥1,000 and ¥3,000) and a paid-for session of the first, with
    /// `trial_days` of trial; returns (emulator, subscription id, second price id).
    fn subscribed(trial_days: u32, card: bool) -> (Emu, String, String) {
        let mut emu = Emu::default();
        let product = call(&mut emu, Method::POST, "/v1/products", "name=P")["id"].as_str().unwrap().to_string();
        let mut prices = Vec::new();
        for (amount, key) in [(1000, "a"), (3000, "b")] {
            let form = format!(
                "product={product}&unit_amount={amount}&currency=jpy&recurring[interval]=month&lookup_key={key}"
            );
            prices.push(call(&mut emu, Method::POST, "/v1/prices", &form)["id"].as_str().unwrap().to_string());
        }
        let mut form = format!(
            "mode=subscription&success_url=https://x/ok&line_items[0][price]={}&line_items[0][quantity]=1",
            prices[0]
        );
        if trial_days > 0 {
            form.push_str(&format!("&subscription_data[trial_period_days]={trial_days}"));
        }
        let session = call(&mut emu, Method::POST, "/v1/checkout/sessions", &form)["id"].as_str().unwrap().to_string();
        if !card {
            emu.sessions.get_mut(&session).unwrap()["_no_payment_method"] = json!(true);
        }
        emu.pay(&session).unwrap();
        let sub = emu.sessions[&session]["subscription"].as_str().unwrap().to_string();
        (emu, sub, prices[1].clone())
    }

    /// `expand[]=subscription` on a session gives the subscription as its own GET does: no
    /// private `_…` field (Stripe has none; the oracle found the expanded one carried some).
    #[test]
    fn an_expanded_subscription_is_the_public_object() {
        let (mut emu, sub, _) = subscribed(0, true);
        let session = emu.sessions.keys().next().unwrap().clone();
        let got = strip_private(call(&mut emu, Method::GET, &format!("/v1/checkout/sessions/{session}"), ""));
        let expanded = emu.expand(got, &["subscription".to_string()]);
        let own = strip_private(call(&mut emu, Method::GET, &format!("/v1/subscriptions/{sub}"), ""));
        assert_eq!(expanded["subscription"], own);
        assert!(
            emu.subscriptions[&sub].as_object().unwrap().keys().any(|k| k.starts_with('_')),
            "the stored one has some"
        );
    }

    fn kinds(emu: &Emu, from: usize) -> Vec<String> {
        emu.events[from..].iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
    }

    /// Stripe: a configuration created through the API is not the default (`is_default`: "this
    /// configuration can be managed in the Dashboard and portal sessions will use this
    /// configuration unless it is overriden"); an account whose portal settings were never saved
    /// refuses a session without `configuration`; an inactive configuration cannot be used.
    #[test]
    fn a_portal_session_uses_the_configuration_it_names_and_only_the_dashboards_is_the_default() {
        let (mut emu, sub, _) = subscribed(0, true);
        let customer = emu.subscriptions[&sub]["customer"].as_str().unwrap().to_string();
        let ours = call(
            &mut emu,
            Method::POST,
            "/v1/billing_portal/configurations",
            "features[invoice_history][enabled]=true",
        );
        assert_eq!(ours["is_default"], false, "created through the API");
        let ours = ours["id"].as_str().unwrap().to_string();

        let bare = format!("customer={customer}&return_url=https://x/");
        let r = emu.route(&Method::POST, "/v1/billing_portal/sessions", &Form::parse(bare.as_bytes()), "http://emu");
        assert_eq!(r.0, StatusCode::BAD_REQUEST, "no default yet: {}", r.1);
        assert!(r.1["error"]["message"].as_str().unwrap().contains("save your customer portal settings"), "{}", r.1);

        let named = format!("{bare}&configuration={ours}");
        assert_eq!(call(&mut emu, Method::POST, "/v1/billing_portal/sessions", &named)["configuration"], ours.as_str());

        let default = emu.save_dashboard_portal_settings();
        assert_ne!(default, ours);
        assert_eq!(
            call(&mut emu, Method::POST, "/v1/billing_portal/sessions", &bare)["configuration"],
            default.as_str()
        );
        assert_eq!(call(&mut emu, Method::POST, "/v1/billing_portal/sessions", &named)["configuration"], ours.as_str());

        call(&mut emu, Method::POST, &format!("/v1/billing_portal/configurations/{ours}"), "active=false");
        let r = emu.route(&Method::POST, "/v1/billing_portal/sessions", &Form::parse(named.as_bytes()), "http://emu");
        assert_eq!((r.0, r.1["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("configuration")), "{}", r.1);
        let r = emu.route(
            &Method::POST,
            "/v1/billing_portal/sessions",
            &Form::parse(format!("{bare}&configuration=bpc_nope").as_bytes()),
            "http://emu",
        );
        assert_eq!(
            (r.0, r.1["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("resource_missing")),
            "{}",
            r.1
        );
    }

    #[test]
    fn a_trial_with_a_card_turns_active_with_its_first_charge_when_the_clock_passes_its_end() {
        let (mut emu, sub, _) = subscribed(7, true);
        assert_eq!(emu.subscriptions[&sub]["status"], "trialing");
        let session = emu.sessions.values().find(|s| s["subscription"] == sub.as_str()).unwrap();
        assert_eq!(session["payment_status"], "no_payment_required", "nothing was charged yet");
        let (paid, paid_sub, _) = subscribed(0, true);
        let session = paid.sessions.values().find(|s| s["subscription"] == paid_sub.as_str()).unwrap();
        assert_eq!(session["payment_status"], "paid");
        let first = emu.subscriptions[&sub]["latest_invoice"].as_str().unwrap().to_string();
        assert_eq!(emu.invoices[&first]["amount_due"], 0, "nothing charged for the trial");
        let n = emu.events.len();
        emu.advance(6 * 24 * 3600);
        assert_eq!(emu.subscriptions[&sub]["status"], "trialing", "not yet");
        emu.advance(2 * 24 * 3600);
        assert_eq!(emu.subscriptions[&sub]["status"], "active");
        let inv = emu.subscriptions[&sub]["latest_invoice"].as_str().unwrap().to_string();
        assert_eq!(emu.invoices[&inv]["amount_due"], 1000);
        assert_eq!(kinds(&emu, n), ["customer.subscription.updated", "invoice.paid"]);
    }

    #[test]
    fn a_trial_without_a_card_is_paused_at_its_end() {
        let (mut emu, sub, _) = subscribed(7, false);
        let n = emu.events.len();
        emu.advance(8 * 24 * 3600);
        assert_eq!(emu.subscriptions[&sub]["status"], "paused");
        assert_eq!(kinds(&emu, n), ["customer.subscription.paused", "customer.subscription.updated"]);
    }

    #[test]
    fn the_clock_renews_each_period_and_ends_a_subscription_set_to_cancel() {
        let (mut emu, sub, _) = subscribed(0, true);
        let n = emu.events.len();
        emu.advance(61 * 24 * 3600); // two periods of 30 days
        assert_eq!(kinds(&emu, n).iter().filter(|k| *k == "invoice.paid").count(), 2);
        call(&mut emu, Method::POST, &format!("/v1/subscriptions/{sub}"), "cancel_at_period_end=true");
        emu.advance(30 * 24 * 3600);
        assert_eq!(emu.subscriptions[&sub]["status"], "canceled");
        assert_eq!(emu.events.last().unwrap()["type"], "customer.subscription.deleted");
    }

    #[test]
    fn a_price_change_prorates_the_rest_of_the_period() {
        let (mut emu, sub, second) = subscribed(0, true);
        emu.advance(15 * 24 * 3600); // half of the 30-day period left
        let n = emu.events.len();
        let s = call(&mut emu, Method::POST, &format!("/v1/subscriptions/{sub}"), &format!("items[0][price]={second}"));
        assert_eq!(s["items"]["data"][0]["price"]["id"], second.as_str());
        assert_eq!(kinds(&emu, n), ["customer.subscription.updated", "invoice.paid"]);
        let inv = emu.subscriptions[&sub]["latest_invoice"].as_str().unwrap().to_string();
        assert_eq!(emu.invoices[&inv]["billing_reason"], "subscription_update");
        // (3000 − 1000) × ½ = 1000
        assert!((990..=1010).contains(&emu.invoices[&inv]["amount_due"].as_i64().unwrap()), "{}", emu.invoices[&inv]);
        // an unknown price is refused and changes nothing
        let r = emu.route(
            &Method::POST,
            &format!("/v1/subscriptions/{sub}"),
            &Form::parse(b"items[0][price]=price_nope"),
            "http://emu",
        );
        assert_eq!(r.0, StatusCode::NOT_FOUND);
    }
}
