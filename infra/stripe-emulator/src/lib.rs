#![recursion_limit = "256"]
//! A local Stripe for paykey: speaks Stripe's REST wire format (form-encoded requests, JSON
//! objects, Stripe-shaped errors, `Idempotency-Key` replay, `expand[]`) for the calls paykey
//! makes, serves hosted checkout and billing portal pages, and delivers webhooks signed
//! exactly as Stripe signs them, retried with backoff on non-2xx answers.
//!
//! Test cards on the checkout page: `4242 4242 4242 4242` succeeds; `4000 0000 0000 0002` is
//! declined and leaves the session unpaid.

mod form;
pub mod front;
pub mod metering;
pub mod objects;
mod pages;
mod state;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub use form::Form;
pub use state::{Emu, Target, Undelivered};

/// How the emulator starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where events are delivered besides the webhook endpoints created through the API
    /// (the local stack points this at its own webhook route).
    pub webhook_url: Option<String>,
    /// The signing secret for `webhook_url` (`whsec_…`).
    pub webhook_secret: String,
    /// Delivery attempts per event and the first backoff delay (doubling).
    pub max_attempts: u32,
    pub retry_delay: Duration,
    /// `cancel` button of the portal: `immediately` (default) or `at_period_end`.
    pub portal_cancel_mode: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret: format!("whsec_{}", uuid::Uuid::new_v4().simple()),
            max_attempts: 5,
            retry_delay: Duration::from_millis(500),
            portal_cancel_mode: "immediately".into(),
        }
    }
}

/// A failure the emulator serves instead of (or after) acting on an API request, as Stripe
/// does under load or when an answer is lost on the way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    /// Answer `status` (429 rate limit, 500, …) without acting.
    Refuse(u16),
    /// Act (and keep the answer for the idempotency key), then answer 500 as if the answer
    /// was lost: a retry with the same key gets the kept answer.
    LoseAnswer,
}

/// One API request the emulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub(crate) struct Faults {
    /// (method, path prefix, fault), served in order, once each.
    pending: Vec<(String, String, ApiFault)>,
    log: Vec<ApiRequest>,
}

