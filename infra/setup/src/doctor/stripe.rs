//! The Stripe side of a stack: the key's mode, the webhook endpoint, the portal configuration
//! and each paid tier's price. Judgements are pure functions of what was read; [`read`] reads
//! it with the stack's own secret key.

use stripe::Client;
use stripe_billing::billing_portal_configuration::ListBillingPortalConfiguration;
use stripe_misc::webhook_endpoint::ListWebhookEndpoint;
use stripe_product::price::ListPrice;

use super::Check;

/// A webhook endpoint as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub enabled: bool,
    pub events: Vec<String>,
    pub api_version: Option<String>,
}

/// The portal configuration as read (`None` in [`Facts`]: Stripe has no such id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    pub id: String,
    pub active: bool,
    pub cancel_enabled: bool,
    /// The prices customers may switch between (empty: no switching).
    pub switch_prices: Vec<String>,
}

/// What was read from Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub live: bool,
    pub endpoints: Vec<Endpoint>,
    /// `Err`: the id the stack names, not found.
    pub portal: Result<Portal, String>,
    /// (lookup key, its active price id if any).
    pub prices: Vec<(String, Option<String>)>,
}

/// What the stack expects of Stripe.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub webhook_url: &'a str,
    pub events: Vec<&'a str>,
    pub api_version: &'a str,
    pub portal_configuration: &'a str,
    pub lookup_keys: Vec<&'a str>,
}

pub fn check(f: &Facts, want: &Expected<'_>) -> Vec<Check> {
    let mut out = vec![Check::pass(format!("the Stripe key works ({} mode)", if f.live { "live" } else { "test" }))];
    out.extend(check_webhook(&f.endpoints, want));
    out.extend(check_portal(&f.portal, want.portal_configuration, f.prices.len()));
    for (key, price) in &f.prices {
        match price {
            Some(p) => out.push(Check::pass(format!("tier price with lookup key {key} exists ({p})"))),
            None => out.push(Check::fail(
                format!("tier price with lookup key {key} exists"),
                format!("Stripe has no active recurring price with lookup key {key:?}: checkout answers 404 price_not_found"),
                "create it: paykey-setup --lookup-key <key> … (with the same key and mode as the stack's), or set the stack's lookup key parameter to an existing price's",
            )),
        }
    }
    out
}

fn check_webhook(endpoints: &[Endpoint], want: &Expected<'_>) -> Vec<Check> {
    let url = want.webhook_url;
    let title = format!("a Stripe webhook endpoint sends to {url}");
    let mine: Vec<&Endpoint> = endpoints.iter().filter(|e| e.url == url).collect();
    if mine.is_empty() {
        let others = endpoints.len();
        return vec![Check::fail(
            title,
            format!("none of the account's {others} endpoint(s) does: no plan follows a cancellation or a failed payment"),
            format!("paykey-setup --webhook-url {url}, then store the secret it prints in the stack's StripeWebhookSecretParameter and deploy with a new SecretsVersion"),
        )];
    }
    let enabled: Vec<&&Endpoint> = mine.iter().filter(|e| e.enabled).collect();
    let Some(e) = enabled.iter().find(|e| e.api_version.as_deref() == Some(want.api_version)).or(enabled.first())
    else {
        let ids: Vec<&str> = mine.iter().map(|e| e.id.as_str()).collect();
        return vec![Check::fail(
            format!("the webhook endpoint sending to {url} is enabled"),
            format!("{} disabled (Stripe disables an endpoint whose deliveries failed for days)", ids.join(", ")),
            format!(
                "enable it again (Dashboard → Developers → Webhooks, or: stripe webhook_endpoints update {} --disabled=false), then run paykey-resync --apply for what was missed",
                ids[0]
            ),
        )];
    };
    let mut out = vec![Check::pass(format!("webhook endpoint {} sends to {url} and is enabled", e.id))];
    let missing: Vec<&str> =
        want.events.iter().copied().filter(|w| !e.events.iter().any(|h| h == w || h == "*")).collect();
    if missing.is_empty() {
        out.push(Check::pass(format!("it sends the {} event types paykey acts on", want.events.len())));
    } else {
        out.push(Check::fail(
            format!("webhook endpoint {} sends the event types paykey acts on", e.id),
            format!("missing: {}", missing.join(", ")),
            format!("paykey-setup --webhook-url {url} (adds them to the endpoint)"),
        ));
    }
    if e.api_version.as_deref() != Some(want.api_version) {
        out.push(Check::warn(
            format!("webhook endpoint {} is pinned to API version {}", e.id, want.api_version),
            format!(
                "it sends {} (paykey reads only ids and types from events, so it works)",
                e.api_version.as_deref().unwrap_or("the account's default version")
            ),
            format!("paykey-setup --webhook-url {url} --repin-webhook, then --retire-webhook {}", e.id),
        ));
    }
    if enabled.len() > 1 {
        let ids: Vec<&str> = enabled.iter().map(|e| e.id.as_str()).collect();
        out.push(Check::warn(
            format!("one enabled webhook endpoint sends to {url}"),
            format!(
                "{} endpoints do ({}): each event arrives once per endpoint (paykey acts once per event id)",
                ids.len(),
                ids.join(", ")
            ),
            "retire the older one: paykey-setup --webhook-url <url> --retire-webhook <we_…>",
        ));
    }
    out
}

