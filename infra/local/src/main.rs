//! `cargo run -p paykey-local`: the whole upgrade flow offline on http://127.0.0.1:8787.
//!
//! Environment: `PAYKEY_PORT` (8787), `PAYKEY_DATA_DIR` (.paykey-data), `STRIPE_API_KEY`
//! (`sk_test_…`: real Stripe test mode instead of the emulator) with `STRIPE_WEBHOOK_SECRET`,
//! `PAYKEY_CATALOG` (what is sold), `PAYKEY_PERSIST` (`group`, the default, or `every-request`),
//! `PAYKEY_SWEEP_SECONDS` (1: how often keys whose rotation grace ended are disabled; 0: never),
//! `PAYKEY_WEB_DIR` (the front end's build; default infra/web/dist; empty: the built-in page),
//! `PAYKEY_PRODUCT_NAME` (the name the front end shows, in its `/config.json`; default FMMail),
//! `PAYKEY_BACKEND=aws` (the production AWS adapters at `AWS_ENDPOINT_URL`, or AWS itself, on
//! resources named `PAYKEY_AWS_PREFIX`-…, created when `PAYKEY_AWS_PROVISION=1`).

use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    paykey::telemetry::init();
    let mut opts = paykey_local::Options::default();
    if let Ok(p) = std::env::var("PAYKEY_PORT") {
        match p.parse() {
            Ok(p) => opts.port = p,
            Err(_) => {
                eprintln!("PAYKEY_PORT must be a port number, got {p:?}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if let Ok(d) = std::env::var("PAYKEY_DATA_DIR") {
        opts.data_dir = PathBuf::from(d);
    }
    opts.stripe_api_key = std::env::var("STRIPE_API_KEY").ok().filter(|k| !k.is_empty());
    if let Some(k) = &opts.stripe_api_key {
        if !(k.starts_with("sk_test_") || k.starts_with("rk_test_")) {
            eprintln!("STRIPE_API_KEY must be a test-mode key (sk_test_… or rk_test_…) for the local stack");
            return std::process::ExitCode::from(2);
        }
    }
    opts.stripe_webhook_secret = std::env::var("STRIPE_WEBHOOK_SECRET").ok().filter(|k| !k.is_empty());
    opts.stripe_portal_configuration = std::env::var("STRIPE_PORTAL_CONFIGURATION").ok().filter(|k| !k.is_empty());
    // What is sold (JSON, as the SAM stack writes it); default: FREE with keys, PRO, BUSINESS.
    if let Ok(m) = std::env::var("PAYKEY_PERSIST") {
        match m.parse() {
            Ok(m) => opts.persist = m,
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    if let Ok(v) = std::env::var("PAYKEY_SWEEP_SECONDS") {
        match v.parse::<u64>() {
            Ok(0) => opts.sweep_every = None,
            Ok(n) => opts.sweep_every = Some(std::time::Duration::from_secs(n)),
            Err(_) => {
                eprintln!("PAYKEY_SWEEP_SECONDS must be a whole number of seconds (0: no sweep), got {v:?}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    match std::env::var("PAYKEY_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("memory") => {}
        Ok("aws") => {
            let provision = match std::env::var("PAYKEY_AWS_PROVISION").as_deref() {
                Err(_) | Ok("") | Ok("0") => false,
                Ok("1") => true,
                Ok(other) => {
                    eprintln!("PAYKEY_AWS_PROVISION must be 1 (create what is missing) or 0, got {other:?}");
                    return std::process::ExitCode::from(2);
                }
            };
            opts.aws = Some(paykey_local::aws::AwsOptions {
                endpoint: std::env::var("AWS_ENDPOINT_URL").ok().filter(|e| !e.is_empty()),
                region: std::env::var("AWS_REGION")
                    .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|_| "us-east-1".into()),
                prefix: std::env::var("PAYKEY_AWS_PREFIX").unwrap_or_else(|_| "paykey-local".into()),
                provision,
            });
        }
        Ok(other) => {
            eprintln!("PAYKEY_BACKEND must be memory (the default) or aws, got {other:?}");
            return std::process::ExitCode::from(2);
        }
    }
    if let Ok(d) = std::env::var("PAYKEY_WEB_DIR") {
        opts.web_dir = Some(PathBuf::from(d)).filter(|d| !d.as_os_str().is_empty());
    }
    opts.catalog = std::env::var("PAYKEY_CATALOG").ok().filter(|c| !c.trim().is_empty());
    if let Some(n) = std::env::var("PAYKEY_PRODUCT_NAME").ok().filter(|n| !n.trim().is_empty()) {
        opts.product_name = n;
    }
    if let Ok(list) = std::env::var("ALLOWED_ORIGINS") {
        match paykey::config::parse_allowed_origins(&list) {
            Ok(o) => opts.allowed_origins = o,
            Err(e) => {
                eprintln!("paykey-local: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let started = match paykey_local::start(opts.clone()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("paykey-local: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let base = started.base_url();
    println!("paykey local stack on {base}");
    println!("  open {base}/ in a browser: create an account, get a free key, upgrade, pay with 4242 4242 4242 4242");
    match &started.state.web {
        Some(w) => println!("  front end: the React build in {} ({} bytes)", opts.web_dir.as_deref().unwrap_or(std::path::Path::new("")).display(), w.size()),
        None => println!("  front end: the built-in page (no React build found; `cd infra/web && npm ci && npm run build`, or PAYKEY_WEB_DIR)"),
    }
    println!("  API (API Gateway emulation): {base}/api, described by {base}/openapi.json");
    if started.state.emulator.is_some() {
        println!("  Stripe emulator: {base}/stripe (STRIPE_API_BASE={base}/stripe/)");
        println!("  webhook signing secret: {}", started.webhook_secret());
    } else {
        println!("  Stripe: test mode at api.stripe.com; forward webhooks to {base}/api/stripe/webhook");
    }
    match &started.state.aws {
        Some(a) => {
            let r = &a.stack.resources;
            println!(
                "  stores: AWS ({}): tables {} and {}, user pool {} (client {}), usage plans in PAYKEY_CATALOG={}",
                opts.aws
                    .as_ref()
                    .and_then(|o| o.endpoint.clone())
                    .unwrap_or_else(|| "the account of the AWS credentials".into()),
                r.sessions_table,
                r.api_keys_table,
                r.user_pool_id,
                r.client_id,
                r.catalog_json
            );
            println!("  data folder (the Stripe emulator only): {}", opts.data_dir.display());
        }
        None => println!("  data folder: {}", opts.data_dir.display()),
    }
    tokio::select! {
        _ = started.task => {}
        _ = tokio::signal::ctrl_c() => { println!("stopping"); }
    }
    std::process::ExitCode::SUCCESS
}