#[derive(Clone)]
pub struct Shared {
    pub(crate) emu: Arc<Mutex<Emu>>,
    pub(crate) config: Arc<Config>,
    /// The emulator's own base URL, for hosted page links.
    pub(crate) base: Arc<Mutex<String>>,
    pub(crate) faults: Arc<Mutex<Faults>>,
    /// Keys of the deliveries running now (never two tasks for one event and target).
    pub(crate) inflight: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl Shared {
    /// The next API request with this method whose path starts with `path_prefix` gets `fault`
    /// (queued faults are served one per request, in order).
    pub fn inject(&self, method: &str, path_prefix: &str, fault: ApiFault) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).pending.push((method.into(), path_prefix.into(), fault));
    }

    /// Every API request so far, with the status it got.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).log.clone()
    }

    fn take_fault(&self, method: &Method, path: &str) -> Option<ApiFault> {
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let i = f.pending.iter().position(|(m, p, _)| m == method.as_str() && path.starts_with(p.as_str()))?;
        Some(f.pending.remove(i).2)
    }

    fn log(&self, method: &Method, path: &str, idempotency_key: Option<&str>, status: u16) {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).log.push(ApiRequest {
            method: method.to_string(),
            path: path.to_string(),
            idempotency_key: idempotency_key.map(str::to_string),
            status,
        });
    }

    pub fn new(config: Config) -> Self {
        Self {
            emu: Arc::new(Mutex::new(Emu::default())),
            config: Arc::new(config),
            base: Arc::default(),
            faults: Arc::default(),
            inflight: Arc::default(),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Emu> {
        self.emu.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn base(&self) -> String {
        self.base.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_base(&self, base: &str) {
        *self.base.lock().unwrap_or_else(|p| p.into_inner()) = base.trim_end_matches('/').to_string();
    }

    /// Fans every new event out to the targets that want it (each kept as undelivered until
    /// it is answered 2xx or runs out of attempts) and starts their deliveries.
    pub(crate) fn flush_events(&self) {
        let started = {
            let mut emu = self.lock();
            let events = std::mem::take(&mut emu.outbox);
            let endpoints = emu.endpoint_ids();
            let mut started = Vec::new();
            for event in events {
                let kind = event["type"].as_str().unwrap_or_default().to_string();
                let mut targets: Vec<Target> = endpoints
                    .iter()
                    .filter(|(_, events)| events.iter().any(|e| e == "*" || *e == kind))
                    .map(|(id, _)| Target::Endpoint(id.clone()))
                    .collect();
                if self.config.webhook_url.is_some() {
                    targets.push(Target::Configured);
                }
                for target in targets {
                    let u = Undelivered { event: event.clone(), target };
                    emu.undelivered.insert(u.key(), u.clone());
                    started.push(u);
                }
            }
            started
        };
        for u in started {
            self.deliver(u);
        }
    }

    /// Starts the deliveries a restart interrupted (those [`Shared::import`] restored); events
    /// emitted but not yet fanned out are fanned out first.
    pub fn resume_deliveries(&self) {
        let owed: Vec<Undelivered> = self.lock().undelivered.values().cloned().collect();
        for u in owed {
            self.deliver(u);
        }
        self.flush_events();
    }

    fn deliver(&self, u: Undelivered) {
        let key = u.key();
        let resolved = self.lock().resolve(&u.target, self.config.webhook_url.as_deref(), &self.config.webhook_secret);
        let Some((url, secret)) = resolved else {
            // the endpoint was deleted or disabled meanwhile: Stripe stops delivering to it too
            self.lock().undelivered.remove(&key);
            return;
        };
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if !inflight.insert(key.clone()) {
                return;
            }
        }
        let d = webhooks::Delivery {
            url,
            secret,
            event_id: u.event["id"].as_str().unwrap_or_default().to_string(),
            event_type: u.event["type"].as_str().unwrap_or_default().to_string(),
            payload: serde_json::to_string_pretty(&u.event).unwrap_or_default(),
        };
        let (attempts, delay) = (self.config.max_attempts, self.config.retry_delay);
        let shared = self.clone();
        tokio::spawn(async move {
            let recorder = shared.clone();
            let clock = shared.clone();
            let now = move || chrono::Utc::now().timestamp() + clock.clock_offset();
            webhooks::deliver(d, attempts, delay, now, move |a| recorder.lock().deliveries.push(a)).await;
            shared.lock().undelivered.remove(&key);
            shared.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        });
    }

    /// Deliveries not finished (not yet answered 2xx, attempts left).
    pub fn undelivered(&self) -> usize {
        let emu = self.lock();
        emu.undelivered.len() + emu.outbox.len()
    }

    /// Runs one API call in-process (no HTTP, no auth), delivering its events: for seeding
    /// catalogs and driving scenarios in tests.
    pub fn call(&self, method: &str, path: &str, form: &str) -> (u16, Value) {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let base = self.base();
        let form = Form::parse(form.as_bytes());
        let (status, v) = {
            let mut emu = self.lock();
            let ApiResult(status, v) = emu.route(&method, path, &form, &base);
            let v = state::strip_private(v);
            let expand = form.list("expand");
            let v = if status.is_success() && !expand.is_empty() { emu.expand(v, &expand) } else { v };
            (status, v)
        };
        self.flush_events();
        (status.as_u16(), v)
    }

    /// Pays a checkout session as the hosted page does with card 4242: returns the success URL.
    pub fn pay(&self, session_id: &str) -> Option<String> {
        let url = self.lock().pay(session_id);
        self.flush_events();
        url
    }

    /// Saves the customer portal settings as the Dashboard does (see
    /// `Emu::save_dashboard_portal_settings`): returns the default configuration's id.
    pub fn save_dashboard_portal_settings(&self) -> String {
        self.lock().save_dashboard_portal_settings()
    }

    /// Moves a subscription to a status (`canceled` cancels at once), with Stripe's events.
    /// Moves the test clock forward (see `Emu::advance`) and delivers the events.
    pub fn advance(&self, seconds: i64) {
        self.lock().advance(seconds);
        self.flush_events();
    }

    /// Seconds the emulator's clock runs ahead of the wall clock (its test clock).
    pub fn clock_offset(&self) -> i64 {
        self.lock().clock_offset
    }

    /// A meter's aggregate for the customer over events timestamped in `start..end` (what a
    /// period's invoice bills), for tests.
    pub fn meter_usage(&self, meter: &str, customer: &str, start: i64, end: i64) -> u64 {
        self.lock().meter_usage(meter, customer, start, end)
    }

    pub fn set_subscription_status(&self, id: &str, status: &str) -> Option<Value> {
        let s = self.lock().set_subscription_status(id, status);
        self.flush_events();
        s
    }

    /// The emulator's objects, for persisting across restarts.
    pub fn export(&self) -> Value {
        self.lock().export()
    }

    /// [`Shared::export`] as JSON text, without copying the state first.
    pub fn export_json(&self) -> String {
        self.lock().export_json()
    }

    /// Restores what `export` saved.
    pub fn import(&self, v: &Value) -> Result<(), String> {
        self.lock().import(v)
    }

    /// Every event emitted so far.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// Every webhook delivery attempt so far.
    pub fn deliveries(&self) -> Vec<webhooks::Attempt> {
        self.lock().deliveries.clone()
    }

    /// The router: API under `/v1`, hosted pages, and `/_emulator` helpers for tests.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/{*path}", get(api).post(api).delete(api))
            .route("/checkout/{id}", get(pages::checkout_page).post(pages::checkout_pay))
            .route("/portal/{id}", get(pages::portal_page))
            .route("/portal/{id}/cancel/{sub}", post(pages::portal_cancel))
            .route("/portal/{id}/switch/{sub}", post(pages::portal_switch))
            .route("/_emulator/advance", post(emulator_advance))
            .route("/_emulator/events", get(emulator_events))
            .route("/_emulator/deliveries", get(emulator_deliveries))
            .route("/_emulator/undelivered", get(emulator_undelivered))
            .route("/_emulator/subscriptions/{id}", post(emulator_set_subscription))
            .route("/", get(|| async { Html("<h1>paykey Stripe emulator</h1><p>API under /v1.</p>") }))
            .with_state(self)
    }
}

/// A running emulator on a loopback port.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Shared,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn webhook_secret(&self) -> &str {
        &self.shared.config.webhook_secret
    }
}