fn check_portal(portal: &Result<Portal, String>, id: &str, paid_tiers: usize) -> Vec<Check> {
    let title = format!("billing portal configuration {id} is active");
    match portal {
        Err(e) => vec![Check::fail(
            title,
            e.clone(),
            "run paykey-setup (it prints the configuration's bpc_… id) and deploy with PortalConfigurationId set to it",
        )],
        Ok(p) if !p.active => vec![Check::fail(
            title,
            "it is deactivated: every portal session fails",
            "run paykey-setup again (it reactivates paykey's configuration)",
        )],
        Ok(p) => {
            let mut out = vec![Check::pass(title)];
            if !p.cancel_enabled {
                out.push(Check::warn(
                    format!("customers can cancel in portal configuration {id}"),
                    "cancellation is off in it",
                    "run paykey-setup again (it turns cancellation on)",
                ));
            }
            if paid_tiers > 1 && p.switch_prices.len() < paid_tiers {
                out.push(Check::warn(
                    format!("customers can switch between the {paid_tiers} paid tiers in portal configuration {id}"),
                    format!("it offers {} price(s) to switch between", p.switch_prices.len()),
                    "run paykey-setup with every --tier (it sets the switch)",
                ));
            }
            out
        }
    }
}

fn describe(e: &stripe::StripeError) -> (Option<u16>, String) {
    match e {
        stripe::StripeError::Stripe(s, status) => {
            (Some(*status), format!("{status} {}", s.message.as_deref().unwrap_or("(no message)")))
        }
        other => (None, other.to_string()),
    }
}

