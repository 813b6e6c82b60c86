//! `paykey-doctor --stack NAME`: checks a deployed paykey stack and prints ✓ / ! / ✗ per
//! check, with the fix for each ✗ (see `paykey_setup::doctor`). Exit status 0 when nothing
//! failed (warnings allowed), 1 when a check failed, 2 when the stack cannot be read.
//!
//! AWS credentials and Region from the usual chain (`AWS_PROFILE`, `AWS_REGION`, …);
//! `AWS_ENDPOINT_URL` points it elsewhere (moto in the tests).

use std::process::ExitCode;

use paykey_setup::doctor::{self, Status};

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
    println!("stack {} in {region} ({})", stack.name, stack.status);
    let checks = match doctor::read_product_api(&ag, &region, &stack).await {
        Ok(api) => doctor::check_product_api(&api),
        Err(e) => {
            eprintln!("paykey-doctor: {e}");
            return ExitCode::from(2);
        }
    };
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    let n = checks.len();
    println!("\n{n} check{}: {failed} failed, {warned} warning{}", plural(n), plural(warned));
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
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