/// Starts the emulator on `addr` (port 0 picks a free one).
pub async fn start(addr: SocketAddr, config: Config) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Shared::new(config);
    shared.set_base(&format!("http://{addr}"));
    let router = shared.clone().router();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "stripe emulator stopped");
        }
    });
    Ok(Running { addr, shared, task })
}

// ---------------------------------------------------------------------------------------------

/// An API answer: status and JSON body.
pub(crate) struct ApiResult(pub StatusCode, pub Value);

impl ApiResult {
    pub fn ok(v: Value) -> Self {
        Self(StatusCode::OK, v)
    }
    pub fn missing(kind: &str, id: &str, param: &str) -> Self {
        Self(
            StatusCode::NOT_FOUND,
            objects::error(
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such {kind}: '{id}'"),
                Some(param),
            ),
        )
    }
    /// An id named in a request parameter that does not exist: Stripe answers 400 with
    /// `resource_missing` (404 is for the object named in the URL path).
    pub fn missing_in_param(kind: &str, id: &str, param: &str) -> Self {
        Self(
            StatusCode::BAD_REQUEST,
            objects::error(
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such {kind}: '{id}'"),
                Some(param),
            ),
        )
    }
    pub fn invalid(message: &str, param: Option<&str>) -> Self {
        Self(
            StatusCode::BAD_REQUEST,
            objects::error("invalid_request_error", Some("parameter_invalid"), message, param),
        )
    }
    pub fn missing_param(param: &str) -> Self {
        Self(
            StatusCode::BAD_REQUEST,
            objects::error(
                "invalid_request_error",
                Some("parameter_missing"),
                &format!("Missing required param: {param}."),
                Some(param),
            ),
        )
    }
}

