use super::Ctx;
use crate::domain::{CustomerId, Error, User};
use crate::ports::{Budgets, Payments, UserDirectory};

/// Opens a Stripe Billing Portal session for the caller's own customer, read from the user
/// directory (never from the request).
///
/// Each call creates a portal session (a Stripe write), bounded by the caller's budget. A
/// recent session is not handed out again: its URL is a short-lived bearer credential to the
/// customer's billing (Stripe: "the short-lived URL of the session"), which paykey would then
/// have to store; double clicks within a minute get the same session through Stripe's
/// idempotency key instead.
pub async fn open_billing_portal<B, U, P>(
    budgets: &B,
    users: &U,
    payments: &P,
    ctx: Ctx<'_>,
    user: &User,
) -> Result<String, Error>
where
    B: Budgets,
    U: UserDirectory,
    P: Payments,
{
    // The name's holder must be the caller (`sub`): a deleted user's still-valid token names a
    // user name that may be someone else's now. The budget is spent beside that read.
    let ((), profile) = tokio::try_join!(super::spend_budget(budgets, ctx, user, super::Spending::Portal), async {
        Ok(users.get_user(&user.name).await?)
    })?;
    let profile = profile.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    let customer = profile.customer_id.ok_or(Error::NoCustomer)?;
    let url = portal_session(payments, ctx, &customer).await?;
    tracing::info!(user = %user, customer = %customer, "billing portal session opened");
    Ok(url)
}

/// A portal session for `customer` in paykey's configuration (never Stripe's default, which is
/// the Dashboard's and lacks paykey's plan switch), returning to the front end. Double clicks
/// within the same minute get the same session (Stripe's idempotency key).
pub(crate) async fn portal_session<P: Payments>(
    payments: &P,
    ctx: Ctx<'_>,
    customer: &CustomerId,
) -> Result<String, Error> {
    let configuration = ctx.settings.portal_configuration.as_deref().ok_or(Error::PortalNotConfigured)?;
    let minute = ctx.clock.now().timestamp() / 60;
    Ok(payments
        .create_portal(
            customer,
            configuration,
            &format!("{}/", ctx.settings.app_url),
            &format!("paykey-portal-{customer}-{minute}"),
        )
        .await?)
}
