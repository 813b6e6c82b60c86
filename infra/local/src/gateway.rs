//! An API Gateway REST API on loopback: each HTTP request becomes the REST proxy event API
//! Gateway would send (Cognito authorizer claims included, after verifying the bearer ID
//! token as the authorizer does) and is answered by the same handler code as the Lambdas.

use std::collections::BTreeMap;

use axum::body::{Body as AxumBody, Bytes};
use axum::http::{HeaderMap, Method, Response as HttpResponse, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The functions behind the routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    CreateCheckoutSession,
    CreateApiKey,
    CreateBillingPortal,
    GetAccount,
    StripeWebhook,
}

/// (method, resource, Cognito authorizer?, function): the routes of template.yaml.
pub const ROUTES: &[(&str, &str, bool, Function)] = &[
    ("POST", "/checkout-sessions", true, Function::CreateCheckoutSession),
    ("GET", "/create-api-key/{session_id}/{one_time_key}", false, Function::CreateApiKey),
    ("GET", "/create-billing-portal-by-user", true, Function::CreateBillingPortal),
    ("GET", "/account", true, Function::GetAccount),
    ("POST", "/api-key", true, Function::GetAccount),
    ("POST", "/api-key/rotate", true, Function::GetAccount),
    ("PUT", "/api-key/cap", true, Function::GetAccount),
    ("GET", "/plans", false, Function::CreateCheckoutSession),
    ("POST", "/stripe/webhook", false, Function::StripeWebhook),
];

/// paykey's HTTP API as OpenAPI 3.1 (`infra/openapi/openapi.json`): served by the local stack
/// at `/openapi.json`, with the local server first.
pub const OPENAPI: &str = include_str!("../../openapi/openapi.json");

/// The document as this stack answers it: `servers` naming its API (`{base}/api`) only, and
/// `lookup_key` narrowed to the lookup keys its catalog sells.
pub fn openapi_for(base: &str, lookup_keys: &[String]) -> Value {
    let mut doc: Value = serde_json::from_str(OPENAPI).unwrap_or_else(|_| json!({}));
    doc["servers"] = json!([{"url": format!("{base}/api"), "description": "this local stack"}]);
    if !lookup_keys.is_empty() {
        doc["components"]["schemas"]["CheckoutRequest"]["properties"]["lookup_key"]["enum"] = json!(lookup_keys);
    }
    doc
}

/// The matched route: function, resource template, path parameters, whether it needs auth.
pub struct Matched {
    pub function: Function,
    pub resource: &'static str,
    pub params: BTreeMap<String, String>,
    pub auth: bool,
}

/// Finds the route for `method path`; OPTIONS matches the path of any route a browser calls (CORS preflight, no auth).
pub fn route(method: &Method, path: &str) -> Option<Matched> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    for (m, resource, auth, function) in ROUTES {
        let tpl: Vec<&str> = resource.trim_matches('/').split('/').collect();
        if tpl.len() != segs.len() {
            continue;
        }
        let mut params = BTreeMap::new();
        let ok = tpl.iter().zip(&segs).all(|(t, s)| {
            if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                if s.is_empty() {
                    return false;
                }
                params.insert(name.to_string(), percent_decode(s));
                true
            } else {
                t == s
            }
        });
        // OPTIONS only where a browser calls (template.yaml has no preflight on the webhook or
        // the success redirect).
        let preflight =
            method == Method::OPTIONS && !matches!(function, Function::StripeWebhook | Function::CreateApiKey);
        if ok && (method.as_str() == *m || preflight) {
            return Some(Matched { function: *function, resource, params, auth: *auth && method != Method::OPTIONS });
        }
    }
    None
}

/// API Gateway hands the functions percent-decoded path and query parameters.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The REST proxy event for one request.
#[allow(clippy::too_many_arguments)]
pub fn event(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    matched: &Matched,
    claims: Option<Map<String, Value>>,
    host: &str,
) -> Value {
    let mut single = Map::new();
    let mut multi: Map<String, Value> = Map::new();
    for (k, v) in headers {
        let v = v.to_str().unwrap_or_default().to_string();
        single.insert(k.as_str().to_string(), json!(v));
        if let Some(a) = multi.entry(k.as_str().to_string()).or_insert_with(|| json!([])).as_array_mut() {
            a.push(json!(v));
        }
    }
    let (qs, mqs) = match query.filter(|q| !q.is_empty()) {
        None => (Value::Null, Value::Null),
        Some(q) => {
            let mut one = Map::new();
            let mut many: Map<String, Value> = Map::new();
            for pair in q.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let (k, v) = (percent_decode(k), percent_decode(v));
                one.insert(k.clone(), json!(v));
                if let Some(a) = many.entry(k).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(json!(v));
                }
            }
            (Value::Object(one), Value::Object(many))
        }
    };
    let (body, b64) = if body.is_empty() {
        (Value::Null, false)
    } else {
        match std::str::from_utf8(body) {
            Ok(t) => (json!(t), false),
            Err(_) => (json!(STANDARD.encode(body)), true),
        }
    };
    let mut ctx = json!({
        "resourceId": "local", "resourcePath": matched.resource, "httpMethod": method.as_str(),
        "extendedRequestId": uuid::Uuid::new_v4().simple().to_string(), "path": format!("/local{path}"),
        "accountId": "000000000000", "protocol": "HTTP/1.1", "stage": "local", "domainPrefix": "127",
        "requestTimeEpoch": chrono::Utc::now().timestamp_millis(), "requestId": uuid::Uuid::new_v4().to_string(),
        "identity": {"sourceIp": "127.0.0.1", "userAgent": headers.get("user-agent").and_then(|v| v.to_str().ok())},
        "domainName": host, "apiId": "local",
    });
    if let Some(c) = claims {
        ctx["authorizer"] = json!({"claims": c});
    }
    let params = if matched.params.is_empty() { Value::Null } else { json!(matched.params) };
    json!({
        "resource": matched.resource, "path": path, "httpMethod": method.as_str(),
        "headers": single, "multiValueHeaders": multi,
        "queryStringParameters": qs, "multiValueQueryStringParameters": mqs,
        "pathParameters": params, "stageVariables": null, "requestContext": ctx,
        "body": body, "isBase64Encoded": b64,
    })
}