fn json_response(status: StatusCode, body: &Value, replayed: bool) -> Response {
    let mut r = (status, Json(body.clone())).into_response();
    r.headers_mut().insert(
        "request-id",
        format!("req_{}", &uuid::Uuid::new_v4().simple().to_string()[..14]).parse().expect("header"),
    );
    if replayed {
        r.headers_mut().insert("idempotent-replayed", "true".parse().expect("header"));
    }
    r
}

async fn api(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    // Authentication, as Stripe: a test secret or restricted key as a bearer token.
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = auth.strip_prefix("Bearer ").unwrap_or("");
    if !(key.starts_with("sk_test_") || key.starts_with("rk_test_")) {
        let shown = if key.len() > 12 { format!("{}…", &key[..12]) } else { "(none)".to_string() };
        return json_response(
            StatusCode::UNAUTHORIZED,
            &objects::error("invalid_request_error", None, &format!("Invalid API Key provided: {shown}"), None),
            false,
        );
    }
    let form = if method == Method::GET || method == Method::DELETE {
        Form::parse(query.as_deref().unwrap_or("").as_bytes())
    } else {
        Form::parse(&body)
    };
    // Idempotency-Key: the same key with the same request replays the first answer.
    let idem = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let fault = shared.take_fault(&method, &path);
    if let Some(ApiFault::Refuse(status)) = fault {
        shared.log(&method, &path, idem.as_deref(), status);
        let (kind, message) = match status {
            429 => ("rate_limit_error", "Too many requests hit the API too quickly (injected by the emulator)."),
            _ => ("api_error", "An error occurred on Stripe's end (injected by the emulator)."),
        };
        return json_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &objects::error(kind, None, message, None),
            false,
        );
    }
    // Stripe compares the request's parameters, not its bytes: the same form fields in another
    // order (async-stripe serialises metadata from a HashMap) are the same request.
    let fingerprint = {
        let text = String::from_utf8_lossy(&body);
        let mut fields: Vec<&str> = text.split('&').filter(|f| !f.is_empty()).collect();
        fields.sort_unstable();
        format!("{method} {path} {}", fields.join("&"))
    };
    // The key's check, the action and the saved answer happen under one lock: two concurrent
    // requests with one key act once (the second replays the first's answer; Stripe answers
    // it 409 while the first is still running, a window this emulator does not have).
    let mut emu = shared.lock();
    if let (Some(k), true) = (&idem, method == Method::POST) {
        if let Some((fp, status, saved)) = emu.idempotency.get(k).cloned() {
            drop(emu);
            if fp != fingerprint {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &objects::error(
                        "idempotency_error",
                        None,
                        &format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."),
                        None,
                    ),
                    false,
                );
            }
            shared.log(&method, &path, Some(k), status);
            capture(&method, &path, &form, status, &saved);
            return json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), &saved, true);
        }
    }
    let base = shared.base();
    let ApiResult(status, value) = emu.route(&method, &path, &form, &base);
    let value = state::strip_private(value);
    let value = match (status.is_success(), form.list("expand")) {
        (true, expand) if !expand.is_empty() => emu.expand(value, &expand),
        _ => value,
    };
    if let (Some(k), true) = (idem.clone(), method == Method::POST) {
        // Stripe saves the answer unless it was a 5xx (then the request may be retried).
        if status.as_u16() < 500 {
            emu.idempotency.insert(k, (fingerprint, status.as_u16(), value.clone()));
        }
    }
    drop(emu);
    shared.flush_events();
    capture(&method, &path, &form, status.as_u16(), &value);
    if fault == Some(ApiFault::LoseAnswer) {
        shared.log(&method, &path, idem.as_deref(), 500);
        return json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &objects::error("api_error", None, "The answer was lost on its way back (injected by the emulator).", None),
            false,
        );
    }
    shared.log(&method, &path, idem.as_deref(), status.as_u16());
    json_response(status, &value, false)
}