/// Reads the facts with the stack's key. `Err((status, message))`: Stripe refused the key or a
/// read (403: a restricted key without that permission), or could not be reached.
pub async fn read(
    client: &Client,
    live: bool,
    portal_id: &str,
    lookup_keys: &[&str],
) -> Result<Facts, (Option<u16>, String)> {
    // Stripe allows 16 webhook endpoints per account: one page.
    let hooks = ListWebhookEndpoint::new().limit(100).send(client).await.map_err(|e| describe(&e))?;
    let endpoints = hooks
        .data
        .into_iter()
        .map(|e| Endpoint {
            id: e.id.to_string(),
            url: e.url,
            enabled: e.status == "enabled",
            events: e.enabled_events,
            api_version: e.api_version,
        })
        .collect();
    // Listed (the call paykey-setup makes), not retrieved by id: one call either way.
    let configs = ListBillingPortalConfiguration::new().limit(100).send(client).await.map_err(|e| describe(&e))?;
    let portal = match configs.data.iter().find(|c| c.id.as_str() == portal_id) {
        Some(c) => Ok(Portal {
            id: c.id.to_string(),
            active: c.active,
            cancel_enabled: c.features.subscription_cancel.enabled,
            switch_prices: c
                .features
                .subscription_update
                .products
                .iter()
                .flatten()
                .flat_map(|p| p.prices.iter().cloned())
                .collect(),
        }),
        None => Err(format!(
            "no portal configuration {portal_id} among the account's {}{} (a test-mode id in a live stack, or the other way round?)",
            configs.data.len(),
            if configs.has_more { " first" } else { "" }
        )),
    };
    let mut prices = Vec::new();
    for key in lookup_keys {
        let found = ListPrice::new()
            .lookup_keys(vec![key.to_string()])
            .active(true)
            .limit(1)
            .send(client)
            .await
            .map_err(|e| describe(&e))?;
        // a recurring price: Checkout sells a subscription
        prices.push((key.to_string(), found.data.iter().find(|p| p.recurring.is_some()).map(|p| p.id.to_string())));
    }
    Ok(Facts { live, endpoints, portal, prices })
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    const URL: &str = "https://x.execute-api.us-east-1.amazonaws.com/prod/stripe/webhook";

    fn want() -> Expected<'static> {
        Expected {
            webhook_url: URL,
            events: vec!["checkout.session.completed", "customer.subscription.deleted"],
            api_version: "2026-09-30.endive",
            portal_configuration: "bpc_1",
            lookup_keys: vec!["Pro"],
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint {
            id: "we_1".into(),
            url: URL.into(),
            enabled: true,
            events: vec!["checkout.session.completed".into(), "customer.subscription.deleted".into()],
            api_version: Some("2026-09-30.endive".into()),
        }
    }

    fn facts() -> Facts {
        Facts {
            live: false,
            endpoints: vec![endpoint()],
            portal: Ok(Portal { id: "bpc_1".into(), active: true, cancel_enabled: true, switch_prices: vec![] }),
            prices: vec![("Pro".into(), Some("price_1".into()))],
        }
    }

    fn statuses(f: &Facts) -> Vec<(Status, String)> {
        check(f, &want()).into_iter().map(|c| (c.status, c.title)).collect()
    }

    #[test]
    fn a_correct_account_passes() {
        let s = statuses(&facts());
        assert!(s.iter().all(|(st, _)| *st == Status::Pass), "{s:?}");
        assert!(s[0].1.contains("test mode"));
    }

    #[test]
    fn a_wildcard_endpoint_sends_every_event_and_an_unpinned_one_is_a_warning() {
        let mut f = facts();
        f.endpoints[0].events = vec!["*".into()];
        f.endpoints[0].api_version = Some("2024-06-20".into());
        let s = statuses(&f);
        assert_eq!(s.iter().filter(|(st, _)| *st == Status::Fail).count(), 0, "{s:?}");
        assert_eq!(s.iter().filter(|(st, _)| *st == Status::Warn).count(), 1, "{s:?}");
    }

    #[test]
    fn two_enabled_endpoints_are_a_warning_and_a_disabled_pinned_one_does_not_hide_an_enabled_one() {
        let mut f = facts();
        let mut old = endpoint();
        old.id = "we_0".into();
        old.enabled = false;
        f.endpoints.insert(0, old);
        assert!(statuses(&f).iter().all(|(st, _)| *st == Status::Pass));
        let mut twin = endpoint();
        twin.id = "we_2".into();
        f.endpoints.push(twin);
        let s = statuses(&f);
        assert_eq!(s.iter().filter(|(st, _)| *st == Status::Warn).count(), 1, "{s:?}");
    }

    #[test]
    fn a_deactivated_portal_configuration_fails() {
        let mut f = facts();
        f.portal.as_mut().unwrap().active = false;
        let s = statuses(&f);
        assert!(s.iter().any(|(st, t)| *st == Status::Fail && t.contains("bpc_1")), "{s:?}");
    }
}
