use thiserror::Error;

/// A backend (DynamoDB, Cognito, API Gateway, Stripe) call failed for a reason the flow cannot
/// handle. The message never carries secrets: adapters build it from error codes and messages
/// of the service, not from request bodies or headers.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{service} {operation} failed: {message}")]
pub struct BackendError {
    pub service: &'static str,
    pub operation: &'static str,
    pub message: String,
}

impl BackendError {
    pub fn new(service: &'static str, operation: &'static str, message: impl Into<String>) -> Self {
        Self { service, operation, message: message.into() }
    }

    /// Whether the service said "slow down" (API Gateway's `TooManyRequestsException`, the
    /// AWS-wide `ThrottlingException`), so the same call may succeed a little later.
    pub fn is_throttled(&self) -> bool {
        ["TooManyRequestsException", "ThrottlingException", "Throttling:"].iter().any(|c| self.message.starts_with(c))
    }
}

/// Everything a flow can answer besides success. `crate::http::error_response` is the one
/// place that turns it into an HTTP status and a JSON body.
#[derive(Debug, Error)]
pub enum Error {
    #[error("the request is not signed in: {0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("lookup key {0:?} is not offered")]
    LookupKeyNotAllowed(String),
    #[error("no active price has lookup key {0:?}")]
    PriceNotFound(String),
    #[error("the signed-in user does not exist in the user pool")]
    UserNotFound,
    /// The user a record belongs to no longer holds their name (deleted; the name may be
    /// someone else's now): nothing is written for them.
    #[error("the checkout's user no longer exists")]
    UserGone,
    #[error("the user is already on the {0} plan")]
    AlreadySubscribed(String),
    #[error("this deployment has no free tier with a key; subscribe to a paid plan")]
    NoFreeTier,
    #[error("the caller has no working API key to rotate")]
    NoKey,
    #[error("too many key rotations: {0} in the last 24 hours; try again later")]
    RotationLimited(u32),
    /// The caller's request budget for this action is spent (seconds until the next request).
    #[error("too many requests from this account for this action; retry in {0} s")]
    TooManyRequests(u64),
    /// The catalog names a paid tier without a usage plan (a configuration error).
    #[error("tier {0} names no usage plan")]
    TierWithoutUsagePlan(String),
    #[error("the billing portal is not set up on this deployment (no portal configuration)")]
    PortalNotConfigured,
    #[error("the user has no Stripe customer yet: subscribe first")]
    NoCustomer,
    #[error("the Stripe-Signature header is missing or does not match the body: {0}")]
    BadSignature(String),
    #[error("another request is updating this account: retry in a few seconds")]
    FulfilmentInProgress,
    /// An operator suspended the account (`paykey-admin suspend`).
    #[error("this account is suspended; contact support")]
    Suspended,
    /// A period's draft invoice arrived before its last day's usage settled: sent as it stands,
    /// and answered 503 so that Stripe delivers the event again (and holds the draft: Stripe
    /// finalizes an invoice an hour after a successful answer to its `invoice.created`, or
    /// after 72 hours of failed ones).
    #[error("the closing period's last day ({0}) has not settled yet; deliver again later")]
    UsageNotSettled(chrono::NaiveDate),
    /// A metered tier's Stripe price does not say what the catalog says (included amount, one
    /// rate): an operator error; nothing is sold.
    #[error("the price {0:?} does not match the catalog's metered tier (included calls, then one rate)")]
    PriceMismatch(String),
    /// A spend cap asked for on a tier that bills no usage (its quota is a hard limit).
    #[error("the {0} plan has no usage-based billing: its quota is fixed, there is no spend cap to set")]
    NotMetered(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::Unauthorized(_) => 401,
            Error::BadRequest(_) => 400,
            Error::LookupKeyNotAllowed(_) => 400,
            Error::PriceNotFound(_) => 404,
            Error::UserNotFound => 404,
            Error::UserGone => 410,
            Error::AlreadySubscribed(_) => 409,
            Error::NoFreeTier => 404,
            Error::NoKey => 409,
            Error::RotationLimited(_) => 429,
            Error::TooManyRequests(_) => 429,
            Error::TierWithoutUsagePlan(_) | Error::PortalNotConfigured | Error::PriceMismatch(_) => 500,
            Error::NoCustomer => 409,
            Error::BadSignature(_) => 400,
            Error::FulfilmentInProgress => 503,
            Error::Suspended => 403,
            Error::UsageNotSettled(_) => 503,
            Error::NotMetered(_) => 409,
            Error::Backend(_) => 502,
        }
    }

    /// Stable machine-readable code, the `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthorized(_) => "unauthorized",
            Error::BadRequest(_) => "bad_request",
            Error::LookupKeyNotAllowed(_) => "lookup_key_not_allowed",
            Error::PriceNotFound(_) => "price_not_found",
            Error::UserNotFound => "user_not_found",
            Error::UserGone => "user_gone",
            // The code of the single-tier version, kept for its front ends.
            Error::AlreadySubscribed(plan) if plan == "PRO" => "already_pro",
            Error::AlreadySubscribed(_) => "already_subscribed",
            Error::NoFreeTier => "no_free_tier",
            Error::NoKey => "no_key",
            Error::RotationLimited(_) => "rotation_limited",
            Error::TooManyRequests(_) => "too_many_requests",
            Error::TierWithoutUsagePlan(_) | Error::PortalNotConfigured | Error::PriceMismatch(_) => "misconfigured",
            Error::NoCustomer => "no_customer",
            Error::BadSignature(_) => "bad_signature",
            Error::FulfilmentInProgress => "fulfilment_in_progress",
            Error::Suspended => "account_suspended",
            Error::UsageNotSettled(_) => "usage_not_settled",
            Error::NotMetered(_) => "not_metered",
            Error::Backend(_) => "backend_unavailable",
        }
    }

    /// What the client is told. Backend failures are logged in full at the edge and answered
    /// with a short message only.
    pub fn public_message(&self) -> String {
        match self {
            Error::Backend(_) => "a backend service failed; try again later".to_string(),
            other => other.to_string(),
        }
    }
}
