//! `paykey-resync [--apply] [--keys]`: `--keys` prints how many API keys the account uses
//! against API Gateway's 10,000 per account and Region, and per tier, and stops. Otherwise it walks every account record (and the name-keyed records of the
//! Python version), reads the user's subscriptions from Stripe and reports every plan or key
//! out of step (missed webhooks). Dry run by default; `--apply` repairs through the same code
//! as the webhook and prints what that did for each user; exit status 1 when any user could
//! not be repaired.
//!
//! Configuration: the stripe-webhook function's variables (`MY_DOMAIN`, `USER_POOL_ID`,
//! `DYNAMODB_STRIPE_TABLE`, `DYNAMODB_API_KEY_TABLE`, `PAYKEY_CATALOG` (or `USAGE_PLAN_ID`), `STRIPE_API_KEY` or
//! `STRIPE_API_KEY_PARAMETER`), AWS credentials from the usual chain.

use std::process::ExitCode;

use paykey::config::Env;
use paykey::{flows, wiring};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut apply = false;
    let mut keys_only = false;
    let mut sweep = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--apply" => apply = true,
            "--keys" => keys_only = true,
            "--sweep" => sweep = true,
            "-h" | "--help" => {
                println!(
                    "usage: paykey-resync [--apply] [--keys]   (dry run unless --apply; --keys: count the API keys)"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("paykey-resync: unknown argument {other:?} (see --help)");
                return ExitCode::from(2);
            }
        }
    }
    let app = match wiring::resync_app(&Env::from_process()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("paykey-resync: {e}");
            return ExitCode::from(2);
        }
    };
    if sweep {
        // Rotated-out keys whose grace is over: disabled (run from a schedule).
        let swept = flows::sweep_expired_keys(&app.store, &app.keys, app.ctx()).await;
        let comps = flows::end_expired_comps(&app.store, &app.keys, &app.users, app.ctx()).await;
        return match (swept, comps) {
            (Ok(done), Ok(ended)) => {
                println!("{} rotated-out key(s) disabled at the end of their grace", done.len());
                println!("{} complimentary tier(s) ended", ended.len());
                ExitCode::SUCCESS
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("paykey-resync: {e}");
                ExitCode::from(1)
            }
        };
    }
    if keys_only {
        return match flows::count_keys(&app.keys, app.ctx()).await {
            Ok(count) => {
                println!("{count}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("paykey-resync: {e}");
                ExitCode::from(1)
            }
        };
    }
    match flows::resync(&app.store, &app.keys, &app.users, &app.payments, app.ctx(), apply).await {
        Ok(drifts) => {
            for d in &drifts {
                println!("{d}");
            }
            let repaired = drifts.iter().filter(|d| d.repaired()).count();
            match (drifts.len(), apply) {
                (0, _) => println!("every plan and key matches Stripe"),
                (n, false) => println!("{n} user(s) out of step; run again with --apply to repair"),
                (n, true) if repaired == n => println!("{n} user(s) out of step, {repaired} repaired"),
                (n, true) => {
                    println!("{n} user(s) out of step, {repaired} repaired, {} NOT repaired (see above)", n - repaired);
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("paykey-resync: {e}");
            ExitCode::from(1)
        }
    }
}
