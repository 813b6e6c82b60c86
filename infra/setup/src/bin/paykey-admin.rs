//! `paykey-admin <command> <user> [options]`: see one user whole, grant a complimentary tier,
//! suspend or lift, erase (`paykey_setup::admin::USAGE`).
//!
//! Configuration: the stripe-webhook function's variables (`MY_DOMAIN`, `USER_POOL_ID`,
//! `DYNAMODB_STRIPE_TABLE`, `DYNAMODB_API_KEY_TABLE`, `PAYKEY_CATALOG` (or `USAGE_PLAN_ID`),
//! `STRIPE_API_KEY` or `STRIPE_API_KEY_PARAMETER`), AWS credentials from the usual chain — an
//! operator's: no function's role may delete keys, users or records.

use std::process::ExitCode;

use paykey::config::Env;
use paykey::wiring;
use paykey_setup::admin;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", admin::USAGE);
        return ExitCode::SUCCESS;
    }
    let app = match wiring::resync_app(&Env::from_process()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("paykey-admin: {e}");
            return ExitCode::from(2);
        }
    };
    let (code, out) = admin::run(&app, &args).await;
    if code == 0 {
        print!("{out}");
    } else {
        eprint!("{out}");
    }
    ExitCode::from(code)
}
