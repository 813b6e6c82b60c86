//! The benchmark harness runs end to end in its short mode (one cold start per target on the
//! debug binaries, a few warm iterations). No timing is asserted: only that every row is there.

use std::process::Command;

#[test]
fn the_short_mode_measures_every_target_and_writes_the_table() {
    let bench = env!("CARGO_BIN_EXE_paykey-bench");
    let bin_dir = std::path::Path::new(bench).parent().unwrap();
    for f in [
        "hello-floor",
        "tls-floor",
        "create-checkout-session",
        "create-api-key",
        "create-billing-portal",
        "get-account",
        "stripe-webhook",
    ] {
        assert!(
            bin_dir.join(f).is_file(),
            "{f} is not built in {}: run `cargo build --workspace --bins` first (the test command does)",
            bin_dir.display()
        );
    }
    let out = std::env::temp_dir().join(format!("paykey-bench-{}.md", std::process::id()));
    let status =
        Command::new(bench).args(["--short", "--bin-dir"]).arg(bin_dir).arg("--out").arg(&out).status().unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(&out).unwrap();
    for row in [
        "### Lambda-like (one CA bundle file",
        "### this machine's default",
        "| hello-floor",
        "| tls-floor",
        "| Stripe (TLS) | async-stripe's client",
        "| Stripe (TLS) | paykey's pooled client |",
        "| create-checkout-session |",
        "| create-api-key |",
        "| create-billing-portal |",
        "| get-account |",
        "| stripe-webhook |",
        "| verification (success redirect) |",
        "| checkout (warm price cache) |",
        "| billing portal |",
        "| get-account | ",
    ] {
        assert!(md.contains(row), "missing {row:?} in:\n{md}");
    }
    if std::env::var("PAYKEY_MOTO_URL").is_ok() {
        assert!(md.contains("| AWS on moto | AWS SDK clients"), "the AWS rows, moto being up:\n{md}");
        // the latency model: every flow answered as expected by the deployable binaries with
        // their secrets in SSM (a wrong status fails the run), cold and warm
        for row in [
            "| success redirect (first purchase) |",
            "| checkout (POST /checkout-sessions) |",
            "| /account (PRO user) |",
            "| webhook (customer.subscription.deleted, record > 1 s old) |",
        ] {
            assert_eq!(md.matches(row).count(), 2, "{row}: the flow's two rows:\n{md}");
        }
    }
    let _ = std::fs::remove_file(out);
}
