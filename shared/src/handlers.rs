//! The four upgrade-path handlers: one request in, one response out, every expected failure
//! an `Ok` response through [`http::error_response`].

use std::convert::Infallible;
use std::sync::Arc;

use lambda_http::http::Method;
use lambda_http::{Body, Request, Response};
use serde::Serialize;

use crate::domain::{Error, OneTimeKey, SessionId};
use crate::flows::{self, CheckoutRequest, Completion, Ctx, EventOutcome, Settings};
use crate::ports::{
    Accounts, Budgets, Checkouts, Clock, Ids, KeyRegistry, OpenCheckouts, Payments, ProcessedEvents, UserDirectory,
};
use crate::{http, telemetry};
use tracing::Instrument;

/// Ports and settings of one function. Ports a function does not use are `()`.
pub struct App<S = (), K = (), U = (), P = ()> {
    pub store: S,
    pub keys: K,
    pub users: U,
    pub payments: P,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn Ids>,
    pub settings: Settings,
}

impl<S, K, U, P> App<S, K, U, P> {
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx { clock: self.clock.as_ref(), ids: self.ids.as_ref(), settings: &self.settings }
    }
}

type HandlerResult = Result<Response<Body>, Infallible>;

/// `POST /checkout-sessions` `{"lookup_key": "…"}` → `{"url": "…"}`.
pub async fn create_checkout_session<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    S: Checkouts + Accounts + OpenCheckouts + Budgets,
    U: UserDirectory,
    P: Payments,
{
    let origin = app.settings.cors_origin(http::origin(&req));
    if req.method() == Method::OPTIONS {
        return Ok(http::preflight(origin, "POST, OPTIONS"));
    }
    let result = async {
        if req.method() != Method::POST {
            return Err(Error::BadRequest(format!("method {} is not allowed; use POST", req.method())));
        }
        let user = http::caller(&req)?;
        let body: CheckoutRequest = http::json_body(&req)?;
        // Stripe's success redirect comes back to this API: its configured URL, or the URL
        // this request came in on (API Gateway's domain and stage).
        let derived;
        let ctx = if app.settings.api_url.is_empty() {
            let api_url = http::api_base_url(&req)
                .ok_or_else(|| Error::BadRequest("cannot tell this API's URL; set API_URL".into()))?;
            derived = Settings { api_url, ..app.settings.clone() };
            Ctx { settings: &derived, ..app.ctx() }
        } else {
            app.ctx()
        };
        flows::start_checkout(&app.users, &app.payments, &app.store, ctx, &user, body)
            .instrument(http::user_span(&req, &user))
            .await
    }
    .await;
    Ok(match result {
        Ok(started) => http::json(200, &started, origin),
        Err(e) => http::error_response(&e, origin),
    })
}

/// `GET /create-api-key/{session_id}/{one_time_key}`: Stripe's success redirect. 302 to the
/// thanks page once the key is issued (also on a refresh), to the cancel page when the session
/// is unknown, unpaid or the key does not match; nothing is written in those cases.
pub async fn create_api_key<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    S: Checkouts + Accounts,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments,
{
    let s = &app.settings;
    let session_id = http::path_param(&req, "session_id").and_then(|v| SessionId::parse(&v).ok());
    let one_time_key = http::path_param(&req, "one_time_key").and_then(|v| OneTimeKey::parse(&v).ok());
    let (Some(session_id), Some(one_time_key)) = (session_id, one_time_key) else {
        tracing::info!("verification with malformed path parameters");
        return Ok(http::redirect(&s.cancel_url(), &s.app_url));
    };
    let started = std::time::Instant::now();
    let result = flows::complete_checkout(
        &app.store,
        &app.keys,
        &app.users,
        &app.payments,
        app.ctx(),
        &session_id,
        Some(&one_time_key),
    )
    .await;
    let outcome = match &result {
        Ok(Completion::Issued { .. }) => "issued",
        Ok(Completion::AlreadyFulfilled) => "already_fulfilled",
        Ok(Completion::Duplicate { .. }) => "duplicate_refunded",
        Ok(Completion::Pending) => "pending",
        // the page says pending too; the webhook finishes it
        Err(_) => "error",
        Ok(Completion::NotGranted { .. }) => "not_granted",
        Ok(Completion::Rejected(_)) => "refused",
    };
    telemetry::fulfilment(outcome, started.elapsed().as_secs_f64() * 1000.0);
    if outcome == "issued" {
        telemetry::keys("Issued");
    }
    if let Err(e) = &result {
        telemetry::backend(e);
    }
    // A browser follows this redirect: it always gets one, never a JSON error.
    Ok(match result {
        Ok(c) if c.is_success() => http::redirect(&s.thanks_url(), &s.app_url),
        Ok(Completion::Pending) => http::redirect(&s.pending_url(), &s.app_url),
        Ok(Completion::Rejected(why)) => {
            tracing::info!(session_id = %session_id, reason = ?why, "verification refused");
            http::redirect(&s.cancel_url(), &s.app_url)
        }
        Ok(other) => {
            tracing::info!(session_id = %session_id, outcome = ?other, "verification granted nothing");
            http::redirect(&s.cancel_url(), &s.app_url)
        }
        Err(e) => {
            // Busy (another attempt holds the work) or a backend failed: the thanks page,
            // marked pending, polls /account; the checkout.session.completed webhook finishes it.
            tracing::warn!(session_id = %session_id, error = %e, code = e.code(), "verification not finished; the webhook will");
            http::redirect(&s.pending_url(), &s.app_url)
        }
    })
}

