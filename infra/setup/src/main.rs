//! `paykey-setup`: create or update paykey's Stripe catalog.
//!
//! ```text
//! STRIPE_API_KEY=sk_test_… paykey-setup [--webhook-url URL] [--return-url URL]
//!     [--product-name "FMMail PRO"] [--lookup-key FMMailPro] [--amount 980] [--currency jpy] [--interval month]
//!     [--tier "FMMail BUSINESS:FMMailBusiness:4980"]… [--metered FMMailPro:FMMailProCalls:1000:0.5]…
//!     [--meter-event-name paykey_api_requests] [--repin-webhook] [--retire-webhook we_…]
//! ```
//! The first paid tier is described by `--product-name`, `--lookup-key` and `--amount`; each
//! `--tier NAME:LOOKUP_KEY:AMOUNT` adds one (same currency and interval). With two tiers or
//! more, the portal lets customers switch between them. `--metered TIER_KEY:METERED_KEY:INCLUDED:RATE`
//! gives the tier with lookup key TIER_KEY a metered price (usage beyond INCLUDED calls a
//! period at RATE each, a decimal in the currency's minor unit) on paykey's meter, made if
//! missing (`--meter-event-name`, the catalog's `meter_event_name`); METERED_KEY equal to
//! TIER_KEY makes the tier pay-per-call (no flat price).
//! `--repin-webhook` replaces an endpoint created in another API version by a pinned one (both
//! deliver until `--retire-webhook <old id>` disables the old one; see `webhook_endpoint`).
//! `STRIPE_API_BASE` points it at another Stripe-compatible server (the local emulator).
//! `STRIPE_API_KEY_PARAMETER=/paykey/stripe/secret-key` (instead of `STRIPE_API_KEY`) reads the
//! key from that SSM SecureString parameter with the AWS credentials of the environment.

use std::process::ExitCode;

use paykey_setup::{run, Catalog, MeteredPrice, PaidTier};

fn usage() -> &'static str {
    "usage: STRIPE_API_KEY=sk_… (or STRIPE_API_KEY_PARAMETER=/ssm/name) paykey-setup [--webhook-url URL] [--return-url URL] [--product-name NAME] \
     [--lookup-key KEY] [--amount MINOR_UNITS] [--currency ISO] [--interval day|week|month|year] \
     [--tier NAME:LOOKUP_KEY:AMOUNT]... [--metered TIER_LOOKUP_KEY:METERED_LOOKUP_KEY:INCLUDED:RATE]... \
     [--meter-event-name NAME] [--repin-webhook] [--retire-webhook ENDPOINT_ID]"
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut c = Catalog::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r = match a.as_str() {
            "--webhook-url" => value(&a).map(|v| c.webhook_url = Some(v)),
            "--return-url" => value(&a).map(|v| c.portal_return_url = Some(v)),
            "--product-name" => value(&a).map(|v| c.tiers[0].product_name = v),
            "--lookup-key" => value(&a).map(|v| c.tiers[0].lookup_key = v),
            "--amount" => value(&a).and_then(|v| {
                v.parse()
                    .map(|n| c.tiers[0].unit_amount = n)
                    .map_err(|_| format!("--amount takes a whole number, got {v:?}"))
            }),
            "--tier" => value(&a).and_then(|v| PaidTier::parse(&v)).map(|t| c.tiers.push(t)),
            "--metered" => value(&a).and_then(|v| MeteredPrice::parse(&v)).map(|m| c.metered.push(m)),
            "--meter-event-name" => value(&a).map(|v| c.meter_event_name = v),
            "--currency" => value(&a).map(|v| c.currency = v.to_lowercase()),
            "--interval" => value(&a).map(|v| c.interval = v),
            "--repin-webhook" => {
                c.repin_webhook = true;
                Ok(())
            }
            "--retire-webhook" => value(&a).map(|v| c.retire_webhook = Some(v)),
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other:?}\n{}", usage())),
        };
        if let Err(e) = r {
            eprintln!("paykey-setup: {e}");
            return ExitCode::from(2);
        }
    }
    let env = paykey::config::Env::from_process();
    // AWS (region, credentials) only when the key is read from SSM: without a region, loading
    // the configuration would ask the instance metadata service and wait for its timeout.
    let cfg = if env.optional("STRIPE_API_KEY").is_some() {
        paykey::config::StripeConfig::from_env(&env).map_err(paykey::wiring::InitError::from)
    } else {
        paykey::wiring::stripe_config(&env, &paykey::adapters::aws::load_config().await).await
    };
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("paykey-setup: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = stripe::ClientBuilder::new(cfg.secret_key.expose());
    if let Some(base) = &cfg.api_base {
        builder = builder.url(base.clone());
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("paykey-setup: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&client, &c).await {
        Ok(report) => {
            for ch in &report.changes {
                println!("{ch}");
            }
            if let Some(p) = &report.portal_configuration {
                println!("\nbilling portal configuration: {p}");
                println!("the stack's PortalConfigurationId: answer it in `sam deploy --guided` or add PortalConfigurationId={p} to samconfig.toml's parameter_overrides (portal sessions open in it, not in the Dashboard's default)");
            }
            if let Some(s) = &report.webhook_secret {
                println!("\nwebhook signing secret (shown once by Stripe): {s}");
                println!("store it: aws ssm put-parameter --overwrite --type SecureString --name /paykey/stripe/webhook-secret --value '<secret>'");
            }
            if !report.changed_anything() {
                println!("\nnothing to change: the Stripe catalog is already set up");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("paykey-setup: {e}");
            ExitCode::from(1)
        }
    }
}
