use super::Ctx;
use crate::domain::{Error, User};
use crate::ports::{Payments, UserDirectory};

/// Opens a Stripe Billing Portal session for the caller's own customer, read from the user
/// directory (never from the request).
pub async fn open_billing_portal<U, P>(users: &U, payments: &P, ctx: Ctx<'_>, user: &User) -> Result<String, Error>
where
    U: UserDirectory,
    P: Payments,
{
    // The name's holder must be the caller (`sub`): a deleted user's still-valid token names a
    // user name that may be someone else's now.
    let profile = users.get_user(&user.name).await?.filter(|p| p.is(user)).ok_or(Error::UserNotFound)?;
    let customer = profile.customer_id.ok_or(Error::NoCustomer)?;
    // Double clicks within the same minute get the same portal session.
    let minute = ctx.clock.now().timestamp() / 60;
    let url = payments
        .create_portal(&customer, &format!("{}/", ctx.settings.app_url), &format!("paykey-portal-{customer}-{minute}"))
        .await?;
    tracing::info!(user = %user, customer = %customer, "billing portal session opened");
    Ok(url)
}