#[derive(Serialize)]
struct PortalAnswer {
    status: &'static str,
    billing_portal_url: String,
}

/// `GET /create-billing-portal-by-user` → `{"status":"OK","billing_portal_url":"…"}` for the
/// caller's own Stripe customer.
pub async fn create_billing_portal<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    S: Budgets,
    U: UserDirectory,
    P: Payments,
{
    let origin = app.settings.cors_origin(http::origin(&req));
    if req.method() == Method::OPTIONS {
        return Ok(http::preflight(origin, "GET, OPTIONS"));
    }
    let result = async {
        let user = http::caller(&req)?;
        flows::open_billing_portal(&app.store, &app.users, &app.payments, app.ctx(), &user)
            .instrument(http::user_span(&req, &user))
            .await
    }
    .await;
    Ok(match result {
        Ok(url) => http::json(200, &PortalAnswer { status: "OK", billing_portal_url: url }, origin),
        Err(e) => http::error_response(&e, origin),
    })
}

/// The `get-account` function's routes: `GET /account` → plan, subscription status, trial end
/// and the caller's API key; `POST /api-key` → the caller's free-tier key (created on the
/// first call, the same key after; 404 `no_free_tier` when the catalog has none with keys);
/// `POST /api-key/rotate` → a new key; `PUT /api-key/cap` → the caller's spend cap on a metered
/// tier.
pub async fn get_account<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    S: Accounts + Budgets,
    K: KeyRegistry,
    U: UserDirectory,
{
    let origin = app.settings.cors_origin(http::origin(&req));
    let resource = http::resource(&req);
    let resource = resource.trim_end_matches('/');
    let free_key = resource.ends_with("/api-key");
    let rotate = resource.ends_with("/api-key/rotate");
    let cap = resource.ends_with("/api-key/cap");
    if req.method() == Method::OPTIONS {
        let allowed = match () {
            _ if cap => "PUT, OPTIONS",
            _ if free_key || rotate => "POST, OPTIONS",
            _ => "GET, OPTIONS",
        };
        return Ok(http::preflight(origin, allowed));
    }
    if cap {
        let result = async {
            if req.method() != Method::PUT {
                return Err(Error::BadRequest(format!("method {} is not allowed; use PUT", req.method())));
            }
            let user = http::caller(&req)?;
            let body: flows::CapRequest = http::json_body(&req)?;
            flows::set_spend_cap(&app.store, &app.keys, app.ctx(), &user, body)
                .instrument(http::user_span(&req, &user))
                .await
        }
        .await;
        return Ok(match result {
            Ok(r) => http::json(200, &r, origin),
            Err(e) => http::error_response(&e, origin),
        });
    }
    if rotate {
        let result = async {
            if req.method() != Method::POST {
                return Err(Error::BadRequest(format!("method {} is not allowed; use POST", req.method())));
            }
            let user = http::caller(&req)?;
            // An empty body is a rotation without grace.
            let body: flows::RotateRequest = match req.body() {
                Body::Empty => flows::RotateRequest::default(),
                Body::Text(t) if t.trim().is_empty() => flows::RotateRequest::default(),
                _ => http::json_body(&req)?,
            };
            flows::rotate_key(&app.store, &app.keys, app.ctx(), &user, body)
                .instrument(http::user_span(&req, &user))
                .await
        }
        .await;
        return Ok(match result {
            Ok(r) => {
                telemetry::keys("Rotated");
                http::json(200, &r, origin)
            }
            Err(e) => http::error_response(&e, origin),
        });
    }
    if free_key {
        let result = async {
            if req.method() != Method::POST {
                return Err(Error::BadRequest(format!("method {} is not allowed; use POST", req.method())));
            }
            let user = http::caller(&req)?;
            flows::issue_free_key(&app.store, &app.keys, &app.users, app.ctx(), &user)
                .instrument(http::user_span(&req, &user))
                .await
        }
        .await;
        return Ok(match result {
            Ok(key) => {
                if key.created {
                    telemetry::keys("Issued");
                }
                http::json(if key.created { 201 } else { 200 }, &key, origin)
            }
            Err(e) => http::error_response(&e, origin),
        });
    }
    let result = async {
        let user = http::caller(&req)?;
        flows::get_account(&app.store, &app.keys, &app.users, app.ctx(), &user)
            .instrument(http::user_span(&req, &user))
            .await
    }
    .await;
    Ok(match result {
        Ok(view) => http::json(200, &view, origin),
        Err(e) => http::error_response(&e, origin),
    })
}