/// A handler's response, as API Gateway would send it.
pub fn into_http(resp: lambda_http::Response<lambda_http::Body>) -> HttpResponse<AxumBody> {
    let (parts, body) = resp.into_parts();
    let bytes: Vec<u8> = match body {
        lambda_http::Body::Empty => Vec::new(),
        lambda_http::Body::Text(t) => t.into_bytes(),
        lambda_http::Body::Binary(b) => b,
        _ => Vec::new(),
    };
    let mut out = HttpResponse::new(AxumBody::from(bytes));
    *out.status_mut() = parts.status;
    *out.headers_mut() = parts.headers;
    out
}

/// API Gateway's own answers: unknown route, missing or refused token.
pub fn gateway_error(status: StatusCode, message: &str) -> HttpResponse<AxumBody> {
    let mut r = HttpResponse::new(AxumBody::from(json!({ "message": message }).to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    r.headers_mut().insert(
        "x-amzn-errortype",
        if status == StatusCode::UNAUTHORIZED {
            "UnauthorizedException"
        } else {
            "MissingAuthenticationTokenException"
        }
        .parse()
        .expect("header"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_templates_and_decode_path_parameters() {
        let m = route(&Method::GET, "/create-api-key/cs_test_1/0f8e%2D1").unwrap();
        assert_eq!(m.function, Function::CreateApiKey);
        assert_eq!(m.params["session_id"], "cs_test_1");
        assert_eq!(m.params["one_time_key"], "0f8e-1");
        // an escape at the very end is decoded too (the hand-written decoder missed it)
        assert_eq!(route(&Method::GET, "/create-api-key/cs_test_1/ab%2D").unwrap().params["one_time_key"], "ab-");
        assert!(!m.auth);
        assert!(route(&Method::POST, "/checkout-sessions").unwrap().auth);
        assert!(!route(&Method::OPTIONS, "/checkout-sessions").unwrap().auth, "preflight needs no token");
        assert!(route(&Method::GET, "/checkout-sessions").is_none());
        assert!(route(&Method::GET, "/create-api-key/only-one").is_none());
        assert!(route(&Method::GET, "/nothing").is_none());
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_gateways_routes_with_their_auth() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let auth = op.get("security").and_then(Value::as_array).is_some_and(|s| !s.is_empty());
                documented.insert((method.to_uppercase(), path.clone(), auth));
            }
        }
        let served: std::collections::BTreeSet<_> =
            ROUTES.iter().map(|(m, r, auth, _)| (m.to_string(), r.to_string(), *auth)).collect();
        assert_eq!(documented, served);
    }

    /// Each code a route documents is answered with the status it is documented under, and
    /// every code paykey answers is documented somewhere.
    #[test]
    fn every_documented_error_code_has_the_status_paykey_answers_it_with() {
        use paykey::domain::{BackendError, Error};
        let all = [
            Error::Unauthorized("x"),
            Error::BadRequest("x".into()),
            Error::LookupKeyNotAllowed("x".into()),
            Error::PriceNotFound("x".into()),
            Error::UserNotFound,
            Error::UserGone,
            Error::AlreadySubscribed("PRO".into()),
            Error::AlreadySubscribed("BUSINESS".into()),
            Error::NoFreeTier,
            Error::NoKey,
            Error::RotationLimited(3),
            Error::TooManyRequests(10),
            Error::TierWithoutUsagePlan("FREE".into()),
            Error::NoCustomer,
            Error::BadSignature("x".into()),
            Error::FulfilmentInProgress,
            Error::Suspended,
            Error::NotMetered("FREE".into()),
            Error::Backend(BackendError::new("dynamodb", "GetItem", "x")),
        ];
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                for (status, resp) in op["responses"].as_object().unwrap() {
                    let schema = &resp["content"]["application/json"]["schema"];
                    for c in schema["allOf"][1]["properties"]["error"]["enum"].as_array().into_iter().flatten() {
                        let c = c.as_str().unwrap();
                        let answered = all.iter().find(|e| e.code() == c).map(|e| e.status().to_string());
                        assert_eq!(answered.as_deref(), Some(status.as_str()), "{method} {path}: {c} under {status}");
                        seen.insert(c);
                    }
                }
            }
        }
        for e in all.iter().filter(|e| e.code() != "unauthorized") {
            assert!(seen.contains(e.code()), "{} is answered by paykey but documented nowhere", e.code());
        }
    }
}
