//! Each user's budget on the routes that spend what every user shares: Stripe writes (Stripe
//! allows 100 per second in live mode, 25 in test mode, for the whole account) and API
//! Gateway control-plane calls (10 per second per account). One signed-in user must not be
//! able to spend them for everyone.

use super::Ctx;
use crate::domain::{Error, User};
use crate::ports::Budgets;

/// The routes with a per-user budget, each a bucket of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spending {
    /// `POST /checkout-sessions`: a Checkout Session (and an expired one) at Stripe.
    Checkout,
    /// `GET /create-billing-portal-by-user`: a portal session at Stripe.
    Portal,
    /// `POST /api-key`: a key created, attached, read (control plane).
    FreeKey,
    /// `POST /api-key/rotate`: ~14 control-plane calls.
    Rotation,
    /// `PUT /api-key/cap`: a GetUsage per generation of the key, an UpdateUsage or two.
    SpendCap,
}

impl Spending {
    pub fn as_str(self) -> &'static str {
        match self {
            Spending::Checkout => "checkout",
            Spending::Portal => "portal",
            Spending::FreeKey => "free-key",
            Spending::Rotation => "rotation",
            Spending::SpendCap => "spend-cap",
        }
    }
}

/// Spends one request of the user's budget for `route` (one conditional write, keyed by the
/// user's `sub`), or refuses with how long to wait. Called before the route's flow, so a
/// refused request writes nothing else and calls neither Stripe nor API Gateway.
pub async fn spend_budget<B: Budgets>(budgets: &B, ctx: Ctx<'_>, user: &User, route: Spending) -> Result<(), Error> {
    if ctx.settings.user_budget.interval.is_zero() {
        return Ok(()); // turned off: nothing written either
    }
    let bucket = format!("{}#{}", route.as_str(), user.id);
    match budgets.spend(&bucket, ctx.settings.user_budget, ctx.clock.now()).await? {
        None => Ok(()),
        Some(wait) => {
            // Measured from this request's clock reading, which a concurrent request may have
            // passed before spending: never more than one interval from now in truth.
            let ceil = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let seconds = ceil(wait).min(ceil(ctx.settings.user_budget.interval));
            tracing::info!(user = %user, route = route.as_str(), retry_after = seconds, "request budget spent");
            Err(Error::TooManyRequests(seconds.max(1)))
        }
    }
}