/// `STRIPE_EMULATOR_CAPTURE=<dir>`: every API request that reached the emulator over HTTP (the
/// calls of paykey's adapter, the functions and `paykey-setup`; not [`Shared::call`]) with its
/// parameters as Stripe reads them and the answer, one JSON line each in `<dir>/<pid>.jsonl`,
/// for the check against Stripe's published types (`infra/stripe-oracle`). Injected refusals
/// are left out: Stripe did not answer them.
fn capture(method: &Method, path: &str, form: &Form, status: u16, answer: &Value) {
    use std::io::Write;
    static FILE: std::sync::OnceLock<Option<Mutex<std::fs::File>>> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let dir = std::env::var_os("STRIPE_EMULATOR_CAPTURE").filter(|d| !d.is_empty())?;
        std::fs::create_dir_all(&dir).ok()?;
        let path = std::path::Path::new(&dir).join(format!("{}.jsonl", std::process::id()));
        std::fs::OpenOptions::new().create(true).append(true).open(path).ok().map(Mutex::new)
    });
    if let Some(f) = file {
        let line = json!({
            "method": method.as_str(), "path": path, "params": form.to_json(), "status": status, "response": answer,
        });
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(f, "{line}") {
            tracing::warn!(error = %e, "could not write the request capture");
        }
    }
}

async fn emulator_events(State(shared): State<Shared>) -> Json<Value> {
    Json(Value::Array(shared.lock().events.clone()))
}

async fn emulator_deliveries(State(shared): State<Shared>) -> Json<Value> {
    Json(Value::Array(shared.lock().deliveries.iter().map(|a| a.to_json()).collect()))
}

/// Test helper: how many webhook deliveries are not finished (`{"undelivered": n}`): 0 when
/// every event so far was answered (or ran out of attempts).
async fn emulator_undelivered(State(shared): State<Shared>) -> Json<Value> {
    Json(json!({ "undelivered": shared.undelivered() }))
}

/// Test helper: moves a subscription to another status as a renewal would
/// (`status=past_due|unpaid|active|canceled`), with the events Stripe sends for it.
async fn emulator_set_subscription(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let Some(status) = form.get("status") else {
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": "status is required"}), false);
    };
    let result = shared.lock().set_subscription_status(&id, status);
    shared.flush_events();
    match result {
        Some(sub) => json_response(StatusCode::OK, &sub, false),
        None => json_response(StatusCode::NOT_FOUND, &json!({"error": format!("no subscription {id}")}), false),
    }
}

/// Test clock: `seconds=N` moves the emulator's time forward and runs what Stripe would have
/// done meanwhile (trial ends, renewals, cancellations at period end), with their events.
async fn emulator_advance(State(shared): State<Shared>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let Some(seconds) = form.get("seconds").and_then(|s| s.parse::<i64>().ok()).filter(|s| *s >= 0) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "seconds (a whole number ≥ 0) is required"}),
            false,
        );
    };
    let now = {
        let mut emu = shared.lock();
        emu.advance(seconds);
        emu.now()
    };
    shared.flush_events();
    json_response(StatusCode::OK, &json!({"now": now}), false)
}

pub(crate) fn html_page(status: StatusCode, body: String) -> Response {
    (status, Html(body)).into_response()
}

pub(crate) fn see_other(url: &str) -> Response {
    Redirect::to(url).into_response()
}
