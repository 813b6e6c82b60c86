//! `paykey-journeys`: 30 concurrent sign-up → checkout → pay → verify journeys against the
//! local stack, the data folder written after every request (the reference) beside the
//! default (group commit), in one run.
//!
//! ```text
//! cargo build -p paykey-local -p paykey-bench
//! target/debug/paykey-journeys [--users 30] [--local-bin target/debug/paykey-local]
//! ```

use std::path::PathBuf;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut users = 30;
    let mut bin = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("paykey-local")));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--users", Some(v)) if v.parse::<usize>().is_ok() => users = v.parse().unwrap_or(30),
            ("--local-bin", Some(v)) => bin = Some(PathBuf::from(v)),
            _ => {
                eprintln!("usage: paykey-journeys [--users N] [--local-bin PATH]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let Some(bin) = bin.filter(|b| b.is_file()) else {
        eprintln!("paykey-journeys: paykey-local is not built (cargo build -p paykey-local) or --local-bin is wrong");
        return std::process::ExitCode::from(2);
    };
    let configs: [(&str, &[(&str, &str)]); 2] = [
        ("reference: whole file rewritten after every request", &[("PAYKEY_PERSIST", "every-request")]),
        ("default: group commit", &[]),
    ];
    let mut runs = Vec::new();
    for (label, env) in configs {
        match paykey_bench::journeys::run(&bin, label, env, users).await {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("paykey-journeys: {label}: {e}");
                return std::process::ExitCode::from(1);
            }
        }
    }
    println!("{}", paykey_bench::journeys::table(&runs, users));
    std::process::ExitCode::SUCCESS
}
