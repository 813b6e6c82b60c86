//! `paykey-admin`: an operator's commands on one user (see [`USAGE`]), over the same ports the
//! functions use plus the admin ones (`paykey::ports::admin`). [`run`] is the whole command
//! without the process: the binary builds the AWS and Stripe ports and calls it; the tests call
//! it on moto_server and the Stripe emulator.

use chrono::{DateTime, NaiveDate, Utc};
use paykey::flows::admin::{self, EraseOptions, Who};
use paykey::flows::Ctx;
use paykey::handlers::App;
use paykey::ports::admin::{AccountErasure, DirectoryAdmin, KeyDeletion, PaymentsAdmin};
use paykey::ports::AccountListing;
use paykey::Error;

pub const USAGE: &str = "\
usage: paykey-admin <command> <user> [options]

<user>: a user name, an email address, a sub (UUID), a Stripe customer id (cus_…), or
        key:<API key id>; name:… sub:… email:… force how it is read.

commands:
  show <user>                                  everything paykey, Cognito, API Gateway and Stripe hold
  comp <user> --tier T --until DATE [--note N] a complimentary paid tier until DATE
                                               (YYYY-MM-DD = 00:00 UTC that day, or RFC 3339)
  comp <user> --end                            end the comp now
  suspend <user> --reason TEXT                 disable every key of the user until lifted
  unsuspend <user>                             lift the suspension
  erase <user> --yes [--cancel-subscriptions] [--delete-customer]
                                               delete keys, Cognito user and record; Stripe
                                               customer kept unless --delete-customer

exit status: 0 done, 1 the action failed (run it again: each action finishes what a crash
left), 2 bad arguments or configuration, 3 no such user.";

/// Runs one command; returns the exit status and what to print (stdout for 0, else stderr).
pub async fn run<S, K, U, P>(app: &App<S, K, U, P>, args: &[String]) -> (u8, String)
where
    S: AccountErasure + AccountListing + paykey::ports::OpenCheckouts,
    K: KeyDeletion,
    U: DirectoryAdmin,
    P: PaymentsAdmin,
{
    match parse(args, app.ctx()) {
        Ok(cmd) => execute(app, cmd).await,
        Err(e) => (2, format!("paykey-admin: {e}\n\n{USAGE}")),
    }
}

#[derive(Debug)]
enum Action {
    Show,
    Comp(Option<(paykey::domain::Plan, DateTime<Utc>, String)>),
    Suspend(Option<String>),
    Erase(EraseOptions),
}

#[derive(Debug)]
struct Command {
    who: Who,
    action: Action,
}