/// `GET /plans` (public): the catalog with prices, for a pricing table. Cacheable for five
/// minutes by browsers and CDNs.
pub async fn list_plans<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    P: Payments,
{
    let origin = app.settings.cors_origin(http::origin(&req));
    if req.method() == Method::OPTIONS {
        return Ok(http::preflight(origin, "GET, OPTIONS"));
    }
    if req.method() != Method::GET {
        let e = Error::BadRequest(format!("method {} is not allowed; use GET", req.method()));
        return Ok(http::error_response(&e, origin));
    }
    Ok(match flows::list_plans(&app.payments, &app.settings).await {
        Ok(view) => {
            let mut resp = http::json(200, &view, origin);
            resp.headers_mut().insert(
                lambda_http::http::header::CACHE_CONTROL,
                lambda_http::http::HeaderValue::from_static("public, max-age=300"),
            );
            resp
        }
        Err(e) => http::error_response(&e, origin),
    })
}

/// The `create-checkout-session` function's routes: `POST /checkout-sessions` and the public
/// `GET /plans` (both need the Stripe client and its price cache).
pub async fn checkout_routes<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    S: Checkouts + Accounts + OpenCheckouts + Budgets,
    U: UserDirectory,
    P: Payments,
{
    if http::resource(&req).trim_end_matches('/').ends_with("/plans") {
        list_plans(app, req).await
    } else {
        create_checkout_session(app, req).await
    }
}

#[derive(Serialize)]
struct WebhookAnswer {
    received: bool,
    outcome: String,
}

/// `POST /stripe/webhook`: verified on the raw body; 400 on a missing or bad signature or a
/// stale timestamp (nothing done); 200 once acted on, for duplicates and for ignored events;
/// 5xx when acting failed, so Stripe retries.
pub async fn stripe_webhook<S, K, U, P>(app: &App<S, K, U, P>, req: Request) -> HandlerResult
where
    S: Checkouts + Accounts + ProcessedEvents + crate::ports::metering::UsageCursor,
    K: KeyRegistry,
    U: UserDirectory,
    P: Payments + crate::ports::metering::UsageMeter,
{
    let origin = app.settings.cors_origin(http::origin(&req));
    let mut event_type = String::from("unknown");
    let result = async {
        let signature = req
            .headers()
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::BadSignature("the Stripe-Signature header is missing".into()))?;
        let raw: &[u8] = match req.body() {
            Body::Text(t) => t.as_bytes(),
            Body::Binary(b) => b,
            _ => &[],
        };
        let payload = std::str::from_utf8(raw).map_err(|_| Error::BadSignature("the body is not UTF-8".into()))?;
        let now = app.clock.now().timestamp();
        // Any configured secret may have signed it (two while an endpoint is replaced).
        let mut verified = Err(Error::BadSignature("no webhook secret is configured".into()));
        for secret in &app.settings.webhook_secrets {
            verified = crate::adapters::stripe::verify_event(payload, signature, secret.expose(), now);
            if verified.is_ok() {
                break;
            }
        }
        match verified? {
            Some(event) => {
                event_type.clone_from(&event.kind);
                flows::handle_stripe_event(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), &event).await
            }
            None => {
                // Signed by Stripe, so answered 2xx (a 4xx would be retried for days and then
                // disable the endpoint); logged for the operator.
                tracing::warn!(bytes = payload.len(), "signed webhook body is not a readable Stripe event; ignored");
                Ok(EventOutcome::Ignored("signed body is not a readable Stripe event".into()))
            }
        }
    }
    .await;
    Ok(match result {
        Ok(outcome) => {
            let (metric, outcome) = match outcome {
                EventOutcome::Processed(s) => ("processed", format!("processed: {s}")),
                EventOutcome::Duplicate => ("duplicate", "duplicate".to_string()),
                EventOutcome::Ignored(s) => ("ignored", format!("ignored: {s}")),
            };
            telemetry::webhook(&event_type, metric);
            http::json(200, &WebhookAnswer { received: true, outcome }, origin)
        }
        Err(e) => {
            // A period's invoice before its last day's usage settled: asked to be delivered
            // again, not a failure (the failure alarm would page for every such period).
            let outcome = match &e {
                Error::UsageNotSettled(_) => "deferred",
                e if e.status() < 500 => "refused",
                _ => "failed",
            };
            telemetry::webhook(&event_type, outcome);
            http::error_response(&e, origin)
        }
    })
}
