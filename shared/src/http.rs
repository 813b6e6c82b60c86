//! API Gateway REST proxy events ↔ flows: caller identity from the Cognito authorizer claims,
//! path parameters, bodies, JSON / redirect responses with CORS, and the one mapping from
//! [`Error`] to an HTTP status.

use lambda_http::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, VARY,
};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::domain::{Error, User, UserId, UserName};

/// Largest JSON body accepted.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

/// The signed-in caller, from the claims API Gateway's Cognito authorizer put in
/// `requestContext.authorizer.claims`: `sub` (the immutable id every record is keyed on) and
/// `cognito:username` (for the directory's admin calls and display). Never from the path or
/// body.
pub fn caller(req: &Request) -> Result<User, Error> {
    let Some(ctx) = req.request_context_ref() else {
        return Err(Error::Unauthorized("no request context"));
    };
    #[allow(unreachable_patterns)]
    let claims = match ctx {
        RequestContext::ApiGatewayV1(c) => c.authorizer.fields.get("claims"),
        _ => None,
    };
    let Some(claims) = claims.and_then(|c| c.as_object()) else {
        return Err(Error::Unauthorized("no authorizer claims"));
    };
    let name = claims
        .get("cognito:username")
        .and_then(|v| v.as_str())
        .ok_or(Error::Unauthorized("no cognito:username claim"))?;
    let sub = claims.get("sub").and_then(|v| v.as_str()).ok_or(Error::Unauthorized("no sub claim"))?;
    Ok(User {
        id: UserId::parse(sub).map_err(|_| Error::Unauthorized("malformed sub claim"))?,
        name: UserName::parse(name).map_err(|_| Error::Unauthorized("malformed cognito:username claim"))?,
    })
}

/// The span a signed-in caller's work runs in: the flows' log lines then carry the Lambda
/// request id and the caller's `sub` (`span.requestId`, `span.userId`).
pub fn user_span(req: &Request, user: &User) -> tracing::Span {
    let request_id = req.lambda_context_ref().map(|c| c.request_id.clone()).unwrap_or_default();
    tracing::info_span!("caller", requestId = %request_id, userId = %user.id)
}

/// Another claim of the caller's ID token, as the Cognito authorizer passed it.
pub fn claim(req: &Request, name: &str) -> Option<String> {
    #[allow(unreachable_patterns)]
    let claims = match req.request_context_ref()? {
        RequestContext::ApiGatewayV1(c) => c.authorizer.fields.get("claims")?.as_object()?,
        _ => return None,
    };
    claims.get(name)?.as_str().filter(|v| !v.is_empty()).map(str::to_string)
}

/// The route's resource template as API Gateway matched it (`/account`, `/api-key`, …), else
/// the request path: for the functions that serve two routes.
pub fn resource(req: &Request) -> String {
    #[allow(unreachable_patterns)]
    let matched = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.resource_path.clone(),
        _ => None,
    };
    matched.unwrap_or_else(|| req.uri().path().to_string())
}

/// `https://{domainName}/{stage}` of the API the request came in on.
pub fn api_base_url(req: &Request) -> Option<String> {
    #[allow(unreachable_patterns)]
    match req.request_context_ref()? {
        RequestContext::ApiGatewayV1(c) => {
            let domain = c.domain_name.as_deref().filter(|d| !d.is_empty())?;
            let stage = c.stage.as_deref().filter(|s| !s.is_empty())?;
            Some(format!("https://{domain}/{stage}"))
        }
        _ => None,
    }
}

/// The request's `Origin` header (sent by browsers on cross-origin requests).
pub fn origin(req: &Request) -> Option<&str> {
    req.headers().get(lambda_http::http::header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// A path parameter as API Gateway passed it.
pub fn path_param(req: &Request, name: &str) -> Option<String> {
    req.path_parameters_ref().and_then(|p| p.first(name)).map(str::to_string)
}

/// A JSON object body of at most [`MAX_BODY_BYTES`].
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, Error> {
    let bytes: &[u8] = match req.body() {
        Body::Empty => return Err(Error::BadRequest("the request body is empty; send a JSON object".into())),
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => return Err(Error::BadRequest("unsupported body".into())),
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(Error::BadRequest(format!("the request body is larger than {MAX_BODY_BYTES} bytes")));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest("the request body is empty; send a JSON object".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::BadRequest("the request body must be a JSON object".into()));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::BadRequest(format!("the request body is not the expected JSON: {e}")))
}

fn base(status: u16, app_url: &str) -> lambda_http::http::response::Builder {
    Response::builder()
        .status(status)
        .header(ACCESS_CONTROL_ALLOW_ORIGIN, app_url)
        .header(ACCESS_CONTROL_ALLOW_CREDENTIALS, "true")
        .header(VARY, "Origin")
        .header(CACHE_CONTROL, "no-store")
}

fn finish(b: lambda_http::http::response::Builder, body: Body) -> Response<Body> {
    b.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// A JSON response with CORS for the front end's origin.
pub fn json<T: Serialize>(status: u16, body: &T, app_url: &str) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string());
    finish(base(status, app_url).header(CONTENT_TYPE, "application/json"), Body::Text(text))
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

/// The one mapping from a flow error to a response. Server-side failures are logged with
/// their cause; the client gets a short message.
pub fn error_response(err: &Error, app_url: &str) -> Response<Body> {
    let status = err.status();
    crate::telemetry::backend(err);
    if status >= 500 {
        tracing::error!(error = %err, code = err.code(), status, "request failed");
    } else {
        tracing::info!(error = %err, code = err.code(), status, "request refused");
    }
    let mut resp = json(status, &ErrorBody { error: err.code(), message: err.public_message() }, app_url);
    match err {
        Error::FulfilmentInProgress => {
            resp.headers_mut().insert(RETRY_AFTER, lambda_http::http::HeaderValue::from_static("2"));
        }
        Error::TooManyRequests(seconds) => {
            resp.headers_mut().insert(RETRY_AFTER, lambda_http::http::HeaderValue::from(*seconds));
        }
        _ => {}
    }
    resp
}

/// 302 to `location`.
pub fn redirect(location: &str, app_url: &str) -> Response<Body> {
    finish(base(302, app_url).header(LOCATION, location), Body::Empty)
}

/// Answer to a CORS preflight.
pub fn preflight(app_url: &str, methods: &str) -> Response<Body> {
    finish(
        base(204, app_url)
            .header(ACCESS_CONTROL_ALLOW_METHODS, methods)
            .header(ACCESS_CONTROL_ALLOW_HEADERS, "Authorization, Content-Type")
            .header(ACCESS_CONTROL_MAX_AGE, "7200"),
        Body::Empty,
    )
}