fn parse(args: &[String], ctx: Ctx<'_>) -> Result<Command, String> {
    let mut it = args.iter().map(String::as_str);
    let verb = it.next().ok_or("a command is needed")?;
    if matches!(verb, "-h" | "--help" | "help") {
        return Err("help".into());
    }
    let who = it.next().ok_or_else(|| format!("{verb}: which user?"))?;
    let who = Who::parse(who).map_err(|e| e.to_string())?;
    let mut flags: Vec<(&str, Option<&str>)> = Vec::new();
    let rest: Vec<&str> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        let f = rest[i];
        let takes_value = matches!(f, "--tier" | "--until" | "--note" | "--reason");
        if takes_value {
            let v = rest.get(i + 1).ok_or_else(|| format!("{f} needs a value"))?;
            flags.push((f, Some(v)));
            i += 2;
        } else {
            flags.push((f, None));
            i += 1;
        }
    }
    let get = |name: &str| flags.iter().find(|(f, _)| *f == name).and_then(|(_, v)| *v);
    let has = |name: &str| flags.iter().any(|(f, _)| *f == name);
    let allowed: &[&str] = match verb {
        "show" | "unsuspend" => &[],
        "comp" => &["--tier", "--until", "--note", "--end"],
        "suspend" => &["--reason"],
        "erase" => &["--yes", "--cancel-subscriptions", "--delete-customer"],
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some((f, _)) = flags.iter().find(|(f, _)| !allowed.contains(f)) {
        return Err(format!("{verb}: unknown option {f}"));
    }
    let action = match verb {
        "show" => Action::Show,
        "unsuspend" => Action::Suspend(None),
        "suspend" => {
            let reason = get("--reason").filter(|r| !r.trim().is_empty()).ok_or("suspend: --reason is required")?;
            Action::Suspend(Some(reason.to_string()))
        }
        "comp" if has("--end") => {
            if has("--tier") || has("--until") {
                return Err("comp: --end takes no --tier or --until".into());
            }
            Action::Comp(None)
        }
        "comp" => {
            let tier = get("--tier").ok_or("comp: --tier is required (or --end)")?;
            let plan = tier.parse::<paykey::domain::Plan>()?;
            let until = get("--until").ok_or("comp: --until is required")?;
            let until =
                parse_time(until).ok_or_else(|| format!("comp: --until {until:?} is not YYYY-MM-DD or RFC 3339"))?;
            if until <= ctx.clock.now() {
                return Err(format!("comp: --until {until} is not in the future"));
            }
            Action::Comp(Some((plan, until, get("--note").unwrap_or_default().to_string())))
        }
        "erase" => {
            if !has("--yes") {
                return Err("erase deletes the user's keys, Cognito user and record for good: add --yes".into());
            }
            Action::Erase(EraseOptions {
                cancel_subscriptions: has("--cancel-subscriptions"),
                delete_customer: has("--delete-customer"),
            })
        }
        _ => unreachable!("checked above"),
    };
    Ok(Command { who, action })
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
}

async fn execute<S, K, U, P>(app: &App<S, K, U, P>, cmd: Command) -> (u8, String)
where
    S: AccountErasure + AccountListing + paykey::ports::OpenCheckouts,
    K: KeyDeletion,
    U: DirectoryAdmin,
    P: PaymentsAdmin,
{
    let ctx = app.ctx();
    let user = match admin::find_user(&app.store, &app.keys, &app.users, ctx, &cmd.who).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return (3, format!("paykey-admin: no trace of {:?} in the directory or paykey's records\n", cmd.who))
        }
        Err(e) => return failed(e),
    };
    let done = match cmd.action {
        Action::Show => {
            admin::inspect(&app.store, &app.keys, &app.users, &app.payments, ctx, &user).await.map(|r| r.to_string())
        }
        Action::Comp(grant) => {
            let ending = grant.is_none();
            admin::set_comp(&app.store, &app.keys, &app.users, ctx, &user, grant).await.map(|c| {
                let what = if ending { "comp ended" } else { "comp granted" };
                format!("{what}: {} is {}, key {}\n", c.user.name, c.plan, key_state(&c))
            })
        }
        Action::Suspend(reason) => {
            let lifting = reason.is_none();
            admin::set_suspension(&app.store, &app.keys, &app.users, ctx, &user, reason).await.map(|c| {
                let what = if lifting { "suspension lifted" } else { "suspended" };
                format!("{what}: {} is {}, key {}\n", c.user.name, c.plan, key_state(&c))
            })
        }
        Action::Erase(opts) => admin::erase(&app.store, &app.keys, &app.users, &app.payments, ctx, &user, opts)
            .await
            .map(|e| format!("erased {} (sub {}):\n{e}\n", user.name, user.id)),
    };
    match done {
        Ok(out) => (0, out),
        Err(e) => failed(e),
    }
}

fn key_state(c: &admin::Changed) -> String {
    match (&c.api_key_id, c.key_enabled) {
        (Some(id), true) => format!("{id} enabled"),
        (Some(id), false) => format!("{id} disabled"),
        (None, _) => "none".into(),
    }
}

fn failed(e: Error) -> (u8, String) {
    match e {
        Error::BadRequest(m) => (2, format!("paykey-admin: {m}\n")),
        Error::UserNotFound => (3, "paykey-admin: the user no longer holds their name in the directory\n".into()),
        other => (1, format!("paykey-admin: {other} — nothing is lost: run the same command again\n")),
    }
}
