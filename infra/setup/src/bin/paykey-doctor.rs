//! `paykey-doctor --stack NAME`: checks a deployed paykey stack and prints ✓ / ! / ✗ per
//! check, with the fix for each ✗ and ! (see `paykey_setup::doctor`). Exit status 0 when
//! nothing failed (warnings allowed), 1 when a check failed, 2 when the stack cannot be read.
//! Read-only: CloudFormation DescribeStacks, API Gateway GETs, SSM GetParameter (decrypted),
//! Cognito DescribeUserPool / DescribeUserPoolClient, Stripe GETs with the stack's key.
//!
//! AWS credentials and Region from the usual chain (`AWS_PROFILE`, `AWS_REGION`, …);
//! `AWS_ENDPOINT_URL` points it elsewhere (moto in the tests), `STRIPE_API_BASE` at another
//! Stripe-compatible server (the emulator).

use std::process::ExitCode;

use paykey::ports::KeyRegistry;
use paykey_setup::doctor::{self, aws, stripe as stripe_checks, Check, Stack, Status};

const USAGE: &str = "usage: paykey-doctor --stack STACK_NAME   (AWS credentials and Region from the environment)";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut stack_name = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--stack" => match args.next() {
                Some(v) => stack_name = Some(v),
                None => return usage_error("--stack needs a value"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let Some(stack_name) = stack_name else {
        return usage_error("--stack is required");
    };
    let config = paykey::adapters::aws::load_config().await;
    let Some(region) = config.region().map(|r| r.to_string()) else {
        eprintln!("paykey-doctor: no AWS Region: set AWS_REGION (the stack's Region)");
        return ExitCode::from(2);
    };
    let cf = aws_sdk_cloudformation::Client::new(&config);
    let ag = aws_sdk_apigateway::Client::new(&config);
    let stack = match doctor::read_stack(&cf, &stack_name).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("paykey-doctor: {e}");
            return ExitCode::from(2);
        }
    };
    println!("stack {} in {region}", stack.name);
    let mut all: Vec<Check> = Vec::new();
    report(&mut all, vec![doctor::check_stack_status(&stack.status)]);

    section("product API");
    match doctor::read_product_api(&ag, &region, &stack).await {
        Ok(api) => report(&mut all, doctor::check_product_api(&api)),
        Err(e) => report(&mut all, vec![unreadable("the product API", e)]),
    }

    section("secrets");
    let key = match stack.parameter("StripeSecretKeyParameter") {
        Some(p) => {
            let (c, key) = aws::check_secret_key(p, aws::read_parameter(&config, p).await);
            report(&mut all, vec![c]);
            key
        }
        None => {
            report(&mut all, vec![unreadable("the Stripe secret key", "the stack has no StripeSecretKeyParameter")]);
            None
        }
    };
    match stack.parameter("StripeWebhookSecretParameter") {
        Some(p) => report(&mut all, vec![aws::check_webhook_secret(p, aws::read_parameter(&config, p).await)]),
        None => report(
            &mut all,
            vec![unreadable("the webhook signing secret", "the stack has no StripeWebhookSecretParameter")],
        ),
    }

    section("Stripe");
    match key {
        None => println!("  (not checked: no usable Stripe key)"),
        Some((key, live)) => report(&mut all, stripe_section(&stack, key, live).await),
    }

    section("users");
    match (stack.output("UserPoolId"), stack.output("UserPoolClientId")) {
        (Some(pool), Some(client)) => match aws::read_pool(&config, pool, client).await {
            Ok((schema, read, write)) => report(&mut all, aws::check_pool(pool, &schema, client, &read, &write)),
            Err(e) => report(&mut all, vec![unreadable("the user pool", e)]),
        },
        _ => {
            report(&mut all, vec![unreadable("the user pool", "the stack has no UserPoolId / UserPoolClientId output")])
        }
    }

    section("API keys");
    match paykey::adapters::aws::ApiGatewayKeys::new(&config).count_keys().await {
        Ok(n) => report(&mut all, vec![aws::check_key_count(n, aws::KEY_CEILING)]),
        Err(e) => report(&mut all, vec![unreadable("the API key count", e.to_string())]),
    }

    let failed = all.iter().filter(|c| c.status == Status::Fail).count();
    let warned = all.iter().filter(|c| c.status == Status::Warn).count();
    let n = all.len();
    println!("\n{n} check{}: {failed} failed, {warned} warning{}", plural(n), plural(warned));
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn stripe_section(stack: &Stack, key: paykey::domain::Secret, live: bool) -> Vec<Check> {
    let env = paykey::config::Env::from_process();
    let mut builder = stripe::ClientBuilder::new(key.expose());
    if let Some(base) = env.optional("STRIPE_API_BASE") {
        builder = builder.url(base);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return vec![unreadable("Stripe", e.to_string())],
    };
    let (Some(webhook_url), Some(portal)) = (stack.output("WebhookUrl"), stack.parameter("PortalConfigurationId"))
    else {
        return vec![unreadable("Stripe", "the stack has no WebhookUrl output or PortalConfigurationId parameter")];
    };
    let keys = stack.lookup_keys();
    let want = stripe_checks::Expected {
        webhook_url,
        events: paykey_setup::webhook_events(),
        api_version: stripe_shared::version::VERSION.as_str(),
        portal_configuration: portal,
        lookup_keys: keys.clone(),
    };
    let restricted = key.expose().starts_with("rk_");
    let mut out = match stripe_checks::read(&client, live, portal, &keys).await {
        Ok(facts) => stripe_checks::check(&facts, &want),
        // A restricted key the functions can use may lack the reads the doctor makes.
        Err((Some(403), e)) if restricted => vec![Check::warn(
            "the Stripe account can be read with the stack's restricted key",
            format!("Stripe: {e}"),
            "to let the doctor check Stripe, give the key read access to webhook endpoints, billing portal configurations and prices (or run it with a secret key's stack copy)",
        )],
        Err((_, e)) => vec![Check::fail(
            "the Stripe key works",
            format!("Stripe: {e}"),
            "store a valid secret key (sk_…) or restricted key (rk_…) in the stack's StripeSecretKeyParameter, then deploy with a new SecretsVersion",
        )],
    };
    if restricted {
        out.push(Check::warn(
            "the restricted key may write what the functions write",
            "the doctor only reads; a restricted key needs write access to Checkout Sessions, customers, subscriptions, refunds and billing portal sessions",
            "check the key's permissions in the Dashboard (Developers → API keys)",
        ));
    }
    out
}

fn unreadable(what: &str, e: impl Into<String>) -> Check {
    Check::fail(format!("{what} can be read"), e, "check the credentials' permissions and the stack's parameters")
}

fn section(name: &str) {
    println!("\n{name}");
}

fn report(all: &mut Vec<Check>, checks: Vec<Check>) {
    for c in &checks {
        println!("{c}");
    }
    all.extend(checks);
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("paykey-doctor: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
