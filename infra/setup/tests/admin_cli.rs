//! `paykey-admin`'s command line (`paykey_setup::admin::run`) on the in-memory ports: what each
//! command prints and its exit status. The actions themselves are tested in
//! `shared/tests/admin.rs` (memory), `crash_matrix.rs` and `admin_moto.rs` (moto + emulator).

use std::sync::Arc;

use paykey::adapters::memory::{
    ManualClock, MemoryKeys, MemoryPayments, MemoryStore, MemoryUsers, Meter, SequentialIds,
};
use paykey::domain::{User, UserId, UserName};
use paykey::flows::{self, Settings};
use paykey::handlers::App;
use paykey_setup::admin::run;

const TIERS: &str = r#"{"tiers": [
    {"name": "FREE", "usage_plan_id": "plan-free"},
    {"name": "PRO", "lookup_key": "FMMailPro", "usage_plan_id": "plan-pro"}]}"#;

fn app() -> App<MemoryStore, MemoryKeys, MemoryUsers, MemoryPayments> {
    let meter = Meter::new();
    let mut settings = Settings::new("https://app.example.com", "https://api.example.com");
    settings.catalog = paykey::domain::Catalog::parse(TIERS).unwrap();
    settings.user_budget.interval = std::time::Duration::ZERO;
    let keys = MemoryKeys::new(Arc::clone(&meter));
    keys.define_catalog(&settings.catalog);
    let start = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z").unwrap().to_utc();
    App {
        store: MemoryStore::new(Arc::clone(&meter)),
        keys,
        users: MemoryUsers::new(Arc::clone(&meter)),
        payments: MemoryPayments::new(meter),
        clock: Arc::new(ManualClock::new(start)),
        ids: Arc::new(SequentialIds::default()),
        settings,
    }
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[tokio::test]
async fn each_command_prints_what_it_did_and_exits_by_outcome() {
    let app = app();
    let ada = User {
        id: UserId::parse("8c1e9a52-0000-4000-8000-000000000001").unwrap(),
        name: UserName::parse("ada").unwrap(),
    };
    app.users.add_user_with_sub(&ada);
    app.users.set_email(&ada.name, "ada@example.com");
    let key = flows::issue_free_key(&app.store, &app.keys, &app.users, app.ctx(), &ada).await.unwrap().api_key.id;

    let (code, out) = run(&app, &args("show ada@example.com")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("user      ada") && out.contains(&format!("key       {key} current enabled")), "{out}");
    let (code, out) = run(&app, &args("comp ada --tier PRO --until 2027-01-01 --note apology")).await;
    assert_eq!((code, out.as_str()), (0, format!("comp granted: ada is PRO, key {key} enabled\n").as_str()));
    let (code, out) = run(&app, &args(&format!("suspend key:{key} --reason abuse"))).await;
    assert_eq!((code, out.as_str()), (0, format!("suspended: ada is PRO, key {key} disabled\n").as_str()));
    let (code, out) = run(&app, &args("show ada")).await;
    assert!(
        code == 0 && out.contains("SUSPENDED since") && out.contains("comp      PRO until 2027-01-01T00:00:00Z"),
        "{out}"
    );
    let (code, out) = run(&app, &args("unsuspend sub:8c1e9a52-0000-4000-8000-000000000001")).await;
    assert_eq!((code, out.as_str()), (0, format!("suspension lifted: ada is PRO, key {key} enabled\n").as_str()));
    let (code, out) = run(&app, &args("comp ada --end")).await;
    assert_eq!((code, out.as_str()), (0, format!("comp ended: ada is FREE, key {key} enabled\n").as_str()));

    // refusals: bad arguments 2 (nothing written), an unknown user 3
    for (line, why) in [
        ("erase ada", "add --yes"),
        ("comp ada --tier PRO --until 2020-01-01", "not in the future"),
        ("comp ada --tier FREE --until 2027-01-01", "not a paid tier"),
        ("comp ada --until 2027-01-01", "--tier is required"),
        ("suspend ada", "--reason is required"),
        ("suspend ada --reason", "needs a value"),
        ("frobnicate ada", "unknown command"),
        ("show ada --yes", "unknown option --yes"),
        ("show key:not-a-key!", "not an API key id"),
    ] {
        let (code, out) = run(&app, &args(line)).await;
        assert_eq!(code, 2, "{line}: {out}");
        assert!(out.contains(why), "{line}: {out}");
    }
    let (code, out) = run(&app, &args("show nobody")).await;
    assert_eq!(code, 3, "{out}");

    let (code, out) = run(&app, &args("erase ada --yes")).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("API key {key} deleted")) && out.contains("account record deleted"), "{out}");
    assert_eq!(run(&app, &args("show ada")).await.0, 3, "nothing left");
}
